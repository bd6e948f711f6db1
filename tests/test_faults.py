"""The fault suite of issue 14 (items 3, 5, 6, 7): bad input at every edge of the `portopt` command, secrets that must
never be written, collectors against a server that drips, and the test stack's isolation.

Every bad input runs the installed command against a store holding data and asserts: the exit status (2 for a bad
option, 1 for bad data), exactly one line on stderr starting with `error:` (at most 300 characters after it; a usage
error may add typer's usage hint below it), no traceback, and a byte-identical store (`dump`). `pytest tests/test_faults.py -q` prints the count of cases held."""
import gzip
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FIXTURES, PORTOPT, STACK, Stack, dump, free_port_block, reap_stale_stacks

SECRET_KEY = "k3y5ecr3tHeliusApiKey0123456789"       # planted in SOLANA_RPC_URL's query
SECRET_PATH = "qn0de5ecr3tPathToken987654321"       # planted in SOLANA_RPC_URL's path (QuickNode style)
SECRET_HOOK = "T0H00K5ecr3tWebhookToken555"          # planted in PORTOPT_WEBHOOK's path (Slack style)


# -- the bad-input table -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    "A folder of bad files, and a baseline store holding SOL prices (what every case must leave byte-identical)."
    d = tmp_path_factory.mktemp("bad")
    good = (FIXTURES / "sol-usd-max.csv").read_bytes()
    (d / "truncated.csv.gz").write_bytes(gzip.compress(good)[:2000])
    (d / "binary.csv").write_bytes(bytes(range(256)) * 40)
    (d / "folder.csv").mkdir()
    header = "timestamp," + ",".join(f"A{i}" for i in range(10_001))
    (d / "wide.csv").write_text(header + "\n2021-01-01," + ",".join("1" for _ in range(10_001)) + "\n")
    (d / "narrow.csv").write_text("timestamp," + ",".join(f"A{i}" for i in range(60)) + "\n2021-01-01," + ",".join("1" for _ in range(60)) + "\n")
    (d / "longfield.csv").write_text("timestamp,asset,close\n2021-01-01," + "A" * 50_000 + ",1\n")
    (d / "year1.csv").write_text("timestamp,BTC\n2021-01-01,1\n1-01-01,2\n")
    (d / "year9999.csv").write_text("timestamp,BTC\n2021-01-01,1\n9999-01-01,2\n")
    (d / "month13.csv").write_text("timestamp,BTC\n2021-01-01,1\n2021-13-45,2\n")
    yaml_cases = {"list.yaml": "- 1\n- 2\n", "scalar-bound.yaml": "bounds: {BTC: 0.5}\n", "short-bound.yaml": "bounds: {BTC: [0.1]}\n",
                  "abc.yaml": "max_weight: abc\n", "group-list.yaml": "groups: {g: [1, 2]}\n", "half-asset.yaml": "max_assets: 2.5\n",
                  "unknown.yaml": "max_wieght: 0.5\n", "nan.yaml": "max_weight: .nan\n", "broken.yaml": "bounds: {BTC: [0.1, \n"}
    for name, text in yaml_cases.items():
        (d / name).write_text(text)
    (d / "binary.yaml").write_bytes(b"\x00\x01\x02bounds\xff\xfe")
    (d / "folder.yaml").mkdir()
    store = d / "baseline.sqlite"
    env = dict(os.environ, PORTOPT_STORE=str(store), PORTOPT_RUNS=str(d / "runs"))
    subprocess.run([str(PORTOPT), "import", str(FIXTURES / "sol-usd-max.csv")], env=env, check=True, capture_output=True, timeout=300)
    return d


