import Foundation
import NormKitTraining
import XCTest

/// The real Fashion-MNIST (skipped when it is not installed), the augmentation and the batch iterator.
final class DatasetTests: XCTestCase {
    /// A negative count is an empty order (it trapped in `0..<negative`); 0 and 1 are the trivial orders.
    func testShuffledOrderOfANegativeOrTinyCountIsEmptyOrTrivial() {
        XCTAssertEqual(BatchIterator.shuffledOrder(count: -1, seed: 1, epoch: 0), [])
        XCTAssertEqual(BatchIterator.shuffledOrder(count: Int.min, seed: 1, epoch: 0), [])
        XCTAssertEqual(BatchIterator.shuffledOrder(count: 0, seed: 1, epoch: 0), [])
        XCTAssertEqual(BatchIterator.shuffledOrder(count: 1, seed: 1, epoch: 3), [0])
    }

    // MARK: Helpers

    /// `count` images of `size × size` whose first value is the sample's index (so a batch tells which
    /// samples it holds) and whose other values follow a pattern; labels `index % 10`.
    private func indexedDataset(count: Int, size: Int = 28) throws -> Dataset {
        let sample = size * size
        var images = [Float](repeating: 0, count: count * sample)
        for i in 0..<count {
            images[i * sample] = Float(i)
            for p in 1..<sample { images[i * sample + p] = Float((i &* 31 &+ p &* 7) % 97) / 97 }
        }
        return try Dataset(
            images: images, labels: (0..<count).map { Int32($0 % 10) }, height: size, width: size,
            classCount: 10, statistics: PixelStatistics(mean: 0.25, std: 0.5))
    }

    /// Every batch of the current epoch: the sample indices (first values) and the labels.
    private func drainEpoch(_ iterator: BatchIterator) -> (indices: [[Int]], labels: [[Int32]], images: [[Float]]) {
        var x = Tensor(zeros: [1, 1, 1, 1]), y: [Int32] = []
        var indices: [[Int]] = [], labels: [[Int32]] = [], images: [[Float]] = []
        let sample = iterator.dataset.sampleSize
        while let n = iterator.next(into: &x, labels: &y) {
            XCTAssertEqual(x.shape, [n, 1, iterator.dataset.height, iterator.dataset.width])
            XCTAssertEqual(y.count, n)
            let values = x.values
            indices.append((0..<n).map { Int(values[$0 * sample]) })
            labels.append(y)
            images.append(values)
        }
        return (indices, labels, images)
    }

    // MARK: The real dataset

    func testLoadsRealFashionMNISTStandardised() throws {
        let directory = FashionMNIST.defaultDirectory
        guard FileManager.default.fileExists(atPath: directory.path) else {
            throw XCTSkip("Fashion-MNIST is not installed in \(directory.path) (apt-get install dataset-fashion-mnist)")
        }
        let start = Date()
        let (train, test) = try FashionMNIST.load()
        print(
            "Fashion-MNIST loaded in \(String(format: "%.2f", Date().timeIntervalSince(start))) s; "
                + "mean \(train.mean), std \(train.std)")
        XCTAssertEqual(train.count, 60_000)
        XCTAssertEqual(test.count, 10_000)
        XCTAssertEqual(train.images.count, 60_000 * 784)
        XCTAssertEqual(test.shape, [10_000, 1, 28, 28])
        // The well-known statistics of the training pixels.
        XCTAssertEqual(train.mean, 0.2860, accuracy: 1e-3)
        XCTAssertEqual(train.std, 0.3530, accuracy: 1e-3)
        XCTAssertEqual(test.statistics, train.statistics)

        func moments(_ values: [Float]) -> (mean: Double, std: Double) {
            var sum = 0.0, squares = 0.0
            for v in values { sum += Double(v); squares += Double(v) * Double(v) }
            let mean = sum / Double(values.count)
            return (mean, (squares / Double(values.count) - mean * mean).squareRoot())
        }
        let trainMoments = moments(train.images)
        XCTAssertEqual(trainMoments.mean, 0, accuracy: 1e-4)
        XCTAssertEqual(trainMoments.std, 1, accuracy: 1e-4)
        let testMoments = moments(test.images)  // the training statistics: close to, not exactly, 0 and 1
        XCTAssertEqual(testMoments.mean, 0, accuracy: 0.02)
        XCTAssertEqual(testMoments.std, 1, accuracy: 0.02)

        var perClass = [Int](repeating: 0, count: 10)
        for label in train.labels { perClass[Int(label)] += 1 }
        XCTAssertEqual(perClass, [Int](repeating: 6000, count: 10))
        XCTAssertEqual(train.classNames[9], "Ankle boot")
        XCTAssertEqual(train.zeroPixelValue, Float(-train.mean / train.std), accuracy: 1e-6)

        // A limited load uses the statistics of the images it keeps.
        let small = try FashionMNIST.load(trainLimit: 1000, testLimit: 100)
        XCTAssertEqual(small.train.count, 1000)
        XCTAssertEqual(small.test.count, 100)
        XCTAssertNotEqual(small.train.mean, train.mean)
        XCTAssertEqual(moments(small.train.images).mean, 0, accuracy: 1e-4)
        for i in 0..<784 {  // same pixels, other statistics
            let raw = Double(train.images[i]) * train.std + train.mean
            XCTAssertEqual(Double(small.train.images[i]), (raw - small.train.mean) / small.train.std, accuracy: 1e-4)
        }
    }

