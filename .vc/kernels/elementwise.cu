// Elementwise kernels: broadcast add/mul, the deterministic broadcast-gradient
// reduction, scale, exp and the activations. Values are f32 or bf16 (T), gradients f32
// or bf16 (G, f32 for leaves); all arithmetic is in f32.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

extern "C" {
#include "../runtime/gc_cuda.h"
#include "gc_ops.h"
}
#include "gc_act.cuh"
#include "gc_colsum.cuh"
#include "gc_cuda_util.cuh"

namespace {

using namespace gc_act_detail;

// Contiguous maps take kVec elements per thread (one 16-byte access of bf16, two of f32)
// when every pointer is 16-byte aligned: one vector per thread, grid-stride only past
// 2^24 blocks. Anything else takes the scalar kernels.
constexpr int kVec = 8;

bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

unsigned grid_vec(int64_t nv)
{
    int64_t blocks = (nv + kThreads - 1) / kThreads, cap = (int64_t)1 << 24;
    if (blocks > cap) blocks = cap;
    return (unsigned)(blocks > 0 ? blocks : 1);
}

// ------------------------------------------------------------------ broadcast geometry

// Row-major index space of `n` dims with two strided operands.
struct Geom2 {
    int n;
    int64_t shape[GC_MAX_DIMS];
    int64_t s0[GC_MAX_DIMS], s1[GC_MAX_DIMS];
};

// Drop size-1 dims and merge neighbours that both operands walk contiguously (as one
// dim): fewer dims, fewer divisions per element. The row-major order is unchanged.
void collapse2(Geom2 &g)
{
    int m = 0;
    for (int d = 0; d < g.n; d++) {
        if (g.shape[d] == 1) continue;
        if (m > 0 && g.s0[m - 1] == g.s0[d] * g.shape[d] && g.s1[m - 1] == g.s1[d] * g.shape[d]) {
            g.shape[m - 1] *= g.shape[d];
            g.s0[m - 1] = g.s0[d];
            g.s1[m - 1] = g.s1[d];
            continue;
        }
        g.shape[m] = g.shape[d];
        g.s0[m] = g.s0[d];
        g.s1[m] = g.s1[d];
        m++;
    }
    g.n = m; // 0: a single element
}

__device__ __forceinline__ void offsets2(const Geom2 &g, int64_t i, int64_t &o0, int64_t &o1)
{
    o0 = 0;
    o1 = 0;
    for (int d = g.n - 1; d >= 0; d--) {
        int64_t c = i % g.shape[d];
        i /= g.shape[d];
        o0 += c * g.s0[d];
        o1 += c * g.s1[d];
    }
}

// y[i] = a + alpha b  (MUL: a * b); y contiguous. CONTIG: both operands contiguous too.
template <typename T, bool MUL, bool CONTIG>
__global__ void binary_fwd_kernel(T *__restrict__ y, const T *__restrict__ a, const T *__restrict__ b, Geom2 g, int64_t n,
                                  float alpha)
{
    GC_PDL_WAIT();
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t oa = i, ob = i;
        if (!CONTIG) offsets2(g, i, oa, ob);
        float va = to_f(a[oa]), vb = to_f(b[ob]);
        y[i] = from_f<T>(MUL ? va * vb : va + alpha * vb);
    }
}

// The vector path: kVec elements per thread, 16-byte accesses. Each operand is contiguous
// (period p = n), one row of p elements repeated along the leading dims (a bias, a position
// embedding: element i reads x[i % p]), or one value per row of -p elements (p < 0: a
// per-row scale such as a layer scale folded into a weight, x[i / -p]). Needs y, a, b
// 16-byte aligned and each period n or a multiple of kVec (a vector never straddles a row);
// the n % kVec tail (both operands contiguous then) goes one element per thread.
template <typename T> __device__ __forceinline__ void load_operand(const T *__restrict__ x, int64_t i, int64_t p, int64_t n, float *f)
{
    if (p < 0) {
        const float v = to_f(x[i / -p]);
#pragma unroll
        for (int k = 0; k < kVec; k++) f[k] = v;
    } else {
        load_v<kVec>(x + (p == n ? i : i % p), f);
    }
}

template <typename T, bool MUL>
__global__ void binary_fwd_vec_kernel(T *__restrict__ y, const T *__restrict__ a, const T *__restrict__ b, int64_t nv,
                                      int64_t n, int64_t pa, int64_t pb, float alpha)
{
    GC_PDL_WAIT();
    const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (int64_t v = t; v < nv; v += (int64_t)gridDim.x * blockDim.x) {
        const int64_t i = v * kVec;
        float fa[kVec], fb[kVec];
        load_operand(a, i, pa, n, fa);
        load_operand(b, i, pb, n, fb);
#pragma unroll
        for (int k = 0; k < kVec; k++) fa[k] = MUL ? fa[k] * fb[k] : fa[k] + alpha * fb[k];
        store_v<kVec>(y + i, fa, false);
    }
    const int64_t i = nv * kVec + t; // pa, pb == n here: a period other than n is a multiple of kVec
    if (i < n) {
        float va = to_f(a[i]), vb = to_f(b[i]);
        y[i] = from_f<T>(MUL ? va * vb : va + alpha * vb);
    }
}

