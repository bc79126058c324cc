// verify(model, options): each check of the report, one function each. The checks that need
// the unquantized model share one lazily loaded reference; memory stays bounded because
//   - the reference is memory-mapped in its stored precision (the loader keeps zero-copy views
//     of unquantized weights), so only the pages being read are resident, and the quantized
//     model is the only other copy: never two full 16-bit models at once;
//   - per-layer error reads one original weight at a time from the reference checkpoint and
//     releases its pages afterwards;
//   - logit agreement runs the text in chunks: both models' logits for one chunk ([T, vocab]
//     each) are all that is held, reduced to KL / top-1 / NLL sums before the next chunk.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <set>

#include <nlohmann/json.hpp>

#include "models/causal_lm_impl.h"
#include "nibble/error.h"
#include "nibble/quant.h"
#include "nibble/verify.h"
#include "verify/verify_internal.h"

namespace nibble {

using verify_detail::torch_dtype_name;

using detail::str;

namespace {

const char* format_name(nn::WeightFormat f) {
  return nn::format_traits(f).name;
}

bool is_4bit(const nn::Linear& l) {
  return l.is_4bit();
}
bool is_quantized(const nn::Linear& l) {
  return l.traits().quantized;
}

std::string join(const std::vector<std::string>& v, size_t max_items = 6) {
  std::string s;
  for (size_t i = 0; i < v.size() && i < max_items; ++i) s += (i ? "; " : "") + v[i];
  if (v.size() > max_items) s += str("; ... (", v.size() - max_items, " more)");
  return s;
}

std::string fixed(double v, int digits = 4) {
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", digits, v);
  return b;
}

// bitsandbytes' own accuracy yardsticks (FORMATS.md §6), from the format traits table.
double error_limit(nn::WeightFormat f) {
  return nn::format_traits(f).error_yardstick;
}

// The weight a quantized Linear computes with, as f32 [out, in].
Tensor dequantized_weight(const nn::Linear& l) {
  return l.traits().dequantize(l);
}

std::string default_decode(const std::vector<int64_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? " " : "") + std::to_string(ids[i]);
  return s;
}

struct Verifier {
  const CausalLM& model;
  const CausalLM::Impl& m;
  const VerifyOptions& o;
  VerifyReport& r;
  std::optional<std::filesystem::path> ref_dir;
  std::unique_ptr<CausalLM> ref;  // loaded on first use

  void add(const std::string& name, bool passed, const std::string& detail) {
    r.checks.push_back({name, passed, detail});
  }

  const CausalLM& reference() {
    if (!ref) {
      ref = std::make_unique<CausalLM>(AutoModelForCausalLM::from_pretrained(*ref_dir));
      if (ref->is_quantized())
        throw ConfigError(
            str("reference model ", ref_dir->string(), " is itself quantized; give the unquantized one"));
      if (ref->config().vocab_size != m.config.vocab_size ||
          ref->config().architecture != m.config.architecture)
        throw ConfigError(str("reference model ", ref_dir->string(), " (", ref->config().architecture,
                              ", vocab ", ref->config().vocab_size, ") does not match the model (",
                              m.config.architecture, ", vocab ", m.config.vocab_size, ")"));
    }
    return *ref;
  }

  std::string expected_skip(const std::string& name) const {
    return m.qc ? models::unquantized_reason(*m.spec, *m.qc, name, m.tied_head) : "";
  }

  void layer_list() {
    for (const NamedLinear* nl : m.linears()) {
      const nn::Linear& l = nl->lin;
      LayerReport lr;
      lr.name = nl->name;
      lr.klass = l.class_name();
      lr.format = format_name(l.format());
      lr.dtype = torch_dtype_name(l.weight().dtype());
      if (is_4bit(l)) lr.compute_dtype = torch_dtype_name(l.compute_dtype());
      lr.shape = {l.out_features(), l.in_features()};
      lr.bytes = (nl == &m.lm_head && m.tied_head) ? 0 : l.footprint_bytes();
      lr.state_bytes = l.traits().state_bytes(l);
      if (!is_quantized(l)) lr.skip_reason = expected_skip(nl->name);
      r.layers.push_back(lr);
    }
  }

