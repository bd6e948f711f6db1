"""walk_forward(): no look-ahead, drift, fees and ragged universes, checked on real data."""
import numpy as np
import pandas as pd
import pytest

from portopt.backtest import BENCHMARK, compare, walk_forward
from portopt.metrics import annualized_return, max_drawdown, sharpe_ratio

ASSETS = ["BTC", "ETH", "SOL", "BNB", "USDC"]


@pytest.fixture(scope="module")
def prices():
    from portopt.data import load_prices
    return load_prices(assets=ASSETS, start="2020-01-01")


@pytest.mark.parametrize("strategy", ["max_sharpe", "min_cvar", "hrp"])
def test_no_look_ahead_truncating_or_rewriting_the_future_changes_nothing_before_it(prices, strategy):
    cut = pd.Timestamp("2021-09-15", tz="UTC")
    kw = dict(periods_per_year=365, window=90, rebalance_every=20, fee_bps=10, start="2021-01-01")
    full = walk_forward(prices, strategy, **kw)
    truncated = walk_forward(prices[prices.index <= cut], strategy, **kw)
    future = prices.copy()
    future.loc[future.index > cut] = future.loc[future.index > cut] * np.linspace(0.2, 5, (future.index > cut).sum())[:, None]
    rewritten = walk_forward(future, strategy, **kw)
    pd.testing.assert_series_equal(full.returns[full.returns.index <= cut], truncated.returns)
    pd.testing.assert_series_equal(full.returns[full.returns.index <= cut], rewritten.returns[rewritten.returns.index <= cut])
    assert not np.allclose(full.returns[full.returns.index > cut], rewritten.returns[rewritten.returns.index > cut])


def test_equal_weight_matches_buy_and_hold_between_rebalances(prices):
    # Independent of the engine's drift arithmetic: between rebalances an equally weighted portfolio
    # is worth the mean of each asset's price relative to the rebalance day's open (the previous close).
    bt = walk_forward(prices, "equal_weight", periods_per_year=365, window=60, rebalance_every=30, start="2021-01-01")
    value, expected = 1.0, []
    dates = bt.returns.index
    for k, t0 in enumerate(bt.weights.index):
        block = dates[(dates >= t0) & ((dates < bt.weights.index[k + 1]) if k + 1 < len(bt.weights) else True)]
        held = bt.weights.columns[bt.weights.loc[t0] > 0]
        base = prices.loc[prices.index < t0, held].iloc[-1]
        rel = (prices.loc[block, held] / base).mean(axis=1)
        expected += list(rel / np.r_[1.0, rel.to_numpy()[:-1]] - 1)
    assert np.allclose(bt.returns.to_numpy(), expected, atol=1e-12)


def test_fees_are_charged_on_turnover_only_on_rebalance_days(prices):
    kw = dict(periods_per_year=365, window=90, rebalance_every=30, start="2021-03-01")
    free = walk_forward(prices, "min_variance", **kw)
    paid = walk_forward(prices, "min_variance", fee_bps=25, **kw)
    cost = paid.turnover * 25 / 1e4
    assert np.allclose((1 + paid.returns[cost.index]) / (1 + free.returns[cost.index]), 1 - cost)
    other = free.returns.index.difference(cost.index)
    assert np.allclose(paid.returns[other], free.returns[other]) and paid.turnover.iloc[0] == pytest.approx(1.0)


def test_an_asset_joins_once_it_has_a_full_window(prices):
    bt = walk_forward(prices, "equal_weight", periods_per_year=365, window=120, rebalance_every=30, start="2020-06-01")
    sol_start = prices["SOL"].first_valid_index()
    held = bt.weights["SOL"] > 0
    assert not held[bt.weights.index <= sol_start + pd.Timedelta(days=120)].any()
    assert held.iloc[-1] and np.allclose(bt.weights.sum(axis=1), 1)


def test_compare_reports_metrics_that_agree_with_the_returns(prices):
    res = compare(prices, ["hrp"], periods_per_year=365, window=90, rebalance_every=30, start="2021-06-01")
    assert set(res) == {"hrp", BENCHMARK}
    m, r = res["hrp"].metrics(), res["hrp"].returns
    assert m["annualized_return"] == annualized_return(r, periods_per_year=365)
    assert m["sharpe"] == sharpe_ratio(r, periods_per_year=365) and m["max_drawdown"] == max_drawdown(r)
    assert m["sharpe"] != sharpe_ratio(r, periods_per_year=252)  # the annualization is the one asked for


def test_market_impact_is_the_reallocation_model(prices):
    from portopt.data import load_volumes
    from portopt.reallocate import square_root_impact
    volumes = load_volumes(assets=ASSETS, start="2020-01-01")
    kw = dict(periods_per_year=365, window=90, rebalance_every=30, start="2021-03-01")
    plain = walk_forward(prices, "equal_weight", **kw)
    hit = walk_forward(prices, "equal_weight", volumes=volumes, impact_coefficient=1.0, capital=1e8, **kw)
    t0, r = hit.weights.index[0], prices.pct_change()
    # the first rebalance buys from cash: each asset's trade is its weight times the capital
    expected = sum(square_root_impact(w * 1e8, volumes.loc[volumes.index < t0, a].iloc[-30:].mean(),
                                      r.loc[r.index < t0, a].iloc[-30:].std(), 1.0)
                   for a, w in hit.weights.loc[t0].items() if w > 0) / 1e8
    assert hit.impact.iloc[0] == pytest.approx(expected) and expected > 0
    assert 1 + hit.returns[t0] == pytest.approx((1 + plain.returns[t0]) * (1 - expected))
    assert hit.metrics()["total_impact"] == pytest.approx(hit.impact.sum())
    with pytest.raises(Exception, match="market impact needs volumes"):
        walk_forward(prices, "equal_weight", impact_coefficient=1.0, **kw)
