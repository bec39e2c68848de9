/* Image-caption data sets: CSV/TSV manifests and WebDataset tar shards (tools/gc_data.h). */
#include "gc_data.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct sample {
    const char *caption;
    const char *name;   /* image path (CSV) or tar member */
    const char *cap_name; /* the caption's tar member (NULL in a manifest) */
    int32_t shard;      /* -1: a file */
    int64_t off, size;  /* the member's data in its shard; off: the manifest line of a file */
} sample;

/* strings live in large blocks: millions of samples without millions of mallocs */
typedef struct str_block {
    struct str_block *next;
    size_t used, cap;
    char data[];
} str_block;

struct gc_dataset {
    sample *s;
    int64_t n, cap;
    char **shards;
    int n_shards;
    char *manifest;     /* the CSV/TSV file, for messages */
    int64_t incomplete;
    str_block *strings;
};

static const char *ds_strndup(gc_dataset *ds, const char *p, size_t n)
{
    str_block *b = ds->strings;
    if (!b || b->cap - b->used < n + 1) {
        size_t cap = n + 1 > (1u << 20) ? n + 1 : (1u << 20);
        b = malloc(sizeof(str_block) + cap);
        if (!b) return NULL;
        b->next = ds->strings;
        b->used = 0;
        b->cap = cap;
        ds->strings = b;
    }
    char *d = b->data + b->used;
    memcpy(d, p, n);
    d[n] = 0;
    b->used += n + 1;
    return d;
}

static gc_dataset *ds_new(void)
{
    gc_dataset *ds = calloc(1, sizeof *ds);
    if (!ds) gc_error_set(GC_ERR_OOM, "dataset: out of memory");
    return ds;
}

static gc_status ds_add(gc_dataset *ds, sample s)
{
    if (ds->n == ds->cap) {
        int64_t cap = ds->cap ? ds->cap * 2 : 1024;
        sample *p = realloc(ds->s, sizeof(sample) * (size_t)cap);
        if (!p) return gc_error_set(GC_ERR_OOM, "dataset: out of memory for %lld samples", (long long)cap);
        ds->s = p;
        ds->cap = cap;
    }
    ds->s[ds->n++] = s;
    return GC_OK;
}

void gc_dataset_free(gc_dataset *ds)
{
    if (!ds) return;
    free(ds->s);
    for (int i = 0; i < ds->n_shards; i++) free(ds->shards[i]);
    free(ds->shards);
    free(ds->manifest);
    while (ds->strings) {
        str_block *b = ds->strings;
        ds->strings = b->next;
        free(b);
    }
    free(ds);
}

int64_t gc_dataset_size(const gc_dataset *ds) { return ds ? ds->n : 0; }
int64_t gc_dataset_incomplete(const gc_dataset *ds) { return ds ? ds->incomplete : 0; }

const char *gc_dataset_caption(const gc_dataset *ds, int64_t i)
{
    return ds && i >= 0 && i < ds->n ? ds->s[i].caption : NULL;
}

const char *gc_dataset_image_name(const gc_dataset *ds, int64_t i, char *buf, size_t n)
{
    if (!ds || i < 0 || i >= ds->n) snprintf(buf, n, "sample %lld", (long long)i);
    else if (ds->s[i].shard < 0) snprintf(buf, n, "%s", ds->s[i].name);
    else snprintf(buf, n, "%s:%s", ds->shards[ds->s[i].shard], ds->s[i].name);
    return buf;
}

const char *gc_dataset_caption_source(const gc_dataset *ds, int64_t i, char *buf, size_t n)
{
    if (!ds || i < 0 || i >= ds->n) snprintf(buf, n, "sample %lld", (long long)i);
    else if (ds->s[i].shard < 0) snprintf(buf, n, "%s:%lld", ds->manifest, (long long)ds->s[i].off);
    else snprintf(buf, n, "%s:%s", ds->shards[ds->s[i].shard], ds->s[i].cap_name);
    return buf;
}

/* Strict UTF-8 as the tokenizer decodes it: no overlong forms, surrogates or code points
 * above U+10FFFF. Returns the offset of the first bad byte, or -1. */
static ptrdiff_t utf8_bad_at(const uint8_t *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        uint8_t b = s[i], lo = 0x80, hi = 0xBF;
        int k;
        if (b < 0x80) { i++; continue; }
        if (b >= 0xC2 && b <= 0xDF) k = 1;
        else if (b >= 0xE0 && b <= 0xEF) {
            k = 2;
            if (b == 0xE0) lo = 0xA0;      /* overlong */
            else if (b == 0xED) hi = 0x9F; /* surrogates */
        } else if (b >= 0xF0 && b <= 0xF4) {
            k = 3;
            if (b == 0xF0) lo = 0x90;      /* overlong */
            else if (b == 0xF4) hi = 0x8F; /* above U+10FFFF */
        } else return (ptrdiff_t)i;
        for (int j = 1; j <= k; j++) {
            uint8_t x = i + (size_t)j < len ? s[i + (size_t)j] : 0;
            if (x < (j == 1 ? lo : 0x80) || x > (j == 1 ? hi : 0xBF)) return (ptrdiff_t)i;
        }
        i += (size_t)k + 1;
    }
    return -1;
}

