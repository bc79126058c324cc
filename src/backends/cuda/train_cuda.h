// CUDA backend of the training backward ops (definitions in ops/train_ops.h and nn/lora.h),
// declared without CUDA headers. Same semantics as the host reference functions; f32 math, and
// where several threads add into one gradient element (dw of a norm, dk/dv of attention, the
// embedding scatter) atomicAdd, so the summation order is not fixed. All pointers are device
// pointers on l.device; calls enqueue on l.stream and return without synchronising, except
// cross_entropy_head, which brings its per-row losses back to the host.
#pragma once

#include <cstddef>
#include <cstdint>

#include "backends/cuda/launch.h"
#include "backends/cuda/linear_cuda.h"
#include "backends/cuda/nn_cuda.h"
#include "nibble/dtype.h"

namespace nibble::cuda {

// ---- norms (train_norm.cu) -------------------------------------------------------------------
// dx [M, C] of rms_norm / layer_norm at x for dy; w [C] of wdt; dw (and db) [C] accumulated when
// not null.
void rms_norm_backward(const Launch& l, const float* x, int64_t M, int64_t C, const void* w, DType wdt,
                       float eps, float offset, const float* dy, float* dx, float* dw);
void layer_norm_backward(const Launch& l, const float* x, int64_t M, int64_t C, const void* w, DType wdt,
                         float eps, const float* dy, float* dx, float* dw, float* db);

// ---- elementwise (train_elementwise.cu) -------------------------------------------------------
void zero(const Launch& l, void* p, size_t bytes);  // cudaMemsetAsync on l.stream
void act_backward(const Launch& l, Act a, const float* x, const float* dy, int64_t n, float* dx);
void gated_act_backward(const Launch& l, Act a, const float* gate, const float* up, const float* dy,
                        int64_t n, float* dgate, float* dup);
void softcap_backward(const Launch& l, const float* y, float cap, int64_t n, float* dy);  // in place on dy
// dx [T, H, D] in place; cos/sin [T, rot_dim / 2].
void rope_backward(const Launch& l, float* dx, int64_t T, int64_t H, int64_t D, const float* cos,
                   const float* sin, int64_t rot_dim);
// dW[ids[t], :] += dy[t, :] (ids outside [0, V) skipped).
void embedding_backward(const Launch& l, const int64_t* ids, int64_t T, const float* dy, int64_t H, int64_t V,
                        float* dW);

// ---- attention (train_attention.cu, train_attention_tc.cu) ---------------------------------------
// Causal self-attention of one sequence from position 0 (as ops::attention_backward): q
// [T, Hq, D], k [T, Hkv, D], v [T, Hkv, Dv], dout [T, Hq, Dv] contiguous; dq, dk, dv overwritten.
// k and v in kv_dtype: f32 (the SIMT kernels, f32 throughout) or f16/bf16 (the tensor cores,
// where attention_backward_tc_fits: q, dout, the probabilities P and dS rounded to that dtype
// as flash attention's backward does in it, f32 accumulation; deterministic, no atomics).
struct AttentionBackward {
  int64_t T = 0, Hq = 0, Hkv = 0, D = 0, Dv = 0;
  float scale = 1.0f;
  int64_t window = 0;            // 0: none
  float softcap = 0.0f;          // 0: none
  const float* alibi = nullptr;  // [Hq] or nullptr
  const float *q = nullptr, *dout = nullptr;
  const void *k = nullptr, *v = nullptr;
  DType kv_dtype = DType::F32;
  float *dq = nullptr, *dk = nullptr, *dv = nullptr;
  // The forward's output [T, Hq, Dv] f32, or nullptr. The tensor-core kernels take each row's
  // Dsum = sum_j p_j dp_j as dO . O from it instead of a second product with V.
  const float* out = nullptr;
  // With out: each row's log-sum-exp of its logits as the forward computed it ([T, Hq] f32,
  // cuda::Attention::lse), or nullptr. The tensor-core kernels then skip their first pass.
  const float* lse = nullptr;
};
// Workspace: attention_backward_workspace_bytes (each row's softmax statistics; on the tensor
// cores with Hq > Hkv also each query head's dk/dv, summed over its group in order afterwards).
size_t attention_backward_workspace_bytes(const AttentionBackward& a);
// 16-bit k/v that the tensor-core kernels take: D = Dv in {32, 64, 80, 96, 128}, 16-byte aligned
// rows, and NIBBLE_ATTN_TC not 0. A 16-bit call that does not fit is an InternalError here (the
// ops layer converts k/v to f32 first).
bool attention_backward_tc_fits(const AttentionBackward& a);
void attention_backward(const Launch& l, const AttentionBackward& a);

// ---- optimizer (train_optim.cu) ------------------------------------------------------------------
// ops::adamw_update's arithmetic per element (the same bits: no fused multiply-adds in this build).
struct AdamWScalars {
  float step_size, bc2_sqrt, decay, b1, b2, eps;
};
void adamw(const Launch& l, float* x, const float* g, float* m, float* v, int64_t n, const AdamWScalars& s);
// out[k] = sum of double(x[i])^2 over [ends[k-1], ends[k]) (ends[-1] = 0; ends, out [n] on the
// device): a block a segment, each thread's strided sum then a fixed tree.
void sum_squares(const Launch& l, const float* x, const int64_t* ends, int64_t n, double* out);
// x[i] = float(double(x[i]) * coef).
void scale(const Launch& l, float* x, int64_t n, double coef);

// ---- loss and GEMMs through cuBLAS (train_gemm.cu) ------------------------------------------------
// The chunked causal-LM loss with the frozen head (ops::cross_entropy_head_backward): h [T, H],
// W [V, H], targets [T] (-100: none; the rest in range, checked by the caller), dh [T, H]
// overwritten (nullptr: loss only). nll_host [T] gets each row's NLL (0 for ignored rows) after
// the call has finished on l.stream. Workspace: cross_entropy_workspace_bytes. tf32: the head's
// GEMMs on TF32 tensor cores (for a head stored in 16 bits: its logits exact but for the
// summation order when h is 16-bit too; dh from the softmax gradient rounded to TF32).
size_t cross_entropy_workspace_bytes(int64_t T, int64_t V, int64_t chunk);
void cross_entropy_head(const Launch& l, const float* h, int64_t T, int64_t H, const float* W, int64_t V,
                        const int64_t* targets, float softcap, int64_t chunk, float grad_scale, float* dh,
                        double* nll_host, bool tf32 = false);

// The same loss with a head stored in 16 bits (wdt bf16/f16) as bitsandbytes' training computes it
// under autocast: h rounded to wdt, logits on the tensor cores in f32 (not rounded), the softmax
// gradient rounded to wdt for dh = G W (f32 sums). Rows are taken cross_entropy16_rows at a time
// with the whole vocabulary ([rows, V] f32 logits and their 16-bit gradient in the workspace), so
// each logit is computed once.
int64_t cross_entropy16_rows(int64_t T, int64_t V);
size_t cross_entropy16_workspace_bytes(int64_t T, int64_t H, int64_t V);
void cross_entropy_head16(const Launch& l, const float* h, int64_t T, int64_t H, const void* W, DType wdt,
                          int64_t V, const int64_t* targets, float softcap, float grad_scale, float* dh,
                          double* nll_host);

// Row-major C [M, N] = alpha · op(A) · op(B) + beta · C, op(X) = X or X^T; lda/ldb/ldc are row
// strides of the stored matrices (f32, cuBLAS; tf32: inputs rounded to TF32 on the tensor cores).
void gemm_f32(const Launch& l, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
              const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc,
              bool tf32 = false);

// ---- LoRA and the frozen base's dX (train_lora.cu) -----------------------------------------------
// xd [n] = mask ? x * keep : 0 (inverted dropout with a mask drawn on the host).
void dropout_apply(const Launch& l, const float* x, const uint8_t* mask, float keep, int64_t n, float* xd);
// dx [n] += mask ? t * keep : 0 (mask nullptr: dx += t).
void masked_add(const Launch& l, const float* t, const uint8_t* mask, float keep, int64_t n, float* dx);

// Rows [n0, n0 + nt) of a frozen base weight [N, K] as the forward uses it, as f32 [nt, K]:
// fp (wdt f32/f16/bf16), 4-bit (dequantized, then rounded to compute_dtype as bitsandbytes'
// dequantize_4bit to it) or int8 (cb * scb / 127).
struct BaseWeight {
  enum class Kind { Fp, Quant4, Int8 } kind = Kind::Fp;
  int64_t N = 0, K = 0;
  const void* w = nullptr;  // Fp
  DType wdt = DType::F32;
  Quant4Weight q4;  // Quant4
  DType compute_dtype = DType::F32;
  const int8_t* cb = nullptr;  // Int8
  const float* scb = nullptr;
};
// Rows of W an f32 tile holds for this shape, and the workspace linear_backward_dx needs for M
// rows of dy.
int64_t base_tile_rows(int64_t N, int64_t K);
size_t linear_backward_dx_workspace_bytes(const BaseWeight& w, int64_t M);
// dx [M, K] += dy [M, N] · W, W a tile of rows at a time (never a whole dequantized copy); a
// 4-bit W with bf16 compute on the tensor cores with dy rounded to bf16 (bitsandbytes' backward
// under bf16 autocast), f32 sums.
void linear_backward_dx(const Launch& l, const BaseWeight& w, const float* dy, int64_t M, float* dx);

}  // namespace nibble::cuda
