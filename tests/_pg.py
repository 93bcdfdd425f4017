"""A real PostgreSQL server for the tests: the one ``.ci/run`` started, else a throwaway cluster, else a skip.

``pg_dsn()`` answers, in order: ``$THREADFLOW_TEST_PG_DSN``; a cluster this
module starts (``initdb``/``pg_ctl`` of the Debian ``postgresql`` package, run
as the ``postgres`` OS user since the server refuses root, on a free loopback
port, fsync off, trust auth) and stops at exit; or None with the reason in
``SKIP_REASON``. Under ``CI=true`` the tests turn that skip into a failure.

Also runnable: ``python tests/_pg.py start DIR`` prints a DSN (the cluster lives in
DIR), ``python tests/_pg.py stop DIR`` stops it — what ``.ci/run`` and the cookbook use.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile

DSN_ENV = "THREADFLOW_TEST_PG_DSN"
SKIP_REASON = ""
_started: str | None = None
_dsn: str | None = None


def _bin(tool: str) -> str | None:
    found = shutil.which(tool)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres(args: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return args
    runuser = shutil.which("runuser")
    return [runuser, "-u", "postgres", "--", *args] if runuser else ["su", "postgres", "-c", " ".join(args)]


def start(root: str) -> str:
    """Start a cluster whose files live under ``root``; the DSN. ``RuntimeError`` naming what is missing."""
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise RuntimeError("initdb/pg_ctl not found (apt-get install postgresql)")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, port = os.path.join(root, "data"), _free_port()
    subprocess.run(
        _as_postgres([initdb, "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"]),
        check=True,
        capture_output=True,
    )
    options = f"-c fsync=off -c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={root}"
    options += " -c max_connections=200"
    subprocess.run(
        _as_postgres([pg_ctl, "-D", data, "-l", os.path.join(root, "log"), "-w", "-o", options, "start"]),
        check=True,
        capture_output=True,
    )
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


def stop(root: str) -> None:
    """Stop the cluster under ``root`` (fast shutdown) and remove its files."""
    pg_ctl = _bin("pg_ctl")
    if pg_ctl is not None and os.path.isdir(os.path.join(root, "data")):
        subprocess.run(
            _as_postgres([pg_ctl, "-D", os.path.join(root, "data"), "-m", "immediate", "-w", "stop"]),
            capture_output=True,
            check=False,
        )
    shutil.rmtree(root, ignore_errors=True)


def restart(root: str) -> None:
    """Restart the cluster under ``root`` (the tests' database-restart case), same port."""
    pg_ctl = _bin("pg_ctl")
    assert pg_ctl is not None
    subprocess.run(
        _as_postgres(
            [pg_ctl, "-D", os.path.join(root, "data"), "-l", os.path.join(root, "log"), "-m", "fast", "-w", "restart"]
        ),
        check=True,
        capture_output=True,
    )


def pg_dsn() -> str | None:
    """The DSN of a PostgreSQL server for the tests, or None (``SKIP_REASON`` says why)."""
    global _dsn, _started, SKIP_REASON
    if _dsn is not None or SKIP_REASON:
        return _dsn
    if os.environ.get(DSN_ENV):
        _dsn = os.environ[DSN_ENV]
        return _dsn
    try:
        import psycopg  # noqa: F401
    except ImportError:
        SKIP_REASON = "psycopg is not installed (pip install 'threadflow[postgres]')"
        return None
    root = tempfile.mkdtemp(prefix="threadflow-pg-")
    try:
        _dsn = start(root)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as error:
        shutil.rmtree(root, ignore_errors=True)
        SKIP_REASON = f"no PostgreSQL server: set {DSN_ENV} or install postgresql ({error})"
        return None
    _started = root
    atexit.register(stop, root)
    return _dsn


def own_cluster() -> str | None:
    """The directory of the cluster this module started (None when the DSN came from the environment)."""
    return _started


if __name__ == "__main__":
    command, where = sys.argv[1], sys.argv[2]
    if command == "start":
        print(start(where))
    else:
        stop(where)


def schema_dsn(dsn: str, schema: str) -> str:
    """``dsn`` with its own empty schema ``schema`` first on the search path: a private database for one test."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        conn.execute(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in dsn else "?"
    return f"{dsn}{separator}options=-csearch_path%3D{schema}"
