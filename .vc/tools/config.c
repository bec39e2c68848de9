/* Training configuration: one table of keys drives parsing, overrides and saving. */
#include "gc_config.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <yaml.h>

typedef enum { K_BOOL, K_INT, K_FLOAT, K_STR, K_LIST } key_type;

typedef struct key_def {
    const char *name;
    key_type type;
    size_t offset, size;   /* size: buffer size for strings */
    double lo, hi;         /* numeric range (inclusive) */
    const char *choices;   /* for strings: "a|b" */
} key_def;

#define F(field) offsetof(gc_train_config, field)
#define S(field) sizeof(((gc_train_config *)0)->field)
static const key_def KEYS[] = {
    {"model", K_STR, F(model), S(model), 0, 0, NULL},
    {"tokenizer", K_STR, F(tokenizer), S(tokenizer), 0, 0, NULL},
    {"use_gradient_cache", K_BOOL, F(use_gradient_cache), 0, 0, 0, NULL},
    {"gradient_cache_chunk_size", K_INT, F(gradient_cache_chunk_size), 0, 1, 1e9, NULL},
    {"batch_size", K_INT, F(batch_size), 0, 2, 1e9, NULL},
    {"epochs", K_INT, F(epochs), 0, 1, 1e6, NULL},
    {"max_steps", K_INT, F(max_steps), 0, 0, 1e12, NULL},
    {"gradient_checkpointing", K_BOOL, F(gradient_checkpointing), 0, 0, 0, NULL},
    {"recompute", K_BOOL, F(recompute), 0, 0, 0, NULL},
    {"use_lora", K_BOOL, F(use_lora), 0, 0, 0, NULL},
    {"lora_r", K_INT, F(lora_r), 0, 1, 4096, NULL},
    {"lora_alpha", K_FLOAT, F(lora_alpha), 0, 1e-9, 1e9, NULL},
    {"lora_dropout", K_FLOAT, F(lora_dropout), 0, 0, 0.999, NULL},
    {"lora_target_modules", K_LIST, F(lora_target_modules), S(lora_target_modules), 0, 0, NULL},
    {"mixed_precision", K_STR, F(mixed_precision), S(mixed_precision), 0, 0, "bf16|f32"},
    {"learning_rate", K_FLOAT, F(learning_rate), 0, 0, 10, NULL},
    {"weight_decay", K_FLOAT, F(weight_decay), 0, 0, 10, NULL},
    {"max_grad_norm", K_FLOAT, F(max_grad_norm), 0, 0, 1e9, NULL},
    {"temperature", K_FLOAT, F(temperature), 0, 1e-6, 100, NULL},
    {"warmup_steps", K_INT, F(warmup_steps), 0, 0, 1e12, NULL},
    {"seed", K_INT, F(seed), 0, 0, 9.007199254740992e15, NULL},
    {"device", K_STR, F(device), S(device), 0, 0, "cpu|cuda"},
    {"train_data", K_STR, F(train_data), S(train_data), 0, 0, NULL},
    {"val_data", K_STR, F(val_data), S(val_data), 0, 0, NULL},
    {"data_format", K_STR, F(data_format), S(data_format), 0, 0, "csv|webdataset"},
    {"csv_separator", K_STR, F(csv_separator), S(csv_separator), 0, 0, NULL},
    {"csv_img_key", K_STR, F(csv_img_key), S(csv_img_key), 0, 0, NULL},
    {"csv_caption_key", K_STR, F(csv_caption_key), S(csv_caption_key), 0, 0, NULL},
    {"workers", K_INT, F(workers), 0, 0, 256, NULL},
    {"synthetic_train", K_INT, F(synthetic_train), 0, 0, 1e8, NULL},
    {"synthetic_val", K_INT, F(synthetic_val), 0, 0, 1e8, NULL},
    {"pair_format", K_STR, F(pair_format), S(pair_format), 0, 0, "pairs|labels"},
    {"csv_img_b_key", K_STR, F(csv_img_b_key), S(csv_img_b_key), 0, 0, NULL},
    {"csv_label_key", K_STR, F(csv_label_key), S(csv_label_key), 0, 0, NULL},
    {"pool", K_STR, F(pool), S(pool), 0, 0, "cls|mean"},
    {"augment", K_BOOL, F(augment), 0, 0, 0, NULL},
    {"output_dir", K_STR, F(output_dir), S(output_dir), 0, 0, NULL},
    {"gemm_plan", K_STR, F(gemm_plan), S(gemm_plan), 0, 0, NULL},
    {"eval_every", K_INT, F(eval_every), 0, 0, 1e12, NULL},
    {"save_every", K_INT, F(save_every), 0, 0, 1e12, NULL},
    {"log_every", K_INT, F(log_every), 0, 1, 1e12, NULL},
};
#undef F
#undef S
#define NKEYS (sizeof KEYS / sizeof KEYS[0])
_Static_assert(NKEYS <= 64, "gc_train_config_load marks the keys seen in a 64-bit mask");
_Static_assert(NKEYS <= 64, "gc_train_config.set_mask has one bit per key");

