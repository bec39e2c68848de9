/* gcache train CONFIG.yaml with a DINOv3 model: image-image contrastive training.
 *
 * Each training sample is a pair of images of the same thing. Both go through one DINOv3
 * (two towers sharing the weights, gradcache/gc_dinov3_task.h); the loss is symmetric
 * InfoNCE between the L2-normalised embeddings at a fixed `temperature`, computed over
 * the whole batch with the gradient cache (`gradient_cache_chunk_size` rows at a time).
 *
 * Data (`pair_format`):
 *   pairs   a CSV/TSV manifest with two image columns (csv_img_key, csv_img_b_key): row i
 *           is the pair (a_i, b_i).
 *   labels  a manifest with an image and a label column (csv_img_key, csv_label_key), or
 *           WebDataset shards whose .txt is the label (product retrieval, e.g. Stanford
 *           Online Products' Ebay_train.txt read with csv_separator " "). Sample i's
 *           positive is another image of its label, drawn uniformly from the label's
 *           other images by (seed, epoch, i): a new positive every epoch, the same for
 *           any number of threads and after a resume. A label with a single image pairs
 *           it with itself (only the augmentations make the two views differ).
 * Views: DINOv3 preprocessing (bilinear resize to S x S, the ImageNet mean/std); with
 * `augment: true` each view independently gets a random resized crop (area 0.35-1,
 * aspect 3/4-4/3), a horizontal flip (p 0.5) and colour jitter (brightness, contrast,
 * saturation 0.3), drawn from (seed, epoch, 2i) for view a and (seed, epoch, 2i + 1) for
 * view b. A pair one of whose images cannot be read is dropped as a whole (counted, the
 * first reasons reported) and the batch filled from the following pairs, so the views
 * never fall out of step; which pairs are dropped depends only on the data.
 *
 * Evaluation (`val_data`, every `eval_every` steps and at the end; no augmentation):
 *   pairs   for each validation pair, view b is retrieved among all views b from view a
 *           (cosine similarity): i2i_recall@1/5/10 = a->b, b2a_recall@1/5/10 = b->a (ties
 *           count against, as gc_recall_at_k).
 *   labels  the usual product-retrieval protocol: every image queries all the other
 *           validation images; a hit at K is an image of the query's label among the K
 *           nearest (i2i_recall@K). Images whose label has no other image are not
 *           queries ("queries" in the metrics line says how many were).
 * Output as `gcache train` for CLIP: metrics.jsonl, training.svg, crash-safe checkpoints
 * (the model in HF layout as gc_dinov3_save writes it, plus a PEFT adapter with LoRA,
 * optimizer state, trainer_state.json with the data position, `latest`); `--resume`
 * continues bit-exactly. */
#include "gc_train_pairs.h"

#include <ctype.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "../autograd/gc_optim.h"
#include "../gradcache/gc_dinov3_task.h"
#include "../models/gc_json.h"
#include "../models/gc_lora.h"
#include "../runtime/gc_rng.h"
#include "gc_cli.h"
#include "gc_data.h"
#include "gc_train_util.h"

/* the augmentations of `augment: true` */
#define AUG_CROP_SCALE_MIN 0.35f
#define AUG_HFLIP 0.5f
#define AUG_JITTER 0.3f

bool gc_train_pairs_wanted(const gc_train_config *c)
{
    if (!gc_path_is_dir(c->model)) return strcasestr(c->model, "dinov3") != NULL; /* a name, or a missing DINOv3 directory */
    char path[GC_CFG_STR + 16];
    snprintf(path, sizeof path, "%s/config.json", c->model);
    cJSON *j = NULL;
    if (gc_json_load_file(path, &j) != GC_OK) { /* the CLIP trainer reports it */
        gc_error_clear();
        return false;
    }
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(j, "model_type");
    bool yes = cJSON_IsString(mt) && !strcmp(mt->valuestring, "dinov3_vit");
    cJSON_Delete(j);
    return yes;
}

/* ================================================================ pair data */

typedef struct pair_set {
    bool labels;
    gc_dataset *a, *b;   /* pairs: the manifest read twice, images from column a, then b; labels: b NULL */
    int64_t n;
    /* labels: class of each sample; members of class k (ascending) are members[cstart[k] .. cstart[k+1]) */
    int64_t *cls, *members, *cstart, *rank;
    int64_t n_classes, n_single;
} pair_set;

typedef struct label_ref {
    const char *s;
    size_t n;
    int64_t i;
} label_ref;

static int label_cmp(const void *x, const void *y)
{
    const label_ref *a = x, *b = y;
    int c = memcmp(a->s, b->s, a->n < b->n ? a->n : b->n);
    if (c) return c;
    if (a->n != b->n) return a->n < b->n ? -1 : 1;
    return a->i < b->i ? -1 : a->i > b->i;
}

