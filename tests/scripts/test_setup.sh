#!/bin/sh
# scripts/setup.sh on the three kinds of fresh machine the README's commands meet: root with no
# sudo installed (Debian 12's default), a user with sudo, a user without sudo. apt-get, sudo,
# id and dpkg-query are stand-ins on a PATH that holds nothing else, so nothing is installed;
# each stand-in appends what it was asked to a log, which is checked.
set -eu
SETUP=$(cd "$(dirname "$0")/../.." && pwd)/scripts/setup.sh
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
fail() { echo "test_setup: $*" >&2; exit 1; }

# $1 = uid the fake `id -u` reports, $2 = "sudo" to provide a sudo, $3 = "missing"/"present"/
# "foreign" (installed only for another architecture, as a cross build's arm64 libraries are)
run_case() {
  bin="$WORK/bin.$1.$2.$3"; log="$WORK/log.$1.$2.$3"
  mkdir -p "$bin"; : > "$log"
  for tool in grep cat; do ln -sf "$(command -v $tool)" "$bin/$tool"; done
  printf '#!/bin/sh\necho %s\n' "$1" > "$bin/id"
  printf '#!/bin/sh\necho amd64\n' > "$bin/dpkg"
  case "$3" in
    missing) printf '#!/bin/sh\nexit 1\n' > "$bin/dpkg-query" ;;
    present) printf '#!/bin/sh\nprintf "amd64 install ok installed\\n"\n' > "$bin/dpkg-query" ;;
    foreign) printf '#!/bin/sh\nprintf "arm64 install ok installed\\n"\n' > "$bin/dpkg-query" ;;
  esac
  printf '#!/bin/sh\necho "apt-get $*" >> %s\n' "$log" > "$bin/apt-get"
  if [ "$2" = sudo ]; then
    printf '#!/bin/sh\necho "sudo $1" >> %s\nexec "$@"\n' "$log" > "$bin/sudo"
  fi
  chmod +x "$bin"/*
  set +e
  PATH="$bin" /bin/sh "$SETUP" > "$WORK/out" 2>&1
  rc=$?
  set -e
}

# root, no sudo on the machine: apt-get runs directly.
run_case 0 nosudo missing
[ "$rc" = 0 ] || fail "root without sudo: exit $rc: $(cat "$WORK/out")"
grep -q '^apt-get update' "$log" || fail "root without sudo: apt-get update not run"
grep -q '^apt-get install -y --no-install-recommends .*nlohmann-json3-dev' "$log" ||
  fail "root without sudo: apt-get install not run with the packages"
! grep -q '^sudo' "$log" || fail "root without sudo: sudo called"

# root with sudo present: still no sudo.
run_case 0 sudo missing
[ "$rc" = 0 ] && ! grep -q '^sudo' "$log" || fail "root with sudo: sudo was used or setup failed"

# a user with sudo: apt-get goes through sudo.
run_case 1000 sudo missing
[ "$rc" = 0 ] || fail "user with sudo: exit $rc: $(cat "$WORK/out")"
grep -q '^sudo apt-get' "$log" || fail "user with sudo: apt-get not run through sudo"
grep -q '^apt-get install' "$log" || fail "user with sudo: apt-get install not run"

# a user without sudo: a clear error, non-zero, nothing run.
run_case 1000 nosudo missing
[ "$rc" != 0 ] || fail "user without sudo: exit 0"
grep -q 'run this script as root' "$WORK/out" || fail "user without sudo: no clear message"
[ ! -s "$log" ] || fail "user without sudo: apt-get ran"

# everything present: nothing run, for root and user alike.
run_case 1000 nosudo present
[ "$rc" = 0 ] && [ ! -s "$log" ] || fail "packages present: setup failed or installed something"

# present only for another architecture: installed for this one.
run_case 0 nosudo foreign
[ "$rc" = 0 ] || fail "foreign architecture: exit $rc: $(cat "$WORK/out")"
grep -q '^apt-get install -y --no-install-recommends .*libpcre2-dev' "$log" ||
  fail "foreign architecture: the packages were taken as installed"
echo "test_setup: 6 cases pass"