bool gc_train_config_was_set(const gc_train_config *c, const char *key)
{
    for (size_t i = 0; i < NKEYS; i++)
        if (!strcmp(KEYS[i].name, key)) return (c->set_mask >> i) & 1;
    return false;
}

void gc_train_config_warn_unused(const gc_train_config *c, const char *const *keys, const char *trainer, const char *where)
{
    for (; *keys; keys++)
        if (gc_train_config_was_set(c, *keys))
            fprintf(stderr, "gcache: warning: %s: '%s' is not used by the %s trainer (ignored)\n", where, *keys, trainer);
}

void gc_train_config_defaults(gc_train_config *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->model, sizeof c->model, "clip-tiny");
    c->use_gradient_cache = true;
    c->gradient_cache_chunk_size = 32;
    c->batch_size = 128;
    c->epochs = 1;
    c->lora_r = 16;
    c->recompute = true;
    c->lora_alpha = 32;
    c->lora_dropout = 0.0;
    snprintf(c->lora_target_modules, sizeof c->lora_target_modules, "q_proj,k_proj,v_proj,out_proj");
    snprintf(c->mixed_precision, sizeof c->mixed_precision, "f32");
    c->learning_rate = 5e-4;
    c->weight_decay = 0.1;
    c->max_grad_norm = 1.0;
    c->temperature = 0.07;
    c->warmup_steps = 10;
    c->seed = 0;
    snprintf(c->device, sizeof c->device, "cpu");
    snprintf(c->data_format, sizeof c->data_format, "csv");
    snprintf(c->csv_separator, sizeof c->csv_separator, "\t");
    snprintf(c->csv_img_key, sizeof c->csv_img_key, "filepath");
    snprintf(c->csv_caption_key, sizeof c->csv_caption_key, "title");
    c->workers = 2;
    snprintf(c->pair_format, sizeof c->pair_format, "pairs");
    snprintf(c->csv_img_b_key, sizeof c->csv_img_b_key, "filepath_b");
    snprintf(c->csv_label_key, sizeof c->csv_label_key, "label");
    snprintf(c->pool, sizeof c->pool, "cls");
    c->augment = false;
    snprintf(c->output_dir, sizeof c->output_dir, "runs/latest");
    c->eval_every = 0;
    c->save_every = 0;
    c->log_every = 10;
}

static const key_def *find_key(const char *name)
{
    for (size_t i = 0; i < NKEYS; i++)
        if (!strcmp(KEYS[i].name, name)) return &KEYS[i];
    return NULL;
}

