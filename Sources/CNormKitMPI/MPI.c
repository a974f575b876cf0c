// See include/NormKitMPI.h.
#define _GNU_SOURCE
#include "NormKitMPI.h"

#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// The descriptions of the bridge's own codes, with or without MPI.
static const char *bridge_error_text(int code) {
    switch (code) {
    case 0: return "success";
    case NK_MPI_ERR_UNAVAILABLE:
        return "NormKit was built without Open MPI: install the Debian packages openmpi-bin and libopenmpi-dev "
               "(apt-get install openmpi-bin libopenmpi-dev), then rebuild with NORMKIT_WITHOUT_MPI unset";
    case NK_MPI_ERR_NOT_INITIALIZED: return "MPI is not initialised in this process (nk_mpi_init was not called)";
    case NK_MPI_ERR_FINALIZED:
        return "MPI was finalized in this process; it cannot be used, nor initialised again, afterwards";
    case NK_MPI_ERR_ARGUMENT: return "invalid argument (a negative count, a NULL buffer, or a root out of range)";
    case NK_MPI_ERR_TOO_LARGE: return "buffer too large: its size in bytes overflows";
    case NK_MPI_ERR_THREAD:
        return "MPI provides less than MPI_THREAD_SERIALIZED here, and this call is not on MPI's main thread";
    default: return NULL;
    }
}

// The launch environment, read on the first call (nk_mpi_init makes one before MPI can change the environment).
static int launched_by_process_manager(void) {
    static const char *const names[] = {"OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (getenv(names[i]) != NULL) return 1;
    return 0;
}

static pthread_once_t launch_once = PTHREAD_ONCE_INIT;
static int launched = 0;
static void read_launch_environment(void) { launched = launched_by_process_manager(); }

int nk_mpi_launched_by_process_manager(void) {
    pthread_once(&launch_once, read_launch_environment);
    return launched;
}

#if !defined(NORMKIT_WITHOUT_MPI) && __has_include(<mpi.h>)
#include <mpi.h>
#include <signal.h>
#include <stdatomic.h>
#include <unistd.h>

int nk_mpi_available(void) { return 1; }

// The bridge's state. `lock` serialises every call into MPI (what MPI_THREAD_SERIALIZED asks of the caller); the
// fields read by nk_mpi_abort and the signal handler, which take no lock, are atomic.
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
enum { NOT_STARTED = 0, RUNNING = 1, FINALIZED = 2 };
static _Atomic int state = NOT_STARTED;
static _Atomic int world_rank = -1;
static _Atomic int world_size = 0;
static int thread_level = MPI_THREAD_SINGLE;
static long max_chunk = 0;
// The MPI call in progress, for the termination notice (a string literal or NULL).
static const char *_Atomic current_operation = NULL;

// A SIGTERM that reached the application's handler outside MPI calls: noticed by the next call (see below).
static _Atomic int pending_termination = 0;
static void write_notice(const char *operation);

// Checks, with `lock` held, that a collective may run now, and records it as the call in progress.
static int begin(const char *operation) {
    int current = atomic_load(&state);
    if (current == NOT_STARTED) return NK_MPI_ERR_NOT_INITIALIZED;
    if (current == FINALIZED) return NK_MPI_ERR_FINALIZED;
    if (thread_level < MPI_THREAD_SERIALIZED) {
        int is_main = 0;
        MPI_Is_thread_main(&is_main);
        if (!is_main) return NK_MPI_ERR_THREAD;
    }
    atomic_store(&current_operation, operation);
    if (atomic_exchange(&pending_termination, 0)) write_notice(operation);
    return 0;
}

static int end(int code) {
    atomic_store(&current_operation, NULL);
    pthread_mutex_unlock(&lock);
    return code;
}

// rank 0's NORMKIT_MPI_MAX_CHUNK, clamped to 1 ... INT_MAX; INT_MAX when unset or not a number.
static long requested_max_chunk(void) {
    const char *text = getenv("NORMKIT_MPI_MAX_CHUNK");
    if (text == NULL || *text == '\0') return INT_MAX;
    char *rest = NULL;
    long value = strtol(text, &rest, 10);
    if (rest == text || *rest != '\0' || value < 1) return INT_MAX;
    return value < INT_MAX ? value : INT_MAX;
}

int nk_mpi_init(int *rank, int *size) {
    nk_mpi_launched_by_process_manager();   // before MPI_Init_thread, which sets OMPI_* in a singleton
    pthread_mutex_lock(&lock);
    int current = atomic_load(&state);
    if (current == FINALIZED) return end(NK_MPI_ERR_FINALIZED);
    if (current == NOT_STARTED) {
        int initialized = 0, finalized = 0;
        MPI_Initialized(&initialized);
        MPI_Finalized(&finalized);
        if (finalized) {
            atomic_store(&state, FINALIZED);
            return end(NK_MPI_ERR_FINALIZED);
        }
        atomic_store(&current_operation, "MPI_Init_thread");
        int provided = MPI_THREAD_SINGLE, code;
        // MPI may already run, started by the application: then use it as it is.
        code = initialized ? MPI_Query_thread(&provided)
                           : MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided);
        if (code != MPI_SUCCESS) return end(code);
        thread_level = provided;
        code = MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
        int r = -1, s = 0;
        if (code == MPI_SUCCESS) code = MPI_Comm_rank(MPI_COMM_WORLD, &r);
        if (code == MPI_SUCCESS) code = MPI_Comm_size(MPI_COMM_WORLD, &s);
        // Every process must split large buffers alike: rank 0's limit is everyone's.
        long chunk = r == 0 ? requested_max_chunk() : INT_MAX;
        if (code == MPI_SUCCESS) code = MPI_Bcast(&chunk, 1, MPI_LONG, 0, MPI_COMM_WORLD);
        if (code != MPI_SUCCESS) return end(code);
        max_chunk = chunk;
        atomic_store(&world_rank, r);
        atomic_store(&world_size, s);
        atomic_store(&state, RUNNING);
    }
    if (rank) *rank = atomic_load(&world_rank);
    if (size) *size = atomic_load(&world_size);
    return end(MPI_SUCCESS);
}

