/* Rotary position embedding, half-split pairing (HF rotate_half): dim d pairs with
 * d + D/2. For x [B, L, H, D], token l in [start, start + n) with t = l - start and
 * c = cos[(b,) t, :], s = sin[(b,) t, :], for d < D/2 (h = D/2):
 *   y[d]     = x[d] c[d]         - x[d + h] s[d]
 *   y[d + h] = x[d + h] c[d + h] + x[d] s[d + h]
 * Tokens outside the range are copied unchanged (DINOv3 skips its prefix tokens so).
 * cos/sin are f32 [n, D] (shared by the batch) or [B, n, D] (per sample: Qwen MRoPE),
 * and are not differentiable. The backward applies the transposed map
 *   dx[d]     = gy[d] c[d]         + gy[d + h] s[d + h]
 *   dx[d + h] = gy[d + h] c[d + h] - gy[d] s[d]
 * which is the rotation by -angle when the halves of cos/sin agree (as HF builds them)
 * and the exact gradient in general. */
#include <string.h>

#include "gc_kernel_util.h"

#ifdef GC_WITH_CUDA
/* y (+)= rope(x) (inverse false) or its transpose (inverse true); cs/sn f32 [(B,) n, D];
 * x and y [B, L, H, D] with strides xs, ys (elements, of dims 0..2; dim 3's is 1): one may
 * be a view of a fused q/k/v (or of its gradient); y may be x (each pair is read, then
 * written, by one thread) */
gc_status gc_cuda_rope(const void *x, const int64_t *xs, gc_dtype dt, const float *cs, const float *sn, bool per_sample,
                       int64_t B, int64_t L, int64_t H, int64_t D, int64_t n, int64_t start, bool inverse, void *y,
                       const int64_t *ys, gc_dtype y_dt, bool acc);
#endif

/* ---------------------------------------------------------------- CPU reference */

static void cpu_rope(const float *x, const int64_t *xs, const float *cs, const float *sn, bool per_sample, int64_t B,
                     int64_t L, int64_t H, int64_t D, int64_t n, int64_t start, bool inverse, float *y,
                     const int64_t *ys, bool acc)
{
    int64_t h = D / 2;
#pragma omp parallel for schedule(static) if (B * L * H * D > 65536)
    for (int64_t row = 0; row < B * L * H; row++) {
        int64_t b = row / (L * H), l = (row / H) % L, hd = row % H, t = l - start;
        const float *xr = x + b * xs[0] + l * xs[1] + hd * xs[2];
        float *yr = y + b * ys[0] + l * ys[1] + hd * ys[2];
        const float *c = t >= 0 && t < n ? cs + ((per_sample ? b * n : 0) + t) * D : NULL;
        const float *s = c ? sn + (c - cs) : NULL;
        for (int64_t d = 0; d < h; d++) {
            double lo = xr[d], hi = xr[d + h], o1, o2;
            if (!c) {
                o1 = lo;
                o2 = hi;
            } else if (!inverse) {
                o1 = lo * c[d] - hi * s[d];
                o2 = hi * c[d + h] + lo * s[d + h];
            } else {
                o1 = lo * c[d] + hi * s[d + h];
                o2 = hi * c[d + h] - lo * s[d];
            }
            yr[d] = (float)(acc ? yr[d] + o1 : o1);
            yr[d + h] = (float)(acc ? yr[d + h] + o2 : o2);
        }
    }
}

/* ---------------------------------------------------------------- the op */

/* saved: cos, sin (contiguous). iarg: 0 B, 1 L, 2 H, 3 D, 4 n, 5 start, 6 per_sample. */
static gc_status rope_backward(gc_node *nd, gc_tensor *gy)
{
    const int64_t *a = nd->iarg;
    gc_tensor *cs = nd->saved[0], *sn = nd->saved[1];
    bool acc;
    gc_tensor *gx = gc_grad_target_view(nd, 0, &acc); /* strided: a region of a fused q/k's gradient */
    if (!gx) return GC_PENDING();
    if (gx->stride[3] != 1)
        return gc_error_set(GC_ERR_INVALID, "rope backward: a gradient with inner stride %lld", (long long)gx->stride[3]);
    if (gx->device.type == GC_DEVICE_CUDA)
        return GC_CUDA_DISPATCH(gc_cuda_rope(gc_tensor_data(gy), gy->stride, gy->dtype, gc_tensor_data(cs),
                                             gc_tensor_data(sn), a[6], a[0], a[1], a[2], a[3], a[4], a[5], true,
                                             gc_tensor_data(gx), gx->stride, gx->dtype, acc));
    cpu_rope(gc_tensor_data(gy), gy->stride, gc_tensor_data(cs), gc_tensor_data(sn), a[6], a[0], a[1], a[2], a[3], a[4],
             a[5], true, gc_tensor_data(gx), gx->stride, acc);
    return GC_OK;
}

