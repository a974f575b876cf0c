import CNormKitMPI
import Foundation
import NormKitTraining

/// The workers of a data-parallel job as the processes of an Open MPI job (`MPI_COMM_WORLD`): NormKitTraining's
/// ``/NormKitTraining/DataParallelGroup`` and SyncBN's `CrossWorkerReduction` (NormKit) over MPI collectives, through the C bridge
/// `CNormKitMPI` (Swift cannot import MPI's handles, which are macros).
///
/// Start the processes with `mpirun` (as root in a container it needs ``mpirunArguments(runningAsRoot:)``):
///
/// ```bash
/// mpirun -np 2 --allow-run-as-root --oversubscribe --bind-to none --mca btl self,vader .build/release/my-trainer
/// ```
///
/// ```swift
/// guard MPICommunicator.launchedUnderMPI() else { throw DistributedError.notLaunchedUnderMPI }
/// let group = try MPICommunicator()           // worker group.workerIndex of group.workerCount
/// try group.broadcast(parameters, from: 0)     // every worker starts from worker 0's parameters
/// try group.allReduceSum(gradients)            // after every backward
/// try group.finalize()                         // once, at the end, on every worker
/// ```
///
/// **One MPI per process.** The first communicator initialises MPI (`MPI_Init_thread`, `MPI_THREAD_SERIALIZED`);
/// later ones reuse it and see the same rank and size. ``finalize()`` ends MPI for the whole process: every
/// communicator's later calls throw ``DistributedError/finalized(operation:)``, and MPI cannot be started again.
/// It is not called by `deinit`, because finalizing is collective and must happen at the same point on every
/// worker.
///
/// **One rank.** A job of one process (`mpirun -np 1`, or a program started without mpirun, which MPI runs as a
/// singleton) is allowed: the collectives are then copies. A CLI that offers `--distributed` should still refuse
/// to run outside mpirun (``launchedUnderMPI()``), so that a forgotten `mpirun` is an error rather than a silent
/// one-worker run.
///
/// **Failures.** MPI_COMM_WORLD returns errors (`MPI_ERRORS_RETURN`) and every MPI failure is thrown as
/// ``DistributedError``. A worker that dies (exits non-zero, exits without finalizing, is killed, or calls
/// ``abort(exitCode:)``) does *not* reach the others as an error with Open MPI 4.1: mpirun ends the job, sending
/// SIGTERM to every other process, and prints which process failed and how. So that the other processes say why
/// they stopped (instead of vanishing mid-collective), the communicator installs a SIGTERM handler that prints
/// "normkit-mpi: rank 0 of 3 was terminated by SIGTERM while in MPI_Allreduce: …" and then dies of the signal as
/// before; an application's own SIGTERM handler keeps every SIGTERM outside MPI calls (see
/// `init(reportsTermination:)`).
///
/// **Threads.** Any thread may call it; the bridge serialises the calls. Every worker must still make the same
/// calls, with the same counts and roots, in the same order (the collective rules of MPI): a mismatch is
/// undefined behaviour in MPI (a hang, an error, or wrong sums), not something this class can detect.
public final class MPICommunicator: DataParallelGroup, Sendable {
    /// Whether NormKit was built with Open MPI (`libopenmpi-dev` present at build time and `NORMKIT_WITHOUT_MPI`
    /// unset). When false, ``init(reportsTermination:)`` throws ``DistributedError/mpiUnavailable``.
    public static var isAvailable: Bool { nk_mpi_available() != 0 }

    /// Whether `libopenmpi-dev`'s header, which Package.swift looks for, is on this machine now.
    package static var headerInstalled: Bool {
        FileManager.default.fileExists(atPath: "/usr/lib/x86_64-linux-gnu/openmpi/include/mpi.h")
    }

    /// This process's rank in `MPI_COMM_WORLD`, `0 ..< workerCount`.
    public let workerIndex: Int
    /// The number of processes in the job (`mpirun -np`).
    public let workerCount: Int

    /// Joins the MPI job, initialising MPI if no communicator did yet in this process (collective then: every
    /// process of the job must create one). `reportsTermination` installs the SIGTERM notice described above; when
    /// the application already handles SIGTERM (a trainer's "checkpoint and stop"), its handler still gets every
    /// SIGTERM that arrives outside MPI calls, and the notice is printed for one inside a collective, where the
    /// process cannot return to the application. Install the application's handler first.
    ///
    /// Throws ``DistributedError/mpiUnavailable`` when built without Open MPI,
    /// ``DistributedError/finalized(operation:)`` after ``finalize()``,
    /// ``DistributedError/mpiFailure(operation:code:message:)`` when MPI fails to start.
    public init(reportsTermination: Bool = true) throws {
        var rank: Int32 = -1
        var size: Int32 = 0
        try Self.check(nk_mpi_init(&rank, &size), "MPI_Init_thread")
        workerIndex = Int(rank)
        workerCount = Int(size)
        if reportsTermination { _ = nk_mpi_install_termination_notice() }
    }

    /// The largest count the bridge gives one MPI call: `Int32.max` (MPI counts are `int`; larger buffers are
    /// split), unless `NORMKIT_MPI_MAX_CHUNK` lowered it to exercise the split in tests.
    public var elementsPerMPICall: Int { nk_mpi_max_chunk() }

    // MARK: Collectives

    /// Replaces each element of `values` by its sum over all workers (`MPI_Allreduce`, in place).
    public func allReduceSum(_ values: UnsafeMutableBufferPointer<Float>) throws {
        try Self.check(nk_mpi_allreduce_sum_float(values.baseAddress, values.count), "MPI_Allreduce")
    }

