/* What a forward holds at its peak: the tape's saved tensors plus one op's work, and
 * nothing dead. A transformer block runs in stages whose temporaries die with the stage
 * (the layernorm outputs, the attention branch); a block with out_rows 1 (CLIP's last
 * vision block) keeps k and v and one row of the rest, with the first row's output and
 * every gradient of the whole block; CLIP's image tower frees its embedding temporaries
 * (the chunk's pixels on the device, the patch embedding, the concatenation) before the
 * blocks run; pixels already on the device in the compute dtype are read in place; a
 * host-to-device copy of the same dtype is one transfer with no staging buffer. Bytes
 * are exact: the CPU counts bytes as asked, the GPU in its size classes (measured here
 * by allocating one tensor of each size), so each test fails if one temporary survives.
 * GC_TEST_DEVICE / GC_TEST_DTYPE run the same on the GPU. */
#include <stdlib.h>
#include <string.h>

#include "../gradcache/gc_clip_task.h"
#include "gc_test.h"

/* Bytes the device counts for one tensor of n elements of dt (a size class on the GPU). */
static size_t held(gc_dtype dt, int64_t n)
{
    gc_device dev = gc_test_device();
    size_t before = gc_memory_stats_get(dev).current;
    gc_tensor *t = gc_tensor_new(dt, dev, 1, &n);
    ck_assert(t);
    size_t b = gc_memory_stats_get(dev).current - before;
    gc_tensor_release(t);
    return b;
}

typedef struct fwd_bytes {
    size_t end, peak; /* above the start: held after the forward (its output among it), and the peak */
} fwd_bytes;

typedef gc_tensor *(*fwd_fn)(void *ctx, gc_tensor *x);

/* One forward fn(ctx, x) on a tape (dropped after): the bytes it holds at the end and at
 * its peak, above the start */
static fwd_bytes forward_bytes(fwd_fn fn, void *ctx, gc_tensor *x)
{
    gc_device dev = gc_test_device();
    gc_device_sync(dev);
    gc_memory_reset_peak(dev);
    size_t base = gc_memory_stats_get(dev).current;
    gc_tape *t = gc_tape_init();
    gc_tape_begin(t);
    gc_pool *p = gc_pool_push();
    gc_tensor *y = fn(ctx, x);
    gc_tape_end(t);
    ck_assert_msg(y, "%s", gc_error_message());
    gc_memory_stats st = gc_memory_stats_get(dev);
    fwd_bytes r = {st.current - base, st.peak - base};
    gc_pool_pop(p);
    gc_tape_free(t);
    return r;
}

static gc_tensor *block_fwd(void *b, gc_tensor *x) { return gc_block_forward(b, x); }
static gc_tensor *image_fwd(void *m, gc_tensor *x) { return gc_clip_encode_image(m, x); }

static fwd_bytes block_forward_bytes(const gc_block *b, gc_tensor *x) { return forward_bytes(block_fwd, (void *)b, x); }

/* A CLIP-style block [B, L, D] on the tape: its forward peaks at what it keeps (the bytes
 * it still holds when it returns, its output among them) plus, with recompute on, fc2's
 * activation input [B L, F], the one temporary alive at the peak (inside fc2; with
 * recompute off the tape keeps it, so it is among the bytes held at the end). Kept alive
 * to the end, the first layernorm output, the attention branch and the second layernorm
 * output would add three [B, L, D]. */
START_TEST(test_block_forward_peak)
{
    const int64_t B = 3, L = 11, D = 32, H = 4, F = 128;
    gc_params ps;
    gc_block b;
    gc_test_block_init(&ps, &b, D, H, F, NULL, 11);
    gc_tensor *x = gc_test_block_input(B, L, D, 5, true);
    const size_t act_in = held(gc_test_dtype(), B * L * F);
    for (int recompute = 0; recompute < 2; recompute++) {
        bool prev = gc_recompute_set_enabled(recompute);
        fwd_bytes r = block_forward_bytes(&b, x);
        gc_recompute_set_enabled(prev);
        printf("block [%lld, %lld, %lld] on %s %s, recompute %s: holds %zu bytes after the forward, peak %zu\n",
               (long long)B, (long long)L, (long long)D, gc_device_name(gc_test_device()),
               gc_dtype_name(gc_test_dtype()), recompute ? "on" : "off", r.end, r.peak);
        const size_t tmp = recompute ? act_in : 0;
        ck_assert_msg(r.peak == r.end + tmp, "recompute %d: the forward peaked at %zu bytes: %zu held at the end + %zu of "
                      "fc2's input, %zd more", recompute, r.peak, r.end, tmp, (ssize_t)(r.peak - r.end - tmp));
    }
    gc_tensor_release(x);
    gc_params_free(&ps);
}
END_TEST