    // MARK: Augmentation

    func testAugmentationIsDeterministicForASeed() throws {
        let dataset = try indexedDataset(count: 64)
        let augmentation = Augmentation.standard(for: dataset)
        XCTAssertEqual(augmentation.padding, 2)
        XCTAssertEqual(augmentation.flipProbability, 0.5)
        XCTAssertEqual(augmentation.padValue, dataset.zeroPixelValue)
        let batch = try Tensor(shape: dataset.shape, values: dataset.images)
        var a = Tensor(zeros: [1, 1, 1, 1]), b = Tensor(zeros: [1, 1, 1, 1]), c = Tensor(zeros: [1, 1, 1, 1])
        var g1 = SeededGenerator(seed: 42), g2 = SeededGenerator(seed: 42), g3 = SeededGenerator(seed: 43)
        try augmentation.apply(to: batch, into: &a, using: &g1)
        try augmentation.apply(to: batch, into: &b, using: &g2)
        try augmentation.apply(to: batch, into: &c, using: &g3)
        XCTAssertEqual(a.values, b.values)
        XCTAssertEqual(g1, g2)
        XCTAssertNotEqual(a.values, c.values)
        XCTAssertNotEqual(a.values, batch.values)
        XCTAssertEqual(a.shape, batch.shape)
    }

    func testAugmentationCropsAndFlipsAsSpecified() throws {
        let size = 6
        let image = (0..<(size * size)).map { Float($0) + 1 }
        let augmentation = try Augmentation(padding: 2, flipProbability: 0.5, padValue: -9)
        func pixel(_ out: [Float], _ y: Int, _ x: Int) -> Float { out[y * size + x] }

        // Offsets (2, 2) without a flip: the centred window, the image itself.
        XCTAssertEqual(
            try augmentation.apply(.init(offsetY: 2, offsetX: 2, flip: false), to: image, height: size, width: size),
            image)
        // A flip alone mirrors each row.
        let flipped = try augmentation.apply(
            .init(offsetY: 2, offsetX: 2, flip: true), to: image, height: size, width: size)
        for y in 0..<size { for x in 0..<size { XCTAssertEqual(pixel(flipped, y, x), image[y * size + size - 1 - x]) } }
        // Offsets (0, 0): the window starts in the padding, so the image moves down and right by 2.
        let shifted = try augmentation.apply(
            .init(offsetY: 0, offsetX: 0, flip: false), to: image, height: size, width: size)
        for y in 0..<size {
            for x in 0..<size {
                let expected: Float = (y < 2 || x < 2) ? -9 : image[(y - 2) * size + x - 2]
                XCTAssertEqual(pixel(shifted, y, x), expected, "(\(y), \(x))")
            }
        }
        // Offsets (4, 1) with a flip: padded(y + 4, (5 − x) + 1), padded(i, j) = image(i − 2, j − 2).
        let both = try augmentation.apply(
            .init(offsetY: 4, offsetX: 1, flip: true), to: image, height: size, width: size)
        for y in 0..<size {
            for x in 0..<size {
                let (i, j) = (y + 4 - 2, (size - 1 - x) + 1 - 2)
                let expected: Float = (0..<size).contains(i) && (0..<size).contains(j) ? image[i * size + j] : -9
                XCTAssertEqual(pixel(both, y, x), expected, "(\(y), \(x))")
            }
        }
        XCTAssertThrowsError(
            try augmentation.apply(
                .init(offsetY: 5, offsetX: 0, flip: false), to: image,
                height: size, width: size))
        XCTAssertThrowsError(try Augmentation(padding: -1, padValue: 0))
        XCTAssertThrowsError(try Augmentation(flipProbability: 1.5, padValue: 0))

        // Over many draws: flips about half the time and every crop offset in 0...4.
        var generator = SeededGenerator(seed: 1)
        var flips = 0
        var offsets = Set<Int>()
        for _ in 0..<10_000 {
            let t = augmentation.randomTransform(using: &generator)
            if t.flip { flips += 1 }
            offsets.insert(t.offsetY)
            offsets.insert(t.offsetX)
        }
        XCTAssertEqual(Double(flips) / 10_000, 0.5, accuracy: 0.03)
        XCTAssertEqual(offsets, Set(0...4))
        let never = try Augmentation(padding: 0, flipProbability: 0, padValue: 0)
        for _ in 0..<100 {
            XCTAssertEqual(never.randomTransform(using: &generator), .init(offsetY: 0, offsetX: 0, flip: false))
        }
    }

