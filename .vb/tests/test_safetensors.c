/* safetensors reader/writer, model directories and the JSON config helpers.
 * Every file is built in a fresh temporary directory; malformed files are hand-made
 * bytes, one per validation rule, and each must fail with a one-line message that
 * names the file. */
#if !defined(_GNU_SOURCE) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../models/gc_json.h"
#include "../models/gc_safetensors.h"
#include "gc_test.h"

/* ---------------------------------------------------------------- fixture */

static char g_dir[256];

static void rm_tree(const char *path)
{
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char p[1024];
            snprintf(p, sizeof p, "%s/%s", path, e->d_name);
            rm_tree(p);
        }
        closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

static void setup(void)
{
    const char *t = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/gc_st_XXXXXX", t && *t ? t : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(g_dir));
    gc_error_clear();
}

static void teardown(void) { rm_tree(g_dir); }

/* g_dir/name in a rotating static buffer */
static const char *in_dir(const char *name)
{
    static char bufs[8][512];
    static int k;
    char *b = bufs[k++ % 8];
    snprintf(b, 512, "%s/%s", g_dir, name);
    return b;
}

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(data, 1, n, f), n);
    ck_assert_int_eq(fclose(f), 0);
}

static unsigned char *read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)len + 1);
    ck_assert_ptr_nonnull(b);
    ck_assert_uint_eq(fread(b, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    *n = (size_t)len;
    return b;
}

/* A safetensors file from a header string and `data_len` bytes of data (0, 1, 2, ...);
 * n_override >= 0 replaces the header length field. */
static const char *make_st(const char *name, const char *header, long long n_override, size_t data_len)
{
    size_t hl = strlen(header), total = 8 + hl + data_len;
    unsigned char *b = malloc(total);
    ck_assert_ptr_nonnull(b);
    uint64_t n = n_override >= 0 ? (uint64_t)n_override : hl;
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(n >> (8 * i));
    memcpy(b + 8, header, hl);
    for (size_t i = 0; i < data_len; i++) b[8 + hl + i] = (unsigned char)i;
    const char *p = in_dir(name);
    write_file(p, b, total);
    free(b);
    return p;
}

/* The pending error is `code`, one line, naming `path` and containing `frag`. */
static void assert_error(gc_status st, gc_status code, const char *path, const char *frag)
{
    const char *m = gc_error_message();
    ck_assert_msg(st == code, "expected %s, got %s: %s", gc_status_name(code), gc_status_name(st), m);
    ck_assert_msg(strstr(m, path), "message does not name %s: %s", path, m);
    ck_assert_msg(!frag || strstr(m, frag), "message lacks '%s': %s", frag, m);
    ck_assert_msg(!strchr(m, '\n'), "message is not one line: %s", m);
}

static bool file_exists(const char *p) { return access(p, F_OK) == 0; }

/* ---------------------------------------------------------------- round trips */

typedef struct sample {
    const char *name;
    gc_dtype dt;
    int ndim;
    int64_t shape[GC_MAX_DIMS];
} sample;

/* Every gc dtype, a scalar and zero-size tensors. */
static const sample SAMPLES[] = {
    {"f32", GC_F32, 2, {2, 3}},  {"bf16", GC_BF16, 1, {3}},    {"f16", GC_F16, 2, {2, 2}},
    {"i32", GC_I32, 1, {5}},     {"i64", GC_I64, 1, {2}},      {"f64", GC_F64, 3, {1, 2, 3}},
    {"scalar", GC_F32, 0, {0}},  {"empty", GC_F32, 2, {0, 4}}, {"empty_i64", GC_I64, 1, {0}},
    {"rank5", GC_BF16, 5, {1, 2, 1, 3, 1}},
};
#define N_SAMPLES ((int)(sizeof SAMPLES / sizeof SAMPLES[0]))

static gc_tensor *sample_tensor(const sample *s, int seed)
{
    unsigned char bytes[256];
    for (size_t i = 0; i < sizeof bytes; i++) bytes[i] = (unsigned char)(i * 37 + (size_t)seed * 11 + 1);
    gc_tensor *t = gc_tensor_from_data(s->dt, GC_CPU, s->ndim, s->shape, bytes);
    ck_assert_ptr_nonnull(t);
    return t;
}

START_TEST(test_roundtrip_every_dtype)
{
    const char *names[N_SAMPLES];
    gc_tensor *ts[N_SAMPLES];
    for (int i = 0; i < N_SAMPLES; i++) {
        names[i] = SAMPLES[i].name;
        ts[i] = sample_tensor(&SAMPLES[i], i);
    }
    const char *path = in_dir("all.safetensors");
    ck_assert_int_eq(gc_st_save(path, N_SAMPLES, names, ts, 2, (const char *const[]){"format", "pt", "note", "a \"q\"\n"}),
                     GC_OK);
    gc_st_file *f;
    ck_assert_msg(gc_st_open(path, &f) == GC_OK, "%s", gc_error_message());
    ck_assert_str_eq(gc_st_path(f), path);
    ck_assert_int_eq(gc_st_count(f), N_SAMPLES);
    ck_assert_str_eq(gc_st_metadata(f, "format"), "pt");
    ck_assert_str_eq(gc_st_metadata(f, "note"), "a \"q\"\n");
    ck_assert_ptr_null(gc_st_metadata(f, "absent"));
    ck_assert_ptr_null(gc_st_find(f, "absent"));
    ck_assert_ptr_null(gc_st_entry_at(f, N_SAMPLES));
    for (int i = 0; i < N_SAMPLES; i++) {
        const gc_st_entry *e = gc_st_find(f, names[i]);
        ck_assert_ptr_nonnull(e);
        ck_assert_int_eq(e->dtype, SAMPLES[i].dt);
        ck_assert_int_eq(e->ndim, SAMPLES[i].ndim);
        for (int d = 0; d < e->ndim; d++) ck_assert_int_eq(e->shape[d], SAMPLES[i].shape[d]);
        ck_assert_uint_eq(e->end - e->begin, gc_tensor_nbytes(ts[i]));
        gc_tensor *t = gc_st_tensor(f, names[i]);
        ck_assert_msg(t != NULL, "%s", gc_error_message());
        ck_assert_int_eq(t->dtype, SAMPLES[i].dt);
        ck_assert(gc_shape_eq(t, ts[i]));
        ck_assert_str_eq(gc_tensor_label(t), names[i]);
        if (gc_tensor_nbytes(t)) ck_assert_mem_eq(gc_tensor_data(t), gc_tensor_data(ts[i]), gc_tensor_nbytes(t));
        gc_tensor_release(t);
        /* and a copy in its own dtype */
        t = gc_st_load(f, names[i], SAMPLES[i].dt, GC_CPU);
        ck_assert_ptr_nonnull(t);
        if (gc_tensor_nbytes(t)) ck_assert_mem_eq(gc_tensor_data(t), gc_tensor_data(ts[i]), gc_tensor_nbytes(t));
        gc_tensor_release(t);
        gc_tensor_release(ts[i]);
    }
    gc_st_close(f);
    ck_assert_int_eq(gc_error_code(), GC_OK);
}
END_TEST

/* A tensor viewing the mapping keeps it alive after the file is closed. */
START_TEST(test_tensor_outlives_close)
{
    float v[4] = {1, 2, 3, 4};
    gc_tensor *x = gc_tensor_from_data(GC_F32, GC_CPU, 1, GC_SHAPE(4), v);
    const char *path = in_dir("x.safetensors");
    ck_assert_int_eq(gc_st_save(path, 1, (const char *const[]){"x"}, &x, 0, NULL), GC_OK);
    gc_tensor_release(x);
    gc_st_file *f;
    ck_assert_int_eq(gc_st_open(path, &f), GC_OK);
    gc_tensor *a = gc_st_tensor(f, "x"), *b = gc_st_tensor(f, "x");
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_eq(gc_tensor_data(a), gc_tensor_data(b)); /* both view the mapping: no copy */
    gc_st_close(f);
    gc_tensor_release(b);
    unlink(path); /* the mapping outlives the name too */
    ck_assert_mem_eq(gc_tensor_data(a), v, sizeof v);
    gc_tensor_release(a);
}
END_TEST

/* Non-contiguous views are written contiguous. */
START_TEST(test_save_strided_view)
{
    gc_pool *p = gc_pool_push();
    float v[6] = {0, 1, 2, 3, 4, 5};
    gc_tensor *x = gc_pool_add(gc_tensor_from_data(GC_F32, GC_CPU, 2, GC_SHAPE(2, 3), v));
    gc_tensor *t = gc_transpose(x, 0, 1); /* [3, 2] */
    ck_assert(!gc_tensor_is_contiguous(t));
    const char *path = in_dir("t.safetensors");
    ck_assert_int_eq(gc_st_save(path, 1, (const char *const[]){"t"}, &t, 0, NULL), GC_OK);
    gc_pool_pop(p);
    gc_st_file *f;
    ck_assert_int_eq(gc_st_open(path, &f), GC_OK);
    gc_tensor *r = gc_st_tensor(f, "t");
    ck_assert_int_eq(r->shape[0], 3);
    ck_assert_int_eq(r->shape[1], 2);
    const float want[6] = {0, 3, 1, 4, 2, 5};
    ck_assert_mem_eq(gc_tensor_data(r), want, sizeof want);
    gc_tensor_release(r);
    gc_st_close(f);
}
END_TEST

/* ---------------------------------------------------------------- conversions */

static gc_st_file *save_and_open(const char *file, int n, const char *const *names, gc_tensor **ts)
{
    const char *path = in_dir(file);
    ck_assert_msg(gc_st_save(path, n, names, ts, 0, NULL) == GC_OK, "%s", gc_error_message());
    for (int i = 0; i < n; i++) gc_tensor_release(ts[i]);
    gc_st_file *f;
    ck_assert_msg(gc_st_open(path, &f) == GC_OK, "%s", gc_error_message());
    return f;
}

START_TEST(test_load_converts)
{
    const uint16_t bf[4] = {0x3FC0, 0xC000, 0x3E20, 0x0000};      /* 1.5, -2, 0.15625, 0 */
    const float f32[3] = {1.00390625f, 1.01171875f, -3.0f};      /* 1+2^-8 and 1+3*2^-8: bf16 ties */
    const uint16_t f16[4] = {0x3C00, 0xC000, 0x3555, 0x0001};     /* 1, -2, 0.333251953125, 2^-24 */
    const double f64[3] = {65504.0, 0.5, 0.1};
    const int32_t i32[2] = {-5, INT32_MAX};
    const int64_t i64[3] = {1, -1, INT32_MIN};
    const int64_t big[2] = {7, (int64_t)1 << 31};
    gc_tensor *ts[7] = {
        gc_tensor_from_data(GC_BF16, GC_CPU, 1, GC_SHAPE(4), bf), gc_tensor_from_data(GC_F32, GC_CPU, 1, GC_SHAPE(3), f32),
        gc_tensor_from_data(GC_F16, GC_CPU, 1, GC_SHAPE(4), f16), gc_tensor_from_data(GC_F64, GC_CPU, 1, GC_SHAPE(3), f64),
        gc_tensor_from_data(GC_I32, GC_CPU, 1, GC_SHAPE(2), i32), gc_tensor_from_data(GC_I64, GC_CPU, 1, GC_SHAPE(3), i64),
        gc_tensor_from_data(GC_I64, GC_CPU, 1, GC_SHAPE(2), big),
    };
    const char *names[7] = {"bf", "f32", "f16", "f64", "i32", "i64", "big"};
    gc_st_file *f = save_and_open("conv.safetensors", 7, names, ts);

    gc_tensor *t = gc_st_load(f, "bf", GC_F32, GC_CPU);
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(t->dtype, GC_F32);
    const float *pf = gc_tensor_data(t);
    ck_assert_float_eq(pf[0], 1.5f);
    ck_assert_float_eq(pf[1], -2.0f);
    ck_assert_float_eq(pf[2], 0.15625f);
    ck_assert_float_eq(pf[3], 0.0f);
    gc_tensor_release(t);

    t = gc_st_load(f, "f32", GC_BF16, GC_CPU); /* round to nearest even */
    const uint16_t *ph = gc_tensor_data(t);
    ck_assert_uint_eq(ph[0], 0x3F80);
    ck_assert_uint_eq(ph[1], 0x3F82);
    ck_assert_uint_eq(ph[2], 0xC040);
    gc_tensor_release(t);

    t = gc_st_load(f, "f16", GC_F64, GC_CPU);
    const double *pd = gc_tensor_data(t);
    ck_assert_double_eq(pd[0], 1.0);
    ck_assert_double_eq(pd[1], -2.0);
    ck_assert_double_eq(pd[2], 0.333251953125);
    ck_assert_double_eq(pd[3], ldexp(1.0, -24));
    gc_tensor_release(t);

    t = gc_st_load(f, "f16", GC_BF16, GC_CPU);
    ph = gc_tensor_data(t);
    ck_assert_uint_eq(ph[0], 0x3F80);
    ck_assert_uint_eq(ph[1], 0xC000);
    gc_tensor_release(t);

    t = gc_st_load(f, "f64", GC_F16, GC_CPU);
    ph = gc_tensor_data(t);
    ck_assert_uint_eq(ph[0], 0x7BFF);
    ck_assert_uint_eq(ph[1], 0x3800);
    gc_tensor_release(t);

    t = gc_st_load(f, "f64", GC_F32, GC_CPU);
    pf = gc_tensor_data(t);
    ck_assert_float_eq(pf[2], 0.1f);
    gc_tensor_release(t);

    t = gc_st_load(f, "i32", GC_I64, GC_CPU);
    const int64_t *pl = gc_tensor_data(t);
    ck_assert_int_eq(pl[0], -5);
    ck_assert_int_eq(pl[1], INT32_MAX);
    gc_tensor_release(t);

    t = gc_st_load(f, "i64", GC_I32, GC_CPU);
    const int32_t *pi = gc_tensor_data(t);
    ck_assert_int_eq(pi[0], 1);
    ck_assert_int_eq(pi[1], -1);
    ck_assert_int_eq(pi[2], INT32_MIN);
    gc_tensor_release(t);
    ck_assert_int_eq(gc_error_code(), GC_OK);

    /* an I64 beyond I32 is named, not wrapped */
    ck_assert_ptr_null(gc_st_load(f, "big", GC_I32, GC_CPU));
    assert_error(gc_error_code(), GC_ERR_INVALID, gc_st_path(f), "element 1 = 2147483648");
    gc_error_clear();
    /* float <-> integer is refused */
    ck_assert_ptr_null(gc_st_load(f, "f32", GC_I32, GC_CPU));
    assert_error(gc_error_code(), GC_ERR_DTYPE, gc_st_path(f), "'f32'");
    gc_error_clear();
    ck_assert_ptr_null(gc_st_load(f, "i64", GC_F32, GC_CPU));
    assert_error(gc_error_code(), GC_ERR_DTYPE, gc_st_path(f), "'i64'");
    gc_error_clear();
    /* absent names */
    ck_assert_ptr_null(gc_st_tensor(f, "nope"));
    assert_error(gc_error_code(), GC_ERR_FORMAT, gc_st_path(f), "no tensor named 'nope'");
    gc_error_clear();
    ck_assert_ptr_null(gc_st_load(f, "nope", GC_F32, GC_CPU));
    assert_error(gc_error_code(), GC_ERR_FORMAT, gc_st_path(f), "'nope'");
    gc_st_close(f);
}
END_TEST

/* Dtypes outside gradcache's set are listed but not read. */
START_TEST(test_unsupported_dtype_is_named)
{
    const char *path = make_st("u8.safetensors",
                               "{\"u\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[0,3]},"
                               "\"e\":{\"dtype\":\"F8_E4M3\",\"shape\":[1],\"data_offsets\":[3,4]}}",
                               -1, 4);
    gc_st_file *f;
    ck_assert_msg(gc_st_open(path, &f) == GC_OK, "%s", gc_error_message());
    const gc_st_entry *e = gc_st_find(f, "u");
    ck_assert_int_eq(e->dtype, GC_DTYPE_COUNT);
    ck_assert_str_eq(e->st_dtype, "U8");
    ck_assert_ptr_null(gc_st_tensor(f, "u"));
    assert_error(gc_error_code(), GC_ERR_DTYPE, path, "dtype U8");
    gc_error_clear();
    ck_assert_ptr_null(gc_st_load(f, "e", GC_F32, GC_CPU));
    assert_error(gc_error_code(), GC_ERR_DTYPE, path, "dtype F8_E4M3");
    gc_st_close(f);
}
END_TEST

/* A tensor misaligned in memory (legal: readers must not assume alignment) is copied. */
START_TEST(test_misaligned_tensor)
{
    /* header of 61 bytes: the F32 data starts at file offset 69 */
    const char *h = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}       ";
    ck_assert_uint_eq(strlen(h), 61);
    size_t n = 8 + 61 + 8;
    unsigned char b[8 + 61 + 8] = {61};
    memcpy(b + 8, h, 61);
    const float v[2] = {2.5f, -1.25f};
    memcpy(b + 69, v, 8);
    const char *path = in_dir("mis.safetensors");
    write_file(path, b, n);
    gc_st_file *f;
    ck_assert_int_eq(gc_st_open(path, &f), GC_OK);
    gc_tensor *t = gc_st_tensor(f, "w");
    ck_assert_ptr_nonnull(t);
    ck_assert_uint_eq((uintptr_t)gc_tensor_data(t) % 4, 0);
    ck_assert_mem_eq(gc_tensor_data(t), v, 8);
    gc_tensor_release(t);
    gc_st_close(f);
}
END_TEST

