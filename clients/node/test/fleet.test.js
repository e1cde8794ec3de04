'use strict';
// Fleet control (extension 1.3) from Node: the heartbeat's directive (drain /
// pause / resume), checkpoints carried across a SIGKILL, a zombie's late
// checkpoint refused, and a 1.2 catalog where none of it exists yet.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('child_process');
const path = require('path');
const { Client } = require('pg');
const { useCluster } = require('./cluster');
const { WorkerHeartbeat, LeaseTable, StaleLeaseError, WorkerHeartbeatError, DIRECTIVES } = require('../lib/index.cjs');

const LIB = path.resolve(__dirname, '../lib/index.cjs');
let pg;
useCluster((c) => { pg = c; });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function waitFor(pred, ms = 30000) {
  const t0 = Date.now();
  while (Date.now() - t0 < ms) {
    if (pred()) return;
    await sleep(20);
  }
  throw new Error('timed out waiting for the condition');
}

test('the heartbeat returns the directive: drain, resume, pause (by type), resume', async () => {
  const table = await pg.makeQueue();
  await pg.val(`INSERT INTO ${table} (payload) SELECT 'p' || g FROM generate_series(1, 3) g`);
  const seen = [];
  const hb = new WorkerHeartbeat({ workerId: 'node-fleet', workerType: 'node_fleet', intervalSeconds: 0.1, onSignal: 'ignore',
    onDirective: (d, prev) => seen.push(`${prev}>${d}`) }).start();
  const db = await pg.client();
  try {
    await waitFor(() => hb.beats >= 1);
    assert.equal(hb.directive, DIRECTIVES.RUN);
    assert.equal(hb.acceptingWork, true);
    const t = new LeaseTable(db, table);
    const [held] = await t.claim(hb.workerId, { leaseSeconds: 60 });
    assert.equal(Number(await pg.val("SELECT pm_pipeline.drain_workers(p_worker_id => 'node-fleet')")), 1);
    await waitFor(() => hb.draining);
    assert.equal(hb.acceptingWork, false);
    assert.equal(hb.paused, false);
    assert.deepEqual(await t.claim(hb.workerId, { leaseSeconds: 60 }), [], 'a draining worker gets nothing more');
    await t.complete(held.token, { state: 'done' });
    await pg.val("SELECT pm_pipeline.resume_workers(p_worker_id => 'node-fleet')");
    await waitFor(() => hb.directive === 'run');
    await pg.val("SELECT pm_pipeline.pause_workers(p_worker_type => 'node_fleet')");
    await waitFor(() => hb.paused);
    assert.deepEqual(await t.claim(hb.workerId, { leaseSeconds: 60 }), []);
    await pg.val("SELECT pm_pipeline.resume_workers(p_worker_type => 'node_fleet')");
    await waitFor(() => hb.acceptingWork);
    assert.equal((await t.claim(hb.workerId, { leaseSeconds: 60 })).length, 1);
  } finally {
    await hb.stop();
    await db.end();
  }
  assert.deepEqual(seen, ['run>drain', 'drain>run', 'run>pause', 'pause>run']);
  assert.equal(hb.failures, 0);
  assert.equal(await pg.val(`SELECT string_agg(event, ',' ORDER BY event_id) FROM pm_pipeline.worker_events
    WHERE worker_id = 'node-fleet' AND event IN ('drain_requested', 'paused', 'resumed')`), 'drain_requested,resumed,paused,resumed');
});

// A worker process: claims the task, checkpoints, prints its token, holds it.
const CHECKPOINTER = `
const { WorkerHeartbeat, LeaseTable } = require(${JSON.stringify(LIB)});
const { Client } = require(${JSON.stringify(require.resolve('pg'))});
(async () => {
  const [wid, table] = process.argv.slice(1);
  const hb = new WorkerHeartbeat({ workerId: wid, workerType: 'node_ckpt', intervalSeconds: 0.3, sessionBound: true }).start();
  const db = new Client();
  await db.connect();
  const t = new LeaseTable(db, table);
  const [lease] = await t.claim(wid, { leaseSeconds: 600 });
  if (lease.checkpoint !== null || lease.attempts !== 1) throw new Error('fresh row expected');
  await t.checkpoint(lease.token, { step: 3, of: 10, notes: ['website', 'filings'] }, { leaseSeconds: 600 });
  console.log('checkpointed ' + lease.token);
  setInterval(() => {}, 1000);
})();
`;

