/* Internal: the chunk table the fused GPU AdamW walks (autograd/optim.c builds it). */
#ifndef GC_OPTIM_CUDA_H
#define GC_OPTIM_CUDA_H

#include <stdint.h>

#include "../runtime/gc_error.h"

#define GC_ADAM_CHUNK 65536

typedef struct gc_adam_tensor {
    float *p;           /* f32 master */
    const float *g;     /* f32 gradient */
    float *m, *v;       /* moments */
    void *out;          /* bf16 compute copy to refresh, or NULL */
    int64_t n;
    float wd_scale;     /* 1: decayed, 0: not */
} gc_adam_tensor;

typedef struct gc_adam_chunk {
    int32_t t;          /* tensor index */
    int64_t start;      /* first element of the chunk */
} gc_adam_chunk;

#ifdef __cplusplus
extern "C" {
#endif
gc_status gc_cuda_adamw_multi(const gc_adam_tensor *ts, const gc_adam_chunk *cs, int n_chunks, float *partial,
                              float *norm, float *coef, float max_norm, float lr, float b1, float b2, float eps,
                              float wd, float bc1, float bc2);
#ifdef __cplusplus
}
#endif

#endif
