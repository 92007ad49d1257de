// eplb_incremental: the `incremental` EPLB policy's rebalance step (a placement in force ->
// a new one that moves few slots), the same algorithm as the numpy reference in
// src/vllm_ascend/eplb/policies/incremental.py, one layer at a time. A plain C ABI, no torch:
// it is built as its own small library (vllm_ascend._eplb, setup.py, on every architecture)
// and called through ctypes from the planner process, which imports numpy only.
//
//   int eplb_incremental(const double* loads, const int64_t* current, int64_t L, int64_t E,
//                        int64_t S, int64_t num_ranks, int64_t cap, double min_gain,
//                        int64_t partners, double hysteresis, int64_t max_count_steps,
//                        int64_t* out)
//
// loads (L, E) float64 C-contiguous tokens per logical expert; current (L, S) int64 placement
// in force (valid: every expert present, no expert twice on a rank; Python checks it); cap =
// the most slots of a layer the swap search may leave differing from current; out (L, S)
// int64. Returns 0, or -1 for bad sizes / an expert id out of range, or 1 + l when layer l
// has a duplicate it cannot repair (more replicas than ranks).
//
// Steps (incremental.py's docstring): replica counts re-decided from `current`'s
// (adjust_counts, hysteresis, from scratch after max_count_steps moves), slots kept /
// freed / refilled (_reassign), duplicate repair (repair_duplicates), swap search in rounds
// (_swap_search). Every tie is broken as numpy's reference breaks it (first index of a min /
// max, stable orders) and sums over slots, ranks and layers use numpy's pairwise summation
// order, so for inputs without exact ties the two give the same placement. Why C++: the
// reference is ~40 small numpy calls per swap round and takes 5-12 ms for 58 layers x 256
// experts at EP64; the planner target is 5 ms.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kBlocked = 1e300;  // _common.BLOCKED

// numpy's pairwise summation of a contiguous float64 run (umath loops_utils pairwise_sum).
double pairwise_sum(const double* a, int64_t n) {
  if (n < 8) {
    double res = 0.0;
    for (int64_t i = 0; i < n; ++i) res += a[i];
    return res;
  }
  if (n <= 128) {
    double r[8];
    for (int j = 0; j < 8; ++j) r[j] = a[j];
    int64_t i = 8;
    for (; i < n - (n % 8); i += 8)
      for (int j = 0; j < 8; ++j) r[j] += a[i + j];
    double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) res += a[i];
    return res;
  }
  int64_t n2 = n / 2;
  n2 -= n2 % 8;
  return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

int64_t argmax_first(const std::vector<double>& v) {
  return std::max_element(v.begin(), v.end()) - v.begin();  // first of equal maxima
}

int64_t argmin_first(const std::vector<double>& v) {
  return std::min_element(v.begin(), v.end()) - v.begin();
}

struct Layer {
  int64_t E, S, W, k;
  const double* w;     // (E,) loads
  const int64_t* cur;  // (S,) current
  int64_t* p;          // (S,) output placement
  std::vector<double> sw;  // (S,) slot loads (share per replica)

  // _common.replica_counts for one layer: each extra slot to the expert with the highest
  // share (first of equal maxima = lowest id), as a heap. The loop never runs out of
  // candidates: S <= E * W, and with W = 1 there is no extra slot.
  std::vector<int64_t> replica_counts(int64_t max_replicas) const {
    std::vector<int64_t> counts(E, 1);
    if (max_replicas <= 1) return counts;
    using Entry = std::pair<double, int64_t>;  // (share, -expert): max-heap order
    std::vector<Entry> heap;
    heap.reserve(E);
    for (int64_t e = 0; e < E; ++e) heap.emplace_back(w[e], -e);
    std::make_heap(heap.begin(), heap.end());
    for (int64_t i = 0; i < S - E && !heap.empty(); ++i) {
      std::pop_heap(heap.begin(), heap.end());
      const int64_t pick = -heap.back().second;
      heap.pop_back();
      const int64_t c = counts[pick] + 1;
      counts[pick] = c;
      if (c < max_replicas) {
        heap.emplace_back(w[pick] / static_cast<double>(c), -pick);
        std::push_heap(heap.begin(), heap.end());
      }
    }
    return counts;
  }

