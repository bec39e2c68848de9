/* Dropout keyed by counters (runtime/gc_rng.h): element e of row b of x (dim 0 = the
 * sample, e = flat index within the sample of contiguous x) keeps its value, scaled by
 * 1/(1-p), when gc_rand_uniform(seed, step, op, sample_offset + b, e) >= p, and is
 * zeroed otherwise. The mask is a pure function of those counters: the backward
 * regenerates it instead of saving it, and a replayed forward (gradient cache,
 * checkpointing) with the same RandContext draws the same mask whatever the chunking. */
#include <string.h>

#include "../runtime/gc_rng.h"
#include "gc_kernel_util.h"

/* The counters of one dropout call. */
typedef struct dropout_key {
    uint64_t seed;
    uint32_t step, op;
    int64_t sample_offset;
    int64_t rows, per_sample; /* x as [rows, per_sample] */
    double p;                 /* keep when u >= p, compared exactly (u is a multiple of 2^-24) */
    float scale;              /* 1/(1-p) rounded to f32 once: CPU and GPU both compute x * scale */
} dropout_key;

#ifdef GC_WITH_CUDA
/* dropout.cu, over contiguous [rows, per_sample]: y = keep ? x * scale : 0 and
 * gx (+)= keep ? gy * scale : 0 */
gc_status gc_cuda_dropout_fwd(gc_tensor *y, const gc_tensor *x, uint64_t seed, uint32_t step, uint32_t op,
                              int64_t sample_offset, int64_t rows, int64_t per_sample, double p, float scale);
gc_status gc_cuda_dropout_bwd(gc_tensor *gx, const gc_tensor *gy, uint64_t seed, uint32_t step, uint32_t op,
                              int64_t sample_offset, int64_t rows, int64_t per_sample, double p, float scale, bool acc);
#endif

/* y (+)= mask * scale * x: the forward (x, y) and the backward (gy, gx) alike. */
static gc_status dropout_apply(const dropout_key *k, gc_tensor *y, const gc_tensor *x, bool backward, bool acc)
{
    if (x->device.type == GC_DEVICE_CUDA)
        return backward ? GC_CUDA_DISPATCH(gc_cuda_dropout_bwd(y, x, k->seed, k->step, k->op, k->sample_offset, k->rows,
                                                               k->per_sample, k->p, k->scale, acc))
                        : GC_CUDA_DISPATCH(gc_cuda_dropout_fwd(y, x, k->seed, k->step, k->op, k->sample_offset, k->rows,
                                                               k->per_sample, k->p, k->scale));
    const float *xv = gc_tensor_data(x);
    float *yv = gc_tensor_data(y);
    for (int64_t b = 0; b < k->rows; b++) {
        uint32_t sample = (uint32_t)(k->sample_offset + b);
        for (int64_t e = 0; e < k->per_sample; e++) {
            int64_t i = b * k->per_sample + e;
            float u = gc_rand_uniform(k->seed, k->step, k->op, sample, (uint64_t)e);
            float v = (double)u >= k->p ? xv[i] * k->scale : 0.0f;
            yv[i] = acc ? yv[i] + v : v;
        }
    }
    return GC_OK;
}

/* iarg: 0 seed, 1 step, 2 op, 3 sample_offset, 4 rows, 5 per_sample; farg: 0 p, 1 scale. Nothing saved. */
static gc_status dropout_backward(gc_node *nd, gc_tensor *gy)
{
    bool acc;
    gc_tensor *gx = gc_grad_target(nd, 0, &acc);
    if (!gx) return GC_PENDING();
    dropout_key k = {
        .seed = (uint64_t)nd->iarg[0], .step = (uint32_t)nd->iarg[1], .op = (uint32_t)nd->iarg[2],
        .sample_offset = nd->iarg[3], .rows = nd->iarg[4], .per_sample = nd->iarg[5],
        .p = nd->farg[0], .scale = (float)nd->farg[1],
    };
    return dropout_apply(&k, gx, gy, true, acc);
}

gc_tensor *gc_dropout(gc_tensor *x, double p, uint32_t op)
{
    if (!x) return NULL;
    if (!(p >= 0.0 && p < 1.0)) {
        gc_error_set(GC_ERR_INVALID, "dropout: probability %g for %s is outside [0, 1)", p, gc_tensor_label(x));
        return NULL;
    }
    if (!gc_check_float("dropout", x)) return NULL;
    if (p == 0.0) return gc_pool_add(gc_tensor_retain(x)); /* the identity: no mask, nothing recorded */
    gc_tensor *xc = gc_contiguous(x);
    if (!xc) return NULL;
    gc_rand_context ctx = gc_rand_context_get();
    int64_t rows = x->ndim ? x->shape[0] : 1;
    dropout_key k = {
        .seed = ctx.seed, .step = ctx.step, .op = op, .sample_offset = ctx.sample_offset,
        .rows = rows, .per_sample = rows ? gc_tensor_numel(x) / rows : 0,
        .p = p, .scale = (float)(1.0 / (1.0 - p)),
    };
    gc_tensor *y = gc_op_new(x->dtype, x->device, x->ndim, x->shape);
    if (!y || dropout_apply(&k, y, xc, false, false) != GC_OK) return NULL;
    gc_node *nd = gc_autograd_record("dropout", dropout_backward, y, 1, &xc, 0, NULL);
    if (nd) {
        int64_t ia[6] = {(int64_t)k.seed, k.step, k.op, k.sample_offset, k.rows, k.per_sample};
        memcpy(nd->iarg, ia, sizeof ia);
        nd->farg[0] = k.p;
        nd->farg[1] = k.scale;
    }
    return y;
}
