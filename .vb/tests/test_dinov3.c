/* DINOv3 against HuggingFace transformers: the fixtures in tests/fixtures/dinov3_* hold
 * tiny random DINOv3ViTModels saved by transformers, two views of a batch of images,
 * and float64 references of the outputs, of a two-view contrastive loss (symmetric
 * InfoNCE at temperature 0.1 on the L2-normalised class tokens) and of every parameter
 * gradient of it (tests/fixtures/gen_dinov3_fixtures.py). Here, in f32 on the CPU,
 * through the gradient cache with no chunking and with several chunk sizes. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../autograd/gc_optim.h"
#include "../gradcache/gc_clip_loss.h"
#include "../gradcache/gc_gradcache.h"
#include "../models/gc_dinov3.h"
#include "../models/gc_safetensors.h"
#include "gc_test.h"

#ifndef GC_FIXTURES_DIR
#error "GC_FIXTURES_DIR must be defined by the build"
#endif

static const char *CASES[] = {"dinov3_reg4", "dinov3_noreg_rect"};
#define N_CASES 2
#define TEMPERATURE 0.1

/* GC_TEST_DEVICE=cuda and GC_TEST_DTYPE=bf16 run the same comparisons on the GPU;
 * the tolerance follows the dtype. */
static gc_dinov3_options test_options(void)
{
    return (gc_dinov3_options){.device = gc_test_device(), .dtype = gc_test_dtype()};
}

/* bf16: about 1.5x the error PyTorch itself shows on the CLIP fixtures in pure bf16
 * (tests/fixtures/torch_bf16_error.py); f32 must agree to 1e-4. */
static double tolerance(void) { return test_options().dtype == GC_BF16 ? 5e-2 : 1e-4; }

typedef struct fixture {
    gc_dinov3 *m;
    gc_tensor *pa, *pb; /* the two views [B, 3, H, W] f32 on the CPU */
    gc_test_refs ref;
} fixture;

static void fixture_open(fixture *f, const char *name, const gc_dinov3_options *opt)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/%s", GC_FIXTURES_DIR, name);
    gc_dinov3_options o = opt ? *opt : test_options();
    ck_assert_msg(gc_dinov3_load(&f->m, dir, &o) == GC_OK, "%s: %s", name, gc_error_message());
    gc_test_load_inputs(dir, "pixel_values", GC_F32, &f->pa, "pixel_values_b", GC_F32, &f->pb);
    gc_test_refs_open(&f->ref, dir, true);
}

static void fixture_close(fixture *f)
{
    gc_dinov3_free(f->m);
    gc_tensor_release(f->pa);
    gc_tensor_release(f->pb);
    gc_test_refs_close(&f->ref);
}

/* gc_test_ref_err (an absolute floor for tiny gradients; a parameter with no gradient counts as
 * zeros: the mask token, which HF uses only with bool_masked_pos, and whose reference is zero) */
static double check(fixture *f, const char *label, const char *name, const gc_tensor *got)
{
    return gc_test_ref_check(&f->ref, label, name, got, tolerance());
}

/* ---------------------------------------------------------------- the forward */

START_TEST(test_forward_matches_transformers)
{
    fixture f;
    fixture_open(&f, CASES[_i], NULL);
    bool prev = gc_grad_set_enabled(false);
    gc_pool *p = gc_pool_push();
    gc_tensor *h = gc_dinov3_forward(f.m, f.pa);
    ck_assert_msg(h != NULL, "%s", gc_error_message());
    const gc_dinov3_config *c = gc_dinov3_get_config(f.m);
    int64_t L = 1 + c->registers + (f.pa->shape[2] / c->patch) * (f.pa->shape[3] / c->patch);
    ck_assert_int_eq(h->ndim, 3);
    ck_assert_int_eq(h->shape[1], L);
    double worst = check(&f, CASES[_i], "last_hidden_state", h);
    gc_tensor *ya = gc_dinov3_encode(f.m, f.pa), *yb = gc_dinov3_encode(f.m, f.pb);
    ck_assert_msg(ya && yb, "%s", gc_error_message());
    worst = fmax(worst, check(&f, CASES[_i], "pooler_output", ya));
    worst = fmax(worst, check(&f, CASES[_i], "pooler_output_b", yb));
    gc_pool_pop(p);
    gc_grad_set_enabled(prev);
    printf("%-40s forward: worst per-tensor relative error %.2e\n", CASES[_i], worst);
    ck_assert_msg(worst < tolerance(), "%s: forward differs from transformers by %.3g", CASES[_i], worst);
    fixture_close(&f);
}
END_TEST

/* ---------------------------------------------------------------- two views through the gradient cache */

typedef struct task {
    gc_tensor *logit_scale; /* [] f32 = log(1 / temperature), no gradient */
    int64_t block_rows;
} task;

static gc_tensor *tower(void *m, int n, gc_tensor *const *in) { (void)n; return gc_dinov3_encode(m, in[0]); }

static gc_tensor *two_view_loss(void *user, int n, gc_tensor *const *reps)
{
    task *t = user;
    (void)n;
    gc_tensor *a = gc_l2normalize(gc_cast(reps[0], GC_F32), 1e-12), *b = gc_l2normalize(gc_cast(reps[1], GC_F32), 1e-12);
    return gc_infonce(a, b, t->logit_scale, t->block_rows);
}

static void task_init(task *t, gc_gradcache *gc, gc_dinov3 *m, gc_tensor *pa, gc_tensor *pb, int64_t chunk)
{
    float ls = (float)log(1.0 / TEMPERATURE);
    t->logit_scale = gc_tensor_from_data(GC_F32, test_options().device, 0, NULL, &ls);
    ck_assert(t->logit_scale);
    t->block_rows = 3; /* exercise the row-blocked loss too */
    memset(gc, 0, sizeof *gc);
    gc->n_towers = 2;
    gc->towers[0] = (gc_gradcache_tower){{tower, m, "view a"}, chunk, 1, {pa}};
    gc->towers[1] = (gc_gradcache_tower){{tower, m, "view b"}, chunk, 1, {pb}};
    gc->loss = two_view_loss;
    gc->loss_user = t;
    gc->use_cache = chunk > 0;
}

