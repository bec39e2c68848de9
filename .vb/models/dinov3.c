/* DINOv3 ViT: config, parameters (HF names), rotary tables, forward. */
#include "gc_dinov3.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "gc_json.h"
#include "gc_safetensors.h"

#define MAX_LAYERS 64

struct gc_dinov3 {
    gc_dinov3_config cfg;
    gc_dinov3_options opt;
    gc_params params;
    gc_tensor *cls, *mask_token, *registers, *patch_w, *patch_b, *norm_w, *norm_b;
    gc_block blocks[MAX_LAYERS]; /* as declared; rope_cos/rope_sin unset */
    bool training;
    /* one entry per patch grid seen: the rotary tables and a copy of the blocks that
     * points at them. A checkpointed block recomputes in the backward through its
     * grid_layer, so each grid keeps its own, alive until the model is freed (towers of
     * different image sizes may be in one graph). */
    struct rope_grid **grids;
    int n_grids;
};

/* Augmented tables of one grid for one RandContext (seed, step): the two latest are kept
 * (a step's forward and its replay read the same one); one that was dropped is rebuilt,
 * identical, when a recompute asks for it (a graph that uses a table holds its own
 * reference). */
#define AUG_CACHE 2
struct aug_tables {
    uint64_t seed;
    uint32_t step;
    gc_tensor *cos, *sin;
};

struct grid_layer {        /* the closure of one layer on one grid */
    gc_dinov3 *m;
    struct rope_grid *g;
    gc_block block;        /* the declared block as of the grid's latest forward, with the plain tables */
};

struct rope_grid {
    int64_t gh, gw;
    gc_tensor *cos, *sin;  /* f32 [gh*gw, head_dim] on the device: the plain coordinates */
    bool augment;          /* the latest forward of this grid augmented its coordinates */
    struct aug_tables aug[AUG_CACHE];
    int next_aug;
    /* layers + 1: every layer, then the last one again on the class token's row alone
     * (out_rows 1: what the class-token embedding reads) */
    struct grid_layer layers[];
};

/* ---------------------------------------------------------------- config */

/* pos_embed_*: null means None (0) here, not "the default": HF writes null for None */
static gc_status get_optional(const cJSON *o, const char *key, double dflt, double *out, const char *path)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v) { *out = dflt; return GC_OK; }
    if (cJSON_IsNull(v)) { *out = 0; return GC_OK; }
    return gc_json_get_double(o, key, dflt, false, out, path);
}

