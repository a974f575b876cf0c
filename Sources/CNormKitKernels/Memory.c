#include "NormKitMemory.h"

#include <stdlib.h> /* defines __GLIBC__ (through features.h) on glibc */
#if defined(__GLIBC__)
#include <malloc.h>
#endif

long nk_heap_bytes_in_use(void) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
    struct mallinfo2 info = mallinfo2();
    return (long)(info.uordblks + info.hblkhd);
#else
    return -1;
#endif
}
