#!/usr/bin/env bash
# README command 2: installs Deno and the local PLC + PDS test network, then runs every test.
# With CI=true a missing component fails the run instead of skipping tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
export ATRUND_TEST_DENO="$PWD/tools/deno/node_modules/deno/deno"
cargo test --workspace "$@"
(cd runtime/lib && "$ATRUND_TEST_DENO" test --no-prompt --quiet && "$ATRUND_TEST_DENO" check --quiet mod.ts)
