/* LoRA against HuggingFace PEFT: tests/fixtures/clip_lora holds an adapter saved by peft
 * 0.21 for the clip_quickgelu_legacy base (r 4, alpha 8, q_proj/v_proj/fc1), float64
 * references of the loss and of every adapter gradient, and PEFT's merge_and_unload()
 * checkpoint (tests/fixtures/gen_lora_fixtures.py). Here: one step through the gradient
 * cache, saving and reloading the adapter in PEFT's format, merging, and bad adapters. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../gradcache/gc_clip_task.h"
#include "../models/gc_json.h"
#include "../models/gc_lora.h"
#include "../models/gc_safetensors.h"
#include "gc_test.h"

#ifndef GC_FIXTURES_DIR
#error "GC_FIXTURES_DIR must be defined by the build"
#endif

#define BASE GC_FIXTURES_DIR "/clip_quickgelu_legacy"
#define LORA GC_FIXTURES_DIR "/clip_lora"
#define ADAPTER LORA "/adapter"
#define TARGETS "q_proj,v_proj,fc1"

/* GC_TEST_DEVICE=cuda and GC_TEST_DTYPE=bf16 run the same checks on the GPU; the tolerance follows the dtype */
static gc_clip_options test_options(void)
{
    return (gc_clip_options){.device = gc_test_device(), .dtype = gc_test_dtype(), .lora_r = 4, .lora_alpha = 8,
                             .lora_targets = TARGETS};
}

static bool bf16(void) { return test_options().dtype == GC_BF16; }
/* bf16: about 1.5x the error PyTorch itself shows on the CLIP fixtures in pure bf16
 * (tests/fixtures/torch_bf16_error.py); f32 must agree to 1e-4. */
static double tolerance(void) { return bf16() ? 5e-2 : 1e-4; }

static gc_lora_options lora_of(const gc_clip_options *o)
{
    return (gc_lora_options){o->lora_r, o->lora_alpha, o->lora_dropout, o->lora_targets};
}

static gc_clip *load_model(const gc_clip_options *o)
{
    gc_clip *m;
    ck_assert_msg(gc_clip_load(&m, BASE, o) == GC_OK, "%s", gc_error_message());
    return m;
}

/* the base with PEFT's adapter loaded */
static gc_clip *load_adapted(void)
{
    gc_clip_options o = test_options();
    gc_clip *m = load_model(&o);
    gc_lora_options lo = lora_of(&o);
    ck_assert_msg(gc_lora_load_peft(gc_clip_params(m), &lo, ADAPTER) == GC_OK, "%s", gc_error_message());
    return m;
}

static void load_inputs(gc_tensor **pixels, gc_tensor **ids)
{
    gc_test_load_inputs(BASE, "pixel_values", GC_F32, pixels, "input_ids", GC_I64, ids);
}

static bool is_lora(const char *name) { return strstr(name, ".lora_") != NULL; }

static double step_loss(gc_clip *m, gc_tensor *pixels, gc_tensor *ids, int64_t chunk)
{
    ck_assert_int_eq(gc_params_zero_grad(gc_clip_params(m)), GC_OK);
    gc_clip_task task;
    gc_clip_task_init(&task, m, pixels, ids, chunk);
    gc_gradcache_result res;
    ck_assert_msg(gc_clip_task_step(&task, (gc_rand_context){0, 0, 0}, &res) == GC_OK, "%s", gc_error_message());
    gc_gradcache_result_clear(&res);
    return res.loss;
}

/* ---------------------------------------------------------------- gradients */

/* One step through the gradient cache: PEFT's loss and adapter gradients; the frozen base has no
 * gradient buffer (and in bf16 no f32 master). */
