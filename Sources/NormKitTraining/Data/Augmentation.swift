import Foundation

/// The training augmentation of the reference recipe (spec §8): pad every side by ``padding`` pixels, crop a
/// random window of the original size, and flip it horizontally with probability ``flipProbability``.
///
/// **Pad value.** The spec pads the *raw* image with zeros. NormKit's images are already standardised, so it
/// pads with ``padValue``, which for the recipe is the standardised value of a raw 0 pixel,
/// `(0 − mean) / std` (``Dataset/zeroPixelValue``): exactly what zero-padding the raw image and then
/// standardising gives. (Padding the standardised image with 0 would instead add mid-grey borders.)
///
/// **Randomness.** Each image draws exactly three values from the generator — row offset, column offset,
/// flip — whatever the settings, so the sequence of draws (and a resumed run's replay of it) depends only on
/// the number of images augmented. Draws are mapped to ranges by multiply-high (`(r × n) >> 64`) and to the
/// flip by comparing the top 53 bits as a `Double` in [0, 1) with the probability: plain integer arithmetic,
/// the same on every platform and Swift version.
public struct Augmentation: Equatable, Sendable {
    /// Pixels of padding on each side (the crop window moves by up to `2 × padding`).
    public let padding: Int
    /// Probability of a horizontal flip.
    public let flipProbability: Double
    /// The value of the padding pixels (in standardised units).
    public let padValue: Float

    /// One image's random choice: where the crop window starts in the padded image, and whether to flip.
    public struct Transform: Equatable, Sendable {
        /// Top row of the crop window in the padded image, `0...2 × padding` (`padding` means centred).
        public var offsetY: Int
        /// Left column of the crop window in the padded image, `0...2 × padding`.
        public var offsetX: Int
        /// Whether the cropped window is mirrored left–right.
        public var flip: Bool

        /// A transform with the given crop offsets and flip.
        public init(offsetY: Int, offsetX: Int, flip: Bool) {
            self.offsetY = offsetY
            self.offsetX = offsetX
            self.flip = flip
        }
    }

    /// An augmentation with the given settings.
    ///
    /// - Throws: ``DataError/invalidArgument(name:value:expected:)`` for a negative padding, a probability
    ///   outside [0, 1] or a non-finite pad value.
    public init(padding: Int = 2, flipProbability: Double = 0.5, padValue: Float) throws {
        guard padding >= 0, padding <= 1 << 16 else {
            throw DataError.invalidArgument(name: "augmentation padding", value: "\(padding)", expected: "0...65536")
        }
        guard (0...1).contains(flipProbability) else {
            throw DataError.invalidArgument(
                name: "flip probability", value: "\(flipProbability)", expected: "a probability in [0, 1]")
        }
        guard padValue.isFinite else {
            throw DataError.invalidArgument(name: "pad value", value: "\(padValue)", expected: "a finite number")
        }
        self.padding = padding
        self.flipProbability = flipProbability
        self.padValue = padValue
    }

    /// The recipe's augmentation for `dataset`: 2 pixels of padding with the standardised value of a raw 0
    /// pixel (``Dataset/zeroPixelValue``), flip with probability ½.
    ///
    /// A dataset's statistics have a positive, finite std, so the pad value is finite; should `−mean / std`
    /// overflow `Float` all the same, the pad value is clamped to the largest finite `Float` of its sign.
    public static func standard(for dataset: Dataset) -> Augmentation {
        let value = dataset.zeroPixelValue
        let padValue =
            value.isFinite ? value : (value < 0 ? -Float.greatestFiniteMagnitude : Float.greatestFiniteMagnitude)
        return Augmentation(unchecked: 2, 0.5, value.isNaN ? 0 : padValue)
    }

    private init(unchecked padding: Int, _ flipProbability: Double, _ padValue: Float) {
        self.padding = padding
        self.flipProbability = flipProbability
        self.padValue = padValue
    }

    /// Draws one image's transform: exactly three values from `generator`.
    public func randomTransform(using generator: inout SeededGenerator) -> Transform {
        let span = UInt64(2 * padding + 1)
        let y = Int(generator.next().multipliedFullWidth(by: span).high)
        let x = Int(generator.next().multipliedFullWidth(by: span).high)
        let u = Double(generator.next() >> 11) * 0x1p-53
        return Transform(offsetY: y, offsetX: x, flip: u < flipProbability)
    }

