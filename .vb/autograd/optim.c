#include "gc_optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/gc_cuda.h"

#include "gc_optim_cuda.h"

static bool decays(const gc_param *p) { return p->master && p->master->ndim >= 2; }

/* GPU: the chunk table over every trainable parameter, uploaded once. */
static gc_status build_table(gc_adamw *o)
{
    gc_params *ps = o->params;
    int nt = 0;
    int64_t nc = 0;
    for (int i = 0; i < ps->n; i++)
        if (o->m[i]) { nt++; nc += (gc_tensor_numel(o->m[i]) + GC_ADAM_CHUNK - 1) / GC_ADAM_CHUNK; }
    gc_adam_tensor *ts = calloc((size_t)nt + 1, sizeof *ts);
    gc_adam_chunk *cs = calloc((size_t)nc + 1, sizeof *cs);
    if (!ts || !cs) { free(ts); free(cs); return gc_error_set(GC_ERR_OOM, "out of host memory"); }
    int t = 0;
    int64_t c = 0;
    for (int i = 0; i < ps->n; i++) {
        if (!o->m[i]) continue;
        gc_param *p = &ps->items[i];
        int64_t n = gc_tensor_numel(o->m[i]);
        ts[t] = (gc_adam_tensor){gc_tensor_data(p->master), gc_tensor_data(gc_tensor_grad(p->value)), gc_tensor_data(o->m[i]),
                                 gc_tensor_data(o->v[i]), p->value != p->master ? gc_tensor_data(p->value) : NULL, n,
                                 decays(p) ? 1.0f : 0.0f};
        if (ts[t].out && p->value->dtype != GC_BF16) {
            free(ts); free(cs);
            return gc_error_set(GC_ERR_DTYPE, "adamw: %s: compute copies must be bf16 or f32", p->name);
        }
        for (int64_t s = 0; s < n; s += GC_ADAM_CHUNK) cs[c++] = (gc_adam_chunk){t, s};
        t++;
    }
    o->n_chunks = (int)nc;
    o->table = gc_tensor_from_data(GC_I64, ps->device, 1, GC_SHAPE((int64_t)(sizeof(gc_adam_tensor) * (size_t)(nt + 1) / 8)), ts);
    o->chunks = gc_tensor_from_data(GC_I64, ps->device, 1, GC_SHAPE((int64_t)(sizeof(gc_adam_chunk) * (size_t)(nc + 1) / 8)), cs);
    o->partial = gc_tensor_new(GC_F32, ps->device, 1, GC_SHAPE(nc + 1));
    o->coef = gc_tensor_new(GC_F32, ps->device, 0, NULL);
    free(ts);
    free(cs);
    return o->table && o->chunks && o->partial && o->coef ? GC_OK : GC_PENDING();
}

gc_status gc_adamw_init(gc_adamw *o, gc_params *ps, const gc_adamw_config *cfg)
{
    memset(o, 0, sizeof *o);
    o->cfg = *cfg;
    o->params = ps;
    o->m = calloc((size_t)ps->n + 1, sizeof *o->m);
    o->v = calloc((size_t)ps->n + 1, sizeof *o->v);
    if (!o->m || !o->v) { gc_adamw_free(o); return gc_error_set(GC_ERR_OOM, "out of host memory"); }
    for (int i = 0; i < ps->n; i++) {
        gc_param *p = &ps->items[i];
        if (!p->trainable) continue;
        o->m[i] = gc_tensor_zeros(GC_F32, ps->device, p->master->ndim, p->master->shape);
        o->v[i] = gc_tensor_zeros(GC_F32, ps->device, p->master->ndim, p->master->shape);
        if (!o->m[i] || !o->v[i]) { gc_adamw_free(o); return GC_PENDING(); }
    }
    o->norm = gc_tensor_zeros(GC_F32, ps->device, 0, NULL);
    if (!o->norm) { gc_adamw_free(o); return GC_PENDING(); }
    if (ps->device.type == GC_DEVICE_CUDA) {
        gc_status st = build_table(o);
        if (st != GC_OK) { gc_adamw_free(o); return st; }
    }
    return GC_OK;
}

