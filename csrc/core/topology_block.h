// Per-cloud topology, one block per cloud, written once on the warp contract (warp.h): the
// enclosing radius, H0 by Prim, the columns of the H1 reduction (edges below the radius that are
// neither tree edges nor facets of apparent pairs) in reverse filtration order, and the H0 bars
// in filtration order. It replaces the GPU's global flag pass, segmented sort and column-building
// pass, and gives exactly what the scalar engine gives (prim_mst, collect_h1_columns, the H0
// sort): the native tests compare them bit for bit through the host emulation.
#pragma once

#include "apparent_pairs.h"
#include "h0_mst.h"
#include "h1_reduce.h"
#include "index32.h"
#include "warp.h"

namespace tsl {

// Words of the block's ballots between two barriers of the H1 column pass: the warp words, one
// at least for each of a block's up to 32 warps.
constexpr int kFlagWords = 32;
static_assert(kFlagWords >= 32, "every warp of a 1,024-thread block needs a warp word");

// Warps of the topology block for n points: enough lanes for a row, at most 8 warps (256
// threads) so that several clouds share an SM. The CUDA launcher and the emulation both take it.
TSL_HD int topology_warps(index_t n) {
  const index_t w = (n + warp::kLanes - 1) / warp::kLanes;
  return int(w < 1 ? 1 : (w > 8 ? 8 : w));
}

// Memory of one cloud's topology pass. The per-vertex Prim state and the warp words are the
// block's shared memory on the device where they fit (topology_shared_bytes), else a slice of
// global scratch; the outputs are global. All sizes are fixed by n alone.
template <typename T>
struct TopologyCloud {
  DistanceMatrix<T> d;  // symmetric, zero diagonal
  bool h1;              // compute the H1 columns (maxdim >= 1 and n >= 3)
  // Prim's state per vertex: the best connection to the tree as a packed key, its tree end,
  // whether the vertex has joined.
  uint64_t* key_hi;
  uint32_t* key_lo;
  int32_t* parent;
  uint8_t* in_tree;
  uint32_t* warp_words;  // kFlagWords words: the H1 column pass's ballots
  T* warp_values;        // one value per warp
  MstEdge<T>* mst;       // n - 1 edges in Prim order, sorted in place afterwards
  // outputs
  T* h0;                 // (n-1, 2): (0, death), by mst_edge_before
  int64_t* h0_edges;     // (n-1, 2): u < v
  int64_t* best_parent;  // (n,): Prim parent, -1 for the root; may be null
  T* threshold;          // the enclosing radius
  H1Column<T>* columns;  // up to n(n-1)/2, by column_before
  int32_t* num_columns;
};

// Shared-memory bytes of TopologyCloud's per-vertex state, MST and warp words for n points.
TSL_HD int64_t topology_state_bytes(int64_t n, int64_t value_size, int64_t edge_size) {
  const int64_t per_vertex = 8 + 4 + 4 + 1;
  int64_t bytes = per_vertex * n;
  bytes = (bytes + 7) / 8 * 8 + edge_size * n;
  return bytes + 4 * kFlagWords + value_size * 32;
}

// Work of one cloud's pass, as the emulation counts it.
struct TopologyStats {
  int64_t prim_steps = 0;
  int64_t flag_chunks = 0;   // spans of edges tested between two barriers
  int64_t columns = 0;
  int64_t sort_stages = 0;   // compare-exchange rounds of the two sorts, one barrier each
  int64_t scan_steps = 0;    // third vertices visited by the apparent-pair tests, all lanes
  int64_t scan_path = 0;     // per span, the most rounds of distance reads a warp made: over
                             // its sub-chunks, the most any of its lanes made (a block of
                             // loads is one round): the chain the span waits on
};

// What one apparent-pair test read: third vertices, and rounds of independent loads.
struct ScanCount {
  int64_t reads = 0, rounds = 0;
};

namespace topology_detail {

// Vertices, edge indices (< 2^24) and distance offsets (< 2^24) of the pass are 32-bit
// (index32.h): every 64-bit integer operation is two or more instructions on the device.
using index32::vertex_t;
using index32::Dist32;
using index32::edge_index32;
using index32::edge_vertices32;

TSL_HD uint32_t tie_key(uint32_t edge) { return ~edge; }  // larger index comes first

// The lane holding the least (hi, lo) key. Keys are unique among lanes that hold a vertex, and
// lanes without one hold all ones. For float the key packs into one 64-bit word: one reduction.
template <typename T, class W>
TSL_HD int argmin_lane(W& w, const typename W::template Var<uint64_t>& hi,
                       const typename W::template Var<uint32_t>& lo) {
  typename W::template Var<bool> is_min;
  if constexpr (sizeof(T) == 4) {
    typename W::template Var<uint64_t> packed;
    w.each([&](int l) { packed[l] = (hi[l] << 32) | lo[l]; });
    const uint64_t m = w.min(packed);
    w.each([&](int l) { is_min[l] = packed[l] == m; });
  } else {
    const uint64_t mh = w.min(hi);
    typename W::template Var<uint32_t> lo_at;
    w.each([&](int l) { lo_at[l] = hi[l] == mh ? lo[l] : ~0u; });
    const uint32_t ml = w.min(lo_at);
    w.each([&](int l) { is_min[l] = hi[l] == mh && lo[l] == ml; });
  }
  return warp::lowest_bit(w.ballot(is_min));
}

// Whether the edge {i > j} of length de is the facet of an apparent pair (in_apparent_pair's
// answer), reading d(k, j) rather than d(j, k): across a warp j runs over consecutive values,
// so the reads of row k are coalesced. The largest k within de of both ends gives the earliest
// cofacet. The third vertices go a block of kBlock at a time from the top, as a mask built
// without branches, then its highest bit: the k a vertex-by-vertex scan with early exit finds,
// but with a block's loads independent. That scan made each lane a chain of dependent reads
// (the next k's loads waited on this k's branch), and the block waited at every chunk's barriers
// for its longest lane: the chain per cloud (`test_warp --counters`, "scanpath": per chunk, the
// most rounds of reads of any lane) went from 720 to 34 rounds at N = 64 and from 31,252 to
// 1,153 at N = 256; the reading of the H200's 0.27 ms for one N = 64 cloud and 27.5 ms for
// 1024 of N = 256 (benchmarks/README.md). The tests stay
// (d <= de) per read, so a NaN distance never qualifies, as before.
// `visited` (host statistics only; null on the device) counts what the test read.
template <typename T>
TSL_HD bool apparent_facet_by_columns(const Dist32<T>& d, vertex_t i, vertex_t j, T de,
                                      ScanCount* visited) {
  constexpr vertex_t kB = vertex_t(kBlock);
  for (vertex_t hi = vertex_t(d.n); hi > 0; hi -= kB) {
    const vertex_t lo = hi > kB ? hi - kB : 0;
    uint32_t m = 0;
    for (vertex_t t = 0; t < hi - lo; ++t) {
      const vertex_t k = lo + t;
      m |= uint32_t((d(i, k) <= de) & (d(k, j) <= de)) << t;
    }
    if (i >= lo && i < hi) m &= ~(uint32_t(1) << (i - lo));
    if (j >= lo && j < hi) m &= ~(uint32_t(1) << (j - lo));
    if (visited) {
      visited->reads += hi - lo;
      ++visited->rounds;
    }
    if (m) {
      const vertex_t k = lo + highest_bit(m);
      return is_latest_facet(i, j, k, de, d(i, k), d(k, j));
    }
  }
  return false;
}

template <typename T>
TSL_HD bool is_column(const Dist32<T>& d, const int32_t* parent, T threshold, uint32_t e,
                      vertex_t* i, vertex_t* j, T* de, ScanCount* visited) {
  edge_vertices32(e, vertex_t(d.n), i, j);
  *de = d(*i, *j);
  if (!(*de <= threshold)) return false;  // a NaN radius (or length) makes no column
  if (parent[*i] == *j || parent[*j] == *i) return false;
  return !apparent_facet_by_columns(d, *i, *j, *de, visited);
}

}  // namespace topology_detail

// Sorts x[0, count) (a pointer, or any indexable such as a Spill) by less(a, b) with the whole
// block: a bitonic network whose every
// compare-exchange puts the lesser element first (the first round of each merge pairs mirrored
// positions), so positions past `count` act as +infinity and are never touched. `less` must be
// a strict total order: then the result is the one sorted sequence, whatever the schedule.
// Index is the type of positions: index_t for any count, uint32_t (block_sort_as) where count
// is below 2^31 (the topology pass's columns and tree edges, fewer than 2^24).
template <typename Index, class Block, class Array, class Less>
TSL_HD int64_t block_sort_as(Block& blk, const Array& x, Index count, const Less& less) {
  int64_t stages = 0;
  Index p2 = 1;
  while (p2 < count) p2 <<= 1;
  for (Index k = 2; k <= p2; k <<= 1) {
    for (Index j = k >> 1; j > 0; j >>= 1) {
      blk.each_warp([&](typename Block::Warp& w, int warp_id) {
        w.each([&](int lane) {
          for (Index t = Index(warp_id) * warp::kLanes + lane; t < p2 / 2;
               t += Index(blk.threads())) {
            // (t / j) * 2j + t % j, j a power of two: by masks, not a 64-bit division.
            const Index a = ((t & ~(j - 1)) << 1) + (t & (j - 1));
            const Index b = j == (k >> 1) ? (a ^ (k - 1)) : a + j;
            if (b < count && less(x[b], x[a])) {
              const auto s = x[a];
              x[a] = x[b];
              x[b] = s;
            }
          }
        });
      });
      blk.sync();
      ++stages;
    }
  }
  return stages;
}

template <class Block, class Array, class Less>
TSL_HD int64_t block_sort(Block& blk, const Array& x, index_t count, const Less& less) {
  return block_sort_as<index_t>(blk, x, count, less);
}

// column_before and mst_edge_before with 32-bit edge indices (index32.h): the same order for
// vertices below kMaxPoints.
template <typename T>
struct ColumnOrder {
  TSL_HD bool operator()(const H1Column<T>& a, const H1Column<T>& b) const {
    using index32::vertex_t;
    return filtration_less(b.diameter, index32::edge_index32(vertex_t(b.i), vertex_t(b.j)),
                           a.diameter, index32::edge_index32(vertex_t(a.i), vertex_t(a.j)));
  }
};
template <typename T>
struct MstOrder {
  TSL_HD bool operator()(const MstEdge<T>& a, const MstEdge<T>& b) const {
    using index32::vertex_t;
    return mst_edge_order(a.diameter, index32::edge_index32(vertex_t(a.u), vertex_t(a.v)),
                          b.diameter, index32::edge_index32(vertex_t(b.u), vertex_t(b.v)));
  }
};

// The whole pass for one cloud. Block-uniform code between phases runs in every thread on the
// device (each reads the same shared words after a barrier) and once on the host.
template <class Block, typename T>
TSL_HD void cloud_topology(Block& blk, const TopologyCloud<T>& c, TopologyStats* stats = nullptr) {
  using W = typename Block::Warp;
  using namespace topology_detail;
  const index_t n = c.d.n;
  if (n <= 0) return;
  const vertex_t n32 = vertex_t(n);  // n <= kMaxPoints
  const Dist32<T> d32(c.d);
  const int nthreads = blk.threads();

  // ---- enclosing radius: column maxima (coalesced; equal to row maxima), then their minimum.
  // A non-finite distance (CUDA does not check its input on the host; NaN, or +-Inf from an
  // overflow or the user's matrix) makes the radius NaN, and a NaN radius makes no H1 column:
  // the reductions never see an order that NaN breaks (the scalar one grew its heap without end
  // on such a matrix), and the cloud is reported invalid (h1_count = kInvalidInputCount).
  blk.each_warp([&](W& w, int warp_id) {
    typename W::template Var<T> least;
    typename W::template Var<bool> nan;
    w.each([&](int lane) {
      T r = T(INFINITY);  // a lane without a vertex never wins
      bool seen = false;
      for (vertex_t v = warp_id * warp::kLanes + lane; v < n32; v += nthreads) {
        T m = T(0);
        for (vertex_t u = 0; u < n32; ++u) {
          const T x = d32(u, v);
          m = x > m ? x : m;
          seen |= !is_finite(x);
        }
        r = m < r ? m : r;
      }
      least[lane] = r;
      nan[lane] = seen;
    });
    const T r = w.any(nan) ? T(NAN) : w.min(least);
    w.each([&](int lane) {
      if (lane == 0) c.warp_values[warp_id] = r;
    });
  });
  blk.sync();
  T radius = c.warp_values[0];
  for (int k = 1; k < blk.warps(); ++k) {
    const T r = c.warp_values[k];
    radius = (r < radius || r != r) ? r : radius;
  }

  // ---- Prim in the first warp. Lane l owns the vertices v = l (mod 32) and all their state, so
  // no lane reads a word another lane writes within a step. Each step relaxes the owned
  // vertices against the newest tree vertex (its row, coalesced) and proposes the best of them.
  blk.first_warp([&](W& w) {
    w.each([&](int lane) {
      if (lane == 0) *c.threshold = radius;
      for (vertex_t v = lane; v < n32; v += warp::kLanes) {
        c.key_hi[v] = ~uint64_t(0);
        c.key_lo[v] = ~0u;
        c.parent[v] = -1;
        c.in_tree[v] = v == 0;
      }
    });
    vertex_t current = 0;
    for (vertex_t step = 0; step + 1 < n32; ++step) {
      typename W::template Var<uint64_t> hi;
      typename W::template Var<uint32_t> lo;
      typename W::template Var<int32_t> vertex;
      w.each([&](int lane) {
        uint64_t bh = ~uint64_t(0);
        uint32_t bl = ~0u;
        int32_t bv = -1;
        for (vertex_t v = lane; v < n32; v += warp::kLanes) {
          // Written before the in-tree test so that the row read need not wait for it; ptxas
          // (nvcc 13, sm_90) still issues the load after that branch, so this is the intent only.
          const T x = d32(current, v);
          if (c.in_tree[v]) continue;
          const uint64_t h = warp::order_bits(x);
          const uint32_t l = tie_key(edge_index32(current, v));
          if (h < c.key_hi[v] || (h == c.key_hi[v] && l < c.key_lo[v])) {
            c.key_hi[v] = h;
            c.key_lo[v] = l;
            c.parent[v] = current;
          }
          if (c.key_hi[v] < bh || (c.key_hi[v] == bh && c.key_lo[v] < bl)) {
            bh = c.key_hi[v];
            bl = c.key_lo[v];
            bv = v;
          }
        }
        hi[lane] = bh;
        lo[lane] = bl;
        vertex[lane] = bv;
      });
      const vertex_t next = w.shfl(vertex, argmin_lane<T>(w, hi, lo));
      w.each([&](int lane) {
        if (int(uint32_t(next) % warp::kLanes) != lane) return;  // the owner records the edge
        c.in_tree[next] = 1;
        const vertex_t p = c.parent[next];
        // Vertices widen through uint32_t: non-negative, so their high words are known zeros.
        c.mst[step] = MstEdge<T>{d32(p, next), index_t(uint32_t(p < next ? p : next)),
                                 index_t(uint32_t(p < next ? next : p))};
      });
      current = next;
    }
    if (stats) stats->prim_steps += n - 1;
  });
  blk.sync();

  if (c.best_parent) {
    blk.each_warp([&](W& w, int warp_id) {
      w.each([&](int lane) {
        for (vertex_t v = warp_id * warp::kLanes + lane; v < n32; v += nthreads)
          c.best_parent[v] = c.parent[v];
      });
    });
  }

  // ---- H1 columns: every edge tested by its own lane, kept ones compacted in index order by
  // ballots and the counts of the words before them. The block's 32 warp words hold
  // kFlagWords / warps sub-chunks of a lane an edge per warp between two barriers: each warp
  // tests its sub-chunks in turn, waiting only for its own slowest lane in each, where one
  // sub-chunk per barrier made the whole block wait for its slowest lane at every 32 x warps
  // edges (N = 256: 128 chunks of 256 edges, two barriers each; now 32, with 8 warps).
  // Edge indices, spans and column counts are below C(kMaxPoints, 2) < 2^24: 32-bit.
  if (c.h1) {
    const uint32_t E = uint32_t(n32) * uint32_t(n32 - 1) / 2;
    const int warps = blk.warps();
    const int subs = kFlagWords / warps > 0 ? kFlagWords / warps : 1;
    const uint32_t span = uint32_t(subs) * uint32_t(nthreads);  // edges between two barriers
    uint32_t base = 0;
    for (uint32_t e0 = 0; e0 < E; e0 += span) {
      int64_t chunk_rounds = 0;  // host statistics only: the slowest warp's chain
      blk.each_warp([&](W& w, int warp_id) {
        int64_t warp_rounds = 0;
        for (int sub = 0; sub < subs; ++sub) {
          // Word q = sub * warps + warp_id holds edges e0 + 32 q + lane: words in edge order.
          const uint32_t q = uint32_t(sub * warps + warp_id);
          typename W::template Var<bool> keep;
          int64_t sub_rounds = 0;
          w.each([&](int lane) {
            const uint32_t e = e0 + q * warp::kLanes + uint32_t(lane);
            vertex_t i, j;
            T de;
            ScanCount scan;
            keep[lane] = e < E && is_column(d32, c.parent, radius, e, &i, &j, &de,
                                            stats ? &scan : nullptr);
            if (stats) {
              stats->scan_steps += scan.reads;
              sub_rounds = scan.rounds > sub_rounds ? scan.rounds : sub_rounds;
            }
          });
          const uint32_t m = w.ballot(keep);
          w.each([&](int lane) {
            if (lane == 0) c.warp_words[q] = m;
          });
          warp_rounds += sub_rounds;
        }
        chunk_rounds = warp_rounds > chunk_rounds ? warp_rounds : chunk_rounds;
      });
      blk.sync();
      blk.each_warp([&](W& w, int warp_id) {
        uint32_t offset = base;
        uint32_t counted = 0;  // words before `offset`'s
        for (int sub = 0; sub < subs; ++sub) {
          const uint32_t q = uint32_t(sub * warps + warp_id);
          for (; counted < q; ++counted) offset += warp::popcount(c.warp_words[counted]);
          const uint32_t m = c.warp_words[q];
          w.each([&](int lane) {
            if (!((m >> lane) & 1u)) return;
            const uint32_t e = e0 + q * warp::kLanes + uint32_t(lane);
            vertex_t i, j;
            edge_vertices32(e, n32, &i, &j);
            // Vertices widen through uint32_t: non-negative, their high words are known zeros.
            c.columns[offset + uint32_t(warp::popcount(m & warp::lanes_below(lane)))] =
                H1Column<T>{d32(i, j), index_t(uint32_t(i)), index_t(uint32_t(j))};
          });
        }
      });
      for (int q = 0; q < subs * warps; ++q) base += warp::popcount(c.warp_words[q]);
      // The warp words are reused by the next span, and the last span's columns are read by
      // the sort below.
      blk.sync();
      if (stats) {
        ++stats->flag_chunks;
        stats->scan_path += chunk_rounds;
      }
    }
    const int64_t s = block_sort_as<uint32_t>(blk, c.columns, base, ColumnOrder<T>());
    if (stats) {
      stats->sort_stages += s;
      stats->columns += base;
    }
    blk.each_warp([&](W& w, int warp_id) {
      w.each([&](int lane) {
        if (warp_id == 0 && lane == 0) *c.num_columns = int32_t(base);
      });
    });
  } else {
    blk.each_warp([&](W& w, int warp_id) {
      w.each([&](int lane) {
        if (warp_id == 0 && lane == 0) *c.num_columns = 0;
      });
    });
  }

  // ---- H0 bars in filtration order of their death edges
  const int64_t s = block_sort_as<uint32_t>(blk, c.mst, uint32_t(n32 - 1), MstOrder<T>());
  if (stats) stats->sort_stages += s;
  blk.each_warp([&](W& w, int warp_id) {
    w.each([&](int lane) {
      for (vertex_t r = warp_id * warp::kLanes + lane; r + 1 < n32; r += nthreads) {
        c.h0[2 * r] = T(0);
        c.h0[2 * r + 1] = c.mst[r].diameter;
        c.h0_edges[2 * r] = c.mst[r].u;
        c.h0_edges[2 * r + 1] = c.mst[r].v;
      }
    });
  });
}

}  // namespace tsl
