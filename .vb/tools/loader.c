/* The threaded batch loader (tools/gc_data.h).
 *
 * Pipeline: the epochs' sample orders form one stream of positions q = 0, 1, ...
 * (q = 0 is the start position). Workers take positions in order and have the source
 * produce the sample (decode and transform its one or two images: a data set's image,
 * or the DINOv3 trainer's pair) into slot q % W of a ring of W slots, and may run at
 * most W positions ahead of the assembler. The assembler walks the slots strictly in
 * stream order: a good sample becomes the next row of the batch being filled
 * (normalised into it), a bad one is counted and skipped. Since each position's outcome
 * depends only on the sample (and the (seed, epoch, sample) augmentation draws), batches
 * do not depend on the number of workers or on timing. Filled batches wait in a FIFO of
 * at most `prefetch` buffers; the consumer holds one more.
 *
 * Pinned buffers (pin_memory). The consumer's uploads from the batch it holds are
 * asynchronous then: they may still be queued on the stream when the host moves on. The
 * assembler writes into a buffer only once it is on the free list, and the held buffer
 * gets there only in gc_loader_next, after a stream sync: the one place where a batch's
 * memory is handed back for reuse is also where the copies reading it are known done. */
#include "gc_data.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/gc_rng.h"

enum { SLOT_FREE, SLOT_BUSY, SLOT_DONE };

typedef struct slot {
    int state;
    int64_t q, index;
    int ok;              /* produced; else skipped for `reason` */
    gc_loader_sample smp; /* the views, S x S, transformed; empty if failed */
    char reason[256];
} slot;

typedef struct batch_buf {
    gc_batch b;
    int n_reasons;
    char reasons[GC_LOADER_REASONS][256];
} batch_buf;

struct gc_loader {
    gc_loader_source src;
    gc_loader_opts o;
    int64_t N, B, S;
    int64_t g0;        /* global stream index of q = 0: epoch * N + cursor */
    int64_t q_end;     /* positions in the run (INT64_MAX: endless) */

    pthread_mutex_t mu;
    pthread_cond_t cv_work;   /* workers: a slot or a stop */
    pthread_cond_t cv_slot;   /* assembler: a slot is done */
    pthread_cond_t cv_free;   /* assembler: a free batch buffer */
    pthread_cond_t cv_ready;  /* consumer: a batch or the end */
    int stop;

    /* workers */
    int64_t next_q;
    int64_t perm_epoch;
    int64_t *perm;
    slot *slots;
    int W;
    pthread_t *threads;
    int n_threads;

    /* assembler */
    int64_t asm_q;
    pthread_t asm_thread;
    int asm_started;
    batch_buf *bufs;
    int n_bufs;
    int *free_list, n_free;
    int *ready, ready_head, ready_n;
    int finished;            /* no more batches */
    gc_status err;           /* sticky, with err_msg */
    char err_msg[512];

    /* consumer */
    int held;                /* buffer index or -1 */
    bool pinned;             /* the buffers are page-locked: sync before handing one back */
    gc_loader_report rep;
};

gc_loader_opts gc_loader_opts_default(int batch_size, int image_size)
{
    gc_loader_opts o = {.batch_size = batch_size, .workers = 4, .prefetch = 2, .seed = 0, .shuffle = true,
                        .keep_last = false, .epochs = 0, .start = {0, 0, 0}, .pre = gc_preprocess_clip(image_size)};
    return o;
}

/* uniform integer in [0, m): two Philox words, key (seed, epoch), counter (i, 'perm') */
void gc_loader_permutation(uint64_t seed, int64_t epoch, int64_t n, int64_t *out)
{
    for (int64_t i = 0; i < n; i++) out[i] = i;
    uint32_t key[2] = {(uint32_t)seed ^ (uint32_t)epoch, (uint32_t)(seed >> 32) ^ (uint32_t)((uint64_t)epoch >> 32)};
    for (int64_t i = n - 1; i > 0; i--) {
        uint32_t ctr[4] = {(uint32_t)i, (uint32_t)((uint64_t)i >> 32), 0x7065726du /* "perm" */, (uint32_t)epoch};
        uint32_t r[4];
        gc_philox4x32_10(key, ctr, r);
        uint64_t v = ((uint64_t)r[0] << 32) | r[1];
        int64_t j = (int64_t)(v % (uint64_t)(i + 1));
        int64_t t = out[i];
        out[i] = out[j];
        out[j] = t;
    }
}

