import Foundation

/// The bounds every training configuration is checked against: a new run's flags, a checkpoint's metadata, a
/// sweep's plan. Caps bound everything that sizes memory or work from outside input, so a hostile or damaged
/// file is refused before anything is built or allocated.
public enum ConfigurationLimits {
    /// Deepest ResNet (the ResNet paper's deepest CIFAR model has 1202 layers).
    public static let maxResNetDepth = 1202
    /// Largest SGD batch (the whole Fashion-MNIST training set fits in one).
    public static let maxBatch = 65_536
    /// Largest MABN buffer `S_buf` (SGD batch / normalization batch).
    public static let maxMABNBuffer = 4_096
    /// Most epochs.
    public static let maxEpochs = 100_000
    /// Most threads.
    public static let maxThreads = 1_024
    /// Largest GN group count or group size (no layer of the built-in models is wider).
    public static let maxGroups = 65_536
}

/// A configuration value outside its valid range, or a setting that does nothing for the chosen normalization.
public struct ConfigurationError: Error, Equatable, CustomStringConvertible, LocalizedError {
    /// The command-line flag of the setting (`--momentum`), which is also how the checkpoint field is known.
    public var flag: String
    /// The value given.
    public var value: String
    /// What is allowed.
    public var expected: String
    /// Where the configuration came from (`nil`: the command line).
    public var source: String?

    /// An error for `flag` = `value`, which must be `expected`.
    public init(flag: String, value: String, expected: String, source: String? = nil) {
        self.flag = flag; self.value = value; self.expected = expected; self.source = source
    }

    /// "--momentum 1.5: must be in [0, 1)" (prefixed by the file for a checkpoint's configuration).
    public var description: String {
        let text = "\(flag) \(value): \(expected)"
        guard let source else { return text }
        return "\(source): its configuration has \(text)"
    }

    public var errorDescription: String? { description }
}

extension TrainingConfiguration {
    /// The depth of a `resnetD` model name, or nil for another name.
    public var resNetDepth: Int? {
        let lower = model.lowercased()
        guard lower.hasPrefix("resnet") else { return nil }
        return Int(lower.dropFirst("resnet".count))
    }

    /// The MABN parts ``mabnWithout`` switches off (empty: the paper's MABN).
    ///
    /// - Parameter source: the file the configuration was read from (named in the error), nil for flags.
    /// - Throws: ``ConfigurationError`` for an unknown or repeated part name.
    public func mabnPartsSwitchedOff(source: String? = nil) throws -> Set<MABNPart> {
        var parts = Set<MABNPart>()
        let valid = MABNPart.allCases.map(\.rawValue).joined(separator: ", ")
        for name in mabnWithout ?? [] {
            guard let part = MABNPart(rawValue: name) else {
                throw ConfigurationError(
                    flag: "--mabn-without", value: name,
                    expected: "must be MABN parts from \(valid), separated by commas",
                    source: source)
            }
            guard parts.insert(part).inserted else {
                throw ConfigurationError(
                    flag: "--mabn-without", value: name, expected: "lists a part twice",
                    source: source)
            }
        }
        return parts
    }

    /// MABN's `S_buf` for this configuration: ``mabnBuffer`` or ``defaultMABNBuffer``.
    public var mabnBufferSize: Int { mabnBuffer ?? defaultMABNBuffer }

