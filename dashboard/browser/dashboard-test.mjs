// Browser half of test/t/070_dashboard.pl: starts session-bound worker
// sessions (psql), opens the dashboard in Debian's headless Chromium, kills one
// worker's client with SIGKILL and waits for the page to show, without a
// reload, that worker dead and its leases released. Prints one line
// "RESULT {json}" for the TAP test to judge; exits non-zero on a hard failure.
//
// Environment: WHD_URL (dashboard), WHD_PSQL, WHD_CONNINFO (for the workers),
// WHD_SCHEMA, WHD_TABLE (registered queue table), WHD_SCREENSHOT (png path),
// CHROMIUM (default /usr/bin/chromium).
import { spawn } from "node:child_process";
import { chromium } from "playwright-core";

const env = (k, d) => {
  const v = process.env[k] ?? d;
  if (v === undefined) throw new Error(`${k} is not set`);
  return v;
};
const URL_ = env("WHD_URL");
const PSQL = env("WHD_PSQL", "psql");
const CONNINFO = env("WHD_CONNINFO");
const SCHEMA = env("WHD_SCHEMA", "pm_pipeline");
const TABLE = env("WHD_TABLE");
const SHOT = env("WHD_SCREENSHOT");
const qi = (s) => '"' + s.replaceAll('"', '""') + '"';
const ql = (s) => "'" + s.replaceAll("'", "''") + "'";

const WORKERS = [
  { id: "ingest-1", type: "ingest", leases: 3, task: "resize batch 41" },
  { id: "ingest-2", type: "ingest", leases: 3, task: "resize batch 42" },
  { id: "scorer-1", type: "scorer", leases: 2, task: "score run 7" },
];
const VICTIM = WORKERS[1];

// A worker: one psql session that heartbeats session-bound and claims rows.
function startWorker(w) {
  return new Promise((resolve, reject) => {
    const child = spawn(PSQL, ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", CONNINFO], {
      stdio: ["pipe", "pipe", "pipe"],
    });
    let out = "", err = "";
    const timer = setTimeout(() => reject(new Error(`worker ${w.id} not ready: ${err}`)), 15000);
    child.stdout.on("data", (d) => {
      out += d;
      if (out.includes(`READY ${w.id}`)) { clearTimeout(timer); resolve(child); }
    });
    child.stderr.on("data", (d) => { err += d; });
    child.on("exit", (code) => { clearTimeout(timer); reject(new Error(`worker ${w.id} exited ${code}: ${err}`)); });
    const s = qi(SCHEMA);
    child.stdin.write(`\\o /dev/null
SELECT ${s}.upsert_worker_heartbeat(${ql(w.id)}, ${ql(w.type)}, 'processing', gen_random_uuid(), ${ql(w.task)}, now() + interval '10 minutes', '{"demo": true}', true);
UPDATE ${TABLE} SET claimed_by = ${ql(w.id)}, lease_expires_at = now() + interval '10 minutes', state = 'running'
 WHERE id IN (SELECT id FROM ${TABLE} WHERE claimed_by IS NULL ORDER BY id LIMIT ${w.leases} FOR UPDATE SKIP LOCKED);
\\o
\\echo READY ${w.id}
`);
  });
}

const result = { ok: false, steps: [] };
const step = (s) => { result.steps.push(s); console.error("dashboard-test:", s); };
let browser;
const children = [];
try {
  for (const w of WORKERS) children.push(await startWorker(w));
  step("workers ready");

  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage"],
  });
  const page = await browser.newPage({ viewport: { width: 1360, height: 900 } });
  const consoleErrors = [];
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => consoleErrors.push(e.message));
  let navigations = 0;
  page.on("framenavigated", (f) => { if (f === page.mainFrame()) navigations++; });

  // refresh=0: no periodic reload of the state, so only a push can show the death.
  await page.goto(URL_ + "?refresh=0");
  await page.waitForSelector('#live[data-state="live"]', { timeout: 15000 });
  for (const w of WORKERS) {
    await page.waitForSelector(`#workers tr[data-worker-id="${w.id}"][data-state="processing"]`, { timeout: 15000 });
  }
  step("page shows the workers processing");
  result.navigations_before = navigations;
  await page.evaluate(() => { window.__sameDocument = true; });

  const t0 = Date.now();
  process.kill(children[1].pid, "SIGKILL");
  const seen = await page.waitForFunction(({ id, leases, type }) => {
    const q = (s) => document.querySelector(s);
    const typeDead = q(`#types tr[data-worker-type="${type}"] td[data-state="dead"]`);
    if (!typeDead || typeDead.textContent !== "1") return false;
    const dead = q(`#dead-workers tr[data-worker-id="${id}"]`);
    const row = q(`#workers tr[data-worker-id="${id}"]`);
    const died = q(`#feed li[data-event="died"][data-worker-id="${id}"]`);
    const rel = q(`#feed li[data-event="leases_released"][data-worker-id="${id}"]`);
    if (!dead || !row || row.dataset.state !== "dead" || !died || !rel) return false;
    if (Number(dead.dataset.leasesReleased) < leases) return false;
    return { leases_shown: Number(dead.dataset.leasesReleased), feed_text: rel.textContent, died_text: died.textContent };
  }, { id: VICTIM.id, leases: VICTIM.leases, type: VICTIM.type }, { polling: 10, timeout: 10000 });
  result.elapsed_ms = Date.now() - t0;
  Object.assign(result, await seen.jsonValue());
  step(`page showed the death and the release after ${result.elapsed_ms} ms`);

  result.same_document = await page.evaluate(() => window.__sameDocument === true);
  result.navigations_after = navigations;
  result.pushed = await page.evaluate((id) => window.whd.events
    .filter((e) => e.event.worker_id === id).map((e) => e.event.event), VICTIM.id);
  result.others = await page.evaluate((ids) => ids.map((id) =>
    document.querySelector(`#workers tr[data-worker-id="${id}"]`)?.dataset.state), WORKERS.filter((w) => w !== VICTIM).map((w) => w.id));
  result.dead_row_text = await page.locator(`#dead-workers tr[data-worker-id="${VICTIM.id}"]`).innerText();
  result.types_dead = await page.locator(`#types tr[data-worker-type="${VICTIM.type}"] td[data-state="dead"]`).innerText();
  await page.screenshot({ path: SHOT, fullPage: true });
  result.screenshot = SHOT;
  // and once the page has reloaded its state from the database
  await page.waitForFunction(() => {
    const last = Math.max(...window.whd.events.map((e) => e.at));
    return window.whd.settledAt > last;
  }, null, { timeout: 5000 });
  result.settled_types_dead = await page.locator(`#types tr[data-worker-type="${VICTIM.type}"] td[data-state="dead"]`).innerText();
  await page.screenshot({ path: SHOT.replace(/\.png$/, "-settled.png"), fullPage: true });
  result.console_errors = consoleErrors;
  result.ok = true;
} catch (e) {
  result.error = String(e && e.stack || e);
  if (browser) {
    try { const p = browser.contexts()[0]?.pages()[0]; if (p) await p.screenshot({ path: SHOT, fullPage: true }); } catch {}
  }
} finally {
  for (const c of children) { try { c.kill("SIGTERM"); } catch {} }
  if (browser) await browser.close();
}
console.log("RESULT " + JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
