// The GEMM wrapper on cuBLASLt, and the bias-gradient column sum.
//
// gc_gemm_args are row-major: C[m,n] = alpha op(A) op(B) + beta C. cuBLASLt is
// column-major, and a row-major X[r,c] with leading dim ld IS the column-major X^T
// [c,r] with the same ld. So we ask cuBLASLt for C^T[n,m] = op(B)^T op(A)^T: its "A"
// is our B, its "B" our A, its m/n our n/m; a row-major operand that is not transposed
// is, column-major, already the transpose we need (CUBLAS_OP_N), and vice versa.
// CUBLASLT_EPILOGUE_BIAS adds a vector along the rows of the column-major D = C^T,
// i.e. bias[j] to row-major column j: exactly C = AB + bias[n].
//
// Descriptors, layouts and the heuristic's algorithm are cached per shape key (sizes,
// leading dims, batch strides, dtypes, epilogue and the pointers' alignments), so a
// steady-state training step makes no heuristic query.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cublasLt.h>

#include <cstdint>
#include <cstring>
#include <mutex>
#include <unordered_map>

// See runtime/cuda.cu: the C headers have no extern "C" guards of their own.
extern "C" {
#include "../runtime/gc_cuda.h"
#include "gc_ops.h"
}
#include "gc_cuda_util.cuh"

extern "C" gc_status gc_cuda_blaslt(cublasLtHandle_t *handle, void **workspace, size_t *workspace_size); // runtime/cuda.cu

namespace {

struct GemmKey {
    int32_t ta, tb, ab, c, epi, pad0;
    int64_t m, n, k, lda, ldb, ldc, batch, sa, sb, sc;
    int32_t align_a, align_b, align_c, align_bias;
};

struct KeyHash {
    size_t operator()(const GemmKey &k) const
    {
        const unsigned char *p = (const unsigned char *)&k;
        uint64_t h = 1469598103934665603ull; // FNV-1a
        for (size_t i = 0; i < sizeof k; i++) h = (h ^ p[i]) * 1099511628211ull;
        return (size_t)h;
    }
};
struct KeyEq {
    bool operator()(const GemmKey &a, const GemmKey &b) const { return memcmp(&a, &b, sizeof a) == 0; }
};

struct GemmPlan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr; // cuBLASLt's A (our B), B (our A), C = D
    cublasLtMatmulAlgo_t algo;
};

std::mutex plan_mu;
std::unordered_map<GemmKey, GemmPlan, KeyHash, KeyEq> &plans = *new std::unordered_map<GemmKey, GemmPlan, KeyHash, KeyEq>;
const size_t MAX_PLANS = 4096;

void plan_destroy(GemmPlan &p)
{
    if (p.op) cublasLtMatmulDescDestroy(p.op);
    if (p.la) cublasLtMatrixLayoutDestroy(p.la);
    if (p.lb) cublasLtMatrixLayoutDestroy(p.lb);
    if (p.lc) cublasLtMatrixLayoutDestroy(p.lc);
    p = GemmPlan{};
}

int32_t align_of(const void *p)
{
    if (!p) return 0;
    uintptr_t a = (uintptr_t)p;
    int32_t al = 256;
    while (al > 1 && (a % (uintptr_t)al)) al >>= 1;
    return al;
}

bool lt_type(gc_dtype t, cudaDataType_t *out)
{
    switch (t) {
    case GC_F32: *out = CUDA_R_32F; return true;
    case GC_BF16: *out = CUDA_R_16BF; return true;
    case GC_F16: *out = CUDA_R_16F; return true;
    default: return false;
    }
}

// "gemm [m=.. n=.. k=.. batch=.. A^T B bf16 -> f32]" for messages
const char *gemm_desc(const gc_gemm_args *g, char *buf, size_t n)
{
    snprintf(buf, n, "gemm [m=%lld n=%lld k=%lld batch=%lld, %s%s x %s%s, %s -> %s%s]", (long long)g->m, (long long)g->n,
             (long long)g->k, (long long)(g->batch > 1 ? g->batch : 1), "A", g->trans_a ? "^T" : "", "B",
             g->trans_b ? "^T" : "", gc_dtype_name(g->ab_dtype), gc_dtype_name(g->c_dtype),
             g->epilogue == GC_EPI_BIAS ? ", +bias" : "");
    return buf;
}

