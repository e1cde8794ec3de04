#!/usr/bin/python3
"""worker_heartbeat benchmarks, side by side with the seed's plain-SQL design.

One run starts two throwaway clusters in a temp dir (removed at exit):
  A: shared_preload_libraries = 'worker_heartbeat'
     db "seed"  - the seed's design (seed_schema.sql, loaded verbatim)
     db "ext"   - CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline
     dbs "c12", "c13", "c13d" - fenced claims on a 1.2 catalog, on 1.3 and
                  on 1.3 with a drain rule in force (--only claims13)
  B: no preload (the hosted-Supabase case)
     db "extnp" - the extension; before PostgreSQL 17 every heartbeat is a
                  table write, from 17 an unchanged one is absorbed in a DSM
                  segment (issue 17 item 1)
     db "seed"  - the seed's design again, for the heartbeat figures side by
                  side with "extnp" in one cluster
and prints one table. Every number is measured in this run; the only computed
figure (the seed's kill -> lease back time, which is a 5 min + 60 s cycle) is
labelled as such.
"""
import argparse
import atexit
import json
import os
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import psycopg

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
T0 = time.monotonic()
SCHEMA = "pm_pipeline"


def log(msg):
    print("[%6.1fs] %s" % (time.monotonic() - T0, msg), file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------
FULL = dict(
    hb_workers=1000, hb_clients=8, hb_total=1_000_000,   # heartbeats for fig 1-3
    hb_rounds=2, hb_secs=6, topup_clients=16,
    reap_workers=100_000, reap_rows=1_000_000, reap_tables=4, reap_dead=1000,
    reap_idle_reps=21, reap_dead_reps=7, reaper_idle_passes=10,
    kills=20, deadline_kills=5, deadline_s=2, deadline_beat_s=0.5,
    claim_rows=100_000, claim_clients=8, claim_secs=5, claim_rounds=4,
    claim_hb_workers=1000, claim_hb_interval_s=10,
    claim13_rows=100_000, claim13_clients=8, claim13_secs=5, claim13_rounds=6,
    max_workers=200_000,
)
QUICK = dict(
    hb_workers=100, hb_clients=8, hb_total=8_000,
    hb_rounds=1, hb_secs=1, topup_clients=8,
    reap_workers=2_000, reap_rows=20_000, reap_tables=2, reap_dead=20,
    reap_idle_reps=3, reap_dead_reps=1, reaper_idle_passes=2,
    kills=2, deadline_kills=1, deadline_s=1, deadline_beat_s=0.2,
    claim_rows=10_000, claim_clients=4, claim_secs=1, claim_rounds=1,
    claim_hb_workers=100, claim_hb_interval_s=1,
    claim13_rows=5_000, claim13_clients=4, claim13_secs=1, claim13_rounds=1,
    max_workers=20_000,
)


# --------------------------------------------------------------------------
# process / cluster helpers
# --------------------------------------------------------------------------
class Env:
    pass


ENV = Env()


def pg_config(flag):
    pgc = os.environ.get("PG_CONFIG", "pg_config")
    return subprocess.check_output([pgc, flag], text=True).strip()


def as_server_user(cmd):
    """Postgres refuses to run as root: run server programs as ENV.user."""
    if os.geteuid() == 0:
        return ["runuser", "-u", ENV.user, "--"] + cmd
    return cmd


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, name, preload, max_workers):
        self.name = name
        self.preload = preload
        self.dir = os.path.join(ENV.tmp, name)
        self.port = free_port()
        self.sock = ENV.tmp
        self.started = False
        bindir = ENV.bindir
        subprocess.run(as_server_user([os.path.join(bindir, "initdb"), "-D", self.dir,
                                       "-U", "bench", "--auth=trust", "-E", "UTF8",
                                       "--no-sync", "--locale=C"]),
                       check=True, stdout=subprocess.DEVNULL)
        conf = [
            "port = %d" % self.port,
            "listen_addresses = ''",
            "unix_socket_directories = '%s'" % self.sock,
            "max_connections = 120",
            "shared_buffers = 512MB",
            "max_wal_size = 8GB",
            "checkpoint_timeout = 30min",
            "log_min_messages = warning",
            "logging_collector = off",
            # 100,000 workers of one role in the reaping figure (the default
            # per-role limit is 10,000)
            "worker_heartbeat.max_workers_per_role = 0",
        ]
        if preload:
            conf += ["shared_preload_libraries = 'worker_heartbeat'",
                     "worker_heartbeat.max_workers = %d" % max_workers]
        with open(os.path.join(self.dir, "postgresql.conf"), "a") as f:
            f.write("\n# bench\n" + "\n".join(conf) + "\n")

    def start(self):
        self.logfile = os.path.join(ENV.tmp, self.name + ".log")
        r = subprocess.run(as_server_user([os.path.join(ENV.bindir, "pg_ctl"), "-D", self.dir,
                                           "-l", self.logfile, "-w", "-t", "60", "start"]),
                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            with open(self.logfile) as f:
                sys.stderr.write(f.read()[-3000:])
            raise RuntimeError("cluster %s did not start" % self.name)
        self.started = True

    def stop(self):
        if self.started:
            subprocess.run(as_server_user([os.path.join(ENV.bindir, "pg_ctl"), "-D", self.dir,
                                           "-m", "immediate", "-w", "stop"]),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.started = False

    def dsn(self, db):
        return "host=%s port=%d dbname=%s user=bench" % (self.sock, self.port, db)

    def connect(self, db):
        return psycopg.connect(self.dsn(db), autocommit=True)

    def pgbench_args(self, db):
        return ["-h", self.sock, "-p", str(self.port), "-U", "bench", db]


def cleanup():
    for c in getattr(ENV, "clusters", []):
        try:
            c.stop()
        except Exception:
            pass
    if getattr(ENV, "tmp", None) and not getattr(ENV, "keep", False):
        shutil.rmtree(ENV.tmp, ignore_errors=True)


def q1(conn, sql, args=None):
    row = conn.execute(sql, args).fetchone()
    return row[0] if row else None


# --------------------------------------------------------------------------
# pgbench
# --------------------------------------------------------------------------
def write_script(name, text):
    path = os.path.join(ENV.tmp, name)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o644)
    return path


def pgbench(cluster, db, script, clients, transactions=None, seconds=None, rate=None,
            background=False):
    cmd = [ENV.pgbench, "-n", "-M", "prepared", "-f", script, "-c", str(clients),
           "-j", str(min(clients, 2))]
    if transactions is not None:
        cmd += ["-t", str(transactions)]
    if seconds is not None:
        cmd += ["-T", str(seconds)]
    if rate is not None:
        cmd += ["-R", str(rate)]
    cmd += cluster.pgbench_args(db)
    if background:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return parse_pgbench(r.returncode, r.stdout, cmd)


def parse_pgbench(rc, out, cmd):
    m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    if rc != 0 or not m:
        raise RuntimeError("pgbench failed (%s):\n%s" % (" ".join(cmd), out[-2000:]))
    done = re.search(r"number of transactions actually processed: (\d+)", out)
    return dict(tps=float(m.group(1)), processed=int(done.group(1)) if done else None,
                failed=int(failed.group(1)) if failed else 0)


# --------------------------------------------------------------------------
# setup of the three databases
# --------------------------------------------------------------------------
QUEUE_DDL = """
CREATE TABLE {s}.{t} (
    id               BIGSERIAL PRIMARY KEY,
    run_id           UUID NOT NULL,
    domain           TEXT NOT NULL,
    state            TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'claimed', 'done', 'failed')),
    claimed_by       TEXT,
    lease_expires_at TIMESTAMPTZ,
    attempts         INTEGER NOT NULL DEFAULT 0,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX ON {s}.{t} (id) WHERE state = 'pending';
CREATE INDEX ON {s}.{t} (claimed_by) WHERE claimed_by IS NOT NULL;
"""
# The extension's registered tables get the same shape as the seed's queue
# (a fixture of the benchmark, written here, not taken from the seed file),
# plus the index on the expires column that register_lease_table() asks for
# (NOTICE "has no index on column lease_expires_at": without it every reaping
# pass scans the whole table). The seed's own queue stays verbatim.
EXPIRES_IDX = """
CREATE INDEX ON {s}.{t} (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
"""


def setup_databases(P):
    A = ENV.A
    with A.connect("postgres") as c:
        c.execute("CREATE DATABASE seed")
        if ENV.have_ext:
            c.execute("CREATE DATABASE ext")
        # the claim benchmark's "no extension" ceiling: the extension's queue
        # table, same shape and indexes, in a database without the extension
        c.execute("CREATE DATABASE plain")
    with A.connect("plain") as c:
        c.execute("CREATE SCHEMA pm_pipeline")
        c.execute(QUEUE_DDL.format(s=SCHEMA, t="company_research_queue"))
        c.execute(EXPIRES_IDX.format(s=SCHEMA, t="company_research_queue"))
    with A.connect("seed") as c:
        with open(ENV.seed_sql) as f:
            c.execute(f.read())
    log("seed design loaded from %s" % ENV.seed_sql)
    ENV.sides = []          # extension sides that could be set up
    ENV.side_errors = {}
    if ENV.have_ext:
        for key, cl, db in (("ext", A, "ext"), ("extnp", ENV.B, "extnp")):
            try:
                if cl is ENV.B:
                    with cl.connect("postgres") as c:
                        c.execute("CREATE DATABASE extnp")
                with cl.connect(db) as c:
                    c.execute("CREATE SCHEMA pm_pipeline")
                    c.execute("CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline")
                    c.execute(QUEUE_DDL.format(s=SCHEMA, t="company_research_queue"))
                    c.execute(EXPIRES_IDX.format(s=SCHEMA, t="company_research_queue"))
                    c.execute("SELECT pm_pipeline.register_lease_table("
                              "'pm_pipeline.company_research_queue'::regclass, 'claimed_by', "
                              "'lease_expires_at', '{\"state\": \"pending\"}'::jsonb)")
                    # worker types are configured once, up front, as an operator would
                    for wtype, dead_after in (("killable", "1 hour"), ("reap_live", "1 hour"),
                                              ("reap_doomed", "1 hour"),
                                              ("deadline", "%d seconds" % P["deadline_s"])):
                        c.execute("SELECT pm_pipeline.set_worker_type_dead_after(%s, %s::interval)",
                                  (wtype, dead_after))
                ENV.sides.append((key, cl, db))
                log("extension created in %s/%s" % (cl.name, db))
            except psycopg.Error as e:
                msg = str(e).strip().splitlines()[0]
                ENV.side_errors[key] = "setup failed: %s" % msg
                log("%s: extension setup FAILED in %s/%s: %s" % (key, cl.name, db, msg))


def guarded(key, figure, fn, *args):
    """Run one side's figure; a failure is recorded (and printed with the table)
    instead of ending the whole run."""
    try:
        return fn(*args)
    except (psycopg.Error, RuntimeError, subprocess.SubprocessError, OSError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
        ENV.side_errors[key] = ENV.side_errors.get(key, "") + "%s%s failed: %s" % (
            "; " if key in ENV.side_errors else "", figure, msg)
        log("%s: %s FAILED: %s" % (key, figure, msg))
        return None


def variants():
    """(key, cluster, db) for every side measured."""
    return list(ENV.sides) + [("seed", ENV.A, "seed")]


def wait_reaper_passes(cl, db, n=2, timeout=10.0):
    """Wait until the reaper of db has completed n more passes (so that the
    heartbeats held in shared memory are flushed to the table)."""
    with cl.connect(db) as c:
        def passes():
            try:
                return q1(c, "SELECT passes FROM pm_pipeline.reaper_status() "
                             "WHERE database = current_database()")
            except psycopg.Error:
                return None
        p0 = passes()
        if p0 is None:
            time.sleep(2.5)
            return False
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            p = passes()
            if p is not None and p >= p0 + n:
                return True
            time.sleep(0.05)
    return False


# --------------------------------------------------------------------------
# profiling (--profile DIR): perf samples (cpu-clock: this machine's VM has no
# hardware counters) and the plans of the statements run inside a reaping pass
# --------------------------------------------------------------------------
class Perf:
    """perf record -e cpu-clock for the duration of a with-block."""
    def __init__(self, name, pid=None):
        self.name, self.pid, self.p = name, pid, None

    def __enter__(self):
        if not ENV.profile or not shutil.which("perf") or os.geteuid() != 0:
            return self
        self.data = os.path.join(ENV.profile, self.name + ".perf.data")
        target = ["-p", str(self.pid)] if self.pid else ["-a"]
        self.p = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "999", "-g",
                                   "-o", self.data] + target,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        return self

    def __exit__(self, *exc):
        if not self.p:
            return False
        self.p.send_signal(signal.SIGINT)
        self.p.wait()
        for sort, suffix, comm in (("comm,dso", "by_process", []), ("dso,symbol", "by_symbol", ["--comm", "postgres"])):
            with open(os.path.join(ENV.profile, "%s.%s.txt" % (self.name, suffix)), "w") as f:
                subprocess.run(["perf", "report", "-i", self.data, "--no-children", "--stdio",
                                "-g", "none", "--percent-limit", "0.3", "--sort", sort] + comm,
                               stdout=f, stderr=subprocess.DEVNULL)
        with open(os.path.join(ENV.profile, "%s.callers.txt" % self.name), "w") as f:
            subprocess.run(["perf", "report", "-i", self.data, "--children", "--stdio",
                            "-g", "caller,0.5,callee,function,percent", "--percent-limit", "2",
                            "--comm", "postgres", "--sort", "symbol"],
                           stdout=f, stderr=subprocess.DEVNULL)
        os.unlink(self.data)
        return False


def explain_pass(c, name):
    """Plans (with timings) of every statement a reaping pass runs, via auto_explain."""
    if not ENV.profile:
        return
    notes = []
    c.add_notice_handler(lambda d: notes.append(d.message_primary))
    c.execute("LOAD 'auto_explain'")
    for k, v in (("log_min_duration", "0"), ("log_analyze", "on"), ("log_buffers", "on"),
                 ("log_nested_statements", "on"), ("log_level", "notice"), ("log_timing", "on")):
        c.execute("SET auto_explain.%s = %s" % (k, v))
    t0 = time.perf_counter()
    c.execute("SELECT pm_pipeline.release_dead_worker_leases()")
    wall = (time.perf_counter() - t0) * 1000
    c.execute("SET auto_explain.log_min_duration = -1")
    with open(os.path.join(ENV.profile, name + ".plans.txt"), "w") as f:
        f.write("-- one pass, %.3f ms on the client's clock\n\n" % wall)
        f.write("\n\n".join(notes))


# --------------------------------------------------------------------------
# figures 1-3: heartbeats/s, WAL per heartbeat, table size after 1M beats
# --------------------------------------------------------------------------
def hb_script(P):
    return write_script("hb.sql",
                        "\\set w random(1, %d)\n"
                        "SELECT pm_pipeline.upsert_worker_heartbeat('w' || :w, "
                        "'company_research', 'active');\n" % P["hb_workers"])


def setup_seed_np():
    """The seed's design in cluster B too (database "seed"), so that the
    not-preloaded extension is measured side by side with it in one cluster
    (issue 17 item 1: on PostgreSQL 17+ the heartbeat cache lives in a DSM
    segment without preload). [] when there is no cluster B."""
    if ENV.B is None or not any(k == "extnp" for k, _, _ in ENV.sides):
        return []
    try:
        with ENV.B.connect("postgres") as c:
            c.execute("CREATE DATABASE seed")
            ENV.np_major = int(q1(c, "SHOW server_version_num")) // 10000
        with ENV.B.connect("seed") as c:
            with open(ENV.seed_sql) as f:
                c.execute(f.read())
    except psycopg.Error as e:
        ENV.side_errors["seednp"] = "setup failed: %s" % str(e).strip().splitlines()[0]
        return []
    return [("seednp", ENV.B, "seed")]


def np_cached():
    """Whether the not-preloaded extension has a heartbeat cache (PostgreSQL
    17+: the DSM registry), whose flushes the WAL windows must include."""
    return getattr(ENV, "np_major", 0) >= 17


def hb_np_report(P, R, out):
    """Issue 17 item 1: the not-preloaded extension against the seed's design
    in the same cluster (B); the goals are judged from PostgreSQL 17 on."""
    n, s = R["extnp"], R.get("seednp", {})
    if n.get("hb_per_s") is None or s.get("hb_per_s") is None:
        return []
    major = getattr(ENV, "np_major", 0)
    out.write("\nnot preloaded, side by side with the seed's design in cluster B (PostgreSQL %d, %s): "
              "%.0f hb/s vs %.0f hb/s = %.2fx; WAL %.1f B vs %.1f B per heartbeat = %.1f%%\n"
              % (major, "heartbeat cache in a DSM segment" if np_cached() else "no cache before 17: every beat a write",
                 n["hb_per_s"], s["hb_per_s"], n["hb_per_s"] / s["hb_per_s"],
                 n["wal_per_hb"], s["wal_per_hb"], 100.0 * n["wal_per_hb"] / s["wal_per_hb"]))
    if not np_cached():
        return []
    return [("not preloaded on %d: heartbeats/s vs the seed in the same cluster" % major, "np >= 5x seed (cluster B)",
             n["hb_per_s"] >= 5 * s["hb_per_s"]),
            ("not preloaded on %d: WAL per heartbeat vs the seed in the same cluster" % major,
             "np <= 10% of seed (cluster B)", n["wal_per_hb"] <= 0.10 * s["wal_per_hb"])]


def hb_directive_script(P):
    """1.3: heartbeat() takes upsert_worker_heartbeat's arguments and answers
    with the worker's directive (no drain/pause rule in force here)."""
    return write_script("hb_directive.sql",
                        "\\set w random(1, %d)\n"
                        "SELECT pm_pipeline.heartbeat('w' || :w, "
                        "'company_research', 'active');\n" % P["hb_workers"])


def fig_heartbeats(P, R):
    """Figures 1-3. hb/s: median of short timed pgbench runs, interleaved side by
    side with the ceiling (SELECT 1). Then every side is topped up to hb_total
    heartbeats (the seed's and the not-preloaded extension's in parallel: they
    live in different clusters) and the table is measured. WAL per heartbeat:
    LSN distance over every window in which a side was beating (its cluster
    otherwise idle), divided by all its heartbeats; the preloaded extension's
    windows end only after two more reaper passes, so its flushes are counted."""
    script = hb_script(P)
    directive_script = hb_directive_script(P)
    sel1 = write_script("select1.sql", "SELECT 1;\n")
    rel = "pm_pipeline.worker_heartbeats"
    sides = variants() + setup_seed_np()
    R.setdefault("seednp", {})
    acc = {}   # key -> dict(done, wal)
    # sides whose beats stay in shared memory: their windows end after two
    # reaper passes, so that the flushes are counted
    cached = ("ext", "extnp") if np_cached() else ("ext",)

    def first_beats(key, cl, db):
        with cl.connect(db) as c:
            c.execute("SELECT pm_pipeline.upsert_worker_heartbeat('w' || g, "
                      "'company_research', 'active') FROM generate_series(1, %s) g"
                      % P["hb_workers"])
            if key in cached:
                wait_reaper_passes(cl, db, 1)
            c.execute("VACUUM ANALYZE %s" % rel)
            R[key]["size_first"] = q1(c, "SELECT pg_total_relation_size(%s::regclass)", (rel,))
            c.execute("CHECKPOINT")
        acc[key] = dict(done=0, wal=0.0, tps=[], directive_tps=[])

    def window(key, cl, db, clients, transactions=None, seconds=None, background=False, sql=None):
        """Run heartbeats (or start them) and account their WAL."""
        c = cl.connect(db)
        lsn0 = q1(c, "SELECT pg_current_wal_lsn()")
        args = (cl, db, sql or script, clients)
        kw = dict(transactions=transactions, seconds=seconds)
        if background:
            p = pgbench(*args, background=True, **kw)
        else:
            with Perf("hb_%s" % key):
                r = pgbench(*args, **kw)
            p = None

        def finish(r=None):
            if p is not None:
                out, _ = p.communicate()
                r = parse_pgbench(p.returncode, out, ["heartbeats " + key])
            if r["failed"]:
                raise RuntimeError("%s: %d heartbeats failed" % (key, r["failed"]))
            if key in cached:
                wait_reaper_passes(cl, db, 2)
            lsn1 = q1(c, "SELECT pg_current_wal_lsn()")
            acc[key]["wal"] += float(q1(c, "SELECT pg_wal_lsn_diff(%s, %s)", (lsn1, lsn0)))
            acc[key]["done"] += r["processed"]
            c.close()
            return r
        return finish if background else finish(r)

    for key, cl, db in sides:
        guarded(key, "heartbeats", first_beats, key, cl, db)
    ceiling = []
    for rnd in range(P["hb_rounds"]):
        with Perf("hb_ceiling"):
            ceiling.append(pgbench(ENV.A, "seed", sel1, P["hb_clients"],
                                   seconds=P["hb_secs"])["tps"])
        log("heartbeats round %d ceiling: %.0f SELECT 1/s" % (rnd, ceiling[-1]))
        for key, cl, db in sides:
            if key not in acc:
                continue

            def warm(fn, key=key, cl=cl, db=db):
                # The shared-memory cache knows a worker per function: after
                # the other function's window, one committed beat per worker
                # first, so that each timed window is the steady state.
                if key != "seed":
                    with cl.connect(db) as c:
                        c.execute("SELECT count(pm_pipeline.%s('w' || g, 'company_research', 'active')) "
                                  "FROM generate_series(1, %d) g" % (fn, P["hb_workers"]))

            def timed(key=key, cl=cl, db=db):
                warm("upsert_worker_heartbeat")
                r = window(key, cl, db, P["hb_clients"], seconds=P["hb_secs"])
                acc[key]["tps"].append(r["tps"])
                log("heartbeats round %d %s: %.0f hb/s" % (rnd, key, r["tps"]))

            # The same heartbeats through heartbeat(), which returns the
            # directive (1.3): same round, same clients; which of the two
            # goes first alternates from round to round.
            def timed_directive(key=key, cl=cl, db=db):
                warm("heartbeat")
                r = window(key, cl, db, P["hb_clients"], seconds=P["hb_secs"], sql=directive_script)
                acc[key]["directive_tps"].append(r["tps"])
                log("heartbeats round %d %s heartbeat(): %.0f hb/s" % (rnd, key, r["tps"]))

            # the seed's design has no heartbeat() (cluster A's seed and cluster B's seednp)
            order = [timed] if key.startswith("seed") else ([timed, timed_directive] if rnd % 2 == 0
                                                   else [timed_directive, timed])
            for fn in order:
                guarded(key, "heartbeats", fn)
    R["ceiling"]["hb_per_s"] = statistics.median(ceiling)
    # top up to hb_total heartbeats: seed (cluster A) with extnp (cluster B), then ext (A)
    for group in (("seed", "extnp"), ("ext",)):
        running = []
        for key, cl, db in sides:
            if key in group and key in acc and acc[key]["tps"]:
                left = P["hb_total"] - acc[key]["done"]
                if left <= 0:
                    continue
                per_client = max(1, left // P["topup_clients"])
                log("%s: %d more heartbeats (%d clients) to reach %d ..."
                    % (key, per_client * P["topup_clients"], P["topup_clients"], P["hb_total"]))
                fin = guarded(key, "heartbeats", window, key, cl, db, P["topup_clients"],
                              per_client, None, True)
                if fin:
                    running.append((key, fin))
        for key, fin in running:
            r = guarded(key, "heartbeats", fin)
            if r:
                log("%s: top-up ran at %.0f hb/s" % (key, r["tps"]))
    for key, cl, db in sides:
        if key not in acc or not acc[key]["tps"]:
            continue
        a = acc[key]
        with cl.connect(db) as c:
            size1 = q1(c, "SELECT pg_total_relation_size(%s::regclass)", (rel,))
        R[key]["hb_per_s"] = statistics.median(a["tps"])
        if a["directive_tps"]:
            R[key]["hb_directive_per_s"] = statistics.median(a["directive_tps"])
            R[key]["hb_directive_vs_upsert"] = statistics.median(
                [d / u for d, u in zip(a["directive_tps"], a["tps"]) if u])
        R[key]["wal_per_hb"] = a["wal"] / a["done"]
        R[key]["hb_done"] = a["done"]
        if a["done"] >= P["hb_total"] * 0.99:
            R[key]["size_after"] = size1
            R[key]["size_growth"] = size1 / R[key]["size_first"]
        log("%s: %.0f hb/s, %.1f WAL bytes/hb over %d heartbeats, table %d -> %d bytes"
            % (key, R[key]["hb_per_s"], R[key]["wal_per_hb"], a["done"], R[key]["size_first"], size1))


# --------------------------------------------------------------------------
# figure 6: claim throughput while 1000 workers heartbeat and the reaper runs
# --------------------------------------------------------------------------
def claim_script(P):
    return write_script("claim.sql", """\\set w random(1, %d)
UPDATE pm_pipeline.company_research_queue q
   SET state = 'claimed', claimed_by = 'w' || :w,
       lease_expires_at = now() + interval '300 seconds', attempts = q.attempts + 1
 WHERE q.id = (SELECT id FROM pm_pipeline.company_research_queue
                WHERE state = 'pending' ORDER BY id
                FOR UPDATE SKIP LOCKED LIMIT 1)
RETURNING q.id;
""" % P["claim_hb_workers"])


def reset_queue(cl, db, rows):
    with cl.connect(db) as c:
        c.execute("TRUNCATE pm_pipeline.company_research_queue RESTART IDENTITY")
        c.execute("INSERT INTO pm_pipeline.company_research_queue (run_id, domain) "
                  "SELECT '00000000-0000-0000-0000-000000000001', 'd' || g || '.example' "
                  "FROM generate_series(1, %d) g" % rows)
        c.execute("VACUUM ANALYZE pm_pipeline.company_research_queue")
        c.execute("CHECKPOINT")


def fig_claims(P, R):
    claim = claim_script(P)
    hb = hb_script(dict(P, hb_workers=P["claim_hb_workers"]))
    rate = P["claim_hb_workers"] / P["claim_hb_interval_s"]
    # (result key, cluster, db, heartbeats running?)
    runs = [("ceiling", ENV.A, "plain", False), ("seed", ENV.A, "seed", True)]
    runs += [(k, cl, db, True) for k, cl, db in ENV.sides]
    samples = {k: [] for k, _, _, _ in runs}
    def claim_round(key, cl, db, with_hb, rnd):
        reset_queue(cl, db, P["claim_rows"])
        bg = None
        if with_hb:
            bg = pgbench(cl, db, hb, 2, seconds=P["claim_secs"] + 1, rate=rate,
                         background=True)
            time.sleep(0.5)
        try:
            r = pgbench(cl, db, claim, P["claim_clients"], seconds=P["claim_secs"])
        finally:
            if bg:
                out, _ = bg.communicate()
        if bg:
            parse_pgbench(bg.returncode, out, ["heartbeat load"])
        with cl.connect(db) as c:
            claimed = q1(c, "SELECT count(*) FROM pm_pipeline.company_research_queue "
                            "WHERE state = 'claimed'")
        samples[key].append(r["tps"])
        log("claims round %d %s: %.0f claims/s (%d rows claimed)" % (rnd, key, r["tps"], claimed))
    for rnd in range(P["claim_rounds"]):
        for key, cl, db, with_hb in runs:
            guarded(key, "claims", claim_round, key, cl, db, with_hb, rnd)
    for key in samples:
        if samples[key]:
            R[key]["claims_per_s"] = statistics.median(samples[key])
    # the machine is noisy: compare each round with the no-extension run just before it
    for key in samples:
        if key != "ceiling" and samples[key] and len(samples[key]) == len(samples["ceiling"]):
            R[key]["claims_vs_none"] = statistics.median(
                [a / b for a, b in zip(samples[key], samples["ceiling"])])
    R["_claim_samples"] = samples
    R["_claim_hb_rate"] = rate


# --------------------------------------------------------------------------
# claims13: fenced claim_leases() on a 1.2 catalog against 1.3 (issue 16)
# --------------------------------------------------------------------------
# 1.3 added a drain/pause check at the start of claim_leases(): a ROW
# EXCLUSIVE lock on worker_directives and the rules kept in the backend's
# memory (on a 1.2 catalog there is no such table and the check is skipped).
# Three databases of the preloaded cluster, set up alike: "c12" (CREATE
# EXTENSION ... VERSION '1.2'), "c13" (the default, 1.3, no rule) and "c13d"
# (1.3 with one drain rule in force, on a worker type the claimers are not of:
# the deploy case, old workers draining while new ones claim; a worker_type
# rule makes every claim look up the claimer's type). Rounds are interleaved,
# the order rotating; the figure is the median of the per-round ratios.
C13_SIDES = (("c12", "1.2", False), ("c13", None, False), ("c13d", None, True))
C13_TABLE = "claim_queue"


def claims13_script(P):
    # one transaction of pgbench: claim one pending row (fenced, jsonb form of
    # 1.2), complete it with its token, commit; the next round gets a fresh table
    return write_script("claims13.sql", """\
BEGIN;
SELECT (j->>'lease_token')::bigint AS tok
  FROM pm_pipeline.claim_leases('pm_pipeline.%s', 'claimer' || :client_id, 1, '5 minutes',
                                '{"state": "pending"}', '{"state": "claimed"}') j \\gset
SELECT pm_pipeline.complete_lease('pm_pipeline.%s', :tok, '{"state": "done"}');
COMMIT;
""" % (C13_TABLE, C13_TABLE))


def claims13_setup(P):
    A = ENV.A
    with A.connect("postgres") as c:
        for db, _, _ in C13_SIDES:
            c.execute("CREATE DATABASE %s" % db)
    for db, version, drain in C13_SIDES:
        with A.connect(db) as c:
            c.execute("CREATE SCHEMA pm_pipeline")
            c.execute("CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline" +
                      (" VERSION '%s'" % version if version else ""))
            c.execute(QUEUE_DDL.format(s=SCHEMA, t=C13_TABLE))
            c.execute(EXPIRES_IDX.format(s=SCHEMA, t=C13_TABLE))
            c.execute("ALTER TABLE pm_pipeline.%s ADD COLUMN lease_token bigint" % C13_TABLE)
            # register_lease_table()'s NOTICE asks for it: without it every
            # complete_lease() scans the whole table (~10 ms at 100,000 rows)
            c.execute("CREATE INDEX ON pm_pipeline.%s (lease_token)" % C13_TABLE)
            c.execute("SELECT pm_pipeline.register_lease_table('pm_pipeline.%s'::regclass, "
                      "'claimed_by', 'lease_expires_at', '{\"state\": \"pending\"}'::jsonb, "
                      "'lease_token')" % C13_TABLE)
            c.execute("SELECT pm_pipeline.set_worker_type_dead_after('claimer', '1 hour')")
            for i in range(P["claim13_clients"]):
                c.execute("SELECT pm_pipeline.upsert_worker_heartbeat(%s, 'claimer')", ("claimer%d" % i,))
            if drain:
                c.execute("SELECT pm_pipeline.drain_workers(p_worker_type => 'claimer_old')")
            v = q1(c, "SELECT extversion FROM pg_extension WHERE extname = 'worker_heartbeat'")
            rules = (q1(c, "SELECT count(*) FROM pm_pipeline.worker_directives")
                     if v != "1.2" else None)
            log("claims13: %s: extension %s, drain rules %s" % (db, v, rules))
            if (version or "1.3") != v or (drain and rules != 1):
                raise RuntimeError("claims13: %s has extension %s and %s rules" % (db, v, rules))


def claims13_reset(db, rows):
    with ENV.A.connect(db) as c:
        c.execute("TRUNCATE pm_pipeline.%s RESTART IDENTITY" % C13_TABLE)
        c.execute("INSERT INTO pm_pipeline.%s (run_id, domain) "
                  "SELECT '00000000-0000-0000-0000-000000000001', 'd' || g || '.example' "
                  "FROM generate_series(1, %d) g" % (C13_TABLE, rows))
        c.execute("VACUUM ANALYZE pm_pipeline.%s" % C13_TABLE)
        c.execute("CHECKPOINT")


def fig_claims13(P, R):
    claims13_setup(P)
    script = claims13_script(P)
    samples = {db: [] for db, _, _ in C13_SIDES}
    order = [db for db, _, _ in C13_SIDES]
    for rnd in range(P["claim13_rounds"]):
        for db in order[rnd % len(order):] + order[:rnd % len(order)]:
            claims13_reset(db, P["claim13_rows"])
            r = pgbench(ENV.A, db, script, P["claim13_clients"], seconds=P["claim13_secs"])
            if r["failed"]:
                raise RuntimeError("claims13: %d failed transactions in %s" % (r["failed"], db))
            with ENV.A.connect(db) as c:
                done = q1(c, "SELECT count(*) FROM pm_pipeline.%s WHERE state = 'done'" % C13_TABLE)
            samples[db].append(r["tps"])
            log("claims13 round %d %s: %.0f claims/s (%d rows done)" % (rnd, db, r["tps"], done))
    out = {"samples": samples, "uptime": load_average()}
    for db in samples:
        out[db + "_per_s"] = statistics.median(samples[db])
    for db in ("c13", "c13d"):
        rs = [a / b for a, b in zip(samples[db], samples["c12"])]
        out[db + "_ratios"] = rs
        out[db + "_vs_c12"] = statistics.median(rs)
    R["_claims13"] = out


def load_average():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def claims13_report(P, R, out):
    """The claims13 lines and their verdicts (judged in full mode)."""
    c = R.get("_claims13")
    if not c:
        return []
    out.write("\nclaims13: fenced claim_leases() + complete_lease(), %d clients, %d rounds of %d s, "
              "one cluster (preloaded), load %s at the end\n"
              % (P["claim13_clients"], P["claim13_rounds"], P["claim13_secs"], c["uptime"]))
    out.write("  %-34s %8.0f claims/s (median)  rounds %s\n"
              % ("1.2 catalog:", c["c12_per_s"], "/".join("%.0f" % v for v in c["samples"]["c12"])))
    verdicts = []
    for db, label in (("c13", "1.3, no rule"), ("c13d", "1.3, one drain rule, other type")):
        out.write("  %-34s %8.0f claims/s (median)  rounds %s  vs 1.2: %.2fx (per-round %s)\n"
                  % (label + ":", c[db + "_per_s"], "/".join("%.0f" % v for v in c["samples"][db]),
                     c[db + "_vs_c12"], ", ".join("%.2f" % v for v in c[db + "_ratios"])))
        verdicts.append(("claims13: claim_leases() on %s / on 1.2 (median of per-round ratios)" % label,
                         "1.3 claims >= 0.95x of 1.2's", c[db + "_vs_c12"] >= 0.95))
    return verdicts


# --------------------------------------------------------------------------
# figure 4: the reaping pass at 100k workers and 1M leased rows
# --------------------------------------------------------------------------
def exec_ms(c, sql):
    """Server-side execution time of one statement, from EXPLAIN ANALYZE."""
    plan = q1(c, "EXPLAIN (ANALYZE, FORMAT JSON) " + sql)
    if isinstance(plan, str):
        plan = json.loads(plan)
    return float(plan[0]["Execution Time"])


def reap_tables(P):
    return ["reap_queue_%d" % i for i in range(1, P["reap_tables"] + 1)]


def fill_leases(c, table, first_g, nrows, nworkers):
    """Rows first_g .. first_g+nrows-1 (global numbering), row g leased by worker
    'r' || ((g-1) % nworkers + 1) for an hour."""
    c.execute("""
      INSERT INTO pm_pipeline.{t} (id, run_id, domain, state, claimed_by, lease_expires_at, attempts)
      SELECT g, '00000000-0000-0000-0000-000000000002', 'd' || g || '.example', 'claimed',
             'r' || ((g - 1) %% %s + 1), now() + interval '1 hour', 1
        FROM generate_series(%s::bigint, %s::bigint) g""".format(t=table),
              (nworkers, first_g, first_g + nrows - 1))


def fig_reap_ext(P, R, key, cl, db):
    nw, nrows, nt, nd = P["reap_workers"], P["reap_rows"], P["reap_tables"], P["reap_dead"]
    per = nrows // nt
    with cl.connect(db) as c:
        try:
            c.execute("SELECT pm_pipeline.stop_reaper()")
        except psycopg.Error as e:
            log("%s: stop_reaper failed: %s" % (key, e))
        # each table gets rows g in [k*per+1, (k+1)*per]; global numbering lets us
        # map rows to workers: 10 leased rows per worker at 100k/1M
        for k, t in enumerate(reap_tables(P)):
            c.execute(QUEUE_DDL.format(s=SCHEMA, t=t))
            c.execute(EXPIRES_IDX.format(s=SCHEMA, t=t))
        c.execute("SELECT pm_pipeline.upsert_worker_heartbeat('r' || g, "
                  "CASE WHEN g <= %s THEN 'reap_doomed' ELSE 'reap_live' END, 'processing') "
                  "FROM generate_series(1, %s::int) g", (nd, nw))
        for k, t in enumerate(reap_tables(P)):
            fill_leases(c, t, k * per + 1, per, nw)
            c.execute("VACUUM ANALYZE pm_pipeline.%s" % t)
            c.execute("SELECT pm_pipeline.register_lease_table('pm_pipeline.%s'::regclass, "
                      "'claimed_by', 'lease_expires_at', '{\"state\": \"pending\"}'::jsonb)" % t)
        c.execute("VACUUM ANALYZE pm_pipeline.worker_heartbeats")
        c.execute("CHECKPOINT")
        log("%s: %d workers, %d leased rows in %d registered tables" % (key, nw, nrows, nt))
        idle = []
        for i in range(P["reap_idle_reps"] + 1):
            ms = exec_ms(c, "SELECT pm_pipeline.release_dead_worker_leases()")
            if i:
                idle.append(ms)
        released = q1(c, "SELECT pm_pipeline.release_dead_worker_leases()")
        if released:
            raise RuntimeError("%s: an idle pass released %s rows" % (key, released))
        R[key]["reap_idle_ms"] = statistics.median(idle)
        R[key]["reap_idle_max_ms"] = max(idle)
        log("%s: idle pass median %.3f ms (max %.3f)" % (key, statistics.median(idle), max(idle)))
        if ENV.profile:
            explain_pass(c, "reap_idle_" + key)
            with Perf("reap_idle_" + key, pid=c.info.backend_pid):
                for _ in range(300):
                    c.execute("SELECT pm_pipeline.release_dead_worker_leases()")
        dead = []
        for rep in range(P["reap_dead_reps"]):
            if rep:
                revive_doomed(c, P)
                c.execute("SELECT pm_pipeline.release_dead_worker_leases()")
            c.execute("SELECT pm_pipeline.set_worker_type_dead_after('reap_doomed', '1 second')")
            time.sleep(1.3)
            if ENV.profile and rep == P["reap_dead_reps"] - 1:
                explain_pass(c, "reap_dead_" + key)
                n, wall = None, None
            else:
                t0 = time.perf_counter()
                n = q1(c, "SELECT pm_pipeline.release_dead_worker_leases()")
                wall = (time.perf_counter() - t0) * 1000
            if wall is None:
                continue
            expected = sum(q1(c, "SELECT count(*) FROM pm_pipeline.%s WHERE id IS NOT NULL "
                                 "AND (id - 1) %% %s < %s" % (t, nw, nd)) for t in reap_tables(P))
            if n != expected:
                log("%s: dead pass released %s rows, expected %s" % (key, n, expected))
            dead.append(wall)
            log("%s: pass with %d dead workers released %s rows in %.2f ms (client clock)"
                % (key, nd, n, wall))
        R[key]["reap_dead_ms"] = statistics.median(dead)
        R["_reap_samples"]["%s pass from SQL" % key] = dead
        R[key]["reap_dead_rows"] = n
        if key == "ext":
            reap_floor(P, R, c)
        # The reaper's own passes (what runs forever): reaper_status().last_pass_ms.
        revive_doomed(c, P)
        c.execute("SELECT pm_pipeline.release_dead_worker_leases()")
        c.execute("SELECT pm_pipeline.start_reaper()")
        status = ("SELECT passes, last_pass_ms, workers_declared_dead, leases_released "
                  "FROM pm_pipeline.reaper_status() WHERE database = current_database()")

        def next_pass(after, timeout=5.0):
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                row = c.execute(status).fetchone()
                if row and row[0] is not None and row[0] > after:
                    return row
                time.sleep(0.005)
            raise RuntimeError("%s: the reaper made no pass within %.0f s" % (key, timeout))
        row = next_pass(-1)
        row = next_pass(row[0])          # skip the first (full) pass after a start
        idle = []
        reaper_pid = q1(c, "SELECT pid FROM pm_pipeline.reaper_status() "
                           "WHERE database = current_database()")
        for _ in range(P["reaper_idle_passes"]):
            row = next_pass(row[0])
            idle.append(row[1])
        if ENV.profile:
            # enough samples of the reaper's idle pass: 300 passes, 20 ms apart
            c.execute("ALTER SYSTEM SET worker_heartbeat.reap_interval = '20ms'")
            c.execute("SELECT pg_reload_conf()")
            time.sleep(0.5)
            with Perf("reaper_idle_" + key, pid=reaper_pid):
                for _ in range(300):
                    row = next_pass(row[0])
            c.execute("ALTER SYSTEM RESET worker_heartbeat.reap_interval")
            c.execute("SELECT pg_reload_conf()")
            time.sleep(1.5)
            row = next_pass(row[0])
        R[key]["reaper_idle_ms"] = statistics.median(idle)
        log("%s: the reaper's own idle passes: median %.3f ms (max %.3f) over %d passes"
            % (key, statistics.median(idle), max(idle), len(idle)))
        # The same passes 50 ms apart: what a pass costs when its caches are
        # warm. A pass after a second of idling on a quiet machine starts cold
        # (see docs/benchmarks.md): its wall time is mostly that.
        c.execute("ALTER SYSTEM SET worker_heartbeat.reap_interval = '50ms'")
        c.execute("SELECT pg_reload_conf()")
        row = next_pass(row[0])
        row = next_pass(row[0])
        warm = []
        for _ in range(P["reaper_idle_passes"] * 2):
            row = next_pass(row[0])
            warm.append(row[1])
        c.execute("ALTER SYSTEM RESET worker_heartbeat.reap_interval")
        c.execute("SELECT pg_reload_conf()")
        row = next_pass(row[0])
        R[key]["reaper_idle_warm_ms"] = statistics.median(warm)
        log("%s: the reaper's own idle passes 50 ms apart: median %.3f ms (max %.3f) over %d passes"
            % (key, statistics.median(warm), max(warm), len(warm)))
        reaper_dead = []
        for rep in range(P["reap_dead_reps"]):
            if rep:
                revive_doomed(c, P)
                row = next_pass(next_pass(row[0])[0])
            dead0, released0 = row[2], row[3]
            c.execute("SELECT pm_pipeline.set_worker_type_dead_after('reap_doomed', '1 second')")
            end = time.monotonic() + 10
            while time.monotonic() < end:
                row = next_pass(row[0])
                if row[2] - dead0 >= nd:
                    break
            reaper_dead.append(row[1])
            log("%s: the reaper's pass declaring %d workers dead and releasing %d leases: %.2f ms"
                % (key, row[2] - dead0, row[3] - released0, row[1]))
        R[key]["reaper_dead_ms"] = statistics.median(reaper_dead)
        R["_reap_samples"]["%s reaper pass" % key] = reaper_dead


def reap_floor(P, R, c):
    """The least any design must do for the 1000-dead pass at this size, with
    no extension code: read every live worker's last beat (one scan: no index
    on the timestamp, which would cost every heartbeat an index update) and
    one plain UPDATE per table of the same rows the pass releases, in one
    transaction. Reported as the 'ceiling' (a floor, for a time) of that row."""
    nw, nd = P["reap_workers"], P["reap_dead"]
    ids = ["r%d" % g for g in range(1, nd + 1)]
    scans, updates = [], []
    for rep in range(P["reap_dead_reps"]):
        for t in reap_tables(P):
            relet_dead_rows(c, t, nw)
        c.execute("CHECKPOINT")
        with c.transaction():
            t0 = time.perf_counter()
            c.execute("SELECT count(*) FROM pm_pipeline.worker_heartbeats "
                      "WHERE status = ANY (ARRAY['active', 'idle', 'processing'])")
            t1 = time.perf_counter()
            rows = 0
            for t in reap_tables(P):
                cur = c.execute("UPDATE pm_pipeline.%s SET claimed_by = NULL, lease_expires_at = NULL, "
                                "state = 'pending' WHERE claimed_by = ANY (%%s)" % t, (ids,))
                rows += cur.rowcount
        t2 = time.perf_counter()
        scans.append((t1 - t0) * 1000)
        updates.append((t2 - t1) * 1000)
        R["_reap_samples"].setdefault("floor", []).append(scans[-1] + updates[-1])
        log("floor: scan of %d workers %.2f ms, plain UPDATE of %d rows + commit %.2f ms"
            % (nw, scans[-1], rows, updates[-1]))
    R["ceiling"]["reap_floor_scan_ms"] = statistics.median(scans)
    R["ceiling"]["reap_floor_update_ms"] = statistics.median(updates)
    R["ceiling"]["reap_dead_ms"] = statistics.median(scans) + statistics.median(updates)
    R["ceiling"]["reaper_dead_ms"] = R["ceiling"]["reap_dead_ms"]


def revive_doomed(c, P):
    """The doomed workers beat again (their type's dead_after back to an hour)
    and get their leases back."""
    c.execute("SELECT pm_pipeline.set_worker_type_dead_after('reap_doomed', '1 hour')")
    c.execute("SELECT pm_pipeline.upsert_worker_heartbeat('r' || g, 'reap_doomed', "
              "'processing') FROM generate_series(1, %s::int) g", (P["reap_dead"],))
    for t in reap_tables(P):
        relet_dead_rows(c, t, P["reap_workers"])


def relet_dead_rows(c, t, nw):
    # As a claim does it: the rows locked FOR UPDATE, then updated, by one
    # transaction, which leaves its lock in each new version's xmax (the
    # direct release must see through a finished locker, as in production).
    c.execute("UPDATE pm_pipeline.{t} q SET state = 'claimed', claimed_by = 'r' || ((q.id - 1) %% %s + 1), "
              "lease_expires_at = now() + interval '1 hour' "
              "FROM (SELECT id FROM pm_pipeline.{t} WHERE claimed_by IS NULL FOR UPDATE) s "
              "WHERE q.id = s.id".format(t=t), (nw,))


def fig_reap_seed(P, R):
    nw, nrows, nd = P["reap_workers"], P["reap_rows"], P["reap_dead"]
    with ENV.A.connect("seed") as c:
        c.execute("TRUNCATE pm_pipeline.company_research_queue")
        c.execute("SELECT pm_pipeline.upsert_worker_heartbeat('r' || g, 'company_research', "
                  "'processing') FROM generate_series(1, %s::int) g", (nw,))
        fill_leases(c, "company_research_queue", 1, nrows, nw)
        c.execute("VACUUM ANALYZE pm_pipeline.company_research_queue")
        c.execute("VACUUM ANALYZE pm_pipeline.worker_heartbeats")
        c.execute("CHECKPOINT")
        log("seed: %d workers, %d leased rows" % (nw, nrows))
        idle = []
        for i in range(P["reap_idle_reps"] + 1):
            ms = exec_ms(c, "SELECT pm_pipeline.release_dead_worker_leases()")
            if i:
                idle.append(ms)
        R["seed"]["reap_idle_ms"] = statistics.median(idle)
        R["seed"]["reap_idle_max_ms"] = max(idle)
        log("seed: idle pass median %.3f ms" % statistics.median(idle))
        explain_pass(c, "reap_idle_seed")
        dead = []
        for rep in range(P["reap_dead_reps"]):
            if rep:
                c.execute("UPDATE pm_pipeline.worker_heartbeats SET last_heartbeat_at = now() "
                          "WHERE worker_id IN (SELECT 'r' || g FROM generate_series(1, %s::int) g)", (nd,))
                relet_dead_rows(c, "company_research_queue", nw)
            # 5 minutes of silence, simulated by back-dating the last beat
            c.execute("UPDATE pm_pipeline.worker_heartbeats "
                      "SET last_heartbeat_at = now() - interval '10 minutes' "
                      "WHERE worker_id IN (SELECT 'r' || g FROM generate_series(1, %s::int) g)", (nd,))
            t0 = time.perf_counter()
            n = q1(c, "SELECT pm_pipeline.release_dead_worker_leases()")
            wall = (time.perf_counter() - t0) * 1000
            dead.append(wall)
            log("seed: pass with %d dead workers released %s rows in %.2f ms" % (nd, n, wall))
        R["seed"]["reap_dead_ms"] = statistics.median(dead)
        # the seed's "reaper" is this same function run by cron / its 60 s loop
        R["seed"]["reaper_idle_ms"] = R["seed"]["reap_idle_ms"]
        R["seed"]["reaper_idle_warm_ms"] = R["seed"]["reap_idle_ms"]
        R["seed"]["reaper_dead_ms"] = R["seed"]["reap_dead_ms"]
        R["seed"]["reap_dead_rows"] = n


# --------------------------------------------------------------------------
# figure 5: SIGKILL of a worker process -> its lease back in the queue
# --------------------------------------------------------------------------
def spawn_worker(cl, db, wid, wtype, row_id, session_bound, beat_s):
    p = subprocess.Popen([sys.executable, os.path.join(HERE, "worker.py"), cl.dsn(db), wid,
                          wtype, str(row_id), "1" if session_bound else "0", str(beat_s)],
                         stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    if line != "ready":
        p.kill()
        raise RuntimeError("worker %s did not start: %r" % (wid, line))
    return p


def wait_released(c, row_ids, t_kill, timeout):
    """Poll until each row's lease is gone; returns {row_id: seconds since kill}."""
    out = {}
    end = time.monotonic() + timeout
    pending = set(row_ids)
    while pending and time.monotonic() < end:
        rows = c.execute("SELECT id FROM pm_pipeline.company_research_queue "
                         "WHERE id = ANY(%s) AND claimed_by IS NULL", (list(pending),)).fetchall()
        now = time.monotonic()
        for (rid,) in rows:
            out[rid] = now - t_kill
            pending.discard(rid)
        if pending:
            time.sleep(0.002)
    return out


def fig_kills(P, R):
    for key, cl, db in ENV.sides:
        def one(key=key, cl=cl, db=db):
            reset_queue(cl, db, 1000)
            with cl.connect(db) as c:
                lat = []
                for i in range(P["kills"]):
                    rid = i + 1
                    w = spawn_worker(cl, db, "kill-%s-%d" % (key, i), "killable", rid, True, 1.0)
                    t = time.monotonic()
                    os.kill(w.pid, signal.SIGKILL)
                    got = wait_released(c, [rid], t, 10.0)
                    w.wait()
                    if rid not in got:
                        raise RuntimeError("%s: lease of killed session-bound worker not back "
                                           "within 10 s" % key)
                    lat.append(got[rid])
                R[key]["kill_session_median_s"] = statistics.median(lat)
                R[key]["kill_session_max_s"] = max(lat)
                log("%s: session-bound kill -> lease back: median %.3f s, max %.3f s"
                    % (key, statistics.median(lat), max(lat)))
                # by heartbeat deadline: workers beat every deadline_beat_s, are killed together
                ws, rids = [], []
                for i in range(P["deadline_kills"]):
                    rid = 100 + i
                    ws.append(spawn_worker(cl, db, "dl-%s-%d" % (key, i), "deadline", rid, False,
                                           P["deadline_beat_s"]))
                    rids.append(rid)
                time.sleep(P["deadline_beat_s"] * 2)
                t = time.monotonic()
                for w in ws:
                    os.kill(w.pid, signal.SIGKILL)
                got = wait_released(c, rids, t, P["deadline_s"] + 8.0)
                for w in ws:
                    w.wait()
                if len(got) != len(rids):
                    raise RuntimeError("%s: leases of silent workers not back within dead_after + 8 s" % key)
                lat = list(got.values())
                R[key]["kill_deadline_median_s"] = statistics.median(lat)
                R[key]["kill_deadline_max_s"] = max(lat)
                log("%s: heartbeat-deadline kill (dead_after %d s) -> lease back: median %.3f s, max %.3f s"
                    % (key, P["deadline_s"], statistics.median(lat), max(lat)))
        guarded(key, "kill -> lease back", one)
    # The seed's design: no session binding; a worker is dead 5 minutes after its
    # last beat (30 s interval) and its lease goes back at the next run of the 60 s
    # cleanup loop. Kill at a uniformly random moment: last beat 15 s before on
    # average (30 s at worst), loop phase 30 s on average (60 s at worst).
    R["seed"]["kill_session_median_s"] = 300 - 15 + 30
    R["seed"]["kill_session_max_s"] = 300 + 60
    R["seed"]["kill_deadline_median_s"] = 300 - 15 + 30
    R["seed"]["kill_deadline_max_s"] = 300 + 60


# --------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------
def fmt(v, unit):
    if v is None:
        return "n/a"
    if unit == "bytes":
        if v >= 1 << 20:
            return "%.1f MiB" % (v / (1 << 20))
        if v >= 1 << 10:
            return "%.0f KiB" % (v / (1 << 10))
        return "%d B" % v
    if unit in ("s",):
        return "%.3f s" % v if v < 10 else "%.0f s" % v
    if unit == "ms":
        return "%.3f ms" % v if v < 10 else "%.1f ms" % v
    if unit == "x":
        return "%.2fx" % v
    if unit == "B/hb":
        return "%.1f B" % v
    return "%.0f" % v


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


# The 1000-dead passes (issue 17): within 1.3x of the floor measured in the
# same run, judged for both sides (BOTH_SIDES: the not-preloaded figure too).
FLOOR_GOAL = lambda e, s, c: c is not None and e <= 1.3 * c  # noqa: E731
BOTH_SIDES = ("reap_dead_ms", "reaper_dead_ms")


# (key, label, unit, higher_is_better, goal: (text, fn(R)->bool) or None)
def rows_spec(P):
    hbl = "%s hb from %d workers" % ("{:,}".format(P["hb_total"]), P["hb_workers"])
    at = "%s workers, %s leased rows in %d tables" % ("{:,}".format(P["reap_workers"]),
                                                     "{:,}".format(P["reap_rows"]), P["reap_tables"])
    return [
        ("hb_per_s", "heartbeats/s (pgbench, %d clients, %d workers)" % (P["hb_clients"], P["hb_workers"]),
         "/s", True, ("ext >= 5x seed", lambda e, s, c: e >= 5 * s)),
        ("hb_directive_per_s", "  the same through heartbeat(), which returns the directive (1.3)", "/s", True,
         None),
        ("hb_directive_vs_upsert", "  heartbeat() / upsert_worker_heartbeat() (median of per-round ratios)", "x",
         True, None),
        ("wal_per_hb", "WAL bytes per heartbeat (incl. reaper flushes)", "B/hb", False,
         ("ext <= 10% of seed", lambda e, s, c: e <= 0.10 * s)),
        ("size_first", "heartbeat table after first %d beats" % P["hb_workers"], "bytes", False, None),
        ("size_after", "heartbeat table after >= " + hbl, "bytes", False, None),
        ("size_growth", "  growth (after / first)", "x", False,
         ("ext <= 2x", lambda e, s, c: e <= 2.0)),
        ("reap_idle_ms", "reaping pass, nothing to do (" + at + ")", "ms", False,
         ("ext <= 1 ms", lambda e, s, c: e <= 1.0)),
        ("reap_dead_ms", "reaping pass, %d dead workers (%s)" % (P["reap_dead"], at), "ms", False,
         ("ext, np <= 1.3x floor", FLOOR_GOAL)),
        ("reaper_idle_ms", "  the reaper's own pass, nothing to do, passes 1 s apart (reaper_status)", "ms", False,
         ("ext <= 1 ms", lambda e, s, c: e <= 1.0)),
        ("reaper_idle_warm_ms", "  the reaper's own pass, nothing to do, passes 50 ms apart (warm caches)", "ms",
         False, ("ext <= 1 ms", lambda e, s, c: e <= 1.0)),
        ("reaper_dead_ms", "  the reaper's own pass, %d dead workers (reaper_status)" % P["reap_dead"], "ms",
         False, ("ext, np <= 1.3x floor", FLOOR_GOAL)),
        ("kill_session_median_s", "SIGKILL -> lease back, session-bound, median of %d" % P["kills"],
         "s", False, ("ext < 1 s", lambda e, s, c: e < 1.0)),
        ("kill_session_max_s", "SIGKILL -> lease back, session-bound, max of %d" % P["kills"],
         "s", False, ("ext < 1 s", lambda e, s, c: e < 1.0)),
        ("kill_deadline_median_s", "SIGKILL -> lease back, by deadline (dead_after %d s), median of %d"
         % (P["deadline_s"], P["deadline_kills"]), "s", False, None),
        ("kill_deadline_max_s", "SIGKILL -> lease back, by deadline (dead_after %d s), max of %d"
         % (P["deadline_s"], P["deadline_kills"]), "s", False, None),
        ("claims_per_s", "claims/s, %d clients, %d workers beating every %d s + reaper"
         % (P["claim_clients"], P["claim_hb_workers"], P["claim_hb_interval_s"]), "/s", True,
         None),
        ("claims_vs_none", "  claims/s relative to no extension (median of per-round ratios)", "x", True,
         ("ext >= 0.95x", lambda e, s, c: e >= 0.95)),
    ]


def build_table(P, R):
    header = ["figure", "extension", "ext/seed", "ext/ceiling", "not preloaded", "np/seed",
              "seed design", "ceiling", "goal", "met", "np >= seed"]
    lines = []
    verdicts = []
    for key, label, unit, hib, goal in rows_spec(P):
        e, n, s, c = (R["ext"].get(key), R["extnp"].get(key), R["seed"].get(key),
                      R["ceiling"].get(key))
        seed_txt = fmt(s, unit)
        if key.startswith("kill_"):
            seed_txt += " (computed)"
        met = ""
        if goal and e is not None and s is not None:
            ok = bool(goal[1](e, s, c))
            if key in BOTH_SIDES and n is not None:
                ok = ok and bool(goal[1](n, s, c))
            met = "yes" if ok else "NO"
            verdicts.append((label, goal[0], ok))
        if key == "hb_directive_vs_upsert" and e is not None and n is not None:
            # The heartbeat with a directive costs no more than today's (per-round noise +-5%).
            ok = e >= 0.95 and n >= 0.95
            met = "yes" if ok else "NO"
            verdicts.append((label, "heartbeat() >= 0.95x upsert_worker_heartbeat(), preloaded and not", ok))
        np_ok = ""
        if n is not None and s is not None and key not in ("size_first", "claims_vs_none"):
            better = n >= s if hib else n <= s
            np_ok = "yes" if better else "NO"
            verdicts.append((label, "not preloaded at least as good as seed", better))
        ceil_txt = fmt(c, unit) if c is not None else ""
        if key == "claims_per_s" and c is not None:
            ceil_txt += " (no ext, no hb)"
        if key in ("reap_dead_ms", "reaper_dead_ms") and c is not None:
            ceil_txt += " (floor)"
        lines.append([label, fmt(e, unit), fmt(ratio(e, s), "x") if e is not None else "n/a",
                      fmt(ratio(e, c), "x") if c is not None and e is not None else "",
                      fmt(n, unit), fmt(ratio(n, s), "x") if n is not None else "n/a",
                      seed_txt, ceil_txt,
                      goal[0] if goal else ("ext, np >= 0.95x" if key == "hb_directive_vs_upsert" else ""),
                      "not judged" if ENV.profile and met else met, np_ok])
    return header, lines, verdicts


def print_table(header, lines, out):
    widths = [max(len(str(r[i])) for r in [header] + lines) for i in range(len(header))]
    def row(r):
        return "| " + " | ".join(str(v).ljust(widths[i]) for i, v in enumerate(r)) + " |"
    out.write(row(header) + "\n")
    out.write("|" + "|".join("-" * (w + 2) for w in widths) + "|\n")
    for r in lines:
        out.write(row(r) + "\n")


# --------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI mode: small sizes, seconds")
    ap.add_argument("--json", help="also write all figures as JSON to this file")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (clusters stopped)")
    ap.add_argument("--seed-sql", help="path of seed_schema.sql (default: $WH_SEED_SQL, else "
                                       "../shared/baseline/seed_schema.sql relative to the repo)")
    ap.add_argument("--find-seed", action="store_true",
                    help="print the path of seed_schema.sql that would be used and exit")
    ap.add_argument("--user", help="unprivileged user that runs the clusters when run as root "
                                   "(default: postgres, else nobody)")
    ap.add_argument("--no-build", action="store_true",
                    help="never run make && make install, even if the extension is not installed")
    ap.add_argument("--profile", metavar="DIR",
                    help="also profile: perf (cpu-clock) during the heartbeat runs and reaping "
                         "passes, auto_explain plans of a pass; reports written to DIR. "
                         "Distorts the figures of that run")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="override a size parameter (e.g. --set hb_total=100000); see FULL in bench.py")
    ap.add_argument("--only", default="hb,claims,claims13,reap,kills",
                    help="comma-separated subset of figures: hb,claims,claims13,reap,kills "
                         "(claims13: fenced claim_leases() on a 1.2 catalog against 1.3)")
    args = ap.parse_args()
    if args.find_seed:
        p = args.seed_sql or find_seed_sql()
        print(os.path.abspath(p) if p else "")
        return 0 if p else 1
    P = dict(QUICK if args.quick else FULL)
    for kv in args.set:
        k, v = kv.split("=", 1)
        if k not in P:
            sys.exit("bench: unknown parameter %s (one of %s)" % (k, ", ".join(sorted(P))))
        P[k] = type(P[k])(float(v)) if isinstance(P[k], int) else type(P[k])(v)
    only = set(args.only.split(","))

    ENV.keep = args.keep
    ENV.profile = os.path.abspath(args.profile) if args.profile else None
    if ENV.profile:
        os.makedirs(ENV.profile, exist_ok=True)
    ENV.bindir = pg_config("--bindir")
    ENV.pgbench = os.path.join(ENV.bindir, "pgbench")
    if not os.path.exists(ENV.pgbench):
        ENV.pgbench = shutil.which("pgbench")
    ENV.seed_sql = args.seed_sql or find_seed_sql()
    if not ENV.seed_sql:
        sys.exit("bench: seed_schema.sql not found (../shared/baseline/ from the repo); use --seed-sql")
    ENV.seed_sql = os.path.abspath(ENV.seed_sql)

    control = os.path.join(pg_config("--sharedir"), "extension", "worker_heartbeat.control")
    if not os.path.exists(control) and os.geteuid() == 0 and not args.no_build:
        log("extension not installed: make && make install in %s" % REPO)
        r = subprocess.run("make -C '%s' -s && make -C '%s' -s install" % (REPO, REPO), shell=True, stderr=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL)
        if r.returncode != 0:
            log("build failed; measuring the seed's design only")
    ENV.so_path = os.path.join(pg_config("--pkglibdir"), "worker_heartbeat.so")
    ENV.have_ext = os.path.exists(control) and os.path.exists(ENV.so_path)
    ENV.so_stamp = so_stamp()
    if not ENV.have_ext:
        log("worker_heartbeat is not installed: only the seed's figures are measured")

    if os.geteuid() == 0:
        ENV.user = args.user or next((u for u in ("postgres", "nobody") if _user_exists(u)))
    ENV.tmp = tempfile.mkdtemp(prefix="whbench.")
    os.chmod(ENV.tmp, 0o755)
    if os.geteuid() == 0:
        pw = pwd.getpwnam(ENV.user)
        os.chown(ENV.tmp, pw.pw_uid, pw.pw_gid)
    atexit.register(cleanup)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *a: sys.exit(130))
    ENV.clusters = []
    ENV.A = Cluster("preloaded" if ENV.have_ext else "plain", ENV.have_ext, P["max_workers"])
    ENV.clusters.append(ENV.A)
    ENV.A.start()
    ENV.B = None
    if ENV.have_ext:
        ENV.B = Cluster("notpreloaded", False, P["max_workers"])
        ENV.clusters.append(ENV.B)
        ENV.B.start()
    log("clusters up in %s (ports %s)" % (ENV.tmp, ", ".join(str(c.port) for c in ENV.clusters)))
    setup_databases(P)

    R = {k: {} for k in ("ext", "extnp", "seed", "ceiling")}
    R["_reap_samples"] = {}
    if "hb" in only:
        fig_heartbeats(P, R)
    if "claims" in only:
        fig_claims(P, R)
    if "claims13" in only and ENV.have_ext:
        guarded("claims13", "claims13", fig_claims13, P, R)
    if "kills" in only:
        fig_kills(P, R)
    if "reap" in only:
        for k, cl, db in ENV.sides:
            guarded(k, "reaping pass", fig_reap_ext, P, R, k, cl, db)
        fig_reap_seed(P, R)

    header, lines, verdicts = build_table(P, R)
    out = sys.stdout
    out.write("\nworker_heartbeat benchmark (%s mode), PostgreSQL %s, %d cores, %s\n"
              % ("quick" if args.quick else "full",
                 re.search(r"\(PostgreSQL\) (\S+)", subprocess.check_output(
                     [os.path.join(ENV.bindir, "postgres"), "--version"], text=True)).group(1),
                 os.cpu_count(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())))
    out.write("extension = preloaded (cluster A); not preloaded = cluster B; seed design = "
              "seed_schema.sql in cluster A; ratios from this run\n\n")
    print_table(header, lines, out)
    verdicts += hb_np_report(P, R, out)  # issue 17 item 1
    verdicts += claims13_report(P, R, out)  # issue 16: claims unchanged by 1.3
    out.write("\nclaims/s: 'ceiling' is the same claim on the same queue table in a database without "
              "the extension, with no heartbeats; seed runs its own heartbeats at the same rate (%.0f/s).\n" % R.get("_claim_hb_rate", 0))
    out.write("claims/s samples (median taken): %s\n" % "; ".join(
        "%s %s" % (k, "/".join("%.0f" % v for v in vs)) for k, vs in R.get("_claim_samples", {}).items()))
    out.write("seed kill -> lease back is computed, not measured: dead_after 300 s minus half a 30 s "
              "heartbeat interval plus half a 60 s cleanup loop (median), 300 + 60 s (max).\n")
    if R["ceiling"].get("reap_floor_update_ms") is not None:
        out.write("reaping pass with %d dead workers: 'ceiling' is a floor measured in this run with no extension "
                  "code: one scan of the live workers (%.1f ms) plus a plain UPDATE of the same %s rows and its "
                  "commit (%.1f ms).\n" % (P["reap_dead"], R["ceiling"]["reap_floor_scan_ms"],
                                           "{:,}".format(P["reap_dead"] * P["reap_rows"] // P["reap_workers"]),
                                           R["ceiling"]["reap_floor_update_ms"]))
    if R.get("_reap_samples"):
        out.write("1000-dead pass samples, ms (median taken): %s\n" % "; ".join(
            "%s %s" % (k, "/".join("%.1f" % v for v in vs)) for k, vs in R["_reap_samples"].items()))
    out.write("\n")
    if ENV.profile:
        # perf and auto_explain slow some figures more than others (the floor
        # more than the pass once printed "met" for the 1000-dead pass).
        out.write("profiled run (--profile): the figures are distorted; goals not judged.\n")
    elif not args.quick:
        for label, goal, ok in verdicts:
            out.write("goal %-4s %s: %s\n" % ("met" if ok else "MISSED", goal, label.strip()))
    else:
        out.write("quick mode: sizes too small for the goals to mean anything; goals not judged.\n")
    missing = [(k, key) for k in ("ext", "extnp", "seed") for key, *_ in rows_spec(P)
               if ENV.have_ext or k == "seed" if R[k].get(key) is None
               and not (k == "seed" and key.startswith("hb_directive"))]
    if "claims13" in only and ENV.have_ext and not R.get("_claims13"):
        missing.append(("ext", "claims13"))
    cores = os.cpu_count() or 1
    for k, name in (("ext", "extension (preloaded)"), ("extnp", "extension (not preloaded)"),
                    ("seed", "seed design")):
        hb = R[k].get("hb_per_s")
        if hb:
            per_core = hb / cores
            out.write("sizing, %s: %.0f heartbeats/s per core (server and pgbench sharing %d cores) "
                      "= %s workers at a 10 s interval, %s at the seed's 30 s\n"
                      % (name, per_core, cores, "{:,}".format(int(per_core * 10)),
                         "{:,}".format(int(per_core * 30))))
    if ENV.have_ext and so_stamp() != ENV.so_stamp:
        out.write("WARNING: the installed worker_heartbeat.so changed during this run (someone ran "
                  "make install): figures may mix two builds; run again\n")
    for k, err in ENV.side_errors.items():
        out.write("%s: %s\n" % ({"ext": "extension (preloaded)", "extnp": "extension (not preloaded)"}.get(k, k), err))
    out.write("figures missing: %s\n" % (", ".join("%s.%s" % m for m in missing) or "none"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mode": "quick" if args.quick else "full", "params": P, "results": R,
                       "have_extension": ENV.have_ext, "side_errors": ENV.side_errors,
                       "figures": [k for k, *_ in rows_spec(P)], "missing": missing}, f, indent=1)
    log("done")
    return 0


def so_stamp():
    try:
        st = os.stat(ENV.so_path)
        return (st.st_mtime_ns, st.st_size)
    except OSError:
        return None


def find_seed_sql():
    """The seed's design: ../shared/baseline/seed_schema.sql relative to the repo
    (WH_SEED_SQL overrides; /work/shared/... is where this machine keeps it when
    the tree was copied elsewhere, as scripts/test does)."""
    for p in [os.environ.get("WH_SEED_SQL"),
              os.path.join(REPO, "..", "shared", "baseline", "seed_schema.sql"),
              "/work/shared/baseline/seed_schema.sql"]:
        if p and os.path.exists(p):
            return p
    return None


def _user_exists(u):
    try:
        pwd.getpwnam(u)
        return True
    except KeyError:
        return False


if __name__ == "__main__":
    sys.exit(main())
