#include <cblas.h>
/* Provided by OpenBLAS; declared here in case the cblas.h in use does not declare it. */
void openblas_set_num_threads(int num_threads);
int openblas_get_num_threads(void);
