/* gcache bench: times full training steps (gradient cache forward/backward + AdamW)
 * of a named architecture with random weights on synthetic data, and reports the
 * median step time, peak device memory, pairs/s, achieved TFLOP/s and utilisation
 * against a bf16 GEMM ceiling measured at start-up on this GPU. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../autograd/gc_optim.h"
#include "../gradcache/gc_clip_task.h"
#include "../gradcache/gc_dinov3_task.h"
#include "gc_cli.h"
#include "gc_train_util.h"

typedef struct bench_args {
    const char *model, *device, *dtype, *pixels;
    int64_t batch, chunk, steps, warmup;
    bool no_cache, checkpointing, no_recompute, replay_all;
    int lora;
    const char *gemm_plan; /* NULL: GC_GEMM_PLAN's, if set */
} bench_args;

#define MAX_PHASES 8
typedef struct phase_log {
    gc_timer *t[MAX_PHASES];
    const char *name[MAX_PHASES];
    double wall[MAX_PHASES]; /* when the host reached the phase */
    int n;
} phase_log;

static double wall_ms(void) { return gc_now_s() * 1e3; }

static void on_phase(void *user, const char *phase)
{
    phase_log *pl = user;
    if (pl->n >= MAX_PHASES) return;
    pl->name[pl->n] = phase;
    pl->wall[pl->n] = wall_ms();
    gc_timer_record(pl->t[pl->n++]);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n ? (n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2])) : 0;
}

/* Forward FLOPs of a tower's blocks on N tokens: each block's matmuls, and the last one's
 * k and v on every token but the rest (q, o, the MLP, attention) on one row only: the
 * class token (CLIP's vision, DINOv3's class-token embedding) or the pooled EOS token
 * (CLIP's text). */
static double blocks_flops(int64_t layers, double D, double F, double N)
{
    double fl = (double)layers * (8 * N * D * D + 4 * N * D * F + 4 * N * N * D);
    if (layers) fl -= (N - 1) * (4 * D * D + 4 * D * F + 4 * N * D);
    return fl;
}

static double clip_blocks_flops(const gc_clip_tower_config *tw, double N)
{
    return blocks_flops(tw->layers, (double)tw->hidden, (double)tw->intermediate, N);
}

/* Forward GFLOP of one (image, text) pair: matmuls only, 2 per multiply-add; *image: the
 * image tower's share (tower 0, whose last chunk the gradient cache does not replay). */
static double clip_pair_flops(const gc_clip_config *c, int64_t text_len, double *image)
{
    const gc_clip_tower_config *v = &c->vision, *t = &c->text;
    double gp = (double)(v->image_size / v->patch), N = gp * gp + 1, D = (double)v->hidden;
    double fl = clip_blocks_flops(v, N);
    fl += 2 * (N - 1) * (double)(v->channels * v->patch * v->patch) * D + 2 * D * (double)c->projection_dim;
    *image = fl;
    /* the synthetic texts are text_len tokens long, EOS last: no padding is trimmed */
    return fl + clip_blocks_flops(t, (double)text_len) + 2 * (double)t->hidden * (double)c->projection_dim;
}

/* Forward GFLOP of one image through DINOv3 to its class-token embedding (a pair is two
 * of these). */
static double dinov3_image_flops(const gc_dinov3_config *c)
{
    double g = (double)(c->image_size / c->patch), N = g * g + 1 + (double)c->registers, D = (double)c->hidden;
    double F = (double)c->intermediate;
    return blocks_flops(c->layers, D, F, N) + 2 * g * g * (double)(c->channels * c->patch * c->patch) * D;
}

/* One model under test: its parameters, and one step's forward + backward. */
typedef struct bench_job {
    gc_params *params;
    double pair_flops;
    double tower0_flops;  /* tower 0's share of pair_flops */
    gc_gradcache *gc;
    gc_clip *clip;
    gc_clip_task clip_task;
    gc_dinov3 *dino;
    gc_dinov3_task dino_task;
    gc_tensor *in[2];
} bench_job;

/* The synthetic batch's pixels [B, 3, S, S] (host floats), in the compute dtype, in host
 * memory (the model uploads a chunk at a time, as gcache train feeds it) or on the device
 * (read in place, chunk by chunk). Converted on the host, so no full-batch f32 copy ever
 * sits on the device. */
