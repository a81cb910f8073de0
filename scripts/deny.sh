#!/usr/bin/env bash
# `make deny`: the supply-chain policy in deny.toml: licences, duplicate versions and sources
# (offline), then advisories against RustSec's database. cargo-deny is installed from
# crates.io when missing. The database lives on github.com: where it cannot be fetched, set
# ADVISORY_DB to a clone of https://github.com/RustSec/advisory-db to check against it;
# without either, the advisories check is reported as not run (and the rest still is).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
. scripts/services.sh

version=0.20.2
if ! cargo deny --version 2>/dev/null | grep -qx "cargo-deny $version"; then
  echo "installing cargo-deny $version from crates.io (about 3 minutes on 2 cores) ..."
  cargo install --locked --quiet cargo-deny --version "$version" || mp_die "could not install cargo-deny $version"
fi

cargo deny --locked check bans licenses sources

if [ -n "${ADVISORY_DB:-}" ]; then
  [ -d "$ADVISORY_DB/crates" ] || mp_die "ADVISORY_DB=$ADVISORY_DB is not a clone of the RustSec advisory database"
  db_path=$(mktemp -d)
  trap 'rm -rf "$db_path"' EXIT
  # cargo-deny looks for the default database's clone under this name in its db-path.
  cp -r "$ADVISORY_DB" "$db_path/advisory-db-3157b0e258782691"
  sed "s|^unmaintained = |db-path = \"$db_path\"\nunmaintained = |" deny.toml >"$db_path/deny.toml"
  cargo deny --offline --config "$db_path/deny.toml" check advisories
elif cargo deny --locked fetch db >/dev/null 2>&1; then
  cargo deny --locked check advisories
else
  echo "deny: advisories NOT checked: RustSec's database (github.com/RustSec/advisory-db) cannot be fetched from this machine; set ADVISORY_DB to a clone of it"
fi
