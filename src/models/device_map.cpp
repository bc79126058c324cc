// Device placement (include/nibble/device_map.h). The model is a tree of transformers' module
// names with byte sizes, built from the config and the ArchSpec (no weights); on it run, step
// for step, transformers 5.17's get_max_memory / get_balanced_memory / infer_auto_device_map
// (src/transformers/integrations/accelerate.py, which use accelerate's get_max_layer_size and
// clean_device_map). Sizes and budgets are doubles because Python's are floats once a 4-bit
// weight counts 0.5 byte per element or a budget is scaled by 0.9; every operation keeps
// Python's order, so the comparisons come out the same.
#include "nibble/device_map.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>

#include "models/arch.h"
#include "nibble/error.h"
#include "nibble/model.h"
#include "nibble/tensor.h"
#ifdef NIBBLE_WITH_CUDA
#include "backends/cuda/runtime.h"
#endif

namespace nibble {

using detail::str;

namespace {

// One module: full name, bytes of every tensor under it (compute_module_sizes), children in
// named_children() order. Modules that split never hold tensors directly in these models.
struct Module {
  std::string name;
  double bytes = 0;
  bool no_split = false;  // a decoder layer (_no_split_modules)
  std::vector<Module> children;
};

struct Tree {
  Module root;
  std::vector<double> leaves;  // bytes of each module holding tensors directly
  std::vector<std::string> leaf_names;
  std::vector<std::string> tied;  // the tied group, sorted (lm_head.weight + the embedding's)
  std::set<std::string> names;    // every module name
  double max_layer = 0;           // the largest decoder layer (get_balanced_memory's buffer)
  bool has_layers = false;
};

void add_names(std::set<std::string>& names, const std::string& module) {
  for (size_t p = module.find('.'); p != std::string::npos; p = module.find('.', p + 1))
    names.insert(module.substr(0, p));
  names.insert(module);
}

Tree build_tree(const ModelConfig& c, const std::optional<BitsAndBytesConfig>& qc, DType dtype) {
  const models::ArchSpec& spec = models::arch_spec(c.architecture);
  const double pb = double(dtype_nbytes(dtype, 1));
  const int64_t C = c.hidden_size, F = c.intermediate_size, D = c.head_dim, V = c.vocab_size;
  const int64_t Hq = c.num_attention_heads, Hkv = c.num_key_value_heads;
  const double norm_bytes = double(spec.norm == models::NormKind::Layer ? 2 * C : C) * pb;
  Tree t;
  // A module holding tensors directly, under parent.
  auto leaf = [&](Module& parent, const std::string& name, double bytes) {
    parent.children.push_back({name, bytes, false, {}});
    t.leaves.push_back(bytes);
    t.leaf_names.push_back(name);
    add_names(t.names, name);
    return bytes;
  };
  // A Linear's bytes as transformers' quantizer counts them (param_element_size).
  auto linear_bytes = [&](const std::string& name, int64_t out, int64_t in, bool bias) {
    const double n = double(out) * double(in), nb = bias ? double(out) : 0.0;
    const std::string why = qc ? models::unquantized_reason(spec, *qc, name, c.tie_word_embeddings) : "none";
    if (why == "keep-in-fp32") return n * 4 + nb * 4;
    if (!why.empty()) return n * pb + nb * pb;
    return n * (qc->load_in_4bit ? 0.5 : 1.0) + nb * pb;
  };

  // The base model's path ("model.", "model.decoder.", "transformer.") as nested modules.
  std::vector<std::string> path;
  for (size_t s = 0, e; (e = spec.prefix.find('.', s)) != std::string::npos; s = e + 1)
    path.push_back(spec.prefix.substr(0, e));
  Module base{path.back(), 0, false, {}};
  const std::string P = spec.prefix;
  const bool ab = c.attention_bias, mb = c.mlp_bias;
  const bool o_bias = c.model_type == "qwen2" ? false : ab;  // Qwen2: q/k/v biased, o_proj never
  for (const std::string& child : spec.base_children) {
    const std::string name = P + child;
    if (child == spec.embed) {
      leaf(base, name, double(V * C) * pb + (spec.scale_embeddings ? pb : 0.0));
    } else if (child == spec.pos_embed) {
      leaf(base, name, double((c.max_position_embeddings + spec.pos_offset) * C) * pb);
    } else if (child == spec.embed_norm || child == spec.final_norm) {
      leaf(base, name, norm_bytes);
    } else if (child == "rotary_emb") {  // inv_freq + original_inv_freq, float32 buffers
      leaf(base, name, double(2 * ((c.rope_dim() + 1) / 2)) * 4);
    } else if (child == spec.layers) {
      Module list{name, 0, false, {}};
      for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
        Module layer{name + "." + std::to_string(i), 0, true, {}};
        const std::string lp = layer.name + ".", ap = lp + spec.attn + ".";
        std::vector<std::pair<std::string, double>> parts;  // leaf modules of the layer
        for (const std::string* n :
             {&spec.attn_norm, &spec.mlp_norm, &spec.post_attn_norm, &spec.post_mlp_norm})
          if (!n->empty()) parts.push_back({lp + *n, norm_bytes});
        if (!spec.q_norm.empty()) {
          parts.push_back({ap + spec.q_norm, double(D) * pb});
          parts.push_back({ap + spec.k_norm, double(D) * pb});
        }
        if (spec.qkv == models::QkvKind::Separate) {
          parts.push_back({ap + spec.qkv_names[0], linear_bytes(ap + spec.qkv_names[0], Hq * D, C, ab)});
          parts.push_back({ap + spec.qkv_names[1], linear_bytes(ap + spec.qkv_names[1], Hkv * D, C, ab)});
          parts.push_back({ap + spec.qkv_names[2], linear_bytes(ap + spec.qkv_names[2], Hkv * D, C, ab)});
        } else {
          parts.push_back(
              {ap + spec.qkv_names[0], linear_bytes(ap + spec.qkv_names[0], (Hq + 2 * Hkv) * D, C, ab)});
        }
        parts.push_back({ap + spec.o_proj, linear_bytes(ap + spec.o_proj, C, Hq * D, o_bias)});
        const std::string mp = spec.mlp.empty() ? lp : lp + spec.mlp + ".";
        const auto& mn = spec.mlp_names;
        const int64_t up = spec.mlp_kind == models::MlpKind::GatedFused ? 2 * F : F;
        parts.push_back({mp + mn[0], linear_bytes(mp + mn[0], up, C, mb)});
        if (spec.mlp_kind == models::MlpKind::Gated)
          parts.push_back({mp + mn[1], linear_bytes(mp + mn[1], F, C, mb)});
        parts.push_back({mp + mn.back(), linear_bytes(mp + mn.back(), C, F, mb)});
        for (const auto& [n, b] : parts) {
          layer.bytes += b;
          t.leaves.push_back(b);
          t.leaf_names.push_back(n);
          add_names(t.names, n);
        }
        t.max_layer = t.has_layers ? std::max(t.max_layer, layer.bytes) : layer.bytes;
        t.has_layers = true;
        list.bytes += layer.bytes;
        list.children.push_back(std::move(layer));
      }
      add_names(t.names, name);
      base.children.push_back(std::move(list));
    } else {  // dropout and other parameterless modules: in the map, 0 bytes
      base.children.push_back({name, 0, false, {}});
      add_names(t.names, name);
    }
  }
  for (const Module& m : base.children) base.bytes += m.bytes;
  // Nest it under the path's outer modules (OPT: model -> model.decoder).
  for (size_t i = path.size() - 1; i-- > 0;) base = Module{path[i], base.bytes, false, {std::move(base)}};
  add_names(t.names, P.substr(0, P.size() - 1));
  t.root.children.push_back(std::move(base));
  // The output head: tied heads share the embedding's parameter, which is counted once (there).
  if (c.tie_word_embeddings) {
    t.root.children.push_back({spec.lm_head, 0, false, {}});
    add_names(t.names, spec.lm_head);
    t.tied = {spec.lm_head + ".weight", P + spec.embed + ".weight"};
    std::sort(t.tied.begin(), t.tied.end());
  } else {
    leaf(t.root, spec.lm_head, linear_bytes(spec.lm_head, V, C, false));
  }
  for (const Module& m : t.root.children) t.root.bytes += m.bytes;
  return t;
}

// Python's float floor division.
double py_floordiv(double a, double b) {
  const double mod = std::fmod(a, b);
  double div = (a - mod) / b;
  if (mod != 0 && ((b < 0) != (mod < 0))) div -= 1.0;
  double floordiv = std::floor(div);
  if (div - floordiv > 0.5) floordiv += 1.0;
  return floordiv;
}

// A max_memory dict in accelerate's order: GPUs by index, then the CPU.
using Budgets = std::vector<std::pair<std::string, double>>;
int gpu_index(const std::string& d) {
  return d.starts_with("cuda:") ? std::stoi(d.substr(5)) : -1;
}
double& at(Budgets& b, const std::string& d) {
  for (auto& [k, v] : b)
    if (k == d) return v;
  throw ConfigError(str("max_memory has no budget for ", d, " (balanced_low_0 needs cuda:0 .. cuda:N-1)"));
}

std::string budgets_str(const Budgets& b) {
  std::string s;
  for (const auto& [k, v] : b) s += str(s.empty() ? "" : ", ", k, " ", int64_t(v));
  return s;
}

int64_t available_ram() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  int64_t kb = 0;
  std::string unit;
  while (f >> key >> kb >> unit)
    if (key == "MemAvailable:") return kb * 1024;
  return 0;
}

