/* The gpu suite: every op of kernels/gc_ops.h, forward and backward, on CUDA against the
 * CPU reference (gc_test_compare_devices: f32 and bf16 inputs, odd sizes and one
 * realistic size per op), plus the CUDA runtime itself: strided copies and fills in
 * every dtype, the caching allocator, and error paths. Exits 77 (skipped) without a GPU.
 *
 * Check forks a child per test; a CUDA context does not survive fork(), so the parent
 * never touches CUDA: availability is probed in a throw-away child, and each test's
 * child initialises CUDA itself. A kernel fault therefore fails only its own test. Within
 * a test every comparison runs and failures are collected, so one run lists them all. */
#include "gc_test.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef GC_WITH_CUDA
#include <cuda_runtime.h> /* the compute capability: gemm_sm90 must run on Hopper */
#endif

/* relative-norm tolerances (see gc_test_compare_devices) */
#define TOL32 1e-4      /* f32 */
#define TOL32_SOFT 2e-4 /* f32 softmax / attention */
#define TOL16 2e-2      /* bf16 inputs and outputs against the f32 CPU reference */
#define TOL16_SOFT 3e-2 /* bf16 where gradients cancel (norms, attention) */

/* ---------------------------------------------------------------- harness */

typedef struct cmp_log {
    int fails, total;
    char names[4096];
} cmp_log;

static void log_fail(cmp_log *lg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void log_fail(cmp_log *lg, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    printf("FAIL  %s\n", buf);
    fprintf(stderr, "FAIL  %s\n", buf);
    lg->fails++;
    size_t n = strlen(lg->names);
    if (n + 4 < sizeof lg->names) snprintf(lg->names + n, sizeof lg->names - n, "%s%s", n ? "; " : "", buf);
}

static void cmp(cmp_log *lg, const char *label, gc_test_fn f, void *ctx, int n, gc_tensor *const *in, gc_dtype dt, double tol)
{
    lg->total++;
    double e = gc_test_compare_devices(label, f, ctx, n, in, dt);
    if (!(e >= 0 && e <= tol)) log_fail(lg, "%s [%s]: rel err %.3g > tol %.3g", label, gc_dtype_name(dt), e, tol);
    gc_error_clear();
}

/* f32 and bf16 */
static void cmp2(cmp_log *lg, const char *label, gc_test_fn f, void *ctx, int n, gc_tensor *const *in, double tol32, double tol16)
{
    cmp(lg, label, f, ctx, n, in, GC_F32, tol32);
    cmp(lg, label, f, ctx, n, in, GC_BF16, tol16);
}

#define CMP_DONE(lg) ck_assert_msg((lg).fails == 0, "%d of %d comparison(s) failed: %s", (lg).fails, (lg).total, (lg).names)

/* inputs, owned by the current pool */
static gc_tensor *param(int nd, const int64_t *sh, uint64_t seed, double scale)
{
    return gc_pool_add(gc_test_param(nd, sh, seed, scale));
}
static gc_tensor *randn(int nd, const int64_t *sh, uint64_t seed, double scale)
{
    return gc_pool_add(gc_test_randn(nd, sh, seed, scale));
}
static gc_tensor *param_uniform(int nd, const int64_t *sh, uint64_t seed, double lo, double hi)
{
    gc_tensor *t = gc_pool_add(gc_test_uniform(nd, sh, seed, lo, hi));
    if (t) gc_tensor_requires_grad(t, true);
    return t;
}
static gc_tensor *ints(gc_dtype dt, int nd, const int64_t *sh, uint64_t seed, int64_t lo, int64_t hi)
{
    return gc_pool_add(gc_test_ints(dt, nd, sh, seed, lo, hi));
}
#define PARAM(seed, scale, ...) param(GC_NDIM(__VA_ARGS__), GC_SHAPE(__VA_ARGS__), seed, scale)
#define RANDN(seed, scale, ...) randn(GC_NDIM(__VA_ARGS__), GC_SHAPE(__VA_ARGS__), seed, scale)
#define PARAM_U(seed, lo, hi, ...) param_uniform(GC_NDIM(__VA_ARGS__), GC_SHAPE(__VA_ARGS__), seed, lo, hi)
#define INTS(dt, seed, lo, hi, ...) ints(dt, GC_NDIM(__VA_ARGS__), GC_SHAPE(__VA_ARGS__), seed, lo, hi)

/* ---------------------------------------------------------------- gemm (direct) */

typedef struct gemm_case {
    bool ta, tb;
    int64_t m, n, k, batch, pad; /* pad: extra leading-dim elements on A, B and C */
    float alpha, beta;
    bool bias, c_f32, b_shared;  /* b_shared: batch stride of B is 0 */
} gemm_case;

/* in: A, B, C0 (initial C, copied), [bias]. Not differentiable. */
static gc_tensor *f_gemm(gc_tensor *const *in, void *ctx)
{
    const gemm_case *c = ctx;
    gc_tensor *A = in[0], *B = in[1], *C0 = in[2];
    gc_dtype cdt = c->c_f32 ? GC_F32 : A->dtype;
    gc_tensor *y = gc_pool_add(gc_tensor_new(cdt, A->device, C0->ndim, C0->shape));
    if (!y || gc_tensor_copy_into(y, C0, false) != GC_OK) return NULL;
    gc_tensor *bias = c->bias ? gc_cast(in[3], cdt) : NULL; /* bias has C's dtype */
    if (c->bias && !bias) return NULL;
    int64_t batch = c->batch > 1 ? c->batch : 1;
    int64_t lda = (c->ta ? c->m : c->k) + c->pad, ldb = (c->tb ? c->k : c->n) + c->pad, ldc = c->n + c->pad;
    gc_gemm_args g = {
        .trans_a = c->ta, .trans_b = c->tb, .m = c->m, .n = c->n, .k = c->k,
        .a = gc_tensor_data(A), .lda = lda, .b = gc_tensor_data(B), .ldb = ldb, .c = gc_tensor_data(y), .ldc = ldc,
        .ab_dtype = A->dtype, .c_dtype = cdt, .alpha = c->alpha, .beta = c->beta,
        .batch = c->batch, .stride_a = gc_tensor_numel(A) / batch, .stride_b = c->b_shared ? 0 : gc_tensor_numel(B) / batch,
        .stride_c = gc_tensor_numel(y) / batch,
        .epilogue = c->bias ? GC_EPI_BIAS : GC_EPI_NONE, .bias = bias ? gc_tensor_data(bias) : NULL,
    };
    if (gc_gemm(A->device, &g) != GC_OK) return NULL;
    return y;
}

static void gemm_run(cmp_log *lg, const char *label, const gemm_case *c, uint64_t seed)
{
    int64_t batch = c->batch > 1 ? c->batch : 1, bb = c->b_shared ? 1 : batch;
    int64_t ra = c->ta ? c->k : c->m, ca = (c->ta ? c->m : c->k) + c->pad;
    int64_t rb = c->tb ? c->n : c->k, cb = (c->tb ? c->k : c->n) + c->pad;
    gc_tensor *in[4] = {
        randn(3, GC_SHAPE(batch, ra, ca), seed, 1.0),
        randn(3, GC_SHAPE(bb, rb, cb), seed + 1, 1.0),
        randn(3, GC_SHAPE(batch, c->m, c->n + c->pad), seed + 2, 1.0),
        randn(1, GC_SHAPE(c->n), seed + 3, 1.0),
    };
    gemm_case cc = *c;
    char l[160];
    snprintf(l, sizeof l, "gemm %s", label);
    cmp(lg, l, f_gemm, &cc, c->bias ? 4 : 3, in, GC_F32, TOL32);
    cmp(lg, l, f_gemm, &cc, c->bias ? 4 : 3, in, GC_BF16, TOL16);
    if (!c->c_f32) { /* bf16 operands, f32 output (f32 gradients of bf16 weights) */
        cc.c_f32 = true;
        snprintf(l, sizeof l, "gemm %s ->f32", label);
        cmp(lg, l, f_gemm, &cc, c->bias ? 4 : 3, in, GC_BF16, TOL16);
    }
}

static void gemm_cases(cmp_log *lgp)
{
    cmp_log lg = *lgp;
    char l[96];
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            gemm_case c = {.ta = ta, .tb = tb, .m = 37, .n = 23, .k = 19, .alpha = 1, .beta = 0};
            snprintf(l, sizeof l, "%s%s 37x23x19", ta ? "At" : "A", tb ? "Bt" : "B");
            gemm_run(&lg, l, &c, 10 + 4 * ta + 2 * tb);
            c.pad = 3; /* leading dims larger than the rows */
            snprintf(l, sizeof l, "%s%s 37x23x19 ld+3", ta ? "At" : "A", tb ? "Bt" : "B");
            gemm_run(&lg, l, &c, 20 + 4 * ta + 2 * tb);
            c.pad = 0;
            c.batch = 3;
            snprintf(l, sizeof l, "%s%s 37x23x19 batch 3", ta ? "At" : "A", tb ? "Bt" : "B");
            gemm_run(&lg, l, &c, 30 + 4 * ta + 2 * tb);
        }
    gemm_case acc = {.m = 29, .n = 31, .k = 17, .alpha = 0.5f, .beta = 1}; /* C += 0.5 AB */
    gemm_run(&lg, "alpha 0.5 beta 1", &acc, 40);
    gemm_case bias = {.tb = true, .m = 41, .n = 33, .k = 27, .alpha = 1, .beta = 0, .bias = true};
    gemm_run(&lg, "ABt +bias", &bias, 41);
    bias.beta = 1;
    gemm_run(&lg, "ABt +bias beta 1", &bias, 42);
    gemm_case bb = {.tb = true, .m = 13, .n = 11, .k = 9, .alpha = 1, .beta = 0, .batch = 4, .bias = true};
    gemm_run(&lg, "ABt batch 4 +bias", &bb, 43);
    gemm_case shared = {.m = 13, .n = 11, .k = 9, .alpha = 1, .beta = 0, .batch = 4, .b_shared = true};
    gemm_run(&lg, "AB batch 4, B shared (stride 0)", &shared, 44);
    gemm_case k0 = {.m = 5, .n = 7, .k = 0, .alpha = 1, .beta = 1, .bias = true};
    gemm_run(&lg, "k=0 beta 1 +bias", &k0, 45);
    gemm_case one = {.m = 1, .n = 1, .k = 1, .alpha = 1, .beta = 0};
    gemm_run(&lg, "1x1x1", &one, 46);
    /* realistic: a ViT-B MLP up-projection (8 x 197 tokens) and its weight gradient */
    gemm_case fwd = {.tb = true, .m = 8 * 197, .n = 3072, .k = 768, .alpha = 1, .beta = 0, .bias = true};
    gemm_run(&lg, "linear fwd 1576x3072x768 +bias", &fwd, 47);
    gemm_case wg = {.ta = true, .m = 3072, .n = 768, .k = 8 * 197, .alpha = 1, .beta = 1, .c_f32 = true};
    gemm_run(&lg, "weight grad At B 3072x768x1576 beta 1", &wg, 48);
    *lgp = lg;
}

START_TEST(test_gemm)
{
    gc_pool *p = gc_pool_push();
    cmp_log lg = {0};
    gemm_cases(&lg);
    gc_pool_pop(p);
    CMP_DONE(lg);
}
END_TEST

/* ---------------------------------------------------------------- gemm_sm90 */

static gc_tensor *gpu_leaf(gc_dtype dt, int nd, const int64_t *sh, uint64_t seed);


/* kernels/gemm_sm90.cu, Hopper's own GEMM with the activation epilogue. On a Hopper GPU it
 * must be taken (a probe GEMM it fits), elsewhere the test has nothing to check. */
static bool is_hopper(void)
{
    int major = 0, minor = 0;
    return cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0) == cudaSuccess &&
           cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0) == cudaSuccess && major == 9 && minor == 0;
}

static bool sm90_taken(void)
{
    static char dummy[1024] __attribute__((aligned(256)));
    gc_gemm_args g = {.trans_b = true, .m = 128, .n = 128, .k = 64, .a = dummy, .lda = 64, .b = dummy, .ldb = 64,
                      .c = dummy, .ldc = 128, .ab_dtype = GC_BF16, .c_dtype = GC_BF16, .alpha = 1.0f, .act = GC_ACT_GELU_ERF};
    return gc_gemm_fuses_act(GC_CUDA0, &g);
}

typedef struct linact_case {
    gc_act act;
    bool scale, res;
} linact_case;

/* in: x [B, L, in], w1 [F, in], b1 [F], w2 [out, F], b2 [out], s [out], res [B, L, out]:
 * res + s (act(x w1^T + b1) w2^T + b2) as the blocks run it (gc_linear_and_act, then
 * gc_linear_act_given); the CPU runs the activation as its own pass */
static gc_tensor *f_linact(gc_tensor *const *in, void *ctx)
{
    const linact_case *c = ctx;
    gc_tensor *a = NULL, *xb = NULL;
    gc_tensor *h = gc_linear_and_act(in[0], in[1], in[2], c->act, &a, &xb);
    return gc_linear_act_given(h, a, c->act, in[3], in[4], c->scale ? in[5] : NULL, c->res ? in[6] : NULL, xb);
}

static void linact_cases(cmp_log *lgp, const char *mode)
{
    cmp_log lg = *lgp;
    static const struct { gc_act act; const char *name; } acts[] = {
        {GC_ACT_GELU_ERF, "gelu"}, {GC_ACT_QUICK_GELU, "quick_gelu"}, {GC_ACT_GELU_TANH, "gelu_tanh"}, {GC_ACT_SILU, "silu"},
    };
    /* rows 201 (tiles of 128 with a tail), F 200 (a part tile of 128 and of 256), in 96 (a
     * half k step of 64, zeros from the TMA) */
    gc_tensor *in[7] = {
        PARAM(81, 1.0, 3, 67, 96), PARAM(82, 0.1, 200, 96), PARAM(83, 0.5, 200), PARAM(84, 0.07, 64, 200),
        PARAM(85, 0.5, 64),        PARAM(86, 0.5, 64),      PARAM(87, 1.0, 3, 67, 64),
    };
    char l[128];
    for (size_t i = 0; i < sizeof acts / sizeof acts[0]; i++)
        for (int v = 0; v < 3; v++) {
            linact_case c = {.act = acts[i].act, .scale = v == 2, .res = v >= 1};
            snprintf(l, sizeof l, "linear_and_act %s%s%s (sm90 %s)", acts[i].name, c.res ? " +res" : "", c.scale ? " *s" : "", mode);
            cmp2(&lg, l, f_linact, &c, 7, in, TOL32, TOL16);
        }
    *lgp = lg;
}

/* The MLP on cuBLASLt, no activation epilogue: fc1's bias taken by the activation's pass
 * and its gradient made by the activation's backward (kernels/elementwise.cu, act_bias):
 * every activation, F 200 (the fused kernels; 4 chunks of rows at 788 rows), F 100 (not a
 * multiple of 8: the general kernels composed), a frozen fc1 bias (no column sums) */
START_TEST(test_mlp_act_bias)
{
    gc_pool *p = gc_pool_push();
    cmp_log lg = {0};
    ck_assert_int_eq(gc_gemm_set_sm90("off"), GC_OK);
    linact_cases(&lg, "off");
    gc_tensor *big[7] = {
        PARAM(88, 1.0, 4, 197, 96), PARAM(89, 0.1, 200, 96), PARAM(90, 0.5, 200), PARAM(91, 0.07, 64, 200),
        PARAM(92, 0.5, 64),         PARAM(93, 0.5, 64),      PARAM(94, 1.0, 4, 197, 64),
    };
    linact_case c = {.act = GC_ACT_QUICK_GELU, .res = true};
    cmp2(&lg, "mlp quick_gelu [788, 96] F 200 +res", f_linact, &c, 7, big, TOL32, TOL16);
    c.act = GC_ACT_GELU_ERF, c.scale = true;
    cmp2(&lg, "mlp gelu [788, 96] F 200 +res *s", f_linact, &c, 7, big, TOL32, TOL16);
    big[2] = RANDN(90, 0.5, 200); /* frozen */
    cmp2(&lg, "mlp gelu [788, 96] F 200, fc1 bias frozen", f_linact, &c, 7, big, TOL32, TOL16);
    gc_tensor *odd[7] = {
        PARAM(95, 1.0, 3, 67, 96), PARAM(96, 0.1, 100, 96), PARAM(97, 0.5, 100), PARAM(98, 0.07, 64, 100),
        PARAM(99, 0.5, 64),        PARAM(100, 0.5, 64),     PARAM(101, 1.0, 3, 67, 64),
    };
    c = (linact_case){.act = GC_ACT_QUICK_GELU, .res = true};
    cmp2(&lg, "mlp quick_gelu [201, 96] F 100 +res", f_linact, &c, 7, odd, TOL32, TOL16);
    gc_gemm_set_sm90("off");
    gc_pool_pop(p);
    CMP_DONE(lg);
}
END_TEST

/* the same values (finite, as bf16 outputs read back) */
static bool same_bits(gc_tensor *a, gc_tensor *b) { return gc_test_rel_err(a, b) == 0.0; }

