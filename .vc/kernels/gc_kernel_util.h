/* Internal helpers for writing ops (kernels/ *.c). */
#ifndef GC_KERNEL_UTIL_H
#define GC_KERNEL_UTIL_H

#include <stdio.h>

#include "../autograd/gc_autograd.h"
#include "../runtime/gc_cuda.h"
#include "../runtime/gc_tensor.h"
#include "gc_ops.h"

/* New op output on x's device: owned by the innermost pool. */
static inline gc_tensor *gc_op_new(gc_dtype dt, gc_device dev, int ndim, const int64_t *shape)
{
    return gc_pool_add(gc_tensor_new(dt, dev, ndim, shape));
}

/* Argument checks for ops: each returns false with the error set. */
bool gc_check_same_device(const char *op, int n, gc_tensor *const *ts);
bool gc_check_float(const char *op, const gc_tensor *t);  /* f32 (CPU) or f32/bf16 (CUDA) */
bool gc_check_same_dtype(const char *op, const gc_tensor *a, const gc_tensor *b);
bool gc_check_index(const char *op, const gc_tensor *t);  /* i32 or i64 */

/* On CUDA builds: `call` on the GPU; elsewhere an error. Use as
 *   if (x->device.type == GC_DEVICE_CUDA) return GC_CUDA_DISPATCH(gc_cuda_foo(...)); */
#ifdef GC_WITH_CUDA
#define GC_CUDA_DISPATCH(call) (call)
#else
#define GC_CUDA_DISPATCH(call) gc_error_set(GC_ERR_DEVICE, "%s: this build has no CUDA backend", __func__)
#endif

/* Named settings (matmul.c): the index of v in the NULL-ended names (-1: none, or v NULL),
 * and the names joined by ", " into buf (cut to n bytes) for the message that lists them. */
int gc_name_index(const char *const *names, const char *v);
const char *gc_names_join(const char *const *names, char *buf, size_t n);

/* A contiguous tensor from x (x itself if already), for kernels that need one. */
gc_tensor *gc_contiguous_raw(gc_tensor *x); /* non-differentiable, pool-owned */

/* The backward of a = act(x + b) (elementwise.c), for ops that fold an activation in
 * (gc_linear_act): gx (+)= gy act'(x + b); gb (+)= the column sums of that (b's gradient;
 * NULL: not wanted); a_out = act(x + b) (NULL: not wanted). x, gy, gx, a_out contiguous of
 * one shape [..., C], b [C] or NULL (none). In place: gx may be gy, a_out may be x (each
 * element is read before it is written, by the same thread). On the GPU one pass does it
 * all where it fits (a bias, C % 8 == 0, 16-byte aligned, gb f32). */
gc_status gc_act_backward_into(gc_tensor *gx, bool acc, const gc_tensor *gy, const gc_tensor *x, const gc_tensor *b,
                               gc_act act, gc_tensor *gb, bool gb_acc, gc_tensor *a_out);
/* act(x + b) off the tape, x [..., C], b [C] of x's dtype (NULL: act(x)): a new
 * pool-owned tensor, or NULL with the error set. */
gc_tensor *gc_act_bias_apply(gc_tensor *x, gc_tensor *b, gc_act act);

#endif
