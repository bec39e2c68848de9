/* tests/test_ops_elementwise.c: being written */
#include "gc_test.h"
int main(void) { return 77; }
