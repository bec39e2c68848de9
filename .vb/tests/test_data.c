/* Training data: PNG/JPEG decoding and PIL-exact preprocessing against references made
 * with Pillow (tests/fixtures/images/gen_image_fixtures.py), CSV/TSV manifests, tar
 * shards, the threaded loader's determinism / skipping / resuming, and the synthetic
 * data set. */
#include "gc_test.h"

#include <fcntl.h>
#include <ftw.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../tools/gc_data.h"

#ifndef GC_FIXTURES_DIR
#error "GC_FIXTURES_DIR must be defined by the build"
#endif
#define IMG_DIR GC_FIXTURES_DIR "/images"

/* ---------------------------------------------------------------- helpers */

static uint8_t *read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)sz + 1);
    ck_assert_uint_eq(fread(b, 1, (size_t)sz, f), (size_t)sz);
    fclose(f);
    *n = (size_t)sz;
    return b;
}

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "cannot create %s", path);
    ck_assert_uint_eq(fwrite(data, 1, n, f), n);
    fclose(f);
}

static char *fixture(const char *name, char *buf, size_t n)
{
    snprintf(buf, n, "%s/%s", IMG_DIR, name);
    return buf;
}

static char tmp_root[256];

static const char *tmpdir_new(void)
{
    snprintf(tmp_root, sizeof tmp_root, "/tmp/gc_test_data_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmp_root));
    return tmp_root;
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static void tmpdir_free(const char *dir) { nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS); }

/* Runs f with stderr sent to a file; returns how many bytes were written there. */
static long stderr_bytes_during(void (*f)(void))
{
    fflush(stderr);
    char path[] = "/tmp/gc_test_stderr_XXXXXX";
    int fd = mkstemp(path);
    int saved = dup(2);
    dup2(fd, 2);
    f();
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    long n = lseek(fd, 0, SEEK_END);
    close(fd);
    unlink(path);
    return n;
}

typedef struct fixture_img {
    const char *file;
    int w, h;
} fixture_img;

static const fixture_img FIXTURES[] = {
    {"rgb_37x23.png", 37, 23},   {"rgba_50x80.png", 50, 80},    {"palette_41x29.png", 41, 29},
    {"gray16_23x37.png", 23, 37}, {"gray1_19x13.png", 19, 13},   {"graya_30x30.png", 30, 30},
    {"tall_23x90.png", 23, 90},   {"color_50x80.jpg", 50, 80},   {"gray_37x23.jpg", 37, 23},
    {"big_131x89.jpg", 131, 89},  {"cmyk_20x16.jpg", 20, 16},
};
#define N_FIXTURES ((int)(sizeof FIXTURES / sizeof FIXTURES[0]))

static void stem_of(const char *file, char *stem, size_t n)
{
    snprintf(stem, n, "%s/%s", IMG_DIR, file);
    *strrchr(stem, '.') = 0;
}

static int max_abs_diff_u8(const uint8_t *a, const uint8_t *b, size_t n)
{
    int m = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)a[i] - (int)b[i]);
        if (d > m) m = d;
    }
    return m;
}

/* ---------------------------------------------------------------- decoding */

START_TEST(test_decode_fixtures)
{
    for (int i = 0; i < N_FIXTURES; i++) {
        char path[512], stem[512], ref_path[600];
        fixture(FIXTURES[i].file, path, sizeof path);
        stem_of(FIXTURES[i].file, stem, sizeof stem);
        gc_image im;
        ck_assert_msg(gc_image_load(path, &im) == GC_OK, "%s: %s", FIXTURES[i].file, gc_error_message());
        ck_assert_int_eq(im.w, FIXTURES[i].w);
        ck_assert_int_eq(im.h, FIXTURES[i].h);
        size_t n;
        snprintf(ref_path, sizeof ref_path, "%s.rgb", stem);
        uint8_t *ref = read_file(ref_path, &n);
        ck_assert_uint_eq(n, (size_t)im.w * im.h * 3);
        int d = max_abs_diff_u8(ref, im.rgb, n);
        ck_assert_msg(d == 0, "%s: decoded pixels differ from PIL's convert(\"RGB\") by up to %d", FIXTURES[i].file, d);
        /* from memory too */
        size_t fn;
        uint8_t *bytes = read_file(path, &fn);
        gc_image im2;
        ck_assert_int_eq(gc_image_decode(bytes, fn, "mem", &im2), GC_OK);
        ck_assert_int_eq(memcmp(im.rgb, im2.rgb, n), 0);
        gc_image_free(&im2);
        free(bytes);
        free(ref);
        gc_image_free(&im);
    }
}
END_TEST

static void decode_bad_files(void)
{
    static const char *bad[] = {"truncated.jpg", "truncated.png", "corrupt.png", "not_an_image.png"};
    for (int i = 0; i < 4; i++) {
        char path[512];
        gc_image im = {1, 1, (uint8_t *)1};
        gc_error_clear();
        gc_status s = gc_image_load(fixture(bad[i], path, sizeof path), &im);
        ck_assert_msg(s == GC_ERR_FORMAT, "%s: status %s", bad[i], gc_status_name(s));
        ck_assert_ptr_null(im.rgb);
        ck_assert_msg(strstr(gc_error_message(), bad[i]) != NULL, "message does not name the file: %s",
                      gc_error_message());
    }
    /* every prefix of a JPEG and a PNG: an error or (never) a crash */
    const char *files[] = {"color_50x80.jpg", "palette_41x29.png"};
    for (int f = 0; f < 2; f++) {
        char path[512];
        size_t n;
        uint8_t *b = read_file(fixture(files[f], path, sizeof path), &n);
        for (size_t len = 0; len < n; len += 7) {
            gc_image im;
            gc_error_clear();
            gc_status s = gc_image_decode(b, len, files[f], &im);
            ck_assert_msg(s == GC_ERR_FORMAT, "%s cut at %zu bytes: status %s", files[f], len, gc_status_name(s));
            ck_assert_ptr_null(im.rgb);
        }
        /* flipped bytes after the header: an error or some pixels, never a crash */
        for (size_t pos = 20; pos < n; pos += 13) {
            uint8_t keep = b[pos];
            b[pos] ^= 0xA5;
            gc_image im;
            gc_error_clear();
            if (gc_image_decode(b, n, files[f], &im) == GC_OK) gc_image_free(&im);
            b[pos] = keep;
        }
        free(b);
    }
}

START_TEST(test_decode_errors)
{
    /* corrupt and truncated files fail with the file's name and print nothing */
    ck_assert_int_eq(stderr_bytes_during(decode_bad_files), 0);
    gc_image im;
    gc_error_clear();
    ck_assert_int_eq(gc_image_load("/nonexistent/x.png", &im), GC_ERR_IO);
    ck_assert_ptr_nonnull(strstr(gc_error_message(), "/nonexistent/x.png"));
    gc_error_clear();
    ck_assert_int_eq(gc_image_decode("", 0, "empty.jpg", &im), GC_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(gc_error_message(), "empty.jpg"));
    gc_error_clear();
}
END_TEST

START_TEST(test_png_roundtrip)
{
    gc_image im;
    ck_assert_int_eq(gc_image_new(13, 7, &im), GC_OK);
    for (int i = 0; i < 13 * 7 * 3; i++) im.rgb[i] = (uint8_t)(i * 37 + 11);
    uint8_t *png;
    size_t n;
    ck_assert_int_eq(gc_image_encode_png(&im, &png, &n), GC_OK);
    gc_image back;
    ck_assert_int_eq(gc_image_decode(png, n, "roundtrip", &back), GC_OK);
    ck_assert_int_eq(back.w, 13);
    ck_assert_int_eq(back.h, 7);
    ck_assert_int_eq(memcmp(back.rgb, im.rgb, 13 * 7 * 3), 0);
    uint8_t *png2;
    size_t n2;
    ck_assert_int_eq(gc_image_encode_png(&im, &png2, &n2), GC_OK);
    ck_assert(n2 == n && memcmp(png, png2, n) == 0); /* deterministic bytes */
    free(png);
    free(png2);
    gc_image_free(&back);
    gc_image_free(&im);
}
END_TEST

