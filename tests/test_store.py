"""The store contract, run against every store (`store` fixture: SQLiteStore and SupabaseStore on the local
stack): point-in-time reads, sources, idempotent results, runs, holdings, metrics, alerts, reallocations,
the events outbox. Then what only one store has: SQLite's schema version and WAL readers."""
import sqlite3

import pandas as pd
import pytest
from conftest import FIXTURES

from portopt.config import StoreError
from portopt.data import read_price_file
from portopt.store import SCHEMA_VERSION, TABLES, SQLiteStore, WriteResult, ensure_dataset


def test_schema_has_the_design_tables_and_refuses_a_newer_store(store_path):
    with SQLiteStore(store_path) as st:
        names = {r[0] for r in st.conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
        assert set(TABLES) <= names and st.schema_version == SCHEMA_VERSION
        st.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this portopt"):
        SQLiteStore(store_path)


def test_a_version_1_store_is_migrated_and_keeps_its_backtests(store_path):
    from portopt.store import SCHEMA_V1
    conn = sqlite3.connect(store_path, isolation_level=None)
    conn.executescript(SCHEMA_V1)
    conn.execute("INSERT INTO backtests VALUES ('old', 'hrp', '{\"window\": 90}', '{\"sharpe\": 0.5}', "
                 "'{\"2022-01-01T00:00:00Z\": 0.01}', NULL, '2022-01-02T00:00:00.000000Z')")
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    with SQLiteStore(store_path) as st:
        assert st.schema_version == SCHEMA_VERSION >= 2
        old = st.read_backtest("old")
        assert old["config"] == {"window": 90} and old["detail"] is None and old["returns"].tolist() == [0.01]


def test_a_file_that_is_not_a_database_is_refused(tmp_path):
    bad = tmp_path / "notes.sqlite"
    bad.write_text("these are my notes, not a database\n" * 100)
    with pytest.raises(StoreError, match="cannot open as a portopt store"):
        SQLiteStore(bad)
    assert bad.read_text().startswith("these are my notes")  # and the file is left as it was


def test_as_of_reads_only_what_was_stamped_by_then(store):
    st = store
    ensure_dataset(st)
    p = st.read_prices(["BTC", "SOL"], as_of="2021-06-30")
    assert p.index.max() == pd.Timestamp("2021-06-30", tz="UTC")
    later = st.read_prices(["BTC"], start="2021-06-01", end="2021-06-30")
    pd.testing.assert_series_equal(later["BTC"], p.loc["2021-06-01":, "BTC"])


def test_as_of_is_what_was_known_then_and_never_a_later_revision(store):
    "Bitemporal reads (issue 15): a revised close is seen only by reads as of a time after the revision was recorded."
    import time
    st = store
    long, _ = read_price_file(FIXTURES / "sol-usd-max.csv")   # real CoinGecko SOL history
    st.write_prices(long, "coingecko")
    time.sleep(0.05); first_known = pd.Timestamp.now(tz="UTC"); time.sleep(0.05)
    day, close = long["timestamp"].iloc[100], float(long["close"].iloc[100])
    revised = long.assign(close=long["close"].where(long["timestamp"] != day, close * 2))
    assert st.write_prices(revised, "coingecko") == WriteResult(0, 1, len(long) - 1)   # the revision is not counted twice
    time.sleep(0.05); second_known = pd.Timestamp.now(tz="UTC"); time.sleep(0.05)
    assert st.write_prices(revised.assign(close=revised["close"].where(long["timestamp"] != day, close * 3)),
                           "coingecko").updated == 1
    latest, then, middle = (st.read_prices(["SOL"], as_of=t)["SOL"] for t in (None, first_known, second_known))
    assert (latest[day], then[day], middle[day]) == (close * 3, close, close * 2)
    assert st.read_prices(["SOL"])["SOL"][day] == close * 3                  # no as_of: the latest version
    pd.testing.assert_series_equal(then.drop(day), latest.drop(day))         # nothing else moved
    # history first recorded after as_of (loaded later): its first recorded version, cut at as_of
    early = pd.Timestamp(long["timestamp"].iloc[150])
    before = st.read_prices(["SOL"], as_of=early)["SOL"]
    assert before.index.max() == early and before[day] == close and len(before) == 151


def test_latest_recorded_source_wins_unless_a_source_is_named(store):
    st = store
    long, _ = read_price_file(FIXTURES / "sol-usd-max.csv")
    other = long.assign(close=long["close"] * 1.5)
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
    writer.execute("DELETE FROM price_bars")  # not committed (`prices` is a view over price_bars)
    with SQLiteStore(store_path, timeout=1) as reader:
        assert len(reader.read_prices(["USDC"])) == 1441  # WAL: the reader sees the last commit at once
    writer.execute("ROLLBACK")
    writer.close()


def test_results_are_upserted_on_their_natural_keys(store):
    st = store
    w = pd.Series({"BTC": 0.6, "ETH": 0.4})
    r = pd.Series([0.01, -0.02], index=pd.date_range("2022-01-01", periods=2, tz="UTC"))
    a = st.write_optimization("max_sharpe", {"window": 90}, w, {"sharpe": 1.2}, as_of="2022-01-01")
    b = st.write_optimization("max_sharpe", {"window": 90}, w, {"sharpe": 1.2}, as_of="2022-01-01")
    c = st.write_optimization("max_sharpe", {"window": 120}, w, {"sharpe": 1.1}, as_of="2022-01-01")
    assert a == b != c and len(st.read_optimizations()) == 2
    assert st.read_optimizations("max_sharpe").set_index("id").loc[a, "weights"] == {"BTC": 0.6, "ETH": 0.4}
    x = st.write_backtest("hrp", {"window": 90, "start": pd.Timestamp("2022-01-01", tz="UTC")}, {"sharpe": 0.5}, r)
    y = st.write_backtest("hrp", {"window": 90, "start": pd.Timestamp("2022-01-01", tz="UTC")}, {"sharpe": 0.5}, r)
    assert x == y and len(st.read_backtests()) == 1
    pd.testing.assert_series_equal(st.read_backtests().loc[0, "returns"], r, check_names=False, check_freq=False)


def test_a_backtest_keeps_its_detail_and_is_found_by_the_data_it_ran_on(store):
    st = store
    r = pd.Series([0.01, -0.02, 0.005], index=pd.date_range("2022-01-01", periods=3, tz="UTC"))
    a_cfg, b_cfg = {"window": 90, "data_hash": "aaa"}, {"window": 120, "data_hash": "aaa"}
    detail = {"weights": {"2022-01-01T00:00:00+00:00": {"BTC": 0.25, "ETH": 0.75}}, "config": {"assets": ["BTC", "ETH"]}}
    a = st.write_backtest("hrp", a_cfg, {"sharpe": 0.5}, r, detail=detail)
    b = st.write_backtest("hrp", b_cfg, {"sharpe": 0.4}, r * 2)
    c = st.write_backtest("hrp", {"window": 90, "data_hash": "bbb"}, {"sharpe": 0.1}, r)
    assert len({a, b, c}) == 3
    got = st.read_backtest(a)
    assert got["id"] == a and got["strategy"] == "hrp" and got["config"] == a_cfg and got["metrics"] == {"sharpe": 0.5}
    assert got["detail"] == detail and st.read_backtest(b)["detail"] is None and st.read_backtest("no-such-id") is None
    pd.testing.assert_series_equal(got["returns"], r, check_names=False, check_freq=False)
    assert st.write_backtest("hrp", a_cfg, {"sharpe": 0.5}, r) == a and st.read_backtest(a)["detail"] == detail  # kept
    assert st.write_backtest("hrp", a_cfg, {"sharpe": 0.5}, r, detail={"v": 2}) == a and st.read_backtest(a)["detail"] == {"v": 2}
    assert sorted(st.read_backtests(data_hash="aaa")["id"]) == sorted([a, b])
    assert st.read_backtests(data_hash="bbb")["id"].tolist() == [c] and st.read_backtests(data_hash="ccc").empty
    assert "detail" not in st.read_backtests().columns and len(st.read_backtests(limit=None)) == 3
    assert len(st.read_backtests(limit=2)) == 2


def test_runs_are_recorded_with_their_outcome(store):
    st = store
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


def test_holdings_are_point_in_time_snapshots_of_a_known_portfolio(store):
    st = store
    from portopt.config import DataError
    with pytest.raises(StoreError, match="no portfolio 'ghost'"):
        st.write_holdings("ghost", pd.Series({"SOL": 1.0}), "2024-01-01")
    st.upsert_portfolio("fund", wallet="9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin")
    st.write_holdings("fund", pd.Series({"SOL": 10.0, "USDC": 5.0}), "2024-01-01")
    st.write_holdings("fund", pd.Series({"SOL": 12.5}), "2024-02-01")
    before = st.read_holdings("fund", as_of="2024-01-31")
    assert before.to_dict() == {"SOL": 10.0, "USDC": 5.0} and st.read_holdings("fund").to_dict() == {"SOL": 12.5}
    assert st.read_holdings("fund", as_of="2023-12-31").empty and st.read_holdings("fund", as_of="2023-12-31").attrs["as_of"] is None
    assert before.attrs["as_of"] == pd.Timestamp("2024-01-01", tz="UTC")   # the snapshot's time, which decides when a plan is made
    assert st.read_holdings("fund").attrs["as_of"] == pd.Timestamp("2024-02-01", tz="UTC")
    events = len(st.read_events("holdings"))
    with pytest.raises(DataError, match="negative units for \\['USDC'\\]"):
        st.write_holdings("fund", pd.Series({"SOL": 1.0, "USDC": -2.0}), "2024-03-01")
    assert st.read_holdings("fund").to_dict() == {"SOL": 12.5} and len(st.read_events("holdings")) == events
    assert st.read_portfolios().loc[0, "wallet"].startswith("9xQe")


def test_market_metrics_upsert_and_refuse_bad_values(store):
    st = store
    from portopt.config import DataError
    m = pd.DataFrame({"timestamp": ["2025-11-03T00:00:00Z", "2025-11-04T00:00:00Z"], "asset": ["USDC", "USDC"],
                      "metric": ["utilization", "utilization"], "value": [0.779, 0.781]})
    assert st.write_market_metrics(m, "solana:kamino").inserted == 2
    changed = st.write_market_metrics(m.assign(value=[0.779, 0.790]), "solana:kamino")
    assert (changed.inserted, changed.updated, changed.unchanged) == (0, 1, 1)
    got = st.read_market_metrics(["USDC"], as_of="2025-11-03T12:00:00Z")
    assert got["value"].tolist() == [0.779] and got["source"].tolist() == ["solana:kamino"]
    with pytest.raises(DataError, match="is not a finite number"):
        st.write_market_metrics(m.assign(value=[0.5, float("inf")]), "solana:kamino")
    assert st.read_market_metrics()["value"].tolist() == [0.779, 0.790]
    events = st.read_events("market_metrics")["payload"].tolist()
    assert [(e["inserted"], e["updated"], e["assets"]) for e in events] == [(2, 0, ["USDC"]), (0, 1, ["USDC"])]


def test_writing_the_same_batch_again_changes_nothing_and_emits_no_event(store):
    long, _ = read_price_file(FIXTURES / "usdc-usd-max.csv")
    first = store.write_prices(long, "coingecko")
    again = store.write_prices(long, "coingecko")
    assert (first.inserted, first.updated, first.unchanged) == (1441, 0, 0)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 1441)
    events = store.read_events("prices")
    assert len(events) == 1 and events.loc[0, "payload"]["assets"] == ["USDC"] and events.loc[0, "payload"]["inserted"] == 1441


