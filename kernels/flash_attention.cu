// ATTN_FLASH: fused attention forward and backward on tensor cores (kernels/attention.c has
// the op, the dispatch and the CPU reference; the semantics are gc_attention's, see there).
//
// bf16 q/k/v read in place from their [B, L, H, D] layout (any row / head / batch strides,
// the innermost dim contiguous, 16-byte aligned rows), D in {32, 64, 128}. Scores and
// probabilities live only in shared memory; the forward saves out and the row log-sum-exp.
// Matrix products use nvcuda::wmma (bf16 16x16x16, f32 accumulators). Every element-wise
// step reads and writes tiles staged in shared memory by (row, column), never a fragment's
// register layout.
//
// Scores are kept in the log2 domain: s2 = (q.k scale + mask) log2(e), so P = exp2(s2 - m2).
// lse [B, H, Lq] f32 holds m2 + log2(l) per query row, or +inf for a row with no visible key
// (then P = exp2(s2 - inf) = 0 in the backward without a special case).
//
// Kernels (BM query rows, BN keys per tile; a warp owns 16 rows of a tile):
//   flash_fwd_kernel     block = (query tile of 64, head, batch), 4 warps, each owning 16
//                        query rows: S = Q K^T -> smem f32; online softmax per row (running
//                        max / sum in smem, O accumulator f32 in smem rescaled per row);
//                        P (bf16, dropout applied) -> smem; O += P V.
//   flash_delta_kernel   Delta = rowsum(dO * O) [B, H, Lq], one warp per row.
//   flash_bwd_dkv_kernel block = (key tile of 64, kv head, batch), 4 warps (8 for D = 128):
//                        over the group's heads and query tiles of 32: S, dP = dO V^T ->
//                        smem; P = exp2(s2 - lse), dS = P (dP' - Delta) -> smem bf16;
//                        dV += Pd^T dO, dK += dS^T Q in fragments (a warp owns 16 keys x
//                        64 columns). GQA sums the group inside the block: no atomics.
//   flash_bwd_dq_kernel  block = (query tile of 64, head, batch), 4 warps owning 16 rows:
//                        recomputes S, dP, dS per key tile; dQ += dS K in fragments.
// Gradients are written (=, or += when acc) in the dtype of the buffers given (f32 or bf16).
// Launch order dQ, then dK, then dV (after a block barrier): q, k, v may share one gradient
// buffer (self-attention), in which case the later ones accumulate (acc true).
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <cstdint>

// See runtime/cuda.cu: the C headers have no extern "C" guards of their own.
extern "C" {
#include "../runtime/gc_cuda.h"
}
#include "gc_cuda_util.cuh"
#include "../runtime/gc_rng.h" // static inline, host + device

extern __shared__ __align__(128) unsigned char flash_smem[];

namespace {

using namespace nvcuda;
typedef __nv_bfloat16 bf16;

constexpr float kLog2e = 1.4426950408889634f;
constexpr size_t kSmemLimit = 100 * 1024; // leaves room for two blocks per SM

constexpr size_t al128(size_t x) { return (x + 127) / 128 * 128; }

struct FlashArgs {
    // element (b, l, h, d) of q at q + b qs0 + l qs1 + h qs2 + d; k, v alike (kv head h / G)
    const bf16 *q, *k, *v;
    int64_t qs0, qs1, qs2, ks0, ks1, ks2, vs0, vs1, vs2;
    const float *mask; // contiguous f32, row i of batch b at mask + b mask_bs + i Lk; null: none
    int64_t mask_bs;
    int B, Lq, Lk, H, G; // G = H / Hkv
    float scale, scale_log2;
    bool causal;
    float p, inv_keep; // dropout; p == 0: none
    uint64_t seed;
    uint32_t step, op;
    int64_t sample_offset;
    bf16 *o;    // out [B, Lq, H, D] contiguous: written by the forward, read by Delta
    float *lse; // [B, H, Lq]
    // backward
    const bf16 *dout; // dO, strides os0..2 like q's
    int64_t os0, os1, os2;
    float *delta;       // [B, H, Lq]
    void *dq, *dk, *dv; // gradients [B, L, Hx, D] (strides below, innermost 1); null: not wanted
    int64_t dqs0, dqs1, dqs2, dks0, dks1, dks2, dvs0, dvs1, dvs2;
    bool dq_f32, dk_f32, dv_f32; // else bf16
    bool acc_q, acc_k, acc_v;    // += instead of =
};

// ---------------------------------------------------------------- small helpers

// Keys j < visible(i) are seen by query i: all, or j <= i + Lk - Lq when causal; none for
// the padding rows i >= Lq.
__device__ __forceinline__ int visible(const FlashArgs &a, int i)
{
    if (i >= a.Lq) return 0;
    if (!a.causal) return a.Lk;
    const int64_t n = (int64_t)i + a.Lk - a.Lq + 1;
    return n < 0 ? 0 : n > a.Lk ? a.Lk : (int)n;
}

// One past the last key any query row < q_end sees.
__device__ __forceinline__ int key_end(const FlashArgs &a, int q_end)
{
    return visible(a, (q_end < a.Lq ? q_end : a.Lq) - 1);
}

// gc_rand_uniform(seed, step, op, sample_offset + b, e) >= p for e = (h Lq + i) Lk + j, with
// the word of the Philox block picked by constant indices (a dynamic index would put the
// block in local memory).
__device__ __forceinline__ bool keep_elem(const FlashArgs &a, int b, int h, int i, int j)
{
    const uint64_t e = (uint64_t)(((int64_t)h * a.Lq + i) * a.Lk + j);
    const uint32_t key[2] = {(uint32_t)a.seed, (uint32_t)(a.seed >> 32)};
    const uint32_t ctr[4] = {(uint32_t)(e >> 2), (uint32_t)(a.sample_offset + b), a.op, a.step};
    uint32_t r[4];
    gc_philox4x32_10(key, ctr, r);
    const uint32_t w = (e & 3) == 0 ? r[0] : (e & 3) == 1 ? r[1] : (e & 3) == 2 ? r[2] : r[3];
    return (float)(w >> 8) * (1.0f / 16777216.0f) >= a.p;
}

// Log2-domain score of key j from the raw dot product q.k; -inf where hidden. Forward and
// backward evaluate this same expression on the same products.
__device__ __forceinline__ float score2(const FlashArgs &a, float dot, const float *mrow, int j, int nvis)
{
    if (j >= nvis) return -INFINITY;
    return dot * a.scale_log2 + (mrow ? mrow[j] * kLog2e : 0.f);
}

__device__ __forceinline__ const float *mask_row(const FlashArgs &a, int b, int i)
{
    return a.mask && i < a.Lq ? a.mask + b * a.mask_bs + (int64_t)i * a.Lk : nullptr;
}

// Rows r0 .. r0+R-1 of a [L, D] bf16 matrix (row stride rs elements, 16-byte aligned rows)
// into smem [R][LD]; rows >= L are zero. All NT threads of the block take part.
template <int R, int D, int LD, int NT>
__device__ __forceinline__ void load_tile(bf16 *s, const bf16 *g, int64_t rs, int r0, int L)
{
    constexpr int CH = D / 8; // 16-byte chunks per row
    for (int e = threadIdx.x; e < R * CH; e += NT) {
        const int r = e / CH, c = e % CH;
        uint4 x = make_uint4(0u, 0u, 0u, 0u);
        if (r0 + r < L) x = *reinterpret_cast<const uint4 *>(g + (int64_t)(r0 + r) * rs + c * 8);
        *reinterpret_cast<uint4 *>(s + r * LD + c * 8) = x;
    }
}

// base[off] = v, or += v
__device__ __forceinline__ void grad_store(void *base, bool f32, int64_t off, float v, bool acc)
{
    if (f32) {
        float *p = static_cast<float *>(base) + off;
        *p = acc ? *p + v : v;
    } else {
        bf16 *p = static_cast<bf16 *>(base) + off;
        *p = __float2bfloat16_rn(acc ? __bfloat162float(*p) + v : v);
    }
}

typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> FragA;
typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::col_major> FragAt;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> FragB;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> FragBt;
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> FragC;

// A warp's 16 x 16 accumulator to global memory: element (r, c) goes to base[row_off(r) + c]
// (times scale), skipped where row_off(r) < 0. stage: the warp's own 16 x ld f32 smem.
template <typename RowOff>
__device__ __forceinline__ void frag_store_global(const FragC &f, float *stage, int ld, void *base, bool f32, bool acc,
                                                  float scale, RowOff row_off)
{
    const int lane = threadIdx.x & 31;
    __syncwarp(); // earlier readers of stage are done
    wmma::store_matrix_sync(stage, f, ld, wmma::mem_row_major);
    __syncwarp();
    for (int e = lane; e < 256; e += 32) {
        const int r = e >> 4, c = e & 15;
        const int64_t off = row_off(r);
        if (off >= 0) grad_store(base, f32, off + c, scale * stage[r * ld + c], acc);
    }
}

// ---------------------------------------------------------------- forward

template <int D, int BN_> struct FwdCfg {
    static constexpr int NT = 128, BM = 64, BN = BN_; // 4 warps of 16 rows
    static constexpr int LDQ = D + 8, LDS = BN + 4, LDP = BN + 8, LDO = D + 4;
    static constexpr size_t oQ = 0;                                      // bf16 [BM][LDQ]
    static constexpr size_t oK = oQ + al128(sizeof(bf16) * BM * LDQ);    // bf16 [BN][LDQ]
    static constexpr size_t oV = oK + al128(sizeof(bf16) * BN * LDQ);    // bf16 [BN][LDQ]
    static constexpr size_t oS = oV + al128(sizeof(bf16) * BN * LDQ);    // f32 [BM][LDS]
    static constexpr size_t oP = oS + al128(sizeof(float) * BM * LDS);   // bf16 [BM][LDP]
    static constexpr size_t oO = oP + al128(sizeof(bf16) * BM * LDP);    // f32 [BM][LDO]
    static constexpr size_t oM = oO + al128(sizeof(float) * BM * LDO);   // f32 [BM] running max
    static constexpr size_t oL = oM + al128(sizeof(float) * BM);         // f32 [BM] running sum
    static constexpr size_t bytes = oL + al128(sizeof(float) * BM);
    static_assert(bytes <= kSmemLimit, "flash forward: shared memory");
    static_assert(BN % 32 == 0 && D % 32 == 0, "flash forward: tile sizes");
};

template <int D, int BN>
__global__ void __launch_bounds__(128) flash_fwd_kernel(const FlashArgs a)
{
    typedef FwdCfg<D, BN> C;
    bf16 *sQ = reinterpret_cast<bf16 *>(flash_smem + C::oQ);
    bf16 *sK = reinterpret_cast<bf16 *>(flash_smem + C::oK);
    bf16 *sV = reinterpret_cast<bf16 *>(flash_smem + C::oV);
    float *sS = reinterpret_cast<float *>(flash_smem + C::oS);
    bf16 *sP = reinterpret_cast<bf16 *>(flash_smem + C::oP);
    float *sO = reinterpret_cast<float *>(flash_smem + C::oO);
    float *sM = reinterpret_cast<float *>(flash_smem + C::oM);
    float *sL = reinterpret_cast<float *>(flash_smem + C::oL);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int q0 = blockIdx.x * C::BM, h = blockIdx.y, b = blockIdx.z, hk = h / a.G;
    const int r0 = warp * 16; // this warp's rows of the tile
    const bf16 *qg = a.q + b * a.qs0 + h * a.qs2;
    const bf16 *kg = a.k + b * a.ks0 + hk * a.ks2;
    const bf16 *vg = a.v + b * a.vs0 + hk * a.vs2;

    load_tile<C::BM, D, C::LDQ, C::NT>(sQ, qg, a.qs1, q0, a.Lq);
    for (int e = lane; e < 16 * D; e += 32) sO[(r0 + e / D) * C::LDO + e % D] = 0.f;
    if (lane < 16) {
        sM[r0 + lane] = -INFINITY;
        sL[r0 + lane] = 0.f;
    }
    __syncthreads();
    FragA qf[D / 16];
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) wmma::load_matrix_sync(qf[kk], sQ + r0 * C::LDQ + kk * 16, C::LDQ);

