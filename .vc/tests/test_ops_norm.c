/* layernorm, rmsnorm, l2normalize and softmax: known values (numpy, float64 on the
 * f32-rounded inputs), finite-difference gradients of every input (fresh and
 * accumulated gradient buffers, strided inputs, rows of very different scale, eps in
 * play), stability at large logits, and argument errors. */
#include "gc_test.h"

#include <malloc.h>
#include <string.h>

static gc_tensor *mk(int ndim, const int64_t *shape, const float *data)
{
    return gc_pool_add(gc_tensor_from_data(GC_F32, GC_CPU, ndim, shape, data));
}

/* |y - ref| <= tol (1 + |ref|) elementwise */
static void expect_close(gc_tensor *y, const double *ref, int64_t n, double tol)
{
    ck_assert_msg(y != NULL, "op failed: %s", gc_error_message());
    ck_assert_int_eq(gc_tensor_numel(y), n);
    float out[64];
    ck_assert_int_eq(gc_tensor_to_host_f32(y, out), GC_OK);
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(fabs(out[i] - ref[i]) <= tol * (1 + fabs(ref[i])), "element %lld: got %.9g, want %.9g",
                      (long long)i, out[i], ref[i]);
}

/* rows: small scale, unit, large and a near-constant row (eps dominates its variance) */
static const float X3x4[12] = {1, 2, 3, 4, 100, 200, 300, 500, 1, 1.001f, 0.999f, 1};
static const float W4[4] = {1, 0.5f, -1, 2}, B4[4] = {0, 0.1f, 0.2f, -0.3f};

START_TEST(test_layernorm_values)
{
    gc_pool *p = gc_pool_push();
    gc_tensor *x = mk(2, GC_SHAPE(3, 4), X3x4), *w = mk(1, GC_SHAPE(4), W4), *b = mk(1, GC_SHAPE(4), B4);
    static const double affine[12] = {-1.34163542, -0.123605903, -0.247211807, 2.38327084,
                                      -1.18321596, -0.153546276, 0.0309691491, 2.74255532,
                                      -4.59859447e-06, 0.254308137, 0.508607077, -0.300009197};
    static const double plain[12] = {-1.34163542, -0.447211807, 0.447211807, 1.34163542,
                                     -1.18321596, -0.507092553, 0.169030851, 1.52127766,
                                     -4.59859447e-06, 0.308616274, -0.308607077, -4.59859447e-06};
    static const double plain_eps[12] = {-1.33630621, -0.445435403, 0.445435403, 1.33630621,
                                         -1.18321569, -0.507092437, 0.169030812, 1.52127731,
                                         -1.49007887e-07, 0.0100000683, -0.00999977027, -1.49007887e-07};
    expect_close(gc_layernorm(x, w, b, 1e-5), affine, 12, 2e-5);
    expect_close(gc_layernorm(x, NULL, NULL, 1e-5), plain, 12, 2e-5);
    expect_close(gc_layernorm(x, NULL, NULL, 1e-2), plain_eps, 12, 2e-5); /* eps shrinks the flat row */
    /* a strided view normalises like its contiguous copy */
    gc_tensor *xt = gc_transpose(mk(2, GC_SHAPE(4, 3), (const float[]){1, 100, 1, 2, 200, 1.001f, 3, 300, 0.999f, 4,
                                                                         500, 1}),
                                 0, 1);
    expect_close(gc_layernorm(xt, w, b, 1e-5), affine, 12, 2e-5);
    gc_pool_pop(p);
}
END_TEST

