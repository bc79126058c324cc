// isa.h's levels on any target: every level up to the detected one can be set and caps the
// kernels, every level above it is refused with UnsupportedError, and a build without x86-64
// kernels (aarch64, scripts/cross_arm64.sh) detects the scalar level only.
#include <gtest/gtest.h>

#include "backends/cpu/isa.h"
#include "cpu_isa_mode.h"
#include "nibble/error.h"

using namespace nibble;

TEST(CpuIsa, LevelsUpToDetectedSetAboveRefused) {
  const cpu::Isa top = cpu::detected_isa();
  for (cpu::Isa isa : test::cpu_isas()) {
    SCOPED_TRACE(cpu::isa_name(isa));
    test::IsaMode mode(isa);
    EXPECT_LE(int(cpu::active_isa()), int(isa));  // NIBBLE_CPU_ISA may force a lower one
  }
  for (int i = int(top) + 1; i <= int(cpu::Isa::Amx); ++i)
    EXPECT_THROW(cpu::set_cpu_isa(cpu::Isa(i)), UnsupportedError) << cpu::isa_name(cpu::Isa(i));
  EXPECT_LE(int(cpu::active_isa()), int(top));
#if !defined(__x86_64__)
  EXPECT_EQ(top, cpu::Isa::Scalar);
  EXPECT_EQ(cpu::active_isa(), cpu::Isa::Scalar);
#endif
}
