#!/usr/bin/env node
// Example queue worker for the worker_heartbeat extension, in Node.js.
//
// A thin user of the worker-heartbeat package (clients/node): a WorkerHeartbeat
// beside the work, claim a task with LeaseTable, update the heartbeat's task,
// work (extending the lease on long tasks), complete, mark idle; on SIGTERM /
// SIGINT finish the current task, then stop (stop_worker). It works on the
// queue table of examples/sql/queue.sql.
//
// Fleet control (extension 1.3): drained (drain_workers()), the worker claims
// nothing more, finishes the task it holds and stops (stop_worker); paused
// (pause_workers()), it claims nothing until resumed. When the table has a
// checkpoint column (set_lease_checkpoint_column), the work (--steps steps)
// checkpoints after each step, and a task claimed with a checkpoint (its
// previous worker died) resumes from there.
//
//   cd examples/node && npm ci && DATABASE_URL=postgresql:///mydb node worker.js --session-bound
//
// The same options as examples/python/worker.py and the C++ worker_heartbeat_queue_worker.
'use strict';

// Loaded after the options are parsed, so that --help works before `npm ci`.
let Client, WorkerHeartbeat, LeaseTable, StaleLeaseError;

const USAGE = `usage: node worker.js [options]

Example queue worker for the worker_heartbeat extension, in Node.js.

options:
  -h, --help            show this help message and exit
  --db DSN              connection string or URI (default: $DATABASE_URL, else the PG* variables)
  --schema SCHEMA       the extension's schema (default: pm_pipeline)
  --table TABLE         the registered queue table (default: tasks)
  --type TYPE           worker type (default: company_research)
  --id ID               worker id (default: $<TYPE>_WORKER_ID, else <type>-<host>-<pid>)
  --mode auto|fenced|plain
                        fenced leases (claim_leases, tokens) or plain UPDATEs;
                        auto: fenced when installed
  --work-ms N           milliseconds of simulated work per task (default: 200)
  --lease-ms N          lease length; extended every half lease while working (default: 300000)
  --idle-ms N           pause when the queue is empty (default: 500)
  --steps N             with a checkpoint column: the work's steps, checkpointed one by one (default: 10)
  --max-tasks N         exit after N tasks (default: no limit)
  --exit-when-empty     exit when the queue is empty
  --session-bound       the worker dies with its heartbeat session: kill -9 gives its leases back at once
  --no-session-bound    die by silence after dead_after (the default here)
  --no-extend           never extend the lease
  --on-signal flag|exit SIGTERM/SIGINT: finish the current task, then stop (flag, default), or stop at once (exit)

Environment: DATABASE_URL (else the PG* variables), WORKER_HEARTBEAT_INTERVAL (seconds,
default 30), <TYPE>_WORKER_ID (e.g. COMPANY_RESEARCH_WORKER_ID). The older name
--lease-seconds is still accepted.
`;

class UsageError extends Error {}

function log(...args) {
  console.log(new Date().toISOString(), ...args);
}