/* out_rows 1 (CLIP's last vision block): the first row of the whole block's output (bit
 * for bit on the CPU, where no GEMM depends on the row count), and with a cotangent on
 * that row only, the same gradients of every parameter and of x (to 1e-6 on the CPU); the
 * tape keeps k, v and one row of the rest. */
START_TEST(test_block_head_rows)
{
    const int64_t B = 3, L = 11, D = 32, H = 4, F = 128;
    gc_device dev = gc_test_device();
    gc_dtype dt = gc_test_dtype();
    gc_params ps;
    gc_block b;
    gc_test_block_init(&ps, &b, D, H, F, NULL, 11);
    gc_tensor *x = gc_test_block_input(B, L, D, 5, true);
    /* the cotangent: g1 on row 0 (gall: the same, zeros on the other rows) */
    gc_tensor *h1 = gc_test_randn(3, GC_SHAPE(B, 1, D), 9, 1.0), *hall = gc_tensor_zeros(GC_F32, GC_CPU, 3, GC_SHAPE(B, L, D));
    for (int64_t i = 0; i < B; i++)
        memcpy((float *)gc_tensor_data(hall) + i * L * D, (float *)gc_tensor_data(h1) + i * D, sizeof(float) * (size_t)D);
    gc_tensor *g1 = gc_tensor_to(h1, dev, dt), *gall = gc_tensor_to(hall, dev, dt);
    int64_t np = gc_params_count(&ps, false), nx = B * L * D;
    double *grads[2], *out[2];
    size_t end[2];
    for (int head = 0; head < 2; head++) {
        b.out_rows = head;
        end[head] = block_forward_bytes(&b, x).end;
        ck_assert_int_eq(gc_params_zero_grad(&ps), GC_OK);
        ck_assert_int_eq(gc_tensor_zero_grad(x), GC_OK);
        gc_tape *t = gc_tape_init();
        gc_tape_begin(t);
        gc_pool *p = gc_pool_push();
        gc_tensor *y = gc_block_forward(&b, x);
        gc_tape_end(t);
        ck_assert_msg(y && y->shape[1] == (head ? 1 : L), "%s", gc_error_message());
        ck_assert_msg(gc_backward(t, 1, &y, head ? &g1 : &gall) == GC_OK, "%s", gc_error_message());
        out[head] = calloc((size_t)(B * D), sizeof(double));
        gc_tensor *y0 = gc_slice(y, 1, 0, 1);
        ck_assert_int_eq(gc_tensor_to_host_f64(y0, out[head]), GC_OK);
        grads[head] = realloc(gc_test_flat_grads(&ps), sizeof(double) * (size_t)(np + nx));
        ck_assert_int_eq(gc_tensor_to_host_f64(gc_tensor_grad(x), grads[head] + np), GC_OK);
        gc_pool_pop(p);
        gc_tape_free(t);
    }
    printf("block [%lld, %lld, %lld] on %s %s: the tape and the output hold %zu bytes, %zu with out_rows 1\n", (long long)B,
           (long long)L, (long long)D, gc_device_name(dev), gc_dtype_name(dt), end[0], end[1]);
    ck_assert_uint_lt(end[1], end[0]);
    if (dev.type == GC_DEVICE_CPU) {
        ck_assert_msg(!memcmp(out[0], out[1], sizeof(double) * (size_t)(B * D)), "the first row differs");
        /* q's input gradient joins h's as a copy, not inside its GEMM: rounded once more */
        double eg = gc_test_vec_rel_err(grads[1], grads[0], np + nx);
        ck_assert_msg(eg < 1e-6, "gradients differ by %.3g", eg);
    } else { /* a GEMM of other rows may round differently */
        double tol = dt == GC_F32 ? 1e-5 : 2e-2, e = 0, n = 0;
        for (int64_t i = 0; i < np + nx; i++) {
            e += (grads[0][i] - grads[1][i]) * (grads[0][i] - grads[1][i]);
            n += grads[0][i] * grads[0][i];
        }
        ck_assert_msg(sqrt(e / n) <= tol, "gradients differ by %.3g (relative)", sqrt(e / n));
    }
    for (int i = 0; i < 2; i++) {
        free(grads[i]);
        free(out[i]);
    }
    gc_tensor_release(g1);
    gc_tensor_release(gall);
    gc_tensor_release(h1);
    gc_tensor_release(hall);
    gc_tensor_release(x);
    gc_params_free(&ps);
}
END_TEST

