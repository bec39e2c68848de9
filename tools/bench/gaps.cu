// What a kernel boundary costs on the GPU: chains of dependent launches on one stream,
// enqueued directly, with programmatic dependent launch (PDL: the next grid is launched
// during this one's tail and waits in griddepcontrol.wait), and replayed from a CUDA graph,
// against the kernels' own time.
// A DINOv3 256/64 step launches about 7,300 kernels, most of them 5 to 40 us long, so a
// microsecond a boundary is a few percent of the step. Kernels: an empty one (1 block), and
// a memory-bound pass over n floats (y = 1.0001 x + 1, grid-stride, the whole GPU) at three
// sizes. Standalone:
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

__global__ void empty_kernel() {}

__global__ void pass_kernel(const float4 *__restrict__ x, float4 *__restrict__ y, long n4)
{
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += (long)gridDim.x * blockDim.x) {
        float4 v = x[i];
        y[i] = make_float4(1.0001f * v.x + 1.f, 1.0001f * v.y + 1.f, 1.0001f * v.z + 1.f, 1.0001f * v.w + 1.f);
    }
}

// the same pass, launched as a programmatic dependent: it may start before the grid before
// it has finished, and waits for it (and its memory) before touching the buffers
__global__ void pass_pdl_kernel(const float4 *__restrict__ x, float4 *__restrict__ y, long n4)
{
    asm volatile("griddepcontrol.wait;" ::: "memory");
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += (long)gridDim.x * blockDim.x) {
        float4 v = x[i];
        y[i] = make_float4(1.0001f * v.x + 1.f, 1.0001f * v.y + 1.f, 1.0001f * v.z + 1.f, 1.0001f * v.w + 1.f);
    }
}

__global__ void empty_pdl_kernel() { asm volatile("griddepcontrol.wait;" ::: "memory"); }

static cudaError_t launch_pdl(int i, float4 *a, float4 *b, long n4, int blocks, cudaStream_t s)
{
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr, cfg.numAttrs = 1, cfg.stream = s, cfg.dynamicSmemBytes = 0;
    if (n4 == 0) {
        cfg.gridDim = dim3(1), cfg.blockDim = dim3(32);
        return cudaLaunchKernelEx(&cfg, empty_pdl_kernel);
    }
    cfg.gridDim = dim3(blocks), cfg.blockDim = dim3(256);
    return i % 2 ? cudaLaunchKernelEx(&cfg, pass_pdl_kernel, (const float4 *)a, b, n4)
                 : cudaLaunchKernelEx(&cfg, pass_pdl_kernel, (const float4 *)b, a, n4);
}

// launch i of a chain: the empty kernel (n4 == 0), or a pass reading one buffer and writing
// the other (alternating, so each launch depends on the one before)
static void launch(int i, float4 *a, float4 *b, long n4, int blocks, cudaStream_t s)
{
    if (n4 == 0) empty_kernel<<<1, 32, 0, s>>>();
    else if (i % 2) pass_kernel<<<blocks, 256, 0, s>>>(a, b, n4);
    else pass_kernel<<<blocks, 256, 0, s>>>(b, a, n4);
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
        float ms = 0;
        // alone: one launch between two events, after the stream has drained, 200 times
        double alone = 0;
        for (int r = 0; r < 210; r++) {
            CK(cudaStreamSynchronize(s));
            CK(cudaEventRecord(e0, s));
            launch(r, a, b, n4, blocks, s);
            CK(cudaEventRecord(e1, s));
            CK(cudaEventSynchronize(e1));
            CK(cudaEventElapsedTime(&ms, e0, e1));
            if (r >= 10) alone += ms * 1e3 / 200;
        }
        // a chain enqueued on the stream (the host far ahead: enqueue, then time on the GPU)
        double stream = 0;
        for (int rep = 0; rep < 3; rep++) {
            CK(cudaStreamSynchronize(s));
            CK(cudaEventRecord(e0, s));
            for (int i = 0; i < chain; i++) launch(i, a, b, n4, blocks, s);
            CK(cudaEventRecord(e1, s));
            CK(cudaEventSynchronize(e1));
            CK(cudaEventElapsedTime(&ms, e0, e1));
            if (rep) stream += ms * 1e3 / chain / 2;
        }
        // the chain with programmatic dependent launch
        double pdl = 0;
        for (int rep = 0; rep < 3; rep++) {
            CK(cudaStreamSynchronize(s));
            CK(cudaEventRecord(e0, s));
            for (int i = 0; i < chain; i++) CK(launch_pdl(i, a, b, n4, blocks, s));
            CK(cudaEventRecord(e1, s));
            CK(cudaEventSynchronize(e1));
            CK(cudaEventElapsedTime(&ms, e0, e1));
            if (rep) pdl += ms * 1e3 / chain / 2;
        }
        // the same chain captured once into a graph and replayed
        cudaGraph_t g;
        cudaGraphExec_t ge;
        CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
        for (int i = 0; i < chain; i++) launch(i, a, b, n4, blocks, s);
        CK(cudaStreamEndCapture(s, &g));
        CK(cudaGraphInstantiate(&ge, g, 0));
        double graph = 0;
        for (int rep = 0; rep < 3; rep++) {
            CK(cudaStreamSynchronize(s));
            CK(cudaEventRecord(e0, s));
            CK(cudaGraphLaunch(ge, s));
            CK(cudaEventRecord(e1, s));
            CK(cudaEventSynchronize(e1));
            CK(cudaEventElapsedTime(&ms, e0, e1));
            if (rep) graph += ms * 1e3 / chain / 2;
        }
        CK(cudaGraphExecDestroy(ge));
        CK(cudaGraphDestroy(g));
        char name[32];
        if (n4) snprintf(name, sizeof name, "pass %ld MB", sizes[k] * 4 >> 20);
        else snprintf(name, sizeof name, "empty");
        printf("%-14s %9.2f %17.2f %14.2f %16.2f\n", name, alone, stream, pdl, graph);
    }
    return 0;
}
