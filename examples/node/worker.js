#!/usr/bin/env node
// Example worker for the worker_heartbeat extension, in Node.js (node-postgres).
//
// The seed's loop: a heartbeat beside the work (its own connection, every
// WORKER_HEARTBEAT_INTERVAL seconds, default 30), claim a task, update the
// heartbeat's task, work, complete, mark idle, stop on SIGTERM / SIGINT.
// Works on the queue table of examples/sql/queue.sql.
//
//   cd examples/node && npm ci && DATABASE_URL=postgresql:///mydb node worker.js
//
// Connection: DATABASE_URL, else the PG* variables. Worker id: --id, else
// $<TYPE>_WORKER_ID, else <type>-<host>-<pid>.
'use strict';

const os = require('os');
const { Client } = require('pg');

function log(...args) {
  console.log(new Date().toISOString(), ...args);
}

function quoteIdent(s) {
  return '"' + String(s).replace(/"/g, '""') + '"';
}

function defaultWorkerId(type) {
  const env = process.env[type.toUpperCase().replace(/[^A-Z0-9]/g, '_') + '_WORKER_ID'];
  return env || `${type.replace(/_/g, '-')}-${os.hostname().split('.')[0]}-${process.pid}`;
}

class StaleLease extends Error {}

// The seed's WorkerHeartbeat. Heartbeat failures never stop the work: it logs,
// reconnects with backoff and tries again.
class WorkerHeartbeat {
  constructor({ workerId, workerType, intervalSeconds, connectionString, schema = 'pm_pipeline', sessionBound = false }) {
    this.workerId = workerId;
    this.workerType = workerType;
    this.interval = Number(intervalSeconds || process.env.WORKER_HEARTBEAT_INTERVAL || 30);
    if (!(this.interval > 0)) throw new Error('the heartbeat interval must be positive');
    this.connectionString = connectionString;
    this.schema = quoteIdent(schema);
    this.sessionBound = sessionBound;
    this.state = { status: 'active', runId: null, task: null };
    this.client = null;
    this.timer = null;
    this.attempt = 0;
    this.stopping = false;
    this.stopRequested = false;
    this.inFlight = Promise.resolve();
  }

  start() {
    const onSignal = (sig) => {
      log(`received ${sig}: finishing the current task`);
      this.stopRequested = true;
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
    log(`Started heartbeat for worker ${this.workerId} (interval: ${this.interval}s)`);
    this.schedule(0);
  }

  updateTask(runId, task, status = 'processing') {
    this.state = { status, runId, task };
    this.schedule(0); // beat now
  }

  markIdle() {
    this.updateTask(null, null, 'idle');
  }

  async stop() {
    if (this.stopping) return;
    this.stopping = true;
    this.stopRequested = true;
    clearTimeout(this.timer);
    await this.inFlight;
    try {
      const c = this.client || (await this.connect());
      await c.query(`SELECT ${this.schema}.stop_worker($1)`, [this.workerId]);
      log(`Stopped worker ${this.workerId}`);
    } catch (e) {
      log(`stop_worker failed: ${e.message}`);
    }
    if (this.client) await this.client.end().catch(() => {});
    this.client = null;
  }

  schedule(ms) {
    if (this.stopping) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.inFlight = this.inFlight.then(() => this.beat());
    }, ms);
  }

  async connect() {
    const c = new Client({
      connectionString: this.connectionString || undefined,
      application_name: `worker_heartbeat ${this.workerId}`.slice(0, 63),
      connectionTimeoutMillis: 10000,
      keepAlive: true,
    });
    c.on('error', () => {}); // a dropped connection surfaces on the next query
    await c.connect();
    return c;
  }

  async beat() {
    if (this.stopping) return;
    let next = this.interval * 1000;
    const s = this.state;
    try {
      let first = false;
      if (!this.client) {
        this.client = await this.connect();
        first = true;
      }
      const meta = first ? JSON.stringify({ client: 'worker_heartbeat-node', host: os.hostname(), pid: process.pid }) : null;
      await this.client.query(
        `SELECT ${this.schema}.upsert_worker_heartbeat(p_worker_id => $1, p_worker_type => $2,
           p_status => $3, p_current_run_id => $4::uuid, p_current_task => $5,
           p_metadata => $6::jsonb, p_session_bound => $7)`,
        [this.workerId, this.workerType, s.status, s.runId, s.task, meta, this.sessionBound]);
      if (this.attempt > 0) log('heartbeat connection restored');
      this.attempt = 0;
    } catch (e) {
      if (this.client) this.client.end().catch(() => {});
      this.client = null;
      next = Math.min(30000, 250 * 2 ** Math.min(this.attempt, 10)) * (0.5 + Math.random() / 2);
      this.attempt += 1;
      log(`heartbeat failed (${e.message}); retrying in ${Math.round(next)} ms`);
    }
    // A task update that arrived while this beat was in flight goes out now.
    if (this.state !== s && this.attempt === 0) next = 0;
    this.schedule(next);
  }
}

