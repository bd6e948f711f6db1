"""The Solana collector: decoders checked on real mainnet account dumps with known answers, and whole runs of
solana-py's AsyncClient against a local JSON-RPC server replaying recorded answers (tests/fixtures/solana-*)."""
import base64
import json
import pandas as pd
import pytest

from conftest import FIXTURES, dump
from portopt.collect.market import CollectError, run_sync
from portopt.testing import LocalServer, solana_replay
from portopt.collect.solana import (KLEND_PROGRAM, MARGINFI_PROGRAM, TOKEN_PROGRAM, SolanaConfig, Wallet, account_data, check_owner,
                                    collect_solana, decode_kamino_reserve, decode_marginfi_bank, decode_price_update_v2,
                                    decode_pyth_price, load_collect_config, read_account_dump, run_collect_job)
from portopt.config import ConfigError, DataError
from portopt.store import SQLiteStore

ACC = FIXTURES / "solana-accounts"
RPC = FIXTURES / "solana-rpc"
RESERVE = "D6q6wuQSrifJKZYpR1M8R4YawnLDtDsMmWM1NbBmgJ59"
JITOSOL_BANK, USDT_BANK = "Bohoc1ikHLD7xKJuzTyiTyCwzaL5N7ggJQu75A8mKYM8", "HmpMfL8942u22htC4EMiWgLX931g3sacXFR6KjuLgKLV"
BONK_BANK = "DeyH7QxWvnbbaVB4zFrf4hoq7Q8z1ZT14co42BGwGtfM"
SOL_PULL = "7UVimffxr9ow1uXYxsr4LHAcV58mLzhmwaeKvJ1pjLiE"
WALLET = "9we6kjtbcZ2vy3GSLLsZTEhbAqXPTRvEyoxa8wxSqKp5"
USDC = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"


def data(name):
    address, account = read_account_dump(ACC / name)
    return address, account, account_data(account)


# -- decoders: known answers ---------------------------------------------------------------------------

def test_kamino_usdc_reserve_known_answer():
    address, account, raw = data("kamino/kamino_usdc_reserve.json")
    check_owner(account["owner"], KLEND_PROGRAM, address, "Kamino Reserve")
    r = decode_kamino_reserve(raw, address)
    assert r.mint == USDC and r.decimals == 6
    assert r.available == pytest.approx(129.6e6, rel=1e-3) and r.borrowed == pytest.approx(458.2e6, rel=1e-3)
    assert r.utilization == pytest.approx(0.779, abs=1e-3)
    assert r.timestamp.strftime("%Y-%m-%d") == "2025-11-03"
    # the rate curve of the reserve: 0 % -> 0, 95 % -> 4.75 %, 100 % -> 30 % APR; 10 % protocol take rate
    assert (r.curve["curve_1_utilization"], r.curve["curve_1_borrow_rate"], r.curve["curve_2_borrow_rate"]) == (0.95, 0.0475, 0.3)
    assert r.borrow_apr == pytest.approx(r.utilization / 0.95 * 0.0475)
    assert r.supply_apr == pytest.approx(r.borrow_apr * r.utilization * 0.9)
    assert r.supply_apy > r.supply_apr


def test_legacy_pyth_sol_usd_known_answer():
    address, _, raw = data("owner_rewritten/sol_pyth_oracle.json")      # owner rewritten upstream: decode, no owner check
    p = decode_pyth_price(raw, address)
    assert round(p.price, 2) == 119.23 and p.publish_time == pd.Timestamp("2024-11-02 08:07:40", tz="UTC")
    assert p.confidence == pytest.approx(0.16676631) and p.kind == "pyth-legacy"


def test_pyth_price_update_v2():
    address, account, raw = data("owner_rewritten/sol_pyth_price_feed.json")
    p = decode_price_update_v2(raw, address)
    assert p.price == pytest.approx(215.68137069) and p.confidence == pytest.approx(0.20134469)
    assert p.publish_time == pd.Timestamp("2025-01-04 09:48:07", tz="UTC") and p.current and p.slot == 311798332
    assert p.feed_id == "ef0d8b6fda2ceba41da15d4095d1da392a0d2f8ed0c6c7bc0f4cfac8c280b56d"   # Pyth's SOL/USD feed id


