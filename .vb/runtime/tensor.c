/* Tensors, storage, pools and raw data movement. */
#include "gc_tensor.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../autograd/gc_autograd.h"
#include "gc_cuda.h"

size_t gc_dtype_size(gc_dtype t)
{
    static const size_t sz[GC_DTYPE_COUNT] = {4, 2, 2, 4, 8, 8};
    return (unsigned)t < GC_DTYPE_COUNT ? sz[t] : 0;
}

const char *gc_dtype_name(gc_dtype t)
{
    static const char *nm[GC_DTYPE_COUNT] = {"f32", "bf16", "f16", "i32", "i64", "f64"};
    return (unsigned)t < GC_DTYPE_COUNT ? nm[t] : "?";
}

bool gc_dtype_is_float(gc_dtype t) { return t == GC_F32 || t == GC_BF16 || t == GC_F16 || t == GC_F64; }

float gc_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    float f;
    if (exp == 0) f = ldexpf((float)man, -24);
    else if (exp == 31) f = man ? NAN : INFINITY;
    else f = ldexpf((float)(man | 0x400), (int)exp - 25);
    union { float f; uint32_t u; } v = {f};
    v.u |= sign;
    return v.f;
}

uint16_t gc_f32_to_f16(float f)
{
    union { float f; uint32_t u; } v = {f};
    uint32_t sign = (v.u >> 16) & 0x8000;
    float a = fabsf(f);
    if (isnan(f)) return (uint16_t)(sign | 0x7e00);
    if (a >= 65520.0f) return (uint16_t)(sign | 0x7c00);
    if (a < 6.103515625e-05f) { /* subnormal: multiples of 2^-24, round to nearest even */
        return (uint16_t)(sign | (uint32_t)nearbyintf(a * 16777216.0f));
    }
    int e;
    float m = frexpf(a, &e); /* a = m * 2^e, m in [0.5,1) */
    uint32_t man = (uint32_t)nearbyintf((m * 2.0f - 1.0f) * 1024.0f);
    int exp = e - 1 + 15;
    if (man == 1024) { man = 0; exp++; }
    if (exp >= 31) return (uint16_t)(sign | 0x7c00);
    return (uint16_t)(sign | ((uint32_t)exp << 10) | man);
}

/* ---------------------------------------------------------------- storage */

static gc_storage *storage_new(gc_device dev, size_t nbytes)
{
    gc_storage *s = calloc(1, sizeof *s);
    if (!s) { gc_error_set(GC_ERR_OOM, "out of host memory"); return NULL; }
    s->refcount = 1;
    s->device = dev;
    s->nbytes = nbytes;
    if (nbytes) {
        s->data = gc_device_alloc(dev, nbytes);
        if (!s->data) { free(s); return NULL; }
    }
    return s;
}

static void storage_release(gc_storage *s)
{
    if (!s || --s->refcount > 0) return;
#ifdef GC_WITH_CUDA
    /* syncs first: an upload may still read it; an error is recorded, the memory freed anyway */
    if (s->pinned) (void)gc_cuda_host_unregister(s->data);
#endif
    if (s->release) s->release(s->release_ctx, s->data, s->nbytes);
    else if (s->data) gc_device_free(s->device, s->data);
    free(s);
}

/* ---------------------------------------------------------------- tensors */

static bool shape_ok(int ndim, const int64_t *shape)
{
    if (ndim < 0 || ndim > GC_MAX_DIMS) {
        gc_error_set(GC_ERR_SHAPE, "tensor rank %d is outside 0..%d", ndim, GC_MAX_DIMS);
        return false;
    }
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0) { gc_error_set(GC_ERR_SHAPE, "negative dimension %lld", (long long)shape[i]); return false; }
    /* the element count and its bytes (8 at most an element) must fit: no wrapped size */
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] && n > INT64_MAX / 8 / shape[i]) {
            char sh[GC_SHAPE_STR_LEN];
            size_t k = (size_t)snprintf(sh, sizeof sh, "[");
            for (int j = 0; j < ndim && k < sizeof sh; j++)
                k += (size_t)snprintf(sh + k, sizeof sh - k, j ? ", %lld" : "%lld", (long long)shape[j]);
            if (k < sizeof sh) snprintf(sh + k, sizeof sh - k, "]");
            gc_error_set(GC_ERR_SHAPE, "tensor shape %s has too many elements", sh);
            return false;
        }
        n *= shape[i];
    }
    return true;
}

