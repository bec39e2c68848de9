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

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <type_traits>
#include <unordered_map>

// See runtime/cuda.cu: the C headers have no extern "C" guards of their own.
extern "C" {
#include "../runtime/gc_cuda.h"
#include "gc_ops.h"
}
#include "gc_colsum.cuh"
#include "gc_cuda_util.cuh"

extern "C" bool gc_cuda_gemm_sm90_fits(const gc_gemm_args *g); // kernels/gemm_sm90.cu
extern "C" gc_status gc_cuda_gemm_sm90(const gc_gemm_args *g);
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

// The heuristic's first `want` algorithms for p's descriptors, for operands of key's
// alignments and at most ws_size bytes of workspace: res[0 .. *found).
gc_status heuristic(const gc_gemm_args *g, const GemmKey &key, cublasLtHandle_t lt, size_t ws_size, const GemmPlan *p, int want,
                    cublasLtMatmulHeuristicResult_t *res, int *found)
{
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
    memset(res, 0, sizeof *res * (size_t)want);
    *found = 0;
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulAlgoGetHeuristic(lt, p->op, p->la, p->lb, p->lc, p->lc, pref, want, res, found);
    cublasLtMatmulPreferenceDestroy(pref);
    LT_CHECK(s);
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

    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    GC_TRY(heuristic(g, key, lt, ws_size, p, 1, &res, &found));
    if (found < 1) {
        char d[192];
        return gc_error_set(GC_ERR_CUDA, "%s: cuBLASLt has no algorithm for this problem (CUBLAS_STATUS_NOT_SUPPORTED; "
                            "alignments A %d B %d C %d bytes)", gemm_desc(g, d, sizeof d), key.align_a, key.align_b, key.align_c);
    }
    p->algo = res.algo;
    return GC_OK;
}

// ---- GC_GEMM_PLAN: algorithms chosen by timing, kept in a file ----
//
// The heuristic picks one algorithm per shape without running any; timing its first
// candidates finds a faster one for some shapes (PyTorch's TunableOp does the same). A
// choice made by timing can differ from run to run, and with it the rounding of a step, so
// it is made once and written down: with a plan file (GC_GEMM_PLAN=<file>, or
// gc_gemm_plan_use: gcache's --gemm-plan and gemm_plan), a shape the file holds
// takes its algorithm from there, and a shape it lacks is timed on its first call (its
// operands, the output into a scratch buffer) and appended. Runs that share the file run
// the same algorithms, and a resumed run redoes its bits. The file's first line names the
// GPU and the cuBLASLt version; a file from another pair is started over.
struct PlanFile {
    bool init = false;
    bool set = false;  // gc_gemm_plan_use gave the path (else GC_GEMM_PLAN)
    std::string given; // ... that path; "" turns it off
    std::string path;  // in use; empty: off
    std::unordered_map<GemmKey, cublasLtMatmulAlgo_t, KeyHash, KeyEq> saved;
    int from_file = 0, timed = 0;
};
PlanFile &pf = *new PlanFile;

constexpr int kTuneCandidates = 16;

// "<GPU name> sm_<major><minor> cuBLASLt <version>" of device 0
std::string plan_header()
{
    cudaDeviceProp pr;
    char b[400];
    if (cudaGetDeviceProperties(&pr, 0) != cudaSuccess) {
        (void)cudaGetLastError();
        return "unknown";
    }
    snprintf(b, sizeof b, "%s sm_%d%d cuBLASLt %zu", pr.name, pr.major, pr.minor, cublasLtGetVersion());
    return b;
}

// The key's fields in the plan file's order, for its writer and its reader alike: f(field)
// for each (GemmKey's padding is not one of them).
constexpr int kKeyInts = 19;
template <typename K, typename F> void key_fields(K &k, F &&f)
{
    f(k.ta), f(k.tb), f(k.ab), f(k.c), f(k.epi), f(k.m), f(k.n), f(k.k), f(k.lda), f(k.ldb), f(k.ldc), f(k.batch), f(k.sa),
        f(k.sb), f(k.sc), f(k.align_a), f(k.align_b), f(k.align_c), f(k.align_bias);
}

