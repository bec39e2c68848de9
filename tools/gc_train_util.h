/* Pieces of `gcache train` that stand alone: crash-safe checkpoint directories,
 * retrieval recall, metrics lines and the SVG plot. */
#ifndef GC_TRAIN_UTIL_H
#define GC_TRAIN_UTIL_H

#include <stdio.h>

#include "../autograd/gc_optim.h"
#include "../runtime/gc_tensor.h"

/* Recall@1/5/10 of retrieving row i of b from row i of a (both L2-normalised [N, D], any
 * device) by cosine similarity, in both directions: r[0..2] a->b, r[3..5] b->a. */
gc_status gc_recall_at_k(gc_tensor *a, gc_tensor *b, double r[6]);

/* The optimizer state (moments and step) as safetensors, with parameter names. */
gc_status gc_adamw_save(gc_adamw *o, const char *path);
gc_status gc_adamw_load(gc_adamw *o, const char *path);

/* mkdir -p; fsync of a file or directory by path */
gc_status gc_mkdirs(const char *path);
gc_status gc_fsync_path(const char *path);
/* Atomically replaces dst by the directory tmp (rename; the old dst is removed). */
gc_status gc_dir_commit(const char *tmp, const char *dst);
/* Writes text to path atomically (path.tmp, fsync, rename). */
gc_status gc_write_text(const char *path, const char *text);
/* Reads a whole text file (caller frees) */
char *gc_read_text(const char *path);

/* The checkpoint a --resume DIR names: DIR itself, or DIR/<name> when DIR/latest holds
 * a name (an output_dir). Written into ck (n bytes). */
gc_status gc_checkpoint_resolve(const char *dir, char *ck, size_t n);
/* Keeps only the lines of metrics.jsonl at path whose "step" is at most step (a killed
 * run may have logged past its last checkpoint); a missing file is left missing. */
gc_status gc_metrics_trim(const char *path, int64_t step);

/* An SVG line chart of up to 3 series (x, y) with a title; writes path atomically. */
typedef struct gc_series { const char *name; const double *x, *y; int n; } gc_series;
gc_status gc_svg_plot(const char *path, const char *title, const gc_series *left, int n_left, const char *left_label,
                      const gc_series *right, int n_right, const char *right_label);

#endif
