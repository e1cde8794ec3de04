#!/usr/bin/python3
"""Example worker for the worker_heartbeat extension, in Python (psycopg 3).

It mirrors the seed's company_research_runner: a WorkerHeartbeat background
thread, claim a task, update the heartbeat's task, work, complete, mark idle,
and stop on shutdown (SIGTERM / SIGINT / exit). It works on the queue table of
examples/sql/queue.sql.

    DATABASE_URL=postgresql:///mydb /usr/bin/python3 examples/python/worker.py

Environment (as in the seed): WORKER_HEARTBEAT_INTERVAL (seconds, default 30),
COMPANY_RESEARCH_WORKER_ID (else company-research-<host>-<pid>), DATABASE_URL
(else the PG* variables). Uses Debian's python3-psycopg: run it with
/usr/bin/python3.
"""
import argparse
import atexit
import json
import logging
import os
import random
import signal
import socket
import threading
import time

import psycopg
from psycopg import sql

log = logging.getLogger("worker")


class StaleLease(Exception):
    """SQLSTATE WH001: the row was released, completed or claimed again since
    our token was handed out. Nothing was changed; drop the result."""


def default_worker_id(worker_type):
    env = worker_type.upper().replace("-", "_") + "_WORKER_ID"
    return os.environ.get(env) or "%s-%s-%d" % (
        worker_type.replace("_", "-"), socket.gethostname().split(".")[0], os.getpid())


class WorkerHeartbeat:
    """The seed's WorkerHeartbeat: a background thread that beats every
    interval_seconds on its own connection. Heartbeat failures never stop the
    work: the thread logs, reconnects with backoff and tries again."""

    def __init__(self, worker_id, worker_type, interval_seconds=None,
                 conninfo="", schema="pm_pipeline", session_bound=False):
        self.worker_id = worker_id
        self.worker_type = worker_type
        self.interval = float(interval_seconds or os.environ.get("WORKER_HEARTBEAT_INTERVAL") or 30)
        if self.interval <= 0:
            raise ValueError("the heartbeat interval must be positive")
        self.conninfo = conninfo
        self.schema = sql.Identifier(schema)
        self.session_bound = session_bound
        self._lock = threading.Lock()
        self._state = {"status": "active", "run_id": None, "task": None}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self.stop_requested = threading.Event()  # set by stop() and by SIGTERM/SIGINT
        self._conn = None
        self._thread = None
        self._stopped = False

    # -- public API (the seed's) --------------------------------------
    def start(self):
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()
        atexit.register(self.stop)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        log.info("Started heartbeat thread for worker %s (interval: %gs)", self.worker_id, self.interval)

    def update_task(self, run_id, task, status="processing"):
        with self._lock:
            self._state = {"status": status, "run_id": run_id, "task": task}
        self._wake.set()  # beat now: the dashboard sees the task at once

    def mark_idle(self):
        self.update_task(None, None, "idle")

    def stop(self):
        if self._stopped:
            return
        self._stopped = True
        self.stop_requested.set()
        self._stopping.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=15)
        try:
            with self._connect() as conn:
                conn.execute(sql.SQL("SELECT {}.stop_worker(%s)").format(self.schema), (self.worker_id,))
            log.info("Stopped worker %s", self.worker_id)
        except psycopg.Error as e:
            log.warning("stop_worker failed: %s", e)

    # -- internals ------------------------------------------------------
    def _on_signal(self, signum, _frame):
        # Finish the current task, then the main loop returns and stop() runs.
        log.info("Received signal %d: finishing the current task", signum)
        self.stop_requested.set()

    def _connect(self):
        return psycopg.connect(self.conninfo, autocommit=True, connect_timeout=10,
                               application_name="worker_heartbeat " + self.worker_id[:40])

    def _beat(self, first):
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
            first = True
        with self._lock:
            st = dict(self._state)
        meta = {"client": "worker_heartbeat-python", "host": socket.gethostname(), "pid": os.getpid()}
        self._conn.execute(
            sql.SQL("SELECT {}.upsert_worker_heartbeat(p_worker_id => %s, p_worker_type => %s, "
                    "p_status => %s, p_current_run_id => %s::uuid, p_current_task => %s, "
                    "p_metadata => %s::jsonb, p_session_bound => %s)").format(self.schema),
            (self.worker_id, self.worker_type, st["status"], st["run_id"], st["task"],
             json.dumps(meta) if first else None, self.session_bound))
        log.debug("Heartbeat sent for worker %s (status=%s)", self.worker_id, st["status"])

    def _run(self):
        attempt = 0
        first = True
        while not self._stopping.is_set():
            try:
                self._beat(first)
                first = False
                if attempt:
                    log.info("Heartbeat connection restored")
                attempt = 0
                delay = self.interval
            except psycopg.Error as e:
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                delay = min(30.0, 0.25 * 2 ** min(attempt, 10)) * random.uniform(0.5, 1.0)
                attempt += 1
                log.warning("Heartbeat failed (%s); retrying in %.2fs", str(e).strip().replace("\n", " "), delay)
            self._wake.wait(delay)
            self._wake.clear()
        if self._conn is not None:
            self._conn.close()


