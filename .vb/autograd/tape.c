/* The tape: recording, backward, parameters and recomputation. */
#include "gc_autograd.h"

#include <stdlib.h>
#include <string.h>

#include "../runtime/gc_rng.h"

struct gc_tape {
    gc_node **nodes;
    int n, cap;
};

static _Thread_local bool grad_on = true;
#define TAPE_STACK_MAX 32
static _Thread_local gc_tape *tape_stack[TAPE_STACK_MAX];
static _Thread_local int tape_depth;

bool gc_grad_enabled(void) { return grad_on; }
bool gc_grad_set_enabled(bool on) { bool prev = grad_on; grad_on = on; return prev; }

gc_tape *gc_tape_current(void) { return tape_depth ? tape_stack[tape_depth - 1] : NULL; }

gc_tape *gc_tape_init(void)
{
    gc_tape *t = calloc(1, sizeof *t);
    if (!t) gc_error_set(GC_ERR_OOM, "out of host memory");
    return t;
}

void gc_tape_begin(gc_tape *t)
{
    if (!t) return;
    if (tape_depth == TAPE_STACK_MAX) { gc_error_set(GC_ERR_STATE, "tapes nested deeper than %d", TAPE_STACK_MAX); return; }
    tape_stack[tape_depth++] = t;
}

void gc_tape_end(gc_tape *t)
{
    if (tape_depth && tape_stack[tape_depth - 1] == t) tape_depth--;
    else if (t) gc_error_set(GC_ERR_STATE, "gc_tape_end: the tape is not the current one");
}

int gc_tape_size(const gc_tape *t) { return t ? t->n : 0; }

/* A saved tensor whose storage gc_recompute_release freed holds no data until backward. */
static bool saved_held(const gc_tensor *s) { return s && (s->storage->data || !s->storage->recompute); }

size_t gc_tape_saved_bytes(const gc_tape *t)
{
    size_t b = 0;
    for (int i = 0; t && i < t->n; i++)
        for (int j = 0; j < t->nodes[i]->n_saved; j++)
            if (saved_held(t->nodes[i]->saved[j])) b += gc_tensor_nbytes(t->nodes[i]->saved[j]);
    return b;
}

/* ---------------------------------------------------------------- slots */

static gc_grad_slot *slot_new(const gc_tensor *t, bool leaf, gc_dtype grad_dtype)
{
    gc_grad_slot *s = calloc(1, sizeof *s);
    if (!s) { gc_error_set(GC_ERR_OOM, "out of host memory"); return NULL; }
    s->refcount = 1;
    s->is_leaf = leaf;
    s->dtype = grad_dtype;
    s->device = t->device;
    s->ndim = t->ndim;
    memcpy(s->shape, t->shape, sizeof s->shape);
    return s;
}

static gc_grad_slot *slot_retain(gc_grad_slot *s)
{
    if (s) s->refcount++;
    return s;
}

void gc_autograd_slot_release(gc_grad_slot *s)
{
    if (!s || --s->refcount > 0) return;
    gc_tensor_release(s->grad);
    gc_tensor_release(s->region);
    gc_autograd_slot_release(s->parent);
    free(s);
}

static gc_tensor *slot_grad_alloc(gc_grad_slot *s, bool zero)
{
    if (!s->grad) {
        s->grad = zero ? gc_tensor_zeros(s->dtype, s->device, s->ndim, s->shape)
                       : gc_tensor_new(s->dtype, s->device, s->ndim, s->shape);
    }
    return s->grad;
}

/* ---------------------------------------------------------------- parameters */

gc_status gc_tensor_requires_grad(gc_tensor *t, bool on)
{
    if (!t) return GC_PENDING();
    if (!on) {
        gc_autograd_slot_release(t->slot);
        t->slot = NULL;
        return GC_OK;
    }
    if (t->slot) return GC_OK;
    if (!gc_dtype_is_float(t->dtype))
        return gc_error_set(GC_ERR_DTYPE, "%s: only floating tensors can require a gradient (got %s)",
                            gc_tensor_label(t), gc_dtype_name(t->dtype));
    t->slot = slot_new(t, true, GC_F32);
    if (!t->slot) return GC_PENDING();
    if (!slot_grad_alloc(t->slot, true)) {
        gc_autograd_slot_release(t->slot);
        t->slot = NULL;
        return GC_PENDING();
    }
    return GC_OK;
}