START_TEST(test_gemm_sm90)
{
    gc_pool *p = gc_pool_push();
    cmp_log lg = {0};
    ck_assert_int_eq(gc_gemm_set_sm90("act"), GC_OK); /* off by default */
    const bool hopper = is_hopper(), taken = sm90_taken();
    printf("gemm_sm90: %s GPU, the kernel %s\n", hopper ? "a Hopper" : "not a Hopper", taken ? "taken" : "not taken");
    ck_assert_msg(hopper == taken, "gemm_sm90: Hopper %d but the kernel taken %d", hopper, taken);
    if (!taken) {
        gc_pool_pop(p);
        return;
    }
    /* every direct case and more with every fitting GEMM on the kernel, both tile widths */
    ck_assert_int_eq(gc_gemm_set_sm90("all"), GC_OK);
    /* ping-pong (the default), and cooperative with both tile widths; no clusters (the
     * default) and clusters of 2 */
    static const char *const modes[][3] = {
        {"pingpong", "auto", "1"}, {"pingpong", "auto", "2"}, {"coop", "128", "2"}, {"coop", "256", "2"}, {"coop", "256", "1"},
    };
    for (size_t bi = 0; bi < sizeof modes / sizeof modes[0]; bi++) {
        ck_assert_int_eq(gc_gemm_set_sm90_tuning(modes[bi][0], modes[bi][1], modes[bi][2]), GC_OK);
        gemm_cases(&lg);
        gemm_case c1 = {.tb = true, .m = 201, .n = 200, .k = 96, .alpha = 1, .beta = 0, .bias = true};
        gemm_run(&lg, "sm90 201x200x96 +bias", &c1, 90);
        c1.beta = 1;
        gemm_run(&lg, "sm90 201x200x96 +bias beta 1", &c1, 91);
        gemm_case c2 = {.tb = true, .m = 130, .n = 264, .k = 520, .pad = 8, .alpha = 1, .beta = 1};
        gemm_run(&lg, "sm90 130x264x520 ld+8 beta 1", &c2, 92);
        gemm_case c3 = {.tb = true, .m = 3 * 197, .n = 768, .k = 3072, .alpha = 1, .beta = 0, .bias = true};
        gemm_run(&lg, "sm90 591x768x3072 +bias", &c3, 93);
        gemm_case c4 = {.tb = true, .m = 67, .n = 202, .k = 64, .alpha = 1, .beta = 1, .bias = true}; /* rows of 404 bytes: no TMA store */
        gemm_run(&lg, "sm90 67x202x64 +bias beta 1", &c4, 97);
        /* more cluster tiles than the GPU holds clusters: each walks several; 33 row blocks */
        gemm_case c5 = {.tb = true, .m = 4100, .n = 1040, .k = 136, .alpha = 1, .beta = 0, .bias = true};
        gemm_run(&lg, "sm90 4100x1040x136 +bias", &c5, 98);
        char mode[48];
        snprintf(mode, sizeof mode, "%s %s cluster %s", modes[bi][0], modes[bi][1], modes[bi][2]);
        linact_cases(&lg, mode);
    }
    ck_assert_int_eq(gc_gemm_set_sm90_tuning(NULL, NULL, NULL), GC_OK);
    ck_assert_int_ne(gc_gemm_set_sm90_tuning("fast", NULL, NULL), GC_OK);
    gc_error_clear();
    ck_assert_int_eq(gc_gemm_set_sm90("act"), GC_OK);
    linact_cases(&lg, "act");

    /* no grad: the epilogue writes act(v) alone; with the tape, v and act(v): the same bits,
     * and the same as the activation's own pass over v */
    for (int act = GC_ACT_GELU_ERF; act <= GC_ACT_SILU; act++) {
        gc_tensor *x = gpu_leaf(GC_BF16, 2, GC_SHAPE(1000, 256), 94), *w = gpu_leaf(GC_BF16, 2, GC_SHAPE(1024, 256), 95);
        gc_tensor *b = gpu_leaf(GC_BF16, 1, GC_SHAPE(1024), 96);
        gc_tensor *a0 = NULL, *a1 = NULL, *xb0 = NULL, *xb1 = NULL; /* (the epilogue adds b: NULL) */
        bool prev = gc_grad_set_enabled(false);
        gc_tensor *h0 = gc_linear_and_act(x, w, b, (gc_act)act, &a0, &xb0);
        gc_grad_set_enabled(prev);
        gc_tape *tape = gc_tape_init();
        gc_tape_begin(tape);
        gc_tensor *h1 = gc_linear_and_act(x, w, b, (gc_act)act, &a1, &xb1);
        gc_tape_end(tape);
        gc_tape_free(tape);
        bool prev2 = gc_grad_set_enabled(false);
        gc_tensor *a2 = h1 ? gc_activation(h1, (gc_act)act) : NULL;
        gc_grad_set_enabled(prev2);
        lg.total++;
        if (!h0 || h0 != a0 || !h1 || !a1 || h1 == a1 || xb0 || xb1 || !same_bits(a0, a1) || !same_bits(a1, a2))
            log_fail(&lg, "linear_and_act act %d: no-grad %p/%p, taped %p/%p, bits %d %d (%s)", act, (void *)h0, (void *)a0,
                     (void *)h1, (void *)a1, a0 && a1 ? same_bits(a0, a1) : -1, a1 && a2 ? same_bits(a1, a2) : -1,
                     gc_error_message());
        gc_error_clear();
    }
    gc_pool_pop(p);
    CMP_DONE(lg);
}
END_TEST

int gc_cuda_gemm_sm90_fit(int cluster); /* kernels/gemm_sm90.cu, for measuring it */

/* The forward GEMMs of the models' linears, cuBLASLt against gemm_sm90.cu, plain (+bias)
 * and with the activation: cuBLASLt and a pass of its own, against the epilogue. */
static double time_ms(int reps, gc_tensor *(*f)(void *), void *ctx)
{
    gc_timer *t0 = gc_timer_create(GC_CUDA0), *t1 = gc_timer_create(GC_CUDA0);
    for (int r = 0; r < 2; r++) {
        gc_pool *it = gc_pool_push();
        f(ctx);
        gc_pool_pop(it);
    }
    gc_timer_record(t0);
    for (int r = 0; r < reps; r++) {
        gc_pool *it = gc_pool_push();
        f(ctx);
        gc_pool_pop(it);
    }
    gc_timer_record(t1);
    double ms = -1;
    if (gc_timer_elapsed_ms(t0, t1, &ms) != GC_OK) ms = -1;
    gc_timer_free(t0);
    gc_timer_free(t1);
    return ms / reps;
}

typedef struct bench_lin {
    gc_tensor *x, *w, *b;
    gc_act act;
} bench_lin;

static gc_tensor *run_linear(void *ctx)
{
    bench_lin *c = ctx;
    return gc_linear(c->x, c->w, c->b);
}
static gc_tensor *run_linear_then_act(void *ctx)
{
    bench_lin *c = ctx;
    return gc_activation(gc_linear(c->x, c->w, c->b), c->act);
}
static gc_tensor *run_linear_and_act(void *ctx)
{
    bench_lin *c = ctx;
    gc_tensor *a = NULL, *xb = NULL;
    return gc_linear_and_act(c->x, c->w, c->b, c->act, &a, &xb);
}

START_TEST(test_gemm_sm90_bench)
{
    gc_pool *p = gc_pool_push();
    cmp_log lg = {0};
    gc_gemm_set_sm90("act");
    if (!sm90_taken()) {
        printf("gemm_sm90_bench: not a Hopper GPU\n");
        gc_pool_pop(p);
        return;
    }
    static const struct { const char *name; int64_t m, n, k; gc_act act; } shapes[] = {
        {"DINOv3 chunk 64: q/k/v/o", 64 * 201, 768, 768, GC_ACT_NONE},
        {"DINOv3 chunk 64: fc1", 64 * 201, 3072, 768, GC_ACT_GELU_ERF},
        {"DINOv3 chunk 64: fc2", 64 * 201, 768, 3072, GC_ACT_NONE},
        {"B/16 chunk 256: q/k/v/o", 256 * 197, 768, 768, GC_ACT_NONE},
        {"B/16 chunk 256: fc1", 256 * 197, 3072, 768, GC_ACT_QUICK_GELU},
        {"B/16 chunk 256: fc2", 256 * 197, 768, 3072, GC_ACT_NONE},
        {"text chunk 256: fc1", 256 * 77, 2048, 512, GC_ACT_QUICK_GELU},
        {"text chunk 256: fc2", 256 * 77, 512, 2048, GC_ACT_NONE},
        {"B/32 chunk 256: fc1", 256 * 50, 3072, 768, GC_ACT_QUICK_GELU},
    };
    printf("gemm_sm90_bench: one wave holds %d CTAs, or %d clusters of 2\n", gc_cuda_gemm_sm90_fit(1), gc_cuda_gemm_sm90_fit(2));
    bool prev = gc_grad_set_enabled(false);
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        gc_pool *ps = gc_pool_push();
        bench_lin c = {
            .x = gpu_leaf(GC_BF16, 2, GC_SHAPE(shapes[i].m, shapes[i].k), 100 + i),
            .w = gpu_leaf(GC_BF16, 2, GC_SHAPE(shapes[i].n, shapes[i].k), 200 + i),
            .b = gpu_leaf(GC_BF16, 1, GC_SHAPE(shapes[i].n), 300 + i),
            .act = shapes[i].act,
        };
        const double tflop = 2e-9 * (double)shapes[i].m * (double)shapes[i].n * (double)shapes[i].k; /* per ms */
        gc_gemm_set_sm90("act");
        gc_tensor *y_lt = gc_pool_add(gc_tensor_to(run_linear(&c), GC_CUDA0, GC_F32));
        const double lt = time_ms(20, run_linear, &c);
        gc_gemm_set_sm90("all");
        gc_tensor *v = run_linear(&c);
        gc_tensor *y_90 = gc_pool_add(gc_tensor_to(v, GC_CUDA0, GC_F32));
        const double s90 = time_ms(20, run_linear, &c);
        gc_gemm_set_sm90_tuning("pingpong", NULL, "2");
        const double s90c2 = time_ms(20, run_linear, &c);
        gc_gemm_set_sm90_tuning("coop", NULL, NULL);
        const double coop = time_ms(20, run_linear, &c);
        gc_gemm_set_sm90_tuning(NULL, NULL, NULL);
        const double err = y_lt && y_90 ? gc_test_rel_err(y_lt, y_90) : -1;
        printf("gemm %-26s [%lld x %lld x %lld] +bias: cuBLASLt %.3f ms (%.0f TFLOP/s), sm90 ping-pong %.3f ms (%.0f), "
               "clusters of 2 %.3f ms (%.0f), cooperative %.3f ms (%.0f), rel diff %.2e\n",
               shapes[i].name, (long long)shapes[i].m, (long long)shapes[i].n, (long long)shapes[i].k, lt, tflop / lt, s90,
               tflop / s90, s90c2, tflop / s90c2, coop, tflop / coop, err);
        lg.total++;
        if (!(lt > 0 && s90 > 0 && err >= 0 && err < 1e-2)) log_fail(&lg, "%s: timing or agreement failed (%s)", shapes[i].name, gc_error_message());
        if (shapes[i].act != GC_ACT_NONE) {
            gc_gemm_set_sm90("off");
            const double sep = time_ms(20, run_linear_then_act, &c);
            gc_gemm_set_sm90("act");
            const double fused = time_ms(20, run_linear_and_act, &c);
            /* the epilogue's act(v) is the activation pass over the same kernel's v, bit for bit */
            gc_gemm_set_sm90("all");
            gc_tensor *sep90 = gc_activation(run_linear(&c), c.act);
            gc_gemm_set_sm90("act");
            gc_tensor *fz = run_linear_and_act(&c);
            printf("gemm %-26s + activation: cuBLASLt and its pass %.3f ms, sm90 epilogue %.3f ms (%.2fx)%s\n", shapes[i].name,
                   sep, fused, sep / fused, same_bits(sep90, fz) ? "" : "  BITS DIFFER");
            lg.total++;
            if (!(sep > 0 && fused > 0) || !same_bits(sep90, fz)) log_fail(&lg, "%s + activation: failed (%s)", shapes[i].name, gc_error_message());
        }
        gc_error_clear();
        gc_pool_pop(ps);
    }
    gc_grad_set_enabled(prev);
    gc_gemm_set_sm90("off");
    gc_pool_pop(p);
    CMP_DONE(lg);
}
END_TEST

/* GC_GEMM_PLAN: the cases above with every shape timed and written down, then again with
 * every algorithm read back from the file (each against the CPU); one GEMM gives the same
 * bits both times. A file of another GPU is started over; a malformed line is an error
 * that names the file. */
static gc_tensor *plan_probe(void)
{
    gc_tensor *a = gpu_leaf(GC_BF16, 2, GC_SHAPE(1576, 768), 61), *w = gpu_leaf(GC_BF16, 2, GC_SHAPE(3072, 768), 62);
    gc_tensor *b = gpu_leaf(GC_BF16, 1, GC_SHAPE(3072), 63);
    gc_tensor *y = gc_linear(a, w, b);
    return y ? gc_pool_add(gc_tensor_to(y, GC_CPU, GC_F32)) : NULL;
}

static int file_lines(const char *path, char *first, size_t n)
{
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[1024];
    int c = 0;
    while (fgets(line, sizeof line, f)) {
        if (c == 0 && first && n) {
            size_t l = strlen(line);
            if (l >= n) l = n - 1;
            memcpy(first, line, l);
            first[l] = 0;
        }
        c++;
    }
    fclose(f);
    return c;
}

START_TEST(test_gemm_plan)
{
    gc_pool *p = gc_pool_push();
    cmp_log lg = {0};
#define EXPECT(c, ...) do { lg.total++; if (!(c)) log_fail(&lg, __VA_ARGS__); } while (0)
    char path[] = "/tmp/gc_gemm_plan_XXXXXX", sum[700], head[512];
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    FILE *f = fopen(path, "w"); /* another GPU's file: started over */
    fprintf(f, "# gradcache gemm plan: some other GPU sm_80 cuBLASLt 1\n0 0 0 0 0 1 1 1 1 1 1 1 0 0 0 4 4 4 0 : 0 0 0 0 0 0 0 0\n");
    fclose(f);
    setenv("GC_GEMM_PLAN", path, 1);
    gc_gemm_plan_reset();
    gemm_cases(&lg);
    gc_tensor *y1 = plan_probe();
    gc_gemm_plan_summary(sum, sizeof sum);
    int timed = -1, loaded = -1;
    const char *at = strstr(sum, ": ");
    EXPECT(at && sscanf(at, ": %d shapes from the file, %d timed now", &loaded, &timed) == 2 && loaded == 0 && timed >= 10,
           "first pass: %s", sum);
    int lines = file_lines(path, head, sizeof head);
    EXPECT(lines == timed + 1 && strstr(head, "# gradcache gemm plan: ") && !strstr(head, "some other GPU"),
           "the file: %d lines for %d timed shapes, header %s", lines, timed, head);
    printf("%-40s first pass: %s\n", "gemm plan", sum);

    gc_gemm_plan_reset(); /* a new run: everything from the file */
    gemm_cases(&lg);
    gc_tensor *y2 = plan_probe();
    gc_gemm_plan_summary(sum, sizeof sum);
    int loaded2 = -1, timed2 = -1;
    at = strstr(sum, ": ");
    EXPECT(at && sscanf(at, ": %d shapes from the file, %d timed now", &loaded2, &timed2) == 2 && loaded2 == timed && timed2 == 0,
           "second pass: %s (first timed %d)", sum, timed);
    EXPECT(y1 && y2 && gc_test_rel_err(y2, y1) == 0, "the same GEMM from the file gave other bits");
    printf("%-40s second pass: %s; the same bits\n", "gemm plan", sum);

    f = fopen(path, "a"); /* a malformed line */
    fprintf(f, "1 2 3 : zz\n");
    fclose(f);
    gc_gemm_plan_reset();
    gc_tensor *y3 = plan_probe();
    EXPECT(!y3 && strstr(gc_error_message(), path) && strstr(gc_error_message(), "line"), "a malformed plan: %s",
           gc_error_message());
    gc_error_clear();
    unsetenv("GC_GEMM_PLAN");
    gc_gemm_plan_reset();
    remove(path);
#undef EXPECT
    gc_pool_pop(p);
    CMP_DONE(lg);
}
END_TEST

/* ---------------------------------------------------------------- matmul, linear */

static gc_tensor *f_matmul(gc_tensor *const *in, void *ctx)
{
    const int *t = ctx;
    return gc_matmul(in[0], in[1], t[0], t[1]);
}
static gc_tensor *f_linear(gc_tensor *const *in, void *ctx)
{
    return gc_linear(in[0], in[1], *(const int *)ctx ? in[2] : NULL);
}
/* ctx: {act, inner}; inner: x = 0.75 in[0], a fresh gradient of x's dtype (else the leaf's f32, +=) */
static gc_tensor *f_linear_act(gc_tensor *const *in, void *ctx)
{
    const int *c = ctx;
    return gc_linear_act(c[1] ? gc_scale(in[0], 0.75) : in[0], (gc_act)c[0], in[1], in[2]);
}

/* ctx: act or -1 (plain linear); the residual in[3] (scaled: a gradient of its own) */
static gc_tensor *f_linear_res(gc_tensor *const *in, void *ctx)
{
    int act = *(const int *)ctx;
    gc_tensor *res = gc_scale(in[3], 1.5);
    return act < 0 ? gc_linear_res(in[0], in[1], in[2], res) : gc_linear_act_res(in[0], (gc_act)act, in[1], in[2], res);
}

/* ctx: {act or -1, inner}; in: x, w, b, s, r. The same w, b, s twice (on x and 0.5 x: the
 * gradients accumulate); inner: w and s scaled first, so their gradients are intermediates
 * of the run's dtype (bf16 stores), not the leaves' f32 */
static gc_tensor *f_linear_scaled(gc_tensor *const *in, void *ctx)
{
    const int *c = ctx;
    gc_tensor *w = c[1] ? gc_scale(in[1], 0.5) : in[1], *sc = c[1] ? gc_scale(in[3], 0.75) : in[3];
    gc_tensor *y = NULL;
    for (int k = 0; k < 2; k++) {
        gc_tensor *x = k ? gc_scale(in[0], 0.5) : in[0], *res = k ? NULL : in[4];
        gc_tensor *t = c[0] < 0 ? gc_linear_scaled(x, w, in[2], sc, res) : gc_linear_act_scaled(x, (gc_act)c[0], w, in[2], sc, res);
        y = k ? gc_add(y, t) : t;
    }
    return y;
}

