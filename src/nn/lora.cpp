#include "nn/lora.h"

#include <algorithm>
#include <random>

#include "backends/cpu/linear_cpu.h"
#include "nibble/error.h"

namespace nibble::nn {

void lora_forward(const float* x, int64_t M, int64_t in, const float* A, const float* B, int64_t r,
                  int64_t out, float scale, float dropout, uint64_t seed, float* y, LoraSaved* saved) {
  if (!(dropout >= 0.0f && dropout < 1.0f)) throw ConfigError("lora_dropout must be in [0, 1)");
  std::vector<float> xd;
  std::vector<uint8_t> mask;
  const float* xs = x;
  if (dropout > 0.0f) {
    xd.resize(size_t(M * in));
    mask.resize(size_t(M * in));
    std::mt19937_64 g(seed);
    const float keep = 1.0f / (1.0f - dropout);
    for (int64_t i = 0; i < M * in; ++i) {
      const double u = double(g() >> 11) * 0x1p-53;
      mask[size_t(i)] = u >= dropout;
      xd[size_t(i)] = mask[size_t(i)] ? x[i] * keep : 0.0f;
    }
    xs = xd.data();
  }
  std::vector<float> h(size_t(M * r), 0.0f);  // [M, r]
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < r; ++j) {
      float acc = 0;
      for (int64_t k = 0; k < in; ++k) acc += A[j * in + k] * xs[m * in + k];
      h[size_t(m * r + j)] = acc;
    }
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < out; ++n) {
      float acc = 0;
      for (int64_t j = 0; j < r; ++j) acc += B[n * r + j] * h[size_t(m * r + j)];
      y[m * out + n] += scale * acc;
    }
  if (saved) {
    saved->xd = std::move(xd);
    saved->mask = std::move(mask);
    saved->keep_scale = dropout > 0.0f ? 1.0f / (1.0f - dropout) : 1.0f;
    saved->h = std::move(h);
  }
}

void lora_add(ExecContext& ctx, const LoraWeights& w, const Tensor& x, const Tensor& out) {
  (void)ctx;
  if (!out.device().is_cpu())
    throw UnsupportedError("LoRA adapters run on the CPU only for now (the model is on " + out.device().str() + ")");
  const Tensor xc = x.is_contiguous() ? x : x.contiguous();
  lora_forward(xc.data<float>(), xc.size(0), xc.size(1), w.A.data<float>(), w.B.data<float>(), w.r(),
               out.size(1), w.scale, 0.0f, 0, out.data<float>(), nullptr);
}

void lora_backward(const float* dy, const float* x, int64_t M, int64_t in, const float* A, const float* B,
                   int64_t r, int64_t out, float scale, const LoraSaved& saved, float* dA, float* dB,
                   float* dx) {
  const float* xs = saved.xd.empty() ? x : saved.xd.data();
  const float* h = saved.h.data();
  // dB[n, j] += s · sum_m dy[m, n] h[m, j]
  for (int64_t n = 0; n < out; ++n)
    for (int64_t j = 0; j < r; ++j) {
      float acc = 0;
      for (int64_t m = 0; m < M; ++m) acc += dy[m * out + n] * h[m * r + j];
      dB[n * r + j] += scale * acc;
    }
  // dh [M, r] = s · dy · B
  std::vector<float> dh(size_t(M * r), 0.0f);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < r; ++j) {
      float acc = 0;
      for (int64_t n = 0; n < out; ++n) acc += dy[m * out + n] * B[n * r + j];
      dh[size_t(m * r + j)] = scale * acc;
    }
  // dA[j, k] += sum_m dh[m, j] xd[m, k]
  for (int64_t j = 0; j < r; ++j)
    for (int64_t m = 0; m < M; ++m) {
      const float d = dh[size_t(m * r + j)];
      for (int64_t k = 0; k < in; ++k) dA[j * in + k] += d * xs[m * in + k];
    }
  if (!dx) return;
  // dx[m, k] += (dh · A)[m, k] · mask / (1 - p)
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < in; ++k) {
      float acc = 0;
      for (int64_t j = 0; j < r; ++j) acc += dh[size_t(m * r + j)] * A[j * in + k];
      if (!saved.mask.empty()) acc = saved.mask[size_t(m * in + k)] ? acc * saved.keep_scale : 0.0f;
      dx[m * in + k] += acc;
    }
}

void linear_backward_dx(const Linear& base, const float* dy, int64_t M, float* dx) {
  const int64_t in = base.in_features(), out = base.out_features();
  constexpr int64_t kTile = 32;  // output rows dequantized at a time: [kTile, in] f32
  std::vector<float> tile(size_t(kTile * in));
  Tensor absmax;
  if (base.format() == WeightFormat::Nf4 || base.format() == WeightFormat::Fp4)
    absmax = dequantize_absmax(base.quant_state());  // [n_blocks] f32, small
  for (int64_t n0 = 0; n0 < out; n0 += kTile) {
    const int64_t nt = std::min(kTile, out - n0);
    switch (base.format()) {
      case WeightFormat::Fp: {
        const Tensor& w = base.weight();
        const Tensor rows = Tensor::from_storage(
            w.storage(), w.byte_offset() + size_t(dtype_nbytes(w.dtype(), n0 * in)), {nt, in}, w.dtype());
        const Tensor f = rows.dtype() == DType::F32 ? rows : rows.to(DType::F32);
        std::copy(f.data<float>(), f.data<float>() + nt * in, tile.begin());
        break;
      }
      case WeightFormat::Nf4:
      case WeightFormat::Fp4: {
        const QuantState4& st = base.quant_state();
        cpu::dequantize_4bit_range(base.weight().data<uint8_t>(), absmax.data<float>(), st.blocksize,
                                   st.quant_type, n0 * in, (n0 + nt) * in, tile.data(), DType::F32);
        if (base.compute_dtype() != DType::F32) {  // the forward's weights are rounded to it
          Tensor t = Tensor::from_vector({nt * in}, DType::F32,
                                         std::vector<float>(tile.begin(), tile.begin() + nt * in));
          Tensor back = t.to(base.compute_dtype()).to(DType::F32);
          std::copy(back.data<float>(), back.data<float>() + nt * in, tile.begin());
        }
        break;
      }
      case WeightFormat::Int8: {
        const int8_t* cb = base.weight().data<int8_t>();
        const float* scb = base.scb().data<float>();
        for (int64_t n = 0; n < nt; ++n)
          for (int64_t k = 0; k < in; ++k)
            tile[size_t(n * in + k)] = float(cb[(n0 + n) * in + k]) * scb[n0 + n] / 127.0f;
        break;
      }
    }
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < nt; ++n) {
        const float d = dy[m * out + n0 + n];
        if (d == 0.0f) continue;
        const float* wr = tile.data() + n * in;
        float* dr = dx + m * in;
        for (int64_t k = 0; k < in; ++k) dr[k] += d * wr[k];
      }
  }
}

}  // namespace nibble::nn