gc_status gc_tensor_make_leaf(gc_tensor *t)
{
    if (!t) return GC_PENDING();
    if (!gc_dtype_is_float(t->dtype))
        return gc_error_set(GC_ERR_DTYPE, "%s: only floating tensors can require a gradient", gc_tensor_label(t));
    gc_autograd_slot_release(t->slot);
    t->slot = slot_new(t, true, t->dtype == GC_F64 ? GC_F32 : t->dtype);
    return t->slot ? GC_OK : GC_PENDING();
}

gc_status gc_tensor_set_grad(gc_tensor *t, gc_tensor *g)
{
    if (!t || !g) return GC_PENDING();
    if (!t->slot || !t->slot->is_leaf || g->dtype != t->slot->dtype || !gc_shape_eq(t, g) || !gc_tensor_is_contiguous(g) ||
        !gc_device_eq(g->device, t->device))
        return gc_error_set(GC_ERR_INVALID, "%s: a gradient buffer for a trainable leaf must be contiguous %s of its shape",
                            gc_tensor_label(t), gc_dtype_name(t->slot ? t->slot->dtype : GC_F32));
    gc_tensor_retain(g);
    gc_tensor_release(t->slot->grad);
    t->slot->grad = g;
    return GC_OK;
}

bool gc_tensor_needs_grad(const gc_tensor *t) { return t && t->slot; }
gc_tensor *gc_tensor_grad(const gc_tensor *t) { return t && t->slot ? t->slot->grad : NULL; }

gc_status gc_tensor_zero_grad(gc_tensor *t)
{
    if (!t) return GC_PENDING();
    if (!t->slot || !t->slot->grad) return GC_OK;
    return gc_tensor_fill_zero(t->slot->grad);
}

/* ---------------------------------------------------------------- recording */

bool gc_autograd_should_record(int n, gc_tensor *const *inputs)
{
    if (!grad_on || !gc_tape_current()) return false;
    for (int i = 0; i < n; i++)
        if (inputs[i] && inputs[i]->slot) return true;
    return false;
}

static void node_free(gc_node *nd)
{
    if (!nd) return;
    for (int i = 0; i < nd->n_saved; i++) gc_tensor_release(nd->saved[i]);
    for (int i = 0; i < nd->n_in; i++) gc_autograd_slot_release(nd->in[i]);
    if (nd->out) {
        if (nd->out->node == nd) nd->out->node = NULL;
        if (!nd->out->is_leaf) { /* an intermediate's gradient is needed no longer */
            gc_tensor_release(nd->out->grad);
            gc_tensor_release(nd->out->region);
            nd->out->grad = nd->out->region = NULL;
            nd->out->partial = false;
        }
        gc_autograd_slot_release(nd->out);
    }
    if (nd->recomputed) { /* its consumers ran or were dropped before it: nothing else holds the storage */
        nd->recomputed->storage->recompute = NULL;
        gc_tensor_release(nd->recomputed);
    }
    if (nd->aux_free) nd->aux_free(nd->aux);
    free(nd);
}

static gc_node *record(const char *op, gc_backward_fn bw, gc_tensor *out, int n_in, gc_tensor *const *inputs,
                       int n_saved, gc_tensor *const *saved)
{
    gc_tape *tp = gc_tape_current();
    if (n_in > GC_NODE_MAX_IN || n_saved > GC_NODE_MAX_SAVED) {
        gc_error_set(GC_ERR_STATE, "%s: too many inputs or saved tensors for a node", op);
        return NULL;
    }
    if (out->slot) {
        gc_error_set(GC_ERR_STATE, "%s: output already has autograd history", op);
        return NULL;
    }
    if (tp->n == tp->cap) {
        int cap = tp->cap ? tp->cap * 2 : 256;
        gc_node **nn = realloc(tp->nodes, (size_t)cap * sizeof *nn);
        if (!nn) { gc_error_set(GC_ERR_OOM, "out of host memory"); return NULL; }
        tp->nodes = nn;
        tp->cap = cap;
    }
    gc_node *nd = calloc(1, sizeof *nd);
    gc_grad_slot *os = slot_new(out, false, out->dtype);
    if (!nd || !os) { free(nd); free(os); gc_error_set(GC_ERR_OOM, "out of host memory"); return NULL; }
    nd->op = op;
    nd->backward = bw;
    nd->n_in = n_in;
    for (int i = 0; i < n_in; i++) nd->in[i] = inputs[i] ? slot_retain(inputs[i]->slot) : NULL;
    nd->n_saved = n_saved;
    for (int i = 0; i < n_saved; i++) nd->saved[i] = gc_tensor_retain(saved[i]);
    out->slot = os;             /* the tensor's reference */
    nd->out = slot_retain(os);  /* the node's reference */
    os->node = nd;
    tp->nodes[tp->n++] = nd;
    return nd;
}

