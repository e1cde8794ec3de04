// Browser half of test/t/070_dashboard.pl, in Debian's headless Chromium.
//
// WHD_PHASE=kill (default): starts session-bound worker sessions (psql), opens
// the dashboard, kills one worker's client with SIGKILL and waits for the page
// to show, without a reload, that worker dead and its leases released.
// WHD_PHASE=restart: with the page open, restarts the database server
// (pg_ctl), waits for the page to say the database went away and came back,
// then starts a worker, kills it, and waits for the page to show the death:
// the dashboard's LISTEN connection survived the restart.
//
// WHD_PHASE=fleet (1.3, issues 16 and 18): with the page open, an operator
// drains one worker and pauses a type; the page shows both (pushed), then
// clears them on resume; the dead worker's row shows its forensics; a
// database whose reaper is stopped shows under "Databases without a reaper".
// WHD_PHASE=compat: the page against a database whose extension is still 1.2
// (no directives): it renders, and a killed worker is shown dead as before.
//
// Prints one line "RESULT {json}" for the TAP test to judge; exits non-zero on
// a hard failure. Environment: WHD_URL (dashboard), WHD_PSQL, WHD_CONNINFO (for
// the workers), WHD_SCHEMA, WHD_TABLE (registered queue table), WHD_SCREENSHOT
// (png path), WHD_PGCTL, WHD_PGDATA, WHD_PGLOG (restart phase), CHROMIUM
// (default /usr/bin/chromium).
import { spawn, execFileSync } from "node:child_process";
import { chromium } from "playwright-core";

const env = (k, d) => {
  const v = process.env[k] ?? d;
  if (v === undefined) throw new Error(`${k} is not set`);
  return v;
};
const PHASE = env("WHD_PHASE", "kill");
const URL_ = env("WHD_URL");
const PSQL = env("WHD_PSQL", "psql");
const CONNINFO = env("WHD_CONNINFO");
const SCHEMA = env("WHD_SCHEMA", "pm_pipeline");
const TABLE = env("WHD_TABLE");
const SHOT = env("WHD_SCREENSHOT");
const qi = (s) => '"' + s.replaceAll('"', '""') + '"';
const ql = (s) => "'" + s.replaceAll("'", "''") + "'";

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

// Kills a worker's client and waits until the page shows it dead with its
// leases released (dead row, per-type count, feed). Returns what it saw.
async function killAndWatch(page, child, w, typeDead) {
  const t0 = Date.now();
  process.kill(child.pid, "SIGKILL");
  const seen = await page.waitForFunction(({ id, leases, type, typeDead }) => {
    const q = (s) => document.querySelector(s);
    const td = q(`#types tr[data-worker-type="${type}"] td[data-state="dead"]`);
    if (!td || td.textContent !== String(typeDead)) return false;
    const dead = q(`#dead-workers tr[data-worker-id="${id}"]`);
    const row = q(`#workers tr[data-worker-id="${id}"]`);
    const died = q(`#feed li[data-event="died"][data-worker-id="${id}"]`);
    const rel = q(`#feed li[data-event="leases_released"][data-worker-id="${id}"]`);
    if (!dead || !row || row.dataset.state !== "dead" || !died || !rel) return false;
    if (Number(dead.dataset.leasesReleased) < leases) return false;
    return { leases_shown: Number(dead.dataset.leasesReleased), feed_text: rel.textContent, died_text: died.textContent };
  }, { id: w.id, leases: w.leases, type: w.type, typeDead }, { polling: 10, timeout: 10000 });
  const r = await seen.jsonValue();
  r.elapsed_ms = Date.now() - t0;
  return r;
}

