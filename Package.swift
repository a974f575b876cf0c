// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "NormKit",
    products: [
        /// The normalization layers (BN, GN, LN, IN, BRN, MABN, frozen BN, CenConv). Depends on Foundation only
        /// (plus its own small C target of wide-vector kernels).
        .library(name: "NormKit", targets: ["NormKit"]),
        /// Conv nets, data, optimizers and checkpoints built on NormKit (needs OpenBLAS and zlib).
        .library(name: "NormKitTraining", targets: ["NormKitTraining"]),
        .executable(name: "normkit", targets: ["normkit"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
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
        .target(name: "NormKitTraining", dependencies: ["NormKit", "COpenBLAS", "CZlib"]),
        .executableTarget(
            name: "normkit",
            dependencies: [
                "NormKitTraining",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        .testTarget(name: "NormKitTests", dependencies: ["NormKit"], resources: [.copy("Fixtures")]),
        .testTarget(
            name: "NormKitTrainingTests", dependencies: ["NormKitTraining"], resources: [.copy("Fixtures")]),
        /// End-to-end tests of the `normkit` binary (built because the executable target is a dependency).
        .testTarget(name: "NormKitCLITests", dependencies: ["normkit", "NormKitTraining"]),
    ],
    swiftLanguageModes: [.v5]
)
