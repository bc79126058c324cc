// The context forms of the LoRA pieces of a training pass (nn/lora.h): checks, then one dispatch
// each (ops/dispatch.h). The CPU branches call the host functions of lora.cpp on the tensors'
// data; the CUDA branches run the small GEMMs through cuBLAS (backends/cuda/train_cuda.h).
#include <vector>

#include "nibble/error.h"
#include "nn/lora.h"
#include "ops/dispatch.h"
#include "ops/quant4_view.h"
// CUDA-free declarations; only the CUDA build instantiates the branches that call them.
#include "backends/cuda/train_cuda.h"

namespace nibble::nn {

using detail::str;

namespace {

void require_mat(const char* op, const char* what, const Tensor& t, int64_t rows, int64_t cols) {
  if (!t.defined() || t.dtype() != DType::F32 || t.shape() != Shape{rows, cols} || !t.is_contiguous())
    throw ShapeError(str(op, ": ", what, " must be a contiguous f32 [", rows, ", ", cols, "], got ",
                         t.defined() ? t.str() : "undefined"));
}
// x [M, in] of an adapter w: returns M.
int64_t check_adapter(const char* op, const LoraWeights& w, const Tensor& x) {
  if (!w.defined()) throw ShapeError(str(op, ": the adapter is undefined"));
  if (!x.defined() || x.dim() != 2)
    throw ShapeError(str(op, ": x must be 2-D, got ", x.defined() ? x.str() : "undefined"));
  const int64_t in = w.A.size(1);
  require_mat(op, "x", x, x.size(0), in);
  require_mat(op, "lora_A", w.A, w.r(), in);
  require_mat(op, "lora_B", w.B, w.B.size(0), w.r());
  return x.size(0);
}

}  // namespace

void lora_forward(ExecContext& ctx, const LoraWeights& w, const Tensor& x, float dropout, uint64_t seed,
                  const Tensor& out, LoraCache* saved) {
  const char* op = "lora_forward";
  if (!(dropout >= 0.0f && dropout < 1.0f)) throw ConfigError("lora_dropout must be in [0, 1)");
  const int64_t M = check_adapter(op, w, x), in = x.size(1), r = w.r(), N = w.B.size(0);
  require_mat(op, "out", out, M, N);
  ops::dispatch(
      op, ctx, DType::F32, {w.A, w.B, x, out},
      [&] {
        LoraCache s;
        s.h = Tensor::empty({M, r}, DType::F32);
        if (dropout > 0.0f) {
          s.keep_scale = 1.0f / (1.0f - dropout);
          s.xd = Tensor::empty({M, in}, DType::F32);
          s.mask = Tensor::empty({M, in}, DType::U8);
        }
        lora_forward(x.data<float>(), M, in, w.A.data<float>(), w.B.data<float>(), r, N, w.scale, dropout,
                     seed, out.data<float>(), s.xd.defined() ? s.xd.data<float>() : nullptr,
                     s.mask.defined() ? s.mask.data<uint8_t>() : nullptr, s.h.data<float>());
        if (saved) *saved = std::move(s);
      },
      [&](auto& c) {
        const Device dev = ctx.device();
        const cuda::Launch l = ops::make_launch(c, 0);
        LoraCache s;
        const float* xs = x.template data<float>();
        if (dropout > 0.0f) {
          s.keep_scale = 1.0f / (1.0f - dropout);
          s.mask = Tensor::from_vector({M, in}, DType::U8, dropout_mask(M * in, dropout, seed)).to(dev);
          s.xd = Tensor::empty({M, in}, DType::F32, dev);
          cuda::dropout_apply(l, xs, s.mask.template data<uint8_t>(), s.keep_scale, M * in,
                              s.xd.template data<float>());
          xs = s.xd.template data<float>();
        }
        s.h = Tensor::empty({M, r}, DType::F32, dev);
        float* h = s.h.template data<float>();
        cuda::gemm_f32(l, false, true, M, r, in, 1.0f, xs, in, w.A.template data<float>(), in, 0.0f, h, r,
                       w.tf32);
        cuda::gemm_f32(l, false, true, M, N, r, w.scale, h, r, w.B.template data<float>(), r, 1.0f,
                       out.template data<float>(), N, w.tf32);
        if (saved) *saved = std::move(s);
      });
}

void lora_backward(ExecContext& ctx, const LoraWeights& w, const Tensor& x, const Tensor& dy,
                   const LoraCache& saved, const Tensor& dA, const Tensor& dB, const Tensor& dx) {
  const char* op = "lora_backward";
  const int64_t M = check_adapter(op, w, x), in = x.size(1), r = w.r(), N = w.B.size(0);
  require_mat(op, "dy", dy, M, N);
  require_mat(op, "saved h", saved.h, M, r);
  require_mat(op, "dA", dA, r, in);
  require_mat(op, "dB", dB, N, r);
  if (dx.defined()) require_mat(op, "dx", dx, M, in);
  if (saved.mask.defined()) require_mat(op, "saved xd", saved.xd, M, in);
  ops::dispatch(
      op, ctx, DType::F32, {w.A, w.B, x, dy, saved.h, saved.xd, saved.mask, dA, dB, dx},
      [&] {
        const LoraSavedRef s{saved.mask.defined() ? saved.xd.data<float>() : nullptr,
                             saved.mask.defined() ? saved.mask.data<uint8_t>() : nullptr, saved.keep_scale,
                             saved.h.data<float>()};
        lora_backward(dy.data<float>(), x.data<float>(), M, in, w.A.data<float>(), w.B.data<float>(), r, N,
                      w.scale, s, dA.data<float>(), dB.data<float>(),
                      dx.defined() ? dx.data<float>() : nullptr);
      },
      [&](auto& c) {
        const Device dev = ctx.device();
        const cuda::Launch l = ops::make_launch(c, 0);
        const float* g = dy.template data<float>();
        const float* h = saved.h.template data<float>();
        const float* xs = saved.mask.defined() ? saved.xd.template data<float>() : x.template data<float>();
        const Tensor dh_t = Tensor::empty({M, r}, DType::F32, dev);
        float* dh = dh_t.template data<float>();
        cuda::gemm_f32(l, false, false, M, r, N, w.scale, g, N, w.B.template data<float>(), r, 0.0f, dh, r,
                       w.tf32);
        cuda::gemm_f32(l, true, false, N, r, M, w.scale, g, N, h, r, 1.0f, dB.template data<float>(), r,
                       w.tf32);
        cuda::gemm_f32(l, true, false, r, in, M, 1.0f, dh, r, xs, in, 1.0f, dA.template data<float>(), in,
                       w.tf32);
        if (!dx.defined()) return;
        const float* A = w.A.template data<float>();
        if (!saved.mask.defined()) {
          cuda::gemm_f32(l, false, false, M, in, r, 1.0f, dh, r, A, in, 1.0f, dx.template data<float>(), in,
                         w.tf32);
          return;
        }
        const Tensor t = Tensor::empty({M, in}, DType::F32, dev);
        cuda::gemm_f32(l, false, false, M, in, r, 1.0f, dh, r, A, in, 0.0f, t.template data<float>(), in,
                       w.tf32);
        cuda::masked_add(l, t.template data<float>(), saved.mask.template data<uint8_t>(), saved.keep_scale,
                         M * in, dx.template data<float>());
      });
}

void linear_backward_dx(ExecContext& ctx, const Linear& base, const Tensor& dy, const Tensor& dx) {
  const char* op = "linear_backward_dx";
  const int64_t in = base.in_features(), N = base.out_features();
  if (!dy.defined() || dy.dim() != 2)
    throw ShapeError(str(op, ": dy must be 2-D, got ", dy.defined() ? dy.str() : "undefined"));
  const int64_t M = dy.size(0);
  require_mat(op, "dy", dy, M, N);
  require_mat(op, "dx", dx, M, in);
  ops::dispatch(
      op, ctx, DType::F32, {dy, dx, base.weight()},
      [&] { linear_backward_dx(base, dy.data<float>(), M, dx.data<float>()); },
      [&](auto& c) {
        cuda::BaseWeight w;
        w.N = N;
        w.K = in;
        switch (base.format()) {
          case WeightFormat::Fp:
            w.kind = cuda::BaseWeight::Kind::Fp;
            w.w = base.weight().data_ptr();
            w.wdt = base.weight().dtype();
            break;
          case WeightFormat::Nf4:
          case WeightFormat::Fp4:
            w.kind = cuda::BaseWeight::Kind::Quant4;
            w.q4 = ops::quant4_weight(base.weight(), base.quant_state());
            w.compute_dtype = base.compute_dtype();
            break;
          case WeightFormat::Int8:
            w.kind = cuda::BaseWeight::Kind::Int8;
            w.cb = base.weight().template data<int8_t>();
            w.scb = base.scb().template data<float>();
            break;
        }
        cuda::linear_backward_dx(ops::make_launch(c, cuda::linear_backward_dx_workspace_bytes(w, M)), w,
                                 dy.template data<float>(), M, dx.template data<float>());
      });
}

}  // namespace nibble::nn
