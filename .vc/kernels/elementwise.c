/* Elementwise ops: add / sub / mul with numpy broadcasting, scale, exp, activations.
 *
 * Binary ops read their inputs through broadcast strides (stride 0 on a broadcast dim),
 * so strided inputs need no copy. The backward of an operand that was broadcast sums
 * the output gradient over its broadcast dims; that sum is deterministic (fixed order on
 * the CPU, fixed chunking + second pass on the GPU, never float atomics). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gc_kernel_util.h"

#ifdef GC_WITH_CUDA
/* elementwise.cu. Geometry arrays have `ndim` entries over the output's shape; strides
 * are in elements (0 on broadcast dims); tensors' data pointers include their offsets. */
gc_status gc_cuda_add_fwd(gc_tensor *y, const gc_tensor *a, const gc_tensor *b, int ndim, const int64_t *shape,
                          const int64_t *sa, const int64_t *sb, float alpha);
gc_status gc_cuda_mul_fwd(gc_tensor *y, const gc_tensor *a, const gc_tensor *b, int ndim, const int64_t *shape,
                          const int64_t *sa, const int64_t *sb);
gc_status gc_cuda_binary_bwd(gc_tensor *g, const gc_tensor *gy, const gc_tensor *other, int ndim, const int64_t *shape,
                             const int64_t *s_other, const int64_t *s_g, float scale, bool acc);
gc_status gc_cuda_add_scaled_fwd(gc_tensor *y, const gc_tensor *x, const gc_tensor *a, const gc_tensor *s);
gc_status gc_cuda_add_scaled_bwd(gc_tensor *ga, bool acc_a, gc_tensor *gs, bool acc_s, const gc_tensor *gy,
                                 const gc_tensor *a, const gc_tensor *s);
gc_status gc_cuda_scale_fwd(gc_tensor *y, const gc_tensor *x, float s);
gc_status gc_cuda_scale_bwd(gc_tensor *gx, const gc_tensor *gy, float s, bool acc);
gc_status gc_cuda_exp_fwd(gc_tensor *y, const gc_tensor *x);
gc_status gc_cuda_exp_bwd(gc_tensor *gx, const gc_tensor *gy, const gc_tensor *y, bool acc);
gc_status gc_cuda_act_fwd(gc_tensor *y, const gc_tensor *x, gc_act act);
gc_status gc_cuda_act_bwd(gc_tensor *gx, const gc_tensor *gy, const gc_tensor *x, gc_act act, bool acc);
bool gc_cuda_act_bias_fits(int64_t cols, gc_dtype dt, const void *p0, const void *p1, const void *p2, const void *p3,
                           const void *p4);
gc_status gc_cuda_act_bias_fwd(void *y, const void *x, const void *b, gc_dtype dt, int64_t rows, int64_t cols, gc_act act);
gc_status gc_cuda_act_bias_bwd(void *gx, bool acc, const void *gy, const void *x, const void *b, void *a, gc_dtype dt,
                               int64_t rows, int64_t cols, gc_act act, float *gb, bool gb_acc);
gc_status gc_cuda_sum_rows(const void *src, gc_dtype sdt, void *dst, gc_dtype ddt, int64_t rows, int64_t cols,
                           bool accumulate); /* matmul.cu */
#endif

/* ---------------------------------------------------------------- broadcasting */

/* The output's shape and each operand's strides over it (0 where broadcast). */
typedef struct bcast {
    int ndim;
    int64_t shape[GC_MAX_DIMS];
    int64_t sa[GC_MAX_DIMS], sb[GC_MAX_DIMS];
} bcast;

/* Size and stride of x along output dim d of an n-dim output (x aligned to the right). */
static void dim_of(const gc_tensor *x, int n, int d, int64_t *size, int64_t *stride)
{
    int xd = d - (n - x->ndim);
    *size = xd < 0 ? 1 : x->shape[xd];
    *stride = xd < 0 || *size == 1 ? 0 : x->stride[xd];
}

