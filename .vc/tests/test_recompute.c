/* Recomputed layernorm outputs: gc_block_forward hands its two layernorm outputs to
 * gc_recompute_release, so the tape holds neither after the block's forward and
 * backward recomputes each only while its consumers run. Here: the bytes the tape and
 * the device hold after one block (exactly), the peak of two blocks, and losses and
 * gradients bit-identical to keeping them (one block: plain, LoRA, checkpointed; CLIP,
 * CLIP LoRA and DINOv3 in training mode through the gradient cache). GC_TEST_DEVICE /
 * GC_TEST_DTYPE run the same on the GPU (plus the allocator's steady state). */
#include <stdlib.h>
#include <string.h>

#include "../gradcache/gc_clip_task.h"
#include "../gradcache/gc_dinov3_task.h"
#include "../models/gc_lora.h"
#include "gc_test.h"

#ifndef GC_FIXTURES_DIR
#error "GC_FIXTURES_DIR must be defined by the build"
#endif

/* ---------------------------------------------------------------- one block */

typedef struct blk {
    gc_params ps;
    gc_block b;
    gc_tensor *x; /* the input [B, L, D] */
} blk;

/* The seeded test block (gc_test_block_init) and its input; blk_free releases both. */
static void blk_init(blk *k, int64_t B, int64_t L, int64_t D, int64_t H, int64_t F, const gc_lora_options *lora,
                     bool x_grad)
{
    gc_test_block_init(&k->ps, &k->b, D, H, F, lora, 7);
    k->x = gc_test_block_input(B, L, D, 21, x_grad);
}

static void blk_free(blk *k)
{
    gc_tensor_release(k->x);
    gc_params_free(&k->ps);
}

typedef struct blk_run {
    size_t saved, mem;   /* the tape's saved bytes and the device's current bytes after the forward */
    size_t peak;         /* device peak over forward and backward, above the start */
    double *out, *grads; /* output and every gradient (parameters, then x), flattened */
} blk_run;

static void blk_run_free(blk_run *r)
{
    free(r->out);
    free(r->grads);
}

/* n_blocks applications of the block to x (checkpointed or not), then backward from a fixed
 * cotangent, with recompute on or off. */
static blk_run blk_step(blk *k, gc_tensor *x, int n_blocks, bool checkpoint, bool recompute)
{
    blk_run r = {0};
    gc_device dev = gc_test_device();
    bool prev = gc_recompute_set_enabled(recompute);
    ck_assert_int_eq(gc_params_zero_grad(&k->ps), GC_OK);
    ck_assert_int_eq(gc_tensor_zero_grad(x), GC_OK);
    gc_pool *p = gc_pool_push();
    gc_tensor *h = gc_test_randn(x->ndim, x->shape, 22, 1.0);
    gc_tensor *gy = gc_pool_add(gc_tensor_to(h, dev, x->dtype));
    gc_tensor_release(h);
    gc_device_sync(dev);
    gc_memory_reset_peak(dev);
    size_t base = gc_memory_stats_get(dev).current;
    gc_tape *t = gc_tape_init();
    gc_tape_begin(t);
    gc_tensor *y = x;
    for (int i = 0; i < n_blocks; i++) y = gc_block_run(&k->b, y, checkpoint);
    gc_tape_end(t);
    ck_assert_msg(y, "%s", gc_error_message());
    r.saved = gc_tape_saved_bytes(t);
    r.mem = gc_memory_stats_get(dev).current - base;
    ck_assert_msg(gc_backward(t, 1, &y, &gy) == GC_OK, "%s", gc_error_message());
    gc_tape_free(t);
    gc_device_sync(dev);
    r.peak = gc_memory_stats_get(dev).peak - base;
    r.out = calloc((size_t)gc_tensor_numel(y), sizeof(double));
    ck_assert_int_eq(gc_tensor_to_host_f64(y, r.out), GC_OK);
    int64_t np = gc_params_count(&k->ps, false), nx = gc_tensor_numel(x);
    r.grads = realloc(gc_test_flat_grads(&k->ps), sizeof(double) * (size_t)(np + nx));
    ck_assert(r.out && r.grads);
    if (gc_tensor_grad(x)) ck_assert_int_eq(gc_tensor_to_host_f64(gc_tensor_grad(x), r.grads + np), GC_OK);
    else memset(r.grads + np, 0, sizeof(double) * (size_t)nx);
    gc_pool_pop(p);
    gc_recompute_set_enabled(prev);
    return r;
}