int nk_mpi_finalize(void) {
    pthread_mutex_lock(&lock);
    if (atomic_load(&state) != RUNNING) return end(MPI_SUCCESS);
    atomic_store(&current_operation, "MPI_Finalize");
    int code = MPI_Finalize();
    // Whatever MPI_Finalize returned, MPI must not be called again.
    atomic_store(&state, FINALIZED);
    return end(code);
}

long nk_mpi_max_chunk(void) {
    pthread_mutex_lock(&lock);
    long chunk = atomic_load(&state) == RUNNING ? max_chunk : 0;
    pthread_mutex_unlock(&lock);
    return chunk;
}

// In-place sum of `count` elements of `element_size` bytes, at most `max_chunk` per MPI call.
static int allreduce_sum(void *values, long count, MPI_Datatype type, size_t element_size) {
    if (count < 0 || (count > 0 && values == NULL)) return NK_MPI_ERR_ARGUMENT;
    if ((unsigned long)count > SIZE_MAX / element_size) return NK_MPI_ERR_TOO_LARGE;
    pthread_mutex_lock(&lock);
    int code = begin("MPI_Allreduce");
    for (long offset = 0; code == MPI_SUCCESS && offset < count;) {
        long n = count - offset < max_chunk ? count - offset : max_chunk;
        code = MPI_Allreduce(MPI_IN_PLACE, (char *)values + (size_t)offset * element_size, (int)n, type, MPI_SUM,
                             MPI_COMM_WORLD);
        offset += n;
    }
    return end(code);
}

int nk_mpi_allreduce_sum_float(float *values, long count) {
    return allreduce_sum(values, count, MPI_FLOAT, sizeof(float));
}

int nk_mpi_allreduce_sum_double(double *values, long count) {
    return allreduce_sum(values, count, MPI_DOUBLE, sizeof(double));
}

int nk_mpi_allgather_double(const double *local, long count, double *all) {
    if (count < 0 || (count > 0 && (local == NULL || all == NULL))) return NK_MPI_ERR_ARGUMENT;
    pthread_mutex_lock(&lock);
    int code = begin("MPI_Allgather");
    if (code != MPI_SUCCESS || count == 0) return end(code);
    long size = atomic_load(&world_size);
    // `all`'s size in bytes, and the stride between processes (an MPI_Aint), must not overflow.
    if (count > LONG_MAX / (long)sizeof(double) / size) return end(NK_MPI_ERR_TOO_LARGE);
    if (count <= max_chunk)
        return end(MPI_Allgather(local, (int)count, MPI_DOUBLE, all, (int)count, MPI_DOUBLE, MPI_COMM_WORLD));
    // Split: chunk [offset, offset + n) of every process lands at `all + p·count + offset`. One receive element is
    // n doubles whose extent is the whole `count`, so the p-th received element starts at `p·count`.
    for (long offset = 0; code == MPI_SUCCESS && offset < count;) {
        long n = count - offset < max_chunk ? count - offset : max_chunk;
        MPI_Datatype block = MPI_DATATYPE_NULL, spread = MPI_DATATYPE_NULL;
        code = MPI_Type_contiguous((int)n, MPI_DOUBLE, &block);
        if (code == MPI_SUCCESS)
            code = MPI_Type_create_resized(block, 0, (MPI_Aint)count * (MPI_Aint)sizeof(double), &spread);
        if (code == MPI_SUCCESS) code = MPI_Type_commit(&spread);
        if (code == MPI_SUCCESS)
            code = MPI_Allgather(local + offset, (int)n, MPI_DOUBLE, all + offset, 1, spread, MPI_COMM_WORLD);
        if (spread != MPI_DATATYPE_NULL) MPI_Type_free(&spread);
        if (block != MPI_DATATYPE_NULL) MPI_Type_free(&block);
        offset += n;
    }
    return end(code);
}

