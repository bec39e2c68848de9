/* embedding, gather_rows and rope: known values, finite-difference gradients (repeated
 * ids must sum; both cos/sin layouts, start 0 and 2), the rotation against a direct
 * complex multiplication, and argument errors (bad ids name the id and the size). */
#include "gc_test.h"

#include <complex.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>

static gc_tensor *mk(int ndim, const int64_t *shape, const float *data)
{
    return gc_pool_add(gc_tensor_from_data(GC_F32, GC_CPU, ndim, shape, data));
}

static gc_tensor *mk_ids(gc_dtype dt, int ndim, const int64_t *shape, const int64_t *v)
{
    gc_tensor *t = gc_pool_add(gc_tensor_new(dt, GC_CPU, ndim, shape));
    for (int64_t i = 0, n = gc_tensor_numel(t); i < n; i++) {
        if (dt == GC_I32) ((int32_t *)gc_tensor_data(t))[i] = (int32_t)v[i];
        else ((int64_t *)gc_tensor_data(t))[i] = v[i];
    }
    return t;
}

static void expect_close(gc_tensor *y, const double *ref, int64_t n, double tol)
{
    ck_assert_msg(y != NULL, "op failed: %s", gc_error_message());
    ck_assert_int_eq(gc_tensor_numel(y), n);
    float *out = malloc(sizeof(float) * (size_t)n);
    ck_assert_int_eq(gc_tensor_to_host_f32(y, out), GC_OK);
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(fabs(out[i] - ref[i]) <= tol * (1 + fabs(ref[i])), "element %lld: got %.9g, want %.9g",
                      (long long)i, out[i], ref[i]);
    free(out);
}

/* ---------------------------------------------------------------- embedding */

/* table [5, 3] = 0.5 i - 3; ids [[1, 4, 1], [0, 1, 2]] (1 three times, 3 never) */
static const int64_t IDS[6] = {1, 4, 1, 0, 1, 2};

static gc_tensor *table_5x3(void)
{
    float t[15];
    for (int i = 0; i < 15; i++) t[i] = 0.5f * (float)i - 3.0f;
    return mk(2, GC_SHAPE(5, 3), t);
}

START_TEST(test_embedding_values_and_grad_sums)
{
    for (int k = 0; k < 2; k++) {
        gc_dtype dt = k ? GC_I64 : GC_I32;
        gc_pool *p = gc_pool_push();
        gc_tensor *table = table_5x3();
        ck_assert_int_eq(gc_tensor_requires_grad(table, true), GC_OK);
        gc_tensor *ids = mk_ids(dt, 2, GC_SHAPE(2, 3), IDS);
        gc_tape *t = gc_tape_init();
        gc_tape_begin(t);
        gc_tensor *y = gc_embedding(table, ids);
        gc_tape_end(t);
        ck_assert_msg(y != NULL, "%s", gc_error_message());
        ck_assert_int_eq(y->ndim, 3);
        ck_assert(y->shape[0] == 2 && y->shape[1] == 3 && y->shape[2] == 3);
        double want[18];
        for (int q = 0; q < 6; q++)
            for (int j = 0; j < 3; j++) want[q * 3 + j] = 0.5 * (double)(IDS[q] * 3 + j) - 3.0;
        expect_close(y, want, 18, 0);
        /* gy[q, j] = 3q + j: row 1 gets positions 0, 2, 4 summed; row 3 none */
        float g[18];
        for (int i = 0; i < 18; i++) g[i] = (float)i;
        gc_tensor *gy = mk(3, GC_SHAPE(2, 3, 3), g);
        ck_assert_int_eq(gc_backward(t, 1, &y, &gy), GC_OK);
        gc_tape_free(t);
        expect_close(gc_tensor_grad(table), (const double[]){9, 10, 11, 18, 21, 24, 15, 16, 17, 0, 0, 0, 3, 4, 5}, 15, 0);
        /* the same through a slice of a bigger table: the op's gradient buffer is fresh,
         * and the row of id 3 (never looked up) must be written as 0 */
        gc_tensor *big = gc_pool_add(gc_tensor_zeros(GC_F32, GC_CPU, 2, GC_SHAPE(6, 3)));
        ck_assert_int_eq(gc_tensor_requires_grad(big, true), GC_OK);
        t = gc_tape_init();
        gc_tape_begin(t);
        y = gc_embedding(gc_slice(big, 0, 1, 6), ids);
        gc_tape_end(t);
        ck_assert_int_eq(gc_backward(t, 1, &y, &gy), GC_OK);
        gc_tape_free(t);
        expect_close(gc_tensor_grad(big), (const double[]){0, 0, 0, 9, 10, 11, 18, 21, 24, 15, 16, 17, 0, 0, 0, 3, 4, 5},
                     18, 0);
        gc_pool_pop(p);
    }
}
END_TEST

