// Scalar references of the forward ops (see nn_ref.h). Written straight from the definitions
// in nn_ops.h and transformers/bitsandbytes, not from the fast kernels.
#include "ops/nn_ref.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "nibble/error.h"
#include "quant/gpu_float.h"
#include "quant/reference.h"

namespace nibble::ops::ref {

namespace {

double rnd(double v, DType dt) {
  float f = float(v);
  switch (dt) {
    case DType::BF16:
      return bf16_to_f32(f32_to_bf16(f));
    case DType::F16:
      return f16_to_f32(f32_to_f16(f));
    default:
      return f;
  }
}
float rndf(float v, DType dt) {
  return float(rnd(v, dt));
}

double at(const Tensor& t, int64_t i) {
  return load_as_f32(t.data_ptr(), t.dtype(), i);
}

}  // namespace

Tensor linear(const Tensor& x_in, const Tensor& w_in, const Tensor& bias_in, DType round_to, Tensor* mag) {
  Tensor x = x_in.contiguous(), w = w_in.contiguous();
  const int64_t N = w.size(0), K = w.size(1), M = K ? x.numel() / K : 0;
  Tensor y = Tensor::empty({M, N}, DType::F64);
  if (mag) *mag = Tensor::empty({M, N}, DType::F64);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0.0, a = 0.0;
      for (int64_t k = 0; k < K; ++k) {
        double p = rnd(at(x, m * K + k), round_to) * at(w, n * K + k);
        s += p;
        a += std::fabs(p);
      }
      if (bias_in.defined()) {
        double b = rnd(at(bias_in.contiguous(), n), round_to);
        s += b;
        a += std::fabs(b);
      }
      y.data<double>()[m * N + n] = s;
      if (mag) mag->data<double>()[m * N + n] = a;
    }
  return y;
}

Tensor linear_4bit(const Tensor& x, const Tensor& packed, const QuantState4& state, const Tensor& bias,
                   DType compute_dtype, Tensor* mag) {
  Tensor absmax = dequantize_absmax(state).contiguous();
  Tensor w = Tensor::empty(state.shape, compute_dtype);
  quant::ref::dequantize_4bit(packed.contiguous().data<uint8_t>(), absmax.data<float>(), state.numel(),
                              state.blocksize, state.quant_type, w.data_ptr(), compute_dtype);
  return linear(x, w, bias, compute_dtype, mag);
}

Tensor linear_int8(const Tensor& x_in, const Tensor& cb_in, const Tensor& scb_in, const Tensor& bias_in,
                   float threshold, DType act_dtype) {
  Tensor x = x_in.contiguous(), cb = cb_in.contiguous(), scb = scb_in.contiguous();
  const int64_t N = cb.size(0), K = cb.size(1), M = K ? x.numel() / K : 0;
  // A.to(float16); int8_vectorwise_quant(A, threshold)
  std::vector<uint16_t> a16(static_cast<size_t>(M * K));
  for (int64_t i = 0; i < M * K; ++i) a16[size_t(i)] = f32_to_f16(x.data<float>()[i]);
  std::vector<int8_t> ca(static_cast<size_t>(M * K));
  std::vector<float> sca(static_cast<size_t>(M));
  std::vector<int64_t> cols;
  quant::ref::int8_vectorwise_quant(a16.data(), M, K, threshold, ca.data(), sca.data(), &cols);
  if (threshold <= 0.0f) cols.clear();
  const int8_t* CB = cb.data<int8_t>();
  const float* SCB = scb.data<float>();
  Tensor out = Tensor::empty({M, N}, DType::F32);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      // int8_linear_matmul: exact integer dot product
      int64_t acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += int64_t(ca[size_t(m * K + k)]) * int64_t(CB[n * K + k]);
      // int8_mm_dequant (CUDA kernel, fast math): __float2half(fmaf(v * SCA * SCB, C, bias_f16))
      float v = quant::mul_ftz(quant::mul_ftz(float(int32_t(acc)), sca[size_t(m)]), SCB[n]);
      // Linear8bitLt: bias.to(x.dtype); an f16 bias is fused, others added to the f16 output
      const bool has_bias = bias_in.defined();
      const float bias = has_bias ? rndf(float(at(bias_in, n)), act_dtype) : 0.0f;
      const bool fused = has_bias && act_dtype == DType::F16;
      float o = rndf(quant::ftz(std::fma(v, 6.200012e-05f, fused ? bias : 0.0f)), DType::F16);
      if (has_bias && !fused) o = rndf(o + bias, DType::F16);
      o = rndf(o, act_dtype);
      if (!cols.empty()) {  // output.addmm(A[:, cols], dequant(CB[:, cols]).to(A.dtype).t())
        double s = 0.0;
        for (int64_t c : cols) {
          float sa = rndf(x.data<float>()[m * K + c], act_dtype);
          float sb = rndf(float(CB[n * K + c]) * SCB[n] * 7.874015718698502e-3f, act_dtype);
          s += double(sa) * double(sb);
        }
        o = rndf(float(double(o) + s), act_dtype);
      }
      out.data<float>()[m * N + n] = o;
    }
  return out;
}

