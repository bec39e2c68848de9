/* The gradient cache, phase by phase. Read gc_gradcache.h first. */
#include "gc_gradcache.h"

#include <string.h>

#include "../kernels/gc_ops.h"

gc_rand_context gc_gradcache_chunk_rng(gc_rand_context r, int tower, int64_t row)
{
    r.seed ^= (uint64_t)tower * 0x9E3779B97F4A7C15ULL;
    r.sample_offset = row;
    return r;
}

static void mark(gc_gradcache *gc, const char *phase)
{
    if (gc->on_phase) gc->on_phase(gc->phase_user, phase);
}

static int64_t batch_rows(const gc_gradcache_tower *t) { return t->inputs[0]->shape[0]; }

static gc_status check_towers(const gc_gradcache *gc)
{
    if (gc->n_towers < 1 || gc->n_towers > GC_MAX_TOWERS)
        return gc_error_set(GC_ERR_INVALID, "gradient cache: %d towers (1..%d supported)", gc->n_towers, GC_MAX_TOWERS);
    for (int t = 0; t < gc->n_towers; t++) {
        const gc_gradcache_tower *tw = &gc->towers[t];
        const char *nm = tw->func.name ? tw->func.name : "tower";
        if (!tw->func.fn || tw->n_inputs < 1 || tw->n_inputs > GC_TOWER_MAX_INPUTS)
            return gc_error_set(GC_ERR_INVALID, "gradient cache: %s %d has no function or no inputs", nm, t);
        for (int i = 0; i < tw->n_inputs; i++) {
            if (!tw->inputs[i] || tw->inputs[i]->ndim < 1 || tw->inputs[i]->shape[0] != batch_rows(tw))
                return gc_error_set(GC_ERR_SHAPE, "gradient cache: %s %d input %d is missing or has a different batch size",
                                    nm, t, i);
        }
        if (batch_rows(tw) < 1) return gc_error_set(GC_ERR_SHAPE, "gradient cache: %s %d has an empty batch", nm, t);
    }
    return GC_OK;
}

/* Rows [start, end) of a tower's inputs (views: no copy), then its function. */
static gc_tensor *run_chunk(const gc_gradcache_tower *tw, int64_t start, int64_t end)
{
    gc_tensor *in[GC_TOWER_MAX_INPUTS];
    for (int i = 0; i < tw->n_inputs; i++) in[i] = gc_rows(tw->inputs[i], start, end);
    for (int i = 0; i < tw->n_inputs; i++)
        if (!in[i]) return NULL;
    gc_tensor *y = tw->func.fn(tw->func.closure, tw->n_inputs, in);
    if (y && (y->ndim != 2 || y->shape[0] != end - start)) {
        char s[GC_SHAPE_STR_LEN];
        gc_error_set(GC_ERR_SHAPE, "gradient cache: %s returned %s for %lld rows; representations must be [rows, D]",
                     tw->func.name ? tw->func.name : "tower", gc_shape_str(y, s, sizeof s), (long long)(end - start));
        return NULL;
    }
    return y;
}

static int64_t chunk_of(const gc_gradcache_tower *tw)
{
    int64_t B = batch_rows(tw);
    return tw->chunk_size > 0 && tw->chunk_size < B ? tw->chunk_size : B;
}

