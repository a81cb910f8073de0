// The web example: signs a player in (the example's server mints a token, as a studio's
// sign-in would), joins matchplane's queue, follows the status by long poll, and plays the
// built-in game over the proxy's WebSocket with matchplane's JavaScript client.
import { Client, MatchplaneError } from "/client/index.js";

const $ = (id) => document.getElementById(id);
const saved = "matchplane.signin";

let client = null;
let connection = null;
let joinedAt = 0;
let waiting = null;

function show(state, text, detail = "") {
  $("state").dataset.state = state;
  $("state").textContent = text;
  $("detail").textContent = detail;
}

function line(text, kind = "") {
  const item = document.createElement("li");
  item.textContent = text;
  if (kind) item.className = kind;
  $("lines").append(item);
  $("lines").scrollTop = $("lines").scrollHeight;
}

function buttons() {
  const live = connection !== null;
  $("join").disabled = waiting !== null || live;
  $("cancel").disabled = waiting === null;
  $("request").disabled = !live;
  $("ping").disabled = !live;
  $("quit").disabled = !live;
}

function explain(error) {
  if (error instanceof MatchplaneError) return `${error.kind}: ${error.code} (${error.message})`;
  return String(error?.message ?? error);
}

function fail(error) {
  show("failed", "error", explain(error));
  line(explain(error), "note");
}

function signedIn(signin) {
  client = new Client({ baseUrl: signin.api, playerId: signin.player_id, token: signin.token });
  $("who").hidden = false;
  $("who").textContent = `Signed in as ${signin.player_id}.`;
  $("signin").hidden = true;
  $("play-panel").hidden = false;
  show("signed-in", "signed in");
  buttons();
}

async function signIn(event) {
  event.preventDefault();
  const player = $("player").value.trim();
  $("signin-button").disabled = true;
  try {
    const response = await fetch("/signin", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ player_id: player }),
    });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error?.message ?? `sign-in failed (${response.status})`);
    sessionStorage.setItem(saved, JSON.stringify(body));
    signedIn(body);
    await resume();
  } catch (error) {
    $("who").hidden = false;
    $("who").textContent = explain(error);
  } finally {
    $("signin-button").disabled = false;
  }
}

function describe(status) {
  $("session-id").textContent = status.session_id || "-";
  $("players").textContent = status.players?.length ? status.players.join(", ") : "-";
}

async function join() {
  joinedAt = performance.now();
  $("time-to-play").textContent = "-";
  delete $("time-to-play").dataset.ms;
  $("lines").replaceChildren();
  $("history-panel").hidden = true;
  try {
    const status = await client.join();
    await follow(status);
  } catch (error) {
    fail(error);
  }
}

// Long-polls from `status` until the player is matched (then connects) or the ticket ends.
async function follow(status) {
  describe(status);
  if (status.status === "queued" || status.status === "allocating") {
    show("waiting", "waiting", status.status === "allocating" ? "a server is starting" : "in the queue");
    waiting = new AbortController();
    buttons();
    try {
      status = await client.waitForMatch({
        signal: waiting.signal,
        onStatus: (s) => {
          describe(s);
          if (s.status === "allocating") show("waiting", "waiting", "a server is starting");
        },
      });
    } finally {
      waiting = null;
      buttons();
    }
    describe(status);
  }
  if (status.status === "matched") return play(status);
  if (status.status === "ended") return ended(status);
  show("failed", status.status === "timed_out" ? "timed out" : status.status, "join again to play");
}

async function cancel() {
  waiting?.abort();
  try {
    await client.cancel();
    show("signed-in", "left the queue");
  } catch (error) {
    fail(error);
  }
}

