/* gcache bench: being written (issue 4) */
#include "gc_cli.h"
int gc_cli_bench(int argc, char **argv) { (void)argc; (void)argv; return gc_cli_fail("bench: not implemented yet"); }
