/* Elementwise ops (broadcast add/sub/mul, scale, exp, activations), reductions, cross
 * entropy, dropout and patches: finite-difference gradient checks, known values,
 * dropout's counter-based masks, and the error cases. */
#include "gc_test.h"

#include <string.h>

/* ---------------------------------------------------------------- helpers */

static gc_tensor *tensor_of(int ndim, const int64_t *shape, const float *v)
{
    return gc_pool_add(gc_tensor_from_data(GC_F32, GC_CPU, ndim, shape, v));
}

static float item(gc_tensor *t)
{
    double v = NAN;
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(gc_tensor_item(t, &v), GC_OK);
    return (float)v;
}

static void release_all(int n, gc_tensor **ts)
{
    for (int i = 0; i < n; i++) gc_tensor_release(ts[i]);
}

/* ---------------------------------------------------------------- add / sub / mul */

typedef enum { OP_ADD, OP_SUB, OP_MUL } binop;

static gc_tensor *f_binary(gc_tensor *const *in, void *ctx)
{
    switch (*(const binop *)ctx) {
    case OP_ADD: return gc_add(in[0], in[1]);
    case OP_SUB: return gc_sub(in[0], in[1]);
    default: return gc_mul(in[0], in[1]);
    }
}

static void check_binary(binop op, int na, const int64_t *sa, int nb, const int64_t *sb)
{
    gc_tensor *in[2] = {gc_test_param(na, sa, 11, 1.0), gc_test_param(nb, sb, 12, 1.0)};
    GC_ASSERT_GRADCHECK(f_binary, &op, 2, in, NULL);
    release_all(2, in);
}

START_TEST(test_binary_grads)
{
    for (binop op = OP_ADD; op <= OP_MUL; op++) {
        check_binary(op, 3, GC_SHAPE(2, 3, 4), 1, GC_SHAPE(4));          /* trailing vector */
        check_binary(op, 1, GC_SHAPE(4), 3, GC_SHAPE(2, 3, 4));          /* ... on the left */
        check_binary(op, 3, GC_SHAPE(2, 1, 4), 3, GC_SHAPE(1, 3, 1));    /* both broadcast */
        check_binary(op, 0, NULL, 2, GC_SHAPE(3, 3));                    /* 0-dim scalar */
        check_binary(op, 1, GC_SHAPE(1), 2, GC_SHAPE(5, 5));             /* [1] * [B, B] */
        check_binary(op, 2, GC_SHAPE(3, 5), 2, GC_SHAPE(3, 5));          /* same shape */
        check_binary(op, 5, GC_SHAPE(2, 1, 3, 1, 2), 4, GC_SHAPE(2, 1, 2, 1)); /* 5 dims */
        check_binary(op, 3, GC_SHAPE(3, 1, 5), 2, GC_SHAPE(3, 1));       /* odd sizes */
    }
}
END_TEST

/* strided inputs (a transposed view), and one tensor used as both operands */
static gc_tensor *f_strided(gc_tensor *const *in, void *ctx)
{
    (void)ctx;
    gc_tensor *t = gc_transpose(in[0], 0, 1);                      /* [4, 3], strided */
    gc_tensor *y = gc_mul(t, in[1]);                               /* [4, 3] * [3] */
    return gc_add(gc_mul(y, y), gc_sub(t, gc_slice(in[1], 0, 1, 2))); /* y^2 + t - b[1:2] */
}

/* the broadcast operand's gradient accumulated over several uses */
static gc_tensor *f_reuse(gc_tensor *const *in, void *ctx)
{
    (void)ctx;
    gc_tensor *s = in[1];                                          /* [] */
    return gc_mul(gc_add(gc_mul(in[0], s), s), gc_exp(s));         /* (x s + s) e^s */
}

START_TEST(test_binary_strided_and_reuse)
{
    gc_tensor *in[2] = {gc_test_param(2, GC_SHAPE(3, 4), 21, 1.0), gc_test_param(1, GC_SHAPE(3), 22, 1.0)};
    GC_ASSERT_GRADCHECK(f_strided, NULL, 2, in, NULL);
    release_all(2, in);
    gc_tensor *in2[2] = {gc_test_param(2, GC_SHAPE(4, 3), 23, 1.0), gc_test_param(0, NULL, 24, 0.5)};
    GC_ASSERT_GRADCHECK(f_reuse, NULL, 2, in2, NULL);
    release_all(2, in2);
}
END_TEST