// transformers' get_max_memory: the user's budgets as given, else what the devices have free
// (the CPU at 90%).
Budgets get_max_memory(const std::optional<MaxMemory>& user, const std::string& what) {
  Budgets b;
  if (user) {
    for (const auto& [k, v] : *user) b.push_back({normalize_device(k), double(v)});
  } else {
    const int n = cuda_device_count();
    if (n == 0)
      throw ConfigError(str("device_map '", what,
                            "': no CUDA device is visible, so name the budgets (max_memory, e.g. "
                            "cuda:0=20GiB,cpu=64GiB) to compute a placement"));
    for (int i = 0; i < n; ++i) {
      size_t free_b = 0;
#ifdef NIBBLE_WITH_CUDA
      size_t total_b = 0;
      cuda::mem_info(i, &free_b, &total_b);
#endif
      b.push_back({str("cuda:", i), double(free_b)});
    }
    b.push_back({"cpu", double(available_ram()) * 0.90});
  }
  std::stable_sort(b.begin(), b.end(), [](const auto& x, const auto& y) {
    const int a = gpu_index(x.first), c = gpu_index(y.first);
    return (a < 0 ? 1 << 30 : a) < (c < 0 ? 1 << 30 : c);
  });
  for (size_t i = 1; i < b.size(); ++i)
    if (b[i].first == b[i - 1].first) throw ConfigError(str("max_memory names ", b[i].first, " twice"));
  return b;
}

