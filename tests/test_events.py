"""The listener end to end, on both stores: new data -> rebalance (papermill or direct) -> weights and a
reallocation row; events written while it is down; a malformed payload; retries; a database restart; alerts."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pandas as pd
import pytest

from portopt.events import Alert, Listener, check_alerts, raise_alerts

DAYS = pd.date_range("2024-01-01", periods=120, freq="D", tz="UTC")


def prices(days, seed=0):
    "A long price frame of SOL (a random walk) and USDC (1.0) on `days`."
    rng = np.random.default_rng(seed)
    sol = 100 * np.exp(np.cumsum(rng.normal(0, 0.03, len(days))))
    return pd.DataFrame({"timestamp": list(days) * 2, "asset": ["SOL"] * len(days) + ["USDC"] * len(days),
                         "close": list(sol) + [1.0] * len(days)})


def setup_portfolio(store):
    "Prices for 120 days and a portfolio holding SOL and USDC; every event so far consumed (a clean queue)."
    store.write_prices(prices(DAYS), "test")
    store.upsert_portfolio("fund", settings={"assets": ["SOL", "USDC"], "strategy": "min_variance", "window": 30})
    store.write_holdings("fund", pd.Series({"SOL": 10.0, "USDC": 100.0}), DAYS[0])
    store.mark_events_consumed(store.read_events(pending_only=True)["id"].tolist())


def new_day(store, k):
    "Prices of day 120 + k through the store (SQLite) or straight into the REST API (Supabase)."
    day = DAYS[-1] + pd.Timedelta(days=k)
    if hasattr(store, "client"):
        store.client.table("prices").insert([{"asset": "SOL", "ts": day.isoformat(), "source": "rest", "close": 100.0 + k},
                                             {"asset": "USDC", "ts": day.isoformat(), "source": "rest", "close": 1.0}]).execute()
    else:
        store.write_prices(pd.DataFrame({"timestamp": [day, day], "asset": ["SOL", "USDC"], "close": [100.0 + k, 1.0]}), "rest")
    return day


@pytest.fixture
def env(store, monkeypatch, tmp_path, request):
    "The listener's environment: runs under tmp_path; for Supabase, the stack's settings (papermill kernels inherit them)."
    monkeypatch.setenv("PORTOPT_RUNS", str(tmp_path / "runs"))
    if hasattr(store, "client"):
        for k, v in request.getfixturevalue("supabase_stack").env_vars().items():
            monkeypatch.setenv(k, v)
    return tmp_path / "runs"


def test_new_prices_run_the_notebook_and_store_weights_and_a_reallocation(store, env):
    setup_portfolio(store)
    day = new_day(store, 1)
    listener = Listener(store, papermill=True)
    [outcome] = listener.run(max_events=1)
    listener.close()
    assert outcome.status == "handled" and outcome.topic == "prices" and len(outcome.runs) == 1
    opt = store.read_optimizations()
    assert opt.loc[0, "portfolio"] == "fund" and opt.loc[0, "as_of"] == day.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert abs(sum(opt.loc[0, "weights"].values()) - 1) < 1e-6
    realloc = store.read_reallocations("fund")
    assert len(realloc) == 1 and realloc.loc[0, "status"] in ("planned", "none_needed")
    assert realloc.loc[0, "plan"]["optimization_id"] == opt.loc[0, "id"]
    run = store.read_runs().set_index("id").loc[outcome.runs[0]]
    assert (run["job"], run["trigger"], run["status"]) == ("rebalance", "event", "succeeded")
    executed = env.glob("*-rebalance*/rebalance.ipynb")
    nb = json.loads(next(executed).read_text())
    assert any("fund" in "".join(o.get("data", {}).get("text/markdown", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert store.read_events("prices", pending_only=True).empty


def test_events_written_while_the_listener_is_down_are_each_handled_once(store, env):
    setup_portfolio(store)
    for k in (1, 2, 3):
        new_day(store, k)
    assert len(store.read_events(pending_only=True)) == 3
    listener = Listener(store, papermill=False)
    out = listener.run(max_events=3)
    assert [o.status for o in out] == ["handled"] * 3
    rest = listener.handle_pending()  # what the runs themselves announced; no price event twice
    listener.close()
    assert {o.topic for o in rest} <= {"runs", "alerts"}
    runs = store.read_runs()
    assert sorted(runs.loc[runs["trigger"] == "event", "status"]) == ["succeeded"] * 3
    assert len(store.read_reallocations("fund")) == 3 and store.read_events(pending_only=True).empty


def insert_raw_event(store, topic, payload):
    "An outbox row as a foreign writer might leave it."
    if hasattr(store, "client"):
        store.client.table("events").insert({"topic": topic, "payload": payload}).execute()
    else:
        store.conn.execute("INSERT INTO events (topic, payload, created_at) VALUES (?, ?, '2024-01-01T00:00:00Z')",
                           (topic, json.dumps(payload)))


def test_a_malformed_payload_is_recorded_as_an_error_and_does_not_block_the_queue(store, env):
    setup_portfolio(store)
    insert_raw_event(store, "prices", {"assets": "SOL"})  # assets must be a list
    new_day(store, 1)
    listener = Listener(store, papermill=False, backoff=0.01)
    bad, good = listener.run(max_events=2)
    listener.close()
    assert (bad.status, bad.attempts, good.status) == ("failed", 1, "handled")  # no retry for a malformed payload
    failed = store.read_runs().set_index("id").loc[bad.runs[0]]
    assert failed["job"] == "event:prices" and failed["status"] == "failed" and "has no list of assets" in failed["error"]
    assert failed["parameters"]["payload"] == {"assets": "SOL"}
    assert store.read_events("prices", pending_only=True).empty


def test_a_failing_handler_is_retried_then_recorded(store, env):
    calls = []

    def flaky(listener, topic, event_id, payload):
        calls.append(event_id)
        if len(calls) < 3:
            raise RuntimeError("the market API timed out")
        return []

    def broken(listener, topic, event_id, payload):
        raise RuntimeError("always down")

    insert_raw_event(store, "flaky", {})
    insert_raw_event(store, "broken", {})
    listener = Listener(store, papermill=False, attempts=3, backoff=0.01, handlers={"flaky": flaky, "broken": broken})
    a, b = listener.run(max_events=2)
    listener.close()
    assert (a.status, a.attempts, len(calls)) == ("handled", 3, 3)
    assert (b.status, b.attempts) == ("failed", 3) and "always down" in store.read_runs().set_index("id").loc[b.runs[0], "error"]
    assert store.read_events("flaky", pending_only=True).empty and store.read_events("broken", pending_only=True).empty


def test_the_listener_reconnects_after_postgresql_restarts(supabase_stack, monkeypatch, tmp_path):
    from portopt.supabase import SupabaseStore
    supabase_stack.reset()
    for k, v in supabase_stack.env_vars().items():
        monkeypatch.setenv(k, v)
    store = SupabaseStore()
    setup_portfolio(store)
    listener = Listener(store, papermill=False, poll_interval=0.2, backoff=0.1)
    stop, out = threading.Event(), []
    thread = threading.Thread(target=lambda: out.extend(listener.run(stop)))
    thread.start()

    def handled(n, seconds=60):
        deadline = time.monotonic() + seconds
        count = lambda: sum(o.topic == "prices" for o in listener.outcomes)
        while time.monotonic() < deadline and count() < n:
            time.sleep(0.1)
        return count()

    try:
        new_day(store, 1)
        assert handled(1) == 1
        supabase_stack.cmd("restart-db")
        deadline = time.monotonic() + 60
        while True:  # PostgREST reconnects too; retry the insert until it answers
            try:
                new_day(store, 2)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert handled(2) == 2
    finally:
        stop.set()
        thread.join(30)
        listener.close()
    assert [o.status for o in out if o.topic == "prices"] == ["handled", "handled"]
    assert store.read_events(pending_only=True).empty
    assert len(store.read_reallocations("fund")) == 2


class _Hook(BaseHTTPRequestHandler):
    received = []

    def do_POST(self):
        _Hook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_alerts_are_checked_stored_once_and_posted_to_a_webhook(tmp_path):
    from portopt.store import SQLiteStore
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/hook"
    with SQLiteStore(tmp_path / "s.sqlite") as st:
        st.write_prices(prices(DAYS, seed=3), "test")
        st.write_market_metrics(pd.DataFrame({"timestamp": [DAYS[-1]] * 2, "asset": ["USDC", "USDC"],
                                              "metric": ["utilization", "available_liquidity"], "value": [0.95, 1e5]}), "kamino")
        st.upsert_portfolio("fund", settings={"assets": ["SOL", "USDC"], "max_drawdown": 0.01, "utilization_cap": 0.9,
                                              "liquidity_floor": 1e6, "stale_after_hours": 24})
        st.write_holdings("fund", pd.Series({"SOL": 10.0, "USDC": 100.0}), DAYS[0])
        later = DAYS[-1] + pd.Timedelta(days=3)
        from portopt.reallocate import Market, ReallocationSettings, plan_reallocation
        held, market = pd.Series({"SOL": 10.0, "USDC": 100.0}), Market(prices=pd.Series({"SOL": 20.0, "USDC": 1.0}))
        plan = lambda target: plan_reallocation(held, target, market, ReallocationSettings(max_price_age=None)).to_dict()
        in_band = check_alerts(st, "fund", as_of=later, plan=plan({"SOL": 0.66, "USDC": 0.34}))  # SOL is 2/3 of 300
        assert "drift" not in {a.kind for a in in_band}
        alerts = check_alerts(st, "fund", as_of=later, plan=plan({"SOL": 0.2, "USDC": 0.8}))
        assert "SOL is at 66.7% against a target of 20.0%" in next(a.message for a in alerts if a.kind == "drift")
        kinds = sorted(a.kind for a in alerts)
        assert kinds == ["drawdown", "drift", "liquidity", "stale_data", "stale_data", "utilization"]
        ids = raise_alerts(st, alerts, webhook=url)
        assert len(ids) == 5  # one open alert per portfolio and kind: the second stale_data joins the first
        assert raise_alerts(st, alerts, webhook=url) == []
        assert sorted(st.read_alerts()["kind"]) == ["drawdown", "drift", "liquidity", "stale_data", "utilization"]
    server.shutdown()
    assert len(_Hook.received) == 5 and all(r["text"] == r["content"] and r["text"].startswith("[portopt ") for r in _Hook.received)
    assert any("utilization 0.95 is above the cap 0.9" in r["text"] for r in _Hook.received)


def test_papermill_runs_share_one_warm_kernel_and_a_dead_one_is_replaced(store, env):
    setup_portfolio(store)
    listener = Listener(store, papermill=True)
    try:
        new_day(store, 1)
        new_day(store, 2)
        out = listener.run(max_events=2)
        assert [o.status for o in out] == ["handled", "handled"] and listener.kernel.starts == 1
        from jupyter_core.utils import run_sync
        run_sync(listener.kernel.km.shutdown_kernel)(now=True)  # the kernel dies between runs
        new_day(store, 3)
        [third] = [o for o in listener.handle_pending() if o.topic == "prices"]
        assert third.status == "handled" and listener.kernel.starts == 2, third
    finally:
        listener.close()
    assert len(list(env.glob("*-rebalance*/rebalance.ipynb"))) == 3 and len(store.read_reallocations("fund")) == 3


# -- faults: one portfolio never stops another, exactly one run per (event, portfolio) (issue 14, items 1 and 4) ------

import os
import signal
import subprocess
import sys

PORTOPT = os.path.join(os.path.dirname(sys.executable), "portopt")


def setup_many(store, n=20, owners=1):
    "Prices for 120 days and `n` portfolios p00.. holding SOL and USDC (owners o0.., round robin); a clean queue."
    store.write_prices(prices(DAYS), "test")
    for i in range(n):
        store.upsert_portfolio(f"p{i:02d}", owner=f"o{i % owners}",
                               settings={"assets": ["SOL", "USDC"], "strategy": "min_variance", "window": 30})
        store.write_holdings(f"p{i:02d}", pd.Series({"SOL": 10.0 + i, "USDC": 100.0}), DAYS[0])
    store.mark_events_consumed(store.read_events(pending_only=True)["id"].tolist())


def unit_rows(store):
    "The listener's units: one row per (event, portfolio), with its status."
    u = store.read_units()
    return u.assign(event=u["parameters"].map(lambda p: p["event_id"]), portfolio=u["parameters"].map(lambda p: p["portfolio"]))


def assert_results_match_units(store):
    """Exactly one completed runs row per (event, portfolio), none left running, and results exactly for the completed
    ones: every succeeded unit's run has its optimization and its portfolio a decision, and no result names another run."""
    rows = unit_rows(store)
    assert not rows.duplicated(["event", "portfolio"]).any() and not (rows["status"] == "running").any(), rows
    done = rows[rows["status"] == "succeeded"]
    opt = store.read_optimizations(limit=10_000)
    assert set(opt["run_id"].dropna()) == set(done["id"]), "optimizations without a succeeded run, or the reverse"
    pids = {p["portfolio_id"] for p in done["parameters"]}
    assert set(store.read_reallocations(limit=10_000)["portfolio_id"]) == pids