template <bool MUL>
gc_status binary_fwd(gc_tensor *y, const gc_tensor *a, const gc_tensor *b, int ndim, const int64_t *shape, const int64_t *sa,
                     const int64_t *sb, float alpha)
{
    Geom2 g;
    g.n = ndim;
    for (int d = 0; d < ndim; d++) {
        g.shape[d] = shape[d];
        g.s0[d] = sa[d];
        g.s1[d] = sb[d];
    }
    collapse2(g);
    const int64_t n = gc_tensor_numel(y);
    if (n == 0) return GC_OK;
    const bool contig = g.n == 0 ? false : (g.n == 1 && g.s0[0] == 1 && g.s1[0] == 1);
    // periods for the vector path (0: not of its form): contiguous, or [rows, P] with each
    // operand contiguous (strides P, 1: period n), one row of P broadcast over the rows
    // (0, 1: period P), or one value per row broadcast along it (1, 0: period -P)
    int64_t pa = 0, pb = 0;
    if (contig) pa = pb = n;
    else if (g.n == 1) { // one operand a single value (stride 0) broadcast over all n
        pa = g.s0[0] == 1 ? n : g.s0[0] == 0 ? -n : 0;
        pb = g.s1[0] == 1 ? n : g.s1[0] == 0 ? -n : 0;
        if (!pa || !pb) pa = pb = 0;
    } else if (g.n == 2) {
        auto period = [&](int64_t s0, int64_t s1) -> int64_t {
            if (s0 == g.shape[1] && s1 == 1) return n;
            if (s0 == 0 && s1 == 1) return g.shape[1];
            if (s0 == 1 && s1 == 0) return -g.shape[1];
            return 0;
        };
        pa = period(g.s0[0], g.s0[1]);
        pb = period(g.s1[0], g.s1[1]);
        if (!pa || !pb) pa = pb = 0;
    }
    return with_type(y->dtype, MUL ? "mul" : "add", [&](auto tag) {
        using T = typename decltype(tag)::type;
        auto *yp = (T *)gc_tensor_data(y);
        auto *ap = (const T *)gc_tensor_data(a);
        auto *bp = (const T *)gc_tensor_data(b);
        auto period_ok = [&](int64_t p) { return p == n || (p != 0 && p % kVec == 0); };
        if (pa && period_ok(pa) && period_ok(pb) && aligned16(yp) && aligned16(ap) && aligned16(bp)) {
            const int64_t nv = n / kVec;
            gc_launch(binary_fwd_vec_kernel<T, MUL>, grid_vec(nv), kThreads, 0, gc_cuda_stream(), yp, ap, bp, nv, n, pa,
                      pb, alpha);
        } else if (contig)
            gc_launch(binary_fwd_kernel<T, MUL, true>, grid_for(n), kThreads, 0, gc_cuda_stream(), yp, ap, bp, g, n,
                      alpha);
        else
            gc_launch(binary_fwd_kernel<T, MUL, false>, grid_for(n), kThreads, 0, gc_cuda_stream(), yp, ap, bp, g, n,
                      alpha);
        GC_CUDA_LAUNCH_CHECK();
        return GC_OK;
    });
}

// ------------------------------------------------------------------ broadcast gradient

// The gradient of one operand: g[t] (+)= scale * sum_r gy[o(t,r)] * other[o(t,r)].
// The output's dims split into kept ones (indexed by t, the position in the contiguous
// g) and summed ones (r). k_* / r_* are strides of gy and other along each.
struct GeomR {
    int nk, nr;
    int64_t ksh[GC_MAX_DIMS], k_gy[GC_MAX_DIMS], k_o[GC_MAX_DIMS];
    int64_t rsh[GC_MAX_DIMS], r_gy[GC_MAX_DIMS], r_o[GC_MAX_DIMS];
};

__device__ __forceinline__ void offsets_k(const GeomR &g, int64_t t, int64_t &oy, int64_t &oo)
{
    oy = 0;
    oo = 0;
    for (int d = g.nk - 1; d >= 0; d--) {
        int64_t c = t % g.ksh[d];
        t /= g.ksh[d];
        oy += c * g.k_gy[d];
        oo += c * g.k_o[d];
    }
}

__device__ __forceinline__ void offsets_r(const GeomR &g, int64_t r, int64_t &oy, int64_t &oo)
{
    oy = 0;
    oo = 0;
    for (int d = g.nr - 1; d >= 0; d--) {
        int64_t c = r % g.rsh[d];
        r /= g.rsh[d];
        oy += c * g.r_gy[d];
        oo += c * g.r_o[d];
    }
}

template <typename T, bool HAS_O>
__device__ __forceinline__ float term(const T *gy, const T *o, int64_t oy, int64_t oo)
{
    return HAS_O ? to_f(gy[oy]) * to_f(o[oo]) : to_f(gy[oy]);
}

template <typename G> __device__ __forceinline__ void store_grad(G *g, int64_t t, float v, bool acc)
{
    if (acc) v += to_f(g[t]);
    g[t] = from_f<G>(v);
}

// R == 1 (nothing summed): one thread per element.
template <typename T, typename G, bool HAS_O>
__global__ void bcast_grad_map_kernel(G *__restrict__ g, const T *__restrict__ gy, const T *__restrict__ o, GeomR geo,
                                      int64_t nt, float scale, bool acc)
{
    GC_PDL_WAIT();
    for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < nt; t += (int64_t)gridDim.x * blockDim.x) {
        int64_t oy, oo;
        offsets_k(geo, t, oy, oo);
        store_grad(g, t, scale * term<T, HAS_O>(gy, o, oy, oo), acc);
    }
}

