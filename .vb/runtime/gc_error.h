/* Errors: every library call returns a gc_status (or NULL), never aborts.
 * The first failure's message is kept in a thread-local buffer; ops given a NULL
 * input return NULL without overwriting it, so a chain of ops reports the root cause. */
#ifndef GC_ERROR_H
#define GC_ERROR_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum gc_status {
    GC_OK = 0,
    GC_ERR_INVALID,     /* bad argument or value */
    GC_ERR_SHAPE,       /* shapes do not fit */
    GC_ERR_DTYPE,       /* unsupported or mismatched dtype */
    GC_ERR_DEVICE,      /* wrong device, or backend not built */
    GC_ERR_OOM,         /* out of host or device memory */
    GC_ERR_IO,          /* file could not be opened, read or written */
    GC_ERR_FORMAT,      /* a file's content is malformed */
    GC_ERR_CUDA,        /* a CUDA / cuBLAS call failed */
    GC_ERR_STATE,       /* call out of order (e.g. backward without a tape) */
} gc_status;

/* Records `code` and a printf-style message (if none is pending) and returns `code`. */
gc_status gc_error_set(gc_status code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The pending error code (GC_OK if none) and its message ("" if none). */
gc_status gc_error_code(void);
const char *gc_error_message(void);
void gc_error_clear(void);
const char *gc_status_name(gc_status s);

#define GC_TRY(expr) do { gc_status gc_try_s_ = (expr); if (gc_try_s_ != GC_OK) return gc_try_s_; } while (0)
/* For functions returning a pointer: NULL on error. */
#define GC_TRY_NULL(expr) do { if ((expr) != GC_OK) return NULL; } while (0)
/* Pointer-returning code that found a NULL: report the pending error (or a generic one). */
#define GC_PENDING() (gc_error_code() != GC_OK ? gc_error_code() : gc_error_set(GC_ERR_STATE, "unexpected NULL result"))

#ifdef __cplusplus
}
#endif

#endif
