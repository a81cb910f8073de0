#!/usr/bin/env bash
# `make ops-check` (CI runs it): the cluster targets (kind/ops.sh) run as an operator would run
# them, against stand-ins for docker, kind, kubectl and curl that keep what a real engine, kind
# and API server would (scripts/ops-standins.py), on a copy of the tree, under dash and with
# macOS-like tools (realpath, readlink, sort, stat and sed refuse GNU-only options; there is no
# sha256sum). It checks:
#  1. `make up` computes the image tag once: a tree changed during the build still loads and
#     deploys the images it built, and a deploy of a tag nobody built stops with one sentence.
#  2. Every kubectl call names the cluster's context (kind-$KIND_CLUSTER, or KUBE_CONTEXT).
#  3. No Secret value is ever on a command line; Redis gets a password, and the backend and the
#     proxy its URL; a second `make databases` keeps every value.
#  4. Re-deploying unchanged images rolls nothing out; a rebuilt image under the same tag does.
#  5. --provenance only where buildx exists; PLATFORM with several platforms goes to game-push,
#     whose digests the deploy then pins.
#  6. It works from any directory; `make status` uses TARGET_URL; old kind is refused;
#     `make down` removes the images game-build made.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=${MP_RUN_DIR:-.run}/venv
command -v kubectl >/dev/null 2>&1 || { echo "ops-check needs kubectl (for kustomize): install it and run this again." >&2; exit 1; }
command -v dash >/dev/null 2>&1 || { echo "ops-check needs dash: install it with 'sudo apt-get install -y dash' and run this again." >&2; exit 1; }
if ! "$venv/bin/python" -c 'import yaml' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'PyYAML==6.0.2'
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
fail() { echo "ops-check FAILED: $*" >&2; exit 1; }

# A copy of the tree as a repository of its own (the check commits and edits in it).
repo=$scratch/repo
mkdir -p "$repo"
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$repo"
git -C "$repo" init -q
git -C "$repo" -c user.name=ops-check -c user.email=ops-check@localhost add -A
git -C "$repo" -c user.name=ops-check -c user.email=ops-check@localhost commit -qm snapshot
tag=$(git -C "$repo" rev-parse --short=12 HEAD)

standins=$scratch/bin
mkdir -p "$standins" "$scratch/state"
for tool in docker kind kubectl curl realpath readlink sort stat sed sha256sum; do
  # shellcheck disable=SC2016 # the wrapper expands them when it runs
  printf '#!/bin/sh\nexec "$OPS_PY" "$OPS_STANDINS" %s "$@"\n' "$tool" >"$standins/$tool"
  chmod +x "$standins/$tool"
