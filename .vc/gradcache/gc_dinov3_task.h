/* DINOv3 image-image contrastive training on the gradient cache: both views of a pair
 * go through one (tied) model as two towers; the loss is symmetric InfoNCE between the
 * L2-normalised embeddings with a fixed temperature. */
#ifndef GC_DINOV3_TASK_H
#define GC_DINOV3_TASK_H

#include "../models/gc_dinov3.h"
#include "gc_clip_loss.h"
#include "gc_gradcache.h"

typedef struct gc_dinov3_task {
    gc_dinov3 *model;
    gc_gradcache gc;
    gc_tensor *log_scale;  /* [] f32 = log(1/temperature), not trained */
    int64_t loss_block_rows;
} gc_dinov3_task;

/* views a, b [B,3,H,W] f32; chunk <= 0: no gradient cache */
gc_status gc_dinov3_task_init(gc_dinov3_task *t, gc_dinov3 *m, gc_tensor *view_a, gc_tensor *view_b, int64_t chunk,
                              double temperature);
void gc_dinov3_task_free(gc_dinov3_task *t);
gc_status gc_dinov3_task_step(gc_dinov3_task *t, gc_rand_context rng, gc_gradcache_result *res);

#endif
