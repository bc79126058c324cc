// CPU backend of the non-matmul forward ops: norms, activations, rotary embedding and causal
// attention, on contiguous f32 host buffers. Row-wise ops thread over rows; attention threads
// over (head, query row) pairs with the rows of one head kept together so that head's K/V
// stay in cache. Math is as transformers does it in f32 (see nn_ops.h for the definitions);
// attention's dot products, exponentials and weighted sums have AVX2 versions, and at the
// AVX-512 level attention runs in tiles of up to kAttnTileRows rows of a head (a row's result
// independent of the tile it is in).
#pragma once

#include <cstdint>

#include "nibble/dtype.h"

namespace nibble::cpu {

// out[M, C]; w, b: [C] of wdt / bdt (b may be nullptr for layer_norm).
void rms_norm(const float* x, int64_t M, int64_t C, const void* w, DType wdt, float eps, bool add_unit_offset,
              float* out);
void layer_norm(const float* x, int64_t M, int64_t C, const void* w, DType wdt, const void* b, DType bdt,
                float eps, float* out);

enum class Act { SiLU, GeluErf, GeluTanh, ReLU };
void activate(float* x, int64_t n, Act a);
void gated_activation(const float* gate, const float* up, int64_t n, Act a, float* out);

// x [T, H, D] in place, rotate_half on dims [0, rot_dim); cos/sin [T, rot_dim / 2].
void apply_rope(float* x, int64_t T, int64_t H, int64_t D, const float* cos, const float* sin,
                int64_t rot_dim);

struct AttentionShape {
  int64_t T = 0, S = 0;     // query rows, keys
  int64_t Hq = 0, Hkv = 0;  // heads; Hq % Hkv == 0
  int64_t D = 0, Dv = 0;    // head dims of q/k and of v
  float scale = 1.0f;
  int64_t q_offset = 0;
  int64_t window = 0;            // > 0: sliding window; 0: none
  float softcap = 0.0f;          // > 0: cap * tanh(s / cap)
  const float* alibi = nullptr;  // [Hq] slopes or nullptr
};
// q [T, Hq, D], k [S, Hkv, D], v [S, Hkv, Dv] -> out [T, Hq, Dv].
void attention(const float* q, const float* k, const float* v, const AttentionShape& a, float* out);

// dst[r * ldd + c] = src[r * lds + c] converted between f32, f16 and bf16 with
// store_from_f32's rounding (bits equal to load_as_f32 then store_from_f32), r < rows,
// c < cols; large copies are split over the thread pool by rows.
void convert_rows(const void* src, DType sdt, int64_t lds, int64_t rows, int64_t cols, void* dst, DType ddt,
                  int64_t ldd);

namespace avx512 {
// n values of src (f32/f16/bf16) into dst (f32/f16/bf16), contiguous.
void convert_span(const void* src, DType sdt, void* dst, DType ddt, int64_t n);
// Attention tiles of R <= kAttnTileRows query rows (attention_avx512.cpp). Scores:
// sc[r * ldsc + j] = q[r * ldq + 0:D] . k[j * ldk + 0:D] for j < n (a row's values whatever R).
void qk_tile(const float* q, int64_t ldq, int R, int64_t D, const float* k, int64_t ldk, int64_t n, float* sc,
             int64_t ldsc);
// acc[r * lda + 0:Dv] = sum_j p[r * ldp + j] * v[j * ldv + 0:Dv] for j < n, in order.
void pv_tile(const float* p, int64_t ldp, int R, const float* v, int64_t ldv, int64_t Dv, int64_t n,
             float* acc, int64_t lda);
}  // namespace avx512
inline constexpr int kAttnTileRows = 8;

namespace avx2 {
// s[j] = q . k[j * ldk + 0:D] for j < n.
void qk_dots(const float* q, const float* k, int64_t ldk, int64_t D, int64_t n, float* s);
// s[j] *= scale for j < n; returns their maximum (NaN-free scores: as std::max over j).
float scale_max(float* s, int64_t n, float scale);
// s[j] = exp(s[j] - mx) for j < n; returns the sum.
float exp_sum(float* s, int64_t n, float mx);
// acc[0:Dv] = sum_j p[j] * v[j * ldv + 0:Dv].
void pv_sum(const float* p, const float* v, int64_t ldv, int64_t Dv, int64_t n, float* acc);
}  // namespace avx2

}  // namespace nibble::cpu
