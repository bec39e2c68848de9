/* safetensors: a validating mmap reader, the reference writer's layout, and sharded
 * model directories. The rules follow the reference implementation (safetensors'
 * tensor.rs): header length <= 100,000,000 and inside the file, a JSON object of
 * {dtype, shape, data_offsets} entries, offsets that tile the buffer exactly. */
/* POSIX calls (mmap, fsync, strdup) when built without the project's -D_GNU_SOURCE */
#if !defined(_GNU_SOURCE) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif
#include "gc_safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "gc_json.h"

/* Tensor bytes are used in place (mapped) and written straight from memory. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; big-endian hosts are not supported"
#endif

#define ST_MAX_HEADER 100000000ull
#define ST_MAX_INT 9007199254740992ull /* 2^53: the largest integer cJSON's doubles hold exactly */

/* ---------------------------------------------------------------- dtypes */

typedef struct st_dtype {
    const char *name;
    size_t size;
    int rank;    /* position in the reference Dtype enum: its writer sorts by it, descending */
    gc_dtype gc; /* GC_DTYPE_COUNT: listed but not readable */
} st_dtype;

static const st_dtype DTYPES[] = {
    {"BOOL", 1, 0, GC_DTYPE_COUNT}, {"U8", 1, 1, GC_DTYPE_COUNT},  {"I8", 1, 2, GC_DTYPE_COUNT},
    {"F8_E5M2", 1, 3, GC_DTYPE_COUNT}, {"F8_E4M3", 1, 4, GC_DTYPE_COUNT}, {"I16", 2, 5, GC_DTYPE_COUNT},
    {"U16", 2, 6, GC_DTYPE_COUNT},  {"F16", 2, 7, GC_F16},         {"BF16", 2, 8, GC_BF16},
    {"I32", 4, 9, GC_I32},          {"U32", 4, 10, GC_DTYPE_COUNT}, {"F32", 4, 11, GC_F32},
    {"F64", 8, 12, GC_F64},         {"I64", 8, 13, GC_I64},         {"U64", 8, 14, GC_DTYPE_COUNT},
};
#define N_DTYPES ((int)(sizeof DTYPES / sizeof DTYPES[0]))

static const st_dtype *dtype_by_name(const char *s)
{
    for (int i = 0; i < N_DTYPES; i++)
        if (!strcmp(DTYPES[i].name, s)) return &DTYPES[i];
    return NULL;
}

static const st_dtype *dtype_of(gc_dtype dt)
{
    for (int i = 0; i < N_DTYPES; i++)
        if (DTYPES[i].gc == dt && dt != GC_DTYPE_COUNT) return &DTYPES[i];
    return NULL;
}

/* ---------------------------------------------------------------- helpers */

/* A name fit for a one-line message: control bytes become '?', long names are cut. */
static const char *shown(const char *s, char *buf, size_t n)
{
    size_t k = 0;
    for (; s[k] && k + 1 < n; k++) buf[k] = (unsigned char)s[k] < 0x20 || s[k] == 0x7f ? '?' : s[k];
    buf[k] = '\0';
    if (s[k] && n > 4) memcpy(buf + n - 4, "...", 4);
    return buf;
}
#define SHOWN_LEN 160

/* Length of the valid UTF-8 prefix of s[0..n) (n if all valid). */
static size_t utf8_valid_prefix(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) { i++; continue; }
        size_t len;
        uint32_t cp, min;
        if (c >= 0xC2 && c <= 0xDF) { len = 2; cp = c & 0x1F; min = 0x80; }
        else if (c >= 0xE0 && c <= 0xEF) { len = 3; cp = c & 0x0F; min = 0x800; }
        else if (c >= 0xF0 && c <= 0xF4) { len = 4; cp = c & 0x07; min = 0x10000; }
        else return i;
        if (n - i < len) return i;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return i;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
        i += len;
    }
    return n;
}

static char *path_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) { gc_error_set(GC_ERR_OOM, "out of host memory"); return NULL; }
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

/* ---------------------------------------------------------------- header lexing */

/* cJSON reads numbers as doubles, which cannot tell 1 from 1.0 or 2^53 from 2^53+1.
 * So before parsing, every number token of the header is recorded in document order
 * with its kind; the validator pairs them with cJSON's number nodes, which a pre-order
 * walk visits in the same order. */
typedef enum num_kind { NUM_OK, NUM_NEGATIVE, NUM_FRACTION, NUM_LEADING_ZERO, NUM_TOO_BIG } num_kind;
typedef struct num_tok { uint32_t off, len; num_kind kind; } num_tok;

typedef struct st_parse {
    const char *path;
    const char *h; /* header text */
    size_t hlen;
    num_tok *nums;
    size_t n_nums, cap_nums, next_num;
} st_parse;

static num_kind classify(const char *t, size_t len)
{
    if (t[0] == '-') return NUM_NEGATIVE;
    for (size_t i = 0; i < len; i++)
        if (t[i] < '0' || t[i] > '9') return NUM_FRACTION;
    if (len > 1 && t[0] == '0') return NUM_LEADING_ZERO;
    if (len > 16) return NUM_TOO_BIG;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) v = v * 10 + (uint64_t)(t[i] - '0');
    return v > ST_MAX_INT ? NUM_TOO_BIG : NUM_OK;
}

/* Checks the header is UTF-8 with no raw control characters (which JSON forbids, and
 * cJSON would let through) and records the number tokens. */
