// The CUDA runtime: device/stream/cuBLASLt setup, the caching allocator, copies, fills.
//
// Stream ordering. All work (kernels, cuBLASLt GEMMs, memcpy/memset) is queued on ONE
// non-blocking stream, gc_cuda_stream(). Work on one stream runs in queue order, so when
// the host frees a block (its tensor's refcount reached zero) while kernels that use it
// are still queued, any later user of the same block is queued AFTER them and cannot
// start before they finish: the block can be handed out again at once, without an event
// or a synchronisation. This holds as long as nobody touches device memory outside the
// stream: (1) no other stream, including the legacy default stream (plain cudaMemcpy /
// kernel<<<g, b>>> without a stream), (2) no host access to device memory without a
// stream sync first (gc_cuda_memcpy to the host synchronises before returning).
// Our kernels launch through gc_launch (runtime/gc_launch.cuh) as programmatic dependents:
// a grid may be dispatched while the kernel before it finishes, but its first statement
// waits for that kernel to complete, so no memory is touched out of stream order.
// Page-locked host memory (gc_tensor_pin) adds one rule the other way: an upload from
// it returns before it has read the memory, so the host writes into (or frees) such a
// buffer only after a stream sync that follows the upload (gc_cuda_host_unregister syncs
// before the memory is freed; tools/loader.c syncs before a batch buffer is refilled).
// The one exception to (1): uploads on the copy stream (gc_cuda_copy_async, for
// gc_upload_begin). Each waits for the compute stream's work queued before it (the
// previous users of its block), and the compute stream waits for it (gc_cuda_copy_wait)
// before anything queued later can use the block, so its block too is handed out again in
// the compute stream's order. The syncs above take both streams.
//
// The caching allocator. Sizes are rounded up to a size class: multiples of 512 B below
// 1 MiB, above that 8 classes per power of two (1/8 steps: at most 12.5% waste). A
// freed block goes onto its class's free list and is handed out only for a request of
// the same class (no splitting, no best-fit across classes), so a repeated sequence of
// requests (the next training step) is served entirely from the cache: after step 1,
// each class holds as many blocks as step 1 ever had live at once. cudaMalloc returns
// 256-byte aligned blocks and blocks are never split, so every pointer handed out is
// 256-byte aligned. When cudaMalloc fails, the cache is released (stream sync, cudaFree
// of every cached block) and the cudaMalloc retried once before reporting GC_ERR_OOM.
//
// Statistics count whole blocks (class sizes): `current` is what tensors hold now,
// `reserved` what was obtained from cudaMalloc and not returned (held + cached). The
// 32 MiB cuBLASLt workspace made at init is fixed overhead, outside these counts.
// A zero-byte request gets a unique 512-byte block (never NULL), so gc_cuda_free needs
// no special case; gc_cuda_free(NULL) does nothing.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cublasLt.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

// The runtime headers have no extern "C" guards of their own: cuda_runtime.h is already
// included above, so its re-inclusion inside gc_cuda.h is a no-op and only our C
// declarations get C linkage.
extern "C" {
#include "gc_cuda.h"
}
#include "gc_launch.cuh"

#define GC_CUBLASLT_WORKSPACE ((size_t)32 << 20)