/* ---------------------------------------------------------------- writer layout */

/* The bytes a file holds, compared with an expected header and data. */
static void assert_file_is(const char *path, const char *header, const void *data, size_t data_len)
{
    size_t n, hl = strlen(header);
    unsigned char *b = read_file(path, &n);
    ck_assert_uint_eq(n, 8 + hl + data_len);
    uint64_t len = 0;
    for (int i = 7; i >= 0; i--) len = len << 8 | b[i];
    ck_assert_uint_eq(len, hl);
    ck_assert_msg(!memcmp(b + 8, header, hl), "header is %.*s", (int)hl, b + 8);
    if (data_len) ck_assert_mem_eq(b + 8 + hl, data, data_len);
    free(b);
}

/* Byte-for-byte the reference writer's output for its own test cases. */
START_TEST(test_writer_matches_reference_vectors)
{
    const char *p = in_dir("empty.safetensors");
    ck_assert_int_eq(gc_st_save(p, 0, NULL, NULL, 0, NULL), GC_OK);
    assert_file_is(p, "{}      ", NULL, 0);
    ck_assert_int_eq(gc_st_save(p, 0, NULL, NULL, 1, (const char *const[]){"framework", "pt"}), GC_OK);
    assert_file_is(p, "{\"__metadata__\":{\"framework\":\"pt\"}}     ", NULL, 0);

    const float v[6] = {0, 1, 2, 3, 4, 5};
    gc_tensor *t = gc_tensor_from_data(GC_F32, GC_CPU, 3, GC_SHAPE(1, 2, 3), v);
    ck_assert_int_eq(gc_st_save(p, 1, (const char *const[]){"attn.0"}, &t, 0, NULL), GC_OK);
    assert_file_is(p, "{\"attn.0\":{\"dtype\":\"F32\",\"shape\":[1,2,3],\"data_offsets\":[0,24]}}", v, sizeof v);
    gc_tensor_release(t);
    t = gc_tensor_from_data(GC_F32, GC_CPU, 4, GC_SHAPE(1, 1, 2, 3), v);
    ck_assert_int_eq(gc_st_save(p, 1, (const char *const[]){"attn0"}, &t, 0, NULL), GC_OK);
    assert_file_is(p, "{\"attn0\":{\"dtype\":\"F32\",\"shape\":[1,1,2,3],\"data_offsets\":[0,24]}}       ", v, sizeof v);
    gc_tensor_release(t);
}
END_TEST