static gc_tensor *f_embedding(gc_tensor *const *in, void *ctx)
{
    (void)ctx;
    return gc_embedding(in[0], in[1]);
}

/* x -> embedding(table) twice into one table gradient: fresh (a sliced table's
 * buffer) then accumulated */
static gc_tensor *f_embedding_twice(gc_tensor *const *in, void *ctx)
{
    (void)ctx;
    gc_tensor *table = gc_slice(in[0], 0, 1, 7); /* [6, 4] view: a non-leaf gradient buffer */
    gc_tensor *ys[2] = {gc_embedding(table, in[1]), gc_embedding(table, in[2])};
    return gc_concat(2, ys, 0);
}

START_TEST(test_embedding_grad)
{
    gc_tensor *table = gc_test_param(2, GC_SHAPE(7, 4), 1, 1.0);
    gc_tensor *ids32 = gc_test_ints(GC_I32, 3, GC_SHAPE(2, 3, 5), 2, 0, 6);  /* 30 ids over 6 rows: repeats */
    gc_tensor *ids64 = gc_test_ints(GC_I64, 3, GC_SHAPE(2, 3, 5), 3, 0, 6);
    gc_tensor *in[3] = {table, ids32, ids64};
    GC_ASSERT_GRADCHECK(f_embedding, NULL, 2, in, NULL);
    in[1] = ids64;
    GC_ASSERT_GRADCHECK(f_embedding, NULL, 2, in, NULL);
    in[1] = ids32;
    GC_ASSERT_GRADCHECK(f_embedding_twice, NULL, 3, in, NULL);
    gc_tensor_release(table);
    gc_tensor_release(ids32);
    gc_tensor_release(ids64);
}
END_TEST

START_TEST(test_embedding_errors)
{
    gc_pool *p = gc_pool_push();
    gc_tensor *table = table_5x3();
    gc_error_clear();
    ck_assert_ptr_null(gc_embedding(table, mk_ids(GC_I64, 1, GC_SHAPE(3), (const int64_t[]){0, 5, 1})));
    ck_assert_int_eq(gc_error_code(), GC_ERR_INVALID);
    ck_assert_msg(strstr(gc_error_message(), "holds 5") && strstr(gc_error_message(), "V = 5"), "%s",
                  gc_error_message());
    gc_error_clear();
    ck_assert_ptr_null(gc_embedding(table, mk_ids(GC_I32, 1, GC_SHAPE(2), (const int64_t[]){-1, 0})));
    ck_assert_int_eq(gc_error_code(), GC_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(gc_error_message(), "holds -1"));
    gc_error_clear();
    ck_assert_ptr_null(gc_embedding(table, mk(1, GC_SHAPE(2), (const float[]){0, 1}))); /* float ids */
    ck_assert_int_eq(gc_error_code(), GC_ERR_DTYPE);
    gc_error_clear();
    ck_assert_ptr_null(gc_embedding(mk(1, GC_SHAPE(3), (const float[]){0, 1, 2}), mk_ids(GC_I32, 1, GC_SHAPE(1), IDS)));
    ck_assert_int_eq(gc_error_code(), GC_ERR_SHAPE);
    gc_error_clear();
    gc_tensor *i32 = gc_pool_add(gc_tensor_zeros(GC_I32, GC_CPU, 2, GC_SHAPE(5, 3)));
    ck_assert_ptr_null(gc_embedding(i32, mk_ids(GC_I32, 1, GC_SHAPE(1), IDS))); /* integer table */
    ck_assert_int_eq(gc_error_code(), GC_ERR_DTYPE);
    gc_error_clear();
    gc_error_set(GC_ERR_IO, "root cause");
    ck_assert_ptr_null(gc_embedding(NULL, mk_ids(GC_I32, 1, GC_SHAPE(1), IDS)));
    ck_assert_ptr_null(gc_embedding(table, NULL));
    ck_assert_int_eq(gc_error_code(), GC_ERR_IO);
    gc_error_clear();
    /* a 0-d id gives one row; no ids give none */
    gc_tensor *y = gc_embedding(table, mk_ids(GC_I64, 0, NULL, (const int64_t[]){4}));
    expect_close(y, (const double[]){3, 3.5, 4}, 3, 0);
    ck_assert_int_eq(y->ndim, 1);
    y = gc_embedding(table, gc_pool_add(gc_tensor_new(GC_I32, GC_CPU, 2, GC_SHAPE(2, 0))));
    ck_assert_msg(y && y->ndim == 3 && y->shape[1] == 0 && y->shape[2] == 3, "%s", gc_error_message());
    gc_pool_pop(p);
}
END_TEST