    const int kv_end = key_end(a, q0 + C::BM);
    for (int k0 = 0; k0 < kv_end; k0 += BN) {
        __syncthreads(); // the previous tile's readers of sK / sV are done
        load_tile<BN, D, C::LDQ, C::NT>(sK, kg, a.ks1, k0, a.Lk);
        load_tile<BN, D, C::LDQ, C::NT>(sV, vg, a.vs1, k0, a.Lk);
        __syncthreads();

        // S [16 rows, BN] = Q K^T
#pragma unroll
        for (int n = 0; n < BN / 16; n++) {
            FragC s;
            wmma::fill_fragment(s, 0.f);
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                FragBt kf;
                wmma::load_matrix_sync(kf, sK + n * 16 * C::LDQ + kk * 16, C::LDQ);
                wmma::mma_sync(s, qf[kk], kf, s);
            }
            wmma::store_matrix_sync(sS + r0 * C::LDS + n * 16, s, C::LDS, wmma::mem_row_major);
        }
        __syncwarp();

        // online softmax, one row at a time, lanes across the keys
        for (int r = 0; r < 16; r++) {
            const int row = r0 + r, i = q0 + row, nvis = visible(a, i);
            const float *mrow = mask_row(a, b, i);
            float x[BN / 32], mx = -INFINITY;
#pragma unroll
            for (int t = 0; t < BN / 32; t++) {
                const int c = lane + 32 * t;
                x[t] = score2(a, sS[row * C::LDS + c], mrow, k0 + c, nvis);
                mx = fmaxf(mx, x[t]);
            }
            mx = warp_max(mx);
            const float m_old = sM[row], m_new = fmaxf(m_old, mx);
            const bool none = m_new == -INFINITY; // nothing visible yet: P = 0, O stays 0
            const float alpha = none ? 1.f : exp2f(m_old - m_new);
            float sum = 0.f;
#pragma unroll
            for (int t = 0; t < BN / 32; t++) {
                const int c = lane + 32 * t;
                const float pr = none ? 0.f : exp2f(x[t] - m_new);
                sum += pr;
                float pd = pr;
                if (a.p > 0.f && pr != 0.f) pd = keep_elem(a, b, h, i, k0 + c) ? pr * a.inv_keep : 0.f;
                sP[row * C::LDP + c] = __float2bfloat16_rn(pd);
            }
            sum = warp_sum(sum);
            for (int c = lane; c < D; c += 32) sO[row * C::LDO + c] *= alpha;
            __syncwarp(); // every lane has read sM[row]
            if (lane == 0) {
                sM[row] = m_new;
                sL[row] = sL[row] * alpha + sum;
            }
        }
        __syncwarp();

        // O [16 rows, D] += P V
        FragA pf[BN / 16];
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++) wmma::load_matrix_sync(pf[kk], sP + r0 * C::LDP + kk * 16, C::LDP);
#pragma unroll
        for (int n = 0; n < D / 16; n++) {
            FragC o;
            wmma::load_matrix_sync(o, sO + r0 * C::LDO + n * 16, C::LDO, wmma::mem_row_major);
#pragma unroll
            for (int kk = 0; kk < BN / 16; kk++) {
                FragB vf;
                wmma::load_matrix_sync(vf, sV + kk * 16 * C::LDQ + n * 16, C::LDQ);
                wmma::mma_sync(o, pf[kk], vf, o);
            }
            wmma::store_matrix_sync(sO + r0 * C::LDO + n * 16, o, C::LDO, wmma::mem_row_major);
        }
    }
    __syncwarp();

    // out = O / l, lse = m + log2 l (+inf when the row saw nothing)
    for (int r = 0; r < 16; r++) {
        const int row = r0 + r, i = q0 + row;
        if (i >= a.Lq) break; // rows ascend: the rest are padding too (warp-uniform)
        const float l = sL[row], inv = l > 0.f ? 1.f / l : 0.f;
        bf16 *orow = a.o + (((int64_t)b * a.Lq + i) * a.H + h) * D;
        for (int c = lane; c < D; c += 32) orow[c] = __float2bfloat16_rn(sO[row * C::LDO + c] * inv);
        if (lane == 0) a.lse[((int64_t)b * a.H + h) * a.Lq + i] = l > 0.f ? sM[row] + log2f(l) : INFINITY;
    }
}

// ---------------------------------------------------------------- forward on mma.sync
//
// The same forward as flash_fwd_kernel with everything a warp computes kept in registers
// (FlashAttention-2): S, P and the O accumulator never touch shared memory, only the Q, K
// and V tiles do. m16n8k16 bf16 tensor-core instructions; fragment layouts from the PTX ISA
// (g = lane / 4, t = lane % 4):
//   A 16x16: a[0] = (g, 2t..2t+1), a[1] = (g+8, 2t..), a[2] = (g, 2t+8..), a[3] = (g+8, 2t+8..)
//   B 16x8:  b[0] = (k 2t..2t+1, n g), b[1] = (k 2t+8.., n g)
//   C 16x8:  c[0..1] = (g, 2t..2t+1), c[2..3] = (g+8, 2t..2t+1)
// so the C fragments of two adjacent 8-key tiles of S, rounded to bf16, are the A fragment
// of P for one 16-key step of P V. ldmatrix loads A (Q rows) and B (K rows; V through .trans).

