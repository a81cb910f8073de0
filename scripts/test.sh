#!/usr/bin/env bash
# `make test`: build every binary, start ephemeral Redis and PostgreSQL, run the whole test
# suite against them, and stop them again, also on failure or interrupt.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
. scripts/services.sh

# Server profiles' tests run real programs: curl and python3 stand in for a studio's server,
# and BZFlag's own dedicated server (Debian's bzflag-server) is the third-party one.
command -v curl >/dev/null 2>&1 || mp_apt_install curl || mp_die "make test needs curl: install it with 'sudo apt-get install -y curl' and run this again."
command -v python3 >/dev/null 2>&1 || mp_die "make test needs python3: install it with 'sudo apt-get install -y python3' and run this again."
if [ ! -x /usr/games/bzfs ] && ! mp_apt_install bzflag-server; then
  if [ -n "${MP_REQUIRE_GAME_SERVERS:-}" ]; then
    mp_die "the tests need BZFlag's server: install it with 'sudo apt-get install -y bzflag-server' and run this again."
  fi
  echo "bzflag-server is not installed: the test hosting BZFlag's server will skip (sudo apt-get install -y bzflag-server)"
fi

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
