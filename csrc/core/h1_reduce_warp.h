// The H1 reduction of one cloud by one warp, written once on the warp contract (warp.h): the
// algorithm of reduce_h1 (h1_reduce.h), with data structures a warp can share.
//
// - The working coboundary is an unsorted tail and a stack of sorted runs. A column's cofacets
//   enter the tail 32 third vertices at a time (a ballot and the ranks below each lane place
//   them). A full tail (kSealAt entries) is sealed: sorted in filtration order by the warp,
//   equal pairs cancelled (Z/2), and pushed as the newest run; the last two runs merge (merge
//   path, one slice of the output per lane, into free space past the set, then cancelled back
//   into place) while the older one is at most twice the newer, so the runs' sizes fall by half
//   or more and there are fewer than 32 of them. Lane r holds run r's head and end.
// - The tail, read by every pivot query, is the set's first kSealAt positions: the part a
//   launcher puts in shared memory. The runs follow it.
// - The pivot is a warp argmin over a packed key (diameter bits, then the triangle index
//   reversed: filtration order) of the run heads (a run holds each triangle once) and a scan of
//   the tail (at most kSealAt entries). The copies are counted by the warp: an even count
//   cancels, an odd one leaves one copy. A pivot query costs O(1 + kSealAt / 32) warp steps
//   however large the set; before, the whole set was scanned on every query (a bare ring of
//   256 points: sets of up to 27 k entries, benchmarks/README.md's `--probe` table).
// - The pivot table is probed 32 slots at a time; the first hit or empty slot in probe order
//   decides, as a linear probe would.
// - Working V columns cancel their pairs when stored: sorted by the warp, runs of even length
//   dropped.
// Every array is a Spill: its first part where the launcher puts it (shared memory on the
// device), the rest in a second part (global memory), so the shared capacity is a speed
// setting, never a limit. The second parts come from a reserve that all clouds of a launch
// share (WarpPool): a full array takes one twice as large and copies itself over, so a
// tie-heavy cloud can use many times an average cloud's memory. Only the reserve can run out,
// and then the status says which array was full (see common.h's Status).
//
// The pairs equal reduce_h1's: the persistence pairing does not depend on how V is represented,
// and the native tests compare the two on every cloud they run.
#pragma once

#include <type_traits>

#include "apparent_pairs.h"
#include "h1_reduce.h"
#include "index32.h"
#include "topology_block.h"
#include "warp.h"

