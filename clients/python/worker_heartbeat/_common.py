"""Shared pieces: connection settings, worker ids, run ids, errors."""
from __future__ import annotations

import os
import socket
import uuid
from typing import Any, Mapping, Optional, Tuple

import psycopg
from psycopg import sql

DEFAULT_SCHEMA = "pm_pipeline"
DEFAULT_INTERVAL_SECONDS = 30.0
CLIENT_NAME = "worker_heartbeat-python"


class WorkerHeartbeatError(Exception):
    """Base class of the errors this package raises itself."""


class StaleLease(WorkerHeartbeatError):
    """SQLSTATE WH001: the lease token is stale.

    The row was released (its worker was declared dead, or its lease expired),
    completed, failed or claimed again since this token was handed out.
    Nothing was changed: drop the result of the work. The server's error is
    the exception's ``__cause__``.
    """

    sqlstate = "WH001"

    def __init__(self, message: str, token: Optional[int] = None) -> None:
        super().__init__(message)
        self.token = token


#: The same exception under the name the C++ and Node clients use.
StaleLeaseError = StaleLease


def resolve_dsn(dsn: Optional[str]) -> str:
    """The connection string: `dsn`, else $DATABASE_URL, else $POSTGRES_URL
    (the variable of the original design's ``psql $POSTGRES_URL``), else ""
    (libpq then reads PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD, ...)."""
    if dsn:
        return dsn
    return os.environ.get("DATABASE_URL") or os.environ.get("POSTGRES_URL") or ""


def resolve_schema(schema: Optional[str]) -> str:
    """The extension's schema: `schema`, else $WORKER_HEARTBEAT_SCHEMA, else pm_pipeline."""
    s = schema or os.environ.get("WORKER_HEARTBEAT_SCHEMA") or DEFAULT_SCHEMA
    return s


def resolve_interval(interval_seconds: Optional[float]) -> float:
    """`interval_seconds`, else $WORKER_HEARTBEAT_INTERVAL, else 30."""
    raw: Any = interval_seconds
    if raw is None:
        raw = os.environ.get("WORKER_HEARTBEAT_INTERVAL") or DEFAULT_INTERVAL_SECONDS
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError("the heartbeat interval must be a number of seconds, not %r" % (raw,)) from None
    if not value > 0:
        raise ValueError("the heartbeat interval must be positive, not %r" % (raw,))
    return value


def default_worker_id(worker_type: str) -> str:
    """$<WORKER_TYPE>_WORKER_ID (e.g. COMPANY_RESEARCH_WORKER_ID), else
    <worker-type>-<short host name>-<pid>."""
    env = "".join(c if c.isalnum() else "_" for c in worker_type.upper()) + "_WORKER_ID"
    return os.environ.get(env) or "%s-%s-%d" % (
        worker_type.replace("_", "-"), socket.gethostname().split(".")[0], os.getpid())


def schema_ident(schema: str) -> sql.Identifier:
    return sql.Identifier(schema)


def split_run_id(run_id: Any) -> Tuple[Optional[str], Optional[str]]:
    """(uuid text or None, the original text when it is not a UUID).

    The heartbeat row's current_run_id is a uuid column. A run id that is not
    a UUID (the original design's example passes "abc123") is kept in the
    row's metadata as "run_id" instead of failing every heartbeat."""
    if run_id is None or run_id == "":
        return None, None
    if isinstance(run_id, uuid.UUID):
        return str(run_id), None
    try:
        return str(uuid.UUID(str(run_id))), None
    except ValueError:
        return None, str(run_id)


def connect_kwargs(application_name: str, connect_timeout: float) -> Mapping[str, Any]:
    """libpq settings for the heartbeat's connection: autocommit, a connect
    timeout, TCP keepalives and a TCP user timeout, so that a dead network
    is noticed instead of hanging a beat (ignored on Unix sockets)."""
    return {
        "autocommit": True,
        "connect_timeout": max(1, int(round(connect_timeout))),
        "application_name": application_name[:63],
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "tcp_user_timeout": int(connect_timeout * 1000),
    }


#: The directives the 1.3 heartbeat returns (heartbeat(); see docs/fleet-control.md).
DIRECTIVE_RUN, DIRECTIVE_DRAIN, DIRECTIVE_PAUSE = "run", "drain", "pause"

# The heartbeat's statements. heartbeat() (1.3) takes the same arguments as
# upsert_worker_heartbeat() and returns the worker's directive; the arguments
# are passed by position so that both take them alike.
_HEARTBEAT_SIGNATURE = "heartbeat(text,text,text,uuid,text,timestamptz,jsonb,boolean)"
_BEAT_ARGS = "%s, %s, %s, %s::uuid, %s, NULL::timestamptz, %s::jsonb, %s"


def directive_probe(schema: str) -> sql.Composed:
    """SELECT: whether the schema has the 1.3 heartbeat() (True/False)."""
    qualified = '"' + schema.replace('"', '""') + '".' + _HEARTBEAT_SIGNATURE
    return sql.SQL("SELECT pg_catalog.to_regprocedure({}) IS NOT NULL").format(sql.Literal(qualified))


def beat_statement(schema: str, with_directive: bool) -> sql.Composed:
    """The heartbeat call: heartbeat() returning the directive (1.3), else
    upsert_worker_heartbeat() (1.0-1.2, no directive: always "run")."""
    fn = "heartbeat" if with_directive else "upsert_worker_heartbeat"
    return sql.SQL("SELECT {}.{}(" + _BEAT_ARGS + ")").format(sql.Identifier(schema), sql.Identifier(fn))


def is_stale(e: BaseException) -> bool:
    return isinstance(e, psycopg.Error) and getattr(e, "sqlstate", None) == "WH001"


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or e.__class__.__name__