/* groups the samples by label (leading and trailing white space ignored) */
static gc_status pair_set_classes(pair_set *p, const char *spec)
{
    int64_t N = p->n;
    label_ref *r = malloc(sizeof *r * (size_t)(N ? N : 1));
    p->cls = malloc(sizeof(int64_t) * (size_t)(N ? N : 1));
    p->members = malloc(sizeof(int64_t) * (size_t)(N ? N : 1));
    p->rank = malloc(sizeof(int64_t) * (size_t)(N ? N : 1));
    p->cstart = malloc(sizeof(int64_t) * (size_t)(N + 1));
    if (!r || !p->cls || !p->members || !p->rank || !p->cstart) {
        free(r);
        return gc_error_set(GC_ERR_OOM, "%s: out of host memory for the labels of %lld samples", spec, (long long)N);
    }
    for (int64_t i = 0; i < N; i++) {
        const char *s = gc_dataset_caption(p->a, i);
        if (!s) s = "";
        while (*s && isspace((unsigned char)*s)) s++;
        size_t n = strlen(s);
        while (n && isspace((unsigned char)s[n - 1])) n--;
        if (!n) {
            char name[512];
            free(r);
            return gc_error_set(GC_ERR_FORMAT, "%s: sample %lld (%s) has an empty label", spec, (long long)i,
                                gc_dataset_image_name(p->a, i, name, sizeof name));
        }
        r[i] = (label_ref){s, n, i};
    }
    qsort(r, (size_t)N, sizeof *r, label_cmp);
    int64_t k = -1;
    for (int64_t j = 0; j < N; j++) {
        if (j == 0 || r[j].n != r[j - 1].n || memcmp(r[j].s, r[j - 1].s, r[j].n)) p->cstart[++k] = j;
        p->members[j] = r[j].i;
        p->cls[r[j].i] = k;
        p->rank[r[j].i] = j - p->cstart[k];
    }
    p->n_classes = k + 1;
    p->cstart[p->n_classes] = N;
    for (int64_t c = 0; c < p->n_classes; c++) p->n_single += p->cstart[c + 1] - p->cstart[c] == 1;
    free(r);
    return GC_OK;
}

static void pair_set_free(pair_set *p)
{
    gc_dataset_free(p->a);
    gc_dataset_free(p->b);
    free(p->cls);
    free(p->members);
    free(p->cstart);
    free(p->rank);
    memset(p, 0, sizeof *p);
}

/* the pair keys that need no data (checked before anything is written) */
static gc_status pair_config_check(const gc_train_config *c, const char *where)
{
    const bool labels = !strcmp(c->pair_format, "labels");
    if (!labels && !strcmp(c->data_format, "webdataset"))
        return gc_error_set(GC_ERR_INVALID, "%s: pair_format pairs reads a CSV/TSV manifest with two image columns "
                            "(csv_img_key, csv_img_b_key); WebDataset shards work with pair_format labels (the .txt "
                            "is the label)", where);
    return gc_train_check_columns(c, labels ? "csv_label_key" : "csv_img_b_key", labels ? c->csv_label_key : c->csv_img_b_key,
                                  where);
}

static gc_status pair_set_open(pair_set *p, const gc_train_config *c, const char *spec)
{
    memset(p, 0, sizeof *p);
    p->labels = !strcmp(c->pair_format, "labels");
    bool tar = !strcmp(c->data_format, "webdataset");
    char sep = c->csv_separator[0];
    if (!p->labels) {
        if (!(p->a = gc_dataset_open_csv(spec, sep, c->csv_img_key, c->csv_img_b_key))) return GC_PENDING();
        if (!(p->b = gc_dataset_open_csv(spec, sep, c->csv_img_b_key, c->csv_img_key))) return GC_PENDING();
        p->n = gc_dataset_size(p->a);
        return GC_OK;
    }
    p->a = tar ? gc_dataset_open_tar(spec) : gc_dataset_open_csv(spec, sep, c->csv_img_key, c->csv_label_key);
    if (!p->a) return GC_PENDING();
    p->n = gc_dataset_size(p->a);
    return pair_set_classes(p, spec);
}

/* The other image of sample i's pair in epoch `epoch` (labels): uniform among the other
 * images of i's label, i itself when it is alone. */
static int64_t pair_positive(const pair_set *p, uint64_t seed, int64_t epoch, int64_t i)
{
    int64_t k = p->cls[i], m = p->cstart[k + 1] - p->cstart[k];
    if (m == 1) return i;
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    uint32_t ctr[4] = {(uint32_t)i, (uint32_t)((uint64_t)i >> 32) ^ (uint32_t)((uint64_t)epoch >> 32),
                       0x706f7369u /* "posi" */, (uint32_t)epoch};
    uint32_t r[4];
    gc_philox4x32_10(key, ctr, r);
    int64_t j = (int64_t)((((uint64_t)r[0] << 32) | r[1]) % (uint64_t)(m - 1));
    return p->members[p->cstart[k] + j + (j >= p->rank[i])];
}

