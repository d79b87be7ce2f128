// Fused GroupNorm (+ per-sample scale/shift) (+ SiLU) for channels_last (NHWC) maps on a CPU.
//
// Forward (Wu & He 2018, eq. 1-2; improved-diffusion's scale-shift norm; SiLU):
//   z = (x - mean_g) * rstd_g,  u = z * w_c + b_c,  y = u * (1 + scale_nc) + shift_nc,
//   out = act ? y * sigmoid(y) : y
// folded per (n, c) into y = x * A_nc + B_nc, so the output is one pass over x after one pass
// for the statistics.
//
// Backward: with dy = dout * silu'(y) (or dout), per (n, c) the two sums S = sum_p dy and
// T = sum_p dy * x give every parameter gradient in closed form, and
//   dx = rstd * (dz - mean_g(dz) - z * mean_g(dz * z)),  dz = dy * (1 + scale) * w
// becomes dx = dy * P_nc + x * Q_nc + R_nc: one pass over (x, dout) that also keeps one image's
// dy in a float scratch buffer, one over (x, dy); nothing saved from the forward but x and the
// (N, G) statistics.
//
// Why: torch's native GroupNorm on NHWC maps is 2-5x slower than on NCHW here, which cancels
// oneDNN's faster NHWC convolutions; this kernel makes channels_last pay (docs/performance.md).
// Data are float or bfloat16 (as raw uint16); all arithmetic is float, sums per image row in
// float then double, variance about a per-channel shift (no E[x^2] - E[x]^2 cancellation).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

namespace {

inline float bf16_to_float(uint16_t v) {
  uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint16_t float_to_bf16(float f) {  // round to nearest even; NaN stays NaN
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>(nan ? ((u >> 16) | 0x40u) : rounded);
}

inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const uint16_t* p, int64_t i) { return bf16_to_float(p[i]); }
inline void store(float* p, int64_t i, float v) { p[i] = v; }
inline void store(uint16_t* p, int64_t i, float v) { p[i] = float_to_bf16(v); }

// exp(x) = 2^k * 2^f, k = round(x log2 e), |f| <= 1/2; 2^f by its degree-7 Taylor polynomial
// (relative error < 2e-8, below float rounding). Branch-free so that the loops vectorise. A NaN
// input gives a meaningless value here, but every caller multiplies by the input, so NaN
// propagates to the result.
inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float t = x * 1.4426950408889634f;
  // round to nearest by adding and subtracting 1.5 * 2^23 (|t| < 2^22 here); std::floor is a
  // library call that stops the loops from vectorising without -ffast-math
  const float k = (t + 12582912.0f) - 12582912.0f;
  const float f = (t - k) * 0.6931471805599453f;
  float p = 1.0f / 5040.0f;
  p = p * f + 1.0f / 720.0f;
  p = p * f + 1.0f / 120.0f;
  p = p * f + 1.0f / 24.0f;
  p = p * f + 1.0f / 6.0f;
  p = p * f + 0.5f;
  p = p * f + 1.0f;
  p = p * f + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(k) + 127) << 23;
  float two_k;
  std::memcpy(&two_k, &bits, sizeof two_k);
  return p * two_k;
}

inline float sigmoid(float y) { return 1.0f / (1.0f + exp_approx(-y)); }

struct Shape {
  int64_t n, c, hw, w, groups;
};

// Per (n, c) coefficients of y = x * A + B from the statistics and the affine parameters.
void coefficients(const Shape& s, int64_t n, const float* mean, const float* rstd,
                  const float* weight, const float* bias, const float* scale, const float* shift,
                  float* a, float* b) {
  const int64_t cg = s.c / s.groups;
  for (int64_t c = 0; c < s.c; ++c) {
    const int64_t g = n * s.groups + c / cg;
    const float s1 = scale ? 1.0f + scale[n * s.c + c] : 1.0f;
    const float sh = shift ? shift[n * s.c + c] : 0.0f;
    a[c] = rstd[g] * weight[c] * s1;
    b[c] = (bias[c] - mean[g] * rstd[g] * weight[c]) * s1 + sh;
  }
}

