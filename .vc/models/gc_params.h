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
    int pack;            /* the pack its value lies in (gc_params_pack), or -1 */
} gc_param;

/* A pack: parameters whose values lie one after another in one buffer, and whose f32
 * gradients do in another while all of them train, so that one GEMM reads them and
 * writes their gradients as a whole (q, k and v's weights as one [3D, D]). A gap is a
 * region of zeros that is no parameter (DINOv3's absent key bias). */
#define GC_PACK_MAX 4
typedef struct gc_param_pack {
    gc_tensor *value;    /* the whole, [rows, ...]: a leaf whose gradient holds the members'
                            while every member trains, frozen otherwise */
    int n;
    int idx[GC_PACK_MAX];      /* the members' items, -1 for a gap */
    int64_t rows[GC_PACK_MAX]; /* each one's rows (dim 0) */
} gc_param_pack;

typedef struct gc_params {
    gc_param *items;
    int n, cap;
    gc_device device;
    gc_dtype dtype;      /* compute dtype of values */
    gc_param_pack *packs;
    int n_packs;
} gc_params;

void gc_params_init(gc_params *ps, gc_device dev, gc_dtype dtype);
void gc_params_free(gc_params *ps);
/* Declares a parameter (uninitialised, trainable); returns its index or -1. */
int gc_params_add(gc_params *ps, const char *name, int ndim, const int64_t *shape);
gc_param *gc_params_find(gc_params *ps, const char *name);
int gc_params_index(const gc_params *ps, const gc_tensor *value); /* the item whose value it is, or -1 */
/* Packs items idx[0..n) along dim 0, in that order (idx[i] = -1: a gap of gap_rows[i]
 * rows of zeros; gap_rows may be NULL without gaps). The members share every dim but the
 * first and are in no pack yet; their values are kept. Returns the pack's value (owned by
 * ps), or NULL with the error set. */
gc_tensor *gc_params_pack(gc_params *ps, int n, const int *idx, const int64_t *gap_rows);
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
