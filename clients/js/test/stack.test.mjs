// The client against a running matchplane stack (the proxy over TLS, the backend with
// RUNTIME=local, Redis, PostgreSQL), as `make web-check` starts it. Settings: MP_API_URL (the
// proxy's https://.../api), LOADGEN and PLAYER_TOKEN_SECRET (player tokens, as the studio's
// identity service would mint them), MP_SESSION_SIZE (the stack's SESSION_SIZE), and
// NODE_EXTRA_CA_CERTS (the run's CA). Without MP_API_URL the file is skipped.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { Client, MatchplaneError, measureLatency } from "../dist/index.js";

const api = process.env.MP_API_URL;
const size = Number(process.env.MP_SESSION_SIZE ?? 3);
const run = randomBytes(4).toString("hex");
const skip = api ? false : "MP_API_URL is not set (make web-check runs these against the stack)";

function token(player) {
  return execFileSync(process.env.LOADGEN, ["token", "--player", player], {
    env: { PLAYER_TOKEN_SECRET: process.env.PLAYER_TOKEN_SECRET },
  })
    .toString()
    .trim();
}

function client(name) {
  const playerId = `js-${run}-${name}`;
  return new Client({ baseUrl: api, playerId, token: token(playerId) });
}

async function rejects(promise, fields) {
  try {
    await promise;
  } catch (e) {
    assert.ok(e instanceof MatchplaneError, `expected a MatchplaneError, got ${e}`);
    for (const [key, value] of Object.entries(fields)) assert.equal(e[key], value, `${key} of ${e.message}`);
    return e;
  }
  assert.fail(`expected a ${JSON.stringify(fields)} error`);
}

// Players joined together until one session is full; answers their matched statuses.
async function matchedGroup(prefix) {
  const players = Array.from({ length: size }, (_, i) => client(`${prefix}${i}`));
  for (const p of players) {
    const status = await p.join();
    assert.ok(["queued", "allocating", "matched"].includes(status.status), status.status);
  }
  const statuses = await Promise.all(players.map((p) => p.waitForMatch({ timeoutMs: 20000 })));
  for (const s of statuses) assert.equal(s.status, "matched");
  return { players, statuses };
}

test("a token that does not verify is an http error unauthorized", { skip }, async () => {
  const c = new Client({ baseUrl: api, playerId: `js-${run}-forger`, token: "not.a.jwt" });
  await rejects(c.join(), { kind: "http", code: "unauthorized", status: 401 });
  // Another player's token is forbidden.
  const other = new Client({ baseUrl: api, playerId: `js-${run}-victim`, token: token(`js-${run}-forger`) });
  await rejects(other.status(), { kind: "http", code: "forbidden", status: 403 });
});

test("an unreachable API is a network error", { skip }, async () => {
  const c = new Client({ baseUrl: "https://127.0.0.1:1/api", playerId: `js-${run}-x`, token: "t" });
  await rejects(c.status(), { kind: "network", code: "unreachable" });
});

test("join, cancel, and a wait that runs out", { skip }, async () => {
  const c = client("cancel");
  const queued = await c.join();
  assert.equal(queued.status, "queued");
  assert.equal(queued.session_id, `pending:${c.playerId}`);
  await rejects(c.waitForMatch({ timeoutMs: 300 }), { kind: "timeout" });
  const controller = new AbortController();
  const waiting = c.waitForMatch({ signal: controller.signal });
  controller.abort();
  await rejects(waiting, { kind: "aborted" });
  assert.equal(await c.cancel(), true);
  assert.equal(await c.cancel(), false);
  assert.equal((await c.status()).status, "unknown");
});

