// Forward-pass ops on the CPU or CUDA. Activations are f32 [rows, features], row-major;
// weights stay in their stored form (f32/f16/bf16, packed 4-bit, or int8) and are converted
// on the fly inside the kernels — never a full dequantized copy. Each op checks shapes/dtypes
// (ShapeError naming the op) and dispatches once on (device, dtype) through ops/dispatch.h.
// Accumulation is in f32.
//
// Every op comes in two forms: `op(ctx, inputs..., out)` runs on the context's device and
// stream and writes into a caller-provided output (all tensors on ctx's device; nothing is
// allocated, so a decode step can reuse its buffers and be captured in a CUDA graph), and the
// allocating `op(inputs...)` that returns a fresh output on the inputs' device.
#pragma once

#include <span>

#include <cstdint>
#include <optional>

#include "core/exec_context.h"
#include "nibble/quant.h"
#include "nibble/tensor.h"

namespace nibble::ops {

// y[M, N] = x[M, K] · W[N, K]^T (+ bias[N]). W is f32, f16 or bf16; bias f32/f16/bf16 or
// undefined. With round_to (F16/BF16) the inputs x are rounded to that dtype first and
// the output is rounded to it after the bias add (the arithmetic of a torch matmul in that
// dtype: exact products, f32 accumulation); F32 means no rounding. The bias is rounded to
// round_to as well (torch holds it in that dtype). x may have any leading dims: [..., K].
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias, DType round_to = DType::F32);

// The same with a bitsandbytes 4-bit weight [N, K] (state.shape == {N, K}): the weight is
// dequantized row block by row block to compute_dtype exactly as bitsandbytes would
// (dequantize_4bit to compute_dtype), then multiplied as linear() with round_to=compute_dtype.
Tensor linear_4bit(const Tensor& x, const Tensor& packed, const QuantState4& state, const Tensor& bias,
                   DType compute_dtype);
// The same with the f32 absmax given (dequantize_absmax(state), [n_blocks]) so a caller can
// compute it once per weight instead of once per call when the state is double-quantized.
Tensor linear_4bit(const Tensor& x, const Tensor& packed, const QuantState4& state, const Tensor& absmax_f32,
                   const Tensor& bias, DType compute_dtype);

// LLM.int8 (bitsandbytes MatMul8bitLt, inference): x is rounded to f16; rows quantized with
// int8_vectorwise_quant(x, threshold); out = (CA · CB^T) * SCA ⊗ SCB / (127*127) in f32 then
// f16, plus bias (f16); columns of x holding any |x| >= threshold (threshold > 0) are zeroed in
// CA and contributed as x[:, cols] · (CB[:, cols] * SCB / 127)^T in f16. Output f32 [M, N].
// act_dtype is the model's activation dtype (bitsandbytes' A.dtype; F16 above): the bias is
// cast to it first (Linear8bitLt does; only an f16 bias is fused into the f16 dequantization,
// any other is added to the f16 result), the f16 result is cast to it, and the outlier product
// is computed in it (x rounded to it, f32 sums).
Tensor linear_int8(const Tensor& x, const Tensor& cb, const Tensor& scb, const Tensor& bias, float threshold,
                   DType act_dtype = DType::F16);

// Row-wise norms over the last dimension of x [M, C] (f32); weight/bias [C] any float dtype.
// rms_norm: x * rsqrt(mean(x^2) + eps) * (w, or (1 + w) when add_unit_offset, as Gemma).
Tensor rms_norm(const Tensor& x, const Tensor& w, float eps, bool add_unit_offset = false);
Tensor layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps);

enum class Activation { SiLU, GeluErf, GeluTanh, ReLU };
void activate_(Tensor& x, Activation a);  // in place
// out = act(gate) * up, elementwise ([M, F] each).
Tensor gated_activation(const Tensor& gate, const Tensor& up, Activation a);

// Rotary embedding in place on x [T, H, D] (f32) for the first rot_dim dims of each head,
// "rotate_half" layout (HF Llama/NeoX): pairs (i, i + rot_dim/2). cos/sin: [T, rot_dim/2].
void apply_rope_(Tensor& x, const Tensor& cos, const Tensor& sin, int64_t rot_dim);

