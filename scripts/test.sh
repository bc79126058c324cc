#!/bin/sh
# Sets up (Debian packages), builds the default preset and runs the whole test suite.
# CUDA tests are built too and skip cleanly where no GPU is present.
set -eu
cd "$(dirname "$0")/.."
sh scripts/setup.sh
cmake --preset default
cmake --build --preset default
ctest --preset default
