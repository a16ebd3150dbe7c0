// Launchers of the fused TSLoss ops' kernels (tsloss_kernels.cuh, where they and the reasons
// for their shape are).
#include <cuda_runtime.h>

#include "kernels.h"
#include "tsloss_kernels.cuh"

namespace tsl {
namespace cuda {

using namespace tsloss_kernel;

size_t tsloss_forward_workspace_bytes(int64_t B, int64_t N) {
  return sizeof(double) * (size_t)(B * distance_tiles(N) + 5 * B + 1);
}

unsigned* tsloss_terms_counter(void* workspace, int64_t B, int64_t N) {
  return reinterpret_cast<unsigned*>(static_cast<double*>(workspace) + B * distance_tiles(N) +
                                     5 * B);
}

size_t tsloss_backward_workspace_bytes(int64_t B, int64_t N, int64_t K) {
  const int64_t H0 = N > 0 ? N - 1 : 0;
  return sizeof(double) * (size_t)(B * (H0 + K) + B + 1) +
         sizeof(int64_t) * (size_t)(B * (N + 1 + incidence_capacity(N, K)));
}

template <typename T>
cudaError_t launch_tsloss_terms(const T* x, int64_t B, int64_t N, int64_t D, const T* h0,
                                const T* h1, int64_t K, int64_t* h1_count, const T* prev_h0,
                                const T* prev_h1, const TermOptions& o, int reduction,
                                T* topo_h0, T* topo_h1, T* scales, T* loss, T* conn, T* red,
                                T* stab, T* scale, void* workspace, cudaStream_t stream) {
  if (B == 0) return cudaSuccess;
  double* partial = static_cast<double*>(workspace);
  const int64_t tiles = distance_tiles(N);  // N = 1: one block, whose sum is 0
  double* per_cloud = partial + B * tiles;
  tsloss_terms_kernel<T><<<(unsigned)B, kTermThreads, 0, stream>>>(
      x, N, D, partial, tiles, h0, h1, K, h1_count, prev_h0, prev_h1, o, topo_h0, topo_h1,
      scales, per_cloud, reduction, loss, conn, red, stab, scale,
      tsloss_terms_counter(workspace, B, N));
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_tsloss_backward(const T* g_loss, const T* g_conn, const T* g_red,
                                   const T* g_stab, const T* g_scale, const T* x, int64_t B,
                                   int64_t N, int64_t D, const T* dist, const T* scales,
                                   const T* topo_h0, const T* topo_h1, int64_t K,
                                   const int64_t* h1_count, const int64_t* h0_edges,
                                   const int64_t* h1_edges, const T* prev_h0, const T* prev_h1,
                                   const TermOptions& o, int reduction, T* grad,
                                   void* workspace, cudaStream_t stream) {
  if (B == 0 || N == 0 || D == 0) return cudaSuccess;
  // The edge-weight kernel keeps a cloud's offsets in shared memory, kMaxPoints + 1 of them.
  if (N > kMaxPoints) return cudaErrorInvalidValue;
  const int64_t H0 = N - 1;
  double* edge_w = static_cast<double*>(workspace);
  double* dense = edge_w + B * (H0 + K);
  int64_t* offsets = reinterpret_cast<int64_t*>(dense + B + 1);
  int64_t* keys = offsets + B * (N + 1);
  const int64_t cap = incidence_capacity(N, K);
  tsloss_edge_weights_kernel<T><<<(unsigned)B, kTermThreads, 0, stream>>>(
      g_loss, g_conn, g_red, g_stab, g_scale, B, N, scales, topo_h0, topo_h1, K, h1_count,
      prev_h0, prev_h1, o, reduction, edge_w, dense, h0_edges, h1_edges, offsets, keys);
  for (int64_t b0 = 0; b0 < B; b0 += 65535) {
    const int64_t nb = B - b0 < 65535 ? B - b0 : 65535;
    dim3 grid((unsigned)((D + kGradBlockCols - 1) / kGradBlockCols),
              (unsigned)((N + kGradBlockRows - 1) / kGradBlockRows), (unsigned)nb);
    tsloss_grad_kernel<T><<<grid, kGradRows * kGradCols, 0, stream>>>(
        x + b0 * N * D, N, D, dist + b0 * N * N, dense + b0, edge_w + b0 * (H0 + K),
        h0_edges + b0 * H0 * 2, h1_edges + b0 * K * 4, K, offsets + b0 * (N + 1),
        keys + b0 * cap, grad + b0 * N * D);
  }
  return cudaGetLastError();
}

template cudaError_t launch_tsloss_terms<float>(const float*, int64_t, int64_t, int64_t,
                                                const float*, const float*, int64_t, int64_t*,
                                                const float*, const float*, const TermOptions&,
                                                int, float*, float*, float*, float*, float*,
                                                float*, float*, float*, void*, cudaStream_t);
template cudaError_t launch_tsloss_terms<double>(const double*, int64_t, int64_t, int64_t,
                                                 const double*, const double*, int64_t, int64_t*,
                                                 const double*, const double*,
                                                 const TermOptions&, int, double*, double*,
                                                 double*, double*, double*, double*, double*,
                                                 double*, void*, cudaStream_t);
template cudaError_t launch_tsloss_backward<float>(
    const float*, const float*, const float*, const float*, const float*, const float*, int64_t,
    int64_t, int64_t, const float*, const float*, const float*, const float*, int64_t,
    const int64_t*, const int64_t*, const int64_t*, const float*, const float*,
    const TermOptions&, int, float*, void*, cudaStream_t);
template cudaError_t launch_tsloss_backward<double>(
    const double*, const double*, const double*, const double*, const double*, const double*,
    int64_t, int64_t, int64_t, const double*, const double*, const double*, const double*,
    int64_t, const int64_t*, const int64_t*, const int64_t*, const double*, const double*,
    const TermOptions&, int, double*, void*, cudaStream_t);

}  // namespace cuda
}  // namespace tsl
