// ATTN_FLASH: fused attention forward and backward on tensor cores (kernels/attention.c has
// the op, the dispatch and the CPU reference; the semantics are gc_attention's, see there).
//
// bf16 q/k/v read in place from their [B, L, H, D] layout (any row / head / batch strides,
// the innermost dim contiguous, 16-byte aligned rows), D in {32, 64, 128}. FlashAttention-2:
// S, P and the O / dQ / dK / dV accumulators live in registers (mma.sync m16n8k16 bf16,
// f32 accumulate); only the Q, K, V and dO tiles pass through shared memory, loaded with
// cp.async one tile ahead of the compute (double buffers). The forward saves out and the
// row log-sum-exp.
//
// Scores live in the log2 domain: s2 = (q.k scale + mask) log2(e), so P = exp2(s2 - m2)
// (score_kept: the scale is applied inside that exp2 when there is no mask).
// lse [B, H, Lq] f32 holds m2 + log2(l) per query row, or +inf for a row with no visible key
// (then P = exp2(s2 - inf) = 0 in the backward without a special case).
//
// Kernels (4 warps but the fused one; a warp owns 16 rows of a tile: queries, or keys in
// dK/dV and the fused backward):
//   flash_fwd_kernel     block = (64 queries, head, batch): per 64-key tile S = Q K^T,
//                        online softmax, O += P V.
//   flash_bwd_dq_kernel  block = (64 queries, head, batch): Delta = rowsum(dO * O) of its
//                        rows (saved for dK/dV), then per 64-key tile S, dPd = dO V^T,
//                        dS = P (dP' - Delta), dQ += dS K.
//   flash_bwd_dkv_kernel block = (64 keys, kv head, batch): per head of the group and
//                        32-query tile S^T = K Q^T, dPd^T = V dO^T, dV += Pd^T dO,
//                        dK += dS^T Q. GQA sums the group inside the block: no atomics.
//   flash_delta_kernel   Delta alone, for a backward that wants no dQ.
//   flash_bwd_fused_kernel block = (kv head, batch) holding every key (Lk <= 256, D <= 64;
//                        ceil(Lk / 16) warps): per 32-query tile Delta from its dO and O
//                        rows, dK/dV as above, then dQ = dS K from dS^T in shared memory,
//                        a tile behind. Replaces the dQ and dK/dV kernels where it applies;
//                        "flash-split" (gc_attention_set_impl) keeps them, for tests and
//                        measurements.
// A warp skips the products whose every entry is hidden from all its rows: key columns
// past the last key its queries see (the tail of L = 197 in a 256-wide grid of tiles, the
// causal triangle), whole warps of padding rows. Those entries are -inf scores and zero
// probabilities either way, so skipping changes no bit of the results.
// Instruction count, not memory, bounds these kernels at ViT sizes, so the per-score work is
// kept branch-free: a tile every row of a warp sees in full (the bulk) runs a copy of the
// body with no visibility test at all, the edge tiles a select per score; masks and
// dropout are template flags, absent from the kernels that do not use them; P comes from
// ex2.approx. (SASS of the D = 64 forward loop: 1770 instructions a tile before, 694 after.)
// Gradients are written (=, or += when acc) in the dtype of the buffers given (f32 or bf16).
// Launch order dQ, then dK, then dV (after a block barrier): q, k, v may share one gradient
// buffer (self-attention), in which case the later ones accumulate (acc true).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

// See runtime/cuda.cu: the C headers have no extern "C" guards of their own.
extern "C" {
#include "../runtime/gc_cuda.h"
}
#include "gc_cuda_util.cuh"
#include "../runtime/gc_rng.h" // static inline, host + device

extern __shared__ __align__(128) unsigned char flash_smem[];

namespace {

typedef __nv_bfloat16 bf16;

constexpr float kLog2e = 1.4426950408889634f;
constexpr int kThreadsFa = 128; // 4 warps in every kernel below
// Blocks an SM the D <= 64 kernels are compiled to fit (4: at most 128 registers a thread,
// a few bytes spilled). GC_FA_MIN_BLOCKS: for measuring other choices.
#ifndef GC_FA_MIN_BLOCKS
#define GC_FA_MIN_BLOCKS 4
#endif
constexpr int kMinBlocks64 = GC_FA_MIN_BLOCKS;

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

// Element e = (h Lq + i) Lk + j of batch row b survives dropout (attention.c draws the same).
__device__ __forceinline__ bool keep_elem(const FlashArgs &a, int b, int h, int i, int j)
{
    const uint64_t e = (uint64_t)(((int64_t)h * a.Lq + i) * a.Lk + j);
    return gc_rand_uniform(a.seed, a.step, a.op, (uint32_t)(a.sample_offset + b), e) >= a.p;
}

// The score of key j as the kernels keep it, from the raw dot product q.k where the query
// sees the key (vis), else -inf; forward and backward evaluate this same expression on the
// same products. Without a mask (MASK, a template flag: the unmasked kernels carry no
// test), the raw product: the scale is positive (attention.c sends others to the GEMM
// path), so the row maximum is the same key's, and the scale is applied where P is made,
// exp2(fma(dot, scale log2(e), -m)): one FMA per score instead of a multiply and a subtract.
// With a mask, the log2-domain score (q.k scale + mask) log2(e), the mask read for visible
// keys only (kscale 1). A select, not a branch: this runs once per score.
template <bool MASK>
__device__ __forceinline__ float score_kept(const FlashArgs &a, float dot, const float *mrow, int j, bool vis)
{
    if (!MASK) return vis ? dot : -INFINITY;
    const float s = fmaf(dot, a.scale_log2, vis ? mrow[j] * kLog2e : 0.f);
    return vis ? s : -INFINITY;
}

// P = 2^(s kscale - m) of a kept score s; m is in the scaled log2 domain (lse, or the
// running max times kscale)
template <bool MASK> __device__ __forceinline__ float prob_of(const FlashArgs &a, float s, float m)
{
    return fast_exp2(fmaf(s, MASK ? 1.f : a.scale_log2, -m));
}

__device__ __forceinline__ const float *mask_row(const FlashArgs &a, int b, int i)
{
    return a.mask && i < a.Lq ? a.mask + b * a.mask_bs + (int64_t)i * a.Lk : nullptr;
}

// 16 bytes global -> shared without passing through registers; zero-filled when !valid
// (src is not read then, but must still be a valid address).
__device__ __forceinline__ void cp_async16(void *dst, const void *src, bool valid)
{
    const uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 16 : 0));
}

// 4 bytes, likewise
__device__ __forceinline__ void cp_async4(void *dst, const void *src, bool valid)
{
    const uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 4 : 0));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// wait until at most N of this thread's committed groups are still in flight
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Rows r0 .. r0+R-1 of a [L, D] bf16 matrix (row stride rs elements, 16-byte aligned rows)
// into smem [R][LD], asynchronously; rows >= L are zero. All threads of the block take part.
template <int R, int D, int LD>
__device__ __forceinline__ void load_tile(bf16 *s, const bf16 *g, int64_t rs, int r0, int L)
{
    constexpr int CH = D / 8, N = R * CH; // 16-byte chunks per row, per tile
#pragma unroll
    for (int it = 0; it < (N + kThreadsFa - 1) / kThreadsFa; it++) {
        const int e = it * kThreadsFa + threadIdx.x;
        if (N % kThreadsFa != 0 && e >= N) break;
        const int r = e / CH, c = e % CH;
        const bool ok = r0 + r < L;
        cp_async16(s + r * LD + c * 8, ok ? g + (int64_t)(r0 + r) * rs + c * 8 : g, ok);
    }
}

