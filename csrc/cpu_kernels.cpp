// Low-bit CPU kernels for the reference backend (torch library namespace vllm_ascend):
// wq_matmul / wq_dequant (weight-only-quantised matmul), i8_matmul (exact int8 GEMM where
// oneDNN's is not exact) and dynamic_quant_int8.
//
// wq_matmul:
//
// y (M, n) fp32 = x (M, K) fp32 @ W, W[k, c] = (w[k, c] + offset[k / G, c]) * scale[k / G, c]
// with int8 or int4 weight values w kept packed in memory (1 or 0.5 byte per weight): the
// math of torch_npu.npu_weight_quant_batchmatmul (W8A16 / W4A16), see
// src/vllm_ascend/device/reference/matmul.py. The kernel sums x * (w + offset) over each
// group and applies the group's scale once (sum_g s_g * sum_k x_k (w_k + o_g)): the same
// real number as x @ W, in another fp32 rounding order (fp32 tolerance, like any two GEMMs).
// wq_dequant forms W = (float(w) + offset) * scale exactly as the reference does.
//
// Packed layout (built in Python by cpu_kernels._pack_weight): N is padded to NB = ceil(N/16)
// blocks of 16 columns; bytes[nb][k][B] with B = 16 (int8: byte j = column nb*16 + j) or
// B = 8 (int4: byte j = column j in the low nibble, column j + 8 in the high nibble, two's
// complement). scale/offset are fp32 (groups, NB*16), zero-padded.
//
// The AVX2/FMA code is compiled per function (target attribute), so loading this library on
// a CPU without AVX2 is safe; Python only calls it after checking AVX2 support.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <type_traits>
#include <cstdint>

namespace {

constexpr int64_t kBlockN = 16;
constexpr int64_t kTileM = 4;

struct Args {
  const float* x;       // (M, K), row stride ldx
  int64_t ldx;
  const uint8_t* w;     // (NB, K, bytes_per_k)
  const float* scale;   // (groups, NP)
  const float* offset;  // (groups, NP) or nullptr
  float* y;             // (M, n) row stride ldy, or the (K, n) dequantised weight
  int64_t ldy;
  int64_t M, K, n, NP, group_size, bits;
};

__attribute__((target("avx2,fma"))) inline void load_w(const uint8_t* p, int64_t bits,
                                                         __m256& w0, __m256& w1) {
  if (bits == 4) {
    __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    w0 = _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(b, 28), 28));
    w1 = _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(b, 24), 28));
  } else {
    __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
    w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)));
  }
}

// The kernels below compute, per block of 16 columns and tile of ROWS rows,
//   y[r, c] = sum_g scale[g, c] * sum_{k in group g} x[r, k] * (w[k, c] + offset[g, c])
// with U independent partial sums over k (FMA latency) added at the group's end.

// One k: 16 weights times ROWS activations into the partial sums p0/p1 (8 lanes each).
template <int BITS, bool OFF, int ROWS>
__attribute__((target("avx2,fma"), always_inline)) inline void step_avx2(
    const uint8_t* wp, const float* xk, int64_t ldx, __m256 o0, __m256 o1, __m256 (&p0)[ROWS],
    __m256 (&p1)[ROWS]) {
  __m256 w0, w1;
  load_w(wp, BITS, w0, w1);
  if (OFF) {
    w0 = _mm256_add_ps(w0, o0);
    w1 = _mm256_add_ps(w1, o1);
  }
  for (int r = 0; r < ROWS; ++r) {
    const __m256 xv = _mm256_broadcast_ss(xk + r * ldx);
    p0[r] = _mm256_fmadd_ps(xv, w0, p0[r]);
    p1[r] = _mm256_fmadd_ps(xv, w1, p1[r]);
  }
}

