// Exact A8W4 GEMM for the reference backend (torch library namespace vllm_ascend):
// int8 activations x int4 weights with per-group fp32 scales, the math of the reference's
// npu_grouped_matmul A8W4 (src/vllm_ascend/device/reference/matmul.py, _a8w4):
//
//   acc_g[m, c] = sum_{k in group g} (x[m, k] - 8) * w[k, c]          (exact int32)
//   y[m, c]     = sum_g float(acc_g[m, c]) * scale[g, c]               (fp32, g = 0, 1, ...)
//
// The groups are added in order, each product rounded then added (no FMA; the build also
// uses -ffp-contract=off); float(acc) rounds half-to-even like the reference's
// float64 -> fp32 cast of the same integer.
//
// Weights are stored as unsigned nibbles u = w + 8 in [0, 15] and multiplied with the signed
// int8 x by vpdpbusd (AVX-512 VNNI / AVX-VNNI) or vpmaddubsw + vpmaddwd (AVX2: a pair of
// products is at most 2 * 15 * 128 in magnitude, so vpmaddubsw never saturates). Then
//   sum (x - 8) w = sum x u - 8 * sum x - 8 * sum w,
// with colsum[g, c] = -8 * sum_{k in g} w[k, c] (built by a8w4_pack) and the row sums of x
// per group formed per call. |acc| < 2**31 for groups below 2**20 rows.
//
// Packed layout (a8w4_pack): N padded to NB = ceil(N/32) blocks of 32 columns, K in quads;
// uint8 (NB, K/4, 64) where byte 4j + t of quad q of block b holds u[4q + t, 32b + j] in its
// low nibble and u[4q + t, 32b + 16 + j] in its high nibble (j < 16, t < 4). One 64-byte
// line feeds two zmm vpdpbusd (columns 0-15 and 16-31, 4 k each); an AVX2 pass takes one
// 32-byte half (columns 8h..8h+7 and 16+8h..16+8h+7). Padded columns hold u = 8 (w = 0).
// colsum int32 and scale fp32 are block-major (NB, G, 32), zero-padded: each thread reads
// its blocks' weights and tables as sequential streams (decode is memory-bound: the weight
// is software-prefetched kPrefetch bytes ahead, which the hardware prefetchers alone do not
// match on the machines measured).
//
// SIMD code is compiled per function (target attributes): loading this library on a CPU
// without AVX2 is safe; Python only calls a8w4_matmul after checking AVX2 support.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

#include "tensor_cache.h"
#include "vnni.h"