START_TEST(test_binary_values)
{
    gc_pool *p = gc_pool_push();
    gc_tensor *a = tensor_of(2, GC_SHAPE(2, 1), (float[]){1, 2});
    gc_tensor *b = tensor_of(1, GC_SHAPE(3), (float[]){10, 20, 30});
    float out[6];
    gc_tensor *y = gc_add(a, b);
    ck_assert_int_eq(y->ndim, 2);
    ck_assert_int_eq(y->shape[0], 2);
    ck_assert_int_eq(y->shape[1], 3);
    ck_assert_int_eq(gc_tensor_to_host_f32(y, out), GC_OK);
    const float add[6] = {11, 21, 31, 12, 22, 32};
    for (int i = 0; i < 6; i++) ck_assert_float_eq(out[i], add[i]);
    ck_assert_int_eq(gc_tensor_to_host_f32(gc_sub(a, b), out), GC_OK);
    const float sub[6] = {-9, -19, -29, -8, -18, -28};
    for (int i = 0; i < 6; i++) ck_assert_float_eq(out[i], sub[i]);
    ck_assert_int_eq(gc_tensor_to_host_f32(gc_mul(a, b), out), GC_OK);
    const float mul[6] = {10, 20, 30, 20, 40, 60};
    for (int i = 0; i < 6; i++) ck_assert_float_eq(out[i], mul[i]);
    /* 0-dim times a matrix: a matrix; [1] and [] together: [1] */
    gc_tensor *s = tensor_of(0, NULL, (float[]){3});
    ck_assert_int_eq(gc_mul(s, b)->ndim, 1);
    ck_assert_float_eq(item(gc_mul(s, tensor_of(1, GC_SHAPE(1), (float[]){2}))), 6);
    ck_assert_float_eq(item(gc_scale(s, -0.5)), -1.5);
    ck_assert_float_eq_tol(item(gc_exp(s)), 20.0855369, 1e-5);
    gc_pool_pop(p);
}
END_TEST

/* The gradient of a broadcast scalar is the sum of the output gradient, bit for bit
 * the same on every run (a fixed summation order). */
START_TEST(test_scalar_grad_is_sum)
{
    const int64_t B = 37;
    gc_tensor *s = gc_test_param(1, GC_SHAPE(1), 1, 1.0);
    gc_tensor *m = gc_test_randn(2, GC_SHAPE(B, B), 2, 1.0);
    gc_tensor *g = gc_test_randn(2, GC_SHAPE(B, B), 3, 1.0);
    float first = 0;
    for (int rep = 0; rep < 3; rep++) {
        gc_tensor_zero_grad(s);
        gc_pool *p = gc_pool_push();
        gc_tape *t = gc_tape_init();
        gc_tape_begin(t);
        gc_tensor *y = gc_mul(s, m);
        gc_tape_end(t);
        ck_assert_int_eq(gc_backward(t, 1, &y, &g), GC_OK);
        gc_tape_free(t);
        gc_pool_pop(p);
        float got;
        ck_assert_int_eq(gc_tensor_to_host_f32(gc_tensor_grad(s), &got), GC_OK);
        if (rep == 0) {
            const float *mv = gc_tensor_data(m), *gv = gc_tensor_data(g);
            double want = 0;
            for (int64_t i = 0; i < B * B; i++) want += (double)mv[i] * gv[i];
            ck_assert_double_eq_tol(got, want, 1e-4 * (1 + fabs(want)));
            first = got;
        } else {
            ck_assert(memcmp(&got, &first, sizeof got) == 0);
        }
    }
    gc_tensor_release(s);
    gc_tensor_release(m);
    gc_tensor_release(g);
}
END_TEST

START_TEST(test_binary_errors)
{
    gc_pool *p = gc_pool_push();
    gc_tensor *a = gc_pool_add(gc_test_randn(2, GC_SHAPE(2, 3), 1, 1.0));
    gc_tensor *b = gc_pool_add(gc_test_randn(1, GC_SHAPE(4), 2, 1.0));
    gc_tensor_set_name(a, "lhs");
    gc_error_clear();
    ck_assert_ptr_null(gc_add(a, b));
    ck_assert_int_eq(gc_error_code(), GC_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(gc_error_message(), "lhs [2, 3]"));
    ck_assert_ptr_nonnull(strstr(gc_error_message(), "[4]"));
    gc_error_clear();
    gc_tensor *r3 = gc_mul(a, gc_pool_add(gc_test_randn(3, GC_SHAPE(4, 2, 3), 3, 1.0))); /* fits: [4, 2, 3] */
    ck_assert_ptr_nonnull(r3);
    ck_assert_int_eq(r3->shape[0], 4);
    ck_assert_ptr_null(gc_mul(a, gc_pool_add(gc_test_randn(2, GC_SHAPE(3, 3), 3, 1.0))));
    ck_assert_int_eq(gc_error_code(), GC_ERR_SHAPE);
    gc_error_clear();
    /* mixed dtypes */
    gc_tensor *i = gc_pool_add(gc_test_ints(GC_I32, 2, GC_SHAPE(2, 3), 4, 0, 5));
    ck_assert_ptr_null(gc_mul(a, i));
    ck_assert_int_eq(gc_error_code(), GC_ERR_DTYPE);
    gc_error_clear();
    ck_assert_ptr_null(gc_exp(i));
    ck_assert_int_eq(gc_error_code(), GC_ERR_DTYPE);
    /* a NULL input returns NULL and keeps the first error */
    ck_assert_ptr_null(gc_sub(NULL, a));
    ck_assert_ptr_null(gc_scale(NULL, 2));
    ck_assert_ptr_null(gc_activation(NULL, GC_ACT_SILU));
    ck_assert_int_eq(gc_error_code(), GC_ERR_DTYPE);
    gc_error_clear();
    gc_pool_pop(p);
}
END_TEST