START_TEST(test_matches_peft)
{
    gc_clip *m = load_adapted();
    gc_params *ps = gc_clip_params(m);
    gc_tensor *pixels, *ids;
    load_inputs(&pixels, &ids);
    gc_test_refs refs;
    gc_test_refs_open(&refs, LORA, true);
    gc_st_file *ref = refs.file;
    gc_tensor *ref_loss = gc_st_load(ref, "loss", GC_F64, GC_CPU);
    double want_loss = ((double *)gc_tensor_data(ref_loss))[0];
    gc_tensor_release(ref_loss);
    int n_refs = refs.n_grads;
    ck_assert_int_eq(n_refs, 24); /* 2 towers x 2 layers x 3 targets x (A, B) */

    int64_t B = pixels->shape[0], chunks[4] = {0, 2, B / 2 + 1 /* uneven */, B};
    for (int c = 0; c < 4; c++) {
        double loss = step_loss(m, pixels, ids, chunks[c]);
        double worst = fabs(loss - want_loss) / fabs(want_loss);
        ck_assert_msg(worst < tolerance(), "chunk %lld: loss %.9g, peft %.9g", (long long)chunks[c], loss, want_loss);
        int compared = 0;
        for (int i = 0; i < ps->n; i++) {
            gc_param *p = &ps->items[i];
            if (!is_lora(p->name)) {
                ck_assert_msg(!p->trainable && gc_tensor_grad(p->value) == NULL, "base %s has a gradient", p->name);
                /* frozen in bf16: no f32 copy beside the value (scalars such as logit_scale are
                 * f32 values, their own master) */
                if (bf16()) ck_assert_msg(p->master == NULL || p->master == p->value, "frozen bf16 %s has an f32 master", p->name);
                continue;
            }
            ck_assert_msg(p->trainable && p->master != NULL, "%s", p->name);
            char name[512];
            snprintf(name, sizeof name, "grad.%s", p->name);
            gc_tensor *r = gc_st_load(ref, name, GC_F64, GC_CPU);
            ck_assert_msg(r != NULL, "no reference %s: %s", name, gc_error_message());
            double e = gc_test_rel_err(gc_tensor_grad(p->value), r);
            gc_tensor_release(r);
            if (e > tolerance()) fprintf(stderr, "chunk %lld: %s rel err %.3g\n", (long long)chunks[c], name, e);
            ck_assert_msg(e < tolerance(), "chunk %lld: %s relative error %.3g", (long long)chunks[c], name, e);
            worst = fmax(worst, e);
            compared++;
        }
        ck_assert_int_eq(compared, n_refs);
        printf("lora chunk %-3lld loss %.9f (peft %.9f), worst relative error %.2e\n", (long long)chunks[c], loss,
               want_loss, worst);
    }
    gc_test_refs_close(&refs);
    gc_tensor_release(pixels);
    gc_tensor_release(ids);
    gc_clip_free(m);
}
END_TEST

/* LoRA dropout on (training): the adapter gradients are the same for every chunk size, with
 * and without checkpointing, and differ from dropout off. The masks are keyed by the
 * sample's index in the whole batch, so each chunk draws what the whole batch draws. */
START_TEST(test_lora_dropout_chunk_invariance)
{
    gc_tensor *pixels, *ids;
    load_inputs(&pixels, &ids);
    int64_t B = pixels->shape[0];
    const int64_t chunks[5] = {0, 1, 3, B, 2};
    double *ref = NULL;
    int64_t total = 0;
    for (int mode = 0; mode < 6; mode++) { /* 0..3: the chunks; 4: chunk 2 checkpointed; 5: dropout off */
        gc_clip_options o = test_options();
        o.lora_dropout = 0.3;
        o.checkpointing = mode == 4;
        gc_clip *m = load_model(&o);
        gc_lora_options lo = lora_of(&o);
        ck_assert_msg(gc_lora_load_peft(gc_clip_params(m), &lo, ADAPTER) == GC_OK, "%s", gc_error_message());
        gc_clip_set_training(m, mode < 5);
        gc_params *ps = gc_clip_params(m);
        ck_assert_int_eq(gc_params_zero_grad(ps), GC_OK);
        gc_clip_task task;
        gc_clip_task_init(&task, m, pixels, ids, chunks[mode < 5 ? mode : 0]);
        gc_gradcache_result res;
        ck_assert_msg(gc_clip_task_step(&task, (gc_rand_context){9, 2, 0}, &res) == GC_OK, "%s", gc_error_message());
        gc_gradcache_result_clear(&res);
        double *got = gc_test_flat_grads(ps);
        total = gc_params_count(ps, false);
        gc_clip_free(m);
        if (!mode) {
            ref = got;
            continue;
        }
        double e = gc_test_vec_rel_err(got, ref, total);
        printf("lora dropout 0.3, %s: adapter gradients vs the whole batch %.2e\n",
               mode < 4 ? "chunked" : mode == 4 ? "chunk 2 checkpointed" : "dropout off", e);
        if (mode < 5) ck_assert_msg(e < tolerance() / 10, "mode %d: gradients differ by %.3g", mode, e);
        else ck_assert_msg(e > 0.05, "dropout off gives the same gradients (%.3g): LoRA dropout is inactive", e);
        free(got);
    }
    free(ref);
    gc_tensor_release(pixels);
    gc_tensor_release(ids);
}
END_TEST