gc_status gc_dinov3_config_load(const char *path, gc_dinov3_config *c)
{
    cJSON *o = NULL;
    GC_TRY(gc_json_load_file(path, &o));
    memset(c, 0, sizeof *c);
    const char *mt = NULL, *act = NULL;
    bool gated = false;
    gc_status st = gc_json_get_string(o, "model_type", "dinov3_vit", false, &mt, path);
    if (st == GC_OK && strcmp(mt, "dinov3_vit"))
        st = gc_error_set(GC_ERR_FORMAT, "%s: model_type is '%s', not dinov3_vit", path, mt);
#define GI(k, d, f) if (st == GC_OK) st = gc_json_get_int(o, k, d, false, &c->f, path)
#define GD(k, d, f) if (st == GC_OK) st = gc_json_get_double(o, k, d, false, &c->f, path)
#define GB(k, d, f) if (st == GC_OK) st = gc_json_get_bool(o, k, d, false, &c->f, path)
    GI("hidden_size", 384, hidden);
    GI("num_hidden_layers", 12, layers);
    GI("num_attention_heads", 6, heads);
    GI("intermediate_size", 1536, intermediate);
    GI("image_size", 224, image_size);
    GI("patch_size", 16, patch);
    GI("num_channels", 3, channels);
    GI("num_register_tokens", 0, registers);
    GD("layer_norm_eps", 1e-5, eps);
    GD("attention_dropout", 0.0, attn_dropout);
    GD("rope_theta", 100.0, rope_theta);
    GD("layerscale_value", 1.0, layerscale);
    GB("query_bias", true, query_bias);
    GB("key_bias", false, key_bias);
    GB("value_bias", true, value_bias);
    GB("proj_bias", true, proj_bias);
    GB("mlp_bias", true, mlp_bias);
    GD("drop_path_rate", 0.0, drop_path);
#undef GI
#undef GD
#undef GB
    if (st == GC_OK) st = get_optional(o, "pos_embed_shift", 0, &c->pos_embed_shift, path);
    if (st == GC_OK) st = get_optional(o, "pos_embed_jitter", 0, &c->pos_embed_jitter, path);
    if (st == GC_OK) st = get_optional(o, "pos_embed_rescale", 2.0, &c->pos_embed_rescale, path);
    if (st == GC_OK) st = gc_json_get_bool(o, "use_gated_mlp", false, false, &gated, path);
    if (st == GC_OK && !gated) st = gc_json_get_bool(o, "use_swiglu_ffn", false, false, &gated, path); /* older name */
    if (st == GC_OK && gated) st = gc_error_set(GC_ERR_FORMAT, "%s: use_gated_mlp (SwiGLU) is not supported yet", path);
    if (st == GC_OK) st = gc_json_get_string(o, "hidden_act", "gelu", false, &act, path);
    if (st == GC_OK && gc_act_parse(act, &c->act) != GC_OK) {
        gc_error_clear();
        st = gc_error_set(GC_ERR_FORMAT, "%s: hidden_act: unsupported activation '%s'", path, act);
    }
    cJSON_Delete(o);
    GC_TRY(st);
    /* each key in its range, named: the upper bounds are far past any DINOv3, and keep a
     * corrupt size from allocating the parameters before the checkpoint's shapes are compared */
    const struct { const char *key; int64_t v, lo, hi; } ints[] = {
        {"hidden_size", c->hidden, 1, 1 << 16},         {"num_attention_heads", c->heads, 1, 1 << 10},
        {"num_hidden_layers", c->layers, 0, MAX_LAYERS}, {"intermediate_size", c->intermediate, 1, 1 << 18},
        {"image_size", c->image_size, 1, 1 << 14},       {"patch_size", c->patch, 1, 1 << 14},
        {"num_channels", c->channels, 1, 64},            {"num_register_tokens", c->registers, 0, 1 << 10},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        if (ints[i].v < ints[i].lo || ints[i].v > ints[i].hi)
            return gc_error_set(GC_ERR_FORMAT, "%s: %s %lld is outside [%lld, %lld]", path, ints[i].key, (long long)ints[i].v,
                                (long long)ints[i].lo, (long long)ints[i].hi);
    if (c->hidden % c->heads || (c->hidden / c->heads) % 4)
        return gc_error_set(GC_ERR_FORMAT, "%s: hidden_size %lld over num_attention_heads %lld is not a head size that is a multiple of 4 (2D RoPE)",
                            path, (long long)c->hidden, (long long)c->heads);
    /* [lo, hi) when open, else [lo, hi]; NaN fails every one */
    const struct { const char *key; double v, lo, hi; bool open; } reals[] = {
        {"layer_norm_eps", c->eps, 1e-30, 1, true},      {"rope_theta", c->rope_theta, 1e-30, 1e30, false},
        {"attention_dropout", c->attn_dropout, 0, 1, true}, {"drop_path_rate", c->drop_path, 0, 1, true},
        {"layerscale_value", c->layerscale, -1e30, 1e30, false},
        {"pos_embed_shift", c->pos_embed_shift, 0, 10, false}, /* 0 or null: off */
        {"pos_embed_jitter", c->pos_embed_jitter, 0, 100, false},
        {"pos_embed_rescale", c->pos_embed_rescale, 0, 100, false},
    };
    for (size_t i = 0; i < sizeof reals / sizeof reals[0]; i++)
        if (!(reals[i].v >= reals[i].lo && (reals[i].open ? reals[i].v < reals[i].hi : reals[i].v <= reals[i].hi)))
            return gc_error_set(GC_ERR_FORMAT, "%s: %s %g is outside [%g, %g%s", path, reals[i].key, reals[i].v,
                                reals[i].lo, reals[i].hi, reals[i].open ? ")" : "]");
    return GC_OK;
}

static const char *act_name(gc_act a)
{
    switch (a) {
    case GC_ACT_GELU_TANH: return "gelu_pytorch_tanh";
    case GC_ACT_QUICK_GELU: return "quick_gelu";
    case GC_ACT_SILU: return "silu";
    default: return "gelu";
    }
}

gc_status gc_dinov3_config_save(const gc_dinov3_config *c, const char *path)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "architectures", cJSON_CreateStringArray((const char *[]){"DINOv3ViTModel"}, 1));
    cJSON_AddStringToObject(o, "model_type", "dinov3_vit");
    cJSON_AddNumberToObject(o, "hidden_size", (double)c->hidden);
    cJSON_AddNumberToObject(o, "num_hidden_layers", (double)c->layers);
    cJSON_AddNumberToObject(o, "num_attention_heads", (double)c->heads);
    cJSON_AddNumberToObject(o, "intermediate_size", (double)c->intermediate);
    cJSON_AddNumberToObject(o, "image_size", (double)c->image_size);
    cJSON_AddNumberToObject(o, "patch_size", (double)c->patch);
    cJSON_AddNumberToObject(o, "num_channels", (double)c->channels);
    cJSON_AddNumberToObject(o, "num_register_tokens", (double)c->registers);
    cJSON_AddNumberToObject(o, "layer_norm_eps", c->eps);
    cJSON_AddNumberToObject(o, "attention_dropout", c->attn_dropout);
    cJSON_AddNumberToObject(o, "rope_theta", c->rope_theta);
    cJSON_AddNumberToObject(o, "layerscale_value", c->layerscale);
    cJSON_AddBoolToObject(o, "query_bias", c->query_bias);
    cJSON_AddBoolToObject(o, "key_bias", c->key_bias);
    cJSON_AddBoolToObject(o, "value_bias", c->value_bias);
    cJSON_AddBoolToObject(o, "proj_bias", c->proj_bias);
    cJSON_AddBoolToObject(o, "mlp_bias", c->mlp_bias);
    cJSON_AddBoolToObject(o, "use_gated_mlp", 0);
    cJSON_AddNumberToObject(o, "drop_path_rate", c->drop_path);
    const char *aug[3] = {"pos_embed_shift", "pos_embed_jitter", "pos_embed_rescale"};
    const double augv[3] = {c->pos_embed_shift, c->pos_embed_jitter, c->pos_embed_rescale};
    for (int i = 0; i < 3; i++)
        cJSON_AddItemToObject(o, aug[i], augv[i] > 0 ? cJSON_CreateNumber(augv[i]) : cJSON_CreateNull());
    cJSON_AddStringToObject(o, "hidden_act", act_name(c->act));
    cJSON_AddStringToObject(o, "torch_dtype", "float32");
    gc_status st = gc_json_save_file(path, o);
    cJSON_Delete(o);
    return st;
}

