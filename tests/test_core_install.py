"""`pip install portopt` alone (no extra) in a fresh venv: an optimize and a backtest work and agree with the full
install; the optional parts end in one line naming the extra that installs them (issue 15, item 5).

Needs PyPI (or pip's cache); skipped without it unless PORTOPT_REQUIRE_STACK=1 (CI), where it must run."""
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIRE = os.environ.get("PORTOPT_REQUIRE_STACK") == "1"


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    "A venv holding portopt's core only (built from this checkout, not editable), and its environment."
    where = tmp_path_factory.mktemp("core-venv")
    venv.EnvBuilder(with_pip=True).create(where)
    py = where / "bin" / "python"
    done = subprocess.run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(ROOT)],
                          capture_output=True, text=True, timeout=1200)
    if done.returncode:
        reason = f"pip could not install portopt's core here: {done.stderr.strip().splitlines()[-1:]}"
        if REQUIRE:
            pytest.fail(reason)
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPABASE_", "PYTHON"))}
    env.update(PORTOPT_STORE=str(where / "store.sqlite"), PORTOPT_RUNS=str(where / "runs"))
    return where / "bin", env


def run(core, *args, check=True):
    bin_, env = core
    done = subprocess.run([bin_ / "portopt", *args], capture_output=True, text=True, env=env, timeout=600, cwd=bin_.parent)
    if check and done.returncode:
        raise AssertionError(f"portopt {' '.join(args)} exited {done.returncode}: {done.stderr}")
    return done


def test_the_core_installs_without_any_extra(core):
    bin_, env = core
    probe = "import importlib.util as u; print([m for m in ('papermill', 'supabase', 'psycopg', 'solana', 'dask', 'pyscipopt') if u.find_spec(m)])"
    found = subprocess.run([bin_ / "python", "-c", probe], capture_output=True, text=True, env=env, cwd=bin_.parent)
    assert found.stdout.strip() == "[]", found.stderr   # (cwd: the checkout's supabase/ folder would pass for a package)


def full(*args):
    "The same command in this (full) install."
    done = subprocess.run([Path(sys.executable).parent / "portopt", *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_core_optimize_matches_the_full_install(core):
    args = ("optimize", "--dataset", "coingecko-daily", "--strategy", "min_variance", "--window", "365", "--json")
    out, ref = json.loads(run(core, *args).stdout), full(*args)
    assert out["periods_per_year"] == 365 and set(out["weights"]) == set(ref["weights"]) and len(ref["weights"]) > 5
    assert np.allclose([out["weights"][a] for a in ref["weights"]], list(ref["weights"].values()), atol=1e-9)


def test_core_backtest_runs(core):
    out = json.loads(run(core, "backtest", "--dataset", "coingecko-daily", "--strategy", "hrp", "--window", "90",
                         "--rebalance-every", "30", "--json").stdout)
    text = json.dumps(out)
    assert "hrp" in text and "sharpe" in text.lower()


@pytest.mark.parametrize("args, extra", [(("collect", "solana"), "solana"), (("run",), "reports"),
                                         (("sweep", "--dataset", "coingecko-daily", "--strategy", "hrp"), "sweep")])
def test_an_optional_part_names_its_extra(core, args, extra):
    done = run(core, *args, check=False)
    assert done.returncode == 1, done.stderr
    lines = [l for l in done.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    assert f"pip install 'portopt[{extra}]'" in lines[0]
