// AMX GEMMs for 8 or more rows of x (prefill, a server's decode batch): out[M, rows of W] =
// x · W^T, bf16 (TDPBF16PS) where x and W both hold bf16 values (bf16 compute dtype: x rounded
// by the caller, W stored in bf16 or dequantized to it), and LLM.int8's int8 products
// (TDPBSSD, exact). Products of two bf16 values are exact in f32 and TDPBF16PS sums them in
// f32, so only the summation order differs from the fp32 kernels; like vdpbf16ps it reads bf16
// subnormals as zero, so x with one is refused by the caller and a W chunk with one makes
// gemm_rows return false (the caller computes those rows another way).
//
// The orientation is C^T = W · X^T: W's rows are the A operand as they come out of the
// dequantizer (row-major, no repacking), x is the B operand, packed once per call in groups of
// 4 bytes along K ([m / 16][K / per][16], the layout the tile multiplies read), and each
// 16 x 16 C^T tile is transposed into out at the end of a panel. Any permutation of K shared
// by W and x gives the same dot products: the 4-bit dequantizer's pack order (of each 64
// values, the even ones then the odd ones) lets it decode 32 weights per permute. Blocking, per
// thread and panel of kNp W rows: K in chunks of kKc (the W chunk, kNp x kKc bf16 = 256 KB,
// stays in L2), C^T for the panel in a thread-local [kNp][M] buffer (loaded and stored as tiles
// once per chunk); tiles 0-3 accumulate: 2 x 2 blocks of 16 x 16 (W rows x x rows) for pairs of
// 16-row blocks of x, 4 x 1 for a last single block (64 W rows, 5 tile loads for 4 multiplies).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "backends/cpu/amx_tiles.h"
#include "backends/cpu/linear_cpu.h"

#define NIBBLE_AMX __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

namespace nibble::cpu::amx {

namespace {

// Measured on the 2-core Xeon (AMX in a VM): 0.42-0.56 TFLOP/s a core over panels of 64-256
// rows and chunks of 512-8192, the best at 64 x 2048 (256 KB of W). The loop is bound by tile
// loads there (~18 ns for 1 KB from L1, against ~7 ns for a TDPBF16PS), which 2 x 2 blocking
// (one load per multiply, the most 8 tiles allow) leaves at about 2.5 loads' time per step.
constexpr int64_t kNp = 64;    // W rows per panel (a multiple of 32)
constexpr int64_t kKc = 2048;  // K values per W chunk (a multiple of 32)
constexpr int64_t kPad = 32;   // bf16 values past each W chunk row (spreads the rows over L1 sets)

int64_t round_up(int64_t v, int64_t to) {
  return (v + to - 1) / to * to;
}

// r[i] (16 lanes of 32 bits each) becomes column i of the 16 x 16 block.
NIBBLE_AMX inline void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 16; i += 8)
    for (int j = 0; j < 4; ++j) {
      t[i + j] = _mm512_shuffle_i32x4(r[i + j], r[i + j + 4], 0x88);
      t[i + j + 4] = _mm512_shuffle_i32x4(r[i + j], r[i + j + 4], 0xdd);
    }
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0x88);
    r[j + 8] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0xdd);
  }
}

// Whether one of the n bf16 values at p (n a multiple of 32) is a subnormal.
NIBBLE_AMX bool any_bf16_subnormal(const uint16_t* p, int64_t n) {
  __mmask32 any = 0;
  const __m512i exp = _mm512_set1_epi16(0x7f80), man = _mm512_set1_epi16(0x007f);
  for (int64_t i = 0; i < n; i += 32) {
    const __m512i v = _mm512_loadu_si512(p + i);
    any |= _mm512_testn_epi16_mask(v, exp) & _mm512_test_epi16_mask(v, man);
  }
  return any != 0;
}

