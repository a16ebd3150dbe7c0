// The H1 reduction with one warp per cloud (core/h1_reduce_warp.h on CudaWarp): the fast part of
// every reduction array in shared memory, the rest taken, as it grows, from a pool of global
// memory that the launch's clouds share.
#include <cuda_runtime.h>

#include "../core/h1_reduce_block.h"
#include "../core/h1_reduce_warp.h"
#include "../core/warp_cuda.h"
#include "kernels.h"

namespace tsl {
namespace cuda {
namespace {

// One warp a block, so that a batch smaller than four times the GPU's multiprocessors spreads
// over as many of them as it has clouds. With four warps a block, 64 clouds ran on 16 of the
// H100's 132 multiprocessors, four chains sharing each one's issue slots and memory pipes, and
// a block lasted as long as its slowest cloud: ncu read an average multiprocessor busy ~1.6 ms
// of the kernel's 2.41 ms, against 1.03 ms for one cloud alone. Where the batch fills the GPU
// (1,024 clouds: ~8 a multiprocessor either way) nothing changes.
// Entries of each array the warp keeps in shared memory (see kDeviceFastEntries): 6 KB.
constexpr int kFastEntries = int(kDeviceFastEntries);
static_assert(kFastEntries >= WarpReducer<CudaWarp, float>::kSealAt &&
                  kFastEntries >= WarpReducer<CudaWarp, double>::kSealAt,
              "the reduction's tail must fit the shared part of its set");

// Cloud b's slices of the launch's arrays, with the fast parts of its set, V and arena (each
// kFastEntries long) where the kernel keeps them.
template <typename T>
__device__ WarpReduceMemory<T> cloud_memory(const WarpReduceSlices<T>& g, int64_t b,
                                            Entry<T>* set, int32_t* vwork, int32_t* arena) {
  return WarpReduceMemory<T>{Spill<Entry<T>>{set, kFastEntries, nullptr, 0},
                             Spill<int32_t>{vwork, kFastEntries, nullptr, 0},
                             Spill<int32_t>{arena, kFastEntries, nullptr, 0},
                             g.pivot_keys + b * g.pivot_capacity,
                             g.pivot_slots + b * g.pivot_capacity,
                             g.pivot_capacity,
                             g.v_start + b * g.slot_capacity,
                             g.v_length + b * g.slot_capacity,
                             g.slot_capacity,
                             g.pairs + b * g.slot_capacity,
                             g.slot_capacity,
                             WarpPool{g.pool, g.pool_bytes, g.pool_used}};
}

template <typename T>
__global__ void __launch_bounds__(32)
    reduce_warp_kernel(const T* __restrict__ dist, int64_t B, int64_t N,
                       const T* __restrict__ threshold, const H1Column<T>* __restrict__ columns,
                       const int32_t* __restrict__ counts, WarpReduceSlices<T> g) {
  __shared__ Entry<T> s_set[kFastEntries];
  __shared__ int32_t s_vwork[kFastEntries];
  __shared__ int32_t s_arena[kFastEntries];
  const int64_t b = blockIdx.x;
  const int64_t E = N * (N - 1) / 2, m = counts[b];
  const WarpReduceMemory<T> mem = cloud_memory(g, b, s_set, s_vwork, s_arena);
  CudaWarp w;
  WarpReducer<CudaWarp, T> reducer(w, DistanceMatrix<T>{dist + b * N * N, N}, threshold[b], mem,
                                   nullptr);
  index_t np = 0;
  const Status s = reducer.run(columns + b * E, m, &np);
  if ((threadIdx.x & 31) == 0) {
    g.status[b] = s;
    g.num_pairs[b] = s == kOk ? np : 0;
  }
}

// A block of warps per cloud (core/h1_reduce_block.h): each warp's set tail and V in dynamic
// shared memory (5 KB a warp), the arena's fast part and the block's commit state static. At
// most kBlockWarps warps: 512 threads leave ptxas the 128 registers the warp kernel takes.
constexpr int kBlockWarps = 16;

template <typename T>
size_t block_shared_bytes(int warps) {
  return size_t(warps) * kFastEntries * (sizeof(Entry<T>) + sizeof(int32_t));
}

template <typename T>
__global__ void __launch_bounds__(kBlockWarps * 32, 1)
    reduce_block_kernel(const T* __restrict__ dist, int64_t B, int64_t N,
                        const T* __restrict__ threshold, const H1Column<T>* __restrict__ columns,
                        const int32_t* __restrict__ counts, WarpReduceSlices<T> g) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ BlockReduceShared<T> sh;
  __shared__ int32_t s_arena[kFastEntries];
  const int warps = int(blockDim.x >> 5), warp = int(threadIdx.x >> 5);
  Entry<T>* s_set = reinterpret_cast<Entry<T>*>(smem);
  int32_t* s_vwork = reinterpret_cast<int32_t*>(s_set + (size_t)warps * kFastEntries);
  const int64_t b = blockIdx.x;
  const int64_t E = N * (N - 1) / 2, m = counts[b];
  const WarpReduceMemory<T> mem =
      cloud_memory(g, b, s_set + (size_t)warp * kFastEntries,
                   s_vwork + (size_t)warp * kFastEntries, s_arena);
  CudaBlock blk;
  // Each thread's own warp's reducer: the block's code asks for warp k's only in that warp, or
  // for what every warp's holds alike (the capacities).
  WarpReducer<CudaWarp, T> reducer(blk.warp(warp), DistanceMatrix<T>{dist + b * N * N, N},
                                   threshold[b], mem, nullptr);
  WarpReducer<CudaWarp, T>* const own = &reducer;
  index_t np = 0;
  const Status s = block_reduce(
      blk, sh, columns + b * E, m, [own](int) -> WarpReducer<CudaWarp, T>& { return *own; },
      &np);
  if (threadIdx.x == 0) {
    g.status[b] = s;
    g.num_pairs[b] = s == kOk ? np : 0;
  }
}

}  // namespace

int reduce_warps_per_cloud(int64_t B, int requested) {
  if (requested == 1 || B == 0) return 1;
  if (requested > 1) return requested < kBlockWarps ? requested : kBlockWarps;
  // Automatic: blocks while the batch leaves most of the GPU's multiprocessors idle, about four
  // warps a multiprocessor in all.
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    cudaGetLastError();
    return 1;
  }
  int64_t want = (int64_t)sms * 4 / B;  // four warps a multiprocessor
  if (want > kBlockWarps) want = kBlockWarps;
  return want >= 2 ? (int)want : 1;
}