@pytest.mark.parametrize("name, mint, decimals, deposits, borrowed", [
    ("marginfi_bank/bank_sample_1.json", "J1toso1uCk3RLmjorhTtrVwY9HJ7X8V9yYac6Y7kGCPn", 9, 998_926.68, 80_351.89),
    ("marginfi_bank/bank_sample_3.json", "Es9vMFrzaCERmJfrF4H2FYD4KCoNkY11McCe8BenwNYB", 6, 45_955_120.91, 35_991_620.60),
    ("marginfi_bank/bank_pyusd_230822.json", "2b1kV6DkPAnxd5ixfnxCpjxmKwqjjaYmCZfHsFu24GXo", 6, 40_000_000.00, 2_000_423.11),
    ("owner_rewritten/bonk_bank.json", "DezXAZ8z7PnrnRJjz3wXBoRgixCa6xjnB7YaB1pPB263", 5, 868_838_403_951.49, 10_218_110_195.80),
])
def test_marginfi_banks_decode(name, mint, decimals, deposits, borrowed):
    address, account, raw = data(name)
    b = decode_marginfi_bank(raw, address)
    assert (b.mint, b.decimals) == (mint, decimals)
    assert b.deposits == pytest.approx(deposits, abs=0.01) and b.borrowed == pytest.approx(borrowed, abs=0.01)
    assert b.available == pytest.approx(deposits - borrowed, abs=0.02)
    assert b.utilization == pytest.approx(borrowed / deposits, rel=1e-6)
    opt, plateau = b.curve["optimal_utilization"], b.curve["plateau_rate"]
    base = b.utilization / opt * plateau                                   # all four are below the optimal utilization
    assert b.supply_apr == pytest.approx(base * b.utilization)
    assert b.borrow_apr == pytest.approx(base * (1 + b.curve["insurance_ir_fee"] + b.curve["protocol_ir_fee"])
                                         + b.curve["insurance_fee_fixed_apr"] + b.curve["protocol_fixed_fee_apr"])


def test_usdt_bank_rate_curve_values():
    b = decode_marginfi_bank(data("marginfi_bank/bank_sample_3.json")[2])
    assert (b.curve["optimal_utilization"], b.curve["plateau_rate"], b.curve["max_rate"]) == pytest.approx((0.8, 0.2, 4.0))
    assert b.timestamp == pd.Timestamp("2024-03-29 07:39:00", tz="UTC")


def test_truncated_and_foreign_data_are_refused():
    _, _, reserve = data("kamino/kamino_usdc_reserve.json")
    _, _, bank = data("marginfi_bank/bank_sample_1.json")
    with pytest.raises(DataError, match=r"Kamino Reserve X: account data is 4000 bytes, the layout needs 8624 \(truncated"):
        decode_kamino_reserve(reserve[:4000], "X")
    with pytest.raises(DataError, match="discriminator"):
        decode_kamino_reserve(bank + bytes(8624 - len(bank)), "X")
    with pytest.raises(DataError, match="1000 bytes"):
        decode_marginfi_bank(bank[:1000], "X")
    with pytest.raises(DataError, match="truncated"):
        decode_pyth_price(data("owner_rewritten/sol_pyth_oracle.json")[2][:100], "X")
    with pytest.raises(DataError, match="magic"):
        decode_pyth_price(reserve, "X")
    with pytest.raises(DataError, match="PriceUpdateV2"):
        decode_price_update_v2(data("owner_rewritten/sol_pyth_price_feed.json")[2][:90], "X")


def test_owner_check_names_both_programs():
    address, account, _ = data("owner_rewritten/bonk_bank.json")
    with pytest.raises(DataError, match=f"owned by program {account['owner']}, expected {MARGINFI_PROGRAM}"):
        check_owner(account["owner"], MARGINFI_PROGRAM, address, "marginfi Bank")


# -- whole runs against a local JSON-RPC server ---------------------------------------------------------

def recorded(name):
    return json.loads((RPC / name).read_text(encoding="utf-8-sig"))


