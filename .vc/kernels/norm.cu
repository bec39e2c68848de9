// CUDA kernels of the normalisations (norm.c has the math and the CPU reference).
// One warp per row, eight rows per 256-thread block, statistics and sums in f32. The
// forward reads rows of up to 32 x 8 16-byte vectors (D <= 2048 in bf16) once into
// registers; wider rows, rows that are not 16-byte vectors (D % 8 for bf16, % 4 for f32,
// and every pointer), and the backward take loops that re-read the row.
// The dw/db reduction is deterministic: each block sums a fixed chunk of rows into an
// f32 partial per column, and a second kernel adds the partials of a column in a fixed
// order (no atomics). (Making the partials in the backward kernel, from the x and gy it
// already holds, measured slower on the H200: a block must then take many rows, one
// after another, where the separate kernels spread one row per warp over the GPU.)
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

// The row's scale from its summed squared deviations ss (both forward kernels): L2
// 1 / max(||x||, eps), layer / RMS rsqrt(ss / D + eps); row r >= 0 saves the mean and the
// statistic the backward reads (||x||, or the scale itself).
__device__ __forceinline__ float norm_stats(int mode, float ss, float m, int64_t D, float eps, int64_t r,
                                            float *__restrict__ mean, float *__restrict__ stat)
{
    float scale, st;
    if (mode == NORM_L2) {
        st = sqrtf(ss);
        scale = 1.0f / fmaxf(st, eps);
    } else {
        scale = rsqrtf(ss / (float)D + eps);
        st = scale;
    }
    if (r >= 0) {
        if (mean) mean[r] = m;
        if (stat) stat[r] = st;
    }
    return scale;
}

// x, y [R, D]; w, b [D] or NULL; mean, stat [R] or NULL (not recording).
template <typename T, int V>
__global__ void norm_fwd_kernel(int mode, const T *__restrict__ x, const T *__restrict__ w, const T *__restrict__ b,
                                T *__restrict__ y, float *__restrict__ mean, float *__restrict__ stat, int64_t R,
                                int64_t D, float eps)
{
    GC_PDL_WAIT();
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
    const float scale = norm_stats(mode, warp_sum(ss), m, D, eps, lane == 0 ? r : -1, mean, stat);
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

// The same for rows of at most 32 * V * NV elements, kept in registers: x is read once.
// Lane l holds vectors j * 32 + l (j < NV): the loop kernel's order, so the same sums.
template <typename T, int V, int NV>
__global__ void __launch_bounds__(256) norm_fwd_reg_kernel(int mode, const T *__restrict__ x, const T *__restrict__ w,
                                                           const T *__restrict__ b, T *__restrict__ y,
                                                           float *__restrict__ mean, float *__restrict__ stat, int64_t R,
                                                           int64_t D, float eps)
{
    GC_PDL_WAIT();
    const int64_t r = (int64_t)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (r >= R) return;
    const T *xr = x + r * D;
    float f[NV][V], s = 0.0f, m = 0.0f;
#pragma unroll
    for (int j = 0; j < NV; j++) {
        const int64_t c = ((int64_t)j * 32 + lane) * V;
        if (c < D) load_v<V>(xr + c, f[j]);
        else
#pragma unroll
            for (int k = 0; k < V; k++) f[j][k] = 0.0f;
#pragma unroll
        for (int k = 0; k < V; k++) s += f[j][k];
    }
    if (mode == NORM_LAYER) m = warp_sum(s) / (float)D;
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < NV; j++)
        if (((int64_t)j * 32 + lane) * V < D)
#pragma unroll
            for (int k = 0; k < V; k++) ss += (f[j][k] - m) * (f[j][k] - m);
    const float scale = norm_stats(mode, warp_sum(ss), m, D, eps, lane == 0 ? r : -1, mean, stat);
#pragma unroll
    for (int j = 0; j < NV; j++) {
        const int64_t c = ((int64_t)j * 32 + lane) * V;
        if (c >= D) continue;
        float o[V], wv[V], bv[V];
        if (w) load_v<V>(w + c, wv);
        if (b) load_v<V>(b + c, bv);
#pragma unroll
        for (int k = 0; k < V; k++) o[k] = (f[j][k] - m) * scale * (w ? wv[k] : 1.0f) + (b ? bv[k] : 0.0f);
        store_v<V>(y + r * D + c, o, false);
    }
}

