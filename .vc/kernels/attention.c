/* Scaled dot-product attention (gc_attention in gc_ops.h), forward and backward.
 *
 *   q [B, Lq, H, D], k/v [B, Lk, Hkv, D]; head h reads kv head h / G, G = H / Hkv
 *   S[b,h,i,j] = scale q[b,i,h] . k[b,j,h/G] + mask[(b,) i, j], and -inf where causal and
 *                j > i + (Lk - Lq) (the last query sees every key)
 *   P  = softmax_j(S) in f32; a row with no visible key (all -inf) gives P = 0, not NaN; a row
 *        with a NaN score gives NaN (a NaN or inf in q or k is not hidden as an empty row)
 *   Pd = P * keep / (1 - p)           (attention dropout; Pd = P when p == 0)
 *   out[b,i,h] = sum_j Pd[b,h,i,j] v[b,j,h/G]
 * Backward (dO = d out):
 *   dV = Pd^T dO;  dPd = dO V^T;  dP = dPd * keep / (1 - p);  dS = P (dP - rowsum(dP P))
 *   dQ = dS K scale;  dK = dS^T Q scale;  dK, dV summed over the G heads of a group.
 *
 * Dropout: element e = (h Lq + i) Lk + j of batch row b is kept iff
 *   gc_rand_uniform(seed, step, opts->dropout_op, sample_offset + b, e) >= (float)p
 * with (seed, step, sample_offset) the RandContext at forward time; it is kept on the
 * node, so backward redraws the same mask whatever the context is by then. The
 * comparison is in f32 on every device: CPU and GPU masks are bitwise equal.
 *
 * Implementations (attn_impl), picked per call:
 *   ATTN_REF   CPU: the obvious loops with double accumulation, strided q/k/v. The
 *              reference everything else is tested against. Saves q, k, v (as given)
 *              and P [B, H, Lq, Lk] before dropout.
 *   ATTN_GEMM  CPU or CUDA: q/k/v copied to [B, H, L, D]; S = Q K^T (gc_gemm, f32 out);
 *              one fused row kernel for mask + causal + softmax (+ dropout) writing P
 *              (and Pd) in the activation dtype; O = P V (gc_gemm); O copied back to
 *              [B, Lq, H, D]. Backward: dPd = dO V^T (f32), one fused row kernel for dS
 *              (and Pd), then the three GEMMs of dV, dQ, dK. Saves the heads-major
 *              copies Qt, Kt, Vt and P. S, P, Pd, dP, dS have rows of ldS = Lk rounded
 *              up to 8 elements (cuBLASLt needs 16-byte aligned leading dimensions for
 *              its fast kernels); the padding columns are never read.
 *              GQA needs no copies of K/V: the G heads of a group are consecutive in
 *              [B, H, Lq, D], so per (b, kv head) their queries form one [G Lq, D]
 *              matrix against that kv head's [Lk, D]: every GEMM is batched over
 *              B Hkv with M = G Lq, and dK, dV sum over the group through the GEMM's
 *              inner dimension.
 *   ATTN_FLASH CUDA, bf16, D in {32, 64, 128}, q/k/v rows 16-byte aligned with unit
 *              inner stride (views of a fused qkv qualify): fused tensor-core kernels
 *              (flash_attention.cu) that never materialise S or P. Saves q, k, v (as
 *              given), out, the row log-sum-exp [B, H, Lq] and the mask; the backward
 *              recomputes P. Dropout runs inside the kernels (same mask as above).
 * Default: REF on the CPU; on CUDA FLASH where it applies, else GEMM (f32 storage, other
 * head dims, unaligned or strided-innermost inputs). gc_attention_set_impl("gemm") (or
 * GC_ATTN_IMPL=gemm) forces GEMM everywhere: the tests run it on the CPU against REF, and on
 * CUDA against FLASH. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/gc_rng.h"
#include "gc_kernel_util.h"

#ifdef GC_WITH_CUDA
/* attention.cu: the row kernels of the GEMM path (rows of ld elements); same semantics
 * as cpu_rows_fwd/bwd */
gc_status gc_cuda_attention_fwd(const float *S, const float *mask, int64_t mask_bstride, void *P, void *Pd, gc_dtype dt,
                                int64_t B, int64_t H, int64_t Lq, int64_t Lk, int64_t ld, bool causal, float p,
                                uint64_t seed, uint32_t step, uint32_t op, int64_t sample_offset);
gc_status gc_cuda_attention_bwd(const void *P, const float *dP, void *dS, void *Pd, gc_dtype dt, int64_t B, int64_t H,
                                int64_t Lq, int64_t Lk, int64_t ld, float p, uint64_t seed, uint32_t step, uint32_t op,
                                int64_t sample_offset);
/* flash_attention.cu */
bool gc_cuda_flash_attention_supported(const gc_tensor *q, const gc_tensor *k, const gc_tensor *v);
bool gc_cuda_flash_attention_bwd_fused(int64_t D, int64_t Lk, bool dq, bool split);
gc_status gc_cuda_flash_attention_fwd(const gc_tensor *q, const gc_tensor *k, const gc_tensor *v, const gc_tensor *mask,
                                      gc_tensor *out, gc_tensor *lse, float scale, bool causal, float p, uint32_t op,
                                      gc_rand_context rc);
