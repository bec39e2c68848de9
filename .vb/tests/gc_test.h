/* Test helpers: random tensors, finite-difference gradient checks, the CPU-vs-CUDA
 * comparison used by the gpu suite, and what the HF fixture tests (clip, dinov3, lora) share. */
#ifndef GC_TEST_H
#define GC_TEST_H

#include <check.h>
#include <math.h>
#include <stdio.h>

#include "../autograd/gc_autograd.h"
#include "../kernels/gc_ops.h"
#include "../models/gc_layers.h"
#include "../models/gc_params.h"
#include "../models/gc_safetensors.h"
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

/* ---- the HF fixture tests (tests/fixtures/<name>/) ---- */

/* Where and in what they run: GC_TEST_DEVICE=cuda gives GC_CUDA0 (else the CPU), GC_TEST_DTYPE=bf16
 * GC_BF16 (else f32). */
gc_device gc_test_device(void);
gc_dtype gc_test_dtype(void);

/* Prints "<what> fixtures on <device> in <dtype>, tolerance <tol>" and returns true, or, asked for a
 * missing GPU, prints "<what> on cuda: no CUDA device (skipped)" and returns false (exit 77). */
bool gc_test_fixtures_start(const char *what, double tolerance);

/* Tensors name_a and name_b of <dir>/inputs.safetensors, on the CPU (asserts both load). */
void gc_test_load_inputs(const char *dir, const char *name_a, gc_dtype dt_a, gc_tensor **a, const char *name_b,
                         gc_dtype dt_b, gc_tensor **b);

/* A fixture's float64 references, <dir>/ref.safetensors: outputs by name, gradients as grad.<param>. */
typedef struct gc_test_refs {
    gc_st_file *file; /* NULL: the fixture has none */
    double grad_rms;  /* RMS of every grad.* entry: the scale of the absolute floor */
    int n_grads;      /* grad.* entries */
} gc_test_refs;

/* Opens the references (asserts; `required` false: a fixture without ref.safetensors gets file NULL). */
void gc_test_refs_open(gc_test_refs *r, const char *dir, bool required);
void gc_test_refs_close(gc_test_refs *r);

/* ||got - ref|| / max(||ref||, floor), floor = 0.1 * grad_rms * sqrt(numel) for grad.* names, 0
 * otherwise: a gradient that is tiny (or zero in exact arithmetic) is judged against the model's
 * scale. A NULL `got` counts as zeros (a parameter that received no gradient). Asserts that the
 * reference exists and has got's size. */
double gc_test_ref_err(const gc_test_refs *r, const char *name, const gc_tensor *got);

/* gc_test_ref_err, printing "<label>: <name> rel err <e>" to stderr when it is not <= report_above. */
double gc_test_ref_check(const gc_test_refs *r, const char *label, const char *name, const gc_tensor *got,
                         double report_above);

/* The worst gc_test_ref_check over every parameter's gradient (grad.<name>); asserts that there is a
 * reference for each parameter and no more. */
double gc_test_ref_check_grads(const gc_test_refs *r, const gc_params *ps, const char *label, double report_above);

/* Every parameter's gradient, flattened in order into a new array (zeros where there is none); free() it. */
double *gc_test_flat_grads(const gc_params *ps);
/* y = fwd(ctx, x) on a tape of its own, then backward from the cotangent g (y must have g's
 * shape; label names the run in a failure), and y's values into out (f64, numel(g)). The
 * gradients stay in the leaves. */
void gc_test_tape_step(gc_tensor *(*fwd)(void *, gc_tensor *), void *ctx, gc_tensor *x, gc_tensor *g, double *out,
                       const char *label);

/* ||a - b|| / ||b|| over n doubles; INFINITY if a holds a non-finite value. */
double gc_test_vec_rel_err(const double *a, const double *b, int64_t n);

/* ||t|| in double over a host copy (asserts the copy succeeds). */
double gc_test_norm(const gc_tensor *t);

/* Writes src's tensors (a model directory) to <dir>/model.safetensors without `drop`, with `reshape`
 * given one more row (its next-to-last dimension), with a zero [3] tensor `extra`, and copies
 * config.json; NULL skips any of the three. For tests of checkpoints that do not fit. */
void gc_test_write_variant(const char *src, const char *dir, const char *drop, const char *reshape, const char *extra);
/* The same with the tensor `as_int` written as I32 zeros of its shape (a checkpoint whose
 * parameter has an integer dtype). */
void gc_test_write_variant_int(const char *src, const char *dir, const char *as_int);

/* For each case {json, want}: writes `prefix json}` as <dir>/config.json; load(dir, ctx)
 * must fail with GC_ERR_FORMAT and a message naming config.json and holding `want`. */
typedef gc_status (*gc_test_load_fn)(const char *dir, void *ctx);
void gc_test_expect_config_errors(const char *dir, const char *prefix, int n, const char *const (*cases)[2],
                                  gc_test_load_fn load, void *ctx);

/* A CLIP-style pre-LN block of width D, H heads, MLP F (quick GELU, biases everywhere, HF
 * names under "l.") in ps, on the test device and dtype; weights normal(0, 0.2) drawn
 * from seed, one stream per parameter name, layernorm weights around 1. lora: NULL, or
 * adapters on a frozen base. */
void gc_test_block_init(gc_params *ps, gc_block *b, int64_t D, int64_t H, int64_t F, const gc_lora_options *lora,
                        uint64_t seed);

/* A block input [B, L, D] on the test device and dtype, randn from seed; needs_grad: a
 * trainable leaf. */
gc_tensor *gc_test_block_input(int64_t B, int64_t L, int64_t D, uint64_t seed, bool needs_grad);

/* One fixture step at a chunk size: the worst relative error against the references. */
typedef double (*gc_test_step_fn)(void *fixture, int64_t chunk, const char *label);

/* step(fixture, chunk, "<what> chunk <chunk>") for each of the n chunk sizes; asserts
 * every error is below tol. */
void gc_test_check_chunks(gc_test_step_fn step, void *fixture, const char *what, const int64_t *chunks, int n, double tol);

/* rm -rf dir (asserts it succeeds). */
void gc_test_rm_rf(const char *dir);

/* A test case whose every test starts with no pending error (the error state is
 * per thread and outlives a test when Check does not fork, as in the GPU runs). */
TCase *gc_test_tcase(const char *name);

/* Runs a Check suite; returns the process exit status. */
int gc_test_run(Suite *s);

#endif
