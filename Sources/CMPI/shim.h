/* Open MPI's C API, for NormKit's C bridge (Sources/CNormKitMPI); the include paths and -lmpi come from
   pkg-config's ompi-c. */
#include <mpi.h>
