/* CLIP: config, parameters (HF names), the two towers. */
#include "gc_clip.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "gc_json.h"

#define MAX_LAYERS 64

struct gc_clip {
    gc_clip_config cfg;
    gc_clip_options opt;
    gc_params params;
    bool training;
    /* vision */
    gc_tensor *v_patch, *v_cls, *v_pos, *v_pre_w, *v_pre_b, *v_post_w, *v_post_b, *v_proj;
    gc_block v_blocks[MAX_LAYERS];
    /* text */
    gc_tensor *t_tok, *t_pos, *t_final_w, *t_final_b, *t_proj;
    gc_block t_blocks[MAX_LAYERS];
    gc_tensor *logit_scale;
};

/* ---------------------------------------------------------------- config */

static gc_status tower_load(const cJSON *root, const char *key, bool vision, gc_clip_tower_config *t, const char *path)
{
    const cJSON *o = NULL; /* absent: every field falls back to transformers' default */
    GC_TRY(gc_json_get_object(root, key, false, &o, path));
    char ctx[256];
    gc_json_path(ctx, sizeof ctx, path, key);
    const char *act = NULL;
    GC_TRY(gc_json_get_int(o, "hidden_size", vision ? 768 : 512, false, &t->hidden, ctx));
    GC_TRY(gc_json_get_int(o, "intermediate_size", vision ? 3072 : 2048, false, &t->intermediate, ctx));
    GC_TRY(gc_json_get_int(o, "num_hidden_layers", 12, false, &t->layers, ctx));
    GC_TRY(gc_json_get_int(o, "num_attention_heads", vision ? 12 : 8, false, &t->heads, ctx));
    GC_TRY(gc_json_get_double(o, "layer_norm_eps", 1e-5, false, &t->eps, ctx));
    GC_TRY(gc_json_get_double(o, "attention_dropout", 0.0, false, &t->attn_dropout, ctx));
    GC_TRY(gc_json_get_string(o, "hidden_act", "quick_gelu", false, &act, ctx));
    if (gc_act_parse(act, &t->act) != GC_OK) {
        gc_error_clear();
        return gc_error_set(GC_ERR_FORMAT, "%s.hidden_act: unsupported activation '%s'", ctx, act);
    }
    if (vision) {
        GC_TRY(gc_json_get_int(o, "image_size", 224, false, &t->image_size, ctx));
        GC_TRY(gc_json_get_int(o, "patch_size", 32, false, &t->patch, ctx));
        GC_TRY(gc_json_get_int(o, "num_channels", 3, false, &t->channels, ctx));
    } else {
        GC_TRY(gc_json_get_int(o, "vocab_size", 49408, false, &t->vocab, ctx));
        GC_TRY(gc_json_get_int(o, "max_position_embeddings", 77, false, &t->max_positions, ctx));
        GC_TRY(gc_json_get_int(o, "eos_token_id", 49407, false, &t->eos_token_id, ctx));
        GC_TRY(gc_json_get_int(o, "bos_token_id", 49406, false, &t->bos_token_id, ctx));
        GC_TRY(gc_json_get_int(o, "pad_token_id", 1, false, &t->pad_token_id, ctx));
    }
    return GC_OK;
}

/* key in [lo, hi], or an error naming the file, the section and the key. The upper bounds
 * are far past any CLIP, and keep a corrupt size from allocating (and zeroing) the
 * parameters before the checkpoint's shapes are compared. */
static gc_status in_range(const char *where, const char *section, const char *key, int64_t v, int64_t lo, int64_t hi)
{
    if (v >= lo && v <= hi) return GC_OK;
    return gc_error_set(GC_ERR_FORMAT, "%s: %s%s%s %lld is outside [%lld, %lld]", where, section ? section : "",
                        section ? ": " : "", key, (long long)v, (long long)lo, (long long)hi);
}

