/* Tape-based reverse-mode autograd.
 *
 * While a tape is current and grad mode is on, every op whose inputs need a gradient
 * appends a node to the tape: its backward function, the grad slots of its inputs and
 * output, and the tensors it saved. gc_backward walks the tape from the end, calling
 * each node whose output received a gradient; a node's saved tensors and its output's
 * gradient are freed as soon as it has run, so memory falls as backward proceeds.
 *
 * Gradients accumulate (+=). A leaf's gradient (a parameter's .grad) is f32 whatever
 * the leaf's dtype (bf16 weights have f32 gradients) and persists until zeroed; an
 * intermediate's gradient has the tensor's dtype and lives only during backward. */
#ifndef GC_AUTOGRAD_H
#define GC_AUTOGRAD_H

#include "../runtime/gc_tensor.h"

typedef struct gc_node gc_node;
typedef struct gc_tape gc_tape;

#define GC_SLOT_MAX_REGIONS 8

typedef struct gc_grad_slot {
    int refcount;
    gc_tensor *grad;     /* accumulated gradient (contiguous), NULL until some flows */
    gc_node *node;       /* producer on the tape; NULL for a leaf */
    bool is_leaf;
    /* what a gradient buffer must look like */
    gc_dtype dtype;      /* grad dtype: f32 for leaves, the value's dtype otherwise */
    gc_device device;
    int ndim;
    int64_t shape[GC_MAX_DIMS];
    /* A slice's gradient can live in place, as a region of its parent's gradient buffer
     * (gc_grad_target_view): one buffer for q, k and v sliced from one [.., 3D] output. */
    struct gc_grad_slot *parent; /* the sliced tensor's slot (retained), or NULL */
    int dim;                     /* the slice: [start, end) along the parent's dim */
    int64_t start, end;
    gc_tensor *region;           /* that region of parent->grad, once a consumer wrote there */
    /* As a parent: while partial, grad holds only the regions slices were given (written,
     * along written_dim); the rest is unwritten until the gradient is read, then zeroed. */
    bool partial;
    int n_written, written_dim;
    int64_t written[GC_SLOT_MAX_REGIONS][2];
} gc_grad_slot;

#define GC_NODE_MAX_IN 6
#define GC_NODE_MAX_SAVED 8

/* Backward of one node: read gy (the output gradient, contiguous), and for every input
 * i whose slot is non-NULL add its gradient through gc_grad_target(node, i, ...). */
typedef gc_status (*gc_backward_fn)(gc_node *node, gc_tensor *gy);
/* Forward of one node, re-run: write the op's output into out (the recorded output's
 * geometry, over fresh storage) from the node's saved tensors and arguments, bit for bit
 * as the first time. Ops that can set node->forward; gc_recompute_release uses it. */
typedef gc_status (*gc_forward_fn)(gc_node *node, gc_tensor *out);

struct gc_node {
    const char *op;                        /* op name, for messages */
    gc_backward_fn backward;
    gc_grad_slot *in[GC_NODE_MAX_IN];      /* NULL where that input needs no gradient */
    int n_in;
    gc_grad_slot *out;
    gc_tensor *saved[GC_NODE_MAX_SAVED];   /* retained until the node has run */
    int n_saved;
    /* small op arguments */
    int64_t iarg[8];
    double farg[4];
    void *aux;                              /* op-owned data, freed with aux_free */
    void (*aux_free)(void *);
    bool grad_passed;                       /* gy was handed to an input (gc_grad_pass) */
    gc_forward_fn forward;                  /* NULL: the output cannot be recomputed */
    gc_tensor *recomputed;                  /* the output, while gc_recompute_release manages its storage */
};

/* ---- grad mode and tapes ---- */
bool gc_grad_enabled(void);
bool gc_grad_set_enabled(bool on); /* returns the previous value: no-grad scope = set(false) ... set(prev) */

gc_tape *gc_tape_init(void);
void gc_tape_free(gc_tape *t);          /* drops unrun nodes and their saved tensors */
void gc_tape_begin(gc_tape *t);         /* make t current (tapes nest as a stack) */
void gc_tape_end(gc_tape *t);           /* t must be the current tape */
gc_tape *gc_tape_current(void);
int gc_tape_size(const gc_tape *t);     /* nodes not yet run */
size_t gc_tape_saved_bytes(const gc_tape *t); /* bytes of tensors the tape holds */

/* Runs backward over the tape from n seeds: gradient of sum_i <outs[i], grads[i]>.
 * grads[i] == NULL means ones (only valid for one-element outs, i.e. a scalar loss).
 * Consumes the tape: every node is run or dropped; the tape is empty afterwards. */
gc_status gc_backward(gc_tape *t, int n, gc_tensor *const *outs, gc_tensor *const *grads);