void gc_adamw_free(gc_adamw *o)
{
    for (int i = 0; o->params && i < o->params->n; i++) {
        if (o->m) gc_tensor_release(o->m[i]);
        if (o->v) gc_tensor_release(o->v[i]);
    }
    free(o->m);
    free(o->v);
    gc_tensor_release(o->norm);
    gc_tensor_release(o->table);
    gc_tensor_release(o->chunks);
    gc_tensor_release(o->partial);
    gc_tensor_release(o->coef);
    memset(o, 0, sizeof *o);
}

static gc_status step_cpu(gc_adamw *o, double lr, double bc1, double bc2)
{
    gc_params *ps = o->params;
    double ss = 0;
    for (int i = 0; i < ps->n; i++) {
        if (!o->m[i]) continue;
        const float *g = gc_tensor_data(gc_tensor_grad(ps->items[i].value));
        for (int64_t j = 0, n = gc_tensor_numel(o->m[i]); j < n; j++) ss += (double)g[j] * g[j];
    }
    double norm = sqrt(ss), coef = 1.0;
    *(float *)gc_tensor_data(o->norm) = (float)norm;
    if (o->cfg.max_grad_norm > 0 && norm > o->cfg.max_grad_norm) coef = o->cfg.max_grad_norm / (norm + 1e-6);
    const double b1 = o->cfg.beta1, b2 = o->cfg.beta2;
    for (int i = 0; i < ps->n; i++) {
        if (!o->m[i]) continue;
        float *p = gc_tensor_data(ps->items[i].master), *m = gc_tensor_data(o->m[i]), *v = gc_tensor_data(o->v[i]);
        double wd = decays(&ps->items[i]) ? o->cfg.weight_decay : 0.0;
        const float *g = gc_tensor_data(gc_tensor_grad(ps->items[i].value));
        for (int64_t j = 0, n = gc_tensor_numel(o->m[i]); j < n; j++) {
            double gj = g[j] * coef;
            m[j] = (float)(b1 * m[j] + (1 - b1) * gj);
            v[j] = (float)(b2 * v[j] + (1 - b2) * gj * gj);
            double upd = (m[j] / bc1) / (sqrt(v[j] / bc2) + o->cfg.eps);
            p[j] = (float)(p[j] * (1 - lr * wd) - lr * upd);
        }
    }
    return GC_OK;
}

#ifdef GC_WITH_CUDA
static gc_status step_cuda(gc_adamw *o, double lr, double bc1, double bc2)
{
    return gc_cuda_adamw_multi(gc_tensor_data(o->table), gc_tensor_data(o->chunks), o->n_chunks, gc_tensor_data(o->partial),
                               gc_tensor_data(o->norm), gc_tensor_data(o->coef), (float)o->cfg.max_grad_norm, (float)lr,
                               (float)o->cfg.beta1, (float)o->cfg.beta2, (float)o->cfg.eps, (float)o->cfg.weight_decay,
                               (float)bc1, (float)bc2);
}
#endif

gc_status gc_adamw_step(gc_adamw *o, double lr)
{
    gc_params *ps = o->params;
    for (int i = 0; i < ps->n; i++)
        if (o->m[i] && (!gc_tensor_grad(ps->items[i].value) || !ps->items[i].master))
            return gc_error_set(GC_ERR_STATE, "adamw: %s has no gradient or master weights", ps->items[i].name);
    o->step++;
    double bc1 = 1 - pow(o->cfg.beta1, (double)o->step), bc2 = 1 - pow(o->cfg.beta2, (double)o->step);
    gc_status st;
    if (ps->device.type == GC_DEVICE_CUDA) {
#ifdef GC_WITH_CUDA
        st = step_cuda(o, lr, bc1, bc2);
#else
        st = gc_error_set(GC_ERR_DEVICE, "adamw: this build has no CUDA backend");
#endif
    } else {
        st = step_cpu(o, lr, bc1, bc2);
    }
    GC_TRY(st);
    /* the GPU kernel refreshed the bf16 copies itself */
    return ps->device.type == GC_DEVICE_CUDA ? GC_OK : gc_params_sync_values(ps);
}

gc_status gc_adamw_last_norm(gc_adamw *o, double *norm) { return gc_tensor_item(o->norm, norm); }

double gc_lr_schedule(double lr, int64_t step, int64_t warmup, int64_t total, double min_ratio)
{
    if (warmup > 0 && step < warmup) return lr * (double)(step + 1) / (double)warmup;
    if (total <= warmup) return lr;
    double t = (double)(step - warmup) / (double)(total - warmup);
    if (t > 1) t = 1;
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + cos(M_PI * t)));
}