@pytest.fixture
def dumps():
    out = {}
    for name in ["kamino/kamino_usdc_reserve.json", "marginfi_bank/bank_sample_1.json", "marginfi_bank/bank_sample_3.json",
                 "owner_rewritten/sol_pyth_price_feed.json", "owner_rewritten/sol_pyth_oracle.json", "owner_rewritten/bonk_bank.json"]:
        address, account = read_account_dump(ACC / name)
        out[address] = account
    return out


@pytest.fixture
def answers():
    return {"getBalance": recorded("GetBalanceResponse.json"), "getTokenSupply": recorded("Token/GetTokenSupplyResponse.json"),
            ("getTokenAccountsByOwner", WALLET, TOKEN_PROGRAM): recorded("Token/GetTokenAccountsByOwnerResponse.json"),
            "getTokenAccountsByOwner": {"jsonrpc": "2.0", "result": {"context": {"slot": 79200468}, "value": []}}}


@pytest.fixture
def node(dumps, answers):
    with LocalServer(solana_replay(dumps, answers, slot=377_723_091), stall=3.0) as s:
        yield s


@pytest.fixture
def store(store_path):
    with SQLiteStore(store_path) as s:
        yield s


def config(node, **kw):
    base = dict(rpc_url=node.url, kamino_reserves=(RESERVE,), marginfi_banks=(JITOSOL_BANK, USDT_BANK),
                pyth_pull={"SOL": SOL_PULL}, wallets=(Wallet("treasury", WALLET),), token_supplies=(USDC,),
                backoff=0.01, timeout=1.0, max_attempts=4)
    return SolanaConfig(**{**base, **kw})


def run(store, cfg, now="2026-01-01"):
    return run_sync(collect_solana(store, cfg, now=now))


def test_a_run_fills_the_store_and_a_second_adds_nothing(node, store):
    first = run(store, config(node))
    m = store.read_market_metrics()
    kamino = m[m["source"] == f"kamino:{RESERVE}"].set_index("metric")["value"]
    assert kamino["utilization"] == pytest.approx(0.779, abs=1e-3) and kamino["available_liquidity"] == pytest.approx(129.6e6, rel=1e-3)
    assert set(m.loc[m["source"].str.startswith("marginfi:"), "asset"]) == {"JITOSOL", "USDT"}
    assert store.read_prices(["SOL"], source="pyth")["SOL"].iloc[0] == pytest.approx(215.68137069)
    conf = m[(m["source"] == "pyth") & (m["metric"] == "price_confidence")]["value"]
    assert conf.tolist() == pytest.approx([0.20134469])
    h = store.read_holdings("treasury")
    assert h["SOL"] == 168.855 and h.drop("SOL").tolist() == [10.0] * 7     # 7 Solnet test mints, 1000 units of 2 decimals
    assert store.read_portfolios().set_index("portfolio").loc["treasury", "wallet"] == WALLET
    supply = m[m["metric"] == "total_supply"].set_index("asset")["value"]
    assert supply["USDC"] == 10.0                                              # the recorded answer: amount 1000, 2 decimals
    before = dump(store.path)
    again = run(store, config(node), now="2026-01-02")
    assert first.inserted > 0 and (again.inserted, again.updated) == (0, 0) and dump(store.path) == before


def test_changed_holdings_make_a_new_snapshot(node, store, answers):
    run(store, config(node))
    changed = json.loads(json.dumps(answers["getBalance"]))
    changed["result"]["value"] = 200_000_000_000                        # one number changed: 200 SOL
    answers["getBalance"] = changed
    report = run(store, config(node), now="2026-01-02")
    assert store.read_holdings("treasury")["SOL"] == 200.0
    assert store.read_holdings("treasury", as_of="2026-01-01T12:00")["SOL"] == 168.855
    assert [b["inserted"] for b in report.batches if b["what"] == "holdings"] == [8]


def test_legacy_price_that_pyth_does_not_flag_as_trading_is_skipped(node, store):
    report = run(store, config(node, pyth_pull={}, pyth_legacy={"SOL": "H6ARHf6YXhGYeQfUzQNGk6rDNnLBQKrenN712K4AQJEG"},
                               check_owner=False))
    assert "pyth" not in set(store.price_coverage()["source"]) and "not current" in report.skipped[0]


