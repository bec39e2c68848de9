/* tests/test_ops_norm.c: being written */
#include "gc_test.h"
int main(void) { return 77; }
