/* gcache: the command line.
 *   gcache grad  --model DIR --inputs FILE --out FILE [--chunk N] [--device cpu|cuda] [--dtype f32|bf16] [--seed S]
 *   gcache embed --model DIR --inputs FILE --out FILE [--chunk N] [--device cpu|cuda] [--dtype f32|bf16]
 * Any failure prints one line naming the file and the problem, and exits 1. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../gradcache/gc_clip_task.h"
#include "../gradcache/gc_dinov3_task.h"
#include "../models/gc_json.h"
#include "../models/gc_safetensors.h"
#include "gc_cli.h"

static const char *USAGE =
    "usage: gcache <command> [options]\n"
    "commands:\n"
    "  grad   --model DIR --inputs FILE --out FILE [--chunk N] [--device cpu|cuda] [--dtype f32|bf16] [--seed S]\n"
    "         [--temperature T]  loss, embeddings, logits and every parameter gradient of one batch (the gradient\n"
    "         cache with --chunk); DIR is a CLIP or DINOv3 checkpoint (DINOv3: pixel_values + pixel_values_b pairs)\n"
    "  embed  --model DIR --inputs FILE --out FILE [--chunk N] [--device cpu|cuda] [--dtype f32|bf16]\n"
    "         L2-normalised image and text embeddings, no graph\n"
    "  train  CONFIG.yaml [--resume DIR] [key=value ...]   train (see configs/)\n"
    "  bench  --model clip-vit-b16|clip-vit-b32|dinov3-vit-b16|clip-tiny|dinov3-tiny --batch B --chunk C\n"
    "         [--no-cache] [--checkpointing] [--no-recompute] [--replay-all] [--lora R] [--steps N] [--warmup N]\n"
    "         [--device cuda|cpu] [--dtype bf16|f32] [--pixels host|device] [--gemm-plan FILE]\n"
    "         time full training steps (random weights, synthetic data): step ms, peak memory, pairs/s, TFLOP/s\n";

int gc_cli_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("gcache: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

int gc_cli_fail_status(const char *what)
{
    const char *m = gc_error_message();
    return gc_cli_fail("%s%s%s", what ? what : "", what && *m ? ": " : "", *m ? m : "failed");
}

/* ---------------------------------------------------------------- options */

typedef struct grad_args {
    const char *model, *inputs, *out, *device, *dtype;
    int64_t chunk;
    uint64_t seed;
    double temperature; /* DINOv3 pairs */
    bool temperature_set; /* so a CLIP model, which learns its own, can refuse it */
} grad_args;

int gc_cli_parse_int(const char *flag, const char *v, int64_t lo, int64_t hi, int64_t *out)
{
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (!*v || *end) return gc_cli_fail("%s '%s': expected an integer", flag, v);
    /* strtoll clamps: a silently different value is worse than an error */
    if (errno == ERANGE) return gc_cli_fail("%s '%s': out of range", flag, v);
    if (x < lo || x > hi) return gc_cli_fail("%s %s: outside [%lld, %lld]", flag, v, (long long)lo, (long long)hi);
    *out = x;
    return 0;
}

