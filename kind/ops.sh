#!/bin/sh
# The operator targets of the Makefile, for kind (and, from `databases` on, any cluster:
# KUBE_CONTEXT names it). Usage: kind/ops.sh TARGET, from any directory. Each target says
# what it does, and stops with one sentence when a tool it needs is missing. POSIX sh with
# portable tools only (macOS, Linux); `make ops-check` runs every target with stand-ins.
set -eu
cd "$(dirname "$0")/.."

# shellcheck source=kind/images.sh
. kind/images.sh
TARGET=${1:-}
CLUSTER=${KIND_CLUSTER:-matchplane}
# Every kubectl call names its context: never whatever context happens to be current.
CONTEXT=${KUBE_CONTEXT:-kind-$CLUSTER}
# The tag is computed once and handed down: an edit or a commit during the build cannot make a
# later step load or deploy an image nobody built.
TAG=$(mp_tree_tag)
IMAGE_TAG=$TAG
export IMAGE_TAG
IMAGES="backend proxy game-server loadgen"

say() { printf '==> %s\n' "$*"; }
die() { echo "$*" >&2; exit 1; }
k() { kubectl --context "$CONTEXT" "$@"; }
on_kind() { [ "$CONTEXT" = "kind-$CLUSTER" ]; }
need() {
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || die "make $TARGET needs $tool: install it and run this again."
    if [ "$tool" = docker ] && ! docker info >/dev/null 2>&1; then
      die "make $TARGET needs a running Docker engine: start it (or fix access to it) and run this again."
    fi
  done
}
need_cluster() {
  need kubectl
  k version --request-timeout=5s >/dev/null 2>&1 \
    || die "make $TARGET needs the cluster of kubectl context $CONTEXT: run 'make cluster' (kind), or set KUBE_CONTEXT to your cluster's context, and run this again."
}
has_buildx() { docker buildx version >/dev/null 2>&1; }