static bool bcast_make(const char *op, const gc_tensor *a, const gc_tensor *b, bcast *m)
{
    int n = a->ndim > b->ndim ? a->ndim : b->ndim;
    m->ndim = n;
    for (int d = 0; d < n; d++) {
        int64_t na, nb;
        dim_of(a, n, d, &na, &m->sa[d]);
        dim_of(b, n, d, &nb, &m->sb[d]);
        if (na != nb && na != 1 && nb != 1) {
            char s1[GC_SHAPE_STR_LEN], s2[GC_SHAPE_STR_LEN];
            gc_error_set(GC_ERR_SHAPE, "%s: %s %s and %s %s do not broadcast (dim %d: %lld vs %lld)", op,
                         gc_tensor_label(a), gc_shape_str(a, s1, sizeof s1), gc_tensor_label(b),
                         gc_shape_str(b, s2, sizeof s2), d, (long long)na, (long long)nb);
            return false;
        }
        m->shape[d] = na == 1 ? nb : na;
    }
    return true;
}

/* Strides of a contiguous gradient buffer of slot shape `s`, over an n-dim output:
 * 0 on the dims the operand was broadcast along (the ones its gradient sums over). */
static void grad_strides(const gc_grad_slot *s, int n, int64_t *st)
{
    int64_t c[GC_MAX_DIMS], acc = 1;
    for (int i = s->ndim - 1; i >= 0; i--) { c[i] = acc; acc *= s->shape[i]; }
    for (int d = 0; d < n; d++) {
        int sd = d - (n - s->ndim);
        st[d] = sd < 0 || s->shape[sd] == 1 ? 0 : c[sd];
    }
}

/* Strides of operand x over an output of rank n and the given shape (0 where broadcast). */
static void operand_strides(const gc_tensor *x, int n, int64_t *st)
{
    for (int d = 0; d < n; d++) {
        int64_t size;
        dim_of(x, n, d, &size, &st[d]);
    }
}

/* ---------------------------------------------------------------- CPU reference: binary */

/* Walks an n-dim index space in row-major order carrying up to 3 strided offsets. */
static inline void odometer_next(int n, const int64_t *shape, int64_t *c, int k, const int64_t *const *st, int64_t *off)
{
    for (int d = n - 1; d >= 0; d--) {
        if (++c[d] < shape[d]) {
            for (int j = 0; j < k; j++) off[j] += st[j][d];
            return;
        }
        c[d] = 0;
        for (int j = 0; j < k; j++) off[j] -= st[j][d] * (shape[d] - 1);
    }
}

static int64_t shape_numel(int n, const int64_t *shape)
{
    int64_t t = 1;
    for (int d = 0; d < n; d++) t *= shape[d];
    return t;
}

/* y = a + alpha b (alpha = +-1) or y = a * b, y contiguous over m's shape. */
static void cpu_binary_fwd(const bcast *m, const float *a, const float *b, float *y, bool mul, float alpha)
{
    int64_t n = shape_numel(m->ndim, m->shape), c[GC_MAX_DIMS] = {0}, off[2] = {0, 0};
    const int64_t *st[2] = {m->sa, m->sb};
    for (int64_t i = 0; i < n; i++) {
        float va = a[off[0]], vb = b[off[1]];
        y[i] = mul ? va * vb : va + alpha * vb;
        odometer_next(m->ndim, m->shape, c, 2, st, off);
    }
}

/* g[t] (+)= scale * sum over the output elements i that map to t of gy[i] * other[i]
 * (other may be NULL: 1). g is contiguous; s_g maps output coords to t (0 on summed dims). */
static gc_status cpu_binary_bwd(int ndim, const int64_t *shape, const float *gy, const float *other, const int64_t *s_other,
                                const int64_t *s_g, float *g, int64_t ng, float scale, bool acc)
{
    double *sum = calloc((size_t)(ng > 0 ? ng : 1), sizeof *sum);
    if (!sum) return gc_error_set(GC_ERR_OOM, "out of host memory");
    static const int64_t zero[GC_MAX_DIMS] = {0};
    const int64_t *st[2] = {s_g, other ? s_other : zero};
    int64_t n = shape_numel(ndim, shape), c[GC_MAX_DIMS] = {0}, off[2] = {0, 0};
    for (int64_t i = 0; i < n; i++) { /* ascending i: a fixed summation order */
        sum[off[0]] += other ? (double)gy[i] * other[off[1]] : gy[i];
        odometer_next(ndim, shape, c, 2, st, off);
    }
    for (int64_t t = 0; t < ng; t++) g[t] = (float)(acc ? g[t] + scale * sum[t] : scale * sum[t]);
    free(sum);
    return GC_OK;
}

