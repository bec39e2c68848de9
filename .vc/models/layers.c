#include "gc_layers.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/gc_rng.h"

gc_tensor *gc_lin_forward(const gc_lin *l, gc_tensor *x, uint32_t dropout_op)
{
    gc_tensor *y = gc_linear(x, l->w, l->b);
    if (!l->lora_a) return y;
    /* LoRA: the low-rank path sees its own dropout of x, as in PEFT */
    gc_tensor *xd = gc_dropout(x, l->lora_dropout, dropout_op);
    gc_tensor *d = gc_linear(gc_linear(xd, l->lora_a, NULL), l->lora_b, NULL);
    return gc_add(y, gc_scale(d, l->lora_scale));
}

/* A residual branch a [B, L, D] times its layer scale ls [D] (or NULL) and, under
 * drop_path p > 0, times the per-sample keep mask m [B, 1, 1] (0 or 1/(1-p), from
 * gc_dropout of ones: sample b's draw is element 0 of row sample_offset + b). The mask
 * folds into the layer scale, a ls*m [B, 1, D] in f32 rounded once to a's dtype, so the
 * branch costs one full-size product as without drop_path. */
static gc_tensor *scale_branch(const gc_block *b, gc_tensor *a, gc_tensor *ls, uint32_t op)
{
    if (!a) return NULL;
    if (!(b->drop_path > 0)) return ls ? gc_mul(a, ls) : a;
    gc_tensor *ones = gc_pool_add(gc_tensor_new(GC_F32, a->device, 3, GC_SHAPE(a->shape[0], 1, 1)));
    if (!ones || gc_tensor_fill(ones, 1.0) != GC_OK) return NULL;
    gc_tensor *keep = gc_dropout(ones, b->drop_path, op);
    gc_tensor *s = ls ? gc_mul(gc_cast(ls, GC_F32), keep) : keep;
    return gc_mul(a, gc_cast(s, a->dtype));
}

/* x + dp(ls * a): one fused pass where there is a layer scale and no drop_path */
static gc_tensor *residual_add(const gc_block *b, gc_tensor *x, gc_tensor *a, gc_tensor *ls, uint32_t op)
{
    if (ls && a && !(b->drop_path > 0)) return gc_add_scaled(x, a, ls);
    return gc_add(x, scale_branch(b, a, ls, op));
}

/* Does the layer scale ls of the branch ending in linear l fold into l's weights
 * (gc_linear_scaled)? Only with nothing between them: no LoRA path, no drop_path mask. */
static bool fold_ls(const gc_block *b, const gc_lin *l, const gc_tensor *ls)
{
    return ls && !l->lora_a && !(b->drop_path > 0);
}

/* The query rows a block computes: its first out_rows where those rows mean the same
 * as in the whole block (see gc_block.out_rows), else all L. */
static int64_t query_rows(const gc_block *b, int64_t L)
{
    int64_t n = b->out_rows;
    if (n <= 0 || n >= L || b->causal || b->attn_dropout > 0 || (b->rope_cos && n > b->rope_start)) return L;
    return n;
}

static _Thread_local bool rows_on = true;

bool gc_block_rows_set_enabled(bool on)
{
    bool prev = rows_on;
    rows_on = on;
    return prev;
}

/* The additive mask [B, 1, L] on dev that makes the one query of sample b, at row
 * rows[b], causal: 0 for keys <= rows[b], -inf after. Pool-owned; NULL on error. */
static gc_tensor *row_causal_mask(gc_tensor *rows, int64_t B, int64_t L, gc_device dev)
{
    gc_tensor *p = gc_tensor_new(GC_I64, GC_CPU, 1, GC_SHAPE(B));
    float *m = malloc(sizeof(float) * (size_t)(B * L + 1));
    gc_tensor *mask = NULL;
    if (!m) gc_error_set(GC_ERR_OOM, "out of host memory");
    if (m && p && gc_tensor_copy_into(p, rows, false) == GC_OK) {
        const int64_t *r = gc_tensor_data(p);
        int64_t b = 0;
        for (; b < B && r[b] >= 0 && r[b] < L; b++)
            for (int64_t j = 0; j < L; j++) m[b * L + j] = j <= r[b] ? 0.0f : -INFINITY;
        if (b < B)
            gc_error_set(GC_ERR_INVALID, "block: row %lld of sample %lld is outside [0, %lld)", (long long)r[b],
                         (long long)b, (long long)L);
        else
            mask = gc_pool_add(gc_tensor_from_data(GC_F32, dev, 3, GC_SHAPE(B, 1, L), m));
    }
    free(m);
    gc_tensor_release(p);
    return mask;
}

