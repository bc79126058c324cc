#!/bin/sh
# The official `openai` Python client (from PyPI, into a throw-away venv) against the built
# `nibble serve` on a free 127.0.0.1 port, then SIGTERM: the server must exit 0.
# Usage: run_openai_client_test.sh NIBBLE MODEL_DIR. A venv or pip failure fails the test.
set -eu
NIBBLE=$1
MODEL=$2
HERE=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
if ! python3 -m venv "$tmp/venv"; then
  echo "FAIL: python3 -m venv failed (Debian: apt-get install python3-venv)"; exit 1
fi
if ! "$tmp/venv/bin/pip" install --quiet --disable-pip-version-check openai; then
  echo "FAIL: pip install openai failed (this test needs PyPI)"; exit 1
fi
"$tmp/venv/bin/python" -c "import openai; print('openai', openai.__version__)"

: >"$tmp/log"  # exists before the loop reads it (the background shell opens it later)
"$NIBBLE" --threads 1 serve "$MODEL" --port 0 --api-key testkey --alias tinystories 2>"$tmp/log" &
pid=$!
port=""
i=0
while [ -z "$port" ] && [ $i -lt 200 ]; do
  port=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/log" || true)
  i=$((i + 1)); sleep 0.05
done
[ -n "$port" ] || { echo "FAIL: the server did not start"; cat "$tmp/log"; exit 1; }
i=0
until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do
  i=$((i + 1)); [ $i -lt 200 ] || { echo "FAIL: /health never turned 200"; cat "$tmp/log"; exit 1; }
  sleep 0.05
done
"$tmp/venv/bin/python" "$HERE/openai_client_test.py" "http://127.0.0.1:$port/v1" testkey
# curl too, as the issue asks: a plain streamed request ends in data: [DONE].
curl -sfN "http://127.0.0.1:$port/v1/completions" -H "Authorization: Bearer testkey" \
  -d '{"prompt": "Once", "max_tokens": 5, "stream": true}' | tail -n 2 | grep -q '^data: \[DONE\]$' ||
  { echo "FAIL: curl stream did not end in data: [DONE]"; exit 1; }
echo "ok: curl stream ends in data: [DONE]"
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
pid=""
[ "$rc" -eq 0 ] || { echo "FAIL: nibble serve exited $rc after SIGTERM"; cat "$tmp/log"; exit 1; }
echo "ok: SIGTERM -> exit 0"
