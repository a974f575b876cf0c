// The CLI's commands use the experiments module (sweeps, reports, the benchmark) that moved out of
// NormKitTraining; this re-export makes it visible to every file of the CLI.
@_exported import NormKitExperiments
