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
    gc_dinov3_options o = {.device = GC_CPU, .dtype = GC_F32};
    const char *d = getenv("GC_TEST_DEVICE"), *t = getenv("GC_TEST_DTYPE");
    if (d && !strcmp(d, "cuda")) o.device = GC_CUDA0;
    if (t && !strcmp(t, "bf16")) o.dtype = GC_BF16;
    return o;
}

/* bf16: about 1.5x the error PyTorch itself shows on the CLIP fixtures in pure bf16
 * (tests/fixtures/torch_bf16_error.py); f32 must agree to 1e-4. */
static double tolerance(void) { return test_options().dtype == GC_BF16 ? 5e-2 : 1e-4; }

typedef struct fixture {
    gc_dinov3 *m;
    gc_tensor *pa, *pb; /* the two views [B, 3, H, W] f32 on the CPU */
    gc_st_file *ref;
    double grad_rms;    /* RMS of every reference gradient: the scale of the absolute floor */
    int n_grads;        /* grad.* entries in ref */
} fixture;

static void fixture_open(fixture *f, const char *name, const gc_dinov3_options *opt)
{
    char dir[1024], path[1100];
    snprintf(dir, sizeof dir, "%s/%s", GC_FIXTURES_DIR, name);
    gc_dinov3_options o = opt ? *opt : test_options();
    ck_assert_msg(gc_dinov3_load(&f->m, dir, &o) == GC_OK, "%s: %s", name, gc_error_message());
    snprintf(path, sizeof path, "%s/inputs.safetensors", dir);
    gc_st_file *in;
    ck_assert_msg(gc_st_open(path, &in) == GC_OK, "%s", gc_error_message());
    f->pa = gc_st_load(in, "pixel_values", GC_F32, GC_CPU);
    f->pb = gc_st_load(in, "pixel_values_b", GC_F32, GC_CPU);
    ck_assert(f->pa && f->pb);
    gc_st_close(in);
    snprintf(path, sizeof path, "%s/ref.safetensors", dir);
    ck_assert_msg(gc_st_open(path, &f->ref) == GC_OK, "%s", gc_error_message());
    double ss = 0, n = 0;
    f->n_grads = 0;
    for (int i = 0; i < gc_st_count(f->ref); i++) {
        const gc_st_entry *e = gc_st_entry_at(f->ref, i);
        if (strncmp(e->name, "grad.", 5)) continue;
        gc_tensor *t = gc_st_load(f->ref, e->name, GC_F64, GC_CPU);
        const double *d = gc_tensor_data(t);
        for (int64_t j = 0; j < gc_tensor_numel(t); j++) ss += d[j] * d[j];
        n += (double)gc_tensor_numel(t);
        f->n_grads++;
        gc_tensor_release(t);
    }
    f->grad_rms = n ? sqrt(ss / n) : 0;
}

static void fixture_close(fixture *f)
{
    gc_dinov3_free(f->m);
    gc_tensor_release(f->pa);
    gc_tensor_release(f->pb);
    gc_st_close(f->ref);
}

static double norm2(const gc_tensor *t)
{
    int64_t n = gc_tensor_numel(t);
    double *h = malloc(sizeof(double) * (size_t)(n + 1)), s = 0;
    ck_assert(h && gc_tensor_to_host_f64(t, h) == GC_OK);
    for (int64_t i = 0; i < n; i++) s += h[i] * h[i];
    free(h);
    return sqrt(s);
}

/* ||got - ref|| / max(||ref||, floor); for gradients floor = 0.1 * rms(all grad refs) *
 * sqrt(n), so a tensor whose gradient is tiny is judged against the model's scale. A
 * NULL `got` is a parameter that received no gradient: it counts as zeros (the mask
 * token: HF uses it only with bool_masked_pos, and its reference is zero). */
static double ref_err(fixture *f, const char *name, const gc_tensor *got)
{
    gc_tensor *r = gc_st_load(f->ref, name, GC_F64, GC_CPU);
    ck_assert_msg(r != NULL, "reference %s missing: %s", name, gc_error_message());
    gc_tensor *zeros = NULL;
    if (!got) got = zeros = gc_tensor_zeros(GC_F32, GC_CPU, r->ndim, r->shape);
    ck_assert_msg(gc_tensor_numel(r) == gc_tensor_numel(got), "%s: %lld elements, reference %lld", name,
                  (long long)gc_tensor_numel(got), (long long)gc_tensor_numel(r));
    double rn = norm2(r), e = gc_test_rel_err(got, r); /* ||got-ref|| / ||ref||, or ||got-ref|| if ref == 0 */
    double floor = !strncmp(name, "grad.", 5) ? 0.1 * f->grad_rms * sqrt((double)gc_tensor_numel(r)) : 0;
    if (rn < floor) e = rn > 0 ? e * rn / floor : e / floor;
    gc_tensor_release(zeros);
    gc_tensor_release(r);
    return e;
}

