// The per-cloud topology pass (core/topology_block.h) as a CUDA kernel: one block per cloud, the
// algorithm instantiated on CudaBlock. Prim's state lives in shared memory where it fits (N up
// to about 1190 points), else in a per-cloud slice of global scratch.
#include <cuda_runtime.h>

#include "../core/topology_block.h"
#include "../core/warp_cuda.h"
#include "kernels.h"

namespace tsl {
namespace cuda {
namespace {

// Shared memory a block may use without opting in to more.
constexpr size_t kSharedLimit = 48 * 1024;

template <typename T>
__host__ __device__ size_t state_bytes(int64_t n) {
  const size_t raw = (size_t)topology_state_bytes(n, sizeof(T), sizeof(MstEdge<T>));
  return (raw + 64 + 255) / 256 * 256;  // room for the alignment of the parts below
}

template <typename P>
__device__ P* carve(unsigned char*& at, int64_t count) {
  P* p = reinterpret_cast<P*>(at);
  at += ((size_t)count * sizeof(P) + 7) / 8 * 8;
  return p;
}

template <typename T, bool kShared>
__global__ void topology_kernel(const T* __restrict__ dist, int64_t N, bool h1, T* h0,
                                int64_t* h0_edges, int64_t* best_parent, T* threshold,
                                H1Column<T>* columns, int32_t* counts, unsigned char* scratch,
                                unsigned long long* clear) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int64_t b = blockIdx.x;
  if (clear != nullptr && b == 0 && threadIdx.x == 0) *clear = 0;
  unsigned char* at = kShared ? smem : scratch + (size_t)b * state_bytes<T>(N);
  // 8-byte parts first, then 4-byte, then bytes: every part stays aligned.
  uint64_t* key_hi = carve<uint64_t>(at, N);
  MstEdge<T>* mst = carve<MstEdge<T>>(at, N);
  T* warp_values = carve<T>(at, 32);
  uint32_t* key_lo = carve<uint32_t>(at, N);
  int32_t* parent = carve<int32_t>(at, N);
  uint32_t* warp_words = carve<uint32_t>(at, kFlagWords);
  uint8_t* in_tree = carve<uint8_t>(at, N);
  const int64_t H0 = N > 0 ? N - 1 : 0, E = N * (N - 1) / 2;
  // The cloud's matrix through an opaque copy: seen through, the compiler folded its offset
  // b * N * N into every 32-bit distance offset of the pass (index32.h's Dist32) and formed each
  // address in 64 bits, six instructions a read where Dist32 means two.
  const T* cloud = dist + b * N * N;
  asm("mov.b64 %0, %0;" : "+l"(cloud));
  const TopologyCloud<T> c{DistanceMatrix<T>{cloud, N},
                           h1,
                           key_hi,
                           key_lo,
                           parent,
                           in_tree,
                           warp_words,
                           warp_values,
                           mst,
                           h0 + b * H0 * 2,
                           h0_edges + b * H0 * 2,
                           best_parent ? best_parent + b * N : nullptr,
                           threshold + b,
                           h1 ? columns + b * E : nullptr,
                           counts + b};
  CudaBlock blk;
  cloud_topology(blk, c);
}

// Threads of a block: topology_warps(N) where the batch fills the GPU; where it does not (one
// prompt, a small batch), more warps, up to 32 and one edge a lane, so that the apparent-pair
// flags (a lane per edge, up to 1,024 edges between two barriers, kFlagWords / warps sub-chunks
// a warp) and the sorts take fewer rounds: N = 64 has 2,016 edges, two spans of 16 sub-chunks
// in turn on each of topology_warps' two warps, of one on each of 32 (the H100 took 0.147 ms
// for one such cloud).
// Blocks aim at half of the GPU's warps in all. The pass gives the same results at every warp
// count (test_warp runs 1 to 8, 16 and 32).
template <class Kernel>
int topology_threads(Kernel kernel, int64_t B, int64_t N) {
  int warps = topology_warps((index_t)N);
  int device = 0, sms = 0;
  cudaFuncAttributes attr;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
      cudaFuncGetAttributes(&attr, kernel) != cudaSuccess) {
    cudaGetLastError();  // a failed query leaves the default, and no error behind
    return 32 * warps;
  }
  const int64_t edges = N * (N - 1) / 2;
  int64_t want = (int64_t)sms * 32 / B;       // half of the GPU's 64 warps per multiprocessor
  const int64_t useful = (edges + 31) / 32;   // past a lane per edge, a warp has no edge
  const int64_t most = attr.maxThreadsPerBlock / 32;  // the kernel's registers allow
  if (want > useful) want = useful;
  if (want > most) want = most;
  if (want > 32) want = 32;
  return 32 * (want > warps ? (int)want : warps);
}

}  // namespace

size_t topology_scratch_bytes(int64_t B, int64_t N, size_t elem_size) {
  const size_t per = elem_size == sizeof(float) ? state_bytes<float>(N) : state_bytes<double>(N);
  return per <= kSharedLimit ? 0 : per * (size_t)B;
}

template <typename T>
cudaError_t launch_topology(const T* dist, int64_t B, int64_t N, bool h1, T* h0,
                            int64_t* h0_edges, int64_t* best_parent, T* threshold,
                            H1Column<T>* columns, int32_t* counts, void* scratch,
                            size_t scratch_bytes, cudaStream_t stream,
                            unsigned long long* clear) {
  if (B == 0 || N == 0) return cudaSuccess;
  if (N > kMaxPoints) return cudaErrorInvalidValue;  // the pass's arithmetic is 32-bit (index32.h)
  const size_t bytes = state_bytes<T>(N);
  if (bytes <= kSharedLimit) {
    const int threads = topology_threads(topology_kernel<T, true>, B, N);
    topology_kernel<T, true><<<(unsigned)B, threads, bytes, stream>>>(
        dist, N, h1, h0, h0_edges, best_parent, threshold, columns, counts, nullptr, clear);
  } else {
    if (scratch == nullptr || scratch_bytes < bytes * (size_t)B) return cudaErrorInvalidValue;
    const int threads = topology_threads(topology_kernel<T, false>, B, N);
    topology_kernel<T, false><<<(unsigned)B, threads, 0, stream>>>(
        dist, N, h1, h0, h0_edges, best_parent, threshold, columns, counts,
        static_cast<unsigned char*>(scratch), clear);
  }
  return cudaGetLastError();
}

template cudaError_t launch_topology<float>(const float*, int64_t, int64_t, bool, float*,
                                            int64_t*, int64_t*, float*, H1Column<float>*,
                                            int32_t*, void*, size_t, cudaStream_t,
                                            unsigned long long*);
template cudaError_t launch_topology<double>(const double*, int64_t, int64_t, bool, double*,
                                             int64_t*, int64_t*, double*, H1Column<double>*,
                                             int32_t*, void*, size_t, cudaStream_t,
                                            unsigned long long*);

}  // namespace cuda
}  // namespace tsl