/* ---------------------------------------------------------------- add_scaled */

/* x + a * s, and its composition from add and mul: one as in[0..2], x used again after
 * (the passed-on gradient must not be clobbered by a later consumer's +=) */
static gc_tensor *f_add_scaled(gc_tensor *const *in, void *ctx)
{
    gc_tensor *y = ctx ? gc_add(in[0], gc_mul(in[1], in[2])) : gc_add_scaled(in[0], in[1], in[2]);
    return gc_mul(y, gc_exp(in[0]));
}

START_TEST(test_add_scaled)
{
    gc_pool *p = gc_pool_push();
    gc_tensor *in[3] = {gc_pool_add(gc_test_param(3, GC_SHAPE(2, 5, 7), 21, 1.0)),
                        gc_pool_add(gc_test_param(3, GC_SHAPE(2, 5, 7), 22, 1.0)), gc_pool_add(gc_test_param(1, GC_SHAPE(7), 23, 1.0))};
    GC_ASSERT_GRADCHECK(f_add_scaled, NULL, 3, in, NULL);
    /* the same numbers as the composition it replaces */
    double got[3][70], want[3][70];
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < 3; i++) gc_tensor_zero_grad(in[i]);
        gc_tape *t = gc_tape_init();
        gc_tape_begin(t);
        gc_tensor *y = gc_sum(f_add_scaled(in, k ? &k : NULL));
        gc_tape_end(t);
        ck_assert_int_eq(gc_backward(t, 1, &y, NULL), GC_OK);
        gc_tape_free(t);
        for (int i = 0; i < 3; i++) gc_tensor_to_host_f64(gc_tensor_grad(in[i]), k ? want[i] : got[i]);
    }
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < (i == 2 ? 7 : 70); j++) ck_assert_double_eq_tol(got[i][j], want[i][j], 1e-5 * (1 + fabs(want[i][j])));
    /* shapes are checked and named */
    gc_error_clear();
    ck_assert_ptr_null(gc_add_scaled(in[0], in[1], gc_pool_add(gc_test_param(1, GC_SHAPE(5), 24, 1.0))));
    ck_assert_int_eq(gc_error_code(), GC_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(gc_error_message(), "[5]"));
    gc_error_clear();
    ck_assert_ptr_null(gc_add_scaled(in[0], gc_pool_add(gc_test_param(2, GC_SHAPE(10, 7), 25, 1.0)), in[2]));
    ck_assert_int_eq(gc_error_code(), GC_ERR_SHAPE);
    gc_error_clear();
    gc_pool_pop(p);
}
END_TEST

/* ---------------------------------------------------------------- scale / exp / activations */

static gc_tensor *f_scale_exp(gc_tensor *const *in, void *ctx)
{
    (void)ctx;
    return gc_exp(gc_scale(gc_transpose(in[0], 0, 1), -0.7));
}

static gc_tensor *f_act(gc_tensor *const *in, void *ctx) { return gc_activation(in[0], *(const gc_act *)ctx); }

static gc_tensor *f_act_t(gc_tensor *const *in, void *ctx)
{
    return gc_activation(gc_transpose(in[0], 0, 1), *(const gc_act *)ctx);
}

START_TEST(test_unary_grads)
{
    gc_tensor *x = gc_test_param(2, GC_SHAPE(3, 5), 31, 1.0);
    GC_ASSERT_GRADCHECK(f_scale_exp, NULL, 1, &x, NULL);
    gc_tensor_release(x);
    /* each activation at 41 points spread over [-4, 4] */
    float pts[41];
    for (int i = 0; i < 41; i++) pts[i] = -4.0f + 0.2f * (float)i + 0.013f;
    for (gc_act act = GC_ACT_NONE; act <= GC_ACT_SILU; act++) {
        gc_tensor *v = gc_tensor_from_data(GC_F32, GC_CPU, 1, GC_SHAPE(41), pts);
        ck_assert_int_eq(gc_tensor_requires_grad(v, true), GC_OK);
        gc_gradcheck_opts o = {.eps = 1e-3, .atol = 2e-3, .rtol = 1e-2, .max_probe = 41};
        GC_ASSERT_GRADCHECK(f_act, &act, 1, &v, &o);
        gc_tensor_release(v);
    }
    /* a strided input */
    gc_act tanh_gelu = GC_ACT_GELU_TANH;
    gc_tensor *t = gc_test_param(2, GC_SHAPE(4, 3), 32, 2.0);
    GC_ASSERT_GRADCHECK(f_act_t, &tanh_gelu, 1, &t, NULL);
    gc_tensor_release(t);
}
END_TEST

