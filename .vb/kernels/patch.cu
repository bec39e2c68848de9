// Patch unfold on the GPU: one thread per patch row, P pixels that are contiguous both
// in the image and in the patch vector (16-byte copies when the sizes allow). Index math
// once per row, not per element: per-element 64-bit divisions made the forward ten
// times slower than its memory traffic. The map is a bijection: no atomics backward.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

extern "C" {
#include "../runtime/gc_cuda.h"
#include "gc_ops.h"
}
#include "gc_cuda_util.cuh"

namespace {

// Row t of the patches [B, N, C*P*P] seen as [B*N*C*P, P] (t = ((b N + n) C + c) P + y)
// starts at t * P there; in x [B, C, H, W] it is row gy P + y of channel c of image b,
// from column gx P (n = gy (W / P) + gx).
__device__ __forceinline__ int64_t pixel_row(int64_t t, int64_t C, int64_t H, int64_t W, int64_t P)
{
    const int64_t y = t % P, q = t / P, c = q % C, bn = q / C;
    const int64_t GW = W / P, N = (H / P) * GW, n = bn % N, b = bn / N, gy = n / GW, gx = n - gy * GW;
    return ((b * C + c) * H + gy * P + y) * W + gx * P;
}

// VB: elements a copy moves (16 bytes when P, W and both pointers allow it, else 1)
template <typename T, int VB>
__global__ void unfold_fwd_kernel(T *__restrict__ y, const T *__restrict__ x, int64_t rows, int64_t C, int64_t H,
                                  int64_t W, int64_t P)
{
    GC_PDL_WAIT();
    for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < rows; t += (int64_t)gridDim.x * blockDim.x) {
        const T *src = x + pixel_row(t, C, H, W, P);
        T *dst = y + t * P;
        if constexpr (VB > 1)
            for (int64_t i = 0; i < P; i += VB) *reinterpret_cast<uint4 *>(dst + i) = *reinterpret_cast<const uint4 *>(src + i);
        else
            for (int64_t i = 0; i < P; i++) dst[i] = src[i];
    }
}

template <typename T, typename G>
__global__ void unfold_bwd_kernel(G *__restrict__ gx, const T *__restrict__ gy, int64_t rows, int64_t C, int64_t H,
                                  int64_t W, int64_t P, bool acc)
{
    GC_PDL_WAIT();
    for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < rows; t += (int64_t)gridDim.x * blockDim.x) {
        G *dst = gx + pixel_row(t, C, H, W, P);
        const T *src = gy + t * P;
        for (int64_t i = 0; i < P; i++) dst[i] = from_f<G>(to_f(src[i]) + (acc ? to_f(dst[i]) : 0.0f));
    }
}

bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

} // namespace

extern "C" gc_status gc_cuda_unfold_patches_fwd(gc_tensor *y, const gc_tensor *x, int64_t B, int64_t C, int64_t H, int64_t W,
                                                int64_t P)
{
    const int64_t rows = B * C * H * W / P;
    if (rows == 0) return GC_OK;
    return with_type(x->dtype, "unfold_patches", [&](auto tag) {
        using T = typename decltype(tag)::type;
        constexpr int VB = 16 / sizeof(T);
        T *py = (T *)gc_tensor_data(y);
        const T *px = (const T *)gc_tensor_data(x);
        if (P % VB == 0 && W % VB == 0 && aligned16(py) && aligned16(px))
            gc_launch(unfold_fwd_kernel<T, VB>, grid_for(rows), kThreads, 0, gc_cuda_stream(), py, px, rows, C, H, W,
                      P);
        else
            gc_launch(unfold_fwd_kernel<T, 1>, grid_for(rows), kThreads, 0, gc_cuda_stream(), py, px, rows, C, H, W, P);
        GC_CUDA_LAUNCH_CHECK();
        return GC_OK;
    });
}

extern "C" gc_status gc_cuda_unfold_patches_bwd(gc_tensor *gx, const gc_tensor *gy, int64_t B, int64_t C, int64_t H, int64_t W,
                                                int64_t P, bool acc)
{
    const int64_t rows = B * C * H * W / P;
    if (rows == 0) return GC_OK;
    return with_types(gy->dtype, gx->dtype, "unfold_patches backward", [&](auto tv, auto tg) {
        using T = typename decltype(tv)::type;
        using G = typename decltype(tg)::type;
        gc_launch(unfold_bwd_kernel<T, G>, grid_for(rows), kThreads, 0, gc_cuda_stream(), (G *)gc_tensor_data(gx),
                  (const T *)gc_tensor_data(gy), rows, C, H, W, P, acc);
        GC_CUDA_LAUNCH_CHECK();
        return GC_OK;
    });
}