gc_status gc_dataset_check_utf8(const gc_dataset *ds)
{
    for (int64_t i = 0; ds && i < ds->n; i++) {
        const char *c = ds->s[i].caption;
        ptrdiff_t bad = utf8_bad_at((const uint8_t *)c, strlen(c));
        if (bad >= 0) {
            char where[1024];
            return gc_error_set(GC_ERR_FORMAT, "%s: the caption is not valid UTF-8: byte %td is 0x%02X",
                                gc_dataset_caption_source(ds, i, where, sizeof where), bad, (unsigned)(uint8_t)c[bad]);
        }
    }
    return GC_OK;
}

static gc_status read_whole(const char *path, uint8_t **data, size_t *n)
{
    *data = NULL;
    *n = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return gc_error_set(GC_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return gc_error_set(GC_ERR_IO, "cannot read %s: not a regular file", path);
    }
    size_t sz = (size_t)st.st_size;
    uint8_t *buf = malloc(sz + 1);
    if (!buf) {
        close(fd);
        return gc_error_set(GC_ERR_OOM, "%s: out of memory for %zu bytes", path, sz);
    }
    size_t got = 0;
    while (got < sz) {
        ssize_t r = read(fd, buf + got, sz - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            free(buf);
            close(fd);
            return gc_error_set(GC_ERR_IO, "cannot read %s: %s", path, r < 0 ? strerror(errno) : "file shrank");
        }
        got += (size_t)r;
    }
    close(fd);
    buf[sz] = 0;
    *data = buf;
    *n = sz;
    return GC_OK;
}

gc_status gc_dataset_image_bytes(const gc_dataset *ds, int64_t i, uint8_t **data, size_t *n)
{
    *data = NULL;
    *n = 0;
    if (!ds || i < 0 || i >= ds->n)
        return gc_error_set(GC_ERR_INVALID, "dataset: sample %lld out of range [0, %lld)", (long long)i,
                            (long long)(ds ? ds->n : 0));
    const sample *s = &ds->s[i];
    if (s->shard < 0) return read_whole(s->name, data, n);
    const char *shard = ds->shards[s->shard];
    int fd = open(shard, O_RDONLY);
    if (fd < 0) return gc_error_set(GC_ERR_IO, "cannot open %s: %s", shard, strerror(errno));
    uint8_t *buf = malloc((size_t)s->size + 1);
    if (!buf) {
        close(fd);
        return gc_error_set(GC_ERR_OOM, "%s:%s: out of memory for %lld bytes", shard, s->name, (long long)s->size);
    }
    size_t got = 0;
    while (got < (size_t)s->size) {
        ssize_t r = pread(fd, buf + got, (size_t)s->size - got, s->off + (off_t)got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            free(buf);
            close(fd);
            return gc_error_set(GC_ERR_IO, "cannot read %s:%s: %s", shard, s->name,
                                r < 0 ? strerror(errno) : "file is truncated");
        }
        got += (size_t)r;
    }
    close(fd);
    *data = buf;
    *n = (size_t)s->size;
    return GC_OK;
}

gc_status gc_dataset_load_image(const gc_dataset *ds, int64_t i, gc_image *out)
{
    out->w = out->h = 0;
    out->rgb = NULL;
    uint8_t *data;
    size_t n;
    GC_TRY(gc_dataset_image_bytes(ds, i, &data, &n));
    char name[1024];
    gc_status s = gc_image_decode(data, n, gc_dataset_image_name(ds, i, name, sizeof name), out);
    free(data);
    return s;
}

/* ---------------------------------------------------------------- CSV / TSV */

/* One RFC 4180 record starting at *pos: fields are appended to a growing list of
 * (start, length) in an unescaped copy; *line advances over the newlines it spans. */
typedef struct csv_rec {
    char *buf;       /* unescaped field text, fields back to back */
    size_t buf_n, buf_cap;
    size_t *start, *len;
    int n, cap;
} csv_rec;

static int rec_putc(csv_rec *r, char c)
{
    if (r->buf_n == r->buf_cap) {
        size_t cap = r->buf_cap ? r->buf_cap * 2 : 256;
        char *b = realloc(r->buf, cap);
        if (!b) return -1;
        r->buf = b;
        r->buf_cap = cap;
    }
    r->buf[r->buf_n++] = c;
    return 0;
}

