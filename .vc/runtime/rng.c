#include "gc_rng.h"

static _Thread_local gc_rand_context current = {0x5eedULL, 0, 0};

gc_rand_context gc_rand_context_get(void) { return current; }
void gc_rand_context_set(gc_rand_context ctx) { current = ctx; }
