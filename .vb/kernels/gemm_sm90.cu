// The forward GEMM of a linear layer on Hopper's tensor cores, its epilogue fused:
//
//   v = A[m, k] B[n, k]^T (+ bias[n]) (+ R[m, n]) rounded to bf16;  C = act(v);  pre = v
//
// bf16 in and out, f32 accumulation. cuBLASLt offers no epilogue for erf-GELU or
// quick_gelu, so an MLP's activation is a pass of its own over the [rows, 4D] output
// (reading it and writing it again: 8 % of a DINOv3 step, 10 % of a CLIP B/16 one).
// Here the activation is applied to the tile on its way out: in a no-grad forward, only
// act(v) is written; with the tape, v (kept for backward) and act(v) (fc2's input) both
// come from the one pass.
//
// The structure is the standard one for sm_90 (CUTLASS's warp-specialized persistent
// kernels):
//   - a block of 3 warpgroups, one block an SM, looping over output tiles;
//   - warpgroup 0, the producer: one thread issues TMA loads of the A [128 x 64] and
//     B [BN x 64] tiles of each k step into a ring of `stages` shared-memory buffers
//     (128-byte swizzle), each with a "full" barrier that the TMA completes;
//   - warpgroups 1 and 2, the consumers: per k step wgmma.m64nBNk16 from shared memory
//     into f32 registers, one group in flight, and an "empty" barrier arrival (a warp
//     each) when a buffer has been read; the epilogue stages the tile in shared memory for
//     TMA stores (ping-pong), or stores from the registers (cooperative).
//   - ping-pong (the default): each consumer takes whole 128 x 128 tiles, the block's
//     tiles alternately, and their main loops take turns, so that one's epilogue runs
//     while the other's products keep the tensor cores busy; cooperative
//     (GC_GEMM_SM90_SCHED=coop): both consumers take 64-row halves of every 128 x BN tile.
// A K-major operand is what this layout needs: A = x [rows, in] and B = W [out, in], the
// forward of every linear layer. Anything else goes to cuBLASLt (kernels/matmul.cu).
//
// Where it stands (docs/BENCHMARKS.md, session 10): correct, and within 5 % of cuBLASLt
// since the ping-pong epilogue stages its tile in shared memory for TMA stores
// (K = 768: 643 to 656 against 670 to 681 TFLOP/s; 455 with the 4-byte stores from
// registers it had). With the activation in the epilogue, CLIP's fc1 + quick_gelu takes
// 0.87x the time of cuBLASLt and the activation's own pass, DINOv3's fc1 + erf-GELU 1.1x.
// End to end that does not pay yet (GC_GEMM_SM90=act: B/16 and B/32 4096/256 -0.3 and
// -0.6 %, B/16 128/64 +0.2 to +1.0 %, DINOv3 +2.4 %), so the models use cuBLASLt unless
// GC_GEMM_SM90 says otherwise (gc_gemm_set_sm90). Clusters of 2 sharing B by TMA multicast
// (GC_GEMM_SM90_CLUSTER=2) are correct but 3 to 12 % slower than none at these shapes.
//
// Built only for sm_90a (wgmma, setmaxnreg); the compute_90 PTX that the build adds for
// newer GPUs has an empty kernel body, and the host never launches it there
// (gc_cuda_gemm_sm90_fits checks the device). tests/test_gpu.c's gemm_sm90 cases compare it
// with the CPU reference; gemm_sm90_bench times it against cuBLASLt.
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <cstdint>

extern "C" {
#include "../runtime/gc_cuda.h"
#include "gc_ops.h"
}
#include "gc_act.cuh"
#include "gc_cuda_util.cuh"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define GC_SM90A 1
#endif