namespace tsl {

// A Spill's capacity, at most this (WarpReducer::grow and make_room hold it there), so that a
// position is indexed in 32 bits: in 64, each access cost the device two or more instructions
// per step. (v_start keeps arena positions as int32_t already.)
constexpr index_t kMaxSpillPositions = INT32_MAX;

template <typename X>
struct Spill {
  X* fast;
  index_t fast_capacity;
  X* slow;
  index_t slow_capacity;
  TSL_HD index_t capacity() const { return fast_capacity + slow_capacity; }
  TSL_HD X& operator[](index_t i) const {
    const int32_t at = int32_t(i), fast_end = int32_t(fast_capacity);
    return at < fast_end ? fast[at] : slow[at - fast_end];
  }
};

// Work and high-water marks of one cloud's reduction, as the emulation counts them.
struct WarpReduceStats {
  int64_t columns = 0, emergent = 0, pivot_queries = 0, additions = 0, widenings = 0,
          entries_pushed = 0, set_high = 0, vwork_high = 0, arena_used = 0, cancel_passes = 0,
          grown = 0, compactions = 0;
  // Widenings that missed the next cofacet level: above_'s least differed from a scan of V's
  // cofacets, or a band below the threshold took in no cofacet. Emulation only; test_warp
  // requires none.
  int64_t widening_misses = 0;
};

// Global memory that the warps of a launch take their arrays' second parts from: a bump
// allocation (reserve, which takes nothing when the request does not fit), never returned; a
// grown array's old part is left behind.
struct WarpPool {
  unsigned char* base = nullptr;  // null: no reserve, the arrays keep the parts they are given
  uint64_t bytes = 0;
  unsigned long long* used = nullptr;  // bytes handed out; zero before the launch
};

template <typename T>
struct WarpReduceMemory {
  Spill<Entry<T>> set;       // the working coboundary (index -1: cancelled)
  Spill<int32_t> vwork;      // the working V column, uncancelled
  Spill<int32_t> arena;      // stored V columns
  int64_t* pivot_keys;       // pivot triangle, -1 empty; pivot_capacity, a power of two
  int32_t* pivot_slots;
  index_t pivot_capacity;
  int32_t* v_start;          // per stored column
  int32_t* v_length;
  index_t slot_capacity;
  H1Pair<T>* pairs;
  index_t pair_capacity;
  WarpPool pool = {};
};

namespace warp_reduce_detail {

// Vertex indices on the per-step paths below are 32-bit (index32.h: vertex_t, Row32,
// cofacet_index32, edge_vertices32); only a triangle index needs 64 bits.
using index32::vertex_t;
using index32::Row32;
using index32::cofacet_index32;
using index32::edge_vertices32;

// Rounds of 32 third vertices whose distances the warp reads before it tests the first. Round
// by round, each round's two reads waited on the device for the previous round's test: one
// memory trip per 32 third vertices, from DRAM at (256, 768, 1024), where a cloud's 256 KB of
// distances leave the caches. A group of R rounds is one trip; R is a template parameter (a
// run-time count of rounds made ptxas spill 10x more), chosen from N by with_rounds so that small
// clouds read no rounds past their last vertex. Reads past it are clamped to it, never used.
constexpr int kMostRounds = 8;

// f(std::integral_constant<int, R>{}) with R = 1, 2, 4 or 8: the fewest rounds that cover n
// vertices up to 256, and groups of 8 rounds past that.
template <class F>
TSL_HD auto with_rounds(index_t n, F&& f) {
  if (n <= warp::kLanes) return f(std::integral_constant<int, 1>{});
  if (n <= 2 * warp::kLanes) return f(std::integral_constant<int, 2>{});
  if (n <= 4 * warp::kLanes) return f(std::integral_constant<int, 4>{});
  return f(std::integral_constant<int, kMostRounds>{});
}

// Rows i and j at the third vertices k0 + 32 r + lane, r < R, clamped into [0, n) (a clamped
// read is never used): a group's reads all issue before any is tested.
template <int R, typename T>
TSL_HD void read_rounds(const DistanceMatrix<T>& d, vertex_t i, vertex_t j, vertex_t k0, int lane,
                        T (&fi)[R], T (&fj)[R]) {
  const vertex_t n = vertex_t(d.n);
  const Row32<T> ri(d, i), rj(d, j);
  TSL_UNROLL
  for (int r = 0; r < R; ++r) {
    vertex_t k = k0 + warp::kLanes * r + lane;
    k = k < 0 ? 0 : (k < n ? k : n - 1);
    fi[r] = ri[k];
    fj[r] = rj[k];
  }
}

// The highest third vertex k of the edge {i > j} whose far sides are both within `limit`, as
// cofacet_index(i, j, k), or -1: k = lane (mod 32), rows i and j read at k (coalesced), from
// the top, so the first block with a hit gives its highest bit. Both reads of a k are tested
// with `&`, not `&&`: short-circuited, the PTX issued the second load only after the first had
// come back and been compared.
template <int R, class W, typename T>
TSL_HD index_t highest_within(W& w, const DistanceMatrix<T>& d, vertex_t i, vertex_t j, T limit) {
  for (vertex_t top = vertex_t(d.n); top > 0; top -= R * warp::kLanes) {
    typename W::template Var<bool> ok[R];
    w.each([&](int lane) {
      T fi[R], fj[R];  // round R - 1 - r of the group from top - 32 R is round r from the top
      read_rounds<R>(d, i, j, top - R * warp::kLanes, lane, fi, fj);
      TSL_UNROLL
      for (int r = 0; r < R; ++r) {
        const vertex_t k = top - warp::kLanes * (r + 1) + lane;
        ok[r][lane] = k >= 0 && k != i && k != j &&
                      ((fi[R - 1 - r] <= limit) & (fj[R - 1 - r] <= limit));
      }
    });
    TSL_UNROLL
    for (int r = 0; r < R; ++r) {
      const uint32_t m = w.ballot(ok[r]);
      if (m) return cofacet_index32(i, j, top - warp::kLanes * (r + 1) + highest_bit(m));
    }
  }
  return -1;
}

// Each lane's least far side max(d(i, k), d(j, k)) over its third vertices k = lane (mod 32),
// in rising k as before (the same comparisons in the same order).
template <int R, class W, typename T>
TSL_HD void least_far_side(W& w, const DistanceMatrix<T>& d, vertex_t i, vertex_t j,
                           typename W::template Var<T>& least) {
  const vertex_t n = vertex_t(d.n);
  w.each([&](int lane) {
    T b = T(INFINITY);
    for (vertex_t k0 = 0; k0 < n; k0 += R * warp::kLanes) {
      T fi[R], fj[R];
      read_rounds<R>(d, i, j, k0, lane, fi, fj);
      TSL_UNROLL
      for (int r = 0; r < R; ++r) {
        const vertex_t k = k0 + warp::kLanes * r + lane;
        if (k >= n || k == i || k == j) continue;
        const T a = fi[r] > fj[r] ? fi[r] : fj[r];
        b = a < b ? a : b;
      }
    }
    least[lane] = b;
  });
}

// Earliest cofacet of {i > j} (length de) up to the threshold, as earliest_cofacet, by the warp.
template <class W, typename T>
TSL_HD Entry<T> earliest_cofacet(W& w, const DistanceMatrix<T>& d, vertex_t i, vertex_t j, T de,
                                 T threshold) {
  if (de > threshold) return Entry<T>{T(0), -1};
  return with_rounds(d.n, [&](auto rounds) -> Entry<T> {
    constexpr int R = decltype(rounds)::value;
    const index_t within = highest_within<R>(w, d, i, j, de);
    if (within >= 0) return Entry<T>{de, within};
    typename W::template Var<T> least;
    least_far_side<R>(w, d, i, j, least);
    const T best = w.min(least);
    if (!(best <= threshold)) return Entry<T>{T(0), -1};
    // best > de here, so a cofacet attains it exactly where both far sides are within it.
    const index_t at = highest_within<R>(w, d, i, j, best);
    if (at >= 0) return Entry<T>{best, at};
    return Entry<T>{T(0), -1};  // unreachable: some k attains the least far side
  });
}

// apparent_facet by the warp.
template <class W, typename T>
TSL_HD Entry<T> apparent_facet(W& w, const DistanceMatrix<T>& d, Entry<T> t, T threshold) {
  const Entry<T> f = latest_facet(d, t.index);
  if (f.diameter == t.diameter) {
    vertex_t i, j;
    edge_vertices32(uint32_t(f.index), vertex_t(d.n), &i, &j);
    const Entry<T> back = earliest_cofacet(w, d, i, j, f.diameter, threshold);
    if (back.index == t.index) return f;
  }
  return Entry<T>{T(0), -1};
}

TSL_HD index_t pivot_hash(int64_t key, index_t capacity) {
  const uint64_t h = (uint64_t)key * 0x9E3779B97F4A7C15ull;
  return (index_t)(h >> 17) & (capacity - 1);
}

// The slot owning `key`, or -1; with `insert_slot` >= 0 the key is inserted instead (it must be
// absent). 32 consecutive slots per probe; the first hit or empty in probe order decides.
template <class W, typename T>
TSL_HD index_t probe(W& w, const WarpReduceMemory<T>& m, int64_t key, int32_t insert_slot) {
  const index_t mask = m.pivot_capacity - 1;
  for (index_t h = pivot_hash(key, m.pivot_capacity);; h = (h + warp::kLanes) & mask) {
    typename W::template Var<bool> hit, empty;
    w.each([&](int lane) {
      const int64_t k = m.pivot_keys[(h + lane) & mask];
      hit[lane] = k == key;
      empty[lane] = k < 0;
    });
    const uint32_t mh = w.ballot(hit), me = w.ballot(empty);
    if (!(mh | me)) continue;
    const int first = warp::lowest_bit(mh | me);
    const index_t at = (h + first) & mask;
    if (insert_slot < 0) return (mh >> first) & 1u ? m.pivot_slots[at] : -1;
    // Every lane read the table above. Under the warp contract only a barrier orders those
    // loads before lane 0's store (the ballot consumes them, so hardware likely orders them
    // anyway); test_races holds the code to the contract.
    w.sync();
    w.each([&](int lane) {
      if (lane != 0) return;
      m.pivot_keys[at] = key;
      m.pivot_slots[at] = insert_slot;
    });
    w.sync();
    return insert_slot;
  }
}

// A single warp seen as a block, for block_sort.
template <class W>
struct WarpBlock {
  using Warp = W;
  W& w;
  TSL_HD int threads() const { return warp::kLanes; }
  TSL_HD int warps() const { return 1; }
  template <class F>
  TSL_HD void each_warp(F&& f) {
    f(w, 0);
  }
  TSL_HD void sync() { w.sync(); }
};

struct IntLess {
  TSL_HD bool operator()(int32_t a, int32_t b) const { return a < b; }
};

// Filtration order (reduce_h1's pivot order) by the pivot query's own key, so that runs sort
// exactly as the argmin over their heads ranks (a total order on every bit pattern, NaN
// included); cancelled entries (index -1) after every live one.
template <typename T>
struct EntryBefore {
  TSL_HD bool operator()(const Entry<T>& a, const Entry<T>& b) const {
    if (a.index < 0) return false;
    if (b.index < 0) return true;
    const uint64_t ka = warp::order_bits(a.diameter), kb = warp::order_bits(b.diameter);
    return ka < kb || (ka == kb && a.index > b.index);
  }
};

// Positions [base, base + count) of a Spill, indexed from 0 (for block_sort).
template <typename X>
struct SpillRange {
  Spill<X> s;
  index_t base;
  TSL_HD X& operator[](index_t i) const { return s[base + i]; }
};

}  // namespace warp_reduce_detail

// Entries of each reduction array a warp keeps in shared memory on the device: the set's
// unsorted tail (every pivot query scans it; its sorted runs follow in global memory) and as
// many V edges of each kind. The device's launcher splits its arrays there, and the host
// emulation does by default, so that the tests run the device's split.
constexpr index_t kDeviceFastEntries = 256;

// One cloud's reduction by one warp, pairs as reduce_h1 reports them (the same set; their order
// is the reduction's, which the reporting sorts).
template <class W, typename T>
class WarpReducer {
 public:
  // The tail's capacity: every pivot query scans the tail, and a sealed run costs a sort of it
  // and its merges. Positions [0, kSealAt) of the set; a launcher keeps them in shared memory.
  static constexpr index_t kSealAt = 256;
  using vertex_t = warp_reduce_detail::vertex_t;