done
export OPS_PY=$root/$venv/bin/python OPS_STANDINS=$root/scripts/ops-standins.py OPS_REAL_PATH=$PATH
export OPS_STATE=$scratch/state OPS_LOG=$scratch/calls.log
: >"$OPS_LOG"
# Runs kind/ops.sh TARGET in the copy (from DIR, default the copy) under dash with the stand-ins.
ops() {
  local dir=$repo
  if [ "$1" = --from ]; then dir=$2; shift 2; fi
  (cd "$dir" && env PATH="$standins:$OPS_REAL_PATH" dash "$repo/kind/ops.sh" "$@") >"$scratch/out.log" 2>&1
}
calls() { grep "^\[\"$1\"" "$OPS_LOG" || true; }
applied_image() { "$OPS_PY" - "$OPS_STATE/applied.yaml" "$1" <<'EOF'
import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc.get("kind") == "Deployment":
        c = doc["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        ann = doc["spec"]["template"]["metadata"].get("annotations", {})
        print({"image": c["image"], "game": env.get("GAME_SERVER_IMAGE"), "stamp": ann.get("matchplane.io/images")}[sys.argv[2]])
EOF
}

# 1. make up, with the tree changed during the first image build.
printf 'echo "an edit during the build" >>"%s/README.md"\n' "$repo" >"$OPS_STATE/on-build"
ops up || fail "make up did not succeed: $(cat "$scratch/out.log")"
[ -n "$(git -C "$repo" status --porcelain --untracked-files=no)" ] || fail "the edit during the build did not happen"
built=$(calls docker | "$OPS_PY" -c 'import json,sys; [print(a[a.index("-t")+1]) for a in map(json.loads, sys.stdin) if "-t" in a]')
loaded=$(calls kind | "$OPS_PY" -c 'import json,sys; [print(a[-1]) for a in map(json.loads, sys.stdin) if a[1:3] == ["load", "docker-image"]]')
want=$(for image in backend proxy game-server loadgen; do echo "matchplane/$image:$tag"; done)
[ "$built" = "$want" ] || fail "make up built $built, not the tree's tag $tag"
[ "$loaded" = "$want" ] || fail "make up loaded $loaded, not what it built"
[ "$(applied_image image)" = "matchplane/proxy:$tag" ] || fail "make up deployed the proxy as $(applied_image image)"
if ! grep -q "newTag: \"$tag\"" "$repo/.run/overlays/backend/kustomization.yaml" \
  || ! grep -q "value: \"matchplane/game-server:$tag\"" "$repo/.run/overlays/backend/kustomization.yaml"; then
  fail "the backend overlay is not at $tag: $(cat "$repo/.run/overlays/backend/kustomization.yaml")"
fi
if calls docker | grep -q provenance; then fail "--provenance passed to a docker without buildx"; fi
echo "ops-check: make up computes the tag once ($tag) and builds, loads and deploys those images, under dash with BSD-like tools and no buildx"
# A deploy of the changed tree's tag, which nobody built, stops before applying anything.
: >"$OPS_LOG"
if ops game-backend; then fail "a deploy of unbuilt images went ahead"; fi
grep -q "deploys matchplane/backend:$tag-dirty-[0-9a-f]*, which is not built: run 'make game-build game-load-images'" "$scratch/out.log" \
  || fail "no clear sentence for unbuilt images: $(cat "$scratch/out.log")"
if calls kubectl | grep -q '"apply"'; then fail "something was applied before the image check"; fi
git -C "$repo" checkout -q README.md
echo "ops-check: deploying images nobody built stops with one sentence, before applying anything"

# 2 and 3. Contexts and Secrets.
secrets_now() { "$OPS_PY" -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1])), sort_keys=True))' "$OPS_STATE/secrets"; }
first=$(secrets_now)
"$OPS_PY" - "$OPS_STATE/secrets" <<'EOF' || fail "the Secrets are not as make databases promises"
import base64, json, sys
s = json.load(open(sys.argv[1]))
d = lambda ns, name, key: base64.b64decode(s[f"{ns}/{name}"][key]).decode()
redis = d("databases", "redis", "password")
pg = d("databases", "postgres", "password")
assert len(redis) == 64 and len(pg) == 64 and redis != pg, "random passwords"
assert d("matchplane", "matchplane-redis", "redis-url") == f"redis://:{redis}@redis.databases.svc.cluster.local:6379"
assert d("matchplane", "matchplane-database", "database-url") == f"postgres://matchplane:{pg}@postgres.databases.svc.cluster.local:5432/matchplane"
for key in ("ticket-secret", "admin-token"):
    assert len(d("matchplane", "matchplane-ticket", key)) == 64, key
for key in ("player-token-secret", "service-token"):
    assert len(d("matchplane", "matchplane-identity", key)) == 64, key
EOF
: >"$OPS_LOG"
ops databases || fail "a second make databases failed: $(cat "$scratch/out.log")"
[ "$(secrets_now)" = "$first" ] || fail "a second make databases changed a Secret's value"
ops --from "$scratch" game-proxy || fail "make game-proxy from another directory failed: $(cat "$scratch/out.log")"
"$OPS_PY" - "$OPS_STATE/secrets" "$OPS_LOG" <<'EOF' || fail "a Secret's value was on a command line"
import base64, json, sys
values = [base64.b64decode(v).decode() for data in json.load(open(sys.argv[1])).values() for v in data.values()]
for line in open(sys.argv[2]):
    for v in values:
        assert v not in line, line
