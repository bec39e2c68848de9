/* Test helpers: random tensors, finite-difference gradient checks, and the CPU-vs-CUDA
 * comparison used by the gpu suite. */
#ifndef GC_TEST_H
#define GC_TEST_H

#include <check.h>
#include <math.h>
#include <stdio.h>

#include "../autograd/gc_autograd.h"
#include "../kernels/gc_ops.h"
#include "../runtime/gc_rng.h"
#include "../runtime/gc_tensor.h"

/* New CPU tensors owned by the caller. Values from a Philox stream keyed by seed. */
gc_tensor *gc_test_randn(int ndim, const int64_t *shape, uint64_t seed, double scale);
gc_tensor *gc_test_uniform(int ndim, const int64_t *shape, uint64_t seed, double lo, double hi);
gc_tensor *gc_test_param(int ndim, const int64_t *shape, uint64_t seed, double scale); /* randn, requires grad */
gc_tensor *gc_test_ints(gc_dtype dt, int ndim, const int64_t *shape, uint64_t seed, int64_t lo, int64_t hi);

/* An op under test: maps inputs (some requiring grad, some not, e.g. indices) to an
 * output. Must use only its inputs (so it can run on any device). */
typedef gc_tensor *(*gc_test_fn)(gc_tensor *const *in, void *ctx);

typedef struct gc_gradcheck_opts {
    double eps;     /* central-difference step (default 1e-2) */
    double atol;    /* |analytic - numeric| <= atol + rtol |numeric| (defaults 1e-3, 1e-2) */
    double rtol;
    int max_probe;  /* elements probed per input (default 48) */
} gc_gradcheck_opts;

/* Checks d<out, R>/d in for every input that requires grad against central differences
 * (R a fixed random cotangent). Returns the worst error / allowed ratio: <= 1 passes.
 * Also fails (returns a huge value) if any analytic gradient is entirely zero while the
 * numeric one is not, or if f fails. */
double gc_test_gradcheck(gc_test_fn f, void *ctx, int n, gc_tensor *const *in, const gc_gradcheck_opts *opts);

#define GC_ASSERT_GRADCHECK(f, ctx, n, in, opts)                                                   \
    do {                                                                                           \
        double gc_r_ = gc_test_gradcheck((f), (ctx), (n), (in), (opts));                           \
        ck_assert_msg(gc_r_ <= 1.0, "gradient check of %s: error %.3g x the tolerance", #f, gc_r_); \
    } while (0)

/* Runs f forward and backward on the CPU (f32) and on CUDA (inputs cast to dt), and
 * returns the worst ||cuda - cpu|| / ||cpu|| over the output and every input gradient
 * (printing each). Returns -1 if no GPU is available, a huge value if anything fails. */
double gc_test_compare_devices(const char *label, gc_test_fn f, void *ctx, int n, gc_tensor *const *in_cpu, gc_dtype dt);

/* ||a - b|| / ||b|| over host copies (any devices/dtypes, equal shapes) */
double gc_test_rel_err(const gc_tensor *a, const gc_tensor *b);

/* A test case whose every test starts with no pending error (the error state is
 * per thread and outlives a test when Check does not fork, as in the GPU runs). */
TCase *gc_test_tcase(const char *name);

/* Runs a Check suite; returns the process exit status. */
int gc_test_run(Suite *s);

#endif