/* ---------------------------------------------------------------- gather_rows */

START_TEST(test_gather_rows_values)
{
    for (int k = 0; k < 2; k++) {
        gc_pool *p = gc_pool_push();
        float x[24];
        for (int i = 0; i < 24; i++) x[i] = (float)i;
        gc_tensor *xt = mk(3, GC_SHAPE(2, 4, 3), x);
        ck_assert_int_eq(gc_tensor_requires_grad(xt, true), GC_OK);
        gc_tensor *idx = mk_ids(k ? GC_I64 : GC_I32, 1, GC_SHAPE(2), (const int64_t[]){3, 1});
        gc_tape *t = gc_tape_init();
        gc_tape_begin(t);
        gc_tensor *y = gc_gather_rows(xt, idx);
        gc_tape_end(t);
        expect_close(y, (const double[]){9, 10, 11, 15, 16, 17}, 6, 0);
        gc_tensor *gy = mk(2, GC_SHAPE(2, 3), (const float[]){1, 2, 3, 4, 5, 6});
        ck_assert_int_eq(gc_backward(t, 1, &y, &gy), GC_OK);
        gc_tape_free(t);
        /* through a view: the gather's own gradient buffer is fresh; unread rows are 0 */
        gc_tensor *big = gc_pool_add(gc_tensor_zeros(GC_F32, GC_CPU, 3, GC_SHAPE(3, 4, 3)));
        ck_assert_int_eq(gc_tensor_requires_grad(big, true), GC_OK);
        t = gc_tape_init();
        gc_tape_begin(t);
        gc_tensor *y2 = gc_gather_rows(gc_rows(big, 1, 3), idx);
        gc_tape_end(t);
        ck_assert_int_eq(gc_backward(t, 1, &y2, &gy), GC_OK);
        gc_tape_free(t);
        double want_big[36] = {0};
        for (int j = 0; j < 3; j++) {
            want_big[12 + 3 * 3 + j] = 1 + j;
            want_big[24 + 1 * 3 + j] = 4 + j;
        }
        expect_close(gc_tensor_grad(big), want_big, 36, 0);
        double want[24] = {0};
        for (int j = 0; j < 3; j++) {
            want[3 * 3 + j] = 1 + j;          /* x[0, 3, :] */
            want[12 + 1 * 3 + j] = 4 + j;     /* x[1, 1, :] */
        }
        expect_close(gc_tensor_grad(xt), want, 24, 0);
        gc_pool_pop(p);
    }
}
END_TEST

static gc_tensor *f_gather(gc_tensor *const *in, void *ctx)
{
    (void)ctx;
    return gc_gather_rows(in[0], in[1]);
}

/* through a strided x: the gather's gradient buffer is fresh (zeroed rows matter) */
static gc_tensor *f_gather_strided(gc_tensor *const *in, void *ctx)
{
    (void)ctx;
    return gc_gather_rows(gc_transpose(in[0], 1, 2), in[1]); /* [3, 5, 4] -> [3, 4, 5] */
}

