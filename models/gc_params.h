/* Parameters: named tensors a model owns, loaded from and saved to HF checkpoints.
 *
 * Mixed precision: `value` is what ops compute with (f32, or a bf16 copy on the GPU)
 * and carries the f32 gradient; `master` is the f32 copy the optimizer updates (the
 * same tensor as value in f32 mode). Frozen parameters (LoRA bases) have no gradient,
 * and in bf16 no f32 master either. */
#ifndef GC_PARAMS_H
#define GC_PARAMS_H

#include "../autograd/gc_autograd.h"

typedef struct gc_param {
    char *name;          /* HF name, e.g. "vision_model.encoder.layers.0.mlp.fc1.weight" */
    gc_tensor *value;    /* compute copy: a leaf; its grad is f32 */
    gc_tensor *master;   /* f32 master weights, or NULL when frozen in bf16 */
    bool trainable;
} gc_param;

typedef struct gc_params {
    gc_param *items;
    int n, cap;
    gc_device device;
    gc_dtype dtype;      /* compute dtype of values */
} gc_params;

void gc_params_init(gc_params *ps, gc_device dev, gc_dtype dtype);
void gc_params_free(gc_params *ps);
/* Declares a parameter (uninitialised, trainable); returns its index or -1. */
int gc_params_add(gc_params *ps, const char *name, int ndim, const int64_t *shape);
gc_param *gc_params_find(gc_params *ps, const char *name);
static inline gc_tensor *gc_params_value(gc_params *ps, int i) { return ps->items[i].value; }
int64_t gc_params_count(const gc_params *ps, bool trainable_only); /* number of scalars */

/* Fill every parameter's master from host f32 data produced by init(name, shape, out, user). */
typedef void (*gc_param_init_fn)(const char *name, int ndim, const int64_t *shape, float *out, void *user);
gc_status gc_params_init_values(gc_params *ps, gc_param_init_fn init, void *user);

/* Load from an HF checkpoint directory (model.safetensors or a sharded index). Every
 * missing, unexpected or mis-shaped tensor is named in the error. Names listed in
 * `ignore_suffixes` (e.g. "position_ids") are non-parameter buffers and skipped. */
gc_status gc_params_load(gc_params *ps, const char *dir, const char *const *ignore_suffixes, const char *skip);
/* Write model.safetensors (f32, HF names) into dir, atomically. Parameters whose name
 * contains `skip` (e.g. ".lora_": adapters live in their own file) are left out of
 * both (NULL: none). */
gc_status gc_params_save(gc_params *ps, const char *dir, const char *skip);

/* Copy masters into values after an optimizer step (bf16 mode); no-op in f32. */
gc_status gc_params_sync_values(gc_params *ps);
gc_status gc_params_zero_grad(gc_params *ps);
gc_status gc_params_set_trainable(gc_params *ps, int i, bool on);

#endif