template <typename T>
cudaError_t launch_reduce_warp(const T* dist, int64_t B, int64_t N, const T* threshold,
                               const H1Column<T>* columns, const int32_t* counts,
                               const WarpReduceSlices<T>& slices, cudaStream_t stream,
                               int warps_per_cloud) {
  if (B == 0) return cudaSuccess;
  int warps = reduce_warps_per_cloud(B, warps_per_cloud);
  // Each warp of a block takes its set's second part (1,024 entries) from the pool at the
  // start, where one warp takes one a cloud: the pool, sized for one warp a cloud, keeps three
  // quarters for growth, or the clouds would run out that one warp finishes.
  const uint64_t set_part = 1024 * sizeof(Entry<T>);
  while (warps > 1 && 4 * (uint64_t)B * (uint64_t)warps * set_part > slices.pool_bytes) warps /= 2;
  // And the warps' dynamic shared memory (5 KB each) within what a block may have here: past
  // 48 KB only by asking, and some GPUs (sm_75: 64 KB) give less than 16 warps' 80 KB.
  size_t room = 0, fixed = 0;  // dynamic shared memory a block may have; the kernel's static
  if (warps > 1) {
    int device = 0, optin = 0;
    cudaFuncAttributes attr;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) !=
            cudaSuccess ||
        cudaFuncGetAttributes(&attr, reduce_block_kernel<T>) != cudaSuccess) {
      cudaGetLastError();
      warps = 1;
    } else {
      fixed = attr.sharedSizeBytes;
      room = (size_t)optin > fixed ? optin - fixed : 0;
      while (warps > 1 && block_shared_bytes<T>(warps) > room) --warps;
    }
  }
  if (warps <= 1) {
    reduce_warp_kernel<T><<<(unsigned)B, 32, 0, stream>>>(
        dist, B, N, threshold, columns, counts, slices);
    return cudaGetLastError();
  }
  const size_t bytes = block_shared_bytes<T>(warps);
  // Unasked, a block gets 48 KB in all, its static shared memory (3.5-3.8 KB here) included:
  // nine warps' 45 KB already pass it. Raised to all this device allows (the same value from
  // every caller, so a thread launching fewer warps never lowers it under another's launch).
  if (bytes + fixed > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(
        reduce_block_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)room);
    if (err != cudaSuccess) {
      cudaGetLastError();  // returned, not left pending for the next launch's check
      return err;
    }
  }
  reduce_block_kernel<T><<<(unsigned)B, warps * 32, bytes, stream>>>(
      dist, B, N, threshold, columns, counts, slices);
  return cudaGetLastError();
}

template cudaError_t launch_reduce_warp<float>(const float*, int64_t, int64_t, const float*,
                                               const H1Column<float>*, const int32_t*,
                                               const WarpReduceSlices<float>&, cudaStream_t, int);
template cudaError_t launch_reduce_warp<double>(const double*, int64_t, int64_t, const double*,
                                                const H1Column<double>*, const int32_t*,
                                                const WarpReduceSlices<double>&, cudaStream_t,
                                                int);

}  // namespace cuda
}  // namespace tsl
