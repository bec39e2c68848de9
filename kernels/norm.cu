// CUDA kernels of the normalisations (norm.c has the math and the CPU reference).
// One warp per row, eight rows per 256-thread block; rows are read in 16-byte vectors
// when D and every pointer allow it (D % 8 for bf16, % 4 for f32), else element-wise.
// Statistics and sums in f32. The dw/db reduction is deterministic: each block sums a
// fixed chunk of rows for 32 columns into an f32 partial, and a second kernel adds the
// partials of a column in a fixed order (no atomics).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <stdint.h>

extern "C" {
#include "../runtime/gc_cuda.h"
}
#include "gc_cuda_util.cuh"

namespace {

enum { NORM_LAYER = 0, NORM_RMS = 1, NORM_L2 = 2 }; // as in norm.c

constexpr int ROWS_PER_BLOCK = 8; // warps per 256-thread block

// x, y [R, D]; w, b [D] or NULL; mean, stat [R] or NULL (not recording).
template <typename T, int V>
__global__ void norm_fwd_kernel(int mode, const T *__restrict__ x, const T *__restrict__ w, const T *__restrict__ b,
                                T *__restrict__ y, float *__restrict__ mean, float *__restrict__ stat, int64_t R,
                                int64_t D, float eps)
{
    int64_t r = (int64_t)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (r >= R) return;
    const T *xr = x + r * D;
    T *yr = y + r * D;
    float f[V], m = 0.0f;
    if (mode == NORM_LAYER) {
        float s = 0.0f;
        for (int64_t c = (int64_t)lane * V; c < D; c += 32 * V) {
            load_v<V>(xr + c, f);
#pragma unroll
            for (int k = 0; k < V; k++) s += f[k];
        }
        m = warp_sum(s) / (float)D;
    }
    float ss = 0.0f; // two passes: the variance about the mean, not E[x^2] - m^2
    for (int64_t c = (int64_t)lane * V; c < D; c += 32 * V) {
        load_v<V>(xr + c, f);
#pragma unroll
        for (int k = 0; k < V; k++) ss += (f[k] - m) * (f[k] - m);
    }
    ss = warp_sum(ss);
    float scale, st;
    if (mode == NORM_L2) {
        st = sqrtf(ss);
        scale = 1.0f / fmaxf(st, eps);
    } else {
        scale = rsqrtf(ss / (float)D + eps);
        st = scale;
    }
    if (lane == 0) {
        if (mean) mean[r] = m;
        if (stat) stat[r] = st;
    }
    for (int64_t c = (int64_t)lane * V; c < D; c += 32 * V) {
        float o[V], wv[V], bv[V];
        load_v<V>(xr + c, f);
        if (w) load_v<V>(w + c, wv);
        if (b) load_v<V>(b + c, bv);
#pragma unroll
        for (int k = 0; k < V; k++) o[k] = (f[k] - m) * scale * (w ? wv[k] : 1.0f) + (b ? bv[k] : 0.0f);
        store_v<V>(yr + c, o, false);
    }
}

// gx [R, D] (+)= the input gradient (see norm.c for the formulas)
template <typename T, typename G, int V>
__global__ void norm_bwd_kernel(int mode, const T *__restrict__ x, const T *__restrict__ w, const T *__restrict__ gy,
                                const float *__restrict__ mean, const float *__restrict__ stat, G *__restrict__ gx,
                                bool acc, int64_t R, int64_t D, float eps)
{
    int64_t r = (int64_t)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (r >= R) return;
    const T *xr = x + r * D, *gr = gy + r * D;
    G *dr = gx + r * D;
    float m = mode == NORM_LAYER ? mean[r] : 0.0f, scale;
    bool clipped = false;
    if (mode == NORM_L2) {
        clipped = stat[r] < eps;
        scale = 1.0f / fmaxf(stat[r], eps);
    } else {
        scale = stat[r];
    }
    float xv[V], gv[V], wv[V];
    float sg = 0.0f, sgx = 0.0f;
    for (int64_t c = (int64_t)lane * V; c < D; c += 32 * V) {
        load_v<V>(xr + c, xv);
        load_v<V>(gr + c, gv);
        if (w) load_v<V>(w + c, wv);
#pragma unroll
        for (int k = 0; k < V; k++) {
            float g = gv[k] * (w ? wv[k] : 1.0f);
            sg += g;
            sgx += g * (xv[k] - m) * scale;
        }
    }
    sg = warp_sum(sg);
    sgx = warp_sum(sgx);
    float a = 0.0f, cc;
    if (mode == NORM_LAYER) {
        a = sg / (float)D;
        cc = sgx / (float)D;
    } else if (mode == NORM_RMS) {
        cc = sgx / (float)D;
    } else {
        cc = clipped ? 0.0f : sgx;
    }
    for (int64_t c = (int64_t)lane * V; c < D; c += 32 * V) {
        float o[V];
        load_v<V>(xr + c, xv);
        load_v<V>(gr + c, gv);
        if (w) load_v<V>(w + c, wv);
#pragma unroll
        for (int k = 0; k < V; k++) {
            float g = gv[k] * (w ? wv[k] : 1.0f);
            o[k] = scale * (g - a - (xv[k] - m) * scale * cc);
        }
        store_v<V>(dr + c, o, acc);
    }
}

// Block (32, 8) = 32 groups of V columns x 8 row lanes over rows [chunk*chunk_rows,
// +chunk_rows): part_w[chunk, c] = sum gy xh, part_b[chunk, c] = sum gy, in a fixed order
// (lane ty takes rows r0 + ty, r0 + ty + 8, ...; the 8 lanes are added in order), the same
// for every V. V = 16 bytes of T when D allows: one vector load of x and of gy per row.
// grid (chunks, ceil(D / (32 V))).
template <typename T, int V>
__global__ void norm_wb_part_kernel(int mode, const T *__restrict__ x, const T *__restrict__ gy,
                                    const float *__restrict__ mean, const float *__restrict__ stat,
                                    float *__restrict__ part_w, float *__restrict__ part_b, int64_t R, int64_t D,
                                    int64_t chunk_rows)
{
    __shared__ float sw[8][32 * V + 1], sb[8][32 * V + 1];
    int tx = threadIdx.x, ty = threadIdx.y;
    int64_t c = ((int64_t)blockIdx.y * 32 + tx) * V;
    int64_t r0 = (int64_t)blockIdx.x * chunk_rows, r1 = r0 + chunk_rows < R ? r0 + chunk_rows : R;
    float aw[V], ab[V];
#pragma unroll
    for (int k = 0; k < V; k++) aw[k] = ab[k] = 0.0f;
    if (c < D)
        for (int64_t r = r0 + ty; r < r1; r += 8) {
            float g[V], xv[V];
            load_v<V>(gy + r * D + c, g);
            load_v<V>(x + r * D + c, xv);
            float m = mode == NORM_LAYER ? mean[r] : 0.0f, st = stat[r];
#pragma unroll
            for (int k = 0; k < V; k++) {
                aw[k] += g[k] * (xv[k] - m) * st;
                ab[k] += g[k];
            }
        }
#pragma unroll
    for (int k = 0; k < V; k++) sw[ty][tx * V + k] = aw[k], sb[ty][tx * V + k] = ab[k];
    __syncthreads();
    if (ty == 0 && c < D) {
#pragma unroll
        for (int k = 0; k < V; k++) {
            float tw = 0.0f, tb = 0.0f;
            for (int l = 0; l < 8; l++) {
                tw += sw[l][tx * V + k];
                tb += sb[l][tx * V + k];
            }
            if (part_w) part_w[(int64_t)blockIdx.x * D + c + k] = tw;
            if (part_b) part_b[(int64_t)blockIdx.x * D + c + k] = tb;
        }
    }
}

// out[c] (+)= sum over p of part[p, c], p in a fixed order. Block (32, 16), grid ceil(D / 32).
template <typename G>
__global__ void col_sum_kernel(const float *__restrict__ part, int64_t chunks, int64_t D, G *__restrict__ out,
                               bool acc)
{
    __shared__ float s[16][33];
    int tx = threadIdx.x, ty = threadIdx.y;
    int64_t c = (int64_t)blockIdx.x * 32 + tx;
    float a = 0.0f;
    if (c < D)
        for (int64_t p = ty; p < chunks; p += 16) a += part[p * D + c];
    s[ty][tx] = a;
    __syncthreads();
    if (ty == 0 && c < D) {
        float t = 0.0f;
        for (int k = 0; k < 16; k++) t += s[k][tx];
        out[c] = from_f<G>(acc ? to_f(out[c]) + t : t);
    }
}

bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

unsigned row_blocks(int64_t R) { return (unsigned)((R + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK); }

template <typename T>
gc_status fwd_typed(int mode, const T *x, const T *w, const T *b, T *y, float *mean, float *stat, int64_t R, int64_t D,
                    float eps)
{
    constexpr int VT = 16 / sizeof(T);
    bool vec = D % VT == 0 && aligned16(x) && aligned16(w) && aligned16(b) && aligned16(y);
    if (vec)
        norm_fwd_kernel<T, VT><<<row_blocks(R), 256, 0, gc_cuda_stream()>>>(mode, x, w, b, y, mean, stat, R, D, eps);
    else
        norm_fwd_kernel<T, 1><<<row_blocks(R), 256, 0, gc_cuda_stream()>>>(mode, x, w, b, y, mean, stat, R, D, eps);
    GC_CUDA_LAUNCH_CHECK();
    return GC_OK;
}

template <typename T, typename G>
gc_status bwd_typed(int mode, const T *x, const T *w, const T *gy, const float *mean, const float *stat, int64_t R,
                    int64_t D, float eps, G *gx, bool acc)
{
    constexpr int VT = 16 / sizeof(T);
    bool vec = D % VT == 0 && aligned16(x) && aligned16(w) && aligned16(gy) && aligned16(gx);
    if (vec)
        norm_bwd_kernel<T, G, VT><<<row_blocks(R), 256, 0, gc_cuda_stream()>>>(mode, x, w, gy, mean, stat, gx, acc, R,
                                                                               D, eps);
    else
        norm_bwd_kernel<T, G, 1><<<row_blocks(R), 256, 0, gc_cuda_stream()>>>(mode, x, w, gy, mean, stat, gx, acc, R,
                                                                              D, eps);
    GC_CUDA_LAUNCH_CHECK();
    return GC_OK;
}

template <typename T> gc_status bwd_dispatch_g(int mode, const void *x, const void *w, const void *gy,
                                               const float *mean, const float *stat, int64_t R, int64_t D, float eps,
                                               void *gx, gc_dtype gx_dt, bool acc)
{
    const T *xt = (const T *)x, *wt = (const T *)w, *gt = (const T *)gy;
    switch (gx_dt) {
    case GC_F32: return bwd_typed<T, float>(mode, xt, wt, gt, mean, stat, R, D, eps, (float *)gx, acc);
    case GC_BF16: return bwd_typed<T, __nv_bfloat16>(mode, xt, wt, gt, mean, stat, R, D, eps, (__nv_bfloat16 *)gx, acc);
    default: return gc_error_set(GC_ERR_DTYPE, "norm backward on cuda: gradient dtype %s", gc_dtype_name(gx_dt));
    }
}

gc_status col_sum(const float *part, int64_t chunks, int64_t D, void *out, gc_dtype dt, bool acc)
{
    dim3 grid((unsigned)((D + 31) / 32)), block(32, 16);
    switch (dt) {
    case GC_F32: col_sum_kernel<float><<<grid, block, 0, gc_cuda_stream()>>>(part, chunks, D, (float *)out, acc); break;
    case GC_BF16:
        col_sum_kernel<__nv_bfloat16><<<grid, block, 0, gc_cuda_stream()>>>(part, chunks, D, (__nv_bfloat16 *)out, acc);
        break;
    default: return gc_error_set(GC_ERR_DTYPE, "norm backward on cuda: parameter gradient dtype %s", gc_dtype_name(dt));
    }
    GC_CUDA_LAUNCH_CHECK();
    return GC_OK;
}

} // namespace

extern "C" gc_status gc_cuda_norm_fwd(int mode, const void *x, const void *w, const void *b, void *y, gc_dtype dt,
                                      float *mean, float *stat, int64_t R, int64_t D, float eps)
{
    if (R == 0) return GC_OK;
    switch (dt) {
    case GC_F32:
        return fwd_typed<float>(mode, (const float *)x, (const float *)w, (const float *)b, (float *)y, mean, stat, R,
                                D, eps);
    case GC_BF16:
        return fwd_typed<__nv_bfloat16>(mode, (const __nv_bfloat16 *)x, (const __nv_bfloat16 *)w,
                                        (const __nv_bfloat16 *)b, (__nv_bfloat16 *)y, mean, stat, R, D, eps);
    default: return gc_error_set(GC_ERR_DTYPE, "norm on cuda: dtype %s", gc_dtype_name(dt));
    }
}

extern "C" gc_status gc_cuda_norm_bwd(int mode, const void *x, const void *w, const void *gy, gc_dtype dt,
                                      const float *mean, const float *stat, int64_t R, int64_t D, float eps, void *gx,
                                      gc_dtype gx_dt, bool gx_acc)
{
    if (R == 0) return GC_OK;
    switch (dt) {
    case GC_F32: return bwd_dispatch_g<float>(mode, x, w, gy, mean, stat, R, D, eps, gx, gx_dt, gx_acc);
    case GC_BF16: return bwd_dispatch_g<__nv_bfloat16>(mode, x, w, gy, mean, stat, R, D, eps, gx, gx_dt, gx_acc);
    default: return gc_error_set(GC_ERR_DTYPE, "norm backward on cuda: dtype %s", gc_dtype_name(dt));
    }
}

// part: f32 scratch [2, ceil(R / chunk_rows), D] (dw partials, then db partials)
extern "C" gc_status gc_cuda_norm_bwd_wb(int mode, const void *x, const void *gy, gc_dtype dt, const float *mean,
                                         const float *stat, int64_t R, int64_t D, void *gw, gc_dtype gw_dt, bool gw_acc,
                                         void *gb, gc_dtype gb_dt, bool gb_acc, float *part, int64_t chunk_rows)
{
    if (!gw && !gb) return GC_OK;
    if (R == 0) { // sums over no rows
        if (gw && !gw_acc) GC_CUDA_CHECK(cudaMemsetAsync(gw, 0, (size_t)D * gc_dtype_size(gw_dt), gc_cuda_stream()));
        if (gb && !gb_acc) GC_CUDA_CHECK(cudaMemsetAsync(gb, 0, (size_t)D * gc_dtype_size(gb_dt), gc_cuda_stream()));
        return GC_OK;
    }
    int64_t chunks = (R + chunk_rows - 1) / chunk_rows;
    float *pw = gw ? part : nullptr, *pb = gb ? part + chunks * D : nullptr;
    auto launch = [&](auto tag) {
        using T = typename decltype(tag)::type;
        constexpr int VT = 16 / sizeof(T);
        const T *xt = (const T *)x, *gt = (const T *)gy;
        dim3 block(32, 8);
        if (D % VT == 0 && aligned16(x) && aligned16(gy))
            norm_wb_part_kernel<T, VT><<<dim3((unsigned)chunks, (unsigned)((D / VT + 31) / 32)), block, 0, gc_cuda_stream()>>>(
                mode, xt, gt, mean, stat, pw, pb, R, D, chunk_rows);
        else
            norm_wb_part_kernel<T, 1><<<dim3((unsigned)chunks, (unsigned)((D + 31) / 32)), block, 0, gc_cuda_stream()>>>(
                mode, xt, gt, mean, stat, pw, pb, R, D, chunk_rows);
    };
    switch (dt) {
    case GC_F32: launch(Tag<float>{}); break;
    case GC_BF16: launch(Tag<__nv_bfloat16>{}); break;
    default: return gc_error_set(GC_ERR_DTYPE, "norm backward on cuda: dtype %s", gc_dtype_name(dt));
    }
    GC_CUDA_LAUNCH_CHECK();
    if (gw) GC_TRY(col_sum(pw, chunks, D, gw, gw_dt, gw_acc));
    if (gb) GC_TRY(col_sum(pb, chunks, D, gb, gb_dt, gb_acc));
    return GC_OK;
}
