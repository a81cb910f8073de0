#!/usr/bin/env bash
# `make bench-forming`: the cost of forming a rule queue with many tickets waiting
# (FORMING_TICKETS, default 100000): the former in memory, then whole rounds (lease, read,
# plan, commit) against an ephemeral Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
. scripts/services.sh

FORMING_TICKETS=${FORMING_TICKETS:-100000}
cargo build --release --locked --workspace --exclude testkit --example forming
run_dir=${MP_RUN_DIR:-.run}/bench-forming-$$
mp_start_services "$run_dir"
REDIS_URL=$MP_REDIS_URL "${CARGO_TARGET_DIR:-target}/release/examples/forming" "$FORMING_TICKETS"
