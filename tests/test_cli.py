"""`portopt optimize`, `portopt backtest` and `portopt run` end to end, through the installed command."""
import json

import numpy as np
import pandas as pd
from conftest import FIXTURES

from portopt.backtest import walk_forward
from portopt.clean import returns
from portopt.data import load_prices, read_price_file, to_wide
from portopt.metrics import annualized_return, max_drawdown
from portopt.optimize import estimation_window, optimize
from portopt.store import SQLiteStore

STOCKS = FIXTURES / "tests_stock_prices.csv"


def test_optimize_a_users_wide_csv_prints_weights_summing_to_one(cli):
    out = json.loads(cli("optimize", "--prices", STOCKS, "--strategy", "max_sharpe", "--window", "504",
                         "--periods-per-year", "252", "--json").stdout)
    w = pd.Series(out["weights"])
    assert abs(w.sum() - 1) < 1e-9 and (w >= 0).all() and len(w) == 20 and out["as_of"].startswith("2018-04-11")
    # the same numbers as the library on the same file: the command adds nothing of its own
    r = estimation_window(returns(to_wide(read_price_file(STOCKS)[0])), 504)
    lib = optimize(r, "max_sharpe", periods_per_year=252)
    assert np.allclose(w[lib.weights.index], lib.weights, atol=1e-6) and np.isclose(out["sharpe"], lib.sharpe)


def test_optimize_a_crypto_wide_csv(cli, tmp_path):
    path = tmp_path / "crypto.csv"
    load_prices(assets=["BTC", "ETH", "SOL", "USDC"], start="2021-01-01").to_csv(path, index_label="timestamp")
    out = json.loads(cli("optimize", "--prices", path, "--strategy", "hrp", "--window", "180", "--json").stdout)
    assert abs(sum(out["weights"].values()) - 1) < 1e-9 and out["periods_per_year"] == 365


def test_backtest_json_returns_and_metrics_agree(cli):
    proc = cli("backtest", "--dataset", "coingecko-daily", "--assets", "BTC,ETH,USDC", "--strategy", "min_variance",
               "--window", "90", "--rebalance-every", "30", "--start", "2022-01-01", "--json")
    out = json.loads(proc.stdout)
    r = pd.Series(out["returns"])
    r.index = pd.to_datetime(r.index, utc=True)
    assert r.index[0] == pd.Timestamp("2022-01-01", tz="UTC") and len(r) == 257  # daily, to 2022-09-14
    assert np.isclose(out["metrics"]["annualized_return"], annualized_return(r, periods_per_year=365))
    assert np.isclose(out["metrics"]["max_drawdown"], max_drawdown(r))
    lib = walk_forward(load_prices(assets=["BTC", "ETH", "USDC"]), "min_variance", periods_per_year=365, window=90,
                       rebalance_every=30, start="2022-01-01", fee_bps=10)
    assert np.allclose(r.to_numpy(), lib.returns.to_numpy())
    assert len(out["weights"]) == 9 and all(abs(sum(w.values()) - 1) < 1e-9 for w in out["weights"].values())
    assert set(out["benchmark"]) == {"strategy", "metrics", "returns"}


def test_exactly_one_data_source_is_required(cli):
    proc = cli("optimize", "--strategy", "hrp", check=False)
    assert proc.returncode == 1 and proc.stderr == "error: give exactly one of --dataset NAME, --prices PATH and --source NAME (a source in the store)\n"


def test_run_leaves_a_report_and_stores_what_it_computed(cli, store_path, tmp_path):
    proc = cli("run", "--assets", "BTC,ETH,SOL,USDC", "--strategies", "equal_weight,min_variance,max_sharpe",
               "--window", "90", "--rebalance-every", "30", "--start", "2022-03-01")
    folder = next((tmp_path / "runs").glob("*-portfolio"))
    html = (folder / "portfolio.html").read_text()
    assert f"report:   {folder / 'portfolio.html'}" in proc.stdout and "benchmark (equal weight)" in proc.stdout
    assert "Efficient frontier" in html and "plotly" in html and "Walk-forward backtest" in html
    assert "ensure_dataset(store, dataset)" not in html  # no code cells in the HTML report
    assert "IPKernelApp" not in proc.stderr and "ERROR" not in proc.stderr, proc.stderr   # the kernel's own log is quiet
    metrics = pd.read_csv(folder / "metrics.csv", index_col=0)
    with SQLiteStore(store_path) as st:
        runs = st.read_runs()
        stored = st.read_backtests().set_index("strategy")
        assert runs.loc[0, "status"] == "succeeded" and runs.loc[0, "output_path"] == str(folder)
        assert set(metrics.index) == {"min_variance", "max_sharpe", "benchmark (equal weight)"}
        assert set(stored.index) == {"min_variance", "max_sharpe", "equal_weight"}  # stored by the strategy the engine ran
        for name in metrics.index:
            strategy = "equal_weight" if name == "benchmark (equal weight)" else name
            assert np.isclose(stored.loc[strategy, "metrics"]["sharpe"], metrics.loc[name, "sharpe"])
            assert stored.loc[strategy, "run_id"] == runs.loc[0, "id"] and stored.loc[strategy, "config"]["data_hash"]
        assert len(st.read_optimizations()) == 3


