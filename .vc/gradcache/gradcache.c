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

/* A chunk's inputs are views of rows [start, end) of the tower's inputs, but for those in
 * tw->upload: device copies, begun a chunk ahead (stage), so that the copy of the next
 * chunk's rows overlaps this chunk's work. up[i].t is set for the staged inputs. */
static gc_status stage(const gc_gradcache_tower *tw, int64_t start, int64_t end, gc_upload *up)
{
    gc_status st = GC_OK;
    gc_pool *p = gc_pool_push(); /* the views; an upload holds what it needs */
    for (int i = 0; i < GC_TOWER_MAX_INPUTS; i++) {
        up[i] = (gc_upload){0};
        if (st != GC_OK || i >= tw->n_inputs || !(tw->upload >> i & 1u)) continue;
        gc_tensor *v = gc_rows(tw->inputs[i], start, end);
        st = v ? gc_upload_begin(&up[i], v, tw->upload_to) : GC_PENDING();
    }
    gc_pool_pop(p);
    return st;
}

/* Ends staged uploads that no chunk took (an error path) */
static void unstage(gc_upload *up)
{
    for (int i = 0; i < GC_TOWER_MAX_INPUTS; i++)
        if (up[i].t) gc_tensor_release(gc_upload_end(&up[i]));
}

static int64_t chunk_end(int64_t s, int64_t C, int64_t end) { return s + C < end ? s + C : end; }

/* A loop's staged inputs: those of the chunk about to run (cur) and of the one after it
 * (next). Each turn stages the next chunk, runs cur (run_chunk ends it), advances. */
typedef struct staged {
    gc_upload cur[GC_TOWER_MAX_INPUTS], next[GC_TOWER_MAX_INPUTS];
} staged;

/* The chunk at s of rows [0, end) into next; nothing at or past end */
static gc_status stage_next(const gc_gradcache_tower *tw, staged *sg, int64_t s, int64_t C, int64_t end)
{
    return s < end ? stage(tw, s, chunk_end(s, C, end), sg->next) : GC_OK;
}

static void staged_advance(staged *sg)
{
    memcpy(sg->cur, sg->next, sizeof sg->cur);
    memset(sg->next, 0, sizeof sg->next);
}

/* after an error: uploads begun for chunks that did not run */
static void staged_clear(staged *sg)
{
    unstage(sg->cur);
    unstage(sg->next);
}

/* The inputs of rows [start, end) (views, or the staged uploads, ended here: the work
 * queued from now on waits for them), then the tower's function. */
