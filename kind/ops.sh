#!/usr/bin/env bash
# The operator targets of the Makefile, for kind (and, from `databases` on, any cluster
# kubectl points at). Usage: kind/ops.sh TARGET. Each target says what it does, and stops with
# one sentence when a tool it needs is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=kind/images.sh
. kind/images.sh
CLUSTER=${KIND_CLUSTER:-matchplane}
TAG=$(mp_tree_tag)
IMAGES=(backend proxy game-server loadgen)

say() { printf '==> %s\n' "$*"; }
need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || { echo "make $TARGET needs $tool: install it and run this again." >&2; exit 1; }
    if [ "$tool" = docker ] && ! docker info >/dev/null 2>&1; then
      echo "make $TARGET needs a running Docker engine: start it (or fix access to it) and run this again." >&2
      exit 1
    fi
  done
}
need_cluster() {
  need kubectl
  kubectl version --request-timeout=5s >/dev/null 2>&1 || {
    echo "make $TARGET needs a reachable Kubernetes cluster in kubectl's current context: run 'make cluster' or point kubectl at one, and run this again." >&2
    exit 1
  }
}
random() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
# Applies deploy/APP with the images of $TAG and waits for the rollout. A changed tag rolls the
# Deployment out by itself; the same tag (an image rebuilt from the same tree) restarts it.
deploy_app() {
  local app=$1 deployment=matchplane-$1 before after
  before=$(kubectl -n matchplane get deployment "$deployment" -o 'jsonpath={.spec.template.spec.containers[0].image}' 2>/dev/null || true)
  mp_overlay ".run/overlays/$app" "$app" "$TAG"
  kubectl apply -k ".run/overlays/$app"
  after=$(kubectl -n matchplane get deployment "$deployment" -o 'jsonpath={.spec.template.spec.containers[0].image}')
  if [ "$before" = "$after" ]; then
    kubectl -n matchplane rollout restart "deployment/$deployment"
  fi
  kubectl -n matchplane rollout status "deployment/$deployment" --timeout=180s
}
secret_value() { kubectl -n "$1" get secret "$2" -o "jsonpath={.data.$3}" 2>/dev/null | base64 -d; }

secrets() {
  say "creating the Secrets from random values where they do not exist yet (never committed)"
  kubectl apply -f deploy/namespace.yaml -f deploy/databases/namespace.yaml >/dev/null
  local password
  password=$(secret_value databases postgres password || true)
  if [ -z "$password" ]; then
    password=$(random)
    kubectl -n databases create secret generic postgres --from-literal=password="$password" >/dev/null
  fi
  # Always from the current postgres password: a recreated postgres Secret never leaves the
  # backend with a stale one.
  kubectl -n matchplane create secret generic matchplane-database --dry-run=client -o yaml \
    --from-literal=database-url="postgres://matchplane:$password@postgres.databases.svc.cluster.local:5432/matchplane" \
    | kubectl apply -f - >/dev/null
  local ticket admin
  ticket=$(secret_value matchplane matchplane-ticket ticket-secret || true)
  admin=$(secret_value matchplane matchplane-ticket admin-token || true)
  if [ -z "$ticket" ] || [ -z "$admin" ]; then
    # Keeps an existing ticket secret (tickets already issued stay valid); adds what is missing.
    kubectl -n matchplane create secret generic matchplane-ticket --dry-run=client -o yaml \
      --from-literal=ticket-secret="${ticket:-$(random)}" --from-literal=admin-token="${admin:-$(random)}" \
      | kubectl apply -f - >/dev/null
  fi
  # The key player tokens are signed with (here matchplane plays the studio's identity
  # service; a studio with a JWKS sets PLAYER_JWKS instead) and the services' token.
  local player service
  player=$(secret_value matchplane matchplane-identity player-token-secret || true)
  service=$(secret_value matchplane matchplane-identity service-token || true)
  if [ -z "$player" ] || [ -z "$service" ]; then
    kubectl -n matchplane create secret generic matchplane-identity --dry-run=client -o yaml \
      --from-literal=player-token-secret="${player:-$(random)}" --from-literal=service-token="${service:-$(random)}" \
      | kubectl apply -f - >/dev/null
  fi
}