/* one step; returns the worst relative error over every compared tensor */
static double compare_step(void *vf, int64_t chunk, const char *label)
{
    fixture *f = vf;
    gc_params *ps = gc_dinov3_params(f->m);
    ck_assert_int_eq(gc_params_zero_grad(ps), GC_OK);
    task t;
    gc_gradcache gc;
    task_init(&t, &gc, f->m, f->pa, f->pb, chunk);
    gc_gradcache_result res;
    ck_assert_msg(gc_gradcache_step(&gc, (gc_rand_context){0, 0, 0}, &res) == GC_OK, "%s: %s", label, gc_error_message());
    gc_pool *p = gc_pool_push();
    float lf = (float)res.loss;
    gc_tensor *loss = gc_pool_add(gc_tensor_from_data(GC_F32, GC_CPU, 1, GC_SHAPE(1), &lf));
    double worst = check(f, label, "loss", loss);
    worst = fmax(worst, check(f, label, "pooler_output", res.reps[0]));
    worst = fmax(worst, check(f, label, "pooler_output_b", res.reps[1]));
    worst = fmax(worst, check(f, label, "embeds_a", gc_l2normalize(res.reps[0], 1e-12)));
    worst = fmax(worst, check(f, label, "embeds_b", gc_l2normalize(res.reps[1], 1e-12)));
    worst = fmax(worst, gc_test_ref_check_grads(&f->ref, ps, label, tolerance()));
    gc_pool_pop(p);
    printf("%-40s worst per-tensor relative error %.2e (loss %.10f)\n", label, worst, res.loss);
    gc_gradcache_result_clear(&res);
    gc_tensor_release(t.logit_scale);
    return worst;
}

START_TEST(test_matches_transformers)
{
    fixture f;
    fixture_open(&f, CASES[_i], NULL);
    int64_t B = f.pa->shape[0];
    int64_t chunks[4] = {0, 1, B / 2 + 1 /* uneven */, B};
    gc_test_check_chunks(compare_step, &f, CASES[_i], chunks, 4, tolerance());
    fixture_close(&f);
}
END_TEST

/* Activation checkpointing recomputes each block in the backward: same refs. */
START_TEST(test_checkpointing_matches_transformers)
{
    gc_dinov3_options o = test_options();
    o.checkpointing = true;
    fixture f;
    fixture_open(&f, CASES[_i], &o);
    int64_t chunks[2] = {0, 2};
    char what[128];
    snprintf(what, sizeof what, "%s checkpointed,", CASES[_i]);
    gc_test_check_chunks(compare_step, &f, what, chunks, 2, tolerance());
    fixture_close(&f);
}
END_TEST

/* gradients of all parameters, flattened, after one step under `rc` (chunk <= 0: no cache) */
static double *step_grads_rc(gc_dinov3 *m, gc_tensor *pa, gc_tensor *pb, int64_t chunk, gc_rand_context rc,
                             double *loss)
{
    gc_params *ps = gc_dinov3_params(m);
    ck_assert_int_eq(gc_params_zero_grad(ps), GC_OK);
    task t;
    gc_gradcache gc;
    task_init(&t, &gc, m, pa, pb, chunk);
    gc_gradcache_result res;
    ck_assert_msg(gc_gradcache_step(&gc, rc, &res) == GC_OK, "%s", gc_error_message());
    *loss = res.loss;
    gc_gradcache_result_clear(&res);
    gc_tensor_release(t.logit_scale);
    return gc_test_flat_grads(ps);
}

static double *step_grads(gc_dinov3 *m, gc_tensor *pa, gc_tensor *pb, int64_t chunk, double *loss)
{
    return step_grads_rc(m, pa, pb, chunk, (gc_rand_context){0, 0, 0}, loss);
}

/* Views of different grid shapes but the same number of patches (24x40 and 40x24) in
 * one graph: a checkpointed block must recompute with its own view's rotary tables. */
START_TEST(test_checkpointing_two_grids)
{
    gc_dinov3_options o = test_options();
    fixture f;
    fixture_open(&f, "dinov3_noreg_rect", &o);
    gc_pool *p = gc_pool_push();
    gc_tensor *pt = gc_tensor_to(gc_transpose(f.pb, 2, 3), GC_CPU, GC_F32); /* [B, 3, 40, 24] */
    gc_pool_pop(p);
    ck_assert(pt);
    int64_t n = gc_params_count(gc_dinov3_params(f.m), false);
    double l0, l1;
    double *ref = step_grads(f.m, f.pa, pt, 0, &l0);
    gc_dinov3 *mc;
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/dinov3_noreg_rect", GC_FIXTURES_DIR);
    o.checkpointing = true;
    ck_assert_msg(gc_dinov3_load(&mc, dir, &o) == GC_OK, "%s", gc_error_message());
    double *got = step_grads(mc, f.pa, pt, 0, &l1);
    double e = gc_test_vec_rel_err(got, ref, n);
    printf("two grids, checkpointed vs not: loss %.10f / %.10f, gradients rel err %.2e\n", l1, l0, e);
    ck_assert_msg(e < tolerance() / 10 && fabs(l0 - l1) < tolerance() / 10, "checkpointed gradients differ by %.3g", e);
    free(ref);
    free(got);
    gc_dinov3_free(mc);
    gc_tensor_release(pt);
    fixture_close(&f);
}
END_TEST

/* ---------------------------------------------------------------- mean pooling */

/* The mean of the patch tokens (not the class and register tokens) of last_hidden_state;
 * gradients through it do not depend on the chunk size. */
START_TEST(test_mean_pooling)
{
    gc_dinov3_options o = test_options();
    o.pool = GC_DINOV3_POOL_MEAN;
    fixture f;
    fixture_open(&f, CASES[_i], &o);
    const gc_dinov3_config *c = gc_dinov3_get_config(f.m);
    gc_tensor *h = gc_st_load(f.ref.file, "last_hidden_state", GC_F64, GC_CPU);
    int64_t B = h->shape[0], L = h->shape[1], D = h->shape[2], R = c->registers;
    double *want = calloc((size_t)(B * D), sizeof *want);
    const double *hd = gc_tensor_data(h);
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 1 + R; t < L; t++)
            for (int64_t d = 0; d < D; d++) want[b * D + d] += hd[(b * L + t) * D + d] / (double)(L - 1 - R);
    gc_tensor *w = gc_tensor_from_data(GC_F64, GC_CPU, 2, GC_SHAPE(B, D), want);
    bool prev = gc_grad_set_enabled(false);
    gc_pool *p = gc_pool_push();
    gc_tensor *y = gc_dinov3_encode(f.m, f.pa);
    ck_assert_msg(y != NULL, "%s", gc_error_message());
    ck_assert_int_eq(y->ndim, 2);
    ck_assert_int_eq(y->shape[1], D);
    double e = gc_test_rel_err(y, w);
    gc_pool_pop(p);
    gc_grad_set_enabled(prev);
    printf("%-40s mean pooling: rel err %.2e\n", CASES[_i], e);
    ck_assert_msg(e < tolerance(), "mean of the patch tokens differs by %.3g", e);
    int64_t n = gc_params_count(gc_dinov3_params(f.m), false);
    double l0, l1;
    double *g0 = step_grads(f.m, f.pa, f.pb, 0, &l0), *g1 = step_grads(f.m, f.pa, f.pb, 1, &l1);
    e = gc_test_vec_rel_err(g1, g0, n);
    printf("%-40s mean pooling: loss %.6f, chunk 1 vs none: gradients rel err %.2e\n", CASES[_i], l0, e);
    ck_assert_msg(isfinite(l0) && fabs(l0 - l1) < tolerance() / 10 && e < tolerance() / 10,
                  "chunk 1 vs none: loss %.8f vs %.8f, gradients differ by %.3g", l1, l0, e);
    free(g0);
    free(g1);
    free(want);
    gc_tensor_release(w);
    gc_tensor_release(h);
    fixture_close(&f);
}
END_TEST

