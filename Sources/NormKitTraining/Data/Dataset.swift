import Dispatch
import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The mean and standard deviation of pixels scaled to [0, 1]: the one scalar each that standardises a dataset.
///
/// Computed in `Double` from a histogram of the 256 byte values, so the result does not depend on the order
/// of the pixels and carries no rounding from a long float sum. The standard deviation is the population one
/// (divided by the number of pixels, as NumPy's `std()`).
public struct PixelStatistics: Equatable, Sendable, Codable {
    /// Mean pixel value, on the [0, 1] scale.
    public var mean: Double
    /// Standard deviation of the pixel values, on the [0, 1] scale.
    public var std: Double

    /// Statistics given explicitly (for example read back from a checkpoint).
    public init(mean: Double, std: Double) {
        self.mean = mean
        self.std = std
    }

    /// The statistics of `pixels` (bytes, scaled by 1/255). An empty collection gives mean 0 and std 0.
    public init<C: Collection>(pixels: C) where C.Element == UInt8 {
        var histogram = [Int](repeating: 0, count: 256)
        let counted = pixels.withContiguousStorageIfAvailable { buffer -> Bool in
            for byte in buffer { histogram[Int(byte)] += 1 }
            return true
        }
        if counted == nil { for byte in pixels { histogram[Int(byte)] += 1 } }
        let n = Double(pixels.count)
        guard n > 0 else {
            self.init(mean: 0, std: 0)
            return
        }
        // One byte value only: the std is exactly 0 (the float sums below would leave ~1e-18 of rounding, which
        // would pass a `> 0` check and scale standardised images by ~1e16).
        if let only = histogram.firstIndex(where: { $0 > 0 }), histogram[(only + 1)...].allSatisfy({ $0 == 0 }) {
            self.init(mean: Double(only) / 255, std: 0)
            return
        }
        var sum = 0.0
        for (value, count) in histogram.enumerated() { sum += Double(count) * Double(value) }
        let mean = sum / 255 / n
        var squares = 0.0
        for (value, count) in histogram.enumerated() {
            let d = Double(value) / 255 - mean
            squares += Double(count) * d * d
        }
        self.init(mean: mean, std: (squares / n).squareRoot())
    }

    /// The standardised value of a raw byte: `(pixel / 255 − mean) / std`, rounded once to `Float`.
    public func standardized(_ pixel: UInt8) -> Float {
        Float((Double(pixel) / 255 - mean) / std)
    }

    /// The 256 standardised values, indexed by raw byte.
    func lookupTable() -> [Float] { (0...255).map { standardized(UInt8($0)) } }
}

/// A labelled image dataset in memory: standardised float32 images in NCHW order and integer labels.
///
/// `images` holds `count × channels × height × width` values, sample after sample, each sample's planes
/// row-major: exactly the memory of a channels-first ``/NormKit/Tensor`` of shape `(count, channels, height, width)`.
/// Pixels were scaled to [0, 1] and then standardised with ``statistics`` — for both splits of a dataset, the
/// statistics of the *training* images that are used, so a test image is transformed exactly as a training
/// image would be.
public struct Dataset: Sendable {
    /// Standardised pixels, NCHW, contiguous.
    public let images: [Float]
    /// One label per sample, in `0..<classCount`.
    public let labels: [Int32]
    /// Number of samples.
    public let count: Int
    /// Channels per image (1 for Fashion-MNIST).
    public let channels: Int
    /// Image height in pixels.
    public let height: Int
    /// Image width in pixels.
    public let width: Int
    /// Number of classes; every label is below it.
    public let classCount: Int
    /// A name per class (empty when unknown).
    public let classNames: [String]
    /// The training-set statistics the images were standardised with.
    public let statistics: PixelStatistics
    /// Where the images came from (set by ``FashionMNIST/load(directory:trainLimit:testLimit:statistics:)``; nil
    /// for a dataset built in memory).
    public var source: DataSource?

