/* The GEMM wrapper (CPU reference here, cuBLASLt in matmul.cu) and the ops on it:
 * matmul and linear, forward and backward. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gc_kernel_util.h"

#ifdef GC_WITH_CUDA
gc_status gc_cuda_gemm(const gc_gemm_args *g);                         /* matmul.cu */
bool gc_cuda_gemm_sm90_fits(const gc_gemm_args *g);                    /* gemm_sm90.cu */
gc_status gc_cuda_sum_rows(const void *src, gc_dtype sdt, void *dst, gc_dtype ddt, int64_t rows, int64_t cols,
                           bool accumulate);                            /* matmul.cu */
const char *gc_cuda_gemm_plan_summary(char *buf, size_t n);              /* matmul.cu */
void gc_cuda_gemm_plan_reset(void);                                      /* matmul.cu */
void gc_cuda_gemm_plan_use(const char *path);                            /* matmul.cu */
gc_status gc_cuda_scale_grads(const gc_tensor *G, const gc_tensor *gbs, const gc_tensor *w, const gc_tensor *b,
                              const gc_tensor *s, gc_tensor *gw, bool acc_w, gc_tensor *gb, bool acc_b, gc_tensor *gs,
                              bool acc_s);                               /* matmul.cu */
#endif

void gc_gemm_plan_use(const char *path)
{
#ifdef GC_WITH_CUDA
    gc_cuda_gemm_plan_use(path);
#else
    (void)path;
#endif
}

void gc_gemm_plan_reset(void)
{
#ifdef GC_WITH_CUDA
    gc_cuda_gemm_plan_reset();
#endif
}

const char *gc_gemm_plan_summary(char *buf, size_t n)
{
#ifdef GC_WITH_CUDA
    return gc_cuda_gemm_plan_summary(buf, n);
#else
    if (n) buf[0] = '\0';
    return buf;
#endif
}

/* ---------------------------------------------------------------- CPU reference */

/* Row-major, f32, C = alpha op(A) op(B) + beta C (+ bias). Loop orders keep the inner
 * loop contiguous so the compiler vectorises it. */
static void cpu_gemm_one(const gc_gemm_args *g, const float *a, const float *b, float *c, const float *c_in)
{
    const int64_t m = g->m, n = g->n, k = g->k;
    const float alpha = g->alpha, beta = g->beta;
#pragma omp parallel for schedule(static) if (m * n * k > 32768)
    for (int64_t i = 0; i < m; i++) {
        float *cr = c + i * g->ldc;
        if (beta == 0.0f) memset(cr, 0, sizeof(float) * (size_t)n);
        else if (c_in)
            for (int64_t j = 0; j < n; j++) cr[j] = beta * c_in[i * g->ldc + j];
        else if (beta != 1.0f)
            for (int64_t j = 0; j < n; j++) cr[j] *= beta;
        if (!g->trans_b) { /* C[i,:] += A(i,p) B[p,:] */
            for (int64_t p = 0; p < k; p++) {
                float aip = alpha * (g->trans_a ? a[p * g->lda + i] : a[i * g->lda + p]);
                const float *br = b + p * g->ldb;
                for (int64_t j = 0; j < n; j++) cr[j] += aip * br[j];
            }
        } else if (!g->trans_a) { /* C[i,j] += A[i,:] . B[j,:] */
            const float *ar = a + i * g->lda;
            for (int64_t j = 0; j < n; j++) {
                const float *br = b + j * g->ldb;
                float s = 0.0f;
                for (int64_t p = 0; p < k; p++) s += ar[p] * br[p];
                cr[j] += alpha * s;
            }
        } else {
            for (int64_t j = 0; j < n; j++) {
                float s = 0.0f;
                for (int64_t p = 0; p < k; p++) s += a[p * g->lda + i] * b[j * g->ldb + p];
                cr[j] += alpha * s;
            }
        }
        if (g->epilogue == GC_EPI_BIAS)
            for (int64_t j = 0; j < n; j++) cr[j] += ((const float *)g->bias)[j];
    }
}

/* 0 off, 1 act, 2 all; -1: GC_GEMM_SM90 not read yet. Off by default: the kernel is
 * correct but slower than cuBLASLt and the activation's own pass (docs/BENCHMARKS.md,
 * session 9), until it has what cuBLASLt's kernels have (clusters, TMA stores). */
static int sm90_mode = -1;

/* the modes by number */
static const char *const sm90_modes[] = {"off", "act", "all", NULL};

int gc_name_index(const char *const *names, const char *v)
{
    for (int i = 0; v && names[i]; i++)
        if (!strcmp(v, names[i])) return i;
    return -1;
}

const char *gc_names_join(const char *const *names, char *buf, size_t n)
{
    if (n) buf[0] = '\0';
    for (int j = 0; names[j] && n; j++) snprintf(buf + strlen(buf), n - strlen(buf), "%s%s", j ? ", " : "", names[j]);
    return buf;
}

gc_status gc_gemm_set_sm90(const char *mode)
{
    const int i = gc_name_index(sm90_modes, mode);
    if (i >= 0) {
        sm90_mode = i;
        return GC_OK;
    }
    char list[64];
    return gc_error_set(GC_ERR_INVALID, "gemm sm90 mode '%s': expected one of %s", mode ? mode : "(null)",
                        gc_names_join(sm90_modes, list, sizeof list));
}

