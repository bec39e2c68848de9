/* gc_attention: finite-difference gradients of q, k, v (bidirectional, causal, masks,
 * GQA, dropout, odd sizes, non-contiguous inputs) for both implementations that run on
 * the CPU (gc_attention_set_impl "ref": the reference loops; "gemm": the GEMM + row-kernel path that
 * CUDA runs, with its score rows padded to 8 elements), the two against each other, known
 * values, the dropout stream's layout and its independence of batch chunking, and
 * argument errors. The CUDA-only flash kernels are compared with the CPU reference in
 * tests/test_gpu.c (CK_RUN_CASE=flash). */
#include "gc_test.h"

#include <stdlib.h>
#include <string.h>

static const char *const impls[2] = {"ref", "gemm"};

typedef struct actx {
    gc_attn_opts o;
    const char *impl;
    int layout;             /* 0: q, k, v as given; 1: in[0] is qkv [B, L, 3H, D], sliced; 2: k given [B, Hkv, Lk, D], transposed */
    int64_t H;              /* heads, for layout 1 */
    gc_tensor *mask;        /* copied into o.mask */
    gc_rand_context rc;
} actx;

static gc_tensor *f_attn(gc_tensor *const *in, void *vctx)
{
    actx *c = vctx;
    ck_assert_int_eq(gc_attention_set_impl(c->impl), GC_OK);
    gc_rand_context_set(c->rc);
    gc_attn_opts o = c->o;
    o.mask = c->mask;
    if (c->layout == 1) {
        gc_tensor *q = gc_slice(in[0], 2, 0, c->H), *k = gc_slice(in[0], 2, c->H, 2 * c->H),
                  *v = gc_slice(in[0], 2, 2 * c->H, 3 * c->H);
        return gc_attention(q, k, v, &o);
    }
    if (c->layout == 2) return gc_attention(in[0], gc_transpose(in[1], 1, 2), in[2], &o);
    return gc_attention(in[0], in[1], in[2], &o);
}

typedef struct shp { int64_t B, Lq, Lk, H, Hkv, D; } shp;

/* q, k, v as trainable leaves; seed varies the values */
static void make_qkv(shp s, uint64_t seed, gc_tensor **in)
{
    in[0] = gc_test_param(4, GC_SHAPE(s.B, s.Lq, s.H, s.D), seed, 1.0);
    in[1] = gc_test_param(4, GC_SHAPE(s.B, s.Lk, s.Hkv, s.D), seed + 1, 1.0);
    in[2] = gc_test_param(4, GC_SHAPE(s.B, s.Lk, s.Hkv, s.D), seed + 2, 1.0);
}

static void release_all(int n, gc_tensor **in)
{
    for (int i = 0; i < n; i++) gc_tensor_release(in[i]);
}

/* Forward + backward with a fixed cotangent; host copies of out and every input's grad. */
static void run_fb(actx *c, int n, gc_tensor *const *in, double **out, int64_t *nout, double **grads)
{
    for (int i = 0; i < n; i++) gc_tensor_zero_grad(in[i]);
    gc_pool *p = gc_pool_push();
    gc_tape *t = gc_tape_init();
    gc_tape_begin(t);
    gc_tensor *y = f_attn(in, c);
    gc_tape_end(t);
    ck_assert_msg(y != NULL, "forward failed: %s", gc_error_message());
    gc_tensor *R = gc_pool_add(gc_test_randn(y->ndim, y->shape, 31, 1.0));
    ck_assert_int_eq(gc_backward(t, 1, &y, &R), GC_OK);
    *nout = gc_tensor_numel(y);
    *out = malloc(sizeof(double) * (size_t)(*nout + 1));
    ck_assert_int_eq(gc_tensor_to_host_f64(y, *out), GC_OK);
    for (int i = 0; i < n; i++) {
        grads[i] = malloc(sizeof(double) * (size_t)(gc_tensor_numel(in[i]) + 1));
        ck_assert_int_eq(gc_tensor_to_host_f64(gc_tensor_grad(in[i]), grads[i]), GC_OK);
    }
    gc_tape_free(t);
    gc_pool_pop(p);
}

