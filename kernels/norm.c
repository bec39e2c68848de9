/* Normalisations over the last dim: layernorm, rmsnorm, l2normalize. They share one
 * forward and one backward (a mode selects the statistic), so the CPU reference and
 * the CUDA kernels (norm.cu) each have one copy of the math.
 *
 * Per row r of x [R, D], with optional weight w [D] and bias b [D]:
 *   layer: mean_r, rstd_r = 1/sqrt(var_r + eps)     y = (x - mean) rstd w + b
 *   rms:   rstd_r = 1/sqrt(mean(x^2) + eps)         y = x rstd w          (HF Qwen3: w, not 1+w)
 *   l2:    n_r = ||x_r||, s_r = 1/max(n_r, eps)     y = x s               (F.normalize)
 * The forward saves mean (layer) and the per-row statistic (rstd, or n for l2) as
 * f32 [R], so the backward does not recompute them. With xh = (x - mean) rstd and
 * g = gy w (per element):
 *   layer: dx = rstd (g - mean(g) - xh mean(g xh))
 *   rms:   dx = rstd (g - xh mean(g xh))
 *   l2:    dx = (g - y sum(g y)) / n  if n >= eps, else g / eps (the clamp is constant)
 *   dw = sum over rows of gy xh, db = sum over rows of gy.
 * On the GPU dw/db are reduced deterministically: per-chunk partials into an f32
 * scratch tensor, then a fixed-order column reduction (no float atomics). The node can
 * re-run its forward (gc_recompute_release): it saves b as well, and y is a pure
 * function of x, w, b. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gc_kernel_util.h"

enum { NORM_LAYER = 0, NORM_RMS = 1, NORM_L2 = 2 }; /* same values in norm.cu */

/* rows per partial-sum chunk of the GPU dw/db reduction (norm.cu reads it as given): 128
 * took 15.2 us a launch at DINOv3's chunk of 64 images where 32, 64 and 256 took 20.4 to
 * 22.9 (docs/BENCHMARKS.md, session 17) */
#define NORM_WB_CHUNK_ROWS 128

#ifdef GC_WITH_CUDA
gc_status gc_cuda_norm_fwd(int mode, const void *x, const void *w, const void *b, void *y, gc_dtype dt, float *mean,
                           float *stat, int64_t R, int64_t D, float eps);
gc_status gc_cuda_norm_bwd(int mode, const void *x, const void *w, const void *gy, gc_dtype dt, const float *mean,
                           const float *stat, int64_t R, int64_t D, float eps, void *gx, gc_dtype gx_dt, bool gx_acc,
                           void *gw, gc_dtype gw_dt, bool gw_acc, void *gb, gc_dtype gb_dt, bool gb_acc, float *part,
                           int64_t chunk_rows);
#endif

static const char *mode_name(int mode)
{
    return mode == NORM_LAYER ? "layernorm" : mode == NORM_RMS ? "rmsnorm" : "l2normalize";
}

/* ---------------------------------------------------------------- CPU reference */

/* x, y [R, D]; w, b [D] or NULL; mean, stat [R] or NULL (not recording). */
static void cpu_norm_fwd(int mode, const float *x, const float *w, const float *b, float *y, float *mean,
                         float *stat, int64_t R, int64_t D, double eps)
{
#pragma omp parallel for schedule(static) if (R * D > 65536)
    for (int64_t r = 0; r < R; r++) {
        const float *xr = x + r * D;
        float *yr = y + r * D;
        double m = 0, ss = 0;
        if (mode == NORM_LAYER) {
            for (int64_t j = 0; j < D; j++) m += xr[j];
            m /= (double)D;
        }
        for (int64_t j = 0; j < D; j++) ss += (xr[j] - m) * (xr[j] - m);
        double scale, st;
        if (mode == NORM_L2) {
            st = sqrt(ss);
            scale = 1.0 / fmax(st, eps);
        } else {
            scale = 1.0 / sqrt(ss / (double)D + eps);
            st = scale;
        }
        if (mean) mean[r] = (float)m;
        if (stat) stat[r] = (float)st;
        for (int64_t j = 0; j < D; j++)
            yr[j] = (float)((xr[j] - m) * scale * (w ? w[j] : 1.0) + (b ? b[j] : 0.0));
    }
}

