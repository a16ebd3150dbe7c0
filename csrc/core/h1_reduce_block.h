// The H1 reduction of one cloud by a block of warps, written once on the block contract
// (topology_block.h's Block: phases of warps between barriers). Each warp holds one column and
// reduces it with the warp reduction's own steps (WarpReducer::begin_column, advance); one warp
// commits the columns in column order. For a batch too small to fill the GPU with a warp per
// cloud: one prompt's cloud is a chain of some thousand dependent warp steps (~490 cycles each
// on the H100), and a block runs several of its columns at once.
//
// Why the pairs are reduce_h1's. The warps hold the columns [committed, committed + K) (the
// window), and the pivot table holds exactly the columns before the window. A warp reduces its
// column against that table until a candidate: a pivot the table does not hold (and no apparent
// pair's), or zero. Every pivot it met before was in the table, and a table only gains keys
// (an owner never changes), so the column has taken the serial reduction's steps so far. The
// serial reduction of the window's first column sees this very table: its candidate is final.
// For the next one, the table has gained the first column's pivot p; if its candidate is not
// p, none of its lookups changes, and it is final too; if it is, it is not, and the column must
// reduce on (adding the first column). So a round commits the window's longest prefix whose
// candidates the table, grown one commit at a time, does not hold; the first column it stops
// at reduces on in the next round, and so does every later column whose candidate the table
// now holds; the others wait with theirs. Committed warps take the next columns.
//
// The pairs' order is the commits' (column order, as run()'s); the stored V columns and their
// slots are laid out in commit order too. test_warp runs the block on every cloud of its parity
// set with 2 to 16 warps (in shuffled order under the host emulation) against the scalar engine.
#pragma once

#include "h1_reduce_warp.h"

