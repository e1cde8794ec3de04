"""LeaseTable: the extension's fenced leases (claim / extend / complete / fail / check)."""
from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from ._common import StaleLease, WorkerHeartbeatError, is_stale, resolve_schema

Json = Optional[Mapping[str, Any]]


@dataclass
class Lease:
    """A claimed row: its lease `token` (an opaque 63-bit integer: keep it
    exactly as given) and every column of the row as a dict.

    `checkpoint`: the row's last checkpoint (the table's checkpoint column,
    extension 1.3; None when there is none, or no checkpoint column): a
    previous holder's progress to resume from. `attempts`: the table's
    attempts column after this claim (this claim included: 1 on a first
    claim; None without an attempts column)."""

    token: int
    row: Dict[str, Any] = field(default_factory=dict)
    checkpoint: Any = None
    attempts: Optional[int] = None

    def __getitem__(self, column: str) -> Any:
        return self.row[column]


def _json(value: Json, what: str) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError("%s must be a mapping (a JSON object) or None" % what)
    return json.dumps(dict(value), default=str)


def _interval(seconds: float) -> str:
    if not seconds > 0:
        raise ValueError("lease_seconds must be positive, not %r" % (seconds,))
    return "%r seconds" % float(seconds)


def _checkpoint(data: Any) -> Optional[str]:
    """A checkpoint is any JSON value (usually an object); None stores SQL NULL."""
    if data is None:
        return None
    try:
        return json.dumps(data, default=str)
    except (TypeError, ValueError) as e:
        raise ValueError("a checkpoint must be JSON-serializable: %s" % e) from None


def _token(token: Any) -> int:
    if isinstance(token, Lease):
        return token.token
    if isinstance(token, bool) or not isinstance(token, int):
        try:
            return int(str(token))
        except ValueError:
            raise ValueError("a lease token is an integer, not %r" % (token,)) from None
    return token