  TSL_HD WarpReducer(W& w, const DistanceMatrix<T>& d, T threshold, const WarpReduceMemory<T>& m,
                     WarpReduceStats* stats)
      : w_(w), d_(d), threshold_(threshold), m_(m), stats_(stats) {}

  TSL_HD Status run(const H1Column<T>* columns, index_t num_columns, index_t* num_pairs) {
    using namespace warp_reduce_detail;
    *num_pairs = 0;
    if (num_columns + 1 > m_.slot_capacity) return kPivotTableFull;
    // The tail and one run; a cloud without columns needs neither (TSLOSS_CUDA_H1_HEAP < 256
    // flagged every cloud).
    if (num_columns > 0 && make_room() != kOk) return kHeapFull;
    if (2 * (num_columns + 1) > m_.pivot_capacity) return kPivotTableFull;
    // The cloud's own table within its slice, as every engine sizes it: the same probes, and
    // only that much to clear (a device slice holds the launch's largest).
    const index_t own = pivot_table_capacity(num_columns);
    if (own < m_.pivot_capacity) m_.pivot_capacity = own;
    w_.each([&](int lane) {
      for (index_t s = lane; s < m_.pivot_capacity; s += warp::kLanes) m_.pivot_keys[s] = -1;
    });
    w_.sync();
    for (index_t c = 0; c < num_columns; ++c) {
      Status s = begin_column(columns[c]);
      if (s == kOk && stage_ == kAdvancing) s = advance();
      if (s == kOk) s = finish_column(num_pairs);
      if (s != kOk) return s;
    }
    return kOk;
  }

  // ---- One column in steps: run() takes them in turn; block_reduce (h1_reduce_block.h) gives
  // each warp of a block a column and commits them in column order.
  enum Stage : int32_t {
    kEmergent = 0,    // candidate: the emergent test's first cofacet; V = {the edge}, no set
    kCandidate = 1,   // candidate: pivot(), which the pivot table did not hold when found
    kZero = 2,        // the coboundary sums to zero up to the threshold: a class never dying
    kAdvancing = 3,   // the set holds the banded coboundary; reduce on
  };
  TSL_HD Stage stage() const { return stage_; }
  TSL_HD const Entry<T>& pivot() const { return pivot_; }

  // Starts `col`: the emergent test against the pivot table as it is (kEmergent), else its
  // banded coboundary (kAdvancing).
  TSL_HD Status begin_column(const H1Column<T>& col) {
    using namespace warp_reduce_detail;
    col_ = col;
    e_ = edge_index(col.i, col.j);
    if (stats_) ++stats_->columns;
    first_ = earliest_cofacet(w_, d_, vertex_t(col.i), vertex_t(col.j), col.diameter, threshold_);
    if (first_.index >= 0 && first_.diameter == col.diameter &&
        probe(w_, m_, first_.index, -1) < 0 &&
        apparent_facet(w_, d_, first_, threshold_).index < 0) {
      if (stats_) ++stats_->emergent;
      vsize_ = 0;
      pivot_ = first_;
      stage_ = kEmergent;
      return append_v(e_);
    }
    return build_set();
  }

  // The column's banded coboundary, V = {its edge}: kAdvancing (also an emergent candidate
  // that an earlier column of the block took).
  TSL_HD Status build_set() {
    step_ = (threshold_ - col_.diameter) / T(64);
    band_ = first_.index < 0 ? threshold_ : first_.diameter + step_;
    if (!(band_ < threshold_)) band_ = threshold_;
    reset_set();
    reset_above();
    vsize_ = 0;
    stage_ = kAdvancing;
    return add_edge(e_, band_);
  }