START_TEST(test_gather_rows_grad)
{
    gc_pool *p = gc_pool_push();
    gc_tensor *x = gc_pool_add(gc_test_param(3, GC_SHAPE(3, 5, 4), 4, 1.0));
    gc_tensor *in[2] = {x, mk_ids(GC_I64, 1, GC_SHAPE(3), (const int64_t[]){4, 0, 2})};
    gc_gradcheck_opts o = {.max_probe = 60};
    GC_ASSERT_GRADCHECK(f_gather, NULL, 2, in, &o);
    in[1] = mk_ids(GC_I32, 1, GC_SHAPE(3), (const int64_t[]){3, 0, 3});
    GC_ASSERT_GRADCHECK(f_gather, NULL, 2, in, &o);
    GC_ASSERT_GRADCHECK(f_gather_strided, NULL, 2, in, &o);
    gc_pool_pop(p);
}
END_TEST

START_TEST(test_gather_rows_errors)
{
    gc_pool *p = gc_pool_push();
    gc_tensor *x = gc_pool_add(gc_tensor_zeros(GC_F32, GC_CPU, 3, GC_SHAPE(2, 4, 3)));
    gc_error_clear();
    ck_assert_ptr_null(gc_gather_rows(x, mk_ids(GC_I64, 1, GC_SHAPE(2), (const int64_t[]){0, 4})));
    ck_assert_int_eq(gc_error_code(), GC_ERR_INVALID);
    ck_assert_msg(strstr(gc_error_message(), "holds 4") && strstr(gc_error_message(), "L = 4"), "%s",
                  gc_error_message());
    gc_error_clear();
    ck_assert_ptr_null(gc_gather_rows(x, mk_ids(GC_I64, 1, GC_SHAPE(3), (const int64_t[]){0, 1, 2}))); /* B */
    ck_assert_int_eq(gc_error_code(), GC_ERR_SHAPE);
    gc_error_clear();
    ck_assert_ptr_null(gc_gather_rows(gc_view(x, 2, GC_SHAPE(8, 3)), mk_ids(GC_I64, 1, GC_SHAPE(8), (const int64_t[]){0, 1, 2, 3, 0, 1, 2, 3})));
    ck_assert_int_eq(gc_error_code(), GC_ERR_SHAPE);
    gc_error_clear();
    ck_assert_ptr_null(gc_gather_rows(x, mk(1, GC_SHAPE(2), (const float[]){0, 1})));
    ck_assert_int_eq(gc_error_code(), GC_ERR_DTYPE);
    gc_error_clear();
    gc_pool_pop(p);
}
END_TEST

/* ---------------------------------------------------------------- rope */

/* x [1, 3, 1, 4], start 1, n 2, angles [[0.3, 1.1], [-0.7, 2.5]] (numpy, complex products) */
START_TEST(test_rope_known_values)
{
    gc_pool *p = gc_pool_push();
    const float xv[12] = {0.5f, -1, 2, 0.25f, 1, 2, 3, 4, -0.5f, 0.75f, 1.5f, -2};
    const float cv[8] = {0.955336511f, 0.453596115f, 0.955336511f, 0.453596115f,
                         0.764842212f, -0.801143587f, 0.764842212f, -0.801143587f};
    const float sv[8] = {0.295520216f, 0.891207337f, 0.295520216f, 0.891207337f,
                         -0.64421767f, 0.598472118f, -0.64421767f, 0.598472118f};
    static const double want[12] = {0.5, -1, 2, 0.25, 0.0687758625, -2.65763712, 3.16152975, 3.59679914,
                                    0.583905399, 0.596086547, 1.46937215, 2.05114126};
    gc_tensor *x = mk(4, GC_SHAPE(1, 3, 1, 4), xv);
    expect_close(gc_rope(x, mk(2, GC_SHAPE(2, 4), cv), mk(2, GC_SHAPE(2, 4), sv), 1), want, 12, 2e-6);
    /* the same tables per sample ([B, n, D]) */
    expect_close(gc_rope(x, mk(3, GC_SHAPE(1, 2, 4), cv), mk(3, GC_SHAPE(1, 2, 4), sv), 1), want, 12, 2e-6);
    gc_pool_pop(p);
}
END_TEST

/* B 2, L 7, H 3, D 8, start 2, n 3 (tokens before and after the range), per-sample
 * angles: y as (x[d] + i x[d+h]) e^{i th} */
