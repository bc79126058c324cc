// Replays quant::torch_cuda_mean_f32 on vectors saved by dev/torch_mean_dump.py together with
// torch's own CUDA mean of each, and reports how many agree bit for bit.
//   g++ -std=c++20 -O2 -ffp-contract=off -Isrc dev/torch_mean_check.cpp -o torch_mean_check
//   torch_mean_check DIR
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "quant/torch_mean.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: torch_mean_check DIR\n");
    return 2;
  }
  const std::string dir = argv[1];
  std::ifstream man(dir + "/manifest.txt");
  if (!man) {
    std::fprintf(stderr, "cannot open %s/manifest.txt\n", dir.c_str());
    return 2;
  }
  int total = 0, match = 0;
  std::string line;
  while (std::getline(man, line)) {
    std::istringstream ls(line);
    int64_t n = 0;
    std::string hex, version;
    int sms = 0;
    ls >> n >> hex >> sms >> version;
    std::vector<float> x(static_cast<size_t>(n));
    std::ifstream f(dir + "/x_" + std::to_string(n) + ".f32", std::ios::binary);
    f.read(reinterpret_cast<char*>(x.data()), std::streamsize(n * 4));
    if (!f) {
      std::fprintf(stderr, "short read for n=%lld\n", static_cast<long long>(n));
      return 2;
    }
    const uint32_t want = static_cast<uint32_t>(std::stoul(hex, nullptr, 16));
    const float got_f = nibble::quant::torch_cuda_mean_f32(x.data(), n, sms);
    const float def_f = nibble::quant::torch_cuda_mean_f32(x.data(), n);  // default 132 SMs
    uint32_t got = 0, def = 0;
    std::memcpy(&got, &got_f, 4);
    std::memcpy(&def, &def_f, 4);
    float want_f;
    std::memcpy(&want_f, &want, 4);
    ++total;
    match += got == want;
    std::printf("n=%-9lld torch %08x (%.9g)  emulation(%d SMs) %08x  default(132) %08x  %s\n",
                static_cast<long long>(n), want, double(want_f), sms, got, def,
                got == want ? "MATCH" : "DIFFER");
  }
  std::printf("torch mean emulation: %d/%d sizes match bit-exactly\n", match, total);
  return match == total ? 0 : 1;
}
