// H1 of a Rips filtration by cohomology reduction over Z/2 (Ripser's recipe).
//
// Columns are the edges that are neither spanning-tree edges (cleared: they are H0 deaths) nor
// facets of zero-persistence apparent pairs, visited in reverse filtration order. A column's
// coboundary is enumerated implicitly from the distance matrix into a heap; the heap's earliest
// entry is the pivot. Only the reduction matrix V (which edges were summed) is stored, and a
// pivot already owned by an earlier column is eliminated by re-enumerating that column's V.
//
// All memory is caller-provided with fixed capacities, because a CUDA thread cannot allocate:
// routines return a Status, the CPU grows the full buffer and retries, the GPU reports it.
#pragma once

#include <math.h>

#include "apparent_pairs.h"

namespace tsl {

template <typename T>
struct H1Column {
  T diameter;
  index_t i, j;  // i > j
};

// Columns are reduced in reverse filtration order.
template <typename T>
TSL_HD bool column_before(const H1Column<T>& a, const H1Column<T>& b) {
  return filtration_less(b.diameter, edge_index(b.i, b.j), a.diameter, edge_index(a.i, a.j));
}

template <typename T>
struct H1Pair {
  T birth, death;
  index_t birth_edge;      // edge index
  index_t death_triangle;  // triangle index; -1 for a class that never dies
};

// Reported H1 bars are ordered by decreasing persistence; ties by reverse filtration order of
// the birth edge (the order the reduction finds them), which birth edges make total.
template <typename T>
TSL_HD bool h1_pair_before(const H1Pair<T>& a, const H1Pair<T>& b) {
  T pa = a.death - a.birth, pb = b.death - b.birth;
  // NaN (non-finite input, see mst_edge_before) sorts last, keeping the order strict.
  const bool na = pa != pa, nb = pb != pb;
  if (na != nb) return nb;
  if (!na && pa != pb) return pa > pb;
  const bool ba = a.birth != a.birth, bb = b.birth != b.birth;
  if (ba || bb) return ba == bb ? a.birth_edge < b.birth_edge : bb;
  return filtration_less(b.birth, b.birth_edge, a.birth, a.birth_edge);
}

// The largest value below x, for a strict lower bound that keeps x itself.
TSL_HD float just_below(float x) { return nextafterf(x, -INFINITY); }
TSL_HD double just_below(double x) { return nextafter(x, -INFINITY); }

// ---- A binary heap in filtration order, over a caller's array --------------------------------
template <typename T>
struct EntryHeap {
  Entry<T>* data;
  index_t size;
  index_t capacity;
  // Whether a full heap first drops its cancelling pairs, or reports itself full at once. The
  // device's fixed heap must compact to hold more; the CPU grows the heap instead, which costs
  // less than a sort of the whole heap at every overflow (an overflowing heap seldom holds many
  // pairs, so compacting it tends to repeat at the next few pushes).
  bool compact_when_full = true;

  TSL_HD static bool before(const Entry<T>& a, const Entry<T>& b) { return filtration_less(a, b); }

  TSL_HD void sift_down(index_t pos, index_t end) {
    Entry<T> x = data[pos];
    for (;;) {
      index_t child = 2 * pos + 1;
      if (child >= end) break;
      if (child + 1 < end && before(data[child + 1], data[child])) ++child;
      if (!before(data[child], x)) break;
      data[pos] = data[child];
      pos = child;
    }
    data[pos] = x;
  }

  // Drops cancelling pairs (Z/2) in place. Heapsort leaves the array in reverse order; equal
  // entries are then adjacent; reversing the survivors gives a sorted array, itself a heap.
  TSL_HD void compact() {
    for (index_t k = size - 1; k > 0; --k) {
      Entry<T> t = data[0];
      data[0] = data[k];
      data[k] = t;
      sift_down(0, k);
    }
    index_t out = 0;
    for (index_t k = 0; k < size;) {
      index_t run = k + 1;
      while (run < size && data[run].index == data[k].index) ++run;
      if ((run - k) & 1) data[out++] = data[k];
      k = run;
    }
    for (index_t a = 0, b = out - 1; a < b; ++a, --b) {
      Entry<T> t = data[a];
      data[a] = data[b];
      data[b] = t;
    }
    size = out;
  }

  TSL_HD bool push(Entry<T> e) {
    if (size == capacity) {
      if (!compact_when_full) return false;
      compact();
      if (size == capacity) return false;
    }
    index_t pos = size++;
    while (pos > 0) {
      index_t parent = (pos - 1) / 2;
      if (!before(e, data[parent])) break;
      data[pos] = data[parent];
      pos = parent;
    }
    data[pos] = e;
    return true;
  }

