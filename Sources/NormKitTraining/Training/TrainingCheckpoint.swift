import Foundation

/// A run directory's checkpoint: the model in `model.safetensors` (PyTorch-loadable, `strict=True`, with the
/// configuration in `__metadata__`), and the optimizer and data-order state in
/// `training-state-<step>.safetensors`.
///
/// Writes are atomic and ordered so that a crash at any point leaves a loadable pair: the new training state
/// is written first under its own step-stamped name, then the model file is replaced (atomically), then older
/// training states are deleted. A loader reads the model's `step` and opens the matching training state.
public enum TrainingCheckpoint {
    /// The model file's name inside a run directory.
    public static let modelFileName = "model.safetensors"
    /// Version tag written into the metadata.
    public static let format = "normkit-checkpoint-1"

    /// What besides the model a resumed run needs.
    public struct TrainingState: Codable, Equatable, Sendable {
        /// SGD steps done.
        public var step: Int
        /// Where the batch iterator stands.
        public var position: BatchIterator.Position
        /// Finished epochs' metrics.
        public var history: [EpochMetrics]
        /// Running sums of the unfinished epoch: loss × images, correct predictions, images.
        public var epochLossSum: Double
        public var epochCorrect: Int
        public var epochImages: Int
        /// Wall seconds spent before this checkpoint (all sessions).
        public var elapsedSeconds: Double
        /// Wall seconds spent training (not evaluating) in the unfinished epoch.
        public var epochTrainingSeconds: Double
        /// Running-statistic updates the normalization layers skipped in the unfinished epoch (nil in states
        /// written before NormKit counted them).
        public var epochSkippedUpdates: Int?

        /// A training state.
        public init(
            step: Int, position: BatchIterator.Position, history: [EpochMetrics], epochLossSum: Double,
            epochCorrect: Int, epochImages: Int, elapsedSeconds: Double, epochTrainingSeconds: Double,
            epochSkippedUpdates: Int? = nil
        ) {
            self.step = step; self.position = position; self.history = history; self.epochLossSum = epochLossSum
            self.epochCorrect = epochCorrect; self.epochImages = epochImages; self.elapsedSeconds = elapsedSeconds
            self.epochTrainingSeconds = epochTrainingSeconds; self.epochSkippedUpdates = epochSkippedUpdates
        }
    }

    /// The `__metadata__` describing a model so it can be rebuilt from the file alone (in NormKit or with
    /// `torch_models.ResNet(depth, norm, groups=…, group_size=…, mabn_buffer=…)`).
    public static func metadata(
        configuration: TrainingConfiguration, normalization: NormalizationSettings,
        step: Int, data: DataRecord? = nil
    ) throws -> [String: String] {
        let encoder = JSONEncoder.normKit()
        // A SyncBN model is a BN model outside training (the same tensors; PyTorch's SyncBatchNorm is BatchNorm2d's
        // state dict too), and the reference models know it as "bn".
        var torch: [String: String] = [
            "norm": configuration.norm == .syncbn ? "bn" : configuration.norm.rawValue,
            "mabn_buffer": "\(normalization.mabnBufferSize)",
        ]
        if configuration.model.lowercased().hasPrefix("resnet") {
            torch["depth"] = String(configuration.model.dropFirst("resnet".count))
        }
        if let g = configuration.groupSize {
            torch["group_size"] = "\(g)"
        } else {
            torch["groups"] = "\(configuration.groups ?? NormalizationSettings.defaultGroups)"
        }
        var metadata = [
            "format": format,
            "configuration": String(decoding: try encoder.encode(configuration), as: UTF8.self),
            "torch_model_arguments": String(decoding: try encoder.encode(torch), as: UTF8.self),
            "step": "\(step)",
        ]
        if let data { metadata["data"] = String(decoding: try encoder.encode(data), as: UTF8.self) }
        return metadata
    }