// get_balanced_memory: every GPU but the last gets the model's share plus a buffer (the largest
// decoder layer or the mean leaf module, x1.25); balanced_low_0 keeps GPU 0 as empty as it can.
Budgets balanced_memory(const Tree& t, Budgets mm, bool user_set, bool low_zero) {
  int num = 0;
  for (const auto& [k, v] : mm)
    if (k != "cpu" && v > 0) ++num;
  if (num == 0) return mm;
  if (num == 1) {
    low_zero = false;
    if (!user_set)
      for (auto& [k, v] : mm)
        if (k != "cpu") {
          v *= 0.9;
          break;
        }
  }
  const double total = t.root.bytes;
  double per_gpu = py_floordiv(total, double(low_zero ? num - 1 : num));
  double buffer = t.has_layers ? t.max_layer : 0;
  double sum = 0;
  for (double l : t.leaves) sum += l;
  const double mean_leaves = std::trunc(sum / double(std::max<size_t>(t.leaves.size(), 1)));
  buffer = std::trunc(1.25 * std::max(buffer, mean_leaves));
  per_gpu += buffer;
  std::vector<std::string> gpus;
  for (const auto& [k, v] : mm)
    if (k != "cpu" && v > 0) gpus.push_back(k);
  for (size_t i = 0; i + 1 < gpus.size(); ++i) {
    double& v = at(mm, gpus[i]);
    v = std::min(low_zero && gpus[i] == "cuda:0" ? at(mm, "cuda:0") : per_gpu, v);
  }
  if (low_zero) {
    double others = 0;
    for (int i = 1; i < num; ++i) others += at(mm, str("cuda:", i));
    at(mm, "cuda:0") = std::min(std::max(0.0, total - others), at(mm, "cuda:0"));
  }
  return mm;
}

// accelerate's get_max_layer_size over a list of modules: the largest unsplittable module and
// every module of that size.
std::pair<double, std::vector<std::string>> max_layer_size(std::vector<const Module*> todo) {
  double mx = 0;
  std::vector<std::string> names;
  while (!todo.empty()) {
    const Module* m = todo.front();
    todo.erase(todo.begin());
    if (m->children.empty() || m->no_split) {
      if (m->bytes > mx) {
        mx = m->bytes;
        names = {m->name};
      } else if (m->bytes == mx) {
        names.push_back(m->name);
      }
    } else {
      std::vector<const Module*> kids;
      for (const Module& k : m->children) kids.push_back(&k);
      todo.insert(todo.begin(), kids.begin(), kids.end());
    }
  }
  return {mx, names};
}

