// grouped_matmul: the MoE form of torch_npu.npu_grouped_matmul (group_type=0, split on M) as
// one C++ op, all groups inside (src/vllm_ascend/device/reference/grouped_matmul.py decides
// which argument combinations come here; everything else runs the reference's Python path).
//
//   grouped_matmul(Tensor x, Tensor weight, Tensor group_list, int group_list_type,
//                  Tensor? bias, Tensor? scale, Tensor? per_token_scale, int act_type,
//                  ScalarType out_dtype, int isa, int max_kernel_rows) -> Tensor
//
// x (M, K); weight (E, K, N); group_list (G <= E,) int32/int64: cumulative row ends
// (group_list_type 0) or counts (1); rows [end[e-1], end[e]) use weight[e]; rows past the
// last end are 0. bias (E, N); scale (E, N) fp32/bf16; per_token_scale (M,) fp32/bf16.
// act_type 0 none, 1 relu, 2 gelu (tanh), 5 silu, applied after the bias.
//
// Float (x, weight both fp32 or both bf16): y = act(x @ w[e] + bias[e]) in fp32, cast to
// out_dtype (fp32/bf16/fp16). isa=2 (AVX-512 CPUs) runs the register-tiled kernel below on
// the weight as it is (N-contiguous rows, no repacking, no copy) for groups of up to
// max_kernel_rows rows and at::mm beyond; isa=0 (or a weight whose rows are not contiguous)
// runs at::mm per group (the AVX2 / portable path). fp32 sums in another order than the
// reference's torch matmul: fp32 tolerance.
//
// int8 (x, weight int8; Python only sends it where vLLM's oneDNN int8 GEMM is exact, VNNI/AMX):
// the exact accumulators per group, for groups of up to max_kernel_rows rows on AVX-512 VNNI
// CPUs with isa=2 from csrc/grouped_int8.cpp, otherwise from vllm_ascend::onednn_int8_mm
// (csrc/onednn_int8.cpp, prepacked per expert in its C++ cache), then the reference's
// epilogue with the same fp32 operations in the same order, so the outputs are bit-identical
// to the reference:
//   no scale: int32 acc + int32 bias (out_dtype int32);
//   scale:    act(float(acc + b_int) * scale[e] [* per_token_scale[m]] [+ b_float]) cast to
//             out_dtype (fp32/bf16/fp16).
//
// group_list is checked here (TORCH_CHECK_VALUE -> Python ValueError, the reference's
// messages), so a compiled graph needs no data-dependent Python. The meta kernel keeps the
// row count symbolic: one compiled graph for every M.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "grouped_int8.h"