START_TEST(test_matmul_linear)
{
    gc_pool *p = gc_pool_push();
    cmp_log lg = {0};
    char l[96];
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            int t[2] = {ta, tb};
            gc_tensor *in[2] = {ta ? PARAM(1, 1.0, 3, 19, 37) : PARAM(1, 1.0, 3, 37, 19),
                                tb ? PARAM(2, 1.0, 3, 23, 19) : PARAM(2, 1.0, 3, 19, 23)};
            snprintf(l, sizeof l, "matmul [3,37,19]%s @ [3,19,23]%s", ta ? "^T" : "", tb ? "^T" : "");
            cmp2(&lg, l, f_matmul, t, 2, in, TOL32, TOL16);
        }
    {
        int t[2] = {0, 0};
        gc_tensor *in[2] = {PARAM(3, 1.0, 2, 3, 17, 9), PARAM(4, 1.0, 2, 3, 9, 11)};
        cmp2(&lg, "matmul 4-D [2,3,17,9]@[2,3,9,11]", f_matmul, t, 2, in, TOL32, TOL16);
        gc_tensor *sh[2] = {PARAM(5, 1.0, 3, 37, 19), PARAM(6, 1.0, 23, 19)};
        int tt[2] = {0, 1};
        cmp2(&lg, "matmul [3,37,19]@[23,19]^T shared", f_matmul, tt, 2, sh, TOL32, TOL16);
        gc_tensor *sh2[2] = {PARAM(7, 1.0, 3, 37, 19), PARAM(8, 1.0, 19, 23)};
        cmp2(&lg, "matmul [3,37,19]@[19,23] shared", f_matmul, t, 2, sh2, TOL32, TOL16);
        /* realistic: attention scores of 8 x 12 heads */
        gc_tensor *at[2] = {PARAM(9, 1.0, 96, 197, 64), PARAM(10, 1.0, 96, 197, 64)};
        cmp2(&lg, "matmul [96,197,64]@[96,197,64]^T", f_matmul, tt, 2, at, TOL32, TOL16);
    }
    int with_b = 1, no_b = 0;
    gc_tensor *lin[3] = {PARAM(11, 1.0, 2, 37, 19), PARAM(12, 0.3, 23, 19), PARAM(13, 1.0, 23)};
    cmp2(&lg, "linear [2,37,19]->23 +b", f_linear, &with_b, 3, lin, TOL32, TOL16);
    cmp2(&lg, "linear [2,37,19]->23", f_linear, &no_b, 2, lin, TOL32, TOL16);
    gc_tensor *one[3] = {PARAM(14, 1.0, 1, 1), PARAM(15, 1.0, 1, 1), PARAM(16, 1.0, 1)};
    cmp2(&lg, "linear [1,1]->1 +b", f_linear, &with_b, 3, one, TOL32, TOL16);
    /* many rows: the bias gradient's two-pass column sum */
    gc_tensor *tall[3] = {PARAM(17, 1.0, 1000003, 8), PARAM(18, 0.3, 6, 8), PARAM(19, 1.0, 6)};
    cmp2(&lg, "linear [1000003,8]->6 +b", f_linear, &with_b, 3, tall, TOL32, TOL16);
    /* outputs a multiple of 8: the 16-byte column sum, one pass (120 rows) and two passes
     * (5000 rows, a last block of 8 of its 64 columns; 1000003 rows, 3907 partial rows) */
    gc_tensor *v1[3] = {PARAM(23, 1.0, 3, 40, 24), PARAM(24, 0.3, 16, 24), PARAM(25, 1.0, 16)};
    cmp2(&lg, "linear [3,40,24]->16 +b", f_linear, &with_b, 3, v1, TOL32, TOL16);
    gc_tensor *v2[3] = {PARAM(26, 1.0, 5000, 12), PARAM(27, 0.3, 136, 12), PARAM(28, 1.0, 136)};
    cmp2(&lg, "linear [5000,12]->136 +b", f_linear, &with_b, 3, v2, TOL32, TOL16);
    gc_tensor *v3[3] = {tall[0], PARAM(29, 0.3, 8, 8), PARAM(30, 1.0, 8)};
    cmp2(&lg, "linear [1000003,8]->8 +b", f_linear, &with_b, 3, v3, TOL32, TOL16);
    /* fc2 of an MLP: the activation recomputed in backward, its gradient written into x's */
    gc_tensor *la[3] = {PARAM(31, 2.0, 3, 40, 64), PARAM(32, 0.1, 24, 64), PARAM(33, 1.0, 24)};
    for (int i = 0; i < 4; i++) {
        int c[2] = {i < 2 ? GC_ACT_GELU_ERF : GC_ACT_QUICK_GELU, i % 2};
        snprintf(l, sizeof l, "linear_act %s [3,40,64]->24 +b%s", i < 2 ? "gelu_erf" : "quick_gelu", i % 2 ? ", inner x" : "");
        cmp2(&lg, l, f_linear_act, c, 3, la, TOL32, TOL16);
    }
    /* the residual as the GEMM's C input (a separate input from the output), with and
     * without the activation */
    gc_tensor *lr[4] = {PARAM(34, 1.0, 3, 40, 64), PARAM(35, 0.1, 24, 64), PARAM(36, 1.0, 24), PARAM(37, 1.0, 3, 40, 24)};
    int plain = -1, qg = GC_ACT_QUICK_GELU;
    cmp2(&lg, "linear_res [3,40,64]->24 +b +r", f_linear_res, &plain, 4, lr, TOL32, TOL16);
    cmp2(&lg, "linear_act_res quick_gelu [3,40,64]->24 +b +r", f_linear_res, &qg, 4, lr, TOL32, TOL16);
    gc_tensor *lrb[4] = {PARAM(38, 1.0, 8, 197, 3072), PARAM(39, 0.02, 768, 3072), PARAM(40, 0.1, 768),
                         PARAM(41, 1.0, 8, 197, 768)};
    cmp2(&lg, "linear_act_res quick_gelu [8,197,3072]->768 +b +r", f_linear_res, &qg, 4, lrb, TOL32, TOL16);
    /* a layer scale folded into the weights (DINOv3's out-projection and fc2) */
    gc_tensor *ls[5] = {PARAM(42, 1.0, 3, 40, 64), PARAM(43, 0.1, 24, 64), PARAM(44, 1.0, 24), PARAM(45, 1.0, 24),
                        PARAM(46, 1.0, 3, 40, 24)};
    for (int i = 0; i < 4; i++) {
        int c[2] = {i < 2 ? -1 : GC_ACT_GELU_ERF, i % 2};
        snprintf(l, sizeof l, "linear%s_scaled [3,40,64]->24 +b +s +r%s", i < 2 ? "" : "_act gelu_erf", i % 2 ? ", inner w s" : "");
        cmp2(&lg, l, f_linear_scaled, c, 5, ls, TOL32, TOL16);
    }
    gc_tensor *lsb[5] = {PARAM(47, 1.0, 8, 201, 3072), PARAM(48, 0.02, 768, 3072), PARAM(49, 0.1, 768), PARAM(50, 0.5, 768),
                         PARAM(51, 1.0, 8, 201, 768)};
    int ge[2] = {GC_ACT_GELU_ERF, 0};
    cmp2(&lg, "linear_act_scaled gelu_erf [8,201,3072]->768 +b +s +r", f_linear_scaled, ge, 5, lsb, TOL32, TOL16);
    /* realistic: ViT-B MLP up-projection on 8 x 197 tokens */
    gc_tensor *big[3] = {PARAM(20, 1.0, 8, 197, 768), PARAM(21, 0.03, 3072, 768), PARAM(22, 0.1, 3072)};
    cmp2(&lg, "linear [8,197,768]->3072 +b", f_linear, &with_b, 3, big, TOL32, TOL16);
    gc_pool_pop(p);
    CMP_DONE(lg);
}
END_TEST

/* ---------------------------------------------------------------- elementwise */

static gc_tensor *f_add(gc_tensor *const *in, void *ctx) { (void)ctx; return gc_add(in[0], in[1]); }
static gc_tensor *f_sub(gc_tensor *const *in, void *ctx) { (void)ctx; return gc_sub(in[0], in[1]); }
static gc_tensor *f_mul(gc_tensor *const *in, void *ctx) { (void)ctx; return gc_mul(in[0], in[1]); }
static gc_tensor *f_scale(gc_tensor *const *in, void *ctx) { return gc_scale(in[0], *(const double *)ctx); }
static gc_tensor *f_exp(gc_tensor *const *in, void *ctx) { (void)ctx; return gc_exp(in[0]); }
static gc_tensor *f_act(gc_tensor *const *in, void *ctx) { return gc_activation(in[0], *(const gc_act *)ctx); }
/* ctx non-NULL: a = 0.5 in[1], a fresh gradient of a's dtype (else the leaf's f32, +=) */
static gc_tensor *f_add_scaled(gc_tensor *const *in, void *ctx)
{
    return gc_add_scaled(in[0], ctx ? gc_scale(in[1], 0.5) : in[1], in[2]);
}

START_TEST(test_elementwise)
{
    gc_pool *p = gc_pool_push();
    cmp_log lg = {0};
    struct { const char *name; gc_test_fn f; } bin[3] = {{"add", f_add}, {"sub", f_sub}, {"mul", f_mul}};
    char l[128];
    for (int i = 0; i < 3; i++) {
        uint64_t s = 100 + 10 * (uint64_t)i;
        gc_tensor *same[2] = {PARAM(s, 1.0, 37, 53), PARAM(s + 1, 1.0, 37, 53)};
        snprintf(l, sizeof l, "%s [37,53] [37,53]", bin[i].name);
        cmp2(&lg, l, bin[i].f, NULL, 2, same, TOL32, TOL16);
        gc_tensor *bc1[2] = {PARAM(s + 2, 1.0, 3, 1, 5), PARAM(s + 3, 1.0, 4, 5)};
        snprintf(l, sizeof l, "%s [3,1,5] [4,5]", bin[i].name);
        cmp2(&lg, l, bin[i].f, NULL, 2, bc1, TOL32, TOL16);
        gc_tensor *bc2[2] = {PARAM(s + 4, 1.0, 7, 1), PARAM(s + 5, 1.0, 1, 9)};
        snprintf(l, sizeof l, "%s [7,1] [1,9]", bin[i].name);
        cmp2(&lg, l, bin[i].f, NULL, 2, bc2, TOL32, TOL16);
        gc_tensor *bc3[2] = {PARAM(s + 6, 1.0, 2, 1, 3, 1, 4), PARAM(s + 7, 1.0, 1, 5, 1, 6, 1)};
        snprintf(l, sizeof l, "%s [2,1,3,1,4] [1,5,1,6,1]", bin[i].name);
        cmp2(&lg, l, bin[i].f, NULL, 2, bc3, TOL32, TOL16);
        gc_tensor *bc4[2] = {PARAM(s + 8, 1.0, 2, 3, 4, 5), PARAM(s + 9, 1.0, 5)};
        snprintf(l, sizeof l, "%s [2,3,4,5] [5]", bin[i].name);
        cmp2(&lg, l, bin[i].f, NULL, 2, bc4, TOL32, TOL16);
        gc_tensor *sc[2] = {PARAM(s + 10, 1.0, 1), PARAM(s + 11, 1.0, 6, 7)};
        snprintf(l, sizeof l, "%s [1] [6,7]", bin[i].name);
        cmp2(&lg, l, bin[i].f, NULL, 2, sc, TOL32, TOL16);
    }
    /* realistic: bias-like broadcast over a ViT-B activation */
    gc_tensor *big[2] = {PARAM(150, 1.0, 64, 197, 768), PARAM(151, 1.0, 768)};
    cmp2(&lg, "add [64,197,768] [768]", f_add, NULL, 2, big, TOL32, TOL16);
    /* a residual add with a layer scale: scalar path (53 columns), vector path, DINOv3's
     * shape (201 chunks of 64 rows for the scale's gradient) */
    int inner = 1;
    gc_tensor *as1[3] = {PARAM(160, 1.0, 37, 53), PARAM(161, 1.0, 37, 53), PARAM(162, 1.0, 53)};
    cmp2(&lg, "add_scaled [37,53] [37,53] [53]", f_add_scaled, NULL, 3, as1, TOL32, TOL16);
    cmp2(&lg, "add_scaled [37,53] 0.5[37,53] [53]", f_add_scaled, &inner, 3, as1, TOL32, TOL16);
    gc_tensor *as2[3] = {PARAM(163, 1.0, 3, 70, 48), PARAM(164, 1.0, 3, 70, 48), PARAM(165, 1.0, 48)};
    cmp2(&lg, "add_scaled [3,70,48] [3,70,48] [48]", f_add_scaled, NULL, 3, as2, TOL32, TOL16);
    cmp2(&lg, "add_scaled [3,70,48] 0.5[3,70,48] [48]", f_add_scaled, &inner, 3, as2, TOL32, TOL16);
    gc_tensor *as3[3] = {PARAM(166, 1.0, 64, 201, 768), PARAM(167, 1.0, 64, 201, 768), PARAM(168, 0.1, 768)};
    cmp2(&lg, "add_scaled [64,201,768] 0.5[..] [768]", f_add_scaled, &inner, 3, as3, TOL32, TOL16);
    cmp2(&lg, "mul [64,197,768] [768]", f_mul, NULL, 2, big, TOL32, TOL16);
    gc_tensor *big2[2] = {big[0], PARAM(152, 1.0, 64, 197, 768)};
    cmp2(&lg, "add [64,197,768] [64,197,768]", f_add, NULL, 2, big2, TOL32, TOL16);

    double s1 = -1.7;
    gc_tensor *x[1] = {PARAM(160, 1.0, 37, 53)};
    cmp2(&lg, "scale [37,53] by -1.7", f_scale, &s1, 1, x, TOL32, TOL16);
    cmp2(&lg, "exp [37,53]", f_exp, NULL, 1, x, TOL32, TOL16);
    gc_tensor *xb[1] = {PARAM(161, 1.0, 8 * 197, 3072)};
    cmp2(&lg, "scale [1576,3072] by -1.7", f_scale, &s1, 1, xb, TOL32, TOL16);
    cmp2(&lg, "exp [1576,3072]", f_exp, NULL, 1, xb, TOL32, TOL16);
    static const gc_act acts[5] = {GC_ACT_NONE, GC_ACT_GELU_ERF, GC_ACT_GELU_TANH, GC_ACT_QUICK_GELU, GC_ACT_SILU};
    static const char *act_names[5] = {"none", "gelu_erf", "gelu_tanh", "quick_gelu", "silu"};
    gc_tensor *xa[1] = {PARAM(162, 2.0, 37, 53)};
    for (int i = 0; i < 5; i++) {
        snprintf(l, sizeof l, "activation %s [37,53]", act_names[i]);
        cmp2(&lg, l, f_act, (void *)&acts[i], 1, xa, TOL32, TOL16);
        snprintf(l, sizeof l, "activation %s [1576,3072]", act_names[i]);
        if (i) cmp2(&lg, l, f_act, (void *)&acts[i], 1, xb, TOL32, TOL16);
    }
    gc_pool_pop(p);
    CMP_DONE(lg);
}
END_TEST

/* The contiguous kernels take 8 elements per thread with 16-byte accesses when every
 * pointer is 16-byte aligned (a scalar tail for numel % 8), and scalar kernels otherwise.
 * Each case below runs one of the two, forward and backward. */
enum {
    VM_LEAF,     /* x a leaf: the backward accumulates into its gradient (f32 for bf16 x); binary: a, b leaves */
    VM_INNER,    /* x = 0.75 * leaf: a fresh gradient of x's dtype (and scale's own kernels) */
    VM_ACC,      /* y = f(x) + x: x's gradient exists when f's backward runs: += in x's dtype */
    VM_OFF1,     /* x starts one element into its buffer: misaligned, the scalar kernels */
    VM_ROW_B,    /* binary: b one row [cols] broadcast over a's rows */
    VM_ROW_A,    /* binary: a one row [cols], b [rows, cols] */
    VM_ROW_OFF1, /* binary: b one row starting one element into its buffer */
    VM_COL_B,    /* binary: b one value per row [rows, 1] broadcast along a's rows (a per-row scale) */
    VM_COL_A,    /* binary: a [rows, 1], b [rows, cols] */
    VM_ONE_B,    /* binary: b a single value [1] */
};
static const char *vm_names[] = {"leaf", "inner", "accumulate", "offset 1", "row b", "row a", "row b offset 1",
                                 "column b", "column a", "one b"};

typedef struct vec_case {
    int op; /* unary: 0 exp, else 1 + the gc_act; binary: 0 add, 1 sub, 2 mul */
    int mode;
    int64_t rows, cols;
} vec_case;

/* [rows, cols] from element 1 of the 1-D x: 2 or 4 bytes past a 16-byte boundary */
static gc_tensor *offset1(gc_tensor *x, int64_t rows, int64_t cols)
{
    return gc_view(gc_slice(x, 0, 1, rows * cols + 1), 2, GC_SHAPE(rows, cols));
}

static gc_tensor *f_unary_vec(gc_tensor *const *in, void *ctx)
{
    const vec_case *c = ctx;
    gc_tensor *x = c->mode == VM_LEAF ? in[0] : c->mode == VM_OFF1 ? offset1(in[0], c->rows, c->cols) : gc_scale(in[0], 0.75);
    gc_tensor *y = c->op ? gc_activation(x, (gc_act)(c->op - 1)) : gc_exp(x);
    return c->mode == VM_ACC ? gc_add(y, x) : y;
}

static gc_tensor *f_binary_vec(gc_tensor *const *in, void *ctx)
{
    const vec_case *c = ctx;
    gc_tensor *a = c->mode == VM_OFF1 ? offset1(in[0], c->rows, c->cols) : in[0];
    gc_tensor *b = c->mode == VM_ROW_OFF1 ? gc_slice(in[1], 0, 1, c->cols + 1) : in[1];
    return c->op == 0 ? gc_add(a, b) : c->op == 1 ? gc_sub(a, b) : gc_mul(a, b);
}

