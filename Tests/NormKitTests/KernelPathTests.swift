import XCTest
import NormKit

/// The two implementations of the row primitives side by side: the portable Swift SIMD kernels and the native
/// AVX2/AVX-512 ones. Both must match the float64 reference, and each other to float rounding.
final class KernelPathTests: XCTestCase {
    override func tearDown() {
        KernelDispatch.useNativeKernels = Self.defaultNative
        super.tearDown()
    }

    static let defaultNative = KernelDispatch.useNativeKernels

    /// Shapes that cover every spatial rank, SIMD tails and the multi-threaded paths.
    let shapes: [[Int]] = [[5, 12], [3, 12, 7], [2, 16, 9, 11], [2, 8, 3, 5, 7], [4, 32, 28, 28], [2, 64, 7, 7]]

    func layers(channels c: Int) throws -> [(NormalizationLayer, RefSets)] {
        [(try GroupNorm(channels: c, groups: 4), .groupNorm(groups: 4)),
         (try GroupNorm.layerNorm(channels: c), .groupNorm(groups: 1)),
         (try BatchNorm(channels: c), .batchNorm(normBatch: 0)),
         (try BatchNorm(channels: c, normBatch: 1), .batchNorm(normBatch: 1))]
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

    func checkAgainstReference(label: String) throws {
        var rng = SeededGenerator(seed: 77)
        let log = ErrorLog()
        for shape in shapes {
            for layout in TensorLayout.allCases {
                for (layer, sets) in try layers(channels: shape[1]) {
                    if case .batchNorm(let k) = sets, k == 1, shape.count == 2 { continue }  // one value per set
                    let resolved: RefSets
                    if case .batchNorm(let k) = sets { resolved = .batchNorm(normBatch: k == 0 ? shape[0] : k) } else {
                        resolved = sets
                    }
                    let (gamma, beta) = randomizeAffine(layer, using: &rng)
                    let x = randomTensor(shape, layout: layout, scale: 2, offset: 3, using: &rng)
                    let dy = randomTensor(shape, layout: layout, using: &rng)
                    try checkTrainingStep(layer, sets: resolved, x: x, dy: dy, gamma: gamma, beta: beta,
                                          label: "\(label) \(layer.name) \(shape) \(layout)", log: log)
                }
            }
        }
        log.report("KernelPathTests \(label)")
    }

    func testNativeAndPortableAgree() throws {
        try XCTSkipIf(KernelDispatch.nativeInstructionSet == "none", "this CPU has neither AVX2 nor AVX-512")
        var rng = SeededGenerator(seed: 5)
        for shape in shapes {
            let x = randomTensor(shape, scale: 3, offset: -2, using: &rng)
            let dy = randomTensor(shape, using: &rng)
            var outputs: [[Float]] = []
            for native in [false, true] {
                KernelDispatch.useNativeKernels = native
                let layer = try MovingAverageBatchNorm(channels: shape[1], bufferSize: 2)
                let gn = try GroupNorm(channels: shape[1], groups: 2)
                let y = try layer.forward(x, training: true)
                let dx = try layer.backward(dy).input
                let z = try gn.forward(x, training: true)
                let dz = try gn.backward(dy).input
                outputs.append(y.values + dx.values + z.values + dz.values)
            }
            let scale = outputs[0].map(abs).max() ?? 1
            let difference = zip(outputs[0], outputs[1]).map { abs($0 - $1) }.max() ?? 0
            XCTAssertLessThan(Double(difference / scale), 1e-6, "\(shape)")
        }
    }
}
