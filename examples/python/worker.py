#!/usr/bin/python3
"""Example queue worker for the worker_heartbeat extension, in Python.

A thin user of the worker_heartbeat package (clients/python): a WorkerHeartbeat
beside the work, claim a task with LeaseTable, update the heartbeat's task,
work (extending the lease on long tasks), complete, mark idle; on SIGTERM /
SIGINT finish the current task, then stop (stop_worker). It works on the
queue table of examples/sql/queue.sql.

Fleet control (extension 1.3): when an operator drains the worker
(drain_workers()), it claims nothing more, finishes the task it holds and
stops (stop_worker); paused (pause_workers()), it claims nothing until
resumed. When the table has a checkpoint column (set_lease_checkpoint_column),
the work (in --steps steps) checkpoints after each step, and a task claimed
with a checkpoint (its previous worker died) resumes from there.

  DATABASE_URL=postgresql:///mydb /usr/bin/python3 examples/python/worker.py --session-bound

Run from a checkout it imports clients/python directly; elsewhere, install the
package first (pip install ./clients/python). Uses psycopg 3 (Debian's
python3-psycopg: run it with /usr/bin/python3). The same options as
examples/node/worker.js and the C++ worker_heartbeat_queue_worker.
"""
import argparse
import logging
import os
import sys
import time

# In a checkout, the package beside this file (clients/python) comes first, so
# that the example always runs the code it ships with; elsewhere, the installed one.
_CHECKOUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "clients", "python")
if os.path.isfile(os.path.join(_CHECKOUT, "worker_heartbeat", "__init__.py")):
    sys.path.insert(0, os.path.normpath(_CHECKOUT))

import psycopg
from psycopg import sql
from worker_heartbeat import LeaseTable, StaleLease, WorkerHeartbeat

log = logging.getLogger("worker")


class PlainQueue:
    """--mode plain: claims with UPDATE ... FOR UPDATE SKIP LOCKED, for an
    extension without the fenced-lease functions (1.0)."""

    checkpoints = False

    def __init__(self, conn, table):
        self.conn = conn
        self.table = conn.execute("SELECT %s::regclass::text", (table,)).fetchone()[0]  # quoted as needed

    def claim(self, worker_id, lease_seconds):
        row = self.conn.execute(
            sql.SQL("UPDATE {t} SET claimed_by = %s, lease_expires_at = now() + %s * interval '1 second', "
                    "state = 'claimed', attempts = attempts + 1 WHERE id = (SELECT id FROM {t} "
                    "WHERE state = 'pending' AND claimed_by IS NULL ORDER BY id LIMIT 1 "
                    "FOR UPDATE SKIP LOCKED) RETURNING id, run_id::text, payload").format(t=sql.SQL(self.table)),
            (worker_id, lease_seconds)).fetchone()
        return None if row is None else {"token": None, "row": {"id": row[0], "run_id": row[1], "payload": row[2]}}

    def _mine(self, query, args, task):
        if self.conn.execute(sql.SQL(query).format(t=sql.SQL(self.table)), args).rowcount == 0:
            raise StaleLease("task %s is no longer ours" % task["row"]["id"])

    def extend(self, task, worker_id, lease_seconds):
        self._mine("UPDATE {t} SET lease_expires_at = now() + %s * interval '1 second' "
                   "WHERE id = %s AND claimed_by = %s", (lease_seconds, task["row"]["id"], worker_id), task)

    def complete(self, task, worker_id):
        self._mine("UPDATE {t} SET state = 'done', claimed_by = NULL, lease_expires_at = NULL, done_by = %s, "
                   "done_at = now() WHERE id = %s AND claimed_by = %s", (worker_id, task["row"]["id"], worker_id), task)


