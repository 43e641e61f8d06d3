// Drives the dashboard pages in headless Chromium (Debian's, through
// playwright-core) for tests/dashboard.rs, and prints what it saw as one
// JSON object on stdout; the Rust test holds the expectations.
//
// argv[2]: {"admin": "http://127.0.0.1:P", "main": "http://127.0.0.1:Q",
//           "admin_key": "…", "dev_key": "…", "live": {"key": "…", "body": "…"},
//           "out": "/dir/for/screenshots", "chromium": "/usr/bin/chromium"}
import { chromium } from "playwright-core";

const cfg = JSON.parse(process.argv[2]);
const deadline = setTimeout(() => {
  console.error("dashboard.mjs: gave up after 120 s");
  process.exit(2);
}, 120e3);

const browser = await chromium.launch({
  executablePath: cfg.chromium || "/usr/bin/chromium",
  headless: true,
  timeout: 30e3,
  // No traffic but the test's: this machine's network is closed.
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
  ],
});

// A page whose console errors, uncaught exceptions and failed requests are
// collected.
async function open(context) {
  const page = await context.newPage();
  const problems = [];
  page.on("console", (m) => {
    if (m.type() === "error") problems.push("console: " + m.text());
  });
  page.on("pageerror", (e) => problems.push("exception: " + e.message));
  page.on("requestfailed", (r) => {
    // The live feed's stream is cut when the page closes: not a failure.
    if (!r.url().endsWith("/admin/live")) problems.push("request failed: " + r.url() + " " + (r.failure()?.errorText || ""));
  });
  return { page, problems };
}

const loaded = (page) => page.waitForSelector("body[data-loaded]", { timeout: 15e3 });

// What the activity page shows.
function activityFacts() {
  const rows = (id) => [...document.querySelectorAll("#" + id + " tbody tr:not(.empty)")].map((tr) => [...tr.cells].map((c) => c.textContent.trim()));
  const problem = document.querySelector("#problem");
  return {
    tiles: Object.fromEntries([...document.querySelectorAll("dd[data-tile]")].map((d) => [d.dataset.tile, d.textContent.trim()])),
    breakdown_title: document.querySelector("#h-breakdown").textContent,
    breakdown: rows("breakdown"),
    budgets: rows("budgets"),
    providers: rows("providers"),
    circuits: rows("circuits"),
    ttft: rows("ttft"),
    savings: rows("savings"),
    sessions: rows("sessions"),
    charts: document.querySelectorAll(".uplot canvas").length,
    legend: [...document.querySelectorAll("#chart .u-legend .u-series .u-label")].map((e) => e.textContent.trim()).filter(Boolean),
    store: document.querySelector("#store").textContent,
    problem: problem.hidden ? null : problem.textContent,
    live_status: document.querySelector("#live-status").textContent,
    html: document.documentElement.outerHTML,
    overflow_x: document.documentElement.scrollWidth - window.innerWidth,
  };
}

