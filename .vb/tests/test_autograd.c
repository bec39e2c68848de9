/* The tape: recording, +=, seeds, frozen params, detach, memory release,
 * recomputation; and finite-difference checks of matmul, linear and the views. */
#include "gc_test.h"

#include <stdlib.h>
#include <string.h>

static gc_tensor *f_matmul(gc_tensor *const *in, void *ctx)
{
    const int *t = ctx;
    return gc_matmul(in[0], in[1], t[0], t[1]);
}

START_TEST(test_matmul_grad)
{
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            int ctx[2] = {ta, tb};
            gc_tensor *a = gc_test_param(3, ta ? GC_SHAPE(2, 4, 3) : GC_SHAPE(2, 3, 4), 1, 1.0);
            gc_tensor *b = gc_test_param(3, tb ? GC_SHAPE(2, 5, 4) : GC_SHAPE(2, 4, 5), 2, 1.0);
            gc_tensor *in[2] = {a, b};
            GC_ASSERT_GRADCHECK(f_matmul, ctx, 2, in, NULL);
            gc_tensor_release(a);
            gc_tensor_release(b);
        }
    /* 2-D b shared across the batch */
    int ctx[2] = {0, 1};
    gc_tensor *a = gc_test_param(3, GC_SHAPE(2, 3, 4), 3, 1.0), *b = gc_test_param(2, GC_SHAPE(6, 4), 4, 1.0);
    gc_tensor *in[2] = {a, b};
    GC_ASSERT_GRADCHECK(f_matmul, ctx, 2, in, NULL);
    gc_tensor_release(a);
    gc_tensor_release(b);
}
END_TEST

START_TEST(test_matmul_values)
{
    /* [[1,2],[3,4]] @ [[5,6],[7,8]] = [[19,22],[43,50]] */
    gc_pool *p = gc_pool_push();
    gc_tensor *a = gc_pool_add(gc_tensor_from_data(GC_F32, GC_CPU, 2, GC_SHAPE(2, 2), (float[]){1, 2, 3, 4}));
    gc_tensor *b = gc_pool_add(gc_tensor_from_data(GC_F32, GC_CPU, 2, GC_SHAPE(2, 2), (float[]){5, 6, 7, 8}));
    float out[4];
    ck_assert_int_eq(gc_tensor_to_host_f32(gc_matmul(a, b, false, false), out), GC_OK);
    ck_assert_float_eq(out[0], 19);
    ck_assert_float_eq(out[3], 50);
    ck_assert_int_eq(gc_tensor_to_host_f32(gc_matmul(a, b, true, false), out), GC_OK); /* a^T b */
    ck_assert_float_eq(out[0], 26);
    ck_assert_float_eq(out[1], 30);
    ck_assert_ptr_null(gc_matmul(a, gc_pool_add(gc_tensor_zeros(GC_F32, GC_CPU, 2, GC_SHAPE(3, 2))), false, false));
    ck_assert_int_eq(gc_error_code(), GC_ERR_SHAPE);
    gc_pool_pop(p);
}
END_TEST

static gc_tensor *f_linear(gc_tensor *const *in, void *ctx)
{
    (void)ctx;
    return gc_linear(in[0], in[1], in[2]);
}

START_TEST(test_linear_grad)
{
    gc_tensor *x = gc_test_param(3, GC_SHAPE(2, 3, 5), 1, 1.0);
    gc_tensor *w = gc_test_param(2, GC_SHAPE(4, 5), 2, 0.5);
    gc_tensor *b = gc_test_param(1, GC_SHAPE(4), 3, 0.5);
    gc_tensor *in[3] = {x, w, b};
    GC_ASSERT_GRADCHECK(f_linear, NULL, 3, in, NULL);
    in[2] = NULL; /* no bias */
    GC_ASSERT_GRADCHECK(f_linear, NULL, 3, in, NULL);
    gc_tensor_release(x);
    gc_tensor_release(w);
    gc_tensor_release(b);
}
END_TEST

static gc_tensor *f_linear_act(gc_tensor *const *in, void *ctx)
{
    return gc_linear_act(in[0], *(gc_act *)ctx, in[1], in[2]);
}

/* linear(act(x)) keeping only x: same values and gradients as the two ops composed */
START_TEST(test_linear_act_grad)
{
    gc_tensor *x = gc_test_param(3, GC_SHAPE(2, 3, 5), 1, 1.0);
    gc_tensor *w = gc_test_param(2, GC_SHAPE(4, 5), 2, 0.5);
    gc_tensor *b = gc_test_param(1, GC_SHAPE(4), 3, 0.5);
    gc_tensor *in[3] = {x, w, b};
    gc_act acts[2] = {GC_ACT_GELU_ERF, GC_ACT_QUICK_GELU};
    for (int i = 0; i < 2; i++) GC_ASSERT_GRADCHECK(f_linear_act, &acts[i], 3, in, NULL);
    /* the tape keeps x, not act(x) */
    gc_tape *t = gc_tape_init();
    gc_tape_begin(t);
    gc_pool *p = gc_pool_push();
    gc_tensor *y = gc_linear_act(x, GC_ACT_GELU_ERF, w, b);
    gc_tape_end(t);
    ck_assert_ptr_nonnull(y);
    ck_assert_uint_le(gc_tape_saved_bytes(t), gc_tensor_nbytes(x) + gc_tensor_nbytes(w));
    float ref[24], got[24];
    gc_tensor_to_host_f32(gc_linear(gc_activation(x, GC_ACT_GELU_ERF), w, b), ref);
    gc_tensor_to_host_f32(y, got);
    for (int k = 0; k < 24; k++) ck_assert_float_eq_tol(got[k], ref[k], 1e-6);
    gc_pool_pop(p);
    gc_tape_free(t);
    gc_tensor_release(x);
    gc_tensor_release(w);
    gc_tensor_release(b);
}
END_TEST