int gc_gemm_sm90_mode(void)
{
    if (sm90_mode < 0) { /* once; a value it does not take leaves it off (gc_ops_env_check says so) */
        const int i = gc_name_index(sm90_modes, getenv("GC_GEMM_SM90"));
        sm90_mode = i < 0 ? 0 : i;
    }
    return sm90_mode;
}

/* gemm_sm90.cu's schedule, for measuring it: each knob's values (the first the default),
 * its variable, and the index set (-1: the environment not read yet) */
static const char *const sm90_scheds[] = {"pingpong", "coop", NULL};
static const char *const sm90_bns[] = {"auto", "128", "256", NULL};
static const char *const sm90_clusters[] = {"1", "2", NULL};
static const struct { const char *var; const char *const *values; } sm90_knobs[3] = {
    {"GC_GEMM_SM90_SCHED", sm90_scheds},
    {"GC_GEMM_SM90_BN", sm90_bns},
    {"GC_GEMM_SM90_CLUSTER", sm90_clusters},
};
static int sm90_tune[3] = {-1, -1, -1};

gc_status gc_gemm_set_sm90_tuning(const char *sched, const char *bn, const char *cluster)
{
    const char *v[3] = {sched, bn, cluster};
    int idx[3];
    for (int i = 0; i < 3; i++) {
        idx[i] = v[i] ? gc_name_index(sm90_knobs[i].values, v[i]) : 0;
        if (idx[i] < 0) {
            char list[64];
            return gc_error_set(GC_ERR_INVALID, "gemm sm90 %s '%s': expected one of %s", sm90_knobs[i].var, v[i],
                                gc_names_join(sm90_knobs[i].values, list, sizeof list));
        }
    }
    memcpy(sm90_tune, idx, sizeof idx);
    return GC_OK;
}

void gc_gemm_sm90_tuning(int *coop, int *bn, int *cluster)
{
    if (sm90_tune[0] < 0) /* once; a value a knob does not take leaves its default (gc_ops_env_check says so) */
        for (int i = 0; i < 3; i++) {
            const int j = gc_name_index(sm90_knobs[i].values, getenv(sm90_knobs[i].var));
            sm90_tune[i] = j < 0 ? 0 : j;
        }
    static const int bns[] = {0, 128, 256}, clusters[] = {1, 2};
    *coop = sm90_tune[0] == 1, *bn = bns[sm90_tune[1]], *cluster = clusters[sm90_tune[2]];
}

/* var unset, or one of values; else the error that names it */
static gc_status env_check_one(const char *var, const char *const *values)
{
    const char *e = getenv(var);
    if (!e || !*e || gc_name_index(values, e) >= 0) return GC_OK;
    char list[64];
    return gc_error_set(GC_ERR_INVALID, "%s=%s: expected one of %s", var, e, gc_names_join(values, list, sizeof list));
}

gc_status gc_ops_env_check(void)
{
    GC_TRY(env_check_one("GC_ATTN_IMPL", gc_attention_impl_names));
    GC_TRY(env_check_one("GC_GEMM_SM90", sm90_modes));
    for (int i = 0; i < 3; i++) GC_TRY(env_check_one(sm90_knobs[i].var, sm90_knobs[i].values));
    return GC_OK;
}

bool gc_gemm_fuses_act(gc_device dev, const gc_gemm_args *g)
{
#ifdef GC_WITH_CUDA
    return dev.type == GC_DEVICE_CUDA && gc_gemm_sm90_mode() > 0 && gc_cuda_gemm_sm90_fits(g);
#else
    (void)dev, (void)g;
    return false;
#endif
}

gc_status gc_gemm(gc_device dev, const gc_gemm_args *g)
{
    if (g->m < 0 || g->n < 0 || g->k < 0) return gc_error_set(GC_ERR_SHAPE, "gemm: negative size");
    if (g->epilogue == GC_EPI_BIAS && !g->bias) return gc_error_set(GC_ERR_INVALID, "gemm: bias epilogue without a bias");
    if (g->pre && g->act == GC_ACT_NONE) return gc_error_set(GC_ERR_INVALID, "gemm: a pre-activation output without an activation");
    if (dev.type == GC_DEVICE_CUDA) return GC_CUDA_DISPATCH(gc_cuda_gemm(g));
    if (g->act != GC_ACT_NONE)
        return gc_error_set(GC_ERR_INVALID, "gemm: an activation epilogue on the CPU (gc_gemm_fuses_act is false there)");
    if (g->ab_dtype != GC_F32 || g->c_dtype != GC_F32)
        return gc_error_set(GC_ERR_DTYPE, "gemm on the CPU computes in f32 only (got %s x %s -> %s)",
                            gc_dtype_name(g->ab_dtype), gc_dtype_name(g->ab_dtype), gc_dtype_name(g->c_dtype));
    int64_t batch = g->batch > 1 ? g->batch : 1;
    for (int64_t z = 0; z < batch; z++)
        cpu_gemm_one(g, (const float *)g->a + z * g->stride_a, (const float *)g->b + z * g->stride_b,
                     (float *)g->c + z * g->stride_c, g->c_in ? (const float *)g->c_in + z * g->stride_c : NULL);
    return GC_OK;
}