    /// Replaces each element of `values` by its sum over all workers (`MPI_Allreduce`, in place).
    public func allReduceSum(_ values: UnsafeMutableBufferPointer<Double>) throws {
        try Self.check(nk_mpi_allreduce_sum_double(values.baseAddress, values.count), "MPI_Allreduce")
    }

    /// Writes every worker's `local` into `all`, worker `w`'s at `w·local.count` (`MPI_Allgather`). `all` must
    /// hold exactly `local.count × workerCount` values and not overlap `local`.
    public func allGather(_ local: UnsafeBufferPointer<Double>, into all: UnsafeMutableBufferPointer<Double>) throws {
        let (expected, overflow) = local.count.multipliedReportingOverflow(by: workerCount)
        guard !overflow, all.count == expected else {
            throw DistributedError.countMismatch(operation: "MPI_Allgather", expected: expected, actual: all.count)
        }
        try Self.check(nk_mpi_allgather_double(local.baseAddress, local.count, all.baseAddress), "MPI_Allgather")
    }

    /// Overwrites `values` on every worker with worker `root`'s (`MPI_Bcast`).
    public func broadcast(_ values: UnsafeMutableBufferPointer<Float>, from root: Int) throws {
        try checkRoot(root)
        try Self.check(nk_mpi_broadcast_float(values.baseAddress, values.count, Int32(root)), "MPI_Bcast")
    }

    /// Overwrites `bytes` on every worker with worker `root`'s (`MPI_Bcast` of `MPI_BYTE`): a seed, a
    /// configuration, a serialized checkpoint.
    public func broadcast(_ bytes: UnsafeMutableRawBufferPointer, from root: Int) throws {
        try checkRoot(root)
        try Self.check(nk_mpi_broadcast_bytes(bytes.baseAddress, bytes.count, Int32(root)), "MPI_Bcast")
    }

    /// Returns once every worker has called it (`MPI_Barrier`).
    public func barrier() throws {
        try Self.check(nk_mpi_barrier(), "MPI_Barrier")
    }

    // MARK: Ending

    /// Finalizes MPI for this process (`MPI_Finalize`; collective: every worker calls it, at the same point). Call
    /// it once at the end: a process that exits without it makes mpirun report an abnormal termination and end
    /// the job. Calling it again is a no-op; any later collective throws ``DistributedError/finalized(operation:)``.
    public func finalize() throws {
        try Self.check(nk_mpi_finalize(), "MPI_Finalize")
    }

    /// Ends the whole job at once (`MPI_Abort`): mpirun terminates every process and exits with `exitCode`. The way
    /// out after a failed collective or any error after which the workers can no longer make the same calls; it
    /// works while another thread is blocked in a collective. Without MPI running it exits this process.
    public func abort(exitCode: Int32 = 1) -> Never {
        nk_mpi_abort(exitCode)
    }

    // MARK: Launching

    /// Whether this process was started by a process manager of an MPI job: Open MPI's mpirun (it sets
    /// `OMPI_COMM_WORLD_SIZE` and `OMPI_COMM_WORLD_RANK`), or a PMIx or PMI launcher such as Slurm's `srun`
    /// (`PMIX_RANK`, `PMI_RANK`). False for a program started directly, which MPI would run as a one-process
    /// singleton: a CLI's `--distributed` should refuse that (``DistributedError/notLaunchedUnderMPI``).
    ///
    /// The answer is the environment as it was before MPI started (the bridge reads it on its first call, at the
    /// latest in the first `init`): Open MPI sets `OMPI_COMM_WORLD_*` in a singleton's own environment, so reading
    /// `ProcessInfo` after `init` would always say true.
    public static func launchedUnderMPI() -> Bool {
        nk_mpi_launched_by_process_manager() != 0
    }

    /// The `mpirun` options a launcher on one machine needs, checked with Open MPI 4.1 (Debian) in a container:
    /// - `--allow-run-as-root` (only when `runningAsRoot`): mpirun refuses to start as root without it (or
    ///   `OMPI_ALLOW_RUN_AS_ROOT=1` with `OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1`).
    /// - `--oversubscribe`: mpirun's slots are the machine's cores, and more processes than cores are refused
    ///   without it ("There are not enough slots available").
    /// - `--bind-to none`: with no more processes than cores mpirun pins each to one core, which would confine
    ///   a worker's thread pool (`Parallelism.threadCount`) to that core; on a machine shared with other jobs a
    ///   pinned core may also be a busy one. Give each worker its share of the cores instead.
    /// - `--mca btl self,vader`: shared memory between the processes of one machine (the default choice too, here;
    ///   named so that mpirun neither probes nor warns about network transports). For several machines use
    ///   `self,vader,tcp` and a host file.
    public static func mpirunArguments(runningAsRoot: Bool = geteuid() == 0) -> [String] {
        (runningAsRoot ? ["--allow-run-as-root"] : [])
            + ["--oversubscribe", "--bind-to", "none", "--mca", "btl", "self,vader"]
    }

    // MARK: Errors

    private func checkRoot(_ root: Int) throws {
        guard (0..<workerCount).contains(root) else {
            throw DistributedError.invalidRoot(root: root, workerCount: workerCount)
        }
    }

    /// Throws the error a bridge code (0: success) stands for.
    private static func check(_ code: Int32, _ operation: String) throws {
        guard code != 0 else { return }
        switch Int(code) {
        case Int(NK_MPI_ERR_UNAVAILABLE): throw DistributedError.mpiUnavailable
        case Int(NK_MPI_ERR_FINALIZED): throw DistributedError.finalized(operation: operation)
        default:
            var text = [CChar](repeating: 0, count: 512)
            nk_mpi_error_string(code, &text, Int32(text.count))
            let message = text.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
            throw DistributedError.mpiFailure(operation: operation, code: Int(code), message: message)
        }
    }
}
