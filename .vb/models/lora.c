/* LoRA adapters <-> PEFT adapter directories, and merging adapters into base weights.
 * File format facts (checked against peft 0.21.0 + transformers 5.17): gc_lora.h. */
#include "gc_lora.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "gc_json.h"
#include "gc_safetensors.h"

#define PEFT_VERSION "0.21.0" /* the writer whose adapter_config.json we reproduce */

double gc_lora_scale(const gc_lora_options *o)
{
    /* the same rule as gc_lin_declare */
    return o->alpha > 0 ? o->alpha / (double)o->r : 1.0;
}

gc_status gc_lora_check_targets(const char *list, const char *const *known, const char *model, const char *where)
{
    char names[256] = "";
    size_t used = 0;
    for (int k = 0; known[k] && used < sizeof names; k++)
        used += (size_t)snprintf(names + used, sizeof names - used, "%s%s", k ? ", " : "", known[k]);
    /* an empty list would silently mean PEFT's default, a typo would adapt nothing */
    if (!list || !list[strspn(list, " ")])
        return gc_error_set(GC_ERR_INVALID, "%s: no modules given (%s modules: %s)", where, model, names);
    for (const char *p = list;;) {
        /* split and trim as gc_lin_declare reads the list */
        size_t n = strcspn(p, ","), len = n;
        const char *name = p;
        while (len && *name == ' ') { name++; len--; }
        while (len && name[len - 1] == ' ') len--;
        if (!len)
            return gc_error_set(GC_ERR_INVALID, "%s: an empty module name in '%s' (%s modules: %s)", where, list,
                                model, names);
        bool ok = false;
        for (int k = 0; known[k] && !ok; k++) ok = strlen(known[k]) == len && !strncmp(known[k], name, len);
        if (!ok)
            return gc_error_set(GC_ERR_INVALID, "%s: '%.*s' is not a %s module (%s)", where, (int)len, name, model,
                                names);
        if (!p[n]) break;
        p += n + 1;
    }
    return GC_OK;
}

/* ---------------------------------------------------------------- the model's adapters */

/* One adapted linear: "<module>.lora_A.weight", "<module>.lora_B.weight", "<module>.weight". */
typedef struct lora_mod {
    char module[320];
    gc_param *a, *b, *w; /* w may be NULL (not needed to save or load) */
} lora_mod;

