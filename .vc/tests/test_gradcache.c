/* The gradient cache: chunked gradients equal full-batch gradients (any chunk size,
 * with dropout on), the row-blocked CLIP loss equals the plain one, misuse is reported. */
#include <stdlib.h>
#include <string.h>

#include "../gradcache/gc_clip_loss.h"
#include "../gradcache/gc_gradcache.h"
#include "gc_test.h"

/* A toy two-tower model: tower t = linear(dropout(tanh-free MLP)) */
typedef struct toy {
    gc_tensor *w1[2], *b1[2], *w2[2];
    double dropout;
    int calls[2];   /* tower calls (chunk forwards) */
    int fail_at;    /* > 0: the call (of both towers, counted from 1) that fails */
    int n_calls;
} toy;

static gc_tensor *toy_tower(toy *m, int t, gc_tensor *x)
{
    m->calls[t]++;
    if (++m->n_calls == m->fail_at) {
        gc_error_set(GC_ERR_INVALID, "toy tower %d fails at call %d", t, m->fail_at);
        return NULL;
    }
    gc_tensor *h = gc_activation(gc_linear(x, m->w1[t], m->b1[t]), GC_ACT_GELU_ERF);
    h = gc_dropout(h, m->dropout, 10 + (uint32_t)t);
    return gc_linear(h, m->w2[t], NULL);
}
static gc_tensor *tower0(void *c, int n, gc_tensor *const *in) { (void)n; return toy_tower(c, 0, in[0]); }
static gc_tensor *tower1(void *c, int n, gc_tensor *const *in) { (void)n; return toy_tower(c, 1, in[0]); }

static gc_tensor *scale_param;
static gc_tensor *toy_loss(void *user, int n, gc_tensor *const *reps)
{
    (void)user;
    (void)n;
    return gc_clip_loss(reps[0], reps[1], scale_param, 3); /* row blocks of 3: exercises the blocking */
}

static void toy_init(toy *m, double dropout)
{
    memset(m, 0, sizeof *m);
    for (int t = 0; t < 2; t++) {
        m->w1[t] = gc_test_param(2, GC_SHAPE(12, 5 + t), 10 + (uint64_t)t, 0.5);
        m->b1[t] = gc_test_param(1, GC_SHAPE(12), 20 + (uint64_t)t, 0.5);
        m->w2[t] = gc_test_param(2, GC_SHAPE(6, 12), 30 + (uint64_t)t, 0.5);
    }
    m->dropout = dropout;
    float s = 1.7f;
    scale_param = gc_tensor_from_data(GC_F32, GC_CPU, 0, NULL, &s);
    gc_tensor_requires_grad(scale_param, true);
}

static void toy_free(toy *m)
{
    for (int t = 0; t < 2; t++) {
        gc_tensor_release(m->w1[t]);
        gc_tensor_release(m->b1[t]);
        gc_tensor_release(m->w2[t]);
    }
    gc_tensor_release(scale_param);
}

/* all gradients, flattened to host */
static int grads(toy *m, double *out)
{
    gc_tensor *ps[7] = {m->w1[0], m->b1[0], m->w2[0], m->w1[1], m->b1[1], m->w2[1], scale_param};
    int k = 0;
    for (int i = 0; i < 7; i++) {
        gc_tensor_to_host_f64(gc_tensor_grad(ps[i]), out + k);
        k += (int)gc_tensor_numel(ps[i]);
    }
    return k;
}

static int64_t last_kept_rows; /* res.kept_rows of the last run */

