/* Devices: the CPU and CUDA GPUs behind one interface.
 * Every device allocation goes through a caching allocator: freed blocks are kept in
 * size classes and handed out again, so a training loop's second and later steps call
 * cudaMalloc (or malloc) for nothing new. Current and peak bytes are counted per device. */
#ifndef GC_DEVICE_H
#define GC_DEVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gc_error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum gc_device_type { GC_DEVICE_CPU = 0, GC_DEVICE_CUDA = 1 } gc_device_type;

typedef struct gc_device {
    gc_device_type type;
    int index; /* GPU ordinal; 0 for the CPU */
} gc_device;

#define GC_CPU ((gc_device){GC_DEVICE_CPU, 0})
#define GC_CUDA0 ((gc_device){GC_DEVICE_CUDA, 0})

static inline bool gc_device_eq(gc_device a, gc_device b) { return a.type == b.type && a.index == b.index; }
const char *gc_device_name(gc_device d); /* "cpu", "cuda:0" */
gc_status gc_device_parse(const char *s, gc_device *out); /* "cpu", "cuda", "cuda:N" */

bool gc_cuda_built(void);     /* compiled with the CUDA backend */
bool gc_cuda_available(void); /* built, and a GPU is present */

/* Raw memory. Allocation failures set GC_ERR_OOM and return NULL. */
void *gc_device_alloc(gc_device d, size_t nbytes);
void gc_device_free(gc_device d, void *p);
gc_status gc_memcpy(gc_device dst_dev, void *dst, gc_device src_dev, const void *src, size_t nbytes);
gc_status gc_memzero(gc_device d, void *p, size_t nbytes);
gc_status gc_device_sync(gc_device d); /* wait for queued work; reports asynchronous failures */

typedef struct gc_memory_stats {
    size_t current;   /* bytes handed out to tensors now */
    size_t peak;      /* high-water mark of current since the last reset */
    size_t reserved;  /* bytes obtained from the system (handed out + cached) */
    uint64_t system_allocs; /* number of cudaMalloc / malloc calls made */
} gc_memory_stats;
gc_memory_stats gc_memory_stats_get(gc_device d);
void gc_memory_reset_peak(gc_device d);
/* Return cached free blocks to the system. */
void gc_memory_release_cached(gc_device d);
/* Debugging: fill every new host allocation with 0xff bytes (NaN in f32 and bf16), so a
 * read of memory nothing wrote shows in the numbers. Off by default; GC_HOST_POISON=1
 * turns it on from the start. */
void gc_host_poison_set(bool on);

/* Timing: CUDA events on the GPU (no synchronisation until read), the host clock on the CPU. */
typedef struct gc_timer gc_timer;
gc_timer *gc_timer_create(gc_device d);
void gc_timer_free(gc_timer *t);
gc_status gc_timer_record(gc_timer *t);
/* Milliseconds from `start` to `end` (waits for `end`). */
gc_status gc_timer_elapsed_ms(gc_timer *start, gc_timer *end, double *ms);

#ifdef __cplusplus
}
#endif

#endif