  TSL_HD Entry<T> pop() {
    Entry<T> top = data[0];
    data[0] = data[--size];
    if (size > 0) sift_down(0, size);
    return top;
  }

  // The earliest entry of the Z/2 sum the heap represents, left in the heap; {.., -1} if zero.
  TSL_HD Entry<T> pivot() {
    while (size > 0) {
      Entry<T> top = pop();
      if (size > 0 && data[0].index == top.index) {
        pop();
        continue;
      }
      push(top);  // room is guaranteed: one entry was just popped
      return top;
    }
    return Entry<T>{T(0), -1};
  }
};

// A heap of edge indices (any fixed order serves: it only gathers equal entries to cancel).
struct IndexHeap {
  index_t* data;
  index_t size;
  index_t capacity;

  TSL_HD bool push(index_t v) {
    if (size == capacity) return false;
    index_t pos = size++;
    while (pos > 0) {
      index_t parent = (pos - 1) / 2;
      if (data[parent] <= v) break;
      data[pos] = data[parent];
      pos = parent;
    }
    data[pos] = v;
    return true;
  }

  TSL_HD index_t pop() {
    index_t top = data[0];
    index_t x = data[--size];
    index_t pos = 0;
    for (;;) {
      index_t child = 2 * pos + 1;
      if (child >= size) break;
      if (child + 1 < size && data[child + 1] < data[child]) ++child;
      if (data[child] >= x) break;
      data[pos] = data[child];
      pos = child;
    }
    if (size > 0) data[pos] = x;
    return top;
  }
};

// The pivot table of a cloud with m columns: the least power of two of at least 2(m + 1) keys,
// so that it stays at most half full. Every engine sizes it so (a device launch's slices hold
// the largest, and each cloud uses this much of its own), so probe sequences, which depend on
// the capacity, are the same in all of them, and a cloud clears only its own table.
TSL_HD index_t pivot_table_capacity(index_t m) {
  index_t p = 1;
  while (p < 2 * m + 2) p <<= 1;
  return p;
}

// Open-addressing map from a pivot triangle to the slot of the column that owns it.
struct PivotTable {
  index_t* keys;   // -1: empty
  index_t* slots;
  index_t capacity;  // a power of two
  index_t size;