/* g (+)= scale * reduce(gy * other) to the shape of `g`: the gradient of one operand. */
static gc_status binary_grad(gc_tensor *g, bool acc, const gc_grad_slot *slot, gc_tensor *gy, gc_tensor *other, float scale)
{
    int n = gy->ndim;
    int64_t s_g[GC_MAX_DIMS], s_o[GC_MAX_DIMS] = {0};
    grad_strides(slot, n, s_g);
    if (other) operand_strides(other, n, s_o);
    if (!other && scale == 1.0f && gc_tensor_numel(g) == gc_tensor_numel(gy)) { /* plain copy (+ dtype change) */
        gc_tensor *v = gc_tensor_view_of(gy, g->ndim, g->shape, g->stride, gy->offset);
        if (!v) return GC_PENDING();
        gc_status st = gc_tensor_copy_into(g, v, acc);
        gc_tensor_release(v);
        return st;
    }
    if (gy->device.type == GC_DEVICE_CUDA)
        return GC_CUDA_DISPATCH(gc_cuda_binary_bwd(g, gy, other, n, gy->shape, s_o, s_g, scale, acc));
    return cpu_binary_bwd(n, gy->shape, gc_tensor_data(gy), other ? gc_tensor_data(other) : NULL, s_o, s_g,
                          gc_tensor_data(g), gc_tensor_numel(g), scale, acc);
}

/* ---------------------------------------------------------------- add / sub / mul */

/* add/sub: farg[0] = alpha (the sign of b). No saved tensors. */
static gc_status add_backward(gc_node *nd, gc_tensor *gy)
{
    for (int i = 0; i < 2; i++) {
        if (!nd->in[i]) continue;
        const gc_grad_slot *s = nd->in[i];
        int64_t n = 1;
        for (int d = 0; d < s->ndim; d++) n *= s->shape[d];
        if ((i == 0 || nd->farg[0] == 1.0) && n == gc_tensor_numel(gy) && s->dtype == gy->dtype) {
            GC_TRY(gc_grad_pass(nd, i, gy)); /* not broadcast: the gradient is gy itself (a residual) */
            continue;
        }
        bool acc;
        gc_tensor *g = gc_grad_target(nd, i, &acc);
        if (!g) return GC_PENDING();
        GC_TRY(binary_grad(g, acc, nd->in[i], gy, NULL, i ? (float)nd->farg[0] : 1.0f));
    }
    return GC_OK;
}

/* mul: saved[0] = b (if a needs a gradient), saved[1] = a (if b does). */
static gc_status mul_backward(gc_node *nd, gc_tensor *gy)
{
    for (int i = 0; i < 2; i++) {
        bool acc;
        gc_tensor *g = gc_grad_target(nd, i, &acc);
        if (!nd->in[i]) continue;
        if (!g) return GC_PENDING();
        GC_TRY(binary_grad(g, acc, nd->in[i], gy, nd->saved[i], 1.0f));
    }
    return GC_OK;
}

static gc_tensor *binary(const char *op, gc_tensor *a, gc_tensor *b, bool mul, float alpha)
{
    if (!a || !b) return NULL;
    gc_tensor *ins[2] = {a, b};
    if (!gc_check_same_device(op, 2, ins) || !gc_check_same_dtype(op, a, b) || !gc_check_float(op, a)) return NULL;
    bcast m;
    if (!bcast_make(op, a, b, &m)) return NULL;
    gc_tensor *y = gc_op_new(a->dtype, a->device, m.ndim, m.shape);
    if (!y) return NULL;
    if (gc_tensor_numel(y) > 0) {
        gc_status st;
        if (a->device.type == GC_DEVICE_CUDA)
            st = mul ? GC_CUDA_DISPATCH(gc_cuda_mul_fwd(y, a, b, m.ndim, m.shape, m.sa, m.sb))
                     : GC_CUDA_DISPATCH(gc_cuda_add_fwd(y, a, b, m.ndim, m.shape, m.sa, m.sb, alpha));
        else {
            cpu_binary_fwd(&m, gc_tensor_data(a), gc_tensor_data(b), gc_tensor_data(y), mul, alpha);
            st = GC_OK;
        }
        if (st != GC_OK) return NULL;
    }
    if (mul) {
        gc_tensor *sv[2] = {a->slot ? b : NULL, b->slot ? a : NULL}; /* only what a gradient needs */
        gc_autograd_record(op, mul_backward, y, 2, ins, 2, sv);
    } else {
        gc_node *nd = gc_autograd_record(op, add_backward, y, 2, ins, 0, NULL);
        if (nd) nd->farg[0] = alpha;
    }
    return y;
}