class Queue:
    """Claims and completes rows of a table registered with register_lease_table."""

    def __init__(self, conn, table, schema, worker_id, lease_seconds, mode):
        self.conn, self.worker_id, self.lease = conn, worker_id, "%g seconds" % lease_seconds
        self.lease_seconds = lease_seconds
        self.schema = sql.Identifier(schema)
        self.table = conn.execute("SELECT %s::regclass::text", (table,)).fetchone()[0]
        have = conn.execute("SELECT to_regprocedure(%s) IS NOT NULL", (
            '"' + schema.replace('"', '""') + '"' + ".claim_leases(anyelement,text,integer,interval,jsonb,jsonb)",)).fetchone()[0]
        self.fenced = mode == "fenced" or (mode == "auto" and have)

    def claim(self):
        """One task dict, or None when the queue is empty."""
        if self.fenced:
            cur = self.conn.execute(
                sql.SQL("SELECT id, run_id::text, payload, lease_token FROM {}.claim_leases("
                        "NULL::{}, %s, 1, %s::interval, %s::jsonb, %s::jsonb)").format(
                    self.schema, sql.SQL(self.table)),  # regclass output: already quoted
                (self.worker_id, self.lease, '{"state": "pending"}', '{"state": "claimed"}'))
        else:
            cur = self.conn.execute(
                sql.SQL("UPDATE {t} SET claimed_by = %s, lease_expires_at = now() + %s::interval, "
                        "state = 'claimed', attempts = attempts + 1 WHERE id = (SELECT id FROM {t} "
                        "WHERE state = 'pending' AND claimed_by IS NULL ORDER BY id LIMIT 1 "
                        "FOR UPDATE SKIP LOCKED) RETURNING id, run_id::text, payload, NULL::bigint"
                        ).format(t=sql.SQL(self.table)),
                (self.worker_id, self.lease))
        row = cur.fetchone()
        if row is None:
            return None
        return {"id": row[0], "run_id": row[1], "payload": row[2], "token": row[3]}

    def extend(self, task):
        """Pushes the lease's deadline; StaleLease if the row is no longer ours."""
        try:
            if self.fenced:
                self.conn.execute(
                    sql.SQL("SELECT {}.extend_lease(%s::regclass, %s, %s::interval)").format(self.schema),
                    (self.table, task["token"], self.lease))
                return
            n = self.conn.execute(
                sql.SQL("UPDATE {} SET lease_expires_at = now() + %s::interval "
                        "WHERE id = %s AND claimed_by = %s").format(sql.SQL(self.table)),
                (self.lease, task["id"], self.worker_id)).rowcount
            if n == 0:
                raise StaleLease("task %s is no longer ours" % task["id"])
        except psycopg.Error as e:
            if e.sqlstate == "WH001":
                raise StaleLease(str(e)) from e
            raise

    def complete(self, task):
        try:
            if self.fenced:
                self.conn.execute(
                    sql.SQL("SELECT {}.complete_lease(%s::regclass, %s, %s::jsonb)").format(self.schema),
                    (self.table, task["token"],
                     json.dumps({"state": "done", "done_by": self.worker_id, "done_at": "now"})))
                return
            n = self.conn.execute(
                sql.SQL("UPDATE {} SET state = 'done', claimed_by = NULL, lease_expires_at = NULL, "
                        "done_by = %s, done_at = now() WHERE id = %s AND claimed_by = %s"
                        ).format(sql.SQL(self.table)),
                (self.worker_id, task["id"], self.worker_id)).rowcount
            if n == 0:
                raise StaleLease("task %s is no longer ours" % task["id"])
        except psycopg.Error as e:
            if e.sqlstate == "WH001":
                raise StaleLease(str(e)) from e
            raise


