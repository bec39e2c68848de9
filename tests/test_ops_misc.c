/* tests/test_ops_misc.c: being written */
#include "gc_test.h"
int main(void) { return 77; }
