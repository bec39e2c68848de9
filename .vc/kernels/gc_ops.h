/* Differentiable ops. Each takes tensors on one device (CPU or CUDA) and returns a new
 * tensor owned by the innermost pool, or NULL with the error set (gc_error_message).
 * A NULL input returns NULL at once, keeping the first error: chains of ops need one
 * check at the end. When grad mode is on, a tape is current and an input needs a
 * gradient, the op records its backward on the tape.
 *
 * Dtypes: floating inputs of one op share a dtype (f32 on the CPU; f32 or bf16 on CUDA,
 * with f32 accumulation). Index inputs are i32 or i64. Output dtype = input dtype.
 * Each op lives in kernels/<file>.c (forward, backward, CPU reference side by side) and
 * kernels/<file>.cu (CUDA kernels). Shapes are written [B, L, D] etc. */
#ifndef GC_OPS_H
#define GC_OPS_H

#include "../autograd/gc_autograd.h"
#include "../runtime/gc_tensor.h"

/* ---- matmul.c: the one GEMM wrapper and the ops on it ---- */
typedef enum gc_act {
    GC_ACT_NONE = 0,
    GC_ACT_GELU_ERF,    /* x/2 (1 + erf(x/sqrt2)) */
    GC_ACT_GELU_TANH,   /* x/2 (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3))) */
    GC_ACT_QUICK_GELU,  /* x sigmoid(1.702 x) */
    GC_ACT_SILU,        /* x sigmoid(x) */
} gc_act;
typedef enum gc_epilogue {
    GC_EPI_NONE = 0,
    GC_EPI_BIAS,        /* C = AB + bias[n] */
} gc_epilogue;

/* Row-major C[m,n] (= or +=) alpha * op(A)[m,k] @ op(B)[k,n], batched by strides.
 * op(A) = A^T when trans_a (A stored [k,m]). a/b share ab_dtype; c may be f32 while
 * a/b are bf16 (f32 gradients of bf16 weights). Every GEMM goes through here. */
typedef struct gc_gemm_args {
    bool trans_a, trans_b;
    int64_t m, n, k;
    const void *a; int64_t lda;
    const void *b; int64_t ldb;
    void *c; int64_t ldc;
    const void *c_in;    /* NULL: beta scales c itself; else C = c_in (c's layout), the result to c */
    gc_dtype ab_dtype, c_dtype;
    float alpha, beta;   /* beta 0: overwrite; 1: accumulate */
    int64_t batch, stride_a, stride_b, stride_c; /* batch 0 or 1: single */
    gc_epilogue epilogue;
    const void *bias;    /* [n], in c_dtype */
    /* act != NONE: C = act(v) where v = alpha AB + beta C + bias rounded to c_dtype, and
     * pre (c's layout; NULL: not wanted) gets v. Only where gc_gemm_fuses_act says so. */
    gc_act act;
    void *pre;
} gc_gemm_args;
gc_status gc_gemm(gc_device dev, const gc_gemm_args *g);
/* Whether gc_gemm runs g's activation in the GEMM's epilogue: on Hopper, bf16, A [m,k]
 * times B [n,k]^T, one matrix, alpha 1 (kernels/gemm_sm90.cu). Elsewhere the caller runs
 * the activation as its own pass. */
bool gc_gemm_fuses_act(gc_device dev, const gc_gemm_args *g);
/* Which GEMMs gemm_sm90.cu runs where it can: "off" (the default: none, activations as
 * passes of their own; the kernel is slower than cuBLASLt so far), "act" (those with an
 * activation epilogue: gc_linear_and_act), or "all" (every bf16 A B^T, for measuring it
 * against cuBLASLt). GC_GEMM_SM90 sets it at start-up. */
gc_status gc_gemm_set_sm90(const char *mode);
int gc_gemm_sm90_mode(void); /* 0 off, 1 act, 2 all */
/* gemm_sm90.cu's schedule, for measuring it (NULL: the default, the first of each):
 * sched "pingpong" or "coop"; bn "auto", "128" or "256" (coop's tile width); cluster "1" or
 * "2" (CTAs sharing B tiles by TMA multicast). GC_GEMM_SM90_SCHED, _BN and _CLUSTER set them
 * at start-up; gc_gemm_sm90_tuning reads them (coop 0/1, bn 0 for auto, cluster 1/2). */
gc_status gc_gemm_set_sm90_tuning(const char *sched, const char *bn, const char *cluster);
void gc_gemm_sm90_tuning(int *coop, int *bn, int *cluster);
/* The ops' switches in the environment (GC_ATTN_IMPL, GC_GEMM_SM90, GC_GEMM_SM90_SCHED,
 * _BN, _CLUSTER): an error naming the first one set to a value it does not take. The
 * ops themselves fall back to their defaults then; gcache checks at start-up. */