gc_node *gc_autograd_record(const char *op, gc_backward_fn bw, gc_tensor *out, int n_in, gc_tensor *const *inputs,
                            int n_saved, gc_tensor *const *saved)
{
    if (!out || !gc_autograd_should_record(n_in, inputs)) return NULL;
    return record(op, bw, out, n_in, inputs, n_saved, saved);
}

/* ---------------------------------------------------------------- slices' regions
 *
 * A slice y of x (both on the tape) whose consumer can write strided gradients gets, as
 * its gradient, the region of x's gradient buffer it views (y->slot->region): written
 * in place, so the slice's backward, which would copy y's gradient into x's, never runs
 * (it runs only for y->slot->grad, a buffer of y's own). x's buffer is then "partial":
 * only the regions handed out hold gradients. They are recorded (disjoint intervals
 * along one dim), and the rest is zeroed before anything reads x's gradient whole
 * (slot_complete): x's backward, or a consumer adding into it. A slice that cannot
 * have its region (x a leaf, overlapping or crossing regions) gets a buffer of its own,
 * as before. */

/* The view of parent p's gradient buffer (contiguous, p's shape) that slice slot s covers. */
static gc_tensor *region_view(const gc_grad_slot *s)
{
    const gc_tensor *g = s->parent->grad;
    return gc_tensor_view_of(g, s->ndim, s->shape, g->stride, g->offset + s->start * g->stride[s->dim]);
}

/* Zeroes what no region of s's partial buffer covers; s's gradient is then whole. */
static gc_status slot_complete(gc_grad_slot *s)
{
    if (!s->partial) return GC_OK;
    const int dim = s->written_dim, n = s->n_written;
    const int64_t *st = s->grad->stride; /* contiguous, s's shape */
    int64_t at = 0;
    s->partial = false;
    s->n_written = 0;
    for (int k = 0; k <= n; k++) {
        /* the gap before the k-th region in order (the regions sorted by start) */
        int64_t next = s->shape[dim], till = s->shape[dim];
        for (int j = 0; j < n; j++)
            if (s->written[j][0] >= at && s->written[j][0] < next) next = s->written[j][0], till = s->written[j][1];
        if (next > at) {
            int64_t sh[GC_MAX_DIMS];
            memcpy(sh, s->shape, sizeof sh);
            sh[dim] = next - at;
            gc_tensor *gap = gc_tensor_view_of(s->grad, s->ndim, sh, st, s->grad->offset + at * st[dim]);
            gc_status r = gap ? gc_tensor_fill_zero(gap) : GC_PENDING();
            gc_tensor_release(gap);
            if (r != GC_OK) return r;
        }
        at = till;
    }
    return GC_OK;
}

/* s's region of its parent's buffer, with *accumulate; NULL where s cannot have one (then
 * it gets a buffer of its own), or with *failed and the error set. */
static gc_tensor *region_take(gc_grad_slot *s, bool *accumulate, bool *failed)
{
    gc_grad_slot *p = s->parent;
    *failed = false;
    if (p->is_leaf) return NULL; /* a parameter's gradient stays whole and its own */
    if (!p->grad) {
        if (!slot_grad_alloc(p, false)) {
            *failed = true;
            return NULL;
        }
        p->partial = true;
        p->n_written = 0;
    }
    if (!p->partial) {
        *accumulate = true; /* the parent's gradient is whole: add into it */
    } else {
        if (p->n_written == GC_SLOT_MAX_REGIONS || (p->n_written && p->written_dim != s->dim)) return NULL;
        for (int j = 0; j < p->n_written; j++)
            if (s->start < p->written[j][1] && p->written[j][0] < s->end) return NULL;
        p->written_dim = s->dim;
        p->written[p->n_written][0] = s->start;
        p->written[p->n_written++][1] = s->end;
        *accumulate = false;
    }
    if (!(s->region = region_view(s))) *failed = true;
    return s->region;
}

gc_tensor *gc_grad_target(gc_node *node, int i, bool *accumulate)
{
    gc_grad_slot *s = node->in[i];
    if (!s) return NULL;
    if (slot_complete(s) != GC_OK) return NULL;
    *accumulate = s->grad != NULL;
    return slot_grad_alloc(s, false);
}

