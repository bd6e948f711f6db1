"""The CoinGecko collector against a local replay of real CoinGecko data (tests/fixtures/coingecko-api):
incremental runs, chunking, retries on 429/5xx/timeouts, and bad answers that leave the store unchanged."""
import json

import pandas as pd
import pytest

from conftest import FIXTURES, dump
from portopt.collect.market import Coin, CollectError, MarketConfig, chart_frame, collect_market, day_chunks, run_sync
from portopt.testing import LocalServer, coingecko_replay
from portopt.config import ConfigError, DataError
from portopt.store import SQLiteStore

CG = FIXTURES / "coingecko-api"
COINS = (Coin("solana", "SOL"), Coin("usd-coin", "USDC"))


@pytest.fixture
def charts():
    return {c: json.loads((CG / f"market_chart_{c}.json").read_text()) for c in ("solana", "usd-coin")}


@pytest.fixture
def server(charts):
    spot = json.loads((CG / "simple_price.json").read_text())
    with LocalServer(coingecko_replay(charts, spot), stall=3.0) as s:
        yield s


@pytest.fixture
def store(store_path):
    with SQLiteStore(store_path) as s:
        yield s


def config(server, **kw):
    base = dict(coins=COINS, base_url=server.url + "/api/v3", start="2022-06-01", end="2022-06-30", chunk_days=10,
                backoff=0.01, timeout=1.0, requests_per_minute=60_000, max_attempts=4, spot=False)
    return MarketConfig(**{**base, **kw})


def history_requests(server):
    return [r for r in server.log if r["path"].endswith("market_chart/range")]


def test_day_chunks_cover_the_days_exactly_once():
    chunks = day_chunks("2022-01-01", "2022-01-25", 10)
    day = 86_400
    start = int(pd.Timestamp("2022-01-01", tz="UTC").timestamp())
    assert chunks == [(start, start + 10 * day - 1), (start + 10 * day, start + 20 * day - 1), (start + 20 * day, start + 25 * day - 1)]
    assert day_chunks("2022-01-02", "2022-01-01", 10) == []


def test_first_run_fills_the_store_with_the_exported_values(server, store):
    report = run_sync(collect_market(store, config(server)))
    assert report.inserted == 60 and report.requests == 6 and report.retries == 0    # 30 days x 2 coins, 3 chunks each
    wide = store.read_prices(source="coingecko")
    assert list(wide.index[[0, -1]]) == [pd.Timestamp("2022-06-01", tz="UTC"), pd.Timestamp("2022-06-30", tz="UTC")]
    export = pd.read_csv(FIXTURES / "sol-usd-max.csv", index_col=0)
    assert wide.loc["2022-06-15", "SOL"] == pytest.approx(export.loc["2022-06-15 00:00:00 UTC", "price"], rel=1e-12)
    caps = store.read_prices(["SOL"], source="coingecko", field="market_cap")["SOL"]
    assert caps["2022-06-15"] == pytest.approx(export.loc["2022-06-15 00:00:00 UTC", "market_cap"], rel=1e-12)


def test_second_run_fetches_only_newer_days_and_adds_nothing_when_up_to_date(server, store):
    run_sync(collect_market(store, config(server)))
    before = dump(store.path)
    n = len(server.log)
    again = run_sync(collect_market(store, config(server)))
    assert again.requests == 0 and again.inserted == 0 and len(server.log) == n and dump(store.path) == before
    later = run_sync(collect_market(store, config(server, end="2022-07-03")))
    asked = history_requests(server)[n:]
    assert later.inserted == 6 and len(asked) == 2
    assert {int(r["query"]["from"][0]) for r in asked} == {int(pd.Timestamp("2022-07-01", tz="UTC").timestamp())}


def test_api_key_goes_in_the_header_of_its_plan(server, store):
    run_sync(collect_market(store, config(server, api_key="demo-key", end="2022-06-05")))
    run_sync(collect_market(store, config(server, api_key="pro-key", plan="pro", end="2022-06-07")))
    headers = [{k.lower(): v for k, v in r["headers"].items()} for r in server.log]
    assert headers[0]["x-cg-demo-api-key"] == "demo-key" and "x-cg-pro-api-key" not in headers[0]
    assert headers[-1]["x-cg-pro-api-key"] == "pro-key"


@pytest.mark.parametrize("faults", [["429"], ["500", "503"], ["timeout"], ["429", "timeout", "500"]])
def test_transient_failures_are_retried_then_succeed(server, store, faults):
    server.faults.extend(faults)
    report = run_sync(collect_market(store, config(server, end="2022-06-05")))
    assert report.retries == len(faults) and report.inserted == 10 and not server.faults


def test_a_failure_that_persists_is_a_collect_error_and_writes_nothing(server, store):
    server.faults.extend(["500"] * 4)
    before = dump(store.path)
    with pytest.raises(CollectError, match=r"market_chart/range: HTTP 500 .* after 4 attempts"):
        run_sync(collect_market(store, config(server)))
    assert dump(store.path) == before