/* The class-token embedding runs the last layer on the class token's row alone: the same
 * numbers as row 0 of the whole forward (bit for bit on the CPU, where no GEMM depends on
 * the row count) and, seeded on that row, the same gradient of every parameter, from a
 * tape that holds less. With and without checkpointing. */
static double *class_row_grads(gc_dinov3 *m, gc_tensor *px, gc_tensor *g, bool whole, double *out, size_t *saved)
{
    gc_params *ps = gc_dinov3_params(m);
    ck_assert_int_eq(gc_params_zero_grad(ps), GC_OK);
    gc_tape *t = gc_tape_init();
    gc_tape_begin(t);
    gc_pool *p = gc_pool_push();
    gc_tensor *y = whole ? gc_dinov3_forward(m, px) : gc_dinov3_encode(m, px);
    ck_assert_msg(y != NULL, "%s", gc_error_message());
    if (whole) y = gc_view(gc_slice(y, 1, 0, 1), 2, GC_SHAPE(y->shape[0], y->shape[2]));
    gc_tape_end(t);
    *saved = gc_tape_saved_bytes(t);
    ck_assert_int_eq(gc_tensor_to_host_f64(y, out), GC_OK);
    gc_tensor *gd = gc_tensor_to(g, y->device, y->dtype);
    ck_assert_msg(gc_backward(t, 1, &y, &gd) == GC_OK, "%s", gc_error_message());
    gc_tensor_release(gd);
    gc_pool_pop(p);
    gc_tape_free(t);
    return gc_test_flat_grads(ps);
}

START_TEST(test_encode_class_row)
{
    for (int ckpt = 0; ckpt < 2; ckpt++) {
        gc_dinov3_options o = test_options();
        o.checkpointing = ckpt;
        fixture f;
        fixture_open(&f, CASES[_i], &o);
        int64_t B = f.pa->shape[0], D = gc_dinov3_get_config(f.m)->hidden, n = gc_params_count(gc_dinov3_params(f.m), false);
        gc_tensor *g = gc_test_randn(2, GC_SHAPE(B, D), 17, 1.0);
        double *y[2], *gr[2];
        size_t saved[2];
        for (int whole = 0; whole < 2; whole++) {
            y[whole] = calloc((size_t)(B * D), sizeof(double));
            gr[whole] = class_row_grads(f.m, f.pa, g, whole, y[whole], &saved[whole]);
        }
        double ey = gc_test_vec_rel_err(y[0], y[1], B * D), eg = gc_test_vec_rel_err(gr[0], gr[1], n);
        printf("%-40s class row%s: output rel err %.2e, gradients %.2e; the tape holds %zu bytes, %zu whole\n", CASES[_i],
               ckpt ? " (checkpointed)" : "", ey, eg, saved[0], saved[1]);
        ck_assert_uint_lt(saved[0], saved[1]);
        if (o.device.type == GC_DEVICE_CPU) {
            ck_assert_msg(!memcmp(y[0], y[1], sizeof(double) * (size_t)(B * D)), "the class row differs");
            /* q, k and v: one GEMM on every row, three on the class row (the sums of their
             * input gradients in another order) */
            ck_assert_msg(eg < 1e-6, "class row: gradients differ by %.3g", eg);
        } else {
            ck_assert_msg(ey < tolerance() / 10 && eg < tolerance() / 10, "class row: output %.3g, gradients %.3g", ey, eg);
        }
        for (int whole = 0; whole < 2; whole++) free(y[whole]), free(gr[whole]);
        gc_tensor_release(g);
        fixture_close(&f);
    }
}
END_TEST

/* ---------------------------------------------------------------- training */

/* AdamW steps through the gradient cache lower the loss; the mask token (no gradient,
 * frozen) stays as loaded. */
START_TEST(test_train_steps)
{
    fixture f;
    fixture_open(&f, "dinov3_reg4", NULL);
    gc_params *ps = gc_dinov3_params(f.m);
    gc_param *mask = gc_params_find(ps, "embeddings.mask_token");
    ck_assert(mask && !mask->trainable);
    double mask0[64];
    ck_assert(gc_tensor_numel(mask->value) <= 64);
    ck_assert_int_eq(gc_tensor_to_host_f64(mask->value, mask0), GC_OK);
    gc_adamw opt;
    gc_adamw_config ac = {.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.05, .max_grad_norm = 1.0};
    ck_assert_int_eq(gc_adamw_init(&opt, ps, &ac), GC_OK);
    double first = 0, last = 0;
    for (int step = 0; step < 6; step++) {
        ck_assert_int_eq(gc_params_zero_grad(ps), GC_OK);
        task t;
        gc_gradcache gc;
        task_init(&t, &gc, f.m, f.pa, f.pb, 3);
        gc_gradcache_result res;
        ck_assert_msg(gc_gradcache_step(&gc, (gc_rand_context){1, (uint32_t)step, 0}, &res) == GC_OK, "%s",
                      gc_error_message());
        if (!step) first = res.loss;
        last = res.loss;
        gc_gradcache_result_clear(&res);
        gc_tensor_release(t.logit_scale);
        ck_assert_msg(gc_adamw_step(&opt, ac.lr) == GC_OK, "%s", gc_error_message());
        ck_assert_int_eq(gc_params_sync_values(ps), GC_OK);
    }
    printf("dinov3_reg4 AdamW: loss %.6f -> %.6f in 6 steps\n", first, last);
    ck_assert_msg(last < first, "loss did not go down: %.6f -> %.6f", first, last);
    double mask1[64];
    ck_assert_int_eq(gc_tensor_to_host_f64(mask->value, mask1), GC_OK);
    ck_assert(!memcmp(mask0, mask1, sizeof(double) * (size_t)gc_tensor_numel(mask->value)));
    gc_adamw_free(&opt);
    fixture_close(&f);
}
END_TEST

/* ---------------------------------------------------------------- save / load */