D = "--dataset coingecko-daily"
CASES = [  # (id, arguments, exit status, extra environment, words the error line must hold)
    # numbers (finding 6)
    ("fee-nan", f"backtest {D} --fee-bps nan", 2, {}, "--fee-bps"),
    ("fee-inf", f"backtest {D} --fee-bps inf", 2, {}, "--fee-bps"),
    ("fee-negative", f"backtest {D} --fee-bps -5", 2, {}, "≥ 0"),
    ("slippage-nan", f"backtest {D} --slippage-bps nan", 2, {}, "--slippage-bps"),
    ("capital-nan", f"backtest {D} --capital nan", 2, {}, "--capital"),
    ("capital-inf", f"backtest {D} --capital inf", 2, {}, "--capital"),
    ("capital-zero", f"backtest {D} --capital 0", 2, {}, "> 0"),
    ("band-negative", f"backtest {D} --band -0.1", 2, {}, "--band"),
    ("impact-nan", f"backtest {D} --impact-coefficient nan", 2, {}, "--impact-coefficient"),
    ("ppy-negative", f"backtest {D} --periods-per-year -365", 2, {}, "--periods-per-year"),
    ("ppy-zero-optimize", f"optimize {D} --periods-per-year 0", 2, {}, "--periods-per-year"),
    ("ppy-negative-optimize", f"optimize {D} --periods-per-year -365", 2, {}, "--periods-per-year"),
    ("window-zero", f"backtest {D} --window 0", 2, {}, "--window"),
    ("window-text", f"backtest {D} --window abc", 2, {}, "--window"),
    ("rebalance-zero", f"backtest {D} --rebalance-every 0", 2, {}, "--rebalance-every"),
    ("rebalance-word", f"backtest {D} --rebalance-every daily", 2, {}, "--rebalance-every"),
    ("fraction-zero", f"optimize {D} --strategy kelly --fraction 0", 2, {}, "--fraction"),
    ("risk-aversion-nan", f"optimize {D} --strategy utility --risk-aversion nan", 2, {}, "--risk-aversion"),
    ("sweep-fee-nan", f"sweep {D} --fee-bps 1,nan", 2, {}, "--fee-bps"),
    ("sweep-window-zero", f"sweep {D} --window 90,0", 2, {}, "--window"),
    ("sweep-workers-zero", f"sweep {D} --workers 0", 2, {}, "--workers"),
    # names and lists
    ("strategy-commas", f"backtest {D} --strategy ,,", 2, {}, "--strategy"),
    ("strategy-unknown", f"optimize {D} --strategy nope", 2, {}, "--strategy"),
    ("strategies-dup", f"sweep {D} --strategies hrp,hrp", 2, {}, "more than once"),
    ("risk-measure-backtest", f"backtest {D} --risk-measure nope", 2, {}, "--risk-measure"),
    ("risk-measure-optimize", f"optimize {D} --strategy min_risk --risk-measure nope", 2, {}, "--risk-measure"),
    ("risk-measure-sweep", f"sweep {D} --risk-measure cvar,nope", 2, {}, "--risk-measure"),
    ("mu-unknown", f"optimize {D} --mu nope", 2, {}, "--mu"),
    ("on-failure-unknown", f"backtest {D} --on-failure retry", 2, {}, "--on-failure"),
    ("assets-dup", f"optimize {D} --assets BTC,BTC", 2, {}, "BTC given more than once"),
    ("assets-commas", f"optimize {D} --assets ,,", 2, {}, "--assets"),
    ("assets-unknown", f"optimize {D} --assets BTC,NOPE", 1, {}, "NOPE"),
    # dates (finding 5)
    ("as-of-text", f"optimize {D} --as-of notadate", 2, {}, "not a date"),
    ("as-of-month-13", f"optimize {D} --as-of 2021-13-45", 2, {}, "not a calendar date"),
    ("as-of-year-9999", f"optimize {D} --as-of 9999-01-01", 2, {}, "1900–2200"),
    ("as-of-year-1", f"reallocate demo --as-of 0001-01-01", 2, {}, "1900–2200"),
    ("start-text", f"backtest {D} --start notadate", 2, {}, "--start"),
    ("start-feb-30", f"backtest {D} --start 2021-02-30", 2, {}, "not a calendar date"),
    ("import-year-1", "import {bad}/year1.csv", 1, {}, "4 digits"),
    ("import-year-9999", "import {bad}/year9999.csv", 1, {}, "1900–2200"),
    ("import-month-13", "import {bad}/month13.csv", 1, {}, "not a calendar date"),
    # files (findings 6, 7)
    ("import-truncated-gz", "import {bad}/truncated.csv.gz", 1, {}, "truncated"),
    ("import-binary", "import {bad}/binary.csv", 1, {}, "binary"),
    ("import-folder", "import {bad}/folder.csv", 1, {}, "folder"),
    ("import-missing", "import {bad}/missing.csv", 1, {}, "no such file"),
    ("import-10001-columns", "import {bad}/wide.csv", 1, {}, "10,000 columns"),
    ("import-columns-configured", "import {bad}/narrow.csv", 1, {"PORTOPT_MAX_COLUMNS": "50"}, "PORTOPT_MAX_COLUMNS"),
    ("import-50k-field", "import {bad}/longfield.csv", 1, {}, "PORTOPT_MAX_FIELD"),
    # constraints files (finding 6)
    *[(f"constraints-{n.split('.')[0]}", f"optimize {D} --assets BTC,ETH,SOL --constraints {{bad}}/{n}", 1, {}, w)
      for n, w in (("list.yaml", "top level"), ("scalar-bound.yaml", "bounds.BTC"), ("short-bound.yaml", "bounds.BTC"),
                   ("abc.yaml", "max_weight"), ("group-list.yaml", "groups.g"), ("half-asset.yaml", "max_assets"),
                   ("unknown.yaml", "max_wieght"), ("nan.yaml", "max_weight"), ("broken.yaml", "not valid YAML"),
                   ("binary.yaml", "binary"), ("folder.yaml", "folder"), ("missing.yaml", "no such"))],
    # the environment's own limits
    ("lock-timeout-nan", "import {fx}/usdc-usd-max.csv", 1, {"PORTOPT_LOCK_TIMEOUT": "nan"}, "PORTOPT_LOCK_TIMEOUT"),
]
TALLY = {"tried": 0, "held": 0}


