/* Row lookups: embedding (table rows by id) and gather_rows (one row per sequence).
 *
 * Ids are validated on the host before anything is launched, so a bad id is reported
 * at the op that received it, naming the id and the table size. On CUDA the ids are
 * copied to the host for this (a few KiB; the copy waits for the stream): they are
 * needed there anyway to group the embedding backward.
 *
 * Embedding backward is deterministic without float atomics: at forward time the
 * (id, position) pairs are sorted on the host into groups [U unique ids | U+1 offsets |
 * N positions] (i64, uploaded once); the GPU kernel gives each unique id a block, whose
 * warps add the gradient rows of that id in a fixed order. The table gradient is f32 for
 * a leaf table, whatever the table's dtype. */
#include <stdlib.h>
#include <string.h>

#include "gc_kernel_util.h"

#ifdef GC_WITH_CUDA
/* out[p, :] = src[p * rows_per_item + ids[p], :] for p < n; rows of D elements */
gc_status gc_cuda_gather_fwd(const void *src, gc_dtype dt, const void *ids, gc_dtype id_dt, int64_t n,
                             int64_t rows_per_item, int64_t D, void *out);
/* gt[ids[u], :] += sum of gy[pos, :] over the group's positions, for each unique id u */
gc_status gc_cuda_embedding_bwd(const void *gy, gc_dtype dt, const int64_t *groups, int64_t U, int64_t D, void *gt,
                                gc_dtype gt_dt);
/* gx[b, idx[b], :] += gy[b, :] */
gc_status gc_cuda_gather_rows_bwd(const void *gy, gc_dtype dt, const void *idx, gc_dtype id_dt, int64_t B, int64_t L,
                                  int64_t D, void *gx, gc_dtype gx_dt);
#endif

static inline int64_t id_at(const void *p, gc_dtype dt, int64_t i)
{
    return dt == GC_I32 ? ((const int32_t *)p)[i] : ((const int64_t *)p)[i];
}

/* The n indices of `ids` (any device, any strides) as host int64; NULL on error. */
static int64_t *ids_to_host(const gc_tensor *ids, int64_t n)
{
    int64_t *h = malloc(sizeof(int64_t) * (size_t)(n + 1));
    if (!h) { gc_error_set(GC_ERR_OOM, "out of host memory"); return NULL; }
    gc_tensor *c = gc_tensor_new(GC_I64, GC_CPU, ids->ndim, ids->shape);
    if (!c || gc_tensor_copy_into(c, ids, false) != GC_OK) {
        gc_tensor_release(c);
        free(h);
        return NULL;
    }
    if (n) memcpy(h, gc_tensor_data(c), sizeof(int64_t) * (size_t)n);
    gc_tensor_release(c);
    return h;
}

/* false (error set) if some h[i] is outside [0, hi) */
static bool check_range(const char *op, const int64_t *h, int64_t n, int64_t hi, const gc_tensor *ids,
                        const gc_tensor *src, const char *what)
{
    for (int64_t i = 0; i < n; i++)
        if (h[i] < 0 || h[i] >= hi) {
            char si[GC_SHAPE_STR_LEN], ss[GC_SHAPE_STR_LEN];
            gc_error_set(GC_ERR_INVALID, "%s: %s %s holds %lld at flat position %lld, outside [0, %lld) (%s = %lld of %s %s)",
                         op, gc_tensor_label(ids), gc_shape_str(ids, si, sizeof si), (long long)h[i], (long long)i,
                         (long long)hi, what, (long long)hi, gc_tensor_label(src), gc_shape_str(src, ss, sizeof ss));
            return false;
        }
    return true;
}

/* ---------------------------------------------------------------- embedding */

typedef struct id_pos { int64_t id, pos; } id_pos;

static int id_pos_cmp(const void *a, const void *b)
{
    const id_pos *x = a, *y = b;
    if (x->id != y->id) return x->id < y->id ? -1 : 1;
    return (x->pos > y->pos) - (x->pos < y->pos);
}

/* The backward's grouping of h[N] as an i64 tensor [U ids | U+1 offsets | N positions]
 * on dev (pool-owned); *U_out = U. */
