// standalone: dW GEMM (bf16 x bf16 -> f32, beta 1) with CUBLASLT_EPILOGUE_BGRADB against plain dW + a colsum.
// Checks: the heuristic finds an algo, bias grad == colsum(dy), beta does not touch the bias, determinism.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <cmath>
#define CK(x) do { auto s_ = (x); if ((int)s_) { printf("fail %s line %d: %d\n", #x, __LINE__, (int)s_); exit(1);} } while (0)
cublasLtHandle_t lt; void *ws; size_t wss = 32 << 20;
__global__ void colsum(const __nv_bfloat16 *dy, long M, long n, float *o) { // dy row-major [M, n]
    long c = blockIdx.x * (long)blockDim.x + threadIdx.x; if (c >= n) return;
    double s = 0; for (long r = 0; r < M; r++) s += (double)__bfloat162float(dy[r * n + c]); o[c] = (float)s;
}
__global__ void fill(__nv_bfloat16 *p, long n, unsigned seed) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x; if (i >= n) return;
    unsigned h = (unsigned)i * 2654435761u ^ seed; h ^= h >> 13; h *= 0x5bd1e995u; h ^= h >> 15;
    p[i] = __float2bfloat16(((h & 0xffff) / 65536.0f - 0.5f));
}
struct Shape { const char *name; long M, in, out; };
int main() {
    CK(cublasLtCreate(&lt)); CK(cudaMalloc(&ws, wss));
    Shape sh[] = {{"img64 qkv", 12608, 768, 2304}, {"img64 out", 12608, 768, 768}, {"img64 fc1", 12608, 768, 3072}, {"img64 fc2", 12608, 3072, 768},
                  {"img256 qkv", 50432, 768, 2304}, {"img256 fc1", 50432, 768, 3072}, {"img256 fc2", 50432, 3072, 768},
                  {"txt256 qkv", 19712, 512, 1536}, {"txt256 fc1", 19712, 512, 2048}, {"txt256 fc2", 19712, 2048, 512},
                  {"b32img256 fc1", 12800, 768, 3072}, {"dino64 fc1", 12864, 768, 3072}, {"odd 77x5", 385, 40, 24}};
    double tp = 0, tb = 0;
    for (auto &s : sh) {
        __nv_bfloat16 *x, *dy; float *D, *bias, *ref, *D2, *bias2;
        CK(cudaMalloc(&x, s.M * s.in * 2)); CK(cudaMalloc(&dy, s.M * s.out * 2));
        CK(cudaMalloc(&D, s.in * s.out * 4)); CK(cudaMalloc(&D2, s.in * s.out * 4));
        CK(cudaMalloc(&bias, s.out * 4)); CK(cudaMalloc(&bias2, s.out * 4)); CK(cudaMalloc(&ref, s.out * 4));
        fill<<<(s.M * s.in + 255) / 256, 256>>>(x, s.M * s.in, 1); fill<<<(s.M * s.out + 255) / 256, 256>>>(dy, s.M * s.out, 2);
        colsum<<<(s.out + 127) / 128, 128>>>(dy, s.M, s.out, ref);
        // column-major D[in, out] = N(x^T as [in, M]) T(dy^T as [out, M])
        cublasLtMatmulDesc_t op[2];
        cublasLtMatrixLayout_t la, lb, lc;
        CK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, s.in, s.M, s.in));
        CK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, s.out, s.M, s.out));
        CK(cublasLtMatrixLayoutCreate(&lc, CUDA_R_32F, s.in, s.out, s.in));
        cublasLtMatmulAlgo_t algo[2]; double t[2];
        for (int e = 0; e < 2; e++) {
            CK(cublasLtMatmulDescCreate(&op[e], CUBLAS_COMPUTE_32F, CUDA_R_32F));
            cublasOperation_t oa = CUBLAS_OP_N, ob = CUBLAS_OP_T;
            CK(cublasLtMatmulDescSetAttribute(op[e], CUBLASLT_MATMUL_DESC_TRANSA, &oa, sizeof oa));
            CK(cublasLtMatmulDescSetAttribute(op[e], CUBLASLT_MATMUL_DESC_TRANSB, &ob, sizeof ob));
            if (e) {
                cublasLtEpilogue_t ep = CUBLASLT_EPILOGUE_BGRADB;
                CK(cublasLtMatmulDescSetAttribute(op[e], CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep));
                CK(cublasLtMatmulDescSetAttribute(op[e], CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
            }
            cublasLtMatmulPreference_t pref; CK(cublasLtMatmulPreferenceCreate(&pref));
            CK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wss, sizeof wss));
            cublasLtMatmulHeuristicResult_t res[8]; int found = 0;
            cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(lt, op[e], la, lb, lc, lc, pref, 8, res, &found);
            if (st || !found) { printf("%-14s epi %d: heuristic status %d found %d\n", s.name, e, (int)st, found); t[e] = -1; continue; }
            algo[e] = res[0].algo;
            float alpha = 1, beta = 1;
            cudaMemset(D, 0, s.in * s.out * 4);
            for (int i = 0; i < 3; i++) CK(cublasLtMatmul(lt, op[e], &alpha, x, la, dy, lb, &beta, D, lc, D, lc, &algo[e], ws, wss, 0));
            cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
            cudaEventRecord(e0);
            for (int i = 0; i < 20; i++) cublasLtMatmul(lt, op[e], &alpha, x, la, dy, lb, &beta, D, lc, D, lc, &algo[e], ws, wss, 0);
            cudaEventRecord(e1); cudaEventSynchronize(e1);
            float ms; cudaEventElapsedTime(&ms, e0, e1); t[e] = ms / 20;
            if (e) {
                // correctness + beta: bias preset to 7, beta 1 -> expect colsum (written, not accumulated)
                std::vector<float> h(s.out, 7.0f), r(s.out), b1(s.out), b2(s.out), d1(s.in * s.out), d2(s.in * s.out);
                cudaMemcpy(bias, h.data(), s.out * 4, cudaMemcpyHostToDevice);
                float b0 = 0;
                cudaMemset(D, 0, s.in * s.out * 4); cudaMemset(D2, 0, s.in * s.out * 4);
                CK(cublasLtMatmul(lt, op[e], &alpha, x, la, dy, lb, &b0, D, lc, D, lc, &algo[e], ws, wss, 0));
                cudaMemcpy(b1.data(), bias, s.out * 4, cudaMemcpyDeviceToHost);
                cudaMemcpy(d1.data(), D, s.in * s.out * 4, cudaMemcpyDeviceToHost);
                cudaMemcpy(bias, h.data(), s.out * 4, cudaMemcpyHostToDevice);
                CK(cublasLtMatmul(lt, op[e], &alpha, x, la, dy, lb, &beta, D, lc, D, lc, &algo[e], ws, wss, 0)); // D = 2 D1
                cudaMemcpy(b2.data(), bias, s.out * 4, cudaMemcpyDeviceToHost);
                cudaMemcpy(d2.data(), D, s.in * s.out * 4, cudaMemcpyDeviceToHost);
                cudaMemcpy(r.data(), ref, s.out * 4, cudaMemcpyDeviceToHost);
                double err = 0, scale = 0, berr = 0; int same = 1;
                for (long c = 0; c < s.out; c++) { err = fmax(err, fabs(b1[c] - r[c])); scale = fmax(scale, fabs(r[c])); berr = fmax(berr, fabs(b2[c] - r[c])); }
                for (long i = 0; i < s.in * s.out; i++) if (d2[i] != 2 * d1[i]) { same = 0; break; }
                // determinism: again with beta 0
                std::vector<float> b3(s.out), d3(s.in * s.out);
                CK(cublasLtMatmul(lt, op[e], &alpha, x, la, dy, lb, &b0, D, lc, D, lc, &algo[e], ws, wss, 0));
                cudaMemcpy(b3.data(), bias, s.out * 4, cudaMemcpyDeviceToHost);
                cudaMemcpy(d3.data(), D, s.in * s.out * 4, cudaMemcpyDeviceToHost);
                int det = !memcmp(b3.data(), b1.data(), s.out * 4) && !memcmp(d3.data(), d1.data(), s.in * s.out * 4);
                printf("%-14s M %6ld in %4ld out %4ld: plain %.4f ms, bgradb %.4f ms; bias err %.2e (|ref| %.1f), with beta 1 err %.2e; D beta ok %d; deterministic %d\n",
                       s.name, s.M, s.in, s.out, t[0], t[1], err, scale, berr, same, det);
            }
        }
        if (t[0] > 0 && t[1] > 0) { tp += t[0]; tb += t[1]; }
        cudaFree(x); cudaFree(dy); cudaFree(D); cudaFree(D2); cudaFree(bias); cudaFree(bias2); cudaFree(ref);
    }
    printf("sum plain %.3f ms, bgradb %.3f ms\n", tp, tb);
    return 0;
}