/* Sorted by descending dtype (the reference enum order) then name; header padded to 8
 * with spaces; every tensor aligned to its element size within the file. */
START_TEST(test_writer_layout)
{
    const char *names[] = {"z_i64", "a_f16", "m_f32", "b_f32", "c_bf16", "y_f64", "k_i32", "e_f32"};
    const gc_dtype dts[] = {GC_I64, GC_F16, GC_F32, GC_F32, GC_BF16, GC_F64, GC_I32, GC_F32};
    const int64_t lens[] = {3, 5, 1, 7, 3, 1, 3, 0};
    const char *want[] = {"z_i64", "y_f64", "b_f32", "e_f32", "m_f32", "k_i32", "c_bf16", "a_f16"};
    gc_tensor *ts[8];
    for (int i = 0; i < 8; i++) ts[i] = gc_tensor_zeros(dts[i], GC_CPU, 1, GC_SHAPE(lens[i]));
    const char *path = in_dir("layout.safetensors");
    ck_assert_int_eq(gc_st_save(path, 8, names, ts, 1, (const char *const[]){"format", "pt"}), GC_OK);
    for (int i = 0; i < 8; i++) gc_tensor_release(ts[i]);

    size_t n;
    unsigned char *b = read_file(path, &n);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | b[i];
    ck_assert_uint_eq(hl % 8, 0);
    size_t j = 8 + hl;
    while (b[j - 1] == ' ') j--;
    ck_assert_int_eq(b[j - 1], '}');
    ck_assert_uint_lt(8 + hl - j, 8);
    ck_assert(!memcmp(b + 8, "{\"__metadata__\":{\"format\":\"pt\"},\"z_i64\":", 40)); /* metadata first */
    free(b);

    gc_st_file *f;
    ck_assert_int_eq(gc_st_open(path, &f), GC_OK);
    uint64_t at = 0;
    for (int i = 0; i < 8; i++) {
        const gc_st_entry *e = gc_st_entry_at(f, i); /* header order is file order */
        ck_assert_str_eq(e->name, want[i]);
        ck_assert_uint_eq(e->begin, at);
        ck_assert_uint_eq((8 + hl + e->begin) % e->elem_size, 0);
        at = e->end;
    }
    gc_st_close(f);
}
END_TEST

START_TEST(test_writer_rejects_bad_input)
{
    float v = 1;
    gc_tensor *t = gc_tensor_from_data(GC_F32, GC_CPU, 0, NULL, &v);
    gc_tensor *two[2] = {t, t};
    const char *p = in_dir("bad.safetensors");
    assert_error(gc_st_save(p, 2, (const char *const[]){"x", "x"}, two, 0, NULL), GC_ERR_INVALID, p, "'x' given twice");
    gc_error_clear();
    assert_error(gc_st_save(p, 1, (const char *const[]){"__metadata__"}, &t, 0, NULL), GC_ERR_INVALID, p, "reserved");
    gc_error_clear();
    assert_error(gc_st_save(p, 1, (const char *const[]){"bad\xff"}, &t, 0, NULL), GC_ERR_INVALID, p, "UTF-8");
    gc_error_clear();
    assert_error(gc_st_save(p, 1, (const char *const[]){"x"}, &t, 2, (const char *const[]){"k", "1", "k", "2"}),
                 GC_ERR_INVALID, p, "'k' given twice");
    gc_error_clear();
    gc_tensor *none = NULL;
    assert_error(gc_st_save(p, 1, (const char *const[]){"x"}, &none, 0, NULL), GC_ERR_INVALID, p, "NULL");
    ck_assert(!file_exists(p));
    ck_assert(!file_exists(in_dir("bad.safetensors.tmp")));
    gc_tensor_release(t);
}
END_TEST

