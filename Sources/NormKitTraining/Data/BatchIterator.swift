import Foundation

/// Cuts a ``Dataset`` into mini-batches, epoch after epoch: seeded shuffling, optional augmentation, and a
/// position that a checkpoint can store so a resumed run sees exactly the batches it would have seen.
///
/// **Order.** Epoch `e` visits the samples in a Fisher–Yates permutation drawn from a ``/NormKit/SeededGenerator``
/// seeded with ``derivedSeed(seed:epoch:stream:)`` (stream 0); without shuffling, in index order. Every
/// sample appears once per epoch. With `dropLast` the final incomplete batch is skipped (training: every SGD
/// batch is full); without it the last batch is smaller (evaluation: every sample is seen).
///
/// **Augmentation.** Each epoch has its own generator (stream 1) and each image consumes exactly three
/// draws (``Augmentation/randomTransform(using:)``), so batch `b` of epoch `e` is a function of
/// `(seed, e, b)` alone; ``seek(epoch:batchIndex:)`` replays the draws of the skipped batches.
///
/// **Buffers.** ``next(into:labels:)`` writes into the caller's tensor and label array and reuses their memory
/// whenever the batch has the same size as before and nothing else holds them — in training, always; in
/// evaluation, all but the last, smaller batch. Nothing is allocated per batch otherwise.
///
/// ```swift
/// let batches = try BatchIterator(dataset: train, batchSize: 32, shuffle: true, dropLast: true,
///                                 augmentation: .standard(for: train), seed: 7)
/// try batches.seek(epoch: resumedEpoch, batchIndex: resumedBatch)
/// var x = Tensor(zeros: [32, 1, 28, 28]), y: [Int32] = []
/// while batches.epoch < epochs {
///     while let n = batches.next(into: &x, labels: &y) { /* one SGD step on n images */ }
///     try batches.seek(epoch: batches.epoch + 1)
/// }
/// ```
public final class BatchIterator {
    /// Where an iterator stands: the epoch, and how many of its batches have been produced (the index of
    /// the next batch). Store it in a checkpoint and pass it to ``BatchIterator/seek(to:)`` to resume.
    public struct Position: Equatable, Hashable, Codable, Sendable {
        /// The current epoch (0-based).
        public var epoch: Int
        /// Batches of ``epoch`` already produced; the next batch has this index.
        public var batchIndex: Int

        /// A position.
        public init(epoch: Int, batchIndex: Int) {
            self.epoch = epoch
            self.batchIndex = batchIndex
        }
    }

    /// The data.
    public let dataset: Dataset
    /// Samples per full batch.
    public let batchSize: Int
    /// Whether each epoch is shuffled.
    public let shuffle: Bool
    /// Whether the last incomplete batch of an epoch is skipped.
    public let dropLast: Bool
    /// The augmentation applied to every batch, if any.
    public let augmentation: Augmentation?
    /// The run's seed; with the epoch it determines the order and the augmentation.
    public let seed: UInt64
    /// Batches per epoch: `count / batchSize`, rounded down with `dropLast`, up without.
    public let batchesPerEpoch: Int

    /// The current epoch (0-based).
    public private(set) var epoch = 0
    /// Batches of the current epoch already produced; the next batch has this index.
    public private(set) var batchIndex = 0
    /// The sample indices of the current epoch, in visiting order.
    public private(set) var order: [Int32]
    private var augmentationGenerator: SeededGenerator

    /// The current position (epoch, batch index).
    public var position: Position { Position(epoch: epoch, batchIndex: batchIndex) }
    /// Whether every batch of the current epoch has been produced.
    public var isEpochFinished: Bool { batchIndex >= batchesPerEpoch }
    /// Samples produced per epoch (fewer than the dataset's with `dropLast` when the batch does not divide it).
    public var samplesPerEpoch: Int { min(dataset.count, batchesPerEpoch * batchSize) }

    /// An iterator positioned at the start of `epoch`.
    ///
    /// - Throws: ``DataError/invalidArgument(name:value:expected:)`` for a batch size below 1, a negative
    ///   epoch, or (with `dropLast`) a dataset smaller than one batch.
    public init(
        dataset: Dataset, batchSize: Int, shuffle: Bool, dropLast: Bool, augmentation: Augmentation? = nil,
        seed: UInt64 = 0, epoch: Int = 0
    ) throws {
        guard batchSize >= 1 else {
            throw DataError.invalidArgument(name: "batch size", value: "\(batchSize)", expected: "at least 1")
        }
        guard dataset.count <= Int(Int32.max) else {
            throw DataError.invalidArgument(
                name: "dataset size", value: "\(dataset.count)", expected: "at most \(Int32.max) samples")
        }
        let batches = dropLast ? dataset.count / batchSize : (dataset.count + batchSize - 1) / batchSize
        guard batches > 0 || !dropLast else {
            throw DataError.invalidArgument(
                name: "batch size", value: "\(batchSize) with dropLast",
                expected: "at most the dataset's \(dataset.count) samples, or dropLast false")
        }
        self.dataset = dataset
        self.batchSize = batchSize
        self.shuffle = shuffle
        self.dropLast = dropLast
        self.augmentation = augmentation
        self.seed = seed
        self.batchesPerEpoch = batches
        self.order = (0..<Int32(dataset.count)).map { $0 }
        self.augmentationGenerator = SeededGenerator(seed: 0)
        try seek(epoch: epoch, batchIndex: 0)
    }