// AVX2: 16 columns as two 8-lane halves; the running totals live in a small stack buffer
// (touched once per group) so that the 16 ymm registers hold the partial sums.
template <int BITS, bool OFF, int ROWS, int U>
__attribute__((target("avx2,fma"))) void gemm_block_avx2(const Args& a, int64_t nb,
                                                          int64_t m0) {
  constexpr int64_t bpk = BITS == 4 ? 8 : 16;
  const uint8_t* base = a.w + nb * a.K * bpk;
  const int64_t col = nb * kBlockN;
  const float* xr = a.x + m0 * a.ldx;
  alignas(32) float total[ROWS][kBlockN] = {};
  for (int64_t g = 0, k0 = 0; k0 < a.K; ++g, k0 += a.group_size) {
    const int64_t k1 = std::min(a.K, k0 + a.group_size);
    __m256 p0[U][ROWS], p1[U][ROWS];
    for (int u = 0; u < U; ++u)
      for (int r = 0; r < ROWS; ++r) p0[u][r] = p1[u][r] = _mm256_setzero_ps();
    __m256 o0 = _mm256_setzero_ps(), o1 = o0;
    if (OFF) {
      o0 = _mm256_loadu_ps(a.offset + g * a.NP + col);
      o1 = _mm256_loadu_ps(a.offset + g * a.NP + col + 8);
    }
    int64_t k = k0;
    for (; k + U <= k1; k += U)
      for (int u = 0; u < U; ++u)
        step_avx2<BITS, OFF, ROWS>(base + (k + u) * bpk, xr + k + u, a.ldx, o0, o1, p0[u], p1[u]);
    for (; k < k1; ++k)
      step_avx2<BITS, OFF, ROWS>(base + k * bpk, xr + k, a.ldx, o0, o1, p0[0], p1[0]);
    const __m256 s0 = _mm256_loadu_ps(a.scale + g * a.NP + col);
    const __m256 s1 = _mm256_loadu_ps(a.scale + g * a.NP + col + 8);
    for (int r = 0; r < ROWS; ++r) {
      __m256 q0 = p0[0][r], q1 = p1[0][r];
      for (int u = 1; u < U; ++u) {
        q0 = _mm256_add_ps(q0, p0[u][r]);
        q1 = _mm256_add_ps(q1, p1[u][r]);
      }
      _mm256_store_ps(total[r], _mm256_fmadd_ps(q0, s0, _mm256_load_ps(total[r])));
      _mm256_store_ps(total[r] + 8, _mm256_fmadd_ps(q1, s1, _mm256_load_ps(total[r] + 8)));
    }
  }
  const int64_t width = std::min(kBlockN, a.n - col);
  for (int r = 0; r < ROWS; ++r)
    std::copy(total[r], total[r] + width, a.y + (m0 + r) * a.ldy + col);
}

// AVX-512: 16 columns per register; int4 nibbles are decoded by a 16-entry table (vpermps
// reads the low 4 bits of each lane).
__attribute__((target("avx512f"))) inline __m512 load_w512(const uint8_t* p, int64_t bits) {
  if (bits == 4) {
    const __m512 lut = _mm512_setr_ps(0.f, 1.f, 2.f, 3.f, 4.f, 5.f, 6.f, 7.f, -8.f, -7.f, -6.f,
                                      -5.f, -4.f, -3.f, -2.f, -1.f);
    const __m512i shifts = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 4, 4, 4, 4);
    __m128i b = _mm_set1_epi64x(*reinterpret_cast<const int64_t*>(p));
    __m512i v = _mm512_srlv_epi32(_mm512_cvtepu8_epi32(b), shifts);
    return _mm512_permutexvar_ps(v, lut);
  }
  __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
}

template <int BITS, bool OFF, int ROWS>
__attribute__((target("avx512f"), always_inline)) inline void step_avx512(
    const uint8_t* wp, const float* xk, int64_t ldx, __m512 o, __m512 (&part)[ROWS]) {
  __m512 w = load_w512(wp, BITS);
  if (OFF) w = _mm512_add_ps(w, o);
  for (int r = 0; r < ROWS; ++r)
    part[r] = _mm512_fmadd_ps(_mm512_set1_ps(xk[r * ldx]), w, part[r]);
}

