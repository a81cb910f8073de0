#!/usr/bin/env bash
# `make test`: build every binary, start ephemeral Redis and PostgreSQL, run the whole test
# suite against them, and stop them again, also on failure or interrupt.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
. scripts/services.sh

# Server profiles' tests run real programs: curl and python3 stand in for a studio's server,
# and BZFlag's (TCP) and Cube 2: Sauerbraten's (UDP) dedicated servers, from Debian's
# bzflag-server and cube2-server, are the third-party ones.
command -v curl >/dev/null 2>&1 || mp_apt_install curl || mp_die "make test needs curl: install it with 'sudo apt-get install -y curl' and run this again."
command -v python3 >/dev/null 2>&1 || mp_die "make test needs python3: install it with 'sudo apt-get install -y python3' and run this again."
for server in bzflag-server:/usr/games/bzfs cube2-server:/usr/games/cube2-server; do
  package=${server%%:*} program=${server#*:}
  if [ ! -x "$program" ] && ! mp_apt_install "$package"; then
    if [ -n "${MP_REQUIRE_GAME_SERVERS:-}" ]; then
      mp_die "the tests need $package: install it with 'sudo apt-get install -y $package' and run this again."
    fi
    echo "$package is not installed: the test hosting its server will skip (sudo apt-get install -y $package)"
  fi
done

run_dir=${MP_RUN_DIR:-.run}/test-$$
mp_start_services "$run_dir"
export MP_TEST_REDIS_URL=$MP_REDIS_URL MP_TEST_DATABASE_URL=$MP_DATABASE_URL
echo "test services: redis $MP_TEST_REDIS_URL, postgres $MP_TEST_DATABASE_URL (under $run_dir)"

mp_build
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast "$@"
else
  cargo test --workspace --locked --no-fail-fast "$@"
fi
