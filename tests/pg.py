"""A throwaway PostgreSQL server for tests (and for `.ci/run`).

Pytest (tests/ is on sys.path, so a test module can say
`from pg import fresh_postgres_url, postgres_url  # noqa: F401`):
- `postgres_url` (session): $ABLATE_TEST_PG_URL when set, else a private server
  (initdb + pg_ctl on a free port, trust auth, 127.0.0.1 only, fsync off)
  started once and stopped at the end of the session; skips the test when no
  PostgreSQL binaries are found.
- `fresh_postgres_url` (function): a new, empty database on that server for one
  test, dropped afterwards (the role needs CREATEDB; the private one is superuser).

Shell: `python tests/pg.py CMD ARGS...` starts a server, runs CMD with
$ABLATE_TEST_PG_URL set to its URL, stops the server and exits with CMD's code.

PostgreSQL refuses to run as root, so as root the server runs as the `postgres`
system user (or `nobody`) via `runuser`, in a temp folder owned by that user.
Binaries: $ABLATE_PG_BIN, else the folder of `pg_ctl` on PATH, else the newest
/usr/lib/postgresql/*/bin.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

DB_NAME = "ablate_test"
_TOOLS = ("initdb", "pg_ctl", "createdb")


def find_pg_bin() -> Path | None:
    """The folder holding initdb/pg_ctl/createdb, or None when PostgreSQL is not installed."""
    env = os.environ.get("ABLATE_PG_BIN")
    candidates = [Path(env)] if env else []
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    versions = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(versions, key=lambda p: _version_key(p.parent.name), reverse=True)
    for folder in candidates:
        if all((folder / tool).is_file() for tool in _TOOLS):
            return folder
    return None


def _version_key(name: str) -> tuple[int, ...]:
    """'15' -> (15,), so '15' sorts above '9.6'."""
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _free_port() -> int:
    """A TCP port that was free a moment ago (the server binds it right after)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_user() -> str | None:
    """The unprivileged user to run the server as when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")


def _run(cmd: list[str], user: str | None, cwd: Path) -> None:
    """Run a server tool (as `user` when given); raise with its output when it fails."""
    if user:
        cmd = ["runuser", "-u", user, "--", *cmd]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    if proc.returncode:
        output = proc.stdout + proc.stderr
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output}")


@contextlib.contextmanager
def postgres_server(bin_dir: Path | None = None) -> Iterator[str]:
    """Start a private PostgreSQL server and yield a SQLAlchemy URL to a fresh database in it."""
    bin_dir = bin_dir or find_pg_bin()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL binaries (initdb, pg_ctl) not found")
    user = _server_user()
    base = Path(tempfile.mkdtemp(prefix="ablate-pg-"))
    if user:
        pw = pwd.getpwnam(user)
        os.chown(base, pw.pw_uid, pw.pw_gid)
    data, port = base / "data", _free_port()
    try:
        _run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
              "--no-sync", "-E", "UTF8"], user, base)
        opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
        _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-o", opts,
              "-w", "-t", "60", "start"], user, base)
        try:
            _run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                  DB_NAME], None, base)
            yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/{DB_NAME}"
        finally:
            _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                 user, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a PostgreSQL test database: $ABLATE_TEST_PG_URL, else a throwaway server."""
    env = os.environ.get("ABLATE_TEST_PG_URL")
    if env:
        yield env
        return
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL not installed (no initdb/pg_ctl; set ABLATE_PG_BIN or "
                    "ABLATE_TEST_PG_URL to test the PostgreSQL backend)")
    with postgres_server(bin_dir) as url:
        yield url


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """Create a uniquely named database on `server_url`'s server, yield its URL, then drop it."""
    import sqlalchemy as sa

    url = sa.make_url(server_url)
    if url.drivername == "postgresql":  # psycopg 3 is the driver the dev extra installs
        url = url.set(drivername="postgresql+psycopg")
    name = f"ablate_t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:  # FORCE: a test may leave pooled connections open
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def fresh_postgres_url(postgres_url: str) -> Iterator[str]:
    """URL of a new, empty PostgreSQL database for one test."""
    with fresh_database(postgres_url) as url:
        yield url


def main(argv: list[str]) -> int:
    """`python tests/pg.py CMD...`: run CMD with $ABLATE_TEST_PG_URL pointing at a fresh server."""
    if not argv:
        print(__doc__)
        return 2
    with postgres_server() as url:
        print(f"PostgreSQL test server: {url}", file=sys.stderr)
        return subprocess.call(argv, env={**os.environ, "ABLATE_TEST_PG_URL": url})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