/* Whether pack is exactly the parts (NULL: a gap of its size), one after another, in its
 * values and, while they train, in its gradient: then one linear over the pack is the
 * three. A member frozen alone, or given storage of its own, and it is not: three
 * linears then. */
static bool pack_whole(const gc_tensor *pack, gc_tensor *const *part, int64_t rows)
{
    const bool g = gc_tensor_needs_grad(pack);
    const gc_tensor *G = gc_tensor_grad(pack);
    const int64_t rn = gc_tensor_numel(pack) / pack->shape[0];
    for (int j = 0; j < 3; j++) {
        const gc_tensor *t = part[j], *tg = gc_tensor_grad(t);
        if (!t) continue; /* a gap (a bias that is not there) */
        const int64_t off = j * rows * rn;
        if (t->storage != pack->storage || t->offset != pack->offset + off || gc_tensor_needs_grad(t) != g ||
            (g && (!tg || tg->storage != G->storage || tg->offset != G->offset + off)))
            return false;
    }
    return true;
}

/* One GEMM for q, k and v: the weights packed and whole, and nothing between (LoRA). */
static bool qkv_fused(const gc_block *b)
{
    if (!b->qkv_w || b->q.lora_a || b->k.lora_a || b->v.lora_a) return false;
    const int64_t D = b->q.w->shape[0];
    gc_tensor *w[3] = {b->q.w, b->k.w, b->v.w}, *bs[3] = {b->q.b, b->k.b, b->v.b};
    if (!pack_whole(b->qkv_w, w, D)) return false;
    return b->qkv_b ? pack_whole(b->qkv_b, bs, D) : !bs[0] && !bs[1] && !bs[2];
}

gc_status gc_block_pack_qkv(gc_params *ps, gc_block *b)
{
    const gc_lin *l[3] = {&b->q, &b->k, &b->v};
    int iw[3], ib[3];
    int64_t gap[3];
    bool any_b = false;
    for (int j = 0; j < 3; j++) {
        iw[j] = gc_params_index(ps, l[j]->w);
        ib[j] = gc_params_index(ps, l[j]->b);
        gap[j] = l[j]->w ? l[j]->w->shape[0] : 0;
        any_b = any_b || l[j]->b;
        if (iw[j] < 0 || (l[j]->b && ib[j] < 0))
            return gc_error_set(GC_ERR_INVALID, "pack of q, k and v: a weight or bias is not among the parameters");
    }
    if (!(b->qkv_w = gc_params_pack(ps, 3, iw, NULL))) return GC_PENDING();
    b->qkv_b = NULL;
    if (any_b && !(b->qkv_b = gc_params_pack(ps, 3, ib, gap))) return GC_PENDING();
    return GC_OK;
}

/* The block on query rows: the first n (n == L: all), or with rows [B] (n == 1) row
 * rows[b] of sample b; keys and values from every token either way. */
