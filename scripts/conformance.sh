#!/usr/bin/env bash
# `make conformance SERVER=<profile>`: starts one server of the profile (from MATCHMAKING_CONFIG,
# examples/servers.yaml by default) exactly as the local runtime starts a session's, stands in
# for the backend's SDK calls, and says part by part what it meets of the hosting contract.
# Exits 0 when every required part is met, 1 when one is not, 2 on bad input.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z ${SERVER:-} ]]; then
  echo "conformance: name the profile: make conformance SERVER=<name under servers:> [MATCHMAKING_CONFIG=file]" >&2
  exit 2
fi
# shellcheck source=scripts/services.sh
. scripts/services.sh
mp_build
bin_dir=$MP_BIN
# The SDK's example server (examples/sdk-server.yaml) is found by name in the build's directory.
PATH="$(cd "$bin_dir" && pwd):$PATH" MATCHMAKING_CONFIG=${MATCHMAKING_CONFIG:-examples/servers.yaml} \
  "$bin_dir/backend" conformance --server "$SERVER"
