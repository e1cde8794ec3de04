'use strict';
// Done when: `npm pack`, `npm install <tarball>` in a fresh project, and the
// Node equivalent of the original design's snippet runs unchanged (require
// and import), against a database with the extension.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');
const { startCluster } = require('./cluster');

const PKG = path.resolve(__dirname, '..');
let pg;
let dir;

before(async () => {
  pg = await startCluster();
  dir = fs.mkdtempSync(path.join(process.env.WH_TEST_TMPDIR || os.tmpdir(), 'wh_npmpack_'));
});
after(() => {
  if (pg) pg.close();
  if (dir && process.env.WH_KEEP_TMP !== '1') fs.rmSync(dir, { recursive: true, force: true });
});

// The original design's snippet, in Node.
const SNIPPET = `
const heartbeat = new WorkerHeartbeat({
  workerId: WORKER_ID,
  workerType: 'company_research',
  intervalSeconds: 30,
});
heartbeat.start();

// Update task info
heartbeat.updateTask({
  runId: 'abc123',
  task: 'Researching company example.com',
  status: 'processing',
});

// Mark as idle
heartbeat.markIdle();

// Stop on shutdown
await heartbeat.stop();
`;

function npm(args, cwd) {
  const env = { ...process.env, npm_config_update_notifier: 'false', npm_config_fund: 'false', npm_config_audit: 'false' };
  return execFileSync('npm', args, { cwd, env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 300000 });
}

test('npm pack, npm install <tarball>, then the snippet runs (CJS and ESM)', async () => {
  const packDir = path.join(dir, 'pack');
  fs.mkdirSync(packDir);
  // npm 9-11 print an array of packages; npm 12 an object keyed by package name.
  const json = JSON.parse(npm(['pack', '--json', '--pack-destination', packDir, PKG], packDir));
  const packed = Array.isArray(json) ? json : Object.values(json);
  const files = packed[0].files.map((f) => f.path).sort();
  assert.deepEqual(files, ['README.md', 'lib/index.cjs', 'lib/index.d.mts', 'lib/index.d.ts', 'lib/index.mjs', 'package.json']);
  const tarball = path.join(packDir, packed[0].filename);

  const app = path.join(dir, 'app');
  fs.mkdirSync(app);
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }));
  npm(['install', '--prefer-offline', '--no-audit', '--no-fund', tarball], app);
  assert.ok(fs.existsSync(path.join(app, 'node_modules/worker-heartbeat/lib/index.cjs')));

  fs.writeFileSync(path.join(app, 'seed.mjs'),
    "import { WorkerHeartbeat, LeaseTable, StaleLeaseError } from 'worker-heartbeat';\n" +
    "const WORKER_ID = 'company-research-12345';\n" + SNIPPET +
    "console.log(typeof LeaseTable, typeof StaleLeaseError);\n");
  fs.writeFileSync(path.join(app, 'seed.cjs'),
    "const { WorkerHeartbeat } = require('worker-heartbeat');\n" +
    "const WORKER_ID = 'company-research-cjs';\n(async () => {\n" + SNIPPET + '})();\n');
  const env = { ...process.env, ...pg.env() };
  delete env.DATABASE_URL;
  delete env.POSTGRES_URL;
  const out = execFileSync(process.execPath, ['seed.mjs'], { cwd: app, env, encoding: 'utf8', timeout: 60000 });
  assert.equal(out.trim(), 'function function');
  execFileSync(process.execPath, ['seed.cjs'], { cwd: app, env, encoding: 'utf8', timeout: 60000 });
  for (const id of ['company-research-12345', 'company-research-cjs']) {
    assert.equal(await pg.val('SELECT worker_type || \'/\' || status FROM pm_pipeline.worker_heartbeats WHERE worker_id = $1', [id]),
      'company_research/stopped');
    assert.equal(await pg.val("SELECT count(*)::int FROM pm_pipeline.worker_events WHERE worker_id = $1 AND event = 'stopped'", [id]), 1);
  }
});

test('npm install --install-links <directory> installs a copy with pg beside it', () => {
  const app = path.join(dir, 'app-dir');
  fs.mkdirSync(app);
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app-dir', version: '1.0.0', private: true }));
  npm(['install', '--install-links', '--prefer-offline', '--no-audit', '--no-fund', PKG], app);
  assert.ok(!fs.lstatSync(path.join(app, 'node_modules/worker-heartbeat')).isSymbolicLink());
  const out = execFileSync(process.execPath, ['-e', "const m = require('worker-heartbeat'); console.log(typeof m.WorkerHeartbeat, typeof require('pg').Client)"],
    { cwd: app, encoding: 'utf8' });
  assert.equal(out.trim(), 'function function');
});