class FencedQueue:
    """The extension's fenced leases, through the package's LeaseTable."""

    def __init__(self, conn, table, schema):
        self.leases = LeaseTable(conn, table, schema=schema)
        self.checkpoints = self.leases.checkpoint_column is not None

    def claim(self, worker_id, lease_seconds):
        got = self.leases.claim(worker_id, 1, lease_seconds, filter={"state": "pending"}, set={"state": "claimed"})
        if not got:
            return None
        return {"token": got[0].token, "row": got[0].row, "checkpoint": got[0].checkpoint,
                "attempts": got[0].attempts}

    def extend(self, task, worker_id, lease_seconds):
        self.leases.extend(task["token"], lease_seconds)

    def checkpoint(self, task, progress, lease_seconds):
        """Stores the progress with the lease (and extends it)."""
        self.leases.checkpoint(task["token"], progress, lease=lease_seconds)

    def complete(self, task, worker_id):
        self.leases.complete(task["token"], set={"state": "done", "done_by": worker_id, "done_at": "now"})


def start_step(task, steps):
    """The step a task resumes from: its checkpoint's, else 0."""
    cp = task.get("checkpoint")
    if isinstance(cp, dict) and isinstance(cp.get("step"), int) and 0 <= cp["step"] <= steps:
        return cp["step"]
    return 0


def work(queue, task, args, heartbeat, worker_id):
    """Stands for the real work: takes --work-ms, extending the lease every
    half lease so that a long task keeps its row. With checkpoints, the work
    is --steps steps; after each one the progress is checkpointed (which
    extends the lease too), and a resumed task skips the steps already done."""
    if queue.checkpoints:
        steps = max(1, args.steps)
        first = start_step(task, steps)
        if first:
            log.info("resuming task %s from step %d/%d (checkpoint of attempt %s)", task["row"]["id"], first, steps,
                     (task.get("attempts") or 1) - 1)
        per_step = args.work_ms / 1000 / steps
        for step in range(first, steps):
            time.sleep(per_step)  # the real work of this step
            queue.checkpoint(task, {"step": step + 1, "of": steps, "by": worker_id}, args.lease_ms / 1000)
        return
    end = time.monotonic() + args.work_ms / 1000
    step = args.lease_ms / 2000
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, step))
        if args.extend and end - time.monotonic() > 0:
            queue.extend(task, worker_id, args.lease_ms / 1000)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="worker.py", description=__doc__.split("\n\n")[0].replace("\n", " "),
        epilog="Environment: DATABASE_URL (else the PG* variables), WORKER_HEARTBEAT_INTERVAL (seconds, "
               "default 30), <TYPE>_WORKER_ID (e.g. COMPANY_RESEARCH_WORKER_ID), LOG_LEVEL. The older "
               "names --work-seconds, --lease-seconds and --idle-seconds are still accepted.")
    p.add_argument("--db", metavar="DSN", default=os.environ.get("DATABASE_URL", ""),
                   help="connection string or URI (default: $DATABASE_URL, else the PG* variables)")
    p.add_argument("--schema", default="pm_pipeline", help="the extension's schema (default: %(default)s)")
    p.add_argument("--table", default="tasks", help="the registered queue table (default: %(default)s)")
    p.add_argument("--type", default="company_research", help="worker type (default: %(default)s)")
    p.add_argument("--id", default=None,
                   help="worker id (default: $<TYPE>_WORKER_ID, else <type>-<host>-<pid>)")
    p.add_argument("--mode", choices=["auto", "fenced", "plain"], default="auto",
                   help="fenced leases (claim_leases, tokens) or plain UPDATEs; auto: fenced when installed")
    p.add_argument("--work-ms", type=float, default=float(os.environ.get("WORK_MS", "200")), metavar="N",
                   help="milliseconds of simulated work per task (default: %(default)g)")
    p.add_argument("--work-seconds", type=float, dest="work_seconds", metavar="S", help=argparse.SUPPRESS)
    p.add_argument("--lease-ms", type=float, default=300000, metavar="N",
                   help="lease length; extended every half lease while working (default: %(default)g)")
    p.add_argument("--lease-seconds", type=float, dest="lease_seconds", metavar="S", help=argparse.SUPPRESS)
    p.add_argument("--idle-ms", type=float, default=500, metavar="N",
                   help="pause when the queue is empty (default: %(default)g)")
    p.add_argument("--idle-seconds", type=float, dest="idle_seconds", metavar="S", help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=10, metavar="N",
                   help="with a checkpoint column: the work's steps, checkpointed one by one (default: %(default)s)")
    p.add_argument("--max-tasks", type=int, default=0, metavar="N", help="exit after N tasks (default: no limit)")
    p.add_argument("--exit-when-empty", action="store_true", help="exit when the queue is empty")
    p.add_argument("--session-bound", dest="session_bound", action="store_true", default=False,
                   help="the worker dies with its heartbeat session: kill -9 gives its leases back at once")
    p.add_argument("--no-session-bound", dest="session_bound", action="store_false",
                   help="die by silence after dead_after (the default here)")
    p.add_argument("--no-extend", dest="extend", action="store_false", help="never extend the lease")
    p.add_argument("--on-signal", choices=["flag", "exit"], default="flag",
                   help="SIGTERM/SIGINT: finish the current task, then stop (flag, default), or stop at once (exit)")
    args = p.parse_args(argv)
    # The old names (seconds) stay accepted.
    if args.work_seconds is not None:
        args.work_ms = args.work_seconds * 1000
    if args.lease_seconds is not None:
        args.lease_ms = args.lease_seconds * 1000
    if args.idle_seconds is not None:
        args.idle_ms = args.idle_seconds * 1000
    if args.lease_ms < 1000:
        p.error("--lease-ms must be at least 1000")
    return args