static gc_tensor *tensor_header(gc_dtype dt, gc_device dev, int ndim, const int64_t *shape)
{
    if ((unsigned)dt >= GC_DTYPE_COUNT) { gc_error_set(GC_ERR_DTYPE, "unknown dtype %d", (int)dt); return NULL; }
    if (!shape_ok(ndim, shape)) return NULL;
    gc_tensor *t = calloc(1, sizeof *t);
    if (!t) { gc_error_set(GC_ERR_OOM, "out of host memory"); return NULL; }
    t->refcount = 1;
    t->dtype = dt;
    t->device = dev;
    t->ndim = ndim;
    int64_t st = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        t->shape[i] = shape[i];
        t->stride[i] = st;
        st *= shape[i];
    }
    return t;
}

gc_tensor *gc_tensor_new(gc_dtype dt, gc_device dev, int ndim, const int64_t *shape)
{
    gc_tensor *t = tensor_header(dt, dev, ndim, shape);
    if (!t) return NULL;
    t->storage = storage_new(dev, gc_tensor_nbytes(t));
    if (!t->storage) { free(t); return NULL; }
    return t;
}

gc_tensor *gc_tensor_zeros(gc_dtype dt, gc_device dev, int ndim, const int64_t *shape)
{
    gc_tensor *t = gc_tensor_new(dt, dev, ndim, shape);
    if (t && gc_tensor_fill_zero(t) != GC_OK) { gc_tensor_release(t); return NULL; }
    return t;
}

gc_tensor *gc_tensor_from_data(gc_dtype dt, gc_device dev, int ndim, const int64_t *shape, const void *data)
{
    gc_tensor *t = gc_tensor_new(dt, dev, ndim, shape);
    if (!t) return NULL;
    if (gc_memcpy(dev, t->storage->data, GC_CPU, data, gc_tensor_nbytes(t)) != GC_OK) {
        gc_tensor_release(t);
        return NULL;
    }
    return t;
}

gc_tensor *gc_tensor_wrap(gc_dtype dt, gc_device dev, int ndim, const int64_t *shape, void *data,
                          void (*release)(void *, void *, size_t), void *ctx)
{
    gc_tensor *t = tensor_header(dt, dev, ndim, shape);
    if (!t) return NULL;
    t->storage = calloc(1, sizeof *t->storage);
    if (!t->storage) { free(t); gc_error_set(GC_ERR_OOM, "out of host memory"); return NULL; }
    *t->storage = (gc_storage){.refcount = 1, .device = dev, .data = data, .nbytes = gc_tensor_nbytes(t),
                               .release = release, .release_ctx = ctx};
    return t;
}

gc_tensor *gc_tensor_retain(gc_tensor *t)
{
    if (t) t->refcount++;
    return t;
}

void gc_autograd_slot_release(struct gc_grad_slot *s); /* autograd/tape.c */

void gc_tensor_release(gc_tensor *t)
{
    if (!t || --t->refcount > 0) return;
    if (t->slot) gc_autograd_slot_release(t->slot);
    storage_release(t->storage);
    free(t->name);
    free(t);
}

void gc_tensor_set_name(gc_tensor *t, const char *name)
{
    if (!t) return;
    free(t->name);
    t->name = name ? strdup(name) : NULL;
}

const char *gc_tensor_label(const gc_tensor *t) { return t && t->name ? t->name : "tensor"; }

/* A view: new header sharing x's storage (used by kernels/shape.c). */
gc_tensor *gc_tensor_view_of(const gc_tensor *x, int ndim, const int64_t *shape, const int64_t *stride, int64_t offset)
{
    gc_tensor *t = tensor_header(x->dtype, x->device, ndim, shape);
    if (!t) return NULL;
    for (int i = 0; i < ndim; i++) t->stride[i] = stride[i];
    t->offset = offset;
    t->storage = x->storage;
    t->storage->refcount++;
    return t;
}

gc_status gc_tensor_rebind(gc_tensor *t, const gc_tensor *base, int64_t offset)
{
    if (!t || !base) return GC_PENDING();
    if (t->dtype != base->dtype || !gc_device_eq(t->device, base->device) || !gc_tensor_is_contiguous(t) || offset < 0 ||
        (size_t)(offset + gc_tensor_numel(t)) * gc_dtype_size(t->dtype) > base->storage->nbytes)
        return gc_error_set(GC_ERR_INVALID, "rebind of %s: not a contiguous %s region of the buffer", gc_tensor_label(t),
                            gc_dtype_name(base->dtype));
    base->storage->refcount++;
    storage_release(t->storage);
    t->storage = base->storage;
    t->offset = offset;
    return GC_OK;
}

/* ---------------------------------------------------------------- pools */

struct gc_pool {
    gc_pool *parent;
    gc_tensor **items;
    size_t n, cap;
};