#define LT_CHECK(call)                                                                                          \
    do {                                                                                                        \
        cublasStatus_t lt_s_ = (call);                                                                          \
        if (lt_s_ != CUBLAS_STATUS_SUCCESS) {                                                                   \
            char lt_d_[192];                                                                                    \
            return gc_error_set(GC_ERR_CUDA, "%s: %s failed: %s (%s)", gemm_desc(g, lt_d_, sizeof lt_d_), #call, \
                                cublasLtGetStatusName(lt_s_), cublasLtGetStatusString(lt_s_));                  \
        }                                                                                                       \
    } while (0)

gc_status layout_new(const gc_gemm_args *g, cublasLtMatrixLayout_t *l, cudaDataType_t t, int64_t rows, int64_t cols, int64_t ld,
                     int64_t batch, int64_t stride)
{
    LT_CHECK(cublasLtMatrixLayoutCreate(l, t, (uint64_t)rows, (uint64_t)cols, ld));
    if (batch > 1) {
        int32_t bc = (int32_t)batch;
        LT_CHECK(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof bc));
        LT_CHECK(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride));
    }
    return GC_OK;
}

// Builds descriptors and asks the heuristic once. plan_mu held.
gc_status plan_build(const gc_gemm_args *g, const GemmKey &key, cublasLtHandle_t lt, size_t ws_size, GemmPlan *p)
{
    cudaDataType_t tab = CUDA_R_32F, tc = CUDA_R_32F;
    lt_type(g->ab_dtype, &tab); // checked by the caller
    lt_type(g->c_dtype, &tc);
    const int64_t batch = key.batch;
    LT_CHECK(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F)); // exact f32: no TF32
    int32_t opa = g->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N; // cuBLASLt's A is our B
    int32_t opb = g->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    LT_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    LT_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    if (g->epilogue == GC_EPI_BIAS) {
        uint32_t epi = CUBLASLT_EPILOGUE_BIAS;
        LT_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
        // the bias has D's dtype: cuBLASLt's default for CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE
        // the heuristic reads the pointer's alignment
        LT_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g->bias, sizeof g->bias));
    }
    // column-major shapes: our B as [n,k] (or [k,n] transposed), our A as [k,m] (or [m,k])
    GC_TRY(layout_new(g, &p->la, tab, g->trans_b ? g->k : g->n, g->trans_b ? g->n : g->k, g->ldb, batch, g->stride_b));
    GC_TRY(layout_new(g, &p->lb, tab, g->trans_a ? g->m : g->k, g->trans_a ? g->k : g->m, g->lda, batch, g->stride_a));
    GC_TRY(layout_new(g, &p->lc, tc, g->n, g->m, g->ldc, batch, g->stride_c));

    cublasLtMatmulPreference_t pref = nullptr;
    LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    uint64_t ws = ws_size;
    uint32_t al_a = (uint32_t)key.align_b, al_b = (uint32_t)key.align_a, al_c = (uint32_t)key.align_c; // swapped roles
    cublasStatus_t s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof al_a);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof al_b);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof al_c);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof al_c);
    cublasLtMatmulHeuristicResult_t res;
    memset(&res, 0, sizeof res);
    int found = 0;
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulAlgoGetHeuristic(lt, p->op, p->la, p->lb, p->lc, p->lc, pref, 1, &res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    LT_CHECK(s);
    if (found < 1) {
        char d[192];
        return gc_error_set(GC_ERR_CUDA, "%s: cuBLASLt has no algorithm for this problem (CUBLAS_STATUS_NOT_SUPPORTED; "
                            "alignments A %d B %d C %d bytes)", gemm_desc(g, d, sizeof d), key.align_a, key.align_b, key.align_c);
    }
    p->algo = res.algo;
    return GC_OK;
}

// ---- k == 0: no product, C = beta C (+ bias) ----

template <typename T>
__global__ void scale_bias_kernel(T *c, const T *c_in, int64_t m, int64_t n, int64_t ldc, int64_t batch, int64_t stride_c,
                                  float beta, const T *bias)
{
    const int64_t total = batch * m * n;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
        int64_t j = e % n, i = (e / n) % m, z = e / (n * m), off = z * stride_c + i * ldc + j;
        T *p = c + off;
        float v = beta == 0.0f ? 0.0f : beta * to_f(c_in ? c_in[off] : *p);
        if (bias) v += to_f(bias[j]);
        *p = from_f<T>(v);
    }
}

