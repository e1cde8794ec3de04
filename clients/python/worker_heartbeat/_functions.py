"""The original design's helper functions, over the extension's SQL API."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from ._common import resolve_dsn, resolve_schema

Conn = Union["psycopg.Connection[Any]", str, None]


@contextmanager
def _connection(conn: Conn) -> Iterator["psycopg.Connection[Any]"]:
    if isinstance(conn, psycopg.Connection):
        yield conn
        return
    with psycopg.connect(resolve_dsn(conn), autocommit=True) as c:
        yield c


def _call(conn: Conn, schema: Optional[str], fmt: str, args: Tuple[Any, ...] = ()) -> List[Dict[str, Any]]:
    with _connection(conn) as c, c.cursor(row_factory=dict_row) as cur:
        cur.execute(sql.SQL(fmt).format(sql.Identifier(resolve_schema(schema))), args)
        return cur.fetchall()


def cleanup_dead_workers(conn: Conn = None, schema: Optional[str] = None) -> int:
    """Releases the leases of dead workers now (one reaping pass:
    release_dead_worker_leases()) and returns how many were released.

    The extension's reaper already does this every reap_interval: call it only
    when you want it done at once. `conn`: a psycopg connection, a DSN, or
    None for $DATABASE_URL / $POSTGRES_URL / PG*."""
    return int(_call(conn, schema, "SELECT {}.release_dead_worker_leases() AS n")[0]["n"])


def get_worker_health_summary(conn: Conn = None, schema: Optional[str] = None) -> Dict[str, Any]:
    """The overall health: {"total_active_workers", "total_dead_workers",
    "dead_workers": [...], "stats_by_type": [...]} (get_worker_health_summary())."""
    return dict(_call(conn, schema, "SELECT {}.get_worker_health_summary() AS s")[0]["s"])


def get_active_workers(conn: Conn = None, schema: Optional[str] = None) -> List[Dict[str, Any]]:
    """Rows of v_active_workers."""
    return _call(conn, schema, "SELECT * FROM {}.get_active_workers()")


def get_dead_workers(conn: Conn = None, schema: Optional[str] = None) -> List[Dict[str, Any]]:
    """Rows of v_dead_workers."""
    return _call(conn, schema, "SELECT * FROM {}.get_dead_workers()")


def get_worker_stats(conn: Conn = None, schema: Optional[str] = None) -> List[Dict[str, Any]]:
    """get_worker_stats(): one row per worker type."""
    return _call(conn, schema, "SELECT * FROM {}.get_worker_stats()")


def cleanup_stale_workers(threshold_minutes: int = 60, conn: Conn = None, schema: Optional[str] = None) -> int:
    """Removes workers stopped or dead for longer than the threshold (unless
    they still hold a lease); returns how many."""
    return int(_call(conn, schema, "SELECT {}.cleanup_stale_workers(%s) AS n", (int(threshold_minutes),))[0]["n"])
