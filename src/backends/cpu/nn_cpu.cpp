// CPU norms, activations, rotary embedding and attention. The float operations follow
// transformers' f32 code path (LlamaRMSNorm, torch's layer_norm/silu/gelu, HF rotate_half,
// eager attention) in the same order where that order changes a rounding; reductions
// (norm statistics) are taken in double, which is at least as close to torch's f32 sums as
// any other order.
#include "backends/cpu/nn_cpu.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "backends/cpu/isa.h"
#include "backends/cpu/linear_cpu.h"
#include "nibble/thread_pool.h"

namespace nibble::cpu {

namespace {

// Rows per task so that each task touches at least ~32K values.
int64_t row_grain(int64_t cols) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(cols, 1));
}

std::vector<float> to_f32(const void* p, DType dt, int64_t n) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[size_t(i)] = load_as_f32(p, dt, i);
  return v;
}

inline float act1(float x, Act a) {
  switch (a) {
    case Act::SiLU:
      return x / (1.0f + std::exp(-x));
    case Act::GeluErf:
      return x * 0.5f * (1.0f + std::erf(x * 0.707106781186547524f));
    case Act::GeluTanh: {
      const float beta = 0.797884560802865355f, kappa = 0.044715f;  // sqrt(2/pi)
      float inner = beta * (x + kappa * (x * x * x));
      return 0.5f * x * (1.0f + std::tanh(inner));
    }
    case Act::ReLU:
      return (x > 0.0f || std::isnan(x)) ? x : 0.0f;
  }
  return x;
}

float dot_portable(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) acc[l] += a[i + l] * b[i + l];
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

}  // namespace

void rms_norm(const float* x, int64_t M, int64_t C, const void* w, DType wdt, float eps, bool add_unit_offset,
              float* out) {
  std::vector<float> wf = to_f32(w, wdt, C);  // [C]
  if (add_unit_offset)
    for (float& v : wf) v = 1.0f + v;  // Gemma: (1.0 + weight.float())
  parallel_for(M, row_grain(C), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * C;
      double ss = 0.0;
      for (int64_t c = 0; c < C; ++c) ss += double(xr[c] * xr[c]);
      const float variance = float(ss / double(C));
      const float inv = 1.0f / std::sqrt(variance + eps);  // torch.rsqrt
      float* o = out + r * C;
      for (int64_t c = 0; c < C; ++c) o[c] = wf[size_t(c)] * (xr[c] * inv);
    }
  });
}

void layer_norm(const float* x, int64_t M, int64_t C, const void* w, DType wdt, const void* b, DType bdt,
                float eps, float* out) {
  std::vector<float> wf = to_f32(w, wdt, C), bf = b ? to_f32(b, bdt, C) : std::vector<float>(size_t(C), 0.0f);
  parallel_for(M, row_grain(C), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * C;
      double s = 0.0;
      for (int64_t c = 0; c < C; ++c) s += xr[c];
      const double mean = s / double(C);
      double ss = 0.0;
      for (int64_t c = 0; c < C; ++c) ss += (xr[c] - mean) * (xr[c] - mean);
      const float rstd = 1.0f / std::sqrt(float(ss / double(C)) + eps);  // biased variance
      const float mean_f = float(mean);
      float* o = out + r * C;
      for (int64_t c = 0; c < C; ++c) o[c] = (xr[c] - mean_f) * rstd * wf[size_t(c)] + bf[size_t(c)];
    }
  });
}

void activate(float* x, int64_t n, Act a) {
  parallel_for(n, 16384, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) x[i] = act1(x[i], a);
  });
}

void gated_activation(const float* gate, const float* up, int64_t n, Act a, float* out) {
  parallel_for(n, 16384, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) out[i] = act1(gate[i], a) * up[i];
  });
}

void apply_rope(float* x, int64_t T, int64_t H, int64_t D, const float* cos, const float* sin,
                int64_t rot_dim) {
  const int64_t half = rot_dim / 2;
  parallel_for(T * H, row_grain(rot_dim), [&](int64_t b, int64_t e) {
    for (int64_t th = b; th < e; ++th) {
      const int64_t t = th / H;
      float* v = x + th * D;
      const float* c = cos + t * half;
      const float* s = sin + t * half;
      for (int64_t d = 0; d < half; ++d) {
        // q * cos + rotate_half(q) * sin, two rounded products then one add (as torch)
        const float a = v[d], bb = v[d + half];
        v[d] = a * c[d] - bb * s[d];
        v[d + half] = bb * c[d] + a * s[d];
      }
    }
  });
}

