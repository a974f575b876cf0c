// Writes the seed corpora of the fuzz targets into `Corpus/<target>/` (run from the `Fuzz/` directory, or pass
// the corpus directory as the first argument): valid inputs produced by NormKit's own writers, and near-valid
// ones (one field, byte or length wrong) so that every error path starts within one mutation. Deterministic:
// running it again rewrites the same files. `scripts/fuzz.sh --make-corpus` builds and runs it.
import Foundation
import NormKit
import NormKitExperiments
import NormKitTraining

let corpus = URL(fileURLWithPath: CommandLine.arguments.dropFirst().first ?? "Corpus", isDirectory: true)
nonisolated(unsafe) var written = 0  // unchecked: this seed writer is single-threaded

func seed(_ target: String, _ name: String, _ bytes: [UInt8]) {
    let directory = corpus.appendingPathComponent(target, isDirectory: true)
    try! FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    try! Data(bytes).write(to: directory.appendingPathComponent(name))
    written += 1
}

func seed(_ target: String, _ name: String, _ text: String) { seed(target, name, Array(text.utf8)) }

/// A safetensors file with `header` as its JSON header (no padding) and `data` after it.
func rawSafeTensors(_ header: String, _ data: [UInt8] = [], declaredLength: UInt64? = nil) -> [UInt8] {
    let h = Array(header.utf8)
    let n = declaredLength ?? UInt64(h.count)
    return (0..<8).map { UInt8(truncatingIfNeeded: n >> (8 * UInt64($0))) } + h + data
}

// MARK: safetensors

