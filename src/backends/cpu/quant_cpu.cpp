// CPU quantization: parallel over blocks (4-bit, 8-bit) or rows (int8). Full 4-bit blocks go
// through the AVX2 kernels when the CPU has them; partial blocks and other CPUs use the
// scalar reference on the same block range, so every path yields the reference's bytes.
#include "backends/cpu/quant_cpu.h"

#include "backends/cpu/isa.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include "nibble/quant.h"
#include "nibble/thread_pool.h"
#include "quant/gpu_float.h"
#include "quant/reference.h"
#include "quant/torch_mean.h"

namespace nibble::cpu {

namespace ref = nibble::quant::ref;

bool has_avx2() {
  return isa_at_least(Isa::Avx2);
}

namespace {

// Offsets a typed pointer by i elements of dt.
const void* at(const void* p, DType dt, int64_t i) {
  return static_cast<const char*>(p) + i * dtype_bits(dt) / 8;
}
void* at(void* p, DType dt, int64_t i) {
  return static_cast<char*>(p) + i * dtype_bits(dt) / 8;
}

// Blocks per task so that each task touches roughly 64K values.
int64_t grain_blocks(int64_t blocksize) {
  return std::max<int64_t>(1, 65536 / blocksize);
}

}  // namespace

void quantize_4bit(const void* x, DType dt, int64_t n, int64_t blocksize, DType quant_type, uint8_t* packed,
                   float* absmax) {
  int64_t nb = (n + blocksize - 1) / blocksize;
  const bool simd = has_avx2(), wide = isa_at_least(Isa::Avx512);
  parallel_for(nb, grain_blocks(blocksize), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      int64_t begin = b * blocksize, count = std::min(blocksize, n - begin);
      if (wide && count == blocksize && blocksize % 16 == 0) {
        avx512::quantize_4bit_block(x, dt, begin, count, quant_type, packed, absmax + b);
      } else if (simd && count == blocksize) {
        avx2::quantize_4bit_block(x, dt, begin, count, quant_type, packed, absmax + b);
      } else {
        // the reference on this block alone: element 0 of the block is even, so bytes align
        ref::quantize_4bit(at(x, dt, begin), dt, count, blocksize, quant_type, packed + begin / 2,
                           absmax + b);
      }
    }
  });
}

void dequantize_4bit(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize,
                     DType quant_type, void* out, DType out_dt) {
  int64_t nb = (n + blocksize - 1) / blocksize;
  const bool simd = has_avx2();
  parallel_for(nb, grain_blocks(blocksize), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      int64_t begin = b * blocksize, count = std::min(blocksize, n - begin);
      int64_t fast = simd ? count / 8 * 8 : 0;
      if (fast) avx2::dequantize_4bit_run(packed, absmax[b], begin, fast, quant_type, out, out_dt);
      if (fast < count)
        ref::dequantize_4bit(packed + (begin + fast) / 2, absmax + b, count - fast, blocksize, quant_type,
                             at(out, out_dt, begin + fast), out_dt);
    }
  });
}

void quantize_blockwise8(const void* x, DType dt, int64_t n, int64_t blocksize, const float* code, uint8_t* q,
                         float* absmax) {
  int64_t nb = (n + blocksize - 1) / blocksize;
  const bool simd = has_avx2();
  parallel_for(nb, grain_blocks(blocksize), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      int64_t begin = b * blocksize, count = std::min(blocksize, n - begin);
      int64_t fast = simd && count == blocksize ? count / 8 * 8 : 0;
      if (fast == 0) {
        ref::quantize_blockwise8(at(x, dt, begin), dt, count, blocksize, code, q + begin, absmax + b);
        continue;
      }
      // the block absmax exactly as the reference takes it (a full block: no padding zeros)
      float m = -3.402823466e38f;
      for (int64_t i = begin; i < begin + count; ++i)
        m = std::fmax(m, std::fabs(quant::ftz(load_as_f32(x, dt, i))));
      absmax[b] = m;
      avx2::quantize_blockwise8_run(x, dt, begin, fast, code, quant::rcp_approx(m), q);
      if (fast < count) {
        float inv = quant::rcp_approx(m);
        for (int64_t i = begin + fast; i < begin + count; ++i)
          q[i] = ref::quantize_dynamic(code, quant::mul_ftz(load_as_f32(x, dt, i), inv));
      }
    }
  });
}

