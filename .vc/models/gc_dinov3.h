/* DINOv3 ViT (Siméoni et al. 2025) as HF transformers' DINOv3ViTModel: patch conv with
 * bias, class token + register tokens, no absolute positions, 2-D rotary embedding on
 * the patch tokens, layer scale on both residual branches, final LayerNorm; the pooled
 * output is the class token (or the mean of the patch tokens). Facts: MODELS.md §2. */
#ifndef GC_DINOV3_H
#define GC_DINOV3_H

#include "../runtime/gc_rng.h"
#include "gc_layers.h"
#include "gc_params.h"

typedef struct gc_dinov3_config {
    int64_t hidden, layers, heads, intermediate, image_size, patch, channels, registers;
    gc_act act;
    double eps, attn_dropout, rope_theta, layerscale;
    bool query_bias, key_bias, value_bias, proj_bias, mlp_bias;
    /* Training mode only, as in HF (the hub checkpoints say rescale 2.0, shift and jitter
     * null, drop_path 0):
     * - pos_embed_* (0: None, off): augment_patches_center_coordinates on the RoPE patch
     *   coordinates, per axis c' = ((c + shift_a) * jitter_a) * rescale, shift_a ~
     *   U(-shift, shift), jitter_a and rescale log-uniform in [1/v, v] (rescale: one
     *   factor for both axes); see gc_dinov3_rope_augmentation for the draw.
     * - drop_path (drop_path_rate): stochastic depth with this same rate in every layer
     *   (HF has no linear schedule) on both residual branches, after the layer scale;
     *   per sample, keyed like dropout by the sample's index in the whole batch
     *   (gc_block.drop_path), so the masks do not depend on the chunking. */
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

/* The RoPE coordinate augmentation is one draw per forward call in HF. Here it is one
 * per RandContext (seed, step), not per sample: the chunks of a gradient-cache step,
 * their replays, checkpoint recomputes and an unchunked run all see the same
 * coordinates (the towers of a step differ: their seeds do). The uniforms are
 * u_e = gc_rand_uniform(seed, step, GC_DINOV3_ROPE_AUG_OP, 0, e): e = 0, 1 shift (y, x),
 * 2, 3 jitter (y, x), 4 rescale; v = lo + (hi - lo) u. */
#define GC_DINOV3_ROPE_AUG_OP ((3u << 16) | 0xFFF0u) /* above every layer's op_base + site */
/* The factors that context gives under config c (shift 0, jitter/rescale 1 where the
 * config says None); returns whether c augments at all. */
bool gc_dinov3_rope_augmentation(const gc_dinov3_config *c, gc_rand_context rc, float shift[2], float jitter[2],
                                 float *rescale);
/* The rotary tables a forward of a gh x gw patch grid would use now (training mode and
 * the current RandContext): f32 [gh*gw, head_dim] cos and sin, new references. */
gc_status gc_dinov3_rope(gc_dinov3 *m, int64_t gh, int64_t gw, gc_tensor **cos, gc_tensor **sin);

/* pixels [B, C, H, W] (H, W multiples of the patch; any size) -> last_hidden_state [B, 1+R+N, D] */
gc_tensor *gc_dinov3_forward(gc_dinov3 *m, gc_tensor *pixels);
/* pixels -> pooled embedding [B, D] (class token, or mean of patch tokens). For the class
 * token the last layer runs on that row alone (gc_block.out_rows; keys and values from
 * every token): row 0 of the forward's output, at about a sixth of the last layer's cost. */
gc_tensor *gc_dinov3_encode(gc_dinov3 *m, gc_tensor *pixels);

#endif