namespace {

struct Runtime {
    std::once_flag once;
    std::atomic<bool> ready{false};
    gc_status init_status = GC_OK;
    char init_msg[512] = "";
    cudaStream_t stream = nullptr;
    cudaStream_t copy = nullptr; // uploads beside the compute (gc_cuda_copy_async)
    int sm_count = 1;
    cublasLtHandle_t lt = nullptr;
    void *workspace = nullptr;
};

struct Allocator {
    std::mutex mu;
    std::unordered_map<size_t, std::vector<void *>> free_lists; // class size -> cached blocks
    std::unordered_map<void *, size_t> live;                    // block -> class size
    size_t cached = 0;
    gc_memory_stats stats{};
};

// Never destroyed: tensors released from other static destructors / atexit handlers
// must still find the allocator.
Runtime &rt = *new Runtime;
Allocator &al = *new Allocator;

void init_once()
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n < 1) {
        (void)cudaGetLastError();
        snprintf(rt.init_msg, sizeof rt.init_msg, "no usable CUDA device (%s)",
                 e != cudaSuccess ? cudaGetErrorString(e) : "cudaGetDeviceCount found none");
        rt.init_status = GC_ERR_DEVICE;
        return;
    }
    const char *step = "cudaSetDevice(0)";
    e = cudaSetDevice(0);
    if (e == cudaSuccess) { step = "cudaStreamCreateWithFlags"; e = cudaStreamCreateWithFlags(&rt.stream, cudaStreamNonBlocking); }
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&rt.copy, cudaStreamNonBlocking);
    if (e == cudaSuccess) { step = "cudaDeviceGetAttribute(SM count)"; e = cudaDeviceGetAttribute(&rt.sm_count, cudaDevAttrMultiProcessorCount, 0); }
    if (e == cudaSuccess) { step = "cudaMalloc(cuBLASLt workspace)"; e = cudaMalloc(&rt.workspace, GC_CUBLASLT_WORKSPACE); }
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        snprintf(rt.init_msg, sizeof rt.init_msg, "CUDA device 0 is unusable: %s failed: %s", step, cudaGetErrorString(e));
        rt.init_status = GC_ERR_DEVICE;
        return;
    }
    cublasStatus_t bs = cublasLtCreate(&rt.lt);
    if (bs != CUBLAS_STATUS_SUCCESS) {
        snprintf(rt.init_msg, sizeof rt.init_msg, "cublasLtCreate failed: %s", cublasLtGetStatusName(bs));
        rt.init_status = GC_ERR_CUDA;
        return;
    }
    if (rt.sm_count < 1) rt.sm_count = 1;
    rt.ready.store(true, std::memory_order_release);
}

inline bool ready() { return rt.ready.load(std::memory_order_acquire); }

// size classes: see the comment at the top
const size_t MAX_ALLOC = (size_t)1 << 56;

size_t size_class(size_t n)
{
    if (n == 0) n = 1;
    if (n < ((size_t)1 << 20)) return (n + 511) & ~(size_t)511;
    int lg = 63 - __builtin_clzll((unsigned long long)n);
    size_t step = ((size_t)1 << lg) >> 3;
    return (n + step - 1) / step * step;
}

double mib(size_t n) { return (double)n / (1024.0 * 1024.0); }

// Both streams: the compute stream, and uploads beside it (gc_cuda_copy_async)
cudaError_t sync_streams()
{
    cudaError_t e = cudaStreamSynchronize(rt.stream);
    cudaError_t c = rt.copy ? cudaStreamSynchronize(rt.copy) : cudaSuccess;
    return e != cudaSuccess ? e : c;
}

// al.mu held. Frees every cached block; returns the first error (kept going regardless).
cudaError_t release_cached_locked()
{
    cudaError_t first = sync_streams();
    for (auto &kv : al.free_lists) {
        for (void *p : kv.second) {
            cudaError_t e = cudaFree(p);
            if (first == cudaSuccess) first = e;
            al.stats.reserved -= kv.first;
        }
        al.cached -= kv.first * kv.second.size();
        kv.second.clear();
    }
    al.free_lists.clear();
    return first;
}

} // namespace

// ------------------------------------------------------------------ setup

extern "C" gc_status gc_cuda_init(void)
{
    if (ready()) return GC_OK;
    std::call_once(rt.once, init_once);
    if (rt.init_status != GC_OK) return gc_error_set(rt.init_status, "%s", rt.init_msg);
    return GC_OK;
}

extern "C" cudaStream_t gc_cuda_stream(void)
{
    if (!ready()) gc_cuda_init();
    return rt.stream;
}

extern "C" int gc_cuda_sm_count(void)
{
    if (!ready()) gc_cuda_init();
    return rt.sm_count;
}

// For kernels/matmul.cu: the cuBLASLt handle and its workspace (all GEMMs run on the one
// stream, so one workspace serves them all).
extern "C" gc_status gc_cuda_blaslt(cublasLtHandle_t *handle, void **workspace, size_t *workspace_size)
{
    GC_TRY(gc_cuda_init());
    *handle = rt.lt;
    *workspace = rt.workspace;
    *workspace_size = GC_CUBLASLT_WORKSPACE;
    return GC_OK;
}

// ------------------------------------------------------------------ allocator