def test_a_bad_batch_writes_nothing(store):
    from portopt.config import DataError
    long, _ = read_price_file(FIXTURES / "usdc-usd-max.csv")
    bad = long.copy()
    bad.loc[bad.index[-1], "close"] = -3.0
    with pytest.raises(DataError, match="non-positive"):
        store.write_prices(bad, "coingecko")
    assert store.price_coverage().empty and store.read_events().empty


def test_events_are_consumed_once(store):
    store.upsert_portfolio("fund")
    store.write_holdings("fund", pd.Series({"SOL": 1.0}), "2024-01-01")
    store.write_holdings("fund", pd.Series({"SOL": 2.0}), "2024-01-02")
    pending = store.read_events(pending_only=True)
    assert pending["topic"].tolist() == ["holdings", "holdings"]
    assert [p["ts"] for p in pending["payload"]] == ["2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z"]
    assert store.mark_events_consumed(pending["id"].tolist()[:1]) == 1
    assert store.mark_events_consumed(pending["id"].tolist()) == 1  # the first was consumed already
    assert store.read_events(pending_only=True).empty and store.read_events()["consumed_at"].notna().all()


def test_alerts_open_and_resolve(store):
    store.upsert_portfolio("fund")
    a = store.write_alert("drift", "SOL is 12% off target", portfolio="fund")
    b = store.write_alert("stale_data", "no SOL price since 2024-01-01")
    assert store.read_alerts()["id"].tolist() == [b, a]
    store.resolve_alert(a)
    assert store.read_alerts()["id"].tolist() == [b] and len(store.read_alerts(open_only=False)) == 2
    with pytest.raises(StoreError, match=f"no open alert {a}"):
        store.resolve_alert(a)
    assert [p["kind"] for p in store.read_events("alerts")["payload"]] == ["drift", "stale_data"]


