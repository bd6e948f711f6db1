"""Requests from client applications (issue 16): a client inserts a row in `requests` through PostgREST with its user's
session (two users, the local stack), the listener claims and runs it with the CLI's own code, and the result is the CLI's
`--json`. Row-level security, validation, idempotency, quotas, cancellation and a listener killed mid-request; the
embedded store's single local user where the behaviour is the same."""
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import psycopg
import pytest

from portopt.cli import main
from portopt.client import request as client_request
from portopt.config import ConfigError, StoreError
from portopt.events import Listener
from portopt.store import SQLiteStore

PORTOPT = os.path.join(os.path.dirname(sys.executable), "portopt")
OPTIMIZE = {"dataset": "coingecko-daily", "assets": ["BTC", "ETH", "SOL", "USDC"], "strategy": "min_variance", "window": 90,
            "as_of": "2022-09-01"}
BACKTEST = {"dataset": "coingecko-daily", "assets": "BTC,ETH,USDC", "strategy": "min_variance,hrp", "window": 60,
            "rebalance_every": 30, "start": "2022-01-01", "as_of": "2022-09-01", "benchmarks": "equal_weight"}


def cli_json(*args) -> dict:
    "`portopt ... --json` run in this process; its printed JSON."
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([*map(str, args), "--json"]) == 0
    return json.loads(out.getvalue())


def cli_args(params: dict) -> list[str]:
    out = []
    for k, v in params.items():
        out += [f"--{k.replace('_', '-')}", ",".join(v) if isinstance(v, list) else str(v)]
    return out


