import Foundation
import FuzzSupport
import NormKit
import NormKitTraining

/// Fuzzes the configuration a checkpoint carries: `TrainingCheckpoint.readModel` on a model file whose
/// `__metadata__` holds the input, then `NormalizationSettings(c, totalSteps:)` and the normalization layers
/// it builds, as `normkit train --resume` and `normkit eval` do.
///
/// Input: the `configuration` metadata value (JSON of `TrainingConfiguration`), optionally followed by a NUL
/// byte and the `torch_model_arguments` value (JSON object of strings; readModel takes GN's groups from it for
/// old files).
///
/// The settings are built only for configurations that pass the checks `Trainer.init` makes (batch ≥ 1,
/// epochs ≥ 1, a normalization batch that divides the batch, not both groups and groupSize, at least one
/// batch of training images) plus one cheap check Trainer does not make: steps per epoch × epochs must not
/// overflow. These checks live here, not in NormKit's sources (the lead owns Training/). With
/// `NORMKIT_FUZZ_UNGUARDED=1` the harness instead calls `NormalizationSettings(c, totalSteps: 1)` on the decoded
/// configuration with no check at all, exactly as `normkit eval` does, and computes Trainer's step count with
/// its unchecked multiplication: see docs/FUZZING.md, "Findings".
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzCheckpointConfiguration(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = Fuzz.bytes(data, size)
    let split = input.firstIndex(of: 0) ?? input.endIndex
    var metadata = ["format": TrainingCheckpoint.format, "step": "7",
                    "configuration": String(decoding: input[..<split], as: UTF8.self)]
    if split < input.endIndex {
        metadata["torch_model_arguments"] = String(decoding: input[(split + 1)...], as: UTF8.self)
    }
    let url = Fuzz.scratchDirectory.appendingPathComponent(TrainingCheckpoint.modelFileName)
    do {
        Fuzz.writeFile(try SafeTensors.encode(["fc.bias": .float32(shape: [1], values: [0])], metadata: metadata),
                       to: url)
    } catch {
        Fuzz.check(false, "cannot write the scratch model file: \(error)")
    }
    let configuration: TrainingConfiguration
    do {
        let model = try TrainingCheckpoint.readModel(at: url)
        Fuzz.check(model.step == 7, "step \(model.step), expected 7")
        configuration = model.configuration
    } catch {
        Fuzz.log("rejected: \(error)")
        return 0
    }
    Fuzz.log("decoded: \(configuration)")
    if unguarded {
        _ = try? NormalizationSettings(configuration, totalSteps: 1)  // what `normkit eval` does
        let c = configuration.resolved
        if c.batch >= 1, c.epochs >= 1 {
            let stepsPerEpoch = trainingImages(c) / c.batch
            keep(stepsPerEpoch * c.epochs)  // what `Trainer.init` does
        }
        return 0
    }
    let c = configuration.resolved
    guard c.batch >= 1, c.epochs >= 1 else { return 0 }
    if let nb = c.normBatch, nb < 1 || c.batch % nb != 0 { return 0 }
    if c.groups != nil && c.groupSize != nil { return 0 }
    guard trainingImages(c) >= c.batch else { return 0 }
    let (totalSteps, overflow) = (trainingImages(c) / c.batch).multipliedReportingOverflow(by: c.epochs)
    guard !overflow else { return 0 }
    let settings: NormalizationSettings
    do {
        settings = try NormalizationSettings(c, totalSteps: totalSteps)
    } catch {
        Fuzz.log("settings refused: \(error)")
        return 0
    }
    Fuzz.check(settings.mabnBufferSize >= 1, "MABN buffer size \(settings.mabnBufferSize)")
    for channels in [16, 32, 64] {  // ResNet stage widths
        do {
            _ = try settings.makeLayer(channels: channels)
        } catch {
            Fuzz.log("layer over \(channels) channels refused: \(error)")
        }
    }
    return 0
}

/// Uses `value` so that the optimizer keeps the computation (and its overflow check) that produced it.
@inline(never)
private func keep(_ value: Int) {
    if value == 0x5EED_F00D { Fuzz.log("") }
}

private let unguarded = ProcessInfo.processInfo.environment["NORMKIT_FUZZ_UNGUARDED"] == "1"

/// The training images a run of `c` uses: Fashion-MNIST's 60,000 or fewer with `trainLimit` (the data loader
/// refuses a limit below 1).
private func trainingImages(_ c: TrainingConfiguration) -> Int {
    min(max(c.trainLimit ?? SweepPlan.fullTrainImages, 1), SweepPlan.fullTrainImages)
}