/* Save and reload: same config, same parameters, same names as the transformers file. */
START_TEST(test_save_reload)
{
    fixture f;
    fixture_open(&f, CASES[_i], NULL);
    char dir[] = "/tmp/gc_dinov3_save_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    ck_assert_msg(gc_dinov3_save(f.m, dir) == GC_OK, "%s", gc_error_message());
    gc_dinov3 *m2;
    gc_dinov3_options o = test_options();
    ck_assert_msg(gc_dinov3_load(&m2, dir, &o) == GC_OK, "%s", gc_error_message());
    const gc_dinov3_config *a = gc_dinov3_get_config(f.m), *b = gc_dinov3_get_config(m2);
    ck_assert(a->hidden == b->hidden && a->layers == b->layers && a->heads == b->heads &&
              a->intermediate == b->intermediate && a->patch == b->patch && a->registers == b->registers &&
              a->act == b->act && a->eps == b->eps && a->rope_theta == b->rope_theta && a->layerscale == b->layerscale &&
              a->query_bias == b->query_bias && a->key_bias == b->key_bias && a->value_bias == b->value_bias &&
              a->proj_bias == b->proj_bias && a->mlp_bias == b->mlp_bias && a->pos_embed_rescale == b->pos_embed_rescale &&
              a->pos_embed_shift == b->pos_embed_shift && a->pos_embed_jitter == b->pos_embed_jitter);
    ck_assert(a->pos_embed_rescale == 0); /* null in the fixture's config.json: None, not the default 2.0 */
    gc_params *pa = gc_dinov3_params(f.m), *pb = gc_dinov3_params(m2);
    ck_assert_int_eq(pa->n, pb->n);
    for (int i = 0; i < pa->n; i++) {
        ck_assert_str_eq(pa->items[i].name, pb->items[i].name);
        ck_assert_double_eq(gc_test_rel_err(pa->items[i].value, pb->items[i].value), 0);
    }
    /* the saved names are transformers' (every non-empty tensor of the fixture's file) */
    char src[1100];
    snprintf(src, sizeof src, "%s/%s", GC_FIXTURES_DIR, CASES[_i]);
    gc_st_dir *d;
    ck_assert_int_eq(gc_st_dir_open(src, &d), GC_OK);
    int nonempty = 0;
    for (int i = 0; i < gc_st_dir_count(d); i++) {
        const char *nm = gc_st_dir_name_at(d, i);
        gc_st_file *sf;
        const gc_st_entry *e;
        ck_assert_int_eq(gc_st_dir_lookup(d, nm, &sf, &e), GC_OK);
        int64_t n = 1;
        for (int j = 0; j < e->ndim; j++) n *= e->shape[j];
        if (!n) continue;
        nonempty++;
        ck_assert_msg(gc_params_find(pb, nm) != NULL, "%s not saved", nm);
    }
    ck_assert_int_eq(nonempty, pb->n);
    gc_st_dir_close(d);
    gc_dinov3_free(m2);
    gc_test_rm_rf(dir);
    fixture_close(&f);
}
END_TEST

/* A checkpoint that does not fit names every problem; so do a bad config and bad pixels. */
/* gc_dinov3_load for gc_test_expect_config_errors (ctx: the options); frees what loads */
static gc_status load_dinov3(const char *dir, void *ctx)
{
    gc_dinov3 *m = NULL;
    gc_status st = gc_dinov3_load(&m, dir, ctx);
    if (st == GC_OK) gc_dinov3_free(m);
    return st;
}

START_TEST(test_bad_checkpoints_are_named)
{
    char dir[] = "/tmp/gc_dinov3_bad_XXXXXX", src[1100], path[1200];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    gc_dinov3 *m;
    gc_dinov3_options o = {.device = GC_CPU, .dtype = GC_F32};
    snprintf(src, sizeof src, "%s/dinov3_reg4", GC_FIXTURES_DIR);
    gc_test_write_variant(src, dir, "layer.1.mlp.up_proj.weight", "embeddings.register_tokens", "layer.0.extra.weight");
    ck_assert_int_eq(gc_dinov3_load(&m, dir, &o), GC_ERR_FORMAT);
    const char *msg = gc_error_message();
    ck_assert_msg(strstr(msg, "missing layer.1.mlp.up_proj.weight"), "%s", msg);
    ck_assert_msg(strstr(msg, "embeddings.register_tokens is [1, 5, 32]"), "%s", msg);
    ck_assert_msg(strstr(msg, "unexpected layer.0.extra.weight"), "%s", msg);
    ck_assert_msg(!strchr(msg, '\n'), "the message is one line");
    gc_error_clear();
    /* no registers in the config: an empty register_tokens is fine, a non-empty one is not */
    snprintf(src, sizeof src, "%s/dinov3_noreg_rect", GC_FIXTURES_DIR);
    gc_test_write_variant(src, dir, NULL, "embeddings.register_tokens", NULL);
    ck_assert_int_eq(gc_dinov3_load(&m, dir, &o), GC_ERR_FORMAT);
    ck_assert_msg(strstr(gc_error_message(), "unexpected embeddings.register_tokens"), "%s", gc_error_message());
    gc_error_clear();
    /* a broken config.json is named with the file and the key */
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *fp = fopen(path, "w");
    fputs("{\"model_type\": \"dinov3_vit\", \"hidden_size\": \"wide\"}", fp);
    fclose(fp);
    ck_assert_int_ne(gc_dinov3_load(&m, dir, &o), GC_OK);
    ck_assert_msg(strstr(gc_error_message(), "config.json") && strstr(gc_error_message(), "hidden_size"), "%s",
                  gc_error_message());
    gc_error_clear();
    /* head_dim must be a multiple of 4 (2-D RoPE splits it in four) */
    fp = fopen(path, "w");
    fputs("{\"model_type\": \"dinov3_vit\", \"hidden_size\": 24, \"num_attention_heads\": 4}", fp);
    fclose(fp);
    ck_assert_int_eq(gc_dinov3_load(&m, dir, &o), GC_ERR_FORMAT);
    ck_assert_msg(strstr(gc_error_message(), "config.json"), "%s", gc_error_message());
    gc_error_clear();
    /* a value out of its range is named with its key, before any parameter is allocated
     * (a size of 2^40 fails at once, not after an out-of-memory) */
    static const char *const bad_values[][2] = {
        {"\"num_register_tokens\": 1099511627776", "num_register_tokens 1099511627776 is outside"},
        {"\"hidden_size\": 4294967296, \"num_attention_heads\": 1", "hidden_size 4294967296 is outside"},
        {"\"num_channels\": -3", "num_channels -3 is outside"},
        {"\"drop_path_rate\": 2.0", "drop_path_rate 2 is outside"},
        {"\"drop_path_rate\": -0.5", "drop_path_rate -0.5 is outside"},
        {"\"attention_dropout\": 2.0", "attention_dropout 2 is outside"},
        {"\"pos_embed_rescale\": -1", "pos_embed_rescale -1 is outside"},
        {"\"pos_embed_jitter\": 1e308", "pos_embed_jitter 1e+308 is outside"},
        {"\"image_size\": 0", "image_size 0 is outside"},
    };
    gc_test_expect_config_errors(dir, "{\"model_type\": \"dinov3_vit\", \"hidden_size\": 32, \"num_attention_heads\": 4, ",
                                 (int)(sizeof bad_values / sizeof bad_values[0]), bad_values, load_dinov3, &o);
    gc_test_rm_rf(dir);
    /* pixels that are not a whole number of patches */
    fixture f;
    fixture_open(&f, "dinov3_reg4", &o);
    gc_pool *p = gc_pool_push();
    gc_tensor *bad = gc_pool_add(gc_tensor_zeros(GC_F32, GC_CPU, 4, GC_SHAPE(2, 3, 30, 32)));
    ck_assert_ptr_null(gc_dinov3_encode(f.m, bad));
    ck_assert_int_eq(gc_error_code(), GC_ERR_SHAPE);
    ck_assert_msg(strstr(gc_error_message(), "pixel_values [2, 3, 30, 32]"), "%s", gc_error_message());
    gc_error_clear();
    gc_pool_pop(p);
    fixture_close(&f);
}
END_TEST

