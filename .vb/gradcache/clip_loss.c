/* CLIP's symmetric InfoNCE, row-blocked. Forward: per block of text rows, the logits
 * block L = s T_blk I^T gives its rows' log-sum-exp and updates a running (online)
 * log-sum-exp per column. Backward: recompute each block; its gradient is
 *   G = gy/(2B) (softmax_rows(L) + softmax_cols(L) - 2 diag),
 * then dT_blk = s G I, dI += s G^T T_blk, d logit_scale = sum(G * L). */
#include "gc_clip_loss.h"

#include <math.h>
#include <string.h>

#include "../kernels/gc_kernel_util.h"

#ifdef GC_WITH_CUDA
gc_status gc_cuda_infonce_stats(const float *L, int64_t bt, int64_t B, int64_t r0, float *row_lse, float *diag,
                                float *col_m, float *col_s, bool first);
gc_status gc_cuda_infonce_finalize(const float *row_lse, const float *diag, const float *col_m, const float *col_s,
                                   int64_t B, float *loss);
gc_status gc_cuda_infonce_grad(float *L, int64_t bt, int64_t B, int64_t r0, const float *row_lse, const float *col_m,
                               const float *col_s, const float *s, const float *gy, float *dls_part);
#endif

/* ---------------------------------------------------------------- CPU reference */

static void cpu_stats(const float *L, int64_t bt, int64_t B, int64_t r0, float *row_lse, float *diag, float *col_m,
                      float *col_s, bool first)
{
    for (int64_t t = 0; t < bt; t++) {
        const float *r = L + t * B;
        double m = -INFINITY, s = 0;
        for (int64_t i = 0; i < B; i++) m = fmax(m, r[i]);
        for (int64_t i = 0; i < B; i++) s += exp(r[i] - m);
        row_lse[r0 + t] = (float)(m + log(s));
        diag[r0 + t] = r[r0 + t];
    }
    for (int64_t i = 0; i < B; i++) {
        double m = -INFINITY, s = 0;
        for (int64_t t = 0; t < bt; t++) m = fmax(m, L[t * B + i]);
        for (int64_t t = 0; t < bt; t++) s += exp(L[t * B + i] - m);
        if (first) { col_m[i] = (float)m; col_s[i] = (float)s; continue; }
        double nm = fmax(m, col_m[i]);
        col_s[i] = (float)(col_s[i] * exp(col_m[i] - nm) + s * exp(m - nm));
        col_m[i] = (float)nm;
    }
}

static float cpu_finalize(const float *row_lse, const float *diag, const float *col_m, const float *col_s, int64_t B)
{
    double l = 0;
    for (int64_t i = 0; i < B; i++) l += (row_lse[i] - diag[i]) + (col_m[i] + log(col_s[i]) - diag[i]);
    return (float)(l / (2.0 * (double)B));
}

/* L becomes G * s in place; dls_part[r0+t] = sum_i G[t,i] L[t,i] */
static void cpu_grad(float *L, int64_t bt, int64_t B, int64_t r0, const float *row_lse, const float *col_m,
                     const float *col_s, float s, float gy, float *dls_part)
{
    double c = gy / (2.0 * (double)B);
    for (int64_t t = 0; t < bt; t++) {
        float *r = L + t * B;
        double acc = 0;
        for (int64_t i = 0; i < B; i++) {
            double col_lse = col_m[i] + log(col_s[i]);
            double g = c * (exp(r[i] - row_lse[r0 + t]) + exp(r[i] - col_lse) - (r0 + t == i ? 2.0 : 0.0));
            acc += g * r[i];
            r[i] = (float)(g * s);
        }
        dls_part[r0 + t] = (float)acc;
    }
}

/* ---------------------------------------------------------------- the op */

static gc_tensor *logits_block(gc_tensor *i_n, gc_tensor *t_n, gc_tensor *s, int64_t r0, int64_t r1)
{
    return gc_mul(gc_matmul(gc_rows(t_n, r0, r1), i_n, false, true), s); /* [bt, B] */
}