do {
    let t = "fuzz-safetensors"
    let small: [String: StateTensor] = [
        "bn.weight": .float32(shape: [3], values: [1, -0.5, .infinity]),
        "bn.num_batches_tracked": .int64(shape: [], values: [42]),
    ]
    seed(t, "valid-small.safetensors", try! SafeTensors.encode(small))
    seed(
        t, "valid-metadata.safetensors",
        try! SafeTensors.encode(
            small, metadata: ["format": "normkit-checkpoint-1", "note": "é ✓ \"q\" \\ /\n\t\u{01}", "step": "7"]))
    seed(t, "valid-empty.safetensors", try! SafeTensors.encode([:]))
    seed(
        t, "valid-zero-size.safetensors",
        try! SafeTensors.encode(
            ["empty": .float32(shape: [0, 4], values: []), "scalar": .float32(shape: [], values: [.nan])]))
    seed(
        t, "valid-2d.safetensors",
        try! SafeTensors.encode(
            [
                "conv.weight": .float32(shape: [2, 1, 2, 2], values: (0..<8).map(Float.init)),
                "iters": .int64(shape: [2], values: [Int64.min, Int64.max]),
            ]))
    let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../../Tests/NormKitTrainingTests/Fixtures/safetensors_python.safetensors")
    if let python = try? Data(contentsOf: fixture) { seed(t, "valid-python-fixture.safetensors", Array(python)) }
    // F16, BF16, F64, I32 with special values, written by scripts/make_dtype_fixtures.py.
    let dtypes = fixture.deletingLastPathComponent().appendingPathComponent("safetensors_dtypes.safetensors")
    if let file = try? Data(contentsOf: dtypes) { seed(t, "valid-dtypes-fixture.safetensors", Array(file)) }

    let f32 = { (name: String, shape: String, begin: Int, end: Int) in
        "\"\(name)\":{\"dtype\":\"F32\",\"shape\":\(shape),\"data_offsets\":[\(begin),\(end)]}"
    }
    let eight = [UInt8](repeating: 0x3F, count: 8)
    seed(
        t, "valid-handwritten.safetensors",
        rawSafeTensors(
            "{\"__metadata__\":{\"k\":\"v\\u00e9\\ud83d\\ude00\"}," + f32("a", "[2]", 0, 8) + "}  ", eight))
    seed(
        t, "bad-duplicate-key.safetensors",
        rawSafeTensors("{" + f32("a", "[1]", 0, 4) + "," + f32("a", "[1]", 4, 8) + "}", eight))
    seed(
        t, "bad-overlap.safetensors",
        rawSafeTensors("{" + f32("a", "[2]", 0, 8) + "," + f32("b", "[1]", 4, 8) + "}", eight))
    seed(t, "bad-gap.safetensors", rawSafeTensors("{" + f32("a", "[1]", 4, 8) + "}", eight))
    seed(t, "bad-trailing.safetensors", rawSafeTensors("{" + f32("a", "[1]", 0, 4) + "}", eight))
    seed(t, "bad-size-mismatch.safetensors", rawSafeTensors("{" + f32("a", "[3]", 0, 8) + "}", eight))
    seed(t, "bad-offsets-reversed.safetensors", rawSafeTensors("{" + f32("a", "[0]", 8, 0) + "}", eight))
    seed(
        t, "bad-shape-overflow.safetensors",
        rawSafeTensors(
            "{" + f32("a", "[4294967296,4294967296,0]", 0, 0) + "}"))
    seed(t, "bad-shape-negative.safetensors", rawSafeTensors("{" + f32("a", "[-1]", 0, 0) + "}"))
    seed(t, "bad-shape-float.safetensors", rawSafeTensors("{" + f32("a", "[1.0e0]", 0, 4) + "}", [0, 0, 0, 0]))
    seed(
        t, "bad-dtype.safetensors",
        rawSafeTensors(
            "{\"a\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[0,2]}}", [0, 0]))
    seed(
        t, "bad-f16-size.safetensors",
        rawSafeTensors(
            "{\"a\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,4]}}", [0, 0, 0, 0]))
    seed(
        t, "bad-f64-beyond-float32.safetensors",
        rawSafeTensors(
            "{\"a\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}",
            (0..<8).map { UInt8(truncatingIfNeeded: (1e39 as Double).bitPattern >> (8 * UInt64($0))) }))
    seed(
        t, "bad-i64-size.safetensors",
        rawSafeTensors(
            "{\"a\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,4]}}", [0, 0, 0, 0]))
    seed(t, "bad-lone-surrogate.safetensors", rawSafeTensors("{\"__metadata__\":{\"k\":\"\\ud800\"}}"))
    seed(t, "bad-metadata-number.safetensors", rawSafeTensors("{\"__metadata__\":{\"k\":1}}"))
    seed(t, "bad-metadata-null.safetensors", rawSafeTensors("{\"__metadata__\":null}"))
    seed(
        t, "bad-deep-nesting.safetensors",
        rawSafeTensors(String(repeating: "[", count: 70) + String(repeating: "]", count: 70)))
    seed(t, "bad-not-object.safetensors", rawSafeTensors("[1, 2.5e-3, -0, true, false, null, \"s\"]"))
    seed(
        t, "bad-invalid-utf8.safetensors",
        [6, 0, 0, 0, 0, 0, 0, 0] + Array("{\"".utf8) + [0xC3, 0x28] + Array("\"".utf8))
    seed(t, "bad-control-char.safetensors", rawSafeTensors("{\"a\u{01}\":{}}"))
    seed(t, "bad-header-too-long.safetensors", rawSafeTensors("{}", declaredLength: 1000))
    seed(t, "bad-header-huge.safetensors", rawSafeTensors("{}", declaredLength: UInt64.max))
    seed(t, "bad-short.safetensors", [2, 0, 0])
}

// MARK: IDX

do {
    let t = "fuzz-idx"
    let labels = try! IDXFile(dimensions: [6], bytes: [0, 1, 2, 9, 5, 3])
    let images = try! IDXFile(dimensions: [2, 3, 2], bytes: Array(0..<12))
    seed(t, "valid-labels.idx", labels.encoded())
    seed(t, "valid-images.idx", images.encoded())
    seed(t, "valid-rank0.idx", try! IDXFile(dimensions: [], bytes: [7]).encoded())
    seed(t, "valid-zero-count.idx", try! IDXFile(dimensions: [0, 28, 28], bytes: []).encoded())
    seed(t, "bad-truncated.idx", Array(images.encoded().dropLast()))
    seed(t, "bad-trailing.idx", labels.encoded() + [0])
    seed(t, "bad-short-header.idx", [0, 0, 8, 3, 0, 0])
    seed(t, "bad-magic.idx", [1, 0, 8, 1, 0, 0, 0, 0])
    seed(t, "bad-element-type.idx", [0, 0, 0x0D, 1, 0, 0, 0, 1, 0, 0, 0, 0])
    seed(t, "bad-overflow.idx", [0, 0, 8, 3] + [UInt8](repeating: 0xFF, count: 12))
    seed(t, "bad-rank255.idx", [0, 0, 8, 255] + [UInt8](repeating: 1, count: 16))
}

