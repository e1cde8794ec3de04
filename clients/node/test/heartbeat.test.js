'use strict';
// WorkerHeartbeat and LeaseTable against a real cluster: kill -9, SIGTERM /
// SIGINT, a restarted database, concurrent task updates, WH001.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('child_process');
const path = require('path');
const { useCluster } = require('./cluster');
const { WorkerHeartbeat, LeaseTable, StaleLeaseError, WorkerHeartbeatError, cleanupDeadWorkers, getWorkerHealthSummary } =
  require('../lib/index.cjs');

const LIB = path.resolve(__dirname, '../lib/index.cjs');
let pg;
useCluster((c) => { pg = c; });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const randomUuid = () => require('crypto').randomUUID();

// A worker process: heartbeat, claim one lease, hold it.
const HOLDER = `
const { WorkerHeartbeat, LeaseTable } = require(${JSON.stringify(LIB)});
const { Client } = require(${JSON.stringify(require.resolve('pg'))});
(async () => {
  const [wid, table, bound] = process.argv.slice(1);
  const hb = new WorkerHeartbeat({ workerId: wid, workerType: 'node_holder', intervalSeconds: 0.3, sessionBound: bound === '1' }).start();
  const db = new Client();
  await db.connect();
  const [lease] = await new LeaseTable(db, table).claim(hb.workerId, { leaseSeconds: 600 });
  hb.updateTask(lease.row.run_id, 'holding ' + lease.row.id, 'processing');
  console.log('claimed ' + lease.token);
  setInterval(() => {}, 1000);
})();
`;

