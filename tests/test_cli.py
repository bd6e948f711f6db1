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
    assert proc.returncode == 1 and proc.stderr == "error: give exactly one of --dataset NAME and --prices PATH\n"


def test_run_leaves_a_report_and_stores_what_it_computed(cli, store_path, tmp_path):
    proc = cli("run", "--assets", "BTC,ETH,SOL,USDC", "--strategies", "equal_weight,min_variance,max_sharpe",
               "--window", "90", "--rebalance-every", "30", "--start", "2022-03-01")
    folder = next((tmp_path / "runs").glob("*-portfolio"))
    html = (folder / "portfolio.html").read_text()
    assert f"report:   {folder / 'portfolio.html'}" in proc.stdout and "benchmark (equal weight)" in proc.stdout
    assert "Efficient frontier" in html and "plotly" in html and "Walk-forward backtest" in html
    assert "ensure_dataset(store, dataset)" not in html  # no code cells in the HTML report
    metrics = pd.read_csv(folder / "metrics.csv", index_col=0)
    with SQLiteStore(store_path) as st:
        runs = st.read_runs()
        stored = st.read_backtests().set_index("strategy")
        assert runs.loc[0, "status"] == "succeeded" and runs.loc[0, "output_path"] == str(folder)
        assert set(stored.index) == set(metrics.index) == {"min_variance", "max_sharpe", "benchmark (equal weight)"}
        for name in metrics.index:
            assert np.isclose(stored.loc[name, "metrics"]["sharpe"], metrics.loc[name, "sharpe"])
            assert stored.loc[name, "run_id"] == runs.loc[0, "id"]
        assert len(st.read_optimizations()) == 3


def test_a_failed_report_is_recorded_with_its_error(cli, store_path, tmp_path):
    proc = cli("run", "--assets", "BTC,NOPE", check=False)
    assert proc.returncode == 1 and "error: report portfolio failed" in proc.stderr and "NOPE" in proc.stderr
    with SQLiteStore(store_path) as st:
        run = st.read_runs().iloc[0]
    assert run["status"] == "failed" and "no prices stored for ['NOPE']" in run["error"]
    assert len(list((tmp_path / "runs").glob("*-portfolio/portfolio.html"))) == 1  # the partial report is kept
