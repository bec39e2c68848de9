/* Tensors: creation, views, copies across dtypes, pools, memory accounting. */
#include <stdlib.h>

#include "gc_test.h"

START_TEST(test_create_and_views)
{
    gc_pool *p = gc_pool_push();
    float data[24];
    for (int i = 0; i < 24; i++) data[i] = (float)i;
    gc_tensor *x = gc_pool_add(gc_tensor_from_data(GC_F32, GC_CPU, 3, GC_SHAPE(2, 3, 4), data));
    ck_assert_int_eq(gc_tensor_numel(x), 24);
    ck_assert(gc_tensor_is_contiguous(x));
    gc_tensor *t = gc_transpose(x, 1, 2); /* [2,4,3] */
    ck_assert(!gc_tensor_is_contiguous(t));
    ck_assert_int_eq(t->shape[1], 4);
    float out[24];
    ck_assert_int_eq(gc_tensor_to_host_f32(t, out), GC_OK);
    /* t[b, i, j] = x[b, j, i] */
    ck_assert_float_eq(out[0 * 12 + 1 * 3 + 2], data[0 * 12 + 2 * 4 + 1]);
    ck_assert_float_eq(out[1 * 12 + 3 * 3 + 0], data[1 * 12 + 0 * 4 + 3]);
    gc_tensor *r = gc_rows(x, 1, 2); /* the second batch row, no copy */
    ck_assert_ptr_eq(r->storage, x->storage);
    ck_assert_int_eq(r->offset, 12);
    gc_tensor *v = gc_view(r, 2, GC_SHAPE(-1, 6));
    ck_assert_int_eq(v->shape[0], 2);
    ck_assert_int_eq(gc_tensor_to_host_f32(v, out), GC_OK);
    ck_assert_float_eq(out[7], 19.0f);
    gc_tensor *s = gc_slice(x, 2, 1, 3); /* [2,3,2] */
    ck_assert_int_eq(gc_tensor_to_host_f32(s, out), GC_OK);
    ck_assert_float_eq(out[0], 1.0f);
    ck_assert_float_eq(out[1], 2.0f);
    ck_assert_float_eq(out[2], 5.0f);
    ck_assert_ptr_null(gc_view(x, 2, GC_SHAPE(5, 5)));
    ck_assert_int_eq(gc_error_code(), GC_ERR_SHAPE);
    gc_pool_pop(p);
}
END_TEST

START_TEST(test_dtype_conversions)
{
    float in[6] = {1.0f, -2.5f, 3.140625f, 65504.0f, 1e-3f, -0.0f};
    gc_tensor *x = gc_tensor_from_data(GC_F32, GC_CPU, 1, GC_SHAPE(6), in);
    for (int dt = GC_F32; dt <= GC_F64; dt++) {
        if (dt == GC_I32 || dt == GC_I64) continue;
        gc_tensor *y = gc_tensor_to(x, GC_CPU, (gc_dtype)dt);
        double back[6];
        ck_assert_int_eq(gc_tensor_to_host_f64(y, back), GC_OK);
        double tol = dt == GC_BF16 ? 1.0 / 128 : dt == GC_F16 ? 1.0 / 1024 : 1e-7;
        for (int i = 0; i < 6; i++) ck_assert_double_le(fabs(back[i] - in[i]), tol * fabs(in[i]) + 1e-12);
        gc_tensor_release(y);
    }
    /* bf16 rounds to nearest even */
    ck_assert_uint_eq(gc_f32_to_bf16(1.00390625f), 0x3f80);     /* halfway: to even */
    ck_assert_uint_eq(gc_f32_to_bf16(1.01171875f), 0x3f82);     /* halfway: to even (up) */
    ck_assert_uint_eq(gc_f32_to_f16(1.0f), 0x3c00);
    ck_assert_uint_eq(gc_f32_to_f16(65504.0f), 0x7bff);
    ck_assert_float_eq(gc_f16_to_f32(0x0001), 5.9604644775390625e-08f);
    gc_tensor *ints = gc_tensor_to(x, GC_CPU, GC_I64);
    ck_assert_int_eq(((int64_t *)gc_tensor_data(ints))[1], -2);
    gc_tensor_release(ints);
    gc_tensor_release(x);
}
END_TEST

START_TEST(test_pools_and_memory)
{
    gc_memory_stats before = gc_memory_stats_get(GC_CPU);
    gc_pool *p = gc_pool_push();
    gc_tensor *kept = NULL;
    for (int i = 0; i < 10; i++) {
        gc_tensor *t = gc_pool_add(gc_tensor_zeros(GC_F32, GC_CPU, 2, GC_SHAPE(100, 100)));
        if (i == 3) kept = gc_tensor_retain(t);
    }
    ck_assert_uint_ge(gc_memory_stats_get(GC_CPU).current, before.current + 10 * 40000);
    gc_pool_pop(p);
    ck_assert_uint_eq(gc_memory_stats_get(GC_CPU).current, before.current + 40000);
    gc_tensor_release(kept);
    ck_assert_uint_eq(gc_memory_stats_get(GC_CPU).current, before.current);
    ck_assert_uint_ge(gc_memory_stats_get(GC_CPU).peak, before.current + 400000);
}
END_TEST

