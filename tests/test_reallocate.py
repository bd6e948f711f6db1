"""Reallocation: known answers by hand, liquidity shortfalls, impact, bad input, the store flow and the command."""
import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import dump

from portopt.config import ConfigError, DataError
from portopt.reallocate import (Market, Pool, ReallocationSettings, amm_swap, ensure_demo_portfolio, plan_reallocation,
                                reallocate_portfolio, square_root_impact)
from portopt.store import SQLiteStore

PRICES = pd.Series({"SOL": 100.0, "BTC": 20_000.0, "USDC": 1.0})
MARKET = Market(prices=PRICES, adv=pd.Series({"SOL": 5e6, "BTC": 1e9}), volatility=pd.Series({"SOL": 0.05, "BTC": 0.03}))


def test_inside_the_band_no_trades():
    h = pd.Series({"SOL": 50.0, "BTC": 0.25, "USDC": 5_000.0})            # 5,000 / 5,000 / 5,000
    d = plan_reallocation(h, pd.Series({"SOL": 0.34, "BTC": 0.33, "USDC": 0.33}), MARKET)
    assert d.status == "none_needed" and d.trades.empty and d.costs["total"] == 0
    assert np.allclose(d.positions["utilization"], [1 / 3 / 0.34, 1 / 3 / 0.33, 1 / 3 / 0.33])


def test_two_assets_exact_trades_with_fees():
    # NAV 10,000 (50 SOL at 100 + 5,000 USDC); target 70 % SOL, 10 bps fees paid from the portfolio:
    # f = 0.001 (|ΔSOL| + |ΔUSDC|) with ΔSOL = 0.7 (10,000 - f) - 5,000 and ΔUSDC = 0.3 (10,000 - f) - 5,000,
    # so f = 0.001 × 0.4 × (10,000 - f), i.e. f = 4 / 1.0004
    f = 4 / 1.0004
    d = plan_reallocation(pd.Series({"SOL": 50.0, "USDC": 5_000.0}), pd.Series({"SOL": 0.7, "USDC": 0.3}),
                          Market(prices=pd.Series({"SOL": 100.0, "USDC": 1.0})), ReallocationSettings(fee_bps=10, decimals={"SOL": 9}))
    expected_units = math.floor((0.7 * (10_000 - f) - 5_000) / 100 * 1e9) / 1e9
    assert d.status == "planned" and d.trades.loc["SOL", "units"] == expected_units
    assert abs(d.trades.loc["SOL", "fee"] - expected_units * 100 * 0.001) < 1e-9
    assert abs(d.after.loc["USDC", "units"] - (5_000 - expected_units * 100 - d.trades["fee"].sum())) < 1e-9


def test_decimals_round_toward_zero_and_small_trades_are_skipped():
    d = plan_reallocation(pd.Series({"SOL": 50.0, "BTC": 0.0, "USDC": 5_000.0}), pd.Series({"SOL": 0.5, "BTC": 0.0001, "USDC": 0.4999}),
                          MARKET, ReallocationSettings(fee_bps=0, decimals={"BTC": 8}, min_trade_value=10, band=(0.99, 1.01)))
    assert "BTC" not in d.trades.index  # 1 USD of BTC is below the 10 USD minimum
    d = plan_reallocation(pd.Series({"SOL": 50.0, "USDC": 5_000.0}), pd.Series({"SOL": 0.3333333, "USDC": 0.6666667}),
                          MARKET, ReallocationSettings(fee_bps=0, decimals={"SOL": 2}))
    assert d.trades.loc["SOL", "units"] == -16.66  # -16.666667 rounded toward zero at 2 decimals


def test_sells_before_buys():
    d = plan_reallocation(pd.Series({"SOL": 100.0, "BTC": 0.0, "USDC": 0.0}), pd.Series({"SOL": 0.5, "BTC": 0.5}), MARKET,
                          ReallocationSettings(fee_bps=0))
    assert list(d.trades["side"]) == ["sell", "buy"]