/* Sets one key from its text value. `where` = "file:line" for messages. */
static gc_status set_value(gc_train_config *c, const key_def *k, const char *v, const char *where)
{
    char *base = (char *)c + k->offset;
    c->set_mask |= 1ull << (k - KEYS);
    char *end = NULL;
    switch (k->type) {
    case K_BOOL:
        if (!strcmp(v, "true") || !strcmp(v, "True") || !strcmp(v, "yes") || !strcmp(v, "1")) *(bool *)base = true;
        else if (!strcmp(v, "false") || !strcmp(v, "False") || !strcmp(v, "no") || !strcmp(v, "0")) *(bool *)base = false;
        else return gc_error_set(GC_ERR_INVALID, "%s: %s: expected true or false, got '%s'", where, k->name, v);
        return GC_OK;
    case K_INT: {
        errno = 0;
        long long x = strtoll(v, &end, 10);
        if (!*v || *end || errno) return gc_error_set(GC_ERR_INVALID, "%s: %s: expected an integer, got '%s'", where, k->name, v);
        if ((double)x < k->lo || (double)x > k->hi)
            return gc_error_set(GC_ERR_INVALID, "%s: %s: %lld is outside [%.0f, %.0f]", where, k->name, x, k->lo, k->hi);
        if (!strcmp(k->name, "seed")) *(uint64_t *)base = (uint64_t)x;
        else *(int64_t *)base = x;
        return GC_OK;
    }
    case K_FLOAT: {
        errno = 0;
        double x = strtod(v, &end);
        if (!*v || *end || errno || !isfinite(x))
            return gc_error_set(GC_ERR_INVALID, "%s: %s: expected a number, got '%s'", where, k->name, v);
        if (x < k->lo || x > k->hi)
            return gc_error_set(GC_ERR_INVALID, "%s: %s: %g is outside [%g, %g]", where, k->name, x, k->lo, k->hi);
        *(double *)base = x;
        return GC_OK;
    }
    case K_STR:
    case K_LIST:
        if (strlen(v) >= k->size) return gc_error_set(GC_ERR_INVALID, "%s: %s: value longer than %zu characters", where, k->name, k->size - 1);
        if (k->choices) {
            bool ok = false;
            size_t n = strlen(v);
            for (const char *p = k->choices; *p && !ok;) {
                const char *e = strchr(p, '|');
                size_t len = e ? (size_t)(e - p) : strlen(p);
                ok = len == n && !strncmp(p, v, n);
                p = e ? e + 1 : p + len;
            }
            if (!ok) return gc_error_set(GC_ERR_INVALID, "%s: %s: '%s' is not one of %s", where, k->name, v, k->choices);
        }
        if (!strcmp(k->name, "csv_separator") && !strcmp(v, "\\t")) v = "\t";
        snprintf(base, k->size, "%s", v);
        return GC_OK;
    }
    return GC_OK;
}

gc_status gc_train_config_validate(const gc_train_config *c, const char *where)
{
    if (c->use_gradient_cache && c->gradient_cache_chunk_size > c->batch_size)
        return gc_error_set(GC_ERR_INVALID, "%s: gradient_cache_chunk_size %lld is larger than batch_size %lld", where,
                            (long long)c->gradient_cache_chunk_size, (long long)c->batch_size);
    if (!*c->model) return gc_error_set(GC_ERR_INVALID, "%s: model is empty", where);
    if (!*c->train_data) return gc_error_set(GC_ERR_INVALID, "%s: train_data is required", where);
    if (!*c->output_dir) return gc_error_set(GC_ERR_INVALID, "%s: output_dir is required", where);
    if (!strcmp(c->mixed_precision, "bf16") && strcmp(c->device, "cuda"))
        return gc_error_set(GC_ERR_INVALID, "%s: mixed_precision bf16 needs device cuda (the CPU computes in f32)", where);
    if (strlen(c->csv_separator) != 1)
        return gc_error_set(GC_ERR_INVALID, "%s: csv_separator must be one character", where);
    return GC_OK;
}

gc_status gc_train_config_set(gc_train_config *c, const char *kv)
{
    const char *eq = strchr(kv, '=');
    if (!eq || eq == kv) return gc_error_set(GC_ERR_INVALID, "override '%s': expected key=value", kv);
    char key[128];
    size_t n = (size_t)(eq - kv);
    if (n >= sizeof key) return gc_error_set(GC_ERR_INVALID, "override '%s': key too long", kv);
    memcpy(key, kv, n);
    key[n] = 0;
    const key_def *k = find_key(key);
    if (!k) return gc_error_set(GC_ERR_INVALID, "command line: unknown key '%s'", key);
    return set_value(c, k, eq + 1, "command line");
}

static const char *node_type_name(const yaml_node_t *n)
{
    return n->type == YAML_MAPPING_NODE ? "a mapping" : n->type == YAML_SEQUENCE_NODE ? "a list" : "a scalar";
}

