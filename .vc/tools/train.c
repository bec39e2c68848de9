/* gcache train CONFIG.yaml [--resume DIR] [key=value ...]
 *
 * Trains CLIP on image-caption pairs with the gradient cache: a threaded loader
 * decodes and preprocesses the next batches while the model computes; every
 * `log_every` steps a metrics line, every `eval_every` steps retrieval recall on the
 * validation set, every `save_every` steps a crash-safe checkpoint (model in HF
 * layout, with use_lora its adapters in PEFT layout beside it, optimizer state, data
 * position). A run resumed from a checkpoint continues
 * exactly where the saved run was: same data order, same random numbers, same losses. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "../autograd/gc_optim.h"
#include "../gradcache/gc_clip_task.h"
#include "../models/gc_lora.h"
#include "../models/gc_tokenizer.h"
#include "gc_cli.h"
#include "gc_config.h"
#include "gc_data.h"
#include "gc_train_pairs.h"
#include "gc_train_util.h"

typedef struct trainer {
    gc_train_config cfg;
    const char *cfg_path;
    gc_device dev;
    gc_clip *model;
    gc_lora_options lora;    /* use_lora: the adapters' options (PEFT files in every checkpoint) */
    gc_tokenizer *tok;
    gc_dataset *train, *val;
    gc_loader *loader;
    gc_tensor *ids;          /* [batch_size, ctx_len] host ids, refilled every step (pinned on cuda) */
    gc_adamw opt;
    bool opt_ready;
    int64_t step, total_steps, steps_per_epoch, ctx_len, pad_id;
    gc_loader_pos next;      /* where the data continues after the last step */
    gc_train_log log;        /* metrics.jsonl, progress, the plot's history */
} trainer;

/* ---------------------------------------------------------------- set-up */

static gc_dataset *open_data(const gc_train_config *c, const char *spec)
{
    if (!strcmp(c->data_format, "webdataset")) return gc_dataset_open_tar(spec);
    return gc_dataset_open_csv(spec, c->csv_separator[0], c->csv_img_key, c->csv_caption_key);
}

static gc_status make_synthetic(trainer *t)
{
    const gc_train_config *c = &t->cfg;
    int S = (int)gc_clip_get_config(t->model)->vision.image_size;
    char dir[GC_CFG_STR];
    if (c->synthetic_train > 0) {
        gc_path_dirname(c->train_data, dir, sizeof dir);
        GC_TRY(gc_mkdirs(dir));
        GC_TRY(gc_synth_make(dir, c->synthetic_train, S, c->seed));
    }
    if (c->synthetic_val > 0 && *c->val_data) {
        gc_path_dirname(c->val_data, dir, sizeof dir);
        GC_TRY(gc_mkdirs(dir));
        GC_TRY(gc_synth_make(dir, c->synthetic_val, S, c->seed + 1000003));
    }
    return GC_OK;
}