START_TEST(test_elementwise_vector)
{
    gc_pool *p = gc_pool_push();
    cmp_log lg = {0};
    char l[128];
    static const int64_t sizes[3][2] = {{24, 40}, {37, 53}, {3, 5}}; /* numel % 8: 0, 1, 7; rows of 40 (vector), 53, 5 */
    static const char *un_names[5] = {"exp", "gelu_erf", "gelu_tanh", "quick_gelu", "silu"};
    static const int un_ops[5] = {0, 1 + GC_ACT_GELU_ERF, 1 + GC_ACT_GELU_TANH, 1 + GC_ACT_QUICK_GELU, 1 + GC_ACT_SILU};
    for (int u = 0; u < 5; u++)
        for (int s = 0; s < 3; s++)
            for (int m = VM_LEAF; m <= VM_OFF1; m++) {
                int64_t R = sizes[s][0], C = sizes[s][1];
                uint64_t seed = 2000 + 100 * (uint64_t)u + 10 * (uint64_t)s + (uint64_t)m;
                vec_case c = {.op = un_ops[u], .mode = m, .rows = R, .cols = C};
                gc_tensor *x[1] = {m == VM_OFF1 ? PARAM(seed, 2.0, R * C + 1) : PARAM(seed, 2.0, R, C)};
                snprintf(l, sizeof l, "%s [%lld,%lld] %s", un_names[u], (long long)R, (long long)C, vm_names[m]);
                cmp2(&lg, l, f_unary_vec, &c, 1, x, TOL32, TOL16);
            }
    static const char *bin_names[3] = {"add", "sub", "mul"};
    static const int bin_modes[8] = {VM_LEAF, VM_OFF1, VM_ROW_B, VM_ROW_A, VM_ROW_OFF1, VM_COL_B, VM_COL_A, VM_ONE_B};
    for (int o = 0; o < 3; o++)
        for (int s = 0; s < 3; s++)
            for (int k = 0; k < 8; k++) {
                int m = bin_modes[k];
                int64_t R = sizes[s][0], C = sizes[s][1];
                uint64_t seed = 3000 + 100 * (uint64_t)o + 10 * (uint64_t)s + (uint64_t)k;
                vec_case c = {.op = o, .mode = m, .rows = R, .cols = C};
                gc_tensor *in[2] = {
                    m == VM_OFF1   ? PARAM(seed, 1.0, R * C + 1)
                    : m == VM_ROW_A ? PARAM(seed, 1.0, C)
                    : m == VM_COL_A ? PARAM(seed, 1.0, R, 1)
                                    : PARAM(seed, 1.0, R, C),
                    m == VM_ROW_B      ? PARAM(seed + 5, 1.0, C)
                    : m == VM_ROW_OFF1 ? PARAM(seed + 5, 1.0, C + 1)
                    : m == VM_COL_B    ? PARAM(seed + 5, 1.0, R, 1)
                    : m == VM_ONE_B    ? PARAM(seed + 5, 1.0, 1)
                                       : PARAM(seed + 5, 1.0, R, C),
                };
                snprintf(l, sizeof l, "%s [%lld,%lld] %s", bin_names[o], (long long)R, (long long)C,
                         m == VM_LEAF ? "same shape" : vm_names[m]);
                cmp2(&lg, l, f_binary_vec, &c, 2, in, TOL32, TOL16);
            }
    gc_pool_pop(p);
    CMP_DONE(lg);
}
END_TEST

/* ---------------------------------------------------------------- norms, softmax */

static gc_tensor *f_layernorm(gc_tensor *const *in, void *ctx)
{
    int wb = *(const int *)ctx;
    return gc_layernorm(in[0], wb ? in[1] : NULL, wb ? in[2] : NULL, 1e-5);
}
/* layernorm(x) + layernorm(0.5 x) with the same w, b: x's and the parameters' gradients accumulate */
static gc_tensor *f_layernorm_twice(gc_tensor *const *in, void *ctx)
{
    (void)ctx;
    return gc_add(gc_layernorm(in[0], in[1], in[2], 1e-5), gc_layernorm(gc_scale(in[0], 0.5), in[1], in[2], 1e-5));
}
static gc_tensor *f_rmsnorm(gc_tensor *const *in, void *ctx) { (void)ctx; return gc_rmsnorm(in[0], in[1], 1e-6); }
static gc_tensor *f_l2norm(gc_tensor *const *in, void *ctx) { (void)ctx; return gc_l2normalize(in[0], 1e-12); }
static gc_tensor *f_softmax(gc_tensor *const *in, void *ctx) { (void)ctx; return gc_softmax(in[0]); }

START_TEST(test_norms_softmax)
{
    gc_pool *p = gc_pool_push();
    cmp_log lg = {0};
    int wb = 1, nowb = 0;
    gc_tensor *ln[3] = {PARAM(200, 2.0, 37, 53), PARAM(201, 1.0, 53), PARAM(202, 1.0, 53)};
    cmp2(&lg, "layernorm [37,53] w,b", f_layernorm, &wb, 3, ln, TOL32, TOL16_SOFT);
    cmp2(&lg, "layernorm [37,53]", f_layernorm, &nowb, 1, ln, TOL32, TOL16_SOFT);
    gc_tensor *ln3[3] = {PARAM(203, 1.0, 3, 5, 129), PARAM(204, 1.0, 129), PARAM(205, 1.0, 129)};
    cmp2(&lg, "layernorm [3,5,129] w,b", f_layernorm, &wb, 3, ln3, TOL32, TOL16_SOFT);
    gc_tensor *lnb[3] = {PARAM(206, 1.0, 64 * 197, 768), PARAM(207, 1.0, 768), PARAM(208, 1.0, 768)};
    cmp2(&lg, "layernorm [12608,768] w,b", f_layernorm, &wb, 3, lnb, TOL32, TOL16_SOFT);
    cmp2(&lg, "layernorm [12608,768]", f_layernorm, &nowb, 1, lnb, TOL32, TOL16_SOFT);
    /* the register paths of norm.cu: rows of 1..8 16-byte vectors a lane (bf16: 256 wide
     * each), partly filled last vectors, chunks of rows cut short, and x without a gradient
     * (the weight/bias sums alone); 2056 is past the registers and 2048 past them in f32 */
    static const int64_t widths[] = {136, 512, 520, 1024, 2048, 2056};
    static const int64_t heights[] = {40, 1000, 70, 77, 33, 5};
    for (int i = 0; i < 6; i++) {
        char name[64];
        gc_tensor *lw[3] = {PARAM(240 + 3 * i, 1.0, heights[i], widths[i]), PARAM(241 + 3 * i, 1.0, widths[i]),
                            PARAM(242 + 3 * i, 1.0, widths[i])};
        snprintf(name, sizeof name, "layernorm [%lld,%lld] w,b", (long long)heights[i], (long long)widths[i]);
        cmp2(&lg, name, f_layernorm, &wb, 3, lw, TOL32, TOL16_SOFT);
    }
    /* the one-pass backward (rows of 1 to 3 bf16 vectors a lane, 4 in f32): a last block of
     * 11 of its 32 rows, widths 256 and 512, the gradients accumulated */
    gc_tensor *lnf[3] = {PARAM(265, 1.0, 1003, 512), PARAM(266, 1.0, 512), PARAM(267, 1.0, 512)};
    cmp2(&lg, "layernorm [1003,512] w,b", f_layernorm, &wb, 3, lnf, TOL32, TOL16_SOFT);
    cmp2(&lg, "layernorm [1003,512] w,b, twice (accumulated)", f_layernorm_twice, NULL, 3, lnf, TOL32, TOL16_SOFT);
    gc_tensor *lnf2[3] = {PARAM(268, 1.0, 77, 256), PARAM(269, 1.0, 256), PARAM(270, 1.0, 256)};
    cmp2(&lg, "layernorm [77,256] w,b", f_layernorm, &wb, 3, lnf2, TOL32, TOL16_SOFT);
    gc_tensor *lnx[3] = {RANDN(260, 1.0, 300, 768), PARAM(261, 1.0, 768), PARAM(262, 1.0, 768)};
    cmp2(&lg, "layernorm [300,768] w,b, x without a gradient", f_layernorm, &wb, 3, lnx, TOL32, TOL16_SOFT);
    gc_tensor *rnt[2] = {PARAM(263, 2.0, 300, 512), PARAM(264, 1.0, 512)};
    cmp2(&lg, "rmsnorm [300,512]", f_rmsnorm, NULL, 2, rnt, TOL32, TOL16_SOFT);

    gc_tensor *rn[2] = {PARAM(210, 2.0, 37, 53), PARAM(211, 1.0, 53)};
    cmp2(&lg, "rmsnorm [37,53]", f_rmsnorm, NULL, 2, rn, TOL32, TOL16_SOFT);
    gc_tensor *rnb[2] = {PARAM(212, 1.0, 64 * 197, 768), PARAM(213, 1.0, 768)};
    cmp2(&lg, "rmsnorm [12608,768]", f_rmsnorm, NULL, 2, rnb, TOL32, TOL16_SOFT);

    gc_tensor *l2[1] = {PARAM(220, 1.0, 37, 53)};
    cmp2(&lg, "l2normalize [37,53]", f_l2norm, NULL, 1, l2, TOL32, TOL16_SOFT);
    gc_tensor *l2b[1] = {PARAM(221, 1.0, 1024, 512)};
    cmp2(&lg, "l2normalize [1024,512]", f_l2norm, NULL, 1, l2b, TOL32, TOL16_SOFT);

    gc_tensor *sm[1] = {PARAM(230, 3.0, 37, 53)};
    cmp2(&lg, "softmax [37,53]", f_softmax, NULL, 1, sm, TOL32_SOFT, TOL16_SOFT);
    gc_tensor *sm4[1] = {PARAM(231, 3.0, 2, 3, 7, 201)};
    cmp2(&lg, "softmax [2,3,7,201]", f_softmax, NULL, 1, sm4, TOL32_SOFT, TOL16_SOFT);
    gc_tensor *sm1[1] = {PARAM(232, 3.0, 5, 1)};
    cmp2(&lg, "softmax [5,1]", f_softmax, NULL, 1, sm1, TOL32_SOFT, TOL16_SOFT);
    gc_tensor *smb[1] = {PARAM(233, 3.0, 8 * 12 * 197, 197)};
    cmp2(&lg, "softmax [18912,197]", f_softmax, NULL, 1, smb, TOL32_SOFT, TOL16_SOFT);
    gc_tensor *smw[1] = {PARAM(234, 3.0, 16, 32000)};
    cmp2(&lg, "softmax [16,32000]", f_softmax, NULL, 1, smw, TOL32_SOFT, TOL16_SOFT);
    gc_pool_pop(p);
    CMP_DONE(lg);
}
END_TEST

/* ---------------------------------------------------------------- attention */

typedef struct attn_case {
    bool causal, mask;
    double scale, dropout;
} attn_case;

static gc_tensor *f_attention(gc_tensor *const *in, void *ctx)
{
    const attn_case *c = ctx;
    /* dropout masks: both devices draw from the same RandContext */
    gc_rand_context_set((gc_rand_context){.seed = 0xa77e, .step = 5, .sample_offset = 3});
    gc_attn_opts o = {.causal = c->causal, .mask = c->mask ? in[3] : NULL, .scale = c->scale, .dropout = c->dropout,
                      .dropout_op = 17};
    return gc_attention(in[0], in[1], in[2], &o);
}

/* additive mask [..., Lq, Lk]: small values, and -1e9 on a pattern that never covers a
 * whole row (key 0 stays visible) */
static gc_tensor *attn_mask(int nd, const int64_t *sh, uint64_t seed)
{
    gc_tensor *m = randn(nd, sh, seed, 0.5);
    if (!m) return NULL;
    float *v = gc_tensor_data(m);
    int64_t lk = sh[nd - 1], n = gc_tensor_numel(m);
    for (int64_t e = 0; e < n; e++) {
        int64_t j = e % lk, i = e / lk;
        if (j != 0 && (i * 7 + j * 3) % 5 == 0) v[e] = -1e9f;
    }
    return m;
}

static void attn_run(cmp_log *lg, const char *label, const attn_case *c, int64_t B, int64_t Lq, int64_t Lk, int64_t H,
                     int64_t Hkv, int64_t D, int mask_nd, uint64_t seed)
{
    gc_tensor *in[4] = {param(4, GC_SHAPE(B, Lq, H, D), seed, 1.0), param(4, GC_SHAPE(B, Lk, Hkv, D), seed + 1, 1.0),
                        param(4, GC_SHAPE(B, Lk, Hkv, D), seed + 2, 1.0), NULL};
    int n = 3;
    if (c->mask) {
        in[3] = mask_nd == 2 ? attn_mask(2, GC_SHAPE(Lq, Lk), seed + 3) : attn_mask(3, GC_SHAPE(B, Lq, Lk), seed + 3);
        n = 4;
    }
    attn_case cc = *c;
    cmp2(lg, label, f_attention, &cc, n, in, TOL32_SOFT, TOL16_SOFT);
}

START_TEST(test_attention)
{
    gc_pool *p = gc_pool_push();
    cmp_log lg = {0};
    attn_case plain = {0}, causal = {.causal = true}, mask = {.mask = true}, drop = {.dropout = 0.1};
    attn_case scaled = {.scale = 0.1};
    attn_case all = {.causal = true, .mask = true, .dropout = 0.1};
    attn_run(&lg, "attention [2,13,4,16]", &plain, 2, 13, 13, 4, 4, 16, 0, 300);
    attn_run(&lg, "attention Lq 7 Lk 11", &plain, 2, 7, 11, 4, 4, 16, 0, 310);
    attn_run(&lg, "attention D 24 scale 0.1", &scaled, 3, 9, 9, 2, 2, 24, 0, 320);
    /* a negative scale: bf16 D 32 would be flash's, whose row maximum needs a positive one */
    attn_case negative = {.scale = -0.2};
    attn_run(&lg, "attention D 32 scale -0.2", &negative, 2, 13, 13, 4, 4, 32, 0, 325);
    attn_run(&lg, "attention causal [2,13,4,16]", &causal, 2, 13, 13, 4, 4, 16, 0, 330);
    attn_run(&lg, "attention mask [Lq,Lk]", &mask, 2, 7, 11, 4, 4, 16, 2, 340);
    attn_run(&lg, "attention mask [B,Lq,Lk]", &mask, 2, 7, 11, 4, 4, 16, 3, 350);
    attn_run(&lg, "attention GQA H 6 Hkv 2", &plain, 2, 13, 13, 6, 2, 16, 0, 360);
    attn_run(&lg, "attention GQA causal H 8 Hkv 1", &causal, 2, 13, 13, 8, 1, 16, 0, 370);
    attn_run(&lg, "attention dropout 0.1", &drop, 2, 13, 13, 4, 4, 16, 0, 380);
    attn_run(&lg, "attention causal+mask+dropout GQA", &all, 2, 13, 13, 6, 3, 16, 3, 390);
    /* realistic: ViT-B/16 image tower, CLIP text tower with padding masks */
    attn_run(&lg, "attention [2,197,12,64]", &plain, 2, 197, 197, 12, 12, 64, 0, 400);
    attn_case text = {.causal = true, .mask = true};
    attn_run(&lg, "attention causal+mask [4,77,8,64]", &text, 4, 77, 77, 8, 8, 64, 3, 410);
    attn_run(&lg, "attention dropout [2,197,12,64]", &drop, 2, 197, 197, 12, 12, 64, 0, 420);
    gc_pool_pop(p);
    CMP_DONE(lg);
}
END_TEST

/* ---------------------------------------------------------------- flash attention
 * bf16 inputs with D in {32, 64, 128} take ATTN_FLASH on the GPU (kernels/flash_attention.cu).
 * Run alone with CK_RUN_CASE=flash (correctness) and CK_RUN_CASE=flash_bench (CLIP-sized
 * timing, flash vs gemm). Each comparison also runs on the GEMM path ("... [gemm]"):
 * if both fail, the problem is not in the flash kernels. */

typedef struct flash_case {
    int64_t B, Lq, Lk, H, Hkv, D;
    bool causal;
    int mask;       /* 0: none; 2: [Lq, Lk]; 3: [B, Lq, Lk]; with -inf entries and a fully masked row */
    double dropout;
    int layout;     /* 0: q, k, v; 1: slices of a fused qkv [B, L, 3H, D]; 2: self-attention q = k = v;
                     * 3: two attention ops whose gradients add up in q, k and v */
} flash_case;

static gc_tensor *f_flash(gc_tensor *const *in, void *ctx)
{
    const flash_case *c = ctx;
    gc_rand_context_set((gc_rand_context){.seed = 0xf1a5, .step = 2, .sample_offset = 5});
    int nin = c->layout == 1 || c->layout == 2 ? 1 : 3;
    gc_attn_opts o = {.causal = c->causal, .mask = c->mask ? in[nin] : NULL, .dropout = c->dropout, .dropout_op = 23};
    switch (c->layout) {
    case 1:
        return gc_attention(gc_slice(in[0], 2, 0, c->H), gc_slice(in[0], 2, c->H, 2 * c->H),
                            gc_slice(in[0], 2, 2 * c->H, 3 * c->H), &o);
    case 2:
        return gc_attention(in[0], in[0], in[0], &o);
    case 3: {
        gc_attn_opts o2 = o;
        o2.causal = !o.causal;
        o2.dropout_op = 24;
        return gc_add(gc_attention(in[0], in[1], in[2], &o), gc_attention(in[0], in[2], in[1], &o2));
    }
    default:
        return gc_attention(in[0], in[1], in[2], &o);
    }
}

/* additive mask with -inf entries (key 0 spared) and row (Lq - 1 - b) of batch b fully masked */
static gc_tensor *flash_mask(const flash_case *c, uint64_t seed)
{
    const bool batched = c->mask == 3;
    gc_tensor *m = batched ? randn(3, GC_SHAPE(c->B, c->Lq, c->Lk), seed, 0.5) : randn(2, GC_SHAPE(c->Lq, c->Lk), seed, 0.5);
    if (!m) return NULL;
    float *v = gc_tensor_data(m);
    for (int64_t b = 0; b < (batched ? c->B : 1); b++) {
        float *mb = v + b * c->Lq * c->Lk;
        for (int64_t i = 0; i < c->Lq; i++)
            for (int64_t j = 1; j < c->Lk; j++)
                if ((i * 7 + j * 3 + b) % 5 == 0) mb[i * c->Lk + j] = -INFINITY;
        const int64_t full = (c->Lq - 1 - b % c->Lq);
        for (int64_t j = 0; j < c->Lk; j++) mb[full * c->Lk + j] = -INFINITY;
    }
    return m;
}