gc_status gc_dinov3_config_named(const char *name, gc_dinov3_config *c)
{
    *c = (gc_dinov3_config){.hidden = 768, .layers = 12, .heads = 12, .intermediate = 3072, .image_size = 224, .patch = 16,
                            .channels = 3, .registers = 4, .act = GC_ACT_GELU_ERF, .eps = 1e-5, .rope_theta = 100,
                            .layerscale = 1.0, .query_bias = true, .value_bias = true, .proj_bias = true, .mlp_bias = true,
                            .pos_embed_rescale = 2.0};
    if (!strcmp(name, "dinov3-vit-b16")) return GC_OK;
    if (!strcmp(name, "dinov3-tiny")) {
        c->hidden = 64; c->layers = 2; c->heads = 4; c->intermediate = 128; c->image_size = 32; c->patch = 8;
        return GC_OK;
    }
    return gc_error_set(GC_ERR_INVALID, "unknown model '%s' (known: dinov3-vit-b16, dinov3-tiny)", name);
}

/* ---------------------------------------------------------------- parameters */

static gc_status declare(gc_dinov3 *m)
{
    const gc_dinov3_config *c = &m->cfg;
    gc_params *ps = &m->params;
    int64_t D = c->hidden, F = c->intermediate;
    m->cls = gc_param_declare(ps, "embeddings.cls_token", 3, GC_SHAPE(1, 1, D));
    m->mask_token = gc_param_declare(ps, "embeddings.mask_token", 3, GC_SHAPE(1, 1, D));
    if (c->registers) m->registers = gc_param_declare(ps, "embeddings.register_tokens", 3, GC_SHAPE(1, c->registers, D));
    m->patch_w = gc_param_declare(ps, "embeddings.patch_embeddings.weight", 4, GC_SHAPE(D, c->channels, c->patch, c->patch));
    m->patch_b = gc_param_declare(ps, "embeddings.patch_embeddings.bias", 1, GC_SHAPE(D));
    if (!m->cls || !m->mask_token || (c->registers && !m->registers) || !m->patch_w || !m->patch_b) return GC_PENDING();
    char p[128], n[192];
    for (int64_t i = 0; i < c->layers; i++) {
        gc_block *b = &m->blocks[i];
        memset(b, 0, sizeof *b);
        snprintf(p, sizeof p, "layer.%lld", (long long)i);
        snprintf(n, sizeof n, "%s.norm1.weight", p); b->ln1_w = gc_param_declare(ps, n, 1, GC_SHAPE(D));
        snprintf(n, sizeof n, "%s.norm1.bias", p);   b->ln1_b = gc_param_declare(ps, n, 1, GC_SHAPE(D));
        char ap[160];
        snprintf(ap, sizeof ap, "%s.attention", p);
        GC_TRY(gc_lin_declare(ps, &b->q, ap, "q_proj", D, D, c->query_bias, &m->opt.lora));
        GC_TRY(gc_lin_declare(ps, &b->k, ap, "k_proj", D, D, c->key_bias, &m->opt.lora));
        GC_TRY(gc_lin_declare(ps, &b->v, ap, "v_proj", D, D, c->value_bias, &m->opt.lora));
        GC_TRY(gc_block_pack_qkv(ps, b)); /* one GEMM for the three */
        GC_TRY(gc_lin_declare(ps, &b->o, ap, "o_proj", D, D, c->proj_bias, &m->opt.lora));
        snprintf(n, sizeof n, "%s.layer_scale1.lambda1", p); b->ls1 = gc_param_declare(ps, n, 1, GC_SHAPE(D));
        snprintf(n, sizeof n, "%s.norm2.weight", p); b->ln2_w = gc_param_declare(ps, n, 1, GC_SHAPE(D));
        snprintf(n, sizeof n, "%s.norm2.bias", p);   b->ln2_b = gc_param_declare(ps, n, 1, GC_SHAPE(D));
        snprintf(ap, sizeof ap, "%s.mlp", p);
        GC_TRY(gc_lin_declare(ps, &b->fc1, ap, "up_proj", F, D, c->mlp_bias, &m->opt.lora));
        GC_TRY(gc_lin_declare(ps, &b->fc2, ap, "down_proj", D, F, c->mlp_bias, &m->opt.lora));
        snprintf(n, sizeof n, "%s.layer_scale2.lambda1", p); b->ls2 = gc_param_declare(ps, n, 1, GC_SHAPE(D));
        if (!b->ln1_w || !b->ln1_b || !b->ln2_w || !b->ln2_b || !b->ls1 || !b->ls2) return GC_PENDING();
        b->heads = c->heads;
        b->act = c->act;
        b->eps = c->eps;
        b->op_base = (3u << 16) | ((uint32_t)i << 4);
        b->rope_start = 1 + c->registers; /* the class and register tokens are not rotated */
    }
    m->norm_w = gc_param_declare(ps, "norm.weight", 1, GC_SHAPE(D));
    m->norm_b = gc_param_declare(ps, "norm.bias", 1, GC_SHAPE(D));
    return m->norm_w && m->norm_b ? GC_OK : GC_PENDING();
}

