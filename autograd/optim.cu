// AdamW and the global gradient norm on the GPU: f32 masters, grads and moments.
#include "../runtime/gc_cuda.h"

// sum of squares of g, added to *acc: block partial sums, one atomic per block.
// (The norm feeds only the clipping coefficient; its last bits may vary run to run.)
__global__ void sumsq_kernel(const float *__restrict__ g, int64_t n, float *acc)
{
    __shared__ float part[32];
    float s = 0.0f;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        s += g[i] * g[i];
    for (int o = 16; o; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = s;
    __syncthreads();
    if (threadIdx.x < 32) {
        s = threadIdx.x < blockDim.x / 32 ? part[threadIdx.x] : 0.0f;
        for (int o = 16; o; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (threadIdx.x == 0) atomicAdd(acc, s);
    }
}

__global__ void clip_coef_kernel(float *sumsq_to_norm, float max_norm, float *coef)
{
    float norm = sqrtf(*sumsq_to_norm);
    *sumsq_to_norm = norm;
    *coef = (max_norm > 0.0f && norm > max_norm) ? max_norm / (norm + 1e-6f) : 1.0f;
}

__global__ void adamw_kernel(float *__restrict__ p, const float *__restrict__ g, float *__restrict__ m,
                             float *__restrict__ v, int64_t n, float lr, float b1, float b2, float eps, float wd,
                             float bc1, float bc2, const float *coef)
{
    float c = *coef;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float gi = g[i] * c;
        float mi = b1 * m[i] + (1.0f - b1) * gi;
        float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * (1.0f - lr * wd) - lr * (mi / bc1) / (sqrtf(vi / bc2) + eps);
    }
}

static unsigned grid_for(int64_t n)
{
    int64_t b = (n + 255) / 256;
    int64_t cap = (int64_t)gc_cuda_sm_count() * 8;
    return (unsigned)(b < cap ? (b > 0 ? b : 1) : cap);
}

extern "C" gc_status gc_cuda_sumsq_accumulate(const float *g, int64_t n, float *acc)
{
    if (n == 0) return GC_OK;
    sumsq_kernel<<<grid_for(n), 256, 0, gc_cuda_stream()>>>(g, n, acc);
    GC_CUDA_LAUNCH_CHECK();
    return GC_OK;
}

extern "C" gc_status gc_cuda_clip_coef(float *sumsq_to_norm, float max_norm, float *coef)
{
    clip_coef_kernel<<<1, 1, 0, gc_cuda_stream()>>>(sumsq_to_norm, max_norm, coef);
    GC_CUDA_LAUNCH_CHECK();
    return GC_OK;
}

extern "C" gc_status gc_cuda_adamw(float *p, const float *g, float *m, float *v, int64_t n, float lr, float b1, float b2,
                                   float eps, float wd, float bc1, float bc2, const float *coef)
{
    if (n == 0) return GC_OK;
    adamw_kernel<<<grid_for(n), 256, 0, gc_cuda_stream()>>>(p, g, m, v, n, lr, b1, b2, eps, wd, bc1, bc2, coef);
    GC_CUDA_LAUNCH_CHECK();
    return GC_OK;
}
