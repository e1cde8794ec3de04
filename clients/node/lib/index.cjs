'use strict';
// worker-heartbeat: Node.js client of the worker_heartbeat PostgreSQL extension.
//
//   const { WorkerHeartbeat, LeaseTable, StaleLeaseError } = require('worker-heartbeat');
//
// WorkerHeartbeat keeps a worker's heartbeat row fresh on its own connection
// (start / updateTask / markIdle / stop, SIGTERM / SIGINT handling, reconnect
// with backoff: heartbeat failures never reach the worker). LeaseTable wraps
// the fenced-lease functions; a stale token (SQLSTATE WH001) rejects with
// StaleLeaseError. Lease tokens are BigInt (63-bit values do not fit a Number).

const os = require('os');
const pg = require('pg');

const DEFAULT_SCHEMA = 'pm_pipeline';
const CLIENT_NAME = 'worker_heartbeat-node';
const UUID_RE = /^[{]?[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}[}]?$/i;

class WorkerHeartbeatError extends Error {
  constructor(message, options) {
    super(message, options);
    this.name = 'WorkerHeartbeatError';
  }
}

// SQLSTATE WH001: the lease token is stale (the row was released, completed or
// claimed again since the token was handed out). Nothing was changed.
class StaleLeaseError extends WorkerHeartbeatError {
  constructor(message, token, cause) {
    super(message, cause ? { cause } : undefined);
    this.name = 'StaleLeaseError';
    this.code = 'WH001';
    this.token = token;
  }
}