gc_tensor *gc_add(gc_tensor *a, gc_tensor *b) { return binary("add", a, b, false, 1.0f); }
gc_tensor *gc_sub(gc_tensor *a, gc_tensor *b) { return binary("sub", a, b, false, -1.0f); }
gc_tensor *gc_mul(gc_tensor *a, gc_tensor *b) { return binary("mul", a, b, true, 1.0f); }

/* ---------------------------------------------------------------- add_scaled */

/* y = x + a * s, s [D] along the last dim: a residual add with a layer scale in one
 * pass (instead of a full-size product, then the add). */
static void cpu_add_scaled_fwd(float *y, const float *x, const float *a, const float *s, int64_t R, int64_t D)
{
    for (int64_t r = 0; r < R; r++)
        for (int64_t j = 0; j < D; j++) y[r * D + j] = x[r * D + j] + a[r * D + j] * s[j];
}

/* ga (+)= gy * s;  gs (+)= sum over rows of gy * a (ascending rows, in double). Either may be NULL. */
static gc_status cpu_add_scaled_bwd(float *ga, bool acc_a, float *gs, bool acc_s, const float *gy, const float *a,
                                    const float *s, int64_t R, int64_t D)
{
    if (ga)
        for (int64_t i = 0; i < R * D; i++) ga[i] = (acc_a ? ga[i] : 0.0f) + gy[i] * s[i % D];
    if (!gs) return GC_OK;
    double *sum = calloc((size_t)(D > 0 ? D : 1), sizeof *sum);
    if (!sum) return gc_error_set(GC_ERR_OOM, "out of host memory");
    for (int64_t r = 0; r < R; r++)
        for (int64_t j = 0; j < D; j++) sum[j] += (double)gy[r * D + j] * a[r * D + j];
    for (int64_t j = 0; j < D; j++) gs[j] = (float)(acc_s ? gs[j] + sum[j] : sum[j]);
    free(sum);
    return GC_OK;
}

/* saved[0] = a (if s needs a gradient), saved[1] = s (if a does) */
static gc_status add_scaled_backward(gc_node *nd, gc_tensor *gy)
{
    bool acc_a = false, acc_s = false;
    gc_tensor *ga = nd->in[1] ? gc_grad_target(nd, 1, &acc_a) : NULL;
    gc_tensor *gs = nd->in[2] ? gc_grad_target(nd, 2, &acc_s) : NULL;
    if ((nd->in[1] && !ga) || (nd->in[2] && !gs)) return GC_PENDING();
    if (ga || gs) {
        gc_tensor *a = nd->saved[0], *s = nd->saved[1];
        int64_t D = gy->shape[gy->ndim - 1], R = D ? gc_tensor_numel(gy) / D : 0;
        gc_status st;
        if (gy->device.type == GC_DEVICE_CUDA) st = GC_CUDA_DISPATCH(gc_cuda_add_scaled_bwd(ga, acc_a, gs, acc_s, gy, a, s));
        else st = cpu_add_scaled_bwd(ga ? gc_tensor_data(ga) : NULL, acc_a, gs ? gc_tensor_data(gs) : NULL, acc_s,
                                     gc_tensor_data(gy), a ? gc_tensor_data(a) : NULL, s ? gc_tensor_data(s) : NULL, R, D);
        GC_TRY(st);
    }
    return gc_grad_pass(nd, 0, gy); /* after the reads of gy above: x may take its buffer */
}