static double rel_err(const double *a, const double *b, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(b[i])) return INFINITY;
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Gradcheck under both implementations, then ref vs gemm on out and grads. */
static void check_case(const char *label, actx *c, int n, gc_tensor *const *in)
{
    double *out[2], *g[2][3];
    int64_t nout[2];
    for (int m = 0; m < 2; m++) {
        c->impl = impls[m];
        double r = gc_test_gradcheck(f_attn, c, n, in, NULL);
        ck_assert_msg(r <= 1.0, "%s (%s): gradient check error %.3g x the tolerance", label, impls[m], r);
        run_fb(c, n, in, &out[m], &nout[m], g[m]);
    }
    ck_assert_int_eq(nout[0], nout[1]);
    double e = rel_err(out[1], out[0], nout[0]);
    ck_assert_msg(e < 1e-5, "%s: gemm vs ref out rel err %.3g", label, e);
    for (int i = 0; i < n; i++) {
        e = rel_err(g[1][i], g[0][i], gc_tensor_numel(in[i]));
        ck_assert_msg(e < 1e-5, "%s: gemm vs ref grad[%d] rel err %.3g", label, i, e);
    }
    for (int m = 0; m < 2; m++) {
        free(out[m]);
        for (int i = 0; i < n; i++) free(g[m][i]);
    }
}

static void check_shape(const char *label, shp s, gc_attn_opts o, gc_tensor *mask)
{
    gc_tensor *in[3];
    make_qkv(s, 11, in);
    actx c = {.o = o, .mask = mask, .rc = {1234, 7, 0}};
    check_case(label, &c, 3, in);
    release_all(3, in);
}

START_TEST(test_bidirectional)
{
    check_shape("bidirectional", (shp){2, 5, 5, 2, 2, 6}, (gc_attn_opts){0}, NULL);
    check_shape("bidirectional Lq != Lk", (shp){2, 3, 5, 2, 2, 6}, (gc_attn_opts){0}, NULL);
    check_shape("explicit scale", (shp){1, 4, 3, 1, 1, 5}, (gc_attn_opts){.scale = 0.7}, NULL);
}
END_TEST

START_TEST(test_causal)
{
    gc_attn_opts o = {.causal = true};
    check_shape("causal Lq == Lk", (shp){2, 5, 5, 2, 2, 6}, o, NULL);
    check_shape("causal Lq < Lk", (shp){2, 3, 5, 2, 2, 6}, o, NULL);
    check_shape("causal Lq > Lk (rows with no key)", (shp){1, 5, 3, 2, 1, 4}, o, NULL);
}
END_TEST

/* additive masks with -inf entries and one fully masked row */
static gc_tensor *make_mask(int64_t B, int64_t Lq, int64_t Lk, bool batched)
{
    gc_tensor *m = batched ? gc_test_randn(3, GC_SHAPE(B, Lq, Lk), 5, 1.0) : gc_test_randn(2, GC_SHAPE(Lq, Lk), 5, 1.0);
    float *p = gc_tensor_data(m);
    int64_t nb = batched ? B : 1;
    for (int64_t b = 0; b < nb; b++) {
        float *mb = p + b * Lq * Lk;
        mb[0 * Lk + 1] = -INFINITY;                                   /* a few -inf */
        mb[2 * Lk + Lk - 1] = -INFINITY;
        for (int64_t j = 0; j < Lk; j++) mb[(Lq - 1 - b) * Lk + j] = -INFINITY; /* row Lq-1-b fully masked */
    }
    return m;
}

START_TEST(test_masks)
{
    shp s = {2, 5, 5, 2, 2, 6};
    for (int batched = 0; batched < 2; batched++)
        for (int causal = 0; causal < 2; causal++) {
            gc_tensor *m = make_mask(s.B, s.Lq, s.Lk, batched);
            char label[64];
            snprintf(label, sizeof label, "mask %s%s", batched ? "[B,Lq,Lk]" : "[Lq,Lk]", causal ? " causal" : "");
            check_shape(label, s, (gc_attn_opts){.causal = causal}, m);
            gc_tensor_release(m);
        }
    /* Lq != Lk */
    gc_tensor *m = make_mask(2, 4, 6, true);
    check_shape("mask [B,Lq,Lk] Lq < Lk", (shp){2, 4, 6, 2, 1, 3}, (gc_attn_opts){0}, m);
    gc_tensor_release(m);
}
END_TEST

