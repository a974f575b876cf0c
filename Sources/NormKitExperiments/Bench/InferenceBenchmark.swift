import Dispatch
import Foundation
import NormKit
import NormKitTraining

/// `normkit bench --inference`: what folding saves at deployment. Times the eval forward of a GN ResNet, the
/// same MABN ResNet unfolded (its normalizations applied as eval affines) and folded (``/NormKitTraining/fold(_:)``), all of one
/// depth, on `(N, 1, 28, 28)` images: per-image latency at batch 1 and throughput at batch 32.
///
/// The models are timed alternately in one loop (GN, MABN, folded MABN, GN, …), so a change in the machine's
/// load during the run falls on all of them alike; each reported number is the median over the repetitions.
/// The weights are random (timing does not depend on their values); the MABN model's running statistics are
/// moved off their defaults by a few training forwards so the fold is a real one.
public enum InferenceBenchmark {
    /// One model's timings.
    public struct Row: Codable, Sendable, Equatable {
        /// `"GN"`, `"MABN (eval, unfolded)"`, `"MABN folded"`.
        public var model: String
        /// Normalization layers in the model.
        public var normalizationLayers: Int
        /// Median milliseconds of one eval forward of a single image.
        public var batch1Milliseconds: Double
        /// Median milliseconds of one eval forward of a batch of ``batch``.
        public var batchMilliseconds: Double
        /// Images per second at batch ``batch`` (`batch / batchMilliseconds`).
        public var imagesPerSecond: Double
        /// The large batch.
        public var batch: Int
    }

    /// Builds the three models of `depth` (seeded) and times them; `repetitions` timed forwards per model and
    /// batch size after one warm-up each.
    ///
    /// - Throws: ``/NormKitTraining/ModelError/invalidDepth(_:)``, or a layer's error.
    public static func run(
        depth: Int, batch: Int = 32, repetitions: Int = 200, imageSize: Int = 28,
        seed: UInt64 = 0
    ) throws -> [Row] {
        var generator = SeededGenerator(seed: seed)
        let gn = try ResNet(depth: depth, normalization: NormalizationSettings(kind: .gn), generator: &generator)
        let mabn = try ResNet(
            depth: depth, normalization: NormalizationSettings(kind: .mabn, mabnBufferSize: 4),
            generator: &generator)
        for _ in 0..<3 {
            _ = try mabn.forward(
                Tensor.randomNormal(shape: [8, 1, imageSize, imageSize], using: &generator),
                training: true)
        }
        let folded = try fold(mabn)
        let models: [(String, Model, Int)] = [
            ("GN", gn, normalizationCount(gn)),
            ("MABN (eval, unfolded)", mabn, normalizationCount(mabn)),
            ("MABN folded", folded, normalizationCount(folded)),
        ]
        for (_, model, _) in models { model.eval() }
        let single = Tensor.randomNormal(shape: [1, 1, imageSize, imageSize], using: &generator)
        let many = Tensor.randomNormal(shape: [batch, 1, imageSize, imageSize], using: &generator)
        let latency = try alternating(models.map(\.1), input: single, repetitions: repetitions)
        let throughput = try alternating(models.map(\.1), input: many, repetitions: max(1, repetitions / 4))
        return models.indices.map { i in
            Row(
                model: models[i].0, normalizationLayers: models[i].2, batch1Milliseconds: latency[i] * 1e3,
                batchMilliseconds: throughput[i] * 1e3, imagesPerSecond: Double(batch) / throughput[i], batch: batch)
        }
    }

    /// Median seconds of one eval forward of `input` for each model, timed in turn.
    static func alternating(_ models: [Model], input: Tensor, repetitions: Int) throws -> [Double] {
        for model in models { _ = try model.forward(input, training: false) }
        var times = [[Double]](repeating: [], count: models.count)
        for _ in 0..<repetitions {
            for (i, model) in models.enumerated() {
                let start = DispatchTime.now().uptimeNanoseconds
                _ = try model.forward(input, training: false)
                times[i].append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
            }
        }
        return times.map { $0.sorted()[$0.count / 2] }
    }

    /// Normalization layers (not identities) in `model`'s tree.
    static func normalizationCount(_ model: Model) -> Int {
        model.namedModules().filter { ($0.module as? NormalizationModule)?.layer != nil }.count
    }

    /// The rows as a Markdown table, with the folded model's speed-up over GN.
    public static func markdown(_ rows: [Row]) -> String {
        let batch = rows.first?.batch ?? 32
        var lines = [
            "| model | norm layers | latency, batch 1 (ms/image) | batch \(batch) (ms) | images/s, batch \(batch) |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in rows {
            lines.append(
                String(
                    format: "| %@ | %d | %.3f | %.2f | %.0f |", r.model, r.normalizationLayers,
                    r.batch1Milliseconds, r.batchMilliseconds, r.imagesPerSecond))
        }
        if let gn = rows.first(where: { $0.model == "GN" }),
            let folded = rows.first(where: { $0.model == "MABN folded" })
        {
            lines.append("")
            lines.append(
                String(
                    format: "folded MABN vs GN: %.2f× lower latency at batch 1, %.2f× the throughput at batch %d",
                    gn.batch1Milliseconds / folded.batch1Milliseconds,
                    folded.imagesPerSecond / gn.imagesPerSecond, batch))
        }
        return lines.joined(separator: "\n")
    }
}
