/* Timers: CUDA events where the device is a GPU, CLOCK_MONOTONIC on the CPU. */
#include <stdlib.h>
#include <time.h>

#include "gc_cuda.h"
#include "gc_device.h"

struct gc_timer {
    gc_device dev;
    double host_ms;
#ifdef GC_WITH_CUDA
    cudaEvent_t ev;
#endif
};

gc_timer *gc_timer_create(gc_device d)
{
    gc_timer *t = calloc(1, sizeof *t);
    if (!t) { gc_error_set(GC_ERR_OOM, "out of host memory"); return NULL; }
    t->dev = d;
#ifdef GC_WITH_CUDA
    if (d.type == GC_DEVICE_CUDA && (gc_cuda_init() != GC_OK || cudaEventCreate(&t->ev) != cudaSuccess)) {
        gc_error_set(GC_ERR_CUDA, "could not create a CUDA event");
        free(t);
        return NULL;
    }
#else
    if (d.type == GC_DEVICE_CUDA) {
        gc_error_set(GC_ERR_DEVICE, "timer on %s: this build has no CUDA backend", gc_device_name(d));
        free(t);
        return NULL;
    }
#endif
    return t;
}

void gc_timer_free(gc_timer *t)
{
    if (!t) return;
#ifdef GC_WITH_CUDA
    if (t->dev.type == GC_DEVICE_CUDA) cudaEventDestroy(t->ev);
#endif
    free(t);
}

gc_status gc_timer_record(gc_timer *t)
{
#ifdef GC_WITH_CUDA
    if (t->dev.type == GC_DEVICE_CUDA) {
        GC_CUDA_CHECK(cudaEventRecord(t->ev, gc_cuda_stream()));
        return GC_OK;
    }
#endif
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    t->host_ms = (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
    return GC_OK;
}

gc_status gc_timer_elapsed_ms(gc_timer *start, gc_timer *end, double *ms)
{
#ifdef GC_WITH_CUDA
    if (end->dev.type == GC_DEVICE_CUDA) {
        float f;
        GC_CUDA_CHECK(cudaEventSynchronize(end->ev));
        GC_CUDA_CHECK(cudaEventElapsedTime(&f, start->ev, end->ev));
        *ms = f;
        return GC_OK;
    }
#endif
    *ms = end->host_ms - start->host_ms;
    return GC_OK;
}