class _Sql:
    """The statements, built once per table."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        s = sql.Identifier(schema)
        self.resolve = sql.SQL(
            "SELECT %(t)s::regclass::text AS name, "
            "(SELECT token_column::text FROM {}.lease_tables WHERE table_name = %(t)s::regclass) AS token, "
            # to_jsonb: the 1.3 column checkpoint_column may not exist (an older extension)
            "(SELECT pg_catalog.to_jsonb(l) FROM {}.lease_tables AS l WHERE l.table_name = %(t)s::regclass) AS reg, "
            "(SELECT n.nspname || '.' || c.relname FROM pg_catalog.pg_class c "
            " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %(t)s::regclass) AS channel"
        ).format(s, s)
        self.extend = sql.SQL("SELECT {}.extend_lease(%s::regclass, %s::bigint, %s::interval)").format(s)
        self.complete = sql.SQL("SELECT {}.complete_lease(%s::regclass, %s::bigint, %s::jsonb)").format(s)
        self.fail = sql.SQL("SELECT {}.fail_lease(%s::regclass, %s::bigint, %s::jsonb)").format(s)
        self.check = sql.SQL("SELECT {}.check_lease(%s::regclass, %s::bigint)").format(s)
        self.checkpoint = sql.SQL(
            "SELECT {}.checkpoint_lease(%s::regclass, %s::bigint, %s::jsonb, %s::interval)").format(s)
        self._s = s

    def claim(self, table: str) -> sql.Composed:
        # regclass output is the table's name quoted as needed: safe as a type name.
        return sql.SQL("SELECT * FROM {}.claim_leases(NULL::{}, %s, %s::integer, %s::interval, "
                       "%s::jsonb, %s::jsonb)").format(self._s, sql.SQL(table))


class _Base:
    table: str
    token_column: str
    attempts_column: Optional[str]
    checkpoint_column: Optional[str]
    channel: str
    _claim: sql.Composed

    def _resolved(self, row: Optional[Mapping[str, Any]], table: str) -> None:
        if row is None:  # pragma: no cover
            raise psycopg.ProgrammingError("could not resolve table %r" % table)
        if row["token"] is None:
            raise ValueError("table %s is not registered with a token column: call "
                             "%s.register_lease_table(..., p_token_column => ...) first"
                             % (row["name"], self._sql.schema))
        self.table = row["name"]
        self.token_column = row["token"]
        reg = row["reg"] or {}
        self.attempts_column = reg.get("attempts_column")
        self.checkpoint_column = reg.get("checkpoint_column")
        self.channel = "worker_heartbeat:" + row["channel"]

    _sql: _Sql

    def _leases(self, rows: List[Dict[str, Any]]) -> List[Lease]:
        out = []
        for r in rows:
            attempts = r.get(self.attempts_column) if self.attempts_column else None
            out.append(Lease(int(r[self.token_column]), r,
                             r.get(self.checkpoint_column) if self.checkpoint_column else None,
                             int(attempts) if attempts is not None else None))
        return out

    @staticmethod
    def _stale(e: psycopg.Error, token: int) -> StaleLease:
        return StaleLease(" ".join(str(e).split()), token)

    def _error(self, e: psycopg.Error, token: int) -> Exception:
        """The exception to raise for a server error of a lease call."""
        if is_stale(e):
            return self._stale(e, token)
        if getattr(e, "sqlstate", None) == "42883" and "checkpoint_lease" in str(e):
            return WorkerHeartbeatError("checkpoint_lease() does not exist: checkpoints need the extension "
                                        "at version 1.3 (ALTER EXTENSION worker_heartbeat UPDATE)")
        return e


class LeaseTable(_Base):
    """The fenced-lease functions on one registered table, through a
    psycopg connection the caller owns.

    Every call runs on `conn` as it is: in autocommit mode each call commits
    at once; otherwise it joins the caller's transaction (complete the lease
    in the same transaction as the work's own writes) and the caller commits.

    Args:
        conn: a psycopg 3 connection.
        table: the table's name, resolved like a regclass ("tasks", "app.jobs").
        schema: the extension's schema (default $WORKER_HEARTBEAT_SCHEMA or pm_pipeline).

    Tokens are opaque integers (63-bit); WH001 (stale token) raises StaleLease.
    """

    def __init__(self, conn: "psycopg.Connection[Any]", table: str, schema: Optional[str] = None) -> None:
        self.conn = conn
        self._sql = _Sql(resolve_schema(schema))
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(self._sql.resolve, {"t": table})
            self._resolved(cur.fetchone(), table)
        self._claim = self._sql.claim(self.table)

    def claim(self, worker_id: str, limit: int = 1, lease_seconds: float = 300, *,
              filter: Json = None, set: Json = None) -> List[Lease]:
        """claim_leases: up to `limit` free rows (oldest first, FOR UPDATE SKIP
        LOCKED), each with a new token; `filter` selects rows by column values,
        `set` writes columns of the claimed rows (JSON objects)."""
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(self._claim, (str(worker_id), int(limit), _interval(lease_seconds),
                                      _json(filter, "filter"), _json(set, "set")))
            return self._leases(cur.fetchall())

    def extend(self, token: Union[int, Lease], lease_seconds: float = 300) -> datetime.datetime:
        """extend_lease: the lease's new deadline. StaleLease if it is not ours any more."""
        deadline: datetime.datetime = self._one(self._sql.extend, token, _interval(lease_seconds))
        return deadline

    def complete(self, token: Union[int, Lease], set: Json = None) -> None:
        """complete_lease: ends the lease and applies `set`. StaleLease: nothing changed."""
        self._one(self._sql.complete, token, _json(set, "set"))

    def fail(self, token: Union[int, Lease], set: Json = None) -> bool:
        """fail_lease: releases the row now; False when that was its last
        attempt (on_exhausted applied). StaleLease if it is not ours any more."""
        return bool(self._one(self._sql.fail, token, _json(set, "set")))

    def check(self, token: Union[int, Lease]) -> bool:
        """check_lease: True while the lease holds its row (locked until the
        transaction ends); else StaleLease."""
        return bool(self._one(self._sql.check, token))

    def checkpoint(self, token: Union[int, Lease], data: Any, lease: Optional[float] = None) -> datetime.datetime:
        """checkpoint_lease (extension 1.3): stores `data` (any JSON value,
        usually an object) in the row's checkpoint column, and extends the
        lease to `lease` seconds from now when given. Returns the lease's
        deadline. StaleLease (nothing stored) if the row is not ours any more:
        a zombie's late checkpoint never overwrites its successor's. The next
        holder of the row, after a death, gets it as Lease.checkpoint."""
        deadline: datetime.datetime = self._one(self._sql.checkpoint, token, _checkpoint(data),
                                                None if lease is None else _interval(lease))
        return deadline

    def _one(self, stmt: sql.Composed, token: Any, *args: Any) -> Any:
        t = _token(token)
        try:
            row = self.conn.execute(stmt, (self.table, t) + tuple(args)).fetchone()
        except psycopg.Error as e:
            err = self._error(e, t)
            if err is e:
                raise
            raise err from e
        return row[0] if row else None