/* q, k [2, 5, 2, 3] random (pool-owned) for the small cases below, with impls[mi] selected */
static void small_qk(int mi, gc_tensor **q, gc_tensor **k)
{
    ck_assert_int_eq(gc_attention_set_impl(impls[mi]), GC_OK);
    *q = gc_pool_add(gc_test_randn(4, GC_SHAPE(2, 5, 2, 3), 1, 1.0));
    *k = gc_pool_add(gc_test_randn(4, GC_SHAPE(2, 5, 2, 3), 2, 1.0));
}

/* gc_attention(q, k, v, o) as host floats */
static void attention_host(gc_tensor *q, gc_tensor *k, gc_tensor *v, gc_attn_opts o, float *out)
{
    gc_tensor *y = gc_attention(q, k, v, &o);
    ck_assert_msg(y, "%s", gc_error_message());
    ck_assert_int_eq(gc_tensor_to_host_f32(y, out), GC_OK);
}

START_TEST(test_fully_masked_row_is_zero)
{
    for (int mi = 0; mi < 2; mi++) {
        gc_pool *p = gc_pool_push();
        gc_tensor *q, *k;
        small_qk(mi, &q, &k);
        gc_tensor *m = gc_pool_add(make_mask(2, 5, 5, true));
        float out[2 * 5 * 2 * 3];
        attention_host(q, k, k, (gc_attn_opts){.mask = m}, out);
        for (int64_t b = 0; b < 2; b++)
            for (int64_t i = 0; i < 5; i++)
                for (int64_t e = 0; e < 6; e++) {
                    float x = out[(b * 5 + i) * 6 + e];
                    ck_assert(isfinite(x));
                    if (i == 4 - b) ck_assert_float_eq(x, 0.0f);
                }
        gc_pool_pop(p);
    }
}
END_TEST

/* A NaN in a query makes its row NaN, a NaN in a key every row that sees that key (causal:
 * the rows at and after it), in both implementations: not a row treated as fully masked. */
START_TEST(test_nan_propagates)
{
    for (int mi = 0; mi < 2; mi++) {
        gc_pool *p = gc_pool_push();
        gc_tensor *q, *k;
        small_qk(mi, &q, &k);
        float *qd = gc_tensor_data(q), *kd = gc_tensor_data(k);
        qd[((0 * 5 + 1) * 2 + 0) * 3 + 2] = NAN; /* batch 0, query 1, head 0 */
        for (int d = 0; d < 3; d++) kd[((1 * 5 + 2) * 2 + 1) * 3 + d] = NAN; /* batch 1, key 2, head 1 */
        gc_tensor *v = gc_pool_add(gc_test_randn(4, GC_SHAPE(2, 5, 2, 3), 3, 1.0)); /* finite: 0 x NaN is NaN in P V */
        float out[2 * 5 * 2 * 3];
        attention_host(q, k, v, (gc_attn_opts){.causal = true}, out);
        for (int64_t b = 0; b < 2; b++)
            for (int64_t i = 0; i < 5; i++)
                for (int64_t h = 0; h < 2; h++)
                    for (int64_t d = 0; d < 3; d++) {
                        const bool nan = (b == 0 && i == 1 && h == 0) || (b == 1 && h == 1 && i >= 2);
                        const float x = out[((b * 5 + i) * 2 + h) * 3 + d];
                        ck_assert_msg(nan ? isnan(x) : isfinite(x), "%s: out[%lld, %lld, %lld, %lld] = %g", impls[mi],
                                      (long long)b, (long long)i, (long long)h, (long long)d, x);
                    }
        gc_pool_pop(p);
    }
}
END_TEST

START_TEST(test_gqa)
{
    check_shape("GQA H=4 Hkv=2", (shp){2, 5, 5, 4, 2, 6}, (gc_attn_opts){0}, NULL);
    check_shape("GQA H=4 Hkv=1 causal", (shp){2, 5, 5, 4, 1, 6}, (gc_attn_opts){.causal = true}, NULL);
    check_shape("GQA H=4 Hkv=2 Lq < Lk causal", (shp){1, 3, 5, 4, 2, 4}, (gc_attn_opts){.causal = true}, NULL);
}
END_TEST