static gc_status lex_header(st_parse *p)
{
    const uint8_t *h = (const uint8_t *)p->h;
    size_t n = p->hlen, ok = utf8_valid_prefix(h, n);
    if (ok < n) return gc_error_set(GC_ERR_FORMAT, "%s: header is not valid UTF-8 (byte %zu of the header)", p->path, ok);
    bool in_str = false;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = h[i];
        if (c < 0x20 && (in_str || (c != ' ' && c != '\t' && c != '\n' && c != '\r')))
            return gc_error_set(GC_ERR_FORMAT, "%s: header is not valid JSON: control character 0x%02x at byte %zu",
                                p->path, c, i);
        if (in_str) {
            if (c == '\\') i++; /* skip the escaped character (a quote or backslash included) */
            else if (c == '"') in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            size_t j = i + 1; /* the characters cJSON hands to strtod */
            while (j < n && ((h[j] >= '0' && h[j] <= '9') || h[j] == '.' || h[j] == 'e' || h[j] == 'E' || h[j] == '+' ||
                             h[j] == '-'))
                j++;
            if (p->n_nums == p->cap_nums) {
                size_t cap = p->cap_nums ? 2 * p->cap_nums : 64;
                num_tok *v = realloc(p->nums, cap * sizeof *v);
                if (!v) return gc_error_set(GC_ERR_OOM, "%s: out of host memory reading the header", p->path);
                p->nums = v;
                p->cap_nums = cap;
            }
            p->nums[p->n_nums++] = (num_tok){(uint32_t)i, (uint32_t)(j - i), classify(p->h + i, j - i)};
            i = j - 1;
        }
    }
    return GC_OK;
}

static size_t count_numbers(const cJSON *v)
{
    if (cJSON_IsNumber(v)) return 1;
    size_t k = 0;
    for (const cJSON *c = v->child; c; c = c->next) k += count_numbers(c);
    return k;
}

/* The next number of the header as a non-negative integer. */
static gc_status take_uint(st_parse *p, const cJSON *item, const char *tensor, const char *field, uint64_t *out)
{
    char nm[SHOWN_LEN];
    if (!cJSON_IsNumber(item))
        return gc_error_set(GC_ERR_FORMAT, "%s: tensor '%s': %s must hold non-negative integers, found %s", p->path,
                            shown(tensor, nm, sizeof nm), field, gc_json_type_name(item));
    if (p->next_num >= p->n_nums) /* cannot happen: cJSON parsed every token the lexer saw */
        return gc_error_set(GC_ERR_FORMAT, "%s: tensor '%s': cannot read %s", p->path, shown(tensor, nm, sizeof nm), field);
    const num_tok *t = &p->nums[p->next_num++];
    static const char *why[] = {"", "is negative", "is not an integer", "has a leading zero (not JSON)",
                                "exceeds 2^53 (unsupported)"};
    if (t->kind != NUM_OK)
        return gc_error_set(GC_ERR_FORMAT, "%s: tensor '%s': %s value %.*s %s", p->path, shown(tensor, nm, sizeof nm),
                            field, (int)(t->len > 40 ? 40 : t->len), p->h + t->off, why[t->kind]);
    *out = (uint64_t)item->valuedouble;
    return GC_OK;
}

/* ---------------------------------------------------------------- files */

struct gc_st_file {
    atomic_int refs; /* the opener's, plus one per tensor viewing the mapping */
    char *path;
    void *map;
    size_t map_len;
    const uint8_t *buf; /* the byte buffer: map + 8 + N */
    uint64_t buf_len;
    int n;
    gc_st_entry *entries;   /* header order */
    gc_st_entry **by_name;  /* sorted for lookup */
    int n_meta;
    char **meta; /* key, value, key, value, ... */
};

static void file_free(gc_st_file *f)
{
    if (!f) return;
    for (int i = 0; i < f->n; i++) free(f->entries[i].name);
    for (int i = 0; i < 2 * f->n_meta; i++) free(f->meta[i]);
    free(f->entries);
    free(f->by_name);
    free(f->meta);
    if (f->map) munmap(f->map, f->map_len);
    free(f->path);
    free(f);
}

static void file_unref(gc_st_file *f)
{
    if (f && atomic_fetch_sub(&f->refs, 1) == 1) file_free(f);
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp((*(gc_st_entry *const *)a)->name, (*(gc_st_entry *const *)b)->name);
}

