#include "ops/train_ops.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "backends/cpu/linear_cpu.h"
#include "nibble/error.h"
#include "nibble/thread_pool.h"

namespace nibble::ops {

double cross_entropy_head_backward(const float* h, int64_t T, int64_t H, const float* W, int64_t V,
                                   const int64_t* targets, float softcap, int64_t chunk, float grad_scale,
                                   float* dh, int64_t* n_targets, DType round_g) {
  if (chunk <= 0) throw ConfigError("cross_entropy_head_backward: chunk must be > 0");
  int64_t n = 0;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t y = targets[t];
    if (y == -100) continue;
    if (y < 0 || y >= V)
      throw ShapeError("labels: " + std::to_string(y) + " outside the vocabulary [0, " + std::to_string(V) +
                       ")");
    ++n;
  }
  if (n_targets) *n_targets = n;
  if (dh) std::fill(dh, dh + T * H, 0.0f);
  // Rows with a target are taken in blocks of kRows, the blocks in parallel (each with its own
  // [kRows, chunk] logits buffer; the GEMM inside runs on the calling thread). Pass 1 (row blocks
  // outer) gives each row's logsumexp; pass 2 (chunks outer) recomputes the logits, and dh += G . W
  // with the chunk's W transposed once ([H, chunk], the only copy). A row's arithmetic does not
  // depend on the thread count, and the loss is summed in row order.
  std::vector<int64_t> rows;
  for (int64_t t = 0; t < T; ++t)
    if (targets[t] != -100) rows.push_back(t);
  constexpr int64_t kRows = 64;
  const int64_t nchunks = (V + chunk - 1) / chunk, cw = std::min(chunk, V), R = int64_t(rows.size());
  const int64_t nblocks = (R + kRows - 1) / kRows;
  struct Buffers {
    std::vector<float> hb, logits, dcap, part;  // [kRows, H], [kRows, chunk] x2, [kRows, H]
  };
  auto buffers = [&] {
    return Buffers{std::vector<float>(size_t(kRows * H)), std::vector<float>(size_t(kRows * cw)),
                   std::vector<float>(size_t(kRows * cw)), std::vector<float>(size_t(kRows * H))};
  };
  std::vector<double> lse(static_cast<size_t>(R));
  std::vector<float> tgt(static_cast<size_t>(R));
  // logits (softcapped) of rows [b0, b0 + mb) and columns [v0, v0 + nc); dcap = d(capped)/d(raw)
  auto block_logits = [&](Buffers& b, int64_t b0, int64_t mb, int64_t v0, int64_t nc) {
    for (int64_t i = 0; i < mb; ++i) std::copy_n(h + rows[size_t(b0 + i)] * H, H, b.hb.begin() + i * H);
    cpu::linear(b.hb.data(), mb, H, W + v0 * H, DType::F32, nc, nullptr, DType::F32, DType::F32, b.logits.data());
    for (int64_t i = 0; i < mb * nc; ++i) {
      if (softcap > 0) {
        const float t = std::tanh(b.logits[size_t(i)] / softcap);
        b.logits[size_t(i)] = softcap * t;
        b.dcap[size_t(i)] = 1.0f - t * t;
      } else {
        b.dcap[size_t(i)] = 1.0f;
      }
    }
  };
  // Pass 1: online logsumexp over the chunks.
  parallel_for(nblocks, 1, [&](int64_t k0, int64_t k1) {
    Buffers b = buffers();
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t b0 = k * kRows, mb = std::min(kRows, R - b0);
      std::vector<float> mx(size_t(mb), -std::numeric_limits<float>::infinity());
      std::vector<double> sum(size_t(mb), 0.0);
      for (int64_t c = 0; c < nchunks; ++c) {
        const int64_t v0 = c * chunk, nc = std::min(chunk, V - v0);
        block_logits(b, b0, mb, v0, nc);
        for (int64_t i = 0; i < mb; ++i) {
          const float* lr = b.logits.data() + i * nc;
          const int64_t y = targets[rows[size_t(b0 + i)]];
          const float cm = *std::max_element(lr, lr + nc);
          if (cm > mx[size_t(i)])
            sum[size_t(i)] *= std::exp(double(mx[size_t(i)]) - double(cm)), mx[size_t(i)] = cm;
          for (int64_t v = 0; v < nc; ++v) sum[size_t(i)] += std::exp(double(lr[v]) - double(mx[size_t(i)]));
          if (y >= v0 && y < v0 + nc) tgt[size_t(b0 + i)] = lr[y - v0];
        }
      }
      for (int64_t i = 0; i < mb; ++i) lse[size_t(b0 + i)] = double(mx[size_t(i)]) + std::log(sum[size_t(i)]);
    }
  });
  double loss = 0;
  for (int64_t r = 0; r < R; ++r) loss += lse[size_t(r)] - double(tgt[size_t(r)]);
  if (!dh) return loss;
  // Pass 2: G = (softmax - onehot) * grad_scale through the softcap; dh += G . W.
  std::vector<float> wt(size_t(H * cw));  // [H, nc]: the chunk's W^T
  for (int64_t c = 0; c < nchunks; ++c) {
    const int64_t v0 = c * chunk, nc = std::min(chunk, V - v0);
    for (int64_t v = 0; v < nc; ++v)
      for (int64_t k = 0; k < H; ++k) wt[size_t(k * nc + v)] = W[(v0 + v) * H + k];
    parallel_for(nblocks, 1, [&](int64_t k0, int64_t k1) {
      Buffers b = buffers();
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t b0 = k * kRows, mb = std::min(kRows, R - b0);
        block_logits(b, b0, mb, v0, nc);
        for (int64_t i = 0; i < mb; ++i) {
          const int64_t y = targets[rows[size_t(b0 + i)]];
          float* lr = b.logits.data() + i * nc;
          const float* dc = b.dcap.data() + i * nc;
          for (int64_t v = 0; v < nc; ++v) {
            const float p = float(std::exp(double(lr[v]) - lse[size_t(b0 + i)]));
            lr[v] = (p - (v0 + v == y ? 1.0f : 0.0f)) * grad_scale * dc[v];
          }
          if (round_g != DType::F32)
            for (int64_t v = 0; v < nc; ++v) lr[v] = round_to_dtype(lr[v], round_g);
        }
        cpu::linear(b.logits.data(), mb, nc, wt.data(), DType::F32, H, nullptr, DType::F32, DType::F32,
                    b.part.data());
        for (int64_t i = 0; i < mb; ++i) {
          float* dr = dh + rows[size_t(b0 + i)] * H;
          for (int64_t e = 0; e < H; ++e) dr[e] += b.part[size_t(i * H + e)];
        }
      }
    });
  }
  return loss;
}

