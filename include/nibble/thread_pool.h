// A fixed pool of worker threads for CPU kernels. parallel_for splits [0, n) into contiguous
// chunks of at least `grain` items and runs them on the pool plus the calling thread; it
// returns when all chunks are done and rethrows the first exception a chunk threw.
#pragma once

#include <cstdint>
#include <functional>

namespace nibble {

// Threads used by CPU kernels: default all hardware threads (or $NIBBLE_NUM_THREADS).
int num_threads();
// Resizes the global pool; n <= 0 means "all cores".
void set_num_threads(int n);

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t begin, int64_t end)>& fn);

}  // namespace nibble