// Few targets: block (256) per (t, chunk of r); fixed-shape tree reduction. part != NULL:
// write the unscaled chunk sum to part[chunk * nt + t] for a second pass.
template <typename T, typename G, bool HAS_O>
__global__ void bcast_grad_rows_kernel(G *__restrict__ g, float *__restrict__ part, const T *__restrict__ gy,
                                       const T *__restrict__ o, GeomR geo, int64_t nt, int64_t R, int64_t rpc, float scale,
                                       bool acc)
{
    GC_PDL_WAIT();
    __shared__ float red[kThreads];
    const int64_t t = blockIdx.x, chunk = blockIdx.y;
    int64_t ky, ko;
    offsets_k(geo, t, ky, ko);
    const int64_t r0 = chunk * rpc, r1 = r0 + rpc < R ? r0 + rpc : R;
    float s = 0.0f;
    for (int64_t r = r0 + threadIdx.x; r < r1; r += kThreads) {
        int64_t ry, ro;
        offsets_r(geo, r, ry, ro);
        s += term<T, HAS_O>(gy, o, ky + ry, ko + ro);
    }
    red[threadIdx.x] = s;
    __syncthreads();
    for (int w = kThreads / 2; w > 0; w >>= 1) {
        if ((int)threadIdx.x < w) red[threadIdx.x] += red[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        if (part) part[chunk * nt + t] = red[0];
        else store_grad(g, t, scale * red[0], acc);
    }
}

// Many targets: block (32, 8) = 32 consecutive t, 8 lanes over a chunk of r, lanes added
// in order (deterministic). part as above.
template <typename T, typename G, bool HAS_O>
__global__ void bcast_grad_cols_kernel(G *__restrict__ g, float *__restrict__ part, const T *__restrict__ gy,
                                       const T *__restrict__ o, GeomR geo, int64_t nt, int64_t R, int64_t rpc, float scale,
                                       bool acc)
{
    GC_PDL_WAIT();
    __shared__ float red[8][33];
    const int64_t t = (int64_t)blockIdx.x * 32 + threadIdx.x, chunk = blockIdx.y;
    const int64_t r0 = chunk * rpc, r1 = r0 + rpc < R ? r0 + rpc : R;
    float s = 0.0f;
    if (t < nt) {
        int64_t ky, ko;
        offsets_k(geo, t, ky, ko);
        for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) {
            int64_t ry, ro;
            offsets_r(geo, r, ry, ro);
            s += term<T, HAS_O>(gy, o, ky + ry, ko + ro);
        }
    }
    red[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && t < nt) {
        float v = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; i++) v += red[i][threadIdx.x];
        if (part) part[chunk * nt + t] = v;
        else store_grad(g, t, scale * v, acc);
    }
}

// Second pass: g[t] (+)= scale * sum over chunks of part[c * nt + t] in a fixed order
// (col_partials_sum). Block (32, 16), grid ceil(nt / 32): launch with finish_grad.
template <typename G>
__global__ void bcast_grad_finish_kernel(G *__restrict__ g, const float *__restrict__ part, int64_t nt, int64_t chunks,
                                         float scale, bool acc)
{
    GC_PDL_WAIT();
    const int64_t t = (int64_t)blockIdx.x * 32 + threadIdx.x;
    const float v = col_partials_sum(part, chunks, nt, t);
    if (threadIdx.y == 0 && t < nt) store_grad(g, t, scale * v, acc);
}

template <typename G> void finish_grad(G *g, const float *part, int64_t nt, int64_t chunks, float scale, bool acc)
{
    gc_launch(bcast_grad_finish_kernel<G>, (unsigned)((nt + 31) / 32), dim3(32, 16), 0, gc_cuda_stream(), g, part, nt,
              chunks, scale, acc);
}

// Append dim (size, stride gy, stride other) to a list, merging with the previous entry
// when both strides continue it.
void push_dim(int &n, int64_t *sh, int64_t *sy, int64_t *so, int64_t size, int64_t y, int64_t o)
{
    if (n > 0 && sy[n - 1] == y * size && so[n - 1] == o * size) {
        sh[n - 1] *= size;
        sy[n - 1] = y;
        so[n - 1] = o;
        return;
    }
    sh[n] = size;
    sy[n] = y;
    so[n] = o;
    n++;
}

template <typename T, typename G, bool HAS_O>
gc_status bcast_grad(gc_tensor *gt, const gc_tensor *gyt, const gc_tensor *ot, const GeomR &geo, int64_t nt, int64_t R,
                     float scale, bool acc)
{
    cudaStream_t st = gc_cuda_stream();
    G *g = (G *)gc_tensor_data(gt);
    const T *gy = (const T *)gc_tensor_data(gyt);
    const T *o = HAS_O ? (const T *)gc_tensor_data(ot) : nullptr;
    if (R == 1) {
        gc_launch(bcast_grad_map_kernel<T, G, HAS_O>, grid_for(nt), kThreads, 0, st, g, gy, o, geo, nt, scale, acc);
        GC_CUDA_LAUNCH_CHECK();
        return GC_OK;
    }
    // Chunking depends on the shape only, so the summation order is reproducible.
    const bool rows = nt < 32;
    int64_t rpc = rows ? (int64_t)kThreads * 16 : 256;
    const int64_t max_chunks = rows ? 1024 : 65535;
    if ((R + rpc - 1) / rpc > max_chunks) rpc = (R + max_chunks - 1) / max_chunks;
    const int64_t chunks = (R + rpc - 1) / rpc;
    gc_tensor *part = nullptr;
    if (chunks > 1) {
        int64_t n = chunks * nt;
        part = gc_tensor_new(GC_F32, gt->device, 1, &n);
        if (!part) return GC_PENDING();
    }
    float *pp = part ? (float *)gc_tensor_data(part) : nullptr;
    const int64_t col_blocks = (nt + 31) / 32;
    if (col_blocks > 0x7fffffffLL) {
        gc_tensor_release(part);
        return gc_error_set(GC_ERR_SHAPE, "broadcast gradient: %lld targets is too many", (long long)nt);
    }
    if (rows)
        gc_launch(bcast_grad_rows_kernel<T, G, HAS_O>, dim3((unsigned)nt, (unsigned)chunks), kThreads, 0, st, g, pp, gy,
                  o, geo, nt, R, rpc, scale, acc);
    else
        gc_launch(bcast_grad_cols_kernel<T, G, HAS_O>, dim3((unsigned)col_blocks, (unsigned)chunks), dim3(32, 8), 0, st,
                  g, pp, gy, o, geo, nt, R, rpc, scale, acc);
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess && part) {
        finish_grad<G>(g, pp, nt, chunks, scale, acc);
        e = cudaGetLastError();
    }
    gc_tensor_release(part); // stream order: the block is reused only by later work
    if (e != cudaSuccess)
        return gc_error_set(GC_ERR_CUDA, "broadcast gradient (%lld targets, %lld summed) launch failed: %s", (long long)nt,
                            (long long)R, cudaGetErrorString(e));
    return GC_OK;
}