static int rec_field(csv_rec *r, size_t start)
{
    if (r->n == r->cap) {
        if (r->cap > INT_MAX / 2) return -1; /* a record of a billion fields */
        int cap = r->cap ? r->cap * 2 : 16;
        size_t *s = realloc(r->start, sizeof(size_t) * cap), *l = s ? realloc(r->len, sizeof(size_t) * cap) : NULL;
        if (s) r->start = s;
        if (!l) return -1;
        r->len = l;
        r->cap = cap;
    }
    r->start[r->n] = start;
    r->len[r->n] = r->buf_n - start;
    r->n++;
    return 0;
}

/* Returns 1 with a record, 0 at the end of the text, -1 on error (message set). */
static int csv_next(const char *path, const char *t, size_t n, size_t *pos, int64_t *line, char sep, csv_rec *r)
{
    size_t i = *pos;
    if (i >= n) return 0;
    r->n = 0;
    r->buf_n = 0;
    for (;;) {
        size_t start = r->buf_n;
        if (i < n && t[i] == '"') {
            int64_t qline = *line;
            i++;
            for (;;) {
                if (i >= n) {
                    gc_error_set(GC_ERR_FORMAT, "%s:%lld: unterminated quoted field", path, (long long)qline);
                    return -1;
                }
                if (t[i] == '"') {
                    if (i + 1 < n && t[i + 1] == '"') {
                        if (rec_putc(r, '"')) goto oom;
                        i += 2;
                        continue;
                    }
                    i++;
                    break;
                }
                if (t[i] == '\n') (*line)++;
                if (rec_putc(r, t[i++])) goto oom;
            }
            if (i < n && t[i] != sep && t[i] != '\n' && !(t[i] == '\r' && (i + 1 == n || t[i + 1] == '\n'))) {
                gc_error_set(GC_ERR_FORMAT, "%s:%lld: unexpected character '%c' after a closing quote", path,
                             (long long)*line, t[i]);
                return -1;
            }
        } else {
            while (i < n && t[i] != sep && t[i] != '\n') {
                if (t[i] == '\r' && (i + 1 == n || t[i + 1] == '\n')) {
                    i++;
                    continue;
                }
                if (rec_putc(r, t[i++])) goto oom;
            }
        }
        if (i < n && t[i] == '\r') i++; /* CRLF after a quoted last field */
        if (rec_field(r, start)) goto oom;
        if (i < n && t[i] == sep) {
            i++;
            continue;
        }
        if (i < n && t[i] == '\n') {
            i++;
            (*line)++;
        }
        break;
    }
    *pos = i;
    return 1;
oom:
    gc_error_set(GC_ERR_OOM, "%s: out of memory", path);
    return -1;
}

static int rec_is_blank(const csv_rec *r) { return r->n == 1 && r->len[0] == 0; }

