#!/usr/bin/env python3
"""Stand-ins for docker, kind, kubectl, curl and a macOS-like set of tools, for `make ops-check`.

`make ops-check` puts a small wrapper per tool first on PATH, which runs this file with the
tool's name first; the name picks the behaviour. Every call is appended to $OPS_LOG (one JSON
list of argv per line), and the stand-ins keep what a real engine, kind and API server would
keep under $OPS_STATE:

- docker: images built (`build`, `buildx build`), with a fresh id per build; `--provenance`
  refused without buildx (Debian's docker.io); `buildx` exists only when $OPS_STATE/buildx
  does; a build may run $OPS_STATE/on-build once (to change the tree mid-build).
- kind: clusters, each adding the context kind-NAME; loading an image that was not built fails.
- kubectl: refuses any call without `--context` first, or naming a context that does not
  exist; Secrets applied from files are kept (and read back by `get secret -o jsonpath`);
  `apply -k` renders the directory with the real kubectl's kustomize and records each
  Deployment's Pod template, appending "ROLLOUT name" to $OPS_STATE/rollouts when it changed.
- macOS-like tools: realpath, readlink, sort, stat, sed and sha256sum fail on GNU-only
  options (or, sha256sum, do not exist), like the BSD tools of a Mac.
"""
import hashlib
import json
import os
import re
import subprocess
import sys

STATE = os.environ["OPS_STATE"]
REAL = os.environ["OPS_REAL_PATH"]
tool = sys.argv[1]
argv = sys.argv[1:]


def log():
    with open(os.environ["OPS_LOG"], "a", encoding="utf-8") as f:
        f.write(json.dumps([tool] + argv[1:]) + "\n")


def real(name):
    for d in REAL.split(os.pathsep):
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    sys.exit(f"{tool}: the real {name} is not installed")


def load(name, default):
    p = os.path.join(STATE, name)
    if not os.path.exists(p):
        return default
    with open(p, encoding="utf-8") as f:
        return json.load(f)


def save(name, value):
    with open(os.path.join(STATE, name), "w", encoding="utf-8") as f:
        json.dump(value, f)


def fail(message, code=1):
    sys.stderr.write(message + "\n")
    sys.exit(code)


def flag(args, name):
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def next_id(seed):
    counter = load("counter", 0) + 1
    save("counter", counter)
    return "sha256:" + hashlib.sha256(f"{seed}-{counter}".encode()).hexdigest()


def docker(args):
    images = load("images", {})
    buildx = os.path.exists(os.path.join(STATE, "buildx"))
    if args[:1] == ["info"]:
        return
    if args[:2] == ["buildx", "version"]:
        if not buildx:
            fail("docker: 'buildx' is not a docker command.")
        print("github.com/docker/buildx v0.17.1")
        return
    building = args[:1] == ["build"] or args[:2] == ["buildx", "build"]
    if building:
        if args[0] == "buildx" and not buildx:
            fail("docker: 'buildx' is not a docker command.")
        if any(a.startswith("--provenance") for a in args) and not buildx:
            fail("unknown flag: --provenance", 125)
        hook = os.path.join(STATE, "on-build")
        if os.path.exists(hook):
            os.rename(hook, hook + ".done")
            subprocess.run(["sh", hook + ".done"], check=True)
        tag = flag(args, "-t")
        image_id = next_id(tag)
        if "--push" in args:
            meta = flag(args, "--metadata-file")
            with open(meta, "w", encoding="utf-8") as f:
                json.dump({"containerimage.digest": "sha256:" + hashlib.sha256(image_id.encode()).hexdigest()}, f)
        else:
            images[tag] = image_id
            save("images", images)
        return
    if args[:2] == ["image", "inspect"]:
        name = args[-1]
        if name not in images:
            fail(f"Error: No such image: {name}")
        fmt = flag(args, "--format")
        print(images[name] if fmt == "{{.Id}}" else json.dumps([{"Id": images[name]}]))
        return
    if args[:2] == ["image", "ls"]:
        for image_id in sorted(set(images.values())):
            print(image_id[7:19])
        return
    if args[:2] == ["image", "rm"]:
        gone = {a for a in args[2:] if not a.startswith("-")}
        save("images", {k: v for k, v in images.items() if v[7:19] not in gone})
        return
    if args[:1] == ["pull"]:
        fail("Error response from daemon: pull access denied")
    if args[:1] == ["run"]:
        return
    fail(f"docker stand-in: no such call {args}", 2)


