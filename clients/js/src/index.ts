/**
 * matchplane's client for browsers and Node: join a queue, follow the player's status by long
 * poll, and play over a WebSocket game connection (`/play`, subprotocol `matchplane.v1`).
 *
 * No runtime dependencies: it uses the platform's `fetch`, `WebSocket`, `TextEncoder` and
 * `TextDecoder` (a browser's, or Node's with `--experimental-websocket` before Node 22), or
 * the ones given in {@link ClientOptions}.
 *
 * Every failure is a {@link MatchplaneError} whose `kind` says what went wrong and whose
 * `code` is the API's or the game protocol's own code.
 */

/** Where a player stands. */
export type StatusKind = "queued" | "allocating" | "matched" | "ended" | "timed_out" | "unknown";

/** The API's status shape, as `POST /match/join` and `GET /match/status` answer it. */
export interface Status {
  status: StatusKind;
  session_id: string;
  players: string[];
  connect_host: string;
  connect_port: number;
  ticket: string | null;
  /** Whether `connect_host:connect_port` speaks TLS (matched answers only). */
  connect_tls?: boolean;
  /** The game connection's WebSocket URL (matched answers, when the server has a TCP port). */
  connect_ws?: string;
  /** Why the session ended (`ended` answers). */
  end_reason?: string;
  /** The queue, for queues other than `default`. */
  queue?: string;
  /** How long the ticket has waited (queued answers of rule queues). */
  wait_ms?: number;
  [field: string]: unknown;
}

/** A `matched` status: it carries a ticket. */
export interface MatchedStatus extends Status {
  status: "matched";
  ticket: string;
}

/** One row of a player's history (`GET /players/{id}/matches`). */
export interface MatchRecord {
  session_id: string;
  status: string;
  players: string[];
  created_at: string | null;
  started_at: string | null;
  ended_at: string | null;
  end_reason: string | null;
  requested_seconds: number | null;
  joined_at?: string | null;
  left_at?: string | null;
  queue?: string;
  [field: string]: unknown;
}

/** A page of a player's history. */
export interface History {
  player_id: string;
  matches: MatchRecord[];
  next_offset: number | null;
}

/**
 * What went wrong:
 * - `http`: the API answered an error (`status` and the API's `code`: `unauthorized`,
 *   `in_session`, `throttled`, ...);
 * - `network`: the API could not be reached, or answered something that is not the API;
 * - `refused`: the game connection was refused (`code`: `bad_ticket`, `expired_ticket`,
 *   `unknown_session`, `session_over`, `server_unreachable`, `bad_request`,
 *   `ticket_timeout`, `too_big`, or the game server's own `ERROR` code);
 * - `closed`: the game connection closed before an answer came;
 * - `no_game_connection`: the session's server cannot be reached over WebSocket;
 * - `not_matched`: a game connection needs a matched status;
 * - `timeout`: a wait given to the client ran out;
 * - `aborted`: the caller's `AbortSignal` fired.
 */
export type ErrorKind =
  | "http"
  | "network"
  | "refused"
  | "closed"
  | "no_game_connection"
  | "not_matched"
  | "timeout"
  | "aborted";

/** A failure of the client, typed by `kind`. */
export class MatchplaneError extends Error {
  readonly kind: ErrorKind;
  readonly code: string;
  /** The HTTP status of an `http` error. */
  readonly status: number | undefined;
  /** Seconds to wait before trying again (a `throttled` answer's `Retry-After`). */
  readonly retryAfter: number | undefined;
  /** The WebSocket close code of a `refused` or `closed` game connection. */
  readonly closeCode: number | undefined;

  constructor(
    kind: ErrorKind,
    code: string,
    message: string,
    extra: { status?: number; retryAfter?: number; closeCode?: number } = {},
  ) {
    super(message);
    this.name = "MatchplaneError";
    this.kind = kind;
    this.code = code;
    this.status = extra.status;
    this.retryAfter = extra.retryAfter;
    this.closeCode = extra.closeCode;
  }
}