namespace {

using namespace gc_act_detail;
typedef __nv_bfloat16 bf16;

constexpr int kBM = 128, kBK = 64; // kBK bf16 = 128 bytes: one swizzle row
constexpr int kGemmThreads = 384;      // producer + 2 consumer warpgroups

template <int BN, bool PP> struct Tile {
    static constexpr int stages = BN == 256 ? 4 : 6;
    static constexpr int a_bytes = kBM * kBK * 2, b_bytes = BN * kBK * 2;
    static constexpr int stage_bytes = a_bytes + b_bytes;
    // ping-pong: each consumer stages 64 rows x 128 columns of output (two 64 x 64 boxes
    // of the TMA store, 128-byte swizzle) before storing them
    static constexpr int out_bytes = PP ? 2 * 64 * 128 * 2 : 0;
    // the buffers (1024-byte aligned for the swizzle), the staging, then the barriers; + 1024 to align
    static constexpr int smem = stages * stage_bytes + out_bytes + (2 * stages + 2) * 8 + 1024;
};

struct Epi {
    bf16 *c, *pre;         // C = act(v); pre = v (null: not wanted)
    const bf16 *bias, *res; // null: none
    int64_t ldc;           // of c, pre and res
    int m, n;
};

// ---- PTX wrappers (sm_90a; compiled only there) ----

#ifdef GC_SM90A

__device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void mbar_init(uint64_t *b, uint32_t count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(b)), "r"(count));
}

__device__ __forceinline__ void mbar_expect_tx(uint64_t *b, uint32_t bytes)
{
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(b)), "r"(bytes) : "memory");
}

__device__ __forceinline__ void mbar_arrive(uint64_t *b)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_u32(b)) : "memory");
}

// waits until the phase of parity `parity` has completed (a fresh barrier: parity 1 has)
__device__ __forceinline__ void mbar_wait(uint64_t *b, uint32_t parity)
{
    uint32_t done;
    do {
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(smem_u32(b)), "r"(parity)
                     : "memory");
    } while (!done);
}

// the tile at (c0 = k, c1 = row) of the tensor map into dst, completing tx bytes on bar
__device__ __forceinline__ void tma_load(void *dst, const CUtensorMap *map, uint64_t *bar, int c0, int c1)
{
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];"
                 ::"r"(smem_u32(dst)), "l"((uint64_t)map), "r"(c0), "r"(c1), "r"(smem_u32(bar))
                 : "memory");
}

// the same, multicast: the tile lands at dst's offset in the shared memory of every CTA of
// the cluster in `mask`, completing tx bytes on the barrier at bar's offset in each
__device__ __forceinline__ void tma_load_mc(void *dst, const CUtensorMap *map, uint64_t *bar, int c0, int c1, uint16_t mask)
{
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.multicast::cluster"
                 " [%0], [%1, {%2, %3}], [%4], %5;"
                 ::"r"(smem_u32(dst)), "l"((uint64_t)map), "r"(c0), "r"(c1), "r"(smem_u32(bar)), "h"(mask)
                 : "memory");
}

// an arrival on the barrier at b's offset in CTA `cta` of the cluster. The default
// semantics (release at CTA scope), as CUTLASS's ClusterBarrier arrives: what it orders is
// this warp's wgmma reads of the buffer, complete already (wgmma.wait_group). With
// .release.cluster the clustered kernel took twice as long (session 10: DINOv3's fc1 0.175
// against 0.098 ms).
__device__ __forceinline__ void mbar_arrive_cta(uint64_t *b, uint32_t cta)
{
    uint32_t r;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(smem_u32(b)), "r"(cta));
    asm volatile("mbarrier.arrive.shared::cluster.b64 _, [%0];" ::"r"(r) : "memory");
}

__device__ __forceinline__ uint32_t cluster_rank()
{
    uint32_t r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}

// every thread of every CTA of the cluster
__device__ __forceinline__ void cluster_sync()
{
    asm volatile("barrier.cluster.arrive.release;\nbarrier.cluster.wait.acquire;" ::: "memory");
}

// the box at (c0 = column, c1 = row) of the tensor map from src; bulk group of this thread
__device__ __forceinline__ void tma_store(const CUtensorMap *map, const void *src, int c0, int c1)
{
    asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%1, %2}], [%3];"
                 ::"l"((uint64_t)map), "r"(c0), "r"(c1), "r"(smem_u32(src))
                 : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;" ::: "memory"); }
__device__ __forceinline__ void bulk_wait_read() { asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory"); }
__device__ __forceinline__ void bulk_wait() { asm volatile("cp.async.bulk.wait_group 0;" ::: "memory"); }
// shared-memory writes of this thread visible to the TMA (the async proxy)
__device__ __forceinline__ void fence_async_smem() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }
// the 128 threads of a warpgroup (barrier 1 + consumer; 0 is __syncthreads')
__device__ __forceinline__ void wg_sync(int id) { asm volatile("bar.sync %0, 128;" ::"r"(id) : "memory"); }

