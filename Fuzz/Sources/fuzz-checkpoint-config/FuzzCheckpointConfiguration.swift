import Foundation
import FuzzSupport
import NormKit
import NormKitExperiments
import NormKitTraining

/// Fuzzes the configuration a checkpoint carries, through the code `normkit eval`, `train --resume` and
/// `Trainer.init` run, with no guard of the harness's own: `TrainingCheckpoint.readModel` on a model file whose
/// `__metadata__` holds the input (decoding, legacy fields, `TrainingConfiguration.validate(source:)` with its
/// caps, the tensor-name check), then, for every configuration `TrainingConfiguration.decode(json:source:)`
/// accepts (the same validation), the trainer's step count, `NormalizationSettings(c, totalSteps:)` and the
/// normalization layers it builds for ResNet's stage widths.
///
/// Input: the `configuration` metadata value (JSON of `TrainingConfiguration`), optionally followed by a NUL
/// byte and the `torch_model_arguments` value (JSON object of strings; readModel takes GN's groups and MABN's
/// buffer from it for old files).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzCheckpointConfiguration(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = Fuzz.bytes(data, size)
    let split = input.firstIndex(of: 0) ?? input.endIndex
    let json = String(decoding: input[..<split], as: UTF8.self)
    var metadata = ["format": TrainingCheckpoint.format, "step": "7", "configuration": json]
    if split < input.endIndex {
        metadata["torch_model_arguments"] = String(decoding: input[(split + 1)...], as: UTF8.self)
    }
    let url = Fuzz.scratchDirectory.appendingPathComponent(TrainingCheckpoint.modelFileName)
    do {
        Fuzz.writeFile(
            try SafeTensors.encode(["fc.bias": .float32(shape: [1], values: [0])], metadata: metadata),
            to: url)
    } catch {
        Fuzz.check(false, "cannot write the scratch model file: \(error)")
    }
    do {
        let model = try TrainingCheckpoint.readModel(at: url)
        Fuzz.check(model.step == 7, "step \(model.step), expected 7")
    } catch {
        Fuzz.log("rejected: \(error)")
    }
    let c: TrainingConfiguration
    do {
        c = try TrainingConfiguration.decode(json: json, source: "fuzz").resolved
    } catch {
        return 0
    }
    // As Trainer.init: the step count and the settings, unguarded (validation must have made them safe).
    let totalSteps = trainingImages(c) / c.batch * c.epochs
    keep(totalSteps)
    let settings: NormalizationSettings
    do {
        settings = try NormalizationSettings(c, totalSteps: max(totalSteps, 1))
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

/// The training images a run of `c` uses: Fashion-MNIST's 60,000 or fewer with `trainLimit` (the data loader
/// refuses a limit below 1).
private func trainingImages(_ c: TrainingConfiguration) -> Int {
    min(max(c.trainLimit ?? SweepPlan.fullTrainImages, 1), SweepPlan.fullTrainImages)
}
