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


@pytest.mark.parametrize("options", [dict(band=0.05, rebalance_every=1), dict(drawdown_limit=0.15, cooldown=10, cash="USDC"),
                                     dict(max_weight=0.3, rebalance_every="weekly", expanding=True)])
def test_no_look_ahead_with_bands_overlays_and_calendar_schedules(prices, options):
    cut = pd.Timestamp("2021-09-15", tz="UTC")
    kw = dict(periods_per_year=365, window=90, fee_bps=10, start="2021-01-01", **{"rebalance_every": 20, **options})
    full = walk_forward(prices, "min_variance", **kw)
    truncated = walk_forward(prices[prices.index <= cut], "min_variance", **kw)
    pd.testing.assert_series_equal(full.nav[full.nav.index <= cut], truncated.nav)
    pd.testing.assert_frame_equal(full.log[full.log["timestamp"] <= cut], truncated.log)


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
    with pytest.raises(Exception, match="needs volumes"):
        walk_forward(prices, "equal_weight", impact_coefficient=1.0, **kw)


# --- issue 5: the engine's schedules, bands, cash, overlays, failure policy and benchmarks ---------------------------

def test_zero_cost_equal_weight_monthly_nav_equals_an_independent_computation():
    # Independent of the engine: hold equal value in each asset that has 180 complete returns before the
    # month's first day, let the units ride, re-split the value on the first day of every month.
    from portopt.data import load_prices
    prices = load_prices(start="2019-01-01")                       # all 19 bundled assets, ragged
    bt = walk_forward(prices, "equal_weight", periods_per_year=365, window=180, rebalance_every="monthly",
                      start="2020-01-01", capital=1.0)
    rel = prices / prices.shift(1)
    days = bt.returns.index
    month = days.tz_localize(None).to_period("M")
    firsts = [days[0]] + [d for d, a, b in zip(days[1:], month[1:], month[:-1]) if a != b]
    nav, out = 1.0, []
    for k, t0 in enumerate(firsts):
        block = days[(days >= t0) & ((days < firsts[k + 1]) if k + 1 < len(firsts) else True)]
        before = rel.loc[rel.index < t0].iloc[-180:]
        eligible = before.columns[before.notna().all()]
        units = pd.Series(nav / len(eligible), index=eligible)     # value per asset at the close before t0
        growth = rel.loc[block, eligible].fillna(1.0).cumprod()
        path = (growth * units).sum(axis=1)
        out += list(path)
        nav = float(path.iloc[-1])
    assert len(bt.weights) == len(firsts) and list(bt.weights.index) == firsts
    assert np.allclose(bt.nav.to_numpy(), out, rtol=0, atol=1e-9)


def test_a_drift_band_trades_only_outside_it(prices):
    kw = dict(periods_per_year=365, window=90, start="2021-01-01")
    daily = walk_forward(prices, "equal_weight", rebalance_every=1, **kw)
    banded = walk_forward(prices, "equal_weight", rebalance_every=30, band=0.04, **kw)
    assert len(daily.weights) == len(daily.returns)
    # between trades the drifted weights stay within the band of the target; a trade happens when they leave it
    held = banded.daily_weights
    drifted = (held * (1 + prices.pct_change(fill_method=None).reindex(held.index).fillna(0))).div(
        (held * (1 + prices.pct_change(fill_method=None).reindex(held.index).fillna(0))).sum(axis=1), axis=0).shift(1)
    trade_days = banded.weights.index
    for t in held.index[1:]:
        target = banded.weights[banded.weights.index <= t].iloc[-1] if t in trade_days else held.loc[t]
        off = (drifted.loc[t] - target).abs().max()
        if t in trade_days[1:]:
            assert off > 0.04 or banded.trades.set_index("timestamp").loc[[t], "reason"].iloc[0] == "scheduled"
        else:
            assert off <= 0.04 + 1e-12
    assert 1 < len(trade_days) < len(held) / 10
    skipped = banded.log[banded.log["event"] == "inside_band"]
    assert len(skipped) and skipped["detail"].str.contains("no trade").all()


def test_cash_earns_its_own_returns_or_nothing_and_is_never_optimized(prices):
    kw = dict(periods_per_year=365, window=90, start="2021-06-01", rebalance_every=30, max_weight=0.15)
    synthetic = walk_forward(prices.drop(columns="USDC"), "equal_weight", **kw)
    usdc = walk_forward(prices, "equal_weight", cash="USDC", **kw)
    # four risky assets capped at 15 %: 40 % sits in cash
    assert np.allclose(synthetic.weights["cash"], 0.4) and np.allclose(usdc.weights["USDC"], 0.4)
    r = prices.pct_change(fill_method=None).fillna(0.0)
    expected = (usdc.daily_weights * r.reindex(usdc.daily_weights.index)[usdc.daily_weights.columns]).sum(axis=1)
    gross_synth = (synthetic.daily_weights.drop(columns="cash") * r.reindex(synthetic.daily_weights.index)[["BTC", "ETH", "SOL", "BNB"]]).sum(axis=1)
    assert np.allclose(usdc.returns, expected) and np.allclose(synthetic.returns, gross_synth)
    assert not np.allclose(usdc.returns, synthetic.returns)        # USDC is not exactly flat