/* dst[cols] (+)= sum over rows of src[rows, cols]: the bias gradient. */
static gc_status sum_rows(gc_device dev, const gc_tensor *src, gc_tensor *dst, bool acc)
{
    int64_t rows = gc_tensor_rows(src), cols = gc_tensor_cols(src);
    if (dev.type == GC_DEVICE_CUDA)
        return GC_CUDA_DISPATCH(gc_cuda_sum_rows(gc_tensor_data(src), src->dtype, gc_tensor_data(dst), dst->dtype, rows,
                                                 cols, acc));
    const float *s = gc_tensor_data(src);
    float *d = gc_tensor_data(dst);
    for (int64_t j = 0; j < cols; j++) {
        double t = 0;
        for (int64_t r = 0; r < rows; r++) t += s[r * cols + j];
        d[j] = (float)(acc ? d[j] + t : t);
    }
    return GC_OK;
}

/* ---------------------------------------------------------------- matmul */

/* One GEMM over contiguous row-major operands. A is [m,k] (or [k,m] if ta), etc. */
static gc_status gemm_plain(gc_device dev, bool ta, bool tb, int64_t m, int64_t n, int64_t k, const gc_tensor *A,
                            const gc_tensor *B, gc_tensor *C, bool acc, int64_t batch, bool b_shared)
{
    gc_gemm_args g = {
        .trans_a = ta, .trans_b = tb, .m = m, .n = n, .k = k,
        .a = gc_tensor_data(A), .lda = ta ? m : k,
        .b = gc_tensor_data(B), .ldb = tb ? k : n,
        .c = gc_tensor_data(C), .ldc = n,
        .ab_dtype = A->dtype, .c_dtype = C->dtype,
        .alpha = 1.0f, .beta = acc ? 1.0f : 0.0f,
        .batch = batch, .stride_a = m * k, .stride_b = b_shared ? 0 : k * n, .stride_c = m * n,
    };
    return gc_gemm(dev, &g);
}

/* iarg: 0 ta, 1 tb, 2 M, 3 N, 4 K, 5 batch. saved: a, b (contiguous). */
static gc_status matmul_backward(gc_node *nd, gc_tensor *gy)
{
    gc_tensor *a = nd->saved[0], *b = nd->saved[1];
    bool ta = nd->iarg[0], tb = nd->iarg[1];
    int64_t M = nd->iarg[2], N = nd->iarg[3], K = nd->iarg[4], batch = nd->iarg[5];
    bool acc;
    gc_tensor *ga = gc_grad_target(nd, 0, &acc);
    if (ga) { /* op(A) grad = gy op(B)^T */
        gc_status st = !ta ? gemm_plain(a->device, false, !tb, M, K, N, gy, b, ga, acc, batch, false)
                           : gemm_plain(a->device, tb, true, K, M, N, b, gy, ga, acc, batch, false);
        if (st != GC_OK) return st;
    } else if (nd->in[0]) return GC_PENDING();
    gc_tensor *gb = gc_grad_target(nd, 1, &acc);
    if (gb) { /* op(B) grad = op(A)^T gy */
        gc_status st = !tb ? gemm_plain(a->device, !ta, false, K, N, M, a, gy, gb, acc, batch, false)
                           : gemm_plain(a->device, true, ta, N, K, M, gy, a, gb, acc, batch, false);
        if (st != GC_OK) return st;
    } else if (nd->in[1]) return GC_PENDING();
    return GC_OK;
}

gc_tensor *gc_matmul(gc_tensor *a, gc_tensor *b, bool ta, bool tb)
{
    if (!a || !b) return NULL;
    gc_tensor *ins[2] = {a, b};
    if (!gc_check_same_device("matmul", 2, ins) || !gc_check_float("matmul", a) || !gc_check_same_dtype("matmul", a, b))
        return NULL;
    char sa[GC_SHAPE_STR_LEN], sb[GC_SHAPE_STR_LEN];
    if (a->ndim < 2 || b->ndim < 2) goto bad;
    int64_t M = ta ? a->shape[a->ndim - 1] : a->shape[a->ndim - 2];
    int64_t K = ta ? a->shape[a->ndim - 2] : a->shape[a->ndim - 1];
    int64_t Kb = tb ? b->shape[b->ndim - 1] : b->shape[b->ndim - 2];
    int64_t N = tb ? b->shape[b->ndim - 2] : b->shape[b->ndim - 1];
    if (K != Kb) goto bad;
    if (b->ndim == 2 && a->ndim > 2) {
        if (ta) goto bad;
        /* b shared by every batch entry: one GEMM over all rows of a */
        gc_tensor *a2 = gc_view(a, 2, GC_SHAPE(gc_tensor_rows(a), K));
        gc_tensor *y2 = gc_matmul(a2, b, false, tb);
        int64_t sh[GC_MAX_DIMS];
        memcpy(sh, a->shape, sizeof sh);
        sh[a->ndim - 1] = N;
        return gc_view(y2, a->ndim, sh);
    }
    if (a->ndim != b->ndim) goto bad;
    int64_t batch = 1;
    for (int i = 0; i < a->ndim - 2; i++) {
        if (a->shape[i] != b->shape[i]) goto bad;
        batch *= a->shape[i];
    }
    gc_tensor *ac = gc_contiguous(a), *bc = gc_contiguous(b);
    if (!ac || !bc) return NULL;
    int64_t sh[GC_MAX_DIMS];
    memcpy(sh, a->shape, sizeof sh);
    sh[a->ndim - 2] = M;
    sh[a->ndim - 1] = N;
    gc_tensor *y = gc_op_new(a->dtype, a->device, a->ndim, sh);
    if (!y || gemm_plain(a->device, ta, tb, M, N, K, ac, bc, y, false, batch, false) != GC_OK) return NULL;
    gc_tensor *in[2] = {ac, bc};
    gc_node *nd = gc_autograd_record("matmul", matmul_backward, y, 2, in, 2, in);
    if (nd) {
        int64_t args[6] = {ta, tb, M, N, K, batch};
        memcpy(nd->iarg, args, sizeof args);
    }
    return y;
bad:
    gc_error_set(GC_ERR_SHAPE, "matmul: %s %s%s and %s %s%s do not multiply", gc_tensor_label(a), gc_shape_str(a, sa, sizeof sa),
                 ta ? "^T" : "", gc_tensor_label(b), gc_shape_str(b, sb, sizeof sb), tb ? "^T" : "");
    return NULL;
}

