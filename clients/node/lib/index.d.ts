// Types of worker-heartbeat (hand-written; the same file serves require and import).
// No import of 'pg' types: users need not install @types/pg.

/** A pg Client, Pool or PoolClient (anything with node-postgres's query()). */
export interface Queryable {
  query(text: string, values?: unknown[]): Promise<{ rows: any[]; rowCount: number | null }>;
}
/** Extra node-postgres client settings (pg.ClientConfig). */
export type ClientConfig = { [key: string]: unknown };
export type JsonObject = { [key: string]: unknown };
/** A lease token: an opaque 63-bit integer. Never a Number (it would lose precision). */
export type LeaseToken = bigint;
/** What the 1.3 heartbeat tells the worker: keep working, drain (finish and stop), or pause. */
export type Directive = 'run' | 'drain' | 'pause';
export const DIRECTIVES: { readonly RUN: 'run'; readonly DRAIN: 'drain'; readonly PAUSE: 'pause' };

export interface Logger {
  debug(message: string): void;
  info(message: string): void;
  warn(message: string): void;
}

export interface BackoffOptions {
  /** First reconnect delay (default 250 ms), doubling up to maxMs. */
  initialMs?: number;
  /** Longest reconnect delay (default 30000 ms). */
  maxMs?: number;
  /** Each delay is multiplied by a random factor in [1 - jitter, 1] (default 0.5). */
  jitter?: number;
}

export interface WorkerHeartbeatOptions {
  /** Default: $<WORKER_TYPE>_WORKER_ID, else <worker-type>-<host>-<pid>. */
  workerId?: string;
  /** e.g. 'company_research' (required). */
  workerType: string;
  /** Default: $WORKER_HEARTBEAT_INTERVAL, else 30. */
  intervalSeconds?: number;
  /** Default: $DATABASE_URL, else $POSTGRES_URL, else the PG* variables. */
  connectionString?: string;
  /** The extension's schema. Default: $WORKER_HEARTBEAT_SCHEMA, else 'pm_pipeline'. */
  schema?: string;
  /** The worker dies with the heartbeat's session: a killed process has its leases back at once. */
  sessionBound?: boolean;
  /** Merged into the row's metadata (with client, host, pid) on each (re)connect. */
  metadata?: JsonObject;
  /**
   * SIGTERM / SIGINT: 'exit' (default) stops (stop_worker, leases released at once), then the
   * process dies of the signal unless another listener handles it; 'flag' only sets
   * stopRequested; 'ignore' installs no listener.
   */
  onSignal?: 'exit' | 'flag' | 'ignore';
  /** Connect and statement timeout of the heartbeat connection (default 10000 ms). */
  connectTimeoutMillis?: number;
  backoff?: BackoffOptions;
  /** Default: warnings on stderr, nothing else. */
  logger?: Partial<Logger>;
  /** Extra node-postgres client settings (ssl, password, ...). */
  clientConfig?: ClientConfig;
  /** Called from the heartbeat when a beat returns a new directive (1.3). */
  onDirective?: (directive: Directive, previous: Directive) => void;
}

export interface TaskUpdate {
  /** A UUID; any other text is kept in the row's metadata as run_id. */
  runId?: string | null;
  task?: string | null;
  /** Default 'processing'. */
  status?: string;
}

export class WorkerHeartbeat {
  constructor(options: WorkerHeartbeatOptions);
  readonly workerId: string;
  readonly workerType: string;
  readonly intervalSeconds: number;
  readonly schema: string;
  readonly sessionBound: boolean;
  /** Set by stop() and by SIGTERM / SIGINT. */
  readonly stopRequested: boolean;
  /** Between start() and stop(). */
  readonly running: boolean;
  /** True when the last beat went through. */
  readonly connected: boolean;
  readonly beats: number;
  readonly failures: number;
  /** The directive of the last beat (extension 1.3's heartbeat()); always 'run' on an older extension. */
  readonly directive: Directive;
  /** directive === 'drain': claim no more, finish what it holds, then stop(). */
  readonly draining: boolean;
  /** directive === 'pause': claim nothing until resumed; keep beating. */
  readonly paused: boolean;
  /** directive 'run' and no stop requested: the worker may claim. */
  readonly acceptingWork: boolean;
  /** Beats at once, then every intervalSeconds; installs the signal and beforeExit handling. */
  start(): this;
  /** Records the current task and beats at once. */
  updateTask(runId?: string | null, task?: string | null, status?: string): void;
  updateTask(update: TaskUpdate): void;
  /** Status 'idle', no task. */
  markIdle(): void;
  /** Ends the beats and calls stop_worker (leases released at once). Idempotent; never rejects. */
  stop(): Promise<void>;
}

export interface Lease<Row = Record<string, unknown>> {
  token: LeaseToken;
  /** Every column of the claimed row (bigint columns as strings, as node-postgres returns them). */
  row: Row;
  /** The row's last checkpoint (1.3; null: none, or no checkpoint column): a previous holder's progress. */
  checkpoint: unknown;
  /** The attempts column after this claim (1 on a first claim); null without an attempts column. */
  attempts: number | null;
}

export interface ClaimOptions {
  limit?: number;
  leaseSeconds?: number;
  /** Claim only rows with these column values. */
  filter?: JsonObject | null;
  /** Set these columns on the claimed rows. */
  set?: JsonObject | null;
}

export type TokenLike = LeaseToken | string | Lease;

export class LeaseTable<Row = Record<string, unknown>> {
  constructor(db: Queryable, table: string, options?: { schema?: string });
  /** Resolved table name (regclass output), after resolve() or the first call. */
  readonly table: string;
  readonly tokenColumn: string;
  readonly attemptsColumn: string | null;
  /** The registered checkpoint column (1.3), else null. */
  readonly checkpointColumn: string | null;
  /** LISTEN on it to wake when the reaper puts leases back. */
  readonly channel: string;
  resolve(): Promise<this>;
  claim(workerId: string, options?: ClaimOptions): Promise<Array<Lease<Row>>>;
  /** Rejects with StaleLeaseError when the token is stale. Resolves to the new deadline. */
  extend(token: TokenLike, options?: { leaseSeconds?: number }): Promise<Date>;
  complete(token: TokenLike, set?: JsonObject | null): Promise<void>;
  /** false when that was the row's last attempt. */
  fail(token: TokenLike, set?: JsonObject | null): Promise<boolean>;
  check(token: TokenLike): Promise<boolean>;
  /**
   * checkpoint_lease (1.3): stores `data` (any JSON value) as the row's checkpoint; with
   * leaseSeconds, extends the lease too. Resolves to the lease's deadline; rejects with
   * StaleLeaseError (nothing stored) when the token is stale.
   */
  checkpoint(token: TokenLike, data: unknown, options?: { leaseSeconds?: number | null }): Promise<Date>;
}

export class WorkerHeartbeatError extends Error {}

/** SQLSTATE WH001: the lease token is stale; nothing was changed. */
export class StaleLeaseError extends WorkerHeartbeatError {
  readonly code: 'WH001';
  readonly token: LeaseToken;
}

export function cleanupDeadWorkers(db?: Queryable | string, options?: { schema?: string }): Promise<number>;
export function getWorkerHealthSummary(db?: Queryable | string, options?: { schema?: string }): Promise<{
  total_active_workers: number;
  total_dead_workers: number;
  dead_workers: JsonObject[];
  stats_by_type: JsonObject[];
}>;
export function defaultWorkerId(workerType: string): string;
