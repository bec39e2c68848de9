#include "gc_train_util.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../kernels/gc_ops.h"
#include "../models/gc_json.h"
#include "../models/gc_safetensors.h"

gc_status gc_recall_at_k(gc_tensor *a, gc_tensor *b, double r[6])
{
    int64_t N = a->shape[0];
    gc_pool *p = gc_pool_push();
    bool prev = gc_grad_set_enabled(false);
    gc_tensor *sim = gc_matmul(gc_cast(a, GC_F32), gc_cast(b, GC_F32), false, true); /* [N, N] */
    gc_grad_set_enabled(prev);
    double *s = sim ? malloc(sizeof(double) * (size_t)(N * N)) : NULL;
    gc_status st = s ? gc_tensor_to_host_f64(sim, s) : GC_PENDING();
    static const int ks[3] = {1, 5, 10};
    for (int i = 0; i < 6; i++) r[i] = 0;
    for (int64_t i = 0; st == GC_OK && i < N; i++) {
        /* rank of the true match among row i (a->b) and column i (b->a); ties count against */
        int64_t rank_ab = 0, rank_ba = 0;
        for (int64_t j = 0; j < N; j++) {
            if (j == i) continue;
            if (s[i * N + j] >= s[i * N + i]) rank_ab++;
            if (s[j * N + i] >= s[i * N + i]) rank_ba++;
        }
        for (int k = 0; k < 3; k++) {
            r[k] += rank_ab < ks[k];
            r[3 + k] += rank_ba < ks[k];
        }
    }
    for (int i = 0; i < 6 && N; i++) r[i] /= (double)N;
    free(s);
    gc_pool_pop(p);
    return st;
}

gc_status gc_adamw_save(gc_adamw *o, const char *path)
{
    gc_params *ps = o->params;
    int n = 0;
    const char **names = calloc((size_t)(2 * ps->n + 1), sizeof *names);
    char **owned = calloc((size_t)(2 * ps->n + 1), sizeof *owned);
    gc_tensor **ts = calloc((size_t)(2 * ps->n + 1), sizeof *ts);
    gc_status st = names && owned && ts ? GC_OK : gc_error_set(GC_ERR_OOM, "out of host memory");
    double stepd = (double)o->step;
    gc_tensor *step = st == GC_OK ? gc_tensor_from_data(GC_F64, GC_CPU, 1, GC_SHAPE(1), &stepd) : NULL;
    if (st == GC_OK && step) { names[n] = "step"; ts[n++] = step; }
    for (int i = 0; st == GC_OK && i < ps->n; i++) {
        if (!o->m[i]) continue;
        for (int k = 0; k < 2; k++) {
            size_t len = strlen(ps->items[i].name) + 16;
            owned[n] = malloc(len);
            if (!owned[n]) { st = gc_error_set(GC_ERR_OOM, "out of host memory"); break; }
            snprintf(owned[n], len, "%s.%s", k ? "exp_avg_sq" : "exp_avg", ps->items[i].name);
            names[n] = owned[n];
            ts[n] = gc_tensor_to(k ? o->v[i] : o->m[i], GC_CPU, GC_F32);
            if (!ts[n]) { st = GC_PENDING(); break; }
            n++;
        }
    }
    if (st == GC_OK) st = gc_st_save(path, n, names, ts, 0, NULL);
    for (int i = 0; i < n; i++) { gc_tensor_release(ts[i]); free(owned[i]); }
    free(names);
    free(owned);
    free(ts);
    return st;
}

gc_status gc_adamw_load(gc_adamw *o, const char *path)
{
    gc_st_file *f;
    GC_TRY(gc_st_open(path, &f));
    gc_params *ps = o->params;
    gc_status st = GC_OK;
    gc_tensor *step = gc_st_load(f, "step", GC_F64, GC_CPU);
    if (!step) st = GC_PENDING();
    else o->step = (int64_t)*(double *)gc_tensor_data(step);
    gc_tensor_release(step);
    for (int i = 0; st == GC_OK && i < ps->n; i++) {
        if (!o->m[i]) continue;
        for (int k = 0; k < 2 && st == GC_OK; k++) {
            char name[600];
            snprintf(name, sizeof name, "%s.%s", k ? "exp_avg_sq" : "exp_avg", ps->items[i].name);
            if (!gc_st_find(f, name)) { st = gc_error_set(GC_ERR_FORMAT, "%s: no %s", path, name); break; }
            gc_tensor *t = gc_st_load(f, name, GC_F32, GC_CPU);
            st = t ? gc_tensor_copy_into(k ? o->v[i] : o->m[i], t, false) : GC_PENDING();
            gc_tensor_release(t);
        }
    }
    gc_st_close(f);
    return st;
}

