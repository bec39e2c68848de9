/* JSON helpers over cJSON for HF config files (config.json, *.index.json).
 *
 * Every error names the file and the key, e.g.
 *   "config.json: vision_config.hidden_size: expected an integer, got a string".
 * `ctx` says where `obj` is: the file path for the root ("config.json"), or
 * "file: object" for a nested one ("config.json: vision_config"); gc_json_path
 * builds the latter. A key holding null counts as absent (HF writes null for
 * "use the default"). When a key is repeated the last one wins, as in Python. */
#ifndef GC_JSON_H
#define GC_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "../runtime/gc_error.h"

/* Parses a whole file whose top level must be an object; caller frees with cJSON_Delete.
 * Errors: GC_ERR_IO (cannot read), GC_ERR_FORMAT (naming line and column). */
gc_status gc_json_load_file(const char *path, cJSON **out);
/* Writes `root` formatted, atomically (path.tmp, fsync, rename). */
gc_status gc_json_save_file(const char *path, const cJSON *root);

/* Typed getters: a missing key gives `dflt`, or an error if `required`; a value of
 * the wrong type is always an error (GC_ERR_FORMAT). `obj` may be NULL (no keys). */
gc_status gc_json_get_int(const cJSON *obj, const char *key, int64_t dflt, bool required, int64_t *out, const char *ctx);
gc_status gc_json_get_double(const cJSON *obj, const char *key, double dflt, bool required, double *out, const char *ctx);
gc_status gc_json_get_bool(const cJSON *obj, const char *key, bool dflt, bool required, bool *out, const char *ctx);
/* *out points into the cJSON tree (valid until cJSON_Delete) or is dflt. */
gc_status gc_json_get_string(const cJSON *obj, const char *key, const char *dflt, bool required, const char **out,
                             const char *ctx);
/* *out is NULL when the key is absent and not required. */
gc_status gc_json_get_object(const cJSON *obj, const char *key, bool required, const cJSON **out, const char *ctx);

/* The member `key` of obj (last one if repeated), or NULL; null values count as absent. */
const cJSON *gc_json_member(const cJSON *obj, const char *key);
/* "a string", "an integer", "a number", "a boolean", "null", "an array", "an object" */
const char *gc_json_type_name(const cJSON *v);
/* Where a key lives, for messages and as the ctx of a nested object:
 * ("config.json", "vision_config") -> "config.json: vision_config";
 * ("config.json: vision_config", "hidden_size") -> "config.json: vision_config.hidden_size". */
char *gc_json_path(char *buf, size_t n, const char *ctx, const char *key);

#endif
