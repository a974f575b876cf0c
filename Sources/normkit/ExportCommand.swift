import ArgumentParser
import Foundation
import NormKitTraining

/// `normkit export --fold`: writes a checkpoint's inference model with every normalization folded into the
/// convolution before it (convs with bias, no normalization layers), loadable with `strict=True` into
/// `torch_models.ResNet(depth, "folded")`.
struct ExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Write a checkpoint's folded inference model (BN, BRN, MABN, frozen BN or none; not GN/LN/IN).",
        discussion: """
            BN, BRN, MABN and frozen BN are a fixed per-channel affine at inference, so they fold into the \
            convolution before it (MABN's CenConv weights are centred first). GN, LN and IN normalize every \
            image with its own statistics and are refused. The output is a safetensors file that loads with \
            strict=True into torch_models.ResNet(depth, "folded", **torch_model_arguments) (the arguments are in \
            its metadata).
            """)

    @Flag(help: "Fold every normalization into the convolution before it (the only export format).")
    var fold = false

    @Option(help: "A model.safetensors written by normkit train (or its run directory).")
    var checkpoint: String

    @Option(help: "The safetensors file to write.")
    var out: String

    @Flag(
        help: """
            Replace --out if it exists (never the checkpoint itself; only a regular file, or the file a symbolic \
            link points to).
            """)
    var overwrite = false

    func validate() throws {
        guard fold else {
            throw ValidationError("pass --fold: the folded inference model is the only export format")
        }
        try validateNotEmpty(out, "--out", "the safetensors file to write")
    }

    func run() throws {
        let url = modelFile(checkpoint)
        let output = URL(fileURLWithPath: out)
        let result = try FoldedExport.export(checkpoint: url, to: output, overwrite: overwrite)
        let model = result.model
        print(
            "\(url.path): \(result.source.configuration.model) with \(result.source.configuration.norm.rawValue), "
                + "step \(result.source.step)")
        print(
            "wrote \(output.path): folded ResNet-\(model.depth), \(model.stateDict().count) tensors "
                + "(every conv with a bias, no normalization layers)")
        print(
            String(
                format: "check: eval logits of the folded vs the unfolded model on a probe batch differ by %.1e "
                    + "(max |diff| / max |logit|)", result.probeRelativeDifference))
        print(
            "PyTorch: torch_models.ResNet(\(model.depth), \"folded\", in_channels=\(model.conv1.inChannels), "
                + "num_classes=\(model.fc.outFeatures), width=\(model.width)).load_state_dict(load_file(path), strict=True)"
        )
    }
}
