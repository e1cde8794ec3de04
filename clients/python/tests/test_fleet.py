"""Fleet control (extension 1.3) from Python: the heartbeat's directive
(drain / pause / resume), checkpoints carried across a SIGKILL, a zombie's
late checkpoint refused, and a 1.2 catalog where none of it exists yet."""
import asyncio
import datetime
import signal
import subprocess
import uuid

import psycopg
import pytest

from conftest import PYTHON, child_env
from worker_heartbeat import (AsyncLeaseTable, AsyncWorkerHeartbeat, LeaseTable, StaleLease, WorkerHeartbeat,
                              WorkerHeartbeatError)


def wait_for(predicate, timeout=30.0):
    import time
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("timed out waiting for the condition")


def test_directive_drain_pause_resume(pgenv):
    pg = pgenv
    table = pg.make_queue()
    pg.val("INSERT INTO %s (payload) SELECT 'p' || g FROM generate_series(1, 3) g RETURNING 1" % table)
    wid = "py-fleet-" + uuid.uuid4().hex[:6]
    seen = []
    hb = WorkerHeartbeat(worker_id=wid, worker_type="pytest_fleet", interval_seconds=0.1,
                         on_directive=lambda d, prev: seen.append((prev, d)))
    with hb:
        wait_for(lambda: hb.beats >= 1)
        assert hb.directive == "run" and not hb.draining and not hb.paused and hb.accepting_work
        with pg.connect() as c:
            t = LeaseTable(c, table)
            (held,) = t.claim(wid, lease_seconds=60)
            assert pg.val("SELECT pm_pipeline.drain_workers(p_worker_id => %s)", (wid,)) == 1
            wait_for(lambda: hb.draining)
            assert hb.directive == "drain" and not hb.accepting_work and not hb.paused
            # a draining worker gets nothing more, and finishes what it holds
            assert t.claim(wid, lease_seconds=60) == []
            t.complete(held.token, set={"state": "done"})
            assert pg.val("SELECT pm_pipeline.resume_workers(p_worker_id => %s)", (wid,)) == 1
            wait_for(lambda: hb.directive == "run")
            assert pg.val("SELECT pm_pipeline.pause_workers(p_worker_type => 'pytest_fleet')") >= 1
            wait_for(lambda: hb.paused)
            assert t.claim(wid, lease_seconds=60) == []
            pg.val("SELECT pm_pipeline.resume_workers(p_worker_type => 'pytest_fleet')")
            wait_for(lambda: hb.accepting_work)
            assert len(t.claim(wid, lease_seconds=60)) == 1
    assert seen == [("run", "drain"), ("drain", "run"), ("run", "pause"), ("pause", "run")]
    assert hb.failures == 0
    events = pg.val("SELECT string_agg(event, ',' ORDER BY event_id) FROM pm_pipeline.worker_events "
                    "WHERE worker_id = %s AND event IN ('drain_requested', 'paused', 'resumed')", (wid,))
    assert events == "drain_requested,resumed,paused,resumed"


def test_directive_by_metadata_async(pgenv):
    """A host drained by metadata; the asyncio heartbeat learns it too."""
    pg = pgenv
    host = "web-" + uuid.uuid4().hex[:6]

    async def main():
        async with AsyncWorkerHeartbeat(worker_id="py-async-" + host, worker_type="pytest_fleet_async",
                                        interval_seconds=0.1, metadata={"host": host}) as hb:
            for _ in range(1500):
                if hb.beats:
                    break
                await asyncio.sleep(0.02)
            assert hb.directive == "run"
            await asyncio.to_thread(pg.val, "SELECT pm_pipeline.drain_workers(p_metadata => %s::jsonb)",
                                    ('{"host": "%s"}' % host,))
            for _ in range(1500):
                if hb.draining:
                    break
                await asyncio.sleep(0.02)
            assert hb.draining and not hb.accepting_work
            await asyncio.to_thread(pg.val, "SELECT pm_pipeline.resume_workers(p_metadata => %s::jsonb)",
                                    ('{"host": "%s"}' % host,))
            for _ in range(1500):
                if hb.directive == "run":
                    break
                await asyncio.sleep(0.02)
            assert hb.accepting_work

    asyncio.run(main())


# A worker process: claims the task, checkpoints step 3, prints its token, holds it.
CHECKPOINTER = r"""
import sys, time, psycopg
from worker_heartbeat import WorkerHeartbeat, LeaseTable
wid, table = sys.argv[1], sys.argv[2]
hb = WorkerHeartbeat(worker_id=wid, worker_type="pytest_ckpt", interval_seconds=0.3, session_bound=True).start()
conn = psycopg.connect("", autocommit=True)
t = LeaseTable(conn, table)
(lease,) = t.claim(wid, lease_seconds=600)
assert lease.checkpoint is None and lease.attempts == 1, (lease.checkpoint, lease.attempts)
t.checkpoint(lease.token, {"step": 3, "of": 10, "notes": ["website", "filings"]}, lease=600)
print("checkpointed", lease.token, flush=True)
while True:
    time.sleep(600)
"""