static double run(toy *m, gc_tensor *x0, gc_tensor *x1, int64_t chunk0, int64_t chunk1, bool cache, bool replay_all,
                  double *g, int *ng)
{
    gc_tensor *ps[7] = {m->w1[0], m->b1[0], m->w2[0], m->w1[1], m->b1[1], m->w2[1], scale_param};
    for (int i = 0; i < 7; i++) gc_tensor_zero_grad(ps[i]);
    gc_gradcache gc = {.n_towers = 2, .loss = toy_loss, .use_cache = cache, .replay_all = replay_all};
    gc.towers[0] = (gc_gradcache_tower){{tower0, m, "tower0"}, chunk0, 1, {x0}};
    gc.towers[1] = (gc_gradcache_tower){{tower1, m, "tower1"}, chunk1, 1, {x1}};
    gc_gradcache_result res;
    gc_rand_context rng = {1234, 7, 0};
    ck_assert_msg(gc_gradcache_step(&gc, rng, &res) == GC_OK, "%s", gc_error_message());
    *ng = grads(m, g);
    last_kept_rows = res.kept_rows;
    gc_gradcache_result_clear(&res);
    return res.loss;
}

static double max_rel(const double *a, const double *b, int n)
{
    double num = 0, den = 0;
    for (int i = 0; i < n; i++) { num += (a[i] - b[i]) * (a[i] - b[i]); den += b[i] * b[i]; }
    return sqrt(num / den);
}

static void check_chunk_invariance(double dropout)
{
    toy m;
    toy_init(&m, dropout);
    gc_tensor *x0 = gc_test_randn(2, GC_SHAPE(10, 5), 1, 1.0), *x1 = gc_test_randn(2, GC_SHAPE(10, 6), 2, 1.0);
    static double ref[2000], got[2000];
    int n;
    double lref = run(&m, x0, x1, 0, 0, false, false, ref, &n); /* no cache: one forward per tower */
    ck_assert_int_eq(last_kept_rows, 0);
    int64_t chunks[][2] = {{1, 1}, {3, 4}, {10, 10}, {7, 2}, {100, 5}};
    for (size_t c = 0; c < sizeof chunks / sizeof chunks[0]; c++) {
        for (int all = 0; all < 2; all++) { /* tower 0's last chunk kept from phase 1, or replayed */
            m.calls[0] = m.calls[1] = 0;
            double l = run(&m, x0, x1, chunks[c][0], chunks[c][1], true, all, got, &n);
            ck_assert_double_eq_tol(l, lref, 1e-5 * fabs(lref));
            double e = max_rel(got, ref, n);
            ck_assert_msg(e < 2e-5, "chunks %lld/%lld%s: gradients differ from the full batch by %.3g",
                          (long long)chunks[c][0], (long long)chunks[c][1], all ? " (replay all)" : "", e);
            /* chunk forwards: every chunk twice, but for the kept one */
            int n0 = (int)((10 + chunks[c][0] - 1) / chunks[c][0]), n1 = (int)((10 + chunks[c][1] - 1) / chunks[c][1]);
            ck_assert_int_eq(m.calls[0], 2 * n0 - !all);
            ck_assert_int_eq(m.calls[1], 2 * n1);
            /* and the step says which rows were not replayed: tower 0's last chunk */
            int64_t c0 = chunks[c][0] < 10 ? chunks[c][0] : 10;
            ck_assert_int_eq(last_kept_rows, all ? 0 : 10 - (10 - 1) / c0 * c0);
        }
    }
    if (dropout > 0) { /* dropout really acts: gradients differ from dropout off */
        m.dropout = 0;
        run(&m, x0, x1, 0, 0, false, false, got, &n);
        ck_assert_double_gt(max_rel(got, ref, n), 1e-2);
    }
    gc_tensor_release(x0);
    gc_tensor_release(x1);
    toy_free(&m);
}

START_TEST(test_chunked_equals_full) { check_chunk_invariance(0.0); }
END_TEST

START_TEST(test_chunked_equals_full_with_dropout) { check_chunk_invariance(0.3); }
END_TEST