function parseArgs(argv) {
  const a = {
    db: process.env.DATABASE_URL || '', table: 'tasks', schema: 'pm_pipeline', type: 'company_research', id: null,
    mode: 'auto', workMs: Number(process.env.WORK_MS || 200), leaseMs: 300000, idleMs: 500, maxTasks: 0, steps: 10,
    sessionBound: false, exitWhenEmpty: false, extend: true, onSignal: 'flag',
  };
  const num = (k, v) => {
    const n = Number(v);
    if (v === '' || !Number.isFinite(n) || n < 0) throw new UsageError(`${k}: bad number '${v}'`);
    return n;
  };
  for (let i = 2; i < argv.length; i++) {
    const k = argv[i];
    const v = () => {
      if (i + 1 >= argv.length) throw new UsageError(`${k} needs a value`);
      return argv[++i];
    };
    switch (k) {
      case '-h': case '--help': process.stdout.write(USAGE); process.exit(0); break;
      case '--db': a.db = v(); break;
      case '--table': a.table = v(); break;
      case '--schema': a.schema = v(); break;
      case '--type': a.type = v(); break;
      case '--id': a.id = v(); break;
      case '--mode': a.mode = v(); break;
      case '--work-ms': a.workMs = num(k, v()); break;
      case '--lease-ms': a.leaseMs = num(k, v()); break;
      case '--lease-seconds': a.leaseMs = num(k, v()) * 1000; break; // the older name
      case '--idle-ms': a.idleMs = num(k, v()); break;
      case '--max-tasks': a.maxTasks = num(k, v()); break;
      case '--steps': a.steps = Math.max(1, Math.floor(num(k, v()))); break;
      case '--session-bound': a.sessionBound = true; break;
      case '--no-session-bound': a.sessionBound = false; break;
      case '--exit-when-empty': a.exitWhenEmpty = true; break;
      case '--no-extend': a.extend = false; break;
      case '--on-signal': a.onSignal = v(); break;
      default: throw new UsageError(`unknown option '${k}'`);
    }
  }
  if (!['auto', 'fenced', 'plain'].includes(a.mode)) throw new UsageError(`--mode must be auto, fenced or plain, not '${a.mode}'`);
  if (!['flag', 'exit'].includes(a.onSignal)) throw new UsageError(`--on-signal must be flag or exit, not '${a.onSignal}'`);
  if (a.leaseMs < 1000) throw new UsageError('--lease-ms must be at least 1000');
  return a;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// --mode plain: claims with UPDATE ... FOR UPDATE SKIP LOCKED, for an extension
// without the fenced-lease functions (1.0).
class PlainQueue {
  constructor(db, table) {
    this.db = db;
    this.name = table;
    this.checkpoints = false;
  }

  async init() {
    this.table = (await this.db.query('SELECT $1::regclass::text AS t', [this.name])).rows[0].t; // quoted as needed
    return this;
  }

  async claim(workerId, leaseMs) {
    const r = await this.db.query(
      `UPDATE ${this.table} SET claimed_by = $1, lease_expires_at = now() + $2 * interval '1 millisecond',
         state = 'claimed', attempts = attempts + 1
       WHERE id = (SELECT id FROM ${this.table} WHERE state = 'pending' AND claimed_by IS NULL
                   ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
       RETURNING id, run_id, payload`, [workerId, leaseMs]);
    return r.rows[0] ? { token: null, row: r.rows[0] } : null;
  }

  async mine(sql, args, task) {
    if ((await this.db.query(sql, args)).rowCount === 0) throw new StaleLeaseError(`task ${task.row.id} is no longer ours`, null);
  }

  extend(task, workerId, leaseMs) {
    return this.mine(`UPDATE ${this.table} SET lease_expires_at = now() + $3 * interval '1 millisecond'
                      WHERE id = $1 AND claimed_by = $2`, [task.row.id, workerId, leaseMs], task);
  }

  complete(task, workerId) {
    return this.mine(`UPDATE ${this.table} SET state = 'done', claimed_by = NULL, lease_expires_at = NULL,
                        done_by = $2, done_at = now() WHERE id = $1 AND claimed_by = $2`, [task.row.id, workerId], task);
  }
}

// The extension's fenced leases, through the package's LeaseTable.
class FencedQueue {
  constructor(db, table, schema) {
    this.leases = new LeaseTable(db, table, { schema });
  }

  async init() {
    await this.leases.resolve();
    this.checkpoints = this.leases.checkpointColumn !== null;
    return this;
  }

  async claim(workerId, leaseMs) {
    const [lease] = await this.leases.claim(workerId, { leaseSeconds: leaseMs / 1000, filter: { state: 'pending' }, set: { state: 'claimed' } });
    return lease || null;
  }

  extend(task, workerId, leaseMs) {
    return this.leases.extend(task.token, { leaseSeconds: leaseMs / 1000 });
  }

  // Stores the progress with the lease (and extends it).
  checkpoint(task, progress, leaseMs) {
    return this.leases.checkpoint(task.token, progress, { leaseSeconds: leaseMs / 1000 });
  }

  complete(task, workerId) {
    return this.leases.complete(task.token, { state: 'done', done_by: workerId, done_at: 'now' });
  }
}

// The step a task resumes from: its checkpoint's, else 0.
function startStep(task, steps) {
  const cp = task.checkpoint;
  return cp && Number.isInteger(cp.step) && cp.step >= 0 && cp.step <= steps ? cp.step : 0;
}

// Stands for the real work: takes --work-ms, extending the lease every half
// lease so that a long task keeps its row. With checkpoints, the work is
// --steps steps; after each one the progress is checkpointed (which extends
// the lease too), and a resumed task skips the steps already done.
async function work(queue, task, args, workerId) {
  if (queue.checkpoints) {
    const first = startStep(task, args.steps);
    if (first) log(`resuming task ${task.row.id} from step ${first}/${args.steps} (checkpoint of attempt ${(task.attempts || 1) - 1})`);
    for (let step = first; step < args.steps; step++) {
      await sleep(args.workMs / args.steps); // the real work of this step
      await queue.checkpoint(task, { step: step + 1, of: args.steps, by: workerId }, args.leaseMs);
    }
    return;
  }
  const end = Date.now() + args.workMs;
  for (;;) {
    const left = end - Date.now();
    if (left <= 0) return;
    await sleep(Math.min(left, args.leaseMs / 2));
    if (args.extend && end - Date.now() > 0) await queue.extend(task, workerId, args.leaseMs);
  }
}

async function main(args) {
  const heartbeat = new WorkerHeartbeat({
    workerId: args.id || undefined, workerType: args.type, connectionString: args.db || undefined, schema: args.schema,
    sessionBound: args.sessionBound, onSignal: args.onSignal, logger: { info: log, warn: log },
  });
  const { workerId } = heartbeat;
  log(`Worker starting up worker_id=${workerId} pid=${process.pid}`);
  heartbeat.start();
  let db = null;
  let queue = null;
  let done = 0;
  try {
    while (!heartbeat.stopRequested) {
      // The heartbeat brings the operator's directive (1.3): draining, the
      // worker has finished what it held, so it stops; paused, it waits.
      if (heartbeat.draining) {
        log('draining: claiming no more; stopping');
        break;
      }
      if (heartbeat.paused) {
        heartbeat.markIdle();
        await sleep(args.idleMs);
        continue;
      }
      try {
        if (!db) {
          db = new Client({ connectionString: args.db || undefined, application_name: `worker ${workerId}`.slice(0, 63) });
          db.on('error', () => {}); // a dropped connection surfaces on the next query
          await db.connect();
          const fn = `${'"' + args.schema.replace(/"/g, '""') + '"'}.claim_leases(anyelement,text,integer,interval,jsonb,jsonb)`;
          const fenced = args.mode === 'fenced'
            || (args.mode === 'auto' && (await db.query('SELECT to_regprocedure($1) IS NOT NULL AS f', [fn])).rows[0].f);
          queue = await (fenced ? new FencedQueue(db, args.table, args.schema) : new PlainQueue(db, args.table)).init();
          log(`mode=${fenced ? 'fenced' : 'plain'}`);
        }
        const task = await queue.claim(workerId, args.leaseMs);
        if (!task) {
          heartbeat.markIdle(); // beats at once: a drain or pause shows at the loop's top
          if (args.exitWhenEmpty && heartbeat.acceptingWork) break;
          await sleep(args.idleMs);
          continue;
        }
        heartbeat.updateTask(task.row.run_id, `Researching: ${task.row.payload}`, 'processing');
        log(`claimed task ${task.row.id}${task.token !== null ? ` token ${task.token}` : ''}`);
        try {
          await work(queue, task, args, workerId); // the real work
          await queue.complete(task, workerId);
          done += 1;
          log(`completed task ${task.row.id}`);
        } catch (e) {
          if (!(e instanceof StaleLeaseError)) throw e;
          log(`lost the lease of task ${task.row.id}: ${e.message}`);
        } finally {
          heartbeat.markIdle();
        }
        if (args.maxTasks && done >= args.maxTasks) break;
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

let args;
try {
  args = parseArgs(process.argv);
} catch (e) {
  if (!(e instanceof UsageError)) throw e;
  console.error(`worker.js: ${e.message} (try --help)`);
  process.exit(2);
}
try {
  ({ Client } = require('pg'));
  ({ WorkerHeartbeat, LeaseTable, StaleLeaseError } = require('worker-heartbeat'));
} catch (e) {
  if (e.code !== 'MODULE_NOT_FOUND') throw e;
  console.error(`worker.js: ${e.message.split('\n')[0]}: run \`npm ci\` in ${__dirname} first`);
  process.exit(2);
}
main(args).then(() => process.exit(0), (e) => {
  console.error(`worker: ${e.stack || e}`);
  process.exit(1);
});
