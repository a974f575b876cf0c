import Foundation
import NormKitTraining
import XCTest
import _NormKitTestSupport

/// The gzip and IDX readers and `FashionMNIST.load` on small synthetic files written into a temporary
/// directory: good files, and every kind of damage, each refused with its specific error.
final class IDXTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = try makeTemporaryDirectory("normkit-idx")
    }

    // MARK: Helpers

    private func url(_ name: String) -> URL { directory.appendingPathComponent(name) }

    private func writeBytes(_ bytes: [UInt8], _ name: String) throws -> URL {
        let target = url(name)
        try Data(bytes).write(to: target)
        return target
    }

    /// `count` images of `rows × cols` with a deterministic pattern, and their labels.
    private func images(count: Int, rows: Int = 28, cols: Int = 28, seed: Int = 0) throws -> IDXFile {
        let bytes = (0..<(count * rows * cols)).map { UInt8(truncatingIfNeeded: ($0 &* 7 &+ seed &* 13) % 251) }
        return try IDXFile(dimensions: [count, rows, cols], bytes: bytes)
    }

    private func labels(count: Int, classes: Int = 10) throws -> IDXFile {
        try IDXFile(dimensions: [count], bytes: (0..<count).map { UInt8($0 % classes) })
    }

    private func assertThrows<T>(
        _ expression: @autoclosure () throws -> T, file: StaticString = #filePath,
        line: UInt = #line, _ check: (DataError) -> Void
    ) {
        XCTAssertThrowsError(try expression(), file: file, line: line) { error in
            guard let dataError = error as? DataError else {
                return XCTFail("expected a DataError, got \(type(of: error)): \(error)", file: file, line: line)
            }
            XCTAssertTrue(
                "\(dataError)".contains("Hint") || "\(dataError)".hasPrefix("invalid"),
                "message without a hint: \(dataError)", file: file, line: line)
            check(dataError)
        }
    }

    /// Writes a Fashion-MNIST-like directory; the closures may damage a file's content.
    private func writeDataset(
        train: Int = 12, test: Int = 5, trainLabels: Int? = nil,
        compressTrain: Bool = true, labelBytes: [UInt8]? = nil
    ) throws {
        try images(count: train).write(to: url("train-images-idx3-ubyte.gz"), compressed: compressTrain)
        if let labelBytes {
            try IDXFile(dimensions: [labelBytes.count], bytes: labelBytes)
                .write(to: url("train-labels-idx1-ubyte"))
        } else {
            try labels(count: trainLabels ?? train).write(to: url("train-labels-idx1-ubyte"))
        }
        try images(count: test, seed: 5).write(to: url("t10k-images.idx3-ubyte"))  // original MNIST spelling
        try labels(count: test).write(to: url("t10k-labels-idx1-ubyte.gz"), compressed: true)
    }

    // MARK: Good files

    func testReadsUncompressedLabelsAndImages() throws {
        let labelFile = try labels(count: 7)
        try labelFile.write(to: url("labels"))
        let raw = try Data(contentsOf: url("labels"))
        XCTAssertEqual(Array(raw.prefix(8)), [0, 0, 8, 1, 0, 0, 0, 7], "magic 0x00000801, big-endian count")
        XCTAssertEqual(try IDXFile.read(from: url("labels"), expectedMagic: IDXFile.labelsMagic), labelFile)

        let imageFile = try images(count: 3, rows: 4, cols: 5)
        try imageFile.write(to: url("images"))
        let read = try IDXFile.read(from: url("images"), expectedMagic: IDXFile.imagesMagic)
        XCTAssertEqual(read.dimensions, [3, 4, 5])
        XCTAssertEqual(read.bytes, imageFile.bytes)
        XCTAssertEqual(read.magic, IDXFile.imagesMagic)
    }

    func testReadsGzipCompressedFilesLikeRawOnes() throws {
        let imageFile = try images(count: 9)
        try imageFile.write(to: url("images.gz"), compressed: true)
        let compressed = try Data(contentsOf: url("images.gz"))
        XCTAssertEqual(Array(compressed.prefix(2)), [0x1F, 0x8B])
        XCTAssertLessThan(compressed.count, imageFile.encoded().count)
        XCTAssertEqual(try IDXFile.read(from: url("images.gz")), imageFile)
        // Detected by the magic number too, whatever the name.
        try compressed.write(to: url("images-no-extension"))
        XCTAssertEqual(try IDXFile.read(from: url("images-no-extension")), imageFile)
        // Concatenated gzip members inflate to the concatenation, as with gunzip.
        let twice = try Gzip.compress([1, 2, 3]) + Gzip.compress([4, 5])
        XCTAssertEqual(try Gzip.decompress(twice), [1, 2, 3, 4, 5])
        // A large buffer (more than the first output guess) round-trips.
        let big = (0..<3_000_000).map { UInt8(truncatingIfNeeded: $0 &* 31 >> 3) }
        XCTAssertEqual(try Gzip.decompress(Gzip.compress(big, level: 1)), big)
    }

    // MARK: Damaged files

    func testWrongMagicIsRefused() throws {
        try labels(count: 4).write(to: url("labels"))
        assertThrows(try IDXFile.read(from: url("labels"), expectedMagic: IDXFile.imagesMagic)) { error in
            XCTAssertEqual(error, .idxBadMagic(path: self.url("labels").path, expected: 0x803, found: 0x801))
            XCTAssertTrue(error.description.contains("0x00000803") && error.description.contains("0x00000801"))
        }
        let garbage = try writeBytes([0x50, 0x4B, 0x03, 0x04] + [UInt8](repeating: 0, count: 20), "zip")
        assertThrows(try IDXFile.read(from: garbage)) { error in
            guard case .idxBadMagic(_, _, let found) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(found, 0x504B_0304)
        }
        let floats = try writeBytes([0, 0, 0x0D, 1, 0, 0, 0, 1, 0, 0, 0, 0], "floats")
        assertThrows(try IDXFile.read(from: floats)) { error in
            XCTAssertEqual(error, .idxUnsupportedElementType(path: floats.path, found: 0x0D))
        }
    }

    func testTruncatedFileIsRefused() throws {
        let good = try images(count: 2).encoded()
        let cut = try writeBytes(Array(good.dropLast()), "cut")
        assertThrows(try IDXFile.read(from: cut, expectedMagic: IDXFile.imagesMagic)) { error in
            XCTAssertEqual(
                error,
                .idxLengthMismatch(
                    path: cut.path, dimensions: [2, 28, 28],
                    expected: good.count, found: good.count - 1))
            XCTAssertTrue(error.description.contains("truncated"))
        }
        let header = try writeBytes(Array(good.prefix(9)), "header")
        assertThrows(try IDXFile.read(from: header)) { error in
            XCTAssertEqual(error, .idxHeaderTooShort(path: header.path, expected: 16, found: 9))
        }
        let empty = try writeBytes([], "empty")
        assertThrows(try IDXFile.read(from: empty)) { error in
            XCTAssertEqual(error, .idxHeaderTooShort(path: empty.path, expected: 4, found: 0))
        }
    }

    func testWrongCountAndTrailingBytesAreRefused() throws {
        // The header says 5 labels, the file holds 4.
        let short = try writeBytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2, 3, 4], "short")
        assertThrows(try IDXFile.read(from: short, expectedMagic: IDXFile.labelsMagic)) { error in
            XCTAssertEqual(error, .idxLengthMismatch(path: short.path, dimensions: [5], expected: 13, found: 12))
        }
        // Trailing bytes after the data.
        let long = try writeBytes(labels(count: 4).encoded() + [9, 9], "long")
        assertThrows(try IDXFile.read(from: long, expectedMagic: IDXFile.labelsMagic)) { error in
            XCTAssertEqual(error, .idxLengthMismatch(path: long.path, dimensions: [4], expected: 12, found: 14))
            XCTAssertTrue(error.description.contains("2 trailing bytes"))
        }
        // Absurd dimensions neither trap nor allocate.
        let huge = try writeBytes(
            [0, 0, 8, 3, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], "huge")
        assertThrows(try IDXFile.read(from: huge)) { error in
            XCTAssertEqual(
                error, .idxDimensionsOverflow(path: huge.path, dimensions: [0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF]))
        }
        let big = try writeBytes([0, 0, 8, 1, 0xFF, 0xFF, 0xFF, 0xFF, 1], "big")
        assertThrows(try IDXFile.read(from: big)) { error in
            XCTAssertEqual(
                error,
                .idxLengthMismatch(path: big.path, dimensions: [0xFFFF_FFFF], expected: 8 + 0xFFFF_FFFF, found: 9))
        }
    }

    func testCorruptAndTruncatedGzipAreRefused() throws {
        let compressed = try Gzip.compress(images(count: 20).encoded())
        var corrupt = compressed
        for i in stride(from: 20, to: corrupt.count - 20, by: 7) { corrupt[i] ^= 0x5A }
        let corruptURL = try writeBytes(corrupt, "corrupt.gz")
        assertThrows(try IDXFile.read(from: corruptURL)) { error in
            guard case .corruptGzip(let path, _) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(path, corruptURL.path)
        }
        // A changed CRC is caught by zlib's trailer check.
        var badCRC = compressed
        badCRC[badCRC.count - 6] ^= 1
        assertThrows(try Gzip.decompress(badCRC, source: "crc.gz")) { error in
            guard case .corruptGzip(_, let reason) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(reason.contains("check"), reason)
        }
        let truncatedURL = try writeBytes(Array(compressed.prefix(compressed.count / 2)), "truncated.gz")
        assertThrows(try IDXFile.read(from: truncatedURL)) { error in
            guard case .truncatedGzip(let path, let compressedBytes, _) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(path, truncatedURL.path)
            XCTAssertEqual(compressedBytes, compressed.count / 2)
        }
        assertThrows(try Gzip.decompress(Array(compressed.dropLast(3)), source: "trailer.gz")) { error in
            guard case .truncatedGzip = error else { return XCTFail("\(error)") }
        }
        assertThrows(try Gzip.decompress(compressed + [0, 1, 2], source: "junk.gz")) { error in
            XCTAssertEqual(error, .trailingGzipData(path: "junk.gz", offset: compressed.count, count: 3))
        }
        // A .gz name with data that is not gzip at all.
        let plain = try writeBytes(labels(count: 3).encoded(), "plain.gz")
        assertThrows(try IDXFile.read(from: plain)) { error in
            guard case .corruptGzip = error else { return XCTFail("\(error)") }
        }
        assertThrows(try Gzip.readFile(at: url("does-not-exist.gz"))) { error in
            guard case .readFailed(_, let reason) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(reason.contains("No such file"), reason)
        }
        assertThrows(try Gzip.readFile(at: directory)) { error in
            guard case .readFailed = error else { return XCTFail("\(error)") }
        }
    }

    /// A labels file whose header declares 10 labels but whose gzip data inflates to 10 MB of zeros (a
    /// decompression bomb, 10 KB on disk) is refused as soon as its output passes the 18 bytes the header
    /// declares, without allocating the 10 MB (the reader used to inflate all of it, then compare lengths).
    func testAGzipBombIsRefusedAtTheSizeItsHeaderDeclaresWithoutAllocatingIt() throws {
        let declared = try labels(count: 10).encoded()
        XCTAssertEqual(declared.count, 18)
        let bomb = try Gzip.compress(declared + [UInt8](repeating: 0, count: 10_000_000), level: 9)
        XCTAssertLessThan(bomb.count, 20_000, "the bomb is small on disk")
        let bombURL = try writeBytes(bomb, "train-labels-idx1-ubyte.gz")

        let measured = resetPeakResidentBytes()
        let before = peakResidentBytes()
        assertThrows(try IDXFile.read(from: bombURL, expectedMagic: IDXFile.labelsMagic)) { error in
            XCTAssertEqual(error, .decompressedTooLarge(path: bombURL.path, limit: 18, dimensions: [10]))
            XCTAssertTrue(
                error.description.contains("decompresses to more than the 18 bytes its IDX header declares"),
                error.description)
        }
        if measured, let before, let after = peakResidentBytes() {
            XCTAssertLessThan(
                after - before, 4_000_000, "refusing the bomb should not allocate its 10 MB of output")
        }

        // The cap itself: output up to the limit inflates, one byte more is refused; a prefix stops early.
        let compressed = try Gzip.compress(declared)
        XCTAssertEqual(try Gzip.decompress(compressed, maximumOutput: 18), declared)
        assertThrows(try Gzip.decompress(compressed, source: "labels.gz", maximumOutput: 17)) { error in
            XCTAssertEqual(error, .decompressedTooLarge(path: "labels.gz", limit: 17, dimensions: nil))
        }
        assertThrows(try Gzip.decompress(bomb, source: "bomb.gz", maximumOutput: 1_000)) { error in
            XCTAssertEqual(error, .decompressedTooLarge(path: "bomb.gz", limit: 1_000, dimensions: nil))
        }
        XCTAssertEqual(try Gzip.decompressPrefix(bomb, count: 8), Array(declared.prefix(8)))
        XCTAssertEqual(try Gzip.decompressPrefix(compressed, count: 1_000), declared, "a shorter stream: all of it")
        // A dataset whose labels file is the bomb: the same error from FashionMNIST.load.
        try writeDataset()
        try FileManager.default.removeItem(at: url("train-labels-idx1-ubyte"))
        let bombLabels = try writeBytes(
            Gzip.compress(labels(count: 12).encoded() + [UInt8](repeating: 0, count: 10_000_000), level: 9),
            "train-labels-idx1-ubyte.gz")
        assertThrows(try FashionMNIST.load(directory: directory)) { error in
            XCTAssertEqual(error, .decompressedTooLarge(path: bombLabels.path, limit: 20, dimensions: [12]))
        }
    }

    /// A gzip-compressed images file whose header declares 4,294,967,295 × 65,535 × 1 bytes (281 TB: no overflow,
    /// far beyond this machine's memory) is refused from its header, naming the dimensions, the declared size and
    /// the limit, before anything more is inflated: the reader used to inflate the stream (here 10 MB of zeros, 10
    /// KB on disk) with the declared size as its only cap. Dimensions whose product overflows are refused as such.
    func testAnIDXHeaderDeclaringMoreThanMemoryIsRefusedBeforeInflating() throws {
        let header: [UInt8] = [0, 0, 8, 3, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0xFF, 0xFF, 0, 0, 0, 1]
        let dimensions = [0xFFFF_FFFF, 0xFFFF, 1], declared = 16 + 0xFFFF_FFFF * 0xFFFF
        let limit = Int(clamping: ProcessInfo.processInfo.physicalMemory)
        XCTAssertGreaterThan(declared, limit)
        let bombURL = try writeBytes(
            Gzip.compress(header + [UInt8](repeating: 0, count: 10_000_000), level: 9), "train-images-idx3-ubyte.gz")

        let measured = resetPeakResidentBytes()
        let before = peakResidentBytes()
        assertThrows(try IDXFile.read(from: bombURL, expectedMagic: IDXFile.imagesMagic)) { error in
            XCTAssertEqual(
                error,
                .idxDeclaredSizeTooLarge(path: bombURL.path, dimensions: dimensions, size: declared, limit: limit))
            XCTAssertTrue(
                error.description.contains("declares dimensions \(dimensions), \(declared) bytes"), error.description)
        }
        if measured, let before, let after = peakResidentBytes() {
            XCTAssertLessThan(after - before, 4_000_000, "refusing the header should not inflate the 10 MB behind it")
        }

        let overflowing = try writeBytes(
            Gzip.compress([0, 0, 8, 3] + [UInt8](repeating: 0xFF, count: 12)), "overflow-idx3-ubyte.gz")
        assertThrows(try IDXFile.read(from: overflowing)) { error in
            XCTAssertEqual(
                error,
                .idxDimensionsOverflow(path: overflowing.path, dimensions: [0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF]))
        }
    }

    /// A dataset file that is a named pipe is refused at once, naming the path and what it is: opening it for
    /// reading used to wait forever for a writer (in the fingerprint and in the IDX reader). A directory under
    /// the only spelling of a file is named as one too, rather than reported as missing.
    func testADatasetFileThatIsANamedPipeOrADirectoryIsRefusedByName() throws {
        try writeDataset()
        let pipe = url("train-labels-idx1-ubyte")
        try FileManager.default.removeItem(at: pipe)
        try makeNamedPipe(at: pipe)
        let directory = self.directory!
        let refusal = DataError.readFailed(path: pipe.path, reason: "it is a named pipe (FIFO), not a regular file")
        let readers: [(String, @Sendable () throws -> Void)] = [
            ("FashionMNIST.load", { _ = try FashionMNIST.load(directory: directory) }),
            ("FashionMNIST.source", { _ = try FashionMNIST.source(in: directory) }),
            ("IDXFile.read", { _ = try IDXFile.read(from: pipe) }),
            ("Gzip.readFile", { _ = try Gzip.readFile(at: pipe) }),
        ]
        for (name, read) in readers {
            guard let result = resultWithin(seconds: 10, unblocking: [pipe], read) else {
                XCTFail("\(name) blocked on the named pipe \(pipe.path)")
                continue
            }
            assertThrows(try result.get()) { error in
                XCTAssertEqual(error, refusal, name)
                XCTAssertTrue(error.description.contains("is a named pipe"), error.description)
            }
        }
        XCTAssertEqual(fileType(at: pipe), "fifo")

        try FileManager.default.removeItem(at: pipe)
        try FileManager.default.createDirectory(at: pipe, withIntermediateDirectories: false)
        assertThrows(try FashionMNIST.load(directory: directory)) { error in
            XCTAssertEqual(error, .readFailed(path: pipe.path, reason: "it is a directory, not a regular file"))
        }
    }

    /// `Gzip.decompress` and `Gzip.readFile` without `maximumOutput` inflated without a limit, so a bomb that inflates
    /// past this machine's memory stopped the process when an allocation failed. Their limit is now the machine's
    /// memory (`MemoryLimit.bytes`), checked here through the package entry points with a small `memory`: a
    /// stream that inflates to more is refused with `decompressedTooLarge` naming the limit; one that fits, or an
    /// explicit `maximumOutput`, inflates as before.
    func testWithoutAMaximumAGzipStreamIsLimitedToMemory() throws {
        let zeros = [UInt8](repeating: 0, count: 1_000_000)
        let bomb = try Gzip.compress(zeros, level: 9)
        let bombURL = try writeBytes(bomb, "bomb.gz")
        assertThrows(try Gzip.decompress(bomb, source: "bomb.gz", maximumOutput: nil, memory: 10_000)) { error in
            XCTAssertEqual(error, .decompressedTooLarge(path: "bomb.gz", limit: 10_000, dimensions: nil))
            XCTAssertTrue(error.description.contains("more than 10000 bytes"), error.description)
        }
        assertThrows(try Gzip.readFile(at: bombURL, maximumOutput: nil, memory: 10_000)) { error in
            XCTAssertEqual(error, .decompressedTooLarge(path: bombURL.path, limit: 10_000, dimensions: nil))
        }
        XCTAssertEqual(try Gzip.decompress(bomb, source: "bomb.gz", maximumOutput: nil, memory: zeros.count), zeros)
        XCTAssertEqual(try Gzip.readFile(at: bombURL, maximumOutput: nil, memory: zeros.count), zeros)
        XCTAssertEqual(try Gzip.decompress(bomb, source: "bomb.gz", maximumOutput: zeros.count, memory: 10), zeros)
        // The public entry points: this machine's memory, far more than the stream.
        XCTAssertEqual(try Gzip.decompress(bomb), zeros)
        XCTAssertEqual(try Gzip.readFile(at: bombURL), zeros)
    }

    /// A dataset file that is a sparse file of 1 TB (no disk used) is refused before anything is allocated for it,
    /// naming the file, its size and the limit (this machine's memory): the reader used to allocate the file's whole
    /// size first, which stops the process when it cannot.
    func testADatasetFileLargerThanMemoryIsRefusedBeforeItIsRead() throws {
        try writeDataset()
        let sparse = url("train-labels-idx1-ubyte")
        let size = sparseFileSizeBeyondMemory
        try makeSparseFile(at: sparse, size: size)
        let refusal = DataError.fileTooLarge(
            path: sparse.path, size: size, limit: Int(clamping: ProcessInfo.processInfo.physicalMemory))
        let directory = self.directory!
        let readers: [(String, () throws -> Void)] = [
            ("FashionMNIST.load", { _ = try FashionMNIST.load(directory: directory) }),
            ("FashionMNIST.source", { _ = try FashionMNIST.source(in: directory) }),
            ("IDXFile.read", { _ = try IDXFile.read(from: sparse) }),
            ("Gzip.readFile", { _ = try Gzip.readFile(at: sparse) }),
        ]
        for (name, read) in readers {
            assertThrows(try read()) { error in
                XCTAssertEqual(error, refusal, name)
                XCTAssertTrue(
                    error.description.contains(
                        "\(sparse.path): the file is \(size) bytes, more than this machine's memory"),
                    error.description)
            }
        }
    }

    // MARK: Datasets from IDX files

    func testLoadsSyntheticDatasetWithTrainingStatistics() throws {
        try writeDataset(train: 12, test: 5)
        let (train, test) = try FashionMNIST.load(directory: directory, trainLimit: 10)
        XCTAssertEqual(train.count, 10)
        XCTAssertEqual(test.count, 5)
        XCTAssertEqual(train.shape, [10, 1, 28, 28])
        XCTAssertEqual(train.images.count, 10 * 784)
        XCTAssertEqual(Array(train.labels.prefix(4)), [0, 1, 2, 3])
        XCTAssertEqual(train.classNames, FashionMNIST.classNames)
        XCTAssertEqual(FashionMNIST.classNames.count, 10)

        // The statistics are those of the 10 training images used, computed in Double, and both splits use them.
        let rawTrain = try images(count: 12).bytes.prefix(10 * 784).map { Double($0) / 255 }
        let mean = rawTrain.reduce(0, +) / Double(rawTrain.count)
        let std = (rawTrain.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(rawTrain.count)).squareRoot()
        XCTAssertEqual(train.mean, mean, accuracy: 1e-12)
        XCTAssertEqual(train.std, std, accuracy: 1e-12)
        XCTAssertEqual(test.statistics, train.statistics)
        let rawTest = try images(count: 5, seed: 5).bytes
        for i in [0, 1, 100, 783, 3000] {
            XCTAssertEqual(test.images[i], Float((Double(rawTest[i]) / 255 - mean) / std), accuracy: 1e-6)
        }
        let standardised = train.images.map(Double.init)
        XCTAssertEqual(standardised.reduce(0, +) / Double(standardised.count), 0, accuracy: 1e-5)
        XCTAssertEqual(train.zeroPixelValue, Float(-mean / std), accuracy: 1e-6)

        // Without a limit, every image; a limit above the count is the whole file.
        XCTAssertEqual(try FashionMNIST.load(directory: directory, trainLimit: 1000, testLimit: 2).train.count, 12)
        XCTAssertEqual(try FashionMNIST.load(directory: directory, testLimit: 2).test.count, 2)
        assertThrows(try FashionMNIST.load(directory: directory, trainLimit: 0)) { error in
            guard case .invalidArgument = error else { return XCTFail("\(error)") }
        }
    }

    func testImageAndLabelCountMismatchNamesBothCounts() throws {
        try writeDataset(train: 12, trainLabels: 11)
        assertThrows(try FashionMNIST.load(directory: directory)) { error in
            XCTAssertEqual(
                error,
                .countMismatch(
                    imagesPath: self.url("train-images-idx3-ubyte.gz").path, images: 12,
                    labelsPath: self.url("train-labels-idx1-ubyte").path, labels: 11))
            XCTAssertTrue(error.description.contains("12 images") && error.description.contains("11 labels"))
        }
    }

    func testLabelOutOfRangeIsRefused() throws {
        try writeDataset(train: 4, labelBytes: [0, 9, 10, 1])
        assertThrows(try FashionMNIST.load(directory: directory)) { error in
            XCTAssertEqual(
                error,
                .labelOutOfRange(
                    path: self.url("train-labels-idx1-ubyte").path, index: 2, label: 10, classCount: 10))
        }
    }

    func testWrongImageSizeIsRefused() throws {
        try writeDataset()
        try images(count: 12, rows: 27, cols: 28).write(to: url("train-images-idx3-ubyte.gz"), compressed: true)
        assertThrows(try FashionMNIST.load(directory: directory)) { error in
            XCTAssertEqual(
                error,
                .unexpectedShape(
                    path: self.url("train-images-idx3-ubyte.gz").path,
                    expected: "(count, 28, 28)", found: [12, 27, 28]))
        }
    }

    func testSwappedImagesAndLabelsAreRefused() throws {
        try writeDataset()
        try FileManager.default.removeItem(at: url("train-labels-idx1-ubyte"))
        try images(count: 12).write(to: url("train-labels-idx1-ubyte"))
        assertThrows(try FashionMNIST.load(directory: directory)) { error in
            XCTAssertEqual(
                error,
                .idxBadMagic(
                    path: self.url("train-labels-idx1-ubyte").path,
                    expected: IDXFile.labelsMagic, found: IDXFile.imagesMagic))
        }
    }

    func testMissingDatasetSaysHowToInstallIt() throws {
        try labels(count: 3).write(to: url("t10k-labels-idx1-ubyte"))
        assertThrows(try FashionMNIST.load(directory: directory)) { error in
            guard case .datasetNotFound(let path, let missing) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(path, self.directory.path)
            XCTAssertEqual(missing.count, 3)
            XCTAssertTrue(error.description.contains("apt-get install dataset-fashion-mnist"), error.description)
            XCTAssertTrue(error.description.contains("--data DIR"), error.description)
        }
        assertThrows(try FashionMNIST.load(directory: directory.appendingPathComponent("nowhere"))) { error in
            guard case .datasetNotFound(_, let missing) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(missing.count, 4)
        }
    }
}
