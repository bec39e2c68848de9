// Reductions on the GPU: sum/mean of everything and mean over one dim. f32
// accumulation; every summation order is fixed by the shape (deterministic).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

extern "C" {
#include "../runtime/gc_cuda.h"
#include "gc_ops.h"
}
#include "gc_cuda_util.cuh"

namespace {

constexpr int64_t kMaxPartials = 1024;

// Sum of the block's `s` values in a fixed tree order; the result is valid in thread 0.
__device__ __forceinline__ float block_sum(float s, float *red)
{
    red[threadIdx.x] = s;
    __syncthreads();
    for (int w = kThreads / 2; w > 0; w >>= 1) {
        if ((int)threadIdx.x < w) red[threadIdx.x] += red[threadIdx.x + w];
        __syncthreads();
    }
    return red[0];
}

// Pass 1: block b sums x[i] for i = b*256 + tid + k*(grid*256) -> part[b]
template <typename T> __global__ void sum_partial_kernel(const T *__restrict__ x, int64_t n, float *__restrict__ part)
{
    GC_PDL_WAIT();
    __shared__ float red[kThreads];
    float s = 0.0f;
    for (int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x; i < n; i += (int64_t)gridDim.x * kThreads) s += to_f(x[i]);
    float t = block_sum(s, red);
    if (threadIdx.x == 0) part[blockIdx.x] = t;
}

// Pass 2: one block: y[0] = scale * sum(part)
template <typename T> __global__ void sum_final_kernel(const float *__restrict__ part, int64_t np, float scale, T *__restrict__ y)
{
    GC_PDL_WAIT();
    __shared__ float red[kThreads];
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < np; i += kThreads) s += part[i];
    float t = block_sum(s, red);
    if (threadIdx.x == 0) y[0] = from_f<T>(scale * t);
}

template <typename T, typename G>
__global__ void sum_bwd_kernel(G *__restrict__ gx, const T *__restrict__ gy, int64_t n, float scale, bool acc)
{
    GC_PDL_WAIT();
    const float g = scale * to_f(gy[0]);
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float v = acc ? to_f(gx[i]) + g : g;
        gx[i] = from_f<G>(v);
    }
}

// inner == 1: one block per row of x [outer, n]
template <typename T>
__global__ void mean_rows_kernel(const T *__restrict__ x, int64_t outer, int64_t n, T *__restrict__ y)
{
    GC_PDL_WAIT();
    __shared__ float red[kThreads];
    for (int64_t o = blockIdx.x; o < outer; o += gridDim.x) {
        const T *xr = x + o * n;
        float s = 0.0f;
        for (int64_t j = threadIdx.x; j < n; j += kThreads) s += to_f(xr[j]);
        float t = block_sum(s, red);
        if (threadIdx.x == 0) y[o] = from_f<T>(t / (float)n);
        __syncthreads(); // red is reused by the next row
    }
}

// inner > 1: block (32, 8) = 32 consecutive inner columns, 8 lanes over n, lanes added in order
template <typename T>
__global__ void mean_cols_kernel(const T *__restrict__ x, int64_t outer, int64_t n, int64_t inner, T *__restrict__ y)
{
    GC_PDL_WAIT();
    __shared__ float red[8][33];
    const int64_t i = (int64_t)blockIdx.x * 32 + threadIdx.x;
    for (int64_t o = blockIdx.y; o < outer; o += gridDim.y) {
        float s = 0.0f;
        if (i < inner)
            for (int64_t j = threadIdx.y; j < n; j += 8) s += to_f(x[(o * n + j) * inner + i]);
        red[threadIdx.y][threadIdx.x] = s;
        __syncthreads();
        if (threadIdx.y == 0 && i < inner) {
            float t = 0.0f;
#pragma unroll
            for (int k = 0; k < 8; k++) t += red[k][threadIdx.x];
            y[o * inner + i] = from_f<T>(t / (float)n);
        }
        __syncthreads();
    }
}

template <typename T, typename G>
__global__ void mean_dim_bwd_kernel(G *__restrict__ gx, const T *__restrict__ gy, int64_t outer, int64_t n, int64_t inner,
                                    bool acc)
{
    GC_PDL_WAIT();
    const int64_t total = outer * n * inner;
    const float inv = 1.0f / (float)n;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
        int64_t i = e % inner, o = e / (n * inner);
        float v = to_f(gy[o * inner + i]) * inv;
        if (acc) v += to_f(gx[e]);
        gx[e] = from_f<G>(v);
    }
}

} // namespace