gc_status gc_ops_env_check(void);
/* On CUDA the algorithm of a shape is cuBLASLt's heuristic choice, or, with a plan file, the
 * file's: a shape it lacks is timed on first use (the heuristic's first candidates) and
 * appended, so runs that share the file run the same algorithms (kernels/matmul.cu). The
 * file is GC_GEMM_PLAN's, or the one gc_gemm_plan_use gives (NULL or "": none), from its
 * next GEMM on. The summary: "<file>: n shapes from the file, m timed now", or "". */
void gc_gemm_plan_use(const char *path);
const char *gc_gemm_plan_summary(char *buf, size_t n);
/* Forgets the plans: the next GEMM reads GC_GEMM_PLAN and its file again (tests). */
void gc_gemm_plan_reset(void);

/* a [..., M, K] @ b [..., K, N] -> [..., M, N]; transposes select a^T / b^T of the last
 * two dims. Leading dims must match, or b may be 2-D (shared by all). */
gc_tensor *gc_matmul(gc_tensor *a, gc_tensor *b, bool trans_a, bool trans_b);
/* x [..., in] @ w[out, in]^T + b[out] -> [..., out]; b may be NULL. */
gc_tensor *gc_linear(gc_tensor *x, gc_tensor *w, gc_tensor *b);
/* res + linear(x, w, b), res [..., out] (a residual): the add is the GEMM's C input, one
 * pass over res instead of an add's three; res's gradient is gy itself. */
gc_tensor *gc_linear_res(gc_tensor *x, gc_tensor *w, gc_tensor *b, gc_tensor *res);
/* (x w^T + b) s (+ res, or NULL): a layer scale s [out] folded into the weights (one GEMM
 * of s w and s b, no pass over the output, nothing kept for s's gradient; matmul.c). */
gc_tensor *gc_linear_scaled(gc_tensor *x, gc_tensor *w, gc_tensor *b, gc_tensor *s, gc_tensor *res);


/* ---- elementwise.c ---- */
/* numpy broadcasting over up to 5 dims */
gc_tensor *gc_add(gc_tensor *a, gc_tensor *b);
gc_tensor *gc_sub(gc_tensor *a, gc_tensor *b);
gc_tensor *gc_mul(gc_tensor *a, gc_tensor *b);
gc_tensor *gc_scale(gc_tensor *x, double s);  /* x * s */
/* y = x + a * s: x, a [..., D] of one shape, s [D] (a residual add of a branch times its
 * layer scale), one pass; backward hands gy to x and adds gy*s to a, sum_rows(gy*a) to s. */
gc_tensor *gc_add_scaled(gc_tensor *x, gc_tensor *a, gc_tensor *s);
gc_tensor *gc_exp(gc_tensor *x);

gc_tensor *gc_activation(gc_tensor *x, gc_act act);
/* linear(activation(x, act), w, b) (matmul.c), keeping only x for backward (act(x) is
 * recomputed there): the MLP's second layer without storing its input twice. */
gc_tensor *gc_linear_act(gc_tensor *x, gc_act act, gc_tensor *w, gc_tensor *b);
/* res + gc_linear_act(x, act, w, b), the add in the GEMM as in gc_linear_res */
gc_tensor *gc_linear_act_res(gc_tensor *x, gc_act act, gc_tensor *w, gc_tensor *b, gc_tensor *res);
/* gc_linear_scaled of act(x): (act(x) w^T + b) s (+ res, or NULL) */
gc_tensor *gc_linear_act_scaled(gc_tensor *x, gc_act act, gc_tensor *w, gc_tensor *b, gc_tensor *s, gc_tensor *res);
/* A transformer block's MLP without a pass for its activation's input. gc_linear_and_act
 * is gc_linear(x, w, b), and *a = act of it, off the tape, from the same GEMM: its epilogue
 * where gc_gemm_fuses_act (Hopper), else a pass of its own. That pass adds the bias itself:
 * then the linear's result leaves b out and *xb = b, the bias the activation was taken at
 * (else *xb = NULL). With nothing to record, the linear's output is never made where the
 * epilogue makes *a, and the result is *a itself. gc_linear_act_given is
 * gc_linear_act_scaled (s may be NULL) / gc_linear_act_res (res may be NULL) of
 * act(x + xb), reading that *a instead of making it: one node on the tape, whose backward
 * makes xb's gradient in the pass that makes x's. Pass it the *xb gc_linear_and_act gave. */
gc_tensor *gc_linear_and_act(gc_tensor *x, gc_tensor *w, gc_tensor *b, gc_act act, gc_tensor **a, gc_tensor **xb);
gc_tensor *gc_linear_act_given(gc_tensor *x, gc_tensor *a, gc_act act, gc_tensor *w, gc_tensor *b, gc_tensor *s, gc_tensor *res,
                               gc_tensor *xb);
gc_status gc_act_parse(const char *hf_name, gc_act *out); /* "gelu", "gelu_pytorch_tanh", "quick_gelu", "silu" ... */

/* ---- norm.c ---- */
/* over the last dim; w, b [D] may be NULL */
gc_tensor *gc_layernorm(gc_tensor *x, gc_tensor *w, gc_tensor *b, double eps);
gc_tensor *gc_rmsnorm(gc_tensor *x, gc_tensor *w, double eps);       /* w * x * rsqrt(mean(x^2)+eps) */
gc_tensor *gc_l2normalize(gc_tensor *x, double eps);                /* x / max(||x||, eps) over last dim */

