'use strict';
// A real PostgreSQL cluster for the tests, started with initdb / pg_ctl from
// $PG_CONFIG (else `pg_config` on PATH), listening on a Unix socket in its own
// temporary directory, with worker_heartbeat preloaded. Run as an
// unprivileged user (initdb refuses root).
const { execFile, execFileSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');
const pg = require('pg');

class Cluster {
  constructor() {
    const pgConfig = process.env.PG_CONFIG || 'pg_config';
    this.bindir = execFileSync(pgConfig, ['--bindir'], { encoding: 'utf8' }).trim();
    this.base = fs.mkdtempSync(path.join(process.env.WH_TEST_TMPDIR || os.tmpdir(), 'wh_nodetest_'));
    this.data = path.join(this.base, 'data');
    this.host = this.base;
    this.port = 5432;
    this.user = process.env.USER || os.userInfo().username;
    this.log = path.join(this.base, 'postgresql.log');
    execFileSync(path.join(this.bindir, 'initdb'), ['-D', this.data, '-A', 'trust', '-U', this.user, '--no-sync', '-E', 'UTF8'],
      { stdio: 'pipe' });
    fs.appendFileSync(path.join(this.data, 'postgresql.conf'),
      `listen_addresses = ''\nunix_socket_directories = '${this.host}'\nport = ${this.port}\n` +
      "shared_preload_libraries = 'worker_heartbeat'\nfsync = off\n" +
      "worker_heartbeat.reap_interval = '100ms'\nworker_heartbeat.launcher_interval = '1s'\n");
    this.pgCtl('start');
  }

  pgCtl(...args) {
    execFileSync(path.join(this.bindir, 'pg_ctl'), ['-D', this.data, '-l', this.log, '-w', '-t', '120', ...args], { stdio: 'pipe' });
  }

  // Asynchronous: the event loop (and the heartbeat under test) runs meanwhile.
  restart() {
    return new Promise((resolve, reject) => execFile(path.join(this.bindir, 'pg_ctl'),
      ['-D', this.data, '-l', this.log, '-w', '-t', '120', 'restart', '-m', 'fast'], (e) => (e ? reject(e) : resolve())));
  }

  env() {
    return { PGHOST: this.host, PGPORT: String(this.port), PGDATABASE: 'postgres', PGUSER: this.user };
  }

  config(db = 'postgres') {
    return { host: this.host, port: this.port, database: db, user: this.user };
  }

  async client(db) {
    const c = new pg.Client(this.config(db));
    c.on('error', () => {});
    await c.connect();
    return c;
  }

  connectionString(db = 'postgres') {
    return `postgresql://${encodeURIComponent(this.user)}@/${db}?host=${encodeURIComponent(this.host)}&port=${this.port}`;
  }

  async val(sql, args = [], db = undefined) {
    const c = await this.client(db);
    try {
      const r = await c.query({ text: sql, values: args, rowMode: 'array' });
      return r.rows.length ? r.rows[0][0] : null;
    } finally {
      await c.end();
    }
  }

  // Polls until `sql` returns true; rejects after `timeoutMs`.
  async poll(sql, args = [], timeoutMs = 60000) {
    const t0 = Date.now();
    while (Date.now() - t0 < timeoutMs) {
      try {
        if (await this.val(sql, args)) return Date.now() - t0;
      } catch (e) { /* the server may be restarting */ }
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error(`timed out waiting for: ${sql} ${JSON.stringify(args)}`);
  }

  async setup() {
    await this.val('CREATE SCHEMA pm_pipeline');
    await this.val('CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline');
    return this;
  }

  // A fresh registered lease table (token column, attempts, max 5); with
  // { checkpoint: true }, the jsonb column progress is its checkpoint column (1.3).
  async makeQueue({ checkpoint = false, db = undefined } = {}) {
    const name = 'q_' + Math.random().toString(16).slice(2, 12);
    const c = await this.client(db);
    try {
      await c.query(`CREATE TABLE public.${name} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        run_id uuid NOT NULL DEFAULT gen_random_uuid(), payload text NOT NULL, state text NOT NULL DEFAULT 'pending',
        claimed_by text, lease_expires_at timestamptz, lease_token bigint, attempts integer NOT NULL DEFAULT 0, done_by text,
        progress jsonb)`);
      for (const col of ['claimed_by', 'lease_expires_at', 'lease_token']) await c.query(`CREATE INDEX ON public.${name} (${col})`);
      await c.query(`SELECT pm_pipeline.register_lease_table($1, 'claimed_by', 'lease_expires_at', '{"state": "pending"}',
        p_token_column => 'lease_token', p_attempts_column => 'attempts', p_max_attempts => 5,
        p_on_exhausted => '{"state": "failed"}')`, [`public.${name}`]);
      if (checkpoint) await c.query("SELECT pm_pipeline.set_lease_checkpoint_column($1, 'progress')", [`public.${name}`]);
    } finally {
      await c.end();
    }
    return name;
  }

  close() {
    try { this.pgCtl('stop', '-m', 'immediate'); } catch (e) { /* already down */ }
    if (process.env.WH_KEEP_TMP !== '1') fs.rmSync(this.base, { recursive: true, force: true });
  }
}

async function startCluster() {
  if (process.getuid && process.getuid() === 0) throw new Error('initdb refuses to run as root: run the tests as an unprivileged user');
  return new Cluster().setup();
}

// Registers node:test hooks for a test file: a cluster started before its
// tests (passed to onReady) with the process environment pointing at it (PG*,
// nothing else), stopped after them.
function useCluster(onReady) {
  const { before, after } = require('node:test');
  let pg = null;
  before(async () => {
    pg = await startCluster();
    for (const k of ['DATABASE_URL', 'POSTGRES_URL', 'WORKER_HEARTBEAT_SCHEMA', 'WORKER_HEARTBEAT_INTERVAL']) delete process.env[k];
    Object.assign(process.env, pg.env());
    onReady(pg);
  });
  after(() => pg && pg.close());
}

module.exports = { startCluster, useCluster };
