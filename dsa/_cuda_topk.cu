// One-block-per-row exact top-k and index mask (dsa._cuda_topk): compiled at run time by NVRTC.
//
// Compile-time macros: SCORE_KIND and MASK_KIND (0 float32, 1 bfloat16, 2 float16).
// One block of NT threads owns one row of `length` scores, read in tiles: in a tile thread t
// holds vectors of 4 consecutive scores, vector v at positions base + 4 * (v * NT + t) .. + 3
// (one 16- or 8-byte load where every row starts on a 4-score boundary), V vectors in the
// counting passes (TILE scores a tile, V * NT vector loads in flight) and VC in the compaction,
// which holds its keys across two block-wide scans. The block
//   1. histograms the top 11 bits of every score's order-preserving 32-bit key (a quarter of an
//      octave) in shared memory, and writes -inf over the mask row;
//   2. finds the bin of the k-th largest key, copies that bin's keys into shared memory (when
//      they fit; else the next passes read the row again), and narrows the threshold on bits
//      20..10, then 9..0, of the keys of the bin, stopping once every key matching the bits
//      fixed so far is a pick: the threshold T is the k-th largest key, `owed` the picks owed
//      among the keys equal to it (lower positions first);
//   3. compacts the picks in position order (every key above T, the first `owed` keys equal to
//      T; ranks from warp prefix sums and a block prefix over the warps), writing the finite
//      picks' positions (index order) or sorting the packed picks (score order), and the
//      mask's zeros.
// Keys: -0.0 folds into +0.0, every NaN becomes the largest key, so key order is float order
// with NaN above +inf (torch.topk's ranking).

#define NT 1024
#define NWARPS (NT / 32)
#define V 8                  // vectors per thread and tile in the counting passes
#define TILE (4 * V * NT)
#define VC 4                 // in the compaction, which holds its keys across two block scans
#define TILE_C (4 * VC * NT)
#define FULL 0xffffffffu
#define HBINS 2048

typedef unsigned int u32;
typedef unsigned long long u64;

#if SCORE_KIND == 0
typedef float score_t;
#else
typedef unsigned short score_t;
#endif
#if MASK_KIND == 0
typedef float mask_t;
#else
typedef unsigned short mask_t;
#endif

__device__ __forceinline__ float to_float(score_t s) {
#if SCORE_KIND == 0
  return s;
#elif SCORE_KIND == 1
  return __uint_as_float(((u32)s) << 16);
#else
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(s));
  return f;
#endif
}

__device__ __forceinline__ u32 ordered_key(float x) {
  if (x != x) return 0xffffffffu;  // NaN: above +inf
  if (x == 0.0f) x = 0.0f;          // -0.0 and +0.0: one key
  const u32 bits = __float_as_uint(x);
  return bits ^ ((bits >> 31) ? 0xffffffffu : 0x80000000u);
}

__device__ __forceinline__ bool finite_key(u32 key) {
  return key > 0x007fffffu && key < 0xff800000u;  // strictly between -inf's and +inf's keys
}

// The keys of the 4 scores from position p (p % 4 == 0); 0 (below every key) past the end.
__device__ __forceinline__ void load_keys(const score_t* row, int p, int length, bool vec,
                                          u32 key[4]) {
  if (vec && p + 3 < length) {
#if SCORE_KIND == 0
    const float4 f = __ldg(reinterpret_cast<const float4*>(row + p));
    key[0] = ordered_key(f.x);
    key[1] = ordered_key(f.y);
    key[2] = ordered_key(f.z);
    key[3] = ordered_key(f.w);
#else
    const uint2 h = __ldg(reinterpret_cast<const uint2*>(row + p));
    key[0] = ordered_key(to_float((score_t)(h.x & 0xffffu)));
    key[1] = ordered_key(to_float((score_t)(h.x >> 16)));
    key[2] = ordered_key(to_float((score_t)(h.y & 0xffffu)));
    key[3] = ordered_key(to_float((score_t)(h.y >> 16)));
#endif
  } else {
#pragma unroll
    for (int e = 0; e < 4; ++e)
      key[e] = p + e < length ? ordered_key(to_float(__ldg(row + p + e))) : 0u;
  }
}

// Calls f(key, p) for every vector of the row that starts before `length`: key[0..3] the keys
// of the scores at p .. p + 3 (0 past the end). A tile's V loads a thread are issued first.
template <typename F>
__device__ __forceinline__ void for_each_vector(const score_t* row, int length, bool vec, F f) {
  for (int base = 0; base < length; base += TILE) {
    u32 key[V][4];
#pragma unroll
    for (int v = 0; v < V; ++v)
      load_keys(row, base + 4 * (v * NT + (int)threadIdx.x), length, vec, key[v]);
#pragma unroll
    for (int v = 0; v < V; ++v) {
      const int p = base + 4 * (v * NT + (int)threadIdx.x);
      if (p < length) f(key[v], p);
    }
  }
}