/* ---------------------------------------------------------------- save / load */

static cJSON *load_json(const char *path)
{
    cJSON *j;
    ck_assert_msg(gc_json_load_file(path, &j) == GC_OK, "%s", gc_error_message());
    return j;
}

/* Saved by gradcache: the same config (every key and value) and the same tensors as PEFT's; reloads equal. */
START_TEST(test_save_matches_peft_and_reloads)
{
    gc_clip *m = load_adapted();
    gc_params *ps = gc_clip_params(m);
    gc_clip_options o = test_options();
    gc_lora_options lo = lora_of(&o);
    char dir[] = "/tmp/gc_lora_save_XXXXXX", path[1200];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    ck_assert_msg(gc_lora_save_peft(ps, &lo, "clip_quickgelu_legacy", dir) == GC_OK, "%s", gc_error_message());

    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    cJSON *ours = load_json(path), *peft = load_json(ADAPTER "/adapter_config.json");
    for (const cJSON *k = peft->child; k; k = k->next) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(ours, k->string);
        ck_assert_msg(v != NULL, "adapter_config.json lacks %s", k->string);
        char *a = cJSON_PrintUnformatted(v), *b = cJSON_PrintUnformatted(k);
        ck_assert_msg(cJSON_Compare(v, k, true), "adapter_config.json %s: %s, peft wrote %s", k->string, a, b);
        free(a);
        free(b);
    }
    for (const cJSON *k = ours->child; k; k = k->next)
        ck_assert_msg(cJSON_GetObjectItemCaseSensitive(peft, k->string), "adapter_config.json has extra key %s", k->string);
    cJSON_Delete(ours);
    cJSON_Delete(peft);

    gc_st_file *a, *b;
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    ck_assert_msg(gc_st_open(path, &a) == GC_OK, "%s", gc_error_message());
    ck_assert_msg(gc_st_open(ADAPTER "/adapter_model.safetensors", &b) == GC_OK, "%s", gc_error_message());
    ck_assert_int_eq(gc_st_count(a), gc_st_count(b));
    ck_assert_str_eq(gc_st_metadata(a, "format"), "pt");
    for (int i = 0; i < gc_st_count(b); i++) {
        const gc_st_entry *e = gc_st_entry_at(b, i), *f = gc_st_find(a, e->name);
        ck_assert_msg(f != NULL, "we did not write %s", e->name);
        ck_assert_str_eq(f->st_dtype, "F32");
        /* the adapters keep f32 masters, so the values round-trip exactly */
        gc_tensor *x = gc_st_tensor(a, e->name), *y = gc_st_tensor(b, e->name);
        ck_assert_msg(gc_test_rel_err(x, y) == 0, "%s differs from PEFT's", e->name);
        gc_tensor_release(x);
        gc_tensor_release(y);
    }
    gc_st_close(a);
    gc_st_close(b);

    /* reload what we wrote into a fresh model */
    gc_clip *m2 = load_model(&o);
    gc_params *p2 = gc_clip_params(m2);
    ck_assert_msg(gc_lora_load_peft(p2, &lo, dir) == GC_OK, "%s", gc_error_message());
    for (int i = 0; i < ps->n; i++)
        ck_assert_msg(gc_test_rel_err(ps->items[i].value, p2->items[i].value) == 0, "%s", ps->items[i].name);
    gc_clip_free(m2);

    /* the options can be read back from the config */
    gc_lora_options r;
    char targets[64];
    ck_assert_msg(gc_lora_config_load(dir, &r, targets, sizeof targets) == GC_OK, "%s", gc_error_message());
    ck_assert_int_eq(r.r, 4);
    ck_assert_double_eq(r.alpha, 8);
    ck_assert_double_eq(r.dropout, 0);
    ck_assert_str_eq(r.targets, "fc1,q_proj,v_proj");
    ck_assert_int_eq(gc_lora_config_load(dir, &r, targets, 8), GC_ERR_INVALID);
    gc_error_clear();
    gc_test_rm_rf(dir);
    gc_clip_free(m);
}
END_TEST