gc_dataset *gc_dataset_open_csv(const char *path, char sep, const char *img_key, const char *caption_key)
{
    if (!path || !img_key || !caption_key || sep == '"' || sep == '\n' || sep == '\r' || sep == 0) {
        gc_error_set(GC_ERR_INVALID, "open manifest: bad arguments (path, separator or column names)");
        return NULL;
    }
    uint8_t *raw;
    size_t n;
    if (read_whole(path, &raw, &n) != GC_OK) return NULL;
    const char *t = (const char *)raw;
    size_t pos = 0;
    if (n >= 3 && memcmp(t, "\xef\xbb\xbf", 3) == 0) pos = 3; /* UTF-8 BOM */
    gc_dataset *ds = ds_new();
    csv_rec r = {0};
    int64_t line = 1, rec_line;
    int img_col = -1, cap_col = -1, ncols = 0;
    char *dir = NULL;
    if (!ds) goto fail;
    if (!(ds->manifest = strdup(path))) {
        gc_error_set(GC_ERR_OOM, "%s: out of memory", path);
        goto fail;
    }
    if (!strcmp(img_key, caption_key)) {
        gc_error_set(GC_ERR_INVALID, "%s: the image column and the other column asked for are both \"%s\"", path, img_key);
        goto fail;
    }
    const char *nul = memchr(t, 0, n); /* a text manifest has none; a caption would end there, silently */
    if (nul) {
        int64_t nl = 1;
        for (const char *q = t; q < nul; q++) nl += *q == '\n';
        gc_error_set(GC_ERR_FORMAT, "%s:%lld: a NUL byte: not a text manifest", path, (long long)nl);
        goto fail;
    }
    const char *slash = strrchr(path, '/');
    size_t dir_n = slash ? (size_t)(slash - path) + 1 : 0;
    dir = malloc(dir_n + 1);
    if (!dir) {
        gc_error_set(GC_ERR_OOM, "%s: out of memory", path);
        goto fail;
    }
    memcpy(dir, path, dir_n);
    dir[dir_n] = 0;
    int got;
    do {
        rec_line = line;
        got = csv_next(path, t, n, &pos, &line, sep, &r);
    } while (got == 1 && rec_is_blank(&r));
    if (got < 0) goto fail;
    if (got == 0) {
        gc_error_set(GC_ERR_FORMAT, "%s: empty manifest (no header row)", path);
        goto fail;
    }
    ncols = r.n;
    for (int c = 0; c < r.n; c++) {
        const char *f = r.buf + r.start[c];
        const char *const keys[2] = {img_key, caption_key};
        int *const cols[2] = {&img_col, &cap_col};
        for (int k = 0; k < 2; k++) {
            if (r.len[c] != strlen(keys[k]) || memcmp(f, keys[k], r.len[c]) != 0) continue;
            if (*cols[k] >= 0 && *cols[k] != c) { /* which of them is meant cannot be told */
                gc_error_set(GC_ERR_FORMAT, "%s:%lld: column \"%s\" appears twice in the header (fields %d and %d)", path,
                             (long long)rec_line, keys[k], *cols[k] + 1, c + 1);
                goto fail;
            }
            *cols[k] = c;
        }
    }
    if (img_col < 0 || cap_col < 0) {
        char cols[512] = "";
        size_t used = 0;
        for (int c = 0; c < r.n && used < sizeof cols - 1; c++)
            used += (size_t)snprintf(cols + used, sizeof cols - used, "%s\"%.*s\"", c ? ", " : "", (int)r.len[c],
                                     r.buf + r.start[c]);
        gc_error_set(GC_ERR_FORMAT, "%s:%lld: no column \"%s\" in the header (columns: %s%s)", path,
                     (long long)rec_line, img_col < 0 ? img_key : caption_key, cols,
                     sep == '\t' ? "" : "; a TSV needs the tab separator");
        goto fail;
    }
    for (;;) {
        rec_line = line;
        got = csv_next(path, t, n, &pos, &line, sep, &r);
        if (got < 0) goto fail;
        if (got == 0) break;
        if (rec_is_blank(&r)) continue;
        if (r.n != ncols) {
            char sepname[8];
            snprintf(sepname, sizeof sepname, sep == '\t' ? "tab" : "'%c'", sep);
            gc_error_set(GC_ERR_FORMAT, "%s:%lld: %d fields, the header has %d (an unquoted %s in a field?)", path,
                         (long long)rec_line, r.n, ncols, sepname);
            goto fail;
        }
        const char *img = r.buf + r.start[img_col];
        size_t img_n = r.len[img_col];
        if (img_n == 0) {
            gc_error_set(GC_ERR_FORMAT, "%s:%lld: empty \"%s\" field", path, (long long)rec_line, img_key);
            goto fail;
        }
        if (memchr(img, 0, img_n)) {
            gc_error_set(GC_ERR_FORMAT, "%s:%lld: NUL byte in the image path", path, (long long)rec_line);
            goto fail;
        }
        const char *name;
        if (img[0] == '/' || dir_n == 0) {
            name = ds_strndup(ds, img, img_n);
        } else {
            char *full = malloc(dir_n + img_n + 1);
            if (!full) {
                gc_error_set(GC_ERR_OOM, "%s: out of memory", path);
                goto fail;
            }
            memcpy(full, dir, dir_n);
            memcpy(full + dir_n, img, img_n);
            name = ds_strndup(ds, full, dir_n + img_n);
            free(full);
        }
        const char *cap = ds_strndup(ds, r.buf + r.start[cap_col], r.len[cap_col]);
        if (!name || !cap) {
            gc_error_set(GC_ERR_OOM, "%s: out of memory", path);
            goto fail;
        }
        if (ds_add(ds, (sample){.caption = cap, .name = name, .shard = -1, .off = rec_line}) != GC_OK) goto fail;
    }
    if (ds->n == 0) {
        gc_error_set(GC_ERR_FORMAT, "%s: no samples after the header", path);
        goto fail;
    }
    free(r.buf);
    free(r.start);
    free(r.len);
    free(raw);
    free(dir);
    return ds;
fail:
    free(r.buf);
    free(r.start);
    free(r.len);
    free(raw);
    free(dir);
    gc_dataset_free(ds);
    return NULL;
}

/* ---------------------------------------------------------------- brace expansion */

typedef struct strlist {
    char **s;
    int n, cap;
} strlist;

static int sl_push(strlist *l, char *s)
{
    if (!s) return -1;
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 8;
        char **p = realloc(l->s, sizeof(char *) * cap);
        if (!p) {
            free(s);
            return -1;
        }
        l->s = p;
        l->cap = cap;
    }
    l->s[l->n++] = s;
    return 0;
}

void gc_strings_free(char **s, int n)
{
    if (!s) return;
    for (int i = 0; i < n; i++) free(s[i]);
    free(s);
}