/* ---------------------------------------------------------------- preprocessing */

START_TEST(test_resize_geometry)
{
    int w, h;
    gc_resize_shortest_size(50, 80, 24, &w, &h); /* int(24 * 80 / 50) = 38 */
    ck_assert(w == 24 && h == 38);
    gc_resize_shortest_size(37, 23, 16, &w, &h); /* int(16 * 37 / 23) = int(25.7) */
    ck_assert(w == 25 && h == 16);
    gc_resize_shortest_size(300, 300, 224, &w, &h);
    ck_assert(w == 224 && h == 224);
    gc_resize_shortest_size(640, 480, 224, &w, &h); /* int(298.67) */
    ck_assert(w == 298 && h == 224);
    /* torchvision: int(round(d / 2.0)), Python rounds halves to even */
    static const int d_tv[][2] = {{0, 0}, {1, 0}, {2, 1}, {3, 2}, {5, 2}, {7, 4}, {9, 4}, {11, 6}, {74, 37}};
    for (int i = 0; i < 9; i++) ck_assert_int_eq(gc_center_crop_offset(224 + d_tv[i][0], 224, false), d_tv[i][1]);
    ck_assert_int_eq(gc_center_crop_offset(227, 224, true), 1); /* HF: floor */
    ck_assert_int_eq(gc_center_crop_offset(231, 224, true), 3);
}
END_TEST

static void check_u8_ref(const gc_image *src, const gc_preprocess *p, const char *ref_path, const char *what)
{
    gc_image out;
    ck_assert_msg(gc_image_transform(src, p, 0, 0, 0, &out) == GC_OK, "%s: %s", what, gc_error_message());
    ck_assert(out.w == p->size && out.h == p->size);
    size_t n;
    uint8_t *ref = read_file(ref_path, &n);
    ck_assert_uint_eq(n, (size_t)p->size * p->size * 3);
    int d = max_abs_diff_u8(ref, out.rgb, n);
    ck_assert_msg(d == 0, "%s: resized pixels differ from PIL by up to %d", what, d);
    free(ref);
    gc_image_free(&out);
}

START_TEST(test_preprocess_vs_pil)
{
    for (int i = 0; i < N_FIXTURES; i++) {
        char path[640], stem[512], ref[640], what[640];
        stem_of(FIXTURES[i].file, stem, sizeof stem);
        snprintf(path, sizeof path, "%s.rgb", stem); /* the references start from PIL's decode */
        size_t n;
        gc_image src = {FIXTURES[i].w, FIXTURES[i].h, read_file(path, &n)};
        for (int s = 16; s <= 24; s += 8) {
            gc_preprocess p = gc_preprocess_clip(s);
            snprintf(ref, sizeof ref, "%s.clip%d.u8", stem, s);
            snprintf(what, sizeof what, "%s clip S=%d", FIXTURES[i].file, s);
            check_u8_ref(&src, &p, ref, what);
            if (strncmp(FIXTURES[i].file, "big_", 4) == 0) {
                p.hf_crop = true;
                snprintf(ref, sizeof ref, "%s.clip%d.hf.u8", stem, s);
                snprintf(what, sizeof what, "%s clip S=%d HF crop", FIXTURES[i].file, s);
                check_u8_ref(&src, &p, ref, what);
            }
        }
        gc_preprocess p = gc_preprocess_dinov3(16);
        snprintf(ref, sizeof ref, "%s.dino16.u8", stem);
        snprintf(what, sizeof what, "%s dinov3 S=16", FIXTURES[i].file);
        check_u8_ref(&src, &p, ref, what);
        free(src.rgb);
    }
}
END_TEST

static void check_f32_ref(const char *file, const gc_preprocess *p, const char *suffix)
{
    char path[512], stem[512], ref_path[640];
    fixture(file, path, sizeof path);
    stem_of(file, stem, sizeof stem);
    snprintf(ref_path, sizeof ref_path, "%s.%s.f32", stem, suffix);
    gc_image im;
    ck_assert_int_eq(gc_image_load(path, &im), GC_OK);
    size_t S = (size_t)p->size, n;
    float *out = malloc(sizeof(float) * 3 * S * S);
    ck_assert_int_eq(gc_image_preprocess(&im, p, 0, 0, 0, out), GC_OK);
    float *ref = (float *)read_file(ref_path, &n);
    ck_assert_uint_eq(n, sizeof(float) * 3 * S * S);
    /* the same uint8 pixels and the same f32 operations: identical floats (one uint8
     * step would be 1/255/std ~ 0.015) */
    double worst = 0;
    for (size_t i = 0; i < 3 * S * S; i++) worst = fmax(worst, fabs((double)out[i] - ref[i]));
    ck_assert_msg(worst <= 1e-6, "%s %s: max |diff| %g", file, suffix, worst);
    free(ref);
    free(out);
    gc_image_free(&im);
}

START_TEST(test_normalize_vs_torchvision)
{
    for (int s = 16; s <= 24; s += 8) {
        gc_preprocess p = gc_preprocess_clip(s);
        char suffix[16];
        snprintf(suffix, sizeof suffix, "clip%d", s);
        check_f32_ref("rgb_37x23.png", &p, suffix);
        check_f32_ref("color_50x80.jpg", &p, suffix);
    }
    gc_preprocess d = gc_preprocess_dinov3(16);
    check_f32_ref("color_50x80.jpg", &d, "dino16");
}
END_TEST

START_TEST(test_resize_window_exact)
{
    /* a window of the resize equals the same crop of the full resize, in every pass order */
    static const int cases[][4] = {{40, 30, 17, 11}, {30, 90, 16, 48}, {90, 30, 45, 16}, {7, 9, 20, 23},
                                   {64, 64, 64, 31}, {100, 13, 9, 13}, {13, 100, 13, 9}};
    for (int c = 0; c < 7; c++) {
        gc_image in;
        ck_assert_int_eq(gc_image_new(cases[c][0], cases[c][1], &in), GC_OK);
        for (int i = 0; i < in.w * in.h * 3; i++) in.rgb[i] = (uint8_t)((i * 2654435761u) >> 24);
        for (int f = 0; f < 2; f++) {
            gc_resample filt = f ? GC_RESAMPLE_BILINEAR : GC_RESAMPLE_BICUBIC;
            int W = cases[c][2], H = cases[c][3];
            gc_image full, win, crop;
            ck_assert_int_eq(gc_image_resize(&in, W, H, filt, &full), GC_OK);
            int x = W / 3, y = H / 4, cw = W - x - W / 5, ch = H - y - 1;
            ck_assert_int_eq(gc_image_resize_crop(&in, W, H, filt, x, y, cw, ch, &win), GC_OK);
            ck_assert_int_eq(gc_image_crop(&full, x, y, cw, ch, &crop), GC_OK);
            ck_assert_msg(memcmp(win.rgb, crop.rgb, (size_t)cw * ch * 3) == 0, "case %d filter %d", c, f);
            gc_image_free(&full);
            gc_image_free(&win);
            gc_image_free(&crop);
        }
        gc_image_free(&in);
    }
    /* bad windows */
    gc_image in, out;
    ck_assert_int_eq(gc_image_new(8, 8, &in), GC_OK);
    memset(in.rgb, 9, 8 * 8 * 3);
    ck_assert_int_eq(gc_image_resize_crop(&in, 4, 4, GC_RESAMPLE_BICUBIC, 2, 2, 3, 3, &out), GC_ERR_INVALID);
    gc_error_clear();
    /* a constant image stays constant */
    ck_assert_int_eq(gc_image_resize(&in, 5, 3, GC_RESAMPLE_BICUBIC, &out), GC_OK);
    for (int i = 0; i < 5 * 3 * 3; i++) ck_assert_int_eq(out.rgb[i], 9);
    gc_image_free(&out);
    gc_image_free(&in);
}
END_TEST

