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
        # Rockafellar and Uryasev (2000): min over t of t + E[max(loss - t, 0)] / alpha; the minimum is at a loss.
        loss = -(window.to_numpy() @ w)
        return min(t + np.maximum(loss - t, 0).sum() / (alpha * len(loss)) for t in loss)
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
        optimize(window, "min_regret", periods_per_year=365)
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


# ---- the catalogue, estimators and constraints (issue 3) -------------------------------------------
from conftest import FIXTURES  # noqa: E402

from portopt.config import ConstraintError  # noqa: E402
from portopt.data import load_market_caps, read_price_file, to_wide  # noqa: E402
from portopt.optimize import (  # noqa: E402
    COV_ESTIMATORS, RISK_MEASURES, Constraints, black_litterman_posterior, risk_value)


@pytest.fixture(scope="module")
def equities():
    wide = to_wide(read_price_file(FIXTURES / "tests_stock_prices.csv")[0])
    return estimation_window(returns(wide[["AAPL", "AMZN", "GE", "JPM", "WMT", "XOM", "PFE", "MA"]]), window=504)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("panel", ["crypto", "equities"])
def test_every_strategy_on_both_panels(window, equities, strategy, panel):
    r, ppy = (window, 365) if panel == "crypto" else (equities, 252)
    a = optimize(r, strategy, periods_per_year=ppy)
    assert abs(a.weights.sum() - 1) < 1e-9 and (a.weights >= -1e-9).all() and a.periods_per_year == ppy
    assert np.isclose(a.risk_contributions.sum(), 1) and a.as_of == r.index[-1]


@pytest.mark.parametrize("measure", ["variance", "mad", "semi_deviation", "cvar", "evar", "worst_realization",
                                     "cdar", "max_drawdown", "average_drawdown", "ulcer_index", "gini_mean_difference"])
def test_min_risk_matches_riskfolio_lib_for_each_measure(equities, measure):
    import riskfolio as rp
    a = optimize(equities, "min_risk", risk_measure=measure, periods_per_year=252)
    port = rp.Portfolio(returns=equities)
    port.assets_stats(method_mu="hist", method_cov="hist")
    w = port.optimization(model="Classic", rm=RISK_MEASURES[measure], obj="MinRisk", hist=True)
    theirs = rp.Sharpe_Risk(returns=equities, w=w, cov=equities.cov(), rm=RISK_MEASURES[measure], rf=0, alpha=0.05)
    assert np.isclose(a.risk, theirs, rtol=1e-4, atol=1e-8), (a.risk, theirs)
    assert a.risk <= risk_value(optimize(equities, "equal_weight", periods_per_year=252).weights, equities, measure) + 1e-9


def test_estimators_are_riskfolio_lib_estimators(equities):
    import riskfolio as rp
    for name in ("ledoit_wolf", "oas", "ewma", "gerber"):
        a = optimize(equities, "min_variance", cov=name, periods_per_year=252)
        port = rp.Portfolio(returns=equities)
        port.assets_stats(method_mu="hist", method_cov=COV_ESTIMATORS[name])
        w = port.optimization(model="Classic", rm="MV", obj="MinRisk", hist=True)["weights"]
        assert np.allclose(a.weights.to_numpy(), w.to_numpy(), atol=1e-4), name
    assert not np.allclose(optimize(equities, "min_variance", cov="ledoit_wolf", periods_per_year=252).weights,
                           optimize(equities, "min_variance", periods_per_year=252).weights, atol=1e-3)


GROUPS = Constraints(groups={"stablecoins": {"assets": ["USDC"], "min": 0.2, "max": 0.5},
                             "large": {"assets": ["BTC", "ETH"], "max": 0.3}}, bounds={"SOL": (0.05, 0.25)}, max_weight=0.45)


@pytest.mark.parametrize("strategy", ["min_variance", "max_sharpe", "max_return", "utility", "min_risk", "max_ratio",
                                      "min_cvar", "kelly", "black_litterman", "risk_parity"])
def test_bounds_and_groups_hold_for_classic_strategies(window, strategy):
    a = optimize(window, strategy, periods_per_year=365, constraints=GROUPS)
    assert GROUPS.satisfied_by(a.weights) == [] and abs(a.weights.sum() - 1) < 1e-9