static _Thread_local gc_pool root_pool;
static _Thread_local gc_pool *top_pool;

static gc_pool *pool_top(void) { return top_pool ? top_pool : &root_pool; }

gc_pool *gc_pool_push(void)
{
    gc_pool *p = calloc(1, sizeof *p);
    if (!p) { gc_error_set(GC_ERR_OOM, "out of host memory"); return NULL; }
    p->parent = pool_top();
    top_pool = p;
    return p;
}

static void pool_drain(gc_pool *p)
{
    /* release newest first: views before their bases */
    while (p->n) gc_tensor_release(p->items[--p->n]);
}

void gc_pool_pop(gc_pool *p)
{
    if (!p) return;
    /* popping an outer pool pops the ones inside it too */
    while (top_pool && top_pool != p) {
        gc_pool *q = top_pool;
        top_pool = q->parent == &root_pool ? NULL : q->parent;
        pool_drain(q);
        free(q->items);
        free(q);
    }
    if (top_pool != p) return; /* not on the stack */
    top_pool = p->parent == &root_pool ? NULL : p->parent;
    pool_drain(p);
    free(p->items);
    free(p);
}

static gc_tensor *pool_add_to(gc_pool *p, gc_tensor *t)
{
    if (!t) return NULL;
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 64;
        gc_tensor **it = realloc(p->items, cap * sizeof *it);
        if (!it) { gc_error_set(GC_ERR_OOM, "out of host memory"); gc_tensor_release(t); return NULL; }
        p->items = it;
        p->cap = cap;
    }
    p->items[p->n++] = t;
    return t;
}

gc_tensor *gc_pool_add(gc_tensor *t) { return pool_add_to(pool_top(), t); }

gc_tensor *gc_pool_keep(gc_tensor *t)
{
    if (!t) return NULL;
    gc_pool *p = pool_top();
    gc_pool *up = p->parent ? p->parent : p;
    return pool_add_to(up, gc_tensor_retain(t));
}

/* ---------------------------------------------------------------- geometry */

int64_t gc_tensor_numel(const gc_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

size_t gc_tensor_nbytes(const gc_tensor *t) { return (size_t)gc_tensor_numel(t) * gc_dtype_size(t->dtype); }

bool gc_tensor_is_contiguous(const gc_tensor *t)
{
    int64_t st = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] != 1 && t->stride[i] != st) return false;
        st *= t->shape[i];
    }
    return true;
}

void *gc_tensor_data(const gc_tensor *t)
{
    return (char *)t->storage->data + t->offset * (int64_t)gc_dtype_size(t->dtype);
}

bool gc_shape_eq(const gc_tensor *a, const gc_tensor *b)
{
    if (a->ndim != b->ndim) return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return false;
    return true;
}

int64_t gc_tensor_rows(const gc_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i + 1 < t->ndim; i++) n *= t->shape[i];
    return n;
}

int64_t gc_tensor_cols(const gc_tensor *t) { return t->ndim ? t->shape[t->ndim - 1] : 1; }