static char *cat3(const char *a, size_t an, const char *b, size_t bn, const char *c)
{
    size_t cn = strlen(c);
    char *s = malloc(an + bn + cn + 1);
    if (!s) return NULL;
    memcpy(s, a, an);
    memcpy(s + an, b, bn);
    memcpy(s + an + bn, c, cn + 1);
    return s;
}

/* "a..b" or "a..b..c" with integers: fills the numbers' text; 0 if not a range */
static int parse_range(const char *b, size_t n, strlist *out)
{
    char tmp[64];
    if (n >= sizeof tmp) return 0;
    memcpy(tmp, b, n);
    tmp[n] = 0;
    char *d1 = strstr(tmp, "..");
    if (!d1) return 0;
    *d1 = 0;
    char *right = d1 + 2, *d2 = strstr(right, ".."), *incr = NULL;
    if (d2) {
        *d2 = 0;
        incr = d2 + 2;
    }
    char *e;
    const char *parts[3] = {tmp, right, incr};
    long long v[3] = {0, 0, 1};
    for (int k = 0; k < 3; k++) {
        if (!parts[k]) continue;
        if (!*parts[k]) return 0;
        errno = 0;
        v[k] = strtoll(parts[k], &e, 10);
        if (*e || errno) return 0;
    }
    /* the bounds come from the user: distances in unsigned, so that no step overflows */
    unsigned long long step = v[2] < 0 ? 0ull - (unsigned long long)v[2] : (unsigned long long)v[2];
    if (step == 0) step = 1;
    /* braceexpand: pad to the longer bound when either has a leading zero */
    int pad = 0;
    for (int k = 0; k < 2; k++) {
        const char *s = parts[k];
        if (strcmp(s, "0") && strcmp(s, "-0") && (s[0] == '0' || (s[0] == '-' && s[1] == '0'))) pad = 1;
    }
    int width = pad ? (int)(strlen(tmp) > strlen(right) ? strlen(tmp) : strlen(right)) : 0;
    bool up = v[0] <= v[1];
    unsigned long long span = up ? (unsigned long long)v[1] - (unsigned long long)v[0]
                                 : (unsigned long long)v[0] - (unsigned long long)v[1];
    if (span / step > 10000000) return -1;
    if (width > 64) width = 64;
    for (unsigned long long k = 0; k <= span / step; k++) {
        /* v[0] +- k*step stays between the bounds; its magnitude as unsigned (LLONG_MIN has no positive) */
        unsigned long long ux = up ? (unsigned long long)v[0] + k * step : (unsigned long long)v[0] - k * step;
        bool neg = ux >> 63;
        char num[96];
        if (neg) snprintf(num, sizeof num, "-%0*llu", width > 0 ? width - 1 : 0, 0ull - ux);
        else snprintf(num, sizeof num, "%0*llu", width, ux);
        if (sl_push(out, strdup(num))) return -1;
    }
    return 1;
}

static int brace_rec(const char *s, strlist *out);

static int brace_rec(const char *s, strlist *out)
{
    for (size_t i = 0; s[i]; i++) {
        if (s[i] != '{') continue;
        int depth = 0;
        size_t j = i, comma_n = 0;
        size_t commas[1024];
        for (; s[j]; j++) {
            if (s[j] == '{') depth++;
            else if (s[j] == '}' && --depth == 0) break;
            else if (s[j] == ',' && depth == 1) {
                if (comma_n == 1024) return -1;
                commas[comma_n++] = j;
            }
        }
        if (!s[j]) return sl_push(out, strdup(s)); /* unbalanced: literal */
        strlist alts = {0};
        int rc = 0;
        if (comma_n > 0) {
            size_t a = i + 1;
            for (size_t k = 0; k <= comma_n && rc == 0; k++) {
                size_t b = k < comma_n ? commas[k] : j;
                char *alt = malloc(b - a + 1);
                if (!alt) rc = -1;
                else {
                    memcpy(alt, s + a, b - a);
                    alt[b - a] = 0;
                    rc = sl_push(&alts, alt);
                }
                a = b + 1;
            }
        } else {
            rc = parse_range(s + i + 1, j - i - 1, &alts);
            if (rc == 0) continue; /* "{x}": literal, look further */
            rc = rc < 0 ? -1 : 0;
        }
        for (int k = 0; k < alts.n && rc == 0; k++) {
            char *rest = cat3(alts.s[k], strlen(alts.s[k]), "", 0, s + j + 1);
            strlist sub = {0};
            rc = rest ? brace_rec(rest, &sub) : -1;
            free(rest);
            for (int m = 0; m < sub.n; m++) {
                if (rc == 0) rc = sl_push(out, cat3(s, i, sub.s[m], strlen(sub.s[m]), ""));
                free(sub.s[m]);
            }
            free(sub.s);
        }
        gc_strings_free(alts.s, alts.n);
        return rc;
    }
    return sl_push(out, strdup(s));
}