bool inside(const std::string& param, const std::string& module) {  // Python: name + "." in k + "."
  return (param + ".").find(module + ".") != std::string::npos;
}

// transformers' infer_auto_device_map (no_placement_params is None for these models).
HfDeviceMap infer_auto(const Tree& t, const Budgets& mm) {
  std::vector<std::string> devices;
  for (const auto& [k, v] : mm) devices.push_back(k);
  devices.push_back("disk");
  std::vector<std::string> main_devices{"cpu"};
  if (devices[0] != "cpu" && devices[0] != "disk") main_devices = {devices[0], "cpu"};
  std::map<std::string, double> used, budget(mm.begin(), mm.end());
  std::vector<const Module*> todo;
  for (const Module& m : t.root.children) todo.push_back(&m);
  auto [max_size, max_names] = max_layer_size(todo);
  HfDeviceMap out;
  size_t cur = 0;
  while (!todo.empty()) {
    const Module* m = todo.front();
    todo.erase(todo.begin());
    const std::string& name = m->name;
    std::erase_if(max_names, [&](const std::string& n) { return n == name || n.starts_with(name + "."); });
    if (max_names.empty()) std::tie(max_size, max_names) = max_layer_size(todo);
    const double size = m->bytes;
    std::vector<std::string> tied_params;
    bool any = false, all = true;
    for (const auto& k : t.tied) {
      any = any || inside(k, name);
      all = all && inside(k, name);
    }
    if (any && !all)
      for (const auto& k : t.tied)
        if (!inside(k, name)) tied_params.push_back(k);
    const std::string& device = devices[cur];
    const bool unlimited = device == "disk";
    double max_here = unlimited ? 0 : budget.at(device), reserved = 0;
    if (std::find(main_devices.begin(), main_devices.end(), device) != main_devices.end()) {
      max_here -= max_size;
      reserved = max_size;
    }
    double with_ties = size;
    std::vector<const Module*> tied_mods;
    for (const auto& p : tied_params) {
      auto it = std::find_if(todo.begin(), todo.end(),
                             [&](const Module* x) { return p.starts_with(x->name + "."); });
      if (it == todo.end())
        throw InternalError(str("device map: tied parameter ", p, " has no module left to place"));
      if (std::find(tied_mods.begin(), tied_mods.end(), *it) == tied_mods.end()) {
        tied_mods.push_back(*it);
        with_ties += (*it)->bytes;
      }
    }
    if (unlimited || used[device] + with_ties <= max_here) {
      used[device] += with_ties;
      out.push_back({name, device});
      for (const Module* tm : tied_mods) {
        std::erase(todo, tm);
        out.push_back({tm->name, device});
      }
      continue;
    }
    if (!tied_params.empty() && used[device] + size <= max_here) {
      bool split = false;
      for (const Module* tm : tied_mods) {
        if (tm->children.empty() || tm->no_split) continue;
        auto it = std::find(todo.begin(), todo.end(), tm);
        std::vector<const Module*> next{m};
        next.insert(next.end(), todo.begin(), it);
        for (const Module& k : tm->children) next.push_back(&k);
        next.insert(next.end(), it + 1, todo.end());
        todo = std::move(next);
        std::tie(max_size, max_names) = max_layer_size(todo);
        split = true;
        break;
      }
      if (split) continue;
    }
    if (!m->children.empty() && !m->no_split) {  // split it: its children take its place
      std::vector<const Module*> kids;
      for (const Module& k : m->children) kids.push_back(&k);
      todo.insert(todo.begin(), kids.begin(), kids.end());
      std::tie(max_size, max_names) = max_layer_size(todo);
      continue;
    }
    used[device] += reserved;  // the next device
    ++cur;
    todo.insert(todo.begin(), m);
  }
  return out;
}

