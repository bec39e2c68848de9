/* JSON helpers over cJSON: loading config files and typed getters whose errors name
 * the file and key. */
/* POSIX calls (fsync, open) when built without the project's -D_GNU_SOURCE */
#if !defined(_GNU_SOURCE) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif
#include "gc_json.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------------------------------------------------------- files */

static gc_status read_all(const char *path, char **buf, size_t *len)
{
    *buf = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return gc_error_set(GC_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return gc_error_set(GC_ERR_IO, "%s: cannot read: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) { close(fd); return gc_error_set(GC_ERR_IO, "%s: not a regular file", path); }
    size_t n = (size_t)sb.st_size;
    char *b = malloc(n + 1);
    if (!b) { close(fd); return gc_error_set(GC_ERR_OOM, "%s: out of host memory (%zu bytes)", path, n); }
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, b + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = errno;
            free(b);
            close(fd);
            return gc_error_set(GC_ERR_IO, "%s: cannot read: %s", path, r < 0 ? strerror(e) : "file shrank while reading");
        }
        got += (size_t)r;
    }
    close(fd);
    b[n] = '\0';
    *buf = b;
    *len = n;
    return GC_OK;
}

gc_status gc_json_load_file(const char *path, cJSON **out)
{
    *out = NULL;
    char *buf;
    size_t len;
    GC_TRY(read_all(path, &buf, &len));
    const char *start = buf, *end = NULL;
    if (len >= 3 && !memcmp(buf, "\xEF\xBB\xBF", 3)) start += 3; /* a UTF-8 BOM some editors add */
    const char *stop = buf + len, *p = start;
    while (p < stop && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    if (p == stop) { free(buf); return gc_error_set(GC_ERR_FORMAT, "%s: empty file, expected a JSON object", path); }
    cJSON *root = cJSON_ParseWithLengthOpts(start, (size_t)(stop - start), &end, 0);
    const char *bad = NULL, *why = NULL;
    if (!root) {
        bad = end ? end : cJSON_GetErrorPtr();
        why = "not valid JSON";
    } else {
        while (end && end < stop && (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r')) end++;
        if (end && end < stop) { bad = end; why = "unexpected data after the JSON value"; }
        else if (!cJSON_IsObject(root)) why = "expected a JSON object at the top level";
    }
    if (why) {
        gc_status st;
        if (bad && bad >= start && bad <= stop) {
            int line = 1, col = 1;
            for (p = start; p < bad; p++) {
                if (*p == '\n') { line++; col = 1; }
                else col++;
            }
            st = gc_error_set(GC_ERR_FORMAT, "%s: %s at line %d, column %d", path, why, line, col);
        } else {
            st = gc_error_set(GC_ERR_FORMAT, "%s: %s", path, why);
        }
        cJSON_Delete(root);
        free(buf);
        return st;
    }
    free(buf);
    *out = root;
    return GC_OK;
}

gc_status gc_json_save_file(const char *path, const cJSON *root)
{
    char *text = cJSON_Print(root);
    if (!text) return gc_error_set(GC_ERR_OOM, "%s: out of host memory formatting JSON", path);
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 5);
    if (!tmp) { cJSON_free(text); return gc_error_set(GC_ERR_OOM, "out of host memory"); }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    gc_status st = GC_OK;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0) st = gc_error_set(GC_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    size_t n = strlen(text);
    text[n] = '\n'; /* cJSON_Print's buffer ends in NUL: reuse it for the final newline */
    for (size_t done = 0; st == GC_OK && done < n + 1;) {
        ssize_t w = write(fd, text + done, n + 1 - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) st = gc_error_set(GC_ERR_IO, "%s: cannot write: %s", tmp, w < 0 ? strerror(errno) : "no progress");
        else done += (size_t)w;
    }
    if (st == GC_OK && fsync(fd) != 0) st = gc_error_set(GC_ERR_IO, "%s: cannot sync: %s", tmp, strerror(errno));
    if (fd >= 0 && close(fd) != 0 && st == GC_OK) st = gc_error_set(GC_ERR_IO, "%s: cannot close: %s", tmp, strerror(errno));
    if (st == GC_OK && rename(tmp, path) != 0)
        st = gc_error_set(GC_ERR_IO, "%s: cannot rename %s into place: %s", path, tmp, strerror(errno));
    if (st != GC_OK && fd >= 0) unlink(tmp);
    free(tmp);
    cJSON_free(text);
    return st;
}

/* ---------------------------------------------------------------- getters */

const cJSON *gc_json_member(const cJSON *obj, const char *key)
{
    if (!obj || !cJSON_IsObject(obj)) return NULL;
    const cJSON *found = NULL;
    for (const cJSON *c = obj->child; c; c = c->next)
        if (c->string && !strcmp(c->string, key)) found = c;
    return found && !cJSON_IsNull(found) ? found : NULL;
}

static bool is_integer(const cJSON *v)
{
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    return d == floor(d) && fabs(d) <= 9007199254740992.0; /* 2^53: exact in a double */
}

const char *gc_json_type_name(const cJSON *v)
{
    if (!v) return "nothing";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsNumber(v)) return is_integer(v) ? "an integer" : "a number";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    return "an invalid value";
}

char *gc_json_path(char *buf, size_t n, const char *ctx, const char *key)
{
    if (!ctx || !*ctx) snprintf(buf, n, "%s", key);
    else if (strstr(ctx, ": ")) snprintf(buf, n, "%s.%s", ctx, key);
    else snprintf(buf, n, "%s: %s", ctx, key);
    return buf;
}

/* Finds key; *v is NULL if absent. Fails if obj is something other than an object. */
static gc_status lookup(const cJSON *obj, const char *key, bool required, const cJSON **v, const char *ctx)
{
    char where[512];
    *v = NULL;
    /* a zeroed cJSON (type invalid) stands for "no keys" */
    if (obj && obj->type != cJSON_Invalid && !cJSON_IsObject(obj))
        return gc_error_set(GC_ERR_FORMAT, "%s: expected an object, got %s", ctx ? ctx : "JSON", gc_json_type_name(obj));
    *v = gc_json_member(obj, key);
    if (!*v && required)
        return gc_error_set(GC_ERR_FORMAT, "%s: missing (required)", gc_json_path(where, sizeof where, ctx, key));
    return GC_OK;
}

static gc_status wrong_type(const cJSON *v, const char *key, const char *want, const char *ctx)
{
    char where[512];
    gc_json_path(where, sizeof where, ctx, key);
    if (cJSON_IsNumber(v))
        return gc_error_set(GC_ERR_FORMAT, "%s: expected %s, got %.17g", where, want, v->valuedouble);
    return gc_error_set(GC_ERR_FORMAT, "%s: expected %s, got %s", where, want, gc_json_type_name(v));
}

gc_status gc_json_get_int(const cJSON *obj, const char *key, int64_t dflt, bool required, int64_t *out, const char *ctx)
{
    const cJSON *v;
    GC_TRY(lookup(obj, key, required, &v, ctx));
    if (!v) { *out = dflt; return GC_OK; }
    if (!is_integer(v)) return wrong_type(v, key, "an integer", ctx);
    *out = (int64_t)v->valuedouble;
    return GC_OK;
}

gc_status gc_json_get_double(const cJSON *obj, const char *key, double dflt, bool required, double *out, const char *ctx)
{
    const cJSON *v;
    GC_TRY(lookup(obj, key, required, &v, ctx));
    if (!v) { *out = dflt; return GC_OK; }
    if (!cJSON_IsNumber(v)) return wrong_type(v, key, "a number", ctx);
    *out = v->valuedouble;
    return GC_OK;
}

gc_status gc_json_get_bool(const cJSON *obj, const char *key, bool dflt, bool required, bool *out, const char *ctx)
{
    const cJSON *v;
    GC_TRY(lookup(obj, key, required, &v, ctx));
    if (!v) { *out = dflt; return GC_OK; }
    if (!cJSON_IsBool(v)) return wrong_type(v, key, "a boolean", ctx);
    *out = cJSON_IsTrue(v);
    return GC_OK;
}

gc_status gc_json_get_string(const cJSON *obj, const char *key, const char *dflt, bool required, const char **out,
                             const char *ctx)
{
    const cJSON *v;
    GC_TRY(lookup(obj, key, required, &v, ctx));
    if (!v) { *out = dflt; return GC_OK; }
    if (!cJSON_IsString(v) || !v->valuestring) return wrong_type(v, key, "a string", ctx);
    *out = v->valuestring;
    return GC_OK;
}

gc_status gc_json_get_object(const cJSON *obj, const char *key, bool required, const cJSON **out, const char *ctx)
{
    const cJSON *v;
    GC_TRY(lookup(obj, key, required, &v, ctx));
    if (v && !cJSON_IsObject(v)) return wrong_type(v, key, "an object", ctx);
    *out = v;
    return GC_OK;
}