async function play(status) {
  show("matched", "matched", "connecting to the game server");
  $("connection").textContent = status.connect_ws ?? "-";
  connection = await client.connect(status, { timeoutMs: 10000 });
  $("reconnect").disabled = true;
  buttons();
  for (const text of connection.greeting) line(text);
  onState(connection.state);
  if ($("auto").checked && connection.state === "open") requestMatch();
  connection.on("line", (text) => line(text));
  connection.on("state", onState);
  connection.on("close", async (info) => {
    connection = null;
    buttons();
    line(`connection closed (${info.code}${info.reason ? `: ${info.reason}` : ""})`, "note");
    try {
      const after = await client.status();
      if (after.status === "matched") {
        show("matched", "disconnected", "the match goes on: reconnect to play");
        $("reconnect").disabled = false;
      } else if (after.status === "ended") {
        await ended(after);
      } else {
        show("failed", after.status);
      }
    } catch (error) {
      fail(error);
    }
  });
}

function onState(state) {
  if (state === "running") {
    show("running", "running", `${connection?.runningLength || "?"} s match`);
    if (!$("time-to-play").dataset.ms && joinedAt > 0) {
      const ms = Math.round(performance.now() - joinedAt);
      $("time-to-play").dataset.ms = String(ms);
      $("time-to-play").textContent = `${ms} ms`;
    }
  } else if (state === "open") {
    show("matched", "matched", "waiting for a match length and the other players");
  }
}

async function ended(status) {
  describe(status);
  show("ended", "ended", status.end_reason ?? "");
  try {
    // The history is written a moment after the match ends: wait for its row to be closed.
    let history = await client.history({ limit: 5 });
    for (let i = 0; i < 20; i++) {
      const row = history.matches.find((m) => m.session_id === status.session_id);
      if (row?.end_reason) break;
      await new Promise((resolve) => setTimeout(resolve, 250));
      history = await client.history({ limit: 5 });
    }
    const rows = history.matches.map((m) => {
      const row = document.createElement("tr");
      const cells = [
        m.session_id.slice(0, 8),
        m.players.join(", "),
        m.started_at ? new Date(m.started_at).toLocaleTimeString() : "-",
        m.requested_seconds ? `${m.requested_seconds} s` : "-",
        m.end_reason ?? m.status,
      ];
      cells.forEach((text, i) => {
        const cell = document.createElement("td");
        cell.textContent = text;
        if (i === 0) cell.className = "mono";
        row.append(cell);
      });
      row.dataset.session = m.session_id;
      row.dataset.endReason = m.end_reason ?? "";
      return row;
    });
    $("history").replaceChildren(...rows);
    $("history-panel").hidden = false;
  } catch (error) {
    line(`history: ${explain(error)}`, "note");
  }
}

async function reconnect() {
  $("reconnect").disabled = true;
  try {
    const status = await client.status();
    if (status.status === "matched") await play(status);
    else await follow(status);
  } catch (error) {
    fail(error);
  }
}

async function ask(action) {
  try {
    await action();
  } catch (error) {
    line(explain(error), "note");
  }
}

// A signed-in tab that is reloaded picks up where it was: waiting, or back in its match.
async function resume() {
  try {
    const status = await client.status();
    if (status.status === "queued" || status.status === "allocating" || status.status === "matched") {
      joinedAt = 0;
      await follow(status);
    }
  } catch (error) {
    fail(error);
  }
}

$("signin").addEventListener("submit", signIn);
$("join").addEventListener("click", join);
$("cancel").addEventListener("click", cancel);
$("reconnect").addEventListener("click", reconnect);
function requestMatch() {
  return ask(async () => {
    const seconds = Number($("length").value);
    line(`REQUEST_MATCH ${seconds}`, "sent");
    await connection.requestMatch(seconds);
  });
}

$("request").addEventListener("click", requestMatch);
$("ping").addEventListener("click", () =>
  ask(async () => {
    const ms = await connection.ping();
    line(`round trip ${ms.toFixed(1)} ms`, "note");
  }),
);
$("quit").addEventListener("click", () =>
  ask(async () => {
    line("QUIT", "sent");
    await connection.quit();
  }),
);

const restored = sessionStorage.getItem(saved);
if (restored) {
  signedIn(JSON.parse(restored));
  resume();
}