START_TEST(test_rmsnorm_l2_softmax_values)
{
    gc_pool *p = gc_pool_push();
    gc_tensor *x = mk(2, GC_SHAPE(3, 4), X3x4), *w = mk(1, GC_SHAPE(4), W4);
    static const double rms_w[12] = {0.365148347, 0.365148347, -1.09544504, 2.92118678,
                                     0.320256308, 0.320256308, -0.960768923, 3.20256308,
                                     0.999999235, 0.500499641, -0.998999249, 1.99999847};
    static const double rms_eps10[12] = {0.239045722, 0.478091444, 0.717137166, 0.956182887,
                                         0.320239885, 0.640479771, 0.960719656, 1.60119943,
                                         0.301511337, 0.301812863, 0.30120983, 0.301511337};
    expect_close(gc_rmsnorm(x, w, 1e-6), rms_w, 12, 2e-5);
    expect_close(gc_rmsnorm(x, NULL, 10.0), rms_eps10, 12, 2e-5);

    /* l2: a 3-4-5 row, a row shorter than eps (divided by eps instead), a zero row */
    gc_tensor *xl = mk(2, GC_SHAPE(3, 3), (const float[]){3, 4, 0, 1e-3f, -2e-3f, 2e-3f, 0, 0, 0});
    expect_close(gc_l2normalize(xl, 1e-2), (const double[]){0.6, 0.8, 0, 0.100000005, -0.200000009, 0.200000009, 0, 0, 0},
                 9, 2e-6);
    expect_close(gc_l2normalize(xl, 1e-12),
                 (const double[]){0.6, 0.8, 0, 0.333333333, -0.666666667, 0.666666667, 0, 0, 0}, 9, 2e-6);

    /* softmax: ordinary, huge logits (1e4: exp would overflow without the max), all equal */
    gc_tensor *xs = mk(2, GC_SHAPE(3, 4), (const float[]){1, 2, 3, 4, 1e4f, 1e4f - 1, 1e4f - 2, -1e4f, -1e4f, -1e4f,
                                                           -1e4f, -1e4f});
    expect_close(gc_softmax(xs),
                 (const double[]){0.0320586033, 0.0871443187, 0.236882818, 0.64391426, 0.665240956, 0.244728471,
                                  0.0900305732, 0, 0.25, 0.25, 0.25, 0.25},
                 12, 2e-6);
    gc_pool_pop(p);
}
END_TEST

/* ---------------------------------------------------------------- gradients */

typedef struct { double eps; int which; } norm_ctx;

static gc_tensor *f_layernorm(gc_tensor *const *in, void *ctx)
{
    const norm_ctx *c = ctx;
    return gc_layernorm(in[0], in[1], in[2], c->eps);
}

static gc_tensor *f_rmsnorm(gc_tensor *const *in, void *ctx)
{
    const norm_ctx *c = ctx;
    return gc_rmsnorm(in[0], in[1], c->eps);
}

static gc_tensor *f_l2(gc_tensor *const *in, void *ctx)
{
    const norm_ctx *c = ctx;
    return gc_l2normalize(in[0], c->eps);
}

static gc_tensor *f_softmax(gc_tensor *const *in, void *ctx)
{
    (void)ctx;
    return gc_softmax(in[0]);
}

/* x [2, 3, 7] param whose rows are multiplied by scales */
static gc_tensor *scaled_rows_param(uint64_t seed, const float *scales, int nscales)
{
    gc_tensor *x = gc_test_param(3, GC_SHAPE(2, 3, 7), seed, 1.0);
    float *d = gc_tensor_data(x);
    for (int r = 0; r < 6; r++)
        for (int j = 0; j < 7; j++) d[r * 7 + j] = d[r * 7 + j] * scales[r % nscales] + 0.3f * (float)(r % 2);
    return x;
}

START_TEST(test_layernorm_grad)
{
    const float scales[3] = {0.3f, 1.0f, 4.0f};
    gc_tensor *x = scaled_rows_param(1, scales, 3);
    gc_tensor *w = gc_test_param(1, GC_SHAPE(7), 2, 1.0), *b = gc_test_param(1, GC_SHAPE(7), 3, 1.0);
    norm_ctx c = {1e-5, 0};
    gc_gradcheck_opts o = {.eps = 2e-3, .max_probe = 64};
    gc_tensor *in[3] = {x, w, b};
    GC_ASSERT_GRADCHECK(f_layernorm, &c, 3, in, &o);  /* affine */
    in[2] = NULL;
    GC_ASSERT_GRADCHECK(f_layernorm, &c, 3, in, &o);  /* weight only */
    in[1] = NULL;
    GC_ASSERT_GRADCHECK(f_layernorm, &c, 3, in, &o);  /* plain */
    c.eps = 0.5;                                       /* eps large enough to matter in the gradient */
    in[1] = w;
    in[2] = b;
    GC_ASSERT_GRADCHECK(f_layernorm, &c, 3, in, &o);
    gc_tensor_release(x);
    gc_tensor_release(w);
    gc_tensor_release(b);
}
END_TEST