/* A named config initialises and encodes any multiple of the patch size. */
START_TEST(test_init_named)
{
    gc_dinov3_config c;
    ck_assert_int_eq(gc_dinov3_config_named("dinov3-tiny", &c), GC_OK);
    ck_assert_int_ne(gc_dinov3_config_named("dinov4", &c), GC_OK);
    gc_error_clear();
    ck_assert_int_eq(gc_dinov3_config_named("dinov3-vit-b16", &c), GC_OK);
    ck_assert(c.hidden == 768 && c.layers == 12 && c.registers == 4 && !c.key_bias && c.pos_embed_rescale == 2.0);
    ck_assert_int_eq(gc_dinov3_config_named("dinov3-tiny", &c), GC_OK);
    gc_dinov3_options o = test_options();
    gc_dinov3 *m;
    ck_assert_msg(gc_dinov3_init(&m, &c, &o, 7) == GC_OK, "%s", gc_error_message());
    bool prev = gc_grad_set_enabled(false);
    gc_pool *p = gc_pool_push();
    gc_tensor *x = gc_pool_add(gc_test_randn(4, GC_SHAPE(2, 3, 16, 40), 3, 1.0));
    gc_tensor *y = gc_dinov3_encode(m, x);
    ck_assert_msg(y != NULL, "%s", gc_error_message());
    ck_assert_int_eq(y->shape[0], 2);
    ck_assert_int_eq(y->shape[1], c.hidden);
    ck_assert(isfinite(gc_test_norm(y)) && gc_test_norm(y) > 0);
    gc_pool_pop(p);
    gc_grad_set_enabled(prev);
    gc_dinov3_free(m);
}
END_TEST

/* ---------------------------------------------------------------- train-mode randomness */

/* Runs that must agree (chunkings, replays, eval vs no option) differ by rounding only:
 * 1e-6 in f32 on the CPU; runs that must differ do so by far more. */
static double same_tol(void)
{
    gc_dinov3_options o = test_options();
    return o.dtype == GC_F32 && o.device.type == GC_DEVICE_CPU ? 1e-6 : tolerance() / 10;
}
static double diff_tol(void) { return fmax(1e-3, 10 * same_tol()); }

typedef struct train_opts { double shift, jitter, rescale, drop_path, attn_dropout; } train_opts;

/* The fixture's weights and config with the train-mode options `a` (0: None), through
 * config.json (saved, reloaded: the options survive the round trip). */
static gc_dinov3 *load_variant(const char *name, train_opts a, bool checkpointing)
{
    char src[1100], dir[] = "/tmp/gc_dinov3_aug_XXXXXX", path[1200], from[1200];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(src, sizeof src, "%s/%s", GC_FIXTURES_DIR, name);
    gc_dinov3_config c;
    snprintf(path, sizeof path, "%s/config.json", src);
    ck_assert_msg(gc_dinov3_config_load(path, &c) == GC_OK, "%s", gc_error_message());
    c.pos_embed_shift = a.shift;
    c.pos_embed_jitter = a.jitter;
    c.pos_embed_rescale = a.rescale;
    c.drop_path = a.drop_path;
    c.attn_dropout = a.attn_dropout;
    snprintf(path, sizeof path, "%s/config.json", dir);
    ck_assert_msg(gc_dinov3_config_save(&c, path) == GC_OK, "%s", gc_error_message());
    snprintf(from, sizeof from, "%s/model.safetensors", src);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    ck_assert_int_eq(symlink(from, path), 0);
    gc_dinov3_options o = test_options();
    o.checkpointing = checkpointing;
    gc_dinov3 *m;
    ck_assert_msg(gc_dinov3_load(&m, dir, &o) == GC_OK, "%s", gc_error_message());
    gc_test_rm_rf(dir);
    const gc_dinov3_config *g = gc_dinov3_get_config(m);
    ck_assert(g->pos_embed_shift == a.shift && g->pos_embed_jitter == a.jitter && g->pos_embed_rescale == a.rescale &&
              g->drop_path == a.drop_path && g->attn_dropout == a.attn_dropout);
    return m;
}

/* The gradients of one step on `m` under rc with no cache (returned; free() them), and the worst
 * relative deviation from them of the gradients (*worst) and loss (*worst_loss) with chunks 1,
 * B/2 + 1 and B on `m`, and with no cache and chunk 2 on `mc` (the same model, checkpointed). */
static double *chunked_vs_none(fixture *f, gc_dinov3 *m, gc_dinov3 *mc, gc_rand_context rc, double *worst,
                               double *worst_loss)
{
    int64_t n = gc_params_count(gc_dinov3_params(m), false), B = f->pa->shape[0];
    double l0, l;
    *worst = *worst_loss = 0;
    double *ref = step_grads_rc(m, f->pa, f->pb, 0, rc, &l0);
    const int64_t chunks[5] = {1, B / 2 + 1, B, 0, 2};
    for (int c = 0; c < 5; c++) {
        double *g = step_grads_rc(c < 3 ? m : mc, f->pa, f->pb, chunks[c], rc, &l);
        *worst = fmax(*worst, gc_test_vec_rel_err(g, ref, n));
        *worst_loss = fmax(*worst_loss, fabs(l - l0) / fabs(l0));
        free(g);
    }
    return ref;
}

