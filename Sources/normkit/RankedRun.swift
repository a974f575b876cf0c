import Foundation
import NormKitDistributed
import NormKitExperiments
import NormKitTraining

/// A sweep cell trained on real ranks: `mpirun -np R normkit train --distributed …` into the cell's run directory
/// (resumed when it holds a checkpoint), its output passed through, its summary returned.
struct RankedRun {
    let cell: SweepCell
    let ranks: Int
    let directory: URL
    /// Threads per rank.
    let threads: Int
    /// `--data`, when the sweep was given one.
    let data: String?

    /// `mpirun` from `PATH`, or a clear error naming the package.
    static func mpirun() throws -> URL {
        let paths = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":")
        guard
            let found = paths.map({ URL(fileURLWithPath: String($0)).appendingPathComponent("mpirun") })
                .first(where: { FileManager.default.isExecutableFile(atPath: $0.path) })
        else {
            throw CommandFailure(
                "--ranks runs cells under mpirun, which is not installed (apt-get install openmpi-bin libopenmpi-dev, then rebuild)"
            )
        }
        return found
    }

    /// The mpirun command line of this cell.
    func arguments() -> [String] {
        let normkit = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
        let resuming = FileManager.default.fileExists(
            atPath: directory.appendingPathComponent(TrainingCheckpoint.modelFileName).path)
        var train = ["train", "--distributed"]
        if resuming {
            train += ["--resume", directory.path, "--threads", "\(threads)"]
        } else {
            var configuration = cell.configuration
            configuration.threads = threads
            // A directory without a checkpoint holds only this cell's own records of a run that died early.
            train += configuration.trainArguments + ["--out", directory.path, "--overwrite"]
        }
        if let data { train += ["--data", data] }
        return ["-np", "\(ranks)"] + MPICommunicator.mpirunArguments() + [normkit] + train
    }

    /// Runs the cell and returns its summary. An interrupted run (Ctrl-C reaches mpirun and every rank, which
    /// checkpoint) ends the sweep with the message to run the same command again.
    func run() throws -> RunSummary {
        let process = Process()
        process.executableURL = try Self.mpirun()
        process.arguments = arguments()
        print("mpirun \(process.arguments!.joined(separator: " "))")
        try process.run()
        process.waitUntilExit()
        let status = process.terminationStatus
        if status == 128 + SIGINT || status == 128 + SIGTERM {
            print(
                "\ninterrupted: \(directory.lastPathComponent) saved its checkpoint. "
                    + "Run the same command again to continue the sweep.")
            Foundation.exit(status)
        }
        guard status == 0 else {
            throw CommandFailure(
                "mpirun -np \(ranks) normkit train --distributed exited with status \(status) (its output is above)")
        }
        let url = directory.appendingPathComponent(SweepReport.summaryFileName)
        do {
            return try JSONDecoder.normKit.decode(RunSummary.self, from: Data(readFileBytes(path: url.path)))
        } catch {
            throw CommandFailure(
                "\(url.path): the ranked run finished without a readable summary: \(ErrorText.describe(error))")
        }
    }
}
