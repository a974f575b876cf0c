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
    public struct TrainingState: Codable, Equatable {
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

        /// A training state.
        public init(step: Int, position: BatchIterator.Position, history: [EpochMetrics], epochLossSum: Double,
                    epochCorrect: Int, epochImages: Int, elapsedSeconds: Double, epochTrainingSeconds: Double) {
            self.step = step; self.position = position; self.history = history; self.epochLossSum = epochLossSum
            self.epochCorrect = epochCorrect; self.epochImages = epochImages; self.elapsedSeconds = elapsedSeconds
            self.epochTrainingSeconds = epochTrainingSeconds
        }
    }

    /// The `__metadata__` describing a model so it can be rebuilt from the file alone (in NormKit or with
    /// `torch_models.ResNet(depth, norm, groups=…, group_size=…, mabn_buffer=…)`).
    public static func metadata(configuration: TrainingConfiguration, normalization: NormalizationSettings,
                                step: Int) throws -> [String: String] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        var torch: [String: String] = ["norm": configuration.norm.rawValue,
                                       "mabn_buffer": "\(normalization.mabnBufferSize)"]
        if configuration.model.lowercased().hasPrefix("resnet") {
            torch["depth"] = String(configuration.model.dropFirst("resnet".count))
        }
        if let g = configuration.groupSize { torch["group_size"] = "\(g)" } else {
            torch["groups"] = "\(configuration.groups ?? NormalizationSettings.defaultGroups)"
        }
        return [
            "format": format,
            "configuration": String(decoding: try encoder.encode(configuration), as: UTF8.self),
            "torch_model_arguments": String(decoding: try encoder.encode(torch), as: UTF8.self),
            "step": "\(step)",
        ]
    }

    /// Writes the pair into `directory` (created if needed).
    public static func save(model: Model, optimizer: SGD, state: TrainingState, configuration: TrainingConfiguration,
                            normalization: NormalizationSettings, to directory: URL) throws {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        var tensors: [String: StateTensor] = [:]
        for (i, v) in optimizer.velocities.enumerated() {
            tensors[String(format: "velocity.%04d", i)] = .float32(shape: [v.count], values: v)
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let stateJSON = String(decoding: try encoder.encode(state), as: UTF8.self)
        try SafeTensors.write(tensors, metadata: ["format": format, "state": stateJSON, "step": "\(state.step)"],
                              to: directory.appendingPathComponent(stateFileName(step: state.step)))
        try SafeTensors.write(model.stateDict(),
                              metadata: try metadata(configuration: configuration, normalization: normalization,
                                                     step: state.step),
                              to: directory.appendingPathComponent(modelFileName))
        // Older training states are no longer referenced by the model file.
        let files = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        for file in files where file.hasPrefix("training-state-") && file != stateFileName(step: state.step) {
            try? FileManager.default.removeItem(at: directory.appendingPathComponent(file))
        }
    }

    static func stateFileName(step: Int) -> String { "training-state-\(step).safetensors" }

    /// Reads a model file: its tensors and the configuration it was trained with.
    public static func readModel(at url: URL) throws
        -> (tensors: [String: StateTensor], configuration: TrainingConfiguration, step: Int)
    {
        let (tensors, metadata) = try SafeTensors.read(from: url)
        guard let json = metadata["configuration"],
              var configuration = try? JSONDecoder().decode(TrainingConfiguration.self, from: Data(json.utf8)) else {
            throw ModelError.unsupported(
                "\(url.path) has no NormKit configuration in its metadata: not a checkpoint written by normkit train")
        }
        // Files from before the trainer recorded GN's default groups: the PyTorch arguments hold the value used.
        if configuration.norm == .gn, configuration.groups == nil, configuration.groupSize == nil,
           let torch = metadata["torch_model_arguments"],
           let arguments = try? JSONDecoder().decode([String: String].self, from: Data(torch.utf8)),
           let groups = arguments["groups"].flatMap({ Int($0) }) {
            configuration.groups = groups
        }
        return (tensors, configuration, Int(metadata["step"] ?? "") ?? 0)
    }

    /// Restores `model` and `optimizer` from `directory` and returns the training state.
    public static func load(into model: Model, optimizer: SGD, from directory: URL) throws -> TrainingState {
        let (tensors, _, step) = try readModel(at: directory.appendingPathComponent(modelFileName))
        let stateURL = directory.appendingPathComponent(stateFileName(step: step))
        let (velocityTensors, metadata) = try SafeTensors.read(from: stateURL)
        guard let json = metadata["state"],
              let state = try? JSONDecoder().decode(TrainingState.self, from: Data(json.utf8)), state.step == step else {
            throw ModelError.unsupported("\(stateURL.path) does not hold the training state of step \(step)")
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
