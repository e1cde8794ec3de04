"""A real PostgreSQL cluster for the tests, started with initdb / pg_ctl.

The binaries come from $PG_CONFIG (else `pg_config` on PATH); the extension
must be installed there. The cluster listens on a Unix socket in its own
temporary directory only, preloads worker_heartbeat, and is stopped at the
end. Run as an unprivileged user (initdb refuses root).
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import psycopg
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PKG_DIR = os.path.dirname(HERE)


def _bindir():
    pgc = os.environ.get("PG_CONFIG") or shutil.which("pg_config")
    if not pgc:
        pytest.skip("no pg_config: set PG_CONFIG or put PostgreSQL's bin directory on PATH")
    return subprocess.run([pgc, "--bindir"], check=True, capture_output=True, text=True).stdout.strip()


class Cluster:
    def __init__(self):
        if os.geteuid() == 0:
            pytest.skip("initdb refuses to run as root: run the tests as an unprivileged user")
        self.bindir = _bindir()
        self.base = tempfile.mkdtemp(prefix="wh_pytest_", dir=os.environ.get("WH_TEST_TMPDIR"))
        self.data = os.path.join(self.base, "data")
        self.host = self.base
        self.port = 5432
        self.user = os.environ.get("USER") or __import__("pwd").getpwuid(os.getuid()).pw_name
        self.log = os.path.join(self.base, "postgresql.log")
        subprocess.run([os.path.join(self.bindir, "initdb"), "-D", self.data, "-A", "trust", "-U", self.user,
                        "--no-sync", "-E", "UTF8"], check=True, capture_output=True)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write("listen_addresses = ''\nunix_socket_directories = '%s'\nport = %d\n"
                    "shared_preload_libraries = 'worker_heartbeat'\nfsync = off\n"
                    "worker_heartbeat.reap_interval = '100ms'\nworker_heartbeat.launcher_interval = '1s'\n"
                    "max_connections = 60\n" % (self.host, self.port))
        self.pg_ctl("start")
        with self.connect() as c:
            c.execute("CREATE SCHEMA pm_pipeline")
            c.execute("CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline")

    def pg_ctl(self, *args):
        subprocess.run([os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-l", self.log, "-w",
                        "-t", "120"] + list(args), check=True, capture_output=True)

    def restart(self):
        self.pg_ctl("restart", "-m", "fast")

    def stop(self):
        self.pg_ctl("stop", "-m", "fast")

    def env(self):
        return {"PGHOST": self.host, "PGPORT": str(self.port), "PGDATABASE": "postgres", "PGUSER": self.user}

    def dsn(self, dbname="postgres"):
        return "host=%s port=%d dbname=%s user=%s" % (self.host, self.port, dbname, self.user)

    def connect(self, dbname="postgres", **kw):
        kw.setdefault("autocommit", True)
        return psycopg.connect(self.dsn(dbname), **kw)

    def val(self, query, args=()):
        with self.connect() as c:
            row = c.execute(query, args).fetchone()
            return row[0] if row else None

    def poll(self, query, args=(), timeout=60.0):
        """Polls until `query` returns true; returns the seconds it took (fails after timeout)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            try:
                if self.val(query, args):
                    return time.monotonic() - t0
            except psycopg.OperationalError:
                pass
            time.sleep(0.02)
        raise AssertionError("timed out after %gs waiting for: %s %r" % (timeout, query, args))

    def make_queue(self, name=None, checkpoint=False, dbname="postgres"):
        """A fresh registered lease table (fenced: token column, attempts, max 5);
        with `checkpoint`, a jsonb column "progress" is its checkpoint column (1.3)."""
        name = name or "q_" + uuid.uuid4().hex[:10]
        with self.connect(dbname=dbname) as c:
            c.execute(
                "CREATE TABLE public.%s (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                "run_id uuid NOT NULL DEFAULT gen_random_uuid(), payload text NOT NULL, "
                "state text NOT NULL DEFAULT 'pending', claimed_by text, lease_expires_at timestamptz, "
                "lease_token bigint, attempts integer NOT NULL DEFAULT 0, done_by text, progress jsonb)" % name)
            c.execute("CREATE INDEX ON public.%s (claimed_by)" % name)
            c.execute("CREATE INDEX ON public.%s (lease_expires_at)" % name)
            c.execute("CREATE INDEX ON public.%s (lease_token)" % name)
            c.execute("SELECT pm_pipeline.register_lease_table(%s, 'claimed_by', 'lease_expires_at', "
                      "'{\"state\": \"pending\"}', p_token_column => 'lease_token', "
                      "p_attempts_column => 'attempts', p_max_attempts => 5, "
                      "p_on_exhausted => '{\"state\": \"failed\"}')", ("public." + name,))
            if checkpoint:
                c.execute("SELECT pm_pipeline.set_lease_checkpoint_column(%s, 'progress')", ("public." + name,))
        return name

    def close(self):
        try:
            self.pg_ctl("stop", "-m", "immediate")
        except subprocess.CalledProcessError:
            pass
        if os.environ.get("WH_KEEP_TMP") != "1":
            shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg():
    c = Cluster()
    yield c
    c.close()


@pytest.fixture
def pgenv(pg, monkeypatch):
    """The process environment points at the cluster (PG*), nothing else."""
    for k in ("DATABASE_URL", "POSTGRES_URL", "WORKER_HEARTBEAT_SCHEMA", "WORKER_HEARTBEAT_INTERVAL"):
        monkeypatch.delenv(k, raising=False)
    for k, v in pg.env().items():
        monkeypatch.setenv(k, v)
    return pg


def child_env(pg, **extra):
    """Environment for a child Python process that imports the package from source."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "POSTGRES_URL", "WORKER_HEARTBEAT_SCHEMA", "WORKER_HEARTBEAT_INTERVAL")}
    env.update(pg.env())
    env["PYTHONPATH"] = PKG_DIR + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


PYTHON = sys.executable
