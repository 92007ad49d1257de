// RMSNorm, residual add + RMSNorm and the rotary product as single ops, the CPU fast paths of
// src/vllm_ascend/device/reference/activation.py `npu_rms_norm` / `npu_add_rms_norm` /
// `npu_rotary_mul` (through norm_rope_fast.py). In eager decode each reference norm or
// rotation is several small torch ops; a model step runs three of them per layer.
//
//   rms_norm(Tensor x, Tensor gamma, float epsilon) -> (Tensor y, Tensor rstd)
//   add_rms_norm(Tensor x1, Tensor x2, Tensor gamma, float epsilon)
//       -> (Tensor y, Tensor rstd, Tensor x_sum)
//
// x, x1, x2 (..., H) contiguous fp32 / bf16 / fp16 (x1 and x2 the same dtype); gamma (H,) any
// float dtype, contiguous. x_sum = x1 + x2 in fp32, rounded to x1's dtype; the norm reads the
// rounded values. rstd = 1 / sqrt(mean(x^2) + epsilon) with epsilon rounded to fp32 and the
// sum of squares in double (the reference sums in fp32: agreement to fp32 rounding);
// y = (x * rstd) * gamma in fp32, cast to x's dtype; rstd fp32 (..., 1). Rows in parallel.
//
//   rotary_mul(Tensor x, Tensor r1, Tensor r2, bool interleave) -> Tensor
//
// x (T, N, D) with unit last stride (any other strides: a slice of wider heads); r1, r2
// (T, 1, D) or (1, 1, D), unit last stride, any float dtype. out = x * r1 + R(x) * r2 in fp32
// (two products, then the sum: the reference's operations, no FMA contraction, so fp32 is
// bit-identical), cast to x's dtype, contiguous (T, N, D). R: half (x1, x2) -> (-x2, x1);
// interleave (x_even, x_odd) -> (-x_odd, x_even) per pair.
// The meta kernels keep the leading dims symbolic.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <tuple>

namespace {

template <typename T, typename G>
void norm_rows(const T* x, const G* gamma, T* y, float* rstd, int64_t rows, int64_t h,
               float eps) {
  at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * h;
      double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int64_t j = 0;
      for (; j + 8 <= h; j += 8)
        for (int l = 0; l < 8; ++l) {
          const double v = static_cast<float>(xr[j + l]);
          acc[l] += v * v;
        }
      for (; j < h; ++j) {
        const double v = static_cast<float>(xr[j]);
        acc[0] += v * v;
      }
      const double sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) +
                         ((acc[4] + acc[5]) + (acc[6] + acc[7]));
      const float mean = static_cast<float>(sum / static_cast<double>(h));
      const float s = 1.0f / std::sqrt(mean + eps);
      rstd[r] = s;
      T* yr = y + r * h;
      for (j = 0; j < h; ++j)
        yr[j] = static_cast<T>((static_cast<float>(xr[j]) * s) * static_cast<float>(gamma[j]));
    }
  });
}

template <typename T>
void add_rows(const T* a, const T* b, T* out, int64_t n) {
  at::parallel_for(0, n, 1 << 14, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      out[i] = static_cast<T>(static_cast<float>(a[i]) + static_cast<float>(b[i]));
  });
}

void check(const at::Tensor& x, const at::Tensor& gamma, const char* name) {
  TORCH_CHECK(x.dim() >= 1 && gamma.dim() == 1 && x.size(-1) == gamma.size(0), name,
              ": x (..., H) and gamma (H,) expected, got ", x.sizes(), " and ", gamma.sizes());
  TORCH_CHECK(x.is_contiguous() && gamma.is_contiguous(), name, ": contiguous inputs expected");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16 ||
                  x.scalar_type() == at::kHalf,
              name, ": x must be fp32, bf16 or fp16");
  TORCH_CHECK(gamma.is_floating_point(), name, ": gamma must be floating");
}

std::vector<int64_t> rstd_shape(const at::Tensor& x) {
  std::vector<int64_t> s = x.sizes().vec();
  s.back() = 1;
  return s;
}