template <typename T> gc_status scale_bias(const gc_gemm_args *g, int64_t batch)
{
    int64_t total = batch * g->m * g->n;
    int64_t blocks = (total + 255) / 256, cap = (int64_t)gc_cuda_sm_count() * 16;
    scale_bias_kernel<T><<<(unsigned)(blocks < cap ? blocks : cap), 256, 0, gc_cuda_stream()>>>(
        (T *)g->c, (const T *)g->c_in, g->m, g->n, g->ldc, batch, g->stride_c, g->beta,
        g->epilogue == GC_EPI_BIAS ? (const T *)g->bias : nullptr);
    GC_CUDA_LAUNCH_CHECK();
    return GC_OK;
}

// ---- column sums: dst[c] (+)= sum_r src[r, c] ----

// Block (32, 8): 32 columns, 8 row lanes; each lane sums its rows in order, then lanes
// are added in order: deterministic. gridDim.y > 1: rows split into chunks of `rpc`,
// each chunk's sums written to out[chunk, cols] (a second launch adds the chunks).
template <typename S, typename D>
__global__ void colsum_kernel(const S *src, int64_t rows, int64_t cols, int64_t rpc, D *out, bool acc)
{
    __shared__ float part[8][33];
    const int64_t c = (int64_t)blockIdx.x * 32 + threadIdx.x;
    const int64_t r0 = (int64_t)blockIdx.y * rpc;
    const int64_t r1 = r0 + rpc < rows ? r0 + rpc : rows;
    float s = 0.0f;
    if (c < cols)
        for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) s += to_f(src[r * cols + c]);
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
        float t = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; i++) t += part[i][threadIdx.x];
        D *o = out + (int64_t)blockIdx.y * cols + c;
        if (acc) t += to_f(*o);
        *o = from_f<D>(t);
    }
}

// The same with 16-byte loads (src 16-byte aligned, cols % 8 == 0): block (8, 32) = 8
// threads of 8 consecutive columns each, 32 row lanes; a warp reads 4 rows of 8 x 16
// bytes. Each lane sums its rows in order, lanes meet in a fixed tree: deterministic.
constexpr int kColVec = 8, kColThreads = 8, kRowLanes = 32;