static int parse_grad_args(int argc, char **argv, grad_args *a)
{
    *a = (grad_args){.device = "cpu", .dtype = "f32", .chunk = 0, .seed = 0, .temperature = 0.1};
    for (int i = 0; i < argc; i++) {
        const char *f = argv[i];
        const char **dst = NULL;
        if (!strcmp(f, "--model")) dst = &a->model;
        else if (!strcmp(f, "--inputs")) dst = &a->inputs;
        else if (!strcmp(f, "--out")) dst = &a->out;
        else if (!strcmp(f, "--device")) dst = &a->device;
        else if (!strcmp(f, "--dtype")) dst = &a->dtype;
        else if (!strcmp(f, "--temperature")) {
            if (i + 1 >= argc) return gc_cli_fail("%s needs a value", f);
            const char *v = argv[++i];
            char *end;
            errno = 0;
            a->temperature = strtod(v, &end);
            if (!*v || *end || errno || !isfinite(a->temperature))
                return gc_cli_fail("--temperature '%s': expected a finite number", v);
            /* the training config's range for its temperature key */
            if (a->temperature < 1e-6 || a->temperature > 100)
                return gc_cli_fail("--temperature %s: outside [1e-06, 100]", v);
            a->temperature_set = true;
            continue;
        } else if (!strcmp(f, "--chunk") || !strcmp(f, "--seed")) {
            if (i + 1 >= argc) return gc_cli_fail("%s needs a value", f);
            int64_t v = 0;
            /* a chunk is positive; a seed is >= 0 as the training config's (a negative one would wrap) */
            if (gc_cli_parse_int(f, argv[++i], strcmp(f, "--chunk") ? 0 : 1, INT64_MAX, &v)) return 1;
            if (!strcmp(f, "--chunk")) a->chunk = v;
            else a->seed = (uint64_t)v;
            continue;
        } else return gc_cli_fail("unknown option '%s' (see gcache --help)", f);
        if (i + 1 >= argc) return gc_cli_fail("%s needs a value", f);
        *dst = argv[++i];
        if (!**dst) return gc_cli_fail("%s: an empty value", f); /* --out '' would name no file */
    }
    if (!a->model || !a->inputs || !a->out) return gc_cli_fail("--model, --inputs and --out are required (see gcache --help)");
    return 0;
}

int gc_cli_parse_dtype(const char *s, gc_dtype *dt)
{
    if (!strcmp(s, "f32")) *dt = GC_F32;
    else if (!strcmp(s, "bf16")) *dt = GC_BF16;
    else return gc_cli_fail("--dtype '%s': expected f32 or bf16", s);
    return 0;
}

/* ---------------------------------------------------------------- inputs */

/* pixel_values F32 [B,C,H,W] and input_ids I32/I64 [B,L]; either may be absent (NULL). */
static int load_inputs(const char *path, gc_tensor **pixels, gc_tensor **ids)
{
    *pixels = *ids = NULL;
    gc_st_file *f;
    if (gc_st_open(path, &f) != GC_OK) return gc_cli_fail_status(NULL);
    const gc_st_entry *pe = gc_st_find(f, "pixel_values"), *ie = gc_st_find(f, "input_ids");
    int rc = 0;
    if (!pe && !ie) rc = gc_cli_fail("%s: holds neither pixel_values nor input_ids", path);
    if (!rc && pe && (pe->ndim != 4 || !gc_dtype_is_float(pe->dtype)))
        rc = gc_cli_fail("%s: pixel_values must be a float tensor [B, 3, H, W]", path);
    if (!rc && ie && (ie->ndim != 2 || (ie->dtype != GC_I64 && ie->dtype != GC_I32)))
        rc = gc_cli_fail("%s: input_ids must be I64 or I32 [B, L]", path);
    if (!rc && pe && !(*pixels = gc_st_load(f, "pixel_values", GC_F32, GC_CPU))) rc = gc_cli_fail_status(path);
    if (!rc && ie && !(*ids = gc_st_load(f, "input_ids", GC_I64, GC_CPU))) rc = gc_cli_fail_status(path);
    gc_st_close(f);
    return rc;
}

/* The inputs stay on the host and the model uploads a chunk at a time: page-locked for a
 * GPU run, those uploads are asynchronous copies. Written once when loaded and never
 * again, so no upload can see a rewrite (freeing them synchronises). Call after the
 * device was checked. */
static int pin_inputs(const grad_args *a, gc_tensor *x, gc_tensor *y)
{
    gc_device dev;
    if (gc_device_parse(a->device, &dev) != GC_OK || dev.type != GC_DEVICE_CUDA) {
        gc_error_clear();
        return 0;
    }
    if ((x && gc_tensor_pin(x) != GC_OK) || (y && gc_tensor_pin(y) != GC_OK)) return gc_cli_fail_status(a->inputs);
    return 0;
}