START_TEST(test_dropout_grad)
{
    gc_attn_opts o = {.dropout = 0.2, .dropout_op = 9};
    check_shape("dropout 0.2", (shp){2, 5, 5, 2, 2, 6}, o, NULL);
    o.causal = true;
    check_shape("dropout 0.2 causal GQA", (shp){2, 5, 5, 4, 2, 6}, o, NULL);
    gc_tensor *m = make_mask(2, 5, 5, false);
    check_shape("dropout 0.2 mask", (shp){2, 5, 5, 2, 1, 6}, (gc_attn_opts){.dropout = 0.2, .dropout_op = 3}, m);
    gc_tensor_release(m);
}
END_TEST

START_TEST(test_noncontiguous)
{
    /* q, k, v sliced from one fused projection [B, L, 3H, D] (= [B, L, 3, H, D]) */
    const int64_t B = 2, L = 5, H = 2, D = 6;
    gc_tensor *qkv = gc_test_param(4, GC_SHAPE(B, L, 3 * H, D), 21, 1.0);
    for (int causal = 0; causal < 2; causal++) {
        actx c = {.o = {.causal = causal, .dropout = causal ? 0.2 : 0, .dropout_op = 4}, .layout = 1, .H = H,
                  .rc = {99, 1, 3}};
        check_case(causal ? "fused qkv slices, causal, dropout" : "fused qkv slices", &c, 1, &qkv);
    }
    gc_tensor_release(qkv);
    /* k given head-major and transposed: strides [Hkv Lk D, D, Lk D, 1] */
    gc_tensor *in[3] = {gc_test_param(4, GC_SHAPE(2, 3, 4, 5), 31, 1.0), gc_test_param(4, GC_SHAPE(2, 2, 4, 5), 32, 1.0),
                        gc_test_param(4, GC_SHAPE(2, 4, 2, 5), 33, 1.0)};
    actx c = {.o = {.causal = true}, .layout = 2, .rc = {5, 0, 0}};
    check_case("transposed k, GQA, Lq < Lk", &c, 3, in);
    release_all(3, in);
}
END_TEST

/* self-attention on one tensor: three gradients into one buffer */
static gc_tensor *f_self(gc_tensor *const *in, void *ctx)
{
    ck_assert_int_eq(gc_attention_set_impl(ctx), GC_OK);
    return gc_attention(in[0], in[0], in[0], &(gc_attn_opts){.causal = true});
}

START_TEST(test_shared_input)
{
    gc_tensor *x = gc_test_param(4, GC_SHAPE(2, 4, 2, 3), 41, 1.0);
    for (int m = 0; m < 2; m++) GC_ASSERT_GRADCHECK(f_self, (void *)impls[m], 1, &x, NULL);
    gc_tensor_release(x);
}
END_TEST