/* ctx: {act, scale?, residual?}; in: x, w1, b1, w2, b2, s, r. The MLP as the blocks run it:
 * gc_linear_and_act, whose activation pass takes fc1's bias (*xb), then gc_linear_act_given */
static gc_tensor *f_mlp(gc_tensor *const *in, void *ctx)
{
    const int *c = ctx;
    gc_tensor *a = NULL, *xb = NULL;
    gc_tensor *h = gc_linear_and_act(in[0], in[1], in[2], (gc_act)c[0], &a, &xb);
    if (h && xb != in[2]) return NULL; /* the CPU's GEMM has no activation epilogue: the pass takes the bias */
    return gc_linear_act_given(h, a, (gc_act)c[0], in[3], in[4], c[1] ? in[5] : NULL, c[2] ? gc_scale(in[6], 1.5) : NULL, xb);
}

/* The MLP's gradients, fc1's bias made by the activation's backward (with and without a
 * layer scale and residual, recomputing the activation or keeping it), its values those
 * of the ops composed; and the backward that writes act(x + b) over x where only its node
 * holds x gives the same bits as the one that makes it in a buffer of its own. */
START_TEST(test_mlp_act_bias_grad)
{
    gc_tensor *in[7] = {
        gc_test_param(3, GC_SHAPE(2, 3, 5), 1, 1.0), gc_test_param(2, GC_SHAPE(6, 5), 2, 0.5),
        gc_test_param(1, GC_SHAPE(6), 3, 0.5),       gc_test_param(2, GC_SHAPE(4, 6), 4, 0.5),
        gc_test_param(1, GC_SHAPE(4), 5, 0.5),       gc_test_param(1, GC_SHAPE(4), 6, 0.5),
        gc_test_param(3, GC_SHAPE(2, 3, 4), 7, 1.0),
    };
    const int cases[][3] = {{GC_ACT_QUICK_GELU, 0, 0}, {GC_ACT_GELU_ERF, 0, 1}, {GC_ACT_QUICK_GELU, 1, 1}, {GC_ACT_SILU, 1, 0}};
    for (int keep = 0; keep < 2; keep++) {
        bool prev = gc_recompute_set_enabled(!keep);
        for (int i = 0; i < 4; i++) GC_ASSERT_GRADCHECK(f_mlp, (void *)cases[i], 7, in, NULL);
        gc_recompute_set_enabled(prev);
    }
    gc_pool *p = gc_pool_push();
    float ref[24], got[24];
    gc_tensor_to_host_f32(gc_linear(gc_activation(gc_linear(in[0], in[1], in[2]), GC_ACT_QUICK_GELU), in[3], in[4]), ref);
    gc_tensor_to_host_f32(f_mlp(in, (void *)cases[0]), got);
    for (int k = 0; k < 24; k++) ck_assert_float_eq_tol(got[k], ref[k], 1e-6);
    gc_pool_pop(p);

    /* backward after the forward's pool is gone (only the node holds fc1's output), against
     * the same with fc1's output held elsewhere too */
    float grads[2][5][64];
    for (int j = 0; j < 5; j++) ck_assert_int_eq(gc_tensor_zero_grad(in[j]), GC_OK);
    for (int hold = 0; hold < 2; hold++) {
        gc_tape *t = gc_tape_init();
        gc_tape_begin(t);
        p = gc_pool_push();
        gc_tensor *a = NULL, *xb = NULL;
        gc_tensor *h = gc_linear_and_act(in[0], in[1], in[2], GC_ACT_QUICK_GELU, &a, &xb);
        gc_tensor *y = gc_tensor_retain(gc_linear_act_given(h, a, GC_ACT_QUICK_GELU, in[3], in[4], NULL, NULL, xb));
        if (hold) gc_tensor_retain(h);
        gc_pool_pop(p);
        gc_tape_end(t);
        gc_tensor *seed = gc_test_uniform(3, GC_SHAPE(2, 3, 4), 8, -1.0, 1.0);
        ck_assert_int_eq(gc_backward(t, 1, &y, &seed), GC_OK);
        for (int j = 0; j < 5; j++) {
            ck_assert_int_le(gc_tensor_numel(in[j]), 64);
            gc_tensor_to_host_f32(gc_tensor_grad(in[j]), grads[hold][j]);
            ck_assert_int_eq(gc_tensor_zero_grad(in[j]), GC_OK);
        }
        if (hold) gc_tensor_release(h);
        gc_tensor_release(seed);
        gc_tensor_release(y);
        gc_tape_free(t);
    }
    for (int j = 0; j < 5; j++)
        for (int64_t k = 0; k < gc_tensor_numel(in[j]); k++) ck_assert_float_eq(grads[0][j][k], grads[1][j][k]);
    /* an activation bias that does not fit fc2's input is an error that names it */
    p = gc_pool_push();
    gc_tensor *a = NULL, *xb = NULL, *bad = gc_pool_add(gc_test_param(1, GC_SHAPE(5), 9, 0.5));
    gc_tensor *h = gc_linear_and_act(in[0], in[1], in[2], GC_ACT_QUICK_GELU, &a, &xb);
    gc_tensor_set_name(bad, "fc1.bias?");
    gc_error_clear();
    ck_assert_ptr_null(gc_linear_act_given(h, a, GC_ACT_QUICK_GELU, in[3], in[4], NULL, NULL, bad));
    ck_assert_msg(strstr(gc_error_message(), "activation bias") && strstr(gc_error_message(), "fc1.bias?"), "%s",
                  gc_error_message());
    gc_error_clear();
    ck_assert_ptr_null(gc_linear_and_act(in[0], in[1], in[2], GC_ACT_QUICK_GELU, &a, NULL));
    ck_assert_ptr_nonnull(strstr(gc_error_message(), "NULL result pointer"));
    gc_error_clear();
    gc_pool_pop(p);
    for (int j = 0; j < 7; j++) gc_tensor_release(in[j]);
}
END_TEST