static void assert_same(const blk_run *a, const blk_run *b, int64_t n_out, int64_t n_grads, const char *label)
{
    ck_assert_msg(!memcmp(a->out, b->out, sizeof(double) * (size_t)n_out), "%s: outputs differ", label);
    for (int64_t i = 0; i < n_grads; i++)
        ck_assert_msg(!memcmp(&a->grads[i], &b->grads[i], sizeof(double)), "%s: gradient %lld differs: %.9g vs %.9g",
                      label, (long long)i, a->grads[i], b->grads[i]);
}

typedef struct blk_case {
    const char *label;
    bool lora, x_grad, checkpoint;
    double lora_dropout;
    int saves; /* saved tensors on the tape that view a freed layernorm output */
    int freed; /* layernorm outputs freed */
    int acts;  /* MLP activations [B, L, F] kept when recompute is off (fc2's linear_act) */
} blk_case;

/* LoRA targets q_proj, v_proj, fc1: with no adapter dropout their lora_A saves the
 * layernorm output too (5 views of the first, 2 of the second); with dropout, the dropped
 * copy. LoRA with a frozen input: the first layernorm records nothing (nothing could
 * recompute its output, which lora_A saves: kept); the second's output is freed. */
static const blk_case BLK_CASES[] = {
    {"plain", false, true, false, 0, 3 + 1, 2, 1},
    {"plain, frozen input", false, false, false, 0, 3 + 1, 2, 1},
    {"LoRA", true, true, false, 0, 5 + 2, 2, 1},
    {"LoRA dropout 0.1", true, true, false, 0.1, 3 + 1, 2, 1},
    {"LoRA, frozen input", true, false, false, 0, 2, 1, 1},
    {"checkpointed", false, true, true, 0, 0, 0, 0},
    {"LoRA checkpointed", true, true, true, 0.1, 0, 0, 0},
};
#define N_BLK_CASES ((int)(sizeof BLK_CASES / sizeof BLK_CASES[0]))

/* With recompute, the tape holds exactly the layernorm outputs' saved views and the MLP
 * activation fewer bytes, the device exactly the two outputs and the activation fewer (the
 * CPU counts bytes as asked; the GPU in size classes), and the output and every gradient
 * are bit-identical. */
START_TEST(test_block_saved_bytes_and_grads)
{
    const blk_case *c = &BLK_CASES[_i];
    const int64_t B = 2, L = 7, D = 16, H = 2, F = 64;
    gc_lora_options lo = {.r = 4, .alpha = 8, .dropout = c->lora_dropout, .targets = "q_proj,v_proj,fc1"};
    blk k;
    blk_init(&k, B, L, D, H, F, c->lora ? &lo : NULL, c->x_grad);
    gc_tensor *x = k.x;
    blk_run off = blk_step(&k, x, 1, c->checkpoint, false), on = blk_step(&k, x, 1, c->checkpoint, true);
    const size_t out_bytes = (size_t)(B * L * D) * gc_dtype_size(gc_test_dtype());
    const size_t saves = (size_t)c->saves, freed = (size_t)c->freed;
    const size_t acts = (size_t)c->acts * (size_t)(B * L * F) * gc_dtype_size(gc_test_dtype());
    printf("block %-22s saved %zu -> %zu bytes, device %zu -> %zu bytes, peak %zu -> %zu\n", c->label, off.saved,
           on.saved, off.mem, on.mem, off.peak, on.peak);
    ck_assert_msg(off.saved - on.saved == saves * out_bytes + acts, "%s: the tape holds %zu fewer bytes, want %zu",
                  c->label, off.saved - on.saved, saves * out_bytes + acts);
    if (gc_test_device().type == GC_DEVICE_CPU)
        ck_assert_msg(off.mem - on.mem == freed * out_bytes + acts, "%s: the CPU holds %zu fewer bytes, want %zu",
                      c->label, off.mem - on.mem, freed * out_bytes + acts);
    else
        ck_assert_msg(off.mem - on.mem >= freed * out_bytes + acts, "%s: the GPU holds %zu fewer bytes, want >= %zu",
                      c->label, off.mem - on.mem, freed * out_bytes + acts);
    ck_assert_uint_le(on.peak, off.peak);
    const int64_t n_grads = gc_params_count(&k.ps, false) + gc_tensor_numel(x);
    if (gc_test_device().type == GC_DEVICE_CUDA) { /* a difference below means nothing if the kernels are not repeatable */
        blk_run again = blk_step(&k, x, 1, c->checkpoint, false);
        assert_same(&again, &off, B * L * D, n_grads, "no recompute, run twice (kernels not deterministic?)");
        blk_run_free(&again);
    }
    assert_same(&on, &off, B * L * D, n_grads, c->label);
    blk_run_free(&off);
    blk_run_free(&on);
    blk_free(&k);
}
END_TEST