static int cmp_offsets(const void *a, const void *b)
{
    const gc_st_entry *x = *(gc_st_entry *const *)a, *y = *(gc_st_entry *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static gc_status parse_metadata(st_parse *p, gc_st_file *f, const cJSON *m)
{
    if (cJSON_IsNull(m)) return GC_OK; /* the reference reader takes null as "none" */
    if (!cJSON_IsObject(m))
        return gc_error_set(GC_ERR_FORMAT, "%s: __metadata__ must be an object of strings, found %s", p->path,
                            gc_json_type_name(m));
    int k = cJSON_GetArraySize(m);
    f->meta = calloc((size_t)k * 2 + 1, sizeof *f->meta);
    if (!f->meta) return gc_error_set(GC_ERR_OOM, "%s: out of host memory", p->path);
    for (const cJSON *c = m->child; c; c = c->next) {
        char nm[SHOWN_LEN];
        if (!cJSON_IsString(c) || !c->valuestring)
            return gc_error_set(GC_ERR_FORMAT, "%s: __metadata__ value of '%s' must be a string, found %s", p->path,
                                shown(c->string, nm, sizeof nm), gc_json_type_name(c));
        f->meta[2 * f->n_meta] = strdup(c->string);
        f->meta[2 * f->n_meta + 1] = strdup(c->valuestring);
        f->n_meta++;
        if (!f->meta[2 * f->n_meta - 2] || !f->meta[2 * f->n_meta - 1])
            return gc_error_set(GC_ERR_OOM, "%s: out of host memory", p->path);
    }
    return GC_OK;
}

static gc_status parse_entry(st_parse *p, const cJSON *obj, gc_st_entry *e)
{
    char nm[SHOWN_LEN];
    const char *name = obj->string;
    shown(name, nm, sizeof nm);
    if (!cJSON_IsObject(obj))
        return gc_error_set(GC_ERR_FORMAT, "%s: tensor '%s': expected an object, found %s", p->path, nm,
                            gc_json_type_name(obj));
    const cJSON *dt = NULL, *sh = NULL, *off = NULL;
    uint64_t dims[GC_MAX_DIMS], range[2];
    for (const cJSON *c = obj->child; c; c = c->next) {
        const cJSON **slot = !strcmp(c->string, "dtype") ? &dt
                             : !strcmp(c->string, "shape") ? &sh
                             : !strcmp(c->string, "data_offsets") ? &off
                                                                   : NULL;
        if (!slot) { p->next_num += count_numbers(c); continue; } /* unknown fields are ignored, as by serde */
        if (*slot) return gc_error_set(GC_ERR_FORMAT, "%s: tensor '%s': duplicate field '%s'", p->path, nm, c->string);
        *slot = c;
        if (slot == &dt) {
            if (!cJSON_IsString(c) || !c->valuestring)
                return gc_error_set(GC_ERR_FORMAT, "%s: tensor '%s': dtype must be a string, found %s", p->path, nm,
                                    gc_json_type_name(c));
        } else if (slot == &sh) {
            if (!cJSON_IsArray(c))
                return gc_error_set(GC_ERR_FORMAT, "%s: tensor '%s': shape must be an array, found %s", p->path, nm,
                                    gc_json_type_name(c));
            int nd = cJSON_GetArraySize(c);
            if (nd > GC_MAX_DIMS)
                return gc_error_set(GC_ERR_FORMAT, "%s: tensor '%s' has rank %d; at most %d dimensions are supported",
                                    p->path, nm, nd, GC_MAX_DIMS);
            int i = 0;
            for (const cJSON *d = c->child; d; d = d->next) GC_TRY(take_uint(p, d, name, "shape", &dims[i++]));
            e->ndim = nd;
        } else {
            if (!cJSON_IsArray(c) || cJSON_GetArraySize(c) != 2)
                return gc_error_set(GC_ERR_FORMAT, "%s: tensor '%s': data_offsets must be [begin, end], found %s", p->path,
                                    nm, cJSON_IsArray(c) ? "an array of another length" : gc_json_type_name(c));
            GC_TRY(take_uint(p, c->child, name, "data_offsets", &range[0]));
            GC_TRY(take_uint(p, c->child->next, name, "data_offsets", &range[1]));
        }
    }
    const char *missing = !dt ? "dtype" : !sh ? "shape" : !off ? "data_offsets" : NULL;
    if (missing) return gc_error_set(GC_ERR_FORMAT, "%s: tensor '%s': missing %s", p->path, nm, missing);
    const st_dtype *d = dtype_by_name(dt->valuestring);
    if (!d) {
        char ds[64];
        return gc_error_set(GC_ERR_FORMAT, "%s: tensor '%s': unknown dtype '%s'", p->path, nm,
                            shown(dt->valuestring, ds, sizeof ds));
    }
    e->dtype = d->gc;
    e->st_dtype = d->name;
    e->elem_size = d->size;
    e->begin = range[0];
    e->end = range[1];
    if (e->begin > e->end)
        return gc_error_set(GC_ERR_FORMAT, "%s: tensor '%s': data_offsets [%llu, %llu] end before they begin", p->path,
                            nm, (unsigned long long)e->begin, (unsigned long long)e->end);
    uint64_t numel = 1, nbytes;
    bool over = false;
    for (int i = 0; i < e->ndim; i++) {
        e->shape[i] = (int64_t)dims[i];
        over |= __builtin_mul_overflow(numel, dims[i], &numel);
    }
    over |= __builtin_mul_overflow(numel, (uint64_t)d->size, &nbytes);
    if (over) return gc_error_set(GC_ERR_FORMAT, "%s: tensor '%s': shape overflows 64 bits", p->path, nm);
    if (e->end - e->begin != nbytes)
        return gc_error_set(GC_ERR_FORMAT,
                            "%s: tensor '%s': data_offsets [%llu, %llu] hold %llu bytes but %s of this shape needs %llu",
                            p->path, nm, (unsigned long long)e->begin, (unsigned long long)e->end,
                            (unsigned long long)(e->end - e->begin), d->name, (unsigned long long)nbytes);
    e->name = strdup(name);
    if (!e->name) return gc_error_set(GC_ERR_OOM, "%s: out of host memory", p->path);
    return GC_OK;
}

/* Offsets must tile [0, buf_len) exactly once sorted by (begin, end). */
static gc_status check_layout(st_parse *p, gc_st_file *f)
{
    gc_st_entry **s = malloc(sizeof *s * (size_t)(f->n ? f->n : 1));
    if (!s) return gc_error_set(GC_ERR_OOM, "%s: out of host memory", p->path);
    for (int i = 0; i < f->n; i++) s[i] = &f->entries[i];
    qsort(s, (size_t)f->n, sizeof *s, cmp_offsets);
    uint64_t at = 0;
    gc_status st = GC_OK;
    char a[SHOWN_LEN], b[SHOWN_LEN];
    for (int i = 0; i < f->n && st == GC_OK; i++) {
        const gc_st_entry *e = s[i];
        if (e->begin == at) { at = e->end; continue; }
        if (i == 0)
            st = gc_error_set(GC_ERR_FORMAT, "%s: the first tensor '%s' begins at byte %llu of the buffer, not 0", p->path,
                              shown(e->name, a, sizeof a), (unsigned long long)e->begin);
        else if (e->begin > at)
            st = gc_error_set(GC_ERR_FORMAT, "%s: %llu unused bytes between tensors '%s' (ends at %llu) and '%s'", p->path,
                              (unsigned long long)(e->begin - at), shown(s[i - 1]->name, a, sizeof a),
                              (unsigned long long)at, shown(e->name, b, sizeof b));
        else
            st = gc_error_set(GC_ERR_FORMAT, "%s: tensors '%s' [%llu, %llu) and '%s' [%llu, %llu) overlap", p->path,
                              shown(s[i - 1]->name, a, sizeof a), (unsigned long long)s[i - 1]->begin,
                              (unsigned long long)s[i - 1]->end, shown(e->name, b, sizeof b),
                              (unsigned long long)e->begin, (unsigned long long)e->end);
    }
    free(s);
    GC_TRY(st);
    if (at < f->buf_len)
        return gc_error_set(GC_ERR_FORMAT, "%s: %llu bytes of trailing data after the last tensor (tensors end at %llu)",
                            p->path, (unsigned long long)(f->buf_len - at), (unsigned long long)at);
    if (at > f->buf_len)
        return gc_error_set(GC_ERR_FORMAT, "%s: the tensors need %llu bytes but the file holds only %llu (truncated?)",
                            p->path, (unsigned long long)at, (unsigned long long)f->buf_len);
    return GC_OK;
}

static gc_status parse_header(gc_st_file *f)
{
    const uint8_t *m = f->map;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | m[i];
    if (n == 0) return gc_error_set(GC_ERR_FORMAT, "%s: header length is 0", f->path);
    if (n > ST_MAX_HEADER)
        return gc_error_set(GC_ERR_FORMAT, "%s: header length %llu exceeds the %llu-byte limit (not a safetensors file?)",
                            f->path, (unsigned long long)n, ST_MAX_HEADER);
    if (n > f->map_len - 8)
        return gc_error_set(GC_ERR_FORMAT, "%s: header length %llu runs past the end of the file (%zu bytes)", f->path,
                            (unsigned long long)n, f->map_len);
    f->buf = m + 8 + n;
    f->buf_len = f->map_len - 8 - n;

    st_parse p = {.path = f->path, .h = (const char *)m + 8, .hlen = (size_t)n};
    cJSON *root = NULL;
    gc_st_entry **names = NULL;
    gc_status st = lex_header(&p);
    if (st == GC_OK) {
        const char *end = NULL;
        root = cJSON_ParseWithLengthOpts(p.h, p.hlen, &end, 0);
        size_t at = end && end >= p.h && end <= p.h + p.hlen ? (size_t)(end - p.h) : 0;
        if (!root) {
            st = gc_error_set(GC_ERR_FORMAT, "%s: header is not valid JSON (error at byte %zu of %zu)", f->path, at, p.hlen);
        } else {
            while (at < p.hlen && (p.h[at] == ' ' || p.h[at] == '\t' || p.h[at] == '\n' || p.h[at] == '\r')) at++;
            if (at < p.hlen)
                st = gc_error_set(GC_ERR_FORMAT, "%s: header has trailing characters after the JSON (byte %zu of %zu)",
                                  f->path, at, p.hlen);
            else if (!cJSON_IsObject(root))
                st = gc_error_set(GC_ERR_FORMAT, "%s: header is not a JSON object but %s", f->path, gc_json_type_name(root));
        }
    }
    if (st == GC_OK) {
        int k = cJSON_GetArraySize(root);
        f->entries = calloc((size_t)(k ? k : 1), sizeof *f->entries);
        if (!f->entries) st = gc_error_set(GC_ERR_OOM, "%s: out of host memory", f->path);
    }
    bool seen_meta = false;
    for (const cJSON *c = root ? root->child : NULL; st == GC_OK && c; c = c->next) {
        if (!strcmp(c->string, "__metadata__")) {
            if (seen_meta) st = gc_error_set(GC_ERR_FORMAT, "%s: duplicate __metadata__", f->path);
            seen_meta = true;
            p.next_num += count_numbers(c);
            if (st == GC_OK) st = parse_metadata(&p, f, c);
        } else {
            st = parse_entry(&p, c, &f->entries[f->n]);
            if (st == GC_OK) f->n++;
        }
    }
    cJSON_Delete(root);
    free(p.nums);
    if (st == GC_OK) {
        names = malloc(sizeof *names * (size_t)(f->n ? f->n : 1));
        if (!names) st = gc_error_set(GC_ERR_OOM, "%s: out of host memory", f->path);
    }
    if (st == GC_OK) {
        for (int i = 0; i < f->n; i++) names[i] = &f->entries[i];
        qsort(names, (size_t)f->n, sizeof *names, cmp_name);
        for (int i = 1; i < f->n && st == GC_OK; i++) {
            char nm[SHOWN_LEN];
            if (!strcmp(names[i - 1]->name, names[i]->name))
                st = gc_error_set(GC_ERR_FORMAT, "%s: duplicate tensor name '%s'", f->path, shown(names[i]->name, nm, sizeof nm));
        }
        f->by_name = names;
    }
    if (st == GC_OK) st = check_layout(&p, f);
    return st;
}

gc_status gc_st_open(const char *path, gc_st_file **out)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return gc_error_set(GC_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return gc_error_set(GC_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) { close(fd); return gc_error_set(GC_ERR_IO, "%s: not a regular file", path); }
    if (sb.st_size < 8) {
        close(fd);
        return gc_error_set(GC_ERR_FORMAT, "%s: %lld bytes, too short for a safetensors file (at least 8)", path,
                            (long long)sb.st_size);
    }
    gc_st_file *f = calloc(1, sizeof *f);
    if (f) f->path = strdup(path);
    if (!f || !f->path) {
        close(fd);
        free(f);
        return gc_error_set(GC_ERR_OOM, "%s: out of host memory", path);
    }
    atomic_init(&f->refs, 1);
    f->map_len = (size_t)sb.st_size;
    void *m = mmap(NULL, f->map_len, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd); /* the mapping keeps the file */
    if (m == MAP_FAILED) {
        file_free(f);
        return gc_error_set(GC_ERR_IO, "%s: cannot map: %s", path, strerror(e));
    }
    f->map = m;
    gc_status st = parse_header(f);
    if (st != GC_OK) { file_free(f); return st; }
    *out = f;
    return GC_OK;
}

void gc_st_close(gc_st_file *f) { file_unref(f); }

const char *gc_st_path(const gc_st_file *f) { return f->path; }
int gc_st_count(const gc_st_file *f) { return f->n; }
const gc_st_entry *gc_st_entry_at(const gc_st_file *f, int i) { return i >= 0 && i < f->n ? &f->entries[i] : NULL; }

const gc_st_entry *gc_st_find(const gc_st_file *f, const char *name)
{
    gc_st_entry key = {.name = (char *)name}, *kp = &key;
    gc_st_entry **hit = bsearch(&kp, f->by_name, (size_t)f->n, sizeof *f->by_name, cmp_name);
    return hit ? *hit : NULL;
}

const char *gc_st_metadata(const gc_st_file *f, const char *key)
{
    const char *v = NULL;
    for (int i = 0; i < f->n_meta; i++) /* the last of repeated keys wins, as in a JSON map */
        if (!strcmp(f->meta[2 * i], key)) v = f->meta[2 * i + 1];
    return v;
}

/* The entry `name`, readable as a gc_dtype; sets the error otherwise. */
static const gc_st_entry *readable(gc_st_file *f, const char *name)
{
    char nm[SHOWN_LEN];
    if (!f || !name) { gc_error_set(GC_ERR_INVALID, "safetensors: NULL file or tensor name"); return NULL; }
    const gc_st_entry *e = gc_st_find(f, name);
    if (!e) {
        gc_error_set(GC_ERR_FORMAT, "%s: no tensor named '%s'", f->path, shown(name, nm, sizeof nm));
        return NULL;
    }
    if (e->dtype == GC_DTYPE_COUNT) {
        gc_error_set(GC_ERR_DTYPE, "%s: tensor '%s' has dtype %s, which gradcache cannot read (BF16, F16, F32, F64, I32, I64)",
                     f->path, shown(name, nm, sizeof nm), e->st_dtype);
        return NULL;
    }
    return e;
}

static void mapping_release(void *ctx, void *data, size_t n)
{
    (void)data;
    (void)n;
    file_unref(ctx);
}

gc_tensor *gc_st_tensor(gc_st_file *f, const char *name)
{
    const gc_st_entry *e = readable(f, name);
    if (!e) return NULL;
    const uint8_t *src = f->buf + e->begin;
    gc_tensor *t;
    if ((uintptr_t)src % e->elem_size) { /* misaligned in memory: typed loads would be undefined, so copy */
        t = gc_tensor_from_data(e->dtype, GC_CPU, e->ndim, e->shape, src);
    } else {
        atomic_fetch_add(&f->refs, 1);
        t = gc_tensor_wrap(e->dtype, GC_CPU, e->ndim, e->shape, (void *)src, mapping_release, f);
        if (!t) file_unref(f);
    }
    if (t) gc_tensor_set_name(t, e->name);
    return t;
}

/* Converts n elements from src (any alignment) of dtype s to dst of dtype d (s != d, both
 * float or both integer). Floats pass through a double (to BF16/F16 via float: the
 * rounding helpers take a float); integers convert exactly. Returns the index of an I64
 * that does not fit in I32, or -1. */
static int64_t convert(void *dst, gc_dtype d, const uint8_t *src, gc_dtype s, size_t n)
{
    size_t ss = gc_dtype_size(s), ds = gc_dtype_size(d);
    uint8_t *o = dst;
    if (s == GC_BF16 && d == GC_F32) { /* the common case (bf16 checkpoints, f32 weights): keep it tight */
        float *of = dst;
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            of[i] = gc_bf16_to_f32(h);
        }
        return -1;
    }
    for (size_t i = 0; i < n; i++, src += ss, o += ds) {
        if (gc_dtype_is_float(s)) {
            double v;
            uint16_t h;
            float x;
            switch (s) {
            case GC_F64: memcpy(&v, src, 8); break;
            case GC_F32: memcpy(&x, src, 4); v = x; break;
            case GC_BF16: memcpy(&h, src, 2); v = gc_bf16_to_f32(h); break;
            default: memcpy(&h, src, 2); v = gc_f16_to_f32(h); break;
            }
            switch (d) {
            case GC_F64: memcpy(o, &v, 8); break;
            case GC_F32: x = (float)v; memcpy(o, &x, 4); break;
            case GC_BF16: h = gc_f32_to_bf16((float)v); memcpy(o, &h, 2); break;
            default: h = gc_f32_to_f16((float)v); memcpy(o, &h, 2); break;
            }
        } else {
            int64_t v;
            int32_t w;
            if (s == GC_I64) memcpy(&v, src, 8);
            else { memcpy(&w, src, 4); v = w; }
            if (d == GC_I64) memcpy(o, &v, 8);
            else {
                if (v < INT32_MIN || v > INT32_MAX) return (int64_t)i;
                w = (int32_t)v;
                memcpy(o, &w, 4);
            }
        }
    }
    return -1;
}

gc_tensor *gc_st_load(gc_st_file *f, const char *name, gc_dtype dt, gc_device dev)
{
    const gc_st_entry *e = readable(f, name);
    if (!e) return NULL;
    char nm[SHOWN_LEN];
    shown(e->name, nm, sizeof nm);
    if ((unsigned)dt >= GC_DTYPE_COUNT) {
        gc_error_set(GC_ERR_DTYPE, "%s: tensor '%s': cannot load as unknown dtype %d", f->path, nm, (int)dt);
        return NULL;
    }
    if (gc_dtype_is_float(dt) != gc_dtype_is_float(e->dtype)) {
        gc_error_set(GC_ERR_DTYPE, "%s: tensor '%s' is %s; it cannot be loaded as %s (no float/integer conversion)", f->path,
                     nm, e->st_dtype, gc_dtype_name(dt));
        return NULL;
    }
    const uint8_t *src = f->buf + e->begin;
    gc_tensor *t;
    if (dt == e->dtype) {
        t = gc_tensor_from_data(dt, dev, e->ndim, e->shape, src); /* one copy, straight from the mapping */
    } else {
        gc_tensor *h = gc_tensor_new(dt, GC_CPU, e->ndim, e->shape);
        if (!h) return NULL;
        size_t n = (size_t)gc_tensor_numel(h);
        int64_t bad = n ? convert(h->storage->data, dt, src, e->dtype, n) : -1;
        if (bad >= 0) {
            int64_t v;
            memcpy(&v, src + (size_t)bad * 8, 8);
            gc_error_set(GC_ERR_INVALID, "%s: tensor '%s': element %lld = %lld does not fit in %s", f->path, nm,
                         (long long)bad, (long long)v, gc_dtype_name(dt));
            gc_tensor_release(h);
            return NULL;
        }
        if (dev.type == GC_DEVICE_CPU) {
            t = h;
        } else {
            t = gc_tensor_from_data(dt, dev, e->ndim, e->shape, h->storage->data);
            gc_tensor_release(h);
        }
    }
    if (t) gc_tensor_set_name(t, e->name);
    return t;
}

/* ---------------------------------------------------------------- writer */

typedef struct sbuf { char *p; size_t n, cap; bool oom; } sbuf;

static void sb_add(sbuf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) { b->oom = true; return; }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void sb_str(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }

static void sb_u64(sbuf *b, uint64_t v)
{
    char t[24];
    sb_add(b, t, (size_t)snprintf(t, sizeof t, "%llu", (unsigned long long)v));
}

/* A JSON string escaped as serde_json does (so headers match the reference writer). */
static void sb_json(sbuf *b, const char *s)
{
    sb_add(b, "\"", 1);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        char e[8];
        switch (*c) {
        case '"': sb_add(b, "\\\"", 2); break;
        case '\\': sb_add(b, "\\\\", 2); break;
        case '\b': sb_add(b, "\\b", 2); break;
        case '\f': sb_add(b, "\\f", 2); break;
        case '\n': sb_add(b, "\\n", 2); break;
        case '\r': sb_add(b, "\\r", 2); break;
        case '\t': sb_add(b, "\\t", 2); break;
        default:
            if (*c < 0x20) sb_add(b, e, (size_t)snprintf(e, sizeof e, "\\u%04x", *c));
            else sb_add(b, (const char *)c, 1);
        }
    }
    sb_add(b, "\"", 1);
}