static gc_tensor *f_linear_res(gc_tensor *const *in, void *ctx)
{
    /* ctx: act, or -1 for a plain linear; the residual is in[3] * 1.5 (a gradient of its own) */
    int act = *(const int *)ctx;
    gc_tensor *res = gc_scale(in[3], 1.5);
    return act < 0 ? gc_linear_res(in[0], in[1], in[2], res) : gc_linear_act_res(in[0], (gc_act)act, in[1], in[2], res);
}

/* the residual added as the GEMM's C input: the gradients of the composition, the same
 * values as the add, and a residual of another shape is an error that names it */
START_TEST(test_linear_res_grad)
{
    gc_tensor *x = gc_test_param(3, GC_SHAPE(2, 3, 5), 1, 1.0);
    gc_tensor *w = gc_test_param(2, GC_SHAPE(4, 5), 2, 0.5);
    gc_tensor *b = gc_test_param(1, GC_SHAPE(4), 3, 0.5);
    gc_tensor *r = gc_test_param(3, GC_SHAPE(2, 3, 4), 4, 1.0);
    gc_tensor *in[4] = {x, w, b, r};
    int kinds[3] = {-1, GC_ACT_GELU_ERF, GC_ACT_QUICK_GELU};
    for (int i = 0; i < 3; i++) GC_ASSERT_GRADCHECK(f_linear_res, &kinds[i], 4, in, NULL);
    in[2] = NULL;
    GC_ASSERT_GRADCHECK(f_linear_res, &kinds[0], 4, in, NULL);
    gc_pool *p = gc_pool_push();
    float ref[24], got[24];
    gc_tensor_to_host_f32(gc_add(r, gc_linear(gc_activation(x, GC_ACT_QUICK_GELU), w, b)), ref);
    gc_tensor_to_host_f32(gc_linear_act_res(x, GC_ACT_QUICK_GELU, w, b, r), got);
    for (int k = 0; k < 24; k++) ck_assert_float_eq_tol(got[k], ref[k], 1e-6);
    gc_tensor_to_host_f32(gc_add(r, gc_linear(x, w, b)), ref);
    gc_tensor_to_host_f32(gc_linear_res(x, w, b, r), got);
    for (int k = 0; k < 24; k++) ck_assert_float_eq_tol(got[k], ref[k], 1e-6);
    gc_tensor *bad = gc_pool_add(gc_test_param(3, GC_SHAPE(2, 3, 5), 5, 1.0));
    gc_error_clear(); /* the gradient check of a NULL input leaves an error */
    ck_assert_ptr_null(gc_linear_res(x, w, b, bad));
    ck_assert_msg(strstr(gc_error_message(), "residual") != NULL, "%s", gc_error_message());
    gc_error_clear();
    ck_assert_ptr_null(gc_linear_act_res(x, GC_ACT_GELU_ERF, w, b, bad));
    ck_assert_ptr_nonnull(strstr(gc_error_message(), "residual"));
    gc_pool_pop(p);
    gc_tensor_release(x);
    gc_tensor_release(w);
    gc_tensor_release(b);
    gc_tensor_release(r);
}
END_TEST

/* ctx: {act or -1 (plain linear), residual?, twice?}; in: x, w, b, s, r. twice: the same
 * w, b, s in a second call on 0.5 x, so their gradients accumulate (+=) */
static gc_tensor *f_linear_scaled(gc_tensor *const *in, void *ctx)
{
    const int *c = ctx;
    gc_tensor *y = NULL;
    for (int k = 0; k < (c[2] ? 2 : 1); k++) {
        gc_tensor *x = k ? gc_scale(in[0], 0.5) : in[0], *res = c[1] ? gc_scale(in[4], 1.5) : NULL;
        gc_tensor *t = c[0] < 0 ? gc_linear_scaled(x, in[1], in[2], in[3], res)
                                : gc_linear_act_scaled(x, (gc_act)c[0], in[1], in[2], in[3], res);
        y = k ? gc_add(y, t) : t;
    }
    return y;
}

/* a layer scale folded into the weights: the gradients of the composition (x, w, b, the
 * scale, the residual; used twice: accumulated; frozen weights or scale), the values of
 * (linear(..) * s + r), and a scale of another size is an error that names it */