START_TEST(test_activation_values)
{
    gc_pool *p = gc_pool_push();
    gc_tensor *x = tensor_of(1, GC_SHAPE(2), (float[]){1, -2});
    const struct { gc_act act; float at1, atm2; } known[] = {
        {GC_ACT_GELU_ERF, 0.8413447f, -0.0455003f},
        {GC_ACT_GELU_TANH, 0.8411920f, -0.0454023f},
        {GC_ACT_QUICK_GELU, 0.8457958f, -0.0643414f},
        {GC_ACT_SILU, 0.7310586f, -0.2384058f},
        {GC_ACT_NONE, 1.0f, -2.0f},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        float out[2];
        ck_assert_int_eq(gc_tensor_to_host_f32(gc_activation(x, known[i].act), out), GC_OK);
        ck_assert_float_eq_tol(out[0], known[i].at1, 1e-6);
        ck_assert_float_eq_tol(out[1], known[i].atm2, 1e-6);
    }
    ck_assert_ptr_eq(gc_activation(x, GC_ACT_NONE), x); /* the identity is x itself */
    ck_assert_ptr_null(gc_activation(x, (gc_act)42));
    ck_assert_int_eq(gc_error_code(), GC_ERR_INVALID);
    gc_error_clear();
    gc_pool_pop(p);
}
END_TEST

START_TEST(test_act_parse)
{
    const struct { const char *name; gc_act act; } names[] = {
        {"gelu", GC_ACT_GELU_ERF},         {"gelu_new", GC_ACT_GELU_TANH}, {"gelu_pytorch_tanh", GC_ACT_GELU_TANH},
        {"gelu_fast", GC_ACT_GELU_TANH},   {"quick_gelu", GC_ACT_QUICK_GELU}, {"silu", GC_ACT_SILU},
        {"swish", GC_ACT_SILU},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        gc_act a = GC_ACT_NONE;
        ck_assert_int_eq(gc_act_parse(names[i].name, &a), GC_OK);
        ck_assert_int_eq(a, names[i].act);
    }
    gc_act a;
    ck_assert_int_eq(gc_act_parse("relu6", &a), GC_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(gc_error_message(), "\"relu6\""));
    gc_error_clear();
    ck_assert_int_eq(gc_act_parse(NULL, &a), GC_ERR_INVALID);
    gc_error_clear();
}
END_TEST

/* ---------------------------------------------------------------- reductions */

typedef struct { int kind, dim; } red_ctx; /* kind 0 sum, 1 mean, 2 mean_dim */

static gc_tensor *f_reduce(gc_tensor *const *in, void *ctx)
{
    const red_ctx *c = ctx;
    switch (c->kind) {
    case 0: return gc_sum(in[0]);
    case 1: return gc_mean(in[0]);
    default: return gc_mean_dim(in[0], c->dim);
    }
}

START_TEST(test_reduce_grads)
{
    gc_tensor *x = gc_test_param(3, GC_SHAPE(3, 4, 5), 41, 1.0);
    for (int kind = 0; kind < 2; kind++) {
        red_ctx c = {kind, 0};
        GC_ASSERT_GRADCHECK(f_reduce, &c, 1, &x, NULL);
    }
    for (int dim = -3; dim < 3; dim++) {
        red_ctx c = {2, dim};
        GC_ASSERT_GRADCHECK(f_reduce, &c, 1, &x, NULL);
    }
    gc_tensor_release(x);
    /* mean_dim of a vector: a 0-dim result */
    gc_tensor *v = gc_test_param(1, GC_SHAPE(7), 42, 1.0);
    red_ctx c = {2, 0};
    GC_ASSERT_GRADCHECK(f_reduce, &c, 1, &v, NULL);
    gc_tensor_release(v);
}
END_TEST

START_TEST(test_reduce_values)
{
    gc_pool *p = gc_pool_push();
    gc_tensor *x = tensor_of(2, GC_SHAPE(2, 3), (float[]){1, 2, 3, 4, 5, 6});
    gc_tensor *s = gc_sum(x);
    ck_assert_int_eq(s->ndim, 0);
    ck_assert_float_eq(item(s), 21);
    ck_assert_float_eq(item(gc_mean(x)), 3.5f);
    float out[3];
    gc_tensor *m0 = gc_mean_dim(x, 0);
    ck_assert_int_eq(m0->ndim, 1);
    ck_assert_int_eq(m0->shape[0], 3);
    ck_assert_int_eq(gc_tensor_to_host_f32(m0, out), GC_OK);
    ck_assert_float_eq(out[0], 2.5f);
    ck_assert_float_eq(out[2], 4.5f);
    ck_assert_int_eq(gc_tensor_to_host_f32(gc_mean_dim(x, -1), out), GC_OK);
    ck_assert_float_eq(out[0], 2);
    ck_assert_float_eq(out[1], 5);
    ck_assert_int_eq(gc_tensor_to_host_f32(gc_mean_dim(gc_transpose(x, 0, 1), 1), out), GC_OK); /* strided */
    ck_assert_float_eq(out[1], 3.5f);
    gc_error_clear();
    ck_assert_ptr_null(gc_mean_dim(x, 2));
    ck_assert_int_eq(gc_error_code(), GC_ERR_INVALID);
    gc_error_clear();
    ck_assert_ptr_null(gc_mean_dim(x, -3));
    gc_error_clear();
    ck_assert_ptr_null(gc_sum(gc_pool_add(gc_test_ints(GC_I64, 1, GC_SHAPE(3), 1, 0, 3))));
    ck_assert_int_eq(gc_error_code(), GC_ERR_DTYPE);
    gc_error_clear();
    gc_pool_pop(p);
}
END_TEST

