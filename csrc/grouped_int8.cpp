// Exact int8 x int8 accumulators of small row groups on AVX-512 VNNI: the decode side of
// vllm_ascend::grouped_matmul's int8 path (an MoE layer's experts see a few rows each).
//
//   acc[m, c] = sum_k x[m, k] * w[e, k, c]     (exact int32)
//
// vpdpbusd multiplies unsigned by signed bytes, so the activations go in as u = x + 128
// (x ^ 0x80) and the column term comes off afterwards:
//   sum_k (x + 128) w = acc + 128 * sum_k w[k, c]   (colsum, built with the pack).
// |sum (x + 128) w| <= 255 * 128 * K < 2**31 for K < 2**16 (int8_vnni_fits).
//
// Packed weight (built once per weight tensor, csrc/tensor_cache.h): int8 (E, NB, K/4, 256),
// NB = ceil(N / 64) blocks of 64 columns; the 256 bytes of (e, b, quad q) are 4 zmm lines,
// line l lane j holding w[e, 4q .. 4q+3, 64b + 16l + j] (zero past N). One block of one
// expert is K * 64 bytes, read once per tile of up to 6 rows (it stays in L2 for the next
// tile) as kStreams interleaved K segments, software-prefetched kPrefetch bytes ahead as in
// csrc/a8w4_kernels.cpp. Measured against vLLM's oneDNN int8 GEMM per expert (`python -m
// bench ops -k int8_experts`): src/vllm_ascend/device/reference/grouped_matmul.py.

#include "grouped_int8.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "tensor_cache.h"
#include "vnni.h"

