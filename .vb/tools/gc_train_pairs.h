/* `gcache train` for DINOv3: image-image contrastive training on pairs of images
 * (tools/train_pairs.c). gc_cli_train (tools/train.c) hands over to it when the
 * configured model is a DINOv3. */
#ifndef GC_TRAIN_PAIRS_H
#define GC_TRAIN_PAIRS_H

#include <stdbool.h>

#include "gc_config.h"

/* Is c->model a DINOv3: a checkpoint directory whose config.json says model_type
 * "dinov3_vit", or, when it is no directory, a name containing "dinov3" (the
 * architectures dinov3-*, or a mistyped checkpoint path, reported by the DINOv3 trainer)? */
bool gc_train_pairs_wanted(const gc_train_config *c);

/* Trains with a loaded, overridden and validated configuration (cfg_path names it in
 * messages); resume: NULL, a checkpoint, or an output_dir with `latest`. Returns the
 * exit status (errors printed as one line). */
int gc_cli_train_pairs(const gc_train_config *c, const char *cfg_path, const char *resume);

#endif