// out[m * ldo + r] = ct[r * ldc + m] for r < nr, m < M (16 x 16 blocks through registers).
template <class Acc>  // f32 or int32: 32-bit lanes either way
NIBBLE_AMX void store_transposed(const Acc* ct, int64_t ldc, int64_t nr, int64_t M, Acc* out, int64_t ldo) {
  for (int64_t r0 = 0; r0 < nr; r0 += 16) {
    const int64_t rn = std::min<int64_t>(16, nr - r0);
    const __mmask16 rmask = rn == 16 ? __mmask16(0xffff) : __mmask16((1u << rn) - 1);
    for (int64_t m0 = 0; m0 < M; m0 += 16) {
      __m512i v[16];
      for (int i = 0; i < 16; ++i)  // rows past nr are read from the zeroed tail of ct
        v[i] = _mm512_loadu_si512(ct + (r0 + i) * ldc + m0);
      transpose16(v);
      const int64_t mn = std::min<int64_t>(16, M - m0);
      for (int64_t i = 0; i < mn; ++i) _mm512_mask_storeu_epi32(out + (m0 + i) * ldo + r0, rmask, v[i]);
    }
  }
}

}  // namespace

bool usable(int64_t K) {
  return K > 0 && K % 32 == 0;
}

size_t packed_x_words(int64_t M, int64_t K) {
  return size_t(round_up(M, 16) * (K / 2));
}

namespace {

// The 16-row blocks [b0, b1) of a row-major source as the tiles' B operand: 16 words (64 bytes)
// of each row at a time, transposed so a word of the 16 rows is contiguous ([b][words][16]);
// rows past M are zero. load(m, w0): the 16 words of row m from word w0.
template <class Load>
NIBBLE_AMX void pack_blocks(const Load& load, int64_t M, int64_t words, int64_t b0, int64_t b1,
                            uint32_t* out) {
  for (int64_t b = b0; b < b1; ++b) {
    uint32_t* dst = out + b * words * 16;
    for (int64_t w0 = 0; w0 < words; w0 += 16) {
      __m512i v[16];
      for (int i = 0; i < 16; ++i) {
        const int64_t m = b * 16 + i;
        v[i] = m < M ? load(m, w0) : _mm512_setzero_si512();
      }
      transpose16(v);  // v[j] = word w0 + j of the 16 rows
      for (int j = 0; j < 16; ++j) _mm512_storeu_si512(dst + (w0 + j) * 16, v[j]);
    }
  }
}

// Word w of row m: bf16 values 2w and 2w + 1 of x (held in f32: the conversion is exact), or in
// pack order (of each 64 values, the 32 even ones, then the 32 odd ones) the values there.
struct Bf16Words {
  const float* x;
  int64_t K;
  bool pack_order;
  NIBBLE_AMX __m512i operator()(int64_t m, int64_t w0) const {
    const int64_t k = 2 * w0;
    __m512 lo, hi;  // the 32 values at positions k .. k + 31
    if (pack_order) {
      const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
      const __m512i sel = k % 64 == 0 ? even : _mm512_add_epi32(even, _mm512_set1_epi32(1));
      const float* c = x + m * K + k / 64 * 64;
      lo = _mm512_permutex2var_ps(_mm512_loadu_ps(c), sel, _mm512_loadu_ps(c + 16));
      hi = _mm512_permutex2var_ps(_mm512_loadu_ps(c + 32), sel, _mm512_loadu_ps(c + 48));
    } else {
      lo = _mm512_loadu_ps(x + m * K + k);
      hi = _mm512_loadu_ps(x + m * K + k + 16);
    }
    return reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo));
  }
};

// Word w of row m: int8 values 4w .. 4w + 3 of a.
struct Int8Words {
  const int8_t* a;
  int64_t K;
  NIBBLE_AMX __m512i operator()(int64_t m, int64_t w0) const {
    return _mm512_loadu_si512(a + m * K + 4 * w0);
  }
};

}  // namespace

void pack_x(const float* x, int64_t M, int64_t K, int64_t b0, int64_t b1, uint32_t* xp, bool pack_order) {
  pack_blocks(Bf16Words{x, K, pack_order}, M, K / 2, b0, b1, xp);
}