/* Two blocks: the second's forward runs without the first's layernorm outputs, and a
 * recomputed output lives only while its consumers' backward runs, so the peak of
 * forward + backward drops by (at least) the first block's two outputs. */
START_TEST(test_two_blocks_peak)
{
    const int64_t B = 2, L = 7, D = 16, H = 2, F = 64;
    blk k;
    blk_init(&k, B, L, D, H, F, NULL, true);
    gc_tensor *x = k.x;
    blk_run off = blk_step(&k, x, 2, false, false), on = blk_step(&k, x, 2, false, true);
    const size_t out_bytes = (size_t)(B * L * D) * gc_dtype_size(gc_test_dtype());
    printf("two blocks: saved %zu -> %zu bytes, peak %zu -> %zu bytes\n", off.saved, on.saved, off.peak, on.peak);
    const size_t act_bytes = (size_t)(B * L * F) * gc_dtype_size(gc_test_dtype());
    ck_assert_uint_eq(off.saved - on.saved, 2 * 4 * out_bytes + 2 * act_bytes);
    ck_assert_msg(on.peak + 2 * out_bytes <= off.peak, "peak %zu with recompute, %zu without", on.peak, off.peak);
    assert_same(&on, &off, B * L * D, gc_params_count(&k.ps, false) + gc_tensor_numel(x), "two blocks");
    blk_run_free(&off);
    blk_run_free(&on);
    blk_free(&k);
}
END_TEST

/* CLIP ViT-B/16's block (197 tokens, width 768, 12 heads, MLP 3072) on one sample: the
 * bytes the tape holds after the forward, with and without recompute. */
START_TEST(test_vit_b16_block_bytes)
{
    const int64_t B = 1, L = 197, D = 768, H = 12, F = 3072;
    blk k;
    blk_init(&k, B, L, D, H, F, NULL, true);
    gc_tensor *x = k.x;
    size_t saved[2], mem[2];
    for (int on = 0; on < 2; on++) {
        bool prev = gc_recompute_set_enabled(on);
        gc_pool *p = gc_pool_push();
        size_t base = gc_memory_stats_get(gc_test_device()).current;
        gc_tape *t = gc_tape_init();
        gc_tape_begin(t);
        gc_tensor *y = gc_block_forward(&k.b, x);
        gc_tape_end(t);
        ck_assert_msg(y, "%s", gc_error_message());
        saved[on] = gc_tape_saved_bytes(t);
        mem[on] = gc_memory_stats_get(gc_test_device()).current - base;
        gc_tape_free(t);
        gc_pool_pop(p);
        gc_recompute_set_enabled(prev);
    }
    const size_t ln = (size_t)(B * L * D) * gc_dtype_size(gc_test_dtype());
    /* of the saved bytes, the weights (saved by reference, not copies) are the same in both */
    printf("ViT-B/16 block, 1 sample, %s: tape saved %zu -> %zu bytes, device holds %zu -> %zu bytes\n",
           gc_dtype_name(gc_test_dtype()), saved[0], saved[1], mem[0], mem[1]);
    const size_t act = (size_t)(B * L * F) * gc_dtype_size(gc_test_dtype()); /* fc2's input, kept without recompute */
    ck_assert_uint_eq(saved[0] - saved[1], 4 * ln + act);
    if (gc_test_device().type == GC_DEVICE_CPU) ck_assert_uint_eq(mem[0] - mem[1], 2 * ln + act);
    blk_free(&k);
}
END_TEST