  void footprint() {
    FootprintReport& f = r.footprint;
    f = footprint_report(model);
    const DType stored = m.embed.dtype();
    FootprintReport predicted = footprint_from_config(m.config, m.qc, stored);
    FootprintReport unquantized = footprint_from_config(m.config, std::nullopt, stored);
    std::vector<std::string> bad;
    if (f.footprint_bytes != predicted.footprint_bytes)
      bad.push_back(str("footprint ", f.footprint_bytes, " B differs from the ", predicted.footprint_bytes,
                        " B the config predicts for this quantization"));
    if (m.qc && f.footprint_bytes >= unquantized.footprint_bytes)
      bad.push_back(str("footprint ", f.footprint_bytes, " B is not below the unquantized ",
                        unquantized.footprint_bytes, " B"));
    std::string detail = str(
        f.footprint_bytes, " B (", fixed(double(unquantized.footprint_bytes) / double(f.footprint_bytes), 3),
        "x smaller than unquantized in ", torch_dtype_name(stored), ", ", fixed(f.ratio_vs_16bit, 3),
        "x vs 16-bit); with quant state ", f.true_bytes, " B");
    if (f.params_quantized) detail += str("; quantized layers ", fixed(f.bits_per_param, 3), " bits/param");
    add("footprint", bad.empty(), bad.empty() ? detail : join(bad));
  }

  void layer_types() {
    if (!m.qc) return add("layer_types", false, "the model is not quantized (no quantization_config)");
    const char* want = m.qc->load_in_4bit ? "Linear4bit" : "Linear8bitLt";
    std::vector<std::string> bad, skipped;
    int64_t n_q = 0, n_all = 0;
    for (const NamedLinear* nl : m.linears()) {
      ++n_all;
      std::string why = expected_skip(nl->name);
      std::string klass = nl->lin.class_name();
      if (why.empty()) {
        if (klass != want)
          bad.push_back(str(nl->name, " is ", klass, ", expected ", want));
        else
          ++n_q;
      } else if (klass != "Linear") {
        bad.push_back(str(nl->name, " is ", klass, " but transformers keeps it unquantized (", why, ")"));
      } else {
        skipped.push_back(str(nl->name, " (", why, ")"));
      }
    }
    if (!bad.empty()) return add("layer_types", false, join(bad));
    add("layer_types", true,
        str(n_q, " of ", n_all, " Linear layers are ", want,
            "; skipped: ", skipped.empty() ? "none" : join(skipped)));
  }

  void weight_dtypes() {
    if (!m.qc) return add("weight_dtypes", false, "the model is not quantized");
    const DType compute = m.qc->compute_dtype(), storage = m.qc->quant_storage();
    std::vector<std::string> bad;
    std::set<std::string> kept;
    for (const NamedLinear* nl : m.linears()) {
      const nn::Linear& l = nl->lin;
      DType d = l.weight().dtype();
      if (is_4bit(l)) {
        if (d != DType::U8 && d != storage)
          bad.push_back(str(nl->name, ": packed weight is ", torch_dtype_name(d), ", expected uint8 (or ",
                            torch_dtype_name(storage), ")"));
        if (l.compute_dtype() != compute)
          bad.push_back(str(nl->name, ": compute dtype ", torch_dtype_name(l.compute_dtype()),
                            ", configured ", torch_dtype_name(compute)));
      } else if (l.format() == nn::WeightFormat::Int8) {
        if (d != DType::I8)
          bad.push_back(str(nl->name, ": weight is ", torch_dtype_name(d), ", expected int8"));
        if (l.scb().dtype() != DType::F32)
          bad.push_back(str(nl->name, ": SCB is ", torch_dtype_name(l.scb().dtype()), ", expected float32"));
      } else {
        if (!is_float(d)) bad.push_back(str(nl->name, ": unquantized weight is ", torch_dtype_name(d)));
        kept.insert(torch_dtype_name(d));
      }
    }
    if (!bad.empty()) return add("weight_dtypes", false, join(bad));
    std::string kept_s;
    for (const auto& k : kept) kept_s += (kept_s.empty() ? "" : "/") + k;
    std::string d = m.qc->load_in_4bit ? str("4-bit weights packed ", torch_dtype_name(storage), ", compute ",
                                             torch_dtype_name(compute))
                                       : std::string("8-bit weights int8 with float32 SCB");
    if (!kept_s.empty()) d += str("; unquantized Linear weights ", kept_s);
    add("weight_dtypes", true, d);
  }