def test_reallocations_are_upserted_on_their_natural_key(store):
    store.upsert_portfolio("fund", settings={"assets": ["SOL", "USDC"]})
    plan = {"target": {"SOL": 0.5, "USDC": 0.5}, "trades": {"SOL": -1.5, "USDC": 150.0}}
    a = store.write_reallocation("fund", "2024-01-02", "planned", plan)
    b = store.write_reallocation("fund", "2024-01-02", "planned", plan)
    got = store.read_reallocations("fund")
    assert a == b and len(got) == 1 and got.loc[0, "plan"] == plan and got.loc[0, "as_of"] == "2024-01-02T00:00:00Z"
    assert store.read_reallocations("other").empty


# ---------------------------------------------------------------- identity, not names (issue 14, item 2)
def test_a_deleted_portfolio_takes_its_history_and_a_recreated_name_starts_empty(store):
    store.upsert_portfolio("fund", settings={"assets": ["SOL", "USDC"]})
    old = store.portfolio_id("fund")
    store.write_holdings("fund", pd.Series({"SOL": 2.0}), "2024-01-01")
    store.write_optimization("hrp", {"window": 30}, pd.Series({"SOL": 1.0}), {"sharpe": 1.0}, as_of="2024-01-01", portfolio="fund")
    store.write_reallocation("fund", "2024-01-02", "planned", {"trades": {"SOL": 1.0}})
    store.write_alert("drift", "SOL off target", portfolio="fund")
    store.write_alert("stale_data", "no prices anywhere")  # an alert of no portfolio stays
    bt = store.write_backtest("hrp", {"portfolio": "fund", "window": 30}, {"sharpe": 0.5},
                              pd.Series([0.01], index=pd.date_range("2024-01-01", periods=1, tz="UTC")))
    assert store.read_backtest(bt)["portfolio_id"] == old and store.read_alerts().set_index("message")["portfolio"].fillna("-").to_dict() == {
        "SOL off target": "fund", "no prices anywhere": "-"}
    assert store.delete_portfolio("fund") == 6
    store.upsert_portfolio("fund", settings={"assets": ["SOL", "USDC"]})
    assert store.portfolio_id("fund") != old  # a new portfolio, a new id
    assert store.read_holdings("fund").empty and store.read_reallocations("fund").empty and store.read_reallocations().empty
    assert store.read_optimizations().empty and store.read_backtests().empty and store.read_backtest(bt) is None
    assert store.read_alerts()["message"].tolist() == ["no prices anywhere"]


