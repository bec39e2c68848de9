/* AdamW (Loshchilov & Hutter: decoupled weight decay, bias correction, PyTorch's
 * semantics), global gradient-norm clipping, and a warmup + cosine schedule.
 * Master weights, gradients and both moments are f32; after a step the compute
 * copies (bf16) are refreshed from the masters (gc_params_sync_values). */
#ifndef GC_OPTIM_H
#define GC_OPTIM_H

#include "../models/gc_params.h"

typedef struct gc_adamw_config {
    double lr, beta1, beta2, eps, weight_decay;
    double max_grad_norm;   /* <= 0: no clipping */
} gc_adamw_config;

typedef struct gc_adamw {
    gc_adamw_config cfg;
    gc_params *params;
    gc_tensor **m, **v;     /* per parameter; NULL where frozen */
    int64_t step;           /* steps taken */
    gc_tensor *norm;        /* [] f32: the last global gradient norm (before clipping), on the device */
    /* GPU: the chunk table of the fused kernels (autograd/gc_optim_cuda.h) */
    gc_tensor *table, *chunks, *partial, *coef;
    int n_chunks;
} gc_adamw;

/* Weight decay applies to matrices (ndim >= 2), not to biases, norms and scalars
 * such as logit_scale (open_clip's rule). */

gc_status gc_adamw_init(gc_adamw *o, gc_params *ps, const gc_adamw_config *cfg);
void gc_adamw_free(gc_adamw *o);
/* One update of every trainable parameter at learning rate lr; no host synchronisation. */
gc_status gc_adamw_step(gc_adamw *o, double lr);
/* The global gradient norm of the last step (synchronises). */
gc_status gc_adamw_last_norm(gc_adamw *o, double *norm);

/* Linear warmup to lr over `warmup` steps, then cosine decay to lr*min_ratio at `total`. */
double gc_lr_schedule(double lr, int64_t step, int64_t warmup, int64_t total, double min_ratio);

#endif