  void configuration() {
    if (!m.qc) return add("configuration", false, "no quantization_config: the model is not quantized");
    const BitsAndBytesConfig& qc = *m.qc;
    std::vector<std::string> bad;
    if (!qc.is_quantized()) bad.push_back("is_quantized is false");
    std::string method = qc.quantization_method().value_or("none");
    if (m.prequantized) {
      const nlohmann::json& raw = m.config.raw.at("quantization_config");
      if (!raw.contains("quant_method") || raw["quant_method"] != "bitsandbytes")
        bad.push_back(str(m.config.origin, ": quantization_config.quant_method is ",
                          raw.contains("quant_method") ? raw["quant_method"].dump() : "absent",
                          ", expected \"bitsandbytes\""));
    }
    // Every layer's quantization state must be what the config says.
    for (const NamedLinear* nl : m.linears()) {
      const nn::Linear& l = nl->lin;
      if (!is_quantized(l)) continue;
      if (is_4bit(l)) {
        if (!qc.load_in_4bit) {
          bad.push_back(str(nl->name, " holds 4-bit state but the config is ", method));
          continue;
        }
        const QuantState4& st = l.quant_state();
        const char* t = st.quant_type == DType::NF4 ? "nf4" : "fp4";
        if (qc.bnb_4bit_quant_type != t)
          bad.push_back(str(nl->name, ": quant_state is ", t, ", config bnb_4bit_quant_type is ",
                            qc.bnb_4bit_quant_type));
        if (st.nested != qc.bnb_4bit_use_double_quant)
          bad.push_back(str(nl->name, ": quant_state ", st.nested ? "is" : "is not",
                            " double-quantized, config bnb_4bit_use_double_quant is ",
                            qc.bnb_4bit_use_double_quant ? "true" : "false"));
        if (st.blocksize != 64)
          bad.push_back(str(nl->name, ": blocksize ", st.blocksize, ", transformers uses 64"));
      } else if (!qc.load_in_8bit) {
        bad.push_back(str(nl->name, " holds LLM.int8 state but the config is ", method));
      }
    }
    if (!bad.empty()) return add("configuration", false, join(bad));
    std::string d = str("quantization_config present, is_quantized true, method ", method);
    if (qc.load_in_4bit) d += qc.bnb_4bit_use_double_quant ? " + double quant" : "";
    d += m.prequantized ? " (read from config.json)" : " (quantized on load)";
    add("configuration", true, d);
  }

  // Ids for the logits comparisons when the caller gave no prompt: a fixed spread over the vocabulary.
  std::vector<int64_t> probe_ids() const {
    if (!o.prompt_ids.empty()) return o.prompt_ids;
    std::vector<int64_t> ids;
    for (int64_t i = 0; i < 8; ++i) ids.push_back((i * 7919 + 11) % m.config.vocab_size);
    return ids;
  }