function quoteIdent(s) {
  return '"' + String(s).replace(/"/g, '""') + '"';
}

function resolveConnectionString(cs) {
  return cs || process.env.DATABASE_URL || process.env.POSTGRES_URL || undefined;
}

function resolveSchema(schema) {
  return schema || process.env.WORKER_HEARTBEAT_SCHEMA || DEFAULT_SCHEMA;
}

function resolveInterval(seconds) {
  const raw = seconds ?? (process.env.WORKER_HEARTBEAT_INTERVAL || 30);
  const v = Number(raw);
  if (!(v > 0) || !Number.isFinite(v)) throw new RangeError(`the heartbeat interval must be a positive number of seconds, not ${raw}`);
  return v;
}

// $<WORKER_TYPE>_WORKER_ID (e.g. COMPANY_RESEARCH_WORKER_ID), else <worker-type>-<host>-<pid>.
function defaultWorkerId(workerType) {
  const env = process.env[String(workerType).toUpperCase().replace(/[^A-Z0-9]/g, '_') + '_WORKER_ID'];
  return env || `${String(workerType).replace(/_/g, '-')}-${os.hostname().split('.')[0]}-${process.pid}`;
}

// current_run_id is a uuid column: other run ids go to metadata.run_id.
function splitRunId(runId) {
  if (runId === undefined || runId === null || runId === '') return [null, null];
  const s = String(runId);
  return UUID_RE.test(s) ? [s, null] : [null, s];
}

// The directives of the 1.3 heartbeat() (docs/fleet-control.md).
const DIRECTIVES = Object.freeze({ RUN: 'run', DRAIN: 'drain', PAUSE: 'pause' });
const HEARTBEAT_SIGNATURE = 'heartbeat(text,text,text,uuid,text,timestamptz,jsonb,boolean)';

function oneLine(e) {
  return String((e && e.message) || e).replace(/\s+/g, ' ').trim();
}

const defaultLogger = {
  debug() {},
  info() {},
  warn(msg) { console.warn(`worker_heartbeat: ${msg}`); },
};

class WorkerHeartbeat {
  // options: { workerId, workerType (required), intervalSeconds, connectionString,
  //   schema, sessionBound, metadata, onSignal: 'exit' | 'flag' | 'ignore',
  //   connectTimeoutMillis, backoff: { initialMs, maxMs, jitter }, logger, clientConfig,
  //   onDirective(directive, previous) }
  constructor(options = {}) {
    const o = options || {};
    if (!o.workerType || !String(o.workerType).trim()) throw new TypeError("workerType is required (e.g. { workerType: 'company_research' })");
    const onSignal = o.onSignal || 'exit';
    if (!['exit', 'flag', 'ignore'].includes(onSignal)) throw new TypeError(`onSignal must be 'exit', 'flag' or 'ignore', not ${onSignal}`);
    if (o.metadata != null && (typeof o.metadata !== 'object' || Array.isArray(o.metadata))) throw new TypeError('metadata must be a plain object');
    this.workerType = String(o.workerType);
    this.workerId = o.workerId ? String(o.workerId) : defaultWorkerId(this.workerType);
    this.intervalSeconds = resolveInterval(o.intervalSeconds);
    this.connectionString = resolveConnectionString(o.connectionString);
    this.schema = resolveSchema(o.schema);
    this.sessionBound = Boolean(o.sessionBound);
    this.onSignal = onSignal;
    this.connectTimeoutMillis = o.connectTimeoutMillis || 10000;
    this.backoff = { initialMs: 250, maxMs: 30000, jitter: 0.5, ...(o.backoff || {}) };
    this.logger = { ...defaultLogger, ...(o.logger || {}) };
    this.clientConfig = o.clientConfig || {};
    this.metadata = { ...(o.metadata || {}) };
    this.beats = 0;
    this.failures = 0;
    this.connected = false;
    // The directive of the last beat (1.3's heartbeat()): 'run', 'drain' or 'pause'.
    this.directive = DIRECTIVES.RUN;
    this._withDirective = false;
    this._onDirective = typeof o.onDirective === 'function' ? o.onDirective : null;
    this._stopRequested = false;
    this._state = { status: 'active', runId: null, task: null, runText: null };
    this._version = 0;
    this._sentVersion = -1;
    this._client = null;
    this._started = false;
    this._stopped = false;
    this._stopping = null;
    this._halt = false;
    this._loopDone = null;
    this._wakePending = false;
    this._wakeResolve = null;
    this._timer = null;
    this._listeners = [];
  }

  // Set by stop() and by SIGTERM / SIGINT: worker loops test it.
  get stopRequested() {
    return this._stopRequested;
  }

  get running() {
    return this._started && !this._stopped;
  }

  // An operator drains this worker (drain_workers()): claim no more, finish
  // what it holds, then stop().
  get draining() {
    return this.directive === DIRECTIVES.DRAIN;
  }

  // An operator paused this worker (pause_workers()): claim nothing until
  // resume_workers(); keep beating.
  get paused() {
    return this.directive === DIRECTIVES.PAUSE;
  }

  // The worker may claim: directive 'run' and no stop requested.
  get acceptingWork() {
    return this.directive === DIRECTIVES.RUN && !this._stopRequested;
  }

  // Starts beating (at once, then every intervalSeconds) and installs the
  // shutdown handling. The heartbeat never keeps the process alive by itself:
  // when the worker's own work is done, it stops (stop_worker) before exit.
  start() {
    if (this._started) return this;
    if (this._stopped) throw new WorkerHeartbeatError('this WorkerHeartbeat was stopped: create a new one');
    this._started = true;
    this._loopDone = this._loop();
    const onBeforeExit = () => { if (!this._stopped) this.stop(); };
    this._on('beforeExit', onBeforeExit);
    if (this.onSignal !== 'ignore') {
      for (const sig of ['SIGTERM', 'SIGINT']) {
        const handler = () => this._onSignal(sig, handler);
        this._on(sig, handler);
      }
    }
    this.logger.info(`Started heartbeat for worker ${this.workerId} (interval: ${this.intervalSeconds}s)`);
    return this;
  }

  // Records the current task and beats at once. updateTask(runId, task, status)
  // or updateTask({ runId, task, status }). runId: a UUID, or any other text
  // (kept in the row's metadata as run_id).
  updateTask(runId, task, status = 'processing') {
    if (runId !== null && typeof runId === 'object' && !(runId instanceof String)) {
      ({ runId = null, task = null, status = 'processing' } = runId);
    }
    const [uuid, text] = splitRunId(runId);
    this._state = { status: String(status), runId: uuid, task: task ?? null, runText: text };
    this._version += 1;
    this._wake();
  }

  markIdle() {
    this.updateTask(null, null, 'idle');
  }

  // Ends the beats and calls stop_worker: the worker is stopped and its leases
  // are released at once. Idempotent; never rejects (a failure is logged).
  stop() {
    if (this._stopping) return this._stopping;
    this._stopping = this._stop();
    return this._stopping;
  }

  async _stop() {
    // Our sockets are unref'd: this keeps the process alive until stop_worker is done.
    const keepAlive = setInterval(() => {}, 60000);
    try {
      await this._stopInner();
    } finally {
      clearInterval(keepAlive);
    }
  }

  async _stopInner() {
    this._stopped = true;
    this._stopRequested = true;
    this._halt = true;
    this._wake();
    this._removeListeners();
    if (this._loopDone) await this._loopDone;
    let c = this._client;
    this._client = null;
    try {
      if (!c) c = await this._connect();
      await c.query(`SELECT ${quoteIdent(this.schema)}.stop_worker($1)`, [this.workerId]);
      this.logger.info(`Stopped worker ${this.workerId}`);
    } catch (e) {
      this.logger.warn(`stop_worker failed for worker ${this.workerId}: ${oneLine(e)}`);
    } finally {
      if (c) await c.end().catch(() => {});
      this.connected = false;
    }
  }

  _on(event, fn) {
    process.on(event, fn);
    this._listeners.push([event, fn]);
  }

  _removeListeners() {
    for (const [event, fn] of this._listeners) process.removeListener(event, fn);
    this._listeners = [];
  }

  _onSignal(sig) {
    this._stopRequested = true;
    if (this.onSignal === 'flag') {
      this.logger.info(`received ${sig}: finishing the current task`);
      return;
    }
    this.logger.info(`received ${sig}: stopping worker ${this.workerId}`);
    this.stop().then(() => {
      // Nobody else handles it: die of the signal, as without us.
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
    });
  }

  _wake() {
    if (this._wakeResolve) {
      const r = this._wakeResolve;
      this._wakeResolve = null;
      clearTimeout(this._timer);
      r();
    } else {
      this._wakePending = true;
    }
  }

  _sleep(ms) {
    if (this._wakePending || this._halt) {
      this._wakePending = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      this._wakeResolve = resolve;
      this._timer = setTimeout(() => {
        this._wakeResolve = null;
        resolve();
      }, ms);
      this._timer.unref();
    });
  }

  async _connect() {
    const c = new pg.Client({
      ...this.clientConfig,
      connectionString: this.connectionString,
      application_name: `worker_heartbeat ${this.workerId}`.slice(0, 63),
      connectionTimeoutMillis: this.connectTimeoutMillis,
      query_timeout: this.connectTimeoutMillis,
      statement_timeout: this.connectTimeoutMillis,
      keepAlive: true,
    });
    c.on('error', () => {}); // a dropped connection surfaces on the next query
    await c.connect();
    // Our connection must not keep the process alive (like a daemon thread).
    const stream = c.connection && c.connection.stream;
    if (stream && typeof stream.unref === 'function') stream.unref();
    return c;
  }

  async _beat() {
    let first = false;
    if (!this._client) {
      this._client = await this._connect();
      first = true;
      const probe = await this._client.query('SELECT pg_catalog.to_regprocedure($1) IS NOT NULL AS f',
        [`${quoteIdent(this.schema)}.${HEARTBEAT_SIGNATURE}`]);
      this._withDirective = Boolean(probe.rows[0] && probe.rows[0].f);
    }
    const s = this._state;
    const version = this._version;
    let meta = null;
    if (first) meta = { client: CLIENT_NAME, host: os.hostname(), pid: process.pid, ...this.metadata };
    if (first || version !== this._sentVersion) meta = { ...(meta || {}), run_id: s.runText };
    // heartbeat() (1.3) returns the directive; upsert_worker_heartbeat() (older) returns nothing.
    // The same arguments, passed by position.
    const fn = this._withDirective ? 'heartbeat' : 'upsert_worker_heartbeat';
    const r = await this._client.query(
      `SELECT ${quoteIdent(this.schema)}.${fn}($1, $2, $3, $4::uuid, $5, NULL::timestamptz, $6::jsonb, $7) AS d`,
      [this.workerId, this.workerType, s.status, s.runId, s.task, meta && JSON.stringify(meta), this.sessionBound]);
    this._sentVersion = version;
    this.beats += 1;
    this._setDirective(this._withDirective && r.rows[0] ? r.rows[0].d : null);
    this.logger.debug(`Heartbeat sent for worker ${this.workerId} (status=${s.status})`);
  }

  _setDirective(d) {
    const directive = d || DIRECTIVES.RUN;
    if (directive === this.directive) return;
    const previous = this.directive;
    this.directive = directive;
    this.logger.info(`worker ${this.workerId}: directive ${directive} (was ${previous})`);
    if (this._onDirective) {
      try {
        this._onDirective(directive, previous);
      } catch (e) {
        this.logger.warn(`onDirective threw: ${oneLine(e)}`);
      }
    }
  }

  async _loop() {
    let attempt = 0;
    while (!this._halt) {
      this._wakePending = false;
      let delay;
      try {
        await this._beat();
        if (attempt) this.logger.info(`heartbeat connection restored for worker ${this.workerId}`);
        attempt = 0;
        this.connected = true;
        delay = this.intervalSeconds * 1000;
      } catch (e) {
        this.connected = false;
        this.failures += 1;
        if (this._client) this._client.end().catch(() => {});
        this._client = null;
        const b = this.backoff;
        delay = Math.min(b.maxMs, b.initialMs * 2 ** Math.min(attempt, 30)) * (1 - b.jitter * Math.random());
        attempt += 1;
        this.logger.warn(`heartbeat failed for worker ${this.workerId} (${oneLine(e)}); retrying in ${Math.round(delay)} ms`);
      }
      if (this._halt) break;
      await this._sleep(delay);
    }
  }
}