static gc_status dinov3_new(gc_dinov3 **out, const gc_dinov3_config *cfg, const gc_dinov3_options *opt)
{
    *out = NULL;
    if (opt->dtype != GC_F32 && !(opt->dtype == GC_BF16 && opt->device.type == GC_DEVICE_CUDA))
        return gc_error_set(GC_ERR_DTYPE, "compute dtype %s on %s is not supported (use f32, or bf16 on cuda)",
                            gc_dtype_name(opt->dtype), gc_device_name(opt->device));
    if (cfg->layers > MAX_LAYERS) return gc_error_set(GC_ERR_INVALID, "more than %d layers", MAX_LAYERS);
    gc_dinov3 *m = calloc(1, sizeof *m);
    if (!m) return gc_error_set(GC_ERR_OOM, "out of host memory");
    m->cfg = *cfg;
    m->opt = *opt;
    m->opt.lora.targets = opt->lora.targets ? strdup(opt->lora.targets) : NULL;
    gc_params_init(&m->params, opt->device, opt->dtype);
    gc_status st = declare(m);
    /* The mask token only replaces patches under bool_masked_pos (masked-image
     * pretraining), which gradcache has no use for: it never receives a gradient. HF
     * leaves its .grad None and torch's AdamW skips it; frozen, ours skips it too. */
    if (st == GC_OK) {
        int mask = (int)(gc_params_find(&m->params, "embeddings.mask_token") - m->params.items);
        st = gc_params_set_trainable(&m->params, mask, false);
    }
    if (st != GC_OK) { gc_dinov3_free(m); return st; }
    gc_dinov3_set_training(m, true);
    *out = m;
    return GC_OK;
}

struct init_ctx { const gc_dinov3_config *c; uint64_t seed; int idx; };

/* transformers' DINOv3ViTPreTrainedModel._init_weights: trunc-normal 0.02 (here plain normal) */
static void init_param(const char *name, int ndim, const int64_t *shape, float *out, void *user)
{
    struct init_ctx *ic = user;
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    double fill = NAN;
    if (strstr(name, "lambda1")) fill = ic->c->layerscale;
    else if (strstr(name, "norm") && strstr(name, ".weight")) fill = 1.0;
    else if (strstr(name, ".bias") || strstr(name, "mask_token") || strstr(name, "lora_B")) fill = 0.0;
    if (!isnan(fill)) {
        for (int64_t i = 0; i < n; i++) out[i] = (float)fill;
    } else {
        double std = strstr(name, "lora_A") ? pow((double)shape[1], -0.5) : 0.02;
        gc_init_normal(out, n, std, ic->seed, (uint32_t)ic->idx);
    }
    ic->idx++;
}