static void flash_run(cmp_log *lg, const char *label, const flash_case *c, uint64_t seed)
{
    gc_tensor *in[4] = {NULL, NULL, NULL, NULL};
    int n;
    if (c->layout == 1) {
        in[0] = param(4, GC_SHAPE(c->B, c->Lq, 3 * c->H, c->D), seed, 1.0);
        n = 1;
    } else if (c->layout == 2) {
        in[0] = param(4, GC_SHAPE(c->B, c->Lq, c->H, c->D), seed, 1.0);
        n = 1;
    } else {
        in[0] = param(4, GC_SHAPE(c->B, c->Lq, c->H, c->D), seed, 1.0);
        in[1] = param(4, GC_SHAPE(c->B, c->Lk, c->Hkv, c->D), seed + 1, 1.0);
        in[2] = param(4, GC_SHAPE(c->B, c->Lk, c->Hkv, c->D), seed + 2, 1.0);
        n = 3;
    }
    if (c->mask) in[n++] = flash_mask(c, seed + 3);
    flash_case cc = *c;
    /* the default; the GEMM path; the backward as two kernels (dQ, dK/dV) where the fused
     * one would run */
    static const char *const impls[] = {"auto", "gemm", "flash-split"}, *const tags[] = {"", " [gemm]", " [split]"};
    for (int i = 0; i < 3; i++) {
        char l[160];
        snprintf(l, sizeof l, "%s%s", label, tags[i]);
        ck_assert_int_eq(gc_attention_set_impl(impls[i]), GC_OK);
        cmp(lg, l, f_flash, &cc, n, in, GC_BF16, TOL16);
    }
    ck_assert_int_eq(gc_attention_set_impl("auto"), GC_OK);
}

START_TEST(test_flash_vs_cpu)
{
    gc_pool *p = gc_pool_push();
    cmp_log lg = {0};
    /* B, Lq, Lk, H, Hkv, D, causal, mask, dropout, layout */
    flash_run(&lg, "flash [2,197,12,64]", &(flash_case){2, 197, 197, 12, 12, 64, false, 0, 0, 0}, 500);
    flash_run(&lg, "flash causal [2,77,8,64]", &(flash_case){2, 77, 77, 8, 8, 64, true, 0, 0, 0}, 510);
    flash_run(&lg, "flash causal+mask[B] [2,77,8,64]", &(flash_case){2, 77, 77, 8, 8, 64, true, 3, 0, 0}, 515);
    flash_run(&lg, "flash L5 D32", &(flash_case){2, 5, 5, 2, 2, 32, false, 0, 0, 0}, 520);
    flash_run(&lg, "flash GQA H8 Hkv2 D128 L33", &(flash_case){2, 33, 33, 8, 2, 128, false, 0, 0, 0}, 530);
    flash_run(&lg, "flash mask[B] -inf, masked rows D64", &(flash_case){2, 40, 40, 4, 4, 64, false, 3, 0, 0}, 540);
    flash_run(&lg, "flash mask[Lq,Lk] causal D128", &(flash_case){2, 40, 40, 2, 2, 128, true, 2, 0, 0}, 545);
    flash_run(&lg, "flash causal Lq30 < Lk70 mask D64", &(flash_case){2, 30, 70, 4, 2, 64, true, 2, 0, 0}, 550);
    flash_run(&lg, "flash causal Lq70 > Lk30 D32", &(flash_case){2, 70, 30, 2, 2, 32, true, 0, 0, 0}, 555);
    flash_run(&lg, "flash dropout 0.1 [2,197,4,64]", &(flash_case){2, 197, 197, 4, 4, 64, false, 0, 0.1, 0}, 560);
    flash_run(&lg, "flash dropout causal mask GQA D128", &(flash_case){2, 45, 45, 4, 2, 128, true, 3, 0.1, 0}, 565);
    flash_run(&lg, "flash fused qkv slices causal [2,77,8,64]", &(flash_case){2, 77, 77, 8, 8, 64, true, 0, 0, 1}, 570);
    flash_run(&lg, "flash fused qkv slices dropout D32", &(flash_case){2, 50, 50, 3, 3, 32, false, 3, 0.1, 1}, 575);
    flash_run(&lg, "flash self-attention q=k=v D64", &(flash_case){2, 50, 50, 4, 4, 64, true, 0, 0, 2}, 580);
    flash_run(&lg, "flash accumulate (2 ops) GQA D128", &(flash_case){2, 45, 45, 4, 2, 128, false, 0, 0.1, 3}, 590);
    flash_run(&lg, "flash accumulate (2 ops) D64 L197", &(flash_case){1, 197, 197, 2, 2, 64, true, 2, 0, 3}, 595);
    /* D = 64 at the edges of the 64-row tiles, GQA, causal with Lq != Lk (rows that see no
     * key), dropout at L = 201, self-attention at 256 and one past it */
    flash_run(&lg, "flash D64 L64", &(flash_case){2, 64, 64, 3, 3, 64, false, 0, 0, 0}, 600);
    flash_run(&lg, "flash D64 L80 causal GQA", &(flash_case){2, 80, 80, 4, 2, 64, true, 0, 0, 0}, 605);
    flash_run(&lg, "flash D64 Lq100 Lk128 causal mask", &(flash_case){2, 100, 128, 2, 2, 64, true, 3, 0, 0}, 610);
    flash_run(&lg, "flash D64 Lq150 Lk90 causal", &(flash_case){2, 150, 90, 2, 2, 64, true, 0, 0, 0}, 612);
    flash_run(&lg, "flash D64 L201 dropout", &(flash_case){2, 201, 201, 2, 2, 64, false, 0, 0.1, 0}, 615);
    flash_run(&lg, "flash D64 L256 self-attention causal", &(flash_case){2, 256, 256, 2, 2, 64, true, 0, 0, 2}, 620);
    flash_run(&lg, "flash D64 L257", &(flash_case){1, 257, 257, 2, 2, 64, false, 0, 0, 0}, 625);
    gc_pool_pop(p);
    CMP_DONE(lg);
}
END_TEST

/* Bytes the tape keeps for one attention on GPU leaves: tells the implementation apart
 * (flash: q, k, v, out, lse [+ mask f32]; gemm: Qt, Kt, Vt, P [B, H, Lq, Lk rounded to 8]). */
static size_t attn_saved(gc_tensor *q, gc_tensor *k, gc_tensor *v, const gc_attn_opts *o)
{
    gc_pool *p = gc_pool_push();
    gc_tape *t = gc_tape_init();
    gc_tape_begin(t);
    gc_tensor *y = gc_attention(q, k, v, o);
    gc_tape_end(t);
    size_t b = y ? gc_tape_saved_bytes(t) : 0;
    gc_tape_free(t);
    gc_pool_pop(p);
    return b;
}

static gc_tensor *gpu_leaf(gc_dtype dt, int nd, const int64_t *sh, uint64_t seed)
{
    gc_tensor *h = gc_test_randn(nd, sh, seed, 1.0);
    gc_tensor *g = gc_pool_add(gc_tensor_to(h, GC_CUDA0, dt));
    gc_tensor_release(h);
    if (g) gc_tensor_requires_grad(g, true);
    return g;
}

/* A NaN in one query makes its output row NaN and no other, on the GEMM path (its row
 * kernels, both widths: L 70 in registers, L 1100 in two passes) and on the flash path:
 * not a row of NaN scores taken for a fully masked one (zeros). */
START_TEST(test_attention_nan)
{
    gc_pool *p = gc_pool_push();
    static const char *const impl[2] = {"gemm", "flash"};
    for (int li = 0; li < 2; li++)
        for (int m = 0; m < 2; m++) {
            const int64_t B = 2, L = li ? 1100 : 70, H = 2, D = 64;
            gc_tensor *qh = gc_pool_add(gc_test_randn(4, GC_SHAPE(B, L, H, D), 11, 1.0));
            float *qd = gc_tensor_data(qh);
            qd[((0 * L + 5) * H + 1) * D + 7] = NAN; /* batch 0, query 5, head 1 */
            gc_tensor *q = gc_pool_add(gc_tensor_to(qh, GC_CUDA0, GC_BF16));
            gc_tensor *k = gc_pool_add(gc_tensor_to(gc_pool_add(gc_test_randn(4, GC_SHAPE(B, L, H, D), 12, 1.0)), GC_CUDA0, GC_BF16));
            ck_assert_int_eq(gc_attention_set_impl(impl[m]), GC_OK);
            gc_tensor *y = gc_attention(q, k, k, &(gc_attn_opts){.causal = true});
            ck_assert_int_eq(gc_attention_set_impl("auto"), GC_OK);
            ck_assert_msg(y, "%s", gc_error_message());
            float *out = malloc(sizeof(float) * (size_t)(B * L * H * D));
            ck_assert_int_eq(gc_tensor_to_host_f32(y, out), GC_OK);
            int64_t wrong = 0;
            for (int64_t r = 0; r < B * L * H; r++) {
                const bool nan = r == (0 * L + 5) * H + 1;
                for (int64_t d = 0; d < D; d++) wrong += nan ? !isnan(out[r * D + d]) : !isfinite(out[r * D + d]);
            }
            free(out);
            ck_assert_msg(wrong == 0, "%s L %lld: %lld outputs wrong (the NaN row must be NaN, the rest finite)", impl[m],
                          (long long)L, (long long)wrong);
        }
    gc_pool_pop(p);
}
END_TEST

START_TEST(test_flash_dispatch)
{
    gc_pool *p = gc_pool_push();
    cmp_log lg = {0};
#define EXPECT(cond, ...) do { lg.total++; if (!(cond)) log_fail(&lg, __VA_ARGS__); } while (0)
    const int64_t B = 2, L = 37, H = 4, ld = 40;
    for (int di = 0; di < 4; di++) {
        const int64_t D = (int64_t[]){32, 64, 128, 48}[di];
        gc_tensor *q = gpu_leaf(GC_BF16, 4, GC_SHAPE(B, L, H, D), 1), *k = gpu_leaf(GC_BF16, 4, GC_SHAPE(B, L, H, D), 2),
                  *v = gpu_leaf(GC_BF16, 4, GC_SHAPE(B, L, H, D), 3);
        const size_t qkv = 3 * gc_tensor_nbytes(q);
        const size_t flash = qkv + gc_tensor_nbytes(q) + (size_t)(B * H * L * 4), gemm = qkv + (size_t)(B * H * L * ld * 2);
        size_t got = attn_saved(q, k, v, &(gc_attn_opts){.causal = true});
        EXPECT(got == (D == 48 ? gemm : flash), "bf16 D %lld: saved %zu bytes, want %zu (%s)", (long long)D, got,
               D == 48 ? gemm : flash, D == 48 ? "gemm: D 48 has no flash kernel" : "flash");
        ck_assert_int_eq(gc_attention_set_impl("gemm"), GC_OK);
        got = attn_saved(q, k, v, NULL);
        EXPECT(got == gemm, "impl gemm D %lld: saved %zu bytes, want %zu", (long long)D, got, gemm);
        ck_assert_int_eq(gc_attention_set_impl("flash"), GC_OK);
        got = attn_saved(q, k, v, NULL);
        EXPECT(got == (D == 48 ? gemm : flash), "impl flash D %lld: saved %zu bytes", (long long)D, got);
        ck_assert_int_eq(gc_attention_set_impl("auto"), GC_OK);
    }
    /* f32 storage: gemm (P is S, f32) */
    gc_tensor *q = gpu_leaf(GC_F32, 4, GC_SHAPE(B, L, H, 64), 4);
    size_t got = attn_saved(q, q, q, NULL), want = 3 * gc_tensor_nbytes(q) + (size_t)(B * H * L * ld * 4);
    EXPECT(got == want, "f32: saved %zu bytes, want %zu (gemm)", got, want);
    /* innermost stride != 1: gemm */
    gc_tensor *x = gpu_leaf(GC_BF16, 4, GC_SHAPE(B, L, 64, H), 5);
    gc_tensor *qt = gc_transpose(x, 2, 3); /* no tape: a plain view, made a leaf of its own */
    gc_tensor_requires_grad(qt, true);
    got = attn_saved(qt, qt, qt, NULL);
    want = 3 * gc_tensor_nbytes(qt) + (size_t)(B * H * L * ld * 2);
    EXPECT(got == want, "strided innermost: saved %zu bytes, want %zu (gemm)", got, want);
    /* a mask is saved (as f32) by flash */
    gc_tensor *qb = gpu_leaf(GC_BF16, 4, GC_SHAPE(B, L, H, 64), 6);
    gc_tensor *m = gc_pool_add(gc_tensor_zeros(GC_BF16, GC_CUDA0, 3, GC_SHAPE(B, L, L)));
    got = attn_saved(qb, qb, qb, &(gc_attn_opts){.mask = m});
    want = 4 * gc_tensor_nbytes(qb) + (size_t)(B * H * L * 4) + (size_t)(B * L * L * 4);
    EXPECT(got == want, "flash with mask: saved %zu bytes, want %zu", got, want);
#undef EXPECT
    gc_pool_pop(p);
    CMP_DONE(lg);
}
END_TEST

/* Attention of the models at bench sizes (q, k, v slices of a fused bf16 qkv): flash and
 * the GEMM path agree; flash gives the same bits twice; their time and memory are printed,
 * not asserted. */
static gc_status flash_step(gc_tensor *qkv, int64_t H, bool causal, gc_tensor *R, gc_tensor **out)
{
    gc_tape *t = gc_tape_init();
    gc_tape_begin(t);
    gc_tensor *y = gc_attention(gc_slice(qkv, 2, 0, H), gc_slice(qkv, 2, H, 2 * H), gc_slice(qkv, 2, 2 * H, 3 * H),
                                &(gc_attn_opts){.causal = causal});
    gc_tape_end(t);
    gc_status st = y ? gc_backward(t, 1, &y, &R) : GC_PENDING();
    gc_tape_free(t);
    if (out) *out = y;
    return st;
}

START_TEST(test_flash_clip_bench)
{
    gc_pool *p = gc_pool_push();
    cmp_log lg = {0};
    static const struct { const char *name; int64_t B, L, H; bool causal; } shapes[] = {
        {"B/16 image, chunk 64 [64,197,12,64]", 64, 197, 12, false},
        {"B/32 image, chunk 256 [256,50,12,64]", 256, 50, 12, false},
        {"text causal, chunk 256 [256,77,8,64]", 256, 77, 8, true},
        {"DINOv3, chunk 64 [64,201,12,64]", 64, 201, 12, false},
    };
    /* flash twice (its bits again), then its backward split in two kernels (dQ, dK/dV) */
    static const char *const impls[] = {"flash", "gemm", "flash", "flash-split"};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int64_t B = shapes[si].B, L = shapes[si].L, H = shapes[si].H, D = 64;
        gc_pool *ps = gc_pool_push();
        gc_tensor *qkv = gpu_leaf(GC_BF16, 4, GC_SHAPE(B, L, 3 * H, D), 7 + si);
        gc_tensor *Rh = gc_test_randn(4, GC_SHAPE(B, L, H, D), 8 + si, 1.0);
        gc_tensor *R = gc_pool_add(gc_tensor_to(Rh, GC_CUDA0, GC_BF16));
        gc_tensor_release(Rh);
        gc_tensor *outs[4] = {NULL, NULL, NULL, NULL}, *grads[4] = {NULL, NULL, NULL, NULL};
        for (int m = 0; m < 4; m++) {
            ck_assert_int_eq(gc_attention_set_impl(impls[m]), GC_OK);
            gc_tensor_zero_grad(qkv);
            gc_pool *it = gc_pool_push();
            gc_tensor *y = NULL;
            gc_status st = flash_step(qkv, H, shapes[si].causal, R, &y);
            if (st == GC_OK) outs[m] = gc_tensor_to(y, GC_CUDA0, GC_F32);
            gc_pool_pop(it);
            grads[m] = gc_tensor_to(gc_tensor_grad(qkv), GC_CUDA0, GC_F32);
            lg.total++;
            if (st != GC_OK || !outs[m] || !grads[m]) {
                log_fail(&lg, "%s %s step failed: %s", shapes[si].name, impls[m], gc_error_message());
                continue;
            }
            if (m == 2) continue; /* the repeat is for its bits, not its time */
            /* timing: 10 steps after the one above */
            gc_timer *t0 = gc_timer_create(GC_CUDA0), *t1 = gc_timer_create(GC_CUDA0);
            gc_device_sync(GC_CUDA0);
            gc_memory_stats s0 = gc_memory_stats_get(GC_CUDA0);
            gc_memory_reset_peak(GC_CUDA0);
            gc_timer_record(t0);
            for (int r = 0; r < 10 && st == GC_OK; r++) {
                gc_pool *itp = gc_pool_push();
                st = flash_step(qkv, H, shapes[si].causal, R, NULL);
                gc_pool_pop(itp);
            }
            gc_timer_record(t1);
            double ms = 0, ms_fwd = 0;
            if (st == GC_OK) st = gc_timer_elapsed_ms(t0, t1, &ms);
            gc_memory_stats s1 = gc_memory_stats_get(GC_CUDA0);
            /* the forward alone (no tape), as the gradient cache's no-grad chunks run it */
            gc_timer_record(t0);
            for (int r = 0; r < 10 && st == GC_OK; r++) {
                gc_pool *itp = gc_pool_push();
                if (!gc_attention(gc_slice(qkv, 2, 0, H), gc_slice(qkv, 2, H, 2 * H), gc_slice(qkv, 2, 2 * H, 3 * H),
                                  &(gc_attn_opts){.causal = shapes[si].causal}))
                    st = GC_PENDING();
                gc_pool_pop(itp);
            }
            gc_timer_record(t1);
            if (st == GC_OK) st = gc_timer_elapsed_ms(t0, t1, &ms_fwd);
            printf("attention %-38s %-11s fwd+bwd %.3f ms/step, fwd %.3f ms, peak %.1f MiB above the inputs\n", shapes[si].name,
                   impls[m], ms / 10, ms_fwd / 10, (double)(s1.peak - s0.current) / (1 << 20));
            gc_timer_free(t0);
            gc_timer_free(t1);
            if (st != GC_OK) log_fail(&lg, "%s %s timing failed: %s", shapes[si].name, impls[m], gc_error_message());
        }
        ck_assert_int_eq(gc_attention_set_impl("auto"), GC_OK);
        if (outs[0] && outs[1] && grads[0] && grads[1]) {
            double eo = gc_test_rel_err(outs[0], outs[1]), eg = gc_test_rel_err(grads[0], grads[1]);
            printf("attention %-38s flash vs gemm: out rel err %.2e, grad rel err %.2e\n", shapes[si].name, eo, eg);
            lg.total++;
            if (!(eo <= TOL16 && eg <= TOL16_SOFT)) log_fail(&lg, "%s: flash vs gemm: out %.3g grad %.3g", shapes[si].name, eo, eg);
        }
        lg.total++;
        if (!grads[0] || !grads[2] || gc_test_rel_err(grads[2], grads[0]) != 0.0)
            log_fail(&lg, "%s: flash gave other bits on a second run", shapes[si].name);
        /* fused and split backward: the same products summed in other orders */
        const double es = gc_test_rel_err(grads[3], grads[0]);
        printf("attention %-38s flash vs flash-split: grad rel err %.2e\n", shapes[si].name, es);
        lg.total++;
        if (!(es <= TOL16_SOFT)) log_fail(&lg, "%s: flash vs flash-split: grad %.3g", shapes[si].name, es);
        for (int m = 0; m < 4; m++) {
            gc_tensor_release(outs[m]);
            gc_tensor_release(grads[m]);
        }
        gc_pool_pop(ps);
    }
    gc_pool_pop(p);
    CMP_DONE(lg);
}
END_TEST