/* ================================================================ pair loader */

/* gc_loader over the pairs (tools/loader.c): sample i's views are image i of column a
 * (draws of (seed, epoch, 2i)) and its partner (draws of (seed, epoch, 2i + 1)); a pair
 * one of whose images fails is skipped as a whole. */
static gc_status pair_produce(void *user, const gc_loader_opts *o, int64_t i, int64_t epoch, gc_loader_sample *out)
{
    const pair_set *ps = user;
    int64_t j = ps->labels ? pair_positive(ps, o->seed, epoch, i) : i;
    out->index_b = j;
    gc_status st = gc_loader_load_view(ps->a, i, o, epoch, 2 * (uint64_t)i, &out->view[0]);
    if (st == GC_OK) st = gc_loader_load_view(ps->labels ? ps->a : ps->b, j, o, epoch, 2 * (uint64_t)i + 1, &out->view[1]);
    return st;
}

static gc_loader *pair_loader_new(const pair_set *ps, const gc_loader_opts *o)
{
    gc_loader_source src = {.n = ps->n, .views = 2, .produce = pair_produce, .user = (void *)ps, .noun = "pair"};
    return gc_loader_new_source(&src, o);
}

/* ================================================================ synthetic pairs */

#define SYNTH_TAG "gcache synthetic pairs v1"

static void mirror(gc_image *im)
{
    for (int y = 0; y < im->h; y++) {
        uint8_t *r = im->rgb + (size_t)y * im->w * 3;
        for (int a = 0, b = im->w - 1; a < b; a++, b--)
            for (int c = 0; c < 3; c++) {
                uint8_t t = r[3 * a + c];
                r[3 * a + c] = r[3 * b + c];
                r[3 * b + c] = t;
            }
    }
}

/* A deterministic pair set from gc_synth's shapes, at `manifest` (its columns and
 * separator those of the configuration). pairs: view a is sample i rendered at S, view
 * b the same scene rendered at 3S/2 and mirrored. labels: sample i rendered at S,
 * labelled with its caption ("a small red circle above a large blue square"): the
 * one-shape captions repeat, most two-shape ones are single-image labels. Images go to
 * <dir>/images/<manifest name>_NNNNNN[_a|_b].png. Kept when the record beside the
 * manifest matches; a manifest without our record is never overwritten. */
static gc_status synth_pairs_make(const gc_train_config *c, const char *manifest, int64_t n, int S, uint64_t seed)
{
    bool labels = !strcmp(c->pair_format, "labels");
    if (strcmp(c->data_format, "csv"))
        return gc_error_set(GC_ERR_INVALID, "%s: synthetic_train/synthetic_val write a CSV/TSV manifest (data_format: csv)",
                            manifest);
    char sep = c->csv_separator[0];
    const char *col2 = labels ? c->csv_label_key : c->csv_img_b_key;
    char rec[GC_CFG_STR + 16], info[512], dir[GC_CFG_STR], base[GC_CFG_STR];
    snprintf(rec, sizeof rec, "%s.synth", manifest);
    snprintf(info, sizeof info, "%s\nformat %s\nn %lld\nsize %d\nseed %llu\nseparator %d\ncolumns %s %s\n", SYNTH_TAG,
             c->pair_format, (long long)n, S, (unsigned long long)seed, sep, c->csv_img_key, col2);
    if (gc_path_exists(manifest)) {
        char *old = gc_path_exists(rec) ? gc_read_text(rec) : NULL;
        gc_error_clear();
        bool same = old && !strcmp(old, info), ours = old && !strncmp(old, SYNTH_TAG, strlen(SYNTH_TAG));
        free(old);
        if (same) return GC_OK;
        if (!ours)
            return gc_error_set(GC_ERR_STATE, "%s exists and was not written by the synthetic pair generator; not "
                                "overwriting it (set synthetic_train/synthetic_val to 0 to use it)", manifest);
    }
    gc_path_dirname(manifest, dir, sizeof dir);
    const char *slash = strrchr(manifest, '/');
    snprintf(base, sizeof base, "%s", slash ? slash + 1 : manifest);
    char *dot = strrchr(base, '.');
    if (dot && dot != base) *dot = 0;
    char img_dir[GC_CFG_STR + 16];
    snprintf(img_dir, sizeof img_dir, "%s/images", dir);
    GC_TRY(gc_mkdirs(img_dir));
    GC_TRY(gc_write_text(rec, info)); /* the manifest, written last, marks a complete set */
    size_t cap = 256 + (size_t)n * (2 * strlen(base) + 256), used = 0;
    char *text = malloc(cap);
    if (!text) return gc_error_set(GC_ERR_OOM, "synthetic pairs: out of host memory");
    used += (size_t)snprintf(text, cap, "%s%c%s\n", c->csv_img_key, sep, col2);
    gc_status st = GC_OK;
    for (int64_t i = 0; i < n && st == GC_OK; i++) {
        char caption[200], name[GC_CFG_STR * 2], name_b[GC_CFG_STR * 2], path[GC_CFG_STR * 3];
        gc_image im = {0};
        st = gc_synth_sample(i, S, seed, caption, sizeof caption, &im);
        snprintf(name, sizeof name, "images/%s_%06lld%s.png", base, (long long)i, labels ? "" : "_a");
        snprintf(path, sizeof path, "%s/%s", dir, name);
        if (st == GC_OK) st = gc_image_save_png(path, &im);
        gc_image_free(&im);
        if (st != GC_OK) break;
        if (labels) {
            for (char *p = caption; *p; p++)
                if (*p == sep || *p == '"') *p = '_';
            used += (size_t)snprintf(text + used, cap - used, "%s%c%s\n", name, sep, caption);
            continue;
        }
        st = gc_synth_sample(i, S * 3 / 2, seed, NULL, 0, &im);
        snprintf(name_b, sizeof name_b, "images/%s_%06lld_b.png", base, (long long)i);
        snprintf(path, sizeof path, "%s/%s", dir, name_b);
        if (st == GC_OK) {
            mirror(&im);
            st = gc_image_save_png(path, &im);
        }
        gc_image_free(&im);
        used += (size_t)snprintf(text + used, cap - used, "%s%c%s\n", name, sep, name_b);
    }
    if (st == GC_OK) st = gc_write_text(manifest, text);
    free(text);
    return st;
}