__device__ __forceinline__ void ldsm_x4(uint32_t r[4], const bf16 *p)
{
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

__device__ __forceinline__ void ldsm_x4_t(uint32_t r[4], const bf16 *p)
{
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

// c += A B (16x16 by 16x8, f32 accumulate)
__device__ __forceinline__ void mma16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// two floats as a bf16 pair, the first in the low half (the lower matrix index)
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}

template <int D> struct MmaFwdCfg {
    static constexpr int NT = 128, BM = 64, BN = 64; // 4 warps x 16 query rows; 64 keys per tile
    static constexpr int LD = D + 8;                  // smem row stride: 16-byte pad, no ldmatrix bank conflicts
    static constexpr size_t bytes = sizeof(bf16) * (size_t)(BM + 2 * BN) * LD; // Q, K, V tiles
};

template <int D, bool DROP> // DROP: a.p > 0 (the Philox code costs registers when compiled in)
__global__ void __launch_bounds__(128) flash_fwd_mma_kernel(const FlashArgs a)
{
    typedef MmaFwdCfg<D> C;
    constexpr int BM = C::BM, BN = C::BN, LD = C::LD, NT = C::NT;
    constexpr int KD = D / 16; // k-steps of S = Q K^T
    constexpr int NS = BN / 8; // 8-key tiles of S
    constexpr int NO = D / 8;  // 8-column tiles of O
    bf16 *sQ = reinterpret_cast<bf16 *>(flash_smem);
    bf16 *sK = sQ + BM * LD, *sV = sK + BN * LD;

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int q0 = blockIdx.x * BM, h = blockIdx.y, b = blockIdx.z, hk = h / a.G;
    const bf16 *qg = a.q + b * a.qs0 + h * a.qs2;
    const bf16 *kg = a.k + b * a.ks0 + hk * a.ks2;
    const bf16 *vg = a.v + b * a.vs0 + hk * a.vs2;

    load_tile<BM, D, LD, NT>(sQ, qg, a.qs1, q0, a.Lq);
    __syncthreads();
    uint32_t qf[KD][4];
#pragma unroll
    for (int kk = 0; kk < KD; kk++)
        ldsm_x4(qf[kk], sQ + (warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + kk * 16 + (lane >> 4) * 8);

    // this thread's two query rows
    const int i0 = q0 + warp * 16 + g, i1 = i0 + 8;
    const int nv0 = visible(a, i0), nv1 = visible(a, i1);
    const float *mr0 = mask_row(a, b, i0), *mr1 = mask_row(a, b, i1);
    float o[NO][4];
#pragma unroll
    for (int n = 0; n < NO; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float mx[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f}; // running max (log2 domain), partial sums

    const int kv_end = key_end(a, q0 + BM);
    for (int k0 = 0; k0 < kv_end; k0 += BN) {
        __syncthreads(); // the previous tile's readers of sK / sV are done
        load_tile<BN, D, LD, NT>(sK, kg, a.ks1, k0, a.Lk);
        load_tile<BN, D, LD, NT>(sV, vg, a.vs1, k0, a.Lk);
        __syncthreads();

        float s[NS][4];
#pragma unroll
        for (int n = 0; n < NS; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KD; kk++) {
#pragma unroll
            for (int n = 0; n < NS; n += 2) {
                uint32_t kb[4];
                ldsm_x4(kb, sK + (n * 8 + (lane & 7) + (lane >> 4) * 8) * LD + kk * 16 + ((lane >> 3) & 1) * 8);
                mma16816(s[n], qf[kk], kb[0], kb[1]);
                mma16816(s[n + 1], qf[kk], kb[2], kb[3]);
            }
        }

        // log2-domain scores, the new running max of both rows (a row lives in one quad)
        float mn[2] = {mx[0], mx[1]};
#pragma unroll
        for (int n = 0; n < NS; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int r = e >> 1, j = k0 + n * 8 + 2 * t + (e & 1);
                s[n][e] = score2(a, s[n][e], r ? mr1 : mr0, j, r ? nv1 : nv0);
                mn[r] = fmaxf(mn[r], s[n][e]);
            }
        }
        float alpha[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mn[r] = fmaxf(mn[r], __shfl_xor_sync(0xffffffffu, mn[r], 1));
            mn[r] = fmaxf(mn[r], __shfl_xor_sync(0xffffffffu, mn[r], 2));
            alpha[r] = mn[r] == -INFINITY ? 1.f : exp2f(mx[r] - mn[r]); // nothing visible yet: O stays 0
            mx[r] = mn[r];
        }

        // P (f32 sum before dropout, as the reference), then dropout, in place of S
        float ls[2] = {0.f, 0.f};
#pragma unroll
        for (int n = 0; n < NS; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int r = e >> 1;
                const float pr = mn[r] == -INFINITY ? 0.f : exp2f(s[n][e] - mn[r]);
                ls[r] += pr;
                float pd = pr;
                if (DROP && pr != 0.f)
                    pd = keep_elem(a, b, h, r ? i1 : i0, k0 + n * 8 + 2 * t + (e & 1)) ? pr * a.inv_keep : 0.f;
                s[n][e] = pd;
            }
        }
#pragma unroll
        for (int r = 0; r < 2; r++) l[r] = l[r] * alpha[r] + ls[r];
#pragma unroll
        for (int n = 0; n < NO; n++) {
            o[n][0] *= alpha[0], o[n][1] *= alpha[0];
            o[n][2] *= alpha[1], o[n][3] *= alpha[1];
        }

        // O += P V
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++) {
            const uint32_t pa[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                                    pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                    pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int n = 0; n < NO; n += 2) {
                uint32_t vb[4];
                ldsm_x4_t(vb, sV + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + n * 8 + (lane >> 4) * 8);
                mma16816(o[n], pa, vb[0], vb[1]);
                mma16816(o[n + 1], pa, vb[2], vb[3]);
            }
        }
    }

    // out = O / l, lse = m + log2 l (+inf when the row saw nothing)
#pragma unroll
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
        const int i = r ? i1 : i0;
        if (i >= a.Lq) continue;
        const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
        bf16 *orow = a.o + (((int64_t)b * a.Lq + i) * a.H + h) * D;
#pragma unroll
        for (int n = 0; n < NO; n++)
            *reinterpret_cast<__nv_bfloat162 *>(orow + n * 8 + 2 * t) =
                __floats2bfloat162_rn(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
        if (t == 0) a.lse[((int64_t)b * a.H + h) * a.Lq + i] = l[r] > 0.f ? mx[r] + log2f(l[r]) : INFINITY;
    }
}

// ---------------------------------------------------------------- backward: Delta

// delta[b, h, i] = sum_d dO[b, i, h, d] O[b, i, h, d]; one warp per (b, i, h)
__global__ void __launch_bounds__(256) flash_delta_kernel(const FlashArgs a, int D)
{
    const int lane = threadIdx.x & 31;
    const int64_t r = (int64_t)blockIdx.x * 8 + (threadIdx.x >> 5), rows = (int64_t)a.B * a.Lq * a.H;
    if (r >= rows) return; // whole warps leave; no block barrier below
    const int h = (int)(r % a.H), i = (int)((r / a.H) % a.Lq), b = (int)(r / ((int64_t)a.H * a.Lq));
    const bf16 *o = a.o + r * D;
    const bf16 *g = a.dout + b * a.os0 + (int64_t)i * a.os1 + h * a.os2;
    float s = 0.f;
    for (int d = lane; d < D; d += 32) s += __bfloat162float(o[d]) * __bfloat162float(g[d]);
    s = warp_sum(s);
    if (lane == 0) a.delta[((int64_t)b * a.H + h) * a.Lq + i] = s;
}

// ---------------------------------------------------------------- backward: dK, dV