  // Reduces on to a candidate (kCandidate: a pivot that the table does not hold and that is no
  // apparent pair's) or to zero (kZero), or for `queries` pivot queries (then still
  // kAdvancing). From kCandidate too: a pivot found free that the table now holds is added, as
  // any owned pivot.
  TSL_HD Status advance(index_t queries = -1) {
    using namespace warp_reduce_detail;
    T band = band_;
    stage_ = kAdvancing;
    for (;; --queries) {
      if (queries == 0) return kOk;
      Entry<T> pivot;
      Status s = pivot_of_set(&pivot);
      if (s != kOk) return s;
      if (pivot.index < 0 && band < threshold_) {
        // Equal steps, as reduce_h1 (a band grown fourfold soon covers a tie-heavy column
        // whole, and every pivot query scans the set: an emulated 256-gon took 740 s), but at
        // least to the next diameter that a cofacet of V has above the band, which the pushes
        // gathered in above_. Equal steps alone widened again and again over diameters that
        // no cofacet has, a pivot query each: in a Gaussian cloud of 16 points in 768
        // dimensions, 57 of 82 pivot queries were widenings; now 15 of 40. reduce_h1 keeps
        // equal steps: its widenings cost it 7-10 % of its reduction (rdtsc, profile_core)
        // and an empty query next to nothing, where the warp's query is a chain of
        // collectives.
        const T next = w_.min(above_);
        T wider = band + step_;
        if (next > wider) wider = next;
        if (!(wider > band) || !(wider < threshold_)) wider = threshold_;
        if (stats_) ++stats_->widenings;
        const int64_t pushed = stats_ ? stats_->entries_pushed : 0;
        if (stats_) check_next_level(band, next);
        reset_above();
        const index_t edges = vsize_;
        for (index_t k = 0; k < edges; ++k) {
          s = push_coboundary(m_.vwork[k], band, wider);
          if (s != kOk) return s;
        }
        // Below the threshold, a widening reaches a cofacet: none pushed is a miss.
        if (stats_ && wider < threshold_ && stats_->entries_pushed == pushed)
          ++stats_->widening_misses;
        band = wider;
        band_ = band;
        continue;
      }
      if (pivot.index < 0) {
        stage_ = kZero;
        return kOk;
      }
      const index_t slot = probe(w_, m_, pivot.index, -1);
      if (slot >= 0) {
        if (stats_) ++stats_->additions;
        const index_t start = m_.v_start[slot], length = m_.v_length[slot];
        for (index_t k = 0; k < length; ++k) {
          s = add_edge(m_.arena[start + k], band);
          if (s != kOk) return s;
        }
        continue;
      }
      const Entry<T> f = apparent_facet(w_, d_, pivot, threshold_);
      if (f.index >= 0) {
        if (stats_) ++stats_->additions;
        s = add_edge(f.index, band);
        if (s != kOk) return s;
        continue;
      }
      pivot_ = pivot;
      stage_ = kCandidate;
      return kOk;
    }
  }

  // The pair of a finished column (kZero, or a candidate the table does not hold), as
  // reduce_h1 reports it (none of zero persistence).
  TSL_HD bool pair_of_column(H1Pair<T>* p) const {
    if (stage_ == kZero) {
      *p = H1Pair<T>{col_.diameter, T(INFINITY), e_, -1};
      return true;
    }
    if (!(pivot_.diameter > col_.diameter)) return false;
    *p = H1Pair<T>{col_.diameter, pivot_.diameter, e_, pivot_.index};
    return true;
  }

  // For block_reduce. A candidate's V with its pairs cancelled: sorted in place, and how many
  // entries stay (V is the same sum, so the column may still reduce on).
  TSL_HD index_t sort_and_count_v() {
    using namespace warp_reduce_detail;
    WarpBlock<W> blk{w_};
    const index_t n = vsize_;
    if (n > 1) block_sort(blk, m_.vwork, n, IntLess());
    index_t kept = 0;
    for (index_t r0 = 0; r0 < n; r0 += warp::kLanes) kept += warp::popcount(kept_lanes(r0, n));
    return kept;
  }
  // The V that sort_and_count_v counted, to the arena from `out` (room made by the commit).
  TSL_HD void write_v(index_t out) {
    const index_t n = vsize_;
    for (index_t r0 = 0; r0 < n; r0 += warp::kLanes) {
      const uint32_t mask = kept_lanes(r0, n);
      write_kept(r0, mask, out);
      out += warp::popcount(mask);
    }
    w_.sync();
  }
  TSL_HD WarpReduceMemory<T>& memory() { return m_; }
  // The set's room for its tail and one sealed run, which every reduction needs first.
  TSL_HD Status make_room() {
    if (m_.set.capacity() > kMaxSpillPositions || m_.vwork.capacity() > kMaxSpillPositions)
      return kHeapFull;
    if (m_.arena.capacity() > kMaxSpillPositions) return kReductionArenaFull;
    return m_.set.capacity() < 2 * kSealAt && !grow(m_.set, 2 * kSealAt, 0) ? kHeapFull : kOk;
  }
  // Grows the arena (a block's, held by the committing warp) to `need` entries, `used` kept.
  TSL_HD bool grow_arena(index_t need, index_t used) { return grow(m_.arena, need, used); }

 private:
  // run()'s end of a column: its pair, and a candidate's V stored as the pivot's owner.
  TSL_HD Status finish_column(index_t* num_pairs) {
    H1Pair<T> p;
    if (pair_of_column(&p)) {
      const Status s = add_pair(p, num_pairs);
      if (s != kOk) return s;
    }
    return stage_ == kZero ? kOk : store(pivot_);
  }

