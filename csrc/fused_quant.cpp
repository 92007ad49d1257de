// Fused norm / activation + int8 quantisation for the reference backend (torch library
// namespace vllm_ascend), the CPU fast paths of src/vllm_ascend/device/reference/fused.py:
//
//   add_rms_norm_quant(Tensor x1, Tensor? x2, Tensor gamma, Tensor? beta, Tensor? smooth,
//                      Tensor? scales, Tensor? zero_points, bool div_mode, float epsilon)
//       -> (Tensor y, Tensor x_sum, Tensor scale)
//     x1, x2 (M, H) contiguous, the same dtype (fp32 / bf16 / fp16); gamma, beta, smooth (H,)
//     fp32. x = x1 + x2 in fp32, rounded to x1's dtype (x_sum, (0,) without x2);
//     n = x * rstd * gamma [+ beta], rstd = 1 / sqrt(mean(x^2) + epsilon);
//     dynamic (scales undefined): v = n [* smooth], scale[m] = max|v| / 127 (0 or NaN -> 1),
//       y = round_half_even(v / scale) clamped to [-127, 127], NaN -> 0;
//     static: q = n / scales (div_mode) or n * scales, [+ zero_points], y = round_half_even(q)
//       clamped to [-128, 127]; scales / zero_points (H,) or (1,) fp32; scale is (0,).
//
//   swiglu_dynamic_quant(Tensor x, Tensor? smooth, Tensor? group_index, int group_list_type,
//                        bool activate_left) -> (Tensor y, Tensor scale)
//     x (M, 2H) contiguous fp32 / bf16 / fp16, halves a | b; s = silu(a) * b (activate_left)
//     or a * silu(b); v = s [* smooth[g]]; then the dynamic int8 above. smooth (G, H) or
//     (1, H) fp32; group_index (G,) int64 cumulative row ends (group_list_type 0) or counts
//     (1): row m belongs to the first group whose end exceeds m; rows past the last end are
//     not computed (y = 0, scale = 0). Without group_index every row is computed, smooth row 0.
//
// The math is the reference's in fp32 (the sum of squares in double; silu's exp from a
// degree-5 polynomial on AVX2, ~2 ulp), so results agree with it to fp32 rounding (the int8
// values within one step where v / scale lies on a rounding boundary):
// tests/ut/device/test_fused_quant_ops.py holds both to a float64 oracle.
// The row loops are AVX2 (compiled per function: safe to load without AVX2, which falls back
// to the scalar loops; the quantisation is bit-identical either way).
// group_index is validated here (TORCH_CHECK_VALUE -> ValueError), so compiled graphs need no
// data-dependent Python; the meta kernels keep the row count symbolic.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

// round_half_even(q) clamped to [lo, 127], NaN -> 0 (the scalar int8 step of every loop).
inline int8_t round_clamp_int8(float q, float lo) {
  if (std::isnan(q)) return 0;
  const float r = std::nearbyint(q);
  return static_cast<int8_t>(r < lo ? lo : (r > 127.f ? 127.f : r));
}

template <typename T>
inline float ld(const T* p, int64_t i) {
  return static_cast<float>(p[i]);
}

bool avx2() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}

// exp(x), 8 lanes (Cephes' expf: range reduction by ln 2, degree-5 polynomial; ~2 ulp).
__attribute__((target("avx2,fma"))) inline __m256 exp_avx2(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
  __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f),
                                              _mm256_set1_ps(0.5f)));
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// 8 values at p (fp32, bf16 or fp16) as fp32.
template <typename T>
__attribute__((target("avx2,fma"))) inline __m256 load8(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return _mm256_loadu_ps(p);
  } else if constexpr (std::is_same_v<T, at::BFloat16>) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(b), 16));
  } else {
    alignas(32) float f[8];
    for (int i = 0; i < 8; ++i) f[i] = static_cast<float>(p[i]);
    return _mm256_load_ps(f);
  }
}