gc_status gc_mkdirs(const char *path)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) && errno != EEXIST) return gc_error_set(GC_ERR_IO, "%s: cannot create: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0755) && errno != EEXIST) return gc_error_set(GC_ERR_IO, "%s: cannot create: %s", buf, strerror(errno));
    return GC_OK;
}

gc_status gc_fsync_path(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) return gc_error_set(GC_ERR_IO, "%s: cannot open for fsync: %s", path, strerror(errno));
    int rc = fsync(fd);
    close(fd);
    if (rc && errno != EINVAL) return gc_error_set(GC_ERR_IO, "%s: fsync failed: %s", path, strerror(errno));
    return GC_OK;
}

static void parent_of(const char *path, char *out, size_t n)
{
    snprintf(out, n, "%s", path);
    char *s = strrchr(out, '/');
    if (s && s != out) *s = 0;
    else snprintf(out, n, "%s", s ? "/" : ".");
}

gc_status gc_dir_commit(const char *tmp, const char *dst)
{
    GC_TRY(gc_fsync_path(tmp));
    char old[4200];
    snprintf(old, sizeof old, "%s.old", dst);
    struct stat sb;
    bool had = stat(dst, &sb) == 0;
    if (had && rename(dst, old)) return gc_error_set(GC_ERR_IO, "%s: cannot move aside: %s", dst, strerror(errno));
    if (rename(tmp, dst)) return gc_error_set(GC_ERR_IO, "%s: cannot rename to %s: %s", tmp, dst, strerror(errno));
    char parent[4096];
    parent_of(dst, parent, sizeof parent);
    GC_TRY(gc_fsync_path(parent));
    if (had) {
        char cmd[8600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", old);
        if (system(cmd)) return gc_error_set(GC_ERR_IO, "%s: could not remove", old);
    }
    return GC_OK;
}

gc_status gc_write_text(const char *path, const char *text)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return gc_error_set(GC_ERR_IO, "%s: cannot write: %s", tmp, strerror(errno));
    size_t n = strlen(text);
    bool ok = fwrite(text, 1, n, f) == n && fflush(f) == 0 && fsync(fileno(f)) == 0;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, path)) return gc_error_set(GC_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    return GC_OK;
}

char *gc_read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) { gc_error_set(GC_ERR_IO, "%s: cannot open: %s", path, strerror(errno)); return NULL; }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) { free(s); s = NULL; }
    fclose(f);
    if (!s) { gc_error_set(GC_ERR_IO, "%s: read failed", path); return NULL; }
    s[n] = 0;
    return s;
}

gc_status gc_checkpoint_resolve(const char *dir, char *ck, size_t n)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/latest", dir);
    struct stat sb;
    if (stat(path, &sb) == 0) {
        char *name = gc_read_text(path);
        if (!name) return GC_PENDING();
        name[strcspn(name, "\n")] = 0;
        snprintf(ck, n, "%s/%s", dir, name);
        free(name);
    } else snprintf(ck, n, "%s", dir);
    return GC_OK;
}

gc_status gc_metrics_trim(const char *path, int64_t step)
{
    struct stat sb;
    if (stat(path, &sb) != 0) return GC_OK;
    char *text = gc_read_text(path);
    if (!text) return GC_PENDING();
    size_t n = strlen(text), k = 0;
    char *out = malloc(n + 1);
    if (!out) { free(text); return gc_error_set(GC_ERR_OOM, "out of host memory"); }
    for (char *line = text; *line;) {
        char *e = strchr(line, '\n');
        size_t len = e ? (size_t)(e - line + 1) : strlen(line);
        const char *sp = strstr(line, "\"step\":");
        long long s = sp ? atoll(sp + 7) : 0;
        if (s <= step) { memcpy(out + k, line, len); k += len; }
        line += len;
    }
    out[k] = 0;
    gc_status st = gc_write_text(path, out);
    free(out);
    free(text);
    return st;
}

