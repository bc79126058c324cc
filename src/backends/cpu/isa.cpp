// Run-time ISA detection. CPUID says what the core implements; XGETBV says which register
// state the OS saves on a context switch (without it AVX/AVX-512 instructions fault or lose
// state), so a level needs both. AMX needs more: Linux hands out tile data state only after
// arch_prctl(ARCH_REQ_XCOMP_PERM), and a VM may still fault on tile instructions, so one is
// tried in a forked child first. (The probe's own GCC 12 _tile_loadconfig once lost the tile
// shape and faulted, which read as "AMX faults here"; see amx_tiles.h.)
#include "backends/cpu/isa.h"

#include "backends/cpu/amx_tiles.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "nibble/error.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#endif

namespace nibble::cpu {

namespace {

#if defined(__x86_64__)
struct Regs {
  unsigned a = 0, b = 0, c = 0, d = 0;
};
Regs cpuid(unsigned leaf, unsigned sub) {
  Regs r;
  if (!__get_cpuid_count(leaf, sub, &r.a, &r.b, &r.c, &r.d)) r = Regs{};
  return r;
}
uint64_t xgetbv0() {
  unsigned lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t(hi) << 32) | lo;
}
bool bit(unsigned v, int i) {
  return (v >> i) & 1u;
}

// The SIMD levels up to Avx512Bf16 (no AMX: that needs the probe).
Isa detect_simd() {
  const Regs l1 = cpuid(1, 0);
  if (!bit(l1.c, 27)) return Isa::Scalar;  // OSXSAVE: XGETBV usable
  const uint64_t xcr0 = xgetbv0();
  const bool os_avx = (xcr0 & 0x6) == 0x6;       // XMM + YMM state
  const bool os_avx512 = (xcr0 & 0xe6) == 0xe6;  // + opmask, ZMM_Hi256, Hi16_ZMM
  const Regs l7 = cpuid(7, 0), l7s1 = cpuid(7, 1);
  const bool avx2 = os_avx && bit(l1.c, 28) && bit(l1.c, 12) && bit(l1.c, 29) && bit(l7.b, 5);
  if (!avx2) return Isa::Scalar;
  const bool avx512 = os_avx512 && bit(l7.b, 16) && bit(l7.b, 17) && bit(l7.b, 30) && bit(l7.b, 31);
  if (!avx512) return Isa::Avx2;
  const bool bf16 = bit(l7s1.a, 5) && bit(l7.c, 11);  // AVX512_BF16 + AVX512_VNNI
  return bf16 ? Isa::Avx512Bf16 : Isa::Avx512;
}

// Runs in the forked child: configure one 16 x 64-byte tile, zero it, release.
__attribute__((target("amx-tile"))) void amx_probe_child() {
  const TileConfig cfg = tiles_16x64(1);
  load_tile_config(cfg);
  _tile_zero(0);
  _tile_release();
}

bool amx_usable_uncached() {
  const Regs l7 = cpuid(7, 0);
  if (!(bit(l7.d, 24) && bit(l7.d, 25) && bit(l7.d, 22))) return false;  // AMX-TILE, INT8, BF16
  if ((xgetbv0() & 0x60000) != 0x60000) return false;                    // XTILECFG + XTILEDATA
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) return false;
  const pid_t pid = fork();
  if (pid < 0) return false;
  if (pid == 0) {  // child: only the probe and _exit (async-signal-safe after fork)
    amx_probe_child();
    _exit(0);
  }
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return false;
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}
#else
Isa detect_simd() {
  return Isa::Scalar;
}
bool amx_usable_uncached() {
  return false;
}
#endif

bool amx_usable() {
  static const bool ok = amx_usable_uncached();
  return ok;
}

bool available(Isa isa) {
  if (isa == Isa::Amx) return detect_simd() == Isa::Avx512Bf16 && amx_usable();
  return int(isa) <= int(detect_simd());
}

// NIBBLE_CPU_ISA, or the detected level (AMX included when granted and the probe ran).
Isa base_isa() {
  static const Isa base = [] {
    const char* env = std::getenv("NIBBLE_CPU_ISA");
    if (!env || !*env) return detected_isa();
    for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16, Isa::Amx})
      if (std::strcmp(env, isa_name(isa)) == 0) {
        if (!available(isa))
          throw UnsupportedError(
              detail::str("NIBBLE_CPU_ISA=", env,
                          ": this CPU/OS does not provide it (best here: ", isa_name(detected_isa()), ")"));
        return isa;
      }
    throw ConfigError(detail::str("NIBBLE_CPU_ISA=", env,
                                  ": unknown level (expected scalar, avx2, avx512, avx512bf16 or amx)"));
  }();
  return base;
}

std::atomic<int> g_cap{-1};  // -1: no cap; else the highest Isa tests allow

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar:
      return "scalar";
    case Isa::Avx2:
      return "avx2";
    case Isa::Avx512:
      return "avx512";
    case Isa::Avx512Bf16:
      return "avx512bf16";
    case Isa::Amx:
      return "amx";
  }
  return "?";
}

Isa detected_isa() {
  const Isa simd = detect_simd();
  return simd == Isa::Avx512Bf16 && amx_usable() ? Isa::Amx : simd;
}

Isa active_isa() {
  const Isa base = base_isa();
  const int cap = g_cap.load(std::memory_order_relaxed);
  return cap >= 0 && cap < int(base) ? Isa(cap) : base;
}

void set_cpu_isa(Isa isa) {
  if (!available(isa))
    throw UnsupportedError(detail::str("CPU ISA ", isa_name(isa),
                                       " is not available here (best: ", isa_name(detected_isa()), ")"));
  g_cap.store(int(isa));
}

void reset_cpu_isa() {
  g_cap.store(-1);
}

}  // namespace nibble::cpu
