#include "ops/train_ops.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "nibble/error.h"
#include "nibble/thread_pool.h"

namespace nibble::ops {

namespace {

// logits[c] for c in [v0, v0 + nc) of row h: softcap(h · W[v]) and d(softcapped)/d(raw).
void head_chunk(const float* h, int64_t H, const float* W, int64_t v0, int64_t nc, float softcap, float* out,
                float* dcap) {
  for (int64_t c = 0; c < nc; ++c) {
    const float* wr = W + (v0 + c) * H;
    float acc = 0;
    for (int64_t k = 0; k < H; ++k) acc += h[k] * wr[k];
    if (softcap > 0) {
      const float t = std::tanh(acc / softcap);
      out[c] = softcap * t;
      dcap[c] = 1.0f - t * t;
    } else {
      out[c] = acc;
      dcap[c] = 1.0f;
    }
  }
}

}  // namespace

double cross_entropy_head_backward(const float* h, int64_t T, int64_t H, const float* W, int64_t V,
                                   const int64_t* targets, float softcap, int64_t chunk, float grad_scale,
                                   float* dh, int64_t* n_targets) {
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
  std::vector<double> row_loss(size_t(T), 0.0);  // [T], summed in order: deterministic
  parallel_for(T, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> buf(static_cast<size_t>(chunk)), dcap(static_cast<size_t>(chunk));  // [chunk]
    for (int64_t t = t0; t < t1; ++t) {
      float* dr = dh ? dh + t * H : nullptr;
      if (dr) std::fill(dr, dr + H, 0.0f);
      const int64_t y = targets[t];
      if (y == -100) continue;
      const float* hr = h + t * H;
      // Pass 1: online logsumexp over the chunks.
      float mx = -std::numeric_limits<float>::infinity(), target = 0;
      double sum = 0;
      for (int64_t v0 = 0; v0 < V; v0 += chunk) {
        const int64_t nc = std::min(chunk, V - v0);
        head_chunk(hr, H, W, v0, nc, softcap, buf.data(), dcap.data());
        const float cm = *std::max_element(buf.begin(), buf.begin() + nc);
        if (cm > mx) sum *= std::exp(double(mx) - double(cm)), mx = cm;
        for (int64_t c = 0; c < nc; ++c) sum += std::exp(double(buf[size_t(c)]) - double(mx));
        if (y >= v0 && y < v0 + nc) target = buf[size_t(y - v0)];
      }
      const double lse = double(mx) + std::log(sum);
      row_loss[size_t(t)] = lse - double(target);
      if (!dr) continue;
      // Pass 2: d/dlogit = (softmax - onehot) * grad_scale, through the softcap, into dh = g . W.
      for (int64_t v0 = 0; v0 < V; v0 += chunk) {
        const int64_t nc = std::min(chunk, V - v0);
        head_chunk(hr, H, W, v0, nc, softcap, buf.data(), dcap.data());
        for (int64_t c = 0; c < nc; ++c) {
          const float p = float(std::exp(double(buf[size_t(c)]) - lse));
          const float g = (p - (v0 + c == y ? 1.0f : 0.0f)) * grad_scale * dcap[size_t(c)];
          const float* wr = W + (v0 + c) * H;
          for (int64_t k = 0; k < H; ++k) dr[k] += g * wr[k];
        }
      }
    }
  });
  double loss = 0;
  for (double l : row_loss) loss += l;
  return loss;
}

double causal_lm_loss_backward(const float* h, int64_t T, int64_t H, const float* W, int64_t V,
                               const int64_t* labels, float softcap, int64_t chunk, float* dh) {
  std::vector<int64_t> targets(size_t(T), -100);  // [T]: the shift
  for (int64_t t = 0; t + 1 < T; ++t) targets[size_t(t)] = labels[t + 1];
  int64_t n = 0;
  for (int64_t t = 0; t < T; ++t) n += targets[size_t(t)] != -100;
  const double sum =
      cross_entropy_head_backward(h, T, H, W, V, targets.data(), softcap, chunk, n ? 1.0f / float(n) : 0.0f, dh, &n);
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
  for (int64_t i = 0; i < n; ++i) {
    dgate[i] = dy[i] * up[i] * act_grad(a, gate[i]);
    dup[i] = dy[i] * act_value(a, gate[i]);
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

}  // namespace nibble::ops
