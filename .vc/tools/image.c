/* PNG/JPEG decoding, PNG encoding, PIL-exact resampling and the CLIP/DINOv3
 * preprocessing (tools/gc_data.h). */
#include "gc_data.h"

#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jerror.h>
#include <jpeglib.h>
#include <png.h>

#include "../runtime/gc_rng.h"

gc_status gc_image_new(int w, int h, gc_image *out)
{
    out->w = out->h = 0;
    out->rgb = NULL;
    if (w <= 0 || h <= 0 || (int64_t)w * h > GC_IMAGE_MAX_PIXELS)
        return gc_error_set(GC_ERR_INVALID, "image: bad size %dx%d", w, h);
    out->rgb = malloc((size_t)w * h * 3);
    if (!out->rgb) return gc_error_set(GC_ERR_OOM, "image: out of memory for %dx%d pixels", w, h);
    out->w = w;
    out->h = h;
    return GC_OK;
}

void gc_image_free(gc_image *im)
{
    if (!im) return;
    free(im->rgb);
    im->rgb = NULL;
    im->w = im->h = 0;
}

static gc_status check_size(const char *name, int64_t w, int64_t h)
{
    if (w <= 0 || h <= 0) return gc_error_set(GC_ERR_FORMAT, "%s: image has no pixels (%lldx%lld)", name,
                                              (long long)w, (long long)h);
    if (w * h > GC_IMAGE_MAX_PIXELS)
        return gc_error_set(GC_ERR_FORMAT, "%s: image too large (%lldx%lld pixels)", name, (long long)w, (long long)h);
    return GC_OK;
}

/* ---------------------------------------------------------------- PNG */

typedef struct png_io {
    const uint8_t *data;
    size_t n, pos;
    char msg[200];
    /* writing */
    uint8_t *out;
    size_t out_n, out_cap;
    int oom;
} png_io;

