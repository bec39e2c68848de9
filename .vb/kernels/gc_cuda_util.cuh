// Device helpers shared by the CUDA kernel files: conversions, dtype dispatch, launch
// sizes, vector loads/stores and warp reductions. Included by .cu files only, after
// runtime/gc_cuda.h; everything sits in an anonymous namespace, private to each file.
#ifndef GC_CUDA_UTIL_CUH
#define GC_CUDA_UTIL_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "../runtime/gc_launch.cuh" // gc_launch, GC_PDL_WAIT

namespace {

// f32 math on f32, bf16 (or f16: the GEMM's column sums) storage
template <typename T> __device__ __forceinline__ float to_f(T v) { return (float)v; }
template <> __device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v) { return (T)v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half from_f(float v) { return __float2half_rn(v); }

template <typename T> struct Tag { using type = T; };

// 2^x on the special-function unit (ex2.approx.ftz: relative error ~2^-22, results below
// 2^-126 flushed to 0; exp2f adds a denormal-range fix-up per call). 2^-inf = 0.
__device__ __forceinline__ float fast_exp2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// 1/x on the special-function unit (rcp.approx.ftz: about 1 ulp)
__device__ __forceinline__ float fast_rcp(float x)
{
    float y;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// Calls f(Tag<T>{}) for the storage type of dt (f32 or bf16).
template <typename F> gc_status with_type(gc_dtype dt, const char *what, F &&f)
{
    switch (dt) {
    case GC_F32: return f(Tag<float>{});
    case GC_BF16: return f(Tag<__nv_bfloat16>{});
    default: return gc_error_set(GC_ERR_DTYPE, "%s on the GPU: dtype %s (f32/bf16 only)", what, gc_dtype_name(dt));
    }
}

// Calls f(Tag<T>{}, Tag<G>{}) for a value dtype and a gradient dtype.
template <typename F> gc_status with_types(gc_dtype vt, gc_dtype gt, const char *what, F &&f)
{
    return with_type(vt, what, [&](auto tv) {
        return with_type(gt, what, [&](auto tg) { return f(tv, tg); });
    });
}

// Grid-stride launches: 256 threads a block, at most 32 blocks per SM.
constexpr int kThreads = 256;

inline unsigned grid_for(int64_t n)
{
    int64_t blocks = (n + kThreads - 1) / kThreads, cap = (int64_t)gc_cuda_sm_count() * 32;
    if (blocks > cap) blocks = cap;
    return (unsigned)(blocks > 0 ? blocks : 1);
}

// Bytes moved per memory instruction for V elements of T: 16 or 8 when the span allows.
template <typename T, int V> struct vec_io {
    static constexpr int bytes = (V * sizeof(T)) % 16 == 0 ? 16 : (V * sizeof(T)) % 8 == 0 ? 8 : (int)sizeof(T);
    static constexpr int per = bytes / (int)sizeof(T);
};

// V consecutive elements at p as floats; p is aligned to the access width (see vec_io).
template <int V, typename T> __device__ __forceinline__ void load_v(const T *__restrict__ p, float *f)
{
    constexpr int per = vec_io<T, V>::per;
#pragma unroll
    for (int c = 0; c < V; c += per) {
        if constexpr (vec_io<T, V>::bytes == 16) {
            uint4 u = *reinterpret_cast<const uint4 *>(p + c);
            const T *e = reinterpret_cast<const T *>(&u);
#pragma unroll
            for (int k = 0; k < per; k++) f[c + k] = to_f(e[k]);
        } else if constexpr (vec_io<T, V>::bytes == 8) {
            uint2 u = *reinterpret_cast<const uint2 *>(p + c);
            const T *e = reinterpret_cast<const T *>(&u);
#pragma unroll
            for (int k = 0; k < per; k++) f[c + k] = to_f(e[k]);
        } else {
            f[c] = to_f(p[c]);
        }
    }
}

// p[0..V) = f (or += f when acc)
template <int V, typename T> __device__ __forceinline__ void store_v(T *__restrict__ p, const float *f, bool acc)
{
    float v[V];
    if (acc) {
        load_v<V>(p, v);
#pragma unroll
        for (int k = 0; k < V; k++) v[k] += f[k];
    } else {
#pragma unroll
        for (int k = 0; k < V; k++) v[k] = f[k];
    }
    constexpr int per = vec_io<T, V>::per;
#pragma unroll
    for (int c = 0; c < V; c += per) {
        if constexpr (vec_io<T, V>::bytes == 16) {
            uint4 u;
            T *e = reinterpret_cast<T *>(&u);
#pragma unroll
            for (int k = 0; k < per; k++) e[k] = from_f<T>(v[c + k]);
            *reinterpret_cast<uint4 *>(p + c) = u;
        } else if constexpr (vec_io<T, V>::bytes == 8) {
            uint2 u;
            T *e = reinterpret_cast<T *>(&u);
#pragma unroll
            for (int k = 0; k < per; k++) e[k] = from_f<T>(v[c + k]);
            *reinterpret_cast<uint2 *>(p + c) = u;
        } else {
            p[c] = from_f<T>(v[c]);
        }
    }
}

// Butterfly reductions: every lane gets the result.
__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// The second pass of the deterministic column reductions (the layernorm weight and bias
// gradients, the layer-scale and broadcast gradients; the linear bias gradient has its
// own in matmul.cu): sum over p < chunks of part[p * D + c] for the 32 columns
// c = blockIdx.x * 32 + threadIdx.x of a (32, 16) block, 16 lanes over p, the lanes then
// added in order. Thread (x, 0) gets the sum of its column, the others 0. Every thread
// of the block must call it (it synchronises).
__device__ __forceinline__ float col_partials_sum(const float *__restrict__ part, int64_t chunks, int64_t D, int64_t c)
{
    __shared__ float s[16][33];
    const int tx = threadIdx.x, ty = threadIdx.y;
    float a = 0.0f;
    if (c < D)
        for (int64_t p = ty; p < chunks; p += 16) a += part[p * D + c];
    s[ty][tx] = a;
    __syncthreads();
    float t = 0.0f;
    if (ty == 0)
        for (int k = 0; k < 16; k++) t += s[k][tx];
    return t;
}

} // namespace

#endif
