/* Tensors: a refcounted view (dtype, shape, strides, offset) over refcounted storage.
 *
 * Ownership: every tensor an op returns belongs to the innermost pool (gc_pool_push);
 * popping the pool releases it. Call gc_tensor_retain to keep one longer, and
 * gc_tensor_release when done. Tensors made by gc_tensor_new / _from_data belong to
 * the caller (one reference). Views share storage with their base. */
#ifndef GC_TENSOR_H
#define GC_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gc_device.h"
#include "gc_error.h"

#ifdef __cplusplus
extern "C" {
#endif

#define GC_MAX_DIMS 5

typedef enum gc_dtype { GC_F32 = 0, GC_BF16, GC_F16, GC_I32, GC_I64, GC_F64, GC_DTYPE_COUNT } gc_dtype;

size_t gc_dtype_size(gc_dtype t);
const char *gc_dtype_name(gc_dtype t); /* "f32", "bf16", ... */
bool gc_dtype_is_float(gc_dtype t);

struct gc_grad_slot; /* autograd bookkeeping, see autograd/gc_autograd.h */
struct gc_node;

typedef struct gc_storage {
    int refcount;
    gc_device device;
    void *data;
    size_t nbytes;
    /* Storage not allocated here (an mmap'd checkpoint): released through this. */
    void (*release)(void *ctx, void *data, size_t nbytes);
    void *release_ctx;
    /* Autograd: the node that recomputes data freed by gc_recompute_release (data is
     * NULL until it has), or NULL. */
    struct gc_node *recompute;
    /* Host storage page-locked by gc_tensor_pin: unregistered before it is freed. */
    bool pinned;
} gc_storage;

typedef struct gc_tensor {
    int refcount;
    gc_dtype dtype;
    gc_device device;
    int ndim;
    int64_t shape[GC_MAX_DIMS];
    int64_t stride[GC_MAX_DIMS]; /* in elements */
    int64_t offset;              /* in elements, into storage */
    gc_storage *storage;
    /* Autograd: NULL unless this tensor needs a gradient (a trainable leaf, or an op
     * result that depends on one). Frozen parameters have none: no gradient buffer. */
    struct gc_grad_slot *slot;
    char *name; /* optional, for messages (parameters carry their HF names) */
} gc_tensor;

/* ---- creation (caller owns the one reference) ---- */
gc_tensor *gc_tensor_new(gc_dtype dt, gc_device dev, int ndim, const int64_t *shape);  /* uninitialised */
gc_tensor *gc_tensor_zeros(gc_dtype dt, gc_device dev, int ndim, const int64_t *shape);
/* Copies `data` (host memory, of dtype dt) into a new tensor on dev. */
gc_tensor *gc_tensor_from_data(gc_dtype dt, gc_device dev, int ndim, const int64_t *shape, const void *data);
/* Wraps external storage without copying (e.g. mmap); release(ctx,data,n) runs at the end. */
gc_tensor *gc_tensor_wrap(gc_dtype dt, gc_device dev, int ndim, const int64_t *shape, void *data,
                          void (*release)(void *, void *, size_t), void *ctx);

gc_tensor *gc_tensor_retain(gc_tensor *t);
void gc_tensor_release(gc_tensor *t);
void gc_tensor_set_name(gc_tensor *t, const char *name);
/* A view: a new header over x's storage with this geometry (elements from offset); the
 * caller owns it. */
gc_tensor *gc_tensor_view_of(const gc_tensor *x, int ndim, const int64_t *shape, const int64_t *stride, int64_t offset);
/* Moves contiguous t's elements' home to base's storage, from element offset on (t's
 * values there are whatever the storage holds): parameters packed into one buffer
 * (gc_params_pack), while nothing else views t's old storage. */
gc_status gc_tensor_rebind(gc_tensor *t, const gc_tensor *base, int64_t offset);
const char *gc_tensor_label(const gc_tensor *t); /* name or "tensor" */

/* ---- pools: op results are owned by the innermost pool ---- */
typedef struct gc_pool gc_pool;
gc_pool *gc_pool_push(void);
void gc_pool_pop(gc_pool *p);      /* releases every tensor added since push; p must be innermost */
gc_tensor *gc_pool_add(gc_tensor *t); /* hand a reference to the innermost pool; returns t */
/* Keep t alive past the innermost pool: moves one reference to the enclosing pool. */
gc_tensor *gc_pool_keep(gc_tensor *t);

/* ---- geometry ---- */
int64_t gc_tensor_numel(const gc_tensor *t);
size_t gc_tensor_nbytes(const gc_tensor *t);  /* numel * dtype size */
bool gc_tensor_is_contiguous(const gc_tensor *t);
void *gc_tensor_data(const gc_tensor *t);     /* address of element 0 of the view */
bool gc_shape_eq(const gc_tensor *a, const gc_tensor *b);
int64_t gc_tensor_rows(const gc_tensor *t);   /* product of all dims but the last */
int64_t gc_tensor_cols(const gc_tensor *t);   /* last dim (1 for a scalar) */
/* "[2, 3, 4]" into buf; returns buf. */
char *gc_shape_str(const gc_tensor *t, char *buf, size_t n);
#define GC_SHAPE_STR_LEN 96

/* ---- raw (non-differentiable) data movement; tensors may live on any device ---- */
/* dst[...] = src[...] (or += if accumulate), converting dtype; shapes must match; any strides. */
gc_status gc_tensor_copy_into(gc_tensor *dst, const gc_tensor *src, bool accumulate);
gc_status gc_tensor_fill_zero(gc_tensor *t); /* any strides */
gc_status gc_tensor_fill(gc_tensor *t, double value);
/* A new contiguous copy on dev with dtype dt (caller owns). */
gc_tensor *gc_tensor_to(const gc_tensor *t, gc_device dev, gc_dtype dt);
/* Copy into a host float / double buffer of numel elements (any dtype, any device). */
gc_status gc_tensor_to_host_f32(const gc_tensor *t, float *out);
gc_status gc_tensor_to_host_f64(const gc_tensor *t, double *out);
/* Scalar value of a one-element tensor (synchronises with the device). */
gc_status gc_tensor_item(const gc_tensor *t, double *out);

/* Page-locks the host storage under t (all of it, once: views of one storage share it)
 * so that uploads from it (gc_tensor_to, gc_tensor_copy_into) are asynchronous copies
 * in stream order at full bus speed instead of staged copies that block the host; the
 * storage is unlocked when it is freed. A no-op returning GC_OK for a tensor on a GPU,
 * an empty one, a build without CUDA or a machine without a GPU. Memory another
 * registration already covers stays as it is (not unlocked here either).
 * THE RULE: an upload from pinned memory returns before the data is read, so the host
 * must not write into the buffer again until the stream has passed the copies that
 * read it: a gc_device_sync (or a call that synchronises, like gc_tensor_item) after
 * the last upload and before the write. Freeing it is safe: that synchronises. */
gc_status gc_tensor_pin(gc_tensor *t);
bool gc_tensor_is_pinned(const gc_tensor *t); /* its storage was pinned by gc_tensor_pin */

/* An upload that runs beside the computation: the copy of host tensor src to dev goes on a
 * stream of its own (a copy engine), after the work queued so far has let go of the
 * memory it lands in; gc_upload_end makes the work queued after it wait for the copy and
 * hands the device tensor over (a new reference; NULL on error). So an upload begun before
 * one chunk's work is queued overlaps that work (gradcache.c: the next chunk's pixels).
 * src must be contiguous and pinned (gc_tensor_pin) for the copy to be asynchronous; the
 * rule at gc_tensor_pin holds until the upload is ended and the stream synchronised.
 * Where src is on dev already, or dev is the CPU, or src is not a contiguous host tensor,
 * it is a plain copy (or a new reference to src when src is on dev). End every begun
 * upload, also on an error path: its memory is reused only after. */
typedef struct gc_upload {
    gc_tensor *t;
    void *done; /* the copy's completion event (GPU), or NULL */
} gc_upload;
gc_status gc_upload_begin(gc_upload *u, gc_tensor *src, gc_device dev);
gc_tensor *gc_upload_end(gc_upload *u);

/* bf16 / f16 helpers (round to nearest even) */
static inline float gc_bf16_to_f32(uint16_t h) { union { uint32_t u; float f; } v = { (uint32_t)h << 16 }; return v.f; }
static inline uint16_t gc_f32_to_bf16(float f)
{
    union { float f; uint32_t u; } v = { f };
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40); /* quiet NaN */
    return (uint16_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}
float gc_f16_to_f32(uint16_t h);
uint16_t gc_f32_to_f16(float f);

/* ---- views: no copy, differentiable (defined in kernels/shape.c) ---- */
gc_tensor *gc_view(gc_tensor *x, int ndim, const int64_t *shape); /* one dim may be -1; copies if x is not contiguous */
gc_tensor *gc_permute(gc_tensor *x, const int *perm);
gc_tensor *gc_transpose(gc_tensor *x, int d0, int d1);
gc_tensor *gc_slice(gc_tensor *x, int dim, int64_t start, int64_t end); /* [start, end) along dim */
gc_tensor *gc_rows(gc_tensor *x, int64_t start, int64_t end);           /* slice of dim 0: a chunk of a batch */
gc_tensor *gc_contiguous(gc_tensor *x);                                  /* x itself (retained into pool) if already */
gc_tensor *gc_detach(gc_tensor *x);                                      /* same data, no autograd history */

#define GC_SHAPE(...) ((const int64_t[]){__VA_ARGS__})
#define GC_NDIM(...) ((int)(sizeof((const int64_t[]){__VA_ARGS__}) / sizeof(int64_t)))

#ifdef __cplusplus
}
#endif

#endif
