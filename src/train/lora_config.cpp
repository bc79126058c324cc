// LoraConfig: peft 0.21's fields, checks and adapter_config.json, and target-module matching.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <memory>
#include <set>

#include "io/atomic_file.h"
#include "io/pyjson.h"
#include "io/read_file.h"
#include "nibble/error.h"
#include "nibble/lora.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

namespace nibble {

using ojson = nlohmann::ordered_json;

namespace {

// peft's TaskType values.
const char* const kTaskTypes[] = {"SEQ_CLS",   "SEQ_2_SEQ_LM", "CAUSAL_LM",
                                  "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION"};

// The keys peft 0.21 writes that nibble does not model, with the values a default config has.
ojson unmodelled_defaults() {
  return ojson{{"alora_invocation_tokens", nullptr},
               {"arrow_config", nullptr},
               {"auto_mapping", nullptr},
               {"corda_config", nullptr},
               {"ensure_weight_tying", false},
               {"eva_config", nullptr},
               {"kasa_config", nullptr},
               {"layer_replication", nullptr},
               {"loftq_config", ojson::object()},
               {"lora_ga_config", nullptr},
               {"megatron_config", nullptr},
               {"megatron_core", "megatron.core"},
               {"monteclora_config", nullptr},
               {"peft_type", "LORA"},
               {"peft_version", "0.21.0"},
               {"qalora_group_size", 16},
               {"target_parameters", nullptr},
               {"trainable_token_indices", nullptr},
               {"use_bdlora", nullptr},
               {"use_qalora", false},
               {"velora_config", nullptr}};
}

ojson opt_str(const std::optional<std::string>& s) {
  return s ? ojson(*s) : ojson(nullptr);
}

ojson number(double v) {
  if (std::floor(v) == v && std::abs(v) < 1e15) return ojson(int64_t(v));
  return ojson(v);
}

// Python's re.fullmatch, with PCRE2 (Python's regex syntax is PCRE's, not ECMAScript's) and a
// bound on backtracking: a pattern that would take exponential time is a ConfigError, not a hang.
class FullMatch {
 public:
  explicit FullMatch(const std::string& pattern) : pattern_(pattern) {
    int err = 0;
    PCRE2_SIZE off = 0;
    code_.reset(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                              PCRE2_ANCHORED | PCRE2_ENDANCHORED | PCRE2_UTF, &err, &off, nullptr));
    if (!code_) throw ConfigError(detail::str("bad regex '", pattern, "': ", message(err)));
    context_.reset(pcre2_match_context_create(nullptr));
    pcre2_set_match_limit(context_.get(), 100'000);
    pcre2_set_depth_limit(context_.get(), 10'000);
  }
  // Whether the whole of s matches; *group1 gets the first group's text when given.
  bool operator()(const std::string& s, std::string* group1 = nullptr) const {
    std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(
        pcre2_match_data_create_from_pattern(code_.get(), nullptr), pcre2_match_data_free);
    int rc = pcre2_match(code_.get(), reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), 0, 0, md.get(),
                         context_.get());
    if (rc == PCRE2_ERROR_NOMATCH) return false;
    if (rc < 0) throw ConfigError(detail::str("regex '", pattern_, "' cannot be matched: ", message(rc)));
    if (group1) {
      PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
      *group1 = rc > 1 && ov[2] != PCRE2_UNSET ? s.substr(ov[2], ov[3] - ov[2]) : "";
    }
    return true;
  }

 private:
  static std::string message(int code) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(code, buf, sizeof buf);
    return reinterpret_cast<const char*>(buf);
  }
  struct CodeFree {
    void operator()(pcre2_code* c) const { pcre2_code_free(c); }
  };
  struct ContextFree {
    void operator()(pcre2_match_context* c) const { pcre2_match_context_free(c); }
  };
  std::string pattern_;
  std::unique_ptr<pcre2_code, CodeFree> code_;
  std::unique_ptr<pcre2_match_context, ContextFree> context_;
};

// Python's `layers.N.` layer index of a module name for layers_to_transform.
std::optional<int64_t> layer_index(const std::string& name, const std::optional<std::string>& pattern) {
  static const std::vector<std::string> kDefault = {"layers", "h", "block", "blocks", "layer"};
  std::vector<std::string> pats = pattern ? std::vector<std::string>{*pattern} : kDefault;
  for (const auto& p : pats) {
    std::string digits;
    try {
      if (!FullMatch(".*\\." + p + "\\.(\\d+)\\..*")(name, &digits)) continue;
    } catch (const ConfigError& e) {
      throw ConfigError(std::string("LoraConfig.layers_pattern: ") + e.what());
    }
    int64_t index = 0;
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), index);
    if (ec == std::errc() && end == digits.data() + digits.size()) return index;
    return std::nullopt;  // past int64: no layer of ours, nor in layers_to_transform
  }
  return std::nullopt;
}

