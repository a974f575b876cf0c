// A float64 reference for BN, GN, LN and IN, written straight from spec sections 1–2 as plain Double loops over
// logical (n, c, position) indices. It is deliberately naive: no layouts, no SIMD, no fused passes, no
// cleverness, so that it is obviously correct. Every other test compares NormKit against it, and the
// finite-difference tests check its own backward.

import Foundation
import NormKit
import XCTest

/// A logical `(N, C, M)` array of Doubles (`M` = flattened spatial positions), indexed `(n·C + c)·M + p`
/// whatever the memory layout of the tensor it came from.
public struct RefTensor {
    public var batch: Int
    public var channels: Int
    public var positions: Int
    public var data: [Double]

    public init(batch: Int, channels: Int, positions: Int, data: [Double]? = nil) {
        self.batch = batch
        self.channels = channels
        self.positions = positions
        self.data = data ?? [Double](repeating: 0, count: batch * channels * positions)
    }

    /// The exact float32 values of `t`, widened to Double, in logical order.
    public init(_ t: Tensor) {
        self.init(batch: t.batch, channels: t.channels, positions: t.spatialCount)
        for n in 0..<batch { for c in 0..<channels { for p in 0..<positions { self[n, c, p] = Double(t[n, c, p]) } } }
    }

    public subscript(n: Int, c: Int, p: Int) -> Double {
        get { data[(n * channels + c) * positions + p] }
        set { data[(n * channels + c) * positions + p] = newValue }
    }

    public var count: Int { data.count }
}

/// A reference normalization set description: which sets exist, and which (n, c) pairs belong to each.
/// BN with ghost batches of `k`: set (b, c) holds samples `b·k ..< (b+1)·k` of channel `c`.
/// GN with `G` groups: set (n, g) holds channels `g·C/G ..< (g+1)·C/G` of sample `n` (contiguous grouping).
public enum RefSets {
    case batchNorm(normBatch: Int)
    case groupNorm(groups: Int)

    /// The (n, c) pairs of every set, listed set by set.
    public func members(batch: Int, channels: Int) -> [[(n: Int, c: Int)]] {
        var sets: [[(n: Int, c: Int)]] = []
        switch self {
        case .batchNorm(let k):
            precondition(batch % k == 0)
            for b in 0..<(batch / k) {
                for c in 0..<channels {
                    var s: [(n: Int, c: Int)] = []
                    for n in (b * k)..<((b + 1) * k) { s.append((n, c)) }
                    sets.append(s)
                }
            }
        case .groupNorm(let g):
            precondition(channels % g == 0)
            let size = channels / g
            for n in 0..<batch {
                for group in 0..<g {
                    var s: [(n: Int, c: Int)] = []
                    for c in (group * size)..<((group + 1) * size) { s.append((n, c)) }
                    sets.append(s)
                }
            }
        }
        return sets
    }
}

/// What the reference training forward returns: the output, `x̂`, and per-set biased mean/variance and `rstd`.
public struct RefForward {
    public var y: RefTensor
    public var xhat: RefTensor
    public var mean: [Double]
    public var variance: [Double]
    public var rstd: [Double]
    /// For BN: `(C,)` averages over the ghost batches of the mean and of the *unbiased* variance.
    public var channelMean: [Double] = []
    public var channelUnbiasedVariance: [Double] = []
}

public struct RefBackward {
    public var dx: RefTensor
    public var dgamma: [Double]
    public var dbeta: [Double]
    /// Per channel, the magnitude of the terms of the `dγ` and `dβ` sums, `Σ|dy·x̂|` and `Σ|dy|` (empty from
    /// ``Float64Reference/finiteDifferences(_:w:sets:gamma:beta:step:)``): how far those sums can cancel.
    public var dgammaTerms: [Double] = []
    public var dbetaTerms: [Double] = []
}