/* saved: i_n, t_n, s, row_lse, col_m, col_s. iarg[0] = block rows */
static gc_status infonce_backward(gc_node *nd, gc_tensor *gy)
{
    gc_tensor *i_n = nd->saved[0], *t_n = nd->saved[1], *s = nd->saved[2];
    gc_tensor *row_lse = nd->saved[3], *col_m = nd->saved[4], *col_s = nd->saved[5];
    int64_t B = i_n->shape[0], P = i_n->shape[1], blk = nd->iarg[0];
    gc_device dev = i_n->device;
    bool acc_i = false, acc_t = false, acc_s = false;
    gc_tensor *gi = gc_grad_target(nd, 0, &acc_i), *gt = gc_grad_target(nd, 1, &acc_t);
    gc_tensor *gs = gc_grad_target(nd, 2, &acc_s);
    gc_tensor *dls = gc_op_new(GC_F32, dev, 1, GC_SHAPE(B));
    if (!dls) return GC_PENDING();
    float s_host = 0, gy_host = 0;
    if (dev.type == GC_DEVICE_CPU) {
        s_host = *(float *)gc_tensor_data(s);
        gy_host = *(float *)gc_tensor_data(gy);
    }
    for (int64_t r0 = 0; r0 < B; r0 += blk) {
        int64_t r1 = r0 + blk < B ? r0 + blk : B, bt = r1 - r0;
        gc_pool *p = gc_pool_push();
        gc_tensor *L = logits_block(i_n, t_n, s, r0, r1);
        gc_status st = L ? GC_OK : GC_PENDING();
        if (st == GC_OK) {
            if (dev.type == GC_DEVICE_CUDA)
                st = GC_CUDA_DISPATCH(gc_cuda_infonce_grad(gc_tensor_data(L), bt, B, r0, gc_tensor_data(row_lse),
                                                           gc_tensor_data(col_m), gc_tensor_data(col_s), gc_tensor_data(s),
                                                           gc_tensor_data(gy), gc_tensor_data(dls)));
            else
                cpu_grad(gc_tensor_data(L), bt, B, r0, gc_tensor_data(row_lse), gc_tensor_data(col_m),
                         gc_tensor_data(col_s), s_host, gy_host, gc_tensor_data(dls));
        }
        if (st == GC_OK && gt) { /* rows r0..r1 of dT = (sG) I */
            gc_gemm_args g = {.m = bt, .n = P, .k = B, .a = gc_tensor_data(L), .lda = B, .b = gc_tensor_data(i_n), .ldb = P,
                              .c = (float *)gc_tensor_data(gt) + r0 * P, .ldc = P, .ab_dtype = GC_F32, .c_dtype = gt->dtype,
                              .alpha = 1.0f, .beta = acc_t ? 1.0f : 0.0f};
            st = gc_gemm(dev, &g);
        }
        if (st == GC_OK && gi) { /* dI += (sG)^T T_blk */
            gc_tensor *tb = gc_rows(t_n, r0, r1);
            gc_gemm_args g = {.trans_a = true, .m = B, .n = P, .k = bt, .a = gc_tensor_data(L), .lda = B,
                              .b = gc_tensor_data(tb), .ldb = P, .c = gc_tensor_data(gi), .ldc = P, .ab_dtype = GC_F32,
                              .c_dtype = gi->dtype, .alpha = 1.0f, .beta = (acc_i || r0 > 0) ? 1.0f : 0.0f};
            st = gc_gemm(dev, &g);
        }
        gc_pool_pop(p);
        GC_TRY(st);
    }
    if (gs) {
        gc_tensor *sum = gc_sum(dls);
        if (!sum) return GC_PENDING();
        GC_TRY(gc_tensor_copy_into(gs, gc_view(sum, gs->ndim, gs->shape), acc_s));
    }
    return GC_OK;
}