template <int D, int NW_> struct DkvCfg {
    static constexpr int NW = NW_, NT = NW * 32, BN = 64, BM = 32;
    static constexpr int NSPLIT = NW / 4, DC = D / NSPLIT; // a warp: 16 keys x DC columns of dK and dV
    static constexpr int LDQ = D + 8, LDS = BN + 4, LDP = BN + 8;
    static constexpr size_t oK = 0;                                       // bf16 [BN][LDQ]
    static constexpr size_t oV = oK + al128(sizeof(bf16) * BN * LDQ);     // bf16 [BN][LDQ]
    static constexpr size_t oQ = oV + al128(sizeof(bf16) * BN * LDQ);     // bf16 [BM][LDQ]
    static constexpr size_t oG = oQ + al128(sizeof(bf16) * BM * LDQ);     // bf16 [BM][LDQ] dO
    static constexpr size_t oS = oG + al128(sizeof(bf16) * BM * LDQ);     // f32 [BM][LDS]
    static constexpr size_t oDP = oS + al128(sizeof(float) * BM * LDS);   // f32 [BM][LDS]
    static constexpr size_t oPd = oDP + al128(sizeof(float) * BM * LDS);  // bf16 [BM][LDP]
    static constexpr size_t oDS = oPd + al128(sizeof(bf16) * BM * LDP);   // bf16 [BM][LDP]
    static constexpr size_t oLse = oDS + al128(sizeof(bf16) * BM * LDP);  // f32 [BM]
    static constexpr size_t oDel = oLse + al128(sizeof(float) * BM);      // f32 [BM]
    static constexpr size_t oStg = oDel + al128(sizeof(float) * BM);      // f32 [NW][16][16]
    static constexpr size_t bytes = oStg + al128(sizeof(float) * NW * 256);
    static_assert(bytes <= kSmemLimit, "flash dK/dV: shared memory");
    static_assert(NW % 4 == 0 && D % NSPLIT == 0 && DC % 16 == 0, "flash dK/dV: warp split");
};

template <int D, int NW>
__global__ void __launch_bounds__(NW * 32) flash_bwd_dkv_kernel(const FlashArgs a)
{
    typedef DkvCfg<D, NW> C;
    bf16 *sK = reinterpret_cast<bf16 *>(flash_smem + C::oK);
    bf16 *sV = reinterpret_cast<bf16 *>(flash_smem + C::oV);
    bf16 *sQ = reinterpret_cast<bf16 *>(flash_smem + C::oQ);
    bf16 *sG = reinterpret_cast<bf16 *>(flash_smem + C::oG);
    float *sS = reinterpret_cast<float *>(flash_smem + C::oS);
    float *sDP = reinterpret_cast<float *>(flash_smem + C::oDP);
    bf16 *sPd = reinterpret_cast<bf16 *>(flash_smem + C::oPd);
    bf16 *sDS = reinterpret_cast<bf16 *>(flash_smem + C::oDS);
    float *sLse = reinterpret_cast<float *>(flash_smem + C::oLse);
    float *sDel = reinterpret_cast<float *>(flash_smem + C::oDel);
    float *sStg = reinterpret_cast<float *>(flash_smem + C::oStg);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int k0 = blockIdx.x * C::BN, hk = blockIdx.y, b = blockIdx.z;
    const int kb = warp % 4, cs = warp / 4; // this warp's 16 keys and DC columns
    load_tile<C::BN, D, C::LDQ, C::NT>(sK, a.k + b * a.ks0 + hk * a.ks2, a.ks1, k0, a.Lk);
    load_tile<C::BN, D, C::LDQ, C::NT>(sV, a.v + b * a.vs0 + hk * a.vs2, a.vs1, k0, a.Lk);

    FragC dvf[C::DC / 16], dkf[C::DC / 16];
#pragma unroll
    for (int n = 0; n < C::DC / 16; n++) {
        wmma::fill_fragment(dvf[n], 0.f);
        wmma::fill_fragment(dkf[n], 0.f);
    }
    // queries before i_first see no key of this tile (causal): start at its tile
    int i_begin = 0;
    if (a.causal) {
        const int64_t i_first = (int64_t)k0 - (a.Lk - a.Lq);
        i_begin = i_first <= 0 ? 0 : i_first >= a.Lq ? a.Lq : (int)(i_first / C::BM * C::BM);
    }
    constexpr int NJ = (C::BM / 16) * (C::BN / 16); // 16 x 16 blocks of S (and of dP)

    for (int hh = 0; hh < a.G; hh++) {
        const int h = hk * a.G + hh;
        const bf16 *qg = a.q + b * a.qs0 + h * a.qs2;
        const bf16 *gg = a.dout + b * a.os0 + h * a.os2;
        const float *lse = a.lse + ((int64_t)b * a.H + h) * a.Lq, *del = a.delta + ((int64_t)b * a.H + h) * a.Lq;
        for (int qs = i_begin; qs < a.Lq; qs += C::BM) {
            __syncthreads(); // the previous step's readers are done
            load_tile<C::BM, D, C::LDQ, C::NT>(sQ, qg, a.qs1, qs, a.Lq);
            load_tile<C::BM, D, C::LDQ, C::NT>(sG, gg, a.os1, qs, a.Lq);
            for (int r = threadIdx.x; r < C::BM; r += C::NT) {
                const bool ok = qs + r < a.Lq;
                sLse[r] = ok ? lse[qs + r] : INFINITY;
                sDel[r] = ok ? del[qs + r] : 0.f;
            }
            __syncthreads();

            // S = Q K^T and dP = dO V^T, [BM, BN] each, spread over the warps
            for (int job = warp; job < 2 * NJ; job += NW) {
                const bool is_dp = job >= NJ;
                const int f = is_dp ? job - NJ : job, mb = f / (C::BN / 16), nb = f % (C::BN / 16);
                const bf16 *A = (is_dp ? sG : sQ) + mb * 16 * C::LDQ;
                const bf16 *Bm = (is_dp ? sV : sK) + nb * 16 * C::LDQ;
                FragC c;
                wmma::fill_fragment(c, 0.f);
#pragma unroll
                for (int kk = 0; kk < D / 16; kk++) {
                    FragA af;
                    FragBt bfr;
                    wmma::load_matrix_sync(af, A + kk * 16, C::LDQ);
                    wmma::load_matrix_sync(bfr, Bm + kk * 16, C::LDQ);
                    wmma::mma_sync(c, af, bfr, c);
                }
                wmma::store_matrix_sync((is_dp ? sDP : sS) + mb * 16 * C::LDS + nb * 16, c, C::LDS, wmma::mem_row_major);
            }
            __syncthreads();

            // P = exp2(s2 - lse); Pd = dropped P; dS = P (dP' - Delta) with dP' = dropped dP
            for (int r = warp; r < C::BM; r += NW) {
                const int i = qs + r, nvis = visible(a, i);
                const float *mrow = mask_row(a, b, i);
                const float l2 = sLse[r], dl = sDel[r];
#pragma unroll
                for (int t = 0; t < C::BN / 32; t++) {
                    const int c = lane + 32 * t, j = k0 + c;
                    float pd = 0.f, ds = 0.f;
                    if (j < nvis) {
                        const float pr = exp2f(score2(a, sS[r * C::LDS + c], mrow, j, nvis) - l2);
                        float dp = sDP[r * C::LDS + c];
                        pd = pr;
                        if (a.p > 0.f) {
                            const bool kp = keep_elem(a, b, h, i, j);
                            pd = kp ? pr * a.inv_keep : 0.f;
                            dp = kp ? dp * a.inv_keep : 0.f;
                        }
                        ds = pr * (dp - dl);
                    }
                    sPd[r * C::LDP + c] = __float2bfloat16_rn(pd);
                    sDS[r * C::LDP + c] = __float2bfloat16_rn(ds);
                }
            }
            __syncthreads();

            // dV += Pd^T dO, dK += dS^T Q for this warp's keys and columns
#pragma unroll
            for (int kk = 0; kk < C::BM / 16; kk++) {
                FragAt pt, st;
                wmma::load_matrix_sync(pt, sPd + kk * 16 * C::LDP + kb * 16, C::LDP);
                wmma::load_matrix_sync(st, sDS + kk * 16 * C::LDP + kb * 16, C::LDP);
#pragma unroll
                for (int n = 0; n < C::DC / 16; n++) {
                    const int col = cs * C::DC + n * 16;
                    FragB gf, qf;
                    wmma::load_matrix_sync(gf, sG + kk * 16 * C::LDQ + col, C::LDQ);
                    wmma::mma_sync(dvf[n], pt, gf, dvf[n]);
                    wmma::load_matrix_sync(qf, sQ + kk * 16 * C::LDQ + col, C::LDQ);
                    wmma::mma_sync(dkf[n], st, qf, dkf[n]);
                }
            }
        }
    }

    // dK = scale dS^T Q, then (after a barrier: k and v may share a buffer) dV
    float *stg = sStg + warp * 256;
    const int j0 = k0 + kb * 16;
    if (a.dk) {
#pragma unroll
        for (int n = 0; n < C::DC / 16; n++) {
            const int col = cs * C::DC + n * 16;
            frag_store_global(dkf[n], stg, 16, a.dk, a.dk_f32, a.acc_k, a.scale, [&](int r) -> int64_t {
                return j0 + r < a.Lk ? b * a.dks0 + (int64_t)(j0 + r) * a.dks1 + hk * a.dks2 + col : -1;
            });
        }
    }
    __syncthreads();
    if (a.dv) {
#pragma unroll
        for (int n = 0; n < C::DC / 16; n++) {
            const int col = cs * C::DC + n * 16;
            frag_store_global(dvf[n], stg, 16, a.dv, a.dv_f32, a.acc_v, 1.f, [&](int r) -> int64_t {
                return j0 + r < a.Lk ? b * a.dvs0 + (int64_t)(j0 + r) * a.dvs1 + hk * a.dvs2 + col : -1;
            });
        }
    }
}