    /// Mean of the training pixels on the [0, 1] scale (``statistics``' mean).
    public var mean: Double { statistics.mean }
    /// Standard deviation of the training pixels on the [0, 1] scale (``statistics``' std).
    public var std: Double { statistics.std }
    /// Values per sample: `channels × height × width`.
    public var sampleSize: Int { channels * height * width }
    /// The shape of the whole dataset as a tensor: `(count, channels, height, width)`.
    public var shape: [Int] { [count, channels, height, width] }
    /// The standardised value of a raw 0 (black) pixel, `−mean / std`: what zero-padding a raw image becomes
    /// after standardisation, and so the pad value of ``Augmentation``.
    public var zeroPixelValue: Float { statistics.standardized(0) }

    /// A dataset from already standardised images.
    ///
    /// - Throws: ``DataError/invalidArgument(name:value:expected:)`` when the sizes disagree, a dimension is not
    ///   positive or the sizes' product exceeds `Int.max`, `classNames` does not have `classCount` names or
    ///   `statistics` has a std that is not positive and finite; ``DataError/labelOutOfRange(path:index:label:classCount:)``
    ///   for a label outside `0..<classCount`.
    public init(
        images: [Float], labels: [Int32], channels: Int = 1, height: Int, width: Int, classCount: Int,
        classNames: [String] = [], statistics: PixelStatistics
    ) throws {
        guard channels > 0, height > 0, width > 0 else {
            throw DataError.invalidArgument(
                name: "image shape", value: "\([channels, height, width])", expected: "positive dimensions")
        }
        guard classCount > 0, classNames.isEmpty || classNames.count == classCount else {
            throw DataError.invalidArgument(
                name: "class names", value: "\(classNames.count) names for \(classCount) classes",
                expected: "a positive class count and no names or one name per class")
        }
        guard let size = [channels, height, width].checkedProduct, let total = [labels.count, size].checkedProduct
        else {
            throw DataError.invalidArgument(
                name: "image shape", value: "\(labels.count) × \([channels, height, width])",
                expected: "labels × channels × height × width of at most Int.max (\(Int.max)) values")
        }
        guard images.count == total else {
            throw DataError.invalidArgument(
                name: "image buffer", value: "\(images.count) values",
                expected: "\(labels.count) labels × \(size) values per image = \(total)")
        }
        if let index = labels.firstIndex(where: { $0 < 0 || Int($0) >= classCount }) {
            throw DataError.labelOutOfRange(
                path: "<memory>", index: index, label: Int(labels[index]), classCount: classCount)
        }
        try Dataset.checkStatistics(statistics, source: "<memory>")
        self.images = images
        self.labels = labels
        self.count = labels.count
        self.channels = channels
        self.height = height
        self.width = width
        self.classCount = classCount
        self.classNames = classNames
        self.statistics = statistics
    }

    /// A dataset from raw bytes, standardised with `statistics`.
    ///
    /// - Throws: see ``init(images:labels:channels:height:width:classCount:classNames:statistics:)``; also
    ///   ``DataError/invalidArgument(name:value:expected:)`` when `statistics.std` is not positive.
    public init(
        pixels: [UInt8], labels: [Int32], channels: Int = 1, height: Int, width: Int, classCount: Int,
        classNames: [String] = [], statistics: PixelStatistics
    ) throws {
        try Dataset.checkStatistics(statistics, source: "<memory>")
        try self.init(
            images: Dataset.standardize(pixels[...], statistics: statistics), labels: labels,
            channels: channels, height: height, width: width, classCount: classCount,
            classNames: classNames, statistics: statistics)
    }

    /// The samples `range` as a dataset of their own (same shape, classes, names, statistics and source).
    ///
    /// - Throws: ``DataError/invalidArgument(name:value:expected:)`` when `range` is empty or not within
    ///   `0..<count`.
    public func samples(_ range: Range<Int>) throws -> Dataset {
        guard !range.isEmpty, range.lowerBound >= 0, range.upperBound <= count else {
            throw DataError.invalidArgument(
                name: "sample range", value: "\(range)",
                expected: "a non-empty range within 0..<\(count)")
        }
        var part = try Dataset(
            images: Array(images[(range.lowerBound * sampleSize)..<(range.upperBound * sampleSize)]),
            labels: Array(labels[range]), channels: channels, height: height, width: width,
            classCount: classCount, classNames: classNames, statistics: statistics)
        part.source = source
        return part
    }

