#include "gc_test.h"

#include <stdlib.h>
#include <string.h>

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