def test_a_bad_portfolio_beside_20_good_ones_fails_alone_with_its_reason(store, env):
    setup_many(store, 20)
    # settings the model accepts but the optimizer refuses, and (SQLite) settings written around the store's check
    store.upsert_portfolio("0-evil", settings={"assets": ["SOL", "USDC"], "strategy": "no_such_strategy", "window": 30})
    store.write_holdings("0-evil", pd.Series({"SOL": 1.0, "USDC": 1.0}), DAYS[0])
    if not hasattr(store, "client"):
        store.conn.execute("INSERT INTO portfolios (portfolio, settings, created_at) VALUES "
                           "('0-zero', '{\"assets\": [\"SOL\"], \"periods_per_year\": 0}', '2024-01-01T00:00:00Z')")
    store.mark_events_consumed(store.read_events(pending_only=True)["id"].tolist())
    new_day(store, 1)
    listener = Listener(store, papermill=False, backoff=0.01)
    [o] = [o for o in listener.handle_pending() if o.topic == "prices"]
    listener.close()
    bad = {"0-evil"} | (set() if hasattr(store, "client") else {"0-zero"})
    assert o.status == "handled" and {u.portfolio for u in o.failed_units} == bad
    assert sum(u.status == "succeeded" for u in o.units) == 20
    assert all(u.attempts == 1 for u in o.failed_units)  # bad settings are not retried
    rows = unit_rows(store).set_index("portfolio")
    assert (rows.loc[[f"p{i:02d}" for i in range(20)], "status"] == "succeeded").all()
    assert "unknown strategy" in rows.loc["0-evil", "error"] or "no_such_strategy" in rows.loc["0-evil", "error"]
    if "0-zero" in bad:
        assert "periods_per_year: Input should be greater than 0" in rows.loc["0-zero", "error"]
    assert len(store.read_reallocations()) == 20 and store.read_events("prices", pending_only=True).empty
    # --retry-failed runs the failed units again, on their own rows: still failing, still one row each
    again = Listener(store, papermill=False, backoff=0.01)
    retried = again.recover(retry_failed=True)
    again.close()
    assert {u.portfolio for u in retried} == bad and all(u.status == "failed" for u in retried)
    rows = unit_rows(store)
    assert len(rows) == 20 + len(bad) and not rows.duplicated(["event", "portfolio"]).any()
    assert (rows.set_index("portfolio").loc[sorted(bad), "attempts"] == 2).all()