bool suffix_match(const std::string& key, const std::string& t) {
  return key == t || (key.size() > t.size() && key.compare(key.size() - t.size(), t.size(), t) == 0 &&
                      key[key.size() - t.size() - 1] == '.');
}

}  // namespace

double LoraConfig::scaling() const {
  return use_rslora ? lora_alpha / std::sqrt(double(r)) : lora_alpha / double(r);
}

void LoraConfig::validate() const {
  if (r <= 0)
    throw ConfigError("LoraConfig.r: `r` should be a positive integer value but the value passed is " +
                      std::to_string(r));
  if (target_modules_str && layers_to_transform)
    throw ConfigError(
        "LoraConfig.layers_to_transform: `layers_to_transform` cannot be used when `target_modules` is a "
        "str.");
  if (target_modules_str && layers_pattern)
    throw ConfigError(
        "LoraConfig.layers_pattern: `layers_pattern` cannot be used when `target_modules` is a str.");
  if (layers_pattern && (!layers_to_transform || layers_to_transform->empty()))
    throw ConfigError(
        "LoraConfig.layers_pattern: When `layers_pattern` is specified, `layers_to_transform` must also be "
        "specified.");
  if (!(lora_dropout >= 0.0 && lora_dropout <= 1.0))
    throw ConfigError("LoraConfig.lora_dropout: dropout probability has to be between 0 and 1, but got " +
                      io::python_float_repr(lora_dropout));
  if (bias != "none" && bias != "all" && bias != "lora_only")
    throw ConfigError("LoraConfig.bias: Requested bias: " + bias + ", is not implemented.");
  if (init_lora_weights != "true" && init_lora_weights != "false" && init_lora_weights != "gaussian")
    throw UnsupportedError("LoraConfig.init_lora_weights: '" + init_lora_weights +
                           "' is not supported by nibble (true, false, \"gaussian\")");
  if (use_dora) throw UnsupportedError("LoraConfig.use_dora: DoRA is not supported by nibble");
  if (lora_bias) throw UnsupportedError("LoraConfig.lora_bias: a bias on lora_B is not supported by nibble");
  if (task_type) {
    bool ok = false;
    for (const char* t : kTaskTypes) ok |= *task_type == t;
    if (!ok)
      throw ConfigError("LoraConfig.task_type: Invalid task type: '" + *task_type +
                        "'. Must be one of the following task types: SEQ_CLS, SEQ_2_SEQ_LM, CAUSAL_LM, "
                        "TOKEN_CLS, QUESTION_ANS, FEATURE_EXTRACTION");
  }
  if (!target_modules_str && target_modules.empty())
    throw ConfigError("LoraConfig.target_modules: empty (name modules, give a regex, or \"all-linear\")");
}

std::string LoraConfig::to_json_text() const {
  ojson j = unmodelled_defaults();
  ojson ap = ojson::object(), rp = ojson::object();
  for (const auto& [k, v] : alpha_pattern) ap[k] = number(v);
  for (const auto& [k, v] : rank_pattern) rp[k] = v;
  j["alpha_pattern"] = ap;
  j["base_model_name_or_path"] = opt_str(base_model_name_or_path);
  j["bias"] = bias;
  j["exclude_modules"] = exclude_modules.empty() ? ojson(nullptr) : ojson(exclude_modules);
  j["fan_in_fan_out"] = fan_in_fan_out;
  j["inference_mode"] = inference_mode;
  if (init_lora_weights == "true" || init_lora_weights == "false")
    j["init_lora_weights"] = init_lora_weights == "true";
  else
    j["init_lora_weights"] = init_lora_weights;
  j["layers_pattern"] = opt_str(layers_pattern);
  j["layers_to_transform"] = layers_to_transform ? ojson(*layers_to_transform) : ojson(nullptr);
  j["lora_alpha"] = number(lora_alpha);
  j["lora_bias"] = lora_bias;
  j["lora_dropout"] = lora_dropout;
  j["modules_to_save"] = modules_to_save_set ? ojson(modules_to_save) : ojson(nullptr);
  j["r"] = r;
  j["rank_pattern"] = rp;
  j["revision"] = opt_str(revision);
  j["target_modules"] = target_modules_str ? ojson(*target_modules_str) : ojson(target_modules);
  j["task_type"] = opt_str(task_type);
  j["use_dora"] = use_dora;
  j["use_rslora"] = use_rslora;
  for (const auto& [k, v] : extra.items()) j[k] = v;
  io::PyDumpOptions o;
  o.indent = 2;
  o.sort_keys = true;
  return io::python_json_dumps(j, o);
}