typedef struct out_item {
    const char *name;
    gc_tensor *t;
    const st_dtype *d;
    uint64_t nbytes;
} out_item;

static int cmp_layout(const void *a, const void *b)
{
    const out_item *x = a, *y = b;
    if (x->d->rank != y->d->rank) return y->d->rank - x->d->rank;
    return strcmp(x->name, y->name);
}

static int cmp_item_name(const void *a, const void *b)
{
    return strcmp((*(out_item *const *)a)->name, (*(out_item *const *)b)->name);
}

static gc_status write_all(int fd, const void *data, size_t n, const char *path)
{
    const char *p = data;
    while (n) {
        ssize_t w = write(fd, p, n > (1u << 30) ? (1u << 30) : n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return gc_error_set(GC_ERR_IO, "%s: cannot write: %s", path, w < 0 ? strerror(errno) : "no progress");
        p += w;
        n -= (size_t)w;
    }
    return GC_OK;
}

/* Validates names, builds the header JSON (padded to 8) into hdr. */
static gc_status build_header(const char *path, int n, out_item *items, int n_meta, const char *const *meta_kv, sbuf *hdr)
{
    char nm[SHOWN_LEN];
    for (int i = 0; i < 2 * n_meta; i++) {
        const char *s = meta_kv[i];
        if (!s) return gc_error_set(GC_ERR_INVALID, "%s: metadata %s %d is NULL", path, i % 2 ? "value" : "key", i / 2);
        if (utf8_valid_prefix((const uint8_t *)s, strlen(s)) != strlen(s))
            return gc_error_set(GC_ERR_INVALID, "%s: metadata '%s' is not valid UTF-8", path, shown(s, nm, sizeof nm));
        for (int j = 0; i % 2 == 0 && j < i; j += 2)
            if (!strcmp(meta_kv[j], s))
                return gc_error_set(GC_ERR_INVALID, "%s: metadata key '%s' given twice", path, shown(s, nm, sizeof nm));
    }
    out_item **by_name = malloc(sizeof *by_name * (size_t)(n ? n : 1));
    if (!by_name) return gc_error_set(GC_ERR_OOM, "%s: out of host memory", path);
    for (int i = 0; i < n; i++) by_name[i] = &items[i];
    qsort(by_name, (size_t)n, sizeof *by_name, cmp_item_name);
    const char *twice = NULL;
    for (int i = 1; i < n && !twice; i++)
        if (!strcmp(by_name[i - 1]->name, by_name[i]->name)) twice = by_name[i]->name;
    free(by_name);
    if (twice) return gc_error_set(GC_ERR_INVALID, "%s: tensor name '%s' given twice", path, shown(twice, nm, sizeof nm));
    qsort(items, (size_t)n, sizeof *items, cmp_layout);

    sb_str(hdr, "{");
    if (n_meta > 0) {
        sb_str(hdr, "\"__metadata__\":{");
        for (int i = 0; i < n_meta; i++) {
            if (i) sb_str(hdr, ",");
            sb_json(hdr, meta_kv[2 * i]);
            sb_str(hdr, ":");
            sb_json(hdr, meta_kv[2 * i + 1]);
        }
        sb_str(hdr, "}");
    }
    uint64_t at = 0;
    for (int i = 0; i < n; i++) {
        const gc_tensor *t = items[i].t;
        if (n_meta > 0 || i) sb_str(hdr, ",");
        sb_json(hdr, items[i].name);
        sb_str(hdr, ":{\"dtype\":\"");
        sb_str(hdr, items[i].d->name);
        sb_str(hdr, "\",\"shape\":[");
        for (int k = 0; k < t->ndim; k++) {
            if (k) sb_str(hdr, ",");
            sb_u64(hdr, (uint64_t)t->shape[k]);
        }
        sb_str(hdr, "],\"data_offsets\":[");
        sb_u64(hdr, at);
        sb_str(hdr, ",");
        if (__builtin_add_overflow(at, items[i].nbytes, &at))
            return gc_error_set(GC_ERR_INVALID, "%s: tensors too large", path);
        sb_u64(hdr, at);
        sb_str(hdr, "]}");
    }
    sb_str(hdr, "}");
    while (!hdr->oom && hdr->n % 8) sb_str(hdr, " ");
    if (hdr->oom) return gc_error_set(GC_ERR_OOM, "%s: out of host memory building the header", path);
    if (hdr->n > ST_MAX_HEADER)
        return gc_error_set(GC_ERR_INVALID, "%s: header of %zu bytes exceeds the format's %llu-byte limit", path, hdr->n,
                            ST_MAX_HEADER);
    return GC_OK;
}

/* Makes the rename durable; failure here loses nothing already written, so it is ignored. */
static void sync_parent_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    if (!dir) return;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(dir);
}

