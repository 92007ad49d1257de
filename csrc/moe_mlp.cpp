// The float SwiGLU expert MLP, y = (silu(x W_gate) * (x W_up)) W_down per expert, as one call
// into vLLM's CPU MoE kernel (`_C::cpu_fused_moe`, reached through the dispatcher: this
// library does not link vLLM). Two entry points:
//
//   grouped_swiglu_mlp(Tensor x, Tensor group_list, Tensor w13, Tensor w2, str isa) -> Tensor
//     x (rows, H) already grouped by expert; group_list (L,) int32/int64 rows per expert
//     (sum <= rows; rows past the sum come out 0). Each row goes to the kernel as
//     topk_ids = its expert with weight 1.0 (an exact product).
//   swiglu_moe(Tensor x, Tensor topk_weights, Tensor topk_ids, Tensor w13, Tensor w2, str isa)
//     -> Tensor
//     x (M, H) in token order; topk_weights fp32 and topk_ids int32 (M, K), ids in [0, L):
//     out[m] = sum_j topk_weights[m, j] * mlp_{topk_ids[m, j]}(x[m]), the kernel's own routing
//     (dispatch, grouped MLP and combine of a rank that holds every expert, in one call).
//
// x fp32/bf16 contiguous; w13 (L, H, 2I) gate | up and w2 (L, I, H) in x's dtype (the
// plugin's grouped-matmul layout). The kernel wants vLLM's layout (L, 2I, H) / (L, H, I)
// prepacked (`_C::prepack_moe_weight`): built once per weight tensor and kept in a C++ cache
// (csrc/tensor_cache.h: rebuilt after an in-place write, e.g. an EPLB expert move, dropped
// with the weight). `moe_mlp_cache(bool clear) -> int` counts the packs built (tests).
//
// src/vllm_ascend/device/reference/moe_mlp_fast.py decides when these apply (alignment,
// dtypes, vLLM's kernel loaded) and documents the tolerance.

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cstdint>
#include <string>

#include "tensor_cache.h"

namespace {

c10::OperatorHandle op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

vllm_ascend::TensorCache<at::Tensor>& cache() {
  static auto* c = new vllm_ascend::TensorCache<at::Tensor>();  // never destroyed (see onednn)
  return *c;
}

const at::Tensor& prepacked(const at::Tensor& w, const std::string& isa) {
  static auto prepack = op("_C::prepack_moe_weight")
                            .typed<void(const at::Tensor&, at::Tensor&, const std::string&)>();
  const int64_t tag = static_cast<int64_t>(std::hash<std::string>{}(isa));
  return cache().get(w, tag, [&](const at::Tensor& t) {
    at::Tensor vllm_layout = t.transpose(1, 2).contiguous();
    at::Tensor packed = at::empty_like(vllm_layout);
    prepack.call(vllm_layout, packed, isa);
    return packed;
  });
}

// x (rows, H), w13 (L, H, 2I), w2 (L, I, H): same float dtype, contiguous.
void check_mlp(const char* name, const at::Tensor& x, const at::Tensor& w13,
               const at::Tensor& w2) {
  TORCH_CHECK(x.dim() == 2 && w13.dim() == 3 && w2.dim() == 3, name,
              ": x (rows, H), w13 (L, H, 2I), w2 (L, I, H) expected, got ", x.sizes(), ", ",
              w13.sizes(), ", ", w2.sizes());
  const int64_t hidden = x.size(1), local = w13.size(0), inter = w13.size(2) / 2;
  TORCH_CHECK(w13.size(1) == hidden && w13.size(2) == 2 * inter && w2.size(0) == local &&
                  w2.size(1) == inter && w2.size(2) == hidden,
              name, ": shapes disagree: x ", x.sizes(), ", w13 ", w13.sizes(), ", w2 ",
              w2.sizes());
  TORCH_CHECK(x.scalar_type() == w13.scalar_type() && x.scalar_type() == w2.scalar_type() &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              name, ": x, w13 and w2 must all be fp32 or all bf16");
  TORCH_CHECK(x.is_contiguous() && w13.is_contiguous() && w2.is_contiguous(), name,
              ": contiguous x, w13, w2 expected");
}

// out (T, H) = sum_j weights[t, j] * mlp_{ids[t, j]}(x[t]) through vLLM's kernel.
void run_kernel(at::Tensor& out, const at::Tensor& x, const at::Tensor& w13,
                const at::Tensor& w2, const at::Tensor& weights, const at::Tensor& ids,
                c10::string_view isa) {
  static auto fused = op("_C::cpu_fused_moe")
                          .typed<void(at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      const at::Tensor&, const c10::optional<at::Tensor>&,
                                      const c10::optional<at::Tensor>&, const at::Tensor&,
                                      const at::Tensor&, bool, const std::string&,
                                      const std::string&)>();
  const std::string isa_s(isa);
  const at::Tensor p13 = prepacked(w13, isa_s);  // copies: the next build may move entries
  const at::Tensor p2 = prepacked(w2, isa_s);
  fused.call(out, x, p13, p2, c10::nullopt, c10::nullopt, weights, ids, false,
             std::string("silu"), isa_s);
}

at::Tensor grouped_swiglu_mlp_cpu(const at::Tensor& x, const at::Tensor& group_list,
                                  const at::Tensor& w13, const at::Tensor& w2,
                                  c10::string_view isa) {
  check_mlp("grouped_swiglu_mlp", x, w13, w2);
  const int64_t rows = x.size(0), local = w13.size(0);
  TORCH_CHECK(group_list.dim() == 1 && group_list.size(0) == local,
              "grouped_swiglu_mlp: group_list must be (L=", local, ",), got ",
              group_list.sizes());
  const at::Tensor counts = group_list.to(at::kLong).contiguous();
  const int64_t* c = counts.data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t e = 0; e < local; ++e) {
    TORCH_CHECK(c[e] >= 0, "grouped_swiglu_mlp: group_list[", e, "] = ", c[e], " < 0");
    total += c[e];
  }
  TORCH_CHECK(total <= rows, "grouped_swiglu_mlp: group_list sums to ", total, " > ", rows,
              " rows");
  at::Tensor out = total < rows ? at::zeros_like(x) : at::empty_like(x);
  if (total == 0) return out;
  at::Tensor ids = at::empty({total, 1}, x.options().dtype(at::kInt));
  int32_t* id = ids.data_ptr<int32_t>();
  for (int64_t e = 0, r = 0; e < local; ++e)
    for (int64_t i = 0; i < c[e]; ++i) id[r++] = static_cast<int32_t>(e);
  const at::Tensor weights = at::ones({total, 1}, x.options().dtype(at::kFloat));
  at::Tensor head = out.narrow(0, 0, total);
  run_kernel(head, x.narrow(0, 0, total), w13, w2, weights, ids, isa);
  return out;
}