function spawnHolder(wid, table, bound) {
  const p = spawn(process.execPath, ['-e', HOLDER, wid, table, bound ? '1' : '0'], { env: { ...process.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  p.stdout.on('data', (d) => { out += d; });
  p.stderr.on('data', (d) => { out += d; });
  const exited = new Promise((resolve) => p.on('exit', (code, signal) => resolve({ code, signal })));
  const claimed = new Promise((resolve, reject) => {
    const t = setInterval(() => {
      const m = /claimed (\d+)/.exec(out);
      if (m) { clearInterval(t); resolve(BigInt(m[1])); }
    }, 10);
    exited.then((r) => { clearInterval(t); reject(new Error(`holder exited ${JSON.stringify(r)}: ${out}`)); });
  });
  return { p, claimed, exited, output: () => out };
}

test('kill -9 of a session-bound worker: the lease comes back', async () => {
  const table = await pg.makeQueue();
  await pg.val(`INSERT INTO ${table} (payload) VALUES ('x')`);
  const h = spawnHolder('node-kill9', table, true);
  const token = await h.claimed;
  assert.equal(BigInt(await pg.val(`SELECT lease_token FROM ${table}`)), token);
  await pg.poll("SELECT status = 'processing' FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'node-kill9'");
  h.p.kill('SIGKILL');
  assert.deepEqual(await h.exited, { code: null, signal: 'SIGKILL' });
  await pg.poll(`SELECT claimed_by IS NULL AND state = 'pending' FROM ${table}`);
  assert.equal(await pg.val("SELECT status || '/' || death_cause FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'node-kill9'"),
    'dead/session_ended');
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  test(`${sig}: stop_worker runs and the leases are released at once`, async () => {
    const table = await pg.makeQueue();
    await pg.val(`INSERT INTO ${table} (payload) VALUES ('x')`);
    const wid = `node-${sig.toLowerCase()}`;
    const h = spawnHolder(wid, table, false);
    await h.claimed;
    await pg.poll("SELECT status = 'processing' FROM pm_pipeline.worker_heartbeats WHERE worker_id = $1", [wid]);
    h.p.kill(sig);
    // The process dies of the signal, as it would without the package...
    assert.deepEqual(await h.exited, { code: null, signal: sig }, h.output());
    // ...after stop_worker: no polling, no reaper delay.
    assert.equal(await pg.val('SELECT status FROM pm_pipeline.worker_heartbeats WHERE worker_id = $1', [wid]), 'stopped');
    assert.equal(await pg.val(`SELECT claimed_by IS NULL AND state = 'pending' FROM ${table}`), true);
  });
}

test('a process whose work is done exits by itself, after stop_worker', async () => {
  const code = `
const { WorkerHeartbeat } = require(${JSON.stringify(LIB)});
const hb = new WorkerHeartbeat({ workerId: 'node-natural-exit', workerType: 'node_test', intervalSeconds: 30 }).start();
hb.updateTask(null, 'a short job');
setTimeout(() => { hb.markIdle(); console.log('work done'); }, 300);
`;
  const p = spawn(process.execPath, ['-e', code], { env: { ...process.env }, stdio: ['ignore', 'pipe', 'inherit'] });
  const r = await new Promise((resolve) => p.on('exit', (c, s) => resolve({ c, s })));
  assert.deepEqual(r, { c: 0, s: null });
  assert.equal(await pg.val("SELECT status FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'node-natural-exit'"), 'stopped');
});

test('onSignal flag: the worker finishes its task, then stops', async () => {
  const code = `
const { WorkerHeartbeat } = require(${JSON.stringify(LIB)});
const hb = new WorkerHeartbeat({ workerId: 'node-flag', workerType: 'node_test', intervalSeconds: 0.3, onSignal: 'flag' }).start();
hb.updateTask(null, 'long', 'processing');
console.log('ready');
const t = setInterval(async () => {
  if (!hb.stopRequested) return;
  clearInterval(t);
  console.log('finishing');
  await hb.stop();
  console.log('done');
}, 20);
`;
  const p = spawn(process.execPath, ['-e', code], { env: { ...process.env }, stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  p.stdout.on('data', (d) => { out += d; });
  const exited = new Promise((resolve) => p.on('exit', (c, s) => resolve({ c, s })));
  await pg.poll("SELECT status = 'processing' FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'node-flag'");
  p.kill('SIGTERM');
  assert.deepEqual(await exited, { c: 0, s: null });
  assert.match(out, /finishing[\s\S]*done/);
  assert.equal(await pg.val("SELECT status FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'node-flag'"), 'stopped');
});

test('the database restarted under a beating worker: it reconnects with backoff and keeps working', async () => {
  const hb = new WorkerHeartbeat({ workerId: 'node-restart', workerType: 'node_test', intervalSeconds: 0.2, onSignal: 'ignore',
    backoff: { initialMs: 50, maxMs: 1000 }, logger: { warn() {} } }).start();
  let work = 0;
  const worker = setInterval(() => { work += 1; }, 10);
  try {
    await pg.poll("SELECT count(*) = 1 FROM pm_pipeline.v_active_workers WHERE worker_id = 'node-restart'");
    hb.updateTask(randomUuid(), 'before restart');
    await pg.poll("SELECT current_task = 'before restart' FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'node-restart'");
    const workBefore = work;
    await pg.restart();
    const workAtRestart = work;
    assert.ok(workAtRestart > workBefore, 'the work went on during the restart');
    const started = await pg.val('SELECT pg_postmaster_start_time()');
    await pg.poll(`SELECT last_heartbeat_at > $1 AND status = 'processing' AND current_task = 'before restart'
                     FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'node-restart'`, [started]);
    assert.ok(hb.failures >= 1, 'the heartbeat saw the restart');
    for (let i = 0; i < 1500 && !hb.connected; i++) await sleep(20);
    assert.ok(hb.connected);
    await sleep(50);
    assert.ok(work > workAtRestart, 'the work kept going');
    hb.updateTask({ task: 'after restart' });
    await pg.poll("SELECT current_task = 'after restart' FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'node-restart'");
  } finally {
    clearInterval(worker);
    await hb.stop();
  }
  assert.equal(await pg.val("SELECT status FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'node-restart'"), 'stopped');
});

test('concurrent task updates: every row read pairs a task with its own run id', async () => {
  const hb = new WorkerHeartbeat({ workerId: 'node-concurrent', workerType: 'node_test', intervalSeconds: 0.05, onSignal: 'ignore' }).start();
  const runs = new Map();
  const seen = [];
  let reading = true;
  const reader = (async () => {
    const c = await pg.client();
    while (reading) {
      const r = await c.query("SELECT current_task, current_run_id::text AS run, status FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'node-concurrent'");
      if (r.rows[0]) seen.push(r.rows[0]);
      await sleep(5);
    }
    await c.end();
  })();
  const writer = async (w) => {
    for (let j = 0; j < 200; j++) {
      const task = `t${w}-${j}`;
      const run = randomUuid();
      runs.set(task, run);
      hb.updateTask(run, task, 'processing');
      if (j % 50 === 0) hb.markIdle();
      await sleep(Math.random() * 4);
    }
  };
  await Promise.all([writer(0), writer(1)]);
  hb.updateTask(null, 'final');
  await pg.poll("SELECT current_task = 'final' FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'node-concurrent'");
  reading = false;
  await reader;
  await hb.stop();
  assert.equal(hb.failures, 0);
  const pairs = seen.filter((s) => s.current_task && s.current_task !== 'final');
  assert.ok(pairs.length > 0, 'the reader saw some tasks');
  for (const s of pairs) assert.equal(s.run, runs.get(s.current_task), s.current_task);
});

test('a run id that is not a UUID goes to metadata.run_id; beats go on', async () => {
  const hb = new WorkerHeartbeat({ workerId: 'node-abc123', workerType: 'node_test', intervalSeconds: 0.2, onSignal: 'ignore' }).start();
  try {
    hb.updateTask('abc123', 'Researching company example.com', 'processing');
    await pg.poll(`SELECT current_run_id IS NULL AND metadata->>'run_id' = 'abc123' AND current_task = 'Researching company example.com'
                     FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'node-abc123'`);
    assert.equal(hb.failures, 0);
  } finally {
    await hb.stop();
  }
});

test('heartbeat failures never reach the worker', async () => {
  const hb = new WorkerHeartbeat({ workerId: 'node-nowhere', workerType: 'node_test', intervalSeconds: 0.1, onSignal: 'ignore',
    connectionString: 'postgresql://localhost:1/none', connectTimeoutMillis: 1000, backoff: { initialMs: 10, maxMs: 50 },
    logger: { warn() {} } }).start();
  hb.updateTask(null, 'x');
  for (let i = 0; i < 1500 && hb.failures < 3; i++) await sleep(20);
  assert.ok(hb.failures >= 3 && !hb.connected);
  await hb.stop(); // resolves
});

test('options are checked; defaults come from the environment', () => {
  process.env.COMPANY_RESEARCH_WORKER_ID = 'from-env-1';
  process.env.WORKER_HEARTBEAT_INTERVAL = '7';
  try {
    const hb = new WorkerHeartbeat({ workerType: 'company_research' });
    assert.equal(hb.workerId, 'from-env-1');
    assert.equal(hb.intervalSeconds, 7);
    assert.equal(hb.schema, 'pm_pipeline');
  } finally {
    delete process.env.COMPANY_RESEARCH_WORKER_ID;
    delete process.env.WORKER_HEARTBEAT_INTERVAL;
  }
  assert.throws(() => new WorkerHeartbeat({ workerId: 'x' }), TypeError);
  assert.throws(() => new WorkerHeartbeat({ workerType: 't', intervalSeconds: -1 }), RangeError);
  assert.throws(() => new WorkerHeartbeat({ workerType: 't', onSignal: 'explode' }), TypeError);
});

test('LeaseTable: claim / extend / check / fail / complete; WH001 is StaleLeaseError', async () => {
  const table = await pg.makeQueue();
  await pg.val(`INSERT INTO ${table} (payload) SELECT 'p' || g FROM generate_series(1, 3) g`);
  const db = await pg.client();
  try {
    const t = new LeaseTable(db, table);
    const leases = await t.claim('node-leases', { limit: 2, leaseSeconds: 60, filter: { state: 'pending' }, set: { state: 'claimed' } });
    assert.equal(t.tokenColumn, 'lease_token');
    assert.equal(t.channel, `worker_heartbeat:public.${table}`);
    assert.deepEqual(leases.map((l) => l.row.payload), ['p1', 'p2']);
    assert.ok(leases.every((l) => typeof l.token === 'bigint'));
    const [a, b] = leases;
    assert.equal(await t.check(a.token), true);
    assert.ok((await t.extend(a, { leaseSeconds: 120 })) instanceof Date);
    await t.complete(a.token, { state: 'done', done_by: 'node-leases' });
    assert.equal(await t.fail(String(b.token)), true);
    for (const call of [() => t.complete(a.token), () => t.extend(a.token), () => t.check(a.token), () => t.fail(a.token)]) {
      await assert.rejects(call(), (e) => {
        assert.ok(e instanceof StaleLeaseError && e instanceof WorkerHeartbeatError);
        assert.equal(e.code, 'WH001');
        assert.equal(e.token, a.token);
        assert.equal(e.cause.code, 'WH001');
        return true;
      });
    }
    await assert.rejects(t.complete(12345678901234567890), TypeError); // a Number that lost precision
    assert.equal(await pg.val(`SELECT string_agg(state, ',' ORDER BY id) FROM ${table}`), 'done,pending,pending');
  } finally {
    await db.end();
  }
});

test('63-bit tokens round-trip exactly (BigInt, never Number)', async () => {
  const table = await pg.makeQueue();
  await pg.val(`INSERT INTO ${table} (payload) VALUES ('x')`);
  await pg.val("SELECT setval('pm_pipeline.lease_token_seq', $1)", [(2n ** 62n + 12345n).toString()]);
  const db = await pg.client();
  try {
    const t = new LeaseTable(db, table);
    const [lease] = await t.claim('node-big');
    assert.ok(lease.token > 2n ** 53n);
    assert.equal(lease.token, BigInt(await pg.val(`SELECT lease_token::text FROM ${table}`)));
    await t.complete(lease.token);
    assert.equal(await pg.val(`SELECT claimed_by IS NULL FROM ${table}`), true);
  } finally {
    await db.end();
  }
});

test('a lease released by stop_worker refuses the late completion', async () => {
  const table = await pg.makeQueue();
  await pg.val(`INSERT INTO ${table} (payload) VALUES ('x')`);
  const hb = new WorkerHeartbeat({ workerId: 'node-late', workerType: 'node_test', intervalSeconds: 0.2, onSignal: 'ignore' }).start();
  const db = await pg.client();
  try {
    await pg.poll("SELECT count(*) = 1 FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'node-late'");
    const t = new LeaseTable(db, table);
    const [lease] = await t.claim(hb.workerId);
    await hb.stop();
    await assert.rejects(t.complete(lease.token, { state: 'done' }), StaleLeaseError);
    assert.equal(await pg.val(`SELECT state FROM ${table}`), 'pending');
  } finally {
    await db.end();
  }
});

test('helpers: cleanupDeadWorkers, getWorkerHealthSummary; unregistered table', async () => {
  assert.equal(typeof await cleanupDeadWorkers(), 'number');
  const s = await getWorkerHealthSummary();
  assert.ok('total_active_workers' in s && Array.isArray(s.stats_by_type));
  await pg.val('CREATE TABLE public.node_not_registered (id int)');
  const db = await pg.client();
  try {
    await assert.rejects(new LeaseTable(db, 'node_not_registered').claim('w'), /not registered/);
  } finally {
    await db.end();
  }
});

test('quoted schema', async () => {
  await pg.val('CREATE DATABASE quoted_node');
  const c = await pg.client('quoted_node');
  await c.query('CREATE SCHEMA "Worker HB"; CREATE EXTENSION worker_heartbeat SCHEMA "Worker HB"');
  const hb = new WorkerHeartbeat({ workerId: 'node-quoted', workerType: 'node_test', intervalSeconds: 0.2, onSignal: 'ignore',
    schema: 'Worker HB', connectionString: `postgresql://${encodeURIComponent(pg.user)}@/quoted_node?host=${encodeURIComponent(pg.host)}&port=${pg.port}` }).start();
  hb.updateTask(null, 'quoted');
  await sleep(100);
  await hb.stop();
  assert.equal((await c.query('SELECT status FROM "Worker HB".worker_heartbeats WHERE worker_id = $1', ['node-quoted'])).rows[0].status, 'stopped');
  await c.end();
});
