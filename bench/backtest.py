"""Backtest benchmark: portopt's walk_forward against skfolio's WalkForward + cross_val_predict, and against
portopt's optimization alone.

Run: `make bench-backtest` (or `.venv/bin/python bench/backtest.py`). Everything runs in this one process on
the same data; the targets are ratios, best of `--repeat` round-robin passes.

Protocol (the Optimization issue's W1): skfolio's bundled S&P 500 dataset (20 stocks, daily adjusted closes,
no download), prices 2005-01-01 to 2022-12-28, maximum Sharpe ratio (mean / standard deviation), windows of
252 returns strictly before each rebalance, a rebalance every 21 periods (204 rebalances).

- portopt backtest: `walk_forward(prices, "max_sharpe", window=252, rebalance_every=21, fee_bps=10)`: weights
  drift with prices between rebalances, every rebalance pays 10 bps of its turnover; returns, NAV, weights,
  trades and costs come out.
- portopt optimization alone: `portopt.walkforward.rolling_weights` on the same returns, the same 204 windows
  (the optimizations walk_forward makes): the simulation's overhead is backtest / optimization − 1.
- skfolio: `cross_val_predict(MeanRisk(MAXIMIZE_RATIO, STANDARD_DEVIATION), X, cv=WalkForward(test_size=21,
  train_size=252))` and the returns of the predicted `MultiPeriodPortfolio`. skfolio holds each fold's
  weights constant every period (no drift) and has no per-trade cost in its evaluation (its
  `transaction_costs` is a penalty inside the optimization, which would change the optimization itself), so
  it is timed without costs: it does less work than portopt here, not more.
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

WINDOW, EVERY, FEE_BPS = 252, 21, 10.0
START, END = "2005-01-01", "2022-12-28"
MIN_RATIO_VS_SKFOLIO, MAX_OVERHEAD = 3.0, 0.50


def sp500_prices() -> pd.DataFrame:
    "skfolio's S&P 500 closes, 2005-01-01 to 2022-12-28, on a UTC index (portopt's convention)."
    from skfolio.datasets import load_sp500_dataset
    p = load_sp500_dataset().loc[START:END]
    p.index = p.index.tz_localize("UTC")
    return p


def portopt_backtest(prices: pd.DataFrame):
    from portopt.backtest import walk_forward
    return walk_forward(prices, "max_sharpe", periods_per_year=252, window=WINDOW, rebalance_every=EVERY, fee_bps=FEE_BPS)


def portopt_optimization_alone(prices: pd.DataFrame):
    from portopt.walkforward import rolling_weights
    return rolling_weights(prices.pct_change().iloc[1:], "max_sharpe", window=WINDOW, rebalance_every=EVERY, periods_per_year=252)


def skfolio_backtest(prices: pd.DataFrame):
    from skfolio import RiskMeasure
    from skfolio.model_selection import WalkForward, cross_val_predict
    from skfolio.optimization import MeanRisk, ObjectiveFunction
    X = prices.pct_change().iloc[1:]
    X.index = X.index.tz_localize(None)
    model = MeanRisk(objective_function=ObjectiveFunction.MAXIMIZE_RATIO, risk_measure=RiskMeasure.STANDARD_DEVIATION)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = cross_val_predict(model, X, cv=WalkForward(test_size=EVERY, train_size=WINDOW))
        returns = pd.Series(pred.returns, index=pred.observations)
    return pred, returns


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="round-robin passes; each method's best time counts (default 3)")
    args = ap.parse_args(argv)
    import cvxpy  # noqa: F401  (imports are paid before any clock starts)
    import skfolio  # noqa: F401
    import portopt.backtest  # noqa: F401
    prices = sp500_prices()
    runs = {"portopt backtest": lambda: portopt_backtest(prices),
            "portopt optimization alone": lambda: portopt_optimization_alone(prices),
            "skfolio WalkForward + cross_val_predict": lambda: skfolio_backtest(prices)}
    seconds, out = {}, {}
    for _ in range(args.repeat):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            out[name] = fn()
            seconds[name] = min(time.perf_counter() - t0, seconds.get(name, np.inf))
    bt, W, (pred, sk_returns) = out["portopt backtest"], out["portopt optimization alone"], out["skfolio WalkForward + cross_val_predict"]
    sk_w = np.array([np.asarray(p.weights) for p in pred.portfolios])
    n = min(len(sk_w), len(bt.weights))
    print(f"data: skfolio S&P 500 dataset, {prices.shape[1]} stocks, {prices.index[0].date()} to {prices.index[-1].date()}; "
          f"max Sharpe, window {WINDOW}, rebalance every {EVERY}: {len(bt.weights)} rebalances; portopt pays {FEE_BPS:g} bps, weights drift")
    print(f"agreement: max |Δw| portopt backtest vs optimization alone {np.abs(bt.weights.to_numpy() - W.to_numpy()).max():.1e}; "
          f"vs skfolio {np.abs(bt.weights.to_numpy()[:n] - sk_w[:n]).max():.1e} over {n} rebalances")
    print(f"portopt: total costs {bt.costs.sum():.2%} of value, mean turnover {bt.turnover.mean():.2f}, "
          f"annualized return {bt.metrics()['annualized_return']:.2%}")
    print(pd.Series(seconds, name="seconds (best)").round(3).to_string(), "\n")
    ratio = seconds["skfolio WalkForward + cross_val_predict"] / seconds["portopt backtest"]
    overhead = seconds["portopt backtest"] / seconds["portopt optimization alone"] - 1
    ok1, ok2 = ratio >= MIN_RATIO_VS_SKFOLIO, overhead <= MAX_OVERHEAD
    print(f"{'PASS' if ok1 else 'FAIL'}  portopt backtest is {ratio:.1f}x faster than skfolio WalkForward + cross_val_predict "
          f"(target >= {MIN_RATIO_VS_SKFOLIO:g}x)")
    print(f"{'PASS' if ok2 else 'FAIL'}  the simulation adds {overhead:.0%} to the optimization time alone (target <= {MAX_OVERHEAD:.0%})")
    return 0 if ok1 and ok2 else 1


if __name__ == "__main__":
    sys.exit(main())
