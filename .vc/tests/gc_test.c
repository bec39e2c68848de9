#include "gc_test.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static double philox_normal(uint64_t seed, uint64_t i)
{
    double u1 = gc_rand_uniform(seed, 0, 1, 0, 2 * i) + 1.0 / 33554432.0;
    double u2 = gc_rand_uniform(seed, 0, 1, 0, 2 * i + 1);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

gc_tensor *gc_test_randn(int ndim, const int64_t *shape, uint64_t seed, double scale)
{
    gc_tensor *t = gc_tensor_new(GC_F32, GC_CPU, ndim, shape);
    if (!t) return NULL;
    float *p = gc_tensor_data(t);
    for (int64_t i = 0, n = gc_tensor_numel(t); i < n; i++) p[i] = (float)(scale * philox_normal(seed, (uint64_t)i));
    return t;
}

gc_tensor *gc_test_uniform(int ndim, const int64_t *shape, uint64_t seed, double lo, double hi)
{
    gc_tensor *t = gc_tensor_new(GC_F32, GC_CPU, ndim, shape);
    if (!t) return NULL;
    float *p = gc_tensor_data(t);
    for (int64_t i = 0, n = gc_tensor_numel(t); i < n; i++)
        p[i] = (float)(lo + (hi - lo) * gc_rand_uniform(seed, 0, 2, 0, (uint64_t)i));
    return t;
}

gc_tensor *gc_test_param(int ndim, const int64_t *shape, uint64_t seed, double scale)
{
    gc_tensor *t = gc_test_randn(ndim, shape, seed, scale);
    if (t && gc_tensor_requires_grad(t, true) != GC_OK) { gc_tensor_release(t); return NULL; }
    return t;
}

gc_tensor *gc_test_ints(gc_dtype dt, int ndim, const int64_t *shape, uint64_t seed, int64_t lo, int64_t hi)
{
    gc_tensor *t = gc_tensor_new(dt, GC_CPU, ndim, shape);
    if (!t) return NULL;
    for (int64_t i = 0, n = gc_tensor_numel(t); i < n; i++) {
        int64_t v = lo + (int64_t)(gc_rand_uniform(seed, 0, 3, 0, (uint64_t)i) * (double)(hi - lo));
        if (v >= hi) v = hi - 1;
        if (dt == GC_I32) ((int32_t *)gc_tensor_data(t))[i] = (int32_t)v;
        else ((int64_t *)gc_tensor_data(t))[i] = v;
    }
    return t;
}

static double *host_copy(const gc_tensor *t)
{
    double *d = malloc(sizeof(double) * (size_t)(gc_tensor_numel(t) + 1));
    if (d && gc_tensor_to_host_f64(t, d) != GC_OK) { free(d); return NULL; }
    return d;
}

double gc_test_rel_err(const gc_tensor *a, const gc_tensor *b)
{
    if (!a || !b || gc_tensor_numel(a) != gc_tensor_numel(b)) return INFINITY;
    double *x = host_copy(a), *y = host_copy(b);
    double num = 0, den = 0;
    for (int64_t i = 0, n = gc_tensor_numel(a); x && y && i < n; i++) {
        if (!isfinite(x[i])) { num = INFINITY; break; }
        num += (x[i] - y[i]) * (x[i] - y[i]);
        den += y[i] * y[i];
    }
    bool ok = x && y;
    free(x);
    free(y);
    if (!ok) return INFINITY;
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* sum(f(in) * R) in double, no graph */
static bool eval_dot(gc_test_fn f, void *ctx, gc_tensor *const *in, const double *R, int64_t nR, double *out)
{
    bool prev = gc_grad_set_enabled(false);
    gc_pool *p = gc_pool_push();
    gc_tensor *y = f(in, ctx);
    bool ok = y && gc_tensor_numel(y) == nR;
    double s = 0;
    if (ok) {
        double *h = host_copy(y);
        ok = h != NULL;
        for (int64_t i = 0; ok && i < nR; i++) s += h[i] * R[i];
        free(h);
    }
    gc_pool_pop(p);
    gc_grad_set_enabled(prev);
    *out = s;
    return ok;
}

double gc_test_gradcheck(gc_test_fn f, void *ctx, int n, gc_tensor *const *in, const gc_gradcheck_opts *o)
{
    gc_gradcheck_opts d = {1e-2, 1e-3, 1e-2, 48};
    if (o) {
        if (o->eps > 0) d.eps = o->eps;
        if (o->atol > 0) d.atol = o->atol;
        if (o->rtol > 0) d.rtol = o->rtol;
        if (o->max_probe > 0) d.max_probe = o->max_probe;
    }
    for (int i = 0; i < n; i++) gc_tensor_zero_grad(in[i]);
    /* analytic */
    gc_tape *tape = gc_tape_init();
    gc_tape_begin(tape);
    gc_pool *p = gc_pool_push();
    gc_tensor *y = f(in, ctx);
    gc_tape_end(tape);
    if (!y) {
        fprintf(stderr, "gradcheck: forward failed: %s\n", gc_error_message());
        gc_pool_pop(p);
        gc_tape_free(tape);
        return INFINITY;
    }
    int64_t nR = gc_tensor_numel(y);
    gc_tensor *Rt = gc_test_randn(y->ndim, y->shape, 777, 1.0);
    double *R = host_copy(Rt);
    gc_status st = gc_backward(tape, 1, &y, &Rt);
    gc_pool_pop(p);
    gc_tape_free(tape);
    gc_tensor_release(Rt);
    if (st != GC_OK) {
        fprintf(stderr, "gradcheck: backward failed: %s\n", gc_error_message());
        free(R);
        return INFINITY;
    }
    double worst = 0;
    for (int i = 0; i < n; i++) {
        if (!gc_tensor_needs_grad(in[i])) continue;
        gc_tensor *x = in[i];
        double *ga = host_copy(gc_tensor_grad(x));
        float *xv = gc_tensor_data(x);
        int64_t nx = gc_tensor_numel(x);
        double amax = 0, nmax = 0;
        int probes = nx < d.max_probe ? (int)nx : d.max_probe;
        for (int k = 0; k < probes; k++) {
            int64_t j = nx <= d.max_probe ? k : (int64_t)(gc_rand_uniform(99, 0, 4, (uint32_t)i, (uint64_t)k) * (double)nx);
            float orig = xv[j];
            double lp, lm;
            xv[j] = (float)(orig + d.eps);
            bool ok = eval_dot(f, ctx, in, R, nR, &lp);
            xv[j] = (float)(orig - d.eps);
            ok = ok && eval_dot(f, ctx, in, R, nR, &lm);
            xv[j] = orig;
            if (!ok) { free(ga); free(R); return INFINITY; }
            double num = (lp - lm) / (2 * d.eps), ana = ga ? ga[j] : NAN;
            double r = fabs(ana - num) / (d.atol + d.rtol * fabs(num));
            if (!(r <= 1.0))
                fprintf(stderr, "gradcheck: input %d (%s) element %lld: analytic %.6g numeric %.6g\n", i,
                        gc_tensor_label(x), (long long)j, ana, num);
            if (!(r <= worst)) worst = r; /* NaN-safe */
            amax = fmax(amax, fabs(ana));
            nmax = fmax(nmax, fabs(num));
        }
        if (amax == 0 && nmax > d.atol) worst = INFINITY;
        free(ga);
    }
    free(R);
    return worst;
}

double gc_test_compare_devices(const char *label, gc_test_fn f, void *ctx, int n, gc_tensor *const *in_cpu, gc_dtype dt)
{
    if (!gc_cuda_available()) return -1;
    gc_tensor *in_gpu[16];
    if (n > 16) return INFINITY;
    double worst = 0;
    for (int i = 0; i < n; i++) {
        gc_tensor *x = in_cpu[i];
        gc_tensor_zero_grad(x);
        in_gpu[i] = gc_tensor_to(x, GC_CUDA0, gc_dtype_is_float(x->dtype) ? dt : x->dtype);
        if (!in_gpu[i] || (gc_tensor_needs_grad(x) && gc_tensor_requires_grad(in_gpu[i], true) != GC_OK)) {
            fprintf(stderr, "%s: copy to GPU failed: %s\n", label, gc_error_message());
            return INFINITY;
        }
    }
    gc_pool *p = gc_pool_push();
    gc_tensor *ys[2] = {NULL, NULL}, *Rt = NULL;
    for (int dev = 0; dev < 2; dev++) {
        gc_tensor *const *in = dev ? in_gpu : in_cpu;
        gc_tape *tape = gc_tape_init();
        gc_tape_begin(tape);
        gc_tensor *y = f(in, ctx);
        gc_tape_end(tape);
        if (!y) {
            fprintf(stderr, "%s: forward on %s failed: %s\n", label, dev ? "cuda" : "cpu", gc_error_message());
            gc_tape_free(tape);
            worst = INFINITY;
            break;
        }
        if (!Rt) Rt = gc_pool_add(gc_test_randn(y->ndim, y->shape, 4242, 1.0));
        ys[dev] = y;
        if (y->slot) {
            gc_tensor *r = dev ? gc_pool_add(gc_tensor_to(Rt, GC_CUDA0, y->dtype)) : Rt;
            if (gc_backward(tape, 1, &y, &r) != GC_OK) {
                fprintf(stderr, "%s: backward on %s failed: %s\n", label, dev ? "cuda" : "cpu", gc_error_message());
                worst = INFINITY;
            }
        }
        gc_tape_free(tape);
    }
    if (worst == 0) {
        double e = gc_test_rel_err(ys[1], ys[0]);
        printf("%-40s %-5s out      rel err %.2e\n", label, gc_dtype_name(dt), e);
        worst = fmax(worst, e);
        for (int i = 0; i < n; i++) {
            if (!gc_tensor_needs_grad(in_cpu[i])) continue;
            e = gc_test_rel_err(gc_tensor_grad(in_gpu[i]), gc_tensor_grad(in_cpu[i]));
            printf("%-40s %-5s grad[%d]  rel err %.2e\n", label, gc_dtype_name(dt), i, e);
            if (!(e <= worst)) worst = e;
        }
    }
    gc_pool_pop(p);
    for (int i = 0; i < n; i++) gc_tensor_release(in_gpu[i]);
    if (gc_error_code() != GC_OK) {
        fprintf(stderr, "%s: %s\n", label, gc_error_message());
        gc_error_clear();
    }
    return worst;
}

/* ---- the HF fixture tests ---- */

gc_device gc_test_device(void)
{
    const char *d = getenv("GC_TEST_DEVICE");
    return d && !strcmp(d, "cuda") ? GC_CUDA0 : GC_CPU;
}

gc_dtype gc_test_dtype(void)
{
    const char *t = getenv("GC_TEST_DTYPE");
    return t && !strcmp(t, "bf16") ? GC_BF16 : GC_F32;
}

bool gc_test_fixtures_start(const char *what, double tolerance)
{
    gc_device dev = gc_test_device();
    if (dev.type == GC_DEVICE_CUDA && !gc_cuda_available()) {
        printf("%s on cuda: no CUDA device (skipped)\n", what);
        return false;
    }
    printf("%s fixtures on %s in %s, tolerance %.0e\n", what, gc_device_name(dev), gc_dtype_name(gc_test_dtype()),
           tolerance);
    return true;
}

void gc_test_load_inputs(const char *dir, const char *name_a, gc_dtype dt_a, gc_tensor **a, const char *name_b,
                         gc_dtype dt_b, gc_tensor **b)
{
    char path[1100];
    snprintf(path, sizeof path, "%s/inputs.safetensors", dir);
    gc_st_file *in;
    ck_assert_msg(gc_st_open(path, &in) == GC_OK, "%s", gc_error_message());
    *a = gc_st_load(in, name_a, dt_a, GC_CPU);
    *b = gc_st_load(in, name_b, dt_b, GC_CPU);
    ck_assert(*a && *b);
    gc_st_close(in);
}

void gc_test_refs_open(gc_test_refs *r, const char *dir, bool required)
{
    char path[1100];
    snprintf(path, sizeof path, "%s/ref.safetensors", dir);
    r->file = NULL;
    if (required || access(path, R_OK) == 0)
        ck_assert_msg(gc_st_open(path, &r->file) == GC_OK, "%s", gc_error_message());
    double ss = 0, n = 0;
    r->n_grads = 0;
    for (int i = 0; r->file && i < gc_st_count(r->file); i++) {
        const gc_st_entry *e = gc_st_entry_at(r->file, i);
        if (strncmp(e->name, "grad.", 5)) continue;
        gc_tensor *t = gc_st_load(r->file, e->name, GC_F64, GC_CPU);
        const double *d = gc_tensor_data(t);
        for (int64_t j = 0; j < gc_tensor_numel(t); j++) ss += d[j] * d[j];
        n += (double)gc_tensor_numel(t);
        r->n_grads++;
        gc_tensor_release(t);
    }
    r->grad_rms = n ? sqrt(ss / n) : 0;
}

void gc_test_refs_close(gc_test_refs *r)
{
    if (r->file) gc_st_close(r->file);
    r->file = NULL;
}

double gc_test_norm(const gc_tensor *t)
{
    int64_t n = gc_tensor_numel(t);
    double *h = malloc(sizeof(double) * (size_t)(n + 1)), s = 0;
    ck_assert(h && gc_tensor_to_host_f64(t, h) == GC_OK);
    for (int64_t i = 0; i < n; i++) s += h[i] * h[i];
    free(h);
    return sqrt(s);
}

double gc_test_ref_err(const gc_test_refs *r, const char *name, const gc_tensor *got)
{
    gc_tensor *ref = gc_st_load(r->file, name, GC_F64, GC_CPU);
    ck_assert_msg(ref != NULL, "reference %s missing: %s", name, gc_error_message());
    gc_tensor *zeros = NULL;
    if (!got) got = zeros = gc_tensor_zeros(GC_F32, GC_CPU, ref->ndim, ref->shape);
    ck_assert_msg(gc_tensor_numel(ref) == gc_tensor_numel(got), "%s: %lld elements, reference %lld", name,
                  (long long)gc_tensor_numel(got), (long long)gc_tensor_numel(ref));
    /* e: ||got-ref|| / ||ref||, or ||got-ref|| if ref == 0 */
    double rn = gc_test_norm(ref), e = gc_test_rel_err(got, ref);
    double floor = !strncmp(name, "grad.", 5) ? 0.1 * r->grad_rms * sqrt((double)gc_tensor_numel(ref)) : 0;
    if (rn < floor) e = rn > 0 ? e * rn / floor : e / floor;
    gc_tensor_release(zeros);
    gc_tensor_release(ref);
    return e;
}

double gc_test_ref_check(const gc_test_refs *r, const char *label, const char *name, const gc_tensor *got,
                         double report_above)
{
    double e = gc_test_ref_err(r, name, got);
    if (!(e <= report_above)) fprintf(stderr, "%s: %s rel err %.3g\n", label, name, e);
    return e;
}

double gc_test_ref_check_grads(const gc_test_refs *r, const gc_params *ps, const char *label, double report_above)
{
    double worst = 0;
    for (int i = 0; i < ps->n; i++) {
        char name[512];
        snprintf(name, sizeof name, "grad.%s", ps->items[i].name);
        worst = fmax(worst, gc_test_ref_check(r, label, name, gc_tensor_grad(ps->items[i].value), report_above));
    }
    ck_assert_int_eq(ps->n, r->n_grads); /* every parameter's gradient was checked, and no more */
    return worst;
}

double *gc_test_flat_grads(const gc_params *ps)
{
    double *g = calloc((size_t)gc_params_count(ps, false) + 1, sizeof *g);
    ck_assert(g);
    int64_t k = 0;
    for (int i = 0; i < ps->n; i++) {
        gc_tensor *gr = gc_tensor_grad(ps->items[i].value);
        if (gr) ck_assert_int_eq(gc_tensor_to_host_f64(gr, g + k), GC_OK);
        k += gc_tensor_numel(ps->items[i].value);
    }
    return g;
}

void gc_test_tape_step(gc_tensor *(*fwd)(void *, gc_tensor *), void *ctx, gc_tensor *x, gc_tensor *g, double *out,
                       const char *label)
{
    gc_tape *t = gc_tape_init();
    gc_tape_begin(t);
    gc_pool *p = gc_pool_push();
    gc_tensor *y = fwd(ctx, x);
    gc_tape_end(t);
    ck_assert_msg(y && gc_shape_eq(y, g), "%s: %s", label, y ? "not the cotangent's shape" : gc_error_message());
    ck_assert_msg(gc_backward(t, 1, &y, &g) == GC_OK, "%s: %s", label, gc_error_message());
    ck_assert_int_eq(gc_tensor_to_host_f64(y, out), GC_OK);
    gc_pool_pop(p);
    gc_tape_free(t);
}

double gc_test_vec_rel_err(const double *a, const double *b, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(a[i])) return INFINITY;
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    return sqrt(num / den);
}

void gc_test_expect_config_errors(const char *dir, const char *prefix, int n, const char *const (*cases)[2],
                                  gc_test_load_fn load, void *ctx)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    for (int i = 0; i < n; i++) {
        FILE *fp = fopen(path, "w");
        ck_assert_ptr_nonnull(fp);
        fprintf(fp, "%s%s}", prefix, cases[i][0]);
        fclose(fp);
        ck_assert_int_eq(load(dir, ctx), GC_ERR_FORMAT);
        ck_assert_msg(strstr(gc_error_message(), "config.json") && strstr(gc_error_message(), cases[i][1]), "%s: %s",
                      cases[i][0], gc_error_message());
        gc_error_clear();
    }
}