/* ---------------------------------------------------------------- embedding, gather, rope */

static gc_tensor *f_embedding(gc_tensor *const *in, void *ctx) { (void)ctx; return gc_embedding(in[0], in[1]); }
static gc_tensor *f_gather(gc_tensor *const *in, void *ctx) { (void)ctx; return gc_gather_rows(in[0], in[1]); }
static gc_tensor *f_rope(gc_tensor *const *in, void *ctx)
{
    /* cos/sin are f32 whatever x is: undo the comparison's cast of every float input */
    return gc_rope(in[0], gc_cast(in[1], GC_F32), gc_cast(in[2], GC_F32), *(const int64_t *)ctx);
}

/* q and k roped as views of one fused [B, L, 3H, D] tensor (DINOv3's q/k/v): strided
 * reads, and gradients written into the fused gradient in place, v's third zeroed */
static gc_tensor *f_rope_fused(gc_tensor *const *in, void *ctx)
{
    const int64_t H = in[0]->shape[2] / 3, start = *(const int64_t *)ctx;
    gc_tensor *cs = gc_cast(in[1], GC_F32), *sn = gc_cast(in[2], GC_F32);
    gc_tensor *qkv = gc_scale(in[0], 1.5); /* not a leaf */
    gc_tensor *ys[2] = {gc_rope(gc_slice(qkv, 2, 0, H), cs, sn, start), gc_rope(gc_slice(qkv, 2, H, 2 * H), cs, sn, start)};
    return gc_concat(2, ys, 0);
}

/* HF-style tables: position pos = first + t (+ b for [B, n, D]), frequency base^(-2i/D),
 * the same angle in both halves */
static void rope_tables(int nd, int64_t B, int64_t n, int64_t D, int64_t first, gc_tensor **cs, gc_tensor **sn)
{
    int64_t rows = (nd == 3 ? B : 1) * n;
    float *c = malloc(sizeof(float) * (size_t)(rows * D)), *s = malloc(sizeof(float) * (size_t)(rows * D));
    for (int64_t r = 0; r < rows; r++) {
        double pos = (double)(first + r % n + r / n);
        for (int64_t d = 0; d < D; d++) {
            double ang = pos * pow(10000.0, -2.0 * (double)(d % (D / 2)) / (double)D);
            c[r * D + d] = (float)cos(ang);
            s[r * D + d] = (float)sin(ang);
        }
    }
    const int64_t *sh = nd == 3 ? GC_SHAPE(B, n, D) : GC_SHAPE(n, D);
    *cs = gc_pool_add(gc_tensor_from_data(GC_F32, GC_CPU, nd, sh, c));
    *sn = gc_pool_add(gc_tensor_from_data(GC_F32, GC_CPU, nd, sh, s));
    free(c);
    free(s);
}

START_TEST(test_embedding_gather_rope)
{
    gc_pool *p = gc_pool_push();
    cmp_log lg = {0};
    gc_tensor *e32[2] = {PARAM(500, 1.0, 101, 24), INTS(GC_I32, 501, 0, 101, 3, 17)};
    cmp2(&lg, "embedding [101,24] ids i32 [3,17]", f_embedding, NULL, 2, e32, TOL32, TOL16);
    gc_tensor *e64[2] = {e32[0], INTS(GC_I64, 502, 0, 101, 5, 9)};
    cmp2(&lg, "embedding [101,24] ids i64 [5,9]", f_embedding, NULL, 2, e64, TOL32, TOL16);
    gc_tensor *rep[2] = {PARAM(503, 1.0, 7, 5), INTS(GC_I64, 504, 0, 3, 200)}; /* many repeats */
    cmp2(&lg, "embedding [7,5] ids [200] in [0,3)", f_embedding, NULL, 2, rep, TOL32, TOL16);
    gc_tensor *eb[2] = {PARAM(505, 1.0, 8192, 512), INTS(GC_I64, 506, 0, 8192, 8, 77)};
    cmp2(&lg, "embedding [8192,512] ids [8,77]", f_embedding, NULL, 2, eb, TOL32, TOL16);
    /* groups of ~770 positions (a pad token's), rows of 2 full slabs and a partial one */
    gc_tensor *eh[2] = {PARAM(507, 1.0, 50, 520), INTS(GC_I64, 508, 0, 4, 40, 77)};
    cmp2(&lg, "embedding [50,520] ids [40,77] in [0,4)", f_embedding, NULL, 2, eh, TOL32, TOL16);

    gc_tensor *g64[2] = {PARAM(510, 1.0, 4, 13, 24), INTS(GC_I64, 511, 0, 13, 4)};
    cmp2(&lg, "gather_rows [4,13,24] idx i64", f_gather, NULL, 2, g64, TOL32, TOL16);
    gc_tensor *g32[2] = {g64[0], INTS(GC_I32, 512, 0, 13, 4)};
    cmp2(&lg, "gather_rows [4,13,24] idx i32", f_gather, NULL, 2, g32, TOL32, TOL16);
    gc_tensor *gb[2] = {PARAM(513, 1.0, 64, 77, 512), INTS(GC_I64, 514, 0, 77, 64)};
    cmp2(&lg, "gather_rows [64,77,512]", f_gather, NULL, 2, gb, TOL32, TOL16);

    gc_tensor *cs, *sn;
    int64_t start = 2;
    rope_tables(2, 1, 7, 16, start, &cs, &sn);
    gc_tensor *r1[3] = {PARAM(520, 1.0, 2, 11, 3, 16), cs, sn};
    cmp2(&lg, "rope [2,11,3,16] cos [7,16] start 2", f_rope, &start, 3, r1, TOL32, TOL16);
    int64_t start3 = 3;
    rope_tables(3, 2, 5, 16, start3, &cs, &sn);
    gc_tensor *r2[3] = {r1[0], cs, sn};
    cmp2(&lg, "rope [2,11,3,16] cos [2,5,16] start 3", f_rope, &start3, 3, r2, TOL32, TOL16);
    int64_t zero = 0;
    rope_tables(2, 1, 11, 16, 0, &cs, &sn);
    gc_tensor *r3[3] = {r1[0], cs, sn};
    cmp2(&lg, "rope [2,11,3,16] all tokens", f_rope, &zero, 3, r3, TOL32, TOL16);
    rope_tables(2, 1, 197, 64, 0, &cs, &sn);
    gc_tensor *r4[3] = {PARAM(521, 1.0, 8, 197, 12, 64), cs, sn};
    cmp2(&lg, "rope [8,197,12,64]", f_rope, &zero, 3, r4, TOL32, TOL16);
    int64_t s5 = 5; /* DINOv3-style: prefix tokens (cls + 4 registers) left alone */
    rope_tables(2, 1, 196, 64, 0, &cs, &sn);
    gc_tensor *r5[3] = {PARAM(522, 1.0, 4, 201, 12, 64), cs, sn};
    cmp2(&lg, "rope [4,201,12,64] cos [196,64] start 5", f_rope, &s5, 3, r5, TOL32, TOL16);
    gc_tensor *r6[3] = {PARAM(523, 1.0, 4, 201, 36, 64), cs, sn};
    cmp2(&lg, "rope of fused q/k views [4,201,3x12,64] start 5", f_rope_fused, &s5, 3, r6, TOL32, TOL16);
    rope_tables(2, 1, 11, 6, 0, &cs, &sn);
    gc_tensor *r7[3] = {PARAM(524, 1.0, 2, 11, 9, 6), cs, sn};
    cmp2(&lg, "rope of fused q/k views [2,11,3x3,6] (scalar path)", f_rope_fused, &zero, 3, r7, TOL32, TOL16);
    gc_pool_pop(p);
    CMP_DONE(lg);
}
END_TEST

/* ---------------------------------------------------------------- shape ops, patches */

static gc_tensor *f_concat(gc_tensor *const *in, void *ctx)
{
    const int *c = ctx; /* {n, dim} */
    return gc_concat(c[0], in, c[1]);
}
static gc_tensor *f_cast(gc_tensor *const *in, void *ctx)
{
    (void)ctx;
    return gc_cast(gc_cast(in[0], GC_BF16), GC_F32);
}
static gc_tensor *f_unfold(gc_tensor *const *in, void *ctx) { return gc_unfold_patches(in[0], *(const int64_t *)ctx); }
static gc_tensor *f_patch_embed(gc_tensor *const *in, void *ctx)
{
    return gc_patch_embed(in[0], in[1], *(const int *)ctx ? in[2] : NULL);
}
static gc_tensor *f_permute(gc_tensor *const *in, void *ctx)
{
    (void)ctx;
    return gc_contiguous(gc_permute(in[0], (const int[]){2, 0, 1}));
}
static gc_tensor *f_transpose_last(gc_tensor *const *in, void *ctx)
{
    (void)ctx;
    return gc_contiguous(gc_transpose(in[0], -1, -2));
}
static gc_tensor *f_permute4(gc_tensor *const *in, void *ctx)
{
    (void)ctx; /* [B, L, H, D] -> [B, H, L, D] */
    return gc_contiguous(gc_permute(in[0], (const int[]){0, 2, 1, 3}));
}
static gc_tensor *f_slice(gc_tensor *const *in, void *ctx)
{
    (void)ctx;
    return gc_contiguous(gc_slice(in[0], 1, 2, 30));
}
static gc_tensor *f_view_nc(gc_tensor *const *in, void *ctx)
{
    (void)ctx; /* a view of a non-contiguous tensor copies */
    return gc_view(gc_transpose(in[0], 0, 1), 2, GC_SHAPE(-1, 10));
}
static gc_tensor *f_rows_mul(gc_tensor *const *in, void *ctx)
{
    (void)ctx;
    return gc_mul(gc_rows(in[0], 1, 4), in[1]);
}

START_TEST(test_shape_ops)
{
    gc_pool *p = gc_pool_push();
    cmp_log lg = {0};
    int c1[2] = {3, 1};
    gc_tensor *cat[3] = {PARAM(600, 1.0, 2, 3, 5), PARAM(601, 1.0, 2, 4, 5), PARAM(602, 1.0, 2, 1, 5)};
    cmp2(&lg, "concat dim 1 [2,3|4|1,5]", f_concat, c1, 3, cat, TOL32, TOL16);
    int c2[2] = {2, -1};
    gc_tensor *cat2[2] = {PARAM(603, 1.0, 2, 3, 5), PARAM(604, 1.0, 2, 3, 7)};
    cmp2(&lg, "concat dim -1 [2,3,5|7]", f_concat, c2, 2, cat2, TOL32, TOL16);
    int c3[2] = {2, 0};
    gc_tensor *cat3[2] = {PARAM(605, 1.0, 1, 197, 768), PARAM(606, 1.0, 63, 197, 768)};
    cmp2(&lg, "concat dim 0 [1|63,197,768]", f_concat, c3, 2, cat3, TOL32, TOL16);
    gc_tensor *cat4[2] = {PARAM(607, 1.0, 64, 1, 768), PARAM(608, 1.0, 64, 196, 768)};
    int c4[2] = {2, 1};
    cmp2(&lg, "concat dim 1 [64,1|196,768] (cls token)", f_concat, c4, 2, cat4, TOL32, TOL16);

    gc_tensor *cs[1] = {PARAM(610, 1.0, 37, 53)};
    cmp2(&lg, "cast f32->bf16->f32 [37,53]", f_cast, NULL, 1, cs, TOL32, TOL16);

    int64_t p16 = 16, p5 = 5;
    gc_tensor *u1[1] = {PARAM(620, 1.0, 2, 3, 32, 48)};
    cmp2(&lg, "unfold_patches [2,3,32,48] P 16", f_unfold, &p16, 1, u1, TOL32, TOL16);
    gc_tensor *u2[1] = {PARAM(621, 1.0, 1, 3, 15, 10)};
    cmp2(&lg, "unfold_patches [1,3,15,10] P 5", f_unfold, &p5, 1, u2, TOL32, TOL16);
    gc_tensor *u3[1] = {PARAM(622, 1.0, 8, 3, 224, 224)};
    cmp2(&lg, "unfold_patches [8,3,224,224] P 16", f_unfold, &p16, 1, u3, TOL32, TOL16);

    int with_b = 1, no_b = 0;
    gc_tensor *pe[3] = {u1[0], PARAM(630, 0.1, 40, 3, 16, 16), PARAM(631, 1.0, 40)};
    cmp2(&lg, "patch_embed [2,3,32,48] -> 40 +b", f_patch_embed, &with_b, 3, pe, TOL32, TOL16);
    cmp2(&lg, "patch_embed [2,3,32,48] -> 40", f_patch_embed, &no_b, 2, pe, TOL32, TOL16);
    gc_tensor *pe2[3] = {u2[0], PARAM(632, 0.1, 7, 3, 5, 5), PARAM(633, 1.0, 7)};
    cmp2(&lg, "patch_embed [1,3,15,10] P 5 -> 7 +b", f_patch_embed, &with_b, 3, pe2, TOL32, TOL16);
    gc_tensor *pe3[3] = {u3[0], PARAM(634, 0.03, 768, 3, 16, 16), PARAM(635, 0.1, 768)};
    cmp2(&lg, "patch_embed [8,3,224,224] -> 768 +b", f_patch_embed, &with_b, 3, pe3, TOL32, TOL16);

    gc_tensor *v1[1] = {PARAM(640, 1.0, 5, 7, 9)};
    cmp2(&lg, "permute(2,0,1)+contiguous [5,7,9]", f_permute, NULL, 1, v1, TOL32, TOL16);
    gc_tensor *v2[1] = {PARAM(641, 1.0, 3, 37, 45)};
    cmp2(&lg, "transpose(-1,-2)+contiguous [3,37,45]", f_transpose_last, NULL, 1, v2, TOL32, TOL16);
    gc_tensor *v3[1] = {PARAM(642, 1.0, 4, 33, 10)};
    cmp2(&lg, "slice dim 1 [2,30) [4,33,10]", f_slice, NULL, 1, v3, TOL32, TOL16);
    gc_tensor *v4[1] = {PARAM(643, 1.0, 6, 4, 10)};
    cmp2(&lg, "view of transpose [6,4,10]->[24,10]", f_view_nc, NULL, 1, v4, TOL32, TOL16);
    gc_tensor *v5[2] = {PARAM(644, 1.0, 6, 9), PARAM(645, 1.0, 3, 9)};
    cmp2(&lg, "rows [1,4) of [6,9] * [3,9]", f_rows_mul, NULL, 2, v5, TOL32, TOL16);
    gc_tensor *v6[1] = {PARAM(646, 1.0, 8, 197, 12, 64)};
    cmp2(&lg, "permute [8,197,12,64]->[8,12,197,64]", f_permute4, NULL, 1, v6, TOL32, TOL16);
    gc_tensor *v7[1] = {PARAM(647, 1.0, 96, 197, 64)};
    cmp2(&lg, "transpose(-1,-2)+contiguous [96,197,64]", f_transpose_last, NULL, 1, v7, TOL32, TOL16);
    gc_pool_pop(p);
    CMP_DONE(lg);
}
END_TEST

/* ---------------------------------------------------------------- reductions, loss, dropout */

static gc_tensor *f_sum(gc_tensor *const *in, void *ctx) { (void)ctx; return gc_sum(in[0]); }
static gc_tensor *f_mean(gc_tensor *const *in, void *ctx) { (void)ctx; return gc_mean(in[0]); }
static gc_tensor *f_mean_dim(gc_tensor *const *in, void *ctx) { return gc_mean_dim(in[0], *(const int *)ctx); }
static gc_tensor *f_xent(gc_tensor *const *in, void *ctx) { (void)ctx; return gc_cross_entropy(in[0], in[1]); }

typedef struct drop_case {
    double p;
    uint32_t op;
    gc_rand_context rc;
} drop_case;
static gc_tensor *f_dropout(gc_tensor *const *in, void *ctx)
{
    const drop_case *c = ctx;
    gc_rand_context_set(c->rc);
    return gc_dropout(in[0], c->p, c->op);
}