/* ---------------------------------------------------------------- cross entropy */

static gc_tensor *f_ce(gc_tensor *const *in, void *ctx)
{
    bool transposed = ctx != NULL;
    return gc_cross_entropy(transposed ? gc_transpose(in[0], 0, 1) : in[0], in[1]);
}

START_TEST(test_cross_entropy_grads)
{
    gc_dtype dts[2] = {GC_I32, GC_I64};
    for (int i = 0; i < 2; i++) {
        gc_tensor *in[2] = {gc_test_param(2, GC_SHAPE(5, 7), 51, 2.0), gc_test_ints(dts[i], 1, GC_SHAPE(5), 52, 0, 7)};
        GC_ASSERT_GRADCHECK(f_ce, NULL, 2, in, NULL);
        release_all(2, in);
    }
    /* transposed (strided) logits */
    gc_tensor *in[2] = {gc_test_param(2, GC_SHAPE(6, 3), 53, 2.0), gc_test_ints(GC_I64, 1, GC_SHAPE(3), 54, 0, 6)};
    GC_ASSERT_GRADCHECK(f_ce, (void *)1, 2, in, NULL);
    release_all(2, in);
    /* a single class: zero loss, zero gradient */
    gc_tensor *in1[2] = {gc_test_param(2, GC_SHAPE(4, 1), 55, 1.0), gc_test_ints(GC_I64, 1, GC_SHAPE(4), 56, 0, 1)};
    GC_ASSERT_GRADCHECK(f_ce, NULL, 2, in1, NULL);
    release_all(2, in1);
}
END_TEST

START_TEST(test_cross_entropy_values)
{
    gc_pool *p = gc_pool_push();
    gc_tensor *x = tensor_of(2, GC_SHAPE(2, 3), (float[]){1, 2, 3, 1, 0, -1});
    gc_tensor *t32 = gc_pool_add(gc_tensor_from_data(GC_I32, GC_CPU, 1, GC_SHAPE(2), (int32_t[]){2, 1}));
    gc_tensor *t64 = gc_pool_add(gc_tensor_from_data(GC_I64, GC_CPU, 1, GC_SHAPE(2), (int64_t[]){2, 1}));
    /* (log(e + e^2 + e^3) - 3 + log(e + 1 + 1/e) - 0) / 2 */
    ck_assert_float_eq_tol(item(gc_cross_entropy(x, t32)), 0.9076060f, 1e-6);
    ck_assert_float_eq_tol(item(gc_cross_entropy(x, t64)), 0.9076060f, 1e-6);
    /* large logits stay finite (logsumexp is shifted by the row max) */
    gc_tensor *big = tensor_of(2, GC_SHAPE(1, 2), (float[]){1000, 0});
    gc_tensor *t0 = gc_pool_add(gc_tensor_from_data(GC_I32, GC_CPU, 1, GC_SHAPE(1), (int32_t[]){1}));
    ck_assert_float_eq_tol(item(gc_cross_entropy(big, t0)), 1000.0f, 1e-3);
    /* errors: a target out of range names its row and value */
    gc_tensor *bad = gc_pool_add(gc_tensor_from_data(GC_I64, GC_CPU, 1, GC_SHAPE(2), (int64_t[]){0, 3}));
    gc_error_clear();
    ck_assert_ptr_null(gc_cross_entropy(x, bad));
    ck_assert_int_eq(gc_error_code(), GC_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(gc_error_message(), "row 1"));
    ck_assert_ptr_nonnull(strstr(gc_error_message(), "target 3"));
    gc_error_clear();
    gc_tensor *neg = gc_pool_add(gc_tensor_from_data(GC_I32, GC_CPU, 1, GC_SHAPE(2), (int32_t[]){-1, 0}));
    ck_assert_ptr_null(gc_cross_entropy(x, neg));
    ck_assert_ptr_nonnull(strstr(gc_error_message(), "row 0"));
    gc_error_clear();
    ck_assert_ptr_null(gc_cross_entropy(x, gc_pool_add(gc_tensor_zeros(GC_I32, GC_CPU, 1, GC_SHAPE(3)))));
    ck_assert_int_eq(gc_error_code(), GC_ERR_SHAPE);
    gc_error_clear();
    ck_assert_ptr_null(gc_cross_entropy(x, tensor_of(1, GC_SHAPE(2), (float[]){0, 1})));
    ck_assert_int_eq(gc_error_code(), GC_ERR_DTYPE);
    gc_error_clear();
    gc_pool_pop(p);
}
END_TEST

/* ---------------------------------------------------------------- dropout */

typedef struct { double p; uint32_t op; gc_rand_context rc; } drop_ctx;

static gc_tensor *f_dropout(gc_tensor *const *in, void *ctx)
{
    const drop_ctx *c = ctx;
    gc_rand_context_set(c->rc);
    return gc_mul(gc_dropout(in[0], c->p, c->op), in[1]); /* the mask is fixed: a smooth function of x */
}