/* On the GPU, steps with recompute allocate nothing new after the first. */
START_TEST(test_block_allocator_steady_state)
{
    gc_device dev = gc_test_device();
    if (dev.type != GC_DEVICE_CUDA) return; /* the host allocator does not cache */
    const int64_t B = 2, L = 37, D = 64, H = 2, F = 256;
    blk k;
    blk_init(&k, B, L, D, H, F, NULL, true);
    gc_tensor *x = k.x;
    uint64_t allocs[4];
    size_t cur[4];
    for (int s = 0; s < 4; s++) {
        if (s) {
            blk_run r = blk_step(&k, x, 2, false, true);
            blk_run_free(&r);
        }
        gc_memory_stats st = gc_memory_stats_get(dev);
        allocs[s] = st.system_allocs;
        cur[s] = st.current;
    }
    printf("block steps on %s: system allocs %llu -> %llu -> %llu -> %llu\n", gc_device_name(dev),
           (unsigned long long)allocs[0], (unsigned long long)allocs[1], (unsigned long long)allocs[2],
           (unsigned long long)allocs[3]);
    ck_assert_msg(allocs[2] == allocs[1] && allocs[3] == allocs[1], "a repeated step allocated");
    ck_assert_msg(cur[2] == cur[1] && cur[3] == cur[1], "a repeated step leaked");
    blk_free(&k);
}
END_TEST

/* ---------------------------------------------------------------- whole models */

typedef struct model_run {
    double loss;
    double *grads;
} model_run;

static void assert_same_model(const model_run *a, const model_run *b, const gc_params *ps, const char *label)
{
    ck_assert_msg(!memcmp(&a->loss, &b->loss, sizeof(double)), "%s: loss %.17g vs %.17g", label, a->loss, b->loss);
    int64_t n = gc_params_count(ps, false);
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(!memcmp(&a->grads[i], &b->grads[i], sizeof(double)), "%s: gradient %lld: %.9g vs %.9g", label,
                      (long long)i, a->grads[i], b->grads[i]);
    printf("%-44s loss %.9g, %lld gradients bit-identical\n", label, a->loss, (long long)n);
}

static model_run clip_step(gc_clip *m, gc_tensor *pixels, gc_tensor *ids, int64_t chunk, bool recompute)
{
    bool prev = gc_recompute_set_enabled(recompute);
    gc_params *ps = gc_clip_params(m);
    ck_assert_int_eq(gc_params_zero_grad(ps), GC_OK);
    gc_clip_task task;
    gc_clip_task_init(&task, m, pixels, ids, chunk);
    gc_gradcache_result res;
    ck_assert_msg(gc_clip_task_step(&task, (gc_rand_context){3, 1, 0}, &res) == GC_OK, "%s", gc_error_message());
    model_run r = {res.loss, gc_test_flat_grads(ps)};
    gc_gradcache_result_clear(&res);
    gc_recompute_set_enabled(prev);
    return r;
}

/* CLIP fixtures (clip_dropout in training mode: attention dropout on; clip_lora: PEFT's
 * adapter with dropout), without and with the cache, without and with checkpointing. */
/* Nodes the block's forward records. */
static int blk_nodes(blk *k)
{
    gc_tape *t = gc_tape_init();
    gc_tape_begin(t);
    gc_pool *p = gc_pool_push();
    ck_assert(gc_block_forward(&k->b, k->x));
    gc_tape_end(t);
    int n = gc_tape_size(t);
    gc_pool_pop(p);
    gc_tape_free(t);
    return n;
}

/* q, k and v packed (gc_block_pack_qkv): one GEMM of [3D, D] (one linear node where there
 * were three, and one view where there were three: one node fewer, three slices), the
 * numbers of three (the output bit for bit: each output column is the same dot product;
 * gradients to rounding: dX sums over 3D at once), the members' gradients regions of the
 * pack's. A member frozen alone: three GEMMs again, the others' gradients as before;
 * trained again: one. */