gc_status gc_dinov3_init(gc_dinov3 **out, const gc_dinov3_config *cfg, const gc_dinov3_options *opt, uint64_t seed)
{
    gc_dinov3 *m;
    GC_TRY(dinov3_new(&m, cfg, opt));
    struct init_ctx ic = {&m->cfg, seed, 0};
    gc_status st = gc_params_init_values(&m->params, init_param, &ic);
    if (st == GC_OK && opt->lora.r) st = gc_params_freeze_base(&m->params);
    if (st != GC_OK) { gc_dinov3_free(m); return st; }
    *out = m;
    return GC_OK;
}

static gc_status empty_tensor_present(const char *dir, const char *name, bool *empty)
{
    gc_st_dir *d;
    GC_TRY(gc_st_dir_open(dir, &d));
    gc_st_file *f;
    const gc_st_entry *e;
    gc_status st = gc_st_dir_lookup(d, name, &f, &e);
    *empty = false;
    if (st == GC_OK && e) {
        int64_t n = 1;
        for (int i = 0; i < e->ndim; i++) n *= e->shape[i];
        *empty = n == 0;
    }
    gc_st_dir_close(d);
    return st;
}

gc_status gc_dinov3_load(gc_dinov3 **out, const char *dir, const gc_dinov3_options *opt)
{
    *out = NULL;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    gc_dinov3_config cfg;
    GC_TRY(gc_dinov3_config_load(path, &cfg));
    gc_dinov3 *m;
    GC_TRY(dinov3_new(&m, &cfg, opt));
    gc_status st = GC_OK;
    if (opt->lora.r) {
        struct init_ctx ic = {&m->cfg, 0x10ea, 0};
        st = gc_params_init_values(&m->params, init_param, &ic);
    }
    /* HF keeps register_tokens [1, 0, D] as a parameter when there are no registers and
     * save_pretrained writes it: accept it when empty (anything else is "unexpected") */
    bool empty_regs = false;
    if (st == GC_OK && !cfg.registers) st = empty_tensor_present(dir, "embeddings.register_tokens", &empty_regs);
    const char *const ignore[] = {"inv_freq", empty_regs ? "embeddings.register_tokens" : NULL, NULL};
    if (st == GC_OK) st = gc_params_load(&m->params, dir, ignore, ".lora_");
    if (st == GC_OK && opt->lora.r) st = gc_params_freeze_base(&m->params);
    if (st != GC_OK) { gc_dinov3_free(m); return st; }
    *out = m;
    return GC_OK;
}

gc_status gc_dinov3_save(gc_dinov3 *m, const char *dir)
{
    mkdir(dir, 0755);
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    GC_TRY(gc_dinov3_config_save(&m->cfg, path));
    return gc_params_save(&m->params, dir, ".lora_");
}

void gc_dinov3_free(gc_dinov3 *m)
{
    if (!m) return;
    gc_params_free(&m->params);
    for (int i = 0; i < m->n_grids; i++) {
        struct rope_grid *g = m->grids[i];
        gc_tensor_release(g->cos);
        gc_tensor_release(g->sin);
        for (int j = 0; j < AUG_CACHE; j++) {
            gc_tensor_release(g->aug[j].cos);
            gc_tensor_release(g->aug[j].sin);
        }
        free(g);
    }
    free(m->grids);
    free((char *)m->opt.lora.targets);
    free(m);
}

gc_params *gc_dinov3_params(gc_dinov3 *m) { return &m->params; }
const gc_dinov3_config *gc_dinov3_get_config(const gc_dinov3 *m) { return &m->cfg; }

/* HF: attention dropout, drop_path (the same rate in every layer, on both residual
 * branches) and the RoPE coordinate augmentation act in training mode only. */
void gc_dinov3_set_training(gc_dinov3 *m, bool on)
{
    m->training = on;
    for (int64_t i = 0; i < m->cfg.layers; i++) {
        gc_block *b = &m->blocks[i];
        b->attn_dropout = on ? m->cfg.attn_dropout : 0;
        b->drop_path = on ? m->cfg.drop_path : 0;
        gc_lin *ls[6] = {&b->q, &b->k, &b->v, &b->o, &b->fc1, &b->fc2};
        for (int j = 0; j < 6; j++) ls[j]->lora_dropout = on ? m->opt.lora.dropout : 0;
    }
}

/* ---------------------------------------------------------------- rotary tables */