    /// Loads a dataset from an IDX images file (`0x00000803`, `count × height × width`) and an IDX labels file
    /// (`0x00000801`), gzip-compressed or not.
    ///
    /// - Parameters:
    ///   - imagesFile: the images file.
    ///   - labelsFile: the labels file.
    ///   - classCount: every label must be below it.
    ///   - classNames: one name per class, or none.
    ///   - imageSize: when given, the `(height, width)` the images must have.
    ///   - limit: use only the first `limit` samples (at least 1; nil or more than the file holds: all).
    ///   - statistics: standardise with these; nil computes them from the samples used (a training set).
    /// - Throws: ``DataError``: unreadable or malformed files, an image/label count mismatch naming both counts,
    ///   an out-of-range label, images of the wrong size, a bad limit, or images that are all one value.
    public static func loadIDX(
        images imagesFile: URL, labels labelsFile: URL, classCount: Int,
        classNames: [String] = [], imageSize: (height: Int, width: Int)? = nil,
        limit: Int? = nil, statistics: PixelStatistics? = nil
    ) throws -> Dataset {
        try checkSampleLimit(limit)
        let files = try IDXPair.read(images: imagesFile, labels: labelsFile)
        return try loadIDX(
            files, images: imagesFile, labels: labelsFile, classCount: classCount, classNames: classNames,
            imageSize: imageSize, limit: limit, statistics: statistics)
    }

    /// ``loadIDX(images:labels:classCount:classNames:imageSize:limit:statistics:)`` from files already read.
    static func loadIDX(
        _ files: IDXPair, images imagesFile: URL, labels labelsFile: URL, classCount: Int,
        classNames: [String] = [], imageSize: (height: Int, width: Int)? = nil,
        limit: Int? = nil, statistics: PixelStatistics? = nil
    ) throws -> Dataset {
        try checkSampleLimit(limit)
        let labelFile = files.labels, imageFile = files.images
        let dims = imageFile.dimensions
        guard dims[1] > 0, dims[2] > 0 else {
            throw DataError.unexpectedShape(
                path: imagesFile.path, expected: "(count, height, width) with positive height and width", found: dims)
        }
        if let imageSize, dims[1] != imageSize.height || dims[2] != imageSize.width {
            throw DataError.unexpectedShape(
                path: imagesFile.path, expected: "(count, \(imageSize.height), \(imageSize.width))", found: dims)
        }
        guard dims[0] == labelFile.dimensions[0] else {
            throw DataError.countMismatch(
                imagesPath: imagesFile.path, images: dims[0], labelsPath: labelsFile.path,
                labels: labelFile.dimensions[0])
        }
        if let index = labelFile.bytes.firstIndex(where: { Int($0) >= classCount }) {
            throw DataError.labelOutOfRange(
                path: labelsFile.path, index: index, label: Int(labelFile.bytes[index]), classCount: classCount)
        }
        let used = min(limit ?? dims[0], dims[0])
        guard used > 0 else {
            throw DataError.unexpectedShape(path: imagesFile.path, expected: "at least one image", found: dims)
        }
        let size = dims[1] * dims[2]
        let pixels = imageFile.bytes[0..<(used * size)]
        let stats = statistics ?? PixelStatistics(pixels: pixels)
        try checkStatistics(stats, source: imagesFile.path)
        return try Dataset(
            images: standardize(pixels, statistics: stats), labels: labelFile.bytes[0..<used].map { Int32($0) },
            channels: 1, height: dims[1], width: dims[2], classCount: classCount, classNames: classNames,
            statistics: stats)
    }