START_TEST(test_augment_deterministic)
{
    char path[512];
    gc_image im;
    ck_assert_int_eq(gc_image_load(fixture("big_131x89.jpg", path, sizeof path), &im), GC_OK);
    gc_preprocess p = gc_preprocess_clip(24);
    p.crop_scale[0] = 0.3f;
    p.crop_scale[1] = 1.0f;
    p.hflip = 0.5f;
    p.brightness = p.contrast = p.saturation = 0.4f;
    gc_image a, b, c;
    ck_assert_int_eq(gc_image_transform(&im, &p, 5, 2, 17, &a), GC_OK);
    ck_assert_int_eq(gc_image_transform(&im, &p, 5, 2, 17, &b), GC_OK);
    ck_assert(a.w == 24 && a.h == 24);
    ck_assert_int_eq(memcmp(a.rgb, b.rgb, 24 * 24 * 3), 0);
    int differ = 0;
    for (int k = 0; k < 4; k++) { /* other epochs / samples / seeds draw other crops */
        ck_assert_int_eq(gc_image_transform(&im, &p, 5 + (k == 0), 2 + (k == 1), 17 + (k >= 2) * k, &c), GC_OK);
        differ += memcmp(a.rgb, c.rgb, 24 * 24 * 3) != 0;
        gc_image_free(&c);
    }
    ck_assert_int_eq(differ, 4);
    /* hflip = 1 mirrors exactly the same crop */
    gc_preprocess q = p;
    q.hflip = 0;
    q.brightness = q.contrast = q.saturation = 0;
    gc_image nf, fl;
    ck_assert_int_eq(gc_image_transform(&im, &q, 1, 0, 3, &nf), GC_OK);
    q.hflip = 1;
    ck_assert_int_eq(gc_image_transform(&im, &q, 1, 0, 3, &fl), GC_OK);
    for (int y = 0; y < 24; y++)
        for (int x = 0; x < 24; x++)
            for (int k = 0; k < 3; k++)
                ck_assert_int_eq(fl.rgb[(y * 24 + x) * 3 + k], nf.rgb[(y * 24 + 23 - x) * 3 + k]);
    gc_image_free(&nf);
    gc_image_free(&fl);
    gc_image_free(&a);
    gc_image_free(&b);
    gc_image_free(&im);
}
END_TEST

/* ---------------------------------------------------------------- CSV manifests */

START_TEST(test_csv_manifest)
{
    const char *dir = tmpdir_new();
    char path[512], img[512];
    snprintf(path, sizeof path, "%s/m.tsv", dir);
    snprintf(img, sizeof img, "%s/abs.png", dir);
    char text[2048];
    snprintf(text, sizeof text,
             "\xef\xbb\xbfid\tfilepath\ttitle\r\n"
             "1\ta.png\tplain caption\r\n"
             "\r\n"
             "2\t\"sub/b c.jpg\"\t\"with\ttab and \"\"quotes\"\"\"\n"
             "3\t%s\t\"two\nlines\"\n"
             "4\td.png\t\n"
             "5\te.png\t\"last, no newline\"",
             img);
    write_file(path, text, strlen(text));
    gc_dataset *ds = gc_dataset_open_csv(path, '\t', "filepath", "title");
    ck_assert_msg(ds != NULL, "%s", gc_error_message());
    ck_assert_int_eq(gc_dataset_size(ds), 5);
    ck_assert_str_eq(gc_dataset_caption(ds, 0), "plain caption");
    ck_assert_str_eq(gc_dataset_caption(ds, 1), "with\ttab and \"quotes\"");
    ck_assert_str_eq(gc_dataset_caption(ds, 2), "two\nlines");
    ck_assert_str_eq(gc_dataset_caption(ds, 3), "");
    ck_assert_str_eq(gc_dataset_caption(ds, 4), "last, no newline");
    char name[512], want[600];
    snprintf(want, sizeof want, "%s/a.png", dir); /* relative to the manifest's directory */
    ck_assert_str_eq(gc_dataset_image_name(ds, 0, name, sizeof name), want);
    snprintf(want, sizeof want, "%s/sub/b c.jpg", dir);
    ck_assert_str_eq(gc_dataset_image_name(ds, 1, name, sizeof name), want);
    ck_assert_str_eq(gc_dataset_image_name(ds, 2, name, sizeof name), img); /* absolute kept */
    /* a caption's source is its record's first line */
    snprintf(want, sizeof want, "%s:5", path);
    ck_assert_str_eq(gc_dataset_caption_source(ds, 2, name, sizeof name), want);
    snprintf(want, sizeof want, "%s:7", path);
    ck_assert_str_eq(gc_dataset_caption_source(ds, 3, name, sizeof name), want);
    ck_assert_int_eq(gc_dataset_check_utf8(ds), GC_OK);
    gc_dataset_free(ds);

    /* captions the tokenizer would refuse are found at opening, by line (it used to fail at the batch) */
    static const char *utf8[][2] = {
        {"caf\xc3\xa9 \xe2\x98\x83 \xf0\x9d\x84\x9e", NULL}, /* 2, 3 and 4 bytes */
        {"a \xc3", "byte 2 is 0xC3"},                          /* truncated */
        {"\xc0\xaf", "byte 0 is 0xC0"},                        /* overlong */
        {"x\xed\xa0\x80", "byte 1 is 0xED"},                  /* a surrogate */
        {"\xf4\x90\x80\x80", "byte 0 is 0xF4"},              /* above U+10FFFF */
        {"\xe9t\xe9", "byte 0 is 0xE9"},                       /* Latin-1 */
    };
    for (size_t i = 0; i < sizeof utf8 / sizeof *utf8; i++) {
        snprintf(text, sizeof text, "filepath\ttitle\nx.png\tfine\n\ny.png\t%s\n", utf8[i][0]);
        write_file(path, text, strlen(text));
        ds = gc_dataset_open_csv(path, '\t', "filepath", "title");
        ck_assert_msg(ds != NULL, "%s", gc_error_message());
        gc_error_clear();
        gc_status st = gc_dataset_check_utf8(ds);
        if (!utf8[i][1]) ck_assert_msg(st == GC_OK, "%s", gc_error_message());
        else {
            snprintf(want, sizeof want, "%s:4: the caption is not valid UTF-8: %s", path, utf8[i][1]);
            ck_assert_int_eq(st, GC_ERR_FORMAT);
            ck_assert_msg(strcmp(gc_error_message(), want) == 0, "case %zu: %s", i, gc_error_message());
        }
        gc_error_clear();
        gc_dataset_free(ds);
    }

    /* a CSV with commas inside quotes, columns in another order */
    snprintf(text, sizeof text, "title,filepath\n\"a, b\",x.png\n\"c\"\"d\",y.png\n");
    write_file(path, text, strlen(text));
    ds = gc_dataset_open_csv(path, ',', "filepath", "title");
    ck_assert_msg(ds != NULL, "%s", gc_error_message());
    ck_assert_str_eq(gc_dataset_caption(ds, 0), "a, b");
    ck_assert_str_eq(gc_dataset_caption(ds, 1), "c\"d");
    gc_dataset_free(ds);

    /* errors name the file and the line */
    static const char *bad[][2] = {
        {"filepath\tcaption\nx.png\ty\n", "no column \"title\""},
        {"filepath\ttitle\nx.png\ty\nz.png\tw\textra\n", ":3: 3 fields"},
        {"filepath\ttitle\nx.png\ty\nz.png\t\"open\nquote\n", ":3: unterminated"},
        {"filepath\ttitle\n\ty\n", ":2: empty \"filepath\""},
        {"filepath\ttitle\n", "no samples"},
        {"", "empty manifest"},
        {"filepath\ttitle\nx.png\t\"q\"x\n", ":2: unexpected character"},
        /* which of two columns of one name is meant cannot be told */
        {"filepath\ttitle\tfilepath\nx.png\ty\tz.png\n", ":1: column \"filepath\" appears twice in the header (fields 1 and 3)"},
        {"title\tfilepath\ttitle\ny\tx.png\tw\n", ":1: column \"title\" appears twice in the header (fields 1 and 3)"},
    };
    for (int i = 0; i < 9; i++) {
        write_file(path, bad[i][0], strlen(bad[i][0]));
        gc_error_clear();
        ck_assert_ptr_null(gc_dataset_open_csv(path, '\t', "filepath", "title"));
        ck_assert_int_eq(gc_error_code(), GC_ERR_FORMAT);
        ck_assert_msg(strstr(gc_error_message(), bad[i][1]) && strstr(gc_error_message(), path),
                      "case %d: \"%s\"", i, gc_error_message());
    }
    /* a NUL byte would end its caption there, silently */
    static const char with_nul[] = "filepath\ttitle\nx.png\ta red\0 circle\n";
    write_file(path, with_nul, sizeof with_nul - 1);
    gc_error_clear();
    ck_assert_ptr_null(gc_dataset_open_csv(path, '\t', "filepath", "title"));
    ck_assert_msg(strstr(gc_error_message(), ":2: a NUL byte"), "%s", gc_error_message());
    /* one column for both the image and the caption is a configuration mistake */
    static const char good[] = "filepath\ttitle\nx.png\ty\n";
    write_file(path, good, sizeof good - 1);
    gc_error_clear();
    ck_assert_ptr_null(gc_dataset_open_csv(path, '\t', "filepath", "filepath"));
    ck_assert_int_eq(gc_error_code(), GC_ERR_INVALID);
    ck_assert_msg(strstr(gc_error_message(), "both \"filepath\""), "%s", gc_error_message());
    gc_error_clear();
    ck_assert_ptr_null(gc_dataset_open_csv("/nonexistent/m.csv", ',', "filepath", "title"));
    ck_assert_int_eq(gc_error_code(), GC_ERR_IO);
    gc_error_clear();
    tmpdir_free(dir);
}
END_TEST