// Claims and completes rows of a table registered with register_lease_table.
class Queue {
  constructor(client, { table, schema, workerId, leaseSeconds, mode }) {
    Object.assign(this, { client, workerId, mode, table });
    this.schema = quoteIdent(schema);
    this.lease = `${leaseSeconds} seconds`;
    this.leaseMs = leaseSeconds * 1000;
  }

  async init() {
    // regclass output is the table name quoted as needed: safe to splice.
    this.table = (await this.client.query('SELECT $1::regclass::text AS t', [this.table])).rows[0].t;
    const have = (await this.client.query('SELECT to_regprocedure($1) IS NOT NULL AS f',
      [`${this.schema}.claim_leases(anyelement,text,integer,interval,jsonb,jsonb)`])).rows[0].f;
    this.fenced = this.mode === 'fenced' || (this.mode === 'auto' && have);
    return this;
  }

  async claim() {
    const r = this.fenced
      ? await this.client.query(
        `SELECT id, run_id, payload, lease_token AS token FROM ${this.schema}.claim_leases(
           NULL::${this.table}, $1, 1, $2::interval, $3::jsonb, $4::jsonb)`,
        [this.workerId, this.lease, '{"state": "pending"}', '{"state": "claimed"}'])
      : await this.client.query(
        `UPDATE ${this.table} SET claimed_by = $1, lease_expires_at = now() + $2::interval,
           state = 'claimed', attempts = attempts + 1
         WHERE id = (SELECT id FROM ${this.table} WHERE state = 'pending' AND claimed_by IS NULL
                     ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING id, run_id, payload, NULL::bigint AS token`,
        [this.workerId, this.lease]);
    return r.rows[0] || null;
  }

  // Pushes the lease's deadline; StaleLease if the row is no longer ours.
  async extend(task) {
    try {
      if (this.fenced) {
        await this.client.query(`SELECT ${this.schema}.extend_lease($1::regclass, $2, $3::interval)`,
          [this.table, task.token, this.lease]);
        return;
      }
      const r = await this.client.query(
        `UPDATE ${this.table} SET lease_expires_at = now() + $3::interval WHERE id = $1 AND claimed_by = $2`,
        [task.id, this.workerId, this.lease]);
      if (r.rowCount === 0) throw new StaleLease(`task ${task.id} is no longer ours`);
    } catch (e) {
      if (e.code === 'WH001') throw new StaleLease(e.message);
      throw e;
    }
  }

  async complete(task) {
    try {
      if (this.fenced) {
        await this.client.query(`SELECT ${this.schema}.complete_lease($1::regclass, $2, $3::jsonb)`,
          [this.table, task.token, JSON.stringify({ state: 'done', done_by: this.workerId, done_at: 'now' })]);
        return;
      }
      const r = await this.client.query(
        `UPDATE ${this.table} SET state = 'done', claimed_by = NULL, lease_expires_at = NULL,
           done_by = $2, done_at = now() WHERE id = $1 AND claimed_by = $2`, [task.id, this.workerId]);
      if (r.rowCount === 0) throw new StaleLease(`task ${task.id} is no longer ours`);
    } catch (e) {
      if (e.code === 'WH001') throw new StaleLease(e.message);
      throw e;
    }
  }
}