gc_tensor *gc_add_scaled(gc_tensor *x, gc_tensor *a, gc_tensor *s)
{
    if (!x || !a || !s) return NULL;
    gc_tensor *ins[3] = {x, a, s};
    if (!gc_check_same_device("add_scaled", 3, ins) || !gc_check_same_dtype("add_scaled", x, a) ||
        !gc_check_same_dtype("add_scaled", a, s) || !gc_check_float("add_scaled", x))
        return NULL;
    char sx[GC_SHAPE_STR_LEN], sa[GC_SHAPE_STR_LEN], ss[GC_SHAPE_STR_LEN];
    bool same = x->ndim == a->ndim && x->ndim >= 1;
    for (int d = 0; same && d < x->ndim; d++) same = x->shape[d] == a->shape[d];
    if (!same || s->ndim != 1 || s->shape[0] != x->shape[x->ndim - 1]) {
        gc_error_set(GC_ERR_SHAPE, "add_scaled: x %s, a %s and scale %s: x and a must match and the scale be [last dim]",
                     gc_shape_str(x, sx, sizeof sx), gc_shape_str(a, sa, sizeof sa), gc_shape_str(s, ss, sizeof ss));
        return NULL;
    }
    gc_tensor *xc = gc_contiguous_raw(x), *ac = gc_contiguous_raw(a), *sc = gc_contiguous_raw(s);
    gc_tensor *y = xc && ac && sc ? gc_op_new(x->dtype, x->device, x->ndim, x->shape) : NULL;
    if (!y) return NULL;
    int64_t D = x->shape[x->ndim - 1], R = D ? gc_tensor_numel(x) / D : 0;
    if (R * D > 0) {
        gc_status st;
        if (x->device.type == GC_DEVICE_CUDA) st = GC_CUDA_DISPATCH(gc_cuda_add_scaled_fwd(y, xc, ac, sc));
        else {
            cpu_add_scaled_fwd(gc_tensor_data(y), gc_tensor_data(xc), gc_tensor_data(ac), gc_tensor_data(sc), R, D);
            st = GC_OK;
        }
        if (st != GC_OK) return NULL;
    }
    gc_tensor *sv[2] = {s->slot ? ac : NULL, a->slot ? sc : NULL}; /* only what a gradient needs */
    gc_autograd_record("add_scaled", add_scaled_backward, y, 3, ins, 2, sv);
    return y;
}

/* ---------------------------------------------------------------- scale */

/* farg[0] = s */
static gc_status scale_backward(gc_node *nd, gc_tensor *gy)
{
    bool acc;
    gc_tensor *gx = gc_grad_target(nd, 0, &acc);
    if (!gx) return GC_PENDING();
    float s = (float)nd->farg[0];
    if (gy->device.type == GC_DEVICE_CUDA) return GC_CUDA_DISPATCH(gc_cuda_scale_bwd(gx, gy, s, acc));
    const float *g = gc_tensor_data(gy);
    float *d = gc_tensor_data(gx);
    for (int64_t i = 0, n = gc_tensor_numel(gy); i < n; i++) d[i] = acc ? d[i] + s * g[i] : s * g[i];
    return GC_OK;
}

gc_tensor *gc_scale(gc_tensor *x, double s)
{
    if (!x || !gc_check_float("scale", x)) return NULL;
    gc_tensor *xc = gc_contiguous(x);
    if (!xc) return NULL;
    gc_tensor *y = gc_op_new(x->dtype, x->device, x->ndim, x->shape);
    if (!y) return NULL;
    float sf = (float)s;
    if (x->device.type == GC_DEVICE_CUDA) {
        if (GC_CUDA_DISPATCH(gc_cuda_scale_fwd(y, xc, sf)) != GC_OK) return NULL;
    } else {
        const float *xv = gc_tensor_data(xc);
        float *yv = gc_tensor_data(y);
        for (int64_t i = 0, n = gc_tensor_numel(y); i < n; i++) yv[i] = sf * xv[i];
    }
    gc_node *nd = gc_autograd_record("scale", scale_backward, y, 1, &xc, 0, NULL);
    if (nd) nd->farg[0] = sf;
    return y;
}

/* ---------------------------------------------------------------- exp */

/* saved[0] = y (dy/dx = y) */
static gc_status exp_backward(gc_node *nd, gc_tensor *gy)
{
    bool acc;
    gc_tensor *gx = gc_grad_target(nd, 0, &acc), *y = nd->saved[0];
    if (!gx) return GC_PENDING();
    if (gy->device.type == GC_DEVICE_CUDA) return GC_CUDA_DISPATCH(gc_cuda_exp_bwd(gx, gy, y, acc));
    const float *g = gc_tensor_data(gy), *yv = gc_tensor_data(y);
    float *d = gc_tensor_data(gx);
    for (int64_t i = 0, n = gc_tensor_numel(gy); i < n; i++) d[i] = acc ? d[i] + g[i] * yv[i] : g[i] * yv[i];
    return GC_OK;
}