gc_status gc_brace_expand(const char *pattern, char ***out, int *n)
{
    *out = NULL;
    *n = 0;
    if (!pattern) return gc_error_set(GC_ERR_INVALID, "brace expansion: no pattern");
    strlist l = {0};
    if (brace_rec(pattern, &l) != 0) {
        gc_strings_free(l.s, l.n);
        return gc_error_set(GC_ERR_INVALID, "brace expansion of \"%s\" failed (too large or out of memory)", pattern);
    }
    *out = l.s;
    *n = l.n;
    return GC_OK;
}

/* ---------------------------------------------------------------- tar shards */

static int64_t tar_num(const uint8_t *p, int n)
{
    if (p[0] & 0x80) { /* GNU base-256 */
        if (p[0] & 0x40) return -1; /* negative */
        int64_t v = p[0] & 0x3f;
        for (int i = 1; i < n; i++) {
            if (v > (INT64_MAX >> 8)) return -1; /* does not fit: 12 bytes hold 94 bits */
            v = (v << 8) | p[i];
        }
        return v;
    }
    int64_t v = 0;
    int i = 0;
    while (i < n && (p[i] == ' ' || p[i] == 0)) i++;
    for (; i < n && p[i] >= '0' && p[i] <= '7'; i++) v = v * 8 + (p[i] - '0');
    for (; i < n; i++)
        if (p[i] != ' ' && p[i] != 0) return -1;
    return v;
}

typedef struct tar_group {
    char *key;        /* current sample key */
    char *img;        /* image member name */
    int img_rank;     /* jpg 0, png 1, jpeg 2; 99 = none */
    int64_t img_off, img_size;
    char *cap;
    char *cap_name;   /* the caption's member */
    int has_cap;
    char exts[16][16];
    int n_exts;
} tar_group;

static void group_reset(tar_group *g)
{
    free(g->key);
    free(g->img);
    free(g->cap);
    free(g->cap_name);
    memset(g, 0, sizeof *g);
    g->img_rank = 99;
}

static gc_status group_flush(gc_dataset *ds, int shard, tar_group *g)
{
    gc_status s = GC_OK;
    if (g->key) {
        if (g->img && g->has_cap) {
            const char *name = ds_strndup(ds, g->img, strlen(g->img));
            const char *cap = ds_strndup(ds, g->cap, strlen(g->cap));
            const char *cap_name = ds_strndup(ds, g->cap_name, strlen(g->cap_name));
            if (!name || !cap || !cap_name) s = gc_error_set(GC_ERR_OOM, "dataset: out of memory");
            else s = ds_add(ds, (sample){.caption = cap, .name = name, .cap_name = cap_name, .shard = shard,
                                         .off = g->img_off, .size = g->img_size});
        } else {
            ds->incomplete++;
        }
    }
    group_reset(g);
    return s;
}

/* pax records "LEN key=value\n" (LEN counts the whole record): path and size. The
 * lengths come from the file, so each record must fit its own length and the data
 * (Python's tarfile checks the same); a NUL where a record would start ends them.
 * `off` (the pax member's header) and `path` name the record in errors. */
static gc_status pax_parse(const char *d, size_t n, const char *path, int64_t off, char **paxpath, int64_t *size)
{
    size_t i = 0;
    while (i < n && d[i]) {
        size_t j = i, len = 0;
        while (j < n && d[j] >= '0' && d[j] <= '9' && len <= n) len = len * 10 + (size_t)(d[j++] - '0');
        /* at least "LEN k=\n" */
        if (j == i || j >= n || d[j] != ' ' || len > n - i || len < (j - i) + 4 || d[i + len - 1] != '\n')
            return gc_error_set(GC_ERR_FORMAT, "%s: malformed pax record at byte %zu of the pax header at offset %lld",
                                path, i, (long long)off);
        const char *kv = d + j + 1, *end = d + i + len - 1; /* end: the '\n' */
        const char *eq = memchr(kv, '=', (size_t)(end - kv));
        if (!eq || eq == kv)
            return gc_error_set(GC_ERR_FORMAT, "%s: pax record without a key=value at byte %zu of the pax header at "
                                "offset %lld", path, i, (long long)off);
        size_t vn = (size_t)(end - eq - 1);
        if ((size_t)(eq - kv) == 4 && memcmp(kv, "path", 4) == 0) {
            free(*paxpath);
            if (!(*paxpath = strndup(eq + 1, vn))) return gc_error_set(GC_ERR_OOM, "%s: out of memory", path);
        } else if ((size_t)(eq - kv) == 4 && memcmp(kv, "size", 4) == 0) {
            /* digits only: no sign, no overflow */
            int64_t v = 0;
            size_t k = 0;
            for (; k < vn && eq[1 + k] >= '0' && eq[1 + k] <= '9' && v <= (INT64_MAX - 9) / 10; k++)
                v = v * 10 + (eq[1 + k] - '0');
            if (vn == 0 || k != vn)
                return gc_error_set(GC_ERR_FORMAT, "%s: pax header at offset %lld: size '%.*s' is not a byte count",
                                    path, (long long)off, (int)(vn > 40 ? 40 : vn), eq + 1);
            *size = v;
        }
        i += len;
    }
    return GC_OK;
}