@pytest.mark.parametrize("strategy", ["hrp", "herc", "nco"])
def test_bounds_hold_for_hierarchical_strategies(window, strategy):
    c = Constraints(max_weight=0.35, bounds={"BTC": (0.1, 0.35)})
    a = optimize(window, strategy, periods_per_year=365, constraints=c)
    assert c.satisfied_by(a.weights) == []
    with pytest.raises(ConstraintError, match="supports only per-asset bounds"):
        optimize(window, strategy, periods_per_year=365, constraints=GROUPS)


@pytest.mark.parametrize("constraints, words", [
    (dict(max_weight=0.1), "upper bounds sum to 0.6 < 1"),
    (dict(bounds={"BTC": (0.7, 1.0), "ETH": (0.4, 1.0)}), "lower bounds sum to 1.1 > 1"),
    (dict(bounds={"BTC": (0.5, 0.4)}), "BTC: lower bound 0.5 is above its upper bound 0.4"),
    (dict(groups={"s": {"assets": ["USDC"], "min": 0.6}}, bounds={"USDC": (0, 0.5)}), "needs at least 0.6"),
    (dict(groups={"a": {"assets": ["BTC"], "min": 0.6}, "b": {"assets": ["ETH"], "min": 0.6}}), "need 1.2 > 1 together"),
    (dict(groups={"x": {"assets": ["DOGE"], "max": 0.1}}), "not in the returns"),
    (dict(max_assets=2, max_weight=0.3), "cannot reach a budget of 1"),
    (dict(min_weight=-0.1), "needs long_short=True"),
    (dict(turnover=0.1), "needs current_weights"),
    (dict(min_position=0.05), "min_position needs max_assets"),
])
def test_impossible_constraints_raise_before_any_solver(window, constraints, words):
    with pytest.raises(ConstraintError, match=words.replace("(", r"\(").replace(")", r"\)")):
        optimize(window, "max_sharpe", periods_per_year=365, constraints=constraints)


def test_cardinality_min_position_long_short_turnover_tracking_error_and_cash(window):
    c = Constraints(max_assets=3, min_position=0.15)
    a = optimize(window, "max_sharpe", periods_per_year=365, constraints=c)
    assert c.satisfied_by(a.weights) == [] and a.diagnostics["solver"] == "SCIP"
    assert optimize(window, "min_cvar", periods_per_year=365, constraints=c).diagnostics["solver"] == "HIGHS"
    ls = optimize(window, "max_sharpe", periods_per_year=365, constraints=Constraints(long_short=True, max_short=0.3))
    assert ls.weights.min() < 0 and -ls.weights[ls.weights < 0].sum() <= 0.3 + 1e-6 and abs(ls.weights.sum() - 1) < 1e-9
    ew = pd.Series(1 / len(ASSETS), index=ASSETS)
    to = optimize(window, "max_sharpe", periods_per_year=365, constraints=Constraints(turnover=0.05, current_weights=ew))
    assert (to.weights - ew).abs().max() <= 0.05 + 1e-6
    te = optimize(window, "max_sharpe", periods_per_year=365, constraints=Constraints(tracking_error=0.01, benchmark_weights=ew))
    assert (window @ (te.weights - ew)).std() <= 0.01 + 1e-6
    cash = optimize(window, "max_sharpe", periods_per_year=365, constraints=Constraints(cash="CASH", min_cash=0.25))
    assert cash.weights["CASH"] >= 0.25 - 1e-6


def test_constraints_from_yaml(window, tmp_path):
    f = tmp_path / "constraints.yaml"
    f.write_text("max_weight: 0.4\ngroups:\n  stablecoins:\n    assets: [USDC]\n    min: 0.2\n")
    c = Constraints.from_yaml(f)
    a = optimize(window, "max_sharpe", periods_per_year=365, constraints=c)
    assert a.weights["USDC"] >= 0.2 - 1e-6 and a.weights.max() <= 0.4 + 1e-6


