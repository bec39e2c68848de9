/* Softmax over the last dim, in f32 (double on the CPU) and max-subtracted, so large
 * logits do not overflow: y = exp(x - max) / sum exp(x - max).
 * The forward saves y; the backward is dx = y (dy - sum(dy y)).
 * A row that is entirely -inf gives NaN, as in torch. */
#include <math.h>
#include <string.h>

#include "gc_kernel_util.h"

#ifdef GC_WITH_CUDA
gc_status gc_cuda_softmax_fwd(const void *x, void *y, gc_dtype dt, int64_t R, int64_t D);
gc_status gc_cuda_softmax_bwd(const void *y, const void *gy, gc_dtype dt, int64_t R, int64_t D, void *gx,
                              gc_dtype gx_dt, bool acc);
#endif

/* ---------------------------------------------------------------- CPU reference */

/* x, y [R, D] */
static void cpu_softmax_fwd(const float *x, float *y, int64_t R, int64_t D)
{
#pragma omp parallel for schedule(static) if (R * D > 65536)
    for (int64_t r = 0; r < R; r++) {
        const float *xr = x + r * D;
        float *yr = y + r * D;
        double m = -INFINITY, s = 0;
        for (int64_t j = 0; j < D; j++) m = fmax(m, xr[j]);
        for (int64_t j = 0; j < D; j++) s += exp(xr[j] - m);
        for (int64_t j = 0; j < D; j++) yr[j] = (float)(exp(xr[j] - m) / s);
    }
}

/* gx [R, D] (+)= y (gy - sum(gy y)) */
static void cpu_softmax_bwd(const float *y, const float *gy, int64_t R, int64_t D, float *gx, bool acc)
{
#pragma omp parallel for schedule(static) if (R * D > 65536)
    for (int64_t r = 0; r < R; r++) {
        const float *yr = y + r * D, *gr = gy + r * D;
        float *dr = gx + r * D;
        double dot = 0;
        for (int64_t j = 0; j < D; j++) dot += (double)gr[j] * yr[j];
        for (int64_t j = 0; j < D; j++) {
            double d = yr[j] * (gr[j] - dot);
            dr[j] = (float)(acc ? dr[j] + d : d);
        }
    }
}

/* ---------------------------------------------------------------- the op */

/* saved: y [R, D] */
static gc_status softmax_backward(gc_node *nd, gc_tensor *gy)
{
    gc_tensor *y = nd->saved[0];
    int64_t R = gc_tensor_rows(y), D = gc_tensor_cols(y);
    bool acc;
    gc_tensor *gx = gc_grad_target(nd, 0, &acc);
    if (!gx) return GC_PENDING();
    if (y->device.type == GC_DEVICE_CUDA)
        return GC_CUDA_DISPATCH(gc_cuda_softmax_bwd(gc_tensor_data(y), gc_tensor_data(gy), y->dtype, R, D,
                                                    gc_tensor_data(gx), gx->dtype, acc));
    cpu_softmax_bwd(gc_tensor_data(y), gc_tensor_data(gy), R, D, gc_tensor_data(gx), acc);
    return GC_OK;
}

gc_tensor *gc_softmax(gc_tensor *x)
{
    if (!x) return NULL;
    if (!gc_check_float("softmax", x)) return NULL;
    if (x->ndim < 1 || gc_tensor_cols(x) < 1) {
        char s[GC_SHAPE_STR_LEN];
        gc_error_set(GC_ERR_SHAPE, "softmax: %s %s has no last dim to normalise over", gc_tensor_label(x),
                     gc_shape_str(x, s, sizeof s));
        return NULL;
    }
    int64_t R = gc_tensor_rows(x), D = gc_tensor_cols(x);
    gc_tensor *xc = gc_contiguous(x);
    if (!xc) return NULL;
    gc_tensor *y = gc_op_new(x->dtype, x->device, x->ndim, x->shape);
    if (!y) return NULL;
    if (x->device.type == GC_DEVICE_CUDA) {
        if (GC_CUDA_DISPATCH(gc_cuda_softmax_fwd(gc_tensor_data(xc), gc_tensor_data(y), x->dtype, R, D)) != GC_OK)
            return NULL;
    } else {
        cpu_softmax_fwd(gc_tensor_data(xc), gc_tensor_data(y), R, D);
    }
    if (gc_autograd_should_record(1, &xc) && !gc_autograd_record("softmax", softmax_backward, y, 1, &xc, 1, &y))
        return NULL;
    return y;
}