gc_tensor *gc_grad_target_view(gc_node *node, int i, bool *accumulate)
{
    gc_grad_slot *s = node->in[i];
    if (!s) return NULL;
    if (s->region && !s->grad) {
        *accumulate = true;
        return s->region;
    }
    if (s->parent && !s->grad) {
        bool failed;
        gc_tensor *r = region_take(s, accumulate, &failed);
        if (r || failed) return r;
    }
    return gc_grad_target(node, i, accumulate);
}

void gc_autograd_slice_of(gc_tensor *y, const gc_tensor *x, int dim, int64_t start, int64_t end)
{
    gc_grad_slot *s = y ? y->slot : NULL;
    if (!s || !x || !x->slot || s->parent || !s->node) return;
    s->parent = slot_retain(x->slot);
    s->dim = dim;
    s->start = start;
    s->end = end;
}

gc_status gc_grad_accumulate(gc_node *node, int i, const gc_tensor *g)
{
    bool acc;
    gc_tensor *t = gc_grad_target_view(node, i, &acc);
    if (!node->in[i]) return GC_OK;
    if (!t) return GC_PENDING();
    return gc_tensor_copy_into(t, g, acc);
}

gc_status gc_grad_pass(gc_node *node, int i, gc_tensor *gy)
{
    gc_grad_slot *s = node->in[i];
    if (!s) return GC_OK;
    int64_t n = 1;
    for (int d = 0; d < s->ndim; d++) n *= s->shape[d];
    /* gy dies with this node (nothing reads an output's gradient after its producer ran),
     * so one input may own it; a leaf's gradient stays its own buffer */
    if (!s->grad && !s->is_leaf && !node->grad_passed && gy == node->out->grad && s->dtype == gy->dtype &&
        gc_device_eq(s->device, gy->device) && n == gc_tensor_numel(gy) && gc_tensor_is_contiguous(gy)) {
        int64_t st[GC_MAX_DIMS], m = 1;
        for (int d = s->ndim - 1; d >= 0; d--) { st[d] = m; m *= s->shape[d]; }
        s->grad = gc_tensor_view_of(gy, s->ndim, s->shape, st, gy->offset);
        if (!s->grad) return GC_PENDING();
        node->grad_passed = true;
        return GC_OK;
    }
    bool acc;
    gc_tensor *t = gc_grad_target(node, i, &acc);
    if (!t) return GC_PENDING();
    gc_tensor *v = gc_tensor_view_of(gy, t->ndim, t->shape, t->stride, gy->offset);
    if (!v) return GC_PENDING();
    gc_status st = gc_tensor_copy_into(t, v, acc);
    gc_tensor_release(v);
    return st;
}

/* ---------------------------------------------------------------- backward */

void gc_tape_free(gc_tape *t)
{
    if (!t) return;
    for (int i = t->n - 1; i >= 0; i--) node_free(t->nodes[i]);
    free(t->nodes);
    free(t);
}

/* Before nd's backward: recompute the freed storage its saved tensors view. */
static gc_status recompute_saved(gc_node *nd)
{
    for (int j = 0; j < nd->n_saved; j++) {
        gc_storage *s = nd->saved[j] ? nd->saved[j]->storage : NULL;
        gc_node *p = s ? s->recompute : NULL;
        if (!p || s->data) continue;
        if (!(s->data = gc_device_alloc(s->device, s->nbytes))) return GC_PENDING();
        gc_status st = p->forward(p, p->recomputed);
        if (st != GC_OK) return gc_error_code() == GC_OK ? gc_error_set(st, "recompute of %s failed", p->op) : st;
    }
    return GC_OK;
}

/* After a consumer of p's recomputed output was freed: free the storage again if that
 * was the last one (p's own reference is all that is left). */
static void recompute_drop(gc_node *p)
{
    gc_tensor *o = p->recomputed;
    if (o && o->storage->data && o->storage->refcount == 1 && o->refcount == 1) {
        gc_device_free(o->storage->device, o->storage->data);
        o->storage->data = NULL;
    }
}

