// Which SIMD level the CPU kernels run at. Levels are ordered: each implies the ones below.
// The level is detected once (CPUID, XGETBV for the state the OS saves, and for AMX the
// kernel's permission plus a probe tile instruction run in a forked child), can be forced
// with NIBBLE_CPU_ISA=scalar|avx2|avx512|avx512bf16|amx (a level this machine lacks is a clear
// error on first use), and tests lower it in-process with set_cpu_isa / set_portable_kernels.
#pragma once

namespace nibble::cpu {

enum class Isa {
  Scalar = 0,      // portable C++ (also every non-x86 build)
  Avx2 = 1,        // AVX2 + FMA + F16C
  Avx512 = 2,      // + AVX-512 F/BW/VL/DQ (zmm state enabled by the OS)
  Avx512Bf16 = 3,  // + AVX512_BF16 (vdpbf16ps, vcvtne2ps2bf16) and AVX512_VNNI
  Amx = 4,         // + AMX tiles granted by the OS and a probe tile op that ran
};

const char* isa_name(Isa isa);
// Highest level this CPU and OS provide (never AMX on CPUID alone).
Isa detected_isa();
// The level kernels use now: the forced or detected level, lowered by set_cpu_isa.
// Throws UnsupportedError if NIBBLE_CPU_ISA names a level this machine lacks or no level.
Isa active_isa();
inline bool isa_at_least(Isa want) {
  return int(active_isa()) >= int(want);
}
// Caps the level for this process (tests run every path in turn); throws UnsupportedError if
// the machine lacks it. Isa::Scalar is what set_portable_kernels(true) selects.
void set_cpu_isa(Isa isa);
// Back to the NIBBLE_CPU_ISA / detected level.
void reset_cpu_isa();

}  // namespace nibble::cpu