bool gc_dinov3_rope_augmentation(const gc_dinov3_config *c, gc_rand_context rc, float shift[2], float jitter[2],
                                 float *rescale)
{
    /* transformers' augment_patches_center_coordinates: shift_hw (1, 2) ~ U(-shift, shift);
     * jitter_hw (1, 2) = exp(U(-log jitter, log jitter)); rescale_hw (1,) = exp(U(-log
     * rescale, log rescale)), one factor for both axes. Each only when set (not None). */
    float u[5];
    for (int e = 0; e < 5; e++) u[e] = gc_rand_uniform(rc.seed, rc.step, GC_DINOV3_ROPE_AUG_OP, 0, (uint64_t)e);
    for (int a = 0; a < 2; a++) {
        shift[a] = c->pos_embed_shift > 0 ? (float)(c->pos_embed_shift * (2.0 * u[a] - 1.0)) : 0.0f;
        double jr = c->pos_embed_jitter > 0 ? log(c->pos_embed_jitter) : 0;
        jitter[a] = c->pos_embed_jitter > 0 ? (float)exp((double)(float)(jr * (2.0 * u[2 + a] - 1.0))) : 1.0f;
    }
    double rr = c->pos_embed_rescale > 0 ? log(c->pos_embed_rescale) : 0;
    *rescale = c->pos_embed_rescale > 0 ? (float)exp((double)(float)(rr * (2.0 * u[4] - 1.0))) : 1.0f;
    return c->pos_embed_shift > 0 || c->pos_embed_jitter > 0 || c->pos_embed_rescale > 0;
}

/* Patch centres normalised per axis to (-1, 1); in training mode with augmentation,
 * (coord + shift[axis]) * jitter[axis] * rescale, in that order and in f32 as
 * transformers computes them; inv_freq[k] = theta^(-4k/head_dim);
 * angle = 2 pi coord inv_freq, laid out [y(0..hd/4), x(0..hd/4)] and tiled twice.
 * The coordinates, 2 pi coord and inv_freq are rounded to f32 step by step as
 * transformers computes them (get_patches_center_coordinates, the inv_freq buffer);
 * the product and cos/sin are taken in double (transformers: f32, ~1 ulp apart).
 * aug: NULL, or the RandContext whose draw augments the coordinates. *cos_out and
 * *sin_out: NULL for new tables, or f32 [gh*gw, head_dim] tables to overwrite. */
static gc_status rope_tables(const gc_dinov3 *m, int64_t gh, int64_t gw, const gc_rand_context *aug,
                             gc_tensor **cos_out, gc_tensor **sin_out)
{
    int64_t hd = m->cfg.hidden / m->cfg.heads, q = hd / 4, N = gh * gw;
    float shift[2] = {0, 0}, jitter[2] = {1, 1}, rescale = 1;
    if (aug) gc_dinov3_rope_augmentation(&m->cfg, *aug, shift, jitter, &rescale);
    float *c = malloc(sizeof(float) * (size_t)(N * hd)), *s = malloc(sizeof(float) * (size_t)(N * hd));
    float *inv = malloc(sizeof(float) * (size_t)q);
    if (!c || !s || !inv) { free(c); free(s); free(inv); return gc_error_set(GC_ERR_OOM, "out of host memory"); }
    for (int64_t k = 0; k < q; k++) /* 1 / theta ** arange(0, 1, 4 / hd) */
        inv[k] = 1.0f / (float)pow(m->cfg.rope_theta, (double)(float)((double)k * (4.0 / (double)hd)));
    const float two_pi = (float)(2.0 * M_PI);
    for (int64_t i = 0; i < gh; i++)
        for (int64_t j = 0; j < gw; j++) {
            float y = ((float)i + 0.5f) / (float)gh, x = ((float)j + 0.5f) / (float)gw;
            y = 2.0f * y - 1.0f;
            x = 2.0f * x - 1.0f;
            if (aug) {
                y = (y + shift[0]) * jitter[0];
                x = (x + shift[1]) * jitter[1];
                y *= rescale;
                x *= rescale;
            }
            y *= two_pi;
            x *= two_pi;
            float *cr = c + (i * gw + j) * hd, *sr = s + (i * gw + j) * hd;
            for (int64_t k = 0; k < q; k++) {
                double ay = (double)y * inv[k], ax = (double)x * inv[k];
                for (int rep = 0; rep < 2; rep++) {
                    cr[rep * 2 * q + k] = (float)cos(ay);
                    sr[rep * 2 * q + k] = (float)sin(ay);
                    cr[rep * 2 * q + q + k] = (float)cos(ax);
                    sr[rep * 2 * q + q + k] = (float)sin(ax);
                }
            }
        }
    free(inv);
    if (*cos_out && *sin_out) { /* rewrite the given tables in place */
        const size_t nb = sizeof(float) * (size_t)(N * hd);
        gc_status st = gc_memcpy(m->opt.device, gc_tensor_data(*cos_out), GC_CPU, c, nb);
        if (st == GC_OK) st = gc_memcpy(m->opt.device, gc_tensor_data(*sin_out), GC_CPU, s, nb);
        free(c);
        free(s);
        return st;
    }
    *cos_out = gc_tensor_from_data(GC_F32, m->opt.device, 2, GC_SHAPE(N, hd), c);
    *sin_out = gc_tensor_from_data(GC_F32, m->opt.device, 2, GC_SHAPE(N, hd), s);
    free(c);
    free(s);
    if (*cos_out && *sin_out) return GC_OK;
    gc_tensor_release(*cos_out);
    gc_tensor_release(*sin_out);
    return GC_PENDING();
}