__device__ __forceinline__ mask_t mask_value(bool zero) {
#if MASK_KIND == 0
  return zero ? 0.0f : __uint_as_float(0xff800000u);
#elif MASK_KIND == 1
  return zero ? (mask_t)0 : (mask_t)0xff80;
#else
  return zero ? (mask_t)0 : (mask_t)0xfc00;
#endif
}

// -inf over the 4 mask entries from p (p % 4 == 0), those before `length`.
__device__ __forceinline__ void fill_mask(mask_t* row, int p, int length, bool vec) {
  if (vec && p + 3 < length) {
#if MASK_KIND == 0
    const float n = __uint_as_float(0xff800000u);
    *reinterpret_cast<float4*>(row + p) = make_float4(n, n, n, n);
#elif MASK_KIND == 1
    *reinterpret_cast<uint2*>(row + p) = make_uint2(0xff80ff80u, 0xff80ff80u);
#else
    *reinterpret_cast<uint2*>(row + p) = make_uint2(0xfc00fc00u, 0xfc00fc00u);
#endif
  } else {
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (p + e < length) row[p + e] = mask_value(false);
  }
}

struct Scratch {
  u32 warp_counts[VC * NWARPS];  // per (vector, warp): flagged scores, then their exclusive prefix
  u32 vector_totals[VC];
  u64 scan[NWARPS];
  u32 choice_bin, choice_owed, choice_count, cached;
};

// Ranks in position order of the flagged scores of one tile. flags[v]: bit e flags the score
// at position base + 4 * (v * NT + t) + e. Returns in first[v] the rank (within the tile) of
// this thread's first flagged score of vector v; the tile's count in *total. Block-wide.
__device__ __forceinline__ void tile_ranks(const u32 flags[VC], u32 first[VC], u32* total,
                                           Scratch* s) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  u32 lane_before[VC];
#pragma unroll
  for (int v = 0; v < VC; ++v) {
    const u32 c = __popc(flags[v]);
    u32 x = c;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const u32 y = __shfl_up_sync(FULL, x, o);
      if (lane >= o) x += y;
    }
    lane_before[v] = x - c;
    if (lane == 31) s->warp_counts[v * NWARPS + warp] = x;
  }
  __syncthreads();
  if (warp < VC) {  // warp w: the exclusive prefix of vector w's warp counts, and their total
    const u32 c = s->warp_counts[warp * NWARPS + lane];
    u32 x = c;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const u32 y = __shfl_up_sync(FULL, x, o);
      if (lane >= o) x += y;
    }
    s->warp_counts[warp * NWARPS + lane] = x - c;
    if (lane == 31) s->vector_totals[warp] = x;
  }
  __syncthreads();
  u32 run = 0u;
#pragma unroll
  for (int v = 0; v < VC; ++v) {
    first[v] = run + s->warp_counts[v * NWARPS + warp] + lane_before[v];
    run += s->vector_totals[v];
  }
  *total = run;
  __syncthreads();  // the scratch is reused by the next call
}

// Exclusive prefix sum of v over the block and its total. Block-wide.
__device__ __forceinline__ u64 block_scan(u64 v, Scratch* s, u64* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  u64 x = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const u64 y = __shfl_up_sync(FULL, x, o);
    if (lane >= o) x += y;
  }
  if (lane == 31) s->scan[warp] = x;
  __syncthreads();
  if (warp == 0) {
    u64 a = s->scan[lane];
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const u64 y = __shfl_up_sync(FULL, a, o);
      if (lane >= o) a += y;
    }
    s->scan[lane] = a;
  }
  __syncthreads();
  const u64 before = (warp ? s->scan[warp - 1] : 0ull) + x - v;
  *total = s->scan[NWARPS - 1];
  __syncthreads();
  return before;
}