static gc_tensor *bench_pixels(const float *px, int64_t B, int64_t S, gc_device where, gc_dtype dt)
{
    if (dt != GC_F32 && dt != GC_BF16) {
        gc_error_set(GC_ERR_DTYPE, "bench: pixels in %s", gc_dtype_name(dt));
        return NULL;
    }
    int64_t n = B * 3 * S * S;
    gc_tensor *h = gc_tensor_new(dt, GC_CPU, 4, GC_SHAPE(B, 3, S, S));
    if (!h) return NULL;
    if (dt == GC_F32) memcpy(gc_tensor_data(h), px, sizeof(float) * (size_t)n);
    else
        for (int64_t i = 0; i < n; i++) ((uint16_t *)gc_tensor_data(h))[i] = gc_f32_to_bf16(px[i]);
    if (where.type == GC_DEVICE_CPU) return h;
    gc_tensor *t = gc_tensor_to(h, where, dt);
    gc_tensor_release(h);
    return t;
}

/* Host inputs (--pixels host, CLIP's ids) are page-locked for a GPU run, so that each
 * chunk's upload is an asynchronous copy, as gcache train's loader buffers are. They are
 * written once, before the first step, and never again: no upload can see a rewrite. */
static gc_status pin_inputs(bench_job *j, gc_device dev)
{
    for (int i = 0; i < 2 && dev.type == GC_DEVICE_CUDA; i++) GC_TRY(gc_tensor_pin(j->in[i])); /* no-op on the device */
    return GC_OK;
}

static gc_status job_init(bench_job *j, const bench_args *a, gc_device dev, gc_dtype dt)
{
    memset(j, 0, sizeof *j);
    int64_t B = a->batch, chunk = a->no_cache ? 0 : a->chunk;
    gc_device where = strcmp(a->pixels, "device") ? GC_CPU : dev;
    if (!strncmp(a->model, "dinov3", 6)) {
        gc_dinov3_config cfg;
        GC_TRY(gc_dinov3_config_named(a->model, &cfg));
        gc_dinov3_options o = {.device = dev, .dtype = dt, .checkpointing = a->checkpointing,
                               .lora = {a->lora, 2.0 * a->lora, 0, "q_proj,k_proj,v_proj,o_proj"}};
        GC_TRY(gc_dinov3_init(&j->dino, &cfg, &o, 42));
        int64_t S = cfg.image_size, n = B * 3 * S * S;
        float *px = malloc(sizeof(float) * (size_t)n);
        if (!px) return gc_error_set(GC_ERR_OOM, "out of host memory");
        for (int v = 0; v < 2; v++) {
            for (int64_t i = 0; i < n; i++) px[i] = gc_rand_uniform(9, 0, (uint32_t)v, 0, (uint64_t)i) * 2 - 1;
            j->in[v] = bench_pixels(px, B, S, where, dt);
        }
        free(px);
        if (!j->in[0] || !j->in[1]) return GC_PENDING();
        GC_TRY(pin_inputs(j, dev));
        GC_TRY(gc_dinov3_task_init(&j->dino_task, j->dino, j->in[0], j->in[1], chunk, 0.1));
        j->params = gc_dinov3_params(j->dino);
        j->tower0_flops = dinov3_image_flops(&cfg);
        j->pair_flops = 2 * j->tower0_flops;
        j->gc = &j->dino_task.gc;
        return GC_OK;
    }
    gc_clip_config cfg;
    GC_TRY(gc_clip_config_named(a->model, &cfg));
    gc_clip_options opt = {.device = dev, .dtype = dt, .checkpointing = a->checkpointing, .lora_r = a->lora,
                           .lora_alpha = 2.0 * a->lora, .lora_targets = "q_proj,k_proj,v_proj,out_proj"};
    GC_TRY(gc_clip_init(&j->clip, &cfg, &opt, 42));
    /* synthetic batch: uniform pixels; 77 random tokens ending in the EOT id */
    int64_t S = cfg.vision.image_size, L = cfg.text.max_positions;
    float *px = malloc(sizeof(float) * (size_t)(B * 3 * S * S));
    int64_t *ids = malloc(sizeof(int64_t) * (size_t)(B * L));
    if (!px || !ids) { free(px); free(ids); return gc_error_set(GC_ERR_OOM, "out of host memory"); }
    for (int64_t i = 0; i < B * 3 * S * S; i++) px[i] = gc_rand_uniform(9, 0, 0, 0, (uint64_t)i) * 2 - 1;
    for (int64_t i = 0; i < B * L; i++)
        ids[i] = i % L == L - 1 ? cfg.text.vocab - 1 : (int64_t)(gc_rand_uniform(9, 0, 1, 0, (uint64_t)i) * (double)(cfg.text.vocab - 2));
    j->in[0] = bench_pixels(px, B, S, where, dt);
    j->in[1] = gc_tensor_from_data(GC_I64, GC_CPU, 2, GC_SHAPE(B, L), ids); /* pooling reads ids on the host */
    free(px);
    free(ids);
    if (!j->in[0] || !j->in[1]) return GC_PENDING();
    GC_TRY(pin_inputs(j, dev));
    gc_clip_task_init(&j->clip_task, j->clip, j->in[0], j->in[1], chunk);
    j->params = gc_clip_params(j->clip);
    j->pair_flops = clip_pair_flops(&cfg, L, &j->tower0_flops);
    j->gc = &j->clip_task.gc;
    return GC_OK;
}

