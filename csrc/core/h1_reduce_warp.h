// The H1 reduction of one cloud by one warp, written once on the warp contract (warp.h): the
// algorithm of reduce_h1 (h1_reduce.h), with data structures a warp can share.
//
// - The working coboundary is an unsorted multiset of entries. A column's cofacets enter 32 third
//   vertices at a time (a ballot and the ranks below each lane place them); the pivot is a warp
//   argmin over a packed key (diameter bits, then the triangle index reversed: filtration
//   order), and the copies of it are counted by the warp: an even count cancels (Z/2), an odd one
//   leaves one copy. Cancelled copies are marked dead and squeezed out when they are the
//   majority.
// - The pivot table is probed 32 slots at a time; the first hit or empty slot in probe order
//   decides, as a linear probe would.
// - Working V columns cancel their pairs when stored: sorted by the warp, runs of even length
//   dropped.
// Every array is a Spill: its first part where the launcher puts it (shared memory on the
// device), the rest in a second, larger part (global memory), so the shared capacity is a
// speed setting, never a limit. Only the total capacities can overflow, and then the status says
// which (see h1_reduce.h's Status).
//
// The pairs equal reduce_h1's: the persistence pairing does not depend on how V is represented,
// and the native tests compare the two on every cloud they run.
#pragma once

#include "apparent_pairs.h"
#include "h1_reduce.h"
#include "topology_block.h"
#include "warp.h"

