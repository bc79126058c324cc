#!/bin/sh
# Installs what nibble builds with, from Debian 12 packages. Idempotent; run as root
# or as a user with sudo (apt-get then runs through sudo).
set -eu
PKGS="build-essential cmake ninja-build pkg-config nlohmann-json3-dev libcli11-dev \
libgtest-dev libgmock-dev libbenchmark-dev libpcre2-dev libicu-dev zlib1g-dev \
libcpp-httplib-dev curl python3-venv"
# installed for this machine's architecture (or for all): a foreign one (arm64 libraries of a
# cross build, say) does not count
arch=$(dpkg --print-architecture)
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Architecture} ${Status}\n' "$p" 2>/dev/null |
    grep -qE "^($arch|all) install ok installed" || missing="$missing $p"
done
if [ -z "$missing" ]; then
  echo "setup: all packages present"
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
    echo "setup: missing packages:$missing (run this script as root)" >&2; exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends $missing