/* ================================================================ the trainer */

typedef struct ptrainer {
    gc_train_config cfg;
    const char *cfg_path;
    gc_device dev;
    gc_dinov3 *model;
    gc_lora_options lora;
    char lora_targets[GC_CFG_STR];
    pair_set train, val;
    bool have_val;
    gc_loader *loader;
    gc_adamw opt;
    bool opt_ready;
    int S;
    int64_t step, total_steps, steps_per_epoch, skipped_before;
    gc_loader_pos next;
    gc_train_log log;
} ptrainer;

static int64_t chunk_of(const ptrainer *t)
{
    return t->cfg.use_gradient_cache ? t->cfg.gradient_cache_chunk_size : 0;
}

/* lora_target_modules by DINOv3's HF names; the configuration's default (CLIP's
 * q,k,v,out_proj) means DINOv3's q,k,v,o_proj */
static gc_status lora_targets(ptrainer *t)
{
    static const char *const known[] = {"q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", NULL};
    const char *v = t->cfg.lora_target_modules;
    if (!strcmp(v, "q_proj,k_proj,v_proj,out_proj")) v = "q_proj,k_proj,v_proj,o_proj";
    snprintf(t->lora_targets, sizeof t->lora_targets, "%s", v);
    char where[GC_CFG_STR + 32];
    snprintf(where, sizeof where, "%s: lora_target_modules", t->cfg_path);
    return gc_lora_check_targets(v, known, "DINOv3", where);
}

static gc_status open_model(ptrainer *t)
{
    const gc_train_config *c = &t->cfg;
    gc_dinov3_options o = {.device = t->dev, .dtype = strcmp(c->mixed_precision, "bf16") ? GC_F32 : GC_BF16,
                           .checkpointing = c->gradient_checkpointing,
                           .pool = strcmp(c->pool, "mean") ? GC_DINOV3_POOL_CLS : GC_DINOV3_POOL_MEAN};
    if (c->use_lora) {
        GC_TRY(lora_targets(t));
        t->lora = (gc_lora_options){(int)c->lora_r, c->lora_alpha, c->lora_dropout, t->lora_targets};
        o.lora = t->lora;
    }
    if (gc_path_is_dir(c->model)) GC_TRY(gc_dinov3_load(&t->model, c->model, &o));
    else {
        gc_dinov3_config mc;
        if (gc_dinov3_config_named(c->model, &mc) != GC_OK) {
            gc_error_clear();
            return gc_error_set(GC_ERR_INVALID, "%s: model: '%s' is neither a checkpoint directory nor a known "
                                "architecture (dinov3-tiny, dinov3-vit-b16)", t->cfg_path, c->model);
        }
        GC_TRY(gc_dinov3_init(&t->model, &mc, &o, c->seed));
    }
    const gc_dinov3_config *mc = gc_dinov3_get_config(t->model);
    t->S = (int)mc->image_size;
    if (t->S % mc->patch)
        return gc_error_set(GC_ERR_INVALID, "%s: image_size %d is not a multiple of the patch size %lld", c->model, t->S,
                            (long long)mc->patch);
    return GC_OK;
}