def test_a_portfolio_tied_to_another_wallet_is_refused_before_anything_is_read(node, store):
    store.upsert_portfolio("treasury", owner="alice", wallet="hoakwpFB8UoLnPpLC56gsjpY7XbVwaCuRQRMQzN5TVh")
    before = dump(store.path)
    with pytest.raises(ConfigError, match="portfolio 'treasury' is tied to wallet hoakwp"):
        run(store, config(node))
    assert node.log == [] and dump(store.path) == before


def test_a_portfolio_without_wallet_keeps_its_settings_when_tied(node, store):
    store.upsert_portfolio("treasury", owner="alice", settings={"band": [0.95, 1.05]})
    run(store, config(node))
    row = store.read_portfolios().set_index("portfolio").loc["treasury"]
    assert (row["owner"], row["wallet"], row["settings"]) == ("alice", WALLET, {"band": [0.95, 1.05]})


@pytest.mark.parametrize("faults", [["429"], ["500"], ["timeout"], ["429", "503", "timeout"]])
def test_transient_rpc_failures_are_retried(node, store, faults):
    node.faults.extend(faults)
    report = run(store, config(node))
    assert report.retries == len(faults) and report.inserted > 0


def assert_fails_and_store_unchanged(store, cfg, error, match):
    before = dump(store.path)
    with pytest.raises(error, match=match):
        run(store, cfg)
    assert dump(store.path) == before


def test_failure_after_every_retry(node, store):
    node.faults.extend(["503"] * 4)
    assert_fails_and_store_unchanged(store, config(node), CollectError, r"getMultipleAccounts at .*: HTTP 503 after 4 attempts")


def test_account_owned_by_the_wrong_program(node, store):
    cfg = config(node, marginfi_banks=(JITOSOL_BANK, BONK_BANK))     # the BONK dump's owner was rewritten upstream
    assert_fails_and_store_unchanged(store, cfg, DataError, f"marginfi Bank {BONK_BANK}: owned by program 2jGhuVUuy3")


def test_truncated_account_data(node, store, dumps):
    account = dict(dumps[RESERVE])
    account["data"] = [base64.b64encode(account_data(dumps[RESERVE])[:2000]).decode(), "base64"]
    dumps[RESERVE] = account
    assert_fails_and_store_unchanged(store, config(node), DataError, "Kamino Reserve .*2000 bytes.*truncated")


def test_missing_account(node, store):
    assert_fails_and_store_unchanged(store, config(node, kamino_reserves=(WALLET,)), DataError, f"no account at {WALLET}")


def test_rpc_error_object(node, store, answers):
    answers["getTokenSupply"] = {"jsonrpc": "2.0", "error": {"code": -32602, "message": "Invalid param: not a Token mint"}}
    assert_fails_and_store_unchanged(store, config(node), CollectError, "getTokenSupply: the node answered with RPC error -32602: Invalid param")


def test_malformed_json(node, store):
    node.faults.append("malformed")
    assert_fails_and_store_unchanged(store, config(node), DataError, "getMultipleAccounts: the answer is not valid JSON")


def test_answer_with_a_byte_order_mark(node, store, answers):
    answers["getBalance"] = (RPC / "Batch/SampleBatchResponse.json").read_bytes()   # recorded with a UTF-8 BOM
    assert_fails_and_store_unchanged(store, config(node), DataError, "getBalance: .*byte-order mark")


def test_rounded_rent_epoch_is_named(store, dumps):
    raw = json.dumps({"jsonrpc": "2.0", "id": 0, "result": {"context": {"slot": 1}, "value": [dumps[RESERVE]]}})
    rounded = raw.replace("18446744073709551615", "18446744073709552000")   # what a float64 JSON writer makes of it
    assert rounded != raw
    with LocalServer(lambda *request: (200, {}, rounded.encode())) as bad:
        cfg = SolanaConfig(rpc_url=bad.url, kamino_reserves=(RESERVE,), backoff=0.01)
        assert_fails_and_store_unchanged(store, cfg, DataError, r"result\.value\[0\]\.rentEpoch` is 18446744073709552000")