def main():
    args = parse_args()
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s [%(threadName)s] %(message)s")
    heartbeat = WorkerHeartbeat(worker_id=args.id, worker_type=args.type, dsn=args.db, schema=args.schema,
                                session_bound=args.session_bound, on_signal=args.on_signal)
    worker_id = heartbeat.worker_id
    log.info("Worker starting up worker_id=%s pid=%d", worker_id, os.getpid())
    heartbeat.start()
    conn = queue = None
    done = 0
    try:
        while not heartbeat.stop_requested.is_set():
            # The heartbeat brings the operator's directive (1.3): draining, the
            # worker has finished what it held, so it stops; paused, it waits.
            if heartbeat.draining:
                log.info("draining: claiming no more; stopping")
                break
            if heartbeat.paused:
                heartbeat.mark_idle()
                heartbeat.stop_requested.wait(args.idle_ms / 1000)
                continue
            try:
                if conn is None:
                    conn = psycopg.connect(args.db, autocommit=True, application_name="worker " + worker_id[:40])
                    fenced = args.mode == "fenced" or (args.mode == "auto" and conn.execute(
                        "SELECT to_regprocedure(%s) IS NOT NULL",
                        (sql.Identifier(args.schema).as_string(conn)
                         + ".claim_leases(anyelement,text,integer,interval,jsonb,jsonb)",)).fetchone()[0])
                    queue = FencedQueue(conn, args.table, args.schema) if fenced else PlainQueue(conn, args.table)
                    log.info("mode=%s", "fenced" if fenced else "plain")
                task = queue.claim(worker_id, args.lease_ms / 1000)
                if task is None:
                    heartbeat.mark_idle()  # beats at once: a drain or pause shows at the loop's top
                    if args.exit_when_empty and heartbeat.accepting_work:
                        break
                    heartbeat.stop_requested.wait(args.idle_ms / 1000)
                    continue
                row = task["row"]
                heartbeat.update_task(run_id=row["run_id"], task="Researching: %s" % row["payload"],
                                      status="processing")
                log.info("claimed task %s%s", row["id"], " token %s" % task["token"] if task["token"] else "")
                try:
                    work(queue, task, args, heartbeat, worker_id)  # the real work
                    queue.complete(task, worker_id)
                    done += 1
                    log.info("completed task %s", row["id"])
                except StaleLease as e:
                    log.warning("lost the lease of task %s: %s", row["id"], e)
                finally:
                    heartbeat.mark_idle()
                if args.max_tasks and done >= args.max_tasks:
                    break
            except psycopg.OperationalError as e:
                # The task's lease comes back by itself (expiry, or our session's
                # death when bound): reconnect and go on.
                log.warning("database connection lost (%s); reconnecting", " ".join(str(e).split()))
                if conn is not None:
                    conn.close()
                conn = None
                heartbeat.stop_requested.wait(args.idle_ms / 1000)
        log.info("exiting after %d task(s)", done)
    finally:
        if conn is not None:
            conn.close()
        heartbeat.stop()


if __name__ == "__main__":
    main()