 private:
  // Gives array `a` a second part from the pool with room for at least `need` entries in all
  // (twice the old part, at least 1024 entries), its first `used` entries kept; false when
  // there is no pool or too little of it is left (the array is then unchanged).
  template <typename X>
  TSL_HD_COLD bool grow(Spill<X>& a, index_t need, index_t used) {
    if (m_.pool.base == nullptr) return false;
    index_t slow = 2 * a.slow_capacity;
    if (slow < need - a.fast_capacity) slow = need - a.fast_capacity;
    if (slow < 1024) slow = 1024;
    // Past kMaxSpillPositions the array is full, as when the pool is spent.
    if (slow > kMaxSpillPositions - a.fast_capacity) slow = kMaxSpillPositions - a.fast_capacity;
    if (a.fast_capacity + slow < need) return false;
    const uint64_t bytes = (uint64_t(slow) * sizeof(X) + 15) & ~uint64_t(15);
    // Taken only if it fits: a failed request leaves the pool to the other clouds.
    const uint64_t at = w_.reserve(m_.pool.used, bytes, m_.pool.bytes);
    if (at == ~uint64_t(0)) return false;
    X* fresh = reinterpret_cast<X*>(m_.pool.base + at);
    const X* old = a.slow;
    const index_t keep = used > a.fast_capacity ? used - a.fast_capacity : 0;
    w_.sync();  // the entries were written by other lanes
    w_.each([&](int lane) {
      for (index_t k = lane; k < keep; k += warp::kLanes) fresh[k] = old[k];
    });
    w_.sync();
    a.slow = fresh;
    a.slow_capacity = slow;
    if (stats_) ++stats_->grown;
    return true;
  }

  TSL_HD Status add_pair(const H1Pair<T>& p, index_t* num_pairs) {
    if (*num_pairs == m_.pair_capacity) return kPairsFull;
    const index_t at = (*num_pairs)++;
    w_.each([&](int lane) {
      if (lane == 0) m_.pairs[at] = p;
    });
    return kOk;
  }

  TSL_HD Status append_v(index_t edge) {
    if (vsize_ == m_.vwork.capacity() && !grow(m_.vwork, vsize_ + 1, vsize_)) return kHeapFull;
    const index_t at = vsize_++;
    w_.each([&](int lane) {
      if (lane == 0) m_.vwork[at] = int32_t(edge);
    });
    w_.sync();
    if (stats_ && vsize_ > stats_->vwork_high) stats_->vwork_high = vsize_;
    return kOk;
  }

  TSL_HD Status add_edge(index_t edge, T band) {
    const Status s = append_v(edge);
    return s != kOk ? s : push_coboundary(edge, T(-1), band);
  }

  // above_ in every lane: none yet.
  TSL_HD void reset_above() {
    w_.each([&](int lane) { above_[lane] = T(INFINITY); });
  }

  // Emulation only (stats_): `next`, the least diameter above `band` of a cofacet of V's edges
  // as above_ gathered it, against a scan of them all. Uniform code without collectives, so the
  // emulation's step counts stay the reduction's own.
  TSL_HD_COLD void check_next_level(T band, T next) {
    T least = T(INFINITY);
    for (index_t v = 0; v < vsize_; ++v) {
      index_t i, j;
      edge_vertices(m_.vwork[v], d_.n, &i, &j);
      const T de = d_(i, j);
      for (index_t k = 0; k < d_.n; ++k) {
        if (k == i || k == j) continue;
        const T diam = cofacet_diameter(d_, de, i, j, k);
        if (diam > band && diam < least) least = diam;
      }
    }
    if (!(least == next)) ++stats_->widening_misses;
  }

  // Whether third vertex k makes a cofacet of the edge {i, j} of diameter `diam` in
  // (lower, upper]; one past `upper` goes into `least`, the lane's part of above_ (both push
  // paths).
  TSL_HD bool in_band(vertex_t k, vertex_t i, vertex_t j, T diam, T lower, T upper, T& least) {
    if (k >= vertex_t(d_.n) || k == i || k == j) return false;
    if (diam > upper) {
      if (diam < least) least = diam;
      return false;
    }
    return diam > lower;
  }

  // The cofacets of `edge` of diameter in (lower, upper] into the set's tail; the least
  // diameter of the others above `upper` into above_. Scanned whole even for an edge longer
  // than `upper`, none of whose cofacets is pushed, so that above_ is exact: over the native
  // tests' 10,002 clouds no V edge was, and the warp steps were the same with an early return.
  TSL_HD Status push_coboundary(index_t edge, T lower, T upper) {
    using namespace warp_reduce_detail;
    vertex_t i, j;
    edge_vertices32(uint32_t(edge), vertex_t(d_.n), &i, &j);
    const T de = Row32<T>(d_, i)[j];

    return with_rounds(d_.n, [&](auto rounds) {
      return push_groups<decltype(rounds)::value>(i, j, de, lower, upper);
    });
  }

  // push_coboundary's cofacets R rounds of 32 third vertices at a time: every round's reads
  // first, then each round's ballot; the entries go to the tail in round order, as round by
  // round. A group that would fill the tail takes the round by round path, which seals between
  // rounds (out of line: no call in this loop, whose registers would be saved around it).
  template <int R>
  TSL_HD Status push_groups(vertex_t i, vertex_t j, T de, T lower, T upper) {
    using namespace warp_reduce_detail;
    const vertex_t n = vertex_t(d_.n);
    // above_ in a register through the loop (the reducer object is in local memory on the
    // device: see benchmarks/README.md), back in it around the out-of-line path and at the end.
    typename W::template Var<T> least = above_;
    for (vertex_t g0 = 0; g0 < n; g0 += R * warp::kLanes) {
      typename W::template Var<T> diam[R];
      w_.each([&](int lane) {
        T fi[R], fj[R];
        read_rounds<R>(d_, i, j, g0, lane, fi, fj);
        TSL_UNROLL
        for (int r = 0; r < R; ++r) {  // cofacet_diameter's expression
          const T m = fi[r] > fj[r] ? fi[r] : fj[r];
          diam[r][lane] = m > de ? m : de;
        }
      });
      uint32_t mask[R];
      index_t total = 0;
      TSL_UNROLL
      for (int r = 0; r < R; ++r) {
        typename W::template Var<bool> in;
        w_.each([&](int lane) {
          const vertex_t k = g0 + warp::kLanes * r + lane;
          in[lane] = in_band(k, i, j, diam[r][lane], lower, upper, least[lane]);
        });
        mask[r] = w_.ballot(in);
        total += warp::popcount(mask[r]);
      }
      if (total == 0) continue;
      // tail_ and the set's parts as locals through the group's stores: read from the object
      // (in local memory on the device), they were read again after each store to the set,
      // which may alias it as far as the compiler knows (three loads a round). Not held
      // through the whole loop, nor d_: that made ptxas spill in the double kernels.
      const index_t tail = tail_;
      if (tail + total > kSealAt) {
        above_ = least;
        const Status s = push_rounds(i, j, de, lower, upper, g0, g0 + R * warp::kLanes);
        if (s != kOk) return s;
        least = above_;
        continue;
      }
      const Spill<Entry<T>> set = m_.set;
      w_.each([&](int lane) {
        index_t at = tail;
        TSL_UNROLL
        for (int r = 0; r < R; ++r) {
          if ((mask[r] >> lane) & 1u)
            set[at + warp::popcount(mask[r] & warp::lanes_below(lane))] =
                Entry<T>{diam[r][lane], cofacet_index32(i, j, g0 + warp::kLanes * r + lane)};
          at += warp::popcount(mask[r]);
        }
      });
      tail_ = tail + total;
      if (stats_) {
        stats_->entries_pushed += total;
        if (tail_ > stats_->set_high) stats_->set_high = tail_;
      }
    }
    above_ = least;
    w_.sync();
    return kOk;
  }