START_TEST(test_block_qkv_pack)
{
    const int64_t B = 3, L = 9, D = 64, H = 2, F = 96;
    const bool rope = _i; /* DINOv3's: tokens 1.. rotated, q and k in place in the fused output */
    blk k;
    blk_init(&k, B, L, D, H, F, NULL, true);
    gc_tensor *cs = NULL, *sn = NULL;
    if (rope) {
        gc_tensor *hc = gc_test_randn(2, GC_SHAPE(L - 1, D / H), 41, 1.0), *hs = gc_test_randn(2, GC_SHAPE(L - 1, D / H), 42, 1.0);
        cs = gc_tensor_to(hc, gc_test_device(), GC_F32), sn = gc_tensor_to(hs, gc_test_device(), GC_F32);
        gc_tensor_release(hc), gc_tensor_release(hs);
        k.b.rope_cos = cs, k.b.rope_sin = sn, k.b.rope_start = 1;
    }
    const int64_t n_out = B * L * D, n_grads = gc_params_count(&k.ps, false) + B * L * D;
    const int three = blk_nodes(&k);
    blk_run r0 = blk_step(&k, k.x, 1, false, true);
    ck_assert_int_eq(gc_block_pack_qkv(&k.ps, &k.b), GC_OK);
    ck_assert(k.b.qkv_w && k.b.qkv_b);
    ck_assert_int_eq(blk_nodes(&k), three - 1);
    blk_run r1 = blk_step(&k, k.x, 1, false, true);
    /* what the forward leaves held: one [B, L, 3D] for q, k and v as three [B, L, D] did,
     * rotated or not */
    ck_assert_uint_eq(r1.mem, r0.mem);
    const bool cpu = gc_test_device().type == GC_DEVICE_CPU;
    const double tol = gc_test_dtype() == GC_F32 ? 1e-5 : 2e-2;
    if (cpu) ck_assert_msg(!memcmp(r0.out, r1.out, sizeof(double) * (size_t)n_out), "packed: the output differs");
    else ck_assert_double_le(gc_test_vec_rel_err(r1.out, r0.out, n_out), tol);
    ck_assert_double_le(gc_test_vec_rel_err(r1.grads, r0.grads, n_grads), tol);
    gc_tensor *G = gc_tensor_grad(k.b.qkv_w), *gk = gc_tensor_grad(k.b.k.w);
    ck_assert(G && gk && gk->storage == G->storage && gk->offset == G->offset + D * D);
    /* k's weight frozen alone, then trained again */
    const int ik = gc_params_index(&k.ps, k.b.k.w);
    ck_assert_int_eq(gc_params_set_trainable(&k.ps, ik, false), GC_OK);
    ck_assert(!gc_tensor_needs_grad(k.b.qkv_w));
    ck_assert_int_eq(blk_nodes(&k), three);
    blk_run r2 = blk_step(&k, k.x, 1, false, true);
    const int64_t off = (int64_t)(k.b.k.w->offset - k.b.qkv_w->offset); /* k's weight among the flat gradients */
    int64_t at = 0;
    for (int i = 0; i < ik; i++) at += gc_tensor_numel(k.ps.items[i].value);
    ck_assert_int_eq(off, D * D);
    for (int64_t i = at; i < at + D * D; i++) ck_assert(r2.grads[i] == 0); /* no gradient */
    memcpy(r2.grads + at, r0.grads + at, sizeof(double) * (size_t)(D * D));
    ck_assert_double_le(gc_test_vec_rel_err(r2.grads, r0.grads, n_grads), tol);
    ck_assert_int_eq(gc_params_set_trainable(&k.ps, ik, true), GC_OK);
    ck_assert(gc_tensor_needs_grad(k.b.qkv_w));
    ck_assert_int_eq(blk_nodes(&k), three - 1);
    blk_run r3 = blk_step(&k, k.x, 1, false, true);
    ck_assert_double_le(gc_test_vec_rel_err(r3.grads, r0.grads, n_grads), tol);
    blk_run_free(&r0), blk_run_free(&r1), blk_run_free(&r2), blk_run_free(&r3);
    blk_free(&k);
    gc_tensor_release(cs), gc_tensor_release(sn);
}
END_TEST

/* gc_params_pack itself: the values kept, a gap of zeros, the gradients one buffer
 * (zero_grad clears it whole, the gap too), and bad packs refused with their names. */
