// Torch glue shared by the CUDA ops (vr_persistence_cuda.cpp, tsloss_cuda.cpp): error checks of
// the launchers and the environment settings both read the same way.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "../checks.h"
#include "kernels.h"

namespace tsloss {
namespace cuda_glue {

inline void check_cuda(cudaError_t err, const char* what) {
  TSL_CHECK(err == cudaSuccess, what, " failed: ", cudaGetErrorString(err));
}

// A positive integer setting from the environment: digits only, 1..most; unset or empty:
// fallback; anything else an error naming it. atoll read "1e6" as 1 (every cloud overflowed
// after the error message said to raise the setting), "-5" or "abc" as unset, and 20 digits
// as LLONG_MAX, whose byte counts wrapped.
inline int64_t env_int(const char* name, int64_t fallback, int64_t most) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  uint64_t parsed = 0;
  TSL_CHECK(tsl::parse_count(v, uint64_t(most), &parsed) && parsed >= 1, name,
            " must be a whole number from 1 to ", most, ", got '", v, "'");
  return static_cast<int64_t>(parsed);
}

// The H1 capacities for clouds of n points, with the TSLOSS_CUDA_H1_* overrides (entries; one
// array of a cloud holds at most 2^31 - 1: positions are 32-bit on the device).
inline tsl::cuda::H1Capacity h1_capacity(int64_t n) {
  constexpr int64_t kMost = (int64_t(1) << 31) - 1;
  tsl::cuda::H1Capacity c = tsl::cuda::default_h1_capacity(n);
  c.heap = env_int("TSLOSS_CUDA_H1_HEAP", c.heap, kMost);
  c.columns = env_int("TSLOSS_CUDA_H1_COLUMNS", c.columns, kMost);
  c.arena = env_int("TSLOSS_CUDA_H1_ARENA", c.arena, kMost);
  return c;
}

// How the engine runs, read from the environment at every call so that both ops switch together
// (tools/gpu_check.sh runs the CUDA tests each way). By default the warp-cooperative engine: the
// one-block-per-cloud topology kernel builds the tree and the H1 columns (TSLOSS_CUDA_TOPOLOGY=
// block) and one warp per cloud reduces H1 (TSLOSS_CUDA_REDUCE=warp); on the H200 it gave the
// same diagrams as the global passes (=global) and the one-thread reduction (=thread) in every
// CUDA test and was faster at every size measured (benchmarks/results/h200-2026-12-04).
// TSLOSS_CUDA_REDUCE_CLOUDS_PER_WARP (1..32, 0 automatic) tunes the one-thread reduction's mapping.
// TSLOSS_CUDA_REDUCE_WARPS (1 by default, 2..16, 0 automatic) gives the warp reduction that many
// warps per cloud, a block committing columns in order (core/h1_reduce_block.h): for batches
// too small to fill the GPU. Emulated bit for bit, not yet timed on a GPU: hence not the default.
// TSLOSS_CUDA_DISTANCE_SLICES (1 by default, 0 automatic, 2..64) splits each distance tile's
// coordinates over that many blocks (float32 points, batches too small to fill the GPU:
// tsl::cuda::distance_slice_workspace_bytes); the same bits, and not the default for the same
// reason.
struct EngineSettings {
  bool block_topology;
  bool warp_reduction;
  int clouds_per_warp;
  int reduce_warps;
  int distance_slices;
};

// Whether the setting `name` picks `preferred` (also when unset) over `other`; anything else is
// refused, since a misspelt switch would otherwise measure the engine it meant to avoid.
inline bool env_choice(const char* name, const char* preferred, const char* other) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0' || std::strcmp(v, preferred) == 0) return true;
  TSL_CHECK(std::strcmp(v, other) == 0, name, " must be ", preferred, " (the default) or ", other,
            ", got '", v, "'");
  return false;
}

// A count setting where 0 means automatic: digits only, 0..most; unset or empty: fallback.
// Not env_int, which refuses 0.
inline int env_count(const char* name, int most, int fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  uint64_t parsed = 0;
  TSL_CHECK(tsl::parse_count(v, uint64_t(most), &parsed), name, " must be 0 (automatic) or 1..",
            most, ", got '", v, "'");
  return static_cast<int>(parsed);
}

inline EngineSettings engine_settings() {
  return EngineSettings{env_choice("TSLOSS_CUDA_TOPOLOGY", "block", "global"),
                        env_choice("TSLOSS_CUDA_REDUCE", "warp", "thread"),
                        env_count("TSLOSS_CUDA_REDUCE_CLOUDS_PER_WARP", 32, 0),
                        env_count("TSLOSS_CUDA_REDUCE_WARPS", 16, 1),
                        env_count("TSLOSS_CUDA_DISTANCE_SLICES", 64, 1)};
}

// The distance kernel's slice workspace for one launch of B clouds of x's dtype, undefined where
// that launch does not split (tsl::cuda::distance_slice_workspace_bytes). Its bytes are a
// tensor's numel (kByte).
inline at::Tensor distance_slice_workspace(const EngineSettings& e, int64_t B, int64_t N,
                                           int64_t D, const at::Tensor& x) {
  const size_t bytes = tsl::cuda::distance_slice_workspace_bytes(B, N, D, x.element_size(),
                                                                 e.distance_slices);
  if (bytes == 0) return at::Tensor();
  return at::empty({static_cast<int64_t>(bytes)}, x.options().dtype(at::kByte));
}
inline void* data_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }
inline size_t bytes_or_zero(const at::Tensor& t) {
  return t.defined() ? static_cast<size_t>(t.numel()) : 0;
}

