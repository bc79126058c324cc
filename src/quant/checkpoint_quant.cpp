// quantize_checkpoint: streams a checkpoint's tensors through the quantization ops into the
// bitsandbytes state-dict layout (see include/nibble/quantize.h).
#include <chrono>
#include <cmath>
#include <cstring>

#include "nibble/error.h"
#include "nibble/quant.h"
#include "nibble/quantize.h"

namespace nibble {

using detail::str;

namespace {

bool contains_module(const std::string& name, const std::string& key) {
  std::string module = name.ends_with(".weight") ? name.substr(0, name.size() - 7) : name;
  return module == key || module.find(key + ".") != std::string::npos;
}

bool is_embedding_name(const std::string& name) {
  for (const char* k : {"embed", "wte.", "wpe.", "word_embeddings", "embed_positions"})
    if (name.find(k) != std::string::npos) return true;
  return false;
}

struct Errors {
  double rel = 0, max_abs = 0;
};

Errors compare(const Tensor& original, const Tensor& restored) {
  Tensor a = original.to(Device::cpu()).contiguous(), b = restored.to(Device::cpu()).contiguous();
  double num = 0, den = 0, mx = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    double x = load_as_f32(a.data_ptr(), a.dtype(), i), y = load_as_f32(b.data_ptr(), b.dtype(), i);
    num += (x - y) * (x - y);
    den += x * x;
    mx = std::max(mx, std::fabs(x - y));
  }
  return {den > 0 ? std::sqrt(num / den) : std::sqrt(num), mx};
}

}  // namespace

LinearPredicate default_linear_predicate(const Checkpoint& ck, const BitsAndBytesConfig& qc) {
  // Tied aliases: __metadata__ entries mapping one tensor name onto another.
  std::vector<std::string> aliases;
  for (const auto& [k, v] : ck.metadata())
    if (k != "format") aliases.push_back(k), aliases.push_back(v);
  std::vector<std::string> skip = qc.llm_int8_skip_modules.value_or(std::vector<std::string>{"lm_head"});
  bool user_list = qc.llm_int8_skip_modules.has_value();
  return [aliases, skip, user_list](const std::string& name, const Shape& shape) -> std::string {
    if (shape.size() != 2 || !name.ends_with(".weight")) return "not a linear weight";
    if (is_embedding_name(name)) return "embedding";
    for (const auto& a : aliases)
      if (a == name) return "tied to another weight";
    for (const auto& k : skip)
      if (contains_module(name, k)) return user_list ? "user list (llm_int8_skip_modules)" : "output head";
    return "";
  };
}

CheckpointQuantization quantize_checkpoint(const Checkpoint& ck, const BitsAndBytesConfig& qc,
                                           const QuantizeOptions& opts) {
  qc.validate();
  if (!qc.is_quantizable()) throw ConfigError("quantize_checkpoint: neither load_in_4bit nor load_in_8bit is set");
  LinearPredicate keep_reason = opts.predicate ? opts.predicate : default_linear_predicate(ck, qc);
  DType qt = qc.bnb_4bit_quant_type == "nf4" ? DType::NF4 : DType::FP4;

  CheckpointQuantization r;
  double quant_seconds = 0;
  for (const std::string& name : ck.names()) {
    Tensor w = ck.get(name);
    TensorQuantReport rep{name, w.shape(), w.dtype(), "kept", "", int64_t(w.nbytes()), 0, 0, 0, 0};
    r.params_total += w.numel();
    std::string reason = keep_reason(name, w.shape());
    if (!reason.empty() || !is_float(w.dtype())) {
      if (w.shape().size() == 2) rep.skip_reason = reason;
      r.state_dict[name] = w;
      rep.bytes_after = rep.bytes_before;
      r.tensors.push_back(rep);
      continue;
    }
    std::string module = name.substr(0, name.size() - 7);  // drop ".weight"
    auto t0 = std::chrono::steady_clock::now();
    Tensor x = w.to(opts.device);
    Tensor restored;
    if (qc.load_in_4bit) {
      // transformers hands bitsandbytes the weight in its loaded dtype; f64 is not a bnb input
      if (x.dtype() != DType::F32 && x.dtype() != DType::F16 && x.dtype() != DType::BF16)
        x = w.to(DType::F32).to(opts.device);
      Quantized4 q = quantize_4bit(x, qt, 64, qc.bnb_4bit_use_double_quant);
      auto t1 = std::chrono::steady_clock::now();
      quant_seconds += std::chrono::duration<double>(t1 - t0).count();
      r.state_dict[name] = q.packed.to(Device::cpu());
      for (auto& [k, v] : quant_state_to_dict(q.state)) {
        r.state_dict[name + "." + k] = v;
        rep.state_bytes += int64_t(v.nbytes());
      }
      rep.format = qc.bnb_4bit_quant_type;
      rep.bytes_after = int64_t(q.packed.nbytes());
      if (opts.measure_error) restored = dequantize_4bit(q.packed, q.state);
    } else {
      // LLM.int8: the weight goes to fp16, then row-wise int8 with threshold 0.
      Tensor h = w.to(DType::F16);
      Int8Rowwise q = int8_vectorwise_quant(h, 0.0f);
      auto t1 = std::chrono::steady_clock::now();
      quant_seconds += std::chrono::duration<double>(t1 - t0).count();
      r.state_dict[name] = q.CA;
      r.state_dict[module + ".SCB"] = q.SCA;
      // transformers saves the layout tag too: a uint8 scalar, 0 = row-major ("row")
      r.state_dict[module + ".weight_format"] = Tensor::from_vector<uint8_t>({}, DType::U8, {0});
      rep.format = "int8";
      rep.bytes_after = int64_t(q.CA.nbytes());
      rep.state_bytes = int64_t(q.SCA.nbytes()) + 1;
      if (opts.measure_error) restored = int8_vectorwise_dequant(q.CA, q.SCA);
    }
    r.params_quantized += w.numel();
    if (restored.defined()) {
      Errors e = compare(w, restored);
      rep.rel_error = e.rel;
      rep.max_abs_error = e.max_abs;
    }
    r.tensors.push_back(rep);
  }
  for (const auto& t : r.tensors) {
    r.bytes_before += t.bytes_before;
    r.bytes_after += t.bytes_after + t.state_bytes;
  }
  r.seconds = quant_seconds;
  return r;
}

}  // namespace nibble