// MARK: gzip

/// A zlib stream of `bytes` in one stored block (zlib wrapper instead of gzip: Gzip accepts both).
func zlibStored(_ bytes: [UInt8]) -> [UInt8] {
    var a: UInt32 = 1, b: UInt32 = 0
    for byte in bytes { a = (a + UInt32(byte)) % 65521; b = (b + a) % 65521 }
    let n = UInt16(bytes.count)
    let adler = b << 16 | a
    return [0x78, 0x01, 0x01, UInt8(n & 0xFF), UInt8(n >> 8), UInt8(~n & 0xFF), UInt8(~n >> 8)] + bytes
        + [
            UInt8(adler >> 24), UInt8(truncatingIfNeeded: adler >> 16), UInt8(truncatingIfNeeded: adler >> 8),
            UInt8(truncatingIfNeeded: adler),
        ]
}

do {
    let t = "fuzz-gzip"
    let idx = try! IDXFile(dimensions: [2, 3, 2], bytes: Array(0..<12)).encoded()
    let text = Array("NormKit fuzz seed: the same words, the same words, the same words.\n".utf8)
    let member = try! Gzip.compress(idx, level: 6)
    seed(t, "valid-idx-level6.gz", member)
    seed(t, "valid-idx-level0.gz", try! Gzip.compress(idx, level: 0))
    seed(t, "valid-text-level9.gz", try! Gzip.compress(text, level: 9))
    seed(t, "valid-empty.gz", try! Gzip.compress([], level: 6))
    seed(t, "valid-two-members.gz", member + (try! Gzip.compress(text, level: 1)))
    seed(t, "valid-zlib-stored.zlib", zlibStored(text))
    seed(t, "valid-repetitive.gz", try! Gzip.compress([UInt8](repeating: 0, count: 3000), level: 9))
    seed(t, "bad-truncated.gz", Array(member.dropLast(5)))
    seed(t, "bad-trailing.gz", member + [0x00, 0x01])
    var crc = member
    crc[crc.count - 6] ^= 0xFF
    seed(t, "bad-crc.gz", crc)
    var size = member
    size[size.count - 1] = 0x7F  // ISIZE far from the real length
    seed(t, "bad-isize.gz", size)
    seed(t, "bad-magic-only.gz", [0x1F, 0x8B])
    seed(t, "bad-method.gz", [0x1F, 0x8B, 0x07, 0, 0, 0, 0, 0, 0, 0xFF] + Array(member.dropFirst(10)))
}

// MARK: checkpoint configuration

func configurationJSON(_ c: TrainingConfiguration) -> String {
    let normalization = try! NormalizationSettings(c, totalSteps: 100)
    return try! TrainingCheckpoint.metadata(configuration: c, normalization: normalization, step: 7)["configuration"]!
}