char *gc_shape_str(const gc_tensor *t, char *buf, size_t n)
{
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < t->ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, i ? ", %lld" : "%lld", (long long)t->shape[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
    return buf;
}

/* ---------------------------------------------------------------- CPU element access */

static double load_elem(const void *p, gc_dtype dt)
{
    switch (dt) {
    case GC_F32: return *(const float *)p;
    case GC_BF16: return gc_bf16_to_f32(*(const uint16_t *)p);
    case GC_F16: return gc_f16_to_f32(*(const uint16_t *)p);
    case GC_I32: return *(const int32_t *)p;
    case GC_I64: return (double)*(const int64_t *)p;
    case GC_F64: return *(const double *)p;
    default: return 0;
    }
}

static void store_elem(void *p, gc_dtype dt, double v)
{
    switch (dt) {
    case GC_F32: *(float *)p = (float)v; break;
    case GC_BF16: *(uint16_t *)p = gc_f32_to_bf16((float)v); break;
    case GC_F16: *(uint16_t *)p = gc_f32_to_f16((float)v); break;
    case GC_I32: *(int32_t *)p = (int32_t)v; break;
    case GC_I64: *(int64_t *)p = (int64_t)v; break;
    case GC_F64: *(double *)p = v; break;
    default: break;
    }
}

/* Strided walk over all elements of a CPU tensor pair with equal shapes. */
static void cpu_copy_strided(gc_tensor *dst, const gc_tensor *src, bool acc)
{
    int64_t n = gc_tensor_numel(dst);
    size_t ds = gc_dtype_size(dst->dtype), ss = gc_dtype_size(src->dtype);
    char *dp = gc_tensor_data(dst);
    const char *sp = gc_tensor_data(src);
    if (!acc && dst->dtype == src->dtype && gc_tensor_is_contiguous(dst) && gc_tensor_is_contiguous(src)) {
        memmove(dp, sp, (size_t)n * ds);
        return;
    }
    int64_t idx[GC_MAX_DIMS] = {0};
    for (int64_t e = 0; e < n; e++) {
        int64_t so = 0, doff = 0;
        for (int d = 0; d < dst->ndim; d++) {
            so += idx[d] * src->stride[d];
            doff += idx[d] * dst->stride[d];
        }
        double v = load_elem(sp + so * (int64_t)ss, src->dtype);
        if (acc) v += load_elem(dp + doff * (int64_t)ds, dst->dtype);
        store_elem(dp + doff * (int64_t)ds, dst->dtype, v);
        for (int d = dst->ndim - 1; d >= 0; d--) {
            if (++idx[d] < dst->shape[d]) break;
            idx[d] = 0;
        }
    }
}

gc_status gc_tensor_copy_into(gc_tensor *dst, const gc_tensor *src, bool accumulate)
{
    if (!dst || !src) return GC_PENDING();
    if (!gc_shape_eq(dst, src)) {
        char a[GC_SHAPE_STR_LEN], b[GC_SHAPE_STR_LEN];
        return gc_error_set(GC_ERR_SHAPE, "copy of %s %s into %s %s: shapes differ", gc_tensor_label(src),
                            gc_shape_str(src, a, sizeof a), gc_tensor_label(dst), gc_shape_str(dst, b, sizeof b));
    }
    if (gc_tensor_numel(dst) == 0) return GC_OK;
    if (dst->device.type == GC_DEVICE_CPU && src->device.type == GC_DEVICE_CPU) {
        cpu_copy_strided(dst, src, accumulate);
        return GC_OK;
    }
#ifdef GC_WITH_CUDA
    if (dst->device.type == GC_DEVICE_CUDA && src->device.type == GC_DEVICE_CUDA)
        return gc_cuda_copy_strided(dst, src, accumulate);
    /* across devices: one copy straight into dst when nothing needs converting */
    if (!accumulate && dst->dtype == src->dtype && gc_tensor_is_contiguous(dst) && gc_tensor_is_contiguous(src))
        return gc_memcpy(dst->device, gc_tensor_data(dst), src->device, gc_tensor_data(src), gc_tensor_nbytes(src));
    /* otherwise bring src over contiguous, in its own dtype, then convert there */
    gc_tensor *tmp = gc_tensor_new(src->dtype, dst->device, src->ndim, src->shape);
    if (!tmp) return GC_PENDING();
    gc_status st = GC_OK;
    if (gc_tensor_is_contiguous(src)) {
        st = gc_memcpy(dst->device, gc_tensor_data(tmp), src->device, gc_tensor_data(src), gc_tensor_nbytes(src));
    } else {
        gc_tensor *c = gc_tensor_new(src->dtype, src->device, src->ndim, src->shape);
        st = c ? gc_tensor_copy_into(c, src, false) : GC_PENDING();
        if (st == GC_OK) st = gc_memcpy(dst->device, gc_tensor_data(tmp), src->device, gc_tensor_data(c), gc_tensor_nbytes(c));
        gc_tensor_release(c);
    }
    if (st == GC_OK) st = gc_tensor_copy_into(dst, tmp, accumulate);
    gc_tensor_release(tmp);
    return st;
#else
    return gc_error_set(GC_ERR_DEVICE, "copy to %s: this build has no CUDA backend", gc_device_name(dst->device));
#endif
}

gc_status gc_tensor_fill_zero(gc_tensor *t)
{
    if (!t) return GC_PENDING();
    if (gc_tensor_is_contiguous(t)) return gc_memzero(t->device, gc_tensor_data(t), gc_tensor_nbytes(t));
    /* a strided region (of a gradient shared by slices): a copy of one zero, every stride 0 */
    gc_tensor *z = gc_tensor_zeros(t->dtype, t->device, 0, NULL);
    const int64_t st[GC_MAX_DIMS] = {0};
    gc_tensor *zv = z ? gc_tensor_view_of(z, t->ndim, t->shape, st, 0) : NULL;
    gc_status s = zv ? gc_tensor_copy_into(t, zv, false) : GC_PENDING();
    gc_tensor_release(zv);
    gc_tensor_release(z);
    return s;
}

gc_status gc_tensor_fill(gc_tensor *t, double value)
{
    if (!t) return GC_PENDING();
    if (!gc_tensor_is_contiguous(t)) return gc_error_set(GC_ERR_INVALID, "fill of a non-contiguous %s", gc_tensor_label(t));
    if (t->device.type == GC_DEVICE_CPU) {
        char *p = gc_tensor_data(t);
        size_t es = gc_dtype_size(t->dtype);
        for (int64_t i = 0, n = gc_tensor_numel(t); i < n; i++) store_elem(p + i * (int64_t)es, t->dtype, value);
        return GC_OK;
    }
#ifdef GC_WITH_CUDA
    return gc_cuda_fill(t, value);
#else
    return gc_error_set(GC_ERR_DEVICE, "this build has no CUDA backend");
#endif
}

gc_tensor *gc_tensor_to(const gc_tensor *t, gc_device dev, gc_dtype dt)
{
    if (!t) return NULL;
    gc_tensor *o = gc_tensor_new(dt, dev, t->ndim, t->shape);
    if (!o) return NULL;
    if (gc_tensor_copy_into(o, t, false) != GC_OK) { gc_tensor_release(o); return NULL; }
    return o;
}

gc_status gc_upload_begin(gc_upload *u, gc_tensor *src, gc_device dev)
{
    *u = (gc_upload){0};
    if (!src) return GC_PENDING();
    if (gc_device_eq(src->device, dev)) {
        u->t = gc_tensor_retain(src);
        return GC_OK;
    }
#ifdef GC_WITH_CUDA
    if (src->device.type == GC_DEVICE_CPU && dev.type == GC_DEVICE_CUDA && gc_tensor_is_contiguous(src)) {
        gc_tensor *t = gc_tensor_new(src->dtype, dev, src->ndim, src->shape);
        if (!t) return GC_PENDING();
        gc_status st = gc_cuda_copy_async(gc_tensor_data(t), gc_tensor_data(src), gc_tensor_nbytes(t), &u->done);
        if (st != GC_OK) { gc_tensor_release(t); return st; }
        u->t = t;
        return GC_OK;
    }
#endif
    u->t = gc_tensor_to(src, dev, src->dtype);
    return u->t ? GC_OK : GC_PENDING();
}

gc_tensor *gc_upload_end(gc_upload *u)
{
    gc_tensor *t = u->t;
    gc_status st = GC_OK;
#ifdef GC_WITH_CUDA
    st = gc_cuda_copy_wait(u->done);
#endif
    *u = (gc_upload){0};
    if (st != GC_OK) { gc_tensor_release(t); return NULL; }
    return t;
}

static gc_status to_host(const gc_tensor *t, gc_dtype dt, void *out)
{
    if (!t) return GC_PENDING();
    gc_tensor *h = gc_tensor_wrap(dt, GC_CPU, t->ndim, t->shape, out, NULL, NULL);
    if (!h) return GC_PENDING();
    gc_status st = gc_tensor_copy_into(h, t, false);
    h->storage->data = NULL; /* not ours */
    gc_tensor_release(h);
    return st;
}

gc_status gc_tensor_to_host_f32(const gc_tensor *t, float *out) { return to_host(t, GC_F32, out); }
gc_status gc_tensor_to_host_f64(const gc_tensor *t, double *out) { return to_host(t, GC_F64, out); }

gc_status gc_tensor_pin(gc_tensor *t)
{
    if (!t) return GC_PENDING();
    gc_storage *s = t->storage;
    /* device memory is not pageable; an empty (or recompute-freed) storage has no pages */
    if (t->device.type != GC_DEVICE_CPU || s->pinned || !s->data || !s->nbytes) return GC_OK;
#ifdef GC_WITH_CUDA
    if (!gc_cuda_available()) return GC_OK; /* no GPU to upload to: locking pages would only cost */
    char sh[GC_SHAPE_STR_LEN], what[GC_SHAPE_STR_LEN + 96];
    snprintf(what, sizeof what, "%s %s %s", gc_tensor_label(t), gc_dtype_name(t->dtype), gc_shape_str(t, sh, sizeof sh));
    bool registered;
    GC_TRY(gc_cuda_host_register(s->data, s->nbytes, what, &registered));
    s->pinned = registered;
#endif
    return GC_OK;
}

bool gc_tensor_is_pinned(const gc_tensor *t) { return t && t->storage && t->storage->pinned; }

gc_status gc_tensor_item(const gc_tensor *t, double *out)
{
    if (!t) return GC_PENDING();
    if (gc_tensor_numel(t) != 1)
        return gc_error_set(GC_ERR_SHAPE, "item() of %s with %lld elements", gc_tensor_label(t), (long long)gc_tensor_numel(t));
    return gc_tensor_to_host_f64(t, out);
}
