// swift-tools-version: 6.0
import PackageDescription

/// libFuzzer targets for every NormKit parser of outside input, kept out of the main package (it needs unsafe
/// flags and a sanitizer build). Build and run them with `scripts/fuzz.sh` from the repository root; see
/// docs/FUZZING.md. Each `fuzz-*` target defines `LLVMFuzzerTestOneInput` and has no `main`: libFuzzer's `main`
/// is linked in by `-sanitize=fuzzer`, which `scripts/fuzz.sh` passes to every module (NormKit's too, so the
/// parsers themselves are coverage-instrumented). `fuzz-make-corpus` is an ordinary executable, built without
/// sanitizers, that writes the seed corpora in `Corpus/`.
let fuzzerTarget: (String) -> Target = { name in
    .executableTarget(
        name: name,
        dependencies: [
            "FuzzSupport", .product(name: "NormKitTraining", package: "NormKit"),
            .product(name: "NormKitExperiments", package: "NormKit"),
        ],
        swiftSettings: [.unsafeFlags(["-parse-as-library"])])
}

let package = Package(
    name: "NormKitFuzz",
    dependencies: [
        // The main package, by path (`name:` fixes the identity whatever the clone's directory is called).
        .package(name: "NormKit", path: ".."),
    ],
    targets: [
        /// What every harness shares: input bytes, property checks that crash loudly, a scratch directory.
        .target(name: "FuzzSupport"),
        fuzzerTarget("fuzz-safetensors"),
        fuzzerTarget("fuzz-idx"),
        fuzzerTarget("fuzz-gzip"),
        fuzzerTarget("fuzz-checkpoint-config"),
        fuzzerTarget("fuzz-sweep-plan"),
        fuzzerTarget("fuzz-run-records"),
        fuzzerTarget("fuzz-training-state"),
        .executableTarget(
            name: "fuzz-make-corpus",
            dependencies: [
                .product(name: "NormKitTraining", package: "NormKit"),
                .product(name: "NormKitExperiments", package: "NormKit"),
            ]),
    ]
)
