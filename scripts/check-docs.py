#!/usr/bin/env python3
"""The documentation against the binaries and the Makefile (run by CI through `make docs-check`).

1. Every environment variable a binary's `--help` names is in docs/configuration.md's table
   (or paragraph) for that binary, and every variable that table names is in `--help`.
2. Every variable a `make` entry point's script reads from the environment is named in that
   target's `make help` line.
3. Every relative link of the README and docs/ reaches a file that exists, and its `#anchor`
   a heading of that file.
Exits 1 with one line per disagreement.
"""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
BIN = os.path.join(TARGET, "debug")

# The configuration reference: its section -> the command whose --help it documents.
CONFIGURATION = "docs/configuration.md"
SECTIONS = {
    "## game-server": ["game-server"],
    "## backend": ["backend"],
    "## proxy": ["proxy"],
    "## loadgen": ["loadgen", "swarm"],
}
# Settings every binary takes, documented once for all in the Configuration section.
SHARED = {"RUST_LOG", "LOG_FORMAT"}
# Read from the environment by the platform, not set by operators.
PLATFORM = {"HOSTNAME", "PATH", "KUBECONFIG"}
# Game-protocol words the sections quote, not settings.
PROTOCOL = {"JOIN", "WELCOME", "TEAM", "REQUEST_MATCH", "RUNNING_LENGTH", "ERROR", "STATE", "UNKNOWN", "LISTENING"}
NAME = re.compile(r"`([A-Z][A-Z0-9_]{2,})`")

# make target -> the scripts it runs.
ENTRY_POINTS = {
    "demo": ["scripts/demo.sh", "scripts/stack.sh"],
    "demo-kubernetes": ["scripts/demo-kubernetes.sh"],
    "up-local": ["scripts/local.sh", "scripts/stack.sh"],
    "demo-web": ["scripts/web.sh", "scripts/stack.sh"],
    "web-check": ["scripts/web.sh", "scripts/stack.sh"],
    "bench-matchmaker": ["scripts/bench-matchmaker.sh"],
    "bench-proxy": ["scripts/bench-proxy.sh"],
    "rollout-check": ["scripts/rollout-check.sh"],
    "fuzz": ["scripts/fuzz.sh"],
}
# Variables scripts read that are not for the person running make: CI, the toolchain,
# and the scripts' own hand-over variables (MP_*).
NOT_SETTINGS = {"CARGO_TARGET_DIR", "CI", "HOME", "TMPDIR", "PATH"}


def settings_read(text):
    read = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*):[-=]", text))
    return {v for v in read if not v.startswith("MP_") and v not in NOT_SETTINGS}


def cluster_targets(lines):
    """kind/ops.sh serves every cluster target, one `case` branch each: a branch's settings
    must be on its target's help line, and the settings the whole script and kind/images.sh
    read on at least one cluster target's line."""
    problems = []
    ops = open(os.path.join(ROOT, "kind/ops.sh"), encoding="utf-8").read()
    head, _, body = ops.partition('case "$TARGET" in')
    branches = re.findall(r"^  ([a-z-]+)\)\n(.*?)^    ;;$", body, re.S | re.M)
    if not branches:
        return ["docs-check: found no targets in kind/ops.sh"]
    for target, branch in branches:
        if target not in lines:
            problems.append(f"make help: kind/ops.sh has a target {target} that make does not offer")
            continue
        for var in sorted(settings_read(branch)):
            if not re.search(rf"\b{var}\b", lines[target]):
                problems.append(f"make help: {target} reads {var} but its help line does not name it")
    shared = settings_read(head) | settings_read(open(os.path.join(ROOT, "kind/images.sh"), encoding="utf-8").read())
    cluster_lines = " ".join(lines.get(t, "") for t, _ in branches)
    for var in sorted(shared):
        if not re.search(rf"\b{var}\b", cluster_lines):
            problems.append(f"make help: the cluster targets read {var} but no cluster target's help line names it")
    return problems


def configuration_sections():
    text = open(os.path.join(ROOT, CONFIGURATION), encoding="utf-8").read()
    sections, current = {}, None
    for line in text.splitlines():
        if line.startswith("#"):
            current = line.strip() if line.strip() in SECTIONS else None
            if current:
                sections[current] = ""
            continue
        if current:
            sections[current] += line + "\n"
    return sections


def slug(heading):
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(path):
    found, seen, fence = set(), {}, False
    for line in open(path, encoding="utf-8"):
        if line.startswith("```"):
            fence = not fence
        if fence or not re.match(r"#{1,6} ", line):
            continue
        base = slug(line.lstrip("#"))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def broken_links():
    problems = []
    pages = ["README.md"] + sorted(
        os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md")
    )
    for page in pages:
        text = re.sub(r"```.*?```", "", open(os.path.join(ROOT, page), encoding="utf-8").read(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), path)) if path else os.path.join(ROOT, page)
            if not os.path.exists(file):
                problems.append(f"{page}: a link to {target}, which does not exist")
            elif anchor and file.endswith(".md") and anchor not in anchors(file):
                problems.append(f"{page}: a link to {target}, a heading {os.path.relpath(file, ROOT)} does not have")
    return problems


def help_env(command):
    out = subprocess.run([os.path.join(BIN, command[0])] + command[1:] + ["--help"],
                         capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"\[env: ([A-Z][A-Z0-9_]*)[=\]]", out))


def main():
    problems = []
    sections = configuration_sections()
    for section, command in SECTIONS.items():
        if section not in sections:
            problems.append(f"{CONFIGURATION}: no section {section!r}")
            continue
        documented = set(NAME.findall(sections[section])) - SHARED - PROTOCOL
        offered = help_env(command) - SHARED - PLATFORM
        name = " ".join(command)
        for missing in sorted(offered - documented):
            problems.append(f"{CONFIGURATION} {section}: {missing} is in `{name} --help` but not documented there")
        for extra in sorted(documented - offered):
            # Names of other things (end reasons, statuses) are lower case; an upper-case
            # name in a settings section that --help lacks is a setting that does not exist.
            if extra not in PLATFORM:
                problems.append(f"{CONFIGURATION} {section}: {extra} is documented but `{name} --help` has no such setting")
    helps = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    lines = {l.split()[0]: l for l in helps.splitlines() if l.strip()}
    for target, scripts in ENTRY_POINTS.items():
        read = set()
        for script in scripts:
            body = open(os.path.join(ROOT, script), encoding="utf-8").read()
            read |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]*):[-=]", body))
        read = {v for v in read if not v.startswith("MP_") and v not in NOT_SETTINGS}
        line = lines.get(target, "")
        for var in sorted(read):
            if not re.search(rf"\b{var}\b", line):
                problems.append(f"make help: {target} reads {var} but its help line does not name it")
    problems += cluster_targets(lines)
    problems += broken_links()
    for p in problems:
        print(p)
    if problems:
        print(f"docs-check: {len(problems)} disagreements")
        return 1
    print("docs-check: the configuration tables match --help; make help names every variable its targets read; every link of the README and docs/ resolves")
    return 0


if __name__ == "__main__":
    sys.exit(main())