typedef struct rows_run {
    double *out;   /* the output rows [B, D] */
    double *grads; /* every parameter's gradient, then x's */
    size_t end;    /* bytes the tape and the output hold after the forward */
} rows_run;

typedef struct rows_ctx {
    const gc_block *b;
    gc_tensor *rows;
    int mode; /* 0: the whole block, then its rows gathered; 1: gc_block_run_rows; 2: the same checkpointed */
} rows_ctx;

static gc_tensor *rows_block_fwd(void *vc, gc_tensor *x)
{
    const rows_ctx *c = vc;
    if (!c->mode) return gc_gather_rows(gc_block_forward(c->b, x), c->rows);
    return gc_view(gc_block_run_rows(c->b, x, c->rows, c->mode == 2), 2, GC_SHAPE(x->shape[0], x->shape[2]));
}

static rows_run rows_block_run(rows_ctx *c, gc_params *ps, gc_tensor *x, gc_tensor *g)
{
    rows_run r = {.end = forward_bytes(rows_block_fwd, c, x).end};
    int64_t B = x->shape[0], D = x->shape[2], np = gc_params_count(ps, false);
    ck_assert_int_eq(gc_params_zero_grad(ps), GC_OK);
    ck_assert_int_eq(gc_tensor_zero_grad(x), GC_OK);
    r.out = calloc((size_t)(B * D), sizeof(double));
    ck_assert(r.out);
    char label[32];
    snprintf(label, sizeof label, "mode %d", c->mode);
    gc_test_tape_step(rows_block_fwd, c, x, g, r.out, label); /* g is [B, D]: y must be too */
    r.grads = realloc(gc_test_flat_grads(ps), sizeof(double) * (size_t)(np + gc_tensor_numel(x)));
    ck_assert_int_eq(gc_tensor_to_host_f64(gc_tensor_grad(x), r.grads + np), GC_OK);
    return r;
}

/* gc_block_run_rows on a causal block (CLIP's last text block: one pooled row per sample,
 * here at the first, the last and inner positions): the rows of the whole block's output
 * and, with a cotangent on those rows only, the same gradients of every parameter and of
 * x, with and without checkpointing (the output bit for bit on the CPU, the gradients to
 * 1e-6); the tape keeps k, v and one row of the rest. The numbers would change with a key more or less in the mask. Rows
 * outside [0, L) or of the wrong shape are errors. */