// ---------------------------------------------------------------- backward: dQ

template <int D, int BN_> struct DqCfg {
    static constexpr int NT = 128, BM = 64, BN = BN_; // 4 warps of 16 rows
    static constexpr int LDQ = D + 8, LDS = BN + 4, LDP = BN + 8;
    static constexpr size_t oQ = 0;                                       // bf16 [BM][LDQ]
    static constexpr size_t oG = oQ + al128(sizeof(bf16) * BM * LDQ);     // bf16 [BM][LDQ] dO
    static constexpr size_t oK = oG + al128(sizeof(bf16) * BM * LDQ);     // bf16 [BN][LDQ]
    static constexpr size_t oV = oK + al128(sizeof(bf16) * BN * LDQ);     // bf16 [BN][LDQ]
    static constexpr size_t oS = oV + al128(sizeof(bf16) * BN * LDQ);     // f32 [BM][LDS]
    static constexpr size_t oDP = oS + al128(sizeof(float) * BM * LDS);   // f32 [BM][LDS]
    static constexpr size_t oDS = oDP + al128(sizeof(float) * BM * LDS);  // bf16 [BM][LDP]
    static constexpr size_t oLse = oDS + al128(sizeof(bf16) * BM * LDP);  // f32 [BM]
    static constexpr size_t oDel = oLse + al128(sizeof(float) * BM);      // f32 [BM]
    static constexpr size_t bytes = oDel + al128(sizeof(float) * BM);
    static_assert(bytes <= kSmemLimit, "flash dQ: shared memory");
    static_assert(BN % 32 == 0 && LDS >= 16, "flash dQ: tile sizes");
};

template <int D, int BN>
__global__ void __launch_bounds__(128) flash_bwd_dq_kernel(const FlashArgs a)
{
    typedef DqCfg<D, BN> C;
    bf16 *sQ = reinterpret_cast<bf16 *>(flash_smem + C::oQ);
    bf16 *sG = reinterpret_cast<bf16 *>(flash_smem + C::oG);
    bf16 *sK = reinterpret_cast<bf16 *>(flash_smem + C::oK);
    bf16 *sV = reinterpret_cast<bf16 *>(flash_smem + C::oV);
    float *sS = reinterpret_cast<float *>(flash_smem + C::oS);
    float *sDP = reinterpret_cast<float *>(flash_smem + C::oDP);
    bf16 *sDS = reinterpret_cast<bf16 *>(flash_smem + C::oDS);
    float *sLse = reinterpret_cast<float *>(flash_smem + C::oLse);
    float *sDel = reinterpret_cast<float *>(flash_smem + C::oDel);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int q0 = blockIdx.x * C::BM, h = blockIdx.y, b = blockIdx.z, hk = h / a.G;
    const int r0 = warp * 16;
    const bf16 *kg = a.k + b * a.ks0 + hk * a.ks2;
    const bf16 *vg = a.v + b * a.vs0 + hk * a.vs2;
    load_tile<C::BM, D, C::LDQ, C::NT>(sQ, a.q + b * a.qs0 + h * a.qs2, a.qs1, q0, a.Lq);
    load_tile<C::BM, D, C::LDQ, C::NT>(sG, a.dout + b * a.os0 + h * a.os2, a.os1, q0, a.Lq);
    for (int r = threadIdx.x; r < C::BM; r += C::NT) {
        const int i = q0 + r;
        const int64_t at = ((int64_t)b * a.H + h) * a.Lq + i;
        sLse[r] = i < a.Lq ? a.lse[at] : INFINITY;
        sDel[r] = i < a.Lq ? a.delta[at] : 0.f;
    }
    __syncthreads();
    FragA qf[D / 16], gf[D / 16];
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        wmma::load_matrix_sync(qf[kk], sQ + r0 * C::LDQ + kk * 16, C::LDQ);
        wmma::load_matrix_sync(gf[kk], sG + r0 * C::LDQ + kk * 16, C::LDQ);
    }
    FragC dqf[D / 16];
#pragma unroll
    for (int n = 0; n < D / 16; n++) wmma::fill_fragment(dqf[n], 0.f);

    const int kv_end = key_end(a, q0 + C::BM);
    for (int k0 = 0; k0 < kv_end; k0 += BN) {
        __syncthreads();
        load_tile<BN, D, C::LDQ, C::NT>(sK, kg, a.ks1, k0, a.Lk);
        load_tile<BN, D, C::LDQ, C::NT>(sV, vg, a.vs1, k0, a.Lk);
        __syncthreads();

        // S = Q K^T, dP = dO V^T for this warp's 16 rows
#pragma unroll
        for (int n = 0; n < BN / 16; n++) {
            FragC s, dp;
            wmma::fill_fragment(s, 0.f);
            wmma::fill_fragment(dp, 0.f);
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                FragBt kf, vf;
                wmma::load_matrix_sync(kf, sK + n * 16 * C::LDQ + kk * 16, C::LDQ);
                wmma::mma_sync(s, qf[kk], kf, s);
                wmma::load_matrix_sync(vf, sV + n * 16 * C::LDQ + kk * 16, C::LDQ);
                wmma::mma_sync(dp, gf[kk], vf, dp);
            }
            wmma::store_matrix_sync(sS + r0 * C::LDS + n * 16, s, C::LDS, wmma::mem_row_major);
            wmma::store_matrix_sync(sDP + r0 * C::LDS + n * 16, dp, C::LDS, wmma::mem_row_major);
        }
        __syncwarp();

        for (int r = 0; r < 16; r++) {
            const int row = r0 + r, i = q0 + row, nvis = visible(a, i);
            const float *mrow = mask_row(a, b, i);
            const float l2 = sLse[row], dl = sDel[row];
#pragma unroll
            for (int t = 0; t < BN / 32; t++) {
                const int c = lane + 32 * t, j = k0 + c;
                float ds = 0.f;
                if (j < nvis) {
                    const float pr = exp2f(score2(a, sS[row * C::LDS + c], mrow, j, nvis) - l2);
                    float dp = sDP[row * C::LDS + c];
                    if (a.p > 0.f) dp = keep_elem(a, b, h, i, j) ? dp * a.inv_keep : 0.f;
                    ds = pr * (dp - dl);
                }
                sDS[row * C::LDP + c] = __float2bfloat16_rn(ds);
            }
        }
        __syncwarp();

        // dQ [16 rows, D] += dS K
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++) {
            FragA sf;
            wmma::load_matrix_sync(sf, sDS + r0 * C::LDP + kk * 16, C::LDP);
#pragma unroll
            for (int n = 0; n < D / 16; n++) {
                FragB kf;
                wmma::load_matrix_sync(kf, sK + kk * 16 * C::LDQ + n * 16, C::LDQ);
                wmma::mma_sync(dqf[n], sf, kf, dqf[n]);
            }
        }
    }

    // dQ = scale dS K, staged through this warp's rows of sS
    float *stg = sS + r0 * C::LDS;
#pragma unroll
    for (int n = 0; n < D / 16; n++)
        frag_store_global(dqf[n], stg, C::LDS, a.dq, a.dq_f32, a.acc_q, a.scale, [&](int r) -> int64_t {
            const int i = q0 + r0 + r;
            return i < a.Lq ? b * a.dqs0 + (int64_t)i * a.dqs1 + h * a.dqs2 + n * 16 : -1;
        });
}

// ---------------------------------------------------------------- backward on mma.sync
//
// The backward of flash_fwd_mma_kernel, FlashAttention-2 style, fragments as above.
//   flash_bwd_dq_mma_kernel  block = (64 queries, head, batch), a warp owns 16 query rows,
//                            Q and dO fragments in registers; per 64-key tile: S = Q K^T,
//                            dPd = dO V^T, dS = P (dP' - Delta), dQ += dS K.
//   flash_bwd_dkv_mma_kernel block = (64 keys, kv head, batch), a warp owns 16 keys, K and V
//                            fragments in registers; per head of the group and 32-query
//                            tile: S^T = K Q^T, dPd^T = V dO^T, dV += Pd^T dO,
//                            dK += dS^T Q. dK is stored, then (block barrier) dV.

