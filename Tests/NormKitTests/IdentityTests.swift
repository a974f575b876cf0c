import NormKit
import XCTest
import _NormKitTestSupport

/// Identities that must hold between layers and layouts (spec §0–2):
/// GN(G=1) == LN, GN(G=C) == IN, BN(normBatch = N) == BN, NHWC == NCHW up to transposition, and a few
/// cross-layer reshapes (IN == BN over the (n, c) planes, GN == LN over the groups).
final class IdentityTests: XCTestCase {
    private let log = ErrorLog()

    override func tearDown() {
        log.report("\(name) worst relative differences")
        super.tearDown()
    }

    /// Shapes of every spatial rank, odd sizes included.
    private let shapes: [[Int]] = [[4, 6], [3, 6, 7], [2, 6, 5, 5], [2, 6, 3, 2, 5], [2, 12, 7, 7]]

    /// Runs forward (train and eval) and backward of both layers on the same inputs and returns both results.
    private func run(
        _ a: NormalizationLayer, _ b: NormalizationLayer, x: Tensor, dy: Tensor
    )
        throws -> [(String, [Float], [Float])]
    {
        for (pa, pb) in zip(a.parameters, b.parameters) { pb.value = pa.value }
        let ya = try a.forward(x, training: true), yb = try b.forward(x, training: true)
        let ga = try a.backward(dy), gb = try b.backward(dy)
        let ea = try a.forward(x, training: false), eb = try b.forward(x, training: false)
        var out: [(String, [Float], [Float])] = [
            ("y", ya.values, yb.values), ("dx", ga.input.values, gb.input.values),
            ("eval y", ea.values, eb.values),
        ]
        if let wa = ga.weight, let wb = gb.weight { out.append(("dγ", wa, wb)) }
        if let ba = ga.bias, let bb = gb.bias { out.append(("dβ", ba, bb)) }
        return out
    }

    private func assertIdentical(
        _ a: NormalizationLayer, _ b: NormalizationLayer, x: Tensor, dy: Tensor,
        _ label: String, file: StaticString = #filePath, line: UInt = #line
    ) throws {
        for (what, u, v) in try run(a, b, x: x, dy: dy) {
            XCTAssertEqual(u, v, "\(what) \(label)", file: file, line: line)
        }
    }

    func testGroupNormWithOneGroupIsLayerNorm() throws {
        var rng = SeededGenerator(seed: 0x1D01)
        for shape in shapes {
            for layout in TensorLayout.allCases {
                let x = randomTensor(shape, scale: 2, offset: 1, using: &rng).converted(to: layout)
                let dy = randomTensor(shape, using: &rng).converted(to: layout)
                let c = shape[1]
                let ln = try GroupNorm.layerNorm(channels: c)
                randomizeAffine(ln, using: &rng)
                try assertIdentical(ln, try GroupNorm(channels: c, groups: 1), x: x, dy: dy, "G=1 \(shape) \(layout)")
                try assertIdentical(
                    ln, try GroupNorm(channels: c, groupSize: c), x: x, dy: dy, "groupSize=C \(shape) \(layout)")
                // LN's definition (spec §1): one statistic per sample over all channels and positions.
                let ref = Float64Reference.forward(RefTensor(x), sets: .groupNorm(groups: 1), gamma: nil, beta: nil)
                let y = try GroupNorm.layerNorm(channels: c, affine: false).forward(x, training: false)
                XCTAssertLessThanOrEqual(relativeError(y, ref.y), referenceTolerance)
                XCTAssertEqual(ref.mean.count, shape[0])
            }
        }
    }

    func testGroupNormWithOneChannelPerGroupIsInstanceNorm() throws {
        var rng = SeededGenerator(seed: 0x1D02)
        for shape in shapes where shape.count > 2 {
            for layout in TensorLayout.allCases {
                let x = randomTensor(shape, scale: 2, offset: 1, using: &rng).converted(to: layout)
                let dy = randomTensor(shape, using: &rng).converted(to: layout)
                let c = shape[1]
                let inorm = try GroupNorm.instanceNorm(channels: c)
                randomizeAffine(inorm, using: &rng)
                try assertIdentical(
                    inorm, try GroupNorm(channels: c, groups: c), x: x, dy: dy, "G=C \(shape) \(layout)")
                try assertIdentical(
                    inorm, try GroupNorm(channels: c, groupSize: 1), x: x, dy: dy, "groupSize=1 \(shape) \(layout)")
            }
        }
    }

    func testBatchNormWithNormBatchEqualToBatchIsPlainBatchNorm() throws {
        var rng = SeededGenerator(seed: 0x1D03)
        for shape in shapes {
            for layout in TensorLayout.allCases {
                let c = shape[1]
                let plain = try BatchNorm(channels: c), ghost = try BatchNorm(channels: c, normBatch: shape[0])
                randomizeAffine(plain, using: &rng)
                for step in 0..<3 {
                    let x = randomTensor(shape, scale: 2, offset: 1, using: &rng).converted(to: layout)
                    let dy = randomTensor(shape, using: &rng).converted(to: layout)
                    try assertIdentical(plain, ghost, x: x, dy: dy, "normBatch=N \(shape) \(layout) step \(step)")
                    XCTAssertEqual(plain.runningMean, ghost.runningMean)
                    XCTAssertEqual(plain.runningVariance, ghost.runningVariance)
                }
                XCTAssertEqual(plain.batchesTracked, ghost.batchesTracked)
            }
        }
    }

