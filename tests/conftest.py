import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
PORTOPT = Path(sys.executable).with_name("portopt")  # the console script installed by `pip install -e .`


def dump(path: Path) -> list[str]:
    "Every row of every table of a SQLite file, as SQL text: equal dumps mean an unchanged store."
    with sqlite3.connect(path) as conn:
        return list(conn.iterdump())


@pytest.fixture
def store_path(tmp_path):
    return tmp_path / "store.sqlite"


@pytest.fixture
def cli(tmp_path, store_path):
    "Run the installed `portopt` command against a temporary store; returns the CompletedProcess."
    def run(*args, check=True, timeout=900):
        env = dict(os.environ, PORTOPT_STORE=str(store_path), PORTOPT_RUNS=str(tmp_path / "runs"))
        proc = subprocess.run([str(PORTOPT), *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"portopt {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
        return proc
    return run
