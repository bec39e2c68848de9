/* Reductions: sum and mean of all elements (-> a 0-dim tensor), mean over one dim.
 * Accumulation is in double on the CPU and f32 on the GPU, where the order is fixed
 * by the shape (block partial sums + a second pass; no float atomics). */
#include <string.h>

#include "gc_kernel_util.h"

#ifdef GC_WITH_CUDA
/* reduce.cu: x contiguous. y [] = scale * sum(x). */
gc_status gc_cuda_sum_fwd(gc_tensor *y, const gc_tensor *x, float scale);
/* gx[i] (+)= scale * gy[0] */
gc_status gc_cuda_sum_bwd(gc_tensor *gx, const gc_tensor *gy, float scale, bool acc);
/* x [outer, n, inner] -> y [outer, inner] = mean over n */
gc_status gc_cuda_mean_dim_fwd(gc_tensor *y, const gc_tensor *x, int64_t outer, int64_t n, int64_t inner);
/* gx [outer, n, inner] (+)= gy [outer, inner] / n */
gc_status gc_cuda_mean_dim_bwd(gc_tensor *gx, const gc_tensor *gy, int64_t outer, int64_t n, int64_t inner, bool acc);
#endif

/* ---------------------------------------------------------------- sum / mean */

/* farg[0] = scale (1 for sum, 1/n for mean) */
static gc_status sum_backward(gc_node *nd, gc_tensor *gy)
{
    bool acc;
    gc_tensor *gx = gc_grad_target(nd, 0, &acc);
    if (!gx) return GC_PENDING();
    float scale = (float)nd->farg[0];
    if (gy->device.type == GC_DEVICE_CUDA) return GC_CUDA_DISPATCH(gc_cuda_sum_bwd(gx, gy, scale, acc));
    float g = scale * *(const float *)gc_tensor_data(gy);
    float *d = gc_tensor_data(gx);
    for (int64_t i = 0, n = gc_tensor_numel(gx); i < n; i++) d[i] = acc ? d[i] + g : g;
    return GC_OK;
}

static gc_tensor *sum_scaled(const char *op, gc_tensor *x, bool mean)
{
    if (!x || !gc_check_float(op, x)) return NULL;
    gc_tensor *xc = gc_contiguous(x);
    if (!xc) return NULL;
    gc_tensor *y = gc_op_new(x->dtype, x->device, 0, NULL);
    if (!y) return NULL;
    int64_t n = gc_tensor_numel(xc);
    double scale = mean ? 1.0 / (double)n : 1.0; /* mean of nothing: NaN, as in torch */
    if (x->device.type == GC_DEVICE_CUDA) {
        if (GC_CUDA_DISPATCH(gc_cuda_sum_fwd(y, xc, (float)scale)) != GC_OK) return NULL;
    } else {
        const float *v = gc_tensor_data(xc);
        double s = 0;
        for (int64_t i = 0; i < n; i++) s += v[i];
        *(float *)gc_tensor_data(y) = (float)(s * scale); /* empty mean: 0 * inf = NaN */
    }
    gc_node *nd = gc_autograd_record(op, sum_backward, y, 1, &xc, 0, NULL);
    if (nd) nd->farg[0] = scale;
    return y;
}

gc_tensor *gc_sum(gc_tensor *x) { return sum_scaled("sum", x, false); }
gc_tensor *gc_mean(gc_tensor *x) { return sum_scaled("mean", x, true); }

/* ---------------------------------------------------------------- mean over a dim */

/* x viewed as [outer, n, inner] around dim */
static void split_dims(const int64_t *shape, int ndim, int dim, int64_t *outer, int64_t *n, int64_t *inner)
{
    *outer = 1;
    *inner = 1;
    for (int d = 0; d < dim; d++) *outer *= shape[d];
    for (int d = dim + 1; d < ndim; d++) *inner *= shape[d];
    *n = shape[dim];
}

/* iarg: 0 outer, 1 n, 2 inner */
static gc_status mean_dim_backward(gc_node *nd, gc_tensor *gy)
{
    bool acc;
    gc_tensor *gx = gc_grad_target(nd, 0, &acc);
    if (!gx) return GC_PENDING();
    int64_t outer = nd->iarg[0], n = nd->iarg[1], inner = nd->iarg[2];
    if (gy->device.type == GC_DEVICE_CUDA) return GC_CUDA_DISPATCH(gc_cuda_mean_dim_bwd(gx, gy, outer, n, inner, acc));
    const float *g = gc_tensor_data(gy);
    float *d = gc_tensor_data(gx);
    float inv = 1.0f / (float)n;
    for (int64_t o = 0; o < outer; o++)
        for (int64_t j = 0; j < n; j++) {
            float *dr = d + (o * n + j) * inner;
            const float *gr = g + o * inner;
            for (int64_t i = 0; i < inner; i++) dr[i] = acc ? dr[i] + gr[i] * inv : gr[i] * inv;
        }
    return GC_OK;
}

gc_tensor *gc_mean_dim(gc_tensor *x, int dim)
{
    if (!x || !gc_check_float("mean_dim", x)) return NULL;
    int d = dim < 0 ? dim + x->ndim : dim;
    if (d < 0 || d >= x->ndim) {
        char s[GC_SHAPE_STR_LEN];
        gc_error_set(GC_ERR_INVALID, "mean_dim: dim %d is out of range for %s %s", dim, gc_tensor_label(x),
                     gc_shape_str(x, s, sizeof s));
        return NULL;
    }
    gc_tensor *xc = gc_contiguous(x);
    if (!xc) return NULL;
    int64_t outer, n, inner, sh[GC_MAX_DIMS];
    split_dims(x->shape, x->ndim, d, &outer, &n, &inner);
    for (int i = 0, k = 0; i < x->ndim; i++)
        if (i != d) sh[k++] = x->shape[i];
    gc_tensor *y = gc_op_new(x->dtype, x->device, x->ndim - 1, sh);
    if (!y) return NULL;
    if (x->device.type == GC_DEVICE_CUDA) {
        if (GC_CUDA_DISPATCH(gc_cuda_mean_dim_fwd(y, xc, outer, n, inner)) != GC_OK) return NULL;
    } else {
        const float *v = gc_tensor_data(xc);
        float *yv = gc_tensor_data(y);
        for (int64_t o = 0; o < outer; o++)
            for (int64_t i = 0; i < inner; i++) {
                double s = 0;
                for (int64_t j = 0; j < n; j++) s += v[(o * n + j) * inner + i];
                yv[o * inner + i] = (float)(s / (double)n);
            }
    }
    gc_node *nd = gc_autograd_record("mean_dim", mean_dim_backward, y, 1, &xc, 0, NULL);
    if (nd) {
        nd->iarg[0] = outer;
        nd->iarg[1] = n;
        nd->iarg[2] = inner;
    }
    return y;
}