def test_an_update_keeps_the_id_and_rows_reference_it(store):
    store.upsert_portfolio("fund", settings={"assets": ["SOL"]})
    pid = store.portfolio_id("fund")
    store.upsert_portfolio("fund", wallet="w2", settings={"assets": ["SOL", "USDC"]})
    assert store.portfolio_id("fund") == pid and store.portfolio_id(pid) == pid and len(store.read_portfolios()) == 1
    rid = store.write_reallocation(pid, "2024-01-02", "planned", {"trades": {}})  # by id or by name: the same row
    assert store.write_reallocation("fund", "2024-01-02", "planned", {"trades": {}}) == rid
    got = store.read_reallocations(pid)
    assert got.loc[0, "portfolio_id"] == pid and got.loc[0, "portfolio"] == "fund"
    with pytest.raises(StoreError, match="no portfolio 'ghost'"):
        store.write_alert("drift", "x", portfolio="ghost")


def test_a_version_3_store_is_migrated_with_each_row_on_its_portfolio(store_path):
    "A store of before (rows keyed by portfolio name), with data: after the migration each row is on its portfolio's id."
    from portopt.store import MIGRATIONS
    conn = sqlite3.connect(store_path, isolation_level=None)
    for version, sql in MIGRATIONS:
        if version <= 3:
            for statement in filter(str.strip, sql.split(";")):
                conn.execute(statement)
    conn.execute("PRAGMA user_version = 3")
    now = "2024-01-01T00:00:00.000000Z"
    for name in ("a", "b"):
        conn.execute("INSERT INTO portfolios (portfolio, settings, created_at) VALUES (?, '{}', ?)", (name, now))
        conn.execute("INSERT INTO holdings VALUES (?, 'SOL', '2024-01-01T00:00:00Z', 1.0, 'manual', ?)", (name, now))
        conn.execute("INSERT INTO optimizations VALUES (?, ?, 'hrp', '{}', NULL, '{}', '{}', NULL, ?)", ("o-" + name, name, now))
        conn.execute("INSERT INTO reallocations VALUES (?, ?, '2024-01-02T00:00:00Z', 'planned', '{}', ?)", ("r-" + name, name, now))
        conn.execute("INSERT INTO alerts (portfolio, kind, message, created_at) VALUES (?, 'drift', ?, ?)", (name, "m-" + name, now))
        conn.execute("INSERT INTO backtests (id, strategy, config, metrics, returns, created_at) VALUES (?, 'hrp', ?, '{}', '{}', ?)",
                     ("t-" + name, '{"portfolio": "%s"}' % name, now))
    # what leaked before: the rows of a deleted portfolio "gone"; and rows of no portfolio, which stay
    conn.execute("INSERT INTO holdings VALUES ('gone', 'SOL', '2024-01-01T00:00:00Z', 5.0, 'manual', ?)", (now,))
    conn.execute("INSERT INTO alerts (portfolio, kind, message, created_at) VALUES ('gone', 'drift', 'm-gone', ?), "
                 "(NULL, 'stale_data', 'm-all', ?)", (now, now))
    conn.execute("INSERT INTO optimizations VALUES ('o-none', NULL, 'hrp', '{}', NULL, '{}', '{}', NULL, ?)", (now,))
    conn.close()
    with SQLiteStore(store_path) as st:
        assert st.schema_version == SCHEMA_VERSION
        ids = st.read_portfolios().set_index("portfolio")["id"]
        assert sorted(ids.index) == ["a", "b"] and ids["a"] != ids["b"] and len(ids["a"]) == 36
        for name in ("a", "b"):
            assert st.read_holdings(name).to_dict() == {"SOL": 1.0}
            assert st.read_reallocations(name)["id"].tolist() == ["r-" + name]
            assert st.read_backtest("t-" + name)["portfolio_id"] == ids[name]
        opt = st.read_optimizations().set_index("id")
        assert opt["portfolio"].fillna("-").to_dict() == {"o-a": "a", "o-b": "b", "o-none": "-"}
        assert sorted(st.read_alerts()["message"]) == ["m-a", "m-all", "m-b"]  # "m-gone" dropped
        run = st.read_runs().set_index("job").loc["migrate"]
        assert run["parameters"]["dropped"] == {"holdings": 1, "optimizations": 0, "reallocations": 0, "alerts": 1}
        st.delete_portfolio("a")  # and the cascade holds for migrated rows
        st.upsert_portfolio("a")
        assert st.read_holdings("a").empty and st.read_reallocations("a").empty and st.read_backtest("t-a") is None
        assert st.conn.execute("PRAGMA foreign_key_check").fetchall() == []