static gc_status config_check(const gc_clip_config *c, const char *where)
{
    const gc_clip_tower_config *ts[2] = {&c->vision, &c->text};
    const char *names[2] = {"vision_config", "text_config"};
    for (int i = 0; i < 2; i++) {
        const gc_clip_tower_config *t = ts[i];
        GC_TRY(in_range(where, names[i], "hidden_size", t->hidden, 1, 1 << 16));
        GC_TRY(in_range(where, names[i], "num_attention_heads", t->heads, 1, 1 << 10));
        GC_TRY(in_range(where, names[i], "num_hidden_layers", t->layers, 0, MAX_LAYERS));
        GC_TRY(in_range(where, names[i], "intermediate_size", t->intermediate, 1, 1 << 18));
        if (t->hidden % t->heads)
            return gc_error_set(GC_ERR_FORMAT, "%s: %s: hidden_size %lld is not a multiple of num_attention_heads %lld", where,
                                names[i], (long long)t->hidden, (long long)t->heads);
        if (!(t->eps > 0 && t->eps < 1))
            return gc_error_set(GC_ERR_FORMAT, "%s: %s: layer_norm_eps %g is outside (0, 1)", where, names[i], t->eps);
        if (!(t->attn_dropout >= 0 && t->attn_dropout < 1))
            return gc_error_set(GC_ERR_FORMAT, "%s: %s: attention_dropout %g is outside [0, 1)", where, names[i],
                                t->attn_dropout);
    }
    GC_TRY(in_range(where, "vision_config", "num_channels", c->vision.channels, 1, 64));
    GC_TRY(in_range(where, "vision_config", "image_size", c->vision.image_size, 1, 1 << 14));
    GC_TRY(in_range(where, "vision_config", "patch_size", c->vision.patch, 1, c->vision.image_size));
    if (c->vision.image_size % c->vision.patch)
        return gc_error_set(GC_ERR_FORMAT, "%s: vision_config: image_size %lld is not a multiple of patch_size %lld", where,
                            (long long)c->vision.image_size, (long long)c->vision.patch);
    GC_TRY(in_range(where, "text_config", "vocab_size", c->text.vocab, 1, 1 << 24));
    GC_TRY(in_range(where, "text_config", "max_position_embeddings", c->text.max_positions, 1, 1 << 20));
    GC_TRY(in_range(where, NULL, "projection_dim", c->projection_dim, 1, 1 << 16));
    return GC_OK;
}

gc_status gc_clip_config_load(const char *path, gc_clip_config *cfg)
{
    cJSON *root = NULL;
    GC_TRY(gc_json_load_file(path, &root));
    memset(cfg, 0, sizeof *cfg);
    gc_status st = GC_OK;
    const char *mt = NULL;
    if (st == GC_OK) st = gc_json_get_string(root, "model_type", "clip", false, &mt, path);
    if (st == GC_OK && strcmp(mt, "clip"))
        st = gc_error_set(GC_ERR_FORMAT, "%s: model_type is '%s', not a CLIP model", path, mt);
    if (st == GC_OK) st = tower_load(root, "vision_config", true, &cfg->vision, path);
    if (st == GC_OK) st = tower_load(root, "text_config", false, &cfg->text, path);
    if (st == GC_OK) st = gc_json_get_int(root, "projection_dim", 512, false, &cfg->projection_dim, path);
    if (st == GC_OK) st = gc_json_get_double(root, "logit_scale_init_value", 2.6592, false, &cfg->logit_scale_init, path);
    cJSON_Delete(root);
    GC_TRY(st);
    return config_check(cfg, path);
}

static const char *act_name(gc_act a)
{
    switch (a) {
    case GC_ACT_GELU_ERF: return "gelu";
    case GC_ACT_GELU_TANH: return "gelu_pytorch_tanh";
    case GC_ACT_SILU: return "silu";
    case GC_ACT_QUICK_GELU: return "quick_gelu";
    default: return "quick_gelu";
    }
}