static double check(fixture *f, const char *label, const char *name, const gc_tensor *got)
{
    double e = ref_err(f, name, got);
    if (!(e <= tolerance())) fprintf(stderr, "%s: %s rel err %.3g\n", label, name, e);
    return e;
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
static double compare_step(fixture *f, int64_t chunk, const char *label)
{
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
    int compared = 0;
    for (int i = 0; i < ps->n; i++) {
        char name[512];
        snprintf(name, sizeof name, "grad.%s", ps->items[i].name);
        worst = fmax(worst, check(f, label, name, gc_tensor_grad(ps->items[i].value)));
        compared++;
    }
    ck_assert_int_eq(compared, f->n_grads); /* every parameter's gradient was checked, and no more */
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
    for (int c = 0; c < 4; c++) {
        char label[128];
        snprintf(label, sizeof label, "%s chunk %lld", CASES[_i], (long long)chunks[c]);
        double e = compare_step(&f, chunks[c], label);
        ck_assert_msg(e < tolerance(), "%s: worst relative error %.3g", label, e);
    }
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
    for (int c = 0; c < 2; c++) {
        char label[128];
        snprintf(label, sizeof label, "%s checkpointed, chunk %lld", CASES[_i], (long long)chunks[c]);
        double e = compare_step(&f, chunks[c], label);
        ck_assert_msg(e < tolerance(), "%s: worst relative error %.3g", label, e);
    }
    fixture_close(&f);
}
END_TEST

/* gradients of all parameters, flattened, after one step (chunk <= 0: no cache) */
static double *step_grads(gc_dinov3 *m, gc_tensor *pa, gc_tensor *pb, int64_t chunk, double *loss)
{
    gc_params *ps = gc_dinov3_params(m);
    ck_assert_int_eq(gc_params_zero_grad(ps), GC_OK);
    task t;
    gc_gradcache gc;
    task_init(&t, &gc, m, pa, pb, chunk);
    gc_gradcache_result res;
    ck_assert_msg(gc_gradcache_step(&gc, (gc_rand_context){0, 0, 0}, &res) == GC_OK, "%s", gc_error_message());
    *loss = res.loss;
    gc_gradcache_result_clear(&res);
    gc_tensor_release(t.logit_scale);
    double *g = calloc((size_t)gc_params_count(ps, false) + 1, sizeof *g);
    int64_t k = 0;
    for (int i = 0; i < ps->n; i++) {
        gc_tensor *gr = gc_tensor_grad(ps->items[i].value);
        if (gr) ck_assert_int_eq(gc_tensor_to_host_f64(gr, g + k), GC_OK);
        k += gc_tensor_numel(ps->items[i].value);
    }
    return g;
}

static double vec_rel(const double *a, const double *b, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(a[i])) return INFINITY;
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    return sqrt(num / den);
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
    double e = vec_rel(got, ref, n);
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
    gc_tensor *h = gc_st_load(f.ref, "last_hidden_state", GC_F64, GC_CPU);
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
    e = vec_rel(g1, g0, n);
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

static void rm_rf(const char *dir)
{
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    ck_assert_int_eq(system(cmd), 0);
}

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
    rm_rf(dir);
    fixture_close(&f);
}
END_TEST

/* write `src`'s tensors to dir/model.safetensors minus `drop`, with `reshape` given one more
 * row, `extra` added; config.json copied */