START_TEST(test_linear_scaled_grad)
{
    gc_tensor *x = gc_test_param(3, GC_SHAPE(2, 3, 5), 1, 1.0);
    gc_tensor *w = gc_test_param(2, GC_SHAPE(4, 5), 2, 0.5);
    gc_tensor *b = gc_test_param(1, GC_SHAPE(4), 3, 0.5);
    gc_tensor *s = gc_test_param(1, GC_SHAPE(4), 4, 1.0);
    gc_tensor *r = gc_test_param(3, GC_SHAPE(2, 3, 4), 5, 1.0);
    gc_tensor *wf = gc_test_randn(2, GC_SHAPE(4, 5), 2, 0.5), *sf = gc_test_randn(1, GC_SHAPE(4), 4, 1.0);
    int kinds[3] = {-1, GC_ACT_GELU_ERF, GC_ACT_QUICK_GELU};
    for (int i = 0; i < 3; i++)
        for (int res = 0; res < 2; res++)
            for (int twice = 0; twice < 2; twice++) {
                int c[3] = {kinds[i], res, twice};
                gc_tensor *in[5] = {x, w, b, s, r};
                GC_ASSERT_GRADCHECK(f_linear_scaled, c, 5, in, NULL);
                in[2] = NULL; /* no bias */
                GC_ASSERT_GRADCHECK(f_linear_scaled, c, 5, in, NULL);
                gc_tensor *frozen_w[5] = {x, wf, b, s, r}, *frozen_s[5] = {x, w, b, sf, r};
                GC_ASSERT_GRADCHECK(f_linear_scaled, c, 5, frozen_w, NULL);
                GC_ASSERT_GRADCHECK(f_linear_scaled, c, 5, frozen_s, NULL);
            }
    gc_pool *p = gc_pool_push();
    float ref[24], got[24];
    gc_tensor_to_host_f32(gc_add(r, gc_mul(gc_linear(gc_activation(x, GC_ACT_QUICK_GELU), w, b), s)), ref);
    gc_tensor_to_host_f32(gc_linear_act_scaled(x, GC_ACT_QUICK_GELU, w, b, s, r), got);
    for (int k = 0; k < 24; k++) ck_assert_float_eq_tol(got[k], ref[k], 1e-6);
    gc_tensor_to_host_f32(gc_mul(gc_linear(x, w, b), s), ref);
    gc_tensor_to_host_f32(gc_linear_scaled(x, w, b, s, NULL), got);
    for (int k = 0; k < 24; k++) ck_assert_float_eq_tol(got[k], ref[k], 1e-6);
    gc_tensor *bad = gc_pool_add(gc_test_param(1, GC_SHAPE(5), 6, 1.0));
    gc_error_clear(); /* the gradient check of a NULL input leaves an error */
    ck_assert_ptr_null(gc_linear_scaled(x, w, b, bad, NULL));
    ck_assert_msg(strstr(gc_error_message(), "layer scale") != NULL, "%s", gc_error_message());
    gc_error_clear();
    ck_assert_ptr_null(gc_linear_act_scaled(x, GC_ACT_GELU_ERF, w, b, bad, r));
    ck_assert_msg(strstr(gc_error_message(), "layer scale") != NULL, "%s", gc_error_message());
    gc_error_clear();
    ck_assert_ptr_null(gc_linear_scaled(x, w, b, NULL, NULL));
    ck_assert_msg(strstr(gc_error_message(), "NULL layer scale") != NULL, "%s", gc_error_message());
    gc_error_clear();
    gc_pool_pop(p);
    gc_tensor *all[7] = {x, w, b, s, r, wf, sf};
    for (int k = 0; k < 7; k++) gc_tensor_release(all[k]);
}
END_TEST

/* permute -> slice -> view -> concat -> contiguous -> matmul: every view's backward */
static gc_tensor *f_views(gc_tensor *const *in, void *ctx)
{
    (void)ctx;
    gc_tensor *t = gc_permute(in[0], (const int[]){2, 0, 1});      /* [4,2,3] */
    gc_tensor *s = gc_slice(t, 2, 1, 3);                            /* [4,2,2] */
    gc_tensor *v = gc_view(s, 2, GC_SHAPE(4, 4));                   /* copies: s is strided */
    gc_tensor *r = gc_rows(in[1], 1, 3);                            /* [2,4] */
    gc_tensor *c = gc_concat(2, (gc_tensor *[]){v, r}, 0);          /* [6,4] */
    gc_tensor *tt = gc_transpose(c, 0, 1);                          /* [4,6] */
    return gc_matmul(gc_contiguous(tt), in[2], false, false);       /* [4,3] */
}

START_TEST(test_view_grads)
{
    gc_tensor *a = gc_test_param(3, GC_SHAPE(2, 3, 4), 5, 1.0);
    gc_tensor *b = gc_test_param(2, GC_SHAPE(3, 4), 6, 1.0);
    gc_tensor *c = gc_test_param(2, GC_SHAPE(6, 3), 7, 1.0);
    gc_tensor *in[3] = {a, b, c};
    GC_ASSERT_GRADCHECK(f_views, NULL, 3, in, NULL);
    gc_tensor_release(a);
    gc_tensor_release(b);
    gc_tensor_release(c);
}
END_TEST

