"""portopt.metrics against textbook formulas on a fixed series, and against empyrical and quantstats on real data.

Where a peer uses another definition the test says so and checks the relation instead:
- quantstats' `value_at_risk`/`cvar` are parametric (normal) by default; portopt's are historical, as empyrical's.
- quantstats' `calmar` annualizes over calendar years between the first and last date; portopt over periods.
- quantstats' `information_ratio` is not annualized; portopt's is (× √periods_per_year).
"""
import numpy as np
import pandas as pd
import pytest

from portopt import metrics as m
from portopt.data import load_prices

FIXED = pd.Series([0.02, -0.01, 0.03, -0.04, 0.01, 0.0, 0.02, -0.02], index=pd.date_range("2022-01-01", periods=8, tz="UTC"))


@pytest.fixture(scope="module")
def real():
    p = load_prices(assets=["BTC", "ETH"], start="2020-01-01", end="2022-06-30")
    r = p.pct_change().dropna()
    return r["BTC"], r["ETH"]


def test_textbook_values_on_a_fixed_series():
    r = FIXED
    assert m.total_return(r) == pytest.approx(np.prod(1 + r) - 1)
    assert m.sharpe_ratio(r, periods_per_year=12) == pytest.approx(r.mean() / r.std(ddof=1) * np.sqrt(12))
    down = np.sqrt(np.mean(np.minimum(r, 0) ** 2))
    assert m.sortino_ratio(r, periods_per_year=12) == pytest.approx(r.mean() / down * np.sqrt(12))
    value = np.cumprod(1 + r)
    assert m.max_drawdown(r) == pytest.approx((value / np.maximum.accumulate(np.r_[1, value])[1:] - 1).min())
    assert m.max_drawdown_duration(r) == 5        # below the peak of day 3 from day 4 to the end
    assert m.hit_rate(r) == pytest.approx(4 / 7)   # 4 gains among the 7 periods that moved
    assert m.value_at_risk(r, 0.25) == pytest.approx(np.percentile(r, 25))
    assert m.conditional_value_at_risk(r, 0.25) == pytest.approx(r[r <= np.percentile(r, 25)].mean())
    assert m.calmar_ratio(r, periods_per_year=12) == pytest.approx(m.annualized_return(r, periods_per_year=12) / -m.max_drawdown(r))


def test_against_empyrical(real):
    import empyrical as ep
    btc, eth = real
    assert m.annualized_return(btc, periods_per_year=365) == pytest.approx(ep.annual_return(btc, annualization=365))
    assert m.annualized_volatility(btc, periods_per_year=365) == pytest.approx(ep.annual_volatility(btc, annualization=365))
    assert m.sharpe_ratio(btc, periods_per_year=365) == pytest.approx(ep.sharpe_ratio(btc, annualization=365))
    assert m.sortino_ratio(btc, periods_per_year=365) == pytest.approx(ep.sortino_ratio(btc, annualization=365))
    assert m.calmar_ratio(btc, periods_per_year=365) == pytest.approx(ep.calmar_ratio(btc, annualization=365))
    assert m.max_drawdown(btc) == pytest.approx(ep.max_drawdown(btc))
    assert m.value_at_risk(btc) == pytest.approx(ep.value_at_risk(btc, 0.05))
    assert m.conditional_value_at_risk(btc) == pytest.approx(ep.conditional_value_at_risk(btc, 0.05))
    a, b = m.alpha_beta(btc, eth, periods_per_year=365)
    ea, eb = ep.alpha_beta(btc, eth, annualization=365)
    assert (a, b) == (pytest.approx(ea), pytest.approx(eb))


def test_against_quantstats(real):
    import quantstats as qs
    btc, eth = real
    btc, eth = btc.tz_localize(None), eth.tz_localize(None)  # quantstats compares with naive dates internally (pandas 3)
    assert m.sortino_ratio(btc, periods_per_year=365) == pytest.approx(qs.stats.sortino(btc, periods=365))
    assert m.max_drawdown(btc) == pytest.approx(qs.stats.max_drawdown(btc))
    assert m.skewness(btc) == pytest.approx(qs.stats.skew(btc))
    assert m.kurtosis(btc) == pytest.approx(qs.stats.kurtosis(btc))
    assert m.hit_rate(btc) == pytest.approx(qs.stats.win_rate(btc))
    assert m.information_ratio(btc, eth, periods_per_year=365) / np.sqrt(365) == pytest.approx(qs.stats.information_ratio(btc, eth))


def test_probabilistic_and_deflated_sharpe(real):
    btc, _ = real
    sr = btc.mean() / btc.std()
    assert m.probabilistic_sharpe_ratio(btc, sr) == pytest.approx(0.5)
    assert m.probabilistic_sharpe_ratio(btc, 0.0) > m.probabilistic_sharpe_ratio(btc, sr / 2) > 0.5
    assert m.deflated_sharpe_ratio(btc, 1, 0.01) == pytest.approx(m.probabilistic_sharpe_ratio(btc))
    dsr = [m.deflated_sharpe_ratio(btc, n, 0.03 ** 2) for n in (2, 10, 100, 1000)]
    assert all(x > y for x, y in zip(dsr, dsr[1:]))  # more trials, less trust
    # SR0 approximates the expected maximum of N standard normals (scaled by the trials' Sharpe deviation)
    draws = np.random.default_rng(0).standard_normal((4000, 1000)).max(axis=1)
    assert m.expected_max_sharpe(1000, 1.0) == pytest.approx(draws.mean(), abs=0.03)
    assert m.expected_max_sharpe(1000, 0.04) == pytest.approx(0.2 * m.expected_max_sharpe(1000, 1.0))


def test_bootstrap_interval_brackets_the_estimate_and_is_reproducible(real):
    btc, _ = real
    low, high = m.bootstrap_interval(btc, "sharpe", periods_per_year=365, reps=400, seed=1)
    assert low < m.sharpe_ratio(btc, periods_per_year=365) < high and high - low > 0.3
    assert (low, high) == m.bootstrap_interval(btc, "sharpe", periods_per_year=365, reps=400, seed=1)
    r_low, r_high = m.bootstrap_interval(btc, "annualized_return", periods_per_year=365, reps=400)
    assert r_low < m.annualized_return(btc, periods_per_year=365) < r_high
