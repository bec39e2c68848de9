/* Patches: unfold an image into non-overlapping P x P patches, and the patch embedding
 * (a conv with stride = kernel = P) as unfold + linear.
 *
 * out[b, gy*GW + gx, c*P*P + y*P + x] = pixels[b, c, gy*P + y, gx*P + x], GW = W/P:
 * patches row-major over the grid, each flattened (c, y, x) like a conv weight
 * [D, C, P, P] viewed as [D, C*P*P]. The map is a bijection, so the backward is the
 * inverse gather (no atomics). */
#include "gc_kernel_util.h"

#ifdef GC_WITH_CUDA
/* patch.cu: pixels [B, C, H, W] contiguous -> patches [B, N, C*P*P]; and the inverse
 * (gx (+)= the scattered gy). */
gc_status gc_cuda_unfold_patches_fwd(gc_tensor *y, const gc_tensor *x, int64_t B, int64_t C, int64_t H, int64_t W, int64_t P);
gc_status gc_cuda_unfold_patches_bwd(gc_tensor *gx, const gc_tensor *gy, int64_t B, int64_t C, int64_t H, int64_t W, int64_t P,
                                     bool acc);
#endif

/* Index into patches of pixel (b, c, h, w). */
static inline int64_t patch_index(int64_t b, int64_t c, int64_t h, int64_t w, int64_t C, int64_t H, int64_t W, int64_t P)
{
    int64_t GW = W / P, N = (H / P) * GW, K = C * P * P;
    return (b * N + (h / P) * GW + w / P) * K + c * P * P + (h % P) * P + w % P;
}

/* iarg: 0 B, 1 C, 2 H, 3 W, 4 P */
static gc_status unfold_backward(gc_node *nd, gc_tensor *gy)
{
    bool acc;
    gc_tensor *gx = gc_grad_target(nd, 0, &acc);
    if (!gx) return GC_PENDING();
    int64_t B = nd->iarg[0], C = nd->iarg[1], H = nd->iarg[2], W = nd->iarg[3], P = nd->iarg[4];
    if (gy->device.type == GC_DEVICE_CUDA) return GC_CUDA_DISPATCH(gc_cuda_unfold_patches_bwd(gx, gy, B, C, H, W, P, acc));
    const float *g = gc_tensor_data(gy);
    float *d = gc_tensor_data(gx);
    int64_t i = 0;
    for (int64_t b = 0; b < B; b++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t h = 0; h < H; h++)
                for (int64_t w = 0; w < W; w++, i++) {
                    float v = g[patch_index(b, c, h, w, C, H, W, P)];
                    d[i] = acc ? d[i] + v : v;
                }
    return GC_OK;
}

gc_tensor *gc_unfold_patches(gc_tensor *pixels, int64_t patch)
{
    if (!pixels || !gc_check_float("unfold_patches", pixels)) return NULL;
    char s[GC_SHAPE_STR_LEN];
    if (pixels->ndim != 4) {
        gc_error_set(GC_ERR_SHAPE, "unfold_patches: %s %s must be [B, C, H, W]", gc_tensor_label(pixels),
                     gc_shape_str(pixels, s, sizeof s));
        return NULL;
    }
    int64_t B = pixels->shape[0], C = pixels->shape[1], H = pixels->shape[2], W = pixels->shape[3], P = patch;
    if (P < 1 || H % P || W % P) {
        gc_error_set(GC_ERR_SHAPE, "unfold_patches: %s %s: height %lld and width %lld are not multiples of the patch size %lld",
                     gc_tensor_label(pixels), gc_shape_str(pixels, s, sizeof s), (long long)H, (long long)W, (long long)P);
        return NULL;
    }
    gc_tensor *xc = gc_contiguous(pixels);
    if (!xc) return NULL;
    gc_tensor *y = gc_op_new(pixels->dtype, pixels->device, 3, GC_SHAPE(B, (H / P) * (W / P), C * P * P));
    if (!y) return NULL;
    if (pixels->device.type == GC_DEVICE_CUDA) {
        if (GC_CUDA_DISPATCH(gc_cuda_unfold_patches_fwd(y, xc, B, C, H, W, P)) != GC_OK) return NULL;
    } else {
        const float *x = gc_tensor_data(xc);
        float *o = gc_tensor_data(y);
        int64_t i = 0;
        for (int64_t b = 0; b < B; b++)
            for (int64_t c = 0; c < C; c++)
                for (int64_t h = 0; h < H; h++)
                    for (int64_t w = 0; w < W; w++, i++) o[patch_index(b, c, h, w, C, H, W, P)] = x[i];
    }
    gc_node *nd = gc_autograd_record("unfold_patches", unfold_backward, y, 1, &xc, 0, NULL);
    if (nd) {
        int64_t a[5] = {B, C, H, W, P};
        for (int i = 0; i < 5; i++) nd->iarg[i] = a[i];
    }
    return y;
}

gc_tensor *gc_patch_embed(gc_tensor *pixels, gc_tensor *w, gc_tensor *b)
{
    if (!pixels || !w) return NULL;
    char sp[GC_SHAPE_STR_LEN], sw[GC_SHAPE_STR_LEN];
    if (pixels->ndim != 4 || w->ndim != 4 || w->shape[2] != w->shape[3] || w->shape[2] < 1) {
        gc_error_set(GC_ERR_SHAPE, "patch_embed: pixels %s %s must be [B, C, H, W] and weight %s %s [D, C, P, P]",
                     gc_tensor_label(pixels), gc_shape_str(pixels, sp, sizeof sp), gc_tensor_label(w),
                     gc_shape_str(w, sw, sizeof sw));
        return NULL;
    }
    int64_t C = pixels->shape[1], D = w->shape[0], P = w->shape[2];
    if (w->shape[1] != C) {
        gc_error_set(GC_ERR_SHAPE, "patch_embed: pixels %s %s have %lld channels but weight %s %s expects %lld",
                     gc_tensor_label(pixels), gc_shape_str(pixels, sp, sizeof sp), (long long)C, gc_tensor_label(w),
                     gc_shape_str(w, sw, sizeof sw), (long long)w->shape[1]);
        return NULL;
    }
    if (pixels->shape[2] % P || pixels->shape[3] % P) {
        gc_error_set(GC_ERR_SHAPE, "patch_embed: pixels %s %s: height and width are not multiples of the patch size %lld "
                     "(weight %s %s)", gc_tensor_label(pixels), gc_shape_str(pixels, sp, sizeof sp), (long long)P,
                     gc_tensor_label(w), gc_shape_str(w, sw, sizeof sw));
        return NULL;
    }
    if (b && (b->ndim != 1 || b->shape[0] != D)) {
        char sb[GC_SHAPE_STR_LEN];
        gc_error_set(GC_ERR_SHAPE, "patch_embed: bias %s %s must be [%lld] for weight %s %s", gc_tensor_label(b),
                     gc_shape_str(b, sb, sizeof sb), (long long)D, gc_tensor_label(w), gc_shape_str(w, sw, sizeof sw));
        return NULL;
    }
    gc_tensor *ins[3] = {pixels, w, b};
    if (!gc_check_same_device("patch_embed", 3, ins) || !gc_check_same_dtype("patch_embed", pixels, w) ||
        (b && !gc_check_same_dtype("patch_embed", pixels, b)))
        return NULL;
    gc_tensor *patches = gc_unfold_patches(pixels, P);                 /* [B, N, C*P*P] */
    gc_tensor *w2 = gc_view(w, 2, GC_SHAPE(D, C * P * P));           /* [D, C*P*P] */
    return gc_linear(patches, w2, b);                                 /* [B, N, D] */
}