gc_tensor *gc_exp(gc_tensor *x)
{
    if (!x || !gc_check_float("exp", x)) return NULL;
    gc_tensor *xc = gc_contiguous(x);
    if (!xc) return NULL;
    gc_tensor *y = gc_op_new(x->dtype, x->device, x->ndim, x->shape);
    if (!y) return NULL;
    if (x->device.type == GC_DEVICE_CUDA) {
        if (GC_CUDA_DISPATCH(gc_cuda_exp_fwd(y, xc)) != GC_OK) return NULL;
    } else {
        const float *xv = gc_tensor_data(xc);
        float *yv = gc_tensor_data(y);
        for (int64_t i = 0, n = gc_tensor_numel(y); i < n; i++) yv[i] = (float)exp(xv[i]);
    }
    gc_autograd_record("exp", exp_backward, y, 1, &xc, 1, &y);
    return y;
}

/* ---------------------------------------------------------------- activations */

#define GC_SQRT1_2 0.70710678118654752440
#define GC_INV_SQRT_2PI 0.39894228040143267794
#define GC_SQRT_2_OVER_PI 0.79788456080286535588
#define GC_GELU_TANH_C 0.044715
#define GC_QUICK_GELU_C 1.702

static double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

static double act_f(gc_act act, double x)
{
    switch (act) {
    case GC_ACT_GELU_ERF: return 0.5 * x * (1.0 + erf(x * GC_SQRT1_2));
    case GC_ACT_GELU_TANH: return 0.5 * x * (1.0 + tanh(GC_SQRT_2_OVER_PI * (x + GC_GELU_TANH_C * x * x * x)));
    case GC_ACT_QUICK_GELU: return x * sigmoid(GC_QUICK_GELU_C * x);
    case GC_ACT_SILU: return x * sigmoid(x);
    default: return x;
    }
}

static double act_df(gc_act act, double x)
{
    switch (act) {
    case GC_ACT_GELU_ERF: return 0.5 * (1.0 + erf(x * GC_SQRT1_2)) + x * GC_INV_SQRT_2PI * exp(-0.5 * x * x);
    case GC_ACT_GELU_TANH: {
        double t = tanh(GC_SQRT_2_OVER_PI * (x + GC_GELU_TANH_C * x * x * x));
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GC_SQRT_2_OVER_PI * (1.0 + 3.0 * GC_GELU_TANH_C * x * x);
    }
    case GC_ACT_QUICK_GELU: {
        double s = sigmoid(GC_QUICK_GELU_C * x);
        return s + GC_QUICK_GELU_C * x * s * (1.0 - s);
    }
    case GC_ACT_SILU: {
        double s = sigmoid(x);
        return s * (1.0 + x * (1.0 - s));
    }
    default: return 1.0;
    }
}

static void *data_or_null(const gc_tensor *t) { return t ? gc_tensor_data(t) : NULL; }

#ifdef GC_WITH_CUDA
/* The GPU's act(x + b) backward from the general kernels, where the fused one does not
 * fit (odd widths, misaligned views, a bf16 bias gradient): x + b made once, the
 * activation's backward, the column sums from a pass of their own. */
static gc_status act_bias_bwd_composed(gc_tensor *gx, bool acc, const gc_tensor *gy, const gc_tensor *x, const gc_tensor *b,
                                       gc_act act, gc_tensor *gb, bool gb_acc, gc_tensor *a_out)
{
    gc_pool *p = gc_pool_push();
    bool prev = gc_grad_set_enabled(false);
    gc_tensor *xb = b ? gc_add((gc_tensor *)x, (gc_tensor *)b) : (gc_tensor *)x;
    gc_status st = xb ? GC_OK : GC_PENDING();
    /* the column sums of the gradient: of gx itself where it is new, else of a gradient
     * made alone first (gx then holds more than this gradient) */
    gc_tensor *t = gb && (acc || !gx) ? gc_op_new(gy->dtype, gy->device, gy->ndim, gy->shape) : gx;
    if (st == GC_OK && gb && !t) st = GC_PENDING();
    if (st == GC_OK && t && t != gx) st = gc_cuda_act_bwd(t, gy, xb, act, false);
    if (st == GC_OK && gx) st = gc_cuda_act_bwd(gx, gy, xb, act, acc);
    if (st == GC_OK && gb)
        st = gc_cuda_sum_rows(gc_tensor_data(t), t->dtype, gc_tensor_data(gb), gb->dtype, gc_tensor_rows(t),
                              gc_tensor_cols(t), gb_acc);
    if (st == GC_OK && a_out) st = gc_cuda_act_fwd(a_out, xb, act); /* last: a_out may be x */
    gc_grad_set_enabled(prev);
    gc_pool_pop(p);
    return st;
}
#endif

