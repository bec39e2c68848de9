/* CLIP on the gradient cache: the two towers as CacheFuncs and the loss with the
 * model's logit_scale. What `gcache grad`, `gcache train` and `gcache bench` run. */
#ifndef GC_CLIP_TASK_H
#define GC_CLIP_TASK_H

#include "../models/gc_clip.h"
#include "gc_clip_loss.h"
#include "gc_gradcache.h"

typedef struct gc_clip_task {
    gc_clip *model;
    gc_gradcache gc;
    int64_t loss_block_rows;  /* row blocks of the loss (<= 0: 4096) */
} gc_clip_task;

/* pixels [B,3,H,W] f32 and ids [B,L] (any device); chunk <= 0: no gradient cache. */
void gc_clip_task_init(gc_clip_task *t, gc_clip *m, gc_tensor *pixels, gc_tensor *ids, int64_t chunk);
/* loss and gradients (added to the parameters' .grad) of one batch */
gc_status gc_clip_task_step(gc_clip_task *t, gc_rand_context rng, gc_gradcache_result *res);
/* normalised embeddings, no graph: either input may be NULL */
gc_status gc_clip_task_embed(gc_clip *m, gc_tensor *pixels, gc_tensor *ids, int64_t chunk, gc_tensor **img,
                             gc_tensor **txt);

#endif