static void write_variant(const char *src, const char *dir, const char *drop, const char *reshape, const char *extra,
                          const char *as_int);

void gc_test_write_variant(const char *src, const char *dir, const char *drop, const char *reshape, const char *extra)
{
    write_variant(src, dir, drop, reshape, extra, NULL);
}

void gc_test_write_variant_int(const char *src, const char *dir, const char *as_int)
{
    write_variant(src, dir, NULL, NULL, NULL, as_int);
}

static void write_variant(const char *src, const char *dir, const char *drop, const char *reshape, const char *extra,
                          const char *as_int)
{
    gc_st_dir *d;
    ck_assert_int_eq(gc_st_dir_open(src, &d), GC_OK);
    int n = gc_st_dir_count(d), k = 0;
    const char **names = calloc((size_t)n + 1, sizeof *names);
    gc_tensor **ts = calloc((size_t)n + 1, sizeof *ts);
    for (int i = 0; i < n; i++) {
        const char *nm = gc_st_dir_name_at(d, i);
        if (drop && !strcmp(nm, drop)) continue;
        gc_st_file *sf;
        const gc_st_entry *e;
        ck_assert_int_eq(gc_st_dir_lookup(d, nm, &sf, &e), GC_OK);
        names[k] = nm;
        if (reshape && !strcmp(nm, reshape)) {
            int64_t shape[GC_MAX_DIMS];
            memcpy(shape, e->shape, sizeof shape);
            shape[e->ndim - 2]++;
            ts[k] = gc_tensor_zeros(GC_F32, GC_CPU, e->ndim, shape);
        } else if (as_int && !strcmp(nm, as_int)) {
            ts[k] = gc_tensor_zeros(GC_I32, GC_CPU, e->ndim, e->shape);
        } else {
            ts[k] = gc_st_load(sf, nm, GC_F32, GC_CPU);
        }
        ck_assert(ts[k]);
        k++;
    }
    if (extra) {
        names[k] = extra;
        ts[k++] = gc_tensor_zeros(GC_F32, GC_CPU, 1, GC_SHAPE(3));
    }
    char path[1200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    ck_assert_int_eq(gc_st_save(path, k, names, ts, 0, NULL), GC_OK);
    for (int i = 0; i < k; i++) gc_tensor_release(ts[i]);
    free(ts);
    free(names);
    gc_st_dir_close(d);
    snprintf(path, sizeof path, "cp %.500s/config.json %.500s/", src, dir);
    ck_assert_int_eq(system(path), 0);
}

void gc_test_rm_rf(const char *dir)
{
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

static void clear_error(void) { gc_error_clear(); }

TCase *gc_test_tcase(const char *name)
{
    TCase *tc = tcase_create(name);
    tcase_add_checked_fixture(tc, clear_error, NULL);
    return tc;
}

int gc_test_run(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}

static void block_value(const char *name, int ndim, const int64_t *shape, float *out, void *user)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    uint32_t h = 2166136261u; /* FNV-1a of the name: a stream per parameter */
    for (const char *c = name; *c; c++) h = (h ^ (uint8_t)*c) * 16777619u;
    gc_init_normal(out, n, 0.2, *(const uint64_t *)user, h);
    if (strstr(name, "norm") && strstr(name, "weight"))
        for (int64_t i = 0; i < n; i++) out[i] += 1.0f;
}

void gc_test_block_init(gc_params *ps, gc_block *b, int64_t D, int64_t H, int64_t F, const gc_lora_options *lora,
                        uint64_t seed)
{
    gc_params_init(ps, gc_test_device(), gc_test_dtype());
    memset(b, 0, sizeof *b);
    b->ln1_w = gc_param_declare(ps, "l.norm1.weight", 1, GC_SHAPE(D));
    b->ln1_b = gc_param_declare(ps, "l.norm1.bias", 1, GC_SHAPE(D));
    b->ln2_w = gc_param_declare(ps, "l.norm2.weight", 1, GC_SHAPE(D));
    b->ln2_b = gc_param_declare(ps, "l.norm2.bias", 1, GC_SHAPE(D));
    ck_assert(b->ln1_w && b->ln1_b && b->ln2_w && b->ln2_b);
    const char *sites[6] = {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"};
    gc_lin *lins[6] = {&b->q, &b->k, &b->v, &b->o, &b->fc1, &b->fc2};
    for (int i = 0; i < 6; i++)
        ck_assert_int_eq(gc_lin_declare(ps, lins[i], "l", sites[i], i == 4 ? F : D, i == 5 ? F : D, true, lora), GC_OK);
    b->heads = H;
    b->act = GC_ACT_QUICK_GELU;
    b->eps = 1e-5;
    ck_assert_int_eq(gc_params_init_values(ps, block_value, &seed), GC_OK);
    if (lora) ck_assert_int_eq(gc_params_freeze_base(ps), GC_OK);
}

gc_tensor *gc_test_block_input(int64_t B, int64_t L, int64_t D, uint64_t seed, bool needs_grad)
{
    gc_tensor *h = gc_test_randn(3, GC_SHAPE(B, L, D), seed, 1.0);
    gc_tensor *x = gc_tensor_to(h, gc_test_device(), gc_test_dtype());
    gc_tensor_release(h);
    ck_assert(x);
    if (needs_grad) ck_assert_int_eq(gc_tensor_requires_grad(x, true), GC_OK);
    return x;
}

void gc_test_check_chunks(gc_test_step_fn step, void *fixture, const char *what, const int64_t *chunks, int n, double tol)
{
    for (int c = 0; c < n; c++) {
        char label[160];
        snprintf(label, sizeof label, "%s chunk %lld", what, (long long)chunks[c]);
        double e = step(fixture, chunks[c], label);
        ck_assert_msg(e < tol, "%s: worst relative error %.3g", label, e);
    }
}
