// swift-tools-version: 6.0
import Foundation
import PackageDescription

/// oneDNN (Debian's `libdnnl-dev`) is optional: without its header NormKit builds the same API with the im2col
/// engine only (`ConvolutionEngine.oneDNN.isAvailable` is false). `NORMKIT_WITHOUT_ONEDNN=1` builds that
/// configuration on a machine that has it (CI checks it still builds and trains).
let hasOneDNN = FileManager.default.fileExists(atPath: "/usr/include/oneapi/dnnl/dnnl.h")
    && ProcessInfo.processInfo.environment["NORMKIT_WITHOUT_ONEDNN"] == nil

/// Open MPI (Debian's `libopenmpi-dev`, with `openmpi-bin` for `mpirun`) is optional too: it is the transport of
/// `NormKitDistributed` only. Found by its pkg-config file or, failing that, its header; without either the bridge
/// compiles stubs that throw a message naming the packages to install (`MPICommunicator.isAvailable` is false).
/// `NORMKIT_WITHOUT_MPI=1` builds that configuration on a machine that has it. Debian installs both under the
/// machine's multiarch directory (`/usr/lib/x86_64-linux-gnu`, `/usr/lib/aarch64-linux-gnu`, …).
let multiarchDirectories = ((try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib")) ?? [])
    .filter { $0.contains("-linux-gnu") }.sorted().map { "/usr/lib/" + $0 }
let openMPIFound = (["/usr/lib"] + multiarchDirectories).contains { directory in
    FileManager.default.fileExists(atPath: directory + "/pkgconfig/ompi-c.pc")
        || FileManager.default.fileExists(atPath: directory + "/openmpi/include/mpi.h")
}
let hasOpenMPI = openMPIFound && ProcessInfo.processInfo.environment["NORMKIT_WITHOUT_MPI"] == nil

let package = Package(
    name: "NormKit",
    products: [
        /// The normalization layers (BN, GN, LN, IN, BRN, MABN, frozen BN, CenConv). Depends on Foundation only
        /// (plus its own small C target of wide-vector kernels).
        .library(name: "NormKit", targets: ["NormKit"]),
        /// Conv nets, data, optimizers and checkpoints built on NormKit (needs OpenBLAS and zlib).
        .library(name: "NormKitTraining", targets: ["NormKitTraining"]),
        /// Sweeps, reports and plots, the kernel benchmark and the statistics analysis (the CLI's experiments; no
        /// dependency beyond NormKitTraining).
        .library(name: "NormKitExperiments", targets: ["NormKitExperiments"]),
        /// Data-parallel training across processes: `MPICommunicator`, the training stack's `DataParallelGroup`
        /// over Open MPI (launched with `mpirun`; needs `libopenmpi-dev` to build with MPI, else it builds and
        /// throws that MPI is unavailable). Neither NormKit nor NormKitTraining depends on it.
        .library(name: "NormKitDistributed", targets: ["NormKitDistributed"]),
        // No `.executable` product for `normkit`, on purpose: SwiftPM resolves a dependency's packages only for
        // the products it declares, so without one a user of NormKit or NormKitTraining resolves no other
        // package (scripts/check_dependencies.sh checks it). In this package `swift build` still builds
        // `.build/<config>/normkit`, and `swift run normkit` / `--product normkit` still work.
    ],
    // For developing NormKit only: the CLI's parser and the DocC plugin (scripts/docs.sh). Reached from no
    // product, so never resolved by a package that depends on NormKit.
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        /// AVX2/AVX-512 versions of the core's row primitives (function-level target attributes, run-time
        /// dispatch); the Swift SIMD versions in NormKit are the reference and the fallback.
        .target(name: "CNormKitKernels"),
        .target(name: "NormKit", dependencies: ["CNormKitKernels"]),
        .systemLibrary(
            name: "COpenBLAS", pkgConfig: "openblas",
            providers: [.apt(["libopenblas-dev", "pkg-config"])]),
        .systemLibrary(
            name: "CZlib", pkgConfig: "zlib",
            providers: [.apt(["zlib1g-dev", "pkg-config"])]),
        /// The bridge to oneDNN's convolutions (the one target that sees oneDNN; stubs that say so without it).
        .target(
            name: "CNormKitDNNL",
            cSettings: hasOneDNN ? [] : [.define("NORMKIT_WITHOUT_ONEDNN")],
            linkerSettings: hasOneDNN ? [.linkedLibrary("dnnl"), .linkedLibrary("gomp")] : []),
        .target(name: "NormKitTraining", dependencies: ["NormKit", "COpenBLAS", "CZlib", "CNormKitDNNL"]),
        /// Open MPI's C API (`mpi.h`, `-lmpi`), seen by the C bridge below only: Swift cannot import MPI's handles
        /// (`MPI_COMM_WORLD`, `MPI_FLOAT`, `MPI_SUM` are macros over internal symbols).
        .systemLibrary(
            name: "CMPI", path: "Sources/CMPI", pkgConfig: "ompi-c",
            providers: [.apt(["libopenmpi-dev", "openmpi-bin", "pkg-config"])]),
        /// The bridge to Open MPI: plain C functions over MPI_COMM_WORLD (the one target that sees MPI; stubs that
        /// say so without it).
        .target(
            name: "CNormKitMPI",
            dependencies: hasOpenMPI ? ["CMPI"] : [],
            cSettings: hasOpenMPI ? [] : [.define("NORMKIT_WITHOUT_MPI")]),
        /// `MPICommunicator`: NormKitTraining's `DataParallelGroup` (and SyncBN's `CrossWorkerReduction`) over
        /// Open MPI.
        .target(name: "NormKitDistributed", dependencies: ["NormKitTraining", "CNormKitMPI"]),
        /// Sweeps, reports and plots, and the kernel benchmark: the experiments behind the CLI's `sweep`,
        /// `report` and `bench`, kept out of the training library.
        .target(name: "NormKitExperiments", dependencies: ["NormKitTraining", "CZlib"]),
        .executableTarget(
            name: "normkit",
            dependencies: [
                "NormKitTraining",
                "NormKitExperiments",
                "NormKitDistributed",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        /// The MPI self-test, run under `mpirun` by scripts/mpi_check.sh (collectives against closed forms, large
        /// counts, a rank that dies). No product: it builds into `.build/<config>/normkit-mpi-check`.
        .executableTarget(name: "normkit-mpi-check", dependencies: ["NormKitDistributed"]),
        /// What the tests share (no product; underscored as swift-numerics' `_TestSupport`): the float64 reference
        /// of BN/GN/LN/IN, the helpers of the other layers' references (`VariantTestKit`), in-process workers for
        /// the cross-worker reductions, and tolerance assertions.
        .target(name: "_NormKitTestSupport", dependencies: ["NormKit"]),
        .testTarget(
            name: "NormKitTests", dependencies: ["NormKit", "_NormKitTestSupport"], resources: [.copy("Fixtures")]),
        .testTarget(
            name: "NormKitTrainingTests", dependencies: ["NormKitTraining", "_NormKitTestSupport"],
            resources: [.copy("Fixtures")]),
        /// NormKit's Sendable types and the layer-per-actor pattern must build without warnings (in the Swift 6
        /// language mode, as every target).
        .testTarget(name: "NormKitConcurrencyTests", dependencies: ["NormKit"]),
        .testTarget(name: "NormKitExperimentsTests", dependencies: ["NormKitExperiments", "_NormKitTestSupport"]),
        /// End-to-end tests of the `normkit` binary (built because the executable target is a dependency).
        .testTarget(
            name: "NormKitCLITests",
            dependencies: ["normkit", "NormKitTraining", "NormKitDistributed", "_NormKitTestSupport"]),
    ],
    // Every target compiles in the Swift 6 language mode (complete concurrency checking), without warnings.
    swiftLanguageModes: [.v6]
)