template <typename T>
void forward_kernel(const T* x, T* out, const Shape& s, const float* weight, const float* bias,
                    const float* scale, const float* shift, double eps, bool act, float* mean,
                    float* rstd) {
  const int64_t cg = s.c / s.groups;
  at::parallel_for(0, s.n, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> shift_c(s.c), row1(s.c), row2(s.c), a(s.c), b(s.c);
    std::vector<double> sum1(s.c), sum2(s.c);
    for (int64_t n = begin; n < end; ++n) {
      const T* xn = x + n * s.hw * s.c;
      for (int64_t c = 0; c < s.c; ++c) shift_c[c] = load(xn, c);
      std::fill(sum1.begin(), sum1.end(), 0.0);
      std::fill(sum2.begin(), sum2.end(), 0.0);
      for (int64_t p0 = 0; p0 < s.hw; p0 += s.w) {  // one image row at a time
        std::fill(row1.begin(), row1.end(), 0.0f);
        std::fill(row2.begin(), row2.end(), 0.0f);
        const int64_t p1 = std::min(p0 + s.w, s.hw);
        for (int64_t p = p0; p < p1; ++p) {
          const T* xp = xn + p * s.c;
          for (int64_t c = 0; c < s.c; ++c) {
            const float v = load(xp, c) - shift_c[c];
            row1[c] += v;
            row2[c] += v * v;
          }
        }
        for (int64_t c = 0; c < s.c; ++c) {
          sum1[c] += row1[c];
          sum2[c] += row2[c];
        }
      }
      for (int64_t g = 0; g < s.groups; ++g) {
        const double m = static_cast<double>(s.hw * cg);
        double mu = 0.0;
        for (int64_t c = g * cg; c < (g + 1) * cg; ++c) mu += sum1[c] + s.hw * double(shift_c[c]);
        mu /= m;
        double ss = 0.0;  // sum (x - mu)^2 = sum over c of S2 + 2 (K - mu) S1 + HW (K - mu)^2
        for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
          const double d = double(shift_c[c]) - mu;
          ss += sum2[c] + 2.0 * d * sum1[c] + s.hw * d * d;
        }
        const double var = ss > 0.0 ? ss / m : 0.0;
        mean[n * s.groups + g] = static_cast<float>(mu);
        rstd[n * s.groups + g] = static_cast<float>(1.0 / std::sqrt(var + eps));
      }
      coefficients(s, n, mean, rstd, weight, bias, scale, shift, a.data(), b.data());
      T* on = out + n * s.hw * s.c;
      for (int64_t p = 0; p < s.hw; ++p) {
        const T* xp = xn + p * s.c;
        T* op = on + p * s.c;
        if (act) {
          for (int64_t c = 0; c < s.c; ++c) {
            const float y = load(xp, c) * a[c] + b[c];
            store(op, c, y * sigmoid(y));
          }
        } else {
          for (int64_t c = 0; c < s.c; ++c) store(op, c, load(xp, c) * a[c] + b[c]);
        }
      }
    }
  });
}

// dy = dout * d out / d y at y = x * a + b.
inline float dact(float g, float y, bool act) {
  if (!act) return g;
  const float sg = sigmoid(y);
  return g * (sg * (1.0f + y * (1.0f - sg)));
}

