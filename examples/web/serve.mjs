// The web example's own server: serves the page (examples/web/public) and the JavaScript
// client (clients/js/dist) over HTTPS, and plays the studio's sign-in service: POST /signin
// with {"player_id"} answers a player token minted for the demo (`loadgen token`, with the
// stack's PLAYER_TOKEN_SECRET). The page calls matchplane's API on the proxy, another origin,
// which lets it in through ALLOWED_ORIGINS.
//
// Settings (environment): WEB_BIND (127.0.0.1:0), WEB_TLS_CERT, WEB_TLS_KEY (PEM; without
// them plain HTTP), MP_API_URL (the proxy's API, https://host:port/api), LOADGEN (the loadgen
// binary), PLAYER_TOKEN_SECRET. Prints one line `LISTENING <url>` once it accepts connections.
import { createServer as createHttps } from "node:https";
import { createServer as createHttp } from "node:http";
import { readFile } from "node:fs/promises";
import { execFile } from "node:child_process";
import { extname, join, normalize, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const roots = {
  "/client/": join(here, "../../clients/js/dist"),
  "/": join(here, "public"),
};
const types = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".png": "image/png",
  ".svg": "image/svg+xml",
};

function need(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`serve.mjs: ${name} is required`);
    process.exit(2);
  }
  return value;
}

const api = need("MP_API_URL").replace(/\/+$/, "");
const loadgen = need("LOADGEN");
const secret = need("PLAYER_TOKEN_SECRET");
const apiOrigin = new URL(api).origin;
const wsOrigin = apiOrigin.replace(/^http/, "ws");
// No inline script, no third-party origin: the page's own files, and the API's origin for
// fetch and the game connection.
const csp = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self'",
  `connect-src 'self' ${apiOrigin} ${wsOrigin}`,
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join("; ");

function send(res, status, type, body, extra = {}) {
  res.writeHead(status, {
    "content-type": type,
    "content-length": Buffer.byteLength(body),
    "content-security-policy": csp,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    ...extra,
  });
  res.end(body);
}

const json = (res, status, value) => send(res, status, "application/json", JSON.stringify(value));

function mint(player) {
  return new Promise((resolve, reject) => {
    execFile(loadgen, ["token", "--player", player, "--ttl-seconds", "3600"], { env: { PLAYER_TOKEN_SECRET: secret } }, (error, stdout) =>
      error ? reject(error) : resolve(stdout.trim()),
    );
  });
}

async function signin(req, res) {
  let body = "";
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 4096) return json(res, 413, { error: { code: "too_large", message: "at most 4 KiB" } });
  }
  let player;
  try {
    player = JSON.parse(body).player_id;
  } catch {
    return json(res, 400, { error: { code: "malformed", message: "the body is not JSON" } });
  }
  if (typeof player !== "string" || !/^[A-Za-z0-9_.:-]{1,128}$/.test(player)) {
    return json(res, 422, { error: { code: "invalid", message: "a player id is 1 to 128 characters of A-Z a-z 0-9 _ . : -" } });
  }
  try {
    json(res, 200, { player_id: player, token: await mint(player), api });
  } catch (e) {
    json(res, 500, { error: { code: "signin_failed", message: String(e.message ?? e) } });
  }
}

async function handle(req, res) {
  const url = new URL(req.url ?? "/", "http://page");
  if (url.pathname === "/signin") {
    if (req.method !== "POST") return json(res, 405, { error: { code: "method_not_allowed", message: "POST" } });
    return signin(req, res);
  }
  if (req.method !== "GET" && req.method !== "HEAD") {
    return json(res, 405, { error: { code: "method_not_allowed", message: "GET" } });
  }
  if (url.pathname === "/config.json") return json(res, 200, { api });
  const prefix = url.pathname.startsWith("/client/") ? "/client/" : "/";
  const rel = url.pathname.slice(prefix.length) || "index.html";
  const file = normalize(join(roots[prefix], rel));
  if (!file.startsWith(roots[prefix])) return json(res, 404, { error: { code: "not_found", message: url.pathname } });
  try {
    const body = await readFile(file);
    send(res, 200, types[extname(file)] ?? "application/octet-stream", body);
  } catch {
    json(res, 404, { error: { code: "not_found", message: url.pathname } });
  }
}

const [host, port] = (process.env.WEB_BIND ?? "127.0.0.1:0").split(/:(?=\d+$)/);
const tls = process.env.WEB_TLS_CERT && process.env.WEB_TLS_KEY;
const server = tls
  ? createHttps({ cert: await readFile(process.env.WEB_TLS_CERT), key: await readFile(process.env.WEB_TLS_KEY) }, handle)
  : createHttp(handle);
server.listen(Number(port), host, () => {
  const address = server.address();
  console.log(`LISTENING ${tls ? "https" : "http"}://${address.address}:${address.port}/`);
});
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => server.close(() => process.exit(0)));
