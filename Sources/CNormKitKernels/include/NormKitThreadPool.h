#ifndef NORMKIT_THREAD_POOL_H
#define NORMKIT_THREAD_POOL_H
/*
 * A small persistent thread pool for NormKit's kernels. `nk_parallel_for` runs fn(context, piece) for every piece
 * in 0..<pieces on the calling thread and up to threads − 1 workers: each takes the pieces of its own contiguous
 * block in order (the caller the first block, worker i the (i + 1)-th), then what is left of the others' blocks, so
 * that a piece's data tends to meet the same core's cache from call to call. Between calls a worker spins for a few tens of microseconds before it sleeps, so the back-to-back kernel
 * calls of a training step find it awake (waking a parked thread costs several microseconds, as long as a whole
 * normalization of a small tensor). The caller waits only for the workers that took up the call before every piece
 * was taken: one the scheduler has not run meanwhile (a busy core, a descheduled virtual CPU) is left out, not waited
 * for. One call runs at a time: a call from a worker, or while another call runs,
 * runs its pieces inline on the calling thread. There is one pool per process (its state is file-scope statics in
 * ThreadPool.c): every caller in the process shares it.
 */
#ifdef __cplusplus
extern "C" {
#endif

typedef void (*nk_piece_function)(void *context, long piece);

void nk_parallel_for(long pieces, int threads, nk_piece_function fn, void *context);

/* Microseconds a worker spins after a call before it sleeps (default 50; 0 sleeps at once). */
void nk_set_worker_spin_microseconds(long microseconds);

#ifdef __cplusplus
}
#endif
#endif