// Dynamic int8 of one fp32 row, AVX2: the scalar quant_row_dynamic's IEEE operations 8 lanes
// at a time (max |v| ignoring NaN plus a NaN flag, vdivps, round to nearest even, clamp,
// NaN -> 0), so the result is bit-identical to it.
__attribute__((target("avx2,fma"))) float quant_row_avx2(const float* v, int8_t* y, int64_t h) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 vmax = _mm256_setzero_ps(), vnan = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= h; j += 8) {
    const __m256 a = _mm256_andnot_ps(sign, _mm256_loadu_ps(v + j));
    vnan = _mm256_or_ps(vnan, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
    vmax = _mm256_max_ps(a, vmax);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, vmax);
  float m = 0.f;
  for (float l : lanes) m = l > m ? l : m;
  bool nan = _mm256_movemask_ps(vnan) != 0;
  for (int64_t t = j; t < h; ++t) {
    const float a = std::fabs(v[t]);
    nan |= std::isnan(a);
    m = a > m ? a : m;
  }
  float s = nan ? std::numeric_limits<float>::quiet_NaN() : m / 127.0f;
  if (!(s > 0.f)) s = 1.0f;
  const __m256 vs = _mm256_set1_ps(s), lo = _mm256_set1_ps(-127.f), hi = _mm256_set1_ps(127.f);
  for (j = 0; j + 8 <= h; j += 8) {
    const __m256 q = _mm256_div_ps(_mm256_loadu_ps(v + j), vs);
    const __m256 ord = _mm256_cmp_ps(q, q, _CMP_ORD_Q);
    __m256 r = _mm256_round_ps(q, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm256_and_ps(_mm256_min_ps(_mm256_max_ps(r, lo), hi), ord);
    const __m256i i32 = _mm256_cvtps_epi32(r);
    const __m128i i16 = _mm_packs_epi32(_mm256_castsi256_si128(i32),
                                        _mm256_extracti128_si256(i32, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(y + j), _mm_packs_epi16(i16, i16));
  }
  for (; j < h; ++j) {
    y[j] = round_clamp_int8(v[j] / s, -127.f);
  }
  return s;
}

// v[j] = silu(a[j]) * b[j] (left) or a[j] * silu(b[j]), times sm[j] when given, AVX2; the
// scalar tail (h % 8) uses std::exp.
template <typename T>
__attribute__((target("avx2,fma"))) void swiglu_row_avx2(const T* a, const T* b, const float* sm,
                                                         bool left, float* v, int64_t h) {
  const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
  int64_t j = 0;
  for (; j + 8 <= h; j += 8) {
    const __m256 va = load8(a + j), vb = load8(b + j);
    const __m256 g = left ? va : vb;
    const __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, exp_avx2(_mm256_xor_ps(g, sign))));
    __m256 r = _mm256_mul_ps(silu, left ? vb : va);
    if (sm) r = _mm256_mul_ps(r, _mm256_loadu_ps(sm + j));
    _mm256_storeu_ps(v + j, r);
  }
  for (; j < h; ++j) {
    const float x = static_cast<float>(a[j]), y = static_cast<float>(b[j]);
    const float g = left ? x : y;
    float r = g / (1.0f + std::exp(-g)) * (left ? y : x);
    if (sm) r *= sm[j];
    v[j] = r;
  }
}

// buf = a + b (fp32 rows), also stored to sum; returns sum(buf^2) in double. AVX2.
__attribute__((target("avx2,fma"))) double add_sumsq_avx2(const float* a, const float* b,
                                                         float* sum, float* buf, int64_t h) {
  __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
  int64_t j = 0;
  for (; j + 8 <= h; j += 8) {
    __m256 v = _mm256_loadu_ps(a + j);
    if (b) {
      v = _mm256_add_ps(v, _mm256_loadu_ps(b + j));
      _mm256_storeu_ps(sum + j, v);
    }
    _mm256_storeu_ps(buf + j, v);
    const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
    const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
    acc0 = _mm256_fmadd_pd(lo, lo, acc0);
    acc1 = _mm256_fmadd_pd(hi, hi, acc1);
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(acc0, acc1));
  double ss = lanes[0] + lanes[1] + lanes[2] + lanes[3];
  for (; j < h; ++j) {
    float v = a[j];
    if (b) {
      v += b[j];
      sum[j] = v;
    }
    buf[j] = v;
    ss += static_cast<double>(v) * static_cast<double>(v);
  }
  return ss;
}