START_TEST(test_errors_are_reported)
{
    ck_assert_ptr_null(gc_tensor_new(GC_F32, GC_CPU, 6, GC_SHAPE(1, 1, 1, 1, 1, 1)));
    ck_assert_int_eq(gc_error_code(), GC_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(gc_error_message(), "rank 6"));
    gc_error_clear();
    ck_assert_ptr_null(gc_tensor_new(GC_F32, GC_CPU, 1, GC_SHAPE(-3)));
    ck_assert_int_eq(gc_error_code(), GC_ERR_SHAPE);
    gc_error_clear();
    /* a size whose element count or bytes would wrap around: refused, not allocated small */
    ck_assert_ptr_null(gc_tensor_new(GC_F32, GC_CPU, 3, GC_SHAPE(1LL << 33, 1LL << 33, 24)));
    ck_assert_int_eq(gc_error_code(), GC_ERR_SHAPE);
    ck_assert_msg(strstr(gc_error_message(), "[8589934592, 8589934592, 24] has too many elements"), "%s", gc_error_message());
    gc_error_clear();
    ck_assert_ptr_null(gc_tensor_new(GC_F64, GC_CPU, 1, GC_SHAPE(INT64_MAX / 4)));
    ck_assert_int_eq(gc_error_code(), GC_ERR_SHAPE);
    gc_error_clear();
    gc_tensor *empty = gc_tensor_new(GC_F32, GC_CPU, 3, GC_SHAPE(INT64_MAX / 16, 0, INT64_MAX / 16)); /* 0 elements */
    ck_assert_msg(empty, "%s", gc_error_message());
    gc_tensor_release(empty);
    gc_device d;
    ck_assert_int_eq(gc_device_parse("tpu", &d), GC_ERR_INVALID);
    /* the first error is kept: a later one does not overwrite it */
    gc_error_set(GC_ERR_IO, "later");
    ck_assert_int_eq(gc_error_code(), GC_ERR_INVALID);
    gc_error_clear();
    gc_tensor *a = gc_tensor_zeros(GC_F32, GC_CPU, 1, GC_SHAPE(3));
    gc_tensor *b = gc_tensor_zeros(GC_F32, GC_CPU, 1, GC_SHAPE(4));
    ck_assert_int_eq(gc_tensor_copy_into(a, b, false), GC_ERR_SHAPE);
    gc_tensor_release(a);
    gc_tensor_release(b);
    if (!gc_cuda_built()) {
        gc_error_clear();
        ck_assert_ptr_null(gc_tensor_new(GC_F32, GC_CUDA0, 1, GC_SHAPE(3)));
        ck_assert_int_eq(gc_error_code(), GC_ERR_DEVICE);
    }
}
END_TEST

static int released;
static void count_release(void *ctx, void *data, size_t nbytes)
{
    (void)ctx;
    (void)nbytes;
    released++;
    free(data);
}

/* gc_tensor_pin without a GPU (no CUDA build, or no device): a no-op that keeps the data,
 * for views, repeats and empty tensors alike, and the storage frees as usual. Where a GPU
 * is present the same calls pin, once per storage, and unpin when it is freed. */
START_TEST(test_pin)
{
    bool gpu = gc_cuda_available();
    gc_memory_stats before = gc_memory_stats_get(GC_CPU);
    gc_tensor *x = gc_test_uniform(2, GC_SHAPE(64, 33), 11, -1, 1);
    gc_tensor *ref = gc_tensor_to(x, GC_CPU, GC_F32);
    ck_assert_int_eq(gc_tensor_pin(x), GC_OK);
    ck_assert(gc_tensor_is_pinned(x) == gpu);
    ck_assert_double_eq(gc_test_rel_err(x, ref), 0);
    gc_pool *p = gc_pool_push();
    gc_tensor *v = gc_rows(x, 5, 17); /* a view: its storage is x's, already pinned */
    ck_assert_int_eq(gc_tensor_pin(v), GC_OK);
    ck_assert_int_eq(gc_tensor_pin(x), GC_OK);
    ck_assert(gc_tensor_is_pinned(v) == gpu);
    ck_assert_double_eq(gc_test_rel_err(v, gc_rows(ref, 5, 17)), 0);
    gc_tensor *empty = gc_pool_add(gc_tensor_new(GC_F32, GC_CPU, 2, GC_SHAPE(0, 4)));
    ck_assert_int_eq(gc_tensor_pin(empty), GC_OK);
    ck_assert(!gc_tensor_is_pinned(empty));
    gc_pool_pop(p);
    /* written after pinning, read back: ordinary host memory to the CPU */
    ck_assert_int_eq(gc_tensor_fill(x, 2.5), GC_OK);
    ck_assert_float_eq(((float *)gc_tensor_data(x))[64 * 33 - 1], 2.5f);
    gc_tensor_release(x);
    gc_tensor_release(ref);
    ck_assert_uint_eq(gc_memory_stats_get(GC_CPU).current, before.current);
    /* wrapped storage: its own release runs once, after the unpinning */
    released = 0;
    float *w = malloc(sizeof(float) * 100);
    for (int i = 0; i < 100; i++) w[i] = (float)i;
    gc_tensor *t = gc_tensor_wrap(GC_F32, GC_CPU, 1, GC_SHAPE(100), w, count_release, NULL);
    ck_assert_int_eq(gc_tensor_pin(t), GC_OK);
    ck_assert_float_eq(((float *)gc_tensor_data(t))[99], 99.0f);
    gc_tensor_release(t);
    ck_assert_int_eq(released, 1);
    /* NULL: the pending error, no crash */
    gc_error_clear();
    ck_assert_int_ne(gc_tensor_pin(NULL), GC_OK);
    gc_error_clear();
    ck_assert(!gc_tensor_is_pinned(NULL));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("tensor");
    TCase *tc = gc_test_tcase("core");
    tcase_add_test(tc, test_create_and_views);
    tcase_add_test(tc, test_dtype_conversions);
    tcase_add_test(tc, test_pools_and_memory);
    tcase_add_test(tc, test_errors_are_reported);
    tcase_add_test(tc, test_pin);
    suite_add_tcase(s, tc);
    return gc_test_run(s);
}
