"""`portopt import`: layouts, one clear error line for a bad file, idempotent and crash-safe writes."""
import json
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from conftest import FIXTURES, dump

from portopt.data import load_prices, read_price_file
from portopt.store import SQLiteStore, WriteResult

SOL, USDC, STOCKS = FIXTURES / "sol-usd-max.csv", FIXTURES / "usdc-usd-max.csv", FIXTURES / "tests_stock_prices.csv"


def test_import_coingecko_file_matches_bundled_data_and_reimport_changes_nothing(cli, store_path):
    out = cli("import", SOL).stdout
    assert "coingecko layout, 887 prices of 1 asset(s) (SOL; 2020-04-11 to 2022-09-14); source 'coingecko'" in out
    assert "source 'coingecko': 887 new, 0 updated, 0 unchanged" in out
    before = dump(store_path)
    again = cli("import", SOL).stdout
    assert "0 new, 0 updated, 887 unchanged" in again
    assert dump(store_path) == before  # not even recorded_at or an outbox row changed
    with SQLiteStore(store_path) as st:
        stored = st.read_prices(["SOL"])["SOL"]
        assert len(st.read_events("prices")) == 1
    bundled = load_prices(assets=["SOL"])["SOL"].dropna()
    pd.testing.assert_series_equal(stored, bundled, check_names=False, check_freq=False)


def test_import_wide_file_with_late_listings(cli, store_path):
    out = cli("import", STOCKS).stdout
    raw = pd.read_csv(STOCKS)
    expected = int(raw.drop(columns="date").notna().sum().sum())
    assert f"wide layout, {expected} prices of 20 asset(s)" in out and f"{expected} new" in out
    with SQLiteStore(store_path) as st:
        p = st.read_prices(["AAPL", "FB"])
    assert p["FB"].first_valid_index() == pd.Timestamp(raw.loc[raw["FB"].notna(), "date"].iloc[0], tz="UTC")
    assert p["AAPL"].first_valid_index() == pd.Timestamp("1989-12-29", tz="UTC")  # FB's late start cuts nothing


def test_long_ohlcv_parquet_round_trip(tmp_path):
    long, _ = read_price_file(SOL)
    ohlcv = long.rename(columns={"timestamp": "Date", "asset": "Symbol"}).assign(open=long["close"], high=long["close"] * 1.01,
                                                                               low=long["close"] * 0.99)
    path = tmp_path / "candles.parquet"
    ohlcv[["Date", "Symbol", "open", "high", "low", "close", "volume"]].to_parquet(path)
    back, layout = read_price_file(path)
    assert layout == "ohlcv" and len(back) == 887
    assert (back["high"] / back["close"]).round(12).eq(1.01).all() and back["asset"].eq("SOL").all()


def _variant(tmp_path, name, edit):
    lines = SOL.read_text().splitlines()
    path = tmp_path / name
    path.write_text("\n".join(edit(lines)) + "\n")
    return path