def test_black_litterman_posterior_matches_riskfolio_lib_at_confidence_one_half(window):
    import riskfolio as rp
    caps = load_market_caps(assets=ASSETS).loc["2022-03-31"]
    views = [{"long": "ETH", "short": "BTC", "return": 0.2, "confidence": 0.5}, {"asset": "SOL", "return": 0.5, "confidence": 0.5}]
    mu, cov = black_litterman_posterior(window, views, periods_per_year=365, market_caps=caps, tau=1 / len(window))
    port = rp.Portfolio(returns=window)
    port.assets_stats(method_mu="hist", method_cov="hist")
    P = np.array([[-1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0]], dtype=float)
    Q = np.array([[0.2 / 365], [0.5 / 365]])
    port.blacklitterman_stats(P, Q, w=(caps / caps.sum()).to_frame(), eq=True)
    assert np.allclose(mu.to_numpy(), port.mu_bl.to_numpy().ravel(), rtol=1e-8, atol=1e-12)
    assert np.allclose(cov.to_numpy(), port.cov_bl.to_numpy(), rtol=1e-8, atol=1e-14)
    sure, _ = black_litterman_posterior(window, [dict(views[1], confidence=1.0)], periods_per_year=365, market_caps=caps)
    assert np.isclose(sure["SOL"], 0.5 / 365, rtol=1e-6)  # a certain view holds exactly


def test_kelly_fractions_and_risk_aversion_order_the_risk(window):
    k = {f: optimize(window, "kelly", fraction=f, periods_per_year=365) for f in (1.0, 0.5, 0.25)}
    assert k[0.25].volatility <= k[0.5].volatility <= k[1.0].volatility
    u = [optimize(window, "utility", risk_aversion=l, periods_per_year=365).volatility for l in (1, 5, 25)]
    assert u[0] >= u[1] >= u[2]


def test_risk_parity_budgets_are_met(window):
    budgets = {"BTC": 0.3, "ETH": 0.2, "SOL": 0.1, "BNB": 0.1, "ADA": 0.1, "USDC": 0.2}
    a = optimize(window, "risk_parity", budgets=budgets, periods_per_year=365)
    assert np.allclose(a.risk_contributions[list(budgets)], list(budgets.values()), atol=2e-3)


def test_max_sharpe_when_no_asset_beats_the_risk_free_rate():
    # riskfolio-lib's ratio program degenerates here and a solver may report "solved" with arbitrary weights; the
    # maximum over the simplex is then at a vertex: the single asset with the best ratio of its own (closed form)
    falling = estimation_window(returns(load_prices(assets=["BTC", "ETH", "SOL", "BNB"])), window=120, end="2022-02-25")
    assert (falling.mean() < 0).all()
    a = optimize(falling, "max_sharpe", periods_per_year=365)
    singles = falling.mean() / falling.std() * np.sqrt(365)
    assert a.diagnostics["solver"] == "closed form (no asset beats the risk-free rate)"
    assert a.weights[singles.idxmax()] == 1.0 and abs(a.sharpe - singles.max()) < 1e-12
    frontier = optimize(falling, "max_sharpe", periods_per_year=365, constraints={"max_weight": 0.6})
    assert frontier.diagnostics["solver"] == "frontier search"  # a vertex of the capped set is not one asset
    assert "not used: with bounds" in frontier.diagnostics["attempts"][1]["outcome"]
    # any convex risk measure: the best single asset by mean / its own CVaR (riskfolio-lib's Sharpe_Risk)
    cvar = optimize(falling, "max_ratio", risk_measure="cvar", periods_per_year=365)
    def own_cvar(col):
        r = np.sort(falling[col].to_numpy())
        k = int(np.ceil(0.05 * len(r)))
        return -(r[:k].sum() + (0.05 * len(r) - k) * r[k - 1]) / (0.05 * len(r))  # riskfolio-lib's discrete CVaR
    ratios = {c: falling[c].mean() / own_cvar(c) for c in falling}
    assert cvar.diagnostics["solver"] == "closed form (no asset beats the risk-free rate)"
    assert cvar.weights[max(ratios, key=ratios.get)] == 1.0
    rng = np.random.default_rng(0)
    for w in rng.dirichlet(np.full(4, 0.3), 300):  # no mix has a better mean / CVaR
        r = np.sort(falling.to_numpy() @ w)
        k = int(np.ceil(0.05 * len(r)))
        assert (r.mean()) / (-(r[:k].sum() + (0.05 * len(r) - k) * r[k - 1]) / (0.05 * len(r))) <= max(ratios.values()) + 1e-12
    with pytest.raises(OptimizationError, match="closed form was not used: with bounds"):
        optimize(falling, "max_ratio", risk_measure="cvar", periods_per_year=365, constraints={"max_weight": 0.6})