gc_status gc_clip_config_save(const gc_clip_config *c, const char *path)
{
    cJSON *root = cJSON_CreateObject(), *v = cJSON_CreateObject(), *t = cJSON_CreateObject();
    cJSON_AddItemToObject(root, "architectures", cJSON_CreateStringArray((const char *[]){"CLIPModel"}, 1));
    cJSON_AddStringToObject(root, "model_type", "clip");
    cJSON_AddNumberToObject(root, "projection_dim", (double)c->projection_dim);
    cJSON_AddNumberToObject(root, "logit_scale_init_value", c->logit_scale_init);
    cJSON_AddStringToObject(root, "torch_dtype", "float32");
    const gc_clip_tower_config *tc[2] = {&c->vision, &c->text};
    cJSON *objs[2] = {v, t};
    for (int i = 0; i < 2; i++) {
        cJSON *o = objs[i];
        cJSON_AddNumberToObject(o, "hidden_size", (double)tc[i]->hidden);
        cJSON_AddNumberToObject(o, "intermediate_size", (double)tc[i]->intermediate);
        cJSON_AddNumberToObject(o, "num_hidden_layers", (double)tc[i]->layers);
        cJSON_AddNumberToObject(o, "num_attention_heads", (double)tc[i]->heads);
        cJSON_AddNumberToObject(o, "layer_norm_eps", tc[i]->eps);
        cJSON_AddNumberToObject(o, "attention_dropout", tc[i]->attn_dropout);
        cJSON_AddStringToObject(o, "hidden_act", act_name(tc[i]->act));
        cJSON_AddNumberToObject(o, "projection_dim", (double)c->projection_dim);
    }
    cJSON_AddStringToObject(v, "model_type", "clip_vision_model");
    cJSON_AddNumberToObject(v, "image_size", (double)c->vision.image_size);
    cJSON_AddNumberToObject(v, "patch_size", (double)c->vision.patch);
    cJSON_AddNumberToObject(v, "num_channels", (double)c->vision.channels);
    cJSON_AddStringToObject(t, "model_type", "clip_text_model");
    cJSON_AddNumberToObject(t, "vocab_size", (double)c->text.vocab);
    cJSON_AddNumberToObject(t, "max_position_embeddings", (double)c->text.max_positions);
    cJSON_AddNumberToObject(t, "eos_token_id", (double)c->text.eos_token_id);
    cJSON_AddNumberToObject(t, "bos_token_id", (double)c->text.bos_token_id);
    cJSON_AddNumberToObject(t, "pad_token_id", (double)c->text.pad_token_id);
    cJSON_AddItemToObject(root, "vision_config", v);
    cJSON_AddItemToObject(root, "text_config", t);
    gc_status st = gc_json_save_file(path, root);
    cJSON_Delete(root);
    return st;
}

gc_status gc_clip_config_named(const char *name, gc_clip_config *c)
{
    memset(c, 0, sizeof *c);
    gc_clip_tower_config v = {.hidden = 768, .layers = 12, .heads = 12, .intermediate = 3072, .act = GC_ACT_QUICK_GELU,
                              .eps = 1e-5, .image_size = 224, .patch = 16, .channels = 3};
    gc_clip_tower_config t = {.hidden = 512, .layers = 12, .heads = 8, .intermediate = 2048, .act = GC_ACT_QUICK_GELU,
                              .eps = 1e-5, .vocab = 49408, .max_positions = 77, .eos_token_id = 2,
                              .bos_token_id = 0, .pad_token_id = 1};
    c->projection_dim = 512;
    c->logit_scale_init = 2.6592;
    if (!strcmp(name, "clip-vit-b16")) {
    } else if (!strcmp(name, "clip-vit-b32")) {
        v.patch = 32;
    } else if (!strcmp(name, "clip-tiny")) { /* the quickstart's model: trains on 2 CPU cores in minutes */
        v = (gc_clip_tower_config){.hidden = 64, .layers = 2, .heads = 4, .intermediate = 128, .act = GC_ACT_QUICK_GELU,
                                   .eps = 1e-5, .image_size = 32, .patch = 8, .channels = 3};
        t = (gc_clip_tower_config){.hidden = 64, .layers = 2, .heads = 4, .intermediate = 128, .act = GC_ACT_QUICK_GELU,
                                   .eps = 1e-5, .vocab = 49408, .max_positions = 16, .eos_token_id = 2,
                                   .bos_token_id = 0, .pad_token_id = 1};
        c->projection_dim = 64;
    } else {
        return gc_error_set(GC_ERR_INVALID, "unknown model '%s' (known: clip-vit-b16, clip-vit-b32, clip-tiny)", name);
    }
    c->vision = v;
    c->text = t;
    return GC_OK;
}