def test_position_caps_hold_at_every_trade_and_the_excess_goes_pro_rata(prices):
    bt = walk_forward(prices, "min_variance", periods_per_year=365, window=90, rebalance_every=30, start="2021-01-01",
                      max_weight=0.4)
    free = walk_forward(prices, "min_variance", periods_per_year=365, window=90, rebalance_every=30, start="2021-01-01")
    assert free.weights.max(axis=1).max() > 0.4                     # the cap binds
    assert (bt.weights.drop(columns="cash") <= 0.4 + 1e-9).all().all() and np.allclose(bt.weights.sum(axis=1), 1)


def test_the_circuit_breaker_exits_to_cash_and_reenters_by_its_rule(prices):
    kw = dict(periods_per_year=365, window=90, rebalance_every=7, start="2021-03-01", cash="USDC")
    plain = walk_forward(prices, "equal_weight", **kw)
    bt = walk_forward(prices, "equal_weight", drawdown_limit=0.2, cooldown=20, **kw)
    exits = bt.log[bt.log["event"] == "circuit_breaker_exit"]["timestamp"]
    back = bt.log[bt.log["event"] == "circuit_breaker_reentry"]["timestamp"]
    assert len(exits) >= 1
    first = exits.iloc[0]
    # the exit comes the period after the value closes 20 % below its peak, not before
    dd_plain = plain.nav / plain.nav.cummax() - 1
    breach = dd_plain[dd_plain <= -0.2].index[0]
    assert first == plain.nav.index[plain.nav.index.get_loc(breach) + 1]
    for e in exits:
        later = back[back > e]
        until = later.iloc[0] if len(later) else bt.returns.index[-1] + pd.Timedelta(days=1)
        assert (bt.daily_weights.loc[(bt.daily_weights.index >= e) & (bt.daily_weights.index < until), "USDC"] == 1).all()
        if len(later):
            assert (later.iloc[0] - e).days >= 20 and later.iloc[0] in bt.weights.index
    assert bt.metrics()["max_drawdown"] > plain.metrics()["max_drawdown"]   # drawdowns are negative: shallower


@pytest.mark.parametrize("policy", ["hold", "equal_weight", "raise"])
def test_a_failed_optimization_follows_the_policy_and_is_recorded(prices, policy):
    from portopt.config import OptimizationError
    # a 30 % cap on 2-4 assets is feasible once SOL and BNB have a window, infeasible before
    kw = dict(periods_per_year=365, window=60, rebalance_every=30, start="2020-03-01", on_failure=policy,
              params=dict(constraints={"max_weight": 0.3}))
    few = prices[["BTC", "ETH", "SOL", "BNB"]]
    if policy == "raise":
        with pytest.raises(OptimizationError, match="upper bounds sum"):
            walk_forward(few, "min_variance", **kw)
        return
    bt = walk_forward(few, "min_variance", **kw)
    failed = bt.failures
    assert len(failed) >= 1 and failed["detail"].str.contains("upper bounds sum").all()
    first = failed["timestamp"].iloc[0]
    held = bt.daily_weights.loc[first]
    eligible = held[held > 0].index
    assert np.allclose(held[eligible], 1 / len(eligible))           # nothing held yet: equal weight either way
    if len(failed) > 1:
        t = failed["timestamp"].iloc[1]
        if policy == "hold":
            assert t not in bt.weights.index                        # held: no trade
        else:
            assert t in bt.weights.index


def test_benchmarks_run_through_the_same_engine(prices):
    from portopt.data import load_market_caps
    caps = load_market_caps(assets=list(prices.columns))
    kw = dict(periods_per_year=365, window=90, rebalance_every=30, start="2021-01-01")
    btc = walk_forward(prices, "asset:BTC", **kw)
    assert np.allclose(btc.returns, prices["BTC"].pct_change().reindex(btc.returns.index)) and len(btc.weights) == 1
    hold = walk_forward(prices, "buy_and_hold", **kw)
    t0 = hold.returns.index[0]
    eligible = hold.weights.columns[hold.weights.iloc[0] > 0]
    base = prices.loc[prices.index < t0, eligible].iloc[-1]
    value = (prices.loc[hold.returns.index, eligible] / base).mean(axis=1)
    assert len(hold.weights) == 1 and np.allclose(hold.nav / hold.config["capital"], value)
    mc = walk_forward(prices, "market_cap", market_caps=caps, **kw)
    for t, w in mc.weights.iterrows():
        last = caps[caps.index < t].ffill().iloc[-1][w[w > 0].index]
        assert np.allclose(w[w > 0], last / last.sum())
    with pytest.raises(Exception, match="needs market_caps"):
        walk_forward(prices, "market_cap", **kw)


