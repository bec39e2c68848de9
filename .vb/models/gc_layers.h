/* Layers shared by the models: a linear layer with an optional LoRA adapter, and the
 * pre-LN transformer block used by CLIP (both towers) and DINOv3. */
#ifndef GC_LAYERS_H
#define GC_LAYERS_H

#include "../kernels/gc_ops.h"
#include "gc_params.h"

/* y = x W^T + b  (+ (alpha/r) * dropout(x) A^T B^T when a LoRA adapter is attached) */
typedef struct gc_lin {
    gc_tensor *w;        /* [out, in] */
    gc_tensor *b;        /* [out] or NULL */
    gc_tensor *lora_a;   /* [r, in] or NULL */
    gc_tensor *lora_b;   /* [out, r] */
    double lora_scale;   /* alpha / r */
    double lora_dropout;
} gc_lin;

gc_tensor *gc_lin_forward(const gc_lin *l, gc_tensor *x, uint32_t dropout_op);

/* LoRA (Hu et al. 2021) as PEFT configures it: rank, alpha (scale alpha/r), dropout,
 * and the target modules by their HF names ("q_proj,v_proj"). r == 0: no adapters. */
typedef struct gc_lora_options {
    int r;
    double alpha, dropout;
    const char *targets;  /* comma list; NULL or "": q_proj,v_proj (PEFT's default for these models) */
} gc_lora_options;

/* Declares "<prefix>.<site>.weight" [out, in] (and .bias [out]) in ps, plus the LoRA
 * pair "<prefix>.<site>.lora_A.weight" [r, in] / "lora_B.weight" [out, r] when `site`
 * is a target. */
gc_status gc_lin_declare(gc_params *ps, gc_lin *l, const char *prefix, const char *site, int64_t out, int64_t in,
                         bool bias, const gc_lora_options *lora);
/* Declares one parameter and returns its value tensor (NULL on error). */
gc_tensor *gc_param_declare(gc_params *ps, const char *name, int ndim, const int64_t *shape);
/* LoRA training: freeze every parameter that is not an adapter. */
gc_status gc_params_freeze_base(gc_params *ps);

typedef struct gc_block {
    gc_tensor *ln1_w, *ln1_b, *ln2_w, *ln2_b;
    gc_lin q, k, v, o, fc1, fc2;
    /* q, k and v's weights [3D, D] and biases [3D] packed (gc_block_pack_qkv; not owned),
     * or NULL: one GEMM makes all three where nothing comes between (no LoRA on them) */
    gc_tensor *qkv_w, *qkv_b;
    gc_tensor *ls1, *ls2;  /* layer scale [D] (DINOv3), or NULL */
    int64_t heads;
    gc_act act;
    double eps;
    double attn_dropout;   /* active only when the model is training */
    /* stochastic depth (DINOv3's drop_path_rate; active only when training): each
     * residual branch, after its layer scale, is zeroed for a whole sample with this
     * probability and scaled by 1/(1-p) otherwise; sample b of a chunk keeps it iff
     * gc_rand_uniform(seed, step, op_base + 7 (attention) or + 8 (MLP), sample_offset + b, 0) >= p */
    double drop_path;
    bool causal;
    uint32_t op_base;      /* random-stream ids: op_base + site, sites 0..8 */
    /* rotary embedding of tokens rope_start.. (DINOv3), not owned; NULL for none */
    gc_tensor *rope_cos, *rope_sin;
    int64_t rope_start;
    /* > 0: the output is [B, out_rows, D], the first out_rows tokens only (a last block
     * whose model reads only its class token): keys and values still come from every
     * token, the rest (q, attention, o, the MLP) runs on those rows, the same numbers as
     * those rows of the whole output. Applies where the rows do not depend on the others'
     * positions: not causal, no attention dropout (its mask is keyed by Lq), no rotary
     * embedding of those rows; otherwise, and at 0, every token. */
    int64_t out_rows;
} gc_block;

/* Packs b's q, k and v weights, and their biases (an absent one a gap of zeros), in ps
 * (gc_params_pack), for b->qkv_w and b->qkv_b: call after declaring them. */
gc_status gc_block_pack_qkv(gc_params *ps, gc_block *b);

/* x [B, L, D] -> [B, L, D] (or [B, out_rows, D]):
 * h = x + dp(ls1*o(attn(ln1 x)));  y = h + dp(ls2*fc2(act(fc1(ln2 h))))
 * (dp: drop_path, the identity when it is 0). The tape does not keep the two layernorm
 * outputs: backward recomputes them (gc_recompute_release; off: gc_recompute_set_enabled). */
gc_tensor *gc_block_forward(const gc_block *b, gc_tensor *x);
/* The same through gc_checkpoint when `checkpoint` is set (keeps only x; recomputes in backward). */
gc_tensor *gc_block_run(const gc_block *b, gc_tensor *x, bool checkpoint);

/* x [B, L, D], rows i32/i64 [B] (best on the host: read there to build the mask, no
 * wait for the GPU) -> [B, 1, D]: row rows[b] of sample b's block output, the same
 * numbers as gc_gather_rows of the whole output (CLIP's last text block: the embedding
 * reads only the pooled token). Keys and values come from every token; q (projected on
 * every row, then gathered, only under LoRA dropout on q), attention, o, the residual and
 * the MLP run on those rows.
 * A causal block masks keys after rows[b] ([B, 1, L], additive). With attention
 * dropout, drop_path or a rotary embedding the whole block runs and its rows are
 * gathered. b->out_rows does not apply. */
gc_tensor *gc_block_forward_rows(const gc_block *b, gc_tensor *x, gc_tensor *rows);
/* The same through gc_checkpoint when `checkpoint` is set (the node holds rows until its
 * backward re-runs the block: do not change its values before). */
gc_tensor *gc_block_run_rows(const gc_block *b, gc_tensor *x, gc_tensor *rows, bool checkpoint);
/* Tests only: off, gc_block_forward_rows always runs the whole block and gathers its
 * rows (the reference for the rows path). On by default, per thread like grad mode;
 * returns the previous value. */
bool gc_block_rows_set_enabled(bool on);

/* A model's input (pixels) on dev in dt, pool-owned and without history: x itself when it
 * already is (a batch kept on the device in the compute dtype is read in place, no copy
 * per chunk), else a converted copy (a chunk of a host batch is uploaded here). */
gc_tensor *gc_input_to(gc_tensor *x, gc_device dev, gc_dtype dt);

/* Deterministic N(0, std^2) host values for initialising weights. */
void gc_init_normal(float *out, int64_t n, double std, uint64_t seed, uint32_t stream);

#endif