/* ---------------------------------------------------------------- parameters */

static gc_tensor *decl(gc_clip *m, const char *name, int ndim, const int64_t *shape)
{
    return gc_param_declare(&m->params, name, ndim, shape);
}

static gc_status decl_lin(gc_clip *m, gc_lin *l, const char *prefix, const char *site, int64_t out, int64_t in, bool bias)
{
    gc_lora_options lo = {m->opt.lora_r, m->opt.lora_alpha, m->opt.lora_dropout, m->opt.lora_targets};
    return gc_lin_declare(&m->params, l, prefix, site, out, in, bias, &lo);
}

static gc_status decl_tower(gc_clip *m, bool vision)
{
    const gc_clip_tower_config *t = vision ? &m->cfg.vision : &m->cfg.text;
    const char *tp = vision ? "vision_model" : "text_model";
    int64_t D = t->hidden, F = t->intermediate;
    char p[160], n[200];
    for (int64_t i = 0; i < t->layers; i++) {
        gc_block *b = vision ? &m->v_blocks[i] : &m->t_blocks[i];
        memset(b, 0, sizeof *b);
        snprintf(p, sizeof p, "%s.encoder.layers.%lld", tp, (long long)i);
        snprintf(n, sizeof n, "%s.layer_norm1.weight", p); b->ln1_w = decl(m, n, 1, GC_SHAPE(D));
        snprintf(n, sizeof n, "%s.layer_norm1.bias", p);   b->ln1_b = decl(m, n, 1, GC_SHAPE(D));
        char ap[200];
        snprintf(ap, sizeof ap, "%s.self_attn", p);
        GC_TRY(decl_lin(m, &b->q, ap, "q_proj", D, D, true));
        GC_TRY(decl_lin(m, &b->k, ap, "k_proj", D, D, true));
        GC_TRY(decl_lin(m, &b->v, ap, "v_proj", D, D, true));
        GC_TRY(gc_block_pack_qkv(&m->params, b)); /* one GEMM for the three */
        GC_TRY(decl_lin(m, &b->o, ap, "out_proj", D, D, true));
        snprintf(n, sizeof n, "%s.layer_norm2.weight", p); b->ln2_w = decl(m, n, 1, GC_SHAPE(D));
        snprintf(n, sizeof n, "%s.layer_norm2.bias", p);   b->ln2_b = decl(m, n, 1, GC_SHAPE(D));
        snprintf(ap, sizeof ap, "%s.mlp", p);
        GC_TRY(decl_lin(m, &b->fc1, ap, "fc1", F, D, true));
        GC_TRY(decl_lin(m, &b->fc2, ap, "fc2", D, F, true));
        if (!b->ln1_w || !b->ln1_b || !b->ln2_w || !b->ln2_b) return GC_PENDING();
        b->heads = t->heads;
        b->act = t->act;
        b->eps = t->eps;
        b->causal = !vision;
        b->op_base = ((vision ? 1u : 2u) << 16) | ((uint32_t)i << 4);
        if (vision && i == t->layers - 1) b->out_rows = 1; /* the image embedding reads only the class token */
    }
    return GC_OK;
}

