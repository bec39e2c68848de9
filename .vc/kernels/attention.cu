// The row kernels of attention's GEMM path (kernels/attention.c has the op, the GEMMs
// and the CPU mirrors cpu_rows_fwd / cpu_rows_bwd of these kernels).
//
// One warp per row r = (b, h, i) of the [B, H, Lq, Lk] score matrix (rows ld elements
// apart, ld >= Lk), 8 rows per 256-thread block, grid-stride over rows. Lane l takes
// columns l, l + 32, ...: loads and stores are coalesced. When Lk <= 32 NPER the row is
// held in registers (NPER per lane, read once); longer rows are read twice. Math in
// f32; P / Pd / dS stored as T (f32 or bf16). Dropout keeps element e = (h Lq + i) Lk + j
// of batch row b iff gc_rand_uniform(seed, step, op, sample_offset + b, e) >= p, exactly
// as on the CPU.
//
// In-place use: P may alias S (f32 activations) in the forward and dS may alias dPd
// in the backward. Both are safe: a lane reads element j before it writes element j,
// and no other lane touches j.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

// See runtime/cuda.cu: the C headers have no extern "C" guards of their own.
extern "C" {
#include "../runtime/gc_cuda.h"
}
#include "gc_cuda_util.cuh"
#include "../runtime/gc_rng.h" // static inline, host + device

