/* Image-caption training data: PNG/JPEG decoding, CLIP/DINOv3 preprocessing that
 * reproduces PIL's resampling bit for bit, data sets (CSV/TSV manifests and
 * WebDataset tar shards), a threaded deterministic batch loader and a synthetic
 * shapes data set for the quickstart.
 *
 * Errors follow runtime/gc_error.h: a gc_status (or NULL) with one message naming the
 * file and, where it applies, the line or tar member. Nothing here prints. */
#ifndef GC_DATA_H
#define GC_DATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../runtime/gc_error.h"
#include "../runtime/gc_tensor.h"

/* ================================================================ images (image.c) */

/* 8-bit RGB, rows of 3*w bytes, no padding. */
typedef struct gc_image {
    int w, h;
    uint8_t *rgb;
} gc_image;

/* Largest accepted image (pixels): PIL's decompression-bomb error limit. */
#define GC_IMAGE_MAX_PIXELS ((int64_t)2 * 89478485)

gc_status gc_image_new(int w, int h, gc_image *out); /* uninitialised pixels */
void gc_image_free(gc_image *im);                    /* frees the pixels; safe on a zeroed image */

/* Decodes a PNG or JPEG (detected from the bytes) to RGB, as PIL's
 * Image.open(f).convert("RGB"): alpha is dropped (not composited), palettes and gray
 * are expanded, 16-bit samples keep their high byte, CMYK JPEGs are converted with
 * PIL's formula (Adobe inverted CMYK assumed, as PIL does). One deviation: 16-bit
 * gray PNGs keep the high byte, where PIL's I;16 -> RGB clips at 255 (a PIL quirk).
 * `name` (a path or tar member) is used in error messages; a corrupt or truncated
 * file gives GC_ERR_FORMAT naming it, never a crash or output on stderr. */
gc_status gc_image_decode(const void *data, size_t n, const char *name, gc_image *out);
gc_status gc_image_load(const char *path, gc_image *out); /* reads the file and decodes it */

/* PNG encoding (8-bit RGB, no time stamp: same pixels give the same bytes).
 * gc_image_encode_png returns a malloc'd buffer. */
gc_status gc_image_encode_png(const gc_image *im, uint8_t **data, size_t *n);
gc_status gc_image_save_png(const char *path, const gc_image *im);

typedef enum gc_resample {
    GC_RESAMPLE_BICUBIC, /* PIL Image.BICUBIC (a = -0.5), antialiased when shrinking */
    GC_RESAMPLE_BILINEAR, /* PIL Image.BILINEAR, antialiased when shrinking */
} gc_resample;

/* PIL's Image.resize((w, h), filter) on an RGB image, exactly (ImagingResample:
 * separable convolution, support scaled by the shrink factor, 22-bit fixed-point
 * coefficients, uint8 rounding between the passes, PIL's choice of pass order). */
gc_status gc_image_resize(const gc_image *in, int w, int h, gc_resample f, gc_image *out);
/* The (x, y, cw, ch) window of gc_image_resize(in, w, h): the same pixels, computed
 * without the rest of the resized image. */
gc_status gc_image_resize_crop(const gc_image *in, int w, int h, gc_resample f, int x, int y, int cw, int ch,
                               gc_image *out);
gc_status gc_image_crop(const gc_image *in, int x, int y, int w, int h, gc_image *out); /* inside the image */

typedef enum gc_resize_mode {
    GC_RESIZE_SHORTEST_CROP, /* CLIP: short side to S (torchvision Resize(S)), center crop S x S */
    GC_RESIZE_SQUARE,        /* DINOv3: resize to exactly S x S */
} gc_resize_mode;

/* What a sample goes through between decoding and the model. The image is RGB before
 * it is resized (as HF CLIPImageProcessor's convert_rgb); open_clip resizes in the
 * file's own mode and converts after the crop, which gives other pixels only for RGBA
 * (PIL resizes premultiplied), palette (PIL resizes "P" with NEAREST) and 16-bit gray. */
