"""worker_heartbeat: Python client of the worker_heartbeat PostgreSQL extension.

    from worker_heartbeat import WorkerHeartbeat, LeaseTable, StaleLease, AsyncWorkerHeartbeat

- WorkerHeartbeat: the original design's background heartbeat thread
  (start / update_task / mark_idle / stop, SIGTERM / SIGINT / atexit handling,
  thread-safe, reconnects with backoff), plus session_bound=True.
- AsyncWorkerHeartbeat: the same as an asyncio task.
- LeaseTable / AsyncLeaseTable: fenced leases (claim / extend / complete /
  fail / check); a stale token (SQLSTATE WH001) raises StaleLease.
- cleanup_dead_workers(), get_worker_health_summary() and friends: the
  original design's helper functions.

Connection: dsn=..., else $DATABASE_URL, else $POSTGRES_URL, else the PG*
variables. Schema: schema=..., else $WORKER_HEARTBEAT_SCHEMA, else pm_pipeline.
"""
from ._aio import AsyncWorkerHeartbeat
from ._common import StaleLease, StaleLeaseError, WorkerHeartbeatError, default_worker_id
from ._functions import (cleanup_dead_workers, cleanup_stale_workers, get_active_workers, get_dead_workers,
                         get_worker_health_summary, get_worker_stats)
from ._heartbeat import Backoff, WorkerHeartbeat
from ._leases import AsyncLeaseTable, Lease, LeaseTable

__version__ = "1.3.0"

__all__ = [
    "WorkerHeartbeat", "AsyncWorkerHeartbeat", "Backoff",
    "LeaseTable", "AsyncLeaseTable", "Lease",
    "StaleLease", "StaleLeaseError", "WorkerHeartbeatError",
    "cleanup_dead_workers", "get_worker_health_summary", "get_active_workers", "get_dead_workers",
    "get_worker_stats", "cleanup_stale_workers", "default_worker_id",
]
