/* A deterministic synthetic image-caption data set for the quickstart (tools/gc_data.h):
 * one or two flat shapes on a gray background, captioned from what is drawn, e.g.
 * "a small red circle above a large blue square". Everything a caption says (shape,
 * colour, size, relation) is visible at 32-64 px. */
#include "gc_data.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../runtime/gc_rng.h"

#define SYNTH_VERSION 1
#define SYNTH_VAL_SEED_OFFSET 0x9E3779B97F4A7C15ull

static const char *const shape_names[3] = {"circle", "square", "triangle"};
static const char *const colour_names[6] = {"red", "green", "blue", "yellow", "purple", "orange"};
static const uint8_t colours[6][3] = {{220, 30, 30}, {30, 165, 50}, {35, 65, 225},
                                      {240, 215, 25}, {140, 45, 185}, {250, 135, 20}};

/* uniform [0,1) number k of sample i */
static double synth_u(uint64_t seed, int64_t i, uint32_t k)
{
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    uint32_t ctr[4] = {(uint32_t)i, (uint32_t)((uint64_t)i >> 32), k, 0x73796e74u /* "synt" */};
    uint32_t r[4];
    gc_philox4x32_10(key, ctr, r);
    return (double)(r[0] >> 8) * (1.0 / 16777216.0);
}

static int synth_pick(uint64_t seed, int64_t i, uint32_t k, int n)
{
    int v = (int)(synth_u(seed, i, k) * n);
    return v < n ? v : n - 1;
}

typedef struct shape {
    int kind, colour, large;
    double cx, cy, r; /* pixels; every shape fits in a box of half-side 1.2 r */
} shape;

/* is (x, y) inside the shape? Areas: circle pi r^2, square pi r^2, triangle 2.28 r^2 */
static int shape_has(const shape *s, double x, double y)
{
    double dx = x - s->cx, dy = y - s->cy;
    switch (s->kind) {
    case 0: return dx * dx + dy * dy <= s->r * s->r;
    case 1: return dx >= -0.886 * s->r && dx <= 0.886 * s->r && dy >= -0.886 * s->r && dy <= 0.886 * s->r;
    default: {
        double top = -1.1 * s->r, base = 0.8 * s->r;
        if (dy < top || dy > base) return 0;
        double hw = 1.2 * s->r * (dy - top) / (base - top);
        return dx >= -hw && dx <= hw;
    }
    }
}

static void shape_draw(gc_image *im, const shape *s)
{
    int L = im->w;
    const uint8_t *c = colours[s->colour];
    int x0 = (int)(s->cx - 1.3 * s->r), x1 = (int)(s->cx + 1.3 * s->r) + 1;
    int y0 = (int)(s->cy - 1.3 * s->r), y1 = (int)(s->cy + 1.3 * s->r) + 1;
    if (x0 < 0) x0 = 0;
    if (y0 < 0) y0 = 0;
    if (x1 > L) x1 = L;
    if (y1 > L) y1 = L;
    for (int y = y0; y < y1; y++)
        for (int x = x0; x < x1; x++) {
            int hit = 0; /* 4 x 4 supersampling for smooth edges */
            for (int sy = 0; sy < 4; sy++)
                for (int sx = 0; sx < 4; sx++) hit += shape_has(s, x + (sx + 0.5) / 4, y + (sy + 0.5) / 4);
            if (!hit) continue;
            uint8_t *p = im->rgb + ((size_t)y * L + x) * 3;
            for (int k = 0; k < 3; k++) p[k] = (uint8_t)((p[k] * (16 - hit) + c[k] * hit + 8) / 16);
        }
}

static int describe(char *buf, size_t n, const shape *s)
{
    return snprintf(buf, n, "a %s %s %s", s->large ? "large" : "small", colour_names[s->colour], shape_names[s->kind]);
}

gc_status gc_synth_sample(int64_t i, int image_size, uint64_t seed, char *caption, size_t cap_n, gc_image *im)
{
    int L = image_size;
    if (L < 16 || L > 4096) return gc_error_set(GC_ERR_INVALID, "synthetic data: image size %d outside [16, 4096]", L);
    if (i < 0) return gc_error_set(GC_ERR_INVALID, "synthetic data: negative sample index");
    uint32_t k = 0;
    int two = synth_u(seed, i, k++) < 0.5, rel_left = synth_u(seed, i, k++) < 0.5;
    shape sh[2];
    int n = two ? 2 : 1;
    for (int j = 0; j < n; j++) {
        shape *s = &sh[j];
        s->kind = synth_pick(seed, i, k++, 3);
        s->colour = synth_pick(seed, i, k++, 6);
        s->large = synth_u(seed, i, k++) < 0.5;
        double f = 0.9 + 0.2 * synth_u(seed, i, k++);
        /* large ~2x small; two large shapes still fit side by side (1.2 r <= L/4) */
        s->r = L * (s->large ? (two ? 0.18 : 0.24) : (two ? 0.095 : 0.12)) * f;
        double e = 1.2 * s->r + 1; /* the shape's half extent plus a margin */
        double lo_x = e, hi_x = L - e, lo_y = e, hi_y = L - e;
        if (two) { /* shape 0 in the top (left) half, shape 1 in the bottom (right) half */
            double *lo = rel_left ? &lo_x : &lo_y, *hi = rel_left ? &hi_x : &hi_y;
            if (j == 0) *hi = L / 2.0 - e;
            else *lo = L / 2.0 + e;
        }
        double ux = synth_u(seed, i, k++), uy = synth_u(seed, i, k++);
        s->cx = hi_x > lo_x ? lo_x + (hi_x - lo_x) * ux : (lo_x + hi_x) / 2;
        s->cy = hi_y > lo_y ? lo_y + (hi_y - lo_y) * uy : (lo_y + hi_y) / 2;
    }
    if (caption && cap_n) {
        int used = describe(caption, cap_n, &sh[0]);
        if (two && used >= 0 && (size_t)used < cap_n) {
            used += snprintf(caption + used, cap_n - (size_t)used, " %s ", rel_left ? "left of" : "above");
            if (used >= 0 && (size_t)used < cap_n) describe(caption + used, cap_n - (size_t)used, &sh[1]);
        }
    }
    if (im) {
        GC_TRY(gc_image_new(L, L, im));
        uint8_t bg = (uint8_t)(140 + (int)(95 * synth_u(seed, i, 100))); /* plain gray in [140, 235) */
        memset(im->rgb, bg, (size_t)L * L * 3);
        for (int j = 0; j < n; j++) shape_draw(im, &sh[j]);
    }
    return GC_OK;
}