static void job_free(bench_job *j)
{
    if (j->dino) gc_dinov3_task_free(&j->dino_task);
    gc_dinov3_free(j->dino);
    gc_clip_free(j->clip);
    gc_tensor_release(j->in[0]);
    gc_tensor_release(j->in[1]);
}

/* bf16 GEMM ceiling: 8192^3 through the library's GEMM wrapper, random operands. */
static double gemm_ceiling(gc_device dev)
{
    const int64_t n = 8192;
    gc_tensor *a = gc_tensor_new(GC_BF16, dev, 2, GC_SHAPE(n, n)), *b = gc_tensor_new(GC_BF16, dev, 2, GC_SHAPE(n, n));
    gc_tensor *c = gc_tensor_new(GC_BF16, dev, 2, GC_SHAPE(n, n));
    uint16_t *h = malloc(sizeof(uint16_t) * (size_t)(n * n));
    double tf = 0;
    if (a && b && c && h) {
        for (int64_t i = 0; i < n * n; i++)
            h[i] = gc_f32_to_bf16(gc_rand_uniform(3, 0, 0, 0, (uint64_t)i) - 0.5f);
        gc_memcpy(dev, gc_tensor_data(a), GC_CPU, h, sizeof(uint16_t) * (size_t)(n * n));
        gc_memcpy(dev, gc_tensor_data(b), GC_CPU, h, sizeof(uint16_t) * (size_t)(n * n));
        gc_gemm_args g = {.trans_b = true, .m = n, .n = n, .k = n, .a = gc_tensor_data(a), .lda = n, .b = gc_tensor_data(b),
                          .ldb = n, .c = gc_tensor_data(c), .ldc = n, .ab_dtype = GC_BF16, .c_dtype = GC_BF16,
                          .alpha = 1, .beta = 0};
        gc_timer *t0 = gc_timer_create(dev), *t1 = gc_timer_create(dev);
        for (int i = 0; i < 3; i++) gc_gemm(dev, &g);
        gc_timer_record(t0);
        for (int i = 0; i < 10; i++) gc_gemm(dev, &g);
        gc_timer_record(t1);
        double ms = 0;
        if (gc_timer_elapsed_ms(t0, t1, &ms) == GC_OK && ms > 0) tf = 2.0 * (double)n * n * n * 10 / (ms * 1e-3) / 1e12;
        gc_timer_free(t0);
        gc_timer_free(t1);
    }
    free(h);
    gc_tensor_release(a);
    gc_tensor_release(b);
    gc_tensor_release(c);
    gc_memory_release_cached(dev);
    return tf;
}