/* ---------------------------------------------------------------- linear */

/* ---------------------------------------------------------------- the layer scale, folded
 *
 * y = (x w^T + b) s with s [out] (DINOv3's layer scale) is the linear of the weight ws = s w
 * (row j times s_j) and the bias bs = s b: one GEMM, where the product had been a pass of its
 * own over the output, and the output need not be kept for s's gradient. The gradients,
 * from G = gy^T x (ws's, f32 [out, in]: weight-sized, not rounded to the weight's dtype) and
 * gbs = the column sums of gy (bs's):
 *   gw = s G (rows),   gb = s gbs,   gs = rowsum(G w) + gbs b.
 * ws and bs are made anew each forward (small: [out, in]), so s may change between steps. */

/* ws = s w, bs = s b (b may be NULL), not recorded; s checked against w. NULL: error set. */
static gc_tensor *fold_scale(gc_tensor *w, gc_tensor *b, gc_tensor *s, gc_tensor **bs)
{
    char sw[GC_SHAPE_STR_LEN], ss[GC_SHAPE_STR_LEN];
    if (w->ndim != 2 || s->ndim != 1 || s->shape[0] != w->shape[0] || s->dtype != w->dtype ||
        !gc_device_eq(s->device, w->device)) {
        gc_error_set(GC_ERR_SHAPE, "linear: layer scale %s %s %s does not fit weight %s %s %s", gc_tensor_label(s),
                     gc_dtype_name(s->dtype), gc_shape_str(s, ss, sizeof ss), gc_tensor_label(w), gc_dtype_name(w->dtype),
                     gc_shape_str(w, sw, sizeof sw));
        return NULL;
    }
    bool prev = gc_grad_set_enabled(false);
    gc_tensor *ws = gc_mul(w, gc_view(s, 2, GC_SHAPE(s->shape[0], 1)));
    *bs = b ? gc_mul(b, s) : NULL;
    gc_grad_set_enabled(prev);
    return ws && (!b || *bs) ? ws : NULL;
}

/* The CPU reference of gw (+)= s G, gb (+)= s gbs, gs (+)= rowsum(G w) + gbs b (f32; any
 * output may be NULL; G is NULL when neither gw nor gs is wanted, gbs when there is no bias
 * or neither gb nor gs is wanted). */
static void cpu_scale_grads(const float *G, const float *gbs, const float *w, const float *b, const float *s, float *gw,
                            bool acc_w, float *gb, bool acc_b, float *gs, bool acc_s, int64_t out, int64_t in)
{
    for (int64_t j = 0; j < out; j++) {
        double t = 0;
        for (int64_t i = 0; G && i < in; i++) {
            const float g = G[j * in + i];
            if (gw) gw[j * in + i] = (acc_w ? gw[j * in + i] : 0.0f) + g * s[j];
            t += (double)g * w[j * in + i];
        }
        if (gbs && gb) gb[j] = (acc_b ? gb[j] : 0.0f) + gbs[j] * s[j];
        if (gbs) t += (double)gbs[j] * b[j];
        if (gs) gs[j] = (float)(acc_s ? gs[j] + t : t);
    }
}

/* Does a linear node's weight_grads read the GEMM's input a? (the bias gradient alone
 * does not, unless a layer scale's gradient needs G = gy^T a) */
static bool grads_read_input(const gc_node *nd, bool scaled) { return nd->in[1] || (scaled && (nd->in[2] || nd->in[4])); }

/* The gradients of w (input 1), b (input 2) and, in a node with a layer scale (scaled:
 * input 4; saved[si] = s, saved[si + 1] = b), the scale, of a linear whose GEMM read a
 * [R, in] (x, or act(x); NULL when !grads_read_input) and w [out, in]. */
