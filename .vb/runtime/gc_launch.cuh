// Kernel launches with programmatic dependent launch (PDL, Hopper and later).
//
// A kernel boundary on one stream costs about 1.2 us of idle GPU: the next grid is
// dispatched only once the last block of the one before has finished
// (tools/bench/gaps.cu; DINOv3 128/64: 103.4 ms a step over 99.1 ms of kernels, 3,640
// launches). gc_launch launches with cudaLaunchAttributeProgrammaticStreamSerialization:
// the grid may be dispatched while the kernel before it in the stream is still finishing,
// and every kernel it launches begins with GC_PDL_WAIT(), which waits until the grid
// before has completed and its writes are visible. Nothing reads or writes global memory
// before that wait, so stream order (runtime/cuda.cu) holds as before: only the dispatch
// overlaps. A kernel launched with <<<>>> (or by cuBLASLt) waits for the whole grid before
// it as usual, and in a kernel launched that way GC_PDL_WAIT() returns at once.
//
// The rule: every kernel passed to gc_launch starts with GC_PDL_WAIT();
// tools/check_pdl.sh (the `pdl` test) checks it for every kernel of the library, and that
// none is launched with <<<>>>.
#ifndef GC_LAUNCH_CUH
#define GC_LAUNCH_CUH

#include <cuda_runtime.h>
#include <utility>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define GC_PDL_WAIT() asm volatile("griddepcontrol.wait;" ::: "memory")
#else
#define GC_PDL_WAIT() ((void)0)
#endif

// kernel<<<grid, block, smem, stream>>>(args...) as a programmatic dependent of the work
// before it on the stream, in clusters of `cluster` blocks along x (1: none; grid.x a
// multiple of it). Errors are left for cudaGetLastError (GC_CUDA_LAUNCH_CHECK).
template <typename... P, typename... A>
inline void gc_launch_clusters(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, unsigned cluster,
                               A &&...args)
{
    cudaLaunchAttribute attr[2];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    attr[1].id = cudaLaunchAttributeClusterDimension;
    attr[1].val.clusterDim.x = cluster, attr[1].val.clusterDim.y = 1, attr[1].val.clusterDim.z = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid, cfg.blockDim = block, cfg.dynamicSmemBytes = smem, cfg.stream = stream;
    cfg.attrs = attr, cfg.numAttrs = cluster > 1 ? 2 : 1;
    (void)cudaLaunchKernelEx(&cfg, kernel, std::forward<A>(args)...);
}

template <typename... P, typename... A>
inline void gc_launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, A &&...args)
{
    gc_launch_clusters(kernel, grid, block, smem, stream, 1u, std::forward<A>(args)...);
}

#endif