static int parse(int argc, char **argv, bench_args *a)
{
    *a = (bench_args){.model = "clip-vit-b16", .device = "cuda", .dtype = "bf16", .pixels = "device", .batch = 128,
                      .chunk = 64, .steps = 8, .warmup = 2};
    for (int i = 0; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "--no-cache")) { a->no_cache = true; continue; }
        if (!strcmp(f, "--checkpointing")) { a->checkpointing = true; continue; }
        /* --keep-norms: its name before the MLP activations were kept too */
        if (!strcmp(f, "--no-recompute") || !strcmp(f, "--keep-norms")) { a->no_recompute = true; continue; }
        if (!strcmp(f, "--replay-all")) { a->replay_all = true; continue; }
        if (i + 1 >= argc) return gc_cli_fail("bench: %s needs a value (or is unknown)", f);
        const char *v = argv[++i];
        int64_t lora = 0;
        int bad = 0;
        if (!strcmp(f, "--model")) a->model = v;
        else if (!strcmp(f, "--device")) a->device = v;
        else if (!strcmp(f, "--dtype")) a->dtype = v;
        else if (!strcmp(f, "--pixels")) a->pixels = v;
        else if (!strcmp(f, "--gemm-plan")) a->gemm_plan = v;
        /* the caps are the training config's (batch_size, lora_r); steps and warmup size
         * the per-step timing arrays */
        else if (!strcmp(f, "--batch")) bad = gc_cli_parse_int(f, v, 2, 1000000000, &a->batch);
        else if (!strcmp(f, "--chunk")) bad = gc_cli_parse_int(f, v, 1, 1000000000, &a->chunk);
        else if (!strcmp(f, "--steps")) bad = gc_cli_parse_int(f, v, 1, 1000000, &a->steps);
        else if (!strcmp(f, "--warmup")) bad = gc_cli_parse_int(f, v, 0, 1000000, &a->warmup);
        else if (!strcmp(f, "--lora")) {
            bad = gc_cli_parse_int(f, v, 0, 4096, &lora);
            a->lora = (int)lora; /* in range: no truncation */
        } else return gc_cli_fail("bench: unknown option '%s'", f);
        if (bad) return 1;
    }
    if (a->chunk > a->batch) return gc_cli_fail("bench: --chunk %lld is larger than --batch %lld", (long long)a->chunk, (long long)a->batch);
    if (strcmp(a->pixels, "host") && strcmp(a->pixels, "device"))
        return gc_cli_fail("bench: --pixels '%s': expected host or device", a->pixels);
    /* job_init picks the family by name; ask both so an unknown name lists every model */
    gc_clip_config cc;
    gc_dinov3_config dc;
    if (gc_clip_config_named(a->model, &cc) != GC_OK && gc_dinov3_config_named(a->model, &dc) != GC_OK) {
        gc_error_clear();
        return gc_cli_fail("bench: --model '%s': unknown (known: clip-vit-b16, clip-vit-b32, clip-tiny, dinov3-vit-b16, dinov3-tiny)", a->model);
    }
    gc_error_clear();
    return 0;
}