// accelerate's clean_device_map: modules whose submodules all went to one device become one
// entry (placed where the first of them was).
void clean_device_map(HfDeviceMap& map, const std::string& module) {
  const std::string prefix = module.empty() ? "" : module + ".";
  std::set<std::string> values;
  size_t count = 0, first = map.size();
  for (size_t i = 0; i < map.size(); ++i)
    if (map[i].first.starts_with(prefix)) {
      values.insert(map[i].second);
      ++count;
      first = std::min(first, i);
    }
  if (values.size() == 1 && count > 1) {
    const std::string v = *values.begin();
    std::erase_if(map, [&](const auto& e) { return e.first.starts_with(prefix); });
    map.insert(map.begin() + std::ptrdiff_t(first), {module, v});
  }
  const size_t depth = module.empty() ? 1 : size_t(std::count(module.begin(), module.end(), '.')) + 2;
  std::vector<std::string> children;
  for (const auto& [k, v] : map) {
    if (!k.starts_with(prefix) || k.size() <= module.size()) continue;
    size_t pos = k.find('.');
    for (size_t d = 1; d < depth && pos != std::string::npos; ++d) pos = k.find('.', pos + 1);
    const std::string child = k.substr(0, pos);  // k's first `depth` components
    if (std::find(children.begin(), children.end(), child) == children.end()) children.push_back(child);
  }
  for (const auto& ch : children) clean_device_map(map, ch);
}

// transformers' bitsandbytes quantizers refuse a map that puts part of the model on the CPU.
void check_quantized_offload(const HfDeviceMap& map, const std::optional<BitsAndBytesConfig>& qc) {
  if (!qc || qc->llm_int8_enable_fp32_cpu_offload) return;
  bool cpu = false, other = false;
  for (const auto& [k, v] : map) (v == "cpu" ? cpu : other) = true;
  if (cpu && other)
    throw ConfigError(
        "device_map puts some modules on the CPU: a bitsandbytes-quantized model must fit the GPUs "
        "(transformers refuses this map unless llm_int8_enable_fp32_cpu_offload is set)");
}

HfDeviceMap check_explicit(const Tree& t, const HfDeviceMap& m) {
  HfDeviceMap out;
  for (const auto& [k, v] : m) {
    if (!k.empty() && !t.names.count(k))
      throw ConfigError(str("device_map names module '", k, "', which this model does not have"));
    out.push_back({k, normalize_device(v)});
  }
  for (const auto& leaf : t.leaf_names) {
    if (leaf.ends_with(".rotary_emb"))
      continue;  // non-persistent buffers: not in the state dict accelerate checks
    bool covered = false;
    for (const auto& [k, v] : m) covered = covered || k.empty() || leaf == k || leaf.starts_with(k + ".");
    if (!covered)
      throw ConfigError(str("device_map places no prefix of '", leaf, "' (every module needs a device)"));
  }
  return out;
}

}  // namespace

std::string normalize_device(const std::string& d) {
  if (d == "cpu") return d;
  if (d == "cuda") return "cuda:0";
  std::string n = d.starts_with("cuda:") ? d.substr(5) : d;
  if (n.empty() || n.size() > 3 || n.find_first_not_of("0123456789") != std::string::npos)
    throw ConfigError(str("unknown device '", d, "' (cpu, cuda or cuda:N)"));
  return "cuda:" + std::to_string(std::stoi(n));
}

int64_t parse_memory_size(const std::string& s) {
  auto bad = [&]() {
    return ConfigError(
        str("memory size '", s, "' is not valid: give bytes or a number with a unit (20GiB, 20GB, 500MiB)"));
  };
  std::string up = s;
  for (char& ch : up) ch = char(std::toupper(static_cast<unsigned char>(ch)));
  struct Unit {
    const char* name;
    double scale;
    bool bits_ok;
  };
  static const Unit units[] = {{"GIB", 1073741824.0, false},
                               {"MIB", 1048576.0, false},
                               {"KIB", 1024.0, false},
                               {"GB", 1e9, true},
                               {"MB", 1e6, true},
                               {"KB", 1e3, true}};
  auto number = [&](const std::string& x) {
    size_t used = 0;
    double v = 0;
    try {
      v = std::stod(x, &used);
    } catch (const std::exception&) {
      throw bad();
    }
    if (used != x.size() || !std::isfinite(v) || x.find_first_of("xXpP") != std::string::npos) throw bad();
    return v;
  };
  for (const Unit& u : units) {
    if (!up.ends_with(u.name)) continue;
    const size_t n = std::string(u.name).size();
    const double v = std::trunc(number(s.substr(0, s.size() - n)) * u.scale);  // int(float(...) * scale)
    if (v < 0 || v > 9.0e18) throw bad();
    const int64_t bytes = int64_t(v);
    return u.bits_ok && s.back() == 'b' ? bytes / 8 : bytes;
  }
  if (s.empty() || s.find_first_not_of("0123456789") != std::string::npos || s.size() > 18) throw bad();
  return std::stoll(s);
}