std::tuple<at::Tensor, at::Tensor> rms_norm_cpu(const at::Tensor& x, const at::Tensor& gamma,
                                                double epsilon) {
  check(x, gamma, "rms_norm");
  const int64_t h = x.size(-1), rows = h ? x.numel() / h : 0;
  at::Tensor y = at::empty_like(x);
  at::Tensor rstd = at::empty(rstd_shape(x), x.options().dtype(at::kFloat));
  if (rows == 0) return {y, rstd};
  const float eps = static_cast<float>(epsilon);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm", [&] {
    using T = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, gamma.scalar_type(), "gamma", [&] {
      norm_rows<T, scalar_t>(x.data_ptr<T>(), gamma.data_ptr<scalar_t>(), y.data_ptr<T>(),
                             rstd.data_ptr<float>(), rows, h, eps);
    });
  });
  return {y, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> add_rms_norm_cpu(const at::Tensor& x1,
                                                                const at::Tensor& x2,
                                                                const at::Tensor& gamma,
                                                                double epsilon) {
  check(x1, gamma, "add_rms_norm");
  TORCH_CHECK(x1.sizes().equals(x2.sizes()) && x1.scalar_type() == x2.scalar_type() &&
                  x2.is_contiguous(),
              "add_rms_norm: x1 and x2 must have the same shape and dtype, contiguous; got ",
              x1.sizes(), " and ", x2.sizes());
  at::Tensor x_sum = at::empty_like(x1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x1.scalar_type(), "add", [&] {
    add_rows<scalar_t>(x1.data_ptr<scalar_t>(), x2.data_ptr<scalar_t>(),
                       x_sum.data_ptr<scalar_t>(), x1.numel());
  });
  auto [y, rstd] = rms_norm_cpu(x_sum, gamma, epsilon);
  return {y, rstd, x_sum};
}

std::vector<c10::SymInt> rstd_sym_shape(const at::Tensor& x) {
  std::vector<c10::SymInt> s(x.sym_sizes().begin(), x.sym_sizes().end());
  s.back() = 1;
  return s;
}

std::tuple<at::Tensor, at::Tensor> rms_norm_meta(const at::Tensor& x, const at::Tensor& gamma,
                                                 double epsilon) {
  return {at::empty_like(x), at::empty_symint(rstd_sym_shape(x), x.options().dtype(at::kFloat))};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> add_rms_norm_meta(const at::Tensor& x1,
                                                                 const at::Tensor& x2,
                                                                 const at::Tensor& gamma,
                                                                 double epsilon) {
  return {at::empty_like(x1), at::empty_symint(rstd_sym_shape(x1), x1.options().dtype(at::kFloat)),
          at::empty_like(x1)};
}

template <typename T, typename R>
void rotary_rows(const at::Tensor& x, const at::Tensor& r1, const at::Tensor& r2,
                 at::Tensor& out, bool interleave) {
  const int64_t t_n = x.size(0), n_n = x.size(1), d = x.size(2), half = d / 2;
  const int64_t xs0 = x.stride(0), xs1 = x.stride(1);
  const int64_t rs = r1.size(0) == 1 ? 0 : r1.stride(0), qs = r2.size(0) == 1 ? 0 : r2.stride(0);
  const T* xp = x.data_ptr<T>();
  const R* c = r1.data_ptr<R>();
  const R* s = r2.data_ptr<R>();
  T* o = out.data_ptr<T>();
  at::parallel_for(0, t_n * n_n, 64, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t t = i / n_n, n = i % n_n;
      const T* xr = xp + t * xs0 + n * xs1;
      const R* cr = c + t * rs;
      const R* sr = s + t * qs;
      T* orow = o + i * d;
      for (int64_t j = 0; j < d; ++j) {
        float rot;
        if (interleave)
          rot = (j & 1) ? static_cast<float>(xr[j - 1]) : -static_cast<float>(xr[j + 1]);
        else
          rot = j < half ? -static_cast<float>(xr[j + half]) : static_cast<float>(xr[j - half]);
        const float a = static_cast<float>(xr[j]) * static_cast<float>(cr[j]);
        const float b = rot * static_cast<float>(sr[j]);
        orow[j] = static_cast<T>(a + b);
      }
    }
  });
}

at::Tensor rotary_mul_cpu(const at::Tensor& x, const at::Tensor& r1, const at::Tensor& r2,
                          bool interleave) {
  TORCH_CHECK(x.dim() == 3 && r1.dim() == 3 && r2.dim() == 3, "rotary_mul: x (T, N, D), "
              "r1 / r2 (T or 1, 1, D) expected, got ", x.sizes(), ", ", r1.sizes(), ", ",
              r2.sizes());
  const int64_t d = x.size(2);
  for (const at::Tensor* r : {&r1, &r2})
    TORCH_CHECK(r->size(1) == 1 && r->size(2) == d && (r->size(0) == 1 || r->size(0) == x.size(0))
                    && r->stride(2) == 1 && r->scalar_type() == r1.scalar_type() &&
                    r->is_floating_point(),
                "rotary_mul: r1 / r2 must be (T or 1, 1, D) with unit last stride and one "
                "float dtype, got ", r->sizes());
  TORCH_CHECK(d % 2 == 0 && x.stride(2) == 1, "rotary_mul: even D with unit last stride "
              "expected, got ", x.sizes(), " strides ", x.strides());
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  if (x.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rotary_mul", [&] {
    using T = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, r1.scalar_type(), "r", [&] {
      rotary_rows<T, scalar_t>(x, r1, r2, out, interleave);
    });
  });
  return out;
}

at::Tensor rotary_mul_meta(const at::Tensor& x, const at::Tensor& r1, const at::Tensor& r2,
                           bool interleave) {
  return at::empty_symint(x.sym_sizes(), x.options());
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vllm_ascend, m) {
  m.def("rms_norm(Tensor x, Tensor gamma, float epsilon) -> (Tensor, Tensor)");
  m.def("add_rms_norm(Tensor x1, Tensor x2, Tensor gamma, float epsilon) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("rotary_mul(Tensor x, Tensor r1, Tensor r2, bool interleave) -> Tensor");
}

TORCH_LIBRARY_IMPL(vllm_ascend, CPU, m) {
  m.impl("rms_norm", &rms_norm_cpu);
  m.impl("add_rms_norm", &add_rms_norm_cpu);
  m.impl("rotary_mul", &rotary_mul_cpu);
}

TORCH_LIBRARY_IMPL(vllm_ascend, Meta, m) {
  m.impl("rms_norm", &rms_norm_meta);
  m.impl("add_rms_norm", &add_rms_norm_meta);
  m.impl("rotary_mul", &rotary_mul_meta);
}