extern "C" void *gc_cuda_alloc(size_t nbytes)
{
    if (gc_cuda_init() != GC_OK) return nullptr;
    if (nbytes > MAX_ALLOC) {
        gc_error_set(GC_ERR_OOM, "out of GPU memory: a request for %zu bytes is beyond any GPU", nbytes);
        return nullptr;
    }
    size_t cls = size_class(nbytes);
    std::lock_guard<std::mutex> lock(al.mu);
    void *p = nullptr;
    auto it = al.free_lists.find(cls);
    if (it != al.free_lists.end() && !it->second.empty()) {
        p = it->second.back();
        it->second.pop_back();
        al.cached -= cls;
    } else {
        cudaError_t e = cudaMalloc(&p, cls);
        if (e == cudaErrorMemoryAllocation) {
            (void)cudaGetLastError(); // not sticky: clear it so later launch checks do not see it
            release_cached_locked();
            (void)cudaGetLastError();
            e = cudaMalloc(&p, cls);
        }
        if (e != cudaSuccess) {
            (void)cudaGetLastError();
            if (e == cudaErrorMemoryAllocation)
                gc_error_set(GC_ERR_OOM,
                             "out of GPU memory allocating %.2f MiB (%zu bytes): %.2f MiB held by tensors, %.2f MiB "
                             "reserved (cache already released)",
                             mib(cls), nbytes, mib(al.stats.current), mib(al.stats.reserved));
            else
                gc_error_set(GC_ERR_CUDA, "cudaMalloc(%zu) failed: %s", cls, cudaGetErrorString(e));
            return nullptr;
        }
        al.stats.system_allocs++;
        al.stats.reserved += cls;
    }
    al.live[p] = cls;
    al.stats.current += cls;
    if (al.stats.current > al.stats.peak) al.stats.peak = al.stats.current;
    return p;
}

extern "C" void gc_cuda_free(void *p)
{
    if (!p) return;
    std::lock_guard<std::mutex> lock(al.mu);
    auto it = al.live.find(p);
    if (it == al.live.end()) {
        gc_error_set(GC_ERR_INVALID, "gc_cuda_free(%p): not a live block of the CUDA allocator (double free?)", p);
        return;
    }
    size_t cls = it->second;
    al.live.erase(it);
    al.stats.current -= cls;
    // Reusable at once: see "Stream ordering" at the top.
    al.free_lists[cls].push_back(p);
    al.cached += cls;
}

extern "C" gc_memory_stats gc_cuda_memory_stats(void)
{
    std::lock_guard<std::mutex> lock(al.mu);
    return al.stats;
}

extern "C" void gc_cuda_memory_reset_peak(void)
{
    std::lock_guard<std::mutex> lock(al.mu);
    al.stats.peak = al.stats.current;
}

extern "C" void gc_cuda_release_cached(void)
{
    if (!ready()) return;
    std::lock_guard<std::mutex> lock(al.mu);
    cudaError_t e = release_cached_locked();
    if (e != cudaSuccess) gc_error_set(GC_ERR_CUDA, "releasing cached GPU memory: %s", cudaGetErrorString(e));
}

// ------------------------------------------------------------------ memcpy / memset / sync

extern "C" gc_status gc_cuda_memcpy(void *dst, const void *src, size_t n, int kind)
{
    if (!n) return GC_OK;
    GC_TRY(gc_cuda_init());
    // Host -> device from pageable memory returns once the driver has staged the data (the
    // host waits for it), so the host buffer may be reused at once. From page-locked memory
    // (gc_tensor_pin) it returns at once and the copy reads the buffer later, in stream
    // order: the host must not write into it until a stream sync after this copy (the rule
    // at gc_tensor_pin; gc_cuda_host_unregister syncs before the memory can be freed).
    GC_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, (cudaMemcpyKind)kind, rt.stream));
    // The host reads what it asked for: wait until it has arrived.
    if (kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDefault || kind == cudaMemcpyHostToHost)
        GC_CUDA_CHECK(cudaStreamSynchronize(rt.stream));
    return GC_OK;
}

// The block dst may be one the compute stream's queued work still reads or writes (the
// allocator reuses a block at once, in that stream's order): the copy stream waits for
// that work first. The compute stream waits for the copy in gc_cuda_copy_wait.
extern "C" gc_status gc_cuda_copy_async(void *dst, const void *src, size_t n, void **done)
{
    *done = nullptr;
    GC_TRY(gc_cuda_init());
    cudaEvent_t freed = nullptr, copied = nullptr;
    cudaError_t e = cudaEventCreateWithFlags(&freed, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&copied, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaEventRecord(freed, rt.stream);
    if (e == cudaSuccess) e = cudaStreamWaitEvent(rt.copy, freed, 0);
    if (e == cudaSuccess && n) e = cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, rt.copy);
    if (e == cudaSuccess) e = cudaEventRecord(copied, rt.copy);
    if (freed) (void)cudaEventDestroy(freed); // released once it has completed
    if (e != cudaSuccess) {
        if (copied) (void)cudaEventDestroy(copied);
        (void)cudaGetLastError();
        return gc_error_set(GC_ERR_CUDA, "an upload of %zu bytes on the copy stream: %s", n, cudaGetErrorString(e));
    }
    *done = copied;
    return GC_OK;
}

