// Launchers of the batched pairwise distance kernel (pairwise_distance_kernel.cuh, where the
// kernel and the reasons for its shape are).
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels.h"
#include "pairwise_distance_kernel.cuh"

namespace tsl {
namespace cuda {

using distance_kernel::kBlockRows;
using distance_kernel::kChunk;
using distance_kernel::kSliceValues;
using distance_kernel::kThreads;
using distance_kernel::pairwise_distance_kernel;
using distance_kernel::pairwise_distance_split_kernel;
using distance_kernel::symmetrize_upper_kernel;

int64_t distance_tiles(int64_t N) {
  const int64_t nt = (N + kBlockRows - 1) / kBlockRows;
  return nt * (nt + 1) / 2;
}

namespace {

// How the split kernel cuts each tile's coordinates: `slices` blocks of per_slice coordinates
// (whole chunks); slices = 1: the one-block kernel.
struct SplitPlan {
  int slices;
  int64_t per_slice;
};

// requested: 1 never splits; 0 takes as many slices as leave every block resident at once (a
// cooperative launch's condition), at most one per two chunks; 2..64 that many, within the same
// bounds. Only the certified route (float32) splits: the canonical sum is one chain per lane.
SplitPlan split_plan(int64_t B, int64_t N, int64_t D, size_t elem_size, int requested) {
  const SplitPlan none{1, D};
  const int64_t chunks = (D + kChunk - 1) / kChunk;
  if (elem_size != sizeof(float) || requested == 1 || B <= 0 || N < 2 || chunks < 2) return none;
  int device = 0, sms = 0, cooperative = 0, per_sm = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device) != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(
          &per_sm, pairwise_distance_split_kernel<float>, kThreads, 0) != cudaSuccess) {
    cudaGetLastError();  // a failed query leaves the one-block kernel, and no error behind
    return none;
  }
  if (cooperative == 0) return none;
  const int64_t fit = (int64_t)sms * per_sm / (distance_tiles(N) * B);
  int64_t want = requested == 0 ? (chunks + 1) / 2 : requested;
  want = std::min(want, std::min(chunks, fit));
  if (want < 2) return none;
  const distance_kernel::SliceCut cut = distance_kernel::cut_slices(chunks, want);
  return SplitPlan{cut.slices, cut.per_chunks * kChunk};
}

size_t plan_bytes(int64_t B, int64_t N, const SplitPlan& plan) {
  if (plan.slices < 2) return 0;
  return (size_t)(B * distance_tiles(N) * plan.slices * kSliceValues) * sizeof(double);
}

}  // namespace

size_t distance_slice_workspace_bytes(int64_t B, int64_t N, int64_t D, size_t elem_size,
                                      int requested) {
  return plan_bytes(B, N, split_plan(B, N, D, elem_size, requested));
}

template <typename T>
cudaError_t launch_pairwise_distance_sum(const T* x, int64_t B, int64_t N, int64_t D, T* out,
                                         double* partial, cudaStream_t stream,
                                         unsigned* zero_word, int slices_requested,
                                         void* slice_workspace, size_t slice_workspace_bytes) {
  if (B == 0) return cudaSuccess;
  // No pairs, no blocks: the word is cleared apart (a cloud of no points, never a prompt).
  if (N == 0)
    return zero_word ? cudaMemsetAsync(zero_word, 0, sizeof(unsigned), stream) : cudaSuccess;
  const int64_t tiles = distance_tiles(N);
  if constexpr (sizeof(T) == sizeof(float)) {
    const SplitPlan plan = slice_workspace != nullptr
                               ? split_plan(B, N, D, sizeof(T), slices_requested)
                               : SplitPlan{1, D};
    if (plan.slices > 1 && slice_workspace_bytes >= plan_bytes(B, N, plan)) {
      double* ws = static_cast<double*>(slice_workspace);
      int slices = plan.slices;
      int64_t per_slice = plan.per_slice;
      void* args[] = {(void*)&x,     (void*)&N,     (void*)&D,         (void*)&out,
                      (void*)&partial, (void*)&tiles, (void*)&slices, (void*)&per_slice,
                      (void*)&ws,    (void*)&zero_word};
      const cudaError_t err = cudaLaunchCooperativeKernel(
          (const void*)pairwise_distance_split_kernel<T>,
          dim3((unsigned)(tiles * slices), (unsigned)B), dim3(kThreads), args, 0, stream);
      // Refused for its size or kind (fewer blocks resident than the occupancy query promised,
      // e.g. under MPS): the one-block kernel gives the same bits. Any other error is the
      // caller's to see (a failed stream capture would fail the fallback too, with another name).
      if (err != cudaErrorCooperativeLaunchTooLarge && err != cudaErrorNotSupported) return err;
      cudaGetLastError();
    }
  }
  // gridDim.y is limited to 65535; larger batches run as several launches.
  for (int64_t b0 = 0; b0 < B; b0 += 65535) {
    const int64_t nb = B - b0 < 65535 ? B - b0 : 65535;
    dim3 grid((unsigned)tiles, (unsigned)nb);
    constexpr bool gram = sizeof(T) == 4;  // float32: the certified route
    pairwise_distance_kernel<T, gram><<<grid, kThreads, 0, stream>>>(
        x + b0 * N * D, N, D, out + b0 * N * N, partial ? partial + b0 * tiles : nullptr, tiles,
        b0 == 0 ? zero_word : nullptr);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_pairwise_distance(const T* x, int64_t B, int64_t N, int64_t D, T* out,
                                     cudaStream_t stream, int slices_requested,
                                     void* slice_workspace, size_t slice_workspace_bytes) {
  return launch_pairwise_distance_sum<T>(x, B, N, D, out, nullptr, stream, nullptr,
                                         slices_requested, slice_workspace,
                                         slice_workspace_bytes);
}

template <typename T>
cudaError_t launch_symmetrize_upper(const T* in, int64_t B, int64_t N, T* out,
                                    cudaStream_t stream) {
  const int64_t total = B * N * N;
  if (total == 0) return cudaSuccess;
  const int64_t blocks64 = (total + 255) / 256;
  const unsigned blocks = (unsigned)(blocks64 < 65535 * 8 ? blocks64 : 65535 * 8);
  symmetrize_upper_kernel<T><<<blocks, 256, 0, stream>>>(in, B, N, out);
  return cudaGetLastError();
}

template cudaError_t launch_pairwise_distance<float>(const float*, int64_t, int64_t, int64_t,
                                                     float*, cudaStream_t, int, void*, size_t);
template cudaError_t launch_pairwise_distance<double>(const double*, int64_t, int64_t, int64_t,
                                                      double*, cudaStream_t, int, void*, size_t);
template cudaError_t launch_pairwise_distance_sum<float>(const float*, int64_t, int64_t, int64_t,
                                                         float*, double*, cudaStream_t,
                                                         unsigned*, int, void*, size_t);
template cudaError_t launch_pairwise_distance_sum<double>(const double*, int64_t, int64_t,
                                                          int64_t, double*, double*,
                                                          cudaStream_t, unsigned*, int, void*,
                                                          size_t);
template cudaError_t launch_symmetrize_upper<float>(const float*, int64_t, int64_t, float*,
                                                    cudaStream_t);
template cudaError_t launch_symmetrize_upper<double>(const double*, int64_t, int64_t, double*,
                                                     cudaStream_t);

}  // namespace cuda
}  // namespace tsl
