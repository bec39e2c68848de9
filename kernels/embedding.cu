// CUDA kernels of embedding and gather_rows (embedding.c has the semantics; ids are
// validated on the host before these run).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <stdint.h>

extern "C" {
#include "../runtime/gc_cuda.h"
}
#include "gc_cuda_util.cuh"

namespace {

constexpr int ROWS_PER_BLOCK = 8; // one warp per row, 256 threads

// out[p, :] = src[p * rows_per_item + ids[p], :] as raw words W (uint4 when the rows and
// pointers are 16-byte aligned, else the element size): a dtype-agnostic row copy.
template <typename W, typename I>
__global__ void gather_kernel(const W *__restrict__ src, const I *__restrict__ ids, int64_t n, int64_t rows_per_item,
                              int64_t words, W *__restrict__ out)
{
    int64_t p = (int64_t)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (p >= n) return;
    const W *s = src + (p * rows_per_item + (int64_t)ids[p]) * words;
    W *o = out + p * words;
    for (int64_t c = lane; c < words; c += 32) o[c] = s[c];
}

// Grid (U, ceil(D / 32)), block (32, 8): block (u, tile) adds the gradient rows of unique
// id u for 32 columns; row lane ty takes the group's positions ty, ty+8, ... and the 8
// lanes are summed in order, so the result does not depend on scheduling.
// groups = [U ids | U+1 offsets | N positions].
template <typename T, typename G>
__global__ void embedding_bwd_kernel(const T *__restrict__ gy, const int64_t *__restrict__ groups, int64_t U,
                                     int64_t D, G *__restrict__ gt)
{
    __shared__ float s[8][33];
    int tx = threadIdx.x, ty = threadIdx.y;
    int64_t u = blockIdx.x, c = (int64_t)blockIdx.y * 32 + tx;
    const int64_t *off = groups + U, *pos = groups + 2 * U + 1;
    float a = 0.0f;
    if (c < D)
        for (int64_t k = off[u] + ty; k < off[u + 1]; k += 8) a += to_f(gy[pos[k] * D + c]);
    s[ty][tx] = a;
    __syncthreads();
    if (ty == 0 && c < D) {
        float t = 0.0f;
        for (int k = 0; k < 8; k++) t += s[k][tx];
        G *o = gt + groups[u] * D + c;
        *o = from_f<G>(to_f(*o) + t);
    }
}

// gx[b, idx[b], :] += gy[b, :]; one warp per b (distinct rows: no races)
template <typename T, typename G, typename I>
__global__ void gather_rows_bwd_kernel(const T *__restrict__ gy, const I *__restrict__ idx, int64_t B, int64_t L,
                                       int64_t D, G *__restrict__ gx)
{
    int64_t b = (int64_t)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (b >= B) return;
    G *o = gx + (b * L + (int64_t)idx[b]) * D;
    const T *g = gy + b * D;
    for (int64_t c = lane; c < D; c += 32) o[c] = from_f<G>(to_f(o[c]) + to_f(g[c]));
}

unsigned row_blocks(int64_t n) { return (unsigned)((n + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK); }

template <typename W>
gc_status gather_words(const void *src, const void *ids, gc_dtype id_dt, int64_t n, int64_t rows_per_item,
                       int64_t words, void *out)
{
    if (id_dt == GC_I32)
        gather_kernel<W, int32_t><<<row_blocks(n), 256, 0, gc_cuda_stream()>>>(
            (const W *)src, (const int32_t *)ids, n, rows_per_item, words, (W *)out);
    else
        gather_kernel<W, int64_t><<<row_blocks(n), 256, 0, gc_cuda_stream()>>>(
            (const W *)src, (const int64_t *)ids, n, rows_per_item, words, (W *)out);
    GC_CUDA_LAUNCH_CHECK();
    return GC_OK;
}

template <typename T, typename G> gc_status embedding_bwd_typed(const void *gy, const int64_t *groups, int64_t U,
                                                                int64_t D, void *gt)
{
    dim3 grid((unsigned)U, (unsigned)((D + 31) / 32)), block(32, 8);
    embedding_bwd_kernel<T, G><<<grid, block, 0, gc_cuda_stream()>>>((const T *)gy, groups, U, D, (G *)gt);
    GC_CUDA_LAUNCH_CHECK();
    return GC_OK;
}

template <typename T, typename G> gc_status gather_rows_bwd_typed(const void *gy, const void *idx, gc_dtype id_dt,
                                                                  int64_t B, int64_t L, int64_t D, void *gx)
{
    if (id_dt == GC_I32)
        gather_rows_bwd_kernel<T, G, int32_t><<<row_blocks(B), 256, 0, gc_cuda_stream()>>>(
            (const T *)gy, (const int32_t *)idx, B, L, D, (G *)gx);
    else
        gather_rows_bwd_kernel<T, G, int64_t><<<row_blocks(B), 256, 0, gc_cuda_stream()>>>(
            (const T *)gy, (const int64_t *)idx, B, L, D, (G *)gx);
    GC_CUDA_LAUNCH_CHECK();
    return GC_OK;
}

} // namespace

extern "C" gc_status gc_cuda_gather_fwd(const void *src, gc_dtype dt, const void *ids, gc_dtype id_dt, int64_t n,
                                        int64_t rows_per_item, int64_t D, void *out)
{
    if (n == 0 || D == 0) return GC_OK;
    size_t es = gc_dtype_size(dt), row = (size_t)D * es;
    if (id_dt != GC_I32 && id_dt != GC_I64)
        return gc_error_set(GC_ERR_DTYPE, "gather on cuda: index dtype %s", gc_dtype_name(id_dt));
    if (row % 16 == 0 && ((uintptr_t)src & 15u) == 0 && ((uintptr_t)out & 15u) == 0)
        return gather_words<uint4>(src, ids, id_dt, n, rows_per_item, (int64_t)(row / 16), out);
    switch (es) {
    case 2: return gather_words<uint16_t>(src, ids, id_dt, n, rows_per_item, D, out);
    case 4: return gather_words<uint32_t>(src, ids, id_dt, n, rows_per_item, D, out);
    default: return gc_error_set(GC_ERR_DTYPE, "gather on cuda: dtype %s", gc_dtype_name(dt));
    }
}

extern "C" gc_status gc_cuda_embedding_bwd(const void *gy, gc_dtype dt, const int64_t *groups, int64_t U, int64_t D,
                                           void *gt, gc_dtype gt_dt)
{
    if (U == 0 || D == 0) return GC_OK;
    if (dt == GC_F32 && gt_dt == GC_F32) return embedding_bwd_typed<float, float>(gy, groups, U, D, gt);
    if (dt == GC_BF16 && gt_dt == GC_F32) return embedding_bwd_typed<__nv_bfloat16, float>(gy, groups, U, D, gt);
    if (dt == GC_BF16 && gt_dt == GC_BF16) return embedding_bwd_typed<__nv_bfloat16, __nv_bfloat16>(gy, groups, U, D, gt);
    if (dt == GC_F32 && gt_dt == GC_BF16) return embedding_bwd_typed<float, __nv_bfloat16>(gy, groups, U, D, gt);
    return gc_error_set(GC_ERR_DTYPE, "embedding backward on cuda: %s gradient into %s", gc_dtype_name(dt),
                        gc_dtype_name(gt_dt));
}

extern "C" gc_status gc_cuda_gather_rows_bwd(const void *gy, gc_dtype dt, const void *idx, gc_dtype id_dt, int64_t B,
                                             int64_t L, int64_t D, void *gx, gc_dtype gx_dt)
{
    if (B == 0 || D == 0) return GC_OK;
    if (id_dt != GC_I32 && id_dt != GC_I64)
        return gc_error_set(GC_ERR_DTYPE, "gather_rows backward on cuda: index dtype %s", gc_dtype_name(id_dt));
    if (dt == GC_F32 && gx_dt == GC_F32) return gather_rows_bwd_typed<float, float>(gy, idx, id_dt, B, L, D, gx);
    if (dt == GC_BF16 && gx_dt == GC_F32)
        return gather_rows_bwd_typed<__nv_bfloat16, float>(gy, idx, id_dt, B, L, D, gx);
    if (dt == GC_BF16 && gx_dt == GC_BF16)
        return gather_rows_bwd_typed<__nv_bfloat16, __nv_bfloat16>(gy, idx, id_dt, B, L, D, gx);
    if (dt == GC_F32 && gx_dt == GC_BF16)
        return gather_rows_bwd_typed<float, __nv_bfloat16>(gy, idx, id_dt, B, L, D, gx);
    return gc_error_set(GC_ERR_DTYPE, "gather_rows backward on cuda: %s gradient into %s", gc_dtype_name(dt),
                        gc_dtype_name(gx_dt));
}