// base[off], base[off + 1] = v0, v1, or += (one 8- or 4-byte store when aligned)
__device__ __forceinline__ void grad_store2(void *base, bool f32, int64_t off, float v0, float v1, bool acc)
{
    if (f32) {
        float *p = static_cast<float *>(base) + off;
        if (((uintptr_t)p & 7) == 0) {
            float2 x = acc ? *reinterpret_cast<float2 *>(p) : make_float2(0.f, 0.f);
            *reinterpret_cast<float2 *>(p) = make_float2(x.x + v0, x.y + v1);
        } else {
            p[0] = acc ? p[0] + v0 : v0;
            p[1] = acc ? p[1] + v1 : v1;
        }
    } else {
        bf16 *p = static_cast<bf16 *>(base) + off;
        if (((uintptr_t)p & 3) == 0) {
            float2 x = acc ? __bfloat1622float2(*reinterpret_cast<__nv_bfloat162 *>(p)) : make_float2(0.f, 0.f);
            *reinterpret_cast<__nv_bfloat162 *>(p) = __floats2bfloat162_rn(x.x + v0, x.y + v1);
        } else {
            p[0] = __float2bfloat16_rn(acc ? __bfloat162float(p[0]) + v0 : v0);
            p[1] = __float2bfloat16_rn(acc ? __bfloat162float(p[1]) + v1 : v1);
        }
    }
}

// ---------------------------------------------------------------- mma.sync fragments
//
// m16n8k16 bf16 tensor-core instructions; fragment layouts from the PTX ISA
// (g = lane / 4, t = lane % 4):
//   A 16x16: a[0] = (g, 2t..2t+1), a[1] = (g+8, 2t..), a[2] = (g, 2t+8..), a[3] = (g+8, 2t+8..)
//   B 16x8:  b[0] = (k 2t..2t+1, n g), b[1] = (k 2t+8.., n g)
//   C 16x8:  c[0..1] = (g, 2t..2t+1), c[2..3] = (g+8, 2t..2t+1)
// so the C fragments of two adjacent 8-column tiles, rounded to bf16, are the A fragment of
// one 16-deep step of the next product (P of P V, dS of dS K). ldmatrix loads A (16 rows)
// and B (rows of K, Q, dO, V; through .trans where the product reads them transposed).
// Element e of C tile n: row g + 8 (e >> 1), column n 8 + 2 t + (e & 1).

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

// The sum of the 8 products of two 16-byte pieces of bf16 rows (Delta's dO . O), in order
__device__ __forceinline__ float dot8_bf16(const uint4 &x, const uint4 &y)
{
    const __nv_bfloat162 *xp = reinterpret_cast<const __nv_bfloat162 *>(&x), *yp = reinterpret_cast<const __nv_bfloat162 *>(&y);
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const float2 xf = __bfloat1622float2(xp[k]), yf = __bfloat1622float2(yp[k]);
        s = fmaf(xf.x, yf.x, s);
        s = fmaf(xf.y, yf.y, s);
    }
    return s;
}

