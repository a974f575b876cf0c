#ifndef NORMKIT_MEMORY_H
#define NORMKIT_MEMORY_H
/*
 * What the process's heap holds: the bytes of every block malloc has handed out and not had back (in all of glibc's
 * arenas, and the large blocks it maps on their own), from mallinfo2(). A training step's memory is measured with it
 * (the difference across building and stepping a model), not guessed. -1 where the C library has no mallinfo2.
 */
#ifdef __cplusplus
extern "C" {
#endif

long nk_heap_bytes_in_use(void);

#ifdef __cplusplus
}
#endif
#endif