  void round_trip() {
    const BitsAndBytesConfig& qc = *m.qc;
    std::vector<std::string> bad;
    // (a) the config through its JSON and back
    BitsAndBytesConfig back = BitsAndBytesConfig::from_dict(nlohmann::json::parse(qc.to_json_string(false)));
    if (back.to_dict() != qc.to_dict())
      bad.push_back("BitsAndBytesConfig differs after to_json_string / from_dict");
    if (back.to_json_string() != qc.to_json_string())
      bad.push_back("to_json_string differs after a round trip");
    // (b) save_pretrained, load, compare everything
    std::filesystem::path base = o.work_dir ? *o.work_dir : std::filesystem::temp_directory_path();
    std::random_device rd;
    std::filesystem::path dir = base / str("nibble-verify-", std::hex, rd(), rd());
    struct Cleanup {
      std::filesystem::path p;
      ~Cleanup() {
        std::error_code ec;
        std::filesystem::remove_all(p, ec);
      }
    } cleanup{dir};
    model.save_pretrained(dir);
    LoadOptions lo;  // the same placement (a split model comes back split the same way)
    lo.device_map_modules = model.hf_device_map();
    CausalLM again = AutoModelForCausalLM::from_pretrained(dir, lo);
    const CausalLM::Impl& a = again.impl();
    if (!a.qc || a.qc->to_dict() != qc.to_dict())
      bad.push_back("quantization_config differs after save_pretrained + load");
    auto same = [](const Tensor& x, const Tensor& y) {
      if (x.defined() != y.defined()) return false;
      if (!x.defined()) return true;
      if (x.dtype() != y.dtype() || x.numel() != y.numel()) return false;
      Tensor cx = x.to(Device::cpu()).contiguous(), cy = y.to(Device::cpu()).contiguous();
      return std::memcmp(cx.data_ptr(), cy.data_ptr(), cx.nbytes()) == 0;
    };
    auto l0 = m.linears(), l1 = a.linears();
    if (l0.size() != l1.size()) bad.push_back("a different number of Linear layers after reload");
    for (size_t i = 0; i < std::min(l0.size(), l1.size()); ++i) {
      const nn::Linear &x = l0[i]->lin, &y = l1[i]->lin;
      std::string n = l0[i]->name;
      if (x.format() != y.format()) {
        bad.push_back(str(n, ": ", format_name(x.format()), " became ", format_name(y.format())));
        continue;
      }
      if (!same(x.weight(), y.weight())) bad.push_back(str(n, ": weight bytes differ"));
      if (!same(x.bias(), y.bias())) bad.push_back(str(n, ": bias differs"));
      if (is_4bit(x)) {
        auto dx = quant_state_to_dict(x.quant_state()), dy = quant_state_to_dict(y.quant_state());
        bool eq = dx.size() == dy.size();
        for (const auto& [k, t] : dx) eq = eq && dy.count(k) && same(t, dy.at(k));
        if (!eq) bad.push_back(str(n, ": quantization state differs"));
      }
      if (x.format() == nn::WeightFormat::Int8 && !same(x.scb(), y.scb()))
        bad.push_back(str(n, ": SCB differs"));
    }
    if (!same(m.embed, a.embed)) bad.push_back("embedding differs");
    if (model.get_memory_footprint() != again.get_memory_footprint())
      bad.push_back("footprint differs after reload");
    std::vector<int64_t> ids = probe_ids();
    Tensor x = model.forward(ids), y = again.forward(ids);
    if (!same(x, y)) bad.push_back(str("logits of ", ids.size(), " tokens differ after reload"));
    if (!bad.empty()) return add("round_trip", false, join(bad));
    add("round_trip", true,
        str("config JSON round trip equal; save_pretrained + load: quantization state, weights and logits (",
            ids.size(), " tokens) bit-identical"));
  }

