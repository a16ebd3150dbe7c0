// Batched pairwise distances by the difference form: lower-triangle tiles of 32 x 32 pairs, each
// thread holding a 4 x 4 register tile of pairs for one of the eight canonical lanes.
//
// The Gram form would map onto tensor cores but cancels catastrophically for close points; the
// diagrams depend on exact ties and tiny edges, so accuracy wins. Every entry is the canonical
// sum of core/pairwise_distance.h: lane l (one thread of eight) sums the coordinates
// k = l (mod 8) in increasing k, each step a rounded product then a rounded add (__dmul_rn,
// __dadd_rn), and the eight lanes meet by shuffles in the fixed tree ((0+1)+(2+3))+((4+5)+(6+7)).
// No FMA: a fused multiply-add rounds once where the CPU rounds twice, and the distances must be
// the CPU's bit for bit (the diagrams are compared exactly across devices), and a CPU without
// FMA could not reproduce it. Each pair is computed once and written to both triangles, so the
// matrix is exactly symmetric. The epilogue adds the block's distances (a per-block partial, in
// a fixed order: no atomics) for the scale of TSLoss; a non-finite distance makes that partial
// non-finite, which is the invalid-input flag.
#include <cuda_runtime.h>

#include "../core/common.h"
#include "../core/pairwise_distance.h"
#include "kernels.h"