# Secret values never go on a command line (where `ps` shows them): they are written to files
# in a private directory and handed to kubectl by path.
private=
cleanup() { if [ -n "$private" ]; then rm -rf "$private"; fi; }
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM
private_dir() {
  if [ -z "$private" ]; then
    private=$(umask 077 && mktemp -d "${TMPDIR:-/tmp}/matchplane-secrets.XXXXXX")
  fi
}
# Writes 32 random bytes as hex into FILE.
random_to() { (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$1"); }
# Writes key KEY of Secret NAME in NAMESPACE into FILE; fails when there is none.
secret_to() {
  (umask 077 && k -n "$1" get secret "$2" -o "jsonpath={.data.$3}" 2>/dev/null | base64 --decode >"$4")
  [ -s "$4" ]
}
# Applies Secret NAME in NAMESPACE with the files of DIR as its keys (`kubectl apply`: an
# existing Secret is updated, not recreated).
apply_secret() {
  k -n "$1" create secret generic "$2" --dry-run=client -o yaml --from-file="$3" >"$private/$2.yaml"
  k apply -f "$private/$2.yaml" >/dev/null
}
# Sets DIR/KEY from Secret NAME's KEY in NAMESPACE when it has one, else from random bytes.
keep_or_random() {
  mkdir -p "$private/$4"
  secret_to "$1" "$2" "$3" "$private/$4/$3" || random_to "$private/$4/$3"
}

secrets() {
  say "creating the Secrets from random values where they do not exist yet (never committed)"
  k apply -f deploy/namespace.yaml -f deploy/databases/namespace.yaml >/dev/null
  private_dir
  keep_or_random databases postgres password postgres
  keep_or_random databases redis password redis
  apply_secret databases postgres "$private/postgres"
  apply_secret databases redis "$private/redis"
  # The URLs the backend and the proxy use, always from the current passwords: a recreated
  # password Secret never leaves them with a stale one.
  mkdir -p "$private/matchplane-database" "$private/matchplane-redis"
  (umask 077
    printf 'postgres://matchplane:%s@postgres.databases.svc.cluster.local:5432/matchplane' \
      "$(cat "$private/postgres/password")" >"$private/matchplane-database/database-url"
    printf 'redis://:%s@redis.databases.svc.cluster.local:6379' \
      "$(cat "$private/redis/password")" >"$private/matchplane-redis/redis-url")
  apply_secret matchplane matchplane-database "$private/matchplane-database"
  apply_secret matchplane matchplane-redis "$private/matchplane-redis"
  # Existing values are kept (tickets already issued stay valid); missing ones are added.
  keep_or_random matchplane matchplane-ticket ticket-secret matchplane-ticket
  keep_or_random matchplane matchplane-ticket admin-token matchplane-ticket
  apply_secret matchplane matchplane-ticket "$private/matchplane-ticket"
  # The key player tokens are signed with (here matchplane plays the studio's identity
  # service; a studio with a JWKS sets PLAYER_JWKS instead) and the services' token.
  keep_or_random matchplane matchplane-identity player-token-secret matchplane-identity
  keep_or_random matchplane matchplane-identity service-token matchplane-identity
  apply_secret matchplane matchplane-identity "$private/matchplane-identity"
}

# What APP's images are, for its Pod template's annotation: their digests when pushed, else
# their local image ids; empty when they are in neither place (a registry's tag built
# elsewhere).
stamp() {
  stamp_of=
  for image in "$@"; do
    ref=$(mp_image_ref "$image" "$TAG")
    case "$ref" in
      *@sha256:*) id=${ref#*@} ;;
      *) id=$(docker image inspect --format '{{.Id}}' "$ref" 2>/dev/null || true) ;;
    esac
    [ -n "$id" ] || return 0
    stamp_of="$stamp_of${stamp_of:+,}$image=$id"
  done
  echo "$stamp_of"
}
# On kind the images must be built (and are then loaded): check before deploying anything.
images_exist() {
  on_kind || return 0
  for image in "$@"; do
    ref=$(mp_image_ref "$image" "$TAG")
    case "$ref" in *@sha256:*) continue ;; esac
    docker image inspect "$ref" >/dev/null 2>&1 \
      || die "make $TARGET deploys $ref, which is not built: run 'make game-build game-load-images' (with the same IMAGE_TAG and IMAGE_REPOSITORY) and run this again."
  done
}
# Applies deploy/APP with the images of $TAG and waits for the rollout. It rolls out only when
# the images changed (their tag, digest or id is in the Pod template): applying the same
# images again restarts nothing, so matches longer than the drain are not cut.
deploy_app() {
  app=$1
  shift
  stamp_now=
  if command -v docker >/dev/null 2>&1; then stamp_now=$(stamp "$@"); fi
  mp_overlay ".run/overlays/$app" "$app" "$TAG" "$stamp_now"
  k apply -k ".run/overlays/$app"
  k -n matchplane rollout status "deployment/matchplane-$app" --timeout=180s
}
# Builds IMAGE's stage of deploy/Dockerfile with the arguments given (docker build or buildx).
build_flags() {
  # BuildKit (its cache mounts keep cargo's registry and target between builds). No
  # provenance attestation: with one, `kind load docker-image` fails on Docker's containerd
  # image store; the flag exists only with buildx (Debian's docker.io has none).
  if has_buildx; then echo "--provenance=false"; fi
}

