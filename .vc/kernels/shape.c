/* Views, copies and assembly: view, permute, transpose, slice, contiguous, detach,
 * cast, concat. Views share storage; their backward
 * maps the gradient back through the same geometry. */
#include <stdlib.h>
#include <string.h>

#include "gc_kernel_util.h"

/* ---------------------------------------------------------------- checks */

bool gc_check_same_device(const char *op, int n, gc_tensor *const *ts)
{
    for (int i = 1; i < n; i++)
        if (ts[i] && ts[0] && !gc_device_eq(ts[i]->device, ts[0]->device)) {
            gc_error_set(GC_ERR_DEVICE, "%s: %s is on %s but %s is on %s", op, gc_tensor_label(ts[i]),
                         gc_device_name(ts[i]->device), gc_tensor_label(ts[0]), gc_device_name(ts[0]->device));
            return false;
        }
    return true;
}

bool gc_check_float(const char *op, const gc_tensor *t)
{
    bool ok = t->dtype == GC_F32 || (t->device.type == GC_DEVICE_CUDA && t->dtype == GC_BF16);
    if (!ok)
        gc_error_set(GC_ERR_DTYPE, "%s: %s has dtype %s, which this op does not compute in on %s", op,
                     gc_tensor_label(t), gc_dtype_name(t->dtype), gc_device_name(t->device));
    return ok;
}

bool gc_check_same_dtype(const char *op, const gc_tensor *a, const gc_tensor *b)
{
    if (a->dtype == b->dtype) return true;
    gc_error_set(GC_ERR_DTYPE, "%s: %s is %s but %s is %s", op, gc_tensor_label(a), gc_dtype_name(a->dtype),
                 gc_tensor_label(b), gc_dtype_name(b->dtype));
    return false;
}

bool gc_check_index(const char *op, const gc_tensor *t)
{
    if (t->dtype == GC_I32 || t->dtype == GC_I64) return true;
    gc_error_set(GC_ERR_DTYPE, "%s: %s must hold i32 or i64 indices, not %s", op, gc_tensor_label(t), gc_dtype_name(t->dtype));
    return false;
}

/* ---------------------------------------------------------------- contiguous / detach */

gc_tensor *gc_contiguous_raw(gc_tensor *x)
{
    if (!x) return NULL;
    if (gc_tensor_is_contiguous(x)) return gc_pool_add(gc_tensor_retain(x));
    gc_tensor *y = gc_op_new(x->dtype, x->device, x->ndim, x->shape);
    if (!y || gc_tensor_copy_into(y, x, false) != GC_OK) return NULL;
    return y;
}

/* Geometry of a view y of x, over a contiguous buffer of x's shape (the layout of
 * x's gradient): the backward scatters gy through it. */
typedef struct view_geom { int ndim; int64_t shape[GC_MAX_DIMS], stride[GC_MAX_DIMS]; int64_t offset; } view_geom;

static gc_status copy_backward(gc_node *nd, gc_tensor *gy)
{
    /* y was a copy (contiguous() or cast): dx = gy converted to x's grad dtype */
    return gc_grad_accumulate(nd, 0, gy);
}

gc_tensor *gc_contiguous(gc_tensor *x)
{
    if (!x) return NULL;
    if (gc_tensor_is_contiguous(x)) return gc_pool_add(gc_tensor_retain(x));
    gc_tensor *y = gc_op_new(x->dtype, x->device, x->ndim, x->shape);
    if (!y || gc_tensor_copy_into(y, x, false) != GC_OK) return NULL;
    gc_autograd_record("contiguous", copy_backward, y, 1, &x, 0, NULL);
    return y;
}

gc_tensor *gc_detach(gc_tensor *x)
{
    if (!x) return NULL;
    return gc_pool_add(gc_tensor_view_of(x, x->ndim, x->shape, x->stride, x->offset));
}