// ------------------------------------------------------------------ add_scaled

// y = x + a * s over [R, D], s [D]. V = kVec: 16-byte accesses (D % kVec == 0, aligned).
template <typename T, int V>
__global__ void add_scaled_fwd_kernel(T *__restrict__ y, const T *__restrict__ x, const T *__restrict__ a,
                                      const T *__restrict__ s, int64_t nv, int64_t D)
{
    GC_PDL_WAIT();
    for (int64_t v = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; v < nv; v += (int64_t)gridDim.x * blockDim.x) {
        const int64_t i = v * V;
        float fx[V], fa[V], fs[V];
        load_v<V>(x + i, fx);
        load_v<V>(a + i, fa);
        load_v<V>(s + i % D, fs);
#pragma unroll
        for (int k = 0; k < V; k++) fx[k] += fa[k] * fs[k];
        store_v<V>(y + i, fx, false);
    }
}

// Backward over [R, D] in one read of gy and a: ga (+)= gy * s, and the column sums of
// gy * a per chunk of rows into part[chunk][D] (the layer scale's gradient, finished by
// bcast_grad_finish_kernel in chunk order: deterministic). Block (32, 8): 32 column
// groups of V, 8 lanes over the chunk's rows, lanes added in order.
template <typename T, typename G, int V>
__global__ void add_scaled_bwd_kernel(G *__restrict__ ga, bool acc, float *__restrict__ part, const T *__restrict__ gy,
                                      const T *__restrict__ a, const T *__restrict__ s, int64_t R, int64_t D, int64_t rpc)
{
    GC_PDL_WAIT();
    __shared__ float red[8][32 * V + 1];
    const int64_t c = ((int64_t)blockIdx.x * 32 + threadIdx.x) * V, chunk = blockIdx.y;
    const int64_t r0 = chunk * rpc, r1 = r0 + rpc < R ? r0 + rpc : R;
    float sum[V], fs[V];
#pragma unroll
    for (int k = 0; k < V; k++) sum[k] = 0.0f;
    if (c < D) {
        load_v<V>(s + c, fs);
        for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) {
            float g[V], fa[V];
            load_v<V>(gy + r * D + c, g);
            if (part) {
                load_v<V>(a + r * D + c, fa);
#pragma unroll
                for (int k = 0; k < V; k++) sum[k] += g[k] * fa[k];
            }
            if (ga) {
#pragma unroll
                for (int k = 0; k < V; k++) g[k] *= fs[k];
                store_v<V>(ga + r * D + c, g, acc);
            }
        }
    }
    if (!part) return;
#pragma unroll
    for (int k = 0; k < V; k++) red[threadIdx.y][threadIdx.x * V + k] = sum[k];
    __syncthreads();
    if (threadIdx.y == 0 && c < D) {
#pragma unroll
        for (int k = 0; k < V; k++) {
            float t = 0.0f;
#pragma unroll
            for (int l = 0; l < 8; l++) t += red[l][threadIdx.x * V + k];
            part[chunk * D + c + k] = t;
        }
    }
}

template <typename T> gc_status add_scaled_fwd(gc_tensor *y, const gc_tensor *x, const gc_tensor *a, const gc_tensor *s)
{
    const int64_t n = gc_tensor_numel(y), D = y->shape[y->ndim - 1];
    T *py = (T *)gc_tensor_data(y);
    const T *px = (const T *)gc_tensor_data(x), *pa = (const T *)gc_tensor_data(a), *ps = (const T *)gc_tensor_data(s);
    if (D % kVec == 0 && aligned16(py) && aligned16(px) && aligned16(pa) && aligned16(ps))
        gc_launch(add_scaled_fwd_kernel<T, kVec>, grid_vec(n / kVec), kThreads, 0, gc_cuda_stream(), py, px, pa, ps,
                  n / kVec, D);
    else
        gc_launch(add_scaled_fwd_kernel<T, 1>, grid_for(n), kThreads, 0, gc_cuda_stream(), py, px, pa, ps, n, D);
    GC_CUDA_LAUNCH_CHECK();
    return GC_OK;
}

template <typename T, typename G, int V>
gc_status add_scaled_bwd_launch(G *ga, bool acc, float *part, const T *gy, const T *a, const T *s, int64_t R, int64_t D,
                                int64_t rpc, int64_t chunks)
{
    const int64_t col_blocks = (D / V + 31) / 32;
    gc_launch(add_scaled_bwd_kernel<T, G, V>, dim3((unsigned)col_blocks, (unsigned)chunks), dim3(32, 8), 0,
              gc_cuda_stream(), ga, acc, part, gy, a, s, R, D, rpc);
    GC_CUDA_LAUNCH_CHECK();
    return GC_OK;
}