START_TEST(test_reduce_loss_dropout)
{
    gc_pool *p = gc_pool_push();
    cmp_log lg = {0};
    gc_tensor *s1[1] = {PARAM_U(700, 0.5, 1.5, 37, 53)};
    cmp2(&lg, "sum [37,53]", f_sum, NULL, 1, s1, TOL32, TOL16);
    cmp2(&lg, "mean [37,53]", f_mean, NULL, 1, s1, TOL32, TOL16);
    gc_tensor *s2[1] = {PARAM_U(701, 0.5, 1.5, 64 * 197, 768)};
    cmp2(&lg, "sum [12608,768]", f_sum, NULL, 1, s2, TOL32, TOL16);
    cmp2(&lg, "mean [12608,768]", f_mean, NULL, 1, s2, TOL32, TOL16);
    gc_tensor *s3[1] = {PARAM_U(702, 0.5, 1.5, 1)};
    cmp2(&lg, "sum [1]", f_sum, NULL, 1, s3, TOL32, TOL16);

    gc_tensor *md[1] = {PARAM(710, 1.0, 7, 9, 11)};
    static const int dims[3] = {0, 1, 2};
    char l[96];
    for (int d = 0; d < 3; d++) {
        snprintf(l, sizeof l, "mean_dim %d [7,9,11]", d);
        cmp2(&lg, l, f_mean_dim, (void *)&dims[d], 1, md, TOL32, TOL16);
    }
    gc_tensor *mdb[1] = {PARAM(711, 1.0, 64, 197, 768)};
    cmp2(&lg, "mean_dim 1 [64,197,768] (pooling)", f_mean_dim, (void *)&dims[1], 1, mdb, TOL32, TOL16);
    cmp2(&lg, "mean_dim 2 [64,197,768]", f_mean_dim, (void *)&dims[2], 1, mdb, TOL32, TOL16);

    gc_tensor *x64[2] = {PARAM(720, 2.0, 37, 53), INTS(GC_I64, 721, 0, 53, 37)};
    cmp2(&lg, "cross_entropy [37,53] i64", f_xent, NULL, 2, x64, TOL32, TOL16_SOFT);
    gc_tensor *x32[2] = {x64[0], INTS(GC_I32, 722, 0, 53, 37)};
    cmp2(&lg, "cross_entropy [37,53] i32", f_xent, NULL, 2, x32, TOL32, TOL16_SOFT);
    gc_tensor *xb[2] = {PARAM(723, 2.0, 256, 32000), INTS(GC_I64, 724, 0, 32000, 256)};
    cmp2(&lg, "cross_entropy [256,32000]", f_xent, NULL, 2, xb, TOL32, TOL16_SOFT);
    gc_tensor *xc[2] = {PARAM(725, 5.0, 512, 512), INTS(GC_I64, 726, 0, 512, 512)};
    cmp2(&lg, "cross_entropy [512,512] (CLIP logits)", f_xent, NULL, 2, xc, TOL32, TOL16_SOFT);

    drop_case d1 = {.p = 0.1, .op = 5, .rc = {.seed = 99, .step = 3, .sample_offset = 7}};
    gc_tensor *dx[1] = {PARAM(730, 1.0, 37, 53)};
    cmp2(&lg, "dropout 0.1 [37,53]", f_dropout, &d1, 1, dx, TOL32, TOL16);
    drop_case d2 = {.p = 0.5, .op = 6, .rc = {.seed = 1234567, .step = 11, .sample_offset = 0}};
    gc_tensor *dx3[1] = {PARAM(731, 1.0, 4, 9, 24)};
    cmp2(&lg, "dropout 0.5 [4,9,24]", f_dropout, &d2, 1, dx3, TOL32, TOL16);
    drop_case d0 = {.p = 0.0, .op = 7, .rc = {.seed = 1}};
    cmp2(&lg, "dropout 0 (identity)", f_dropout, &d0, 1, dx, TOL32, TOL16);
    gc_tensor *dxb[1] = {PARAM(732, 1.0, 16, 197, 768)};
    cmp2(&lg, "dropout 0.1 [16,197,768]", f_dropout, &d1, 1, dxb, TOL32, TOL16);
    gc_pool_pop(p);
    CMP_DONE(lg);
}
END_TEST

/* ---------------------------------------------------------------- runtime: copies and fills */

static const gc_dtype all_dt[6] = {GC_F32, GC_BF16, GC_F16, GC_I32, GC_I64, GC_F64};

/* CPU tensor of dtype dt with randn * scale values (integers truncate) */
static gc_tensor *host_of(gc_dtype dt, int nd, const int64_t *sh, uint64_t seed, double scale)
{
    gc_tensor *f = gc_test_randn(nd, sh, seed, scale);
    gc_tensor *t = gc_pool_add(gc_tensor_to(f, GC_CPU, dt));
    gc_tensor_release(f);
    return t;
}

typedef enum { V_PERMUTE_TILED, V_SLICE, V_PERMUTE_SMALL, V_DST_STRIDED, V_CONTIG, V_COUNT } view_kind;
static const char *view_names[V_COUNT] = {"permute [33,40,37](2,0,1)", "slice [20,30][:,3:17]",
                                          "permute [4,6,5](0,2,1)", "strided dst [5,9,7](1,2,0)", "contiguous [1000]"};

/* One copy, on the CPU and on the GPU from the same data; returns the relative error
 * of the destination buffers (expected 0: same rounding on both). */
static double copy_case(gc_dtype sdt, gc_dtype ddt, view_kind k, bool acc, uint64_t seed)
{
    gc_tensor *sb_c, *db_c;
    switch (k) {
    case V_PERMUTE_TILED: sb_c = host_of(sdt, 3, GC_SHAPE(33, 40, 37), seed, 8); db_c = host_of(ddt, 3, GC_SHAPE(37, 33, 40), seed + 1, 4); break;
    case V_SLICE: sb_c = host_of(sdt, 2, GC_SHAPE(20, 30), seed, 8); db_c = host_of(ddt, 2, GC_SHAPE(20, 14), seed + 1, 4); break;
    case V_PERMUTE_SMALL: sb_c = host_of(sdt, 3, GC_SHAPE(4, 6, 5), seed, 8); db_c = host_of(ddt, 3, GC_SHAPE(4, 5, 6), seed + 1, 4); break;
    case V_DST_STRIDED: sb_c = host_of(sdt, 3, GC_SHAPE(9, 7, 5), seed, 8); db_c = host_of(ddt, 3, GC_SHAPE(5, 9, 7), seed + 1, 4); break;
    default: sb_c = host_of(sdt, 1, GC_SHAPE(1000), seed, 8); db_c = host_of(ddt, 1, GC_SHAPE(1000), seed + 1, 4); break;
    }
    if (!sb_c || !db_c) return INFINITY;
    gc_tensor *sb_g = gc_pool_add(gc_tensor_to(sb_c, GC_CUDA0, sdt)), *db_g = gc_pool_add(gc_tensor_to(db_c, GC_CUDA0, ddt));
    if (!sb_g || !db_g) return INFINITY;
    for (int dev = 0; dev < 2; dev++) {
        gc_tensor *sb = dev ? sb_g : sb_c, *db = dev ? db_g : db_c, *s = sb, *d = db;
        switch (k) {
        case V_PERMUTE_TILED: s = gc_permute(sb, (const int[]){2, 0, 1}); break;
        case V_SLICE: s = gc_slice(sb, 1, 3, 17); break;
        case V_PERMUTE_SMALL: s = gc_permute(sb, (const int[]){0, 2, 1}); break;
        case V_DST_STRIDED: d = gc_permute(db, (const int[]){1, 2, 0}); break;
        default: break;
        }
        if (!s || !d || gc_tensor_copy_into(d, s, acc) != GC_OK) return INFINITY;
    }
    return gc_test_rel_err(db_g, db_c);
}

START_TEST(test_copy_fill)
{
    gc_pool *p = gc_pool_push();
    cmp_log lg = {0};
    int n = 0;
    for (int si = 0; si < 6; si++)
        for (int di = 0; di < 6; di++)
            for (int k = 0; k < V_COUNT; k++)
                for (int acc = 0; acc < 2; acc++) {
                    gc_pool *q = gc_pool_push();
                    double e = copy_case(all_dt[si], all_dt[di], (view_kind)k, acc, 800 + (uint64_t)(n % 7));
                    n++;
                    lg.total++;
                    if (!(e <= 1e-6))
                        log_fail(&lg, "copy %s -> %s %s%s: rel err %.3g (%s)", gc_dtype_name(all_dt[si]),
                                 gc_dtype_name(all_dt[di]), view_names[k], acc ? " +=" : "", e, gc_error_message());
                    gc_error_clear();
                    gc_pool_pop(q);
                }
    printf("%-40s %d copies (6 x 6 dtypes, %d layouts, = and +=)\n", "copy_strided", n, (int)V_COUNT);

    static const double vals[5] = {2.7, -1.25, 0.0, -0.0, 3e4};
    for (int di = 0; di < 6; di++)
        for (int v = 0; v < 5; v++) {
            gc_pool *q = gc_pool_push();
            gc_tensor *c = gc_pool_add(gc_tensor_new(all_dt[di], GC_CPU, 1, GC_SHAPE(1001)));
            gc_tensor *g = gc_pool_add(gc_tensor_new(all_dt[di], GC_CUDA0, 1, GC_SHAPE(1001)));
            lg.total++;
            double e = c && g && gc_tensor_fill(c, vals[v]) == GC_OK && gc_tensor_fill(g, vals[v]) == GC_OK
                           ? gc_test_rel_err(g, c) : INFINITY;
            if (!(e == 0)) log_fail(&lg, "fill %s with %g: rel err %.3g (%s)", gc_dtype_name(all_dt[di]), vals[v], e, gc_error_message());
            gc_error_clear();
            gc_pool_pop(q);
        }

    /* offsets beyond 2^30 elements: the 64-bit index path, both directions
     * (x: bf16 [3, 2^29 + 1], 3 GiB; the slice [:, 5:9] spans more than 2^30) */
    const int64_t wide = ((int64_t)1 << 29) + 1;
    gc_tensor *x = gc_pool_add(gc_tensor_zeros(GC_BF16, GC_CUDA0, 2, GC_SHAPE(3, wide)));
    lg.total++;
    if (!x) {
        log_fail(&lg, "64-bit copy: could not allocate 3 GiB: %s", gc_error_message());
    } else {
        gc_tensor *src = gc_pool_add(gc_tensor_to(RANDN(830, 1.0, 3, 4), GC_CPU, GC_BF16));
        gc_tensor *win = gc_slice(x, 1, 5, 9);
        gc_tensor *back = gc_pool_add(gc_tensor_zeros(GC_F32, GC_CPU, 2, GC_SHAPE(3, 4)));
        gc_tensor *before = gc_slice(x, 1, 1, 5);
        gc_tensor *zeros = gc_pool_add(gc_tensor_zeros(GC_F32, GC_CPU, 2, GC_SHAPE(3, 4)));
        gc_tensor *chk = gc_pool_add(gc_tensor_zeros(GC_F32, GC_CPU, 2, GC_SHAPE(3, 4)));
        bool ok = src && win && back && before && gc_tensor_copy_into(win, src, false) == GC_OK &&
                  gc_tensor_copy_into(back, win, false) == GC_OK && gc_tensor_copy_into(chk, before, false) == GC_OK;
        double e = ok ? gc_test_rel_err(back, src) : INFINITY, z = ok ? gc_test_rel_err(chk, zeros) : INFINITY;
        printf("%-40s bf16  64-bit index path rel err %.2e, untouched neighbours %.2e\n", "copy_strided [3,2^29+1][:,5:9]", e, z);
        if (!(e == 0 && z == 0)) log_fail(&lg, "64-bit strided copy: rel err %.3g, neighbours %.3g (%s)", e, z, gc_error_message());
        gc_error_clear();
    }
    gc_pool_pop(p);
    gc_memory_release_cached(GC_CUDA0);
    CMP_DONE(lg);
}
END_TEST

/* ---------------------------------------------------------------- runtime: allocator */

START_TEST(test_allocator)
{
    cmp_log lg = {0};
#define EXPECT(cond, ...) do { lg.total++; if (!(cond)) log_fail(&lg, __VA_ARGS__); } while (0)
    /* the peak is historical: an earlier test may have released its cache since (reserved < peak) */
    gc_memory_reset_peak(GC_CUDA0);
    gc_memory_stats s0 = gc_memory_stats_get(GC_CUDA0);
    void *a = gc_device_alloc(GC_CUDA0, 1000);
    gc_memory_stats s1 = gc_memory_stats_get(GC_CUDA0);
    EXPECT(a != NULL, "alloc 1000 B: %s", gc_error_message());
    EXPECT(s1.current == s0.current + 1024, "1000 B should take a 1024 B block (current %zu -> %zu)", s0.current, s1.current);
    gc_device_free(GC_CUDA0, a);
    void *b = gc_device_alloc(GC_CUDA0, 600); /* same class: the cached block */
    gc_memory_stats s2 = gc_memory_stats_get(GC_CUDA0);
    EXPECT(b == a, "a freed block is not reused for the same size class (%p vs %p)", a, b);
    EXPECT(s2.system_allocs == s1.system_allocs, "reuse called cudaMalloc (%llu -> %llu)",
           (unsigned long long)s1.system_allocs, (unsigned long long)s2.system_allocs);
    gc_device_free(GC_CUDA0, b);
    void *z1 = gc_device_alloc(GC_CUDA0, 0), *z2 = gc_device_alloc(GC_CUDA0, 0);
    EXPECT(z1 && z2 && z1 != z2, "zero-byte allocations must be unique, non-NULL pointers (%p, %p)", z1, z2);
    gc_device_free(GC_CUDA0, z1);
    gc_device_free(GC_CUDA0, z2);
    gc_device_free(GC_CUDA0, NULL); /* no-op */
    gc_memory_stats s3 = gc_memory_stats_get(GC_CUDA0);
    void *big = gc_device_alloc(GC_CUDA0, (3u << 20) + 1); /* 3 MiB + 1: class step 256 KiB -> 3.25 MiB */
    gc_memory_stats s4 = gc_memory_stats_get(GC_CUDA0);
    EXPECT(big && s4.current - s3.current == (13u << 18), "3 MiB + 1 B took %zu bytes (expected 3.25 MiB)", s4.current - s3.current);
    EXPECT(s4.peak >= s4.current && s4.reserved >= s4.peak, "stats inconsistent: current %zu peak %zu reserved %zu", s4.current,
           s4.peak, s4.reserved);
    gc_device_free(GC_CUDA0, big);

    /* out of memory: NULL + GC_ERR_OOM naming the size, and the GPU still works after */
    gc_error_clear();
    void *huge = gc_device_alloc(GC_CUDA0, (size_t)1 << 50);
    EXPECT(huge == NULL && gc_error_code() == GC_ERR_OOM && strstr(gc_error_message(), "out of GPU memory"),
           "a 1 PiB allocation should fail with GC_ERR_OOM, got %s: %s", gc_status_name(gc_error_code()), gc_error_message());
    printf("%-40s %s\n", "OOM message:", gc_error_message());
    gc_error_clear();
    gc_pool *p = gc_pool_push();
    gc_tensor *t = gc_pool_add(gc_tensor_new(GC_F32, GC_CUDA0, 1, GC_SHAPE(4097)));
    float back[4097] = {0};
    EXPECT(t && gc_tensor_fill(t, 1.5) == GC_OK && gc_device_sync(GC_CUDA0) == GC_OK &&
               gc_tensor_to_host_f32(t, back) == GC_OK && back[0] == 1.5f && back[4096] == 1.5f,
           "GPU unusable after an OOM: %s (read back %g)", gc_error_message(), back[4096]);
    gc_error_clear();
    gc_pool_pop(p);

    /* release: nothing cached stays reserved */
    gc_memory_release_cached(GC_CUDA0);
    gc_memory_stats s5 = gc_memory_stats_get(GC_CUDA0);
    EXPECT(s5.reserved == s5.current, "after release_cached reserved %zu != current %zu", s5.reserved, s5.current);
    gc_memory_reset_peak(GC_CUDA0);
    gc_memory_stats s6 = gc_memory_stats_get(GC_CUDA0);
    EXPECT(s6.peak == s6.current, "after reset_peak peak %zu != current %zu", s6.peak, s6.current);
#undef EXPECT
    CMP_DONE(lg);
}
END_TEST

/* One training step of a small MLP classifier (params on the GPU): forward, backward,
 * everything released. */
static gc_status mlp_step(gc_tensor *const *prm, gc_tensor *x, gc_tensor *y)
{
    gc_pool *p = gc_pool_push();
    gc_tape *tape = gc_tape_init();
    gc_tape_begin(tape);
    gc_tensor *h = gc_activation(gc_linear(x, prm[0], prm[1]), GC_ACT_GELU_TANH);
    h = gc_layernorm(h, prm[2], prm[3], 1e-5);
    gc_tensor *logits = gc_cast(gc_linear(h, prm[4], NULL), GC_F32);
    gc_tensor *loss = gc_cross_entropy(logits, y);
    gc_tape_end(tape);
    gc_status st = loss ? gc_backward(tape, 1, &loss, NULL) : GC_PENDING();
    gc_tape_free(tape);
    gc_pool_pop(p);
    if (st == GC_OK) st = gc_device_sync(GC_CUDA0);
    return st;
}

START_TEST(test_allocator_steady_state)
{
    cmp_log lg = {0};
    gc_dtype dts[2] = {GC_F32, GC_BF16};
    for (int di = 0; di < 2; di++) {
        gc_dtype dt = dts[di];
        gc_pool *p = gc_pool_push();
        gc_tensor *host[5] = {RANDN(900, 0.1, 96, 48), RANDN(901, 0.1, 96), RANDN(902, 1.0, 96), RANDN(903, 0.1, 96),
                              RANDN(904, 0.1, 10, 96)};
        gc_tensor *prm[5];
        for (int i = 0; i < 5; i++) {
            prm[i] = gc_pool_add(gc_tensor_to(host[i], GC_CUDA0, dt));
            if (prm[i]) gc_tensor_requires_grad(prm[i], true);
        }
        gc_tensor *x = gc_pool_add(gc_tensor_to(RANDN(905, 1.0, 37, 48), GC_CUDA0, dt));
        gc_tensor *y = gc_pool_add(gc_tensor_to(INTS(GC_I64, 906, 0, 10, 37), GC_CUDA0, GC_I64));
        gc_memory_stats s0 = gc_memory_stats_get(GC_CUDA0);
        gc_status st1 = mlp_step(prm, x, y);
        gc_memory_stats s1 = gc_memory_stats_get(GC_CUDA0);
        gc_status st2 = mlp_step(prm, x, y);
        gc_memory_stats s2 = gc_memory_stats_get(GC_CUDA0);
        gc_status st3 = mlp_step(prm, x, y);
        gc_memory_stats s3 = gc_memory_stats_get(GC_CUDA0);
        const char *dn = gc_dtype_name(dt);
        printf("%-40s %-5s system allocs %llu -> %llu -> %llu -> %llu, current %zu -> %zu, peak %zu, reserved %zu\n",
               "allocator steady state (MLP step)", dn, (unsigned long long)s0.system_allocs,
               (unsigned long long)s1.system_allocs, (unsigned long long)s2.system_allocs,
               (unsigned long long)s3.system_allocs, s0.current, s3.current, s3.peak, s3.reserved);
        lg.total += 4;
        if (st1 != GC_OK || st2 != GC_OK || st3 != GC_OK) log_fail(&lg, "%s MLP step failed: %s", dn, gc_error_message());
        if (s2.system_allocs != s1.system_allocs || s3.system_allocs != s1.system_allocs)
            log_fail(&lg, "%s: a repeated step called cudaMalloc (%llu -> %llu -> %llu)", dn,
                     (unsigned long long)s1.system_allocs, (unsigned long long)s2.system_allocs,
                     (unsigned long long)s3.system_allocs);
        if (s2.current != s1.current || s3.current != s1.current)
            log_fail(&lg, "%s: each step leaks GPU memory (current %zu -> %zu -> %zu -> %zu)", dn, s0.current, s1.current,
                     s2.current, s3.current);
        else if (s1.current != s0.current) /* something kept once (a lazily made constant?): worth a look */
            printf("%-40s %-5s note: the first step kept %zu bytes\n", "allocator steady state", dn, s1.current - s0.current);
        if (!(s3.peak > s3.current && s3.reserved >= s3.peak))
            log_fail(&lg, "%s: stats inconsistent: current %zu peak %zu reserved %zu", dn, s3.current, s3.peak, s3.reserved);
        gc_error_clear();
        gc_pool_pop(p);
    }
    CMP_DONE(lg);
}
END_TEST

