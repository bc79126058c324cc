#include "nn/lora.h"

#include <algorithm>
#include <random>

#include "backends/cpu/linear_cpu.h"
#include "nibble/error.h"
#include "ops/nn_ops.h"

namespace nibble::nn {

namespace {
// out [M, N] = x [M, K] · w [N, K]^T (f32, the threaded CPU GEMM).
void mm_xwt(const float* x, int64_t M, int64_t K, const float* w, int64_t N, float* out) {
  cpu::linear(x, M, K, w, DType::F32, N, nullptr, DType::F32, DType::F32, out);
}
// [rows, cols] -> [cols, rows]
std::vector<float> transposed(const float* a, int64_t rows, int64_t cols) {
  std::vector<float> t(size_t(rows * cols));
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) t[size_t(j * rows + i)] = a[i * cols + j];
  return t;
}
}  // namespace

void dropout_mask(uint8_t* mask, int64_t n, float p, uint64_t seed) {
  std::mt19937_64 g(seed);
  for (int64_t i = 0; i < n; ++i) mask[i] = double(g() >> 11) * 0x1p-53 >= p;
}
std::vector<uint8_t> dropout_mask(int64_t n, float p, uint64_t seed) {
  std::vector<uint8_t> mask(static_cast<size_t>(n));
  dropout_mask(mask.data(), n, p, seed);
  return mask;
}

void lora_forward(const float* x, int64_t M, int64_t in, const float* A, const float* B, int64_t r,
                  int64_t out, float scale, float dropout, uint64_t seed, float* y, float* xd, uint8_t* mask,
                  float* h) {
  if (!(dropout >= 0.0f && dropout < 1.0f)) throw ConfigError("lora_dropout must be in [0, 1)");
  const float* xs = x;
  if (dropout > 0.0f) {
    dropout_mask(mask, M * in, dropout, seed);
    const float keep = 1.0f / (1.0f - dropout);
    for (int64_t i = 0; i < M * in; ++i) xd[i] = mask[i] ? x[i] * keep : 0.0f;
    xs = xd;
  }
  std::vector<float> t(size_t(M * out));  // [M, out]
  mm_xwt(xs, M, in, A, r, h);
  mm_xwt(h, M, r, B, out, t.data());
  for (int64_t i = 0; i < M * out; ++i) y[i] += scale * t[size_t(i)];
}

void lora_forward(const float* x, int64_t M, int64_t in, const float* A, const float* B, int64_t r,
                  int64_t out, float scale, float dropout, uint64_t seed, float* y, LoraSaved* saved) {
  LoraSaved s;
  if (dropout > 0.0f) s.xd.resize(size_t(M * in)), s.mask.resize(size_t(M * in));
  s.h.resize(size_t(M * r));
  lora_forward(x, M, in, A, B, r, out, scale, dropout, seed, y, s.xd.data(), s.mask.data(), s.h.data());
  if (!saved) return;
  s.keep_scale = dropout > 0.0f ? 1.0f / (1.0f - dropout) : 1.0f;
  *saved = std::move(s);
}

void lora_add(ExecContext& ctx, const LoraWeights& w, const Tensor& x, const Tensor& out) {
  Tensor xc = x;
  if (!x.is_contiguous()) {  // strided rows (a slice of a fused output): a contiguous copy
    xc = Tensor::empty({x.size(0), x.size(1)}, DType::F32, x.device());
    ops::copy_(ctx, x, xc);
  }
  lora_forward(ctx, w, xc, 0.0f, 0, out, nullptr);
}

void lora_backward(const float* dy, const float* x, int64_t M, int64_t in, const float* A, const float* B,
                   int64_t r, int64_t out, float scale, const LoraSaved& saved, float* dA, float* dB,
                   float* dx) {
  const LoraSavedRef ref{saved.xd.empty() ? nullptr : saved.xd.data(),
                         saved.mask.empty() ? nullptr : saved.mask.data(), saved.keep_scale, saved.h.data()};
  lora_backward(dy, x, M, in, A, B, r, out, scale, ref, dA, dB, dx);
}

void lora_backward(const float* dy, const float* x, int64_t M, int64_t in, const float* A, const float* B,
                   int64_t r, int64_t out, float scale, const LoraSavedRef& saved, float* dA, float* dB,
                   float* dx) {
  const float* xs = saved.xd ? saved.xd : x;
  const float* h = saved.h;
  // dh [M, r] = s · dy · B
  std::vector<float> dh(size_t(M * r)), Bt = transposed(B, out, r), tmp;
  mm_xwt(dy, M, out, Bt.data(), r, dh.data());
  for (auto& v : dh) v *= scale;
  // dB [out, r] += s · dy^T · h
  const std::vector<float> dyt = transposed(dy, M, out), ht = transposed(h, M, r);
  tmp.resize(size_t(out * r));
  mm_xwt(dyt.data(), out, M, ht.data(), r, tmp.data());
  for (int64_t i = 0; i < out * r; ++i) dB[i] += scale * tmp[size_t(i)];
  // dA [r, in] += dh^T · xd
  const std::vector<float> dht = transposed(dh.data(), M, r), xst = transposed(xs, M, in);
  tmp.resize(size_t(r * in));
  mm_xwt(dht.data(), r, M, xst.data(), in, tmp.data());
  for (int64_t i = 0; i < r * in; ++i) dA[i] += tmp[size_t(i)];
  if (!dx) return;
  // dx [M, in] += (dh · A) · mask / (1 - p)
  const std::vector<float> At = transposed(A, r, in);
  tmp.resize(size_t(M * in));
  mm_xwt(dh.data(), M, r, At.data(), in, tmp.data());
  for (int64_t i = 0; i < M * in; ++i) {
    float v = tmp[size_t(i)];
    if (saved.mask) v = saved.mask[i] ? v * saved.keep_scale : 0.0f;
    dx[i] += v;
  }
}

void linear_backward_dx(const Linear& base, const float* dy, int64_t M, float* dx) {
  const int64_t in = base.in_features(), out = base.out_features();
  // Output rows dequantized at a time: [kTile, in] f32 of about 1 MiB (a multiple of 32 rows,
  // at least 32), never the whole weight unless it is that small.
  const int64_t kTile =
      std::min(std::max<int64_t>(32, (int64_t(1) << 18) / std::max<int64_t>(in, 1) / 32 * 32), out);
  std::vector<float> tile(size_t(kTile * in));
  Tensor absmax;
  if (base.format() == WeightFormat::Nf4 || base.format() == WeightFormat::Fp4)
    absmax = base.absmax_f32().defined() ? base.absmax_f32()
                                         : dequantize_absmax(base.quant_state());  // [n_blocks] f32
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
    // dx [M, in] += dy[:, n0:n0+nt] · tile [nt, in]
    std::vector<float> dys(size_t(M * nt)), part(size_t(M * in));
    for (int64_t m = 0; m < M; ++m) std::copy_n(dy + m * out + n0, nt, dys.begin() + m * nt);
    const std::vector<float> tt = transposed(tile.data(), nt, in);  // [in, nt]
    mm_xwt(dys.data(), M, nt, tt.data(), in, part.data());
    for (int64_t i = 0; i < M * in; ++i) dx[i] += part[size_t(i)];
  }
}

}  // namespace nibble::nn
