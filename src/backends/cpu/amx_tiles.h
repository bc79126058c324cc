// The AMX tile configuration shared by the ISA probe and the AMX kernels. GCC 12's
// _tile_loadconfig passes its operand to the asm as an 8-byte object ("m" of a pointer), so the
// compiler may drop the stores to the rest of the 64-byte configuration as dead (seen: only the
// palette byte survived, and the probe's TILEZERO raised #UD); load_tile_config names all 64
// bytes.
#pragma once

#include <cstdint>

namespace nibble::cpu {

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};  // bytes per row of each tile
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64);

// Tiles 0 .. count - 1: 16 rows of 64 bytes (16 f32 or 32 bf16 a row).
inline TileConfig tiles_16x64(int count) {
  TileConfig c;
  for (int t = 0; t < count; ++t) {
    c.colsb[t] = 64;
    c.rows[t] = 16;
  }
  return c;
}

#if defined(__x86_64__)
inline void load_tile_config(const TileConfig& c) {
  __asm__ volatile("ldtilecfg %0" : : "m"(c));
}
#endif

}  // namespace nibble::cpu