public enum Float64Reference {
    /// Training forward for any normalization set family (spec §1): `μ`, biased `var`, `x̂ = (x−μ)·rstd`,
    /// `y = γ_c·x̂ + β_c`. `gamma`/`beta` nil means 1 and 0.
    public static func forward(
        _ x: RefTensor, sets kind: RefSets, gamma: [Double]?, beta: [Double]?,
        epsilon: Double = 1e-5
    ) -> RefForward {
        let sets = kind.members(batch: x.batch, channels: x.channels)
        var y = RefTensor(batch: x.batch, channels: x.channels, positions: x.positions)
        var xhat = y
        var means: [Double] = [], variances: [Double] = [], rstds: [Double] = []
        for set in sets {
            let m = Double(set.count * x.positions)
            var sum = 0.0
            for (n, c) in set { for p in 0..<x.positions { sum += x[n, c, p] } }
            let mu = sum / m
            var sq = 0.0
            for (n, c) in set { for p in 0..<x.positions { sq += (x[n, c, p] - mu) * (x[n, c, p] - mu) } }
            let v = sq / m
            let r = 1 / (v + epsilon).squareRoot()
            for (n, c) in set {
                for p in 0..<x.positions {
                    let h = (x[n, c, p] - mu) * r
                    xhat[n, c, p] = h
                    y[n, c, p] = (gamma?[c] ?? 1) * h + (beta?[c] ?? 0)
                }
            }
            means.append(mu)
            variances.append(v)
            rstds.append(r)
        }
        var result = RefForward(y: y, xhat: xhat, mean: means, variance: variances, rstd: rstds)
        if case .batchNorm(let k) = kind {
            // Sets are numbered b·C + c; running statistics take the average over ghost batches.
            let blocks = x.batch / k, m = Double(k * x.positions)
            result.channelMean = [Double](repeating: 0, count: x.channels)
            result.channelUnbiasedVariance = result.channelMean
            for b in 0..<blocks {
                for c in 0..<x.channels {
                    result.channelMean[c] += means[b * x.channels + c] / Double(blocks)
                    result.channelUnbiasedVariance[c] += variances[b * x.channels + c] * m / (m - 1) / Double(blocks)
                }
            }
        }
        return result
    }

    /// Backward of the training forward (spec §1): per set, with `g = γ_c·dy`,
    /// `dx = rstd·(g − mean_I(g) − x̂·mean_I(g·x̂))`; `dγ_c = Σ dy·x̂`, `dβ_c = Σ dy` over every element of `c`.
    public static func backward(
        _ x: RefTensor, dy: RefTensor, sets kind: RefSets, gamma: [Double]?,
        epsilon: Double = 1e-5
    ) -> RefBackward {
        let fwd = forward(x, sets: kind, gamma: gamma, beta: nil, epsilon: epsilon)
        let sets = kind.members(batch: x.batch, channels: x.channels)
        var dx = RefTensor(batch: x.batch, channels: x.channels, positions: x.positions)
        for (s, set) in sets.enumerated() {
            let m = Double(set.count * x.positions)
            var meanG = 0.0, meanGX = 0.0
            for (n, c) in set {
                for p in 0..<x.positions {
                    let g = (gamma?[c] ?? 1) * dy[n, c, p]
                    meanG += g
                    meanGX += g * fwd.xhat[n, c, p]
                }
            }
            meanG /= m
            meanGX /= m
            for (n, c) in set {
                for p in 0..<x.positions {
                    let g = (gamma?[c] ?? 1) * dy[n, c, p]
                    dx[n, c, p] = fwd.rstd[s] * (g - meanG - fwd.xhat[n, c, p] * meanGX)
                }
            }
        }
        var dgamma = [Double](repeating: 0, count: x.channels), dbeta = dgamma
        var dgammaTerms = dgamma, dbetaTerms = dgamma
        for n in 0..<x.batch {
            for c in 0..<x.channels {
                for p in 0..<x.positions {
                    dgamma[c] += dy[n, c, p] * fwd.xhat[n, c, p]
                    dbeta[c] += dy[n, c, p]
                    dgammaTerms[c] += abs(dy[n, c, p] * fwd.xhat[n, c, p])
                    dbetaTerms[c] += abs(dy[n, c, p])
                }
            }
        }
        return RefBackward(
            dx: dx, dgamma: dgamma, dbeta: dbeta, dgammaTerms: dgammaTerms, dbetaTerms: dbetaTerms)
    }