namespace {

template <typename T> __device__ __forceinline__ float ld(const T *p, int64_t i);
template <> __device__ __forceinline__ float ld(const float *p, int64_t i) { return p[i]; }
template <> __device__ __forceinline__ float ld(const __nv_bfloat16 *p, int64_t i) { return __bfloat162float(p[i]); }
template <typename T> __device__ __forceinline__ void st(T *p, int64_t i, float v);
template <> __device__ __forceinline__ void st(float *p, int64_t i, float v) { p[i] = v; }
template <> __device__ __forceinline__ void st(__nv_bfloat16 *p, int64_t i, float v) { p[i] = __float2bfloat16_rn(v); }

constexpr int kRowsPerBlock = 8; // warps of a 256-thread block

struct RowArgs {
    int64_t rows, H, Lq, Lk;
    int64_t ld;           // row stride of S / P / Pd / dP / dS (elements)
    int64_t mask_bstride; // 0: one [Lq, Lk] mask for every batch row
    bool causal;
    float p, inv_keep;    // dropout; p == 0: none
    uint64_t seed;
    uint32_t step, op;
    int64_t sample_offset;
};

// element e = (h Lq + i) Lk + j of batch row b survives dropout
__device__ __forceinline__ bool keep_elem(const RowArgs &a, int64_t b, int64_t h, int64_t i, int64_t j)
{
    const uint64_t e = (uint64_t)((h * a.Lq + i) * a.Lk + j);
    return gc_rand_uniform(a.seed, a.step, a.op, (uint32_t)(a.sample_offset + b), e) >= a.p;
}

// (max, sum exp(x - max)) of two parts; (-inf, 0) is the empty part. Symmetric, so
// every lane of the butterfly ends with the same bits.
__device__ __forceinline__ void ms_combine(float &m, float &l, float m2, float l2)
{
    const float M = fmaxf(m, m2);
    if (M == -INFINITY) {
        m = M;
        l = 0.f;
        return;
    }
    l = (m == -INFINITY ? 0.f : l * expf(m - M)) + (m2 == -INFINITY ? 0.f : l2 * expf(m2 - M));
    m = M;
}

// Keys j < nvis are visible to query i.
__device__ __forceinline__ int64_t row_visible(const RowArgs &a, int64_t i)
{
    if (!a.causal) return a.Lk;
    const int64_t n = i + a.Lk - a.Lq + 1;
    return n < 0 ? 0 : n > a.Lk ? a.Lk : n;
}

// S [rows, ld] f32 (scaled scores) -> P = softmax(S + mask, causal) [rows, ld] as T, and
// Pd = dropout(P) when Pd != nullptr. A row with no visible key gives zeros. NPER > 0:
// Lk <= 32 NPER, the row in registers; NPER == 0: any Lk, two passes over S.
template <typename T, int NPER>
__global__ void __launch_bounds__(256) attn_rows_fwd_kernel(const float *S, const float *mask, T *P, T *Pd, RowArgs a)
{
    GC_PDL_WAIT();
    const int lane = threadIdx.x & 31;
    const int64_t step = (int64_t)gridDim.x * kRowsPerBlock;
    for (int64_t r = (int64_t)blockIdx.x * kRowsPerBlock + (threadIdx.x >> 5); r < a.rows; r += step) { // warp-uniform
        const int64_t i = r % a.Lq, h = (r / a.Lq) % a.H, b = r / (a.Lq * a.H), nvis = row_visible(a, i);
        const float *s = S + r * a.ld;
        const float *mr = mask ? mask + b * a.mask_bstride + i * a.Lk : nullptr;
        T *pr = P + r * a.ld;
        T *pdr = Pd ? Pd + r * a.ld : nullptr;
        if (NPER > 0) {
            float x[NPER > 0 ? NPER : 1], m = -INFINITY;
            bool nan_row = false; // a NaN score makes the row NaN (fmaxf skips it; a row of them would look empty)
#pragma unroll
            for (int t = 0; t < NPER; t++) {
                const int64_t j = lane + 32 * t;
                x[t] = j < nvis ? s[j] + (mr ? mr[j] : 0.f) : -INFINITY;
                nan_row = nan_row || isnan(x[t]);
                m = fmaxf(m, x[t]);
            }
            m = warp_max(m);
            nan_row = __any_sync(0xffffffffu, nan_row);
            const bool empty = m == -INFINITY && !nan_row;
            float l = 0.f;
#pragma unroll
            for (int t = 0; t < NPER; t++) {
                x[t] = empty ? 0.f : expf(x[t] - m); // exp(-inf) = 0 for hidden keys
                l += x[t];
            }
            l = warp_sum(l);
            const float inv_l = nan_row ? NAN : empty ? 0.f : 1.f / l;
#pragma unroll
            for (int t = 0; t < NPER; t++) {
                const int64_t j = lane + 32 * t;
                if (j >= a.Lk) break;
                const float pj = x[t] * inv_l;
                st(pr, j, pj); // s[j] was read above: P may alias S
                if (pdr) st(pdr, j, keep_elem(a, b, h, i, j) ? pj * a.inv_keep : 0.f);
            }
        } else {
            float m = -INFINITY, l = 0.f; // online max / sum of this lane's columns
            bool nan_row = false;
            for (int64_t j = lane; j < nvis; j += 32) {
                const float x = s[j] + (mr ? mr[j] : 0.f);
                nan_row = nan_row || isnan(x);
                if (x == -INFINITY) continue;
                if (x > m) {
                    l = l * expf(m - x) + 1.f;
                    m = x;
                } else {
                    l += expf(x - m);
                }
            }
            for (int o = 16; o > 0; o >>= 1) {
                const float m2 = __shfl_xor_sync(0xffffffffu, m, o), l2 = __shfl_xor_sync(0xffffffffu, l, o);
                ms_combine(m, l, m2, l2);
            }
            nan_row = __any_sync(0xffffffffu, nan_row);
            const bool empty = m == -INFINITY;
            const float inv_l = empty ? 0.f : 1.f / l;
            for (int64_t j = lane; j < a.Lk; j += 32) {
                float pj = nan_row ? NAN : 0.f;
                if (j < nvis && !empty && !nan_row) pj = expf(s[j] + (mr ? mr[j] : 0.f) - m) * inv_l;
                st(pr, j, pj);
                if (pdr) st(pdr, j, keep_elem(a, b, h, i, j) ? pj * a.inv_keep : 0.f);
            }
        }
    }
}

// From P [rows, ld] (T) and dPd [rows, ld] f32 (= dO V^T, the gradient of the dropped
// probabilities): dP = dPd keep/(1-p), dS = P (dP - sum_j dP P) as T; Pd = dropout(P)
// when Pd != nullptr (for the dV GEMM).
template <typename T, int NPER>
__global__ void __launch_bounds__(256) attn_rows_bwd_kernel(const T *P, const float *dPd, T *dS, T *Pd, RowArgs a)
{
    GC_PDL_WAIT();
    const int lane = threadIdx.x & 31;
    const bool drop = a.p > 0.f;
    const int64_t step = (int64_t)gridDim.x * kRowsPerBlock;
    for (int64_t r = (int64_t)blockIdx.x * kRowsPerBlock + (threadIdx.x >> 5); r < a.rows; r += step) { // warp-uniform
        const int64_t i = r % a.Lq, h = (r / a.Lq) % a.H, b = r / (a.Lq * a.H);
        const T *pr = P + r * a.ld;
        const float *gr = dPd + r * a.ld;
        T *dsr = dS + r * a.ld;
        T *pdr = Pd ? Pd + r * a.ld : nullptr;
        if (NPER > 0) {
            float g[NPER > 0 ? NPER : 1], pv[NPER > 0 ? NPER : 1], c = 0.f;
            bool kp[NPER > 0 ? NPER : 1];
#pragma unroll
            for (int t = 0; t < NPER; t++) {
                const int64_t j = lane + 32 * t;
                g[t] = pv[t] = 0.f;
                kp[t] = true;
                if (j < a.Lk) {
                    kp[t] = !drop || keep_elem(a, b, h, i, j);
                    g[t] = drop ? (kp[t] ? gr[j] * a.inv_keep : 0.f) : gr[j];
                    pv[t] = ld(pr, j);
                    c += g[t] * pv[t];
                }
            }
            c = warp_sum(c);
#pragma unroll
            for (int t = 0; t < NPER; t++) {
                const int64_t j = lane + 32 * t;
                if (j >= a.Lk) break;
                st(dsr, j, pv[t] * (g[t] - c)); // gr[j] was read above: dS may alias dPd
                if (pdr) st(pdr, j, kp[t] ? pv[t] * a.inv_keep : 0.f);
            }
        } else {
            float c = 0.f;
            for (int64_t j = lane; j < a.Lk; j += 32) {
                float g = gr[j];
                if (drop) g = keep_elem(a, b, h, i, j) ? g * a.inv_keep : 0.f;
                c += g * ld(pr, j);
            }
            c = warp_sum(c);
            for (int64_t j = lane; j < a.Lk; j += 32) {
                const bool keep = !drop || keep_elem(a, b, h, i, j);
                float g = gr[j];
                if (drop) g = keep ? g * a.inv_keep : 0.f;
                const float pj = ld(pr, j);
                st(dsr, j, pj * (g - c));
                if (pdr) st(pdr, j, keep ? pj * a.inv_keep : 0.f);
            }
        }
    }
}

unsigned grid_for(const RowArgs &a)
{
    const int64_t blocks = (a.rows + kRowsPerBlock - 1) / kRowsPerBlock, cap = (int64_t)1 << 20; // grid-stride beyond
    return (unsigned)(blocks < cap ? blocks : cap);
}

// Register-resident row length: columns per lane, 0 for the two-pass kernels.
int nper_for(int64_t Lk) { return Lk <= 32 ? 1 : Lk <= 64 ? 2 : Lk <= 128 ? 4 : Lk <= 256 ? 8 : 0; }

template <typename T> gc_status launch_fwd(const float *S, const float *mask, T *P, T *Pd, const RowArgs &a)
{
    const unsigned grid = grid_for(a);
    cudaStream_t s = gc_cuda_stream();
    switch (nper_for(a.Lk)) {
    case 1: gc_launch(attn_rows_fwd_kernel<T, 1>, grid, 256, 0, s, S, mask, P, Pd, a); break;
    case 2: gc_launch(attn_rows_fwd_kernel<T, 2>, grid, 256, 0, s, S, mask, P, Pd, a); break;
    case 4: gc_launch(attn_rows_fwd_kernel<T, 4>, grid, 256, 0, s, S, mask, P, Pd, a); break;
    case 8: gc_launch(attn_rows_fwd_kernel<T, 8>, grid, 256, 0, s, S, mask, P, Pd, a); break;
    default: gc_launch(attn_rows_fwd_kernel<T, 0>, grid, 256, 0, s, S, mask, P, Pd, a); break;
    }
    GC_CUDA_LAUNCH_CHECK();
    return GC_OK;
}

template <typename T> gc_status launch_bwd(const T *P, const float *dP, T *dS, T *Pd, const RowArgs &a)
{
    const unsigned grid = grid_for(a);
    cudaStream_t s = gc_cuda_stream();
    switch (nper_for(a.Lk)) {
    case 1: gc_launch(attn_rows_bwd_kernel<T, 1>, grid, 256, 0, s, P, dP, dS, Pd, a); break;
    case 2: gc_launch(attn_rows_bwd_kernel<T, 2>, grid, 256, 0, s, P, dP, dS, Pd, a); break;
    case 4: gc_launch(attn_rows_bwd_kernel<T, 4>, grid, 256, 0, s, P, dP, dS, Pd, a); break;
    case 8: gc_launch(attn_rows_bwd_kernel<T, 8>, grid, 256, 0, s, P, dP, dS, Pd, a); break;
    default: gc_launch(attn_rows_bwd_kernel<T, 0>, grid, 256, 0, s, P, dP, dS, Pd, a); break;
    }
    GC_CUDA_LAUNCH_CHECK();
    return GC_OK;
}

RowArgs row_args(int64_t B, int64_t H, int64_t Lq, int64_t Lk, int64_t ld, int64_t mask_bstride, bool causal, float p,
                 uint64_t seed, uint32_t step, uint32_t op, int64_t sample_offset)
{
    RowArgs a;
    a.rows = B * H * Lq;
    a.H = H;
    a.Lq = Lq;
    a.Lk = Lk;
    a.ld = ld;
    a.mask_bstride = mask_bstride;
    a.causal = causal;
    a.p = p;
    a.inv_keep = 1.f / (1.f - p);
    a.seed = seed;
    a.step = step;
    a.op = op;
    a.sample_offset = sample_offset;
    return a;
}

} // namespace