extern "C" gc_status gc_cuda_copy_wait(void *done)
{
    if (!done) return GC_OK;
    cudaError_t e = cudaStreamWaitEvent(rt.stream, (cudaEvent_t)done, 0);
    (void)cudaEventDestroy((cudaEvent_t)done);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return gc_error_set(GC_ERR_CUDA, "waiting for an upload: %s", cudaGetErrorString(e));
    }
    return GC_OK;
}

extern "C" gc_status gc_cuda_memzero(void *p, size_t n)
{
    if (!n) return GC_OK;
    GC_TRY(gc_cuda_init());
    GC_CUDA_CHECK(cudaMemsetAsync(p, 0, n, rt.stream));
    return GC_OK;
}

extern "C" gc_status gc_cuda_sync(void)
{
    GC_TRY(gc_cuda_init());
    GC_CUDA_CHECK(sync_streams()); // reports faults of queued kernels; uploads not yet ended too
    GC_CUDA_CHECK(cudaGetLastError());
    return GC_OK;
}

// ------------------------------------------------------------------ page-locked host memory

extern "C" gc_status gc_cuda_host_register(void *p, size_t n, const char *what, bool *registered)
{
    *registered = false;
    if (!p || !n) return GC_OK;
    GC_TRY(gc_cuda_init());
    cudaError_t e = cudaHostRegister(p, n, cudaHostRegisterDefault);
    if (e == cudaErrorHostMemoryAlreadyRegistered) {
        // Another owner pinned (part of) it: copies are still correct (and asynchronous
        // where the range is pinned); that owner unregisters it, not us.
        (void)cudaGetLastError();
        return GC_OK;
    }
    if (e != cudaSuccess) {
        (void)cudaGetLastError(); // not sticky: later launch checks must not see it
        return gc_error_set(GC_ERR_CUDA, "pinning %s: cudaHostRegister of %zu bytes (%.2f MiB) of host memory failed: %s",
                            what ? what : "host memory", n, mib(n), cudaGetErrorString(e));
    }
    *registered = true;
    return GC_OK;
}

extern "C" gc_status gc_cuda_host_unregister(void *p)
{
    if (!p) return GC_OK;
    GC_TRY(gc_cuda_init());
    // Queued uploads may still read the memory, which is about to be freed: let them finish.
    GC_CUDA_CHECK(sync_streams());
    GC_CUDA_CHECK(cudaHostUnregister(p));
    return GC_OK;
}

// ------------------------------------------------------------------ element conversion