/* Phase 1 (and embed): no-graph forwards, chunk by chunk, into one [B, D] f32 tensor. */
static gc_tensor *forward_no_grad(const gc_gradcache_tower *tw, int t, gc_rand_context rng)
{
    int64_t B = batch_rows(tw), C = chunk_of(tw);
    gc_tensor *reps = NULL;
    bool prev = gc_grad_set_enabled(false);
    for (int64_t s = 0; s < B; s += C) {
        int64_t e = s + C < B ? s + C : B;
        gc_rand_context_set(gc_gradcache_chunk_rng(rng, t, s)); /* RandContext of this chunk */
        gc_pool *p = gc_pool_push();
        gc_tensor *y = run_chunk(tw, s, e);
        if (y && !reps) reps = gc_tensor_new(GC_F32, y->device, 2, GC_SHAPE(B, y->shape[1]));
        gc_tensor *dst = y && reps ? gc_rows(reps, s, e) : NULL;
        gc_status st = dst && y->shape[1] == reps->shape[1] ? gc_tensor_copy_into(dst, y, false) : GC_ERR_SHAPE;
        if (st != GC_OK && gc_error_code() == GC_OK)
            gc_error_set(GC_ERR_SHAPE, "gradient cache: %s gave a different width for rows %lld..%lld",
                         tw->func.name ? tw->func.name : "tower", (long long)s, (long long)e);
        gc_pool_pop(p);
        if (st != GC_OK) { gc_tensor_release(reps); reps = NULL; break; }
    }
    gc_grad_set_enabled(prev);
    return reps;
}

gc_status gc_gradcache_embed(gc_gradcache *gc, gc_rand_context rng, gc_tensor **reps)
{
    GC_TRY(check_towers(gc));
    gc_rand_context saved = gc_rand_context_get();
    gc_status st = GC_OK;
    for (int t = 0; t < gc->n_towers; t++) reps[t] = NULL;
    for (int t = 0; t < gc->n_towers && st == GC_OK; t++)
        if (!(reps[t] = forward_no_grad(&gc->towers[t], t, rng))) st = GC_PENDING();
    gc_rand_context_set(saved);
    return st;
}

/* The loss on leaves `reps`, backpropagated: fills their gradients (the cache).
 * *loss_out is the loss tensor (read after phase 3, so the step has no mid-way sync). */
static gc_status loss_backward(gc_gradcache *gc, gc_tensor **reps, gc_tensor **loss_out)
{
    gc_tape *tape = gc_tape_init();
    if (!tape) return GC_PENDING();
    gc_tape_begin(tape);
    gc_pool *p = gc_pool_push();
    gc_tensor *loss = gc->loss(gc->loss_user, gc->n_towers, reps);
    gc_tape_end(tape);
    gc_status st = GC_OK;
    if (!loss) st = GC_PENDING();
    else if (gc_tensor_numel(loss) != 1) st = gc_error_set(GC_ERR_SHAPE, "gradient cache: the loss must be one number");
    if (st == GC_OK) *loss_out = gc_tensor_to(loss, loss->device, GC_F32);
    if (st == GC_OK) st = gc_backward(tape, 1, &loss, NULL);
    gc_pool_pop(p);
    gc_tape_free(tape);
    return st;
}

static gc_status step_full_batch(gc_gradcache *gc, gc_rand_context rng, gc_gradcache_result *res)
{
    gc_tape *tape = gc_tape_init();
    if (!tape) return GC_PENDING();
    gc_tape_begin(tape);
    gc_pool *p = gc_pool_push();
    gc_tensor *reps[GC_MAX_TOWERS];
    gc_status st = GC_OK;
    for (int t = 0; t < gc->n_towers && st == GC_OK; t++) {
        gc_rand_context_set(gc_gradcache_chunk_rng(rng, t, 0));
        reps[t] = gc_cast(run_chunk(&gc->towers[t], 0, batch_rows(&gc->towers[t])), GC_F32);
        if (!reps[t]) st = GC_PENDING();
    }
    gc_tensor *loss = st == GC_OK ? gc->loss(gc->loss_user, gc->n_towers, reps) : NULL;
    gc_tape_end(tape);
    if (st == GC_OK && !loss) st = GC_PENDING();
    if (st == GC_OK && gc_tensor_numel(loss) != 1) st = gc_error_set(GC_ERR_SHAPE, "the loss must be one number");
    if (st == GC_OK) st = gc_tensor_item(loss, &res->loss);
    if (st == GC_OK) st = gc_backward(tape, 1, &loss, NULL);
    for (int t = 0; t < gc->n_towers && st == GC_OK; t++)
        if (!(res->reps[t] = gc_tensor_to(reps[t], reps[t]->device, GC_F32))) st = GC_PENDING();
    gc_pool_pop(p);
    gc_tape_free(tape);
    return st;
}

