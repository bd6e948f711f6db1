"""optimize(): real solvers on real data; results checked against independent computations."""
import numpy as np
import pandas as pd
import pytest

from portopt.clean import returns
from portopt.config import ConfigError, DataError, OptimizationError
from portopt.data import load_prices
from portopt.optimize import STRATEGIES, efficient_frontier, estimation_window, optimize

ASSETS = ["BTC", "ETH", "SOL", "BNB", "ADA", "USDC"]


@pytest.fixture(scope="module")
def window():
    return estimation_window(returns(load_prices(assets=ASSETS)), window=365, end="2022-04-01")


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_strategy_gives_long_only_weights_summing_to_one(window, strategy):
    a = optimize(window, strategy, periods_per_year=365)
    assert list(a.weights.index) == ASSETS and abs(a.weights.sum() - 1) < 1e-9 and (a.weights >= 0).all()
    port = window.to_numpy() @ a.weights.to_numpy()
    assert np.isclose(a.expected_return, port.mean() * 365) and np.isclose(a.volatility, port.std(ddof=1) * np.sqrt(365))
    assert np.isclose(a.risk_contributions.sum(), 1)


def test_min_variance_and_max_sharpe_beat_every_random_long_only_portfolio(window):
    rng = np.random.default_rng(7)
    w = rng.dirichlet(np.ones(len(ASSETS)), 5000)
    port = window.to_numpy() @ w.T
    vol, sharpe = port.std(axis=0, ddof=1), port.mean(axis=0) / port.std(axis=0, ddof=1)
    mv = optimize(window, "min_variance", periods_per_year=365)
    ms = optimize(window, "max_sharpe", periods_per_year=365)
    assert mv.volatility / np.sqrt(365) <= vol.min() + 1e-9
    assert ms.sharpe / np.sqrt(365) >= sharpe.max() - 1e-9


def test_min_cvar_has_the_lowest_historical_cvar(window):
    def cvar(w, alpha=0.05):
        r = np.sort(window.to_numpy() @ w)
        return -r[: int(np.ceil(alpha * len(r)))].mean()
    a = optimize(window, "min_cvar", periods_per_year=365)
    assert np.isclose(a.risk, cvar(a.weights.to_numpy()))
    for s in ("equal_weight", "min_variance", "hrp"):
        assert a.risk <= cvar(optimize(window, s, periods_per_year=365).weights.to_numpy()) + 1e-7


def test_hrp_follows_inverse_variance_between_two_assets(window):
    # With two assets HRP has one split, whose weights are inverse variance (López de Prado 2016).
    two = window[["BTC", "USDC"]]
    a = optimize(two, "hrp", periods_per_year=365)
    iv = 1 / two.var()
    assert np.allclose(a.weights.to_numpy(), (iv / iv.sum()).to_numpy(), atol=1e-6)


def test_failure_raises_with_every_attempt_named(window):
    with pytest.raises(OptimizationError) as e:
        optimize(window.assign(CASH=0.0), "hrp", periods_per_year=365)
    msg = str(e.value)
    assert "hrp found no weights for the window 2021-04-01" in msg and "CLARABEL:" in msg and "SCS:" in msg


def test_bad_inputs_are_refused_before_any_solver(window):
    with pytest.raises(ConfigError, match="unknown strategy"):
        optimize(window, "max_return", periods_per_year=365)
    with pytest.raises(DataError, match="missing values"):
        optimize(window.assign(NEW=np.nan), "min_variance", periods_per_year=365)
    with pytest.raises(ConfigError, match="only 30 are available"):
        estimation_window(window.iloc[:30], window=60)


def test_estimation_window_sees_strictly_before_end_and_keeps_ragged_assets():
    r = returns(load_prices(assets=["BTC", "SOL"]))
    w = estimation_window(r, window=100, end="2020-06-01")
    assert w.index[-1] == pd.Timestamp("2020-05-31", tz="UTC") and list(w.columns) == ["BTC"]  # SOL: 51 days only
    assert list(estimation_window(r, window=100, end="2020-08-01").columns) == ["BTC", "SOL"]


def test_efficient_frontier_runs_from_min_variance_up(window):
    fr = efficient_frontier(window, periods_per_year=365, points=10)
    mv = optimize(window, "min_variance", periods_per_year=365)
    assert np.isclose(fr["volatility"].iloc[0], mv.volatility, rtol=1e-3)
    assert fr["expected_return"].is_monotonic_increasing and np.allclose(fr[ASSETS].sum(axis=1), 1, atol=1e-4)
