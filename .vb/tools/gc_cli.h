/* Shared by the gcache subcommands (tools/). */
#ifndef GC_CLI_H
#define GC_CLI_H

#include "../runtime/gc_tensor.h"

int gc_cli_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2))); /* prints "gcache: ...", returns 1 */
int gc_cli_fail_status(const char *what);                                    /* the pending library error */
int gc_cli_parse_dtype(const char *s, gc_dtype *dt);
/* The integer value v of a flag in [lo, hi], else an error naming the flag (not an integer, past
 * int64, or outside the range: never clamped or wrapped); returns 1 on error. */
int gc_cli_parse_int(const char *flag, const char *v, int64_t lo, int64_t hi, int64_t *out);

int gc_cli_train(int argc, char **argv); /* tools/train.c */
int gc_cli_bench(int argc, char **argv); /* tools/bench.c */

#endif