static gc_tensor *rope_impl(gc_tensor *x, gc_tensor *cos, gc_tensor *sin, int64_t start, bool in_place)
{
    if (!x || !cos || !sin) return NULL;
    gc_tensor *ins[3] = {x, cos, sin};
    if (!gc_check_same_device("rope", 3, ins) || !gc_check_float("rope", x)) return NULL;
    for (int i = 1; i < 3; i++)
        if (ins[i]->dtype != GC_F32) {
            gc_error_set(GC_ERR_DTYPE, "rope: %s must be f32, not %s", gc_tensor_label(ins[i]),
                         gc_dtype_name(ins[i]->dtype));
            return NULL;
        }
    char sx[GC_SHAPE_STR_LEN], sc[GC_SHAPE_STR_LEN], ss[GC_SHAPE_STR_LEN];
    if (x->ndim != 4 || x->shape[3] % 2 != 0) {
        gc_error_set(GC_ERR_SHAPE, "rope: x %s %s must be [B, L, H, D] with D even", gc_tensor_label(x),
                     gc_shape_str(x, sx, sizeof sx));
        return NULL;
    }
    int64_t B = x->shape[0], L = x->shape[1], H = x->shape[2], D = x->shape[3];
    bool per_sample = cos->ndim == 3;
    int64_t n = cos->ndim >= 2 ? cos->shape[cos->ndim - 2] : -1;
    if (!gc_shape_eq(cos, sin) || (cos->ndim != 2 && cos->ndim != 3) || cos->shape[cos->ndim - 1] != D ||
        (per_sample && cos->shape[0] != B) || start < 0 || start + n > L) {
        gc_error_set(GC_ERR_SHAPE,
                     "rope: cos %s %s and sin %s %s must both be [n, %lld] or [%lld, n, %lld] with start %lld + n <= "
                     "L %lld, for x %s %s",
                     gc_tensor_label(cos), gc_shape_str(cos, sc, sizeof sc), gc_tensor_label(sin),
                     gc_shape_str(sin, ss, sizeof ss), (long long)D, (long long)B, (long long)D, (long long)start,
                     (long long)L, gc_tensor_label(x), gc_shape_str(x, sx, sizeof sx));
        return NULL;
    }
    if (in_place && x->stride[3] != 1) {
        gc_error_set(GC_ERR_INVALID, "rope in place: %s has inner stride %lld", gc_tensor_label(x), (long long)x->stride[3]);
        return NULL;
    }
    /* x read through its strides (q or k viewed in a fused q/k/v), unless its rows are strided */
    gc_tensor *xc = x->stride[3] == 1 ? x : gc_contiguous(x), *cc = gc_contiguous_raw(cos), *scn = gc_contiguous_raw(sin);
    if (!xc || !cc || !scn) return NULL;
    gc_tensor *y = in_place ? gc_pool_add(gc_tensor_view_of(x, 4, x->shape, x->stride, x->offset))
                            : gc_op_new(x->dtype, x->device, 4, x->shape);
    if (!y) return NULL;
    if (x->device.type == GC_DEVICE_CUDA) {
        if (GC_CUDA_DISPATCH(gc_cuda_rope(gc_tensor_data(xc), xc->stride, xc->dtype, gc_tensor_data(cc),
                                          gc_tensor_data(scn), per_sample, B, L, H, D, n, start, false,
                                          gc_tensor_data(y), y->stride, y->dtype, false)) != GC_OK)
            return NULL;
    } else {
        cpu_rope(gc_tensor_data(xc), xc->stride, gc_tensor_data(cc), gc_tensor_data(scn), per_sample, B, L, H, D, n, start,
                 false, gc_tensor_data(y), y->stride, false);
    }
    if (gc_autograd_should_record(1, &xc)) {
        gc_tensor *sv[2] = {cc, scn};
        gc_node *nd = gc_autograd_record("rope", rope_backward, y, 1, &xc, 2, sv);
        if (!nd) return NULL;
        int64_t args[7] = {B, L, H, D, n, start, per_sample};
        memcpy(nd->iarg, args, sizeof args);
    }
    return y;
}

gc_tensor *gc_rope(gc_tensor *x, gc_tensor *cos, gc_tensor *sin, int64_t start) { return rope_impl(x, cos, sin, start, false); }

gc_tensor *gc_rope_in_place(gc_tensor *x, gc_tensor *cos, gc_tensor *sin, int64_t start)
{
    return rope_impl(x, cos, sin, start, true);
}
