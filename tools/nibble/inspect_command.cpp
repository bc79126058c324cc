// `nibble inspect MODEL`: the tensors of a checkpoint (name, dtype, shape, bytes) and totals.
// The module tree with layer classes comes with the model layer.
#include <cstdio>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "nibble/safetensors.h"

namespace nibble::cli {

void add_inspect_command(CLI::App& app, InspectArgs& a) {
  CLI::App* cmd = app.add_subcommand("inspect", "list a checkpoint's tensors with dtype, shape and bytes");
  cmd->add_option("MODEL", a.model, "model folder or .safetensors file")->required();
  cmd->add_flag("--json", a.json, "machine-readable output");
}

int run_inspect(const InspectArgs& a) {
  Checkpoint ck = Checkpoint::open(a.model);
  int64_t total = 0, params = 0;
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  for (const auto& name : ck.names()) {
    const TensorInfo& ti = ck.info(name);
    int64_t n = shape_numel(ti.shape), bytes = int64_t(ti.end - ti.begin);
    total += bytes;
    params += n;
    if (a.json) {
      list.push_back({{"name", name}, {"dtype", dtype_name(ti.dtype)}, {"shape", ti.shape}, {"bytes", bytes}});
    } else {
      std::printf("%-52s %-5s %-16s %12lld\n", name.c_str(), dtype_name(ti.dtype), shape_str(ti.shape).c_str(),
                  static_cast<long long>(bytes));
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

}  // namespace nibble::cli