gc_status gc_cuda_flash_attention_bwd(const gc_tensor *q, const gc_tensor *k, const gc_tensor *v, const gc_tensor *mask,
                                      const gc_tensor *out, const gc_tensor *lse, const gc_tensor *dout, gc_tensor *delta,
                                      gc_tensor *dq, bool acc_q, gc_tensor *dk, bool acc_k, gc_tensor *dv, bool acc_v,
                                      float scale, bool causal, float p, uint32_t op, gc_rand_context rc, bool split);
#endif

typedef enum attn_impl { ATTN_REF = 0, ATTN_GEMM, ATTN_FLASH } attn_impl;

/* Everything the kernels and backward need besides the tensors (the node's aux). */
typedef struct attn_geom {
    int64_t B, Lq, Lk, H, Hkv, D;
    double scale;
    bool causal;
    float p;                /* dropout probability; 0: none */
    uint32_t op;            /* dropout op id */
    uint64_t seed;          /* RandContext at forward time */
    uint32_t step;
    int64_t sample_offset;
    attn_impl impl;
} attn_geom;

static bool flash_applies(const gc_tensor *q, const gc_tensor *k, const gc_tensor *v)
{
#ifdef GC_WITH_CUDA
    return q->device.type == GC_DEVICE_CUDA && gc_cuda_flash_attention_supported(q, k, v);
#else
    (void)q, (void)k, (void)v;
    return false;
#endif
}

const char *const gc_attention_impl_names[] = {"auto", "ref", "flash", "gemm", "flash-split", NULL};

/* The mode a name sets, as the index of its canonical name above ("ref" and "flash" mean
 * auto); -1 until GC_ATTN_IMPL is read (once: this is a hot path) */
enum { ATTN_MODE_AUTO = 0, ATTN_MODE_GEMM = 3, ATTN_MODE_SPLIT = 4 };
static const int attn_name_mode[] = {ATTN_MODE_AUTO, ATTN_MODE_AUTO, ATTN_MODE_AUTO, ATTN_MODE_GEMM, ATTN_MODE_SPLIT};
_Static_assert(sizeof attn_name_mode / sizeof *attn_name_mode == sizeof gc_attention_impl_names / sizeof *gc_attention_impl_names - 1,
               "a mode for every name");
static int attn_mode = -1;

static int attn_mode_get(void)
{
    if (attn_mode < 0) { /* once; a name it does not take leaves auto (gc_ops_env_check says so) */
        const int i = gc_name_index(gc_attention_impl_names, getenv("GC_ATTN_IMPL"));
        attn_mode = i < 0 ? ATTN_MODE_AUTO : attn_name_mode[i];
    }
    return attn_mode;
}

static bool force_gemm(void) { return attn_mode_get() == ATTN_MODE_GEMM; }

gc_status gc_attention_set_impl(const char *name)
{
    const int i = gc_name_index(gc_attention_impl_names, name);
    if (i >= 0) {
        attn_mode = attn_name_mode[i];
        return GC_OK;
    }
    char list[64];
    return gc_error_set(GC_ERR_INVALID, "attention implementation '%s': expected one of %s", name ? name : "(null)",
                        gc_names_join(gc_attention_impl_names, list, sizeof list));
}

const char *gc_attention_get_impl(void) { return gc_attention_impl_names[attn_mode_get()]; }

static attn_impl attn_impl_pick(const gc_tensor *q, const gc_tensor *k, const gc_tensor *v)
{
    const bool gemm = force_gemm();
    if (q->device.type == GC_DEVICE_CPU) return gemm ? ATTN_GEMM : ATTN_REF;
    return !gemm && flash_applies(q, k, v) ? ATTN_FLASH : ATTN_GEMM;
}

/* Row stride of the GEMM path's score matrices: Lk rounded up to 8 elements. */
static inline int64_t attn_ld(const attn_geom *g) { return (g->Lk + 7) / 8 * 8; }

/* Keys j < visible(i) are seen by query i: all of them, or j <= i + Lk - Lq when causal. */
static inline int64_t attn_visible(const attn_geom *g, int64_t i)
{
    if (!g->causal) return g->Lk;
    int64_t n = i + g->Lk - g->Lq + 1;
    return n < 0 ? 0 : n > g->Lk ? g->Lk : n;
}

static inline bool attn_keep(const attn_geom *g, int64_t b, int64_t h, int64_t i, int64_t j)
{
    uint64_t e = (uint64_t)((h * g->Lq + i) * g->Lk + j);
    return gc_rand_uniform(g->seed, g->step, g->op, (uint32_t)(g->sample_offset + b), e) >= g->p;
}

/* ================================================================ ATTN_REF (CPU) */

/* Element (b, l, h, 0) of a strided [B, L, Hx, D] f32 tensor; step d by stride[3]. */
static inline const float *at4(const gc_tensor *x, int64_t b, int64_t l, int64_t h)
{
    return (const float *)gc_tensor_data(x) + b * x->stride[0] + l * x->stride[1] + h * x->stride[2];
}

/* out [B, Lq, H, D] and P [B, H, Lq, Lk] (contiguous f32) from strided q, k, v.
 * mask: contiguous f32, row i of batch b at mask + b mask_bstride + i Lk; or NULL. */