void dequantize_blockwise8(const uint8_t* q, const float* absmax, const float* code, int64_t n,
                           int64_t blocksize, void* out, DType out_dt) {
  int64_t nb = (n + blocksize - 1) / blocksize;
  parallel_for(nb, grain_blocks(blocksize), [&](int64_t b0, int64_t b1) {
    int64_t begin = b0 * blocksize, end = std::min(n, b1 * blocksize);
    ref::dequantize_blockwise8(q + begin, absmax + b0, code, end - begin, blocksize, at(out, out_dt, begin),
                               out_dt);
  });
}

float double_quantize_absmax(const float* absmax, int64_t nb, uint8_t* q, float* absmax2) {
  float offset = quant::torch_cuda_mean_f32(absmax, nb);
  std::vector<float> centered(static_cast<size_t>(nb));  // [nb]
  for (int64_t i = 0; i < nb; ++i) centered[size_t(i)] = absmax[i] - offset;
  quantize_blockwise8(centered.data(), DType::F32, nb, 256, dynamic_map_signed().data(), q, absmax2);
  return offset;
}

void dequantize_nested_absmax(const uint8_t* q, const float* absmax2, float offset, int64_t nb,
                              float* absmax) {
  parallel_for(nb, 65536, [&](int64_t b0, int64_t b1) {
    // chunks start at multiples of 256 only by accident; the reference indexes absmax2 by
    // absolute position, so hand it the whole arrays and a sub-range through offsets
    for (int64_t i = b0; i < b1; ++i)
      quant::ref::dequantize_nested_absmax(q + i, absmax2 + i / 256, offset, 1, absmax + i);
  });
}

void int8_vectorwise_quant(const uint16_t* a, int64_t rows, int64_t cols, float threshold, int8_t* ca,
                           float* sca, std::vector<int64_t>* outlier_cols) {
  if (isa_at_least(Isa::Avx512)) {
    // Rows in parallel, each chunk marking its outlier columns in its own flags; then the
    // columns (sorted) and, with several rows, zeroed in every row as the reference does.
    std::vector<uint8_t> flags(size_t(cols), 0);  // [cols] 1: some row has |value| >= threshold
    std::mutex mu;
    parallel_for(rows, std::max<int64_t>(1, 65536 / std::max<int64_t>(cols, 1)), [&](int64_t r0, int64_t r1) {
      std::vector<uint8_t> local(size_t(threshold > 0.0f ? cols : 0), 0);
      avx512::int8_quant_rows(a + r0 * cols, r1 - r0, cols, threshold, ca + r0 * cols, sca + r0, local.data());
      if (local.empty()) return;
      std::lock_guard<std::mutex> lk(mu);
      for (int64_t c = 0; c < cols; ++c) flags[size_t(c)] |= local[size_t(c)];
    });
    if (threshold > 0.0f) {
      if (outlier_cols) outlier_cols->clear();
      for (int64_t c = 0; c < cols; ++c) {
        if (!flags[size_t(c)]) continue;
        if (outlier_cols) outlier_cols->push_back(c);
        if (rows > 1)
          for (int64_t r = 0; r < rows; ++r) ca[r * cols + c] = 0;
      }
    }
    return;
  }
  if (threshold > 0.0f) {
    // Outlier columns couple rows (a column is zeroed everywhere), so this stays one pass.
    ref::int8_vectorwise_quant(a, rows, cols, threshold, ca, sca, outlier_cols);
    return;
  }
  parallel_for(rows, std::max<int64_t>(1, 65536 / std::max<int64_t>(cols, 1)), [&](int64_t r0, int64_t r1) {
    ref::int8_vectorwise_quant(a + r0 * cols, r1 - r0, cols, 0.0f, ca + r0 * cols, sca + r0, nullptr);
  });
}

}  // namespace nibble::cpu