/* dropout and a fractional alpha are written so that PEFT applies the same scale */
START_TEST(test_save_numbers)
{
    gc_clip_options o = test_options();
    o.lora_alpha = 6;
    o.lora_dropout = 0.05;
    o.lora_r = 4;
    gc_clip *m = load_model(&o);
    gc_lora_options lo = lora_of(&o);
    char dir[] = "/tmp/gc_lora_num_XXXXXX", path[1200];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    ck_assert_msg(gc_lora_save_peft(gc_clip_params(m), &lo, NULL, dir) == GC_OK, "%s", gc_error_message());
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    FILE *f = fopen(path, "r");
    char text[4096];
    size_t n = fread(text, 1, sizeof text - 1, f);
    text[n] = 0;
    fclose(f);
    ck_assert_msg(strstr(text, "\"lora_dropout\":\t0.05,"), "%s", text);
    ck_assert_msg(strstr(text, "\"lora_alpha\":\t6,"), "%s", text);
    ck_assert_msg(strstr(text, "\"base_model_name_or_path\":\tnull"), "%s", text);
    gc_lora_options r;
    char targets[64];
    ck_assert_int_eq(gc_lora_config_load(dir, &r, targets, sizeof targets), GC_OK);
    ck_assert_double_eq(r.alpha / r.r, gc_lora_scale(&lo));
    ck_assert_double_eq(r.dropout, 0.05);
    gc_clip_free(m);
    /* alpha unset: scale 1, saved as alpha = r */
    o.lora_alpha = 0;
    m = load_model(&o);
    lo = lora_of(&o);
    ck_assert_double_eq(gc_lora_scale(&lo), 1);
    ck_assert_int_eq(gc_lora_save_peft(gc_clip_params(m), &lo, NULL, dir), GC_OK);
    ck_assert_int_eq(gc_lora_config_load(dir, &r, targets, sizeof targets), GC_OK);
    ck_assert_double_eq(r.alpha, 4);
    gc_clip_free(m);
    gc_test_rm_rf(dir);
}
END_TEST

/* ---------------------------------------------------------------- merge */

