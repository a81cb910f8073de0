// The client's own parsing, where the stack cannot be made to show it at will: lines split
// across messages and UTF-8 split across chunks, and every close code the proxy sends. The
// WebSocket here is a scripted one; stack.test.mjs runs the real one end to end.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Client, MatchplaneError } from "../dist/index.js";

class ScriptedSocket {
  static last;
  constructor(url, protocol) {
    this.url = url;
    this.protocol = protocol;
    this.readyState = 0;
    this.sent = [];
    this.listeners = {};
    ScriptedSocket.last = this;
    queueMicrotask(() => this.emit("open", {}));
  }
  addEventListener(type, listener) {
    (this.listeners[type] ??= []).push(listener);
  }
  emit(type, event) {
    for (const l of this.listeners[type] ?? []) l(event);
  }
  send(data) {
    this.sent.push(typeof data === "string" ? data : new TextDecoder().decode(data));
  }
  close(code = 1000, reason = "") {
    this.emit("close", { code, reason });
  }
  bytes(text) {
    this.emit("message", { data: new TextEncoder().encode(text).buffer });
  }
}

const matched = {
  status: "matched",
  session_id: "s-1",
  players: ["alice"],
  connect_host: "127.0.0.1",
  connect_port: 1,
  ticket: "t.i.cket",
  connect_ws: "wss://example.invalid/play",
};

function client() {
  return new Client({ baseUrl: "https://example.invalid/api/", playerId: "alice", token: "tok", WebSocket: ScriptedSocket });
}

test("a player id outside the API's alphabet is refused up front", () => {
  assert.throws(() => new Client({ baseUrl: "x", playerId: "a b" }), MatchplaneError);
  assert.throws(() => new Client({ baseUrl: "x", playerId: "a".repeat(129) }), MatchplaneError);
});

test("the ticket is the first message, and WELCOME split across messages opens the connection", async () => {
  const pending = client().connect(matched);
  await new Promise((r) => setTimeout(r, 0));
  const ws = ScriptedSocket.last;
  assert.equal(ws.url, matched.connect_ws);
  assert.deepEqual(ws.sent, ["JOIN t.i.cket\n"]);
  ws.bytes("WELC");
  ws.bytes("OME s-1 alice running\r\nSTATE running\nRUNNING_LEN");
  // Joining a running match: the connection opens once the match's length is known too.
  let opened = false;
  pending.then(() => (opened = true));
  await new Promise((r) => setTimeout(r, 0));
  assert.equal(opened, false);
  ws.bytes("GTH 30\n");
  const connection = await pending;
  assert.equal(connection.state, "running");
  assert.equal(connection.runningLength, 30);
  assert.deepEqual(connection.greeting, ["WELCOME s-1 alice running", "STATE running", "RUNNING_LENGTH 30"]);
  // Lines before the first listener wait for it.
  ws.bytes("PONG early\n");
  const lines = [];
  connection.on("line", (l) => lines.push(l));
  assert.deepEqual(lines, ["PONG early"]);
  lines.length = 0;
  // A multi-byte character split between chunks arrives whole.
  const euro = new TextEncoder().encode("UNKNOWN \u20ac\n");
  ws.emit("message", { data: euro.slice(0, 9).buffer });
  ws.emit("message", { data: euro.slice(9).buffer });
  assert.deepEqual(lines, ["UNKNOWN \u20ac"]);
});

test("answers go to the request that asked for them, pushes do not confuse them", async () => {
  const pending = client().connect(matched);
  await new Promise((r) => setTimeout(r, 0));
  const ws = ScriptedSocket.last;
  ws.bytes("WELCOME s-1 alice open\n");
  const connection = await pending;
  const ping = connection.ping();
  const length = connection.requestMatch(10);
  assert.deepEqual(ws.sent.slice(1), ["PING n1\n", "REQUEST_MATCH 10\n"]);
  ws.bytes("PONG other\nRUNNING_LENGTH 10\nPONG n1\n");
  assert.equal(await length, 10);
  assert.ok((await ping) >= 0);
  assert.throws(() => connection.send("two\nlines"), TypeError);
  assert.throws(() => connection.send("x".repeat(1024)), TypeError);
});

for (const [code, name] of [
  [4001, "bad_ticket"],
  [4002, "expired_ticket"],
  [4003, "unknown_session"],
  [4004, "session_over"],
  [4005, "server_unreachable"],
  [4006, "bad_request"],
  [1008, "ticket_timeout"],
  [1009, "too_big"],
  [1007, "not_utf8"],
]) {
  test(`close code ${code} before WELCOME is a refusal ${name}`, async () => {
    const pending = client().connect(matched);
    await new Promise((r) => setTimeout(r, 0));
    ScriptedSocket.last.close(code, "why");
    await assert.rejects(pending, (e) => e instanceof MatchplaneError && e.kind === "refused" && e.code === name && e.closeCode === code);
  });
}

test("an ERROR line from the game server is a refusal with its code", async () => {
  const pending = client().connect(matched);
  await new Promise((r) => setTimeout(r, 0));
  ScriptedSocket.last.bytes("ERROR not_in_roster\n");
  await assert.rejects(pending, (e) => e.kind === "refused" && e.code === "not_in_roster");
});

test("a connection lost mid-match fails what waits and says so", async () => {
  const pending = client().connect(matched);
  await new Promise((r) => setTimeout(r, 0));
  const ws = ScriptedSocket.last;
  ws.bytes("WELCOME s-1 alice open\n");
  const connection = await pending;
  const state = connection.getState();
  ws.close(1006, "");
  await assert.rejects(state, (e) => e.kind === "closed" && e.code === "connection_lost");
  const info = await connection.closed;
  assert.equal(info.code, 1006);
  assert.equal(info.error.code, "connection_lost");
});

test("measureLatency gives each region its median round trip and leaves out one that never answers", async () => {
  const { measureLatency } = await import("../dist/index.js");
  let clock = 0;
  const trips = { "https://eu.example/livez": [50, 10, 30, 20, 40, 15], "https://us.example/livez": [90, 80, 70, 85, 75, 95] };
  const seen = [];
  const fakeFetch = async (url, init) => {
    seen.push([url, init.mode, init.cache]);
    if (url.startsWith("https://gone")) throw new TypeError("fetch failed");
    clock += trips[url].shift();
    return { arrayBuffer: async () => new ArrayBuffer(0) };
  };
  const map = await measureLatency(
    { eu: "https://eu.example/", us: "https://us.example", gone: "https://gone.example" },
    { fetch: fakeFetch, now: () => clock, count: 5 },
  );
  // The first request of each (50 and 90) opens the connection and does not count.
  assert.deepEqual(map, { eu: 20, us: 80 });
  assert.ok(seen.every(([, mode, cache]) => mode === "no-cors" && cache === "no-store"));
});
