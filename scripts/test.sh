#!/usr/bin/env bash
# `make test`: build every binary, start ephemeral Redis and PostgreSQL, run the whole test
# suite against them, and stop them again, also on failure or interrupt.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
. scripts/services.sh

run_dir=${MP_RUN_DIR:-.run}/test-$$
mp_start_services "$run_dir"
export MP_TEST_REDIS_URL=$MP_REDIS_URL MP_TEST_DATABASE_URL=$MP_DATABASE_URL
echo "test services: redis $MP_TEST_REDIS_URL, postgres $MP_TEST_DATABASE_URL (under $run_dir)"

cargo build --workspace --bins --locked
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast "$@"
else
  cargo test --workspace --locked --no-fail-fast "$@"
fi
