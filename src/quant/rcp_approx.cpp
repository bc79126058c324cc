// rcp_approx: IEEE 1/m for the mantissa m in [1, 2), corrected by one ulp where the GPU's
// rcp.approx differs (a 2-bit code per mantissa, zlib-compressed in data/rcp_approx_sm90.bin.z
// and linked into the binary with .incbin), then scaled by the exponent with flush-to-zero.
#include <zlib.h>

#include <cmath>
#include <limits>
#include <vector>

#include "nibble/error.h"
#include "quant/gpu_float.h"

#define NIBBLE_STR2(x) #x
#define NIBBLE_STR(x) NIBBLE_STR2(x)

// The table travels inside the object file, so no data file has to be found at run time.
asm(".section .rodata\n"
    ".balign 16\n"
    "nibble_rcp_table_begin:\n"
    ".incbin \"" NIBBLE_RCP_TABLE "\"\n"
    "nibble_rcp_table_end:\n"
    ".previous\n");
// Hidden: the labels are in this object, so the compiler addresses them PC-relative. Otherwise
// aarch64's PIE code loads them from GOT entries for `.rodata + offset` (local labels), and the
// linked binaries read the wrong bytes there (zlib: Z_DATA_ERROR).
extern "C" __attribute__((visibility("hidden"))) const unsigned char nibble_rcp_table_begin[];
extern "C" __attribute__((visibility("hidden"))) const unsigned char nibble_rcp_table_end[];

namespace nibble::quant {

namespace {

constexpr size_t kMantissas = size_t(1) << 23;

const std::vector<uint8_t>& corrections() {
  static const std::vector<uint8_t> table = [] {
    std::vector<uint8_t> t(kMantissas / 4);
    uLongf len = uLongf(t.size());
    int rc = uncompress(t.data(), &len, nibble_rcp_table_begin,
                        uLong(nibble_rcp_table_end - nibble_rcp_table_begin));
    NIBBLE_CHECK(rc == Z_OK && len == t.size(), "embedded reciprocal table is damaged (zlib rc ", rc, ")");
    return t;
  }();
  return table;
}

}  // namespace

float rcp_approx(float x) {
  uint32_t u = f32_bits(x);
  uint32_t sign = u & 0x80000000u, a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return std::numeric_limits<float>::quiet_NaN();
  if (a < 0x00800000u) return bits_f32(sign | 0x7f800000u);  // zero or (flushed) denormal: inf
  if (a == 0x7f800000u) return bits_f32(sign);
  uint32_t e = a >> 23, mant = a & 0x7fffffu;
  uint32_t r = f32_bits(1.0f / bits_f32(0x3f800000u | mant));  // in (0.5, 1]
  uint8_t code = (corrections()[mant >> 2] >> ((mant & 3) * 2)) & 3;
  if (code == 1) ++r;
  else if (code == 2) --r;
  int re = int(r >> 23) + 127 - int(e);
  if (re <= 0) return bits_f32(sign);  // the result would be denormal: flushed
  return bits_f32(sign | (uint32_t(re) << 23) | (r & 0x7fffffu));
}

}  // namespace nibble::quant