static const struct { const char *fixture; train_opts a; } AUG_CASES[] = {
    {"dinov3_reg4", {.rescale = 2.0}},                               /* the hub checkpoints' setting */
    {"dinov3_reg4", {.shift = 0.3, .jitter = 1.5}},
    {"dinov3_noreg_rect", {.shift = 0.2, .jitter = 1.3, .rescale = 2.0}},
};
#define N_AUG_CASES 3

/* RoPE coordinate augmentation: one draw per (seed, step), so the gradients do not
 * depend on the chunking (nor on checkpointing, which recomputes each tower's blocks
 * with that tower's coordinates), and differ from the run without it and from eval. */
START_TEST(test_rope_augmentation_chunk_invariant)
{
    fixture f;
    fixture_open(&f, AUG_CASES[_i].fixture, NULL); /* the fixture's config: no augmentation */
    gc_dinov3 *m = load_variant(AUG_CASES[_i].fixture, AUG_CASES[_i].a, false);
    gc_dinov3 *mc = load_variant(AUG_CASES[_i].fixture, AUG_CASES[_i].a, true);
    int64_t n = gc_params_count(gc_dinov3_params(m), false), B = f.pa->shape[0];
    const gc_rand_context rc = {0x5eed, 3, 0};
    double worst, worst_loss;
    double *ref = chunked_vs_none(&f, m, mc, rc, &worst, &worst_loss);
    double lo, le, ls;
    double *off = step_grads_rc(f.m, f.pa, f.pb, 0, rc, &lo);
    gc_dinov3_set_training(m, false);
    double *ev = step_grads_rc(m, f.pa, f.pb, 0, rc, &le);
    gc_dinov3_set_training(m, true);
    double *step4 = step_grads_rc(m, f.pa, f.pb, B / 2, (gc_rand_context){rc.seed, rc.step + 1, 0}, &ls);
    double e_off = gc_test_vec_rel_err(ref, off, n), e_ev = gc_test_vec_rel_err(ev, off, n);
    double e_step = gc_test_vec_rel_err(step4, ref, n);
    printf("%-18s rope aug %g/%g/%g: chunks and checkpointing vs none %.2e (loss %.2e); vs off %.2e, eval vs off %.2e, "
           "next step %.2e\n", AUG_CASES[_i].fixture, AUG_CASES[_i].a.shift, AUG_CASES[_i].a.jitter,
           AUG_CASES[_i].a.rescale, worst, worst_loss, e_off, e_ev, e_step);
    ck_assert_msg(worst < same_tol() && worst_loss < same_tol(), "chunked gradients differ by %.3g (loss %.3g)", worst,
                  worst_loss);
    ck_assert_msg(e_off > diff_tol(), "augmented gradients equal the plain ones (%.3g)", e_off);
    ck_assert_msg(e_ev < same_tol() && fabs(le - lo) < same_tol() * fabs(lo), "eval mode still augments (%.3g)", e_ev);
    ck_assert_msg(e_step > diff_tol(), "the next step drew the same coordinates (%.3g)", e_step);
    free(ref);
    free(off);
    free(ev);
    free(step4);
    gc_dinov3_free(m);
    gc_dinov3_free(mc);
    fixture_close(&f);
}
END_TEST

static float *tables_host(gc_dinov3 *m, int64_t gh, int64_t gw, gc_rand_context rc, int64_t *numel)
{
    gc_rand_context_set(rc);
    gc_tensor *c, *s;
    ck_assert_msg(gc_dinov3_rope(m, gh, gw, &c, &s) == GC_OK, "%s", gc_error_message());
    int64_t n = gc_tensor_numel(c);
    ck_assert(c->dtype == GC_F32 && c->ndim == 2 && c->shape[0] == gh * gw && gc_tensor_numel(s) == n);
    float *h = malloc(sizeof(float) * (size_t)(2 * n));
    ck_assert(gc_tensor_to_host_f32(c, h) == GC_OK && gc_tensor_to_host_f32(s, h + n) == GC_OK);
    gc_tensor_release(c);
    gc_tensor_release(s);
    *numel = 2 * n;
    return h;
}

/* worst |table - cos/sin(2 pi c' inv_freq)| with c' = ((c + shift_a) * jitter_a) * rescale
 * per axis (y: dims [0, hd/4) and [hd/2, 3hd/4), x: the others), all in double */
static double tables_err(const gc_dinov3_config *cfg, const float *t, int64_t gh, int64_t gw, const double sh[2],
                         const double jt[2], double rs)
{
    int64_t hd = cfg->hidden / cfg->heads, q = hd / 4, N = gh * gw;
    double worst = 0;
    for (int64_t i = 0; i < gh; i++)
        for (int64_t j = 0; j < gw; j++) {
            double c[2] = {2 * (i + 0.5) / (double)gh - 1, 2 * (j + 0.5) / (double)gw - 1};
            for (int a = 0; a < 2; a++) c[a] = (c[a] + sh[a]) * jt[a] * rs;
            for (int64_t d = 0; d < hd; d++) {
                int a = (d % (2 * q)) >= q; /* 0: y, 1: x */
                double ang = 2 * M_PI * c[a] * pow(cfg->rope_theta, -4.0 * (double)(d % q) / (double)hd);
                worst = fmax(worst, fabs(t[(i * gw + j) * hd + d] - cos(ang)));
                worst = fmax(worst, fabs(t[N * hd + (i * gw + j) * hd + d] - sin(ang)));
            }
        }
    return worst;
}

/* The augmentation itself: the documented draws (u_e = gc_rand_uniform(seed, step,
 * GC_DINOV3_ROPE_AUG_OP, 0, e); shift per axis, jitter per axis, one rescale for both)
 * give the rotary tables' coordinates; the same (seed, step) gives the same tables
 * whatever the sample offset, another step or seed other ones; eval mode none. */