START_TEST(test_rmsnorm_l2_softmax_grad)
{
    const float scales[3] = {0.3f, 1.0f, 4.0f};
    gc_tensor *x = scaled_rows_param(4, scales, 3), *w = gc_test_param(1, GC_SHAPE(7), 5, 1.0);
    gc_gradcheck_opts o = {.eps = 2e-3, .max_probe = 64};
    norm_ctx c = {1e-6, 0};
    gc_tensor *in[2] = {x, w};
    GC_ASSERT_GRADCHECK(f_rmsnorm, &c, 2, in, &o);
    c.eps = 2.0;
    GC_ASSERT_GRADCHECK(f_rmsnorm, &c, 2, in, &o);
    in[1] = NULL;
    GC_ASSERT_GRADCHECK(f_rmsnorm, &c, 2, in, &o);
    c.eps = 1e-12;
    GC_ASSERT_GRADCHECK(f_l2, &c, 1, in, &o);
    GC_ASSERT_GRADCHECK(f_softmax, NULL, 1, in, &o);
    gc_tensor_release(x);
    gc_tensor_release(w);

    /* l2 where every row is shorter than eps (norms about 0.7 < 2): y = x / eps, linear */
    gc_tensor *xs = gc_test_param(2, GC_SHAPE(3, 5), 6, 0.3);
    c.eps = 2.0;
    in[0] = xs;
    GC_ASSERT_GRADCHECK(f_l2, &c, 1, in, NULL);
    gc_tensor_release(xs);
}
END_TEST

/* x is a contiguous intermediate feeding four ops: its gradient buffer is written fresh
 * by the first backward and accumulated by the other three; the sliced w feeds two
 * (fresh, then +=). A fifth op takes a strided view. in: x [2, 7, 5], w [9], b [7]. */
static gc_tensor *f_mixed(gc_tensor *const *in, void *ctx)
{
    bool reversed = *(const bool *)ctx; /* which op's backward runs first (writes fresh) */
    gc_tensor *xt = gc_transpose(in[0], 1, 2);       /* [2, 5, 7], not contiguous */
    gc_tensor *x = gc_contiguous(xt);
    gc_tensor *w = gc_slice(in[1], 0, 1, 8);         /* [7] */
    gc_tensor *ys[5];
    if (!reversed) {
        ys[0] = gc_layernorm(x, w, in[2], 1e-5);
        ys[1] = gc_rmsnorm(x, w, 1e-6);
        ys[2] = gc_l2normalize(x, 1e-12);
        ys[3] = gc_softmax(x);
    } else {
        ys[3] = gc_softmax(x);
        ys[2] = gc_l2normalize(x, 1e-12);
        ys[1] = gc_rmsnorm(x, w, 1e-6);
        ys[0] = gc_layernorm(x, w, in[2], 1e-5);
    }
    ys[4] = gc_layernorm(xt, NULL, NULL, 1e-5);
    return gc_concat(5, ys, 0);
}

START_TEST(test_fresh_and_accumulated_grads)
{
    gc_tensor *x = gc_test_param(3, GC_SHAPE(2, 7, 5), 7, 1.0);
    gc_tensor *w = gc_test_param(1, GC_SHAPE(9), 8, 1.0), *b = gc_test_param(1, GC_SHAPE(7), 9, 1.0);
    gc_tensor *in[3] = {x, w, b};
    gc_gradcheck_opts o = {.eps = 2e-3, .max_probe = 70};
    for (int r = 0; r < 2; r++) {
        bool reversed = r;
        GC_ASSERT_GRADCHECK(f_mixed, &reversed, 3, in, &o);
    }
    gc_tensor_release(x);
    gc_tensor_release(w);
    gc_tensor_release(b);
}
END_TEST

/* softmax is shift-invariant: at logits around 1e4 the output and the gradient equal
 * those at the same logits shifted to around 0 (and are finite). */
