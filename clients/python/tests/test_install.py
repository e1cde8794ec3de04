"""Done when: a fresh venv, `pip install ./clients/python` (offline), then the
original design's own snippet runs unchanged against a database with the
extension."""
import os
import shutil
import subprocess
import sys
import tempfile

from conftest import PKG_DIR

# Verbatim from the original design note ("Heartbeat Manager"), plus its import line.
SEED_SNIPPET = '''\
from worker_heartbeat import WorkerHeartbeat

heartbeat = WorkerHeartbeat(
    worker_id="company-research-12345",
    worker_type="company_research",
    interval_seconds=30
)
heartbeat.start()

# Update task info
heartbeat.update_task(
    run_id="abc123",
    task="Researching company example.com",
    status="processing"
)

# Mark as idle
heartbeat.mark_idle()

# Stop on shutdown
heartbeat.stop()
'''

# The original design's monitoring daemon (Option B's one-liner, with our import).
SEED_HELPERS = '''\
import worker_heartbeat as heartbeat
released = heartbeat.cleanup_dead_workers()
health = heartbeat.get_worker_health_summary()
print(released, health["total_active_workers"], health["total_dead_workers"], len(health["stats_by_type"]))
'''


def test_fresh_venv_pip_install_and_the_seed_snippet(pg):
    base = tempfile.mkdtemp(prefix="wh_venv_", dir=os.environ.get("WH_TEST_TMPDIR"))
    try:
        venv = os.path.join(base, "venv")
        # Debian's psycopg 3 comes from the system: --system-site-packages.
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", venv], check=True)
        py = os.path.join(venv, "bin", "python")
        src = os.path.join(base, "src")  # a copy: the build writes build/ and *.egg-info beside the sources
        shutil.copytree(PKG_DIR, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__",
                                                                    ".pytest_cache", "tests"))
        r = subprocess.run([py, "-m", "pip", "install", "--no-index", "--no-cache-dir", src],
                           capture_output=True, text=True,
                           env=dict(os.environ, PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1"))
        assert r.returncode == 0, r.stdout + r.stderr
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DATABASE_URL", "POSTGRES_URL")}
        env.update(pg.env())
        # Imported from the venv, not from the sources.
        where = subprocess.run([py, "-c", "import worker_heartbeat, os; print(worker_heartbeat.__file__); "
                                "print(os.path.exists(os.path.join(os.path.dirname(worker_heartbeat.__file__), "
                                "'py.typed')))"], cwd=base, env=env, capture_output=True, text=True, check=True)
        assert where.stdout.splitlines() == [os.path.join(venv, "lib", "python%d.%d" % sys.version_info[:2],
                                                          "site-packages", "worker_heartbeat", "__init__.py"),
                                             "True"], where.stdout
        snippet = os.path.join(base, "seed_snippet.py")
        with open(snippet, "w") as f:
            f.write(SEED_SNIPPET)
        r = subprocess.run([py, snippet], cwd=base, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert pg.val("SELECT worker_type || '/' || status FROM pm_pipeline.worker_heartbeats "
                      "WHERE worker_id = 'company-research-12345'") == "company_research/stopped"
        assert pg.val("SELECT count(*) FROM pm_pipeline.worker_events WHERE worker_id = 'company-research-12345' "
                      "AND event = 'stopped'") == 1
        r = subprocess.run([py, "-c", SEED_HELPERS], cwd=base, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert len(r.stdout.split()) == 4
    finally:
        shutil.rmtree(base, ignore_errors=True)