template <int BITS, bool OFF, int ROWS, int U>
__attribute__((target("avx512f"))) void gemm_block_avx512(const Args& a, int64_t nb,
                                                            int64_t m0) {
  constexpr int64_t bpk = BITS == 4 ? 8 : 16;
  const uint8_t* base = a.w + nb * a.K * bpk;
  const int64_t col = nb * kBlockN;
  const float* xr = a.x + m0 * a.ldx;
  __m512 acc[ROWS];
  for (int r = 0; r < ROWS; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t g = 0, k0 = 0; k0 < a.K; ++g, k0 += a.group_size) {
    const int64_t k1 = std::min(a.K, k0 + a.group_size);
    __m512 part[U][ROWS];
    for (int u = 0; u < U; ++u)
      for (int r = 0; r < ROWS; ++r) part[u][r] = _mm512_setzero_ps();
    const __m512 o = OFF ? _mm512_loadu_ps(a.offset + g * a.NP + col) : _mm512_setzero_ps();
    int64_t k = k0;
    for (; k + U <= k1; k += U)
      for (int u = 0; u < U; ++u)
        step_avx512<BITS, OFF, ROWS>(base + (k + u) * bpk, xr + k + u, a.ldx, o, part[u]);
    for (; k < k1; ++k) step_avx512<BITS, OFF, ROWS>(base + k * bpk, xr + k, a.ldx, o, part[0]);
    const __m512 s = _mm512_loadu_ps(a.scale + g * a.NP + col);
    for (int r = 0; r < ROWS; ++r) {
      __m512 q = part[0][r];
      for (int u = 1; u < U; ++u) q = _mm512_add_ps(q, part[u][r]);
      acc[r] = _mm512_fmadd_ps(q, s, acc[r]);
    }
  }
  const int64_t width = std::min(kBlockN, a.n - col);
  const __mmask16 mask = static_cast<__mmask16>((1u << width) - 1u);
  for (int r = 0; r < ROWS; ++r)
    _mm512_mask_storeu_ps(a.y + (m0 + r) * a.ldy + col, mask, acc[r]);
}

bool has_avx512() {
  static const bool yes = __builtin_cpu_supports("avx512f");
  return yes;
}

bool has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}

// Row tiles of 8 (AVX-512) and 4, then 3, 2, 1, for every block in [nb0, nb1).
template <int BITS, bool OFF, bool WIDE>
void gemm_blocks_t(const Args& a, int64_t nb0, int64_t nb1) {
  for (int64_t nb = nb0; nb < nb1; ++nb) {
    int64_t m0 = 0;
    if constexpr (WIDE) {
      for (; m0 + 8 <= a.M; m0 += 8) gemm_block_avx512<BITS, OFF, 8, 2>(a, nb, m0);
      for (; m0 + kTileM <= a.M; m0 += kTileM) gemm_block_avx512<BITS, OFF, 4, 4>(a, nb, m0);
      switch (a.M - m0) {
        case 3: gemm_block_avx512<BITS, OFF, 3, 4>(a, nb, m0); break;
        case 2: gemm_block_avx512<BITS, OFF, 2, 4>(a, nb, m0); break;
        case 1: gemm_block_avx512<BITS, OFF, 1, 4>(a, nb, m0); break;
        default: break;
      }
    } else {
      for (; m0 + kTileM <= a.M; m0 += kTileM) gemm_block_avx2<BITS, OFF, 4, 1>(a, nb, m0);
      switch (a.M - m0) {
        case 3: gemm_block_avx2<BITS, OFF, 3, 1>(a, nb, m0); break;
        case 2: gemm_block_avx2<BITS, OFF, 2, 2>(a, nb, m0); break;
        case 1: gemm_block_avx2<BITS, OFF, 1, 4>(a, nb, m0); break;
        default: break;
      }
    }
  }
}

void gemm_blocks(const Args& a, int64_t nb0, int64_t nb1, bool wide) {
  const bool off = a.offset != nullptr;
  if (wide) {
    if (a.bits == 4) {
      off ? gemm_blocks_t<4, true, true>(a, nb0, nb1) : gemm_blocks_t<4, false, true>(a, nb0, nb1);
    } else {
      off ? gemm_blocks_t<8, true, true>(a, nb0, nb1) : gemm_blocks_t<8, false, true>(a, nb0, nb1);
    }
  } else {
    if (a.bits == 4) {
      off ? gemm_blocks_t<4, true, false>(a, nb0, nb1)
          : gemm_blocks_t<4, false, false>(a, nb0, nb1);
    } else {
      off ? gemm_blocks_t<8, true, false>(a, nb0, nb1)
          : gemm_blocks_t<8, false, false>(a, nb0, nb1);
    }
  }
}