gc_status gc_backward(gc_tape *t, int n, gc_tensor *const *outs, gc_tensor *const *grads)
{
    if (!t) return gc_error_set(GC_ERR_STATE, "backward without a tape");
    gc_status st = GC_OK;
    for (int i = 0; i < n && st == GC_OK; i++) {
        gc_tensor *y = outs[i];
        if (!y) { st = GC_PENDING(); break; }
        if (!y->slot) {
            st = gc_error_set(GC_ERR_STATE, "backward from %s, which does not depend on any trainable tensor",
                              gc_tensor_label(y));
            break;
        }
        gc_grad_slot *s = y->slot;
        bool acc = s->grad != NULL;
        gc_tensor *g = slot_grad_alloc(s, false);
        if (!g) { st = GC_PENDING(); break; }
        if (grads && grads[i]) {
            st = gc_tensor_copy_into(g, grads[i], acc);
        } else if (gc_tensor_numel(y) != 1) {
            st = gc_error_set(GC_ERR_SHAPE, "backward from %s with %lld elements needs an output gradient",
                              gc_tensor_label(y), (long long)gc_tensor_numel(y));
        } else if (acc) {
            gc_tensor *one = gc_tensor_new(s->dtype, s->device, s->ndim, s->shape);
            st = one ? gc_tensor_fill(one, 1.0) : GC_PENDING();
            if (st == GC_OK) st = gc_tensor_copy_into(g, one, true);
            gc_tensor_release(one);
        } else {
            st = gc_tensor_fill(g, 1.0);
        }
    }
    int i = t->n - 1;
    for (; i >= 0 && st == GC_OK; i--) {
        gc_node *nd = t->nodes[i];
        t->n = i; /* the node leaves the tape whatever happens */
        if (nd->out->grad) { /* (a slice's gradient written in place, out->region only, is done) */
            gc_pool *p = gc_pool_push();
            st = slot_complete(nd->out);
            if (st == GC_OK) st = recompute_saved(nd);
            if (st == GC_OK) st = nd->backward(nd, nd->out->grad);
            if (st != GC_OK && gc_error_code() == GC_OK) st = gc_error_set(st, "backward of %s failed", nd->op);
            gc_pool_pop(p);
        }
        gc_node *rc[GC_NODE_MAX_SAVED];
        int nrc = 0;
        for (int j = 0; j < nd->n_saved; j++)
            if (nd->saved[j] && nd->saved[j]->storage->recompute) rc[nrc++] = nd->saved[j]->storage->recompute;
        node_free(nd);
        for (int j = 0; j < nrc; j++) recompute_drop(rc[j]);
    }
    for (; i >= 0; i--) node_free(t->nodes[i]); /* after an error: drop the rest */
    t->n = 0;
    return st;
}

/* ---------------------------------------------------------------- recomputation */

typedef struct ckpt_aux {
    gc_block_fn fn;
    void *closure;
    void (*closure_free)(void *); /* or NULL: the closure is not ours */
    gc_rand_context rng;
} ckpt_aux;

static void ckpt_aux_free(void *p)
{
    ckpt_aux *a = p;
    if (a->closure_free) a->closure_free(a->closure);
    free(a);
}

static gc_status ckpt_backward(gc_node *nd, gc_tensor *gy)
{
    ckpt_aux *a = nd->aux;
    gc_tensor *x = nd->saved[0];
    gc_status st = GC_OK;
    gc_tensor *xd = gc_tensor_view_of(x, x->ndim, x->shape, x->stride, x->offset);
    if (!xd) return GC_PENDING();
    if (nd->in[0]) { /* x needs a gradient: make its copy a leaf with a lazily made gradient */
        xd->slot = slot_new(xd, true, nd->in[0]->dtype);
        if (!xd->slot) { gc_tensor_release(xd); return GC_PENDING(); }
    }
    gc_rand_context saved_rng = gc_rand_context_get();
    gc_rand_context_set(a->rng);
    gc_tape *sub = gc_tape_init();
    if (!sub) { gc_tensor_release(xd); return GC_PENDING(); }
    bool prev = gc_grad_set_enabled(true);
    gc_tape_begin(sub);
    gc_pool *p = gc_pool_push();
    gc_tensor *y = a->fn(xd, a->closure);
    gc_tape_end(sub);
    gc_grad_set_enabled(prev);
    if (!y) st = GC_PENDING();
    else if (!gc_shape_eq(y, gy)) st = gc_error_set(GC_ERR_SHAPE, "checkpointed block gave a different shape on recompute");
    else if (y->slot) st = gc_backward(sub, 1, &y, &gy);
    gc_pool_pop(p);
    gc_tape_free(sub);
    gc_rand_context_set(saved_rng);
    if (st == GC_OK && xd->slot && xd->slot->grad) st = gc_grad_accumulate(nd, 0, xd->slot->grad);
    gc_tensor_release(xd);
    return st;
}