static int open_model(const grad_args *a, gc_clip **m)
{
    gc_clip_options opt = {0};
    if (gc_cli_parse_dtype(a->dtype, &opt.dtype)) return 1;
    if (gc_device_parse(a->device, &opt.device) != GC_OK) return gc_cli_fail_status("--device");
    if (opt.device.type == GC_DEVICE_CUDA && !gc_cuda_available()) {
        gc_error_clear();
        return gc_cli_fail("--device cuda: %s", gc_cuda_built() ? "no usable CUDA device" : "this build has no CUDA backend");
    }
    if (gc_clip_load(m, a->model, &opt) != GC_OK) return gc_cli_fail_status(NULL);
    return 0;
}


/* ---------------------------------------------------------------- DINOv3 */

/* "clip" or "dinov3_vit" from DIR/config.json (transformers' model_type) */
static int model_type(const char *dir, char *out, size_t n)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    cJSON *c = NULL;
    if (gc_json_load_file(path, &c) != GC_OK) return gc_cli_fail_status(NULL);
    const char *mt = NULL;
    gc_status st = gc_json_get_string(c, "model_type", "clip", false, &mt, path);
    if (st == GC_OK) snprintf(out, n, "%s", mt);
    cJSON_Delete(c);
    return st == GC_OK ? 0 : gc_cli_fail_status(NULL);
}

/* Writes names/ts (any device) plus grad.<name> of every parameter with a gradient. */
static int write_outputs(const char *path, int n, const char **names, gc_tensor **ts, gc_params *ps)
{
    int cap = n + (ps ? ps->n : 0), k = 0, rc = 0;
    const char **nm = calloc((size_t)cap + 1, sizeof *nm);
    char **owned = calloc((size_t)cap + 1, sizeof *owned);
    gc_tensor **hs = calloc((size_t)cap + 1, sizeof *hs);
    if (!nm || !owned || !hs) rc = gc_cli_fail("out of host memory");
    for (int i = 0; !rc && i < cap; i++) {
        gc_tensor *src = i < n ? ts[i] : gc_tensor_grad(ps->items[i - n].value);
        if (!src) continue;
        if (i >= n) {
            size_t len = strlen(ps->items[i - n].name) + 6;
            if (!(owned[k] = malloc(len))) { rc = gc_cli_fail("out of host memory"); break; }
            snprintf(owned[k], len, "grad.%s", ps->items[i - n].name);
            nm[k] = owned[k];
        } else nm[k] = names[i];
        if (!(hs[k] = gc_tensor_to(src, GC_CPU, GC_F32))) { rc = gc_cli_fail_status("copying outputs"); break; }
        k++;
    }
    if (!rc && gc_st_save(path, k, nm, hs, 0, NULL) != GC_OK) rc = gc_cli_fail_status(NULL);
    for (int i = 0; i < cap; i++) { free(owned[i]); gc_tensor_release(hs[i]); }
    free(nm);
    free(owned);
    free(hs);
    return rc;
}

/* pixel_values and pixel_values_b [B,3,H,W]: two views per sample */
static int load_views(const char *path, gc_tensor **a, gc_tensor **b, bool need_b)
{
    *a = *b = NULL;
    gc_st_file *f;
    if (gc_st_open(path, &f) != GC_OK) return gc_cli_fail_status(NULL);
    const char *keys[2] = {"pixel_values", "pixel_values_b"};
    gc_tensor **out[2] = {a, b};
    int rc = 0;
    for (int i = 0; i < 2 && !rc; i++) {
        const gc_st_entry *e = gc_st_find(f, keys[i]);
        if (!e) {
            if (i == 0 || need_b) rc = gc_cli_fail("%s: no %s (a DINOv3 %s needs pixel_values%s)", path, keys[i],
                                                   need_b ? "pair" : "embedding", need_b ? " and pixel_values_b" : "");
            continue;
        }
        if (e->ndim != 4 || !gc_dtype_is_float(e->dtype)) rc = gc_cli_fail("%s: %s must be a float tensor [B, 3, H, W]", path, keys[i]);
        else if (!(*out[i] = gc_st_load(f, keys[i], GC_F32, GC_CPU))) rc = gc_cli_fail_status(path);
    }
    gc_st_close(f);
    if (!rc && *b && (*b)->shape[0] != (*a)->shape[0])
        rc = gc_cli_fail("%s: pixel_values has %lld rows, pixel_values_b %lld: they must pair up", path,
                         (long long)(*a)->shape[0], (long long)(*b)->shape[0]);
    return rc;
}