/* Writes go to path.tmp and are renamed into place: nothing is left behind, a failed
 * write leaves the old file, and mappings of the old file stay valid. */
START_TEST(test_atomic_write)
{
    float a[2] = {1, 2}, b[2] = {3, 4};
    gc_tensor *ta = gc_tensor_from_data(GC_F32, GC_CPU, 1, GC_SHAPE(2), a);
    gc_tensor *tb = gc_tensor_from_data(GC_F32, GC_CPU, 1, GC_SHAPE(2), b);
    const char *path = in_dir("w.safetensors"), *tmp = in_dir("w.safetensors.tmp");
    ck_assert_int_eq(gc_st_save(path, 1, (const char *const[]){"w"}, &ta, 0, NULL), GC_OK);
    ck_assert(file_exists(path));
    ck_assert(!file_exists(tmp));
    gc_st_file *f;
    ck_assert_int_eq(gc_st_open(path, &f), GC_OK);
    gc_tensor *old = gc_st_tensor(f, "w");
    gc_st_close(f);
    ck_assert_int_eq(gc_st_save(path, 1, (const char *const[]){"w"}, &tb, 0, NULL), GC_OK);
    ck_assert(!file_exists(tmp));
    ck_assert_mem_eq(gc_tensor_data(old), a, sizeof a); /* the old inode is still mapped */
    gc_tensor_release(old);
    ck_assert_int_eq(gc_st_open(path, &f), GC_OK);
    gc_tensor *now = gc_st_tensor(f, "w");
    ck_assert_mem_eq(gc_tensor_data(now), b, sizeof b);
    gc_tensor_release(now);
    gc_st_close(f);

    /* into a missing directory: an IO error naming the file, nothing created */
    const char *bad = in_dir("no/such/dir/w.safetensors");
    assert_error(gc_st_save(bad, 1, (const char *const[]){"w"}, &ta, 0, NULL), GC_ERR_IO, bad, "cannot create");
    gc_tensor_release(ta);
    gc_tensor_release(tb);
}
END_TEST

/* ---------------------------------------------------------------- Python's safetensors */

/* Made with safetensors 0.8.0 (PyPI) and numpy:
 *   save({"a": float32 [[1.5, -2, 3.25], [0, 1e-3, -7]], "b": int64 [1, -2, 2**40, -2**62],
 *         "c": float16 0.333 (scalar), "d": int32 zeros (0, 2)}, metadata={"format": "np"})
 * Header: {"__metadata__":{"format":"np"},"b":{"dtype":"I64","shape":[4],"data_offsets":[0,32]},
 *   "a":{"dtype":"F32","shape":[2,3],"data_offsets":[32,56]},"d":{"dtype":"I32","shape":[0,2],
 *   "data_offsets":[56,56]},"c":{"dtype":"F16","shape":[],"data_offsets":[56,58]}} + 2 spaces */
static const unsigned char PY_FILE[322] = {
    0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x7b, 0x22, 0x5f, 0x5f, 0x6d, 0x65, 0x74, 0x61,
    0x64, 0x61, 0x74, 0x61, 0x5f, 0x5f, 0x22, 0x3a, 0x7b, 0x22, 0x66, 0x6f, 0x72, 0x6d, 0x61, 0x74,
    0x22, 0x3a, 0x22, 0x6e, 0x70, 0x22, 0x7d, 0x2c, 0x22, 0x62, 0x22, 0x3a, 0x7b, 0x22, 0x64, 0x74,
    0x79, 0x70, 0x65, 0x22, 0x3a, 0x22, 0x49, 0x36, 0x34, 0x22, 0x2c, 0x22, 0x73, 0x68, 0x61, 0x70,
    0x65, 0x22, 0x3a, 0x5b, 0x34, 0x5d, 0x2c, 0x22, 0x64, 0x61, 0x74, 0x61, 0x5f, 0x6f, 0x66, 0x66,
    0x73, 0x65, 0x74, 0x73, 0x22, 0x3a, 0x5b, 0x30, 0x2c, 0x33, 0x32, 0x5d, 0x7d, 0x2c, 0x22, 0x61,
    0x22, 0x3a, 0x7b, 0x22, 0x64, 0x74, 0x79, 0x70, 0x65, 0x22, 0x3a, 0x22, 0x46, 0x33, 0x32, 0x22,
    0x2c, 0x22, 0x73, 0x68, 0x61, 0x70, 0x65, 0x22, 0x3a, 0x5b, 0x32, 0x2c, 0x33, 0x5d, 0x2c, 0x22,
    0x64, 0x61, 0x74, 0x61, 0x5f, 0x6f, 0x66, 0x66, 0x73, 0x65, 0x74, 0x73, 0x22, 0x3a, 0x5b, 0x33,
    0x32, 0x2c, 0x35, 0x36, 0x5d, 0x7d, 0x2c, 0x22, 0x64, 0x22, 0x3a, 0x7b, 0x22, 0x64, 0x74, 0x79,
    0x70, 0x65, 0x22, 0x3a, 0x22, 0x49, 0x33, 0x32, 0x22, 0x2c, 0x22, 0x73, 0x68, 0x61, 0x70, 0x65,
    0x22, 0x3a, 0x5b, 0x30, 0x2c, 0x32, 0x5d, 0x2c, 0x22, 0x64, 0x61, 0x74, 0x61, 0x5f, 0x6f, 0x66,
    0x66, 0x73, 0x65, 0x74, 0x73, 0x22, 0x3a, 0x5b, 0x35, 0x36, 0x2c, 0x35, 0x36, 0x5d, 0x7d, 0x2c,
    0x22, 0x63, 0x22, 0x3a, 0x7b, 0x22, 0x64, 0x74, 0x79, 0x70, 0x65, 0x22, 0x3a, 0x22, 0x46, 0x31,
    0x36, 0x22, 0x2c, 0x22, 0x73, 0x68, 0x61, 0x70, 0x65, 0x22, 0x3a, 0x5b, 0x5d, 0x2c, 0x22, 0x64,
    0x61, 0x74, 0x61, 0x5f, 0x6f, 0x66, 0x66, 0x73, 0x65, 0x74, 0x73, 0x22, 0x3a, 0x5b, 0x35, 0x36,
    0x2c, 0x35, 0x38, 0x5d, 0x7d, 0x7d, 0x20, 0x20, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc0, 0x00, 0x00, 0xc0, 0x3f, 0x00, 0x00, 0x00, 0xc0,
    0x00, 0x00, 0x50, 0x40, 0x00, 0x00, 0x00, 0x00, 0x6f, 0x12, 0x83, 0x3a, 0x00, 0x00, 0xe0, 0xc0,
    0x54, 0x35,
};

