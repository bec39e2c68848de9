/* Internal: CUDA plumbing shared by runtime/ and kernels/ (C and CUDA sources).
 * One check macro for every CUDA and cuBLAS call; one stream per device. */
#ifndef GC_CUDA_H
#define GC_CUDA_H

#include "gc_error.h"
#include "gc_tensor.h"

#ifdef GC_WITH_CUDA
#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GC_CUDA_CHECK(call)                                                                      \
    do {                                                                                         \
        cudaError_t gc_e_ = (call);                                                              \
        if (gc_e_ != cudaSuccess)                                                                \
            return gc_error_set(GC_ERR_CUDA, "%s failed: %s (%s:%d)", #call,                     \
                                cudaGetErrorString(gc_e_), __FILE__, __LINE__);                  \
    } while (0)
/* after every kernel launch */
#define GC_CUDA_LAUNCH_CHECK() GC_CUDA_CHECK(cudaGetLastError())

gc_status gc_cuda_init(void);          /* idempotent; selects device 0, makes the stream */
cudaStream_t gc_cuda_stream(void);     /* the stream all work is queued on */
int gc_cuda_sm_count(void);

/* CUDA sides of runtime functions (runtime/cuda.cu) */
void *gc_cuda_alloc(size_t nbytes);
void gc_cuda_free(void *p);
gc_status gc_cuda_memcpy(void *dst, const void *src, size_t n, int kind); /* kind: cudaMemcpyKind */
gc_status gc_cuda_memzero(void *p, size_t n);
gc_status gc_cuda_sync(void);
/* Page-lock [p, p + n) (cudaHostRegister); `what` names it in the error. *registered:
 * whether this call did it (false when the range was already registered: that owner
 * unregisters it). */
gc_status gc_cuda_host_register(void *p, size_t n, const char *what, bool *registered);
/* Undo gc_cuda_host_register, after a stream sync (copies from it may still be queued). */
gc_status gc_cuda_host_unregister(void *p);
/* Host -> device copy of n bytes on the copy stream, after the work queued on the compute
 * stream so far (dst's previous users); *done: its completion event, for gc_cuda_copy_wait,
 * which makes the compute stream wait for it and destroys it. */
gc_status gc_cuda_copy_async(void *dst, const void *src, size_t n, void **done);
gc_status gc_cuda_copy_wait(void *done);
gc_memory_stats gc_cuda_memory_stats(void);
void gc_cuda_memory_reset_peak(void);
void gc_cuda_release_cached(void);
/* dst = (or +=) src with dtype conversion and arbitrary strides (both on the GPU) */
gc_status gc_cuda_copy_strided(gc_tensor *dst, const gc_tensor *src, bool accumulate);
gc_status gc_cuda_fill(gc_tensor *t, double value); /* contiguous t */

#ifdef __cplusplus
}
#endif

#endif /* GC_WITH_CUDA */
#endif