  // push_groups' third vertices [g0, g1) round by round, sealing the tail where a round would
  // not fit (the distances read again: this runs about once per kSealAt pushed entries).
  TSL_HD_COLD Status push_rounds(vertex_t i, vertex_t j, T de, T lower, T upper, vertex_t g0,
                                 vertex_t g1) {
    using namespace warp_reduce_detail;
    const vertex_t n = vertex_t(d_.n);
    const Row32<T> ri(d_, i), rj(d_, j);
    for (vertex_t k0 = g0; k0 < n && k0 < g1; k0 += warp::kLanes) {
      typename W::template Var<bool> in;
      typename W::template Var<T> diam;
      w_.each([&](int lane) {
        const vertex_t k = k0 + lane;
        in[lane] = false;
        if (k >= n || k == i || k == j) return;
        const T a = ri[k], b = rj[k];  // cofacet_diameter's expression
        const T m = a > b ? a : b;
        diam[lane] = m > de ? m : de;
        in[lane] = in_band(k, i, j, diam[lane], lower, upper, above_[lane]);
      });
      const uint32_t mask = w_.ballot(in);
      if (!mask) continue;
      const index_t count = warp::popcount(mask);
      if (tail_ + count > kSealAt) {
        const Status s = seal_tail();
        if (s != kOk) return s;
      }
      w_.each([&](int lane) {
        if (!in[lane]) return;
        m_.set[tail_ + warp::popcount(mask & warp::lanes_below(lane))] =
            Entry<T>{diam[lane], cofacet_index32(i, j, k0 + lane)};
      });
      tail_ += count;
      if (stats_) {
        stats_->entries_pushed += count;
        if (tail_ > stats_->set_high) stats_->set_high = tail_;
      }
    }
    return kOk;
  }

  // The entries of [from, from + count) that keep(position) accepts, to `to` (<= from, or past
  // the range), in order; returns how many. A chunk's 32 entries are all read before any is
  // written, and a write never reaches a position a later chunk reads.
  template <class Keep>
  TSL_HD index_t compact_entries(index_t from, index_t count, index_t to, const Keep& keep_at) {
    // The entries were written by other lanes; ballots and shuffles order nothing in memory,
    // only a warp barrier does.
    w_.sync();
    index_t out = 0;
    for (index_t r0 = 0; r0 < count; r0 += warp::kLanes) {
      typename W::template Var<Entry<T>> x;
      typename W::template Var<bool> keep;
      w_.each([&](int lane) {
        const index_t p = r0 + lane;
        keep[lane] = p < count && keep_at(p);
        if (keep[lane]) x[lane] = m_.set[from + p];
      });
      const uint32_t mask = w_.ballot(keep);
      w_.sync();
      w_.each([&](int lane) {
        if (keep[lane]) m_.set[to + out + warp::popcount(mask & warp::lanes_below(lane))] = x[lane];
      });
      out += warp::popcount(mask);
      w_.sync();
    }
    return out;
  }

  // Z/2 over the sorted positions [from, from + count): the first entry of each run of equal
  // triangles of odd length, to `to`; cancelled entries are dropped.
  TSL_HD index_t cancel_sorted(index_t from, index_t count, index_t to) {
    return compact_entries(from, count, to, [&](index_t p) {
      const index_t index = m_.set[from + p].index;
      if (index < 0 || (p > 0 && m_.set[from + p - 1].index == index)) return false;
      index_t run = 1;
      while (p + run < count && m_.set[from + p + run].index == index) ++run;
      return (run & 1) != 0;
    });
  }

  // The live entries of [from, from + count) to `to` <= from.
  TSL_HD index_t move_live_left(index_t from, index_t count, index_t to) {
    return compact_entries(from, count, to,
                           [&](index_t p) { return m_.set[from + p].index >= 0; });
  }

  // [from, from + count) of the set in filtration order.
  TSL_HD void sort_entries(index_t from, index_t count) {
    using namespace warp_reduce_detail;
    if (stats_) ++stats_->cancel_passes;
    w_.sync();
    WarpBlock<W> blk{w_};
    if (count > 1) block_sort(blk, SpillRange<Entry<T>>{m_.set, from}, count, EntryBefore<T>());
  }

  TSL_HD void set_run(int r, index_t head, index_t end) {
    w_.each([&](int lane) {
      if (lane != r) return;
      head_[lane] = head;
      end_[lane] = end;
    });
  }

  TSL_HD void reset_set() {
    tail_ = dead_ = 0;
    size_ = kSealAt;
    runs_ = 0;
  }