struct AttentionOptions {
  float scale = 1.0f;                      // multiplies q·k
  int64_t q_offset = 0;                    // position of q row 0 among the keys (KV cache)
  std::optional<int64_t> sliding_window;   // key j visible to query i iff i - j < window
  std::optional<float> softcap;            // logits = softcap * tanh(logits / softcap)
  Tensor alibi_slopes;                     // f32 [Hq] on q's device: adds slope * j (Bloom), or undefined
  // i64 [1] on q's device, or undefined: one query row (T == 1) whose position is read at run
  // time (q_offset = *q_pos, keys [0, *q_pos]; k/v are the whole cache), so a replayed CUDA graph
  // of a decode step stays right as the sequence grows.
  Tensor q_pos;
  // With q_pos i64 [T] (T > 1 allowed): a batched decode step, row t its own sequence at position
  // q_pos[t], its K and V caches at the addresses kv_table[0][t] and kv_table[1][t] (i64 [2, T]
  // on q's device, each 16-byte aligned); k and v give their shape and dtype (each cache as long
  // as k or shorter than it, positions inside each).
  Tensor kv_table;
};
// Causal attention. q [T, Hq, D], k [S, Hkv, D], v [S, Hkv, Dv] (f32; Hq a multiple of Hkv),
// query i sits at position q_offset + i and sees keys j <= q_offset + i. Out [T, Hq, Dv].
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts);

// ---- forms with an execution context and a caller-provided output ------------------------------
// Outputs are contiguous f32 of the shape the allocating form returns. Inputs x are [M, K] 2-D
// views whose rows may be strided (stride(1) == 1), e.g. column slices of a fused projection.
void linear(ExecContext& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, DType round_to,
            const Tensor& out);
// The stored bitsandbytes state: on the CPU the f32 absmax (absmax_f32, see above) is used;
// CUDA reads the stored (nested) absmax directly and ignores absmax_f32.
void linear_4bit(ExecContext& ctx, const Tensor& x, const Tensor& packed, const QuantState4& state,
                 const Tensor& absmax_f32, const Tensor& bias, DType compute_dtype, const Tensor& out);
void linear_int8(ExecContext& ctx, const Tensor& x, const Tensor& cb, const Tensor& scb, const Tensor& bias,
                 float threshold, DType act_dtype, const Tensor& out);
// One 4-bit weight of a grouped call (the arguments of linear_4bit above).
struct Linear4Ref {
  const Tensor& packed;
  const QuantState4& state;
  const Tensor& absmax_f32;
  const Tensor& bias;
  const Tensor& out;
};
// outs = linear_4bit(x, each weight) for weights of one K: on CUDA one launch of the decode
// GEMV for all of them where it takes every one (q, k and v of a decode step); for more rows
// (prefill) x rounded once for the group and a cuBLAS GEMM a weight; else a call each.
void linear_4bit_group(ExecContext& ctx, const Tensor& x, std::span<const Linear4Ref> ws, DType compute_dtype);
// out [M, F] = act(linear_4bit(x, gate)) * linear_4bit(x, up): on CUDA one launch of the decode
// GEMV where it takes both (gate/up of a decode step); for more rows x rounded once, the two
// GEMMs' f32 sums in gate.out and up.out, and one pass for both epilogues and the activation;
// else the two products and gated_activation. The same values of out either way; gate.out and
// up.out are scratch (not the products on the prefill path).
void linear_4bit_gated(ExecContext& ctx, const Tensor& x, const Linear4Ref& gate, const Linear4Ref& up, Activation a,
                       DType compute_dtype, const Tensor& out);
// The input of a grouped or gated 4-bit call given as a residual sum and its RMSNorm:
// h_out = h + r (h unchanged) and x = rms_norm(h_out) as add_rms_norm_ computes them. On CUDA the
// decode GEMV computes x while it stages it (a decode step's attention and MLP norms, no norm
// launch); elsewhere h_out and x are formed first. h, r, h_out contiguous f32 [M, C].
struct RmsNormInput {
  const Tensor& h;
  const Tensor& r;
  const Tensor& w;
  float eps;
  bool add_unit_offset;
  const Tensor& h_out;
};
void linear_4bit_group(ExecContext& ctx, const RmsNormInput& in, std::span<const Linear4Ref> ws,
                       DType compute_dtype);
void linear_4bit_gated(ExecContext& ctx, const RmsNormInput& in, const Linear4Ref& gate, const Linear4Ref& up,
                       Activation a, DType compute_dtype, const Tensor& out);
// x [M, C] = rms_norm(h + r) with h_out = h + r: the unfused form of the two calls above.
Tensor rms_norm_input(ExecContext& ctx, const RmsNormInput& in);
// Whether the calls above can compute the norm inside the launch for M rows of C on ctx's
// device (otherwise they form x first, with a copy of h: callers then use add_rms_norm_).
bool rms_norm_input_fuses(const ExecContext& ctx, int64_t M, int64_t C);
void rms_norm(ExecContext& ctx, const Tensor& x, const Tensor& w, float eps, bool add_unit_offset,
              const Tensor& out);