do {
    let t = "fuzz-checkpoint-config"
    var c = TrainingConfiguration()
    seed(t, "valid-default.json", configurationJSON(c))
    seed(t, "valid-resolved-gn.json", configurationJSON(c.resolved))
    for norm in NormKind.allCases {
        var n = c
        n.norm = norm
        n.normBatch = 4
        seed(t, "valid-\(norm.rawValue)-nb4.json", configurationJSON(n))
    }
    c.groupSize = 4
    c.learningRate = 0.05
    c.schedule = "step"
    c.milestones = [1, 2]
    c.trainLimit = 4000
    c.testLimit = 1000
    c.seed = UInt64.max
    c.model = "vgg"
    seed(t, "valid-groupsize-vgg.json", configurationJSON(c))
    var old = TrainingConfiguration()  // a file from before the trainer recorded GN's groups
    old.norm = .gn
    seed(
        t, "valid-old-gn-torch-arguments.bin",
        Array(configurationJSON(old).utf8) + [0]
            + Array("{\"depth\":\"8\",\"groups\":\"8\",\"mabn_buffer\":\"1\",\"norm\":\"gn\"}".utf8))
    let text = configurationJSON(TrainingConfiguration())
    func replacing(_ a: String, _ b: String) -> String { text.replacingOccurrences(of: a, with: b) }
    seed(t, "bad-batch-zero.json", replacing("\"batch\":32", "\"batch\":0"))
    seed(t, "bad-norm-batch-zero.json", replacing("\"batch\":32", "\"batch\":32,\"normBatch\":0"))
    seed(
        t, "bad-norm-batch-negative.json", replacing("\"batch\":32", "\"batch\":-9223372036854775808,\"normBatch\":-1"))
    seed(t, "bad-epochs-huge.json", replacing("\"epochs\":2", "\"epochs\":9223372036854775807"))
    seed(t, "bad-groups-and-size.json", replacing("\"batch\":32", "\"batch\":32,\"groups\":3,\"groupSize\":5"))
    seed(t, "bad-groups-negative.json", replacing("\"batch\":32", "\"batch\":32,\"groups\":-16"))
    seed(t, "bad-unknown-norm.json", replacing("\"norm\":\"gn\"", "\"norm\":\"xn\""))
    seed(t, "bad-missing-field.json", replacing("\"momentum\":0.9,", ""))
    seed(t, "bad-wrong-type.json", replacing("\"epochs\":2", "\"epochs\":\"2\""))
    seed(t, "bad-train-limit-negative.json", replacing("\"batch\":32", "\"batch\":32,\"trainLimit\":-5"))
    seed(t, "bad-not-json.json", "{\"model\":")
}

// MARK: sweep plan

func planJSON(_ plan: SweepPlan, cells: [SweepCell]? = nil) -> [UInt8] {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]  // compact: `write(to:)` pretty-prints, the decoder takes both
    return Array(try! encoder.encode(SweepPlanRecord(plan: plan, cells: cells ?? (try! plan.cells()))))
}

do {
    let t = "fuzz-sweep-plan"
    var base = SweepPresets.recipe
    base.epochs = 1
    base.trainLimit = 400
    base.testLimit = 100
    let small = SweepPlan(name: "small", base: base, norms: [.bn, .gn], normBatches: [8, 2], batch: 8, seeds: [0])
    seed(t, "valid-small.json", planJSON(small))
    var perGPU = small
    perGPU.setting = .perGPU
    perGPU.gpus = 4
    perGPU.norms = [.mabn, .ln]
    seed(t, "valid-per-gpu.json", planJSON(perGPU))
    var groups = small
    groups.norms = [.gn]
    groups.normBatches = [8]
    groups.groupAxis = [.groups(4), .groupSize(2)]
    groups.seeds = [0, 1]
    seed(t, "valid-groups-axis.json", planJSON(groups))
    var everything = small
    everything.norms = NormKind.allCases
    everything.reuseBatchIndependentRuns = false
    seed(t, "valid-all-norms.json", planJSON(everything))
    seed(t, "valid-no-cells.json", planJSON(small, cells: []))
    let text = String(decoding: planJSON(small), as: UTF8.self)
    func replacing(_ a: String, _ b: String) -> [UInt8] { Array(text.replacingOccurrences(of: a, with: b).utf8) }
    seed(
        t, "bad-group-tag.json",
        Array(
            String(decoding: planJSON(groups), as: UTF8.self)
                .replacingOccurrences(of: "\"gs2\"", with: "\"gs0\"").utf8))
    seed(t, "bad-setting.json", replacing("\"normalization-batch\"", "\"per-tpu\""))
    seed(t, "bad-norm-batch-zero.json", replacing("\"normBatches\":[8,2]", "\"normBatches\":[8,0]"))
    seed(
        t, "bad-per-gpu-huge.json",
        Array(
            String(decoding: planJSON(perGPU), as: UTF8.self)
                .replacingOccurrences(of: "\"gpus\":4", with: "\"gpus\":4611686018427387904").utf8))
    seed(t, "bad-duplicate-seeds.json", replacing("\"seeds\":[0]", "\"seeds\":[0,0]"))
    seed(t, "bad-empty.json", "")
    seed(t, "bad-truncated.json", Array(text.utf8.prefix(text.utf8.count / 2)))
}

