// MoE gating and routing of the reference backend as single C++ ops: the forms of
// torch_npu.npu_moe_gating_top_k_softmax, npu_moe_init_routing_v2 and
// npu_moe_finalize_routing that one MoE layer's forward uses
// (src/vllm_ascend/device/reference/moe_fast.py decides which argument combinations come
// here; everything else runs the reference's Python in moe.py, which stays the oracle).
//
//   moe_gating_topk_softmax(Tensor x, int k) -> (Tensor y, Tensor expert_idx, Tensor row_idx)
//     x (N, E) fp32 contiguous. probs = at::softmax(x, -1) (the reference's own kernel, so
//     the values are bit-identical), then per row the top k in descending order, ties to the
//     lower expert index (the reference's stable descending sort; NaN sorts above every
//     number, as torch.sort puts it first). y (N, k) fp32, expert_idx (N, k) int32,
//     row_idx (N, k) int32 = j*N + i.
//
//   moe_init_routing(Tensor x, Tensor expert_idx, int expert_num, int start, int end,
//                    int active_num, int tokens_type, bool tokens_flag)
//       -> (Tensor expanded_x, Tensor expanded_row_idx, Tensor expert_tokens,
//           Tensor expanded_scale)
//     Dropless routing without quantisation: pairs f = i*K + j sorted stably by expert (a
//     counting sort: exact, the same order as the reference's stable argsort), experts in
//     [start, end) kept, the first R = N*K (or min(active_num, N*K)) of them filled.
//     expanded_x (R, H) in x's dtype, rows past the filled ones 0; expanded_row_idx (N*K,)
//     int32 (-1 for a dropped pair); expert_tokens int64 counts (tokens_type 1) or their
//     cumulative sums (0) per expert of the range, empty without tokens_flag;
//     expanded_scale (R,) fp32 zeros. Ids outside [0, expert_num) raise ValueError with the
//     reference's message.
//
//   moe_finalize_routing(Tensor rows, Tensor? scales, Tensor src_to_dst, int k,
//                        bool row_major) -> Tensor
//     out[i] = sum_j scales[i, j] * rows[d] with d = src_to_dst[i*K + j] (row_major, the
//     init_routing_v2 layout) or src_to_dst[j*N + i]; d outside [0, R) adds 0. Accumulated
//     in fp32, j ascending, each product rounded (torch's sum may pair the terms: fp32
//     tolerance against the reference), returned in rows' dtype (fp32 or bf16).
//
// Every output shape depends only on input shapes, so the meta kernels keep N symbolic.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

namespace {

// a ranks above b in a descending sort that puts NaN first (torch.sort, descending=True).
inline bool above(float a, float b) {
  if (std::isnan(a)) return !std::isnan(b);
  return !std::isnan(b) && a > b;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gating_topk_softmax_cpu(const at::Tensor& x,
                                                                       int64_t k) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat,
              "moe_gating_topk_softmax: x must be (N, E) fp32");
  const int64_t n = x.size(0), e = x.size(1);
  TORCH_CHECK_VALUE(k >= 1 && k <= e, "k=", k, " must be in [1, ", e,
                    "] (the number of experts)");
  const at::Tensor probs = at::softmax(x, -1).contiguous();
  at::Tensor y = at::empty({n, k}, x.options());
  at::Tensor idx = at::empty({n, k}, x.options().dtype(at::kInt));
  at::Tensor row_idx = at::empty({n, k}, x.options().dtype(at::kInt));
  const float* p = probs.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  int32_t* ip = idx.data_ptr<int32_t>();
  int32_t* rp = row_idx.data_ptr<int32_t>();
  at::parallel_for(0, n, 64, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const float* row = p + i * e;
      float* vals = yp + i * k;
      int32_t* ids = ip + i * k;
      int64_t have = 0;
      for (int64_t c = 0; c < e; ++c) {
        const float v = row[c];
        if (have == k && !above(v, vals[k - 1])) continue;
        // Insert after every kept value that ranks at or above v (stable: lower index first).
        int64_t pos = have < k ? have : k - 1;
        while (pos > 0 && above(v, vals[pos - 1])) {
          vals[pos] = vals[pos - 1];
          ids[pos] = ids[pos - 1];
          --pos;
        }
        vals[pos] = v;
        ids[pos] = static_cast<int32_t>(c);
        if (have < k) ++have;
      }
      for (int64_t j = 0; j < k; ++j) rp[i * k + j] = static_cast<int32_t>(j * n + i);
    }
  });
  return {y, idx, row_idx};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gating_topk_softmax_meta(const at::Tensor& x,
                                                                        int64_t k) {
  return {at::empty_symint({x.sym_size(0), k}, x.options()),
          at::empty_symint({x.sym_size(0), k}, x.options().dtype(at::kInt)),
          at::empty_symint({x.sym_size(0), k}, x.options().dtype(at::kInt))};
}

