// Sustained bf16 GEMM throughput on one GPU: 8192^3 GEMMs (bf16 in, f32 accumulate, bf16
// out) back to back for about 12 s, TFLOP/s per 1 s window, to set against the short burst
// `gcache bench` measures at start-up (the H200 holds its 700 W power cap by lowering clocks
// under a long load). Standalone:
//   nvcc -O2 -arch=sm_90 tools/bench/sustain.cu -lcublas -o sustain && ./sustain
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdio.h>

#define CK(x)                                                                        \
    do {                                                                             \
        if ((x) != 0) {                                                              \
            fprintf(stderr, "%s failed at line %d\n", #x, __LINE__);                 \
            return 1;                                                                \
        }                                                                            \
    } while (0)

int main(void)
{
    const int n = 8192, per_window = 20;
    __nv_bfloat16 *a, *b, *c;
    CK(cudaMalloc(&a, sizeof *a * (size_t)n * n));
    CK(cudaMalloc(&b, sizeof *b * (size_t)n * n));
    CK(cudaMalloc(&c, sizeof *c * (size_t)n * n));
    CK(cudaMemset(a, 0x3c, sizeof *a * (size_t)n * n)); // small finite values
    CK(cudaMemset(b, 0x3c, sizeof *b * (size_t)n * n));
    cublasHandle_t h;
    CK(cublasCreate(&h));
    const float alpha = 1e-4f, beta = 0.f;
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    const double flop = 2.0 * n * n * (double)n * per_window;
    double total_ms = 0;
    for (int w = 0; total_ms < 12000; w++) {
        CK(cudaEventRecord(e0));
        for (int i = 0; i < per_window; i++)
            CK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, a, CUDA_R_16BF, n, b, CUDA_R_16BF, n, &beta, c,
                            CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float ms = 0;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        total_ms += ms;
        printf("window %2d  t %6.1f s  %6.1f TFLOP/s\n", w, total_ms / 1000, flop / (ms * 1e9));
    }
    return 0;
}
