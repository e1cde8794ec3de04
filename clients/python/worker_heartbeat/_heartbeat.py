"""WorkerHeartbeat: the original design's background heartbeat thread."""
from __future__ import annotations

import atexit
import json
import logging
import os
import random
import signal
import socket
import threading
from types import FrameType
from typing import Any, Callable, Dict, Mapping, Optional

import psycopg
from psycopg import sql

from ._common import (CLIENT_NAME, DIRECTIVE_DRAIN, DIRECTIVE_PAUSE, DIRECTIVE_RUN, beat_statement,
                      connect_kwargs, default_worker_id, directive_probe, one_line, resolve_dsn,
                      resolve_interval, resolve_schema, split_run_id)

log = logging.getLogger("worker_heartbeat")

ON_SIGNAL_CHOICES = ("exit", "flag", "ignore")
_HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Backoff:
    """Reconnect delays: `initial` seconds doubling up to `maximum`, each
    multiplied by a random factor in [1 - jitter, 1]."""

    def __init__(self, initial: float = 0.25, maximum: float = 30.0, jitter: float = 0.5) -> None:
        if not (initial > 0 and maximum >= initial and 0 <= jitter < 1):
            raise ValueError("backoff: need 0 < initial <= maximum and 0 <= jitter < 1")
        self.initial, self.maximum, self.jitter = initial, maximum, jitter

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (0 for the first retry)."""
        base: float = min(self.maximum, self.initial * 2.0 ** min(attempt, 30))
        return base * random.uniform(1 - self.jitter, 1.0)


class DirectiveMixin:
    """The 1.3 directive of a heartbeat (WorkerHeartbeat, AsyncWorkerHeartbeat)."""

    worker_id: str
    directive: str
    on_directive: Optional[Callable[[str, str], None]]

    @property
    def draining(self) -> bool:
        """True when an operator drains this worker (drain_workers()): claim
        no more, finish what it holds, then stop()."""
        return self.directive == DIRECTIVE_DRAIN

    @property
    def paused(self) -> bool:
        """True when an operator paused this worker (pause_workers()): claim
        nothing until resume_workers(); keep beating."""
        return self.directive == DIRECTIVE_PAUSE

    @property
    def accepting_work(self) -> bool:
        """True when the worker may claim: directive "run" and no stop requested."""
        return self.directive == DIRECTIVE_RUN and not self._stop_is_requested()

    def _stop_is_requested(self) -> bool:
        raise NotImplementedError

    def _set_directive(self, directive: Optional[str]) -> None:
        directive = directive or DIRECTIVE_RUN
        if directive != self.directive:
            previous, self.directive = self.directive, directive
            log.info("Worker %s: directive %s (was %s)", self.worker_id, directive, previous)
            if self.on_directive is not None:
                try:
                    self.on_directive(directive, previous)
                except Exception as e:  # a callback's failure never stops the heartbeat
                    log.warning("on_directive failed for worker %s: %s", self.worker_id, one_line(e))


class WorkerHeartbeat(DirectiveMixin):
    """A background thread that keeps a worker's heartbeat row fresh.

    The original design's interface, unchanged::

        heartbeat = WorkerHeartbeat(worker_id="company-research-12345",
                                    worker_type="company_research", interval_seconds=30)
        heartbeat.start()
        heartbeat.update_task(run_id=run_id, task="Researching company example.com",
                              status="processing")
        heartbeat.mark_idle()
        heartbeat.stop()

    The thread beats at once, then every `interval_seconds`, and at once after
    each ``update_task`` / ``mark_idle`` (thread-safe: call them from any
    thread). It uses its own connection. Heartbeat failures never stop the
    work: the thread logs, reconnects with exponential backoff and beats again.

    Args:
        worker_id: unique id of this worker. Default: $<WORKER_TYPE>_WORKER_ID
            (e.g. COMPANY_RESEARCH_WORKER_ID), else <worker-type>-<host>-<pid>.
        worker_type: e.g. "company_research" (required).
        interval_seconds: seconds between beats. Default:
            $WORKER_HEARTBEAT_INTERVAL, else 30.
        dsn: libpq connection string or URI. Default: $DATABASE_URL, else
            $POSTGRES_URL, else the PG* environment variables.
        schema: the extension's schema. Default: $WORKER_HEARTBEAT_SCHEMA,
            else "pm_pipeline".
        session_bound: the worker dies with the heartbeat's database session,
            so a killed process has its leases back at once instead of after
            ``dead_after``. Needs a direct connection or a session-mode pooler.
        metadata: a JSON object merged into the row's metadata (with
            "client", "host" and "pid") on each (re)connect.
        on_signal: what SIGTERM / SIGINT do once ``start()`` ran (from the main
            thread): "exit" (default, the original design's automatic shutdown
            handling) calls ``stop()`` (stop_worker: the worker's leases are
            released at once) and then lets the signal do what it did before
            (SIGINT raises KeyboardInterrupt, SIGTERM ends the process);
            "flag" only sets ``stop_requested`` and keeps beating, so the
            worker finishes its task, leaves its loop and calls ``stop()``;
            "ignore" installs no handler. ``stop()`` is registered with
            atexit in every case.
        connect_timeout: seconds for connecting and for each heartbeat statement.
        backoff: reconnect delays (default 0.25 s doubling to 30 s, jittered).
        on_directive: called as on_directive(directive, previous) from the
            heartbeat's thread (task, for asyncio) when a beat returns a new
            directive (extension 1.3).

    Fleet control (extension 1.3): each beat returns the worker's directive,
    with no extra round trip: ``directive`` is "run", "drain" or "pause",
    ``draining`` / ``paused`` say the same as booleans. A draining worker
    stops claiming, finishes what it holds and calls ``stop()``; a paused one
    claims nothing until it is resumed. On an extension older than 1.3 the
    directive is always "run".
    """

    def __init__(self, worker_id: Optional[str] = None, worker_type: Optional[str] = None,
                 interval_seconds: Optional[float] = None, *, dsn: Optional[str] = None,
                 schema: Optional[str] = None, session_bound: bool = False,
                 metadata: Optional[Mapping[str, Any]] = None, on_signal: str = "exit",
                 connect_timeout: float = 10.0, backoff: Optional[Backoff] = None,
                 on_directive: Optional[Callable[[str, str], None]] = None) -> None:
        if not worker_type or not str(worker_type).strip():
            raise ValueError("worker_type is required (e.g. worker_type=\"company_research\")")
        if on_signal not in ON_SIGNAL_CHOICES:
            raise ValueError("on_signal must be one of %s, not %r" % (", ".join(ON_SIGNAL_CHOICES), on_signal))
        if metadata is not None and not isinstance(metadata, Mapping):
            raise ValueError("metadata must be a mapping (a JSON object)")
        self.worker_type: str = str(worker_type)
        self.worker_id: str = str(worker_id) if worker_id else default_worker_id(self.worker_type)
        self.interval_seconds: float = resolve_interval(interval_seconds)
        self.dsn: str = resolve_dsn(dsn)
        self.schema: str = resolve_schema(schema)
        self.session_bound: bool = bool(session_bound)
        self.on_signal: str = on_signal
        self.connect_timeout: float = float(connect_timeout)
        self.backoff: Backoff = backoff or Backoff()
        self.on_directive = on_directive
        #: Set by stop() and by SIGTERM / SIGINT: worker loops test it.
        self.stop_requested: threading.Event = threading.Event()
        self._metadata: Dict[str, Any] = dict(metadata or {})
        self._lock = threading.RLock()  # re-entrant: a signal handler may run stop() mid-update
        # (version, state) replaced as one object: the beat thread reads it
        # without the lock, so a signal handler that runs stop() in the middle
        # of update_task never waits for the thread.
        self._snapshot: Any = (0, {"status": "active", "run_id": None, "task": None, "run_text": None})
        self._sent_version = -1
        self._wake = threading.Event()
        self._halt = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._conn: Optional[psycopg.Connection[Any]] = None
        self._started = False
        self._stopped = False
        self._old_handlers: Dict[int, Any] = {}
        self.beats: int = 0
        """Heartbeats sent successfully."""
        self.failures: int = 0
        """Heartbeats that failed (each followed by a reconnect with backoff)."""
        self.connected: bool = False
        """True when the last beat went through."""
        self.directive: str = DIRECTIVE_RUN
        """The directive of the last beat: "run", "drain" or "pause" (1.3's
        heartbeat(); always "run" on an older extension)."""
        self._with_directive = False

    # ------------------------------------------------------------ the seed's API
    def start(self) -> "WorkerHeartbeat":
        """Starts the background thread (it beats at once) and installs the
        shutdown handling (SIGTERM / SIGINT per `on_signal`, atexit)."""
        with self._lock:
            if self._started:
                return self
            if self._stopped:
                raise RuntimeError("this WorkerHeartbeat was stopped: create a new one")
            self._started = True
        self._thread = threading.Thread(target=self._run, name="heartbeat-" + self.worker_id[:40], daemon=True)
        self._thread.start()
        atexit.register(self.stop)
        if self.on_signal != "ignore":
            if threading.current_thread() is threading.main_thread():
                for signum in _HANDLED_SIGNALS:
                    previous = signal.getsignal(signum)
                    if previous is signal.SIG_IGN:
                        continue  # the process ignores it on purpose: so do we
                    self._old_handlers[signum] = previous
                    signal.signal(signum, self._on_signal)
            else:
                log.warning("WorkerHeartbeat.start() outside the main thread: no SIGTERM/SIGINT handling")
        log.info("Started heartbeat thread for worker %s (interval: %gs)", self.worker_id, self.interval_seconds)
        return self

    def update_task(self, run_id: Any = None, task: Optional[str] = None, status: str = "processing") -> None:
        """Records the current task and beats at once (thread-safe).

        `run_id` is a UUID (str or uuid.UUID) or None; any other text is kept
        in the row's metadata as "run_id" (current_run_id is a uuid column)."""
        uuid_text, other = split_run_id(run_id)
        state = {"status": str(status), "run_id": uuid_text, "task": task, "run_text": other}
        with self._lock:
            self._snapshot = (self._snapshot[0] + 1, state)
        self._wake.set()

    def mark_idle(self) -> None:
        """No current task: status "idle" (beats at once)."""
        self.update_task(None, None, "idle")

    def stop(self) -> None:
        """Ends the thread and calls stop_worker: the worker is marked stopped
        and its leases are released at once. Idempotent; never raises for a
        database error (it logs it)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self.stop_requested.set()
        self._halt.set()
        self._wake.set()
        self._restore_signals()
        try:
            atexit.unregister(self.stop)
        except Exception:  # pragma: no cover
            pass
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2 * self.connect_timeout + 1)
        conn = self._conn if (thread is None or not thread.is_alive()) else None
        self._conn = None
        try:
            if conn is None or conn.closed:
                conn = self._connect()
            conn.execute(sql.SQL("SELECT {}.stop_worker(%s)").format(sql.Identifier(self.schema)),
                         (self.worker_id,))
            log.info("Stopped worker %s", self.worker_id)
        except psycopg.Error as e:
            log.warning("stop_worker failed for worker %s: %s", self.worker_id, one_line(e))
        finally:
            if conn is not None:
                conn.close()
            self.connected = False

    # ------------------------------------------------------------ extras
    def _stop_is_requested(self) -> bool:
        return self.stop_requested.is_set()

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return self._started and not self._stopped

    def __enter__(self) -> "WorkerHeartbeat":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return "WorkerHeartbeat(worker_id=%r, worker_type=%r, interval_seconds=%g)" % (
            self.worker_id, self.worker_type, self.interval_seconds)

    # ------------------------------------------------------------ internals
    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        name = signal.Signals(signum).name
        self.stop_requested.set()
        if self.on_signal == "flag":
            log.info("Received %s: finishing the current task", name)
            return
        log.info("Received %s: stopping worker %s", name, self.worker_id)
        previous = self._old_handlers.get(signum, signal.SIG_DFL)
        self.stop()  # restores the previous handlers
        if callable(previous):
            previous(signum, frame)  # e.g. default_int_handler: KeyboardInterrupt
        elif previous == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)  # die of the signal, as without us

    def _restore_signals(self) -> None:
        if not self._old_handlers or threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._old_handlers.items():
            try:
                if signal.getsignal(signum) == self._on_signal:
                    signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
            except (ValueError, TypeError):  # pragma: no cover
                pass
        self._old_handlers = {}

    def _connect(self) -> "psycopg.Connection[Any]":
        conn = psycopg.connect(self.dsn, **connect_kwargs("worker_heartbeat " + self.worker_id,
                                                           self.connect_timeout))
        try:
            conn.execute("SELECT pg_catalog.set_config('statement_timeout', %s, false)",
                         (str(int(self.connect_timeout * 1000)),))
        except BaseException:
            conn.close()
            raise
        return conn

    def _beat(self) -> None:
        first = False
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
            first = True
            row = self._conn.execute(directive_probe(self.schema)).fetchone()
            self._with_directive = bool(row and row[0])
        version, st = self._snapshot
        meta: Optional[Dict[str, Any]] = None
        if first:
            meta = {"client": CLIENT_NAME, "host": socket.gethostname(), "pid": os.getpid()}
            meta.update(self._metadata)
        if first or version != self._sent_version:
            meta = dict(meta or {})
            meta["run_id"] = st["run_text"]
        row = self._conn.execute(
            beat_statement(self.schema, self._with_directive),
            (self.worker_id, self.worker_type, st["status"], st["run_id"], st["task"],
             json.dumps(meta) if meta is not None else None, self.session_bound)).fetchone()
        self._sent_version = version
        self.beats += 1
        self._set_directive(row[0] if self._with_directive and row else None)
        log.debug("Heartbeat sent for worker %s (status=%s)", self.worker_id, st["status"])

    def _run(self) -> None:
        attempt = 0
        while not self._halt.is_set():
            self._wake.clear()
            try:
                self._beat()
                if attempt:
                    log.info("Heartbeat connection restored for worker %s", self.worker_id)
                attempt = 0
                self.connected = True
                delay = self.interval_seconds
            except Exception as e:  # graceful degradation: nothing reaches the worker
                self.connected = False
                self.failures += 1
                if self._conn is not None:
                    try:
                        self._conn.close()
                    except Exception:  # pragma: no cover
                        pass
                self._conn = None
                delay = self.backoff.delay(attempt)
                attempt += 1
                log.warning("Heartbeat failed for worker %s (%s); retrying in %.2fs",
                            self.worker_id, one_line(e), delay)
            self._wake.wait(delay)