LoraConfig LoraConfig::from_json(const nlohmann::json& j, const std::string& origin) {
  if (!j.is_object()) throw FormatError(origin + ": adapter config is not a JSON object");
  if (j.contains("peft_type") && j["peft_type"] != "LORA")
    throw UnsupportedError(origin + ": peft_type " + j["peft_type"].dump() + " (only LORA is supported)");
  LoraConfig c;
  auto field = [&](const char* k) -> const nlohmann::json* {
    auto it = j.find(k);
    return it == j.end() ? nullptr : &*it;
  };
  auto opt_string = [&](const char* k) -> std::optional<std::string> {
    const auto* v = field(k);
    if (!v || v->is_null()) return std::nullopt;
    if (!v->is_string()) throw FormatError(origin + ": field '" + k + "' is not a string");
    return v->get<std::string>();
  };
  // An integer field: a JSON integer in range (a float such as 1e300 converted to int64 would be
  // undefined behaviour; peft needs integers here too).
  auto int_value = [&](const nlohmann::json& v, const char* k) -> int64_t {
    if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX)))
      throw FormatError(origin + ": field '" + k + "' is not an integer");
    return v.get<int64_t>();
  };
  auto str_list = [&](const char* k, std::vector<std::string>& out) -> bool {
    const auto* v = field(k);
    if (!v || v->is_null()) return false;
    if (!v->is_array()) throw FormatError(origin + ": field '" + k + "' is not a list of strings");
    for (const auto& e : *v) {
      if (!e.is_string()) throw FormatError(origin + ": field '" + k + "' is not a list of strings");
      out.push_back(e.get<std::string>());
    }
    return true;
  };
  try {
    if (const auto* v = field("r")) c.r = int_value(*v, "r");
    if (const auto* v = field("lora_alpha")) c.lora_alpha = v->get<double>();
    if (const auto* v = field("lora_dropout")) c.lora_dropout = v->get<double>();
    if (const auto* v = field("target_modules")) {
      if (v->is_string())
        c.target_modules_str = v->get<std::string>();
      else
        str_list("target_modules", c.target_modules);
    }
    if (const auto* v = field("exclude_modules"); v && v->is_string())
      throw UnsupportedError(origin + ": exclude_modules as a regex string is not supported");
    str_list("exclude_modules", c.exclude_modules);
    if (auto s = opt_string("bias")) c.bias = *s;
    if (const auto* v = field("use_rslora")) c.use_rslora = v->get<bool>();
    if (const auto* v = field("init_lora_weights"))
      c.init_lora_weights = v->is_boolean() ? (v->get<bool>() ? "true" : "false") : v->get<std::string>();
    if (const auto* v = field("fan_in_fan_out")) c.fan_in_fan_out = v->get<bool>();
    c.modules_to_save_set = str_list("modules_to_save", c.modules_to_save);
    c.task_type = opt_string("task_type");
    if (const auto* v = field("layers_to_transform"); v && !v->is_null()) {
      if (v->is_number()) {
        c.layers_to_transform = {int_value(*v, "layers_to_transform")};
      } else {
        if (!v->is_array())
          throw FormatError(origin + ": field 'layers_to_transform' is not an integer or a list");
        std::vector<int64_t> layers;
        for (const auto& e : *v) layers.push_back(int_value(e, "layers_to_transform"));
        c.layers_to_transform = std::move(layers);
      }
    }
    c.layers_pattern = opt_string("layers_pattern");
    if (const auto* v = field("rank_pattern"); v && !v->is_null()) {
      if (!v->is_object()) throw FormatError(origin + ": field 'rank_pattern' is not an object");
      for (const auto& [name, e] : v->items()) c.rank_pattern[name] = int_value(e, "rank_pattern");
    }
    if (const auto* v = field("alpha_pattern"); v && !v->is_null())
      c.alpha_pattern = v->get<std::map<std::string, double>>();
    if (const auto* v = field("use_dora")) c.use_dora = v->get<bool>();
    if (const auto* v = field("lora_bias")) c.lora_bias = v->get<bool>();
    if (const auto* v = field("inference_mode")) c.inference_mode = v->get<bool>();
    c.base_model_name_or_path = opt_string("base_model_name_or_path");
    c.revision = opt_string("revision");
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(origin + ": " + e.what());
  }
  if (!c.rank_pattern.empty() || !c.alpha_pattern.empty())
    throw UnsupportedError(origin + ": rank_pattern / alpha_pattern are not supported by nibble");
  // Everything nibble does not model is written back as it was read.
  static const std::set<std::string> kModelled = {"alpha_pattern",
                                                  "base_model_name_or_path",
                                                  "bias",
                                                  "exclude_modules",
                                                  "fan_in_fan_out",
                                                  "inference_mode",
                                                  "init_lora_weights",
                                                  "layers_pattern",
                                                  "layers_to_transform",
                                                  "lora_alpha",
                                                  "lora_bias",
                                                  "lora_dropout",
                                                  "modules_to_save",
                                                  "r",
                                                  "rank_pattern",
                                                  "revision",
                                                  "target_modules",
                                                  "task_type",
                                                  "use_dora",
                                                  "use_rslora"};
  for (const auto& [k, v] : j.items())
    if (!kModelled.count(k)) c.extra[k] = ojson(v);
  c.validate();
  return c;
}