def one_error_line(proc) -> str:
    """The single `error:` line of a failed command; fails the test for anything else on stderr but, after a usage
    error (exit 2), the usage hint: `Usage: ...` and `Try '... --help' for help.`"""
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr[-2000:]
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert lines and lines[0].startswith("error: "), proc.stderr[-2000:]
    # after it, only typer's usage hint of a usage error (exit 2): "Usage: portopt ..." and "Try 'portopt ... --help'"
    assert all(l.startswith(("Usage: ", "Try '")) for l in lines[1:]) and (len(lines) == 1 or proc.returncode == 2), proc.stderr[-2000:]
    assert len(lines[0]) <= len("error: ") + 300, len(lines[0])
    return lines[0]


@pytest.mark.parametrize("name, args, status, env, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_one_line_and_the_store_unchanged(bad, cli, store_path, name, args, status, env, words):
    TALLY["tried"] += 1
    shutil.copy(bad / "baseline.sqlite", store_path)
    before = dump(store_path)
    proc = cli(*args.format(bad=bad, fx=FIXTURES).split(), check=False, env=env)
    line = one_error_line(proc)
    assert proc.returncode == status, (proc.returncode, line)
    assert words in line, line
    assert dump(store_path) == before
    TALLY["held"] += 1


def test_a_store_locked_by_another_process_is_named_after_the_configured_wait(bad, cli, store_path):
    TALLY["tried"] += 1
    shutil.copy(bad / "baseline.sqlite", store_path)
    before = dump(store_path)
    holder = subprocess.Popen([sys.executable, "-c", "import sqlite3, sys, time\n"
                               f"c = sqlite3.connect({str(store_path)!r}, isolation_level=None); c.execute('BEGIN IMMEDIATE')\n"
                               "print('locked', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = cli("import", FIXTURES / "usdc-usd-max.csv", check=False, env={"PORTOPT_LOCK_TIMEOUT": "1"})
    finally:
        holder.kill()
        holder.wait()
    line = one_error_line(proc)
    assert proc.returncode == 1 and "locked by another process" in line and str(holder.pid) in line and "try again" in line, line
    assert dump(store_path) == before
    TALLY["held"] += 1


def test_ctrl_c_during_an_import_is_one_line_and_writes_nothing(bad, tmp_path, store_path):
    TALLY["tried"] += 1
    shutil.copy(bad / "baseline.sqlite", store_path)
    before = dump(store_path)
    big = tmp_path / "big.csv"   # 400,000 prices: the write takes long enough to be inside it when the signal comes
    import pandas as pd
    days = pd.date_range("1990-01-01", periods=10_000, freq="D").strftime("%Y-%m-%d")
    with big.open("w") as f:
        f.write("timestamp," + ",".join(f"A{a}" for a in range(40)) + "\n")
        for i, d in enumerate(days):
            f.write(d + "," + ",".join(str(1 + (i * a) % 97) for a in range(40)) + "\n")
    env = dict(os.environ, PORTOPT_STORE=str(store_path), PORTOPT_RUNS=str(tmp_path / "runs"))
    proc = subprocess.Popen([str(PORTOPT), "import", str(big)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:   # wait until the command has the store open: it is writing
        try:
            if any(os.readlink(fd) == str(store_path) for fd in Path(f"/proc/{proc.pid}/fd").iterdir()):
                break
        except OSError:
            pass
        time.sleep(0.005)
    assert proc.poll() is None, "the import ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    line = one_error_line(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    assert proc.returncode == 130 and "interrupted" in line, (proc.returncode, line)
    assert dump(store_path) == before
    TALLY["held"] += 1


def test_allow_dates_lets_an_old_date_in(bad, cli, store_path, tmp_path):
    "The year bounds are a guard against typos, not a wall: --allow-dates imports a real 1850 price."
    f = tmp_path / "old.csv"
    f.write_text("timestamp,GOLD\n1850-01-01,20.67\n1850-01-02,20.67\n")
    assert cli("import", f, check=False).returncode == 1
    assert "2 new" in cli("import", f, "--allow-dates").stdout and sqlite3.connect(store_path).execute(
        "SELECT count(*) FROM prices WHERE asset = 'GOLD' AND ts LIKE '1850-%'").fetchone()[0] == 2


# -- collectors: deadlines and secrets -------------------------------------------------------------------------------
def _grep(paths, *secrets) -> list[str]:
    "Every file under `paths` (and the texts given as str) that holds one of `secrets`."
    hits = []
    for p in paths:
        if isinstance(p, str):
            hits += [f"text: {s}" for s in secrets if s in p]
            continue
        for f in ([p] if p.is_file() else [q for q in p.rglob("*") if q.is_file()]):
            data = f.read_bytes()
            hits += [f"{f}: {s}" for s in secrets if s.encode() in data]
    return hits


def test_a_slow_drip_rpc_node_ends_the_run_within_its_budget_and_no_secret_is_written(tmp_path, cli, store_path):
    from portopt.testing import LocalServer
    TALLY["tried"] += 1
    config = tmp_path / "collect.toml"
    config.write_text('[solana]\ntoken_supplies = ["EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"]\n'
                      "budget = 3.0\ntimeout = 2.0\nmax_attempts = 3\nbackoff = 0.01\n")
    with LocalServer(lambda *a: (500, {}, b"{}"), stall=1.0) as server:
        server.faults.append("drip")   # headers, then one byte a second: never a 2 s read timeout
        env = {"SOLANA_RPC_URL": f"{server.url}/{SECRET_PATH}/?api-key={SECRET_KEY}"}
        t0 = time.monotonic()
        proc = cli("collect", "solana", "--quiet", "--config", config, check=False, env=env)
        elapsed = time.monotonic() - t0
        line = one_error_line(proc)
        assert proc.returncode == 1 and "budget of 3 s" in line, line
        assert elapsed < 3 + 20, elapsed   # the budget, plus the command's start (imports): not the drip's 100,000 s
        second = cli("collect", "solana", "--quiet", "--config", config, check=False, env=env)   # 500s: the URL in the error
        assert "HTTP 500" in one_error_line(second)
    runs = sqlite3.connect(store_path).execute("SELECT status, error FROM runs ORDER BY started_at").fetchall()
    assert [r[0] for r in runs] == ["failed", "failed"] and "budget" in runs[0][1] and "***" in runs[1][1], runs
    assert not sqlite3.connect(store_path).execute("SELECT count(*) FROM market_metrics").fetchone()[0]   # nothing of the batch
    assert _grep([store_path.parent, proc.stdout, proc.stderr, second.stdout, second.stderr], SECRET_KEY, SECRET_PATH) == []
    TALLY["held"] += 1


def test_a_slow_drip_market_api_ends_the_run_within_its_budget(tmp_path, cli, store_path):
    from portopt.testing import LocalServer
    TALLY["tried"] += 1
    config = tmp_path / "collect.toml"
    config.write_text('[market]\ncoins = [{id = "solana", asset = "SOL"}]\nstart = "2022-01-01"\nend = "2022-01-31"\n'
                      "spot = false\nbudget = 3.0\ntimeout = 2.0\nbackoff = 0.01\n")
    with LocalServer(lambda *a: (500, {}, b"{}"), stall=1.0) as server:
        server.faults.append("drip")
        t0 = time.monotonic()
        proc = cli("collect", "market", "--quiet", "--config", config, check=False,
                   env={"PORTOPT_COINGECKO_URL": server.url + "/api/v3", "COINGECKO_API_KEY": SECRET_KEY})
        elapsed = time.monotonic() - t0
    line = one_error_line(proc)
    assert proc.returncode == 1 and "budget of 3 s" in line and elapsed < 3 + 20, (line, elapsed)
    assert sqlite3.connect(store_path).execute("SELECT status FROM runs").fetchall() == [("failed",)]
    assert not sqlite3.connect(store_path).execute("SELECT count(*) FROM prices").fetchone()[0]
    assert server.log and server.log[0]["headers"].get("x-cg-demo-api-key") == SECRET_KEY   # the key went where it belongs
    assert _grep([store_path.parent, proc.stdout, proc.stderr], SECRET_KEY) == []
    TALLY["held"] += 1


def test_the_webhook_reaches_the_rebalance_notebook_by_environment_only(tmp_path, cli, store_path):
    "A papermill rebalance with PORTOPT_WEBHOOK set: the token is in no runs row, notebook, HTML or log; run folders are private."
    from portopt.testing import LocalServer
    TALLY["tried"] += 1
    cli("reallocate", "demo")   # the bundled data and the demo portfolio: a prices event waits in the outbox
    with LocalServer(lambda *a: (500, {}, b"{}")) as hook:   # refuses every alert: its URL would show in errors
        env = {"PORTOPT_WEBHOOK": f"{hook.url}/services/{SECRET_HOOK}",
               "SOLANA_RPC_URL": f"https://rpc.example/{SECRET_PATH}/?api-key={SECRET_KEY}"}
        proc = cli("listen", "--once", check=False, env=env, timeout=900)
    assert "Traceback" not in proc.stderr
    con = sqlite3.connect(store_path)
    runs = con.execute("SELECT job, parameters, status, output_path FROM runs WHERE job = 'rebalance'").fetchall()
    assert runs and all("webhook" not in json.loads(p) for _, p, _, _ in runs), runs
    folders = [Path(o) for *_, o in runs if o]
    assert folders and all(stat.S_IMODE(f.stat().st_mode) == 0o700 for f in folders)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for f in folders for p in f.rglob("*") if p.is_file())
    assert _grep([store_path.parent, tmp_path / "runs", proc.stdout, proc.stderr], SECRET_HOOK, SECRET_KEY, SECRET_PATH) == []
    TALLY["held"] += 1


def test_a_secret_as_a_notebook_parameter_is_refused(tmp_path):
    from portopt.config import ConfigError
    from portopt.reports import run_report
    from portopt.store import SQLiteStore
    with SQLiteStore(tmp_path / "s.sqlite") as st, pytest.raises(ConfigError, match="by environment"):
        run_report("rebalance", {"webhook": f"https://hooks.slack.com/services/{SECRET_HOOK}"}, store=st, runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.ipynb"))


# -- the cross-user REST matrix: delete-then-recreate and name probing (issue 14, item 2) ------------------------------
REST_ROWS = {  # one row of each owned table, as a client application inserts it through REST
    "holdings": {"asset": "SOL", "ts": "2024-01-01T00:00:00Z", "units": 1.0},
    "optimizations": {"id": "o1", "strategy": "hrp", "params": {}, "weights": {"SOL": 1.0}, "metrics": {}},
    "reallocations": {"id": "r1", "as_of": "2024-01-02T00:00:00Z", "status": "planned", "plan": {"trades": {}}},
    "alerts": {"kind": "drift", "message": "A's alert"},
    "backtests": {"id": "b1", "strategy": "hrp", "config": {}, "metrics": {}, "returns": {}},
}


def _rest_users(stack):
    import uuid
    from portopt.supabase import SupabaseStore
    s = stack.settings
    users = [str(uuid.uuid4()), str(uuid.uuid4())]
    return users, [SupabaseStore(s["SUPABASE_URL"], s["SUPABASE_ANON_KEY"], access_token=stack.user_token(u)).client
                   for u in users]


@pytest.mark.parametrize("table", sorted(REST_ROWS))
def test_a_deleted_portfolios_rows_never_reach_the_next_owner_of_its_name(supabase_stack, table):
    "A creates P and a row of `table`, deletes P (a REST DELETE); B creates P: B reads nothing, the row is gone."
    import psycopg
    TALLY["tried"] += 1
    supabase_stack.reset()
    (_, _), (a, b) = _rest_users(supabase_stack)
    old = a.table("portfolios").insert({"portfolio": "P"}).execute().data[0]["id"]
    a.table(table).insert({**REST_ROWS[table], "portfolio_id": old}).execute()
    assert len(a.table(table).select("*").execute().data) == 1
    a.table("portfolios").delete().eq("id", old).execute()
    new = b.table("portfolios").insert({"portfolio": "P"}).execute().data[0]["id"]
    assert new != old and b.table(table).select("*").execute().data == []
    assert a.table(table).select("*").execute().data == []
    with psycopg.connect(supabase_stack.settings["SUPABASE_DB_URL"]) as conn:
        assert conn.execute(f"SELECT count(*) FROM public.{table}").fetchone()[0] == 0  # ON DELETE CASCADE
    TALLY["held"] += 1


def test_creating_a_name_another_user_holds_tells_nothing(supabase_stack):
    "B creates A's name (no 409); B's own duplicate is a 409 on (owner, name) that names neither A nor A's row."
    from postgrest.exceptions import APIError
    TALLY["tried"] += 1
    supabase_stack.reset()
    (alice, _), (a, b) = _rest_users(supabase_stack)
    pid = a.table("portfolios").insert({"portfolio": "P"}).execute().data[0]["id"]
    b.table("portfolios").insert({"portfolio": "P"}).execute()
    with pytest.raises(APIError) as dup:
        b.table("portfolios").insert({"portfolio": "P"}).execute()
    said = " ".join(str(getattr(dup.value, k, "")) for k in ("code", "message", "details", "hint"))
    assert dup.value.code == "23505" and "portfolios_pkey" not in said and alice not in said and pid not in said
    with pytest.raises(APIError) as chosen:  # probing an id by inserting it: refused before any conflict
        b.table("portfolios").insert({"portfolio": "Q", "id": pid}).execute()
    assert chosen.value.code == "42501"
    TALLY["held"] += 1


# -- the test stack ---------------------------------------------------------------------------------------------------
def test_the_stack_keeps_its_secrets_private_and_wants_a_password_over_tcp(supabase_stack):
    import psycopg
    state = Path(supabase_stack.env["PORTOPT_STACK_DIR"])
    for f in ("env.json", "jwt_secret", "postgres_password", "authenticator_password", "run/postgrest.conf"):
        assert stat.S_IMODE((state / f).stat().st_mode) == 0o600, f
    url = supabase_stack.settings["SUPABASE_DB_URL"]
    assert ":" in url.split("@")[0].split("//")[1]   # a password in the URL
    with psycopg.connect(url, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    no_password = "postgresql://postgres@" + url.split("@", 1)[1]
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(no_password, connect_timeout=5, password="")
    hba = (state / "pgdata" / "pg_hba.conf").read_text()
    assert "trust" not in [l.split()[-1] for l in hba.splitlines() if l.startswith("host")]


def test_two_stacks_run_side_by_side_and_up_stops_a_stale_one(tmp_path_factory):
    import tempfile
    import urllib.request
    stacks = []
    try:
        for _ in range(2):
            folder = Path(tempfile.mkdtemp(prefix="portopt-faults-"))
            folder.chmod(0o755)
            s = Stack(folder / "state", free_port_block())
            try:
                s.up()
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
                pytest.skip(f"the local stack did not start: {getattr(e, 'stderr', e)}")
            stacks.append((folder, s))
        urls = [s.settings["SUPABASE_URL"] for _, s in stacks]
        assert len(set(urls)) == 2
        for u in urls:
            assert urllib.request.urlopen(u + "/health", timeout=5).status == 200
        # the first stack's nginx dies (a killed session, half a stack): `up` sees the stale stack and starts it whole
        _, first = stacks[0]
        run = Path(first.env["PORTOPT_STACK_DIR"]) / "run"
        os.kill(int((run / "nginx.pid").read_text()), signal.SIGTERM)
        time.sleep(0.5)
        proc = first.cmd("up")
        assert "stopping a stale stack" in proc.stderr and urllib.request.urlopen(urls[0] + "/health", timeout=5).status == 200
        assert urllib.request.urlopen(urls[1] + "/health", timeout=5).status == 200   # the other stack never noticed
    finally:
        for folder, s in stacks:
            s.cmd("down", check=False)
            shutil.rmtree(folder, ignore_errors=True)


def test_the_stack_of_a_killed_session_is_reaped(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = tmp_path / "portopt-stack-killed"
    folder.mkdir()
    (folder / "session.pid").write_text(str(dead.pid))
    alive = tmp_path / "portopt-stack-alive"
    alive.mkdir()
    (alive / "session.pid").write_text(str(os.getpid()))
    assert reap_stale_stacks(tmp_path) == [folder] and not folder.exists() and alive.exists()


def test_zz_tally():
    "The count the lead quotes: cases tried and held in this session (printed with -s; asserted whole)."
    print(f"\nfault suite: {TALLY['held']} of {TALLY['tried']} cases held")
    assert TALLY["held"] == TALLY["tried"]