/* gx [R, D] (+)= the input gradient. */
static void cpu_norm_bwd(int mode, const float *x, const float *w, const float *gy, const float *mean,
                         const float *stat, int64_t R, int64_t D, double eps, float *gx, bool acc)
{
#pragma omp parallel for schedule(static) if (R * D > 65536)
    for (int64_t r = 0; r < R; r++) {
        const float *xr = x + r * D, *gr = gy + r * D;
        float *dr = gx + r * D;
        double m = mode == NORM_LAYER ? mean[r] : 0.0, scale;
        bool clipped = false;
        if (mode == NORM_L2) {
            clipped = stat[r] < eps;
            scale = 1.0 / fmax(stat[r], eps);
        } else {
            scale = stat[r];
        }
        double sg = 0, sgx = 0;
        for (int64_t j = 0; j < D; j++) {
            double g = gr[j] * (w ? w[j] : 1.0), xh = (xr[j] - m) * scale;
            sg += g;
            sgx += g * xh;
        }
        double a = 0, c;
        if (mode == NORM_LAYER) { a = sg / (double)D; c = sgx / (double)D; }
        else if (mode == NORM_RMS) c = sgx / (double)D;
        else c = clipped ? 0.0 : sgx;
        for (int64_t j = 0; j < D; j++) {
            double g = gr[j] * (w ? w[j] : 1.0), xh = (xr[j] - m) * scale;
            double d = scale * (g - a - xh * c);
            dr[j] = (float)(acc ? dr[j] + d : d);
        }
    }
}

/* gw [D] (+)= sum_r gy xh, gb [D] (+)= sum_r gy; either may be NULL. */
static gc_status cpu_norm_bwd_wb(int mode, const float *x, const float *gy, const float *mean, const float *stat,
                                 int64_t R, int64_t D, float *gw, bool aw, float *gb, bool ab)
{
    double *sw = calloc((size_t)(2 * D + 1), sizeof(double));
    if (!sw) return gc_error_set(GC_ERR_OOM, "out of host memory");
    double *sb = sw + D;
    for (int64_t r = 0; r < R; r++) {
        double m = mode == NORM_LAYER ? mean[r] : 0.0, scale = stat[r];
        for (int64_t j = 0; j < D; j++) {
            sw[j] += gy[r * D + j] * (x[r * D + j] - m) * scale;
            sb[j] += gy[r * D + j];
        }
    }
    for (int64_t j = 0; j < D; j++) {
        if (gw) gw[j] = (float)(aw ? gw[j] + sw[j] : sw[j]);
        if (gb) gb[j] = (float)(ab ? gb[j] + sb[j] : sb[j]);
    }
    free(sw);
    return GC_OK;
}

/* ---------------------------------------------------------------- the op */

static inline void *data_or_null(const gc_tensor *t) { return t ? gc_tensor_data(t) : NULL; }

/* y from contiguous x, w, b on x's device; mean, stat [R] f32 or NULL (not kept). */
static gc_status norm_run(int mode, const gc_tensor *x, const gc_tensor *w, const gc_tensor *b, gc_tensor *y,
                          gc_tensor *mean, gc_tensor *stat, double eps)
{
    int64_t R = gc_tensor_rows(x), D = gc_tensor_cols(x);
    if (x->device.type == GC_DEVICE_CUDA)
        return GC_CUDA_DISPATCH(gc_cuda_norm_fwd(mode, gc_tensor_data(x), data_or_null(w), data_or_null(b),
                                                 gc_tensor_data(y), x->dtype, data_or_null(mean), data_or_null(stat), R,
                                                 D, (float)eps));
    cpu_norm_fwd(mode, gc_tensor_data(x), data_or_null(w), data_or_null(b), gc_tensor_data(y), data_or_null(mean),
                 data_or_null(stat), R, D, eps);
    return GC_OK;
}

/* inputs: x, w, b (w/b NULL when absent). saved: x [R, D], w, mean [R] (layer only), stat [R], b.
 * iarg[0] mode; farg[0] eps. */
static gc_status norm_backward(gc_node *nd, gc_tensor *gy)
{
    int mode = (int)nd->iarg[0];
    double eps = nd->farg[0];
    gc_tensor *x = nd->saved[0], *w = nd->saved[1], *mean = nd->saved[2], *stat = nd->saved[3];
    int64_t R = gc_tensor_rows(x), D = gc_tensor_cols(x);
    bool ax = false, aw = false, ab = false;
    gc_tensor *gx = gc_grad_target(nd, 0, &ax), *gw = gc_grad_target(nd, 1, &aw), *gb = gc_grad_target(nd, 2, &ab);
    for (int i = 0; i < 3; i++)
        if (nd->in[i] && !nd->in[i]->grad) return GC_PENDING();
    if (x->device.type == GC_DEVICE_CUDA) {
        gc_tensor *part = NULL; /* f32 [2, chunks, D]: the dw and db partial sums */
        if (gw || gb) {
            int64_t chunks = (R + NORM_WB_CHUNK_ROWS - 1) / NORM_WB_CHUNK_ROWS;
            part = gc_op_new(GC_F32, x->device, 3, GC_SHAPE(2, chunks > 0 ? chunks : 1, D));
            if (!part) return GC_PENDING();
        }
        GC_TRY(GC_CUDA_DISPATCH(gc_cuda_norm_bwd(
            mode, gc_tensor_data(x), data_or_null(w), gc_tensor_data(gy), x->dtype, data_or_null(mean),
            gc_tensor_data(stat), R, D, (float)eps, data_or_null(gx), gx ? gx->dtype : GC_F32, ax, data_or_null(gw),
            gw ? gw->dtype : GC_F32, aw, data_or_null(gb), gb ? gb->dtype : GC_F32, ab, data_or_null(part),
            NORM_WB_CHUNK_ROWS)));
        return GC_OK;
    }
    if (gx)
        cpu_norm_bwd(mode, gc_tensor_data(x), data_or_null(w), gc_tensor_data(gy), data_or_null(mean),
                     gc_tensor_data(stat), R, D, eps, gc_tensor_data(gx), ax);
    if (gw || gb)
        return cpu_norm_bwd_wb(mode, gc_tensor_data(x), gc_tensor_data(gy), data_or_null(mean), gc_tensor_data(stat),
                               R, D, data_or_null(gw), aw, data_or_null(gb), ab);
    return GC_OK;
}