TARGET=${1:-}
case "$TARGET" in
  cluster)
    need docker kind kubectl
    # kindnet enforces NetworkPolicies from kind v0.24.0 on; before it the game servers'
    # isolation would silently not exist.
    kind_version=$(kind version | sed -n 's/^kind v\([0-9]*\.[0-9]*\).*/\1/p')
    if [ -z "$kind_version" ] || [ "$(printf '%s\n0.24\n' "$kind_version" | sort -V | head -n 1)" != 0.24 ]; then
      echo "make cluster needs kind v0.24.0 or later (NetworkPolicy enforcement); found '$(kind version)': upgrade kind and run this again." >&2
      exit 1
    fi
    if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
      say "kind cluster $CLUSTER already exists"
    else
      say "creating kind cluster $CLUSTER (localhost:8080 -> proxy NodePort 30080)"
      kind create cluster --name "$CLUSTER" --config kind/cluster.yaml --wait 120s
    fi
    kubectl cluster-info --context "kind-$CLUSTER" >/dev/null
    ;;
  databases)
    need_cluster
    secrets
    say "deploying Redis and PostgreSQL (StatefulSets in namespace databases)"
    kubectl apply -k deploy/databases
    kubectl -n databases rollout status statefulset/redis --timeout=180s
    kubectl -n databases rollout status statefulset/postgres --timeout=180s
    ;;
  game-build)
    need docker
    for image in "${IMAGES[@]}"; do
      say "building $(mp_image "$image" "$TAG") (deploy/Dockerfile, target $image)"
      # No provenance attestation: with one, `kind load docker-image` fails on Docker's
      # containerd image store (the image index holds an attestation manifest kind cannot load).
      docker build --provenance=false -f deploy/Dockerfile --target "$image" -t "$(mp_image "$image" "$TAG")" .
    done
    ;;
  game-load-images)
    need docker kind
    for image in "${IMAGES[@]}"; do
      say "loading $(mp_image "$image" "$TAG") into kind cluster $CLUSTER"
      kind load docker-image --name "$CLUSTER" "$(mp_image "$image" "$TAG")"
    done
    ;;
  game-backend)
    need_cluster
    secrets
    say "deploying the backend (2 replicas, RUNTIME=kubernetes, images $TAG) with its RBAC and the game-server NetworkPolicy"
    kubectl apply -f deploy/namespace.yaml
    deploy_app backend
    ;;
  game-proxy)
    need_cluster
    if [ "${PROXY_TLS:-0}" = 1 ] && ! kubectl -n matchplane get secret matchplane-proxy-tls >/dev/null 2>&1; then
      echo "PROXY_TLS=1 needs the TLS Secret matchplane-proxy-tls in namespace matchplane: create it (kubectl -n matchplane create secret tls matchplane-proxy-tls --cert=... --key=...) or let cert-manager keep it, then run this again." >&2
      exit 1
    fi
    say "deploying the proxy (NodePort 30080, image $TAG${PROXY_TLS:+, PROXY_TLS=$PROXY_TLS})"
    deploy_app proxy
    ;;
  game-testbed)
    for step in game-build game-load-images game-backend game-proxy; do "$0" "$step"; done
    ;;
  up)
    for step in cluster databases game-testbed; do "$0" "$step"; done
    say "matchplane is up: curl http://localhost:8080/api/health ; load test: make game-load-local"
    ;;
  proxy-port-forward-local)
    need_cluster
    say "forwarding localhost:8080 to the proxy (for clusters without kind's port mapping); ctrl-c stops"
    exec kubectl -n matchplane port-forward svc/matchplane-proxy 8080:8080
    ;;
  game-load-local)
    need docker
    loadgen_image=$(mp_image loadgen "$TAG")
    docker image inspect "$loadgen_image" >/dev/null 2>&1 || {
      echo "make game-load-local runs the image $loadgen_image, which is not built: run 'make game-build' (with the same IMAGE_TAG and IMAGE_REPOSITORY) and run this again." >&2
      exit 1
    }
    say "swarm of ${CLIENTS:-50} clients ($loadgen_image) against ${TARGET_URL:-http://localhost:8080} (SPAWN_RATE=${SPAWN_RATE:-0}, MATCH_DURATION=${MATCH_DURATION:-30})"
    mkdir -p .run
    # Players need tokens: the swarm mints them with the player-token key (PLAYER_TOKEN_SECRET,
    # or the cluster's Secret when unset).
    if [ -z "${PLAYER_TOKEN_SECRET:-}" ]; then
      need_cluster
      PLAYER_TOKEN_SECRET=$(secret_value matchplane matchplane-identity player-token-secret || true)
    fi
    [ -n "$PLAYER_TOKEN_SECRET" ] || {
      echo "make game-load-local needs the player-token key: set PLAYER_TOKEN_SECRET or run 'make databases', and run this again." >&2
      exit 1
    }
    export PLAYER_TOKEN_SECRET
    # The host's network, so localhost:8080 is kind's port mapping; the report lands in .run/.
    exec docker run --rm --network host --user "$(id -u):$(id -g)" -v "$PWD/.run:/out" -e PLAYER_TOKEN_SECRET \
      "$loadgen_image" swarm --target-url "${TARGET_URL:-http://localhost:8080}" \
      --clients "${CLIENTS:-50}" --spawn-rate "${SPAWN_RATE:-0}" --match-duration "${MATCH_DURATION:-30}" \
      --json /out/game-load-local.json --chart /out/game-load-local.svg
    ;;
  status)
    need_cluster curl
    say "pods"
    kubectl get pods -n databases -o wide
    kubectl get pods -n matchplane -o wide
    say "health through the proxy"
    curl -fsS --max-time 3 http://localhost:8080/api/health && echo || echo "the proxy is not reachable on localhost:8080"
    ;;
  clear-databases)
    need_cluster
    say "emptying Redis (queue, sessions, outbox) and the PostgreSQL history tables"
    kubectl -n databases exec redis-0 -- redis-cli FLUSHALL
    kubectl -n databases exec postgres-0 -- psql -U matchplane -d matchplane -c 'TRUNCATE match_players, matches'
    ;;
  ping-redis)
    need_cluster
    kubectl -n databases exec redis-0 -- redis-cli ping
    ;;
  ping-postgres)
    need_cluster
    kubectl -n databases exec postgres-0 -- pg_isready -U matchplane -d matchplane
    ;;
  free-local-db-ports)
    say "stopping kubectl port-forwards that hold local ports 6379, 5432 or 8080"
    if pkill -f 'kubectl.*port-forward.*(6379|5432|8080)'; then say "stopped"; else say "none were running"; fi
    if command -v ss >/dev/null 2>&1; then
      ss -ltnp '( sport = :6379 or sport = :5432 or sport = :8080 )' | tail -n +2 || true
    fi
    ;;
  down)
    need kind
    say "deleting kind cluster $CLUSTER (databases included)"
    kind delete cluster --name "$CLUSTER"
    ;;
  *)
    echo "usage: kind/ops.sh up|cluster|databases|game-build|game-load-images|game-backend|game-proxy|game-testbed|proxy-port-forward-local|game-load-local|status|clear-databases|ping-redis|ping-postgres|free-local-db-ports|down" >&2
    exit 2
    ;;
esac