    // MARK: Batch iterator

    func testEachSampleOnceEpochAndLastBatchHandling() throws {
        let dataset = try indexedDataset(count: 103, size: 4)
        let evaluation = try BatchIterator(dataset: dataset, batchSize: 10, shuffle: false, dropLast: false)
        XCTAssertEqual(evaluation.batchesPerEpoch, 11)
        let inOrder = drainEpoch(evaluation)
        XCTAssertEqual(inOrder.indices.map(\.count), [Int](repeating: 10, count: 10) + [3])
        XCTAssertEqual(inOrder.indices.flatMap { $0 }, Array(0..<103))
        XCTAssertEqual(inOrder.labels.flatMap { $0 }, dataset.labels)
        XCTAssertTrue(evaluation.isEpochFinished)
        var x = Tensor(zeros: [1, 1, 1, 1]), y: [Int32] = []
        XCTAssertNil(evaluation.next(into: &x, labels: &y))

        let training = try BatchIterator(dataset: dataset, batchSize: 10, shuffle: true, dropLast: true, seed: 3)
        XCTAssertEqual(training.batchesPerEpoch, 10)
        XCTAssertEqual(training.samplesPerEpoch, 100)
        var previous: [Int] = []
        for epoch in 0..<3 {
            try training.seek(epoch: epoch)
            let batches = drainEpoch(training)
            XCTAssertEqual(batches.indices.map(\.count), [Int](repeating: 10, count: 10), "every SGD batch is full")
            let seen = batches.indices.flatMap { $0 }
            XCTAssertEqual(Set(seen).count, 100, "no sample twice")
            XCTAssertEqual(
                seen, BatchIterator.shuffledOrder(count: 103, seed: 3, epoch: epoch).prefix(100).map(Int.init))
            XCTAssertNotEqual(seen, previous, "a new order each epoch")
            for (indices, labels) in zip(batches.indices, batches.labels) {
                XCTAssertEqual(labels, indices.map { Int32($0 % 10) }, "labels follow their images")
            }
            previous = seen
        }
        // Without dropping, a shuffled epoch covers every index exactly once.
        let all = try BatchIterator(dataset: dataset, batchSize: 16, shuffle: true, dropLast: false, seed: 9)
        XCTAssertEqual(all.drainIndices().sorted(), Array(0..<103))

        XCTAssertThrowsError(try BatchIterator(dataset: dataset, batchSize: 0, shuffle: false, dropLast: false))
        XCTAssertThrowsError(try BatchIterator(dataset: dataset, batchSize: 200, shuffle: true, dropLast: true))
        XCTAssertThrowsError(try training.seek(epoch: 0, batchIndex: 11))
        XCTAssertThrowsError(try training.seek(epoch: -1))
    }

    func testOrderAndAugmentationAreReproducibleFromSeedAndEpoch() throws {
        let dataset = try indexedDataset(count: 90, size: 8)
        let augmentation = try Augmentation(padding: 2, padValue: dataset.zeroPixelValue)
        func make(seed: UInt64) throws -> BatchIterator {
            try BatchIterator(
                dataset: dataset, batchSize: 8, shuffle: true, dropLast: true, augmentation: augmentation,
                seed: seed)
        }
        let reference = try make(seed: 11)
        var epochs: [(indices: [[Int]], labels: [[Int32]], images: [[Float]])] = []
        for epoch in 0..<3 {
            try reference.seek(epoch: epoch)
            epochs.append(drainEpoch(reference))
        }
        XCTAssertEqual(reference.position, .init(epoch: 2, batchIndex: 11))

        // A fresh iterator sent to epoch 2 sees the same batches, images (augmented) included.
        let resumed = try make(seed: 11)
        try resumed.seek(epoch: 2)
        let again = drainEpoch(resumed)
        XCTAssertEqual(again.labels, epochs[2].labels)
        XCTAssertEqual(again.images, epochs[2].images)

        // Resuming mid-epoch (as from a checkpoint's position) continues exactly.
        let midway = try make(seed: 11)
        try midway.seek(to: .init(epoch: 1, batchIndex: 4))
        let rest = drainEpoch(midway)
        XCTAssertEqual(rest.images, Array(epochs[1].images[4...]))
        XCTAssertEqual(rest.labels, Array(epochs[1].labels[4...]))

        // Another seed, another order; the augmentation really changes the images.
        let other = try make(seed: 12)
        XCTAssertNotEqual(drainEpoch(other).labels, epochs[0].labels)
        let plain = try BatchIterator(dataset: dataset, batchSize: 8, shuffle: true, dropLast: true, seed: 11)
        let unaugmented = drainEpoch(plain)
        XCTAssertEqual(unaugmented.labels, epochs[0].labels, "augmentation does not change the order")
        XCTAssertNotEqual(unaugmented.images, epochs[0].images)
    }