  void generation() {
    GenerationReport g;
    g.output = model.generate_greedy(o.prompt_ids, o.max_new_tokens);
    auto decode = o.decode ? o.decode : default_decode;
    g.text = decode(g.output);
    std::vector<std::string> bad, info;
    const int64_t P = int64_t(o.prompt_ids.size());
    if (ref_dir) {
      g.reference_output = reference().generate_greedy(o.prompt_ids, o.max_new_tokens);
      for (int64_t i = P; i < int64_t(std::min(g.output.size(), g.reference_output.size())); ++i) {
        ++g.compared;
        if (g.output[size_t(i)] == g.reference_output[size_t(i)])
          ++g.agreeing;
        else if (g.first_divergence < 0)
          g.first_divergence = i - P;
      }
      double agree = g.compared ? double(g.agreeing) / double(g.compared) : 1.0;
      info.push_back(str(g.agreeing, "/", g.compared, " new tokens agree with the unquantized model",
                         g.first_divergence >= 0 ? str(", first divergence at new token ", g.first_divergence)
                                                 : std::string()));
      if (agree < o.min_token_agreement)
        bad.push_back(str("token agreement ", fixed(agree, 3), " is below ", fixed(o.min_token_agreement, 3),
                          " (", g.agreeing, "/", g.compared, ")"));
    }
    if (!o.expected_outputs.empty()) {
      bool found =
          std::find(o.expected_outputs.begin(), o.expected_outputs.end(), g.text) != o.expected_outputs.end();
      if (found)
        info.push_back(str("output is one of the ", o.expected_outputs.size(), " expected"));
      else
        bad.push_back(
            str("output \"", g.text, "\" is not among the ", o.expected_outputs.size(), " expected outputs"));
    }
    if (bad.empty()) info.push_back(str("output \"", g.text, "\""));
    r.generation = g;
    if (!bad.empty()) {
      for (auto& i : info) bad.push_back(i);
      return add("generation", false, join(bad));
    }
    add("generation", true, join(info));
  }

  // Original weights, one at a time, from the reference checkpoint.
  void layer_error() {
    Checkpoint ck = Checkpoint::open(*ref_dir);
    std::vector<std::string> flagged;
    int64_t measured = 0;
    double worst = 0, worst_limit = 0;
    std::string worst_name;
    auto lins = m.linears();
    for (size_t i = 0; i < lins.size(); ++i) {
      const nn::Linear& l = lins[i]->lin;
      if (!is_quantized(l)) continue;
      LayerReport& lr = r.layers[i];
      std::string module = lins[i]->name;
      if (module == m.spec->lm_head && !m.spec->lm_head_tensor.empty()) module = m.spec->lm_head_tensor;
      std::string wname = module + ".weight";
      if (!ck.contains(wname) && lins[i] == &m.lm_head && m.tied_head)
        wname = m.spec->prefix + m.spec->embed + ".weight";
      if (!ck.contains(wname))
        throw FormatError(str(ref_dir->string(), ": reference lacks tensor '", wname, "'"));
      Tensor w = ck.get(wname);
      if (!is_float(w.dtype()))
        throw FormatError(str(ref_dir->string(), ": reference tensor '", wname, "' is ",
                              torch_dtype_name(w.dtype()), ", not a float weight"));
      w = w.to(DType::F32);
      if (m.spec->conv1d) w = w.transpose(0, 1).contiguous();
      if (w.shape() != Shape{l.out_features(), l.in_features()})
        throw FormatError(
            str(ref_dir->string(), ": reference tensor '", wname, "' has shape ", shape_str(w.shape())));
      Tensor d = dequantized_weight(l);
      const float *pw = w.data<float>(), *pd = d.data<float>();
      double e2 = 0, w2 = 0, eabs = 0, wabs = 0, emax = 0;
      for (int64_t k = 0; k < w.numel(); ++k) {
        double e = double(pw[k]) - double(pd[k]);
        e2 += e * e;
        w2 += double(pw[k]) * pw[k];
        eabs += std::abs(e);
        wabs += std::abs(double(pw[k]));
        emax = std::max(emax, std::abs(e));
      }
      ck.release(wname);
      lr.has_error = true;
      lr.rel_error = w2 > 0 ? std::sqrt(e2 / w2) : (e2 > 0 ? INFINITY : 0.0);
      lr.snr_db = e2 > 0 ? 10.0 * std::log10(w2 / e2) : INFINITY;
      lr.max_abs_error = emax;
      lr.norm_mean_abs_error = wabs > 0 ? eabs / (std::sqrt(M_PI / 2) * wabs) : (eabs > 0 ? INFINITY : 0.0);
      lr.error_limit = error_limit(l.format());
      lr.flagged = !(lr.norm_mean_abs_error <= lr.error_limit);
      ++measured;
      if (lr.norm_mean_abs_error > worst || worst_name.empty())
        worst = lr.norm_mean_abs_error, worst_name = lr.name, worst_limit = lr.error_limit;
      if (lr.flagged)
        flagged.push_back(str(lr.name, ": mean abs error ", fixed(lr.norm_mean_abs_error), " sigma > ",
                              fixed(lr.error_limit), " (rel ", fixed(lr.rel_error), ", SNR ",
                              fixed(lr.snr_db, 1), " dB)"));
    }
    if (!flagged.empty())
      return add(
          "layer_error", false,
          str(flagged.size(), " of ", measured, " layers outside bitsandbytes' yardstick: ", join(flagged)));
    add("layer_error", true,
        str(measured, " layers within bitsandbytes' yardsticks; worst ", worst_name, " mean abs error ",
            fixed(worst), " sigma (limit ", fixed(worst_limit), ")"));
  }