typedef struct gc_preprocess {
    int size;               /* S: output is [3, S, S] */
    gc_resize_mode mode;
    gc_resample resample;
    float mean[3], std[3];  /* per channel, applied to x/255 */
    bool hf_crop;           /* crop offset (len-S)/2 rounded down (HF CLIPImageProcessor);
                               default: round half to even (torchvision CenterCrop, open_clip) */
    /* training augmentations, all off when zero; drawn from (seed, epoch, sample) */
    float crop_scale[2];    /* RandomResizedCrop area fraction range, e.g. {0.9, 1} (open_clip);
                               replaces resize + center crop by crop + resize to S x S */
    float crop_ratio[2];    /* aspect ratio range; {0, 0} means {3/4, 4/3} */
    float hflip;            /* probability of a horizontal flip */
    float brightness, contrast, saturation; /* ColorJitter-like, fixed order (factor in [1-s, 1+s]) */
} gc_preprocess;

/* CLIP (open_clip / HF): bicubic, shortest side + center crop, the OpenAI mean/std. */
gc_preprocess gc_preprocess_clip(int size);
/* DINOv3: bilinear antialiased resize to S x S, the ImageNet mean/std. */
gc_preprocess gc_preprocess_dinov3(int size);

/* The torchvision sizes: Resize(S) of a w x h image gives the short side S and the long
 * side int(S * long / short); CenterCrop(S) starts at round((len - S) / 2) (half to
 * even; floor with hf_crop). */
void gc_resize_shortest_size(int w, int h, int s, int *new_w, int *new_h);
int gc_center_crop_offset(int len, int s, bool hf);

/* Geometry and colour: in -> S x S uint8 (resize/crop or the augmentations). The random
 * draws depend only on (seed, epoch, sample), so results do not depend on threads. */
gc_status gc_image_transform(const gc_image *in, const gc_preprocess *p, uint64_t seed, uint32_t epoch,
                             uint64_t sample, gc_image *out);
/* out[c][y][x] = (im/255 - mean[c]) / std[c] in f32, as torchvision ToTensor + Normalize. */
void gc_image_normalize(const gc_image *im, const gc_preprocess *p, float *out);
/* transform + normalize: out is [3, S, S] */
gc_status gc_image_preprocess(const gc_image *in, const gc_preprocess *p, uint64_t seed, uint32_t epoch,
                              uint64_t sample, float *out);

/* ================================================================ data sets (dataset.c) */

/* A list of (image, caption) samples. Read-only after opening: the image functions
 * may be called from several threads at once. */
typedef struct gc_dataset gc_dataset;

/* A CSV/TSV manifest with a header row (RFC 4180 quoting: quoted fields may hold the
 * separator, "" and newlines). img_key / caption_key name the columns (open_clip's
 * --csv-img-key / --csv-caption-key, e.g. "filepath" / "title"). Relative image paths
 * are resolved against the manifest's directory. Blank lines are skipped. */
gc_dataset *gc_dataset_open_csv(const char *path, char sep, const char *img_key, const char *caption_key);

/* WebDataset tar shards. `spec` is one or more patterns separated by "::", each
 * brace-expanded ("shards/{000..009}.tar", "{a,b}.tar"). Members are grouped into
 * samples by key (the name up to the first dot of its last path component), as
 * consecutive runs like webdataset's group_by_keys; the image is the first of
 * .jpg/.png/.jpeg (case-insensitive), the caption the .txt. Samples missing either
 * are skipped (counted by gc_dataset_incomplete). */
gc_dataset *gc_dataset_open_tar(const char *spec);
gc_dataset *gc_dataset_open_tar_list(const char *const *paths, int n);

int64_t gc_dataset_size(const gc_dataset *ds);
int64_t gc_dataset_incomplete(const gc_dataset *ds); /* tar samples skipped at opening */
const char *gc_dataset_caption(const gc_dataset *ds, int64_t i); /* owned by ds */
/* "dir/a.jpg" or "shard.tar:000012.jpg" */
const char *gc_dataset_image_name(const gc_dataset *ds, int64_t i, char *buf, size_t n);
/* Where sample i's caption is, for messages: "manifest.tsv:12" (its line) or
 * "shard.tar:000012.txt" (its member). */
