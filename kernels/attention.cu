// The row kernels of attention's GEMM path (kernels/attention.c has the op, the GEMMs
// and the CPU mirrors cpu_rows_fwd / cpu_rows_bwd of these kernels).
//
// One block per row r = (b, h, i) of the [B, H, Lq, Lk] score matrix (grid-stride over
// rows), blockDim a multiple of 32 (at most 256), each thread striding over the row's
// Lk columns: loads and stores are coalesced. Math in f32; P / Pd / dS stored as T
// (f32 or bf16). Dropout keeps element e = (h Lq + i) Lk + j of batch row b iff
// gc_rand_uniform(seed, step, op, sample_offset + b, e) >= p, exactly as on the CPU.
//
// In-place use: P may alias S (f32 activations) in the forward and dS may alias dPd
// in the backward. Both are safe: every pass reads element j before the same thread
// writes element j, and the passes are separated by the block reduction's barriers.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

// See runtime/cuda.cu: the C headers have no extern "C" guards of their own.
extern "C" {
#include "../runtime/gc_cuda.h"
}
#include "../runtime/gc_rng.h" // static inline, host + device

namespace {

template <typename T> __device__ __forceinline__ float ld(const T *p, int64_t i);
template <> __device__ __forceinline__ float ld(const float *p, int64_t i) { return p[i]; }
template <> __device__ __forceinline__ float ld(const __nv_bfloat16 *p, int64_t i) { return __bfloat162float(p[i]); }
template <typename T> __device__ __forceinline__ void st(T *p, int64_t i, float v);
template <> __device__ __forceinline__ void st(float *p, int64_t i, float v) { p[i] = v; }
template <> __device__ __forceinline__ void st(__nv_bfloat16 *p, int64_t i, float v) { p[i] = __float2bfloat16_rn(v); }

struct RowArgs {
    int64_t rows, H, Lq, Lk;
    int64_t mask_bstride; // 0: one [Lq, Lk] mask for every batch row
    bool causal;
    float p, inv_keep;    // dropout; p == 0: none
    uint64_t seed;
    uint32_t step, op;
    int64_t sample_offset;
};

__device__ __forceinline__ bool keep_elem(const RowArgs &a, int64_t b, int64_t h, int64_t i, int64_t j)
{
    uint64_t e = (uint64_t)((h * a.Lq + i) * a.Lk + j);
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

// Block-wide (max, sum) and sum; every thread gets the result. The leading barrier
// protects the shared slots from the previous row's readers.
__device__ void block_reduce_ms(float &m, float &l)
{
    __shared__ float sm[32], sl[32];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o), l2 = __shfl_xor_sync(0xffffffffu, l, o);
        ms_combine(m, l, m2, l2);
    }
    __syncthreads();
    if (lane == 0) {
        sm[w] = m;
        sl[w] = l;
    }
    __syncthreads();
    m = sm[0];
    l = sl[0];
    for (int k = 1; k < nw; k++) ms_combine(m, l, sm[k], sl[k]);
}

__device__ float block_reduce_sum(float s)
{
    __shared__ float ss[32];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    __syncthreads();
    if (lane == 0) ss[w] = s;
    __syncthreads();
    float t = ss[0];
    for (int k = 1; k < nw; k++) t += ss[k];
    return t;
}

// S [rows, Lk] f32 (scaled scores) -> P = softmax(S + mask, causal) [rows, Lk] as T, and
// Pd = dropout(P) when Pd != nullptr. A row with no visible key gives zeros.
template <typename T>
__global__ void attn_rows_fwd_kernel(const float *S, const float *mask, T *P, T *Pd, RowArgs a)
{
    for (int64_t r = blockIdx.x; r < a.rows; r += gridDim.x) {
        const int64_t i = r % a.Lq, h = (r / a.Lq) % a.H, b = r / (a.Lq * a.H);
        const float *s = S + r * a.Lk;
        const float *mr = mask ? mask + b * a.mask_bstride + i * a.Lk : nullptr;
        int64_t nvis = a.Lk; // keys j < nvis are visible
        if (a.causal) {
            const int64_t n = i + a.Lk - a.Lq + 1;
            nvis = n < 0 ? 0 : n > a.Lk ? a.Lk : n;
        }
        float m = -INFINITY, l = 0.f; // online max / sum of this thread's columns
        for (int64_t j = threadIdx.x; j < nvis; j += blockDim.x) {
            const float x = s[j] + (mr ? mr[j] : 0.f);
            if (x == -INFINITY) continue;
            if (x > m) {
                l = l * expf(m - x) + 1.f;
                m = x;
            } else {
                l += expf(x - m);
            }
        }
        block_reduce_ms(m, l);
        const bool empty = m == -INFINITY;
        const float inv_l = empty ? 0.f : 1.f / l;
        T *pr = P + r * a.Lk;
        T *pdr = Pd ? Pd + r * a.Lk : nullptr;
        for (int64_t j = threadIdx.x; j < a.Lk; j += blockDim.x) {
            float pj = 0.f;
            if (j < nvis && !empty) pj = expf(s[j] + (mr ? mr[j] : 0.f) - m) * inv_l;
            st(pr, j, pj); // s[j] was read above: P may alias S
            if (pdr) st(pdr, j, keep_elem(a, b, h, i, j) ? pj * a.inv_keep : 0.f);
        }
    }
}

