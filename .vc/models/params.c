#include "gc_params.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "gc_safetensors.h"

void gc_params_init(gc_params *ps, gc_device dev, gc_dtype dtype)
{
    memset(ps, 0, sizeof *ps);
    ps->device = dev;
    ps->dtype = dtype;
}

void gc_params_free(gc_params *ps)
{
    for (int i = 0; i < ps->n; i++) {
        gc_param *p = &ps->items[i];
        if (p->master != p->value) gc_tensor_release(p->master);
        gc_tensor_release(p->value);
        free(p->name);
    }
    for (int k = 0; k < ps->n_packs; k++) gc_tensor_release(ps->packs[k].value);
    free(ps->packs);
    free(ps->items);
    memset(ps, 0, sizeof *ps);
}

int gc_params_add(gc_params *ps, const char *name, int ndim, const int64_t *shape)
{
    if (ps->n == ps->cap) {
        int cap = ps->cap ? ps->cap * 2 : 64;
        gc_param *it = realloc(ps->items, (size_t)cap * sizeof *it);
        if (!it) { gc_error_set(GC_ERR_OOM, "out of host memory"); return -1; }
        ps->items = it;
        ps->cap = cap;
    }
    gc_param *p = &ps->items[ps->n];
    memset(p, 0, sizeof *p);
    p->name = strdup(name);
    p->master = gc_tensor_new(GC_F32, ps->device, ndim, shape);
    if (!p->name || !p->master) { free(p->name); gc_tensor_release(p->master); return -1; }
    gc_tensor_set_name(p->master, name);
    if (ps->dtype == GC_F32 || ndim == 0) { /* scalars (logit_scale) stay f32: the loss runs in f32 */
        p->value = p->master;
    } else {
        p->value = gc_tensor_new(ps->dtype, ps->device, ndim, shape);
        if (!p->value) { free(p->name); gc_tensor_release(p->master); return -1; }
        gc_tensor_set_name(p->value, name);
    }
    p->trainable = true;
    p->pack = -1;
    if (gc_tensor_requires_grad(p->value, true) != GC_OK) return -1;
    return ps->n++;
}

int gc_params_index(const gc_params *ps, const gc_tensor *value)
{
    for (int i = 0; value && i < ps->n; i++)
        if (ps->items[i].value == value) return i;
    return -1;
}

/* ---------------------------------------------------------------- packs */

/* Elements of one row (dims 1..) of t. */
static int64_t row_numel(const gc_tensor *t)
{
    int64_t n = 1;
    for (int d = 1; d < t->ndim; d++) n *= t->shape[d];
    return n;
}

/* The pack's gradient after a change of its members' trainability: while every member
 * trains, one f32 buffer (the pack value's gradient) of which each member's gradient is
 * its region, what a member had accumulated copied in; otherwise the pack is frozen and
 * the members keep gradients of their own. */
static gc_status pack_sync(gc_params *ps, gc_param_pack *pk)
{
    bool all = true;
    for (int j = 0; j < pk->n; j++)
        if (pk->idx[j] >= 0) all = all && ps->items[pk->idx[j]].trainable;
    if (!all) return gc_tensor_requires_grad(pk->value, false);
    GC_TRY(gc_tensor_requires_grad(pk->value, true)); /* zeros, unless it had one */
    gc_tensor *G = gc_tensor_grad(pk->value);
    const int64_t rn = row_numel(pk->value);
    int64_t off = 0;
    for (int j = 0; j < pk->n; off += pk->rows[j++] * rn) {
        if (pk->idx[j] < 0) continue;
        gc_tensor *v = ps->items[pk->idx[j]].value, *g = gc_tensor_grad(v);
        if (g && g->storage == G->storage && g->offset == G->offset + off) continue;
        gc_tensor *r = gc_tensor_view_of(G, v->ndim, v->shape, v->stride, G->offset + off);
        gc_status st = r ? GC_OK : GC_PENDING();
        if (st == GC_OK && g) st = gc_tensor_copy_into(r, g, false);
        if (st == GC_OK) st = gc_tensor_set_grad(v, r);
        gc_tensor_release(r);
        GC_TRY(st);
    }
    return GC_OK;
}

