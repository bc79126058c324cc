// `nibble quantize MODEL [OUT] [quant flags]`: without OUT, quantizes a checkpoint's Linear
// weights and prints what was done per tensor (error, sizes) and in total; with OUT, loads the
// model quantized and save_pretrained()s it there (what transformers + bitsandbytes write).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "nibble/error.h"
#include "nibble/model.h"
#include "nibble/quantize.h"
#include "nibble/thread_pool.h"

namespace nibble::cli {

void add_quantize_command(CLI::App& app, QuantizeArgs& a) {
  CLI::App* cmd = app.add_subcommand("quantize", "quantize a checkpoint's Linear weights (bitsandbytes layout)");
  cmd->add_option("MODEL", a.model, "model folder (config.json + safetensors)")->required();
  cmd->add_option("OUT", a.out, "output folder for the quantized checkpoint (optional)");
  add_quant_flags(*cmd, a.q);
  cmd->add_flag("--json", a.json, "machine-readable summary");
}

namespace {

std::string human(double bytes) {
  const char* u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int i = 0;
  while (bytes >= 1024 && i < 4) bytes /= 1024, ++i;
  char b[32];
  std::snprintf(b, sizeof b, i ? "%.2f %s" : "%.0f %s", bytes, u[i]);
  return b;
}

}  // namespace

int run_quantize(const QuantizeArgs& a) {
  BitsAndBytesConfig qc = a.q.to_config();
  if (!qc.is_quantizable()) throw ConfigError("quantize: give --load-in-4bit or --load-in-8bit");
  if (!a.out.empty()) {
    // save_pretrained of the quantized model: the folder transformers + bitsandbytes would write
    auto t0 = std::chrono::steady_clock::now();
    LoadOptions lo{.quantization_config = qc};
    apply_placement_flags(lo, a.q);
    CausalLM model = AutoModelForCausalLM::from_pretrained(a.model, lo);
    model.save_pretrained(a.out);
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    int64_t q = 0, all = 0;
    for (const auto& m : model.modules()) {
      all += m.klass.starts_with("Linear");
      q += m.klass == "Linear4bit" || m.klass == "Linear8bitLt";
    }
    if (a.json) {
      nlohmann::ordered_json j{{"model", a.model}, {"out", a.out}, {"quantization_method", qc.quantization_method().value_or("none")},
                               {"quantized_linear_layers", q}, {"linear_layers", all},
                               {"footprint_bytes", model.get_memory_footprint()}, {"seconds", secs}};
      std::printf("%s\n", j.dump(2).c_str());
    } else {
      std::printf("quantized %lld of %lld linear layers (%s); footprint %s; saved to %s in %.2f s\n",
                  static_cast<long long>(q), static_cast<long long>(all), qc.quantization_method().value_or("none").c_str(),
                  human(double(model.get_memory_footprint())).c_str(), a.out.c_str(), secs);
    }
    return 0;
  }
  Checkpoint ck = Checkpoint::open(a.model);
  CheckpointQuantization r = quantize_checkpoint(ck, qc);

  int64_t qbytes = 0, qstate = 0;
  for (const auto& t : r.tensors)
    if (t.format != "kept") qbytes += t.bytes_after, qstate += t.state_bytes;
  double bits = r.params_quantized ? 8.0 * double(qbytes + qstate) / double(r.params_quantized) : 0;
  std::string method = qc.quantization_method().value_or("none");
  if (a.json) {
    nlohmann::ordered_json j;
    j["model"] = a.model;
    j["quantization_method"] = method;
    j["double_quant"] = qc.bnb_4bit_use_double_quant;
    j["threads"] = num_threads();
    j["seconds"] = r.seconds;
    j["params_total"] = r.params_total;
    j["params_quantized"] = r.params_quantized;
    j["bytes_before"] = r.bytes_before;
    j["bytes_after"] = r.bytes_after;
    j["bits_per_quantized_param"] = bits;
    nlohmann::ordered_json ts = nlohmann::ordered_json::array();
    for (const auto& t : r.tensors) {
      nlohmann::ordered_json e;
      e["name"] = t.name;
      e["shape"] = t.shape;
      e["dtype"] = dtype_name(t.dtype);
      e["format"] = t.format;
      if (!t.skip_reason.empty()) e["skip_reason"] = t.skip_reason;
      e["bytes_before"] = t.bytes_before;
      e["bytes_after"] = t.bytes_after;
      e["state_bytes"] = t.state_bytes;
      if (t.format != "kept") e["rel_error"] = t.rel_error, e["max_abs_error"] = t.max_abs_error;
      ts.push_back(e);
    }
    j["tensors"] = ts;
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  std::printf("%-44s %-14s %-5s %10s %10s %9s\n", "tensor", "shape", "fmt", "before", "after", "rel.err");
  for (const auto& t : r.tensors) {
    if (t.shape.size() != 2) continue;
    std::string shape = std::to_string(t.shape[0]) + "x" + std::to_string(t.shape[1]);
    std::string fmt = t.format == "kept" ? "-" : t.format;
    std::string err = t.format == "kept" ? t.skip_reason : std::to_string(t.rel_error).substr(0, 7);
    std::printf("%-44s %-14s %-5s %10s %10s  %s\n", t.name.c_str(), shape.c_str(), fmt.c_str(),
                human(double(t.bytes_before)).c_str(), human(double(t.bytes_after + t.state_bytes)).c_str(),
                err.c_str());
  }
  std::printf("\nquantization: %s%s, blocksize 64 | %lld of %lld parameters quantized\n", method.c_str(),
              qc.bnb_4bit_use_double_quant && qc.load_in_4bit ? " + double quant" : "",
              static_cast<long long>(r.params_quantized), static_cast<long long>(r.params_total));
  std::printf("size: %s -> %s (%.2fx smaller) | quantized layers: %.3f bits/param incl. state\n",
              human(double(r.bytes_before)).c_str(), human(double(r.bytes_after)).c_str(),
              double(r.bytes_before) / double(std::max<int64_t>(r.bytes_after, 1)), bits);
  std::printf("time: %.2f ms on %d thread(s)\n", r.seconds * 1e3, num_threads());
  return 0;
}

}  // namespace nibble::cli