/* ---------------------------------------------------------------- tar shards */

START_TEST(test_brace_expand)
{
    static const struct {
        const char *pat;
        const char *want;
    } cases[] = {
        {"s/{000..003}.tar", "s/000.tar s/001.tar s/002.tar s/003.tar"},
        {"{a,b}{1,2}", "a1 a2 b1 b2"},
        {"x{1..10..3}", "x1 x4 x7 x10"},
        {"{9..7}", "9 8 7"},
        {"{8..11}", "8 9 10 11"},
        {"{08..11}", "08 09 10 11"},
        {"{a,b{1,2}}c", "ac b1c b2c"},
        {"plain.tar", "plain.tar"},
        {"{x}.tar", "{x}.tar"},
        {"{x}{1..2}", "{x}1 {x}2"},
        /* at the limits of int64: no step past them (it used to overflow and never end) */
        {"{9223372036854775806..9223372036854775807}", "9223372036854775806 9223372036854775807"},
        {"{-9223372036854775807..-9223372036854775808}", "-9223372036854775807 -9223372036854775808"},
        {"{-9223372036854775808..9223372036854775807..9223372036854775807}",
         "-9223372036854775808 -1 9223372036854775806"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char **out;
        int n;
        ck_assert_int_eq(gc_brace_expand(cases[i].pat, &out, &n), GC_OK);
        char got[256] = "";
        for (int k = 0; k < n; k++) {
            if (k) strcat(got, " ");
            strcat(got, out[k]);
        }
        ck_assert_msg(strcmp(got, cases[i].want) == 0, "%s -> \"%s\", want \"%s\"", cases[i].pat, got, cases[i].want);
        gc_strings_free(out, n);
    }
    /* a range whose length overflows int64 is too large, not a wrapped count */
    char **out;
    int n;
    ck_assert_int_eq(gc_brace_expand("{-9223372036854775807..9223372036854775807}", &out, &n), GC_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(gc_error_message(), "too large"));
    gc_error_clear();
}
END_TEST

/* a ustar writer: enough for the test shards (GNU 'L' long names too) */
typedef struct tarw {
    FILE *f;
} tarw;

static void tar_header(FILE *f, const char *name, size_t size, char type)
{
    uint8_t h[512] = {0};
    snprintf((char *)h, 100, "%s", name);
    snprintf((char *)h + 100, 8, "%07o", 0644);
    snprintf((char *)h + 108, 8, "%07o", 0);
    snprintf((char *)h + 116, 8, "%07o", 0);
    snprintf((char *)h + 124, 12, "%011zo", size);
    snprintf((char *)h + 136, 12, "%011o", 0);
    memset(h + 148, ' ', 8);
    h[156] = (uint8_t)type;
    memcpy(h + 257, "ustar\0" "00", 8);
    unsigned sum = 0;
    for (int i = 0; i < 512; i++) sum += h[i];
    snprintf((char *)h + 148, 8, "%06o", sum);
    fwrite(h, 1, 512, f);
}

static void tar_data(FILE *f, const void *d, size_t n)
{
    static const uint8_t zero[512];
    fwrite(d, 1, n, f);
    if (n % 512) fwrite(zero, 1, 512 - n % 512, f);
}

static void tar_add(FILE *f, const char *name, const void *d, size_t n)
{
    if (strlen(name) >= 100) {
        tar_header(f, "././@LongLink", strlen(name) + 1, 'L');
        tar_data(f, name, strlen(name) + 1);
    }
    tar_header(f, name, n, '0');
    tar_data(f, d, n);
}

static void tar_add_type(FILE *f, const char *name, const void *d, size_t n, char type)
{
    tar_header(f, name, n, type);
    tar_data(f, d, n);
}

static void tar_end(FILE *f)
{
    static const uint8_t zero[1024];
    fwrite(zero, 1, 1024, f);
}

START_TEST(test_tar_shards)
{
    const char *dir = tmpdir_new();
    char path[512], p0[512], p1[512];
    size_t njpg, npng;
    uint8_t *jpg = read_file(fixture("color_50x80.jpg", path, sizeof path), &njpg);
    uint8_t *png = read_file(fixture("palette_41x29.png", path, sizeof path), &npng);
    snprintf(p0, sizeof p0, "%s/shard-0.tar", dir);
    snprintf(p1, sizeof p1, "%s/shard-1.tar", dir);
    FILE *f = fopen(p0, "wb");
    tar_header(f, "subdir/", 0, '5');
    tar_add(f, "subdir/000.jpg", jpg, njpg);
    tar_add(f, "subdir/000.txt", "a color photo", 13);
    tar_add(f, "001.txt", "a palette image", 15);
    tar_add(f, "001.PNG", png, npng);
    tar_add(f, "002.txt", "caption without an image", 24);
    tar_add(f, "003.jpg", jpg, njpg); /* image without a caption */
    tar_add(f, "__meta__.json", "{}", 2);
    tar_end(f);
    fclose(f);
    f = fopen(p1, "wb");
    char longname[200];
    snprintf(longname, sizeof longname, "%s/sample_0004", "a/very/long/directory/name/that/goes/on/and/on/"
                                                        "and/on/well/past/one/hundred/characters/of/path");
    char ln_img[220], ln_txt[220];
    snprintf(ln_img, sizeof ln_img, "%s.jpg", longname);
    snprintf(ln_txt, sizeof ln_txt, "%s.txt", longname);
    ck_assert_uint_gt(strlen(ln_img), 100);
    tar_add(f, ln_img, jpg, njpg);
    tar_add(f, ln_txt, "long name", 9);
    tar_add(f, "005.seg.png", png, npng); /* key "005", suffix "seg.png": not an image key */
    tar_add(f, "005.txt", "x", 1);
    tar_end(f);
    fclose(f);

    char spec[600];
    snprintf(spec, sizeof spec, "%s/shard-{0..1}.tar", dir);
    gc_dataset *ds = gc_dataset_open_tar(spec);
    ck_assert_msg(ds != NULL, "%s", gc_error_message());
    ck_assert_int_eq(gc_dataset_size(ds), 3);
    ck_assert_int_eq(gc_dataset_incomplete(ds), 3); /* 002, 003, 005 */
    ck_assert_str_eq(gc_dataset_caption(ds, 0), "a color photo");
    ck_assert_str_eq(gc_dataset_caption(ds, 1), "a palette image");
    ck_assert_str_eq(gc_dataset_caption(ds, 2), "long name");
    char name[512], want[600];
    snprintf(want, sizeof want, "%s:subdir/000.jpg", p0);
    ck_assert_str_eq(gc_dataset_image_name(ds, 0, name, sizeof name), want);
    gc_image a, b;
    ck_assert_int_eq(gc_dataset_load_image(ds, 0, &a), GC_OK);
    ck_assert_int_eq(gc_image_decode(jpg, njpg, "ref", &b), GC_OK);
    ck_assert(a.w == 50 && a.h == 80 && memcmp(a.rgb, b.rgb, 50 * 80 * 3) == 0);
    gc_image_free(&a);
    gc_image_free(&b);
    ck_assert_int_eq(gc_dataset_load_image(ds, 1, &a), GC_OK);
    ck_assert(a.w == 41 && a.h == 29);
    gc_image_free(&a);
    ck_assert_int_eq(gc_dataset_load_image(ds, 2, &a), GC_OK);
    gc_image_free(&a);
    gc_dataset_free(ds);

    /* a shard made by the system tar, if there is one */
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "cd %s && mkdir -p t && cp %s/rgb_37x23.png t/k1.png && printf 'from tar' > t/k1.txt && "
             "tar cf sys.tar t/k1.png t/k1.txt 2>/dev/null",
             dir, IMG_DIR);
    if (system(cmd) == 0) {
        snprintf(path, sizeof path, "%s/sys.tar", dir);
        const char *one[1] = {path};
        ds = gc_dataset_open_tar_list(one, 1);
        ck_assert_msg(ds != NULL, "%s", gc_error_message());
        ck_assert_int_eq(gc_dataset_size(ds), 1);
        ck_assert_str_eq(gc_dataset_caption(ds, 0), "from tar");
        ck_assert_int_eq(gc_dataset_load_image(ds, 0, &a), GC_OK);
        ck_assert(a.w == 37 && a.h == 23);
        gc_image_free(&a);
        gc_dataset_free(ds);
    }

    /* truncated shard: the error names the shard and the member */
    size_t n;
    uint8_t *t0 = read_file(p0, &n);
    snprintf(path, sizeof path, "%s/cut.tar", dir);
    write_file(path, t0, 512 + 512 + 512 + 100); /* inside subdir/000.jpg's data */
    const char *cut[1] = {path};
    gc_error_clear();
    ck_assert_ptr_null(gc_dataset_open_tar_list(cut, 1));
    ck_assert_int_eq(gc_error_code(), GC_ERR_FORMAT);
    ck_assert_msg(strstr(gc_error_message(), "cut.tar") && strstr(gc_error_message(), "subdir/000.jpg"), "%s",
                  gc_error_message());
    /* bad checksum */
    t0[512 + 10] ^= 1;
    write_file(path, t0, n);
    gc_error_clear();
    ck_assert_ptr_null(gc_dataset_open_tar_list(cut, 1));
    ck_assert_msg(strstr(gc_error_message(), "checksum") && strstr(gc_error_message(), "offset 512"), "%s",
                  gc_error_message());
    gc_error_clear();
    snprintf(spec, sizeof spec, "%s/missing-{0..1}.tar", dir);
    ck_assert_ptr_null(gc_dataset_open_tar(spec));
    ck_assert_int_eq(gc_error_code(), GC_ERR_IO);
    ck_assert_ptr_nonnull(strstr(gc_error_message(), "missing-0.tar"));
    gc_error_clear();
    free(t0);
    free(jpg);
    free(png);
    tmpdir_free(dir);
}
END_TEST

