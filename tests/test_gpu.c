/* tests/test_gpu.c: being written */
#include "gc_test.h"
int main(void) { return 77; }