double causal_lm_loss_backward(const float* h, int64_t T, int64_t H, const float* W, int64_t V,
                               const int64_t* labels, float softcap, int64_t chunk, float* dh) {
  std::vector<int64_t> targets(size_t(T), -100);  // [T]: the shift
  for (int64_t t = 0; t + 1 < T; ++t) targets[size_t(t)] = labels[t + 1];
  int64_t n = 0;
  for (int64_t t = 0; t < T; ++t) n += targets[size_t(t)] != -100;
  const double sum = cross_entropy_head_backward(h, T, H, W, V, targets.data(), softcap, chunk,
                                                 n ? 1.0f / float(n) : 0.0f, dh, &n);
  if (n == 0) return std::numeric_limits<double>::quiet_NaN();
  return sum / double(n);
}

void rms_norm_backward(const float* x, const float* w, int64_t rows, int64_t n, float eps, float offset,
                       const float* dy, float* dx, float* dw) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    const float* gr = dy + r * n;
    double ss = 0;
    for (int64_t k = 0; k < n; ++k) ss += double(xr[k]) * xr[k];
    const float inv = float(1.0 / std::sqrt(ss / double(n) + double(eps)));
    // xhat = x * inv; y = xhat * (offset + w); dxhat = dy * (offset + w)
    // dx = inv * (dxhat - xhat * mean(dxhat * xhat))
    double dot = 0;
    for (int64_t k = 0; k < n; ++k) {
      const float xh = xr[k] * inv;
      dot += double(gr[k]) * (offset + w[k]) * xh;
      dw[k] += gr[k] * xh;
    }
    const float m = float(dot / double(n));
    for (int64_t k = 0; k < n; ++k) {
      const float xh = xr[k] * inv;
      dx[r * n + k] = inv * (gr[k] * (offset + w[k]) - xh * m);
    }
  }
}

float act_value(Act a, float x) {
  switch (a) {
    case Act::Silu:
      return x / (1.0f + std::exp(-x));
    case Act::GeluErf:
      return 0.5f * x * (1.0f + std::erf(x * float(M_SQRT1_2)));
    case Act::GeluTanh: {
      const float k = float(std::sqrt(2.0 / M_PI));
      return 0.5f * x * (1.0f + std::tanh(k * (x + 0.044715f * x * x * x)));
    }
    case Act::Relu:
      return x > 0.0f ? x : 0.0f;
  }
  return 0;
}

