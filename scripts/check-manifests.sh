#!/usr/bin/env bash
# `make manifests-check`: every script passes shellcheck; every path the Dockerfile copies
# exists, and what it copies resolves as the workspace; everything under deploy/ renders
# with kustomize, and every object,
# plus the game-server Pod the backend creates (`backend render-pod`), validates in strict mode
# against the Kubernetes OpenAPI schemas of the pinned version (the k8s-openapi feature); the
# Pods deploy/ and its overlays run (TLS too) meet the restricted Pod Security level and can
# read their Secret volumes (kube-sim's example pod_check).
set -euo pipefail
cd "$(dirname "$0")/.."
K8S_VERSION=1.35.0
venv=${MP_RUN_DIR:-.run}/venv

command -v kubectl >/dev/null 2>&1 || { echo "manifests-check needs kubectl (for kustomize): install it and run this again." >&2; exit 1; }
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'kubernetes-validate==1.37.0'
fi
# Every script passes shellcheck.
if ! command -v shellcheck >/dev/null 2>&1; then
  # shellcheck source=scripts/services.sh
  . scripts/services.sh
  mp_apt_install shellcheck || mp_die "manifests-check needs shellcheck: install it with 'sudo apt-get install -y shellcheck' and run this again."
fi
shellcheck -x scripts/*.sh kind/*.sh .ci/run
echo "manifests-check: shellcheck passes on scripts/*.sh, kind/*.sh and .ci/run"

# Every path the Dockerfile copies from the build context exists.
missing=0
while read -r src; do
  [ -e "$src" ] || { echo "deploy/Dockerfile copies $src, which does not exist" >&2; missing=1; }
done < <(awk '/^COPY / && !/--from/ {for (i = 2; i < NF; i++) print $i}' deploy/Dockerfile)
[ "$missing" = 0 ] || exit 1
echo "manifests-check: every path deploy/Dockerfile copies exists"

# The build stage sees exactly what the Dockerfile copies: that set alone must resolve as a
# workspace (a member left out, say testkit, fails `cargo build` there).
ctx=$(mktemp -d)
while read -r dst srcs; do
  for src in $srcs; do
    case "$dst" in
      */) mkdir -p "$ctx/$dst"; cp -r "$src" "$ctx/$dst" ;;
      *) mkdir -p "$ctx/$(dirname "$dst")"; cp -r "$src" "$ctx/$dst" ;;
    esac
  done
done < <(awk '/^COPY / && !/--from/ {srcs = ""; for (i = 2; i < NF; i++) srcs = srcs " " $i; print $NF, srcs}' deploy/Dockerfile)
if ! cargo metadata --locked --format-version 1 --manifest-path "$ctx/Cargo.toml" >/dev/null 2>"$ctx.err"; then
  echo "deploy/Dockerfile's build stage does not see a whole workspace:" >&2
  grep -m 3 -i 'error\|caused by\|failed' "$ctx.err" >&2 || cat "$ctx.err" >&2
  rm -rf "$ctx" "$ctx.err"
  exit 1
fi
rm -rf "$ctx" "$ctx.err"
echo "manifests-check: what deploy/Dockerfile copies resolves as the whole workspace (cargo metadata --locked)"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

kubectl kustomize deploy/ >"$out/deploy.yaml"
# What `make game-backend` and `make game-proxy` apply: the overlays with the tree's image tag.
# shellcheck source=kind/images.sh
. kind/images.sh
for app in backend proxy; do
  IMAGE_REPOSITORY='' PUBLIC_HOST='' PUBLIC_PORT='' mp_overlay "$out/overlays/$app" "$app" check-tag-0123
  kubectl kustomize "$out/overlays/$app" >"$out/overlay-$app.yaml"
  if grep -q 'matchplane/.*:dev' "$out/overlay-$app.yaml" || ! grep -q "matchplane/$app:check-tag-0123" "$out/overlay-$app.yaml"; then
    echo "the $app overlay does not set every matchplane image to the tree's tag:" >&2
    grep -n 'matchplane/' "$out/overlay-$app.yaml" >&2
    exit 1
  fi
done
# With PROXY_TLS=1 (the component deploy/tls): the proxy mounts the Secret and probes over
# HTTPS, the backend says PUBLIC_TLS.
for app in backend proxy; do
  PROXY_TLS=1 IMAGE_REPOSITORY='' PUBLIC_HOST='' PUBLIC_PORT='' mp_overlay "$out/overlays-tls/$app" "$app" check-tag-0123
  kubectl kustomize "$out/overlays-tls/$app" >"$out/overlay-tls-$app.yaml"
done
if ! grep -q 'secretName: matchplane-proxy-tls' "$out/overlay-tls-proxy.yaml" || ! grep -q 'scheme: HTTPS' "$out/overlay-tls-proxy.yaml" \
  || ! grep -q 'name: PUBLIC_TLS' "$out/overlay-tls-backend.yaml"; then
  echo "PROXY_TLS=1 does not give the proxy its TLS Secret and HTTPS probes, or the backend PUBLIC_TLS" >&2
  exit 1
fi
grep -q 'value: matchplane/game-server:check-tag-0123' "$out/overlay-backend.yaml" \
  || { echo "the backend overlay does not set GAME_SERVER_IMAGE to the tree's tag" >&2; exit 1; }