gc_status gc_st_save(const char *path, int n, const char *const *names, gc_tensor *const *tensors, int n_meta,
                     const char *const *meta_kv)
{
    if (!path || n < 0 || n_meta < 0 || (n && (!names || !tensors)) || (n_meta && !meta_kv))
        return gc_error_set(GC_ERR_INVALID, "%s: gc_st_save: bad arguments", path ? path : "(null path)");
    out_item *items = calloc((size_t)(n ? n : 1), sizeof *items);
    if (!items) return gc_error_set(GC_ERR_OOM, "%s: out of host memory", path);
    gc_status st = GC_OK;
    char nm[SHOWN_LEN];
    for (int i = 0; i < n && st == GC_OK; i++) {
        const char *name = names[i];
        gc_tensor *t = tensors[i];
        if (!name) st = gc_error_set(GC_ERR_INVALID, "%s: tensor %d has a NULL name", path, i);
        else if (!t) /* most likely a failed op upstream: keep its message */
            st = gc_error_code() != GC_OK ? gc_error_code()
                                          : gc_error_set(GC_ERR_INVALID, "%s: tensor '%s' is NULL", path, shown(name, nm, sizeof nm));
        else if (!strcmp(name, "__metadata__"))
            st = gc_error_set(GC_ERR_INVALID, "%s: '__metadata__' is reserved, not a tensor name", path);
        else if (utf8_valid_prefix((const uint8_t *)name, strlen(name)) != strlen(name))
            st = gc_error_set(GC_ERR_INVALID, "%s: tensor name '%s' is not valid UTF-8", path, shown(name, nm, sizeof nm));
        else if (!(items[i].d = dtype_of(t->dtype)))
            st = gc_error_set(GC_ERR_DTYPE, "%s: tensor '%s' has unknown dtype %d", path, shown(name, nm, sizeof nm),
                              (int)t->dtype);
        items[i].name = name;
        items[i].t = t;
        if (st == GC_OK) items[i].nbytes = gc_tensor_nbytes(t);
    }
    sbuf hdr = {0};
    if (st == GC_OK) st = build_header(path, n, items, n_meta, meta_kv, &hdr);

    char *tmp = NULL;
    int fd = -1;
    if (st == GC_OK) {
        size_t plen = strlen(path);
        tmp = malloc(plen + 5);
        if (!tmp) st = gc_error_set(GC_ERR_OOM, "%s: out of host memory", path);
        else {
            memcpy(tmp, path, plen);
            memcpy(tmp + plen, ".tmp", 5);
            fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
            if (fd < 0) st = gc_error_set(GC_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
        }
    }
    if (st == GC_OK) {
        uint8_t len8[8];
        for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)hdr.n >> (8 * i));
        st = write_all(fd, len8, 8, tmp);
        if (st == GC_OK) st = write_all(fd, hdr.p, hdr.n, tmp);
    }
    for (int i = 0; i < n && st == GC_OK; i++) {
        gc_tensor *t = items[i].t, *h = NULL;
        if (!items[i].nbytes) continue;
        if (t->device.type != GC_DEVICE_CPU || !gc_tensor_is_contiguous(t)) {
            h = gc_tensor_to(t, GC_CPU, t->dtype); /* from the GPU, or gathered from strides */
            if (!h) { st = GC_PENDING(); break; }
        }
        st = write_all(fd, gc_tensor_data(h ? h : t), items[i].nbytes, tmp);
        gc_tensor_release(h);
    }
    if (st == GC_OK && fsync(fd) != 0) st = gc_error_set(GC_ERR_IO, "%s: cannot sync: %s", tmp, strerror(errno));
    if (fd >= 0 && close(fd) != 0 && st == GC_OK) st = gc_error_set(GC_ERR_IO, "%s: cannot close: %s", tmp, strerror(errno));
    if (st == GC_OK && rename(tmp, path) != 0)
        st = gc_error_set(GC_ERR_IO, "%s: cannot rename %s into place: %s", path, tmp, strerror(errno));
    if (st == GC_OK) sync_parent_dir(path);
    if (st != GC_OK && fd >= 0) unlink(tmp);
    free(tmp);
    free(hdr.p);
    free(items);
    return st;
}

