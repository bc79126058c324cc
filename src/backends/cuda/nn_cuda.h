// CUDA backend of the non-matmul forward ops, declared without CUDA headers. Same semantics
// as the CPU backend (backends/cpu/nn_cpu.h; definitions in ops/nn_ops.h): f32 activations,
// math in f32 as transformers does it. All pointers are device pointers on l.device; nothing
// allocates or synchronises (see launch.h).
#pragma once

#include <cstdint>

#include "backends/cuda/launch.h"
#include "nibble/dtype.h"

namespace nibble::cuda {

// ---- row-wise -------------------------------------------------------------------------------
// out[M, C]; w, b: [C] of wdt / bdt (b may be nullptr for layer_norm). out may equal x.
void rms_norm(const Launch& l, const float* x, int64_t M, int64_t C, const void* w, DType wdt, float eps,
              bool add_unit_offset, float* out);
void layer_norm(const Launch& l, const float* x, int64_t M, int64_t C, const void* w, DType wdt,
                const void* b, DType bdt, float eps, float* out);
// h += r, then out = rms_norm(h) (h, r, out [M, C]; out must not alias h or r).
void add_rms_norm(const Launch& l, float* h, const float* r, int64_t M, int64_t C, const void* w, DType wdt,
                  float eps, bool add_unit_offset, float* out);

enum class Act { SiLU, GeluErf, GeluTanh, ReLU };  // the same order as cpu::Act
void activate(const Launch& l, float* x, int64_t n, Act a);
// out[r, f] = act(gate[r * ld_gate + f]) * up[r * ld_up + f] for r < rows, f < F; out [rows, F].
void gated_activation(const Launch& l, const float* gate, int64_t ld_gate, const float* up, int64_t ld_up,
                      int64_t rows, int64_t F, Act a, float* out);

// ---- elementwise / data movement ---------------------------------------------------------------
void add(const Launch& l, float* a, const float* b, int64_t n);  // a += b
void softcap(const Launch& l, float* x, int64_t n, float cap);   // x = tanh(x / cap) * cap
// out[r, c] = table[ids[r] + offset, c] (any float dtype) * scale, f32 [R, C]; ids on the device
// (already range-checked by the caller).
void embedding(const Launch& l, const void* table, DType dt, int64_t C, const int64_t* ids, int64_t R,
               int64_t offset, float scale, float* out);
// dst[r * ld_dst + c] = src[r * ld_src + c] converted from src_dt to dst_dt (each f32/f16/bf16;
// the f32-source form below), r < rows, c < cols.
void copy_rows(const Launch& l, const void* src, DType src_dt, int64_t ld_src, int64_t rows, int64_t cols,
               void* dst, DType dst_dt, int64_t ld_dst, const int64_t* dst_row0 = nullptr);
void copy_rows(const Launch& l, const float* src, int64_t ld_src, int64_t rows, int64_t cols, void* dst,
               DType dst_dt, int64_t ld_dst, const int64_t* dst_row0 = nullptr);

// ---- one decode step's rope + KV-cache write ----------------------------------------------------
// q [T, Hq, D] (token stride ldq) and k [T, Hkv, D] (ldk) rotated in place on dims [0, rot_dim)
// (rot_dim 0: no rotation), then k and v [T, Hkv, D] (ldv) stored to kc / vc rows row0 + t
// (row0 read on the device when row0_dev is set) in the cache dtype; ldc elements a cache row.
struct RopeKv {
  float* q;
  int64_t ldq;
  float* k;
  int64_t ldk;
  const float* v;
  int64_t ldv;
  int64_t T, Hq, Hkv, D, rot_dim;
  const float* cos;  // [T, rot_dim / 2]
  const float* sin;
  void* kc;
  void* vc;
  int64_t ldc;
  const int64_t* row0_dev;
  int64_t row0;
  // Or one sequence a row (a batched decode step): row t goes to the caches at addresses
  // table[t] (K) and table[T + t] (V), row row0_dev[t]; kc / vc unused.
  const int64_t* table = nullptr;
};
void rope_kv_write(const Launch& l, const RopeKv& a, DType cache_dt);

// ---- rotary embedding ------------------------------------------------------------------------
// x [T, H, D] (row stride ld_x elements between tokens) in place, rotate_half on dims
// [0, rot_dim); cos/sin [T, rot_dim / 2].
void apply_rope(const Launch& l, float* x, int64_t ld_x, int64_t T, int64_t H, int64_t D, const float* cos,
                const float* sin, int64_t rot_dim);

// ---- attention ---------------------------------------------------------------------------------
// Causal attention of T query rows over S cached keys (as cpu::attention): q [T, Hq, D] f32
// (token stride ldq), k [S, Hkv, D] and v [S, Hkv, Dv] in kv_dtype (f32/f16/bf16; token stride
// ldk / ldv elements), out [T, Hq, Dv] f32. Query i sits at position q_offset + i and sees keys
// j <= q_offset + i (and i + q_offset - j < window when window > 0); softcap > 0 caps the
// logits; alibi (device [Hq] or nullptr) adds slope * j. Decode (small T) splits S over blocks
// (flash decoding) so long contexts fill the GPU; the split's partials live in the workspace.
// Math in f32, except prefill (16 or more rows) over a 16-bit cache on tensor cores: q and the
// softmax weights are then rounded to the cache dtype before their products, as flash attention
// does in bf16/f16 (NIBBLE_ATTN_TC=0 keeps the f32 kernels).
struct Attention {
  int64_t T = 0, S = 0, Hq = 0, Hkv = 0, D = 0, Dv = 0;
  float scale = 1.0f;
  int64_t q_offset = 0, window = 0;
  float softcap = 0.0f;
  const float* alibi = nullptr;
  const float* q = nullptr;
  int64_t ldq = 0;
  const void* k = nullptr;
  const void* v = nullptr;
  DType kv_dtype = DType::F32;
  int64_t ldk = 0, ldv = 0;
  float* out = nullptr;
  // Decode with the position on the device (T == 1; a CUDA graph replays the same launch at
  // every step): q_offset = *pos and S = *pos + 1 are read at run time; S above is then the
  // cache capacity, which sizes the splits and the workspace.
  const int64_t* pos = nullptr;
  // A batched decode step: T sequences of one query row each, row t's K and V caches at the
  // addresses kv_table[t] and kv_table[T + t] (k and v above unused; each 16-byte aligned) and
  // its position pos[t]; S is then the largest cache capacity.
  const int64_t* kv_table = nullptr;
  // [T, Hq] f32 (row t, head h at t * Hq + h), or nullptr: each query row's log-sum-exp of its
  // logits, written by the tensor-core prefill kernel only (attention_prefill_tc_fits).
  float* lse = nullptr;
};
size_t attention_workspace_bytes(const Attention& a);
void attention(const Launch& l, const Attention& a);
// Whether attention(l, a) writes a.lse (a.lse set and the tensor-core prefill kernel taken).
bool attention_writes_lse(const Attention& a);

// ---- logits ------------------------------------------------------------------------------------
// out[r] = index of the first maximum of x[r, 0:V] (torch.argmax), r < rows.
void argmax_rows(const Launch& l, const float* x, int64_t rows, int64_t V, int64_t* out);
// out[r] = log(sum(exp(x[r, :]))) with the max subtracted first (double accumulation not
// required; f32 with a max-shift is enough for the GPU).
void log_sum_exp_rows(const Launch& l, const float* x, int64_t rows, int64_t V, float* out);

}  // namespace nibble::cuda