START_TEST(test_rope_vs_complex_rotation)
{
    gc_pool *p = gc_pool_push();
    const int64_t B = 2, L = 7, H = 3, D = 8, h = 4, n = 3, start = 2;
    gc_tensor *x = gc_pool_add(gc_test_randn(4, GC_SHAPE(B, L, H, D), 11, 1.0));
    float cs[2 * 3 * 8], sn[2 * 3 * 8];
    double th[2][3][4];
    for (int b = 0; b < B; b++)
        for (int t = 0; t < n; t++)
            for (int d = 0; d < h; d++) {
                th[b][t][d] = 0.37 * (t + start) * pow(10.0, -d / 2.0) + 0.9 * b;
                cs[(b * n + t) * D + d] = cs[(b * n + t) * D + d + h] = (float)cos(th[b][t][d]);
                sn[(b * n + t) * D + d] = sn[(b * n + t) * D + d + h] = (float)sin(th[b][t][d]);
            }
    gc_tensor *y = gc_rope(x, mk(3, GC_SHAPE(B, n, D), cs), mk(3, GC_SHAPE(B, n, D), sn), start);
    ck_assert_msg(y != NULL, "%s", gc_error_message());
    const float *xv = gc_tensor_data(x), *yv = gc_tensor_data(y);
    for (int64_t b = 0; b < B; b++)
        for (int64_t l = 0; l < L; l++)
            for (int64_t hh = 0; hh < H; hh++)
                for (int64_t d = 0; d < h; d++) {
                    int64_t o = ((b * L + l) * H + hh) * D;
                    double complex z = xv[o + d] + I * xv[o + d + h];
                    if (l >= start && l < start + n) z *= cexp(I * th[b][l - start][d]);
                    ck_assert_double_eq_tol(yv[o + d], creal(z), 1e-5);
                    ck_assert_double_eq_tol(yv[o + d + h], cimag(z), 1e-5);
                }
    gc_pool_pop(p);
}
END_TEST

typedef struct { gc_tensor *cos, *sin; int64_t start; } rope_ctx;

static gc_tensor *f_rope(gc_tensor *const *in, void *ctx)
{
    const rope_ctx *c = ctx;
    return gc_rope(in[0], c->cos, c->sin, c->start);
}

/* through a strided x, twice into one gradient buffer (fresh, then +=) */
static gc_tensor *f_rope_twice(gc_tensor *const *in, void *ctx)
{
    const rope_ctx *c = ctx;
    gc_tensor *x = gc_contiguous(gc_transpose(in[0], 1, 2)); /* [B, H, L, D] -> [B, L, H, D] */
    gc_tensor *ys[2] = {gc_rope(x, c->cos, c->sin, c->start), gc_rope(x, c->cos, c->sin, 0)};
    return gc_concat(2, ys, 0);
}

/* q and k as views of one fused [B, L, 3H, D] tensor on the tape (the models' q/k/v):
 * rope reads them through their strides and writes its gradients into the fused
 * tensor's, in place; v's third is read by nothing, so its gradient is the zeros
 * the tape fills in (NaN under GC_HOST_POISON if it did not) */
static gc_tensor *f_rope_fused(gc_tensor *const *in, void *ctx)
{
    const rope_ctx *c = ctx;
    const int64_t H = in[0]->shape[2] / 3;
    gc_tensor *qkv = gc_scale(in[0], 1.5); /* not a leaf: its gradient can be shared */
    gc_tensor *ys[2] = {gc_rope(gc_slice(qkv, 2, 0, H), c->cos, c->sin, c->start),
                        gc_rope(gc_slice(qkv, 2, H, 2 * H), c->cos, c->sin, c->start)};
    return gc_concat(2, ys, 0);
}