static gc_status read_at(int fd, const char *path, int64_t off, size_t n, char *dst)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, dst + got, n - got, off + (off_t)got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return gc_error_set(GC_ERR_IO, "cannot read %s at offset %lld", path, (long long)(off + got));
        got += (size_t)r;
    }
    return GC_OK;
}

static gc_status tar_scan(gc_dataset *ds, int shard)
{
    const char *path = ds->shards[shard];
    int fd = open(path, O_RDONLY);
    if (fd < 0) return gc_error_set(GC_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return gc_error_set(GC_ERR_IO, "cannot stat %s", path);
    }
    int64_t fsize = st.st_size, pos = 0;
    char *longname = NULL, *paxpath = NULL, *extra = NULL;
    int64_t paxsize = -1;
    tar_group g = {0};
    group_reset(&g);
    gc_status s = GC_OK;
    uint8_t h[512];
    while (pos + 512 <= fsize) {
        if ((s = read_at(fd, path, pos, 512, (char *)h)) != GC_OK) break;
        int zero = 1;
        for (int i = 0; i < 512 && zero; i++) zero = h[i] == 0;
        if (zero) break;
        int64_t want = tar_num(h + 148, 8), sum = 0;
        for (int i = 0; i < 512; i++) sum += (i >= 148 && i < 156) ? ' ' : h[i];
        if (want != sum) {
            s = gc_error_set(GC_ERR_FORMAT, "%s: bad tar header at offset %lld (checksum)", path, (long long)pos);
            break;
        }
        int64_t size = tar_num(h + 124, 12);
        if (paxsize >= 0) size = paxsize;
        char type = (char)h[156];
        char name[300];
        if (memcmp(h + 257, "ustar\0", 6) == 0 && h[345])
            snprintf(name, sizeof name, "%.155s/%.100s", (const char *)h + 345, (const char *)h);
        else
            snprintf(name, sizeof name, "%.100s", (const char *)h);
        const char *mname = longname ? longname : paxpath ? paxpath : name;
        int64_t data = pos + 512;
        if (size < 0 || size > fsize - data) { /* data <= fsize: no overflow */
            s = gc_error_set(GC_ERR_FORMAT, "%s: member %s is truncated (%lld bytes at offset %lld, the file has %lld)",
                             path, mname, (long long)size, (long long)data, (long long)fsize);
            break;
        }
        pos = data + (size + 511) / 512 * 512;
        if (type == 'L' || type == 'x') {
            if (size > (1 << 20)) {
                s = gc_error_set(GC_ERR_FORMAT, "%s: %s header of %lld bytes at offset %lld", path,
                                 type == 'L' ? "long name" : "pax", (long long)size, (long long)data);
                break;
            }
            free(extra);
            extra = malloc((size_t)size + 1);
            if (!extra) {
                s = gc_error_set(GC_ERR_OOM, "%s: out of memory", path);
                break;
            }
            if ((s = read_at(fd, path, data, (size_t)size, extra)) != GC_OK) break;
            extra[size] = 0;
            if (type == 'L') {
                free(longname);
                if (!(longname = strdup(extra))) {
                    s = gc_error_set(GC_ERR_OOM, "%s: out of memory", path);
                    break;
                }
            } else {
                if ((s = pax_parse(extra, (size_t)size, path, data - 512, &paxpath, &paxsize)) != GC_OK) break;
            }
            continue;
        }
        char *member = strdup(mname);
        free(longname);
        free(paxpath);
        longname = paxpath = NULL;
        paxsize = -1;
        if (!member) {
            s = gc_error_set(GC_ERR_OOM, "%s: out of memory", path);
            break;
        }
        if (type != '0' && type != '\0' && type != '7') { /* directories, links, global pax ... */
            free(member);
            continue;
        }
        /* webdataset: key = path up to the first dot of the last component, suffix lowercased */
        const char *base = strrchr(member, '/');
        base = base ? base + 1 : member;
        const char *dot = strchr(base, '.');
        if (!dot || dot == base || (base[0] == '_' && base[1] == '_')) {
            free(member);
            continue;
        }
        size_t key_n = (size_t)(dot - member);
        char ext[16];
        size_t ext_n = strlen(dot + 1);
        if (ext_n >= sizeof ext) ext_n = sizeof ext - 1;
        for (size_t i = 0; i < ext_n; i++) {
            char ch = dot[1 + i];
            ext[i] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
        }
        ext[ext_n] = 0;
        if (!g.key || strlen(g.key) != key_n || memcmp(g.key, member, key_n) != 0) {
            if ((s = group_flush(ds, shard, &g)) != GC_OK) {
                free(member);
                break;
            }
            g.key = strndup(member, key_n);
        }
        for (int i = 0; i < g.n_exts; i++)
            if (strcmp(g.exts[i], ext) == 0) {
                s = gc_error_set(GC_ERR_FORMAT, "%s: duplicate member %s in sample %s", path, member, g.key);
                break;
            }
        if (s != GC_OK) {
            free(member);
            break;
        }
        if (g.n_exts < 16) strcpy(g.exts[g.n_exts++], ext);
        int rank = !strcmp(ext, "jpg") ? 0 : !strcmp(ext, "png") ? 1 : !strcmp(ext, "jpeg") ? 2 : 99;
        if (rank < g.img_rank) {
            free(g.img);
            g.img = member;
            member = NULL;
            g.img_rank = rank;
            g.img_off = data;
            g.img_size = size;
        } else if (!strcmp(ext, "txt")) {
            if (size > (16 << 20)) {
                s = gc_error_set(GC_ERR_FORMAT, "%s: caption %s is %lld bytes", path, member, (long long)size);
                free(member);
                break;
            }
            free(g.cap);
            g.cap = malloc((size_t)size + 1);
            if (!g.cap || read_at(fd, path, data, (size_t)size, g.cap) != GC_OK) {
                s = g.cap ? gc_error_code() : gc_error_set(GC_ERR_OOM, "%s: out of memory", path);
                free(member);
                break;
            }
            g.cap[size] = 0;
            g.has_cap = 1;
            free(g.cap_name);
            g.cap_name = member;
            member = NULL;
        }
        free(member);
    }
    if (s == GC_OK && pos < fsize && pos + 512 > fsize)
        s = gc_error_set(GC_ERR_FORMAT, "%s: truncated tar header at offset %lld", path, (long long)pos);
    if (s == GC_OK) s = group_flush(ds, shard, &g);
    group_reset(&g);
    free(g.key);
    free(longname);
    free(paxpath);
    free(extra);
    close(fd);
    return s;
}