extern "C" gc_status gc_cuda_sum_fwd(gc_tensor *y, const gc_tensor *x, float scale)
{
    const int64_t n = gc_tensor_numel(x);
    // the number of partials depends on n only: a reproducible order
    int64_t np = (n + kThreads * 8 - 1) / (kThreads * 8);
    if (np > kMaxPartials) np = kMaxPartials;
    if (np < 1) np = 1;
    gc_tensor *part = gc_tensor_new(GC_F32, x->device, 1, &np);
    if (!part) return GC_PENDING();
    gc_status st = with_type(x->dtype, "sum", [&](auto tag) {
        using T = typename decltype(tag)::type;
        cudaStream_t s = gc_cuda_stream();
        float *pp = (float *)gc_tensor_data(part);
        gc_launch(sum_partial_kernel<T>, (unsigned)np, kThreads, 0, s, (const T *)gc_tensor_data(x), n, pp);
        GC_CUDA_LAUNCH_CHECK();
        gc_launch(sum_final_kernel<T>, 1, kThreads, 0, s, pp, np, scale, (T *)gc_tensor_data(y));
        GC_CUDA_LAUNCH_CHECK();
        return GC_OK;
    });
    gc_tensor_release(part); // stream order: reused only by later work
    return st;
}

extern "C" gc_status gc_cuda_sum_bwd(gc_tensor *gx, const gc_tensor *gy, float scale, bool acc)
{
    const int64_t n = gc_tensor_numel(gx);
    if (n == 0) return GC_OK;
    return with_types(gy->dtype, gx->dtype, "sum backward", [&](auto tv, auto tg) {
        using T = typename decltype(tv)::type;
        using G = typename decltype(tg)::type;
        gc_launch(sum_bwd_kernel<T, G>, grid_for(n), kThreads, 0, gc_cuda_stream(), (G *)gc_tensor_data(gx),
                  (const T *)gc_tensor_data(gy), n, scale, acc);
        GC_CUDA_LAUNCH_CHECK();
        return GC_OK;
    });
}

extern "C" gc_status gc_cuda_mean_dim_fwd(gc_tensor *y, const gc_tensor *x, int64_t outer, int64_t n, int64_t inner)
{
    if (outer * inner == 0) return GC_OK;
    return with_type(x->dtype, "mean_dim", [&](auto tag) {
        using T = typename decltype(tag)::type;
        cudaStream_t s = gc_cuda_stream();
        const T *xp = (const T *)gc_tensor_data(x);
        T *yp = (T *)gc_tensor_data(y);
        if (inner == 1) {
            int64_t blocks = outer < 65535 * 16 ? outer : 65535 * 16;
            gc_launch(mean_rows_kernel<T>, (unsigned)blocks, kThreads, 0, s, xp, outer, n, yp);
        } else {
            int64_t cb = (inner + 31) / 32;
            if (cb > 0x7fffffffLL) return gc_error_set(GC_ERR_SHAPE, "mean_dim: inner size %lld is too large", (long long)inner);
            int64_t gy = outer < 65535 ? outer : 65535;
            gc_launch(mean_cols_kernel<T>, dim3((unsigned)cb, (unsigned)gy), dim3(32, 8), 0, s, xp, outer, n, inner,
                      yp);
        }
        GC_CUDA_LAUNCH_CHECK();
        return GC_OK;
    });
}

extern "C" gc_status gc_cuda_mean_dim_bwd(gc_tensor *gx, const gc_tensor *gy, int64_t outer, int64_t n, int64_t inner, bool acc)
{
    const int64_t total = outer * n * inner;
    if (total == 0) return GC_OK;
    return with_types(gy->dtype, gx->dtype, "mean_dim backward", [&](auto tv, auto tg) {
        using T = typename decltype(tv)::type;
        using G = typename decltype(tg)::type;
        gc_launch(mean_dim_bwd_kernel<T, G>, grid_for(total), kThreads, 0, gc_cuda_stream(), (G *)gc_tensor_data(gx),
                  (const T *)gc_tensor_data(gy), outer, n, inner, acc);
        GC_CUDA_LAUNCH_CHECK();
        return GC_OK;
    });
}
