extension TrainingConfiguration {
    /// The `normkit train` flags that make this configuration (every field, optional ones when set), for running a configuration in another process, such as a sweep cell under `mpirun`.
    /// `normkit train` given these flags records exactly this configuration in its checkpoint and summary.
    public var trainArguments: [String] {
        var flags: [String] = []
        func add(_ flag: String, _ value: CustomStringConvertible?) {
            if let value { flags += [flag, value.description] }
        }
        add("--model", model)
        add("--norm", norm.rawValue)
        add("--groups", groups)
        add("--group-size", groupSize)
        add("--batch", batch)
        add("--norm-batch", normBatch)
        add("--epochs", epochs)
        add("--lr", learningRate)
        add("--momentum", momentum)
        add("--weight-decay", weightDecay)
        if decayAllParameters { flags.append("--decay-all") }
        add("--schedule", schedule)
        if !milestones.isEmpty { add("--milestones", milestones.map(String.init).joined(separator: ",")) }
        add("--warmup", warmupFraction)
        add("--seed", seed)
        add("--train-limit", trainLimit)
        add("--test-limit", testLimit)
        if !augment { flags.append("--no-augment") }
        add("--threads", threads)
        add("--mabn-buffer", mabnBuffer)
        add("--mabn-warmup", mabnWarmup)
        add("--mabn-old-weight", mabnOldValueWeight)
        if let parts = mabnWithout, !parts.isEmpty { add("--mabn-without", parts.joined(separator: ",")) }
        add("--bn-momentum", bnMomentum)
        add("--brn-momentum", brnMomentum)
        add("--brn-r-max", brnRMax)
        add("--brn-d-max", brnDMax)
        add("--brn-schedule", brnSchedule)
        return flags
    }
}

extension TrainingConfiguration {
    /// The `normkit train` flag that sets each field (by its name in the recorded JSON), for messages that name a
    /// field by what a user types: `learningRate` → `--lr`, `augment` → `--no-augment`.
    public static let flagNames: [String: String] = [
        "model": "--model", "norm": "--norm", "groups": "--groups", "groupSize": "--group-size",
        "batch": "--batch", "normBatch": "--norm-batch", "epochs": "--epochs", "learningRate": "--lr",
        "momentum": "--momentum", "weightDecay": "--weight-decay", "decayAllParameters": "--decay-all",
        "schedule": "--schedule", "milestones": "--milestones", "warmupFraction": "--warmup", "seed": "--seed",
        "trainLimit": "--train-limit", "testLimit": "--test-limit", "augment": "--no-augment",
        "threads": "--threads", "mabnBuffer": "--mabn-buffer", "mabnWarmup": "--mabn-warmup",
        "mabnOldValueWeight": "--mabn-old-weight", "mabnWithout": "--mabn-without", "bnMomentum": "--bn-momentum",
        "brnMomentum": "--brn-momentum", "brnRMax": "--brn-r-max", "brnDMax": "--brn-d-max",
        "brnSchedule": "--brn-schedule",
    ]
}