namespace {

constexpr int64_t kCols = 64;           // columns per kernel tile (4 zmm)
constexpr int kRows = 6;                // rows per register tile (6 x 4 accumulators)
// Measured (grouped_matmul.py): 8 weight rows per pass over a span of up to 64 tiles (4096
// columns) streams the weight row after row (8 concurrent streams) at ~1.6x at::mm's speed for
// MoE decode shapes; 32 rows or spans of 8 tiles were slower (TLB / prefetch streams).
constexpr int64_t kBlockK = 8;  // weight rows per pass over a column span
constexpr int64_t kSpan = 64;   // column tiles (of 64) per parallel work item

struct FloatArgs {
  const void* x;  // (M, K) contiguous, fp32 or bf16
  const void* w;  // (E, K, N), row stride ldw, expert stride lde, unit column stride
  int64_t ldw, lde, K, N;
  const float* bias;  // (E, N) contiguous fp32 or nullptr
  float* y;           // (M, N) fp32
};

template <bool BF16>
__attribute__((target("avx512f,avx512bw,avx512vl"), always_inline)) inline __m512 load16(
    const void* p, int64_t i, __mmask16 m) {
  if (BF16) {
    const __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(p) + i);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  return _mm512_maskz_loadu_ps(m, static_cast<const float*>(p) + i);
}

template <bool BF16>
__attribute__((always_inline)) inline float scalar(const void* p, int64_t i) {
  if (BF16) {
    const uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(p)[i]) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
  return static_cast<const float*>(p)[i];
}

// y[m0 .. m0+ROWS, c0 .. c0+width) (+)= x[m0 .., k0 .. k1) @ w[e][k0 .. k1, c0 .. c0+width),
// width <= 64 (masked tail), in 6 x 4 zmm accumulators. The first k block starts from the
// bias (or 0), later ones from y. Each k reads 64 contiguous weights of one row.
// The first k block starts from the bias (or 0), later ones from y.
__attribute__((target("avx512f"), always_inline)) inline __m512 start_v(bool first, const float* y,
                                                                      const float* bias,
                                                                      int col, __mmask16 m) {
  if (!first) return _mm512_maskz_loadu_ps(m, y + col);
  return bias ? _mm512_maskz_loadu_ps(m, bias + col) : _mm512_setzero_ps();
}

// Named accumulators (not an array): GCC keeps an array of vectors in memory, storing it on
// every k step; 24 scalars stay in registers.
#define GMM_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)
#define GMM_DECL(r) __m512 c##r##0, c##r##1, c##r##2, c##r##3;
#define GMM_INIT(r)                                                   \
  if constexpr (ROWS > r) {                                           \
    c##r##0 = start_v(first, y + r * ldy, bias, 0, mask[0]);             \
    c##r##1 = start_v(first, y + r * ldy, bias, 16, mask[1]);   \
    c##r##2 = start_v(first, y + r * ldy, bias, 32, mask[2]);   \
    c##r##3 = start_v(first, y + r * ldy, bias, 48, mask[3]);   \
  }
#define GMM_FMA(r)                                                    \
  if constexpr (ROWS > r) {                                           \
    const __m512 xv = _mm512_set1_ps(scalar<BF16>(xp, r * ldx + k));  \
    c##r##0 = _mm512_fmadd_ps(xv, w0, c##r##0);                       \
    c##r##1 = _mm512_fmadd_ps(xv, w1, c##r##1);                       \
    c##r##2 = _mm512_fmadd_ps(xv, w2, c##r##2);                       \
    c##r##3 = _mm512_fmadd_ps(xv, w3, c##r##3);                       \
  }
#define GMM_STORE(r)                                                  \
  if constexpr (ROWS > r) {                                           \
    _mm512_mask_storeu_ps(y + r * ldy, mask[0], c##r##0);              \
    _mm512_mask_storeu_ps(y + r * ldy + 16, mask[1], c##r##1);         \
    _mm512_mask_storeu_ps(y + r * ldy + 32, mask[2], c##r##2);         \
    _mm512_mask_storeu_ps(y + r * ldy + 48, mask[3], c##r##3);         \
  }

// y[m0 .. m0+ROWS, c0 .. c0+width) (+)= x[m0 .., k0 .. k1) @ w[e][k0 .. k1, c0 .. c0+width),
// width <= 64 (masked tail: zero-mask loads read nothing), ROWS <= 6 rows in 6 x 4 zmm. The
// first k block starts from the bias (or 0), later ones from y. Each k step reads 64
// contiguous weights of one row.
template <int ROWS, bool BF16>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void tile(const FloatArgs& a, int64_t e,
                                                              int64_t m0, int64_t c0, int64_t k0,
                                                              int64_t k1) {
  const int64_t width = std::min(kCols, a.N - c0);
  __mmask16 mask[4];
  for (int c = 0; c < 4; ++c) {
    const int64_t cnt = std::max<int64_t>(0, std::min<int64_t>(16, width - 16 * c));
    mask[c] = static_cast<__mmask16>((1u << cnt) - 1u);
  }
  float* const y = a.y + m0 * a.N + c0;
  const int64_t ldy = a.N;
  const float* const bias = a.bias ? a.bias + e * a.N + c0 : nullptr;
  const bool first = k0 == 0;
  GMM_ROWS(GMM_DECL)
  GMM_ROWS(GMM_INIT)
  using T = typename std::conditional<BF16, uint16_t, float>::type;
  const T* __restrict wp = static_cast<const T*>(a.w) + e * a.lde + c0 + k0 * a.ldw;
  const T* __restrict xp = static_cast<const T*>(a.x) + m0 * a.K + k0;
  const int64_t ldw = a.ldw, ldx = a.K, kn = k1 - k0;
  const __mmask16 m0_ = mask[0], m1_ = mask[1], m2_ = mask[2], m3_ = mask[3];
  for (int64_t k = 0; k < kn; ++k, wp += ldw) {
    const __m512 w0 = load16<BF16>(wp, 0, m0_), w1 = load16<BF16>(wp, 16, m1_);
    const __m512 w2 = load16<BF16>(wp, 32, m2_), w3 = load16<BF16>(wp, 48, m3_);
    GMM_ROWS(GMM_FMA)
  }
  GMM_ROWS(GMM_STORE)
}

// Rows [lo, hi) of group e, columns [c0, c1): k in blocks of kBlockK rows (the block of
// weight rows, KB x (c1 - c0), stays in L1/L2 while every row tile uses it; the weight is read
// in runs of (c1 - c0) contiguous values, row after row).
template <bool BF16>
void span(const FloatArgs& a, int64_t e, int64_t lo, int64_t hi, int64_t c0, int64_t c1) {
  for (int64_t k0 = 0; k0 < a.K; k0 += kBlockK) {
    const int64_t k1 = std::min(a.K, k0 + kBlockK);
    for (int64_t c = c0; c < c1; c += kCols) {
      int64_t m = lo;
      for (; m + kRows <= hi; m += kRows) tile<kRows, BF16>(a, e, m, c, k0, k1);
      switch (hi - m) {
        case 5: tile<5, BF16>(a, e, m, c, k0, k1); break;
        case 4: tile<4, BF16>(a, e, m, c, k0, k1); break;
        case 3: tile<3, BF16>(a, e, m, c, k0, k1); break;
        case 2: tile<2, BF16>(a, e, m, c, k0, k1); break;
        case 1: tile<1, BF16>(a, e, m, c, k0, k1); break;
        default: break;
      }
    }
  }
}

struct Group {
  int64_t e, lo, hi;
};

// Validated cumulative ends of group_list -> the non-empty groups; *total = last end.
std::vector<Group> groups_of(const at::Tensor& group_list, int64_t type, int64_t experts,
                             int64_t rows, int64_t* total) {
  TORCH_CHECK_VALUE(type == 0 || type == 1, "group_list_type=", type,
                    "; accepted: 0 (cumulative), 1 (counts)");
  TORCH_CHECK_VALUE(group_list.dim() <= 1 && (group_list.scalar_type() == at::kLong ||
                                              group_list.scalar_type() == at::kInt),
                    "group_list must be a 1-d int32/int64 tensor, got ", group_list.scalar_type(),
                    " ", group_list.sizes());
  const at::Tensor gl = group_list.reshape(-1).to(at::kLong).contiguous();
  const int64_t n = gl.numel();
  const int64_t* v = gl.data_ptr<int64_t>();
  TORCH_CHECK_VALUE(n <= experts, "group_list has ", n, " entries but there are only ", experts,
                    " groups; accepted: at most ", experts, " cumulative row ends");
  std::vector<Group> out;
  int64_t prev = 0;
  for (int64_t e = 0; e < n; ++e) {
    int64_t end = v[e];
    if (type == 1) {
      TORCH_CHECK_VALUE(v[e] >= 0, "group_list counts must be non-negative, got ", gl);
      end = prev + v[e];
    } else {
      TORCH_CHECK_VALUE(end >= prev, "group_list=", gl,
                        " must be non-negative and non-decreasing (cumulative row ends)");
    }
    TORCH_CHECK_VALUE(end <= rows, "group_list ends at row ", end, " but the input has only ",
                      rows, " rows");
    if (end > prev) out.push_back({e, prev, end});
    prev = end;
  }
  *total = prev;
  return out;
}

c10::OperatorHandle op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

void activate(at::Tensor& y, int64_t act) {
  if (act == 1) y.relu_();
  else if (act == 2) y = at::gelu(y, "tanh");
  else if (act == 5) at::silu_(y);
}

void check_param(const c10::optional<at::Tensor>& p, const char* name, int64_t E, int64_t N) {
  if (!p) return;
  TORCH_CHECK_VALUE(p->dim() == 2 && p->size(0) == E && p->size(1) == N, name,
                    " must be (E=", E, ", N=", N, "), got ", p->sizes());
}

at::Tensor float_path(const at::Tensor& x, const at::Tensor& w, const std::vector<Group>& groups,
                      const c10::optional<at::Tensor>& bias, int64_t isa, int64_t max_rows,
                      at::Tensor& y) {
  const int64_t K = x.size(1), N = w.size(2);
  const at::Tensor b = bias ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const bool kernel = isa >= 2 && w.stride(2) == 1 && K > 0;
  std::vector<Group> small, large;
  for (const auto& g : groups) (kernel && g.hi - g.lo <= max_rows ? small : large).push_back(g);
  for (const auto& g : large) {  // at::mm per group (fp32, like the reference's x.float() @ w)
    at::Tensor out = y.narrow(0, g.lo, g.hi - g.lo);
    at::mm_out(out, x.narrow(0, g.lo, g.hi - g.lo).to(at::kFloat), w[g.e].to(at::kFloat));
    if (b.defined()) out.add_(b[g.e]);
  }
  if (small.empty()) return y;
  FloatArgs a{x.data_ptr(), w.data_ptr(), w.stride(1), w.stride(0), K, N,
              b.defined() ? b.data_ptr<float>() : nullptr, y.data_ptr<float>()};
  const int64_t spans = (N + kCols * kSpan - 1) / (kCols * kSpan);
  const int64_t items = spans * static_cast<int64_t>(small.size());
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  at::parallel_for(0, items, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const Group& g = small[t / spans];
      const int64_t c0 = (t % spans) * kCols * kSpan, c1 = std::min(N, c0 + kCols * kSpan);
      if (bf16) span<true>(a, g.e, g.lo, g.hi, c0, c1);
      else span<false>(a, g.e, g.lo, g.hi, c0, c1);
    }
  });
  return y;
}

at::Tensor grouped_matmul_cpu(const at::Tensor& x, const at::Tensor& weight,
                              const at::Tensor& group_list, int64_t group_list_type,
                              const c10::optional<at::Tensor>& bias,
                              const c10::optional<at::Tensor>& scale,
                              const c10::optional<at::Tensor>& per_token_scale, int64_t act_type,
                              at::ScalarType out_dtype, int64_t isa,
                              int64_t max_kernel_rows) {
  TORCH_CHECK_VALUE(x.dim() == 2 && weight.dim() == 3 && weight.size(1) == x.size(1),
                    "grouped_matmul: x (M, K) and weight (E, K, N) expected, got ", x.sizes(),
                    " and ", weight.sizes());
  TORCH_CHECK_VALUE(act_type == 0 || act_type == 1 || act_type == 2 || act_type == 5,
                    "act_type=", act_type, "; accepted: 0, 1, 2, 5");
  const int64_t M = x.size(0), E = weight.size(0), N = weight.size(2);
  check_param(bias, "bias", E, N);
  check_param(scale, "scale", E, N);
  int64_t total = 0;
  const std::vector<Group> groups = groups_of(group_list, group_list_type, E, M, &total);
  const bool int8 = x.scalar_type() == at::kChar;
  if (int8) {
    TORCH_CHECK_VALUE(weight.scalar_type() == at::kChar, "int8 x needs an int8 weight, got ",
                      weight.scalar_type());
  } else {
    TORCH_CHECK_VALUE((x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16) &&
                          weight.scalar_type() == x.scalar_type(),
                      "float grouped_matmul takes fp32 or bf16 x and weight of x's dtype, got ",
                      x.scalar_type(), " and ", weight.scalar_type());
    TORCH_CHECK_VALUE(!scale && !per_token_scale, "scale/per_token_scale need int8 x");
  }
  const at::Tensor xc = x.contiguous();
  if (!int8 || scale) {
    TORCH_CHECK_VALUE(out_dtype == at::kFloat || out_dtype == at::kBFloat16 ||
                          out_dtype == at::kHalf,
                      "out_dtype=", out_dtype, "; accepted here: fp32, bf16, fp16");
  }
  if (!int8) {
    at::Tensor y = at::empty({M, N}, x.options().dtype(at::kFloat));
    if (total < M) y.narrow(0, total, M - total).zero_();
    float_path(xc, weight, groups, bias, isa, max_kernel_rows, y);
    if (act_type != 0 && total > 0) {
      at::Tensor rows = y.narrow(0, 0, total);
      at::Tensor act = rows;
      activate(act, act_type);
      if (!act.is_same(rows)) rows.copy_(act);
    }
    return out_dtype == at::kFloat ? y : y.to(out_dtype);
  }
  // int8: exact accumulators per group from the oneDNN op, the reference's epilogue.
  static auto mm = op("vllm_ascend::onednn_int8_mm").typed<at::Tensor(const at::Tensor&,
                                                                        const at::Tensor&)>();
  if (!scale) {
    TORCH_CHECK_VALUE(out_dtype == at::kInt && !per_token_scale && act_type == 0 &&
                          (!bias || bias->scalar_type() == at::kInt),
                      "int8 x without scale returns raw int32 accumulators: accepted output_dtype "
                      "None/torch.int32, int32 bias, no per_token_scale/offset/act_type");
  }
  if (per_token_scale) {
    TORCH_CHECK_VALUE(per_token_scale->numel() == M, "per_token_scale must be [(M=", M, ",)]");
  }
  at::Tensor y = at::zeros({M, N}, x.options().dtype(scale ? out_dtype : at::kInt));
  TORCH_CHECK_VALUE(weight.size(1) > 0 && N > 0, "grouped_matmul: int8 needs K > 0 and N > 0");
  const at::Tensor pt =
      per_token_scale ? per_token_scale->reshape(-1).to(at::kFloat) : at::Tensor();
  // Groups of up to max_kernel_rows rows: csrc/grouped_int8.cpp's VNNI kernel, all at once.
  std::vector<vllm_ascend::RowGroup> small;
  if (isa >= 2 && vllm_ascend::int8_vnni_supported() && vllm_ascend::int8_vnni_fits(weight)) {
    for (const auto& g : groups)
      if (g.hi - g.lo <= max_kernel_rows) small.push_back({g.e, g.lo, g.hi});
  }
  at::Tensor vnni_acc;
  if (!small.empty()) {
    vnni_acc = at::empty({M, N}, x.options().dtype(at::kInt));
    vllm_ascend::grouped_int8_vnni(xc, weight, small, vnni_acc);
  }
  for (const auto& g : groups) {
    const int64_t rows = g.hi - g.lo;
    const bool vnni = vnni_acc.defined() && rows <= max_kernel_rows;
    at::Tensor acc = vnni ? vnni_acc.narrow(0, g.lo, rows)  // int32, exact
                          : mm.call(xc.narrow(0, g.lo, rows), weight[g.e]);  // fp32/f64, exact
    at::Tensor out = y.narrow(0, g.lo, rows);
    const bool int_bias = bias && bias->scalar_type() == at::kInt;
    if (int_bias) acc = acc.to(at::kDouble).add_((*bias)[g.e].to(at::kDouble));
    if (!scale) {
      out.copy_(acc);  // exact integers -> int32
      continue;
    }
    at::Tensor v = acc.to(at::kFloat).mul_((*scale)[g.e].to(at::kFloat));
    if (pt.defined()) v.mul_(pt.narrow(0, g.lo, rows).unsqueeze(1));
    if (bias && !int_bias) v.add_((*bias)[g.e].to(at::kFloat));
    activate(v, act_type);
    out.copy_(v);
  }
  return y;
}

at::Tensor grouped_matmul_meta(const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& group_list, int64_t group_list_type,
                               const c10::optional<at::Tensor>& bias,
                               const c10::optional<at::Tensor>& scale,
                               const c10::optional<at::Tensor>& per_token_scale,
                               int64_t act_type, at::ScalarType out_dtype, int64_t isa,
                               int64_t max_kernel_rows) {
  return at::empty_symint({x.sym_size(0), weight.sym_size(2)}, x.options().dtype(out_dtype));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vllm_ascend, m) {
  m.def("grouped_matmul(Tensor x, Tensor weight, Tensor group_list, int group_list_type, "
        "Tensor? bias, Tensor? scale, Tensor? per_token_scale, int act_type, "
        "ScalarType out_dtype, int isa, int max_kernel_rows) -> Tensor");
}

TORCH_LIBRARY_IMPL(vllm_ascend, CPU, m) { m.impl("grouped_matmul", &grouped_matmul_cpu); }

TORCH_LIBRARY_IMPL(vllm_ascend, Meta, m) { m.impl("grouped_matmul", &grouped_matmul_meta); }