/* Slices of one linear output, their gradients written into its gradient in place
 * (gc_grad_target_view): disjoint column slices (columns 2 and 7 in none: zeroed), one
 * overlapping them and one along the other dim (buffers of their own, added in after),
 * a slice of a slice, and the output read whole too. Under GC_HOST_POISON an unzeroed
 * gap is NaN. */
static gc_tensor *f_regions(gc_tensor *const *in, void *ctx)
{
    const int *order = ctx;
    gc_tensor *y = gc_linear(in[0], in[1], in[2]); /* [5, 8] */
    gc_tensor *sl[6] = {
        gc_slice(y, 1, 0, 2), gc_slice(y, 1, 3, 5), gc_slice(y, 1, 5, 7), /* disjoint */
        gc_slice(y, 1, 1, 4),                                             /* overlaps the first two */
        gc_slice(y, 0, 2, 3),                                             /* a row: the other dim */
        NULL,
    };
    sl[5] = gc_slice(sl[2], 0, 2, 4); /* rows of a slice */
    gc_tensor *parts[7];
    for (int i = 0; i < 6; i++) { /* consumers in the given order: the tape runs them last to first */
        gc_tensor *c = gc_concat(1, &sl[order[i]], 0); /* a copy: its backward writes the region */
        parts[i] = gc_view(gc_mul(c, c), 1, GC_SHAPE(-1));
    }
    parts[6] = gc_view(order[6] == 1 ? y : sl[order[6] ? 4 : 0], 1, GC_SHAPE(-1)); /* the first to run */
    return gc_concat(2, (gc_tensor *[]){gc_concat(4, parts, 0), gc_concat(3, parts + 4, 0)}, 0);
}

START_TEST(test_slice_regions)
{
    gc_host_poison_set(true);
    const int orders[4][7] = {{0, 1, 2, 3, 4, 5, 1}, {5, 4, 3, 2, 1, 0, 0}, {3, 0, 5, 2, 4, 1, 1}, {0, 1, 2, 3, 5, 4, 2}};
    for (int k = 0; k < 4; k++) {
        gc_tensor *x = gc_test_param(2, GC_SHAPE(5, 3), 11, 1.0);
        gc_tensor *w = gc_test_param(2, GC_SHAPE(8, 3), 12, 1.0), *b = gc_test_param(1, GC_SHAPE(8), 13, 1.0);
        gc_tensor *in[3] = {x, w, b};
        GC_ASSERT_GRADCHECK(f_regions, (void *)orders[k], 3, in, NULL);
        gc_tensor_release(x), gc_tensor_release(w), gc_tensor_release(b);
    }
    /* a slice of a leaf keeps a buffer of its own (the leaf's gradient stays whole) */
    gc_pool *p = gc_pool_push();
    gc_tensor *w = gc_pool_add(gc_test_param(2, GC_SHAPE(4, 2), 14, 1.0));
    gc_tape *t = gc_tape_init();
    gc_tape_begin(t);
    gc_tensor *y = gc_concat(2, (gc_tensor *[]){gc_contiguous(gc_slice(w, 0, 0, 1)), gc_contiguous(gc_slice(w, 0, 2, 3))}, 0);
    gc_tape_end(t);
    gc_tensor *g = gc_pool_add(gc_tensor_from_data(GC_F32, GC_CPU, 2, GC_SHAPE(2, 2), (float[]){1, 2, 3, 4}));
    ck_assert_int_eq(gc_backward(t, 1, &y, &g), GC_OK);
    gc_tape_free(t);
    float gw[8];
    gc_tensor_to_host_f32(gc_tensor_grad(w), gw);
    const float want[8] = {1, 2, 0, 0, 3, 4, 0, 0};
    for (int i = 0; i < 8; i++) ck_assert_float_eq(gw[i], want[i]);
    gc_pool_pop(p);
    gc_host_poison_set(false);
}
END_TEST

/* y = sum-like output through a linear; seed gradient supplied. */
START_TEST(test_accumulate_seed_frozen_detach)
{
    gc_pool *p = gc_pool_push();
    gc_tensor *w = gc_pool_add(gc_test_param(2, GC_SHAPE(3, 4), 1, 1.0));
    gc_tensor *frozen = gc_pool_add(gc_test_randn(2, GC_SHAPE(3, 3), 2, 1.0));
    gc_tensor *x = gc_pool_add(gc_test_randn(2, GC_SHAPE(2, 4), 3, 1.0));
    gc_tensor *g = gc_pool_add(gc_test_randn(2, GC_SHAPE(2, 3), 4, 1.0));
    float g1[12], g2[12];
    for (int rep = 0; rep < 2; rep++) {
        gc_tape *t = gc_tape_init();
        gc_tape_begin(t);
        gc_tensor *y = gc_linear(x, w, NULL);
        gc_tensor *z = gc_linear(y, frozen, NULL);             /* frozen: no grad buffer */
        ck_assert_ptr_null(gc_tensor_grad(frozen));
        gc_tensor *d = gc_detach(z);
        ck_assert(!gc_tensor_needs_grad(d));
        gc_tape_end(t);
        ck_assert_int_eq(gc_tape_size(t), 2);
        ck_assert_int_eq(gc_backward(t, 1, &z, &g), GC_OK);
        ck_assert_int_eq(gc_tape_size(t), 0);
        gc_tape_free(t);
        gc_tensor_to_host_f32(gc_tensor_grad(w), rep ? g2 : g1);
    }
    for (int i = 0; i < 12; i++) ck_assert_float_eq_tol(g2[i], 2 * g1[i], 1e-5); /* += */
    ck_assert_int_eq(gc_tensor_zero_grad(w), GC_OK);
    gc_tensor_to_host_f32(gc_tensor_grad(w), g1);
    for (int i = 0; i < 12; i++) ck_assert_float_eq(g1[i], 0);
    /* no-grad scope records nothing */
    gc_tape *t = gc_tape_init();
    gc_tape_begin(t);
    bool prev = gc_grad_set_enabled(false);
    gc_tensor *y = gc_linear(x, w, NULL);
    gc_grad_set_enabled(prev);
    gc_tape_end(t);
    ck_assert_int_eq(gc_tape_size(t), 0);
    ck_assert(!gc_tensor_needs_grad(y));
    ck_assert_int_eq(gc_backward(t, 1, &y, &g), GC_ERR_STATE); /* names the problem */
    ck_assert_ptr_nonnull(strstr(gc_error_message(), "does not depend"));
    gc_tape_free(t);
    gc_pool_pop(p);
}
END_TEST