START_TEST(test_rope_grad)
{
    gc_pool *p = gc_pool_push();
    /* random cos/sin whose halves differ: checks the exact transpose, not just a rotation */
    gc_tensor *c2 = gc_pool_add(gc_test_randn(2, GC_SHAPE(3, 6), 21, 1.0));
    gc_tensor *s2 = gc_pool_add(gc_test_randn(2, GC_SHAPE(3, 6), 22, 1.0));
    gc_tensor *c3 = gc_pool_add(gc_test_randn(3, GC_SHAPE(2, 3, 6), 23, 1.0));
    gc_tensor *s3 = gc_pool_add(gc_test_randn(3, GC_SHAPE(2, 3, 6), 24, 1.0));
    gc_tensor *x = gc_pool_add(gc_test_param(4, GC_SHAPE(2, 5, 3, 6), 25, 1.0));
    gc_gradcheck_opts o = {.max_probe = 90};
    for (int layout = 0; layout < 2; layout++)
        for (int64_t start = 0; start <= 2; start += 2) {
            rope_ctx c = {layout ? c3 : c2, layout ? s3 : s2, start};
            GC_ASSERT_GRADCHECK(f_rope, &c, 1, &x, &o);
        }
    gc_tensor *xt = gc_pool_add(gc_test_param(4, GC_SHAPE(2, 3, 5, 6), 26, 1.0));
    rope_ctx c = {c3, s3, 2};
    GC_ASSERT_GRADCHECK(f_rope_twice, &c, 1, &xt, &o);
    gc_host_poison_set(true);
    gc_tensor *xf = gc_pool_add(gc_test_param(4, GC_SHAPE(2, 5, 6, 6), 27, 1.0));
    GC_ASSERT_GRADCHECK(f_rope_fused, &c, 1, &xf, &o);
    gc_host_poison_set(false);
    gc_pool_pop(p);
}
END_TEST

START_TEST(test_rope_errors)
{
    gc_pool *p = gc_pool_push();
    gc_tensor *x = gc_pool_add(gc_tensor_zeros(GC_F32, GC_CPU, 4, GC_SHAPE(2, 5, 3, 6)));
    gc_tensor *c = gc_pool_add(gc_tensor_zeros(GC_F32, GC_CPU, 2, GC_SHAPE(3, 6)));
    gc_tensor *x_odd = gc_pool_add(gc_tensor_zeros(GC_F32, GC_CPU, 4, GC_SHAPE(2, 5, 3, 5)));
    gc_tensor *c_odd = gc_pool_add(gc_tensor_zeros(GC_F32, GC_CPU, 2, GC_SHAPE(3, 5)));
    gc_tensor *c_bad = gc_pool_add(gc_tensor_zeros(GC_F32, GC_CPU, 2, GC_SHAPE(3, 4)));
    gc_tensor *c_b3 = gc_pool_add(gc_tensor_zeros(GC_F32, GC_CPU, 3, GC_SHAPE(3, 3, 6)));
    gc_tensor *c_1d = gc_pool_add(gc_tensor_zeros(GC_F32, GC_CPU, 1, GC_SHAPE(6)));
    gc_tensor *c_i32 = gc_pool_add(gc_tensor_zeros(GC_I32, GC_CPU, 2, GC_SHAPE(3, 6)));
    gc_tensor *x3 = gc_pool_add(gc_tensor_zeros(GC_F32, GC_CPU, 3, GC_SHAPE(2, 5, 6)));
    struct { gc_tensor *x, *c, *s; int64_t start; gc_status code; } cases[] = {
        {x_odd, c_odd, c_odd, 0, GC_ERR_SHAPE}, /* D odd */
        {x, c_bad, c_bad, 0, GC_ERR_SHAPE},     /* D differs */
        {x, c, c_bad, 0, GC_ERR_SHAPE},         /* cos and sin differ */
        {x, c, c, 3, GC_ERR_SHAPE},             /* start + n > L */
        {x, c, c, -1, GC_ERR_SHAPE},            /* negative start */
        {x, c_b3, c_b3, 0, GC_ERR_SHAPE},       /* per-sample B differs */
        {x, c_1d, c_1d, 0, GC_ERR_SHAPE},
        {x3, c, c, 0, GC_ERR_SHAPE},            /* x not 4-d */
        {x, c_i32, c_i32, 0, GC_ERR_DTYPE},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        gc_error_clear();
        ck_assert_msg(gc_rope(cases[i].x, cases[i].c, cases[i].s, cases[i].start) == NULL, "case %zu", i);
        ck_assert_msg(gc_error_code() == cases[i].code, "case %zu: %s", i, gc_error_message());
        ck_assert_ptr_nonnull(strstr(gc_error_message(), "rope"));
    }
    /* in place over a tensor whose rows are not unit-stride: refused, not copied */
    gc_error_clear();
    gc_tensor *xt = gc_pool_add(gc_tensor_zeros(GC_F32, GC_CPU, 4, GC_SHAPE(2, 5, 6, 6)));
    ck_assert_ptr_null(gc_rope_in_place(gc_transpose(xt, 2, 3), c, c, 0));
    ck_assert_int_eq(gc_error_code(), GC_ERR_INVALID);
    ck_assert_msg(strstr(gc_error_message(), "rope in place"), "%s", gc_error_message());
    gc_error_clear();
    /* the whole range, and an empty range (identity) */
    ck_assert_ptr_nonnull(gc_rope(x, c, c, 2));
    gc_tensor *c0 = gc_pool_add(gc_tensor_zeros(GC_F32, GC_CPU, 2, GC_SHAPE(0, 6)));
    ck_assert_ptr_nonnull(gc_rope(x, c0, c0, 5));
    gc_pool_pop(p);
}
END_TEST