/* Row-blocked loss = plain CE composition, values and gradients. */
static gc_tensor *plain_clip_loss(gc_tensor *img, gc_tensor *txt, gc_tensor *ls)
{
    int64_t B = img->shape[0];
    gc_tensor *i_n = gc_l2normalize(img, 1e-12), *t_n = gc_l2normalize(txt, 1e-12);
    gc_tensor *lt = gc_mul(gc_matmul(t_n, i_n, false, true), gc_exp(ls));
    int64_t *lab = malloc(sizeof(int64_t) * (size_t)B);
    for (int64_t i = 0; i < B; i++) lab[i] = i;
    gc_tensor *labels = gc_pool_add(gc_tensor_from_data(GC_I64, GC_CPU, 1, GC_SHAPE(B), lab));
    free(lab);
    gc_tensor *a = gc_cross_entropy(lt, labels), *b = gc_cross_entropy(gc_contiguous(gc_transpose(lt, 0, 1)), labels);
    return gc_scale(gc_add(a, b), 0.5);
}

static gc_tensor *f_plain(gc_tensor *const *in, void *ctx) { (void)ctx; return plain_clip_loss(in[0], in[1], in[2]); }
static gc_tensor *f_blocked(gc_tensor *const *in, void *ctx) { return gc_clip_loss(in[0], in[1], in[2], *(int64_t *)ctx); }

START_TEST(test_blocked_loss_matches_plain)
{
    gc_tensor *img = gc_test_param(2, GC_SHAPE(7, 5), 1, 1.0), *txt = gc_test_param(2, GC_SHAPE(7, 5), 2, 1.0);
    float s = 2.0f;
    gc_tensor *ls = gc_tensor_from_data(GC_F32, GC_CPU, 0, NULL, &s);
    gc_tensor_requires_grad(ls, true);
    gc_tensor *in[3] = {img, txt, ls};
    double ref[80], got[80];
    for (int64_t blk = 0; blk <= 7; blk += (blk ? 3 : 1)) { /* 0 (plain), 1, 4, 7 */
        gc_pool *p = gc_pool_push();
        gc_tape *t = gc_tape_init();
        gc_tape_begin(t);
        for (int i = 0; i < 3; i++) gc_tensor_zero_grad(in[i]);
        gc_tensor *l = blk ? f_blocked(in, &blk) : f_plain(in, NULL);
        gc_tape_end(t);
        ck_assert_ptr_nonnull(l);
        ck_assert_int_eq(gc_backward(t, 1, &l, NULL), GC_OK);
        gc_tape_free(t);
        double *o = blk ? got : ref;
        gc_tensor_item(l, &o[0]);
        gc_tensor_to_host_f64(gc_tensor_grad(img), o + 1);
        gc_tensor_to_host_f64(gc_tensor_grad(txt), o + 36);
        gc_tensor_to_host_f64(gc_tensor_grad(ls), o + 71);
        gc_pool_pop(p);
        if (blk) {
            for (int i = 0; i < 72; i++) ck_assert_double_eq_tol(got[i], ref[i], 1e-5 + 1e-4 * fabs(ref[i]));
        }
    }
    int64_t blk = 3;
    GC_ASSERT_GRADCHECK(f_blocked, &blk, 3, in, NULL);
    gc_tensor_release(img);
    gc_tensor_release(txt);
    gc_tensor_release(ls);
}
END_TEST

static gc_tensor *ignoring_loss(void *user, int n, gc_tensor *const *reps)
{
    (void)user;
    (void)n;
    return gc_sum(reps[0]); /* tower 1 gets no gradient */
}