  void logits() {
    const CausalLM& refm = reference();
    const std::vector<int64_t>& ids = o.text_ids;
    int64_t chunk = std::max<int64_t>(2, o.chunk_tokens);
    if (m.config.max_position_embeddings > 0) chunk = std::min(chunk, m.config.max_position_embeddings);
    LogitReport lr;
    double kl = 0, nll_q = 0, nll_p = 0;
    int64_t agree = 0, targets = 0;
    const int64_t V = m.config.vocab_size;
    std::vector<double> lq(size_t(V), 0.0), lp(size_t(V), 0.0);
    auto log_softmax = [&](const float* row, std::vector<double>& out) {
      const double lse = ops::log_sum_exp(row, V);
      for (int64_t j = 0; j < V; ++j) out[size_t(j)] = double(row[j]) - lse;
    };
    for (size_t start = 0; start < ids.size(); start += size_t(chunk)) {
      std::vector<int64_t> part(ids.begin() + long(start),
                                ids.begin() + long(std::min(ids.size(), start + size_t(chunk))));
      if (part.size() < 2 && start > 0) break;                 // a lone trailing token predicts nothing
      Tensor q = model.forward(part), p = refm.forward(part);  // [T, V] each
      for (int64_t t = 0; t < int64_t(part.size()); ++t) {
        const float* qr = q.data<float>() + t * V;
        const float* pr = p.data<float>() + t * V;
        log_softmax(qr, lq);
        log_softmax(pr, lp);
        double k = 0;
        for (int64_t j = 0; j < V; ++j) k += std::exp(lp[size_t(j)]) * (lp[size_t(j)] - lq[size_t(j)]);
        kl += k;
        agree += (std::max_element(qr, qr + V) - qr) == (std::max_element(pr, pr + V) - pr);
        ++lr.positions;
        if (t + 1 < int64_t(part.size())) {
          nll_q -= lq[size_t(part[size_t(t + 1)])];
          nll_p -= lp[size_t(part[size_t(t + 1)])];
          ++targets;
        }
      }
    }
    lr.mean_kl = kl / double(lr.positions);
    lr.top1_agreement = double(agree) / double(lr.positions);
    lr.perplexity = std::exp(nll_q / double(std::max<int64_t>(targets, 1)));
    lr.reference_perplexity = std::exp(nll_p / double(std::max<int64_t>(targets, 1)));
    r.logits = lr;
    std::string d = str("over ", lr.positions, " positions (chunks of ", chunk, "): KL ",
                        fixed(lr.mean_kl, 5), " nats, top-1 ", fixed(lr.top1_agreement, 4), ", perplexity ",
                        fixed(lr.perplexity, 3), " vs ", fixed(lr.reference_perplexity, 3), " unquantized");
    std::vector<std::string> bad;
    if (!(lr.mean_kl <= o.max_kl)) bad.push_back(str("mean KL ", fixed(lr.mean_kl, 5), " > ", o.max_kl));
    if (!(lr.top1_agreement >= o.min_top1))
      bad.push_back(str("top-1 agreement ", fixed(lr.top1_agreement, 4), " < ", o.min_top1));
    if (!bad.empty()) return add("logits", false, join(bad) + "; " + d);
    add("logits", true, d);
  }