namespace {

// Compute type of a conversion: float among the float types (f32/bf16/f16), double when
// f64 or an integer is involved (exact for i32, and what the CPU reference does).
template <typename T> struct is_wide { static constexpr bool value = false; };
template <> struct is_wide<double> { static constexpr bool value = true; };
template <> struct is_wide<int32_t> { static constexpr bool value = true; };
template <> struct is_wide<int64_t> { static constexpr bool value = true; };
template <typename S, typename D> struct compute_of {
    using type = typename std::conditional<is_wide<S>::value || is_wide<D>::value, double, float>::type;
};

template <typename C> __device__ __forceinline__ C load_as(float v) { return (C)v; }
template <typename C> __device__ __forceinline__ C load_as(double v) { return (C)v; }
template <typename C> __device__ __forceinline__ C load_as(int32_t v) { return (C)v; }
template <typename C> __device__ __forceinline__ C load_as(int64_t v) { return (C)v; }
template <typename C> __device__ __forceinline__ C load_as(__nv_bfloat16 v) { return (C)__bfloat162float(v); }
template <typename C> __device__ __forceinline__ C load_as(__half v) { return (C)__half2float(v); }

// Like the CPU reference (runtime/tensor.c store_elem): 16-bit floats via f32, round to
// nearest even; integers truncate.
template <typename D> struct store_as;
template <> struct store_as<float> { template <typename C> __device__ static float cv(C v) { return (float)v; } };
template <> struct store_as<double> { template <typename C> __device__ static double cv(C v) { return (double)v; } };
template <> struct store_as<int32_t> { template <typename C> __device__ static int32_t cv(C v) { return (int32_t)v; } };
template <> struct store_as<int64_t> { template <typename C> __device__ static int64_t cv(C v) { return (int64_t)v; } };
template <> struct store_as<__nv_bfloat16> {
    template <typename C> __device__ static __nv_bfloat16 cv(C v) { return __float2bfloat16_rn((float)v); }
};
template <> struct store_as<__half> {
    template <typename C> __device__ static __half cv(C v) { return __float2half_rn((float)v); }
};

// ------------------------------------------------------------------ strided copy

// Geometry after simplification: dims ordered by destination stride (outermost first),
// mergeable neighbours merged, size-1 dims dropped. I: int32_t or int64_t.
template <typename I> struct Geom {
    int ndim;
    I shape[GC_MAX_DIMS], ds[GC_MAX_DIMS], ss[GC_MAX_DIMS];
};

// One thread per destination element, in destination order: consecutive threads write
// consecutive addresses whenever the destination has a unit-stride dim.
template <typename S, typename D, typename I>
__global__ void copy_strided_kernel(D *dst, const S *src, Geom<I> g, I n, bool acc)
{
    GC_PDL_WAIT();
    using C = typename compute_of<S, D>::type;
    for (I e = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; e < n; e += (I)gridDim.x * (I)blockDim.x) {
        I doff = 0, soff = 0;
        if (g.ndim == 1) {
            doff = e * g.ds[0];
            soff = e * g.ss[0];
        } else {
            I r = e;
#pragma unroll
            for (int d = GC_MAX_DIMS - 1; d >= 0; d--) {
                if (d < g.ndim) {
                    I q = r / g.shape[d];
                    I i = r - q * g.shape[d];
                    doff += i * g.ds[d];
                    soff += i * g.ss[d];
                    r = q;
                }
            }
        }
        C v = load_as<C>(src[soff]);
        if (acc) v += load_as<C>(dst[doff]);
        dst[doff] = store_as<D>::cv(v);
    }
}

// A transpose: the destination is unit-stride along dim L, the source along another dim
// J. 32x32 tiles through shared memory keep reads and writes coalesced. Remaining dims
// (at most 3) index the tile's batch.
struct TileGeom {
    int nb;
    int64_t bshape[3], bds[3], bss[3];
    int64_t J, L, ds_j, ss_l; // ds_l == ss_j == 1
    int64_t tiles_j, tiles_l;
};

template <typename S, typename D>
__global__ void copy_tiled_kernel(D *dst, const S *src, TileGeom g, bool acc)
{
    GC_PDL_WAIT();
    using C = typename compute_of<S, D>::type;
    __shared__ C tile[32][33];
    int64_t bid = blockIdx.x;
    int64_t tl = bid % g.tiles_l;
    bid /= g.tiles_l;
    int64_t tj = bid % g.tiles_j;
    bid /= g.tiles_j;
    int64_t doff = 0, soff = 0;
    for (int d = g.nb - 1; d >= 0; d--) {
        int64_t i = bid % g.bshape[d];
        bid /= g.bshape[d];
        doff += i * g.bds[d];
        soff += i * g.bss[d];
    }
    const int64_t j0 = tj * 32, l0 = tl * 32;
    for (int r = threadIdx.y; r < 32; r += blockDim.y) { // read along J (unit stride in src)
        int64_t j = j0 + threadIdx.x, l = l0 + r;
        if (j < g.J && l < g.L) tile[r][threadIdx.x] = load_as<C>(src[soff + j + l * g.ss_l]);
    }
    __syncthreads();
    for (int r = threadIdx.y; r < 32; r += blockDim.y) { // write along L (unit stride in dst)
        int64_t j = j0 + r, l = l0 + threadIdx.x;
        if (j < g.J && l < g.L) {
            D *p = dst + doff + j * g.ds_j + l;
            C v = tile[threadIdx.x][r];
            if (acc) v += load_as<C>(*p);
            *p = store_as<D>::cv(v);
        }
    }
}

struct CopyPlan {
    int ndim;
    int64_t shape[GC_MAX_DIMS], ds[GC_MAX_DIMS], ss[GC_MAX_DIMS];
};

// Order dims by destination stride, merge what is contiguous in both, drop size-1 dims.
void simplify(const gc_tensor *dst, const gc_tensor *src, CopyPlan *p)
{
    int n = 0;
    for (int d = 0; d < dst->ndim; d++) {
        if (dst->shape[d] == 1) continue;
        p->shape[n] = dst->shape[d];
        p->ds[n] = dst->stride[d];
        p->ss[n] = src->stride[d];
        n++;
    }
    // insertion sort, outermost (largest |dst stride|) first; ties by source stride
    for (int i = 1; i < n; i++) {
        for (int j = i; j > 0; j--) {
            int64_t a = llabs(p->ds[j - 1]), b = llabs(p->ds[j]);
            bool swap = a < b || (a == b && llabs(p->ss[j - 1]) < llabs(p->ss[j]));
            if (!swap) break;
            std::swap(p->shape[j - 1], p->shape[j]);
            std::swap(p->ds[j - 1], p->ds[j]);
            std::swap(p->ss[j - 1], p->ss[j]);
        }
    }
    // merge dim i-1 (outer) into dim i (inner) when both tensors are contiguous across them
    int m = 0;
    for (int i = 0; i < n; i++) {
        if (m > 0 && p->ds[m - 1] == p->ds[i] * p->shape[i] && p->ss[m - 1] == p->ss[i] * p->shape[i]) {
            p->shape[m - 1] *= p->shape[i];
            p->ds[m - 1] = p->ds[i];
            p->ss[m - 1] = p->ss[i];
        } else {
            p->shape[m] = p->shape[i];
            p->ds[m] = p->ds[i];
            p->ss[m] = p->ss[i];
            m++;
        }
    }
    if (m == 0) { // a single element
        p->shape[0] = 1;
        p->ds[0] = p->ss[0] = 1;
        m = 1;
    }
    p->ndim = m;
}

// largest |offset| either tensor reaches from its element 0
int64_t span(const CopyPlan *p, bool dst_side)
{
    int64_t s = 0;
    for (int d = 0; d < p->ndim; d++) s += (p->shape[d] - 1) * llabs(dst_side ? p->ds[d] : p->ss[d]);
    return s;
}

unsigned grid_for(int64_t n, int threads)
{
    int64_t b = (n + threads - 1) / threads;
    int64_t cap = (int64_t)rt.sm_count * 32;
    if (b > cap) b = cap;
    return (unsigned)(b > 0 ? b : 1);
}

template <typename S, typename D>
gc_status launch_copy(D *dst, const S *src, const CopyPlan &p, int64_t n, bool acc)
{
    cudaStream_t st = rt.stream;
    const int last = p.ndim - 1;
    // transpose-like: dst unit-stride innermost, src unit-stride along another dim
    int jdim = -1;
    if (p.ndim >= 2 && p.ds[last] == 1 && p.ss[last] != 1 && p.shape[last] >= 8)
        for (int d = 0; d < last; d++)
            if (p.ss[d] == 1 && p.shape[d] >= 8) jdim = d;
    if (jdim >= 0) {
        TileGeom g{};
        g.J = p.shape[jdim];
        g.L = p.shape[last];
        g.ds_j = p.ds[jdim];
        g.ss_l = p.ss[last];
        g.tiles_j = (g.J + 31) / 32;
        g.tiles_l = (g.L + 31) / 32;
        int64_t blocks = g.tiles_j * g.tiles_l;
        for (int d = 0; d < last; d++) {
            if (d == jdim) continue;
            g.bshape[g.nb] = p.shape[d];
            g.bds[g.nb] = p.ds[d];
            g.bss[g.nb] = p.ss[d];
            g.nb++;
            blocks *= p.shape[d];
        }
        if (blocks <= 0x7fffffffLL) {
            gc_launch(copy_tiled_kernel<S, D>, (unsigned)blocks, dim3(32, 8), 0, st, dst, src, g, acc);
            GC_CUDA_LAUNCH_CHECK();
            return GC_OK;
        }
    }
    // 32-bit index math when every index and offset fits (with room for the grid stride)
    const int64_t lim = (int64_t)1 << 30;
    if (n < lim && span(&p, true) < lim && span(&p, false) < lim) {
        Geom<int32_t> g{};
        g.ndim = p.ndim;
        for (int d = 0; d < p.ndim; d++) {
            g.shape[d] = (int32_t)p.shape[d];
            g.ds[d] = (int32_t)p.ds[d];
            g.ss[d] = (int32_t)p.ss[d];
        }
        gc_launch(copy_strided_kernel<S, D, int32_t>, grid_for(n, 256), 256, 0, st, dst, src, g, (int32_t)n, acc);
    } else {
        Geom<int64_t> g{};
        g.ndim = p.ndim;
        for (int d = 0; d < p.ndim; d++) {
            g.shape[d] = p.shape[d];
            g.ds[d] = p.ds[d];
            g.ss[d] = p.ss[d];
        }
        gc_launch(copy_strided_kernel<S, D, int64_t>, grid_for(n, 256), 256, 0, st, dst, src, g, n, acc);
    }
    GC_CUDA_LAUNCH_CHECK();
    return GC_OK;
}

template <typename S>
gc_status copy_to(gc_tensor *dst, const S *src, const CopyPlan &p, int64_t n, bool acc)
{
    void *d = gc_tensor_data(dst);
    switch (dst->dtype) {
    case GC_F32: return launch_copy<S, float>((float *)d, src, p, n, acc);
    case GC_BF16: return launch_copy<S, __nv_bfloat16>((__nv_bfloat16 *)d, src, p, n, acc);
    case GC_F16: return launch_copy<S, __half>((__half *)d, src, p, n, acc);
    case GC_I32: return launch_copy<S, int32_t>((int32_t *)d, src, p, n, acc);
    case GC_I64: return launch_copy<S, int64_t>((int64_t *)d, src, p, n, acc);
    case GC_F64: return launch_copy<S, double>((double *)d, src, p, n, acc);
    default: break;
    }
    return gc_error_set(GC_ERR_DTYPE, "copy on the GPU: unknown destination dtype %d", (int)dst->dtype);
}

// ------------------------------------------------------------------ fill

template <typename D> __global__ void fill_kernel(D *p, D v, int64_t n)
{
    GC_PDL_WAIT();
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        p[i] = v;
}

template <typename D> gc_status launch_fill(void *p, D v, int64_t n)
{
    gc_launch(fill_kernel<D>, grid_for(n, 256), 256, 0, rt.stream, (D *)p, v, n);
    GC_CUDA_LAUNCH_CHECK();
    return GC_OK;
}

} // namespace