def test_withdrawal_beyond_pool_liquidity_fails_with_the_shortfall():
    # the Kamino USDC reserve's known figures: 129.6 M available, 458.2 M borrowed; a 200 M withdrawal cannot be done
    kusdc = Pool(available=129.6e6, borrowed=458.2e6, curve=((0, 0), (0.9, 0.1), (1, 2.0)))
    m = Market(prices=pd.Series({"kUSDC": 1.0, "SOL": 100.0, "USDC": 1.0}), adv=pd.Series({"SOL": 1e12}),
               volatility=pd.Series({"SOL": 0.05}), pools={"kUSDC": kusdc})
    d = plan_reallocation(pd.Series({"kUSDC": 250e6, "SOL": 0.0, "USDC": 0.0}), pd.Series({"kUSDC": 0.2, "SOL": 0.8}), m,
                          ReallocationSettings(fee_bps=0))
    assert d.status == "failed_liquidity"
    assert d.trades.loc["kUSDC", "shortfall"] == pytest.approx(200e6 - 129.6e6)
    assert d.partial.loc["kUSDC", "value"] == pytest.approx(-129.6e6) and d.partial.loc["SOL", "value"] == pytest.approx(129.6e6)
    assert d.pools.loc["kUSDC", "utilization_before"] == pytest.approx(458.2 / (458.2 + 129.6))
    assert d.pools.loc["kUSDC", "utilization_after"] == 1.0 and d.pools.loc["kUSDC", "supply_rate_after"] == pytest.approx(2.0 * 0.9)
    assert "kUSDC: sell 200,000,000.00 but only 129,600,000.00 can be absorbed" in d.reason


def test_participation_limit_of_adv():
    d = plan_reallocation(pd.Series({"SOL": 0.0, "USDC": 1e6}), pd.Series({"SOL": 1.0}), MARKET, ReallocationSettings(fee_bps=0))
    assert d.status == "failed_liquidity" and d.trades.loc["SOL", "limit"] == pytest.approx(0.1 * 5e6)
    assert d.trades.loc["SOL", "shortfall"] == pytest.approx(1e6 - 5e5)


def test_square_root_impact_and_amm_by_hand():
    assert square_root_impact(250_000, 1e8, 0.04) == pytest.approx(0.04 * math.sqrt(0.0025) * 250_000)
    d = plan_reallocation(pd.Series({"SOL": 0.0, "USDC": 200_000.0}), pd.Series({"SOL": 0.5, "USDC": 0.5}), MARKET,
                          ReallocationSettings(fee_bps=0))
    assert d.trades.loc["SOL", "impact"] == pytest.approx(0.05 * math.sqrt(100_000 / 5e6) * 100_000)
    out, impact = amm_swap(1_000.0, 50_000.0, 5_000_000.0, fee=0.003)
    assert out == pytest.approx(5_000_000 * 997 / (50_000 + 997)) and impact == pytest.approx(1 - out / 1_000 / 100)


@pytest.mark.parametrize("holdings, target, words", [
    (pd.Series({"SOL": -1.0, "USDC": 10.0}), pd.Series({"SOL": 0.5, "USDC": 0.5}), "negative or not numbers"),
    (pd.Series({"SOL": 1.0, "DOGE": 10.0}), pd.Series({"SOL": 1.0}), "no price for \\['DOGE'\\]"),
    (pd.Series({"SOL": 1.0, "USDC": 10.0}), pd.Series({"SOL": 0.5, "USDC": 0.4}), "sum to 1"),
])
def test_bad_input_gets_a_clear_error(holdings, target, words):
    with pytest.raises(DataError, match=words):
        plan_reallocation(holdings, target, MARKET)


def test_stale_prices_are_refused():
    m = Market(prices=PRICES, price_time=pd.Timestamp("2024-01-01", tz="UTC"))
    with pytest.raises(DataError, match="more than the stale-data limit"):
        plan_reallocation(pd.Series({"SOL": 1.0}), pd.Series({"SOL": 1.0}), m, as_of="2024-01-05")