// The bin of the `need`-th largest key from a histogram of `bins` (<= 2 * NT) bins: the
// largest bin whose keys and those of every bin above number at least `need`; also the picks
// owed among its keys and their count. Block-wide.
__device__ __forceinline__ void choose(const u32* hist, int bins, u32 need, Scratch* s,
                                       u32* bin, u32* owed, u32* count) {
  const int t = threadIdx.x;
  const int b0 = bins - 1 - 2 * t, b1 = bins - 2 - 2 * t;  // descending
  const u32 h0 = b0 >= 0 ? hist[b0] : 0u, h1 = b1 >= 0 ? hist[b1] : 0u;
  u64 total;
  const u32 above = (u32)block_scan((u64)(h0 + h1), s, &total);
  if (b0 >= 0 && above < need && above + h0 >= need) {
    s->choice_bin = (u32)b0;
    s->choice_owed = need - above;
    s->choice_count = h0;
  }
  if (b1 >= 0 && above + h0 < need && above + h0 + h1 >= need) {
    s->choice_bin = (u32)b1;
    s->choice_owed = need - above - h0;
    s->choice_count = h1;
  }
  __syncthreads();
  *bin = s->choice_bin;
  *owed = s->choice_owed;
  *count = s->choice_count;
  __syncthreads();
}

static_assert(sizeof(Scratch) <= 1024, "the scratch must fit its kilobyte");