BAD = {
    "negative.csv": (lambda l: l[:5] + [l[5].replace(",", ",-", 1)] + l[6:], "non-positive close price -"),
    "dupdate.csv": (lambda l: l[:10] + [l[9].split(",")[0] + ",1.2345,1,1"] + l[10:],
                    "row 10 and row 11: two different close values for SOL at"),
    "layout.csv": (lambda l: ["when,value,cap,vol"] + l[1:], "unknown column layout"),
    "text.csv": (lambda l: l[:7] + [l[7].split(",")[0] + ",$0.95,1,1"] + l[8:], "close of SOL is '$0.95', not a number"),
    "zones.csv": (lambda l: [l[0], l[1].replace(" UTC", "+02:00")] + l[2:], "mixed time zones"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_file_gets_one_error_line_and_nothing_is_written(cli, store_path, tmp_path, name):
    cli("import", USDC)
    before = dump(store_path)
    edit, words = BAD[name]
    bad = _variant(tmp_path, name, edit)
    proc = cli("import", bad, "--asset", "SOL", check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert words in proc.stderr, proc.stderr
    assert dump(store_path) == before


def test_import_killed_half_way_leaves_the_store_as_before(cli, store_path, tmp_path):
    cli("import", USDC)
    before = dump(store_path)
    script = tmp_path / "die.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal
        import portopt.store as store
        from portopt.data import read_price_file

        written = []

        def dying(conn, sql, params):
            changed = conn.execute(sql, params).rowcount  # statements of 4,000 rows are written ...
            written.append(1)
            if len(written) == 5:                         # ... 20,000 rows, then the process dies inside the transaction
                os.kill(os.getpid(), signal.SIGKILL)
            return changed

        store._write_price_statement = dying
        frame, _ = read_price_file({str(STOCKS)!r})
        assert len(frame) > 20000
        store.SQLiteStore({str(store_path)!r}).write_prices(frame, "file:tests_stock_prices.csv")
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert dump(store_path) == before
    with SQLiteStore(store_path) as st:  # and the store still works: the import can simply be run again
        assert st.write_prices(read_price_file(STOCKS)[0], "file:tests_stock_prices.csv").inserted > 20000


def test_coingecko_asset_option_is_refused_for_a_wide_file(cli):
    proc = cli("import", STOCKS, "--asset", "X", check=False)
    assert proc.returncode == 1 and "--asset is only for a one-asset file; this wide file names its assets" in proc.stderr


def test_unsorted_rows_are_sorted_with_a_note(tmp_path):
    from portopt.data import import_file
    f = import_file(_variant(tmp_path, "sol-unsorted.csv", lambda l: [l[0], l[2], l[1]] + l[3:]))
    assert f.frame["timestamp"].is_monotonic_increasing and len(f.frame) == 887
    assert "rows sorted by asset and time" in f.notes


def _long_ohlcv(path, assets=100, bars=2000, seed=3):
    "A long OHLCV file as bench/import.py writes it (ISO 8601 hourly bars), `assets × bars` rows; returns the frame."
    rng = np.random.default_rng(seed)
    stamps = pd.date_range("2021-01-01", periods=bars, freq="h", tz="UTC")
    parts = []
    for k in range(assets):
        close = np.round(100 * np.exp(np.cumsum(rng.normal(0, 0.01, bars))), 6)
        parts.append(pd.DataFrame({"timestamp": stamps, "asset": f"A{k:04d}", "open": np.round(close * 0.999, 6),
                                   "high": np.round(close * 1.002, 6), "low": np.round(close * 0.997, 6), "close": close,
                                   "volume": np.round(rng.uniform(1, 1e6, bars), 6)}))
    frame = pd.concat(parts, ignore_index=True)
    frame.assign(timestamp=frame["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")).to_csv(path, index=False, float_format="%.6f")
    return frame


def test_a_large_long_file_imports_exactly_and_a_reimport_changes_nothing(tmp_path, store_path):
    "200,000 rows through the bulk path: exact counts and values; the same file again leaves the store byte-identical."
    from portopt.data import import_files
    f = tmp_path / "ohlcv.csv"
    frame = _long_ohlcv(f)

    def run():
        with SQLiteStore(store_path) as st:
            _, batches, _ = import_files([f])
            return st.write_prices_many([(b, s) for s, b in batches.items()])

    assert run() == [WriteResult(200_000, 0, 0)]
    before = dump(store_path)
    with SQLiteStore(store_path) as st:
        cov = st.price_coverage()
        assert cov["prices"].tolist() == [2000] * 100 and set(cov["source"]) == {"file:ohlcv.csv"}
        assert (cov["first"] == "2021-01-01T00:00:00Z").all() and (cov["last"] == "2021-03-25T07:00:00Z").all()
        for field in ("close", "volume", "open"):
            wide = st.read_prices(field=field)
            expected = frame.pivot(index="timestamp", columns="asset", values=field)
            assert wide.shape == (2000, 100) and np.array_equal(wide.to_numpy(), expected.to_numpy())
        assert len(st.read_events("prices")) == 1
        recorded = st.conn.execute("SELECT DISTINCT recorded_at FROM prices").fetchall()
    assert run() == [WriteResult(0, 0, 200_000)]
    assert dump(store_path) == before  # not a recorded_at, not an outbox row
    # change 3 closes and append one bar: only those rows are written, the rest keep their recorded_at
    changed = frame.copy()
    changed.loc[[5, 70_000, 199_999], "close"] *= 1.01
    extra = changed[changed["asset"] == "A0007"].tail(1).assign(timestamp=pd.Timestamp("2021-03-25T08:00:00Z"))
    changed = pd.concat([changed, extra], ignore_index=True)
    with SQLiteStore(store_path) as st:
        assert st.write_prices(changed, "file:ohlcv.csv") == WriteResult(1, 3, 200_000 - 3)
        rows = st.conn.execute("SELECT recorded_at, count(*) FROM prices GROUP BY recorded_at ORDER BY recorded_at").fetchall()
        assert rows[0] == (recorded[0][0], 200_000 - 3) and rows[1][1] == 4 and len(rows) == 2
        assert st.read_prices(["A0000"]).iloc[5, 0] == changed.loc[5, "close"]