/* ---------------------------------------------------------------- files */

static gc_status mkdir_p(const char *dir)
{
    char path[4096];
    if (snprintf(path, sizeof path, "%s", dir) >= (int)sizeof path)
        return gc_error_set(GC_ERR_INVALID, "path too long: %s", dir);
    for (char *p = path + 1;; p++) {
        if (*p == '/' || *p == 0) {
            char c = *p;
            *p = 0;
            if (mkdir(path, 0777) != 0 && errno != EEXIST)
                return gc_error_set(GC_ERR_IO, "cannot create directory %s: %s", path, strerror(errno));
            *p = c;
            if (!c) break;
        }
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return gc_error_set(GC_ERR_IO, "%s is not a directory", dir);
    return GC_OK;
}

static gc_status write_file(const char *path, const char *text, size_t n)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return gc_error_set(GC_ERR_IO, "cannot create %s: %s", tmp, strerror(errno));
    size_t w = fwrite(text, 1, n, f);
    if (fclose(f) != 0 || w != n) {
        unlink(tmp);
        return gc_error_set(GC_ERR_IO, "cannot write %s", tmp);
    }
    if (rename(tmp, path) != 0)
        return gc_error_set(GC_ERR_IO, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
    return GC_OK;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = malloc(4097);
    size_t n = buf ? fread(buf, 1, 4096, f) : 0;
    fclose(f);
    if (buf) buf[n] = 0;
    return buf;
}

gc_status gc_synth_make(const char *dir, int64_t n, int image_size, uint64_t seed)
{
    if (!dir || !*dir || n <= 0 || image_size < 16 || image_size > 4096)
        return gc_error_set(GC_ERR_INVALID, "synthetic data: bad arguments (dir %s, n %lld, image size %d)",
                            dir ? dir : "(null)", (long long)n, image_size);
    char manifest[4200], info_path[4200], img_dir[4200], path[4300];
    snprintf(manifest, sizeof manifest, "%s/manifest.tsv", dir);
    snprintf(info_path, sizeof info_path, "%s/synth.txt", dir);
    snprintf(img_dir, sizeof img_dir, "%s/images", dir);
    char info[256];
    int info_n = snprintf(info, sizeof info, "gcache synthetic shapes v%d\nn %lld\nsize %d\nseed %llu\n", SYNTH_VERSION,
                          (long long)n, image_size, (unsigned long long)seed);

    if (access(manifest, F_OK) == 0) {
        char *old = slurp(info_path);
        int same = old && strcmp(old, info) == 0, ours = old && strncmp(old, "gcache synthetic shapes", 23) == 0;
        free(old);
        if (same) return GC_OK;
        if (!ours)
            return gc_error_set(GC_ERR_STATE, "%s exists and was not written by the synthetic data generator; "
                                "not overwriting it", manifest);
        if (unlink(manifest) != 0) return gc_error_set(GC_ERR_IO, "cannot remove %s: %s", manifest, strerror(errno));
    }
    GC_TRY(mkdir_p(dir));
    GC_TRY(mkdir_p(img_dir));
    GC_TRY(write_file(info_path, info, (size_t)info_n));

    /* the manifest is written last: it marks a complete data set */
    size_t cap = 64 + (size_t)n * 96, used = 0;
    char *text = malloc(cap);
    if (!text)
        return gc_error_set(GC_ERR_OOM, "synthetic data: out of memory for the manifest of %lld samples", (long long)n);
    used += (size_t)snprintf(text, cap, "filepath\ttitle\n");
    for (int64_t i = 0; i < n; i++) {
        char caption[200];
        gc_image im;
        gc_status s = gc_synth_sample(i, image_size, seed, caption, sizeof caption, &im);
        if (s == GC_OK) {
            snprintf(path, sizeof path, "%s/%06lld.png", img_dir, (long long)i);
            s = gc_image_save_png(path, &im);
            gc_image_free(&im);
        }
        if (s != GC_OK) {
            free(text);
            return s;
        }
        used += (size_t)snprintf(text + used, cap - used, "images/%06lld.png\t%s\n", (long long)i, caption);
    }
    gc_status s = write_file(manifest, text, used);
    free(text);
    return s;
}

gc_status gc_synth_make_splits(const char *root, int64_t n_train, int64_t n_val, int image_size, uint64_t seed)
{
    char dir[4200];
    if (!root) return gc_error_set(GC_ERR_INVALID, "synthetic data: no directory");
    snprintf(dir, sizeof dir, "%s/train", root);
    GC_TRY(gc_synth_make(dir, n_train, image_size, seed));
    snprintf(dir, sizeof dir, "%s/val", root);
    return gc_synth_make(dir, n_val, image_size, seed + SYNTH_VAL_SEED_OFFSET);
}
