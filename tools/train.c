/* gcache train: being written (issue 5) */
#include "gc_cli.h"
int gc_cli_train(int argc, char **argv) { (void)argc; (void)argv; return gc_cli_fail("train: not implemented yet"); }