static gc_status weight_grads(gc_node *nd, gc_tensor *gy, gc_tensor *a, gc_tensor *w, int si, bool scaled)
{
    int64_t R = gc_tensor_rows(gy), out = w->shape[0], in = w->shape[1];
    gc_device dev = gy->device;
    bool acc_w, acc_b, acc_s = false;
    gc_tensor *gw = gc_grad_target(nd, 1, &acc_w), *gb = gc_grad_target(nd, 2, &acc_b);
    if (!scaled) {
        if (gw) GC_TRY(gemm_plain(dev, true, false, out, in, R, gy, a, gw, acc_w, 1, false));
        if (gb) GC_TRY(sum_rows(dev, gy, gb, acc_b));
        return GC_OK;
    }
    gc_tensor *gs = gc_grad_target(nd, 4, &acc_s), *s = nd->saved[si], *b = nd->saved[si + 1];
    if (!gw && !gb && !gs) return GC_OK;
    gc_pool *p = gc_pool_push();
    gc_tensor *G = gw || gs ? gc_pool_add(gc_tensor_new(GC_F32, dev, 2, GC_SHAPE(out, in))) : NULL;
    gc_tensor *gbs = b && (gb || gs) ? gc_pool_add(gc_tensor_new(GC_F32, dev, 1, GC_SHAPE(out))) : NULL;
    gc_status st = ((gw || gs) && !G) || (b && (gb || gs) && !gbs) ? GC_PENDING() : GC_OK;
    if (st == GC_OK && G) st = gemm_plain(dev, true, false, out, in, R, gy, a, G, false, 1, false);
    if (st == GC_OK && gbs) st = sum_rows(dev, gy, gbs, false);
    if (st == GC_OK && dev.type == GC_DEVICE_CUDA)
        st = GC_CUDA_DISPATCH(gc_cuda_scale_grads(G, gbs, w, b, s, gw, acc_w, gb, acc_b, gs, acc_s));
    else if (st == GC_OK)
        cpu_scale_grads(G ? gc_tensor_data(G) : NULL, gbs ? gc_tensor_data(gbs) : NULL, gc_tensor_data(w),
                        b ? gc_tensor_data(b) : NULL, gc_tensor_data(s), gw ? gc_tensor_data(gw) : NULL, acc_w,
                        gb ? gc_tensor_data(gb) : NULL, acc_b, gs ? gc_tensor_data(gs) : NULL, acc_s, out, in);
    gc_pool_pop(p);
    return st;
}

/* saved: x [..., in] contiguous (R rows), w [out, in]; with a layer scale also ws = s w, s,
 * b. inputs: x, w, b, res, s. */
static gc_status linear_backward(gc_node *nd, gc_tensor *gy)
{
    gc_tensor *x = nd->saved[0], *w = nd->saved[1];
    gc_tensor *wg = nd->n_saved > 2 ? nd->saved[2] : w; /* the weight the GEMM read */
    int64_t R = gc_tensor_rows(x), in = gc_tensor_cols(x), out = w->shape[0];
    gc_device dev = x->device;
    bool acc;
    gc_status st;
    gc_tensor *gx = gc_grad_target(nd, 0, &acc);
    if (gx && (st = gemm_plain(dev, false, false, R, in, out, gy, wg, gx, acc, 1, false)) != GC_OK) return st;
    if ((st = weight_grads(nd, gy, x, w, 3, nd->n_in > 4)) != GC_OK) return st;
    if (nd->in[3] && (st = gc_grad_pass(nd, 3, gy)) != GC_OK) return st; /* the residual; gy's last reader */
    for (int i = 0; i < nd->n_in; i++)
        if (nd->in[i] && !nd->in[i]->grad) return GC_PENDING();
    return GC_OK;
}

/* res [..., out] checked against y's shape and dtype: contiguous, or NULL with the error set */
static gc_tensor *residual_of(gc_tensor *res, const gc_tensor *y)
{
    if (res->ndim != y->ndim || memcmp(res->shape, y->shape, sizeof(int64_t) * (size_t)y->ndim) || res->dtype != y->dtype ||
        !gc_device_eq(res->device, y->device)) {
        char sr[GC_SHAPE_STR_LEN], sy[GC_SHAPE_STR_LEN];
        gc_error_set(GC_ERR_SHAPE, "linear: residual %s %s %s does not match the output %s %s",
                     gc_tensor_label(res), gc_dtype_name(res->dtype), gc_shape_str(res, sr, sizeof sr),
                     gc_dtype_name(y->dtype), gc_shape_str(y, sy, sizeof sy));
        return NULL;
    }
    return gc_contiguous(res);
}

/* y = (x w^T + b) s (+ res, as the GEMM's C input when res is not NULL); s may be NULL (none).
 * a_out: *a_out = act(y) as well, off the tape (gc_linear_and_act): from the GEMM's epilogue where
 * gc_gemm_fuses_act, else a pass of its own. With nothing to record y is not needed then,
 * and the epilogue writes only act(y), which is also what is returned. */