class AsyncLeaseTable(_Base):
    """LeaseTable over a psycopg AsyncConnection: create it with
    ``await AsyncLeaseTable.create(conn, "tasks")``."""

    conn: "psycopg.AsyncConnection[Any]"

    @classmethod
    async def create(cls, conn: "psycopg.AsyncConnection[Any]", table: str,
                     schema: Optional[str] = None) -> "AsyncLeaseTable":
        self = cls.__new__(cls)
        self.conn = conn
        self._sql = _Sql(resolve_schema(schema))
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(self._sql.resolve, {"t": table})
            self._resolved(await cur.fetchone(), table)
        self._claim = self._sql.claim(self.table)
        return self

    async def claim(self, worker_id: str, limit: int = 1, lease_seconds: float = 300, *,
                    filter: Json = None, set: Json = None) -> List[Lease]:
        """See LeaseTable.claim."""
        async with self.conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(self._claim, (str(worker_id), int(limit), _interval(lease_seconds),
                                            _json(filter, "filter"), _json(set, "set")))
            return self._leases(await cur.fetchall())

    async def extend(self, token: Union[int, Lease], lease_seconds: float = 300) -> datetime.datetime:
        """See LeaseTable.extend."""
        deadline: datetime.datetime = await self._one(self._sql.extend, token, _interval(lease_seconds))
        return deadline

    async def complete(self, token: Union[int, Lease], set: Json = None) -> None:
        """See LeaseTable.complete."""
        await self._one(self._sql.complete, token, _json(set, "set"))

    async def fail(self, token: Union[int, Lease], set: Json = None) -> bool:
        """See LeaseTable.fail."""
        return bool(await self._one(self._sql.fail, token, _json(set, "set")))

    async def check(self, token: Union[int, Lease]) -> bool:
        """See LeaseTable.check."""
        return bool(await self._one(self._sql.check, token))

    async def checkpoint(self, token: Union[int, Lease], data: Any,
                         lease: Optional[float] = None) -> datetime.datetime:
        """See LeaseTable.checkpoint."""
        deadline: datetime.datetime = await self._one(self._sql.checkpoint, token, _checkpoint(data),
                                                      None if lease is None else _interval(lease))
        return deadline

    async def _one(self, stmt: sql.Composed, token: Any, *args: Any) -> Any:
        t = _token(token)
        try:
            cur = await self.conn.execute(stmt, (self.table, t) + tuple(args))
            row = await cur.fetchone()
        except psycopg.Error as e:
            err = self._error(e, t)
            if err is e:
                raise
            raise err from e
        return row[0] if row else None


__all__: Tuple[str, ...] = ("Lease", "LeaseTable", "AsyncLeaseTable")