static gc_status decl_all(gc_clip *m)
{
    const gc_clip_config *c = &m->cfg;
    int64_t Dv = c->vision.hidden, Dt = c->text.hidden, P = c->projection_dim, ps = c->vision.patch;
    int64_t npos = (c->vision.image_size / ps) * (c->vision.image_size / ps) + 1;
    m->v_cls = decl(m, "vision_model.embeddings.class_embedding", 1, GC_SHAPE(Dv));
    m->v_patch = decl(m, "vision_model.embeddings.patch_embedding.weight", 4, GC_SHAPE(Dv, c->vision.channels, ps, ps));
    m->v_pos = decl(m, "vision_model.embeddings.position_embedding.weight", 2, GC_SHAPE(npos, Dv));
    m->v_pre_w = decl(m, "vision_model.pre_layrnorm.weight", 1, GC_SHAPE(Dv)); /* sic: HF's name */
    m->v_pre_b = decl(m, "vision_model.pre_layrnorm.bias", 1, GC_SHAPE(Dv));
    GC_TRY(decl_tower(m, true));
    m->v_post_w = decl(m, "vision_model.post_layernorm.weight", 1, GC_SHAPE(Dv));
    m->v_post_b = decl(m, "vision_model.post_layernorm.bias", 1, GC_SHAPE(Dv));
    m->t_tok = decl(m, "text_model.embeddings.token_embedding.weight", 2, GC_SHAPE(c->text.vocab, Dt));
    m->t_pos = decl(m, "text_model.embeddings.position_embedding.weight", 2, GC_SHAPE(c->text.max_positions, Dt));
    GC_TRY(decl_tower(m, false));
    m->t_final_w = decl(m, "text_model.final_layer_norm.weight", 1, GC_SHAPE(Dt));
    m->t_final_b = decl(m, "text_model.final_layer_norm.bias", 1, GC_SHAPE(Dt));
    m->v_proj = decl(m, "visual_projection.weight", 2, GC_SHAPE(P, Dv));
    m->t_proj = decl(m, "text_projection.weight", 2, GC_SHAPE(P, Dt));
    m->logit_scale = decl(m, "logit_scale", 0, NULL);
    if (!m->v_cls || !m->v_patch || !m->v_pos || !m->v_pre_w || !m->v_pre_b || !m->v_post_w || !m->v_post_b ||
        !m->t_tok || !m->t_pos || !m->t_final_w || !m->t_final_b || !m->v_proj || !m->t_proj || !m->logit_scale)
        return GC_PENDING();
    return GC_OK;
}

static gc_status apply_lora_freeze(gc_clip *m) { return m->opt.lora_r ? gc_params_freeze_base(&m->params) : GC_OK; }

static gc_status clip_new(gc_clip **out, const gc_clip_config *cfg, const gc_clip_options *opt)
{
    *out = NULL;
    GC_TRY(config_check(cfg, "config"));
    if (opt->dtype != GC_F32 && !(opt->dtype == GC_BF16 && opt->device.type == GC_DEVICE_CUDA))
        return gc_error_set(GC_ERR_DTYPE, "compute dtype %s on %s is not supported (use f32, or bf16 on cuda)",
                            gc_dtype_name(opt->dtype), gc_device_name(opt->device));
    if (opt->lora_r < 0) return gc_error_set(GC_ERR_INVALID, "lora rank %d must be positive", opt->lora_r);
    gc_clip *m = calloc(1, sizeof *m);
    if (!m) return gc_error_set(GC_ERR_OOM, "out of host memory");
    m->cfg = *cfg;
    m->opt = *opt;
    m->opt.lora_targets = opt->lora_targets ? strdup(opt->lora_targets) : NULL;
    m->training = true;
    gc_params_init(&m->params, opt->device, opt->dtype);
    gc_status st = decl_all(m);
    if (st != GC_OK) { gc_clip_free(m); return st; }
    gc_clip_set_training(m, true);
    *out = m;
    return GC_OK;
}

struct init_ctx { const gc_clip_config *c; uint64_t seed; int idx; };