const out = {};
try {
  // 1. The activity page on the admin listener, on a laptop screen.
  const desk = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  const a = await open(desk);
  const res = await a.page.goto(cfg.admin + "/dashboard", { waitUntil: "load" });
  out.activity_status = res.status();
  out.activity_headers = res.headers();
  await loaded(a.page);
  await a.page.waitForFunction(() => document.querySelector("#live-status").textContent === "live", null, { timeout: 10e3 });
  out.activity = await a.page.evaluate(activityFacts);

  // 2. The live feed: a request sent now shows within 2 s (found by its
  //    Claude Code session id: the client sees the upstream's request-id).
  const session = "live-session-" + process.pid + "-" + Date.now();
  const sent = await fetch(cfg.main + "/v1/messages", {
    method: "POST",
    headers: { "content-type": "application/json", "x-api-key": cfg.live.key, "anthropic-version": "2023-06-01", "x-claude-code-session-id": session },
    body: cfg.live.body,
  });
  await sent.arrayBuffer();
  const answered = Date.now();
  out.live_request = { status: sent.status, session };
  const row = '#live tr[data-session="' + session + '"]';
  await a.page.waitForSelector(row, { timeout: 2000 });
  out.live_ms = Date.now() - answered;
  out.live_row = await a.page.evaluate((row) => [...document.querySelector(row).cells].map((c) => c.textContent.trim()), row);
  await a.page.screenshot({ path: cfg.out + "/dashboard.png", fullPage: true });
  out.activity_problems = a.problems;
  await desk.close();

  // 3. The same page on a phone.
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
  const p = await open(phone);
  await p.page.goto(cfg.admin + "/dashboard", { waitUntil: "load" });
  await loaded(p.page);
  out.phone = await p.page.evaluate(() => ({ overflow_x: document.documentElement.scrollWidth - window.innerWidth, charts: document.querySelectorAll(".uplot canvas").length }));
  await p.page.screenshot({ path: cfg.out + "/dashboard-phone.png", fullPage: false });
  out.phone_problems = p.problems;
  await phone.close();

  // 4. A developer's own page on the main listener, with their key.
  const dev = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const m = await open(dev);
  const mres = await m.page.goto(cfg.main + "/dashboard/me", { waitUntil: "load" });
  out.me_status = mres.status();
  await m.page.getByLabel("Gateway key or sign-in token").fill(cfg.dev_key);
  await m.page.getByRole("button", { name: "Show my usage" }).click();
  await loaded(m.page);
  out.me = await m.page.evaluate(() => ({
    who: document.querySelector("#who").textContent,
    tiles: Object.fromEntries([...document.querySelectorAll("dd[data-tile]")].map((d) => [d.dataset.tile, d.textContent.trim()])),
    recent: [...document.querySelectorAll("#recent tbody tr[data-request-id]")].map((tr) => tr.dataset.requestId),
    text: document.body.innerText,
    html: document.documentElement.outerHTML,
    key_field: document.querySelector("#key").value,
    storage: JSON.stringify([Object.entries(sessionStorage), Object.entries(localStorage)]),
  }));
  await m.page.screenshot({ path: cfg.out + "/dashboard-me.png", fullPage: false });
  // A key the gateway refuses: a clear message, the form again.
  await m.page.getByRole("button", { name: "Use another key" }).click();
  await m.page.getByLabel("Gateway key or sign-in token").fill("mg-not-a-key-of-this-gateway");
  await m.page.getByRole("button", { name: "Show my usage" }).click();
  await m.page.waitForSelector("#problem:not([hidden])", { timeout: 5e3 });
  out.me_refused = await m.page.evaluate(() => ({ problem: document.querySelector("#problem").textContent, form_shown: !document.querySelector("#signin").hidden }));
  // The refused key's 401 is an expected console line; nothing else is.
  out.me_problems = m.problems.filter((l) => !/status of 401/.test(l));
  await dev.close();

  // 5. The activity page on the main listener: a browser asks for the
  //    admin key (HTTP Basic) and the page's own requests carry it.
  //    (Without credentials headless Chromium cancels the prompt; the
  //    challenge itself is read here.)
  const anon = await fetch(cfg.main + "/dashboard");
  out.main_anonymous = { status: anon.status, challenge: anon.headers.get("www-authenticate") };
  const signed = await browser.newContext({ httpCredentials: { username: "admin", password: cfg.admin_key } });
  const s = await open(signed);
  const sres = await s.page.goto(cfg.main + "/dashboard", { waitUntil: "load" });
  await loaded(s.page);
  out.main_admin = { status: sres.status(), problem: await s.page.evaluate(() => (document.querySelector("#problem").hidden ? null : document.querySelector("#problem").textContent)), rows: await s.page.evaluate(() => document.querySelectorAll("#breakdown tbody tr:not(.empty)").length) };
  out.main_admin_problems = s.problems;
  await signed.close();
} catch (e) {
  out.error = String(e && e.stack ? e.stack : e);
} finally {
  await browser.close();
  clearTimeout(deadline);
}
process.stdout.write(JSON.stringify(out) + "\n");