// ------------------------------------------------------------------ unary

enum UnaryOp { U_SCALE, U_EXP, U_ACT };

// y = f(x); ACT only for U_ACT
template <int OP, int ACT, bool FAST> __device__ __forceinline__ float unary_f(float v, float s)
{
    return OP == U_SCALE ? s * v : OP == U_EXP ? exp_f<FAST>(v) : act_f<ACT, FAST>(v);
}

// gy * f'(.): scale: s; exp: from the saved y; activation: from the saved x
template <int OP, int ACT, bool FAST> __device__ __forceinline__ float unary_df(float g, float saved, float s)
{
    return OP == U_SCALE ? s * g : OP == U_EXP ? g * saved : g * act_df<ACT, FAST>(saved);
}

// bf16 data takes the fast intrinsics (exp_f, sigmoid_f); f32 the exact ones
template <typename T> constexpr bool fast_math_for = std::is_same<T, __nv_bfloat16>::value;

// y = f(x), contiguous
template <typename T, int OP, int ACT>
__global__ void unary_fwd_kernel(T *__restrict__ y, const T *__restrict__ x, int64_t n, float s)
{
    GC_PDL_WAIT();
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = from_f<T>(unary_f<OP, ACT, fast_math_for<T>>(to_f(x[i]), s));
}

// The same, kVec elements per thread with 16-byte accesses (y, x 16-byte aligned); the
// n % kVec tail one element per thread.
template <typename T, int OP, int ACT>
__global__ void unary_fwd_vec_kernel(T *__restrict__ y, const T *__restrict__ x, int64_t nv, int64_t n, float s)
{
    GC_PDL_WAIT();
    const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (int64_t v = t; v < nv; v += (int64_t)gridDim.x * blockDim.x) {
        float f[kVec];
        load_v<kVec>(x + v * kVec, f);
#pragma unroll
        for (int k = 0; k < kVec; k++) f[k] = unary_f<OP, ACT, fast_math_for<T>>(f[k], s);
        store_v<kVec>(y + v * kVec, f, false);
    }
    const int64_t i = nv * kVec + t;
    if (i < n) y[i] = from_f<T>(unary_f<OP, ACT, fast_math_for<T>>(to_f(x[i]), s));
}

// gx (+)= gy * f'(.); saved is NULL for scale
template <typename T, typename G, int OP, int ACT>
__global__ void unary_bwd_kernel(G *__restrict__ gx, const T *__restrict__ gy, const T *__restrict__ saved, int64_t n, float s,
                                 bool acc)
{
    GC_PDL_WAIT();
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float v = unary_df<OP, ACT, fast_math_for<T>>(to_f(gy[i]), OP == U_SCALE ? 0.0f : to_f(saved[i]), s);
        if (acc) v += to_f(gx[i]);
        gx[i] = from_f<G>(v);
    }
}

// The same, kVec elements per thread (gx, gy, saved 16-byte aligned); the tail as above.
template <typename T, typename G, int OP, int ACT>
__global__ void unary_bwd_vec_kernel(G *__restrict__ gx, const T *__restrict__ gy, const T *__restrict__ saved, int64_t nv,
                                     int64_t n, float s, bool acc)
{
    GC_PDL_WAIT();
    const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (int64_t v = t; v < nv; v += (int64_t)gridDim.x * blockDim.x) {
        float g[kVec], x[kVec] = {};
        load_v<kVec>(gy + v * kVec, g);
        if constexpr (OP != U_SCALE) load_v<kVec>(saved + v * kVec, x);
#pragma unroll
        for (int k = 0; k < kVec; k++) g[k] = unary_df<OP, ACT, fast_math_for<T>>(g[k], x[k], s);
        store_v<kVec>(gx + v * kVec, g, acc);
    }
    const int64_t i = nv * kVec + t;
    if (i < n) {
        float v = unary_df<OP, ACT, fast_math_for<T>>(to_f(gy[i]), OP == U_SCALE ? 0.0f : to_f(saved[i]), s);
        if (acc) v += to_f(gx[i]);
        gx[i] = from_f<G>(v);
    }
}

// Calls f(std::integral_constant<int, ACT>{}) for the activation: one kernel per
// activation, no switch per element. Scale and exp have none.
template <int OP, typename F> gc_status with_act(int act, F &&f)
{
    using std::integral_constant;
    if constexpr (OP != U_ACT) {
        return f(integral_constant<int, GC_ACT_NONE>{});
    } else {
        switch (act) {
        case GC_ACT_GELU_ERF: return f(integral_constant<int, GC_ACT_GELU_ERF>{});
        case GC_ACT_GELU_TANH: return f(integral_constant<int, GC_ACT_GELU_TANH>{});
        case GC_ACT_QUICK_GELU: return f(integral_constant<int, GC_ACT_QUICK_GELU>{});
        case GC_ACT_SILU: return f(integral_constant<int, GC_ACT_SILU>{});
        default: return f(integral_constant<int, GC_ACT_NONE>{});
        }
    }
}

template <int OP> gc_status unary_fwd(gc_tensor *y, const gc_tensor *x, float s, int act, const char *what)
{
    const int64_t n = gc_tensor_numel(y);
    if (n == 0) return GC_OK;
    return with_type(y->dtype, what, [&](auto tag) {
        using T = typename decltype(tag)::type;
        return with_act<OP>(act, [&](auto ac) {
            constexpr int ACT = decltype(ac)::value;
            auto *yp = (T *)gc_tensor_data(y);
            auto *xp = (const T *)gc_tensor_data(x);
            if (aligned16(yp) && aligned16(xp)) {
                const int64_t nv = n / kVec;
                gc_launch(unary_fwd_vec_kernel<T, OP, ACT>, grid_vec(nv), kThreads, 0, gc_cuda_stream(), yp, xp, nv, n,
                          s);
            } else {
                gc_launch(unary_fwd_kernel<T, OP, ACT>, grid_for(n), kThreads, 0, gc_cuda_stream(), yp, xp, n, s);
            }
            GC_CUDA_LAUNCH_CHECK();
            return GC_OK;
        });
    });
}