static bool has_suffix(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* the last component of a module path: "vision_model.encoder.layers.0.self_attn.q_proj" -> "q_proj" */
static const char *module_site(const char *module)
{
    const char *d = strrchr(module, '.');
    return d ? d + 1 : module;
}

/* Lists the adapters of ps (caller frees *out); every lora_A needs its lora_B, and the
 * reverse, and all share one rank. */
static gc_status lora_mods(gc_params *ps, lora_mod **out, int *n, int64_t *rank)
{
    *out = NULL;
    *n = 0;
    *rank = 0;
    lora_mod *m = calloc((size_t)ps->n + 1, sizeof *m);
    if (!m) return gc_error_set(GC_ERR_OOM, "out of host memory");
    int k = 0;
    for (int i = 0; i < ps->n; i++) {
        const char *name = ps->items[i].name;
        bool is_a = has_suffix(name, ".lora_A.weight"), is_b = has_suffix(name, ".lora_B.weight");
        if (!is_a && !is_b) continue;
        size_t len = strlen(name) - strlen(".lora_A.weight");
        char other[400];
        snprintf(other, sizeof other, "%.*s.%s", (int)len, name, is_a ? "lora_B.weight" : "lora_A.weight");
        gc_param *o = gc_params_find(ps, other);
        if (!o) {
            free(m);
            return gc_error_set(GC_ERR_STATE, "LoRA parameter %s has no partner %s", name, other);
        }
        if (is_b) continue; /* listed with its A */
        if (len >= sizeof m[k].module) {
            free(m);
            return gc_error_set(GC_ERR_INVALID, "LoRA module name too long: %s", name);
        }
        memcpy(m[k].module, name, len);
        m[k].module[len] = 0;
        m[k].a = &ps->items[i];
        m[k].b = o;
        char w[400];
        snprintf(w, sizeof w, "%s.weight", m[k].module);
        m[k].w = gc_params_find(ps, w);
        int64_t r = m[k].a->value->shape[0];
        if (!*rank) *rank = r;
        if (r != *rank) {
            free(m);
            return gc_error_set(GC_ERR_STATE, "LoRA adapters of different ranks (%lld and %lld at %s): not supported",
                                (long long)*rank, (long long)r, name);
        }
        k++;
    }
    *out = m;
    *n = k;
    return GC_OK;
}

/* The distinct sites (q_proj, fc1, ...) of the adapters, in order of first appearance. */
static int mod_sites(const lora_mod *m, int n, const char **sites)
{
    int k = 0;
    for (int i = 0; i < n; i++) {
        const char *s = module_site(m[i].module);
        bool seen = false;
        for (int j = 0; j < k && !seen; j++) seen = !strcmp(sites[j], s);
        if (!seen) sites[k++] = s;
    }
    return k;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

/* ---------------------------------------------------------------- adapter_config.json */

typedef struct peft_cfg {
    int64_t r;
    double alpha, dropout;
    int n_targets;
    const char *targets[64]; /* point into the cJSON tree */
} peft_cfg;

/* absent, null, {} or [] */
static bool json_empty(const cJSON *v)
{
    return !v || cJSON_IsNull(v) || ((cJSON_IsObject(v) || cJSON_IsArray(v)) && !v->child);
}

static gc_status refuse_true(const cJSON *root, const char *key, const char *path, const char *why)
{
    bool on;
    GC_TRY(gc_json_get_bool(root, key, false, false, &on, path));
    if (on) return gc_error_set(GC_ERR_FORMAT, "%s: %s is true: %s is not supported", path, key, why);
    return GC_OK;
}

/* Parses and checks what gradcache can reproduce; the strings stay in *root. */
static gc_status peft_cfg_read(const char *dir, cJSON **root, peft_cfg *c)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    memset(c, 0, sizeof *c);
    GC_TRY(gc_json_load_file(path, root));
    const cJSON *j = *root;
    const char *type, *bias;
    GC_TRY(gc_json_get_string(j, "peft_type", NULL, true, &type, path));
    if (strcmp(type, "LORA"))
        return gc_error_set(GC_ERR_FORMAT, "%s: peft_type is '%s', not LORA", path, type);
    /* PEFT's LoraConfig defaults for absent keys */
    GC_TRY(gc_json_get_int(j, "r", 8, false, &c->r, path));
    GC_TRY(gc_json_get_double(j, "lora_alpha", 8, false, &c->alpha, path));
    GC_TRY(gc_json_get_double(j, "lora_dropout", 0, false, &c->dropout, path));
    if (c->r <= 0) return gc_error_set(GC_ERR_FORMAT, "%s: r is %lld, not a positive rank", path, (long long)c->r);
    if (c->dropout < 0 || c->dropout >= 1)
        return gc_error_set(GC_ERR_FORMAT, "%s: lora_dropout %g is outside [0, 1)", path, c->dropout);
    GC_TRY(refuse_true(j, "use_dora", path, "DoRA"));
    GC_TRY(refuse_true(j, "use_rslora", path, "rank-stabilised scaling (alpha/sqrt(r))"));
    GC_TRY(refuse_true(j, "use_qalora", path, "QA-LoRA"));
    GC_TRY(refuse_true(j, "fan_in_fan_out", path, "a transposed (Conv1D) base weight"));
    GC_TRY(refuse_true(j, "lora_bias", path, "a bias on lora_B"));
    GC_TRY(gc_json_get_string(j, "bias", "none", false, &bias, path));
    if (strcmp(bias, "none"))
        return gc_error_set(GC_ERR_FORMAT, "%s: bias is '%s': only \"none\" is supported (no trained base biases)", path,
                            bias);
    static const char *const empty[] = {"rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform",
                                        "layer_replication", "target_parameters", "exclude_modules",
                                        "trainable_token_indices"};
    for (size_t i = 0; i < sizeof empty / sizeof *empty; i++)
        if (!json_empty(gc_json_member(j, empty[i])))
            return gc_error_set(GC_ERR_FORMAT, "%s: %s is set: not supported (gradcache adapts every layer alike)",
                                path, empty[i]);
    const cJSON *t = gc_json_member(j, "target_modules");
    if (!t) return gc_error_set(GC_ERR_FORMAT, "%s: target_modules is missing", path);
    if (cJSON_IsString(t))
        return gc_error_set(GC_ERR_FORMAT, "%s: target_modules is the regular expression '%s': only a list of module "
                            "names is supported", path, t->valuestring);
    if (!cJSON_IsArray(t))
        return gc_error_set(GC_ERR_FORMAT, "%s: target_modules: expected an array, got %s", path, gc_json_type_name(t));
    for (const cJSON *e = t->child; e; e = e->next) {
        if (!cJSON_IsString(e) || !*e->valuestring)
            return gc_error_set(GC_ERR_FORMAT, "%s: target_modules: expected module names, got %s", path,
                                gc_json_type_name(e));
        if (c->n_targets == (int)(sizeof c->targets / sizeof *c->targets))
            return gc_error_set(GC_ERR_FORMAT, "%s: target_modules: more than %d entries", path, c->n_targets);
        c->targets[c->n_targets++] = e->valuestring;
    }
    if (!c->n_targets) return gc_error_set(GC_ERR_FORMAT, "%s: target_modules is empty", path);
    return GC_OK;
}

gc_status gc_lora_config_load(const char *dir, gc_lora_options *o, char *targets, size_t n)
{
    cJSON *root = NULL;
    peft_cfg c;
    gc_status st = peft_cfg_read(dir, &root, &c);
    size_t k = 0;
    if (n) targets[0] = 0;
    for (int i = 0; st == GC_OK && i < c.n_targets; i++) {
        /* PEFT matches a target against the end of the module path; the model's sites are last components */
        const char *s = module_site(c.targets[i]);
        size_t len = strlen(s);
        if (k + len + 2 > n) st = gc_error_set(GC_ERR_INVALID, "%s: target_modules do not fit in %zu bytes", dir, n);
        else k += (size_t)snprintf(targets + k, n - k, "%s%s", k ? "," : "", s);
    }
    if (st == GC_OK) {
        o->r = (int)c.r;
        o->alpha = c.alpha;
        o->dropout = c.dropout;
        o->targets = targets;
    }
    cJSON_Delete(root);
    return st;
}

/* Python's repr of a float (shortest round-trip, always with a '.' or an exponent), as json.dumps writes it */
static cJSON *py_float(double x)
{
    char buf[40];
    for (int p = 15; p <= 17; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, x);
        if (strtod(buf, NULL) == x) break;
    }
    if (!strpbrk(buf, ".eni")) strcat(buf, ".0");
    return cJSON_CreateRaw(buf);
}

