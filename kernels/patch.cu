// Patch unfold on the GPU: one thread per output element (coalesced writes) for the
// forward, one per pixel for the backward (the map is a bijection: no atomics).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

extern "C" {
#include "../runtime/gc_cuda.h"
#include "gc_ops.h"
}
#include "gc_cuda_util.cuh"

namespace {

// Pixel offset in x [B, C, H, W] of element e of patches [B, N, C*P*P].
__device__ __forceinline__ int64_t pixel_of(int64_t e, int64_t C, int64_t H, int64_t W, int64_t P)
{
    const int64_t PP = P * P, K = C * PP, GW = W / P, N = (H / P) * GW;
    const int64_t k = e % K, bn = e / K, n = bn % N, b = bn / N;
    const int64_t c = k / PP, yx = k - c * PP, y = yx / P, x = yx - y * P;
    const int64_t gy = n / GW, gx = n - gy * GW;
    return ((b * C + c) * H + gy * P + y) * W + gx * P + x;
}

// Patch offset of pixel e of x [B, C, H, W].
__device__ __forceinline__ int64_t patch_of(int64_t e, int64_t C, int64_t H, int64_t W, int64_t P)
{
    const int64_t w = e % W, r = e / W, h = r % H, bc = r / H, c = bc % C, b = bc / C;
    const int64_t GW = W / P, N = (H / P) * GW, K = C * P * P;
    return (b * N + (h / P) * GW + w / P) * K + c * P * P + (h % P) * P + w % P;
}

template <typename T>
__global__ void unfold_fwd_kernel(T *__restrict__ y, const T *__restrict__ x, int64_t total, int64_t C, int64_t H, int64_t W,
                                  int64_t P)
{
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x)
        y[e] = x[pixel_of(e, C, H, W, P)];
}

template <typename T, typename G>
__global__ void unfold_bwd_kernel(G *__restrict__ gx, const T *__restrict__ gy, int64_t total, int64_t C, int64_t H, int64_t W,
                                  int64_t P, bool acc)
{
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
        float v = to_f(gy[patch_of(e, C, H, W, P)]);
        if (acc) v += to_f(gx[e]);
        gx[e] = from_f<G>(v);
    }
}

} // namespace

extern "C" gc_status gc_cuda_unfold_patches_fwd(gc_tensor *y, const gc_tensor *x, int64_t B, int64_t C, int64_t H, int64_t W,
                                                int64_t P)
{
    const int64_t total = B * C * H * W;
    if (total == 0) return GC_OK;
    return with_type(x->dtype, "unfold_patches", [&](auto tag) {
        using T = typename decltype(tag)::type;
        unfold_fwd_kernel<T><<<grid_for(total), kThreads, 0, gc_cuda_stream()>>>((T *)gc_tensor_data(y),
                                                                               (const T *)gc_tensor_data(x), total, C, H, W, P);
        GC_CUDA_LAUNCH_CHECK();
        return GC_OK;
    });
}

extern "C" gc_status gc_cuda_unfold_patches_bwd(gc_tensor *gx, const gc_tensor *gy, int64_t B, int64_t C, int64_t H, int64_t W,
                                                int64_t P, bool acc)
{
    const int64_t total = B * C * H * W;
    if (total == 0) return GC_OK;
    return with_type(gy->dtype, "unfold_patches backward", [&](auto tv) {
        using T = typename decltype(tv)::type;
        return with_type(gx->dtype, "unfold_patches backward", [&](auto tg) {
            using G = typename decltype(tg)::type;
            unfold_bwd_kernel<T, G><<<grid_for(total), kThreads, 0, gc_cuda_stream()>>>(
                (G *)gc_tensor_data(gx), (const T *)gc_tensor_data(gy), total, C, H, W, P, acc);
            GC_CUDA_LAUNCH_CHECK();
            return GC_OK;
        });
    });
}
