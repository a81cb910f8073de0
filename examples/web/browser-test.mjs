// The web page in a real browser: headless Chromium (Debian's /usr/bin/chromium) driven by
// Playwright opens the page over https in PLAYERS tabs, one player each, signs each in, joins,
// and plays whole matches; then checks what each page shows (the states it went through, the
// match's lines, the history row of the match, ended `completed`).
//
// Settings: PAGE_URL, TLS_SPKI (the run's certificate key, the only one Chromium is told to
// trust beyond its own roots), PLAYERS, SCREENSHOT (a PNG of the first tab at the end). With
// BENCH=1 every tab asks for the match and the run prints the players' time to play (join →
// running, as the page measures it).
import { chromium } from "playwright-core";

const pageUrl = process.env.PAGE_URL;
const players = Number(process.env.PLAYERS ?? 3);
const bench = process.env.BENCH === "1";
const matchSeconds = bench ? 2 : 3;
const run = Math.random().toString(16).slice(2, 8);

function fail(message) {
  console.error(`browser test FAILED: ${message}`);
  process.exitCode = 1;
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

try {
  const tabs = [];
  const problems = [];
  const context = await browser.newContext({ viewport: { width: 900, height: 1000 } });
  for (let i = 0; i < players; i++) {
    const page = await context.newPage();
    const player = `web-${run}-${i}`;
    page.on("console", (m) => m.type() === "error" && problems.push(`${player}: ${m.text()}`));
    page.on("pageerror", (e) => problems.push(`${player}: ${e.message}`));
    const response = await page.goto(pageUrl);
    const csp = response.headers()["content-security-policy"] ?? "";
    if (!csp.includes("script-src 'self'")) fail(`the page has no strict Content-Security-Policy: "${csp}"`);
    await page.fill("#player", player);
    await page.click("#signin-button");
    await page.waitForSelector("#play-panel:not([hidden])");
    tabs.push({ page, player });
  }
  // Every tab records the states its status shows, in order.
  for (const { page } of tabs) {
    await page.evaluate(() => {
      window.seenStates = [];
      const output = document.getElementById("state");
      new MutationObserver(() => {
        const s = output.dataset.state;
        if (window.seenStates.at(-1) !== s) window.seenStates.push(s);
      }).observe(output, { attributes: true, childList: true, subtree: true });
    });
  }
  if (bench) {
    // Every player asks for the match as soon as it is connected, as a game would.
    for (const { page } of tabs) {
      await page.fill("#length", String(matchSeconds));
      await page.check("#auto");
    }
  }
  await Promise.all(tabs.map(({ page }) => page.click("#join")));
  await Promise.all(
    tabs.map(({ page }) => page.waitForSelector('#state[data-state="matched"], #state[data-state="running"]', { timeout: 60000 })),
  );
  if (!bench) {
    await tabs[0].page.fill("#length", String(matchSeconds));
    await tabs[0].page.click("#request");
  }
  await Promise.all(tabs.map(({ page }) => page.waitForSelector('#state[data-state="running"]', { timeout: 60000 })));
  await Promise.all(tabs.map(({ page }) => page.waitForSelector('#state[data-state="ended"]', { timeout: 60000 })));
  const sessions = new Set();
  for (const { page, player } of tabs) {
    const detail = await page.textContent("#detail");
    const states = await page.evaluate(() => window.seenStates);
    if (detail !== "completed") fail(`${player}: ended "${detail}", not completed (states ${states.join(" -> ")})`);
    const order = ["waiting", "matched", "running", "ended"].filter((s) => states.includes(s));
    if (order.join() !== states.filter((s) => order.includes(s)).join() || !states.includes("running")) {
      fail(`${player}: states went ${states.join(" -> ")}`);
    }
    const lines = await page.$$eval("#lines li", (items) => items.map((li) => li.textContent));
    for (const want of ["STATE running", "STATE stop"]) {
      if (!lines.includes(want)) fail(`${player}: the page's lines lack "${want}": ${lines.join(" | ")}`);
    }
    const session = await page.textContent("#session-id");
    sessions.add(session);
    const row = await page.waitForSelector(`#history tr[data-session="${session}"]`, { timeout: 10000 }).catch(() => null);
    if (!row) fail(`${player}: the history does not show session ${session}`);
    else if ((await row.getAttribute("data-end-reason")) !== "completed") fail(`${player}: the history's row is not completed`);
  }
  if (problems.length > 0) fail(`the pages reported errors:\n  ${problems.join("\n  ")}`);
  const times = await Promise.all(tabs.map(({ page }) => page.getAttribute("#time-to-play", "data-ms")));
  const ms = times.map(Number).sort((a, b) => a - b);
  const at = (q) => ms[Math.min(ms.length - 1, Math.ceil(q * ms.length) - 1)];
  console.log(
    `${players} players in ${sessions.size} sessions played over wss: join -> running in the page p50 ${at(0.5)} ms, p99 ${at(0.99)} ms, max ${ms.at(-1)} ms`,
  );
  if (process.env.SCREENSHOT) {
    await tabs[0].page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
  }
} finally {
  await browser.close();
}
if (process.exitCode) process.exit(process.exitCode);
console.log("browser test passed");