// plan_mu held. Reads GC_GEMM_PLAN once: the saved choices of this GPU and version, or a new
// file with the header. Unreadable or unwritable: an error that names the file.
gc_status plan_file_init()
{
    if (pf.init) return GC_OK;
    pf.init = true;
    const char *path = pf.set ? pf.given.c_str() : getenv("GC_GEMM_PLAN");
    if (!path || !*path) return GC_OK;
    pf.path = path;
    const std::string head = "# gradcache gemm plan: " + plan_header();
    FILE *f = fopen(path, "r");
    bool ours = false;
    if (f) {
        char line[1024];
        ours = fgets(line, sizeof line, f) && head == std::string(line, strcspn(line, "\n"));
        int lineno = 1;
        while (ours && fgets(line, sizeof line, f)) {
            lineno++;
            long long v[kKeyInts];
            unsigned long long d[8];
            int n = 0, used = 0, ni = 0;
            while (ni < kKeyInts && sscanf(line + used, "%lld%n", &v[ni], &n) == 1) ni++, used += n;
            const int got = sscanf(line + used, " : %llx %llx %llx %llx %llx %llx %llx %llx", &d[0], &d[1], &d[2], &d[3], &d[4],
                                   &d[5], &d[6], &d[7]);
            if (ni != kKeyInts || got != 8) {
                fclose(f);
                pf.path.clear();
                return gc_error_set(GC_ERR_FORMAT, "gemm plan %s: line %d is not a gemm plan entry", path, lineno);
            }
            GemmKey k;
            memset(&k, 0, sizeof k);
            int i = 0;
            key_fields(k, [&](auto &x) { x = (std::remove_reference_t<decltype(x)>)v[i++]; });
            cublasLtMatmulAlgo_t a;
            static_assert(sizeof a.data == sizeof d, "cublasLtMatmulAlgo_t holds 8 uint64");
            memcpy(a.data, d, sizeof d);
            pf.saved[k] = a;
        }
        fclose(f);
    }
    if (!ours) { // absent, or another GPU / version: start it
        f = fopen(path, "w");
        if (!f || fprintf(f, "%s\n", head.c_str()) < 0 || fclose(f) != 0) {
            pf.path.clear();
            return gc_error_set(GC_ERR_IO, "gemm plan %s: cannot write the file", path);
        }
        pf.saved.clear();
    }
    return GC_OK;
}