/** The part of the platform's `WebSocket` the client uses. */
export interface WebSocketLike {
  binaryType: string;
  readonly protocol: string;
  readonly readyState: number;
  send(data: string | ArrayBufferLike | ArrayBufferView): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: string, listener: (event: any) => void): void;
}

/** A `WebSocket` constructor. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface ClientOptions {
  /**
   * The API's base URL: the proxy's `/api` (`https://play.example/api`) or a backend's root.
   */
  baseUrl: string;
  /** The player this client acts for. */
  playerId: string;
  /**
   * The player's token (a JWT from the studio's identity service), or a function giving a
   * fresh one for each request. Left out where the API runs with `PLAYER_AUTH=none`.
   */
  token?: string | (() => string | Promise<string>);
  /** The `fetch` to use (default: the platform's). */
  fetch?: typeof fetch;
  /** The `WebSocket` to use (default: the platform's). */
  WebSocket?: WebSocketConstructor;
  /** How long one long poll may wait on the server, in seconds (1 to 30; default 25). */
  pollSeconds?: number;
}

export interface JoinOptions {
  /** The queue to wait in (`default` when left out). */
  queue?: string;
  /** The player's attributes: strings, numbers, or region → milliseconds maps. */
  attributes?: Record<string, string | number | Record<string, number>>;
  /** Make the join a long poll too: wait up to this many seconds for a match (0 to 30). */
  wait?: number;
  signal?: AbortSignal;
}

export interface StatusOptions {
  /** Long-poll: wait up to this many seconds (0 to 30) for a change. */
  wait?: number;
  /** The status last seen: answer as soon as the status differs from it. */
  since?: StatusKind;
  signal?: AbortSignal;
}

export interface WaitOptions {
  /** Give up (a `timeout` error) after this many milliseconds. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Called with every status seen on the way. */
  onStatus?: (status: Status) => void;
}

/** A game server's state, as the built-in game tells it. */
export type GameState = "open" | "running" | "stop";

const TERMINAL_FOR_MATCH: ReadonlySet<StatusKind> = new Set(["matched", "ended", "timed_out", "unknown"]);
const SUBPROTOCOL = "matchplane.v1";
const MAX_LINE = 1024;

/** The reasons the proxy gives when it closes a game connection (its close codes). */
const CLOSE_CODES: Record<number, string> = {
  4001: "bad_ticket",
  4002: "expired_ticket",
  4003: "unknown_session",
  4004: "session_over",
  4005: "server_unreachable",
  4006: "bad_request",
  1008: "ticket_timeout",
  1009: "too_big",
  1007: "not_utf8",
};

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(aborted());
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(aborted());
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

function aborted(): MatchplaneError {
  return new MatchplaneError("aborted", "aborted", "the caller cancelled the request");
}

/** A client of one player. */
export class Client {
  readonly baseUrl: string;
  readonly playerId: string;
  private readonly token: ClientOptions["token"];
  private readonly fetchFn: typeof fetch;
  private readonly WebSocketCtor: WebSocketConstructor | undefined;
  private readonly pollSeconds: number;

  constructor(options: ClientOptions) {
    if (!/^[A-Za-z0-9_.:-]{1,128}$/.test(options.playerId)) {
      throw new MatchplaneError(
        "http",
        "invalid",
        "a player id is 1 to 128 characters of A-Z a-z 0-9 _ . : -",
      );
    }
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.playerId = options.playerId;
    this.token = options.token;
    const f = options.fetch ?? globalThis.fetch;
    if (!f) throw new TypeError("no fetch: pass one in the options");
    this.fetchFn = f.bind(globalThis);
    this.WebSocketCtor = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    this.pollSeconds = Math.min(30, Math.max(1, Math.floor(options.pollSeconds ?? 25)));
  }

  /** Joins the queue (idempotent): the player's status after the join. */
  async join(options: JoinOptions = {}): Promise<Status> {
    const body: Record<string, unknown> = { player_id: this.playerId };
    if (options.queue !== undefined) body.queue = options.queue;
    if (options.attributes !== undefined) body.attributes = options.attributes;
    const query = options.wait !== undefined ? `?wait=${options.wait}` : "";
    return (await this.request("POST", `/match/join${query}`, body, options.signal)) as Status;
  }