static gc_status ref_forward(const attn_geom *g, const gc_tensor *q, const gc_tensor *k, const gc_tensor *v,
                             const float *mask, int64_t mask_bstride, float *out, float *P)
{
    const int64_t B = g->B, Lq = g->Lq, Lk = g->Lk, H = g->H, D = g->D, G = g->H / g->Hkv;
    const int64_t qs = q->stride[3], ks = k->stride[3], vs = v->stride[3];
    const double inv_keep = 1.0 / (1.0 - (double)g->p);
    double *scratch = malloc(sizeof(double) * (size_t)(B * H * (Lk + D) + 1));
    if (!scratch) return gc_error_set(GC_ERR_OOM, "attention: out of host memory");
#pragma omp parallel for schedule(dynamic) if (B * H * Lq * Lk * D > 65536)
    for (int64_t bh = 0; bh < B * H; bh++) {
        const int64_t b = bh / H, h = bh % H, hk = h / G;
        double *s = scratch + bh * (Lk + D), *o = s + Lk;
        for (int64_t i = 0; i < Lq; i++) {
            const float *qr = at4(q, b, i, h);
            const float *mr = mask ? mask + b * mask_bstride + i * Lk : NULL;
            const int64_t nvis = attn_visible(g, i);
            double mx = -INFINITY, sum = 0;
            bool nan_row = false; /* a NaN score (NaN or inf in q or k) makes the row NaN, as softmax does */
            for (int64_t j = 0; j < nvis; j++) {
                const float *kr = at4(k, b, j, hk);
                double dot = 0;
                for (int64_t d = 0; d < D; d++) dot += (double)qr[d * qs] * kr[d * ks];
                s[j] = dot * g->scale + (mr ? mr[j] : 0.0);
                if (s[j] > mx) mx = s[j];
                else if (isnan(s[j])) nan_row = true;
            }
            for (int64_t j = 0; j < nvis; j++) {
                s[j] = nan_row ? NAN : mx == -INFINITY ? 0.0 : exp(s[j] - mx); /* a fully masked row: all 0 */
                sum += s[j];
            }
            nan_row = nan_row || isnan(sum); /* +inf scores: exp(inf - inf) */
            float *pr = P + (bh * Lq + i) * Lk;
            for (int64_t d = 0; d < D; d++) o[d] = 0;
            for (int64_t j = 0; j < Lk; j++) {
                double pj = j < nvis && (sum > 0 || nan_row) ? s[j] / sum : 0.0;
                pr[j] = (float)pj;
                if (g->p > 0) pj = attn_keep(g, b, h, i, j) ? pj * inv_keep : 0.0;
                if (pj == 0) continue;
                const float *vr = at4(v, b, j, hk);
                for (int64_t d = 0; d < D; d++) o[d] += pj * vr[d * vs];
            }
            float *orow = out + ((b * Lq + i) * H + h) * D;
            for (int64_t d = 0; d < D; d++) orow[d] = (float)o[d];
        }
    }
    free(scratch);
    return GC_OK;
}

/* Gradients into double buffers dq [B, Lq, H, D], dk/dv [B, Lk, Hkv, D] (zeroed;
 * NULL where not needed). gy [B, Lq, H, D] contiguous. Parallel over (b, kv head):
 * each group owns its dk/dv rows and its heads' dq rows. */
static gc_status ref_backward(const attn_geom *g, const gc_tensor *q, const gc_tensor *k, const gc_tensor *v,
                              const float *P, const float *gy, double *dq, double *dk, double *dv)
{
    const int64_t B = g->B, Lq = g->Lq, Lk = g->Lk, H = g->H, Hkv = g->Hkv, D = g->D, G = H / Hkv;
    const int64_t qs = q->stride[3], ks = k->stride[3], vs = v->stride[3];
    const double inv_keep = 1.0 / (1.0 - (double)g->p), scale = g->scale;
    double *scratch = malloc(sizeof(double) * (size_t)(B * Hkv * 2 * Lk + 1));
    if (!scratch) return gc_error_set(GC_ERR_OOM, "attention backward: out of host memory");
#pragma omp parallel for schedule(dynamic) if (B * H * Lq * Lk * D > 65536)
    for (int64_t bk = 0; bk < B * Hkv; bk++) {
        const int64_t b = bk / Hkv, hk = bk % Hkv;
        double *gP = scratch + bk * 2 * Lk, *pd = gP + Lk;
        for (int64_t h = hk * G; h < (hk + 1) * G; h++)
            for (int64_t i = 0; i < Lq; i++) {
                const float *pr = P + ((b * H + h) * Lq + i) * Lk;
                const float *gr = gy + ((b * Lq + i) * H + h) * D;
                const float *qr = at4(q, b, i, h);
                double c = 0;
                for (int64_t j = 0; j < Lk; j++) {
                    const float *vr = at4(v, b, j, hk);
                    double dpd = 0; /* d Pd[j] = dO_i . v_j */
                    for (int64_t d = 0; d < D; d++) dpd += (double)gr[d] * vr[d * vs];
                    bool keep = g->p <= 0 || attn_keep(g, b, h, i, j);
                    gP[j] = keep ? dpd * (g->p > 0 ? inv_keep : 1.0) : 0.0; /* d P[j] */
                    pd[j] = keep ? pr[j] * (g->p > 0 ? inv_keep : 1.0) : 0.0;
                    c += gP[j] * pr[j];
                }
                for (int64_t j = 0; j < Lk; j++) {
                    const double ds = pr[j] * (gP[j] - c);
                    const float *kr = at4(k, b, j, hk);
                    if (dq) {
                        double *o = dq + ((b * Lq + i) * H + h) * D;
                        for (int64_t d = 0; d < D; d++) o[d] += scale * ds * kr[d * ks];
                    }
                    if (dk) {
                        double *o = dk + ((b * Lk + j) * Hkv + hk) * D;
                        for (int64_t d = 0; d < D; d++) o[d] += scale * ds * qr[d * qs];
                    }
                    if (dv) {
                        double *o = dv + ((b * Lk + j) * Hkv + hk) * D;
                        for (int64_t d = 0; d < D; d++) o[d] += pd[j] * gr[d];
                    }
                }
            }
    }
    free(scratch);
    return GC_OK;
}

