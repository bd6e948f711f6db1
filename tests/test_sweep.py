"""Parameter sweeps (portopt.sweep): through a real Dask scheduler and two workers, on a LocalCluster with the
store as cache, the trial registry behind the deflated Sharpe ratio, configurations refused before any work,
and `portopt sweep` end to end."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import dump

from portopt.backtest import walk_forward
from portopt.config import ConfigError, OptimizationError
from portopt.data import load_prices
from portopt.metrics import deflated_sharpe_ratio, expected_max_sharpe
from portopt.store import SQLiteStore
from portopt.sweep import (backtest_key, cached, data_hash, deflated_sharpe, grid, record, resolve_config, sweep,
                           trials)
from portopt.walkforward import one_blas_thread

ROOT = Path(__file__).resolve().parents[1]
DASK = Path(sys.executable).with_name("dask")  # the `dask` command of this environment
UNREACHABLE = "tcp://127.0.0.1:9"  # no scheduler there: a sweep that tried to run anything would fail to connect


@pytest.fixture(scope="module")
def prices():
    return load_prices(assets=["BTC", "ETH", "SOL", "USDC"], start="2022-01-01")  # 257 days to 2022-09-14


def direct(prices, config, periods_per_year=365):
    "The same backtest run here, without Dask or the store."
    c = dict(config)
    params = c.pop("params", {})
    with one_blas_thread():
        return walk_forward(prices, c.pop("strategy"), periods_per_year=periods_per_year, params=params, **c)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_sweep_runs_on_a_real_scheduler_and_both_workers_do_work(prices, tmp_path):
    from distributed import Client
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    logs = [open(tmp_path / f"{name}.log", "w") for name in ("scheduler", "worker-a", "worker-b")]
    procs = [subprocess.Popen([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard",
                               "--idle-timeout", "600s"], env=env, stdout=logs[0], stderr=subprocess.STDOUT)]
    try:
        for name, log in zip(("worker-a", "worker-b"), logs[1:]):
            procs.append(subprocess.Popen([str(DASK), "worker", address, "--nthreads", "1", "--name", name, "--host", "127.0.0.1", "--no-dashboard",
                                           "--death-timeout", "60s"], env=env, stdout=log, stderr=subprocess.STDOUT))
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
            workers = {a: w["name"] for a, w in client.scheduler_info()["workers"].items()}
            assert sorted(workers.values()) == ["worker-a", "worker-b"]
            # the workers import portopt from this checkout, as the client does
            assert set(client.run(lambda: __import__("portopt").__file__).values()) == {str(ROOT / "portopt" / "__init__.py")}
        # a rebalance every 2 days: each backtest takes long enough (~0.1 s) that the scheduler hands work to both
        # workers (with the fast path, four monthly-rebalanced backtests can all finish on the first worker)
        configs = grid(strategy=["min_variance", "hrp"], window=[60, 90], rebalance_every=[2], fee_bps=[10])
        with SQLiteStore(tmp_path / "store.sqlite") as st:
            res = sweep(prices, configs, periods_per_year=365, store=st, scheduler=address, progress=False)
            assert (res.hits, res.misses) == (0, 4) and not res.table["cached"].any()
            assert set(res.table["worker"]) == set(workers)  # both workers ran backtests
            for c, key in zip(configs, res.table["key"]):
                got, lib = res.results[key], direct(prices, c)
                np.testing.assert_allclose(got.returns.to_numpy(), lib.returns.to_numpy(), rtol=0, atol=1e-10)
                assert got.returns.index.equals(lib.returns.index) and len(got.weights) == len(lib.weights) > 0
                np.testing.assert_allclose(got.weights.to_numpy(), lib.weights.to_numpy(), rtol=0, atol=1e-7)
            assert len(trials(st, data_hash(prices))) == 4
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    assert all(p.poll() is not None for p in procs)


def test_a_24_configuration_sweep_runs_in_parallel_and_its_second_run_comes_from_the_store(prices, tmp_path):
    configs = grid(strategy=["equal_weight", "min_variance", "hrp"], window=[60, 90], rebalance_every=[30, 45],
                   fee_bps=[0, 10])
    assert len(configs) == 24
    h = data_hash(prices)
    with SQLiteStore(tmp_path / "store.sqlite") as st:
        first = sweep(prices, configs, periods_per_year=365, store=st, n_workers=2, progress=False)
        assert (first.hits, first.misses) == (0, 24) and len(first.results) == 24
        assert first.table["worker"].nunique() == 2 and first.table["worker"].notna().all()  # two processes shared the work
        assert len(trials(st, h)) == 24
        for i in (5, 13, 22):  # one configuration of each strategy: the same numbers as a direct walk_forward
            lib = direct(prices, configs[i])
            np.testing.assert_allclose(first.results[first.table.loc[i, "key"]].returns.to_numpy(), lib.returns.to_numpy(),
                                       rtol=0, atol=1e-10)
            assert np.isclose(first.table.loc[i, "sharpe"], lib.metrics()["sharpe"], rtol=1e-9)
        # Second run: an unreachable scheduler proves no work is submitted (connecting would fail), and the
        # registry does not grow.
        second = sweep(prices, configs, periods_per_year=365, store=st, scheduler=UNREACHABLE, progress=False)
        assert (second.hits, second.misses) == (24, 0) and second.table["cached"].all() and second.table["worker"].isna().all()
        assert len(trials(st, h)) == 24 and list(second.table["key"]) == list(first.table["key"])
        for key, res in first.results.items():
            again = second.results[key]
            assert (again.returns.to_numpy() == res.returns.to_numpy()).all()  # bit for bit, through the store
            assert again.returns.index.equals(res.returns.index)
            assert np.allclose(again.weights.to_numpy(), res.weights.to_numpy(), rtol=0, atol=0)
        pd.testing.assert_frame_equal(first.table.drop(columns=["cached", "worker"]),
                                      second.table.drop(columns=["cached", "worker"]))
        assert first.best == second.best and first.dsr == second.dsr and first.dsr["n_trials"] == 24
        fig = second.plot(x="window", y="rebalance_every", value="sharpe", facet="strategy")
        assert len(fig.data) == 3  # a panel per strategy


def test_a_configuration_has_one_key_however_it_is_typed_and_record_uses_it(prices, tmp_path):
    h = data_hash(prices)
    a = resolve_config(prices, dict(strategy="hrp", window=60, rebalance_every=30, fee_bps=10, risk_measure="MV"), 365)
    b = resolve_config(prices, dict(strategy="hrp", window=60.0, rebalance_every=30, fee_bps=10.0,
                                    params={"risk_measure": "variance", "cov": None}, start="2022-03-03"), 365)
    assert backtest_key(a, h) == backtest_key(b, h) != backtest_key(a, data_hash(prices.iloc[1:]))
    assert backtest_key(a, h) != backtest_key(dict(a, fee_bps=0.0), h)
    # the engine's own configuration of a backtest (result.config) gives the key resolved before it ran
    cases = [dict(strategy="equal_weight", window=60, rebalance_every=30),
             dict(strategy="equal_weight", window=60, rebalance_every=30, start="2022-05-01"),
             dict(strategy="hrp", window=60, rebalance_every="monthly", expanding=True, fee_bps=10),
             dict(strategy="min_variance", window=60, rebalance_every=30, max_weight=0.4, drawdown_limit=0.2),
             dict(strategy="hrp", window=60, band=0.05, params={"risk_measure": "CVaR"})]
    with SQLiteStore(tmp_path / "store.sqlite") as st:
        for case in cases:
            c = dict(case)
            result = walk_forward(prices, c.pop("strategy"), periods_per_year=365, **c)
            key = backtest_key(resolve_config(prices, case, 365), h)
            assert record(st, result, h) == key == backtest_key(result.config, h)
            got = cached(st, key)
            assert got.config == result.config and (got.returns.to_numpy() == result.returns.to_numpy()).all()
            assert got.weights.equals(result.weights)
        assert cached(st, "no-such-key") is None


def test_the_trial_registry_counts_distinct_configurations_and_more_trials_deflate_more(prices, store):
    # `store`: SQLite, and Supabase on the local stack (the registry reads backtests by config->>'data_hash')
    h = data_hash(prices)
    kw = dict(periods_per_year=365, rebalance_every=30)
    best = walk_forward(prices, "min_variance", window=60, **kw)
    runs = [best, walk_forward(prices, "equal_weight", window=60, **kw), walk_forward(prices, "hrp", window=60, **kw)]
    for r in runs:
        record(store, r, h)
    assert len(trials(store, h)) == 3
    for r in runs:  # re-running the same configurations does not inflate the count
        record(store, r, h)
    record(store, walk_forward(prices[prices.index >= "2022-02-01"], "hrp", window=60, **kw),
           data_hash(prices[prices.index >= "2022-02-01"]))  # other data: another registry
    t = trials(store, h)
    assert len(t) == 3 and t["periods"].tolist() == [len(best.returns)] * 3
    sharpes = [r.returns.mean() / r.returns.std(ddof=1) for r in runs]
    assert np.allclose(sorted(t["sharpe"]), sorted(sharpes), rtol=1e-12)
    d3 = deflated_sharpe(store, best, h)
    assert d3["n_trials"] == 3 and np.isclose(d3["sharpe_variance"], np.var(sharpes, ddof=1), rtol=1e-12)
    assert np.isclose(d3["dsr"], deflated_sharpe_ratio(best.returns, 3, np.var(sharpes, ddof=1)), rtol=1e-12)
    more = [walk_forward(prices, s, window=w, **kw) for s, w in (("min_variance", 90), ("hrp", 90),
                                                                 ("equal_weight", 90), ("min_variance", 45))]
    for r in more:
        record(store, r, h)
    d7 = deflated_sharpe(store, best, h)
    assert d7["n_trials"] == 7 == len(trials(store, h))
    assert d7["expected_max_sharpe"] == expected_max_sharpe(7, d7["sharpe_variance"]) > d3["expected_max_sharpe"]
    assert d7["dsr"] < d3["dsr"]  # the same backtest, found among more trials, is worth less
    alone = deflated_sharpe(store, best, "data nobody ran anything on")  # no registry: the result is the only trial
    assert alone["n_trials"] == 1 and alone["dsr"] > d3["dsr"]


@pytest.mark.parametrize("bad, message", [
    (dict(strategy="min_variance", window=400), r"window=400 periods, but the prices give only 256 returns"),
    (dict(strategy="min_variance", window=60, rebalance_every=0), r"rebalance_every=0: the rebalance period must be"),
    (dict(strategy="max_luck", window=60), r"unknown strategy 'max_luck'"),
])
def test_bad_configurations_are_refused_before_any_work_or_write(prices, tmp_path, bad, message):
    path = tmp_path / "store.sqlite"
    configs = grid(strategy=["equal_weight", "hrp"], window=[60], rebalance_every=[30]) + [bad]  # the bad one last
    with SQLiteStore(path) as st:
        before = dump(path)
        with pytest.raises(ConfigError, match=rf"configuration 3 of 3 \(.*\): {message}"):
            sweep(prices, configs, periods_per_year=365, store=st, scheduler=UNREACHABLE, progress=False)
        assert dump(path) == before and st.read_backtests(limit=None).empty


def test_a_failed_backtest_does_not_stop_the_others(prices, tmp_path):
    # risk_parity with a negative budget passes the checks (an optimize option) but fails in optimize itself;
    # with on_failure="raise" the backtest fails instead of holding its weights
    configs = [dict(strategy="equal_weight", window=60),
               dict(strategy="risk_parity", window=60, budgets={"BTC": -1}, on_failure="raise")]
    with SQLiteStore(tmp_path / "store.sqlite") as st:
        res = sweep(prices, configs, periods_per_year=365, store=st, n_workers=1, progress=False, errors="keep")
        assert res.table["error"].isna().tolist() == [True, False] and "risk budgets must be positive" in res.table.loc[1, "error"]
        assert len(res.results) == 1 and len(trials(st, res.data_hash)) == 1
        with pytest.raises(OptimizationError, match=r"1 of 2 configuration\(s\) failed; the first \(strategy=risk_parity.*risk budgets"):
            sweep(prices, configs, periods_per_year=365, store=st, n_workers=1, progress=False)


def test_portopt_sweep_prints_json_and_serves_the_second_run_from_the_store(cli, store_path):
    args = ["sweep", "--dataset", "coingecko-daily", "--assets", "BTC,ETH,USDC", "--strategies", "equal_weight,hrp",
            "--window", "60,90", "--rebalance-every", "30", "--fee-bps", "10", "--start", "2022-06-01", "--workers", "2",
            "--json"]
    out = json.loads(cli(*args).stdout)
    assert (out["hits"], out["misses"]) == (0, 4) and len(out["configs"]) == 4
    rows = {(c["strategy"], c["window"]): c for c in out["configs"]}
    lib = walk_forward(load_prices(assets=["BTC", "ETH", "USDC"]), "hrp", periods_per_year=365, window=90,
                       rebalance_every=30, fee_bps=10, start="2022-06-01")
    assert np.isclose(rows[("hrp", 90)]["sharpe"], lib.metrics()["sharpe"], rtol=1e-9)
    assert np.isclose(rows[("hrp", 90)]["max_drawdown"], lib.metrics()["max_drawdown"], rtol=1e-9)
    assert out["dsr"]["n_trials"] == 4 and 0 <= out["dsr"]["dsr"] <= 1
    assert out["best"]["key"] == max(out["configs"], key=lambda c: c["sharpe"])["key"]
    again = json.loads(cli(*args[:-3], "--json").stdout)  # no --workers: nothing to run anyway
    assert (again["hits"], again["misses"]) == (4, 0) and all(c["cached"] for c in again["configs"])
    assert [c["sharpe"] for c in again["configs"]] == [c["sharpe"] for c in out["configs"]]
    with SQLiteStore(store_path) as st:
        stored = st.read_backtests(limit=None)
        assert len(stored) == 4 and set(stored["id"]) == {c["key"] for c in out["configs"]}
    bad = cli("sweep", "--dataset", "coingecko-daily", "--assets", "BTC,ETH,USDC", "--strategies", "hrp", "--window", "60,5000",
              check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("error: configuration 2 of 2 (") and bad.stderr.count("\n") == 1
    assert "window=5000 periods" in bad.stderr
    text = cli(*args[:-1]).stdout  # the table, the cache and the deflated Sharpe ratio, for a person
    assert "4 from the cache, 0 run" in text and "deflated Sharpe ratio" in text and "over 4 trial(s)" in text
    help_ = " ".join(cli("sweep", "--help").stdout.split())
    assert all(o in help_ for o in ("--strategies", "--window", "--rebalance-every", "--fee-bps", "--risk-measure",
                                    "--scheduler", "--workers", "--store", "--json"))
    assert "a re-run is served from it" in help_ and "trial registry" in help_