namespace vllm_ascend {
namespace {

constexpr int64_t kCols = 64;     // columns per block (4 zmm of int32)
constexpr int64_t kQuad = 256;    // bytes per (block, k quad)
constexpr int64_t kPrefetch = 8192;
constexpr int kTile = 6;          // rows per register tile (6 x 4 accumulators)
constexpr int64_t kStreams = 8;   // K segments read concurrently

struct Packed {
  at::Tensor w;       // int8 (E, NB, K/4, 256)
  at::Tensor colsum;  // int32 (E, NB * 64): 128 * sum_k w
};

TensorCache<Packed>& cache() {
  static auto* c = new TensorCache<Packed>();
  return *c;
}

Packed pack(const at::Tensor& weight) {
  const int64_t E = weight.size(0), K = weight.size(1), N = weight.size(2);
  const int64_t NB = (N + kCols - 1) / kCols, NP = NB * kCols;
  at::Tensor w = at::zeros({E, K, NP}, weight.options());
  w.narrow(2, 0, N).copy_(weight);
  // (E, K/4, 4 t, NB, 4 l, 16 j) -> (E, NB, K/4, l, j, t)
  at::Tensor packed = w.view({E, K / 4, 4, NB, 4, 16}).permute({0, 3, 1, 4, 5, 2}).contiguous();
  at::Tensor colsum = w.to(at::kInt).sum(1, false, at::kInt).mul_(128).contiguous();
  return {packed.view({E, NB, K / 4, kQuad}), colsum};
}

struct Args {
  const uint8_t* xu;      // (M, K): x + 128
  const int8_t* w;        // packed
  const int32_t* colsum;  // (E, NP)
  int32_t* acc;           // (M, N)
  int64_t K, N, NB;
};

// Named accumulators, not arrays: GCC keeps an array of vectors on the stack and loads and
// stores it around every vpdpbusd (seen in the disassembly); 24 scalars stay in registers.
#define I8_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)
#define I8_DECL(r) __m512i a##r##0, a##r##1, a##r##2, a##r##3;
#define I8_ZERO(r)                                                                  \
  if constexpr (ROWS > r) a##r##0 = a##r##1 = a##r##2 = a##r##3 = _mm512_setzero_si512();
#define I8_DOT(r)                                                                   \
  if constexpr (ROWS > r) {                                                         \
    int32_t four;                                                                   \
    std::memcpy(&four, xq + r * a.K + 4 * q, 4);                                    \
    const __m512i xb = _mm512_set1_epi32(four);                                     \
    dpbusd512(a##r##0, xb, w0);                                                     \
    dpbusd512(a##r##1, xb, w1);                                                     \
    dpbusd512(a##r##2, xb, w2);                                                     \
    dpbusd512(a##r##3, xb, w3);                                                     \
  }
#define I8_STORE(r)                                                                 \
  if constexpr (ROWS > r) {                                                         \
    int32_t* y = a.acc + (m0 + r) * a.N + c0;                                       \
    _mm512_mask_storeu_epi32(y, mask[0], _mm512_sub_epi32(a##r##0, s0));            \
    _mm512_mask_storeu_epi32(y + 16, mask[1], _mm512_sub_epi32(a##r##1, s1));       \
    _mm512_mask_storeu_epi32(y + 32, mask[2], _mm512_sub_epi32(a##r##2, s2));       \
    _mm512_mask_storeu_epi32(y + 48, mask[3], _mm512_sub_epi32(a##r##3, s3));       \
  }

// acc rows [m0, m0 + ROWS) x the 64 columns of block b of expert e.
template <int ROWS>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void tile(const Args& a, int64_t e,
                                                                 int64_t b, int64_t m0) {
  const int64_t KQ = a.K / 4;
  const int8_t* wq = a.w + (e * a.NB + b) * KQ * kQuad;
  const uint8_t* xq = a.xu + m0 * a.K;
  I8_ROWS(I8_DECL)
  I8_ROWS(I8_ZERO)
  // kStreams interleaved K segments: several sequential streams keep more misses in flight
  // than one (integer sums: the order does not matter).
  const int64_t seg = KQ / kStreams;
#define I8_QUAD(QEXPR)                                                               \
  {                                                                                  \
    const int64_t q = (QEXPR);                                                       \
    const int8_t* wl = wq + q * kQuad;                                               \
    _mm_prefetch(reinterpret_cast<const char*>(wl + kPrefetch), _MM_HINT_T0);        \
    _mm_prefetch(reinterpret_cast<const char*>(wl + kPrefetch + 128), _MM_HINT_T0);  \
    const __m512i w0 = _mm512_loadu_si512(wl), w1 = _mm512_loadu_si512(wl + 64);     \
    const __m512i w2 = _mm512_loadu_si512(wl + 128), w3 = _mm512_loadu_si512(wl + 192); \
    I8_ROWS(I8_DOT)                                                                  \
  }
  for (int64_t i = 0; i < seg; ++i)
    for (int64_t st = 0; st < kStreams; ++st) I8_QUAD(st * seg + i)
  for (int64_t q0 = kStreams * seg; q0 < KQ; ++q0) I8_QUAD(q0)
#undef I8_QUAD
  const int64_t c0 = b * kCols, width = std::min(kCols, a.N - c0);
  const int32_t* cs = a.colsum + e * a.NB * kCols + c0;
  __mmask16 mask[4];
  for (int l = 0; l < 4; ++l) {
    const int64_t cnt = std::max<int64_t>(0, std::min<int64_t>(16, width - 16 * l));
    mask[l] = static_cast<__mmask16>((1u << cnt) - 1u);
  }
  const __m512i s0 = _mm512_loadu_si512(cs), s1 = _mm512_loadu_si512(cs + 16);
  const __m512i s2 = _mm512_loadu_si512(cs + 32), s3 = _mm512_loadu_si512(cs + 48);
  I8_ROWS(I8_STORE)
}
#undef I8_ROWS
#undef I8_DECL
#undef I8_ZERO
#undef I8_DOT
#undef I8_STORE

void block(const Args& a, const RowGroup& g, int64_t b) {
  int64_t m = g.lo;
  for (; m + kTile <= g.hi; m += kTile) tile<kTile>(a, g.e, b, m);
  switch (g.hi - m) {
    case 5: tile<5>(a, g.e, b, m); break;
    case 4: tile<4>(a, g.e, b, m); break;
    case 3: tile<3>(a, g.e, b, m); break;
    case 2: tile<2>(a, g.e, b, m); break;
    case 1: tile<1>(a, g.e, b, m); break;
    default: break;
  }
}

}  // namespace

bool int8_vnni_supported() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vnni");
  return ok;
}

bool int8_vnni_fits(const at::Tensor& weight) {
  return weight.dim() == 3 && weight.scalar_type() == at::kChar && weight.size(1) > 0 &&
         weight.size(1) % 4 == 0 && weight.size(1) < (int64_t{1} << 16) && weight.size(2) > 0;
}

void grouped_int8_vnni(const at::Tensor& x, const at::Tensor& weight,
                       const std::vector<RowGroup>& groups, at::Tensor& acc) {
  TORCH_CHECK(int8_vnni_supported() && int8_vnni_fits(weight),
              "grouped_int8_vnni: needs AVX-512 VNNI and an int8 (E, K, N) weight with K a "
              "multiple of 4 below 65536, got ", weight.sizes());
  TORCH_CHECK(x.scalar_type() == at::kChar && x.is_contiguous() && x.size(1) == weight.size(1) &&
                  acc.scalar_type() == at::kInt && acc.is_contiguous() &&
                  acc.size(0) == x.size(0) && acc.size(1) == weight.size(2),
              "grouped_int8_vnni: x int8 (M, K) and acc int32 (M, N) contiguous expected");
  if (groups.empty()) return;
  const Packed& p = cache().get(weight, 0, pack);
  const at::Tensor pw = p.w, cs = p.colsum;  // copies: the next build may move entries
  const at::Tensor xu = at::bitwise_xor(x, -128).view(at::kByte);  // x + 128 as uint8
  const int64_t NB = pw.size(1);
  const Args a{xu.data_ptr<uint8_t>(), pw.data_ptr<int8_t>(), cs.data_ptr<int32_t>(),
               acc.data_ptr<int32_t>(), x.size(1), weight.size(2), NB};
  const int64_t items = NB * static_cast<int64_t>(groups.size());
  at::parallel_for(0, items, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) block(a, groups[t / NB], t % NB);
  });
}

int64_t grouped_int8_vnni_cache(bool clear) {
  if (clear) cache().clear();
  return cache().builds();
}

}  // namespace vllm_ascend

namespace {
int64_t grouped_int8_cache_op(bool clear) { return vllm_ascend::grouped_int8_vnni_cache(clear); }
}  // namespace

TORCH_LIBRARY_FRAGMENT(vllm_ascend, m) { m.def("grouped_int8_cache(bool clear=False) -> int"); }

TORCH_LIBRARY_IMPL(vllm_ascend, CompositeExplicitAutograd, m) {
  m.impl("grouped_int8_cache", &grouped_int8_cache_op);
}