/* transformers' CLIPPreTrainedModel._init_weights, with initializer_factor 1 */
static void init_param(const char *name, int ndim, const int64_t *shape, float *out, void *user)
{
    struct init_ctx *ic = user;
    const gc_clip_config *c = ic->c;
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    bool vision = !strncmp(name, "vision_model", 12) || !strncmp(name, "visual", 6);
    const gc_clip_tower_config *t = vision ? &c->vision : &c->text;
    double D = (double)t->hidden, L = (double)t->layers;
    double std = 0.02;
    bool is_bias = strstr(name, ".bias") != NULL;
    if (!strcmp(name, "logit_scale")) { out[0] = (float)c->logit_scale_init; ic->idx++; return; }
    if (strstr(name, "lora_B")) { for (int64_t i = 0; i < n; i++) out[i] = 0; ic->idx++; return; }
    if (strstr(name, "norm") || strstr(name, "layrnorm")) {
        for (int64_t i = 0; i < n; i++) out[i] = is_bias ? 0.0f : 1.0f;
        ic->idx++;
        return;
    }
    if (is_bias) { for (int64_t i = 0; i < n; i++) out[i] = 0; ic->idx++; return; }
    if (strstr(name, "class_embedding")) std = pow(D, -0.5);
    else if (strstr(name, "patch_embedding")) std = 0.02;
    else if (strstr(name, "position_embedding")) std = vision ? 0.02 : 0.01;
    else if (strstr(name, "token_embedding")) std = 0.02;
    else if (strstr(name, "q_proj") || strstr(name, "k_proj") || strstr(name, "v_proj")) std = pow(D, -0.5) * pow(2 * L, -0.5);
    else if (strstr(name, "out_proj")) std = pow(D, -0.5);
    else if (strstr(name, "fc1")) std = pow(2 * D, -0.5);
    else if (strstr(name, "fc2")) std = pow(D, -0.5) * pow(2 * L, -0.5);
    else if (strstr(name, "visual_projection")) std = pow(c->vision.hidden, -0.5);
    else if (strstr(name, "text_projection")) std = pow(c->text.hidden, -0.5);
    if (strstr(name, "lora_A")) std = pow((double)shape[1], -0.5); /* PEFT: kaiming-uniform-like scale */
    gc_init_normal(out, n, std, ic->seed, (uint32_t)ic->idx++);
}

gc_status gc_clip_init(gc_clip **out, const gc_clip_config *cfg, const gc_clip_options *opt, uint64_t seed)
{
    gc_clip *m;
    GC_TRY(clip_new(&m, cfg, opt));
    struct init_ctx ic = {&m->cfg, seed, 0};
    gc_status st = gc_params_init_values(&m->params, init_param, &ic);
    if (st == GC_OK) st = apply_lora_freeze(m);
    if (st != GC_OK) { gc_clip_free(m); return st; }
    *out = m;
    return GC_OK;
}

gc_status gc_clip_load(gc_clip **out, const char *dir, const gc_clip_options *opt)
{
    *out = NULL;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    gc_clip_config cfg;
    GC_TRY(gc_clip_config_load(path, &cfg));
    gc_clip *m;
    GC_TRY(clip_new(&m, &cfg, opt));
    if (opt->lora_r) {
        /* adapters are not in an HF checkpoint: initialise them, load the rest */
        struct init_ctx ic = {&m->cfg, 0x10ea, 0};
        gc_status st = gc_params_init_values(&m->params, init_param, &ic);
        if (st != GC_OK) { gc_clip_free(m); return st; }
    }
    static const char *const ignore[] = {"position_ids", NULL};
    gc_status st = gc_params_load(&m->params, dir, ignore, ".lora_");
    if (st == GC_OK) st = apply_lora_freeze(m);
    if (st != GC_OK) { gc_clip_free(m); return st; }
    *out = m;
    return GC_OK;
}

gc_status gc_clip_save(gc_clip *m, const char *dir)
{
    mkdir(dir, 0755);
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    GC_TRY(gc_clip_config_save(&m->cfg, path));
    return gc_params_save(&m->params, dir, ".lora_");
}

void gc_clip_free(gc_clip *m)
{
    if (!m) return;
    gc_params_free(&m->params);
    free((char *)m->opt.lora_targets);
    free(m);
}

const gc_clip_config *gc_clip_get_config(const gc_clip *m) { return &m->cfg; }
gc_params *gc_clip_params(gc_clip *m) { return &m->params; }
gc_tensor *gc_clip_logit_scale(gc_clip *m) { return m->logit_scale; }