static gc_status ref_backward_node(gc_node *nd, const attn_geom *g, gc_tensor *gy)
{
    gc_tensor *q = nd->saved[0], *k = nd->saved[1], *v = nd->saved[2], *P = nd->saved[3];
    int64_t n[3] = {gc_tensor_numel(q), gc_tensor_numel(k), gc_tensor_numel(v)};
    double *t[3] = {NULL, NULL, NULL};
    gc_status st = GC_OK;
    for (int i = 0; i < 3 && st == GC_OK; i++)
        if (nd->in[i] && !(t[i] = calloc((size_t)n[i] + 1, sizeof(double))))
            st = gc_error_set(GC_ERR_OOM, "attention backward: out of host memory");
    if (st == GC_OK) st = ref_backward(g, q, k, v, gc_tensor_data(P), gc_tensor_data(gy), t[0], t[1], t[2]);
    /* targets fetched one at a time, in order: q, k, v may be one tensor; a target may be
     * strided (a region of a fused q/k/v's gradient) */
    for (int i = 0; i < 3 && st == GC_OK; i++) {
        if (!t[i]) continue;
        bool acc;
        gc_tensor *gx = gc_grad_target_view(nd, i, &acc);
        gc_tensor *tf = gx ? gc_tensor_new(GC_F32, GC_CPU, gx->ndim, gx->shape) : NULL;
        if (!tf) { st = GC_PENDING(); break; }
        float *o = gc_tensor_data(tf);
        for (int64_t e = 0; e < n[i]; e++) o[e] = (float)t[i][e];
        st = gc_tensor_copy_into(gx, tf, acc);
        gc_tensor_release(tf);
    }
    for (int i = 0; i < 3; i++) free(t[i]);
    return st;
}

/* ================================================================ ATTN_GEMM (CPU or CUDA) */

/* The row kernels on the CPU (f32), mirroring attention.cu.
 * Forward, row r = (b, h, i) of S [B, H, Lq, ld] f32 (scaled scores; columns < Lk used):
 * P = softmax(S + mask, causal), Pd = dropout(P) when Pd. P may be S itself. */
static void cpu_rows_fwd(const attn_geom *g, const float *S, const float *mask, int64_t mask_bstride, float *P, float *Pd)
{
    const int64_t Lq = g->Lq, Lk = g->Lk, H = g->H, rows = g->B * H * Lq, ld = attn_ld(g);
    const float inv_keep = 1.0f / (1.0f - g->p);
#pragma omp parallel for schedule(static) if (rows * Lk > 65536)
    for (int64_t r = 0; r < rows; r++) {
        const int64_t i = r % Lq, h = (r / Lq) % H, b = r / (Lq * H), nvis = attn_visible(g, i);
        const float *s = S + r * ld, *mr = mask ? mask + b * mask_bstride + i * Lk : NULL;
        float mx = -INFINITY;
        bool nan_row = false; /* a NaN score: the row is NaN (fmaxf would skip it, and a row of them look empty) */
        for (int64_t j = 0; j < nvis; j++) {
            const float v = s[j] + (mr ? mr[j] : 0.0f);
            nan_row = nan_row || isnan(v);
            mx = fmaxf(mx, v);
        }
        double sum = 0;
        if (mx != -INFINITY)
            for (int64_t j = 0; j < nvis; j++) sum += expf(s[j] + (mr ? mr[j] : 0.0f) - mx);
        const float inv_sum = nan_row ? NAN : sum > 0 ? (float)(1.0 / sum) : 0.0f;
        for (int64_t j = 0; j < Lk; j++) {
            float pj = nan_row ? NAN : j < nvis && mx != -INFINITY ? expf(s[j] + (mr ? mr[j] : 0.0f) - mx) * inv_sum : 0.0f;
            P[r * ld + j] = pj; /* after reading s[j]: P may alias S */
            if (Pd) Pd[r * ld + j] = attn_keep(g, b, h, i, j) ? pj * inv_keep : 0.0f;
        }
    }
}

/* Backward, row r: dP = dPd * keep/(1-p) from dPd (f32), dS = P (dP - sum(dP P)); Pd when
 * asked (for the dV GEMM). dS may alias dPd. */
static void cpu_rows_bwd(const attn_geom *g, const float *P, const float *dPd, float *dS, float *Pd)
{
    const int64_t Lq = g->Lq, Lk = g->Lk, H = g->H, rows = g->B * H * Lq, ld = attn_ld(g);
    const bool drop = g->p > 0;
    const float inv_keep = 1.0f / (1.0f - g->p);
#pragma omp parallel for schedule(static) if (rows * Lk > 65536)
    for (int64_t r = 0; r < rows; r++) {
        const int64_t i = r % Lq, h = (r / Lq) % H, b = r / (Lq * H);
        const float *p = P + r * ld, *dp = dPd + r * ld;
        double c = 0;
        for (int64_t j = 0; j < Lk; j++) {
            float gj = !drop ? dp[j] : attn_keep(g, b, h, i, j) ? dp[j] * inv_keep : 0.0f;
            c += (double)gj * p[j];
        }
        for (int64_t j = 0; j < Lk; j++) {
            bool keep = !drop || attn_keep(g, b, h, i, j);
            float gj = !drop ? dp[j] : keep ? dp[j] * inv_keep : 0.0f;
            float pj = p[j];
            dS[r * ld + j] = pj * (gj - (float)c);
            if (Pd) Pd[r * ld + j] = keep ? pj * inv_keep : 0.0f;
        }
    }
}