START_TEST(test_reads_python_file)
{
    const char *path = in_dir("py.safetensors");
    write_file(path, PY_FILE, sizeof PY_FILE);
    gc_st_file *f;
    ck_assert_msg(gc_st_open(path, &f) == GC_OK, "%s", gc_error_message());
    ck_assert_int_eq(gc_st_count(f), 4);
    ck_assert_str_eq(gc_st_metadata(f, "format"), "np");

    gc_tensor *a = gc_st_tensor(f, "a");
    ck_assert_int_eq(a->ndim, 2);
    ck_assert_int_eq(a->shape[0], 2);
    ck_assert_int_eq(a->shape[1], 3);
    const float want_a[6] = {1.5f, -2.0f, 3.25f, 0.0f, 1e-3f, -7.0f};
    ck_assert_mem_eq(gc_tensor_data(a), want_a, sizeof want_a);
    gc_tensor_release(a);

    gc_tensor *b = gc_st_load(f, "b", GC_I64, GC_CPU);
    const int64_t *pb = gc_tensor_data(b);
    ck_assert_int_eq(pb[0], 1);
    ck_assert_int_eq(pb[1], -2);
    ck_assert_int_eq(pb[2], (int64_t)1 << 40);
    ck_assert_int_eq(pb[3], -((int64_t)1 << 62));
    gc_tensor_release(b);

    const gc_st_entry *ce = gc_st_find(f, "c");
    ck_assert_int_eq(ce->dtype, GC_F16);
    ck_assert_int_eq(ce->ndim, 0);
    gc_tensor *c = gc_st_load(f, "c", GC_F32, GC_CPU);
    ck_assert_int_eq(gc_tensor_numel(c), 1);
    ck_assert_float_eq(*(const float *)gc_tensor_data(c), 0.333007812f); /* 0.333 in f16: 0x3554 */
    gc_tensor_release(c);

    gc_tensor *d = gc_st_tensor(f, "d");
    ck_assert_int_eq(d->dtype, GC_I32);
    ck_assert_int_eq(d->shape[0], 0);
    ck_assert_int_eq(d->shape[1], 2);
    ck_assert_int_eq(gc_tensor_numel(d), 0);
    gc_tensor_release(d);
    gc_st_close(f);
}
END_TEST

/* Our writer produces exactly Python's bytes for the same tensors. */
START_TEST(test_writer_matches_python)
{
    const float a[6] = {1.5f, -2.0f, 3.25f, 0.0f, 1e-3f, -7.0f};
    const int64_t b[4] = {1, -2, (int64_t)1 << 40, -((int64_t)1 << 62)};
    const uint16_t c = 0x3554;
    gc_tensor *ts[4] = {
        gc_tensor_from_data(GC_F32, GC_CPU, 2, GC_SHAPE(2, 3), a), gc_tensor_from_data(GC_I64, GC_CPU, 1, GC_SHAPE(4), b),
        gc_tensor_from_data(GC_F16, GC_CPU, 0, NULL, &c), gc_tensor_zeros(GC_I32, GC_CPU, 2, GC_SHAPE(0, 2)),
    };
    const char *path = in_dir("ours.safetensors");
    ck_assert_int_eq(gc_st_save(path, 4, (const char *const[]){"a", "b", "c", "d"}, ts, 1,
                                (const char *const[]){"format", "np"}),
                     GC_OK);
    for (int i = 0; i < 4; i++) gc_tensor_release(ts[i]);
    size_t n;
    unsigned char *got = read_file(path, &n);
    ck_assert_uint_eq(n, sizeof PY_FILE);
    ck_assert_mem_eq(got, PY_FILE, n);
    free(got);
}
END_TEST

/* ---------------------------------------------------------------- model directories */

static void save_one(const char *path, int n, const char *const *names, const float *vals)
{
    gc_tensor *ts[8] = {0};
    for (int i = 0; i < n; i++) ts[i] = gc_tensor_from_data(GC_F32, GC_CPU, 1, GC_SHAPE(1), &vals[i]);
    ck_assert_int_eq(gc_st_save(path, n, names, ts, 1, (const char *const[]){"format", "pt"}), GC_OK);
    for (int i = 0; i < n; i++) gc_tensor_release(ts[i]);
}

static void write_text(const char *path, const char *text) { write_file(path, text, strlen(text)); }

static float value_of(gc_st_dir *d, const char *name)
{
    gc_st_file *f;
    const gc_st_entry *e;
    ck_assert_int_eq(gc_st_dir_lookup(d, name, &f, &e), GC_OK);
    ck_assert_ptr_nonnull(e);
    ck_assert_str_eq(e->name, name);
    gc_tensor *t = gc_st_tensor(f, name);
    ck_assert_ptr_nonnull(t);
    float v = *(const float *)gc_tensor_data(t);
    gc_tensor_release(t);
    return v;
}

START_TEST(test_dir_single_file)
{
    save_one(in_dir("model.safetensors"), 2, (const char *const[]){"w", "b"}, (const float[]){1, 2});
    gc_st_dir *d;
    ck_assert_msg(gc_st_dir_open(g_dir, &d) == GC_OK, "%s", gc_error_message());
    ck_assert_int_eq(gc_st_dir_count(d), 2);
    ck_assert_str_eq(gc_st_dir_name_at(d, 0), "b"); /* file order: sorted by name within F32 */
    ck_assert_str_eq(gc_st_dir_name_at(d, 1), "w");
    ck_assert_float_eq(value_of(d, "w"), 1);
    gc_st_file *f = (gc_st_file *)1;
    const gc_st_entry *e = (const gc_st_entry *)1;
    ck_assert_int_eq(gc_st_dir_lookup(d, "missing", &f, &e), GC_OK); /* absent: no error */
    ck_assert_ptr_null(f);
    ck_assert_ptr_null(e);
    ck_assert_int_eq(gc_error_code(), GC_OK);
    gc_st_dir_close(d);
    /* a file path works too */
    ck_assert_int_eq(gc_st_dir_open(in_dir("model.safetensors"), &d), GC_OK);
    ck_assert_int_eq(gc_st_dir_count(d), 2);
    gc_st_dir_close(d);
}
END_TEST

START_TEST(test_dir_sharded)
{
    save_one(in_dir("model-00001-of-00002.safetensors"), 2, (const char *const[]){"a", "b"}, (const float[]){1, 2});
    save_one(in_dir("model-00002-of-00002.safetensors"), 2, (const char *const[]){"c", "unlisted"}, (const float[]){3, 4});
    write_text(in_dir("model.safetensors.index.json"),
               "{\"metadata\": {\"total_size\": 16},\n"
               " \"weight_map\": {\"c\": \"model-00002-of-00002.safetensors\",\n"
               "                \"a\": \"model-00001-of-00002.safetensors\",\n"
               "                \"b\": \"model-00001-of-00002.safetensors\"}}\n");
    gc_st_dir *d;
    ck_assert_msg(gc_st_dir_open(g_dir, &d) == GC_OK, "%s", gc_error_message());
    ck_assert_int_eq(gc_st_dir_count(d), 3);
    ck_assert_str_eq(gc_st_dir_name_at(d, 0), "c"); /* weight_map order */
    ck_assert_str_eq(gc_st_dir_name_at(d, 2), "b");
    ck_assert_ptr_null(gc_st_dir_name_at(d, 3));
    ck_assert_float_eq(value_of(d, "a"), 1);
    ck_assert_float_eq(value_of(d, "b"), 2);
    ck_assert_float_eq(value_of(d, "c"), 3);
    gc_st_file *f, *g;
    const gc_st_entry *e;
    ck_assert_int_eq(gc_st_dir_lookup(d, "a", &f, &e), GC_OK);
    ck_assert_int_eq(gc_st_dir_lookup(d, "c", &g, &e), GC_OK);
    ck_assert_ptr_ne(f, g);
    ck_assert_int_eq(gc_st_dir_lookup(d, "unlisted", &f, &e), GC_OK); /* only weight_map names count */
    ck_assert_ptr_null(e);
    gc_st_dir_close(d);
    /* the index opened by path; a single model.safetensors would win over it */
    ck_assert_int_eq(gc_st_dir_open(in_dir("model.safetensors.index.json"), &d), GC_OK);
    ck_assert_int_eq(gc_st_dir_count(d), 3);
    gc_st_dir_close(d);
    save_one(in_dir("model.safetensors"), 1, (const char *const[]){"solo"}, (const float[]){9});
    ck_assert_int_eq(gc_st_dir_open(g_dir, &d), GC_OK);
    ck_assert_int_eq(gc_st_dir_count(d), 1);
    gc_st_dir_close(d);
}
END_TEST