gc_tensor *gc_cast(gc_tensor *x, gc_dtype dt)
{
    if (!x) return NULL;
    if (x->dtype == dt) return gc_pool_add(gc_tensor_retain(x));
    gc_tensor *y = gc_op_new(dt, x->device, x->ndim, x->shape);
    if (!y || gc_tensor_copy_into(y, x, false) != GC_OK) return NULL;
    if (gc_dtype_is_float(dt)) gc_autograd_record("cast", copy_backward, y, 1, &x, 0, NULL);
    return y;
}

/* ---------------------------------------------------------------- strided views */

/* A reshape keeps the elements and their order: x's gradient is gy itself. */
static gc_status reshape_backward(gc_node *nd, gc_tensor *gy) { return gc_grad_pass(nd, 0, gy); }

/* The gradient of a strided view y of x: scatter gy into x's gradient through the
 * view's geometry. x's gradient is contiguous with x's shape, so the view geometry
 * is re-expressed relative to a contiguous layout (recorded at forward time). A slice
 * whose consumers wrote its gradient in place, into x's (gc_grad_target_view), has no
 * buffer of its own, and this does not run. */
static gc_status view_backward(gc_node *nd, gc_tensor *gy)
{
    view_geom *g = nd->aux;
    bool acc;
    gc_tensor *gx = gc_grad_target(nd, 0, &acc);
    if (!gx) return GC_PENDING();
    /* a permute covers every element: overwrite; a slice leaves the rest at zero */
    bool covers = gc_tensor_numel(gy) == gc_tensor_numel(gx);
    if (!acc && !covers && gc_tensor_fill_zero(gx) != GC_OK) return GC_PENDING();
    gc_tensor *dst = gc_tensor_view_of(gx, g->ndim, g->shape, g->stride, gx->offset + g->offset);
    if (!dst) return GC_PENDING();
    gc_status st = gc_tensor_copy_into(dst, gy, acc || !covers);
    gc_tensor_release(dst);
    return st;
}

gc_tensor *gc_view(gc_tensor *x, int ndim, const int64_t *shape)
{
    if (!x) return NULL;
    if (ndim < 0 || ndim > GC_MAX_DIMS) { gc_error_set(GC_ERR_SHAPE, "view: rank %d outside 0..%d", ndim, GC_MAX_DIMS); return NULL; }
    int64_t sh[GC_MAX_DIMS], known = 1, n = gc_tensor_numel(x);
    int infer = -1;
    for (int i = 0; i < ndim; i++) {
        sh[i] = shape[i];
        if (shape[i] == -1) {
            if (infer >= 0) { gc_error_set(GC_ERR_SHAPE, "view: more than one -1 dimension"); return NULL; }
            infer = i;
        } else if (shape[i] < 0) {
            gc_error_set(GC_ERR_SHAPE, "view: negative dimension %lld", (long long)shape[i]);
            return NULL;
        } else known *= shape[i];
    }
    if (infer >= 0) sh[infer] = known ? n / known : 0;
    int64_t m = 1;
    for (int i = 0; i < ndim; i++) m *= sh[i];
    if (m != n || (infer >= 0 && known && n % known)) {
        char b[GC_SHAPE_STR_LEN];
        gc_error_set(GC_ERR_SHAPE, "view: cannot view %s %s (%lld elements) with %lld elements", gc_tensor_label(x),
                     gc_shape_str(x, b, sizeof b), (long long)n, (long long)m);
        return NULL;
    }
    bool same = ndim == x->ndim;
    for (int i = 0; same && i < ndim; i++) same = sh[i] == x->shape[i];
    if (same) return gc_contiguous(x); /* nothing to re-view */
    gc_tensor *xc = gc_contiguous(x);
    if (!xc) return NULL;
    int64_t st[GC_MAX_DIMS], s = 1;
    for (int i = ndim - 1; i >= 0; i--) { st[i] = s; s *= sh[i]; }
    /* xc is contiguous: its view geometry over a contiguous buffer is the same */
    gc_tensor *y = gc_tensor_view_of(xc, ndim, sh, st, xc->offset);
    if (!y) return NULL;
    gc_pool_add(y);
    gc_autograd_record("view", reshape_backward, y, 1, &xc, 0, NULL);
    return y;
}