namespace tsl {
namespace cuda {
namespace {

constexpr int kBlockRows = 32;                 // a block computes a 32 x 32 tile of pairs
constexpr int kReg = 4;                        // each thread a 4 x 4 register tile
constexpr int kLanes = kDistanceLanes;         // threads per register tile, one lane each
constexpr int kGroups = (kBlockRows / kReg) * (kBlockRows / kReg);  // 64 register tiles
constexpr int kThreads = kGroups * kLanes;     // 512
constexpr int kChunk = 64;                     // coordinates staged per round (8 per lane)
constexpr int kStride = kChunk + 1;            // padded rows: fewer shared-memory bank conflicts

// Tile t of the lower triangle of nt x nt tiles: (bi, bj) with bi >= bj, row-major.
__device__ __forceinline__ void tile_of(int64_t t, int64_t* bi, int64_t* bj) {
  int64_t r = (int64_t)((sqrt(8.0 * (double)t + 1.0) - 1.0) * 0.5);
  while (r * (r + 1) / 2 > t) --r;
  while ((r + 1) * (r + 2) / 2 <= t) ++r;
  *bi = r;
  *bj = t - r * (r + 1) / 2;
}

template <typename T>
__device__ __forceinline__ T finish_distance(double s, const T* xi, const T* xj, int64_t D) {
  // float64 sums outside the safe range may have under- or overflowed: recomputed with scaling,
  // as the CPU does (float32 inputs summed in double cannot).
  if (sizeof(T) == 8 && !(s >= 1e-290 && s <= 1e290) && !isnan(s))
    return (T)scaled_distance(xi, xj, D);
  return (T)sqrt(s);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    pairwise_distance_kernel(const T* __restrict__ x, int64_t N, int64_t D, T* __restrict__ out,
                             double* __restrict__ partial, int64_t tiles) {
  __shared__ double xi[kBlockRows][kStride];
  __shared__ double xj[kBlockRows][kStride];
  __shared__ double warp_sums[kThreads / 32];
  const int64_t b = blockIdx.y;
  int64_t bi, bj;
  tile_of(blockIdx.x, &bi, &bj);
  const int64_t i0 = bi * kBlockRows, j0 = bj * kBlockRows;
  const int tid = threadIdx.x, lane = tid % kLanes, group = tid / kLanes;
  const int ti = (group / (kBlockRows / kReg)) * kReg, tj = (group % (kBlockRows / kReg)) * kReg;
  const T* xb = x + b * N * D;

  double acc[kReg][kReg];
#pragma unroll
  for (int a = 0; a < kReg; ++a)
#pragma unroll
    for (int c = 0; c < kReg; ++c) acc[a][c] = 0.0;

  for (int64_t k0 = 0; k0 < D; k0 += kChunk) {
    // Stage 2 x 32 rows x 64 coordinates, widened exactly; rows past N and coordinates past D
    // are zeros, which add exact zeros to every lane.
    for (int e = tid; e < kBlockRows * kChunk; e += kThreads) {
      const int r = e / kChunk, c = e % kChunk;
      const int64_t k = k0 + c;
      xi[r][c] = (i0 + r < N && k < D) ? (double)xb[(i0 + r) * D + k] : 0.0;
      xj[r][c] = (j0 + r < N && k < D) ? (double)xb[(j0 + r) * D + k] : 0.0;
    }
    __syncthreads();
#pragma unroll 2
    for (int c = lane; c < kChunk; c += kLanes) {
      double u[kReg], v[kReg];
#pragma unroll
      for (int a = 0; a < kReg; ++a) u[a] = xi[ti + a][c];
#pragma unroll
      for (int a = 0; a < kReg; ++a) v[a] = xj[tj + a][c];
#pragma unroll
      for (int a = 0; a < kReg; ++a)
#pragma unroll
        for (int q = 0; q < kReg; ++q) {
          const double t = __dsub_rn(u[a], v[q]);
          acc[a][q] = __dadd_rn(acc[a][q], __dmul_rn(t, t));
        }
    }
    __syncthreads();
  }

  // The canonical lane tree: xor 1, then 2, then 4 (IEEE addition is commutative, so every
  // lane of the group ends with the same sum).
#pragma unroll
  for (int a = 0; a < kReg; ++a)
#pragma unroll
    for (int q = 0; q < kReg; ++q) {
      double s = acc[a][q];
      s = __dadd_rn(s, __shfl_xor_sync(0xffffffffu, s, 1));
      s = __dadd_rn(s, __shfl_xor_sync(0xffffffffu, s, 2));
      s = __dadd_rn(s, __shfl_xor_sync(0xffffffffu, s, 4));
      acc[a][q] = s;
    }

  // Lane l of the group writes pairs l and l + 8 of its 16; the block's sum of distances over
  // its pairs i > j goes to partial[b * tiles + tile] in a fixed order.
  double local = 0.0;
  T* ob = out + b * N * N;
#pragma unroll
  for (int e = 0; e < kReg * kReg; ++e) {
    if (e % kLanes != lane) continue;
    const int a = e / kReg, q = e % kReg;
    const int64_t i = i0 + ti + a, j = j0 + tj + q;
    if (i >= N || j >= N || j > i) continue;
    if (i == j) {
      ob[i * N + i] = T(0);
      continue;
    }
    const T d = finish_distance<T>(acc[a][q], xb + i * D, xb + j * D, D);
    ob[i * N + j] = d;
    ob[j * N + i] = d;
    local = __dadd_rn(local, (double)d);
  }
  if (partial == nullptr) return;
  for (int off = 16; off > 0; off >>= 1)
    local = __dadd_rn(local, __shfl_down_sync(0xffffffffu, local, off));
  if (tid % 32 == 0) warp_sums[tid / 32] = local;
  __syncthreads();
  if (tid == 0) {
    double s = 0.0;
    for (int w = 0; w < kThreads / 32; ++w) s = __dadd_rn(s, warp_sums[w]);
    partial[b * tiles + blockIdx.x] = s;
  }
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

int64_t distance_tiles(int64_t N) {
  const int64_t nt = (N + kBlockRows - 1) / kBlockRows;
  return nt * (nt + 1) / 2;
}

template <typename T>
cudaError_t launch_pairwise_distance_sum(const T* x, int64_t B, int64_t N, int64_t D, T* out,
                                         double* partial, cudaStream_t stream) {
  if (B == 0 || N == 0) return cudaSuccess;
  const int64_t tiles = distance_tiles(N);
  // gridDim.y is limited to 65535; larger batches run as several launches.
  for (int64_t b0 = 0; b0 < B; b0 += 65535) {
    const int64_t nb = B - b0 < 65535 ? B - b0 : 65535;
    dim3 grid((unsigned)tiles, (unsigned)nb);
    pairwise_distance_kernel<T><<<grid, kThreads, 0, stream>>>(
        x + b0 * N * D, N, D, out + b0 * N * N, partial ? partial + b0 * tiles : nullptr, tiles);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_pairwise_distance(const T* x, int64_t B, int64_t N, int64_t D, T* out,
                                     cudaStream_t stream) {
  return launch_pairwise_distance_sum<T>(x, B, N, D, out, nullptr, stream);
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
template cudaError_t launch_pairwise_distance_sum<float>(const float*, int64_t, int64_t, int64_t,
                                                         float*, double*, cudaStream_t);
template cudaError_t launch_pairwise_distance_sum<double>(const double*, int64_t, int64_t,
                                                          int64_t, double*, double*,
                                                          cudaStream_t);
template cudaError_t launch_symmetrize_lower<float>(const float*, int64_t, int64_t, float*,
                                                    cudaStream_t);
template cudaError_t launch_symmetrize_lower<double>(const double*, int64_t, int64_t, double*,
                                                     cudaStream_t);

}  // namespace cuda
}  // namespace tsl