// plan_mu held, pf on. p holds the heuristic's choice: replaced by the file's, or by the
// fastest of the heuristic's candidates, timed here on g's operands and appended.
gc_status plan_choose(const gc_gemm_args *g, const GemmKey &key, cublasLtHandle_t lt, void *ws, size_t ws_size, GemmPlan *p)
{
    auto it = pf.saved.find(key);
    if (it != pf.saved.end()) {
        cublasLtMatmulHeuristicResult_t chk;
        if (cublasLtMatmulAlgoCheck(lt, p->op, p->la, p->lb, p->lc, p->lc, &it->second, &chk) == CUBLAS_STATUS_SUCCESS &&
            chk.workspaceSize <= ws_size) {
            p->algo = it->second;
            pf.from_file++;
            return GC_OK;
        }
        char d[192];
        return gc_error_set(GC_ERR_INVALID, "gemm plan %s: its algorithm for %s is not valid here (delete the line)",
                            pf.path.c_str(), gemm_desc(g, d, sizeof d));
    }
    cublasLtMatmulHeuristicResult_t res[kTuneCandidates];
    int found = 0;
    GC_TRY(heuristic(g, key, lt, ws_size, p, kTuneCandidates, res, &found));
    // the output goes to scratch (C, read when beta != 0, stays as it is); element (z, i, j)
    // at z stride_c + i ldc + j, as in g->c
    const size_t es = gc_dtype_size(g->c_dtype);
    const int64_t batch = key.batch;
    const size_t bytes = ((size_t)((batch - 1) * (batch > 1 ? g->stride_c : 0) + (g->m - 1) * g->ldc + g->n)) * es;
    void *scratch = nullptr;
    cudaEvent_t e0 = nullptr, e1 = nullptr;
    if (cudaMalloc(&scratch, bytes) != cudaSuccess || cudaEventCreate(&e0) != cudaSuccess || cudaEventCreate(&e1) != cudaSuccess) {
        // no room for the scratch output (the caching allocator holds the memory): this
        // call keeps the heuristic's algorithm, nothing is written, a later first call of
        // the shape (a new run) times it
        (void)cudaGetLastError();
        if (scratch) cudaFree(scratch);
        if (e0) cudaEventDestroy(e0);
        return GC_OK;
    }
    const float alpha = g->alpha, beta = g->beta;
    const void *c_in = g->c_in ? g->c_in : g->c;
    cudaStream_t st = gc_cuda_stream();
    float best = INFINITY;
    int best_i = -1;
    for (int i = 0; i < found; i++) {
        if (res[i].state != CUBLAS_STATUS_SUCCESS || res[i].workspaceSize > ws_size) continue;
        bool ok = cublasLtMatmul(lt, p->op, &alpha, g->b, p->la, g->a, p->lb, &beta, c_in, p->lc, scratch, p->lc, &res[i].algo,
                                 ws, ws_size, st) == CUBLAS_STATUS_SUCCESS; // warm-up
        ok = ok && cudaEventRecord(e0, st) == cudaSuccess;
        for (int r = 0; ok && r < 5; r++)
            ok = cublasLtMatmul(lt, p->op, &alpha, g->b, p->la, g->a, p->lb, &beta, c_in, p->lc, scratch, p->lc, &res[i].algo, ws,
                                ws_size, st) == CUBLAS_STATUS_SUCCESS;
        float ms = 0;
        ok = ok && cudaEventRecord(e1, st) == cudaSuccess && cudaEventSynchronize(e1) == cudaSuccess &&
             cudaEventElapsedTime(&ms, e0, e1) == cudaSuccess;
        if (!ok) (void)cudaGetLastError(); // a candidate that does not run is skipped
        // the heuristic's first stays unless another is 2 % faster: timing noise alone
        // should not change the algorithm
        else if (best_i < 0 || ms < best * (best_i == 0 ? 0.98f : 1.0f)) best = ms, best_i = i;
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaError_t fe = cudaFree(scratch);
    if (fe != cudaSuccess) return gc_error_set(GC_ERR_CUDA, "gemm plan: timing failed: %s", cudaGetErrorString(fe));
    if (best_i < 0) return GC_OK; // none ran: keep the heuristic's, not written down
    p->algo = res[best_i].algo;
    pf.saved[key] = p->algo;
    pf.timed++;
    // the line in one write (append mode): runs sharing the file do not interleave lines
    char line[640];
    size_t len = 0;
    key_fields(key, [&](const auto &x) { len += (size_t)snprintf(line + len, sizeof line - len, "%lld ", (long long)x); });
    len += (size_t)snprintf(line + len, sizeof line - len, ":");
    for (int i = 0; i < 8; i++) len += (size_t)snprintf(line + len, sizeof line - len, " %llx", (unsigned long long)p->algo.data[i]);
    len += (size_t)snprintf(line + len, sizeof line - len, "\n");
    FILE *f = fopen(pf.path.c_str(), "a");
    bool w = f != nullptr && len < sizeof line && fwrite(line, 1, len, f) == len;
    if (f && fclose(f) != 0) w = false;
    if (!w) return gc_error_set(GC_ERR_IO, "gemm plan %s: cannot append to the file", pf.path.c_str());
    return GC_OK;
}

// ---- k == 0: no product, C = beta C (+ bias) ----

template <typename T>
__global__ void scale_bias_kernel(T *c, const T *c_in, int64_t m, int64_t n, int64_t ldc, int64_t batch, int64_t stride_c,
                                  float beta, const T *bias)
{
    GC_PDL_WAIT();
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
    gc_launch(scale_bias_kernel<T>, (unsigned)(blocks < cap ? blocks : cap), 256, 0, gc_cuda_stream(), (T *)g->c,
              (const T *)g->c_in, g->m, g->n, g->ldc, batch, g->stride_c, g->beta,
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
    GC_PDL_WAIT();
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

// The same with 16-byte loads (src 16-byte aligned, cols % 8 == 0), in gc_colsum.cuh's
// layout: each lane sums its rows in order, lanes meet in a fixed tree: deterministic.
template <typename S, typename D>
__global__ void colsum_vec_kernel(const S *__restrict__ src, int64_t rows, int64_t cols, int64_t rpc, D *__restrict__ out,
                                  bool acc)
{
    GC_PDL_WAIT();
    __shared__ ColRed red;
    const int64_t c = ((int64_t)blockIdx.x * kColThreads + threadIdx.x) * kColVec;
    const int64_t r0 = (int64_t)blockIdx.y * rpc, r1 = r0 + rpc < rows ? r0 + rpc : rows;
    float t[kColVec];
    block_colsum(r0, r1, c < cols, red, t, [&](int64_t r, float *f) { load_v<kColVec>(src + r * cols + c, f); });
    if (threadIdx.y == 0 && c < cols) store_cols(out + (int64_t)blockIdx.y * cols + c, t, acc);
}

// Both passes in one launch: each block writes its chunk's partial sums to part[chunk],
// and the last block of a column group adds them into out (colsum_finish): the second
// pass's sums, bit for bit.
template <typename S, typename D>
__global__ void colsum_fused_kernel(const S *__restrict__ src, int64_t rows, int64_t cols, int64_t rpc, float *part,
                                    D *__restrict__ out, bool acc)
{
    GC_PDL_WAIT();
    __shared__ ColRed red;
    const int64_t c = ((int64_t)blockIdx.x * kColThreads + threadIdx.x) * kColVec;
    const int64_t r0 = (int64_t)blockIdx.y * rpc, r1 = r0 + rpc < rows ? r0 + rpc : rows;
    float t[kColVec];
    block_colsum(r0, r1, c < cols, red, t, [&](int64_t r, float *f) { load_v<kColVec>(src + r * cols + c, f); });
    colsum_finish(part, cols, c, red, t, out, acc);
}

bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

// out[chunk, cols] (+)= the column sums of rows [chunk * rpc, +rpc) of src, one launch
template <typename S, typename D>
void colsum_pass(bool vec, const S *src, int64_t rows, int64_t cols, int64_t rpc, int64_t chunks, D *out, bool acc)
{
    cudaStream_t st = gc_cuda_stream();
    if (vec) {
        gc_launch(colsum_vec_kernel<S, D>, dim3((unsigned)((cols + kColsPerBlock - 1) / kColsPerBlock), (unsigned)chunks),
                  dim3(kColThreads, kRowLanes), 0, st, src, rows, cols, rpc, out, acc);
    } else {
        gc_launch(colsum_kernel<S, D>, dim3((unsigned)((cols + 31) / 32), (unsigned)chunks), dim3(32, 8), 0, st, src,
                  rows, cols, rpc, out, acc);
    }
}

template <typename S, typename D>
gc_status colsum(const S *src, D *dst, int64_t rows, int64_t cols, bool acc)
{
    const int64_t col_blocks = (cols + 31) / 32;
    if (col_blocks > 0x7fffffffLL) return gc_error_set(GC_ERR_SHAPE, "sum_rows: %lld columns is too many", (long long)cols);
    int64_t rpc;
    const dim3 grid = colsum_grid(rows, cols, &rpc);
    const int64_t chunks = grid.y, groups = grid.x;
    // the partial sums are 256-byte aligned: the second pass takes the same path
    const bool vec = cols % kColVec == 0 && aligned16(src);
    if (chunks <= 1) {
        colsum_pass(vec, src, rows, cols, rows, 1, dst, acc);
        GC_CUDA_LAUNCH_CHECK();
        return GC_OK;
    }
    float *part = (float *)gc_cuda_alloc(sizeof(float) * (size_t)(chunks * cols));
    if (!part) return GC_PENDING();
    cudaError_t e = cudaSuccess;
    if (vec && groups <= kMaxTickets) { // one launch
        gc_launch(colsum_fused_kernel<S, D>, grid, dim3(kColThreads, kRowLanes), 0,
                  gc_cuda_stream(), src, rows, cols, rpc, part, dst, acc);
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

// ---------------------------------------------------------------- layer-scale gradients

// The gradients of a linear whose layer scale s was folded into its weights (kernels/matmul.c):
//   gw (+)= s G (row j times s_j),  gb (+)= s gbs,  gs (+)= rowsum(G w) + gbs b.
// A block per row j; the row sum in a fixed order (threads stride the row, then the block's
// tree), so the bits repeat. Gradients are f32 or bf16 (f32: the flags).
struct ScaleGradArgs {
    const float *G, *gbs; // [out, in], [out]; null: not needed
    void *gw, *gb, *gs;   // null: not wanted
    bool gw_f32, gb_f32, gs_f32, acc_w, acc_b, acc_s;
    int64_t in;
};

__device__ __forceinline__ void grad_store(void *p, bool f32, int64_t i, float v, bool acc)
{
    if (f32) {
        float *q = static_cast<float *>(p) + i;
        *q = acc ? *q + v : v;
    } else {
        __nv_bfloat16 *q = static_cast<__nv_bfloat16 *>(p) + i;
        *q = __float2bfloat16_rn(acc ? __bfloat162float(*q) + v : v);
    }
}

template <typename T>
__global__ void __launch_bounds__(256) scale_grads_kernel(const ScaleGradArgs a, const T *__restrict__ w,
                                                          const T *__restrict__ b, const T *__restrict__ s)
{
    GC_PDL_WAIT();
    __shared__ float red[8];
    const int64_t j = blockIdx.x;
    const float sj = to_f(s[j]);
    float t = 0.0f;
    if (a.G)
        for (int64_t i = threadIdx.x; i < a.in; i += blockDim.x) {
            const float g = a.G[j * a.in + i];
            if (a.gw) grad_store(a.gw, a.gw_f32, j * a.in + i, g * sj, a.acc_w);
            t += g * to_f(w[j * a.in + i]);
        }
    if (!a.gs) {
        if (a.gb && threadIdx.x == 0) grad_store(a.gb, a.gb_f32, j, a.gbs[j] * sj, a.acc_b);
        return;
    }
    t = warp_sum(t);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = t;
    __syncthreads();
    if (threadIdx.x != 0) return;
    t = 0.0f;
    for (int k = 0; k < (int)(blockDim.x >> 5); k++) t += red[k];
    if (a.gbs) {
        t += a.gbs[j] * to_f(b[j]);
        if (a.gb) grad_store(a.gb, a.gb_f32, j, a.gbs[j] * sj, a.acc_b);
    }
    grad_store(a.gs, a.gs_f32, j, t, a.acc_s);
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
    if (g->act != GC_ACT_NONE || g->pre) { // the activation epilogue is ours alone
        if (!gc_cuda_gemm_sm90_fits(g))
            return gc_error_set(GC_ERR_INVALID, "%s: an activation epilogue needs Hopper, bf16, A times B^T, alpha 1 "
                                "(gc_gemm_fuses_act)", gemm_desc(g, d, sizeof d));
        return gc_cuda_gemm_sm90(g);
    }
    if (gc_gemm_sm90_mode() == 2 && gc_cuda_gemm_sm90_fits(g)) return gc_cuda_gemm_sm90(g);
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
        if (st == GC_OK) st = plan_file_init();
        if (st == GC_OK && !pf.path.empty()) st = plan_choose(g, key, lt, ws, ws_size, &p);
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

// plan_mu held: every plan forgotten, the file read again at the next GEMM
void plans_reset_locked()
{
    for (auto &kv : plans) plan_destroy(kv.second);
    plans.clear();
    pf.init = false;
    pf.path.clear();
    pf.saved.clear();
    pf.from_file = pf.timed = 0;
}

// Forgets every plan and the file's state: the next GEMM reads GC_GEMM_PLAN (or the path
// given below) and the file again, as a new process would (tests)
extern "C" void gc_cuda_gemm_plan_reset(void)
{
    std::lock_guard<std::mutex> lock(plan_mu);
    plans_reset_locked();
}

// The plan file to use from now on instead of GC_GEMM_PLAN ("" or NULL: none)
extern "C" void gc_cuda_gemm_plan_use(const char *path)
{
    std::lock_guard<std::mutex> lock(plan_mu);
    plans_reset_locked();
    pf.set = true;
    pf.given = path ? path : "";
}

// "<file>: n shapes from the file, m timed now" (or "" when none is used), for the bench
extern "C" const char *gc_cuda_gemm_plan_summary(char *buf, size_t n)
{
    std::lock_guard<std::mutex> lock(plan_mu);
    if (pf.path.empty()) snprintf(buf, n, "%s", "");
    else snprintf(buf, n, "%s: %d shapes from the file, %d timed now", pf.path.c_str(), pf.from_file, pf.timed);
    return buf;
}

extern "C" gc_status gc_cuda_scale_grads(const gc_tensor *G, const gc_tensor *gbs, const gc_tensor *w, const gc_tensor *b,
                                         const gc_tensor *s, gc_tensor *gw, bool acc_w, gc_tensor *gb, bool acc_b,
                                         gc_tensor *gs, bool acc_s)
{
    const gc_tensor *outs[3] = {gw, gb, gs};
    for (const gc_tensor *o : outs)
        if (o && o->dtype != GC_F32 && o->dtype != GC_BF16)
            return gc_error_set(GC_ERR_DTYPE, "linear layer-scale gradients on the GPU: %s gradient (f32/bf16 only)",
                                gc_dtype_name(o->dtype));
    const int64_t out = w->shape[0];
    if (out == 0) return GC_OK;
    ScaleGradArgs a = {G ? (const float *)gc_tensor_data(G) : nullptr, gbs ? (const float *)gc_tensor_data(gbs) : nullptr,
                       gw ? gc_tensor_data(gw) : nullptr, gb ? gc_tensor_data(gb) : nullptr, gs ? gc_tensor_data(gs) : nullptr,
                       gw && gw->dtype == GC_F32, gb && gb->dtype == GC_F32, gs && gs->dtype == GC_F32, acc_w, acc_b, acc_s,
                       w->shape[1]};
    return with_type(w->dtype, "linear layer-scale gradients", [&](auto tag) {
        typedef typename decltype(tag)::type T;
        gc_launch(scale_grads_kernel<T>, (unsigned)out, 256, 0, gc_cuda_stream(), a, (const T *)gc_tensor_data(w),
                  b ? (const T *)gc_tensor_data(b) : nullptr, (const T *)gc_tensor_data(s));
        GC_CUDA_LAUNCH_CHECK();
        return GC_OK;
    });
}