static gc_tensor *linear_impl_act(gc_tensor *x, gc_tensor *w, gc_tensor *b, gc_tensor *s, gc_tensor *res, gc_act act,
                                  gc_tensor **a_out, gc_tensor **xb_out)
{
    if (!x || !w) return NULL;
    gc_tensor *ins[5] = {x, w, b, res, s};
    if (!gc_check_same_device("linear", 5, ins) || !gc_check_float("linear", x) || !gc_check_same_dtype("linear", x, w) ||
        (b && !gc_check_same_dtype("linear", x, b)))
        return NULL;
    int64_t in = gc_tensor_cols(x), out = w->ndim == 2 ? w->shape[0] : -1;
    if (x->ndim < 1 || w->ndim != 2 || w->shape[1] != in || (b && (b->ndim != 1 || b->shape[0] != out))) {
        char sx[GC_SHAPE_STR_LEN], sw[GC_SHAPE_STR_LEN];
        gc_error_set(GC_ERR_SHAPE, "linear: input %s %s does not fit weight %s %s%s", gc_tensor_label(x),
                     gc_shape_str(x, sx, sizeof sx), gc_tensor_label(w), gc_shape_str(w, sw, sizeof sw),
                     b && b->ndim == 1 && b->shape[0] != out ? " (or its bias)" : "");
        return NULL;
    }
    int64_t R = gc_tensor_rows(x);
    /* x itself is the input, its rows [R, in] for the GEMMs: no reshape node, whose
     * gradient only one of several linears reading x (q, k, v) could take over; the
     * others' backward adds into x's gradient in the GEMM (beta 1), not with a copy */
    gc_tensor *xc = gc_contiguous(x);
    gc_tensor *wc = gc_contiguous(w);
    gc_tensor *bc = b ? gc_contiguous(b) : NULL, *sc = s ? gc_contiguous(s) : NULL;
    if (!xc || !wc || (b && !bc) || (s && !sc)) return NULL;
    gc_tensor *bs = bc, *ws = s ? fold_scale(wc, bc, sc, &bs) : wc; /* the weights the GEMM reads */
    if (!ws) return NULL;
    int64_t sh[GC_MAX_DIMS];
    memcpy(sh, x->shape, sizeof sh);
    sh[x->ndim - 1] = out;
    gc_tensor *y = gc_op_new(x->dtype, x->device, x->ndim, sh);
    if (!y) return NULL;
    gc_gemm_args g = {
        .trans_a = false, .trans_b = true, .m = R, .n = out, .k = in,
        .a = gc_tensor_data(xc), .lda = in, .b = gc_tensor_data(ws), .ldb = in, .c = gc_tensor_data(y), .ldc = out,
        .ab_dtype = x->dtype, .c_dtype = y->dtype, .alpha = 1.0f, .beta = 0.0f,
        .epilogue = b ? GC_EPI_BIAS : GC_EPI_NONE, .bias = b ? gc_tensor_data(bs) : NULL,
    };
    gc_tensor *rc = res ? residual_of(res, y) : NULL;
    if (res) {
        if (!rc) return NULL;
        g.c_in = gc_tensor_data(rc), g.beta = 1.0f;
    }
    gc_tensor *in5[5] = {xc, wc, bc, rc, sc}, *sv[5] = {xc, wc, ws, sc, bc};
    if (a_out) {
        *a_out = NULL;
        if (xb_out) *xb_out = NULL;
        g.act = act;
        if (act != GC_ACT_NONE && gc_gemm_fuses_act(x->device, &g)) {
            const bool record = gc_autograd_should_record(5, in5);
            gc_tensor *a = record ? gc_op_new(x->dtype, x->device, x->ndim, sh) : y;
            if (!a) return NULL;
            g.pre = record ? gc_tensor_data(y) : NULL;
            g.c = gc_tensor_data(a);
            if (gc_gemm(x->device, &g) != GC_OK) return NULL;
            *a_out = a;
            if (!record) return a;
        } else {
            /* the bias left to the activation's pass, act(y + b): its backward then makes
             * b's gradient from the gradient it has just made (gc_linear_act_given's xb),
             * where the linear's would read that gradient again */
            const bool defer = b && xb_out && act != GC_ACT_NONE;
            g.act = GC_ACT_NONE;
            if (defer) g.epilogue = GC_EPI_NONE, g.bias = NULL, in5[2] = NULL;
            if (gc_gemm(x->device, &g) != GC_OK) return NULL;
            bool prev = gc_grad_set_enabled(false);
            *a_out = act == GC_ACT_NONE ? y : gc_act_bias_apply(y, defer ? bs : NULL, act);
            gc_grad_set_enabled(prev);
            if (!*a_out) return NULL;
            if (defer) *xb_out = bc;
        }
    } else if (gc_gemm(x->device, &g) != GC_OK) {
        return NULL;
    }
    gc_autograd_record("linear", linear_backward, y, s ? 5 : 4, in5, s ? 5 : 2, sv);
    return y;
}

static gc_tensor *linear_impl(gc_tensor *x, gc_tensor *w, gc_tensor *b, gc_tensor *s, gc_tensor *res)
{
    return linear_impl_act(x, w, b, s, res, GC_ACT_NONE, NULL, NULL);
}

gc_tensor *gc_linear(gc_tensor *x, gc_tensor *w, gc_tensor *b) { return linear_impl(x, w, b, NULL, NULL); }

gc_tensor *gc_linear_res(gc_tensor *x, gc_tensor *w, gc_tensor *b, gc_tensor *res)
{
    if (!res) {
        gc_error_set(GC_ERR_INVALID, "linear: NULL residual");
        return NULL;
    }
    return linear_impl(x, w, b, NULL, res);
}

gc_tensor *gc_linear_scaled(gc_tensor *x, gc_tensor *w, gc_tensor *b, gc_tensor *s, gc_tensor *res)
{
    if (!s) {
        gc_error_set(GC_ERR_INVALID, "linear: NULL layer scale");
        return NULL;
    }
    return linear_impl(x, w, b, s, res);
}