static gc_status open_data(ptrainer *t)
{
    const gc_train_config *c = &t->cfg;
    GC_TRY(pair_config_check(c, t->cfg_path));
    if (c->synthetic_train > 0) GC_TRY(synth_pairs_make(c, c->train_data, c->synthetic_train, t->S, c->seed));
    if (c->synthetic_val > 0 && *c->val_data)
        GC_TRY(synth_pairs_make(c, c->val_data, c->synthetic_val, t->S, c->seed + 1000003));
    GC_TRY(pair_set_open(&t->train, c, c->train_data));
    if (t->train.n < c->batch_size)
        return gc_error_set(GC_ERR_INVALID, "%s: %lld pairs, fewer than batch_size %lld", c->train_data,
                            (long long)t->train.n, (long long)c->batch_size);
    if (*c->val_data) {
        GC_TRY(pair_set_open(&t->val, c, c->val_data));
        t->have_val = true;
        if (t->val.n < 2)
            return gc_error_set(GC_ERR_INVALID, "%s: %lld samples; evaluation needs at least 2", c->val_data,
                                (long long)t->val.n);
    }
    return GC_OK;
}

static gc_preprocess train_preprocess(const ptrainer *t)
{
    gc_preprocess p = gc_preprocess_dinov3(t->S);
    if (t->cfg.augment) {
        p.crop_scale[0] = AUG_CROP_SCALE_MIN;
        p.crop_scale[1] = 1.0f;
        p.hflip = AUG_HFLIP;
        p.brightness = p.contrast = p.saturation = AUG_JITTER;
    }
    return p;
}

/* ---------------------------------------------------------------- checkpoints */

static gc_status save_checkpoint(ptrainer *t)
{
    gc_loader_report rep;
    gc_loader_report_get(t->loader, &rep);
    char tmp[GC_CFG_STR + 80];
    GC_TRY(gc_checkpoint_begin(t->cfg.output_dir, t->step, tmp, sizeof tmp));
    GC_TRY(gc_dinov3_save(t->model, tmp)); /* config.json + model.safetensors (HF layout) */
    cJSON *st = gc_trainer_state_new(&t->cfg, t->step, t->total_steps, t->next);
    cJSON_AddStringToObject(st, "pair_format", t->cfg.pair_format);
    cJSON_AddNumberToObject(st, "skipped_pairs", (double)(t->skipped_before + rep.skipped));
    return gc_checkpoint_finish(tmp, &t->cfg, &t->opt, &t->lora, t->step, st);
}

/* DIR is a checkpoint, or an output_dir whose `latest` names one. */
static gc_status load_checkpoint(ptrainer *t, const char *dir)
{
    char ck[GC_CFG_STR * 2], path[GC_CFG_STR * 2 + 64];
    cJSON *st;
    GC_TRY(gc_checkpoint_read_state(dir, ck, sizeof ck, &t->step, &t->next, &st));
    snprintf(path, sizeof path, "%s/trainer_state.json", ck);
    const char *fmt = NULL;
    gc_status s = gc_json_get_int(st, "skipped_pairs", 0, false, &t->skipped_before, path);
    if (s == GC_OK) s = gc_json_get_string(st, "pair_format", "", true, &fmt, path);
    if (s == GC_OK && strcmp(fmt, t->cfg.pair_format))
        s = gc_error_set(GC_ERR_INVALID, "%s: the checkpoint was trained with pair_format %s, the configuration says %s",
                         ck, fmt, t->cfg.pair_format);
    cJSON_Delete(st);
    GC_TRY(s);
    static const char *const ignore[] = {"inv_freq", NULL};
    return gc_checkpoint_load_weights(ck, &t->cfg, &t->opt, &t->lora, ignore, t->step);
}

/* ---------------------------------------------------------------- evaluation */

/* L2-normalised f32 embeddings of n images per view (b may be NULL), written to rows
 * [at, at + n) of ea (and eb). */
static gc_status embed_into(ptrainer *t, const gc_batch *bt, gc_tensor *ea, gc_tensor *eb, int64_t at)
{
    gc_pool *p = gc_pool_push();
    /* views of the loader's (page-locked) batch, as in training: no host copy */
    const int n = bt->n;
    const bool b = bt->pixels_b_tensor != NULL;
    gc_tensor *pa = gc_rows(bt->pixels_tensor, 0, n);
    gc_tensor *pb = b ? gc_rows(bt->pixels_b_tensor, 0, n) : pa;
    gc_dinov3_task task;
    memset(&task, 0, sizeof task);
    gc_tensor *reps[2] = {NULL, NULL};
    gc_status st = pa && pb ? gc_dinov3_task_init(&task, t->model, pa, pb, chunk_of(t), t->cfg.temperature) : GC_PENDING();
    if (st == GC_OK) {
        task.gc.n_towers = b ? 2 : 1;
        st = gc_gradcache_embed(&task.gc, gc_rand_context_get(), reps);
    }
    gc_tensor *dst[2] = {ea, eb};
    bool prev = gc_grad_set_enabled(false);
    for (int v = 0; v < (b ? 2 : 1) && st == GC_OK; v++) {
        gc_tensor *e = gc_l2normalize(gc_cast(reps[v], GC_F32), 1e-12);
        st = e ? gc_tensor_copy_into(gc_rows(dst[v], at, at + n), e, false) : GC_PENDING();
    }
    gc_grad_set_enabled(prev);
    gc_tensor_release(reps[0]);
    gc_tensor_release(reps[1]);
    gc_dinov3_task_free(&task);
    gc_pool_pop(p);
    return st;
}