START_TEST(test_params_pack)
{
    gc_params ps;
    gc_params_init(&ps, GC_CPU, GC_F32);
    int a = gc_params_add(&ps, "a.weight", 2, GC_SHAPE(2, 3)), b = gc_params_add(&ps, "b.weight", 2, GC_SHAPE(1, 3));
    int c = gc_params_add(&ps, "c.weight", 2, GC_SHAPE(2, 4)), d = gc_params_add(&ps, "d.bias", 1, GC_SHAPE(2));
    ck_assert(a >= 0 && b >= 0 && c >= 0 && d >= 0);
    float *va = gc_tensor_data(ps.items[a].value), *vb = gc_tensor_data(ps.items[b].value);
    for (int i = 0; i < 6; i++) va[i] = (float)(i + 1);
    for (int i = 0; i < 3; i++) vb[i] = (float)(-i - 1);
    gc_tensor *pk = gc_params_pack(&ps, 3, (const int[]){a, -1, b}, (const int64_t[]){0, 2, 0});
    ck_assert_msg(pk, "%s", gc_error_message());
    ck_assert(pk->shape[0] == 5 && pk->shape[1] == 3);
    const float want[15] = {1, 2, 3, 4, 5, 6, 0, 0, 0, 0, 0, 0, -1, -2, -3};
    ck_assert(!memcmp(gc_tensor_data(pk), want, sizeof want)); /* the values moved with their members */
    ck_assert(gc_tensor_data(ps.items[b].value) == (float *)gc_tensor_data(pk) + 12);
    gc_tensor *G = gc_tensor_grad(pk), *gb = gc_tensor_grad(ps.items[b].value);
    ck_assert(G && gb && gb->storage == G->storage && gb->offset == G->offset + 12);
    ck_assert_int_eq(gc_tensor_fill(G, 7.0), GC_OK); /* the gap too, as a bias gradient's sums would */
    ck_assert_int_eq(gc_params_zero_grad(&ps), GC_OK);
    float g[15];
    ck_assert_int_eq(gc_tensor_to_host_f32(G, g), GC_OK);
    for (int i = 0; i < 15; i++) ck_assert(g[i] == 0);
    /* refused: packed twice, other trailing dims, a gap of no rows, no members */
    struct { int n; int idx[3]; int64_t gap[3]; const char *names; } bad[] = {
        {2, {a, c}, {0, 0}, "a.weight"}, {2, {c, d}, {0, 0}, "d.bias"}, {2, {c, -1}, {0, 0}, "a gap"}, {0, {0}, {0}, "members"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        gc_error_clear();
        ck_assert_msg(!gc_params_pack(&ps, bad[i].n, bad[i].idx, bad[i].gap), "case %zu", i);
        ck_assert_int_eq(gc_error_code(), GC_ERR_INVALID);
        ck_assert_msg(strstr(gc_error_message(), bad[i].names), "case %zu: %s", i, gc_error_message());
    }
    /* the helpers refuse what does not fit, with the tensor's name */
    gc_error_clear();
    ck_assert_int_eq(gc_tensor_rebind(ps.items[c].value, pk, 10), GC_ERR_INVALID); /* past the end */
    ck_assert_ptr_nonnull(strstr(gc_error_message(), "c.weight"));
    gc_tensor *wrong = gc_tensor_zeros(GC_F32, GC_CPU, 2, GC_SHAPE(3, 2));
    gc_error_clear();
    ck_assert_int_eq(gc_tensor_set_grad(ps.items[a].value, wrong), GC_ERR_INVALID);
    ck_assert_msg(strstr(gc_error_message(), "a.weight"), "%s", gc_error_message());
    gc_tensor_release(wrong);
    gc_error_clear();
    gc_params_free(&ps);
}
END_TEST

START_TEST(test_clip_bit_identical)
{
    static const char *const names[] = {"clip_gelu_eos", "clip_dropout", "clip_lora"};
    const char *name = names[_i];
    bool lora = !strcmp(name, "clip_lora");
    for (int ckpt = 0; ckpt < 2; ckpt++) {
        gc_clip_options o = {.device = gc_test_device(), .dtype = gc_test_dtype(), .checkpointing = ckpt};
        if (lora) {
            o.lora_r = 4;
            o.lora_alpha = 8;
            o.lora_dropout = 0.1;
            o.lora_targets = "q_proj,v_proj,fc1";
        }
        char dir[1024];
        snprintf(dir, sizeof dir, "%s/%s", GC_FIXTURES_DIR, lora ? "clip_quickgelu_legacy" : name);
        gc_clip *m;
        ck_assert_msg(gc_clip_load(&m, dir, &o) == GC_OK, "%s: %s", name, gc_error_message());
        if (lora) {
            gc_lora_options lo = {o.lora_r, o.lora_alpha, o.lora_dropout, o.lora_targets};
            ck_assert_msg(gc_lora_load_peft(gc_clip_params(m), &lo, GC_FIXTURES_DIR "/clip_lora/adapter") == GC_OK, "%s",
                          gc_error_message());
        }
        gc_clip_set_training(m, true);
        gc_tensor *pixels, *ids;
        gc_test_load_inputs(dir, "pixel_values", GC_F32, &pixels, "input_ids", GC_I64, &ids);
        int64_t B = pixels->shape[0];
        int64_t chunks[2] = {0, B / 2 + 1};
        for (int c = 0; c < 2; c++) {
            char label[128];
            snprintf(label, sizeof label, "%s%s chunk %lld", name, ckpt ? " checkpointed" : "", (long long)chunks[c]);
            model_run off = clip_step(m, pixels, ids, chunks[c], false), on = clip_step(m, pixels, ids, chunks[c], true);
            assert_same_model(&on, &off, gc_clip_params(m), label);
            free(off.grads);
            free(on.grads);
        }
        gc_tensor_release(pixels);
        gc_tensor_release(ids);
        gc_clip_free(m);
    }
}
END_TEST

/* DINOv3 in training mode (RoPE augmentation, drop_path, layer scale, attention dropout,
 * LoRA with dropout on every site): through the cache, without and with checkpointing. */
START_TEST(test_dinov3_bit_identical)
{
    gc_dinov3_config cfg;
    ck_assert_int_eq(gc_dinov3_config_named("dinov3-tiny", &cfg), GC_OK);
    cfg.drop_path = 0.2;
    cfg.attn_dropout = 0.1;
    cfg.pos_embed_rescale = 2.0;
    cfg.pos_embed_jitter = 1.2;
    cfg.layerscale = 0.5;
    const int64_t B = 4, S = cfg.image_size;
    gc_tensor *va = gc_test_randn(4, GC_SHAPE(B, cfg.channels, S, S), 31, 1.0);
    gc_tensor *vb = gc_test_randn(4, GC_SHAPE(B, cfg.channels, S, S), 32, 1.0);
    for (int mode = 0; mode < 3; mode++) { /* plain, checkpointed, LoRA */
        gc_dinov3_options o = {.device = gc_test_device(), .dtype = gc_test_dtype(), .checkpointing = mode == 1};
        if (mode == 2)
            o.lora = (gc_lora_options){4, 8, 0.1, "q_proj,k_proj,v_proj,o_proj,up_proj,down_proj"};
        gc_dinov3 *m;
        ck_assert_msg(gc_dinov3_init(&m, &cfg, &o, 5) == GC_OK, "%s", gc_error_message());
        gc_dinov3_set_training(m, true);
        model_run r[2];
        for (int on = 0; on < 2; on++) {
            bool prev = gc_recompute_set_enabled(on);
            ck_assert_int_eq(gc_params_zero_grad(gc_dinov3_params(m)), GC_OK);
            gc_dinov3_task t;
            ck_assert_int_eq(gc_dinov3_task_init(&t, m, va, vb, 3, 0.1), GC_OK);
            gc_gradcache_result res;
            ck_assert_msg(gc_dinov3_task_step(&t, (gc_rand_context){9, 2, 0}, &res) == GC_OK, "%s", gc_error_message());
            r[on] = (model_run){res.loss, gc_test_flat_grads(gc_dinov3_params(m))};
            gc_gradcache_result_clear(&res);
            gc_dinov3_task_free(&t);
            gc_recompute_set_enabled(prev);
        }
        const char *labels[3] = {"dinov3-tiny train mode, chunk 3", "dinov3-tiny train mode checkpointed",
                                 "dinov3-tiny train mode LoRA"};
        assert_same_model(&r[1], &r[0], gc_dinov3_params(m), labels[mode]);
        free(r[0].grads);
        free(r[1].grads);
        gc_dinov3_free(m);
    }
    gc_tensor_release(va);
    gc_tensor_release(vb);
}
END_TEST

int main(void)
{
    if (!gc_test_fixtures_start("recompute", 0)) return 77;
    Suite *s = suite_create("recompute");
    TCase *tc = gc_test_tcase("recompute");
    tcase_add_loop_test(tc, test_block_saved_bytes_and_grads, 0, N_BLK_CASES);
    tcase_add_test(tc, test_two_blocks_peak);
    tcase_add_loop_test(tc, test_block_qkv_pack, 0, 2);
    tcase_add_test(tc, test_params_pack);
    tcase_add_test(tc, test_vit_b16_block_bytes);
    tcase_add_test(tc, test_block_allocator_steady_state);
    tcase_add_loop_test(tc, test_clip_bit_identical, 0, 3);
    tcase_add_test(tc, test_dinov3_bit_identical);
    suite_add_tcase(s, tc);
    return gc_test_run(s);
}