def test_store_flow_guards_and_paper_execution(store_path):
    with SQLiteStore(store_path) as st:
        ensure_demo_portfolio(st)
        before = dump(store_path)
        with pytest.raises(ConfigError, match="no portfolio 'ghost'"):
            reallocate_portfolio(st, "ghost")
        with pytest.raises(ConfigError, match="only 'paper' execution"):
            reallocate_portfolio(st, "demo", execute="live")
        assert dump(store_path) == before  # bad input writes nothing
        status, d, rid = reallocate_portfolio(st, "demo", as_of="2022-09-01", execute="paper")
        assert status == "executed"
        fills = pd.DataFrame(st.read_reallocations("demo").set_index("id").loc[rid, "plan"]["fills"]).set_index("asset")
        after = st.read_holdings("demo")
        assert after["SOL"] == pytest.approx(1000 + d.trades.loc["SOL", "units"])
        assert (fills["fill_price"] < d.trades["price"]).all()  # sells fill below the mid by their impact
        assert after["USDC"] == pytest.approx(60_000 - fills["cash"].sum())
        # a drawdown guard: the demo's holdings fell far from their peak by 2022-09; a 30 % limit holds the plan
        st.upsert_portfolio("guarded", settings=dict(d_settings := dict(st.read_portfolios().set_index("portfolio").loc["demo", "settings"]),
                                                     reallocation=dict(d_settings["reallocation"], drawdown_limit=0.3)))
        st.write_holdings("guarded", pd.Series({"BTC": 2.0, "ETH": 30.0, "SOL": 1000.0, "USDC": 60_000.0}), "2022-09-01")
        status, _, _ = reallocate_portfolio(st, "guarded", as_of="2022-09-01")
        assert status == "held" and st.read_alerts().loc[0, "kind"] == "drawdown"
        assert st.read_reallocations("guarded").loc[0, "status"] == "held"


def test_reallocate_says_the_settings_it_used_and_takes_overrides_for_one_run(cli, store_path):
    "The portfolio's stored settings decide; --window/--periods-per-year/--missing/--max-fill override them for one run, said and stored."
    out = cli("reallocate", "demo", "--as-of", "2022-09-01").stdout
    assert "settings: strategy risk_parity, window 180 periods, frequency: daily bars, 365 periods a year, given, missing exclude" in out
    js = json.loads(cli("reallocate", "demo", "--as-of", "2022-09-01", "--window", "90", "--missing", "ffill", "--max-fill", "2",
                        "--periods-per-year", "360", "--json").stdout)
    plan = js["plan"]
    assert plan["window"] == 90 and plan["periods_per_year"] == 360 and plan["frequency"]["inferred"] is False
    assert plan["overrides"] == {"window": 90, "periods_per_year": 360, "missing": "ffill", "max_fill": 2}
    assert plan["settings"]["window"] == 90 and plan["settings"]["missing"] == "ffill"
    # the stored settings are unchanged: the next run uses them again
    again = json.loads(cli("reallocate", "demo", "--as-of", "2022-09-01", "--json").stdout)["plan"]
    assert again["window"] == 180 and "overrides" not in again
    bad = cli("reallocate", "demo", "--missing", "bogus", check=False)
    assert bad.returncode == 1 and bad.stderr == "error: portfolio 'demo' settings: missing: use exclude, ffill or raise (got 'bogus')\n"