START_TEST(test_tower_without_gradient_is_an_error)
{
    toy m;
    toy_init(&m, 0);
    gc_tensor *x0 = gc_test_randn(2, GC_SHAPE(4, 5), 1, 1.0), *x1 = gc_test_randn(2, GC_SHAPE(4, 6), 2, 1.0);
    gc_gradcache gc = {.n_towers = 2, .loss = ignoring_loss, .use_cache = true};
    gc.towers[0] = (gc_gradcache_tower){{tower0, &m, "query"}, 2, 1, {x0}};
    gc.towers[1] = (gc_gradcache_tower){{tower1, &m, "document"}, 2, 1, {x1}};
    gc_gradcache_result res;
    ck_assert_int_eq(gc_gradcache_step(&gc, (gc_rand_context){1, 0, 0}, &res), GC_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(gc_error_message(), "document"));
    gc_error_clear();
    /* a batch-size mismatch between a tower's inputs is named too */
    gc_tensor *bad = gc_test_randn(2, GC_SHAPE(3, 5), 3, 1.0);
    gc.towers[0].n_inputs = 2;
    gc.towers[0].inputs[1] = bad;
    ck_assert_int_eq(gc_gradcache_step(&gc, (gc_rand_context){1, 0, 0}, &res), GC_ERR_SHAPE);
    gc_tensor_release(bad);
    gc_tensor_release(x0);
    gc_tensor_release(x1);
    toy_free(&m);
}
END_TEST

/* Inputs staged a chunk ahead (gc_gradcache_tower.upload; on the CPU a staged input is the
 * view itself): the same gradients bit for bit as views. A tower that fails at any of its
 * calls, with the next chunk's inputs staged, makes the step fail with its message (the
 * memcheck suite would see a staged input left behind), and the next step is whole. On a
 * machine without a GPU, inputs staged for one fail the step the same way. */
START_TEST(test_staged_inputs)
{
    toy m;
    toy_init(&m, 0.2);
    gc_tensor *x0 = gc_test_randn(2, GC_SHAPE(10, 5), 1, 1.0), *x1 = gc_test_randn(2, GC_SHAPE(10, 6), 2, 1.0);
    static double ref[2000], got[2000];
    int n;
    run(&m, x0, x1, 3, 4, true, false, ref, &n);
    gc_tensor *ps[7] = {m.w1[0], m.b1[0], m.w2[0], m.w1[1], m.b1[1], m.w2[1], scale_param};
    /* 13 calls: 3 + 4 chunks in phase 1, then 3 + 3 replays (not tower 0's kept chunk) */
    for (int fail_at = 0; fail_at <= 13; fail_at++) {
        for (int i = 0; i < 7; i++) gc_tensor_zero_grad(ps[i]);
        gc_gradcache gc = {.n_towers = 2, .loss = toy_loss, .use_cache = true};
        gc.towers[0] = (gc_gradcache_tower){{tower0, &m, "tower0"}, 3, 1, {x0}, 1u, GC_CPU};
        gc.towers[1] = (gc_gradcache_tower){{tower1, &m, "tower1"}, 4, 1, {x1}, 1u, GC_CPU};
        m.fail_at = fail_at, m.n_calls = 0;
        gc_gradcache_result res;
        gc_status st = gc_gradcache_step(&gc, (gc_rand_context){1234, 7, 0}, &res);
        if (fail_at) {
            ck_assert_msg(st == GC_ERR_INVALID && strstr(gc_error_message(), "fails at call"), "call %d: %s", fail_at,
                          gc_error_message());
            ck_assert_ptr_null(res.reps[0]);
            gc_error_clear();
            continue;
        }
        ck_assert_msg(st == GC_OK, "%s", gc_error_message());
        ck_assert_int_eq(m.n_calls, 13);
        gc_gradcache_result_clear(&res);
        ck_assert_int_eq(grads(&m, got), n);
        ck_assert_msg(!memcmp(got, ref, sizeof(double) * (size_t)n), "staged inputs: other gradients");
    }
    m.fail_at = 0;
    if (!gc_cuda_available()) {
        gc_gradcache gc = {.n_towers = 2, .loss = toy_loss, .use_cache = true};
        gc.towers[0] = (gc_gradcache_tower){{tower0, &m, "tower0"}, 3, 1, {x0}};
        gc.towers[1] = (gc_gradcache_tower){{tower1, &m, "tower1"}, 4, 1, {x1}, 1u, GC_CUDA0};
        gc_gradcache_result res;
        ck_assert_int_ne(gc_gradcache_step(&gc, (gc_rand_context){1234, 7, 0}, &res), GC_OK);
        ck_assert_ptr_nonnull(gc_error_message());
        printf("inputs staged for a GPU on a machine without one: %s\n", gc_error_message());
        gc_error_clear();
    }
    double again[2000];
    run(&m, x0, x1, 3, 4, true, false, again, &n); /* whole after the failures */
    ck_assert_msg(!memcmp(again, ref, sizeof(double) * (size_t)n), "a step after failed ones differs");
    gc_tensor_release(x0);
    gc_tensor_release(x1);
    toy_free(&m);
}
END_TEST