namespace {

// With many query rows a head, a task copies its kv head's K and V rows into contiguous buffers:
// in [S, Hkv, D] one head's rows are Hkv * D floats apart, a stride that maps them onto few cache
// sets, so they would not stay cached across query rows. kh/vh/lk/lv: that head's first key and
// value rows and their strides, pointed at the buffers (filled once a head: copied).
struct KvHead {
  std::vector<float>& kbuf;
  std::vector<float>& vbuf;
  int64_t copied = -1;
  void use(bool copy, const float* k, const float* v, int64_t kvh, const AttentionShape& a, int64_t s_used,
           const float*& kh, const float*& vh, int64_t& lk, int64_t& lv) {
    kh = k + kvh * a.D, vh = v + kvh * a.Dv, lk = a.Hkv * a.D, lv = a.Hkv * a.Dv;
    if (!copy) return;
    if (copied != kvh) {
      kbuf.resize(size_t(s_used * a.D));
      vbuf.resize(size_t(s_used * a.Dv));
      for (int64_t j = 0; j < s_used; ++j) {
        std::copy_n(kh + j * lk, a.D, kbuf.data() + j * a.D);
        std::copy_n(vh + j * lv, a.Dv, vbuf.data() + j * a.Dv);
      }
      copied = kvh;
    }
    kh = kbuf.data(), vh = vbuf.data(), lk = a.D, lv = a.Dv;
  }
};

// Scores s[0:n) of one row for keys lo, lo + 1, ...: scaled, soft-capped, ALiBi added, then
// exp(s - max) in place; returns their sum.
float softmax_scores(float* s, int64_t n, int64_t lo, float slope, const AttentionShape& a, bool simd) {
  if (simd && !(a.softcap > 0.0f) && !a.alibi) return avx2::exp_sum(s, n, avx2::scale_max(s, n, a.scale));
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j) {
    float x = s[j] * a.scale;
    if (a.softcap > 0.0f) x = std::tanh(x / a.softcap) * a.softcap;  // Gemma2, before the mask
    if (a.alibi) x += slope * float(lo + j);                         // Bloom: slope * key index
    s[j] = x;
    mx = std::max(mx, x);
  }
  if (simd) return avx2::exp_sum(s, n, mx);
  float sum = 0.0f;
  for (int64_t j = 0; j < n; ++j) {
    s[j] = std::exp(s[j] - mx);
    sum += s[j];
  }
  return sum;
}

// One query row against keys [lo, lo + n): k0/v0 point at key lo of this row's kv head, rows
// ldk/ldv floats apart. s: [n] scratch; acc: [Dv] scratch; o: [Dv] output.
void attend_row(const float* qi, const float* k0, int64_t ldk, const float* v0, int64_t ldv, int64_t lo,
                int64_t n, float slope, const AttentionShape& a, bool simd, float* s, float* acc, float* o) {
  if (simd) {
    avx2::qk_dots(qi, k0, ldk, a.D, n, s);
  } else {
    for (int64_t j = 0; j < n; ++j) s[j] = dot_portable(qi, k0 + j * ldk, a.D);
  }
  const float sum = softmax_scores(s, n, lo, slope, a, simd);
  if (simd) {
    avx2::pv_sum(s, v0, ldv, a.Dv, n, acc);
  } else {
    std::fill(acc, acc + a.Dv, 0.0f);
    for (int64_t j = 0; j < n; ++j)
      for (int64_t d = 0; d < a.Dv; ++d) acc[d] += s[j] * v0[j * ldv + d];
  }
  const float inv = 1.0f / sum;
  for (int64_t d = 0; d < a.Dv; ++d) o[d] = acc[d] * inv;
}

// AVX-512, any T: tiles of up to kAttnTileRows query rows of one head (attention_avx512.cpp).
// Tile rows see keys [lo, hi] of the tile (the first row's window start to the last row's
// position); each row's own range gets the softmax and the rest of its scores are zeroed
// before the weighted sum, so a row's result is the same in any tile (decode or prefill).
void attention_tiles(const float* q, const float* k, const float* v, const AttentionShape& a, float* out) {
  constexpr int64_t R = kAttnTileRows;
  const int64_t group = a.Hq / a.Hkv;
  const int64_t ldq = a.Hq * a.D;
  const int64_t s_used = std::min(a.S, a.q_offset + a.T);
  const bool copy_kv = a.T >= 8 && a.Hkv > 1;  // KvHead
  const int64_t tiles = (a.T + R - 1) / R, rows = std::min(R, a.T);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(rows * s_used * a.D, 1));
  parallel_for(a.Hq * tiles, grain, [&](int64_t b, int64_t e) {
    static thread_local std::vector<float> kbuf, vbuf, sc, acc;  // [S, D], [S, Dv], [R, S], [R, Dv]
    sc.resize(size_t(R * std::max<int64_t>(s_used, 1)));
    acc.resize(size_t(R * a.Dv));
    const int64_t ldsc = std::max<int64_t>(s_used, 1);
    KvHead kv{kbuf, vbuf};
    for (int64_t item = b; item < e; ++item) {
      const int64_t h = item / tiles, i0 = (item % tiles) * R, kvh = h / group;
      const int64_t nr = std::min(R, a.T - i0);
      const int64_t lo = a.window > 0 ? std::max<int64_t>(0, a.q_offset + i0 - a.window + 1) : 0;
      const int64_t hi = std::min(a.S - 1, a.q_offset + i0 + nr - 1);
      if (hi < lo) {  // no row of the tile sees a key: zeros (torch would give NaN)
        for (int64_t r = 0; r < nr; ++r) std::fill_n(out + ((i0 + r) * a.Hq + h) * a.Dv, a.Dv, 0.0f);
        continue;
      }
      const float *kh, *vh;
      int64_t lk, lv;
      kv.use(copy_kv, k, v, kvh, a, s_used, kh, vh, lk, lv);
      const int64_t n = hi - lo + 1;
      avx512::qk_tile(q + i0 * ldq + h * a.D, ldq, int(nr), a.D, kh + lo * lk, lk, n, sc.data(), ldsc);
      float sums[R];
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t pos = a.q_offset + i0 + r;
        const int64_t rhi = std::min(a.S - 1, pos);
        const int64_t rlo = a.window > 0 ? std::max<int64_t>(0, pos - a.window + 1) : 0;
        float* s = sc.data() + r * ldsc;
        sums[r] = 0.0f;
        if (rhi >= rlo)
          sums[r] = softmax_scores(s + (rlo - lo), rhi - rlo + 1, rlo, a.alibi ? a.alibi[h] : 0.0f, a, true);
        std::fill(s, s + std::clamp<int64_t>(rlo - lo, 0, n), 0.0f);  // keys outside the row's range
        std::fill(s + std::clamp<int64_t>(rhi - lo + 1, 0, n), s + n, 0.0f);
      }
      avx512::pv_tile(sc.data(), ldsc, int(nr), vh + lo * lv, lv, a.Dv, n, acc.data(), a.Dv);
      for (int64_t r = 0; r < nr; ++r) {
        float* o = out + ((i0 + r) * a.Hq + h) * a.Dv;
        const float* ar = acc.data() + r * a.Dv;
        if (sums[r] == 0.0f) {  // no visible key
          std::fill_n(o, a.Dv, 0.0f);
          continue;
        }
        const float inv = 1.0f / sums[r];
        for (int64_t d = 0; d < a.Dv; ++d) o[d] = ar[d] * inv;
      }
    }
  });
}

}  // namespace

