/* safetensors checkpoints: reading (mmap'd, validated in full on open), writing
 * (atomic, laid out like the reference writer), and sharded model directories.
 *
 * Format: u64 little-endian N, an N-byte JSON header {name: {dtype, shape,
 * data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the byte buffer;
 * offsets are relative to the buffer. Errors are one line naming the file and the
 * problem: GC_ERR_IO when the file cannot be read or written, GC_ERR_FORMAT when its
 * content is malformed, GC_ERR_DTYPE for a dtype gradcache cannot use. */
#ifndef GC_SAFETENSORS_H
#define GC_SAFETENSORS_H

#include <stdint.h>

#include "../runtime/gc_tensor.h"

typedef struct gc_st_entry {
    char *name;
    /* GC_DTYPE_COUNT when the file's dtype has no gc_dtype (BOOL, U8, F8_E4M3, ...):
     * such entries can be listed but not read. */
    gc_dtype dtype;
    const char *st_dtype; /* the file's dtype string: "BF16", "U8", ... */
    size_t elem_size;     /* bytes per element of st_dtype */
    int ndim;             /* 0 for a scalar */
    int64_t shape[GC_MAX_DIMS];
    uint64_t begin, end;  /* byte range in the buffer */
} gc_st_entry;

/* ---- one file ---- */
typedef struct gc_st_file gc_st_file;

gc_status gc_st_open(const char *path, gc_st_file **out);
/* Drops the caller's reference; tensors from gc_st_tensor keep the mapping alive. */
void gc_st_close(gc_st_file *f);
const char *gc_st_path(const gc_st_file *f);
/* Entries in header order. */
int gc_st_count(const gc_st_file *f);
const gc_st_entry *gc_st_entry_at(const gc_st_file *f, int i);
const gc_st_entry *gc_st_find(const gc_st_file *f, const char *name); /* NULL if absent (no error) */
/* A value of the header's __metadata__ map, or NULL. */
const char *gc_st_metadata(const gc_st_file *f, const char *key);

/* A CPU tensor over the mapped bytes (no copy; caller owns one reference). The
 * mapping is read-only: do not write to it. If the data is not aligned to its element
 * size in memory it is copied instead. NULL + error naming file and tensor if absent
 * or of a dtype with no gc_dtype. */
gc_tensor *gc_st_tensor(gc_st_file *f, const char *name);
/* A new tensor of dtype dt on dev (caller owns), converting float to float or integer
 * to integer (BF16/F16/F32/F64, I32/I64); float <-> integer is refused, and an I64
 * value outside the I32 range is an error. */
gc_tensor *gc_st_load(gc_st_file *f, const char *name, gc_dtype dt, gc_device dev);

/* Writes n tensors (any device, dtype, strides; stored contiguous little-endian)
 * under `names`, plus n_meta key/value string pairs as __metadata__ (meta_kv holds
 * key0, value0, key1, ...). Laid out like the reference writer: tensors sorted by
 * descending dtype then name, header padded with spaces to a multiple of 8, so every
 * tensor is aligned to its element size. Atomic: writes path.tmp, fsyncs, renames. */
gc_status gc_st_save(const char *path, int n, const char *const *names, gc_tensor *const *tensors, int n_meta,
                     const char *const *meta_kv);

/* ---- a model directory: model.safetensors, else model.safetensors.index.json whose
 * weight_map maps each name to its shard file. `dir` may also name a .safetensors
 * file or an index .json directly. Every shard is opened and validated up front. ---- */
typedef struct gc_st_dir gc_st_dir;

gc_status gc_st_dir_open(const char *dir, gc_st_dir **out);
void gc_st_dir_close(gc_st_dir *d);
/* Tensor names (header order for one file, weight_map order for shards); valid until close. */
int gc_st_dir_count(const gc_st_dir *d);
const char *gc_st_dir_name_at(const gc_st_dir *d, int i);
/* The file holding `name` and its entry (both owned by d). A name that is absent
 * gives GC_OK with *file and *e NULL, so callers can list every missing name. */
gc_status gc_st_dir_lookup(gc_st_dir *d, const char *name, gc_st_file **file, const gc_st_entry **e);

#endif