/* ---- parameters ---- */
/* Make t a trainable leaf (allocates its f32 gradient, zeroed) or freeze it (no buffer). */
gc_status gc_tensor_requires_grad(gc_tensor *t, bool on);
/* A leaf whose gradient buffer (of the tensor's dtype) appears with the first gradient that reaches it:
 * gc_tensor_grad stays NULL if none does (the gradient cache checks that every tower's
 * representations received one). */
gc_status gc_tensor_make_leaf(gc_tensor *t);
/* A trainable leaf's gradient becomes g (f32, t's shape, contiguous; e.g. a region of a
 * buffer the gradients of packed parameters share), in place of its own. */
gc_status gc_tensor_set_grad(gc_tensor *t, gc_tensor *g);
bool gc_tensor_needs_grad(const gc_tensor *t);
gc_tensor *gc_tensor_grad(const gc_tensor *t); /* the leaf's gradient buffer or NULL */
gc_status gc_tensor_zero_grad(gc_tensor *t);

/* ---- writing ops (used by kernels/ *.c) ---- */
/* Should an op on these inputs record a node? (grad mode on, a tape current, some input needs grad) */
bool gc_autograd_should_record(int n, gc_tensor *const *inputs);
/* Record a node producing `out` from inputs; NULL inputs allowed. Saved tensors are retained.
 * Returns the node (for iarg/farg/aux), or NULL if nothing needed recording. */
gc_node *gc_autograd_record(const char *op, gc_backward_fn bw, gc_tensor *out,
                            int n_in, gc_tensor *const *inputs, int n_saved, gc_tensor *const *saved);
/* The gradient buffer for input i of node: allocated on first use. *accumulate tells
 * whether to add to it (true) or overwrite it (false: freshly allocated, uninitialised). */
gc_tensor *gc_grad_target(gc_node *node, int i, bool *accumulate);
/* The same for an op that can write a strided gradient (a copy, kernels that take
 * strides): where input i is a slice of a tensor on the tape (gc_slice), the gradient is
 * that region of the parent's own gradient buffer, written in place (= where no slice
 * wrote before), and the slice's backward has nothing left to do. The parent's regions
 * that no slice wrote are zeroed before anything reads its gradient. Otherwise, as
 * gc_grad_target. */
gc_tensor *gc_grad_target_view(gc_node *node, int i, bool *accumulate);
/* gc_slice's link of y = x[start:end] along dim (y's node just recorded) to x's slot. */
void gc_autograd_slice_of(gc_tensor *y, const gc_tensor *x, int dim, int64_t start, int64_t end);
/* Convenience: add g (any strides, same shape) into input i's gradient (in place where
 * gc_grad_target_view gives a region). */
gc_status gc_grad_accumulate(gc_node *node, int i, const gc_tensor *g);
/* Input i's gradient is gy itself, the node's output gradient, as in an add or a reshape
 * (same element count, order and dtype): the first such input of the node that has no
 * gradient yet takes gy's buffer instead of a copy; otherwise gy is added as above. */
gc_status gc_grad_pass(gc_node *node, int i, gc_tensor *gy);

/* ---- recomputation (gradient checkpointing) ---- */
/* A block y = fn(x, closure). gc_checkpoint runs it without recording and records one
 * node that keeps only x; its backward re-runs fn with recording on a fresh tape and
 * backpropagates through it. fn must be deterministic given (x, closure): random ops
 * draw from counters (see runtime/gc_rng.h), so replays see the same numbers. */
typedef gc_tensor *(*gc_block_fn)(gc_tensor *x, void *closure);
gc_tensor *gc_checkpoint(gc_block_fn fn, void *closure, gc_tensor *x);
/* The same with a closure it owns (e.g. one that holds tensors the recompute reads):
 * closure_free(closure) runs when the node is freed, or before returning when no node is
 * recorded (grad off, no tape, an error). */
gc_tensor *gc_checkpoint_owned(gc_block_fn fn, void *closure, void (*closure_free)(void *), gc_tensor *x);

/* ---- recomputation of single op results (selective activation recompute) ---- */
/* Gives up the caller's reference to t, the result of a recorded op that can re-run
 * (node->forward: the norms), after the ops that save t have been recorded. If the
 * current tape's saved references are then all that is left of t's storage, the
 * storage is freed now; gc_backward re-runs the producer into fresh storage just before
 * the first of those ops' backward reads it, and frees it again once the last of them
 * has run. Otherwise (t or a view of it is held elsewhere, its producer cannot re-run
 * or is not on the current tape, nothing saved t, recompute is off) this is
 * gc_tensor_release. Returns whether the storage was freed. The metadata of the
 * consumers' saved views stays valid; their data must not be read outside backward. */
bool gc_recompute_release(gc_tensor *t);
/* On by default, per thread like grad mode; returns the previous value. Off keeps
 * everything (gc_recompute_release is then gc_tensor_release). */
bool gc_recompute_set_enabled(bool on);
bool gc_recompute_enabled(void);

#endif