/* gc_lora_merge + gc_clip_save == PEFT's merge_and_unload + save_pretrained; the function is unchanged */
START_TEST(test_merge_matches_peft)
{
    gc_clip *m = load_adapted();
    gc_params *ps = gc_clip_params(m);
    gc_clip_options o = test_options();
    gc_lora_options lo = lora_of(&o);
    gc_tensor *pixels, *ids;
    load_inputs(&pixels, &ids);
    double before = step_loss(m, pixels, ids, 0);

    /* one tower at a time: the other stays as it was */
    gc_param *vq = gc_params_find(ps, "vision_model.encoder.layers.0.self_attn.q_proj.weight");
    gc_param *tq = gc_params_find(ps, "text_model.encoder.layers.0.self_attn.q_proj.weight");
    gc_tensor *v0 = gc_tensor_to(vq->value, GC_CPU, GC_F32), *t0 = gc_tensor_to(tq->value, GC_CPU, GC_F32);
    ck_assert_msg(gc_lora_merge(ps, &lo, "vision_model.") == GC_OK, "%s", gc_error_message());
    ck_assert_double_gt(gc_test_rel_err(vq->value, v0), 1e-3);
    ck_assert_double_eq(gc_test_rel_err(tq->value, t0), 0);
    ck_assert_msg(gc_lora_merge(ps, &lo, "text_model.") == GC_OK, "%s", gc_error_message());
    ck_assert_double_gt(gc_test_rel_err(tq->value, t0), 1e-3);
    gc_tensor_release(v0);
    gc_tensor_release(t0);
    ck_assert_int_eq(gc_lora_merge(ps, &lo, "no_such_tower."), GC_ERR_INVALID);
    gc_error_clear();

    for (int i = 0; i < ps->n; i++) {
        gc_param *p = &ps->items[i];
        if (!strstr(p->name, ".lora_B.")) continue;
        gc_tensor *z = gc_tensor_zeros(GC_F32, GC_CPU, p->value->ndim, p->value->shape);
        ck_assert_msg(gc_test_rel_err(p->value, z) == 0 && gc_test_rel_err(p->master, z) == 0, "%s not zero", p->name);
        gc_tensor_release(z);
    }
    double after = step_loss(m, pixels, ids, 0);
    ck_assert_msg(fabs(after - before) < tolerance() * fabs(before), "loss %.9g before the merge, %.9g after", before,
                  after);

    char dir[] = "/tmp/gc_lora_merge_XXXXXX", path[1200];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    ck_assert_msg(gc_clip_save(m, dir) == GC_OK, "%s", gc_error_message());
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    gc_st_file *a, *b;
    ck_assert_msg(gc_st_open(path, &a) == GC_OK, "%s", gc_error_message());
    ck_assert_msg(gc_st_open(LORA "/merged/model.safetensors", &b) == GC_OK, "%s", gc_error_message());
    ck_assert_int_eq(gc_st_count(a), gc_st_count(b));
    /* f32: W + 2 B A rounds differently only in the last bit; bf16: the frozen base itself is bf16 */
    double tol = bf16() ? 1e-2 : 1e-6, worst = 0;
    for (int i = 0; i < gc_st_count(b); i++) {
        const char *name = gc_st_entry_at(b, i)->name;
        ck_assert_msg(gc_st_find(a, name), "merged checkpoint lacks %s", name);
        gc_tensor *x = gc_st_tensor(a, name), *y = gc_st_tensor(b, name);
        double e = gc_test_rel_err(x, y);
        ck_assert_msg(e < tol, "%s: relative error %.3g against PEFT's merge", name, e);
        worst = fmax(worst, e);
        gc_tensor_release(x);
        gc_tensor_release(y);
    }
    printf("merge: worst relative error against peft's merge_and_unload %.2e\n", worst);
    gc_st_close(a);
    gc_st_close(b);

    /* the merged checkpoint is a plain CLIP with the adapted model's loss */
    gc_clip_options plain = test_options();
    plain.lora_r = 0;
    gc_clip *m2;
    ck_assert_msg(gc_clip_load(&m2, dir, &plain) == GC_OK, "%s", gc_error_message());
    double plain_loss = step_loss(m2, pixels, ids, 0);
    ck_assert_msg(fabs(plain_loss - before) < tolerance() * fabs(before), "merged model loss %.9g, adapted %.9g",
                  plain_loss, before);
    gc_clip_free(m2);
    gc_test_rm_rf(dir);
    gc_tensor_release(pixels);
    gc_tensor_release(ids);
    gc_clip_free(m);
}
END_TEST

/* ---------------------------------------------------------------- bad adapters */

/* a copy of PEFT's adapter in a temporary directory */
static void copy_adapter(char *dir)
{
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "cp %s/adapter_config.json %s/adapter_model.safetensors '%s'/", ADAPTER, ADAPTER, dir);
    ck_assert_int_eq(system(cmd), 0);
}

static void set_config(const char *dir, const char *key, cJSON *value)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    cJSON *j = load_json(path);
    if (cJSON_GetObjectItemCaseSensitive(j, key)) cJSON_ReplaceItemInObjectCaseSensitive(j, key, value);
    else cJSON_AddItemToObject(j, key, value);
    ck_assert_int_eq(gc_json_save_file(path, j), GC_OK);
    cJSON_Delete(j);
}

/* loading fails with code and a one-line message containing every `want`, and writes nothing */
static void expect_load_error(gc_clip *m, const gc_lora_options *lo, const char *dir, gc_status code, int n,
                              const char *const *want)
{
    gc_params *ps = gc_clip_params(m);
    gc_param *a = gc_params_find(ps, "vision_model.encoder.layers.1.self_attn.q_proj.lora_A.weight");
    gc_tensor *before = gc_tensor_to(a->value, GC_CPU, GC_F32);
    ck_assert_int_eq(gc_lora_load_peft(ps, lo, dir), code);
    const char *msg = gc_error_message();
    for (int i = 0; i < n; i++) ck_assert_msg(strstr(msg, want[i]), "'%s' not in: %s", want[i], msg);
    ck_assert_msg(!strchr(msg, '\n'), "the message is one line: %s", msg);
    ck_assert_msg(gc_test_rel_err(a->value, before) == 0, "a failed load changed the adapters");
    gc_tensor_release(before);
    gc_error_clear();
}