gc_status gc_act_backward_into(gc_tensor *gx, bool acc, const gc_tensor *gy, const gc_tensor *x, const gc_tensor *b,
                               gc_act act, gc_tensor *gb, bool gb_acc, gc_tensor *a_out)
{
    const int64_t cols = gc_tensor_cols(x), n = gc_tensor_numel(gy);
#ifdef GC_WITH_CUDA
    if (gy->device.type == GC_DEVICE_CUDA) {
        const gc_dtype dt = x->dtype;
        if (b && (!gx || gx->dtype == dt) && gy->dtype == dt && (!a_out || a_out->dtype == dt) &&
            (!gb || gb->dtype == GC_F32) &&
            gc_cuda_act_bias_fits(cols, dt, data_or_null(gx), gc_tensor_data(gy), gc_tensor_data(x), gc_tensor_data(b),
                                  data_or_null(a_out)) &&
            gx) /* (the kernel always writes gx) */
            return gc_cuda_act_bias_bwd(gc_tensor_data(gx), acc, gc_tensor_data(gy), gc_tensor_data(x), gc_tensor_data(b),
                                        data_or_null(a_out), dt, n / cols, cols, act, data_or_null(gb), gb_acc);
        return act_bias_bwd_composed(gx, acc, gy, x, b, act, gb, gb_acc, a_out);
    }
#else
    if (gy->device.type == GC_DEVICE_CUDA) return gc_error_set(GC_ERR_DEVICE, "activation backward: this build has no CUDA backend");
#endif
    const float *g = gc_tensor_data(gy), *xv = gc_tensor_data(x), *bv = data_or_null(b);
    float *d = data_or_null(gx), *av = data_or_null(a_out), *gbv = data_or_null(gb);
    double *sums = gb ? calloc((size_t)cols, sizeof(double)) : NULL;
    if (gb && !sums) return gc_error_set(GC_ERR_OOM, "out of host memory");
    for (int64_t i = 0; i < n; i++) { /* read before written: gx may be gy, a_out may be x */
        const int64_t c = i % cols;
        const double u = (double)xv[i] + (bv ? bv[c] : 0.0), v = g[i] * act_df(act, u);
        if (d) d[i] = (float)(acc ? d[i] + v : v);
        if (av) av[i] = (float)act_f(act, u);
        if (sums) sums[c] += v;
    }
    for (int64_t c = 0; sums && c < cols; c++) gbv[c] = (float)(gb_acc ? gbv[c] + sums[c] : sums[c]);
    free(sums);
    return GC_OK;
}

