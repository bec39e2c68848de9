/* The training configuration: a YAML file (libyaml) of flat keys, plus key=value
 * overrides from the command line. Unknown keys, wrong types and impossible values
 * are errors naming the file, the line and the key. */
#ifndef GC_CONFIG_H
#define GC_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "../runtime/gc_error.h"

#define GC_CFG_STR 512

typedef struct gc_train_config {
    /* model */
    char model[GC_CFG_STR];            /* a named architecture (clip-tiny, clip-vit-b16, ...) or an HF checkpoint dir */
    char tokenizer[GC_CFG_STR];        /* dir with vocab.json + merges.txt; "" = the model dir */
    /* the seed's keys */
    bool use_gradient_cache;
    int64_t gradient_cache_chunk_size;
    int64_t batch_size;                /* the whole batch, split into chunks */
    int64_t epochs;
    bool gradient_checkpointing;
    bool recompute;                    /* layernorm outputs and MLP activations redone in backward (less memory); false keeps them (faster) */
    bool use_lora;
    int64_t lora_r;
    double lora_alpha, lora_dropout;
    char lora_target_modules[GC_CFG_STR]; /* comma list (YAML list or string) */
    char mixed_precision[16];          /* bf16 | f32 */
    /* optimisation */
    double learning_rate, weight_decay, max_grad_norm, temperature;
    int64_t warmup_steps, max_steps;   /* max_steps 0: epochs decide */
    uint64_t seed;
    char device[32];
    /* data */
    char train_data[GC_CFG_STR];       /* CSV/TSV manifest, or WebDataset shards (a .tar, a list, a {000..009} pattern) */
    char val_data[GC_CFG_STR];
    char data_format[16];              /* csv | webdataset */
    char csv_separator[8];
    char csv_img_key[64], csv_caption_key[64];
    int64_t workers;
    int64_t synthetic_train, synthetic_val; /* > 0: make a synthetic shapes data set at train_data/val_data when absent */
    /* image-image pairs (DINOv3, tools/train_pairs.c) */
    char pair_format[16];              /* pairs: two image columns | labels: image + label, positives share the label */
    char csv_img_b_key[64], csv_label_key[64];
    char pool[8];                      /* cls | mean: the DINOv3 embedding */
    bool augment;                      /* random resized crop, flip, colour jitter on both views */
    /* output */
    char output_dir[GC_CFG_STR];
    char gemm_plan[GC_CFG_STR];        /* "" or a file of GEMM algorithms (gc_gemm_plan_use): same algorithms every run */
    int64_t eval_every, save_every, log_every;
    uint64_t set_mask;                 /* keys given in the file or on the command line (config.c's table order) */
} gc_train_config;

void gc_train_config_defaults(gc_train_config *c);
gc_status gc_train_config_load(const char *path, gc_train_config *c);
/* "key=value" with the same checks as the file */
gc_status gc_train_config_set(gc_train_config *c, const char *kv);
/* the cross-key checks (chunk <= batch, ...); `where` names the file for messages */
gc_status gc_train_config_validate(const gc_train_config *c, const char *where);
/* whether `key` was given (in the file or as key=value), not left at its default */
bool gc_train_config_was_set(const gc_train_config *c, const char *key);
/* One warning line on stderr for each given key in `keys` (NULL-terminated) that this
 * trainer does not use: a key for the other model family is almost always a mistake. */
void gc_train_config_warn_unused(const gc_train_config *c, const char *const *keys, const char *trainer, const char *where);
/* YAML text of the effective configuration (saved beside checkpoints) */
char *gc_train_config_to_yaml(const gc_train_config *c);

#endif
