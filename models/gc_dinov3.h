/* DINOv3 ViT (Siméoni et al. 2025) as HF transformers' DINOv3ViTModel: patch conv with
 * bias, class token + register tokens, no absolute positions, 2-D rotary embedding on
 * the patch tokens, layer scale on both residual branches, final LayerNorm; the pooled
 * output is the class token (or the mean of the patch tokens). Facts: MODELS.md §2. */
#ifndef GC_DINOV3_H
#define GC_DINOV3_H

#include "gc_layers.h"
#include "gc_params.h"

typedef struct gc_dinov3_config {
    int64_t hidden, layers, heads, intermediate, image_size, patch, channels, registers;
    gc_act act;
    double eps, attn_dropout, rope_theta, layerscale;
    bool query_bias, key_bias, value_bias, proj_bias, mlp_bias;
    /* HF's train-mode RoPE coordinate augmentation (0: None) and stochastic depth: read
     * from and written back to config.json, NOT applied here (gradcache never augments
     * the coordinates nor drops paths; the hub checkpoints say rescale 2.0, drop_path 0). */
    double pos_embed_shift, pos_embed_jitter, pos_embed_rescale, drop_path;
} gc_dinov3_config;

gc_status gc_dinov3_config_load(const char *path, gc_dinov3_config *cfg);
gc_status gc_dinov3_config_save(const gc_dinov3_config *cfg, const char *path);
gc_status gc_dinov3_config_named(const char *name, gc_dinov3_config *cfg); /* "dinov3-vit-b16", "dinov3-tiny" */

typedef enum gc_dinov3_pool { GC_DINOV3_POOL_CLS = 0, GC_DINOV3_POOL_MEAN } gc_dinov3_pool;

typedef struct gc_dinov3_options {
    gc_device device;
    gc_dtype dtype;
    bool checkpointing;
    gc_lora_options lora;     /* targets by HF name: q_proj, k_proj, v_proj, o_proj, up_proj, down_proj */
    gc_dinov3_pool pool;
} gc_dinov3_options;

typedef struct gc_dinov3 gc_dinov3;

gc_status gc_dinov3_init(gc_dinov3 **out, const gc_dinov3_config *cfg, const gc_dinov3_options *opt, uint64_t seed);
gc_status gc_dinov3_load(gc_dinov3 **out, const char *dir, const gc_dinov3_options *opt);
gc_status gc_dinov3_save(gc_dinov3 *m, const char *dir);
void gc_dinov3_free(gc_dinov3 *m);
gc_params *gc_dinov3_params(gc_dinov3 *m);
const gc_dinov3_config *gc_dinov3_get_config(const gc_dinov3 *m);
void gc_dinov3_set_training(gc_dinov3 *m, bool on);

/* pixels [B, C, H, W] (H, W multiples of the patch; any size) -> last_hidden_state [B, 1+R+N, D] */
gc_tensor *gc_dinov3_forward(gc_dinov3 *m, gc_tensor *pixels);
/* pixels -> pooled embedding [B, D] (class token, or mean of patch tokens) */
gc_tensor *gc_dinov3_encode(gc_dinov3 *m, gc_tensor *pixels);

#endif
