import NormKitTraining
import XCTest

/// Models, layers and parameters print like PyTorch's `repr`.
final class ModulePrintingTests: XCTestCase {
    func resnet8(_ settings: NormalizationSettings) throws -> ResNet {
        var generator = SeededGenerator(seed: 1)
        return try ResNet(depth: 8, normalization: settings, generator: &generator)
    }

    func assertLines(_ text: String, contain expected: [String], _ what: String, line: UInt = #line) {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        for wanted in expected {
            XCTAssertTrue(lines.contains(wanted), "\(what): no line '\(wanted)' in\n\(text)", line: line)
        }
    }

    func testResNet8PrintsLikePyTorch() throws {
        let text = "\(try resnet8(NormalizationSettings(kind: .gn)))"
        let lines = text.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.first, "ResNet(")
        XCTAssertEqual(lines.last, ")")
        assertLines(
            text,
            contain: [
                "  (conv1): Conv2d(1, 16, kernel_size=3, stride=1, padding=1, bias=False)",
                "  (norm1): GroupNorm(16, 16)",
                "  (layer1): Sequential(",
                "    (0): BasicBlock(",
                "      (conv1): Conv2d(16, 16, kernel_size=3, stride=1, padding=1, bias=False)",
                "  (layer2): Sequential(",
                "      (conv1): Conv2d(16, 32, kernel_size=3, stride=2, padding=1, bias=False)",
                "      (norm1): GroupNorm(16, 32)",
                "      (conv2): Conv2d(32, 32, kernel_size=3, stride=1, padding=1, bias=False)",
                "      (norm2): GroupNorm(16, 32)",
                "      (downsample): Sequential(",
                "        (0): Conv2d(16, 32, kernel_size=1, stride=2, bias=False)",
                "        (1): GroupNorm(16, 32)",
                "      )",
                "    )",
                "  )",
                "  (layer3): Sequential(",
                "        (1): GroupNorm(16, 64)",
                "  (fc): Linear(in_features=64, out_features=10, bias=True)",
            ], "GN ResNet-8")
        XCTAssertEqual(lines.filter { $0.hasSuffix("): BasicBlock(") }.count, 3)
        XCTAssertEqual(lines.filter { $0.contains("(downsample): Sequential(") }.count, 2)
        XCTAssertEqual(lines.count, 37, text)
    }

    func testEveryNormalizationPrintsItsKindAndSettings() throws {
        let cases: [(NormalizationSettings, [String])] = [
            (
                NormalizationSettings(kind: .bn, normBatch: 2),
                ["  (norm1): BatchNorm2d(16, momentum=0.1, norm_batch=2)"]
            ),
            (NormalizationSettings(kind: .bn), ["        (1): BatchNorm2d(64, momentum=0.1)"]),
            (NormalizationSettings(kind: .ln), ["      (norm2): GroupNorm(1, 32)"]),
            (NormalizationSettings(kind: .in), ["      (norm2): GroupNorm(32, 32)"]),
            (NormalizationSettings(kind: .gn, groupSize: 2), ["  (norm1): GroupNorm(8, 16)"]),
            (NormalizationSettings(kind: .brn), ["  (norm1): BatchRenorm2d(16, momentum=0.01)"]),
            (
                NormalizationSettings(kind: .mabn, mabnBufferSize: 8),
                [
                    "  (conv1): CenConv2d(1, 16, kernel_size=3, stride=1, padding=1, bias=False)",
                    "  (norm1): MovingAverageBatchNorm2d(16, buffer_size=8, momentum=0.98)",
                ]
            ),
            (NormalizationSettings(kind: .frozenBN), ["  (norm1): FrozenBatchNorm2d(16)"]),
            (NormalizationSettings(kind: .none), ["  (norm1): Identity()", "        (1): Identity()"]),
        ]
        for (settings, expected) in cases {
            assertLines("\(try resnet8(settings))", contain: expected, "\(settings.kind)")
        }
    }

    func testLayersVGGAndParametersPrint() throws {
        var generator = SeededGenerator(seed: 2)
        let vgg = try VGG(normalization: NormalizationSettings(kind: .none), generator: &generator)
        assertLines(
            "\(vgg)",
            contain: [
                "VGG(", "  (features): Sequential(", "    (0): Conv2d(1, 16, kernel_size=3, stride=1, padding=1)",
                "    (1): Identity()", "    (2): ReLU()", "    (6): MaxPool2d(kernel_size=2, stride=2)",
                "    (19): ReLU()", "  )", "  (fc): Linear(in_features=64, out_features=10, bias=True)", ")",
            ], "VGG")
        XCTAssertEqual("\(GlobalAveragePool())", "GlobalAveragePool()")
        XCTAssertEqual("\(Sequential())", "Sequential")
        let conv = try Conv2d(inChannels: 3, outChannels: 8, kernelSize: 5, stride: 2, generator: &generator)
        XCTAssertEqual("\(conv)", "Conv2d(3, 8, kernel_size=5, stride=2, bias=False)")
        XCTAssertEqual("\(conv.weight)", "Parameter(weight, shape=[8, 3, 5, 5], requires_grad=True)")
        let frozen = NormalizationModule(try FrozenBatchNorm(channels: 4))
        XCTAssertEqual("\(frozen.ownParameters[0])", "Parameter(weight, shape=[4], requires_grad=False)")
        let noAffine = NormalizationModule(try GroupNorm(channels: 4, groups: 2, epsilon: 1e-3, affine: false))
        XCTAssertEqual("\(noAffine)", "GroupNorm(2, 4, eps=0.001, affine=False)")
        let mabn = try ResNet(depth: 8, normalization: NormalizationSettings(kind: .mabn), generator: &generator)
        let named = mabn.namedParameters().map { "\($0.name): \($0.parameter)" }
        XCTAssertEqual(named.first, "conv1.weight: Parameter(weight, shape=[16, 1, 3, 3], requires_grad=True)")
        XCTAssertEqual(named.last, "fc.bias: Parameter(bias, shape=[10], requires_grad=True)")
    }
}
