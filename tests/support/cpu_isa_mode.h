// Runs CPU kernels at each SIMD level this machine has (isa.h), so every SIMD path is checked
// against the scalar reference on the same inputs.
#pragma once

#include <vector>

#include "backends/cpu/isa.h"

namespace nibble::test {

// Scalar up to the detected SIMD level (AMX only where granted and probed).
inline std::vector<cpu::Isa> cpu_isas() {
  std::vector<cpu::Isa> v;
  for (int i = 0; i <= int(cpu::detected_isa()); ++i) v.push_back(cpu::Isa(i));
  return v;
}

// Caps the kernels at one level for its lifetime.
struct IsaMode {
  explicit IsaMode(cpu::Isa isa) { cpu::set_cpu_isa(isa); }
  ~IsaMode() { cpu::reset_cpu_isa(); }
  IsaMode(const IsaMode&) = delete;
  IsaMode& operator=(const IsaMode&) = delete;
};

}  // namespace nibble::test