EOF
if calls kubectl | grep -v '^\["kubectl", "--context", "kind-matchplane"' | grep -q .; then
  fail "kubectl called with another context: $(calls kubectl | grep -v kind-matchplane | head -n 1)"
fi
echo "ops-check: every kubectl call names kind-matchplane; Secrets (Redis's password too) are made once, kept, and never on a command line"

# 4. Rollouts only when the images changed.
[ ! -s "$OPS_STATE/rollouts" ] || fail "re-applying unchanged images rolled out: $(cat "$OPS_STATE/rollouts")"
ops game-backend || fail "game-backend again failed: $(cat "$scratch/out.log")"
[ ! -s "$OPS_STATE/rollouts" ] || fail "re-deploying unchanged images rolled out or restarted: $(cat "$OPS_STATE/rollouts")"
ops game-build || fail "the rebuild failed: $(cat "$scratch/out.log")"
ops game-backend || fail "the deploy of the rebuilt images failed: $(cat "$scratch/out.log")"
grep -qx "ROLLOUT matchplane-backend" "$OPS_STATE/rollouts" || fail "a rebuilt image under the same tag did not roll out"
echo "ops-check: unchanged images roll nothing out; a rebuilt image under the same tag does"

# 5. buildx: provenance, platforms, pushed digests on another cluster.
touch "$OPS_STATE/buildx"
: >"$OPS_LOG"
ops game-build || fail "game-build with buildx failed: $(cat "$scratch/out.log")"
[ "$(calls docker | grep -c '"--provenance=false"')" = 4 ] || fail "--provenance=false not passed with buildx"
if PLATFORM=linux/amd64,linux/arm64 ops game-build; then fail "game-build took several platforms"; fi
grep -q "push them with 'make game-push'" "$scratch/out.log" || fail "no sentence for several platforms: $(cat "$scratch/out.log")"
IMAGE_REPOSITORY=registry.example.com/mp ops game-push || fail "game-push failed: $(cat "$scratch/out.log")"
"$OPS_PY" -c 'import json,sys; json.dump(json.load(open(sys.argv[1])) + ["gke_prod"], open(sys.argv[1], "w"))' "$OPS_STATE/contexts"
: >"$OPS_LOG"
IMAGE_REPOSITORY=registry.example.com/mp KUBE_CONTEXT=gke_prod ops game-backend || fail "a deploy to another cluster failed: $(cat "$scratch/out.log")"
case "$(applied_image image) $(applied_image game)" in
  "registry.example.com/mp/backend@sha256:"*" registry.example.com/mp/game-server@sha256:"*) ;;
  *) fail "the pushed images are not deployed by digest: $(applied_image image) $(applied_image game)" ;;
esac
if calls kubectl | grep -v '^\["kubectl", "--context", "gke_prod"' | grep -q .; then fail "KUBE_CONTEXT not used on every call"; fi
echo "ops-check: --provenance only with buildx; several platforms go to game-push, whose digests the deploy pins (KUBE_CONTEXT on every call)"

# 6. Smaller promises.
: >"$OPS_LOG"
TARGET_URL=http://proxy.example:9 ops --from "$scratch" status || fail "make status failed: $(cat "$scratch/out.log")"
calls curl | grep -q 'http://proxy.example:9/api/health' || fail "make status ignored TARGET_URL"
if OPS_KIND_VERSION="kind v0.23.0 go1.22.6 linux/amd64" ops cluster; then fail "kind v0.23 accepted"; fi
grep -q "needs kind v0.24.0 or later" "$scratch/out.log" || fail "no sentence for old kind: $(cat "$scratch/out.log")"
ops down || fail "make down failed: $(cat "$scratch/out.log")"
[ "$(cat "$OPS_STATE/images")" = "{}" ] || fail "make down left images: $(cat "$OPS_STATE/images")"
echo "ops-check: any directory, TARGET_URL for status, old kind refused, make down removes the images"