at::Tensor swiglu_moe_cpu(const at::Tensor& x, const at::Tensor& topk_weights,
                          const at::Tensor& topk_ids, const at::Tensor& w13, const at::Tensor& w2,
                          c10::string_view isa) {
  check_mlp("swiglu_moe", x, w13, w2);
  const int64_t tokens = x.size(0), local = w13.size(0);
  TORCH_CHECK(topk_ids.dim() == 2 && topk_ids.size(0) == tokens &&
                  topk_weights.sizes() == topk_ids.sizes(),
              "swiglu_moe: topk_weights and topk_ids must both be (M=", tokens, ", K), got ",
              topk_weights.sizes(), " and ", topk_ids.sizes());
  TORCH_CHECK(topk_ids.scalar_type() == at::kInt && topk_weights.scalar_type() == at::kFloat,
              "swiglu_moe: topk_ids must be int32 and topk_weights fp32, got ",
              topk_ids.scalar_type(), " and ", topk_weights.scalar_type());
  const at::Tensor ids = topk_ids.contiguous();
  const int32_t* id = ids.data_ptr<int32_t>();
  for (int64_t i = 0; i < ids.numel(); ++i)  // the kernel indexes the weights with them
    TORCH_CHECK(id[i] >= 0 && id[i] < local, "swiglu_moe: topk_ids holds ", id[i],
                ", outside the ", local, " experts [0, ", local, ")");
  at::Tensor out = at::empty_like(x);
  if (tokens == 0) return out;
  run_kernel(out, x, w13, w2, topk_weights.contiguous(), ids, isa);
  return out;
}

at::Tensor grouped_swiglu_mlp_meta(const at::Tensor& x, const at::Tensor& group_list,
                                   const at::Tensor& w13, const at::Tensor& w2,
                                   c10::string_view isa) {
  return at::empty_like(x);
}

at::Tensor swiglu_moe_meta(const at::Tensor& x, const at::Tensor& topk_weights,
                           const at::Tensor& topk_ids, const at::Tensor& w13,
                           const at::Tensor& w2, c10::string_view isa) {
  return at::empty_like(x);
}

int64_t moe_mlp_cache(bool clear) {
  if (clear) cache().clear();
  return cache().builds();
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vllm_ascend, m) {
  m.def("grouped_swiglu_mlp(Tensor x, Tensor group_list, Tensor w13, Tensor w2, str isa) "
        "-> Tensor");
  m.def("swiglu_moe(Tensor x, Tensor topk_weights, Tensor topk_ids, Tensor w13, Tensor w2, "
        "str isa) -> Tensor");
  m.def("moe_mlp_cache(bool clear=False) -> int");
}

TORCH_LIBRARY_IMPL(vllm_ascend, CPU, m) {
  m.impl("grouped_swiglu_mlp", &grouped_swiglu_mlp_cpu);
  m.impl("swiglu_moe", &swiglu_moe_cpu);
}

TORCH_LIBRARY_IMPL(vllm_ascend, Meta, m) {
  m.impl("grouped_swiglu_mlp", &grouped_swiglu_mlp_meta);
  m.impl("swiglu_moe", &swiglu_moe_meta);
}

TORCH_LIBRARY_IMPL(vllm_ascend, CompositeExplicitAutograd, m) {
  m.impl("moe_mlp_cache", &moe_mlp_cache);
}