static gc_status rows_fwd(const attn_geom *g, gc_tensor *S, const gc_tensor *mask, int64_t mask_bstride, gc_tensor *P,
                          gc_tensor *Pd)
{
    const float *m = mask ? gc_tensor_data(mask) : NULL;
    if (S->device.type == GC_DEVICE_CUDA)
        return GC_CUDA_DISPATCH(gc_cuda_attention_fwd(gc_tensor_data(S), m, mask_bstride, gc_tensor_data(P),
                                                      Pd ? gc_tensor_data(Pd) : NULL, P->dtype, g->B, g->H, g->Lq, g->Lk,
                                                      attn_ld(g), g->causal, g->p, g->seed, g->step, g->op,
                                                      g->sample_offset));
    cpu_rows_fwd(g, gc_tensor_data(S), m, mask_bstride, gc_tensor_data(P), Pd ? gc_tensor_data(Pd) : NULL);
    return GC_OK;
}

static gc_status rows_bwd(const attn_geom *g, const gc_tensor *P, gc_tensor *dPd, gc_tensor *dS, gc_tensor *Pd)
{
    if (P->device.type == GC_DEVICE_CUDA)
        return GC_CUDA_DISPATCH(gc_cuda_attention_bwd(gc_tensor_data(P), gc_tensor_data(dPd), gc_tensor_data(dS),
                                                      Pd ? gc_tensor_data(Pd) : NULL, P->dtype, g->B, g->H, g->Lq, g->Lk,
                                                      attn_ld(g), g->p, g->seed, g->step, g->op, g->sample_offset));
    cpu_rows_bwd(g, gc_tensor_data(P), gc_tensor_data(dPd), gc_tensor_data(dS), Pd ? gc_tensor_data(Pd) : NULL);
    return GC_OK;
}

/* x [B, L, Hx, D] (any strides) -> [B, Hx, L, D] contiguous of dtype dt (pool-owned). */
static gc_tensor *heads_major(const gc_tensor *x, gc_dtype dt)
{
    const int64_t B = x->shape[0], L = x->shape[1], Hx = x->shape[2], D = x->shape[3];
    const int64_t st[4] = {Hx * L * D, D, L * D, 1}; /* [B, Hx, L, D] seen as [B, L, Hx, D] */
    if ((Hx == 1 || L == 1) && x->dtype == dt && gc_tensor_is_contiguous(x)) /* the same layout: no copy */
        return gc_pool_add(gc_tensor_view_of(x, 4, GC_SHAPE(B, Hx, L, D), GC_SHAPE(Hx * L * D, L * D, D, 1), x->offset));
    gc_tensor *y = gc_op_new(dt, x->device, 4, GC_SHAPE(B, Hx, L, D));
    if (!y) return NULL;
    gc_tensor *yv = gc_tensor_view_of(y, 4, x->shape, st, y->offset);
    gc_status s = yv ? gc_tensor_copy_into(yv, x, false) : GC_PENDING();
    gc_tensor_release(yv);
    return s == GC_OK ? y : NULL;
}

/* dst [B, L, Hx, D] contiguous (=, or += when acc) from src [B, Hx, L, D] contiguous. */
static gc_status from_heads_major(gc_tensor *dst, const gc_tensor *src, bool acc)
{
    const int64_t L = dst->shape[1], Hx = dst->shape[2], D = dst->shape[3];
    gc_tensor *sv = gc_tensor_view_of(src, 4, dst->shape, GC_SHAPE(Hx * L * D, D, L * D, 1), src->offset);
    if (!sv) return GC_PENDING();
    gc_status s = gc_tensor_copy_into(dst, sv, acc);
    gc_tensor_release(sv);
    return s;
}

/* For each of Z batch entries: C [m, n] = alpha op(A) op(B), row-major with row strides
 * lda, ldb, ldc (A stored [m, k], or [k, m] when ta; B [k, n], or [n, k] when tb); the
 * entries follow each other (batch strides = stored rows x row stride). */
static gc_status bgemm(gc_device dev, bool ta, bool tb, int64_t m, int64_t n, int64_t k, const gc_tensor *A, int64_t lda,
                       const gc_tensor *Bm, int64_t ldb, gc_tensor *C, int64_t ldc, float alpha, int64_t Z)
{
    gc_gemm_args a = {
        .trans_a = ta, .trans_b = tb, .m = m, .n = n, .k = k,
        .a = gc_tensor_data(A), .lda = lda,
        .b = gc_tensor_data(Bm), .ldb = ldb,
        .c = gc_tensor_data(C), .ldc = ldc,
        .ab_dtype = A->dtype, .c_dtype = C->dtype, .alpha = alpha, .beta = 0.0f,
        .batch = Z, .stride_a = (ta ? k : m) * lda, .stride_b = (tb ? n : k) * ldb, .stride_c = m * ldc,
    };
    return gc_gemm(dev, &a);
}

/* Returns out [B, Lq, H, D], and in saved[0..3] the heads-major Qt, Kt, Vt and
 * P [B, H, Lq, ldS] (activation dtype), pool-owned. */