gc_dataset *gc_dataset_open_tar_list(const char *const *paths, int n)
{
    if (!paths || n <= 0) {
        gc_error_set(GC_ERR_INVALID, "open tar shards: no shards given");
        return NULL;
    }
    gc_dataset *ds = ds_new();
    if (!ds) return NULL;
    ds->shards = calloc((size_t)n, sizeof(char *));
    if (!ds->shards) {
        gc_error_set(GC_ERR_OOM, "dataset: out of memory");
        gc_dataset_free(ds);
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        ds->shards[i] = strdup(paths[i]);
        ds->n_shards = i + 1;
        if (!ds->shards[i]) {
            gc_error_set(GC_ERR_OOM, "dataset: out of memory");
            gc_dataset_free(ds);
            return NULL;
        }
        if (tar_scan(ds, i) != GC_OK) {
            gc_dataset_free(ds);
            return NULL;
        }
    }
    if (ds->n == 0) {
        gc_error_set(GC_ERR_FORMAT, "%s%s: no complete samples (an image .jpg/.png/.jpeg and a .txt caption per key)",
                     paths[0], n > 1 ? " ..." : "");
        gc_dataset_free(ds);
        return NULL;
    }
    return ds;
}

gc_dataset *gc_dataset_open_tar(const char *spec)
{
    if (!spec || !*spec) {
        gc_error_set(GC_ERR_INVALID, "open tar shards: empty shard pattern");
        return NULL;
    }
    strlist all = {0};
    const char *p = spec;
    for (;;) {
        const char *e = strstr(p, "::");
        size_t len = e ? (size_t)(e - p) : strlen(p);
        char *one = strndup(p, len);
        char **ex = NULL;
        int nex = 0;
        gc_status s = one ? gc_brace_expand(one, &ex, &nex) : gc_error_set(GC_ERR_OOM, "out of memory");
        free(one);
        if (s != GC_OK) {
            gc_strings_free(all.s, all.n);
            return NULL;
        }
        for (int i = 0; i < nex; i++) {
            if (sl_push(&all, ex[i])) {
                for (int k = i + 1; k < nex; k++) free(ex[k]);
                free(ex);
                gc_strings_free(all.s, all.n);
                gc_error_set(GC_ERR_OOM, "out of memory");
                return NULL;
            }
        }
        free(ex);
        if (!e) break;
        p = e + 2;
    }
    gc_dataset *ds = gc_dataset_open_tar_list((const char *const *)all.s, all.n);
    gc_strings_free(all.s, all.n);
    return ds;
}