START_TEST(test_rope_augmentation_math)
{
    const train_opts a = AUG_CASES[_i].a;
    gc_dinov3 *m = load_variant(AUG_CASES[_i].fixture, a, false);
    const gc_dinov3_config *cfg = gc_dinov3_get_config(m);
    const int64_t gh = 3, gw = 5;
    const gc_rand_context rc = {0xabcdef, 11, 3}; /* a chunk at row 3: the draw ignores the row */
    double u[5], sh[2], jt[2], rs;
    for (int e = 0; e < 5; e++) u[e] = gc_rand_uniform(rc.seed, rc.step, GC_DINOV3_ROPE_AUG_OP, 0, (uint64_t)e);
    for (int k = 0; k < 2; k++) {
        sh[k] = a.shift ? a.shift * (2 * u[k] - 1) : 0;
        jt[k] = a.jitter ? exp(log(a.jitter) * (2 * u[2 + k] - 1)) : 1;
    }
    rs = a.rescale ? exp(log(a.rescale) * (2 * u[4] - 1)) : 1;
    float fs[2], fj[2], fr;
    ck_assert(gc_dinov3_rope_augmentation(cfg, rc, fs, fj, &fr));
    for (int k = 0; k < 2; k++) ck_assert(fabs(fs[k] - sh[k]) < 1e-6 && fabs(fj[k] / jt[k] - 1) < 1e-6);
    ck_assert(fabs(fr / rs - 1) < 1e-6);
    if (a.rescale) ck_assert(rs >= 1 / a.rescale && rs <= a.rescale && fabs(rs - 1) > 1e-3);
    int64_t n;
    float *t = tables_host(m, gh, gw, rc, &n);
    double e_aug = tables_err(cfg, t, gh, gw, sh, jt, rs);
    /* the wrong order (jitter before shift) or per-axis rescale would be far off */
    const double zero[2] = {0, 0}, one[2] = {1, 1};
    double e_plain = tables_err(cfg, t, gh, gw, zero, one, 1);
    printf("%-18s rope aug %g/%g/%g: shift %.4f %.4f jitter %.4f %.4f rescale %.4f; tables vs formula %.2e "
           "(vs plain coordinates %.2e)\n", AUG_CASES[_i].fixture, a.shift, a.jitter, a.rescale, sh[0], sh[1], jt[0],
           jt[1], rs, e_aug, e_plain);
    ck_assert_msg(e_aug < 1e-5, "augmented tables differ from the formula by %.3g", e_aug);
    ck_assert_msg(e_plain > 1e-2, "the tables are not augmented (%.3g)", e_plain);
    int64_t n2;
    gc_dinov3 *m2 = load_variant(AUG_CASES[_i].fixture, a, false); /* a fresh model: nothing cached */
    /* another chunk of the batch */
    float *again = tables_host(m2, gh, gw, (gc_rand_context){rc.seed, rc.step, 0}, &n2);
    ck_assert_msg(n2 == n && !memcmp(again, t, sizeof(float) * (size_t)n), "another chunk drew other coordinates");
    free(again);
    gc_dinov3_free(m2);
    const gc_rand_context others[2] = {{rc.seed, rc.step + 1, 0}, {rc.seed + 1, rc.step, 0}};
    for (int k = 0; k < 2; k++) {
        float *o = tables_host(m, gh, gw, others[k], &n2);
        double d = 0;
        for (int64_t i = 0; i < n; i++) d = fmax(d, fabs(o[i] - t[i]));
        ck_assert_msg(d > 1e-3, "another %s drew the same coordinates", k ? "seed" : "step");
        free(o);
    }
    gc_dinov3_set_training(m, false);
    float *ev = tables_host(m, gh, gw, rc, &n2);
    double e_eval = tables_err(cfg, ev, gh, gw, zero, one, 1);
    ck_assert_msg(e_eval < 1e-5, "eval-mode tables are not the plain coordinates' (%.3g)", e_eval);
    ck_assert(!gc_dinov3_rope_augmentation(&(gc_dinov3_config){.pos_embed_rescale = 0}, rc, fs, fj, &fr));
    ck_assert(fs[0] == 0 && fs[1] == 0 && fj[0] == 1 && fj[1] == 1 && fr == 1);
    free(ev);
    free(t);
    gc_dinov3_free(m);
}
END_TEST

/* Stochastic depth: per-sample masks keyed by the sample's index in the batch, so the
 * gradients do not depend on the chunking; they differ from rate 0; eval ignores it. */
/* Under attention dropout (training) the last layer's class row cannot run alone (its masks
 * are keyed by the query's index among all of them): the whole layer runs and the
 * embedding is its row 0, the same numbers as the forward's under the same RandContext. */
START_TEST(test_encode_under_attention_dropout)
{
    fixture f;
    fixture_open(&f, "dinov3_reg4", NULL);
    gc_dinov3 *m = load_variant("dinov3_reg4", (train_opts){.attn_dropout = 0.3}, false);
    gc_dinov3_set_training(m, true);
    int64_t B = f.pa->shape[0], D = gc_dinov3_get_config(m)->hidden;
    double *y[3];
    gc_rand_context saved = gc_rand_context_get();
    bool prev = gc_grad_set_enabled(false);
    for (int k = 0; k < 3; k++) { /* the forward's row 0, the embedding, the embedding in eval mode */
        gc_rand_context_set((gc_rand_context){0xa77, 3, 0});
        if (k == 2) gc_dinov3_set_training(m, false);
        gc_pool *p = gc_pool_push();
        gc_tensor *h = k ? gc_dinov3_encode(m, f.pa) : gc_dinov3_forward(m, f.pa);
        ck_assert_msg(h != NULL, "%s", gc_error_message());
        if (!k) h = gc_slice(h, 1, 0, 1);
        ck_assert_int_eq(gc_tensor_numel(h), B * D);
        y[k] = calloc((size_t)(B * D), sizeof(double));
        ck_assert_int_eq(gc_tensor_to_host_f64(h, y[k]), GC_OK);
        gc_pool_pop(p);
    }
    gc_grad_set_enabled(prev);
    gc_rand_context_set(saved);
    double e = gc_test_vec_rel_err(y[1], y[0], B * D), e_eval = gc_test_vec_rel_err(y[2], y[0], B * D);
    printf("dinov3_reg4 attention dropout 0.3: embedding vs the forward's class row %.2e; vs eval mode %.2e\n", e, e_eval);
    if (test_options().device.type == GC_DEVICE_CPU)
        ck_assert_msg(!memcmp(y[0], y[1], sizeof(double) * (size_t)(B * D)), "the embedding is not the forward's row 0");
    else
        ck_assert_msg(e < tolerance() / 10, "the embedding differs from the forward's row 0 by %.3g", e);
    ck_assert_msg(e_eval > 1e-3, "attention dropout changed nothing (%.3g)", e_eval);
    for (int k = 0; k < 3; k++) free(y[k]);
    gc_dinov3_free(m);
    fixture_close(&f);
}
END_TEST

