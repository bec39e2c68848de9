// CUDA kernels of softmax over the last dim (softmax.c has the math and the CPU
// reference). One warp per row, eight rows per 256-thread block, 16-byte vector
// accesses when D and the pointers allow it; f32 math, max-subtracted.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdint.h>

extern "C" {
#include "../runtime/gc_cuda.h"
}
#include "gc_cuda_util.cuh"

namespace {

constexpr int ROWS_PER_BLOCK = 8;

// x, y [R, D]
template <typename T, int V>
__global__ void softmax_fwd_kernel(const T *__restrict__ x, T *__restrict__ y, int64_t R, int64_t D)
{
    GC_PDL_WAIT();
    int64_t r = (int64_t)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (r >= R) return;
    const T *xr = x + r * D;
    T *yr = y + r * D;
    float f[V], m = -INFINITY, s = 0.0f;
    for (int64_t c = (int64_t)lane * V; c < D; c += 32 * V) {
        load_v<V>(xr + c, f);
#pragma unroll
        for (int k = 0; k < V; k++) m = fmaxf(m, f[k]);
    }
    m = warp_max(m);
    for (int64_t c = (int64_t)lane * V; c < D; c += 32 * V) {
        load_v<V>(xr + c, f);
#pragma unroll
        for (int k = 0; k < V; k++) s += expf(f[k] - m);
    }
    float inv = 1.0f / warp_sum(s);
    for (int64_t c = (int64_t)lane * V; c < D; c += 32 * V) {
        load_v<V>(xr + c, f);
#pragma unroll
        for (int k = 0; k < V; k++) f[k] = expf(f[k] - m) * inv;
        store_v<V>(yr + c, f, false);
    }
}

// gx [R, D] (+)= y (gy - sum(gy y))
template <typename T, typename G, int V>
__global__ void softmax_bwd_kernel(const T *__restrict__ y, const T *__restrict__ gy, G *__restrict__ gx, bool acc,
                                   int64_t R, int64_t D)
{
    GC_PDL_WAIT();
    int64_t r = (int64_t)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (r >= R) return;
    const T *yr = y + r * D, *gr = gy + r * D;
    G *dr = gx + r * D;
    float yv[V], gv[V], dot = 0.0f;
    for (int64_t c = (int64_t)lane * V; c < D; c += 32 * V) {
        load_v<V>(yr + c, yv);
        load_v<V>(gr + c, gv);
#pragma unroll
        for (int k = 0; k < V; k++) dot += yv[k] * gv[k];
    }
    dot = warp_sum(dot);
    for (int64_t c = (int64_t)lane * V; c < D; c += 32 * V) {
        float o[V];
        load_v<V>(yr + c, yv);
        load_v<V>(gr + c, gv);
#pragma unroll
        for (int k = 0; k < V; k++) o[k] = yv[k] * (gv[k] - dot);
        store_v<V>(dr + c, o, acc);
    }
}

bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

unsigned row_blocks(int64_t R) { return (unsigned)((R + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK); }

template <typename T> gc_status fwd_typed(const T *x, T *y, int64_t R, int64_t D)
{
    constexpr int VT = 16 / sizeof(T);
    if (D % VT == 0 && aligned16(x) && aligned16(y))
        gc_launch(softmax_fwd_kernel<T, VT>, row_blocks(R), 256, 0, gc_cuda_stream(), x, y, R, D);
    else
        gc_launch(softmax_fwd_kernel<T, 1>, row_blocks(R), 256, 0, gc_cuda_stream(), x, y, R, D);
    GC_CUDA_LAUNCH_CHECK();
    return GC_OK;
}

template <typename T, typename G> gc_status bwd_typed(const T *y, const T *gy, G *gx, bool acc, int64_t R, int64_t D)
{
    constexpr int VT = 16 / sizeof(T);
    if (D % VT == 0 && aligned16(y) && aligned16(gy) && aligned16(gx))
        gc_launch(softmax_bwd_kernel<T, G, VT>, row_blocks(R), 256, 0, gc_cuda_stream(), y, gy, gx, acc, R, D);
    else
        gc_launch(softmax_bwd_kernel<T, G, 1>, row_blocks(R), 256, 0, gc_cuda_stream(), y, gy, gx, acc, R, D);
    GC_CUDA_LAUNCH_CHECK();
    return GC_OK;
}

template <typename T> gc_status bwd_dispatch_g(const void *y, const void *gy, void *gx, gc_dtype gx_dt, bool acc,
                                               int64_t R, int64_t D)
{
    switch (gx_dt) {
    case GC_F32: return bwd_typed<T, float>((const T *)y, (const T *)gy, (float *)gx, acc, R, D);
    case GC_BF16: return bwd_typed<T, __nv_bfloat16>((const T *)y, (const T *)gy, (__nv_bfloat16 *)gx, acc, R, D);
    default: return gc_error_set(GC_ERR_DTYPE, "softmax backward on cuda: gradient dtype %s", gc_dtype_name(gx_dt));
    }
}

} // namespace

extern "C" gc_status gc_cuda_softmax_fwd(const void *x, void *y, gc_dtype dt, int64_t R, int64_t D)
{
    if (R == 0) return GC_OK;
    switch (dt) {
    case GC_F32: return fwd_typed<float>((const float *)x, (float *)y, R, D);
    case GC_BF16: return fwd_typed<__nv_bfloat16>((const __nv_bfloat16 *)x, (__nv_bfloat16 *)y, R, D);
    default: return gc_error_set(GC_ERR_DTYPE, "softmax on cuda: dtype %s", gc_dtype_name(dt));
    }
}

extern "C" gc_status gc_cuda_softmax_bwd(const void *y, const void *gy, gc_dtype dt, int64_t R, int64_t D, void *gx,
                                         gc_dtype gx_dt, bool acc)
{
    if (R == 0) return GC_OK;
    switch (dt) {
    case GC_F32: return bwd_dispatch_g<float>(y, gy, gx, gx_dt, acc, R, D);
    case GC_BF16: return bwd_dispatch_g<__nv_bfloat16>(y, gy, gx, gx_dt, acc, R, D);
    default: return gc_error_set(GC_ERR_DTYPE, "softmax backward on cuda: dtype %s", gc_dtype_name(dt));
    }
}