    private static func checkStatistics(_ statistics: PixelStatistics, source: String) throws {
        if statistics.std == 0, statistics.mean.isFinite {
            throw DataError.invalidArgument(
                name: "pixel statistics of \(source)",
                value: "every pixel is \(Int((statistics.mean * 255).rounded())) (std 0)",
                expected: "training images that are not all one value: a constant image set cannot be standardised")
        }
        guard statistics.std > 0, statistics.std.isFinite, statistics.mean.isFinite else {
            throw DataError.invalidArgument(
                name: "pixel statistics of \(source)", value: "mean \(statistics.mean), std \(statistics.std)",
                expected: "a finite mean and a positive std (training images that are not all one value)")
        }
        // Statistics from a file (a checkpoint's data record) can be finite and still standardise a pixel past
        // Float's range (mean 1e300, std 1e-300): the model would then see infinities and look diverged.
        guard statistics.standardized(0).isFinite, statistics.standardized(255).isFinite else {
            throw DataError.invalidArgument(
                name: "pixel statistics of \(source)", value: "mean \(statistics.mean), std \(statistics.std)",
                expected: "statistics that standardise pixels, (p − mean) / std, to finite floats")
        }
    }

    /// `pixels` standardised through a 256-entry table (exactly `statistics.standardized` per byte).
    private static func standardize(_ pixels: ArraySlice<UInt8>, statistics: PixelStatistics) -> [Float] {
        let table = statistics.lookupTable()
        return [Float](unsafeUninitializedCapacity: pixels.count) { out, initialized in
            pixels.withUnsafeBufferPointer { source in
                table.withUnsafeBufferPointer { lookup in
                    for i in 0..<source.count { out[i] = lookup[Int(source[i])] }
                }
            }
            initialized = pixels.count
        }
    }
}

/// Fashion-MNIST (Zalando): 60,000 training and 10,000 test greyscale images of 28×28 pixels in 10 classes.
public enum FashionMNIST {
    /// Where the Debian package `dataset-fashion-mnist` installs the files.
    public static let defaultDirectory = URL(fileURLWithPath: "/usr/share/datasets/fashion-mnist")
    /// The ten class names, indexed by label.
    public static let classNames = [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ]
    /// Number of classes.
    public static let classCount = 10
    /// Image height and width in pixels.
    public static let imageSize = 28

    /// Loads both splits.
    ///
    /// Each file is looked for as `NAME.gz`, `NAME` and (the original MNIST spelling) with a dot before
    /// `idx`, for example `train-images-idx3-ubyte.gz`, `train-images-idx3-ubyte`, `train-images.idx3-ubyte`.
    /// Pixels are scaled to [0, 1] and standardised with the mean and std of the training images used (the
    /// first `trainLimit`); the test images get the same statistics.
    ///
    /// - Parameters:
    ///   - directory: the directory with the four IDX files; nil means ``defaultDirectory``.
    ///   - trainLimit: use only the first `trainLimit` training images (nil: all 60,000).
    ///   - testLimit: use only the first `testLimit` test images (nil: all 10,000).
    ///   - statistics: standardise both splits with these (the ones a checkpoint recorded) instead of the
    ///     training images' own.
    /// - Throws: ``DataError/datasetNotFound(directory:missing:)`` (saying how to install the dataset) when
    ///   files are missing; any other ``DataError`` for a malformed file.
    public static func load(
        directory: URL? = nil, trainLimit: Int? = nil, testLimit: Int? = nil,
        statistics: PixelStatistics? = nil
    ) throws -> (train: Dataset, test: Dataset) {
        let directory = directory ?? defaultDirectory
        let found = try files(in: directory)
        // The fingerprint and the test files (hashing and inflating ~30 MB, a third of a second) on a second
        // thread while this one inflates the training images; the errors are thrown in the order a sequential
        // load meets them (fingerprint, training files, test files).
        let background = BackgroundWork {
            (
                source: Result { try DataSource(directory: directory, files: found) },
                test: Result { try IDXPair.read(images: found[2], labels: found[3]) }
            )
        }
        let trainFiles = Result { try IDXPair.read(images: found[0], labels: found[1]) }
        let (sourceResult, testFiles) = background.wait()
        let source = try sourceResult.get()
        let size = (height: imageSize, width: imageSize)
        try Dataset.checkSampleLimit(trainLimit)
        var train = try Dataset.loadIDX(
            trainFiles.get(), images: found[0], labels: found[1], classCount: classCount, classNames: classNames,
            imageSize: size, limit: trainLimit, statistics: statistics)
        try Dataset.checkSampleLimit(testLimit)
        var test = try Dataset.loadIDX(
            testFiles.get(), images: found[2], labels: found[3], classCount: classCount, classNames: classNames,
            imageSize: size, limit: testLimit, statistics: train.statistics)
        train.source = source
        test.source = source
        return (train, test)
    }