template <typename I>
void sort_pairs(const I* ids, int64_t pairs, int64_t expert_num, int64_t start, int64_t end,
                std::vector<int64_t>& counts, std::vector<int64_t>& dest) {
  for (int64_t f = 0; f < pairs; ++f) {
    const int64_t v = static_cast<int64_t>(ids[f]);
    TORCH_CHECK_VALUE(expert_num <= 0 || (v >= 0 && v < expert_num),
                      "expert_idx values must be in [0, expert_num=", expert_num, ")");
    if (v >= start && v < end) ++counts[v - start];
  }
  std::vector<int64_t> next(counts.size());
  int64_t at_ = 0;
  for (size_t e = 0; e < counts.size(); ++e) {
    next[e] = at_;
    at_ += counts[e];
  }
  for (int64_t f = 0; f < pairs; ++f) {
    const int64_t v = static_cast<int64_t>(ids[f]);
    dest[f] = (v >= start && v < end) ? next[v - start]++ : -1;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> init_routing_cpu(
    const at::Tensor& x, const at::Tensor& expert_idx, int64_t expert_num, int64_t start,
    int64_t end, int64_t active_num, int64_t tokens_type, bool tokens_flag) {
  TORCH_CHECK(x.dim() == 2 && expert_idx.dim() == 2 && expert_idx.size(0) == x.size(0),
              "moe_init_routing: x must be (N, H) and expert_idx (N, K)");
  TORCH_CHECK(expert_idx.scalar_type() == at::kInt || expert_idx.scalar_type() == at::kLong,
              "moe_init_routing: expert_idx must be int32 or int64");
  TORCH_CHECK(0 <= start && start <= end && (tokens_type == 0 || tokens_type == 1),
              "moe_init_routing: bad range or tokens_type");
  const int64_t n = x.size(0), k = expert_idx.size(1), h = x.size(1), pairs = n * k;
  const int64_t rows = active_num < 0 ? pairs : std::min(active_num, pairs);
  const at::Tensor ids = expert_idx.contiguous();
  std::vector<int64_t> counts(end - start, 0), dest(pairs);
  if (ids.scalar_type() == at::kInt) {
    sort_pairs(ids.data_ptr<int32_t>(), pairs, expert_num, start, end, counts, dest);
  } else {
    sort_pairs(ids.data_ptr<int64_t>(), pairs, expert_num, start, end, counts, dest);
  }
  const at::Tensor xc = x.contiguous();
  at::Tensor expanded_x = at::empty({rows, h}, x.options());
  at::Tensor row_idx = at::empty({pairs}, x.options().dtype(at::kInt));
  int32_t* rip = row_idx.data_ptr<int32_t>();
  const int64_t bytes = h * static_cast<int64_t>(x.element_size());
  const char* src = static_cast<const char*>(xc.data_ptr());
  char* dst = static_cast<char*>(expanded_x.data_ptr());
  int64_t filled = 0;
  for (int64_t f = 0; f < pairs; ++f) {
    const int64_t p = dest[f] < rows ? dest[f] : -1;  // past active_num: dropped
    rip[f] = static_cast<int32_t>(p);
    if (p < 0) continue;
    std::memcpy(dst + p * bytes, src + (f / k) * bytes, bytes);
    ++filled;
  }
  if (filled < rows) std::memset(dst + filled * bytes, 0, (rows - filled) * bytes);
  at::Tensor tokens = at::empty({tokens_flag ? end - start : 0}, x.options().dtype(at::kLong));
  if (tokens_flag) {
    int64_t* tp = tokens.data_ptr<int64_t>();
    int64_t before = 0;  // kept pairs of the experts before e, truncated at rows
    for (int64_t e = 0; e < end - start; ++e) {
      const int64_t upto = std::min(before + counts[e], rows);
      const int64_t got = std::max<int64_t>(0, upto - std::min(before, rows));
      before += counts[e];
      tp[e] = tokens_type == 1 ? got : (e ? tp[e - 1] : 0) + got;
    }
  }
  return {expanded_x, row_idx, tokens, at::zeros({rows}, x.options().dtype(at::kFloat))};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> init_routing_meta(
    const at::Tensor& x, const at::Tensor& expert_idx, int64_t expert_num, int64_t start,
    int64_t end, int64_t active_num, int64_t tokens_type, bool tokens_flag) {
  c10::SymInt pairs = x.sym_size(0) * expert_idx.sym_size(1);
  c10::SymInt rows = active_num < 0 ? pairs : pairs.min(c10::SymInt(active_num));
  return {at::empty_symint({rows, x.sym_size(1)}, x.options()),
          at::empty_symint({pairs}, x.options().dtype(at::kInt)),
          at::empty({tokens_flag ? end - start : 0}, x.options().dtype(at::kLong)),
          at::empty_symint({rows}, x.options().dtype(at::kFloat))};
}

template <typename T>
inline float as_float(T v) {
  return static_cast<float>(v);
}

template <typename T>
void finalize_rows(const T* rows, int64_t r, int64_t h, const float* scales,
                   const int64_t* idx, int64_t n, int64_t k, bool row_major, T* out) {
  at::parallel_for(0, n, 16, [&](int64_t lo, int64_t hi) {
    std::vector<float> acc(h);
    for (int64_t i = lo; i < hi; ++i) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t j = 0; j < k; ++j) {
        const int64_t d = idx[row_major ? i * k + j : j * n + i];
        if (d < 0 || d >= r) continue;  // a dropped pair (or one outside rows) adds 0
        const float w = scales ? scales[i * k + j] : 1.0f;
        const T* src = rows + d * h;
        for (int64_t c = 0; c < h; ++c) {
          const float prod = as_float(src[c]) * w;  // rounded, then added (no FMA)
          acc[c] = acc[c] + prod;
        }
      }
      T* o = out + i * h;
      for (int64_t c = 0; c < h; ++c) o[c] = static_cast<T>(acc[c]);
    }
  });
}

at::Tensor finalize_routing_cpu(const at::Tensor& rows, const c10::optional<at::Tensor>& scales,
                                const at::Tensor& src_to_dst, int64_t k, bool row_major) {
  TORCH_CHECK(rows.dim() == 2 && (rows.scalar_type() == at::kFloat ||
                                  rows.scalar_type() == at::kBFloat16),
              "moe_finalize_routing: rows must be (R, H) fp32 or bf16");
  const int64_t total = src_to_dst.numel();
  TORCH_CHECK_VALUE(k >= 1 && total % k == 0, "expanded_src_to_dst_row has ", total,
                    " entries, not a multiple of k=", k);
  const int64_t n = total / k, h = rows.size(1), r = rows.size(0);
  at::Tensor w;
  if (scales) {
    TORCH_CHECK_VALUE(scales->numel() == total && scales->size(-1) == k,
                      "scales must have shape (", n, ", ", k, "), got ", scales->sizes());
    w = scales->to(at::kFloat).contiguous();
  }
  const at::Tensor idx = src_to_dst.reshape(-1).to(at::kLong).contiguous();
  const at::Tensor rc = rows.contiguous();
  at::Tensor out = at::empty({n, h}, rows.options());
  const float* wp = w.defined() ? w.data_ptr<float>() : nullptr;
  if (rows.scalar_type() == at::kFloat) {
    finalize_rows(rc.data_ptr<float>(), r, h, wp, idx.data_ptr<int64_t>(), n, k, row_major,
                  out.data_ptr<float>());
  } else {
    finalize_rows(rc.data_ptr<at::BFloat16>(), r, h, wp, idx.data_ptr<int64_t>(), n, k,
                  row_major, out.data_ptr<at::BFloat16>());
  }
  return out;
}

at::Tensor finalize_routing_meta(const at::Tensor& rows, const c10::optional<at::Tensor>& scales,
                                 const at::Tensor& src_to_dst, int64_t k, bool row_major) {
  return at::empty_symint({src_to_dst.sym_numel() / k, rows.sym_size(1)}, rows.options());
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vllm_ascend, m) {
  m.def("moe_gating_topk_softmax(Tensor x, int k) -> (Tensor, Tensor, Tensor)");
  m.def("moe_init_routing(Tensor x, Tensor expert_idx, int expert_num, int start, int end, "
        "int active_num, int tokens_type, bool tokens_flag) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("moe_finalize_routing(Tensor rows, Tensor? scales, Tensor src_to_dst, int k, "
        "bool row_major) -> Tensor");
}

TORCH_LIBRARY_IMPL(vllm_ascend, CPU, m) {
  m.impl("moe_gating_topk_softmax", &gating_topk_softmax_cpu);
  m.impl("moe_init_routing", &init_routing_cpu);
  m.impl("moe_finalize_routing", &finalize_routing_cpu);
}

TORCH_LIBRARY_IMPL(vllm_ascend, Meta, m) {
  m.impl("moe_gating_topk_softmax", &gating_topk_softmax_meta);
  m.impl("moe_init_routing", &init_routing_meta);
  m.impl("moe_finalize_routing", &finalize_routing_meta);
}
