#!/usr/bin/env bash
# scripts/measure-build.sh: how long a fresh clone takes to build what `make demo` and then
# `make test` build, in a new empty target directory (the crates already downloaded, so the
# figure is the compiling alone). Prints one line: the demo's build, then what the tests add.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
. scripts/services.sh
target=$(mktemp -d)
trap 'rm -rf "$target"' EXIT
export CARGO_TARGET_DIR=$target
cargo fetch --locked >/dev/null 2>&1 || true
start=$(date +%s.%N)
mp_build >"$target/demo-build.log" 2>&1 || { tail -n 20 "$target/demo-build.log" >&2; mp_die "measure-build: the build failed"; }
built=$(date +%s.%N)
cargo nextest run --workspace --locked --no-run >"$target/test-build.log" 2>&1 \
  || { tail -n 20 "$target/test-build.log" >&2; mp_die "measure-build: the tests' build failed"; }
done_at=$(date +%s.%N)
again=$(grep -c '^ *Compiling' "$target/test-build.log" || true)
python3 -c "print(f'measure-build: make demo builds in {$built - $start:.0f} s; make test then builds {$again} crates more in {$done_at - $built:.0f} s; {$done_at - $start:.0f} s in all')"