def test_reallocate_command_on_the_demo(cli, store_path):
    out = cli("reallocate", "demo", "--as-of", "2022-09-01").stdout
    assert out.startswith("demo: planned") and "costs: fees" in out
    js = json.loads(cli("reallocate", "demo", "--as-of", "2022-09-01", "--json").stdout)
    assert js["status"] == "planned" and abs(sum(p["weight"] for p in js["plan"]["after"]) - 1) < 1e-9
    bad = cli("reallocate", "nobody", check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("error: no portfolio 'nobody'")


# -- a user's own portfolio, from the command line only (issue 12, item 5) --------------------------------------------

def test_a_portfolio_created_from_the_cli_is_reallocated_and_the_listener_uses_the_same_window(cli, store_path, tmp_path):
    from portopt.events import Listener
    from portopt.store import ensure_dataset
    with SQLiteStore(store_path) as st:
        ensure_dataset(st)  # the bundled prices, to 2022-09-14
    cli("portfolio", "create", "treasury", "--strategy", "min_variance", "--window", "60", "--band", "0.9,1.1",
        "--assets", "BTC,ETH,USDC")
    held = tmp_path / "holdings.csv"
    held.write_text("asset,units\nBTC,0.5\nETH,4\nUSDC,2000\n")
    cli("portfolio", "holdings", "treasury", held, "--at", "2022-09-01")
    shown = json.loads(cli("portfolio", "show", "treasury", "--json").stdout)
    assert shown["holdings"] == {"BTC": 0.5, "ETH": 4.0, "USDC": 2000.0}
    assert (shown["settings"]["window"], shown["settings"]["periods_per_year"], shown["settings"]["band"]) == (60, None, [0.9, 1.1])
    # no --as-of: decided at the last bundled prices (the holdings are older), and the table says so
    assert "decided at 2022-09-14 00:00 UTC (the last stored prices; --as-of sets it)" in cli("reallocate", "treasury").stdout
    js = json.loads(cli("reallocate", "treasury", "--as-of", "2022-09-10", "--json").stdout)
    plan = js["plan"]
    # min variance over BTC, ETH and a stablecoin is almost all USDC: BTC and ETH (91 % of the value) are sold
    assert js["status"] == "planned" and plan["window"] == 60 and plan["periods_per_year"] == 365
    assert plan["target"]["weights"]["USDC"] > 0.9 and {t["asset"]: t["side"] for t in plan["trades"]} == {"BTC": "sell", "ETH": "sell"}
    # the listener rebalances the same portfolio on a new holdings snapshot with the same window and periods a year
    cli("portfolio", "holdings", "treasury", "--set", "BTC=0.5", "--set", "ETH=4", "--set", "USDC=2500", "--at", "2022-09-10")
    with SQLiteStore(store_path) as st:
        listener = Listener(st, papermill=False)
        out = [o for o in listener.handle_pending() if o.topic == "holdings"]
        listener.close()
        assert [u.status for o in out for u in o.units] == ["succeeded", "succeeded"]  # the two snapshots' events
        listened = st.read_reallocations("treasury").iloc[0]["plan"]
        opt = st.read_optimizations().iloc[0]
    assert listened["window"] == plan["window"] == opt["params"]["window"] == 60
    assert listened["periods_per_year"] == opt["params"]["periods_per_year"] == 365
    listing = json.loads(cli("portfolio", "list", "--json").stdout)
    assert [p["portfolio"] for p in listing] == ["treasury"] and listing[0]["last_decision"]["status"] == "planned"
    gone = json.loads(cli("portfolio", "delete", "treasury", "--json").stdout)
    assert gone["deleted_rows"] > 1
    with SQLiteStore(store_path) as st:  # nothing the portfolio owned survives it: a later one of that name sees nothing
        assert st.read_reallocations("treasury").empty and st.read_holdings("treasury").empty
        assert (st.read_optimizations()["portfolio"] != "treasury").all()


def test_a_portfolio_reading_two_sources_in_precedence_order(cli, store_path):
    """--source binance,coingecko: SOL from a real Binance file, USDC from a real CoinGecko export. Before, the
    setting was read as one source named 'binance,coingecko' and the plan was held for 'no prices stored'."""
    from conftest import FIXTURES
    cli("import", FIXTURES / "exchange-klines" / "fred3105-Modeling-Crypto-Pricees" / "SOLUSDT.csv")   # 2020-08 to 2023-06
    cli("import", FIXTURES / "usdc-usd-max.csv")   # to 2022-09-14
    cli("portfolio", "create", "t", "--strategy", "min_variance", "--window", "60", "--assets", "SOL,USDC",
        "--source", "binance, coingecko")
    cli("portfolio", "holdings", "t", "--set", "SOL=100", "--set", "USDC=100", "--at", "2022-09-01")
    js = json.loads(cli("reallocate", "t", "--as-of", "2022-09-14", "--json").stdout)
    assert js["status"] == "planned", js
    plan = js["plan"]
    assert plan["settings"]["source"] == "binance,coingecko"
    with SQLiteStore(store_path) as st:
        sol = st.read_prices(["SOL"], source="binance", as_of="2022-09-14")["SOL"].iloc[-1]
    prices = {p["asset"]: p["price"] for p in plan["positions"]}
    assert prices["SOL"] == pytest.approx(sol) and prices["USDC"] == pytest.approx(1.0, abs=0.01)
    assert plan["sources"] == {"SOL": "binance", "USDC": "coingecko"}   # where each price came from, said
    assert plan["target"]["weights"]["USDC"] > 0.9   # min variance over SOL and a stablecoin


@pytest.mark.parametrize("args, words", [
    (("create", "p", "--strategy", "min_variance", "--periods-per-year", "0"), "periods_per_year: Input should be greater than 0"),
    (("create", "p", "--strategy", "min_variance", "--window", "1"), "window: Input should be greater than or equal to 2"),
    (("create", "p", "--strategy", "min_variance", "--band", "1.0,1.05"), "0 < low < 1 < high"),
    (("create", "p", "--strategy", "min_variance", "--band", "0.9"), "give two numbers"),
    (("create", "p", "--strategy", "nope"), "--strategy 'nope': unknown"),
    (("create", "p", "--strategy", "hrp", "--assets", "BTC,BTC"), "listed more than once"),
    (("create", "p", "--strategy", "hrp", "--source", "binance,,bybit"), "a source name is empty"),
    (("holdings", "ghost", "--set", "SOL=1"), "no portfolio 'ghost'"),
    (("holdings", "demo2", "--set", "SOL=1"), "no portfolio 'demo2'"),
    (("delete", "ghost"), "no portfolio 'ghost'"),
])
def test_bad_portfolio_commands_get_one_error_line_and_write_nothing(cli, store_path, args, words):
    cli("portfolio", "list")  # creates the empty store
    before = dump(store_path)
    proc = cli("portfolio", *args, check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and words in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert dump(store_path) == before


def test_bad_holdings_are_refused(cli, store_path, tmp_path):
    cli("portfolio", "create", "p", "--strategy", "hrp")
    before = dump(store_path)
    for body, words in (("asset,units\nSOL,1\nSOL,2\n", "more than once"), ("asset,units\nSOL,-1\n", "negative units"),
                        ("asset,amount\nSOL,1\n", "needs the columns asset,units"), ("asset,units\nSOL,abc\n", "not finite")):
        f = tmp_path / "h.csv"
        f.write_text(body)
        proc = cli("portfolio", "holdings", "p", f, check=False)
        assert proc.returncode == 1 and words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    proc = cli("portfolio", "holdings", "p", "--set", "SOL", check=False)
    assert proc.returncode == 1 and "give ASSET=UNITS" in proc.stderr
    assert dump(store_path) == before


def test_a_held_asset_without_a_recent_price_holds_the_plan_never_a_silent_zero_target(store_path):
    days = pd.date_range("2024-01-01", periods=200, freq="D", tz="UTC")
    rng = np.random.default_rng(1)
    sol = 100 * np.exp(np.cumsum(rng.normal(0, 0.03, len(days))))
    with SQLiteStore(store_path) as st:
        # USDC's last price is 10 days before SOL's: the finding of issue 12 (a silent 0 % target for USDC)
        st.write_prices(pd.DataFrame({"timestamp": list(days) + list(days[:-10]), "asset": ["SOL"] * 200 + ["USDC"] * 190,
                                      "close": list(sol) + [1.0] * 190}), "test")
        st.upsert_portfolio("p", settings={"strategy": "min_variance", "window": 60, "assets": ["SOL", "USDC"]})
        st.write_holdings("p", pd.Series({"SOL": 10.0, "USDC": 1000.0}), days[0])
        status, decision, rid = reallocate_portfolio(st, "p", as_of=days[-1])
        plan = st.read_reallocations("p").set_index("id").loc[rid, "plan"]
        assert status == "held" and decision is None
        assert "the last price of USDC is from 2024-07-08 00:00 (10 days old)" in plan["reason"], plan["reason"]
        assert "SOL" not in plan["reason"].split("older than")[0]  # SOL is fresh
        assert st.read_alerts().loc[0, "kind"] == "stale_data"
        # an asset with no price at all: held, naming it
        st.upsert_portfolio("q", settings={"strategy": "min_variance", "window": 60})
        st.write_holdings("q", pd.Series({"SOL": 10.0, "DOGE": 5.0}), days[0])
        status, _, rid = reallocate_portfolio(st, "q", as_of=days[-1])
        assert status == "held" and "no price stored for ['DOGE']" in st.read_reallocations("q").set_index("id").loc[rid, "plan"]["reason"]
        # a longer stale limit accepts USDC's age, and the plan goes through
        st.upsert_portfolio("p", settings={"strategy": "min_variance", "window": 60, "assets": ["SOL", "USDC"], "stale_after_hours": 24 * 11})
        status, decision, _ = reallocate_portfolio(st, "p", as_of=days[-1])
        assert status in ("planned", "none_needed")
        # holdings written a month after the last stored prices, no as_of: the decision falls at the holdings' time,
        # so a plan is never made for today's holdings at month-old prices without a word (it was, before)
        st.upsert_portfolio("r", settings={"strategy": "min_variance", "window": 60, "assets": ["SOL"]})
        st.write_holdings("r", pd.Series({"SOL": 10.0}), days[-1] + pd.Timedelta(days=30))
        status, _, rid = reallocate_portfolio(st, "r")
        plan = st.read_reallocations("r").set_index("id").loc[rid, "plan"]
        assert status == "held" and "SOL is from 2024-07-18 00:00 (30 days old)" in plan["reason"], plan["reason"]
        assert plan["decided_at"] == {"at": "2024-08-17T00:00:00+00:00", "basis": "the holdings snapshot's time, after the last stored prices"}
        # holdings older than the prices (the demo's case): decided at the last stored prices, as before
        st.upsert_portfolio("s", settings={"strategy": "min_variance", "window": 60, "assets": ["SOL"]})
        st.write_holdings("s", pd.Series({"SOL": 10.0}), days[0])
        status, _, rid = reallocate_portfolio(st, "s")
        plan = st.read_reallocations("s").set_index("id").loc[rid, "plan"]
        assert status in ("planned", "none_needed") and plan["decided_at"] == {"at": "2024-07-18T00:00:00+00:00", "basis": "the last stored prices"}


def test_liquidity_without_volumes_is_said_not_checked():
    m = Market(prices=pd.Series({"SOL": 100.0, "USDC": 1.0}))  # no ADV, no pool
    d = plan_reallocation(pd.Series({"SOL": 0.0, "USDC": 1e6}), pd.Series({"SOL": 0.5, "USDC": 0.5}), m)
    assert d.status == "planned" and d.trades.loc["SOL", "impact"] == 0
    assert d.notes == ["liquidity not checked: no volumes for ['SOL'] (no participation limit, impact not estimated: 0)"]
    assert d.to_dict()["notes"] == d.notes
    assert plan_reallocation(pd.Series({"SOL": 0.0, "USDC": 1e6}), pd.Series({"SOL": 0.5, "USDC": 0.5}), MARKET).notes == []