/* Calls fn(user, i, sims) with sims[j] = q_i . k_j for every row i of q [n, D] and
 * every row j of k [n, D], a block of rows at a time (the n x n matrix never exists). */
static gc_status sim_rows(gc_tensor *q, gc_tensor *k, int64_t n, void (*fn)(void *, int64_t, const float *, int64_t),
                          void *user)
{
    int64_t blk = ((int64_t)1 << 24) / n;
    blk = blk < 1 ? 1 : blk > n ? n : blk;
    float *buf = malloc(sizeof(float) * (size_t)(blk * n));
    if (!buf) return gc_error_set(GC_ERR_OOM, "evaluation: out of host memory");
    gc_status st = GC_OK;
    for (int64_t i0 = 0; i0 < n && st == GC_OK; i0 += blk) {
        int64_t i1 = i0 + blk < n ? i0 + blk : n;
        gc_pool *p = gc_pool_push();
        bool prev = gc_grad_set_enabled(false);
        gc_tensor *s = gc_matmul(gc_rows(q, i0, i1), gc_rows(k, 0, n), false, true); /* [i1 - i0, n] */
        gc_grad_set_enabled(prev);
        st = s ? gc_tensor_to_host_f32(s, buf) : GC_PENDING();
        gc_pool_pop(p);
        for (int64_t i = i0; i < i1 && st == GC_OK; i++) fn(user, i, buf + (i - i0) * n, n);
    }
    free(buf);
    return st;
}

typedef struct recall_acc {
    double hits[3];
    int64_t queries;
    const int64_t *cls; /* labels: class of each row */
} recall_acc;

static const int RECALL_K[3] = {1, 5, 10};

/* pairs: the rank of the true match i among row i; ties count against */
static void recall_pair_row(void *u, int64_t i, const float *s, int64_t n)
{
    recall_acc *r = u;
    int64_t rank = 0;
    for (int64_t j = 0; j < n; j++) rank += j != i && s[j] >= s[i];
    for (int k = 0; k < 3; k++) r->hits[k] += rank < RECALL_K[k];
    r->queries++;
}

/* labels: hit at K when an image of the query's class is among the K nearest others,
 * i.e. fewer than K images of other classes are at least as close as its nearest
 * same-class image (ties count against) */
static void recall_label_row(void *u, int64_t i, const float *s, int64_t n)
{
    recall_acc *r = u;
    float best = -INFINITY;
    bool any = false;
    for (int64_t j = 0; j < n; j++)
        if (j != i && r->cls[j] == r->cls[i] && (!any || s[j] > best)) { best = s[j]; any = true; }
    if (!any) return;
    int64_t above = 0;
    for (int64_t j = 0; j < n; j++) above += r->cls[j] != r->cls[i] && s[j] >= best;
    for (int k = 0; k < 3; k++) r->hits[k] += above < RECALL_K[k];
    r->queries++;
}

