"""`portopt import` on real exchange files (Binance, ccxt, Kraken, Yahoo) and its refusals, each one line naming
the file, the row and the fix, with the store byte-identical afterwards; `portopt data`."""
import json

import numpy as np
import pandas as pd
import pytest
from conftest import FIXTURES, dump

from portopt.data import import_file
from portopt.store import SQLiteStore

EX = FIXTURES / "exchange-klines"
BINANCE_1H = EX / "intabyu-interview-at" / "BTCUSDT-1h-2023-01.csv"
BINANCE_1D = EX / "fred3105-Modeling-Crypto-Pricees" / "SOLUSDT.csv"
CCXT_1D, CCXT_1H = EX / "Yanker628-ZenithAlgo" / "SOL_USDT_1d.csv", EX / "Yanker628-ZenithAlgo" / "BTC_USDT_1h.csv"
KRAKEN = EX / "ukcw-cp5105" / "XBTUSD_1440.csv"
YAHOO, YAHOO_HISTORY = EX / "Traivok-bss" / "SOL-USD.csv", EX / "zaskap-ts_foundational_models" / "SOL-USD.csv"

REAL = {  # file: (layout, default source, asset, rows, first, last)
    BINANCE_1H: ("binance", "binance", "BTC", 744, "2023-01-01 00:00", "2023-01-31 23:00"),
    BINANCE_1D: ("binance", "binance", "SOL", 1046, "2020-08-11", "2023-06-22"),
    CCXT_1D: ("one-asset", "file:SOL_USDT_1d.csv", "SOL", 1000, "2023-03-28", "2025-12-21"),
    CCXT_1H: ("one-asset", "file:BTC_USDT_1h.csv", "BTC", 1000, "2025-11-10 05:00", "2025-12-21 20:00"),
    KRAKEN: ("kraken", "kraken", "BTC", 3178, "2013-10-06", "2022-06-30"),
    YAHOO: ("yahoo", "yahoo", "SOL", 1568, "2020-04-10", "2024-07-25"),
    YAHOO_HISTORY: ("yahoo", "yahoo", "SOL", 1727, "2020-04-10", "2024-12-31"),
}


@pytest.mark.parametrize("path", list(REAL), ids=lambda p: p.parent.name + "/" + p.name)
def test_real_exchange_file_layout_asset_rows_and_span(path):
    layout, source, asset, rows, first, last = REAL[path]
    f = import_file(path)
    assert (f.layout, f.source, sorted(f.frame["asset"].unique()), len(f.frame)) == (layout, source, [asset], rows)
    assert f.frame["timestamp"].iloc[0] == pd.Timestamp(first, tz="UTC")
    assert f.frame["timestamp"].iloc[-1] == pd.Timestamp(last, tz="UTC")


