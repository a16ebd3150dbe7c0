// Launchers of the batched pairwise distance kernel (pairwise_distance_kernel.cuh, where the
// kernel and the reasons for its shape are).
#include <cuda_runtime.h>

#include "kernels.h"
#include "pairwise_distance_kernel.cuh"

namespace tsl {
namespace cuda {

using distance_kernel::kBlockRows;
using distance_kernel::kThreads;
using distance_kernel::pairwise_distance_kernel;
using distance_kernel::symmetrize_upper_kernel;

int64_t distance_tiles(int64_t N) {
  const int64_t nt = (N + kBlockRows - 1) / kBlockRows;
  return nt * (nt + 1) / 2;
}

template <typename T>
cudaError_t launch_pairwise_distance_sum(const T* x, int64_t B, int64_t N, int64_t D, T* out,
                                         double* partial, cudaStream_t stream,
                                         unsigned* zero_word) {
  if (B == 0) return cudaSuccess;
  // No pairs, no blocks: the word is cleared apart (a cloud of no points, never a prompt).
  if (N == 0)
    return zero_word ? cudaMemsetAsync(zero_word, 0, sizeof(unsigned), stream) : cudaSuccess;
  const int64_t tiles = distance_tiles(N);
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
                                     cudaStream_t stream) {
  return launch_pairwise_distance_sum<T>(x, B, N, D, out, nullptr, stream, nullptr);
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
                                                     float*, cudaStream_t);
template cudaError_t launch_pairwise_distance<double>(const double*, int64_t, int64_t, int64_t,
                                                      double*, cudaStream_t);
template cudaError_t launch_pairwise_distance_sum<float>(const float*, int64_t, int64_t, int64_t,
                                                         float*, double*, cudaStream_t,
                                                         unsigned*);
template cudaError_t launch_pairwise_distance_sum<double>(const double*, int64_t, int64_t,
                                                          int64_t, double*, double*,
                                                          cudaStream_t, unsigned*);
template cudaError_t launch_symmetrize_upper<float>(const float*, int64_t, int64_t, float*,
                                                    cudaStream_t);
template cudaError_t launch_symmetrize_upper<double>(const double*, int64_t, int64_t, double*,
                                                     cudaStream_t);

}  // namespace cuda
}  // namespace tsl