case "$TARGET" in
  cluster)
    need docker kind kubectl
    # kindnet enforces NetworkPolicies from kind v0.24.0 on; before it the game servers'
    # isolation would silently not exist.
    kind_version=$(kind version | sed -n 's/^kind v\([0-9][0-9]*\)\.\([0-9][0-9]*\).*/\1 \2/p')
    # shellcheck disable=SC2086 # major and minor, one word each
    set -- $kind_version
    if [ -z "$kind_version" ] || { [ "$1" -eq 0 ] && [ "$2" -lt 24 ]; }; then
      die "make cluster needs kind v0.24.0 or later (NetworkPolicy enforcement); found '$(kind version)': upgrade kind and run this again."
    fi
    if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
      say "kind cluster $CLUSTER already exists"
    else
      say "creating kind cluster $CLUSTER (localhost:8080 -> proxy NodePort 30080)"
      kind create cluster --name "$CLUSTER" --config kind/cluster.yaml --wait 120s
    fi
    k cluster-info >/dev/null
    ;;
  databases)
    need_cluster
    secrets
    say "deploying Redis (with a password) and PostgreSQL (StatefulSets in namespace databases, context $CONTEXT)"
    k apply -k deploy/databases
    k -n databases rollout status statefulset/redis --timeout=180s
    k -n databases rollout status statefulset/postgres --timeout=180s
    ;;
  game-build)
    need docker
    platform=${PLATFORM:-}
    case "$platform" in
      *,*) die "make game-build loads one platform into the local engine; PLATFORM=$platform is several: push them with 'make game-push' and run that instead." ;;
    esac
    if [ -n "$platform" ] && ! has_buildx; then
      die "make game-build with PLATFORM needs docker buildx: install it (the docker-buildx plugin) and run this again."
    fi
    for image in $IMAGES; do
      say "building $(mp_image "$image" "$TAG") (deploy/Dockerfile, target $image${platform:+, platform $platform})"
      # shellcheck disable=SC2046 # build_flags prints whole flags or nothing
      DOCKER_BUILDKIT=1 docker build $(build_flags) ${platform:+--platform "$platform"} \
        -f deploy/Dockerfile --target "$image" -t "$(mp_image "$image" "$TAG")" .
    done
    ;;
  game-push)
    need docker
    has_buildx || die "make game-push needs docker buildx: install it (the docker-buildx plugin) and run this again."
    [ -n "${IMAGE_REPOSITORY:-}" ] || die "make game-push needs IMAGE_REPOSITORY, your registry's name for the images (e.g. registry.example.com/matchplane): set it and run this again."
    platform=${PLATFORM:-linux/amd64,linux/arm64}
    mkdir -p .run/images
    digests=$(mp_digests "$TAG")
    : >"$digests.new"
    for image in $IMAGES; do
      say "building and pushing $(mp_image "$image" "$TAG") for $platform"
      docker buildx build --provenance=false --platform "$platform" --push \
        --metadata-file ".run/images/$image.json" \
        -f deploy/Dockerfile --target "$image" -t "$(mp_image "$image" "$TAG")" .
      digest=$(sed -n 's/.*"containerimage\.digest": *"\(sha256:[0-9a-f]*\)".*/\1/p' ".run/images/$image.json" | head -n 1)
      [ -n "$digest" ] || die "make game-push pushed $(mp_image "$image" "$TAG") but buildx reported no digest (.run/images/$image.json): push again."
      echo "$image ${IMAGE_REPOSITORY}/$image@$digest" >>"$digests.new"
    done
    mv "$digests.new" "$digests"
    say "pushed; make game-backend and game-proxy with IMAGE_TAG=$TAG deploy these digests ($digests)"
    ;;
  game-load-images)
    need docker kind
    for image in $IMAGES; do
      say "loading $(mp_image "$image" "$TAG") into kind cluster $CLUSTER"
      kind load docker-image --name "$CLUSTER" "$(mp_image "$image" "$TAG")"
    done
    ;;
  game-backend)
    need_cluster
    images_exist backend game-server
    secrets
    say "deploying the backend (2 replicas, RUNTIME=kubernetes, images $TAG, context $CONTEXT) with its RBAC and the game-server NetworkPolicy"
    deploy_app backend backend game-server
    ;;
  game-proxy)
    need_cluster
    images_exist proxy
    if [ "${PROXY_TLS:-0}" = 1 ] && ! k -n matchplane get secret matchplane-proxy-tls >/dev/null 2>&1; then
      die "PROXY_TLS=1 needs the TLS Secret matchplane-proxy-tls in namespace matchplane: create it (kubectl -n matchplane create secret tls matchplane-proxy-tls --cert=... --key=...) or let cert-manager keep it, then run this again."
    fi
    secrets
    say "deploying the proxy (NodePort 30080, image $TAG${PROXY_TLS:+, PROXY_TLS=$PROXY_TLS}, context $CONTEXT)"
    deploy_app proxy proxy
    ;;
  game-testbed)
    for step in game-build game-load-images game-backend game-proxy; do kind/ops.sh "$step"; done
    ;;
  up)
    for step in cluster databases game-testbed; do kind/ops.sh "$step"; done
    say "matchplane is up: curl http://localhost:8080/api/health ; load test: make game-load-local"
    ;;
  proxy-port-forward-local)
    need_cluster
    say "forwarding localhost:8080 to the proxy (for clusters without kind's port mapping); ctrl-c stops"
    exec kubectl --context "$CONTEXT" -n matchplane port-forward svc/matchplane-proxy 8080:8080
    ;;
  game-load-local)
    need docker
    loadgen_image=$(mp_image_ref loadgen "$TAG")
    docker image inspect "$loadgen_image" >/dev/null 2>&1 || docker pull "$loadgen_image" >/dev/null 2>&1 \
      || die "make game-load-local runs the image $loadgen_image, which is not built: run 'make game-build' (with the same IMAGE_TAG and IMAGE_REPOSITORY) and run this again."
    say "swarm of ${CLIENTS:-50} clients ($loadgen_image) against ${TARGET_URL:-http://localhost:8080} (SPAWN_RATE=${SPAWN_RATE:-0}, MATCH_DURATION=${MATCH_DURATION:-30})"
    mkdir -p .run
    # Players need tokens: the swarm mints them with the player-token key (PLAYER_TOKEN_SECRET,
    # or the cluster's Secret when unset), handed to docker through its environment.
    if [ -z "${PLAYER_TOKEN_SECRET:-}" ]; then
      need_cluster
      private_dir
      secret_to matchplane matchplane-identity player-token-secret "$private/player-token-secret" \
        || die "make game-load-local needs the player-token key: set PLAYER_TOKEN_SECRET or run 'make databases', and run this again."
      PLAYER_TOKEN_SECRET=$(cat "$private/player-token-secret")
    fi
    export PLAYER_TOKEN_SECRET
    # The host's network, so localhost:8080 is kind's port mapping; the report lands in .run/.
    docker run --rm --network host --user "$(id -u):$(id -g)" -v "$PWD/.run:/out" -e PLAYER_TOKEN_SECRET \
      "$loadgen_image" swarm --target-url "${TARGET_URL:-http://localhost:8080}" \
      --clients "${CLIENTS:-50}" --spawn-rate "${SPAWN_RATE:-0}" --match-duration "${MATCH_DURATION:-30}" \
      --json /out/game-load-local.json --chart /out/game-load-local.svg
    ;;
  status)
    need_cluster
    need curl
    say "pods (context $CONTEXT)"
    k get pods -n databases -o wide
    k get pods -n matchplane -o wide
    target=${TARGET_URL:-http://localhost:8080}
    say "health through the proxy at $target"
    curl -fsS --max-time 3 "$target/api/health" && echo || echo "the proxy is not reachable at $target"
    ;;
  clear-databases)
    need_cluster
    say "emptying Redis (queue, sessions, outbox) and the PostgreSQL history tables"
    # REDISCLI_AUTH comes from the Pod's own environment (the Secret), not a command line.
    k -n databases exec redis-0 -- redis-cli FLUSHALL
    k -n databases exec postgres-0 -- psql -U matchplane -d matchplane -c 'TRUNCATE match_players, matches'
    ;;
  ping-redis)
    need_cluster
    k -n databases exec redis-0 -- redis-cli ping
    ;;
  ping-postgres)
    need_cluster
    k -n databases exec postgres-0 -- pg_isready -U matchplane -d matchplane
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
    if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
      # Every image game-build made (they carry the label), whatever their tag.
      built=$(docker image ls --filter label=io.matchplane.image --format '{{.ID}}' | sort -u)
      if [ -n "$built" ]; then
        say "removing the images make game-build made ($(echo "$built" | wc -l | tr -d ' '))"
        # shellcheck disable=SC2086 # one id per word
        docker image rm -f $built >/dev/null
      fi
    fi
    ;;
  *)
    echo "usage: kind/ops.sh up|cluster|databases|game-build|game-push|game-load-images|game-backend|game-proxy|game-testbed|proxy-port-forward-local|game-load-local|status|clear-databases|ping-redis|ping-postgres|free-local-db-ports|down" >&2
    exit 2
    ;;
esac
