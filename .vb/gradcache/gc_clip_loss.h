/* CLIP's loss: symmetric InfoNCE over L2-normalised embeddings,
 *   logits = exp(logit_scale) * T I^T,  loss = (CE(logits, diag) + CE(logits^T, diag)) / 2,
 * computed in row blocks so the B x B logits never exist at once: the forward keeps
 * only per-row and per-column log-sum-exps; the backward recomputes each block. */
#ifndef GC_CLIP_LOSS_H
#define GC_CLIP_LOSS_H

#include "../kernels/gc_ops.h"

/* img, txt [B, P] (not normalised), logit_scale [] -> []. block_rows <= 0: 4096. */
gc_tensor *gc_clip_loss(gc_tensor *img, gc_tensor *txt, gc_tensor *logit_scale, int64_t block_rows);

/* The InfoNCE part on already-normalised i_n, t_n [B, P] f32: scale = exp(logit_scale). */
gc_tensor *gc_infonce(gc_tensor *i_n, gc_tensor *t_n, gc_tensor *logit_scale, int64_t block_rows);

#endif
