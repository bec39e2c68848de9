// Cross entropy on the GPU: one block per row for the logsumexp, one block for the
// mean over rows (fixed order: deterministic), elementwise backward.
// Targets were validated on the host (loss.c) before these run.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

extern "C" {
#include "../runtime/gc_cuda.h"
#include "gc_ops.h"
}
#include "gc_cuda_util.cuh"

namespace {

template <typename F> gc_status with_index(gc_dtype dt, const char *what, F &&f)
{
    switch (dt) {
    case GC_I32: return f(Tag<int32_t>{});
    case GC_I64: return f(Tag<int64_t>{});
    default: return gc_error_set(GC_ERR_DTYPE, "%s: targets must be i32 or i64, not %s", what, gc_dtype_name(dt));
    }
}

// Fixed-order tree reductions over the block; every thread gets the result.
__device__ __forceinline__ float block_max(float v, float *red)
{
    red[threadIdx.x] = v;
    __syncthreads();
    for (int w = kThreads / 2; w > 0; w >>= 1) {
        if ((int)threadIdx.x < w) red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + w]);
        __syncthreads();
    }
    float r = red[0];
    __syncthreads();
    return r;
}

__device__ __forceinline__ float block_sum(float v, float *red)
{
    red[threadIdx.x] = v;
    __syncthreads();
    for (int w = kThreads / 2; w > 0; w >>= 1) {
        if ((int)threadIdx.x < w) red[threadIdx.x] += red[threadIdx.x + w];
        __syncthreads();
    }
    float r = red[0];
    __syncthreads();
    return r;
}

// One block per row: lse[n] and the row's loss lse - x[n, t[n]] -> rowloss[n]
template <typename T, typename I>
__global__ void ce_rows_kernel(const T *__restrict__ x, const I *__restrict__ t, int64_t N, int64_t C, float *__restrict__ lse,
                               float *__restrict__ rowloss)
{
    GC_PDL_WAIT();
    __shared__ float red[kThreads];
    for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
        const T *r = x + n * C;
        float m = -INFINITY;
        for (int64_t c = threadIdx.x; c < C; c += kThreads) m = fmaxf(m, to_f(r[c]));
        m = block_max(m, red);
        float s = 0.0f;
        for (int64_t c = threadIdx.x; c < C; c += kThreads) s += expf(to_f(r[c]) - m);
        s = block_sum(s, red);
        if (threadIdx.x == 0) {
            float l = m + logf(s);
            lse[n] = l;
            rowloss[n] = l - to_f(r[(int64_t)t[n]]);
        }
    }
}

// One block: y[0] = mean of rowloss
template <typename T> __global__ void ce_mean_kernel(const float *__restrict__ rowloss, int64_t N, T *__restrict__ y)
{
    GC_PDL_WAIT();
    __shared__ float red[kThreads];
    float s = 0.0f;
    for (int64_t n = threadIdx.x; n < N; n += kThreads) s += rowloss[n];
    s = block_sum(s, red);
    if (threadIdx.x == 0) y[0] = from_f<T>(s / (float)N);
}

template <typename T, typename G, typename I>
__global__ void ce_bwd_kernel(G *__restrict__ gx, const T *__restrict__ gy, const T *__restrict__ x, const float *__restrict__ lse,
                              const I *__restrict__ t, int64_t N, int64_t C, bool acc)
{
    GC_PDL_WAIT();
    const float g = to_f(gy[0]) / (float)N;
    const int64_t total = N * C;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
        int64_t n = e / C, c = e - n * C;
        float v = (expf(to_f(x[e]) - lse[n]) - (c == (int64_t)t[n] ? 1.0f : 0.0f)) * g;
        if (acc) v += to_f(gx[e]);
        gx[e] = from_f<G>(v);
    }
}

} // namespace

extern "C" gc_status gc_cuda_cross_entropy_fwd(gc_tensor *y, gc_tensor *lse, const gc_tensor *logits, const gc_tensor *targets)
{
    const int64_t N = logits->shape[0], C = logits->shape[1];
    gc_tensor *rowloss = gc_tensor_new(GC_F32, logits->device, 1, &N);
    if (!rowloss) return GC_PENDING();
    gc_status st = with_type(logits->dtype, "cross_entropy", [&](auto tv) {
        using T = typename decltype(tv)::type;
        return with_index(targets->dtype, "cross_entropy", [&](auto ti) {
            using I = typename decltype(ti)::type;
            cudaStream_t s = gc_cuda_stream();
            if (N > 0) {
                int64_t blocks = N < 65535 * 16 ? N : 65535 * 16;
                gc_launch(ce_rows_kernel<T, I>, (unsigned)blocks, kThreads, 0, s, (const T *)gc_tensor_data(logits),
                          (const I *)gc_tensor_data(targets), N, C, (float *)gc_tensor_data(lse),
                          (float *)gc_tensor_data(rowloss));
                GC_CUDA_LAUNCH_CHECK();
            }
            gc_launch(ce_mean_kernel<T>, 1, kThreads, 0, s, (const float *)gc_tensor_data(rowloss), N,
                      (T *)gc_tensor_data(y));
            GC_CUDA_LAUNCH_CHECK();
            return GC_OK;
        });
    });
    gc_tensor_release(rowloss); // stream order: reused only by later work
    return st;
}

extern "C" gc_status gc_cuda_cross_entropy_bwd(gc_tensor *gx, const gc_tensor *gy, const gc_tensor *logits, const gc_tensor *lse,
                                               const gc_tensor *targets, bool acc)
{
    const int64_t N = logits->shape[0], C = logits->shape[1];
    if (N * C == 0) return GC_OK;
    return with_type(logits->dtype, "cross_entropy backward", [&](auto tv) {
        using T = typename decltype(tv)::type;
        return with_type(gx->dtype, "cross_entropy backward", [&](auto tg) {
            using G = typename decltype(tg)::type;
            return with_index(targets->dtype, "cross_entropy backward", [&](auto ti) {
                using I = typename decltype(ti)::type;
                gc_launch(ce_bwd_kernel<T, G, I>, grid_for(N * C), kThreads, 0, gc_cuda_stream(),
                          (G *)gc_tensor_data(gx), (const T *)gc_tensor_data(gy), (const T *)gc_tensor_data(logits),
                          (const float *)gc_tensor_data(lse), (const I *)gc_tensor_data(targets), N, C, acc);
                GC_CUDA_LAUNCH_CHECK();
                return GC_OK;
            });
        });
    });
}