static gc_tensor *block_forward(const gc_block *b, gc_tensor *x, int64_t n, gc_tensor *rows)
{
    int64_t B = x->shape[0], L = x->shape[1], D = x->shape[2], H = b->heads;
    gc_pool *pool = gc_pool_push(); /* the block's intermediates die here unless the tape keeps them */
    /* one query per sample sees keys up to its own row: causality as a mask */
    gc_tensor *mask = rows && b->causal ? row_causal_mask(rows, B, L, x->device) : NULL;
    if (rows && b->causal && !mask) {
        gc_pool_pop(pool);
        return NULL;
    }
    /* Three stages, each in a pool of its own: what only one stage reads (a layernorm
     * output, the attention branch) is freed before the next allocates, so the block's
     * peak is what the tape keeps plus one stage's work, not plus every temporary. */
    gc_pool *st = gc_pool_push();
    gc_tensor *h = gc_layernorm(x, b->ln1_w, b->ln1_b, b->eps);
    gc_tensor *norm = gc_tensor_retain(h);
    gc_tensor *q, *k, *v;
    const bool fused = n == L && !rows && qkv_fused(b);
    if (fused) {
        /* one GEMM [B, L, 3D]; q, k and v are views of it, and their gradients regions of
         * its gradient (gc_grad_target_view), so its backward is one GEMM too. (On fewer
         * query rows, the tape would keep all of q with k and v: three GEMMs there.) */
        gc_tensor *qkv = gc_view(gc_linear(h, b->qkv_w, b->qkv_b), 4, GC_SHAPE(B, L, 3 * H, D / H));
        q = gc_slice(qkv, 2, 0, H);
        k = gc_slice(qkv, 2, H, 2 * H);
        v = gc_slice(qkv, 2, 2 * H, 3 * H);
    } else {
        /* n < L: q of the query rows alone, projected from their rows of h. Under LoRA
         * dropout on q (its mask keyed by the element's place in x) q is projected on
         * every row and its query rows copied out, as the whole block draws. */
        gc_pool *qp = gc_pool_push();
        if (n < L && !(b->q.lora_a && b->q.lora_dropout > 0)) {
            gc_tensor *hq = rows ? gc_gather_rows(h, rows) : gc_contiguous(gc_slice(h, 1, 0, n)); /* [B, n, D] */
            q = gc_lin_forward(&b->q, hq, b->op_base + 1);
        } else {
            q = gc_lin_forward(&b->q, h, b->op_base + 1);                             /* [B, L, D] */
            q = rows ? gc_gather_rows(q, rows) : n < L ? gc_contiguous(gc_slice(q, 1, 0, n)) : q;
        }
        q = gc_pool_keep(gc_view(q, 4, GC_SHAPE(B, n, H, D / H)));
        gc_pool_pop(qp);
        k = gc_view(gc_lin_forward(&b->k, h, b->op_base + 2), 4, GC_SHAPE(B, L, H, D / H));
        v = gc_view(gc_lin_forward(&b->v, h, b->op_base + 3), 4, GC_SHAPE(B, L, H, D / H));
    }
    if (b->rope_cos) { /* the first n < L rows are below rope_start: never rotated; rows never get here */
        /* q and k of the fused output rotated where they are: the attention keeps that
         * storage for v, and would keep it besides rotated copies */
        gc_tensor *(*rope)(gc_tensor *, gc_tensor *, gc_tensor *, int64_t) = fused ? gc_rope_in_place : gc_rope;
        if (n == L) q = rope(q, b->rope_cos, b->rope_sin, b->rope_start);
        k = rope(k, b->rope_cos, b->rope_sin, b->rope_start);
    }
    q = gc_tensor_retain(q), k = gc_tensor_retain(k), v = gc_tensor_retain(v); /* until the attention has run */
    gc_pool_pop(st);
    /* the layernorm outputs are cheap to redo: the tape frees them until their
     * consumers' backward (kept where they escaped or are not on the tape) */
    gc_recompute_release(norm);
    st = gc_pool_push();
    gc_attn_opts ao = {.causal = b->causal && !rows, .mask = mask, .dropout = b->attn_dropout, .dropout_op = b->op_base};
    gc_tensor *a = gc_view(gc_attention(q, k, v, &ao), 3, GC_SHAPE(B, n, D));
    gc_tensor_release(q), gc_tensor_release(k), gc_tensor_release(v); /* the GEMM path saved copies */
    gc_tensor *xr = rows ? gc_view(gc_gather_rows(x, rows), 3, GC_SHAPE(B, 1, D)) : n < L ? gc_slice(x, 1, 0, n) : x;
    /* a separate add here: with the residual as C, cuBLASLt's kernel for this short
     * GEMM (K = D) took twice as long on the H200 (fc2's below, K = 4D, gains); a layer
     * scale folds into the weights where nothing comes between (no LoRA, no drop_path) */
    gc_tensor *r = gc_pool_keep(fold_ls(b, &b->o, b->ls1)
                                    ? gc_add(xr, gc_linear_scaled(a, b->o.w, b->o.b, b->ls1, NULL))
                                    : residual_add(b, xr, gc_lin_forward(&b->o, a, b->op_base + 4), b->ls1, b->op_base + 7));
    gc_pool_pop(st);
    st = gc_pool_push();
    gc_tensor *m = gc_layernorm(r, b->ln2_w, b->ln2_b, b->eps);
    norm = gc_tensor_retain(m);
    /* the MLP keeps only fc1's output; fc2 recomputes the activation in backward */
    const bool plain = !(b->drop_path > 0) && !b->ls2 && !b->fc2.lora_a; /* a plain residual: fc2's GEMM C input */
    /* fc1 and its activation in one call (gc_linear_and_act: one GEMM with GC_GEMM_SM90=act
     * on Hopper), unless LoRA or drop_path come between */
    const bool act_by_fc1 = !b->fc1.lora_a && (plain || fold_ls(b, &b->fc2, b->ls2));
    gc_tensor *act = NULL, *act_bias = NULL; /* act = act(m + act_bias): fc1's bias, where its GEMM left it out */
    m = gc_pool_keep(act_by_fc1 ? gc_linear_and_act(m, b->fc1.w, b->fc1.b, b->act, &act, &act_bias)
                                : gc_lin_forward(&b->fc1, m, b->op_base + 5));
    if (act && act != m) gc_pool_keep(act); /* freed with the block's pool, after fc2 has read it */
    gc_pool_pop(st);
    gc_recompute_release(norm);
    gc_tensor *y;
    if (act_by_fc1) { /* the layer scale, if any, in fc2's weights */
        y = gc_linear_act_given(m, act, b->act, b->fc2.w, b->fc2.b, b->ls2, r, act_bias);
    } else if (plain) {
        y = gc_linear_act_res(m, b->act, b->fc2.w, b->fc2.b, r);
    } else if (fold_ls(b, &b->fc2, b->ls2)) {
        y = gc_linear_act_scaled(m, b->act, b->fc2.w, b->fc2.b, b->ls2, r);
    } else {
        m = b->fc2.lora_a ? gc_lin_forward(&b->fc2, gc_activation(m, b->act), b->op_base + 6)
                          : gc_linear_act(m, b->act, b->fc2.w, b->fc2.b);
        y = residual_add(b, r, m, b->ls2, b->op_base + 8);
    }
    y = gc_pool_keep(y);
    gc_pool_pop(pool);
    return y;
}