function toToken(token) {
  if (token !== null && typeof token === 'object' && 'token' in token) token = token.token;
  if (typeof token === 'bigint') return token;
  if (typeof token === 'string' && /^-?\d+$/.test(token)) return BigInt(token);
  if (typeof token === 'number' && Number.isSafeInteger(token)) return BigInt(token);
  throw new TypeError(`a lease token is a BigInt or a string of digits (a Number loses 63-bit tokens), not ${typeof token} ${String(token)}`);
}

function jsonArg(v, what) {
  if (v === undefined || v === null) return null;
  if (typeof v === 'string') return v;
  if (typeof v !== 'object' || Array.isArray(v)) throw new TypeError(`${what} must be a plain object (a JSON object)`);
  return JSON.stringify(v, (k, x) => (typeof x === 'bigint' ? x.toString() : x));
}

function intervalArg(seconds) {
  const v = Number(seconds);
  if (!(v > 0) || !Number.isFinite(v)) throw new RangeError(`leaseSeconds must be positive, not ${seconds}`);
  return `${v} seconds`;
}

// The fenced-lease functions on one registered table, through a pg Client or
// Pool the caller owns: new LeaseTable(db, 'tasks', { schema }).
class LeaseTable {
  constructor(db, table, options = {}) {
    if (!db || typeof db.query !== 'function') throw new TypeError('LeaseTable needs a pg Client or Pool');
    this.db = db;
    this.name = String(table);
    this.schema = resolveSchema(options.schema);
    this._resolved = null;
  }

