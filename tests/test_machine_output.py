"""Machine output and usage errors (issue 12 item 6): `--json` is JSON only, solver banners go to the log,
a usage error is one `error:` line plus the usage hint with exit status 2 and no traceback."""
import json

import pytest


@pytest.mark.parametrize("args, names", [
    (("--bogus",), "No such option: --bogus"),
    (("import",), "Missing argument"),
    (("optimize", "--window", "abc"), "Invalid value for '--window'"),
])
def test_usage_errors_are_one_error_line_and_the_usage_hint(cli, args, names):
    proc = cli(*args, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("error: ") and names in lines[0]
    assert sum(line.startswith("error:") for line in lines) == 1
    assert lines[1].startswith("Usage: portopt") and "--help" in lines[2] and len(lines) == 3
    assert "Traceback" not in proc.stderr + proc.stdout and proc.stdout == ""


def test_optimize_json_parses_when_highs_solves(cli, tmp_path):
    "A cardinality constraint makes HiGHS solve a mixed-integer program: its banner must not reach stdout."
    cons = tmp_path / "c.yaml"
    cons.write_text("max_assets: 2\n")
    proc = cli("optimize", "--dataset", "coingecko-daily", "--assets", "BTC,ETH,SOL", "--strategy", "min_cvar",
               "--window", "180", "--constraints", cons, "--json")
    out = json.loads(proc.stdout)
    assert out["diagnostics"]["solver"] == "HIGHS" and "HiGHS" not in proc.stdout + proc.stderr
    assert sum(w > 1e-9 for w in out["weights"].values()) <= 2


def test_backtest_sweep_and_reallocate_json_parse_and_carry_every_result(cli, tmp_path):
    base = ("--dataset", "coingecko-daily", "--assets", "BTC,ETH,SOL,USDC", "--start", "2022-06-01")
    bt = json.loads(cli("backtest", *base, "--strategy", "min_cvar,hrp", "--benchmarks", "equal_weight,buy_and_hold",
                        "--window", "90", "--json").stdout)
    assert set(bt["results"]) == {"min_cvar", "hrp", "benchmark (equal weight)", "benchmark (buy and hold)"}
    for name, res in bt["results"].items():  # trades, weights and the decisions log of each, not only the first
        assert res["trades"]["asset"] and res["weights"] and res["log"]["event"][0] == "frequency", name
        assert set(res["metrics"]) >= {"sharpe", "dsr"} and res["excluded"] == {}
    assert bt["frequency"]["description"] == "daily bars, 365 periods a year, inferred"
    sw = json.loads(cli("sweep", *base, "--strategies", "min_cvar", "--window", "60,90", "--workers", "1", "--json").stdout)
    assert len(sw["configs"]) == 2 and sw["frequency"]["periods_per_year"] == 365
    re = json.loads(cli("reallocate", "demo", "--json").stdout)
    assert re["status"] in ("planned", "held") and re["plan"]["target"]["diagnostics"]["frequency"]["periods_per_year"] == 365


def test_optimize_reads_a_stored_source_and_never_mixes_unless_asked(cli, tmp_path, store_path):
    p = json.loads(cli("optimize", "--dataset", "coingecko-daily", "--assets", "BTC,ETH", "--window", "90",
                       "--strategy", "min_variance", "--json").stdout)
    from portopt.data import load_prices
    mine = load_prices(assets=["BTC", "ETH"], start="2022-01-01")
    path = tmp_path / "mine.csv"
    mine.rename_axis("timestamp").to_csv(path)
    cli("import", path, "--source", "mine")
    other = (mine * 2).loc["2022-06-01":]
    path2 = tmp_path / "other.csv"
    other.rename_axis("timestamp").to_csv(path2)
    cli("import", path2, "--source", "other")
    out = json.loads(cli("optimize", "--source", "mine", "--window", "90", "--strategy", "min_variance", "--json").stdout)
    assert out["data"]["origin"] == "source mine" and out["weights"] == pytest.approx(p["weights"], abs=1e-6)
    both = cli("optimize", "--source", "other,mine", "--window", "90", "--strategy", "min_variance").stdout
    assert "data: source other > mine" in both and "BTC other > mine" in both
    proc = cli("optimize", "--source", "nope", check=False)
    assert proc.returncode == 1 and "no prices from source(s) ['nope']" in proc.stderr and "'mine'" in proc.stderr


def test_black_litterman_views_from_a_file(cli, tmp_path):
    base = ("optimize", "--dataset", "coingecko-daily", "--assets", "BTC,ETH,SOL", "--window", "180", "--strategy", "black_litterman")
    prior = cli(*base).stdout
    assert "views: none given: the posterior equals the prior" in prior
    views = tmp_path / "views.yaml"
    views.write_text("- {asset: SOL, return: 0.8, confidence: 0.9}\n- {long: ETH, short: BTC, return: 0.2, confidence: 0.5}\n")
    a = json.loads(cli(*base, "--json").stdout)
    b = json.loads(cli(*base, "--views", views, "--json").stdout)
    assert b["params"]["views"][0] == {"asset": "SOL", "return": 0.8, "confidence": 0.9}
    assert b["weights"]["SOL"] > a["weights"].get("SOL", 0) + 0.01  # a strong view on SOL moves weight to it
    views.write_text("- {asset: SOL, return: 0.8, confidence: 2}\n")
    proc = cli(*base, "--views", views, check=False)
    assert proc.returncode == 1 and proc.stderr.startswith(f"error: {views}: view 1: confidence") and proc.stderr.count("\n") == 1