namespace {
float act_grad(Act a, float x) {
  switch (a) {
    case Act::Silu: {
      const float s = 1.0f / (1.0f + std::exp(-x));
      return s * (1.0f + x * (1.0f - s));
    }
    case Act::GeluErf:
      return 0.5f * (1.0f + std::erf(x * float(M_SQRT1_2))) +
             x * float(1.0 / std::sqrt(2.0 * M_PI)) * std::exp(-0.5f * x * x);
    case Act::GeluTanh: {
      const float k = float(std::sqrt(2.0 / M_PI));
      const float u = k * (x + 0.044715f * x * x * x), t = std::tanh(u);
      return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * k * (1.0f + 3.0f * 0.044715f * x * x);
    }
    case Act::Relu:
      return x > 0.0f ? 1.0f : 0.0f;
  }
  return 0;
}
}  // namespace

void act_backward(Act a, const float* x, const float* dy, int64_t n, float* dx) {
  for (int64_t i = 0; i < n; ++i) dx[i] = dy[i] * act_grad(a, x[i]);
}

void gated_act_backward(Act a, const float* gate, const float* up, const float* dy, int64_t n, float* dgate,
                        float* dup) {
  for (int64_t i = 0; i < n; ++i) {  // loads first: the outputs may be the inputs' storage
    const float g = gate[i], u = up[i], d = dy[i];
    dgate[i] = d * u * act_grad(a, g);
    dup[i] = d * act_value(a, g);
  }
}

void layer_norm_backward(const float* x, const float* w, int64_t rows, int64_t n, float eps, const float* dy,
                         float* dx, float* dw, float* db) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    const float* gr = dy + r * n;
    double mean = 0, var = 0;
    for (int64_t k = 0; k < n; ++k) mean += xr[k];
    mean /= double(n);
    for (int64_t k = 0; k < n; ++k) var += (xr[k] - mean) * (xr[k] - mean);
    const double rstd = 1.0 / std::sqrt(var / double(n) + double(eps));
    // xhat = (x - mean) rstd; dxhat = dy w; dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat))
    double s1 = 0, s2 = 0;
    for (int64_t k = 0; k < n; ++k) {
      const double xh = (xr[k] - mean) * rstd, g = double(gr[k]) * w[k];
      s1 += g;
      s2 += g * xh;
      if (dw) dw[k] += float(gr[k] * xh);
      if (db) db[k] += gr[k];
    }
    s1 /= double(n);
    s2 /= double(n);
    for (int64_t k = 0; k < n; ++k) {
      const double xh = (xr[k] - mean) * rstd;
      dx[r * n + k] = float(rstd * (double(gr[k]) * w[k] - s1 - xh * s2));
    }
  }
}

void softcap_backward_(const float* y, float cap, int64_t n, float* dy) {
  for (int64_t i = 0; i < n; ++i) {
    const float t = y[i] / cap;
    dy[i] *= 1.0f - t * t;
  }
}

void embedding_backward(const int64_t* ids, int64_t T, const float* dy, int64_t H, int64_t V, float* dW) {
  for (int64_t t = 0; t < T; ++t) {
    if (ids[t] < 0 || ids[t] >= V)
      throw ShapeError("embedding_backward: token id " + std::to_string(ids[t]) + " outside [0, " +
                       std::to_string(V) + ")");
    for (int64_t k = 0; k < H; ++k) dW[ids[t] * H + k] += dy[t * H + k];
  }
}

void adamw_update(float* x, const float* g, float* m, float* v, int64_t n, const AdamWStep& s) {
  for (int64_t k = 0; k < n; ++k) {
    x[k] *= s.decay;
    m[k] += (g[k] - m[k]) * (1.0f - s.b1);  // torch: exp_avg.lerp_(grad, 1 - beta1)
    v[k] = v[k] * s.b2 + (1.0f - s.b2) * g[k] * g[k];
    const float denom = std::sqrt(v[k]) / s.bc2_sqrt + s.eps;
    x[k] -= s.step_size * (m[k] / denom);
  }
}

double sum_squares(const float* x, int64_t n) {
  double s = 0;
  for (int64_t k = 0; k < n; ++k) s += double(x[k]) * x[k];
  return s;
}

void scale_by(float* x, int64_t n, double coef) {
  for (int64_t k = 0; k < n; ++k) x[k] = float(x[k] * coef);
}

}  // namespace nibble::ops