/* Broken directories and indexes are named. */
START_TEST(test_dir_errors)
{
    gc_st_dir *d = (gc_st_dir *)1;
    assert_error(gc_st_dir_open(g_dir, &d), GC_ERR_IO, g_dir, "neither model.safetensors");
    ck_assert_ptr_null(d);
    gc_error_clear();
    const char *missing = in_dir("nothing-here");
    assert_error(gc_st_dir_open(missing, &d), GC_ERR_IO, missing, "cannot open");
    gc_error_clear();

    save_one(in_dir("s1.safetensors"), 1, (const char *const[]){"a"}, (const float[]){1});
    const char *idx = in_dir("model.safetensors.index.json");
    write_text(idx, "{\"weight_map\": {\"a\": \"s1.safetensors\", \"x\": \"s1.safetensors\"}}");
    assert_error(gc_st_dir_open(g_dir, &d), GC_ERR_FORMAT, idx, "'x' in s1.safetensors");
    gc_error_clear();
    write_text(idx, "{\"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s2.safetensors\"}}");
    assert_error(gc_st_dir_open(g_dir, &d), GC_ERR_IO, in_dir("s2.safetensors"), "cannot open");
    gc_error_clear();
    write_text(idx, "{\"weight_map\": {\"a\": \"../s1.safetensors\"}}");
    assert_error(gc_st_dir_open(g_dir, &d), GC_ERR_FORMAT, idx, "not a file in the directory");
    gc_error_clear();
    write_text(idx, "{\"weight_map\": {\"a\": 3}}");
    assert_error(gc_st_dir_open(g_dir, &d), GC_ERR_FORMAT, idx, "expected a shard file name, got an integer");
    gc_error_clear();
    write_text(idx, "{\"weight_map\": {\"a\": \"s1.safetensors\", \"a\": \"s1.safetensors\"}}");
    assert_error(gc_st_dir_open(g_dir, &d), GC_ERR_FORMAT, g_dir, "lists 'a' twice");
    gc_error_clear();
    write_text(idx, "{\"metadata\": {}}");
    assert_error(gc_st_dir_open(g_dir, &d), GC_ERR_FORMAT, idx, "weight_map: missing");
    gc_error_clear();
    write_text(idx, "{\"weight_map\": {\"a\": \"s1.safetensors\",}}");
    assert_error(gc_st_dir_open(g_dir, &d), GC_ERR_FORMAT, idx, "not valid JSON at line 1");
    gc_error_clear();
    /* a corrupt shard is named by its own path */
    write_text(idx, "{\"weight_map\": {\"a\": \"bad.safetensors\"}}");
    make_st("bad.safetensors", "{}", 100, 0);
    assert_error(gc_st_dir_open(g_dir, &d), GC_ERR_FORMAT, in_dir("bad.safetensors"), "past the end");
}
END_TEST

/* ---------------------------------------------------------------- malformed files */

typedef struct bad_case {
    const char *rule;
    const char *header;
    long long n;    /* the header length field; -1: the header's true length */
    size_t data;    /* bytes of data after the header */
    gc_status code;
    const char *frag;
} bad_case;

#define T1(dt, shape, b, e) "{\"t\":{\"dtype\":\"" dt "\",\"shape\":" shape ",\"data_offsets\":[" #b "," #e "]}}"

static const bad_case BAD[] = {
    {"header length 0", "", 0, 16, GC_ERR_FORMAT, "header length is 0"},
    {"header over 100,000,000", "{}", 100000001, 0, GC_ERR_FORMAT, "exceeds the 100000000-byte limit"},
    {"header past end of file", "{}", 100, 8, GC_ERR_FORMAT, "runs past the end of the file"},
    {"JSON not well-formed", "{\"t\":", -1, 0, GC_ERR_FORMAT, "not valid JSON"},
    {"JSON trailing characters", "{} x", -1, 0, GC_ERR_FORMAT, "trailing characters"},
    {"JSON not an object", "[]", -1, 0, GC_ERR_FORMAT, "not a JSON object"},
    {"header not UTF-8", "{\"\xff\":{}}", -1, 0, GC_ERR_FORMAT, "not valid UTF-8"},
    {"raw control character", "{\"a\tb\":" "{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}", -1, 0,
     GC_ERR_FORMAT, "control character 0x09"},
    {"entry not an object", "{\"t\":5}", -1, 0, GC_ERR_FORMAT, "'t': expected an object, found an integer"},
    {"unknown dtype", T1("F12", "[1]", 0, 4), -1, 4, GC_ERR_FORMAT, "unknown dtype 'F12'"},
    {"dtype is case-sensitive", T1("f32", "[1]", 0, 4), -1, 4, GC_ERR_FORMAT, "unknown dtype 'f32'"},
    {"dtype not a string", "{\"t\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", -1, 4, GC_ERR_FORMAT,
     "dtype must be a string"},
    {"shape not an array", T1("F32", "3", 0, 4), -1, 4, GC_ERR_FORMAT, "shape must be an array"},
    {"shape negative", T1("F32", "[-1]", 0, 4), -1, 4, GC_ERR_FORMAT, "shape value -1 is negative"},
    {"shape fractional", T1("F32", "[1.5]", 0, 4), -1, 4, GC_ERR_FORMAT, "shape value 1.5 is not an integer"},
    {"shape 1.0 is a float", T1("F32", "[1.0]", 0, 4), -1, 4, GC_ERR_FORMAT, "1.0 is not an integer"},
    {"shape exponent", T1("F32", "[1e0]", 0, 4), -1, 4, GC_ERR_FORMAT, "1e0 is not an integer"},
    {"shape leading zero", T1("F32", "[01]", 0, 4), -1, 4, GC_ERR_FORMAT, "leading zero"},
    {"shape element a string", T1("F32", "[\"1\"]", 0, 4), -1, 4, GC_ERR_FORMAT, "found a string"},
    {"shape beyond 2^53", T1("U8", "[9007199254740993,0]", 0, 0), -1, 0, GC_ERR_FORMAT, "exceeds 2^53"},
    {"rank over 5", T1("F32", "[1,1,1,1,1,1]", 0, 4), -1, 4, GC_ERR_FORMAT, "rank 6"},
    {"offsets: one number", "{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", -1, 4, GC_ERR_FORMAT,
     "data_offsets must be [begin, end]"},
    {"offsets: three numbers", "{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,4]}}", -1, 4,
     GC_ERR_FORMAT, "data_offsets must be [begin, end]"},
    {"offsets: a string", "{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[\"0\",4]}}", -1, 4,
     GC_ERR_FORMAT, "found a string"},
    {"offsets negative", T1("F32", "[1]", -4, 0), -1, 0, GC_ERR_FORMAT, "is negative"},
    {"begin after end", T1("F32", "[0]", 4, 0), -1, 4, GC_ERR_FORMAT, "end before they begin"},
    {"size mismatch", T1("F32", "[2]", 0, 4), -1, 4, GC_ERR_FORMAT, "hold 4 bytes but F32 of this shape needs 8"},
    {"element count overflow", T1("F32", "[4294967296,4294967296,4294967296]", 0, 0), -1, 0, GC_ERR_FORMAT,
     "overflows"},
    {"byte size overflow", T1("F64", "[9007199254740992,512]", 0, 0), -1, 0, GC_ERR_FORMAT, "overflows"},
    {"missing dtype", "{\"t\":{\"shape\":[1],\"data_offsets\":[0,4]}}", -1, 4, GC_ERR_FORMAT, "missing dtype"},
    {"missing shape", "{\"t\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", -1, 4, GC_ERR_FORMAT, "missing shape"},
    {"missing offsets", "{\"t\":{\"dtype\":\"F32\",\"shape\":[1]}}", -1, 4, GC_ERR_FORMAT, "missing data_offsets"},
    {"duplicate field", "{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"shape\":[1],\"data_offsets\":[0,4]}}", -1, 4,
     GC_ERR_FORMAT, "duplicate field 'shape'"},
    {"first begin not 0", T1("F32", "[1]", 4, 8), -1, 8, GC_ERR_FORMAT, "begins at byte 4 of the buffer, not 0"},
    {"gap between tensors",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
     -1, 12, GC_ERR_FORMAT, "4 unused bytes between tensors 'a'"},
    {"overlapping tensors",
     "{\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]},"
     "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
     -1, 12, GC_ERR_FORMAT, "'a' [0, 8) and 'b' [4, 12) overlap"},
    {"trailing data after the last tensor", T1("F32", "[1]", 0, 4), -1, 6, GC_ERR_FORMAT, "2 bytes of trailing data"},
    {"data shorter than the offsets", T1("F32", "[2]", 0, 8), -1, 4, GC_ERR_FORMAT, "holds only 4"},
    {"data with no tensors", "{}", -1, 1, GC_ERR_FORMAT, "1 bytes of trailing data"},
    {"duplicate names",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
     "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
     -1, 4, GC_ERR_FORMAT, "duplicate tensor name 'a'"},
    {"metadata not an object", "{\"__metadata__\":[\"x\"]}", -1, 0, GC_ERR_FORMAT, "__metadata__ must be an object"},
    {"metadata value not a string", "{\"__metadata__\":{\"k\":1}}", -1, 0, GC_ERR_FORMAT,
     "__metadata__ value of 'k' must be a string"},
    {"duplicate metadata", "{\"__metadata__\":{},\"__metadata__\":{}}", -1, 0, GC_ERR_FORMAT, "duplicate __metadata__"},
};
#define N_BAD ((int)(sizeof BAD / sizeof BAD[0]))