START_TEST(test_dropout_grad)
{
    drop_ctx c = {0.4, 7, {1234, 3, 10}};
    gc_tensor *in[2] = {gc_test_param(3, GC_SHAPE(3, 4, 5), 61, 1.0), gc_test_param(3, GC_SHAPE(3, 4, 5), 62, 1.0)};
    GC_ASSERT_GRADCHECK(f_dropout, &c, 2, in, NULL);
    release_all(2, in);
}
END_TEST

static gc_tensor *dropout_at(gc_tensor *x, double p, uint32_t op, gc_rand_context rc)
{
    gc_rand_context_set(rc);
    return gc_dropout(x, p, op);
}

START_TEST(test_dropout_chunking)
{
    gc_pool *p = gc_pool_push();
    const int64_t per = 5 * 7;
    gc_tensor *x = gc_pool_add(gc_test_randn(3, GC_SHAPE(6, 5, 7), 71, 1.0));
    gc_rand_context rc = {0xabcdef12345ULL, 9, 0};
    gc_tensor *whole = dropout_at(x, 0.3, 4, rc);
    gc_tensor *c0 = dropout_at(gc_rows(x, 0, 2), 0.3, 4, (gc_rand_context){rc.seed, rc.step, 0});
    gc_tensor *c1 = dropout_at(gc_rows(x, 2, 6), 0.3, 4, (gc_rand_context){rc.seed, rc.step, 2});
    ck_assert_ptr_nonnull(whole);
    ck_assert_ptr_nonnull(c0);
    ck_assert_ptr_nonnull(c1);
    const float *w = gc_tensor_data(whole), *xv = gc_tensor_data(x);
    ck_assert(memcmp(w, gc_tensor_data(c0), sizeof(float) * 2 * per) == 0);
    ck_assert(memcmp(w + 2 * per, gc_tensor_data(c1), sizeof(float) * 4 * per) == 0);
    /* each element follows the documented draw exactly */
    const float scale = (float)(1.0 / (1.0 - 0.3));
    for (int64_t b = 0; b < 6; b++)
        for (int64_t e = 0; e < per; e++) {
            float u = gc_rand_uniform(rc.seed, rc.step, 4, (uint32_t)b, (uint64_t)e);
            float want = u >= 0.3 ? xv[b * per + e] * scale : 0.0f;
            ck_assert(memcmp(&w[b * per + e], &want, sizeof want) == 0);
        }
    /* a chunk with a sample offset draws its samples' numbers */
    gc_tensor *late = dropout_at(gc_rows(x, 4, 6), 0.3, 4, (gc_rand_context){rc.seed, rc.step, 4});
    ck_assert(memcmp(w + 4 * per, gc_tensor_data(late), sizeof(float) * 2 * per) == 0);
    gc_pool_pop(p);
}
END_TEST

static int64_t count_zero(const gc_tensor *t)
{
    int64_t z = 0;
    const float *v = gc_tensor_data(t);
    for (int64_t i = 0, n = gc_tensor_numel(t); i < n; i++) z += v[i] == 0.0f;
    return z;
}

START_TEST(test_dropout_statistics)
{
    gc_pool *p = gc_pool_push();
    const int64_t R = 64, D = 4096, n = R * D;
    gc_tensor *x = gc_pool_add(gc_tensor_new(GC_F32, GC_CPU, 2, GC_SHAPE(R, D)));
    ck_assert_int_eq(gc_tensor_fill(x, 2.0), GC_OK);
    gc_rand_context rc = {77, 1, 0};
    const double probs[3] = {0.1, 0.5, 0.9};
    for (int k = 0; k < 3; k++) {
        double pr = probs[k];
        gc_tensor *y = dropout_at(x, pr, 3, rc);
        ck_assert_double_eq_tol((double)count_zero(y) / (double)n, pr, 0.01);
        const float *v = gc_tensor_data(y);
        for (int64_t i = 0; i < n; i++)
            if (v[i] != 0.0f) ck_assert_float_eq_tol(v[i], 2.0 / (1.0 - pr), 1e-5 * 2.0 / (1.0 - pr));
    }
    /* a different op or step: a different mask; the same ones: the same */
    gc_tensor *a = dropout_at(x, 0.5, 3, rc);
    gc_tensor *same = dropout_at(x, 0.5, 3, rc);
    gc_tensor *op2 = dropout_at(x, 0.5, 4, rc);
    gc_tensor *step2 = dropout_at(x, 0.5, 3, (gc_rand_context){77, 2, 0});
    gc_tensor *seed2 = dropout_at(x, 0.5, 3, (gc_rand_context){78, 1, 0});
    ck_assert(memcmp(gc_tensor_data(a), gc_tensor_data(same), sizeof(float) * (size_t)n) == 0);
    const gc_tensor *others[3] = {op2, step2, seed2};
    for (int k = 0; k < 3; k++) {
        const float *u = gc_tensor_data(a), *w = gc_tensor_data(others[k]);
        int64_t differ = 0;
        for (int64_t i = 0; i < n; i++) differ += (u[i] == 0.0f) != (w[i] == 0.0f);
        ck_assert_double_eq_tol((double)differ / (double)n, 0.5, 0.02); /* independent masks */
    }
    gc_pool_pop(p);
}
END_TEST