template <int OP>
gc_status unary_bwd(gc_tensor *gx, const gc_tensor *gy, const gc_tensor *saved, float s, int act, bool acc, const char *what)
{
    const int64_t n = gc_tensor_numel(gy);
    if (n == 0) return GC_OK;
    return with_types(gy->dtype, gx->dtype, what, [&](auto tv, auto tg) {
        using T = typename decltype(tv)::type;
        using G = typename decltype(tg)::type;
        return with_act<OP>(act, [&](auto ac) {
            constexpr int ACT = decltype(ac)::value;
            auto *gxp = (G *)gc_tensor_data(gx);
            auto *gyp = (const T *)gc_tensor_data(gy);
            auto *sp = saved ? (const T *)gc_tensor_data(saved) : nullptr;
            if (aligned16(gxp) && aligned16(gyp) && (!sp || aligned16(sp))) {
                const int64_t nv = n / kVec;
                gc_launch(unary_bwd_vec_kernel<T, G, OP, ACT>, grid_vec(nv), kThreads, 0, gc_cuda_stream(), gxp, gyp,
                          sp, nv, n, s, acc);
            } else {
                gc_launch(unary_bwd_kernel<T, G, OP, ACT>, grid_for(n), kThreads, 0, gc_cuda_stream(), gxp, gyp, sp, n,
                          s, acc);
            }
            GC_CUDA_LAUNCH_CHECK();
            return GC_OK;
        });
    });
}

// ------------------------------------------------------------------ activation at x + b

// The MLP's activation taken at x + b, b [cols] the first linear's bias left out of its
// GEMM (gc_linear_and_act), so that the backward makes b's gradient as it makes x's: the
// column sums of the gradient it has just computed, instead of a pass that reads it again.
// Both kernels take gc_colsum.cuh's block, a thread's 8 columns (16 bytes of bf16) in a
// lane of rows, so a thread loads its bias once and the backward sums its columns as it
// goes. Rows of `cols` with cols % kColVec == 0, every pointer 16-byte aligned
// (act_bias_fits). In place (y, a may be x; gx may be gy): each element is read before
// it is written, by the same thread, so only the bias is __restrict__.

// y = act(x + b): one row a thread (the grid covers the rows, striding past 65535 blocks)
template <typename T, int ACT>
__global__ void act_bias_fwd_kernel(T *y, const T *x, const T *__restrict__ b, int64_t rows, int64_t cols)
{
    GC_PDL_WAIT();
    const int64_t c = ((int64_t)blockIdx.x * kColThreads + threadIdx.x) * kColVec;
    if (c >= cols) return;
    float bv[kColVec];
    load_v<kColVec>(b + c, bv);
    for (int64_t r = (int64_t)blockIdx.y * kRowLanes + threadIdx.y; r < rows; r += (int64_t)gridDim.y * kRowLanes) {
        float f[kColVec];
        load_v<kColVec>(x + r * cols + c, f);
#pragma unroll
        for (int k = 0; k < kColVec; k++) f[k] = act_f<ACT, fast_math_for<T>>(f[k] + bv[k]);
        store_v<kColVec>(y + r * cols + c, f, false);
    }
}

// g = gy act'(x + b): gx (+)= g, and with SUM gb (+)= its column sums (f32, part [chunks,
// cols] scratch); a = act(x + b) where a is not NULL. A block per (64 columns, chunk of
// rpc rows). (A thread's rows loaded 2 or 4 at a time before their stores measured slower
// on the H200: 12.7 against 10.7 ms over a B/16 512/256 step's 48 launches.)
template <typename T, int ACT, bool SUM>
__global__ void act_bias_bwd_kernel(T *gx, bool acc, const T *gy, const T *x, const T *__restrict__ b, T *a, int64_t rows,
                                    int64_t cols, int64_t rpc, float *part, float *gb, bool gb_acc)
{
    GC_PDL_WAIT();
    __shared__ ColRed red;
    const int64_t c = ((int64_t)blockIdx.x * kColThreads + threadIdx.x) * kColVec;
    const int64_t r0 = (int64_t)blockIdx.y * rpc, r1 = r0 + rpc < rows ? r0 + rpc : rows;
    float bv[kColVec] = {};
    if (c < cols) load_v<kColVec>(b + c, bv);
    float t[kColVec];
    block_colsum(r0, r1, c < cols, red, t, [&](int64_t r, float *g) {
        float xv[kColVec], av[kColVec];
        load_v<kColVec>(gy + r * cols + c, g);
        load_v<kColVec>(x + r * cols + c, xv);
#pragma unroll
        for (int k = 0; k < kColVec; k++) {
            const float u = xv[k] + bv[k];
            g[k] *= a ? act_f_df<ACT, fast_math_for<T>>(u, &av[k]) : act_df<ACT, fast_math_for<T>>(u);
        }
        store_v<kColVec>(gx + r * cols + c, g, acc);
        if (a) store_v<kColVec>(a + r * cols + c, av, false);
    });
    if constexpr (SUM) colsum_finish(part, cols, c, red, t, gb, gb_acc);
}

} // namespace