const char *gc_dataset_caption_source(const gc_dataset *ds, int64_t i, char *buf, size_t n);
/* Every caption is valid UTF-8 as the tokenizer requires (no bad or truncated
 * sequences, overlong forms, surrogates, code points above U+10FFFF), else GC_ERR_FORMAT
 * naming the first bad caption's source and byte. One pass over the text at opening,
 * so that a bad caption stops a run before training rather than at its batch. */
gc_status gc_dataset_check_utf8(const gc_dataset *ds);
/* The encoded image bytes (malloc'd) or its decoded pixels. */
gc_status gc_dataset_image_bytes(const gc_dataset *ds, int64_t i, uint8_t **data, size_t *n);
gc_status gc_dataset_load_image(const gc_dataset *ds, int64_t i, gc_image *out);
void gc_dataset_free(gc_dataset *ds);

/* Brace expansion as Python's braceexpand: {a,b} alternatives, {000..009} ranges
 * (zero padded to the wider bound), {9..0} descending, nested braces. Returns a
 * malloc'd array of malloc'd strings. */
gc_status gc_brace_expand(const char *pattern, char ***out, int *n);
void gc_strings_free(char **s, int n);

/* ================================================================ batch loader (loader.c) */

/* Where a batch starts: epoch, batch index within the epoch, and the cursor in the
 * epoch's sample order (differs from batch * B once samples were skipped). */
typedef struct gc_loader_pos {
    int64_t epoch, batch, cursor;
} gc_loader_pos;

typedef struct gc_batch {
    int n;                 /* rows: the batch size (less only for a kept last batch) */
    int size;              /* S */
    float *pixels;         /* [n, 3, S, S], contiguous: each sample's (first) image */
    float *pixels_b;       /* [n, 3, S, S]: the second images (a source of 2 views), else NULL */
    /* Host tensors [B, 3, S, S] over pixels / pixels_b (rows [0, n) are this batch), owned
     * by the loader: the model can upload chunks straight from them (gc_rows). */
    gc_tensor *pixels_tensor, *pixels_b_tensor;
    const char **captions; /* n captions, owned by the data set (NULL for a source without captions) */
    int64_t *indices;      /* n sample indices */
    int64_t *indices_b;    /* n data set indices of the second images (2 views), else NULL */
    gc_loader_pos pos;     /* this batch */
    gc_loader_pos next;    /* the batch after it: save this to resume */
    int64_t skipped;       /* samples skipped while filling this batch */
} gc_batch;

typedef struct gc_loader_opts {
    int batch_size;
    int workers;           /* decoding threads (>= 1) */
    int prefetch;          /* batches prepared ahead of the consumer (>= 1) */
    uint64_t seed;
    bool shuffle;          /* per-epoch permutation from (seed, epoch) */
    bool keep_last;        /* deliver an epoch's partial last batch (default: drop it) */
    int64_t epochs;        /* stop after epoch `epochs - 1`; 0 = never stop */
    gc_loader_pos start;   /* first batch; cursor < 0 means batch * batch_size */
    gc_preprocess pre;
    /* Page-lock the batch buffers (gc_tensor_pin; a no-op without a GPU) so that uploads
     * from them are asynchronous. gc_loader_next then synchronises the stream before it
     * hands the previous batch's buffers back to be refilled (see there). */
    bool pin_memory;
} gc_loader_opts;

/* batch_size B, 4 workers, prefetch 2, seed 0, shuffled, drop_last, endless, CLIP preprocessing at S */
gc_loader_opts gc_loader_opts_default(int batch_size, int image_size);

#define GC_LOADER_REASONS 8
typedef struct gc_loader_report {
    int64_t batches;   /* delivered */
    int64_t samples;   /* delivered */
    int64_t skipped;   /* skipped in delivered batches (a sample bad in two epochs counts twice) */
    int n_reasons;     /* the first few skip reasons, in sample order */
    char reasons[GC_LOADER_REASONS][256];
} gc_loader_report;

/* Batches are produced in the background by opts->workers threads (decode + transform)
 * and an assembler thread (order, skipping, normalisation) into prefetch+1 buffers
 * of B*3*S*S floats (per view). A sample that cannot be read or decoded is skipped and
 * the batch filled from the following samples; which samples are skipped, and so every
 * batch, depends only on the data, the seed and the start position, never on thread
 * timing. The data set must outlive the loader. */