// buf = buf * rstd * gamma [+ beta] [* smooth], AVX2 (the scalar loop's operation order).
__attribute__((target("avx2,fma"))) void normalize_avx2(float* buf, float rstd,
                                                        const float* gamma, const float* beta,
                                                        const float* smooth, int64_t h) {
  const __m256 vr = _mm256_set1_ps(rstd);
  int64_t j = 0;
  for (; j + 8 <= h; j += 8) {
    __m256 n = _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(buf + j), vr),
                             _mm256_loadu_ps(gamma + j));
    if (beta) n = _mm256_add_ps(n, _mm256_loadu_ps(beta + j));
    if (smooth) n = _mm256_mul_ps(n, _mm256_loadu_ps(smooth + j));
    _mm256_storeu_ps(buf + j, n);
  }
  for (; j < h; ++j) {
    float n = buf[j] * rstd * gamma[j];
    if (beta) n += beta[j];
    if (smooth) n *= smooth[j];
    buf[j] = n;
  }
}

// Dynamic symmetric int8 of one row v (h values): writes y, returns the scale.
float quant_row_dynamic(const float* v, int8_t* y, int64_t h) {
  if (avx2()) return quant_row_avx2(v, y, h);
  float m = 0.f;
  bool nan = false;
  for (int64_t j = 0; j < h; ++j) {
    const float a = std::fabs(v[j]);
    nan |= std::isnan(a);
    m = a > m ? a : m;
  }
  float s = nan ? std::numeric_limits<float>::quiet_NaN() : m / 127.0f;
  if (!(s > 0.f)) s = 1.0f;
  for (int64_t j = 0; j < h; ++j) {
    y[j] = round_clamp_int8(v[j] / s, -127.f);
  }
  return s;
}

void check_vec(const c10::optional<at::Tensor>& t, int64_t h, const char* name, bool allow_one) {
  if (!t) return;
  TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->dim() == 1 &&
                  (t->size(0) == h || (allow_one && t->size(0) == 1)),
              "add_rms_norm_quant: ", name, " must be a contiguous fp32 (", h, ",) tensor");
}