/* PEFT names adapters by the module path in memory: "base_model.model." + the HF name,
 * except that transformers 5 nests DINOv3ViTModel's layers under one more "model."
 * (its checkpoint keys are remapped on save/load, PEFT's are not). */
static const char *peft_prefix(gc_params *ps)
{
    if (gc_params_find(ps, "embeddings.cls_token") && gc_params_find(ps, "embeddings.patch_embeddings.weight"))
        return GC_LORA_PEFT_PREFIX "model.";
    return GC_LORA_PEFT_PREFIX;
}

/* auto_mapping, which PeftModel.save_pretrained writes when there is no task_type */
static void add_auto_mapping(cJSON *root, gc_params *ps)
{
    const char *cls = NULL, *lib = NULL;
    if (gc_params_find(ps, "logit_scale") && gc_params_find(ps, "visual_projection.weight")) {
        cls = "CLIPModel";
        lib = "transformers.models.clip.modeling_clip";
    } else if (gc_params_find(ps, "embeddings.cls_token") && gc_params_find(ps, "embeddings.patch_embeddings.weight")) {
        cls = "DINOv3ViTModel";
        lib = "transformers.models.dinov3_vit.modeling_dinov3_vit";
    }
    if (!cls) return;
    cJSON *m = cJSON_AddObjectToObject(root, "auto_mapping");
    if (!m) return;
    cJSON_AddStringToObject(m, "base_model_class", cls);
    cJSON_AddStringToObject(m, "parent_library", lib);
}