namespace {

constexpr int64_t kBlock = 32;  // columns per packed block
constexpr int64_t kLine = 64;   // bytes per (block, k quad)
constexpr int64_t kPrefetch = 4096;

struct A8 {
  const int8_t* x;        // (M, K), row stride ldx
  int64_t ldx;
  const uint8_t* w;       // (NB, K/4, 64)
  const int32_t* colsum;  // (NB, G, 32)
  const float* scale;     // (NB, G, 32)
  const int32_t* xsum;    // (M, G): -8 * sum of x over the group
  float* y;               // (M, n)
  int64_t M, K, n, G, group;
};

inline int32_t x4(const int8_t* p) {  // 4 activations as one int32 (unaligned)
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// ---------------------------------------------------------------- AVX-512 VNNI (zmm)

using vllm_ascend::dpbusd512;  // csrc/vnni.h

// Totals stay in a stack buffer (touched once per group) so that the 32 zmm registers hold
// the 2 * ROWS accumulators of the inner loop. FLY (few rows, memory-bound): the column term
// -8 * sum w = 64 * |g| - 8 * sum u comes from two more vpdpbusd per line (u x -8) instead
// of the colsum table, which then is not read at all.
template <int ROWS, bool FLY = (ROWS <= 4)>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void block_512(const A8& a, int64_t nb,
                                                                      int64_t m0) {
  const uint8_t* wq = a.w + nb * (a.K / 4) * kLine;
  const int64_t col = nb * kBlock, gq = a.group / 4;
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const int8_t* xq = a.x + m0 * a.ldx;
  alignas(64) float tot[ROWS][kBlock] = {};
  for (int64_t g = 0; g < a.G; ++g, wq += gq * kLine, xq += a.group) {
    __m512i acc0[ROWS], acc1[ROWS];
    for (int r = 0; r < ROWS; ++r) acc0[r] = acc1[r] = _mm512_setzero_si512();
    __m512i c0 = _mm512_set1_epi32(static_cast<int32_t>(64 * a.group)), c1 = c0;
    const __m512i m8 = _mm512_set1_epi8(-8);
    for (int64_t q = 0; q < gq; ++q) {
      const __m512i v = _mm512_loadu_si512(wq + q * kLine);
      _mm_prefetch(reinterpret_cast<const char*>(wq + q * kLine + kPrefetch), _MM_HINT_T0);
      const __m512i lo = _mm512_and_si512(v, low4);
      const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
      if (FLY) {
        dpbusd512(c0, lo, m8);
        dpbusd512(c1, hi, m8);
      }
      for (int r = 0; r < ROWS; ++r) {
        const __m512i xb = _mm512_set1_epi32(x4(xq + r * a.ldx + 4 * q));
        dpbusd512(acc0[r], lo, xb);
        dpbusd512(acc1[r], hi, xb);
      }
    }
    const int64_t off = (nb * a.G + g) * kBlock;
    if (!FLY) {
      c0 = _mm512_loadu_si512(a.colsum + off);
      c1 = _mm512_loadu_si512(a.colsum + off + 16);
    }
    const __m512 s0 = _mm512_loadu_ps(a.scale + off), s1 = _mm512_loadu_ps(a.scale + off + 16);
    for (int r = 0; r < ROWS; ++r) {
      const __m512i xs = _mm512_set1_epi32(a.xsum[(m0 + r) * a.G + g]);
      const __m512i i0 = _mm512_add_epi32(_mm512_add_epi32(acc0[r], c0), xs);
      const __m512i i1 = _mm512_add_epi32(_mm512_add_epi32(acc1[r], c1), xs);
      const __m512 p0 = _mm512_mul_ps(_mm512_cvtepi32_ps(i0), s0);
      const __m512 p1 = _mm512_mul_ps(_mm512_cvtepi32_ps(i1), s1);
      _mm512_store_ps(tot[r], _mm512_add_ps(_mm512_load_ps(tot[r]), p0));
      _mm512_store_ps(tot[r] + 16, _mm512_add_ps(_mm512_load_ps(tot[r] + 16), p1));
    }
  }
  const int64_t width = std::min(kBlock, a.n - col);
  for (int r = 0; r < ROWS; ++r) std::copy(tot[r], tot[r] + width, a.y + (m0 + r) * a.n + col);
}

// ---------------------------------------------------------------- AVX2 / AVX-VNNI (ymm)

__attribute__((target("avx2,avxvnni"), always_inline)) inline __m256i dot_vnni(__m256i acc,
                                                                               __m256i u,
                                                                               __m256i x) {
  asm("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(u), "x"(x));  // (see vnni.h)
  return acc;
}

__attribute__((target("avx2"), always_inline)) inline __m256i dot_avx2(__m256i acc, __m256i u,
                                                                       __m256i x) {
  const __m256i pairs = _mm256_maddubs_epi16(u, x);  // u <= 15: no int16 saturation
  return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

// One 32-byte half h of each line: columns 8h..8h+7 (low nibbles), 16+8h..16+8h+7 (high).
#define A8W4_HALF_KERNEL(NAME, TARGET, DOT)                                                    \
  template <int ROWS>                                                                          \
  __attribute__((target(TARGET))) void NAME(const A8& a, int64_t nb, int64_t h, int64_t m0) { \
    const uint8_t* wq = a.w + nb * (a.K / 4) * kLine + 32 * h;                                 \
    const int64_t c0 = nb * kBlock + 8 * h, c1 = c0 + 16, gq = a.group / 4;                    \
    const __m256i low4 = _mm256_set1_epi8(0x0F);                                               \
    const int8_t* xq = a.x + m0 * a.ldx;                                                       \
    alignas(32) float tot[ROWS][16] = {};                                                      \
    for (int64_t g = 0; g < a.G; ++g, wq += gq * kLine, xq += a.group) {                       \
      __m256i acc0[ROWS], acc1[ROWS];                                                          \
      for (int r = 0; r < ROWS; ++r) acc0[r] = acc1[r] = _mm256_setzero_si256();               \
      for (int64_t q = 0; q < gq; ++q) {                                                       \
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wq + q * kLine)); \
        _mm_prefetch(reinterpret_cast<const char*>(wq + q * kLine + kPrefetch), _MM_HINT_T0);  \
        const __m256i lo = _mm256_and_si256(v, low4);                                          \
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);                    \
        for (int r = 0; r < ROWS; ++r) {                                                       \
          const __m256i xb = _mm256_set1_epi32(x4(xq + r * a.ldx + 4 * q));                    \
          acc0[r] = DOT(acc0[r], lo, xb);                                                      \
          acc1[r] = DOT(acc1[r], hi, xb);                                                      \
        }                                                                                      \
      }                                                                                        \
      const int64_t o0 = (nb * a.G + g) * kBlock + 8 * h, o1 = o0 + 16;                       \
      const __m256i k0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.colsum + o0));  \
      const __m256i k1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.colsum + o1));  \
      const __m256 s0 = _mm256_loadu_ps(a.scale + o0), s1 = _mm256_loadu_ps(a.scale + o1);     \
      for (int r = 0; r < ROWS; ++r) {                                                         \
        const __m256i xs = _mm256_set1_epi32(a.xsum[(m0 + r) * a.G + g]);                      \
        const __m256i i0 = _mm256_add_epi32(_mm256_add_epi32(acc0[r], k0), xs);                \
        const __m256i i1 = _mm256_add_epi32(_mm256_add_epi32(acc1[r], k1), xs);                \
        const __m256 p0 = _mm256_mul_ps(_mm256_cvtepi32_ps(i0), s0);                           \
        const __m256 p1 = _mm256_mul_ps(_mm256_cvtepi32_ps(i1), s1);                           \
        _mm256_store_ps(tot[r], _mm256_add_ps(_mm256_load_ps(tot[r]), p0));                    \
        _mm256_store_ps(tot[r] + 8, _mm256_add_ps(_mm256_load_ps(tot[r] + 8), p1));            \
      }                                                                                        \
    }                                                                                          \
    const int64_t w0 = std::max<int64_t>(0, std::min<int64_t>(8, a.n - c0));                  \
    const int64_t w1 = std::max<int64_t>(0, std::min<int64_t>(8, a.n - c1));                   \
    for (int r = 0; r < ROWS; ++r) {                                                           \
      float* out = a.y + (m0 + r) * a.n;                                                       \
      std::copy(tot[r], tot[r] + w0, out + c0);                                                \
      std::copy(tot[r] + 8, tot[r] + 8 + w1, out + c1);                                        \
    }                                                                                          \
  }

