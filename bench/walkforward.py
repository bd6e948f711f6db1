"""Walk-forward benchmark: riskfolio-lib called per window, skfolio's WalkForward, and portopt's fast path.

Run: `make bench` (or `.venv/bin/python bench/walkforward.py`). Everything runs in this one process on the
same data, so load from other programs slows every method alike; the targets are ratios.

Data: skfolio's bundled S&P 500 dataset (`skfolio.datasets.load_sp500_dataset`, 20 stocks, daily adjusted
closes, shipped inside the skfolio wheel: no download), simple daily returns 2005-01-04 to 2022-12-28
(prices from 2005-01-01), windows of 252 returns strictly before each rebalance, a rebalance every 21
periods: 204 windows.

The 100-asset panel (W1-100) is built from the same real prices, because no real 100-stock panel ships
offline here: the 20 stocks' daily returns over the same 4,528-row calendar (lag 0), and the same stocks'
returns 945, 1,890, 2,835 and 3,780 trading days earlier (lags 1-4, reaching back to January 1990), as 80
more columns. Every column is a real return series of a real stock; columns of different lags come from
different years, so they are nearly uncorrelated with each other (the covariance is nearly block diagonal).
"""
from __future__ import annotations

import os

# One BLAS/LAPACK thread for every method (set before numpy loads): the matrices are small, and on a busy
# machine threads that spin for a core slow each small product many times over, for all methods alike.
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import contextlib  # noqa: E402
import io  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

WINDOW, EVERY = 252, 21
START, END = "2005-01-01", "2022-12-28"
TARGETS = [  # (workload, faster method, slower method, minimum ratio)
    ("W1 max Sharpe, 20 assets", "portopt fast", "riskfolio-lib naive", 10.0),
    ("W1 max Sharpe, 20 assets", "portopt fast", "skfolio WalkForward", 4.0),
    ("W2 min CVaR 95%, 20 assets", "portopt fast", "riskfolio-lib naive", 4.0),
    ("W3 HRP, 20 assets", "portopt fast", "riskfolio-lib naive", 15.0),
    ("W1 max Sharpe, 100 assets", "portopt fast", "riskfolio-lib naive", 6.0),
]


def sp500_returns() -> tuple[pd.DataFrame, pd.DataFrame]:
    "(the benchmark's returns 2005-2022, 20 stocks; the 100-column panel on the same calendar)."
    from skfolio.datasets import load_sp500_dataset
    prices = load_sp500_dataset()
    full = prices.pct_change().iloc[1:]                       # 1990-01-03 onwards
    X = prices.loc[START:END].pct_change().iloc[1:]            # 2005-01-04 to 2022-12-28
    s = full.index.get_loc(X.index[0])
    lag = s // 4                                               # 945 trading days: lag 4 starts in January 1990
    blocks = []
    for k in range(5):
        b = full.iloc[s - k * lag: s - k * lag + len(X)]
        blocks.append(pd.DataFrame(b.to_numpy(), index=X.index, columns=[f"{c}-lag{k}" for c in full.columns]))
    X100 = pd.concat(blocks, axis=1)
    X100.attrs["spans"] = {k: (full.index[s - k * lag].date(), full.index[s - k * lag + len(X) - 1].date()) for k in range(5)}
    return X, X100


def windows(X: pd.DataFrame) -> list[pd.DataFrame]:
    return [X.iloc[i - WINDOW:i] for i in range(WINDOW, len(X), EVERY)]


def riskfolio_naive(X: pd.DataFrame, strategy: str) -> list:
    "A new riskfolio-lib portfolio per window, its default solvers; `None` where it finds no weights."
    import riskfolio as rp
    out = []
    for win in windows(X):
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if strategy == "hrp":
                port = rp.HCPortfolio(returns=win)
                w = port.optimization(model="HRP", codependence="pearson", rm="MV", rf=0, linkage="single", leaf_order=True)
            else:
                port = rp.Portfolio(returns=win)
                port.assets_stats(method_mu="hist", method_cov="hist")
                rm, obj = {"max_sharpe": ("MV", "Sharpe"), "min_cvar": ("CVaR", "MinRisk")}[strategy]
                w = port.optimization(model="Classic", rm=rm, obj=obj, rf=0, hist=True)
        ok = w is not None and np.isfinite(w["weights"].to_numpy()).all()
        out.append(w["weights"].to_numpy() if ok else None)
    return out


