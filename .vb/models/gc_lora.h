/* LoRA adapters in PEFT's file format, and merging them into the base weights.
 *
 * The adapters are the parameters gc_lin_declare adds ("<module>.lora_A.weight" [r, in],
 * "<module>.lora_B.weight" [out, r]); the model's own checkpoint (gc_params_save with
 * ".lora_") leaves them out. A PEFT adapter directory (peft 0.21, LoraConfig, no task
 * head) holds:
 *   adapter_config.json        {"peft_type": "LORA", "r", "lora_alpha", "lora_dropout",
 *                               "target_modules": [...], "bias": "none", ...}
 *   adapter_model.safetensors  F32 "base_model.model.<module>.lora_A.weight" etc.: the
 *                               HF parameter name behind PEFT's wrapper prefix, without
 *                               the adapter name ("default") that PEFT keeps in memory.
 * Scale alpha / r (no rsLoRA, no DoRA, no per-module rank or alpha patterns). */
#ifndef GC_LORA_H
#define GC_LORA_H

#include <stddef.h>

#include "gc_layers.h"
#include "gc_params.h"

#define GC_LORA_PEFT_PREFIX "base_model.model."

/* The factor gc_lin_declare applies to B A x: alpha / r, or 1 when alpha <= 0 (unset). */
double gc_lora_scale(const gc_lora_options *o);

/* Checks a comma list of target modules (names trimmed of spaces, as gc_lin_declare
 * reads them) against a model's module names (`known`, NULL-terminated): an empty list,
 * an empty name or one not in `known` is GC_ERR_INVALID, "<where>: ..." naming it and
 * listing the accepted names ("<model> modules: ..."). Without it a typo would train
 * no adapter at all. */
gc_status gc_lora_check_targets(const char *list, const char *const *known, const char *model, const char *where);

/* Reads dir/adapter_config.json into *o so a model can be built to fit the adapter:
 * r, alpha, dropout, and targets as a comma list written into `targets` (n bytes;
 * o->targets points to it). Refuses what gradcache cannot reproduce (another peft_type,
 * use_dora, use_rslora, rank/alpha patterns, bias other than "none", modules_to_save,
 * target_modules given as a regular expression), naming the key. */
gc_status gc_lora_config_load(const char *dir, gc_lora_options *o, char *targets, size_t n);

/* Writes adapter_config.json and adapter_model.safetensors into dir (created if needed;
 * each file atomically: the tensors first, the config last). r and target_modules are
 * those of the adapters in ps; lora_alpha is the one that gives gc_lora_scale(o) (so
 * PEFT applies the same scale); base_model_name_or_path may be NULL (written as null).
 * auto_mapping (what AutoPeftModel needs) is written when ps is recognisably CLIPModel
 * or DINOv3ViTModel. */
gc_status gc_lora_save_peft(gc_params *ps, const gc_lora_options *o, const char *base_model_name_or_path,
                            const char *dir);

/* Loads a PEFT adapter directory into the adapters of ps (value, and master when there
 * is one). Checks the config against the model first (r, the scale against
 * gc_lora_scale(o), target_modules against the modules ps adapts) and the tensors
 * (every missing, unexpected or mis-shaped one named, in one line: GC_ERR_FORMAT);
 * nothing is written unless everything fits. */
gc_status gc_lora_load_peft(gc_params *ps, const gc_lora_options *o, const char *dir);

/* Merges every adapter whose module name starts with prefix_filter (NULL or "": all):
 * W += gc_lora_scale(o) * B A, computed in f32 on the parameters' device (on the f32
 * master when W has one, else on an f32 copy of the bf16 value, which is then rounded
 * back), then the compute copy is refreshed. Afterwards that adapter's B is ZERO (value
 * and master), so the forward is unchanged (not doubled), gc_clip_save writes a plain HF
 * checkpoint equal to PEFT's merge_and_unload(), and training may go on from a zero B. */
gc_status gc_lora_merge(gc_params *ps, const gc_lora_options *o, const char *prefix_filter);

#endif
