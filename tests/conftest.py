import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
PORTOPT = Path(sys.executable).with_name("portopt")  # the console script installed by `pip install -e .`


def dump(path: Path) -> list[str]:
    "Every row of every table of a SQLite file, as SQL text: equal dumps mean an unchanged store."
    with sqlite3.connect(path) as conn:
        return list(conn.iterdump())


@pytest.fixture
def store_path(tmp_path):
    return tmp_path / "store.sqlite"


@pytest.fixture
def cli(tmp_path, store_path):
    "Run the installed `portopt` command against a temporary store; returns the CompletedProcess."
    def run(*args, check=True, timeout=900, env=None):
        env = dict(os.environ, PORTOPT_STORE=str(store_path), PORTOPT_RUNS=str(tmp_path / "runs"), **(env or {}))
        proc = subprocess.run([str(PORTOPT), *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"portopt {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
        return proc
    return run


# -- the local Supabase stack -------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]
STACK = ROOT / "supabase" / "local" / "stack.py"
REQUIRE_STACK = os.environ.get("PORTOPT_REQUIRE_STACK") == "1"


class Stack:
    "The test session's own local Supabase stack (own data folder and ports), driven by the project's script."

    def __init__(self, state_dir: Path, port: int):
        self.env = dict(os.environ, PORTOPT_STACK_DIR=str(state_dir), PORTOPT_STACK_PORT=str(port))
        self.env.pop("SUPABASE_JWT_SECRET", None)
        self.settings: dict = {}

    def cmd(self, *args, check=True):
        return subprocess.run([sys.executable, str(STACK), *args], capture_output=True, text=True, env=self.env,
                              timeout=120, check=check)

    def up(self) -> dict:
        import json
        self.settings = json.loads(self.cmd("up").stdout)
        return self.settings

    def reset(self) -> None:
        "Empty every portopt table (identities restart), as a fresh store would be."
        import psycopg
        from portopt.store import TABLES
        with psycopg.connect(self.settings["SUPABASE_DB_URL"], autocommit=True) as conn:
            conn.execute(f"TRUNCATE {', '.join('public.' + t for t in TABLES)} RESTART IDENTITY CASCADE")

    def env_vars(self) -> dict:
        "The settings a `portopt` process needs to use this stack (service-role key)."
        keys = ("SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_ANON_KEY", "SUPABASE_DB_URL", "SUPABASE_JWT_SECRET")
        return {k: self.settings[k] for k in keys}

    def user_token(self, user_id: str) -> str:
        "A signed-in user's JWT (role `authenticated`, `sub` = the user's id), as Supabase Auth would issue it."
        import time
        import jwt
        now = int(time.time())
        return jwt.encode({"sub": user_id, "role": "authenticated", "aud": "authenticated", "iat": now, "exp": now + 3600},
                          self.settings["SUPABASE_JWT_SECRET"], algorithm="HS256")


def free_port_block(n: int = 3) -> int:
    "A port p with p, p+1, ..., p+n-1 all free on 127.0.0.1 (the stack's API, PostgreSQL and PostgREST ports)."
    import socket
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p + n >= 65536:
            continue
        free = True
        for q in range(p, p + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", q))
                except OSError:
                    free = False
                    break
        if free:
            return p
    raise RuntimeError("no block of free ports on 127.0.0.1")


def reap_stale_stacks(root: Path) -> list[Path]:
    """Stop and remove the stacks left by test sessions that died (killed, crashed): each test stack's folder holds
    `session.pid`, the pid of its pytest process; a folder whose process is gone is stale. Returns the folders reaped."""
    reaped = []
    for folder in root.glob("portopt-stack-*"):
        try:
            pid = int((folder / "session.pid").read_text())
            os.kill(pid, 0)
            continue   # its session is alive: not ours to stop
        except ProcessLookupError:
            pass
        except (FileNotFoundError, ValueError, PermissionError):
            continue   # not a stack of this conftest, or not ours
        env = dict(os.environ, PORTOPT_STACK_DIR=str(folder / "state"))
        subprocess.run([sys.executable, str(STACK), "down"], env=env, capture_output=True, timeout=120)
        import shutil
        shutil.rmtree(folder, ignore_errors=True)
        reaped.append(folder)
    return reaped


@pytest.fixture(scope="session")
def supabase_stack():
    """The local stack, started once per session with `supabase/local/stack.py up`, in a fresh folder and on free ports
    (PORTOPT_TEST_STACK_PORT fixes the API port instead), so that two test sessions run side by side. Stopped by the
    fixture's finalizer, and by atexit and SIGTERM/SIGHUP handlers when the session ends otherwise; a session killed
    with SIGKILL leaves its folder, which the next session reaps (`reap_stale_stacks`). Skips when it cannot start
    (no PostgreSQL, nginx or PostgREST here), unless PORTOPT_REQUIRE_STACK=1: then the test fails."""
    import atexit
    import shutil
    import signal
    import tempfile
    reap_stale_stacks(Path(tempfile.gettempdir()))
    port = int(os.environ.get("PORTOPT_TEST_STACK_PORT") or free_port_block())
    folder = Path(tempfile.mkdtemp(prefix="portopt-stack-"))  # under /tmp: reachable by the stack's unprivileged user
    folder.chmod(0o755)
    (folder / "session.pid").write_text(str(os.getpid()))
    stack = Stack(folder / "state", port)
    stopped = []

    def stop(*_):
        if not stopped:
            stopped.append(True)
            stack.cmd("down", check=False)
            shutil.rmtree(folder, ignore_errors=True)

    def on_signal(signum, frame):
        stop()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    atexit.register(stop)
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        stack.up()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, ValueError) as e:
        reason = f"the local Supabase stack did not start ({getattr(e, 'stderr', '') or e}); run `make supabase-up` to see why"
        stop()
        if REQUIRE_STACK:
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield stack
    finally:
        stop()
        for s, h in previous.items():
            signal.signal(s, h)


@pytest.fixture(params=["sqlite", "supabase"])
def store(request, tmp_path):
    "A fresh, empty store of each kind: the contract tests run against both."
    if request.param == "sqlite":
        from portopt.store import SQLiteStore
        st = SQLiteStore(tmp_path / "store.sqlite")
    else:
        from portopt.supabase import SupabaseStore
        stack = request.getfixturevalue("supabase_stack")
        stack.reset()
        st = SupabaseStore(stack.settings["SUPABASE_URL"], stack.settings["SUPABASE_SERVICE_ROLE_KEY"])
    yield st
    st.close()