  /** The player's status; with `wait`, a long poll. */
  async status(options: StatusOptions = {}): Promise<Status> {
    const params = new URLSearchParams({ player_id: this.playerId });
    if (options.wait !== undefined) params.set("wait", String(options.wait));
    if (options.since !== undefined) params.set("status", options.since);
    return (await this.request("GET", `/match/status?${params}`, undefined, options.signal)) as Status;
  }

  /**
   * Long-polls until the status is one of `until`, and answers it. A `throttled` answer is
   * waited out; other errors end the wait.
   */
  async waitFor(until: Iterable<StatusKind>, options: WaitOptions = {}): Promise<Status> {
    const wanted = new Set(until);
    const controller = new AbortController();
    const outer = options.signal;
    const onAbort = () => controller.abort();
    outer?.addEventListener("abort", onAbort, { once: true });
    let timedOut = false;
    const timer =
      options.timeoutMs !== undefined
        ? setTimeout(() => {
            timedOut = true;
            controller.abort();
          }, options.timeoutMs)
        : undefined;
    try {
      let last: Status | undefined;
      for (;;) {
        let status: Status;
        try {
          status = await this.status({
            wait: this.pollSeconds,
            ...(last ? { since: last.status } : {}),
            signal: controller.signal,
          });
        } catch (e) {
          if (e instanceof MatchplaneError && e.kind === "aborted" && timedOut) {
            throw new MatchplaneError("timeout", "timeout", `no ${[...wanted].join(" or ")} status in ${options.timeoutMs} ms`);
          }
          if (e instanceof MatchplaneError && e.code === "throttled") {
            await sleep((e.retryAfter ?? 1) * 1000, controller.signal);
            continue;
          }
          throw e;
        }
        options.onStatus?.(status);
        if (wanted.has(status.status)) return status;
        last = status;
      }
    } finally {
      if (timer !== undefined) clearTimeout(timer);
      outer?.removeEventListener("abort", onAbort);
    }
  }

  /** Long-polls until the player is matched, or its ticket ends some other way. */
  waitForMatch(options: WaitOptions = {}): Promise<Status> {
    return this.waitFor(TERMINAL_FOR_MATCH, options);
  }

  /**
   * Leaves the queue: true when the player was queued and is no longer, false when it was
   * not queued. A player already in a session gets an `in_session` error.
   */
  async cancel(signal?: AbortSignal): Promise<boolean> {
    try {
      await this.request("DELETE", `/match/join/${encodeURIComponent(this.playerId)}`, undefined, signal);
      return true;
    } catch (e) {
      if (e instanceof MatchplaneError && e.code === "not_queued") return false;
      throw e;
    }
  }

  /** A page of the player's match history, newest first. */
  async history(options: { limit?: number; offset?: number; signal?: AbortSignal } = {}): Promise<History> {
    const params = new URLSearchParams();
    if (options.limit !== undefined) params.set("limit", String(options.limit));
    if (options.offset !== undefined) params.set("offset", String(options.offset));
    const query = params.toString() ? `?${params}` : "";
    return (await this.request(
      "GET",
      `/players/${encodeURIComponent(this.playerId)}/matches${query}`,
      undefined,
      options.signal,
    )) as History;
  }

  /**
   * Opens the game connection of a matched status (or, without one, of the player's status
   * now): the WebSocket, the ticket, and the server's `WELCOME`.
   */
  async connect(status?: Status, options: { signal?: AbortSignal; timeoutMs?: number } = {}): Promise<GameConnection> {
    const current = status ?? (await this.status(options.signal ? { signal: options.signal } : {}));
    if (current.status !== "matched" || !current.ticket) {
      throw new MatchplaneError(
        "not_matched",
        current.status,
        `a game connection needs a matched status; the player is ${current.status}`,
      );
    }
    if (!current.connect_ws) {
      throw new MatchplaneError(
        "no_game_connection",
        "no_game_connection",
        "this session's server cannot be reached over WebSocket",
      );
    }
    if (!this.WebSocketCtor) throw new TypeError("no WebSocket: pass one in the options");
    return GameConnection.open(this.WebSocketCtor, current as MatchedStatus, this.playerId, options);
  }