gc_tensor *gc_block_forward(const gc_block *b, gc_tensor *x)
{
    return x ? block_forward(b, x, query_rows(b, x->shape[1]), NULL) : NULL;
}

gc_tensor *gc_block_forward_rows(const gc_block *b, gc_tensor *x, gc_tensor *rows)
{
    if (!x || !rows) return NULL;
    if (x->ndim != 3 || rows->ndim != 1 || rows->shape[0] != x->shape[0] || (rows->dtype != GC_I32 && rows->dtype != GC_I64)) {
        char sx[GC_SHAPE_STR_LEN], sr[GC_SHAPE_STR_LEN];
        gc_error_set(GC_ERR_SHAPE, "block: rows %s %s %s must be i32/i64 [B] for x %s [B, L, D]", gc_tensor_label(rows),
                     gc_dtype_name(rows->dtype), gc_shape_str(rows, sr, sizeof sr), gc_shape_str(x, sx, sizeof sx));
        return NULL;
    }
    /* the rows alone give the numbers of the whole block unless a draw is keyed by the
     * query's index (attention dropout) or a query is rotated by its position (rope);
     * drop_path draws per sample and would fit, but no caller needs it: whole block */
    if (rows_on && !(b->attn_dropout > 0) && !(b->drop_path > 0) && !b->rope_cos) return block_forward(b, x, 1, rows);
    gc_pool *p = gc_pool_push();
    gc_tensor *y = block_forward(b, x, x->shape[1], NULL);                     /* [B, L, D] */
    y = gc_pool_keep(gc_view(gc_gather_rows(y, rows), 3, GC_SHAPE(x->shape[0], 1, x->shape[2])));
    gc_pool_pop(p);
    return y;
}

gc_tensor *gc_input_to(gc_tensor *x, gc_device dev, gc_dtype dt)
{
    if (!x) return NULL;
    if (gc_device_eq(x->device, dev) && x->dtype == dt) return gc_detach(x);
    return gc_pool_add(gc_tensor_to(x, dev, dt));
}

static gc_tensor *block_fn(gc_tensor *x, void *closure) { return gc_block_forward(closure, x); }