static bool augmenting(const gc_dinov3 *m)
{
    const gc_dinov3_config *c = &m->cfg;
    return m->training && (c->pos_embed_shift > 0 || c->pos_embed_jitter > 0 || c->pos_embed_rescale > 0);
}

/* The augmented tables of grid g for the current RandContext (borrowed: the cache owns them). */
static gc_status aug_tables(const gc_dinov3 *m, struct rope_grid *g, gc_tensor **cos, gc_tensor **sin)
{
    gc_rand_context rc = gc_rand_context_get();
    for (int i = 0; i < AUG_CACHE; i++) {
        struct aug_tables *t = &g->aug[i];
        if (t->cos && t->seed == rc.seed && t->step == rc.step) {
            *cos = t->cos;
            *sin = t->sin;
            return GC_OK;
        }
    }
    struct aug_tables *t = &g->aug[g->next_aug];
    g->next_aug = (g->next_aug + 1) % AUG_CACHE;
    gc_tensor *c = NULL, *s = NULL;
    if (t->cos && t->cos->refcount == 1 && t->cos->storage->refcount == 1 && t->sin->refcount == 1 &&
        t->sin->storage->refcount == 1) {
        /* no graph holds the evicted tables: rewrite them (stream-ordered after their last
         * readers), so that steady-state steps allocate nothing */
        c = t->cos, s = t->sin;
        t->cos = t->sin = NULL;
    } else {
        gc_tensor_release(t->cos);
        gc_tensor_release(t->sin);
        t->cos = t->sin = NULL;
    }
    gc_status st = rope_tables(m, g->gh, g->gw, &rc, &c, &s);
    if (st != GC_OK) {
        gc_tensor_release(c);
        gc_tensor_release(s);
        return st;
    }
    *t = (struct aug_tables){rc.seed, rc.step, c, s};
    *cos = c;
    *sin = s;
    return GC_OK;
}

static struct rope_grid *find_grid(gc_dinov3 *m, int64_t gh, int64_t gw)
{
    for (int i = 0; i < m->n_grids; i++)
        if (m->grids[i]->gh == gh && m->grids[i]->gw == gw) return m->grids[i];
    struct rope_grid **gs = realloc(m->grids, sizeof *gs * (size_t)(m->n_grids + 1));
    if (!gs) { gc_error_set(GC_ERR_OOM, "out of host memory"); return NULL; }
    m->grids = gs;
    struct rope_grid *g = calloc(1, sizeof *g + sizeof(struct grid_layer) * (size_t)(m->cfg.layers + 1));
    if (!g) { gc_error_set(GC_ERR_OOM, "out of host memory"); return NULL; }
    if (rope_tables(m, gh, gw, NULL, &g->cos, &g->sin) != GC_OK) { free(g); return NULL; }
    g->gh = gh;
    g->gw = gw;
    m->grids[m->n_grids++] = g;
    return g;
}

/* The layers to run a gh x gw grid with: the declared blocks (their current dropout
 * settings) plus that grid's tables, and whether the coordinates are augmented. */
static struct rope_grid *grid_layers(gc_dinov3 *m, int64_t gh, int64_t gw)
{
    struct rope_grid *g = find_grid(m, gh, gw);
    if (!g) return NULL;
    g->augment = augmenting(m);
    for (int64_t i = 0; i < m->cfg.layers; i++) {
        struct grid_layer *l = &g->layers[i];
        l->m = m;
        l->g = g;
        l->block = m->blocks[i];
        l->block.rope_cos = g->cos;
        l->block.rope_sin = g->sin;
    }
    if (m->cfg.layers) {
        g->layers[m->cfg.layers] = g->layers[m->cfg.layers - 1];
        g->layers[m->cfg.layers].block.out_rows = 1;
    }
    return g;
}