START_TEST(test_saved_tensors_released)
{
    gc_tensor *w1 = gc_test_param(2, GC_SHAPE(64, 64), 1, 0.1), *w2 = gc_test_param(2, GC_SHAPE(64, 64), 2, 0.1);
    gc_tensor *x = gc_test_randn(2, GC_SHAPE(128, 64), 3, 1.0);
    size_t base = gc_memory_stats_get(GC_CPU).current;
    gc_tape *t = gc_tape_init();
    gc_tape_begin(t);
    gc_pool *p = gc_pool_push();
    gc_tensor *h = x;
    for (int i = 0; i < 8; i++) h = gc_linear(h, i % 2 ? w2 : w1, NULL);
    gc_tensor *y = gc_pool_keep(h);
    gc_pool_pop(p); /* intermediates now live only through the tape */
    gc_tape_end(t);
    ck_assert_uint_gt(gc_tape_saved_bytes(t), 7 * 128 * 64 * 4);
    ck_assert_uint_gt(gc_memory_stats_get(GC_CPU).current, base + 7 * 128 * 64 * 4);
    gc_tensor *g = gc_test_randn(2, GC_SHAPE(128, 64), 4, 1.0);
    ck_assert_int_eq(gc_backward(t, 1, &y, &g), GC_OK);
    ck_assert_uint_eq(gc_tape_saved_bytes(t), 0);
    gc_tape_free(t);
    gc_tensor_release(g);
    /* only y (kept by the root pool) remains beyond the baseline */
    ck_assert_uint_eq(gc_memory_stats_get(GC_CPU).current, base + 128 * 64 * 4);
    gc_tensor_release(w1);
    gc_tensor_release(w2);
    gc_tensor_release(x);
}
END_TEST

/* Recompute: gradients through gc_checkpoint equal those without it. */
static gc_tensor *block(gc_tensor *x, void *closure)
{
    gc_tensor **w = closure;
    return gc_linear(gc_linear(x, w[0], w[1]), w[2], NULL);
}

START_TEST(test_checkpoint_matches)
{
    gc_tensor *w[3] = {gc_test_param(2, GC_SHAPE(6, 5), 1, 0.5), gc_test_param(1, GC_SHAPE(6), 2, 0.5),
                       gc_test_param(2, GC_SHAPE(5, 6), 3, 0.5)};
    gc_tensor *x = gc_test_param(2, GC_SHAPE(4, 5), 4, 1.0);
    gc_tensor *g = gc_test_randn(2, GC_SHAPE(4, 5), 5, 1.0);
    float ref[4][36], got[4][36];
    for (int mode = 0; mode < 2; mode++) {
        for (int i = 0; i < 3; i++) gc_tensor_zero_grad(w[i]);
        gc_tensor_zero_grad(x);
        gc_tape *t = gc_tape_init();
        gc_tape_begin(t);
        gc_pool *p = gc_pool_push();
        gc_tensor *y = mode ? gc_checkpoint(block, w, gc_checkpoint(block, w, x)) : block(block(x, w), w);
        gc_tape_end(t);
        if (mode) ck_assert_int_eq(gc_tape_size(t), 2); /* only the two block nodes */
        ck_assert_int_eq(gc_backward(t, 1, &y, &g), GC_OK);
        gc_pool_pop(p);
        gc_tape_free(t);
        for (int i = 0; i < 3; i++) gc_tensor_to_host_f32(gc_tensor_grad(w[i]), mode ? got[i] : ref[i]);
        gc_tensor_to_host_f32(gc_tensor_grad(x), mode ? got[3] : ref[3]);
    }
    int sizes[4] = {30, 6, 30, 20};
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < sizes[i]; j++) ck_assert_float_eq_tol(got[i][j], ref[i][j], 1e-5);
    for (int i = 0; i < 3; i++) gc_tensor_release(w[i]);
    gc_tensor_release(x);
    gc_tensor_release(g);
}
END_TEST

/* gc_checkpoint_owned: the node owns the closure (freed once, with the node, after its
 * backward re-ran the block or when the tape is dropped); with no node recorded it is
 * freed before the call returns. */
typedef struct owned_closure {
    gc_tensor **w;
    int *freed;
} owned_closure;