  // _common.adjust_counts for one layer (max_replicas = W).
  std::vector<int64_t> adjust_counts(const std::vector<int64_t>& have, double hysteresis,
                                     int64_t steps) const {
    std::vector<int64_t> counts(have);
    std::vector<double> give(E), take(E);
    auto update = [&](int64_t e) {
      const double c = static_cast<double>(counts[e]);
      give[e] = counts[e] < W ? w[e] / c : -kInf;
      take[e] = counts[e] > 1 ? w[e] / std::max(c - 1.0, 1.0) : kInf;
    };
    for (int64_t e = 0; e < E; ++e) update(e);
    const double factor = 1.0 + hysteresis;
    for (int64_t it = 0; it <= steps; ++it) {
      int64_t g = argmax_first(give), t = argmin_first(take);
      if (!(give[g] > factor * take[t])) return counts;
      if (it == steps) break;
      counts[g] += 1;
      update(g);
      counts[t] -= 1;
      update(t);
    }
    return replica_counts(W);
  }

  double rank_sum(const std::vector<double>& v, int64_t r) const {
    return pairwise_sum(v.data() + r * k, k);
  }

  // incremental._reassign: keep slots, free the losers' replicas on their most loaded ranks,
  // give freed slots to the gainers (heaviest share first, least loaded rank with room that
  // does not hold the expert). Fills p and sw.
  void reassign(const std::vector<int64_t>& have, const std::vector<int64_t>& target) {
    std::vector<double> per_replica(E);
    for (int64_t e = 0; e < E; ++e) per_replica[e] = w[e] / static_cast<double>(target[e]);
    sw.assign(S, 0.0);
    for (int64_t s = 0; s < S; ++s) {
      p[s] = cur[s];
      sw[s] = per_replica[cur[s]];
    }
    std::vector<int64_t> cand;
    for (int64_t s = 0; s < S; ++s)
      if (have[cur[s]] - target[cur[s]] > 0) cand.push_back(s);
    if (cand.empty()) return;
    std::vector<double> now_w(S), now_rank(W);
    for (int64_t s = 0; s < S; ++s) now_w[s] = w[cur[s]] / static_cast<double>(have[cur[s]]);
    for (int64_t r = 0; r < W; ++r) now_rank[r] = rank_sum(now_w, r);
    // By expert, then most loaded rank first; ties keep slot order (np.lexsort is stable).
    std::stable_sort(cand.begin(), cand.end(), [&](int64_t a, int64_t b) {
      if (cur[a] != cur[b]) return cur[a] < cur[b];
      return -now_rank[a / k] < -now_rank[b / k];
    });
    std::vector<int64_t> room(W, 0);
    int64_t n_free = 0;
    for (size_t i = 0; i < cand.size();) {
      const int64_t e = cand[i];
      const int64_t ex = cur[e];
      const int64_t give_up = have[ex] - target[ex];
      size_t j = i;
      for (; j < cand.size() && cur[cand[j]] == ex; ++j) {
        if (static_cast<int64_t>(j - i) < give_up) {
          p[cand[j]] = -1;
          sw[cand[j]] = 0.0;
          room[cand[j] / k] += 1;
          ++n_free;
        }
      }
      i = j;
    }
    // Gainers, heaviest share first, ties by expert id; each repeated by its gain.
    std::vector<int64_t> gainers;
    for (int64_t e = 0; e < E; ++e)
      if (have[e] - target[e] < 0) gainers.push_back(e);
    std::stable_sort(gainers.begin(), gainers.end(), [&](int64_t a, int64_t b) {
      return -per_replica[a] < -per_replica[b];
    });
    std::vector<int64_t> items;
    for (int64_t e : gainers)
      for (int64_t c = 0; c < target[e] - have[e]; ++c) items.push_back(e);
    std::vector<double> key(W);
    for (int64_t r = 0; r < W; ++r) key[r] = room[r] > 0 ? rank_sum(sw, r) : kInf;
    std::vector<double> val(W);
    std::vector<char> holds(E * W, 0);  // holds[e * W + r]: rank r holds expert e
    for (int64_t s = 0; s < S; ++s)
      if (p[s] >= 0) holds[p[s] * W + s / k] = 1;
    const int64_t n_items = std::min<int64_t>(n_free, items.size());
    for (int64_t j = 0; j < n_items; ++j) {
      const int64_t e = items[j];
      const double we = per_replica[e];
      const char* blocked = holds.data() + e * W;
      for (int64_t r = 0; r < W; ++r) val[r] = key[r] + (blocked[r] ? kBlocked : 0.0);
      const int64_t r = argmin_first(val);
      int64_t pos = 0;
      while (pos < k && p[r * k + pos] != -1) ++pos;
      if (pos == k) pos = 0;  // argmax of an all-false row (cannot happen: r has room)
      p[r * k + pos] = e;
      sw[r * k + pos] = we;
      holds[e * W + r] = 1;
      const int64_t left = room[r] - 1;
      room[r] = left;
      key[r] = left == 0 ? kInf : key[r] + we;
    }
  }

