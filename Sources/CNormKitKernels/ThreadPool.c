// See include/NormKitThreadPool.h.
#define _GNU_SOURCE
#include "NormKitThreadPool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#define NK_PAUSE() __builtin_ia32_pause()
#else
#define NK_PAUSE() ((void)0)
#endif

#define NK_MAX_WORKERS 63

static pthread_mutex_t run_lock = PTHREAD_MUTEX_INITIALIZER;   // one call at a time
static pthread_mutex_t sleep_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static int sleepers = 0;                                        // guarded by sleep_lock
static int started = 0;                                         // workers started; guarded by run_lock
// One step per call: (call number << 8) | workers taking part, so a worker decides from the value it saw alone.
static _Atomic long generation = 0;
// Each participant (0: the calling thread, 1 + i: worker i) owns a contiguous block of the call's pieces and claims
// them from its own cursor, in order; when its block is done it claims what is left of the others' (cursors on
// separate cache lines). A piece's data thus lands on the same core from call to call while the load allows.
typedef struct {
    _Alignas(64) _Atomic long next;
    long end;
} nk_block;
static nk_block blocks[NK_MAX_WORKERS + 1];
static long job_participants;
// Who works on the current call: (call number << 17) | CLOSED | JOINED × workers that joined it | workers that
// joined and have not finished. A worker joins only while the call is open, before it touches the call's pieces;
// when every piece is taken, the caller closes the call (unless every worker asked has joined) and waits only for
// the workers that joined. A worker the scheduler has not run since the call began (a descheduled virtual CPU, a
// core shared with another process) thus costs the call nothing: the caller takes its pieces, where waiting for it
// to check in would take a time slice (milliseconds).
#define RUNNING 0xFFL
#define JOINED (1L << 8)
#define CLOSED (1L << 16)
static _Atomic long participation = 0;
static _Atomic long spin_nanoseconds = 50000;
// The current call; written before `generation` is stored (release), read after it is seen (acquire).
static nk_piece_function job_fn;
static void *job_context;
static _Thread_local int is_worker = 0;

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long)t.tv_sec * 1000000000L + t.tv_nsec;
}

// Participant `me`'s own block first, then the others' remainders in turn.
static void run_pieces(long me) {
    for (long i = 0; i < job_participants; i++) {
        nk_block *block = &blocks[(me + i) % job_participants];
        for (;;) {
            long p = atomic_fetch_add_explicit(&block->next, 1, memory_order_relaxed);
            if (p >= block->end) break;
            job_fn(job_context, p);
        }
    }
}

// Joins call `call` if it is still the current call and open.
static int join(long call) {
    long state = atomic_load_explicit(&participation, memory_order_relaxed);
    while ((state >> 17) == call && !(state & CLOSED))
        if (atomic_compare_exchange_weak_explicit(&participation, &state, state + JOINED + 1, memory_order_acquire,
                                                  memory_order_relaxed))
            return 1;
    return 0;
}

static long first_generation[NK_MAX_WORKERS];  // the generation current when each worker was created

static void *worker_main(void *argument) {
    const long index = (long)argument;
    is_worker = 1;
    long seen = first_generation[index];  // not a fresh load: the call that started it may have begun already
    int participated = 0;
    for (;;) {
        long g = atomic_load_explicit(&generation, memory_order_acquire);
        if (g == seen) {
            // After taking part in a call, spin for a while (the next kernel call of a training step is usually
            // microseconds away), then sleep. A worker the last call did not need sleeps at once.
            if (participated) {
                const long until = now_ns() + atomic_load_explicit(&spin_nanoseconds, memory_order_relaxed);
                int spins = 0;
                while ((g = atomic_load_explicit(&generation, memory_order_acquire)) == seen) {
                    NK_PAUSE();
                    if ((++spins & 63) == 0 && now_ns() > until) break;
                }
            }
            if (g == seen) {
                pthread_mutex_lock(&sleep_lock);
                sleepers++;
                while ((g = atomic_load_explicit(&generation, memory_order_acquire)) == seen)
                    pthread_cond_wait(&wake, &sleep_lock);
                sleepers--;
                pthread_mutex_unlock(&sleep_lock);
            }
        }
        seen = g;
        participated = index < (g & 0xFF);  // only the first threads − 1 workers are asked (and spin after it)
        if (participated && join(g >> 8)) {
            run_pieces(index + 1);
            atomic_fetch_sub_explicit(&participation, 1, memory_order_release);
        }
    }
    return 0;
}

void nk_set_worker_spin_microseconds(long microseconds) {
    atomic_store(&spin_nanoseconds, microseconds > 0 ? microseconds * 1000 : 0);
}

void nk_parallel_for(long pieces, int threads, nk_piece_function fn, void *context) {
    if (threads > NK_MAX_WORKERS + 1) threads = NK_MAX_WORKERS + 1;
    if (threads <= 1 || pieces <= 1 || is_worker || pthread_mutex_trylock(&run_lock) != 0) {
        for (long p = 0; p < pieces; p++) fn(context, p);
        return;
    }
    while (started < threads - 1) {
        pthread_t thread;
        pthread_attr_t attributes;
        pthread_attr_init(&attributes);
        pthread_attr_setdetachstate(&attributes, PTHREAD_CREATE_DETACHED);
        first_generation[started] = atomic_load(&generation);
        int failed = pthread_create(&thread, &attributes, worker_main, (void *)(long)started);
        pthread_attr_destroy(&attributes);
        if (failed) break;
        started++;
    }
    const long workers = threads - 1 < started ? threads - 1 : started;
    job_fn = fn;
    job_context = context;
    job_participants = workers + 1;
    for (long i = 0; i < job_participants; i++) {
        atomic_store_explicit(&blocks[i].next, pieces * i / job_participants, memory_order_relaxed);
        blocks[i].end = pieces * (i + 1) / job_participants;
    }
    const long call = (atomic_load(&generation) >> 8) + 1;
    atomic_store_explicit(&participation, call << 17, memory_order_relaxed);
    atomic_store_explicit(&generation, (call << 8) | workers, memory_order_release);
    pthread_mutex_lock(&sleep_lock);
    if (sleepers > 0) pthread_cond_broadcast(&wake);
    pthread_mutex_unlock(&sleep_lock);
    run_pieces(0);
    // Every piece is taken: close the call to workers yet to join, then wait for the last pieces of those that
    // joined: spin for 20 µs, then yield between checks, so that one the scheduler has put behind this thread can
    // finish instead of waiting a time slice.
    if ((atomic_load_explicit(&participation, memory_order_relaxed) & (CLOSED - JOINED)) != workers * JOINED)
        atomic_fetch_or_explicit(&participation, CLOSED, memory_order_relaxed);
    const long until = now_ns() + 20000;
    for (int spins = 1; atomic_load_explicit(&participation, memory_order_acquire) & RUNNING; spins++) {
        if ((spins & 63) == 0 && now_ns() > until) sched_yield();
        else NK_PAUSE();
    }
    pthread_mutex_unlock(&run_lock);
}
