// Argument checks shared by the CPU and CUDA glue. Messages name the argument and what was
// expected, because they surface in Python as the user's error.
#pragma once

#include <torch/types.h>

#include <cstdio>
#include <string>
#include <tuple>
#include <type_traits>

#include "core/common.h"

namespace tsloss {

// TSL_CHECK(cond, parts...) is TORCH_CHECK with the message built by to_string/snprintf rather
// than by iostreams. An extension carrying its own static libstdc++ has iostream/locale state
// that clashes with torch's shared libstdc++: with LDFLAGS=-static-libstdc++ on Ubuntu 24.04,
// every TORCH_CHECK of ours that streamed a number segfaulted, as it did on the H200 host. The
// text is TORCH_CHECK's for the argument types used here; chars are refused (they would print
// as numbers) and a message is required.
namespace detail {
inline void put(std::string& s, const char* v) { s += v; }
inline void put(std::string& s, const std::string& v) { s += v; }
template <typename I, std::enable_if_t<std::is_integral<I>::value, int> = 0>
inline void put(std::string& s, I v) {
  static_assert(!std::is_same<I, char>::value && !std::is_same<I, signed char>::value &&
                    !std::is_same<I, unsigned char>::value,
                "TSL_CHECK prints integers; pass a string for a character");
  s += std::to_string(v);
}
inline void put(std::string& s, double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);  // ostream's default: %g, 6 significant digits
  s += buf;
}
inline void put(std::string& s, float v) { put(s, static_cast<double>(v)); }
inline void put(std::string& s, c10::IntArrayRef v) {
  s += '[';
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(v[i]);
  }
  s += ']';
}
inline void put(std::string& s, at::ScalarType t) { s += c10::toString(t); }

template <typename... Parts>
std::string message(const Parts&... parts) {
  static_assert(sizeof...(Parts) > 0, "TSL_CHECK needs a message that names the argument");
  std::string s;
  (put(s, parts), ...);
  return s;
}
}  // namespace detail

#define TSL_CHECK(cond, ...)                                                         \
  do {                                                                               \
    if (C10_UNLIKELY(!(cond))) {                                                     \
      ::c10::detail::torchCheckFail(__func__, __FILE__, static_cast<uint32_t>(__LINE__), \
                                    ::tsloss::detail::message(__VA_ARGS__));         \
    }                                                                                \
  } while (0)

inline void check_points_or_distances(const at::Tensor& x, bool distances) {
  TSL_CHECK(x.dim() == 3,
              "vr_persistence: x must be ", distances ? "(B, N, N) distances" : "(B, N, D) points",
              " at the op level, got shape ", x.sizes());
  TSL_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "vr_persistence: x must be float32 or float64, got ", x.scalar_type());
  TSL_CHECK(x.size(1) <= tsl::kMaxPoints, "vr_persistence: N = ", x.size(1),
              " points exceeds the supported maximum of ", tsl::kMaxPoints);
  if (distances) {
    TSL_CHECK(x.size(1) == x.size(2), "vr_persistence: a distance matrix must be square, got ",
                x.sizes());
  } else {
    TSL_CHECK(x.size(2) >= 1 || x.size(1) <= 1, "vr_persistence: points need D >= 1, got ",
                x.sizes());
  }
}

inline void check_max_h1(int64_t max_h1) {
  TSL_CHECK(max_h1 >= 0, "vr_persistence: max_h1 must be >= 0, got ", max_h1);
}

// A capacity beyond the number of edges can never fill, and one large enough to exhaust memory
// would fail in the allocator (or, with overcommit, be killed while padding it): refuse it while
// the message can still name the argument. Small surplus capacity stays legal.
inline void check_h1_capacity(int64_t max_h1, int64_t B, int64_t N, int64_t value_bytes) {
  const int64_t edges = N * (N - 1) / 2;
  const double bytes = double(B) * double(max_h1) * double(2 * value_bytes + 4 * 8);
  TSL_CHECK(max_h1 <= edges || bytes <= double(1ull << 30), "vr_persistence: max_h1 = ",
              max_h1, " asks for ", bytes / double(1ull << 30), " GiB of H1 outputs, but a ",
              "cloud of ", N, " points has at most ", edges, " H1 bars; pass max_h1 <= ",
              edges);
}

// vr_persistence's six outputs, uninitialised, for B clouds of N points and H1 capacity K:
// h0 (B, N-1, 2) and h1 (B, K, 2) of the input's dtype, h0_edges (B, N-1, 2), h1_edges
// (B, K, 4) and h1_count (B,) int64, truncated (B,) bool. Every backend's kernel fills them.
using Diagrams6 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                             at::Tensor>;
inline Diagrams6 empty_diagrams(const at::TensorOptions& opts, int64_t B, int64_t N, int64_t K) {
  const int64_t H0 = N > 0 ? N - 1 : 0;
  const auto iopts = opts.dtype(at::kLong);
  return {at::empty({B, H0, 2}, opts), at::empty({B, H0, 2}, iopts),
          at::empty({B, K, 2}, opts),  at::empty({B, K, 4}, iopts),
          at::empty({B}, iopts),       at::empty({B}, opts.dtype(at::kBool))};
}

}  // namespace tsloss