extern "C" __global__ void __launch_bounds__(NT, 1) topk_mask_rows(
    const score_t* __restrict__ scores, long long* __restrict__ out, mask_t* __restrict__ mask,
    unsigned char* __restrict__ has_keys, int length, int k, int stride_scores, int stride_out,
    int stride_mask, int has_mask, int write_has_keys, int by_score, int cache_cap,
    int vec_scores, int vec_mask) {
  extern __shared__ __align__(16) unsigned char smem[];
  u32* hist = reinterpret_cast<u32*>(smem);                          // HBINS
  Scratch* s = reinterpret_cast<Scratch*>(smem + HBINS * 4);
  unsigned char* tail = smem + HBINS * 4 + 1024;  // dsa/_cuda_topk.py: _SMEM_HEAD
  u32* cache = reinterpret_cast<u32*>(tail);     // cache_cap keys of the threshold's bin
  u64* sorted = reinterpret_cast<u64*>(tail);    // score order: the packed picks (reuses it)

  const int t = threadIdx.x;
  const long long row = blockIdx.x;
  const score_t* src = scores + row * (long long)stride_scores;
  mask_t* mrow = has_mask ? mask + row * (long long)stride_mask : mask;
  long long* orow = out + row * (long long)stride_out;
  const bool vec = vec_scores != 0, mvec = vec_mask != 0;
  const u32 take = (u32)min(k, length);

  // 1. Histogram of the top 11 bits; the mask's -inf.
  for (int i = t; i < HBINS; i += NT) hist[i] = 0u;
  if (t == 0) s->cached = 0u;
  __syncthreads();
  for_each_vector(src, length, vec, [&](const u32* key, int p) {
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (p + e < length) atomicAdd(&hist[key[e] >> 21], 1u);
    if (has_mask) fill_mask(mrow, p, length, mvec);
  });
  __syncthreads();

  // 2. The threshold: the k-th largest key T and the picks owed among the keys equal to it.
  u32 threshold = 0u, owed = 0u;
  bool all_ties = true;  // every key equal to T is a pick: select key >= T
  if (take > 0) {
    u32 bin, count;
    choose(hist, HBINS, take, s, &bin, &owed, &count);
    u32 prefix = bin;  // the top bits of T fixed so far
    int fixed = 11;    // how many
    if (count > owed) {
      // narrow within the bin: copy its keys to shared memory when they fit
      const bool cached = count <= (u32)cache_cap;
      if (cached) {
        for_each_vector(src, length, vec, [&](const u32* key, int p) {
#pragma unroll
          for (int e = 0; e < 4; ++e)
            if (p + e < length && (key[e] >> 21) == prefix) cache[atomicAdd(&s->cached, 1u)] = key[e];
        });
        __syncthreads();
      }
      u32 matching = count;
      // passes on bits 20..10 (2048 bins), then 9..0 (1024 bins), among the keys matching the
      // fixed bits; stop once every matching key is a pick
      for (int pass = 0; pass < 2 && matching > owed; ++pass) {
        const int width = pass == 0 ? 11 : 10;
        const int shift = 32 - fixed - width;  // 10, then 0
        const int bins = 1 << width;
        for (int i = t; i < bins; i += NT) hist[i] = 0u;
        __syncthreads();
        if (cached) {
          for (u32 i = t; i < count; i += NT) {
            const u32 key = cache[i];
            if ((key >> (shift + width)) == prefix)
              atomicAdd(&hist[(key >> shift) & (bins - 1)], 1u);
          }
        } else {
          for_each_vector(src, length, vec, [&](const u32* key, int p) {
#pragma unroll
            for (int e = 0; e < 4; ++e)
              if (p + e < length && (key[e] >> (shift + width)) == prefix)
                atomicAdd(&hist[(key[e] >> shift) & (bins - 1)], 1u);
          });
        }
        __syncthreads();
        u32 sub;
        choose(hist, bins, owed, s, &sub, &owed, &matching);
        prefix = (prefix << width) | sub;
        fixed += width;
      }
      all_ties = matching == owed;
    }
    threshold = fixed == 32 ? prefix : prefix << (32 - fixed);
  }

  // 3. Compaction in position order: every key above T and the first `owed` keys equal to it
  // (or every key >= T); finite picks by position or packed for the sort; the mask's zeros.
  u32 picked = 0u, finite_picked = 0u, ties_seen = 0u;
  if (take > 0) {
    for (int base = 0; base < length; base += TILE_C) {
      u32 key[VC][4];
#pragma unroll
      for (int v = 0; v < VC; ++v) load_keys(src, base + 4 * (v * NT + t), length, vec, key[v]);
      u32 sel[VC], fin[VC], rank[VC], total;
      if (all_ties) {
#pragma unroll
        for (int v = 0; v < VC; ++v) {
          sel[v] = 0u;
          const int p = base + 4 * (v * NT + t);
#pragma unroll
          for (int e = 0; e < 4; ++e)
            if (p + e < length && key[v][e] >= threshold) sel[v] |= 1u << e;
        }
      } else {
        u32 tie[VC];
#pragma unroll
        for (int v = 0; v < VC; ++v) {
          tie[v] = 0u;
          const int p = base + 4 * (v * NT + t);
#pragma unroll
          for (int e = 0; e < 4; ++e)
            if (p + e < length && key[v][e] == threshold) tie[v] |= 1u << e;
        }
        tile_ranks(tie, rank, &total, s);
#pragma unroll
        for (int v = 0; v < VC; ++v) {
          sel[v] = 0u;
          u32 r = ties_seen + rank[v];
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            if (key[v][e] > threshold && key[v][e] != 0u) sel[v] |= 1u << e;
            if (tie[v] >> e & 1u) {
              if (r < owed) sel[v] |= 1u << e;
              ++r;
            }
          }
        }
        ties_seen += total;
      }
#pragma unroll
      for (int v = 0; v < VC; ++v) {
        fin[v] = 0u;
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if ((sel[v] >> e & 1u) && finite_key(key[v][e])) fin[v] |= 1u << e;
      }
      tile_ranks(by_score ? sel : fin, rank, &total, s);
#pragma unroll
      for (int v = 0; v < VC; ++v) {
        const int p = base + 4 * (v * NT + t);
        u32 slot = (by_score ? picked : finite_picked) + rank[v];
        const u32 chosen = by_score ? sel[v] : fin[v];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          if (chosen >> e & 1u) {
            if (by_score)
              sorted[slot] = ((u64)key[v][e] << 32) | (u64)(0x7fffffffu - (u32)(p + e));
            else
              orow[slot] = (long long)(p + e);
            ++slot;
          }
          if (has_mask && (fin[v] >> e & 1u)) mrow[p + e] = mask_value(true);
        }
      }
      if (by_score) {
        picked += total;
        u32 fin_total, unused[VC];
        tile_ranks(fin, unused, &fin_total, s);
        finite_picked += fin_total;
      } else {
        finite_picked += total;
      }
    }
  }

  if (by_score) {
    // 3'. Sort the packed picks (descending key, then ascending position) and write positions;
    // -1 for non-finite picks and for the slots past them.
    int n = 1;
    while (n < (int)take) n <<= 1;
    for (int i = (int)take + t; i < n; i += NT) sorted[i] = 0ull;  // below every real key
    __syncthreads();
    for (int size = 2; size <= n; size <<= 1) {
      for (int stride = size >> 1; stride > 0; stride >>= 1) {
        for (int i = t; i < n; i += NT) {
          const int partner = i ^ stride;
          if (partner > i) {
            const bool descending = (i & size) == 0;
            const u64 a = sorted[i], b = sorted[partner];
            if ((a < b) == descending) {
              sorted[i] = b;
              sorted[partner] = a;
            }
          }
        }
        __syncthreads();
      }
    }
    for (int i = t; i < k; i += NT) {
      long long value = -1;
      if (i < (int)take) {
        const u64 packed = sorted[i];
        if (finite_key((u32)(packed >> 32)))
          value = (long long)(0x7fffffffu - (u32)(packed & 0xffffffffull));
      }
      orow[i] = value;
    }
  } else {
    for (int i = (int)finite_picked + t; i < k; i += NT) orow[i] = -1;
  }
  if (write_has_keys && t == 0) has_keys[row] = finite_picked > 0 ? 1 : 0;
}