gc_status gc_dinov3_rope(gc_dinov3 *m, int64_t gh, int64_t gw, gc_tensor **cos, gc_tensor **sin)
{
    *cos = *sin = NULL;
    if (gh < 1 || gw < 1)
        return gc_error_set(GC_ERR_SHAPE, "rotary tables of a %lld x %lld patch grid", (long long)gh, (long long)gw);
    struct rope_grid *g = find_grid(m, gh, gw);
    if (!g) return GC_PENDING();
    gc_tensor *c = g->cos, *s = g->sin;
    if (augmenting(m)) GC_TRY(aug_tables(m, g, &c, &s));
    *cos = gc_tensor_retain(c);
    *sin = gc_tensor_retain(s);
    return GC_OK;
}

/* One layer on one grid (the function a checkpoint recomputes, under the RandContext
 * of its forward: the augmented tables are those of that context). */
static gc_tensor *layer_forward(gc_tensor *x, void *closure)
{
    const struct grid_layer *l = closure;
    if (!x) return NULL;
    gc_block b = l->block;
    if (l->g->augment && aug_tables(l->m, l->g, &b.rope_cos, &b.rope_sin) != GC_OK) return NULL;
    return gc_block_forward(&b, x);
}

/* ---------------------------------------------------------------- forward */

/* The last hidden states [B, L, D], or with cls_only [B, 1, D]: the class token's row alone,
 * its last layer run on that row (keys and values from every token), the same numbers
 * as row 0 of the whole output. */
static gc_tensor *hidden_states(gc_dinov3 *m, gc_tensor *pixels, bool cls_only)
{
    if (!pixels) return NULL;
    const gc_dinov3_config *c = &m->cfg;
    if (pixels->ndim != 4 || pixels->shape[1] != c->channels || pixels->shape[2] % c->patch || pixels->shape[3] % c->patch ||
        pixels->shape[2] < c->patch || pixels->shape[3] < c->patch) {
        char s[GC_SHAPE_STR_LEN];
        gc_error_set(GC_ERR_SHAPE, "pixel_values %s: the model expects [B, %lld, H, W] with H and W multiples of %lld",
                     gc_shape_str(pixels, s, sizeof s), (long long)c->channels, (long long)c->patch);
        return NULL;
    }
    struct rope_grid *g = grid_layers(m, pixels->shape[2] / c->patch, pixels->shape[3] / c->patch);
    if (!g) return NULL;
    int64_t B = pixels->shape[0], D = c->hidden;
    gc_pool *pool = gc_pool_push();
    gc_pool *emb = gc_pool_push(); /* the pixels on the device and the patch embedding die here */
    gc_tensor *x = gc_input_to(pixels, m->opt.device, m->opt.dtype);
    x = gc_patch_embed(x, m->patch_w, m->patch_b);                                  /* [B, N, D] */
    gc_tensor *zeros = gc_pool_add(gc_tensor_zeros(m->opt.dtype, m->opt.device, 3, GC_SHAPE(B, 1 + c->registers, D)));
    gc_tensor *prefix = c->registers ? gc_concat(2, (gc_tensor *[]){m->cls, m->registers}, 1) : m->cls; /* [1, 1+R, D] */
    gc_tensor *h = gc_pool_keep(gc_concat(2, (gc_tensor *[]){gc_add(zeros, prefix), x}, 1)); /* [B, 1+R+N, D] */
    gc_pool_pop(emb);
    for (int64_t i = 0; i < c->layers; i++) {
        struct grid_layer *l = &g->layers[cls_only && i == c->layers - 1 ? i + 1 : i];
        h = m->opt.checkpointing ? gc_checkpoint(layer_forward, l, h) : layer_forward(h, l);
    }
    gc_tensor *y = gc_layernorm(h, m->norm_w, m->norm_b, c->eps);
    /* no layers, or a last block that ran every row (gc_block.out_rows: attention dropout) */
    if (cls_only && y && y->shape[1] != 1) y = gc_slice(y, 1, 0, 1);
    y = gc_pool_keep(y);
    gc_pool_pop(pool);
    return y;
}

gc_tensor *gc_dinov3_forward(gc_dinov3 *m, gc_tensor *pixels) { return hidden_states(m, pixels, false); }

gc_tensor *gc_dinov3_encode(gc_dinov3 *m, gc_tensor *pixels)
{
    const bool mean = m->opt.pool == GC_DINOV3_POOL_MEAN;
    gc_tensor *h = hidden_states(m, pixels, !mean);
    if (!h) return NULL;
    int64_t B = h->shape[0], D = h->shape[2];
    if (mean) return gc_mean_dim(gc_slice(h, 1, 1 + m->cfg.registers, h->shape[1]), 1);
    return gc_view(h, 2, GC_SHAPE(B, D)); /* [B, 1, D]: the class token */
}