test("a whole match over WebSocket: connect, play, reconnect, end, history", { skip, timeout: 60000 }, async () => {
  const { players, statuses } = await matchedGroup("m");
  for (const s of statuses) {
    assert.equal(s.connect_tls, true);
    assert.match(s.connect_ws, /^wss:\/\/.+\/play$/);
    assert.equal(s.session_id, statuses[0].session_id);
  }
  // In a session: cancel is refused.
  await rejects(players[0].cancel(), { kind: "http", code: "in_session", status: 409 });

  const connections = await Promise.all(players.map((p, i) => p.connect(statuses[i], { timeoutMs: 10000 })));
  for (const c of connections) {
    assert.equal(c.sessionId, statuses[0].session_id);
    assert.equal(c.state, "open");
  }
  const rtt = await connections[0].ping();
  assert.ok(rtt >= 0);
  assert.equal(await connections[0].getState(), "open");
  await rejects(connections[0].requestMatch(0), { kind: "refused", code: "invalid" });

  const running = connections.map((c) => new Promise((resolve) => c.on("state", (s) => s === "running" && resolve())));
  assert.equal(await connections[0].requestMatch(3), 3);
  await Promise.all(running);

  // A dropped connection comes back to the running match with a fresh ticket.
  const last = connections.length - 1;
  connections[last].close();
  const dropped = await connections[last].closed;
  assert.equal(dropped.code, 1000);
  const again = await players[last].reconnect({ timeoutMs: 10000 });
  assert.equal(again.sessionId, statuses[0].session_id);
  assert.equal(again.state, "running");
  assert.equal(again.runningLength, 3);
  connections[last] = again;

  // The match ends by itself: STATE stop, the connection closed by the server.
  const seen = [];
  connections[0].on("line", (line) => seen.push(line));
  const closes = await Promise.all(connections.map((c) => c.closed));
  for (const info of closes) {
    assert.equal(info.error, undefined, `closed with ${info.error?.message}`);
  }
  assert.ok(seen.includes("STATE stop"), `lines: ${seen}`);
  assert.equal(connections[0].state, "stop");
  await rejects(Promise.resolve().then(() => connections[0].send("PING")), { kind: "closed" });

  const ended = await players[0].waitFor(["ended"], { timeoutMs: 10000 });
  assert.equal(ended.end_reason, "completed");
  // Reconnecting to a session that is over says so.
  await rejects(players[0].reconnect(), { kind: "not_matched", code: "ended" });

  // The history has the match, written by the backend from the server's report.
  let row;
  for (let i = 0; i < 50 && !row; i++) {
    const history = await players[0].history({ limit: 5 });
    row = history.matches.find((m) => m.session_id === statuses[0].session_id && m.end_reason);
    if (!row) await new Promise((r) => setTimeout(r, 200));
  }
  assert.ok(row, "the match is in the player's history");
  assert.equal(row.end_reason, "completed");
  assert.equal(row.requested_seconds, 3);
  assert.deepEqual([...row.players].sort(), players.map((p) => p.playerId).sort());
});

test("a forged or another session's ticket is refused with the proxy's close code", { skip, timeout: 60000 }, async () => {
  const { players, statuses } = await matchedGroup("f");
  const forged = { ...statuses[0], ticket: `${statuses[0].ticket.slice(0, -4)}AAAA` };
  const e = await rejects(players[0].connect(forged, { timeoutMs: 10000 }), { kind: "refused", code: "bad_ticket" });
  assert.equal(e.closeCode, 4001);
  const garbage = { ...statuses[0], ticket: "garbage" };
  await rejects(players[0].connect(garbage, { timeoutMs: 10000 }), { kind: "refused", code: "bad_ticket" });
  // A status that is not matched cannot connect.
  await rejects(players[0].connect({ ...statuses[0], status: "queued", ticket: null }), { kind: "not_matched" });
  // The real tickets still work; the session is ended by its players leaving.
  const connections = await Promise.all(players.map((p, i) => p.connect(statuses[i], { timeoutMs: 10000 })));
  for (const c of connections) {
    const info = await c.quit();
    assert.equal(info.error, undefined);
  }
});

test("the latency map holds the real proxy and leaves out one that is not there", { skip }, async () => {
  const proxy = api.replace(/\/api\/?$/, "");
  const map = await measureLatency({ here: proxy, gone: "https://127.0.0.1:1" }, { count: 3, timeoutMs: 2000 });
  assert.deepEqual(Object.keys(map), ["here"]);
  assert.ok(map.here > 0 && map.here < 2000, `${map.here} ms`);
});