/* A config is a few flat keys: anything nested deeper, or bigger, is not one. libyaml's
 * loader takes time quadratic in the nesting depth (and in the number of anchors), so
 * both are bounded first. */
#define MAX_DEPTH 64
#define MAX_NODES 10000
#define MAX_BYTES (16 << 20)

/* The whole file, so the two passes below need no seekable input; NULL after an error. */
static char *read_config(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) { gc_error_set(GC_ERR_IO, "%s: cannot open: %s", path, strerror(errno)); return NULL; }
    struct stat sb;
    if (fstat(fileno(f), &sb) == 0 && S_ISDIR(sb.st_mode)) {
        fclose(f);
        gc_error_set(GC_ERR_IO, "%s: is a directory, not a YAML config file", path);
        return NULL;
    }
    char *buf = malloc(MAX_BYTES + 1);
    if (!buf) { fclose(f); gc_error_set(GC_ERR_OOM, "%s: out of host memory", path); return NULL; }
    size_t n = fread(buf, 1, MAX_BYTES + 1, f);
    int err = ferror(f) ? errno : 0;
    fclose(f);
    if (err) { free(buf); gc_error_set(GC_ERR_IO, "%s: cannot read: %s", path, strerror(err)); return NULL; }
    if (n > MAX_BYTES) { free(buf); gc_error_set(GC_ERR_FORMAT, "%s: larger than %d MiB: not a config file", path, MAX_BYTES >> 20); return NULL; }
    *len = n;
    return buf;
}

/* First pass, on events (linear time): one document, nested at most MAX_DEPTH deep, at
 * most MAX_NODES values, no YAML syntax errors; then yaml_parser_load builds the tree. */
static gc_status check_shape(const char *path, const char *buf, size_t len)
{
    yaml_parser_t parser;
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_string(&parser, (const unsigned char *)buf, len);
    gc_status st = GC_OK;
    int depth = 0, docs = 0, nodes = 0;
    for (bool done = false; !done && st == GC_OK;) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&parser, &ev)) {
            st = gc_error_set(GC_ERR_FORMAT, "%s:%zu: YAML error: %s", path, parser.problem_mark.line + 1,
                              parser.problem ? parser.problem : "malformed");
            break;
        }
        size_t line = ev.start_mark.line + 1;
        bool node = ev.type == YAML_SCALAR_EVENT || ev.type == YAML_ALIAS_EVENT || ev.type == YAML_SEQUENCE_START_EVENT ||
                    ev.type == YAML_MAPPING_START_EVENT;
        if (node && ++nodes > MAX_NODES)
            st = gc_error_set(GC_ERR_FORMAT, "%s:%zu: more than %d values: not a config file", path, line, MAX_NODES);
        switch (ev.type) {
        case YAML_DOCUMENT_START_EVENT:
            if (st == GC_OK && ++docs > 1)
                st = gc_error_set(GC_ERR_FORMAT, "%s:%zu: a second YAML document ('---'): a config is one document", path, line);
            break;
        case YAML_SEQUENCE_START_EVENT:
        case YAML_MAPPING_START_EVENT:
            if (st == GC_OK && ++depth > MAX_DEPTH) st = gc_error_set(GC_ERR_FORMAT, "%s:%zu: nested deeper than %d levels", path, line, MAX_DEPTH);
            break;
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT: depth--; break;
        case YAML_STREAM_END_EVENT: done = true; break;
        default: break;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&parser);
    return st;
}