START_TEST(test_dropout_backward_and_errors)
{
    gc_pool *p = gc_pool_push();
    gc_tensor *x = gc_pool_add(gc_test_param(2, GC_SHAPE(8, 33), 81, 1.0));
    gc_tensor *g = gc_pool_add(gc_test_randn(2, GC_SHAPE(8, 33), 82, 1.0));
    gc_rand_context rc = {5, 6, 100};
    gc_tape *t = gc_tape_init();
    gc_tape_begin(t);
    gc_tensor *y = dropout_at(x, 0.25, 9, rc);
    gc_tape_end(t);
    ck_assert_int_eq(gc_tape_size(t), 1);
    ck_assert_uint_eq(gc_tape_saved_bytes(t), 0); /* no mask is kept: it is regenerated */
    gc_rand_context_set((gc_rand_context){999, 999, 999}); /* backward does not read the current context */
    ck_assert_int_eq(gc_backward(t, 1, &y, &g), GC_OK);
    gc_tape_free(t);
    const float *yv = gc_tensor_data(y), *xv = gc_tensor_data(x), *gv = gc_tensor_data(g);
    const float *gx = gc_tensor_data(gc_tensor_grad(x));
    for (int64_t i = 0; i < 8 * 33; i++) {
        bool kept = yv[i] != 0.0f || xv[i] == 0.0f;
        float want = kept ? gv[i] * (float)(1.0 / 0.75) : 0.0f;
        ck_assert_float_eq(gx[i], want);
    }
    /* p == 0: x itself, nothing recorded */
    t = gc_tape_init();
    gc_tape_begin(t);
    ck_assert_ptr_eq(gc_dropout(x, 0.0, 1), x);
    gc_tape_end(t);
    ck_assert_int_eq(gc_tape_size(t), 0);
    gc_tape_free(t);
    gc_error_clear();
    ck_assert_ptr_null(gc_dropout(x, 1.0, 1));
    ck_assert_int_eq(gc_error_code(), GC_ERR_INVALID);
    gc_error_clear();
    ck_assert_ptr_null(gc_dropout(x, -0.1, 1));
    ck_assert_int_eq(gc_error_code(), GC_ERR_INVALID);
    gc_error_clear();
    ck_assert_ptr_null(gc_dropout(x, NAN, 1));
    gc_error_clear();
    gc_pool_pop(p);
}
END_TEST

/* ---------------------------------------------------------------- patches */

START_TEST(test_unfold_layout)
{
    gc_pool *p = gc_pool_push();
    const int64_t B = 2, C = 3, H = 4, W = 6, P = 2, GW = W / P, N = (H / P) * GW, K = C * P * P;
    float v[2 * 3 * 4 * 6];
    for (int i = 0; i < 2 * 3 * 4 * 6; i++) v[i] = (float)i;
    gc_tensor *x = tensor_of(4, GC_SHAPE(B, C, H, W), v);
    gc_tensor *u = gc_unfold_patches(x, P);
    ck_assert_ptr_nonnull(u);
    ck_assert_int_eq(u->ndim, 3);
    ck_assert_int_eq(u->shape[1], N);
    ck_assert_int_eq(u->shape[2], K);
    const float *o = gc_tensor_data(u);
    for (int64_t b = 0; b < B; b++)
        for (int64_t gy = 0; gy < H / P; gy++)
            for (int64_t gx = 0; gx < GW; gx++)
                for (int64_t c = 0; c < C; c++)
                    for (int64_t y = 0; y < P; y++)
                        for (int64_t xx = 0; xx < P; xx++)
                            ck_assert_float_eq(o[(b * N + gy * GW + gx) * K + c * P * P + y * P + xx],
                                               v[((b * C + c) * H + gy * P + y) * W + gx * P + xx]);
    /* errors name the shapes */
    gc_error_clear();
    ck_assert_ptr_null(gc_unfold_patches(x, 4));
    ck_assert_int_eq(gc_error_code(), GC_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(gc_error_message(), "[2, 3, 4, 6]"));
    gc_error_clear();
    ck_assert_ptr_null(gc_unfold_patches(gc_view(x, 3, GC_SHAPE(6, 4, 6)), 2));
    ck_assert_int_eq(gc_error_code(), GC_ERR_SHAPE);
    gc_error_clear();
    gc_pool_pop(p);
}
END_TEST

static gc_tensor *f_unfold(gc_tensor *const *in, void *ctx)
{
    (void)ctx;
    return gc_unfold_patches(in[0], 3);
}

static gc_tensor *f_patch_embed(gc_tensor *const *in, void *ctx)
{
    (void)ctx;
    return gc_patch_embed(in[0], in[1], in[2]);
}