/* ---------------------------------------------------------------- linear of an activation */

/* saved: x (pre-activation, [R, in]), w, a = act(x + xb) when recomputation is off (else
 * NULL), ws = s w (NULL: no layer scale), s, b (both NULL without a scale), xb (the
 * activation's bias, [in], or NULL). inputs: x, w, b, res, s, xb. iarg[0]: act; iarg[1]: a
 * layer scale.
 * dW needs a: kept, or recomputed. Where only this node holds x, the activation's backward
 * writes a over x as it makes x's gradient (x read once, no buffer of its own), and dW
 * comes after; otherwise a is made first and freed before da is, one [R, in] buffer at the
 * peak either way. da = gy W goes through the activation's backward straight into x's
 * gradient (in place there when that gradient is new), which also sums xb's gradient. */
static gc_status linear_act_backward(gc_node *nd, gc_tensor *gy)
{
    gc_tensor *x = nd->saved[0], *w = nd->saved[1], *kept = nd->saved[2], *xb = nd->saved[6];
    gc_tensor *wg = nd->saved[3] ? nd->saved[3] : w; /* the weight the GEMM read */
    const bool scaled = nd->iarg[1] != 0, need_a = grads_read_input(nd, scaled), wants_x = nd->in[0] || nd->in[5];
    int64_t R = x->shape[0], in = x->shape[1], out = w->shape[0];
    gc_device dev = x->device;
    gc_act act = (gc_act)nd->iarg[0];
    const bool reuse = need_a && !kept && wants_x && x->refcount == 1 && x->storage->refcount == 1 &&
                       !x->storage->recompute && !x->storage->release;
    gc_status st = GC_OK;
    if (!reuse && need_a) {
        gc_pool *p = gc_pool_push();
        bool prev = gc_grad_set_enabled(false);
        gc_tensor *a = kept ? kept : gc_act_bias_apply(x, xb, act);
        gc_grad_set_enabled(prev);
        st = a ? weight_grads(nd, gy, a, w, 4, scaled) : GC_PENDING();
        gc_pool_pop(p);
    } else if (!reuse) {
        st = weight_grads(nd, gy, NULL, w, 4, scaled);
    }
    if (st == GC_OK && wants_x) {
        bool acc = false, acc_xb = false;
        gc_tensor *gx = gc_grad_target(nd, 0, &acc), *gxb = gc_grad_target(nd, 5, &acc_xb);
        const bool in_place = gx && !acc && gx->dtype == x->dtype && gc_tensor_is_contiguous(gx);
        gc_tensor *da = in_place ? gx : gc_op_new(x->dtype, dev, 2, GC_SHAPE(R, in));
        st = da && (gx || !nd->in[0]) && (gxb || !nd->in[5]) ? gemm_plain(dev, false, false, R, in, out, gy, wg, da, false, 1, false)
                                                             : GC_PENDING();
        if (st == GC_OK)
            st = gc_act_backward_into(gx ? gx : da, gx && acc, da, x, xb, act, gxb, acc_xb, reuse ? x : NULL);
        if (st == GC_OK && reuse) st = weight_grads(nd, gy, x, w, 4, scaled); /* x holds act(x + xb) now */
    }
    if (st == GC_OK && nd->in[3]) st = gc_grad_pass(nd, 3, gy); /* the residual; gy's last reader */
    for (int i = 0; st == GC_OK && i < nd->n_in; i++)
        if (nd->in[i] && !nd->in[i]->grad) st = GC_PENDING();
    return st;
}

/* given: act(x + xb) already made (gc_linear_and_act: by the GEMM that made x), or NULL;
 * xb: the activation's bias [in] (the first linear's, left out of its GEMM), or NULL */
