"""Sweep benchmark: a grid of walk-forward backtests on the bundled crypto data, through portopt's Dask sweep with one
worker and with two, and the part of the grid skfolio can express through skfolio (WalkForward + cross_val_predict)
in this same process.

Run: `make bench-sweep` (or `.venv/bin/python bench/sweep.py`; `--quick` for a 20-configuration check in about a
minute). Everything runs on this machine; the figures are throughputs and ratios, printed with the load average.

Data: the bundled CoinGecko daily closes of BTC, ETH, SOL, BNB, ADA and USDC, 2013-04-28 to 2022-09-14 (3,424
returns), ragged (ETH joins in 2015, BNB in 2017, ADA in 2017, USDC in 2018, SOL in 2020: a decision uses the assets
with a full window); the bear markets of 2014-15, 2018-19 and 2022 are in it, with windows where no asset's mean
return beats the risk-free rate (`max_sharpe` answers there in closed form).

Grid (default, 240 configurations): every fast strategy (`portopt.walkforward.FAST_STRATEGIES`: equal_weight,
min_variance, max_sharpe, min_cvar, hrp) × windows 30, 90, 180, 365 days × a rebalance every 1, 7, 14, 30 days × fees
0, 10, 50 bps. A rebalance is one decision: the optimization on the window before it and the simulation of the
periods until the next (weights drift, the trade pays its fee). Throughput = rebalances / wall seconds / workers.

- portopt: `portopt.sweep.sweep(prices, grid(...), n_workers=k)` on a `LocalCluster` of k one-threaded worker
  processes started before the clock (its start-up is printed apart), no store; the results return to this process.
- skfolio: `cross_val_predict(model, X, cv=WalkForward(test_size=every, train_size=window))` for the configurations
  skfolio can express: fee 0 (skfolio's `transaction_costs` is a penalty inside the optimization, not a cost of the
  trade) on the span where all six assets trade (skfolio needs a complete panel; 2020-04-11 on), rebalance 7, 14 and 30
  (daily refits take it minutes); models `EqualWeighted`, `MeanRisk` (minimum variance, maximum Sharpe ratio, minimum
  CVaR at 95 %), `HierarchicalRiskParity` with single linkage. portopt runs the same configurations on the same
  panel here, serially, in this process (`walk_forward`), and the ratio is skfolio's time / portopt's.
"""
from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ASSETS = ["BTC", "ETH", "SOL", "BNB", "ADA", "USDC"]
FULL = dict(window=[30, 90, 180, 365], rebalance_every=[1, 7, 14, 30], fee_bps=[0.0, 10.0, 50.0])
QUICK = dict(window=[90, 365], rebalance_every=[7, 30], fee_bps=[10.0])
SKFOLIO_EVERY = (7, 14, 30)
TARGET_PER_CORE, TARGET_SCALING = 1000.0, 1.8


def rebalances(n_returns: int, window: int, every: int) -> int:
    "Decisions of a backtest: one every `every` periods from the first full window (walk_forward's schedule)."
    return len(range(window, n_returns, every))


def run_sweep(prices, configs, n_workers: int) -> tuple[float, float, object]:
    "(seconds of the sweep, seconds to start the cluster, SweepResult) on a fresh LocalCluster of `n_workers`."
    from distributed import Client, LocalCluster
    from portopt.sweep import sweep
    t0 = time.perf_counter()
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=40) as cluster, Client(cluster) as client:
        client.run(lambda: __import__("portopt.backtest"))  # imports are paid before the clock, on every worker
        started = time.perf_counter() - t0
        t1 = time.perf_counter()
        res = sweep(prices, configs, periods_per_year=365, scheduler=client, progress=False)
        return time.perf_counter() - t1, started, res


def skfolio_model(strategy: str):
    from skfolio import RiskMeasure
    from skfolio.cluster import HierarchicalClustering, LinkageMethod
    from skfolio.optimization import EqualWeighted, HierarchicalRiskParity, MeanRisk, ObjectiveFunction
    return {"equal_weight": lambda: EqualWeighted(),
            "min_variance": lambda: MeanRisk(objective_function=ObjectiveFunction.MINIMIZE_RISK, risk_measure=RiskMeasure.VARIANCE),
            "max_sharpe": lambda: MeanRisk(objective_function=ObjectiveFunction.MAXIMIZE_RATIO,
                                           risk_measure=RiskMeasure.STANDARD_DEVIATION),
            "min_cvar": lambda: MeanRisk(objective_function=ObjectiveFunction.MINIMIZE_RISK, risk_measure=RiskMeasure.CVAR,
                                         cvar_beta=0.95),
            "hrp": lambda: HierarchicalRiskParity(risk_measure=RiskMeasure.VARIANCE, hierarchical_clustering_estimator=
                                                  HierarchicalClustering(linkage_method=LinkageMethod.SINGLE))}[strategy]()