/* r[0..2]: i2i recall@1/5/10; r[3..5]: b->a (pairs); *queries */
static gc_status evaluate(ptrainer *t, double r[6], int64_t *queries)
{
    const pair_set *vs = &t->val;
    int64_t N = vs->n;
    gc_loader_opts lo = gc_eval_loader_opts(&t->cfg, t->S, N);
    lo.pre = gc_preprocess_dinov3(t->S);
    int64_t D = gc_dinov3_get_config(t->model)->hidden;
    gc_tensor *ea = gc_tensor_new(GC_F32, t->dev, 2, GC_SHAPE(N, D));
    gc_tensor *eb = vs->labels ? NULL : gc_tensor_new(GC_F32, t->dev, 2, GC_SHAPE(N, D));
    int64_t *cls = vs->labels ? malloc(sizeof(int64_t) * (size_t)N) : NULL;
    gc_status st = !ea || (!vs->labels && !eb) ? GC_PENDING()
                   : vs->labels && !cls          ? gc_error_set(GC_ERR_OOM, "evaluation: out of host memory")
                                                 : GC_OK;
    int64_t at = 0;
    gc_dinov3_set_training(t->model, false);
    if (st == GC_OK && vs->labels) { /* single images: gc_loader over the labelled data set */
        gc_loader *l = gc_loader_new(vs->a, &lo);
        if (!l) st = GC_PENDING();
        for (const gc_batch *b; st == GC_OK;) {
            if ((st = gc_loader_next(l, &b)) != GC_OK || !b) break;
            st = embed_into(t, b, ea, NULL, at);
            for (int i = 0; i < b->n; i++) cls[at + i] = vs->cls[b->indices[i]];
            at += b->n;
        }
        gc_loader_free(l);
    } else if (st == GC_OK) {
        gc_loader *l = pair_loader_new(vs, &lo);
        if (!l) st = GC_PENDING();
        for (const gc_batch *b; st == GC_OK;) {
            if ((st = gc_loader_next(l, &b)) != GC_OK || !b) break;
            st = embed_into(t, b, ea, eb, at);
            at += b->n;
        }
        gc_loader_free(l);
    }
    gc_dinov3_set_training(t->model, true);
    if (st == GC_OK && at < 2)
        st = gc_error_set(GC_ERR_INVALID, "%s: the validation set gave %lld usable samples", t->cfg.val_data, (long long)at);
    recall_acc ab = {{0}, 0, cls}, ba = {{0}, 0, NULL};
    if (st == GC_OK && vs->labels) st = sim_rows(ea, ea, at, recall_label_row, &ab);
    if (st == GC_OK && !vs->labels) st = sim_rows(ea, eb, at, recall_pair_row, &ab);
    if (st == GC_OK && !vs->labels) st = sim_rows(eb, ea, at, recall_pair_row, &ba);
    for (int k = 0; k < 3; k++) {
        r[k] = ab.queries ? ab.hits[k] / (double)ab.queries : 0;
        r[3 + k] = ba.queries ? ba.hits[k] / (double)ba.queries : 0;
    }
    *queries = ab.queries;
    gc_tensor_release(ea);
    gc_tensor_release(eb);
    free(cls);
    return st;
}

/* ---------------------------------------------------------------- logging */

static void log_eval(ptrainer *t, const double r[6], int64_t queries)
{
    const char *pre = gc_train_log_eol(&t->log);
    if (t->val.labels) {
        fprintf(t->log.metrics, "{\"step\": %lld, \"i2i_recall@1\": %.6f, \"i2i_recall@5\": %.6f, \"i2i_recall@10\": %.6f, "
                "\"queries\": %lld}\n", (long long)t->step, r[0], r[1], r[2], (long long)queries);
        printf("%sstep %lld  eval  image->image (same label) R@1 %.3f R@5 %.3f R@10 %.3f  (%lld queries)\n", pre,
               (long long)t->step, r[0], r[1], r[2], (long long)queries);
    } else {
        fprintf(t->log.metrics, "{\"step\": %lld, \"i2i_recall@1\": %.6f, \"i2i_recall@5\": %.6f, \"i2i_recall@10\": %.6f, "
                "\"b2a_recall@1\": %.6f, \"b2a_recall@5\": %.6f, \"b2a_recall@10\": %.6f, \"queries\": %lld}\n",
                (long long)t->step, r[0], r[1], r[2], r[3], r[4], r[5], (long long)queries);
        printf("%sstep %lld  eval  a->b R@1 %.3f R@5 %.3f R@10 %.3f | b->a R@1 %.3f R@5 %.3f R@10 %.3f  (%lld pairs)\n",
               pre, (long long)t->step, r[0], r[1], r[2], r[3], r[4], r[5], (long long)queries);
    }
    fflush(t->log.metrics);
    gc_train_log_eval(&t->log, t->step, r[0], r[3]);
}

/* ---------------------------------------------------------------- the loop */