static gc_tensor *owned_block(gc_tensor *x, void *closure) { return block(x, ((owned_closure *)closure)->w); }

static void owned_free(void *closure)
{
    owned_closure *c = closure;
    (*c->freed)++;
    free(c);
}

static owned_closure *owned_new(gc_tensor **w, int *freed)
{
    owned_closure *c = malloc(sizeof *c);
    ck_assert_ptr_nonnull(c);
    *c = (owned_closure){w, freed};
    return c;
}

START_TEST(test_checkpoint_owned)
{
    gc_tensor *w[3] = {gc_test_param(2, GC_SHAPE(6, 5), 1, 0.5), gc_test_param(1, GC_SHAPE(6), 2, 0.5),
                       gc_test_param(2, GC_SHAPE(5, 6), 3, 0.5)};
    gc_tensor *x = gc_test_param(2, GC_SHAPE(4, 5), 4, 1.0);
    gc_tensor *g = gc_test_randn(2, GC_SHAPE(4, 5), 5, 1.0);
    float ref[30], got[30];
    int freed = 0;
    for (int mode = 0; mode < 3; mode++) { /* the plain block, checkpointed with backward, dropped without */
        gc_tensor_zero_grad(w[0]);
        int before = freed;
        gc_tape *t = gc_tape_init();
        gc_tape_begin(t);
        gc_pool *p = gc_pool_push();
        gc_tensor *y = mode ? gc_checkpoint_owned(owned_block, owned_new(w, &freed), owned_free, x) : block(x, w);
        gc_tape_end(t);
        ck_assert_ptr_nonnull(y);
        ck_assert_int_eq(freed, before); /* the node holds it */
        if (mode < 2) ck_assert_int_eq(gc_backward(t, 1, &y, &g), GC_OK);
        gc_pool_pop(p);
        gc_tape_free(t);
        ck_assert_int_eq(freed, before + (mode > 0));
        if (mode < 2) gc_tensor_to_host_f32(gc_tensor_grad(w[0]), mode ? got : ref);
    }
    for (int j = 0; j < 30; j++) ck_assert_float_eq_tol(got[j], ref[j], 1e-5);
    /* no tape, and a failed input: no node, the closure freed at once */
    gc_pool *p = gc_pool_push();
    ck_assert_ptr_nonnull(gc_checkpoint_owned(owned_block, owned_new(w, &freed), owned_free, x));
    ck_assert_int_eq(freed, 3);
    ck_assert_ptr_null(gc_checkpoint_owned(owned_block, owned_new(w, &freed), owned_free, NULL));
    ck_assert_int_eq(freed, 4);
    gc_pool_pop(p);
    for (int i = 0; i < 3; i++) gc_tensor_release(w[i]);
    gc_tensor_release(x);
    gc_tensor_release(g);
}
END_TEST

/* ---------------------------------------------------------------- recomputed op results */

/* A pass-through op whose backward notes whether the watched storage (NULL: none) holds data then. */
static struct { const gc_storage *s; int n; bool held[8]; } probe_log;

static gc_status probe_backward(gc_node *nd, gc_tensor *gy)
{
    if (probe_log.n < 8) probe_log.held[probe_log.n++] = !probe_log.s || probe_log.s->data != NULL;
    return gc_grad_accumulate(nd, 0, gy);
}

static gc_tensor *probe(gc_tensor *x)
{
    gc_tensor *y = gc_pool_add(gc_tensor_to(x, x->device, x->dtype));
    gc_autograd_record("probe", probe_backward, y, 1, &x, 0, NULL);
    return y;
}

/* h = layernorm(x) feeds two linears (each saves h itself: h is 2-D). escape: 0 hand h
 * over; 1 keep a second reference; 2 keep a view of it; 3 recompute off. Returns
 * whether h's storage was freed; grads[0..3] get x's, w1's, w2's and the norm weight's. */
