// What a kernel boundary costs on the GPU: chains of dependent launches on one stream,
// enqueued directly, with programmatic dependent launch (PDL: the next grid is launched
// during this one's tail and waits in griddepcontrol.wait), and replayed from a CUDA graph,
// against the kernels' own time.
// A DINOv3 256/64 step launches about 7,300 kernels, most of them 5 to 40 us long, so a
// microsecond a boundary is a few percent of the step. Kernels: an empty one (1 block), and
// a memory-bound pass over n floats (y = 1.0001 x + 1, grid-stride, the whole GPU) at three
// sizes. (docs/bench/2026-11-29-s8-gaps-*.txt came from an earlier form of this file,
// with a copy of each kernel without the wait and <<<>>> for the plain launches: the same
// launches and work.) Standalone:
//   nvcc -O2 -arch=sm_90 tools/bench/gaps.cu -o gaps && ./gaps
#include <cuda_runtime.h>
#include <stdio.h>

#define CK(x)                                                                        \
    do {                                                                             \
        cudaError_t e_ = (x);                                                        \
        if (e_ != cudaSuccess) {                                                     \
            fprintf(stderr, "%s failed at line %d: %s\n", #x, __LINE__, cudaGetErrorString(e_)); \
            return 1;                                                                \
        }                                                                            \
    } while (0)

// Each kernel begins with griddepcontrol.wait: launched as a programmatic dependent it
// waits there for the grid before it (and its memory); launched plainly the wait returns at
// once (runtime/gc_launch.cuh's rule).
__global__ void empty_kernel() { asm volatile("griddepcontrol.wait;" ::: "memory"); }

__global__ void pass_kernel(const float4 *__restrict__ x, float4 *__restrict__ y, long n4)
{
    asm volatile("griddepcontrol.wait;" ::: "memory");
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += (long)gridDim.x * blockDim.x) {
        float4 v = x[i];
        y[i] = make_float4(1.0001f * v.x + 1.f, 1.0001f * v.y + 1.f, 1.0001f * v.z + 1.f, 1.0001f * v.w + 1.f);
    }
}

// launch i of a chain, plain or as a programmatic dependent (pdl): the empty kernel
// (n4 == 0), or a pass reading one buffer and writing the other (alternating, so each
// launch depends on the one before)
static cudaError_t launch(int i, float4 *a, float4 *b, long n4, int blocks, cudaStream_t s, bool pdl)
{
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.attrs = attr, cfg.numAttrs = pdl ? 1 : 0, cfg.stream = s;
    if (n4 == 0) {
        cfg.gridDim = dim3(1), cfg.blockDim = dim3(32);
        return cudaLaunchKernelEx(&cfg, empty_kernel);
    }
    cfg.gridDim = dim3(blocks), cfg.blockDim = dim3(256);
    return i % 2 ? cudaLaunchKernelEx(&cfg, pass_kernel, (const float4 *)a, b, n4)
                 : cudaLaunchKernelEx(&cfg, pass_kernel, (const float4 *)b, a, n4);
}

// GPU microseconds a launch of what enqueue(i) puts on the stream, over `count` calls
// between two events, the mean of `reps` timed runs after one untimed; < 0 on an error
template <typename F> static double per_launch(cudaStream_t s, cudaEvent_t e0, cudaEvent_t e1, int count, int reps, F enqueue)
{
    double sum = 0;
    for (int rep = 0; rep <= reps; rep++) {
        float ms = 0;
        if (cudaStreamSynchronize(s) || cudaEventRecord(e0, s)) return -1;
        for (int i = 0; i < count; i++)
            if (enqueue(i)) return -1;
        if (cudaEventRecord(e1, s) || cudaEventSynchronize(e1) || cudaEventElapsedTime(&ms, e0, e1)) return -1;
        if (rep) sum += ms * 1e3 / count / reps;
    }
    return sum;
}

int main()
{
    const int chain = 2000;
    const long sizes[] = {0, 1L << 20, 4L << 20, 16L << 20}; // floats: 4, 16, 64 MB a buffer
    int sms = 0;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    const int blocks = sms * 8; // 2048 threads an SM, one wave
    float4 *a, *b;
    CK(cudaMalloc(&a, sizeof(float) * (size_t)sizes[3]));
    CK(cudaMalloc(&b, sizeof(float) * (size_t)sizes[3]));
    CK(cudaMemset(a, 0, sizeof(float) * (size_t)sizes[3]));
    CK(cudaMemset(b, 0, sizeof(float) * (size_t)sizes[3]));
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    printf("%-14s %9s %17s %14s %16s\n", "kernel", "alone us", "stream us/launch", "PDL us/launch", "graph us/launch");
    for (int k = 0; k < 4; k++) {
        const long n4 = sizes[k] / 4;
        // alone: one launch between two events after the stream has drained, 200 times;
        // a chain enqueued on the stream (the host far ahead), plain and with PDL
        const double alone = per_launch(s, e0, e1, 1, 200, [&](int i) { return launch(i, a, b, n4, blocks, s, false); });
        const double stream = per_launch(s, e0, e1, chain, 2, [&](int i) { return launch(i, a, b, n4, blocks, s, false); });
        const double pdl = per_launch(s, e0, e1, chain, 2, [&](int i) { return launch(i, a, b, n4, blocks, s, true); });
        // the plain chain captured once into a graph and replayed
        cudaGraph_t g;
        cudaGraphExec_t ge;
        CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
        for (int i = 0; i < chain; i++) CK(launch(i, a, b, n4, blocks, s, false));
        CK(cudaStreamEndCapture(s, &g));
        CK(cudaGraphInstantiate(&ge, g, 0));
        const double graph = per_launch(s, e0, e1, 1, 2, [&](int) { return cudaGraphLaunch(ge, s); }) / chain;
        CK(cudaGraphExecDestroy(ge));
        CK(cudaGraphDestroy(g));
        if (alone < 0 || stream < 0 || pdl < 0 || graph < 0) return fprintf(stderr, "a timed run failed\n"), 1;
        char name[32];
        if (n4) snprintf(name, sizeof name, "pass %ld MB", sizes[k] * 4 >> 20);
        else snprintf(name, sizeof name, "empty");
        printf("%-14s %9.2f %17.2f %14.2f %16.2f\n", name, alone, stream, pdl, graph);
    }
    return 0;
}