    /// Writes the pair into `directory` (created if needed).
    public static func save(
        model: Model, optimizer: SGD, state: TrainingState, configuration: TrainingConfiguration,
        normalization: NormalizationSettings, data: DataRecord? = nil, to directory: URL
    ) throws {
        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        } catch {
            throw TrainingError.cannotWrite(
                path: directory.path, reason: ErrorText.describe(error, about: directory.path))
        }
        var tensors: [String: StateTensor] = [:]
        for (i, v) in optimizer.velocities.enumerated() {
            tensors[String(format: "velocity.%04d", i)] = .float32(shape: [v.count], values: v)
        }
        let encoder = JSONEncoder.normKit()
        let stateJSON = String(decoding: try encoder.encode(state), as: UTF8.self)
        try SafeTensors.write(
            tensors, metadata: ["format": format, "state": stateJSON, "step": "\(state.step)"],
            to: directory.appendingPathComponent(stateFileName(step: state.step)))
        try SafeTensors.write(
            model.stateDict(),
            metadata: try metadata(
                configuration: configuration, normalization: normalization,
                step: state.step, data: data),
            to: directory.appendingPathComponent(modelFileName))
        // Older training states of this run are no longer referenced by the model file. Only older ones: the
        // run holds the directory's lock, and a state of a later step is never this save's to delete.
        let files = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        for file in files {
            guard let step = stateStep(fileName: file), step < state.step else { continue }
            try? FileManager.default.removeItem(at: directory.appendingPathComponent(file))
        }
    }

    static func stateFileName(step: Int) -> String { "training-state-\(step).safetensors" }

    /// The step of a `training-state-<step>.safetensors` name, nil for any other name.
    static func stateStep(fileName: String) -> Int? {
        guard fileName.hasPrefix("training-state-"), fileName.hasSuffix(".safetensors") else { return nil }
        return Int(fileName.dropFirst("training-state-".count).dropLast(".safetensors".count))
    }

    /// Everything a model file holds: tensors, the configuration (validated), the step and the data record.
    ///
    /// A value of `Sendable` parts: a task may read a checkpoint and hand it to another.
    public struct ModelFile: Equatable, Sendable {
        public var tensors: [String: StateTensor]
        public var configuration: TrainingConfiguration
        public var step: Int
        /// What the model was trained on (nil in files written before NormKit recorded it).
        public var data: DataRecord?
    }

    /// Reads and checks a model file: the configuration passes ``TrainingConfiguration/validate(source:)`` (with
    /// its caps on depth, batch and MABN's buffer) and the tensor names agree with the configuration's model
    /// before anything is built.
    ///
    /// - Throws: ``SafeTensorsError`` for a damaged file (``DataError/fileTooLarge(path:size:limit:)`` for one
    ///   larger than this machine's memory), ``CheckpointError`` for missing or undecodable metadata or tensors of
    ///   another model, ``ConfigurationError`` for a value out of range.
    public static func read(at url: URL) throws -> ModelFile {
        let (tensors, metadata) = try SafeTensors.read(from: url)
        guard let json = metadata["configuration"] else { throw CheckpointError.notACheckpoint(path: url.path) }
        var configuration: TrainingConfiguration
        do {
            configuration = try decodeMetadata(TrainingConfiguration.self, from: json)
        } catch {
            throw CheckpointError.unreadableMetadata(
                path: url.path, field: "configuration",
                reason: ErrorText.describeDecoding(
                    error, of: TrainingConfiguration.self, from: Data(json.utf8), decoder: .normKit))
        }
        // Files from before the trainer recorded GN's default groups or MABN's buffer: the PyTorch arguments
        // hold the values used (MABN's buffer was batch / normBatch then, not today's default).
        if let torch = metadata["torch_model_arguments"],
            let arguments = try? JSONDecoder().decode([String: String].self, from: Data(torch.utf8))
        {
            if configuration.norm == .gn, configuration.groups == nil, configuration.groupSize == nil,
                let groups = arguments["groups"].flatMap({ Int($0) })
            {
                configuration.groups = groups
            }
            if configuration.norm == .mabn, configuration.mabnBuffer == nil,
                let buffer = arguments["mabn_buffer"].flatMap({ Int($0) })
            {
                configuration.mabnBuffer = buffer
            }
        }
        // The thread count is the reader's choice (eval and resume set their own): not checked here.
        var checked = configuration
        checked.threads = 1
        try checked.validate(source: url.path)
        guard let stepText = metadata["step"], let step = Int(stepText), step >= 0 else {
            throw CheckpointError.unreadableMetadata(
                path: url.path, field: "step",
                reason: "expected a step count ≥ 0, found \(metadata["step"].map { "'\($0)'" } ?? "nothing")")
        }
        var data: DataRecord?
        if let text = metadata["data"] {
            do { data = try decodeMetadata(DataRecord.self, from: text) } catch {
                throw CheckpointError.unreadableMetadata(
                    path: url.path, field: "data",
                    reason: ErrorText.describeDecoding(
                        error, of: DataRecord.self, from: Data(text.utf8), decoder: .normKit))
            }
        }
        try checkTensorNames(Array(tensors.keys), against: configuration, path: url.path)
        return ModelFile(tensors: tensors, configuration: configuration, step: step, data: data)
    }

    /// Builds the model `file`'s configuration describes and loads its tensors (strictly), for evaluation.
    ///
    /// - Throws: ``CheckpointError`` naming `url` when the configuration cannot build a model (GN groups that do
    ///   not divide a stage, …) or the tensors do not fit it.
    public static func buildModel(
        for file: ModelFile, at url: URL, inChannels: Int = 1, classes: Int = 10
    ) throws -> Model {
        let model: Model
        do {
            let normalization = try NormalizationSettings(file.configuration, totalSteps: 1)
            model = try makeModel(
                named: file.configuration.model, normalization: normalization,
                inChannels: inChannels, classes: classes, seed: file.configuration.seed)
        } catch {
            throw CheckpointError.unreadableMetadata(
                path: url.path, field: "configuration",
                reason: "it does not describe a buildable model: \(describe(error))")
        }
        do { try model.loadStateDict(file.tensors) } catch {
            throw CheckpointError.tensorsDoNotMatch(
                path: url.path,
                reason: "\(file.configuration.model) with \(file.configuration.norm.rawValue): \(describe(error))")
        }
        return model
    }

    /// Compares a ResNet file's residual blocks with the configuration's depth (each of the three stages has
    /// `(depth − 2) / 6` blocks), so a configuration that names another model is refused before it is built.
    static func checkTensorNames(_ names: [String], against configuration: TrainingConfiguration, path: String) throws {
        let isVGGFile = names.contains { $0.hasPrefix("features.") }
        guard let depth = configuration.resNetDepth else {
            guard isVGGFile else {
                throw CheckpointError.tensorsDoNotMatch(
                    path: path,
                    reason: "the configuration says \(configuration.model), but the file has no VGG 'features.' tensors"
                )
            }
            return
        }
        if isVGGFile {
            throw CheckpointError.tensorsDoNotMatch(
                path: path,
                reason: "the configuration says \(configuration.model), but the file holds VGG 'features.' tensors")
        }
        let perStage = (depth - 2) / 6
        for stage in 1...3 {
            let prefix = "layer\(stage)."
            let blocks = Set(
                names.compactMap { name -> Int? in
                    guard name.hasPrefix(prefix) else { return nil }
                    return Int(name.dropFirst(prefix.count).prefix(while: { $0 != "." }))
                })
            guard blocks == Set(0..<perStage) else {
                throw CheckpointError.tensorsDoNotMatch(
                    path: path,
                    reason:
                        "the configuration says \(configuration.model) (\(perStage) blocks per stage), but stage \(stage) has \(blocks.count) block(s) in the file"
                )
            }
        }
    }

    /// Reads a model file: its tensors and the configuration it was trained with (see ``read(at:)``).
    public static func readModel(
        at url: URL
    ) throws
        -> (tensors: [String: StateTensor], configuration: TrainingConfiguration, step: Int)
    {
        let file = try read(at: url)
        return (file.tensors, file.configuration, file.step)
    }

    /// `text` (a JSON value of a file's metadata) decoded as `T`, after the strict parse of safetensors headers: no
    /// key twice in an object (Swift's decoder keeps the first of two, Python's `json` the last, so such a file
    /// would be one run to NormKit and another to PyTorch's tools), nesting at most 64 deep.
    static func decodeMetadata<T: Decodable>(_ type: T.Type, from text: String) throws -> T {
        var parser = HeaderJSONParser(bytes: ArraySlice(Array(text.utf8)), place: "byte")
        _ = try parser.parseDocument()
        return try JSONDecoder.normKit.decode(type, from: Data(text.utf8))
    }

    /// Restores `model` and `optimizer` from `directory` and returns the training state.
    public static func load(into model: Model, optimizer: SGD, from directory: URL) throws -> TrainingState {
        let (tensors, _, step) = try readModel(at: directory.appendingPathComponent(modelFileName))
        let stateURL = directory.appendingPathComponent(stateFileName(step: step))
        guard FileManager.default.fileExists(atPath: stateURL.path) else {
            throw CheckpointError.missingTrainingState(path: stateURL.path, step: step)
        }
        let (velocityTensors, metadata) = try SafeTensors.read(from: stateURL)
        let state: TrainingState
        do {
            state = try decodeMetadata(TrainingState.self, from: metadata["state"] ?? "")
        } catch {
            throw CheckpointError.unreadableMetadata(
                path: stateURL.path, field: "state",
                reason: ErrorText.describeDecoding(
                    error, of: TrainingState.self, from: Data((metadata["state"] ?? "").utf8), decoder: .normKit))
        }
        guard state.step == step else {
            throw CheckpointError.unreadableMetadata(
                path: stateURL.path, field: "state", reason: "it holds step \(state.step), the model file step \(step)")
        }
        var velocities: [[Float]] = []
        for i in 0..<velocityTensors.count {
            guard case .float32(_, let v)? = velocityTensors[String(format: "velocity.%04d", i)] else {
                throw ModelError.missingTensor(String(format: "velocity.%04d", i))
            }
            velocities.append(v)
        }
        let backup = model.stateDict()
        try model.loadStateDict(tensors)
        do { try optimizer.loadVelocities(velocities) } catch {
            try? model.loadStateDict(backup)
            throw error
        }
        return state
    }
}