static gc_tensor *gemm_forward(const attn_geom *g, gc_tensor *q, gc_tensor *k, gc_tensor *v, const gc_tensor *mask,
                               int64_t mask_bstride, gc_tensor **saved)
{
    const gc_dtype dt = q->dtype;
    const gc_device dev = q->device;
    const int64_t B = g->B, Lq = g->Lq, Lk = g->Lk, H = g->H, D = g->D, Z = g->B * g->Hkv, M = (H / g->Hkv) * Lq;
    const int64_t ld = attn_ld(g);
    gc_tensor *Qt = heads_major(q, dt), *Kt = heads_major(k, dt), *Vt = heads_major(v, dt);
    gc_tensor *S = gc_op_new(GC_F32, dev, 4, GC_SHAPE(B, H, Lq, ld)); /* scores in f32 */
    if (!Qt || !Kt || !Vt || !S) return NULL;
    if (bgemm(dev, false, true, M, Lk, D, Qt, D, Kt, D, S, ld, (float)g->scale, Z) != GC_OK) return NULL; /* S = Q K^T scale */
    gc_tensor *P = dt == GC_F32 ? S : gc_op_new(dt, dev, 4, S->shape);
    gc_tensor *Pd = g->p > 0 ? gc_op_new(dt, dev, 4, S->shape) : NULL;
    if (!P || (g->p > 0 && !Pd) || rows_fwd(g, S, mask, mask_bstride, P, Pd) != GC_OK) return NULL;
    gc_tensor *Ot = gc_op_new(dt, dev, 4, GC_SHAPE(B, H, Lq, D));
    if (!Ot || bgemm(dev, false, false, M, D, Lk, Pd ? Pd : P, ld, Vt, D, Ot, D, 1.0f, Z) != GC_OK) return NULL; /* O = Pd V */
    gc_tensor *out = gc_op_new(dt, dev, 4, GC_SHAPE(B, Lq, H, D));
    if (!out || from_heads_major(out, Ot, false) != GC_OK) return NULL;
    saved[0] = Qt, saved[1] = Kt, saved[2] = Vt, saved[3] = P;
    return out;
}

static gc_status gemm_backward(gc_node *nd, const attn_geom *g, gc_tensor *gy)
{
    gc_tensor *Qt = nd->saved[0], *Kt = nd->saved[1], *Vt = nd->saved[2], *P = nd->saved[3];
    const gc_dtype dt = Qt->dtype;
    const gc_device dev = Qt->device;
    const int64_t B = g->B, Lq = g->Lq, Lk = g->Lk, H = g->H, Hkv = g->Hkv, D = g->D, Z = B * Hkv, M = (H / Hkv) * Lq;
    const int64_t ld = attn_ld(g);
    const float scale = (float)g->scale;
    gc_tensor *dOt = heads_major(gy, dt);
    gc_tensor *dP = gc_op_new(GC_F32, dev, 4, P->shape);
    if (!dOt || !dP) return GC_PENDING();
    GC_TRY(bgemm(dev, false, true, M, Lk, D, dOt, D, Vt, D, dP, ld, 1.0f, Z)); /* dPd = dO V^T */
    gc_tensor *dS = dt == GC_F32 ? dP : gc_op_new(dt, dev, 4, P->shape);
    gc_tensor *Pd = g->p > 0 && nd->in[2] ? gc_op_new(dt, dev, 4, P->shape) : NULL;
    if (!dS || (g->p > 0 && nd->in[2] && !Pd)) return GC_PENDING();
    GC_TRY(rows_bwd(g, P, dP, dS, Pd));
    /* targets fetched one at a time, in order, right before use: q, k, v may be one tensor
     * (from_heads_major writes any strides) */
    for (int i = 0; i < 3; i++) {
        if (!nd->in[i]) continue;
        bool acc;
        gc_tensor *gx = gc_grad_target_view(nd, i, &acc);
        if (!gx) return GC_PENDING();
        gc_tensor *t;
        if (i == 0) { /* dQ = dS K scale: [M, Lk] @ [Lk, D] */
            t = gc_op_new(gx->dtype, dev, 4, GC_SHAPE(B, H, Lq, D));
            if (!t) return GC_PENDING();
            GC_TRY(bgemm(dev, false, false, M, D, Lk, dS, ld, Kt, D, t, D, scale, Z));
        } else { /* dK = dS^T Q scale, dV = Pd^T dO: [Lk, M] @ [M, D], summing the group */
            t = gc_op_new(gx->dtype, dev, 4, GC_SHAPE(B, Hkv, Lk, D));
            if (!t) return GC_PENDING();
            GC_TRY(bgemm(dev, true, false, Lk, D, M, i == 1 ? dS : Pd ? Pd : P, ld, i == 1 ? Qt : dOt, D, t, D,
                         i == 1 ? scale : 1.0f, Z));
        }
        GC_TRY(from_heads_major(gx, t, acc));
    }
    return GC_OK;
}

/* ================================================================ ATTN_FLASH (CUDA) */

static inline gc_rand_context attn_rc(const attn_geom *g)
{
    return (gc_rand_context){.seed = g->seed, .step = g->step, .sample_offset = g->sample_offset};
}