/* ---------------------------------------------------------------- model directories */

typedef struct dir_item {
    const char *name; /* owned by the entry */
    gc_st_file *file;
    const gc_st_entry *e;
} dir_item;

struct gc_st_dir {
    int n_files;
    gc_st_file **files;
    int n;
    dir_item *items;    /* listing order */
    dir_item **sorted;  /* by name */
};

static int cmp_dir_item(const void *a, const void *b)
{
    return strcmp((*(dir_item *const *)a)->name, (*(dir_item *const *)b)->name);
}

void gc_st_dir_close(gc_st_dir *d)
{
    if (!d) return;
    for (int i = 0; i < d->n_files; i++) gc_st_close(d->files[i]);
    free(d->files);
    free(d->items);
    free(d->sorted);
    free(d);
}

static gc_status dir_single(gc_st_dir *d, const char *path)
{
    d->files = malloc(sizeof *d->files);
    if (!d->files) return gc_error_set(GC_ERR_OOM, "out of host memory");
    GC_TRY(gc_st_open(path, &d->files[0]));
    d->n_files = 1;
    gc_st_file *f = d->files[0];
    d->items = malloc(sizeof *d->items * (size_t)(f->n ? f->n : 1));
    if (!d->items) return gc_error_set(GC_ERR_OOM, "out of host memory");
    for (int i = 0; i < f->n; i++) d->items[i] = (dir_item){f->entries[i].name, f, &f->entries[i]};
    d->n = f->n;
    return GC_OK;
}