def test_binance_values_are_the_files_own_and_quote_is_noted():
    f = import_file(BINANCE_1H)
    raw = pd.read_csv(BINANCE_1H)
    assert np.array_equal(f.frame["close"].to_numpy(), raw["close"].to_numpy())
    assert np.array_equal(f.frame["volume"].to_numpy(), raw["volume"].to_numpy())
    assert (f.frame["timestamp"].astype("int64") // 10**6).tolist() == raw["open_time"].tolist()
    assert "asset BTC from the file name 'BTCUSDT-1h-2023-01.csv', quoted in USDT" in f.notes


def test_yahoo_uses_adjusted_close():
    f = import_file(YAHOO)
    raw = pd.read_csv(YAHOO)
    assert np.array_equal(f.frame["close"].to_numpy(), raw["Adj Close"].to_numpy())
    assert any("Adj Close used" in n for n in f.notes)


def test_kraken_gaps_are_kept_and_said():
    f = import_file(KRAKEN)
    assert "BTC: 12 missing 1 day bar(s) inside its span (kept as gaps, nothing filled)" in f.notes


def test_kraken_files_with_the_header_line_shared_dumps_add_are_kraken_too(tmp_path):
    "Kraken's OHLCVT columns with a `time,open,…,trades` header (as shared dumps carry it) are the kraken layout and source."
    with_header = tmp_path / "XBTUSD_1440.csv"
    with_header.write_text("time,open,high,low,close,volume,trades\n" + KRAKEN.read_text())
    f, plain = import_file(with_header), import_file(KRAKEN)
    assert (f.layout, f.source, sorted(f.frame["asset"].unique())) == ("kraken", "kraken", ["BTC"])
    assert f.frame.drop(columns="_row").equals(plain.frame.drop(columns="_row"))


def test_headerless_binance_dumps_in_ms_and_us_import_together(cli, store_path, tmp_path):
    "data.binance.vision files have no header, and from 2025 their times are in µs: the two kinds import in one call."
    lines = BINANCE_1H.read_text().splitlines()[1:]
    us = [",".join([str(int(c) * 1000) if i in (0, 6) else c for i, c in enumerate(l.split(","))]) for l in lines[400:]]
    (tmp_path / "ms").mkdir(); (tmp_path / "us").mkdir()
    (tmp_path / "ms" / "BTCUSDT-1h-2023-01.csv").write_text("\n".join(lines[:400]) + "\n")
    (tmp_path / "us" / "BTCUSDT-1h-2023-01.csv").write_text("\n".join(us) + "\n")
    out = cli("import", str(tmp_path / "*" / "BTCUSDT-1h-2023-01.csv")).stdout
    assert "source 'binance': 744 new" in out
    with SQLiteStore(store_path) as st:
        stored = st.read_prices(["BTC"], source="binance")["BTC"]
    ref = import_file(BINANCE_1H).frame
    assert list(stored.index) == list(ref["timestamp"]) and np.array_equal(stored.to_numpy(), ref["close"].to_numpy())


def test_headerless_binance_dump_with_ms_then_us_timestamps(tmp_path):
    "data.binance.vision files have no header, and from 2025 their times are in µs: a file holding both reads right."
    lines = BINANCE_1H.read_text().splitlines()[1:]
    us = [",".join([str(int(c) * 1000) if i in (0, 6) else c for i, c in enumerate(l.split(","))]) for l in lines[400:]]
    path = tmp_path / "BTCUSDT-1h-2023-01.csv"
    path.write_text("\n".join(lines[:400] + us) + "\n")
    f = import_file(path)
    ref = import_file(BINANCE_1H)
    assert f.layout == "binance" and len(f.frame) == 744
    pd.testing.assert_series_equal(f.frame["timestamp"], ref.frame["timestamp"])
    assert any("epoch units change inside the file: 400 in ms, 344 in us (first change at data row 401)" in n for n in f.notes)


def test_bybit_v5_kline_with_a_date_column(tmp_path):
    "A Bybit v5 export: `timestamp` in epoch ms first, `turnover`, and a `date` text column (ignored for the ms one)."
    raw = pd.read_csv(BINANCE_1H)
    bybit = pd.DataFrame({"timestamp": raw["open_time"], "open": raw["open"], "high": raw["high"], "low": raw["low"],
                          "close": raw["close"], "volume": raw["volume"], "turnover": raw["quote_volume"],
                          "date": pd.to_datetime(raw["open_time"], unit="ms").dt.strftime("%Y-%m-%d %H:%M")})
    path = tmp_path / "BTCUSDT_60.csv"
    bybit.iloc[::-1].to_csv(path, index=False)  # the API returns newest first
    f = import_file(path)
    assert (f.layout, f.source, len(f.frame)) == ("bybit", "bybit", 744)
    assert f.frame["timestamp"].is_monotonic_increasing and "rows sorted by time (the file was newest first)" in f.notes


def test_ccxt_fetch_ohlcv_frame(tmp_path):
    raw = pd.read_csv(BINANCE_1H)
    path = tmp_path / "ETH_USDT.csv"
    raw[["open_time", "open", "high", "low", "close", "volume"]].set_axis(
        ["timestamp", "open", "high", "low", "close", "volume"], axis=1).to_csv(path, index=False)
    f = import_file(path)
    assert (f.layout, f.source, f.frame["asset"].iloc[0], len(f.frame)) == ("ccxt", "ccxt", "ETH", 744)


def test_several_files_and_globs_in_one_call_then_reimport_changes_nothing(cli, store_path):
    out = cli("import", BINANCE_1H, BINANCE_1D, str(EX / "Yanker628-ZenithAlgo" / "*.csv")).stdout
    assert "source 'binance': 1790 new, 0 updated, 0 unchanged" in out
    with SQLiteStore(store_path) as st:
        cov = st.price_coverage().set_index(["source", "asset"])["prices"].to_dict()
        assert len(st.read_events("prices")) == 3  # one per source, all in one transaction
    assert cov == {("binance", "BTC"): 744, ("binance", "SOL"): 1046, ("file:BTC_USDT_1h.csv", "BTC"): 1000,
                   ("file:SOL_USDT_1d.csv", "SOL"): 1000}
    before = dump(store_path)
    again = cli("import", BINANCE_1H, BINANCE_1D, str(EX / "Yanker628-ZenithAlgo" / "*.csv")).stdout
    assert "source 'binance': 0 new, 0 updated, 1790 unchanged" in again
    assert dump(store_path) == before
    data = json.loads(cli("data", "--json").stdout)
    row = next(r for r in data if r["source"] == "binance" and r["asset"] == "BTC")
    assert {k: row[k] for k in ("first", "last", "rows")} == {"first": "2023-01-01T00:00:00Z", "last": "2023-01-31T23:00:00Z",
                                                                  "rows": 744}
    assert "1 h" in row["frequency"] or "hour" in row["frequency"], row
    table = cli("data").stdout
    assert "file:SOL_USDT_1d.csv" in table and "1,000" in table  # rows with a thousands separator (human_table)


def test_source_option_is_stored_with_each_price(cli, store_path):
    cli("import", KRAKEN, "--source", "kraken-archive")
    with SQLiteStore(store_path) as st:
        assert st.price_coverage()[["source", "asset", "prices"]].values.tolist() == [["kraken-archive", "BTC", 3178]]


def test_exact_duplicate_rows_collapse_with_a_note(cli, store_path, tmp_path):
    lines = BINANCE_1H.read_text().splitlines()
    path = tmp_path / "BTCUSDT-1h.csv"
    path.write_text("\n".join(lines[:11] + [lines[10], lines[10]] + lines[11:]) + "\n")  # an exchange repeating a row
    out = cli("import", path).stdout
    assert "note: 2 exact duplicate row(s) collapsed" in out and "744 new" in out


def _bad(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def _lines(edit):
    lines = BINANCE_1H.read_text().splitlines()
    return "\n".join(edit(lines)) + "\n"


def _set_close(line, value):
    cells = line.split(",")
    cells[4] = value
    return ",".join(cells)


REFUSALS = {
    "duplicated column": ("wide.csv", lambda: "date,SOL,BTC,SOL\n2024-01-01,1,2,3\n2024-01-02,1,2,3\n",
                          (), "wide.csv: row 1 (header): columns 2 and 4 are both named 'SOL'"),
    "asset would be a column name": ("close.csv", lambda: "timestamp,close\n2024-01-01,1\n2024-01-02,2\n", ("--asset", "close"),
                                     "the asset would be named 'close', a column name; pass --asset"),
    "no asset name for a one-asset file": ("prices.csv", lambda: "open_time,close\n1704067200000,1\n1704153600000,2\n", (),
                                           "the file name shows no pair (like SOLUSDT.csv or SOL-USD.csv); pass --asset NAME"),
    "price field as a wide column": ("w.csv", lambda: "date,open,BTC\n2024-01-01,1,2\n", (),
                                     "column 'open' is a price field, not an asset"),
    "infinite price": ("BTCUSDT-a.csv", lambda: _lines(lambda l: l[:6] + [_set_close(l[6], "inf")] + l[7:]), (),
                       "BTCUSDT-a.csv: row 7: close of BTC at 2023-01-01T05:00:00+00:00 is inf, not a finite number"),
    "implausible price": ("BTCUSDT-b.csv", lambda: _lines(lambda l: l[:6] + [_set_close(l[6], "1e308")] + l[7:]), (),
                          "row 7: close of BTC at 2023-01-01T05:00:00+00:00 is 1e+308, beyond the plausible 1e+12"),
    "x1000 jump": ("BTCUSDT-c.csv", lambda: _lines(lambda l: l[:6] + [_set_close(l[6], "16600000")] + l[7:]), (),
                   "row 7: close of BTC jumps from 16"),
    "conflicting duplicate": ("BTCUSDT-d.csv", lambda: _lines(lambda l: l[:11] + [_set_close(l[10], "16700.5")] + l[11:]), (),
                              "row 11 and row 12: two different close values for BTC at 2023-01-01T09:00:00+00:00"),
    "mixed frequencies": ("BTCUSDT-e.csv", lambda: "".join([BINANCE_1H.read_text(),
                          *[f"{1675209600000 + i * 86400000},23000,23100,22900,23050,10,0,0,0,0,0,0\n" for i in range(5)]]), (),
                          "mixed bar lengths for BTC: a step of 1 day"),
    "asset option for a wide file": ("wide2.csv", lambda: "date,AAA,BBB\n2024-01-01,1,2\n", ("--asset", "X"),
                                     "--asset is only for a one-asset file; this wide file names its assets"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusal_is_one_error_line_and_the_store_is_unchanged(cli, store_path, tmp_path, case):
    cli("import", KRAKEN)
    before = dump(store_path)
    name, text, options, words = REFUSALS[case]
    proc = cli("import", _bad(tmp_path, name, text()), *options, check=False)
    assert proc.returncode == 1 and proc.stdout == "", proc.stdout
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert words in proc.stderr, proc.stderr
    assert dump(store_path) == before


def test_allow_jumps_accepts_the_jump(cli, store_path, tmp_path):
    path = _bad(tmp_path, "BTCUSDT-c.csv", _lines(lambda l: l[:6] + [_set_close(l[6], "16600000")] + l[7:]))
    assert "744 new" in cli("import", path, "--allow-jumps").stdout


def test_two_files_of_one_asset_at_different_frequencies_are_refused(cli, store_path, tmp_path):
    cli("import", KRAKEN)
    before = dump(store_path)
    hourly = tmp_path / "BTCUSDT-1h.csv"
    hourly.write_text(BINANCE_1H.read_text())
    daily = tmp_path / "BTCUSDT-1d.csv"
    daily.write_text("".join(f"{1675209600000 + i * 86400000},23000,23100,22900,23050,10,0,0,0,0,0,0\n" for i in range(10)))
    proc = cli("import", hourly, daily, check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "1 day bars of BTC, but" in proc.stderr and "has 1 h bars of it under the same source 'binance'" in proc.stderr
    assert dump(store_path) == before


def test_a_later_import_never_changes_a_stored_series_frequency(cli, store_path):
    """Hourly BTC stored under binance; a daily BTC file under the same source (a second call) would overwrite every
    midnight's hourly close with a daily close: refused, naming both bars and the fix; under its own source it lands."""
    cli("import", BINANCE_1H)
    before = dump(store_path)
    proc = cli("import", KRAKEN, "--source", "binance", check=False)
    assert proc.returncode == 1 and proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stderr
    assert "source 'binance' holds 1 h bars of BTC (to 2023-01-31 23:00), this import has 1 day bars" in proc.stderr
    assert "--source binance-1d" in proc.stderr, proc.stderr
    assert dump(store_path) == before
    assert "3178 new" in cli("import", KRAKEN, "--source", "binance-1d").stdout
    assert "0 new, 0 updated, 744 unchanged" in cli("import", BINANCE_1H).stdout   # the same bars again: accepted


def test_conflict_across_two_files_names_both(cli, store_path, tmp_path):
    a, b = tmp_path / "a" / "BTCUSDT.csv", tmp_path / "b" / "BTCUSDT.csv"
    a.parent.mkdir(); b.parent.mkdir()
    lines = BINANCE_1H.read_text().splitlines()
    a.write_text("\n".join(lines[:101]) + "\n")
    b.write_text("\n".join([lines[0], _set_close(lines[100], "1.5e4")] + lines[101:]) + "\n")
    proc = cli("import", a, b, check=False)
    assert proc.returncode == 1 and f"{a} row 101 and {b} row 2: two different close values for BTC" in proc.stderr, proc.stderr


def test_write_prices_many_on_both_stores_checks_every_batch_first(store):
    "The contract: several sources in one call; a bad batch anywhere leaves the store as it was."
    hourly, daily = import_file(BINANCE_1H).frame.drop(columns="_row"), import_file(KRAKEN).frame.drop(columns="_row")
    bad = daily.head(3).assign(close=[1.0, -2.0, 3.0])
    with pytest.raises(Exception, match="non-positive close price -2"):
        store.write_prices_many([(hourly, "binance"), (bad, "kraken")])
    assert store.price_coverage().empty
    res = store.write_prices_many([(hourly, "binance"), (daily, "kraken")])
    assert [(r.inserted, r.unchanged) for r in res] == [(744, 0), (3178, 0)]
    cov = store.price_coverage().set_index("source")["prices"].to_dict()
    assert cov == {"binance": 744, "kraken": 3178}
    got = store.read_prices(["BTC"], source="binance")["BTC"]
    assert np.allclose(got.to_numpy(), hourly["close"].to_numpy(), rtol=0, atol=0)
