/* Pieces of `gcache train` that stand alone or that both trainers (tools/train.c for
 * CLIP, tools/train_pairs.c for DINOv3 pairs) share: crash-safe checkpoint directories
 * and their trainer state, retrieval recall, the loader options, metrics.jsonl with the
 * progress line, and the SVG plot. */
#ifndef GC_TRAIN_UTIL_H
#define GC_TRAIN_UTIL_H

#include <stdbool.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "../autograd/gc_optim.h"
#include "../models/gc_lora.h"
#include "../runtime/gc_device.h"
#include "../runtime/gc_tensor.h"
#include "gc_config.h"
#include "gc_data.h"

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

/* stat(2) says a directory / anything; the directory part of a path ("." when none) */
bool gc_path_is_dir(const char *p);
bool gc_path_exists(const char *p);
void gc_path_dirname(const char *path, char *out, size_t n);
double gc_now_s(void); /* monotonic seconds */

/* c->device parsed into *dev; an error naming `where` when it is no device, or CUDA where
 * none is usable. */
gc_status gc_train_device(const gc_train_config *c, const char *where, gc_device *dev);

/* ---------------------------------------------------------------- checkpoints
 * output_dir/checkpoint-<step>: the model (the trainer's part), with use_lora its adapters
 * in PEFT layout, optimizer.safetensors, trainer_state.json, train_config.yaml; written as
 * checkpoint-<step>.tmp and renamed, then `latest` names it. A run resumed from it
 * continues bit-exactly. */

/* Creates output_dir/checkpoint-<step>.tmp afresh (a crashed run's leftover removed);
 * its path into tmp (n bytes). The trainer then writes its model files into it. */
gc_status gc_checkpoint_begin(const char *output_dir, int64_t step, char *tmp, size_t n);
/* trainer_state.json's common keys: step, data_epoch/batch/cursor (where the data goes
 * on), seed, total_steps. A trainer may add its own before gc_checkpoint_finish. */
cJSON *gc_trainer_state_new(const gc_train_config *c, int64_t step, int64_t total_steps, gc_loader_pos next);
/* Completes tmp: with c->use_lora the adapters of opt's parameters (PEFT), the optimizer
 * state, `state` as trainer_state.json (deleted here), the configuration; then renames it
 * to checkpoint-<step> and points `latest` at it. */
gc_status gc_checkpoint_finish(const char *tmp, const gc_train_config *c, gc_adamw *opt, const gc_lora_options *lora,
                               int64_t step, cJSON *state);
/* The checkpoint a --resume DIR names (into ck, n bytes) and its trainer_state.json: the
 * step and the data position; *state (caller deletes) for the trainer's own keys. */
gc_status gc_checkpoint_read_state(const char *dir, char *ck, size_t n, int64_t *step, gc_loader_pos *next,
                                   cJSON **state);
/* Checkpoint ck into opt's parameters and opt: the weights (names ending in one of
 * `ignore` skipped; with c->use_lora the base weights, then the PEFT adapters), the
 * optimizer state, whose step must be `step`. Prints "resumed from". */
gc_status gc_checkpoint_load_weights(const char *ck, const gc_train_config *c, gc_adamw *opt, const gc_lora_options *lora,
                                     const char *const *ignore, int64_t step);

/* ---------------------------------------------------------------- data */

/* The training loader: batch_size, workers (at least 1), seed, from `start`; CLIP's
 * preprocessing at S (the DINOv3 trainer sets its own); pinned buffers on cuda. */
gc_loader_opts gc_train_loader_opts(const gc_train_config *c, int S, gc_loader_pos start);
/* An evaluation's: n samples once, in order, batches of at most batch_size, the last kept. */
gc_loader_opts gc_eval_loader_opts(const gc_train_config *c, int S, int64_t n);
/* A CSV/TSV manifest's second column (key: its config key's name, value: the column) must
 * not be csv_img_key's: an error naming both keys, at start-up, before any data is read
 * or written. WebDataset shards have no columns. */
gc_status gc_train_check_columns(const gc_train_config *c, const char *key, const char *value, const char *where);
/* The training loader's next batch, or *b NULL where the run's data ends: the loader ran
 * out, or a run of `epochs` (no max_steps) reached its last epoch's end. Unreadable images
 * can leave an epoch a batch short of the steps planned from the data's size; the run
 * then ends with its last epoch's data instead of a batch of the next. */
gc_status gc_train_next_batch(gc_loader *l, const gc_train_config *c, const gc_batch **b);
/* The step is one to evaluate / save at: every `every` steps (> 0) but the last, which
 * always does both. */
bool gc_train_due(int64_t step, int64_t every, int64_t total_steps);
/* Tests: GC_TRAIN_KILL_AT_STEP=N kills the process (SIGKILL) after step N, as a crash would. */
void gc_train_test_kill(int64_t step);

/* ---------------------------------------------------------------- metrics and progress */

typedef struct gc_train_log {
    FILE *metrics;         /* output_dir/metrics.jsonl, appended to */
    bool tty;              /* stdout is a terminal: progress on one rewritten line */
    const char *unit;      /* what a batch row is: "samples", "pairs" (metrics key <unit>_per_s) */
    int64_t total_steps, log_every, step0, since;
    double t_start, t_last;
    /* for the plot: the loss per step; two recall@1 curves per evaluation */
    double *loss_x, *loss_y, *ev_x, *ev_y[2];
    int n_loss, n_ev, cap_loss, cap_ev;
} gc_train_log;

/* Opens output_dir/metrics.jsonl: resumed at `step`, without the lines a killed run
 * logged after it; otherwise started empty. */
gc_status gc_train_log_open(gc_train_log *g, const char *output_dir, bool resume, int64_t step, const char *unit);
/* Before the first step: the clock for the throughput and the ETA. */
void gc_train_log_start(gc_train_log *g, int64_t step, int64_t total_steps, int64_t log_every);
/* After step `step` on a batch of n rows of data epoch `epoch`: the loss joins the plot;
 * every log_every steps and at the last a metrics line (step, epoch, loss, lr, grad_norm,
 * <unit>_per_s, peak_memory_bytes) and a progress line. */
void gc_train_log_step(gc_train_log *g, int64_t step, int64_t epoch, int64_t n, double loss, double lr, gc_adamw *opt,
                       gc_device dev);
/* Before a line that must not land on the progress line: "\r\033[K" on a terminal, else "". */
const char *gc_train_log_eol(const gc_train_log *g);
/* An evaluation's two recall@1 values join the plot (the trainer writes its line). */
void gc_train_log_eval(gc_train_log *g, int64_t step, double r1_a, double r1_b);
/* output_dir/training.svg (the loss; the recall@1 curves named ev_a and ev_b, ev_b NULL
 * for one; a failure is a warning) and the closing "done:" line. */
void gc_train_log_finish(gc_train_log *g, const char *output_dir, int64_t step, const char *title, const char *ev_a,
                         const char *ev_b);
void gc_train_log_free(gc_train_log *g);

/* An SVG line chart of up to 3 series (x, y) with a title; writes path atomically. */
typedef struct gc_series { const char *name; const double *x, *y; int n; } gc_series;
gc_status gc_svg_plot(const char *path, const char *title, const gc_series *left, int n_left, const char *left_label,
                      const gc_series *right, int n_right, const char *right_label);

#endif