echo "manifests-check: the deploy overlays set every image (and GAME_SERVER_IMAGE) to the tree's tag"
# The shared build (every entry point builds this one package set, so nothing is built twice).
cargo build --quiet --locked --workspace --bins
export NAMESPACE=matchplane
TICKET_SECRET=render-check-0123456789abcdef0123456789 BACKEND_INTERNAL_URL=http://matchplane-backend.matchplane.svc:8081 \
  "${CARGO_TARGET_DIR:-target}/debug/backend" render-pod --session-id 6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f --players alice,bob >"$out/pod.yaml"
# With every optional pod setting in use, too.
GAME_SERVER_NODE_SELECTOR='pool=games' GAME_SERVER_IMAGE_PULL_SECRETS=registry-credentials GAME_SERVER_TOLERATIONS='[{"key":"games","operator":"Exists","effect":"NoSchedule"}]' \
  START_POLICY=roster MAX_MATCH_SECONDS=3600 \
  "${CARGO_TARGET_DIR:-target}/debug/backend" render-pod --session-id 6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e60 --players a >"$out/pod-options.yaml"
grep -A1 '^  imagePullSecrets:' "$out/pod-options.yaml" | grep -q 'name: registry-credentials' \
  || { echo "GAME_SERVER_IMAGE_PULL_SECRETS does not reach the rendered Pod's imagePullSecrets" >&2; exit 1; }
# A warm Pod (WARM_POOL_MIN/WARM_POOL_MAX): started without a session.
"${CARGO_TARGET_DIR:-target}/debug/backend" render-pod --warm >"$out/pod-warm.yaml"
# A session of a server profile (BZFlag's own server, examples/servers.yaml).
MATCHMAKING_CONFIG=examples/servers.yaml "${CARGO_TARGET_DIR:-target}/debug/backend" render-pod \
  --session-id 6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e61 --players a,b --queue bzflag >"$out/pod-profile.yaml"
# A warm Pod of a profile (warm_pool: the SDK's example server, examples/sdk-server.yaml).
MATCHMAKING_CONFIG=examples/sdk-server.yaml "${CARGO_TARGET_DIR:-target}/debug/backend" render-pod \
  --warm --queue default >"$out/pod-warm-profile.yaml"
# A warm Pod of one version of a profile (its own image, labelled with its version).
cat >"$out/versions.yaml" <<'YAML'
servers:
  canary:
    image: registry.example/canary:1
    ready: sdk
    ports: [{name: game, protocol: tcp}]
    warm_pool: {min: 1, max: 2}
    versions:
      - {name: "1", weight: 1}
      - {name: "2", image: registry.example/canary:2, weight: 0}
queues:
  - {name: duel, session_size: 2, server: canary}
YAML
MATCHMAKING_CONFIG="$out/versions.yaml" "${CARGO_TARGET_DIR:-target}/debug/backend" render-pod \
  --warm --queue duel --version 2 >"$out/pod-warm-version.yaml"

"$venv/bin/kubernetes-validate" --strict --kubernetes-version "$K8S_VERSION" \
  "$out/deploy.yaml" "$out/overlay-backend.yaml" "$out/overlay-proxy.yaml" "$out/overlay-tls-backend.yaml" "$out/overlay-tls-proxy.yaml" "$out/pod.yaml" "$out/pod-options.yaml" "$out/pod-warm.yaml" "$out/pod-profile.yaml" \
  "$out/pod-warm-profile.yaml" "$out/pod-warm-version.yaml" deploy/regions/*.yaml
# What a real cluster would refuse or break in the Pods deploy/ runs (kube-sim's Pod Security
# admission; each Secret or ConfigMap volume readable by its container's user).
cargo build --quiet --locked --workspace --example pod_check
"${CARGO_TARGET_DIR:-target}/debug/examples/pod_check" restricted "$out/deploy.yaml" "$out/overlay-backend.yaml" \
  "$out/overlay-proxy.yaml" "$out/overlay-tls-backend.yaml" "$out/overlay-tls-proxy.yaml"
echo "manifests-check: deploy/, deploy/regions/ and the rendered game-server pods (a session's, a warm one, a server profile's, a warm one of a profile, a warm one of a version) validate against Kubernetes $K8S_VERSION (strict)"

# Security scan of the rendered manifests. deploy/ carries its exceptions, with reasons, as
# checkov.io/skip annotations next to each resource. The game-server Pod is created by the
# backend, so its exceptions are here:
#   CKV_K8S_43 (image digest): the image is configured by tag (GAME_SERVER_IMAGE); kind-loaded
#     local images have no registry digest.
#   CKV_K8S_15 (pull policy Always): GAME_SERVER_PULL_POLICY defaults to IfNotPresent so
#     kind-loaded images work; operators on a registry may set Always.
#   CKV_K8S_35 (secrets as files): TICKET_SECRET comes from a Secret through secretKeyRef, as
#     the ticket and runtime contracts require; the game server reads its settings from the environment.
if [ ! -x "$venv/bin/checkov" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'checkov==3.3.30'
fi
mkdir -p "$out/deploy" "$out/pods"
cp "$out/deploy.yaml" "$out/deploy/"
# The game-server NetworkPolicy travels with the pods it selects.
cp "$out/pod.yaml" "$out/pod-options.yaml" "$out/pod-warm.yaml" "$out/pod-profile.yaml" deploy/backend/game-servers-networkpolicy.yaml "$out/pods/"
cp deploy/regions/databases-networkpolicy.yaml "$out/deploy/"
"$venv/bin/checkov" --skip-download --quiet --compact --framework kubernetes -d "$out/deploy"
"$venv/bin/checkov" --skip-download --quiet --compact --framework kubernetes -d "$out/pods" --skip-check CKV_K8S_43,CKV_K8S_15,CKV_K8S_35
echo "manifests-check: the security scan (checkov) passes"