// Bytes of engine workspace one call may allocate: TSLOSS_CUDA_WORKSPACE_MB, else an eighth of
// the current device's memory (at least 2 GB). A batch whose workspace exceeds it runs as several
// launches. A fixed 2 GB split (N, D, B) = (256, 768, 1024), 2.4 MB per cloud, in two on an
// H200; its eighth, 17 GB, keeps that and any batch of up to ~7000 such clouds in one launch.
inline size_t workspace_budget() {
  const size_t total = at::cuda::getCurrentDeviceProperties()->totalGlobalMem;
  const size_t fallback = std::max<size_t>(size_t(2048) << 20, total / 8);
  const int64_t mb = env_int("TSLOSS_CUDA_WORKSPACE_MB", 0, int64_t(1) << 30);  // 1 PB
  return mb > 0 ? static_cast<size_t>(mb) << 20 : fallback;
}

// The engine's workspace for `clouds` clouds per launch, or, when the device has too little
// memory for it, an error that names the settings sizing it rather than torch's bare message.
inline at::Tensor engine_workspace(size_t bytes, const at::TensorOptions& options, const char* op,
                                   int64_t clouds, size_t per_cloud) {
  try {
    return at::empty({static_cast<int64_t>(bytes)}, options.dtype(at::kByte));
  } catch (const c10::OutOfMemoryError&) {
    TSL_CHECK(false, op, ": out of GPU memory for the engine's workspace (", clouds,
              " clouds per launch, ", per_cloud >> 10, " KB each): lower TSLOSS_CUDA_WORKSPACE_MB "
              "(clouds per launch) or the TSLOSS_CUDA_H1_HEAP / _ARENA / _COLUMNS capacities");
  }
  return at::Tensor();
}

// How a batch of B clouds runs through the engine: `chunk` clouds per launch, bounded by the
// sort's 32-bit offsets and by the workspace budget, so that a large batch runs as a few
// launches instead of one giant allocation, and the workspace of one launch. `extra_per_cloud`
// is other per-cloud memory of a launch that the budget covers (vr_persistence's distances).
struct EnginePlan {
  tsl::cuda::H1Capacity cap;
  int64_t chunk;
  size_t ws_bytes;
  at::Tensor workspace;
};
inline EnginePlan engine_plan(const EngineSettings& engine, int64_t B, int64_t N, int dim,
                              const at::TensorOptions& opts, size_t extra_per_cloud,
                              const char* op) {
  const tsl::cuda::H1Capacity cap = h1_capacity(N);
  const size_t elem = opts.dtype().itemsize();
  // Per cloud as the scalar reduction's slices: the warp reduction's pool is their sum (or a
  // floor, a constant the budget does not divide).
  const size_t per_cloud =
      tsl::cuda::vr_workspace_bytes(1, N, dim, elem, cap, engine.block_topology) +
      extra_per_cloud;
  int64_t chunk = std::min<int64_t>(B, tsl::cuda::vr_max_clouds_per_call(N));
  chunk = std::max<int64_t>(
      1, std::min<int64_t>(chunk, static_cast<int64_t>(workspace_budget() / per_cloud)));
  const size_t ws_bytes = tsl::cuda::vr_workspace_bytes(chunk, N, dim, elem, cap,
                                                        engine.block_topology,
                                                        engine.warp_reduction);
  return {cap, chunk, ws_bytes, engine_workspace(ws_bytes, opts, op, chunk, per_cloud)};
}

// The engine on clouds b0 .. b0 + nb of a batch whose distances `dist` (nb, N, N) holds, into
// the diagram outputs of the whole batch (empty_diagrams' shapes and order; `truncated` may be
// any (B,) bool tensor).
template <typename T>
void launch_persistence(const T* dist, int64_t b0, int64_t nb, int64_t N, int dim, int64_t K,
                        const at::Tensor& h0, const at::Tensor& h0_edges, const at::Tensor& h1,
                        const at::Tensor& h1_edges, const at::Tensor& h1_count,
                        const at::Tensor& truncated, const EnginePlan& plan,
                        const EngineSettings& engine, cudaStream_t stream, const char* what) {
  const int64_t H0 = N > 0 ? N - 1 : 0;
  check_cuda(tsl::cuda::launch_vr_persistence<T>(
                 dist, nb, N, dim, K, h0.data_ptr<T>() + b0 * H0 * 2,
                 h0_edges.data_ptr<int64_t>() + b0 * H0 * 2, h1.data_ptr<T>() + b0 * K * 2,
                 h1_edges.data_ptr<int64_t>() + b0 * K * 4, h1_count.data_ptr<int64_t>() + b0,
                 truncated.data_ptr<bool>() + b0, plan.workspace.data_ptr(), plan.ws_bytes,
                 plan.cap, engine.clouds_per_warp, stream, engine.block_topology,
                 engine.warp_reduction, engine.reduce_warps),
             what);
}

}  // namespace cuda_glue
}  // namespace tsloss