  /**
   * Connects again to the player's running session (after a dropped connection or a reload):
   * a fresh status, then {@link connect}. A session that is over is a `not_matched` error
   * whose `code` is the status (`ended`, ...).
   */
  reconnect(options: { signal?: AbortSignal; timeoutMs?: number } = {}): Promise<GameConnection> {
    return this.connect(undefined, options);
  }

  private async authorization(): Promise<string | undefined> {
    if (this.token === undefined) return undefined;
    const token = typeof this.token === "function" ? await this.token() : this.token;
    return `Bearer ${token}`;
  }

  private async request(method: string, path: string, body: unknown, signal?: AbortSignal): Promise<unknown> {
    const headers: Record<string, string> = { accept: "application/json" };
    const authorization = await this.authorization();
    if (authorization) headers.authorization = authorization;
    const init: RequestInit = { method, headers };
    if (body !== undefined) {
      headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    if (signal) init.signal = signal;
    let response: Response;
    try {
      response = await this.fetchFn(`${this.baseUrl}${path}`, init);
    } catch (e) {
      if (signal?.aborted) throw aborted();
      throw new MatchplaneError("network", "unreachable", `${method} ${path}: ${(e as Error).message}`);
    }
    if (response.status === 204) return undefined;
    let text: string;
    try {
      text = await response.text();
    } catch (e) {
      if (signal?.aborted) throw aborted();
      throw new MatchplaneError("network", "cut_off", `${method} ${path}: the answer was cut off`);
    }
    let parsed: unknown;
    try {
      parsed = text.length > 0 ? JSON.parse(text) : undefined;
    } catch {
      throw new MatchplaneError("network", "not_json", `${method} ${path}: HTTP ${response.status} with a body that is not JSON`, {
        status: response.status,
      });
    }
    if (response.ok) return parsed;
    const error = (parsed as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
    const retry = Number(response.headers.get("retry-after"));
    throw new MatchplaneError(
      "http",
      typeof error?.code === "string" ? error.code : `http_${response.status}`,
      typeof error?.message === "string" ? error.message : `${method} ${path}: HTTP ${response.status}`,
      { status: response.status, ...(Number.isFinite(retry) && retry > 0 ? { retryAfter: retry } : {}) },
    );
  }
}

/** How a game connection ended. */
export interface CloseInfo {
  /** The WebSocket close code (1000 when the game server closed the connection). */
  code: number;
  reason: string;
  /** Why, when the close was a refusal or a failure rather than the game's end. */
  error?: MatchplaneError;
}

type LineListener = (line: string) => void;
type StateListener = (state: GameState) => void;
type CloseListener = (info: CloseInfo) => void;

interface Pending {
  words: string[];
  match?: (line: string) => boolean;
  resolve: (line: string) => void;
  reject: (error: MatchplaneError) => void;
}

/**
 * A game connection to the session's server over the proxy's `/play`: lines of the built-in
 * game's protocol both ways (any game's bytes pass the same way; `sendBytes` and the `bytes`
 * event carry them raw).
 */
export class GameConnection {
  readonly sessionId: string;
  readonly playerId: string;
  /** The game's state: from `WELCOME`, then from every `STATE` line. */
  state: GameState = "open";
  /** The match length once set (`RUNNING_LENGTH`), in seconds; 0 while unset. */
  runningLength = 0;
  /** Resolves once the connection is closed, with how. */
  readonly closed: Promise<CloseInfo>;
  /**
   * The lines that opened the connection: `WELCOME ...`, and for a running match `STATE
   * running` and `RUNNING_LENGTH <n>`. Later lines go to the `line` listeners; those that
   * come before the first listener is added are handed to it when it is.
   */
  readonly greeting: string[] = [];

  private readonly ws: WebSocketLike;
  private readonly decoder = new TextDecoder("utf-8", { fatal: false });
  private readonly encoder = new TextEncoder();
  private buffer = "";
  private pending: Pending[] = [];
  private lineListeners = new Set<LineListener>();
  private stateListeners = new Set<StateListener>();
  private closeListeners = new Set<CloseListener>();
  private bytesListeners = new Set<(bytes: Uint8Array) => void>();
  private closeInfo: CloseInfo | undefined;
  private resolveClosed!: (info: CloseInfo) => void;
  private nonce = 0;
  private opened = false;
  /** Lines that came after the greeting while no `line` listener was there (at most 1000). */
  private backlog: string[] = [];

  private constructor(ws: WebSocketLike, status: MatchedStatus, playerId: string) {
    this.ws = ws;
    this.sessionId = status.session_id;
    this.playerId = playerId;
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
  }

  /** Opens the connection: resolves on the server's `WELCOME`, rejects on a refusal. */
  static open(
    WebSocketCtor: WebSocketConstructor,
    status: MatchedStatus,
    playerId: string,
    options: { signal?: AbortSignal; timeoutMs?: number },
  ): Promise<GameConnection> {
    let ws: WebSocketLike;
    try {
      ws = new WebSocketCtor(status.connect_ws as string, SUBPROTOCOL);
    } catch (e) {
      return Promise.reject(new MatchplaneError("network", "unreachable", `WebSocket ${status.connect_ws}: ${(e as Error).message}`));
    }
    ws.binaryType = "arraybuffer";
    const connection = new GameConnection(ws, status, playerId);
    return new Promise<GameConnection>((resolve, reject) => {
      const welcome: Pending = {
        words: ["WELCOME", "ERROR"],
        resolve: (line) => {
          cleanup();
          const words = line.split(" ");
          if (words[0] === "ERROR") {
            const code = words[1] ?? "error";
            connection.ws.close(1000, "refused");
            reject(new MatchplaneError("refused", code, `the game server refused the connection: ${code}`));
            return;
          }
          const opened = () => {
            connection.opened = true;
            resolve(connection);
          };
          if (connection.setState(words[3]) === "running") {
            // A player who joins a running match is told its length right after WELCOME.
            connection.pending.push({ words: ["RUNNING_LENGTH"], resolve: opened, reject });
            return;
          }
          opened();
        },
        reject: (error) => {
          cleanup();
          reject(error);
        },
      };
      connection.pending.push(welcome);
      const timer =
        options.timeoutMs !== undefined
          ? setTimeout(() => {
              connection.ws.close(1000, "timeout");
              welcome.reject(new MatchplaneError("timeout", "timeout", `no WELCOME in ${options.timeoutMs} ms`));
            }, options.timeoutMs)
          : undefined;
      const onAbort = () => {
        connection.ws.close(1000, "cancelled");
        welcome.reject(aborted());
      };
      options.signal?.addEventListener("abort", onAbort, { once: true });
      const cleanup = () => {
        if (timer !== undefined) clearTimeout(timer);
        options.signal?.removeEventListener("abort", onAbort);
        connection.pending = connection.pending.filter((p) => p !== welcome);
      };
      ws.addEventListener("open", () => {
        if (ws.protocol !== SUBPROTOCOL) {
          ws.close(1002, "subprotocol");
          welcome.reject(new MatchplaneError("refused", "bad_request", `the server chose subprotocol "${ws.protocol}"`));
          return;
        }
        ws.send(`JOIN ${status.ticket}\n`);
      });
      ws.addEventListener("message", (event: { data: unknown }) => connection.receive(event.data));
      ws.addEventListener("close", (event: { code: number; reason: string }) => connection.onClose(event.code, event.reason));
      // A failed connection fires `error` then `close`; the close says why.
      ws.addEventListener("error", () => undefined);
    });
  }

  /** Calls `listener` with every line the server sends. */
  on(event: "line", listener: LineListener): () => void;
  /** Calls `listener` whenever the game's state changes. */
  on(event: "state", listener: StateListener): () => void;
  /** Calls `listener` once the connection closes. */
  on(event: "close", listener: CloseListener): () => void;
  /** Calls `listener` with every chunk of bytes the server sends, as it comes. */
  on(event: "bytes", listener: (bytes: Uint8Array) => void): () => void;
  on(event: "line" | "state" | "close" | "bytes", listener: (value: any) => void): () => void {
    const set = {
      line: this.lineListeners,
      state: this.stateListeners,
      close: this.closeListeners,
      bytes: this.bytesListeners,
    }[event] as Set<(value: any) => void>;
    set.add(listener);
    // Lines that came before the first listener (in the same message as WELCOME, say) are
    // given to it at once, in order.
    if (event === "line") for (const line of this.backlog.splice(0)) listener(line);
    if (event === "close" && this.closeInfo) listener(this.closeInfo);
    return () => set.delete(listener);
  }

  /** Sends one line (the `\n` is added). */
  send(line: string): void {
    if (line.includes("\n")) throw new TypeError("a line may not contain a newline");
    const bytes = this.encoder.encode(`${line}\n`);
    if (bytes.length > MAX_LINE) throw new TypeError(`a line is at most ${MAX_LINE} bytes`);
    this.sendBytes(bytes);
  }

  /** Sends bytes as they are. */
  sendBytes(bytes: Uint8Array): void {
    if (this.closeInfo) throw new MatchplaneError("closed", "closed", "the game connection is closed");
    this.ws.send(bytes);
  }

  /** `GET_STATE`: the game's state. */
  async getState(): Promise<GameState> {
    const line = await this.ask("GET_STATE", ["STATE"]);
    return this.setState(line.split(" ")[1]);
  }

  /**
   * `REQUEST_MATCH <seconds>`: asks for a match of that length; answers the length in force
   * (the first valid request sets it). An invalid length is a `refused` error `invalid`.
   */
  async requestMatch(seconds: number): Promise<number> {
    const line = await this.ask(`REQUEST_MATCH ${Math.floor(seconds)}`, ["RUNNING_LENGTH", "UNKNOWN"]);
    if (line.startsWith("UNKNOWN")) {
      throw new MatchplaneError("refused", "invalid", `the server refused a match of ${seconds} seconds`);
    }
    return Number(line.split(" ")[1]);
  }

  /** `PING`: the round trip to the game server, in milliseconds. */
  async ping(): Promise<number> {
    const nonce = `n${++this.nonce}`;
    const began = performance.now();
    await this.ask(`PING ${nonce}`, ["PONG"], (line) => line === `PONG ${nonce}`);
    return performance.now() - began;
  }

  /** `QUIT`: says goodbye and waits for the connection to close. */
  async quit(): Promise<CloseInfo> {
    if (!this.closeInfo) this.send("QUIT");
    return this.closed;
  }

  /** Closes the connection at once. */
  close(): void {
    this.ws.close(1000, "closed by the player");
  }

  private ask(line: string, words: string[], match?: (line: string) => boolean): Promise<string> {
    return new Promise((resolve, reject) => {
      if (this.closeInfo) {
        reject(new MatchplaneError("closed", "closed", "the game connection is closed"));
        return;
      }
      this.pending.push({ words, ...(match ? { match } : {}), resolve, reject });
      this.send(line);
    });
  }

  private setState(word: string | undefined): GameState {
    const state: GameState = word === "running" || word === "stop" ? word : "open";
    if (state !== this.state) {
      this.state = state;
      for (const listener of this.stateListeners) listener(state);
    }
    return state;
  }

  private receive(data: unknown): void {
    let bytes: Uint8Array;
    if (typeof data === "string") bytes = this.encoder.encode(data);
    else if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
    else if (ArrayBuffer.isView(data)) bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    else return;
    for (const listener of this.bytesListeners) listener(bytes);
    this.buffer += this.decoder.decode(bytes, { stream: true });
    let newline: number;
    while ((newline = this.buffer.indexOf("\n")) >= 0) {
      const line = this.buffer.slice(0, newline).replace(/\r$/, "");
      this.buffer = this.buffer.slice(newline + 1);
      this.onLine(line);
    }
  }

  private onLine(line: string): void {
    const inGreeting = !this.opened;
    if (inGreeting) this.greeting.push(line);
    const word = line.split(" ", 1)[0] ?? "";
    if (word === "STATE") this.setState(line.split(" ")[1]);
    if (word === "RUNNING_LENGTH") this.runningLength = Number(line.split(" ")[1]) || 0;
    const index = this.pending.findIndex((p) => p.words.includes(word) && (!p.match || p.match(line)));
    if (index >= 0) {
      const [waiter] = this.pending.splice(index, 1);
      waiter!.resolve(line);
    }
    if (inGreeting) return;
    if (this.lineListeners.size === 0) {
      if (this.backlog.length < 1000) this.backlog.push(line);
      return;
    }
    for (const listener of this.lineListeners) listener(line);
  }

  private onClose(code: number, reason: string): void {
    if (this.closeInfo) return;
    const refusal = CLOSE_CODES[code];
    const info: CloseInfo = { code, reason };
    if (refusal) {
      info.error = new MatchplaneError("refused", refusal, reason || refusal, { closeCode: code });
    } else if (code !== 1000 && code !== 1005) {
      info.error = new MatchplaneError("closed", "connection_lost", reason || `the game connection closed (${code})`, {
        closeCode: code,
      });
    }
    this.closeInfo = info;
    const error = info.error ?? new MatchplaneError("closed", "closed", "the game connection closed", { closeCode: code });
    for (const waiter of this.pending.splice(0)) waiter.reject(error);
    for (const listener of this.closeListeners) listener(info);
    this.resolveClosed(info);
  }
}

export interface LatencyOptions {
  /** Round trips timed per proxy; the median counts (1 to 20; default 5). */
  count?: number;
  /** How long one request may take, in milliseconds (default 2000). */
  timeoutMs?: number;
  /** The `fetch` to use (default: the platform's). */
  fetch?: typeof fetch;
  /** The clock, in milliseconds (default `performance.now`). */
  now?: () => number;
}

/**
 * The latency map a join carries (`attributes.latency_ms`): for each region, the median round
 * trip in milliseconds to its proxy (`proxies`: region name → the proxy's base URL, such as
 * `https://eu.play.example`). A browser cannot send the proxies' TCP or UDP probe, so this
 * times `GET /livez` (answered by the proxy itself) on a connection a first request opened:
 * one round trip each. A region none of whose requests is answered in time is left out, as a
 * region the player cannot reach.
 */
export async function measureLatency(
  proxies: Record<string, string>,
  options: LatencyOptions = {},
): Promise<Record<string, number>> {
  const f = (options.fetch ?? globalThis.fetch)?.bind(globalThis);
  if (!f) throw new TypeError("no fetch: pass one in the options");
  const now = options.now ?? (() => performance.now());
  const count = Math.min(20, Math.max(1, Math.floor(options.count ?? 5)));
  const timeoutMs = Math.max(1, options.timeoutMs ?? 2000);
  const once = async (url: string): Promise<number | undefined> => {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), timeoutMs);
    const began = now();
    try {
      // Cross-origin proxies answer opaquely (`no-cors`): only the time counts.
      const response = await f(url, { cache: "no-store", mode: "no-cors", signal: controller.signal });
      await response.arrayBuffer().catch(() => undefined);
      return now() - began;
    } catch {
      return undefined;
    } finally {
      clearTimeout(timer);
    }
  };
  // One region at a time: requests to one proxy never wait behind another's on the player's
  // own link.
  const map: Record<string, number> = {};
  for (const [region, base] of Object.entries(proxies)) {
    const url = `${base.replace(/\/+$/, "")}/livez`;
    // The first request opens the connection (and TLS): not a round trip of its own.
    if ((await once(url)) === undefined) continue;
    const trips: number[] = [];
    for (let i = 0; i < count; i++) {
      const trip = await once(url);
      if (trip !== undefined) trips.push(trip);
    }
    if (trips.length === 0) continue;
    trips.sort((a, b) => a - b);
    map[region] = Math.round(trips[Math.floor(trips.length / 2)]! * 1000) / 1000;
  }
  return map;
}
