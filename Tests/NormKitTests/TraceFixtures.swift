import Foundation
import NormKit
import XCTest
import _NormKitTestSupport

/// The closed-form trace inputs of `scripts/make_trace_fixtures.py` and the committed traces (this target's
/// `Fixtures`), for the BatchRenorm and MovingAverageBatchNorm trace tests.
extension VariantTestKit {
    enum TraceKind { case mabn, brn }

    /// The input formula of `scripts/make_trace_fixtures.py` (same libm, same operation order).
    static func traceX(_ kind: TraceKind, step s: Int, _ n: Int, _ c: Int, _ p: Int) -> Double {
        let sd = Double(s), nd = Double(n), cd = Double(c), pd = Double(p)
        let base =
            Foundation.sin(0.173 * sd + 0.91 * nd + 0.57 * cd + 0.331 * pd)
            + 0.5 * Foundation.cos(0.061 * sd * (cd + 1) + 1.7 * pd + 0.4 * nd)
        var scale = Foundation.exp(0.9 * Foundation.sin(2.0 * Double.pi * sd / 347.0 + 0.8 * cd))
        if s % 97 == 0 { scale *= 12.0 }
        var shift: Double
        switch kind {
        case .mabn:
            shift = 0.1 * Foundation.sin(sd / 50.0 + cd)
        case .brn:
            shift = 1.5 * Foundation.sin(2.0 * Double.pi * sd / 211.0 + cd)
            if s % 89 == 0 { shift += 4.0 }
        }
        return shift + scale * base
    }

    static func traceDy(step s: Int, _ n: Int, _ c: Int, _ p: Int) -> Double {
        let sd = Double(s)
        return Foundation.cos(0.127 * sd + 0.53 * Double(n) - 0.29 * Double(c) + 0.77 * Double(p))
            * (1.0 + 0.3 * Foundation.sin(0.01 * sd))
    }

    static func traceInputs(_ kind: TraceKind, step: Int, shape: [Int], layout: TensorLayout) -> (Tensor, Tensor) {
        let channels = shape[1], positions = shape.dropFirst(2).reduce(1, *)
        var x = [Double](repeating: 0, count: shape.reduce(1, *)), dy = x
        for n in 0..<shape[0] {
            for c in 0..<channels {
                for p in 0..<positions {
                    let i = (n * channels + c) * positions + p
                    x[i] = traceX(kind, step: step, n, c, p)
                    dy[i] = traceDy(step: step, n, c, p)
                }
            }
        }
        return (tensor(shape, layout, x), tensor(shape, layout, dy))
    }

    struct TraceFile: Decodable {
        let epsilon: Double
        let runs: [TraceRun]
    }

    struct TraceSchedule: Decodable {
        let warmupSteps: Int, rSteps: Int, dSteps: Int
        let rMax: Double, dMax: Double
    }

    /// A number or a list of numbers (state entries).
    enum Numbers: Decodable {
        case list([Double])
        case scalar(Double)
        init(from decoder: Decoder) throws {
            let container = try decoder.singleValueContainer()
            if let list = try? container.decode([Double].self) {
                self = .list(list)
            } else {
                self = .scalar(try container.decode(Double.self))
            }
        }
        var values: [Double] {
            switch self {
            case .list(let v): return v
            case .scalar(let v): return [v]
            }
        }
    }

    struct Checkpoint: Decodable {
        let step: Int
        let y: [Double], dx: [Double], evalY: [Double], dgamma: [Double], dbeta: [Double]
        let state: [String: Numbers]
    }

    struct TraceRun: Decodable {
        let name: String
        let shape: [Int]
        let layout: String
        let normBatch: Int?
        let bufferSize: Int?
        let warmup: Int?
        let momentum: Double
        let schedule: TraceSchedule?
        let steps: Int
        let summarySteps: [Int]
        let yP: [Double], dxP: [Double], dgP: [Double], dbP: [Double], rP: [Double]
        let dP: [Double]?
        let checkpoints: [Checkpoint]
        let stats: [String: Int]?
    }

    static func loadTrace(_ name: String) throws -> TraceFile {
        let url = try XCTUnwrap(
            Bundle.module.url(forResource: name, withExtension: "json", subdirectory: "Fixtures"),
            "missing fixture \(name).json: run scripts/make_trace_fixtures.py")
        return try JSONDecoder().decode(TraceFile.self, from: Data(contentsOf: url))
    }