/* out [B, Lq, H, D] and *lse_out [B, H, Lq] f32, pool-owned. */
static gc_tensor *flash_forward(const attn_geom *g, gc_tensor *q, gc_tensor *k, gc_tensor *v, const gc_tensor *mask,
                                gc_tensor **lse_out)
{
    gc_tensor *out = gc_op_new(q->dtype, q->device, 4, GC_SHAPE(g->B, g->Lq, g->H, g->D));
    gc_tensor *lse = gc_op_new(GC_F32, q->device, 3, GC_SHAPE(g->B, g->H, g->Lq));
    if (!out || !lse) return NULL;
#ifndef GC_WITH_CUDA
    (void)k, (void)v, (void)mask; /* flash_applies was false: not reached */
#endif
    if (GC_CUDA_DISPATCH(gc_cuda_flash_attention_fwd(q, k, v, mask, out, lse, (float)g->scale, g->causal, g->p, g->op,
                                                     attn_rc(g))) != GC_OK)
        return NULL;
    *lse_out = lse;
    return out;
}

/* saved: q, k, v, out, lse[, mask] */
static gc_status flash_backward(gc_node *nd, const attn_geom *g, gc_tensor *gy)
{
    gc_tensor *q = nd->saved[0], *k = nd->saved[1], *v = nd->saved[2], *out = nd->saved[3], *lse = nd->saved[4];
    gc_tensor *mask = nd->n_saved > 5 ? nd->saved[5] : NULL;
    if (gy->dtype != q->dtype || !gc_tensor_is_contiguous(gy) || (uintptr_t)gc_tensor_data(gy) % 16 != 0) {
        gy = gc_pool_add(gc_tensor_to(gy, gy->device, q->dtype)); /* the kernels read dO as q's dtype, aligned */
        if (!gy) return GC_PENDING();
    }
    /* fetched in order q, k, v; the kernels write dQ, then dK, then dV, so a buffer shared
     * by several of them is overwritten first and accumulated into after */
    gc_tensor *gx[3] = {NULL, NULL, NULL};
    bool acc[3] = {false, false, false};
    for (int i = 0; i < 3; i++) /* strided targets (views of a fused q/k/v's gradient) welcome */
        if (nd->in[i] && !(gx[i] = gc_grad_target_view(nd, i, &acc[i]))) return GC_PENDING();
    const bool split = attn_mode_get() == ATTN_MODE_SPLIT;
#ifdef GC_WITH_CUDA
    /* Delta = rowsum(dO O), B x H x Lq f32 of scratch, unless the fused kernel runs: it
     * makes each tile's itself */
    gc_tensor *delta = NULL;
    if (!gc_cuda_flash_attention_bwd_fused(g->D, g->Lk, gx[0] != NULL, split) &&
        !(delta = gc_op_new(GC_F32, q->device, 3, GC_SHAPE(g->B, g->H, g->Lq))))
        return GC_PENDING();
#else
    (void)k, (void)v, (void)mask, (void)out, (void)lse, (void)acc, (void)split;
#endif
    return GC_CUDA_DISPATCH(gc_cuda_flash_attention_bwd(q, k, v, mask, out, lse, gy, delta, gx[0], acc[0], gx[1], acc[1],
                                                        gx[2], acc[2], (float)g->scale, g->causal, g->p, g->op,
                                                        attn_rc(g), split));
}

/* ================================================================ the op */

/* saved: see each implementation; aux: attn_geom */
static gc_status attention_backward(gc_node *nd, gc_tensor *gy)
{
    const attn_geom *g = nd->aux;
    switch (g->impl) {
    case ATTN_REF: return ref_backward_node(nd, g, gy);
    case ATTN_FLASH: return flash_backward(nd, g, gy);
    default: return gemm_backward(nd, g, gy);
    }
}

/* An empty output, or no keys at all: out is zeros and so are the gradients. */
static gc_status zeros_backward(gc_node *nd, gc_tensor *gy)
{
    (void)gy;
    for (int i = 0; i < nd->n_in; i++) {
        bool acc;
        if (!nd->in[i]) continue;
        gc_tensor *gx = gc_grad_target_view(nd, i, &acc);
        if (!gx) return GC_PENDING();
        if (!acc) GC_TRY(gc_tensor_fill_zero(gx));
    }
    return GC_OK;
}

static gc_tensor *attn_fail(gc_pool *pool)
{
    gc_pool_pop(pool);
    return NULL;
}