def test_a_failed_report_is_recorded_with_its_error(cli, store_path, tmp_path):
    proc = cli("run", "--assets", "BTC,NOPE", check=False)
    assert proc.returncode == 1 and "error: report portfolio failed" in proc.stderr and "NOPE" in proc.stderr
    with SQLiteStore(store_path) as st:
        run = st.read_runs().iloc[0]
    assert run["status"] == "failed" and "no prices stored for ['NOPE']" in run["error"]
    assert len(list((tmp_path / "runs").glob("*-portfolio/portfolio.html"))) == 1  # the partial report is kept


def test_backtest_reports_intervals_and_deflates_by_the_trials_recorded_on_the_data(cli, store_path):
    base = ["backtest", "--dataset", "coingecko-daily", "--assets", "BTC,ETH,SOL,USDC", "--strategy", "min_variance,hrp",
            "--benchmarks", "equal_weight,buy_and_hold,asset:BTC", "--window", "90", "--start", "2022-01-01",
            "--rebalance-every", "monthly", "--fee-bps", "10", "--slippage-bps", "5", "--store", store_path, "--json"]
    first = json.loads(cli(*base).stdout)
    assert set(first["results"]) == {"min_variance", "hrp", "benchmark (equal weight)", "benchmark (buy and hold)", "benchmark (BTC)"}
    s = first["summary"]
    assert s["sharpe_low"] < s["sharpe"] < s["sharpe_high"] and 0 <= s["dsr"] <= s["psr"] <= 1
    assert s["n_trials"] == 5                                   # five configurations recorded on this data
    btc = pd.Series(first["results"]["benchmark (BTC)"]["returns"])
    prices = load_prices(assets=["BTC"])["BTC"]
    expected = prices.pct_change().loc["2022-01-01":].to_numpy().copy()
    expected[0] = (1 - 15e-4) * (1 + expected[0]) - 1             # the one trade buys BTC: 10 bps fee + 5 bps slippage
    assert np.allclose(btc.to_numpy(), expected, rtol=0, atol=1e-12)
    again = json.loads(cli(*base).stdout)                       # the same configurations: no new trials
    assert again["summary"]["n_trials"] == 5 and again["summary"]["dsr"] == s["dsr"]
    more = json.loads(cli(*[a if a != "monthly" else "weekly" for a in base]).stdout)
    assert more["summary"]["n_trials"] == 10 and more["summary"]["dsr"] != s["dsr"]
    with SQLiteStore(store_path) as st:
        assert len(st.read_backtests(limit=None)) == 10


def test_a_bad_backtest_configuration_fails_before_anything_is_recorded(cli, store_path):
    proc = cli("backtest", "--dataset", "coingecko-daily", "--assets", "BTC,ETH", "--strategy", "hrp,no_such_strategy",
               "--window", "90", "--store", store_path, check=False)
    assert proc.returncode == 2 and "--strategy 'no_such_strategy': choose one of" in proc.stderr
    proc = cli("backtest", "--dataset", "coingecko-daily", "--assets", "BTC,ETH", "--rebalance-every", "0",
               "--store", store_path, check=False)
    assert proc.returncode == 2 and "rebalance" in proc.stderr
    with SQLiteStore(store_path) as st:
        assert st.read_backtests(limit=None).empty


def test_the_backtest_report_runs_through_papermill_and_records_its_trials(cli, store_path, tmp_path):
    proc = cli("run", "--report", "backtest", "--assets", "BTC,ETH,SOL,USDC", "--strategies", "hrp,min_variance",
               "--window", "90", "--rebalance-every", "14", "--start", "2022-03-01", "--store", store_path)
    folder = next((tmp_path / "runs").glob("*-backtest"))
    html = (folder / "backtest.html").read_text()
    assert "Cumulative return" in html and "Weights over time: hrp" in html and "Turnover and costs" in html
    assert "record(store, res, dh, run_id=run_id)" not in html          # no code cells in the HTML report
    metrics = pd.read_csv(folder / "metrics.csv", index_col=0)
    assert set(metrics.index) == {"hrp", "min_variance", "benchmark (equal weight)", "benchmark (buy and hold)",
                                  "benchmark (market cap)", "benchmark (BTC)"}
    assert (metrics["sharpe_low"] < metrics["sharpe"]).all() and (metrics["dsr"] <= metrics["psr"]).all()
    assert (metrics["n_trials"] == 6).all()
    with SQLiteStore(store_path) as st:
        stored = st.read_backtests(limit=None).set_index("strategy")
        run = st.read_runs().iloc[0]
    assert len(stored) == 6 and (stored["run_id"] == run["id"]).all() and run["status"] == "succeeded"
    assert np.isclose(stored.loc["hrp", "metrics"]["sharpe"], metrics.loc["hrp", "sharpe"])
    assert "report:" in proc.stdout


def test_every_command_says_what_it_does_in_the_help(cli):
    "`portopt --help` gives each command a line (the import command's help was an expression, so it showed none)."
    import re
    out = cli("--help").stdout
    rows = re.findall(r"│ (\w+)\s+(.*?)\s*│", out.split("Commands")[1])
    names = [n for n, text in rows]
    assert {"import", "data", "optimize", "listen", "portfolio"} <= set(names)
    assert all(text.strip() for n, text in rows if n), [n for n, text in rows if not text.strip()]
    assert "Layouts: coingecko" in cli("import", "--help").stdout
