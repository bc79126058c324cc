// The scalar reference quantizers (see reference.h for the formats and why each float
// operation is written the way it is).
#include "quant/reference.h"

#include <cmath>
#include <limits>

#include "nibble/error.h"
#include "nibble/quant.h"
#include "quant/gpu_float.h"
#include "quant/torch_mean.h"

namespace nibble::quant::ref {

uint8_t quantize_nf4(float x) {
  uint8_t c = 0;
  for (float b : kNf4Boundaries) c += x > b;
  return c;
}

uint8_t quantize_fp4(float x) {
  uint8_t sign = x < 0.0f ? 0b1000 : 0;
  float a = std::fabs(x);
  int bin = 0;
  for (float b : kFp4Boundaries) bin += a > b;
  return uint8_t(sign | kFp4BinCode[bin]);
}

uint8_t quantize_dynamic(const float* code, float x) {
  // Binary search over indices 0..255 starting at 127 with steps 64..1, remembering the
  // nearest entries seen below and above; then pick by midpoint. Mirrors bitsandbytes'
  // kernel so that ties and out-of-range values land on the same code. Written with
  // selects rather than branches: the comparisons are data-dependent and mispredict.
  int pivot = 127, upper_pivot = 255, lower_pivot = 0;
  float lower = -1.0f, upper = 1.0f;
  float val = code[pivot];
  for (int step = 64; step > 0; step >>= 1) {
    bool gt = x > val;
    lower_pivot = gt ? pivot : lower_pivot;
    lower = gt ? val : lower;
    upper_pivot = gt ? upper_pivot : pivot;
    upper = gt ? upper : val;
    pivot += gt ? step : -step;
    val = code[pivot];
  }
  if (upper_pivot == 255) upper = code[upper_pivot];
  if (lower_pivot == 0) lower = code[lower_pivot];
  if (x > val) {
    float mid = (upper + val) * 0.5f;
    return uint8_t(x > mid ? upper_pivot : pivot);
  }
  float mid = (lower + val) * 0.5f;
  return uint8_t(x < mid ? lower_pivot : pivot);
}

namespace {

// Block absmax as the kernel computes it: fmaxf over |x| starting from -FLT_MAX (fmaxf skips
// NaN, so a block of NaNs keeps -FLT_MAX). A partial last block also sees the zeros the kernel
// loads as padding.
float block_absmax(const void* x, DType dt, int64_t begin, int64_t end, int64_t blocksize) {
  float m = end - begin < blocksize ? 0.0f : -std::numeric_limits<float>::max();
  for (int64_t i = begin; i < end; ++i) m = std::fmax(m, std::fabs(ftz(load_as_f32(x, dt, i))));
  return m;
}

}  // namespace

void quantize_4bit(const void* x, DType dt, int64_t n, int64_t blocksize, DType quant_type, uint8_t* packed,
                   float* absmax) {
  NIBBLE_CHECK(quant_type == DType::NF4 || quant_type == DType::FP4);
  auto quant = quant_type == DType::NF4 ? quantize_nf4 : quantize_fp4;
  int64_t nb = (n + blocksize - 1) / blocksize;
  for (int64_t b = 0; b < nb; ++b) {
    int64_t begin = b * blocksize, end = std::min(n, begin + blocksize);
    float m = block_absmax(x, dt, begin, end, blocksize);
    absmax[b] = m;
    float inv = rcp_approx(m);  // inf for an all-zero block: 0 * inf = NaN -> code 0, as the kernel
    for (int64_t i = begin; i < end; ++i) {
      uint8_t c = quant(mul_ftz(load_as_f32(x, dt, i), inv));
      if (i % 2 == 0) packed[i / 2] = uint8_t(c << 4);
      else packed[i / 2] |= c;
    }
  }
}

void dequantize_4bit(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize, DType quant_type,
                     void* out, DType out_dt) {
  const float* code = dequant_table_4bit(quant_type);
  for (int64_t i = 0; i < n; ++i) {
    uint8_t byte = packed[i / 2];
    uint8_t c = i % 2 == 0 ? byte >> 4 : byte & 0x0f;
    store_from_f32(out, out_dt, i, mul_ftz(code[c], absmax[i / blocksize]));
  }
}

void quantize_blockwise8(const void* x, DType dt, int64_t n, int64_t blocksize, const float* code, uint8_t* q,
                         float* absmax) {
  int64_t nb = (n + blocksize - 1) / blocksize;
  for (int64_t b = 0; b < nb; ++b) {
    int64_t begin = b * blocksize, end = std::min(n, begin + blocksize);
    float m = block_absmax(x, dt, begin, end, blocksize);
    absmax[b] = m;
    float inv = rcp_approx(m);
    for (int64_t i = begin; i < end; ++i) q[i] = quantize_dynamic(code, mul_ftz(load_as_f32(x, dt, i), inv));
  }
}

void dequantize_blockwise8(const uint8_t* q, const float* absmax, const float* code, int64_t n, int64_t blocksize,
                           void* out, DType out_dt) {
  for (int64_t i = 0; i < n; ++i) store_from_f32(out, out_dt, i, mul_ftz(code[q[i]], absmax[i / blocksize]));
}

NestedAbsmax double_quantize_absmax(const float* absmax, int64_t nb) {
  NestedAbsmax r;
  r.offset = torch_cuda_mean_f32(absmax, nb);
  std::vector<float> centered(static_cast<size_t>(nb));
  for (int64_t i = 0; i < nb; ++i) centered[size_t(i)] = absmax[i] - r.offset;
  r.q.resize(size_t(nb));
  r.absmax2.resize(size_t((nb + 255) / 256));
  quantize_blockwise8(centered.data(), DType::F32, nb, 256, dynamic_map_signed().data(), r.q.data(),
                      r.absmax2.data());
  return r;
}

void dequantize_nested_absmax(const uint8_t* q, const float* absmax2, float offset, int64_t nb, float* absmax) {
  const float* code = dynamic_map_signed().data();
  for (int64_t i = 0; i < nb; ++i) {
    float v = mul_ftz(code[q[i]], absmax2[i / 256]);  // bitsandbytes' kernel
    absmax[i] = v + offset;                           // torch's add (no flush)
  }
}

void int8_vectorwise_quant(const uint16_t* a, int64_t rows, int64_t cols, float threshold, int8_t* ca, float* sca,
                           std::vector<int64_t>* outlier_cols) {
  const bool sparse = threshold > 0.0f;
  std::vector<uint8_t> is_outlier_col(size_t(cols), 0);
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* row = a + r * cols;
    // Row absmax over the values below the threshold (all values without one). Taken in f16
    // in the kernel; the max of f16 values is exact, so f32 gives the same number.
    float m = 0.0f;
    for (int64_t c = 0; c < cols; ++c) {
      float v = std::fabs(f16_to_f32(row[c]));
      if (sparse && v >= threshold) {
        is_outlier_col[size_t(c)] = 1;
        continue;
      }
      m = std::fmax(m, v);
    }
    sca[r] = m;
    // The kernel scales with __fdividef(127, absmax): 127 times the approximate reciprocal.
    float scale = mul_ftz(127.0f, rcp_approx(m));
    for (int64_t c = 0; c < cols; ++c) {
      float v = f16_to_f32(row[c]);
      int8_t out = 0;
      if (!(sparse && std::fabs(v) >= threshold)) {
        float s = mul_ftz(v, scale);
        out = std::isnan(s) ? 0 : int8_t(std::nearbyint(s));  // round half to even, as __float2int_rn
      }
      ca[r * cols + c] = out;
    }
  }
  if (sparse) {
    if (outlier_cols) outlier_cols->clear();
    for (int64_t c = 0; c < cols; ++c) {
      if (!is_outlier_col[size_t(c)]) continue;
      if (outlier_cols) outlier_cols->push_back(c);
      if (rows > 1)
        for (int64_t r = 0; r < rows; ++r) ca[r * cols + c] = 0;
    }
  }
}

}  // namespace nibble::quant::ref