bool gc_path_is_dir(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

bool gc_path_exists(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0;
}

void gc_path_dirname(const char *path, char *out, size_t n)
{
    snprintf(out, n, "%s", path);
    char *s = strrchr(out, '/');
    if (s) *s = 0;
    else snprintf(out, n, ".");
}

double gc_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

gc_status gc_train_device(const gc_train_config *c, const char *where, gc_device *dev)
{
    if (gc_device_parse(c->device, dev) != GC_OK) {
        gc_status code = gc_error_code();
        char msg[512];
        snprintf(msg, sizeof msg, "%s", gc_error_message());
        return gc_error_set(code, "%s: %s", where, msg);
    }
    if (dev->type == GC_DEVICE_CUDA && !gc_cuda_available()) {
        gc_error_clear();
        return gc_error_set(GC_ERR_INVALID, "%s: device cuda: no usable CUDA device here (set device: cpu)", where);
    }
    if (c->gemm_plan[0] && dev->type != GC_DEVICE_CUDA)
        fprintf(stderr, "gcache: warning: %s: 'gemm_plan' chooses CUDA GEMM algorithms; a CPU run ignores it\n", where);
    else if (c->gemm_plan[0]) gc_gemm_plan_use(c->gemm_plan); /* read and checked at the first GEMM */
    gc_recompute_set_enabled(c->recompute); /* this thread runs the steps */
    if (!c->recompute)
        printf("gcache train: recompute false: layernorm outputs and MLP activations are kept for backward "
               "(faster, more memory)\n");
    return GC_OK;
}

/* ---------------------------------------------------------------- checkpoints */

gc_status gc_checkpoint_begin(const char *output_dir, int64_t step, char *tmp, size_t n)
{
    snprintf(tmp, n, "%s/checkpoint-%lld.tmp", output_dir, (long long)step);
    if (gc_path_exists(tmp)) {
        char cmd[4200];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
        if (system(cmd)) return gc_error_set(GC_ERR_IO, "%s: cannot remove a stale temporary", tmp);
    }
    return gc_mkdirs(tmp);
}

cJSON *gc_trainer_state_new(const gc_train_config *c, int64_t step, int64_t total_steps, gc_loader_pos next)
{
    cJSON *st = cJSON_CreateObject();
    cJSON_AddNumberToObject(st, "step", (double)step);
    cJSON_AddNumberToObject(st, "data_epoch", (double)next.epoch);
    cJSON_AddNumberToObject(st, "data_batch", (double)next.batch);
    cJSON_AddNumberToObject(st, "data_cursor", (double)next.cursor);
    cJSON_AddNumberToObject(st, "seed", (double)c->seed);
    cJSON_AddNumberToObject(st, "total_steps", (double)total_steps);
    return st;
}

gc_status gc_checkpoint_finish(const char *tmp, const gc_train_config *c, gc_adamw *opt, const gc_lora_options *lora,
                               int64_t step, cJSON *state)
{
    char path[4200];
    gc_status s = state ? GC_OK : gc_error_set(GC_ERR_OOM, "out of host memory");
    if (s == GC_OK && c->use_lora) /* adapter_config.json + adapter_model.safetensors beside the model (PEFT) */
        s = gc_lora_save_peft(opt->params, lora, gc_path_is_dir(c->model) ? c->model : NULL, tmp);
    if (s == GC_OK) {
        snprintf(path, sizeof path, "%s/optimizer.safetensors", tmp);
        s = gc_adamw_save(opt, path);
    }
    if (s == GC_OK) {
        snprintf(path, sizeof path, "%s/trainer_state.json", tmp);
        s = gc_json_save_file(path, state);
    }
    cJSON_Delete(state);
    GC_TRY(s);
    char *yaml = gc_train_config_to_yaml(c);
    snprintf(path, sizeof path, "%s/train_config.yaml", tmp);
    s = yaml ? gc_write_text(path, yaml) : gc_error_set(GC_ERR_OOM, "out of host memory");
    free(yaml);
    GC_TRY(s);
    char dst[4200];
    snprintf(dst, sizeof dst, "%s/checkpoint-%lld", c->output_dir, (long long)step);
    GC_TRY(gc_dir_commit(tmp, dst));
    /* `latest` names the newest complete checkpoint; written last, atomically */
    snprintf(path, sizeof path, "%s/latest", c->output_dir);
    char name[96];
    snprintf(name, sizeof name, "checkpoint-%lld\n", (long long)step);
    return gc_write_text(path, name);
}

gc_status gc_checkpoint_read_state(const char *dir, char *ck, size_t n, int64_t *step, gc_loader_pos *next,
                                   cJSON **state)
{
    *state = NULL;
    char path[4200];
    GC_TRY(gc_checkpoint_resolve(dir, ck, n));
    snprintf(path, sizeof path, "%s/trainer_state.json", ck);
    cJSON *st = NULL;
    GC_TRY(gc_json_load_file(path, &st));
    int64_t v[4];
    static const char *const keys[4] = {"step", "data_epoch", "data_batch", "data_cursor"};
    gc_status s = GC_OK;
    for (int i = 0; i < 4 && s == GC_OK; i++) s = gc_json_get_int(st, keys[i], 0, true, &v[i], path);
    if (s != GC_OK) {
        cJSON_Delete(st);
        return s;
    }
    *step = v[0];
    *next = (gc_loader_pos){v[1], v[2], v[3]};
    *state = st;
    return GC_OK;
}

gc_status gc_checkpoint_load_weights(const char *ck, const gc_train_config *c, gc_adamw *opt, const gc_lora_options *lora,
                                     const char *const *ignore, int64_t step)
{
    gc_params *ps = opt->params;
    GC_TRY(gc_params_load(ps, ck, ignore, c->use_lora ? ".lora_" : NULL));
    if (c->use_lora) GC_TRY(gc_lora_load_peft(ps, lora, ck)); /* the adapters, from the PEFT files */
    GC_TRY(gc_params_sync_values(ps));
    char path[4200];
    snprintf(path, sizeof path, "%s/optimizer.safetensors", ck);
    GC_TRY(gc_adamw_load(opt, path));
    if (opt->step != step)
        return gc_error_set(GC_ERR_FORMAT, "%s: optimizer step %lld does not match the trainer's step %lld", ck,
                            (long long)opt->step, (long long)step);
    printf("resumed from %s at step %lld\n", ck, (long long)step);
    return GC_OK;
}

/* ---------------------------------------------------------------- data */

gc_loader_opts gc_train_loader_opts(const gc_train_config *c, int S, gc_loader_pos start)
{
    gc_loader_opts lo = gc_loader_opts_default((int)c->batch_size, S);
    lo.workers = (int)(c->workers > 0 ? c->workers : 1);
    lo.seed = c->seed;
    lo.start = start;
    /* the model uploads each chunk from the loader's buffers: asynchronously when pinned */
    gc_device dev;
    lo.pin_memory = gc_device_parse(c->device, &dev) == GC_OK && dev.type == GC_DEVICE_CUDA;
    return lo;
}

gc_loader_opts gc_eval_loader_opts(const gc_train_config *c, int S, int64_t n)
{
    gc_loader_opts lo = gc_loader_opts_default((int)(c->batch_size < n ? c->batch_size : n), S);
    lo.workers = (int)(c->workers > 0 ? c->workers : 1);
    lo.shuffle = false;
    lo.keep_last = true;
    lo.epochs = 1;
    return lo;
}

gc_status gc_train_check_columns(const gc_train_config *c, const char *key, const char *value, const char *where)
{
    if (!strcmp(c->data_format, "webdataset") || strcmp(c->csv_img_key, value)) return GC_OK;
    return gc_error_set(GC_ERR_INVALID, "%s: csv_img_key and %s are both '%s': each needs a column of its own", where, key,
                        value);
}

gc_status gc_train_next_batch(gc_loader *l, const gc_train_config *c, const gc_batch **b)
{
    GC_TRY(gc_loader_next(l, b));
    if (*b && c->max_steps <= 0 && (*b)->pos.epoch >= c->epochs) *b = NULL;
    return GC_OK;
}

bool gc_train_due(int64_t step, int64_t every, int64_t total_steps)
{
    return every > 0 && step % every == 0 && step != total_steps;
}

void gc_train_test_kill(int64_t step)
{
    const char *at = getenv("GC_TRAIN_KILL_AT_STEP");
    if (at && step == atoll(at)) raise(SIGKILL);
}

/* ---------------------------------------------------------------- metrics and progress */

gc_status gc_train_log_open(gc_train_log *g, const char *output_dir, bool resume, int64_t step, const char *unit)
{
    memset(g, 0, sizeof *g);
    g->unit = unit;
    g->tty = isatty(STDOUT_FILENO);
    char path[4200];
    snprintf(path, sizeof path, "%s/metrics.jsonl", output_dir);
    if (resume) GC_TRY(gc_metrics_trim(path, step));
    else if (gc_path_exists(path)) remove(path);
    if (!(g->metrics = fopen(path, "a"))) return gc_error_set(GC_ERR_IO, "%s: cannot open for writing", path);
    return GC_OK;
}

void gc_train_log_start(gc_train_log *g, int64_t step, int64_t total_steps, int64_t log_every)
{
    g->t_start = g->t_last = gc_now_s();
    g->step0 = step;
    g->since = 0;
    g->total_steps = total_steps;
    g->log_every = log_every;
}

/* appends (a, b[, c]) to the columns x, y[, z] (a point is lost when memory is) */
static void push(double **x, double **y, double **z, int *n, int *cap, double a, double b, double c)
{
    if (*n == *cap) {
        int nc = *cap ? *cap * 2 : 256;
        double *nx = realloc(*x, sizeof(double) * (size_t)nc);
        if (nx) *x = nx;
        double *ny = realloc(*y, sizeof(double) * (size_t)nc);
        if (ny) *y = ny;
        double *nz = z ? realloc(*z, sizeof(double) * (size_t)nc) : NULL;
        if (nz) *z = nz;
        if (!nx || !ny || (z && !nz)) return;
        *cap = nc;
    }
    (*x)[*n] = a;
    (*y)[*n] = b;
    if (z) (*z)[*n] = c;
    (*n)++;
}

void gc_train_log_step(gc_train_log *g, int64_t step, int64_t epoch, int64_t n, double loss, double lr, gc_adamw *opt,
                       gc_device dev)
{
    g->since += n;
    push(&g->loss_x, &g->loss_y, NULL, &g->n_loss, &g->cap_loss, (double)step, loss, 0);
    if (step % g->log_every != 0 && step != g->total_steps) return;
    double now = gc_now_s(), sps = (double)g->since / fmax(now - g->t_last, 1e-9);
    double gn = 0;
    gc_adamw_last_norm(opt, &gn);
    gc_memory_stats ms = gc_memory_stats_get(dev);
    fprintf(g->metrics,
            "{\"step\": %lld, \"epoch\": %lld, \"loss\": %.9g, \"lr\": %.6g, \"grad_norm\": %.6g, "
            "\"%s_per_s\": %.2f, \"peak_memory_bytes\": %zu}\n",
            (long long)step, (long long)epoch, loss, lr, gn, g->unit, sps, ms.peak);
    fflush(g->metrics);
    double eta = (now - g->t_start) / (double)(step - g->step0) * (double)(g->total_steps - step);
    if (g->tty)
        printf("\r\033[K[%lld/%lld] loss %.4f | lr %.2e | %.1f %s/s | mem %.0f MiB | ETA %02d:%02d", (long long)step,
               (long long)g->total_steps, loss, lr, sps, g->unit, (double)ms.peak / (1 << 20), (int)(eta / 60),
               (int)fmod(eta, 60));
    else
        printf("step %lld/%lld  loss %.4f  lr %.2e  %.1f %s/s  peak %.0f MiB  eta %.0fs\n", (long long)step,
               (long long)g->total_steps, loss, lr, sps, g->unit, (double)ms.peak / (1 << 20), eta);
    fflush(stdout);
    g->t_last = now;
    g->since = 0;
}

const char *gc_train_log_eol(const gc_train_log *g) { return g->tty ? "\r\033[K" : ""; }

void gc_train_log_eval(gc_train_log *g, int64_t step, double r1_a, double r1_b)
{
    push(&g->ev_x, &g->ev_y[0], &g->ev_y[1], &g->n_ev, &g->cap_ev, (double)step, r1_a, r1_b);
}

void gc_train_log_finish(gc_train_log *g, const char *output_dir, int64_t step, const char *title, const char *ev_a,
                         const char *ev_b)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/training.svg", output_dir);
    gc_series loss = {"loss", g->loss_x, g->loss_y, g->n_loss};
    gc_series ev[2] = {{ev_a, g->ev_x, g->ev_y[0], g->n_ev}, {ev_b, g->ev_x, g->ev_y[1], g->n_ev}};
    if (gc_svg_plot(path, title, &loss, 1, "loss", ev, !g->n_ev ? 0 : ev_b ? 2 : 1, "recall@1") != GC_OK) {
        fprintf(stderr, "gcache: warning: %s\n", gc_error_message());
        gc_error_clear();
    }
    printf("done: %lld steps; %s/checkpoint-%lld, %s/metrics.jsonl, %s/training.svg\n", (long long)step, output_dir,
           (long long)step, output_dir, output_dir);
}