test('a checkpoint survives a SIGKILL; the next claimer resumes; the zombie is refused', async () => {
  const table = await pg.makeQueue({ checkpoint: true });
  await pg.val(`INSERT INTO ${table} (payload) VALUES ('long research')`);
  const p = spawn(process.execPath, ['-e', CHECKPOINTER, 'node-ckpt', table], { env: { ...process.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  p.stdout.on('data', (d) => { out += d; });
  p.stderr.on('data', (d) => { out += d; });
  const exited = new Promise((resolve) => p.on('exit', (code, signal) => resolve({ code, signal })));
  await waitFor(() => /checkpointed \d+/.test(out) || p.exitCode !== null);
  const m = /checkpointed (\d+)/.exec(out);
  assert.ok(m, out);
  const oldToken = BigInt(m[1]);
  p.kill('SIGKILL');
  assert.deepEqual(await exited, { code: null, signal: 'SIGKILL' });
  await pg.poll(`SELECT claimed_by IS NULL FROM ${table}`);
  const db = await pg.client();
  try {
    const t = await new LeaseTable(db, table).resolve();
    assert.equal(t.checkpointColumn, 'progress');
    assert.equal(t.attemptsColumn, 'attempts');
    const [lease] = await t.claim('node-ckpt-successor', { leaseSeconds: 60 });
    assert.deepEqual(lease.checkpoint, { step: 3, of: 10, notes: ['website', 'filings'] });
    assert.equal(lease.attempts, 2);
    await assert.rejects(t.checkpoint(oldToken, { step: 9 }), (e) => e instanceof StaleLeaseError && e.token === oldToken);
    const deadline = await t.checkpoint(lease, { step: 4 }, { leaseSeconds: 120 });
    assert.ok(deadline instanceof Date && deadline.getTime() - Date.now() > 60000, String(deadline));
    await t.complete(lease.token, { state: 'done' });
  } finally {
    await db.end();
  }
  assert.equal(await pg.val(`SELECT progress IS NULL AND state = 'done' FROM ${table}`), true, 'completion clears it');
});

test('against a 1.2 catalog: directive always run, no checkpoint column, checkpoint() says 1.3 is needed', async () => {
  const dbname = 'node12_' + Math.random().toString(16).slice(2, 8);
  await pg.val(`CREATE DATABASE ${dbname}`);
  await pg.val('CREATE SCHEMA pm_pipeline', [], dbname);
  await pg.val("CREATE EXTENSION worker_heartbeat VERSION '1.2' SCHEMA pm_pipeline", [], dbname);
  const table = await pg.makeQueue({ db: dbname });
  await pg.val(`INSERT INTO ${table} (payload) VALUES ('x')`, [], dbname);
  const hb = new WorkerHeartbeat({ workerId: 'node-12', workerType: 'node_12', intervalSeconds: 0.1, onSignal: 'ignore',
    connectionString: pg.connectionString(dbname) }).start();
  const db = new Client(pg.config(dbname));
  await db.connect();
  try {
    await waitFor(() => hb.beats >= 2);
    assert.equal(hb.directive, 'run');
    assert.equal(hb.failures, 0);
    const t = await new LeaseTable(db, table).resolve();
    assert.equal(t.checkpointColumn, null);
    const [lease] = await t.claim(hb.workerId, { leaseSeconds: 60 });
    assert.equal(lease.checkpoint, null);
    assert.equal(lease.attempts, 1);
    await assert.rejects(t.checkpoint(lease.token, { step: 1 }), (e) => e instanceof WorkerHeartbeatError && /version 1\.3/.test(e.message));
    await t.complete(lease.token);
  } finally {
    await hb.stop();
    await db.end();
  }
});