START_TEST(test_malformed)
{
    const bad_case *c = &BAD[_i];
    const char *path = make_st("bad.safetensors", c->header, c->n, c->data);
    gc_st_file *f = (gc_st_file *)1;
    gc_status st = gc_st_open(path, &f);
    ck_assert_msg(st != GC_OK, "rule '%s': the file was accepted", c->rule);
    ck_assert_ptr_null(f);
    assert_error(st, c->code, path, c->frag);
}
END_TEST

START_TEST(test_unreadable_files)
{
    const char *path = in_dir("short.safetensors");
    write_file(path, "\x01\x02\x03", 3);
    gc_st_file *f;
    assert_error(gc_st_open(path, &f), GC_ERR_FORMAT, path, "3 bytes, too short");
    gc_error_clear();
    write_file(path, "", 0);
    assert_error(gc_st_open(path, &f), GC_ERR_FORMAT, path, "0 bytes, too short");
    gc_error_clear();
    unsigned char huge[8 + 2] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, '{', '}'}; /* length 2^64-1 */
    write_file(path, huge, sizeof huge);
    assert_error(gc_st_open(path, &f), GC_ERR_FORMAT, path, "header length 18446744073709551615 exceeds");
    gc_error_clear();
    const char *none = in_dir("none.safetensors");
    assert_error(gc_st_open(none, &f), GC_ERR_IO, none, "cannot open");
    gc_error_clear();
    assert_error(gc_st_open(g_dir, &f), GC_ERR_IO, g_dir, "not a regular file");
}
END_TEST

/* What the format allows must be accepted. */
START_TEST(test_accepts_edge_cases)
{
    static const char *const ok[] = {
        "{}",
        "{}\n \t",
        " {\"__metadata__\":null}",
        "{\"__metadata__\":{\"a\":\"1\",\"b\":\"\"}}",
        /* unknown fields are ignored, numbers in them included */
        "{\"t\":{\"x\":[1.5,-2,{\"y\":1e9}],\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"z\":-0.5}}",
        /* zero-size tensors anywhere, a scalar, offsets in any header order */
        "{\"b\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[4,8]},"
        "\"z\":{\"dtype\":\"I64\",\"shape\":[3,0],\"data_offsets\":[4,4]},"
        "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
        "\"e\":{\"dtype\":\"BF16\",\"shape\":[0],\"data_offsets\":[0,0]}}",
        /* every listed dtype */
        "{\"a\":{\"dtype\":\"BOOL\",\"shape\":[1],\"data_offsets\":[0,1]},"
        "\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]},"
        "\"c\":{\"dtype\":\"I8\",\"shape\":[1],\"data_offsets\":[2,3]},"
        "\"d\":{\"dtype\":\"F8_E5M2\",\"shape\":[1],\"data_offsets\":[3,4]},"
        "\"e\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[4,6]},"
        "\"f\":{\"dtype\":\"I16\",\"shape\":[1],\"data_offsets\":[6,8]},"
        "\"g\":{\"dtype\":\"U16\",\"shape\":[1],\"data_offsets\":[8,10]},"
        "\"h\":{\"dtype\":\"U32\",\"shape\":[1],\"data_offsets\":[10,14]},"
        "\"i\":{\"dtype\":\"U64\",\"shape\":[1],\"data_offsets\":[14,22]}}",
        /* escapes in names */
        "{\"a\\\"b\\\\c\\u00e9\\n\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}",
    };
    static const size_t data[] = {0, 0, 0, 0, 8, 8, 22, 0};
    for (int i = 0; i < (int)(sizeof ok / sizeof ok[0]); i++) {
        const char *path = make_st("ok.safetensors", ok[i], -1, data[i]);
        gc_st_file *f;
        ck_assert_msg(gc_st_open(path, &f) == GC_OK, "case %d: %s", i, gc_error_message());
        gc_st_close(f);
    }
    gc_st_file *f;
    ck_assert_int_eq(gc_st_open(make_st("ok.safetensors", ok[4], -1, 8), &f), GC_OK);
    const gc_st_entry *e = gc_st_find(f, "t");
    ck_assert_int_eq(e->ndim, 1);
    ck_assert_int_eq(e->shape[0], 2);
    ck_assert_uint_eq(e->end, 8);
    gc_st_close(f);
    ck_assert_int_eq(gc_st_open(make_st("ok.safetensors", ok[7], -1, 0), &f), GC_OK);
    ck_assert_ptr_nonnull(gc_st_find(f, "a\"b\\c\xc3\xa9\n"));
    gc_st_close(f);
    ck_assert_int_eq(gc_st_open(make_st("ok.safetensors", ok[5], -1, 8), &f), GC_OK);
    e = gc_st_find(f, "b");
    ck_assert_int_eq(e->ndim, 0);
    gc_tensor *t = gc_st_tensor(f, "b");
    ck_assert_int_eq(gc_tensor_numel(t), 1);
    gc_tensor_release(t);
    t = gc_st_load(f, "e", GC_F32, GC_CPU);
    ck_assert_int_eq(gc_tensor_numel(t), 0);
    gc_tensor_release(t);
    gc_st_close(f);
}
END_TEST

/* ---------------------------------------------------------------- JSON helpers */