// The sum of s over each aligned group of n consecutive lanes (n a power of two <= 32),
// in every lane of the group: a row's pieces of Delta
__device__ __forceinline__ float lane_group_sum(float s, int n)
{
    for (int off = n / 2; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    return s;
}

// The A fragment of a warp's 16 rows from row0, 16 columns from k0, of a [.][LD] smem tile.
// Loaded again for every tile instead of kept: registers decide how many blocks fit on an
// SM, and these kernels need the warps more than the shared-memory bandwidth.
template <int LD> __device__ __forceinline__ void load_a_frag(uint32_t f[4], const bf16 *s, int row0, int k0)
{
    const int lane = threadIdx.x & 31;
    ldsm_x4(f, s + (row0 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + k0 + (lane >> 4) * 8);
}

// c[n], c[n + 1] += A B for the 8-row tiles n, n + 1 of a [.][LD] smem matrix read as B^T
// (rows = output columns), 16 columns from k0
template <int LD> __device__ __forceinline__ void mma_bt2(float c0[4], float c1[4], const uint32_t a[4], const bf16 *s, int n, int k0)
{
    const int lane = threadIdx.x & 31;
    uint32_t r[4];
    ldsm_x4(r, s + (n * 8 + (lane & 7) + (lane >> 4) * 8) * LD + k0 + ((lane >> 3) & 1) * 8);
    mma16816(c0, a, r[0], r[1]);
    mma16816(c1, a, r[2], r[3]);
}

// c[n], c[n + 1] += A B for the 8-column tiles n, n + 1 of rows k0 .. k0+15 of a [.][LD] smem
// matrix read as B (through ldmatrix .trans)
template <int LD> __device__ __forceinline__ void mma_b2(float c0[4], float c1[4], const uint32_t a[4], const bf16 *s, int n, int k0)
{
    const int lane = threadIdx.x & 31;
    uint32_t r[4];
    ldsm_x4_t(r, s + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + n * 8 + (lane >> 4) * 8);
    mma16816(c0, a, r[0], r[1]);
    mma16816(c1, a, r[2], r[3]);
}

// c1 += A1 B1^T and c2 += A2 B2^T: the warp's 16 rows (row0) of the [.][LD] smem tiles
// a1, a2 times the 8-row tiles of b1, b2 (read as B^T), for the pairs of tiles that hold
// one in [n_lo, n_hi) (the rest hold hidden entries only)
template <int KD, int NS, int LD>
__device__ __forceinline__ void mma_bt_pair(float c1[NS][4], float c2[NS][4], const bf16 *a1, const bf16 *a2, const bf16 *b1,
                                            const bf16 *b2, int row0, int n_lo, int n_hi)
{
#pragma unroll
    for (int kk = 0; kk < KD; kk++) {
        uint32_t f1[4], f2[4];
        load_a_frag<LD>(f1, a1, row0, kk * 16);
        load_a_frag<LD>(f2, a2, row0, kk * 16);
#pragma unroll
        for (int n = 0; n < NS; n += 2)
            if (n + 1 >= n_lo && n < n_hi) {
                mma_bt2<LD>(c1[n], c1[n + 1], f1, b1, n, kk * 16);
                mma_bt2<LD>(c2[n], c2[n + 1], f2, b2, n, kk * 16);
            }
    }
}

// The A fragment of the 16-column step kk of a C-fragment matrix c[2 kk], c[2 kk + 1]
__device__ __forceinline__ void c_to_a(uint32_t a[4], const float c0[4], const float c1[4])
{
    a[0] = pack_bf16(c0[0], c0[1]), a[1] = pack_bf16(c0[2], c0[3]);
    a[2] = pack_bf16(c1[0], c1[1]), a[3] = pack_bf16(c1[2], c1[3]);
}

// 8-column tiles of a C fragment matrix that hold any of `n` leading visible columns
template <int NS> __device__ __forceinline__ int tiles_for(int n) { return n >= NS * 8 ? NS : n <= 0 ? 0 : (n + 7) / 8; }

// ---------------------------------------------------------------- forward

template <int D> struct FwdCfg {
    static constexpr int BM = 64, BN = 64; // 4 warps x 16 query rows; 64 keys per tile
    static constexpr int LD = D + 8;       // smem row stride: 16-byte pad, no ldmatrix bank conflicts
    static constexpr size_t bytes = sizeof(bf16) * (size_t)(BM + 4 * BN) * LD; // Q; K and V, twice
};

// DROP: a.p > 0 (the Philox code costs registers when compiled in); MASK: a.mask != null
template <int D, bool DROP, bool MASK>
__global__ void __launch_bounds__(kThreadsFa, D <= 64 ? kMinBlocks64 : 1) flash_fwd_kernel(const FlashArgs a)
{
    GC_PDL_WAIT();
    typedef FwdCfg<D> C;
    constexpr int BM = C::BM, BN = C::BN, LD = C::LD;
    constexpr int KD = D / 16; // k-steps of S = Q K^T
    constexpr int NS = BN / 8; // 8-key tiles of S
    constexpr int NO = D / 8;  // 8-column tiles of O
    bf16 *sQ = reinterpret_cast<bf16 *>(flash_smem);
    bf16 *sKV = sQ + BM * LD; // buffer u: K at sKV + 2 u BN LD, its V after it

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int q0 = blockIdx.x * BM, h = blockIdx.y, b = blockIdx.z, hk = h / a.G;
    const bf16 *kg = a.k + b * a.ks0 + hk * a.ks2;
    const bf16 *vg = a.v + b * a.vs0 + hk * a.vs2;
    const int kv_end = key_end(a, q0 + BM);

    load_tile<BM, D, LD>(sQ, a.q + b * a.qs0 + h * a.qs2, a.qs1, q0, a.Lq);
    cp_async_commit();
    load_tile<BN, D, LD>(sKV, kg, a.ks1, 0, a.Lk);
    load_tile<BN, D, LD>(sKV + BN * LD, vg, a.vs1, 0, a.Lk);
    cp_async_commit();
    cp_async_wait<1>(); // Q is in; the first K, V tiles may still be on their way
    __syncthreads();

    // this thread's two query rows; keys at or past wk_end are hidden from all the warp's rows
    const int i0 = q0 + warp * 16 + g, i1 = i0 + 8;
    const int nv0 = visible(a, i0), nv1 = visible(a, i1);
    const int wk_end = q0 + warp * 16 < a.Lq ? key_end(a, q0 + warp * 16 + 16) : 0;
    // keys below wk_all are seen by all the warp's rows (its first row sees the fewest)
    const int wk_all = q0 + warp * 16 + 16 <= a.Lq ? visible(a, q0 + warp * 16) : 0;
    const float *mr0 = mask_row(a, b, i0), *mr1 = mask_row(a, b, i1);
    float o[NO][4];
#pragma unroll
    for (int n = 0; n < NO; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float mx[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f}; // running max (of kept scores), partial sums
    const float kscale = MASK ? 1.f : a.scale_log2;           // kept score -> log2 domain

    for (int k0 = 0, u = 0; k0 < kv_end; k0 += BN, u ^= 1) {
        const bf16 *sK = sKV + 2 * u * BN * LD, *sV = sK + BN * LD;
        if (k0 + BN < kv_end) { // the next tile into the other buffer (its readers passed the barrier below)
            bf16 *nK = sKV + 2 * (u ^ 1) * BN * LD;
            load_tile<BN, D, LD>(nK, kg, a.ks1, k0 + BN, a.Lk);
            load_tile<BN, D, LD>(nK + BN * LD, vg, a.vs1, k0 + BN, a.Lk);
        }
        cp_async_commit(); // possibly empty: one group per iteration keeps the count below right
        cp_async_wait<1>(); // this tile is in
        __syncthreads();

        // FULL: every row of the warp sees every key of the tile (the bulk of the tiles): no
        // test per score or per product, a second copy of the body for the edge tiles
        const int ns = tiles_for<NS>(wk_end - k0); // 8-key tiles with a key the warp sees
        auto tile = [&](auto full) {
            constexpr bool FULL = decltype(full)::value;
            float s[NS][4];
#pragma unroll
            for (int n = 0; n < NS; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < KD; kk++) {
                uint32_t qf[4];
                load_a_frag<LD>(qf, sQ, warp * 16, kk * 16);
#pragma unroll
                for (int n = 0; n < NS; n += 2)
                    if (FULL || n < ns) mma_bt2<LD>(s[n], s[n + 1], qf, sK, n, kk * 16);
            }

            // log2-domain scores, the new running max of both rows (a row lives in one quad)
            float mn[2] = {mx[0], mx[1]};
#pragma unroll
            for (int n = 0; n < NS; n++) {
                if (!FULL && n >= ns) continue; // hidden from every row: P is set to 0 below
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int r = e >> 1, j = k0 + n * 8 + 2 * t + (e & 1);
                    s[n][e] = score_kept<MASK>(a, s[n][e], r ? mr1 : mr0, j, FULL || j < (r ? nv1 : nv0));
                    mn[r] = fmaxf(mn[r], s[n][e]);
                }
            }
            float alpha[2];
#pragma unroll
            for (int r = 0; r < 2; r++) {
                mn[r] = fmaxf(mn[r], __shfl_xor_sync(0xffffffffu, mn[r], 1));
                mn[r] = fmaxf(mn[r], __shfl_xor_sync(0xffffffffu, mn[r], 2));
                alpha[r] = mn[r] == -INFINITY ? 1.f : fast_exp2((mx[r] - mn[r]) * kscale); // nothing visible yet: O stays 0
                mx[r] = mn[r];
            }

            // P (f32 sum before dropout, as the reference), then dropout, in place of S; a row
            // that sees nothing yet subtracts 0 from its -inf scores: P = 0, no test per score
            const float ms[2] = {mn[0] == -INFINITY ? 0.f : mn[0] * kscale, mn[1] == -INFINITY ? 0.f : mn[1] * kscale};
            float ls[2] = {0.f, 0.f};
#pragma unroll
            for (int n = 0; n < NS; n++) {
                if (!FULL && n >= ns) { // keys no row of the warp sees (the padding of the last tile): P = 0
                    s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
                    continue;
                }
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int r = e >> 1;
                    const float pr = prob_of<MASK>(a, s[n][e], ms[r]);
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

            // O += P V over the 16-key steps that hold a visible key
#pragma unroll
            for (int kk = 0; kk < BN / 16; kk++) {
                if (!FULL && 2 * kk >= ns) break;
                uint32_t pa[4];
                c_to_a(pa, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
                for (int n = 0; n < NO; n += 2) mma_b2<LD>(o[n], o[n + 1], pa, sV, n, kk * 16);
            }
        };
        if (k0 + BN <= wk_all) tile(std::true_type{});
        else if (ns > 0) tile(std::false_type{});
        __syncthreads(); // every warp is done with this buffer before it is refilled
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
        if (t == 0) a.lse[((int64_t)b * a.H + h) * a.Lq + i] = l[r] > 0.f ? mx[r] * kscale + log2f(l[r]) : INFINITY;
    }
}

// ---------------------------------------------------------------- backward: Delta alone

// delta[b, h, i] = sum_d dO[b, i, h, d] O[b, i, h, d]: D / 8 threads a row (b, i, h), 16
// bytes of each a thread. For a backward that wants no dQ (the dQ kernel computes Delta for
// its rows itself, and the fused kernel per tile).
__global__ void __launch_bounds__(256) flash_delta_kernel(const FlashArgs a, int D)
{
    GC_PDL_WAIT();
    const int tpr = D / 8; // 4, 8 or 16: a row's threads are consecutive lanes of one warp
    const int64_t r = ((int64_t)blockIdx.x * 256 + threadIdx.x) / tpr, rows = (int64_t)a.B * a.Lq * a.H;
    const int c = (threadIdx.x % tpr) * 8;
    float s = 0.f;
    if (r < rows) {
        const int h = (int)(r % a.H), i = (int)((r / a.H) % a.Lq), b = (int)(r / ((int64_t)a.H * a.Lq));
        const uint4 ov = *reinterpret_cast<const uint4 *>(a.o + r * D + c);
        const uint4 gv = *reinterpret_cast<const uint4 *>(a.dout + b * a.os0 + (int64_t)i * a.os1 + h * a.os2 + c);
        s = dot8_bf16(gv, ov);
    }
    s = lane_group_sum(s, tpr);
    if (r < rows && threadIdx.x % tpr == 0) {
        const int h = (int)(r % a.H), i = (int)((r / a.H) % a.Lq), b = (int)(r / ((int64_t)a.H * a.Lq));
        a.delta[((int64_t)b * a.H + h) * a.Lq + i] = s;
    }
}

// ---------------------------------------------------------------- backward: dQ

template <int D> struct DqCfg {
    static constexpr int BM = 64, BN = 64, LD = D + 8;
    static constexpr size_t bytes = sizeof(bf16) * (size_t)(2 * BM + 4 * BN) * LD; // Q, dO; K and V, twice
};

template <int D, bool DROP, bool MASK>
__global__ void __launch_bounds__(kThreadsFa, D <= 64 ? kMinBlocks64 : 1) flash_bwd_dq_kernel(const FlashArgs a)
{
    GC_PDL_WAIT();
    typedef DqCfg<D> C;
    constexpr int BM = C::BM, BN = C::BN, LD = C::LD, KD = D / 16, NS = BN / 8, NO = D / 8;
    bf16 *sQ = reinterpret_cast<bf16 *>(flash_smem);
    bf16 *sG = sQ + BM * LD, *sKV = sG + BM * LD;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int q0 = blockIdx.x * BM, h = blockIdx.y, b = blockIdx.z, hk = h / a.G;
    const bf16 *kg = a.k + b * a.ks0 + hk * a.ks2;
    const bf16 *vg = a.v + b * a.vs0 + hk * a.vs2;
    const int kv_end = key_end(a, q0 + BM);

    load_tile<BM, D, LD>(sQ, a.q + b * a.qs0 + h * a.qs2, a.qs1, q0, a.Lq);
    load_tile<BM, D, LD>(sG, a.dout + b * a.os0 + h * a.os2, a.os1, q0, a.Lq);
    cp_async_commit();
    load_tile<BN, D, LD>(sKV, kg, a.ks1, 0, a.Lk);
    load_tile<BN, D, LD>(sKV + BN * LD, vg, a.vs1, 0, a.Lk);
    cp_async_commit();
    cp_async_wait<1>(); // Q and dO are in
    __syncthreads();

    // Delta of the warp's 16 rows (lane: row lane / 2, half lane % 2 of the columns); saved
    // for the dK/dV kernel, which runs next
    float dsum = 0.f;
    {
        const int r = warp * 16 + (lane >> 1), i = q0 + r, c0 = (lane & 1) * (D / 2);
        if (i < a.Lq) {
            const bf16 *orow = a.o + (((int64_t)b * a.Lq + i) * a.H + h) * D + c0;
#pragma unroll
            for (int c = 0; c < D / 2; c += 8) {
                const uint4 ov = *reinterpret_cast<const uint4 *>(orow + c);
                const uint4 gv = *reinterpret_cast<const uint4 *>(sG + r * LD + c0 + c);
                dsum += dot8_bf16(gv, ov);
            }
        }
        dsum += __shfl_xor_sync(0xffffffffu, dsum, 1);
        if ((lane & 1) == 0 && i < a.Lq) a.delta[((int64_t)b * a.H + h) * a.Lq + i] = dsum;
    }
    const float de0 = __shfl_sync(0xffffffffu, dsum, 2 * g), de1 = __shfl_sync(0xffffffffu, dsum, 2 * g + 16);

    const int i0 = q0 + warp * 16 + g, i1 = i0 + 8;
    const int nv0 = visible(a, i0), nv1 = visible(a, i1);
    const int wk_end = q0 + warp * 16 < a.Lq ? key_end(a, q0 + warp * 16 + 16) : 0;
    const int wk_all = q0 + warp * 16 + 16 <= a.Lq ? visible(a, q0 + warp * 16) : 0; // as in the forward
    const float *mr0 = mask_row(a, b, i0), *mr1 = mask_row(a, b, i1);
    const float *lse = a.lse + ((int64_t)b * a.H + h) * a.Lq;
    const float ls0 = i0 < a.Lq ? lse[i0] : INFINITY, ls1 = i1 < a.Lq ? lse[i1] : INFINITY;
    float dq[NO][4];
#pragma unroll
    for (int n = 0; n < NO; n++) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.f;

    for (int k0 = 0, u = 0; k0 < kv_end; k0 += BN, u ^= 1) {
        const bf16 *sK = sKV + 2 * u * BN * LD, *sV = sK + BN * LD;
        if (k0 + BN < kv_end) {
            bf16 *nK = sKV + 2 * (u ^ 1) * BN * LD;
            load_tile<BN, D, LD>(nK, kg, a.ks1, k0 + BN, a.Lk);
            load_tile<BN, D, LD>(nK + BN * LD, vg, a.vs1, k0 + BN, a.Lk);
        }
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();

        const int ns = tiles_for<NS>(wk_end - k0);
        auto tile = [&](auto full) { // FULL: as in the forward
            constexpr bool FULL = decltype(full)::value;
            float s[NS][4], dp[NS][4];
#pragma unroll
            for (int n = 0; n < NS; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) s[n][e] = dp[n][e] = 0.f;
            mma_bt_pair<KD, NS, LD>(s, dp, sQ, sG, sK, sV, warp * 16, 0, FULL ? NS : ns); // S = Q K^T, dPd = dO V^T
            // dS = P (dP' - Delta), in place of S
#pragma unroll
            for (int n = 0; n < NS; n++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int r = e >> 1, j = k0 + n * 8 + 2 * t + (e & 1);
                    const float sk = score_kept<MASK>(a, s[n][e], r ? mr1 : mr0, j, FULL || j < (r ? nv1 : nv0));
                    const float pr = prob_of<MASK>(a, sk, r ? ls1 : ls0);
                    float d = dp[n][e];
                    if (DROP) d = pr != 0.f && keep_elem(a, b, h, r ? i1 : i0, j) ? d * a.inv_keep : 0.f;
                    s[n][e] = pr * (d - (r ? de1 : de0));
                }
            }
            // dQ += dS K
#pragma unroll
            for (int kk = 0; kk < BN / 16; kk++) {
                if (!FULL && 2 * kk >= ns) break;
                uint32_t sa[4];
                c_to_a(sa, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
                for (int n = 0; n < NO; n += 2) mma_b2<LD>(dq[n], dq[n + 1], sa, sK, n, kk * 16);
            }
        };
        if (k0 + BN <= wk_all) tile(std::true_type{});
        else if (ns > 0) tile(std::false_type{});
        __syncthreads();
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int i = r ? i1 : i0;
        if (i >= a.Lq) continue;
        const int64_t row = b * a.dqs0 + (int64_t)i * a.dqs1 + h * a.dqs2;
#pragma unroll
        for (int n = 0; n < NO; n++)
            grad_store2(a.dq, a.dq_f32, row + n * 8 + 2 * t, a.scale * dq[n][2 * r], a.scale * dq[n][2 * r + 1], a.acc_q);
    }
}

// ---------------------------------------------------------------- backward: dK, dV

template <int D> struct DkvCfg {
    static constexpr int BN = 64, BM = 32, LD = D + 8; // 64 keys (4 warps x 16); 32 queries per tile
    // smem: K, V [BN][LD]; then two buffers of {Q, dO [BM][LD] bf16; lse, Delta [BM] f32}
    static constexpr size_t kv_bytes = sizeof(bf16) * (size_t)2 * BN * LD;
    static constexpr size_t buf_bytes = sizeof(bf16) * (size_t)2 * BM * LD + sizeof(float) * 2 * BM;
    static constexpr size_t bytes = kv_bytes + 2 * buf_bytes;
    static_assert(kv_bytes % 16 == 0 && buf_bytes % 16 == 0, "cp.async needs 16-byte aligned tiles");
};

// Rows r0 .. r0+R-1 (R at run time) of a [L, D] bf16 matrix into smem [R][LD], as load_tile;
// all threads of the block (any size) take part.
template <int D, int LD> __device__ __forceinline__ void load_rows(bf16 *s, const bf16 *g, int64_t rs, int r0, int R, int L)
{
    constexpr int CH = D / 8;
    for (int e = threadIdx.x; e < R * CH; e += blockDim.x) {
        const int r = e / CH, c = e % CH;
        const bool ok = r0 + r < L;
        cp_async16(s + r * LD + c * 8, ok ? g + (int64_t)(r0 + r) * rs + c * 8 : g, ok);
    }
}

// The query tile (head h, queries qs .. qs+BM-1) of batch b into buf, asynchronously, for the
// dK/dV and fused kernels: Q, dO [BM][LD] bf16, (WITH_O: O [BM][LD] bf16,) then lse, Delta
// [BM] f32. WITH_O leaves Delta to tile_delta, from the dO and O rows.
template <int D, int LD, int BM, bool WITH_O = false>
__device__ __forceinline__ void load_q_tile(const FlashArgs &a, unsigned char *buf, int b, int h, int qs)
{
    bf16 *q = reinterpret_cast<bf16 *>(buf), *go = q + BM * LD, *o = go + BM * LD;
    float *ls = reinterpret_cast<float *>(WITH_O ? o + BM * LD : o), *de = ls + BM;
    load_rows<D, LD>(q, a.q + b * a.qs0 + h * a.qs2, a.qs1, qs, BM, a.Lq);
    load_rows<D, LD>(go, a.dout + b * a.os0 + h * a.os2, a.os1, qs, BM, a.Lq);
    if (WITH_O) load_rows<D, LD>(o, a.o + ((int64_t)b * a.Lq * a.H + h) * D, (int64_t)a.H * D, qs, BM, a.Lq);
    const int64_t rb = ((int64_t)b * a.H + h) * a.Lq;
    for (int r = threadIdx.x; r < BM; r += blockDim.x) {
        // padding rows read 0: their scores are -inf, so P = 0 whatever lse is
        const bool ok = qs + r < a.Lq;
        cp_async4(ls + r, ok ? a.lse + rb + qs + r : a.lse, ok);
        if (!WITH_O) cp_async4(de + r, ok ? a.delta + rb + qs + r : a.delta, ok);
    }
}

// Delta = rowsum(dO * O) of a query tile loaded by load_q_tile<.., true>, into its Delta
// slot. Each thread reads the 16-byte pieces of dO and O that load_rows gave it to copy, so
// its own cp.async.wait_group is all it waits for; a row's D / 8 pieces are consecutive
// lanes (blockDim is a multiple of 32), summed by shuffles. Padding rows were loaded as
// zeros: Delta 0. The caller's next block barrier publishes it.
template <int D, int LD, int BM> __device__ __forceinline__ void tile_delta(unsigned char *buf)
{
    constexpr int CH = D / 8;
    const bf16 *go = reinterpret_cast<const bf16 *>(buf) + BM * LD, *o = go + BM * LD;
    float *de = reinterpret_cast<float *>(buf + sizeof(bf16) * 3 * BM * LD) + BM; // past Q, dO, O and lse
    for (int e = threadIdx.x; e < BM * CH; e += blockDim.x) { // warp-uniform: BM CH is a multiple of 32
        const int r = e / CH, c = e % CH;
        const float s = lane_group_sum(dot8_bf16(*reinterpret_cast<const uint4 *>(go + r * LD + c * 8),
                                                 *reinterpret_cast<const uint4 *>(o + r * LD + c * 8)),
                                       CH);
        if (c == 0) de[r] = s;
    }
}

// One warp's part of a query tile in the dK/dV and fused kernels: its 16 keys are rows kr ..
// kr+15 of sK, sV (key indices j0 = .. + g and j1 = j0 + 8 for this thread), the tile's BM
// queries from qs (head h) are in sQ, sG (dO), sLse, sDel. st and dpt come in zero and leave
// as Pd^T and dS^T [keys x queries]; dV += Pd^T dO, dK += dS^T Q. 8-query tiles [n_lo, n_hi)
// hold a query that sees one of the keys; FULL: every query sees every key.
template <int D, int LD, int BM, bool FULL, bool DROP, bool MASK>
__device__ __forceinline__ void dkv_tile(const FlashArgs &a, int b, int h, int qs, int kr, int j0, int j1, int n_lo, int n_hi,
                                         const bf16 *sK, const bf16 *sV, const bf16 *sQ, const bf16 *sG, const float *sLse,
                                         const float *sDel, float (&st)[BM / 8][4], float (&dpt)[BM / 8][4],
                                         float (&dk)[D / 8][4], float (&dv)[D / 8][4])
{
    constexpr int KD = D / 16, NS = BM / 8, NO = D / 8;
    const int t = (threadIdx.x & 31) & 3;
    mma_bt_pair<KD, NS, LD>(st, dpt, sK, sV, sQ, sG, kr, FULL ? 0 : n_lo, FULL ? NS : n_hi); // S^T = K Q^T, dPd^T = V dO^T
    // Pd^T into st's place, dS^T into dpt's. Key j (row r) is seen by the tile's queries c in
    // [lo, hi): real queries (qs + c < Lq) of a real key, from j - (Lk - Lq) on when causal
    // (j < visible(a, qs + c)); kept relative to this thread's 2 t.
    int lo[2], hi[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int j = r ? j1 : j0;
        lo[r] = (a.causal ? j - (a.Lk - a.Lq) - qs : 0) - 2 * t;
        hi[r] = j < a.Lk ? a.Lq - qs - 2 * t : lo[r];
    }
#pragma unroll
    for (int n = 0; n < NS; n++) {
        const float2 lse2 = *reinterpret_cast<const float2 *>(sLse + n * 8 + 2 * t);
        const float2 del2 = *reinterpret_cast<const float2 *>(sDel + n * 8 + 2 * t);
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int r = e >> 1, cc = n * 8 + (e & 1), c = cc + 2 * t, i = qs + c, j = r ? j1 : j0;
            const bool vis = FULL || (cc >= lo[r] && cc < hi[r]);
            const float sk = score_kept<MASK>(a, st[n][e], MASK ? mask_row(a, b, i) : nullptr, j, vis);
            const float pr = prob_of<MASK>(a, sk, (e & 1) ? lse2.y : lse2.x);
            float pd = pr, d = dpt[n][e];
            if (DROP) {
                const bool keep = pr != 0.f && keep_elem(a, b, h, i, j);
                pd = keep ? pr * a.inv_keep : 0.f;
                d = keep ? d * a.inv_keep : 0.f;
            }
            st[n][e] = pd;
            dpt[n][e] = pr * (d - ((e & 1) ? del2.y : del2.x));
        }
    }
    // dV += Pd^T dO, dK += dS^T Q over the 16-query steps with a visible entry
#pragma unroll
    for (int kk = 0; kk < BM / 16; kk++) {
        if (!FULL && (2 * kk + 1 < n_lo || 2 * kk >= n_hi)) continue;
        uint32_t pa[4], sa[4];
        c_to_a(pa, st[2 * kk], st[2 * kk + 1]);
        c_to_a(sa, dpt[2 * kk], dpt[2 * kk + 1]);
#pragma unroll
        for (int n = 0; n < NO; n += 2) {
            mma_b2<LD>(dv[n], dv[n + 1], pa, sG, n, kk * 16);
            mma_b2<LD>(dk[n], dk[n + 1], sa, sQ, n, kk * 16);
        }
    }
}

// This thread's part of keys j0, j1 (< Lk) of a [B, Lk, Hkv, D] gradient g (row strides
// s0, s1, s2; f32 or bf16) at (b, hk), times scale: = or += per acc.
template <int D>
__device__ __forceinline__ void store_key_rows(void *g, bool f32, int64_t s0, int64_t s1, int64_t s2, bool acc, int b,
                                               int hk, int j0, int j1, int Lk, float scale, const float (&v)[D / 8][4])
{
    const int t = (threadIdx.x & 31) & 3;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int j = r ? j1 : j0;
        if (j >= Lk) continue;
        const int64_t row = b * s0 + (int64_t)j * s1 + hk * s2;
#pragma unroll
        for (int n = 0; n < D / 8; n++) grad_store2(g, f32, row + n * 8 + 2 * t, scale * v[n][2 * r], scale * v[n][2 * r + 1], acc);
    }
}

// dK, then dV, of this thread's keys j0, j1 of kv head hk: they may be one buffer
// (self-attention), the later one accumulating, so a block barrier parts them; a thread
// stores the same (key, column) elements of both.
template <int D> __device__ __forceinline__ void store_dkv(const FlashArgs &a, int b, int hk, int j0, int j1, const float (&dk)[D / 8][4], const float (&dv)[D / 8][4])
{
    if (a.dk) store_key_rows<D>(a.dk, a.dk_f32, a.dks0, a.dks1, a.dks2, a.acc_k, b, hk, j0, j1, a.Lk, a.scale, dk);
    __syncthreads();
    if (a.dv) store_key_rows<D>(a.dv, a.dv_f32, a.dvs0, a.dvs1, a.dvs2, a.acc_v, b, hk, j0, j1, a.Lk, 1.0f, dv);
}

template <int D, bool DROP, bool MASK>
__global__ void __launch_bounds__(kThreadsFa, D <= 64 ? kMinBlocks64 : 1) flash_bwd_dkv_kernel(const FlashArgs a)
{
    GC_PDL_WAIT();
    typedef DkvCfg<D> C;
    constexpr int BN = C::BN, BM = C::BM, LD = C::LD, NS = BM / 8, NO = D / 8;
    bf16 *sK = reinterpret_cast<bf16 *>(flash_smem), *sV = sK + BN * LD;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2;
    const int k0 = blockIdx.x * BN, hk = blockIdx.y, b = blockIdx.z;

    // query tiles: the group's heads times the tiles from i_begin (causal: queries before
    // i_first see no key of this block)
    int i_begin = 0;
    if (a.causal) {
        const int64_t i_first = (int64_t)k0 - (a.Lk - a.Lq);
        i_begin = i_first <= 0 ? 0 : i_first >= a.Lq ? a.Lq : (int)(i_first / BM * BM);
    }
    const int n_qt = (a.Lq - i_begin + BM - 1) / BM, n_tiles = a.G * n_qt;
    // tile it is head hk G + it / n_qt, queries i_begin + (it % n_qt) BM; the loop below
    // steps (h, qs) along instead of dividing. Buffer u of two.
    auto load_q = [&](int h, int qs, int u) { load_q_tile<D, LD, BM>(a, flash_smem + C::kv_bytes + u * C::buf_bytes, b, h, qs); };

    load_tile<BN, D, LD>(sK, a.k + b * a.ks0 + hk * a.ks2, a.ks1, k0, a.Lk);
    load_tile<BN, D, LD>(sV, a.v + b * a.vs0 + hk * a.vs2, a.vs1, k0, a.Lk);
    cp_async_commit();
    if (n_tiles > 0) load_q(hk * a.G, i_begin, 0);
    cp_async_commit();
    cp_async_wait<1>(); // K and V are in
    __syncthreads();

    const int j0 = k0 + warp * 16 + g, j1 = j0 + 8; // this thread's two keys
    const bool w_keys = k0 + warp * 16 < a.Lk;     // the warp has a real key
    const bool w_all = k0 + warp * 16 + 16 <= a.Lk; // ... and only real keys
    // queries below wq_lo see none of the warp's keys (causal: key j needs i >= j - (Lk - Lq))
    const int64_t wq_lo = a.causal ? (int64_t)k0 + warp * 16 - (a.Lk - a.Lq) : 0;
    float dk[NO][4], dv[NO][4];
#pragma unroll
    for (int n = 0; n < NO; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) dk[n][e] = dv[n][e] = 0.f;

    int h = hk * a.G, qs = i_begin; // this tile's head and first query
    for (int it = 0, u = 0; it < n_tiles; it++, u ^= 1) {
        const int qn = qs + BM < a.Lq ? qs + BM : i_begin, hn = qs + BM < a.Lq ? h : h + 1; // the next tile's
        if (it + 1 < n_tiles) load_q(hn, qn, u ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const unsigned char *buf = flash_smem + C::kv_bytes + u * C::buf_bytes;
        const bf16 *sQ = reinterpret_cast<const bf16 *>(buf), *sG = sQ + BM * LD;
        const float *sLse = reinterpret_cast<const float *>(sG + BM * LD), *sDel = sLse + BM;

        // 8-query tiles [n_lo, n_hi) hold a query that sees one of the warp's keys
        const int n_lo = wq_lo - qs >= 8 * NS ? NS : wq_lo - qs > 0 ? (int)(wq_lo - qs) / 8 : 0;
        const int n_hi = w_keys ? tiles_for<NS>(a.Lq - qs) : 0;
        // FULL: every query of the tile sees every key of the warp (as in the forward)
        const bool full = w_all && qs + BM <= a.Lq && (!a.causal || qs >= (int64_t)k0 + warp * 16 + 15 - (a.Lk - a.Lq));
        float st[NS][4], dpt[NS][4]; // [keys x queries]
#pragma unroll
        for (int n = 0; n < NS; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) st[n][e] = dpt[n][e] = 0.f;
        auto tile = [&](auto full_c) {
            dkv_tile<D, LD, BM, decltype(full_c)::value, DROP, MASK>(a, b, h, qs, warp * 16, j0, j1, n_lo, n_hi, sK, sV, sQ, sG,
                                                                   sLse, sDel, st, dpt, dk, dv);
        };
        if (full) tile(std::true_type{});
        else if (n_lo < n_hi) tile(std::false_type{});
        __syncthreads();
        h = hn, qs = qn;
    }
    store_dkv<D>(a, b, hk, j0, j1, dk, dv);
}

// ---------------------------------------------------------------- backward: fused, Lk <= 256
//
// One block per (batch, kv head) holds every key: warp w owns keys 16 w .. 16 w + 15 (as the
// dK/dV kernel's warps do), and the block has ceil(Lk / 16) warps. Per 32-query tile it
// computes S^T, dPd^T, Pd^T, dS^T and dV, dK as flash_bwd_dkv_kernel does, and writes dS^T
// (bf16, the value the dK product rounds it to) into shared memory; the warps then take the
// tile's dQ = dS K between them, over every key, and store it: no atomics, and S and dP are
// made once instead of twice (5 products, not the 7 of the dQ + dK/dV kernels).
// dQ runs a tile behind, from a second dS^T buffer: tile t's dK/dV and tile t - 1's dQ sit
// between the same two barriers, so a tile costs one barrier, and the warps that make no dQ
// (or hold the last, partial 16 keys, whose tile path is the slower one) wait less.
// Delta = rowsum(dO * O) is made per tile as it lands (tile_delta): no kernel of its own.

template <int D> struct FusedCfg {
    static constexpr int BM = 32, LD = D + 8, LDS = BM + 8, MAXW = 16; // LDS: dS^T rows, 16-byte pad
    // a query tile: Q, dO, O [BM][LD] bf16; lse, Delta [BM] f32 (load_q_tile<.., true>)
    static constexpr size_t buf_bytes = sizeof(bf16) * (size_t)3 * BM * LD + sizeof(float) * 2 * BM;
    // smem: K, V [16 nw][LD]; dS^T twice [16 nw][LDS]; then two query-tile buffers
    static constexpr size_t bytes(int nw) { return sizeof(bf16) * (size_t)16 * nw * (2 * LD + 2 * LDS) + 2 * buf_bytes; }
    static_assert(buf_bytes % 16 == 0, "cp.async needs 16-byte aligned tiles");
    static_assert((sizeof(bf16) * 16 * (2 * LD + 2 * LDS)) % 16 == 0, "the query buffers must stay 16-byte aligned");
};

// dQ of one query tile (head h, queries qs ..) = dS K over the block's nw 16-key steps, from
// dS^T [16 nw][LDS] in shared memory: units of 16 queries x 16 columns, over the warps. The
// key loop is unrolled to MAXW steps (nw at run time) so that every shared-memory address is
// a constant offset from two per-thread bases.
template <int D, int LD, int LDS, int BM, int MAXW>
__device__ __forceinline__ void fused_dq(const FlashArgs &a, int b, int h, int qs, int nw, const bf16 *sDS, const bf16 *sK)
{
    constexpr int UM = BM / 16, UN = D / 16;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    for (int un = warp; un < UM * UN; un += nw) {
        const int mb = un / UN, np = un % UN;
        // two accumulator pairs (even and odd key steps): half the dependent chain
        float q0[4] = {}, q1[4] = {}, q2[4] = {}, q3[4] = {};
        // A = dS (queries x keys) from dS^T through ldmatrix .trans; B = rows of K (.trans)
        const bf16 *pa = sDS + ((lane & 7) + (lane >> 4) * 8) * LDS + mb * 16 + ((lane >> 3) & 1) * 8;
        // mma_b2's address, its base kept: calling mma_b2 measured 1 % slower (more spills, s17b)
        const bf16 *pb = sK + ((lane & 7) + ((lane >> 3) & 1) * 8) * LD + np * 16 + (lane >> 4) * 8;
#pragma unroll
        for (int kk = 0; kk < MAXW; kk += 2) {
            if (kk < nw) {
                uint32_t fa[4], fb[4];
                ldsm_x4_t(fa, pa + kk * 16 * LDS);
                ldsm_x4_t(fb, pb + kk * 16 * LD);
                mma16816(q0, fa, fb[0], fb[1]);
                mma16816(q1, fa, fb[2], fb[3]);
            }
            if (kk + 1 < nw) {
                uint32_t fa[4], fb[4];
                ldsm_x4_t(fa, pa + (kk + 1) * 16 * LDS);
                ldsm_x4_t(fb, pb + (kk + 1) * 16 * LD);
                mma16816(q2, fa, fb[0], fb[1]);
                mma16816(q3, fa, fb[2], fb[3]);
            }
        }
#pragma unroll
        for (int e = 0; e < 4; e++) q0[e] += q2[e], q1[e] += q3[e];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int i = qs + mb * 16 + g + 8 * r;
            if (i >= a.Lq || !a.dq) continue;
            const int64_t row = b * a.dqs0 + (int64_t)i * a.dqs1 + h * a.dqs2 + np * 16 + 2 * t;
            grad_store2(a.dq, a.dq_f32, row, a.scale * q0[2 * r], a.scale * q0[2 * r + 1], a.acc_q);
            grad_store2(a.dq, a.dq_f32, row + 8, a.scale * q1[2 * r], a.scale * q1[2 * r + 1], a.acc_q);
        }
    }
}

template <int D, bool DROP, bool MASK>
__global__ void __launch_bounds__(32 * FusedCfg<D>::MAXW, 1) flash_bwd_fused_kernel(const FlashArgs a)
{
    GC_PDL_WAIT();
    typedef FusedCfg<D> C;
    constexpr int BM = C::BM, LD = C::LD, LDS = C::LDS, NS = BM / 8, NO = D / 8;
    const int nw = blockDim.x / 32, BN = 16 * nw; // keys held (Lk <= BN)
    bf16 *sK = reinterpret_cast<bf16 *>(flash_smem), *sV = sK + BN * LD, *sDS0 = sV + BN * LD;
    unsigned char *bufs = reinterpret_cast<unsigned char *>(sDS0 + 2 * BN * LDS);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int hk = blockIdx.y, b = blockIdx.z;
    const int n_qt = (a.Lq + BM - 1) / BM, n_tiles = a.G * n_qt;
    auto load_q = [&](int h, int qs, int u) { load_q_tile<D, LD, BM, true>(a, bufs + u * C::buf_bytes, b, h, qs); };

    load_rows<D, LD>(sK, a.k + b * a.ks0 + hk * a.ks2, a.ks1, 0, BN, a.Lk); // keys >= Lk: zero rows
    load_rows<D, LD>(sV, a.v + b * a.vs0 + hk * a.vs2, a.vs1, 0, BN, a.Lk);
    load_q(hk * a.G, 0, 0);
    cp_async_commit();

    const int j0 = warp * 16 + g, j1 = j0 + 8;
    const bool w_all = warp * 16 + 16 <= a.Lk; // the warp's keys are all real (each warp has one)
    const int wq_lo = a.causal ? warp * 16 - (a.Lk - a.Lq) : 0; // Lk <= 256, Lq < 2^30: int
    float dk[NO][4], dv[NO][4];
#pragma unroll
    for (int n = 0; n < NO; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) dk[n][e] = dv[n][e] = 0.f;

    int h = hk * a.G, qs = 0, hp = 0, qp = 0; // this tile's head and first query; the last tile's
    for (int it = 0; it < n_tiles; it++) {
        const int u = it & 1;
        cp_async_wait<0>();
        tile_delta<D, LD, BM>(bufs + u * C::buf_bytes);
        // tile it is in, with its Delta; every warp is done with tile it - 1 (its query
        // buffer, the next prefetch's) and has written its dS^T; tile it - 2's dQ reads are done
        __syncthreads();
        const int qn = qs + BM < a.Lq ? qs + BM : 0, hn = qs + BM < a.Lq ? h : h + 1;
        if (it + 1 < n_tiles) load_q(hn, qn, u ^ 1);
        cp_async_commit();
        const unsigned char *buf = bufs + u * C::buf_bytes;
        const bf16 *sQ = reinterpret_cast<const bf16 *>(buf), *sG = sQ + BM * LD;
        const float *sLse = reinterpret_cast<const float *>(sG + 2 * BM * LD), *sDel = sLse + BM; // past O
        bf16 *sDS = sDS0 + u * BN * LDS;

        const int n_lo = wq_lo - qs >= 8 * NS ? NS : wq_lo - qs > 0 ? (int)(wq_lo - qs) / 8 : 0;
        const int n_hi = tiles_for<NS>(a.Lq - qs);
        const bool full = w_all && qs + BM <= a.Lq && (!a.causal || qs >= wq_lo + 15);
        float st[NS][4], dpt[NS][4]; // [keys x queries]
#pragma unroll
        for (int n = 0; n < NS; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) st[n][e] = dpt[n][e] = 0.f;
        auto tile = [&](auto full_c) { // the dK/dV kernel's tile, its keys from 0
            dkv_tile<D, LD, BM, decltype(full_c)::value, DROP, MASK>(a, b, h, qs, warp * 16, j0, j1, n_lo, n_hi, sK, sV, sQ, sG,
                                                                   sLse, sDel, st, dpt, dk, dv);
        };
        if (full) tile(std::true_type{});
        else if (n_lo < n_hi) tile(std::false_type{});
        // dS^T into shared memory, zeros where the tile was not run (sDS must hold no NaN)
#pragma unroll
        for (int n = 0; n < NS; n++)
#pragma unroll
            for (int r = 0; r < 2; r++)
                *reinterpret_cast<uint32_t *>(sDS + (warp * 16 + g + 8 * r) * LDS + n * 8 + 2 * t) =
                    pack_bf16(dpt[n][2 * r], dpt[n][2 * r + 1]);
        if (it > 0) fused_dq<D, LD, LDS, BM, C::MAXW>(a, b, hp, qp, nw, sDS0 + (u ^ 1) * BN * LDS, sK);
        hp = h, qp = qs, h = hn, qs = qn;
    }
    __syncthreads(); // the last tile's dS^T is in
    if (n_tiles > 0) fused_dq<D, LD, LDS, BM, C::MAXW>(a, b, hp, qp, nw, sDS0 + ((n_tiles - 1) & 1) * BN * LDS, sK);
    // dQ (above), then dK, then dV, each after a block barrier: they may share one buffer
    __syncthreads();
    store_dkv<D>(a, b, hk, j0, j1, dk, dv);
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

// Over 48 KB a kernel must be allowed its shared memory. A kernel's largest size is a
// compile-time constant: one cudaFuncSetAttribute per kernel, in a thread-safe static
// initialiser, and a guard read afterwards. The runtime drives one device per process
// (runtime/cuda.cu).
template <auto Kernel> gc_status allow_smem(size_t smem)
{
    static const cudaError_t allowed =
        smem > 48 * 1024 ? cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem)
                         : cudaSuccess;
    if (allowed != cudaSuccess)
        return gc_error_set(GC_ERR_CUDA, "flash attention: %zu bytes of shared memory refused: %s", smem,
                            cudaGetErrorString(allowed));
    return GC_OK;
}

// smem_max: the attribute's size, for a kernel whose launches differ in size (0: smem)
template <auto Kernel>
gc_status launch(dim3 grid, size_t smem, const FlashArgs &a, unsigned threads = kThreadsFa, size_t smem_max = 0)
{
    GC_TRY(allow_smem<Kernel>(smem_max ? smem_max : smem));
    gc_launch(Kernel, grid, threads, smem, gc_cuda_stream(), a);
    GC_CUDA_LAUNCH_CHECK();
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

// f(integral_constant DROP, integral_constant MASK): the kernel variant for these arguments
template <typename F> gc_status with_variant(const FlashArgs &a, F &&f)
{
    using std::integral_constant;
    const bool drop = a.p > 0.f, mask = a.mask != nullptr;
    if (drop) return mask ? f(integral_constant<bool, true>{}, integral_constant<bool, true>{})
                          : f(integral_constant<bool, true>{}, integral_constant<bool, false>{});
    return mask ? f(integral_constant<bool, false>{}, integral_constant<bool, true>{})
                : f(integral_constant<bool, false>{}, integral_constant<bool, false>{});
}

template <int D> gc_status launch_fwd(const FlashArgs &a)
{
    const dim3 grid((unsigned)((a.Lq + FwdCfg<D>::BM - 1) / FwdCfg<D>::BM), (unsigned)a.H, (unsigned)a.B);
    return with_variant(a, [&](auto drop, auto mask) {
        return launch<flash_fwd_kernel<D, drop.value, mask.value>>(grid, FwdCfg<D>::bytes, a);
    });
}

gc_status launch_delta(const FlashArgs &a, int D)
{
    const int64_t threads = (int64_t)a.B * a.Lq * a.H * (D / 8);
    gc_launch(flash_delta_kernel, (unsigned)((threads + 255) / 256), 256, 0, gc_cuda_stream(), a, D);
    GC_CUDA_LAUNCH_CHECK();
    return GC_OK;
}

// Does the backward run the fused kernel? Where it holds every key (Lk <= 16 MAXW) and D <= 64
// (registers: it holds dK, dV and a tile's S^T, dP^T), dQ is wanted and split is not asked.
bool fused_bwd(int64_t D, int64_t Lk, bool dq, bool split)
{
    return D <= 64 && Lk <= 16 * FusedCfg<64>::MAXW && dq && !split;
}

template <int D> gc_status launch_bwd(const FlashArgs &a, bool split)
{
    if constexpr (D <= 64)
        if (fused_bwd(D, a.Lk, a.dq, split)) {
            const int nw = (a.Lk + 15) / 16;
            const dim3 grid(1u, (unsigned)(a.H / a.G), (unsigned)a.B);
            return with_variant(a, [&](auto drop, auto mask) { // a warp a 16 keys; the attribute for the largest block
                return launch<flash_bwd_fused_kernel<D, drop.value, mask.value>>(
                    grid, FusedCfg<D>::bytes(nw), a, 32 * nw, FusedCfg<D>::bytes(FusedCfg<D>::MAXW));
            });
        }
    if (!a.delta) return gc_error_set(GC_ERR_INVALID, "flash attention backward: no Delta scratch for the split kernels");
    if (a.dq) { // also writes Delta
        const dim3 grid((unsigned)((a.Lq + DqCfg<D>::BM - 1) / DqCfg<D>::BM), (unsigned)a.H, (unsigned)a.B);
        GC_TRY(with_variant(a, [&](auto drop, auto mask) {
            return launch<flash_bwd_dq_kernel<D, drop.value, mask.value>>(grid, DqCfg<D>::bytes, a);
        }));
    } else if (a.dk || a.dv) {
        GC_TRY(launch_delta(a, D));
    }
    if (a.dk || a.dv) {
        const dim3 grid((unsigned)((a.Lk + DkvCfg<D>::BN - 1) / DkvCfg<D>::BN), (unsigned)(a.H / a.G), (unsigned)a.B);
        GC_TRY(with_variant(a, [&](auto drop, auto mask) {
            return launch<flash_bwd_dkv_kernel<D, drop.value, mask.value>>(grid, DkvCfg<D>::bytes, a);
        }));
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
    switch (q->shape[3]) {
    case 32: return launch_fwd<32>(a);
    case 64: return launch_fwd<64>(a);
    default: return launch_fwd<128>(a);
    }
}

// Does gc_cuda_flash_attention_bwd run the fused kernel, which needs no Delta scratch?
extern "C" bool gc_cuda_flash_attention_bwd_fused(int64_t D, int64_t Lk, bool dq, bool split)
{
    return fused_bwd(D, Lk, dq, split);
}

// Gradients into dq [B, Lq, H, D], dk/dv [B, Lk, Hkv, D] (f32 or bf16, innermost stride 1;
// null: not wanted), = or += per acc_*. dout: dO [B, Lq, H, D] bf16; delta: scratch f32
// [B, H, Lq], null where gc_cuda_flash_attention_bwd_fused. The launches run dQ, then dK,
// then dV: buffers shared between q, k, v must be given with acc set on the later ones
// (gc_grad_target does this when fetched in order). Where Lk <= 256 and D <= 64 one fused
// kernel makes all three, Delta inside, unless split asks for the dQ and dK/dV kernels
// (gc_attention_set_impl "flash-split").
extern "C" gc_status gc_cuda_flash_attention_bwd(const gc_tensor *q, const gc_tensor *k, const gc_tensor *v,
                                                const gc_tensor *mask, const gc_tensor *out, const gc_tensor *lse,
                                                const gc_tensor *dout, gc_tensor *delta, gc_tensor *dq, bool acc_q,
                                                gc_tensor *dk, bool acc_k, gc_tensor *dv, bool acc_v, float scale,
                                                bool causal, float p, uint32_t op, gc_rand_context rc, bool split)
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
    a.delta = delta ? static_cast<float *>(gc_tensor_data(delta)) : nullptr;
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
    switch (q->shape[3]) {
    case 32: return launch_bwd<32>(a, split);
    case 64: return launch_bwd<64>(a, split);
    default: return launch_bwd<128>(a, split);
    }
}