  // _common.repair_duplicates for one layer. Returns false if a duplicate cannot be repaired.
  bool repair_duplicates() {
    std::vector<int64_t> srt(k);
    std::vector<double> load(W), cost(S);
    for (;;) {
      int64_t r = -1, e = -1;
      for (int64_t q = 0; q < W && r < 0; ++q) {
        std::copy(p + q * k, p + (q + 1) * k, srt.begin());
        std::sort(srt.begin(), srt.end());
        for (int64_t j = 0; j + 1 < k; ++j)
          if (srt[j + 1] == srt[j]) {
            r = q;
            e = srt[j];
            break;
          }
      }
      if (r < 0) return true;
      int64_t s = -1;
      for (int64_t j = 0; j < k; ++j)
        if (p[r * k + j] == e) s = r * k + j;
      for (int64_t q = 0; q < W; ++q) load[q] = rank_sum(sw, q);
      std::vector<char> holds_e(W, 0);
      for (int64_t t = 0; t < S; ++t)
        if (p[t] == e) holds_e[t / k] = 1;
      bool any = false;
      for (int64_t t = 0; t < S; ++t) {
        bool on_r = false;
        for (int64_t j = 0; j < k; ++j) on_r |= p[t] == p[r * k + j];
        const bool ok = !holds_e[t / k] && !on_r;
        any |= ok;
        cost[t] = ok ? std::max(load[r] - sw[s] + sw[t], load[t / k] - sw[t] + sw[s]) : kInf;
      }
      if (!any) return false;
      const int64_t t = std::min_element(cost.begin(), cost.end()) - cost.begin();
      std::swap(p[s], p[t]);
      std::swap(sw[s], sw[t]);
    }
  }