template <typename T>
void norm_rows(const at::Tensor& x1, const c10::optional<at::Tensor>& x2, const float* gamma,
               const float* beta, const float* smooth, const float* scales, int64_t scales_n,
               const float* zps, int64_t zps_n, bool div_mode, double eps, at::Tensor& y,
               at::Tensor& x_sum, at::Tensor& scale) {
  const int64_t rows = x1.size(0), h = x1.size(1);
  const T* a = x1.data_ptr<T>();
  const T* b = x2 ? x2->data_ptr<T>() : nullptr;
  T* out_sum = x2 ? x_sum.data_ptr<T>() : nullptr;
  int8_t* yp = y.data_ptr<int8_t>();
  float* sp = scales ? nullptr : scale.data_ptr<float>();
  const bool use_avx2 = avx2();
  at::parallel_for(0, rows, 8, [&](int64_t r0, int64_t r1) {
    std::vector<float> buf(h);
    for (int64_t r = r0; r < r1; ++r) {
      const T* ar = a + r * h;
      double ss = 0.0;
      if constexpr (std::is_same_v<T, float>) {
        if (use_avx2) {
          ss = add_sumsq_avx2(ar, b ? b + r * h : nullptr, b ? out_sum + r * h : nullptr,
                              buf.data(), h);
        }
      }
      if (!(std::is_same_v<T, float> && use_avx2)) {
        for (int64_t j = 0; j < h; ++j) {
          float v = ld(ar, j);
          if (b) {
            const T rounded = static_cast<T>(v + ld(b + r * h, j));  // x_sum in x1's dtype
            out_sum[r * h + j] = rounded;
            v = static_cast<float>(rounded);
          }
          buf[j] = v;
          ss += static_cast<double>(v) * static_cast<double>(v);
        }
      }
      const float mean = static_cast<float>(ss / static_cast<double>(h));
      const float rstd = 1.0f / std::sqrt(mean + static_cast<float>(eps));
      const float* sm = scales ? nullptr : smooth;  // smooth scales: dynamic mode only
      if (use_avx2) {
        normalize_avx2(buf.data(), rstd, gamma, beta, sm, h);
      } else {
        for (int64_t j = 0; j < h; ++j) {
          float n = buf[j] * rstd * gamma[j];
          if (beta) n += beta[j];
          if (sm) n *= sm[j];
          buf[j] = n;
        }
      }
      int8_t* yr = yp + r * h;
      if (!scales) {
        sp[r] = quant_row_dynamic(buf.data(), yr, h);
        continue;
      }
      for (int64_t j = 0; j < h; ++j) {
        const float s = scales[scales_n == 1 ? 0 : j];
        float q = div_mode ? buf[j] / s : buf[j] * s;
        if (zps) q += zps[zps_n == 1 ? 0 : j];
        yr[j] = round_clamp_int8(q, -128.f);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> add_rms_norm_quant_cpu(
    const at::Tensor& x1, const c10::optional<at::Tensor>& x2, const at::Tensor& gamma,
    const c10::optional<at::Tensor>& beta, const c10::optional<at::Tensor>& smooth,
    const c10::optional<at::Tensor>& scales, const c10::optional<at::Tensor>& zero_points,
    bool div_mode, double epsilon) {
  TORCH_CHECK(x1.dim() == 2 && x1.is_contiguous() && x1.size(1) > 0,
              "add_rms_norm_quant: x1 must be a contiguous (rows, H > 0) tensor");
  const int64_t h = x1.size(1);
  if (x2) {
    TORCH_CHECK(x2->sizes() == x1.sizes() && x2->scalar_type() == x1.scalar_type() &&
                    x2->is_contiguous(),
                "add_rms_norm_quant: x2 must be contiguous, with x1's shape and dtype");
  }
  check_vec(gamma, h, "gamma", false);
  check_vec(beta, h, "beta", false);
  check_vec(smooth, h, "smooth", false);
  check_vec(scales, h, "scales", true);
  check_vec(zero_points, h, "zero_points", true);
  at::Tensor y = at::empty(x1.sizes(), x1.options().dtype(at::kChar));
  at::Tensor x_sum = x2 ? at::empty_like(x1) : at::empty({0}, x1.options());
  at::Tensor scale = at::empty({scales ? 0 : x1.size(0)}, x1.options().dtype(at::kFloat));
  const float* sc = scales ? scales->data_ptr<float>() : nullptr;
  const float* zp = zero_points ? zero_points->data_ptr<float>() : nullptr;
  const int64_t sn = scales ? scales->size(0) : 0, zn = zero_points ? zero_points->size(0) : 0;
  const float* g = gamma.data_ptr<float>();
  const float* be = beta ? beta->data_ptr<float>() : nullptr;
  const float* sm = smooth ? smooth->data_ptr<float>() : nullptr;
  switch (x1.scalar_type()) {
    case at::kFloat:
      norm_rows<float>(x1, x2, g, be, sm, sc, sn, zp, zn, div_mode, epsilon, y, x_sum, scale);
      break;
    case at::kBFloat16:
      norm_rows<at::BFloat16>(x1, x2, g, be, sm, sc, sn, zp, zn, div_mode, epsilon, y, x_sum,
                              scale);
      break;
    case at::kHalf:
      norm_rows<at::Half>(x1, x2, g, be, sm, sc, sn, zp, zn, div_mode, epsilon, y, x_sum, scale);
      break;
    default:
      TORCH_CHECK(false, "add_rms_norm_quant: x1 must be fp32, bf16 or fp16");
  }
  return {y, x_sum, scale};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> add_rms_norm_quant_meta(
    const at::Tensor& x1, const c10::optional<at::Tensor>& x2, const at::Tensor& gamma,
    const c10::optional<at::Tensor>& beta, const c10::optional<at::Tensor>& smooth,
    const c10::optional<at::Tensor>& scales, const c10::optional<at::Tensor>& zero_points,
    bool div_mode, double epsilon) {
  at::Tensor y = at::empty_symint(x1.sym_sizes(), x1.options().dtype(at::kChar));
  at::Tensor x_sum = x2 ? at::empty_symint(x1.sym_sizes(), x1.options())
                        : at::empty_symint({c10::SymInt(0)}, x1.options());
  c10::SymInt n = scales ? c10::SymInt(0) : x1.sym_size(0);
  at::Tensor scale = at::empty_symint({n}, x1.options().dtype(at::kFloat));
  return {y, x_sum, scale};
}

inline float silu(float v) { return v / (1.0f + std::exp(-v)); }

// Row ends of the groups (cumulative), validated: non-negative counts, sum <= rows.
std::vector<int64_t> group_ends(const at::Tensor& gi, int64_t type, int64_t rows) {
  TORCH_CHECK(gi.scalar_type() == at::kLong && gi.dim() == 1 && gi.is_contiguous(),
              "swiglu_dynamic_quant: group_index must be a contiguous int64 (G,) tensor");
  const int64_t* p = gi.data_ptr<int64_t>();
  std::vector<int64_t> ends(gi.size(0));
  int64_t prev = 0;
  for (int64_t g = 0; g < gi.size(0); ++g) {
    const int64_t end = type == 1 ? prev + p[g] : p[g];
    TORCH_CHECK_VALUE(end >= prev, "group_index must hold ", type == 1 ? "non-negative row "
                      "counts" : "non-decreasing cumulative row ends", ", got entry ", g, " = ",
                      p[g], " (group_list_type=", type, ")");
    ends[g] = prev = end;
  }
  TORCH_CHECK_VALUE(prev <= rows, "group_index covers ", prev, " rows but x has ", rows,
                    " (group_list_type=", type, ")");
  return ends;
}

template <typename T>
void swiglu_rows(const T* x, const float* smooth, int64_t smooth_rows,
                 const std::vector<int64_t>* ends, bool left, int64_t rows, int64_t h,
                 int8_t* y, float* scale) {
  const bool use_avx2 = avx2();
  at::parallel_for(0, rows, 8, [&](int64_t r0, int64_t r1) {
    std::vector<float> buf(h);
    size_t g = 0;
    if (ends) {
      while (g < ends->size() && (*ends)[g] <= r0) ++g;
    }
    for (int64_t r = r0; r < r1; ++r) {
      if (ends) {
        while (g < ends->size() && (*ends)[g] <= r) ++g;
        if (g == ends->size()) {  // past the last group: not computed
          std::fill(y + r * h, y + (r + 1) * h, static_cast<int8_t>(0));
          scale[r] = 0.f;
          continue;
        }
      }
      const T* xr = x + r * 2 * h;
      const float* sm = smooth ? smooth + (smooth_rows == 1 ? 0 : static_cast<int64_t>(g)) * h
                               : nullptr;
      if (use_avx2) {
        swiglu_row_avx2(xr, xr + h, sm, left, buf.data(), h);
      } else {
        for (int64_t j = 0; j < h; ++j) {
          const float a = ld(xr, j), b = ld(xr, h + j);
          float v = left ? silu(a) * b : a * silu(b);
          if (sm) v *= sm[j];
          buf[j] = v;
        }
      }
      scale[r] = quant_row_dynamic(buf.data(), y + r * h, h);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> swiglu_dynamic_quant_cpu(
    const at::Tensor& x, const c10::optional<at::Tensor>& smooth,
    const c10::optional<at::Tensor>& group_index, int64_t group_list_type, bool activate_left) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.size(1) > 0 && x.size(1) % 2 == 0,
              "swiglu_dynamic_quant: x must be a contiguous (rows, 2H > 0) tensor");
  const int64_t rows = x.size(0), h = x.size(1) / 2;
  std::vector<int64_t> ends;
  if (group_index) ends = group_ends(*group_index, group_list_type, rows);
  int64_t smooth_rows = 0;
  if (smooth) {
    smooth_rows = smooth->size(0);
    TORCH_CHECK(smooth->scalar_type() == at::kFloat && smooth->is_contiguous() &&
                    smooth->dim() == 2 && smooth->size(1) == h &&
                    (smooth_rows == 1 ||
                     (group_index && smooth_rows == group_index->size(0))),
                "swiglu_dynamic_quant: smooth must be contiguous fp32 (1, ", h, ") or "
                "(G, ", h, ") with G the group_index length");
  }
  at::Tensor y = at::empty({rows, h}, x.options().dtype(at::kChar));
  at::Tensor s = at::empty({rows}, x.options().dtype(at::kFloat));
  const float* sm = smooth ? smooth->data_ptr<float>() : nullptr;
  const std::vector<int64_t>* e = group_index ? &ends : nullptr;
  switch (x.scalar_type()) {
    case at::kFloat:
      swiglu_rows(x.data_ptr<float>(), sm, smooth_rows, e, activate_left, rows, h,
                  y.data_ptr<int8_t>(), s.data_ptr<float>());
      break;
    case at::kBFloat16:
      swiglu_rows(x.data_ptr<at::BFloat16>(), sm, smooth_rows, e, activate_left, rows, h,
                  y.data_ptr<int8_t>(), s.data_ptr<float>());
      break;
    case at::kHalf:
      swiglu_rows(x.data_ptr<at::Half>(), sm, smooth_rows, e, activate_left, rows, h,
                  y.data_ptr<int8_t>(), s.data_ptr<float>());
      break;
    default:
      TORCH_CHECK(false, "swiglu_dynamic_quant: x must be fp32, bf16 or fp16");
  }
  return {y, s};
}

std::tuple<at::Tensor, at::Tensor> swiglu_dynamic_quant_meta(
    const at::Tensor& x, const c10::optional<at::Tensor>& smooth,
    const c10::optional<at::Tensor>& group_index, int64_t group_list_type, bool activate_left) {
  return {at::empty_symint({x.sym_size(0), x.sym_size(1) / 2}, x.options().dtype(at::kChar)),
          at::empty_symint({x.sym_size(0)}, x.options().dtype(at::kFloat))};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vllm_ascend, m) {
  m.def("add_rms_norm_quant(Tensor x1, Tensor? x2, Tensor gamma, Tensor? beta, Tensor? smooth, "
        "Tensor? scales, Tensor? zero_points, bool div_mode, float epsilon) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("swiglu_dynamic_quant(Tensor x, Tensor? smooth, Tensor? group_index, "
        "int group_list_type, bool activate_left) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(vllm_ascend, CPU, m) {
  m.impl("add_rms_norm_quant", &add_rms_norm_quant_cpu);
  m.impl("swiglu_dynamic_quant", &swiglu_dynamic_quant_cpu);
}

TORCH_LIBRARY_IMPL(vllm_ascend, Meta, m) {
  m.impl("add_rms_norm_quant", &add_rms_norm_quant_meta);
  m.impl("swiglu_dynamic_quant", &swiglu_dynamic_quant_meta);
}