def assert_same_weights(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        assert abs(a[k] - b[k]) < 1e-9, (k, a[k], b[k])


@pytest.fixture
def stack(supabase_stack, monkeypatch, tmp_path):
    "The session's stack, emptied, its service-role settings in the environment (the listener's and its notebooks')."
    supabase_stack.reset()
    for k, v in supabase_stack.env_vars().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PORTOPT_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("SUPABASE_ACCESS_TOKEN", raising=False)
    with psycopg.connect(supabase_stack.settings["SUPABASE_DB_URL"], autocommit=True) as conn:
        conn.execute("DELETE FROM public.request_quotas WHERE owner <> '*'")
    return supabase_stack


def as_user(stack, user_id):
    "A client of the stack as a signed-in user: the anon key and the user's JWT (what a web app holds)."
    from portopt.client import connect
    s = stack.settings
    return connect(s["SUPABASE_URL"], s["SUPABASE_ANON_KEY"], stack.user_token(user_id))


def listener(stack, **kw) -> Listener:
    from portopt.supabase import SupabaseStore
    s = stack.settings
    return Listener(SupabaseStore(s["SUPABASE_URL"], s["SUPABASE_SERVICE_ROLE_KEY"]), papermill=False, warm_kernel=False,
                    db_url=s["SUPABASE_DB_URL"], **kw)


def drain(stack, **kw) -> Listener:
    "One listener handles every pending event, then closes."
    ls = listener(stack, **kw)
    try:
        ls.handle_pending()
    finally:
        ls.close()
        ls.store.close()
    return ls


def unit_runs(stack, request_id) -> list[tuple]:
    with psycopg.connect(stack.settings["SUPABASE_DB_URL"]) as conn:
        return conn.execute("SELECT status, attempts, error FROM public.runs WHERE unit = %s", (f"request:{request_id}",)).fetchall()


def test_a_users_optimize_backtest_and_report_requests_return_the_clis_json(stack, tmp_path):
    a = as_user(stack, str(uuid.uuid4()))
    opt = a.submit_request("optimize", OPTIMIZE)
    bt = a.submit_request("backtest", BACKTEST)
    rep = a.submit_request("report", {"name": "portfolio", "parameters": {"dataset": "coingecko-daily", "assets": ["BTC", "ETH", "USDC"],
                                                                          "strategies": ["min_variance"], "window": 60,
                                                                          "start": "2022-06-01", "as_of": "2022-09-01"}})
    assert {opt["status"], bt["status"], rep["status"]} == {"queued"}
    served = drain(stack).served
    assert sorted(s.status for s in served) == ["succeeded"] * 3, [(s.kind, s.error) for s in served]

    got = a.request_row(opt["id"])
    want = cli_json("optimize", *cli_args(OPTIMIZE), "--store", tmp_path / "cli.sqlite")
    assert got["status"] == "succeeded" and got["error"] is None and got["duration"] > 0
    assert_same_weights(got["result"]["weights"], want["weights"])
    assert got["result"]["data"] == want["data"] and got["result"]["frequency"] == want["frequency"]
    assert got["result"].keys() == want.keys()

    got = a.request_row(bt["id"])["result"]
    want = cli_json("backtest", *cli_args(BACKTEST), "--store", tmp_path / "cli.sqlite")
    assert got.keys() == want.keys() and got["strategy"] == want["strategy"] == "min_variance"
    for stamp, w in want["weights"].items():
        assert_same_weights(got["weights"][stamp], w)
    assert got["weights"].keys() == want["weights"].keys()
    for name in ("min_variance", "hrp", "benchmark (equal weight)"):
        for m in ("total_return", "annualized_volatility", "max_drawdown", "sharpe"):
            assert abs(got["results"][name]["metrics"][m] - want["results"][name]["metrics"][m]) < 1e-9, (name, m)

    row = a.request_row(rep["id"])
    assert row["report"]["notebook"].endswith("portfolio.ipynb") and os.path.isfile(row["report"]["html"])
    assert row["result"]["metrics"] and "min_variance" in row["result"]["metrics"]


def test_another_user_cannot_read_cancel_or_change_a_request_nor_name_anothers_portfolio(stack):
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    a, b = as_user(stack, alice), as_user(stack, bob)
    a.upsert_portfolio("a-fund", settings={"assets": ["BTC", "USDC"]})
    pid = a.portfolio_id("a-fund")
    mine = a.submit_request("reallocate", {"portfolio": "a-fund"})
    assert mine["owner"] == alice and mine["portfolio_id"] == pid
    assert b.request_row(mine["id"]) is None and b.read_requests().empty          # B reads nothing of A's
    with pytest.raises(StoreError, match="no request"):
        b.cancel_request(mine["id"])
    assert b.client.table("requests").update({"status": "cancelled"}).eq("id", mine["id"]).execute().data == []
    for name in ("a-fund", pid):                                                  # A's portfolio, by name or by id
        with pytest.raises(ConfigError, match="among your portfolios"):
            b.submit_request("reallocate", {"portfolio": name})
    own = b.submit_request("optimize", OPTIMIZE)
    from postgrest.exceptions import APIError
    for change in ({"status": "succeeded"}, {"result": {"weights": {"BTC": 1}}}, {"error": None}, {"owner": alice}):
        with pytest.raises(APIError) as e:                                        # never status (but cancelled) nor result
            b.client.table("requests").update(change).eq("id", own["id"]).execute()
        assert e.value.code == "42501"
    with pytest.raises(APIError) as e:                                            # nor at insert
        b.client.table("requests").insert({"kind": "optimize", "parameters": {}, "status": "succeeded"}).execute()
    assert e.value.code == "42501"
    from portopt.supabase import SupabaseStore
    s = stack.settings
    with pytest.raises(StoreError):                                               # anon sees nothing
        SupabaseStore(s["SUPABASE_URL"], s["SUPABASE_ANON_KEY"]).read_requests()
    assert a.request_row(mine["id"])["status"] == "queued"                        # untouched by B
    assert a.cancel_request(mine["id"])["status"] == "cancelled"                  # A may cancel it


def test_a_malformed_request_is_rejected_with_one_line_and_runs_nothing_beside_a_good_one(stack):
    a = as_user(stack, str(uuid.uuid4()))
    with pytest.raises(ConfigError, match="requests_kind_check|kind"):            # refused at insert by the database
        a.submit_request("rebalance", {})
    with pytest.raises(ConfigError, match="parameters_check|parameters"):
        a.submit_request("optimize", [1, 2])
    bad = a.submit_request("optimize", dict(OPTIMIZE, window="ninety"))
    unknown = a.submit_request("backtest", dict(BACKTEST, rebalance_evry=30))
    failing = a.submit_request("optimize", {"source": "nowhere", "strategy": "hrp"})  # valid, fails when run
    good = a.submit_request("optimize", OPTIMIZE)
    drain(stack)
    rows = {r["id"]: r for r in a.read_requests().to_dict("records")}
    assert rows[bad["id"]]["status"] == "rejected" and rows[bad["id"]]["result"] is None
    assert rows[bad["id"]]["error"] == "optimize request: window 'ninety' is not a number"
    assert rows[unknown["id"]]["error"] == "backtest request: rebalance_evry: not a parameter of this kind"
    assert rows[failing["id"]]["status"] == "failed" and "no prices from source(s) ['nowhere']" in rows[failing["id"]]["error"]
    assert rows[good["id"]]["status"] == "succeeded" and rows[good["id"]]["result"]["weights"]
    for r in rows.values():
        assert not isinstance(r["error"], str) or "\n" not in r["error"]
    assert unit_runs(stack, bad["id"])[0][0] == "failed"                          # its run says why, and ran nothing
    with psycopg.connect(stack.settings["SUPABASE_DB_URL"]) as conn:
        assert conn.execute("SELECT count(*) FROM public.runs WHERE unit IS NULL").fetchone()[0] == 0


def test_a_duplicate_idempotency_key_returns_the_first_request(stack):
    a, b = as_user(stack, str(uuid.uuid4())), as_user(stack, str(uuid.uuid4()))
    first = a.submit_request("optimize", OPTIMIZE, idempotency_key="order-42")
    again = a.submit_request("optimize", dict(OPTIMIZE, strategy="hrp"), idempotency_key="order-42")
    assert again["id"] == first["id"] and again["parameters"]["strategy"] == "min_variance" and len(a.read_requests()) == 1
    assert b.submit_request("optimize", OPTIMIZE, idempotency_key="order-42")["id"] != first["id"]  # per owner
    from postgrest.exceptions import APIError
    with pytest.raises(APIError) as e:                                            # a plain insert of it: a conflict
        a.client.table("requests").insert({"kind": "optimize", "parameters": {}, "idempotency_key": "order-42"}).execute()
    assert e.value.code == "23505"


def test_a_request_over_quota_is_refused(stack):
    carol = str(uuid.uuid4())
    with psycopg.connect(stack.settings["SUPABASE_DB_URL"], autocommit=True) as conn:
        conn.execute("INSERT INTO public.request_quotas VALUES (%s, 2, 3)", (carol,))
    c = as_user(stack, carol)
    first = c.submit_request("optimize", OPTIMIZE)
    c.submit_request("optimize", OPTIMIZE)
    with pytest.raises(ConfigError, match="quota: 2 request.s. already queued or running .at most 2."):
        c.submit_request("optimize", OPTIMIZE)
    c.cancel_request(first["id"])
    c.submit_request("optimize", OPTIMIZE)                                        # one fewer queued: room again
    c.cancel_request(c.read_requests(status="queued")["id"].iloc[0])
    with pytest.raises(ConfigError, match="quota: 3 request.s. in the last hour .at most 3."):
        c.submit_request("optimize", OPTIMIZE)
    assert len(c.read_requests()) == 3
    assert as_user(stack, str(uuid.uuid4())).submit_request("optimize", OPTIMIZE)["status"] == "queued"  # another's own


def test_a_cancelled_request_never_runs(stack):
    a = as_user(stack, str(uuid.uuid4()))
    r = a.submit_request("optimize", OPTIMIZE)
    a.cancel_request(r["id"])
    served = drain(stack).served
    assert [(s.request_id, s.status) for s in served] == [(r["id"], "skipped")]
    row = a.request_row(r["id"])
    assert row["status"] == "cancelled" and row["result"] is None and row["error"] == "cancelled by its owner"
    assert unit_runs(stack, r["id"]) == []                                        # never claimed
    with pytest.raises(StoreError, match="is cancelled: only a queued or running request"):
        a.cancel_request(r["id"])


def test_a_request_cancelled_while_it_runs_stops_between_steps(stack, monkeypatch):
    a = as_user(stack, str(uuid.uuid4()))
    r = a.submit_request("backtest", BACKTEST)
    import portopt.commands as commands
    real = commands._step

    def cancel_then_step(checkpoint, name):   # the owner cancels once the data are loaded
        if name == "loaded":
            a.cancel_request(r["id"])
        real(checkpoint, name)
    monkeypatch.setattr(commands, "_step", cancel_then_step)
    served = drain(stack).served
    assert [s.status for s in served] == ["cancelled"]
    row = a.request_row(r["id"])
    assert row["status"] == "cancelled" and row["result"] is None
    assert unit_runs(stack, r["id"])[0][0] == "failed" and "is cancelled" in unit_runs(stack, r["id"])[0][2]
    with psycopg.connect(stack.settings["SUPABASE_DB_URL"]) as conn:  # the backtest never ran: nothing recorded
        assert conn.execute("SELECT count(*) FROM public.backtests").fetchone()[0] == 0


def test_a_request_past_its_timeout_fails_naming_it(stack):
    a = as_user(stack, str(uuid.uuid4()))
    r = a.submit_request("backtest", dict(BACKTEST, timeout=0.001))
    drain(stack)
    row = a.request_row(r["id"])
    assert row["status"] == "failed" and row["error"].startswith("timeout: ran ") and "beyond its timeout of 0.001 s" in row["error"]


def test_killing_the_listener_mid_request_then_restarting_completes_it_once(stack, tmp_path):
    a = as_user(stack, str(uuid.uuid4()))
    slow = dict(BACKTEST, strategy="min_variance,hrp", rebalance_every=2, start="2021-06-01")   # seconds of work: killed mid-way
    r = a.submit_request("backtest", slow)
    env = dict(os.environ, **stack.env_vars(), PORTOPT_RUNS=str(tmp_path / "runs"))
    first = subprocess.Popen([PORTOPT, "listen", "--direct", "--lease", "2", "--poll", "0.2"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while a.request_row(r["id"])["status"] != "running":
            assert time.time() < deadline and first.poll() is None, first.stderr.read() if first.poll() is not None else "no start"
            time.sleep(0.1)
        time.sleep(0.3)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    assert a.request_row(r["id"])["status"] == "running" and unit_runs(stack, r["id"])[0][:2] == ("running", 1)
    time.sleep(2.5)   # its lease expires
    second = subprocess.run([PORTOPT, "listen", "--direct", "--once", "--lease", "60"], env=env, capture_output=True,
                            text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    row = a.request_row(r["id"])
    assert row["status"] == "succeeded" and row["result"]["results"].keys() >= {"min_variance", "hrp"}
    assert unit_runs(stack, r["id"]) == [("succeeded", 2, None)]                  # one row, claimed twice, done once
    with psycopg.connect(stack.settings["SUPABASE_DB_URL"]) as conn:
        assert conn.execute("SELECT count(*) FROM public.events WHERE topic = 'requests' AND consumed_at IS NULL").fetchone()[0] == 0


def test_the_client_call_and_command_go_through_rest_as_the_user(stack, tmp_path):
    "`portopt.client.request` and `portopt request` with the anon key and the user's token; a listener thread runs it."
    import threading
    user = str(uuid.uuid4())
    s = stack.settings
    stop = threading.Event()
    ls = listener(stack, poll_interval=0.2)
    t = threading.Thread(target=ls.run, kwargs={"stop": stop}, daemon=True)
    t.start()
    try:
        done = client_request("optimize", OPTIMIZE, url=s["SUPABASE_URL"], key=s["SUPABASE_ANON_KEY"],
                              access_token=stack.user_token(user), timeout=120, poll=0.2)
        assert done["status"] == "succeeded" and done["owner"] == user
        env = dict(os.environ, SUPABASE_ANON_KEY=s["SUPABASE_ANON_KEY"], SUPABASE_ACCESS_TOKEN=stack.user_token(user))
        env.pop("SUPABASE_SERVICE_ROLE_KEY")
        proc = subprocess.run([PORTOPT, "request", "optimize", *[f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in OPTIMIZE.items()],
                               "--wait", "--json"], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        row = json.loads(proc.stdout)
        assert row["owner"] == user and row["status"] == "succeeded" and row["id"] != done["id"]
        assert_same_weights(row["result"]["weights"], done["result"]["weights"])
        env.pop("SUPABASE_ACCESS_TOKEN")
        proc = subprocess.run([PORTOPT, "request", "optimize", "dataset=coingecko-daily"], env=env, capture_output=True, text=True)
        assert proc.returncode == 1 and proc.stderr.startswith("error: a client of") and "SUPABASE_ACCESS_TOKEN or --token" in proc.stderr
    finally:
        stop.set()
        t.join(30)
        ls.close()


# -- the embedded store: one local user ---------------------------------------------------------------------------
def test_the_embedded_store_runs_a_request_as_the_cli_does(tmp_path):
    path = tmp_path / "s.sqlite"
    done = client_request("optimize", OPTIMIZE, store=path, idempotency_key="k")
    want = cli_json("optimize", *cli_args(OPTIMIZE), "--store", tmp_path / "cli.sqlite")
    assert done["status"] == "succeeded" and done["owner"] == "local"
    assert_same_weights(done["result"]["weights"], want["weights"])
    assert client_request("optimize", {"dataset": "x"}, store=path, idempotency_key="k")["id"] == done["id"]
    bad = client_request("backtest", {"dataset": "coingecko-daily", "fee_bps": -1}, store=path)
    assert bad["status"] == "rejected" and bad["error"] == "backtest request: fee_bps -1: give a number ≥ 0"
    with SQLiteStore(path) as st:
        queued = st.submit_request("optimize", OPTIMIZE)
        st.cancel_request(queued["id"])
        ls = Listener(st, papermill=False, warm_kernel=False)
        ls.handle_pending()
        ls.close()
        assert st.request_row(queued["id"])["status"] == "cancelled" and st.read_events(pending_only=True).empty
        assert st.read_optimizations().empty       # an optimize request stores nothing but its result


def test_a_notebook_request_runs_through_papermill_and_links_its_report(tmp_path, monkeypatch):
    monkeypatch.setenv("PORTOPT_RUNS", str(tmp_path / "runs"))
    path = tmp_path / "s.sqlite"
    with SQLiteStore(path) as st:
        r = st.submit_request("optimize", dict(OPTIMIZE, notebook=True))
        ls = Listener(st, papermill=True, warm_kernel=False)
        try:
            ls.handle_pending()
        finally:
            ls.close()
        row = st.request_row(r["id"])
    assert row["status"] == "succeeded", row["error"]
    assert row["report"]["notebook"].endswith("request.ipynb") and os.path.isfile(row["report"]["html"])
    direct = client_request("optimize", OPTIMIZE, store=path)
    assert_same_weights(row["result"]["weights"], direct["result"]["weights"])


def test_the_overview_shows_a_users_own_requests_and_all_to_the_service_role(stack):
    from portopt.dashboards import live_sections, requests_table
    from portopt.supabase import SupabaseStore
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    a, b = as_user(stack, alice), as_user(stack, bob)
    a.submit_request("optimize", OPTIMIZE)
    b.submit_request("optimize", dict(OPTIMIZE, window="x"))
    drain(stack)
    mine = requests_table(a)
    assert alice[:8] in mine and bob[:8] not in mine and "succeeded" in mine
    s = stack.settings
    with SupabaseStore(s["SUPABASE_URL"], s["SUPABASE_SERVICE_ROLE_KEY"]) as service:
        everyone = live_sections(service)["requests"]
    assert alice[:8] in everyone and bob[:8] in everyone and "rejected" in everyone and "is not a number" in everyone


def test_the_overview_links_a_requests_report_from_the_read_only_store(tmp_path, monkeypatch):
    from portopt.dashboards import open_for_reading, requests_table
    monkeypatch.setenv("PORTOPT_RUNS", str(tmp_path / "runs"))
    path = tmp_path / "s.sqlite"
    with SQLiteStore(path) as st:
        r = st.submit_request("report", {"name": "portfolio", "parameters": {"dataset": "coingecko-daily", "assets": ["BTC", "USDC"],
                                                                             "strategies": ["min_variance"], "window": 60,
                                                                             "start": "2022-06-01"}})
        ls = Listener(st, papermill=False, warm_kernel=False)
        ls.handle_pending()
        ls.close()
        row = st.request_row(r["id"])
    assert row["status"] == "succeeded", row["error"]
    before = path.stat().st_mtime_ns
    store = open_for_reading(path)
    try:
        html = requests_table(store)
    finally:
        store.close()
    folder = os.path.basename(os.path.dirname(row["report"]["html"]))
    assert f">{folder}</a>" in html and "portfolio.html" in html and "report" in html
    assert path.stat().st_mtime_ns == before


def test_a_requests_life_is_the_same_in_both_stores(store):
    "The store contract: queue with its event, idempotency, claim once, start, close with the run; cancelled and failed ends."
    owner = None if isinstance(store, SQLiteStore) else str(uuid.uuid4())   # the service role names the owner
    r = store.submit_request("optimize", {"strategy": "hrp"}, idempotency_key="k", owner=owner)
    assert r["status"] == "queued" and r["owner"] == (owner or "local")
    assert store.submit_request("backtest", {}, idempotency_key="k", owner=owner)["id"] == r["id"]
    assert [p["request_id"] for p in store.read_events("requests", pending_only=True)["payload"]] == [r["id"]]
    run = store.claim_unit(f"request:{r['id']}", "request", {"request_id": r["id"]})
    assert store.claim_unit(f"request:{r['id']}", "request", {"request_id": r["id"]}) is None   # held: never twice
    assert store.start_request(r["id"]) == "running"
    store.complete_run(run, [dict(write="request", id=r["id"], status="succeeded", result={"weights": {"BTC": 1.0}},
                                  report={"html": "x.html"})], claim=run.token)
    row = store.request_row(r["id"])
    queued = store.submit_request("optimize", {"strategy": "hrp"}, owner=owner)   # beside it, one with no result yet
    listed = store.read_requests().set_index("id")   # a text column with NULLs (pandas 3 reads them as NaN) is parsed
    assert listed.loc[r["id"], "result"] == {"weights": {"BTC": 1.0}} and listed.loc[r["id"], "report"] == {"html": "x.html"}
    assert listed.loc[queued["id"], "result"] is None and listed.loc[queued["id"], "report"] is None
    assert row["status"] == "succeeded" and row["result"] == {"weights": {"BTC": 1.0}} and row["report"] == {"html": "x.html"}
    assert row["duration"] >= 0 and row["started_at"] and row["finished_at"]
    ends = {}
    for status, error in (("cancelled", None), ("failed", "ConfigError: no prices")):
        q = store.submit_request("optimize", {}, owner=owner)
        claim = store.claim_unit(f"request:{q['id']}", "request", {"request_id": q["id"]})
        store.start_request(q["id"])
        if status == "cancelled":
            store.cancel_request(q["id"])
            assert store.start_request(q["id"]) == "cancelled"
        store.complete_run(claim, [dict(write="request", id=q["id"], status="succeeded" if status == "cancelled" else status,
                                        result={"weights": {}} if status == "cancelled" else None, error=error)], claim=claim.token)
        ends[status] = store.request_row(q["id"])
    assert ends["cancelled"]["status"] == "cancelled" and ends["cancelled"]["result"] is None
    assert ends["failed"]["status"] == "failed" and ends["failed"]["error"] == "ConfigError: no prices"
    units = store.read_units().set_index("unit")
    assert units.loc[f"request:{r['id']}", "status"] == "succeeded"
    assert units.loc[f"request:{ends['failed']['id']}", ["status", "error"]].tolist() == ["failed", "ConfigError: no prices"]
    assert units.loc[f"request:{ends['cancelled']['id']}", "error"].endswith("is cancelled: nothing of it was written")
    for bad in (("rebalance", {}), ("optimize", [1, 2])):
        with pytest.raises(ConfigError):
            store.submit_request(*bad, owner=owner)


def test_the_migration_adds_requests_to_realtime_where_the_publication_exists(supabase_stack):
    "A hosted project has the `supabase_realtime` publication: requests joins it (clients subscribe); the local stack has none."
    from psycopg.conninfo import make_conninfo
    from conftest import ROOT
    from portopt.supabase import apply_migrations
    url, db = supabase_stack.settings["SUPABASE_DB_URL"], f"portopt_rt_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {db}")
    hosted = make_conninfo(url, dbname=db)
    try:
        with psycopg.connect(hosted, autocommit=True) as conn:
            conn.execute((ROOT / "supabase" / "local" / "bootstrap.sql").read_text())
            conn.execute("CREATE PUBLICATION supabase_realtime")   # what a hosted project has
        apply_migrations(hosted)
        with psycopg.connect(hosted) as conn:
            assert conn.execute("SELECT tablename FROM pg_publication_tables WHERE pubname = 'supabase_realtime'").fetchall() == [("requests",)]
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM pg_publication WHERE pubname = 'supabase_realtime'").fetchone()[0] == 0
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def test_a_sweep_request_returns_the_clis_json_and_the_listener_decides_its_workers(tmp_path):
    "A sweep request (embedded store) equals `portopt sweep --json` for the same grid; a client may not size the cluster."
    sweep = {"dataset": "coingecko-daily", "assets": ["BTC", "ETH", "SOL"], "strategies": ["hrp", "min_variance"],
             "window": "90", "rebalance_every": "30", "fee_bps": "10"}
    done = client_request("sweep", sweep, store=tmp_path / "s.sqlite")
    want = cli_json("sweep", *cli_args(sweep), "--store", tmp_path / "cli.sqlite")
    assert done["status"] == "succeeded", done["error"]
    got = {c["strategy"]: c for c in done["result"]["configs"]}
    assert sorted(got) == ["hrp", "min_variance"] and len(want["configs"]) == 2
    for c in want["configs"]:
        for k in ("sharpe", "annualized_return", "max_drawdown", "mean_turnover", "rebalances"):
            assert abs(got[c["strategy"]][k] - c[k]) < 1e-9, (c["strategy"], k)
    big = client_request("sweep", dict(sweep, workers=64), store=tmp_path / "s.sqlite")
    assert big["status"] == "rejected" and big["error"] == "workers: the listener's machine decides how many workers a sweep uses"