gc_tensor *gc_block_run(const gc_block *b, gc_tensor *x, bool checkpoint)
{
    return checkpoint ? gc_checkpoint(block_fn, (void *)b, x) : gc_block_forward(b, x);
}

/* what a checkpointed rows block re-runs with: the node keeps rows until its backward */
typedef struct rows_closure {
    const gc_block *b;
    gc_tensor *rows;
} rows_closure;

static gc_tensor *rows_fn(gc_tensor *x, void *closure)
{
    const rows_closure *c = closure;
    return gc_block_forward_rows(c->b, x, c->rows);
}

static void rows_closure_free(void *closure)
{
    rows_closure *c = closure;
    gc_tensor_release(c->rows);
    free(c);
}

gc_tensor *gc_block_run_rows(const gc_block *b, gc_tensor *x, gc_tensor *rows, bool checkpoint)
{
    if (!checkpoint || !x || !rows) return gc_block_forward_rows(b, x, rows);
    rows_closure *c = malloc(sizeof *c);
    if (!c) {
        gc_error_set(GC_ERR_OOM, "out of host memory");
        return NULL;
    }
    *c = (rows_closure){b, gc_tensor_retain(rows)};
    return gc_checkpoint_owned(rows_fn, c, rows_closure_free, x);
}

void gc_init_normal(float *out, int64_t n, double std, uint64_t seed, uint32_t stream)
{
    for (int64_t i = 0; i < n; i++) {
        double u1 = gc_rand_uniform(seed, 0, stream, 1, 2 * (uint64_t)i) + 1.0 / 33554432.0;
        double u2 = gc_rand_uniform(seed, 0, stream, 1, 2 * (uint64_t)i + 1);
        out[i] = (float)(std * sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
    }
}

gc_tensor *gc_param_declare(gc_params *ps, const char *name, int ndim, const int64_t *shape)
{
    int i = gc_params_add(ps, name, ndim, shape);
    return i < 0 ? NULL : ps->items[i].value;
}

static bool lora_targets(const gc_lora_options *o, const char *site)
{
    if (!o || o->r <= 0) return false;
    const char *list = o->targets && *o->targets ? o->targets : "q_proj,v_proj";
    size_t n = strlen(site);
    for (const char *p = list; *p;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        while (len && *p == ' ') { p++; len--; }
        while (len && p[len - 1] == ' ') len--; /* "q_proj , v_proj" as gc_lora_check_targets reads it */
        if (len == n && !strncmp(p, site, n)) return true;
        if (!e) break;
        p = e + 1;
    }
    return false;
}

gc_status gc_lin_declare(gc_params *ps, gc_lin *l, const char *prefix, const char *site, int64_t out, int64_t in,
                         bool bias, const gc_lora_options *lora)
{
    char name[320];
    memset(l, 0, sizeof *l);
    snprintf(name, sizeof name, "%s.%s.weight", prefix, site);
    if (!(l->w = gc_param_declare(ps, name, 2, GC_SHAPE(out, in)))) return GC_PENDING();
    if (bias) {
        snprintf(name, sizeof name, "%s.%s.bias", prefix, site);
        if (!(l->b = gc_param_declare(ps, name, 1, GC_SHAPE(out)))) return GC_PENDING();
    }
    if (lora_targets(lora, site)) {
        int64_t r = lora->r;
        snprintf(name, sizeof name, "%s.%s.lora_A.weight", prefix, site);
        if (!(l->lora_a = gc_param_declare(ps, name, 2, GC_SHAPE(r, in)))) return GC_PENDING();
        snprintf(name, sizeof name, "%s.%s.lora_B.weight", prefix, site);
        if (!(l->lora_b = gc_param_declare(ps, name, 2, GC_SHAPE(out, r)))) return GC_PENDING();
        l->lora_scale = lora->alpha > 0 ? lora->alpha / (double)r : 1.0;
        l->lora_dropout = lora->dropout;
    }
    return GC_OK;
}

gc_status gc_params_freeze_base(gc_params *ps)
{
    for (int i = 0; i < ps->n; i++)
        if (!strstr(ps->items[i].name, ".lora_")) GC_TRY(gc_params_set_trainable(ps, i, false));
    return GC_OK;
}