typedef struct gc_loader gc_loader;
gc_loader *gc_loader_new(const gc_dataset *ds, const gc_loader_opts *opts);

/* What a worker makes of one sample: one or two S x S images (transformed, not yet
 * normalised: the assembler normalises them with opts->pre) and, with two, the data set
 * index the second came from. */
typedef struct gc_loader_sample {
    gc_image view[2];
    int64_t index_b;
} gc_loader_sample;

/* Any list of samples (gc_loader_new's is a data set's images and captions). */
typedef struct gc_loader_source {
    int64_t n;             /* samples per epoch */
    int views;             /* images per sample: 1 or 2 */
    /* Called from the worker threads at once: fills out->view[0 .. views) for sample
     * `index` of `epoch` with o->pre; its random draws must depend only on (o->seed,
     * epoch, index), never on the thread. An error (message set, naming the file) skips
     * the sample; the loader frees what it left in out. */
    gc_status (*produce)(void *user, const gc_loader_opts *o, int64_t index, int64_t epoch, gc_loader_sample *out);
    const char *(*caption)(void *user, int64_t index); /* NULL: batches without captions */
    void *user;
    const char *noun;      /* a sample in messages: "sample" (NULL) or e.g. "pair" */
} gc_loader_source;
/* The loader over a source (copied; user must outlive the loader). */
gc_loader *gc_loader_new_source(const gc_loader_source *src, const gc_loader_opts *opts);
/* A producer's usual step: image i of ds, transformed by o->pre with the draws of
 * (o->seed, epoch, sample). */
gc_status gc_loader_load_view(const gc_dataset *ds, int64_t i, const gc_loader_opts *o, int64_t epoch, uint64_t sample,
                              gc_image *out);

/* The next batch, valid until the following call or gc_loader_free; *out = NULL at the
 * end (opts->epochs). Errors (e.g. an epoch without a single full batch) are sticky.
 * The previous batch's buffers go back to the assembler, which refills them from its
 * thread at once. Uploads from pinned buffers (pin_memory) read them asynchronously, so
 * with pinned buffers this first waits for the stream (gc_device_sync): no queued
 * upload still reads a buffer when it is refilled. gc_loader_free is safe too (freeing
 * pinned memory synchronises). */
gc_status gc_loader_next(gc_loader *l, const gc_batch **out);
int64_t gc_loader_batches_per_epoch(const gc_loader *l); /* floor(N / B): without skips */
void gc_loader_report_get(gc_loader *l, gc_loader_report *r);
void gc_loader_free(gc_loader *l); /* stops and joins the threads, also mid-epoch */

/* The sample order of an epoch: a Fisher-Yates permutation of 0..n-1 from Philox
 * draws keyed by (seed, epoch). */
void gc_loader_permutation(uint64_t seed, int64_t epoch, int64_t n, int64_t *out);

/* ================================================================ synthetic data (synth.c) */

/* Writes dir/images/NNNNNN.png (n images of image_size^2 pixels: on a plain gray
 * background one shape, or two shapes with the first "above" or "left of" the second;
 * shapes circle/square/triangle, colours red/green/blue/yellow/purple/orange, sizes
 * small/large), dir/manifest.tsv ("filepath<TAB>title" header; captions like "a large
 * green triangle" or "a small red circle above a large blue square") and dir/synth.txt
 * recording (n, size, seed). Does nothing when the manifest exists and the record
 * matches; regenerates a set it wrote with other arguments; refuses to overwrite a
 * manifest it did not write. The same arguments give the same bytes. */
gc_status gc_synth_make(const char *dir, int64_t n, int image_size, uint64_t seed);
/* root/train (seed) and root/val (a seed derived from it) */
gc_status gc_synth_make_splits(const char *root, int64_t n_train, int64_t n_val, int image_size, uint64_t seed);
/* Sample i alone: its caption (into buf) and, if im is not NULL, its pixels. */
gc_status gc_synth_sample(int64_t i, int image_size, uint64_t seed, char *caption, size_t cap_n, gc_image *im);

#endif