gc_tensor *gc_attention(gc_tensor *q, gc_tensor *k, gc_tensor *v, const gc_attn_opts *opts)
{
    if (!q || !k || !v) return NULL;
    static const gc_attn_opts defaults = {0};
    if (!opts) opts = &defaults;
    gc_tensor *ins[4] = {q, k, v, opts->mask};
    if (!gc_check_same_device("attention", 4, ins) || !gc_check_float("attention", q) ||
        !gc_check_same_dtype("attention", q, k) || !gc_check_same_dtype("attention", q, v))
        return NULL;
    char sq[GC_SHAPE_STR_LEN], sk[GC_SHAPE_STR_LEN], sv[GC_SHAPE_STR_LEN];
    gc_shape_str(q, sq, sizeof sq);
    gc_shape_str(k, sk, sizeof sk);
    gc_shape_str(v, sv, sizeof sv);
    if (q->ndim != 4 || k->ndim != 4 || v->ndim != 4 || !gc_shape_eq(k, v) || k->shape[0] != q->shape[0] ||
        k->shape[3] != q->shape[3]) {
        gc_error_set(GC_ERR_SHAPE, "attention: q %s %s, k %s %s, v %s %s do not fit q [B, Lq, H, D], k/v [B, Lk, Hkv, D]",
                     gc_tensor_label(q), sq, gc_tensor_label(k), sk, gc_tensor_label(v), sv);
        return NULL;
    }
    attn_geom g = {
        .B = q->shape[0], .Lq = q->shape[1], .H = q->shape[2], .D = q->shape[3], .Lk = k->shape[1], .Hkv = k->shape[2],
        .causal = opts->causal, .p = (float)opts->dropout, .op = opts->dropout_op,
    };
    if (g.Hkv == 0 ? g.H != 0 : g.H % g.Hkv != 0) {
        gc_error_set(GC_ERR_SHAPE, "attention: %lld query heads (q %s %s) are not a multiple of %lld kv heads (k %s %s)",
                     (long long)g.H, gc_tensor_label(q), sq, (long long)g.Hkv, gc_tensor_label(k), sk);
        return NULL;
    }
    if (!(opts->dropout >= 0 && opts->dropout < 1)) {
        gc_error_set(GC_ERR_INVALID, "attention: dropout probability %g outside [0, 1)", opts->dropout);
        return NULL;
    }
    if (!isfinite(opts->scale)) {
        gc_error_set(GC_ERR_INVALID, "attention: scale %g is not finite", opts->scale);
        return NULL;
    }
    g.scale = opts->scale != 0 ? opts->scale : 1.0 / sqrt((double)(g.D > 0 ? g.D : 1));
    gc_rand_context rc = gc_rand_context_get();
    g.seed = rc.seed;
    g.step = rc.step;
    g.sample_offset = rc.sample_offset;
    g.impl = attn_impl_pick(q, k, v);
    /* the flash kernels take the row maximum of raw products (score_kept): a positive scale */
    if (g.impl == ATTN_FLASH && !((float)g.scale > 0)) g.impl = ATTN_GEMM;

    const gc_tensor *m = opts->mask;
    int64_t mask_bstride = 0;
    if (m) {
        bool ok2 = m->ndim == 2 && m->shape[0] == g.Lq && m->shape[1] == g.Lk;
        bool ok3 = m->ndim == 3 && m->shape[0] == g.B && m->shape[1] == g.Lq && m->shape[2] == g.Lk;
        if (!ok2 && !ok3) {
            char s[GC_SHAPE_STR_LEN];
            gc_error_set(GC_ERR_SHAPE, "attention: mask %s %s is neither [Lq, Lk] = [%lld, %lld] nor [B, Lq, Lk] (q %s, k %s)",
                         gc_tensor_label(m), gc_shape_str(m, s, sizeof s), (long long)g.Lq, (long long)g.Lk, sq, sk);
            return NULL;
        }
        if (!gc_dtype_is_float(m->dtype)) {
            gc_error_set(GC_ERR_DTYPE, "attention: mask %s is %s, not a floating dtype", gc_tensor_label(m),
                         gc_dtype_name(m->dtype));
            return NULL;
        }
        mask_bstride = ok3 ? g.Lq * g.Lk : 0;
    }

    gc_pool *pool = gc_pool_push(); /* temporaries die here; out is kept, the saved tensors by the node */
    gc_tensor *mc = NULL;
    if (m) { /* not differentiable: detached, as contiguous f32 */
        mc = gc_detach(opts->mask);
        if (mc && mc->dtype != GC_F32) mc = gc_cast(mc, GC_F32);
        mc = gc_contiguous_raw(mc);
        if (!mc) return attn_fail(pool);
    }
    gc_tensor *out = NULL, *saved[6] = {NULL};
    int n_saved = 4;
    const bool empty = g.B == 0 || g.Lq == 0 || g.H == 0 || g.D == 0 || g.Lk == 0;
    if (empty) {
        out = gc_op_new(q->dtype, q->device, 4, GC_SHAPE(g.B, g.Lq, g.H, g.D));
        if (!out || gc_tensor_fill_zero(out) != GC_OK) return attn_fail(pool);
        gc_autograd_record("attention", zeros_backward, out, 3, ins, 0, NULL);
    } else {
        if (g.impl == ATTN_REF) {
            out = gc_op_new(GC_F32, q->device, 4, GC_SHAPE(g.B, g.Lq, g.H, g.D));
            gc_tensor *P = gc_op_new(GC_F32, q->device, 4, GC_SHAPE(g.B, g.H, g.Lq, g.Lk));
            if (!out || !P ||
                ref_forward(&g, q, k, v, mc ? gc_tensor_data(mc) : NULL, mask_bstride, gc_tensor_data(out),
                            gc_tensor_data(P)) != GC_OK)
                return attn_fail(pool);
            saved[0] = q, saved[1] = k, saved[2] = v, saved[3] = P;
        } else if (g.impl == ATTN_FLASH) {
            gc_tensor *lse = NULL;
            out = flash_forward(&g, q, k, v, mc, &lse);
            if (!out) return attn_fail(pool);
            saved[0] = q, saved[1] = k, saved[2] = v, saved[3] = out, saved[4] = lse, saved[5] = mc;
            n_saved = mc ? 6 : 5;
        } else {
            out = gemm_forward(&g, q, k, v, mc, mask_bstride, saved);
            if (!out) return attn_fail(pool);
        }
        if (gc_autograd_should_record(3, ins)) {
            attn_geom *aux = malloc(sizeof *aux);
            if (!aux) {
                gc_error_set(GC_ERR_OOM, "attention: out of host memory");
                return attn_fail(pool);
            }
            *aux = g;
            gc_node *nd = gc_autograd_record("attention", attention_backward, out, 3, ins, n_saved, saved);
            if (!nd) {
                free(aux);
                return attn_fail(pool);
            }
            nd->aux = aux;
            nd->aux_free = free;
        }
    }
    gc_pool_keep(out);
    gc_pool_pop(pool);
    return out;
}
