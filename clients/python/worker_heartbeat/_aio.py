"""AsyncWorkerHeartbeat: the heartbeat as an asyncio task (psycopg's AsyncConnection)."""
from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import signal
import socket
import threading
from typing import Any, Callable, Dict, List, Mapping, Optional

import psycopg
from psycopg import sql

from ._common import (CLIENT_NAME, DIRECTIVE_RUN, beat_statement, connect_kwargs, default_worker_id,
                      directive_probe, one_line, resolve_dsn, resolve_interval, resolve_schema, split_run_id)
from ._heartbeat import ON_SIGNAL_CHOICES, Backoff, DirectiveMixin

log = logging.getLogger("worker_heartbeat")


class AsyncWorkerHeartbeat(DirectiveMixin):
    """WorkerHeartbeat for asyncio workers: the same arguments and behaviour,
    with a task on the running loop instead of a thread::

        hb = AsyncWorkerHeartbeat(worker_id="w1", worker_type="company_research")
        await hb.start()
        hb.update_task(run_id=run_id, task="Researching example.com", status="processing")
        hb.mark_idle()
        await hb.stop()

    or ``async with AsyncWorkerHeartbeat(...) as hb:``. ``update_task`` and
    ``mark_idle`` are plain methods (call them from the loop's thread).
    SIGTERM / SIGINT per `on_signal` (see WorkerHeartbeat) through
    ``loop.add_signal_handler``; at interpreter exit a heartbeat that was not
    stopped calls stop_worker on a short-lived synchronous connection.
    ``directive``, ``draining``, ``paused``: as WorkerHeartbeat's (1.3).
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
        #: Set by stop() and by SIGTERM / SIGINT.
        self.stop_requested: asyncio.Event = asyncio.Event()
        self._metadata: Dict[str, Any] = dict(metadata or {})
        self._state: Dict[str, Any] = {"status": "active", "run_id": None, "task": None, "run_text": None}
        self._version = 0
        self._sent_version = -1
        self._wake = asyncio.Event()
        self._halt = False
        self._task: Optional["asyncio.Task[None]"] = None
        self._conn: Optional[psycopg.AsyncConnection[Any]] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._signals: List[int] = []
        self._started = False
        self._stopped = False
        self.beats = 0
        self.failures = 0
        self.connected = False
        self.directive: str = DIRECTIVE_RUN
        self._with_directive = False

    async def start(self) -> "AsyncWorkerHeartbeat":
        """Starts the heartbeat task (it beats at once) and the shutdown handling."""
        if self._started:
            return self
        if self._stopped:
            raise RuntimeError("this AsyncWorkerHeartbeat was stopped: create a new one")
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name="heartbeat-" + self.worker_id[:40])
        atexit.register(self._atexit)
        if self.on_signal != "ignore" and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                if signal.getsignal(signum) is signal.SIG_IGN:
                    continue
                try:
                    self._loop.add_signal_handler(signum, self._on_signal, signum)
                    self._signals.append(signum)
                except (NotImplementedError, RuntimeError):  # pragma: no cover (Windows)
                    pass
        log.info("Started heartbeat task for worker %s (interval: %gs)", self.worker_id, self.interval_seconds)
        return self

    def update_task(self, run_id: Any = None, task: Optional[str] = None, status: str = "processing") -> None:
        """Records the current task and beats at once (see WorkerHeartbeat.update_task)."""
        uuid_text, other = split_run_id(run_id)
        self._state = {"status": str(status), "run_id": uuid_text, "task": task, "run_text": other}
        self._version += 1
        self._wake.set()

    def mark_idle(self) -> None:
        """No current task: status "idle"."""
        self.update_task(None, None, "idle")

    async def stop(self) -> None:
        """Ends the heartbeat task and calls stop_worker (leases released at once). Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.stop_requested.set()
        self._halt = True
        self._wake.set()
        self._remove_signals()
        atexit.unregister(self._atexit)
        if self._task is not None and self._task is not asyncio.current_task():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 2 * self.connect_timeout + 1)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self._task.cancel()
                if self._conn is not None:
                    await self._close(self._conn)
                    self._conn = None
        conn, self._conn = self._conn, None
        try:
            if conn is None or conn.closed:
                conn = await self._connect()
            await conn.execute(sql.SQL("SELECT {}.stop_worker(%s)").format(sql.Identifier(self.schema)),
                               (self.worker_id,))
            log.info("Stopped worker %s", self.worker_id)
        except psycopg.Error as e:
            log.warning("stop_worker failed for worker %s: %s", self.worker_id, one_line(e))
        finally:
            if conn is not None:
                await self._close(conn)
            self.connected = False

    def _stop_is_requested(self) -> bool:
        return self.stop_requested.is_set()

    @property
    def running(self) -> bool:
        return self._started and not self._stopped

    async def __aenter__(self) -> "AsyncWorkerHeartbeat":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    # ------------------------------------------------------------ internals
    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        self.stop_requested.set()
        if self.on_signal == "flag":
            log.info("Received %s: finishing the current task", name)
            return
        log.info("Received %s: stopping worker %s", name, self.worker_id)

        async def stop_then_resignal() -> None:
            await self.stop()  # removes our handlers
            os.kill(os.getpid(), signum)  # the signal's previous disposition applies

        assert self._loop is not None
        self._loop.create_task(stop_then_resignal())

    def _remove_signals(self) -> None:
        if self._loop is None or self._loop.is_closed():
            self._signals = []
            return
        for signum in self._signals:
            try:
                self._loop.remove_signal_handler(signum)
            except (RuntimeError, ValueError):  # pragma: no cover
                pass
        self._signals = []

    def _atexit(self) -> None:
        """The loop is gone at interpreter exit: stop_worker synchronously."""
        if self._stopped:
            return
        self._stopped = True
        try:
            with psycopg.connect(self.dsn, **connect_kwargs("worker_heartbeat " + self.worker_id,
                                                            self.connect_timeout)) as conn:
                conn.execute(sql.SQL("SELECT {}.stop_worker(%s)").format(sql.Identifier(self.schema)),
                             (self.worker_id,))
        except psycopg.Error as e:
            log.warning("stop_worker failed for worker %s: %s", self.worker_id, one_line(e))

    @staticmethod
    async def _close(conn: "psycopg.AsyncConnection[Any]") -> None:
        try:
            await conn.close()
        except Exception:  # pragma: no cover
            pass

    async def _connect(self) -> "psycopg.AsyncConnection[Any]":
        conn: "psycopg.AsyncConnection[Any]" = await psycopg.AsyncConnection.connect(
            self.dsn, **connect_kwargs("worker_heartbeat " + self.worker_id, self.connect_timeout))
        try:
            await conn.execute("SELECT pg_catalog.set_config('statement_timeout', %s, false)",
                               (str(int(self.connect_timeout * 1000)),))
        except BaseException:
            await self._close(conn)
            raise
        return conn

    async def _beat(self) -> None:
        first = False
        if self._conn is None or self._conn.closed:
            self._conn = await asyncio.wait_for(self._connect(), self.connect_timeout + 1)
            first = True
            probe = await (await self._conn.execute(directive_probe(self.schema))).fetchone()
            self._with_directive = bool(probe and probe[0])
        st, version = dict(self._state), self._version
        meta: Optional[Dict[str, Any]] = None
        if first:
            meta = {"client": CLIENT_NAME + "-asyncio", "host": socket.gethostname(), "pid": os.getpid()}
            meta.update(self._metadata)
        if first or version != self._sent_version:
            meta = dict(meta or {})
            meta["run_id"] = st["run_text"]
        cur = await self._conn.execute(
            beat_statement(self.schema, self._with_directive),
            (self.worker_id, self.worker_type, st["status"], st["run_id"], st["task"],
             json.dumps(meta) if meta is not None else None, self.session_bound))
        row = await cur.fetchone()
        self._sent_version = version
        self.beats += 1
        self._set_directive(row[0] if self._with_directive and row else None)
        log.debug("Heartbeat sent for worker %s (status=%s)", self.worker_id, st["status"])

    async def _run(self) -> None:
        attempt = 0
        while not self._halt:
            self._wake.clear()
            try:
                await self._beat()
                if attempt:
                    log.info("Heartbeat connection restored for worker %s", self.worker_id)
                attempt = 0
                self.connected = True
                delay = self.interval_seconds
            except asyncio.CancelledError:
                raise
            except Exception as e:  # graceful degradation
                self.connected = False
                self.failures += 1
                if self._conn is not None:
                    await self._close(self._conn)
                self._conn = None
                delay = self.backoff.delay(attempt)
                attempt += 1
                log.warning("Heartbeat failed for worker %s (%s); retrying in %.2fs",
                            self.worker_id, one_line(e), delay)
            if self._halt:
                break
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except asyncio.TimeoutError:
                pass