A8W4_HALF_KERNEL(half_vnni, "avx2,avxvnni", dot_vnni)
A8W4_HALF_KERNEL(half_avx2, "avx2", dot_avx2)
#undef A8W4_HALF_KERNEL

enum Isa : int64_t { kAvx2 = 0, kAvxVnni = 1, kAvx512Vnni = 2 };

Isa best_isa(int64_t requested) {
  static const bool v512 = __builtin_cpu_supports("avx512f") &&
                           __builtin_cpu_supports("avx512bw") &&
                           __builtin_cpu_supports("avx512vnni");
  static const bool vnni = __builtin_cpu_supports("avxvnni");
  if (requested >= kAvx512Vnni && v512) return kAvx512Vnni;
  if (requested >= kAvxVnni && vnni) return kAvxVnni;
  return kAvx2;
}

// Row tiles (8 rows on zmm, 4 on ymm, then the remainder) for every block in [nb0, nb1).
template <int T, typename F>
void tiles(int64_t M, F&& run) {
  int64_t m0 = 0;
  for (; m0 + T <= M; m0 += T) run(std::integral_constant<int, T>{}, m0);
  switch (M - m0) {
    case 7: if constexpr (T > 7) run(std::integral_constant<int, 7>{}, m0); break;
    case 6: if constexpr (T > 6) run(std::integral_constant<int, 6>{}, m0); break;
    case 5: if constexpr (T > 5) run(std::integral_constant<int, 5>{}, m0); break;
    case 4: if constexpr (T > 4) run(std::integral_constant<int, 4>{}, m0); break;
    case 3: run(std::integral_constant<int, 3>{}, m0); break;
    case 2: run(std::integral_constant<int, 2>{}, m0); break;
    case 1: run(std::integral_constant<int, 1>{}, m0); break;
    default: break;
  }
}