int gc_cli_bench(int argc, char **argv)
{
    bench_args a;
    if (parse(argc, argv, &a)) return 1;
    gc_clip_options opt = {0}; /* device and dtype */
    if (gc_cli_parse_dtype(a.dtype, &opt.dtype)) return 1;
    if (gc_device_parse(a.device, &opt.device) != GC_OK) return gc_cli_fail_status("bench --device");
    if (opt.device.type == GC_DEVICE_CUDA && !gc_cuda_available()) {
        gc_error_clear();
        return gc_cli_fail("bench: no usable CUDA device (use --device cpu --dtype f32 with a small --model)");
    }
    gc_device dev = opt.device;
    gc_recompute_set_enabled(!a.no_recompute); /* before: blocks keep their layernorm outputs and MLP activations */
    if (a.gemm_plan) gc_gemm_plan_use(a.gemm_plan); /* before the first GEMM (the ceiling's) */
    double peak_tf = dev.type == GC_DEVICE_CUDA ? gemm_ceiling(dev) : 0;
    bench_job job;
    if (job_init(&job, &a, dev, opt.dtype) != GC_OK) { int rc = gc_cli_fail_status("bench"); job_free(&job); return rc; }
    gc_adamw adam;
    gc_adamw_config ac = {.lr = 1e-5, .beta1 = 0.9, .beta2 = 0.98, .eps = 1e-6, .weight_decay = 0.1, .max_grad_norm = 1.0};
    if (gc_adamw_init(&adam, job.params, &ac) != GC_OK) { int rc = gc_cli_fail_status("bench"); job_free(&job); return rc; }
    int64_t B = a.batch;
    phase_log pl = {0};
    for (int i = 0; i < MAX_PHASES; i++) pl.t[i] = gc_timer_create(dev);
    job.gc->on_phase = on_phase;
    job.gc->replay_all = a.replay_all;
    job.gc->phase_user = &pl;
    gc_timer *t0 = gc_timer_create(dev), *t1 = gc_timer_create(dev);
    int64_t total = a.warmup + a.steps; /* both <= 1e6 (parse): no overflow */
    double *step_ms = calloc((size_t)total, sizeof(double)), *ph_ms[MAX_PHASES];
    for (int i = 0; i < MAX_PHASES; i++) ph_ms[i] = calloc((size_t)total, sizeof(double));
    double *host_ms = calloc((size_t)total, sizeof(double)); /* wall time to enqueue a step */
    double *lead_ms[MAX_PHASES]; /* per phase: how far the host was ahead of the GPU there */
    for (int i = 0; i < MAX_PHASES; i++) lead_ms[i] = calloc((size_t)total, sizeof(double));
    const char *ph_names[MAX_PHASES] = {0};
    int n_ph = 0, rc = 0;
    bool arrays = step_ms && host_ms, timers = t0 && t1;
    for (int i = 0; i < MAX_PHASES; i++) { arrays = arrays && ph_ms[i] && lead_ms[i]; timers = timers && pl.t[i]; }
    if (!timers) rc = gc_cli_fail_status("bench: timers");
    else if (!arrays) rc = gc_cli_fail("bench: out of host memory for %lld steps' timings", (long long)total);
    int64_t kept_rows = 0; /* tower 0's rows not replayed (the gradient cache says which) */
    uint64_t allocs_after_warmup = 0;
    for (int64_t s = 0; s < total && !rc; s++) {
        if (s == a.warmup) {
            gc_device_sync(dev);
            gc_memory_reset_peak(dev);
            allocs_after_warmup = gc_memory_stats_get(dev).system_allocs;
        }
        pl.n = 0;
        gc_gradcache_result res;
        const double h0 = wall_ms();
        gc_timer_record(t0);
        gc_status st = gc_params_zero_grad(job.params);
        if (st == GC_OK) st = gc_gradcache_step(job.gc, (gc_rand_context){1, (uint32_t)s, 0}, &res);
        if (st == GC_OK) kept_rows = res.kept_rows;
        if (st == GC_OK) st = gc_adamw_step(&adam, ac.lr);
        gc_timer_record(t1);
        host_ms[s] = wall_ms() - h0;
        if (st != GC_OK) { rc = gc_cli_fail_status("bench step"); break; }
        gc_gradcache_result_clear(&res);
        gc_timer_elapsed_ms(t0, t1, &step_ms[s]);
        n_ph = pl.n;
        for (int i = 0; i + 1 < pl.n; i++) {
            ph_names[i] = pl.name[i];
            gc_timer_elapsed_ms(pl.t[i], pl.t[i + 1], &ph_ms[i][s]);
        }
        for (int i = 0; i < pl.n; i++) {
            double g = 0;
            gc_timer_elapsed_ms(t0, pl.t[i], &g);
            lead_ms[i][s] = g - (pl.wall[i] - h0);
        }
        if (pl.n) {
            double opt_ms;
            gc_timer_elapsed_ms(pl.t[pl.n - 1], t1, &opt_ms);
            ph_ms[MAX_PHASES - 1][s] = opt_ms;
        }
    }
    if (!rc) {
        gc_memory_stats ms = gc_memory_stats_get(dev);
        double med = median(step_ms + a.warmup, (int)a.steps);
        double fwd = job.pair_flops;
        int passes = (a.no_cache ? 3 : 4) + (a.checkpointing ? 1 : 0) - (a.lora ? 1 : 0);
        /* the FLOPs run: tower 0's kept chunk is not replayed (unless --replay-all) */
        double kept = job.tower0_flops * (double)kept_rows;
        double tflops = (fwd * passes * (double)B - kept) / (med * 1e-3) / 1e12;
        char mode[96];
        if (a.no_cache) snprintf(mode, sizeof mode, "no cache");
        else snprintf(mode, sizeof mode, "chunk %lld", (long long)a.chunk);
        if (a.checkpointing) strncat(mode, ", checkpointing", sizeof mode - strlen(mode) - 1);
        if (a.lora) snprintf(mode + strlen(mode), sizeof mode - strlen(mode), ", LoRA r=%d", a.lora);
        if (a.no_recompute) strncat(mode, ", norms and activations kept", sizeof mode - strlen(mode) - 1);
        if (a.replay_all && !a.no_cache) strncat(mode, ", every chunk replayed", sizeof mode - strlen(mode) - 1);
        printf("gcache bench  %s  batch %lld  %s  %s %s  pixels on the %s%s\n", a.model, (long long)B, mode, a.device, a.dtype,
               a.pixels, gc_tensor_is_pinned(job.in[0]) ? " (pinned)" : "");
        printf("  step          %8.1f ms (median of %lld after %lld warm-up)\n", med, (long long)a.steps, (long long)a.warmup);
        for (int i = 0; i + 1 < n_ph; i++)
            printf("    %-10s  %8.1f ms   (the host %.1f ms ahead of the GPU as it began)\n", ph_names[i],
                   median(ph_ms[i] + a.warmup, (int)a.steps), median(lead_ms[i] + a.warmup, (int)a.steps));
        printf("    %-10s  %8.1f ms\n", "optimizer", median(ph_ms[MAX_PHASES - 1] + a.warmup, (int)a.steps));
        const double host = median(host_ms + a.warmup, (int)a.steps);
        /* about the step's time when the step reads its loss back at its end (one sync); the
         * leads above say whether the GPU ever waited on the host before that */
        printf("  host          %8.1f ms to enqueue a step (with its loss read back)\n", host);
        char plan[600];
        if (*gc_gemm_plan_summary(plan, sizeof plan)) printf("  gemm plan     %s\n", plan);
        printf("  peak memory   %8.2f GiB   (reserved %.2f GiB; %llu new allocations after warm-up)\n",
               (double)ms.peak / (1 << 30), (double)ms.reserved / (1 << 30),
               (unsigned long long)(ms.system_allocs - allocs_after_warmup));
        printf("  pairs/s       %8.0f\n", (double)B / (med * 1e-3));
        printf("  TFLOP/s       %8.1f   (%d passes x %.1f GFLOP/pair%s)\n", tflops, passes, fwd / 1e9,
               kept > 0 ? ", less tower 0's last chunk forward" : "");
        if (peak_tf > 0) printf("  utilisation   %8.1f %%  of the measured bf16 GEMM ceiling %.0f TFLOP/s\n", 100 * tflops / peak_tf, peak_tf);
        printf("{\"model\":\"%s\",\"batch\":%lld,\"chunk\":%lld,\"cache\":%s,\"checkpointing\":%s,\"lora\":%d,"
               "\"recompute\":%s,\"replay_all\":%s,\"pixels\":\"%s\","
               "\"step_ms\":%.2f,\"host_ms\":%.2f,\"peak_GiB\":%.3f,\"peak_bytes\":%zu,\"pairs_per_s\":%.1f,\"tflops\":%.1f,\"gemm_peak_tflops\":%.1f,"
               "\"new_allocs_after_warmup\":%llu}\n",
               a.model, (long long)B, (long long)a.chunk, a.no_cache ? "false" : "true", a.checkpointing ? "true" : "false",
               a.lora, a.no_recompute ? "false" : "true", a.replay_all ? "true" : "false", a.pixels, med, host, (double)ms.peak / (1 << 30), ms.peak, (double)B / (med * 1e-3), tflops, peak_tf,
               (unsigned long long)(ms.system_allocs - allocs_after_warmup));
    }
    for (int i = 0; i < MAX_PHASES; i++) { gc_timer_free(pl.t[i]); free(ph_ms[i]); }
    free(host_ms);
    for (int i = 0; i < MAX_PHASES; i++) free(lead_ms[i]);
    free(step_ms);
    gc_timer_free(t0);
    gc_timer_free(t1);
    gc_adamw_free(&adam);
    job_free(&job);
    return rc;
}
