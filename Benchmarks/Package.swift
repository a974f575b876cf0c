// swift-tools-version: 6.0
import PackageDescription

/// Allocation checks for NormKit, kept out of the main package so that building or depending on NormKit never
/// fetches or compiles malloc-interposer. Build and run from this directory (see README.md):
///
///     swift build -c release
///     LD_PRELOAD=.build/release/libMallocInterposerSwift.so .build/release/normkit-allocations
let package = Package(
    name: "NormKitBenchmarks",
    dependencies: [
        // The main package, by path. `name:` fixes the name products refer to below: without it, a path
        // dependency's identity is its directory's name, which depends on where the repository was cloned.
        .package(name: "NormKit", path: ".."),
        // Counts malloc/calloc/realloc/posix_memalign/aligned_alloc calls when preloaded (LD_PRELOAD).
        .package(url: "https://github.com/ordo-one/malloc-interposer", from: "1.6.1"),
    ],
    targets: [
        .executableTarget(
            name: "normkit-allocations",
            dependencies: [
                .product(name: "NormKit", package: "NormKit"),
                .product(name: "NormKitTraining", package: "NormKit"),
                .product(name: "MallocInterposerSwift", package: "malloc-interposer"),
            ]),
    ]
)