START_TEST(test_known_values)
{
    /* B=1, Lq=2, Lk=3, H=1, D=2; expected values from an independent Python computation */
    const float qd[] = {1.0f, 0.5f, -0.5f, 2.0f};
    const float kd[] = {0.3f, -1.0f, 1.5f, 0.2f, -0.7f, 0.8f};
    const float vd[] = {1.0f, 2.0f, -1.0f, 0.5f, 0.25f, -3.0f};
    const float md[] = {0, -1.0f, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
    const double want[3][4] = {
        {-0.4248721529238686, 0.1799551084641925, 0.0866200125315329, -2.230163782102628},  /* default scale 2^-0.5 */
        {-0.5624407057137377, 0.8281694707146967, 0.0866200125315329, -2.230163782102628},  /* causal */
        {0.049958374957879914, 1.2874687812184098, 0.0, 0.0},                               /* mask, scale 0.5 */
    };
    for (int mi = 0; mi < 2; mi++) {
        ck_assert_int_eq(gc_attention_set_impl(impls[mi]), GC_OK);
        gc_pool *p = gc_pool_push();
        gc_tensor *q = gc_pool_add(gc_tensor_from_data(GC_F32, GC_CPU, 4, GC_SHAPE(1, 2, 1, 2), qd));
        gc_tensor *k = gc_pool_add(gc_tensor_from_data(GC_F32, GC_CPU, 4, GC_SHAPE(1, 3, 1, 2), kd));
        gc_tensor *v = gc_pool_add(gc_tensor_from_data(GC_F32, GC_CPU, 4, GC_SHAPE(1, 3, 1, 2), vd));
        gc_tensor *m = gc_pool_add(gc_tensor_from_data(GC_F32, GC_CPU, 2, GC_SHAPE(2, 3), md));
        gc_attn_opts os[3] = {{0}, {.causal = true}, {.mask = m, .scale = 0.5}};
        for (int t = 0; t < 3; t++) {
            float out[4];
            ck_assert_int_eq(gc_tensor_to_host_f32(gc_attention(q, k, v, &os[t]), out), GC_OK);
            for (int e = 0; e < 4; e++)
                ck_assert_msg(fabs(out[e] - want[t][e]) < 1e-5, "%s case %d [%d]: %.7f want %.7f", impls[mi], t, e, out[e],
                              want[t][e]);
        }
        /* a mask of another floating dtype is taken as f32 */
        gc_tensor *m64 = gc_pool_add(gc_tensor_to(m, GC_CPU, GC_F64));
        float out[4];
        ck_assert_int_eq(gc_tensor_to_host_f32(gc_attention(q, k, v, &(gc_attn_opts){.mask = m64, .scale = 0.5}), out), GC_OK);
        for (int e = 0; e < 4; e++) ck_assert(fabs(out[e] - want[2][e]) < 1e-5);
        gc_pool_pop(p);
    }
}
END_TEST

/* With q = 0 every visible probability is 1/Lk, and v[b, j, h, :] = e_j (D = Lk) makes
 * out[b, i, h, j] = keep(b, h, i, j) / (Lk (1 - p)): the output spells out the mask. */
static void dropout_out(const char *impl, int64_t H, int64_t L, double p, gc_rand_context rc, int64_t b0,
                        int64_t b1, float *out)
{
    ck_assert_int_eq(gc_attention_set_impl(impl), GC_OK);
    gc_pool *pool = gc_pool_push();
    gc_tensor *q = gc_pool_add(gc_tensor_zeros(GC_F32, GC_CPU, 4, GC_SHAPE(b1 - b0, L, H, L)));
    gc_tensor *v = gc_pool_add(gc_tensor_zeros(GC_F32, GC_CPU, 4, GC_SHAPE(b1 - b0, L, H, L)));
    float *vp = gc_tensor_data(v);
    for (int64_t b = 0; b < b1 - b0; b++)
        for (int64_t j = 0; j < L; j++)
            for (int64_t h = 0; h < H; h++) vp[((b * L + j) * H + h) * L + j] = 1.0f;
    rc.sample_offset += b0;
    gc_rand_context_set(rc);
    gc_tensor *y = gc_attention(q, q, v, &(gc_attn_opts){.dropout = p, .dropout_op = 17});
    ck_assert_int_eq(gc_tensor_to_host_f32(y, out), GC_OK);
    gc_pool_pop(pool);
}

START_TEST(test_dropout_stream)
{
    const int64_t B = 4, H = 3, L = 7;
    const double p = 0.3;
    const gc_rand_context rc = {0xabcdef12345ULL, 5, 10};
    const int64_t n = B * L * H * L, half = n / 2;
    float *whole = malloc(sizeof(float) * (size_t)n), *parts = malloc(sizeof(float) * (size_t)n);
    float *first = NULL;
    for (int mi = 0; mi < 2; mi++) {
        dropout_out(impls[mi], H, L, p, rc, 0, B, whole);
        /* the spec's stream: sample = sample_offset + b, element ((h Lq) + i) Lk + j */
        int64_t kept = 0;
        for (int64_t b = 0; b < B; b++)
            for (int64_t i = 0; i < L; i++)
                for (int64_t h = 0; h < H; h++)
                    for (int64_t j = 0; j < L; j++) {
                        float u = gc_rand_uniform(rc.seed, rc.step, 17, (uint32_t)(rc.sample_offset + b),
                                                  (uint64_t)((h * L + i) * L + j));
                        bool keep = u >= (float)p;
                        float got = whole[((b * L + i) * H + h) * L + j];
                        kept += keep;
                        ck_assert_msg(keep ? fabs(got - 1.0 / (L * (1 - p))) < 1e-6 : got == 0.0f,
                                      "%s: b %lld h %lld i %lld j %lld: %g (keep %d)", impls[mi], (long long)b, (long long)h,
                                      (long long)i, (long long)j, got, keep);
                    }
        ck_assert(kept > n * 0.6 && kept < n * 0.8);
        /* rows 0-1 and 2-3 as two chunks with their sample offsets: bitwise the same */
        dropout_out(impls[mi], H, L, p, rc, 0, 2, parts);
        dropout_out(impls[mi], H, L, p, rc, 2, 4, parts + half);
        ck_assert_msg(memcmp(whole, parts, sizeof(float) * (size_t)n) == 0, "%s: chunked dropout differs", impls[mi]);
        if (!first) {
            first = malloc(sizeof(float) * (size_t)n);
            memcpy(first, whole, sizeof(float) * (size_t)n);
        } else {
            for (int64_t e = 0; e < n; e++) ck_assert((first[e] == 0) == (whole[e] == 0)); /* ref and gemm: one mask */
        }
    }
    /* another step draws another mask */
    gc_rand_context rc2 = rc;
    rc2.step++;
    dropout_out("ref", H, L, p, rc2, 0, B, parts);
    ck_assert(memcmp(whole, parts, sizeof(float) * (size_t)n) != 0);
    free(first);
    free(whole);
    free(parts);
}
END_TEST

/* Backward redraws the forward's mask even when the RandContext moved on meanwhile. */
START_TEST(test_dropout_backward_context)
{
    shp s = {2, 4, 4, 2, 1, 3};
    for (int mi = 0; mi < 2; mi++) {
        ck_assert_int_eq(gc_attention_set_impl(impls[mi]), GC_OK);
        gc_tensor *in[3];
        make_qkv(s, 51, in);
        double *gr[2][3];
        for (int rep = 0; rep < 2; rep++) {
            for (int i = 0; i < 3; i++) gc_tensor_zero_grad(in[i]);
            gc_pool *p = gc_pool_push();
            gc_rand_context_set((gc_rand_context){77, 3, 0});
            gc_tape *t = gc_tape_init();
            gc_tape_begin(t);
            gc_tensor *y = gc_attention(in[0], in[1], in[2], &(gc_attn_opts){.dropout = 0.5, .dropout_op = 2});
            gc_tape_end(t);
            if (rep) gc_rand_context_set((gc_rand_context){78, 9, 5}); /* moved on */
            gc_tensor *R = gc_pool_add(gc_test_randn(4, y->shape, 3, 1.0));
            ck_assert_int_eq(gc_backward(t, 1, &y, &R), GC_OK);
            for (int i = 0; i < 3; i++) {
                gr[rep][i] = malloc(sizeof(double) * (size_t)gc_tensor_numel(in[i]));
                ck_assert_int_eq(gc_tensor_to_host_f64(gc_tensor_grad(in[i]), gr[rep][i]), GC_OK);
            }
            gc_tape_free(t);
            gc_pool_pop(p);
        }
        for (int i = 0; i < 3; i++) {
            ck_assert(memcmp(gr[0][i], gr[1][i], sizeof(double) * (size_t)gc_tensor_numel(in[i])) == 0);
            free(gr[0][i]);
            free(gr[1][i]);
        }
        release_all(3, in);
    }
}
END_TEST

START_TEST(test_empty)
{
    for (int mi = 0; mi < 2; mi++) {
        ck_assert_int_eq(gc_attention_set_impl(impls[mi]), GC_OK);
        /* no keys: zeros, zero gradients */
        shp s = {1, 2, 0, 2, 1, 3};
        gc_tensor *in[3];
        make_qkv(s, 61, in);
        gc_pool *p = gc_pool_push();
        gc_tape *t = gc_tape_init();
        gc_tape_begin(t);
        gc_tensor *y = gc_attention(in[0], in[1], in[2], NULL);
        gc_tape_end(t);
        ck_assert_ptr_nonnull(y);
        float out[12];
        ck_assert_int_eq(gc_tensor_numel(y), 12);
        ck_assert_int_eq(gc_tensor_to_host_f32(y, out), GC_OK);
        for (int e = 0; e < 12; e++) ck_assert_float_eq(out[e], 0.0f);
        gc_tensor *R = gc_pool_add(gc_test_randn(4, y->shape, 3, 1.0));
        ck_assert_int_eq(gc_backward(t, 1, &y, &R), GC_OK);
        float gq[12];
        ck_assert_int_eq(gc_tensor_to_host_f32(gc_tensor_grad(in[0]), gq), GC_OK);
        for (int e = 0; e < 12; e++) ck_assert_float_eq(gq[e], 0.0f);
        gc_tape_free(t);
        gc_pool_pop(p);
        release_all(3, in);
    }
}
END_TEST

/* "flash" and "flash-split" name CUDA kernels: on the CPU they mean the reference, bit for
 * bit, as does "auto"; an unknown name is an error that leaves the setting alone. */
START_TEST(test_flash_env_on_cpu)
{
    shp s = {2, 6, 9, 4, 2, 8};
    gc_tensor *in[3];
    make_qkv(s, 71, in);
    gc_tensor *m = make_mask(s.B, s.Lq, s.Lk, true);
    actx c = {.o = {.causal = true, .dropout = 0.2, .dropout_op = 5}, .mask = m, .rc = {3, 1, 0}};
    ck_assert_int_eq(gc_attention_set_impl("gemm"), GC_OK);
    ck_assert_int_eq(gc_attention_set_impl("nonsense"), GC_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(gc_error_message(), "nonsense"));
    ck_assert_ptr_nonnull(strstr(gc_error_message(), "auto, ref, flash, gemm, flash-split"));
    ck_assert_int_eq(gc_attention_set_impl(NULL), GC_ERR_INVALID);
    ck_assert_str_eq(gc_attention_get_impl(), "gemm");
    ck_assert_int_eq(gc_attention_set_impl("flash"), GC_OK);
    ck_assert_str_eq(gc_attention_get_impl(), "auto");
    ck_assert_int_eq(gc_attention_set_impl("flash-split"), GC_OK);
    ck_assert_str_eq(gc_attention_get_impl(), "flash-split");
    const char *names[4] = {"ref", "flash", "auto", "flash-split"};
    double *out[4], *g[4][3];
    int64_t nout[4];
    for (int k = 0; k < 4; k++) {
        c.impl = names[k];
        run_fb(&c, 3, in, &out[k], &nout[k], g[k]);
    }
    for (int k = 1; k < 4; k++) {
        ck_assert_msg(memcmp(out[k], out[0], sizeof(double) * (size_t)nout[0]) == 0, "%s: out differs from ref", names[k]);
        for (int i = 0; i < 3; i++)
            ck_assert_msg(memcmp(g[k][i], g[0][i], sizeof(double) * (size_t)gc_tensor_numel(in[i])) == 0,
                          "%s: grad[%d] differs from ref", names[k], i);
    }
    for (int k = 0; k < 4; k++) {
        free(out[k]);
        for (int i = 0; i < 3; i++) free(g[k][i]);
    }
    gc_tensor_release(m);
    release_all(3, in);
}
END_TEST

START_TEST(test_errors)
{
    gc_pool *p = gc_pool_push();
    gc_tensor *q = gc_pool_add(gc_test_randn(4, GC_SHAPE(2, 5, 4, 6), 1, 1.0));
    gc_tensor *k3 = gc_pool_add(gc_test_randn(4, GC_SHAPE(2, 5, 3, 6), 2, 1.0));   /* 4 % 3 != 0 */
    gc_tensor *kd = gc_pool_add(gc_test_randn(4, GC_SHAPE(2, 5, 2, 5), 3, 1.0));   /* D 5 != 6 */
    gc_tensor *kb = gc_pool_add(gc_test_randn(4, GC_SHAPE(3, 5, 2, 6), 4, 1.0));   /* B 3 != 2 */
    gc_tensor *k = gc_pool_add(gc_test_randn(4, GC_SHAPE(2, 7, 2, 6), 5, 1.0));
    gc_tensor *q3 = gc_pool_add(gc_test_randn(3, GC_SHAPE(2, 5, 24), 6, 1.0));
    gc_tensor *ki = gc_pool_add(gc_test_ints(GC_I32, 4, GC_SHAPE(2, 7, 2, 6), 7, 0, 3));
    struct { gc_tensor *q, *k, *v; gc_tensor *mask; double dropout; gc_status want; const char *what; } cases[] = {
        {q, k3, k3, NULL, 0, GC_ERR_SHAPE, "H % Hkv"},
        {q, kd, kd, NULL, 0, GC_ERR_SHAPE, "D mismatch"},
        {q, kb, kb, NULL, 0, GC_ERR_SHAPE, "B mismatch"},
        {q, k, kd, NULL, 0, GC_ERR_SHAPE, "k/v mismatch"},
        {q3, k, k, NULL, 0, GC_ERR_SHAPE, "rank 3 q"},
        {q, ki, ki, NULL, 0, GC_ERR_DTYPE, "i32 k"},
        {q, k, k, gc_pool_add(gc_tensor_zeros(GC_F32, GC_CPU, 2, GC_SHAPE(7, 5))), 0, GC_ERR_SHAPE, "mask [Lk, Lq]"},
        {q, k, k, gc_pool_add(gc_tensor_zeros(GC_F32, GC_CPU, 3, GC_SHAPE(3, 5, 7))), 0, GC_ERR_SHAPE, "mask [3, Lq, Lk]"},
        {q, k, k, gc_pool_add(gc_tensor_zeros(GC_F32, GC_CPU, 4, GC_SHAPE(2, 1, 5, 7))), 0, GC_ERR_SHAPE, "mask 4-D"},
        {q, k, k, gc_pool_add(gc_tensor_zeros(GC_I32, GC_CPU, 2, GC_SHAPE(5, 7))), 0, GC_ERR_DTYPE, "i32 mask"},
        {q, k, k, NULL, 1.0, GC_ERR_INVALID, "dropout 1"},
        {q, k, k, NULL, -0.1, GC_ERR_INVALID, "dropout < 0"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        gc_error_clear();
        gc_attn_opts o = {.mask = cases[i].mask, .dropout = cases[i].dropout};
        ck_assert_msg(gc_attention(cases[i].q, cases[i].k, cases[i].v, &o) == NULL, "%s: accepted", cases[i].what);
        ck_assert_msg(gc_error_code() == cases[i].want, "%s: got %s (%s)", cases[i].what, gc_status_name(gc_error_code()),
                      gc_error_message());
        ck_assert(strchr(gc_error_message(), '\n') == NULL && strstr(gc_error_message(), "attention"));
    }
    gc_error_clear();
    ck_assert_ptr_null(gc_attention(q, k, k, &(gc_attn_opts){.scale = INFINITY}));
    ck_assert_int_eq(gc_error_code(), GC_ERR_INVALID);
    /* a NULL input returns NULL and keeps the pending error */
    gc_error_clear();
    gc_error_set(GC_ERR_IO, "earlier failure");
    ck_assert_ptr_null(gc_attention(NULL, k, k, NULL));
    ck_assert_int_eq(gc_error_code(), GC_ERR_IO);
    gc_error_clear();
    /* valid: GQA, mask [B, Lq, Lk], no opts */
    ck_assert_ptr_nonnull(gc_attention(q, k, k, NULL));
    gc_pool_pop(p);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("ops_attention");
    TCase *tc = gc_test_tcase("attention");
    tcase_add_test(tc, test_bidirectional);
    tcase_add_test(tc, test_causal);
    tcase_add_test(tc, test_masks);
    tcase_add_test(tc, test_fully_masked_row_is_zero);
    tcase_add_test(tc, test_nan_propagates);
    tcase_add_test(tc, test_gqa);
    tcase_add_test(tc, test_dropout_grad);
    tcase_add_test(tc, test_noncontiguous);
    tcase_add_test(tc, test_shared_input);
    tcase_add_test(tc, test_known_values);
    tcase_add_test(tc, test_dropout_stream);
    tcase_add_test(tc, test_dropout_backward_context);
    tcase_add_test(tc, test_empty);
    tcase_add_test(tc, test_flash_env_on_cpu);
    tcase_add_test(tc, test_errors);
    suite_add_tcase(s, tc);
    return gc_test_run(s);
}
