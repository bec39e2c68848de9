#include "gc_dinov3_task.h"

#include <math.h>
#include <string.h>

static gc_tensor *view_tower(void *m, int n, gc_tensor *const *in) { (void)n; return gc_dinov3_encode(m, in[0]); }

static gc_tensor *pair_loss(void *user, int n, gc_tensor *const *reps)
{
    gc_dinov3_task *t = user;
    (void)n;
    return gc_infonce(gc_l2normalize(reps[0], 1e-12), gc_l2normalize(reps[1], 1e-12), t->log_scale, t->loss_block_rows);
}

gc_status gc_dinov3_task_init(gc_dinov3_task *t, gc_dinov3 *m, gc_tensor *a, gc_tensor *b, int64_t chunk, double temperature)
{
    memset(t, 0, sizeof *t);
    if (!(temperature > 0)) return gc_error_set(GC_ERR_INVALID, "temperature %g must be positive", temperature);
    float ls = (float)log(1.0 / temperature);
    gc_device dev = gc_params_value(gc_dinov3_params(m), 0)->device;
    t->log_scale = gc_tensor_from_data(GC_F32, dev, 0, NULL, &ls);
    if (!t->log_scale) return GC_PENDING();
    t->model = m;
    t->gc.n_towers = 2;
    t->gc.towers[0] = (gc_gradcache_tower){{view_tower, m, "view a"}, chunk, 1, {a}, 1u, dev}; /* pixels a chunk ahead */
    t->gc.towers[1] = (gc_gradcache_tower){{view_tower, m, "view b"}, chunk, 1, {b}, 1u, dev};
    t->gc.loss = pair_loss;
    t->gc.loss_user = t;
    t->gc.use_cache = chunk > 0;
    return GC_OK;
}

void gc_dinov3_task_free(gc_dinov3_task *t) { gc_tensor_release(t->log_scale); t->log_scale = NULL; }

gc_status gc_dinov3_task_step(gc_dinov3_task *t, gc_rand_context rng, gc_gradcache_result *res)
{
    return gc_gradcache_step(&t->gc, rng, res);
}
