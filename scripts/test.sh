#!/bin/sh
# Sets up (Debian packages), builds the default preset and runs the whole test suite, then
# builds the asan preset (AddressSanitizer + UndefinedBehaviorSanitizer, leaks checked) and runs
# the unit, golden and fuzz-replay tests again under it, then the tsan preset (ThreadSanitizer)
# and the tests that use threads (pool, batched decode, server). CUDA tests are built too and
# skip cleanly where no GPU is present.
set -eu
cd "$(dirname "$0")/.."
sh scripts/setup.sh
cmake --preset default
cmake --build --preset default
ctest --preset default
cmake --preset asan
cmake --build --preset asan
ctest --preset asan
cmake --preset tsan
cmake --build --preset tsan
# Without address-space randomisation: GCC 12's TSan aborts ("unexpected memory mapping") on
# kernels that randomise mmap with more bits than its shadow layout expects.
if setarch "$(uname -m)" -R true 2>/dev/null; then
  setarch "$(uname -m)" -R ctest --preset tsan
else
  ctest --preset tsan
fi
