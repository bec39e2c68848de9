// Dropout on the GPU. Each thread takes one group of 4 elements of one sample
// (e = 4g .. 4g+3): one Philox call gives the 4 words that gc_rand_uniform would draw
// for them one by one (counter (e/4, sample, op, step), word e%4, top 24 bits), so the
// mask is bitwise the CPU's.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

extern "C" {
#include "../runtime/gc_cuda.h"
#include "../runtime/gc_rng.h"
#include "gc_ops.h"
}
#include "gc_cuda_util.cuh"

namespace {

// y (+)= keep ? x * scale : 0, x and y [rows, per_sample] contiguous. X: input (x or gy),
// Y: output (y or gx).
template <typename X, typename Y>
__global__ void dropout_kernel(Y *__restrict__ y, const X *__restrict__ x, uint64_t seed, uint32_t step, uint32_t op,
                               int64_t sample_offset, int64_t rows, int64_t per_sample, double p, float scale, bool acc)
{
    GC_PDL_WAIT();
    const int64_t groups = (per_sample + 3) / 4, total = rows * groups;
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    for (int64_t q = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; q < total; q += (int64_t)gridDim.x * blockDim.x) {
        const int64_t b = q / groups, g = q - b * groups;
        const uint32_t ctr[4] = {(uint32_t)g, (uint32_t)(sample_offset + b), op, step}; // = gc_rand_uniform's counter
        uint32_t r[4];
        gc_philox4x32_10(key, ctr, r);
        const int64_t base = b * per_sample + g * 4;
#pragma unroll
        for (int w = 0; w < 4; w++) {
            if (g * 4 + w >= per_sample) break;
            const float u = (float)(r[w] >> 8) * (1.0f / 16777216.0f); // = gc_rand_uniform(..., e = 4g + w)
            float v = (double)u >= p ? to_f(x[base + w]) * scale : 0.0f;
            if (acc) v += to_f(y[base + w]);
            y[base + w] = from_f<Y>(v);
        }
    }
}

// Forward (y = dropout(x)) and backward (y = gx, x = gy) alike: gx may be f32 while gy is
// bf16 (a leaf's gradient).
gc_status dropout_launch(gc_tensor *y, const gc_tensor *x, uint64_t seed, uint32_t step, uint32_t op, int64_t sample_offset,
                         int64_t rows, int64_t per_sample, double p, float scale, bool acc)
{
    const int64_t total = rows * ((per_sample + 3) / 4);
    if (total == 0) return GC_OK;
    int64_t blocks = (total + kThreads - 1) / kThreads, cap = (int64_t)gc_cuda_sm_count() * 32;
    if (blocks > cap) blocks = cap;
    return with_type(x->dtype, "dropout", [&](auto tx) {
        using X = typename decltype(tx)::type;
        return with_type(y->dtype, "dropout", [&](auto ty) {
            using Y = typename decltype(ty)::type;
            gc_launch(dropout_kernel<X, Y>, (unsigned)blocks, kThreads, 0, gc_cuda_stream(), (Y *)gc_tensor_data(y),
                      (const X *)gc_tensor_data(x), seed, step, op, sample_offset, rows, per_sample, p, scale, acc);
            GC_CUDA_LAUNCH_CHECK();
            return GC_OK;
        });
    });
}

} // namespace

extern "C" gc_status gc_cuda_dropout_fwd(gc_tensor *y, const gc_tensor *x, uint64_t seed, uint32_t step, uint32_t op,
                                         int64_t sample_offset, int64_t rows, int64_t per_sample, double p, float scale)
{
    return dropout_launch(y, x, seed, step, op, sample_offset, rows, per_sample, p, scale, false);
}

extern "C" gc_status gc_cuda_dropout_bwd(gc_tensor *gx, const gc_tensor *gy, uint64_t seed, uint32_t step, uint32_t op,
                                         int64_t sample_offset, int64_t rows, int64_t per_sample, double p, float scale,
                                         bool acc)
{
    return dropout_launch(gx, gy, seed, step, op, sample_offset, rows, per_sample, p, scale, acc);
}
