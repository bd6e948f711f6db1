"""Frequency-aware annualization and missing data that is never silent (issue 12 items 2 and 3), on real files:
Binance hourly klines, ccxt daily klines, Yahoo Finance equity closes."""
import json

import numpy as np
import pandas as pd
import pytest
from conftest import FIXTURES

from portopt.clean import infer_frequency
from portopt.config import DataError
from portopt.data import load_prices

FREQ = FIXTURES / "frequency"
STOCKS = FIXTURES / "tests_stock_prices.csv"


def binance_hourly() -> pd.Series:
    "BTC closes of the Binance vision file (12 columns, epoch ms open times), read by hand."
    raw = pd.read_csv(FREQ / "BTCUSDT-1h-2023-01.csv")
    return pd.Series(raw["close"].to_numpy(), index=pd.to_datetime(raw["open_time"], unit="ms", utc=True), name="BTC")


def ccxt(name: str, asset: str) -> pd.Series:
    raw = pd.read_csv(FREQ / name)
    return pd.Series(raw["close"].to_numpy(), index=pd.to_datetime(raw["date"], utc=True), name=asset)


def write_wide(path, *series) -> None:
    pd.concat(series, axis=1).rename_axis("timestamp").to_csv(path)


def test_the_frequency_of_real_files_is_inferred():
    assert infer_frequency(binance_hourly().index).describe() == "hourly bars, 8,760 periods a year, inferred"
    assert infer_frequency(ccxt("BTC_USDT_1h.csv", "BTC").index).periods_per_year == 8760
    assert infer_frequency(ccxt("SOL_USDT_1d.csv", "SOL").index).describe() == "daily bars, 365 periods a year, inferred"
    stocks = pd.read_csv(STOCKS, index_col=0, parse_dates=True)
    assert infer_frequency(stocks.index).describe() == "daily bars on weekday sessions, 252 periods a year, inferred"
    # an hourly file joined to a daily one is mixed: refused, naming where
    mixed = pd.concat([binance_hourly(), ccxt("SOL_USDT_1d.csv", "BTC").loc["2023-04-01":"2023-06-30"]]).index
    with pytest.raises(DataError, match=r"bars missing.*2023-01-31T23:00:00Z → 2023-04-01T00:00:00Z"):
        infer_frequency(mixed)


def test_hourly_volatility_is_annualized_with_8760(cli, tmp_path):
    path = tmp_path / "btc-hourly.csv"
    btc = binance_hourly()
    write_wide(path, btc)
    out = json.loads(cli("optimize", "--prices", path, "--strategy", "equal_weight", "--json").stdout)
    r = btc.pct_change().dropna()
    assert out["frequency"]["periods_per_year"] == 8760 and out["frequency"]["inferred"] is True
    assert out["periods_per_year"] == 8760 and out["diagnostics"]["frequency"]["description"] == "hourly bars, 8,760 periods a year, inferred"
    assert np.isclose(out["volatility"], r.std(ddof=1) * np.sqrt(8760), rtol=1e-10)
    assert np.isclose(out["expected_return"], r.mean() * 8760, rtol=1e-10)
    # a given value wins, and says so
    given = json.loads(cli("optimize", "--prices", path, "--strategy", "equal_weight", "--periods-per-year", "365", "--json").stdout)
    assert given["frequency"]["inferred"] is False and np.isclose(given["volatility"], r.std(ddof=1) * np.sqrt(365), rtol=1e-10)
    table = cli("optimize", "--prices", path, "--strategy", "equal_weight").stdout
    assert "frequency: hourly bars, 8,760 periods a year, inferred" in table


def test_weekday_session_volatility_is_annualized_with_252(cli):
    out = json.loads(cli("optimize", "--prices", STOCKS, "--assets", "AAPL", "--strategy", "equal_weight", "--window", "504",
                         "--json").stdout)
    aapl = pd.read_csv(STOCKS, index_col=0, parse_dates=True)["AAPL"]
    r = aapl.pct_change(fill_method=None).iloc[-504:]
    assert out["frequency"]["label"] == "daily bars on weekday sessions" and out["periods_per_year"] == 252
    assert np.isclose(out["volatility"], r.std(ddof=1) * np.sqrt(252), rtol=1e-10)


def test_hourly_backtest_annualizes_with_8760_and_records_it(cli, store_path, tmp_path):
    "The ccxt hourly file (BTC) and the Binance one cover different months: one asset, held, annualized hourly."
    wide = tmp_path / "hourly.csv"
    btc = ccxt("BTC_USDT_1h.csv", "BTC")
    write_wide(wide, btc)
    out = json.loads(cli("backtest", "--prices", wide, "--strategy", "equal_weight", "--benchmarks", "none",
                         "--window", "48", "--rebalance-every", "24", "--fee-bps", "0", "--json").stdout)
    r = pd.Series(out["returns"])
    assert out["frequency"]["periods_per_year"] == 8760 and out["periods_per_year"] == 8760
    assert np.allclose(r.to_numpy(), btc.pct_change().iloc[49:].to_numpy(), rtol=0, atol=1e-12)  # held from the first full window
    assert np.isclose(out["metrics"]["annualized_volatility"], r.std(ddof=1) * np.sqrt(8760), rtol=1e-9)
    assert out["log"]["event"][0] == "frequency" and out["log"]["detail"][0] == "hourly bars, 8,760 periods a year, inferred"
    import sqlite3
    with sqlite3.connect(store_path) as conn:  # the stored record says it too
        details = [json.loads(d) for (d,) in conn.execute("SELECT detail FROM backtests")]
    assert details and all(d["periods_per_year"] == 8760 and d["log"]["detail"][0].startswith("hourly bars, 8,760") for d in details)