START_TEST(test_softmax_large_logits_grad)
{
    gc_pool *p = gc_pool_push();
    const float base[8] = {0, -1, 2, 0.5f, -3, 1, 0.25f, -0.5f};
    float big[8], gs[2][8], ys[2][8];
    for (int i = 0; i < 8; i++) big[i] = base[i] + 1e4f;
    gc_tensor *gy = mk(2, GC_SHAPE(2, 4), (const float[]){0.3f, -1, 2, 0.7f, -0.2f, 0.5f, 1.5f, -1});
    for (int k = 0; k < 2; k++) {
        gc_tensor *x = gc_pool_add(gc_tensor_from_data(GC_F32, GC_CPU, 2, GC_SHAPE(2, 4), k ? big : base));
        ck_assert_int_eq(gc_tensor_requires_grad(x, true), GC_OK);
        gc_tape *t = gc_tape_init();
        gc_tape_begin(t);
        gc_tensor *y = gc_softmax(x);
        gc_tape_end(t);
        ck_assert_int_eq(gc_backward(t, 1, &y, &gy), GC_OK);
        gc_tape_free(t);
        gc_tensor_to_host_f32(y, ys[k]);
        gc_tensor_to_host_f32(gc_tensor_grad(x), gs[k]);
    }
    for (int i = 0; i < 8; i++) {
        ck_assert(isfinite(ys[1][i]) && isfinite(gs[1][i]));
        ck_assert_float_eq_tol(ys[1][i], ys[0][i], 1e-6);
        ck_assert_float_eq_tol(gs[1][i], gs[0][i], 1e-5);
    }
    gc_pool_pop(p);
}
END_TEST

/* leaves get += across two backward passes; the dw/db sums are exact for gy = 1 */
START_TEST(test_layernorm_param_grad_sums)
{
    gc_pool *p = gc_pool_push();
    gc_tensor *x = mk(2, GC_SHAPE(3, 4), X3x4);
    gc_tensor *w = gc_pool_add(gc_tensor_from_data(GC_F32, GC_CPU, 1, GC_SHAPE(4), W4));
    gc_tensor *b = gc_pool_add(gc_tensor_from_data(GC_F32, GC_CPU, 1, GC_SHAPE(4), B4));
    gc_tensor_requires_grad(w, true);
    gc_tensor_requires_grad(b, true);
    gc_tensor *ones = gc_pool_add(gc_tensor_new(GC_F32, GC_CPU, 2, GC_SHAPE(3, 4)));
    gc_tensor_fill(ones, 1.0);
    for (int rep = 0; rep < 2; rep++) {
        gc_tape *t = gc_tape_init();
        gc_tape_begin(t);
        gc_tensor *y = gc_layernorm(x, w, b, 1e-5);
        gc_tape_end(t);
        ck_assert_int_eq(gc_backward(t, 1, &y, &ones), GC_OK);
        gc_tape_free(t);
    }
    /* db = 2 passes x 3 rows; dw = 2 x column sums of the plain layernorm (numpy) */
    static const double plain[12] = {-1.34163542, -0.447211807, 0.447211807, 1.34163542,
                                     -1.18321596, -0.507092553, 0.169030851, 1.52127766,
                                     -4.59859447e-06, 0.308616274, -0.308607077, -4.59859447e-06};
    float gw[4], gb[4];
    gc_tensor_to_host_f32(gc_tensor_grad(w), gw);
    gc_tensor_to_host_f32(gc_tensor_grad(b), gb);
    for (int j = 0; j < 4; j++) {
        ck_assert_float_eq_tol(gb[j], 6.0, 1e-5);
        ck_assert_float_eq_tol(gw[j], 2 * (plain[j] + plain[4 + j] + plain[8 + j]), 1e-4);
    }
    gc_pool_pop(p);
}
END_TEST

/* ---------------------------------------------------------------- errors */

