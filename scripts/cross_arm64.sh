#!/bin/sh
# Cross-builds nibble for aarch64 (the portable kernels: the x86 SIMD files are left out, isa.h's
# level is scalar) and runs the unit and golden tests under qemu-aarch64: the `arm64` presets
# (cmake/toolchain-aarch64.cmake, build/arm64). Installs what it needs from Debian 12 packages,
# idempotently, as root or as a user with sudo: the cross compiler, qemu-user, and the arm64
# builds of the libraries nibble links (multiarch: dpkg --add-architecture arm64).
# JOBS (default: all cores) caps the parallel compiles and tests.
set -eu
cd "$(dirname "$0")/.."
sh scripts/setup.sh
PKGS="g++-aarch64-linux-gnu qemu-user libc6:arm64 libstdc++6:arm64 libgtest-dev:arm64 libgmock-dev:arm64 libbenchmark-dev:arm64 \
libpcre2-dev:arm64 libicu-dev:arm64 zlib1g-dev:arm64 libcpp-httplib-dev:arm64"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  SUDO=""
  if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
      echo "cross_arm64: missing packages:$missing (run this script as root)" >&2; exit 1
    fi
  fi
  dpkg --print-foreign-architectures | grep -qx arm64 || $SUDO dpkg --add-architecture arm64
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update
  $SUDO apt-get install -y --no-install-recommends $missing
else
  echo "cross_arm64: all arm64 packages present"
fi
JOBS=${JOBS:-$(nproc)}
cmake --preset arm64
cmake --build --preset arm64 -j "$JOBS"
ctest --preset arm64 -j "$JOBS"
