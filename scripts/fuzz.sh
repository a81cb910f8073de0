#!/usr/bin/env bash
# `make fuzz-build` (CI) and `make fuzz`: the cargo-fuzz targets in fuzz/ (the game-protocol
# line codec, tickets, player tokens, the join body). cargo fuzz needs nightly features; the
# stable toolchain provides them with RUSTC_BOOTSTRAP=1. Usage: fuzz.sh build | run [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null 2>&1 || { echo "fuzzing needs the Rust toolchain (cargo): install it from rustup.rs and run this again." >&2; exit 1; }
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz from crates.io ..." >&2
  cargo install cargo-fuzz --locked --quiet
fi
export RUSTC_BOOTSTRAP=1
case "${1:-build}" in
  build)
    (cd fuzz && cargo fuzz build -O)
    ;;
  run)
    runs=${2:-${FUZZ_RUNS:-10000000}}
    for target in $(cd fuzz && cargo fuzz list); do
      echo "== $target: $runs executions =="
      (cd fuzz && cargo fuzz run -O "$target" -- -runs="$runs" -max_len=4200 -print_final_stats=1)
    done
    ;;
  *)
    echo "usage: scripts/fuzz.sh build | run [RUNS]" >&2
    exit 2
    ;;
esac
