/* Device dispatch and the host allocator (the CUDA side is in runtime/cuda.cu). */
#include "gc_device.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gc_cuda.h"

const char *gc_device_name(gc_device d)
{
    static _Thread_local char buf[32];
    if (d.type == GC_DEVICE_CPU) return "cpu";
    snprintf(buf, sizeof buf, "cuda:%d", d.index);
    return buf;
}

gc_status gc_device_parse(const char *s, gc_device *out)
{
    if (!s) return gc_error_set(GC_ERR_INVALID, "no device given");
    if (!strcmp(s, "cpu")) { *out = GC_CPU; return GC_OK; }
    if (!strcmp(s, "cuda") || !strcmp(s, "cuda:0") || !strcmp(s, "gpu")) { *out = GC_CUDA0; return GC_OK; }
    return gc_error_set(GC_ERR_INVALID, "unknown device '%s' (expected cpu or cuda)", s);
}

bool gc_cuda_built(void)
{
#ifdef GC_WITH_CUDA
    return true;
#else
    return false;
#endif
}

bool gc_cuda_available(void)
{
#ifdef GC_WITH_CUDA
    gc_status prev = gc_error_code();
    bool ok = gc_cuda_init() == GC_OK;
    if (!ok && prev == GC_OK) gc_error_clear(); /* probing is not an error */
    return ok;
#else
    return false;
#endif
}

/* ---- host memory: 64-byte aligned, with a size header so frees are counted ---- */
static gc_memory_stats host_stats;
#define HOST_HDR 64

static int host_poison = -1; /* -1: GC_HOST_POISON not read yet */

void gc_host_poison_set(bool on) { host_poison = on; }

static void *host_alloc(size_t n)
{
    char *p = aligned_alloc(64, (n + HOST_HDR + 63) / 64 * 64);
    if (!p) { gc_error_set(GC_ERR_OOM, "out of host memory allocating %zu bytes", n); return NULL; }
    if (host_poison < 0) {
        const char *e = getenv("GC_HOST_POISON");
        host_poison = e && *e && strcmp(e, "0");
    }
    if (host_poison) memset(p + HOST_HDR, 0xff, n); /* NaN in every float dtype: reads of unwritten memory show */
    *(size_t *)p = n;
    host_stats.current += n;
    host_stats.reserved += n;
    host_stats.system_allocs++;
    if (host_stats.current > host_stats.peak) host_stats.peak = host_stats.current;
    return p + HOST_HDR;
}

static void host_free(void *q)
{
    if (!q) return;
    char *p = (char *)q - HOST_HDR;
    host_stats.current -= *(size_t *)p;
    host_stats.reserved -= *(size_t *)p;
    free(p);
}

#ifdef GC_WITH_CUDA
#define CUDA_OR(expr) return (expr)
#else
#define CUDA_OR(expr) return gc_error_set(GC_ERR_DEVICE, "%s: this build has no CUDA backend (rebuild with -Dcuda=enabled)", __func__)
#endif

void *gc_device_alloc(gc_device d, size_t nbytes)
{
    if (d.type == GC_DEVICE_CPU) return host_alloc(nbytes);
#ifdef GC_WITH_CUDA
    return gc_cuda_alloc(nbytes);
#else
    gc_error_set(GC_ERR_DEVICE, "cannot allocate on %s: this build has no CUDA backend", gc_device_name(d));
    return NULL;
#endif
}

void gc_device_free(gc_device d, void *p)
{
    if (d.type == GC_DEVICE_CPU) { host_free(p); return; }
#ifdef GC_WITH_CUDA
    gc_cuda_free(p);
#endif
}

gc_status gc_memcpy(gc_device dst_dev, void *dst, gc_device src_dev, const void *src, size_t nbytes)
{
    if (!nbytes) return GC_OK;
    if (dst_dev.type == GC_DEVICE_CPU && src_dev.type == GC_DEVICE_CPU) {
        memmove(dst, src, nbytes);
        return GC_OK;
    }
#ifdef GC_WITH_CUDA
    int kind = dst_dev.type == GC_DEVICE_CPU ? cudaMemcpyDeviceToHost
             : src_dev.type == GC_DEVICE_CPU ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToDevice;
    return gc_cuda_memcpy(dst, src, nbytes, kind);
#else
    CUDA_OR(GC_OK);
#endif
}

gc_status gc_memzero(gc_device d, void *p, size_t nbytes)
{
    if (!nbytes) return GC_OK;
    if (d.type == GC_DEVICE_CPU) { memset(p, 0, nbytes); return GC_OK; }
    CUDA_OR(gc_cuda_memzero(p, nbytes));
}

gc_status gc_device_sync(gc_device d)
{
    if (d.type == GC_DEVICE_CPU) return GC_OK;
    CUDA_OR(gc_cuda_sync());
}

gc_memory_stats gc_memory_stats_get(gc_device d)
{
#ifdef GC_WITH_CUDA
    if (d.type == GC_DEVICE_CUDA) return gc_cuda_memory_stats();
#endif
    (void)d;
    return host_stats;
}

void gc_memory_reset_peak(gc_device d)
{
#ifdef GC_WITH_CUDA
    if (d.type == GC_DEVICE_CUDA) { gc_cuda_memory_reset_peak(); return; }
#endif
    (void)d;
    host_stats.peak = host_stats.current;
}

void gc_memory_release_cached(gc_device d)
{
#ifdef GC_WITH_CUDA
    if (d.type == GC_DEVICE_CUDA) gc_cuda_release_cached();
#endif
    (void)d;
}