static gc_status open_model(trainer *t)
{
    const gc_train_config *c = &t->cfg;
    gc_clip_options o = {.device = t->dev, .dtype = strcmp(c->mixed_precision, "bf16") ? GC_F32 : GC_BF16,
                         .checkpointing = c->gradient_checkpointing};
    if (c->use_lora) {
        static const char *const known[] = {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", NULL};
        char where[GC_CFG_STR + 32];
        snprintf(where, sizeof where, "%s: lora_target_modules", t->cfg_path);
        GC_TRY(gc_lora_check_targets(c->lora_target_modules, known, "CLIP", where));
        t->lora = (gc_lora_options){(int)c->lora_r, c->lora_alpha, c->lora_dropout, c->lora_target_modules};
        o.lora_r = t->lora.r;
        o.lora_alpha = t->lora.alpha;
        o.lora_dropout = t->lora.dropout;
        o.lora_targets = t->lora.targets;
    }
    gc_clip_config mc;
    if (gc_path_is_dir(c->model)) return gc_clip_load(&t->model, c->model, &o);
    if (gc_clip_config_named(c->model, &mc) != GC_OK) {
        gc_error_clear();
        return gc_error_set(GC_ERR_INVALID, "%s: model: '%s' is neither a checkpoint directory nor a known architecture "
                            "(clip-tiny, clip-vit-b16, clip-vit-b32)", t->cfg_path, c->model);
    }
    return gc_clip_init(&t->model, &mc, &o, c->seed);
}

static gc_status open_tokenizer(trainer *t)
{
    const char *dir = *t->cfg.tokenizer ? t->cfg.tokenizer : t->cfg.model;
    char vocab[GC_CFG_STR + 16];
    snprintf(vocab, sizeof vocab, "%s/vocab.json", dir);
    if (!gc_path_exists(vocab))
        return gc_error_set(GC_ERR_INVALID, "%s: tokenizer: no vocab.json in '%s' (set tokenizer: to a directory with "
                            "vocab.json and merges.txt)", t->cfg_path, dir);
    GC_TRY(gc_tokenizer_load(dir, NULL, &t->tok));
    const gc_clip_config *mc = gc_clip_get_config(t->model);
    if (gc_tokenizer_vocab_size(t->tok) > mc->text.vocab)
        return gc_error_set(GC_ERR_INVALID, "%s: the tokenizer's %lld ids do not fit the model's vocabulary of %lld",
                            dir, (long long)gc_tokenizer_vocab_size(t->tok), (long long)mc->text.vocab);
    t->ctx_len = mc->text.max_positions;
    t->pad_id = gc_tokenizer_eos(t->tok); /* HF pads with the end token */
    return GC_OK;
}

/* the batch's captions (samples of ds) -> rows [0, b->n) of ids (host I64 [>= n, ctx_len]) */
static gc_status tokenize_into(trainer *t, const gc_dataset *ds, const gc_batch *b, gc_tensor *ids)
{
    int64_t *p = gc_tensor_data(ids);
    for (int i = 0; i < b->n; i++) {
        int64_t used;
        gc_status st =
            gc_tokenizer_encode(t->tok, b->captions[i], t->ctx_len, t->pad_id, p + (int64_t)i * t->ctx_len, &used);
        if (st != GC_OK) { /* the tokenizer knows only the text: name the manifest line or tar member */
            char msg[512], where[1024];
            snprintf(msg, sizeof msg, "%s", gc_error_message());
            gc_error_clear();
            return gc_error_set(st, "%s: %s", gc_dataset_caption_source(ds, b->indices[i], where, sizeof where), msg);
        }
    }
    return GC_OK;
}

/* the batch's captions -> ids [n, ctx_len] (host) */
static gc_tensor *tokenize(trainer *t, const gc_dataset *ds, const gc_batch *b)
{
    gc_tensor *x = gc_tensor_new(GC_I64, GC_CPU, 2, GC_SHAPE(b->n, t->ctx_len));
    if (x && tokenize_into(t, ds, b, x) != GC_OK) {
        gc_tensor_release(x);
        return NULL;
    }
    return x;
}

/* ---------------------------------------------------------------- checkpoints */

static gc_status save_checkpoint(trainer *t)
{
    char tmp[GC_CFG_STR + 80];
    GC_TRY(gc_checkpoint_begin(t->cfg.output_dir, t->step, tmp, sizeof tmp));
    GC_TRY(gc_clip_save(t->model, tmp)); /* config.json + model.safetensors (HF layout), without the adapters */
    return gc_checkpoint_finish(tmp, &t->cfg, &t->opt, &t->lora, t->step,
                                gc_trainer_state_new(&t->cfg, t->step, t->total_steps, t->next));
}

/* DIR is a checkpoint, or an output_dir whose `latest` names one. */
static gc_status load_checkpoint(trainer *t, const char *dir)
{
    char ck[GC_CFG_STR * 2];
    cJSON *st;
    GC_TRY(gc_checkpoint_read_state(dir, ck, sizeof ck, &t->step, &t->next, &st));
    cJSON_Delete(st);
    static const char *const ignore[] = {"position_ids", NULL};
    return gc_checkpoint_load_weights(ck, &t->cfg, &t->opt, &t->lora, ignore, t->step);
}

/* ---------------------------------------------------------------- evaluation */

static gc_status evaluate(trainer *t, double r[6])
{
    int64_t N = gc_dataset_size(t->val);
    int S = (int)gc_clip_get_config(t->model)->vision.image_size;
    gc_loader_opts lo = gc_eval_loader_opts(&t->cfg, S, N);
    gc_loader *l = gc_loader_new(t->val, &lo);
    if (!l) return GC_PENDING();
    gc_clip_set_training(t->model, false);
    int64_t chunk = t->cfg.use_gradient_cache ? t->cfg.gradient_cache_chunk_size : 0;
    gc_tensor *img_all = NULL, *txt_all = NULL;
    int64_t at = 0;
    gc_status st = GC_OK;
    for (;;) {
        const gc_batch *b;
        if ((st = gc_loader_next(l, &b)) != GC_OK || !b) break;
        gc_pool *p = gc_pool_push();
        gc_tensor *px = gc_rows(b->pixels_tensor, 0, b->n); /* a view of the loader's batch, as in training */
        gc_tensor *ids = gc_pool_add(tokenize(t, t->val, b));
        gc_tensor *img = NULL, *txt = NULL;
        st = px && ids ? gc_clip_task_embed(t->model, px, ids, chunk, &img, &txt) : GC_PENDING();
        if (st == GC_OK && !img_all) {
            img_all = gc_tensor_new(GC_F32, t->dev, 2, GC_SHAPE(N, img->shape[1]));
            txt_all = gc_tensor_new(GC_F32, t->dev, 2, GC_SHAPE(N, txt->shape[1]));
            if (!img_all || !txt_all) st = GC_PENDING();
        }
        if (st == GC_OK && at + b->n <= N) {
            st = gc_tensor_copy_into(gc_rows(img_all, at, at + b->n), img, false);
            if (st == GC_OK) st = gc_tensor_copy_into(gc_rows(txt_all, at, at + b->n), txt, false);
            at += b->n;
        }
        gc_tensor_release(img);
        gc_tensor_release(txt);
        gc_pool_pop(p);
        if (st != GC_OK) break;
    }
    gc_loader_free(l);
    gc_clip_set_training(t->model, true);
    if (st == GC_OK && at < 2) st = gc_error_set(GC_ERR_INVALID, "%s: the validation set gave %lld usable samples", t->cfg.val_data, (long long)at);
    if (st == GC_OK) {
        gc_pool *p = gc_pool_push();
        st = gc_recall_at_k(gc_rows(img_all, 0, at), gc_rows(txt_all, 0, at), r);
        gc_pool_pop(p);
    }
    gc_tensor_release(img_all);
    gc_tensor_release(txt_all);
    return st;
}

/* ---------------------------------------------------------------- logging */

static void log_eval(trainer *t, const double r[6])
{
    fprintf(t->log.metrics,
            "{\"step\": %lld, \"i2t_recall@1\": %.6f, \"i2t_recall@5\": %.6f, \"i2t_recall@10\": %.6f, "
            "\"t2i_recall@1\": %.6f, \"t2i_recall@5\": %.6f, \"t2i_recall@10\": %.6f}\n",
            (long long)t->step, r[0], r[1], r[2], r[3], r[4], r[5]);
    fflush(t->log.metrics);
    printf("%sstep %lld  eval  image->text R@1 %.3f R@5 %.3f R@10 %.3f | text->image R@1 %.3f R@5 %.3f R@10 %.3f\n",
           gc_train_log_eol(&t->log), (long long)t->step, r[0], r[1], r[2], r[3], r[4], r[5]);
    gc_train_log_eval(&t->log, t->step, r[0], r[3]);
}

/* ---------------------------------------------------------------- the loop */

static gc_status train(trainer *t, const char *resume)
{
    gc_train_config *c = &t->cfg;
    GC_TRY(open_model(t));
    GC_TRY(open_tokenizer(t));
    GC_TRY(make_synthetic(t));
    if (!(t->train = open_data(c, c->train_data))) return GC_PENDING();
    if (*c->val_data && !(t->val = open_data(c, c->val_data))) return GC_PENDING();
    /* the tokenizer takes UTF-8 only: a bad caption stops the run here, not at its batch hours in */
    GC_TRY(gc_dataset_check_utf8(t->train));
    if (t->val) GC_TRY(gc_dataset_check_utf8(t->val));
    if (gc_dataset_size(t->train) < c->batch_size)
        return gc_error_set(GC_ERR_INVALID, "%s: %lld samples, fewer than batch_size %lld", c->train_data,
                            (long long)gc_dataset_size(t->train), (long long)c->batch_size);
    gc_adamw_config ac = {.lr = c->learning_rate, .beta1 = 0.9, .beta2 = 0.98, .eps = 1e-6,
                          .weight_decay = c->weight_decay, .max_grad_norm = c->max_grad_norm};
    GC_TRY(gc_adamw_init(&t->opt, gc_clip_params(t->model), &ac));
    t->opt_ready = true;
    GC_TRY(gc_mkdirs(c->output_dir));
    if (resume) GC_TRY(load_checkpoint(t, resume));
    GC_TRY(gc_train_log_open(&t->log, c->output_dir, resume != NULL, t->step, "samples"));
    int S = (int)gc_clip_get_config(t->model)->vision.image_size;
    gc_loader_opts lo = gc_train_loader_opts(c, S, resume ? t->next : (gc_loader_pos){0, 0, 0});
    if (!(t->loader = gc_loader_new(t->train, &lo))) return GC_PENDING();
    if (!(t->ids = gc_tensor_new(GC_I64, GC_CPU, 2, GC_SHAPE(c->batch_size, t->ctx_len)))) return GC_PENDING();
    gc_tensor_set_name(t->ids, "batch input_ids");
    if (lo.pin_memory) GC_TRY(gc_tensor_pin(t->ids));
    t->steps_per_epoch = gc_loader_batches_per_epoch(t->loader);
    t->total_steps = c->max_steps > 0 ? c->max_steps : c->epochs * t->steps_per_epoch;
    int64_t chunk = c->use_gradient_cache ? c->gradient_cache_chunk_size : 0;
    printf("gcache train: %s on %s (%s), %lld trainable parameters, batch %lld%s, %lld steps (%lld per epoch)\n",
           c->model, gc_device_name(t->dev), c->mixed_precision, (long long)gc_params_count(gc_clip_params(t->model), true),
           (long long)c->batch_size, c->use_gradient_cache ? " with the gradient cache" : "", (long long)t->total_steps,
           (long long)t->steps_per_epoch);
    gc_train_log_start(&t->log, t->step, t->total_steps, c->log_every);
    while (t->step < t->total_steps) {
        const gc_batch *b;
        GC_TRY(gc_train_next_batch(t->loader, c, &b));
        if (!b) break;
        /* The batch is read where it lies: the loader's pixels and the trainer's ids, pinned on
         * cuda, so that every chunk's upload is asynchronous. Both buffers are rewritten only
         * after a stream sync that follows the last step's uploads: the loader's in
         * gc_loader_next (above), the ids here (the step synchronised reading its loss
         * already, so this costs nothing; it keeps the rule from resting on that). */
        if (gc_tensor_is_pinned(t->ids)) GC_TRY(gc_device_sync(t->dev));
        GC_TRY(tokenize_into(t, t->train, b, t->ids));
        gc_pool *p = gc_pool_push();
        gc_tensor *px = gc_rows(b->pixels_tensor, 0, b->n);
        gc_tensor *ids = gc_rows(t->ids, 0, b->n);
        gc_status st = px && ids ? GC_OK : GC_PENDING();
        gc_clip_task task;
        gc_gradcache_result res = {0};
        double lr = gc_lr_schedule(c->learning_rate, t->step, c->warmup_steps, t->total_steps, 0.0);
        if (st == GC_OK) {
            gc_clip_task_init(&task, t->model, px, ids, chunk);
            st = gc_params_zero_grad(gc_clip_params(t->model));
        }
        if (st == GC_OK) st = gc_clip_task_step(&task, (gc_rand_context){c->seed, (uint32_t)t->step, 0}, &res);
        if (st == GC_OK) st = gc_adamw_step(&t->opt, lr);
        gc_gradcache_result_clear(&res);
        gc_pool_pop(p);
        GC_TRY(st);
        t->step++;
        t->next = b->next;
        gc_train_log_step(&t->log, t->step, b->pos.epoch, b->n, res.loss, lr, &t->opt, t->dev);
        if (t->val && gc_train_due(t->step, c->eval_every, t->total_steps)) {
            double r[6];
            GC_TRY(evaluate(t, r));
            log_eval(t, r);
        }
        if (gc_train_due(t->step, c->save_every, t->total_steps)) GC_TRY(save_checkpoint(t));
        gc_train_test_kill(t->step);
    }
    if (t->log.tty) printf("\n");
    if (t->val) {
        double r[6];
        GC_TRY(evaluate(t, r));
        log_eval(t, r);
    }
    GC_TRY(save_checkpoint(t));
    gc_loader_report rep;
    gc_loader_report_get(t->loader, &rep);
    if (rep.skipped) printf("skipped %lld unreadable images; first: %s\n", (long long)rep.skipped, rep.reasons[0]);
    gc_train_log_finish(&t->log, c->output_dir, t->step, "gcache train", "image->text R@1", "text->image R@1");
    return GC_OK;
}

static void trainer_free(trainer *t)
{
    if (t->loader) gc_loader_free(t->loader);
    gc_tensor_release(t->ids);
    gc_train_log_free(&t->log);
    if (t->opt_ready) gc_adamw_free(&t->opt);
    gc_dataset_free(t->train);
    gc_dataset_free(t->val);
    gc_tokenizer_free(t->tok);
    gc_clip_free(t->model);
}

int gc_cli_train(int argc, char **argv)
{
    trainer t;
    memset(&t, 0, sizeof t);
    const char *resume = NULL;
    gc_train_config_defaults(&t.cfg);
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--resume")) {
            if (i + 1 >= argc) return gc_cli_fail("--resume needs a directory");
            resume = argv[++i];
        } else if (strchr(argv[i], '=')) {
            continue; /* overrides: applied after the file */
        } else if (!t.cfg_path) {
            t.cfg_path = argv[i];
        } else return gc_cli_fail("train: unexpected argument '%s' (usage: gcache train CONFIG.yaml [--resume DIR] [key=value ...])", argv[i]);
    }
    if (!t.cfg_path) return gc_cli_fail("train: no config file (usage: gcache train CONFIG.yaml [--resume DIR] [key=value ...])");
    if (gc_train_config_load(t.cfg_path, &t.cfg) != GC_OK) return gc_cli_fail_status(NULL);
    for (int i = 0; i < argc; i++)
        if (strchr(argv[i], '=') && (i == 0 || strcmp(argv[i - 1], "--resume")) && gc_train_config_set(&t.cfg, argv[i]) != GC_OK)
            return gc_cli_fail_status(NULL);
    if (gc_train_config_validate(&t.cfg, t.cfg_path) != GC_OK) return gc_cli_fail_status(NULL);
    if (resume && !gc_path_exists(resume)) return gc_cli_fail("--resume %s: no such directory", resume);
    if (gc_train_pairs_wanted(&t.cfg)) { /* DINOv3: image pairs */
        static const char *const clip_only[] = {"tokenizer", "csv_caption_key", NULL};
        gc_train_config_warn_unused(&t.cfg, clip_only, "DINOv3 image-pair", t.cfg_path);
        return gc_cli_train_pairs(&t.cfg, t.cfg_path, resume);
    }
    static const char *const pairs_only[] = {"temperature", "pair_format", "csv_img_b_key", "csv_label_key", "pool", "augment", NULL};
    gc_train_config_warn_unused(&t.cfg, pairs_only, "CLIP image-caption", t.cfg_path);
    if (gc_train_check_columns(&t.cfg, "csv_caption_key", t.cfg.csv_caption_key, t.cfg_path) != GC_OK)
        return gc_cli_fail_status(NULL);
    if (gc_train_device(&t.cfg, t.cfg_path, &t.dev) != GC_OK) return gc_cli_fail_status(NULL);
    int rc = train(&t, resume) == GC_OK ? 0 : gc_cli_fail_status(NULL);
    trainer_free(&t);
    return rc;
}
