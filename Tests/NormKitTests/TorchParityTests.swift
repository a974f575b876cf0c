import Foundation
import NormKit
import XCTest
import _NormKitTestSupport

/// NormKit against PyTorch on the fixtures written by `scripts/make_torch_fixtures.py` (torch.nn.BatchNorm1d
/// on (N, C) and (N, C, L), BatchNorm2d, BatchNorm3d, and torch.nn.GroupNorm with several G incl. G = 1 and
/// G = C), in both layouts.
///
/// Tolerance: `1e-5` relative (max-abs error over max-abs of PyTorch's value) for everything, running
/// statistics after 3 steps and the eval forward that uses them included: both sides compute in float32 with
/// float32 running buffers, so the only differences are rounding (observed errors are around 1e-7).
final class TorchParityTests: XCTestCase {
    private let log = ErrorLog()
    private let tolerance = 1e-5

    override func tearDown() {
        log.report("\(name) worst relative errors vs PyTorch")
        super.tearDown()
    }

    struct Meta: Decodable { var torch_version: String }

    struct BNStep: Decodable {
        var x, dy, y, dx, running_mean, running_var: [Float]
        var dweight, dbias: [Float]?
    }

    struct BNEval: Decodable { var x, y: [Float] }

    struct BNCase: Decodable {
        var name, module: String
        var shape: [Int]
        var eps, momentum: Float
        var affine: Bool
        var weight, bias: [Float]?
        var steps: [BNStep]
        var num_batches_tracked: Int64
        var eval: BNEval
    }

    struct GNCase: Decodable {
        var name: String
        var shape: [Int]
        var groups: Int
        var eps: Float
        var affine: Bool
        var weight, bias: [Float]?
        var x, dy, y, dx: [Float]
        var dweight, dbias: [Float]?
    }

    struct Fixture<Case: Decodable>: Decodable {
        var meta: Meta
        var cases: [Case]
    }

    private func load<Case: Decodable>(_ name: String, as: Case.Type) throws -> Fixture<Case> {
        let url = try XCTUnwrap(
            Bundle.module.url(forResource: name, withExtension: "json", subdirectory: "Fixtures"),
            "missing fixture \(name).json: run scripts/make_torch_fixtures.py")
        return try JSONDecoder().decode(Fixture<Case>.self, from: Data(contentsOf: url))
    }

    /// PyTorch values (contiguous NC* order) as a tensor in `layout`.
    private func tensor(_ shape: [Int], _ values: [Float], _ layout: TensorLayout) throws -> Tensor {
        try Tensor(shape: shape, values: values).converted(to: layout)
    }

    /// A tensor's values in PyTorch's contiguous order.
    private func torchOrder(_ t: Tensor) -> [Float] { t.converted(to: .channelsFirst).values }

    private func check(_ got: [Float], _ want: [Float], _ what: String, _ label: String) {
        let e = relativeError(got, want)
        log.record(what, e)
        XCTAssertLessThanOrEqual(e, tolerance, "\(what) \(label)")
    }

    func testBatchNormMatchesPyTorch() throws {
        let fixture = try load("torch_batchnorm", as: BNCase.self)
        XCTAssertGreaterThanOrEqual(fixture.cases.count, 5)
        let modules = Set(fixture.cases.map(\.module))
        XCTAssertEqual(modules, ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"])
        for c in fixture.cases {
            for layout in TensorLayout.allCases {
                let label = "\(c.name) \(layout)"
                let bn = try BatchNorm(channels: c.shape[1], epsilon: c.eps, momentum: c.momentum, affine: c.affine)
                if c.affine {
                    bn.weight!.value = try XCTUnwrap(c.weight)
                    bn.bias!.value = try XCTUnwrap(c.bias)
                }
                for (i, step) in c.steps.enumerated() {
                    let y = try bn.forward(try tensor(c.shape, step.x, layout), training: true)
                    check(torchOrder(y), step.y, "train y", "\(label) step \(i)")
                    check(bn.runningMean, step.running_mean, "running_mean", "\(label) step \(i)")
                    check(bn.runningVariance, step.running_var, "running_var", "\(label) step \(i)")
                    let grads = try bn.backward(try tensor(c.shape, step.dy, layout))
                    check(torchOrder(grads.input), step.dx, "dx", "\(label) step \(i)")
                    if c.affine {
                        check(try XCTUnwrap(grads.weight), try XCTUnwrap(step.dweight), "dweight", "\(label) step \(i)")
                        check(try XCTUnwrap(grads.bias), try XCTUnwrap(step.dbias), "dbias", "\(label) step \(i)")
                    } else {
                        XCTAssertNil(grads.weight)
                    }
                }
                XCTAssertEqual(bn.batchesTracked, c.num_batches_tracked, label)
                XCTAssertEqual(
                    bn.stateDict()["num_batches_tracked"], .int64(shape: [], values: [c.num_batches_tracked]))
                let y = try bn.forward(try tensor(c.shape, c.eval.x, layout), training: false)
                check(torchOrder(y), c.eval.y, "eval y", label)
            }
        }
    }

    func testGroupNormMatchesPyTorch() throws {
        let fixture = try load("torch_groupnorm", as: GNCase.self)
        let groups = Set(fixture.cases.map { $0.groups == 1 ? "G=1" : $0.groups == $0.shape[1] ? "G=C" : "other" })
        XCTAssertEqual(groups, ["G=1", "G=C", "other"], "fixtures must cover LN- and IN-equivalent GroupNorm")
        XCTAssertEqual(Set(fixture.cases.map { $0.shape.count - 2 }), [0, 1, 2, 3], "spatial ranks 0–3")
        for c in fixture.cases {
            for layout in TensorLayout.allCases {
                let label = "\(c.name) \(layout)"
                let channels = c.shape[1]
                // G = 1 and G = C go through the LN and IN factories, the rest through the G initializer.
                let gn: GroupNorm
                if c.groups == 1 {
                    gn = try GroupNorm.layerNorm(channels: channels, epsilon: c.eps, affine: c.affine)
                } else if c.groups == channels {
                    gn = try GroupNorm.instanceNorm(channels: channels, epsilon: c.eps, affine: c.affine)
                } else {
                    gn = try GroupNorm(channels: channels, groups: c.groups, epsilon: c.eps, affine: c.affine)
                }
                if c.affine {
                    gn.weight!.value = try XCTUnwrap(c.weight)
                    gn.bias!.value = try XCTUnwrap(c.bias)
                }
                let x = try tensor(c.shape, c.x, layout)
                let y = try gn.forward(x, training: true)
                check(torchOrder(y), c.y, "y", label)
                let grads = try gn.backward(try tensor(c.shape, c.dy, layout))
                check(torchOrder(grads.input), c.dx, "dx", label)
                if c.affine {
                    check(try XCTUnwrap(grads.weight), try XCTUnwrap(c.dweight), "dweight", label)
                    check(try XCTUnwrap(grads.bias), try XCTUnwrap(c.dbias), "dbias", label)
                }
                check(torchOrder(try gn.forward(x, training: false)), c.y, "eval y", label)
            }
        }
    }
}