/* ---------------------------------------------------------------- runtime: pinned host memory */

static void no_release(void *ctx, void *data, size_t nbytes)
{
    (void)ctx;
    (void)data;
    (void)nbytes;
}

/* gc_tensor_pin: chunks of a pinned host batch uploaded with gc_tensor_to (same dtype: one
 * asynchronous copy) and gc_input_to (bf16: copy, then convert on the device), the host
 * buffer overwritten only after gc_device_sync (gc_cuda_sync), as the rule says: every device copy is
 * exact. Pinning a view, twice, a device tensor, memory another tensor already pinned;
 * freeing a pinned tensor with its upload still queued. */
START_TEST(test_pinned_uploads)
{
    cmp_log lg = {0};
#define EXPECT(cond, ...) do { lg.total++; if (!(cond)) log_fail(&lg, __VA_ARGS__); } while (0)
    gc_pool *p = gc_pool_push();
    const int64_t R = 4096, C = 1000, CH = 384; /* 16 MB: the copies take a while (last chunk partial) */
    gc_tensor *ref = gc_pool_add(gc_test_uniform(2, GC_SHAPE(R, C), 1200, -1, 1));
    gc_tensor *x = gc_pool_add(gc_tensor_to(ref, GC_CPU, GC_F32));
    EXPECT(x && gc_tensor_pin(x) == GC_OK && gc_tensor_is_pinned(x), "pin [%lld, %lld] f32: %s", (long long)R, (long long)C,
           gc_error_message());
    gc_error_clear();
    enum { MAXC = 16 };
    gc_tensor *up32[MAXC] = {0}, *up16[MAXC] = {0};
    int nc = 0;
    for (int64_t s0 = 0; s0 < R && nc < MAXC; s0 += CH, nc++) {
        int64_t e = s0 + CH < R ? s0 + CH : R;
        up32[nc] = gc_pool_add(gc_tensor_to(gc_rows(x, s0, e), GC_CUDA0, GC_F32));
        up16[nc] = gc_input_to(gc_rows(x, s0, e), GC_CUDA0, GC_BF16);
    }
    EXPECT(gc_device_sync(GC_CUDA0) == GC_OK, "sync after the uploads: %s", gc_error_message());
    /* the stream has passed every copy: the host may write into the buffer */
    EXPECT(gc_tensor_fill(x, -7.0) == GC_OK, "overwriting the host batch: %s", gc_error_message());
    for (int k = 0; k < nc; k++) {
        int64_t s0 = k * CH, e = s0 + CH < R ? s0 + CH : R;
        gc_tensor *want = gc_rows(ref, s0, e);
        gc_tensor *want16 = gc_pool_add(gc_tensor_to(want, GC_CPU, GC_BF16));
        double e32 = up32[k] ? gc_test_rel_err(up32[k], want) : INFINITY;
        double e16 = up16[k] ? gc_test_rel_err(up16[k], want16) : INFINITY;
        EXPECT(e32 == 0 && e16 == 0, "chunk %d rows %lld..%lld: f32 rel err %.3g, bf16 %.3g (%s)", k, (long long)s0,
               (long long)e, e32, e16, gc_error_message());
    }
    printf("%-40s %d chunks of [%lld, %lld] f32 and bf16, host rewritten after the sync: exact\n", "pinned uploads", nc,
           (long long)CH, (long long)C);
    gc_error_clear();

    /* a view pins its storage, once; a device tensor has nothing to pin */
    gc_tensor *y = gc_pool_add(gc_tensor_to(ref, GC_CPU, GC_F32));
    gc_tensor *yv = gc_rows(y, 100, 200);
    EXPECT(gc_tensor_pin(yv) == GC_OK && gc_tensor_is_pinned(y), "pin a view: %s", gc_error_message());
    EXPECT(gc_tensor_pin(y) == GC_OK && gc_tensor_pin(yv) == GC_OK, "pin twice: %s", gc_error_message());
    gc_tensor *d = up32[0];
    EXPECT(d && gc_tensor_pin(d) == GC_OK && !gc_tensor_is_pinned(d), "pin a device tensor: %s", gc_error_message());
    gc_error_clear();

    /* the same memory under a second tensor: already registered, so not its to unpin; its
     * uploads are still right, and releasing it leaves the first registration alone */
    gc_tensor *alias = gc_tensor_wrap(GC_F32, GC_CPU, 2, GC_SHAPE(R, C), gc_tensor_data(y), no_release, NULL);
    EXPECT(alias && gc_tensor_pin(alias) == GC_OK && !gc_tensor_is_pinned(alias), "pin memory pinned already: %s",
           gc_error_message());
    gc_tensor *ya = alias ? gc_pool_add(gc_tensor_to(gc_rows(alias, 7, 900), GC_CUDA0, GC_F32)) : NULL;
    gc_tensor_release(alias);
    gc_tensor *yb = gc_pool_add(gc_tensor_to(gc_rows(y, 7, 900), GC_CUDA0, GC_F32));
    EXPECT(ya && yb && gc_test_rel_err(ya, gc_rows(ref, 7, 900)) == 0 && gc_test_rel_err(yb, gc_rows(ref, 7, 900)) == 0,
           "uploads through the alias / the owner differ: %s", gc_error_message());
    gc_error_clear();

    /* freed with its upload still queued: the unpinning waits for the copy */
    gc_tensor *z = gc_tensor_to(ref, GC_CPU, GC_F32);
    EXPECT(z && gc_tensor_pin(z) == GC_OK, "pin: %s", gc_error_message());
    gc_tensor *zd = z ? gc_pool_add(gc_tensor_to(z, GC_CUDA0, GC_F32)) : NULL;
    gc_tensor_release(z);
    float *junk = malloc(sizeof(float) * (size_t)(R * C)); /* likely the same pages again */
    if (junk) for (int64_t i = 0; i < R * C; i++) junk[i] = -3.0f;
    EXPECT(zd && gc_test_rel_err(zd, ref) == 0, "a pinned tensor freed before its upload ran: rel err %.3g (%s)",
           zd ? gc_test_rel_err(zd, ref) : INFINITY, gc_error_message());
    free(junk);
    gc_error_clear();
    EXPECT(gc_device_sync(GC_CUDA0) == GC_OK, "the GPU after pinning: %s", gc_error_message());
    gc_pool_pop(p);
    gc_memory_release_cached(GC_CUDA0);
#undef EXPECT
    CMP_DONE(lg);
}
END_TEST

/* gc_upload_begin / gc_upload_end (gradcache.c's chunks a chunk ahead): rows of a pinned
 * host batch uploaded on the copy stream, each begun before the previous one has ended,
 * into blocks the compute stream has just released while work that writes them is still
 * queued (the copy must wait for it, or that work's -5s land after it), each read by a
 * kernel as soon as it is ended (a conversion to bf16, launched as a programmatic
 * dependent): every upload exact. A source on the device is handed back itself; a strided host source is copied. */
START_TEST(test_uploads)
{
    cmp_log lg = {0};
#define EXPECT(cond, ...) do { lg.total++; if (!(cond)) log_fail(&lg, __VA_ARGS__); } while (0)
    gc_pool *p = gc_pool_push();
    const int64_t R = 4096, C = 1000, CH = 512;
    gc_tensor *ref = gc_pool_add(gc_test_uniform(2, GC_SHAPE(R, C), 1201, -1, 1));
    gc_tensor *x = gc_pool_add(gc_tensor_to(ref, GC_CPU, GC_F32));
    EXPECT(x && gc_tensor_pin(x) == GC_OK, "pin: %s", gc_error_message());
    gc_tensor *busy = gc_pool_add(gc_tensor_new(GC_F32, GC_CUDA0, 1, GC_SHAPE((int64_t)1 << 26))); /* 256 MB */
    enum { NC = 8 };
    gc_tensor *got[NC] = {0};
    gc_upload up = {0}, next = {0};
    for (int k = 0; k < NC; k++) {
        /* queued work that writes a block of the chunk's size class, released at once */
        for (int i = 0; i < 4 && busy; i++) EXPECT(gc_tensor_fill(busy, (double)i) == GC_OK, "fill: %s", gc_error_message());
        gc_tensor *junk = gc_tensor_new(GC_F32, GC_CUDA0, 2, GC_SHAPE(CH, C));
        EXPECT(junk && gc_tensor_fill(junk, -5.0) == GC_OK, "junk: %s", gc_error_message());
        gc_tensor_release(junk);
        EXPECT(gc_upload_begin(k ? &next : &up, gc_rows(x, k * CH, (k + 1) * CH), GC_CUDA0) == GC_OK, "begin %d: %s", k,
               gc_error_message());
        if (k) { /* the previous chunk's, after the next began; a kernel reads it at once */
            got[k - 1] = gc_pool_add(gc_tensor_to(gc_pool_add(gc_upload_end(&up)), GC_CUDA0, GC_BF16));
            up = next;
            next = (gc_upload){0};
        }
    }
    got[NC - 1] = gc_pool_add(gc_tensor_to(gc_pool_add(gc_upload_end(&up)), GC_CUDA0, GC_BF16));
    for (int k = 0; k < NC; k++) {
        gc_tensor *want = gc_pool_add(gc_tensor_to(gc_rows(ref, k * CH, (k + 1) * CH), GC_CPU, GC_BF16));
        double e = got[k] ? gc_test_rel_err(got[k], want) : INFINITY;
        EXPECT(got[k] && got[k]->device.type == GC_DEVICE_CUDA && e == 0, "upload %d: rel err %.3g (%s)", k, e,
               gc_error_message());
    }
    printf("%-40s %d chunks of [%lld, %lld] f32 on the copy stream, into blocks just released: exact\n", "uploads", NC,
           (long long)CH, (long long)C);
    gc_error_clear();
    /* already on the device: itself; a strided host view: a plain copy */
    gc_upload u;
    EXPECT(got[0] && gc_upload_begin(&u, got[0], GC_CUDA0) == GC_OK && u.t == got[0], "a device source: %s", gc_error_message());
    gc_tensor_release(gc_upload_end(&u));
    gc_tensor *xt = gc_transpose(gc_rows(x, 0, 64), 0, 1);
    EXPECT(xt && gc_upload_begin(&u, xt, GC_CUDA0) == GC_OK, "a strided host source: %s", gc_error_message());
    gc_tensor *ut = gc_pool_add(gc_upload_end(&u));
    EXPECT(ut && gc_test_rel_err(ut, gc_transpose(gc_rows(ref, 0, 64), 0, 1)) == 0, "a strided host source: %s",
           gc_error_message());
    gc_error_clear();
    EXPECT(gc_device_sync(GC_CUDA0) == GC_OK, "the GPU after the uploads: %s", gc_error_message());
    gc_pool_pop(p);
#undef EXPECT
    CMP_DONE(lg);
}
END_TEST

/* ---------------------------------------------------------------- error paths on the GPU */

START_TEST(test_gpu_errors)
{
    gc_pool *p = gc_pool_push();
    cmp_log lg = {0};
#define EXPECT_ERR(expr, code)                                                                                     \
    do {                                                                                                           \
        gc_error_clear();                                                                                          \
        lg.total++;                                                                                                \
        bool failed_ = (expr);                                                                                     \
        if (!failed_ || gc_error_code() != (code))                                                                 \
            log_fail(&lg, "%s: expected %s, got %s (%s)", #expr, gc_status_name(code), gc_status_name(gc_error_code()), \
                     gc_error_message());                                                                          \
        else                                                                                                       \
            printf("%-40s ok: %s\n", "error path", gc_error_message());                                            \
        gc_error_clear();                                                                                          \
    } while (0)
    gc_tensor *a_c = RANDN(950, 1.0, 4, 8), *b_c = RANDN(951, 1.0, 8, 4), *w_c = RANDN(952, 1.0, 8);
    gc_tensor *a_g = gc_pool_add(gc_tensor_to(a_c, GC_CUDA0, GC_F32)), *b_g = gc_pool_add(gc_tensor_to(b_c, GC_CUDA0, GC_F32));
    gc_tensor *ids_c = INTS(GC_I64, 953, 0, 4, 5), *q_g = gc_pool_add(gc_tensor_to(RANDN(954, 1.0, 1, 3, 2, 8), GC_CUDA0, GC_F32));
    gc_tensor *k_c = RANDN(955, 1.0, 1, 3, 2, 8), *t_c = INTS(GC_I64, 956, 0, 4, 8);
    EXPECT_ERR(gc_add(a_c, a_g) == NULL, GC_ERR_DEVICE);
    EXPECT_ERR(gc_mul(a_g, a_c) == NULL, GC_ERR_DEVICE);
    EXPECT_ERR(gc_matmul(a_g, b_c, false, false) == NULL, GC_ERR_DEVICE);
    EXPECT_ERR(gc_linear(a_g, b_c, NULL) == NULL, GC_ERR_DEVICE);
    EXPECT_ERR(gc_layernorm(a_g, w_c, NULL, 1e-5) == NULL, GC_ERR_DEVICE);
    /* ids may stay on the host with a GPU table (the models keep them there: no sync to read
     * them back); a CPU table with GPU ids is an error */
    gc_tensor *ids_g = gc_pool_add(gc_tensor_to(ids_c, GC_CUDA0, GC_I64));
    EXPECT_ERR(gc_embedding(a_c, ids_g) == NULL, GC_ERR_DEVICE);
    {
        gc_tensor *e_host = gc_embedding(a_g, ids_c), *e_dev = gc_embedding(a_g, ids_g);
        lg.total++;
        if (!e_host || !e_dev) log_fail(&lg, "embedding with host / device ids failed: %s", gc_error_message());
        else if (gc_test_rel_err(gc_pool_add(gc_tensor_to(e_host, GC_CPU, GC_F32)), gc_pool_add(gc_tensor_to(e_dev, GC_CPU, GC_F32))) != 0)
            log_fail(&lg, "embedding: host ids and device ids disagree");
        gc_error_clear();
    }
    EXPECT_ERR(gc_cross_entropy(b_g, t_c) == NULL, GC_ERR_DEVICE);
    EXPECT_ERR(gc_attention(q_g, k_c, q_g, &(gc_attn_opts){0}) == NULL, GC_ERR_DEVICE);
    EXPECT_ERR(gc_concat(2, (gc_tensor *[]){a_g, a_c}, 0) == NULL, GC_ERR_DEVICE);
    /* GEMM: unsupported dtypes and bad leading dims */
    gc_gemm_args g = {.m = 4, .n = 4, .k = 8, .a = gc_tensor_data(a_g), .lda = 8, .b = gc_tensor_data(b_g), .ldb = 4,
                      .c = gc_tensor_data(b_g), .ldc = 4, .ab_dtype = GC_F32, .c_dtype = GC_BF16, .alpha = 1};
    EXPECT_ERR(gc_gemm(GC_CUDA0, &g) != GC_OK, GC_ERR_DTYPE);
    g.c_dtype = GC_F32;
    g.ab_dtype = GC_I32;
    EXPECT_ERR(gc_gemm(GC_CUDA0, &g) != GC_OK, GC_ERR_DTYPE);
    g.ab_dtype = GC_F32;
    g.lda = 3;
    EXPECT_ERR(gc_gemm(GC_CUDA0, &g) != GC_OK, GC_ERR_INVALID);
    /* copies between GPU tensors of different shapes */
    EXPECT_ERR(gc_tensor_copy_into(a_g, b_g, false) != GC_OK, GC_ERR_SHAPE);
#undef EXPECT_ERR
    /* the GPU is still fine */
    lg.total++;
    if (gc_device_sync(GC_CUDA0) != GC_OK) log_fail(&lg, "sync after error paths: %s", gc_error_message());
    gc_pool_pop(p);
    CMP_DONE(lg);
}
END_TEST

/* ---------------------------------------------------------------- main */

/* CUDA availability, asked in a child: the parent must not create a CUDA context before
 * Check forks the tests. */
static bool probe_cuda(void)
{
    if (!gc_cuda_built()) return false;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) return false;
    if (pid == 0) _exit(gc_cuda_available() ? 0 : 1);
    int status = 0;
    if (waitpid(pid, &status, 0) != pid) return false;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0); /* lines survive a crashing test child */
    if (!probe_cuda()) {
        printf("gpu suite: no CUDA device (skipped)\n");
        return 77;
    }
    Suite *s = suite_create("gpu");
    struct { const char *name; const TTest *test; } tests[] = {
        {"runtime", test_copy_fill}, {"runtime", test_allocator}, {"runtime", test_allocator_steady_state},
        {"runtime", test_gpu_errors}, {"pinned", test_pinned_uploads}, {"pinned", test_uploads}, {"gemm", test_gemm}, {"gemm", test_mlp_act_bias}, {"gemm", test_gemm_plan}, {"gemm", test_matmul_linear},
        {"gemm_sm90", test_gemm_sm90}, {"gemm_sm90_bench", test_gemm_sm90_bench},
        {"elementwise", test_elementwise}, {"elementwise", test_elementwise_vector}, {"norm", test_norms_softmax},
        {"attention", test_attention},
        {"flash", test_flash_dispatch}, {"flash", test_attention_nan}, {"flash", test_flash_vs_cpu}, {"flash_bench", test_flash_clip_bench},
        {"misc", test_embedding_gather_rope}, {"misc", test_shape_ops}, {"misc", test_reduce_loss_dropout},
    };
    TCase *tc = NULL;
    const char *cur = "";
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
        if (strcmp(cur, tests[i].name)) {
            cur = tests[i].name;
            tc = gc_test_tcase(cur);
            tcase_set_timeout(tc, 300);
            suite_add_tcase(s, tc);
        }
        tcase_add_test(tc, tests[i].test);
    }
    return gc_test_run(s);
}