  void run() {
    if (o.reference)
      ref_dir = *o.reference;
    else if (m.qc && !m.prequantized)
      ref_dir = m.source_dir;
    layer_list();
    footprint();
    layer_types();
    weight_dtypes();
    configuration();
    if (o.prompt_ids.empty())
      r.notes.push_back("generation: not run (no prompt)");
    else
      generation();
    if (!m.qc)
      r.notes.push_back("round_trip: not run (the model is not quantized)");
    else if (o.round_trip)
      round_trip();
    else
      r.notes.push_back("round_trip: skipped (switched off)");
    if (!m.qc)
      r.notes.push_back("layer_error, logits: not run (the model is not quantized)");
    else if (!ref_dir)
      r.notes.push_back("layer_error, logits: not run (a pre-quantized model needs --reference)");
    else if (m.qc)
      layer_error();
    if (m.qc && ref_dir && o.text_ids.size() >= 2)
      logits();
    else if (m.qc && ref_dir)
      r.notes.push_back("logits: not run (no text)");
  }
};

}  // namespace

FootprintReport footprint_report(const CausalLM& model) {
  const CausalLM::Impl& m = model.impl();
  FootprintReport f;
  f.footprint_bytes = model.get_memory_footprint();
  FootprintReport predicted = footprint_from_config(m.config, m.qc, m.embed.dtype());
  f.footprint_16bit_bytes = predicted.footprint_16bit_bytes;
  f.ratio_vs_16bit = double(f.footprint_16bit_bytes) / double(f.footprint_bytes);
  f.params_total = predicted.params_total;
  int64_t q_bytes = 0, state = 0;
  for (const NamedLinear* nl : m.linears()) {
    const nn::Linear& l = nl->lin;
    if (!is_quantized(l)) continue;
    int64_t s = is_4bit(l) ? l.quant_state().state_bytes() : int64_t(l.scb().nbytes());
    state += s;
    q_bytes += int64_t(l.weight().nbytes()) + s;
    f.params_quantized += l.out_features() * l.in_features();
  }
  f.true_bytes = f.footprint_bytes + state;
  f.bits_per_param = f.params_quantized ? 8.0 * double(q_bytes) / double(f.params_quantized) : 0.0;
  return f;
}

VerifyReport verify(const CausalLM& model, const VerifyOptions& options) {
  VerifyReport r;
  for (int64_t id : options.prompt_ids)
    if (id < 0 || id >= model.config().vocab_size)
      throw ShapeError(str("verify: prompt id ", id, " is outside the vocabulary"));
  for (int64_t id : options.text_ids)
    if (id < 0 || id >= model.config().vocab_size)
      throw ShapeError(str("verify: text id ", id, " is outside the vocabulary"));
  Verifier v{model, model.impl(), options, r, std::nullopt, nullptr};
  v.run();
  return r;
}

}  // namespace nibble