void layer_norm(ExecContext& ctx, const Tensor& x, const Tensor& w, const Tensor& b, float eps, const Tensor& out);
// h += r, then out = rms_norm(h): the residual add fused into the next norm (one pass over h
// on CUDA), the same f32 arithmetic as add_ followed by rms_norm. h, r, out contiguous [M, C].
void add_rms_norm_(ExecContext& ctx, const Tensor& h, const Tensor& r, const Tensor& w, float eps,
                   bool add_unit_offset, const Tensor& out);
void activate_(ExecContext& ctx, const Tensor& x, Activation a);
// gate, up: [M, F] views (rows may be strided: the two halves of a fused gate_up output).
void gated_activation(ExecContext& ctx, const Tensor& gate, const Tensor& up, Activation a, const Tensor& out);
// x [T, H, D] (token stride may exceed H * D: q/k columns of a fused qkv output).
void apply_rope_(ExecContext& ctx, const Tensor& x, const Tensor& cos, const Tensor& sin, int64_t rot_dim);
// k, v: [S, Hkv, D] views of a KV cache (f32; CUDA also f16/bf16), q [T, Hq, D] (token stride
// may be larger), out [T, Hq, Dv] contiguous. lse (optional, f32 [T, Hq] contiguous): each query
// row's log-sum-exp of its logits, for the training backward (attention_backward); written only
// where the kernel taken computes it (CUDA's tensor-core prefill), and the return value says
// whether it was.
bool attention(ExecContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v,
               const AttentionOptions& opts, const Tensor& out, const Tensor& lse = Tensor());

// a += b (same shape, contiguous f32).
void add_(ExecContext& ctx, const Tensor& a, const Tensor& b);
// x = softcap * tanh(x / softcap) (contiguous f32).
void softcap_(ExecContext& ctx, const Tensor& x, float cap);
// out[r, :] = table[ids[r] + offset, :] * scale (f32 [R, C]); ids: i64 [R] on ctx's device, each
// in range (the caller checks on the host, where the ids come from).
void embedding(ExecContext& ctx, const Tensor& table, const Tensor& ids, int64_t offset, float scale,
               const Tensor& out);
// dst = src converted to dst's dtype (f32/f16/bf16 → f32/f16/bf16), rounding as store_from_f32;
// both 2-D [rows, cols] views with unit column stride (head splits, KV-cache writes, the batch
// concat, weights converted while loading).
void copy_(ExecContext& ctx, const Tensor& src, const Tensor& dst);
// x converted to dt as Tensor::to does it, bit for bit; a 2-D host tensor of f32/f16/bf16 into
// one of those goes through copy_ (threads, SIMD), anything else through Tensor::to.
Tensor to_dtype(const Tensor& x, DType dt);
// One sequence's rope and KV-cache write in one op (one launch on CUDA): q [T, Hq, D] and
// k [T, Hkv, D] rotated in place on [0, rot_dim) (cos/sin [T, rot_dim / 2]; undefined: no
// rotation), then k and v (rows [T, Hkv * D]) stored to kc / vc [capacity, Hkv * D] at rows
// row0 + t (row0 an i64 [1] tensor on the context's device, read at run time) or p0 + t when
// row0 is undefined. The same values as apply_rope_ on q and k and two copies.
// kv_table (i64 [2, T] on the context's device) makes it T sequences of one row each: row t
// goes to the caches at the addresses kv_table[0][t] / kv_table[1][t] (shaped as kc / vc) at
// row row0[t] (row0 i64 [T]).
void rope_kv_write_(ExecContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cos,
                    const Tensor& sin, int64_t rot_dim, const Tensor& kc, const Tensor& vc,
                    const Tensor& row0, int64_t p0, const Tensor& kv_table = Tensor());
// dst[*row0 + r, :] = src[r, :], row0 an i64 [1] tensor on the context's device read at run time
// (the KV-cache write of a replayed decode step).
void copy_at_(ExecContext& ctx, const Tensor& src, const Tensor& dst, const Tensor& row0);
// out[r] = first index of the maximum of x[r, :] (torch.argmax); x f32 [R, V], out i64 [R].
void argmax_rows(ExecContext& ctx, const Tensor& x, const Tensor& out);

// log(sum(exp(row))) of one logits row, in double with the max subtracted first — the
// normalizer behind perplexity, KL and log-probabilities (host data, no dispatch).
double log_sum_exp(const float* row, int64_t n);

}  // namespace nibble::ops