/* Chunked training does not keep activations: peak memory of the cached step is well
 * below that of the full-batch step on a wide model. */
START_TEST(test_cache_memory_is_one_chunk)
{
    toy m;
    toy_init(&m, 0);
    for (int t = 0; t < 2; t++) { /* wider hidden layer: activations dominate */
        gc_tensor_release(m.w1[t]);
        gc_tensor_release(m.b1[t]);
        gc_tensor_release(m.w2[t]);
        m.w1[t] = gc_test_param(2, GC_SHAPE(512, 5 + t), 10 + (uint64_t)t, 0.1);
        m.b1[t] = gc_test_param(1, GC_SHAPE(512), 20 + (uint64_t)t, 0.1);
        m.w2[t] = gc_test_param(2, GC_SHAPE(6, 512), 30 + (uint64_t)t, 0.1);
    }
    gc_tensor *x0 = gc_test_randn(2, GC_SHAPE(256, 5), 1, 1.0), *x1 = gc_test_randn(2, GC_SHAPE(256, 6), 2, 1.0);
    size_t peaks[3];
    for (int cache = 0; cache < 3; cache++) { /* full batch, cache, cache replaying every chunk */
        gc_gradcache gc = {.n_towers = 2, .loss = toy_loss, .use_cache = cache > 0, .replay_all = cache == 2};
        gc.towers[0] = (gc_gradcache_tower){{tower0, &m, "t0"}, 16, 1, {x0}};
        gc.towers[1] = (gc_gradcache_tower){{tower1, &m, "t1"}, 16, 1, {x1}};
        gc_memory_reset_peak(GC_CPU);
        size_t base = gc_memory_stats_get(GC_CPU).current;
        gc_gradcache_result res;
        ck_assert_int_eq(gc_gradcache_step(&gc, (gc_rand_context){1, 0, 0}, &res), GC_OK);
        gc_gradcache_result_clear(&res);
        peaks[cache] = gc_memory_stats_get(GC_CPU).peak - base;
    }
    ck_assert_msg(peaks[1] * 4 < peaks[0], "cached peak %zu vs full %zu", peaks[1], peaks[0]);
    /* keeping tower 0's last chunk from phase 1 keeps one chunk's graph alive, as the replay does */
    ck_assert_msg(peaks[1] <= peaks[2], "cached peak %zu, replaying every chunk %zu", peaks[1], peaks[2]);
    gc_tensor_release(x0);
    gc_tensor_release(x1);
    toy_free(&m);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gradcache");
    TCase *tc = gc_test_tcase("gradcache");
    tcase_add_test(tc, test_chunked_equals_full);
    tcase_add_test(tc, test_chunked_equals_full_with_dropout);
    tcase_add_test(tc, test_blocked_loss_matches_plain);
    tcase_add_test(tc, test_tower_without_gradient_is_an_error);
    tcase_add_test(tc, test_cache_memory_is_one_chunk);
    tcase_add_test(tc, test_staged_inputs);
    suite_add_tcase(s, tc);
    return gc_test_run(s);
}