// Broadcast of `count` elements of `element_size` bytes from `root`, at most `max_chunk` per MPI call.
static int broadcast(void *values, long count, int root, MPI_Datatype type, size_t element_size) {
    if (count < 0 || (count > 0 && values == NULL)) return NK_MPI_ERR_ARGUMENT;
    if ((unsigned long)count > SIZE_MAX / element_size) return NK_MPI_ERR_TOO_LARGE;
    pthread_mutex_lock(&lock);
    int code = begin("MPI_Bcast");
    if (code == MPI_SUCCESS && (root < 0 || root >= atomic_load(&world_size))) code = NK_MPI_ERR_ARGUMENT;
    for (long offset = 0; code == MPI_SUCCESS && offset < count;) {
        long n = count - offset < max_chunk ? count - offset : max_chunk;
        code = MPI_Bcast((char *)values + (size_t)offset * element_size, (int)n, type, root, MPI_COMM_WORLD);
        offset += n;
    }
    return end(code);
}

int nk_mpi_broadcast_float(float *values, long count, int root) {
    return broadcast(values, count, root, MPI_FLOAT, sizeof(float));
}

int nk_mpi_broadcast_bytes(void *bytes, long count, int root) {
    return broadcast(bytes, count, root, MPI_BYTE, 1);
}

int nk_mpi_barrier(void) {
    pthread_mutex_lock(&lock);
    int code = begin("MPI_Barrier");
    if (code == MPI_SUCCESS) code = MPI_Barrier(MPI_COMM_WORLD);
    return end(code);
}

void nk_mpi_abort(int code) {
    // No lock: another thread may hold it, blocked in a collective that will never complete.
    if (atomic_load(&state) == RUNNING) MPI_Abort(MPI_COMM_WORLD, code);
    exit(code);
}

void nk_mpi_error_string(int code, char *out, int capacity) {
    if (out == NULL || capacity <= 0) return;
    const char *text = bridge_error_text(code);
    if (text != NULL) {
        snprintf(out, (size_t)capacity, "%s", text);
        return;
    }
    // MPI_Error_string is a table lookup (callable at any time since MPI 4.0); only call it while MPI runs.
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (code > 0 && initialized && !finalized) {
        char buffer[MPI_MAX_ERROR_STRING];
        int length = 0;
        if (MPI_Error_string(code, buffer, &length) == MPI_SUCCESS) {
            snprintf(out, (size_t)capacity, "%.*s (MPI error %d)", length, buffer, code);
            return;
        }
    }
    snprintf(out, (size_t)capacity, "MPI error %d", code);
}

// The termination notice. Only async-signal-safe calls: the line is assembled by hand and written with write(2).
static void append_text(char *line, size_t *length, size_t capacity, const char *text) {
    while (*text && *length + 1 < capacity) line[(*length)++] = *text++;
}

static void append_int(char *line, size_t *length, size_t capacity, int value) {
    char digits[16];
    int n = 0;
    if (value < 0) {
        append_text(line, length, capacity, "?");
        return;
    }
    do { digits[n++] = (char)('0' + value % 10); value /= 10; } while (value > 0 && n < 15);
    while (n > 0 && *length + 1 < capacity) line[(*length)++] = digits[--n];
}

// The application's SIGTERM handler when there was one (a trainer's "checkpoint and stop"): it still gets every
// SIGTERM. The notice is printed too, inside the MPI call in progress or at the start of the next, since a rank
// whose peer died never returns from that call (mpirun then kills it); after a Ctrl-C every rank got the signal
// and the call completes.
static void (*application_handler)(int) = NULL;