static int open_dinov3(const grad_args *a, gc_dinov3 **m)
{
    gc_dinov3_options opt = {0};
    if (gc_cli_parse_dtype(a->dtype, &opt.dtype)) return 1;
    if (gc_device_parse(a->device, &opt.device) != GC_OK) return gc_cli_fail_status("--device");
    if (opt.device.type == GC_DEVICE_CUDA && !gc_cuda_available()) {
        gc_error_clear();
        return gc_cli_fail("--device cuda: %s", gc_cuda_built() ? "no usable CUDA device" : "this build has no CUDA backend");
    }
    if (gc_dinov3_load(m, a->model, &opt) != GC_OK) return gc_cli_fail_status(NULL);
    return 0;
}

static int dinov3_grad(const grad_args *a)
{
    gc_tensor *va, *vb;
    if (load_views(a->inputs, &va, &vb, true)) return 1;
    gc_dinov3 *m = NULL;
    int rc = open_dinov3(a, &m);
    if (!rc) rc = pin_inputs(a, va, vb);
    gc_dinov3_task task;
    gc_gradcache_result res = {0};
    if (!rc && gc_dinov3_task_init(&task, m, va, vb, a->chunk, a->temperature) != GC_OK) rc = gc_cli_fail_status(NULL);
    else if (!rc) {
        gc_params *ps = gc_dinov3_params(m);
        if (gc_params_zero_grad(ps) != GC_OK || gc_dinov3_task_step(&task, (gc_rand_context){a->seed, 0, 0}, &res) != GC_OK)
            rc = gc_cli_fail_status(NULL);
        gc_pool *p = gc_pool_push();
        if (!rc) {
            float lf = (float)res.loss;
            gc_tensor *ea = gc_l2normalize(res.reps[0], 1e-12), *eb = gc_l2normalize(res.reps[1], 1e-12);
            gc_tensor *outs[4] = {gc_pool_add(gc_tensor_from_data(GC_F32, GC_CPU, 1, GC_SHAPE(1), &lf)), ea, eb,
                                  gc_scale(gc_matmul(ea, eb, false, true), 1.0 / a->temperature)};
            const char *names[4] = {"loss", "embeds_a", "embeds_b", "logits"};
            rc = outs[3] ? write_outputs(a->out, 4, names, outs, ps) : gc_cli_fail_status(NULL);
            if (!rc) printf("loss %.6f  batch %lld  chunk %lld  %s %s -> %s\n", res.loss, (long long)va->shape[0],
                            (long long)(a->chunk ? a->chunk : va->shape[0]), a->device, a->dtype, a->out);
        }
        gc_pool_pop(p);
        gc_gradcache_result_clear(&res);
        gc_dinov3_task_free(&task);
    }
    gc_dinov3_free(m);
    gc_tensor_release(va);
    gc_tensor_release(vb);
    return rc;
}