void gc_train_log_free(gc_train_log *g)
{
    if (g->metrics) fclose(g->metrics);
    free(g->loss_x);
    free(g->loss_y);
    free(g->ev_x);
    free(g->ev_y[0]);
    free(g->ev_y[1]);
    memset(g, 0, sizeof *g);
}

/* ---------------------------------------------------------------- SVG */

static void range_of(const gc_series *s, int n, double *x0, double *x1, double *y0, double *y1)
{
    *x0 = *y0 = INFINITY;
    *x1 = *y1 = -INFINITY;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < s[i].n; j++) {
            if (!isfinite(s[i].y[j])) continue;
            *x0 = fmin(*x0, s[i].x[j]); *x1 = fmax(*x1, s[i].x[j]);
            *y0 = fmin(*y0, s[i].y[j]); *y1 = fmax(*y1, s[i].y[j]);
        }
    if (!isfinite(*x0)) { *x0 = 0; *x1 = 1; *y0 = 0; *y1 = 1; }
    if (*x1 <= *x0) *x1 = *x0 + 1;
    if (*y1 <= *y0) *y1 = *y0 + 1;
}

gc_status gc_svg_plot(const char *path, const char *title, const gc_series *left, int n_left, const char *left_label,
                      const gc_series *right, int n_right, const char *right_label)
{
    static const char *colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"};
    const double W = 720, H = 420, L = 70, R = 70, T = 40, Bm = 50;
    size_t cap = 1 << 20, n = 0;
    char *o = malloc(cap);
    if (!o) return gc_error_set(GC_ERR_OOM, "out of host memory");
#define P(...) do { if (n < cap) n += (size_t)snprintf(o + n, cap - n, __VA_ARGS__); } while (0)
    P("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" font-size=\"12\">\n", W, H);
    P("<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n<text x=\"%.0f\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">%s</text>\n", W / 2, title);
    P("<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" stroke=\"#444\"/>\n", L, T, W - L - R, H - T - Bm);
    double gx0, gx1, gy0, gy1;
    range_of(left, n_left, &gx0, &gx1, &gy0, &gy1);
    if (n_right) { double a, b, c, d; range_of(right, n_right, &a, &b, &c, &d); gx0 = fmin(gx0, a); gx1 = fmax(gx1, b); }
    for (int side = 0; side < 2; side++) {
        const gc_series *ss = side ? right : left;
        int ns = side ? n_right : n_left;
        if (!ns) continue;
        double x0, x1, y0, y1;
        range_of(ss, ns, &x0, &x1, &y0, &y1);
        if (side) { y0 = 0; y1 = fmax(y1, 1e-9); }
        for (int t = 0; t <= 4; t++) { /* axis ticks */
            double v = y0 + (y1 - y0) * t / 4, y = H - Bm - (H - T - Bm) * t / 4;
            P("<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"%s\">%.3g</text>\n", side ? W - R + 6 : L - 6, y + 4, side ? "start" : "end", v);
        }
        P("<text transform=\"translate(%.0f,%.0f) rotate(-90)\" text-anchor=\"middle\">%s</text>\n", side ? W - 12 : 14,
          (H - Bm + T) / 2, side ? right_label : left_label);
        for (int i = 0; i < ns; i++) {
            const char *col = colors[(side * 3 + i) % 6];
            P("<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\"%s points=\"", col, side ? " stroke-dasharray=\"5,3\"" : "");
            for (int j = 0; j < ss[i].n; j++) {
                if (!isfinite(ss[i].y[j])) continue;
                double x = L + (W - L - R) * (ss[i].x[j] - gx0) / (gx1 - gx0);
                double y = H - Bm - (H - T - Bm) * (ss[i].y[j] - y0) / (y1 - y0);
                P("%.1f,%.1f ", x, y);
            }
            int slot = side ? n_left + i : i; /* legend entries side by side */
            P("\"/>\n<text x=\"%.0f\" y=\"%.0f\" fill=\"%s\">%s</text>\n", L + 10 + 160.0 * slot, H - 12.0, col, ss[i].name);
        }
    }
    P("<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">step (%.0f .. %.0f)</text>\n</svg>\n", W / 2, H - 28, gx0, gx1);
#undef P
    gc_status st = n < cap ? gc_write_text(path, o) : gc_error_set(GC_ERR_INVALID, "plot too large");
    free(o);
    return st;
}