def test_a_timeout_on_every_attempt_is_a_collect_error(server, store):
    server.faults.extend(["timeout"] * 2)
    with pytest.raises(CollectError, match="timed out"):
        run_sync(collect_market(store, config(server, max_attempts=2)))
    assert store.price_coverage().empty


def test_malformed_json_is_a_data_error_not_retried(server, store):
    server.faults.append("malformed")
    before = dump(store.path)
    with pytest.raises(DataError, match="not valid JSON"):
        run_sync(collect_market(store, config(server)))
    assert len(server.log) == 1 and dump(store.path) == before


def test_a_failed_chunk_keeps_the_whole_chunks_before_it_and_the_next_run_resumes(server, store):
    good = server.handler

    def second_answer_cut(*request):
        return (200, {}, b'{"prices": [[1654819200000, 31.') if len(server.log) == 2 else good(*request)
    server.handler = second_answer_cut
    with pytest.raises(DataError):
        run_sync(collect_market(store, config(server, coins=COINS[:1])))
    assert store.price_coverage()["last"].tolist() == ["2022-06-10T00:00:00Z"]       # the first chunk, whole
    server.handler = good
    n = len(server.log)
    report = run_sync(collect_market(store, config(server, coins=COINS[:1])))
    assert report.inserted == 20 and int(server.log[n]["query"]["from"][0]) == int(pd.Timestamp("2022-06-11", tz="UTC").timestamp())


@pytest.mark.parametrize("payload, message", [
    ({"prices": [[1654041600000, "31.2"]], "market_caps": [], "total_volumes": []}, r"prices\[0\]\[1\]: Input should be a valid number"),
    ({"prices": [[1654041600000, 31.2]], "market_caps": []}, r"total_volumes: Field required"),
    ({"prices": [[1654041600000, -1.0]], "market_caps": [], "total_volumes": []}, r"non-positive|positive"),
    ({"prices": [[1654041600.5, 31.2]], "market_caps": [], "total_volumes": []}, r"prices\[0\]\[0\]"),
    ({"prices": [], "market_caps": [[1654041600000, 5.0]], "total_volumes": []}, r"no price at 2022-06-01"),
])
def test_bad_answers_name_the_field(payload, message):
    with pytest.raises(DataError, match=message):
        chart_frame(payload, "SOL", "CoinGecko coins/solana/market_chart/range")


def test_spot_prices_are_stamped_at_last_updated_and_idempotent(server, store):
    cfg = config(server, end="2022-06-02", spot=True)
    first = run_sync(collect_market(store, cfg))
    spot = store.read_prices(source="coingecko-spot")
    assert spot.index.tolist() == [pd.Timestamp("2022-09-14", tz="UTC")] and spot.loc["2022-09-14", "SOL"] == pytest.approx(33.05973266575832)
    assert first.inserted == 4 + 2 and run_sync(collect_market(store, cfg)).inserted == 0


def test_unknown_coin_and_bad_settings_are_clear(server, store):
    with pytest.raises(CollectError, match=r"HTTP 404 .*not retryable.*coin id"):
        run_sync(collect_market(store, config(server, coins=(Coin("no-such-coin", "NOPE"),))))
    with pytest.raises(ConfigError, match="plan"):
        MarketConfig(plan="gold")


def test_the_job_and_the_command_use_the_config_file_and_the_environment(server, cli, store_path, tmp_path, monkeypatch):
    from portopt.collect.solana import run_collect_job
    f = tmp_path / "collect.toml"
    f.write_text('[market]\nstart = "2022-06-01"\nend = "2022-06-03"\nbackoff = 0.01\nspot = false\n'
                 'coins = [{id = "solana", asset = "SOL"}]\n')
    monkeypatch.setenv("PORTOPT_COINGECKO_URL", server.url + "/api/v3")
    monkeypatch.setenv("COINGECKO_API_KEY", "from-the-environment")
    with SQLiteStore(store_path) as st:
        report = run_collect_job("collect-market", st, f, trigger="schedule")
        assert report.inserted == 3 and st.read_runs()["status"].tolist() == ["succeeded"]
    assert server.log[-1]["headers"].get("x-cg-demo-api-key") == "from-the-environment"
    f.write_text(f.read_text().replace('end = "2022-06-03"', 'end = "2022-06-05"'))
    out = cli("collect", "market", "--config", f, "--quiet").stdout
    assert "collect-market: 1 batch(es): 2 new row(s)" in out
    with SQLiteStore(store_path) as st:
        assert st.read_prices(["SOL"], source="coingecko").index[-1] == pd.Timestamp("2022-06-05", tz="UTC")
        assert st.read_runs()["trigger"].tolist() == ["cli", "schedule"]