gc_tensor *gc_infonce(gc_tensor *i_n, gc_tensor *t_n, gc_tensor *logit_scale, int64_t blk)
{
    if (!i_n || !t_n || !logit_scale) return NULL;
    gc_tensor *ins[3] = {i_n, t_n, logit_scale};
    if (!gc_check_same_device("clip loss", 3, ins)) return NULL;
    if (i_n->dtype != GC_F32 || t_n->dtype != GC_F32 || logit_scale->dtype != GC_F32) {
        gc_error_set(GC_ERR_DTYPE, "clip loss: embeddings and logit_scale must be f32 (the loss runs in f32)");
        return NULL;
    }
    if (i_n->ndim != 2 || !gc_shape_eq(i_n, t_n) || gc_tensor_numel(logit_scale) != 1) {
        char a[GC_SHAPE_STR_LEN], b[GC_SHAPE_STR_LEN];
        gc_error_set(GC_ERR_SHAPE, "clip loss: image embeddings %s and text embeddings %s must both be [B, P]",
                     gc_shape_str(i_n, a, sizeof a), gc_shape_str(t_n, b, sizeof b));
        return NULL;
    }
    int64_t B = i_n->shape[0];
    if (blk <= 0) blk = 4096;
    if (blk > B) blk = B;
    gc_device dev = i_n->device;
    gc_tensor *ic = gc_contiguous_raw(i_n), *tc = gc_contiguous_raw(t_n);
    bool prev = gc_grad_set_enabled(false); /* the statistics need no graph: this op is its own node */
    gc_tensor *s = gc_exp(gc_detach(logit_scale));
    gc_tensor *row_lse = gc_op_new(GC_F32, dev, 1, GC_SHAPE(B)), *diag = gc_op_new(GC_F32, dev, 1, GC_SHAPE(B));
    gc_tensor *col_m = gc_op_new(GC_F32, dev, 1, GC_SHAPE(B)), *col_s = gc_op_new(GC_F32, dev, 1, GC_SHAPE(B));
    gc_tensor *loss = gc_op_new(GC_F32, dev, 0, NULL);
    gc_status st = ic && tc && s && row_lse && diag && col_m && col_s && loss ? GC_OK : GC_PENDING();
    for (int64_t r0 = 0; r0 < B && st == GC_OK; r0 += blk) {
        int64_t r1 = r0 + blk < B ? r0 + blk : B;
        gc_pool *p = gc_pool_push();
        gc_tensor *L = logits_block(ic, tc, s, r0, r1);
        if (!L) st = GC_PENDING();
        else if (dev.type == GC_DEVICE_CUDA)
            st = GC_CUDA_DISPATCH(gc_cuda_infonce_stats(gc_tensor_data(L), r1 - r0, B, r0, gc_tensor_data(row_lse),
                                                        gc_tensor_data(diag), gc_tensor_data(col_m), gc_tensor_data(col_s),
                                                        r0 == 0));
        else
            cpu_stats(gc_tensor_data(L), r1 - r0, B, r0, gc_tensor_data(row_lse), gc_tensor_data(diag),
                      gc_tensor_data(col_m), gc_tensor_data(col_s), r0 == 0);
        gc_pool_pop(p);
    }
    if (st == GC_OK) {
        if (dev.type == GC_DEVICE_CUDA)
            st = GC_CUDA_DISPATCH(gc_cuda_infonce_finalize(gc_tensor_data(row_lse), gc_tensor_data(diag),
                                                           gc_tensor_data(col_m), gc_tensor_data(col_s), B,
                                                           gc_tensor_data(loss)));
        else
            *(float *)gc_tensor_data(loss) = cpu_finalize(gc_tensor_data(row_lse), gc_tensor_data(diag),
                                                          gc_tensor_data(col_m), gc_tensor_data(col_s), B);
    }
    gc_grad_set_enabled(prev);
    if (st != GC_OK) return NULL;
    gc_tensor *in3[3] = {ic, tc, logit_scale}, *sv[6] = {ic, tc, s, row_lse, col_m, col_s};
    gc_node *nd = gc_autograd_record("clip_loss", infonce_backward, loss, 3, in3, 6, sv);
    if (nd) nd->iarg[0] = blk;
    return loss;
}

gc_tensor *gc_clip_loss(gc_tensor *img, gc_tensor *txt, gc_tensor *logit_scale, int64_t block_rows)
{
    /* HF: embeds / embeds.norm(dim=-1); eps only guards an all-zero row */
    gc_tensor *i_n = gc_l2normalize(gc_cast(img, GC_F32), 1e-12);
    gc_tensor *t_n = gc_l2normalize(gc_cast(txt, GC_F32), 1e-12);
    return gc_infonce(i_n, t_n, logit_scale, block_rows);
}