// shared-memory matrix descriptor: K-major, 128-byte swizzle, 8-row groups 1024 bytes apart
__device__ __forceinline__ uint64_t smem_desc(const void *p)
{
    const uint64_t a = smem_u32(p);
    return ((a & 0x3FFFF) >> 4) | (1ull << 16) | ((uint64_t)(1024 >> 4) << 32) | (1ull << 62);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory"); }

// D[64 x 128] (+)= A[64 x 16] B[128 x 16]^T, both K-major in shared memory (128-byte swizzle)
__device__ __forceinline__ void wgmma_128(float *d, uint64_t da, uint64_t db, int acc)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
                 "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
                 "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
                 "}, %64, %65, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
                   "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                   "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
                   "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
                   "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
                   "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
                   "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "l"(da), "l"(db), "r"(acc));
}

// D[64 x 256] (+)= A[64 x 16] B[256 x 16]^T, both K-major in shared memory (128-byte swizzle)
__device__ __forceinline__ void wgmma_256(float *d, uint64_t da, uint64_t db, int acc)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
                 "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
                 "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63,"
                 "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79,"
                 "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95,"
                 "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111,"
                 "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
                 "}, %128, %129, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
                   "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                   "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
                   "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
                   "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
                   "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
                   "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
                   "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
                   "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
                   "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
                   "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
                   "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
                   "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
                   "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
                   "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
                 : "l"(da), "l"(db), "r"(acc));
}

template <int BN> __device__ __forceinline__ void wgmma_bn(float *d, uint64_t da, uint64_t db, int acc)
{
    if constexpr (BN == 256) wgmma_256(d, da, db, acc);
    else wgmma_128(d, da, db, acc);
}

// v = acc + bias + res for two neighbouring columns, rounded; then C (and pre) at p.
template <int ACT>
__device__ __forceinline__ void epi_store(const Epi &e, int64_t off, float x0, float x1, float b0, float b1)
{
    x0 += b0, x1 += b1;
    if (e.res) {
        const __nv_bfloat162 r = *reinterpret_cast<const __nv_bfloat162 *>(e.res + off);
        x0 += __bfloat162float(r.x), x1 += __bfloat162float(r.y);
    }
    __nv_bfloat162 v = __floats2bfloat162_rn(x0, x1);
    if constexpr (ACT != GC_ACT_NONE) {
        if (e.pre) *reinterpret_cast<__nv_bfloat162 *>(e.pre + off) = v;
        v = __floats2bfloat162_rn(act_f<ACT, true>(__bfloat162float(v.x)), act_f<ACT, true>(__bfloat162float(v.y)));
    }
    *reinterpret_cast<__nv_bfloat162 *>(e.c + off) = v;
}

// A 64-row half of a ping-pong tile, its rounded values v in dh, out through the consumer's
// staging (two 64 x 64 boxes) by TMA stores at (n0, rt): v to `pre` (if given), act(v) to C.
// Row r of a box is 128 bytes, its 16-byte chunk q at q ^ (r % 8) (the 128-byte swizzle the
// tensor map names): a warp's 4-byte stores of v fall in 32 distinct banks. The activation
// then runs over the staging in place, 8 values (16 bytes) at a time and the accumulators
// dead by then: applied to the registers, it had too few registers left to overlap its
// exponentials (the erf-GELU epilogue took 1.5 times the GEMM, quick_gelu 2.6 times; session
// 10). One thread of the warpgroup issues the stores and waits for them to have read the
// staging before it is written again.
// The staging's two 64 x 64 boxes to columns n0 and n0 + 64 of rows rt.. (one thread)
__device__ __forceinline__ void store_boxes(const CUtensorMap *map, const uint8_t *out, int n0, int rt)
{
    tma_store(map, out, n0, rt);
    tma_store(map, out + 64 * 128, n0 + 64, rt);
    bulk_commit();
}

