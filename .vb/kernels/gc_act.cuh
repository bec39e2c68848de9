// The activations of gc_act and their derivatives, in f32, for the kernels that apply them:
// the activation pass (elementwise.cu) and the GEMM epilogue (gemm_sm90.cu) compute the same
// bits from the same bf16 input.
#ifndef GC_ACT_CUH
#define GC_ACT_CUH

#include <cmath>

extern "C" {
#include "gc_ops.h"
}
#include "gc_cuda_util.cuh"

namespace gc_act_detail {

constexpr float kSqrt1_2 = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;
constexpr float kSqrt2OverPi = 0.79788456080286535588f;
constexpr float kGeluTanhC = 0.044715f;
constexpr float kQuickGeluC = 1.702f;
constexpr float kLog2eF = 1.44269504088896340736f;

// FAST (bf16 data): the special-function unit's exp2 and reciprocal, each off by a few f32
// ulp, far below bf16's rounding (2^-9 relative); f32 data keeps expf and IEEE division, as
// accurate as the f32 CPU reference needs. (An exactly rounded reciprocal, __frcp_rn, is a
// dozen instructions: it had made the quick_gelu passes and epilogue compute-bound.)
template <bool FAST> __device__ __forceinline__ float exp_f(float x) { return FAST ? __expf(x) : expf(x); }

// 1 / (1 + e^-x): e^-x = inf for x below about -88 gives 0, e^-x = 0 gives 1
template <bool FAST> __device__ __forceinline__ float sigmoid_f(float x)
{
    return FAST ? fast_rcp(1.0f + fast_exp2(-x * kLog2eF)) : 1.0f / (1.0f + expf(-x));
}

// tanh-GELU through 0.5 (1 + tanh(u)) = sigmoid(2u): no tanhf, and no cancellation for
// negative x. 2u = 2 sqrt(2/pi) (x + 0.044715 x^3).
__device__ __forceinline__ float gelu_tanh_2u(float x) { return 2.0f * kSqrt2OverPi * (x + kGeluTanhC * x * x * x); }

// 1 + erf(u) and e = exp(-u^2), for bf16 data (FAST). erfc(|u|) = t exp(-u^2 + P(t)),
// t = 1 / (1 + |u| / 2): Numerical Recipes' erfcc, relative error below 1.2e-7 at every u,
// so 1 + erf(u) = erfc(-u) keeps its relative accuracy in the negative tail (no 1 - x
// cancellation), on the hardware reciprocal and exp2 and a dozen FMAs; erff's branches and longer
// polynomials had made DINOv3's erf-GELU passes compute-bound (2.9 TB/s). exp2 and the
// reciprocal are the approximate hardware ones (a few f32 ulp, far below bf16's rounding).
__device__ __forceinline__ float one_plus_erf_fast(float u, float *e)
{
    const float a = fabsf(u);
    const float t = fast_rcp(1.0f + 0.5f * a);
    float p = 0.17087277f;
    p = fmaf(p, t, -0.82215223f);
    p = fmaf(p, t, 1.48851587f);
    p = fmaf(p, t, -1.13520398f);
    p = fmaf(p, t, 0.27886807f);
    p = fmaf(p, t, -0.18628806f);
    p = fmaf(p, t, 0.09678418f);
    p = fmaf(p, t, 0.37409196f);
    p = fmaf(p, t, 1.00002368f);
    p = fmaf(p, t, -1.26551223f);
    const float u2 = a * a;
    const float erfc_a = t * fast_exp2((p - u2) * kLog2eF);
    *e = fast_exp2(-u2 * kLog2eF);
    return u >= 0.0f ? 2.0f - erfc_a : erfc_a;
}

// The activation and its derivative; ACT is a compile-time gc_act.
template <int ACT, bool FAST> __device__ __forceinline__ float act_f(float x)
{
    if constexpr (ACT == GC_ACT_GELU_ERF) {
        if constexpr (FAST) {
            float e;
            return 0.5f * x * one_plus_erf_fast(x * kSqrt1_2, &e);
        }
        return 0.5f * x * (1.0f + erff(x * kSqrt1_2));
    }
    else if constexpr (ACT == GC_ACT_GELU_TANH) return x * sigmoid_f<FAST>(gelu_tanh_2u(x));
    else if constexpr (ACT == GC_ACT_QUICK_GELU) return x * sigmoid_f<FAST>(kQuickGeluC * x);
    else if constexpr (ACT == GC_ACT_SILU) return x * sigmoid_f<FAST>(x);
    else return x;
}

// The derivative act'(x), with *y = act_f(x) from the same exponentials (the same bits as
// act_f): the backward that also remakes the activation (elementwise.cu,
// act_bias_bwd_kernel) uses both; act_df below only the derivative.
template <int ACT, bool FAST> __device__ __forceinline__ float act_f_df(float x, float *y)
{
    if constexpr (ACT == GC_ACT_GELU_ERF) {
        if constexpr (FAST) {
            float e;
            const float c = one_plus_erf_fast(x * kSqrt1_2, &e);
            *y = 0.5f * x * c;
            return 0.5f * c + x * kInvSqrt2Pi * e;
        }
        const float c = 1.0f + erff(x * kSqrt1_2);
        *y = 0.5f * x * c;
        return 0.5f * c + x * kInvSqrt2Pi * exp_f<FAST>(-0.5f * x * x);
    } else if constexpr (ACT == GC_ACT_GELU_TANH) {
        float s = sigmoid_f<FAST>(gelu_tanh_2u(x));
        *y = x * s;
        return s + 2.0f * x * s * (1.0f - s) * kSqrt2OverPi * (1.0f + 3.0f * kGeluTanhC * x * x);
    } else if constexpr (ACT == GC_ACT_QUICK_GELU) {
        float s = sigmoid_f<FAST>(kQuickGeluC * x);
        *y = x * s;
        return s + kQuickGeluC * x * s * (1.0f - s);
    } else if constexpr (ACT == GC_ACT_SILU) {
        float s = sigmoid_f<FAST>(x);
        *y = x * s;
        return s * (1.0f + x * (1.0f - s));
    } else {
        *y = x;
        return 1.0f;
    }
}

// The derivative alone: act_f_df with the activation dropped (the compiler drops its
// arithmetic).
template <int ACT, bool FAST> __device__ __forceinline__ float act_df(float x)
{
    float y;
    return act_f_df<ACT, FAST>(x, &y);
}

} // namespace gc_act_detail

#endif