START_TEST(test_bad_adapters)
{
    gc_clip_options o = test_options();
    gc_lora_options lo = lora_of(&o);
    gc_clip *m = load_model(&o);

    /* a wrong r in the config */
    char d1[] = "/tmp/gc_lora_bad_XXXXXX";
    copy_adapter(d1);
    set_config(d1, "r", cJSON_CreateNumber(8));
    expect_load_error(m, &lo, d1, GC_ERR_FORMAT, 2,
                      (const char *[]){"r 8 but the model's adapters have rank 4", "lora_alpha 8 (scale 1) but the model uses scale 2"});
    gc_test_rm_rf(d1);

    /* tensors: one missing, one mis-shaped, one unexpected */
    char d2[] = "/tmp/gc_lora_bad_XXXXXX", path[1200];
    copy_adapter(d2);
    gc_st_file *f;
    ck_assert_int_eq(gc_st_open(ADAPTER "/adapter_model.safetensors", &f), GC_OK);
    int n = gc_st_count(f), k = 0;
    const char **names = calloc((size_t)n + 1, sizeof *names);
    gc_tensor **ts = calloc((size_t)n + 1, sizeof *ts);
    const char *missing = "base_model.model.text_model.encoder.layers.1.self_attn.v_proj.lora_B.weight";
    const char *reshaped = "base_model.model.vision_model.encoder.layers.0.mlp.fc1.lora_A.weight";
    for (int i = 0; i < n; i++) {
        const char *nm = gc_st_entry_at(f, i)->name;
        if (!strcmp(nm, missing)) continue;
        names[k] = nm;
        ts[k] = !strcmp(nm, reshaped) ? gc_tensor_zeros(GC_F32, GC_CPU, 2, GC_SHAPE(8, 32)) : gc_st_tensor(f, nm);
        k++;
    }
    names[k] = "base_model.model.vision_model.encoder.layers.0.self_attn.k_proj.lora_A.weight";
    ts[k++] = gc_tensor_zeros(GC_F32, GC_CPU, 2, GC_SHAPE(4, 32));
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", d2);
    ck_assert_int_eq(gc_st_save(path, k, names, ts, 0, NULL), GC_OK);
    for (int i = 0; i < k; i++) gc_tensor_release(ts[i]);
    free(names);
    free(ts);
    gc_st_close(f);
    expect_load_error(m, &lo, d2, GC_ERR_FORMAT, 4,
                      (const char *[]){"(3 problems)",
                                       "missing base_model.model.text_model.encoder.layers.1.self_attn.v_proj.lora_B.weight",
                                       "fc1.lora_A.weight is [8, 32] in the adapter but [4, 32] in the model",
                                       "unexpected base_model.model.vision_model.encoder.layers.0.self_attn.k_proj"});

    /* what gradcache cannot reproduce is refused by name */
    char d3[] = "/tmp/gc_lora_bad_XXXXXX";
    copy_adapter(d3);
    set_config(d3, "use_dora", cJSON_CreateTrue());
    expect_load_error(m, &lo, d3, GC_ERR_FORMAT, 1, (const char *[]){"use_dora is true"});
    set_config(d3, "use_dora", cJSON_CreateFalse());
    set_config(d3, "use_rslora", cJSON_CreateTrue());
    expect_load_error(m, &lo, d3, GC_ERR_FORMAT, 1, (const char *[]){"use_rslora"});
    set_config(d3, "use_rslora", cJSON_CreateFalse());
    set_config(d3, "target_modules", cJSON_CreateString(".*proj"));
    expect_load_error(m, &lo, d3, GC_ERR_FORMAT, 1, (const char *[]){"regular expression"});
    set_config(d3, "target_modules", cJSON_CreateStringArray((const char *[]){"q_proj", "v_proj", "fc1"}, 3));
    set_config(d3, "peft_type", cJSON_CreateString("IA3"));
    expect_load_error(m, &lo, d3, GC_ERR_FORMAT, 1, (const char *[]){"peft_type is 'IA3'"});
    set_config(d3, "peft_type", cJSON_CreateString("LORA"));
    set_config(d3, "modules_to_save", cJSON_CreateStringArray((const char *[]){"visual_projection"}, 1));
    expect_load_error(m, &lo, d3, GC_ERR_FORMAT, 1, (const char *[]){"modules_to_save"});
    gc_test_rm_rf(d3);
    char d4[] = "/tmp/gc_lora_bad_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(d4));
    expect_load_error(m, &lo, d4, GC_ERR_IO, 1, (const char *[]){"adapter_config.json"});
    gc_test_rm_rf(d4);
    gc_clip_free(m);

    /* a model with other targets, or another alpha */
    gc_clip_options o2 = o;
    o2.lora_targets = "q_proj,v_proj,out_proj";
    o2.lora_alpha = 16;
    m = load_model(&o2);
    gc_lora_options lo2 = lora_of(&o2);
    expect_load_error(m, &lo2, ADAPTER, GC_ERR_FORMAT, 4,
                      (const char *[]){"target_modules has fc1, which the model does not adapt",
                                       "the model adapts out_proj, which is not in target_modules",
                                       "lora_alpha 8 (scale 2) but the model uses scale 4", "missing"});
    gc_clip_free(m);

    /* no adapters at all */
    gc_clip_options o3 = o;
    o3.lora_r = 0;
    m = load_model(&o3);
    gc_lora_options lo3 = lora_of(&o3);
    ck_assert_int_eq(gc_lora_load_peft(gc_clip_params(m), &lo3, ADAPTER), GC_ERR_INVALID);
    gc_error_clear();
    ck_assert_int_eq(gc_lora_save_peft(gc_clip_params(m), &lo3, NULL, d2), GC_ERR_INVALID);
    gc_error_clear();
    ck_assert_int_eq(gc_lora_merge(gc_clip_params(m), &lo3, NULL), GC_ERR_INVALID);
    gc_error_clear();
    gc_clip_free(m);
    gc_test_rm_rf(d2);
}
END_TEST