    /// The test split alone, standardised with `statistics` (the training statistics a checkpoint recorded).
    public static func loadTest(directory: URL? = nil, limit: Int? = nil, statistics: PixelStatistics) throws -> Dataset
    {
        let directory = directory ?? defaultDirectory
        let found = try files(in: directory)
        var test = try Dataset.loadIDX(
            images: found[2], labels: found[3], classCount: classCount, classNames: classNames,
            imageSize: (imageSize, imageSize), limit: limit, statistics: statistics)
        test.source = try DataSource(directory: directory, files: found)
        return test
    }

    /// The fingerprint of the dataset in `directory` (see ``DataSource``), without loading it.
    public static func source(in directory: URL? = nil) throws -> DataSource {
        let directory = directory ?? defaultDirectory
        return try DataSource(directory: directory, files: files(in: directory))
    }

    /// The four files, in the order train images, train labels, test images, test labels.
    private static func files(in directory: URL) throws -> [URL] {
        let names = [
            "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ]
        var found: [URL] = []
        var missing: [String] = []
        for name in names {
            if let url = locate(name, in: directory) { found.append(url) } else { missing.append("\(name)(.gz)") }
        }
        guard missing.isEmpty else { throw DataError.datasetNotFound(directory: directory.path, missing: missing) }
        return found
    }

    /// The first regular file among the spellings of `name`; when none is one, the first spelling that exists
    /// as anything else (a named pipe, a device, a directory, a dangling or looping symbolic link), so that
    /// reading it fails with an error naming the path and what it is instead of "not found"; nil when no
    /// spelling exists at all.
    private static func locate(_ name: String, in directory: URL) -> URL? {
        let dotted = name.replacingOccurrences(of: "-idx", with: ".idx")
        var other: URL?
        for candidate in [name + ".gz", name, dotted + ".gz", dotted] {
            let url = directory.appendingPathComponent(candidate)
            var info = stat()
            if stat(url.path, &info) == 0, nonRegularFileKind(info.st_mode) == nil { return url }
            if other == nil, lstat(url.path, &info) == 0 { other = url }
        }
        return other
    }
}

/// An IDX labels file and its images file, read (labels first, as a load reports them).
struct IDXPair {
    var labels: IDXFile
    var images: IDXFile

    static func read(images: URL, labels: URL) throws -> IDXPair {
        let labelFile = try IDXFile.read(from: labels, expectedMagic: IDXFile.labelsMagic)
        return IDXPair(labels: labelFile, images: try IDXFile.read(from: images, expectedMagic: IDXFile.imagesMagic))
    }
}

/// `body` run on a thread of its own from creation; ``wait()`` returns its result.
final class BackgroundWork<Value>: @unchecked Sendable {
    private var value: Value?
    private let done = DispatchSemaphore(value: 0)

    init(_ body: @escaping @Sendable () -> Value) {
        Thread { [self] in
            value = body()
            done.signal()
        }.start()
    }

    /// Blocks until `body` returned; call once.
    func wait() -> Value {
        done.wait()
        return value!
    }
}

extension Dataset {
    /// Throws the error every loader gives for a sample limit below 1, before it reads anything.
    static func checkSampleLimit(_ limit: Int?) throws {
        if let limit, limit < 1 {
            throw DataError.invalidArgument(name: "sample limit", value: "\(limit)", expected: "at least 1")
        }
    }
}