template <int BN, int ACT>
__device__ __forceinline__ void stage_store(const float *dh, uint8_t *out, const CUtensorMap *map, const CUtensorMap *map_pre,
                                            int n0, int rt, int c, int t)
{
    static_assert(BN == 128, "the staging holds 128 columns");
    const int warp = t / 32, lane = t % 32;
    if (t == 0) bulk_wait_read();
    wg_sync(1 + c);
#pragma unroll
    for (int j = 0; j < BN / 8; j++)
#pragma unroll
        for (int rr = 0; rr < 2; rr++) {
            const int lr = warp * 16 + lane / 4 + 8 * rr;
            uint8_t *p = out + (j / 8) * (64 * 128) + lr * 128 + (((j % 8) ^ (lr % 8)) * 16) + 4 * (lane % 4);
            // already bf16 values: exact
            *reinterpret_cast<__nv_bfloat162 *>(p) = __floats2bfloat162_rn(dh[4 * j + 2 * rr], dh[4 * j + 2 * rr + 1]);
        }
    if constexpr (ACT != GC_ACT_NONE) {
        if (map_pre) {
            fence_async_smem();
            wg_sync(1 + c);
            if (t == 0) {
                store_boxes(map_pre, out, n0, rt);
                bulk_wait_read();
            }
        }
        wg_sync(1 + c); // every v written (and read by pre's store)
        constexpr int chunks = 64 * 128 * 2 / 16 / 128; // 16-byte chunks of the staging a thread
#pragma unroll
        for (int q = 0; q < chunks; q++) {
            uint4 *p = reinterpret_cast<uint4 *>(out) + t + 128 * q;
            uint4 u = *p;
            __nv_bfloat162 *h2 = reinterpret_cast<__nv_bfloat162 *>(&u);
#pragma unroll
            for (int i = 0; i < 4; i++)
                h2[i] = __floats2bfloat162_rn(act_f<ACT, true>(__bfloat162float(h2[i].x)), act_f<ACT, true>(__bfloat162float(h2[i].y)));
            *p = u;
        }
    }
    fence_async_smem();
    wg_sync(1 + c);
    if (t == 0) store_boxes(map, out, n0, rt);
}
#endif // GC_SM90A

