import Foundation

/// `normkit export --fold`: a training checkpoint's ResNet with every normalization folded into the convolution
/// before it (``fold(_:)``), written as a safetensors file that loads with `strict=True` into
/// `torch_models.ResNet(depth, "folded", in_channels=…, num_classes=…, width=…)` (the arguments are in the
/// header's `torch_model_arguments`) and into NormKit's ``FoldedResNet`` (``read(at:)``).
///
/// The header's `__metadata__`: `format` (`normkit-folded-1`), `norm` (`folded`), `depth`,
/// `torch_model_arguments` (JSON of strings), `source_checkpoint` (the path given), `source_norm`,
/// `source_step`, `source_configuration` (the checkpoint's training configuration, JSON) and, when the checkpoint
/// has it, `data` (the data record with the pixel statistics inputs must be standardised with). It has no
/// `configuration` key, so ``TrainingCheckpoint/read(at:)`` does not mistake it for a training checkpoint.
public enum FoldedExport {
    /// The `format` metadata value of a folded export.
    public static let format = "normkit-folded-1"
    /// Largest relative difference between the folded and the unfolded model's eval logits on the export's
    /// probe batch before the export refuses to write (float rounding is orders of magnitude below it).
    public static let verificationTolerance = 1e-3

    /// What an export did.
    public struct Result {
        /// The folded model that was written.
        public var model: FoldedResNet
        /// The checkpoint it came from.
        public var source: TrainingCheckpoint.ModelFile
        /// `max |folded − unfolded| / max |unfolded|` of the eval logits on a probe batch of random images.
        public var probeRelativeDifference: Double
    }