gc_tensor *gc_act_bias_apply(gc_tensor *x, gc_tensor *b, gc_act act)
{
    if (!x) return NULL;
    if (!b) return gc_activation(x, act);
    const int64_t cols = gc_tensor_cols(x), rows = gc_tensor_rows(x);
    if (b->ndim != 1 || b->shape[0] != cols || b->dtype != x->dtype || !gc_device_eq(b->device, x->device)) {
        char sx[GC_SHAPE_STR_LEN], sb[GC_SHAPE_STR_LEN];
        gc_error_set(GC_ERR_SHAPE, "activation: bias %s %s %s does not fit the input %s %s (one value a column)",
                     gc_tensor_label(b), gc_dtype_name(b->dtype), gc_shape_str(b, sb, sizeof sb), gc_dtype_name(x->dtype),
                     gc_shape_str(x, sx, sizeof sx));
        return NULL;
    }
    if (!(x = gc_contiguous_raw(x)) || !(b = gc_contiguous_raw(b))) return NULL;
    gc_tensor *y = gc_op_new(x->dtype, x->device, x->ndim, x->shape);
    if (!y) return NULL;
#ifdef GC_WITH_CUDA
    if (x->device.type == GC_DEVICE_CUDA) {
        if (!gc_cuda_act_bias_fits(cols, x->dtype, gc_tensor_data(y), gc_tensor_data(x), gc_tensor_data(b), NULL, NULL)) {
            bool prev = gc_grad_set_enabled(false);
            gc_tensor *a = gc_activation(gc_add(x, b), act);
            gc_grad_set_enabled(prev);
            return a;
        }
        return gc_cuda_act_bias_fwd(gc_tensor_data(y), gc_tensor_data(x), gc_tensor_data(b), x->dtype, rows, cols, act) ==
                       GC_OK
                   ? y
                   : NULL;
    }
#else
    if (x->device.type == GC_DEVICE_CUDA) {
        gc_error_set(GC_ERR_DEVICE, "activation: this build has no CUDA backend");
        return NULL;
    }
#endif
    const float *xv = gc_tensor_data(x), *bv = gc_tensor_data(b);
    float *yv = gc_tensor_data(y);
    for (int64_t i = 0, n = rows * cols; i < n; i++) yv[i] = (float)act_f(act, (double)xv[i] + bv[i % cols]);
    return y;
}

/* saved[0] = x (the derivative is recomputed from it); iarg[0] = act */
static gc_status act_backward(gc_node *nd, gc_tensor *gy)
{
    bool acc;
    gc_tensor *gx = gc_grad_target(nd, 0, &acc);
    if (!gx) return GC_PENDING();
    return gc_act_backward_into(gx, acc, gy, nd->saved[0], NULL, (gc_act)nd->iarg[0], NULL, false, NULL);
}

gc_tensor *gc_activation(gc_tensor *x, gc_act act)
{
    if (!x) return NULL;
    if ((unsigned)act > GC_ACT_SILU) {
        gc_error_set(GC_ERR_INVALID, "activation: unknown activation %d", (int)act);
        return NULL;
    }
    if (!gc_check_float("activation", x)) return NULL;
    if (act == GC_ACT_NONE) return gc_pool_add(gc_tensor_retain(x)); /* identity */
    gc_tensor *xc = gc_contiguous(x);
    if (!xc) return NULL;
    gc_tensor *y = gc_op_new(x->dtype, x->device, x->ndim, x->shape);
    if (!y) return NULL;
    if (x->device.type == GC_DEVICE_CUDA) {
        if (GC_CUDA_DISPATCH(gc_cuda_act_fwd(y, xc, act)) != GC_OK) return NULL;
    } else {
        const float *xv = gc_tensor_data(xc);
        float *yv = gc_tensor_data(y);
        for (int64_t i = 0, n = gc_tensor_numel(y); i < n; i++) yv[i] = (float)act_f(act, xv[i]);
    }
    gc_node *nd = gc_autograd_record("activation", act_backward, y, 1, &xc, 1, &xc);
    if (nd) nd->iarg[0] = act;
    return y;
}

gc_status gc_act_parse(const char *hf_name, gc_act *out)
{
    static const struct { const char *name; gc_act act; } names[] = {
        {"gelu", GC_ACT_GELU_ERF},          {"gelu_python", GC_ACT_GELU_ERF},
        {"gelu_new", GC_ACT_GELU_TANH},     {"gelu_pytorch_tanh", GC_ACT_GELU_TANH},
        {"gelu_fast", GC_ACT_GELU_TANH},    {"gelu_accurate", GC_ACT_GELU_TANH},
        {"quick_gelu", GC_ACT_QUICK_GELU},  {"silu", GC_ACT_SILU},
        {"swish", GC_ACT_SILU},             {"linear", GC_ACT_NONE},
        {"identity", GC_ACT_NONE},
    };
    if (!hf_name) return gc_error_set(GC_ERR_INVALID, "activation: no name given");
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(hf_name, names[i].name)) {
            if (out) *out = names[i].act;
            return GC_OK;
        }
    return gc_error_set(GC_ERR_INVALID,
                        "unknown activation \"%s\" (supported: gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, quick_gelu, "
                        "silu, swish)", hf_name);
}
