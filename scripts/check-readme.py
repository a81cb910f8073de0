#!/usr/bin/env python3
"""The hands-on examples of the README and docs/, run as written (part of `make scripts-check`).

Every ```sh block of README.md and docs/*.md that starts the local stack (`make up-local`) is
run line by line, from the repository's root, in one shell (what one line sets, the next
sees), as a newcomer would paste it. Each line must succeed, and a line whose comment says what it answers
must answer that. The one interactive line, `nc` to the proxy ("then type: ..."), is played by
a client that connects where that line says and types what its comment says to type, then reads
until the match stops.

  scripts/check-readme.py            run every such block
  scripts/check-readme.py play H P   (internal) the `nc` line's player
"""

import glob
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


PAGES = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))


def blocks(page):
    """(where, [commands]) of each ```sh block of `page` whose first command starts the stack."""
    lines = open(os.path.join(ROOT, page), encoding="utf-8").read().splitlines()
    out, i = [], 0
    while i < len(lines):
        if lines[i].strip() != "```sh":
            i += 1
            continue
        start, body, i = i + 1, [], i + 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        commands, pending = [], ""
        for line in body:
            pending = f"{pending}\n{line}" if pending else line
            # A command goes on while a quote is open or the line ends with a backslash.
            if not scan(pending)[0] and not pending.rstrip().endswith("\\"):
                commands.append(pending)
                pending = ""
        if pending:
            sys.exit(f"check-readme: {page} line {start + 1}: a quote is never closed: {pending}")
        if commands and "make up-local" in commands[0]:
            out.append((f"{page} line {start + 1}", commands))
    return out


def scan(command):
    """(whether a quote is still open at the end, the last comment) of shell text: a `#` that
    starts a word outside quotes comments out the rest of its line, apostrophes included."""
    quote, note, k = None, "", 0
    while k < len(command):
        ch = command[k]
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or command[k - 1] in " \t\n"):
            end = command.find("\n", k)
            end = len(command) if end < 0 else end
            note, k = command[k + 1 : end].strip(), end
            continue
        k += 1
    return quote is not None, note


def comment(command):
    """The command's trailing comment, or ''."""
    return scan(command)[1]


def body_of(output):
    """The last JSON object the command printed."""
    for line in reversed(output.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


# What a line's comment promises, and how to tell from what the line printed; a promise not
# yet kept is asked again for a while (the history is written a moment after a match ends).
def _body(test):
    return lambda out: bool(test(body_of(out) or {}))


PROMISES = [
    (r"prints its URLs, tokens and a player token each for alice and bob",
     lambda out: all(f"player token for {p}" in out for p in ("alice", "bob")) and "admin token:" in out),
    (r"stops it", lambda out: "the local stack is stopped" in out),
    (r'"matched", with a ticket', _body(lambda b: b.get("status") == "matched" and b.get("ticket"))),
    (r"^403", _body(lambda b: (b.get("error") or {}).get("code") == "forbidden")),
    (r"the history", _body(lambda b: (b.get("matches") or [{}])[0].get("end_reason"))),
    (r"^queued", _body(lambda b: b.get("status") == "queued" and "skill_spread" in b)),
]


class Shell:
    """One bash, fed one command at a time, as a terminal would be."""

    def __init__(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MP_")}
        self.sh = subprocess.Popen(
            ["bash"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, cwd=ROOT, env=env,
        )
        # The interactive `nc` is played by this script; everything else runs as written.
        # The env file's settings are shell variables (not exported): hand over what it needs.
        self.send(
            f'nc() {{ MP_PROXY_URL="$MP_PROXY_URL" MP_ALICE_TOKEN="$MP_ALICE_TOKEN" '
            f'python3 "{os.path.abspath(__file__)}" play "$@" </dev/null; }}'
        )
        self.n = 0

    def send(self, text):
        self.sh.stdin.write(text + "\n")
        self.sh.stdin.flush()

    def run(self, command):
        self.n += 1
        mark = f"@@readme-check-{self.n}"
        self.send(command)
        # curl prints a body with no newline at its end: the mark goes on a line of its own.
        self.send(f'printf "\\n{mark} %s\\n" "$?"')
        out = []
        while True:
            line = self.sh.stdout.readline()
            if not line:
                raise SystemExit(f"check-readme: the shell exited during: {command}")
            if line.startswith(mark):
                return int(line.split()[1]), "".join(out)
            out.append(line)

    def close(self):
        self.sh.stdin.close()
        self.sh.wait(timeout=60)


def check_block(start, commands):
    shell = Shell()
    try:
        for command in commands:
            kept = None
            for pattern, test in PROMISES:
                if re.search(pattern, comment(command)):
                    kept = test
            print(f"check-readme: $ {command.splitlines()[0]}", flush=True)
            deadline = time.time() + 10
            while True:
                rc, out = shell.run(command)
                if rc != 0:
                    raise SystemExit(f"check-readme: {start}: exit {rc}: {command}\n{out[-2000:]}")
                if kept is None or kept(out):
                    break
                if time.time() > deadline:
                    raise SystemExit(
                        f"check-readme: {start}: not what its comment says ({comment(command)}): "
                        f"{command}\n{out[-2000:]}"
                    )
                time.sleep(0.5)
    finally:
        # Whatever happened, nothing stays running.
        shell.run("make down-local >/dev/null 2>&1 || true")
        shell.close()
    print(f"check-readme: {start}: {len(commands)} commands ran as written")


def play(host, port):
    """The README's `nc` line: JOIN with alice's ticket, then what its comment says to type."""
    request = urllib.request.Request(
        f"{os.environ['MP_PROXY_URL']}/api/match/status?player_id=alice",
        headers={"Authorization": f"Bearer {os.environ['MP_ALICE_TOKEN']}"},
    )
    ticket = json.load(urllib.request.urlopen(request, timeout=10))["ticket"]
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    typed = re.search(r"then type: JOIN <ticket>, ([^\n]*)", readme).group(1).split(", ")
    seen = []
    with socket.create_connection((host, int(port)), timeout=40) as conn:
        conn.sendall(f"JOIN {ticket}\n".encode())
        for line in typed:
            conn.sendall(f"{line}\n".encode())
        reader = conn.makefile("r", encoding="utf-8")
        for line in reader:
            seen.append(line.strip())
            print(line.strip())
            if line.startswith("STATE stop"):
                break
    wanted = ["WELCOME", "STATE running", "PONG hi", "STATE stop"]
    missing = [w for w in wanted if not any(s.startswith(w) for s in seen)]
    if missing:
        sys.exit(f"the game answered {seen}, without {missing}")


def main():
    if sys.argv[1:2] == ["play"]:
        play(*sys.argv[2:4])
        return
    found = [block for page in PAGES for block in blocks(page)]
    if not any(where.startswith("README.md") for where, _ in found):
        sys.exit("check-readme: no README example starts the local stack")
    for start, commands in found:
        check_block(start, commands)


if __name__ == "__main__":
    main()