void gc_clip_set_training(gc_clip *m, bool on)
{
    m->training = on;
    for (int64_t i = 0; i < m->cfg.vision.layers; i++) m->v_blocks[i].attn_dropout = on ? m->cfg.vision.attn_dropout : 0;
    for (int64_t i = 0; i < m->cfg.text.layers; i++) m->t_blocks[i].attn_dropout = on ? m->cfg.text.attn_dropout : 0;
    gc_block *all[2] = {m->v_blocks, m->t_blocks};
    int64_t nl[2] = {m->cfg.vision.layers, m->cfg.text.layers};
    for (int t = 0; t < 2; t++)
        for (int64_t i = 0; i < nl[t]; i++) {
            gc_lin *ls[6] = {&all[t][i].q, &all[t][i].k, &all[t][i].v, &all[t][i].o, &all[t][i].fc1, &all[t][i].fc2};
            for (int j = 0; j < 6; j++) ls[j]->lora_dropout = on ? m->opt.lora_dropout : 0;
        }
}

/* ---------------------------------------------------------------- forward */

gc_tensor *gc_clip_encode_image(gc_clip *m, gc_tensor *pixels)
{
    if (!pixels) return NULL;
    const gc_clip_tower_config *c = &m->cfg.vision;
    if (pixels->ndim != 4 || pixels->shape[1] != c->channels || pixels->shape[2] != c->image_size ||
        pixels->shape[3] != c->image_size) {
        char s[GC_SHAPE_STR_LEN];
        gc_error_set(GC_ERR_SHAPE, "pixel_values %s: the model expects [B, %lld, %lld, %lld]", gc_shape_str(pixels, s, sizeof s),
                     (long long)c->channels, (long long)c->image_size, (long long)c->image_size);
        return NULL;
    }
    int64_t B = pixels->shape[0], D = c->hidden;
    gc_pool *pool = gc_pool_push();
    /* the embedding's temporaries (the chunk's pixels on the device, the patch
     * embedding, the concatenation) die here, before the blocks run */
    gc_pool *emb = gc_pool_push();
    gc_tensor *x = gc_input_to(pixels, m->opt.device, m->opt.dtype);
    x = gc_patch_embed(x, m->v_patch, NULL);                                    /* [B, N, D] */
    gc_tensor *zeros = gc_pool_add(gc_tensor_zeros(m->opt.dtype, m->opt.device, 3, GC_SHAPE(B, 1, D)));
    gc_tensor *cls = gc_add(zeros, m->v_cls);                                   /* [B, 1, D] */
    gc_tensor *h = gc_concat(2, (gc_tensor *[]){cls, x}, 1);                    /* [B, N+1, D] */
    h = gc_add(h, m->v_pos);
    h = gc_pool_keep(gc_layernorm(h, m->v_pre_w, m->v_pre_b, c->eps));
    gc_pool_pop(emb);
    for (int64_t i = 0; i < c->layers; i++) h = gc_block_run(&m->v_blocks[i], h, m->opt.checkpointing);
    gc_tensor *first = h ? gc_view(gc_slice(h, 1, 0, 1), 2, GC_SHAPE(B, D)) : NULL; /* class token */
    gc_tensor *pooled = gc_layernorm(first, m->v_post_w, m->v_post_b, c->eps);
    gc_tensor *y = gc_pool_keep(gc_linear(pooled, m->v_proj, NULL));
    gc_pool_pop(pool);
    return y;
}

gc_status gc_clip_text_pool_positions(const gc_clip_config *cfg, const gc_tensor *ids, int64_t *pos)
{
    int64_t B = ids->shape[0], L = ids->shape[1];
    int64_t *h = malloc(sizeof(int64_t) * (size_t)(B * L));
    if (!h) return gc_error_set(GC_ERR_OOM, "out of host memory");
    gc_tensor *ht = gc_tensor_wrap(GC_I64, GC_CPU, 2, ids->shape, h, NULL, NULL);
    gc_status st = ht ? gc_tensor_copy_into(ht, ids, false) : GC_PENDING();
    for (int64_t b = 0; st == GC_OK && b < B; b++) {
        const int64_t *r = h + b * L;
        int64_t best = 0;
        if (cfg->text.eos_token_id == 2) { /* legacy OpenAI configs: the EOT token has the largest id */
            for (int64_t j = 1; j < L; j++)
                if (r[j] > r[best]) best = j;
        } else { /* the first eos_token_id (argmax of a 0/1 row: 0 when absent) */
            for (int64_t j = 0; j < L; j++)
                if (r[j] == cfg->text.eos_token_id) { best = j; break; }
        }
        pos[b] = best;
    }
    for (int64_t i = 0; st == GC_OK && i < B * L; i++)
        if (h[i] < 0 || h[i] >= cfg->text.vocab)
            st = gc_error_set(GC_ERR_INVALID, "input_ids[%lld][%lld] = %lld is outside the vocabulary (size %lld)",
                              (long long)(i / L), (long long)(i % L), (long long)h[i], (long long)cfg->text.vocab);
    if (ht) ht->storage->data = NULL;
    gc_tensor_release(ht);
    free(h);
    return st;
}