/* Strides x would have if contiguous. */
static void contiguous_strides(const gc_tensor *x, int64_t *st)
{
    int64_t s = 1;
    for (int i = x->ndim - 1; i >= 0; i--) { st[i] = s; s *= x->shape[i]; }
}

gc_tensor *gc_permute(gc_tensor *x, const int *perm)
{
    if (!x) return NULL;
    int seen[GC_MAX_DIMS] = {0};
    int64_t sh[GC_MAX_DIMS], st[GC_MAX_DIMS], cst[GC_MAX_DIMS], cperm[GC_MAX_DIMS];
    contiguous_strides(x, cst);
    for (int i = 0; i < x->ndim; i++) {
        if (perm[i] < 0 || perm[i] >= x->ndim || seen[perm[i]]++) {
            gc_error_set(GC_ERR_INVALID, "permute: not a permutation of %d dims", x->ndim);
            return NULL;
        }
        sh[i] = x->shape[perm[i]];
        st[i] = x->stride[perm[i]];
        cperm[i] = cst[perm[i]];
    }
    gc_tensor *y = gc_tensor_view_of(x, x->ndim, sh, st, x->offset);
    if (!y) return NULL;
    gc_pool_add(y);
    if (gc_autograd_should_record(1, &x)) {
        view_geom *g = malloc(sizeof *g);
        if (!g) { gc_error_set(GC_ERR_OOM, "out of host memory"); return NULL; }
        g->ndim = x->ndim;
        memcpy(g->shape, sh, sizeof sh);
        memcpy(g->stride, cperm, sizeof cperm);
        g->offset = 0;
        gc_node *nd = gc_autograd_record("permute", view_backward, y, 1, &x, 0, NULL);
        if (!nd) { free(g); return NULL; }
        nd->aux = g;
        nd->aux_free = free;
    }
    return y;
}

gc_tensor *gc_transpose(gc_tensor *x, int d0, int d1)
{
    if (!x) return NULL;
    if (d0 < 0) d0 += x->ndim;
    if (d1 < 0) d1 += x->ndim;
    if (d0 < 0 || d1 < 0 || d0 >= x->ndim || d1 >= x->ndim) {
        gc_error_set(GC_ERR_INVALID, "transpose: dims out of range for rank %d", x->ndim);
        return NULL;
    }
    int perm[GC_MAX_DIMS];
    for (int i = 0; i < x->ndim; i++) perm[i] = i;
    perm[d0] = d1;
    perm[d1] = d0;
    return gc_permute(x, perm);
}

gc_tensor *gc_slice(gc_tensor *x, int dim, int64_t start, int64_t end)
{
    if (!x) return NULL;
    if (dim < 0) dim += x->ndim;
    if (dim < 0 || dim >= x->ndim || start < 0 || end < start || end > x->shape[dim]) {
        gc_error_set(GC_ERR_SHAPE, "slice: [%lld, %lld) of dim %d is outside %s's size %lld", (long long)start,
                     (long long)end, dim, gc_tensor_label(x), dim >= 0 && dim < x->ndim ? (long long)x->shape[dim] : -1LL);
        return NULL;
    }
    int64_t sh[GC_MAX_DIMS], cst[GC_MAX_DIMS];
    memcpy(sh, x->shape, sizeof sh);
    sh[dim] = end - start;
    contiguous_strides(x, cst);
    gc_tensor *y = gc_tensor_view_of(x, x->ndim, sh, x->stride, x->offset + start * x->stride[dim]);
    if (!y) return NULL;
    gc_pool_add(y);
    if (gc_autograd_should_record(1, &x)) {
        view_geom *g = malloc(sizeof *g);
        if (!g) { gc_error_set(GC_ERR_OOM, "out of host memory"); return NULL; }
        g->ndim = x->ndim;
        memcpy(g->shape, sh, sizeof sh);
        memcpy(g->stride, cst, sizeof cst);
        g->offset = start * cst[dim];
        gc_node *nd = gc_autograd_record("slice", view_backward, y, 1, &x, 0, NULL);
        if (!nd) { free(g); return NULL; }
        nd->aux = g;
        nd->aux_free = free;
        gc_autograd_slice_of(y, x, dim, start, end); /* y's gradient may be written into x's in place */
    }
    return y;
}