// Same-dtype copies whose innermost dimension is contiguous on both sides in runs of
// 16-byte multiples (e.g. [B, L, H, D] <-> [B, H, L, D] of attention) move whole
// 16-byte vectors: one load and one store per 8 bf16 elements.
template <typename I>
__global__ void vec16_copy_kernel(uint4 *__restrict__ dst, const uint4 *__restrict__ src, CopyPlan p, int64_t n)
{
    GC_PDL_WAIT();
    I shape[GC_MAX_DIMS], ss[GC_MAX_DIMS], ds[GC_MAX_DIMS];
    for (int d = 0; d < GC_MAX_DIMS; d++) {
        shape[d] = d < p.ndim ? (I)p.shape[d] : 1;
        ss[d] = d < p.ndim ? (I)p.ss[d] : 0;
        ds[d] = d < p.ndim ? (I)p.ds[d] : 0;
    }
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x) {
        I r = (I)e, so = 0, doff = 0;
        for (int d = p.ndim - 1; d >= 0; d--) {
            I i = r % shape[d];
            r /= shape[d];
            so += i * ss[d];
            doff += i * ds[d];
        }
        dst[doff] = src[so];
    }
}

// The plan in 16-byte units, or false when the layout does not allow it.
static bool vec16_plan(const CopyPlan &in, size_t esize, const void *d, const void *s, CopyPlan *out)
{
    if (in.ndim < 1 || in.ds[in.ndim - 1] != 1 || in.ss[in.ndim - 1] != 1) return false;
    if (((uintptr_t)d | (uintptr_t)s) % 16) return false;
    const int64_t per = 16 / (int64_t)esize;
    if (in.shape[in.ndim - 1] % per) return false;
    *out = in;
    out->shape[in.ndim - 1] = in.shape[in.ndim - 1] / per;
    for (int k = 0; k + 1 < in.ndim; k++) {
        if (in.ds[k] % per || in.ss[k] % per) return false;
        out->ds[k] = in.ds[k] / per;
        out->ss[k] = in.ss[k] / per;
    }
    return true;
}