namespace {

// C tile += A tile . B tile: TDPBF16PS for bf16 values, TDPBSSD for int8. (A macro: GCC's
// tile intrinsics paste their arguments into register names, so they must be literals.)
#define NIBBLE_TILE_DOT(C, A, B)  \
  do {                            \
    if constexpr (sizeof(T) == 2) \
      _tile_dpbf16ps(C, A, B);    \
    else                          \
      _tile_dpbssd(C, A, B);      \
  } while (0)

// The accumulator tiles 0-3 from c[0..3] (rows ldc bytes apart), or zeroed (the first chunk).
template <class Acc>
NIBBLE_AMX inline void load_acc(bool zero, Acc* const c[4], int64_t ldc) {
  if (zero) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  } else {
    _tile_loadd(0, c[0], ldc);
    _tile_loadd(1, c[1], ldc);
    _tile_loadd(2, c[2], ldc);
    _tile_loadd(3, c[3], ldc);
  }
}

template <class Acc>
NIBBLE_AMX inline void store_acc(Acc* const c[4], int64_t ldc) {
  _tile_stored(0, c[0], ldc);
  _tile_stored(1, c[1], ldc);
  _tile_stored(2, c[2], ldc);
  _tile_stored(3, c[3], ldc);
}

// The kernel for both element types: T = uint16_t (bf16 values, TDPBF16PS into f32) or int8_t
// (TDPBSSD into int32). A tile step covers 64 bytes of K (32 bf16 or 64 int8 values); xp holds
// x in groups of 4 / sizeof(T) values a 32-bit word ([m / 16][K / per][16]).
template <class T, class Acc, class Chunk>
NIBBLE_AMX bool gemm_rows_t(const uint32_t* xp, int64_t M, int64_t K, const Chunk& w, int64_t r0, int64_t nr,
                            Acc* out, int64_t ldo, bool check_subnormals = false) {
  constexpr int64_t per = 4 / int64_t(sizeof(T)), step = 16 * per;  // values a word, a tile row
  const int64_t Mp = round_up(M, 16), words = K / per, ldc = Mp * 4;
  static thread_local std::vector<T> wbuf;    // [kNp][kKc + kPad] a W chunk
  static thread_local std::vector<Acc> cbuf;  // [kNp][Mp] C^T of the panel
  wbuf.resize(size_t(kNp * (kKc + kPad)));
  cbuf.resize(size_t(kNp * Mp));
  load_tile_config(tiles_16x64(8));
  bool ok = true;
  for (int64_t p0 = 0; p0 < nr && ok; p0 += kNp) {
    const int64_t np = std::min(kNp, nr - p0), npp = round_up(np, 64);  // rows past np are zero
    for (int64_t k0 = 0; k0 < K && ok; k0 += kKc) {
      const int64_t kc = std::min(kKc, K - k0), ldw = kc + kPad, lda = ldw * int64_t(sizeof(T));
      w(r0 + p0, np, k0, kc, wbuf.data(), ldw);
      for (int64_t r = np; r < npp; ++r) std::memset(wbuf.data() + r * ldw, 0, size_t(kc) * sizeof(T));
      if constexpr (sizeof(T) == 2)
        if (check_subnormals)
          for (int64_t r = 0; r < np && ok; ++r) ok = !any_bf16_subnormal(wbuf.data() + r * ldw, kc);
      if (!ok) break;
      int64_t m = 0;
      for (; m + 32 <= Mp; m += 32) {  // 2 x 2 tiles: W rows n .. n + 31, x rows m .. m + 31
        const uint32_t* b0 = xp + ((m / 16) * words + k0 / per) * 16;  // x rows m .. m + 15
        const uint32_t* b1 = b0 + words * 16;                          // x rows m + 16 .. m + 31
        for (int64_t n = 0; n < npp; n += 32) {
          Acc* c0 = cbuf.data() + n * Mp + m;  // C^T rows n .. n + 15
          Acc* c1 = c0 + 16 * Mp;              // C^T rows n + 16 .. n + 31
          Acc* const c[4] = {c0, c0 + 16, c1, c1 + 16};
          load_acc(k0 == 0, c, ldc);
          const T* a0 = wbuf.data() + n * ldw;
          const T* a1 = a0 + 16 * ldw;
          for (int64_t k = 0; k < kc; k += step) {
            _tile_loadd(4, a0 + k, lda);
            _tile_loadd(5, a1 + k, lda);
            _tile_loadd(6, b0 + k / per * 16, 64);
            _tile_loadd(7, b1 + k / per * 16, 64);
            NIBBLE_TILE_DOT(0, 4, 6);
            NIBBLE_TILE_DOT(1, 4, 7);
            NIBBLE_TILE_DOT(2, 5, 6);
            NIBBLE_TILE_DOT(3, 5, 7);
          }
          store_acc(c, ldc);
        }
      }
      if (m < Mp) {  // one block of 16 x rows left (a decode batch of up to 16): 4 x 1 tiles over
                     // 64 W rows, 5 tile loads a step for 4 multiplies
        const uint32_t* b0 = xp + ((m / 16) * words + k0 / per) * 16;
        for (int64_t n = 0; n < npp; n += 64) {
          Acc* const c0 = cbuf.data() + n * Mp + m;  // C^T rows n + 16 j, j < 4
          Acc* const c[4] = {c0, c0 + 16 * Mp, c0 + 32 * Mp, c0 + 48 * Mp};
          load_acc(k0 == 0, c, ldc);
          const T* a = wbuf.data() + n * ldw;  // W rows n .. n + 63
          for (int64_t k = 0; k < kc; k += step) {
            _tile_loadd(7, b0 + k / per * 16, 64);
            _tile_loadd(4, a + k, lda);
            NIBBLE_TILE_DOT(0, 4, 7);
            _tile_loadd(5, a + 16 * ldw + k, lda);
            NIBBLE_TILE_DOT(1, 5, 7);
            _tile_loadd(6, a + 32 * ldw + k, lda);
            NIBBLE_TILE_DOT(2, 6, 7);
            _tile_loadd(4, a + 48 * ldw + k, lda);
            NIBBLE_TILE_DOT(3, 4, 7);
          }
          store_acc(c, ldc);
        }
      }
    }
    if (ok) store_transposed(cbuf.data(), Mp, np, M, out + p0, ldo);
  }
  _tile_release();
  return ok;
}

}  // namespace

