/* Cross entropy over rows: loss = mean_n (logsumexp(logits[n]) - logits[n, target[n]]).
 * The forward keeps each row's logsumexp (f32 [N]); the backward needs nothing else:
 * d logits[n, c] = (exp(logits[n, c] - lse[n]) - [c == target[n]]) * gy / N.
 *
 * Targets are validated on the host before anything runs: on CUDA they are copied to
 * the host for that (N indices, one small synchronising copy per call), so a bad label
 * is reported with its row instead of corrupting memory in a kernel. */
#include <math.h>
#include <stdlib.h>

#include "gc_kernel_util.h"

#ifdef GC_WITH_CUDA
/* loss.cu: logits [N, C] contiguous, targets [N] contiguous (already validated).
 * y [] = mean loss (logits' dtype); lse [N] f32. */
gc_status gc_cuda_cross_entropy_fwd(gc_tensor *y, gc_tensor *lse, const gc_tensor *logits, const gc_tensor *targets);
/* gx [N, C] (+)= (softmax - onehot) * gy[0] / N */
gc_status gc_cuda_cross_entropy_bwd(gc_tensor *gx, const gc_tensor *gy, const gc_tensor *logits, const gc_tensor *lse,
                                    const gc_tensor *targets, bool acc);
#endif

static int64_t target_at(const gc_tensor *t, const void *data, int64_t i)
{
    return t->dtype == GC_I32 ? ((const int32_t *)data)[i] : ((const int64_t *)data)[i];
}

/* Every target in [0, C): checked on the host (a copy of the targets for CUDA). */
static bool targets_valid(const gc_tensor *tc, int64_t C)
{
    int64_t N = gc_tensor_numel(tc);
    const void *data = gc_tensor_data(tc);
    void *host = NULL;
    if (tc->device.type != GC_DEVICE_CPU) {
        host = malloc(gc_tensor_nbytes(tc) + 1);
        if (!host) { gc_error_set(GC_ERR_OOM, "out of host memory"); return false; }
        if (gc_memcpy(GC_CPU, host, tc->device, data, gc_tensor_nbytes(tc)) != GC_OK) { free(host); return false; }
        data = host;
    }
    bool ok = true;
    for (int64_t i = 0; i < N && ok; i++) {
        int64_t v = target_at(tc, data, i);
        if (v < 0 || v >= C) {
            gc_error_set(GC_ERR_INVALID, "cross_entropy: %s row %lld has target %lld, outside [0, %lld)", gc_tensor_label(tc),
                         (long long)i, (long long)v, (long long)C);
            ok = false;
        }
    }
    free(host);
    return ok;
}

/* saved: logits (contiguous), targets (contiguous), lse [N] f32. */
static gc_status cross_entropy_backward(gc_node *nd, gc_tensor *gy)
{
    bool acc;
    gc_tensor *gx = gc_grad_target(nd, 0, &acc);
    if (!gx) return GC_PENDING();
    gc_tensor *x = nd->saved[0], *t = nd->saved[1], *lse = nd->saved[2];
    if (gy->device.type == GC_DEVICE_CUDA) return GC_CUDA_DISPATCH(gc_cuda_cross_entropy_bwd(gx, gy, x, lse, t, acc));
    int64_t N = x->shape[0], C = x->shape[1];
    const float *xv = gc_tensor_data(x), *lv = gc_tensor_data(lse);
    const void *tv = gc_tensor_data(t);
    float *d = gc_tensor_data(gx);
    double g = *(const float *)gc_tensor_data(gy) / (double)N;
    for (int64_t n = 0; n < N; n++) {
        int64_t tn = target_at(t, tv, n);
        for (int64_t c = 0; c < C; c++) {
            double v = (exp((double)xv[n * C + c] - lv[n]) - (c == tn ? 1.0 : 0.0)) * g;
            float *p = d + n * C + c;
            *p = (float)(acc ? *p + v : v);
        }
    }
    return GC_OK;
}

gc_tensor *gc_cross_entropy(gc_tensor *logits, gc_tensor *targets)
{
    if (!logits || !targets) return NULL;
    gc_tensor *ins[2] = {logits, targets};
    if (!gc_check_same_device("cross_entropy", 2, ins) || !gc_check_float("cross_entropy", logits) ||
        !gc_check_index("cross_entropy", targets))
        return NULL;
    if (logits->ndim != 2 || targets->ndim != 1 || targets->shape[0] != logits->shape[0] || logits->shape[1] < 1) {
        char a[GC_SHAPE_STR_LEN], b[GC_SHAPE_STR_LEN];
        gc_error_set(GC_ERR_SHAPE, "cross_entropy: logits %s %s and targets %s %s must be [N, C] (C >= 1) and [N]",
                     gc_tensor_label(logits), gc_shape_str(logits, a, sizeof a), gc_tensor_label(targets),
                     gc_shape_str(targets, b, sizeof b));
        return NULL;
    }
    int64_t N = logits->shape[0], C = logits->shape[1];
    gc_tensor *xc = gc_contiguous(logits), *tc = gc_contiguous_raw(targets);
    if (!xc || !tc || !targets_valid(tc, C)) return NULL;
    gc_tensor *y = gc_op_new(logits->dtype, logits->device, 0, NULL);
    gc_tensor *lse = gc_op_new(GC_F32, logits->device, 1, &N);
    if (!y || !lse) return NULL;
    if (logits->device.type == GC_DEVICE_CUDA) {
        if (GC_CUDA_DISPATCH(gc_cuda_cross_entropy_fwd(y, lse, xc, tc)) != GC_OK) return NULL;
    } else {
        const float *xv = gc_tensor_data(xc);
        const void *tv = gc_tensor_data(tc);
        float *lv = gc_tensor_data(lse);
        double total = 0;
        for (int64_t n = 0; n < N; n++) {
            const float *r = xv + n * C;
            double m = r[0], s = 0;
            for (int64_t c = 1; c < C; c++) m = r[c] > m ? r[c] : m;
            for (int64_t c = 0; c < C; c++) s += exp((double)r[c] - m);
            double l = m + log(s);
            lv[n] = (float)l;
            total += l - r[target_at(tc, tv, n)];
        }
        *(float *)gc_tensor_data(y) = (float)(total / (double)N); /* N = 0: NaN, as torch's mean */
    }
    gc_tensor *sv[3] = {xc, tc, lse};
    gc_autograd_record("cross_entropy", cross_entropy_backward, y, 1, &xc, 3, sv);
    return y;
}
