#include "gc_error.h"

#include <stdarg.h>
#include <stdio.h>

static _Thread_local gc_status err_code = GC_OK;
static _Thread_local char err_msg[1024];

gc_status gc_error_set(gc_status code, const char *fmt, ...)
{
    if (err_code != GC_OK) return code; /* keep the first, root-cause message */
    err_code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_msg, sizeof err_msg, fmt, ap);
    va_end(ap);
    return code;
}

gc_status gc_error_code(void) { return err_code; }
const char *gc_error_message(void) { return err_code == GC_OK ? "" : err_msg; }
void gc_error_clear(void) { err_code = GC_OK; err_msg[0] = 0; }

const char *gc_status_name(gc_status s)
{
    switch (s) {
    case GC_OK: return "ok";
    case GC_ERR_INVALID: return "invalid argument";
    case GC_ERR_SHAPE: return "shape mismatch";
    case GC_ERR_DTYPE: return "dtype error";
    case GC_ERR_DEVICE: return "device error";
    case GC_ERR_OOM: return "out of memory";
    case GC_ERR_IO: return "I/O error";
    case GC_ERR_FORMAT: return "format error";
    case GC_ERR_CUDA: return "CUDA error";
    case GC_ERR_STATE: return "state error";
    }
    return "unknown error";
}