START_TEST(test_drop_path_chunk_invariant)
{
    fixture f;
    fixture_open(&f, "dinov3_reg4", NULL); /* drop_path_rate 0 */
    gc_dinov3 *m = load_variant("dinov3_reg4", (train_opts){.drop_path = 0.3}, false);
    gc_dinov3 *mc = load_variant("dinov3_reg4", (train_opts){.drop_path = 0.3}, true);
    int64_t n = gc_params_count(gc_dinov3_params(m), false);
    const gc_rand_context rc = {0xd00d, 2, 0};
    double worst, worst_loss;
    double *ref = chunked_vs_none(&f, m, mc, rc, &worst, &worst_loss);
    double lz, le;
    double *zero = step_grads_rc(f.m, f.pa, f.pb, 0, rc, &lz);
    gc_dinov3_set_training(m, false);
    double *ev = step_grads_rc(m, f.pa, f.pb, 1, rc, &le);
    double e_zero = gc_test_vec_rel_err(ref, zero, n), e_ev = gc_test_vec_rel_err(ev, zero, n);
    printf("dinov3_reg4 drop_path 0.3: chunks and checkpointing vs none %.2e (loss %.2e); vs rate 0 %.2e, "
           "eval vs rate 0 %.2e\n", worst, worst_loss, e_zero, e_ev);
    ck_assert_msg(worst < same_tol() && worst_loss < same_tol(), "chunked gradients differ by %.3g (loss %.3g)", worst,
                  worst_loss);
    ck_assert_msg(e_zero > diff_tol(), "drop_path changed nothing (%.3g)", e_zero);
    ck_assert_msg(e_ev < same_tol() && fabs(le - lz) < same_tol() * fabs(lz), "eval mode still drops paths (%.3g)",
                  e_ev);
    free(ref);
    free(zero);
    free(ev);
    gc_dinov3_free(m);
    gc_dinov3_free(mc);
    fixture_close(&f);
}
END_TEST

/* The masks themselves: sample b of a chunk at sample_offset s keeps layer i's attention
 * (MLP) branch iff gc_rand_uniform(seed, step, (3 << 16 | i << 4) + 7 (+ 8), s + b, 0) >= p,
 * scaled by 1/(1-p) after the layer scale: its output is that of the model without
 * drop_path whose lambda1 are multiplied by 0 or 1/(1-p) accordingly. */
START_TEST(test_drop_path_masks)
{
    const double p = 0.3;
    fixture f;
    fixture_open(&f, "dinov3_reg4", NULL);
    gc_dinov3 *m = load_variant("dinov3_reg4", (train_opts){.drop_path = p}, false);
    const gc_rand_context rc = {0xd00d, 2, 5};
    int64_t B = f.pa->shape[0], layers = gc_dinov3_get_config(m)->layers;
    bool prev = gc_grad_set_enabled(false);
    gc_pool *pool = gc_pool_push();
    gc_rand_context_set(rc);
    gc_tensor *y = gc_dinov3_forward(m, f.pa);
    ck_assert_msg(y != NULL, "%s", gc_error_message());
    gc_params *ps = gc_dinov3_params(f.m);
    int kept = 0, dropped = 0;
    double worst = 0;
    for (int64_t b = 0; b < B; b++) {
        gc_tensor *saved[2 * 64];
        for (int64_t i = 0; i < layers; i++)
            for (int br = 0; br < 2; br++) {
                char name[96];
                snprintf(name, sizeof name, "layer.%lld.layer_scale%d.lambda1", (long long)i, br + 1);
                gc_tensor *ls = gc_params_find(ps, name)->value;
                int64_t D = gc_tensor_numel(ls);
                float *h = malloc(sizeof(float) * (size_t)D);
                ck_assert(gc_tensor_to_host_f32(ls, h) == GC_OK);
                saved[2 * i + br] = gc_tensor_from_data(GC_F32, GC_CPU, 1, GC_SHAPE(D), h);
                float u = gc_rand_uniform(rc.seed, rc.step, ((3u << 16) | ((uint32_t)i << 4)) + 7 + (uint32_t)br,
                                          (uint32_t)(rc.sample_offset + b), 0);
                bool keep = (double)u >= p;
                keep ? kept++ : dropped++;
                for (int64_t d = 0; d < D; d++) h[d] = keep ? h[d] * (float)(1.0 / (1.0 - p)) : 0.0f;
                gc_tensor *hs = gc_tensor_from_data(GC_F32, GC_CPU, 1, GC_SHAPE(D), h);
                ck_assert(hs && gc_tensor_copy_into(ls, hs, false) == GC_OK);
                gc_tensor_release(hs);
                free(h);
            }
        gc_tensor *yb = gc_dinov3_forward(f.m, gc_rows(f.pa, b, b + 1));
        ck_assert_msg(yb != NULL, "%s", gc_error_message());
        worst = fmax(worst, gc_test_rel_err(gc_rows(y, b, b + 1), yb));
        for (int64_t i = 0; i < 2 * layers; i++) {
            char name[96];
            snprintf(name, sizeof name, "layer.%lld.layer_scale%d.lambda1", (long long)(i / 2), (int)(i % 2) + 1);
            ck_assert(gc_tensor_copy_into(gc_params_find(ps, name)->value, saved[i], false) == GC_OK);
            gc_tensor_release(saved[i]);
        }
    }
    gc_pool_pop(pool);
    gc_grad_set_enabled(prev);
    printf("dinov3_reg4 drop_path %.1f: %d branches kept, %d dropped; rows vs rescaled layer scales %.2e\n", p, kept,
           dropped, worst);
    ck_assert_msg(kept > 0 && dropped > 0, "pick a RandContext that keeps some branches and drops others");
    /* one row against the batch of four: the same sums on the CPU in f32; GEMM tiles may differ elsewhere */
    double tol = same_tol() == 1e-6 ? 1e-6 : tolerance();
    ck_assert_msg(worst < tol, "rows differ from the model with rescaled layer scales by %.3g", worst);
    gc_dinov3_free(m);
    fixture_close(&f);
}
END_TEST

int main(void)
{
    if (!gc_test_fixtures_start("dinov3", tolerance())) return 77;
    Suite *s = suite_create("dinov3");
    TCase *tc = gc_test_tcase("hf");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, test_forward_matches_transformers, 0, N_CASES);
    tcase_add_loop_test(tc, test_matches_transformers, 0, N_CASES);
    tcase_add_loop_test(tc, test_checkpointing_matches_transformers, 0, N_CASES);
    tcase_add_test(tc, test_checkpointing_two_grids);
    tcase_add_loop_test(tc, test_mean_pooling, 0, N_CASES);
    tcase_add_loop_test(tc, test_encode_class_row, 0, N_CASES);
    tcase_add_test(tc, test_train_steps);
    tcase_add_loop_test(tc, test_save_reload, 0, N_CASES);
    tcase_add_test(tc, test_bad_checkpoints_are_named);
    tcase_add_test(tc, test_init_named);
    tcase_add_loop_test(tc, test_rope_augmentation_chunk_invariant, 0, N_AUG_CASES);
    tcase_add_loop_test(tc, test_rope_augmentation_math, 0, N_AUG_CASES);
    tcase_add_test(tc, test_drop_path_chunk_invariant);
    tcase_add_test(tc, test_encode_under_attention_dropout);
    tcase_add_test(tc, test_drop_path_masks);
    suite_add_tcase(s, tc);
    return gc_test_run(s);
}