extern "C" gc_status gc_cuda_attention_fwd(const float *S, const float *mask, int64_t mask_bstride, void *P, void *Pd,
                                           gc_dtype dt, int64_t B, int64_t H, int64_t Lq, int64_t Lk, int64_t ld,
                                           bool causal, float p, uint64_t seed, uint32_t step, uint32_t op,
                                           int64_t sample_offset)
{
    const RowArgs a = row_args(B, H, Lq, Lk, ld, mask_bstride, causal, p, seed, step, op, sample_offset);
    if (a.rows <= 0 || Lk <= 0) return GC_OK;
    if (ld < Lk) return gc_error_set(GC_ERR_INVALID, "attention rows: row stride %lld < Lk %lld", (long long)ld, (long long)Lk);
    switch (dt) {
    case GC_F32: return launch_fwd(S, mask, (float *)P, (float *)Pd, a);
    case GC_BF16: return launch_fwd(S, mask, (__nv_bfloat16 *)P, (__nv_bfloat16 *)Pd, a);
    default:
        return gc_error_set(GC_ERR_DTYPE, "attention on the GPU: probabilities in %s (f32 or bf16 only)", gc_dtype_name(dt));
    }
}

extern "C" gc_status gc_cuda_attention_bwd(const void *P, const float *dP, void *dS, void *Pd, gc_dtype dt, int64_t B,
                                           int64_t H, int64_t Lq, int64_t Lk, int64_t ld, float p, uint64_t seed,
                                           uint32_t step, uint32_t op, int64_t sample_offset)
{
    const RowArgs a = row_args(B, H, Lq, Lk, ld, 0, false, p, seed, step, op, sample_offset);
    if (a.rows <= 0 || Lk <= 0) return GC_OK;
    if (ld < Lk) return gc_error_set(GC_ERR_INVALID, "attention rows: row stride %lld < Lk %lld", (long long)ld, (long long)Lk);
    switch (dt) {
    case GC_F32: return launch_bwd((const float *)P, dP, (float *)dS, (float *)Pd, a);
    case GC_BF16:
        return launch_bwd((const __nv_bfloat16 *)P, dP, (__nv_bfloat16 *)dS, (__nv_bfloat16 *)Pd, a);
    default:
        return gc_error_set(GC_ERR_DTYPE, "attention on the GPU: probabilities in %s (f32 or bf16 only)", gc_dtype_name(dt));
    }
}
