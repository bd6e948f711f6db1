"""The scheduler under APScheduler, the listen and schedule commands end to end, and migrations on a fresh database."""
import threading
import time

import pandas as pd
import pytest

from portopt.config import ConfigError
from portopt.schedule import Job, Scheduler, load_schedule
from portopt.store import SQLiteStore

gate = threading.Event()
started = []


def slow(store, tag="x"):
    started.append(tag)
    gate.wait(30)


def broken(store):
    raise RuntimeError("the collector's API is down")


def wait_for(cond, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not cond():
        time.sleep(0.05)
    return cond()


def test_jobs_fire_on_schedule_never_overlap_and_a_failure_does_not_stop_the_rest(tmp_path):
    path = tmp_path / "s.sqlite"
    SQLiteStore(path).close()
    gate.clear()
    started.clear()
    s = Scheduler([Job("slow", every="1s", call=slow), Job("broken", every="1s", call=broken)],
                  store_factory=lambda: SQLiteStore(path))
    s.start(block=False)
    try:
        assert wait_for(lambda: len(started) == 1)
        with SQLiteStore(path) as st:  # "broken" keeps failing and keeps being scheduled
            assert wait_for(lambda: (st.read_runs()["job"] == "broken").sum() >= 2)
        assert s.run_job("slow") is None and "slow" in s.skipped  # a start while it runs is skipped
        assert len(started) == 1
    finally:
        gate.set()
        s.stop()
    with SQLiteStore(path) as st:
        runs = st.read_runs(500)
    slow_runs = runs[runs["job"] == "slow"]
    assert len(slow_runs) == len(started) and set(slow_runs["trigger"]) == {"schedule"}
    failed = runs[runs["job"] == "broken"]
    assert set(failed["status"]) == {"failed"} and failed["error"].str.contains("the collector's API is down").all()
    assert pd.to_datetime(failed["finished_at"]).ge(pd.to_datetime(failed["started_at"])).all()  # the duration is recorded


def test_a_bad_schedule_file_names_the_job_and_the_fix(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('[[job]]\nname = "daily"\ncron = "5 0 * * *"\nevery = "1h"\nreport = "rebalance"\n')
    with pytest.raises(ConfigError, match="job 'daily': give exactly one of cron"):
        load_schedule(f)
    f.write_text('[[job]]\nname = "c"\nevery = "1h"\ncall = "portopt.nothing:here"\n')
    with pytest.raises(ConfigError, match="cannot import call = 'portopt.nothing:here'"):
        load_schedule(f)


def test_schedule_run_now_records_a_manual_run_of_the_report(cli, tmp_path, store_path):
    f = tmp_path / "s.toml"
    f.write_text('[[job]]\nname = "optimize-daily"\ncron = "5 0 * * *"\nreport = "rebalance"\n')
    out = cli("schedule", f, "--run-now", "optimize-daily").stdout
    assert out.startswith("optimize-daily: succeeded")
    with SQLiteStore(store_path) as st:
        run = st.read_runs().iloc[0]
        assert (run["job"], run["trigger"], run["status"]) == ("rebalance", "manual", "succeeded")
        assert (tmp_path / "runs").exists() and st.read_reallocations("rebalance-demo")["status"].tolist() == ["planned"]


def test_listen_once_handles_what_is_pending(cli, store_path):
    with SQLiteStore(store_path) as st:
        days = pd.date_range("2024-01-01", periods=60, freq="D", tz="UTC")
        st.upsert_portfolio("fund", settings={"assets": ["AAA", "BBB"], "window": 20})
        st.write_prices(pd.DataFrame({"timestamp": list(days) * 2, "asset": ["AAA"] * 60 + ["BBB"] * 60,
                                      "close": [100 + (i % 7) for i in range(60)] + [50 + (i % 5) for i in range(60)]}), "test")
    out = cli("listen", "--once", "--direct").stdout
    assert out.startswith("handled 2 event(s), 0 failed")  # the prices, then the run it made announcing its end
    with SQLiteStore(store_path) as st:
        assert st.read_optimizations().loc[0, "portfolio"] == "fund" and st.read_events("prices", pending_only=True).empty


def test_migrations_apply_once_to_a_fresh_database(supabase_stack):
    import psycopg
    from conftest import ROOT
    from portopt.supabase import apply_migrations
    url = supabase_stack.settings["SUPABASE_DB_URL"]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS migrate_test")
        conn.execute("CREATE DATABASE migrate_test")
    fresh = url.rsplit("/", 1)[0] + "/migrate_test"
    with psycopg.connect(fresh, autocommit=True) as conn:
        conn.execute((ROOT / "supabase" / "local" / "bootstrap.sql").read_text())  # what a hosted project has
    assert apply_migrations(fresh) == ["20261121000000_portopt_schema.sql", "20261121071700_backtest_detail.sql",
                                       "20261201000000_portfolio_settings_units.sql", "20261202000000_portfolio_identity.sql",
                                       "20261203000000_unit_results.sql", "20261208000000_complete_unit.sql",
                                       "20261209000000_requests.sql", "20261210000000_price_revisions.sql"]  # in order
    assert apply_migrations(fresh) == []
    with psycopg.connect(fresh) as conn:
        assert conn.execute("SELECT count(*) FROM pg_policies WHERE schemaname = 'public'").fetchone()[0] >= 10
        assert conn.execute("SELECT data_type FROM information_schema.columns WHERE table_name = 'backtests' "
                            "AND column_name = 'detail'").fetchone()[0] == "jsonb"