def kind(args):
    clusters = load("clusters", [])
    if args[:1] == ["version"]:
        print(os.environ.get("OPS_KIND_VERSION", "kind v0.25.0 go1.22.6 linux/amd64"))
        return
    if args[:2] == ["get", "clusters"]:
        print("\n".join(clusters))
        return
    name = flag(args, "--name")
    if args[:2] == ["create", "cluster"]:
        save("clusters", clusters + [name])
        save("contexts", load("contexts", []) + [f"kind-{name}"])
        return
    if args[:2] == ["load", "docker-image"]:
        if args[-1] not in load("images", {}):
            fail(f"ERROR: image: \"{args[-1]}\" not present locally")
        if name not in clusters:
            fail(f"ERROR: no nodes found for cluster \"{name}\"")
        return
    if args[:2] == ["delete", "cluster"]:
        save("clusters", [c for c in clusters if c != name])
        return
    fail(f"kind stand-in: no such call {args}", 2)


def kubectl(args):
    if args[:1] != ["--context"] or len(args) < 2:
        fail(f"kubectl called without --context first: {args}", 3)
    context, args = args[1], args[2:]
    if context not in load("contexts", []):
        fail(f"error: context \"{context}\" does not exist", 1)
    namespace = flag(args, "-n") or "default"
    if "-n" in args:
        i = args.index("-n")
        args = args[:i] + args[i + 2:]
    secrets = load("secrets", {})
    verb = args[0]
    if verb in ("version", "cluster-info", "exec", "port-forward"):
        return
    if verb == "create" and args[1:3] == ["secret", "generic"]:
        out = subprocess.run([real("kubectl"), "-n", namespace] + args, capture_output=True, text=True)
        sys.stdout.write(out.stdout)
        sys.stderr.write(out.stderr)
        sys.exit(out.returncode)
    if verb == "get" and args[1] == "secret":
        data = secrets.get(f"{namespace}/{args[2]}")
        if data is None:
            fail(f"Error from server (NotFound): secrets \"{args[2]}\" not found")
        key = re.fullmatch(r"jsonpath=\{\.data\.(.+)\}", flag(args, "-o") or "")
        if key:
            sys.stdout.write(data.get(key.group(1).replace("\\.", "."), ""))
        return
    if verb == "get":
        return
    if verb == "apply" and "-k" in args:
        rendered = subprocess.run([real("kubectl"), "kustomize", flag(args, "-k")], capture_output=True, text=True)
        if rendered.returncode:
            fail(rendered.stderr)
        import yaml  # noqa: PLC0415 (PyYAML, from the check's venv)

        templates = load("templates", {})
        for doc in yaml.safe_load_all(rendered.stdout):
            if doc and doc.get("kind") == "Deployment":
                name = doc["metadata"]["name"]
                template = json.dumps(doc["spec"]["template"], sort_keys=True)
                if templates.get(name) not in (None, template):
                    with open(os.path.join(STATE, "rollouts"), "a", encoding="utf-8") as f:
                        f.write(f"ROLLOUT {name}\n")
                templates[name] = template
        save("templates", templates)
        with open(os.path.join(STATE, "applied.yaml"), "w", encoding="utf-8") as f:
            f.write(rendered.stdout)
        return
    if verb == "apply":
        import yaml  # noqa: PLC0415

        for path in [a for i, a in enumerate(args) if i and args[i - 1] == "-f"]:
            with open(path, encoding="utf-8") as f:
                for doc in yaml.safe_load_all(f):
                    if doc and doc.get("kind") == "Secret":
                        ns = doc["metadata"].get("namespace", namespace)
                        secrets[f"{ns}/{doc['metadata']['name']}"] = doc.get("data", {})
        save("secrets", secrets)
        return
    if verb == "rollout":
        if args[1] == "restart":
            with open(os.path.join(STATE, "rollouts"), "a", encoding="utf-8") as f:
                f.write(f"RESTART {args[2]}\n")
        return
    fail(f"kubectl stand-in: no such call {args}", 2)


def curl(args):
    print('{"status":"ok"}')


def bsd(args):
    gnu_only = {
        "realpath": ("--relative-to", "--relative-base", "-m", "-e"),
        "readlink": ("-f", "-e", "-m", "--canonicalize"),
        "sort": ("-V", "--version-sort", "-h"),
        "stat": ("-c", "--format", "--printf"),
        "sed": ("--in-place", "-r", "--regexp-extended"),
    }
    for a in args:
        for bad in gnu_only[tool]:
            if a == bad or a.startswith(bad + "="):
                fail(f"{tool}: illegal option -- {bad.lstrip('-')[:1]}")
    if tool == "sed" and args and args[0] == "-i" and (len(args) < 2 or args[1].startswith("s")):
        fail("sed: -i needs a suffix argument on BSD")
    os.execv(real(tool), [tool] + args)


if tool in ("docker", "kind", "kubectl", "curl"):
    log()
    {"docker": docker, "kind": kind, "kubectl": kubectl, "curl": curl}[tool](argv[1:])
elif tool == "sha256sum":
    fail("sh: sha256sum: command not found", 127)
else:
    bsd(argv[1:])
