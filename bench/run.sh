#!/usr/bin/env bash
# at-rund benchmark entry point: installs wrk and nginx if missing (idempotent), builds the release
# binaries, then runs bench/bench.py. Touches 127.0.0.1 only and stops by itself.
# Usage: bench/run.sh [warm] [serve] [cold] [memory] [pds] [jobs]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
# The warm scenarios measure nginx proxy_pass in front of the same handler (Debian's nginx).
[ -x "${BENCH_NGINX:-/usr/sbin/nginx}" ] || need_apt+=(nginx)
if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "installing ${need_apt[*]} (apt)" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y "${need_apt[@]}" >/dev/null
fi
if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
  cargo build --release -p atrund -p at-run
  # The hop floor the warm tables show beside nginx (crates/http/examples/hop_floor.rs).
  cargo build --release -p atrund-http --example hop_floor
fi
export ATRUND_TEST_DENO="${ATRUND_TEST_DENO:-$PWD/tools/deno/node_modules/deno/deno}"
[ -x "$ATRUND_TEST_DENO" ] || { echo "no Deno at $ATRUND_TEST_DENO: run scripts/setup.sh" >&2; exit 1; }
# The PDS scenario needs the test network's node modules (scripts/setup.sh installs them).
exec python3 bench/bench.py "$@"