void run_blocks(const A8& a, int64_t nb0, int64_t nb1, Isa isa) {
  for (int64_t nb = nb0; nb < nb1; ++nb) {
    if (isa == kAvx512Vnni) {
      tiles<8>(a.M, [&](auto rows, int64_t m0) { block_512<decltype(rows)::value>(a, nb, m0); });
      continue;
    }
    for (int64_t h = 0; h < 2; ++h) {
      if (isa == kAvxVnni) {
        tiles<4>(a.M, [&](auto rows, int64_t m0) {
          half_vnni<decltype(rows)::value>(a, nb, h, m0);
        });
      } else {
        tiles<4>(a.M, [&](auto rows, int64_t m0) {
          half_avx2<decltype(rows)::value>(a, nb, h, m0);
        });
      }
    }
  }
}

at::Tensor a8w4_matmul_cpu(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& colsum,
                           const at::Tensor& scale, int64_t group_size, int64_t n, int64_t isa) {
  TORCH_CHECK(x.scalar_type() == at::kChar && x.dim() == 2 && x.stride(1) == 1,
              "a8w4_matmul: x must be int8 (M, K) with unit column stride");
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(group_size > 0 && group_size % 4 == 0 && K % group_size == 0 &&
                  group_size < (int64_t{1} << 20),
              "a8w4_matmul: group_size=", group_size, " must be a multiple of 4 dividing K=", K);
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 3 && packed.is_contiguous() &&
                  packed.size(1) == K / 4 && packed.size(2) == kLine,
              "a8w4_matmul: packed weight must be contiguous uint8 (NB, K/4=", K / 4, ", 64)");
  const int64_t NB = packed.size(0), NP = NB * kBlock, G = K / group_size;
  TORCH_CHECK(n > NP - kBlock && n <= NP, "a8w4_matmul: n=", n, " does not match ", NB,
              " blocks of 32 columns");
  auto table = [&](const at::Tensor& t, at::ScalarType dtype) {
    return t.scalar_type() == dtype && t.is_contiguous() && t.dim() == 3 && t.size(0) == NB &&
           t.size(1) == G && t.size(2) == kBlock;
  };
  TORCH_CHECK(table(colsum, at::kInt), "a8w4_matmul: colsum must be contiguous int32 (", NB,
              ", ", G, ", 32)");
  TORCH_CHECK(table(scale, at::kFloat), "a8w4_matmul: scale must be contiguous fp32 (", NB,
              ", ", G, ", 32)");
  at::Tensor y = at::empty({M, n}, x.options().dtype(at::kFloat));
  if (M == 0) return y;
  std::vector<int32_t> xsum(M * G);
  const int8_t* xp = x.data_ptr<int8_t>();
  int32_t* xs = xsum.data();
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < G; ++g) {
      int32_t s = 0;
      const int8_t* p = xp + m * x.stride(0) + g * group_size;
      for (int64_t k = 0; k < group_size; ++k) s += p[k];
      xs[m * G + g] = -8 * s;
    }
  A8 a{xp, x.stride(0), packed.data_ptr<uint8_t>(), colsum.data_ptr<int32_t>(),
       scale.data_ptr<float>(), xs, y.data_ptr<float>(), M, K, n, G, group_size};
  const Isa use = best_isa(isa);
  at::parallel_for(0, NB, 1, [&](int64_t b0, int64_t b1) { run_blocks(a, b0, b1, use); });
  return y;
}

