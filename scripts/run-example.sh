#!/usr/bin/env bash
# README command 1: installs the pinned Deno and serves examples/hello on 127.0.0.1:3000 with the
# embedded defaults. Extra arguments go to `at-rund dev`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export ATRUND_DENO_PATH="$PWD/tools/deno/node_modules/deno/deno"
exec cargo run --quiet --bin at-rund -- dev examples/hello "$@"