// PP (ping-pong, as CUTLASS's): each consumer warpgroup takes whole tiles of 128 x BN, the
// CTA's tiles alternately, and their main loops take turns (the `order` barriers), so that
// one's epilogue runs while the other's products keep the tensor cores busy; otherwise
// (cooperative) both take halves of every tile.
//
// CL = 2: clusters of two CTAs on vertically neighbouring tiles (rows m0 and m0 + 128, the
// same columns) share their B tiles: each CTA loads half of every B k step and the TMA
// multicasts it into both, which halves the B traffic from L2 a CTA (the operand traffic of
// a 128 x 128 tile is what bounds it at K = 768 otherwise). A buffer is then refilled only
// when the consumers of both CTAs have read it: they arrive on the empty barriers of both.
// `tiles` counts cluster tiles (256 x BN); the CTAs of a cluster walk the same ones.
template <int BN, int ACT, bool PP, int CL>
__global__ void __launch_bounds__(kGemmThreads, 1)
    gemm_tn_kernel(const __grid_constant__ CUtensorMap map_a, const __grid_constant__ CUtensorMap map_b,
                   const __grid_constant__ CUtensorMap map_c, const __grid_constant__ CUtensorMap map_pre, const Epi e,
                   int k_tiles, int n_tiles, int tiles)
{
    GC_PDL_WAIT();
#ifdef GC_SM90A
    static_assert(CL == 1 || CL == 2, "clusters of 1 or 2 CTAs");
    using T = Tile<BN, PP>;
    constexpr int S = T::stages;
    constexpr int H = PP ? 2 : 1; // 64-row halves a consumer computes
    extern __shared__ uint8_t gemm_smem_raw[];
    uint8_t *smem = (uint8_t *)(((uintptr_t)gemm_smem_raw + 1023) & ~(uintptr_t)1023);
    uint8_t *sa = smem, *sb = smem + S * T::a_bytes; // S buffers of A [128][64], then S of B [BN][64]
    // full[s]: buffer s loaded (the TMA's bytes); empty[s]: read by the warps of its consumers;
    // order[c]: consumer c may start its next main loop (ping-pong)
    uint64_t *full = (uint64_t *)(smem + S * T::stage_bytes + T::out_bytes), *empty = full + S, *order = empty + S;
    const int wg = threadIdx.x / 128, t = threadIdx.x % 128;
    const int rank = CL > 1 ? (int)cluster_rank() : 0;
    const int cid = (int)blockIdx.x / CL, clusters = (int)gridDim.x / CL; // this cluster, and how many
    if (threadIdx.x == 0) {
        for (int s = 0; s < S; s++) mbar_init(&full[s], 1), mbar_init(&empty[s], (PP ? 4 : 8) * CL);
        mbar_init(&order[0], 4), mbar_init(&order[1], 4);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    if constexpr (CL > 1) cluster_sync(); // the peer's barriers exist before anything arrives on them

    if (wg == 0) { // producer: the cluster's tiles cid + li clusters in order, their k steps round the ring
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
        if (t == 0) {
            int s = 0;
            uint32_t ph = 0;
            for (int tile = cid; tile < tiles; tile += clusters) {
                // rows past m (the second CTA's half of the last cluster tile) arrive as zeros
                const int m0 = ((tile / n_tiles) * CL + rank) * kBM, n0 = (tile % n_tiles) * BN;
                for (int kt = 0; kt < k_tiles; kt++) {
                    mbar_wait(&empty[s], ph ^ 1);
                    mbar_expect_tx(&full[s], T::stage_bytes); // out-of-range rows and k arrive as zeros, and count
                    tma_load(sa + s * T::a_bytes, &map_a, &full[s], kt * kBK, m0);
                    if constexpr (CL == 1) tma_load(sb + s * T::b_bytes, &map_b, &full[s], kt * kBK, n0);
                    else // our half of B, into both CTAs
                        tma_load_mc(sb + s * T::b_bytes + rank * (T::b_bytes / 2), &map_b, &full[s], kt * kBK,
                                    n0 + rank * (BN / 2), (uint16_t)0x3);
                    if (++s == S) s = 0, ph ^= 1;
                }
            }
        }
    } else {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
    const int c = wg - 1; // consumer 0 or 1
    const int warp = t / 32, lane = t % 32;
    float d[H][BN / 2];
#pragma unroll
    for (int h = 0; h < H; h++)
#pragma unroll
        for (int i = 0; i < BN / 2; i++) d[h][i] = 0.0f;
    // Ping-pong takes li = c, c + 2, ..., cooperative every li. Step kt of tile li is step
    // q = li k_tiles + kt of the ring: buffer q % S, phase (q / S) % 2. A barrier's phase is
    // waited for by its parity, so no one may wait for a phase two ahead of the barrier's:
    // in ping-pong the turns see to that (the other consumer has waited for every step
    // before this tile's when it hands over).
    // a buffer read: free it here and, with clusters, in the peer (whose producer fills half of it)
    auto release = [&](uint64_t *b) {
        mbar_arrive(b);
        if constexpr (CL > 1) mbar_arrive_cta(b, (uint32_t)(rank ^ 1));
    };
    uint32_t oph = 0;
    for (int li = PP ? c : 0;; li += PP ? 2 : 1) {
        const int tile = cid + li * clusters;
        if (tile >= tiles) break;
        const int m0 = ((tile / n_tiles) * CL + rank) * kBM, n0 = (tile % n_tiles) * BN;
        const int row0 = PP ? 0 : c * 64; // of the tile
        const int64_t q = (int64_t)li * k_tiles;
        int s = (int)(q % S);
        uint32_t ph = (uint32_t)((q / S) & 1);
        if (PP && li > 0) mbar_wait(&order[c], oph), oph ^= 1; // our turn
        int prev = -1;
        for (int kt = 0; kt < k_tiles; kt++) {
            mbar_wait(&full[s], ph);
            wgmma_fence();
            const uint64_t db = smem_desc(sb + s * T::b_bytes);
#pragma unroll
            for (int kk = 0; kk < kBK / 16; kk++) // 16 bf16 = 32 bytes further along the swizzled rows
#pragma unroll
                for (int h = 0; h < H; h++)
                    wgmma_bn<BN>(d[h], smem_desc(sa + s * T::a_bytes + (row0 + h * 64) * kBK * 2) + 2 * kk, db + 2 * kk,
                                 kt > 0 || kk > 0);
            wgmma_commit();
            // the group before this one is done: its buffer can be refilled
            wgmma_wait<1>();
            if (prev >= 0 && lane == 0) release(&empty[prev]);
            prev = s;
            if (++s == S) s = 0, ph ^= 1;
        }
        if (PP && lane == 0) mbar_arrive(&order[c ^ 1]); // every step of this tile waited for: the other's turn
        wgmma_wait<0>();
        if (prev >= 0 && lane == 0) release(&empty[prev]);

        // accumulator layout of wgmma m64nN: warp w holds rows 16w .. 16w+15; per 8 columns j,
        // d[4j], d[4j+1] at row lane/4, columns 8j + 2 (lane % 4) + {0, 1}; d[4j+2], d[4j+3] 8 rows below
        const int c0 = n0 + 2 * (lane % 4);
        if constexpr (PP) {
            // through shared memory to TMA stores, which clip at the matrix's edges
            uint8_t *out = smem + S * T::stage_bytes + c * (64 * 128 * 2);
#pragma unroll
            for (int h = 0; h < H; h++) {
                const int rt = m0 + h * 64; // the half's first row
                // v = acc + bias + res rounded to bf16, kept in d: what pre gets and act reads
#pragma unroll
                for (int j = 0; j < BN / 8; j++) {
                    const int col = c0 + 8 * j;
                    float b0 = 0.0f, b1 = 0.0f;
                    if (e.bias && col < e.n) {
                        const __nv_bfloat162 b = *reinterpret_cast<const __nv_bfloat162 *>(e.bias + col);
                        b0 = __bfloat162float(b.x), b1 = __bfloat162float(b.y);
                    }
#pragma unroll
                    for (int rr = 0; rr < 2; rr++) {
                        const int row = rt + warp * 16 + lane / 4 + 8 * rr;
                        float x0 = d[h][4 * j + 2 * rr] + b0, x1 = d[h][4 * j + 2 * rr + 1] + b1;
                        if (e.res && row < e.m && col < e.n) {
                            const __nv_bfloat162 r = *reinterpret_cast<const __nv_bfloat162 *>(e.res + (int64_t)row * e.ldc + col);
                            x0 += __bfloat162float(r.x), x1 += __bfloat162float(r.y);
                        }
                        const __nv_bfloat162 v = __floats2bfloat162_rn(x0, x1);
                        d[h][4 * j + 2 * rr] = __bfloat162float(v.x), d[h][4 * j + 2 * rr + 1] = __bfloat162float(v.y);
                    }
                }
                stage_store<BN, ACT>(d[h], out, &map_c, ACT != GC_ACT_NONE && e.pre ? &map_pre : nullptr, n0, rt, c, t);
            }
        } else {
#pragma unroll
            for (int h = 0; h < H; h++) {
                const int r0 = m0 + row0 + h * 64 + warp * 16 + lane / 4;
#pragma unroll
                for (int j = 0; j < BN / 8; j++) {
                    const int col = c0 + 8 * j;
                    if (col >= e.n) continue; // n is even: col + 1 < n too
                    float b0 = 0.0f, b1 = 0.0f;
                    if (e.bias) {
                        const __nv_bfloat162 b = *reinterpret_cast<const __nv_bfloat162 *>(e.bias + col);
                        b0 = __bfloat162float(b.x), b1 = __bfloat162float(b.y);
                    }
                    if (r0 < e.m) epi_store<ACT>(e, (int64_t)r0 * e.ldc + col, d[h][4 * j], d[h][4 * j + 1], b0, b1);
                    if (r0 + 8 < e.m) epi_store<ACT>(e, (int64_t)(r0 + 8) * e.ldc + col, d[h][4 * j + 2], d[h][4 * j + 3], b0, b1);
                }
            }
        }
    }
    if (PP && t == 0) bulk_wait(); // the C tiles written before the block (and its shared memory) goes
    } // consumers
    // no CTA leaves while its peer may still arrive on its barriers or multicast into it
    if constexpr (CL > 1) cluster_sync();
#endif
}

// ---- host side ----

PFN_cuTensorMapEncodeTiled_v12000 encode_fn()
{
    static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
        void *p = nullptr;
        cudaDriverEntryPointQueryResult q;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) != cudaSuccess ||
            q != cudaDriverEntryPointSuccess) {
            (void)cudaGetLastError();
            p = nullptr;
        }
        return (PFN_cuTensorMapEncodeTiled_v12000)p;
    }();
    return fn;
}