const result = { ok: false, phase: PHASE, steps: [] };
const step = (s) => { result.steps.push(s); console.error("dashboard-test:", s); };
let browser;
const children = [];
try {
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

  if (PHASE === "kill") {
    const WORKERS = [
      { id: "ingest-1", type: "ingest", leases: 3, task: "resize batch 41" },
      { id: "ingest-2", type: "ingest", leases: 3, task: "resize batch 42" },
      { id: "scorer-1", type: "scorer", leases: 2, task: "score run 7" },
    ];
    const VICTIM = WORKERS[1];
    for (const w of WORKERS) children.push(await startWorker(w));
    step("workers ready");

    // The first /api/state is held back until the page has been looked at:
    // until it arrives the page says it is loading (not only dashes).
    let releaseState;
    const stateHeld = new Promise((r) => { releaseState = r; });
    let held = false;
    await page.route("**/api/state*", async (route) => {
      if (!held) { held = true; await stateHeld; }
      await route.continue();
    });
    // refresh=0: no periodic reload of the state, so only a push can show the death.
    await page.goto(URL_ + "?refresh=0", { waitUntil: "domcontentloaded" });
    result.loading = await page.evaluate(() => {
      const l = document.getElementById("loading");
      return { visible: !!l && !l.hidden && l.offsetParent !== null, text: l ? l.textContent : "",
               types: document.querySelector("#types tbody")?.textContent || "" };
    });
    releaseState();
    await page.waitForSelector('#live[data-state="live"]', { timeout: 15000 });
    await page.unroute("**/api/state*");  // later requests go straight to the server
    for (const w of WORKERS) {
      await page.waitForSelector(`#workers tr[data-worker-id="${w.id}"][data-state="processing"]`, { timeout: 15000 });
    }
    step("page shows the workers processing");
    result.loading_after = await page.evaluate(() => !document.getElementById("loading")?.hidden);
    // One meaning of "active": the per-type Active column and the KPI count
    // every worker neither dead nor stopped, as get_worker_stats().active_workers.
    result.active_shown = await page.evaluate(() => Object.fromEntries(
      [...document.querySelectorAll("#types tr[data-worker-type]")].map((tr) =>
        [tr.dataset.workerType, Number(tr.querySelector('td[data-state="active"]').textContent)])));
    result.kpi_active = await page.evaluate(() => Number(document.getElementById("kpi-live").textContent));
    // Worker ids never wrap mid-id.
    result.id_white_space = await page.evaluate(() => [...document.querySelectorAll("#workers td:first-child, #dead-workers td:first-child")]
      .filter((td) => !td.classList.contains("empty")).map((td) => getComputedStyle(td).whiteSpace));
    // A short history fills the chart instead of a sliver at its right edge.
    result.chart_minutes = await page.evaluate(() => Number(document.querySelector("#chart-svg svg")?.getAttribute("data-minutes") || 60));
    result.navigations_before = navigations;
    await page.evaluate(() => { window.__sameDocument = true; });

    Object.assign(result, await killAndWatch(page, children[1], VICTIM, 1));
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
  } else if (PHASE === "restart") {
    await page.goto(URL_ + "?refresh=0");
    await page.waitForSelector('#live[data-state="live"]', { timeout: 15000 });
    const deadBefore = Number(await page.locator('#types tr[data-worker-type="ingest"] td[data-state="dead"]').innerText());
    step("page open; restarting the database server");
    execFileSync(env("WHD_PGCTL"), ["-D", env("WHD_PGDATA"), "-l", env("WHD_PGLOG"), "-m", "fast", "-w", "restart"],
                 { stdio: ["ignore", "ignore", "inherit"] });
    step("server restarted");
    await page.waitForFunction(() => {
      const s = window.whd.statuses;
      const down = s.indexOf("disconnected");
      return down >= 0 && s.indexOf("listening", down) > down;
    }, null, { timeout: 20000 });
    result.statuses = await page.evaluate(() => window.whd.statuses);
    result.live_after = await page.locator("#live").getAttribute("data-state");
    step("page saw the database go away and come back");
    const w = { id: "ingest-3", type: "ingest", leases: 2, task: "resize batch 43" };
    const child = await startWorker(w);
    children.push(child);
    // its "started" notification makes the page reload its state
    await page.waitForSelector(`#workers tr[data-worker-id="${w.id}"][data-state="processing"]`, { timeout: 10000 });
    // "Oldest heartbeat" of a type counts its live workers only (as /metrics):
    // ingest-1 and ingest-2 are dead by now, ingest-3 is the only live one.
    result.oldest = await page.evaluate((id) => {
      const w = window.whd.state().workers.find((x) => x.worker_id === id);
      const td = document.querySelector('#types tr[data-worker-type="ingest"] td.oldest');
      return { shown: td ? td.getAttribute("data-ts") : null, live: w ? w.last_heartbeat_at : null };
    }, w.id);
    Object.assign(result, await killAndWatch(page, child, w, deadBefore + 1));
    step(`after the restart, the page showed a death after ${result.elapsed_ms} ms`);
    result.banner = await page.locator("#banner").innerText();
    await page.screenshot({ path: SHOT, fullPage: true });
    result.screenshot = SHOT;
  } else if (PHASE === "fleet") {
    const psql = (sql) => execFileSync(PSQL, ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", CONNINFO, "-At", "-c", sql], { encoding: "utf8" }).trim();
    const s = qi(SCHEMA);
    const WORKERS = [
      { id: "batch-1", type: "batch", leases: 1, task: "render page 1" },
      { id: "batch-2", type: "batch", leases: 1, task: "render page 2" },
    ];
    for (const w of WORKERS) children.push(await startWorker(w));
    await page.goto(URL_ + "?refresh=0");
    await page.waitForSelector('#live[data-state="live"]', { timeout: 15000 });
    for (const w of WORKERS) await page.waitForSelector(`#workers tr[data-worker-id="${w.id}"][data-state="processing"]`, { timeout: 15000 });
    result.fleet_hidden_before = await page.evaluate(() => document.getElementById("fleet-section").hidden);
    // Issue 18: a database without a reaper (its reaper stopped) is listed.
    result.reapers = await page.evaluate(() => [...document.querySelectorAll("#reapers tbody tr")].map((tr) =>
      ({ database: tr.dataset.database, state: tr.dataset.state, text: tr.innerText })));
    result.reapers_visible = await page.evaluate(() => !document.getElementById("reapers-section").hidden);
    // Issue 16: the dead worker's row says what its backend was doing.
    result.forensics_text = await page.evaluate(() =>
      document.querySelector('#dead-workers tr[data-worker-id="ingest-2"] .forensics')?.innerText || "");
    step("page open; draining batch-1 and pausing type batch");
    const t0 = Date.now();
    psql(`SELECT ${s}.drain_workers(p_worker_id => 'batch-1'); SELECT ${s}.pause_workers(p_worker_type => 'batch')`);
    await page.waitForFunction(() => {
      const q = (x) => document.querySelector(x);
      return q('#workers tr[data-worker-id="batch-1"][data-directive="drain"]') &&
        q('#workers tr[data-worker-id="batch-2"][data-directive="pause"]') &&
        q('#directed tr[data-worker-id="batch-1"][data-directive="drain"]') &&
        q('#directed tr[data-worker-id="batch-2"][data-directive="pause"]') && !q("#fleet-section").hidden;
    }, null, { polling: 10, timeout: 10000 });
    result.directive_elapsed_ms = Date.now() - t0;
    result.fleet_count = await page.locator("#fleet-count").innerText();
    result.fleet_rules = await page.locator("#fleet-rules").innerText();
    result.directive_pushed = await page.evaluate(() => window.whd.events.map((e) => e.event.event)
      .filter((e) => e === "drain_requested" || e === "paused"));
    result.chips = await page.evaluate(() => [...document.querySelectorAll('#workers tr[data-directive] .chip')].map((c) => c.textContent));
    await page.screenshot({ path: SHOT, fullPage: true });
    result.screenshot = SHOT;
    step(`page showed the directives after ${result.directive_elapsed_ms} ms; resuming`);
    psql(`SELECT ${s}.resume_workers(p_worker_id => 'batch-1'); SELECT ${s}.resume_workers(p_worker_type => 'batch')`);
    await page.waitForFunction(() => document.getElementById("fleet-section").hidden &&
      !document.querySelector("#workers tr[data-directive]"), null, { polling: 10, timeout: 10000 });
    result.resumed = true;
  } else if (PHASE === "compat") {
    // The dashboard of a database whose extension is 1.2: no worker_directives.
    await page.goto(URL_ + "?refresh=0");
    await page.waitForSelector('#live[data-state="live"]', { timeout: 15000 });
    const w = { id: "old-1", type: "legacy", leases: 2, task: "old catalog" };
    const child = await startWorker(w);
    children.push(child);
    await page.waitForSelector(`#workers tr[data-worker-id="${w.id}"][data-state="processing"]`, { timeout: 10000 });
    result.state_features = await page.evaluate(() => window.whd.state().features);
    result.extversion = await page.evaluate(() => window.whd.state().extversion);
    result.directed = await page.evaluate(() => document.querySelectorAll("[data-directive]").length);
    result.fleet_hidden = await page.evaluate(() => document.getElementById("fleet-section").hidden);
    Object.assign(result, await killAndWatch(page, child, w, 1));
    result.banner = await page.locator("#banner").innerText();
    await page.screenshot({ path: SHOT, fullPage: true });
    result.screenshot = SHOT;
    step(`1.2 catalog: the page showed a death after ${result.elapsed_ms} ms`);
  } else {
    throw new Error(`unknown WHD_PHASE ${PHASE}`);
  }
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