namespace {
// Calls fn(key, value) for each "KEY=VALUE" of a comma-separated spec; an item without '=' is a
// ConfigError with `expected` (what the spec should look like).
template <class Fn>
void for_each_pair(const std::string& spec, const std::string& expected, Fn&& fn) {
  size_t start = 0;
  while (start <= spec.size()) {
    size_t end = spec.find(',', start);
    if (end == std::string::npos) end = spec.size();
    const std::string item = spec.substr(start, end - start);
    const size_t eq = item.find('=');
    if (eq == std::string::npos) throw ConfigError(expected);
    fn(item.substr(0, eq), item.substr(eq + 1));
    start = end + 1;
  }
}
}  // namespace

MaxMemory parse_max_memory(const std::string& spec) {
  MaxMemory m;
  for_each_pair(spec,
                str("max_memory '", spec, "': expected DEVICE=SIZE[,DEVICE=SIZE...], e.g. cuda:0=20GiB,cpu=64GiB"),
                [&](const std::string& key, const std::string& value) {
                  const std::string dev = normalize_device(key);
                  if (!m.emplace(dev, parse_memory_size(value)).second)
                    throw ConfigError(str("max_memory '", spec, "' names ", dev, " twice"));
                });
  return m;
}

HfDeviceMap parse_explicit_device_map(const std::string& spec) {
  HfDeviceMap m;
  for_each_pair(spec, str("device_map '", spec, "': expected MODULE=DEVICE[,MODULE=DEVICE...]"),
                [&](const std::string& module, const std::string& value) {
                  for (const auto& [k, v] : m)
                    if (k == module)
                      throw ConfigError(str("device_map '", spec, "' names module '", module, "' twice"));
                  m.push_back({module, normalize_device(value)});
                });
  return m;
}

HfDeviceMap infer_device_map(const ModelConfig& c, const PlacementRequest& r) {
  std::optional<BitsAndBytesConfig> qc = r.quantization_config;
  if (qc && !qc->is_quantizable()) qc.reset();
  if (qc) qc->validate();
  const Tree t = build_tree(c, qc, r.dtype);
  if (!r.explicit_map.empty()) {
    HfDeviceMap m = check_explicit(t, r.explicit_map);
    check_quantized_offload(m, qc);
    return m;
  }
  const std::string& s = r.device_map;
  if (s != "auto" && s != "balanced" && s != "balanced_low_0" && s != "sequential") {
    if (s == "cpu" || s == "cuda" || s.starts_with("cuda:")) return {{"", normalize_device(s)}};
    throw ConfigError(str("device_map '", s,
                          "' is not supported (auto, balanced, balanced_low_0, sequential, cpu, cuda, "
                          "cuda:N or an explicit map)"));
  }
  Budgets mm = get_max_memory(r.max_memory, s);
  if (s != "sequential") mm = balanced_memory(t, mm, r.max_memory.has_value(), s == "balanced_low_0");
  if (qc)
    for (auto& [k, v] : mm) v *= 0.90;  // the bitsandbytes quantizers' adjust_max_memory
  HfDeviceMap m = infer_auto(t, mm);
  clean_device_map(m, "");
  check_quantized_offload(m, qc);
  for (const auto& [k, v] : m)
    if (v == "disk") {
      Budgets given = get_max_memory(r.max_memory, s);
      throw ConfigError(str("the model needs ", int64_t(t.root.bytes), " bytes (largest layer ",
                            int64_t(t.max_layer), ") but max_memory allows ", budgets_str(given), ": '", k,
                            "' would have to go to disk, which nibble does not support"));
    }
  return m;
}

HfDeviceMap resolve_load_map(const ModelConfig& c, const LoadOptions& o, DType dtype) {
  const std::string& s = o.device_map;
  const bool placement = !o.device_map_modules.empty() || o.max_memory || s == "balanced" ||
                         s == "balanced_low_0" || s == "sequential";
  if (!placement) return {{"", resolve_device_map(s).str()}};
  PlacementRequest r{s, o.device_map_modules, o.max_memory, o.quantization_config, dtype};
  HfDeviceMap m = infer_device_map(c, r);
  for (const auto& [k, v] : m) (void)resolve_device_map(v);  // every device it names exists
  return m;
}

}  // namespace nibble