static int dinov3_embed(const grad_args *a)
{
    gc_tensor *va, *vb;
    if (load_views(a->inputs, &va, &vb, false)) return 1;
    gc_dinov3 *m = NULL;
    int rc = open_dinov3(a, &m);
    if (!rc) rc = pin_inputs(a, va, vb);
    if (!rc) {
        gc_dinov3_set_training(m, false);
        gc_tensor *ins[2] = {va, vb}, *outs[2] = {NULL, NULL};
        const char *names[2] = {"embeds_a", "embeds_b"};
        int k = 0;
        for (int i = 0; i < 2 && !rc; i++) {
            if (!ins[i]) continue;
            gc_dinov3_task t;
            if (gc_dinov3_task_init(&t, m, ins[i], ins[i], a->chunk, 1.0) != GC_OK) { rc = gc_cli_fail_status(NULL); break; }
            t.gc.n_towers = 1;
            gc_tensor *reps = NULL;
            if (gc_gradcache_embed(&t.gc, gc_rand_context_get(), &reps) != GC_OK) rc = gc_cli_fail_status(NULL);
            else {
                gc_pool *p = gc_pool_push();
                gc_tensor *n = gc_l2normalize(reps, 1e-12);
                outs[k] = n ? gc_tensor_retain(n) : NULL;
                names[k] = names[i];
                k += outs[k] != NULL;
                gc_pool_pop(p);
            }
            gc_tensor_release(reps);
            gc_dinov3_task_free(&t);
        }
        if (!rc) rc = write_outputs(a->out, k, names, outs, NULL);
        for (int i = 0; i < 2; i++) gc_tensor_release(outs[i]);
    }
    gc_dinov3_free(m);
    gc_tensor_release(va);
    gc_tensor_release(vb);
    return rc;
}

/* ---------------------------------------------------------------- grad */

static int cmd_grad(int argc, char **argv)
{
    grad_args a;
    if (parse_grad_args(argc, argv, &a)) return 1;
    char mt[64];
    if (model_type(a.model, mt, sizeof mt)) return 1;
    if (!strcmp(mt, "dinov3_vit")) return dinov3_grad(&a);
    if (a.temperature_set)
        return gc_cli_fail("--temperature: %s is a CLIP model, which learns its own logit_scale (the flag is for DINOv3)", a.model);
    gc_tensor *pixels, *ids;
    if (load_inputs(a.inputs, &pixels, &ids)) return 1;
    if (!pixels || !ids) return gc_cli_fail("%s: grad needs both pixel_values and input_ids", a.inputs);
    gc_clip *m;
    if (open_model(&a, &m)) return 1;
    int rc = pin_inputs(&a, pixels, ids);
    if (rc) goto out;
    gc_clip_task task;
    gc_clip_task_init(&task, m, pixels, ids, a.chunk);
    gc_params *ps = gc_clip_params(m);
    gc_gradcache_result res;
    gc_rand_context rng = {a.seed, 0, 0};
    if (gc_params_zero_grad(ps) != GC_OK || gc_clip_task_step(&task, rng, &res) != GC_OK) {
        rc = gc_cli_fail_status(NULL);
        goto out;
    }
    /* outputs as transformers' CLIPOutput gives them */
    gc_pool *p = gc_pool_push();
    gc_tensor *i_n = gc_l2normalize(res.reps[0], 1e-12), *t_n = gc_l2normalize(res.reps[1], 1e-12);
    gc_tensor *logits = gc_mul(gc_matmul(i_n, t_n, false, true), gc_exp(gc_clip_logit_scale(m)));
    double lv = res.loss;
    float lf = (float)lv;
    gc_tensor *loss = gc_pool_add(gc_tensor_from_data(GC_F32, GC_CPU, 1, GC_SHAPE(1), &lf));
    int n = 4 + ps->n;
    const char **names = calloc((size_t)n, sizeof *names);
    char **owned = calloc((size_t)n, sizeof *owned);
    gc_tensor **ts = calloc((size_t)n, sizeof *ts);
    if (!names || !owned || !ts || !logits || !loss) rc = gc_cli_fail_status("computing outputs");
    int k = 0;
    if (!rc) {
        names[k] = "loss"; ts[k++] = loss;
        names[k] = "image_embeds"; ts[k++] = i_n;
        names[k] = "text_embeds"; ts[k++] = t_n;
        names[k] = "logits_per_image"; ts[k++] = logits;
        for (int i = 0; i < ps->n; i++) {
            gc_tensor *g = gc_tensor_grad(ps->items[i].value);
            if (!g) continue; /* frozen */
            size_t len = strlen(ps->items[i].name) + 6;
            owned[k] = malloc(len);
            snprintf(owned[k], len, "grad.%s", ps->items[i].name);
            names[k] = owned[k];
            ts[k++] = g;
        }
        for (int i = 0; i < k && !rc; i++) {
            gc_tensor *h = gc_pool_add(gc_tensor_to(ts[i], GC_CPU, GC_F32));
            if (!h) rc = gc_cli_fail_status("copying outputs");
            ts[i] = h;
        }
        if (!rc && gc_st_save(a.out, k, names, ts, 0, NULL) != GC_OK) rc = gc_cli_fail_status(NULL);
    }
    if (!rc) printf("loss %.6f  batch %lld  chunk %lld  %s %s -> %s\n", lv, (long long)pixels->shape[0],
                    (long long)(a.chunk ? a.chunk : pixels->shape[0]), a.device, a.dtype, a.out);
    for (int i = 0; i < n; i++) free(owned[i]);
    free(owned);
    free(names);
    free(ts);
    gc_pool_pop(p);
    gc_gradcache_result_clear(&res);
out:
    gc_clip_free(m);
    gc_tensor_release(pixels);
    gc_tensor_release(ids);
    return rc;
}

