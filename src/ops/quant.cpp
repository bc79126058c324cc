// Quantization ops: input checks, then the single (device, dtype) dispatch point of each op
// to the CPU or CUDA backend. Double quantization composes the 4-bit kernel with the 8-bit
// blockwise one exactly as bitsandbytes' quantize_4bit(compress_statistics=True) does.
#include <cstring>

#include "backends/cpu/quant_cpu.h"
#include "nibble/error.h"
#include "nibble/quant.h"
#include "quant/reference.h"
#ifdef NIBBLE_WITH_CUDA
#include "backends/cuda/quant_cuda.h"
#endif

namespace nibble {

using detail::str;

namespace {

[[noreturn]] void unsupported(const char* op, const Tensor& t) {
  throw UnsupportedError(str(op, ": no kernel for (", t.device().str(), ", ", dtype_name(t.dtype()), ")"));
}

void check_float_input(const char* op, const Tensor& x) {
  if (!x.defined()) throw ShapeError(str(op, ": undefined input"));
  if (x.dtype() != DType::F32 && x.dtype() != DType::F16 && x.dtype() != DType::BF16)
    throw ShapeError(str(op, ": input must be float32, float16 or bfloat16, got ", dtype_name(x.dtype())));
}

bool on_cuda(const Tensor& t) {
#ifdef NIBBLE_WITH_CUDA
  return t.device().is_cuda();
#else
  if (t.device().is_cuda()) unsupported("quantization", t);
  return false;
#endif
}

}  // namespace

Quantized4 quantize_4bit(const Tensor& x_in, DType quant_type, int64_t blocksize, bool double_quant) {
  check_float_input("quantize_4bit", x_in);
  if (quant_type != DType::NF4 && quant_type != DType::FP4)
    throw ConfigError(str("quantize_4bit: quant_type must be nf4 or fp4, got ", dtype_name(quant_type)));
  if (!valid_blocksize_4bit(blocksize))
    throw ConfigError(str("quantize_4bit: blocksize ", blocksize, " is not a power of two in 32..4096"));
  Tensor x = x_in.contiguous();
  const int64_t n = x.numel();
  const int64_t nb = (n + blocksize - 1) / blocksize;
  const Device dev = x.device();

  Quantized4 r;
  r.packed = Tensor::empty({(n + 1) / 2, 1}, DType::U8, dev);
  Tensor absmax = Tensor::empty({nb}, DType::F32, dev);
  QuantState4& st = r.state;
  st.quant_type = quant_type;
  st.blocksize = blocksize;
  st.dtype = x.dtype();
  st.shape = x.shape();
  st.nested = double_quant;

  if (!on_cuda(x)) {
    cpu::quantize_4bit(x.data_ptr(), x.dtype(), n, blocksize, quant_type, r.packed.data<uint8_t>(),
                       absmax.data<float>());
    if (double_quant) {
      st.absmax = Tensor::empty({nb}, DType::U8);
      st.nested_absmax = Tensor::empty({(nb + 255) / 256}, DType::F32);
      st.offset = cpu::double_quantize_absmax(absmax.data<float>(), nb, st.absmax.data<uint8_t>(),
                                              st.nested_absmax.data<float>());
    } else {
      st.absmax = absmax;
    }
    return r;
  }
#ifdef NIBBLE_WITH_CUDA
  cuda::quantize_4bit(x.data_ptr(), x.dtype(), n, blocksize, quant_type, r.packed.data<uint8_t>(),
                      absmax.data<float>());
  if (double_quant) {
    st.absmax = Tensor::empty({nb}, DType::U8, dev);
    st.nested_absmax = Tensor::empty({(nb + 255) / 256}, DType::F32, dev);
    st.offset = cuda::double_quantize_absmax(absmax.data<float>(), nb, st.absmax.data<uint8_t>(),
                                             st.nested_absmax.data<float>());
  } else {
    st.absmax = absmax;
  }
#endif
  return r;
}

Tensor dequantize_absmax(const QuantState4& st) {
  if (!st.nested) return st.absmax;
  const int64_t nb = st.n_blocks();
  Tensor out = Tensor::empty({nb}, DType::F32, st.absmax.device());
  if (!on_cuda(st.absmax)) {
    Tensor q = st.absmax.contiguous(), a2 = st.nested_absmax.contiguous();
    cpu::dequantize_nested_absmax(q.data<uint8_t>(), a2.data<float>(), st.offset, nb, out.data<float>());
    return out;
  }
#ifdef NIBBLE_WITH_CUDA
  cuda::dequantize_nested_absmax(st.absmax.data<uint8_t>(), st.nested_absmax.data<float>(), st.offset, nb,
                                 out.data<float>());
#endif
  return out;
}

Tensor dequantize_4bit(const Tensor& packed_in, const QuantState4& st) {
  const int64_t n = st.numel();
  if (packed_in.dtype() != DType::U8 || packed_in.numel() != (n + 1) / 2)
    throw ShapeError(str("dequantize_4bit: packed tensor ", packed_in.str(), " does not hold ", n, " 4-bit values"));
  if (st.absmax.device() != packed_in.device())
    throw ShapeError("dequantize_4bit: packed data and absmax are on different devices");
  Tensor packed = packed_in.contiguous();
  Tensor absmax = dequantize_absmax(st).contiguous();
  Tensor out = Tensor::empty(st.shape, st.dtype, packed.device());
  if (!on_cuda(packed)) {
    cpu::dequantize_4bit(packed.data<uint8_t>(), absmax.data<float>(), n, st.blocksize, st.quant_type,
                         out.data_ptr(), st.dtype);
    return out;
  }
#ifdef NIBBLE_WITH_CUDA
  cuda::dequantize_4bit(packed.data<uint8_t>(), absmax.data<float>(), n, st.blocksize, st.quant_type,
                        out.data_ptr(), st.dtype);
#endif
  return out;
}

QuantizedBlockwise8 quantize_blockwise8(const Tensor& x_in, int64_t blocksize) {
  check_float_input("quantize_blockwise8", x_in);
  if (blocksize <= 0) throw ConfigError(str("quantize_blockwise8: blocksize must be positive, got ", blocksize));
  Tensor x = x_in.contiguous();
  const int64_t n = x.numel(), nb = (n + blocksize - 1) / blocksize;
  QuantizedBlockwise8 r;
  r.blocksize = blocksize;
  r.dtype = x.dtype();
  r.packed = Tensor::empty(x.shape(), DType::U8, x.device());
  r.absmax = Tensor::empty({nb}, DType::F32, x.device());
  if (!on_cuda(x)) {
    cpu::quantize_blockwise8(x.data_ptr(), x.dtype(), n, blocksize, dynamic_map_signed().data(),
                             r.packed.data<uint8_t>(), r.absmax.data<float>());
    return r;
  }
#ifdef NIBBLE_WITH_CUDA
  cuda::quantize_blockwise8(x.data_ptr(), x.dtype(), n, blocksize, cuda::device_dynamic_map(),
                            r.packed.data<uint8_t>(), r.absmax.data<float>());
#endif
  return r;
}

Tensor dequantize_blockwise8(const QuantizedBlockwise8& q) {
  Tensor packed = q.packed.contiguous(), absmax = q.absmax.contiguous();
  const int64_t n = packed.numel();
  if (absmax.numel() != (n + q.blocksize - 1) / q.blocksize)
    throw ShapeError(str("dequantize_blockwise8: absmax ", absmax.str(), " does not fit ", n, " values"));
  Tensor out = Tensor::empty(packed.shape(), q.dtype, packed.device());
  if (!on_cuda(packed)) {
    cpu::dequantize_blockwise8(packed.data<uint8_t>(), absmax.data<float>(), dynamic_map_signed().data(), n,
                               q.blocksize, out.data_ptr(), q.dtype);
    return out;
  }
#ifdef NIBBLE_WITH_CUDA
  cuda::dequantize_blockwise8(packed.data<uint8_t>(), absmax.data<float>(), cuda::device_dynamic_map(), n,
                              q.blocksize, out.data_ptr(), q.dtype);
#endif
  return out;
}

Int8Rowwise int8_vectorwise_quant(const Tensor& a_in, float threshold) {
  if (a_in.dtype() != DType::F16) throw ShapeError(str("int8_vectorwise_quant: input must be float16, got ", a_in.str()));
  if (a_in.dim() < 1) throw ShapeError("int8_vectorwise_quant: input must have at least one dimension");
  if (threshold < 0.0f) throw ConfigError("int8_vectorwise_quant: threshold must be non-negative");
  if (!a_in.device().is_cpu()) unsupported("int8_vectorwise_quant", a_in);
  Tensor a = a_in.contiguous();
  int64_t cols = a.size(-1), rows = cols ? a.numel() / cols : 0;
  Int8Rowwise r;
  r.CA = Tensor::empty(a.shape(), DType::I8);
  r.SCA = Tensor::empty({rows}, DType::F32);
  std::vector<int64_t> outl;
  cpu::int8_vectorwise_quant(a.data<uint16_t>(), rows, cols, threshold, r.CA.data<int8_t>(), r.SCA.data<float>(),
                             &outl);
  if (threshold > 0.0f) r.outlier_cols = Tensor::from_vector<int64_t>({int64_t(outl.size())}, DType::I64, outl);
  return r;
}

Tensor int8_vectorwise_dequant(const Tensor& cb_in, const Tensor& scb_in) {
  if (cb_in.dtype() != DType::I8 || cb_in.dim() != 2 || scb_in.dtype() != DType::F32 ||
      scb_in.numel() != cb_in.size(0))
    throw ShapeError(str("int8_vectorwise_dequant: expected i8 [rows, cols] and f32 [rows], got ", cb_in.str(),
                         " and ", scb_in.str()));
  if (!cb_in.device().is_cpu()) unsupported("int8_vectorwise_dequant", cb_in);
  Tensor cb = cb_in.contiguous(), scb = scb_in.contiguous();
  int64_t rows = cb.size(0), cols = cb.size(1);
  Tensor out = Tensor::empty({rows, cols}, DType::F32);
  const int8_t* c = cb.data<int8_t>();
  const float* s = scb.data<float>();
  float* o = out.data<float>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < cols; ++k) o[r * cols + k] = float(c[r * cols + k]) * s[r] / 127.0f;
  return out;
}

}  // namespace nibble