// (In pack order or not: W and x share the order, the sums are the same.)
bool gemm_rows(const uint32_t* xp, int64_t M, int64_t K, const WChunkFn& w, int64_t r0, int64_t nr,
               float* out, int64_t ldo, bool w_may_be_subnormal) {
  return gemm_rows_t<uint16_t>(xp, M, K, w, r0, nr, out, ldo, w_may_be_subnormal);
}

bool usable_i8(int64_t K) {
  return K > 0 && K % 64 == 0;
}

size_t packed_i8_words(int64_t M, int64_t K) {
  return size_t(round_up(M, 16) * (K / 4));
}

void pack_i8(const int8_t* a, int64_t M, int64_t K, int64_t b0, int64_t b1, uint32_t* ap) {
  pack_blocks(Int8Words{a, K}, M, K / 4, b0, b1, ap);
}

void gemm_i8_rows(const uint32_t* ap, int64_t M, int64_t K, const int8_t* w, int64_t nr, int32_t* out,
                  int64_t ldo) {
  const auto rows = [&](int64_t r0, int64_t n, int64_t k0, int64_t kc, int8_t* dst, int64_t ld) {
    for (int64_t r = 0; r < n; ++r) std::memcpy(dst + r * ld, w + (r0 + r) * K + k0, size_t(kc));
  };
  gemm_rows_t<int8_t>(ap, M, K, rows, 0, nr, out, ldo);
}

}  // namespace nibble::cpu::amx