template <typename T>
void backward_kernel(const T* dout, const T* x, T* dx, const Shape& s, const float* mean,
                     const float* rstd, const float* weight, const float* bias,
                     const float* scale, const float* shift, bool act, float* dw_n, float* db_n,
                     float* dscale, float* dshift) {
  const int64_t cg = s.c / s.groups;
  at::parallel_for(0, s.n, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> a(s.c), b(s.c), row_s(s.c), row_t(s.c), pc(s.c), qc(s.c), rc(s.c);
    std::vector<double> sum_s(s.c), sum_t(s.c);
    std::vector<float> dy_img(s.hw * s.c);  // dy of one image: the second pass reads it back
    for (int64_t n = begin; n < end; ++n) {
      coefficients(s, n, mean, rstd, weight, bias, scale, shift, a.data(), b.data());
      const T* xn = x + n * s.hw * s.c;
      const T* gn = dout + n * s.hw * s.c;
      std::fill(sum_s.begin(), sum_s.end(), 0.0);
      std::fill(sum_t.begin(), sum_t.end(), 0.0);
      for (int64_t p0 = 0; p0 < s.hw; p0 += s.w) {
        std::fill(row_s.begin(), row_s.end(), 0.0f);
        std::fill(row_t.begin(), row_t.end(), 0.0f);
        const int64_t p1 = std::min(p0 + s.w, s.hw);
        for (int64_t p = p0; p < p1; ++p) {
          const T* xp = xn + p * s.c;
          const T* gp = gn + p * s.c;
          float* dyp = dy_img.data() + p * s.c;
          for (int64_t c = 0; c < s.c; ++c) {
            const float xv = load(xp, c);
            const float dy = dact(load(gp, c), xv * a[c] + b[c], act);
            dyp[c] = dy;
            row_s[c] += dy;
            row_t[c] += dy * xv;
          }
        }
        for (int64_t c = 0; c < s.c; ++c) {
          sum_s[c] += row_s[c];
          sum_t[c] += row_t[c];
        }
      }
      const double m = static_cast<double>(s.hw * cg);
      for (int64_t g = 0; g < s.groups; ++g) {
        const double mu = mean[n * s.groups + g], r = rstd[n * s.groups + g];
        double g1 = 0.0, g2 = 0.0;  // sum over the group of dz and of dz * z
        for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
          const double s1 = scale ? 1.0 + scale[n * s.c + c] : 1.0;
          const double tz = r * (sum_t[c] - mu * sum_s[c]);  // sum_p dy * z
          const double k = s1 * weight[c];
          g1 += k * sum_s[c];
          g2 += k * tz;
          dw_n[n * s.c + c] = static_cast<float>(s1 * tz);
          db_n[n * s.c + c] = static_cast<float>(s1 * sum_s[c]);
          if (dscale) dscale[n * s.c + c] = static_cast<float>(weight[c] * tz + bias[c] * sum_s[c]);
          if (dshift) dshift[n * s.c + c] = static_cast<float>(sum_s[c]);
          pc[c] = static_cast<float>(r * k);
        }
        const double mean_dz = g1 / m, mean_dzz = g2 / m;
        for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
          qc[c] = static_cast<float>(-r * r * mean_dzz);
          rc[c] = static_cast<float>(-r * mean_dz + r * r * mu * mean_dzz);
        }
      }
      T* dn = dx + n * s.hw * s.c;
      for (int64_t p = 0; p < s.hw; ++p) {
        const T* xp = xn + p * s.c;
        const float* dyp = dy_img.data() + p * s.c;
        T* dp = dn + p * s.c;
        for (int64_t c = 0; c < s.c; ++c) store(dp, c, dyp[c] * pc[c] + load(xp, c) * qc[c] + rc[c]);
      }
    }
  });
}

Shape check_input(const at::Tensor& x, int64_t groups) {
  TORCH_CHECK(x.dim() == 4 && x.device().is_cpu(), "expected a 4-D CPU tensor");
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast), "expected a channels_last tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "expected float32 or bfloat16");
  TORCH_CHECK(groups > 0 && x.size(1) % groups == 0, "groups must divide the channel count");
  return Shape{x.size(0), x.size(1), x.size(2) * x.size(3), x.size(3), groups};
}

const float* opt_ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<float>() : nullptr;
}