    /// Moves to batch `batchIndex` of `epoch`, rebuilding that epoch's order and augmentation stream, so the
    /// next batch is exactly the one an uninterrupted run would produce there.
    ///
    /// - Throws: ``DataError/invalidArgument(name:value:expected:)`` for a negative epoch or a batch index
    ///   outside `0...batchesPerEpoch`.
    public func seek(epoch: Int, batchIndex: Int = 0) throws {
        guard epoch >= 0 else {
            throw DataError.invalidArgument(name: "epoch", value: "\(epoch)", expected: "at least 0")
        }
        guard (0...batchesPerEpoch).contains(batchIndex) else {
            throw DataError.invalidArgument(
                name: "batch index", value: "\(batchIndex)", expected: "in 0...\(batchesPerEpoch) (batches per epoch)")
        }
        if shuffle {  // without shuffling the order stays the identity
            order.withUnsafeMutableBufferPointer { o in
                for i in 0..<o.count { o[i] = Int32(i) }
            }
            var generator = SeededGenerator(seed: Self.derivedSeed(seed: seed, epoch: epoch, stream: 0))
            Self.fisherYates(&order, using: &generator)
        }
        augmentationGenerator = SeededGenerator(seed: Self.derivedSeed(seed: seed, epoch: epoch, stream: 1))
        if augmentation != nil {
            // Replay the draws of the batches before `batchIndex` (all of them full).
            for _ in 0..<(3 * min(batchIndex * batchSize, dataset.count)) { _ = augmentationGenerator.next() }
        }
        self.epoch = epoch
        self.batchIndex = batchIndex
    }

    /// Moves to `position` (see ``seek(epoch:batchIndex:)``).
    public func seek(to position: Position) throws {
        try seek(epoch: position.epoch, batchIndex: position.batchIndex)
    }

    /// Writes the next batch of the current epoch into `images` (reshaped to `(n, C, H, W)`, channels-first)
    /// and `labels` (`n` labels), and returns `n`; returns nil, changing nothing, once the epoch is finished
    /// (then ``seek(epoch:batchIndex:)`` to the next epoch).
    public func next(into images: inout Tensor, labels: inout [Int32]) -> Int? {
        guard batchIndex < batchesPerEpoch else { return nil }
        let start = batchIndex * batchSize
        let n = min(batchSize, dataset.count - start)
        let size = dataset.sampleSize
        let (c, h, w) = (dataset.channels, dataset.height, dataset.width)
        let shape = images.shape  // compared element by element: no array is built per batch
        if shape.count != 4 || shape[0] != n || shape[1] != c || shape[2] != h || shape[3] != w
            || images.layout != .channelsFirst
        {
            images.prepare(shape: [n, c, h, w], layout: .channelsFirst)
        }
        if labels.count != n {
            labels.removeAll(keepingCapacity: true)
            labels.append(contentsOf: repeatElement(0, count: n))
        }
        order.withUnsafeBufferPointer { order in
            dataset.labels.withUnsafeBufferPointer { source in
                labels.withUnsafeMutableBufferPointer { target in
                    for i in 0..<n { target[i] = source[Int(order[start + i])] }
                }
            }
        }
        order.withUnsafeBufferPointer { order in
            dataset.images.withUnsafeBufferPointer { source in
                images.withUnsafeMutableBufferPointer { target in
                    let from = source.baseAddress!, to = target.baseAddress!
                    if let augmentation {
                        for i in 0..<n {
                            let t = augmentation.randomTransform(using: &augmentationGenerator)
                            augmentation.apply(
                                t, source: from + Int(order[start + i]) * size, destination: to + i * size,
                                channels: c, height: h, width: w)
                        }
                    } else {
                        for i in 0..<n {
                            (to + i * size).update(from: from + Int(order[start + i]) * size, count: size)
                        }
                    }
                }
            }
        }
        batchIndex += 1
        return n
    }

    /// The seed of the generator for `(seed, epoch, stream)`: SplitMix64's finaliser applied to the three
    /// numbers in turn. Stream 0 shuffles, stream 1 augments.
    public static func derivedSeed(seed: UInt64, epoch: Int, stream: UInt64) -> UInt64 {
        func mix(_ value: UInt64) -> UInt64 {
            var z = value &+ 0x9E37_79B9_7F4A_7C15
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        return mix(mix(mix(seed) ^ UInt64(truncatingIfNeeded: epoch)) ^ stream)
    }

    /// The visiting order of epoch `epoch` for `count` samples with `seed`: what a shuffling iterator uses.
    ///
    /// `count` is taken in `0...Int32.max` (sample indices are `Int32`, as a ``Dataset``'s labels): a negative count
    /// gives an empty order, not a trap, and a larger one is cut to `Int32.max` samples.
    public static func shuffledOrder(count: Int, seed: UInt64, epoch: Int) -> [Int32] {
        var order = (0..<Int32(clamping: max(0, count))).map { $0 }
        var generator = SeededGenerator(seed: derivedSeed(seed: seed, epoch: epoch, stream: 0))
        fisherYates(&order, using: &generator)
        return order
    }

    /// In-place Fisher–Yates: for `i` from the end down to 1, swap `i` with `j = (r × (i + 1)) >> 64` for a
    /// fresh 64-bit `r` (multiply-high, no rejection: the bias is below 2⁻³², and it is the same everywhere).
    private static func fisherYates(_ order: inout [Int32], using generator: inout SeededGenerator) {
        order.withUnsafeMutableBufferPointer { o in
            var i = o.count - 1
            while i > 0 {
                let j = Int(generator.next().multipliedFullWidth(by: UInt64(i + 1)).high)
                o.swapAt(i, j)
                i -= 1
            }
        }
    }
}