static void write_variant(const char *src, const char *dir, const char *drop, const char *reshape, const char *extra)
{
    gc_st_dir *d;
    ck_assert_int_eq(gc_st_dir_open(src, &d), GC_OK);
    int n = gc_st_dir_count(d), k = 0;
    const char **names = calloc((size_t)n + 1, sizeof *names);
    gc_tensor **ts = calloc((size_t)n + 1, sizeof *ts);
    for (int i = 0; i < n; i++) {
        const char *nm = gc_st_dir_name_at(d, i);
        if (drop && !strcmp(nm, drop)) continue;
        gc_st_file *sf;
        const gc_st_entry *e;
        ck_assert_int_eq(gc_st_dir_lookup(d, nm, &sf, &e), GC_OK);
        names[k] = nm;
        if (reshape && !strcmp(nm, reshape)) {
            int64_t shape[GC_MAX_DIMS];
            memcpy(shape, e->shape, sizeof shape);
            shape[e->ndim - 2]++;
            ts[k] = gc_tensor_zeros(GC_F32, GC_CPU, e->ndim, shape);
        } else {
            ts[k] = gc_st_load(sf, nm, GC_F32, GC_CPU);
        }
        ck_assert(ts[k]);
        k++;
    }
    if (extra) {
        names[k] = extra;
        ts[k++] = gc_tensor_zeros(GC_F32, GC_CPU, 1, GC_SHAPE(3));
    }
    char path[1200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    ck_assert_int_eq(gc_st_save(path, k, names, ts, 0, NULL), GC_OK);
    for (int i = 0; i < k; i++) gc_tensor_release(ts[i]);
    free(ts);
    free(names);
    gc_st_dir_close(d);
    snprintf(path, sizeof path, "cp %.500s/config.json %.500s/", src, dir);
    ck_assert_int_eq(system(path), 0);
}

/* A checkpoint that does not fit names every problem; so do a bad config and bad pixels. */
START_TEST(test_bad_checkpoints_are_named)
{
    char dir[] = "/tmp/gc_dinov3_bad_XXXXXX", src[1100], path[1200];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    gc_dinov3 *m;
    gc_dinov3_options o = {.device = GC_CPU, .dtype = GC_F32};
    snprintf(src, sizeof src, "%s/dinov3_reg4", GC_FIXTURES_DIR);
    write_variant(src, dir, "layer.1.mlp.up_proj.weight", "embeddings.register_tokens", "layer.0.extra.weight");
    ck_assert_int_eq(gc_dinov3_load(&m, dir, &o), GC_ERR_FORMAT);
    const char *msg = gc_error_message();
    ck_assert_msg(strstr(msg, "missing layer.1.mlp.up_proj.weight"), "%s", msg);
    ck_assert_msg(strstr(msg, "embeddings.register_tokens is [1, 5, 32]"), "%s", msg);
    ck_assert_msg(strstr(msg, "unexpected layer.0.extra.weight"), "%s", msg);
    ck_assert_msg(!strchr(msg, '\n'), "the message is one line");
    gc_error_clear();
    /* no registers in the config: an empty register_tokens is fine, a non-empty one is not */
    snprintf(src, sizeof src, "%s/dinov3_noreg_rect", GC_FIXTURES_DIR);
    write_variant(src, dir, NULL, "embeddings.register_tokens", NULL);
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
    rm_rf(dir);
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
    ck_assert(isfinite(norm2(y)) && norm2(y) > 0);
    gc_pool_pop(p);
    gc_grad_set_enabled(prev);
    gc_dinov3_free(m);
}
END_TEST

int main(void)
{
    gc_dinov3_options o = test_options();
    if (o.device.type == GC_DEVICE_CUDA && !gc_cuda_available()) {
        printf("dinov3 on cuda: no CUDA device (skipped)\n");
        return 77;
    }
    printf("dinov3 fixtures on %s in %s, tolerance %.0e\n", gc_device_name(o.device), gc_dtype_name(o.dtype),
           tolerance());
    Suite *s = suite_create("dinov3");
    TCase *tc = gc_test_tcase("hf");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, test_forward_matches_transformers, 0, N_CASES);
    tcase_add_loop_test(tc, test_matches_transformers, 0, N_CASES);
    tcase_add_loop_test(tc, test_checkpointing_matches_transformers, 0, N_CASES);
    tcase_add_test(tc, test_checkpointing_two_grids);
    tcase_add_loop_test(tc, test_mean_pooling, 0, N_CASES);
    tcase_add_test(tc, test_train_steps);
    tcase_add_loop_test(tc, test_save_reload, 0, N_CASES);
    tcase_add_test(tc, test_bad_checkpoints_are_named);
    tcase_add_test(tc, test_init_named);
    suite_add_tcase(s, tc);
    return gc_test_run(s);
}