// MARK: run records and training state

/// The encoder NormKit writes its records with (`summary.json`, `metrics.jsonl`, a checkpoint's training state):
/// sorted keys, non-finite numbers as `"inf"`, `"-inf"`, `"nan"`.
func recordJSON<T: Encodable>(_ value: T, pretty: Bool = false) -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = pretty ? [.prettyPrinted, .sortedKeys] : [.sortedKeys]
    encoder.nonConformingFloatEncodingStrategy = .convertToString(
        positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
    return String(decoding: try! encoder.encode(value), as: UTF8.self)
}

func epochMetrics(_ epoch: Int, testLoss: Double = 1.25, skipped: Int? = 0) -> EpochMetrics {
    EpochMetrics(
        epoch: epoch, step: 2 * (epoch + 1), trainLoss: 2.0 - 0.25 * Double(epoch), trainError: 0.5, testLoss: testLoss,
        testError: 0.4 - 0.05 * Double(epoch), learningRate: 0.05, seconds: 1.5 * Double(epoch + 1),
        imagesPerSecond: 900, skippedUpdates: skipped)
}

do {
    let t = "fuzz-run-records"
    var c = TrainingConfiguration()
    c.norm = .bn
    c.batch = 8
    c.normBatch = 2
    c.epochs = 2
    let epochs = [epochMetrics(0), epochMetrics(1)]
    func summary(
        _ epochs: [EpochMetrics], finished: Bool = true, configuration: TrainingConfiguration? = nil
    )
        -> RunSummary
    {
        RunSummary(
            configuration: (configuration ?? c).resolved, finalTestError: epochs.last?.testError ?? 0,
            bestTestError: epochs.map(\.testError).min() ?? 0, epochs: epochs, wallSeconds: 3,
            imagesPerSecond: 900, perClassAccuracy: (0..<10).map { 0.5 + Double($0) / 40 }, finished: finished,
            convolutionEngine: "im2col", workers: nil, skippedUpdates: 0)
    }
    let lines = epochs.map { recordJSON($0) + "\n" }.joined()
    let finished = recordJSON(summary(epochs), pretty: true)
    seed(t, "valid-finished.json", finished)
    seed(t, "valid-finished-with-metrics.bin", finished + "\u{0}" + lines)
    var gn = c
    gn.norm = .gn
    gn.normBatch = nil
    gn.groupSize = 4
    seed(t, "valid-finished-gn.json", recordJSON(summary(epochs, configuration: gn), pretty: true))
    // Non-finite numbers, which NormKit's record encoder writes as "nan", "inf", "-inf".
    let nonFinite = [epochMetrics(0, testLoss: .nan), epochMetrics(1, testLoss: .infinity)]
    seed(t, "valid-finished-nan.json", recordJSON(summary(nonFinite), pretty: true))
    seed(t, "valid-unfinished.bin", recordJSON(summary([epochs[0]], finished: false), pretty: true) + "\u{0}" + lines)
    seed(t, "valid-metrics-only.bin", "\u{0}" + lines)
    seed(t, "valid-metrics-nan.bin", "\u{0}" + nonFinite.map { recordJSON($0) + "\n" }.joined())
    seed(t, "valid-metrics-old.bin", "\u{0}" + recordJSON(epochMetrics(0, skipped: nil)) + "\n")
    seed(t, "bad-empty-summary.json", "")
    seed(t, "bad-truncated-summary.json", String(finished.prefix(finished.count / 2)))
    seed(t, "bad-truncated-metrics-line.bin", "\u{0}" + String(lines.prefix(lines.count * 3 / 4)))
    seed(t, "bad-metrics-garbage.bin", "\u{0}" + "{\n}\n[1,2]\nnull\n\u{FF}\n" + lines)
    func replacing(_ a: String, _ b: String, in text: String = finished) -> String {
        text.replacingOccurrences(of: a, with: b)
    }
    seed(t, "bad-norm-batch-zero.json", replacing("\"normBatch\" : 2", "\"normBatch\" : 0"))
    seed(t, "bad-batch-negative.json", replacing("\"batch\" : 8", "\"batch\" : -9223372036854775808"))
    seed(t, "bad-epochs-huge.json", replacing("\"epochs\" : 2,", "\"epochs\" : 9223372036854775807,"))
    seed(t, "bad-huge-numbers.json", replacing("\"imagesPerSecond\" : 900", "\"imagesPerSecond\" : 1e308"))
    seed(t, "bad-errors-out-of-range.json", replacing("\"testError\" : 0.4", "\"testError\" : -1e300"))
    seed(
        t, "bad-skipped-huge.bin",
        "\u{0}" + replacing("\"skippedUpdates\":0", "\"skippedUpdates\":9223372036854775807", in: lines))
    seed(t, "bad-epoch-negative.bin", "\u{0}" + replacing("\"epoch\":1", "\"epoch\":-9223372036854775808", in: lines))
    seed(t, "bad-wrong-type.json", replacing("\"finished\" : true", "\"finished\" : \"yes\""))
    seed(t, "bad-unknown-norm.json", replacing("\"norm\" : \"bn\"", "\"norm\" : \"xn\""))
}