  // The tail as the newest run, then merges while the older of the last two is at most twice
  // the newer (or all 32 lanes hold runs), so that sizes halve from run to run.
  TSL_HD_COLD Status seal_tail() {
    if (tail_ == 0) return kOk;
    sort_entries(0, tail_);
    if (size_ + tail_ > m_.set.capacity()) {
      compact_all();
      // Still more than half full: grow rather than compact again at the next seal.
      if (2 * (size_ + tail_) > m_.set.capacity() && !grow(m_.set, 2 * (size_ + tail_), size_) &&
          size_ + tail_ > m_.set.capacity())
        return kHeapFull;
    }
    const index_t kept = cancel_sorted(0, tail_, size_);
    tail_ = dead_ = 0;
    if (kept == 0) return kOk;
    set_run(runs_, size_, size_ + kept);
    ++runs_;
    size_ += kept;
    if (stats_ && size_ > stats_->set_high) stats_->set_high = size_;
    while (runs_ >= 2) {
      const index_t older = w_.shfl(end_, runs_ - 2) - w_.shfl(head_, runs_ - 2);
      const index_t newer = w_.shfl(end_, runs_ - 1) - w_.shfl(head_, runs_ - 1);
      if (runs_ < warp::kLanes && older > 2 * newer) break;
      if (!merge_last()) break;  // compacted instead
    }
    return kOk;
  }

  // Merges the last two runs: merge path into the free space past the set, each lane one slice
  // of the output, then cancelled into place from the older run's start. Returns false when
  // there was no room and the runs were compacted instead.
  TSL_HD bool merge_last() {
    using namespace warp_reduce_detail;
    const int a = runs_ - 2, b = runs_ - 1;
    const index_t ha = w_.shfl(head_, a), na = w_.shfl(end_, a) - ha;
    const index_t hb = w_.shfl(head_, b), nb = w_.shfl(end_, b) - hb;
    const index_t sa = a == 0 ? kSealAt : w_.shfl(end_, a - 1);
    const index_t n = na + nb, scratch = size_;
    if (scratch + n > m_.set.capacity() && !grow(m_.set, scratch + n, size_)) {
      compact_all();
      return false;
    }
    if (stats_ && scratch + n > stats_->set_high) stats_->set_high = scratch + n;
    const index_t per = (n + warp::kLanes - 1) / warp::kLanes;
    const EntryBefore<T> before;
    w_.sync();
    w_.each([&](int lane) {
      index_t o = index_t(lane) * per;
      const index_t o_end = o + per < n ? o + per : n;
      if (o >= n) return;
      // The split of the first o outputs between the runs; ties take the older run first.
      index_t lo = o > nb ? o - nb : 0, hi = o < na ? o : na;
      while (lo < hi) {
        const index_t mid = (lo + hi) / 2;
        if (!before(m_.set[hb + o - mid - 1], m_.set[ha + mid])) lo = mid + 1;
        else hi = mid;
      }
      index_t i = lo, j = o - lo;
      for (; o < o_end; ++o) {
        const bool take_a = j >= nb || (i < na && !before(m_.set[hb + j], m_.set[ha + i]));
        m_.set[scratch + o] = take_a ? m_.set[ha + i++] : m_.set[hb + j++];
      }
    });
    // Copies of a triangle (one per run) are now adjacent; the output starts at or before the
    // older run's start and ends before the scratch.
    const index_t kept = cancel_sorted(scratch, n, sa);
    runs_ -= kept ? 1 : 2;
    if (kept) set_run(a, sa, sa + kept);
    size_ = sa + kept;
    return true;
  }

  // Every run into one sorted, cancelled run (when the set is full); the tail stays.
  TSL_HD void compact_all() {
    if (stats_) ++stats_->compactions;
    index_t out = kSealAt;
    for (int r = 0; r < runs_; ++r) {
      const index_t h = w_.shfl(head_, r), e = w_.shfl(end_, r);
      out += move_live_left(h, e - h, out);
    }
    const index_t count = out - kSealAt;
    sort_entries(kSealAt, count);
    const index_t kept = cancel_sorted(kSealAt, count, kSealAt);
    runs_ = kept ? 1 : 0;
    if (kept) set_run(0, kSealAt, kSealAt + kept);
    size_ = kSealAt + kept;
  }

