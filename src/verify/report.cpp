// VerifyReport's renderings: the JSON object of `nibble verify --json` and the terminal table.
#include <cmath>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "nibble/verify.h"

namespace nibble {

namespace {

// JSON has no infinity: an error-free layer's SNR is written as null.
nlohmann::ordered_json num(double v) {
  return std::isfinite(v) ? nlohmann::ordered_json(v) : nlohmann::ordered_json();
}

std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

}  // namespace

bool VerifyReport::passed() const {
  for (const auto& c : checks)
    if (!c.passed) return false;
  return true;
}

const VerifyCheck* VerifyReport::check(const std::string& name) const {
  for (const auto& c : checks)
    if (c.name == name) return &c;
  return nullptr;
}

nlohmann::json VerifyReport::to_json() const {
  nlohmann::ordered_json j;
  j["passed"] = passed();
  nlohmann::ordered_json cs = nlohmann::ordered_json::array();
  for (const auto& c : checks) cs.push_back({{"name", c.name}, {"passed", c.passed}, {"detail", c.detail}});
  j["checks"] = cs;
  const FootprintReport& f = footprint;
  j["footprint"] = {
      {"footprint_bytes", f.footprint_bytes}, {"footprint_16bit_bytes", f.footprint_16bit_bytes},
      {"ratio_vs_16bit", f.ratio_vs_16bit},   {"true_bytes", f.true_bytes},
      {"params_total", f.params_total},       {"params_quantized", f.params_quantized},
      {"bits_per_param", f.bits_per_param}};
  nlohmann::ordered_json ls = nlohmann::ordered_json::array();
  for (const auto& l : layers) {
    nlohmann::ordered_json e{{"name", l.name}, {"class", l.klass}, {"format", l.format}, {"dtype", l.dtype}};
    if (!l.compute_dtype.empty()) e["compute_dtype"] = l.compute_dtype;
    e["shape"] = l.shape;
    e["bytes"] = l.bytes;
    e["state_bytes"] = l.state_bytes;
    if (!l.skip_reason.empty()) e["skip_reason"] = l.skip_reason;
    if (l.has_error) {
      e["rel_error"] = num(l.rel_error);
      e["snr_db"] = num(l.snr_db);
      e["max_abs_error"] = num(l.max_abs_error);
      e["norm_mean_abs_error"] = num(l.norm_mean_abs_error);
      e["error_limit"] = l.error_limit;
      e["flagged"] = l.flagged;
    }
    ls.push_back(e);
  }
  j["layers"] = ls;
  if (generation) {
    const GenerationReport& g = *generation;
    nlohmann::ordered_json e{{"output_ids", g.output}, {"text", g.text}};
    if (!g.reference_output.empty()) {
      e["reference_ids"] = g.reference_output;
      e["agreeing"] = g.agreeing;
      e["compared"] = g.compared;
      e["first_divergence"] = g.first_divergence;
    }
    j["generation"] = e;
  }
  if (logits) {
    const LogitReport& l = *logits;
    j["logits"] = {{"positions", l.positions},
                   {"mean_kl", num(l.mean_kl)},
                   {"top1_agreement", l.top1_agreement},
                   {"perplexity", num(l.perplexity)},
                   {"reference_perplexity", num(l.reference_perplexity)}};
  }
  j["notes"] = notes;
  return nlohmann::json(j);
}

std::string VerifyReport::to_table() const {
  std::string s;
  for (const auto& c : checks)
    s += std::string(c.passed ? "PASS  " : "FAIL  ") + c.name +
         std::string(15 - std::min<size_t>(14, c.name.size()), ' ') + c.detail + "\n";
  for (const auto& n : notes) s += "  -   " + n + "\n";
  const FootprintReport& f = footprint;
  s += "\nfootprint " + std::to_string(f.footprint_bytes) + " B (16-bit " +
       std::to_string(f.footprint_16bit_bytes) + " B, ratio " + fmt("%.6f", f.ratio_vs_16bit) +
       "), with quantization state " + std::to_string(f.true_bytes) + " B";
  if (f.params_quantized) s += ", " + fmt("%.3f", f.bits_per_param) + " bits/param in quantized layers";
  s += "\n\n";
  char line[512];
  std::snprintf(line, sizeof line, "%-44s %-13s %-8s %-12s %10s %9s %8s %10s\n", "layer", "class", "dtype",
                "shape", "bytes", "rel.err", "SNR dB", "note");
  s += line;
  for (const auto& l : layers) {
    std::string shape = std::to_string(l.shape.at(0)) + "x" + std::to_string(l.shape.at(1));
    std::string err = l.has_error ? fmt("%.5f", l.rel_error) : "-",
                snr = l.has_error ? fmt("%.1f", l.snr_db) : "-";
    std::string note = l.flagged ? "FLAGGED" : l.skip_reason;
    std::snprintf(line, sizeof line, "%-44s %-13s %-8s %-12s %10lld %9s %8s %s\n", l.name.c_str(),
                  l.klass.c_str(), l.dtype.c_str(), shape.c_str(), static_cast<long long>(l.bytes),
                  err.c_str(), snr.c_str(), note.c_str());
    s += line;
  }
  s += passed() ? "\nall checks passed\n" : "\nsome checks FAILED\n";
  return s;
}

}  // namespace nibble
