import Foundation

/// `normkit export --fold`: a ResNet with every normalization folded into the convolution before it
/// (``fold(_:)``), written as a safetensors file that loads with `strict=True` into
/// `torch_models.ResNet(depth, "folded", in_channels=…, num_classes=…, width=…)` (the arguments are in the
/// header's `torch_model_arguments`) and into NormKit's ``FoldedResNet`` (``read(at:)``).
///
/// The ResNet comes from a training checkpoint on disk (``export(checkpoint:to:overwrite:)``, what the CLI runs)
/// or from a model trained in code (``write(_:data:to:overwrite:)``); both write the same tensors for the same weights.
///
/// The header's `__metadata__`: `format` (`normkit-folded-1`), `norm` (`folded`), `depth`,
/// `torch_model_arguments` (JSON of strings), and for an export of a checkpoint also `source_checkpoint` (the
/// path given), `source_norm`, `source_step`, `source_configuration` (the checkpoint's training configuration,
/// JSON) and, when the checkpoint has it, `data` (the data record with the pixel statistics inputs must be
/// standardised with); a model written from code has `source_norm` only (it has no step, configuration or data
/// record). It has no `configuration` key, so ``TrainingCheckpoint/read(at:)`` does not mistake it for a training
/// checkpoint.
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
    ///   checkpoint, ``FoldingError/nonFiniteWeight(path:channel:)`` or
    ///   ``FoldingError/nonFiniteResult(path:channel:reason:)`` for a diverged model, the checkpoint's read errors,
    ///   or the write's ``AtomicFileError`` (without `overwrite`,
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
        try checkOutput(output, overwrite: overwrite)
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
        let (folded, difference) = try foldVerified(model, source: checkpoint.path)
        try SafeTensors.write(
            folded.stateDict(), metadata: try metadata(folded, source: file, checkpoint: checkpoint),
            to: output, replacing: overwrite)
        return Result(model: folded, source: file, probeRelativeDifference: difference)
    }

    /// Folds a ResNet trained in code, checks the folded model against it in eval mode on a probe batch, and
    /// writes it to `output` atomically: the tensors ``export(checkpoint:to:overwrite:)`` writes for a checkpoint
    /// of the same weights, with the metadata keys a model has (`format`, `norm`, `depth`,
    /// `torch_model_arguments`, `source_norm`; see ``FoldedExport``) and, when given, `data`: the record of the
    /// data it was trained on, whose pixel statistics inputs must be standardised with (a ``Trainer``'s
    /// ``Trainer/dataRecord``, or ``DataRecord/init(train:test:)``). ``read(at:)`` reads it back.
    ///
    /// `model` is not changed, whatever its mode: it is folded from its state (running statistics, not the batch's)
    /// and the probe runs on a copy, so a pending backward of `model` is kept.
    ///
    /// ```swift
    /// // model: a ResNet with BN, BRN, MABN, frozen BN or no normalization, after training
    /// try FoldedExport.write(
    ///     model, data: DataRecord(train: train, test: test),
    ///     to: directory.appendingPathComponent("folded.safetensors"))
    /// ```
    ///
    /// - Parameters:
    ///   - model: a ResNet with BN, BRN, MABN, frozen BN or no normalization.
    ///   - data: what `model` was trained on, written as the `data` metadata (as a checkpoint's export writes its
    ///     record); nil writes none, and a reader then has no pixel statistics to standardise inputs with.
    ///   - output: the folded model's safetensors file.
    ///   - overwrite: replace an existing `output` (only a regular file; when `output` is a symbolic link, the
    ///     file it points to is replaced and the link stays). By default an existing file is kept and the call
    ///     throws.
    /// - Returns: the folded model that was written.
    /// - Throws: ``FoldingError/outputIsDirectory(path:)``, ``FoldingError/outputExists(path:)`` and
    ///   ``AtomicFileError/notARegularFile(path:resolvedPath:kind:)`` for an `output` that is a pipe or a device
    ///   (before folding anything); ``FoldingError/notFoldable(path:layer:reason:)`` for GN, LN or IN layers;
    ///   ``FoldingError/nonFiniteWeight(path:channel:)`` for a weight or bias of the model that is not finite;
    ///   ``FoldingError/nonFiniteResult(path:channel:reason:)`` for running statistics that fold to a non-finite
    ///   value; ``FoldingError/unsupported(_:)`` when the model's eval logits are not finite or the folded model's
    ///   differ from them by more than ``verificationTolerance``; the write's ``AtomicFileError`` (without
    ///   `overwrite`, ``AtomicFileError/destinationExists(path:)`` for a file created at `output` meanwhile: it is
    ///   kept). Nothing is written when it throws.
    @discardableResult
    public static func write(
        _ model: ResNet, data: DataRecord? = nil, to output: URL, overwrite: Bool = false
    ) throws -> FoldedResNet {
        try checkOutput(output, overwrite: overwrite)
        // A copy built as the checkpoint export builds its model, so both probe (and fold) the same thing.
        var generator = SeededGenerator(seed: 0)
        let copy = try ResNet(
            depth: model.depth, normalization: model.normalization, inChannels: model.conv1.inChannels,
            classes: model.fc.outFeatures, width: model.conv1.outChannels, generator: &generator)
        try copy.loadStateDict(model.stateDict())
        let (folded, _) = try foldVerified(copy, source: model.name)
        var metadata = try metadata(folded)
        metadata["source_norm"] = model.normalization.kind.rawValue
        if let data { metadata["data"] = try dataMetadata(data) }
        try SafeTensors.write(folded.stateDict(), metadata: metadata, to: output, replacing: overwrite)
        return folded
    }

    /// Refuses an `output` that is a directory, a pipe or a device, or an existing file without `overwrite`.
    private static func checkOutput(_ output: URL, overwrite: Bool) throws {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: output.path, isDirectory: &isDirectory), isDirectory.boolValue {
            throw FoldingError.outputIsDirectory(path: output.path)
        }
        // A pipe, a device or a directory is never replaced, even with `overwrite` (a link: its target is written).
        _ = try AtomicFile.resolvedDestination(of: output)
        if FileManager.default.fileExists(atPath: output.path), !overwrite {
            throw FoldingError.outputExists(path: output.path)
        }
    }

    /// Folds `model` (switched to eval mode) and checks the folded model's eval logits against its own on the probe
    /// batch; `source` names the model in errors. Returns the folded model and the probe's relative difference.
    private static func foldVerified(_ model: ResNet, source: String) throws -> (FoldedResNet, Double) {
        model.eval()
        let folded = try fold(model)
        let difference = try probeDifference(model, folded)
        guard difference.isFinite else {
            throw FoldingError.unsupported(
                "\(source): the model's eval logits are not finite (its weights or "
                    + "running statistics are not: a diverged run?); nothing was written")
        }
        guard difference <= verificationTolerance else {
            throw FoldingError.unsupported(
                "\(source): the folded model's logits differ from the unfolded model's by "
                    + "\(difference) (relative) on a probe batch, above \(verificationTolerance); nothing was written")
        }
        return (folded, difference)
    }

    /// The `__metadata__` of a folded export (see ``FoldedExport``).
    public static func metadata(
        _ folded: FoldedResNet, source: TrainingCheckpoint.ModelFile,
        checkpoint: URL
    ) throws -> [String: String] {
        var metadata = try metadata(folded)
        let encoder = JSONEncoder.normKit()
        metadata["source_checkpoint"] = checkpoint.path
        metadata["source_norm"] = source.configuration.norm.rawValue
        metadata["source_step"] = "\(source.step)"
        metadata["source_configuration"] = String(decoding: try encoder.encode(source.configuration), as: UTF8.self)
        if let data = source.data { metadata["data"] = try dataMetadata(data) }
        return metadata
    }

    /// The `data` metadata value: the record as JSON.
    private static func dataMetadata(_ data: DataRecord) throws -> String {
        String(decoding: try JSONEncoder.normKit().encode(data), as: UTF8.self)
    }

    /// The metadata every folded export has: `format`, `norm`, `depth`, `torch_model_arguments`.
    private static func metadata(_ folded: FoldedResNet) throws -> [String: String] {
        let torch = [
            "depth": "\(folded.depth)", "norm": "folded", "in_channels": "\(folded.conv1.inChannels)",
            "num_classes": "\(folded.fc.outFeatures)", "width": "\(folded.width)",
        ]
        return [
            "format": format,
            "norm": "folded",
            "depth": "\(folded.depth)",
            "torch_model_arguments": String(decoding: try JSONEncoder.normKit().encode(torch), as: UTF8.self),
        ]
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
