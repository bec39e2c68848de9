#include "gc_clip_task.h"

#include <string.h>

static gc_tensor *image_tower(void *m, int n, gc_tensor *const *in) { (void)n; return gc_clip_encode_image(m, in[0]); }
static gc_tensor *text_tower(void *m, int n, gc_tensor *const *in) { (void)n; return gc_clip_encode_text(m, in[0]); }

static gc_tensor *clip_loss_fn(void *user, int n, gc_tensor *const *reps)
{
    gc_clip_task *t = user;
    (void)n;
    return gc_clip_loss(reps[0], reps[1], gc_clip_logit_scale(t->model), t->loss_block_rows);
}

void gc_clip_task_init(gc_clip_task *t, gc_clip *m, gc_tensor *pixels, gc_tensor *ids, int64_t chunk)
{
    memset(t, 0, sizeof *t);
    t->model = m;
    t->gc.n_towers = 2;
    gc_device dev = gc_params_value(gc_clip_params(m), 0)->device;
    /* the pixels go to the model's device a chunk ahead; the ids stay where they are */
    t->gc.towers[0] = (gc_gradcache_tower){{image_tower, m, "image tower"}, chunk, 1, {pixels}, 1u, dev};
    t->gc.towers[1] = (gc_gradcache_tower){{text_tower, m, "text tower"}, chunk, 1, {ids}};
    t->gc.loss = clip_loss_fn;
    t->gc.loss_user = t;
    t->gc.use_cache = chunk > 0;
}

gc_status gc_clip_task_step(gc_clip_task *t, gc_rand_context rng, gc_gradcache_result *res)
{
    if (!t->gc.towers[0].inputs[0] || !t->gc.towers[1].inputs[0])
        return gc_error_set(GC_ERR_INVALID, "CLIP step needs both pixel_values and input_ids");
    if (t->gc.towers[0].inputs[0]->shape[0] != t->gc.towers[1].inputs[0]->shape[0])
        return gc_error_set(GC_ERR_SHAPE, "pixel_values has %lld rows but input_ids has %lld: they must pair up",
                            (long long)t->gc.towers[0].inputs[0]->shape[0], (long long)t->gc.towers[1].inputs[0]->shape[0]);
    return gc_gradcache_step(&t->gc, rng, res);
}

gc_status gc_clip_task_embed(gc_clip *m, gc_tensor *pixels, gc_tensor *ids, int64_t chunk, gc_tensor **img, gc_tensor **txt)
{
    gc_tensor *in[2] = {pixels, ids};
    gc_tensor **out[2] = {img, txt};
    gc_cache_fn fns[2] = {image_tower, text_tower};
    for (int i = 0; i < 2; i++) {
        *out[i] = NULL;
        if (!in[i]) continue;
        gc_device dev = gc_params_value(gc_clip_params(m), 0)->device;
        gc_gradcache g = {.n_towers = 1,
                          .towers = {{{fns[i], m, i ? "text tower" : "image tower"}, chunk, 1, {in[i]}, i ? 0u : 1u, dev}}};
        gc_tensor *reps = NULL;
        GC_TRY(gc_gradcache_embed(&g, gc_rand_context_get(), &reps));
        gc_pool *p = gc_pool_push();
        gc_tensor *n = gc_l2normalize(reps, 1e-12);
        *out[i] = n ? gc_tensor_retain(n) : NULL;
        gc_pool_pop(p);
        gc_tensor_release(reps);
        if (!*out[i]) return GC_PENDING();
    }
    return GC_OK;
}