std::vector<at::Tensor> forward(const at::Tensor& x, const at::Tensor& weight,
                                const at::Tensor& bias, const std::optional<at::Tensor>& scale,
                                const std::optional<at::Tensor>& shift, int64_t groups,
                                double eps, bool act) {
  const Shape s = check_input(x, groups);
  auto out = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  auto fopt = x.options().dtype(at::kFloat);
  auto mean = at::empty({s.n, groups}, fopt);
  auto rstd = at::empty({s.n, groups}, fopt);
  if (s.n * s.hw == 0) return {out, mean.fill_(0), rstd.fill_(0)};
  if (x.scalar_type() == at::kFloat) {
    forward_kernel(x.data_ptr<float>(), out.data_ptr<float>(), s, weight.data_ptr<float>(),
                   bias.data_ptr<float>(), opt_ptr(scale), opt_ptr(shift), eps, act,
                   mean.data_ptr<float>(), rstd.data_ptr<float>());
  } else {
    forward_kernel(reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>()),
                   reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>()), s,
                   weight.data_ptr<float>(), bias.data_ptr<float>(), opt_ptr(scale),
                   opt_ptr(shift), eps, act, mean.data_ptr<float>(), rstd.data_ptr<float>());
  }
  return {out, mean, rstd};
}

std::vector<at::Tensor> backward(const at::Tensor& dout, const at::Tensor& x,
                                 const at::Tensor& mean, const at::Tensor& rstd,
                                 const at::Tensor& weight, const at::Tensor& bias,
                                 const std::optional<at::Tensor>& scale,
                                 const std::optional<at::Tensor>& shift, int64_t groups,
                                 bool act) {
  const Shape s = check_input(x, groups);
  TORCH_CHECK(dout.sizes() == x.sizes() && dout.scalar_type() == x.scalar_type() &&
                  dout.is_contiguous(at::MemoryFormat::ChannelsLast),
              "dout must match x (shape, dtype, channels_last)");
  auto dx = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  auto fopt = x.options().dtype(at::kFloat);
  auto dw_n = at::zeros({s.n, s.c}, fopt);
  auto db_n = at::zeros({s.n, s.c}, fopt);
  auto dscale = at::zeros({s.n, s.c}, fopt);
  auto dshift = at::zeros({s.n, s.c}, fopt);
  if (s.n * s.hw == 0) return {dx.zero_(), dw_n.sum(0), db_n.sum(0), dscale, dshift};
  float* dsc = scale.has_value() ? dscale.data_ptr<float>() : nullptr;
  float* dsh = shift.has_value() ? dshift.data_ptr<float>() : nullptr;
  if (x.scalar_type() == at::kFloat) {
    backward_kernel(dout.data_ptr<float>(), x.data_ptr<float>(), dx.data_ptr<float>(), s,
                    mean.data_ptr<float>(), rstd.data_ptr<float>(), weight.data_ptr<float>(),
                    bias.data_ptr<float>(), opt_ptr(scale), opt_ptr(shift), act,
                    dw_n.data_ptr<float>(), db_n.data_ptr<float>(), dsc, dsh);
  } else {
    backward_kernel(reinterpret_cast<const uint16_t*>(dout.data_ptr<at::BFloat16>()),
                    reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>()),
                    reinterpret_cast<uint16_t*>(dx.data_ptr<at::BFloat16>()), s,
                    mean.data_ptr<float>(), rstd.data_ptr<float>(), weight.data_ptr<float>(),
                    bias.data_ptr<float>(), opt_ptr(scale), opt_ptr(shift), act,
                    dw_n.data_ptr<float>(), db_n.data_ptr<float>(), dsc, dsh);
  }
  return {dx, dw_n.sum(0), db_n.sum(0), dscale, dshift};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "fused GroupNorm(+scale/shift)(+SiLU), NHWC, forward");
  m.def("backward", &backward, "fused GroupNorm(+scale/shift)(+SiLU), NHWC, backward");
}