def skfolio_run(X: pd.DataFrame, strategy: str, window: int, every: int):
    from skfolio.model_selection import WalkForward, cross_val_predict
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cross_val_predict(skfolio_model(strategy), X, cv=WalkForward(test_size=every, train_size=window))


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 20-configuration grid (windows 90, 365; every 7, 30 days; 10 bps)")
    ap.add_argument("--no-skfolio", action="store_true", help="skip the skfolio comparison")
    ap.add_argument("--repeat", type=int, default=1, help="passes of 1 worker then 2 workers, alternated; the best time of "
                    "each counts (on a shared machine the load moves between passes; default 1)")
    args = ap.parse_args(argv)
    import cvxpy  # noqa: F401  (imports are paid before any clock starts)
    import skfolio  # noqa: F401
    from portopt.backtest import walk_forward
    from portopt.clean import returns as simple_returns
    from portopt.data import load_prices
    from portopt.sweep import grid
    from portopt.walkforward import FAST_STRATEGIES
    prices = load_prices(assets=ASSETS)
    n_returns = len(prices) - 1
    axes = QUICK if args.quick else FULL
    configs = grid(strategy=list(FAST_STRATEGIES), **axes)
    n_reb = sum(rebalances(n_returns, c["window"], c["rebalance_every"]) for c in configs)
    print(f"data: bundled CoinGecko daily closes of {', '.join(ASSETS)}, {prices.index[0]:%Y-%m-%d} to "
          f"{prices.index[-1]:%Y-%m-%d} ({n_returns} returns, ragged)")
    print(f"grid: {len(configs)} configurations = {len(FAST_STRATEGIES)} strategies ({', '.join(FAST_STRATEGIES)}) x windows "
          f"{axes['window']} x rebalance every {axes['rebalance_every']} days x fees {axes['fee_bps']} bps; "
          f"{n_reb:,} rebalances in all")
    print(f"load average before: {open('/proc/loadavg').read().split()[:3]} on {os.cpu_count()} cores\n")
    seconds, results = {}, {}
    for _ in range(max(args.repeat, 1)):
        for k in (1, 2):
            t, started, r = run_sweep(prices, configs, k)
            assert r.misses == len(configs) and not r.errors, r.errors
            seconds[k], results[k] = min(t, seconds.get(k, np.inf)), r
            print(f"{k} worker{'s' if k > 1 else ''}: {t:.1f} s (cluster start {started:.1f} s apart): "
                  f"{n_reb / t / k:,.0f} rebalances/s per core, {len(configs) / t * 60:,.0f} backtests/min; "
                  f"load {open('/proc/loadavg').read().split()[:3]}", flush=True)
    t1, t2 = results[1].table.set_index("key"), results[2].table.set_index("key")
    assert np.allclose(t1["sharpe"], t2.loc[t1.index, "sharpe"], equal_nan=True)  # the same backtests either way
    formulations = sum(v.formulations for v in results[1].results.values())
    failures = int(t1["failures"].sum())
    print(f"decisions answered by another formulation (max_sharpe's closed form when no asset beats the risk-free rate): "
          f"{formulations:,}; failed optimizations: {failures}")
    by = t1.assign(rebalances_=[rebalances(n_returns, w, e) for w, e in zip(t1["window"], t1["rebalance_every"])])
    print(by.groupby("strategy")[["rebalances_"]].sum().rename(columns={"rebalances_": "rebalances"}).T.to_string(), "\n")
    per_core = n_reb / seconds[1]
    scaling = seconds[1] / seconds[2]
    ok = True
    for passed, text in ((per_core >= TARGET_PER_CORE, f"{per_core:,.0f} rebalances/s per core with one worker (target >= {TARGET_PER_CORE:,.0f})"),
                         (scaling >= TARGET_SCALING, f"2 workers are {scaling:.2f}x one (target >= {TARGET_SCALING}x)")):
        ok &= passed
        print(f"{'PASS' if passed else 'FAIL'}  {text}")
    if args.no_skfolio:
        return 0 if ok else 1
    complete = prices.dropna()
    X = simple_returns(complete)
    Xn = X.copy()
    Xn.index = Xn.index.tz_localize(None)
    sk_configs = [c for c in configs if c["fee_bps"] == 0 or len(axes["fee_bps"]) == 1]
    sk_configs = [dict(c, fee_bps=0.0) for c in sk_configs if c["rebalance_every"] in SKFOLIO_EVERY and c["window"] < len(X) - 30]
    t_sk, refused = 0.0, []
    for c in list(sk_configs):
        t0 = time.perf_counter()
        try:
            skfolio_run(Xn, c["strategy"], c["window"], c["rebalance_every"])
        except ValueError as e:  # e.g. maximum ratio when no asset beats the risk-free rate: skfolio refuses the fold
            refused.append(f"{c['strategy']} window {c['window']} every {c['rebalance_every']}: {str(e).split('.')[0]}")
            sk_configs.remove(c)
            continue
        t_sk += time.perf_counter() - t0
    sk_reb = sum(rebalances(len(X), c["window"], c["rebalance_every"]) for c in sk_configs)
    t0 = time.perf_counter()
    for c in sk_configs:
        walk_forward(complete, c["strategy"], periods_per_year=365, window=c["window"], rebalance_every=c["rebalance_every"])
    t_portopt = time.perf_counter() - t0
    print(f"\nskfolio-expressible part: {len(sk_configs)} configurations (fee 0, every {list(SKFOLIO_EVERY)} days) on the "
          f"complete panel {X.index[0]:%Y-%m-%d} to {X.index[-1]:%Y-%m-%d} ({len(X)} returns), {sk_reb:,} rebalances, "
          f"one process, serial")
    print(f"portopt walk_forward {t_portopt:.1f} s ({sk_reb / t_portopt:,.0f} rebalances/s); skfolio WalkForward + "
          f"cross_val_predict {t_sk:.1f} s ({sk_reb / t_sk:,.0f} rebalances/s): portopt is {t_sk / t_portopt:.1f}x faster; "
          f"load {open('/proc/loadavg').read().split()[:3]}")
    for line in refused:
        print(f"skfolio cannot run (left out of both timings): {line}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