    /// BN eval (spec §2): `y = γ_c·(x − running_mean_c)/sqrt(running_var_c + ε) + β_c`.
    public static func batchNormEval(
        _ x: RefTensor, runningMean: [Double], runningVariance: [Double],
        gamma: [Double]?, beta: [Double]?, epsilon: Double = 1e-5
    ) -> RefTensor {
        var y = RefTensor(batch: x.batch, channels: x.channels, positions: x.positions)
        for n in 0..<x.batch {
            for c in 0..<x.channels {
                for p in 0..<x.positions {
                    let h = (x[n, c, p] - runningMean[c]) / (runningVariance[c] + epsilon).squareRoot()
                    y[n, c, p] = (gamma?[c] ?? 1) * h + (beta?[c] ?? 0)
                }
            }
        }
        return y
    }

    /// BN running statistics (spec §2, PyTorch convention): `r ← (1−m)·r + m·batch`, the stored variance
    /// unbiased, updated once per forward with the ghost batches' average (NormKit's documented choice).
    public static func updateRunning(
        mean: inout [Double], variance: inout [Double], with fwd: RefForward,
        momentum: Double
    ) {
        for c in 0..<mean.count {
            mean[c] = (1 - momentum) * mean[c] + momentum * fwd.channelMean[c]
            variance[c] = (1 - momentum) * variance[c] + momentum * fwd.channelUnbiasedVariance[c]
        }
    }

    /// `L = Σ w·y` of the reference forward.
    public static func loss(_ x: RefTensor, w: RefTensor, sets: RefSets, gamma: [Double]?, beta: [Double]?) -> Double {
        let y = forward(x, sets: sets, gamma: gamma, beta: beta).y
        var total = 0.0
        for i in 0..<y.count { total += w.data[i] * y.data[i] }
        return total
    }

    /// Central finite differences of `L = Σ w·y` with respect to `x`, `γ` and `β` (γ, β default to 1, 0).
    public static func finiteDifferences(
        _ x: RefTensor, w: RefTensor, sets: RefSets, gamma: [Double]?, beta: [Double]?,
        step h: Double = 1e-5
    ) -> RefBackward {
        var dx = RefTensor(batch: x.batch, channels: x.channels, positions: x.positions)
        dx.data = centralDifferences(at: x.data, h: h) { data in
            var moved = x
            moved.data = data
            return loss(moved, w: w, sets: sets, gamma: gamma, beta: beta)
        }
        let g0 = gamma ?? [Double](repeating: 1, count: x.channels)
        let b0 = beta ?? [Double](repeating: 0, count: x.channels)
        let dgamma = centralDifferences(at: g0, h: h) { loss(x, w: w, sets: sets, gamma: $0, beta: b0) }
        let dbeta = centralDifferences(at: b0, h: h) { loss(x, w: w, sets: sets, gamma: g0, beta: $0) }
        return RefBackward(dx: dx, dgamma: dgamma, dbeta: dbeta)
    }
}

// MARK: - Comparison helpers

/// `max|a − b| / max|reference|` (0 when both are all zero).
public func relativeError<A: Collection, B: Collection>(_ a: A, _ reference: B) -> Double
where A.Element: BinaryFloatingPoint, B.Element: BinaryFloatingPoint {
    precondition(a.count == reference.count, "relativeError: \(a.count) vs \(reference.count) values")
    var diff = 0.0, scale = 0.0
    for (u, v) in zip(a, reference) {
        let du = Double(u), dv = Double(v)
        if !(du - dv).magnitude.isFinite || (du - dv).isNaN { return .infinity }
        diff = max(diff, (du - dv).magnitude)
        scale = max(scale, dv.magnitude)
    }
    if diff == 0 { return 0 }
    return diff / scale
}

/// The error of the sums `values` (dγ, dβ) against the reference's, over the magnitude of their terms:
/// `max|a − r| / max Σ|terms|` (``VariantTestKit/relErr(_:_:scale:)`` with that scale). A sum whose terms cancel (a γ
/// gradient over 2^18 floats of uncorrelated `dy`: about √n against Σ|terms| about n) keeps an error of float rounding
/// relative to its terms, not to its small value, so ``relativeError(_:_:)`` of it means nothing; this measures what
/// float arithmetic can bound.
public func sumError(_ values: [Float], _ reference: [Double], terms: [Double]) -> Double {
    precondition(terms.count == reference.count, "sumError: \(terms.count) terms for \(reference.count) sums")
    return VariantTestKit.relErr(values.map(Double.init), reference, scale: terms.max() ?? 0)
}

