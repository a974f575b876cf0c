import Foundation
import NormKitTraining
import Synchronization
import XCTest
import _NormKitTestSupport

/// Tiny synthetic datasets in the Fashion-MNIST file layout (four raw IDX files).
enum SyntheticData {
    /// Writes `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte` and
    /// `t10k-labels-idx1-ubyte` into `directory`: `trainCount` and `testCount` 28×28 images of pseudo-random bytes
    /// (seeded by `seed`), labels cycling through 0…9. With `constantTrainPixel`, every training pixel is that value.
    static func write(
        to directory: URL, trainCount: Int, testCount: Int, seed: UInt64,
        constantTrainPixel: UInt8? = nil
    ) throws {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        func nextByte() -> UInt8 {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return UInt8(truncatingIfNeeded: state >> 56)
        }
        func images(_ count: Int, constant: UInt8?) -> [UInt8] {
            var bytes: [UInt8] = []
            bytes.reserveCapacity(count * 784)
            for i in 0..<count {
                for p in 0..<784 {
                    if let constant { bytes.append(constant); continue }
                    // A label-dependent bright band plus noise: varied, std > 0, and a little learnable.
                    let row = p / 28, label = i % 10
                    let band = row / 3 == label ? 160 : 0
                    bytes.append(UInt8(min(255, band + Int(nextByte() % 96))))
                }
            }
            return bytes
        }
        let labels = { (count: Int) in (0..<count).map { UInt8($0 % 10) } }
        try idx(magic: 0x0000_0803, dimensions: [trainCount, 28, 28], images(trainCount, constant: constantTrainPixel))
            .write(to: directory.appendingPathComponent("train-images-idx3-ubyte"))
        try idx(magic: 0x0000_0801, dimensions: [trainCount], labels(trainCount))
            .write(to: directory.appendingPathComponent("train-labels-idx1-ubyte"))
        try idx(magic: 0x0000_0803, dimensions: [testCount, 28, 28], images(testCount, constant: nil))
            .write(to: directory.appendingPathComponent("t10k-images-idx3-ubyte"))
        try idx(magic: 0x0000_0801, dimensions: [testCount], labels(testCount))
            .write(to: directory.appendingPathComponent("t10k-labels-idx1-ubyte"))
    }

    /// An IDX file: big-endian magic and dimensions, then the bytes.
    static func idx(magic: UInt32, dimensions: [Int], _ bytes: [UInt8]) -> Data {
        var data = Data()
        func u32(_ v: UInt32) { data.append(contentsOf: [24, 16, 8, 0].map { UInt8(truncatingIfNeeded: v >> $0) }) }
        u32(magic)
        for d in dimensions { u32(UInt32(d)) }
        data.append(contentsOf: bytes)
        return data
    }
}

/// Datasets and one finished training run, made once and shared by every CLI test (they only read them or copy
/// them).
final class CLIFixture {
    /// The directory of everything the tests write, removed when the test bundle finishes.
    private let directory: TemporaryDirectory
    /// The root of everything the tests write (``directory``'s URL).
    let root: URL
    /// The main dataset (32 training, 16 test images: each step of a debug build costs a fraction of a second).
    let data: URL
    /// A different dataset of the same shape.
    let otherData: URL
    /// A dataset whose training pixels all hold one value.
    let constantData: URL
    /// A finished run: resnet8 + GN, batch 16, 1 epoch (2 steps) on ``data``.
    let baseRun: URL
    /// The arguments that trained ``baseRun`` (without `--out`).
    let baseArguments: [String]

    /// Fast training arguments on `data` (one thread, one epoch, batch 16).
    static func quickTraining(data: URL) -> [String] { quickTraining(dataPath: data.path) }

    /// Fast training arguments on the data at `dataPath` (absolute or relative to the working directory).
    static func quickTraining(dataPath: String) -> [String] {
        ["train", "--data", dataPath, "--threads", "1", "--epochs", "1", "--batch", "16"]
    }

    private init() throws {
        guard FileManager.default.isExecutableFile(atPath: CLI.binary.path) else {
            throw NSError(
                domain: "CLIFixture", code: 2,
                userInfo: [
                    NSLocalizedDescriptionKey:
                        "no normkit executable at \(CLI.binary.path) (build it with `swift build`, or set NORMKIT_BINARY)"
                ])
        }
        directory = try TemporaryDirectory(prefix: "normkit-cli-tests")
        root = directory.url
        data = root.appendingPathComponent("fmnist-main")
        otherData = root.appendingPathComponent("fmnist-other")
        constantData = root.appendingPathComponent("fmnist-constant")
        try SyntheticData.write(to: data, trainCount: 32, testCount: 16, seed: 1)
        try SyntheticData.write(to: otherData, trainCount: 32, testCount: 16, seed: 2)
        try SyntheticData.write(to: constantData, trainCount: 32, testCount: 16, seed: 3, constantTrainPixel: 77)
        baseRun = root.appendingPathComponent("base-run")
        baseArguments = Self.quickTraining(data: data)
        let result = try CLI.run(baseArguments + ["--out", baseRun.path], in: root)
        guard result.status == 0, !result.signaled else {
            throw NSError(
                domain: "CLIFixture", code: 1,
                userInfo: [NSLocalizedDescriptionKey: "the base training run failed: \(result.summary)"])
        }
    }

    private static let made = Mutex<Result<CLIFixture, Error>?>(nil)

    /// The shared fixture (made on first use; a failure to make it fails every test that needs it).
    static func shared() throws -> CLIFixture {
        try made.withLock { made in
            if made == nil {
                made = Result { try CLIFixture() }
                if case .success(let fixture) = made! {
                    XCTestObservationCenter.shared.addTestObserver(RemoveWhenDone(fixture.directory))
                }
            }
            return try made!.get()
        }
    }

    /// A new empty directory under ``root`` for one test.
    func scratch(_ name: String) throws -> URL {
        let url = root.appendingPathComponent("\(name)-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }
}

/// Removes the fixture's directory when the test bundle finishes.
private final class RemoveWhenDone: NSObject, XCTestObservation {
    let directory: TemporaryDirectory
    init(_ directory: TemporaryDirectory) { self.directory = directory }
    func testBundleDidFinish(_ testBundle: Bundle) { directory.remove() }
}

/// Reads a run's `summary.json` as a dictionary (nil when absent).
func summaryJSON(in run: URL) throws -> [String: Any]? {
    let url = run.appendingPathComponent("summary.json")
    guard FileManager.default.fileExists(atPath: url.path) else { return nil }
    return try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any]
}

/// Whether `run` holds a `summary.json` that says `finished: true`.
func isFinished(_ run: URL) -> Bool {
    ((try? summaryJSON(in: run))??["finished"] as? Bool) == true
}