gc_tensor *gc_params_pack(gc_params *ps, int n, const int *idx, const int64_t *gap_rows)
{
    const gc_tensor *t0 = NULL;
    for (int j = 0; j < n && n <= GC_PACK_MAX; j++)
        if (idx[j] >= 0 && idx[j] < ps->n && !t0) t0 = ps->items[idx[j]].value;
    if (n < 1 || n > GC_PACK_MAX || !t0 || t0->ndim < 1) {
        gc_error_set(GC_ERR_INVALID, "gc_params_pack: 1 to %d members, one at least a parameter of rank >= 1", GC_PACK_MAX);
        return NULL;
    }
    int64_t rows[GC_PACK_MAX], total = 0;
    for (int j = 0; j < n; j++) {
        const gc_tensor *v = idx[j] >= 0 && idx[j] < ps->n ? ps->items[idx[j]].value : NULL;
        bool ok = v ? v->ndim == t0->ndim && v->dtype == t0->dtype && gc_tensor_is_contiguous(v) &&
                          ps->items[idx[j]].pack < 0 &&
                          !memcmp(v->shape + 1, t0->shape + 1, sizeof(int64_t) * (size_t)(v->ndim - 1))
                    : idx[j] < 0 && gap_rows && gap_rows[j] > 0;
        if (!ok) {
            gc_error_set(GC_ERR_INVALID, "gc_params_pack: member %d (%s) does not fit the pack of %s", j,
                         v ? ps->items[idx[j]].name : "a gap", gc_tensor_label(t0));
            return NULL;
        }
        total += rows[j] = v ? v->shape[0] : gap_rows[j];
    }
    gc_param_pack *pk = realloc(ps->packs, sizeof *pk * (size_t)(ps->n_packs + 1));
    if (!pk) {
        gc_error_set(GC_ERR_OOM, "out of host memory");
        return NULL;
    }
    ps->packs = pk;
    pk = &ps->packs[ps->n_packs];
    memset(pk, 0, sizeof *pk);
    int64_t sh[GC_MAX_DIMS];
    memcpy(sh, t0->shape, sizeof sh);
    sh[0] = total;
    if (!(pk->value = gc_tensor_zeros(t0->dtype, t0->device, t0->ndim, sh))) return NULL;
    char name[300];
    snprintf(name, sizeof name, "pack of %s", gc_tensor_label(t0));
    gc_tensor_set_name(pk->value, name);
    pk->n = n;
    const int64_t rn = row_numel(t0);
    int64_t off = 0;
    for (int j = 0; j < n; off += rows[j++] * rn) {
        pk->idx[j] = idx[j];
        pk->rows[j] = rows[j];
        if (idx[j] < 0) continue;
        gc_tensor *v = ps->items[idx[j]].value;
        gc_tensor *r = gc_tensor_view_of(pk->value, v->ndim, v->shape, v->stride, off);
        gc_status st = r ? gc_tensor_copy_into(r, v, false) : GC_PENDING(); /* its values move with it */
        gc_tensor_release(r);
        if (st == GC_OK) st = gc_tensor_rebind(v, pk->value, off); /* (the master too, where it is the value) */
        if (st != GC_OK) { /* no pack: the members moved so far keep their new storage, in none */
            for (int i = 0; i < j; i++)
                if (idx[i] >= 0) ps->items[idx[i]].pack = -1;
            gc_tensor_release(pk->value);
            return NULL;
        }
        ps->items[idx[j]].pack = ps->n_packs;
    }
    ps->n_packs++;
    return pack_sync(ps, pk) == GC_OK ? pk->value : NULL;
}

gc_param *gc_params_find(gc_params *ps, const char *name)
{
    for (int i = 0; i < ps->n; i++)
        if (!strcmp(ps->items[i].name, name)) return &ps->items[i];
    return NULL;
}

int64_t gc_params_count(const gc_params *ps, bool trainable_only)
{
    int64_t n = 0;
    for (int i = 0; i < ps->n; i++)
        if (!trainable_only || ps->items[i].trainable) n += gc_tensor_numel(ps->items[i].value);
    return n;
}

gc_status gc_params_set_trainable(gc_params *ps, int i, bool on)
{
    gc_param *p = &ps->items[i];
    p->trainable = on;
    GC_TRY(gc_tensor_requires_grad(p->value, on));
    if (!on && p->master != p->value) { /* frozen in bf16: no f32 master either */
        gc_tensor_release(p->master);
        p->master = NULL;
    }
    return p->pack >= 0 ? pack_sync(ps, &ps->packs[p->pack]) : GC_OK;
}

gc_status gc_params_sync_values(gc_params *ps)
{
    for (int i = 0; i < ps->n; i++) {
        gc_param *p = &ps->items[i];
        if (p->master && p->master != p->value) GC_TRY(gc_tensor_copy_into(p->value, p->master, false));
    }
    return GC_OK;
}

gc_status gc_params_zero_grad(gc_params *ps)
{
    /* a pack's gradient in one pass (its gaps too, where a GEMM's bias gradient wrote) */
    for (int k = 0; k < ps->n_packs; k++) GC_TRY(gc_tensor_zero_grad(ps->packs[k].value));
    for (int i = 0; i < ps->n; i++)
        if (ps->items[i].pack < 0 || !gc_tensor_needs_grad(ps->packs[ps->items[i].pack].value))
            GC_TRY(gc_tensor_zero_grad(ps->items[i].value));
    return GC_OK;
}