/* lora_target_modules as the trainers check it: every name known, none empty, the list not
 * empty (a typo used to train no adapter at all, an empty list to mean PEFT's default) */
START_TEST(test_check_targets)
{
    static const char *const clip[] = {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", NULL};
    static const char *const good[] = {"q_proj", "q_proj,k_proj,v_proj,out_proj,fc1,fc2", " q_proj , fc2 "};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        ck_assert_msg(gc_lora_check_targets(good[i], clip, "CLIP", "c.yaml: lora_target_modules") == GC_OK, "%s: %s",
                      good[i], gc_error_message());
    static const char *const bad[][2] = {
        {"qproj", "c.yaml: lora_target_modules: 'qproj' is not a CLIP module (q_proj, k_proj, v_proj, out_proj, fc1, fc2)"},
        {"q_proj,nonsense", "'nonsense' is not a CLIP module"},
        {"q_proj,o_proj", "'o_proj' is not a CLIP module"},
        {"", "c.yaml: lora_target_modules: no modules given (CLIP modules: q_proj"},
        {"  ", "no modules given"},
        {"q_proj,,v_proj", "an empty module name in 'q_proj,,v_proj'"},
        {"q_proj,", "an empty module name"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        gc_error_clear();
        ck_assert_int_eq(gc_lora_check_targets(bad[i][0], clip, "CLIP", "c.yaml: lora_target_modules"), GC_ERR_INVALID);
        ck_assert_msg(strstr(gc_error_message(), bad[i][1]), "'%s': %s", bad[i][0], gc_error_message());
    }
    gc_error_clear();
    ck_assert_int_eq(gc_lora_check_targets(NULL, clip, "CLIP", "x"), GC_ERR_INVALID);
    gc_error_clear();
}
END_TEST

int main(void)
{
    if (!gc_test_fixtures_start("lora", tolerance())) return 77;
    Suite *s = suite_create("lora");
    TCase *tc = gc_test_tcase("peft");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_matches_peft);
    tcase_add_test(tc, test_lora_dropout_chunk_invariance);
    tcase_add_test(tc, test_save_matches_peft_and_reloads);
    tcase_add_test(tc, test_save_numbers);
    tcase_add_test(tc, test_merge_matches_peft);
    tcase_add_test(tc, test_bad_adapters);
    tcase_add_test(tc, test_check_targets);
    suite_add_tcase(s, tc);
    return gc_test_run(s);
}