START_TEST(test_errors)
{
    gc_pool *p = gc_pool_push();
    gc_tensor *x = mk(2, GC_SHAPE(3, 4), X3x4);
    gc_tensor *w5 = gc_pool_add(gc_tensor_zeros(GC_F32, GC_CPU, 1, GC_SHAPE(5)));
    gc_tensor *w2d = gc_pool_add(gc_tensor_zeros(GC_F32, GC_CPU, 2, GC_SHAPE(1, 4)));
    gc_tensor *wi = gc_pool_add(gc_tensor_zeros(GC_I32, GC_CPU, 1, GC_SHAPE(4)));
    gc_tensor *xb = gc_pool_add(gc_tensor_zeros(GC_BF16, GC_CPU, 2, GC_SHAPE(3, 4)));
    gc_tensor *scalar = gc_pool_add(gc_tensor_zeros(GC_F32, GC_CPU, 0, NULL));
    gc_tensor *empty_cols = gc_pool_add(gc_tensor_zeros(GC_F32, GC_CPU, 2, GC_SHAPE(3, 0)));

    gc_error_clear();
    ck_assert_ptr_null(gc_layernorm(x, w5, NULL, 1e-5));
    ck_assert_int_eq(gc_error_code(), GC_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(gc_error_message(), "layernorm"));
    ck_assert_ptr_nonnull(strstr(gc_error_message(), "[5]"));
    gc_error_clear();
    ck_assert_ptr_null(gc_layernorm(x, NULL, w5, 1e-5)); /* bias checked too */
    ck_assert_int_eq(gc_error_code(), GC_ERR_SHAPE);
    gc_error_clear();
    ck_assert_ptr_null(gc_rmsnorm(x, w2d, 1e-5));
    ck_assert_int_eq(gc_error_code(), GC_ERR_SHAPE);
    gc_error_clear();
    ck_assert_ptr_null(gc_layernorm(x, wi, NULL, 1e-5));
    ck_assert_int_eq(gc_error_code(), GC_ERR_DTYPE);
    gc_error_clear();
    ck_assert_ptr_null(gc_layernorm(xb, NULL, NULL, 1e-5)); /* bf16 computes on CUDA only */
    ck_assert_int_eq(gc_error_code(), GC_ERR_DTYPE);
    gc_error_clear();
    ck_assert_ptr_null(gc_softmax(xb));
    ck_assert_int_eq(gc_error_code(), GC_ERR_DTYPE);
    gc_error_clear();
    ck_assert_ptr_null(gc_layernorm(x, NULL, NULL, -1.0));
    ck_assert_int_eq(gc_error_code(), GC_ERR_INVALID);
    gc_error_clear();
    ck_assert_ptr_null(gc_l2normalize(x, NAN));
    ck_assert_int_eq(gc_error_code(), GC_ERR_INVALID);
    gc_error_clear();
    ck_assert_ptr_null(gc_l2normalize(scalar, 1e-12));
    ck_assert_int_eq(gc_error_code(), GC_ERR_SHAPE);
    gc_error_clear();
    ck_assert_ptr_null(gc_softmax(scalar));
    ck_assert_int_eq(gc_error_code(), GC_ERR_SHAPE);
    gc_error_clear();
    ck_assert_ptr_null(gc_softmax(empty_cols));
    ck_assert_int_eq(gc_error_code(), GC_ERR_SHAPE);
    /* a NULL input returns NULL and keeps the first error */
    gc_error_clear();
    gc_error_set(GC_ERR_IO, "root cause");
    ck_assert_ptr_null(gc_layernorm(NULL, NULL, NULL, 1e-5));
    ck_assert_ptr_null(gc_rmsnorm(NULL, w5, 1e-5));
    ck_assert_ptr_null(gc_l2normalize(NULL, 1e-5));
    ck_assert_ptr_null(gc_softmax(NULL));
    ck_assert_int_eq(gc_error_code(), GC_ERR_IO);
    gc_error_clear();
    /* an empty batch is fine */
    gc_tensor *e = gc_pool_add(gc_tensor_zeros(GC_F32, GC_CPU, 2, GC_SHAPE(0, 4)));
    ck_assert_ptr_nonnull(gc_layernorm(e, NULL, NULL, 1e-5));
    ck_assert_ptr_nonnull(gc_softmax(e));
    gc_pool_pop(p);
}
END_TEST

int main(void)
{
#ifdef M_PERTURB
    mallopt(M_PERTURB, 0x80); /* fresh host blocks hold 3.4e38s, not zeros (see test_ops_misc.c) */
#endif
    Suite *s = suite_create("ops_norm");
    TCase *tc = gc_test_tcase("norm");
    tcase_add_test(tc, test_layernorm_values);
    tcase_add_test(tc, test_rmsnorm_l2_softmax_values);
    tcase_add_test(tc, test_layernorm_grad);
    tcase_add_test(tc, test_rmsnorm_l2_softmax_grad);
    tcase_add_test(tc, test_fresh_and_accumulated_grads);
    tcase_add_test(tc, test_softmax_large_logits_grad);
    tcase_add_test(tc, test_layernorm_param_grad_sums);
    tcase_add_test(tc, test_errors);
    suite_add_tcase(s, tc);
    return gc_test_run(s);
}