// The block's sums of rows [r0, r1) of src for the kColVec columns at c (thread tx): lane
// ty sums rows r0 + ty, + kRowLanes, ... in order, the lanes meet in a fixed tree in red.
// Thread (tx, 0) gets them in out. L2: read through L2 (partials other blocks of this
// launch wrote). Every thread of the block calls it (it synchronises).
template <bool L2, typename S>
__device__ __forceinline__ void block_colsum(const S *__restrict__ src, int64_t r0, int64_t r1, int64_t cols, int64_t c,
                                             float (*red)[kRowLanes][kColThreads], float *out)
{
    const int tx = threadIdx.x, ty = threadIdx.y;
    float s[kColVec] = {};
    if (c < cols) {
#pragma unroll 4
        for (int64_t r = r0 + ty; r < r1; r += kRowLanes) {
            float f[kColVec];
            if constexpr (L2) {
                static_assert(kColVec == 8 && sizeof(S) == 4, "L2 reads are of f32 partials");
                const float4 a = __ldcg(reinterpret_cast<const float4 *>(src + r * cols + c));
                const float4 b = __ldcg(reinterpret_cast<const float4 *>(src + r * cols + c) + 1);
                f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
            } else {
                load_v<kColVec>(src + r * cols + c, f);
            }
#pragma unroll
            for (int k = 0; k < kColVec; k++) s[k] += f[k];
        }
    }
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

template <typename D> __device__ __forceinline__ void store_cols(D *o, const float *t, bool acc)
{
#pragma unroll
    for (int k = 0; k < kColVec; k++) o[k] = from_f<D>(acc ? t[k] + to_f(o[k]) : t[k]);
}

template <typename S, typename D>
__global__ void colsum_vec_kernel(const S *__restrict__ src, int64_t rows, int64_t cols, int64_t rpc, D *__restrict__ out,
                                  bool acc)
{
    __shared__ float red[kColVec][kRowLanes][kColThreads]; // [column in the vector][lane][thread]: no bank conflicts
    const int64_t c = ((int64_t)blockIdx.x * kColThreads + threadIdx.x) * kColVec;
    const int64_t r0 = (int64_t)blockIdx.y * rpc, r1 = r0 + rpc < rows ? r0 + rpc : rows;
    float t[kColVec];
    block_colsum<false>(src, r0, r1, cols, c, red, t);
    if (threadIdx.y == 0 && c < cols) store_cols(out + (int64_t)blockIdx.y * cols + c, t, acc);
}

// Both passes in one launch: each block writes its chunk's partial sums to part[chunk],
// and the last block of a column group to finish (a ticket per group, taken after a
// fence) adds every chunk's partial into out, in chunk order: the second pass's sums,
// bit for bit, whichever block is last. The ticket goes back to 0 for the next launch
// (launches on the one stream do not overlap).
constexpr int kMaxTickets = 4096; // column groups of kColThreads * kColVec
__device__ unsigned int colsum_tickets[kMaxTickets];

template <typename S, typename D>
__global__ void colsum_fused_kernel(const S *__restrict__ src, int64_t rows, int64_t cols, int64_t rpc, float *part,
                                    D *__restrict__ out, bool acc)
{
    __shared__ float red[kColVec][kRowLanes][kColThreads];
    __shared__ bool last;
    const int64_t c = ((int64_t)blockIdx.x * kColThreads + threadIdx.x) * kColVec;
    const int64_t r0 = (int64_t)blockIdx.y * rpc, r1 = r0 + rpc < rows ? r0 + rpc : rows;
    float t[kColVec];
    block_colsum<false>(src, r0, r1, cols, c, red, t);
    if (threadIdx.y == 0 && c < cols) store_cols(part + (int64_t)blockIdx.y * cols + c, t, false);
    __threadfence(); // the partial is visible to every block before the ticket is taken
    __syncthreads();
    if (threadIdx.x == 0 && threadIdx.y == 0) last = atomicAdd(&colsum_tickets[blockIdx.x], 1u) == gridDim.y - 1;
    __syncthreads();
    if (!last) return;
    block_colsum<true>((const float *)part, 0, gridDim.y, cols, c, red, t);
    if (threadIdx.y == 0 && c < cols) store_cols(out + c, t, acc);
    if (threadIdx.x == 0 && threadIdx.y == 0) colsum_tickets[blockIdx.x] = 0;
}

bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

// out[chunk, cols] (+)= the column sums of rows [chunk * rpc, +rpc) of src, one launch
template <typename S, typename D>
void colsum_pass(bool vec, const S *src, int64_t rows, int64_t cols, int64_t rpc, int64_t chunks, D *out, bool acc)
{
    cudaStream_t st = gc_cuda_stream();
    if (vec) {
        const int64_t per_block = kColThreads * kColVec;
        colsum_vec_kernel<S, D><<<dim3((unsigned)((cols + per_block - 1) / per_block), (unsigned)chunks),
                                  dim3(kColThreads, kRowLanes), 0, st>>>(src, rows, cols, rpc, out, acc);
    } else {
        colsum_kernel<S, D><<<dim3((unsigned)((cols + 31) / 32), (unsigned)chunks), dim3(32, 8), 0, st>>>(src, rows, cols, rpc,
                                                                                                       out, acc);
    }
}

template <typename S, typename D>
gc_status colsum(const S *src, D *dst, int64_t rows, int64_t cols, bool acc)
{
    const int64_t col_blocks = (cols + 31) / 32;
    if (col_blocks > 0x7fffffffLL) return gc_error_set(GC_ERR_SHAPE, "sum_rows: %lld columns is too many", (long long)cols);
    // chunking depends on the shape only, so results are reproducible
    int64_t rpc = 256;
    if ((rows + rpc - 1) / rpc > 65535) rpc = (rows + 65534) / 65535;
    int64_t chunks = (rows + rpc - 1) / rpc;
    // the partial sums are 256-byte aligned: the second pass takes the same path
    const bool vec = cols % kColVec == 0 && aligned16(src);
    if (chunks <= 1) {
        colsum_pass(vec, src, rows, cols, rows, 1, dst, acc);
        GC_CUDA_LAUNCH_CHECK();
        return GC_OK;
    }
    float *part = (float *)gc_cuda_alloc(sizeof(float) * (size_t)(chunks * cols));
    if (!part) return GC_PENDING();
    const int64_t per_block = kColThreads * kColVec, groups = (cols + per_block - 1) / per_block;
    cudaError_t e = cudaSuccess;
    if (vec && groups <= kMaxTickets) { // one launch
        colsum_fused_kernel<S, D><<<dim3((unsigned)groups, (unsigned)chunks), dim3(kColThreads, kRowLanes), 0,
                                    gc_cuda_stream()>>>(src, rows, cols, rpc, part, dst, acc);
        e = cudaGetLastError();
    } else {
        colsum_pass(vec, src, rows, cols, rpc, chunks, part, false);
        e = cudaGetLastError();
        if (e == cudaSuccess) {
            colsum_pass(vec, (const float *)part, chunks, cols, chunks, 1, dst, acc);
            e = cudaGetLastError();
        }
    }
    gc_cuda_free(part); // stream order: reused only by later work on the stream
    if (e != cudaSuccess)
        return gc_error_set(GC_ERR_CUDA, "sum_rows [%lld, %lld] launch failed: %s", (long long)rows, (long long)cols,
                            cudaGetErrorString(e));
    return GC_OK;
}

template <typename S> gc_status colsum_to(const S *src, void *dst, gc_dtype ddt, int64_t rows, int64_t cols, bool acc)
{
    switch (ddt) {
    case GC_F32: return colsum<S, float>(src, (float *)dst, rows, cols, acc);
    case GC_BF16: return colsum<S, __nv_bfloat16>(src, (__nv_bfloat16 *)dst, rows, cols, acc);
    case GC_F16: return colsum<S, __half>(src, (__half *)dst, rows, cols, acc);
    default: return gc_error_set(GC_ERR_DTYPE, "sum_rows on the GPU: destination dtype %s (f32/bf16/f16 only)", gc_dtype_name(ddt));
    }
}

} // namespace

