/* The gradient cache (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size
 * under Memory Limited Setup"): the exact full-batch gradient of a contrastive loss
 * with the memory of one chunk.
 *
 *   1. For each tower and chunk: capture the RandContext, forward without a graph,
 *      keep only the representation rows.
 *   2. Make the full-batch representations leaves, compute the loss, backpropagate to
 *      them: their gradient is the cache (B x D per tower). Parameters the loss owns
 *      (CLIP's logit_scale) get their gradient here, once.
 *   3. For each tower and chunk: restore the chunk's RandContext, forward again with
 *      the graph, backpropagate seeded with the chunk's rows of the cache. By the
 *      chain rule the parameter gradients add up to the full-batch gradient.
 *
 * Random ops key their numbers by the sample's index in the whole batch (gc_rng.h),
 * so dropout masks, and so the gradients, are the same for every chunk size and with
 * no chunking at all. Gradients accumulate (+=) into the parameters' .grad: zero them
 * before a step. See gradcache.c; the loss of CLIP is in gc_clip_loss.h. */
#ifndef GC_GRADCACHE_H
#define GC_GRADCACHE_H

#include "../autograd/gc_autograd.h"
#include "../runtime/gc_rng.h"

#define GC_MAX_TOWERS 8
#define GC_TOWER_MAX_INPUTS 4

/* CacheFunc: an encoder call as a function pointer and closure. Given row slices of
 * the tower's inputs (rows [start, start+n) of the batch), it returns the
 * representations [n, D] of those rows. It must be deterministic given the current
 * RandContext (random ops draw from counters). */
typedef gc_tensor *(*gc_cache_fn)(void *closure, int n_inputs, gc_tensor *const *inputs);
typedef struct gc_cache_func {
    gc_cache_fn fn;
    void *closure;
    const char *name; /* for messages */
} gc_cache_func;

/* The loss over the full batch: reps[t] is tower t's [B_t, D_t] f32 representations.
 * Build it with ops (it is recorded and differentiated); return a one-element tensor. */
typedef gc_tensor *(*gc_loss_fn)(void *user, int n_towers, gc_tensor *const *reps);

typedef struct gc_gradcache_tower {
    gc_cache_func func;
    int64_t chunk_size;                          /* rows per chunk; <= 0: the whole batch */
    int n_inputs;
    gc_tensor *inputs[GC_TOWER_MAX_INPUTS];      /* full-batch inputs, split by rows (dim 0) */
    /* Inputs (bit i: inputs[i]) the function wants on upload_to: each chunk's rows are
     * uploaded there a chunk ahead, beside the computation (gc_upload_begin), so the copy
     * of the next chunk overlaps this one's work. The others come as views of their rows,
     * where they are (CLIP's token ids stay on the host, where pooling reads them). */
    unsigned upload;
    gc_device upload_to;
} gc_gradcache_tower;

typedef struct gc_gradcache {
    int n_towers;                                /* one model may serve several towers */
    gc_gradcache_tower towers[GC_MAX_TOWERS];
    gc_loss_fn loss;
    void *loss_user;                             /* labels, hard negatives, loss parameters */
    bool use_cache;                              /* false: one plain forward per tower */
    bool replay_all;                             /* true: replay tower 0's last chunk too (see above) */
    /* optional: called as each phase begins ("embed", "loss", "replay") and with "done"
     * at the end, e.g. to record timers */
    void (*on_phase)(void *user, const char *phase);
    void *phase_user;
} gc_gradcache;

typedef struct gc_gradcache_result {
    double loss;
    gc_tensor *reps[GC_MAX_TOWERS];              /* full-batch representations (f32, no history); caller releases */
    int64_t kept_rows;                           /* tower 0's rows whose phase-1 graph was kept: forwarded once,
                                                    not replayed (0 with replay_all or without the cache) */
} gc_gradcache_result;

/* One training step's forward and backward: loss, and parameter gradients added to
 * .grad. rng gives the seed and step; each chunk's sample offset is set here. With
 * use_cache false (or every chunk_size covering the batch) the towers run once each
 * on the whole batch with a graph: the reference the cached path must equal. */
gc_status gc_gradcache_step(gc_gradcache *gc, gc_rand_context rng, gc_gradcache_result *res);

/* Forward only (no graph): representations of every tower, chunk by chunk. */
gc_status gc_gradcache_embed(gc_gradcache *gc, gc_rand_context rng, gc_tensor **reps);

void gc_gradcache_result_clear(gc_gradcache_result *res);

/* The RandContext a tower's chunk starting at `row` runs under: the step's seed mixed
 * with the tower index (so towers sharing a model draw different masks). */
gc_rand_context gc_gradcache_chunk_rng(gc_rand_context step_rng, int tower, int64_t row);

#endif