gc_status gc_params_init_values(gc_params *ps, gc_param_init_fn init, void *user)
{
    for (int i = 0; i < ps->n; i++) {
        gc_param *p = &ps->items[i];
        gc_tensor *src = p->master ? p->master : p->value;
        float *h = malloc(sizeof(float) * (size_t)(gc_tensor_numel(src) + 1));
        if (!h) return gc_error_set(GC_ERR_OOM, "out of host memory");
        init(p->name, src->ndim, src->shape, h, user);
        gc_tensor *t = gc_tensor_wrap(GC_F32, GC_CPU, src->ndim, src->shape, h, NULL, NULL);
        gc_status st = t ? gc_tensor_copy_into(p->value, t, false) : GC_PENDING();
        if (st == GC_OK && p->master && p->master != p->value) st = gc_tensor_copy_into(p->master, t, false);
        if (t) t->storage->data = NULL;
        gc_tensor_release(t);
        free(h);
        GC_TRY(st);
    }
    return GC_OK;
}

static bool has_suffix(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

gc_status gc_params_load(gc_params *ps, const char *dir, const char *const *ignore, const char *skip)
{
    gc_st_dir *d = NULL;
    GC_TRY(gc_st_dir_open(dir, &d));
    char msg[900] = "";
    size_t k = 0;
    int bad = 0;
    gc_status st = GC_OK;
#define NOTE(...)                                                                               \
    do { /* the first six problems, "; " between them */                                       \
        if (bad < 6 && k < sizeof msg) k += (size_t)snprintf(msg + k, sizeof msg - k, bad ? "; " : ""); \
        if (bad++ < 6 && k < sizeof msg) k += (size_t)snprintf(msg + k, sizeof msg - k, __VA_ARGS__); \
    } while (0)
    for (int i = 0; i < ps->n && st == GC_OK; i++) {
        gc_param *p = &ps->items[i];
        if (skip && strstr(p->name, skip)) continue;
        gc_st_file *f = NULL;
        const gc_st_entry *e = NULL;
        st = gc_st_dir_lookup(d, p->name, &f, &e);
        if (st != GC_OK) break;
        if (!e) { NOTE("missing %s", p->name); continue; }
        gc_tensor *ref = p->master ? p->master : p->value;
        bool same = e->ndim == ref->ndim;
        for (int j = 0; same && j < e->ndim; j++) same = e->shape[j] == ref->shape[j];
        if (!same) {
            char s[GC_SHAPE_STR_LEN], fs[GC_SHAPE_STR_LEN] = "[";
            for (int j = 0; j < e->ndim; j++)
                snprintf(fs + strlen(fs), sizeof fs - strlen(fs), j ? ", %lld" : "%lld", (long long)e->shape[j]);
            strncat(fs, "]", sizeof fs - strlen(fs) - 1);
            NOTE("%s is %s in the checkpoint but the config gives %s", p->name, fs, gc_shape_str(ref, s, sizeof s));
            continue;
        }
        if (!gc_dtype_is_float(e->dtype)) { /* an integer tensor would be converted to numbers it does not mean */
            NOTE("%s is %s in the checkpoint, not a floating-point dtype", p->name, e->st_dtype);
            continue;
        }
        gc_tensor *h = gc_st_tensor(f, p->name);
        if (!h) { st = GC_PENDING(); break; }
        st = gc_tensor_copy_into(p->value, h, false);
        if (st == GC_OK && p->master && p->master != p->value) st = gc_tensor_copy_into(p->master, h, false);
        gc_tensor_release(h);
    }
    for (int i = 0, n = gc_st_dir_count(d); st == GC_OK && i < n; i++) {
        const char *name = gc_st_dir_name_at(d, i);
        if (gc_params_find(ps, name)) continue;
        bool skip = false;
        for (int j = 0; ignore && ignore[j] && !skip; j++) skip = has_suffix(name, ignore[j]);
        if (!skip) NOTE("unexpected %s", name);
    }
#undef NOTE
    gc_st_dir_close(d);
    GC_TRY(st);
    if (bad)
        return gc_error_set(GC_ERR_FORMAT, "%s: checkpoint does not match the model (%d problem%s): %s%s", dir, bad,
                            bad > 1 ? "s" : "", msg, bad > 6 ? "; ..." : "");
    return GC_OK;
}

gc_status gc_params_save(gc_params *ps, const char *dir, const char *skip)
{
    mkdir(dir, 0755);
    const char **names = malloc(sizeof(char *) * (size_t)(ps->n + 1));
    gc_tensor **ts = malloc(sizeof(gc_tensor *) * (size_t)(ps->n + 1));
    if (!names || !ts) { free(names); free(ts); return gc_error_set(GC_ERR_OOM, "out of host memory"); }
    gc_status st = GC_OK;
    int n = 0;
    for (int i = 0; i < ps->n && st == GC_OK; i++) {
        gc_param *p = &ps->items[i];
        if (skip && strstr(p->name, skip)) continue;
        names[n] = p->name;
        ts[n] = gc_tensor_to(p->master ? p->master : p->value, GC_CPU, GC_F32);
        if (!ts[n]) st = GC_PENDING();
        else n++;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (st == GC_OK) st = gc_st_save(path, n, names, ts, 1, (const char *const[]){"format", "pt"});
    for (int i = 0; i < n; i++) gc_tensor_release(ts[i]);
    free(names);
    free(ts);
    return st;
}