/* the named settings of the GPU paths, set on any build: a value they do not take is an
 * error that lists the ones they do; the environment's are checked once at start-up */
START_TEST(test_named_settings)
{
    ck_assert_int_eq(gc_gemm_set_sm90("fast"), GC_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(gc_error_message(), "'fast': expected one of off, act, all"));
    ck_assert_int_eq(gc_gemm_set_sm90("all"), GC_OK);
    ck_assert_int_eq(gc_gemm_sm90_mode(), 2);
    ck_assert_int_eq(gc_gemm_set_sm90("off"), GC_OK);
    ck_assert_int_eq(gc_gemm_sm90_mode(), 0);
    gc_error_clear(); /* (the first error stands until cleared) */
    ck_assert_int_eq(gc_gemm_set_sm90_tuning(NULL, "512", NULL), GC_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(gc_error_message(), "GC_GEMM_SM90_BN '512': expected one of auto, 128, 256"));
    ck_assert_int_eq(gc_gemm_set_sm90_tuning(NULL, NULL, NULL), GC_OK);
    gc_error_clear();
    ck_assert_int_eq(setenv("GC_GEMM_SM90", "fast", 1), 0);
    ck_assert_int_eq(gc_ops_env_check(), GC_ERR_INVALID);
    ck_assert_str_eq(gc_error_message(), "GC_GEMM_SM90=fast: expected one of off, act, all");
    ck_assert_int_eq(unsetenv("GC_GEMM_SM90"), 0);
    ck_assert_int_eq(setenv("GC_ATTN_IMPL", "cudnn", 1), 0);
    gc_error_clear();
    ck_assert_int_eq(gc_ops_env_check(), GC_ERR_INVALID);
    ck_assert_str_eq(gc_error_message(), "GC_ATTN_IMPL=cudnn: expected one of auto, ref, flash, gemm, flash-split");
    ck_assert_int_eq(setenv("GC_ATTN_IMPL", "gemm", 1), 0);
    gc_error_clear();
    ck_assert_int_eq(gc_ops_env_check(), GC_OK);
    ck_assert_int_eq(unsetenv("GC_ATTN_IMPL"), 0);
}
END_TEST

int main(void)
{
#ifdef M_PERTURB
    /* fill new host blocks with 0x7f bytes (3.4e38 as f32), so a fresh gradient buffer an
     * op forgets to overwrite shows up in the exact-value checks */
    mallopt(M_PERTURB, 0x80);
#endif
    Suite *s = suite_create("ops_misc");
    TCase *tc = gc_test_tcase("misc");
    tcase_add_test(tc, test_embedding_values_and_grad_sums);
    tcase_add_test(tc, test_embedding_grad);
    tcase_add_test(tc, test_embedding_errors);
    tcase_add_test(tc, test_gather_rows_values);
    tcase_add_test(tc, test_gather_rows_grad);
    tcase_add_test(tc, test_gather_rows_errors);
    tcase_add_test(tc, test_rope_known_values);
    tcase_add_test(tc, test_rope_vs_complex_rotation);
    tcase_add_test(tc, test_rope_grad);
    tcase_add_test(tc, test_rope_errors);
    tcase_add_test(tc, test_named_settings);
    suite_add_tcase(s, tc);
    return gc_test_run(s);
}
