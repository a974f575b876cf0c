import CNormKitKernels
import NormKit
import XCTest
import _NormKitTestSupport

/// The two implementations of the row primitives side by side: the portable Swift SIMD kernels and the native
/// AVX2/AVX-512 ones. Both must match the float64 reference, and each other to float rounding.
final class KernelPathTests: XCTestCase {
    override func tearDown() {
        KernelDispatch.limitNativeInstructionSet(to: .avx512)
        KernelDispatch.useNativeKernels = Self.defaultNative
        super.tearDown()
    }

    static let defaultNative = KernelDispatch.useNativeKernels

    /// Shapes that cover every spatial rank, SIMD tails, the multi-threaded paths, the set kernels' batches of 16
    /// sets or rows with a remainder (40 and 20 channels), rows longer than one unrolled step (130) and sets larger
    /// than one float block (4·784, 64·49).
    let shapes: [[Int]] = [
        [5, 12], [3, 12, 7], [2, 16, 9, 11], [2, 8, 3, 5, 7], [4, 32, 28, 28], [2, 64, 7, 7],
        [3, 40, 5, 5], [4, 20, 130], [2, 2048, 3],
    ]

    func layers(channels c: Int) throws -> [(NormalizationLayer, RefSets)] {
        [
            (try GroupNorm(channels: c, groups: 4), .groupNorm(groups: 4)),
            (try GroupNorm(channels: c, groupSize: 2), .groupNorm(groups: c / 2)),
            (try GroupNorm.layerNorm(channels: c), .groupNorm(groups: 1)),
            (try BatchNorm(channels: c), .batchNorm(normBatch: 0)),
            (try BatchNorm(channels: c, normBatch: 1), .batchNorm(normBatch: 1)),
        ]
    }

    func testPortableKernelsMatchTheFloat64Reference() throws {
        KernelDispatch.useNativeKernels = false
        try checkAgainstReference(label: "portable")
    }

    func testNativeKernelsMatchTheFloat64Reference() throws {
        try XCTSkipIf(KernelDispatch.nativeInstructionSet == "none", "this CPU has neither AVX2 nor AVX-512")
        KernelDispatch.useNativeKernels = true
        try checkAgainstReference(label: "native \(KernelDispatch.nativeInstructionSet)")
    }

    func testAVX2KernelsMatchTheFloat64Reference() throws {
        try XCTSkipIf(KernelDispatch.instructionSet < .avx2, "this CPU has no AVX2")
        KernelDispatch.useNativeKernels = true
        XCTAssertEqual(KernelDispatch.limitNativeInstructionSet(to: .avx2), .avx2)
        try checkAgainstReference(label: "native avx2")
    }

    func checkAgainstReference(label: String) throws {
        var rng = SeededGenerator(seed: 77)
        let log = ErrorLog()
        for shape in shapes {
            for layout in TensorLayout.allCases {
                for (layer, sets) in try layers(channels: shape[1]) {
                    if case .batchNorm(let k) = sets, k == 1, shape.count == 2 { continue }  // one value per set
                    // Two values per set: x̂ = ±1 and dx cancels to rounding noise, so a relative error means nothing.
                    if case .groupNorm(let groups) = sets, groups == shape[1] / 2, shape.count == 2 { continue }
                    let resolved: RefSets
                    if case .batchNorm(let k) = sets {
                        resolved = .batchNorm(normBatch: k == 0 ? shape[0] : k)
                    } else {
                        resolved = sets
                    }
                    let (gamma, beta) = randomizeAffine(layer, using: &rng)
                    let x = randomTensor(shape, layout: layout, scale: 2, offset: 3, using: &rng)
                    let dy = randomTensor(shape, layout: layout, using: &rng)
                    try checkTrainingStep(
                        layer, sets: resolved, x: x, dy: dy, gamma: gamma, beta: beta,
                        label: "\(label) \(layer.name) \(shape) \(layout)", log: log)
                }
            }
        }
        log.report("KernelPathTests \(label)")
    }

    func testNativeAndPortableAgree() throws {
        try XCTSkipIf(KernelDispatch.nativeInstructionSet == "none", "this CPU has neither AVX2 nor AVX-512")
        var rng = SeededGenerator(seed: 5)
        let widest = KernelDispatch.instructionSet
        for shape in shapes {
            let x = randomTensor(shape, scale: 3, offset: -2, using: &rng)
            let dy = randomTensor(shape, using: &rng)
            var outputs: [(String, [Float])] = []
            for (label, native, limit) in [
                ("portable", false, widest), ("avx2", true, .avx2), ("widest", true, widest),
            ] {
                KernelDispatch.useNativeKernels = native
                KernelDispatch.limitNativeInstructionSet(to: limit)
                var values: [Float] = []
                for layer in [
                    try MovingAverageBatchNorm(channels: shape[1], bufferSize: 2) as NormalizationLayer,
                    try GroupNorm(channels: shape[1], groups: 2), try BatchNorm(channels: shape[1]),
                ] {
                    values += try layer.forward(x, training: true).values + layer.backward(dy).input.values
                }
                outputs.append((label, values))
            }
            let scale = outputs[0].1.map(abs).max() ?? 1
            for (label, values) in outputs.dropFirst() {
                let difference = zip(outputs[0].1, values).map { abs($0 - $1) }.max() ?? 0
                XCTAssertLessThan(Double(difference / scale), 1e-6, "\(label) vs portable, \(shape)")
            }
        }
    }

    /// The coefficients stage of wide sets (`nk_channel_coefficients`) is the layers' double arithmetic bit for bit on
    /// every instruction set: `a = γ·factor`, `scale = Float(a)`, `shift = Float(β − a·δ)`, each in double and rounded
    /// to float once (float arithmetic, a wrong lane or a lost tail would differ). Counts cover whole vectors and
    /// tails.
    func testChannelCoefficientsKernelIsTheDoubleArithmeticBitForBit() throws {
        try XCTSkipIf(KernelDispatch.nativeInstructionSet == "none", "this CPU has neither AVX2 nor AVX-512")
        var rng = SeededGenerator(seed: 2026)
        let widest = KernelDispatch.instructionSet
        var mismatches = 0, compared = 0
        for limit in [KernelDispatch.InstructionSet.avx2, widest] {
            KernelDispatch.useNativeKernels = true
            KernelDispatch.limitNativeInstructionSet(to: limit)
            for count in [1, 3, 8, 15, 16, 17, 31, 64, 100, 512] {
                let gamma = (0..<count).map { _ in Float.random(in: -3...3, using: &rng) }
                let beta = (0..<count).map { _ in Float.random(in: -3...3, using: &rng) }
                let factor = Double.random(in: 0.01...50, using: &rng)
                let residual = Double.random(in: -1e-3...1e-3, using: &rng)
                var scale = [Float](repeating: .nan, count: count), shift = scale
                nk_channel_coefficients(&scale, &shift, gamma, beta, count, factor, residual)
                for c in 0..<count {
                    let a = Double(gamma[c]) * factor
                    compared += 1
                    if scale[c].bitPattern != Float(a).bitPattern
                        || shift[c].bitPattern != Float(Double(beta[c]) - a * residual).bitPattern
                    {
                        mismatches += 1
                    }
                }
            }
        }
        XCTAssertEqual(mismatches, 0, "\(mismatches) of \(compared) coefficients differ from the double arithmetic")
    }
}