START_TEST(test_block_pooled_rows)
{
    const int64_t B = 5, L = 11, D = 64, H = 2, F = 128; /* head dim 32: flash in bf16 on the GPU */
    gc_device dev = gc_test_device();
    gc_dtype dt = gc_test_dtype();
    gc_params ps;
    gc_block b;
    gc_test_block_init(&ps, &b, D, H, F, NULL, 13);
    b.causal = true;
    gc_tensor *x = gc_test_block_input(B, L, D, 6, true);
    gc_tensor *rows = gc_tensor_from_data(GC_I64, GC_CPU, 1, GC_SHAPE(B), (int64_t[]){0, L - 1, 4, 1, 4});
    gc_tensor *hg = gc_test_randn(2, GC_SHAPE(B, D), 10, 1.0), *g = gc_tensor_to(hg, dev, dt);
    int64_t n = gc_params_count(&ps, false) + B * L * D;
    rows_run r[3];
    for (int mode = 0; mode < 3; mode++) r[mode] = rows_block_run(&(rows_ctx){&b, rows, mode}, &ps, x, g);
    printf("causal block [%lld, %lld, %lld] on %s %s: the tape and the output hold %zu bytes, %zu on the pooled rows, "
           "%zu checkpointed\n", (long long)B, (long long)L, (long long)D, gc_device_name(dev), gc_dtype_name(dt), r[0].end,
           r[1].end, r[2].end);
    ck_assert_uint_lt(r[1].end, r[0].end);
    ck_assert_uint_lt(r[2].end, r[1].end);
    for (int mode = 1; mode < 3; mode++) {
        if (dev.type == GC_DEVICE_CPU) {
            for (int64_t i = 0; i < B * D; i++)
                ck_assert_msg(!memcmp(&r[0].out[i], &r[mode].out[i], sizeof(double)), "mode %d: output %lld: %.9g vs %.9g",
                              mode, (long long)i, r[0].out[i], r[mode].out[i]);
            double eg = gc_test_vec_rel_err(r[mode].grads, r[0].grads, n); /* as in test_block_head_rows */
            ck_assert_msg(eg < 1e-6, "mode %d: gradients differ by %.3g", mode, eg);
        } else { /* a GEMM of other rows may round differently */
            double tol = dt == GC_F32 ? 1e-5 : 2e-2;
            double eo = gc_test_vec_rel_err(r[mode].out, r[0].out, B * D), eg = gc_test_vec_rel_err(r[mode].grads, r[0].grads, n);
            printf("  mode %d: output %.3g, gradients %.3g (relative)\n", mode, eo, eg);
            ck_assert_msg(eo <= tol && eg <= tol, "mode %d: output differs by %.3g, gradients by %.3g", mode, eo, eg);
        }
    }
    for (int mode = 0; mode < 3; mode++) {
        free(r[mode].out);
        free(r[mode].grads);
    }
    /* errors, not aborts */
    gc_pool *p = gc_pool_push();
    gc_tensor *bad = gc_pool_add(gc_tensor_from_data(GC_I64, GC_CPU, 1, GC_SHAPE(B), (int64_t[]){0, L, 4, 1, 4}));
    ck_assert_ptr_null(gc_block_forward_rows(&b, x, bad));
    ck_assert_int_eq(gc_error_code(), GC_ERR_INVALID);
    gc_error_clear();
    ck_assert_ptr_null(gc_block_forward_rows(&b, x, gc_slice(rows, 0, 0, 2)));
    ck_assert_int_eq(gc_error_code(), GC_ERR_SHAPE);
    gc_error_clear();
    gc_pool_pop(p);
    gc_tensor_release(g);
    gc_tensor_release(hg);
    gc_tensor_release(rows);
    gc_tensor_release(x);
    gc_params_free(&ps);
}
END_TEST

/* A small CLIP (3 vision layers, 4x4 patches of 8 pixels: 17 tokens) */
static gc_clip *small_clip(void)
{
    gc_clip_config c;
    ck_assert_int_eq(gc_clip_config_named("clip-tiny", &c), GC_OK);
    c.vision.layers = 3;
    c.vision.hidden = 32;
    c.vision.heads = 4;
    c.vision.intermediate = 256; /* fc2 (8 wide) is the peak on every attention path */
    c.projection_dim = 24;
    gc_clip_options o = {.device = gc_test_device(), .dtype = gc_test_dtype()};
    gc_clip *m;
    ck_assert_msg(gc_clip_init(&m, &c, &o, 3) == GC_OK, "%s", gc_error_message());
    return m;
}

/* The image tower on the tape peaks inside its next-to-last block, at fc2 as above (its
 * last block computes one row past k and v). From there to the end of the forward, what
 * it frees is fc2's activation input [B L, F] (its output [B L, D] goes and the block's
 * output comes), and what it adds is its last block (which holds what the same block
 * holds alone, measured here) and the tail: the post-layernorm output [B, D], its mean
 * and rstd [B] (f32) and the projection [B, P]. Nothing else may die in between: no
 * embedding or block temporary lives across the blocks. */