// gx [R, D] (+)= the input gradient (see norm.c for the formulas)
template <typename T, typename G, int V>
__global__ void norm_bwd_kernel(int mode, const T *__restrict__ x, const T *__restrict__ w, const T *__restrict__ gy,
                                const float *__restrict__ mean, const float *__restrict__ stat, G *__restrict__ gx,
                                bool acc, int64_t R, int64_t D, float eps)
{
    GC_PDL_WAIT();
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
    GC_PDL_WAIT();
    __shared__ float sw[8][32 * V + 1], sb[8][32 * V + 1];
    int tx = threadIdx.x, ty = threadIdx.y;
    int64_t c = ((int64_t)blockIdx.y * 32 + tx) * V;
    int64_t r0 = (int64_t)blockIdx.x * chunk_rows, r1 = r0 + chunk_rows < R ? r0 + chunk_rows : R;
    float aw[V], ab[V];
#pragma unroll
    for (int k = 0; k < V; k++) aw[k] = ab[k] = 0.0f;
    if (c < D)
#pragma unroll 4
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

// out_y[c] (+)= sum over p of part[y, p, c] (part [2, chunks, D]; y = blockIdx.y: the
// weight's, then the bias's partials), p in a fixed order (col_partials_sum). Block
// (32, 16), grid (ceil(D / 32), outputs). out1 NULL: one output, part[0].
template <typename G>
__global__ void col_sum_kernel(const float *__restrict__ part, int64_t chunks, int64_t D, G *out0, bool acc0, G *out1,
                               bool acc1)
{
    GC_PDL_WAIT();
    const int64_t c = (int64_t)blockIdx.x * 32 + threadIdx.x;
    G *out = blockIdx.y ? out1 : out0;
    const bool acc = blockIdx.y ? acc1 : acc0;
    const float t = col_partials_sum(part + (int64_t)blockIdx.y * chunks * D, chunks, D, c);
    if (threadIdx.y == 0 && c < D) out[c] = from_f<G>(acc ? to_f(out[c]) + t : t);
}

bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

unsigned row_blocks(int64_t R) { return (unsigned)((R + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK); }

// Vectors of V a lane holds for a row of D, rounded up to an instantiated count; 0: the
// row is too wide for registers.
int reg_vectors(int64_t D, int V)
{
    const int64_t nv = (D + 32 * V - 1) / (32 * V);
    return nv <= 4 ? (int)nv : nv <= 6 ? 6 : nv <= 8 ? 8 : 0;
}

template <int N> struct Int { static constexpr int value = N; };

// f(Int<nv>{}) for nv in 1, 2, 3, 4, 6, 8
template <typename F> void with_nv(int nv, F &&f)
{
    switch (nv) {
    case 1: f(Int<1>{}); break;
    case 2: f(Int<2>{}); break;
    case 3: f(Int<3>{}); break;
    case 4: f(Int<4>{}); break;
    case 6: f(Int<6>{}); break;
    default: f(Int<8>{}); break;
    }
}

template <typename T>
gc_status fwd_typed(int mode, const T *x, const T *w, const T *b, T *y, float *mean, float *stat, int64_t R, int64_t D,
                    float eps)
{
    constexpr int VT = 16 / sizeof(T);
    const bool vec = D % VT == 0 && aligned16(x) && aligned16(w) && aligned16(b) && aligned16(y);
    const int nv = vec ? reg_vectors(D, VT) : 0;
    cudaStream_t st = gc_cuda_stream();
    if (nv)
        with_nv(nv, [&](auto n) {
            gc_launch(norm_fwd_reg_kernel<T, VT, decltype(n)::value>, row_blocks(R), 256, 0, st, mode, x, w, b, y, mean,
                      stat, R, D, eps);
        });
    else if (vec)
        gc_launch(norm_fwd_kernel<T, VT>, row_blocks(R), 256, 0, st, mode, x, w, b, y, mean, stat, R, D, eps);
    else
        gc_launch(norm_fwd_kernel<T, 1>, row_blocks(R), 256, 0, st, mode, x, w, b, y, mean, stat, R, D, eps);
    GC_CUDA_LAUNCH_CHECK();
    return GC_OK;
}

// gw/gb (+)= the column sums of the partials part [2, chunks, D] (NULL: not wanted)
gc_status col_sums(const float *part, int64_t chunks, int64_t D, void *gw, gc_dtype gw_dt, bool gw_acc, void *gb,
                   gc_dtype gb_dt, bool gb_acc)
{
    const dim3 block(32, 16);
    const unsigned cols = (unsigned)((D + 31) / 32);
    cudaStream_t st = gc_cuda_stream();
    auto launch = [&](const float *p, void *o0, bool a0, void *o1, bool a1, gc_dtype dt) {
        const dim3 grid(cols, o1 ? 2 : 1);
        return with_type(dt, "norm backward: parameter gradient", [&](auto tag) {
            using G = typename decltype(tag)::type;
            gc_launch(col_sum_kernel<G>, grid, block, 0, st, p, chunks, D, (G *)o0, a0, (G *)o1, a1);
            GC_CUDA_LAUNCH_CHECK();
            return GC_OK;
        });
    };
    if (gw && gb && gw_dt == gb_dt) return launch(part, gw, gw_acc, gb, gb_acc, gw_dt);
    if (gw) GC_TRY(launch(part, gw, gw_acc, nullptr, false, gw_dt));
    if (gb) GC_TRY(launch(part + chunks * D, gb, gb_acc, nullptr, false, gb_dt));
    return GC_OK;
}

template <typename T, typename G>
gc_status bwd_typed(int mode, const T *x, const T *w, const T *gy, const float *mean, const float *stat, int64_t R,
                    int64_t D, float eps, G *gx, bool gx_acc, float *part_w, float *part_b, int64_t chunk_rows)
{
    constexpr int VT = 16 / sizeof(T);
    cudaStream_t st = gc_cuda_stream();
    if (gx) { // (x and gy held in registers measured no faster here: 22.6 against 20.6 us)
        const bool vec = D % VT == 0 && aligned16(x) && aligned16(w) && aligned16(gy) && aligned16(gx);
        if (vec)
            gc_launch(norm_bwd_kernel<T, G, VT>, row_blocks(R), 256, 0, st, mode, x, w, gy, mean, stat, gx, gx_acc, R,
                      D, eps);
        else
            gc_launch(norm_bwd_kernel<T, G, 1>, row_blocks(R), 256, 0, st, mode, x, w, gy, mean, stat, gx, gx_acc, R, D,
                      eps);
        GC_CUDA_LAUNCH_CHECK();
    }
    if (part_w || part_b) {
        const int64_t chunks = (R + chunk_rows - 1) / chunk_rows;
        const dim3 block(32, 8);
        if (D % VT == 0 && aligned16(x) && aligned16(gy))
            gc_launch(norm_wb_part_kernel<T, VT>, dim3((unsigned)chunks, (unsigned)((D / VT + 31) / 32)), block, 0, st,
                      mode, x, gy, mean, stat, part_w, part_b, R, D, chunk_rows);
        else
            gc_launch(norm_wb_part_kernel<T, 1>, dim3((unsigned)chunks, (unsigned)((D + 31) / 32)), block, 0, st, mode,
                      x, gy, mean, stat, part_w, part_b, R, D, chunk_rows);
        GC_CUDA_LAUNCH_CHECK();
    }
    return GC_OK;
}

} // namespace

extern "C" gc_status gc_cuda_norm_fwd(int mode, const void *x, const void *w, const void *b, void *y, gc_dtype dt,
                                      float *mean, float *stat, int64_t R, int64_t D, float eps)
{
    if (R == 0) return GC_OK;
    return with_type(dt, "norm", [&](auto tag) {
        using T = typename decltype(tag)::type;
        return fwd_typed<T>(mode, (const T *)x, (const T *)w, (const T *)b, (T *)y, mean, stat, R, D, eps);
    });
}

// gx (+)= the input gradient (NULL: not wanted); gw/gb (+)= the weight/bias gradients
// through part, f32 scratch [2, ceil(R / chunk_rows), D] (weight partials, then bias).
extern "C" gc_status gc_cuda_norm_bwd(int mode, const void *x, const void *w, const void *gy, gc_dtype dt,
                                      const float *mean, const float *stat, int64_t R, int64_t D, float eps, void *gx,
                                      gc_dtype gx_dt, bool gx_acc, void *gw, gc_dtype gw_dt, bool gw_acc, void *gb,
                                      gc_dtype gb_dt, bool gb_acc, float *part, int64_t chunk_rows)
{
    if (R == 0) { // sums over no rows
        if (gw && !gw_acc) GC_CUDA_CHECK(cudaMemsetAsync(gw, 0, (size_t)D * gc_dtype_size(gw_dt), gc_cuda_stream()));
        if (gb && !gb_acc) GC_CUDA_CHECK(cudaMemsetAsync(gb, 0, (size_t)D * gc_dtype_size(gb_dt), gc_cuda_stream()));
        return GC_OK;
    }
    const int64_t chunks = (R + chunk_rows - 1) / chunk_rows;
    float *pw = gw ? part : nullptr, *pb = gb ? part + chunks * D : nullptr;
    return with_types(dt, gx ? gx_dt : GC_F32, "norm backward", [&](auto tv, auto tg) {
        using T = typename decltype(tv)::type;
        using G = typename decltype(tg)::type;
        gc_status st = bwd_typed<T, G>(mode, (const T *)x, (const T *)w, (const T *)gy, mean, stat, R, D, eps, (G *)gx,
                                       gx_acc, pw, pb, chunk_rows);
        if (st == GC_OK && (gw || gb)) st = col_sums(part, chunks, D, gw, gw_dt, gw_acc, gb, gb_dt, gb_acc);
        return st;
    });
}
