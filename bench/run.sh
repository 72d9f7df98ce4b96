#!/usr/bin/env bash
# at-rund benchmark entry point: installs wrk if missing (idempotent), builds the release
# binaries, then runs bench/bench.py. Touches 127.0.0.1 only and stops by itself.
# Usage: bench/run.sh [warm] [serve] [cold] [memory] [pds]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null; then
  echo "installing wrk (apt)" >&2
  if [ "$(id -u)" = 0 ]; then apt-get install -y wrk >/dev/null; else sudo apt-get install -y wrk >/dev/null; fi
fi
if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
  cargo build --release -p atrund -p at-run
fi
export ATRUND_TEST_DENO="${ATRUND_TEST_DENO:-$PWD/tools/deno/node_modules/deno/deno}"
[ -x "$ATRUND_TEST_DENO" ] || { echo "no Deno at $ATRUND_TEST_DENO: run scripts/setup.sh" >&2; exit 1; }
# The PDS scenario needs the test network's node modules (scripts/setup.sh installs them).
exec python3 bench/bench.py "$@"