static _Thread_local bool trim_on = true;

bool gc_clip_text_trim_set_enabled(bool on)
{
    bool prev = trim_on;
    trim_on = on;
    return prev;
}

gc_tensor *gc_clip_encode_text(gc_clip *m, gc_tensor *ids)
{
    if (!ids) return NULL;
    const gc_clip_tower_config *c = &m->cfg.text;
    if (ids->ndim != 2 || ids->shape[1] > c->max_positions || ids->shape[1] < 1 ||
        (ids->dtype != GC_I32 && ids->dtype != GC_I64)) {
        char s[GC_SHAPE_STR_LEN];
        gc_error_set(GC_ERR_SHAPE, "input_ids %s %s: the model expects i32/i64 [B, L] with L <= %lld",
                     gc_dtype_name(ids->dtype), gc_shape_str(ids, s, sizeof s), (long long)c->max_positions);
        return NULL;
    }
    int64_t B = ids->shape[0], L = ids->shape[1];
    int64_t *pos = malloc(sizeof(int64_t) * (size_t)(B + 1));
    if (!pos) { gc_error_set(GC_ERR_OOM, "out of host memory"); return NULL; }
    if (gc_clip_text_pool_positions(&m->cfg, ids, pos) != GC_OK) { free(pos); return NULL; }
    int64_t last = 0; /* the last pooling position of the batch */
    for (int64_t b = 0; b < B; b++) last = pos[b] > last ? pos[b] : last;
    gc_pool *pool = gc_pool_push();
    /* ids and positions stay on the host: the ops check them there, with no wait for the GPU */
    gc_tensor *pos_t = gc_pool_add(gc_tensor_from_data(GC_I64, GC_CPU, 1, GC_SHAPE(B), pos));
    free(pos);
    gc_tensor *ids_h = ids->device.type == GC_DEVICE_CPU ? ids : gc_pool_add(gc_tensor_to(ids, GC_CPU, ids->dtype));
    /* causal: no pooled row sees a token after the last pooling position; padding past it
     * is not run (position embeddings are absolute: the columns before keep their numbers).
     * Not under dropout: attention dropout draws by the sequence length, and a chunk's
     * length must not change its masks (the gradient cache equals the whole batch). */
    bool drawn = m->training && (c->attn_dropout > 0 || (m->opt.lora_r > 0 && m->opt.lora_dropout > 0));
    if (trim_on && !drawn && last + 1 < L) {
        L = last + 1;
        ids_h = gc_contiguous(gc_slice(ids_h, 1, 0, L));
    }
    gc_tensor *h = gc_embedding(m->t_tok, ids_h);                              /* [B, L, D] */
    h = gc_add(h, gc_slice(m->t_pos, 0, 0, L));
    int64_t nl = c->layers;
    for (int64_t i = 0; i + 1 < nl; i++) h = gc_block_run(&m->t_blocks[i], h, m->opt.checkpointing);
    /* the embedding reads only the pooled rows: the last block computes just those (its
     * keys and values from every token) */
    gc_tensor *pooled = nl ? gc_view(gc_block_run_rows(&m->t_blocks[nl - 1], h, pos_t, m->opt.checkpointing), 2,
                                     GC_SHAPE(B, c->hidden))
                           : gc_gather_rows(h, pos_t);                         /* [B, D] */
    pooled = gc_layernorm(pooled, m->t_final_w, m->t_final_b, c->eps);
    gc_tensor *y = gc_pool_keep(gc_linear(pooled, m->t_proj, NULL));
    gc_pool_pop(pool);
    return y;
}