extern "C" gc_status gc_cuda_copy_strided(gc_tensor *dst, const gc_tensor *src, bool accumulate)
{
    if (!dst || !src) return GC_PENDING();
    GC_TRY(gc_cuda_init());
    if (dst->device.type != GC_DEVICE_CUDA || src->device.type != GC_DEVICE_CUDA)
        return gc_error_set(GC_ERR_DEVICE, "GPU copy of %s (%s) into %s (%s): both must be on the GPU", gc_tensor_label(src),
                            gc_device_name(src->device), gc_tensor_label(dst), gc_device_name(dst->device));
    if (!gc_shape_eq(dst, src)) {
        char a[GC_SHAPE_STR_LEN], b[GC_SHAPE_STR_LEN];
        return gc_error_set(GC_ERR_SHAPE, "copy of %s %s into %s %s: shapes differ", gc_tensor_label(src),
                            gc_shape_str(src, a, sizeof a), gc_tensor_label(dst), gc_shape_str(dst, b, sizeof b));
    }
    int64_t n = gc_tensor_numel(dst);
    if (n == 0) return GC_OK;
    if (!accumulate && dst->dtype == src->dtype && gc_tensor_is_contiguous(dst) && gc_tensor_is_contiguous(src)) {
        GC_CUDA_CHECK(cudaMemcpyAsync(gc_tensor_data(dst), gc_tensor_data(src), gc_tensor_nbytes(dst),
                                      cudaMemcpyDeviceToDevice, rt.stream));
        return GC_OK;
    }
    CopyPlan p;
    simplify(dst, src, &p);
    const void *s = gc_tensor_data(src);
    CopyPlan v;
    if (!accumulate && dst->dtype == src->dtype && vec16_plan(p, gc_dtype_size(dst->dtype), gc_tensor_data(dst), s, &v)) {
        int64_t nv = n / (16 / (int64_t)gc_dtype_size(dst->dtype));
        int64_t blocks = (nv + 255) / 256, cap = (int64_t)rt.sm_count * 16;
        unsigned grid = (unsigned)(blocks < cap ? blocks : cap);
        /* 32-bit index math when every offset fits */
        int64_t span = 1;
        for (int k = 0; k < v.ndim; k++) span += (v.shape[k] - 1) * (llabs(v.ds[k]) > llabs(v.ss[k]) ? llabs(v.ds[k]) : llabs(v.ss[k]));
        if (nv < ((int64_t)1 << 31) && span < ((int64_t)1 << 31))
            gc_launch(vec16_copy_kernel<int32_t>, grid, 256, 0, rt.stream, (uint4 *)gc_tensor_data(dst),
                      (const uint4 *)s, v, nv);
        else
            gc_launch(vec16_copy_kernel<int64_t>, grid, 256, 0, rt.stream, (uint4 *)gc_tensor_data(dst),
                      (const uint4 *)s, v, nv);
        GC_CUDA_LAUNCH_CHECK();
        return GC_OK;
    }
    switch (src->dtype) {
    case GC_F32: return copy_to<float>(dst, (const float *)s, p, n, accumulate);
    case GC_BF16: return copy_to<__nv_bfloat16>(dst, (const __nv_bfloat16 *)s, p, n, accumulate);
    case GC_F16: return copy_to<__half>(dst, (const __half *)s, p, n, accumulate);
    case GC_I32: return copy_to<int32_t>(dst, (const int32_t *)s, p, n, accumulate);
    case GC_I64: return copy_to<int64_t>(dst, (const int64_t *)s, p, n, accumulate);
    case GC_F64: return copy_to<double>(dst, (const double *)s, p, n, accumulate);
    default: break;
    }
    return gc_error_set(GC_ERR_DTYPE, "copy on the GPU: unknown source dtype %d", (int)src->dtype);
}