START_TEST(test_json_getters)
{
    const char *path = in_dir("config.json");
    write_text(path, "{\n"
                     "  \"model_type\": \"clip\",\n"
                     "  \"projection_dim\": 512,\n"
                     "  \"logit_scale_init_value\": 2.6592,\n"
                     "  \"pad\": null,\n"
                     "  \"flag\": true,\n"
                     "  \"dup\": 1, \"dup\": 2,\n"
                     "  \"vision_config\": {\"hidden_size\": \"768\", \"patch_size\": 16.5, \"image_size\": 224}\n"
                     "}\n");
    cJSON *root;
    ck_assert_msg(gc_json_load_file(path, &root) == GC_OK, "%s", gc_error_message());
    const char *s;
    int64_t i;
    double x;
    bool b;
    ck_assert_int_eq(gc_json_get_string(root, "model_type", "x", true, &s, path), GC_OK);
    ck_assert_str_eq(s, "clip");
    ck_assert_int_eq(gc_json_get_string(root, "absent", "dflt", false, &s, path), GC_OK);
    ck_assert_str_eq(s, "dflt");
    ck_assert_int_eq(gc_json_get_int(root, "projection_dim", 0, true, &i, path), GC_OK);
    ck_assert_int_eq(i, 512);
    ck_assert_int_eq(gc_json_get_int(root, "pad", 7, false, &i, path), GC_OK); /* null: the default */
    ck_assert_int_eq(i, 7);
    ck_assert_int_eq(gc_json_get_int(root, "dup", 0, true, &i, path), GC_OK); /* the last wins, as in Python */
    ck_assert_int_eq(i, 2);
    ck_assert_int_eq(gc_json_get_double(root, "logit_scale_init_value", 0, true, &x, path), GC_OK);
    ck_assert_double_eq(x, 2.6592);
    ck_assert_int_eq(gc_json_get_double(root, "projection_dim", 0, true, &x, path), GC_OK);
    ck_assert_double_eq(x, 512);
    ck_assert_int_eq(gc_json_get_bool(root, "flag", false, true, &b, path), GC_OK);
    ck_assert(b);
    ck_assert_int_eq(gc_json_get_int(NULL, "anything", 3, false, &i, path), GC_OK);
    ck_assert_int_eq(i, 3);

    const cJSON *v;
    ck_assert_int_eq(gc_json_get_object(root, "vision_config", true, &v, path), GC_OK);
    ck_assert_ptr_nonnull(v);
    char ctx[600], want[700];
    gc_json_path(ctx, sizeof ctx, path, "vision_config");
    ck_assert_int_eq(gc_json_get_int(v, "image_size", 0, true, &i, ctx), GC_OK);
    ck_assert_int_eq(i, 224);

    ck_assert_int_eq(gc_json_get_int(v, "hidden_size", 0, true, &i, ctx), GC_ERR_FORMAT);
    snprintf(want, sizeof want, "%s: vision_config.hidden_size: expected an integer, got a string", path);
    ck_assert_str_eq(gc_error_message(), want);
    gc_error_clear();
    ck_assert_int_eq(gc_json_get_int(v, "patch_size", 0, true, &i, ctx), GC_ERR_FORMAT);
    snprintf(want, sizeof want, "%s: vision_config.patch_size: expected an integer, got 16.5", path);
    ck_assert_str_eq(gc_error_message(), want);
    gc_error_clear();
    ck_assert_int_eq(gc_json_get_int(root, "needed", 0, true, &i, path), GC_ERR_FORMAT);
    snprintf(want, sizeof want, "%s: needed: missing (required)", path);
    ck_assert_str_eq(gc_error_message(), want);
    gc_error_clear();
    assert_error(gc_json_get_bool(root, "projection_dim", false, false, &b, path), GC_ERR_FORMAT, path,
                 "projection_dim: expected a boolean, got 512");
    gc_error_clear();
    assert_error(gc_json_get_string(root, "flag", NULL, false, &s, path), GC_ERR_FORMAT, path,
                 "flag: expected a string, got a boolean");
    gc_error_clear();
    assert_error(gc_json_get_double(root, "model_type", 0, false, &x, path), GC_ERR_FORMAT, path,
                 "model_type: expected a number, got a string");
    gc_error_clear();
    assert_error(gc_json_get_object(root, "model_type", false, &v, path), GC_ERR_FORMAT, path,
                 "model_type: expected an object, got a string");
    gc_error_clear();
    ck_assert_int_eq(gc_json_get_object(root, "absent", false, &v, path), GC_OK);
    ck_assert_ptr_null(v);
    cJSON_Delete(root);
}
END_TEST

START_TEST(test_json_files)
{
    cJSON *root = (cJSON *)1;
    const char *path = in_dir("bad.json");
    write_text(path, "{\n  \"a\": 1,\n  \"b\": ]\n}\n");
    assert_error(gc_json_load_file(path, &root), GC_ERR_FORMAT, path, "not valid JSON at line 3, column 8");
    ck_assert_ptr_null(root);
    gc_error_clear();
    write_text(path, "[1, 2]");
    assert_error(gc_json_load_file(path, &root), GC_ERR_FORMAT, path, "expected a JSON object");
    gc_error_clear();
    write_text(path, "{} {}");
    assert_error(gc_json_load_file(path, &root), GC_ERR_FORMAT, path, "unexpected data after the JSON value at line 1");
    gc_error_clear();
    write_text(path, "  \n");
    assert_error(gc_json_load_file(path, &root), GC_ERR_FORMAT, path, "empty file");
    gc_error_clear();
    const char *none = in_dir("none.json");
    assert_error(gc_json_load_file(none, &root), GC_ERR_IO, none, "cannot open");
    gc_error_clear();

    /* save: atomic, and it loads back */
    cJSON *o = cJSON_CreateObject();
    ck_assert_ptr_nonnull(cJSON_AddNumberToObject(o, "hidden_size", 768));
    ck_assert_ptr_nonnull(cJSON_AddStringToObject(o, "hidden_act", "quick_gelu"));
    const char *out = in_dir("config.json");
    ck_assert_int_eq(gc_json_save_file(out, o), GC_OK);
    cJSON_Delete(o);
    ck_assert(!file_exists(in_dir("config.json.tmp")));
    ck_assert_int_eq(gc_json_load_file(out, &root), GC_OK);
    int64_t i;
    ck_assert_int_eq(gc_json_get_int(root, "hidden_size", 0, true, &i, out), GC_OK);
    ck_assert_int_eq(i, 768);
    cJSON_Delete(root);
}
END_TEST

/* ---------------------------------------------------------------- main */

int main(void)
{
    Suite *s = suite_create("safetensors");
    TCase *rw = gc_test_tcase("read_write");
    tcase_add_checked_fixture(rw, setup, teardown);
    tcase_add_test(rw, test_roundtrip_every_dtype);
    tcase_add_test(rw, test_tensor_outlives_close);
    tcase_add_test(rw, test_save_strided_view);
    tcase_add_test(rw, test_load_converts);
    tcase_add_test(rw, test_unsupported_dtype_is_named);
    tcase_add_test(rw, test_misaligned_tensor);
    tcase_add_test(rw, test_writer_matches_reference_vectors);
    tcase_add_test(rw, test_writer_layout);
    tcase_add_test(rw, test_writer_rejects_bad_input);
    tcase_add_test(rw, test_atomic_write);
    tcase_add_test(rw, test_reads_python_file);
    tcase_add_test(rw, test_writer_matches_python);
    suite_add_tcase(s, rw);

    TCase *val = gc_test_tcase("validation");
    tcase_add_checked_fixture(val, setup, teardown);
    tcase_add_loop_test(val, test_malformed, 0, N_BAD);
    tcase_add_test(val, test_unreadable_files);
    tcase_add_test(val, test_accepts_edge_cases);
    suite_add_tcase(s, val);

    TCase *dir = gc_test_tcase("directories");
    tcase_add_checked_fixture(dir, setup, teardown);
    tcase_add_test(dir, test_dir_single_file);
    tcase_add_test(dir, test_dir_sharded);
    tcase_add_test(dir, test_dir_errors);
    suite_add_tcase(s, dir);

    TCase *js = gc_test_tcase("json");
    tcase_add_checked_fixture(js, setup, teardown);
    tcase_add_test(js, test_json_getters);
    tcase_add_test(js, test_json_files);
    suite_add_tcase(s, js);
    return gc_test_run(s);
}
