"""SQLiteStore: schema and migrations, point-in-time reads, sources, WAL readers, idempotent results."""
import sqlite3

import pandas as pd
import pytest
from conftest import FIXTURES

from portopt.config import StoreError
from portopt.data import read_price_file
from portopt.store import SCHEMA_VERSION, TABLES, SQLiteStore, ensure_dataset


def test_schema_has_the_design_tables_and_refuses_a_newer_store(store_path):
    with SQLiteStore(store_path) as st:
        names = {r[0] for r in st.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert set(TABLES) <= names and st.schema_version == SCHEMA_VERSION
        st.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this portopt"):
        SQLiteStore(store_path)


def test_a_file_that_is_not_a_database_is_refused(tmp_path):
    bad = tmp_path / "notes.sqlite"
    bad.write_text("these are my notes, not a database\n" * 100)
    with pytest.raises(StoreError, match="cannot open as a portopt store"):
        SQLiteStore(bad)
    assert bad.read_text().startswith("these are my notes")  # and the file is left as it was


def test_as_of_reads_only_what_was_stamped_by_then(store_path):
    with SQLiteStore(store_path) as st:
        ensure_dataset(st)
        p = st.read_prices(["BTC", "SOL"], as_of="2021-06-30")
        assert p.index.max() == pd.Timestamp("2021-06-30", tz="UTC")
        later = st.read_prices(["BTC"], start="2021-06-01", end="2021-06-30")
        pd.testing.assert_series_equal(later["BTC"], p.loc["2021-06-01":, "BTC"])


def test_latest_recorded_source_wins_unless_a_source_is_named(store_path):
    long, _ = read_price_file(FIXTURES / "sol-usd-max.csv")
    other = long.assign(close=long["close"] * 1.5)
    with SQLiteStore(store_path) as st:
        st.write_prices(long, "coingecko")
        st.write_prices(other, "exchange")
        both = st.read_prices(["SOL"])["SOL"]
        assert (both.to_numpy() == other["close"].to_numpy()).all()
        first = st.read_prices(["SOL"], source="coingecko")["SOL"]
        assert (first.to_numpy() == long["close"].to_numpy()).all()
        cov = st.price_coverage()
        assert sorted(cov["source"]) == ["coingecko", "exchange"] and cov["prices"].tolist() == [887, 887]


def test_readers_are_not_blocked_by_an_open_write(store_path):
    long, _ = read_price_file(FIXTURES / "usdc-usd-max.csv")
    with SQLiteStore(store_path) as st:
        st.write_prices(long, "coingecko")
    writer = sqlite3.connect(store_path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("DELETE FROM prices")  # not committed
    with SQLiteStore(store_path, timeout=1) as reader:
        assert len(reader.read_prices(["USDC"])) == 1441  # WAL: the reader sees the last commit at once
    writer.execute("ROLLBACK")
    writer.close()


def test_results_are_upserted_on_their_natural_keys(store_path):
    w = pd.Series({"BTC": 0.6, "ETH": 0.4})
    r = pd.Series([0.01, -0.02], index=pd.date_range("2022-01-01", periods=2, tz="UTC"))
    with SQLiteStore(store_path) as st:
        a = st.write_optimization("max_sharpe", {"window": 90}, w, {"sharpe": 1.2}, as_of="2022-01-01")
        b = st.write_optimization("max_sharpe", {"window": 90}, w, {"sharpe": 1.2}, as_of="2022-01-01")
        c = st.write_optimization("max_sharpe", {"window": 120}, w, {"sharpe": 1.1}, as_of="2022-01-01")
        assert a == b != c and len(st.read_optimizations()) == 2
        assert st.read_optimizations("max_sharpe").set_index("id").loc[a, "weights"] == {"BTC": 0.6, "ETH": 0.4}
        x = st.write_backtest("hrp", {"window": 90, "start": pd.Timestamp("2022-01-01", tz="UTC")}, {"sharpe": 0.5}, r)
        y = st.write_backtest("hrp", {"window": 90, "start": pd.Timestamp("2022-01-01", tz="UTC")}, {"sharpe": 0.5}, r)
        assert x == y and len(st.read_backtests()) == 1
        pd.testing.assert_series_equal(st.read_backtests().loc[0, "returns"], r, check_names=False, check_freq=False)


def test_runs_are_recorded_with_their_outcome(store_path):
    with SQLiteStore(store_path) as st:
        ok = st.start_run("portfolio", {"window": 90}, trigger="schedule")
        bad = st.start_run("portfolio", {"window": 5})
        st.finish_run(ok, "succeeded", output_path="/tmp/x")
        st.finish_run(bad, "failed", error="ConfigError: window too short")
        runs = st.read_runs().set_index("id")
        assert runs.loc[ok, ["status", "trigger", "output_path"]].tolist() == ["succeeded", "schedule", "/tmp/x"]
        assert runs.loc[bad, "error"] == "ConfigError: window too short" and runs.loc[bad, "finished_at"] is not None
        assert [e["status"] for e in st.read_events("runs")["payload"]] == ["succeeded", "failed"]
        with pytest.raises(StoreError, match="no run"):
            st.finish_run("nope", "failed")


def test_holdings_are_point_in_time_snapshots_of_a_known_portfolio(store_path):
    from portopt.config import DataError
    with SQLiteStore(store_path) as st:
        with pytest.raises(StoreError, match="no portfolio 'ghost'"):
            st.write_holdings("ghost", pd.Series({"SOL": 1.0}), "2024-01-01")
        st.upsert_portfolio("fund", wallet="9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin")
        st.write_holdings("fund", pd.Series({"SOL": 10.0, "USDC": 5.0}), "2024-01-01")
        st.write_holdings("fund", pd.Series({"SOL": 12.5}), "2024-02-01")
        before = st.read_holdings("fund", as_of="2024-01-31")
        assert before.to_dict() == {"SOL": 10.0, "USDC": 5.0} and st.read_holdings("fund").to_dict() == {"SOL": 12.5}
        assert st.read_holdings("fund", as_of="2023-12-31").empty
        events = len(st.read_events("holdings"))
        with pytest.raises(DataError, match="negative units for \\['USDC'\\]"):
            st.write_holdings("fund", pd.Series({"SOL": 1.0, "USDC": -2.0}), "2024-03-01")
        assert st.read_holdings("fund").to_dict() == {"SOL": 12.5} and len(st.read_events("holdings")) == events
        assert st.read_portfolios().loc[0, "wallet"].startswith("9xQe")


def test_market_metrics_upsert_and_refuse_bad_values(store_path):
    from portopt.config import DataError
    m = pd.DataFrame({"timestamp": ["2025-11-03T00:00:00Z", "2025-11-04T00:00:00Z"], "asset": ["USDC", "USDC"],
                      "metric": ["utilization", "utilization"], "value": [0.779, 0.781]})
    with SQLiteStore(store_path) as st:
        assert st.write_market_metrics(m, "solana:kamino").inserted == 2
        changed = st.write_market_metrics(m.assign(value=[0.779, 0.790]), "solana:kamino")
        assert (changed.inserted, changed.updated, changed.unchanged) == (0, 1, 1)
        got = st.read_market_metrics(["USDC"], as_of="2025-11-03T12:00:00Z")
        assert got["value"].tolist() == [0.779] and got["source"].tolist() == ["solana:kamino"]
        with pytest.raises(DataError, match="is not a finite number"):
            st.write_market_metrics(m.assign(value=[0.5, float("inf")]), "solana:kamino")
        assert st.read_market_metrics()["value"].tolist() == [0.779, 0.790]