Tensor rms_norm(const Tensor& x_in, const Tensor& w, float eps, bool add_unit_offset) {
  Tensor x = x_in.contiguous();
  const int64_t C = x.size(-1), M = C ? x.numel() / C : 0;
  Tensor y = Tensor::empty(x.shape(), DType::F64);
  for (int64_t m = 0; m < M; ++m) {
    double ss = 0.0;
    for (int64_t c = 0; c < C; ++c) ss += at(x, m * C + c) * at(x, m * C + c);
    double inv = 1.0 / std::sqrt(ss / double(C) + double(eps));
    for (int64_t c = 0; c < C; ++c) {
      double g = at(w.contiguous(), c) + (add_unit_offset ? 1.0 : 0.0);
      y.data<double>()[m * C + c] = g * at(x, m * C + c) * inv;
    }
  }
  return y;
}

Tensor layer_norm(const Tensor& x_in, const Tensor& w, const Tensor& b, float eps) {
  Tensor x = x_in.contiguous();
  const int64_t C = x.size(-1), M = C ? x.numel() / C : 0;
  Tensor y = Tensor::empty(x.shape(), DType::F64);
  for (int64_t m = 0; m < M; ++m) {
    double mean = 0.0, var = 0.0;
    for (int64_t c = 0; c < C; ++c) mean += at(x, m * C + c);
    mean /= double(C);
    for (int64_t c = 0; c < C; ++c) var += (at(x, m * C + c) - mean) * (at(x, m * C + c) - mean);
    double rstd = 1.0 / std::sqrt(var / double(C) + double(eps));
    for (int64_t c = 0; c < C; ++c)
      y.data<double>()[m * C + c] = (at(x, m * C + c) - mean) * rstd * at(w.contiguous(), c) +
                                    (b.defined() ? at(b.contiguous(), c) : 0.0);
  }
  return y;
}

double activation(double x, Activation a) {
  switch (a) {
    case Activation::SiLU:
      return x / (1.0 + std::exp(-x));
    case Activation::GeluErf:
      return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
    case Activation::GeluTanh:
      return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
    case Activation::ReLU:
      return x > 0.0 ? x : 0.0;
  }
  throw InternalError("ref::activation: unknown kind");
}

Tensor rope(const Tensor& x_in, const Tensor& cos, const Tensor& sin, int64_t rot_dim) {
  Tensor x = x_in.contiguous();
  const int64_t T = x.size(0), H = x.size(1), D = x.size(2), half = rot_dim / 2;
  Tensor y = Tensor::empty(x.shape(), DType::F64);
  double* o = y.data<double>();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t base = (t * H + h) * D;
      // HF: cat(cos, cos) / cat(sin, sin) of length rot_dim; rotate_half(x) = cat(-x2, x1)
      for (int64_t d = 0; d < D; ++d) {
        double v = at(x, base + d);
        if (d < rot_dim) {
          double c = at(cos, t * half + d % half), s = at(sin, t * half + d % half);
          double rot = d < half ? -at(x, base + d + half) : at(x, base + d - half);
          v = v * c + rot * s;
        }
        o[base + d] = v;
      }
    }
  return y;
}

Tensor attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const AttentionOptions& opts) {
  Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const int64_t T = q.size(0), Hq = q.size(1), D = q.size(2), S = k.size(0), Hkv = k.size(1), Dv = v.size(2);
  Tensor y = Tensor::zeros({T, Hq, Dv}, DType::F64);
  std::vector<double> s(static_cast<size_t>(S));
  for (int64_t h = 0; h < Hq; ++h) {
    const int64_t g = h / (Hq / Hkv);
    for (int64_t i = 0; i < T; ++i) {
      const int64_t pos = opts.q_offset + i;
      double mx = -std::numeric_limits<double>::infinity();
      std::vector<bool> vis(static_cast<size_t>(S));
      bool any = false;
      for (int64_t j = 0; j < S; ++j) {
        vis[size_t(j)] = j <= pos && (!opts.sliding_window || pos - j < *opts.sliding_window);
        if (!vis[size_t(j)]) continue;
        any = true;
        double d = 0.0;
        for (int64_t e = 0; e < D; ++e) d += at(q, (i * Hq + h) * D + e) * at(k, (j * Hkv + g) * D + e);
        d *= opts.scale;
        if (opts.softcap) d = *opts.softcap * std::tanh(d / *opts.softcap);
        if (opts.alibi_slopes.defined()) d += double(opts.alibi_slopes.data<float>()[h]) * double(j);
        s[size_t(j)] = d;
        mx = std::max(mx, d);
      }
      if (!any) continue;
      double sum = 0.0;
      for (int64_t j = 0; j < S; ++j)
        if (vis[size_t(j)]) sum += (s[size_t(j)] = std::exp(s[size_t(j)] - mx));
      for (int64_t j = 0; j < S; ++j) {
        if (!vis[size_t(j)]) continue;
        for (int64_t e = 0; e < Dv; ++e)
          y.data<double>()[(i * Hq + h) * Dv + e] += s[size_t(j)] / sum * at(v, (j * Hkv + g) * Dv + e);
      }
    }
  }
  return y;
}

}  // namespace nibble::ops::ref