static gc_tensor *embedding_groups(const int64_t *h, int64_t N, gc_device dev, int64_t *U_out)
{
    id_pos *pairs = malloc(sizeof(id_pos) * (size_t)(N + 1));
    int64_t *buf = malloc(sizeof(int64_t) * (size_t)(3 * N + 1));
    if (!pairs || !buf) {
        free(pairs);
        free(buf);
        gc_error_set(GC_ERR_OOM, "out of host memory");
        return NULL;
    }
    for (int64_t i = 0; i < N; i++) pairs[i] = (id_pos){h[i], i};
    qsort(pairs, (size_t)N, sizeof *pairs, id_pos_cmp);
    int64_t U = 0;
    for (int64_t i = 0; i < N; i++) U += i == 0 || pairs[i].id != pairs[i - 1].id;
    int64_t *ids = buf, *off = buf + U, *pos = buf + 2 * U + 1;
    for (int64_t i = 0, u = 0; i < N; i++) {
        if (i == 0 || pairs[i].id != pairs[i - 1].id) {
            ids[u] = pairs[i].id;
            off[u++] = i;
        }
        pos[i] = pairs[i].pos;
    }
    off[U] = N;
    gc_tensor *g = gc_tensor_from_data(GC_I64, dev, 1, GC_SHAPE(2 * U + 1 + N), buf);
    free(pairs);
    free(buf);
    *U_out = U;
    return g ? gc_pool_add(g) : NULL;
}

/* saved: CPU: ids (contiguous); CUDA: the groups. iarg: 0 N, 1 D, 2 U (CUDA). */
static gc_status embedding_backward(gc_node *nd, gc_tensor *gy)
{
    int64_t N = nd->iarg[0], D = nd->iarg[1];
    bool acc;
    gc_tensor *gt = gc_grad_target(nd, 0, &acc);
    if (!gt) return GC_PENDING();
    if (!acc) GC_TRY(gc_tensor_fill_zero(gt)); /* rows of ids not seen get 0 */
    gc_tensor *saved = nd->saved[0];
    if (gt->device.type == GC_DEVICE_CUDA)
        return GC_CUDA_DISPATCH(
            gc_cuda_embedding_bwd(gc_tensor_data(gy), gy->dtype, gc_tensor_data(saved), nd->iarg[2], D, gc_tensor_data(gt),
                                  gt->dtype));
    const float *g = gc_tensor_data(gy);
    float *t = gc_tensor_data(gt);
    for (int64_t p = 0; p < N; p++) {
        float *row = t + id_at(gc_tensor_data(saved), saved->dtype, p) * D;
        for (int64_t j = 0; j < D; j++) row[j] += g[p * D + j];
    }
    return GC_OK;
}

gc_tensor *gc_embedding(gc_tensor *table, gc_tensor *ids)
{
    if (!table || !ids) return NULL;
    gc_tensor *ins[2] = {table, ids};
    /* ids may stay on the host beside a GPU table: checked there without waiting for the GPU */
    if ((ids->device.type != GC_DEVICE_CPU && !gc_check_same_device("embedding", 2, ins)) ||
        !gc_check_float("embedding", table) || !gc_check_index("embedding", ids))
        return NULL;
    char st[GC_SHAPE_STR_LEN], si[GC_SHAPE_STR_LEN];
    if (table->ndim != 2 || ids->ndim > GC_MAX_DIMS - 1) {
        gc_error_set(GC_ERR_SHAPE, "embedding: table %s %s must be [V, D] and ids %s %s of rank <= %d",
                     gc_tensor_label(table), gc_shape_str(table, st, sizeof st), gc_tensor_label(ids),
                     gc_shape_str(ids, si, sizeof si), GC_MAX_DIMS - 1);
        return NULL;
    }
    int64_t V = table->shape[0], D = table->shape[1], N = gc_tensor_numel(ids);
    int64_t *h = ids_to_host(ids, N);
    if (!h) return NULL;
    gc_tensor *y = NULL, *tc = NULL, *idc = NULL;
    if (!check_range("embedding", h, N, V, ids, table, "V")) goto done;
    tc = gc_contiguous(table);
    idc = gc_device_eq(ids->device, table->device) ? gc_contiguous_raw(ids)
                                                   : gc_pool_add(gc_tensor_to(ids, table->device, ids->dtype));
    if (!tc || !idc) goto done;
    int64_t sh[GC_MAX_DIMS];
    memcpy(sh, ids->shape, sizeof(int64_t) * (size_t)ids->ndim);
    sh[ids->ndim] = D;
    y = gc_op_new(table->dtype, table->device, ids->ndim + 1, sh);
    if (!y) goto done;
    if (table->device.type == GC_DEVICE_CUDA) {
        if (GC_CUDA_DISPATCH(gc_cuda_gather_fwd(gc_tensor_data(tc), tc->dtype, gc_tensor_data(idc), idc->dtype, N, 0, D,
                                                gc_tensor_data(y))) != GC_OK) {
            y = NULL;
            goto done;
        }
    } else {
        const float *t = gc_tensor_data(tc);
        float *o = gc_tensor_data(y);
        for (int64_t p = 0; p < N; p++) memcpy(o + p * D, t + h[p] * D, sizeof(float) * (size_t)D);
    }
    if (gc_autograd_should_record(1, &tc)) {
        int64_t U = 0;
        gc_tensor *saved = table->device.type == GC_DEVICE_CUDA ? embedding_groups(h, N, table->device, &U) : idc;
        gc_node *nd = saved ? gc_autograd_record("embedding", embedding_backward, y, 1, &tc, 1, &saved) : NULL;
        if (!nd) { y = NULL; goto done; }
        nd->iarg[0] = N;
        nd->iarg[1] = D;
        nd->iarg[2] = U;
    }
done:
    free(h);
    return y;
}