    /// Checks every field against its range and ``ConfigurationLimits``, before anything is built.
    ///
    /// Used for a new run's flags, for `train --resume`, `eval` and for every sweep cell, so a configuration read
    /// from a file passes the same checks as one typed on the command line.
    ///
    /// - Parameter source: the file the configuration was read from (named in the error), nil for flags.
    /// - Throws: ``ConfigurationError`` naming the flag, the value and the valid range.
    public func validate(source: String? = nil) throws {
        func fail(_ flag: String, _ value: Any, _ expected: String) -> ConfigurationError {
            ConfigurationError(flag: flag, value: "\(value)", expected: expected, source: source)
        }
        if let depth = resNetDepth {
            guard depth >= 8, depth <= ConfigurationLimits.maxResNetDepth, (depth - 2) % 6 == 0 else {
                throw fail(
                    "--model", model,
                    "ResNet depth must be 6n+2 between 8 and \(ConfigurationLimits.maxResNetDepth) (resnet8, resnet14, resnet20, …)"
                )
            }
        } else if model.lowercased() != "vgg" {
            throw fail("--model", model, "must be resnetD (D = 6n+2: resnet8, resnet14, resnet20, …) or vgg")
        }
        guard (1...ConfigurationLimits.maxBatch).contains(batch) else {
            throw fail("--batch", batch, "must be in 1...\(ConfigurationLimits.maxBatch)")
        }
        if let nb = normBatch {
            guard nb >= 1, nb <= batch, batch % nb == 0 else {
                throw fail("--norm-batch", nb, "must be at least 1 and divide --batch \(batch)")
            }
        }
        if let buffer = mabnBuffer, !(1...ConfigurationLimits.maxMABNBuffer).contains(buffer) {
            throw fail("--mabn-buffer", buffer, "must be in 1...\(ConfigurationLimits.maxMABNBuffer) iterations")
        }
        if let warmup = mabnWarmup, !(0...10_000_000).contains(warmup) {
            throw fail("--mabn-warmup", warmup, "must be in 0...10000000 iterations")
        }
        if let w = mabnOldValueWeight, !(w >= 0 && w <= 1) {
            throw fail("--mabn-old-weight", w, "must be in [0, 1] (the weight of the old value in MABN's EMA)")
        }
        _ = try mabnPartsSwitchedOff(source: source)
        if let m = bnMomentum, !(m >= 0 && m <= 1) {
            throw fail("--bn-momentum", m, "must be in [0, 1] (PyTorch's convention: the weight of the new value)")
        }
        if let m = brnMomentum, !(m >= 0 && m <= 1) {
            throw fail("--brn-momentum", m, "must be in [0, 1] (the weight of the new value)")
        }
        if let r = brnRMax, !(r >= 1 && r.isFinite) { throw fail("--brn-r-max", r, "must be a finite number ≥ 1") }
        if let d = brnDMax, !(d >= 0 && d.isFinite) { throw fail("--brn-d-max", d, "must be a finite number ≥ 0") }
        if let schedule = brnSchedule, !["scaled", "paper"].contains(schedule) {
            throw fail("--brn-schedule", schedule, "must be scaled or paper")
        }
        guard (1...ConfigurationLimits.maxEpochs).contains(epochs) else {
            throw fail("--epochs", epochs, "must be in 1...\(ConfigurationLimits.maxEpochs)")
        }
        if let lr = learningRate, !(lr > 0 && lr.isFinite) {
            throw fail("--lr", lr, "must be a positive finite number")
        }
        guard momentum >= 0, momentum < 1 else { throw fail("--momentum", momentum, "must be in [0, 1)") }
        guard weightDecay >= 0, weightDecay.isFinite else {
            throw fail("--weight-decay", weightDecay, "must be a finite number ≥ 0")
        }
        guard warmupFraction >= 0, warmupFraction < 1 else {
            throw fail("--warmup", warmupFraction, "must be in [0, 1)")
        }
        guard ["cosine", "step"].contains(schedule) else {
            throw fail("--schedule", schedule, "must be cosine or step")
        }
        if let bad = milestones.first(where: { $0 < 0 || $0 > epochs }) {
            throw fail("--milestones", bad, "must be epochs in 0...\(epochs)")
        }
        if groups != nil && groupSize != nil {
            throw fail("--groups", groups!, "give --groups or --group-size, not both")
        }
        if let g = groups, !(1...ConfigurationLimits.maxGroups).contains(g) {
            throw fail("--groups", g, "must be in 1...\(ConfigurationLimits.maxGroups)")
        }
        if let g = groupSize, !(1...ConfigurationLimits.maxGroups).contains(g) {
            throw fail("--group-size", g, "must be in 1...\(ConfigurationLimits.maxGroups)")
        }
        if let n = trainLimit, n < 1 { throw fail("--train-limit", n, "must be at least 1") }
        if let n = testLimit, n < 1 { throw fail("--test-limit", n, "must be at least 1") }
        guard (1...ConfigurationLimits.maxThreads).contains(threads) else {
            throw fail("--threads", threads, "must be in 1...\(ConfigurationLimits.maxThreads)")
        }
    }