/* Every key peft 0.21.0 writes for a LoraConfig without task_type, in its (sorted) order. */
static cJSON *peft_cfg_json(gc_params *ps, const gc_lora_options *o, int64_t r, const char *base, const char **sites,
                            int n_sites)
{
    cJSON *j = cJSON_CreateObject();
    if (!j) return NULL;
    double alpha = gc_lora_scale(o) * (double)r;
    cJSON_AddNullToObject(j, "alora_invocation_tokens");
    cJSON_AddObjectToObject(j, "alpha_pattern");
    cJSON_AddNullToObject(j, "arrow_config");
    add_auto_mapping(j, ps);
    if (base) cJSON_AddStringToObject(j, "base_model_name_or_path", base);
    else cJSON_AddNullToObject(j, "base_model_name_or_path");
    cJSON_AddStringToObject(j, "bias", "none");
    cJSON_AddNullToObject(j, "corda_config");
    cJSON_AddFalseToObject(j, "ensure_weight_tying");
    cJSON_AddNullToObject(j, "eva_config");
    cJSON_AddNullToObject(j, "exclude_modules");
    cJSON_AddFalseToObject(j, "fan_in_fan_out");
    cJSON_AddTrueToObject(j, "inference_mode"); /* PEFT sets it while saving */
    cJSON_AddTrueToObject(j, "init_lora_weights");
    cJSON_AddNullToObject(j, "kasa_config");
    cJSON_AddNullToObject(j, "layer_replication");
    cJSON_AddNullToObject(j, "layers_pattern");
    cJSON_AddNullToObject(j, "layers_to_transform");
    cJSON_AddObjectToObject(j, "loftq_config");
    /* LoraConfig.lora_alpha is an int; keep a fractional alpha exact rather than truncate it */
    if (alpha == floor(alpha) && fabs(alpha) < 1e15) cJSON_AddItemToObject(j, "lora_alpha", cJSON_CreateNumber(alpha));
    else cJSON_AddItemToObject(j, "lora_alpha", py_float(alpha));
    cJSON_AddFalseToObject(j, "lora_bias");
    cJSON_AddItemToObject(j, "lora_dropout", py_float(o->dropout));
    cJSON_AddNullToObject(j, "lora_ga_config");
    cJSON_AddNullToObject(j, "megatron_config");
    cJSON_AddStringToObject(j, "megatron_core", "megatron.core");
    cJSON_AddNullToObject(j, "modules_to_save");
    cJSON_AddNullToObject(j, "monteclora_config");
    cJSON_AddStringToObject(j, "peft_type", "LORA");
    cJSON_AddStringToObject(j, "peft_version", PEFT_VERSION);
    cJSON_AddNumberToObject(j, "qalora_group_size", 16);
    cJSON_AddNumberToObject(j, "r", (double)r);
    cJSON_AddObjectToObject(j, "rank_pattern");
    cJSON_AddNullToObject(j, "revision");
    cJSON_AddItemToObject(j, "target_modules", cJSON_CreateStringArray(sites, n_sites));
    cJSON_AddNullToObject(j, "target_parameters");
    cJSON_AddNullToObject(j, "task_type");
    cJSON_AddNullToObject(j, "trainable_token_indices");
    cJSON_AddNullToObject(j, "use_bdlora");
    cJSON_AddFalseToObject(j, "use_dora");
    cJSON_AddFalseToObject(j, "use_qalora");
    cJSON_AddFalseToObject(j, "use_rslora");
    cJSON_AddNullToObject(j, "velora_config");
    return j;
}

/* ---------------------------------------------------------------- save */