void attention(const float* q, const float* k, const float* v, const AttentionShape& a, float* out) {
  if (isa_at_least(Isa::Avx512)) return attention_tiles(q, k, v, a, out);
  const int64_t group = a.Hq / a.Hkv;
  const int64_t ldq = a.Hq * a.D;
  const bool simd = use_avx2_kernels();
  // Keys any query row can see: [0, min(S, q_offset + T)).
  const int64_t s_used = std::min(a.S, a.q_offset + a.T);
  const bool copy_kv = a.T >= 8 && a.Hkv > 1;  // KvHead
  // Work items ordered (head, row): consecutive items share the head's K/V in cache.
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(a.S * a.D, 1));
  parallel_for(a.Hq * a.T, grain, [&](int64_t b, int64_t e) {
    static thread_local std::vector<float> scores, acc, kbuf, vbuf;  // [S], [Dv], [S, D], [S, Dv]
    scores.resize(size_t(std::max<int64_t>(a.S, 1)));
    acc.resize(size_t(std::max<int64_t>(a.Dv, 1)));
    KvHead kv{kbuf, vbuf};
    for (int64_t item = b; item < e; ++item) {
      const int64_t h = item / a.T, i = item % a.T, kvh = h / group;
      const int64_t pos = a.q_offset + i;
      const int64_t hi = std::min(a.S - 1, pos);  // causal: j <= pos
      const int64_t lo = a.window > 0 ? std::max<int64_t>(0, pos - a.window + 1) : 0;
      float* o = out + (i * a.Hq + h) * a.Dv;
      if (hi < lo) {  // no visible key: zeros (torch would give NaN)
        std::fill(o, o + a.Dv, 0.0f);
        continue;
      }
      const float *kh, *vh;  // key and value 0 of this kv head
      int64_t lk, lv;
      kv.use(copy_kv, k, v, kvh, a, s_used, kh, vh, lk, lv);
      attend_row(q + i * ldq + h * a.D, kh + lo * lk, lk, vh + lo * lv, lv, lo, hi - lo + 1,
                 a.alibi ? a.alibi[h] : 0.0f, a, simd, scores.data(), acc.data(), o);
    }
  });
}

void convert_rows(const void* src, DType sdt, int64_t lds, int64_t rows, int64_t cols, void* dst, DType ddt,
                  int64_t ldd) {
  const int64_t ss = dtype_nbytes(sdt, 1), ds = dtype_nbytes(ddt, 1);
  const bool simd = isa_at_least(Isa::Avx512);
  auto run = [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const char* s = static_cast<const char*>(src) + r * lds * ss;
      char* d = static_cast<char*>(dst) + r * ldd * ds;
      if (simd) {
        avx512::convert_span(s, sdt, d, ddt, cols);
        continue;
      }
      for (int64_t c = 0; c < cols; ++c) store_from_f32(d, ddt, c, load_as_f32(s, sdt, c));
    }
  };
  // About 64K values a task: a small copy (one KV-cache row) stays on the calling thread.
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(cols, 1));
  if (rows <= grain)
    run(0, rows);
  else
    parallel_for(rows, grain, run);
}

}  // namespace nibble::cpu