/* out[b, gy*GW+gx, d] = bias[d] + sum_{c,y,x} w[d,c,y,x] pixels[b,c,gy*P+y,gx*P+x] */
static void naive_conv(const float *px, const float *w, const float *bias, float *out, int64_t B, int64_t C, int64_t H,
                       int64_t W, int64_t D, int64_t P)
{
    int64_t GH = H / P, GW = W / P;
    for (int64_t b = 0; b < B; b++)
        for (int64_t gy = 0; gy < GH; gy++)
            for (int64_t gx = 0; gx < GW; gx++)
                for (int64_t d = 0; d < D; d++) {
                    double s = bias ? bias[d] : 0;
                    for (int64_t c = 0; c < C; c++)
                        for (int64_t y = 0; y < P; y++)
                            for (int64_t x = 0; x < P; x++)
                                s += (double)w[((d * C + c) * P + y) * P + x] *
                                     px[((b * C + c) * H + gy * P + y) * W + gx * P + x];
                    out[(b * GH * GW + gy * GW + gx) * D + d] = (float)s;
                }
}

START_TEST(test_patch_embed)
{
    const int64_t B = 2, C = 3, H = 6, W = 9, P = 3, D = 5, N = (H / P) * (W / P);
    gc_tensor *px = gc_test_param(4, GC_SHAPE(B, C, H, W), 91, 1.0);
    gc_tensor *w = gc_test_param(4, GC_SHAPE(D, C, P, P), 92, 0.3);
    gc_tensor *b = gc_test_param(1, GC_SHAPE(D), 93, 0.3);
    gc_pool *p = gc_pool_push();
    float want[2 * 6 * 5], got[2 * 6 * 5];
    for (int with_bias = 0; with_bias < 2; with_bias++) {
        gc_tensor *y = gc_patch_embed(px, w, with_bias ? b : NULL);
        ck_assert_ptr_nonnull(y);
        ck_assert_int_eq(y->ndim, 3);
        ck_assert_int_eq(y->shape[0], B);
        ck_assert_int_eq(y->shape[1], N);
        ck_assert_int_eq(y->shape[2], D);
        naive_conv(gc_tensor_data(px), gc_tensor_data(w), with_bias ? gc_tensor_data(b) : NULL, want, B, C, H, W, D, P);
        ck_assert_int_eq(gc_tensor_to_host_f32(y, got), GC_OK);
        for (int64_t i = 0; i < B * N * D; i++) ck_assert_float_eq_tol(got[i], want[i], 1e-4);
    }
    gc_pool_pop(p);
    gc_tensor *in[3] = {px, w, b};
    GC_ASSERT_GRADCHECK(f_patch_embed, NULL, 3, in, NULL);
    GC_ASSERT_GRADCHECK(f_unfold, NULL, 1, in, NULL);
    /* errors name the shapes */
    p = gc_pool_push();
    gc_tensor *w4 = gc_pool_add(gc_test_randn(4, GC_SHAPE(D, 4, P, P), 94, 1.0));
    gc_error_clear();
    ck_assert_ptr_null(gc_patch_embed(px, w4, NULL));
    ck_assert_int_eq(gc_error_code(), GC_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(gc_error_message(), "[2, 3, 6, 9]"));
    ck_assert_ptr_nonnull(strstr(gc_error_message(), "[5, 4, 3, 3]"));
    gc_error_clear();
    gc_tensor *w2 = gc_pool_add(gc_test_randn(4, GC_SHAPE(D, C, 2, 2), 95, 1.0));
    ck_assert_ptr_null(gc_patch_embed(px, w2, NULL)); /* 9 is not a multiple of 2 */
    ck_assert_int_eq(gc_error_code(), GC_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(gc_error_message(), "patch size 2"));
    gc_error_clear();
    ck_assert_ptr_null(gc_patch_embed(px, w, gc_pool_add(gc_test_randn(1, GC_SHAPE(4), 96, 1.0))));
    ck_assert_int_eq(gc_error_code(), GC_ERR_SHAPE);
    gc_error_clear();
    gc_pool_pop(p);
    release_all(3, in);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("ops_elementwise");
    TCase *tc = gc_test_tcase("elementwise");
    tcase_add_test(tc, test_binary_grads);
    tcase_add_test(tc, test_binary_strided_and_reuse);
    tcase_add_test(tc, test_binary_values);
    tcase_add_test(tc, test_scalar_grad_is_sum);
    tcase_add_test(tc, test_binary_errors);
    tcase_add_test(tc, test_add_scaled);
    tcase_add_test(tc, test_unary_grads);
    tcase_add_test(tc, test_activation_values);
    tcase_add_test(tc, test_act_parse);
    suite_add_tcase(s, tc);
    TCase *tr = gc_test_tcase("reduce_loss");
    tcase_add_test(tr, test_reduce_grads);
    tcase_add_test(tr, test_reduce_values);
    tcase_add_test(tr, test_cross_entropy_grads);
    tcase_add_test(tr, test_cross_entropy_values);
    suite_add_tcase(s, tr);
    TCase *td = gc_test_tcase("dropout");
    tcase_add_test(td, test_dropout_grad);
    tcase_add_test(td, test_dropout_chunking);
    tcase_add_test(td, test_dropout_statistics);
    tcase_add_test(td, test_dropout_backward_and_errors);
    suite_add_tcase(s, td);
    TCase *tp = gc_test_tcase("patch");
    tcase_add_test(tp, test_unfold_layout);
    tcase_add_test(tp, test_patch_embed);
    suite_add_tcase(s, tp);
    return gc_test_run(s);
}