def test_bad_settings_through_rest_are_refused_by_the_database(supabase_stack):
    from postgrest.exceptions import APIError
    from portopt.supabase import SupabaseStore
    supabase_stack.reset()
    st = SupabaseStore(supabase_stack.settings["SUPABASE_URL"], supabase_stack.settings["SUPABASE_SERVICE_ROLE_KEY"])
    for settings, words in (({"assets": ["BTC"], "periods_per_year": 0}, "periods_per_year: must be a whole number > 0"),
                            ({"window": 2.5}, "window: must be a whole number"), ({"band": [1.0, 1.1]}, "band: use (low, high)"),
                            ({"bogus": 1}, "bogus: unknown setting"), ({"reallocation": {"participation": 2}}, "reallocation.participation: must be a fraction")):
        with pytest.raises(APIError) as e:
            st.client.table("portfolios").insert({"portfolio": "0-evil", "owner": "u", "settings": settings}).execute()
        assert f"portfolio '0-evil' settings: {words}" in e.value.message, e.value.message
    assert st.read_portfolios().empty
    # the per-owner limit: 50 portfolios, the 51st is refused
    st.client.table("portfolios").insert([{"portfolio": f"q{i}", "owner": "u", "settings": {}} for i in range(50)]).execute()
    with pytest.raises(APIError, match="already has 50 portfolios"):
        st.client.table("portfolios").insert({"portfolio": "q50", "owner": "u", "settings": {}}).execute()
    st.close()