  // The pivot of the set (its earliest entry of odd multiplicity), left in the set once;
  // {.., -1} if the set sums to zero.
  TSL_HD Status pivot_of_set(Entry<T>* pivot) {
    if (stats_) ++stats_->pivot_queries;
    // The members the passes read, as locals: the reducer object lives in local memory on the
    // device (seal_tail and grow take `this`), and a member read after a store to the set, which
    // may alias it as far as the compiler knows, was a local load again (the set's parts and
    // tail_ on every cancelled copy). head and dead go back to the members before seal_tail and
    // each return; all are read again after seal_tail, which changes them.
    Spill<Entry<T>> set = m_.set;
    index_t tail = tail_, dead = dead_;
    int runs = runs_;
    typename W::template Var<index_t> head = head_, end = end_;
    for (;;) {
      if (dead > 64 && 2 * dead > tail) {
        head_ = head;
        dead_ = dead;
        const Status s = seal_tail();
        if (s != kOk) return s;
        set = m_.set;
        tail = tail_;
        dead = dead_;
        runs = runs_;
        head = head_;
        end = end_;
      }
      // One pass over the tail: each lane's least key there, how many copies of it the lane
      // holds and where the first is. Copies of the set's least key can only sit in lanes
      // whose own least key it is, so no second pass counts them; the cancelling pass runs in
      // those lanes alone (none when the pivot is a run head's only copy).
      typename W::template Var<uint64_t> hi, lo, tail_hi, tail_lo;
      typename W::template Var<int64_t> copies, first;
      w_.each([&](int lane) {
        uint64_t th = ~uint64_t(0), tl = ~uint64_t(0);
        int64_t c = 0, f = INT64_MAX;
        for (index_t s = lane; s < tail; s += warp::kLanes) {
          const Entry<T> x = set[s];
          if (x.index < 0) continue;
          const uint64_t h = warp::order_bits(x.diameter), l = ~uint64_t(x.index);
          if (h < th || (h == th && l < tl)) {
            th = h;
            tl = l;
            c = 1;
            f = s;
          } else if (h == th && l == tl) {
            ++c;
          }
        }
        tail_hi[lane] = th;
        tail_lo[lane] = tl;
        copies[lane] = c;
        first[lane] = f;
        uint64_t bh = th, bl = tl;
        if (lane < runs && head[lane] < end[lane]) {
          const Entry<T> x = set[head[lane]];
          const uint64_t h = warp::order_bits(x.diameter), l = ~uint64_t(x.index);
          if (h < bh || (h == bh && l < bl)) {
            bh = h;
            bl = l;
          }
        }
        hi[lane] = bh;
        lo[lane] = bl;
      });
      const uint64_t mh = w_.min(hi);
      if (mh == ~uint64_t(0)) {
        // The tail starts over at position 0, which the lanes have just read: a barrier orders
        // their loads before the next stores there, as the warp contract asks (the min above
        // consumes them, so hardware likely orders them anyway; test_races holds the contract).
        w_.sync();
        head_ = head;
        reset_set();
        *pivot = Entry<T>{T(0), -1};
        return kOk;
      }
      typename W::template Var<uint64_t> lo_at;
      w_.each([&](int lane) { lo_at[lane] = hi[lane] == mh ? lo[lane] : ~uint64_t(0); });
      const uint64_t ml = w_.min(lo_at);
      const int64_t index = int64_t(~ml);
      // The copies of the earliest entry: at run heads (one per run at most) and in the tail.
      typename W::template Var<bool> at_head, holds;
      w_.each([&](int lane) {
        at_head[lane] = lane < runs && head[lane] < end[lane] && set[head[lane]].index == index;
        holds[lane] = tail_hi[lane] == mh && tail_lo[lane] == ml;
        if (!holds[lane]) {
          copies[lane] = 0;
          first[lane] = INT64_MAX;
        }
      });
      const uint32_t heads = w_.ballot(at_head);
      const int64_t in_tail = w_.sum(copies);
      const int64_t count = warp::popcount(heads) + in_tail;
      // The copy left behind: the first run's head, else the tail's first copy.
      const int keep_run = (count & 1) && heads ? warp::lowest_bit(heads) : -1;
      const int64_t keep_tail = (count & 1) && !heads ? w_.min(first) : -1;
      const int64_t keep = keep_run >= 0 ? w_.shfl(head, keep_run) : keep_tail;
      w_.each([&](int lane) {
        if (at_head[lane] && lane != keep_run) ++head[lane];
        if (!holds[lane]) return;
        for (index_t s = first[lane]; s < tail; s += warp::kLanes)
          if (set[s].index == index && s != keep_tail) set[s].index = -1;
      });
      w_.sync();
      dead += keep_tail >= 0 ? in_tail - 1 : in_tail;
      if (keep >= 0) {
        head_ = head;
        dead_ = dead;
        *pivot = set[keep];
        return kOk;
      }
    }
  }

  // Of V's (sorted) entries [r0, r0 + 32), as a lane mask, those that stay once its pairs
  // cancel: the first of each run of odd length.
  TSL_HD uint32_t kept_lanes(index_t r0, index_t n) {
    typename W::template Var<bool> keep;
    w_.each([&](int lane) {
      const index_t p = r0 + lane;
      keep[lane] = false;
      if (p >= n) return;
      const int32_t v = m_.vwork[p];
      if (p > 0 && m_.vwork[p - 1] == v) return;
      index_t run = 1;
      while (p + run < n && m_.vwork[p + run] == v) ++run;
      keep[lane] = run & 1;
    });
    return w_.ballot(keep);
  }

  // V's entries [r0, r0 + 32) of `mask` to the arena from position `out`.
  TSL_HD void write_kept(index_t r0, uint32_t mask, index_t out) {
    w_.each([&](int lane) {
      if ((mask >> lane) & 1u)
        m_.arena[out + warp::popcount(mask & warp::lanes_below(lane))] = m_.vwork[r0 + lane];
    });
  }

  // Stores the working V, its pairs cancelled, as the owner of `pivot`.
  TSL_HD Status store(const Entry<T>& pivot) {
    using namespace warp_reduce_detail;
    const index_t slot = slots_used_;
    if (slot == m_.slot_capacity) return kPivotTableFull;
    WarpBlock<W> blk{w_};
    const index_t n = vsize_;
    if (n > 1) block_sort(blk, m_.vwork, n, IntLess());
    const index_t start = arena_size_;
    index_t out = start;
    for (index_t r0 = 0; r0 < n; r0 += warp::kLanes) {
      const uint32_t mask = kept_lanes(r0, n);
      const index_t count = warp::popcount(mask);
      if (out + count > m_.arena.capacity() && !grow(m_.arena, out + count, out))
        return kReductionArenaFull;
      write_kept(r0, mask, out);
      out += count;
    }
    w_.each([&](int lane) {
      if (lane != 0) return;
      m_.v_start[slot] = int32_t(start);
      m_.v_length[slot] = int32_t(out - start);
    });
    w_.sync();
    arena_size_ = out;
    ++slots_used_;
    probe(w_, m_, pivot.index, int32_t(slot));
    if (stats_) stats_->arena_used = arena_size_;
    return kOk;
  }

  W& w_;
  DistanceMatrix<T> d_;
  T threshold_;
  WarpReduceMemory<T> m_;
  WarpReduceStats* stats_;
  // The set: the unsorted tail in [0, tail_), dead_ of it cancelled (index -1); the runs in
  // [kSealAt, size_), lane r's run in [head_[r], end_[r]) (its start is run r - 1's end, or
  // kSealAt; entries before the head are spent).
  index_t tail_ = 0, dead_ = 0, size_ = kSealAt;
  int runs_ = 0;
  typename W::template Var<index_t> head_, end_;
  // Per lane, the least diameter above the band of the cofacets that V's edges have: the
  // next widening goes at least that far (a lower bound would do as well; any band is exact).
  typename W::template Var<T> above_;
  index_t vsize_ = 0, arena_size_ = 0, slots_used_ = 0;
  // The column in hand (begin_column): its edge and index, first cofacet, band and the band's
  // step, and how far it has come.
  H1Column<T> col_ = {};
  index_t e_ = -1;
  Entry<T> first_ = {}, pivot_ = {};
  T step_ = T(0), band_ = T(0);
  Stage stage_ = kZero;
};

}  // namespace tsl