def test_a_v3_store_with_prices_migrates_and_reads_back_identical_frames(tmp_path, monkeypatch):
    "Version 4 moves `prices` into `price_bars` behind a view: every row, text and read stays what it was."
    from portopt.store import MIGRATIONS, to_iso
    monkeypatch.setenv("PORTOPT_ALLOW_DATES", "1")  # an 1850 price: epoch seconds before 1970
    sol, _ = read_price_file(FIXTURES / "sol-usd-max.csv")
    usdc, _ = read_price_file(FIXTURES / "usdc-usd-max.csv")
    other = sol.assign(close=sol["close"] * 1.01)
    other.loc[other.index[:5], "volume"] = float("nan")
    gold = pd.DataFrame({"timestamp": pd.to_datetime(["1850-01-01", "1850-01-02"], utc=True), "asset": "GOLD", "close": 20.67})
    batches = [(sol, "coingecko", "2024-01-01T00:00:00.000001Z"), (usdc, "coingecko", "2024-01-01T00:00:00.000001Z"),
               (other, "exchange", "2024-02-01T10:20:30.123456Z"), (gold, "archive", "2024-03-01T00:00:00.999999Z")]
    old = tmp_path / "v3.sqlite"
    conn = sqlite3.connect(old, isolation_level=None)
    for version, sql in MIGRATIONS[:3]:
        for statement in filter(str.strip, sql.split(";")):
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 3")
    rows = []
    for frame, source, at in batches:
        for r in frame.reindex(columns=["timestamp", "asset", "open", "high", "low", "close", "volume", "market_cap"]).itertuples(index=False):
            rows.append((r.asset, to_iso(r.timestamp), source, *[None if pd.isna(v) else float(v) for v in r[2:]], at))
    conn.executemany("INSERT OR IGNORE INTO assets (asset, updated_at) VALUES (?, 'x')", [(r[0],) for r in rows])
    conn.executemany("INSERT INTO prices VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    conn.close()
    fresh = tmp_path / "v4.sqlite"
    with SQLiteStore(fresh) as st:
        for frame, source, _ in batches:
            st.write_prices(frame, source)
    with SQLiteStore(old) as st, SQLiteStore(fresh) as new:
        assert st.schema_version == SCHEMA_VERSION >= 4
        assert st.conn.execute("SELECT type FROM sqlite_master WHERE name = 'prices'").fetchone()[0] == "view"
        assert st.conn.execute("SELECT * FROM prices ORDER BY asset, ts, source").fetchall() == sorted(rows)
        assert st.conn.execute("SELECT count(*) FROM prices WHERE asset = 'GOLD' AND ts LIKE '1850-%'").fetchone()[0] == 2
        pd.testing.assert_frame_equal(st.price_coverage(), new.price_coverage())
        for kw in [{}, dict(assets=["SOL", "USDC"]), dict(assets=["SOL"], source="coingecko"), dict(start="2021-01-01"),
                   dict(end="2020-06-01 12:30", field="volume"), dict(as_of="2022-02-02"), dict(assets=["GOLD"]),
                   dict(assets=["NOPE"])]:
            got, want = st.read_prices(**kw), new.read_prices(**kw)
            pd.testing.assert_frame_equal(got, want, check_exact=True)
        assert (st.read_prices(["SOL"])["SOL"].to_numpy() == other["close"].to_numpy()).all()  # the later recording wins
        assert st.write_prices(sol, "coingecko").changed == 0  # upserts meet the migrated keys


def test_a_version_5_store_with_units_is_migrated_to_claim_tokens(store_path):
    "Schema 6 adds runs.claim: a v5 store's unit rows are kept (no token), and a claim of an expired one sets a token."
    from portopt.store import MIGRATIONS, ClaimLost
    conn = sqlite3.connect(store_path, isolation_level=None)
    for version, sql in MIGRATIONS:
        if version <= 5:
            conn.executescript(sql)
    conn.execute("INSERT INTO runs (id, job, trigger, parameters, status, started_at, unit, lease_until, attempts) VALUES "
                 "('r1', 'rebalance', 'event', '{}', 'running', '2026-01-01T00:00:00.000000Z', 'u1', '2026-01-01T00:05:00.000000Z', 1),"
                 "('r2', 'rebalance', 'event', '{}', 'succeeded', '2026-01-01T00:00:00.000000Z', 'u2', '2026-01-01T00:05:00.000000Z', 1)")
    conn.execute("PRAGMA user_version = 5")
    conn.close()
    with SQLiteStore(store_path) as st:
        assert st.schema_version == SCHEMA_VERSION >= 6
        units = st.read_units().set_index("unit")
        assert units.loc["u1", "status"] == "running" and units.loc["u2", "status"] == "succeeded" and units["claim"].isna().all()
        with pytest.raises(ClaimLost):          # a pre-6 claim holds no token: a token-checked finish is refused
            st.finish_run("r1", "succeeded", claim="not-its-token")
        c = st.claim_unit("u1", "rebalance", {}, lease_seconds=60)   # expired lease: reclaimed with a token
        assert c == "r1" and len(c.token) == 32
        st.finish_run(c, "succeeded", claim=c.token)
        assert st.read_units().set_index("unit").loc["u1", "status"] == "succeeded"
        assert st.claim_unit("u2", "rebalance", {}) is None


def test_a_version_6_store_is_migrated_to_requests_and_keeps_its_rows(store_path):
    "Schema 8 adds `requests` (issue 16): a v6 store keeps its portfolios and runs, and then takes a request with its event."
    from portopt.store import MIGRATIONS
    conn = sqlite3.connect(store_path, isolation_level=None)
    for version, sql in MIGRATIONS:
        if version <= 6:
            conn.executescript(sql)
    conn.execute("INSERT INTO portfolios (portfolio, owner, settings, created_at, id) VALUES ('fund', NULL, '{}', '2026-01-01T00:00:00Z', 'p-1')")
    conn.execute("INSERT INTO runs (id, job, trigger, parameters, status, started_at) VALUES ('r1', 'x', 'manual', '{}', 'succeeded', '2026-01-01')")
    conn.execute("PRAGMA user_version = 6")
    conn.close()
    with SQLiteStore(store_path) as st:
        assert st.schema_version == SCHEMA_VERSION == 8
        assert st.read_runs()["id"].tolist() == ["r1"] and st.portfolio_id("fund") == "p-1"
        r = st.submit_request("reallocate", {"portfolio": "fund"})
        assert r["portfolio_id"] == "p-1" and r["status"] == "queued" and r["owner"] == "local"
        assert st.read_events("requests")["payload"].tolist() == [{"request_id": r["id"], "kind": "reallocate", "owner": "local"}]
        with pytest.raises(sqlite3.IntegrityError):  # the schema's own checks, under the store's
            st.conn.execute("INSERT INTO requests (kind, parameters, created_at) VALUES ('optimize', '[1, 2]', 'now')")
        with pytest.raises(sqlite3.IntegrityError):
            st.conn.execute("INSERT INTO requests (kind, parameters, created_at) VALUES ('rebalance', '{}', 'now')")


def test_a_dashboards_store_is_read_only_and_an_older_one_is_not_migrated(tmp_path):
    "Issue 13: an app opens the SQLite store read-only; a write fails, and an older schema is named, not migrated."
    from conftest import dump
    from portopt.dashboards import open_for_reading
    path = tmp_path / "s.sqlite"
    with SQLiteStore(path) as st:
        st.upsert_portfolio("fund", settings={"assets": ["BTC"]})
    before = dump(path)
    with open_for_reading(path) as st:
        assert st.read_portfolios()["portfolio"].tolist() == ["fund"]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            st.upsert_portfolio("other")
    assert dump(path) == before
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION - 1}")
    with pytest.raises(StoreError, match=r"older than this portopt.*never migrates it: run `portopt data`"):
        open_for_reading(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION - 1  # left as it was


def test_an_imports_coverage_and_stored_times_are_what_the_general_reads_give(store_path):
    "`_source_coverage` (an import's sources only) and `_price_times` (the stored-bar check) against `price_coverage` and `read_prices`."
    import numpy as np
    long, _ = read_price_file(FIXTURES / "sol-usd-max.csv")
    with SQLiteStore(store_path) as st:
        for k, src in enumerate(["a", "b", "c", "d", "e", "f"]):
            part = long.iloc[k * 50:len(long) - k * 30:(k % 3) + 1]
            st.write_prices(pd.concat([part, part.assign(asset=f"X{k}")], ignore_index=True), src)
        st.write_prices(long.assign(asset="ONLY_A"), "a")
        every = st.price_coverage()
        for sources in (["a"], ["b", "a"], ["a", "b", "c", "d", "e", "f"], ["a", "nowhere"]):
            want = every[every["source"].isin(sources)].reset_index(drop=True)
            pd.testing.assert_frame_equal(st._source_coverage(sources), want)
        assert st._source_coverage(["nowhere"]).empty and st._source_coverage([]).empty
        for src, start in (("a", None), ("b", "2021-03-01"), ("c", pd.Timestamp("2021-03-01 00:00:00.5", tz="UTC")), ("a", "2099-01-01")):
            assets = ["SOL", "ONLY_A", "X2", "NOPE"]
            wide = st.read_prices(assets=assets, source=src, start=start or "1970-01-02")
            want = {a: wide[a].dropna().index.to_numpy(dtype="datetime64[ns]").view(np.int64) for a in wide}
            got = st._price_times(assets, src, start or "1970-01-02")
            want = {a: v for a, v in want.items() if len(v)}   # an asset with none: absent (read_prices: an empty column)
            assert got.keys() == want.keys() and all((got[a] == want[a]).all() for a in want)
