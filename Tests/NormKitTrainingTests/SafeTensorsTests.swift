import Foundation
import NormKitTraining
import XCTest
import _NormKitTestSupport

/// The safetensors reader and writer: round trips, interoperability with the Python package (a fixture it
/// wrote), refusal of damaged files, and atomic replacement.
final class SafeTensorsTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = try makeTemporaryDirectory("normkit-safetensors")
    }

    // MARK: Helpers

    private func url(_ name: String) -> URL { directory.appendingPathComponent(name) }

    private func fixture(_ name: String, _ ext: String) throws -> URL {
        try XCTUnwrap(
            Bundle.module.url(forResource: name, withExtension: ext, subdirectory: "Fixtures"),
            "fixture \(name).\(ext) missing")
    }

    private var sample: [String: StateTensor] {
        [
            "conv1.weight": .float32(shape: [2, 1, 2, 2], values: [1, -2, 3.5, 0, -0.0, 1e-30, 7, 8]),
            "bn1.weight": .float32(shape: [3], values: [1, 1, 1]),
            "bn1.running_var": .float32(shape: [3], values: [0.5, 2, 3]),
            "bn1.num_batches_tracked": .int64(shape: [], values: [123_456_789_012]),
            "mabn.iters": .int64(shape: [], values: [-7]),
            "fc.scale": .float32(shape: [], values: [0.25]),
            "empty": .float32(shape: [0, 4], values: []),
            "counts": .int64(shape: [2, 2], values: [Int64.min, Int64.max, 0, 1]),
        ]
    }

    /// A file with this header (padded with spaces to 8 bytes) and data section.
    private func file(header: String, data: [UInt8]) -> [UInt8] { Self.fileBytes(header: header, data: data) }

    /// A file with this header (padded with spaces to 8 bytes) and data section.
    static func fileBytes(header: String, data: [UInt8]) -> [UInt8] {
        var headerBytes = Array(header.utf8)
        headerBytes += repeatElement(UInt8(ascii: " "), count: (8 - headerBytes.count % 8) % 8)
        var length = UInt64(headerBytes.count).littleEndian
        return withUnsafeBytes(of: &length) { Array($0) } + headerBytes + data
    }

    private func assertRefused(
        _ bytes: [UInt8], file: StaticString = #filePath, line: UInt = #line,
        _ check: (SafeTensorsError) -> Void
    ) {
        XCTAssertThrowsError(try SafeTensors.decode(bytes, source: "test.safetensors"), file: file, line: line) {
            error in
            guard let error = error as? SafeTensorsError else {
                return XCTFail("expected a SafeTensorsError, got \(error)", file: file, line: line)
            }
            XCTAssertTrue(
                error.description.contains("test.safetensors") && error.description.contains("Hint"),
                "message names the file and gives a hint: \(error)", file: file, line: line)
            check(error)
        }
    }

    private func temporaryFiles() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasSuffix(".tmp") }
    }

    // MARK: Round trips

    func testRoundTripFloat32Int64ScalarsAndMetadata() throws {
        let metadata = ["config": #"{"model":"resnet8","norm":"gn"}"#, "step": "1500", "note": "é ✓ \"q\"\n\\"]
        try SafeTensors.write(sample, metadata: metadata, to: url("model.safetensors"))
        let (tensors, readMetadata) = try SafeTensors.read(from: url("model.safetensors"))
        XCTAssertEqual(tensors, sample)
        XCTAssertEqual(readMetadata, metadata)
        if case .float32(_, let values) = tensors["conv1.weight"] {
            XCTAssertEqual(values[4].sign, .minus, "-0 keeps its sign")
        }
        XCTAssertEqual(tensors["bn1.num_batches_tracked"]?.shape, [], "scalars keep shape []")

        // The layout: 8-byte length, header padded to a multiple of 8, data right after, deterministic bytes.
        let bytes = try Array(Data(contentsOf: url("model.safetensors")))
        let headerLength = bytes.prefix(8).enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        XCTAssertEqual(headerLength % 8, 0)
        XCTAssertEqual(bytes.count, 8 + headerLength + (4 * 8 + 4 * 3 + 4 * 3 + 8 + 8 + 4 + 0 + 8 * 4))
        XCTAssertEqual(try SafeTensors.encode(sample, metadata: metadata), bytes)
        let header = String(decoding: bytes[8..<(8 + headerLength)], as: UTF8.self)
        XCTAssertTrue(header.hasPrefix(#"{"__metadata__":{"config":"#), header)
        // I64 tensors first, then F32, each by name (the Python package's order).
        let order = [
            "bn1.num_batches_tracked", "counts", "mabn.iters", "bn1.running_var", "bn1.weight",
            "conv1.weight", "empty", "fc.scale",
        ].map { header.range(of: "\"\($0)\"")!.lowerBound }
        XCTAssertEqual(order, order.sorted())

        // No metadata and no tensors are fine too.
        try SafeTensors.write([:], metadata: [:], to: url("empty.safetensors"))
        let empty = try SafeTensors.read(from: url("empty.safetensors"))
        XCTAssertTrue(empty.tensors.isEmpty && empty.metadata.isEmpty)
        XCTAssertEqual(
            try Array(Data(contentsOf: url("empty.safetensors"))), [8, 0, 0, 0, 0, 0, 0, 0] + Array("{}      ".utf8))
    }

    func testWriteRefusesInconsistentTensors() throws {
        XCTAssertThrowsError(try SafeTensors.encode(["w": .float32(shape: [2, 2], values: [1, 2, 3])])) { error in
            XCTAssertEqual(
                error as? SafeTensorsError, .invalidTensor(name: "w", reason: "shape [2, 2] needs 4 values, found 3"))
        }
        XCTAssertThrowsError(try SafeTensors.encode(["__metadata__": .int64(shape: [], values: [1])]))
        XCTAssertThrowsError(try SafeTensors.encode(["n": .int64(shape: [-1], values: [])]))
    }

    // MARK: Interoperability with the Python package

    /// The expectations the fixture script wrote next to the file.
    struct Expected: Decodable {
        struct Tensor: Decodable {
            let dtype: String
            let shape: [Int]
            let f32_bits: [UInt32]?
            let i64: [Int64]?
        }
        let tensors: [String: Tensor]
        let metadata: [String: String]
    }

    func testReadsAFileWrittenByThePythonPackage() throws {
        let (tensors, metadata) = try SafeTensors.read(from: fixture("safetensors_python", "safetensors"))
        let expected = try JSONDecoder().decode(
            Expected.self, from: Data(contentsOf: fixture("safetensors_python", "json")))
        XCTAssertEqual(metadata, expected.metadata)
        XCTAssertEqual(Set(tensors.keys), Set(expected.tensors.keys))
        XCTAssertEqual(tensors.count, 11)
        for (name, want) in expected.tensors {
            let got = try XCTUnwrap(tensors[name])
            XCTAssertEqual(got.shape, want.shape, name)
            switch got {
            case .float32(_, let values):
                XCTAssertEqual(want.dtype, "F32", name)
                XCTAssertEqual(
                    values.map(\.bitPattern), want.f32_bits, "\(name): bit for bit (NaN, ±inf, -0, subnormal)")
            case .int64(_, let values):
                XCTAssertEqual(want.dtype, "I64", name)
                XCTAssertEqual(values, want.i64, name)
            }
        }
        XCTAssertEqual(tensors["layer1.0.bn1.num_batches_tracked"], .int64(shape: [], values: [1]))
        XCTAssertEqual(tensors["counter.iters"], .int64(shape: [], values: [1 << 62 + 5]))
    }

    func testWritesTheSameBytesAsThePythonPackage() throws {
        let original = try Array(Data(contentsOf: fixture("safetensors_python", "safetensors")))
        let (tensors, metadata) = try SafeTensors.decode(original)
        XCTAssertEqual(try SafeTensors.encode(tensors, metadata: metadata), original)

        // `NORMKIT_SAFETENSORS_EXPORT=FILE swift test …` leaves a NormKit-written copy (with more metadata) for
        // `scripts/make_safetensors_fixture.py --check FILE` to read with the Python package.
        if let path = ProcessInfo.processInfo.environment["NORMKIT_SAFETENSORS_EXPORT"] {
            var more = metadata
            more["writer"] = "NormKit"
            more["configuration"] = #"{"batch":32,"norm":"gn"}"#
            try SafeTensors.write(tensors, metadata: more, to: URL(fileURLWithPath: path))
        }
    }

    // MARK: Damaged files

    func testCorruptAndTruncatedFilesAreRefused() throws {
        let good = try SafeTensors.encode([
            "a": .float32(shape: [2], values: [1, 2]), "n": .int64(shape: [], values: [3]),
        ])

        assertRefused(Array(good.prefix(5))) { XCTAssertEqual($0, .fileTooShort(path: "test.safetensors", found: 5)) }
        var longHeader = good
        longHeader[1] = 0x10  // header length + 4096
        assertRefused(longHeader) { error in
            guard case .headerLengthBeyondFile(_, let declared, let available) = error else {
                return XCTFail("\(error)")
            }
            XCTAssertGreaterThan(Int(declared), available)
        }
        assertRefused(Array(good.dropLast(4))) { error in  // the last tensor's bytes are cut off
            guard case .offsetsOutOfRange(_, "a", 8, 16, 12) = error else { return XCTFail("\(error)") }
        }
        assertRefused(good + [0, 0, 0, 0]) {
            XCTAssertEqual($0, .trailingData(path: "test.safetensors", dataLength: 20, covered: 16))
        }

        let four = [UInt8](repeating: 0, count: 4), eight = [UInt8](repeating: 0, count: 8)
        assertRefused(file(header: #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}"#, data: four)) { error in
            guard case .invalidHeader(_, let reason) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(reason.contains("end of the header"), reason)
        }
        assertRefused(file(header: "[1, 2]", data: [])) { error in
            guard case .invalidHeader = error else { return XCTFail("\(error)") }
        }
        assertRefused(file(header: "{\"a\u{1}\":{}}", data: [])) { error in
            guard case .invalidHeader(_, let reason) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(reason.contains("control character"), reason)
        }
        assertRefused([8, 0, 0, 0, 0, 0, 0, 0, 0x7B, 0x22, 0xFF, 0x22, 0x3A, 0x31, 0x7D, 0x20]) { error in
            guard case .invalidHeader(_, let reason) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(reason.contains("UTF-8"), reason)
        }
        // F16 is read since F16/BF16/F64/I32 support (SafeTensorsDtypeTests); an 8-bit float is not.
        assertRefused(file(header: #"{"a":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,4]}}"#, data: four)) {
            XCTAssertEqual($0, .unsupportedDtype(path: "test.safetensors", tensor: "a", dtype: "F8_E4M3"))
        }
        assertRefused(file(header: #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#, data: four)) {
            XCTAssertEqual(
                $0,
                .sizeMismatch(
                    path: "test.safetensors", tensor: "a", shape: [2], dtype: "F32",
                    expectedBytes: 8, foundBytes: 4))
        }
        assertRefused(file(header: #"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, data: four)) { error in
            guard case .invalidShape(_, "a", _) = error else { return XCTFail("\(error)") }
        }
        assertRefused(file(header: #"{"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}"#, data: four)) { error in
            guard case .invalidShape(_, "a", _) = error else { return XCTFail("\(error)") }
        }
        assertRefused(
            file(header: #"{"a":{"dtype":"I64","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#, data: eight)
        ) { error in
            guard case .invalidShape(_, "a", _) = error else { return XCTFail("\(error)") }
        }
        assertRefused(file(header: #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#, data: four)) {
            XCTAssertEqual(
                $0, .offsetsOutOfRange(path: "test.safetensors", tensor: "a", begin: 4, end: 0, dataLength: 4))
        }
        assertRefused(file(header: #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}}"#, data: four)) { error in
            guard case .invalidHeader = error else { return XCTFail("\(error)") }
        }
        assertRefused(
            file(
                header:
                    #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                data: eight)
        ) {
            XCTAssertEqual($0, .overlappingTensors(path: "test.safetensors", tensor: "b", other: "a", offset: 4))
        }
        assertRefused(file(header: #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, data: eight)) {
            XCTAssertEqual(
                $0, .gapBetweenTensors(path: "test.safetensors", tensor: "a", expectedBegin: 0, foundBegin: 4))
        }
        assertRefused(
            file(
                header:
                    #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
                data: four)
        ) { error in
            guard case .invalidHeader(_, let reason) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(reason.contains("duplicate key \"a\""), reason)
        }
        assertRefused(file(header: #"{"__metadata__":{"k":1}}"#, data: [])) { error in
            guard case .invalidHeader(_, let reason) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(reason.contains("\"k\""), reason)
        }
        assertRefused(file(header: String(repeating: "[", count: 100_000), data: [])) { error in
            guard case .invalidHeader = error else { return XCTFail("\(error)") }
        }
        XCTAssertThrowsError(try SafeTensors.read(from: url("missing.safetensors"))) { error in
            guard case .readFailed? = error as? SafeTensorsError else { return XCTFail("\(error)") }
        }

        // Every truncation and every single-byte change of a real file either throws or decodes: never a trap.
        let real = try Array(Data(contentsOf: fixture("safetensors_python", "safetensors")))
        for length in 0..<real.count {
            XCTAssertThrowsError(try SafeTensors.decode(Array(real.prefix(length))), "length \(length)")
        }
        for i in 0..<min(real.count, 600) {
            var damaged = real
            damaged[i] ^= 0x24
            _ = try? SafeTensors.decode(damaged)
        }
    }

    // MARK: Atomic writes

    /// A checkpoint that is a sparse file of 1 TB (no disk used) is refused before anything is allocated for it,
    /// naming the file, its size and the limit (this machine's memory): the reader used to allocate the file's whole
    /// size first, which stops the process when it cannot.
    func testACheckpointLargerThanMemoryIsRefusedBeforeItIsRead() throws {
        let sparse = url("model.safetensors")
        let size = sparseFileSizeBeyondMemory
        try makeSparseFile(at: sparse, size: size)
        let refusal = DataError.fileTooLarge(
            path: sparse.path, size: size, limit: Int(clamping: ProcessInfo.processInfo.physicalMemory))
        XCTAssertThrowsError(try SafeTensors.read(from: sparse)) { XCTAssertEqual($0 as? DataError, refusal) }
        XCTAssertThrowsError(try TrainingCheckpoint.read(at: sparse)) { XCTAssertEqual($0 as? DataError, refusal) }
        XCTAssertTrue(refusal.localizedDescription.contains("\(size) bytes"), refusal.localizedDescription)
    }

    func testAFailedWriteLeavesThePreviousFileIntact() throws {
        let target = url("checkpoint.safetensors")
        try SafeTensors.write(sample, metadata: ["step": "1"], to: target)
        let before = try Data(contentsOf: target)
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: target.path)

        // A throw half-way through the write.
        struct Interrupted: Error {}
        XCTAssertThrowsError(
            try AtomicFile.write(to: target) { writer in
                try writer.write([UInt8](repeating: 0xAB, count: 100))
                throw Interrupted()
            }
        ) { XCTAssertTrue($0 is Interrupted) }
        XCTAssertEqual(try Data(contentsOf: target), before)
        XCTAssertEqual(try temporaryFiles(), [], "the temporary file is removed")

        // A tensor that cannot be encoded: nothing is touched.
        XCTAssertThrowsError(
            try SafeTensors.write(["bad": .float32(shape: [3], values: [])], metadata: [:], to: target))
        XCTAssertEqual(try Data(contentsOf: target), before)

        // The target is a directory: refused before anything is written, the directory and the checkpoint stay.
        let blocked = url("blocked.safetensors")
        try FileManager.default.createDirectory(at: blocked, withIntermediateDirectories: false)
        XCTAssertThrowsError(try SafeTensors.write(sample, metadata: [:], to: blocked)) { error in
            XCTAssertEqual(
                error as? AtomicFileError,
                .notARegularFile(path: blocked.path, resolvedPath: nil, kind: "a directory"))
        }
        XCTAssertEqual(fileType(at: blocked), "directory")
        XCTAssertEqual(try temporaryFiles(), [])

        // The directory does not exist.
        XCTAssertThrowsError(try SafeTensors.write(sample, metadata: [:], to: url("no/such/dir/x.safetensors"))) {
            error in
            guard case .createFailed(_, _, let reason)? = error as? AtomicFileError else { return XCTFail("\(error)") }
            XCTAssertTrue(reason.contains("No such file"), reason)
        }

        // A successful replacement keeps the file's permissions and is read back whole.
        try SafeTensors.write(sample, metadata: ["step": "2"], to: target)
        XCTAssertEqual(try SafeTensors.read(from: target).metadata, ["step": "2"])
        let permissions = try FileManager.default.attributesOfItem(atPath: target.path)[.posixPermissions] as? Int
        XCTAssertEqual(permissions, 0o600)
        XCTAssertEqual(try temporaryFiles(), [])
    }

    /// A write to a symbolic link replaces the file the link points to (atomically, through a temporary file
    /// beside it) and leaves the link a link; it used to replace the link itself with a regular file. A
    /// destination that is a named pipe, itself or behind a link, is refused before anything is written (a rename
    /// used to replace it, device nodes included), and a link loop is refused too.
    func testAWriteFollowsASymbolicLinkAndNeverReplacesANamedPipe() throws {
        let elsewhere = url("elsewhere")
        try FileManager.default.createDirectory(at: elsewhere, withIntermediateDirectories: false)
        let target = elsewhere.appendingPathComponent("model.safetensors")
        try SafeTensors.write(sample, metadata: ["step": "1"], to: target)
        let link = url("link.safetensors")
        try FileManager.default.createSymbolicLink(
            atPath: link.path, withDestinationPath: "elsewhere/model.safetensors")
        try SafeTensors.write(sample, metadata: ["step": "2"], to: link)
        XCTAssertEqual(fileType(at: link), "link")
        XCTAssertEqual(
            try FileManager.default.destinationOfSymbolicLink(atPath: link.path), "elsewhere/model.safetensors")
        XCTAssertEqual(try SafeTensors.read(from: target).metadata, ["step": "2"], "the link's target was replaced")
        XCTAssertEqual(
            try AtomicFile.resolvedDestination(of: link).path, directory.path + "/elsewhere/model.safetensors")

        // A link to a file that does not exist yet: the file is created where the link points.
        let dangling = url("dangling.safetensors")
        try FileManager.default.createSymbolicLink(
            atPath: dangling.path, withDestinationPath: "elsewhere/new.safetensors")
        try SafeTensors.write(sample, metadata: ["step": "3"], to: dangling)
        XCTAssertEqual(fileType(at: dangling), "link")
        XCTAssertEqual(
            try SafeTensors.read(from: elsewhere.appendingPathComponent("new.safetensors")).metadata, ["step": "3"])

        let pipe = url("pipe.safetensors")
        try makeNamedPipe(at: pipe)
        XCTAssertThrowsError(try SafeTensors.write(sample, metadata: [:], to: pipe)) { error in
            XCTAssertEqual(
                error as? AtomicFileError,
                .notARegularFile(path: pipe.path, resolvedPath: nil, kind: "a named pipe (FIFO)"))
            XCTAssertTrue(
                "\(error)".contains("is a named pipe") && "\(error)".contains("nothing was written"), "\(error)")
        }
        let linkToPipe = url("to-pipe.safetensors")
        try FileManager.default.createSymbolicLink(atPath: linkToPipe.path, withDestinationPath: "pipe.safetensors")
        XCTAssertThrowsError(try SafeTensors.write(sample, metadata: [:], to: linkToPipe)) { error in
            XCTAssertEqual(
                error as? AtomicFileError,
                .notARegularFile(path: linkToPipe.path, resolvedPath: pipe.path, kind: "a named pipe (FIFO)"))
        }
        XCTAssertEqual(fileType(at: pipe), "fifo")
        XCTAssertEqual(fileType(at: linkToPipe), "link")

        let loop = url("loop.safetensors")
        try FileManager.default.createSymbolicLink(atPath: loop.path, withDestinationPath: "loop.safetensors")
        XCTAssertThrowsError(try SafeTensors.write(sample, metadata: [:], to: loop)) { error in
            guard case .unresolvableLink(let path, _)? = error as? AtomicFileError else { return XCTFail("\(error)") }
            XCTAssertEqual(path, loop.path)
        }
        XCTAssertEqual(try temporaryFiles(), [])
        XCTAssertEqual(
            try FileManager.default.contentsOfDirectory(atPath: elsewhere.path).filter { $0.hasSuffix(".tmp") }, [])

        // Reading the pipe is refused at once as well (opening it used to wait for a writer).
        guard let read = resultWithin(seconds: 10, unblocking: [pipe], { try SafeTensors.read(from: pipe) }) else {
            return XCTFail("SafeTensors.read blocked on the named pipe")
        }
        XCTAssertThrowsError(try read.get()) { error in
            XCTAssertEqual(
                error as? SafeTensorsError,
                .readFailed(path: pipe.path, reason: "it is a named pipe (FIFO), not a regular file"))
        }
    }

    func testWriteIntoAReadOnlyDirectoryFailsCleanly() throws {
        let target = url("checkpoint.safetensors")
        try SafeTensors.write(sample, metadata: ["step": "1"], to: target)
        let before = try Data(contentsOf: target)
        try FileManager.default.setAttributes([.posixPermissions: 0o555], ofItemAtPath: directory.path)
        defer { _ = try? FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: directory.path) }
        guard !FileManager.default.isWritableFile(atPath: directory.path) else {
            throw XCTSkip("running with privileges that ignore directory permissions (root)")
        }
        XCTAssertThrowsError(try SafeTensors.write(sample, metadata: ["step": "2"], to: target)) { error in
            guard case .createFailed? = error as? AtomicFileError else { return XCTFail("\(error)") }
        }
        XCTAssertEqual(try Data(contentsOf: target), before)
    }
}