gc_tensor *gc_rows(gc_tensor *x, int64_t start, int64_t end) { return gc_slice(x, 0, start, end); }

/* ---------------------------------------------------------------- concat */

static gc_status concat_backward(gc_node *nd, gc_tensor *gy)
{
    int dim = (int)nd->iarg[0];
    int64_t at = 0;
    for (int i = 0; i < nd->n_in; i++) {
        int64_t len = nd->iarg[1 + i];
        if (nd->in[i]) {
            gc_tensor *part = gc_tensor_view_of(gy, gy->ndim, gy->shape, gy->stride, gy->offset + at * gy->stride[dim]);
            if (!part) return GC_PENDING();
            part->shape[dim] = len;
            gc_status st = gc_grad_accumulate(nd, i, part);
            gc_tensor_release(part);
            if (st != GC_OK) return st;
        }
        at += len;
    }
    return GC_OK;
}

gc_tensor *gc_concat(int n, gc_tensor *const *xs, int dim)
{
    if (n < 1 || n > GC_NODE_MAX_IN) {
        gc_error_set(GC_ERR_INVALID, "concat: %d inputs (1..%d supported)", n, GC_NODE_MAX_IN);
        return NULL;
    }
    for (int i = 0; i < n; i++)
        if (!xs[i]) return NULL;
    const gc_tensor *x0 = xs[0];
    if (dim < 0) dim += x0->ndim;
    if (dim < 0 || dim >= x0->ndim) { gc_error_set(GC_ERR_INVALID, "concat: dim out of range"); return NULL; }
    if (!gc_check_same_device("concat", n, xs)) return NULL;
    int64_t sh[GC_MAX_DIMS];
    memcpy(sh, x0->shape, sizeof sh);
    sh[dim] = 0;
    for (int i = 0; i < n; i++) {
        const gc_tensor *x = xs[i];
        bool ok = x->ndim == x0->ndim && x->dtype == x0->dtype;
        for (int d = 0; ok && d < x0->ndim; d++) ok = d == dim || x->shape[d] == x0->shape[d];
        if (!ok) {
            char a[GC_SHAPE_STR_LEN], b[GC_SHAPE_STR_LEN];
            gc_error_set(GC_ERR_SHAPE, "concat along dim %d: %s %s %s does not fit %s %s", dim, gc_tensor_label(x),
                         gc_dtype_name(x->dtype), gc_shape_str(x, a, sizeof a), gc_dtype_name(x0->dtype),
                         gc_shape_str(x0, b, sizeof b));
            return NULL;
        }
        sh[dim] += x->shape[dim];
    }
    gc_tensor *y = gc_op_new(x0->dtype, x0->device, x0->ndim, sh);
    if (!y) return NULL;
    int64_t at = 0;
    for (int i = 0; i < n; i++) {
        gc_tensor *part = gc_tensor_view_of(y, y->ndim, y->shape, y->stride, y->offset + at * y->stride[dim]);
        if (!part) return NULL;
        part->shape[dim] = xs[i]->shape[dim];
        gc_status st = gc_tensor_copy_into(part, xs[i], false);
        gc_tensor_release(part);
        if (st != GC_OK) return NULL;
        at += xs[i]->shape[dim];
    }
    gc_node *nd = gc_autograd_record("concat", concat_backward, y, n, xs, 0, NULL);
    if (nd) {
        nd->iarg[0] = dim;
        for (int i = 0; i < n && i < 7; i++) nd->iarg[1 + i] = xs[i]->shape[dim];
    }
    return y;
}