static gc_tensor *run_chunk(const gc_gradcache_tower *tw, int64_t start, int64_t end, gc_upload *up)
{
    gc_tensor *in[GC_TOWER_MAX_INPUTS];
    bool ok = true;
    for (int i = 0; i < tw->n_inputs; i++) {
        in[i] = up[i].t ? gc_pool_add(gc_upload_end(&up[i])) : gc_rows(tw->inputs[i], start, end);
        ok = ok && in[i];
    }
    unstage(up);
    if (!ok) return NULL;
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

/* A chunk whose graph is kept from phase 1 to phase 3 instead of replayed. */
typedef struct kept_chunk {
    gc_tape *tape;
    gc_pool *pool;  /* holds the chunk's activations; popped after its backward */
    gc_tensor *y;
    int64_t start, end;
} kept_chunk;

static void kept_free(kept_chunk *k)
{
    if (k->pool) gc_pool_pop(k->pool);
    gc_tape_free(k->tape);
    memset(k, 0, sizeof *k);
}

/* Phase 1 (and embed): no-graph forwards, chunk by chunk, into one [B, D] f32 tensor.
 * With `keep`, the last chunk runs with a graph instead, left open in *keep. */
static gc_tensor *forward_no_grad(const gc_gradcache_tower *tw, int t, gc_rand_context rng, kept_chunk *keep)
{
    int64_t B = batch_rows(tw), C = chunk_of(tw);
    gc_tensor *reps = NULL;
    staged sg = {0};
    gc_status first = stage_next(tw, &sg, 0, C, B);
    staged_advance(&sg);
    if (first != GC_OK) { staged_clear(&sg); return NULL; }
    bool prev = gc_grad_set_enabled(false);
    for (int64_t s = 0; s < B; s += C) {
        int64_t e = chunk_end(s, C, B);
        bool graph = keep && e == B;
        gc_rand_context_set(gc_gradcache_chunk_rng(rng, t, s)); /* RandContext of this chunk */
        gc_tape *tape = graph ? gc_tape_init() : NULL;
        if ((graph && !tape) || stage_next(tw, &sg, e, C, B) != GC_OK) {
            gc_tensor_release(reps);
            reps = NULL;
            gc_tape_free(tape);
            break;
        }
        if (graph) gc_grad_set_enabled(prev), gc_tape_begin(tape);
        gc_pool *p = gc_pool_push();
        gc_tensor *y = run_chunk(tw, s, e, sg.cur);
        staged_advance(&sg);
        if (graph) gc_tape_end(tape), gc_grad_set_enabled(false);
        if (y && !reps) reps = gc_tensor_new(GC_F32, y->device, 2, GC_SHAPE(B, y->shape[1]));
        gc_tensor *dst = y && reps ? gc_rows(reps, s, e) : NULL;
        gc_status st = dst && y->shape[1] == reps->shape[1] ? gc_tensor_copy_into(dst, y, false) : GC_ERR_SHAPE;
        if (st != GC_OK && gc_error_code() == GC_OK)
            gc_error_set(GC_ERR_SHAPE, "gradient cache: %s gave a different width for rows %lld..%lld",
                         tw->func.name ? tw->func.name : "tower", (long long)s, (long long)e);
        if (graph) *keep = (kept_chunk){tape, p, y, s, e}; /* its pool stays open */
        else gc_pool_pop(p);
        if (st != GC_OK) { gc_tensor_release(reps); reps = NULL; break; }
    }
    staged_clear(&sg);
    gc_grad_set_enabled(prev);
    return reps;
}

/* Phase 1 for every tower into reps[t], the last tower first: with `keep`, tower 0's last
 * chunk keeps its graph, so it ends the phase and is the first one backpropagated (one
 * graph alive at a time). */
static gc_status forward_all(gc_gradcache *gc, gc_rand_context rng, gc_tensor **reps, kept_chunk *keep)
{
    gc_status st = GC_OK;
    for (int t = 0; t < gc->n_towers; t++) reps[t] = NULL;
    for (int t = gc->n_towers - 1; t >= 0 && st == GC_OK; t--)
        if (!(reps[t] = forward_no_grad(&gc->towers[t], t, rng, t == 0 ? keep : NULL))) st = GC_PENDING();
    return st;
}

gc_status gc_gradcache_embed(gc_gradcache *gc, gc_rand_context rng, gc_tensor **reps)
{
    GC_TRY(check_towers(gc));
    gc_rand_context saved = gc_rand_context_get();
    gc_status st = forward_all(gc, rng, reps, NULL);
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
        gc_upload up[GC_TOWER_MAX_INPUTS];
        st = stage(&gc->towers[t], 0, batch_rows(&gc->towers[t]), up);
        reps[t] = st == GC_OK ? gc_cast(run_chunk(&gc->towers[t], 0, batch_rows(&gc->towers[t]), up), GC_F32) : NULL;
        unstage(up);
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

/* Backpropagate a chunk's rows of the cache (the gradient of reps) through its graph:
 * d<y, cache rows>. */
static gc_status chunk_backward(const gc_gradcache_tower *tw, gc_tensor *reps, kept_chunk *c)
{
    gc_tensor *cache = gc_tensor_grad(reps);
    gc_tensor *g = c->y ? gc_rows(cache, c->start, c->end) : NULL;
    if (!g) return GC_PENDING();
    if (c->y->shape[1] != cache->shape[1])
        return gc_error_set(GC_ERR_STATE, "gradient cache: %s gave width %lld on replay, %lld before",
                            tw->func.name ? tw->func.name : "tower", (long long)c->y->shape[1], (long long)cache->shape[1]);
    return c->y->slot ? gc_backward(c->tape, 1, &c->y, &g) : GC_OK;
}

gc_status gc_gradcache_step(gc_gradcache *gc, gc_rand_context rng, gc_gradcache_result *res)
{
    memset(res, 0, sizeof *res);
    GC_TRY(check_towers(gc));
    if (!gc->loss) return gc_error_set(GC_ERR_INVALID, "gradient cache: no loss function");
    gc_rand_context saved = gc_rand_context_get();
    gc_status st = GC_OK;
    if (!gc->use_cache) {
        mark(gc, "full");
        st = step_full_batch(gc, rng, res);
        mark(gc, "done");
        gc_rand_context_set(saved);
        if (st != GC_OK) gc_gradcache_result_clear(res);
        return st;
    }
    /* 1. representations, chunk by chunk, without a graph, but for tower 0's last chunk
     *    (unless replay_all), which keeps its graph for phase 3 */
    mark(gc, "embed");
    kept_chunk kept = {0};
    st = forward_all(gc, rng, res->reps, gc->replay_all ? NULL : &kept);
    if (kept.tape) res->kept_rows = kept.end - kept.start;
    /* 2. the loss on the full batch; the representations' gradient is the cache */
    mark(gc, "loss");
    gc_tensor *loss = NULL;
    for (int t = 0; t < gc->n_towers && st == GC_OK; t++) st = gc_tensor_make_leaf(res->reps[t]);
    if (st == GC_OK) st = loss_backward(gc, res->reps, &loss);
    for (int t = 0; t < gc->n_towers && st == GC_OK; t++)
        if (!gc_tensor_grad(res->reps[t]))
            st = gc_error_set(GC_ERR_STATE, "gradient cache: the loss gave %s %d's representations no gradient",
                              gc->towers[t].func.name ? gc->towers[t].func.name : "tower", t);
    /* 3. backpropagate each chunk's rows of the cache through its graph: the kept chunk's
     *    from phase 1, every other chunk's replayed under its RandContext */
    mark(gc, "replay");
    if (kept.tape && st == GC_OK) st = chunk_backward(&gc->towers[0], res->reps[0], &kept);
    kept_free(&kept);
    for (int t = 0; t < gc->n_towers && st == GC_OK; t++) {
        gc_gradcache_tower *tw = &gc->towers[t];
        int64_t B = batch_rows(tw), C = chunk_of(tw);
        int64_t end = t == 0 && !gc->replay_all ? (B - 1) / C * C : B; /* tower 0's kept chunk: done */
        staged sg = {0};
        st = stage_next(tw, &sg, 0, C, end);
        staged_advance(&sg);
        for (int64_t s = 0; s < end && st == GC_OK; s += C) {
            int64_t e = chunk_end(s, C, end);
            if ((st = stage_next(tw, &sg, e, C, end)) != GC_OK) break;
            gc_rand_context_set(gc_gradcache_chunk_rng(rng, t, s));
            kept_chunk c = {gc_tape_init(), NULL, NULL, s, e};
            if (!c.tape) { st = GC_PENDING(); break; }
            gc_tape_begin(c.tape);
            c.pool = gc_pool_push();
            c.y = run_chunk(tw, s, e, sg.cur);
            gc_tape_end(c.tape);
            staged_advance(&sg);
            st = chunk_backward(tw, res->reps[t], &c);
            kept_free(&c);
        }
        staged_clear(&sg);
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