/* ---------------------------------------------------------------- gather_rows */

/* saved: idx [B] (contiguous). iarg: 0 B, 1 L, 2 D. */
static gc_status gather_rows_backward(gc_node *nd, gc_tensor *gy)
{
    int64_t B = nd->iarg[0], L = nd->iarg[1], D = nd->iarg[2];
    gc_tensor *idx = nd->saved[0];
    bool acc;
    gc_tensor *gx = gc_grad_target(nd, 0, &acc);
    if (!gx) return GC_PENDING();
    if (!acc) GC_TRY(gc_tensor_fill_zero(gx)); /* rows not gathered get 0 */
    if (gx->device.type == GC_DEVICE_CUDA)
        return GC_CUDA_DISPATCH(gc_cuda_gather_rows_bwd(gc_tensor_data(gy), gy->dtype, gc_tensor_data(idx), idx->dtype,
                                                        B, L, D, gc_tensor_data(gx), gx->dtype));
    const float *g = gc_tensor_data(gy);
    float *x = gc_tensor_data(gx);
    for (int64_t b = 0; b < B; b++) {
        float *row = x + (b * L + id_at(gc_tensor_data(idx), idx->dtype, b)) * D;
        for (int64_t j = 0; j < D; j++) row[j] += g[b * D + j];
    }
    return GC_OK;
}

gc_tensor *gc_gather_rows(gc_tensor *x, gc_tensor *idx)
{
    if (!x || !idx) return NULL;
    gc_tensor *ins[2] = {x, idx};
    if ((idx->device.type != GC_DEVICE_CPU && !gc_check_same_device("gather_rows", 2, ins)) ||
        !gc_check_float("gather_rows", x) || !gc_check_index("gather_rows", idx))
        return NULL;
    if (x->ndim != 3 || idx->ndim != 1 || idx->shape[0] != x->shape[0]) {
        char sx[GC_SHAPE_STR_LEN], si[GC_SHAPE_STR_LEN];
        gc_error_set(GC_ERR_SHAPE, "gather_rows: x %s %s must be [B, L, D] and idx %s %s [B]", gc_tensor_label(x),
                     gc_shape_str(x, sx, sizeof sx), gc_tensor_label(idx), gc_shape_str(idx, si, sizeof si));
        return NULL;
    }
    int64_t B = x->shape[0], L = x->shape[1], D = x->shape[2];
    int64_t *h = ids_to_host(idx, B);
    if (!h) return NULL;
    gc_tensor *y = NULL, *xc = NULL, *idc = NULL;
    if (!check_range("gather_rows", h, B, L, idx, x, "L")) goto done;
    xc = gc_contiguous(x);
    idc = gc_device_eq(idx->device, x->device) ? gc_contiguous_raw(idx) : gc_pool_add(gc_tensor_to(idx, x->device, idx->dtype));
    if (!xc || !idc) goto done;
    y = gc_op_new(x->dtype, x->device, 2, GC_SHAPE(B, D));
    if (!y) goto done;
    if (x->device.type == GC_DEVICE_CUDA) {
        if (GC_CUDA_DISPATCH(gc_cuda_gather_fwd(gc_tensor_data(xc), xc->dtype, gc_tensor_data(idc), idc->dtype, B, L, D,
                                                gc_tensor_data(y))) != GC_OK) {
            y = NULL;
            goto done;
        }
    } else {
        const float *s = gc_tensor_data(xc);
        float *o = gc_tensor_data(y);
        for (int64_t b = 0; b < B; b++) memcpy(o + b * D, s + (b * L + h[b]) * D, sizeof(float) * (size_t)D);
    }
    if (gc_autograd_should_record(1, &xc)) {
        gc_node *nd = gc_autograd_record("gather_rows", gather_rows_backward, y, 1, &xc, 1, &idc);
        if (!nd) { y = NULL; goto done; }
        nd->iarg[0] = B;
        nd->iarg[1] = L;
        nd->iarg[2] = D;
    }
done:
    free(h);
    return y;
}