// values int8 (K, n) in [-8, 7] -> (packed uint8 (NB, K/4, 64), colsum int32 (NB, K/group, 32)).
std::tuple<at::Tensor, at::Tensor> a8w4_pack_cpu(const at::Tensor& values, int64_t group_size) {
  TORCH_CHECK(values.scalar_type() == at::kChar && values.dim() == 2,
              "a8w4_pack: values must be int8 (K, n)");
  const at::Tensor v = values.contiguous();
  const int64_t K = v.size(0), n = v.size(1);
  TORCH_CHECK(n > 0 && group_size > 0 && group_size % 4 == 0 && K % group_size == 0,
              "a8w4_pack: group_size=", group_size, " must be a multiple of 4 dividing K=", K);
  const int64_t NB = (n + kBlock - 1) / kBlock, G = K / group_size;
  at::Tensor packed = at::empty({NB, K / 4, kLine}, v.options().dtype(at::kByte));
  at::Tensor colsum = at::zeros({NB, G, kBlock}, v.options().dtype(at::kInt));
  const int8_t* src = v.data_ptr<int8_t>();
  uint8_t* dst = packed.data_ptr<uint8_t>();
  int32_t* cs = colsum.data_ptr<int32_t>();
  bool in_range = true;
  for (int64_t k = 0; k < K; ++k)
    for (int64_t c = 0; c < n; ++c) {
      const int8_t w = src[k * n + c];
      in_range &= w >= -8 && w <= 7;
      cs[((c / kBlock) * G + k / group_size) * kBlock + c % kBlock] -= 8 * w;
    }
  TORCH_CHECK(in_range, "a8w4_pack: int4 values must lie in [-8, 7]");
  at::parallel_for(0, NB, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t nb = b0; nb < b1; ++nb)
      for (int64_t q = 0; q < K / 4; ++q) {
        uint8_t* line = dst + (nb * (K / 4) + q) * kLine;
        for (int64_t j = 0; j < 16; ++j)
          for (int64_t t = 0; t < 4; ++t) {
            const int64_t k = 4 * q + t, c = nb * kBlock + j;
            const int lo = c < n ? src[k * n + c] + 8 : 8;
            const int hi = c + 16 < n ? src[k * n + c + 16] + 8 : 8;
            line[4 * j + t] = static_cast<uint8_t>(lo | (hi << 4));
          }
      }
  });
  return {packed, colsum};
}

// Meta kernels use symbolic sizes: under torch.compile the token count stays dynamic.
at::Tensor a8w4_matmul_meta(const at::Tensor& x, const at::Tensor& packed,
                            const at::Tensor& colsum, const at::Tensor& scale, int64_t group_size,
                            int64_t n, int64_t isa) {
  return at::empty_symint({x.sym_size(0), c10::SymInt(n)}, x.options().dtype(at::kFloat));
}

std::tuple<at::Tensor, at::Tensor> a8w4_pack_meta(const at::Tensor& values, int64_t group_size) {
  const c10::SymInt K = values.sym_size(0), NB = (values.sym_size(1) + kBlock - 1) / kBlock;
  return {at::empty_symint({NB, K / 4, c10::SymInt(kLine)}, values.options().dtype(at::kByte)),
          at::empty_symint({NB, K / group_size, c10::SymInt(kBlock)},
                           values.options().dtype(at::kInt))};
}

// ------------------------------------------------------------- cached entry point
// a8w4_mm_cached(x, weight, scale, group_size, isa): the product for the *reference's*
// operands - weight int32 (K, n/8) contiguous (npu_convert_weight_to_int4pack: element 8j + t
// of row k in bits 4t..4t+3 of word j, two's complement), scale (G, n), or (n,) / (1, n) /
// (1,) for one group, float or int64 quant params - with the packed weight and the block-major
// scale table derived once per tensor and kept in C++ (tensor_cache.h): a compiled model calls this op directly.

struct PackedWeight {
  at::Tensor packed, colsum;
};

vllm_ascend::TensorCache<PackedWeight>& weight_cache() {
  static auto* c = new vllm_ascend::TensorCache<PackedWeight>();
  return *c;
}

vllm_ascend::TensorCache<at::Tensor>& scale_cache() {
  static auto* c = new vllm_ascend::TensorCache<at::Tensor>();
  return *c;
}