/// The relative error of a tensor (any layout) against a logical reference.
public func relativeError(_ t: Tensor, _ reference: RefTensor) -> Double {
    relativeError(RefTensor(t).data, reference.data)
}

/// Tracks the worst relative error seen under a label, for the final report lines.
public final class ErrorLog {
    public private(set) var worst: [String: Double] = [:]
    public init() {}
    public func record(_ label: String, _ error: Double) {
        worst[label] = max(worst[label] ?? 0, error)
    }
    public func report(_ title: String) {
        if worst.isEmpty { return }
        let lines = worst.keys.sorted().map { String(format: "  %-28@ %.3e", $0 as NSString, worst[$0]!) }
        print("\(title):\n" + lines.joined(separator: "\n"))
    }
}

// MARK: - Random inputs

extension SeededGenerator {
    public mutating func doubles(_ count: Int, in range: ClosedRange<Double>) -> [Double] {
        (0..<count).map { _ in Double(Float(Double.random(in: range, using: &self))) }
    }
}

/// A random tensor (standard normal times `scale`, plus `offset`) in `layout`.
public func randomTensor(
    _ shape: [Int], layout: TensorLayout = .channelsFirst, scale: Float = 1, offset: Float = 0,
    using rng: inout SeededGenerator
) -> Tensor {
    Tensor.randomNormal(shape: shape, layout: layout, mean: offset, standardDeviation: scale, using: &rng)
}

/// Sets a layer's `γ`, `β` to random non-trivial values (γ in 0.5…1.5 with random sign, β in −1…1) and returns
/// them as Doubles (nil, nil for a layer without affine).
@discardableResult
public func randomizeAffine(_ layer: NormalizationLayer, using rng: inout SeededGenerator) -> ([Double]?, [Double]?) {
    guard let w = layer.weight, let b = layer.bias else { return (nil, nil) }
    let gamma = (0..<layer.channels).map { _ -> Double in
        let m = Double(Float(Double.random(in: 0.5...1.5, using: &rng)))
        return Bool.random(using: &rng) ? m : -m
    }
    let beta = rng.doubles(layer.channels, in: -1...1)
    w.value = gamma.map { Float($0) }
    b.value = beta.map { Float($0) }
    return (gamma, beta)
}

// MARK: - Shared checks

/// The default tolerance of every comparison against the float64 reference (max-abs error over max-abs value).
public let referenceTolerance = 1e-5

/// A random spatial shape of `rank` dimensions, biased towards odd sizes so SIMD tails (positions not a
/// multiple of 16) are always exercised.
public func randomSpatial(rank: Int, using rng: inout SeededGenerator) -> [Int] {
    let sizes = [1, 2, 3, 4, 5, 7, 9, 11, 17]
    return (0..<rank).map { _ in sizes.randomElement(using: &rng)! }
}