LoraConfig LoraConfig::load(const std::filesystem::path& dir) {
  const auto path = dir / "adapter_config.json";
  const std::string text = io::read_text_file(path);
  nlohmann::json j;
  try {
    j = io::parse_json(text);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(path.string() + ": " + e.what());
  }
  return from_json(j, path.string());
}

void LoraConfig::save(const std::filesystem::path& dir) const {
  validate();
  std::filesystem::create_directories(dir);
  const std::string text = to_json_text();
  io::AtomicFile f(dir / "adapter_config.json");
  f.write(text.data(), text.size());
  f.commit();
}

std::vector<std::string> lora_target_names(const LoraConfig& cfg, const std::vector<LinearSite>& sites) {
  cfg.validate();
  std::vector<std::string> out;
  const bool all_linear = cfg.target_modules_str && *cfg.target_modules_str == "all-linear";
  std::optional<FullMatch> re;
  try {
    if (cfg.target_modules_str && !all_linear) re.emplace(*cfg.target_modules_str);
  } catch (const ConfigError& e) {
    throw ConfigError(std::string("LoraConfig.target_modules: ") + e.what());
  }
  for (const auto& s : sites) {
    bool hit = false;
    if (all_linear)
      hit = !s.is_output_head;
    else if (re)
      try {
        hit = (*re)(s.name);
      } catch (const ConfigError& e) {
        throw ConfigError(std::string("LoraConfig.target_modules: ") + e.what());
      }
    else
      for (const auto& t : cfg.target_modules) hit |= suffix_match(s.name, t);
    if (hit && cfg.layers_to_transform) {
      auto idx = layer_index(s.name, cfg.layers_pattern);
      hit = idx && std::find(cfg.layers_to_transform->begin(), cfg.layers_to_transform->end(), *idx) !=
                       cfg.layers_to_transform->end();
    }
    for (const auto& t : cfg.exclude_modules) hit &= !suffix_match(s.name, t);
    if (hit) out.push_back(s.name);
  }
  if (out.empty()) {
    std::string names;
    for (const auto& s : sites) names += (names.empty() ? "" : ", ") + s.name;
    throw ConfigError(
        "LoraConfig.target_modules: Target modules " +
        (cfg.target_modules_str ? *cfg.target_modules_str : nlohmann::json(cfg.target_modules).dump()) +
        " not found in the base model. Linear modules: " + names);
  }
  return out;
}

}  // namespace nibble