extern "C" gc_status gc_cuda_add_fwd(gc_tensor *y, const gc_tensor *a, const gc_tensor *b, int ndim, const int64_t *shape,
                                     const int64_t *sa, const int64_t *sb, float alpha)
{
    return binary_fwd<false>(y, a, b, ndim, shape, sa, sb, alpha);
}

extern "C" gc_status gc_cuda_mul_fwd(gc_tensor *y, const gc_tensor *a, const gc_tensor *b, int ndim, const int64_t *shape,
                                     const int64_t *sa, const int64_t *sb)
{
    return binary_fwd<true>(y, a, b, ndim, shape, sa, sb, 1.0f);
}

// g: the operand's contiguous gradient buffer; gy: contiguous over `shape`; other: the
// other operand (NULL for add/sub) with strides s_other over `shape`; s_g: g's strides
// over `shape`, 0 on the dims the operand was broadcast along.
extern "C" gc_status gc_cuda_binary_bwd(gc_tensor *g, const gc_tensor *gy, const gc_tensor *other, int ndim,
                                        const int64_t *shape, const int64_t *s_other, const int64_t *s_g, float scale, bool acc)
{
    if (other && other->dtype != gy->dtype)
        return gc_error_set(GC_ERR_DTYPE, "broadcast gradient: operand %s but gradient %s", gc_dtype_name(other->dtype),
                            gc_dtype_name(gy->dtype));
    GeomR geo;
    geo.nk = geo.nr = 0;
    int64_t s_gy[GC_MAX_DIMS], acc_st = 1, nt = 1, R = 1;
    for (int d = ndim - 1; d >= 0; d--) {
        s_gy[d] = acc_st;
        acc_st *= shape[d];
    }
    for (int d = 0; d < ndim; d++) {
        if (shape[d] == 1) continue;
        int64_t so = other ? s_other[d] : 0;
        if (s_g[d] == 0) {
            push_dim(geo.nr, geo.rsh, geo.r_gy, geo.r_o, shape[d], s_gy[d], so);
            R *= shape[d];
        } else {
            push_dim(geo.nk, geo.ksh, geo.k_gy, geo.k_o, shape[d], s_gy[d], so);
            nt *= shape[d];
        }
    }
    if (nt != gc_tensor_numel(g))
        return gc_error_set(GC_ERR_SHAPE, "broadcast gradient: %lld targets for a gradient of %lld elements", (long long)nt,
                            (long long)gc_tensor_numel(g));
    if (nt == 0) return GC_OK;
    if (R == 0) { // an empty sum
        if (acc) return GC_OK;
        return gc_cuda_memzero(gc_tensor_data(g), gc_tensor_nbytes(g));
    }
    return with_types(gy->dtype, g->dtype, "broadcast gradient", [&](auto tv, auto tg) {
        using T = typename decltype(tv)::type;
        using G = typename decltype(tg)::type;
        return other ? bcast_grad<T, G, true>(g, gy, other, geo, nt, R, scale, acc)
                     : bcast_grad<T, G, false>(g, gy, other, geo, nt, R, scale, acc);
    });
}

extern "C" gc_status gc_cuda_add_scaled_fwd(gc_tensor *y, const gc_tensor *x, const gc_tensor *a, const gc_tensor *s)
{
    return with_type(y->dtype, "add_scaled", [&](auto tv) { return add_scaled_fwd<typename decltype(tv)::type>(y, x, a, s); });
}

// ga, gs may be NULL (no gradient wanted); a, s are then NULL too where not needed.
extern "C" gc_status gc_cuda_add_scaled_bwd(gc_tensor *ga, bool acc_a, gc_tensor *gs, bool acc_s, const gc_tensor *gy,
                                            const gc_tensor *a, const gc_tensor *s)
{
    const int64_t D = gy->shape[gy->ndim - 1], R = D ? gc_tensor_numel(gy) / D : 0;
    if (R == 0) return gs && !acc_s ? gc_cuda_memzero(gc_tensor_data(gs), gc_tensor_nbytes(gs)) : GC_OK;
    if (ga && ga->dtype != gy->dtype && ga->dtype != GC_F32)
        return gc_error_set(GC_ERR_DTYPE, "add_scaled backward: gradient %s of %s values", gc_dtype_name(ga->dtype),
                            gc_dtype_name(gy->dtype));
    // rows per chunk: a shape-only choice, so the column sums' order is reproducible
    const int64_t rpc = 64, chunks = (R + rpc - 1) / rpc;
    if (chunks > 65535) return gc_error_set(GC_ERR_SHAPE, "add_scaled backward: %lld rows is too many", (long long)R);
    gc_tensor *part = nullptr;
    if (gs) {
        int64_t n = chunks * D;
        if (!(part = gc_tensor_new(GC_F32, gy->device, 1, &n))) return GC_PENDING();
    }
    float *pp = part ? (float *)gc_tensor_data(part) : nullptr;
    const void *pa = a ? gc_tensor_data(a) : nullptr, *ps = gc_tensor_data(s ? s : gy); // s unread when !ga
    void *pga = ga ? gc_tensor_data(ga) : nullptr;
    const bool vec = D % kVec == 0 && aligned16(gc_tensor_data(gy)) && (!pa || aligned16(pa)) && aligned16(ps) &&
                     (!pga || aligned16(pga));
    gc_status st = with_types(gy->dtype, ga ? ga->dtype : gy->dtype, "add_scaled backward", [&](auto tv, auto tg) {
        using T = typename decltype(tv)::type;
        using G = typename decltype(tg)::type;
        const T *gyp = (const T *)gc_tensor_data(gy), *ap = (const T *)pa, *sp = (const T *)ps;
        return vec ? add_scaled_bwd_launch<T, G, kVec>((G *)pga, acc_a, pp, gyp, ap, sp, R, D, rpc, chunks)
                   : add_scaled_bwd_launch<T, G, 1>((G *)pga, acc_a, pp, gyp, ap, sp, R, D, rpc, chunks);
    });
    if (st == GC_OK && gs) {
        st = with_type(gs->dtype, "add_scaled backward", [&](auto tg) {
            using G = typename decltype(tg)::type;
            finish_grad<G>((G *)gc_tensor_data(gs), pp, D, chunks, 1.0f, acc_s);
            GC_CUDA_LAUNCH_CHECK();
            return GC_OK;
        });
    }
    gc_tensor_release(part); // stream order: the block is reused only by later work
    return st;
}

