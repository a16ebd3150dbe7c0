// Batched pairwise distances by the difference form, tiled through shared memory.
//
// The Gram form would map onto tensor cores but cancels catastrophically for close points; the
// diagrams depend on exact ties and tiny edges, so accuracy wins. Every (i, j) entry sums the
// same squared differences in the same order as (j, i), and (a-b)^2 == (b-a)^2 exactly, so the
// result is exactly symmetric without a transpose pass.
#include <cuda_runtime.h>

#include "../core/common.h"
#include "kernels.h"

namespace tsl {
namespace cuda {
namespace {

constexpr int kTile = 16;   // output tile is kTile x kTile, one entry per thread
constexpr int kChunk = 32;  // coordinates staged per shared-memory round

template <typename T>
__global__ void pairwise_distance_kernel(const T* __restrict__ x, int64_t N, int64_t D,
                                         T* __restrict__ out) {
  // +1 column of padding: the column-wise reads below would otherwise hit one bank.
  __shared__ double xi[kTile][kChunk + 1];
  __shared__ double xj[kTile][kChunk + 1];
  const int64_t b = blockIdx.z;
  const int64_t i0 = (int64_t)blockIdx.y * kTile, j0 = (int64_t)blockIdx.x * kTile;
  const int ty = threadIdx.y, tx = threadIdx.x;
  const int64_t i = i0 + ty, j = j0 + tx;
  const T* xb = x + b * N * D;
  double s = 0.0;
  for (int64_t k0 = 0; k0 < D; k0 += kChunk) {
    // 256 threads stage 2 x 16 x 32 coordinates: 4 loads each, coalesced along k.
    for (int t = ty * kTile + tx; t < kTile * kChunk; t += kTile * kTile) {
      const int r = t / kChunk, c = t % kChunk;
      const int64_t k = k0 + c;
      xi[r][c] = (i0 + r < N && k < D) ? (double)xb[(i0 + r) * D + k] : 0.0;
      xj[r][c] = (j0 + r < N && k < D) ? (double)xb[(j0 + r) * D + k] : 0.0;
    }
    __syncthreads();
    const int kmax = (int)((D - k0) < kChunk ? (D - k0) : kChunk);
    for (int c = 0; c < kmax; ++c) {
      const double t = xi[ty][c] - xj[tx][c];
      // No FMA contraction: the sum must not depend on which of (i, j), (j, i) is computed.
      s = __dadd_rn(s, __dmul_rn(t, t));
    }
    __syncthreads();
  }
  if (i < N && j < N) out[(b * N + i) * N + j] = i == j ? T(0) : (T)sqrt(s);
}

template <typename T>
__global__ void symmetrize_lower_kernel(const T* __restrict__ in, int64_t B, int64_t N,
                                        T* __restrict__ out) {
  const int64_t total = B * N * N;
  for (int64_t g = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; g < total;
       g += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = g / (N * N), r = g % (N * N), i = r / N, j = r % N;
    const int64_t hi = i > j ? i : j, lo = i > j ? j : i;
    out[g] = i == j ? T(0) : in[(b * N + hi) * N + lo];
  }
}

}  // namespace

template <typename T>
cudaError_t launch_pairwise_distance(const T* x, int64_t B, int64_t N, int64_t D, T* out,
                                     cudaStream_t stream) {
  if (B == 0 || N == 0) return cudaSuccess;
  const int64_t tiles = (N + kTile - 1) / kTile;
  // gridDim.z is limited to 65535; larger batches run as several launches.
  for (int64_t b0 = 0; b0 < B; b0 += 65535) {
    const int64_t nb = B - b0 < 65535 ? B - b0 : 65535;
    dim3 grid((unsigned)tiles, (unsigned)tiles, (unsigned)nb), block(kTile, kTile);
    pairwise_distance_kernel<T><<<grid, block, 0, stream>>>(x + b0 * N * D, N, D,
                                                            out + b0 * N * N);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_symmetrize_lower(const T* in, int64_t B, int64_t N, T* out,
                                    cudaStream_t stream) {
  const int64_t total = B * N * N;
  if (total == 0) return cudaSuccess;
  const int64_t blocks64 = (total + 255) / 256;
  const unsigned blocks = (unsigned)(blocks64 < 65535 * 8 ? blocks64 : 65535 * 8);
  symmetrize_lower_kernel<T><<<blocks, 256, 0, stream>>>(in, B, N, out);
  return cudaGetLastError();
}

template cudaError_t launch_pairwise_distance<float>(const float*, int64_t, int64_t, int64_t,
                                                     float*, cudaStream_t);
template cudaError_t launch_pairwise_distance<double>(const double*, int64_t, int64_t, int64_t,
                                                      double*, cudaStream_t);
template cudaError_t launch_symmetrize_lower<float>(const float*, int64_t, int64_t, float*,
                                                    cudaStream_t);
template cudaError_t launch_symmetrize_lower<double>(const double*, int64_t, int64_t, double*,
                                                     cudaStream_t);

}  // namespace cuda
}  // namespace tsl
