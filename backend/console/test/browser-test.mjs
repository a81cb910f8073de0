// The operator console in a real browser: headless Chromium (Debian's /usr/bin/chromium)
// driven by Playwright, over https through the proxy, while a swarm plays. It signs in (a
// wrong token first), watches the queues and sessions move, finds a player, ends a session
// from the keyboard and sees it end for its players and in the audit log, checks the page at
// a phone's width and a desktop's, and signs out; no console error, no token in any URL.
//
// Settings: CONSOLE_URL (the console page), ADMIN_TOKEN, TLS_SPKI (the run's certificate key,
// the only one Chromium trusts beyond its own roots), SHOTS (a directory for the
// screenshots). With BENCH_TABS=N it then keeps N consoles open for BENCH_SECONDS (30) and
// exits, for the caller to measure what they cost the backend.
import { chromium } from "playwright-core";

const consoleUrl = process.env.CONSOLE_URL;
const token = process.env.ADMIN_TOKEN;
const shots = process.env.SHOTS ?? ".";
const benchTabs = Number(process.env.BENCH_TABS ?? 0);
const benchSeconds = Number(process.env.BENCH_SECONDS ?? 30);
const api = new URL("../", consoleUrl);

const failures = [];
function check(ok, message) {
  if (!ok) failures.push(message);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    `--ignore-certificate-errors-spki-list=${process.env.TLS_SPKI}`,
  ],
});

/// What the page itself would fetch, as the operator (for checks the page does not show).
async function asOperator(page, path) {
  return page.evaluate(
    async ([url, bearer]) => {
      const r = await fetch(url, { headers: { authorization: `Bearer ${bearer}` }, credentials: "omit" });
      return { status: r.status, body: await r.json() };
    },
    [new URL(path, api).href, token],
  );
}

async function signIn(page, secret, name) {
  await page.fill("#token", secret);
  await page.fill("#name", name);
  await page.press("#token", "Enter");
}