/* pax headers from the file are not trusted: each record must fit its own length and the
 * data, and a size must be a byte count within the shard */
START_TEST(test_tar_pax)
{
    const char *dir = tmpdir_new();
    char path[512];
    size_t npng;
    uint8_t *png = read_file(fixture("palette_41x29.png", path, sizeof path), &npng);
    snprintf(path, sizeof path, "%s/pax.tar", dir);
    const char *one[1] = {path};

    /* good records name the next member and its size (Python's tarfile writes these) */
    static const char good[] = "19 path=dir/k1.png\n" "23 comment=a=b, see \xc3\xa9\n";
    FILE *f = fopen(path, "wb");
    tar_add_type(f, "PaxHeaders/x", good, strlen(good), 'x');
    tar_add(f, "short-name", png, npng);
    tar_add(f, "dir/k1.txt", "caf\xc3\xa9", 5);
    tar_end(f);
    fclose(f);
    gc_dataset *ds = gc_dataset_open_tar_list(one, 1);
    ck_assert_msg(ds != NULL, "%s", gc_error_message());
    ck_assert_int_eq(gc_dataset_size(ds), 1);
    char name[600], want[600];
    snprintf(want, sizeof want, "%s:dir/k1.png", path);
    ck_assert_str_eq(gc_dataset_image_name(ds, 0, name, sizeof name), want);
    snprintf(want, sizeof want, "%s:dir/k1.txt", path);
    ck_assert_str_eq(gc_dataset_caption_source(ds, 0, name, sizeof name), want);
    ck_assert_int_eq(gc_dataset_check_utf8(ds), GC_OK);
    gc_image im;
    ck_assert_int_eq(gc_dataset_load_image(ds, 0, &im), GC_OK);
    ck_assert(im.w == 41 && im.h == 29);
    gc_image_free(&im);
    gc_dataset_free(ds);

    char rec[160], big[60];
    memset(big, 'x', 50);
    memcpy(big, "2 ", 2);
    big[50] = 0;
    static const char *bad[][2] = {
        {NULL, "malformed pax record at byte 0 of the pax header at offset 0"}, /* "2 xxx...": shorter than itself */
        {"30 path=a.png\n", "malformed pax record at byte 0"},          /* longer than the data */
        {"11 path=ab\n" "9 path=ab", "malformed pax record at byte 11"}, /* the second lacks its newline */
        {"9 path=a\n" "5 =x\n", "without a key=value at byte 9"},
        {"6 abc\n", "without a key=value"},
        {"x5 a=\n", "malformed pax record at byte 0"},
        {"99999999999999999999999 a=b\n", "malformed pax record"},    /* a length that overflows */
        {"11 size=-5\n", "size '-5' is not a byte count"},
        {"11 size=1x\n", "size '1x' is not a byte count"},
        {"8 size=\n", "size '' is not a byte count"},
        {"29 size=99999999999999999999\n", "is not a byte count"},    /* above int64 */
        /* fits int64, but data + size would overflow (it used to give a negative offset) */
        {"28 size=9223372036854775000\n", "member k.png is truncated (9223372036854775000 bytes at offset 1536"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        const char *r = bad[i][0] ? bad[i][0] : big;
        snprintf(rec, sizeof rec, "%s", r);
        f = fopen(path, "wb");
        tar_add_type(f, "PaxHeaders/x", rec, strlen(rec), 'x');
        tar_add(f, "k.png", png, npng);
        tar_add(f, "k.txt", "a caption", 9);
        tar_end(f);
        fclose(f);
        gc_error_clear();
        ck_assert_msg(gc_dataset_open_tar_list(one, 1) == NULL, "case %zu: opened", i);
        ck_assert_int_eq(gc_error_code(), GC_ERR_FORMAT);
        ck_assert_msg(strstr(gc_error_message(), bad[i][1]) && strstr(gc_error_message(), path), "case %zu: %s", i,
                      gc_error_message());
    }

    /* a GNU base-256 size too large for int64 is refused, not shifted into a wrong number */
    f = fopen(path, "wb");
    tar_header(f, "k.png", 0, '0');
    tar_end(f);
    fclose(f);
    size_t n;
    uint8_t *t = read_file(path, &n);
    memset(t + 124, 0xff, 12);
    t[124] = 0x80 | 0x3f;
    unsigned sum = 0;
    memset(t + 148, ' ', 8);
    for (int i = 0; i < 512; i++) sum += t[i];
    snprintf((char *)t + 148, 8, "%06o", sum);
    write_file(path, t, n);
    gc_error_clear();
    ck_assert_ptr_null(gc_dataset_open_tar_list(one, 1));
    ck_assert_msg(strstr(gc_error_message(), "member k.png is truncated (-1 bytes"), "%s", gc_error_message());
    gc_error_clear();
    free(t);

    /* a caption that is not UTF-8 is named by its member */
    f = fopen(path, "wb");
    tar_add(f, "k.png", png, npng);
    tar_add(f, "k.txt", "a \xff", 3);
    tar_end(f);
    fclose(f);
    ds = gc_dataset_open_tar_list(one, 1);
    ck_assert_msg(ds != NULL, "%s", gc_error_message());
    ck_assert_int_eq(gc_dataset_check_utf8(ds), GC_ERR_FORMAT);
    snprintf(want, sizeof want, "%s:k.txt: the caption is not valid UTF-8: byte 2 is 0xFF", path);
    ck_assert_str_eq(gc_error_message(), want);
    gc_error_clear();
    gc_dataset_free(ds);
    free(png);
    tmpdir_free(dir);
}
END_TEST

/* ---------------------------------------------------------------- loader */

/* A manifest of n synthetic images; rows listed in `bad` point at a corrupt or missing
 * file instead. */
static gc_dataset *loader_dataset(const char *dir, int n, const int *bad, int n_bad)
{
    char sub[512];
    snprintf(sub, sizeof sub, "%s/synth", dir);
    ck_assert_int_eq(gc_synth_make(sub, n, 32, 11), GC_OK);
    char corrupt[512], path[512];
    snprintf(corrupt, sizeof corrupt, "%s/corrupt.png", dir);
    write_file(corrupt, "\x89PNG\r\n\x1a\n garbage", 16);
    char *text = malloc(200 * (size_t)n + 100);
    size_t used = (size_t)sprintf(text, "filepath\ttitle\n");
    for (int i = 0; i < n; i++) {
        int is_bad = 0;
        for (int k = 0; k < n_bad; k++) is_bad |= bad[k] == i;
        char caption[200];
        ck_assert_int_eq(gc_synth_sample(i, 32, 11, caption, sizeof caption, NULL), GC_OK);
        if (!is_bad) used += (size_t)sprintf(text + used, "synth/images/%06d.png\t%s\n", i, caption);
        else if (i % 2) used += (size_t)sprintf(text + used, "corrupt.png\tbad %d\n", i);
        else used += (size_t)sprintf(text + used, "missing_%d.png\tmissing %d\n", i, i);
    }
    snprintf(path, sizeof path, "%s/manifest.tsv", dir);
    write_file(path, text, used);
    free(text);
    gc_dataset *ds = gc_dataset_open_csv(path, '\t', "filepath", "title");
    ck_assert_msg(ds != NULL, "%s", gc_error_message());
    return ds;
}

typedef struct run {
    int n;                /* batches */
    int64_t idx[64][16];
    int rows[64];
    gc_loader_pos pos[64], next[64];
    uint64_t pix_hash[64];
    int64_t skipped[64];
} run;

static uint64_t fnv(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

static void loader_run(const gc_dataset *ds, gc_loader_opts o, int max_batches, run *r, gc_loader_report *rep)
{
    memset(r, 0, sizeof *r);
    gc_loader *l = gc_loader_new(ds, &o);
    ck_assert_msg(l != NULL, "%s", gc_error_message());
    for (int b = 0; b < max_batches; b++) {
        const gc_batch *bt;
        ck_assert_msg(gc_loader_next(l, &bt) == GC_OK, "%s", gc_error_message());
        if (!bt) break;
        ck_assert_int_le(bt->n, 16);
        r->rows[b] = bt->n;
        memcpy(r->idx[b], bt->indices, sizeof(int64_t) * (size_t)bt->n);
        r->pos[b] = bt->pos;
        r->next[b] = bt->next;
        r->skipped[b] = bt->skipped;
        r->pix_hash[b] = fnv(bt->pixels, sizeof(float) * 3 * (size_t)bt->size * bt->size * (size_t)bt->n);
        /* the tensor the trainers upload from is the same memory */
        ck_assert(bt->pixels_tensor && gc_tensor_data(bt->pixels_tensor) == bt->pixels);
        ck_assert(bt->pixels_tensor->shape[0] == o.batch_size && bt->pixels_tensor->shape[3] == bt->size);
        ck_assert(gc_tensor_is_pinned(bt->pixels_tensor) == (o.pin_memory && gc_cuda_available()));
        for (int i = 0; i < bt->n; i++) ck_assert_str_eq(bt->captions[i], gc_dataset_caption(ds, bt->indices[i]));
        r->n = b + 1;
    }
    if (rep) gc_loader_report_get(l, rep);
    gc_loader_free(l);
}

static void assert_runs_equal(const run *a, const run *b, int from_a, int n)
{
    for (int k = 0; k < n; k++) {
        int i = from_a + k;
        ck_assert_int_eq(a->rows[i], b->rows[k]);
        for (int j = 0; j < a->rows[i]; j++) ck_assert_int_eq(a->idx[i][j], b->idx[k][j]);
        ck_assert_msg(a->pix_hash[i] == b->pix_hash[k], "batch %d pixels differ", i);
        ck_assert(a->pos[i].epoch == b->pos[k].epoch && a->pos[i].batch == b->pos[k].batch &&
                  a->pos[i].cursor == b->pos[k].cursor);
        ck_assert_int_eq(a->skipped[i], b->skipped[k]);
    }
}

START_TEST(test_loader_deterministic)
{
    const char *dir = tmpdir_new();
    gc_dataset *ds = loader_dataset(dir, 40, NULL, 0);
    gc_loader_opts o = gc_loader_opts_default(8, 16);
    o.seed = 3;
    o.workers = 1;
    static run r1, r4, r3;
    loader_run(ds, o, 12, &r1, NULL); /* 5 batches per epoch: crosses two epoch boundaries */
    o.workers = 4;
    o.prefetch = 3;
    loader_run(ds, o, 12, &r4, NULL);
    ck_assert_int_eq(r1.n, 12);
    assert_runs_equal(&r1, &r4, 0, 12);
    /* pinned buffers (a no-op without a GPU): the same batches */
    static run rp;
    o.pin_memory = true;
    loader_run(ds, o, 12, &rp, NULL);
    o.pin_memory = false;
    assert_runs_equal(&r1, &rp, 0, 12);
    /* each epoch is a permutation, and epochs differ */
    for (int e = 0; e < 2; e++) {
        int seen[40] = {0};
        for (int b = 0; b < 5; b++) {
            ck_assert_int_eq(r1.pos[e * 5 + b].epoch, e);
            ck_assert_int_eq(r1.pos[e * 5 + b].batch, b);
            for (int j = 0; j < 8; j++) seen[r1.idx[e * 5 + b][j]]++;
        }
        for (int i = 0; i < 40; i++) ck_assert_int_eq(seen[i], 1);
    }
    ck_assert(memcmp(r1.idx[0], r1.idx[5], sizeof r1.idx[0]) != 0);
    /* another seed, another order */
    o.seed = 4;
    loader_run(ds, o, 2, &r3, NULL);
    ck_assert(memcmp(r1.idx[0], r3.idx[0], sizeof r1.idx[0]) != 0);
    /* the rows are the preprocessed samples */
    o.seed = 3;
    gc_loader *l = gc_loader_new(ds, &o);
    const gc_batch *bt;
    ck_assert_int_eq(gc_loader_next(l, &bt), GC_OK);
    float *want = malloc(sizeof(float) * 3 * 16 * 16);
    for (int i = 0; i < bt->n; i++) {
        gc_image im;
        ck_assert_int_eq(gc_dataset_load_image(ds, bt->indices[i], &im), GC_OK);
        ck_assert_int_eq(gc_image_preprocess(&im, &o.pre, 3, 0, (uint64_t)bt->indices[i], want), GC_OK);
        ck_assert_int_eq(memcmp(want, bt->pixels + (size_t)i * 3 * 16 * 16, sizeof(float) * 3 * 16 * 16), 0);
        gc_image_free(&im);
    }
    free(want);
    gc_loader_free(l);
    gc_dataset_free(ds);
    tmpdir_free(dir);
}
END_TEST

START_TEST(test_loader_skips_bad_samples)
{
    const char *dir = tmpdir_new();
    static const int bad[] = {3, 4, 17, 18, 19, 30};
    gc_dataset *ds = loader_dataset(dir, 36, bad, 6);
    gc_loader_opts o = gc_loader_opts_default(8, 16);
    o.seed = 9;
    o.workers = 1;
    o.pre.hflip = 0.5f; /* augmentations keyed by sample: still deterministic */
    o.pre.crop_scale[0] = 0.5f;
    o.pre.crop_scale[1] = 1.0f;
    static run r1, r4;
    gc_loader_report rep1, rep4;
    loader_run(ds, o, 9, &r1, &rep1); /* 30 good of 36: 3 full batches per epoch */
    o.workers = 4;
    loader_run(ds, o, 9, &r4, &rep4);
    ck_assert_int_eq(r1.n, 9);
    assert_runs_equal(&r1, &r4, 0, 9);
    int64_t skipped = 0;
    for (int b = 0; b < 9; b++) {
        ck_assert_int_eq(r1.rows[b], 8); /* full batches */
        for (int j = 0; j < 8; j++)
            for (int k = 0; k < 6; k++) ck_assert_int_ne(r1.idx[b][j], bad[k]);
        skipped += r1.skipped[b];
        ck_assert_int_eq(r1.pos[b].epoch, b / 3);
        ck_assert_int_eq(r1.pos[b].batch, b % 3);
    }
    ck_assert_int_eq(rep1.skipped, skipped);
    ck_assert_int_eq(rep4.skipped, skipped);
    ck_assert_int_eq(rep1.batches, 9);
    ck_assert_int_eq(rep1.samples, 72);
    ck_assert_int_ge(skipped, 6); /* every bad sample of the first two epochs was met */
    ck_assert_int_gt(rep1.n_reasons, 0);
    for (int i = 0; i < rep1.n_reasons; i++) {
        ck_assert_str_eq(rep1.reasons[i], rep4.reasons[i]);
        ck_assert_msg(strstr(rep1.reasons[i], "corrupt.png") || strstr(rep1.reasons[i], "missing_"), "%s",
                      rep1.reasons[i]);
    }
    gc_dataset_free(ds);
    tmpdir_free(dir);
}
END_TEST

START_TEST(test_loader_resume)
{
    const char *dir = tmpdir_new();
    static const int bad[] = {1, 5, 6, 22};
    gc_dataset *ds = loader_dataset(dir, 29, bad, 4);
    gc_loader_opts o = gc_loader_opts_default(6, 16);
    o.seed = 21;
    o.workers = 3;
    static run full, tail;
    loader_run(ds, o, 14, &full, NULL); /* 25 good of 29: 4 batches per epoch, the rest dropped */
    ck_assert_int_eq(full.n, 14);
    int checked_cursor = 0;
    for (int k = 0; k < 13; k++) {
        gc_loader_opts r = o;
        r.start = full.next[k];
        r.workers = 1 + k % 4;
        loader_run(ds, r, 14 - (k + 1), &tail, NULL);
        ck_assert_int_eq(tail.n, 14 - (k + 1));
        assert_runs_equal(&full, &tail, k + 1, tail.n);
        checked_cursor |= full.next[k].cursor != full.next[k].batch * 6 && full.next[k].batch > 0;
    }
    ck_assert(checked_cursor); /* some resume point had skips before it */
    gc_dataset_free(ds);
    tmpdir_free(dir);
}
END_TEST

START_TEST(test_loader_epochs_and_last)
{
    const char *dir = tmpdir_new();
    gc_dataset *ds = loader_dataset(dir, 10, NULL, 0);
    gc_loader_opts o = gc_loader_opts_default(4, 16);
    o.epochs = 1;
    o.keep_last = true;
    o.shuffle = false;
    static run r;
    loader_run(ds, o, 10, &r, NULL);
    ck_assert_int_eq(r.n, 3);
    ck_assert(r.rows[0] == 4 && r.rows[1] == 4 && r.rows[2] == 2);
    for (int i = 0; i < 10; i++) ck_assert_int_eq(r.idx[i / 4][i % 4], i); /* no shuffle: in order */
    ck_assert_int_eq(r.next[2].epoch, 1);
    o.keep_last = false;
    o.epochs = 2;
    o.shuffle = true;
    loader_run(ds, o, 10, &r, NULL);
    ck_assert_int_eq(r.n, 4);
    ck_assert_int_eq(r.pos[2].epoch, 1);
    ck_assert_int_eq(r.pos[2].batch, 0);
    ck_assert_int_eq(r.pos[2].cursor, 0);
    /* start beyond the last epoch: nothing */
    o.start = (gc_loader_pos){2, 0, 0};
    loader_run(ds, o, 10, &r, NULL);
    ck_assert_int_eq(r.n, 0);
    /* errors */
    gc_loader_opts e = gc_loader_opts_default(11, 16);
    gc_error_clear();
    ck_assert_ptr_null(gc_loader_new(ds, &e));
    ck_assert_int_eq(gc_error_code(), GC_ERR_INVALID);
    gc_error_clear();
    e = gc_loader_opts_default(4, 16);
    e.start = (gc_loader_pos){0, 0, 11};
    ck_assert_ptr_null(gc_loader_new(ds, &e));
    gc_error_clear();
    e.start = (gc_loader_pos){INT64_MAX / 4, 0, 0}; /* epoch x size would overflow the stream position */
    ck_assert_ptr_null(gc_loader_new(ds, &e));
    ck_assert_msg(strstr(gc_error_message(), "bad start position"), "%s", gc_error_message());
    gc_error_clear();
    gc_dataset_free(ds);
    tmpdir_free(dir);
}
END_TEST

START_TEST(test_loader_all_bad_and_early_free)
{
    const char *dir = tmpdir_new();
    static const int bad[] = {0, 1, 2, 3, 4, 5, 6, 7, 8};
    gc_dataset *ds = loader_dataset(dir, 12, bad, 9);
    gc_loader_opts o = gc_loader_opts_default(4, 16);
    o.workers = 2;
    gc_loader *l = gc_loader_new(ds, &o);
    ck_assert_ptr_nonnull(l);
    const gc_batch *bt;
    gc_error_clear();
    ck_assert_int_eq(gc_loader_next(l, &bt), GC_ERR_FORMAT); /* 3 usable samples, batch 4: no batch ever */
    ck_assert_ptr_null(bt);
    ck_assert_msg(strstr(gc_error_message(), "no batch"), "%s", gc_error_message());
    gc_error_clear();
    ck_assert_int_eq(gc_loader_next(l, &bt), GC_ERR_FORMAT); /* sticky */
    gc_error_clear();
    gc_loader_free(l);
    gc_dataset_free(ds);

    /* freeing mid-epoch, right away or with batches waiting, joins cleanly */
    ds = loader_dataset(dir, 40, NULL, 0);
    o = gc_loader_opts_default(8, 16);
    o.workers = 4;
    l = gc_loader_new(ds, &o);
    gc_loader_free(l);
    l = gc_loader_new(ds, &o);
    ck_assert_int_eq(gc_loader_next(l, &bt), GC_OK);
    ck_assert_ptr_nonnull(bt);
    usleep(20000);
    gc_loader_free(l);
    gc_dataset_free(ds);
    tmpdir_free(dir);
}
END_TEST

START_TEST(test_permutation)
{
    int64_t a[100], b[100];
    gc_loader_permutation(1, 0, 100, a);
    gc_loader_permutation(1, 0, 100, b);
    ck_assert_int_eq(memcmp(a, b, sizeof a), 0);
    int seen[100] = {0}, fixed = 0;
    for (int i = 0; i < 100; i++) {
        seen[a[i]]++;
        fixed += a[i] == i;
    }
    for (int i = 0; i < 100; i++) ck_assert_int_eq(seen[i], 1);
    ck_assert_int_lt(fixed, 10);
    gc_loader_permutation(1, 1, 100, b);
    ck_assert(memcmp(a, b, sizeof a) != 0);
    gc_loader_permutation(2, 0, 100, b);
    ck_assert(memcmp(a, b, sizeof a) != 0);
}
END_TEST

/* ---------------------------------------------------------------- synthetic data */

static int count_colour(const gc_image *im, const uint8_t c[3])
{
    int n = 0;
    for (int i = 0; i < im->w * im->h; i++)
        n += abs(im->rgb[3 * i] - c[0]) + abs(im->rgb[3 * i + 1] - c[1]) + abs(im->rgb[3 * i + 2] - c[2]) < 30;
    return n;
}

START_TEST(test_synth)
{
    const char *dir = tmpdir_new();
    char a[512], b[512], p[600], q[640];
    snprintf(a, sizeof a, "%s/a", dir);
    snprintf(b, sizeof b, "%s/b/nested", dir);
    ck_assert_int_eq(gc_synth_make(a, 30, 32, 5), GC_OK);
    ck_assert_int_eq(gc_synth_make(b, 30, 32, 5), GC_OK);
    static const char *files[] = {"manifest.tsv", "images/000000.png", "images/000017.png", "images/000029.png"};
    for (int i = 0; i < 4; i++) {
        size_t na, nb;
        snprintf(p, sizeof p, "%s/%s", a, files[i]);
        snprintf(q, sizeof q, "%s/%s", b, files[i]);
        uint8_t *da = read_file(p, &na), *db = read_file(q, &nb);
        ck_assert_msg(na == nb && memcmp(da, db, na) == 0, "%s differs between two runs", files[i]);
        free(da);
        free(db);
    }
    /* the manifest reads back; captions name what is drawn */
    snprintf(p, sizeof p, "%s/manifest.tsv", a);
    gc_dataset *ds = gc_dataset_open_csv(p, '\t', "filepath", "title");
    ck_assert_msg(ds != NULL, "%s", gc_error_message());
    ck_assert_int_eq(gc_dataset_size(ds), 30);
    static const char *names[6] = {"red", "green", "blue", "yellow", "purple", "orange"};
    static const uint8_t cols[6][3] = {{220, 30, 30}, {30, 165, 50}, {35, 65, 225},
                                       {240, 215, 25}, {140, 45, 185}, {250, 135, 20}};
    int two = 0;
    for (int i = 0; i < 30; i++) {
        const char *cap = gc_dataset_caption(ds, i);
        char want[200];
        ck_assert_int_eq(gc_synth_sample(i, 32, 5, want, sizeof want, NULL), GC_OK);
        ck_assert_str_eq(cap, want);
        ck_assert(strncmp(cap, "a small ", 8) == 0 || strncmp(cap, "a large ", 8) == 0);
        two += strstr(cap, " above ") || strstr(cap, " left of ");
        gc_image im;
        ck_assert_int_eq(gc_dataset_load_image(ds, i, &im), GC_OK);
        ck_assert(im.w == 32 && im.h == 32);
        for (int c = 0; c < 6; c++) {
            char word[32];
            snprintf(word, sizeof word, " %s ", names[c]);
            int named = strstr(cap, word) != NULL, px = count_colour(&im, cols[c]);
            ck_assert_msg(named ? px >= 6 : px == 0, "sample %d \"%s\": %d %s pixels", i, cap, px, names[c]);
        }
        gc_image_free(&im);
    }
    ck_assert(two > 5 && two < 25);
    gc_dataset_free(ds);

    /* idempotent: a matching set is left alone, other arguments regenerate it */
    snprintf(p, sizeof p, "%s/images/000000.png", a);
    write_file(p, "x", 1);
    ck_assert_int_eq(gc_synth_make(a, 30, 32, 5), GC_OK);
    size_t n;
    uint8_t *d = read_file(p, &n);
    ck_assert_uint_eq(n, 1);
    free(d);
    ck_assert_int_eq(gc_synth_make(a, 31, 32, 5), GC_OK);
    d = read_file(p, &n);
    ck_assert_uint_gt(n, 8);
    free(d);
    /* a foreign manifest is not overwritten */
    snprintf(p, sizeof p, "%s/foreign", dir);
    mkdir(p, 0777);
    snprintf(q, sizeof q, "%s/manifest.tsv", p);
    write_file(q, "filepath\ttitle\n", 15);
    gc_error_clear();
    ck_assert_int_eq(gc_synth_make(p, 4, 32, 1), GC_ERR_STATE);
    gc_error_clear();
    /* train / val splits differ */
    snprintf(p, sizeof p, "%s/splits", dir);
    ck_assert_int_eq(gc_synth_make_splits(p, 8, 4, 32, 5), GC_OK);
    snprintf(q, sizeof q, "%s/splits/val/manifest.tsv", dir);
    ds = gc_dataset_open_csv(q, '\t', "filepath", "title");
    ck_assert_ptr_nonnull(ds);
    ck_assert_int_eq(gc_dataset_size(ds), 4);
    char c0[200];
    gc_synth_sample(0, 32, 5, c0, sizeof c0, NULL);
    int same = 0;
    for (int i = 0; i < 4; i++) {
        gc_synth_sample(i, 32, 5, c0, sizeof c0, NULL);
        same += strcmp(c0, gc_dataset_caption(ds, i)) == 0;
    }
    ck_assert_int_lt(same, 4);
    gc_dataset_free(ds);
    ck_assert_int_eq(gc_synth_make(a, 0, 32, 5), GC_ERR_INVALID);
    gc_error_clear();
    tmpdir_free(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("data");
    TCase *img = gc_test_tcase("image");
    tcase_add_test(img, test_decode_fixtures);
    tcase_add_test(img, test_decode_errors);
    tcase_add_test(img, test_png_roundtrip);
    tcase_add_test(img, test_resize_geometry);
    tcase_add_test(img, test_preprocess_vs_pil);
    tcase_add_test(img, test_normalize_vs_torchvision);
    tcase_add_test(img, test_resize_window_exact);
    tcase_add_test(img, test_augment_deterministic);
    suite_add_tcase(s, img);
    TCase *dsc = gc_test_tcase("dataset");
    tcase_add_test(dsc, test_csv_manifest);
    tcase_add_test(dsc, test_brace_expand);
    tcase_add_test(dsc, test_tar_shards);
    tcase_add_test(dsc, test_tar_pax);
    suite_add_tcase(s, dsc);
    TCase *ld = gc_test_tcase("loader");
    tcase_add_test(ld, test_permutation);
    tcase_add_test(ld, test_loader_deterministic);
    tcase_add_test(ld, test_loader_skips_bad_samples);
    tcase_add_test(ld, test_loader_resume);
    tcase_add_test(ld, test_loader_epochs_and_last);
    tcase_add_test(ld, test_loader_all_bad_and_early_free);
    suite_add_tcase(s, ld);
    TCase *syn = gc_test_tcase("synth");
    tcase_add_test(syn, test_synth);
    suite_add_tcase(s, syn);
    return gc_test_run(s);
}