  TSL_HD index_t hash(index_t key) const {
    uint64_t h = (uint64_t)key * 0x9E3779B97F4A7C15ull;
    return (index_t)(h >> 17) & (capacity - 1);
  }
  TSL_HD void clear() {
    for (index_t k = 0; k < capacity; ++k) keys[k] = -1;
    size = 0;
  }
  TSL_HD index_t find(index_t key) const {
    for (index_t h = hash(key);; h = (h + 1) & (capacity - 1)) {
      if (keys[h] == key) return slots[h];
      if (keys[h] < 0) return -1;
    }
  }
  TSL_HD bool insert(index_t key, index_t slot) {
    if (2 * (size + 1) > capacity) return false;  // keep probes short
    index_t h = hash(key);
    while (keys[h] >= 0) h = (h + 1) & (capacity - 1);
    keys[h] = key;
    slots[h] = slot;
    ++size;
    return true;
  }
};

// Everything one cloud's reduction needs, all caller-owned.
template <typename T>
struct H1Workspace {
  EntryHeap<T> coboundary;  // the working column's coboundary
  IndexHeap reduction;      // the working column of V
  PivotTable pivots;
  index_t* v_start;  // per slot: where its V column starts in v_arena
  index_t* v_length;
  index_t slot_capacity;
  index_t* v_arena;
  index_t arena_capacity;
  index_t arena_size;
  index_t slots_used;
  // Progress kept between calls for a caller that grows a full buffer and calls again (see
  // reduce_h1); a new workspace starts at the first column.
  index_t columns_done = 0;     // columns reduced
  bool suspended = false;       // the next column stopped on a full heap, with its V kept,
  T floor = T(0), band = T(0);  // and the diameters its working coboundary lies between
};

// Push the cofacets of `edge` whose diameter lies in (lower, upper], by decreasing third vertex.
template <typename T>
TSL_HD bool push_coboundary(const DistanceMatrix<T>& d, index_t edge, T lower, T upper,
                            EntryHeap<T>& heap) {
  index_t i, j;
  edge_vertices(edge, d.n, &i, &j);
  const T de = d(i, j);
  if (de > upper) return true;  // every cofacet is at least as long as the edge
  for (index_t hi = d.n; hi > 0; hi -= kBlock) {
    const index_t lo = hi > kBlock ? hi - kBlock : 0;
    for (uint32_t m = cofacet_mask(d, i, j, de, lower, upper, lo, hi); m;) {
      const int bit = highest_bit(m);
      m &= ~(uint32_t(1) << bit);
      const index_t k = lo + bit;
      if (!heap.push(Entry<T>{cofacet_diameter(d, de, i, j, k), cofacet_index(i, j, k)}))
        return false;
    }
  }
  return true;
}

// Add the column whose V is {edges} to the working column, whose coboundary holds only the
// entries of diameter <= `band`. V takes all the edges first, so that a heap that overflows
// leaves a V whose banded coboundary is the intended working column (see reduce_column).
template <typename T>
TSL_HD Status add_column(const DistanceMatrix<T>& d, const index_t* edges, index_t count,
                         T band, H1Workspace<T>& ws) {
  if (ws.reduction.capacity - ws.reduction.size < count) return kHeapFull;
  for (index_t k = 0; k < count; ++k) ws.reduction.push(edges[k]);
  for (index_t k = 0; k < count; ++k)
    if (!push_coboundary(d, edges[k], T(-1), band, ws.coboundary)) return kHeapFull;
  return kOk;
}

// Push the cofacets of diameter in (lower, upper] of every edge of V. From lower = -1 this
// enumerates the whole banded coboundary; from the old band, it widens it. Copies of a triangle
// share its diameter, so they enter in the same band and still cancel.
template <typename T>
TSL_HD Status push_band(const DistanceMatrix<T>& d, T lower, T upper, H1Workspace<T>& ws) {
  for (index_t k = 0; k < ws.reduction.size; ++k)
    if (!push_coboundary(d, ws.reduction.data[k], lower, upper, ws.coboundary)) return kHeapFull;
  return kOk;
}

// Store the working V column (Z/2-cancelled) as the owner of `pivot`.
template <typename T>
TSL_HD Status store_column(Entry<T> pivot, H1Workspace<T>& ws) {
  if (ws.slots_used == ws.slot_capacity) return kPivotTableFull;
  index_t slot = ws.slots_used;
  index_t start = ws.arena_size;
  IndexHeap& v = ws.reduction;
  while (v.size > 0) {
    index_t e = v.pop();
    if (v.size > 0 && v.data[0] == e) {
      v.pop();
      continue;
    }
    if (ws.arena_size == ws.arena_capacity) return kReductionArenaFull;
    ws.v_arena[ws.arena_size++] = e;
  }
  if (!ws.pivots.insert(pivot.index, slot)) return kPivotTableFull;
  ws.v_start[slot] = start;
  ws.v_length[slot] = ws.arena_size - start;
  ++ws.slots_used;
  return kOk;
}

// Reduce the column of the edge `col` (see reduce_h1), appending its pair if it has nonzero
// persistence.
//
// When a heap is full the column is suspended, not lost: V then holds every edge added so far
// (add_column pushes them first), and ws.floor and ws.band the diameters that its coboundary
// lies between (the band widened already when the widening overflowed). A caller that grows
// the full heap (V's with its contents: a copy is still a heap) and calls again resumes it: the
// coboundary is enumerated again from V between floor and band, which gives the working column
// that the interrupted step would have left. Only from the floor up: the sum has no entry at or
// below it (they all cancel), and enumerating the pairs that the heap had cancelled would fill
// it again.
template <typename T>
TSL_HD Status reduce_column(const DistanceMatrix<T>& d, const H1Column<T>& col, T threshold,
                            H1Workspace<T>& ws, H1Pair<T>* pairs, index_t pair_capacity,
                            index_t* num_pairs) {
  const index_t e = edge_index(col.i, col.j);
  const T step = (threshold - col.diameter) / T(64);
  T floor = T(-1), band;  // the working sum has no entry of diameter <= floor
  Status s;
  if (ws.suspended) {
    ws.suspended = false;
    floor = ws.floor;
    band = ws.band;
    ws.coboundary.size = 0;
    s = push_band(d, floor, band, ws);
  } else {
    // Emergent pair: the unreduced pivot has the column's own diameter and nobody owns it, so
    // the column is already reduced and the pair has zero persistence.
    Entry<T> first = earliest_cofacet(d, col.i, col.j, col.diameter, threshold);
    if (first.index >= 0 && first.diameter == col.diameter &&
        ws.pivots.find(first.index) < 0 && apparent_facet(d, first, threshold).index < 0) {
      ws.reduction.size = 0;
      ws.reduction.push(e);
      return store_column(first, ws);
    }

    band = first.index < 0 ? threshold : first.diameter + step;
    if (!(band < threshold)) band = threshold;
    ws.coboundary.size = 0;
    ws.reduction.size = 0;
    s = add_column(d, &e, 1, band, ws);
  }
  for (;;) {
    if (s == kHeapFull) {
      ws.suspended = true;
      ws.floor = floor;
      ws.band = band;
    }
    if (s != kOk) return s;
    Entry<T> pivot = ws.coboundary.pivot();
    if (pivot.index < 0 && band < threshold) {
      T wider = band + step;
      // A step too small to move the band (subnormal distances) jumps to the threshold: the
      // band must grow on every widening, or the loop would not end.
      if (!(wider > band) || !(wider < threshold)) wider = threshold;
      floor = band;  // the sum up to the band is zero
      band = wider;
      s = push_band(d, floor, band, ws);
      continue;
    }
    if (pivot.index < 0) {
      // Unreachable below the enclosing radius (the complex there is a cone); kept so that a
      // class that never dies is reported rather than lost.
      if (*num_pairs == pair_capacity) return kPairsFull;
      pairs[(*num_pairs)++] = H1Pair<T>{col.diameter, T(INFINITY), e, -1};
      return kOk;
    }
    // Adding a column whose pivot is this one leaves a sum of later entries only.
    floor = just_below(pivot.diameter);
    index_t slot = ws.pivots.find(pivot.index);
    if (slot >= 0) {
      s = add_column(d, ws.v_arena + ws.v_start[slot], ws.v_length[slot], band, ws);
      continue;
    }
    Entry<T> f = apparent_facet(d, pivot, threshold);
    if (f.index >= 0) {
      s = add_column(d, &f.index, 1, band, ws);
      continue;
    }
    if (pivot.diameter > col.diameter) {
      if (*num_pairs == pair_capacity) return kPairsFull;
      pairs[(*num_pairs)++] = H1Pair<T>{col.diameter, pivot.diameter, e, pivot.index};
    }
    return store_column(pivot, ws);
  }
}

// Reduce `columns` (already in reverse filtration order, apparent-pair facets removed) and
// append every pair of nonzero persistence to `pairs`. `threshold` is the enclosing radius.
//
// Only a small part of a working coboundary is ever popped: its pivot lies close above the
// column's diameter, and the entries beyond it are enumerated, pushed and thrown away. So the
// heap holds only entries of diameter <= a band limit, widened (by enumerating V again) when
// the sum below it is zero. The pivot of the banded sum, when there is one, is the pivot of the
// whole sum, so the pairing is unchanged. The band widens by equal steps, 1/64 of the way from
// the column's diameter to the threshold: a wider band holds more entries that are never
// popped, and tie-heavy clouds chase pivots far up (a 512-gon's longest column climbs from its
// shortest edge to sqrt(3) times the radius), which a band growing fourfold at each widening
// soon covered whole, heaping millions of entries; a widening costs one enumeration of V.
//
// A new workspace starts at the first column. On overflow the columns before the one that
// overflowed stay reduced (their pivots, V columns and pairs, *num_pairs counting them) and
// ws.columns_done is where it stopped: a caller that can grow the full buffer calls again with
// the same workspace, and the reduction resumes there instead of redoing every column. After
// kHeapFull it resumes within the column (see reduce_column); after any other overflow the
// column starts again.
template <typename T>
TSL_HD Status reduce_h1(const DistanceMatrix<T>& d, const H1Column<T>* columns,
                        index_t num_columns, T threshold, H1Workspace<T>& ws, H1Pair<T>* pairs,
                        index_t pair_capacity, index_t* num_pairs) {
  if (ws.columns_done == 0 && !ws.suspended) {
    ws.pivots.clear();
    ws.arena_size = 0;
    ws.slots_used = 0;
    *num_pairs = 0;
  }
  for (; ws.columns_done < num_columns; ++ws.columns_done) {
    // A column that fails to be stored leaves no trace: its pair and its partial V are dropped
    // (the pivot table and the slots change only once a column is stored whole).
    const index_t arena_before = ws.arena_size, pairs_before = *num_pairs;
    const Status s = reduce_column(d, columns[ws.columns_done], threshold, ws, pairs,
                                   pair_capacity, num_pairs);
    if (s != kOk) {
      ws.arena_size = arena_before;
      *num_pairs = pairs_before;
      return s;
    }
  }
  return kOk;
}

}  // namespace tsl