def test_the_fast_path_and_optimize_agree(prices):
    kw = dict(periods_per_year=365, window=90, rebalance_every=30, start="2021-01-01")
    fast = walk_forward(prices, "min_variance", **kw)
    slow = walk_forward(prices, "min_variance", fast=False, **kw)
    assert np.abs(fast.weights - slow.weights).max().max() < 1e-4
    # riskfolio-lib's weights differ from the fast path's by up to 1.5e-5 here (its solver's accuracy; Clarabel through
    # its own API or through cvxpy alike), so a day's return differs by up to about 1e-6
    assert np.allclose(fast.returns, slow.returns, atol=2e-6)


def test_an_expanding_window_uses_all_history_before_the_decision(prices):
    from portopt.optimize import estimation_window, optimize
    kw = dict(periods_per_year=365, window=60, rebalance_every=60, start="2021-01-01", fast=False)
    bt = walk_forward(prices[["BTC", "ETH", "USDC"]], "min_variance", expanding=True, **kw)
    t = bt.weights.index[2]
    r = prices[["BTC", "ETH", "USDC"]].pct_change(fill_method=None).iloc[1:]
    expected = optimize(estimation_window(r, end=t), "min_variance", periods_per_year=365).weights
    assert np.allclose(bt.weights.loc[t, expected.index], expected, atol=1e-6)


def test_bad_configurations_fail_before_any_work(prices):
    from portopt.backtest import check_config
    from portopt.config import ConfigError
    for options, says in [(dict(window=len(prices)), "shorter window"), (dict(rebalance_every=0), ">= 1"),
                          (dict(rebalance_every="daily"), "weekly"), (dict(fee_bps=-1), "must be >= 0"),
                          (dict(band=1.5), "drift band"), (dict(on_failure="skip"), "on_failure"),
                          (dict(params={"risk_measur": "CVaR"}), "not options of portopt.optimize"),
                          (dict(max_weight=0), "position cap")]:
        with pytest.raises(ConfigError, match=says):
            check_config(prices, "hrp", periods_per_year=365, **options)
    with pytest.raises(ConfigError, match="unknown strategy"):
        compare(prices, ["hrp", "min_variance", "no_such_strategy"], periods_per_year=365, window=60)


def test_the_result_round_trips_through_json(prices):
    import json
    from portopt.backtest import BacktestResult
    bt = walk_forward(prices, "hrp", periods_per_year=365, window=90, rebalance_every=30, start="2021-06-01", fee_bps=10,
                      band=0.05)
    back = BacktestResult.from_dict(json.loads(json.dumps(bt.to_dict())))
    pd.testing.assert_series_equal(back.returns, bt.returns, check_freq=False)
    pd.testing.assert_series_equal(back.nav, bt.nav, check_freq=False)
    pd.testing.assert_frame_equal(back.weights, bt.weights, check_freq=False)
    pd.testing.assert_frame_equal(back.trades, bt.trades)
    pd.testing.assert_frame_equal(back.log, bt.log)
    assert back.metrics() == bt.metrics()


def test_summary_has_intervals_around_the_estimates(prices):
    bt = walk_forward(prices, "equal_weight", periods_per_year=365, window=90, rebalance_every=30, start="2020-06-01")
    s = bt.summary(n_trials=10, sharpe_variance=0.001, reps=300)
    assert s["sharpe_low"] < s["sharpe"] < s["sharpe_high"]
    assert s["annualized_return_low"] < s["annualized_return"] < s["annualized_return_high"]
    assert 0 <= s["dsr"] < s["psr"] <= 1 and s["n_trials"] == 10


def test_a_backtest_as_of_a_time_cannot_see_a_later_revision(cli, store_path):
    """`portopt backtest --as-of T` reads the store as it was known at T (issue 15): a close revised after T changes the
    backtest without --as-of, and leaves the one as of T identical to the backtest run before the revision."""
    import json
    import time
    from portopt.store import SQLiteStore, ensure_dataset
    with SQLiteStore(store_path) as st:
        ensure_dataset(st)
        day = pd.Timestamp("2022-03-15", tz="UTC")
        btc = st.read_prices(["BTC"], start=day, end=day)["BTC"].iloc[0]
    time.sleep(0.05); known = pd.Timestamp.now(tz="UTC"); time.sleep(0.05)
    args = ("backtest", "--source", "dataset:coingecko-daily", "--assets", "BTC,ETH,SOL,USDC", "--strategy", "hrp",
            "--window", "60", "--rebalance-every", "14", "--start", "2022-01-01", "--no-save", "--json")
    def nav(*extra):
        out = json.loads(cli(*args, *extra).stdout)
        assert out["strategy"] == "hrp"
        return pd.Series(out["nav"])
    before = nav("--as-of", known.isoformat())
    with SQLiteStore(store_path) as st:   # a revision recorded after `known`: BTC's close of that day doubled
        frame = pd.DataFrame({"timestamp": [day], "asset": ["BTC"], "close": [btc * 2]})
        assert st.write_prices(frame, "dataset:coingecko-daily").updated == 1
    assert nav("--as-of", known.isoformat()).equals(before)          # as of then: the revision is not seen
    after = nav()
    assert not np.allclose(after.to_numpy(), before.to_numpy())        # without --as-of: it is
