// Backward of rotary embeddings and of causal self-attention (train_ops.h). Attention recomputes
// each query row's probabilities from q and k, as flash attention's backward does, so the only
// buffers are a row of scores per worker: nothing of size [H, T, T] exists.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "nibble/thread_pool.h"
#include "ops/train_ops.h"

namespace nibble::ops {

void rope_backward_(float* dx, int64_t T, int64_t H, int64_t D, const float* cos, const float* sin,
                    int64_t rot_dim) {
  const int64_t half = rot_dim / 2;
  for (int64_t th = 0; th < T * H; ++th) {
    const int64_t t = th / H;
    float* g = dx + th * D;
    const float* c = cos + t * half;
    const float* s = sin + t * half;
    // forward: y1 = a c - b s, y2 = b c + a s  =>  da = g1 c + g2 s, db = g2 c - g1 s
    for (int64_t d = 0; d < half; ++d) {
      const float g1 = g[d], g2 = g[d + half];
      g[d] = g1 * c[d] + g2 * s[d];
      g[d + half] = g2 * c[d] - g1 * s[d];
    }
  }
}

void attention_backward(const float* q, const float* k, const float* v, int64_t T, int64_t Hq, int64_t Hkv,
                        int64_t D, int64_t Dv, const AttnBwdOptions& o, const float* dout, float* dq,
                        float* dk, float* dv) {
  const int64_t group = Hq / Hkv;
  std::fill(dq, dq + T * Hq * D, 0.0f);
  std::fill(dk, dk + T * Hkv * D, 0.0f);
  std::fill(dv, dv + T * Hkv * Dv, 0.0f);
  // One task per kv head: it owns dk/dv of that head, so tasks never write the same floats.
  parallel_for(Hkv, 1, [&](int64_t g0, int64_t g1) {
    const size_t n = size_t(std::max<int64_t>(T, 1));
    std::vector<float> p(n), dp(n), dlogit(n);  // [T] each: one query row's keys
    for (int64_t kvh = g0; kvh < g1; ++kvh)
      for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h)
        for (int64_t i = 0; i < T; ++i) {
          const int64_t lo = o.sliding_window > 0 ? std::max<int64_t>(0, i - o.sliding_window + 1) : 0;
          const float* qi = q + (i * Hq + h) * D;
          const float* go = dout + (i * Hq + h) * Dv;
          float mx = -std::numeric_limits<float>::infinity();
          for (int64_t j = lo; j <= i; ++j) {
            const float* kj = k + (j * Hkv + kvh) * D;
            float acc = 0;
            for (int64_t e = 0; e < D; ++e) acc += qi[e] * kj[e];
            float x = acc * o.scale;
            dlogit[size_t(j)] = o.scale;  // d(score)/d(q.k)
            if (o.softcap > 0.0f) {
              const float t = std::tanh(x / o.softcap);
              x = t * o.softcap;
              dlogit[size_t(j)] *= 1.0f - t * t;
            }
            if (o.alibi_slopes) x += o.alibi_slopes[h] * float(j);
            p[size_t(j)] = x;
            mx = std::max(mx, x);
          }
          double sum = 0;
          for (int64_t j = lo; j <= i; ++j) sum += (p[size_t(j)] = std::exp(p[size_t(j)] - mx));
          const float inv = float(1.0 / sum);
          double pdp = 0;  // sum_l p_l dp_l
          for (int64_t j = lo; j <= i; ++j) {
            p[size_t(j)] *= inv;
            const float* vj = v + (j * Hkv + kvh) * Dv;
            float* dvj = dv + (j * Hkv + kvh) * Dv;
            float acc = 0;
            for (int64_t e = 0; e < Dv; ++e) {
              acc += go[e] * vj[e];
              dvj[e] += p[size_t(j)] * go[e];
            }
            dp[size_t(j)] = acc;
            pdp += double(p[size_t(j)]) * acc;
          }
          float* dqi = dq + (i * Hq + h) * D;
          for (int64_t j = lo; j <= i; ++j) {
            // ds_j = p_j (dp_j - sum_l p_l dp_l), through softcap and scale
            const float ds = p[size_t(j)] * (dp[size_t(j)] - float(pdp)) * dlogit[size_t(j)];
            if (ds == 0.0f) continue;
            const float* kj = k + (j * Hkv + kvh) * D;
            float* dkj = dk + (j * Hkv + kvh) * D;
            for (int64_t e = 0; e < D; ++e) {
              dqi[e] += ds * kj[e];
              dkj[e] += ds * qi[e];
            }
          }
        }
  });
}

}  // namespace nibble::ops