def test_checkpoint_survives_sigkill_and_zombie_is_refused(pg):
    table = pg.make_queue(checkpoint=True)
    pg.val("INSERT INTO %s (payload) VALUES ('long research') RETURNING 1" % table)
    wid = "py-ckpt-" + uuid.uuid4().hex[:6]
    p = subprocess.Popen([PYTHON, "-c", CHECKPOINTER, wid, table], env=child_env(pg), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    line = p.stdout.readline()
    assert line.startswith("checkpointed"), line + (p.stdout.read() if p.poll() is not None else "")
    old_token = int(line.split()[1])
    p.send_signal(signal.SIGKILL)
    assert p.wait(30) == -signal.SIGKILL
    pg.poll("SELECT claimed_by IS NULL FROM %s" % table)
    with pg.connect() as c:
        t = LeaseTable(c, table)
        assert t.checkpoint_column == "progress" and t.attempts_column == "attempts"
        (lease,) = t.claim("py-ckpt-successor", lease_seconds=60)
        # the next claimer resumes where the dead one was
        assert lease.checkpoint == {"step": 3, "of": 10, "notes": ["website", "filings"]}
        assert lease.attempts == 2 and lease["progress"] == lease.checkpoint
        # the dead worker's token is stale: a late checkpoint changes nothing
        with pytest.raises(StaleLease) as ei:
            t.checkpoint(old_token, {"step": 9})
        assert ei.value.token == old_token
        deadline = t.checkpoint(lease, {"step": 4, "of": 10}, lease=120)
        assert isinstance(deadline, datetime.datetime)
        left = pg.val("SELECT extract(epoch FROM lease_expires_at - now()) FROM %s" % table)
        assert 60 < left <= 121
        t.complete(lease.token, set={"state": "done"})
    assert pg.val("SELECT progress::text FROM %s" % table) is None  # completion clears it


def test_async_checkpoint(pg):
    table = pg.make_queue(checkpoint=True)
    pg.val("INSERT INTO %s (payload) VALUES ('x') RETURNING 1" % table)

    async def main():
        conn = await psycopg.AsyncConnection.connect(pg.dsn(), autocommit=True)
        try:
            t = await AsyncLeaseTable.create(conn, table)
            (lease,) = await t.claim("py-async-ckpt", lease_seconds=60)
            assert lease.checkpoint is None and lease.attempts == 1
            await t.checkpoint(lease.token, [1, 2, 3])
            assert await t.fail(lease.token) is True
            (again,) = await t.claim("py-async-ckpt-2", lease_seconds=60)
            assert again.checkpoint == [1, 2, 3] and again.attempts == 2
            with pytest.raises(StaleLease):
                await t.checkpoint(lease.token, {"late": True})
        finally:
            await conn.close()

    asyncio.run(main())
    assert pg.val("SELECT progress FROM %s" % table) == [1, 2, 3]


def test_extension_1_2_has_no_directive_and_no_checkpoint(pg):
    """The package keeps working against a 1.2 catalog (not updated yet)."""
    db = "py12_" + uuid.uuid4().hex[:6]
    with pg.connect() as c:
        c.execute("CREATE DATABASE %s" % db)
    with pg.connect(dbname=db) as c:
        c.execute("CREATE SCHEMA pm_pipeline")
        c.execute("CREATE EXTENSION worker_heartbeat VERSION '1.2' SCHEMA pm_pipeline")
    table = pg.make_queue(dbname=db)
    with pg.connect(dbname=db) as c:
        c.execute("INSERT INTO %s (payload) VALUES ('x')" % table)
    hb = WorkerHeartbeat(worker_id="py-12", worker_type="pytest_12", interval_seconds=0.1, dsn=pg.dsn(db))
    with hb:
        wait_for(lambda: hb.beats >= 2)
        assert hb.directive == "run" and hb.accepting_work and hb.failures == 0
        with pg.connect(dbname=db) as c:
            t = LeaseTable(c, table)
            assert t.checkpoint_column is None
            (lease,) = t.claim(hb.worker_id, lease_seconds=60)
            assert lease.checkpoint is None and lease.attempts == 1
            with pytest.raises(WorkerHeartbeatError, match="version 1.3"):
                t.checkpoint(lease.token, {"step": 1})
            t.complete(lease.token)