static void png_on_error(png_structp png, png_const_charp msg)
{
    png_io *io = png_get_error_ptr(png);
    snprintf(io->msg, sizeof io->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) { (void)png; (void)msg; }

static void png_read_mem(png_structp png, png_bytep dst, png_size_t n)
{
    png_io *io = png_get_io_ptr(png);
    if (n > io->n - io->pos) png_error(png, "file is truncated");
    memcpy(dst, io->data + io->pos, n);
    io->pos += n;
}

static gc_status png_decode(const uint8_t *data, size_t n, const char *name, gc_image *out)
{
    png_io io = {.data = data, .n = n};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &io, png_on_error, png_on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    uint8_t *volatile pix = NULL;
    png_bytep *volatile rows = NULL;
    if (!info) {
        png_destroy_read_struct(png ? &png : NULL, NULL, NULL);
        return gc_error_set(GC_ERR_OOM, "%s: out of memory for the PNG decoder", name);
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, NULL);
        free(pix);
        free(rows);
        return gc_error_set(GC_ERR_FORMAT, "%s: bad PNG: %s", name, io.msg[0] ? io.msg : "decoding failed");
    }
    png_set_read_fn(png, &io, png_read_mem);
    png_read_info(png, info);
    png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    if (check_size(name, w, h) != GC_OK) {
        png_destroy_read_struct(&png, &info, NULL);
        return gc_error_code();
    }
    int ct = png_get_color_type(png, info), depth = png_get_bit_depth(png, info);
    /* as PIL's convert("RGB"): expand palettes and low-depth gray, keep the high byte
     * of 16-bit samples, drop alpha (also the one a tRNS chunk would give) */
    if (ct == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if ((ct & PNG_COLOR_MASK_COLOR) == 0 && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (depth == 16) png_set_strip_16(png);
    png_set_strip_alpha(png);
    if ((ct & PNG_COLOR_MASK_COLOR) == 0) png_set_gray_to_rgb(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    if (png_get_channels(png, info) != 3 || png_get_bit_depth(png, info) != 8 ||
        png_get_rowbytes(png, info) != (size_t)w * 3)
        png_error(png, "unsupported pixel layout");
    pix = malloc((size_t)w * h * 3);
    rows = malloc(sizeof(png_bytep) * h);
    if (!pix || !rows) png_error(png, "out of memory");
    for (png_uint_32 y = 0; y < h; y++) rows[y] = pix + (size_t)y * w * 3;
    png_read_image(png, rows);
    png_read_end(png, NULL);
    png_destroy_read_struct(&png, &info, NULL);
    free(rows);
    out->w = (int)w;
    out->h = (int)h;
    out->rgb = pix;
    return GC_OK;
}

static void png_write_mem(png_structp png, png_bytep src, png_size_t n)
{
    png_io *io = png_get_io_ptr(png);
    if (io->out_n + n > io->out_cap) {
        size_t cap = io->out_cap ? io->out_cap : 4096;
        while (cap < io->out_n + n) cap *= 2;
        uint8_t *p = realloc(io->out, cap);
        if (!p) {
            io->oom = 1;
            png_error(png, "out of memory");
        }
        io->out = p;
        io->out_cap = cap;
    }
    memcpy(io->out + io->out_n, src, n);
    io->out_n += n;
}

static void png_flush_mem(png_structp png) { (void)png; }

gc_status gc_image_encode_png(const gc_image *im, uint8_t **data, size_t *n)
{
    *data = NULL;
    *n = 0;
    if (!im || !im->rgb || im->w <= 0 || im->h <= 0) return gc_error_set(GC_ERR_INVALID, "encode PNG: empty image");
    png_io io = {0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &io, png_on_error, png_on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        png_destroy_write_struct(png ? &png : NULL, NULL);
        return gc_error_set(GC_ERR_OOM, "encode PNG: out of memory");
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(io.out);
        return gc_error_set(io.oom ? GC_ERR_OOM : GC_ERR_INVALID, "encode PNG: %s", io.msg);
    }
    png_set_write_fn(png, &io, png_write_mem, png_flush_mem);
    png_set_IHDR(png, info, (png_uint_32)im->w, (png_uint_32)im->h, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < im->h; y++) png_write_row(png, im->rgb + (size_t)y * im->w * 3);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    *data = io.out;
    *n = io.out_n;
    return GC_OK;
}

gc_status gc_image_save_png(const char *path, const gc_image *im)
{
    uint8_t *data;
    size_t n;
    GC_TRY(gc_image_encode_png(im, &data, &n));
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(data);
        return gc_error_set(GC_ERR_IO, "cannot create %s: %s", path, strerror(errno));
    }
    size_t wrote = fwrite(data, 1, n, f);
    int bad = fclose(f) != 0 || wrote != n;
    free(data);
    if (bad) return gc_error_set(GC_ERR_IO, "cannot write %s", path);
    return GC_OK;
}

/* ---------------------------------------------------------------- JPEG */

typedef struct jpeg_err {
    struct jpeg_error_mgr pub;
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX];
    int truncated;
} jpeg_err;

static void jpeg_on_error(j_common_ptr c)
{
    jpeg_err *e = (jpeg_err *)c->err;
    c->err->format_message(c, e->msg);
    longjmp(e->jb, 1);
}

/* Warnings are silent, except a premature end of data: libjpeg would pad the image
 * with gray; PIL refuses it ("image file is truncated"), and so do we. */
static void jpeg_on_message(j_common_ptr c, int level)
{
    jpeg_err *e = (jpeg_err *)c->err;
    if (level < 0 && c->err->msg_code == JWRN_JPEG_EOF) e->truncated = 1;
}

static void jpeg_on_output(j_common_ptr c) { (void)c; }

static inline uint8_t muldiv255(int a, int b)
{
    int t = a * b + 128; /* PIL's MULDIV255 */
    return (uint8_t)(((t >> 8) + t) >> 8);
}

static gc_status jpeg_decode(const uint8_t *data, size_t n, const char *name, gc_image *out)
{
    struct jpeg_decompress_struct cinfo;
    jpeg_err err;
    memset(&err, 0, sizeof err);
    uint8_t *volatile pix = NULL;
    uint8_t *volatile row = NULL;
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = jpeg_on_error;
    err.pub.emit_message = jpeg_on_message;
    err.pub.output_message = jpeg_on_output;
    if (setjmp(err.jb)) {
        jpeg_destroy_decompress(&cinfo);
        free(pix);
        free(row);
        return gc_error_set(GC_ERR_FORMAT, "%s: bad JPEG: %s", name, err.msg);
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, (unsigned long)n);
    jpeg_read_header(&cinfo, TRUE);
    if (check_size(name, cinfo.image_width, cinfo.image_height) != GC_OK) {
        jpeg_destroy_decompress(&cinfo);
        return gc_error_code();
    }
    int cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
    cinfo.out_color_space = cmyk ? JCS_CMYK : JCS_RGB; /* gray is replicated, as PIL's L -> RGB */
    cinfo.dct_method = JDCT_ISLOW;                     /* PIL's defaults */
    cinfo.do_fancy_upsampling = TRUE;
    jpeg_start_decompress(&cinfo);
    int w = (int)cinfo.output_width, h = (int)cinfo.output_height, nc = cinfo.output_components;
    if (nc != (cmyk ? 4 : 3)) {
        snprintf(err.msg, sizeof err.msg, "unexpected %d output components", nc);
        longjmp(err.jb, 1);
    }
    pix = malloc((size_t)w * h * 3);
    row = malloc((size_t)w * 4);
    if (!pix || !row) {
        snprintf(err.msg, sizeof err.msg, "out of memory");
        longjmp(err.jb, 1);
    }
    while ((int)cinfo.output_scanline < h) {
        int y = (int)cinfo.output_scanline;
        uint8_t *dst = pix + (size_t)y * w * 3;
        JSAMPROW r = cmyk ? row : dst;
        if (jpeg_read_scanlines(&cinfo, &r, 1) != 1) {
            snprintf(err.msg, sizeof err.msg, "no data at row %d", y);
            longjmp(err.jb, 1);
        }
        if (cmyk) { /* PIL: Adobe-inverted CMYK ("CMYK;I"), then cmyk2rgb */
            for (int x = 0; x < w; x++) {
                int c = 255 - row[4 * x], m = 255 - row[4 * x + 1], yy = 255 - row[4 * x + 2], nk = row[4 * x + 3];
                int v[3] = {nk - muldiv255(c, nk), nk - muldiv255(m, nk), nk - muldiv255(yy, nk)};
                for (int k = 0; k < 3; k++) dst[3 * x + k] = (uint8_t)(v[k] < 0 ? 0 : v[k] > 255 ? 255 : v[k]);
            }
        }
        if (err.truncated) break;
    }
    if (!err.truncated) jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    free(row);
    if (err.truncated) {
        free(pix);
        return gc_error_set(GC_ERR_FORMAT, "%s: bad JPEG: file is truncated", name);
    }
    out->w = w;
    out->h = h;
    out->rgb = pix;
    return GC_OK;
}

/* ---------------------------------------------------------------- decode / load */

gc_status gc_image_decode(const void *data, size_t n, const char *name, gc_image *out)
{
    static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    const uint8_t *p = data;
    if (!name) name = "image";
    out->w = out->h = 0;
    out->rgb = NULL;
    if (!p || n == 0) return gc_error_set(GC_ERR_FORMAT, "%s: empty file", name);
    if (n >= 8 && memcmp(p, png_sig, 8) == 0) return png_decode(p, n, name, out);
    if (n >= 3 && p[0] == 0xff && p[1] == 0xd8 && p[2] == 0xff) return jpeg_decode(p, n, name, out);
    return gc_error_set(GC_ERR_FORMAT, "%s: not a PNG or JPEG file", name);
}

gc_status gc_image_load(const char *path, gc_image *out)
{
    out->w = out->h = 0;
    out->rgb = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return gc_error_set(GC_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    uint8_t *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? cap * 2 : 1 << 16;
            uint8_t *b = realloc(buf, cap);
            if (!b) {
                free(buf);
                fclose(f);
                return gc_error_set(GC_ERR_OOM, "%s: out of memory reading the file", path);
            }
            buf = b;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return gc_error_set(GC_ERR_IO, "cannot read %s", path);
    }
    gc_status s = gc_image_decode(buf, n, path, out);
    free(buf);
    return s;
}

/* ---------------------------------------------------------------- PIL resampling */

#define PRECISION_BITS (32 - 8 - 2)

static double bicubic_filter(double x)
{
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

static double bilinear_filter(double x)
{
    if (x < 0.0) x = -x;
    if (x < 1.0) return 1.0 - x;
    return 0.0;
}

static inline uint8_t clip8(int v)
{
    v >>= PRECISION_BITS; /* PIL's clip8 table */
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* Coefficients of output samples [o0, o0 + count) of a resize of in_size samples to
 * out_size (PIL precompute_coeffs + normalize_coeffs_8bpc): output j uses inputs
 * bounds[2j] .. bounds[2j] + bounds[2j+1] - 1 with weights k[j*ksize ...]. */
typedef struct coeffs {
    int ksize;
    int *bounds;
    int32_t *k;
} coeffs;

static void coeffs_free(coeffs *c)
{
    free(c->bounds);
    free(c->k);
}

static gc_status coeffs_make(int in_size, int out_size, gc_resample f, int o0, int count, coeffs *c)
{
    double (*filter)(double) = f == GC_RESAMPLE_BILINEAR ? bilinear_filter : bicubic_filter;
    double fsupport = f == GC_RESAMPLE_BILINEAR ? 1.0 : 2.0;
    double scale, filterscale;
    filterscale = scale = (double)(float)in_size / out_size; /* PIL: (double)(in1 - in0) / outSize, float box */
    if (filterscale < 1.0) filterscale = 1.0;
    double support = fsupport * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    c->ksize = ksize;
    c->bounds = malloc(sizeof(int) * 2 * (size_t)count);
    c->k = malloc(sizeof(int32_t) * (size_t)ksize * count);
    double *w = malloc(sizeof(double) * (size_t)ksize);
    if (!c->bounds || !c->k || !w) {
        coeffs_free(c);
        free(w);
        return gc_error_set(GC_ERR_OOM, "resize: out of memory for %d x %d coefficients", count, ksize);
    }
    double inv_filterscale = 1.0 / filterscale;
    for (int j = 0; j < count; j++) {
        int xx = o0 + j;
        double center = 0.0 + (xx + 0.5) * scale;
        double ww = 0.0;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        int x;
        for (x = 0; x < xmax; x++) {
            double v = filter((x + xmin - center + 0.5) * inv_filterscale);
            w[x] = v;
            ww += v;
        }
        if (ww != 0.0)
            for (x = 0; x < xmax; x++) w[x] /= ww;
        for (; x < ksize; x++) w[x] = 0;
        int32_t *k = c->k + (size_t)j * ksize;
        for (x = 0; x < ksize; x++)
            k[x] = w[x] < 0 ? (int)(-0.5 + w[x] * (1 << PRECISION_BITS)) : (int)(0.5 + w[x] * (1 << PRECISION_BITS));
        c->bounds[2 * j] = xmin;
        c->bounds[2 * j + 1] = xmax;
    }
    free(w);
    return GC_OK;
}

/* dst[y][j] = sum_x src[y0 + y][bounds..] k (rows of src of width src_w) */
static void pass_horizontal(const uint8_t *src, int src_w, int y0, int rows, const coeffs *c, int count, uint8_t *dst)
{
    for (int y = 0; y < rows; y++) {
        const uint8_t *in = src + (size_t)(y0 + y) * src_w * 3;
        uint8_t *o = dst + (size_t)y * count * 3;
        for (int j = 0; j < count; j++) {
            int xmin = c->bounds[2 * j], xmax = c->bounds[2 * j + 1];
            const int32_t *k = c->k + (size_t)j * c->ksize;
            int s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
            for (int x = 0; x < xmax; x++) {
                const uint8_t *p = in + (size_t)(x + xmin) * 3;
                s0 += p[0] * k[x];
                s1 += p[1] * k[x];
                s2 += p[2] * k[x];
            }
            o[3 * j] = clip8(s0);
            o[3 * j + 1] = clip8(s1);
            o[3 * j + 2] = clip8(s2);
        }
    }
}

/* dst[j][x] = sum_y src[bounds.. - row0][x0 + x] k (src of width src_w, starting at input row row0).
 * Row by row into a block of sums, so the inner loop runs along a contiguous row: with
 * AVX2 (the clone picked at run time where the CPU has it) 8 products an instruction.
 * Integer sums in another order: the same bits as PIL's. */
__attribute__((target_clones("avx2", "default")))
static void pass_vertical(const uint8_t *src, int src_w, int row0, int x0, int cols, const coeffs *c, int count,
                          uint8_t *dst)
{
    enum { BLOCK = 1536 }; /* values (3 a pixel) a block of sums */
    int32_t acc[BLOCK];
    const int n = cols * 3;
    for (int j = 0; j < count; j++) {
        int ymin = c->bounds[2 * j] - row0, ymax = c->bounds[2 * j + 1];
        const int32_t *k = c->k + (size_t)j * c->ksize;
        uint8_t *o = dst + (size_t)j * n;
        for (int b0 = 0; b0 < n; b0 += BLOCK) {
            const int bn = n - b0 < BLOCK ? n - b0 : BLOCK;
            for (int i = 0; i < bn; i++) acc[i] = 1 << (PRECISION_BITS - 1);
            for (int y = 0; y < ymax; y++) {
                const uint8_t *p = src + ((size_t)(ymin + y) * src_w + x0) * 3 + b0;
                const int32_t ky = k[y];
                for (int i = 0; i < bn; i++) acc[i] += p[i] * ky;
            }
            for (int i = 0; i < bn; i++) o[b0 + i] = clip8(acc[i]);
        }
    }
}

gc_status gc_image_crop(const gc_image *in, int x, int y, int w, int h, gc_image *out)
{
    out->rgb = NULL;
    out->w = out->h = 0;
    if (!in || !in->rgb || x < 0 || y < 0 || w <= 0 || h <= 0 || x + w > in->w || y + h > in->h)
        return gc_error_set(GC_ERR_INVALID, "crop: window (%d,%d) %dx%d outside the %dx%d image", x, y, w, h,
                            in ? in->w : 0, in ? in->h : 0);
    GC_TRY(gc_image_new(w, h, out));
    for (int r = 0; r < h; r++)
        memcpy(out->rgb + (size_t)r * w * 3, in->rgb + ((size_t)(y + r) * in->w + x) * 3, (size_t)w * 3);
    return GC_OK;
}

/* Each output pixel of PIL's resample depends only on its own coefficients, so a window
 * is computed exactly without the rest; the pass order is PIL's for the FULL sizes. */
gc_status gc_image_resize_crop(const gc_image *in, int w, int h, gc_resample f, int x0, int y0, int cw, int ch,
                               gc_image *out)
{
    out->rgb = NULL;
    out->w = out->h = 0;
    if (!in || !in->rgb) return gc_error_set(GC_ERR_INVALID, "resize: empty input image");
    if (w <= 0 || h <= 0 || x0 < 0 || y0 < 0 || cw <= 0 || ch <= 0 || x0 + cw > w || y0 + ch > h)
        return gc_error_set(GC_ERR_INVALID, "resize: window (%d,%d) %dx%d outside the %dx%d output", x0, y0, cw, ch,
                            w, h);
    if (f != GC_RESAMPLE_BICUBIC && f != GC_RESAMPLE_BILINEAR)
        return gc_error_set(GC_ERR_INVALID, "resize: unknown filter %d", (int)f);
    int need_h = w != in->w, need_v = h != in->h;
    if (!need_h && !need_v) return gc_image_crop(in, x0, y0, cw, ch, out);
    int horizontal_first = !((in->h - h) > 0 && (in->h - h) > (in->w - w) * 2);
    coeffs ch_c = {0}, cv_c = {0};
    gc_image tmp = {0};
    gc_status s = GC_OK;
    if (need_h && (s = coeffs_make(in->w, w, f, x0, cw, &ch_c)) != GC_OK) return s;
    if (need_v && (s = coeffs_make(in->h, h, f, y0, ch, &cv_c)) != GC_OK) goto done;
    if ((s = gc_image_new(cw, ch, out)) != GC_OK) goto done;
    if (!need_v) {
        pass_horizontal(in->rgb, in->w, y0, ch, &ch_c, cw, out->rgb);
    } else if (!need_h) {
        pass_vertical(in->rgb, in->w, 0, x0, cw, &cv_c, ch, out->rgb);
    } else if (horizontal_first) {
        /* the input rows the window's output rows read */
        int r0 = cv_c.bounds[0], r1 = cv_c.bounds[2 * (ch - 1)] + cv_c.bounds[2 * (ch - 1) + 1];
        if ((s = gc_image_new(cw, r1 - r0, &tmp)) != GC_OK) goto done;
        pass_horizontal(in->rgb, in->w, r0, r1 - r0, &ch_c, cw, tmp.rgb);
        pass_vertical(tmp.rgb, cw, r0, 0, cw, &cv_c, ch, out->rgb);
    } else {
        int c0 = ch_c.bounds[0], c1 = ch_c.bounds[2 * (cw - 1)] + ch_c.bounds[2 * (cw - 1) + 1];
        if ((s = gc_image_new(c1 - c0, ch, &tmp)) != GC_OK) goto done;
        pass_vertical(in->rgb, in->w, 0, c0, c1 - c0, &cv_c, ch, tmp.rgb);
        for (int j = 0; j < cw; j++) ch_c.bounds[2 * j] -= c0;
        pass_horizontal(tmp.rgb, c1 - c0, 0, ch, &ch_c, cw, out->rgb);
    }
done:
    if (s != GC_OK) gc_image_free(out);
    gc_image_free(&tmp);
    coeffs_free(&ch_c);
    coeffs_free(&cv_c);
    return s;
}

gc_status gc_image_resize(const gc_image *in, int w, int h, gc_resample f, gc_image *out)
{
    return gc_image_resize_crop(in, w, h, f, 0, 0, w, h, out);
}

/* ---------------------------------------------------------------- preprocessing */

gc_preprocess gc_preprocess_clip(int size)
{
    gc_preprocess p = {.size = size, .mode = GC_RESIZE_SHORTEST_CROP, .resample = GC_RESAMPLE_BICUBIC,
                       .mean = {0.48145466f, 0.4578275f, 0.40821073f},
                       .std = {0.26862954f, 0.26130258f, 0.27577711f}};
    return p;
}

gc_preprocess gc_preprocess_dinov3(int size)
{
    gc_preprocess p = {.size = size, .mode = GC_RESIZE_SQUARE, .resample = GC_RESAMPLE_BILINEAR,
                       .mean = {0.485f, 0.456f, 0.406f}, .std = {0.229f, 0.224f, 0.225f}};
    return p;
}

void gc_resize_shortest_size(int w, int h, int s, int *new_w, int *new_h)
{
    int sh = w <= h ? w : h, lg = w <= h ? h : w;
    int nl = (int)((double)((int64_t)s * lg) / sh); /* int(S * long / short) */
    *new_w = w <= h ? s : nl;
    *new_h = w <= h ? nl : s;
}

int gc_center_crop_offset(int len, int s, bool hf)
{
    int d = len - s;
    if (d <= 0) return 0;
    if (hf || d % 2 == 0) return d / 2;
    int k = d / 2; /* d/2 = k + 0.5: Python's round() goes to the even neighbour */
    return k % 2 == 0 ? k : k + 1;
}

/* uniform [0,1) number `draw` for (seed, epoch, sample) */
static double aug_uniform(uint64_t seed, uint32_t epoch, uint64_t sample, uint32_t draw)
{
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    uint32_t ctr[4] = {draw, (uint32_t)sample, (uint32_t)(sample >> 32) ^ 0x61756775u /* "augu" */, epoch};
    uint32_t r[4];
    gc_philox4x32_10(key, ctr, r);
    return ((double)(r[0] >> 5) * 67108864.0 + (double)(r[1] >> 6)) * (1.0 / 9007199254740992.0);
}

/* torchvision RandomResizedCrop.get_params with our draws */
static void rrc_params(const gc_preprocess *p, int w, int h, uint64_t seed, uint32_t epoch, uint64_t sample, int *cx,
                       int *cy, int *cw, int *chh)
{
    double area = (double)w * h;
    double r0 = p->crop_ratio[0] > 0 ? p->crop_ratio[0] : 3.0 / 4.0;
    double r1 = p->crop_ratio[1] > 0 ? p->crop_ratio[1] : 4.0 / 3.0;
    double lr0 = log(r0), lr1 = log(r1);
    uint32_t d = 0;
    for (int attempt = 0; attempt < 10; attempt++) {
        double frac = p->crop_scale[0] + (p->crop_scale[1] - p->crop_scale[0]) * aug_uniform(seed, epoch, sample, d++);
        double target = area * frac;
        double ar = exp(lr0 + (lr1 - lr0) * aug_uniform(seed, epoch, sample, d++));
        int ww = (int)lround(sqrt(target * ar)), hh = (int)lround(sqrt(target / ar));
        double u = aug_uniform(seed, epoch, sample, d++), v = aug_uniform(seed, epoch, sample, d++);
        if (ww > 0 && ww <= w && hh > 0 && hh <= h) {
            *cy = (int)(u * (h - hh + 1));
            *cx = (int)(v * (w - ww + 1));
            *cw = ww;
            *chh = hh;
            return;
        }
    }
    double in_ratio = (double)w / h; /* fallback: central crop */
    int ww = w, hh = h;
    if (in_ratio < r0) hh = (int)lround(ww / r0);
    else if (in_ratio > r1) ww = (int)lround(hh * r1);
    if (hh > h) hh = h;
    if (ww > w) ww = w;
    *cw = ww;
    *chh = hh;
    *cy = (h - hh) / 2;
    *cx = (w - ww) / 2;
}

static inline uint8_t round8(double v) { return (uint8_t)(v <= 0 ? 0 : v >= 255 ? 255 : (int)(v + 0.5)); }

/* ColorJitter-like: brightness, contrast, saturation in that order, PIL ImageEnhance
 * blends (towards black, the mean gray, the grayscale image) */
static double jitter_factor(float s, uint64_t seed, uint32_t epoch, uint64_t sample, uint32_t draw)
{
    double lo = fmax(0.0, 1.0 - s);
    return lo + (1.0 + s - lo) * aug_uniform(seed, epoch, sample, draw);
}

static void color_jitter(gc_image *im, const gc_preprocess *p, uint64_t seed, uint32_t epoch, uint64_t sample)
{
    size_t np = (size_t)im->w * im->h;
    uint8_t *px = im->rgb;
    if (p->brightness > 0) {
        double f = jitter_factor(p->brightness, seed, epoch, sample, 101);
        for (size_t i = 0; i < 3 * np; i++) px[i] = round8(px[i] * f);
    }
    if (p->contrast > 0) {
        double f = jitter_factor(p->contrast, seed, epoch, sample, 102);
        double mean = 0;
        for (size_t i = 0; i < np; i++) mean += (px[3 * i] * 299 + px[3 * i + 1] * 587 + px[3 * i + 2] * 114) / 1000.0;
        mean = floor(mean / (double)np + 0.5);
        for (size_t i = 0; i < 3 * np; i++) px[i] = round8(mean + (px[i] - mean) * f);
    }
    if (p->saturation > 0) {
        double f = jitter_factor(p->saturation, seed, epoch, sample, 103);
        for (size_t i = 0; i < np; i++) {
            double g = (px[3 * i] * 299 + px[3 * i + 1] * 587 + px[3 * i + 2] * 114) / 1000.0;
            for (int c = 0; c < 3; c++) px[3 * i + c] = round8(g + (px[3 * i + c] - g) * f);
        }
    }
}

gc_status gc_image_transform(const gc_image *in, const gc_preprocess *p, uint64_t seed, uint32_t epoch,
                             uint64_t sample, gc_image *out)
{
    out->rgb = NULL;
    out->w = out->h = 0;
    if (!in || !in->rgb || in->w <= 0 || in->h <= 0) return gc_error_set(GC_ERR_INVALID, "preprocess: empty image");
    int S = p->size;
    if (S <= 0 || S > 65536) return gc_error_set(GC_ERR_INVALID, "preprocess: bad size %d", S);
    bool rrc = p->crop_scale[1] > 0;
    if (rrc) {
        if (!(p->crop_scale[0] >= 0 && p->crop_scale[0] <= p->crop_scale[1] && p->crop_scale[1] <= 1))
            return gc_error_set(GC_ERR_INVALID, "preprocess: bad crop scale range [%g, %g]", p->crop_scale[0],
                                p->crop_scale[1]);
        int cx, cy, cw, chh;
        rrc_params(p, in->w, in->h, seed, epoch, sample, &cx, &cy, &cw, &chh);
        gc_image crop;
        GC_TRY(gc_image_crop(in, cx, cy, cw, chh, &crop));
        gc_status s = gc_image_resize(&crop, S, S, p->resample, out);
        gc_image_free(&crop);
        GC_TRY(s);
    } else if (p->mode == GC_RESIZE_SQUARE) {
        GC_TRY(gc_image_resize(in, S, S, p->resample, out));
    } else {
        int nw, nh;
        if ((double)S * (in->w > in->h ? in->w : in->h) / (in->w > in->h ? in->h : in->w) > 1e9)
            return gc_error_set(GC_ERR_INVALID, "preprocess: %dx%d image is too elongated", in->w, in->h);
        gc_resize_shortest_size(in->w, in->h, S, &nw, &nh);
        GC_TRY(gc_image_resize_crop(in, nw, nh, p->resample, gc_center_crop_offset(nw, S, p->hf_crop),
                                    gc_center_crop_offset(nh, S, p->hf_crop), S, S, out));
    }
    if (p->hflip > 0 && aug_uniform(seed, epoch, sample, 100) < p->hflip) {
        for (int y = 0; y < S; y++) {
            uint8_t *r = out->rgb + (size_t)y * S * 3;
            for (int a = 0, b = S - 1; a < b; a++, b--)
                for (int c = 0; c < 3; c++) {
                    uint8_t t = r[3 * a + c];
                    r[3 * a + c] = r[3 * b + c];
                    r[3 * b + c] = t;
                }
        }
    }
    if (p->brightness > 0 || p->contrast > 0 || p->saturation > 0) color_jitter(out, p, seed, epoch, sample);
    return GC_OK;
}

void gc_image_normalize(const gc_image *im, const gc_preprocess *p, float *out)
{
    size_t np = (size_t)im->w * im->h;
    for (int c = 0; c < 3; c++) {
        /* f32 throughout, one rounding per operation: x / 255 (ToTensor), (x - m) / sd
         * (Normalize); a pure function of the byte, so tabulated */
        float lut[256], m = p->mean[c], sd = p->std[c];
        for (int v = 0; v < 256; v++) {
            float x = (float)v / 255.0f;
            lut[v] = (x - m) / sd;
        }
        float *o = out + c * np;
        const uint8_t *px = im->rgb + c;
        for (size_t i = 0; i < np; i++) o[i] = lut[px[3 * i]];
    }
}

gc_status gc_image_preprocess(const gc_image *in, const gc_preprocess *p, uint64_t seed, uint32_t epoch,
                              uint64_t sample, float *out)
{
    gc_image t;
    GC_TRY(gc_image_transform(in, p, seed, epoch, sample, &t));
    gc_image_normalize(&t, p, out);
    gc_image_free(&t);
    return GC_OK;
}