// W (K, n) fp32 for the columns of blocks [nb0, nb1).
__attribute__((target("avx2,fma"))) void dequant_blocks(const Args& a, int64_t nb0, int64_t nb1) {
  const int64_t bpk = a.bits == 4 ? 8 : 16;
  for (int64_t nb = nb0; nb < nb1; ++nb) {
    const uint8_t* wp = a.w + nb * a.K * bpk;
    const int64_t col = nb * kBlockN;
    const int64_t width = std::min(kBlockN, a.n - col);
    for (int64_t k = 0; k < a.K; ++k, wp += bpk) {
      const int64_t g = k / a.group_size;
      __m256 w0, w1;
      load_w(wp, a.bits, w0, w1);
      const float* sp = a.scale + g * a.NP + col;
      if (a.offset) {
        const float* op = a.offset + g * a.NP + col;
        w0 = _mm256_add_ps(w0, _mm256_loadu_ps(op));
        w1 = _mm256_add_ps(w1, _mm256_loadu_ps(op + 8));
      }
      w0 = _mm256_mul_ps(w0, _mm256_loadu_ps(sp));
      w1 = _mm256_mul_ps(w1, _mm256_loadu_ps(sp + 8));
      float* out = a.y + k * a.ldy + col;
      if (width == kBlockN) {
        _mm256_storeu_ps(out, w0);
        _mm256_storeu_ps(out + 8, w1);
      } else {
        alignas(32) float tmp[kBlockN];
        _mm256_store_ps(tmp, w0);
        _mm256_store_ps(tmp + 8, w1);
        std::copy(tmp, tmp + width, out);
      }
    }
  }
}

Args check_args(const at::Tensor& packed, const at::Tensor& scale,
                const c10::optional<at::Tensor>& offset, int64_t K, int64_t bits,
                int64_t group_size, int64_t n) {
  TORCH_CHECK(bits == 4 || bits == 8, "wq: bits must be 4 or 8, got ", bits);
  const int64_t bpk = bits == 4 ? 8 : 16;
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 3 && packed.is_contiguous() &&
                  packed.size(1) == K && packed.size(2) == bpk,
              "wq: packed weight must be contiguous uint8 (NB, K=", K, ", ", bpk, ")");
  const int64_t NB = packed.size(0);
  const int64_t NP = NB * kBlockN;
  TORCH_CHECK(n > 0 && n <= NP && n > NP - kBlockN, "wq: n=", n, " does not match ", NB,
              " blocks of 16 columns");
  TORCH_CHECK(group_size > 0, "wq: group_size must be positive");
  const int64_t groups = (K + group_size - 1) / group_size;
  auto check_param = [&](const at::Tensor& p, const char* name) {
    TORCH_CHECK(p.scalar_type() == at::kFloat && p.is_contiguous() && p.dim() == 2 &&
                    p.size(0) == groups && p.size(1) == NP,
                "wq: ", name, " must be contiguous fp32 (", groups, ", ", NP, ")");
  };
  check_param(scale, "scale");
  if (offset.has_value()) check_param(*offset, "offset");
  Args a{};
  a.w = packed.data_ptr<uint8_t>();
  a.scale = scale.data_ptr<float>();
  a.offset = offset.has_value() ? offset->data_ptr<float>() : nullptr;
  a.K = K;
  a.n = n;
  a.NP = NP;
  a.group_size = group_size;
  a.bits = bits;
  return a;
}

at::Tensor wq_matmul_cpu(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                         const c10::optional<at::Tensor>& offset, int64_t bits,
                         int64_t group_size, int64_t n, bool use_avx512) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() == 2 && x.stride(1) == 1,
              "wq_matmul: x must be fp32 (M, K) with unit column stride");
  Args a = check_args(packed, scale, offset, x.size(1), bits, group_size, n);
  at::Tensor y = at::empty({x.size(0), n}, x.options());
  a.x = x.data_ptr<float>();
  a.ldx = x.stride(0);
  a.y = y.data_ptr<float>();
  a.ldy = n;
  a.M = x.size(0);
  if (a.M == 0) return y;
  const bool wide = use_avx512 && has_avx512();
  at::parallel_for(0, packed.size(0), 1,
                   [&](int64_t b0, int64_t b1) { gemm_blocks(a, b0, b1, wide); });
  return y;
}