int64_t gc_loader_batches_per_epoch(const gc_loader *l) { return l ? l->N / l->B : 0; }

static void sample_free(gc_loader_sample *smp)
{
    gc_image_free(&smp->view[0]);
    gc_image_free(&smp->view[1]);
}

gc_status gc_loader_load_view(const gc_dataset *ds, int64_t i, const gc_loader_opts *o, int64_t epoch, uint64_t sample,
                              gc_image *out)
{
    gc_image im = {0};
    gc_status st = gc_dataset_load_image(ds, i, &im);
    if (st == GC_OK) st = gc_image_transform(&im, &o->pre, o->seed, (uint32_t)epoch, sample, out);
    gc_image_free(&im);
    return st;
}

/* gc_loader_new's source: a data set's image i with the draws of (seed, epoch, i), and its caption */
static gc_status dataset_produce(void *ds, const gc_loader_opts *o, int64_t index, int64_t epoch, gc_loader_sample *out)
{
    return gc_loader_load_view(ds, index, o, epoch, (uint64_t)index, &out->view[0]);
}

static const char *dataset_caption(void *ds, int64_t index) { return gc_dataset_caption(ds, index); }

/* ---------------------------------------------------------------- workers */

static void *worker_main(void *arg)
{
    gc_loader *l = arg;
    pthread_mutex_lock(&l->mu);
    for (;;) {
        while (!l->stop && (l->next_q >= l->q_end || l->next_q >= l->asm_q + l->W))
            pthread_cond_wait(&l->cv_work, &l->mu);
        if (l->stop) break;
        int64_t q = l->next_q++;
        int64_t g = l->g0 + q, epoch = g / l->N, cursor = g % l->N;
        if (l->o.shuffle && l->perm_epoch != epoch) { /* positions are handed out in order: one epoch at a time */
            gc_loader_permutation(l->o.seed, epoch, l->N, l->perm);
            l->perm_epoch = epoch;
        }
        int64_t index = l->o.shuffle ? l->perm[cursor] : cursor;
        slot *s = &l->slots[q % l->W];
        s->state = SLOT_BUSY;
        s->q = q;
        s->index = index;
        pthread_mutex_unlock(&l->mu);

        gc_loader_sample smp = {{{0}, {0}}, index};
        gc_error_clear();
        gc_status st = l->src.produce(l->src.user, &l->o, index, epoch, &smp);
        if (st != GC_OK) { /* the messages name the file (and tar member) */
            sample_free(&smp);
            snprintf(s->reason, sizeof s->reason, "%s %lld: %s", l->src.noun, (long long)index, gc_error_message());
            gc_error_clear();
        }

        pthread_mutex_lock(&l->mu);
        s->ok = st == GC_OK;
        s->smp = smp;
        s->state = SLOT_DONE;
        pthread_cond_broadcast(&l->cv_slot);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

/* ---------------------------------------------------------------- assembler */

static void set_error(gc_loader *l, gc_status code, const char *msg)
{
    if (l->err == GC_OK) {
        l->err = code;
        snprintf(l->err_msg, sizeof l->err_msg, "%s", msg);
    }
    l->finished = 1;
    pthread_cond_broadcast(&l->cv_ready);
}

static void *assembler_main(void *arg)
{
    gc_loader *l = arg;
    int64_t B = l->B, N = l->N, S = l->S;
    size_t row = 3 * (size_t)S * S;
    int64_t batch_idx = l->o.start.batch;
    int64_t pend_skipped = 0; /* skips not yet attributed to a delivered batch */
    int pend_n = 0;
    char pend[GC_LOADER_REASONS][256];
    int64_t epoch_batches = 0, epoch_of_count = -1, epoch_good = 0;

    pthread_mutex_lock(&l->mu);
    for (;;) {
        if (l->asm_q >= l->q_end) {
            l->finished = 1;
            pthread_cond_broadcast(&l->cv_ready);
            break;
        }
        while (!l->stop && l->n_free == 0) pthread_cond_wait(&l->cv_free, &l->mu);
        if (l->stop) break;
        int bi = l->free_list[--l->n_free];
        batch_buf *bb = &l->bufs[bi];
        gc_batch *b = &bb->b;
        int64_t g = l->g0 + l->asm_q;
        b->pos = (gc_loader_pos){g / N, batch_idx, g % N};
        int64_t epoch = g / N, epoch_end_g = (epoch + 1) * N;
        if (epoch_of_count != epoch) {
            epoch_of_count = epoch;
            epoch_batches = 0;
            epoch_good = 0;
        }
        int rows = 0, end_of_run = 0;
        while (rows < B) {
            if (l->asm_q >= l->q_end) {
                end_of_run = 1;
                break;
            }
            if (l->g0 + l->asm_q >= epoch_end_g) break;
            slot *s = &l->slots[l->asm_q % l->W];
            while (!l->stop && !(s->state == SLOT_DONE && s->q == l->asm_q)) pthread_cond_wait(&l->cv_slot, &l->mu);
            if (l->stop) break;
            pthread_mutex_unlock(&l->mu);
            if (s->ok) {
                gc_image_normalize(&s->smp.view[0], &l->o.pre, b->pixels + rows * row);
                b->indices[rows] = s->index;
                if (b->pixels_b) {
                    gc_image_normalize(&s->smp.view[1], &l->o.pre, b->pixels_b + rows * row);
                    b->indices_b[rows] = s->smp.index_b;
                }
                if (b->captions) b->captions[rows] = l->src.caption(l->src.user, s->index);
                rows++;
                epoch_good++;
            } else {
                pend_skipped++;
                if (pend_n < GC_LOADER_REASONS) snprintf(pend[pend_n++], sizeof pend[0], "%s", s->reason);
            }
            sample_free(&s->smp);
            pthread_mutex_lock(&l->mu);
            s->state = SLOT_FREE;
            l->asm_q++;
            pthread_cond_broadcast(&l->cv_work);
        }
        if (l->stop) {
            l->free_list[l->n_free++] = bi;
            break;
        }
        int64_t g_after = l->g0 + l->asm_q;
        int epoch_done = g_after >= epoch_end_g;
        if (rows == B || (rows > 0 && l->o.keep_last)) {
            b->n = rows;
            b->skipped = pend_skipped;
            bb->n_reasons = pend_n;
            memcpy(bb->reasons, pend, sizeof pend[0] * (size_t)pend_n);
            pend_skipped = 0;
            pend_n = 0;
            b->next = epoch_done ? (gc_loader_pos){epoch + 1, 0, 0}
                                 : (gc_loader_pos){epoch, batch_idx + 1, g_after - epoch * N};
            batch_idx = epoch_done ? 0 : batch_idx + 1;
            epoch_batches++;
            l->ready[(l->ready_head + l->ready_n) % l->n_bufs] = bi;
            l->ready_n++;
            pthread_cond_broadcast(&l->cv_ready);
        } else {
            l->free_list[l->n_free++] = bi; /* a partial last batch, dropped */
            if (epoch_done) batch_idx = 0;
        }
        if (epoch_done && epoch_batches == 0 && b->pos.batch == 0 && b->pos.cursor == 0) {
            char msg[512];
            snprintf(msg, sizeof msg,
                     "loader: epoch %lld gave no batch: %lld of %lld %ss usable, batch size %lld%s%s",
                     (long long)epoch, (long long)epoch_good, (long long)N, l->src.noun, (long long)B,
                     pend_n ? "; first skip: " : "", pend_n ? pend[0] : "");
            set_error(l, GC_ERR_FORMAT, msg);
            break;
        }
        if (end_of_run) {
            l->finished = 1;
            pthread_cond_broadcast(&l->cv_ready);
            break;
        }
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

/* ---------------------------------------------------------------- public */

static void free_pixels(void *ctx, void *data, size_t nbytes)
{
    (void)ctx;
    (void)nbytes;
    free(data);
}

/* A host tensor [B, 3, S, S] owning p (malloc'd or NULL; freed here if the tensor cannot be made).
 * Not through the host allocator: the loader's buffers stay out of the host memory stats. */
static gc_tensor *pixels_tensor(float *p, int64_t B, int64_t S, const char *name)
{
    if (!p) return NULL;
    gc_tensor *t = gc_tensor_wrap(GC_F32, GC_CPU, 4, GC_SHAPE(B, 3, S, S), p, free_pixels, NULL);
    if (!t) {
        free(p);
        return NULL;
    }
    gc_tensor_set_name(t, name);
    return t;
}

static void loader_stop(gc_loader *l)
{
    pthread_mutex_lock(&l->mu);
    l->stop = 1;
    pthread_cond_broadcast(&l->cv_work);
    pthread_cond_broadcast(&l->cv_slot);
    pthread_cond_broadcast(&l->cv_free);
    pthread_cond_broadcast(&l->cv_ready);
    pthread_mutex_unlock(&l->mu);
    for (int i = 0; i < l->n_threads; i++) pthread_join(l->threads[i], NULL);
    l->n_threads = 0;
    if (l->asm_started) pthread_join(l->asm_thread, NULL);
    l->asm_started = 0;
}

void gc_loader_free(gc_loader *l)
{
    if (!l) return;
    loader_stop(l);
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->cv_work);
    pthread_cond_destroy(&l->cv_slot);
    pthread_cond_destroy(&l->cv_free);
    pthread_cond_destroy(&l->cv_ready);
    if (l->slots)
        for (int i = 0; i < l->W; i++) sample_free(&l->slots[i].smp);
    if (l->bufs)
        for (int i = 0; i < l->n_bufs; i++) {
            gc_batch *b = &l->bufs[i].b;
            /* the tensors own the pixels (freeing pinned ones waits for the stream) */
            gc_tensor_release(b->pixels_tensor);
            gc_tensor_release(b->pixels_b_tensor);
            free(l->bufs[i].b.captions);
            free(l->bufs[i].b.indices);
            free(l->bufs[i].b.indices_b);
        }
    free(l->bufs);
    free(l->free_list);
    free(l->ready);
    free(l->slots);
    free(l->perm);
    free(l->threads);
    free(l);
}

gc_loader *gc_loader_new(const gc_dataset *ds, const gc_loader_opts *opts)
{
    if (!ds) {
        gc_error_set(GC_ERR_INVALID, "loader: no data set");
        return NULL;
    }
    gc_loader_source src = {.n = gc_dataset_size(ds), .views = 1, .produce = dataset_produce,
                            .caption = dataset_caption, .user = (void *)ds};
    return gc_loader_new_source(&src, opts);
}

gc_loader *gc_loader_new_source(const gc_loader_source *src, const gc_loader_opts *opts)
{
    if (!src || !opts || !src->produce || src->views < 1 || src->views > 2) {
        gc_error_set(GC_ERR_INVALID, "loader: no source (1 or 2 views and a producer) or options");
        return NULL;
    }
    const gc_loader_opts *o = opts;
    const char *noun = src->noun ? src->noun : "sample";
    int64_t N = src->n;
    if (o->batch_size <= 0 || o->workers <= 0 || o->workers > 1024 || o->prefetch <= 0 || o->prefetch > 64 ||
        o->pre.size <= 0 || o->epochs < 0) {
        gc_error_set(GC_ERR_INVALID,
                     "loader: bad options (batch size %d, workers %d, prefetch %d, image size %d, epochs %lld)",
                     o->batch_size, o->workers, o->prefetch, o->pre.size, (long long)o->epochs);
        return NULL;
    }
    if (N <= 0) {
        gc_error_set(GC_ERR_INVALID, "loader: the data set is empty");
        return NULL;
    }
    if (N < o->batch_size && !o->keep_last) {
        gc_error_set(GC_ERR_INVALID, "loader: the data set has %lld %ss, fewer than the batch size %d",
                     (long long)N, noun, o->batch_size);
        return NULL;
    }
    for (int c = 0; c < 3; c++)
        if (!(o->pre.std[c] > 0)) {
            gc_error_set(GC_ERR_INVALID, "loader: std[%d] = %g must be positive", c, o->pre.std[c]);
            return NULL;
        }
    gc_loader_pos st = o->start;
    if (st.cursor < 0) st.cursor = st.batch * o->batch_size;
    /* st.epoch N + st.cursor is the stream position: it must not overflow (a resumed state's
     * data_epoch is read from a file) */
    if (st.epoch < 0 || st.batch < 0 || st.cursor > N || st.epoch > (INT64_MAX - N) / N - 1) {
        gc_error_set(GC_ERR_INVALID,
                     "loader: bad start position (epoch %lld, batch %lld, cursor %lld) for %lld %ss",
                     (long long)st.epoch, (long long)st.batch, (long long)st.cursor, (long long)N, noun);
        return NULL;
    }
    if (st.cursor == N) st = (gc_loader_pos){st.epoch + 1, 0, 0};

    gc_loader *l = calloc(1, sizeof *l);
    if (!l) {
        gc_error_set(GC_ERR_OOM, "loader: out of memory");
        return NULL;
    }
    l->src = *src;
    l->src.noun = noun;
    l->o = *o;
    l->o.start = st;
    l->N = N;
    l->B = o->batch_size;
    l->S = o->pre.size;
    l->g0 = st.epoch * N + st.cursor;
    l->q_end = o->epochs > 0 ? (o->epochs * N > l->g0 ? o->epochs * N - l->g0 : 0) : INT64_MAX;
    l->perm_epoch = -1;
    l->held = -1;
    l->W = 4 * o->workers + 8;
    l->n_bufs = o->prefetch + 1;
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv_work, NULL);
    pthread_cond_init(&l->cv_slot, NULL);
    pthread_cond_init(&l->cv_free, NULL);
    pthread_cond_init(&l->cv_ready, NULL);
    l->slots = calloc((size_t)l->W, sizeof(slot));
    l->perm = o->shuffle ? malloc(sizeof(int64_t) * (size_t)N) : NULL;
    l->bufs = calloc((size_t)l->n_bufs, sizeof(batch_buf));
    l->free_list = malloc(sizeof(int) * (size_t)l->n_bufs);
    l->ready = malloc(sizeof(int) * (size_t)l->n_bufs);
    l->threads = calloc((size_t)o->workers, sizeof(pthread_t));
    int oom = !l->slots || (o->shuffle && !l->perm) || !l->bufs || !l->free_list || !l->ready || !l->threads;
    size_t px = (size_t)l->B * 3 * (size_t)l->S * (size_t)l->S;
    for (int i = 0; i < l->n_bufs && !oom; i++) {
        gc_batch *b = &l->bufs[i].b;
        b->size = (int)l->S;
        b->pixels_tensor = pixels_tensor(malloc(sizeof(float) * px), l->B, l->S, "loader batch pixels");
        b->pixels = b->pixels_tensor ? gc_tensor_data(b->pixels_tensor) : NULL;
        b->indices = calloc((size_t)l->B, sizeof(int64_t));
        oom = !b->pixels_tensor || !b->indices;
        if (src->views == 2) {
            b->pixels_b_tensor = pixels_tensor(malloc(sizeof(float) * px), l->B, l->S, "loader batch pixels_b");
            b->pixels_b = b->pixels_b_tensor ? gc_tensor_data(b->pixels_b_tensor) : NULL;
            b->indices_b = calloc((size_t)l->B, sizeof(int64_t));
            oom |= !b->pixels_b_tensor || !b->indices_b;
        }
        if (src->caption) {
            b->captions = calloc((size_t)l->B, sizeof(char *));
            oom |= !b->captions;
        }
        l->free_list[l->n_free++] = i;
    }
    if (oom) {
        gc_error_set(GC_ERR_OOM, "loader: out of memory for %d batches of %d x %lld x 3 x %lld x %lld floats", l->n_bufs,
                     src->views, (long long)l->B, (long long)l->S, (long long)l->S);
        gc_loader_free(l);
        return NULL;
    }
    for (int i = 0; i < l->n_bufs && o->pin_memory; i++) { /* before any thread writes into them */
        gc_batch *b = &l->bufs[i].b;
        if (gc_tensor_pin(b->pixels_tensor) != GC_OK || (b->pixels_b_tensor && gc_tensor_pin(b->pixels_b_tensor) != GC_OK)) {
            gc_loader_free(l);
            return NULL;
        }
    }
    l->pinned = gc_tensor_is_pinned(l->bufs[0].b.pixels_tensor);
    if (pthread_create(&l->asm_thread, NULL, assembler_main, l) != 0) {
        gc_error_set(GC_ERR_STATE, "loader: cannot start a thread");
        gc_loader_free(l);
        return NULL;
    }
    l->asm_started = 1;
    for (int i = 0; i < o->workers; i++) {
        if (pthread_create(&l->threads[i], NULL, worker_main, l) != 0) {
            gc_error_set(GC_ERR_STATE, "loader: cannot start worker thread %d", i);
            gc_loader_free(l);
            return NULL;
        }
        l->n_threads = i + 1;
    }
    return l;
}

gc_status gc_loader_next(gc_loader *l, const gc_batch **out)
{
    if (out) *out = NULL;
    if (!l || !out) return gc_error_set(GC_ERR_INVALID, "loader next: NULL argument");
    /* The held batch is refilled as soon as it is handed back: with pinned buffers, wait
     * for the uploads from it first (see the top). Outside the lock: only this thread
     * touches `held`. */
    if (l->held >= 0 && l->pinned) GC_TRY(gc_device_sync(GC_CUDA0));
    pthread_mutex_lock(&l->mu);
    if (l->held >= 0) {
        l->free_list[l->n_free++] = l->held;
        l->held = -1;
        pthread_cond_broadcast(&l->cv_free);
    }
    while (l->ready_n == 0 && !l->finished) pthread_cond_wait(&l->cv_ready, &l->mu);
    if (l->ready_n > 0) {
        int bi = l->ready[l->ready_head];
        l->ready_head = (l->ready_head + 1) % l->n_bufs;
        l->ready_n--;
        l->held = bi;
        batch_buf *bb = &l->bufs[bi];
        l->rep.batches++;
        l->rep.samples += bb->b.n;
        l->rep.skipped += bb->b.skipped;
        for (int i = 0; i < bb->n_reasons && l->rep.n_reasons < GC_LOADER_REASONS; i++)
            snprintf(l->rep.reasons[l->rep.n_reasons++], sizeof l->rep.reasons[0], "%s", bb->reasons[i]);
        *out = &bb->b;
        pthread_mutex_unlock(&l->mu);
        return GC_OK;
    }
    gc_status err = l->err;
    char msg[512];
    snprintf(msg, sizeof msg, "%s", l->err_msg);
    pthread_mutex_unlock(&l->mu);
    if (err != GC_OK) return gc_error_set(err, "%s", msg);
    return GC_OK; /* the end */
}

void gc_loader_report_get(gc_loader *l, gc_loader_report *r)
{
    memset(r, 0, sizeof *r);
    if (!l) return;
    pthread_mutex_lock(&l->mu);
    *r = l->rep;
    pthread_mutex_unlock(&l->mu);
}