static bool ln_two_linears(int escape, float grads[4][40], size_t *saved_drop, size_t *mem_drop)
{
    gc_tensor *x = gc_test_param(2, GC_SHAPE(5, 8), 11, 1.0), *lw = gc_test_param(1, GC_SHAPE(8), 12, 1.0);
    gc_tensor *lb = gc_test_param(1, GC_SHAPE(8), 13, 1.0), *w1 = gc_test_param(2, GC_SHAPE(3, 8), 14, 0.5);
    gc_tensor *w2 = gc_test_param(2, GC_SHAPE(3, 8), 15, 0.5);
    gc_tensor *gu = gc_test_randn(2, GC_SHAPE(5, 8), 16, 1.0), *g1 = gc_test_randn(2, GC_SHAPE(5, 3), 17, 1.0);
    gc_tensor *g2 = gc_test_randn(2, GC_SHAPE(5, 3), 18, 1.0);
    bool prev = gc_recompute_set_enabled(escape != 3);
    gc_tape *t = gc_tape_init();
    gc_tape_begin(t);
    gc_pool *outer = gc_pool_push(), *p = gc_pool_push();
    gc_tensor *h = gc_layernorm(x, lw, lb, 1e-5);
    gc_tensor *u = gc_pool_keep(probe(x));                        /* backward: after both linears */
    gc_tensor *y1 = gc_pool_keep(probe(gc_linear(h, w1, NULL)));  /* between them */
    gc_tensor *y2 = gc_pool_keep(probe(gc_linear(h, w2, NULL)));  /* before them */
    gc_tensor *hold = escape == 1 ? gc_pool_keep(h) : escape == 2 ? gc_pool_keep(gc_rows(h, 1, 3)) : NULL;
    gc_tensor *mine = gc_tensor_retain(h);
    gc_pool_pop(p);
    size_t saved0 = gc_tape_saved_bytes(t), mem0 = gc_memory_stats_get(GC_CPU).current;
    gc_storage *hs = mine->storage;
    bool freed = gc_recompute_release(mine);
    probe_log.s = freed ? hs : NULL; /* kept: the storage dies with its last consumer, unwatched */
    probe_log.n = 0;
    *saved_drop = saved0 - gc_tape_saved_bytes(t);
    *mem_drop = mem0 - gc_memory_stats_get(GC_CPU).current;
    (void)hold;
    gc_tape_end(t);
    ck_assert_int_eq(gc_backward(t, 3, (gc_tensor *[]){u, y1, y2}, (gc_tensor *[]){gu, g1, g2}), GC_OK);
    ck_assert_int_eq(probe_log.n, 3);
    if (freed) { /* held only while the linears' backward ran */
        ck_assert(!probe_log.held[0]);
        ck_assert(probe_log.held[1]);
        ck_assert(!probe_log.held[2]);
    }
    gc_tensor *ps[4] = {x, w1, w2, lw};
    for (int i = 0; i < 4; i++) ck_assert_int_eq(gc_tensor_to_host_f32(gc_tensor_grad(ps[i]), grads[i]), GC_OK);
    gc_tape_free(t);
    gc_pool_pop(outer);
    gc_recompute_set_enabled(prev);
    gc_tensor *all[9] = {x, lw, lb, w1, w2, gu, g1, g2, NULL};
    for (int i = 0; all[i]; i++) gc_tensor_release(all[i]);
    return freed;
}

/* gc_recompute_release frees a layernorm's output while only the tape's saved
 * references hold it, recomputes it for its consumers' backward alone, and gives the
 * same gradients bit for bit; anything else holding it keeps it. */
START_TEST(test_recompute_release)
{
    float ref[4][40] = {{0}}, got[4][40] = {{0}}; /* x's gradient has 40 elements, the others fewer */
    size_t saved_drop, mem_drop;
    const size_t h_bytes = 5 * 8 * 4;
    ck_assert(!ln_two_linears(3, ref, &saved_drop, &mem_drop)); /* off */
    ck_assert_uint_eq(saved_drop, 0);
    ck_assert_uint_eq(mem_drop, 0);
    ck_assert(ln_two_linears(0, got, &saved_drop, &mem_drop));
    ck_assert_uint_eq(saved_drop, 2 * h_bytes); /* both linears' saved h */
    ck_assert_uint_eq(mem_drop, h_bytes);       /* one storage */
    ck_assert(!memcmp(ref, got, sizeof ref));
    for (int escape = 1; escape <= 2; escape++) {
        ck_assert(!ln_two_linears(escape, got, &saved_drop, &mem_drop));
        ck_assert_uint_eq(saved_drop, 0);
        ck_assert_uint_eq(mem_drop, 0);
        ck_assert(!memcmp(ref, got, sizeof ref));
    }
    /* not the result of an op that can re-run, or no tape: just a release */
    gc_tensor *x = gc_test_param(2, GC_SHAPE(5, 8), 11, 1.0), *w = gc_test_param(2, GC_SHAPE(3, 8), 14, 0.5);
    gc_tape *t = gc_tape_init();
    gc_tape_begin(t);
    gc_pool *p = gc_pool_push();
    gc_tensor *y = gc_tensor_retain(gc_linear(x, w, NULL));
    gc_tensor *z = gc_pool_keep(gc_linear(y, w, NULL));
    gc_tensor *n = gc_tensor_retain(gc_layernorm(z, NULL, NULL, 1e-5));
    gc_pool_pop(p);
    ck_assert(!gc_recompute_release(y)); /* linear has no forward to re-run */
    ck_assert(!gc_recompute_release(n)); /* nothing saved it */
    gc_tape_end(t);
    gc_tape_free(t);
    p = gc_pool_push();
    ck_assert(!gc_recompute_release(gc_tensor_retain(gc_layernorm(x, NULL, NULL, 1e-5)))); /* no tape */
    gc_pool_pop(p);
    gc_tensor_release(x);
    gc_tensor_release(w);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("autograd");
    TCase *tc = gc_test_tcase("tape");
    tcase_add_test(tc, test_matmul_values);
    tcase_add_test(tc, test_matmul_grad);
    tcase_add_test(tc, test_linear_grad);
    tcase_add_test(tc, test_linear_act_grad);
    tcase_add_test(tc, test_linear_res_grad);
    tcase_add_test(tc, test_mlp_act_bias_grad);
    tcase_add_test(tc, test_linear_scaled_grad);
    tcase_add_test(tc, test_view_grads);
    tcase_add_test(tc, test_slice_regions);
    tcase_add_test(tc, test_accumulate_seed_frozen_detach);
    tcase_add_test(tc, test_saved_tensors_released);
    tcase_add_test(tc, test_checkpoint_matches);
    tcase_add_test(tc, test_checkpoint_owned);
    tcase_add_test(tc, test_recompute_release);
    suite_add_tcase(s, tc);
    return gc_test_run(s);
}