  // Resolves the table (regclass output, token column, NOTIFY channel); the
  // other methods call it on first use.
  resolve() {
    if (!this._resolved) {
      const s = quoteIdent(this.schema);
      this._resolved = this.db.query(
        `SELECT $1::regclass::text AS name,
           (SELECT token_column::text FROM ${s}.lease_tables WHERE table_name = $1::regclass) AS token,
           (SELECT pg_catalog.to_jsonb(l) FROM ${s}.lease_tables AS l WHERE l.table_name = $1::regclass) AS reg,
           (SELECT n.nspname || '.' || c.relname FROM pg_catalog.pg_class c
              JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1::regclass) AS channel`,
        [this.name]).then((r) => {
        const row = r.rows[0];
        if (!row.token) {
          throw new WorkerHeartbeatError(`table ${row.name} is not registered with a token column: call ` +
            `${this.schema}.register_lease_table(..., p_token_column => ...) first`);
        }
        this.table = row.name;
        this.tokenColumn = row.token;
        // to_jsonb: checkpoint_column (1.3) may not exist on an older extension.
        this.attemptsColumn = (row.reg && row.reg.attempts_column) || null;
        this.checkpointColumn = (row.reg && row.reg.checkpoint_column) || null;
        this.channel = `worker_heartbeat:${row.channel}`;
        return this;
      }, (e) => {
        this._resolved = null;
        throw e;
      });
    }
    return this._resolved;
  }