function parseArgs(argv) {
  const a = {
    table: 'tasks', schema: 'pm_pipeline', type: 'company_research', id: null, mode: 'auto',
    workMs: Number(process.env.WORK_MS || 200), leaseSeconds: 300, idleMs: 500,
    sessionBound: false, exitWhenEmpty: false,
  };
  for (let i = 2; i < argv.length; i++) {
    const k = argv[i];
    const v = () => {
      if (i + 1 >= argv.length) throw new Error(`${k} needs a value`);
      return argv[++i];
    };
    if (k === '--table') a.table = v();
    else if (k === '--schema') a.schema = v();
    else if (k === '--type') a.type = v();
    else if (k === '--id') a.id = v();
    else if (k === '--mode') a.mode = v();
    else if (k === '--work-ms') a.workMs = Number(v());
    else if (k === '--lease-seconds') a.leaseSeconds = Number(v());
    else if (k === '--idle-ms') a.idleMs = Number(v());
    else if (k === '--session-bound') a.sessionBound = true;
    else if (k === '--exit-when-empty') a.exitWhenEmpty = true;
    else throw new Error(`unknown option ${k}`);
  }
  if (!['auto', 'fenced', 'plain'].includes(a.mode)) throw new Error('bad --mode');
  return a;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Stands for the real work: takes `ms`, extending the lease every half lease so
// that a long task keeps its row.
async function work(queue, task, ms) {
  const end = Date.now() + ms;
  for (;;) {
    const left = end - Date.now();
    if (left <= 0) return;
    await sleep(Math.min(left, queue.leaseMs / 2));
    if (end - Date.now() > 0) await queue.extend(task);
  }
}

async function main() {
  const args = parseArgs(process.argv);
  const workerId = args.id || defaultWorkerId(args.type);
  const connectionString = process.env.DATABASE_URL;
  log(`Worker starting up worker_id=${workerId} pid=${process.pid}`);
  const heartbeat = new WorkerHeartbeat({
    workerId, workerType: args.type, connectionString, schema: args.schema, sessionBound: args.sessionBound,
  });
  heartbeat.start();
  let db = null;
  let queue = null;
  let done = 0;
  try {
    while (!heartbeat.stopRequested) {
      try {
        if (!db) {
          db = new Client({ connectionString: connectionString || undefined, application_name: `worker ${workerId}`.slice(0, 63) });
          db.on('error', () => {}); // a dropped connection surfaces on the next query
          await db.connect();
          queue = await new Queue(db, { ...args, workerId }).init();
          log(`mode=${queue.fenced ? 'fenced' : 'plain'}`);
        }
        const task = await queue.claim();
        if (!task) {
          heartbeat.markIdle();
          if (args.exitWhenEmpty) break;
          await sleep(args.idleMs);
          continue;
        }
        heartbeat.updateTask(task.run_id, `Researching: ${task.payload}`, 'processing');
        log(`claimed task ${task.id}${task.token ? ` token ${task.token}` : ''}`);
        try {
          await work(queue, task, args.workMs); // the real work
          await queue.complete(task);
          done += 1;
          log(`completed task ${task.id}`);
        } catch (e) {
          if (!(e instanceof StaleLease)) throw e;
          log(`lost the lease of task ${task.id}: ${e.message}`);
        } finally {
          heartbeat.markIdle();
        }
      } catch (e) {
        // SQL errors (e.code set, not a connection class) are bugs: give up.
        if (e.code && !/^(08|57P0)/.test(e.code)) throw e;
        // The task's lease comes back by itself: reconnect and go on.
        log(`database connection lost (${e.message}); reconnecting`);
        if (db) db.end().catch(() => {});
        db = null;
        await sleep(args.idleMs);
      }
    }
    log(`exiting after ${done} task(s)`);
  } finally {
    await heartbeat.stop();
    if (db) await db.end().catch(() => {});
  }
}

main().then(() => process.exit(0), (e) => {
  console.error(`worker: ${e.stack || e}`);
  process.exit(1);
});