static gc_tensor *linear_act_impl(gc_tensor *x, gc_act act, gc_tensor *w, gc_tensor *b, gc_tensor *s, gc_tensor *res,
                                  gc_tensor *given, gc_tensor *xb)
{
    if (!x || !w) return NULL;
    gc_tensor *ins[6] = {x, w, b, res, s, xb};
    if (xb && (xb->ndim != 1 || xb->shape[0] != gc_tensor_cols(x) || xb->dtype != x->dtype || !gc_device_eq(xb->device, x->device))) {
        char sb[GC_SHAPE_STR_LEN], sx[GC_SHAPE_STR_LEN];
        gc_error_set(GC_ERR_SHAPE, "linear_act: activation bias %s %s %s does not fit the input %s %s", gc_tensor_label(xb),
                     gc_dtype_name(xb->dtype), gc_shape_str(xb, sb, sizeof sb), gc_dtype_name(x->dtype),
                     gc_shape_str(x, sx, sizeof sx));
        return NULL;
    }
    gc_tensor *xbc = xb ? gc_contiguous(xb) : NULL;
    if (xb && !xbc) return NULL;
    if (!gc_autograd_should_record(6, ins)) {
        if (given) return linear_impl(given, w, b, s, res);
        bool prev = gc_grad_set_enabled(false); /* (nothing to record: an off-tape pass) */
        gc_tensor *a = gc_act_bias_apply(gc_contiguous(x), xbc, act);
        gc_grad_set_enabled(prev);
        return linear_impl(a, w, b, s, res);
    }
    int64_t R = gc_tensor_rows(x), in = gc_tensor_cols(x);
    gc_tensor *x2 = gc_view(x, 2, GC_SHAPE(R, in));
    /* the residual as [R, out] like y below, when it has y's shape [..., out] (else linear_impl says why) */
    gc_tensor *r2 = res;
    if (res && w->ndim == 2 && res->ndim == x->ndim && gc_tensor_cols(res) == w->shape[0] &&
        !memcmp(res->shape, x->shape, sizeof(int64_t) * (size_t)(x->ndim - 1)))
        r2 = gc_view(gc_contiguous(res), 2, GC_SHAPE(R, w->shape[0]));
    /* taken before the activation is kept, so no failure comes between its retain and the record */
    gc_tensor *wc = gc_contiguous(w), *bc = b ? gc_contiguous(b) : NULL, *sc = s ? gc_contiguous(s) : NULL;
    if (!x2 || (res && !r2) || !wc || (b && !bc) || (s && !sc)) return NULL;
    gc_tensor *bs = bc, *ws = s ? fold_scale(wc, bc, sc, &bs) : wc;
    if (!ws) return NULL;
    bool prev = gc_grad_set_enabled(false); /* the node below stands for both ops */
    gc_pool *p = gc_pool_push();
    /* the activation [R, in] is freed here and recomputed in backward, unless
     * recomputation is off (gc_recompute_set_enabled: memory for speed) */
    const bool keep = !gc_recompute_enabled();
    gc_tensor *a = given ? gc_view(given, 2, GC_SHAPE(R, in)) : gc_act_bias_apply(gc_contiguous(x2), xbc, act);
    gc_tensor *y = gc_pool_keep(linear_impl(a, ws, bs, NULL, r2));
    if (keep && a) gc_tensor_retain(a);
    gc_pool_pop(p);
    gc_grad_set_enabled(prev);
    if (!y) {
        if (keep && a) gc_tensor_release(a);
        return NULL;
    }
    gc_tensor *in6[6] = {x2, wc, bc, r2, sc, xbc};
    gc_tensor *sv[7] = {x2, wc, keep ? a : NULL, s ? ws : NULL, s ? sc : NULL, s ? bc : NULL, xbc};
    gc_node *nd = gc_autograd_record("linear_act", linear_act_backward, y, 6, in6, 7, sv);
    if (keep) gc_tensor_release(a); /* the node holds it now (or nothing does, on error) */
    if (!nd) return NULL;
    nd->iarg[0] = act;
    nd->iarg[1] = s != NULL;
    int64_t sh[GC_MAX_DIMS];
    memcpy(sh, x->shape, sizeof sh);
    sh[x->ndim - 1] = w->shape[0];
    return gc_view(y, x->ndim, sh);
}

gc_tensor *gc_linear_act(gc_tensor *x, gc_act act, gc_tensor *w, gc_tensor *b)
{
    return linear_act_impl(x, act, w, b, NULL, NULL, NULL, NULL);
}

gc_tensor *gc_linear_act_res(gc_tensor *x, gc_act act, gc_tensor *w, gc_tensor *b, gc_tensor *res)
{
    if (!res) {
        gc_error_set(GC_ERR_INVALID, "linear_act: NULL residual");
        return NULL;
    }
    return linear_act_impl(x, act, w, b, NULL, res, NULL, NULL);
}

gc_tensor *gc_linear_act_scaled(gc_tensor *x, gc_act act, gc_tensor *w, gc_tensor *b, gc_tensor *s, gc_tensor *res)
{
    if (!s) {
        gc_error_set(GC_ERR_INVALID, "linear_act: NULL layer scale");
        return NULL;
    }
    return linear_act_impl(x, act, w, b, s, res, NULL, NULL);
}

gc_tensor *gc_linear_and_act(gc_tensor *x, gc_tensor *w, gc_tensor *b, gc_act act, gc_tensor **a, gc_tensor **xb)
{
    if (!a || !xb) {
        gc_error_set(GC_ERR_INVALID, "linear_and_act: NULL result pointer");
        return NULL;
    }
    *a = *xb = NULL;
    return linear_impl_act(x, w, b, NULL, NULL, act, a, xb);
}

gc_tensor *gc_linear_act_given(gc_tensor *x, gc_tensor *a, gc_act act, gc_tensor *w, gc_tensor *b, gc_tensor *s, gc_tensor *res,
                               gc_tensor *xb)
{
    if (x && !a) {
        gc_error_set(GC_ERR_INVALID, "linear_act: NULL activation given");
        return NULL;
    }
    if (x && a && (a->ndim != x->ndim || memcmp(a->shape, x->shape, sizeof(int64_t) * (size_t)x->ndim) || a->dtype != x->dtype)) {
        char sa[GC_SHAPE_STR_LEN], sx[GC_SHAPE_STR_LEN];
        gc_error_set(GC_ERR_SHAPE, "linear_act: the activation given %s %s does not match its input %s %s", gc_dtype_name(a->dtype),
                     gc_shape_str(a, sa, sizeof sa), gc_dtype_name(x->dtype), gc_shape_str(x, sx, sizeof sx));
        return NULL;
    }
    return linear_act_impl(x, act, w, b, s, res, a, xb);
}