// element e of C fragment tile n: row 16-row-block-relative g + 8 (e >> 1), column n 8 + 2 t + (e & 1)
template <int D, bool DROP>
__global__ void __launch_bounds__(128) flash_bwd_dq_mma_kernel(const FlashArgs a)
{
    constexpr int BM = 64, BN = 64, LD = D + 8, NT = 128, KD = D / 16, NS = BN / 8, NO = D / 8;
    bf16 *sQ = reinterpret_cast<bf16 *>(flash_smem);
    bf16 *sG = sQ + BM * LD, *sK = sG + BM * LD, *sV = sK + BN * LD;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int q0 = blockIdx.x * BM, h = blockIdx.y, b = blockIdx.z, hk = h / a.G;
    const bf16 *kg = a.k + b * a.ks0 + hk * a.ks2;
    const bf16 *vg = a.v + b * a.vs0 + hk * a.vs2;

    load_tile<BM, D, LD, NT>(sQ, a.q + b * a.qs0 + h * a.qs2, a.qs1, q0, a.Lq);
    load_tile<BM, D, LD, NT>(sG, a.dout + b * a.os0 + h * a.os2, a.os1, q0, a.Lq);
    __syncthreads();
    uint32_t qf[KD][4], gf[KD][4];
#pragma unroll
    for (int kk = 0; kk < KD; kk++) {
        const int off = (warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + kk * 16 + (lane >> 4) * 8;
        ldsm_x4(qf[kk], sQ + off);
        ldsm_x4(gf[kk], sG + off);
    }
    const int i0 = q0 + warp * 16 + g, i1 = i0 + 8;
    const int nv0 = visible(a, i0), nv1 = visible(a, i1);
    const float *mr0 = mask_row(a, b, i0), *mr1 = mask_row(a, b, i1);
    const float *lse = a.lse + ((int64_t)b * a.H + h) * a.Lq, *del = a.delta + ((int64_t)b * a.H + h) * a.Lq;
    const float ls0 = i0 < a.Lq ? lse[i0] : INFINITY, ls1 = i1 < a.Lq ? lse[i1] : INFINITY;
    const float de0 = i0 < a.Lq ? del[i0] : 0.f, de1 = i1 < a.Lq ? del[i1] : 0.f;
    float dq[NO][4];
#pragma unroll
    for (int n = 0; n < NO; n++) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.f;

    const int kv_end = key_end(a, q0 + BM);
    for (int k0 = 0; k0 < kv_end; k0 += BN) {
        __syncthreads();
        load_tile<BN, D, LD, NT>(sK, kg, a.ks1, k0, a.Lk);
        load_tile<BN, D, LD, NT>(sV, vg, a.vs1, k0, a.Lk);
        __syncthreads();
        float s[NS][4], dp[NS][4];
#pragma unroll
        for (int n = 0; n < NS; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) s[n][e] = dp[n][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KD; kk++) {
#pragma unroll
            for (int n = 0; n < NS; n += 2) {
                const int off = (n * 8 + (lane & 7) + (lane >> 4) * 8) * LD + kk * 16 + ((lane >> 3) & 1) * 8;
                uint32_t kb[4], vb[4];
                ldsm_x4(kb, sK + off);
                ldsm_x4(vb, sV + off);
                mma16816(s[n], qf[kk], kb[0], kb[1]);
                mma16816(s[n + 1], qf[kk], kb[2], kb[3]);
                mma16816(dp[n], gf[kk], vb[0], vb[1]);
                mma16816(dp[n + 1], gf[kk], vb[2], vb[3]);
            }
        }
        // dS = P (dP' - Delta), in place of S
#pragma unroll
        for (int n = 0; n < NS; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int r = e >> 1, j = k0 + n * 8 + 2 * t + (e & 1);
                const float s2 = score2(a, s[n][e], r ? mr1 : mr0, j, r ? nv1 : nv0);
                const float pr = exp2f(s2 - (r ? ls1 : ls0));
                float d = dp[n][e];
                if (DROP) d = pr != 0.f && keep_elem(a, b, h, r ? i1 : i0, j) ? d * a.inv_keep : 0.f;
                s[n][e] = pr * (d - (r ? de1 : de0));
            }
        }
        // dQ += dS K
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++) {
            const uint32_t sa[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                                    pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                    pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int n = 0; n < NO; n += 2) {
                uint32_t kb[4];
                ldsm_x4_t(kb, sK + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + n * 8 + (lane >> 4) * 8);
                mma16816(dq[n], sa, kb[0], kb[1]);
                mma16816(dq[n + 1], sa, kb[2], kb[3]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int i = r ? i1 : i0;
        if (i >= a.Lq) continue;
        const int64_t row = b * a.dqs0 + (int64_t)i * a.dqs1 + h * a.dqs2;
#pragma unroll
        for (int n = 0; n < NO; n++)
#pragma unroll
            for (int c = 0; c < 2; c++) grad_store(a.dq, a.dq_f32, row + n * 8 + 2 * t + c, a.scale * dq[n][2 * r + c], a.acc_q);
    }
}

template <int D, bool DROP>
__global__ void __launch_bounds__(128) flash_bwd_dkv_mma_kernel(const FlashArgs a)
{
    constexpr int BN = 64, BM = 32, LD = D + 8, NT = 128, KD = D / 16, NS = BM / 8, NO = D / 8;
    bf16 *sK = reinterpret_cast<bf16 *>(flash_smem);
    bf16 *sV = sK + BN * LD, *sQ = sV + BN * LD, *sG = sQ + BM * LD;
    float *sLse = reinterpret_cast<float *>(sG + BM * LD), *sDel = sLse + BM;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int k0 = blockIdx.x * BN, hk = blockIdx.y, b = blockIdx.z;

    load_tile<BN, D, LD, NT>(sK, a.k + b * a.ks0 + hk * a.ks2, a.ks1, k0, a.Lk);
    load_tile<BN, D, LD, NT>(sV, a.v + b * a.vs0 + hk * a.vs2, a.vs1, k0, a.Lk);
    __syncthreads();
    uint32_t kf[KD][4], vf[KD][4];
#pragma unroll
    for (int kk = 0; kk < KD; kk++) {
        const int off = (warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + kk * 16 + (lane >> 4) * 8;
        ldsm_x4(kf[kk], sK + off);
        ldsm_x4(vf[kk], sV + off);
    }
    const int j0 = k0 + warp * 16 + g, j1 = j0 + 8; // this thread's two keys
    float dk[NO][4], dv[NO][4];
#pragma unroll
    for (int n = 0; n < NO; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) dk[n][e] = dv[n][e] = 0.f;
    // queries before i_first see no key of this tile (causal): start at its tile
    int i_begin = 0;
    if (a.causal) {
        const int64_t i_first = (int64_t)k0 - (a.Lk - a.Lq);
        i_begin = i_first <= 0 ? 0 : i_first >= a.Lq ? a.Lq : (int)(i_first / BM * BM);
    }
    for (int hh = 0; hh < a.G; hh++) {
        const int h = hk * a.G + hh;
        const bf16 *qg = a.q + b * a.qs0 + h * a.qs2, *gg = a.dout + b * a.os0 + h * a.os2;
        const float *lse = a.lse + ((int64_t)b * a.H + h) * a.Lq, *del = a.delta + ((int64_t)b * a.H + h) * a.Lq;
        for (int qs = i_begin; qs < a.Lq; qs += BM) {
            __syncthreads();
            load_tile<BM, D, LD, NT>(sQ, qg, a.qs1, qs, a.Lq);
            load_tile<BM, D, LD, NT>(sG, gg, a.os1, qs, a.Lq);
            for (int r = threadIdx.x; r < BM; r += NT) {
                const bool ok = qs + r < a.Lq;
                sLse[r] = ok ? lse[qs + r] : INFINITY;
                sDel[r] = ok ? del[qs + r] : 0.f;
            }
            __syncthreads();
            float st[NS][4], dpt[NS][4]; // [keys x queries]
#pragma unroll
            for (int n = 0; n < NS; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) st[n][e] = dpt[n][e] = 0.f;
#pragma unroll
            for (int kk = 0; kk < KD; kk++) {
#pragma unroll
                for (int n = 0; n < NS; n += 2) {
                    const int off = (n * 8 + (lane & 7) + (lane >> 4) * 8) * LD + kk * 16 + ((lane >> 3) & 1) * 8;
                    uint32_t qb[4], gb[4];
                    ldsm_x4(qb, sQ + off);
                    ldsm_x4(gb, sG + off);
                    mma16816(st[n], kf[kk], qb[0], qb[1]);
                    mma16816(st[n + 1], kf[kk], qb[2], qb[3]);
                    mma16816(dpt[n], vf[kk], gb[0], gb[1]);
                    mma16816(dpt[n + 1], vf[kk], gb[2], gb[3]);
                }
            }
            // Pd^T into st's place, dS^T into dpt's
#pragma unroll
            for (int n = 0; n < NS; n++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int c = n * 8 + 2 * t + (e & 1), i = qs + c, j = (e >> 1) ? j1 : j0;
                    const float s2 = score2(a, st[n][e], mask_row(a, b, i), j, visible(a, i));
                    const float pr = exp2f(s2 - sLse[c]);
                    float pd = pr, d = dpt[n][e];
                    if (DROP) {
                        const bool keep = pr != 0.f && keep_elem(a, b, h, i, j);
                        pd = keep ? pr * a.inv_keep : 0.f;
                        d = keep ? d * a.inv_keep : 0.f;
                    }
                    st[n][e] = pd;
                    dpt[n][e] = pr * (d - sDel[c]);
                }
            }
            // dV += Pd^T dO, dK += dS^T Q
#pragma unroll
            for (int kk = 0; kk < BM / 16; kk++) {
                const uint32_t pa[4] = {pack_bf16(st[2 * kk][0], st[2 * kk][1]), pack_bf16(st[2 * kk][2], st[2 * kk][3]),
                                        pack_bf16(st[2 * kk + 1][0], st[2 * kk + 1][1]),
                                        pack_bf16(st[2 * kk + 1][2], st[2 * kk + 1][3])};
                const uint32_t sa[4] = {pack_bf16(dpt[2 * kk][0], dpt[2 * kk][1]), pack_bf16(dpt[2 * kk][2], dpt[2 * kk][3]),
                                        pack_bf16(dpt[2 * kk + 1][0], dpt[2 * kk + 1][1]),
                                        pack_bf16(dpt[2 * kk + 1][2], dpt[2 * kk + 1][3])};
#pragma unroll
                for (int n = 0; n < NO; n += 2) {
                    const int off = (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + n * 8 + (lane >> 4) * 8;
                    uint32_t gb[4], qb[4];
                    ldsm_x4_t(gb, sG + off);
                    ldsm_x4_t(qb, sQ + off);
                    mma16816(dv[n], pa, gb[0], gb[1]);
                    mma16816(dv[n + 1], pa, gb[2], gb[3]);
                    mma16816(dk[n], sa, qb[0], qb[1]);
                    mma16816(dk[n + 1], sa, qb[2], qb[3]);
                }
            }
        }
    }
    // dK, then dV: they may be one buffer (self-attention), the later one accumulating;
    // a thread stores the same (key, column) elements of both
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int j = r ? j1 : j0;
        if (j >= a.Lk || !a.dk) continue;
        const int64_t row = b * a.dks0 + (int64_t)j * a.dks1 + hk * a.dks2;
#pragma unroll
        for (int n = 0; n < NO; n++)
#pragma unroll
            for (int c = 0; c < 2; c++) grad_store(a.dk, a.dk_f32, row + n * 8 + 2 * t + c, a.scale * dk[n][2 * r + c], a.acc_k);
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int j = r ? j1 : j0;
        if (j >= a.Lk || !a.dv) continue;
        const int64_t row = b * a.dvs0 + (int64_t)j * a.dvs1 + hk * a.dvs2;
#pragma unroll
        for (int n = 0; n < NO; n++)
#pragma unroll
            for (int c = 0; c < 2; c++) grad_store(a.dv, a.dv_f32, row + n * 8 + 2 * t + c, dv[n][2 * r + c], a.acc_v);
    }
}

// ---------------------------------------------------------------- launchers

// q, k, v, dO as the kernels read them: bf16, innermost stride 1, rows 16-byte aligned.
bool tile_ok(const gc_tensor *x)
{
    if (!x || x->dtype != GC_BF16 || x->ndim != 4 || x->stride[3] != 1) return false;
    if ((uintptr_t)gc_tensor_data(x) % 16 != 0) return false;
    for (int d = 0; d < 3; d++)
        if (x->shape[d] > 1 && x->stride[d] % 8 != 0) return false;
    return true;
}

template <typename K> gc_status set_smem(K kernel, size_t bytes)
{
    if (bytes > 48 * 1024) GC_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
    return GC_OK;
}

FlashArgs base_args(const gc_tensor *q, const gc_tensor *k, const gc_tensor *v, const gc_tensor *mask, const gc_tensor *lse,
                    float scale, bool causal, float p, uint32_t op, gc_rand_context rc)
{
    FlashArgs a = {};
    a.q = static_cast<const bf16 *>(gc_tensor_data(q));
    a.k = static_cast<const bf16 *>(gc_tensor_data(k));
    a.v = static_cast<const bf16 *>(gc_tensor_data(v));
    a.qs0 = q->stride[0], a.qs1 = q->stride[1], a.qs2 = q->stride[2];
    a.ks0 = k->stride[0], a.ks1 = k->stride[1], a.ks2 = k->stride[2];
    a.vs0 = v->stride[0], a.vs1 = v->stride[1], a.vs2 = v->stride[2];
    a.mask = mask ? static_cast<const float *>(gc_tensor_data(mask)) : nullptr;
    a.mask_bs = mask && mask->ndim == 3 ? q->shape[1] * k->shape[1] : 0;
    a.B = (int)q->shape[0], a.Lq = (int)q->shape[1], a.H = (int)q->shape[2], a.Lk = (int)k->shape[1];
    a.G = (int)(q->shape[2] / k->shape[2]);
    a.scale = scale, a.scale_log2 = scale * kLog2e;
    a.causal = causal;
    a.p = p, a.inv_keep = 1.f / (1.f - p);
    a.seed = rc.seed, a.step = rc.step, a.op = op, a.sample_offset = rc.sample_offset;
    a.lse = static_cast<float *>(gc_tensor_data(lse));
    return a;
}

template <int D, int BN> gc_status launch_fwd(const FlashArgs &a)
{
    typedef FwdCfg<D, BN> C;
    GC_TRY(set_smem(flash_fwd_kernel<D, BN>, C::bytes));
    dim3 grid((unsigned)((a.Lq + C::BM - 1) / C::BM), (unsigned)a.H, (unsigned)a.B);
    flash_fwd_kernel<D, BN><<<grid, C::NT, C::bytes, gc_cuda_stream()>>>(a);
    GC_CUDA_LAUNCH_CHECK();
    return GC_OK;
}

template <int D> gc_status launch_fwd_mma(const FlashArgs &a)
{
    typedef MmaFwdCfg<D> C;
    dim3 grid((unsigned)((a.Lq + C::BM - 1) / C::BM), (unsigned)a.H, (unsigned)a.B);
    if (a.p > 0.f) {
        GC_TRY(set_smem(flash_fwd_mma_kernel<D, true>, C::bytes));
        flash_fwd_mma_kernel<D, true><<<grid, C::NT, C::bytes, gc_cuda_stream()>>>(a);
    } else {
        GC_TRY(set_smem(flash_fwd_mma_kernel<D, false>, C::bytes));
        flash_fwd_mma_kernel<D, false><<<grid, C::NT, C::bytes, gc_cuda_stream()>>>(a);
    }
    GC_CUDA_LAUNCH_CHECK();
    return GC_OK;
}

template <int D> gc_status launch_bwd_mma(const FlashArgs &a)
{
    const int64_t rows = (int64_t)a.B * a.Lq * a.H;
    flash_delta_kernel<<<(unsigned)((rows + 7) / 8), 256, 0, gc_cuda_stream()>>>(a, D);
    GC_CUDA_LAUNCH_CHECK();
    const bool drop = a.p > 0.f;
    if (a.dq) {
        const size_t bytes = sizeof(bf16) * (size_t)(4 * 64) * (D + 8);
        dim3 grid((unsigned)((a.Lq + 63) / 64), (unsigned)a.H, (unsigned)a.B);
        if (drop) {
            GC_TRY(set_smem(flash_bwd_dq_mma_kernel<D, true>, bytes));
            flash_bwd_dq_mma_kernel<D, true><<<grid, 128, bytes, gc_cuda_stream()>>>(a);
        } else {
            GC_TRY(set_smem(flash_bwd_dq_mma_kernel<D, false>, bytes));
            flash_bwd_dq_mma_kernel<D, false><<<grid, 128, bytes, gc_cuda_stream()>>>(a);
        }
        GC_CUDA_LAUNCH_CHECK();
    }
    if (a.dk || a.dv) {
        const size_t bytes = sizeof(bf16) * (size_t)(2 * 64 + 2 * 32) * (D + 8) + sizeof(float) * 2 * 32;
        dim3 grid((unsigned)((a.Lk + 63) / 64), (unsigned)(a.H / a.G), (unsigned)a.B);
        if (drop) {
            GC_TRY(set_smem(flash_bwd_dkv_mma_kernel<D, true>, bytes));
            flash_bwd_dkv_mma_kernel<D, true><<<grid, 128, bytes, gc_cuda_stream()>>>(a);
        } else {
            GC_TRY(set_smem(flash_bwd_dkv_mma_kernel<D, false>, bytes));
            flash_bwd_dkv_mma_kernel<D, false><<<grid, 128, bytes, gc_cuda_stream()>>>(a);
        }
        GC_CUDA_LAUNCH_CHECK();
    }
    return GC_OK;
}

template <int D, int BN, int NW> gc_status launch_bwd(const FlashArgs &a)
{
    const int64_t rows = (int64_t)a.B * a.Lq * a.H;
    flash_delta_kernel<<<(unsigned)((rows + 7) / 8), 256, 0, gc_cuda_stream()>>>(a, D);
    GC_CUDA_LAUNCH_CHECK();
    if (a.dq) {
        typedef DqCfg<D, BN> C;
        GC_TRY(set_smem(flash_bwd_dq_kernel<D, BN>, C::bytes));
        dim3 grid((unsigned)((a.Lq + C::BM - 1) / C::BM), (unsigned)a.H, (unsigned)a.B);
        flash_bwd_dq_kernel<D, BN><<<grid, C::NT, C::bytes, gc_cuda_stream()>>>(a);
        GC_CUDA_LAUNCH_CHECK();
    }
    if (a.dk || a.dv) {
        typedef DkvCfg<D, NW> C;
        GC_TRY(set_smem(flash_bwd_dkv_kernel<D, NW>, C::bytes));
        dim3 grid((unsigned)((a.Lk + C::BN - 1) / C::BN), (unsigned)(a.H / a.G), (unsigned)a.B);
        flash_bwd_dkv_kernel<D, NW><<<grid, C::NT, C::bytes, gc_cuda_stream()>>>(a);
        GC_CUDA_LAUNCH_CHECK();
    }
    return GC_OK;
}

} // namespace

// Can the flash kernels take these inputs? (else attention.c uses the GEMM path)
extern "C" bool gc_cuda_flash_attention_supported(const gc_tensor *q, const gc_tensor *k, const gc_tensor *v)
{
    if (!tile_ok(q) || !tile_ok(k) || !tile_ok(v)) return false;
    const int64_t D = q->shape[3];
    if (D != 32 && D != 64 && D != 128) return false;
    if (k->shape[2] <= 0 || q->shape[2] % k->shape[2] != 0) return false;
    // grid limits (y, z < 65536) and int row indices
    return q->shape[0] < 65536 && q->shape[2] < 65536 && q->shape[1] < (1 << 30) && k->shape[1] < (1 << 30);
}

// out [B, Lq, H, D] bf16 contiguous, lse [B, H, Lq] f32; mask contiguous f32 [Lq, Lk] or
// [B, Lq, Lk] or null. rc: the RandContext of the forward (dropout).
extern "C" gc_status gc_cuda_flash_attention_fwd(const gc_tensor *q, const gc_tensor *k, const gc_tensor *v,
                                                const gc_tensor *mask, gc_tensor *out, gc_tensor *lse, float scale,
                                                bool causal, float p, uint32_t op, gc_rand_context rc)
{
    if (!gc_cuda_flash_attention_supported(q, k, v) || out->dtype != GC_BF16 || !gc_tensor_is_contiguous(out))
        return gc_error_set(GC_ERR_INVALID, "flash attention: unsupported inputs (see gc_cuda_flash_attention_supported)");
    FlashArgs a = base_args(q, k, v, mask, lse, scale, causal, p, op, rc);
    a.o = static_cast<bf16 *>(gc_tensor_data(out));
    if (a.B == 0 || a.Lq == 0 || a.Lk == 0 || a.H == 0) /* attention.c handles empty shapes */
        return gc_error_set(GC_ERR_SHAPE, "flash attention: empty shapes are not launched");
    /* GC_FLASH_FWD=wmma: the first, shared-memory forward (kept as a second implementation
     * to compare against; the default keeps S, P and O in registers) */
    const char *e = getenv("GC_FLASH_FWD");
    if (e && !strcmp(e, "wmma")) {
        switch (q->shape[3]) {
        case 32: return launch_fwd<32, 64>(a);
        case 64: return launch_fwd<64, 64>(a);
        default: return launch_fwd<128, 32>(a);
        }
    }
    switch (q->shape[3]) {
    case 32: return launch_fwd_mma<32>(a);
    case 64: return launch_fwd_mma<64>(a);
    default: return launch_fwd_mma<128>(a);
    }
}

// Gradients into dq [B, Lq, H, D], dk/dv [B, Lk, Hkv, D] (f32 or bf16, innermost stride 1;
// null: not wanted), = or += per acc_*. dout: dO [B, Lq, H, D] bf16; delta: scratch f32
// [B, H, Lq]. The launches run dQ, then dK, then dV: buffers shared between q, k, v must
// be given with acc set on the later ones (gc_grad_target does this when fetched in order).
extern "C" gc_status gc_cuda_flash_attention_bwd(const gc_tensor *q, const gc_tensor *k, const gc_tensor *v,
                                                const gc_tensor *mask, const gc_tensor *out, const gc_tensor *lse,
                                                const gc_tensor *dout, gc_tensor *delta, gc_tensor *dq, bool acc_q,
                                                gc_tensor *dk, bool acc_k, gc_tensor *dv, bool acc_v, float scale,
                                                bool causal, float p, uint32_t op, gc_rand_context rc)
{
    if (!gc_cuda_flash_attention_supported(q, k, v) || !tile_ok(dout) || out->dtype != GC_BF16 ||
        !gc_tensor_is_contiguous(out))
        return gc_error_set(GC_ERR_INVALID, "flash attention backward: unsupported inputs");
    gc_tensor *const gs[3] = {dq, dk, dv};
    for (int i = 0; i < 3; i++)
        if (gs[i] && (gs[i]->ndim != 4 || gs[i]->stride[3] != 1 || (gs[i]->dtype != GC_F32 && gs[i]->dtype != GC_BF16)))
            return gc_error_set(GC_ERR_INVALID, "flash attention backward: gradient %d is not f32/bf16 with unit inner stride", i);
    FlashArgs a = base_args(q, k, v, mask, lse, scale, causal, p, op, rc);
    a.o = static_cast<bf16 *>(gc_tensor_data(out));
    a.dout = static_cast<const bf16 *>(gc_tensor_data(dout));
    a.os0 = dout->stride[0], a.os1 = dout->stride[1], a.os2 = dout->stride[2];
    a.delta = static_cast<float *>(gc_tensor_data(delta));
    if (dq) {
        a.dq = gc_tensor_data(dq), a.dq_f32 = dq->dtype == GC_F32, a.acc_q = acc_q;
        a.dqs0 = dq->stride[0], a.dqs1 = dq->stride[1], a.dqs2 = dq->stride[2];
    }
    if (dk) {
        a.dk = gc_tensor_data(dk), a.dk_f32 = dk->dtype == GC_F32, a.acc_k = acc_k;
        a.dks0 = dk->stride[0], a.dks1 = dk->stride[1], a.dks2 = dk->stride[2];
    }
    if (dv) {
        a.dv = gc_tensor_data(dv), a.dv_f32 = dv->dtype == GC_F32, a.acc_v = acc_v;
        a.dvs0 = dv->stride[0], a.dvs1 = dv->stride[1], a.dvs2 = dv->stride[2];
    }
    if (a.B == 0 || a.Lq == 0 || a.Lk == 0 || a.H == 0)
        return gc_error_set(GC_ERR_SHAPE, "flash attention backward: empty shapes are not launched");
    const char *e = getenv("GC_FLASH_BWD"); /* =wmma: the first, shared-memory kernels */
    if (e && !strcmp(e, "wmma")) {
        switch (q->shape[3]) {
        case 32: return launch_bwd<32, 64, 4>(a);
        case 64: return launch_bwd<64, 64, 4>(a);
        default: return launch_bwd<128, 32, 8>(a);
        }
    }
    switch (q->shape[3]) {
    case 32: return launch_bwd_mma<32>(a);
    case 64: return launch_bwd_mma<64>(a);
    default: return launch_bwd_mma<128>(a);
    }
}