def test_missing_context_is_named(node, store, answers):
    answers["getTokenSupply"] = {"jsonrpc": "2.0", "result": {"value": {"amount": "1000", "decimals": 2}}}
    assert_fails_and_store_unchanged(store, config(node), DataError, r"getTokenSupply: `result.context` is missing")


def test_string_number_is_named(node, store, answers):
    answers["getBalance"] = {"jsonrpc": "2.0", "result": {"context": {"slot": "79274779"}, "value": 1}}
    assert_fails_and_store_unchanged(store, config(node), DataError, r"`result.context.slot` is '79274779', not an integer")


# -- config and jobs ------------------------------------------------------------------------------------

def test_config_file_and_environment(tmp_path):
    f = tmp_path / "collect.toml"
    f.write_text(f"""
[market]
start = "2024-01-01"
coins = [{{id = "solana", asset = "SOL", mint = "So11111111111111111111111111111111111111112", decimals = 9}}]
[solana]
kamino_reserves = ["{RESERVE}"]
wallets = [{{portfolio = "treasury", address = "{WALLET}"}}]
pyth_pull = {{SOL = "{SOL_PULL}"}}
""")
    market, solana = load_collect_config(f, env={"COINGECKO_API_KEY": "k", "SOLANA_RPC_URL": "http://127.0.0.1:1"})
    assert market.api_key == "k" and market.start == "2024-01-01" and [c.asset for c in market.coins] == ["SOL"]
    assert solana.rpc_url == "http://127.0.0.1:1" and solana.wallets == (Wallet("treasury", WALLET),)
    assert solana.coins == market.coins and solana.pyth_pull == {"SOL": SOL_PULL}
    f.write_text('[solana]\nkamino_reserve = ["x"]\n')
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['kamino_reserve'\]"):
        load_collect_config(f, env={})
    f.write_text('[solana]\nkamino_reserves = ["not-an-address"]\n')
    with pytest.raises(ConfigError, match="'not-an-address' is not a Solana address"):
        load_collect_config(f, env={})


def test_jobs_record_their_runs(node, store, tmp_path, monkeypatch):
    f = tmp_path / "collect.toml"
    f.write_text(f'[solana]\nrpc_url = "{node.url}"\nbackoff = 0.01\nkamino_reserves = ["{RESERVE}"]\n')
    report = run_collect_job("collect-solana", store, f, trigger="schedule")
    node.faults.extend(["500"] * 5)
    with pytest.raises(CollectError):
        run_collect_job("collect-solana", store, f, trigger="schedule")
    runs = store.read_runs().set_index("id")
    assert runs.loc[report.run_id, "status"] == "succeeded" and set(runs["trigger"]) == {"schedule"}
    assert sorted(runs["status"]) == ["failed", "succeeded"]
    with pytest.raises(ConfigError, match="unknown job"):
        run_collect_job("collect-everything", store)
    (tmp_path / "empty.toml").write_text("[solana]\n")
    with pytest.raises(ConfigError, match="collect-solana: nothing to read .*kamino_reserves"):
        run_collect_job("collect-solana", store, tmp_path / "empty.toml")
    assert len(store.read_runs()) == 2                                   # a refused job is not a run


def test_the_command_collects_and_explains(node, cli, tmp_path, store_path):
    f = tmp_path / "collect.toml"
    f.write_text(f'[solana]\nrpc_url = "{node.url}"\nbackoff = 0.01\nmarginfi_banks = ["{USDT_BANK}"]\n')
    out = cli("collect", "solana", "--config", f, "--quiet").stdout
    assert f"marginfi:{USDT_BANK}" in out and "collect-solana: 1 batch(es)" in out
    with SQLiteStore(store_path) as st:
        assert st.read_market_metrics(metrics=["utilization"])["value"].tolist() == pytest.approx([0.78319], abs=1e-5)
    bad = cli("collect", "solana", "--config", tmp_path / "nope.toml", check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("error:") and "no such config file" in bad.stderr
    assert "--config" in cli("collect", "market", "--help").stdout