// Hopper (sm_90) device 0, and the TMA encoder present
bool sm90_available()
{
    static const bool ok = [] {
        int dev = 0, major = 0, minor = 0;
        if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
            (void)cudaGetLastError();
            return false;
        }
        return major == 9 && minor == 0 && encode_fn() != nullptr;
    }();
    return ok;
}

bool aligned(const void *p, uintptr_t a) { return ((uintptr_t)p % a) == 0; }

// [rows, k] bf16 with leading dim ld, tiles of [box_rows, 64]
gc_status make_map(CUtensorMap *map, const void *p, int64_t rows, int64_t k, int64_t ld, int box_rows)
{
    cuuint64_t dims[2] = {(cuuint64_t)k, (cuuint64_t)rows};
    cuuint64_t strides[1] = {(cuuint64_t)ld * 2};
    cuuint32_t box[2] = {(cuuint32_t)kBK, (cuuint32_t)box_rows};
    cuuint32_t estr[2] = {1, 1};
    CUresult r = encode_fn()(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void *>(p), dims, strides, box, estr,
                             CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                             CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS)
        return gc_error_set(GC_ERR_CUDA, "gemm sm90: cuTensorMapEncodeTiled [%lld, %lld] ld %lld failed (%d)", (long long)rows,
                            (long long)k, (long long)ld, (int)r);
    return GC_OK;
}

