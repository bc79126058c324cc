// The batched decode-step forms of rope_kv_write_ and attention (a K/V address table, one row a
// sequence) against one call a sequence, on any device: shared by the CPU unit test and the
// CUDA one.
#pragma once

#include <cstdint>

#include "nibble/tensor.h"

namespace nibble::test {

// Three sequences with caches of different capacities (kv_dtype) and positions: the table form
// must write the same cache bytes and rotated q/k as one call a sequence, and attend to within
// `tol` (relative to the largest output; 0: bit for bit).
void check_batched_decode(Device dev, DType kv_dtype, uint64_t seed, double tol);

}  // namespace nibble::test