/* A shard must be a relative path inside the model directory. */
static bool shard_name_ok(const char *s)
{
    if (!*s || *s == '/') return false;
    for (const char *c = s; *c;) {
        size_t k = strcspn(c, "/");
        if (k == 2 && c[0] == '.' && c[1] == '.') return false;
        c += k;
        if (*c) c++;
    }
    return true;
}

static gc_status dir_index(gc_st_dir *d, const char *index)
{
    cJSON *root = NULL;
    GC_TRY(gc_json_load_file(index, &root));
    const cJSON *wm = NULL;
    gc_status st = gc_json_get_object(root, "weight_map", true, &wm, index);
    int k = st == GC_OK ? cJSON_GetArraySize(wm) : 0;
    const char **shard_of = NULL; /* per item: its shard's name, then its file */
    char **shards = NULL;
    if (st == GC_OK) {
        d->items = calloc((size_t)(k ? k : 1), sizeof *d->items);
        shard_of = calloc((size_t)(k ? k : 1), sizeof *shard_of);
        shards = calloc((size_t)(k ? k : 1), sizeof *shards);
        d->files = calloc((size_t)(k ? k : 1), sizeof *d->files);
        if (!d->items || !shard_of || !shards || !d->files) st = gc_error_set(GC_ERR_OOM, "%s: out of host memory", index);
    }
    char where[512], nm[SHOWN_LEN];
    int n_shards = 0;
    for (const cJSON *c = st == GC_OK ? wm->child : NULL; st == GC_OK && c; c = c->next) {
        if (!cJSON_IsString(c) || !c->valuestring) {
            snprintf(where, sizeof where, "%s: weight_map", index);
            st = gc_error_set(GC_ERR_FORMAT, "%s: '%s': expected a shard file name, got %s", where,
                              shown(c->string, nm, sizeof nm), gc_json_type_name(c));
            break;
        }
        if (!shard_name_ok(c->valuestring)) {
            st = gc_error_set(GC_ERR_FORMAT, "%s: weight_map: '%s' names shard '%s', which is not a file in the directory",
                              index, shown(c->string, nm, sizeof nm), c->valuestring);
            break;
        }
        int s = 0;
        while (s < n_shards && strcmp(shards[s], c->valuestring)) s++;
        if (s == n_shards) shards[n_shards++] = c->valuestring;
        shard_of[d->n] = shards[s];
        d->items[d->n++].name = c->string; /* replaced by the entry's own copy below */
    }
    /* the shards live beside the index */
    const char *slash = strrchr(index, '/');
    char *base = slash ? strndup(index, slash == index ? 1 : (size_t)(slash - index)) : strdup(".");
    if (!base && st == GC_OK) st = gc_error_set(GC_ERR_OOM, "out of host memory");
    for (int s = 0; s < n_shards && st == GC_OK; s++) {
        char *p = path_join(base, shards[s]);
        if (!p) { st = GC_PENDING(); break; }
        st = gc_st_open(p, &d->files[s]);
        free(p);
        if (st == GC_OK) d->n_files++;
    }
    for (int i = 0; i < d->n && st == GC_OK; i++) {
        int s = 0;
        while (strcmp(shards[s], shard_of[i])) s++;
        const gc_st_entry *e = gc_st_find(d->files[s], d->items[i].name);
        if (!e) {
            st = gc_error_set(GC_ERR_FORMAT, "%s: weight_map puts '%s' in %s, which has no such tensor", index,
                              shown(d->items[i].name, nm, sizeof nm), shards[s]);
            break;
        }
        d->items[i] = (dir_item){e->name, d->files[s], e};
    }
    if (st != GC_OK) d->n = 0; /* names may point into the freed JSON */
    free(base);
    free(shards);
    free(shard_of);
    cJSON_Delete(root);
    return st;
}