/* ---------------------------------------------------------------- embed */

static int cmd_embed(int argc, char **argv)
{
    grad_args a;
    if (parse_grad_args(argc, argv, &a)) return 1;
    if (a.temperature_set) return gc_cli_fail("--temperature: embed computes no loss (the flag is for grad)");
    char mt[64];
    if (model_type(a.model, mt, sizeof mt)) return 1;
    if (!strcmp(mt, "dinov3_vit")) return dinov3_embed(&a);
    gc_tensor *pixels, *ids;
    if (load_inputs(a.inputs, &pixels, &ids)) return 1;
    gc_clip *m;
    if (open_model(&a, &m)) return 1;
    gc_clip_set_training(m, false);
    gc_tensor *img = NULL, *txt = NULL;
    int rc = pin_inputs(&a, pixels, ids);
    if (!rc && gc_clip_task_embed(m, pixels, ids, a.chunk, &img, &txt) != GC_OK) rc = gc_cli_fail_status(NULL);
    if (!rc) {
        const char *names[2];
        gc_tensor *ts[2];
        int k = 0;
        if (img) { names[k] = "image_embeds"; ts[k++] = gc_tensor_to(img, GC_CPU, GC_F32); }
        if (txt) { names[k] = "text_embeds"; ts[k++] = gc_tensor_to(txt, GC_CPU, GC_F32); }
        if (gc_st_save(a.out, k, names, ts, 0, NULL) != GC_OK) rc = gc_cli_fail_status(NULL);
        for (int i = 0; i < k; i++) gc_tensor_release(ts[i]);
    }
    gc_tensor_release(img);
    gc_tensor_release(txt);
    gc_clip_free(m);
    gc_tensor_release(pixels);
    gc_tensor_release(ids);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        fputs(USAGE, argc < 2 ? stderr : stdout);
        return argc < 2 ? 1 : 0;
    }
    const char *cmd = argv[1];
    if (gc_ops_env_check() != GC_OK) return gc_cli_fail_status("environment");
    if (!strcmp(cmd, "grad")) return cmd_grad(argc - 2, argv + 2);
    if (!strcmp(cmd, "embed")) return cmd_embed(argc - 2, argv + 2);
    if (!strcmp(cmd, "train")) return gc_cli_train(argc - 2, argv + 2);
    if (!strcmp(cmd, "bench")) return gc_cli_bench(argc - 2, argv + 2);
    return gc_cli_fail("unknown command '%s' (see gcache --help)", cmd);
}