// "normkit-mpi: rank r of R".
static void append_rank(char *line, size_t *length, size_t capacity) {
    append_text(line, length, capacity, "normkit-mpi: rank ");
    append_int(line, length, capacity, atomic_load(&world_rank));
    append_text(line, length, capacity, " of ");
    append_int(line, length, capacity, atomic_load(&world_size));
}

// The notice of a SIGTERM that the application handles, once the rank is (or was already) inside `operation`.
static void write_notice(const char *operation) {
    char line[400];
    size_t length = 0;
    append_rank(line, &length, sizeof line);
    append_text(line, &length, sizeof line, " got SIGTERM while in ");
    append_text(line, &length, sizeof line, operation);
    append_text(line, &length, sizeof line,
                ": it stops after this step if every rank got it (Ctrl-C); if another rank failed, mpirun "
                "ends the job (its message names the rank)\n");
    ssize_t ignored = write(STDERR_FILENO, line, length);
    (void)ignored;
}

static void termination_handler(int signal_number) {
    const char *operation = atomic_load(&current_operation);
    if (application_handler != NULL) {
        // Inside a call now, or at the start of the next one (a rank whose peer died never returns from it).
        if (operation != NULL) write_notice(operation); else atomic_store(&pending_termination, 1);
        application_handler(signal_number);
        return;
    }
    char line[400];
    size_t length = 0;
    append_rank(line, &length, sizeof line);
    append_text(line, &length, sizeof line, " was terminated by SIGTERM ");
    if (operation != NULL) {
        append_text(line, &length, sizeof line, "while in ");
        append_text(line, &length, sizeof line, operation);
    } else {
        append_text(line, &length, sizeof line, "outside MPI calls");
    }
    append_text(line, &length, sizeof line,
                ": mpirun is ending the job, usually because another rank failed (mpirun's message names it)\n");
    ssize_t ignored = write(STDERR_FILENO, line, length);
    (void)ignored;
    // Die of the signal, as without the handler.
    signal(signal_number, SIG_DFL);
    raise(signal_number);
}

int nk_mpi_install_termination_notice(void) {
    static atomic_int installed = 0;
    if (atomic_load(&installed)) return 1;
    struct sigaction current;
    if (sigaction(SIGTERM, NULL, &current) != 0) return 0;
    if ((current.sa_flags & SA_SIGINFO) || current.sa_handler == SIG_IGN) return 0;   // not ours to wrap
    if (current.sa_handler != SIG_DFL) application_handler = current.sa_handler;
    struct sigaction notice;
    memset(&notice, 0, sizeof notice);
    notice.sa_handler = termination_handler;
    notice.sa_flags = current.sa_flags & SA_RESTART;
    sigemptyset(&notice.sa_mask);
    if (sigaction(SIGTERM, &notice, NULL) != 0) return 0;
    atomic_store(&installed, 1);
    return 1;
}

#else // Built without Open MPI: every call says what to install.

int nk_mpi_available(void) { return 0; }

int nk_mpi_init(int *rank, int *size) {
    if (rank) *rank = 0;
    if (size) *size = 0;
    return NK_MPI_ERR_UNAVAILABLE;
}

int nk_mpi_finalize(void) { return NK_MPI_ERR_UNAVAILABLE; }
long nk_mpi_max_chunk(void) { return 0; }
int nk_mpi_allreduce_sum_float(float *values, long count) { (void)values, (void)count; return NK_MPI_ERR_UNAVAILABLE; }
int nk_mpi_allreduce_sum_double(double *values, long count) {
    (void)values, (void)count;
    return NK_MPI_ERR_UNAVAILABLE;
}
int nk_mpi_allgather_double(const double *local, long count, double *all) {
    (void)local, (void)count, (void)all;
    return NK_MPI_ERR_UNAVAILABLE;
}
int nk_mpi_broadcast_float(float *values, long count, int root) {
    (void)values, (void)count, (void)root;
    return NK_MPI_ERR_UNAVAILABLE;
}
int nk_mpi_broadcast_bytes(void *bytes, long count, int root) {
    (void)bytes, (void)count, (void)root;
    return NK_MPI_ERR_UNAVAILABLE;
}
int nk_mpi_barrier(void) { return NK_MPI_ERR_UNAVAILABLE; }
void nk_mpi_abort(int code) { exit(code); }

void nk_mpi_error_string(int code, char *out, int capacity) {
    if (out == NULL || capacity <= 0) return;
    const char *text = bridge_error_text(code);
    if (text != NULL) snprintf(out, (size_t)capacity, "%s", text);
    else snprintf(out, (size_t)capacity, "MPI error %d", code);
}

int nk_mpi_install_termination_notice(void) { return 0; }

#endif
