// Backward of vr_persistence: scatter each reported bar's gradient onto the edge it came from
// (the kernel and its reasons: vr_backward_kernel.cuh).
#include <cuda_runtime.h>

#include "kernels.h"
#include "vr_backward_kernel.cuh"

namespace tsl {
namespace cuda {

size_t vr_backward_workspace_bytes(int64_t B, int64_t H0, int64_t K) {
  return sizeof(tsl::EdgeScale) * (size_t)(B * (H0 + 2 * K) > 0 ? B * (H0 + 2 * K) : 1);
}

template <typename T>
cudaError_t launch_vr_backward(const T* grad_h0, const T* grad_h1, const T* x, int64_t B,
                               int64_t N, int64_t D, const int64_t* h0_edges, int64_t H0,
                               const int64_t* h1_edges, int64_t K, bool distances, T* grad,
                               void* workspace, cudaStream_t stream) {
  if (B == 0 || N == 0 || H0 + 2 * K == 0) return cudaSuccess;
  vr_backward::vr_backward_kernel<T><<<(unsigned)B, vr_backward::kThreads, 0, stream>>>(
      grad_h0, grad_h1, x, N, D, h0_edges, H0, h1_edges, K, distances, grad,
      static_cast<tsl::EdgeScale*>(workspace));
  return cudaGetLastError();
}

template cudaError_t launch_vr_backward<float>(const float*, const float*, const float*, int64_t,
                                               int64_t, int64_t, const int64_t*, int64_t,
                                               const int64_t*, int64_t, bool, float*, void*,
                                               cudaStream_t);
template cudaError_t launch_vr_backward<double>(const double*, const double*, const double*,
                                                int64_t, int64_t, int64_t, const int64_t*,
                                                int64_t, const int64_t*, int64_t, bool, double*,
                                                void*, cudaStream_t);

}  // namespace cuda
}  // namespace tsl