static void image_tower_peak(gc_clip *m, gc_tensor *pixels, size_t last_block, const char *label)
{
    const gc_clip_config *c = gc_clip_get_config(m);
    gc_device dev = gc_test_device();
    gc_dtype dt = gc_test_dtype();
    int64_t B = pixels->shape[0], g = c->vision.image_size / c->vision.patch, R = B * (g * g + 1);
    int64_t D = c->vision.hidden, F = c->vision.intermediate, P = c->projection_dim;
    size_t act_in = held(dt, R * F), tail = held(dt, B * D) + 2 * held(GC_F32, B) + held(dt, B * P);
    fwd_bytes r = forward_bytes(image_fwd, m, pixels);
    size_t end = r.end, peak = r.peak;
    printf("image tower, %s, on %s %s: holds %zu bytes after the forward, peak %zu\n", label, gc_device_name(dev),
           gc_dtype_name(dt), end, peak);
    ck_assert_msg(peak + last_block + tail == end + act_in,
                  "%s: peak %zu + last block %zu + tail %zu != end %zu + fc2's input %zu: %zd bytes more at the peak", label,
                  peak, last_block, tail, end, act_in, (ssize_t)(peak + last_block + tail - end - act_in));
}

START_TEST(test_clip_image_tower_peak)
{
    gc_clip *m = small_clip();
    const gc_clip_config *c = gc_clip_get_config(m);
    int64_t S = c->vision.image_size;
    gc_tensor *host = gc_test_uniform(4, GC_SHAPE(3, 3, S, S), 8, -1, 1);
    gc_tensor *dev = gc_tensor_to(host, gc_test_device(), gc_test_dtype());
    /* the last block alone: the same sizes (one output row), its input there before */
    int64_t g = S / c->vision.patch;
    gc_params ps;
    gc_block b;
    gc_test_block_init(&ps, &b, c->vision.hidden, c->vision.heads, c->vision.intermediate, NULL, 11);
    b.out_rows = 1;
    gc_tensor *x = gc_test_block_input(3, g * g + 1, c->vision.hidden, 5, true);
    size_t last = block_forward_bytes(&b, x).end;
    gc_tensor_release(x);
    gc_params_free(&ps);
    image_tower_peak(m, host, last, "pixels f32 on the host");
    image_tower_peak(m, dev, last, "pixels in the compute dtype on the device");
    gc_tensor_release(host);
    gc_tensor_release(dev);
    gc_clip_free(m);
}
END_TEST

/* Pixels on the device in the compute dtype are read in place; others are converted. */
START_TEST(test_input_in_place)
{
    gc_device dev = gc_test_device();
    gc_dtype dt = gc_test_dtype();
    gc_tensor *h = gc_test_uniform(4, GC_SHAPE(4, 3, 8, 8), 1, -1, 1);
    gc_tensor *x = gc_tensor_to(h, dev, dt);
    gc_pool *p = gc_pool_push();
    size_t before = gc_memory_stats_get(dev).current;
    gc_tensor *rows = gc_rows(x, 1, 3);
    gc_tensor *in = gc_input_to(rows, dev, dt);
    ck_assert(in && gc_tensor_data(in) == gc_tensor_data(rows) && !in->slot);
    ck_assert_uint_eq(gc_memory_stats_get(dev).current, before);
    if (dev.type == GC_DEVICE_CUDA || dt != GC_F32) { /* the host batch in f32: a converted copy on the device */
        gc_tensor *up = gc_input_to(gc_rows(h, 1, 3), dev, dt);
        ck_assert(up && up->dtype == dt && gc_device_eq(up->device, dev));
        ck_assert_double_eq(gc_test_rel_err(up, rows), 0);
    }
    gc_pool_pop(p);
    gc_tensor_release(x);
    gc_tensor_release(h);
}
END_TEST

/* Host to device in the same dtype: one transfer into the destination, no staging
 * tensor on the device (the device's peak is the destination). */