    /// Refuses settings that would be recorded but do nothing for ``norm``: a normalization batch for a
    /// normalization that computes nothing across samples (GN, LN, IN, frozen BN, none), and GN's grouping for
    /// any other normalization; and milestones for a schedule other than `step`. A new run checks this;
    /// checkpoints written before the check may hold such a setting, which is then harmless and not refused.
    ///
    /// - Throws: ``ConfigurationError``.
    public func validateApplicability() throws {
        if schedule != "step", !milestones.isEmpty {
            throw ConfigurationError(
                flag: "--milestones", value: milestones.map(String.init).joined(separator: ","),
                expected: "has no effect with --schedule \(schedule) "
                    + "(milestones are where the step schedule divides the rate by 10: --schedule step)")
        }
        let usesBatchStatistics: Bool
        switch norm {
        case .bn, .brn, .mabn: usesBatchStatistics = true
        case .gn, .ln, .in, .frozenBN, .none: usesBatchStatistics = false
        case .syncbn:
            if let nb = normBatch {
                throw ConfigurationError(
                    flag: "--norm-batch", value: "\(nb)",
                    expected:
                        "no --norm-batch with --norm syncbn (SyncBN normalizes over the global batch; per-worker BN is --norm bn)"
                )
            }
            usesBatchStatistics = true
        }
        if let nb = normBatch, !usesBatchStatistics {
            throw ConfigurationError(
                flag: "--norm-batch", value: "\(nb)",
                expected:
                    "has no effect with --norm \(norm.rawValue) (only bn, brn and mabn compute statistics across samples)"
            )
        }
        let layerSettings: [(String, Any?, Set<NormKind>)] = [
            ("--bn-momentum", bnMomentum, [.bn]),
            ("--mabn-buffer", mabnBuffer, [.mabn]), ("--mabn-warmup", mabnWarmup, [.mabn]),
            ("--mabn-old-weight", mabnOldValueWeight, [.mabn]),
            ("--mabn-without", mabnWithout.flatMap { $0.isEmpty ? nil : $0.joined(separator: ",") }, [.mabn]),
            ("--brn-momentum", brnMomentum, [.brn]), ("--brn-r-max", brnRMax, [.brn]), ("--brn-d-max", brnDMax, [.brn]),
            ("--brn-schedule", brnSchedule, [.brn]),
        ]
        for (flag, value, norms) in layerSettings {
            if let value, !norms.contains(norm) {
                throw ConfigurationError(
                    flag: flag, value: "\(value)",
                    expected:
                        "has no effect with --norm \(norm.rawValue) (only \(norms.map(\.rawValue).sorted().joined(separator: ", ")))"
                )
            }
        }
        if norm != .gn {
            if let g = groups {
                throw ConfigurationError(
                    flag: "--groups", value: "\(g)",
                    expected: "has no effect with --norm \(norm.rawValue) (only gn has groups)")
            }
            if let g = groupSize {
                throw ConfigurationError(
                    flag: "--group-size", value: "\(g)",
                    expected: "has no effect with --norm \(norm.rawValue) (only gn has groups)")
            }
        }
    }

    /// The fields that differ from `other` (`threads` ignored), as `name a → b`, for messages.
    public func differences(from other: TrainingConfiguration) -> [String] {
        func json(_ c: TrainingConfiguration) -> [String: String] {
            var c = c
            c.threads = 0
            let encoder = JSONEncoder()
            encoder.nonConformingFloatEncodingStrategy = .convertToString(
                positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
            guard let data = try? encoder.encode(c),
                let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
            else { return [:] }
            return object.mapValues { "\($0)" }
        }
        let a = json(self), b = json(other)
        return Set(a.keys).union(b.keys).sorted().compactMap { key in
            a[key] == b[key] ? nil : "\(key) \(a[key] ?? "unset") → \(b[key] ?? "unset")"
        }
    }

    /// A short stable hash (8 hex digits, FNV-1a) of everything that determines the run but the thread count,
    /// and of `data` (a dataset fingerprint): two configurations that differ in anything get different default
    /// run directories.
    public func identityHash(data: String = "") -> String {
        var c = resolved
        c.threads = 0
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let bytes = Array((try? encoder.encode(c)) ?? Data()) + Array(data.utf8)
        return String(
            format: "%08x",
            UInt32(truncatingIfNeeded: FNV1a.hash(bytes) >> 32) ^ UInt32(truncatingIfNeeded: FNV1a.hash(bytes)))
    }

    /// Decodes a configuration recorded in a file and validates it.
    ///
    /// - Throws: ``ConfigurationError`` for a value out of range, ``CheckpointError/unreadableMetadata(path:field:reason:)``
    ///   when the JSON does not decode.
    public static func decode(json: String, source: String) throws -> TrainingConfiguration {
        let configuration: TrainingConfiguration
        do {
            configuration = try JSONDecoder().decode(TrainingConfiguration.self, from: Data(json.utf8))
        } catch {
            throw CheckpointError.unreadableMetadata(
                path: source, field: "configuration",
                reason: ErrorText.describeDecoding(error, of: TrainingConfiguration.self, from: Data(json.utf8)))
        }
        try configuration.validate(source: source)
        return configuration
    }
}

/// 64-bit FNV-1a: a fast, stable, non-cryptographic hash for fingerprints and run names.
enum FNV1a {
    static let offsetBasis: UInt64 = 0xcbf2_9ce4_8422_2325
    static let prime: UInt64 = 0x100_0000_01b3

    /// The hash of `bytes`, continuing from `state`.
    static func hash<C: Sequence>(_ bytes: C, state: UInt64 = offsetBasis) -> UInt64 where C.Element == UInt8 {
        var h = state
        for b in bytes { h = (h ^ UInt64(b)) &* prime }
        return h
    }

    /// The hash of raw memory, continuing from `state`.
    static func hash(_ buffer: UnsafeRawBufferPointer, state: UInt64 = offsetBasis) -> UInt64 {
        var h = state
        for b in buffer { h = (h ^ UInt64(b)) &* prime }
        return h
    }
}
