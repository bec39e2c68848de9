// CUDA kernel of the rotary embedding (rope.c has the formulas and the CPU reference).
// One thread per V pairs (d, d + D/2) of a row of x [B, L, H, D]; 16-byte vector
// accesses when D/2 and the pointers allow it. The forward and the backward (the
// transposed map) share the kernel.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <stdint.h>

extern "C" {
#include "../runtime/gc_cuda.h"
}
#include "gc_cuda_util.cuh"

namespace {

// Strides of dims 0..2 of a [B, L, H, D] tensor (dim 3's is 1).
template <typename I> struct Strides3 { I s0, s1, s2; };

// y (+)= rope(x) or its transpose (inverse); cs/sn f32 [(B,) n, D]; x, y strided (q or k
// in a fused q/k/v, or its gradient). I: the index type, int when every offset fits
// (64-bit divisions per vector made the kernel compute-bound).
// y may be x (gc_rope_in_place): a thread reads a pair, then writes it; no __restrict__.
template <typename T, typename G, int V, typename I>
__global__ void rope_kernel(const T *x, Strides3<I> xs, const float *__restrict__ cs, const float *__restrict__ sn,
                            bool per_sample, I B, I L, I H, I D, I n, I start, bool inverse, G *y, Strides3<I> ys,
                            bool acc)
{
    GC_PDL_WAIT();
    const I h = D / 2, per_row = h / V, total = B * L * H * per_row;
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (I)gridDim.x * blockDim.x) {
        const I row = i / per_row, d = (i - row * per_row) * V;
        const I b = row / (L * H), l = (row / H) % L, hd = row % H, t = l - start;
        const T *xr = x + b * xs.s0 + l * xs.s1 + hd * xs.s2;
        G *yr = y + b * ys.s0 + l * ys.s1 + hd * ys.s2;
        float lo[V], hi[V], o1[V], o2[V];
        load_v<V>(xr + d, lo);
        load_v<V>(xr + d + h, hi);
        if (t < 0 || t >= n) {
#pragma unroll
            for (int k = 0; k < V; k++) {
                o1[k] = lo[k];
                o2[k] = hi[k];
            }
        } else {
            const I base = ((per_sample ? b * n : 0) + t) * D;
            float c1[V], c2[V], s1[V], s2[V];
            load_v<V>(cs + base + d, c1);
            load_v<V>(cs + base + d + h, c2);
            load_v<V>(sn + base + d, s1);
            load_v<V>(sn + base + d + h, s2);
            if (!inverse) {
#pragma unroll
                for (int k = 0; k < V; k++) {
                    o1[k] = lo[k] * c1[k] - hi[k] * s1[k];
                    o2[k] = hi[k] * c2[k] + lo[k] * s2[k];
                }
            } else {
#pragma unroll
                for (int k = 0; k < V; k++) {
                    o1[k] = lo[k] * c1[k] + hi[k] * s2[k];
                    o2[k] = hi[k] * c2[k] - lo[k] * s1[k];
                }
            }
        }
        store_v<V>(yr + d, o1, acc);
        store_v<V>(yr + d + h, o2, acc);
    }
}

bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

// one past the largest element offset of a [B, L, H, D] tensor with strides s
int64_t span(const int64_t *s, int64_t B, int64_t L, int64_t H, int64_t D)
{
    return (B - 1) * s[0] + (L - 1) * s[1] + (H - 1) * s[2] + D;
}

template <typename T, typename G>
gc_status rope_typed(const T *x, const int64_t *xs, const float *cs, const float *sn, bool per_sample, int64_t B,
                     int64_t L, int64_t H, int64_t D, int64_t n, int64_t start, bool inverse, G *y, const int64_t *ys,
                     bool acc)
{
    constexpr int VT = 16 / sizeof(T);
    bool vec = (D / 2) % VT == 0 && aligned16(x) && aligned16(cs) && aligned16(sn) && aligned16(y);
    for (int k = 0; k < 3; k++) vec = vec && xs[k] % VT == 0 && ys[k] % VT == 0;
    int64_t threads = B * L * H * (D / 2) / (vec ? VT : 1);
    int64_t blocks = (threads + 255) / 256, cap = (int64_t)gc_cuda_sm_count() * 16;
    unsigned grid = (unsigned)(blocks < cap ? blocks : cap);
    // int indices when x's and y's offsets, the tables' and the grid-stride loop's last index fit
    const bool small = B * L * H * D + (int64_t)grid * 256 < INT32_MAX && (per_sample ? B : 1) * n * D < INT32_MAX &&
                       span(xs, B, L, H, D) < INT32_MAX && span(ys, B, L, H, D) < INT32_MAX;
    const Strides3<int64_t> xl{xs[0], xs[1], xs[2]}, yl{ys[0], ys[1], ys[2]};
    cudaStream_t st = gc_cuda_stream();
    if (vec && small)
        gc_launch(rope_kernel<T, G, VT, int>, grid, 256, 0, st, x, Strides3<int>{(int)xs[0], (int)xs[1], (int)xs[2]}, cs,
                  sn, per_sample, (int)B, (int)L, (int)H, (int)D, (int)n, (int)start, inverse, y,
                  Strides3<int>{(int)ys[0], (int)ys[1], (int)ys[2]}, acc);
    else if (vec)
        gc_launch(rope_kernel<T, G, VT, int64_t>, grid, 256, 0, st, x, xl, cs, sn, per_sample, B, L, H, D, n, start,
                  inverse, y, yl, acc);
    else
        gc_launch(rope_kernel<T, G, 1, int64_t>, grid, 256, 0, st, x, xl, cs, sn, per_sample, B, L, H, D, n, start,
                  inverse, y, yl, acc);
    GC_CUDA_LAUNCH_CHECK();
    return GC_OK;
}

} // namespace

extern "C" gc_status gc_cuda_rope(const void *x, const int64_t *xs, gc_dtype dt, const float *cs, const float *sn,
                                  bool per_sample, int64_t B, int64_t L, int64_t H, int64_t D, int64_t n, int64_t start,
                                  bool inverse, void *y, const int64_t *ys, gc_dtype y_dt, bool acc)
{
    if (B * L * H * D == 0) return GC_OK;
#define GC_ROPE_CALL(T, G)                                                                                             \
    return rope_typed<T, G>((const T *)x, xs, cs, sn, per_sample, B, L, H, D, n, start, inverse, (G *)y, ys, acc)
    if (dt == GC_F32 && y_dt == GC_F32) GC_ROPE_CALL(float, float);
    if (dt == GC_BF16 && y_dt == GC_BF16) GC_ROPE_CALL(__nv_bfloat16, __nv_bfloat16);
    if (dt == GC_BF16 && y_dt == GC_F32) GC_ROPE_CALL(__nv_bfloat16, float);
    if (dt == GC_F32 && y_dt == GC_BF16) GC_ROPE_CALL(float, __nv_bfloat16);
#undef GC_ROPE_CALL
    return gc_error_set(GC_ERR_DTYPE, "rope on cuda: %s input into %s output", gc_dtype_name(dt), gc_dtype_name(y_dt));
}