  // incremental._swap_search for one layer.
  void swap_search(int64_t cap, double min_gain, int64_t partners) {
    const int64_t pairs = std::min(partners, W / 2);
    if (pairs < 1 || cap < 2) return;
    std::vector<double> rl(W);
    for (int64_t r = 0; r < W; ++r) rl[r] = rank_sum(sw, r);
    const double mean = pairwise_sum(rl.data(), W) / static_cast<double>(W);
    const double tol = min_gain * mean, busy = (1 + 2 * min_gain) * mean;
    int64_t moved = 0;
    for (int64_t s = 0; s < S; ++s) moved += p[s] != cur[s];
    auto active = [&] {
      return moved <= cap - 2 && *std::max_element(rl.begin(), rl.end()) > busy;
    };
    // The P lightest and P heaviest ranks of numpy's stable argsort: (load, rank) order.
    std::vector<int64_t> light(W), heavy(W), best(pairs);
    auto lighter = [&](int64_t a, int64_t b) { return rl[a] < rl[b] || (rl[a] == rl[b] && a < b); };
    auto heavier = [&](int64_t a, int64_t b) { return lighter(b, a); };
    std::vector<char> ok(pairs);
    std::vector<char> l_has_h(k), h_has_l(k);
    for (int64_t round = 0; round < cap && active(); ++round) {
      std::iota(light.begin(), light.end(), 0);
      std::iota(heavy.begin(), heavy.end(), 0);
      std::partial_sort(light.begin(), light.begin() + pairs, light.end(), lighter);
      std::partial_sort(heavy.begin(), heavy.begin() + pairs, heavy.end(), heavier);
      int64_t count = 0;
      bool any = false;
      for (int64_t i = 0; i < pairs; ++i) {
        const int64_t h = heavy[i], l = light[i];
        const int64_t* eh = p + h * k;
        const int64_t* el = p + l * k;
        const double* wh = sw.data() + h * k;
        const double* wl = sw.data() + l * k;
        for (int64_t a = 0; a < k; ++a) {
          bool x = false, y = false;
          for (int64_t b = 0; b < k; ++b) {
            x |= eh[a] == el[b];
            y |= el[a] == eh[b];
          }
          l_has_h[a] = x;
          h_has_l[a] = y;
        }
        double best_v = kInf;
        int64_t best_i = 0;
        for (int64_t a = 0; a < k; ++a)
          for (int64_t b = 0; b < k; ++b) {
            const double d = wh[a] - wl[b];
            if (d <= 0 || l_has_h[a] || h_has_l[b]) continue;
            const double hi = std::max(rl[h] - d, rl[l] + d);
            if (hi < best_v) {
              best_v = hi;
              best_i = a * k + b;
            }
          }
        best[i] = best_i;
        const double gain = rl[h] - best_v;
        bool good = gain > tol && (i == 0 || rl[h] > busy);
        count += good;
        good = good && moved + 2 * count <= cap;
        ok[i] = good;
        any |= good;
      }
      if (!any) break;
      for (int64_t i = 0; i < pairs; ++i) {
        if (!ok[i]) continue;
        const int64_t r1 = heavy[i], r2 = light[i];
        const int64_t s1 = r1 * k + best[i] / k, s2 = r2 * k + best[i] % k;
        const int64_t e1 = p[s1], e2 = p[s2];
        const double w1 = sw[s1], w2 = sw[s2];
        p[s1] = e2;
        p[s2] = e1;
        sw[s1] = w2;
        sw[s2] = w1;
        rl[r1] += w2 - w1;
        rl[r2] += w1 - w2;
        moved += (e2 != cur[s1]) - (e1 != cur[s1]) + (e1 != cur[s2]) - (e2 != cur[s2]);
      }
    }
  }
};

}  // namespace

extern "C" int eplb_incremental(const double* loads, const int64_t* current, int64_t L,
                                int64_t E, int64_t S, int64_t num_ranks, int64_t cap,
                                double min_gain, int64_t partners, double hysteresis,
                                int64_t max_count_steps, int64_t* out) {
  if (L < 0 || E < 1 || num_ranks < 1 || S % num_ranks != 0 || S < E) return -1;
  for (int64_t l = 0; l < L; ++l) {
    Layer layer{E, S, num_ranks, S / num_ranks, loads + l * E, current + l * S, out + l * S, {}};
    std::vector<int64_t> have(E, 0);
    for (int64_t s = 0; s < S; ++s) {
      if (layer.cur[s] < 0 || layer.cur[s] >= E) return -1;
      have[layer.cur[s]] += 1;
    }
    const std::vector<int64_t> target = layer.adjust_counts(have, hysteresis, max_count_steps);
    layer.reassign(have, target);
    if (!layer.repair_duplicates()) return static_cast<int>(1 + l);
    layer.swap_search(cap, min_gain, partners);
  }
  return 0;
}
