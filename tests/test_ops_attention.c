/* tests/test_ops_attention.c: being written */
#include "gc_test.h"
int main(void) { return 77; }