    /// Channels-last and channels-first give the same logical results (forward train/eval, dx, dγ, dβ, running
    /// statistics) for every layer; the summation order differs, so the check is to 1e-6 relative.
    func testChannelsLastEqualsChannelsFirstUpToTransposition() throws {
        var rng = SeededGenerator(seed: 0x1D04)
        for shape in shapes + [[2, 64, 28, 28]] {
            let c = shape[1]
            let x = randomTensor(shape, scale: 2, offset: 1, using: &rng)
            let dy = randomTensor(shape, using: &rng)
            let xl = x.converted(to: .channelsLast), dyl = dy.converted(to: .channelsLast)
            XCTAssertEqual(xl.layout, .channelsLast)
            XCTAssertEqual(xl.converted(to: .channelsFirst).values, x.values, "conversion round trip")
            var makers: [(String, () throws -> NormalizationLayer)] = [
                ("BN", { try BatchNorm(channels: c) }),
                ("BN ghost", { try BatchNorm(channels: c, normBatch: 1) }),
                // G = C/2 (2 channels per group), or 2 groups for (N, C) inputs so every set has ≥ 3 values.
                ("GN", { try GroupNorm(channels: c, groups: shape.count == 2 ? 2 : c / 2) }),
                ("LN", { try GroupNorm.layerNorm(channels: c) }),
                ("BN no affine", { try BatchNorm(channels: c, affine: false) }),
                ("GN no affine", { try GroupNorm(channels: c, groups: 2, affine: false) }),
            ]
            if shape.count > 2 { makers.append(("IN", { try GroupNorm.instanceNorm(channels: c) })) }
            if shape.count == 2 { makers.removeAll { $0.0 == "BN ghost" } }  // one value per ghost batch
            for (label, make) in makers {
                let first = try make(), last = try make()
                randomizeAffine(first, using: &rng)
                for (pf, pl) in zip(first.parameters, last.parameters) { pl.value = pf.value }
                let yf = try first.forward(x, training: true), yl = try last.forward(xl, training: true)
                XCTAssertEqual(yl.layout, .channelsLast)
                let gf = try first.backward(dy), gl = try last.backward(dyl)
                XCTAssertEqual(gl.input.layout, .channelsLast)
                let ef = try first.forward(x, training: false), el = try last.forward(xl, training: false)
                var pairs: [(String, [Float], [Float])] = [
                    ("y", yl.converted(to: .channelsFirst).values, yf.values),
                    ("dx", gl.input.converted(to: .channelsFirst).values, gf.input.values),
                    ("eval y", el.converted(to: .channelsFirst).values, ef.values),
                ]
                if let wf = gf.weight { pairs.append(("dγ", gl.weight!, wf)) }
                if let bf = gf.bias { pairs.append(("dβ", gl.bias!, bf)) }
                if let bf = first as? BatchNorm, let bl = last as? BatchNorm {
                    pairs.append(("running_mean", bl.runningMean, bf.runningMean))
                    pairs.append(("running_var", bl.runningVariance, bf.runningVariance))
                }
                for (what, got, want) in pairs {
                    let e = relativeError(got, want)
                    log.record("\(what)", e)
                    XCTAssertLessThanOrEqual(e, 1e-6, "\(what) \(label) \(shape)")
                }
            }
        }
    }

    /// Cross-layer reshapes: IN on (N, C, M) is BN (train) on (1, N·C, M); GN with G groups on (N, C, M) is LN
    /// on (N·G, C/G, M). In channels-first memory these are the same buffers, so the results agree to rounding.
    func testCrossLayerReshapes() throws {
        var rng = SeededGenerator(seed: 0x1D05)
        for shape in [[3, 4, 7], [2, 6, 5, 3], [2, 4, 3, 3, 2]] {
            let n = shape[0], c = shape[1], spatial = Array(shape.dropFirst(2))
            let x = randomTensor(shape, scale: 2, offset: 1, using: &rng)
            let dy = randomTensor(shape, using: &rng)

            let inorm = try GroupNorm.instanceNorm(channels: c, affine: false)
            let bn = try BatchNorm(channels: n * c, affine: false)
            let flatShape = [1, n * c] + spatial
            let yIN = try inorm.forward(x, training: true)
            let yBN = try bn.forward(try Tensor(shape: flatShape, values: x.values), training: true)
            XCTAssertLessThanOrEqual(relativeError(yBN.values, yIN.values), 1e-6, "IN vs BN \(shape)")
            let dIN = try inorm.backward(dy).input
            let dBN = try bn.backward(try Tensor(shape: flatShape, values: dy.values)).input
            XCTAssertLessThanOrEqual(relativeError(dBN.values, dIN.values), 1e-6, "IN vs BN dx \(shape)")

            let groups = 2
            let gn = try GroupNorm(channels: c, groups: groups, affine: false)
            let ln = try GroupNorm.layerNorm(channels: c / groups, affine: false)
            let groupShape = [n * groups, c / groups] + spatial
            let yGN = try gn.forward(x, training: true)
            let yLN = try ln.forward(try Tensor(shape: groupShape, values: x.values), training: true)
            XCTAssertLessThanOrEqual(relativeError(yLN.values, yGN.values), 1e-6, "GN vs LN \(shape)")
            let dGN = try gn.backward(dy).input
            let dLN = try ln.backward(try Tensor(shape: groupShape, values: dy.values)).input
            XCTAssertLessThanOrEqual(relativeError(dLN.values, dGN.values), 1e-6, "GN vs LN dx \(shape)")
            log.record(
                "reshape identities",
                max(
                    relativeError(yBN.values, yIN.values), relativeError(dBN.values, dIN.values),
                    relativeError(yLN.values, yGN.values), relativeError(dLN.values, dGN.values)))
        }
    }
}