namespace tsl {

template <typename X>
struct Spill {
  X* fast;
  index_t fast_capacity;
  X* slow;
  index_t slow_capacity;
  TSL_HD index_t capacity() const { return fast_capacity + slow_capacity; }
  TSL_HD X& operator[](index_t i) const {
    return i < fast_capacity ? fast[i] : slow[i - fast_capacity];
  }
};

// Work and high-water marks of one cloud's reduction, as the emulation counts them.
struct WarpReduceStats {
  int64_t columns = 0, emergent = 0, pivot_queries = 0, additions = 0, widenings = 0,
          entries_pushed = 0, set_high = 0, vwork_high = 0, arena_used = 0, cancel_passes = 0;
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
};

namespace warp_reduce_detail {

// Earliest cofacet of {i > j} (length de) up to the threshold, as earliest_cofacet, by the warp:
// third vertices k = lane (mod 32), rows i and j read at k (coalesced).
template <class W, typename T>
TSL_HD Entry<T> earliest_cofacet(W& w, const DistanceMatrix<T>& d, index_t i, index_t j, T de,
                                 T threshold) {
  if (de > threshold) return Entry<T>{T(0), -1};
  const index_t n = d.n;
  for (index_t top = n; top > 0; top -= warp::kLanes) {
    typename W::template Var<bool> ok;
    w.each([&](int lane) {
      const index_t k = top - warp::kLanes + lane;
      ok[lane] = k >= 0 && k != i && k != j && d(i, k) <= de && d(j, k) <= de;
    });
    const uint32_t m = w.ballot(ok);
    if (m) return Entry<T>{de, cofacet_index(i, j, top - warp::kLanes + highest_bit(m))};
  }
  typename W::template Var<T> least;
  w.each([&](int lane) {
    T b = T(INFINITY);
    for (index_t k = lane; k < n; k += warp::kLanes) {
      if (k == i || k == j) continue;
      const T a = d(i, k) > d(j, k) ? d(i, k) : d(j, k);
      b = a < b ? a : b;
    }
    least[lane] = b;
  });
  const T best = w.min(least);
  if (!(best <= threshold)) return Entry<T>{T(0), -1};
  // best > de here, so a cofacet attains it exactly where both far sides are within it.
  for (index_t top = n; top > 0; top -= warp::kLanes) {
    typename W::template Var<bool> ok;
    w.each([&](int lane) {
      const index_t k = top - warp::kLanes + lane;
      ok[lane] = k >= 0 && k != i && k != j && d(i, k) <= best && d(j, k) <= best;
    });
    const uint32_t m = w.ballot(ok);
    if (m) return Entry<T>{best, cofacet_index(i, j, top - warp::kLanes + highest_bit(m))};
  }
  return Entry<T>{T(0), -1};  // unreachable: some k attains the least far side
}

// apparent_facet by the warp.
template <class W, typename T>
TSL_HD Entry<T> apparent_facet(W& w, const DistanceMatrix<T>& d, Entry<T> t, T threshold) {
  const Entry<T> f = latest_facet(d, t.index);
  if (f.diameter == t.diameter) {
    index_t i, j;
    edge_vertices(f.index, d.n, &i, &j);
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

// Entries by triangle index (cancelled ones, index -1, first): equal triangles become adjacent.
template <typename T>
struct IndexLess {
  TSL_HD bool operator()(const Entry<T>& a, const Entry<T>& b) const { return a.index < b.index; }
};

}  // namespace warp_reduce_detail

// One cloud's reduction by one warp, pairs as reduce_h1 reports them (the same set; their order
// is the reduction's, which the reporting sorts).
template <class W, typename T>
class WarpReducer {
 public:
  TSL_HD WarpReducer(W& w, const DistanceMatrix<T>& d, T threshold, const WarpReduceMemory<T>& m,
                     WarpReduceStats* stats)
      : w_(w), d_(d), threshold_(threshold), m_(m), stats_(stats) {}

  TSL_HD Status run(const H1Column<T>* columns, index_t num_columns, index_t* num_pairs) {
    using namespace warp_reduce_detail;
    *num_pairs = 0;
    if (num_columns + 1 > m_.slot_capacity) return kPivotTableFull;
    if (2 * (num_columns + 1) > m_.pivot_capacity) return kPivotTableFull;
    w_.each([&](int lane) {
      for (index_t s = lane; s < m_.pivot_capacity; s += warp::kLanes) m_.pivot_keys[s] = -1;
    });
    w_.sync();
    for (index_t c = 0; c < num_columns; ++c) {
      const H1Column<T> col = columns[c];
      const index_t e = edge_index(col.i, col.j);
      if (stats_) ++stats_->columns;

      const Entry<T> first = earliest_cofacet(w_, d_, col.i, col.j, col.diameter, threshold_);
      if (first.index >= 0 && first.diameter == col.diameter &&
          probe(w_, m_, first.index, -1) < 0 &&
          apparent_facet(w_, d_, first, threshold_).index < 0) {
        if (stats_) ++stats_->emergent;
        vsize_ = 0;
        Status s = append_v(e);
        if (s == kOk) s = store(first);
        if (s != kOk) return s;
        continue;
      }

      const T step = (threshold_ - col.diameter) / T(64);
      T band = first.index < 0 ? threshold_ : first.diameter + step;
      if (!(band < threshold_)) band = threshold_;
      size_ = dead_ = vsize_ = 0;
      cancel_at_ = kMinCancel;
      Status s = add_edge(e, band);
      if (s != kOk) return s;
      for (;;) {
        Entry<T> pivot;
        s = pivot_of_set(&pivot);
        if (s != kOk) return s;
        if (pivot.index < 0 && band < threshold_) {
          // Equal steps, as reduce_h1: a band grown fourfold soon covers a tie-heavy column
          // whole, and every pivot query scans the set (an emulated 256-gon: 740 s).
          T wider = band + step;
          if (!(wider > band) || !(wider < threshold_)) wider = threshold_;
          if (stats_) ++stats_->widenings;
          const index_t edges = vsize_;
          for (index_t k = 0; k < edges; ++k) {
            s = push_coboundary(m_.vwork[k], band, wider);
            if (s != kOk) return s;
          }
          band = wider;
          continue;
        }
        if (pivot.index < 0) {
          s = add_pair(H1Pair<T>{col.diameter, T(INFINITY), e, -1}, num_pairs);
          if (s != kOk) return s;
          break;
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
        if (pivot.diameter > col.diameter) {
          s = add_pair(H1Pair<T>{col.diameter, pivot.diameter, e, pivot.index}, num_pairs);
          if (s != kOk) return s;
        }
        s = store(pivot);
        if (s != kOk) return s;
        break;
      }
    }
    return kOk;
  }

 private:
  TSL_HD Status add_pair(const H1Pair<T>& p, index_t* num_pairs) {
    if (*num_pairs == m_.pair_capacity) return kPairsFull;
    const index_t at = (*num_pairs)++;
    w_.each([&](int lane) {
      if (lane == 0) m_.pairs[at] = p;
    });
    return kOk;
  }

  TSL_HD Status append_v(index_t edge) {
    if (vsize_ == m_.vwork.capacity()) return kHeapFull;
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

  // The cofacets of `edge` of diameter in (lower, upper] into the set.
  TSL_HD Status push_coboundary(index_t edge, T lower, T upper) {
    index_t i, j;
    edge_vertices(edge, d_.n, &i, &j);
    const T de = d_(i, j);
    if (de > upper) return kOk;
    for (index_t k0 = 0; k0 < d_.n; k0 += warp::kLanes) {
      typename W::template Var<bool> in;
      typename W::template Var<T> diam;
      w_.each([&](int lane) {
        const index_t k = k0 + lane;
        in[lane] = false;
        if (k >= d_.n || k == i || k == j) return;
        diam[lane] = cofacet_diameter(d_, de, i, j, k);
        in[lane] = diam[lane] > lower && diam[lane] <= upper;
      });
      const uint32_t mask = w_.ballot(in);
      if (!mask) continue;
      const index_t count = warp::popcount(mask);
      if (size_ + count > cancel_at_ || size_ + count > m_.set.capacity()) {
        cancel_pairs();
        if (size_ + count > m_.set.capacity()) return kHeapFull;
      }
      w_.each([&](int lane) {
        if (!in[lane]) return;
        m_.set[size_ + warp::popcount(mask & warp::lanes_below(lane))] =
            Entry<T>{diam[lane], cofacet_index(i, j, k0 + lane)};
      });
      size_ += count;
      if (stats_) {
        stats_->entries_pushed += count;
        if (size_ > stats_->set_high) stats_->set_high = size_;
      }
    }
    w_.sync();
    return kOk;
  }

  // Cancels every pair of equal entries (Z/2), not only the pivot's: sorted by triangle, the
  // first entry of each run of odd length stays. Run when the set doubles since the last time
  // (like the scalar heap's compaction when full), so the set stays near its true support.
  TSL_HD void cancel_pairs() {
    using namespace warp_reduce_detail;
    // The sort reads entries other lanes wrote (push_coboundary); ballots and shuffles order
    // nothing in memory, only a warp barrier does.
    w_.sync();
    if (stats_) ++stats_->cancel_passes;
    WarpBlock<W> blk{w_};
    if (size_ > 1) block_sort(blk, m_.set, size_, IndexLess<T>());
    index_t out = 0;
    for (index_t r0 = 0; r0 < size_; r0 += warp::kLanes) {
      typename W::template Var<Entry<T>> x;
      typename W::template Var<bool> keep;
      w_.each([&](int lane) {
        const index_t p = r0 + lane;
        keep[lane] = false;
        if (p >= size_) return;
        x[lane] = m_.set[p];
        if (x[lane].index < 0 || (p > 0 && m_.set[p - 1].index == x[lane].index)) return;
        index_t run = 1;
        while (p + run < size_ && m_.set[p + run].index == x[lane].index) ++run;
        keep[lane] = run & 1;
      });
      const uint32_t mask = w_.ballot(keep);
      w_.sync();
      w_.each([&](int lane) {
        if (keep[lane]) m_.set[out + warp::popcount(mask & warp::lanes_below(lane))] = x[lane];
      });
      out += warp::popcount(mask);
      w_.sync();
    }
    size_ = out;
    dead_ = 0;
    cancel_at_ = 2 * size_ > kMinCancel ? 2 * size_ : kMinCancel;
  }

  // Drops the cancelled entries, keeping the others in order: 32 at a time, all read before any
  // is written (a write may land on a position another lane reads).
  TSL_HD void squeeze() {
    index_t out = 0;
    for (index_t r0 = 0; r0 < size_; r0 += warp::kLanes) {
      typename W::template Var<Entry<T>> x;
      typename W::template Var<bool> live;
      w_.each([&](int lane) {
        live[lane] = r0 + lane < size_ && m_.set[r0 + lane].index >= 0;
        if (live[lane]) x[lane] = m_.set[r0 + lane];
      });
      const uint32_t mask = w_.ballot(live);
      w_.sync();
      w_.each([&](int lane) {
        if (live[lane]) m_.set[out + warp::popcount(mask & warp::lanes_below(lane))] = x[lane];
      });
      out += warp::popcount(mask);
      w_.sync();
    }
    size_ = out;
    dead_ = 0;
  }

  // The pivot of the set (its earliest entry of odd multiplicity), left in the set once;
  // {.., -1} if the set sums to zero.
  TSL_HD Status pivot_of_set(Entry<T>* pivot) {
    if (stats_) ++stats_->pivot_queries;
    for (;;) {
      if (dead_ > 64 && 2 * dead_ > size_) squeeze();
      typename W::template Var<uint64_t> hi, lo;
      w_.each([&](int lane) {
        uint64_t bh = ~uint64_t(0), bl = ~uint64_t(0);
        for (index_t s = lane; s < size_; s += warp::kLanes) {
          const Entry<T> x = m_.set[s];
          if (x.index < 0) continue;
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
        size_ = dead_ = 0;
        *pivot = Entry<T>{T(0), -1};
        return kOk;
      }
      typename W::template Var<uint64_t> lo_at;
      w_.each([&](int lane) { lo_at[lane] = hi[lane] == mh ? lo[lane] : ~uint64_t(0); });
      const int64_t index = int64_t(~w_.min(lo_at));
      // The copies of the earliest entry: how many, and the first position holding one.
      typename W::template Var<int64_t> copies, first;
      w_.each([&](int lane) {
        copies[lane] = 0;
        first[lane] = INT64_MAX;
        for (index_t s = lane; s < size_; s += warp::kLanes) {
          if (m_.set[s].index != index) continue;
          ++copies[lane];
          first[lane] = s < first[lane] ? s : first[lane];
        }
      });
      const int64_t count = w_.sum(copies);
      const int64_t keep = (count & 1) ? w_.min(first) : -1;
      w_.each([&](int lane) {
        for (index_t s = lane; s < size_; s += warp::kLanes)
          if (m_.set[s].index == index && s != keep) m_.set[s].index = -1;
      });
      w_.sync();
      dead_ += (count & 1) ? count - 1 : count;
      if (keep >= 0) {
        *pivot = m_.set[keep];
        return kOk;
      }
    }
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
    // Keep the first element of each run of odd length.
    for (index_t r0 = 0; r0 < n; r0 += warp::kLanes) {
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
      const uint32_t mask = w_.ballot(keep);
      const index_t count = warp::popcount(mask);
      if (out + count > m_.arena.capacity()) return kReductionArenaFull;
      w_.each([&](int lane) {
        if (keep[lane]) m_.arena[out + warp::popcount(mask & warp::lanes_below(lane))] =
            m_.vwork[r0 + lane];
      });
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
  static constexpr index_t kMinCancel = 1024;
  index_t size_ = 0, dead_ = 0, vsize_ = 0, arena_size_ = 0, slots_used_ = 0;
  index_t cancel_at_ = kMinCancel;  // set size that triggers the next cancel_pairs
};

}  // namespace tsl