START_TEST(test_upload_no_staging)
{
    gc_device dev = gc_test_device();
    if (dev.type != GC_DEVICE_CUDA) return; /* one device: nothing crosses */
    gc_dtype dt = gc_test_dtype();
    gc_tensor *h = gc_test_uniform(2, GC_SHAPE(300, 1000), 2, -1, 1);
    gc_tensor *hc = gc_tensor_to(h, GC_CPU, dt);
    gc_device_sync(dev);
    gc_memory_reset_peak(dev);
    size_t base = gc_memory_stats_get(dev).current;
    gc_tensor *d = gc_tensor_to(hc, dev, dt);
    ck_assert(d);
    gc_memory_stats st = gc_memory_stats_get(dev);
    ck_assert_uint_eq(st.peak - base, held(dt, 300 * 1000));
    ck_assert_uint_eq(st.current - base, st.peak - base);
    ck_assert_double_eq(gc_test_rel_err(d, hc), 0);
    gc_tensor_release(d);
    gc_tensor_release(hc);
    gc_tensor_release(h);
}
END_TEST

/* The pixels' placement does not change a step: pixels f32 on the host (pageable, and
 * page-locked by gc_tensor_pin, whose chunk uploads are asynchronous on a GPU) and the
 * same pixels already in the compute dtype on the device give bit-identical losses and
 * gradients through the gradient cache. */
START_TEST(test_clip_pixels_placement_bit_identical)
{
    gc_clip *m = small_clip();
    const gc_clip_config *c = gc_clip_get_config(m);
    int64_t B = 6, S = c->vision.image_size, L = 9;
    gc_tensor *host = gc_test_uniform(4, GC_SHAPE(B, 3, S, S), 4, -1, 1);
    gc_tensor *dev = gc_tensor_to(host, gc_test_device(), gc_test_dtype());
    gc_tensor *pinned = gc_tensor_to(host, GC_CPU, GC_F32);
    ck_assert_int_eq(gc_tensor_pin(pinned), GC_OK);
    gc_tensor *ids = gc_test_ints(GC_I64, 2, GC_SHAPE(B, L), 6, 3, c->text.vocab - 1);
    gc_params *ps = gc_clip_params(m);
    gc_tensor *pixels[3] = {host, pinned, dev};
    double loss[3];
    double *grads[3];
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(gc_params_zero_grad(ps), GC_OK);
        gc_clip_task t;
        gc_clip_task_init(&t, m, pixels[i], ids, 4);
        gc_gradcache_result res;
        ck_assert_msg(gc_clip_task_step(&t, (gc_rand_context){5, 1, 0}, &res) == GC_OK, "%s", gc_error_message());
        loss[i] = res.loss;
        grads[i] = gc_test_flat_grads(ps);
        gc_gradcache_result_clear(&res);
    }
    int64_t n = gc_params_count(ps, false);
    for (int k = 1; k < 3; k++) {
        ck_assert_msg(!memcmp(&loss[0], &loss[k], sizeof(double)), "%s: loss %.17g vs %.17g", k == 1 ? "pinned" : "device",
                      loss[0], loss[k]);
        for (int64_t i = 0; i < n; i++)
            ck_assert_msg(!memcmp(&grads[0][i], &grads[k][i], sizeof(double)), "%s: gradient %lld: %.9g vs %.9g",
                          k == 1 ? "pinned" : "device", (long long)i, grads[0][i], grads[k][i]);
    }
    printf("pixels on the host / pinned on the host%s / on the device: loss %.9g, %lld gradients bit-identical\n",
           gc_tensor_is_pinned(pinned) ? "" : " (a no-op here)", loss[0], (long long)n);
    for (int k = 0; k < 3; k++) free(grads[k]);
    gc_tensor_release(pinned);
    gc_tensor_release(host);
    gc_tensor_release(dev);
    gc_tensor_release(ids);
    gc_clip_free(m);
}
END_TEST

int main(void)
{
    if (!gc_test_fixtures_start("memory", 0)) return 77;
    Suite *s = suite_create("memory");
    TCase *tc = gc_test_tcase("memory");
    tcase_add_test(tc, test_block_forward_peak);
    tcase_add_test(tc, test_block_head_rows);
    tcase_add_test(tc, test_block_pooled_rows);
    tcase_add_test(tc, test_clip_image_tower_peak);
    tcase_add_test(tc, test_input_in_place);
    tcase_add_test(tc, test_upload_no_staging);
    tcase_add_test(tc, test_clip_pixels_placement_bit_identical);
    suite_add_tcase(s, tc);
    return gc_test_run(s);
}