@pytest.fixture
def gappy(tmp_path):
    "BTC, ETH, SOL daily closes (bundled CoinGecko data) with one ETH price blanked inside the last 90 days."
    p = load_prices(assets=["BTC", "ETH", "SOL"], start="2022-01-01")
    p.iloc[-10, p.columns.get_loc("ETH")] = np.nan
    path = tmp_path / "gappy.csv"
    p.rename_axis("timestamp").to_csv(path)
    return path, p.index[-2]


def test_one_missing_price_excludes_the_asset_and_says_so(cli, gappy):
    path, last = gappy
    out = json.loads(cli("optimize", "--prices", path, "--strategy", "min_variance", "--window", "90", "--json").stdout)
    assert "ETH" not in out["weights"] and set(out["weights"]) == {"BTC", "SOL"}
    reason = f"2 missing returns in the window ending {last + pd.Timedelta(days=1):%Y-%m-%d}"
    assert out["excluded"] == {"ETH": reason} and out["diagnostics"]["excluded"] == {"ETH": reason}
    table = cli("optimize", "--prices", path, "--strategy", "min_variance", "--window", "90").stdout
    assert f"excluded: ETH ({reason})" in table
    # carried over a one-day gap, the asset is kept, and the fill is said
    kept = json.loads(cli("optimize", "--prices", path, "--strategy", "min_variance", "--window", "90",
                          "--missing", "ffill", "--max-fill", "1", "--json").stdout)
    assert set(kept["weights"]) == {"BTC", "ETH", "SOL"} and kept["excluded"] == {}
    assert kept["data"]["filled"]["ETH"].startswith("1 price(s) forward-filled")
    # or refused
    proc = cli("optimize", "--prices", path, "--strategy", "min_variance", "--window", "90", "--missing", "raise", check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("error: missing returns (missing='raise'): ETH: 2 missing returns")


def test_losing_more_than_half_the_assets_is_an_error(cli, tmp_path):
    p = load_prices(assets=["BTC", "ETH", "SOL"], start="2022-01-01")
    p.iloc[-5, :2] = np.nan
    path = tmp_path / "holes.csv"
    p.rename_axis("timestamp").to_csv(path)
    proc = cli("optimize", "--prices", path, "--window", "90", check=False)
    assert proc.returncode == 1 and "2 of the 3 assets asked for (that trade) have missing returns, more than half" in proc.stderr
    assert "BTC: 2 missing returns" in proc.stderr and proc.stderr.count("\n") == 1


def test_backtest_logs_exclusions_per_decision(cli, gappy):
    path, _ = gappy
    out = json.loads(cli("backtest", "--prices", path, "--strategy", "min_variance", "--window", "60",
                         "--rebalance-every", "5", "--json").stdout)
    ex = out["results"]["min_variance"]["excluded"]
    assert set(ex) == {"ETH"} and "missing return" in ex["ETH"]
    log = pd.DataFrame(out["results"]["min_variance"]["log"])
    assert (log["event"] == "excluded").sum() >= 1 and log.loc[log["event"] == "excluded", "detail"].str.startswith("ETH: ").all()


def test_the_report_says_what_was_excluded(cli, gappy, tmp_path, store_path):
    path, _ = gappy
    cli("import", path, "--source", "gappy")
    cli("run", "--report", "backtest", "--source", "gappy", "--assets", "BTC,ETH,SOL", "--strategies", "min_variance",
        "--window", "60", "--rebalance-every", "5", "--start", "2022-06-01")
    html = (next((tmp_path / "runs").glob("*-backtest")) / "backtest.html").read_text()
    assert "daily bars, 365 periods a year, inferred" in html
    assert "Excluded from some decisions" in html and "min_variance: ETH" in html


def test_library_walk_forward_and_rolling_weights_report_exclusions():
    from portopt.backtest import walk_forward
    from portopt.clean import returns
    from portopt.walkforward import rolling_weights
    p = load_prices(assets=["BTC", "ETH", "SOL"], start="2022-01-01")
    p.iloc[-10, p.columns.get_loc("ETH")] = np.nan
    w = rolling_weights(returns(p), "min_variance", window=60, rebalance_every=5)
    ex = [d["excluded"] for d in w.attrs["diagnostics"] if d["excluded"]]
    assert ex and all(set(e) == {"ETH"} for e in ex) and (w.loc[w.index[-1], "ETH"] == 0)
    with pytest.raises(DataError, match="ETH: 2 missing returns"):
        rolling_weights(returns(p), "min_variance", window=60, rebalance_every=5, missing="raise")
    kept = walk_forward(p, "min_variance", window=60, rebalance_every=5, missing="ffill", max_fill=1)
    assert (kept.log["event"] == "excluded").sum() == 0 and kept.log["event"].tolist()[:2] == ["frequency", "filled"]
    dropped = walk_forward(p, "min_variance", window=60, rebalance_every=5)
    assert (dropped.log["event"] == "excluded").sum() >= 1