  // claim_leases: up to `limit` free rows, oldest first, each with a new token.
  // Resolves to [{ token: BigInt, row }].
  async claim(workerId, { limit = 1, leaseSeconds = 300, filter = null, set = null } = {}) {
    await this.resolve();
    const r = await this.db.query(
      `SELECT * FROM ${quoteIdent(this.schema)}.claim_leases(NULL::${this.table}, $1, $2::integer, $3::interval, $4::jsonb, $5::jsonb)`,
      [String(workerId), limit, intervalArg(leaseSeconds), jsonArg(filter, 'filter'), jsonArg(set, 'set')]);
    return r.rows.map((row) => {
      const attempts = this.attemptsColumn ? row[this.attemptsColumn] : null;
      return {
        token: BigInt(row[this.tokenColumn]),
        row,
        // the last checkpoint (1.3): a previous holder's progress to resume from
        checkpoint: this.checkpointColumn && row[this.checkpointColumn] !== undefined ? row[this.checkpointColumn] : null,
        // the attempts column after this claim (1 on a first claim)
        attempts: attempts === null || attempts === undefined ? null : Number(attempts),
      };
    });
  }

  // extend_lease: the new deadline (a Date).
  async extend(token, { leaseSeconds = 300 } = {}) {
    return this._one('extend_lease', token, ', $3::interval', [intervalArg(leaseSeconds)]);
  }

  // complete_lease: ends the lease and applies `set`.
  async complete(token, set = null) {
    await this._one('complete_lease', token, ', $3::jsonb', [jsonArg(set, 'set')]);
  }

  // fail_lease: false when that was the row's last attempt.
  async fail(token, set = null) {
    return Boolean(await this._one('fail_lease', token, ', $3::jsonb', [jsonArg(set, 'set')]));
  }

  // check_lease: true while the lease holds its row.
  async check(token) {
    return Boolean(await this._one('check_lease', token, '', []));
  }

  // checkpoint_lease (1.3): stores `data` (any JSON value) as the row's
  // checkpoint, and extends the lease when leaseSeconds is given. Resolves to
  // the lease's deadline; StaleLeaseError (nothing stored) when not ours any more.
  async checkpoint(token, data, { leaseSeconds = null } = {}) {
    const json = data === undefined || data === null ? null
      : JSON.stringify(data, (k, x) => (typeof x === 'bigint' ? x.toString() : x));
    return this._one('checkpoint_lease', token, ', $3::jsonb, $4::interval',
      [json, leaseSeconds === null || leaseSeconds === undefined ? null : intervalArg(leaseSeconds)]);
  }

  async _one(fn, token, extra, args) {
    await this.resolve();
    const t = toToken(token);
    try {
      const r = await this.db.query(
        `SELECT ${quoteIdent(this.schema)}.${fn}($1::regclass, $2::bigint${extra}) AS v`,
        [this.table, t.toString(), ...args]);
      return r.rows[0] ? r.rows[0].v : null;
    } catch (e) {
      if (e && e.code === 'WH001') throw new StaleLeaseError(oneLine(e), t, e);
      if (e && e.code === '42883' && fn === 'checkpoint_lease') {
        throw new WorkerHeartbeatError('checkpoint_lease() does not exist: checkpoints need the extension at ' +
          'version 1.3 (ALTER EXTENSION worker_heartbeat UPDATE)', { cause: e });
      }
      throw e;
    }
  }
}

async function withClient(db, fn) {
  if (db && typeof db.query === 'function') return fn(db);
  const c = new pg.Client({ connectionString: resolveConnectionString(typeof db === 'string' ? db : undefined) });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end().catch(() => {});
  }
}

// The original design's helpers. `db`: a pg Client / Pool, a connection
// string, or nothing (DATABASE_URL / POSTGRES_URL / PG*).
async function cleanupDeadWorkers(db, { schema } = {}) {
  return withClient(db, async (c) => (await c.query(
    `SELECT ${quoteIdent(resolveSchema(schema))}.release_dead_worker_leases() AS n`)).rows[0].n);
}

async function getWorkerHealthSummary(db, { schema } = {}) {
  return withClient(db, async (c) => (await c.query(
    `SELECT ${quoteIdent(resolveSchema(schema))}.get_worker_health_summary() AS s`)).rows[0].s);
}

module.exports = {
  DIRECTIVES,
  WorkerHeartbeat,
  LeaseTable,
  StaleLeaseError,
  WorkerHeartbeatError,
  cleanupDeadWorkers,
  getWorkerHealthSummary,
  defaultWorkerId,
};