// How many clusters of CL CTAs fit on the GPU at once (a GPC's SMs hold a cluster; not
// every GPC has an even number free), or an error.
template <int BN, int ACT, bool PP, int CL> gc_status max_clusters(int *out)
{
    static int n = -1;
    static cudaError_t err = [] {
        cudaError_t r = cudaFuncSetAttribute(gemm_tn_kernel<BN, ACT, PP, CL>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             Tile<BN, PP>::smem);
        if (r != cudaSuccess) return r;
        if (CL == 1) return n = gc_cuda_sm_count(), cudaSuccess;
        cudaLaunchAttribute attr[1];
        attr[0].id = cudaLaunchAttributeClusterDimension;
        attr[0].val.clusterDim.x = CL, attr[0].val.clusterDim.y = 1, attr[0].val.clusterDim.z = 1;
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = dim3(CL * 64), cfg.blockDim = dim3(kGemmThreads), cfg.dynamicSmemBytes = Tile<BN, PP>::smem;
        cfg.attrs = attr, cfg.numAttrs = 1;
        return cudaOccupancyMaxActiveClusters(&n, gemm_tn_kernel<BN, ACT, PP, CL>, &cfg);
    }();
    GC_CUDA_CHECK(err);
    if (n < 1) return gc_error_set(GC_ERR_CUDA, "gemm sm90: no cluster of %d blocks fits", CL);
    // one block an SM: never more clusters than that (a second wave of a persistent grid
    // would run after the first, doubling the time)
    *out = n < gc_cuda_sm_count() / CL ? n : gc_cuda_sm_count() / CL;
    return GC_OK;
}

template <int BN, int ACT, bool PP, int CL> gc_status launch(const gc_gemm_args *g, const Epi &e)
{
    int fit = 0;
    GC_TRY((max_clusters<BN, ACT, PP, CL>(&fit)));
    CUtensorMap ma, mb, mc, mp;
    GC_TRY(make_map(&ma, g->a, g->m, g->k, g->lda, kBM));
    GC_TRY(make_map(&mb, g->b, g->n, g->k, g->ldb, BN / CL)); // with clusters, each CTA loads half of B
    if (PP) { // the output's boxes of 64 x 64 for the TMA stores (C and pre: [m, n], ldc)
        GC_TRY(make_map(&mc, e.c, g->m, g->n, g->ldc, 64));
        if (e.pre) GC_TRY(make_map(&mp, e.pre, g->m, g->n, g->ldc, 64));
        else mp = mc;
    } else {
        mc = mp = ma; // unused
    }
    const int k_tiles = (int)((g->k + kBK - 1) / kBK), n_tiles = (int)((g->n + BN - 1) / BN);
    const int tiles = (int)((g->m + CL * kBM - 1) / (CL * kBM)) * n_tiles; // of CL x 128 rows
    const int clusters = tiles < fit ? tiles : fit;
    gc_launch_clusters(gemm_tn_kernel<BN, ACT, PP, CL>, clusters * CL, kGemmThreads, Tile<BN, PP>::smem, gc_cuda_stream(),
                       (unsigned)CL, ma, mb, mc, mp, e, k_tiles, n_tiles, tiles);
    GC_CUDA_LAUNCH_CHECK();
    return GC_OK;
}

// BN 256 halves the operand traffic a FLOP against BN 128, but a 768-wide output then has
// 3 tiles a row block: the last wave can leave most SMs idle. Pick the one whose waves,
// counted in BN-128 tile times (a BN 256 tile a little under two), end sooner.
int pick_bn(const gc_gemm_args *g)
{
    const int64_t sms = gc_cuda_sm_count(), mb = (g->m + kBM - 1) / kBM;
    const int64_t w128 = (mb * ((g->n + 127) / 128) + sms - 1) / sms, w256 = (mb * ((g->n + 255) / 256) + sms - 1) / sms;
    return w256 * 185 <= w128 * 100 ? 256 : 128;
}