def _listen(store, *args, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    if not hasattr(store, "client"):
        env["PORTOPT_STORE"] = str(store.path)
    return subprocess.Popen([PORTOPT, "listen", "--direct", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for(pred, seconds=120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def test_kill_9_mid_event_leaves_exactly_one_completed_run_per_portfolio(store, env):
    setup_many(store, 20)
    new_day(store, 1)
    first = _listen(store, "--lease", "2", "--poll", "0.2")
    try:
        assert _wait_for(lambda: (unit_rows(store)["status"] == "succeeded").sum() >= 5 if len(store.read_units()) else False)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    rows = unit_rows(store)
    assert 5 <= (rows["status"] == "succeeded").sum() < 20  # killed mid-event
    time.sleep(2.5)  # the killed listener's lease expires
    second = _listen(store, "--once", "--lease", "30")
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err
    rows = unit_rows(store)
    assert len(rows) == 20 and not rows.duplicated(["event", "portfolio"]).any()
    assert (rows["status"] == "succeeded").all() and store.read_events("prices", pending_only=True).empty
    assert len(store.read_reallocations()) == 20
    assert_results_match_units(store)


def test_two_sqlite_listeners_never_handle_a_batch_twice(tmp_path, monkeypatch):
    from portopt.store import SQLiteStore
    st = SQLiteStore(tmp_path / "s.sqlite")
    setup_many(st, 4)
    for k in range(1, 6):
        new_day(st, k)  # 5 batches, each touching the 4 portfolios
    a, b = _listen(st, "--once"), _listen(st, "--once")
    outs = [p.communicate(timeout=600) for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, outs
    rows = unit_rows(st)
    assert len(rows) == 20 and not rows.duplicated(["event", "portfolio"]).any() and (rows["status"] == "succeeded").all()
    assert (rows["attempts"] == 1).all()  # no unit was run twice
    done = [int(o.split("portfolios: ")[1].split(" rebalanced")[0]) for o, _ in outs]
    assert sum(done) == 20, outs
    st.close()


def test_a_database_restart_mid_event_leaves_exactly_one_completed_run_per_portfolio(supabase_stack, monkeypatch, tmp_path):
    from portopt.supabase import SupabaseStore
    supabase_stack.reset()
    for k, v in supabase_stack.env_vars().items():
        monkeypatch.setenv(k, v)
    store = SupabaseStore()
    setup_many(store, 21)
    listener = Listener(store, papermill=False, poll_interval=0.2, backoff=0.5, attempts=6, lease=3)
    stop = threading.Event()
    thread = threading.Thread(target=lambda: listener.run(stop))
    thread.start()
    try:
        new_day(store, 1)
        assert _wait_for(lambda: sum(u.status == "succeeded" for u in listener.units) >= 5)
        before = sum(u.status == "succeeded" for u in listener.units)
        supabase_stack.cmd("restart-db")
        assert before < 21  # the restart came mid-event
        # Done means every unit succeeded and the event is consumed. The listener's claim connection dies with the
        # restart while its units run over REST, so the event's `consumed_at` UPDATE can fail after the last unit and be
        # written on the listener's next round (reconnect, re-claim, every unit found done): stopping the listener as
        # soon as the units were done left the event pending (CI, 2026-12-01).
        assert _wait_for(lambda: len(store.read_units()) == 21 and (store.read_units()["status"] == "succeeded").all()
                         and store.read_events("prices", pending_only=True).empty, 180)
    finally:
        stop.set()
        thread.join(60)
        listener.close()
    rows = unit_rows(store)
    assert len(rows) == 21 and not rows.duplicated(["event", "portfolio"]).any() and (rows["status"] == "succeeded").all()
    assert store.read_events("prices", pending_only=True).empty
    assert_results_match_units(store)
    store.close()


def test_a_spent_event_budget_fails_the_portfolios_left_and_retry_failed_runs_them(tmp_path):
    from portopt.store import SQLiteStore
    with SQLiteStore(tmp_path / "s.sqlite") as st:
        setup_many(st, 3)
        new_day(st, 1)
        listener = Listener(st, papermill=False, event_budget=1e-9)  # spent before the first portfolio
        [o] = [o for o in listener.handle_pending() if o.topic == "prices"]
        assert [u.status for u in o.units] == ["failed"] * 3
        assert all(u.error.startswith("BudgetExceeded: the per-event budget of 1e-09 s was spent") for u in o.units)
        assert st.read_reallocations().empty
        retried = listener.recover(retry_failed=True)
        listener.close()
        assert [u.status for u in retried] == ["succeeded"] * 3 and len(st.read_reallocations()) == 3
        rows = unit_rows(st)
        assert len(rows) == 3 and (rows["status"] == "succeeded").all() and (rows["attempts"] == 2).all()


FAIL_CLOSE = {  # a failure injected inside the store, as the run is marked succeeded (a full disk, a lost connection)
    "sqlite": ["CREATE TRIGGER fail_close BEFORE UPDATE OF status ON runs WHEN NEW.status = 'succeeded' "
               "BEGIN SELECT RAISE(ABORT, 'disk full (injected)'); END"],
    "supabase": ["CREATE FUNCTION public.fail_close() RETURNS trigger LANGUAGE plpgsql AS $$ "
                 "BEGIN RAISE EXCEPTION 'disk full (injected)'; END $$",
                 "CREATE TRIGGER fail_close BEFORE UPDATE OF status ON public.runs FOR EACH ROW "
                 "WHEN (NEW.status = 'succeeded') EXECUTE FUNCTION public.fail_close()"]}
HEAL = {"sqlite": ["DROP TRIGGER IF EXISTS fail_close"],
        "supabase": ["DROP TRIGGER IF EXISTS fail_close ON public.runs", "DROP FUNCTION IF EXISTS public.fail_close()"]}


def _sql(store, request, statements):
    "Run statements on the store's database itself: SQLite's connection, or Postgres as its owner."
    if hasattr(store, "client"):
        import psycopg
        with psycopg.connect(request.getfixturevalue("supabase_stack").settings["SUPABASE_DB_URL"], autocommit=True) as conn:
            for sql in statements:
                conn.execute(sql)
    else:
        for sql in statements:
            store.conn.execute(sql)


@pytest.mark.parametrize("papermill", [False, True], ids=["direct", "papermill"])
def test_a_units_results_commit_with_its_success_or_not_at_all(store, env, papermill, request):
    """Issue 14, item 4, on both stores, directly and through papermill: a unit's optimization, reallocation and alerts
    are written in the transaction that marks its run succeeded. A failure injected there (a trigger on `runs` in the
    database) leaves none of them and posts nothing; once healed, the retry writes exactly one of each and posts the
    alerts it committed."""
    setup_portfolio(store)  # its holdings are far from a min-variance target: a drift alert
    new_day(store, 1)
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hook.received.clear()
    listener = Listener(store, papermill=papermill, backoff=0.01, attempts=1,
                        webhook=f"http://127.0.0.1:{server.server_port}/hook")
    _sql(store, request, FAIL_CLOSE["supabase" if hasattr(store, "client") else "sqlite"])
    try:
        [o] = [o for o in listener.handle_pending() if o.topic == "prices"]
        assert [u.status for u in o.units] == ["failed"] and "disk full" in o.units[0].error
        assert store.read_units()["status"].tolist() == ["failed"]
        assert store.read_optimizations().empty and store.read_reallocations().empty and store.read_alerts().empty
        assert _Hook.received == []  # an alert never committed is never posted
    finally:
        _sql(store, request, HEAL["supabase" if hasattr(store, "client") else "sqlite"])
    try:
        [again] = listener.recover(retry_failed=True)
    finally:
        listener.close()
        server.shutdown()
    assert again.status == "succeeded" and store.read_units()["status"].tolist() == ["succeeded"]
    [opt] = store.read_optimizations().to_dict("records")
    [plan] = store.read_reallocations().to_dict("records")
    assert plan["plan"]["optimization_id"] == opt["id"] and opt["run_id"] == again.run_id
    kinds = store.read_alerts()["kind"].tolist()
    assert kinds == ["drift"] and [h["kind"] for h in _Hook.received] == kinds  # posted once, after the commit


def test_a_unit_claimed_by_name_before_ids_is_recovered_on_its_own_row(tmp_path):
    "A unit row of before schema 5 (keyed and parametrized by the portfolio's name), its lease expired: recovered in place."
    from portopt.store import SQLiteStore, ensure_dataset
    with SQLiteStore(tmp_path / "s.sqlite") as st:
        ensure_dataset(st)
        st.upsert_portfolio("fund", settings={"assets": ["BTC", "USDC"]})
        st.write_holdings("fund", pd.Series({"BTC": 1.0, "USDC": 1000.0}), "2022-09-01")
        st.mark_events_consumed(st.read_events(pending_only=True)["id"].tolist())
        old = st.claim_unit("rebalance:7:fund", "rebalance", {"portfolio": "fund", "as_of": None, "event_id": 7,
                                                              "topic": "holdings"}, lease_seconds=0)
        listener = Listener(st, papermill=False, backoff=0.01)
        [u] = listener.recover()
        listener.close()
        units = st.read_units()
        assert u.status == "succeeded" and u.run_id == old and u.portfolio_id == st.portfolio_id("fund")
        assert units["unit"].tolist() == ["rebalance:7:fund"] and units["status"].tolist() == ["succeeded"]


def test_a_listeners_webhook_does_not_outlive_it(tmp_path, monkeypatch):
    "The webhook reaches the notebooks' kernels by environment while the listener runs, and is put back when it closes."
    from portopt.store import SQLiteStore
    monkeypatch.delenv("PORTOPT_WEBHOOK", raising=False)
    with SQLiteStore(tmp_path / "s.sqlite") as st:
        listener = Listener(st, papermill=False, webhook="http://127.0.0.1:9/hook")
        assert os.environ["PORTOPT_WEBHOOK"] == "http://127.0.0.1:9/hook"
        listener.close()
        assert "PORTOPT_WEBHOOK" not in os.environ
        monkeypatch.setenv("PORTOPT_WEBHOOK", "http://127.0.0.1:9/own")
        listener = Listener(st, papermill=False, webhook="http://127.0.0.1:9/hook")
        listener.close()
        listener.close()  # twice: still the process's own value
        assert os.environ["PORTOPT_WEBHOOK"] == "http://127.0.0.1:9/own"


@pytest.mark.parametrize("papermill", [False, True], ids=["direct", "papermill"])
def test_a_listener_whose_lease_was_taken_over_marks_nothing(store, env, papermill):
    """Issue 14, item 4: listener A claims a unit and stalls past its lease; B reclaims it (a new claim token). A's late
    completion raises ClaimLost: the run is not marked by A; B's marks it,
    one row, succeeded, with exactly one optimization and reallocation. A's results are never written (both stores, both paths)."""
    from portopt.store import ClaimLost
    setup_portfolio(store)
    pid = store.portfolio_id("fund")
    unit, params = f"rebalance:1:{pid}", {"portfolio": "fund", "portfolio_id": pid, "as_of": None, "event_id": 1, "topic": "prices"}
    a = store.claim_unit(unit, "rebalance", params, lease_seconds=0.5)
    assert a is not None and a.token
    time.sleep(1.0)  # A stalls: its lease expires
    b = store.claim_unit(unit, "rebalance", params, lease_seconds=300)
    assert b == a and b.token != a.token  # the same row, a new claim
    late = Listener(store, papermill=papermill)
    try:
        with pytest.raises(ClaimLost, match="taken over"):
            late.rebalance_portfolio(pid, run_id=a)
        [row] = store.read_units().to_dict("records")
        assert row["status"] == "running" and row["attempts"] == 2  # A marked nothing: B's claim stands
        assert store.read_optimizations().empty and store.read_reallocations().empty  # A's results were never written
        assert late.rebalance_portfolio(pid, run_id=b) == b
    finally:
        late.close()
    [row] = store.read_units().to_dict("records")
    assert row["status"] == "succeeded" and row["attempts"] == 2
    assert len(store.read_optimizations()) == 1 and len(store.read_reallocations()) == 1


def test_portfolios_holding_reads_each_portfolios_latest_snapshot(store):
    "The one query a price event's portfolios come from agrees with reading every portfolio's holdings (the base method)."
    from portopt.store import Store
    for name in ("a", "b", "c"):
        store.upsert_portfolio(name)
    store.write_holdings("a", pd.Series({"SOL": 1.0}), "2024-01-01")
    store.write_holdings("b", pd.Series({"SOL": 1.0}), "2024-01-01")
    store.write_holdings("b", pd.Series({"USDC": 5.0}), "2024-01-02")  # b sold its SOL
    store.write_holdings("c", pd.Series({"ETH": 1.0, "SOL": 2.0}), "2024-01-03")
    ids = {n: store.portfolio_id(n) for n in "abc"}
    assert store.portfolios_holding(["SOL"]) == {ids["a"], ids["c"]} == Store.portfolios_holding(store, ["SOL"])
    assert store.portfolios_holding(["USDC", "ETH"]) == {ids["b"], ids["c"]} == Store.portfolios_holding(store, ["USDC", "ETH"])
    assert store.portfolios_holding(["BTC"]) == set() == store.portfolios_holding([])


def test_an_asset_dropped_from_the_window_is_named_and_a_held_plan_alerts_once(tmp_path):
    """As a user found it: BTC's prices end months before SOL's. The unit's weights leave BTC out, and its optimization row
    and decision say so (`excluded`); the plan is held as stale on every event, with one open stale_data alert, not one per event."""
    from portopt.store import SQLiteStore
    with SQLiteStore(tmp_path / "s.sqlite") as st:
        st.write_prices(prices(DAYS), "test")
        st.write_prices(pd.DataFrame({"timestamp": DAYS[:60], "asset": "BTC", "close": np.linspace(40_000, 42_000, 60)}), "test")
        st.upsert_portfolio("fund", settings={"assets": ["SOL", "USDC", "BTC"], "strategy": "min_variance", "window": 30})
        st.write_holdings("fund", pd.Series({"SOL": 10.0, "USDC": 100.0, "BTC": 0.1}), DAYS[0])
        st.mark_events_consumed(st.read_events(pending_only=True)["id"].tolist())
        listener = Listener(st, papermill=False, backoff=0.01)
        for k in (1, 2):
            new_day(st, k)
            listener.handle_pending()
        listener.close()
        assert [u.status for u in listener.units] == ["succeeded", "succeeded"]
        opts, plans = st.read_optimizations(), st.read_reallocations()
        assert len(opts) == 2 and all(set(w) == {"SOL", "USDC"} for w in opts["weights"])
        assert sorted(p["excluded"]["BTC"] for p in opts["params"]) == [f"no returns in the window ending 2024-0{d}" for d in ("4-30", "5-01")]
        assert list(plans["status"]) == ["held", "held"] and all("BTC" in p["plan"]["excluded"] for _, p in plans.iterrows())
        alerts = st.read_alerts()
        assert alerts["kind"].tolist() == ["stale_data"] and "BTC" in alerts["message"][0]