gc_tensor *gc_checkpoint_owned(gc_block_fn fn, void *closure, void (*closure_free)(void *), gc_tensor *x)
{
    gc_tensor *out = NULL;
    if (!x) goto done;
    if (!grad_on || !gc_tape_current()) {
        out = fn(x, closure);
        goto done;
    }
    bool prev = gc_grad_set_enabled(false);
    gc_pool *p = gc_pool_push();
    gc_tensor *y = fn(x, closure);
    /* a fresh header, so the node's output slot never lands on x itself */
    out = y ? gc_tensor_view_of(y, y->ndim, y->shape, y->stride, y->offset) : NULL;
    gc_pool_pop(p);
    gc_grad_set_enabled(prev);
    if (!out) goto done;
    gc_pool_add(out);
    ckpt_aux *a = malloc(sizeof *a);
    if (!a) {
        gc_error_set(GC_ERR_OOM, "out of host memory");
        out = NULL;
        goto done;
    }
    *a = (ckpt_aux){fn, closure, closure_free, gc_rand_context_get()};
    gc_node *nd = record("checkpoint", ckpt_backward, out, 1, &x, 1, &x);
    if (!nd) {
        free(a);
        out = NULL;
        goto done;
    }
    nd->aux = a;
    nd->aux_free = ckpt_aux_free;
    return out; /* the node owns the closure now */
done:
    if (closure_free) closure_free(closure);
    return out;
}

gc_tensor *gc_checkpoint(gc_block_fn fn, void *closure, gc_tensor *x) { return gc_checkpoint_owned(fn, closure, NULL, x); }

/* ---------------------------------------------------------------- recomputation of single ops */

static _Thread_local bool recompute_on = true;

bool gc_recompute_enabled(void) { return recompute_on; }
bool gc_recompute_set_enabled(bool on) { bool prev = recompute_on; recompute_on = on; return prev; }

/* Frees t's storage if its producer can rewrite all of it and every reference to it is
 * t itself (the caller's, handed over) or a saved tensor of a node recorded after the
 * producer on the current tape: then nothing outside backward can read it. */
static bool recompute_free(gc_tensor *t)
{
    gc_tape *tp = gc_tape_current();
    gc_storage *s = t->storage;
    gc_node *p = t->slot ? t->slot->node : NULL;
    if (!recompute_on || !tp || !p || !p->forward || p->recomputed || s->recompute || !s->data ||
        s->release || !s->nbytes || t->offset || !gc_tensor_is_contiguous(t) || gc_tensor_nbytes(t) != s->nbytes)
        return false;
    /* no chains: the producer re-runs from inputs that are there, and reads not its own output */
    for (int j = 0; j < p->n_saved; j++)
        if (p->saved[j] && (p->saved[j]->storage == s || p->saved[j]->storage->recompute)) return false;
    int at = tp->n - 1;
    while (at >= 0 && tp->nodes[at] != p) at--;
    if (at < 0) return false;
    enum { MAX_VIEWS = 16 };
    const gc_tensor *view[MAX_VIEWS] = {t};
    int refs[MAX_VIEWS] = {1}, nv = 1, saves = 0;
    for (int i = at + 1; i < tp->n; i++) {
        gc_node *c = tp->nodes[i];
        for (int j = 0; j < c->n_saved; j++) {
            if (!c->saved[j] || c->saved[j]->storage != s) continue;
            if (c->recomputed) return false; /* a consumer whose own output is recomputed: a chain */
            int k = 0;
            while (k < nv && view[k] != c->saved[j]) k++;
            if (k == nv) {
                if (nv == MAX_VIEWS) return false;
                view[nv] = c->saved[j];
                refs[nv++] = 0;
            }
            refs[k]++;
            saves++;
        }
    }
    if (!saves || s->refcount != nv) return false; /* nothing saved it, or a view outside the tape */
    for (int k = 0; k < nv; k++)
        if (view[k]->refcount != refs[k]) return false;
    gc_device_free(s->device, s->data);
    s->data = NULL;
    s->recompute = p;
    p->recomputed = t;
    return true;
}

bool gc_recompute_release(gc_tensor *t)
{
    if (!t) return false;
    if (recompute_free(t)) return true; /* the reference is the producer's now */
    gc_tensor_release(t);
    return false;
}