    func testBatchBuffersAreReused() throws {
        let dataset = try indexedDataset(count: 50, size: 28)
        let iterator = try BatchIterator(
            dataset: dataset, batchSize: 8, shuffle: true, dropLast: true,
            augmentation: .standard(for: dataset), seed: 1)
        var x = Tensor(zeros: [8, 1, 28, 28]), y = [Int32](repeating: 0, count: 8)
        let imageAddress = x.withUnsafeBufferPointer { $0.baseAddress }
        let labelAddress = y.withUnsafeBufferPointer { $0.baseAddress }
        while iterator.next(into: &x, labels: &y) != nil {
            XCTAssertEqual(x.withUnsafeBufferPointer { $0.baseAddress }, imageAddress)
            XCTAssertEqual(y.withUnsafeBufferPointer { $0.baseAddress }, labelAddress)
        }
    }

    func testAnAugmentedEpochOf60000ImagesTakesWellUnderASecond() throws {
        let count = 60_000
        let pixels = (0..<(count * 784)).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 13) }
        let dataset = try Dataset(
            pixels: pixels, labels: (0..<count).map { Int32($0 % 10) }, height: 28, width: 28,
            classCount: 10, statistics: PixelStatistics(pixels: pixels))
        let iterator = try BatchIterator(
            dataset: dataset, batchSize: 32, shuffle: true, dropLast: true,
            augmentation: .standard(for: dataset), seed: 5)
        var x = Tensor(zeros: [32, 1, 28, 28]), y: [Int32] = []
        var checksum: Float = 0
        let start = Date()
        try iterator.seek(epoch: 1)
        while iterator.next(into: &x, labels: &y) != nil { checksum += x.withUnsafeBufferPointer { $0[100] } }
        let seconds = Date().timeIntervalSince(start)
        print(
            "one augmented epoch of \(iterator.samplesPerEpoch) images: \(String(format: "%.3f", seconds)) s (\(checksum))"
        )
        #if DEBUG
            XCTAssertLessThan(seconds, 30)
        #else
            XCTAssertLessThan(seconds, 0.5)
        #endif
    }
}

private extension BatchIterator {
    /// The sample indices (first values) of the rest of the current epoch.
    func drainIndices() -> [Int] {
        var x = Tensor(zeros: [1, 1, 1, 1]), y: [Int32] = []
        var indices: [Int] = []
        while let n = next(into: &x, labels: &y) {
            let values = x.values
            indices += (0..<n).map { Int(values[$0 * dataset.sampleSize]) }
        }
        return indices
    }
}

extension DatasetTests {
    /// `samples(_:)` (a data-parallel worker's share of the test set): the images and labels of the range, the
    /// dataset's shape, classes and statistics; an empty or out-of-bounds range is an error.
    func testSamplesOfARange() throws {
        let images = (0..<(5 * 4)).map { Float($0) }
        let data = try Dataset(
            images: images, labels: [0, 1, 2, 1, 0], height: 2, width: 2, classCount: 3,
            statistics: PixelStatistics(mean: 0.5, std: 0.25))
        let part = try data.samples(1..<3)
        XCTAssertEqual(part.images, Array(images[4..<12]))
        XCTAssertEqual(part.labels, [1, 2])
        XCTAssertEqual(part.shape, [2, 1, 2, 2])
        XCTAssertEqual(part.classCount, 3)
        XCTAssertEqual(part.statistics, data.statistics)
        for bad in [2..<2, 4..<6, -1..<1] {
            XCTAssertThrowsError(try data.samples(bad)) { XCTAssertTrue("\($0)".contains("sample range"), "\($0)") }
        }
    }
}