/* ---- softmax.c ---- */
gc_tensor *gc_softmax(gc_tensor *x);                                /* over the last dim */

/* ---- attention.c ---- */
typedef struct gc_attn_opts {
    bool causal;
    gc_tensor *mask;      /* additive, not differentiable: [Lq, Lk] or [B, Lq, Lk]; NULL for none */
    double scale;         /* 0: head_dim^-0.5 */
    double dropout;       /* probability on the attention weights (training) */
    uint32_t dropout_op;  /* op id for the random stream (see gc_rng.h) */
} gc_attn_opts;
/* q [B, Lq, H, D], k/v [B, Lk, Hkv, D] (H % Hkv == 0: grouped-query) -> [B, Lq, H, D].
 * softmax(q k^T * scale + mask) v, softmax in f32. */
gc_tensor *gc_attention(gc_tensor *q, gc_tensor *k, gc_tensor *v, const gc_attn_opts *opts);
/* The implementation gc_attention takes: "auto" (the CPU reference loops; on CUDA the flash
 * kernels where they apply, else GEMMs), "ref" and "flash" (both mean auto), "gemm"
 * (GEMMs + row kernels on every device), or "flash-split" (auto, but the flash backward as
 * two kernels, dQ and dK/dV, where it would be one fused kernel: for measuring and testing
 * both). Starts as GC_ATTN_IMPL says (read once; unset or unknown: auto). An unknown name is
 * an error and changes nothing. */
gc_status gc_attention_set_impl(const char *name);
extern const char *const gc_attention_impl_names[]; /* what it takes, NULL-terminated */
const char *gc_attention_get_impl(void); /* "auto", "gemm" or "flash-split" */

/* ---- embedding.c ---- */
/* table [V, D], ids i32/i64 [...] -> [..., D]; an id out of [0, V) is an error.
 * Backward is deterministic (no float atomics). */
gc_tensor *gc_embedding(gc_tensor *table, gc_tensor *ids);
/* x [B, L, D], idx i32/i64 [B] -> [B, D]: row idx[b] of sequence b (pooling). */
gc_tensor *gc_gather_rows(gc_tensor *x, gc_tensor *idx);

/* ---- rope.c ---- */
/* Rotary embedding with half-split pairing (dim d with d + D/2, HF rotate_half):
 * x [B, L, H, D]; cos/sin f32 [n, D] or [B, n, D]; rotates tokens start..start+n-1,
 * leaves the others as they are. */
gc_tensor *gc_rope(gc_tensor *x, gc_tensor *cos, gc_tensor *sin, int64_t start);
/* The same written over x (rows of unit inner stride), returned as a new view of it: for an
 * x nothing else reads afterwards (q and k in a block's fused q/k/v output, whose storage
 * the attention keeps for v anyway: rotating elsewhere would keep both). Its backward
 * needs no x. */
gc_tensor *gc_rope_in_place(gc_tensor *x, gc_tensor *cos, gc_tensor *sin, int64_t start);

/* ---- shape.c: views (gc_tensor.h), copies and assembly ---- */
gc_tensor *gc_concat(int n, gc_tensor *const *xs, int dim);
gc_tensor *gc_cast(gc_tensor *x, gc_dtype dt);                      /* differentiable dtype change */

/* ---- patch.c ---- */
/* pixels [B, C, H, W] -> patches [B, (H/P)*(W/P), C*P*P], patch rows row-major, each patch
 * flattened (c, y, x) to match a conv weight [D, C, P, P] viewed as [D, C*P*P]. */
gc_tensor *gc_unfold_patches(gc_tensor *pixels, int64_t patch);
/* conv(stride = kernel = P) as unfold + linear: pixels [B,C,H,W], w [D,C,P,P], b [D] or NULL -> [B, N, D] */
gc_tensor *gc_patch_embed(gc_tensor *pixels, gc_tensor *w, gc_tensor *b);

/* ---- reduce.c ---- */
gc_tensor *gc_sum(gc_tensor *x);                    /* all elements -> [] (0-dim), f32 accumulation */
gc_tensor *gc_mean(gc_tensor *x);                   /* -> [] */
gc_tensor *gc_mean_dim(gc_tensor *x, int dim);      /* removes dim */

/* ---- loss.c ---- */
/* logits [N, C], targets i32/i64 [N] -> [] mean over N of -log softmax(logits)[target] */
gc_tensor *gc_cross_entropy(gc_tensor *logits, gc_tensor *targets);

/* ---- dropout.c ---- */
/* Zeroes each element with probability p and scales the rest by 1/(1-p). Element e of
 * row b draws gc_rand_uniform(seed, step, op, sample_offset + b, e) from the thread's
 * RandContext (gc_rng.h): masks depend on the sample, never on the chunking. p == 0 is
 * the identity (x itself). */
gc_tensor *gc_dropout(gc_tensor *x, double p, uint32_t op);

#endif