at::Tensor wq_dequant_cpu(const at::Tensor& packed, const at::Tensor& scale,
                          const c10::optional<at::Tensor>& offset, int64_t bits,
                          int64_t group_size, int64_t n) {
  TORCH_CHECK(packed.dim() == 3, "wq_dequant: packed weight must be 3-d");
  Args a = check_args(packed, scale, offset, packed.size(1), bits, group_size, n);
  at::Tensor w = at::empty({a.K, n}, scale.options());
  a.y = w.data_ptr<float>();
  a.ldy = n;
  at::parallel_for(0, packed.size(0), 1,
                   [&](int64_t b0, int64_t b1) { dequant_blocks(a, b0, b1); });
  return w;
}

// Exact int8 GEMM for CPUs where oneDNN's int8 path is not exact (no VNNI: vpmaddubsw
// saturates int16 pairs). acc (M, n) int32 = x int8 (M, K) @ w int8 (K, n), with
// vpmaddwd on int16 operands (a pair of int8 products never leaves int16 x int16 -> int32,
// so every partial sum is exact; |acc| <= K * 2**14 < 2**31 for K < 131072).
// Packed weight: (NB, K2 = ceil(K/2), 16 columns, 2 rows k, k+1) int8, zero-padded.
template <int ROWS>
__attribute__((target("avx2"))) void i8_block(const int8_t* w, const int32_t* xp, int64_t K2,
                                               int32_t* y, int64_t ldy, int64_t n, int64_t nb,
                                               int64_t m0) {
  const int8_t* base = w + nb * K2 * 32;
  __m256i acc0[ROWS], acc1[ROWS];
  for (int r = 0; r < ROWS; ++r) acc0[r] = acc1[r] = _mm256_setzero_si256();
  for (int64_t kp = 0; kp < K2; ++kp) {
    const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(base + kp * 32));
    const __m256i w0 = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(wv));
    const __m256i w1 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(wv, 1));
    for (int r = 0; r < ROWS; ++r) {
      const __m256i xv = _mm256_set1_epi32(xp[(m0 + r) * K2 + kp]);
      acc0[r] = _mm256_add_epi32(acc0[r], _mm256_madd_epi16(xv, w0));
      acc1[r] = _mm256_add_epi32(acc1[r], _mm256_madd_epi16(xv, w1));
    }
  }
  const int64_t col = nb * kBlockN;
  const int64_t width = std::min(kBlockN, n - col);
  for (int r = 0; r < ROWS; ++r) {
    alignas(32) int32_t tmp[kBlockN];
    _mm256_store_si256(reinterpret_cast<__m256i*>(tmp), acc0[r]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(tmp + 8), acc1[r]);
    std::copy(tmp, tmp + width, y + (m0 + r) * ldy + col);
  }
}

at::Tensor i8_matmul_cpu(const at::Tensor& x, const at::Tensor& packed, int64_t n) {
  TORCH_CHECK(x.scalar_type() == at::kChar && x.dim() == 2 && x.is_contiguous(),
              "i8_matmul: x must be contiguous int8 (M, K)");
  const int64_t M = x.size(0), K = x.size(1), K2 = (K + 1) / 2;
  TORCH_CHECK(packed.scalar_type() == at::kChar && packed.dim() == 4 && packed.is_contiguous() &&
                  packed.size(1) == K2 && packed.size(2) == kBlockN && packed.size(3) == 2,
              "i8_matmul: packed weight must be contiguous int8 (NB, ceil(K/2), 16, 2)");
  const int64_t NB = packed.size(0);
  TORCH_CHECK(n > 0 && n <= NB * kBlockN && n > (NB - 1) * kBlockN, "i8_matmul: bad n=", n);
  at::Tensor y = at::empty({M, n}, x.options().dtype(at::kInt));
  if (M == 0) return y;
  // x as int16 pairs (x[k], x[k+1]) in one int32 per pair, the odd tail paired with 0.
  at::Tensor pairs = at::empty({M, K2}, x.options().dtype(at::kInt));
  const int8_t* xs = x.data_ptr<int8_t>();
  int32_t* xp = pairs.data_ptr<int32_t>();
  for (int64_t m = 0; m < M; ++m)
    for (int64_t kp = 0; kp < K2; ++kp) {
      const int64_t k = 2 * kp;
      const uint32_t lo = static_cast<uint16_t>(static_cast<int16_t>(xs[m * K + k]));
      const uint32_t hi = k + 1 < K ? static_cast<uint16_t>(static_cast<int16_t>(xs[m * K + k + 1]))
                                    : 0u;
      xp[m * K2 + kp] = static_cast<int32_t>(lo | (hi << 16));
    }
  const int8_t* w = packed.data_ptr<int8_t>();
  int32_t* yp = y.data_ptr<int32_t>();
  at::parallel_for(0, NB, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t nb = b0; nb < b1; ++nb) {
      int64_t m0 = 0;
      for (; m0 + kTileM <= M; m0 += kTileM) i8_block<4>(w, xp, K2, yp, n, n, nb, m0);
      switch (M - m0) {
        case 3: i8_block<3>(w, xp, K2, yp, n, n, nb, m0); break;
        case 2: i8_block<2>(w, xp, K2, yp, n, n, nb, m0); break;
        case 1: i8_block<1>(w, xp, K2, yp, n, n, nb, m0); break;
        default: break;
      }
    }
  });
  return y;
}