    /// `image` (`channels × height × width` values, row-major planes) transformed by `transform`.
    ///
    /// - Throws: ``DataError/invalidArgument(name:value:expected:)`` when the sizes disagree or the transform's
    ///   offsets are outside `0...2 × padding`.
    public func apply(
        _ transform: Transform, to image: [Float], channels: Int = 1, height: Int, width: Int
    ) throws
        -> [Float]
    {
        try check(transform)
        guard channels > 0, height > 0, width > 0, image.count == [channels, height, width].checkedProduct else {
            throw DataError.invalidArgument(
                name: "image", value: "\(image.count) values",
                expected: "channels × height × width = \(channels) × \(height) × \(width) with positive sizes")
        }
        var result = [Float](repeating: 0, count: image.count)
        image.withUnsafeBufferPointer { source in
            result.withUnsafeMutableBufferPointer { destination in
                apply(
                    transform, source: source.baseAddress!, destination: destination.baseAddress!,
                    channels: channels, height: height, width: width)
            }
        }
        return result
    }

    /// Augments every image of `batch` (shape `(N, C, H, W)`, channels-first) into `output`, one fresh
    /// transform per image drawn from `generator` in order. `output` is reshaped to the batch's shape (its
    /// memory is reused when the size matches).
    ///
    /// - Throws: ``DataError/invalidArgument(name:value:expected:)`` unless `batch` is a channels-first 4-D tensor.
    public func apply(to batch: Tensor, into output: inout Tensor, using generator: inout SeededGenerator) throws {
        guard batch.shape.count == 4, batch.layout == .channelsFirst else {
            throw DataError.invalidArgument(
                name: "batch", value: "shape \(batch.shape), \(batch.layout)", expected: "(N, C, H, W) channels-first")
        }
        let (n, c, h, w) = (batch.shape[0], batch.shape[1], batch.shape[2], batch.shape[3])
        output.prepare(shape: batch.shape, layout: .channelsFirst)
        let size = c * h * w
        batch.withUnsafeBufferPointer { source in
            output.withUnsafeMutableBufferPointer { destination in
                for i in 0..<n {
                    let t = randomTransform(using: &generator)
                    apply(
                        t, source: source.baseAddress! + i * size, destination: destination.baseAddress! + i * size,
                        channels: c, height: h, width: w)
                }
            }
        }
    }

    private func check(_ transform: Transform) throws {
        let range = 0...(2 * padding)
        guard range.contains(transform.offsetY), range.contains(transform.offsetX) else {
            throw DataError.invalidArgument(
                name: "crop offsets", value: "(\(transform.offsetY), \(transform.offsetX))", expected: "in \(range)")
        }
    }

    /// Writes the transformed image. `source` and `destination` hold `channels × height × width` values each
    /// and must not overlap; the transform's offsets are in `0...2 × padding`.
    func apply(
        _ transform: Transform, source: UnsafePointer<Float>, destination: UnsafeMutablePointer<Float>,
        channels: Int, height: Int, width: Int
    ) {
        let shiftY = transform.offsetY - padding
        let shift = transform.offsetX - padding
        // Output column x reads source column x + shift, or (width − 1 − x) + shift when flipped; these are
        // the output columns whose source column is inside the image.
        let lo = transform.flip ? max(0, shift) : max(0, -shift)
        let hi = max(lo, transform.flip ? min(width, width + shift) : min(width, width - shift))
        for c in 0..<channels {
            let plane = c * height * width
            for y in 0..<height {
                let out = destination + plane + y * width
                let sy = y + shiftY
                guard sy >= 0, sy < height else {
                    out.update(repeating: padValue, count: width)
                    continue
                }
                let row = source + plane + sy * width
                if lo > 0 { out.update(repeating: padValue, count: lo) }
                if hi < width { (out + hi).update(repeating: padValue, count: width - hi) }
                if transform.flip {
                    let base = width - 1 + shift
                    for x in lo..<hi { out[x] = row[base - x] }
                } else {
                    (out + lo).update(from: row + lo + shift, count: hi - lo)
                }
            }
        }
    }
}
