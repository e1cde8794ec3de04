"""LeaseTable / AsyncLeaseTable: tokens, WH001 as StaleLease."""
import asyncio

import psycopg
import pytest

from worker_heartbeat import AsyncLeaseTable, AsyncWorkerHeartbeat, Lease, LeaseTable, StaleLease, StaleLeaseError


def test_claim_extend_check_complete(pg):
    table = pg.make_queue()
    pg.val("INSERT INTO %s (payload) SELECT 'p' || g FROM generate_series(1, 3) g RETURNING 1" % table)
    with pg.connect() as c:
        t = LeaseTable(c, table)
        assert t.table == table and t.token_column == "lease_token"
        assert t.channel == "worker_heartbeat:public." + table
        leases = t.claim("py-leases", 2, lease_seconds=60, filter={"state": "pending"}, set={"state": "claimed"})
        assert len(leases) == 2 and all(isinstance(l, Lease) and isinstance(l.token, int) for l in leases)
        assert [l["payload"] for l in leases] == ["p1", "p2"]
        a, b = leases
        assert t.check(a.token) is True
        deadline = t.extend(a, lease_seconds=120)
        assert deadline is not None
        t.complete(a.token, set={"state": "done", "done_by": "py-leases"})
        assert t.fail(b.token) is True  # back to pending (attempt 1 of 5)
    assert pg.val("SELECT string_agg(state, ',' ORDER BY id) FROM %s" % table) == "done,pending,pending"


def test_stale_token_raises_stale_lease(pg):
    table = pg.make_queue()
    pg.val("INSERT INTO %s (payload) VALUES ('x') RETURNING 1" % table)
    with pg.connect() as c:
        t = LeaseTable(c, table)
        (lease,) = t.claim("py-stale", lease_seconds=60)
        t.complete(lease.token, set={"state": "done"})
        for call in (lambda: t.complete(lease.token), lambda: t.extend(lease.token), lambda: t.check(lease.token),
                     lambda: t.fail(lease.token)):
            with pytest.raises(StaleLease) as ei:
                call()
            assert ei.value.token == lease.token and ei.value.sqlstate == "WH001"
            assert isinstance(ei.value.__cause__, psycopg.Error) and ei.value.__cause__.sqlstate == "WH001"
        assert StaleLeaseError is StaleLease
        # the connection is usable afterwards (autocommit: nothing to roll back)
        assert c.execute("SELECT 1").fetchone()[0] == 1


def test_reaped_lease_is_stale(pg):
    """A lease released by the reaper (its worker stopped) refuses the late completion."""
    table = pg.make_queue()
    pg.val("INSERT INTO %s (payload) VALUES ('x') RETURNING 1" % table)
    with pg.connect() as c:
        c.execute("SELECT pm_pipeline.upsert_worker_heartbeat('py-late', 'pytest')")
        t = LeaseTable(c, table)
        (lease,) = t.claim("py-late", lease_seconds=60)
        c.execute("SELECT pm_pipeline.stop_worker('py-late')")
        with pytest.raises(StaleLease):
            t.complete(lease.token, set={"state": "done"})
    assert pg.val("SELECT state FROM %s" % table) == "pending"


def test_63_bit_tokens_round_trip_exactly(pg):
    table = pg.make_queue()
    pg.val("INSERT INTO %s (payload) VALUES ('x') RETURNING 1" % table)
    big = 2 ** 62 + 12345
    pg.val("SELECT setval('pm_pipeline.lease_token_seq', %s)", (big,))
    with pg.connect() as c:
        t = LeaseTable(c, table)
        (lease,) = t.claim("py-big")
        assert lease.token > 2 ** 53 and lease.token == pg.val("SELECT lease_token FROM %s" % table)
        t.complete(lease.token)


def test_in_the_callers_transaction(pg):
    table = pg.make_queue()
    pg.val("INSERT INTO %s (payload) VALUES ('x') RETURNING 1" % table)
    with pg.connect(autocommit=False) as c:
        t = LeaseTable(c, table)
        c.commit()
        (lease,) = t.claim("py-tx")
        c.commit()
        t.complete(lease.token, set={"state": "done"})
        c.rollback()  # the completion is undone with the transaction
        assert pg.val("SELECT state FROM %s" % table) == "pending"
        t.complete(lease.token, set={"state": "done"})
        c.commit()
    assert pg.val("SELECT state FROM %s" % table) == "done"


def test_unregistered_table(pg):
    with pg.connect() as c:
        c.execute("CREATE TABLE public.not_registered (id int)")
        with pytest.raises(ValueError, match="not registered"):
            LeaseTable(c, "not_registered")


def test_async_heartbeat_and_leases(pgenv):
    pg = pgenv
    table = pg.make_queue()
    pg.val("INSERT INTO %s (payload) VALUES ('x') RETURNING 1" % table)

    async def main():
        async with AsyncWorkerHeartbeat(worker_id="py-async", worker_type="pytest_async",
                                        interval_seconds=0.2, session_bound=True) as hb:
            conn = await psycopg.AsyncConnection.connect("", autocommit=True)
            t = await AsyncLeaseTable.create(conn, table)
            (lease,) = await t.claim(hb.worker_id, lease_seconds=60)
            hb.update_task(run_id=lease["run_id"], task="async task")
            for _ in range(500):
                if await asyncio.to_thread(pg.val, "SELECT current_task = 'async task' FROM "
                                           "pm_pipeline.worker_heartbeats WHERE worker_id = 'py-async'"):
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("update_task did not reach the row")
            assert await t.check(lease.token)
            await t.extend(lease.token, 30)
            await t.complete(lease.token, set={"state": "done"})
            with pytest.raises(StaleLease):
                await t.complete(lease.token)
            hb.mark_idle()
            await conn.close()
            assert hb.beats >= 1 and hb.failures == 0

    asyncio.run(main())
    assert pg.val("SELECT status FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'py-async'") == "stopped"
    assert pg.val("SELECT state FROM %s" % table) == "done"


def test_async_sigterm_stops_worker(pg):
    import signal
    import subprocess
    from conftest import PYTHON, child_env
    table = pg.make_queue()
    pg.val("INSERT INTO %s (payload) VALUES ('x') RETURNING 1" % table)
    code = r"""
import asyncio, sys, psycopg
from worker_heartbeat import AsyncWorkerHeartbeat, AsyncLeaseTable
async def main():
    hb = await AsyncWorkerHeartbeat(worker_id="py-async-term", worker_type="pytest", interval_seconds=0.3).start()
    conn = await psycopg.AsyncConnection.connect("", autocommit=True)
    t = await AsyncLeaseTable.create(conn, sys.argv[1])
    await t.claim(hb.worker_id)
    print("claimed", flush=True)
    await asyncio.sleep(600)
asyncio.run(main())
"""
    p = subprocess.Popen([PYTHON, "-c", code, table], env=child_env(pg), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    assert p.stdout.readline().strip() == "claimed"
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == -signal.SIGTERM, p.stdout.read()
    assert pg.val("SELECT status FROM pm_pipeline.worker_heartbeats WHERE worker_id = 'py-async-term'") == "stopped"
    assert pg.val("SELECT claimed_by IS NULL FROM %s" % table) is True
