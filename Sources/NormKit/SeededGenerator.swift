/// A small, fast, seedable random number generator (xoshiro256**, seeded through SplitMix64).
///
/// The same seed gives the same sequence on every platform, which is what makes NormKit's initialisation,
/// shuffling and augmentation reproducible.
///
/// Its `Codable` form is `{"state": [w0, w1, w2, w3]}`; decoding refuses anything but four words that are not all
/// zero (a `DecodingError.dataCorrupted`), so a damaged saved state is an error, never a generator that traps or
/// returns zeros forever.
public struct SeededGenerator: RandomNumberGenerator, Sendable, Equatable, Codable {
    /// The four words of xoshiro256**'s state.
    private var s0, s1, s2, s3: UInt64

    /// The generator's full state, four words; saving and restoring it resumes the sequence exactly.
    ///
    /// - Precondition: a new state has exactly four words, not all zero (a programmer error otherwise: the message
    ///   names the count). A state that comes from a file is decoded instead (``init(from:)`` throws).
    public var state: [UInt64] {
        get { [s0, s1, s2, s3] }
        set {
            checkPrecondition(
                Self.isValid(state: newValue),
                "SeededGenerator.state: expected four words, not all zero, got \(newValue.count): \(newValue)")
            (s0, s1, s2, s3) = (newValue[0], newValue[1], newValue[2], newValue[3])
        }
    }

    /// A generator whose sequence is determined by `seed`.
    public init(seed: UInt64) {
        var s = seed
        func splitMix() -> UInt64 {
            s &+= 0x9E37_79B9_7F4A_7C15
            var z = s
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        (s0, s1, s2, s3) = (splitMix(), splitMix(), splitMix(), splitMix())
    }

    /// The next 64 random bits.
    public mutating func next() -> UInt64 {
        let result = ((s1 &* 5) << 7 | (s1 &* 5) >> 57) &* 9
        let t = s1 << 17
        s2 ^= s0
        s3 ^= s1
        s1 ^= s2
        s0 ^= s3
        s2 ^= t
        s3 = s3 << 45 | s3 >> 19
        return result
    }

    /// Whether `state` can be a generator's: four words, not all zero (xoshiro's one state it never leaves).
    private static func isValid(state: [UInt64]) -> Bool { state.count == 4 && state.contains { $0 != 0 } }

    private enum CodingKeys: String, CodingKey { case state }

    /// Decodes `{"state": [w0, w1, w2, w3]}`.
    ///
    /// - Throws: `DecodingError.dataCorrupted` unless the state is four words, not all zero.
    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let state = try container.decode([UInt64].self, forKey: .state)
        guard Self.isValid(state: state) else {
            throw DecodingError.dataCorruptedError(
                forKey: .state, in: container,
                debugDescription: "a SeededGenerator state is four words, not all zero; got \(state.count): \(state)")
        }
        (s0, s1, s2, s3) = (state[0], state[1], state[2], state[3])
    }

    /// Encodes `{"state": [w0, w1, w2, w3]}`.
    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(state, forKey: .state)
    }
}
