// Argument checks shared by the CPU and CUDA glue. Messages name the argument and what was
// expected, because they surface in Python as the user's error.
#pragma once

#include <torch/types.h>

#include "core/common.h"

namespace tsloss {

inline void check_points_or_distances(const at::Tensor& x, bool distances) {
  TORCH_CHECK(x.dim() == 3,
              "vr_persistence: x must be ", distances ? "(B, N, N) distances" : "(B, N, D) points",
              " at the op level, got shape ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "vr_persistence: x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.size(1) <= tsl::kMaxPoints, "vr_persistence: N = ", x.size(1),
              " points exceeds the supported maximum of ", tsl::kMaxPoints);
  if (distances) {
    TORCH_CHECK(x.size(1) == x.size(2), "vr_persistence: a distance matrix must be square, got ",
                x.sizes());
  } else {
    TORCH_CHECK(x.size(2) >= 1 || x.size(1) <= 1, "vr_persistence: points need D >= 1, got ",
                x.sizes());
  }
}

inline void check_max_h1(int64_t max_h1) {
  TORCH_CHECK(max_h1 >= 0, "vr_persistence: max_h1 must be >= 0, got ", max_h1);
}

// A capacity beyond the number of edges can never fill, and one large enough to exhaust memory
// would fail in the allocator (or, with overcommit, be killed while padding it): refuse it while
// the message can still name the argument. Small surplus capacity stays legal.
inline void check_h1_capacity(int64_t max_h1, int64_t B, int64_t N, int64_t value_bytes) {
  const int64_t edges = N * (N - 1) / 2;
  const double bytes = double(B) * double(max_h1) * double(2 * value_bytes + 4 * 8);
  TORCH_CHECK(max_h1 <= edges || bytes <= double(1ull << 30), "vr_persistence: max_h1 = ",
              max_h1, " asks for ", bytes / double(1ull << 30), " GiB of H1 outputs, but a ",
              "cloud of ", N, " points has at most ", edges, " H1 bars; pass max_h1 <= ",
              edges);
}

}  // namespace tsloss
