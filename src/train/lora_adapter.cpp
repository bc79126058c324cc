// LoraAdapter: init as peft's LoraLayer.reset_lora_parameters, and the adapter folder peft
// reads and writes (adapter_config.json + adapter_model.safetensors).
#include <algorithm>
#include <cmath>
#include <random>

#include "io/atomic_dir.h"
#include "nibble/error.h"
#include "nibble/lora.h"
#include "nibble/safetensors.h"

namespace nibble {

namespace {

constexpr const char* kPrefix = "base_model.model.";

// The documented generator: std::mt19937_64 (fully specified by the standard, so the same on
// every platform), u = (bits >> 11) * 2^-53 in [0, 1), normals by Box-Muller. Not torch's RNG.
class InitRng {
 public:
  explicit InitRng(uint64_t seed) : g_(seed) {}
  double uniform() { return double(g_() >> 11) * 0x1p-53; }
  double normal() {
    const double u1 = 1.0 - uniform(), u2 = uniform();  // u1 in (0, 1]
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
  }

 private:
  std::mt19937_64 g_;
};

// torch.nn.init.kaiming_uniform_(w, a=sqrt(5)) on [rows, fan_in]: gain sqrt(2 / (1 + 5)),
// bound = sqrt(3) * gain / sqrt(fan_in) = 1 / sqrt(fan_in).
Tensor kaiming_uniform(int64_t rows, int64_t fan_in, InitRng& rng) {
  Tensor t = Tensor::empty({rows, fan_in}, DType::F32);
  const double bound = 1.0 / std::sqrt(double(fan_in));
  float* p = t.data<float>();
  for (int64_t i = 0; i < rows * fan_in; ++i) p[i] = float((2.0 * rng.uniform() - 1.0) * bound);
  return t;
}

}  // namespace

LoraAdapter LoraAdapter::init(const LoraConfig& cfg, const std::vector<LinearSite>& sites, uint64_t seed) {
  LoraAdapter a;
  a.config = cfg;
  const auto names = lora_target_names(cfg, sites);
  InitRng rng(seed);
  for (const auto& s : sites) {
    if (std::find(names.begin(), names.end(), s.name) == names.end()) continue;
    LoraPair p;
    if (cfg.init_lora_weights == "gaussian") {
      p.A = Tensor::empty({cfg.r, s.in}, DType::F32);
      float* A = p.A.data<float>();
      for (int64_t i = 0; i < cfg.r * s.in; ++i) A[i] = float(rng.normal() / double(cfg.r));
    } else {
      p.A = kaiming_uniform(cfg.r, s.in, rng);
    }
    // false: peft keeps nn.Linear's own init for B too (kaiming_uniform_(a=sqrt(5)), fan_in = r).
    p.B = cfg.init_lora_weights == "false" ? kaiming_uniform(s.out, cfg.r, rng)
                                           : Tensor::zeros({s.out, cfg.r}, DType::F32);
    a.modules.emplace(s.name, std::move(p));
  }
  return a;
}

// The folder is replaced as a whole (io::AtomicDir): never new weights beside an old config.
void LoraAdapter::save(const std::filesystem::path& dir) const {
  io::AtomicDir out(dir, [](const std::string& n) {
    return n == "adapter_model.safetensors" || n == "adapter_config.json";
  });
  write_files(out.path());
  out.commit();
}

void LoraAdapter::write_files(const std::filesystem::path& dir) const {
  std::map<std::string, Tensor> t;
  for (const auto& [name, p] : modules) {
    t[kPrefix + name + ".lora_A.weight"] = p.A;
    t[kPrefix + name + ".lora_B.weight"] = p.B;
  }
  save_safetensors(dir / "adapter_model.safetensors", t);
  config.save(dir);
}

LoraAdapter LoraAdapter::load(const std::filesystem::path& dir, const std::vector<LinearSite>& sites) {
  LoraAdapter a;
  a.config = LoraConfig::load(dir);
  const auto path = dir / "adapter_model.safetensors";
  SafetensorsFile f = SafetensorsFile::open(path);
  std::map<std::string, const LinearSite*> by_name;
  for (const auto& s : sites) by_name[s.name] = &s;
  const std::string prefix = kPrefix;
  for (const auto& tn : f.names()) {
    auto bad = [&](const std::string& why) {
      return FormatError(path.string() + ": tensor " + tn + ": " + why);
    };
    if (tn.rfind(prefix, 0) != 0) throw bad("name does not start with '" + prefix + "'");
    const std::string rest = tn.substr(prefix.size());
    const bool is_a = rest.ends_with(".lora_A.weight"), is_b = rest.ends_with(".lora_B.weight");
    if (!is_a && !is_b)
      throw UnsupportedError(path.string() + ": tensor " + tn + " is not a lora_A/lora_B weight");
    const std::string mod = rest.substr(0, rest.size() - std::string(".lora_A.weight").size());
    auto it = by_name.find(mod);
    if (it == by_name.end()) throw bad("module " + mod + " is not a Linear of the base model");
    Tensor t = f.get(tn);
    // Trainable, so an owned f32 copy (not a view of the mapped file).
    t = t.dtype() == DType::F32 ? t.clone() : t.to(DType::F32);
    const Shape want = is_a ? Shape{a.config.r, it->second->in} : Shape{it->second->out, a.config.r};
    if (t.shape() != want)
      throw ShapeError(path.string() + ": tensor " + tn + " has shape " + shape_str(t.shape()) +
                       ", the base model needs " + shape_str(want) + " (an adapter for another base model?)");
    LoraPair& p = a.modules[mod];
    (is_a ? p.A : p.B) = t;
  }
  for (const auto& [mod, p] : a.modules)
    if (!p.A.defined() || !p.B.defined())
      throw FormatError(path.string() + ": module " + mod + " has lora_" + (p.A.defined() ? "A" : "B") +
                        " but not lora_" + (p.A.defined() ? "B" : "A"));
  if (a.modules.empty()) throw FormatError(path.string() + ": no LoRA tensors");
  return a;
}

}  // namespace nibble