// Meta kernels use symbolic sizes: under torch.compile the token count stays dynamic.
at::Tensor i8_matmul_meta(const at::Tensor& x, const at::Tensor& packed, int64_t n) {
  return at::empty_symint({x.sym_size(0), c10::SymInt(n)}, x.options().dtype(at::kInt));
}

// Per-row symmetric int8 quantisation, bit-identical to the reference npu_dynamic_quant
// (no smooth scales): scale = max|x| / 127 (a NaN max or a zero gives scale 1),
// y = round_half_even(x / scale) clamped to [-127, 127], NaN -> 0 (torch's cast of a NaN).
// True IEEE division and no FMA contraction (-ffp-contract=off), like the torch ops.
// One fp32 row, AVX2: the same IEEE operations 8 lanes at a time (max of |x| ignoring NaN
// plus a NaN flag; vdivps; vroundps to nearest-even; clamp; NaN lanes -> 0), so the result is
// bit-identical to the scalar loop below (which also finishes a tail of h % 8 here).
__attribute__((target("avx2,fma"))) void dynamic_quant_row_avx2(const float* xr, int8_t* yr,
                                                                 float* scale, int64_t h) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 vmax = _mm256_setzero_ps();
  __m256 vnan = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= h; j += 8) {
    const __m256 a = _mm256_andnot_ps(sign, _mm256_loadu_ps(xr + j));
    vnan = _mm256_or_ps(vnan, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
    vmax = _mm256_max_ps(a, vmax);  // a NaN in `a` keeps vmax (second operand)
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, vmax);
  float m = 0.f;
  for (float v : lanes) m = v > m ? v : m;
  bool nan = _mm256_movemask_ps(vnan) != 0;
  for (int64_t t = j; t < h; ++t) {
    const float a = std::fabs(xr[t]);
    nan |= std::isnan(a);
    m = a > m ? a : m;
  }
  float s = nan ? std::numeric_limits<float>::quiet_NaN() : m / 127.0f;
  if (!(s > 0.f)) s = 1.0f;
  *scale = s;
  const __m256 vs = _mm256_set1_ps(s);
  const __m256 lo = _mm256_set1_ps(-127.f), hi = _mm256_set1_ps(127.f);
  j = 0;
  for (; j + 8 <= h; j += 8) {
    const __m256 v = _mm256_div_ps(_mm256_loadu_ps(xr + j), vs);
    const __m256 ord = _mm256_cmp_ps(v, v, _CMP_ORD_Q);
    __m256 q = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    q = _mm256_and_ps(_mm256_min_ps(_mm256_max_ps(q, lo), hi), ord);  // NaN -> +0
    const __m256i i32 = _mm256_cvtps_epi32(q);
    const __m128i i16 = _mm_packs_epi32(_mm256_castsi256_si128(i32),
                                        _mm256_extracti128_si256(i32, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(yr + j), _mm_packs_epi16(i16, i16));
  }
  for (; j < h; ++j) {
    const float v = xr[j] / s;
    if (std::isnan(v)) {
      yr[j] = 0;
    } else {
      const float q = std::nearbyint(v);
      yr[j] = static_cast<int8_t>(q < -127.f ? -127.f : (q > 127.f ? 127.f : q));
    }
  }
}

template <typename T>
void dynamic_quant_rows(const T* x, int8_t* y, float* scale, int64_t rows, int64_t h) {
  if constexpr (std::is_same_v<T, float>) {
    if (has_avx2()) {
      at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r)
          dynamic_quant_row_avx2(x + r * h, y + r * h, scale + r, h);
      });
      return;
    }
  }
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * h;
      int8_t* yr = y + r * h;
      float m = 0.f;
      bool nan = false;
      for (int64_t j = 0; j < h; ++j) {
        const float a = std::fabs(static_cast<float>(xr[j]));
        nan |= std::isnan(a);
        m = a > m ? a : m;
      }
      float s = nan ? std::numeric_limits<float>::quiet_NaN() : m / 127.0f;
      if (!(s > 0.f)) s = 1.0f;
      scale[r] = s;
      for (int64_t j = 0; j < h; ++j) {
        const float v = static_cast<float>(xr[j]) / s;
        if (std::isnan(v)) {
          yr[j] = 0;
        } else {
          const float q = std::nearbyint(v);
          yr[j] = static_cast<int8_t>(q < -127.f ? -127.f : (q > 127.f ? 127.f : q));
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> dynamic_quant_int8_cpu(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.size(1) > 0,
              "dynamic_quant_int8: x must be a contiguous (rows, H > 0) tensor");
  at::Tensor y = at::empty(x.sizes(), x.options().dtype(at::kChar));
  at::Tensor s = at::empty({x.size(0)}, x.options().dtype(at::kFloat));
  const int64_t rows = x.size(0), h = x.size(1);
  if (x.scalar_type() == at::kFloat) {
    dynamic_quant_rows(x.data_ptr<float>(), y.data_ptr<int8_t>(), s.data_ptr<float>(), rows, h);
  } else if (x.scalar_type() == at::kBFloat16) {
    dynamic_quant_rows(x.data_ptr<at::BFloat16>(), y.data_ptr<int8_t>(), s.data_ptr<float>(),
                       rows, h);
  } else if (x.scalar_type() == at::kHalf) {
    dynamic_quant_rows(x.data_ptr<at::Half>(), y.data_ptr<int8_t>(), s.data_ptr<float>(), rows,
                       h);
  } else {
    TORCH_CHECK(false, "dynamic_quant_int8: x must be fp32, bf16 or fp16");
  }
  return {y, s};
}

std::tuple<at::Tensor, at::Tensor> dynamic_quant_int8_meta(const at::Tensor& x) {
  return {at::empty_symint(x.sym_sizes(), x.options().dtype(at::kChar)),
          at::empty_symint({x.sym_size(0)}, x.options().dtype(at::kFloat))};
}

at::Tensor wq_matmul_meta(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                          const c10::optional<at::Tensor>& offset, int64_t bits,
                          int64_t group_size, int64_t n, bool use_avx512) {
  return at::empty_symint({x.sym_size(0), c10::SymInt(n)}, x.options());
}

at::Tensor wq_dequant_meta(const at::Tensor& packed, const at::Tensor& scale,
                           const c10::optional<at::Tensor>& offset, int64_t bits,
                           int64_t group_size, int64_t n) {
  return at::empty_symint({packed.sym_size(1), c10::SymInt(n)}, scale.options());
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vllm_ascend, m) {
  m.def(
      "wq_matmul(Tensor x, Tensor packed, Tensor scale, Tensor? offset, int bits, "
      "int group_size, int n, bool use_avx512=True) -> Tensor");
  m.def(
      "wq_dequant(Tensor packed, Tensor scale, Tensor? offset, int bits, int group_size, "
      "int n) -> Tensor");
  m.def("dynamic_quant_int8(Tensor x) -> (Tensor, Tensor)");
  m.def("i8_matmul(Tensor x, Tensor packed, int n) -> Tensor");
}

TORCH_LIBRARY_IMPL(vllm_ascend, CPU, m) {
  m.impl("wq_matmul", &wq_matmul_cpu);
  m.impl("wq_dequant", &wq_dequant_cpu);
  m.impl("dynamic_quant_int8", &dynamic_quant_int8_cpu);
  m.impl("i8_matmul", &i8_matmul_cpu);
}

TORCH_LIBRARY_IMPL(vllm_ascend, Meta, m) {
  m.impl("wq_matmul", &wq_matmul_meta);
  m.impl("wq_dequant", &wq_dequant_meta);
  m.impl("dynamic_quant_int8", &dynamic_quant_int8_meta);
  m.impl("i8_matmul", &i8_matmul_meta);
}