gc_status gc_lora_save_peft(gc_params *ps, const gc_lora_options *o, const char *base_model_name_or_path,
                            const char *dir)
{
    lora_mod *m;
    int n;
    int64_t r;
    GC_TRY(lora_mods(ps, &m, &n, &r));
    if (!n) {
        free(m);
        return gc_error_set(GC_ERR_INVALID, "save LoRA adapter to %s: the model has no LoRA adapters (lora r is 0)", dir);
    }
    if (o->r != r) {
        free(m);
        return gc_error_set(GC_ERR_INVALID, "save LoRA adapter to %s: options give r %d but the adapters have rank %lld",
                            dir, o->r, (long long)r);
    }
    if (mkdir(dir, 0755) != 0) {
        struct stat sb;
        if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
            free(m);
            return gc_error_set(GC_ERR_IO, "save LoRA adapter: cannot create directory %s", dir);
        }
    }
    int nt = 2 * n;
    char **names = calloc((size_t)nt, sizeof *names);
    gc_tensor **ts = calloc((size_t)nt, sizeof *ts);
    const char **sites = calloc((size_t)n, sizeof *sites);
    gc_status st = names && ts && sites ? GC_OK : gc_error_set(GC_ERR_OOM, "out of host memory");
    for (int i = 0; i < n && st == GC_OK; i++) {
        gc_param *p[2] = {m[i].a, m[i].b};
        for (int j = 0; j < 2 && st == GC_OK; j++) {
            size_t len = strlen(peft_prefix(ps)) + strlen(p[j]->name) + 1;
            names[2 * i + j] = malloc(len);
            if (!names[2 * i + j]) { st = gc_error_set(GC_ERR_OOM, "out of host memory"); break; }
            snprintf(names[2 * i + j], len, "%s%s", peft_prefix(ps), p[j]->name);
            ts[2 * i + j] = gc_tensor_to(p[j]->master ? p[j]->master : p[j]->value, GC_CPU, GC_F32);
            if (!ts[2 * i + j]) st = GC_PENDING();
        }
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    if (st == GC_OK)
        st = gc_st_save(path, nt, (const char *const *)names, ts, 1, (const char *const[]){"format", "pt"});
    if (st == GC_OK) {
        int ns = mod_sites(m, n, sites);
        qsort(sites, (size_t)ns, sizeof *sites, cmp_str);
        cJSON *j = peft_cfg_json(ps, o, r, base_model_name_or_path, sites, ns);
        snprintf(path, sizeof path, "%s/adapter_config.json", dir);
        st = j ? gc_json_save_file(path, j) : gc_error_set(GC_ERR_OOM, "out of host memory");
        cJSON_Delete(j);
    }
    for (int i = 0; names && ts && i < nt; i++) {
        free(names[i]);
        gc_tensor_release(ts[i]);
    }
    free(names);
    free(ts);
    free(sites);
    free(m);
    return st;
}

/* ---------------------------------------------------------------- load */

/* Does PEFT's target `t` select `module`? (exact name, or a suffix at a '.' boundary) */
static bool target_matches(const char *t, const char *module)
{
    size_t a = strlen(module), b = strlen(t);
    if (a == b) return !strcmp(module, t);
    return a > b && module[a - b - 1] == '.' && !strcmp(module + a - b, t);
}

typedef struct notes {
    char msg[1200];
    size_t k;
    int bad;
} notes;