gc_status gc_train_config_load(const char *path, gc_train_config *c)
{
    size_t len = 0;
    char *buf = read_config(path, &len);
    if (!buf) return GC_PENDING();
    gc_status st = check_shape(path, buf, len);
    if (st != GC_OK) { free(buf); return st; }
    yaml_parser_t parser;
    yaml_document_t doc;
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_string(&parser, (const unsigned char *)buf, len);
    if (!yaml_parser_load(&parser, &doc)) {
        st = gc_error_set(GC_ERR_FORMAT, "%s:%zu: YAML error: %s", path, parser.problem_mark.line + 1,
                          parser.problem ? parser.problem : "malformed");
        yaml_parser_delete(&parser);
        free(buf);
        return st;
    }
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root) st = gc_error_set(GC_ERR_FORMAT, "%s: the file is empty", path);
    else if (root->type != YAML_MAPPING_NODE)
        st = gc_error_set(GC_ERR_FORMAT, "%s:%zu: the top level must be a mapping of key: value", path, root->start_mark.line + 1);
    uint64_t seen = 0; /* keys given in this file: a second one is an error, not "the later wins" */
    size_t first_line[NKEYS];
    for (yaml_node_pair_t *p = root ? root->data.mapping.pairs.start : NULL; st == GC_OK && p < root->data.mapping.pairs.top; p++) {
        yaml_node_t *kn = yaml_document_get_node(&doc, p->key), *vn = yaml_document_get_node(&doc, p->value);
        char where[GC_CFG_STR + 32];
        snprintf(where, sizeof where, "%s:%zu", path, kn->start_mark.line + 1);
        if (kn->type != YAML_SCALAR_NODE) { st = gc_error_set(GC_ERR_FORMAT, "%s: keys must be plain names", where); break; }
        const char *key = (const char *)kn->data.scalar.value;
        const key_def *k = find_key(key);
        if (!k) { st = gc_error_set(GC_ERR_INVALID, "%s: unknown key '%s'", where, key); break; }
        size_t ki = (size_t)(k - KEYS);
        if ((seen >> ki) & 1) {
            st = gc_error_set(GC_ERR_INVALID, "%s: key '%s' given twice (first on line %zu)", where, key, first_line[ki]);
            break;
        }
        seen |= 1ull << ki;
        first_line[ki] = kn->start_mark.line + 1;
        if (k->type == K_LIST && vn->type == YAML_SEQUENCE_NODE) {
            char buf[GC_CFG_STR] = "";
            for (yaml_node_item_t *it = vn->data.sequence.items.start; it < vn->data.sequence.items.top; it++) {
                yaml_node_t *e = yaml_document_get_node(&doc, *it);
                if (e->type != YAML_SCALAR_NODE) { st = gc_error_set(GC_ERR_INVALID, "%s: %s: list items must be names", where, key); break; }
                if (strlen(buf) + e->data.scalar.length + 2 >= sizeof buf) { st = gc_error_set(GC_ERR_INVALID, "%s: %s: list too long", where, key); break; }
                if (*buf) strcat(buf, ",");
                strcat(buf, (const char *)e->data.scalar.value);
            }
            if (st == GC_OK) st = set_value(c, k, buf, where);
            continue;
        }
        if (vn->type != YAML_SCALAR_NODE) {
            st = gc_error_set(GC_ERR_INVALID, "%s: %s: expected a single value, got %s", where, key, node_type_name(vn));
            break;
        }
        st = set_value(c, k, (const char *)vn->data.scalar.value, where);
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    free(buf);
    return st;
}

char *gc_train_config_to_yaml(const gc_train_config *c)
{
    size_t cap = 8192, n = 0;
    char *out = malloc(cap);
    if (!out) return NULL;
    out[0] = 0;
    for (size_t i = 0; i < NKEYS; i++) {
        const key_def *k = &KEYS[i];
        const char *base = (const char *)c + k->offset;
        char val[GC_CFG_STR + 8];
        switch (k->type) {
        case K_BOOL: snprintf(val, sizeof val, "%s", *(const bool *)base ? "true" : "false"); break;
        case K_INT:
            if (!strcmp(k->name, "seed")) snprintf(val, sizeof val, "%llu", (unsigned long long)*(const uint64_t *)base);
            else snprintf(val, sizeof val, "%lld", (long long)*(const int64_t *)base);
            break;
        case K_FLOAT: snprintf(val, sizeof val, "%.17g", *(const double *)base); break;
        default: snprintf(val, sizeof val, "\"%s\"", !strcmp(k->name, "csv_separator") && base[0] == '\t' ? "\\t" : base); break;
        }
        n += (size_t)snprintf(out + n, cap - n, "%s: %s\n", k->name, val);
    }
    return out;
}
