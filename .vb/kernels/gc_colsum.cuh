// Deterministic column sums over rows, for kernels that make a bias gradient: the plain
// column sum (matmul.cu) and the MLP activation's backward, which sums the gradient it has
// just made instead of a second pass reading it again (elementwise.cu).
//
// A block (kColThreads, kRowLanes) covers kColThreads * kColVec consecutive columns
// (thread tx: kColVec of them, 16 bytes of bf16) of one chunk of rows (blockIdx.y); lane
// ty takes rows r0 + ty, + kRowLanes, ... in order, and the lanes meet in a fixed tree.
// A warp reads 4 rows of 128 bytes. The chunks' partial sums are added by the last block
// of each column group to finish (a ticket per group), in chunk order: the same bits
// whichever block is last, and one launch.
#ifndef GC_COLSUM_CUH
#define GC_COLSUM_CUH

#include "gc_cuda_util.cuh"

namespace {

constexpr int kColVec = 8, kColThreads = 8, kRowLanes = 32;
constexpr int64_t kColsPerBlock = kColThreads * kColVec;
constexpr int kMaxTickets = 4096; // column groups of one launch that finishes its sums itself
__device__ unsigned int colsum_tickets[kMaxTickets];

typedef float ColRed[kColVec][kRowLanes][kColThreads]; // [column in the vector][lane][thread]: no bank conflicts

// Rows a chunk: 256, or more where 65535 chunks would not cover the rows. It depends on
// the shape only, so the sums repeat bit for bit.
inline int64_t colsum_rows_per_chunk(int64_t rows)
{
    int64_t rpc = 256;
    if ((rows + rpc - 1) / rpc > 65535) rpc = (rows + 65534) / 65535;
    return rpc;
}

// The grid of a column-sum launch over [rows, cols]: x the column groups, y the chunks of
// *rpc rows each.
inline dim3 colsum_grid(int64_t rows, int64_t cols, int64_t *rpc)
{
    *rpc = colsum_rows_per_chunk(rows);
    return dim3((unsigned)((cols + kColsPerBlock - 1) / kColsPerBlock), (unsigned)((rows + *rpc - 1) / *rpc));
}

// The block's column sums from each thread's own sums s (over its lane's rows): the 32
// lanes meet in a fixed tree, and thread (tx, 0) gets the block's in out. Every thread of
// the block calls it (it synchronises).
__device__ __forceinline__ void colsum_block_reduce(const float *s, ColRed &red, float *out)
{
    const int tx = threadIdx.x, ty = threadIdx.y;
#pragma unroll
    for (int k = 0; k < kColVec; k++) red[k][ty][tx] = s[k];
    __syncthreads();
    for (int w = kRowLanes / 2; w > 0; w >>= 1) {
        if (ty < w) {
#pragma unroll
            for (int k = 0; k < kColVec; k++) red[k][ty][tx] += red[k][ty + w][tx];
        }
        __syncthreads();
    }
#pragma unroll
    for (int k = 0; k < kColVec; k++) out[k] = red[k][0][tx];
}

// The block's sums over rows [r0, r1) of the kColVec values row(r, f) gives for thread
// tx's columns (active: the thread has columns), lane ty's rows in order. Thread (tx, 0)
// gets them in out. Every thread of the block calls it.
template <typename Row>
__device__ __forceinline__ void block_colsum(int64_t r0, int64_t r1, bool active, ColRed &red, float *out, Row &&row)
{
    float s[kColVec] = {};
    if (active) {
#pragma unroll 4
        for (int64_t r = r0 + threadIdx.y; r < r1; r += kRowLanes) {
            float f[kColVec];
            row(r, f);
#pragma unroll
            for (int k = 0; k < kColVec; k++) s[k] += f[k];
        }
    }
    colsum_block_reduce(s, red, out);
}

template <typename D> __device__ __forceinline__ void store_cols(D *o, const float *t, bool acc)
{
#pragma unroll
    for (int k = 0; k < kColVec; k++) o[k] = from_f<D>(acc ? t[k] + to_f(o[k]) : t[k]);
}

// After block_colsum over chunk blockIdx.y: the block's sums t (thread (tx, 0), columns c)
// go to part[blockIdx.y], and the last block of the column group to take its ticket (after
// a fence) adds every chunk's partial into out (+= when acc), in chunk order. The ticket
// goes back to 0 for the next launch (launches on the one stream do not overlap). Every
// thread of the block calls it.
template <typename D>
__device__ __forceinline__ void colsum_finish(float *part, int64_t cols, int64_t c, ColRed &red, float *t, D *out, bool acc)
{
    __shared__ bool last;
    if (threadIdx.y == 0 && c < cols) store_cols(part + (int64_t)blockIdx.y * cols + c, t, false);
    __threadfence(); // the partial is visible to every block before the ticket is taken
    __syncthreads();
    if (threadIdx.x == 0 && threadIdx.y == 0) last = atomicAdd(&colsum_tickets[blockIdx.x], 1u) == gridDim.y - 1;
    __syncthreads();
    if (!last) return;
    block_colsum(0, gridDim.y, c < cols, red, t, [&](int64_t r, float *f) {
        // through L2: partials other blocks of this launch wrote
        const float4 a = __ldcg(reinterpret_cast<const float4 *>(part + r * cols + c));
        const float4 b = __ldcg(reinterpret_cast<const float4 *>(part + r * cols + c) + 1);
        f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
    });
    if (threadIdx.y == 0 && c < cols) store_cols(out + c, t, acc);
    if (threadIdx.x == 0 && threadIdx.y == 0) colsum_tickets[blockIdx.x] = 0;
}

} // namespace

#endif
