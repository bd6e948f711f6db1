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