template <int ACT, int CL> gc_status dispatch_cl(const gc_gemm_args *g, const Epi &e, bool coop, int bn)
{
    // ping-pong stores through the TMA: 16-byte aligned rows of the output
    const bool tma_out = aligned(e.c, 16) && (!e.pre || aligned(e.pre, 16)) && g->ldc % 8 == 0;
    if (!coop && tma_out) return launch<128, ACT, true, CL>(g, e);
    if (bn == 0) bn = pick_bn(g);
    return bn == 256 ? launch<256, ACT, false, CL>(g, e) : launch<128, ACT, false, CL>(g, e);
}

// ping-pong over tiles of 128 x 128 (the default), or cooperative (both consumers on every
// tile, BN 128 or 256); clusters of 2 or 1: gc_gemm_set_sm90_tuning
template <int ACT> gc_status dispatch_bn(const gc_gemm_args *g, const Epi &e)
{
    int coop = 0, bn = 0, cluster = 2;
    gc_gemm_sm90_tuning(&coop, &bn, &cluster);
    return cluster == 1 ? dispatch_cl<ACT, 1>(g, e, coop, bn) : dispatch_cl<ACT, 2>(g, e, coop, bn);
}

} // namespace

// For measuring it: how many clusters of 1 or 2 CTAs of the ping-pong kernel the GPU holds
// at once (what the launch takes), or -1.
extern "C" int gc_cuda_gemm_sm90_fit(int cluster)
{
    int n = -1;
    const gc_status st = cluster == 2 ? max_clusters<128, GC_ACT_NONE, true, 2>(&n) : max_clusters<128, GC_ACT_NONE, true, 1>(&n);
    if (st != GC_OK) gc_error_clear(), n = -1;
    return n;
}

// What the kernel takes: bf16, A [m, k] (lda) times B [n, k]^T (ldb), one matrix, alpha 1,
// beta 0 or C's old value as the residual (beta 1), TMA-legal pointers and strides, even n.
extern "C" bool gc_cuda_gemm_sm90_fits(const gc_gemm_args *g)
{
    if (!sm90_available()) return false;
    const bool res_ok = g->beta == 0.0f || (g->beta == 1.0f);
    return g->ab_dtype == GC_BF16 && g->c_dtype == GC_BF16 && !g->trans_a && g->trans_b && g->batch <= 1 && g->alpha == 1.0f &&
           res_ok && g->m > 0 && g->n > 0 && g->k > 0 && g->m < (1 << 30) && g->n < (1 << 30) && g->n % 2 == 0 &&
           g->ldc % 2 == 0 && g->lda % 8 == 0 && g->ldb % 8 == 0 && aligned(g->a, 16) && aligned(g->b, 16) &&
           aligned(g->c, 4) && (!g->pre || aligned(g->pre, 4)) && (!g->c_in || aligned(g->c_in, 4)) &&
           (g->epilogue != GC_EPI_BIAS || aligned(g->bias, 4)) && g->act >= GC_ACT_NONE && g->act <= GC_ACT_SILU;
}

extern "C" gc_status gc_cuda_gemm_sm90(const gc_gemm_args *g)
{
    Epi e;
    e.c = (bf16 *)g->c;
    e.pre = g->act != GC_ACT_NONE ? (bf16 *)g->pre : nullptr;
    e.bias = g->epilogue == GC_EPI_BIAS ? (const bf16 *)g->bias : nullptr;
    e.res = g->beta == 1.0f ? (const bf16 *)(g->c_in ? g->c_in : g->c) : nullptr;
    e.ldc = g->ldc;
    e.m = (int)g->m, e.n = (int)g->n;
    switch (g->act) {
    case GC_ACT_GELU_ERF: return dispatch_bn<GC_ACT_GELU_ERF>(g, e);
    case GC_ACT_GELU_TANH: return dispatch_bn<GC_ACT_GELU_TANH>(g, e);
    case GC_ACT_QUICK_GELU: return dispatch_bn<GC_ACT_QUICK_GELU>(g, e);
    case GC_ACT_SILU: return dispatch_bn<GC_ACT_SILU>(g, e);
    default: return dispatch_bn<GC_ACT_NONE>(g, e);
    }
}
