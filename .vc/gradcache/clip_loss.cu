// CUDA kernels of the row-blocked CLIP loss (see clip_loss.c for the math).
#include <math.h>

#include "../runtime/gc_cuda.h"
#include "../runtime/gc_launch.cuh"

static __device__ float warp_max(float v)
{
    for (int o = 16; o; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
static __device__ float warp_sum(float v)
{
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// one warp per row: log-sum-exp and the diagonal
__global__ void infonce_rows(const float *L, int64_t bt, int64_t B, int64_t r0, float *row_lse, float *diag)
{
    GC_PDL_WAIT();
    int64_t t = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (t >= bt) return;
    const float *r = L + t * B;
    float m = -INFINITY;
    for (int64_t i = lane; i < B; i += 32) m = fmaxf(m, r[i]);
    m = warp_max(m);
    float s = 0.0f;
    for (int64_t i = lane; i < B; i += 32) s += expf(r[i] - m);
    s = warp_sum(s);
    if (lane == 0) {
        row_lse[r0 + t] = m + logf(s);
        diag[r0 + t] = r[r0 + t];
    }
}

// one thread per column: the block's max and sum, merged into the running ones
__global__ void infonce_cols(const float *L, int64_t bt, int64_t B, float *col_m, float *col_s, bool first)
{
    GC_PDL_WAIT();
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= B) return;
    float m = -INFINITY;
    for (int64_t t = 0; t < bt; t++) m = fmaxf(m, L[t * B + i]);
    float s = 0.0f;
    for (int64_t t = 0; t < bt; t++) s += expf(L[t * B + i] - m);
    if (first) {
        col_m[i] = m;
        col_s[i] = s;
        return;
    }
    float nm = fmaxf(m, col_m[i]);
    col_s[i] = col_s[i] * expf(col_m[i] - nm) + s * expf(m - nm);
    col_m[i] = nm;
}

__global__ void infonce_finalize(const float *row_lse, const float *diag, const float *col_m, const float *col_s,
                                 int64_t B, float *loss)
{
    GC_PDL_WAIT();
    __shared__ float part[32];
    float acc = 0.0f;
    for (int64_t i = threadIdx.x; i < B; i += blockDim.x)
        acc += (row_lse[i] - diag[i]) + (col_m[i] + logf(col_s[i]) - diag[i]);
    acc = warp_sum(acc);
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = acc;
    __syncthreads();
    if (threadIdx.x < 32) {
        acc = threadIdx.x < blockDim.x / 32 ? part[threadIdx.x] : 0.0f;
        acc = warp_sum(acc);
        if (threadIdx.x == 0) *loss = acc / (2.0f * (float)B);
    }
}

// one block per row: L becomes s*G in place; dls_part[r0+t] = sum_i G L
__global__ void infonce_grad(float *L, int64_t B, int64_t r0, const float *row_lse, const float *col_m,
                             const float *col_s, const float *s, const float *gy, float *dls_part)
{
    GC_PDL_WAIT();
    __shared__ float part[32];
    int64_t t = blockIdx.x;
    float *r = L + t * B;
    float c = *gy / (2.0f * (float)B), sc = *s, rl = row_lse[r0 + t];
    float acc = 0.0f;
    for (int64_t i = threadIdx.x; i < B; i += blockDim.x) {
        float x = r[i];
        float g = c * (expf(x - rl) + expf(x - (col_m[i] + logf(col_s[i]))) - (r0 + t == i ? 2.0f : 0.0f));
        acc += g * x;
        r[i] = g * sc;
    }
    acc = warp_sum(acc);
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = acc;
    __syncthreads();
    if (threadIdx.x < 32) {
        acc = threadIdx.x < blockDim.x / 32 ? part[threadIdx.x] : 0.0f;
        acc = warp_sum(acc);
        if (threadIdx.x == 0) dls_part[r0 + t] = acc;
    }
}

extern "C" gc_status gc_cuda_infonce_stats(const float *L, int64_t bt, int64_t B, int64_t r0, float *row_lse,
                                           float *diag, float *col_m, float *col_s, bool first)
{
    cudaStream_t st = gc_cuda_stream();
    gc_launch(infonce_rows, (unsigned)((bt + 7) / 8), 256, 0, st, L, bt, B, r0, row_lse, diag);
    GC_CUDA_LAUNCH_CHECK();
    gc_launch(infonce_cols, (unsigned)((B + 255) / 256), 256, 0, st, L, bt, B, col_m, col_s, first);
    GC_CUDA_LAUNCH_CHECK();
    return GC_OK;
}

extern "C" gc_status gc_cuda_infonce_finalize(const float *row_lse, const float *diag, const float *col_m,
                                              const float *col_s, int64_t B, float *loss)
{
    gc_launch(infonce_finalize, 1, 1024, 0, gc_cuda_stream(), row_lse, diag, col_m, col_s, B, loss);
    GC_CUDA_LAUNCH_CHECK();
    return GC_OK;
}

extern "C" gc_status gc_cuda_infonce_grad(float *L, int64_t bt, int64_t B, int64_t r0, const float *row_lse,
                                          const float *col_m, const float *col_s, const float *s, const float *gy,
                                          float *dls_part)
{
    gc_launch(infonce_grad, (unsigned)bt, 256, 0, gc_cuda_stream(), L, B, r0, row_lse, col_m, col_s, s, gy, dls_part);
    GC_CUDA_LAUNCH_CHECK();
    return GC_OK;
}