at::Tensor a8w4_mm_cached_cpu(const at::Tensor& x, const at::Tensor& weight,
                              const at::Tensor& scale, int64_t group_size, int64_t isa) {
  TORCH_CHECK(weight.scalar_type() == at::kInt && weight.dim() == 2 && weight.is_contiguous(),
              "a8w4_mm_cached: weight must be contiguous int32 (K, n/8)");
  TORCH_CHECK(x.dim() == 2 && x.size(1) == weight.size(0),
              "a8w4_mm_cached: x must be (M, K=", weight.size(0), ")");
  const int64_t K = weight.size(0), n = weight.size(1) * 8;
  TORCH_CHECK(group_size > 0 && K % group_size == 0, "a8w4_mm_cached: group_size=",
              group_size, " must divide K=", K);
  const int64_t G = K / group_size;
  TORCH_CHECK((scale.is_floating_point() || scale.scalar_type() == at::kLong) &&
                  (scale.numel() == G * n ? (scale.dim() == 2 ? scale.size(0) == G : G == 1)
                                          : scale.numel() == 1 && G == 1),
              "a8w4_mm_cached: scale must be (", G, ", ", n, "), or (n,) / (1, n) / (1,) for "
              "one group; float or int64 quant params");
  const PackedWeight& w = weight_cache().get(weight, group_size, [&](const at::Tensor& t) {
    const at::Tensor shifts = at::arange(0, 32, 4, t.options());
    at::Tensor values = at::bitwise_right_shift(at::bitwise_left_shift(
        t.unsqueeze(-1), 28 - shifts), 28).reshape({K, n}).to(at::kChar);
    auto [packed, colsum] = a8w4_pack_cpu(values, group_size);
    return PackedWeight{packed, colsum};
  });
  const at::Tensor& table = scale_cache().get(scale, G, [&](const at::Tensor& s) {
    // int64 quant params (npu_trans_quant_param) carry the fp32 pattern in bits 13-31
    // (quant.decode_quant_param); others are cast to fp32.
    const at::Tensor v = s.scalar_type() == at::kLong
        ? at::bitwise_and(s, int64_t{0xFFFFE000}).to(at::kInt).view(at::kFloat)
        : s.to(at::kFloat);
    const int64_t NB = (n + kBlock - 1) / kBlock;
    at::Tensor t = at::zeros({G, NB * kBlock}, v.options());
    t.narrow(1, 0, n).copy_(v.reshape({G, -1}).expand({G, n}));
    return t.reshape({G, NB, kBlock}).transpose(0, 1).contiguous();
  });
  return a8w4_matmul_cpu(x.stride(1) == 1 ? x : x.contiguous(), w.packed, w.colsum, table,
                         group_size, n, isa);
}

at::Tensor a8w4_mm_cached_meta(const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& scale, int64_t group_size, int64_t isa) {
  return at::empty_symint({x.sym_size(0), weight.sym_size(1) * 8}, x.options().dtype(at::kFloat));
}

// Builds so far (weights, scale tables); clear=True drops every entry (tests).
std::vector<int64_t> a8w4_cache(bool clear) {
  if (clear) {
    weight_cache().clear();
    scale_cache().clear();
  }
  return {weight_cache().builds(), scale_cache().builds()};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vllm_ascend, m) {
  m.def("a8w4_mm_cached(Tensor x, Tensor weight, Tensor scale, int group_size, int isa=2) "
        "-> Tensor");
  m.def("a8w4_cache(bool clear=False) -> int[]");
  m.def(
      "a8w4_matmul(Tensor x, Tensor packed, Tensor colsum, Tensor scale, int group_size, int n, "
      "int isa=2) -> Tensor");
  m.def("a8w4_pack(Tensor values, int group_size) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(vllm_ascend, CPU, m) {
  m.impl("a8w4_matmul", &a8w4_matmul_cpu);
  m.impl("a8w4_pack", &a8w4_pack_cpu);
  m.impl("a8w4_mm_cached", &a8w4_mm_cached_cpu);
}

TORCH_LIBRARY_IMPL(vllm_ascend, CompositeExplicitAutograd, m) {
  m.impl("a8w4_cache", &a8w4_cache);
}

TORCH_LIBRARY_IMPL(vllm_ascend, Meta, m) {
  m.impl("a8w4_matmul", &a8w4_matmul_meta);
  m.impl("a8w4_pack", &a8w4_pack_meta);
  m.impl("a8w4_mm_cached", &a8w4_mm_cached_meta);
}
