import Foundation
import NormKitTraining
import XCTest
import _NormKitTestSupport

/// ``TrainingConfiguration/trainArguments`` (how a sweep starts a cell in another process, under `mpirun`): the
/// flags make `normkit train` record exactly the configuration they came from, for every field.
final class TrainArgumentsTests: XCTestCase {
    func testFlagsRecordTheConfigurationTheyCameFrom() throws {
        let fixture = try CLIFixture.shared()
        let root = try makeTemporaryDirectory("normkit-args")

        var common = TrainingConfiguration()
        common.epochs = 2; common.batch = 8; common.learningRate = 0.03; common.momentum = 0.8
        common.weightDecay = 1e-4; common.decayAllParameters = true; common.schedule = "step"
        common.milestones = [1]; common.warmupFraction = 0.25; common.seed = 7; common.trainLimit = 32
        common.testLimit = 16; common.augment = false; common.threads = 1
        var gn = common
        gn.norm = .gn; gn.groupSize = 2
        var mabn = common
        mabn.norm = .mabn; mabn.normBatch = 4; mabn.mabnBuffer = 3; mabn.mabnWarmup = 2
        mabn.mabnOldValueWeight = 0.9; mabn.mabnWithout = ["fwd-sma", "renorm"]
        var brn = common
        brn.norm = .brn; brn.brnMomentum = 0.05; brn.brnRMax = 2.5; brn.brnDMax = 4; brn.brnSchedule = "paper"
        var bn = common
        bn.norm = .bn; bn.normBatch = 2; bn.bnMomentum = 0.2; bn.model = "vgg"

        for (index, configuration) in [gn, mabn, brn, bn].enumerated() {
            let out = root.appendingPathComponent("run\(index)")
            let result = try CLI.run(
                ["train"] + configuration.trainArguments + ["--data", fixture.data.path, "--out", out.path],
                in: root)
            XCTAssertEqual(result.status, 0, result.summary + result.stderr)
            guard result.status == 0 else { continue }
            let summary = try JSONDecoder().decode(
                RunSummary.self, from: Data(contentsOf: out.appendingPathComponent("summary.json")))
            XCTAssertEqual(summary.configuration, configuration, configuration.trainArguments.joined(separator: " "))
            XCTAssertNil(summary.workers, "one process")
        }
    }

    /// ``TrainingConfiguration/flagNames`` (how `train --resume` names the flags to drop) has the flag of every
    /// field a configuration records, and it is the flag ``TrainingConfiguration/trainArguments`` sets it with.
    func testEveryRecordedFieldHasItsFlag() throws {
        var c = TrainingConfiguration()
        c.norm = .mabn; c.groups = 4; c.groupSize = 2; c.normBatch = 4; c.learningRate = 0.1
        c.decayAllParameters = true; c.schedule = "step"; c.milestones = [1]; c.trainLimit = 32; c.testLimit = 16
        c.augment = false; c.mabnBuffer = 3; c.mabnWarmup = 2; c.mabnOldValueWeight = 0.9; c.mabnWithout = ["form"]
        c.bnMomentum = 0.2; c.brnMomentum = 0.05; c.brnRMax = 2.5; c.brnDMax = 4; c.brnSchedule = "paper"
        let fields = try XCTUnwrap(
            JSONSerialization.jsonObject(with: JSONEncoder().encode(c)) as? [String: Any]
        ).keys
        XCTAssertEqual(Set(fields), Set(TrainingConfiguration.flagNames.keys), "a field without a flag, or the reverse")
        let arguments = Set(c.trainArguments)
        for field in fields {
            let flag = try XCTUnwrap(TrainingConfiguration.flagNames[field], field)
            XCTAssertTrue(arguments.contains(flag), "\(field): trainArguments sets it with \(flag)")
        }
        XCTAssertEqual(TrainingConfiguration.flagNames["learningRate"], "--lr")
    }
}
