// onednn_int8_mm: the exact int8 x int8 accumulators through vLLM's oneDNN int8 GEMM, with
// the prepacked weight kept in a C++ cache, so that a compiled model calls one C++ op per
// GEMM (no Python on the decode path).
//
//   onednn_int8_mm(Tensor a, Tensor b) -> Tensor
//
// a int8 (m, k) contiguous; b int8 (k, n), any strides (a transposed (n, k) weight is the
// usual case). Returns fp32 (m, n) for k <= 1023, else float64: the exact integer sums, as
// src/vllm_ascend/device/reference/cpu_kernels.py `int8_mm` documents (K is split in chunks
// of 1023 rows so that every fp32 partial is an exact integer; longer K sums the chunks in
// float64).
//
// vLLM's kernels (torch.ops._C, loaded by `import vllm._custom_ops`) are reached through the
// dispatcher, so this library does not link against vLLM: the Python side only calls this op
// after checking that they are loaded and exact on this CPU (VNNI / AMX).
//
// Cache: csrc/tensor_cache.h (per weight tensor; rebuilt after an in-place write; a dead
// weight's handles are freed). `onednn_int8_cache(bool clear) -> int` returns the number of
// weights prepared so far (tests) and optionally drops every entry.

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cstdint>
#include <vector>

#include "tensor_cache.h"

namespace {

constexpr int64_t kChunk = 1023;

struct Chunk {
  int64_t k0, k1;
  at::Tensor handler;  // int64 scalar tensor holding the oneDNN handler pointer
};

struct OneDNNWeight {
  at::Tensor scales;  // unit weight scales; the handlers keep this pointer
  std::vector<Chunk> chunks;
};

c10::OperatorHandle op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

void release(OneDNNWeight& w) {
  static auto rel = op("_C::release_dnnl_matmul_handler").typed<void(int64_t)>();
  for (auto& c : w.chunks) rel.call(c.handler.item<int64_t>());
  w.chunks.clear();
}

OneDNNWeight build(const at::Tensor& b) {
  static auto create = op("_C::create_onednn_scaled_mm_handler")
                           .typed<int64_t(const at::Tensor&, const at::Tensor&, c10::ScalarType,
                                          bool, bool, int64_t)>();
  OneDNNWeight w;
  w.scales = at::ones({1}, at::kFloat);
  const int64_t k = b.size(0), n = b.size(1);
  for (int64_t k0 = 0; k0 < k; k0 += kChunk) {
    const int64_t rows = std::min(kChunk, k - k0);
    at::Tensor part = b.narrow(0, k0, rows);
    if (part.stride(0) != 1 || part.stride(1) != rows) {  // oneDNN wants column-major
      part = at::empty_strided({rows, n}, {1, rows}, b.options()).copy_(part);
    }
    const int64_t h = create.call(part, w.scales, at::kFloat, false, false, 32);
    w.chunks.push_back({k0, k0 + rows, at::scalar_tensor(h, at::kLong)});
  }
  return w;
}

vllm_ascend::TensorCache<OneDNNWeight>& cache() {
  static auto* c = new vllm_ascend::TensorCache<OneDNNWeight>(release);  // never destroyed:
  return *c;  // vLLM's kernels may be unloaded before static destructors run
}

at::Tensor onednn_int8_mm_cpu(const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(a.scalar_type() == at::kChar && b.scalar_type() == at::kChar,
              "onednn_int8_mm: a and b must be int8");
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(0),
              "onednn_int8_mm: a (m, k) and b (k, n) expected, got ", a.sizes(), " and ",
              b.sizes());
  TORCH_CHECK(b.size(0) > 0 && b.size(1) > 0, "onednn_int8_mm: empty weight");
  static auto mm = op("_C::onednn_scaled_mm")
                       .typed<void(at::Tensor&, const at::Tensor&, const at::Tensor&,
                                   const c10::optional<at::Tensor>&,
                                   const c10::optional<at::Tensor>&,
                                   const c10::optional<at::Tensor>&, const at::Tensor&)>();
  const at::Tensor ac = a.contiguous();
  const int64_t m = a.size(0), n = b.size(1);
  const OneDNNWeight& e = cache().get(b, 0, build);
  static const at::Tensor one = at::ones({1}, at::kFloat);
  if (e.chunks.size() == 1) {
    at::Tensor out = at::empty({m, n}, a.options().dtype(at::kFloat));
    if (m > 0) mm.call(out, ac, one, c10::nullopt, c10::nullopt, c10::nullopt, e.chunks[0].handler);
    return out;
  }
  at::Tensor total = at::zeros({m, n}, a.options().dtype(at::kDouble));
  if (m == 0) return total;
  at::Tensor out = at::empty({m, n}, a.options().dtype(at::kFloat));
  for (const auto& c : e.chunks) {
    const at::Tensor part = ac.narrow(1, c.k0, c.k1 - c.k0).contiguous();
    mm.call(out, part, one, c10::nullopt, c10::nullopt, c10::nullopt, c.handler);
    total.add_(out);
  }
  return total;
}

at::Tensor onednn_int8_mm_meta(const at::Tensor& a, const at::Tensor& b) {
  auto dtype = b.size(0) <= kChunk ? at::kFloat : at::kDouble;
  return at::empty_symint({a.sym_size(0), c10::SymInt(b.size(1))}, a.options().dtype(dtype));
}

int64_t onednn_int8_cache(bool clear) {
  if (clear) cache().clear();
  return cache().builds();
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vllm_ascend, m) {
  m.def("onednn_int8_mm(Tensor a, Tensor b) -> Tensor");
  m.def("onednn_int8_cache(bool clear=False) -> int");
}

TORCH_LIBRARY_IMPL(vllm_ascend, CPU, m) { m.impl("onednn_int8_mm", &onednn_int8_mm_cpu); }

TORCH_LIBRARY_IMPL(vllm_ascend, Meta, m) { m.impl("onednn_int8_mm", &onednn_int8_mm_meta); }

TORCH_LIBRARY_IMPL(vllm_ascend, CompositeExplicitAutograd, m) {
  m.impl("onednn_int8_cache", &onednn_int8_cache);
}