gc_status gc_gradcache_step(gc_gradcache *gc, gc_rand_context rng, gc_gradcache_result *res)
{
    memset(res, 0, sizeof *res);
    GC_TRY(check_towers(gc));
    if (!gc->loss) return gc_error_set(GC_ERR_INVALID, "gradient cache: no loss function");
    gc_rand_context saved = gc_rand_context_get();
    gc_status st;
    if (!gc->use_cache) {
        mark(gc, "full");
        st = step_full_batch(gc, rng, res);
        mark(gc, "done");
        gc_rand_context_set(saved);
        if (st != GC_OK) gc_gradcache_result_clear(res);
        return st;
    }
    /* 1. representations, chunk by chunk, without a graph */
    mark(gc, "embed");
    st = gc_gradcache_embed(gc, rng, res->reps);
    /* 2. the loss on the full batch; the representations' gradient is the cache */
    mark(gc, "loss");
    gc_tensor *loss = NULL;
    for (int t = 0; t < gc->n_towers && st == GC_OK; t++) st = gc_tensor_make_leaf(res->reps[t]);
    if (st == GC_OK) st = loss_backward(gc, res->reps, &loss);
    for (int t = 0; t < gc->n_towers && st == GC_OK; t++)
        if (!gc_tensor_grad(res->reps[t]))
            st = gc_error_set(GC_ERR_STATE, "gradient cache: the loss gave %s %d's representations no gradient",
                              gc->towers[t].func.name ? gc->towers[t].func.name : "tower", t);
    /* 3. replay each chunk with its RandContext and backpropagate its rows of the cache */
    mark(gc, "replay");
    for (int t = 0; t < gc->n_towers && st == GC_OK; t++) {
        gc_gradcache_tower *tw = &gc->towers[t];
        int64_t B = batch_rows(tw), C = chunk_of(tw);
        gc_tensor *cache = gc_tensor_grad(res->reps[t]);
        for (int64_t s = 0; s < B && st == GC_OK; s += C) {
            int64_t e = s + C < B ? s + C : B;
            gc_rand_context_set(gc_gradcache_chunk_rng(rng, t, s));
            gc_tape *tape = gc_tape_init();
            gc_tape_begin(tape);
            gc_pool *p = gc_pool_push();
            gc_tensor *y = run_chunk(tw, s, e);
            gc_tape_end(tape);
            gc_tensor *g = y ? gc_rows(cache, s, e) : NULL;
            if (!g) st = GC_PENDING();
            else if (y->shape[1] != cache->shape[1])
                st = gc_error_set(GC_ERR_STATE, "gradient cache: %s gave width %lld on replay, %lld before",
                                  tw->func.name ? tw->func.name : "tower", (long long)y->shape[1], (long long)cache->shape[1]);
            else if (y->slot) st = gc_backward(tape, 1, &y, &g); /* d<y, cache rows> */
            gc_pool_pop(p);
            gc_tape_free(tape);
        }
    }
    for (int t = 0; t < gc->n_towers && res->reps[t]; t++) gc_tensor_requires_grad(res->reps[t], false);
    if (st == GC_OK) st = gc_tensor_item(loss, &res->loss);
    gc_tensor_release(loss);
    mark(gc, "done");
    gc_rand_context_set(saved);
    if (st != GC_OK) gc_gradcache_result_clear(res);
    return st;
}

void gc_gradcache_result_clear(gc_gradcache_result *res)
{
    for (int t = 0; t < GC_MAX_TOWERS; t++) {
        gc_tensor_release(res->reps[t]);
        res->reps[t] = NULL;
    }
}