// From P [rows, Lk] (T) and dPd [rows, Lk] f32 (= dO V^T, the gradient of the dropped
// probabilities): dP = dPd keep/(1-p), dS = P (dP - sum_j dP P) as T; Pd = dropout(P)
// when Pd != nullptr (for the dV GEMM).
template <typename T>
__global__ void attn_rows_bwd_kernel(const T *P, const float *dPd, T *dS, T *Pd, RowArgs a)
{
    const bool drop = a.p > 0.f;
    for (int64_t r = blockIdx.x; r < a.rows; r += gridDim.x) {
        const int64_t i = r % a.Lq, h = (r / a.Lq) % a.H, b = r / (a.Lq * a.H);
        const T *pr = P + r * a.Lk;
        const float *gr = dPd + r * a.Lk;
        float c = 0.f;
        for (int64_t j = threadIdx.x; j < a.Lk; j += blockDim.x) {
            float g = gr[j];
            if (drop) g = keep_elem(a, b, h, i, j) ? g * a.inv_keep : 0.f;
            c += g * ld(pr, j);
        }
        c = block_reduce_sum(c);
        T *dsr = dS + r * a.Lk;
        T *pdr = Pd ? Pd + r * a.Lk : nullptr;
        for (int64_t j = threadIdx.x; j < a.Lk; j += blockDim.x) {
            const bool keep = !drop || keep_elem(a, b, h, i, j);
            float g = gr[j];
            if (drop) g = keep ? g * a.inv_keep : 0.f;
            const float pj = ld(pr, j);
            st(dsr, j, pj * (g - c)); // gr[j] was read above: dS may alias dPd
            if (pdr) st(pdr, j, keep ? pj * a.inv_keep : 0.f);
        }
    }
}

void launch_dims(const RowArgs &a, unsigned *grid, unsigned *block)
{
    int64_t t = (a.Lk + 31) / 32 * 32;
    *block = (unsigned)(t < 32 ? 32 : t > 256 ? 256 : t);
    const int64_t cap = (int64_t)1 << 20; // grid-stride beyond
    *grid = (unsigned)(a.rows < cap ? a.rows : cap);
}

RowArgs row_args(int64_t B, int64_t H, int64_t Lq, int64_t Lk, int64_t mask_bstride, bool causal, float p, uint64_t seed,
                 uint32_t step, uint32_t op, int64_t sample_offset)
{
    RowArgs a;
    a.rows = B * H * Lq;
    a.H = H;
    a.Lq = Lq;
    a.Lk = Lk;
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
                                           gc_dtype dt, int64_t B, int64_t H, int64_t Lq, int64_t Lk, bool causal, float p,
                                           uint64_t seed, uint32_t step, uint32_t op, int64_t sample_offset)
{
    const RowArgs a = row_args(B, H, Lq, Lk, mask_bstride, causal, p, seed, step, op, sample_offset);
    if (a.rows <= 0 || Lk <= 0) return GC_OK;
    unsigned grid, block;
    launch_dims(a, &grid, &block);
    cudaStream_t s = gc_cuda_stream();
    switch (dt) {
    case GC_F32:
        attn_rows_fwd_kernel<float><<<grid, block, 0, s>>>(S, mask, (float *)P, (float *)Pd, a);
        break;
    case GC_BF16:
        attn_rows_fwd_kernel<__nv_bfloat16><<<grid, block, 0, s>>>(S, mask, (__nv_bfloat16 *)P, (__nv_bfloat16 *)Pd, a);
        break;
    default:
        return gc_error_set(GC_ERR_DTYPE, "attention on the GPU: probabilities in %s (f32 or bf16 only)", gc_dtype_name(dt));
    }
    GC_CUDA_LAUNCH_CHECK();
    return GC_OK;
}

extern "C" gc_status gc_cuda_attention_bwd(const void *P, const float *dP, void *dS, void *Pd, gc_dtype dt, int64_t B,
                                           int64_t H, int64_t Lq, int64_t Lk, float p, uint64_t seed, uint32_t step,
                                           uint32_t op, int64_t sample_offset)
{
    const RowArgs a = row_args(B, H, Lq, Lk, 0, false, p, seed, step, op, sample_offset);
    if (a.rows <= 0 || Lk <= 0) return GC_OK;
    unsigned grid, block;
    launch_dims(a, &grid, &block);
    cudaStream_t s = gc_cuda_stream();
    switch (dt) {
    case GC_F32:
        attn_rows_bwd_kernel<float><<<grid, block, 0, s>>>((const float *)P, dP, (float *)dS, (float *)Pd, a);
        break;
    case GC_BF16:
        attn_rows_bwd_kernel<__nv_bfloat16><<<grid, block, 0, s>>>((const __nv_bfloat16 *)P, dP, (__nv_bfloat16 *)dS,
                                                                   (__nv_bfloat16 *)Pd, a);
        break;
    default:
        return gc_error_set(GC_ERR_DTYPE, "attention on the GPU: probabilities in %s (f32 or bf16 only)", gc_dtype_name(dt));
    }
    GC_CUDA_LAUNCH_CHECK();
    return GC_OK;
}