def skfolio_walk_forward(X: pd.DataFrame) -> list:
    "skfolio's MeanRisk maximum Sharpe ratio (standard deviation) over WalkForward folds, via cross_val_predict."
    from skfolio import RiskMeasure
    from skfolio.model_selection import WalkForward, cross_val_predict
    from skfolio.optimization import MeanRisk, ObjectiveFunction
    model = MeanRisk(objective_function=ObjectiveFunction.MAXIMIZE_RATIO, risk_measure=RiskMeasure.STANDARD_DEVIATION)
    cv = WalkForward(test_size=EVERY, train_size=WINDOW, reduce_test=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = cross_val_predict(model, X, cv=cv)
    return [np.asarray(p.weights) for p in pred.portfolios]


def portopt_fast(X: pd.DataFrame, strategy: str, **options) -> tuple[list, pd.DataFrame]:
    from portopt.walkforward import rolling_weights
    W = rolling_weights(X, strategy, window=WINDOW, rebalance_every=EVERY, periods_per_year=252, **options)
    return list(W.to_numpy()), W


def timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def max_diff(ws: list, ref: list) -> tuple[float, int]:
    "(max |Δw| over the windows where `ref` has weights, number of windows where it has none)."
    d = [np.abs(np.asarray(a) - b).max() for a, b in zip(ws, ref) if b is not None and a is not None]
    return (max(d) if d else float("nan")), sum(b is None for b in ref)


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3,
                    help="passes over every method, round robin; each method's best time counts (default 3)")
    args = ap.parse_args(argv)
    import cvxpy  # noqa: F401  (imports are paid before any clock starts, for every method alike)
    import riskfolio  # noqa: F401
    import skfolio  # noqa: F401
    import portopt.walkforward  # noqa: F401
    X, X100 = sp500_returns()
    n_windows = len(windows(X))
    print(f"data: skfolio S&P 500 dataset, {X.shape[1]} stocks, daily returns {X.index[0].date()} to {X.index[-1].date()} "
          f"({len(X)} rows); window {WINDOW}, rebalance every {EVERY}: {n_windows} windows")
    spans = ", ".join(f"lag {k}: {a} to {b}" for k, (a, b) in X100.attrs["spans"].items())
    print(f"100-asset panel: the 20 stocks' returns at 5 lags of 945 trading days ({spans}), {X100.shape[1]} columns")
    print(f"times: best of {args.repeat} round-robin passes, one process, one BLAS thread for all\n")
    runs = [  # (workload, method, function, note)
        ("W1 max Sharpe, 20 assets", "riskfolio-lib naive", lambda: riskfolio_naive(X, "max_sharpe"), "new rp.Portfolio per window"),
        ("W1 max Sharpe, 20 assets", "skfolio WalkForward", lambda: skfolio_walk_forward(X), "MeanRisk MAXIMIZE_RATIO, cross_val_predict"),
        ("W1 max Sharpe, 20 assets", "portopt fast", lambda: portopt_fast(X, "max_sharpe"), ""),
        ("W1 max Sharpe, 20 assets", "portopt fast (factor form)", lambda: portopt_fast(X, "max_sharpe", sigma_form="factor"), "Cholesky factor in an SOC"),
        ("W2 min CVaR 95%, 20 assets", "riskfolio-lib naive", lambda: riskfolio_naive(X, "min_cvar"), "new rp.Portfolio per window"),
        ("W2 min CVaR 95%, 20 assets", "portopt fast", lambda: portopt_fast(X, "min_cvar"), ""),
        ("W3 HRP, 20 assets", "riskfolio-lib naive", lambda: riskfolio_naive(X, "hrp"), "new rp.HCPortfolio per window"),
        ("W3 HRP, 20 assets", "portopt fast", lambda: portopt_fast(X, "hrp"), ""),
        ("W1 max Sharpe, 100 assets", "riskfolio-lib naive", lambda: riskfolio_naive(X100, "max_sharpe"), "new rp.Portfolio per window"),
        ("W1 max Sharpe, 100 assets", "portopt fast", lambda: portopt_fast(X100, "max_sharpe"), ""),
        ("W1 max Sharpe, 100 assets", "portopt fast (factor form)", lambda: portopt_fast(X100, "max_sharpe", sigma_form="factor"), "Cholesky factor in an SOC"),
    ]
    seconds, results = {}, {}
    for _ in range(args.repeat):
        for workload, method, fn, _note in runs:
            out, t = timed(fn)
            key = (workload, method)
            seconds[key] = min(t, seconds.get(key, np.inf))
            results[key] = out
    rows = []
    for workload, method, _fn, note in runs:
        out, ref = results[(workload, method)], results[(workload, "riskfolio-lib naive")]
        if method.startswith("portopt"):
            ws, W = out
            note = (note + "; " if note else "") + "solvers " + str(pd.Series([d["solver"] for d in W.attrs["diagnostics"]]).value_counts().to_dict())
        else:
            ws = out
        d, none = max_diff(ws, ref)
        rows.append({"workload": workload, "method": method, "seconds": round(seconds[(workload, method)], 3),
                     "max |dw| vs riskfolio": "" if ws is ref else f"{d:.1e}",
                     "no answer": sum(w is None for w in ws), "note": note})
    table = pd.DataFrame(rows).set_index(["workload", "method"])
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print(table.to_string())
    print()
    ok = True
    for workload, fast, slow, target in TARGETS:
        ratio = seconds[(workload, slow)] / seconds[(workload, fast)]
        passed = ratio >= target
        ok &= passed
        print(f"{'PASS' if passed else 'FAIL'}  {workload}: {fast} is {ratio:.1f}x faster than {slow} (target >= {target:g}x)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
