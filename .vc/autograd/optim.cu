// AdamW and the global gradient norm on the GPU, over every parameter in three
// launches: the tensors are cut into chunks of CHUNK elements, listed once in a
// table on the device (pointers are stable for the optimizer's life).
//   1. sumsq: one block per chunk writes its partial sum of squares (no atomics:
//      the norm, and so the clipping, is bitwise reproducible);
//   2. finalize: one block sums the partials in a fixed order -> norm, clip coefficient;
//   3. adamw: one block per chunk updates p, m, v and writes the bf16 compute copy.
#include "../runtime/gc_cuda.h"
#include "gc_optim_cuda.h"
#include "../runtime/gc_launch.cuh"

#include <cuda_bf16.h>

__global__ void sumsq_chunks(const gc_adam_tensor *ts, const gc_adam_chunk *cs, float *partial)
{
    GC_PDL_WAIT();
    __shared__ float part[32];
    const gc_adam_chunk c = cs[blockIdx.x];
    const gc_adam_tensor t = ts[c.t];
    int64_t end = c.start + GC_ADAM_CHUNK < t.n ? c.start + GC_ADAM_CHUNK : t.n;
    float s = 0.0f;
    for (int64_t i = c.start + threadIdx.x; i < end; i += blockDim.x) s += t.g[i] * t.g[i];
    for (int o = 16; o; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = s;
    __syncthreads();
    if (threadIdx.x < 32) {
        s = threadIdx.x < blockDim.x / 32 ? part[threadIdx.x] : 0.0f;
        for (int o = 16; o; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (threadIdx.x == 0) partial[blockIdx.x] = s;
    }
}

__global__ void norm_finalize(const float *partial, int n, float max_norm, float *norm, float *coef)
{
    GC_PDL_WAIT();
    __shared__ double part[32];
    double s = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += partial[i];
    for (int o = 16; o; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0.0;
        for (int w = 0; w < (int)(blockDim.x / 32); w++) t += part[w];
        float nv = (float)sqrt(t);
        *norm = nv;
        *coef = (max_norm > 0.0f && nv > max_norm) ? max_norm / (nv + 1e-6f) : 1.0f;
    }
}

__global__ void adamw_chunks(const gc_adam_tensor *ts, const gc_adam_chunk *cs, float lr, float b1, float b2, float eps,
                             float wd, float bc1, float bc2, const float *coef)
{
    GC_PDL_WAIT();
    const gc_adam_chunk c = cs[blockIdx.x];
    const gc_adam_tensor t = ts[c.t];
    const float k = *coef;
    int64_t end = c.start + GC_ADAM_CHUNK < t.n ? c.start + GC_ADAM_CHUNK : t.n;
    for (int64_t i = c.start + threadIdx.x; i < end; i += blockDim.x) {
        float g = t.g[i] * k;
        float m = b1 * t.m[i] + (1.0f - b1) * g;
        float v = b2 * t.v[i] + (1.0f - b2) * g * g;
        t.m[i] = m;
        t.v[i] = v;
        float p = t.p[i] * (1.0f - lr * t.wd_scale * wd) - lr * (m / bc1) / (sqrtf(v / bc2) + eps);
        t.p[i] = p;
        if (t.out) ((__nv_bfloat16 *)t.out)[i] = __float2bfloat16_rn(p);
    }
}

extern "C" gc_status gc_cuda_adamw_multi(const gc_adam_tensor *ts, const gc_adam_chunk *cs, int n_chunks, float *partial,
                                         float *norm, float *coef, float max_norm, float lr, float b1, float b2, float eps,
                                         float wd, float bc1, float bc2)
{
    if (n_chunks == 0) return GC_OK;
    cudaStream_t s = gc_cuda_stream();
    gc_launch(sumsq_chunks, n_chunks, 256, 0, s, ts, cs, partial);
    GC_CUDA_LAUNCH_CHECK();
    gc_launch(norm_finalize, 1, 1024, 0, s, partial, n_chunks, max_norm, norm, coef);
    GC_CUDA_LAUNCH_CHECK();
    gc_launch(adamw_chunks, n_chunks, 256, 0, s, ts, cs, lr, b1, b2, eps, wd, bc1, bc2, coef);
    GC_CUDA_LAUNCH_CHECK();
    return GC_OK;
}
