import Foundation

/// Everything `MPICommunicator` refuses or that fails in MPI, with a message that says what to do.
///
/// A collective that MPI reports as failed (``mpiFailure(operation:code:message:)``) leaves the job in an unknown
/// state: the other workers may be blocked in the same call. The caller's way out is
/// ``MPICommunicator/abort(exitCode:)``, which ends every process of the job, never a retry.
public enum DistributedError: Error, Equatable, CustomStringConvertible, LocalizedError {
    /// NormKit was built without Open MPI (no `libopenmpi-dev` at build time, or `NORMKIT_WITHOUT_MPI` set).
    case mpiUnavailable
    /// `--distributed` (or the like) outside `mpirun`: none of the variables mpirun gives its processes is set.
    case notLaunchedUnderMPI
    /// MPI, or the bridge's own checks, reported `code` in `operation` (`"MPI_Allreduce"`, …).
    case mpiFailure(operation: String, code: Int, message: String)
    /// MPI was finalized in this process (``MPICommunicator/finalize()``); it cannot be started again.
    case finalized(operation: String)
    /// A buffer whose size is not the one the operation needs (the gather's `all` is `local.count × workerCount`).
    case countMismatch(operation: String, expected: Int, actual: Int)
    /// A broadcast root outside `0 ..< workerCount`.
    case invalidRoot(root: Int, workerCount: Int)

    /// Why a build without Open MPI lacks it: the packages are missing, or the build was configured before they were
    /// installed (SwiftPM keeps its first reading of Package.swift, in `.build` and in its cache of manifests, so a
    /// rebuild alone keeps the stubs), or with `NORMKIT_WITHOUT_MPI`.
    package static func mpiMissingReason(headerInstalled: Bool) -> String {
        headerInstalled
            ? "NormKit was built without Open MPI, though libopenmpi-dev is installed: the build was configured with "
                + "NORMKIT_WITHOUT_MPI or before the package was installed (SwiftPM keeps its first reading of "
                + "Package.swift); run `bash scripts/setup.sh --reconfigure` and rebuild, with NORMKIT_WITHOUT_MPI unset."
            : "NormKit was built without Open MPI. Install the Debian packages openmpi-bin and libopenmpi-dev "
                + "(`bash scripts/setup.sh`, or apt-get install openmpi-bin libopenmpi-dev) and rebuild, with "
                + "NORMKIT_WITHOUT_MPI unset."
    }

    public var description: String {
        switch self {
        case .mpiUnavailable:
            return "MPI is unavailable: " + Self.mpiMissingReason(headerInstalled: MPICommunicator.headerInstalled)
        case .notLaunchedUnderMPI:
            return "not launched by mpirun (none of OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_RANK, PMIX_RANK, PMI_RANK "
                + "in the environment): start the distributed run with `mpirun -np <workers> "
                + MPICommunicator.mpirunArguments().joined(separator: " ") + " <command>`."
        case .mpiFailure(let operation, let code, let message):
            return "\(operation) failed (code \(code)): \(message)"
        case .finalized(let operation):
            return "\(operation): MPI was already finalized in this process and cannot be used again."
        case .countMismatch(let operation, let expected, let actual):
            return "\(operation): the buffer holds \(actual) elements, \(expected) expected."
        case .invalidRoot(let root, let workerCount):
            return "broadcast from worker \(root): the roots are 0 ..< \(workerCount)."
        }
    }

    public var errorDescription: String? { description }
}
