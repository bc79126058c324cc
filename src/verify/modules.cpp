// module_report: the leaf modules of a loaded model (as CausalLM::modules() names them) with
// the dtype, shape and bytes of what each holds, for `nibble inspect`.
#include <map>

#include "models/causal_lm_impl.h"
#include "nibble/verify.h"
#include "verify/verify_internal.h"

namespace nibble {

using verify_detail::torch_dtype_name;

std::vector<ModuleReport> module_report(const CausalLM& model) {
  const CausalLM::Impl& m = model.impl();
  const models::ArchSpec& s = *m.spec;
  std::map<std::string, ModuleReport> by_name;
  auto tensor_module = [&](const std::string& name, const Tensor& w, const Tensor& b) {
    if (!w.defined()) return;
    ModuleReport r;
    r.dtype = torch_dtype_name(w.dtype());
    r.shape = w.shape();
    r.params = w.numel() + (b.defined() ? b.numel() : 0);
    r.bytes = int64_t(w.nbytes()) + (b.defined() ? int64_t(b.nbytes()) : 0);
    by_name[name] = r;
  };
  auto norm = [&](const std::string& name, const Norm& n) { tensor_module(name, n.w, n.b); };
  const std::string P = s.prefix;
  tensor_module(P + s.embed, m.embed, Tensor());
  tensor_module(P + s.pos_embed, m.pos_embed, Tensor());
  norm(P + s.embed_norm, m.embed_norm);
  norm(P + s.final_norm, m.final_norm);
  for (size_t i = 0; i < m.layers.size(); ++i) {
    const DecoderLayer& L = m.layers[i];
    std::string lp = P + s.layers + "." + std::to_string(i) + ".";
    norm(lp + s.attn_norm, L.attn_norm);
    norm(lp + s.mlp_norm, L.mlp_norm);
    norm(lp + s.post_attn_norm, L.post_attn_norm);
    norm(lp + s.post_mlp_norm, L.post_mlp_norm);
    norm(lp + s.attn + "." + s.q_norm, L.q_norm);
    norm(lp + s.attn + "." + s.k_norm, L.k_norm);
  }
  for (const NamedLinear* nl : m.linears()) {
    const nn::Linear& l = nl->lin;
    ModuleReport r;
    r.dtype = torch_dtype_name(l.weight().dtype());
    r.shape = {l.out_features(), l.in_features()};
    r.params = l.out_features() * l.in_features() + (l.bias().defined() ? l.bias().numel() : 0);
    r.bytes = (nl == &m.lm_head && m.tied_head) ? 0 : l.footprint_bytes();
    r.state_bytes = l.traits().state_bytes(l);
    by_name[nl->name] = r;
  }
  std::vector<ModuleReport> out;
  for (const ModuleInfo& mi : model.modules()) {
    ModuleReport r;
    auto it = by_name.find(mi.name);
    if (it != by_name.end()) r = it->second;
    r.name = mi.name;
    r.klass = mi.klass;
    out.push_back(r);
  }
  return out;
}

}  // namespace nibble