    /// Reads the checkpoint (validated by ``TrainingCheckpoint/read(at:)``), folds its model, checks the folded
    /// model against the unfolded one in eval mode on a probe batch, and writes it to `output` atomically.
    ///
    /// - Parameters:
    ///   - checkpoint: the `model.safetensors` of a run trained with BN, BRN, MABN, frozen BN or no normalization.
    ///   - output: the folded model's safetensors file.
    ///   - overwrite: replace an existing `output` (never the checkpoint itself, and only a regular file; when
    ///     `output` is a symbolic link, the file it points to is replaced and the link stays).
    /// - Throws: ``FoldingError/outputIsDirectory(path:)``, ``FoldingError/outputExists(path:)`` and
    ///   ``AtomicFileError/notARegularFile(path:resolvedPath:kind:)`` for an `output` that is a pipe or a device
    ///   (before reading anything), ``FoldingError/notFoldable(path:layer:reason:)``
    ///   for a GN/LN/IN checkpoint, ``FoldingError/unsupported(_:)`` for a VGG checkpoint or `output` equal to the
    ///   checkpoint, the checkpoint's read errors, or the write's ``AtomicFileError`` (without `overwrite`,
    ///   ``AtomicFileError/destinationExists(path:)`` for a file created at `output` while the export ran: it is
    ///   kept). Nothing is written when it throws.
    @discardableResult
    public static func export(checkpoint: URL, to output: URL, overwrite: Bool) throws -> Result {
        if checkpoint.standardizedFileURL.resolvingSymlinksInPath()
            == output.standardizedFileURL.resolvingSymlinksInPath()
        {
            throw FoldingError.unsupported(
                "--out \(output.path) is the checkpoint itself; write the folded model to another file")
        }
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: output.path, isDirectory: &isDirectory), isDirectory.boolValue {
            throw FoldingError.outputIsDirectory(path: output.path)
        }
        // A pipe, a device or a directory is never replaced, even with `overwrite` (a link: its target is written).
        _ = try AtomicFile.resolvedDestination(of: output)
        if FileManager.default.fileExists(atPath: output.path), !overwrite {
            throw FoldingError.outputExists(path: output.path)
        }
        let file = try TrainingCheckpoint.read(at: checkpoint)
        let configuration = file.configuration
        if let reason = configuration.norm.foldingRefusal {
            throw FoldingError.notFoldable(
                path: checkpoint.path, layer: "\(configuration.model)'s \(configuration.norm.rawValue) layers",
                reason: reason)
        }
        guard let depth = configuration.resNetDepth else {
            throw FoldingError.unsupported(
                "\(checkpoint.path): \(configuration.model) has no folded reference model; "
                    + "only ResNet checkpoints (resnet8, resnet20, …) can be exported folded")
        }
        let conv1 = try shape(of: "conv1.weight", rank: 4, in: file.tensors, path: checkpoint.path)
        let fc = try shape(of: "fc.weight", rank: 2, in: file.tensors, path: checkpoint.path)
        try checkHoldsWeights(
            of: depth, width: conv1[0], inChannels: conv1[1], classes: fc[0], in: file.tensors, path: checkpoint.path)
        var generator = SeededGenerator(seed: configuration.seed)
        let model = try ResNet(
            depth: depth, normalization: try NormalizationSettings(configuration, totalSteps: 1),
            inChannels: conv1[1], classes: fc[0], width: conv1[0], generator: &generator)
        try model.loadStateDict(file.tensors)
        model.eval()
        let folded = try fold(model)
        let difference = try probeDifference(model, folded)
        guard difference.isFinite else {
            throw FoldingError.unsupported(
                "\(checkpoint.path): the model's eval logits are not finite (its weights or "
                    + "running statistics are not: a diverged run?); nothing was written")
        }
        guard difference <= verificationTolerance else {
            throw FoldingError.unsupported(
                "\(checkpoint.path): the folded model's logits differ from the checkpoint's by "
                    + "\(difference) (relative) on a probe batch, above \(verificationTolerance); nothing was written")
        }
        try SafeTensors.write(
            folded.stateDict(), metadata: try metadata(folded, source: file, checkpoint: checkpoint),
            to: output, replacing: overwrite)
        return Result(model: folded, source: file, probeRelativeDifference: difference)
    }

    /// The `__metadata__` of a folded export (see ``FoldedExport``).
    public static func metadata(
        _ folded: FoldedResNet, source: TrainingCheckpoint.ModelFile,
        checkpoint: URL
    ) throws -> [String: String] {
        let encoder = JSONEncoder.normKit()
        let torch = [
            "depth": "\(folded.depth)", "norm": "folded", "in_channels": "\(folded.conv1.inChannels)",
            "num_classes": "\(folded.fc.outFeatures)", "width": "\(folded.width)",
        ]
        var metadata = [
            "format": format,
            "norm": "folded",
            "depth": "\(folded.depth)",
            "torch_model_arguments": String(decoding: try encoder.encode(torch), as: UTF8.self),
            "source_checkpoint": checkpoint.path,
            "source_norm": source.configuration.norm.rawValue,
            "source_step": "\(source.step)",
            "source_configuration": String(decoding: try encoder.encode(source.configuration), as: UTF8.self),
        ]
        if let data = source.data {
            metadata["data"] = String(decoding: try encoder.encode(data), as: UTF8.self)
        }
        return metadata
    }

    /// Reads a folded export into a ``FoldedResNet`` (strict load) and its metadata.
    ///
    /// - Throws: ``SafeTensorsError`` for a damaged file; ``FoldingError/unsupported(_:)`` when it is not a
    ///   folded export or its depth or tensors do not agree; a load error for a tensor of the wrong shape.
    public static func read(at url: URL) throws -> (model: FoldedResNet, metadata: [String: String]) {
        let (tensors, metadata) = try SafeTensors.read(from: url)
        guard metadata["format"] == format else {
            throw FoldingError.unsupported(
                "\(url.path) is not a folded export: its metadata 'format' is "
                    + "\(metadata["format"].map { "'\($0)'" } ?? "missing"), expected '\(format)' (write one with normkit export --fold)"
            )
        }
        guard let depth = metadata["depth"].flatMap({ Int($0) }), depth >= 8, (depth - 2) % 6 == 0,
            depth <= ConfigurationLimits.maxResNetDepth
        else {
            throw FoldingError.unsupported(
                "\(url.path): metadata 'depth' is \(metadata["depth"].map { "'\($0)'" } ?? "missing"), "
                    + "expected 6n+2 between 8 and \(ConfigurationLimits.maxResNetDepth)")
        }
        let blocks = Set(
            tensors.keys.compactMap { name -> Int? in
                guard name.hasPrefix("layer1.") else { return nil }
                return Int(name.dropFirst("layer1.".count).prefix(while: { $0 != "." }))
            })
        guard blocks == Set(0..<(depth - 2) / 6) else {
            throw FoldingError.unsupported(
                "\(url.path): metadata says depth \(depth) (\((depth - 2) / 6) blocks per stage), "
                    + "the file's layer1 has \(blocks.count)")
        }
        let conv1 = try shape(of: "conv1.weight", rank: 4, in: tensors, path: url.path)
        let fc = try shape(of: "fc.weight", rank: 2, in: tensors, path: url.path)
        try checkHoldsWeights(
            of: depth, width: conv1[0], inChannels: conv1[1], classes: fc[0], in: tensors, path: url.path)
        var generator = SeededGenerator(seed: 0)
        let model = try FoldedResNet(
            depth: depth, inChannels: conv1[1], classes: fc[0], width: conv1[0],
            generator: &generator)
        try model.loadStateDict(tensors)
        model.eval()
        return (model, metadata)
    }

    /// The shape of `name`, which must have `rank` dimensions of at most ``ConfigurationLimits/maxGroups`` each.
    private static func shape(
        of name: String, rank: Int, in tensors: [String: StateTensor], path: String
    ) throws -> [Int] {
        guard let shape = tensors[name]?.shape else {
            throw CheckpointError.tensorsDoNotMatch(path: path, reason: "it has no '\(name)', which every ResNet has")
        }
        guard shape.count == rank, shape.allSatisfy({ (1...ConfigurationLimits.maxGroups).contains($0) }) else {
            throw CheckpointError.tensorsDoNotMatch(
                path: path,
                reason:
                    "'\(name)' has shape \(shape), expected \(rank) dimensions in 1...\(ConfigurationLimits.maxGroups)")
        }
        return shape
    }

    /// Refuses a file with fewer values than the convolution and classifier weights of the ResNet its `conv1` and
    /// `fc` describe, before that model is built: a file's shapes then cannot make NormKit allocate more than about
    /// the file's own size (a hostile `conv1` of 65,536 filters asks for a 150 GB model).
    private static func checkHoldsWeights(
        of depth: Int, width: Int, inChannels: Int, classes: Int, in tensors: [String: StateTensor], path: String
    ) throws {
        let held = tensors.values.reduce(0) { $0 + $1.shape.reduce(1, *) }
        let needed = weightCount(depth: depth, width: width, inChannels: inChannels, classes: classes)
        guard let needed, needed <= held else {
            throw CheckpointError.tensorsDoNotMatch(
                path: path,
                reason:
                    "its conv1 (\(width) filters, \(inChannels) input channel\(inChannels == 1 ? "" : "s")) and fc (\(classes) classes) describe a "
                    + "ResNet-\(depth) of \(needed.map { "\($0)" } ?? "more than Int.max") convolution and classifier "
                    + "weights; the file holds \(held) values")
        }
    }

    /// The convolution and classifier weights of a ResNet of `depth` (`6n+2`) at `width` (stages `w`, `2w`, `4w`),
    /// nil past `Int.max`: the stem's `9·in·w`, each block's two 3×3 convolutions, the two 1×1 downsamples, `fc`.
    static func weightCount(depth: Int, width w: Int, inChannels: Int, classes: Int) -> Int? {
        let n = (depth - 2) / 6
        var (total, cin, overflow) = (0, w, false)
        func add(_ terms: Int...) {
            var product = 1
            for t in terms {
                let (p, o) = product.multipliedReportingOverflow(by: t)
                product = p
                overflow = overflow || o
            }
            let (sum, o) = total.addingReportingOverflow(product)
            (total, overflow) = (sum, overflow || o)
        }
        add(9, inChannels, w)
        for (stage, cout) in [w, 2 * w, 4 * w].enumerated() {
            add(9, cin, cout)  // the first block's conv1
            if stage > 0 { add(cin, cout) }  // its 1×1 downsample
            add(2 * n - 1, 9, cout, cout)  // its conv2 and the other blocks' two
            cin = cout
        }
        add(classes, cin)
        return overflow ? nil : total
    }

    /// The relative difference of the two models' eval logits on 2 random 16×16 images.
    private static func probeDifference(_ model: ResNet, _ folded: FoldedResNet) throws -> Double {
        var generator = SeededGenerator(seed: 1)
        let x = Tensor.randomNormal(shape: [2, model.conv1.inChannels, 16, 16], using: &generator)
        let reference = try model.forward(x, training: false).values
        let candidate = try folded.forward(x, training: false).values
        var difference = 0.0, scale = 0.0
        for (a, b) in zip(candidate, reference) {
            difference = max(difference, abs(Double(a) - Double(b)))
            scale = max(scale, abs(Double(b)))
        }
        guard difference.isFinite, scale.isFinite else { return .infinity }
        return difference / (scale > 0 ? scale : 1)
    }
}