static gc_status train(ptrainer *t, const char *resume)
{
    gc_train_config *c = &t->cfg;
    GC_TRY(open_model(t));
    GC_TRY(open_data(t));
    gc_adamw_config ac = {.lr = c->learning_rate, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8,
                          .weight_decay = c->weight_decay, .max_grad_norm = c->max_grad_norm};
    gc_params *ps = gc_dinov3_params(t->model);
    GC_TRY(gc_adamw_init(&t->opt, ps, &ac));
    t->opt_ready = true;
    GC_TRY(gc_mkdirs(c->output_dir));
    if (resume) GC_TRY(load_checkpoint(t, resume));
    GC_TRY(gc_train_log_open(&t->log, c->output_dir, resume != NULL, t->step, "pairs"));
    gc_loader_opts lo = gc_train_loader_opts(c, t->S, resume ? t->next : (gc_loader_pos){0, 0, 0});
    lo.pre = train_preprocess(t);
    if (!(t->loader = pair_loader_new(&t->train, &lo))) return GC_PENDING();
    t->steps_per_epoch = gc_loader_batches_per_epoch(t->loader);
    t->total_steps = c->max_steps > 0 ? c->max_steps : c->epochs * t->steps_per_epoch;
    int64_t chunk = chunk_of(t);
    printf("gcache train: %s (DINOv3, %s pool) on %s (%s), %lld trainable parameters, %s data: %lld %s",
           c->model, c->pool, gc_device_name(t->dev), c->mixed_precision, (long long)gc_params_count(ps, true),
           c->pair_format, (long long)t->train.n, t->train.labels ? "images" : "pairs");
    if (t->train.labels)
        printf(" in %lld labels (%lld with one image, paired with itself)", (long long)t->train.n_classes,
               (long long)t->train.n_single);
    printf(", batch %lld%s, temperature %g, %lld steps (%lld per epoch)\n", (long long)c->batch_size,
           chunk ? " with the gradient cache" : "", c->temperature, (long long)t->total_steps, (long long)t->steps_per_epoch);
    gc_train_log_start(&t->log, t->step, t->total_steps, c->log_every);
    while (t->step < t->total_steps) {
        const gc_batch *b;
        GC_TRY(gc_train_next_batch(t->loader, c, &b));
        if (!b) break;
        gc_pool *p = gc_pool_push();
        /* read where they lie: the loader's buffers, pinned on cuda, so that each chunk's
         * upload is asynchronous; gc_loader_next syncs before it lets them be refilled */
        gc_tensor *pa = gc_rows(b->pixels_tensor, 0, b->n);
        gc_tensor *pb = gc_rows(b->pixels_b_tensor, 0, b->n);
        gc_dinov3_task task;
        memset(&task, 0, sizeof task);
        gc_gradcache_result res = {0};
        double lr = gc_lr_schedule(c->learning_rate, t->step, c->warmup_steps, t->total_steps, 0.0);
        gc_status st = pa && pb ? gc_dinov3_task_init(&task, t->model, pa, pb, chunk, c->temperature) : GC_PENDING();
        if (st == GC_OK) st = gc_params_zero_grad(ps);
        if (st == GC_OK) st = gc_dinov3_task_step(&task, (gc_rand_context){c->seed, (uint32_t)t->step, 0}, &res);
        if (st == GC_OK) st = gc_adamw_step(&t->opt, lr);
        gc_gradcache_result_clear(&res);
        gc_dinov3_task_free(&task);
        gc_pool_pop(p);
        GC_TRY(st);
        t->step++;
        t->next = b->next;
        gc_train_log_step(&t->log, t->step, b->pos.epoch, b->n, res.loss, lr, &t->opt, t->dev);
        if (t->have_val && gc_train_due(t->step, c->eval_every, t->total_steps)) {
            double r[6];
            int64_t q;
            GC_TRY(evaluate(t, r, &q));
            log_eval(t, r, q);
        }
        if (gc_train_due(t->step, c->save_every, t->total_steps))
            GC_TRY(save_checkpoint(t));
        gc_train_test_kill(t->step);
    }
    if (t->log.tty) printf("\n");
    if (t->have_val) {
        double r[6];
        int64_t q;
        GC_TRY(evaluate(t, r, &q));
        log_eval(t, r, q);
    }
    GC_TRY(save_checkpoint(t));
    gc_loader_report rep;
    gc_loader_report_get(t->loader, &rep);
    if (t->skipped_before + rep.skipped)
        printf("skipped %lld pairs with unreadable images%s%s\n", (long long)(t->skipped_before + rep.skipped),
               rep.n_reasons ? "; first: " : "", rep.n_reasons ? rep.reasons[0] : "");
    gc_train_log_finish(&t->log, c->output_dir, t->step, "gcache train (DINOv3 pairs)",
                        t->val.labels ? "image->image R@1" : "a->b R@1", t->val.labels ? NULL : "b->a R@1");
    return GC_OK;
}

static void ptrainer_free(ptrainer *t)
{
    gc_loader_free(t->loader);
    gc_train_log_free(&t->log);
    if (t->opt_ready) gc_adamw_free(&t->opt);
    pair_set_free(&t->train);
    pair_set_free(&t->val);
    gc_dinov3_free(t->model);
}

int gc_cli_train_pairs(const gc_train_config *c, const char *cfg_path, const char *resume)
{
    ptrainer *t = calloc(1, sizeof *t);
    if (!t) return gc_cli_fail("out of host memory");
    t->cfg = *c;
    t->cfg_path = cfg_path;
    int rc = 0;
    if (gc_train_device(&t->cfg, cfg_path, &t->dev) != GC_OK) rc = gc_cli_fail_status(NULL);
    if (!rc) rc = train(t, resume) == GC_OK ? 0 : gc_cli_fail_status(NULL);
    ptrainer_free(t);
    free(t);
    return rc;
}