static bool is_file(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

gc_status gc_st_dir_open(const char *dir, gc_st_dir **out)
{
    *out = NULL;
    struct stat sb;
    if (stat(dir, &sb) != 0) return gc_error_set(GC_ERR_IO, "%s: cannot open: %s", dir, strerror(errno));
    gc_st_dir *d = calloc(1, sizeof *d);
    if (!d) return gc_error_set(GC_ERR_OOM, "out of host memory");
    gc_status st;
    size_t len = strlen(dir);
    if (S_ISREG(sb.st_mode)) {
        st = len >= 5 && !strcmp(dir + len - 5, ".json") ? dir_index(d, dir) : dir_single(d, dir);
    } else {
        /* like transformers: a single file wins over an index */
        char *single = path_join(dir, "model.safetensors"), *index = path_join(dir, "model.safetensors.index.json");
        if (!single || !index) st = GC_PENDING();
        else if (is_file(single)) st = dir_single(d, single);
        else if (is_file(index)) st = dir_index(d, index);
        else st = gc_error_set(GC_ERR_IO, "%s: holds neither model.safetensors nor model.safetensors.index.json", dir);
        free(single);
        free(index);
    }
    if (st == GC_OK) {
        d->sorted = malloc(sizeof *d->sorted * (size_t)(d->n ? d->n : 1));
        if (!d->sorted) st = gc_error_set(GC_ERR_OOM, "out of host memory");
    }
    if (st == GC_OK) {
        for (int i = 0; i < d->n; i++) d->sorted[i] = &d->items[i];
        qsort(d->sorted, (size_t)d->n, sizeof *d->sorted, cmp_dir_item);
        for (int i = 1; i < d->n && st == GC_OK; i++) {
            char nm[SHOWN_LEN];
            if (!strcmp(d->sorted[i - 1]->name, d->sorted[i]->name))
                st = gc_error_set(GC_ERR_FORMAT, "%s: weight_map lists '%s' twice", dir, shown(d->sorted[i]->name, nm, sizeof nm));
        }
    }
    if (st != GC_OK) { gc_st_dir_close(d); return st; }
    *out = d;
    return GC_OK;
}

int gc_st_dir_count(const gc_st_dir *d) { return d->n; }
const char *gc_st_dir_name_at(const gc_st_dir *d, int i) { return i >= 0 && i < d->n ? d->items[i].name : NULL; }

gc_status gc_st_dir_lookup(gc_st_dir *d, const char *name, gc_st_file **file, const gc_st_entry **e)
{
    *file = NULL;
    *e = NULL;
    if (!d || !name) return gc_error_set(GC_ERR_INVALID, "gc_st_dir_lookup: NULL directory or name");
    dir_item key = {.name = name}, *kp = &key;
    dir_item **hit = bsearch(&kp, d->sorted, (size_t)d->n, sizeof *d->sorted, cmp_dir_item);
    if (hit) {
        *file = (*hit)->file;
        *e = (*hit)->e;
    }
    return GC_OK;
}
