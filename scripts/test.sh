#!/bin/sh
# Sets up (Debian packages), builds the default preset and runs the whole test suite, then
# builds the asan preset (AddressSanitizer + UndefinedBehaviorSanitizer, leaks checked) and runs
# the unit, golden and fuzz-replay tests again under it. CUDA tests are built too and skip
# cleanly where no GPU is present.
set -eu
cd "$(dirname "$0")/.."
sh scripts/setup.sh
cmake --preset default
cmake --build --preset default
ctest --preset default
cmake --preset asan
cmake --build --preset asan
ctest --preset asan
