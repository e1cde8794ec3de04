#!/usr/bin/python3
"""A worker process for the kill benchmark: heartbeats (optionally bound to its
session), leases one row of pm_pipeline.company_research_queue, says "ready",
then keeps heartbeating until it is killed.

usage: worker.py DSN WORKER_ID WORKER_TYPE ROW_ID SESSION_BOUND(0|1) BEAT_SECONDS
"""
import sys
import time

import psycopg

dsn, wid, wtype, row_id, bound, beat = sys.argv[1:7]
bound = bound == "1"
beat = float(beat)
HB = ("SELECT pm_pipeline.upsert_worker_heartbeat(%s, %s, 'processing', "
      "p_session_bound => %s)")
with psycopg.connect(dsn, autocommit=True) as c:
    c.execute(HB, (wid, wtype, bound))
    n = c.execute("UPDATE pm_pipeline.company_research_queue "
                  "SET state = 'claimed', claimed_by = %s, "
                  "lease_expires_at = now() + interval '5 minutes', attempts = attempts + 1 "
                  "WHERE id = %s", (wid, int(row_id))).rowcount
    if n != 1:
        print("no row %s" % row_id, flush=True)
        sys.exit(1)
    print("ready", flush=True)
    while True:
        time.sleep(beat)
        c.execute(HB, (wid, wtype, bound))