def work(queue, task, seconds):
    """Stands for the real work: takes `seconds`, extending the lease every
    half lease so that a long task keeps its row."""
    end = time.monotonic() + seconds
    step = queue.lease_seconds / 2
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, step))
        if end - time.monotonic() > 0:
            queue.extend(task)


def process_claim(queue, heartbeat, work_seconds):
    """The seed's process_company_claim: claim, update the heartbeat, work, mark idle."""
    task = queue.claim()
    if task is None:
        return False
    heartbeat.update_task(run_id=task["run_id"], task="Researching: %s" % task["payload"],
                          status="processing")
    log.info("claimed task %s%s", task["id"], " token %s" % task["token"] if task["token"] else "")
    try:
        work(queue, task, work_seconds)  # the real work
        queue.complete(task)
        log.info("completed task %s", task["id"])
    except StaleLease as e:
        log.warning("lost the lease of task %s: %s", task["id"], e)
    finally:
        heartbeat.mark_idle()
    return True


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", default=os.environ.get("DATABASE_URL", ""))
    p.add_argument("--schema", default="pm_pipeline")
    p.add_argument("--table", default="tasks")
    p.add_argument("--type", default="company_research")
    p.add_argument("--id", default=None)
    p.add_argument("--mode", choices=["auto", "fenced", "plain"], default="auto")
    p.add_argument("--work-seconds", type=float, default=float(os.environ.get("WORK_SECONDS", "0.2")))
    p.add_argument("--lease-seconds", type=float, default=300)
    p.add_argument("--idle-seconds", type=float, default=0.5)
    p.add_argument("--session-bound", action="store_true")
    p.add_argument("--exit-when-empty", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s [%(threadName)s] %(message)s")

    worker_id = args.id or default_worker_id(args.type)
    log.info("Worker starting up worker_id=%s pid=%d", worker_id, os.getpid())
    heartbeat = WorkerHeartbeat(worker_id=worker_id, worker_type=args.type, conninfo=args.db,
                                schema=args.schema, session_bound=args.session_bound)
    heartbeat.start()
    conn = queue = None
    done = 0
    try:
        while not heartbeat.stop_requested.is_set():
            try:
                if conn is None:
                    conn = psycopg.connect(args.db, autocommit=True,
                                           application_name="worker " + worker_id[:40])
                    queue = Queue(conn, args.table, args.schema, worker_id, args.lease_seconds, args.mode)
                    log.info("mode=%s", "fenced" if queue.fenced else "plain")
                if process_claim(queue, heartbeat, args.work_seconds):
                    done += 1
                    continue
                heartbeat.mark_idle()
                if args.exit_when_empty:
                    break
            except psycopg.OperationalError as e:
                # The task's lease comes back by itself (expiry, or our session's
                # death when bound): reconnect and go on.
                log.warning("database connection lost (%s); reconnecting", str(e).strip().replace("\n", " "))
                if conn is not None:
                    conn.close()
                conn = None
            heartbeat.stop_requested.wait(args.idle_seconds)
        log.info("exiting after %d task(s)", done)
    finally:
        if conn is not None:
            conn.close()
        heartbeat.stop()


if __name__ == "__main__":
    main()