do {
    // The run fuzz-training-state resumes: 2 epochs of 2 steps, stopped after step 3 (epoch 1, batch 1).
    let t = "fuzz-training-state"
    let state = TrainingCheckpoint.TrainingState(
        step: 3, position: BatchIterator.Position(epoch: 1, batchIndex: 1), history: [epochMetrics(0)],
        epochLossSum: 9.25, epochCorrect: 1, epochImages: 4, elapsedSeconds: 2.5, epochTrainingSeconds: 0.75,
        epochSkippedUpdates: 0)
    let text = recordJSON(state)
    seed(t, "valid-step3.json", text)
    var nan = state
    nan.history = [epochMetrics(0, testLoss: .nan)]
    seed(t, "valid-nan-history.json", recordJSON(nan))
    nan.epochLossSum = .nan
    seed(t, "bad-loss-sum-nan.json", recordJSON(nan))
    var old = state
    old.epochSkippedUpdates = nil
    old.history = [epochMetrics(0, skipped: nil)]
    seed(t, "valid-old.json", recordJSON(old))
    func replacing(_ a: String, _ b: String) -> String { text.replacingOccurrences(of: a, with: b) }
    seed(t, "bad-step-mismatch.json", replacing("\"step\":3", "\"step\":2"))
    seed(t, "bad-epoch-huge.json", replacing("\"epoch\":1}", "\"epoch\":9223372036854775807}"))
    seed(t, "bad-batch-index-negative.json", replacing("\"batchIndex\":1", "\"batchIndex\":-1"))
    var long = state
    long.history = (0..<5).map { epochMetrics($0) }
    seed(t, "bad-history-long.json", recordJSON(long))
    var none = state
    none.history = []
    seed(t, "bad-history-empty.json", recordJSON(none))
    seed(t, "bad-epoch-images-huge.json", replacing("\"epochImages\":4", "\"epochImages\":9223372036854775807"))
    seed(t, "bad-correct-above-images.json", replacing("\"epochCorrect\":1", "\"epochCorrect\":5"))
    seed(t, "bad-skipped-negative.json", replacing("\"epochSkippedUpdates\":0", "\"epochSkippedUpdates\":-1"))
    seed(t, "bad-elapsed-inf.json", replacing("\"elapsedSeconds\":2.5", "\"elapsedSeconds\":\"inf\""))
    seed(t, "bad-truncated.json", String(text.prefix(text.count / 2)))
    seed(t, "bad-empty.json", "")
    seed(t, "bad-velocities-dropped.bin", Array(text.utf8) + [0, 1, 0])
    seed(t, "bad-velocity-short.bin", Array(text.utf8) + [0, 0, 3])
}

print("wrote \(written) seed files under \(corpus.path)")