extern "C" gc_status gc_cuda_gemm(const gc_gemm_args *g)
{
    char d[192];
    cublasLtHandle_t lt;
    void *ws;
    size_t ws_size;
    GC_TRY(gc_cuda_blaslt(&lt, &ws, &ws_size));
    cudaDataType_t tab = CUDA_R_32F, tc = CUDA_R_32F;
    bool ok = lt_type(g->ab_dtype, &tab) && lt_type(g->c_dtype, &tc) &&
              (g->c_dtype == g->ab_dtype || g->c_dtype == GC_F32); // f32/f32, bf16/bf16, bf16->f32 (and f16 likewise)
    if (!ok)
        return gc_error_set(GC_ERR_DTYPE, "%s: unsupported dtypes on the GPU (a/b f32 -> f32, bf16 -> bf16 or f32, f16 -> f16 or f32)",
                            gemm_desc(g, d, sizeof d));
    if (g->m < 0 || g->n < 0 || g->k < 0 || g->batch < 0)
        return gc_error_set(GC_ERR_SHAPE, "%s: negative size", gemm_desc(g, d, sizeof d));
    const int64_t batch = g->batch > 1 ? g->batch : 1;
    if (g->m == 0 || g->n == 0) return GC_OK;
    if (g->epilogue != GC_EPI_NONE && g->epilogue != GC_EPI_BIAS)
        return gc_error_set(GC_ERR_INVALID, "%s: unknown epilogue %d", gemm_desc(g, d, sizeof d), (int)g->epilogue);
    if (g->epilogue == GC_EPI_BIAS && !g->bias)
        return gc_error_set(GC_ERR_INVALID, "%s: bias epilogue without a bias", gemm_desc(g, d, sizeof d));
    if (!g->c || (g->k > 0 && (!g->a || !g->b)))
        return gc_error_set(GC_ERR_INVALID, "%s: NULL operand", gemm_desc(g, d, sizeof d));
    if (g->ldc < g->n)
        return gc_error_set(GC_ERR_INVALID, "%s: ldc %lld < n", gemm_desc(g, d, sizeof d), (long long)g->ldc);
    if (batch > 0x7fffffffLL)
        return gc_error_set(GC_ERR_INVALID, "%s: batch count beyond int32", gemm_desc(g, d, sizeof d));
    if (g->k == 0) { // cuBLASLt rejects k = 0; the product is empty
        switch (g->c_dtype) {
        case GC_F32: return scale_bias<float>(g, batch);
        case GC_BF16: return scale_bias<__nv_bfloat16>(g, batch);
        default: return scale_bias<__half>(g, batch);
        }
    }
    if (g->lda < (g->trans_a ? g->m : g->k) || g->ldb < (g->trans_b ? g->k : g->n))
        return gc_error_set(GC_ERR_INVALID, "%s: lda %lld / ldb %lld too small", gemm_desc(g, d, sizeof d), (long long)g->lda,
                            (long long)g->ldb);

    GemmKey key;
    memset(&key, 0, sizeof key); // padding bytes take part in hash and equality
    key.ta = g->trans_a;
    key.tb = g->trans_b;
    key.ab = g->ab_dtype;
    key.c = g->c_dtype;
    key.epi = g->epilogue;
    key.m = g->m;
    key.n = g->n;
    key.k = g->k;
    key.lda = g->lda;
    key.ldb = g->ldb;
    key.ldc = g->ldc;
    key.batch = batch;
    if (batch > 1) {
        key.sa = g->stride_a;
        key.sb = g->stride_b;
        key.sc = g->stride_c;
    }
    key.align_a = align_of(g->a);
    key.align_b = align_of(g->b);
    key.align_c = align_of(g->c);
    if (g->c_in && g->c_in != g->c && align_of(g->c_in) < key.align_c) key.align_c = align_of(g->c_in); // C and D share a layout
    key.align_bias = g->epilogue == GC_EPI_BIAS ? align_of(g->bias) : 0;

    std::lock_guard<std::mutex> lock(plan_mu); // plans and their bias attribute are shared
    auto it = plans.find(key);
    if (it == plans.end()) {
        if (plans.size() >= MAX_PLANS) { // a runaway of shapes: start over
            for (auto &kv : plans) plan_destroy(kv.second);
            plans.clear();
        }
        GemmPlan p;
        gc_status st = plan_build(g, key, lt, ws_size, &p);
        if (st != GC_OK) {
            plan_destroy(p);
            return st;
        }
        it = plans.emplace(key, p).first;
    }
    GemmPlan &p = it->second;
    if (g->epilogue == GC_EPI_BIAS)
        LT_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g->bias, sizeof g->bias));
    const float alpha = g->alpha, beta = g->beta;
    const void *c_in = g->c_in ? g->c_in : g->c;
    LT_CHECK(cublasLtMatmul(lt, p.op, &alpha, g->b, p.la, g->a, p.lb, &beta, c_in, p.lc, g->c, p.lc, &p.algo, ws, ws_size,
                            gc_cuda_stream()));
    GC_CUDA_LAUNCH_CHECK();
    return GC_OK;
}

extern "C" gc_status gc_cuda_sum_rows(const void *src, gc_dtype sdt, void *dst, gc_dtype ddt, int64_t rows, int64_t cols,
                                      bool accumulate)
{
    GC_TRY(gc_cuda_init());
    if (rows < 0 || cols < 0) return gc_error_set(GC_ERR_SHAPE, "sum_rows: negative size [%lld, %lld]", (long long)rows, (long long)cols);
    if (cols == 0) return GC_OK;
    if (rows == 0) { // empty sum: 0, or dst unchanged when accumulating
        if (accumulate) return GC_OK;
        return gc_cuda_memzero(dst, (size_t)cols * gc_dtype_size(ddt));
    }
    switch (sdt) {
    case GC_F32: return colsum_to<float>((const float *)src, dst, ddt, rows, cols, accumulate);
    case GC_BF16: return colsum_to<__nv_bfloat16>((const __nv_bfloat16 *)src, dst, ddt, rows, cols, accumulate);
    case GC_F16: return colsum_to<__half>((const __half *)src, dst, ddt, rows, cols, accumulate);
    default: return gc_error_set(GC_ERR_DTYPE, "sum_rows on the GPU: source dtype %s (f32/bf16/f16 only)", gc_dtype_name(sdt));
    }
}