/* Re-runs the forward into y from the saved x, w, b (gc_recompute_release): the same
 * kernel on the same inputs, so the same bits; mean and stat are kept as they are. */
static gc_status norm_forward(gc_node *nd, gc_tensor *y)
{
    return norm_run((int)nd->iarg[0], nd->saved[0], nd->saved[1], nd->saved[4], y, NULL, NULL, nd->farg[0]);
}

static gc_tensor *norm_op(int mode, gc_tensor *x, gc_tensor *w, gc_tensor *b, double eps)
{
    const char *op = mode_name(mode);
    if (!x) return NULL;
    gc_tensor *ins[3] = {x, w, b};
    if (!gc_check_same_device(op, 3, ins) || !gc_check_float(op, x) || (w && !gc_check_same_dtype(op, x, w)) ||
        (b && !gc_check_same_dtype(op, x, b)))
        return NULL;
    char sx[GC_SHAPE_STR_LEN], sp[GC_SHAPE_STR_LEN];
    if (x->ndim < 1 || gc_tensor_cols(x) < 1) {
        gc_error_set(GC_ERR_SHAPE, "%s: %s %s has no last dim to normalise over", op, gc_tensor_label(x),
                     gc_shape_str(x, sx, sizeof sx));
        return NULL;
    }
    int64_t R = gc_tensor_rows(x), D = gc_tensor_cols(x);
    for (int i = 1; i < 3; i++) {
        gc_tensor *p = ins[i];
        if (p && (p->ndim != 1 || p->shape[0] != D)) {
            gc_error_set(GC_ERR_SHAPE, "%s: %s %s must be [%lld] to match input %s %s", op, gc_tensor_label(p),
                         gc_shape_str(p, sp, sizeof sp), (long long)D, gc_tensor_label(x), gc_shape_str(x, sx, sizeof sx));
            return NULL;
        }
    }
    if (!(eps >= 0) || !isfinite(eps)) {
        gc_error_set(GC_ERR_INVALID, "%s: eps %g must be finite and >= 0", op, eps);
        return NULL;
    }
    gc_tensor *xc = gc_contiguous(x), *wc = w ? gc_contiguous(w) : NULL, *bc = b ? gc_contiguous(b) : NULL;
    if (!xc || (w && !wc) || (b && !bc)) return NULL;
    gc_tensor *y = gc_op_new(x->dtype, x->device, x->ndim, x->shape);
    if (!y) return NULL;
    gc_tensor *in3[3] = {xc, wc, bc};
    bool rec = gc_autograd_should_record(3, in3);
    gc_tensor *mean = NULL, *stat = NULL;
    if (rec) {
        stat = gc_op_new(GC_F32, x->device, 1, GC_SHAPE(R));
        if (!stat) return NULL;
        if (mode == NORM_LAYER && !(mean = gc_op_new(GC_F32, x->device, 1, GC_SHAPE(R)))) return NULL;
    }
    if (norm_run(mode, xc, wc, bc, y, mean, stat, eps) != GC_OK) return NULL;
    if (rec) {
        gc_tensor *sv[5] = {xc, wc, mean, stat, bc};
        gc_node *nd = gc_autograd_record(op, norm_backward, y, 3, in3, 5, sv);
        if (!nd) return NULL;
        nd->iarg[0] = mode;
        nd->farg[0] = eps;
        nd->forward = norm_forward;
    }
    return y;
}

gc_tensor *gc_layernorm(gc_tensor *x, gc_tensor *w, gc_tensor *b, double eps)
{
    return norm_op(NORM_LAYER, x, w, b, eps);
}

gc_tensor *gc_rmsnorm(gc_tensor *x, gc_tensor *w, double eps) { return norm_op(NORM_RMS, x, w, NULL, eps); }

gc_tensor *gc_l2normalize(gc_tensor *x, double eps) { return norm_op(NORM_L2, x, NULL, NULL, eps); }