extern "C" gc_status gc_cuda_fill(gc_tensor *t, double value)
{
    if (!t) return GC_PENDING();
    GC_TRY(gc_cuda_init());
    if (!gc_tensor_is_contiguous(t)) return gc_error_set(GC_ERR_INVALID, "fill of a non-contiguous %s", gc_tensor_label(t));
    int64_t n = gc_tensor_numel(t);
    if (n == 0) return GC_OK;
    void *p = gc_tensor_data(t);
    if (value == 0.0 && !std::signbit(value)) return gc_cuda_memzero(p, gc_tensor_nbytes(t)); // all-zero bits in every dtype
    // the element's bits made on the host, exactly as the CPU reference rounds them
    switch (t->dtype) {
    case GC_F32: return launch_fill<float>(p, (float)value, n);
    case GC_F64: return launch_fill<double>(p, value, n);
    case GC_I32: return launch_fill<int32_t>(p, (int32_t)value, n);
    case GC_I64: return launch_fill<int64_t>(p, (int64_t)value, n);
    case GC_BF16: return launch_fill<uint16_t>(p, gc_f32_to_bf16((float)value), n);
    case GC_F16: return launch_fill<uint16_t>(p, gc_f32_to_f16((float)value), n);
    default: break;
    }
    return gc_error_set(GC_ERR_DTYPE, "fill of %s: unknown dtype %d", gc_tensor_label(t), (int)t->dtype);
}
