// `nibble inspect MODEL [quant flags] [--json]`: the model's module tree (class, dtype, shape,
// bytes) and its footprint, loaded as `from_pretrained` loads it (quantized on load with quant
// flags). `--tensors` lists the checkpoint's raw tensors instead; `--config-only CONFIG.json`
// computes the footprint from a config without weights. With --device-map / --max-memory it prints
// the placement transformers + accelerate would compute (hf_device_map), from the config alone:
// `nibble inspect MODEL --device-map auto --max-memory cuda:0=20GiB,cpu=64GiB --json`.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "nibble/device_map.h"
#include "nibble/error.h"
#include "nibble/model.h"
#include "nibble/safetensors.h"
#include "nibble/verify.h"

namespace nibble::cli {

void add_inspect_command(CLI::App& app, InspectArgs& a) {
  CLI::App* cmd = app.add_subcommand(
      "inspect", "a model's modules with class, dtype, shape and bytes, and its footprint");
  cmd->add_option("MODEL", a.model, "model folder (or .safetensors file with --tensors)");
  add_quant_flags(*cmd, a.q);
  cmd->add_flag("--tensors", a.tensors, "list the checkpoint's tensors (name, dtype, shape, bytes) instead");
  cmd->add_option("--config-only", a.config_only,
                  "footprint of the model a config.json describes, without weights");
  cmd->add_option("--dtype", a.dtype, "with --device-map: dtype of the unquantized parameters (float32 | bfloat16 | "
                  "float16; default: the config's)");
  cmd->add_flag("--json", a.json, "machine-readable output");
  for (const char* flag : {"--device-map", "--max-memory"})
    cmd->get_option(flag)->each([&a](const std::string&) { a.placement = true; });
}

namespace {

nlohmann::ordered_json footprint_json(const FootprintReport& f) {
  return {{"footprint_bytes", f.footprint_bytes}, {"footprint_16bit_bytes", f.footprint_16bit_bytes},
          {"ratio_vs_16bit", f.ratio_vs_16bit},   {"true_bytes", f.true_bytes},
          {"params_total", f.params_total},       {"params_quantized", f.params_quantized},
          {"bits_per_param", f.bits_per_param}};
}

void print_footprint(const FootprintReport& f) {
  std::printf("footprint %lld B (16-bit %lld B, ratio %.9f); with quantization state %lld B\n",
              static_cast<long long>(f.footprint_bytes), static_cast<long long>(f.footprint_16bit_bytes),
              f.ratio_vs_16bit, static_cast<long long>(f.true_bytes));
  std::printf("parameters %lld, quantized %lld", static_cast<long long>(f.params_total),
              static_cast<long long>(f.params_quantized));
  if (f.params_quantized) std::printf(" at %.4f bits/param", f.bits_per_param);
  std::printf("\n");
}

// The hf_device_map of the model (GPUs as integers, as transformers prints it).
int inspect_placement(const InspectArgs& a, const BitsAndBytesConfig& qc) {
  const std::filesystem::path cfg =
      a.config_only.empty() ? std::filesystem::path(a.model) / "config.json" : std::filesystem::path(a.config_only);
  ModelConfig c = ModelConfig::from_file(cfg);
  LoadOptions lo;
  apply_placement_flags(lo, a.q);
  PlacementRequest r{lo.device_map, lo.device_map_modules, lo.max_memory, std::nullopt, c.torch_dtype.value_or(DType::F32)};
  if (qc.is_quantizable()) r.quantization_config = qc;
  if (!a.dtype.empty()) {
    const std::map<std::string, DType> names{{"float32", DType::F32}, {"bfloat16", DType::BF16}, {"float16", DType::F16}};
    auto it = names.find(a.dtype);
    if (it == names.end()) throw ConfigError("inspect: --dtype '" + a.dtype + "' (float32, bfloat16 or float16)");
    r.dtype = it->second;
  }
  HfDeviceMap m = infer_device_map(c, r);
  if (!a.json) {
    for (const auto& [module, device] : m) std::printf("%-40s %s\n", module.empty() ? "(whole model)" : module.c_str(), device.c_str());
    return 0;
  }
  nlohmann::ordered_json map = nlohmann::ordered_json::object(), budgets = nlohmann::ordered_json::object();
  for (const auto& [module, device] : m) {
    if (device.starts_with("cuda:")) map[module] = std::stoi(device.substr(5));
    else map[module] = device;
  }
  if (r.max_memory) {  // GPUs by index, then the CPU, as accelerate orders them
    std::vector<std::pair<std::string, int64_t>> b(r.max_memory->begin(), r.max_memory->end());
    auto rank = [](const std::string& d) { return d == "cpu" ? 1 << 30 : std::stoi(d.substr(5)); };
    std::sort(b.begin(), b.end(), [&](const auto& x, const auto& y) { return rank(x.first) < rank(y.first); });
    for (const auto& [device, bytes] : b) budgets[device] = bytes;
  }
  nlohmann::ordered_json j{{"architecture", c.architecture},
                           {"device_map", r.explicit_map.empty() ? r.device_map : "explicit"},
                           {"max_memory", budgets},
                           {"dtype", traits(r.dtype).torch},
                           {"quantization_method", r.quantization_config ? "bitsandbytes" : "none"},
                           {"hf_device_map", map}};
  std::printf("%s\n", j.dump(2).c_str());
  return 0;
}

int inspect_tensors(const InspectArgs& a) {
  Checkpoint ck = Checkpoint::open(a.model);
  int64_t total = 0, params = 0;
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  for (const auto& name : ck.names()) {
    const TensorInfo& ti = ck.info(name);
    int64_t n = shape_numel(ti.shape), bytes = int64_t(ti.end - ti.begin);
    total += bytes;
    params += n;
    if (a.json) {
      list.push_back(
          {{"name", name}, {"dtype", dtype_name(ti.dtype)}, {"shape", ti.shape}, {"bytes", bytes}});
    } else {
      std::printf("%-52s %-5s %-16s %12lld\n", name.c_str(), dtype_name(ti.dtype),
                  shape_str(ti.shape).c_str(), static_cast<long long>(bytes));
    }
  }
  if (a.json) {
    nlohmann::ordered_json j{{"tensors", list}, {"elements", params}, {"bytes", total}};
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("%zu tensors, %lld elements, %lld bytes\n", ck.names().size(), static_cast<long long>(params),
                static_cast<long long>(total));
  }
  return 0;
}

}  // namespace

int run_inspect(const InspectArgs& a) {
  BitsAndBytesConfig qc = a.q.to_config();
  if (a.placement) {
    if (a.model.empty() && a.config_only.empty()) throw ConfigError("inspect: give MODEL (or --config-only CONFIG.json)");
    return inspect_placement(a, qc);
  }
  if (!a.config_only.empty()) {
    ModelConfig c = ModelConfig::from_file(a.config_only);
    FootprintReport f = footprint_from_config(c, qc.is_quantizable() ? std::optional(qc) : std::nullopt);
    if (a.json)
      std::printf("%s\n", footprint_json(f).dump(2).c_str());
    else
      print_footprint(f);
    return 0;
  }
  if (a.model.empty()) throw ConfigError("inspect: give MODEL (or --config-only CONFIG.json)");
  if (a.tensors) return inspect_tensors(a);

  LoadOptions lo;
  if (qc.is_quantizable()) lo.quantization_config = qc;
  apply_placement_flags(lo, a.q);
  CausalLM model = AutoModelForCausalLM::from_pretrained(a.model, lo);
  std::vector<ModuleReport> mods = module_report(model);
  FootprintReport f = footprint_report(model);
  if (a.json) {
    nlohmann::ordered_json list = nlohmann::ordered_json::array();
    for (const auto& m : mods)
      list.push_back({{"name", m.name},
                      {"class", m.klass},
                      {"dtype", m.dtype},
                      {"shape", m.shape},
                      {"params", m.params},
                      {"bytes", m.bytes},
                      {"state_bytes", m.state_bytes}});
    nlohmann::ordered_json j{
        {"architecture", model.config().architecture},
        {"quantization_method", model.quantization_config()
                                    ? model.quantization_config()->quantization_method().value_or("none")
                                    : "none"},
        {"modules", list}};
    nlohmann::ordered_json fj = footprint_json(f);
    for (auto it = fj.begin(); it != fj.end(); ++it) j[it.key()] = it.value();
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  // The tree: each container once, indented by depth, then its leaves.
  std::printf("%s\n", model.config().architecture.c_str());
  std::set<std::string> shown;
  for (const auto& m : mods) {
    size_t depth = 0, pos = 0;
    while ((pos = m.name.find('.', pos)) != std::string::npos) {
      std::string parent = m.name.substr(0, pos);
      if (shown.insert(parent).second)
        std::printf("%*s%s\n", int(2 * depth + 2), "", parent.substr(parent.rfind('.') + 1).c_str());
      ++depth, ++pos;
    }
    std::string leaf = m.name.substr(m.name.rfind('.') + 1);
    std::string shape;
    for (size_t i = 0; i < m.shape.size(); ++i) shape += (i ? "x" : "") + std::to_string(m.shape[i]);
    std::printf("%*s%-*s %-16s %-8s %-12s %10lld B\n", int(2 * depth + 2), "",
                int(std::max<size_t>(1, 30 - 2 * depth)), leaf.c_str(), m.klass.c_str(), m.dtype.c_str(),
                shape.c_str(), static_cast<long long>(m.bytes));
  }
  print_footprint(f);
  return 0;
}

}  // namespace nibble::cli