static void note(notes *n, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(notes *n, const char *fmt, ...)
{
    if (n->bad++ < 8 && n->k < sizeof n->msg) {
        if (n->bad > 1) n->k += (size_t)snprintf(n->msg + n->k, sizeof n->msg - n->k, "; ");
        va_list ap;
        va_start(ap, fmt);
        if (n->k < sizeof n->msg) n->k += (size_t)vsnprintf(n->msg + n->k, sizeof n->msg - n->k, fmt, ap);
        va_end(ap);
    }
}

static void entry_shape(const gc_st_entry *e, char *buf, size_t n)
{
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int j = 0; j < e->ndim && k < n; j++) k += (size_t)snprintf(buf + k, n - k, j ? ", %lld" : "%lld", (long long)e->shape[j]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

static bool is_lora_param(gc_params *ps, const char *name)
{
    return (has_suffix(name, ".lora_A.weight") || has_suffix(name, ".lora_B.weight")) && gc_params_find(ps, name);
}

gc_status gc_lora_load_peft(gc_params *ps, const gc_lora_options *o, const char *dir)
{
    lora_mod *m;
    int n;
    int64_t r;
    GC_TRY(lora_mods(ps, &m, &n, &r));
    if (!n) {
        free(m);
        return gc_error_set(GC_ERR_INVALID, "load LoRA adapter %s: the model has no LoRA adapters (lora r is 0)", dir);
    }
    cJSON *root = NULL;
    peft_cfg c;
    gc_st_file *f = NULL;
    char path[4096];
    gc_status st = peft_cfg_read(dir, &root, &c);
    if (st == GC_OK) {
        snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
        st = gc_st_open(path, &f);
    }
    notes nt = {.k = 0};
    if (st == GC_OK) {
        /* the config against the model */
        if (c.r != r) note(&nt, "adapter_config.json has r %lld but the model's adapters have rank %lld", (long long)c.r, (long long)r);
        double s_cfg = c.alpha / (double)c.r, s_model = gc_lora_scale(o);
        if (fabs(s_cfg - s_model) > 1e-12 * fabs(s_model))
            note(&nt, "adapter_config.json has lora_alpha %g (scale %g) but the model uses scale %g (alpha %g, r %d)",
                 c.alpha, s_cfg, s_model, o->alpha, o->r);
        for (int i = 0; i < c.n_targets; i++) {
            bool hit = false;
            for (int j = 0; j < n && !hit; j++) hit = target_matches(c.targets[i], m[j].module);
            if (!hit) note(&nt, "target_modules has %s, which the model does not adapt", c.targets[i]);
        }
        const char *seen[64];
        int n_seen = 0;
        for (int j = 0; j < n; j++) {
            bool hit = false;
            for (int i = 0; i < c.n_targets && !hit; i++) hit = target_matches(c.targets[i], m[j].module);
            const char *s = module_site(m[j].module);
            bool dup = false;
            for (int k = 0; k < n_seen && !dup; k++) dup = !strcmp(seen[k], s);
            if (!hit && !dup) {
                note(&nt, "the model adapts %s, which is not in target_modules", s);
                if (n_seen < 64) seen[n_seen++] = s;
            }
        }
        /* the tensors */
        for (int j = 0; j < n; j++) {
            gc_param *p[2] = {m[j].a, m[j].b};
            for (int q = 0; q < 2; q++) {
                char key[512], fs[GC_SHAPE_STR_LEN], ms[GC_SHAPE_STR_LEN];
                snprintf(key, sizeof key, "%s%s", peft_prefix(ps), p[q]->name);
                const gc_st_entry *e = gc_st_find(f, key);
                gc_tensor *ref = p[q]->master ? p[q]->master : p[q]->value;
                if (!e) { note(&nt, "missing %s", key); continue; }
                bool same = e->ndim == ref->ndim;
                for (int d = 0; same && d < e->ndim; d++) same = e->shape[d] == ref->shape[d];
                if (!same) {
                    entry_shape(e, fs, sizeof fs);
                    note(&nt, "%s is %s in the adapter but %s in the model", key, fs, gc_shape_str(ref, ms, sizeof ms));
                } else if (e->dtype == GC_DTYPE_COUNT || !gc_dtype_is_float(e->dtype)) {
                    note(&nt, "%s has dtype %s, not a float", key, e->st_dtype);
                }
            }
        }
        size_t pl = strlen(peft_prefix(ps));
        for (int i = 0; i < gc_st_count(f); i++) {
            const char *name = gc_st_entry_at(f, i)->name;
            if (strncmp(name, peft_prefix(ps), pl) || !is_lora_param(ps, name + pl)) note(&nt, "unexpected %s", name);
        }
        if (nt.bad)
            st = gc_error_set(GC_ERR_FORMAT, "%s: LoRA adapter does not match the model (%d problems): %s%s", dir, nt.bad,
                              nt.msg, nt.bad > 8 ? "; ..." : "");
    }
    /* everything fits: copy */
    for (int j = 0; st == GC_OK && j < n; j++) {
        gc_param *p[2] = {m[j].a, m[j].b};
        for (int q = 0; q < 2 && st == GC_OK; q++) {
            char key[512];
            snprintf(key, sizeof key, "%s%s", peft_prefix(ps), p[q]->name);
            gc_tensor *h = gc_st_tensor(f, key);
            if (!h) { st = GC_PENDING(); break; }
            st = gc_tensor_copy_into(p[q]->value, h, false);
            if (st == GC_OK && p[q]->master && p[q]->master != p[q]->value) st = gc_tensor_copy_into(p[q]->master, h, false);
            gc_tensor_release(h);
        }
    }
    if (f) gc_st_close(f);
    cJSON_Delete(root);
    free(m);
    return st;
}

/* ---------------------------------------------------------------- merge */

/* an f32 tensor with p's value on p's device: the master, or a copy of the value (pool-owned) */
static gc_tensor *f32_of(gc_param *p)
{
    if (p->master) return p->master;
    return gc_pool_add(gc_tensor_to(p->value, p->value->device, GC_F32));
}

static gc_status merge_one(const lora_mod *mod, double scale)
{
    gc_param *w = mod->w, *a = mod->a, *b = mod->b;
    gc_tensor *wref = w->master ? w->master : w->value;
    if (wref->ndim != 2 || wref->shape[0] != b->value->shape[0] || wref->shape[1] != a->value->shape[1]) {
        char s[GC_SHAPE_STR_LEN];
        return gc_error_set(GC_ERR_SHAPE, "merge LoRA: %s is %s, which lora_B [%lld, r] lora_A [r, %lld] do not fit",
                            w->name, gc_shape_str(wref, s, sizeof s), (long long)b->value->shape[0],
                            (long long)a->value->shape[1]);
    }
    gc_pool *pool = gc_pool_push();
    /* delta [out, in] = scale * B [out, r] @ A [r, in], in f32 */
    gc_tensor *d = gc_scale(gc_matmul(f32_of(b), f32_of(a), false, false), scale);
    gc_status st = d ? GC_OK : GC_PENDING();
    if (st == GC_OK && w->master) {
        st = gc_tensor_copy_into(w->master, d, true);
        if (st == GC_OK && w->master != w->value) st = gc_tensor_copy_into(w->value, w->master, false);
    } else if (st == GC_OK) { /* frozen in bf16: no master; add in f32 and round once */
        gc_tensor *w32 = f32_of(w);
        st = w32 ? gc_tensor_copy_into(w32, d, true) : GC_PENDING();
        if (st == GC_OK) st = gc_tensor_copy_into(w->value, w32, false);
    }
    /* B = 0: the merged adapter adds nothing more */
    if (st == GC_OK) st = gc_tensor_fill_zero(b->value);
    if (st == GC_OK && b->master && b->master != b->value) st = gc_tensor_fill_zero(b->master);
    gc_pool_pop(pool);
    return st;
}

gc_status gc_lora_merge(gc_params *ps, const gc_lora_options *o, const char *prefix_filter)
{
    lora_mod *m;
    int n;
    int64_t r;
    GC_TRY(lora_mods(ps, &m, &n, &r));
    if (o->r != r && n) {
        free(m);
        return gc_error_set(GC_ERR_INVALID, "merge LoRA: options give r %d but the adapters have rank %lld", o->r,
                            (long long)r);
    }
    size_t pl = prefix_filter ? strlen(prefix_filter) : 0;
    double scale = gc_lora_scale(o);
    bool was = gc_grad_set_enabled(false); /* a weight update, not part of any graph */
    gc_status st = GC_OK;
    int merged = 0;
    for (int i = 0; i < n && st == GC_OK; i++) {
        if (pl && strncmp(m[i].module, prefix_filter, pl)) continue;
        if (!m[i].w) st = gc_error_set(GC_ERR_STATE, "merge LoRA: %s has adapters but no %s.weight", m[i].module, m[i].module);
        else st = merge_one(&m[i], scale);
        merged++;
    }
    gc_grad_set_enabled(was);
    free(m);
    if (st == GC_OK && !merged)
        st = gc_error_set(GC_ERR_INVALID, "merge LoRA: no adapters%s%s%s", pl ? " under '" : " in the model",
                          pl ? prefix_filter : "", pl ? "'" : "");
    return st;
}