    /// `|a − b| / Σ|terms|`, the relative error of a probe sum.
    static func summaryError(_ swift: Double, _ reference: Double, scale: Double) -> Double {
        abs(swift - reference) / max(scale, 1e-12)
    }

    /// Replays a trace run through `layer` (γ, β set as the script does): per step a training forward, the
    /// backward, then an evaluation forward of the same x; compares the summaries and checkpoints. Returns the
    /// worst relative error per quantity.
    static func replayTrace(
        _ run: TraceRun, kind: TraceKind, layer: NormalizationLayer, r: () -> [Float],
        d: (() -> [Float])?, state: () -> [String: [Double]]
    ) throws -> [String: Double] {
        let shape = run.shape, channels = shape[1], batch = shape[0], positions = shape.dropFirst(2).reduce(1, *)
        let layout = try XCTUnwrap(TensorLayout(rawValue: run.layout))
        let chunks = batch / (run.normBatch ?? batch)
        layer.weight!.value = (0..<channels).map { 1 + 0.25 * Float($0) }
        layer.bias!.value = (0..<channels).map { 0.125 * Float($0) - 0.125 }
        var probe = [Double](repeating: 0, count: shape.reduce(1, *))
        for n in 0..<batch {
            for c in 0..<channels {
                for p in 0..<positions {
                    probe[(n * channels + c) * positions + p] = Foundation.cos(
                        0.7 * Double(n) + 1.1 * Double(c) + 0.3 * Double(p))
                }
            }
        }
        let cw = (0..<channels).map { 1 + 0.5 * Double($0) }
        var worst: [String: Double] = [:]
        var y = Tensor(zeros: [0, 0]), dx = y, ye = y
        var summary = 0, checkpoint = 0
        func probeSum(_ values: [Double], _ weights: [Double]) -> (Double, Double) {
            var s = 0.0, a = 0.0
            for (v, w) in zip(values, weights) { s += v * w; a += abs(v * w) }
            return (s, a)
        }
        for s in 1...run.steps {
            let (x, dy) = traceInputs(kind, step: s, shape: shape, layout: layout)
            try layer.forward(x, into: &y, training: true)
            let rs = r().map(Double.init), ds = d?().map(Double.init)
            try layer.backward(dy, into: &dx)
            let dgamma = layer.weight!.gradient.map(Double.init), dbeta = layer.bias!.gradient.map(Double.init)
            try layer.forward(x, into: &ye, training: false)
            if summary < run.summarySteps.count, run.summarySteps[summary] == s {
                let context = "\(run.name) step \(s)"
                let bw = (0..<(chunks * channels)).map {
                    1 + 0.5 * Double($0 % channels) + 0.25 * Double($0 / channels)
                }
                var items: [(String, [Double], [Double], Double)] = [
                    ("yP", logical(y), probe, run.yP[summary]), ("dxP", logical(dx), probe, run.dxP[summary]),
                    ("dgP", dgamma, cw, run.dgP[summary]), ("dbP", dbeta, cw, run.dbP[summary]),
                    ("rP", rs, bw, run.rP[summary]),
                ]
                if let ds, let dP = run.dP { items.append(("dP", ds, bw, dP[summary])) }
                for (key, values, weights, reference) in items {
                    let (value, scale) = probeSum(values, weights)
                    let error = abs(value - reference) <= 1e-9 ? 0 : summaryError(value, reference, scale: scale)
                    record(&worst, key, error, context)
                }
                summary += 1
            }
            if checkpoint < run.checkpoints.count, run.checkpoints[checkpoint].step == s {
                let cp = run.checkpoints[checkpoint], context = "\(run.name) checkpoint \(s)"
                record(&worst, "y", relErr(logical(y), cp.y), context)
                record(&worst, "dx", relErr(logical(dx), cp.dx), context)
                record(&worst, "evalY", relErr(logical(ye), cp.evalY), context)
                record(&worst, "dgamma", relErr(dgamma, cp.dgamma), context)
                record(&worst, "dbeta", relErr(dbeta, cp.dbeta), context)
                let mine = state()
                XCTAssertEqual(Set(mine.keys), Set(cp.state.keys), context)
                for (key, reference) in cp.state {
                    record(&worst, "state." + key, relErr(mine[key] ?? [], reference.values), context)
                }
                checkpoint += 1
            }
        }
        XCTAssertEqual(summary, run.summarySteps.count)
        XCTAssertEqual(checkpoint, run.checkpoints.count)
        return worst
    }
}