/// The walk-through the header describes.
async function walkThrough() {
  const context = await browser.newContext({ viewport: { width: 1366, height: 900 } });
  const page = await context.newPage();
  const problems = [];
  const urls = [];
  page.on("console", (m) => m.type() === "error" && problems.push(m.text()));
  page.on("pageerror", (e) => problems.push(e.message));
  page.on("request", (r) => urls.push(r.url()));

  const response = await page.goto(consoleUrl);
  const csp = response.headers()["content-security-policy"] ?? "";
  check(csp.includes("script-src 'self'") && csp.includes("default-src 'none'"), `no strict CSP: "${csp}"`);
  await page.waitForSelector("#login:not([hidden])");

  // A wrong token: refused, said so, no cookie.
  await signIn(page, "not-the-operator-token", "ci");
  await page.waitForFunction(() => document.querySelector("#login-error").textContent.includes("not the operator token"));
  check((await context.cookies()).length === 0, "a refused sign-in left a cookie");
  // Refused before the console's page would show anything.
  problems.length = 0;

  // The right one: the console, an HttpOnly Secure SameSite=Strict cookie the page cannot read.
  await signIn(page, token, "ci-operator");
  await page.waitForSelector("#console:not([hidden])");
  check((await page.textContent("#who-name")) === "ci-operator", "the signed-in name is not shown");
  const [cookie] = await context.cookies();
  check(
    cookie && cookie.name === "mp_console" && cookie.httpOnly && cookie.secure && cookie.sameSite === "Strict",
    `the cookie is not HttpOnly, Secure and SameSite=Strict: ${JSON.stringify(cookie)}`,
  );
  check(!(await page.evaluate(() => document.cookie)).includes("mp_console"), "the page can read the cookie");
  check((await page.inputValue("#token")) === "", "the token stays in the form after signing in");

  // A swarm moves the queues and sessions: sessions appear, time to match gets figures.
  await page.waitForFunction(
    () => document.querySelectorAll("#sessions tbody button").length > 0,
    null,
    { timeout: 60_000 },
  );
  await page.waitForFunction(
    () => !document.querySelector("#latency tbody tr td:nth-child(2)").textContent.startsWith("–"),
    null,
    { timeout: 30_000 },
  );
  const queueRow = await page.textContent("#queues tbody tr");
  check(queueRow.includes("default"), `the default queue is not listed: ${queueRow}`);
  const replicas = await page.textContent("#replicas tbody");
  check(replicas.includes("ready"), `no ready replica: ${replicas}`);

  // A filter: only matched sessions; a player's id finds theirs.
  await page.selectOption('#filters select[name="state"]', "matched");
  await page.waitForFunction(
    () =>
      [...document.querySelectorAll("#sessions tbody tr")].every((r) => r.cells.length < 2 || r.cells[1].textContent === "matched") &&
      document.querySelectorAll("#sessions tbody button").length > 0,
    null,
    { timeout: 30_000 },
  );
  const firstRow = page.locator("#sessions tbody tr").first();
  const sessionId = await firstRow.locator("code").getAttribute("title");
  const players = (await firstRow.locator("td").nth(5).textContent()).split(", ");
  const player = players[0];
  await page.fill("#player-id", player);
  await page.press("#player-id", "Enter");
  await page.waitForFunction(
    (who) => document.querySelector("#player").textContent.includes(`${who} is`),
    player,
  );
  const found = await page.textContent("#player");
  check(found.includes(sessionId), `the player's lookup does not show session ${sessionId}: ${found}`);

  // End it from the keyboard: focus its End button, Enter, Escape keeps it; again and confirm.
  const end = page.locator(`#sessions tbody tr:has(code[title="${sessionId}"]) button`);
  await end.focus();
  await page.keyboard.press("Enter");
  await page.waitForSelector("#confirm[open]");
  await page.keyboard.press("Escape");
  await page.waitForFunction(() => !document.querySelector("#confirm").open);
  let status = await asOperator(page, `match/status?player_id=${encodeURIComponent(player)}`);
  check(status.body.status === "matched", `Escape ended the session: ${JSON.stringify(status.body)}`);
  await end.focus();
  await page.keyboard.press("Enter");
  await page.waitForSelector("#confirm[open]");
  check(
    (await page.evaluate(() => document.activeElement.id)) === "confirm-yes",
    "the dialog does not focus its confirm button",
  );
  await page.keyboard.press("Enter");
  await page.waitForFunction(
    (sid) => document.querySelector("#audit tbody").textContent.includes(sid),
    sessionId,
    { timeout: 15_000 },
  );
  const audit = await page.textContent("#audit tbody tr");
  check(
    audit.includes("ci-operator") && audit.includes("end_session") && audit.includes("ended"),
    `the audit log's latest entry is not this end: ${audit}`,
  );
  await page.waitForFunction(
    (who) => {
      const text = document.querySelector("#player").textContent;
      return text.includes(`${who} is ended in session`) && text.includes("(stopped)");
    },
    player,
    { timeout: 10_000 },
  );
  for (const p of players) {
    status = await asOperator(page, `match/status?player_id=${encodeURIComponent(p)}`);
    check(
      status.body.status === "ended" && status.body.end_reason === "stopped",
      `${p} does not see the session ended (stopped): ${JSON.stringify(status.body)}`,
    );
  }

  // Versions: new weights saved, then a version drained (confirmed), each audited.
  await page.waitForSelector("#versions-section:not([hidden])");
  await page.fill('input[name="weight-canary-next"]', "3");
  await page.click('button[aria-label="Save the weights of canary"]');
  await page.waitForFunction(() => document.querySelector("#updated").textContent.includes("weights of canary saved"));
  await page.click('button[aria-label="Drain canary stable"]');
  await page.waitForSelector("#confirm[open]");
  await page.click("#confirm-yes");
  await page.waitForFunction(
    () => /drained|draining/.test(document.querySelector("#versions").textContent),
    null,
    { timeout: 10_000 },
  );
  const versions = await asOperator(page, "operator/versions");
  const [stable, next] = versions.body.profiles[0].versions;
  check(
    stable.draining && stable.weight === 0 && next.weight === 3,
    `the versions are not as the console set them: ${JSON.stringify(versions.body)}`,
  );
  await page.waitForFunction(
    () => /drain_version/.test(document.querySelector("#audit tbody").textContent) &&
      /set_weights/.test(document.querySelector("#audit tbody").textContent),
    null,
    { timeout: 15_000 },
  );

  // Keyboard: every control can be reached with Tab.
  await page.selectOption('#filters select[name="state"]', "");
  await page.waitForTimeout(2500);
  await page.screenshot({ path: `${shots}/console-desktop.png`, fullPage: true });
  const reached = new Set();
  await page.focus("#sign-out");
  for (let i = 0; i < 60; i++) {
    reached.add(await page.evaluate(() => document.activeElement.id || document.activeElement.name || document.activeElement.textContent));
    await page.keyboard.press("Tab");
  }
  for (const want of ["sign-out", "state", "queue", "region", "profile", "version", "player", "player-id", "Look up"]) {
    check(reached.has(want), `Tab never reaches ${want}: ${[...reached].join(" | ")}`);
  }

  // A phone's width: nothing wider than the screen (tables scroll inside their boxes).
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(300);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  const wide = await page.evaluate(() =>
    [...document.querySelectorAll("body *")]
      .filter((e) => !e.closest(".scroll") && e.getBoundingClientRect().right > window.innerWidth + 1)
      .map((e) => `${e.tagName.toLowerCase()}${e.id ? "#" + e.id : ""}${e.className ? "." + e.className : ""}`)
      .slice(0, 8),
  );
  check(overflow <= 1, `the page is ${overflow} px wider than a phone's screen: ${wide.join(", ")}`);
  await page.screenshot({ path: `${shots}/console-phone.png`, fullPage: false });
  await page.setViewportSize({ width: 1366, height: 900 });

  check(problems.length === 0, `console errors: ${problems.join("; ")}`);

  // Sign out: the cookie is gone, and the old one is worth nothing.
  const old = (await context.cookies())[0];
  await page.click("#sign-out");
  await page.waitForSelector("#login:not([hidden])");
  check((await context.cookies()).length === 0, "signing out left the cookie");
  await context.addCookies([old]);
  const replay = await page.evaluate(async (url) => (await fetch(url, { credentials: "same-origin" })).status, new URL("operator/overview", api).href);
  check(replay === 401, `a replayed cookie got ${replay}`);
  await context.clearCookies();

  const leaked = urls.filter((u) => u.includes(token));
  check(leaked.length === 0, `the token is in a URL: ${leaked.join(" ")}`);

}

/// BENCH_TABS consoles open for BENCH_SECONDS.
async function bench() {
  const bench = await browser.newContext({ viewport: { width: 1366, height: 900 } });
  const first = await bench.newPage();
  await first.goto(consoleUrl);
  await signIn(first, token, "bench");
  await first.waitForSelector("#console:not([hidden])");
  for (let i = 1; i < benchTabs; i++) {
    const tab = await bench.newPage();
    await tab.goto(consoleUrl);
    await tab.waitForSelector("#console:not([hidden])");
  }
  console.log(`BENCH_OPEN ${benchTabs}`);
  await new Promise((r) => setTimeout(r, benchSeconds * 1000));
  console.log("BENCH_DONE");
  await bench.close();
}

try {
  if (benchTabs > 0) await bench();
  else await walkThrough();
} catch (e) {
  failures.push(e.stack || String(e));
} finally {
  await browser.close();
}

if (failures.length) {
  for (const f of failures) console.error(`console browser test FAILED: ${f}`);
  process.exit(1);
}
console.log("console browser test passed");