namespace tsl {

constexpr int kBlockReduceMaxWarps = 32;

// What a block's warps share (shared memory on the device). Per-warp rows are written by their
// warp before a barrier and read by the committing warp after it, or the other way round; the
// rest only by the committing warp. A warp's failure is its stage row, -2 - its Status.
template <typename T>
struct BlockReduceShared {
  Spill<int32_t> arena;  // the stored V columns: the committing warp grows it
  index_t arena_size, slots_used, num_pairs, committed, next_column;
  int32_t status;
  int32_t window[kBlockReduceMaxWarps];  // ring: the warps holding columns committed, +1, ...
  int32_t window_head, window_size;
  // Per warp, after its reduction: its column's stage (WarpReducer::Stage; -1: no column), the
  // candidate's pivot, its V's length once cancelled, and its pair, if any.
  int32_t stage[kBlockReduceMaxWarps];
  Entry<T> pivot[kBlockReduceMaxWarps];
  index_t kept[kBlockReduceMaxWarps];
  int32_t has_pair[kBlockReduceMaxWarps];
  H1Pair<T> pair[kBlockReduceMaxWarps];
  // Per warp, after the commit: where its committed V goes in the arena (-1: not committed) and
  // the column it takes next (-1: none).
  index_t write_at[kBlockReduceMaxWarps];
  index_t take[kBlockReduceMaxWarps];
};

// One cloud's reduction by a block. reducer_of(warp_id) is that warp's WarpReducer (on the
// device each thread's own; on the host an array), each with its own set and V in its memory,
// and the same pivot table, slots, pairs and arena. *num_pairs as run() reports it. queries:
// the pivot queries a warp takes in a round before the commit (<= 0: until its column has a
// candidate); rounds then end sooner, the pairs are the same.
template <class Block, typename T, class ReducerOf>
TSL_HD Status block_reduce(Block& blk, BlockReduceShared<T>& sh, const H1Column<T>* columns,
                           index_t num_columns, ReducerOf&& reducer_of, index_t* num_pairs,
                           index_t queries = -1) {
  if (queries <= 0) queries = -1;  // no budget: a budget of 0 would never reduce
  using W = typename Block::Warp;
  using R = WarpReducer<W, T>;
  using namespace warp_reduce_detail;
  *num_pairs = 0;
  const int K = blk.warps();
  // The same refusals as run(), from the memory every warp shares.
  {
    const WarpReduceMemory<T>& m0 = reducer_of(0).memory();
    if (num_columns + 1 > m0.slot_capacity) return kPivotTableFull;
    if (2 * (num_columns + 1) > m0.pivot_capacity) return kPivotTableFull;
  }
  const index_t own = pivot_table_capacity(num_columns);
  blk.each_warp([&](W& w, int id) {
    R& r = reducer_of(id);
    WarpReduceMemory<T>& m = r.memory();
    if (own < m.pivot_capacity) m.pivot_capacity = own;
    w.each([&](int lane) {
      for (index_t s = index_t(id) * warp::kLanes + lane; s < m.pivot_capacity;
           s += index_t(K) * warp::kLanes)
        m.pivot_keys[s] = -1;
    });
    const Status s = num_columns > 0 ? r.make_room() : kOk;
    w.each([&](int lane) {
      if (lane == 0) sh.stage[id] = s == kOk ? -1 : -2 - int32_t(s);  // a refusal, below
    });
  });
  blk.sync();
  blk.first_warp([&](W& w) {
    Status s = kOk;
    for (int k = 0; k < K; ++k)
      if (sh.stage[k] < -1) s = Status(-2 - sh.stage[k]);
    const index_t first = num_columns < K ? num_columns : K;
    w.sync();  // every lane read the rows lane 0 now writes
    w.each([&](int lane) {
      if (lane != 0) return;
      sh.arena = reducer_of(0).memory().arena;
      sh.arena_size = sh.slots_used = sh.num_pairs = sh.committed = 0;
      sh.next_column = first;
      sh.status = int32_t(s);
      sh.window_head = 0;
      sh.window_size = int32_t(first);
      for (int k = 0; k < K; ++k) {
        sh.window[k] = k;
        sh.take[k] = k < first ? k : -1;
        sh.write_at[k] = -1;
        sh.stage[k] = -1;
      }
    });
  });
  blk.sync();

  while (sh.status == kOk && sh.committed < num_columns) {
    // ---- Every warp: a new column, or reduce on where the table now holds its candidate.
    blk.each_warp([&](W& w, int id) {
      R& r = reducer_of(id);
      Status s = kOk;
      bool moved = false;
      if (sh.take[id] >= 0) {
        s = r.begin_column(columns[sh.take[id]]);
        moved = true;
      } else if (sh.stage[id] == R::kAdvancing) {
        moved = true;
      } else if (sh.stage[id] == R::kEmergent || sh.stage[id] == R::kCandidate) {
        if (probe(w, r.memory(), r.pivot().index, -1) >= 0) {
          if (r.stage() == R::kEmergent) s = r.build_set();
          moved = true;
        }
      }
      if (s == kOk && moved && r.stage() != R::kZero && r.stage() != R::kEmergent)
        s = r.advance(queries);
      index_t kept = 0;
      H1Pair<T> p{};
      bool pair = false;
      if (s == kOk && moved && r.stage() != R::kAdvancing) {  // done: a candidate, or zero
        if (r.stage() != R::kZero) kept = r.sort_and_count_v();
        pair = r.pair_of_column(&p);
      }
      w.each([&](int lane) {
        if (lane != 0) return;
        if (s != kOk) {
          sh.stage[id] = -2 - int32_t(s);  // each warp its own row: no two write one word
          return;
        }
        if (!moved) return;
        sh.stage[id] = int32_t(r.stage());
        sh.pivot[id] = r.pivot();
        sh.kept[id] = kept;
        sh.has_pair[id] = pair;
        sh.pair[id] = p;
      });
    });
    blk.sync();

    // ---- One warp: a warp's failure ends the reduction; else the window's longest prefix of
    // final candidates, committed in order. (Only this warp reads the rows the others wrote:
    // a check of them in every thread here raced with this warp's writes below.)
    blk.first_warp([&](W& w) {
      R& r0 = reducer_of(0);
      WarpReduceMemory<T>& m = r0.memory();
      m.arena = sh.arena;
      index_t arena_size = sh.arena_size, slots_used = sh.slots_used, pairs = sh.num_pairs;
      index_t committed = sh.committed, next_column = sh.next_column;
      int32_t head = sh.window_head, size = sh.window_size;
      Status s = kOk;
      for (int k = 0; k < K; ++k)
        if (sh.stage[k] < -1) s = Status(-2 - sh.stage[k]);
      // Which warps write a V, and where, and which take a column: straight into their rows
      // (lane 0; read by the other warps after the barrier). Kept as local arrays until then,
      // they took the kernel's stack frame past the device's 1 KB default (ptxas: 1,056 bytes).
      w.each([&](int lane) {
        if (lane != 0) return;
        for (int k = 0; k < K; ++k) sh.write_at[k] = sh.take[k] = -1;
      });
      int32_t freed[kBlockReduceMaxWarps];
      int nfreed = 0;
      while (s == kOk && size > 0) {
        const int32_t id = sh.window[head];
        if (sh.stage[id] == R::kAdvancing) break;  // not done yet
        const bool zero = sh.stage[id] == R::kZero;
        index_t slot = -1;
        if (!zero) {
          if (probe(w, m, sh.pivot[id].index, -1) >= 0) break;  // taken: reduce on
          slot = slots_used;
          if (slot == m.slot_capacity) {
            s = kPivotTableFull;
            break;
          }
          const index_t need = arena_size + sh.kept[id];
          if (need > m.arena.capacity() && !r0.grow_arena(need, arena_size)) {
            s = kReductionArenaFull;
            break;
          }
        }
        if (sh.has_pair[id]) {
          if (pairs == m.pair_capacity) {
            s = kPairsFull;
            break;
          }
          const H1Pair<T> p = sh.pair[id];
          const index_t at = pairs++;
          w.each([&](int lane) {
            if (lane == 0) m.pairs[at] = p;
          });
        }
        if (!zero) {
          const index_t start = arena_size, length = sh.kept[id];
          w.each([&](int lane) {
            if (lane != 0) return;
            m.v_start[slot] = int32_t(start);
            m.v_length[slot] = int32_t(length);
            sh.write_at[id] = start;
          });
          w.sync();
          probe(w, m, sh.pivot[id].index, int32_t(slot));
          arena_size += length;
          ++slots_used;
        }
        ++committed;
        head = int32_t((head + 1) % K);
        --size;
        freed[nfreed++] = id;
      }
      // The committed warps take the next columns, in order, at the window's back.
      w.sync();  // every lane read the window and the rows lane 0 now writes
      for (int f = 0; f < nfreed && next_column < num_columns; ++f) {
        const index_t column = next_column++;
        const int32_t at = int32_t((head + size) % K);
        const int32_t id = freed[f];
        w.each([&](int lane) {
          if (lane != 0) return;
          sh.take[id] = column;
          sh.window[at] = id;
        });
        ++size;
      }
      const Spill<int32_t> arena = m.arena;
      w.each([&](int lane) {
        if (lane != 0) return;
        sh.arena = arena;
        sh.arena_size = arena_size;
        sh.slots_used = slots_used;
        sh.num_pairs = pairs;
        sh.committed = committed;
        sh.next_column = next_column;
        sh.window_head = head;
        sh.window_size = size;
        sh.status = int32_t(s);
        for (int f = 0; f < nfreed; ++f) sh.stage[freed[f]] = -1;  // done with its column
      });
    });
    blk.sync();

    // ---- Each committed warp: its V to the arena, where the commit put it; every warp takes
    // the arena as the commit left it (grown, perhaps), to read the stored columns from.
    blk.each_warp([&](W& w, int id) {
      (void)w;
      R& r = reducer_of(id);
      r.memory().arena = sh.arena;
      if (sh.write_at[id] >= 0) r.write_v(sh.write_at[id]);
    });
    blk.sync();
  }
  *num_pairs = sh.status == kOk ? sh.num_pairs : 0;
  return Status(sh.status);
}

}  // namespace tsl