extern "C" gc_status gc_cuda_scale_fwd(gc_tensor *y, const gc_tensor *x, float s)
{
    return unary_fwd<U_SCALE>(y, x, s, 0, "scale");
}

extern "C" gc_status gc_cuda_scale_bwd(gc_tensor *gx, const gc_tensor *gy, float s, bool acc)
{
    return unary_bwd<U_SCALE>(gx, gy, nullptr, s, 0, acc, "scale backward");
}

extern "C" gc_status gc_cuda_exp_fwd(gc_tensor *y, const gc_tensor *x) { return unary_fwd<U_EXP>(y, x, 0.0f, 0, "exp"); }

extern "C" gc_status gc_cuda_exp_bwd(gc_tensor *gx, const gc_tensor *gy, const gc_tensor *y, bool acc)
{
    return unary_bwd<U_EXP>(gx, gy, y, 0.0f, 0, acc, "exp backward");
}

extern "C" gc_status gc_cuda_act_fwd(gc_tensor *y, const gc_tensor *x, gc_act act)
{
    return unary_fwd<U_ACT>(y, x, 0.0f, (int)act, "activation");
}

extern "C" gc_status gc_cuda_act_bwd(gc_tensor *gx, const gc_tensor *gy, const gc_tensor *x, gc_act act, bool acc)
{
    return unary_bwd<U_ACT>(gx, gy, x, 0.0f, (int)act, acc, "activation backward");
}

// Can the act_bias kernels take these (contiguous [rows, cols], b [cols]; any may be NULL)?
// Otherwise elementwise.c composes the same from the other ops.
extern "C" bool gc_cuda_act_bias_fits(int64_t cols, gc_dtype dt, const void *p0, const void *p1, const void *p2,
                                      const void *p3, const void *p4)
{
    return (dt == GC_F32 || dt == GC_BF16) && cols > 0 && cols % kColVec == 0 &&
           (cols + kColsPerBlock - 1) / kColsPerBlock <= kMaxTickets && (!p0 || aligned16(p0)) &&
           (!p1 || aligned16(p1)) && (!p2 || aligned16(p2)) && (!p3 || aligned16(p3)) && (!p4 || aligned16(p4));
}

// y = act(x + b), [rows, cols] of dt (y may be x)
extern "C" gc_status gc_cuda_act_bias_fwd(void *y, const void *x, const void *b, gc_dtype dt, int64_t rows, int64_t cols,
                                          gc_act act)
{
    if (rows == 0) return GC_OK;
    return with_type(dt, "activation", [&](auto tag) {
        using T = typename decltype(tag)::type;
        return with_act<U_ACT>((int)act, [&](auto ac) {
            const int64_t row_blocks = (rows + kRowLanes - 1) / kRowLanes;
            const dim3 grid((unsigned)((cols + kColsPerBlock - 1) / kColsPerBlock), (unsigned)(row_blocks < 65535 ? row_blocks : 65535));
            gc_launch(act_bias_fwd_kernel<T, decltype(ac)::value>, grid, dim3(kColThreads, kRowLanes), 0, gc_cuda_stream(),
                      (T *)y, (const T *)x, (const T *)b, rows, cols);
            GC_CUDA_LAUNCH_CHECK();
            return GC_OK;
        });
    });
}

// gx (+)= gy act'(x + b), gb (+)= its column sums (f32; NULL: not wanted), a = act(x + b)
// (NULL: not wanted); gx may be gy and a may be x
extern "C" gc_status gc_cuda_act_bias_bwd(void *gx, bool acc, const void *gy, const void *x, const void *b, void *a,
                                          gc_dtype dt, int64_t rows, int64_t cols, gc_act act, float *gb, bool gb_acc)
{
    if (rows == 0) {
        if (gb && !gb_acc) GC_CUDA_CHECK(cudaMemsetAsync(gb, 0, sizeof(float) * (size_t)cols, gc_cuda_stream()));
        return GC_OK;
    }
    int64_t rpc;
    const dim3 grid = colsum_grid(rows, cols, &rpc);
    float *part = gb ? (float *)gc_cuda_alloc(sizeof(float) * (size_t)(grid.y * cols)) : nullptr;
    if (gb && !part) return GC_PENDING();
    gc_status st = with_type(dt, "activation backward", [&](auto tag) {
        using T = typename decltype(tag)::type;
        return with_act<U_ACT>((int)act, [&](auto ac) {
            constexpr int ACT = decltype(ac)::value;
            auto k = gb ? act_bias_bwd_kernel<T, ACT, true> : act_bias_bwd_kernel<T, ACT, false>;
            gc_launch(k, grid, dim3(kColThreads, kRowLanes), 0, gc_cuda_stream(), (T *)gx, acc, (const T *)gy,
                      (const T *)x, (const T *)b, (T *)a, rows, cols, rpc, part, gb, gb_acc);
            GC_CUDA_LAUNCH_CHECK();
            return GC_OK;
        });
    });
    if (part) gc_cuda_free(part); // stream order: reused only by later work on the stream
    return st;
}
