// NormKit's bridge to Open MPI (Debian's libopenmpi-dev, Open MPI 4.x): the few collectives data-parallel
// training and SyncBN need, over MPI_COMM_WORLD, as plain C functions. Swift cannot use MPI's own API: Open MPI's
// `MPI_COMM_WORLD`, `MPI_FLOAT`, `MPI_SUM`, … are macros over addresses of internal symbols, which Swift does not
// import.
//
// Conventions:
// - Every `int` function returns 0 on success, an MPI error code (> 0) when MPI reported a failure, or one of the
//   bridge's own codes below (< 0). `nk_mpi_error_string` describes any of them. MPI_COMM_WORLD's error handler is
//   MPI_ERRORS_RETURN, so MPI failures come back as codes instead of aborting inside MPI.
// - The collectives follow MPI's rules: every process calls the same functions, with the same counts and roots,
//   in the same order. Counts are `long` (elements); counts beyond INT_MAX (MPI's `int` counts) are split into
//   several MPI calls, never truncated. A count of 0 makes no MPI call.
// - Any thread may call the bridge: MPI is initialised with MPI_THREAD_SERIALIZED and the bridge itself serialises
//   its calls with a mutex (two threads calling collectives at once would still break the call-order rule).
// - Built without Open MPI (`NORMKIT_WITHOUT_MPI`, or no mpi.h), every function returns NK_MPI_ERR_UNAVAILABLE,
//   whose message says which Debian packages to install.
#ifndef NORMKIT_MPI_H
#define NORMKIT_MPI_H

#ifdef __cplusplus
extern "C" {
#endif

/// The bridge's own error codes (MPI's are >= 0, MPI_SUCCESS being 0).
enum {
    /// NormKit was built without Open MPI.
    NK_MPI_ERR_UNAVAILABLE = -1,
    /// A collective before `nk_mpi_init`.
    NK_MPI_ERR_NOT_INITIALIZED = -2,
    /// A call after `nk_mpi_finalize` (MPI cannot be initialised twice in one process).
    NK_MPI_ERR_FINALIZED = -3,
    /// A negative count, a NULL buffer with a positive count, or a root outside `0 ..< size`.
    NK_MPI_ERR_ARGUMENT = -4,
    /// A buffer whose size in bytes (or, for the gather, times the number of processes) overflows.
    NK_MPI_ERR_TOO_LARGE = -5,
    /// MPI gave less than MPI_THREAD_SERIALIZED and the call came from another thread than the initialising one.
    NK_MPI_ERR_THREAD = -6,
};

/// 1 when NormKit was built with Open MPI, else 0 (and every other call fails with NK_MPI_ERR_UNAVAILABLE).
int nk_mpi_available(void);

/// 1 when this process was started by an MPI process manager: Open MPI's mpirun (`OMPI_COMM_WORLD_SIZE`,
/// `OMPI_COMM_WORLD_RANK`) or a PMIx / PMI launcher such as Slurm's srun (`PMIX_RANK`, `PMI_RANK`); else 0. Read
/// from the environment as it was before `nk_mpi_init`: Open MPI sets those variables itself when it starts a
/// process that mpirun did not launch (a singleton), so reading them afterwards would always say 1.
int nk_mpi_launched_by_process_manager(void);

/// Initialises MPI (MPI_Init_thread, MPI_THREAD_SERIALIZED) unless it already is, sets MPI_ERRORS_RETURN on
/// MPI_COMM_WORLD, and writes this process's rank and the number of processes. Idempotent: later calls only write
/// `rank` and `size` (either may be NULL). Collective on its first call: every process must call it.
///
/// The largest count one MPI call is given is INT_MAX elements; the environment variable `NORMKIT_MPI_MAX_CHUNK`
/// (read by rank 0 on the first call and broadcast, so every process splits alike) lowers it, to test the split
/// paths with small buffers.
int nk_mpi_init(int *rank, int *size);

/// Finalizes MPI (collective: every process must call it). A no-op when MPI was never initialised or is already
/// finalized; afterwards every collective returns NK_MPI_ERR_FINALIZED and `nk_mpi_init` cannot start MPI again.
int nk_mpi_finalize(void);

/// The largest count given to one MPI call (INT_MAX unless `NORMKIT_MPI_MAX_CHUNK` lowered it); 0 before
/// `nk_mpi_init` or without MPI.
long nk_mpi_max_chunk(void);

/// Replaces each of `values[0 ..< count]` by its sum over all processes, in place (MPI_IN_PLACE).
int nk_mpi_allreduce_sum_float(float *values, long count);
int nk_mpi_allreduce_sum_double(double *values, long count);

/// Writes every process's `local[0 ..< count]` into `all`, process `p`'s at `all + p·count` (`all` holds
/// `count × size` values and must not overlap `local`).
int nk_mpi_allgather_double(const double *local, long count, double *all);

/// Overwrites `values[0 ..< count]` (or `bytes`) on every process with process `root`'s.
int nk_mpi_broadcast_float(float *values, long count, int root);
int nk_mpi_broadcast_bytes(void *bytes, long count, int root);

/// Returns once every process has called it.
int nk_mpi_barrier(void);

/// Ends the whole job (MPI_Abort on MPI_COMM_WORLD: mpirun terminates every process) with exit status `code`.
/// Takes no lock, so it works while another thread is blocked in a collective. Without MPI, or before
/// `nk_mpi_init` / after `nk_mpi_finalize`, it exits this process with `code`. Never returns.
__attribute__((noreturn)) void nk_mpi_abort(int code);

/// Writes a description of `code` (an MPI code or one of NK_MPI_ERR_*), NUL-terminated and truncated to
/// `capacity` bytes, into `out`.
void nk_mpi_error_string(int code, char *out, int capacity);

/// Installs a SIGTERM handler that, when mpirun ends the job (it sends SIGTERM to every surviving process when one
/// exits non-zero, calls MPI_Abort, or dies), writes one line to stderr naming this process's rank and the MPI
/// call it was in, then dies of SIGTERM as it would have. Installed only when SIGTERM has its default disposition
/// (a handler of the application's is kept): returns 1 when installed (or already installed), else 0.
int nk_mpi_install_termination_notice(void);

#ifdef __cplusplus
}
#endif

#endif