/// Runs one training forward and backward of `layer` on `x`, `dy` and compares `y`, `dx`, `dγ`, `dβ` with the
/// float64 reference for `sets`. Returns the reference forward (for running-statistics checks).
@discardableResult
public func checkTrainingStep(
    _ layer: NormalizationLayer, sets: RefSets, x: Tensor, dy: Tensor,
    gamma: [Double]?, beta: [Double]?, label: String, log: ErrorLog,
    tolerance: Double = referenceTolerance,
    file: StaticString = #filePath, line: UInt = #line
) throws -> RefForward {
    let rx = RefTensor(x), rdy = RefTensor(dy)
    let ref = Float64Reference.forward(rx, sets: sets, gamma: gamma, beta: beta)
    let y = try layer.forward(x, training: true)
    XCTAssertEqual(y.shape, x.shape, file: file, line: line)
    XCTAssertEqual(y.layout, x.layout, file: file, line: line)
    let ey = relativeError(y, ref.y)
    log.record("y", ey)
    XCTAssertLessThanOrEqual(ey, tolerance, "y \(label)", file: file, line: line)

    let refBack = Float64Reference.backward(rx, dy: rdy, sets: sets, gamma: gamma)
    let grads = try layer.backward(dy)
    XCTAssertEqual(grads.input.shape, x.shape, file: file, line: line)
    XCTAssertEqual(grads.input.layout, x.layout, file: file, line: line)
    let edx = relativeError(grads.input, refBack.dx)
    log.record("dx", edx)
    XCTAssertLessThanOrEqual(edx, tolerance, "dx \(label)", file: file, line: line)
    if gamma != nil {
        guard let dg = grads.weight, let db = grads.bias else {
            XCTFail("missing affine gradients \(label)", file: file, line: line)
            return ref
        }
        // dγ and dβ are sums over every element of a channel: each passes relative to its value, or, where its
        // terms cancel, relative to their magnitude at a tenth of the tolerance (``sumError(_:_:terms:)``; the
        // kernels measure about 1e-9 of Σ|terms| on cancelling sums of 2^18 terms, and float rounding, about 1e-7,
        // on sums that do not cancel, where the terms' magnitude is the value's and the check is the stricter one).
        for (name, key, values, reference, terms) in [
            ("dγ", "dgamma", dg, refBack.dgamma, refBack.dgammaTerms),
            ("dβ", "dbeta", db, refBack.dbeta, refBack.dbetaTerms),
        ] {
            let relative = relativeError(values, reference), ofTerms = sumError(values, reference, terms: terms)
            log.record(key, relative)
            log.record("\(key) of Σ|terms|", ofTerms)
            XCTAssert(
                relative <= tolerance || ofTerms <= tolerance / 10,
                "\(name) \(label): relative error \(relative), of Σ|terms| \(ofTerms)", file: file, line: line)
        }
    } else {
        XCTAssertNil(grads.weight, file: file, line: line)
        XCTAssertNil(grads.bias, file: file, line: line)
    }
    return ref
}

/// Compares the Swift backward of `layer` (with `dy = w`) with central finite differences of `L = Σ w·y` on
/// the float64 reference forward, and checks the reference's own analytic backward against the same FD.
public func checkFiniteDifferences(
    _ layer: NormalizationLayer, sets: RefSets, x: Tensor, w: Tensor,
    gamma: [Double]?, beta: [Double]?, label: String, log: ErrorLog,
    tolerance: Double = referenceTolerance,
    file: StaticString = #filePath, line: UInt = #line
) throws {
    let rx = RefTensor(x), rw = RefTensor(w)
    let fd = Float64Reference.finiteDifferences(rx, w: rw, sets: sets, gamma: gamma, beta: beta)
    let analytic = Float64Reference.backward(rx, dy: rw, sets: sets, gamma: gamma)
    // The reference itself: float64 analytic vs float64 FD (truncation O(h²) and rounding O(1e-16/h)).
    let refErr = max(
        relativeError(analytic.dx.data, fd.dx.data), relativeError(analytic.dgamma, fd.dgamma),
        relativeError(analytic.dbeta, fd.dbeta))
    log.record("reference vs FD", refErr)
    XCTAssertLessThanOrEqual(refErr, 1e-8, "reference backward vs FD \(label)", file: file, line: line)

    _ = try layer.forward(x, training: true)
    let grads = try layer.backward(w)
    let edx = relativeError(grads.input, fd.dx)
    log.record("dx vs FD", edx)
    XCTAssertLessThanOrEqual(edx, tolerance, "dx vs FD \(label)", file: file, line: line)
    if gamma != nil {
        let edg = relativeError(grads.weight!, fd.dgamma), edb = relativeError(grads.bias!, fd.dbeta)
        log.record("dgamma vs FD", edg)
        log.record("dbeta vs FD", edb)
        XCTAssertLessThanOrEqual(edg, tolerance, "dγ vs FD \(label)", file: file, line: line)
        XCTAssertLessThanOrEqual(edb, tolerance, "dβ vs FD \(label)", file: file, line: line)
    }
}
