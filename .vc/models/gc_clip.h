/* CLIP (Radford et al. 2021) as HF transformers' CLIPModel: a ViT image tower and a
 * causal text tower, each ending in a projection, and a learnable logit_scale.
 * Any size from config.json; HF parameter names; facts in shared/reference/MODELS.md. */
#ifndef GC_CLIP_H
#define GC_CLIP_H

#include "gc_layers.h"
#include "gc_params.h"

typedef struct gc_clip_tower_config {
    int64_t hidden, layers, heads, intermediate;
    gc_act act;
    double eps, attn_dropout;
    /* vision */
    int64_t image_size, patch, channels;
    /* text */
    int64_t vocab, max_positions, eos_token_id, bos_token_id, pad_token_id;
} gc_clip_tower_config;

typedef struct gc_clip_config {
    gc_clip_tower_config vision, text;
    int64_t projection_dim;
    double logit_scale_init;
} gc_clip_config;

/* From an HF config.json; errors name the file and key. */
gc_status gc_clip_config_load(const char *path, gc_clip_config *cfg);
gc_status gc_clip_config_save(const gc_clip_config *cfg, const char *path);
/* "clip-vit-b16", "clip-vit-b32", "clip-tiny" */
gc_status gc_clip_config_named(const char *name, gc_clip_config *cfg);

typedef struct gc_clip gc_clip;

typedef struct gc_clip_options {
    gc_device device;
    gc_dtype dtype;           /* compute dtype: f32, or bf16 on CUDA (f32 master weights) */
    bool checkpointing;       /* recompute each block in backward */
    int lora_r;               /* 0: full fine-tuning; else LoRA adapters (base frozen) */
    double lora_alpha, lora_dropout;
    const char *lora_targets; /* comma list of q_proj,k_proj,v_proj,out_proj,fc1,fc2 */
} gc_clip_options;

/* Random initialisation (training from scratch, benchmarks). */
gc_status gc_clip_init(gc_clip **out, const gc_clip_config *cfg, const gc_clip_options *opt, uint64_t seed);
/* From an HF checkpoint directory (config.json + model.safetensors). */
gc_status gc_clip_load(gc_clip **out, const char *dir, const gc_clip_options *opt);
gc_status gc_clip_save(gc_clip *m, const char *dir); /* HF layout: config.json + model.safetensors */
void gc_clip_free(gc_clip *m);

const gc_clip_config *gc_clip_get_config(const gc_clip *m);
gc_params *gc_clip_params(gc_clip *m);
gc_tensor *gc_clip_logit_scale(gc_clip *m);   /* [] parameter */
void gc_clip_set_training(gc_clip *m, bool on); /* dropout on/off */

/* pixels [B, C, H, W] (f32, any device) -> image projections [B, P] (not normalised) */
gc_tensor *gc_clip_encode_image(gc_clip *m, gc_tensor *pixels);
/* ids [B, L] (i32/i64, host or device) -> text projections [B, P]. The tower is causal
 * and reads one row per text (its pooling position), so the columns after the last
 * pooling position of the batch change nothing: they are not run (a batch padded to 77
 * costs what its longest text does), unless dropout is drawing in the text tower. */
gc_tensor *gc_clip_encode_text(gc_clip *m, gc_tensor *ids);
/* Tests: off runs every column of ids (the columns past the last pooling position too).
 * Per thread; returns the previous setting. */
bool gc_clip_text_trim_set_enabled(bool on);
/* The pooling position of each row, as transformers computes it (host ids). */
gc_status gc_clip_text_pool_positions(const gc_clip_config *cfg, const gc_tensor *ids, int64_t *pos);

#endif
