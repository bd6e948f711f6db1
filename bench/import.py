"""Import benchmark: `portopt import` of a large long-OHLCV file against plain `pandas.read_csv` + `DataFrame.to_sql`.

Run: `.venv/bin/python bench/import.py [--rows 5000000] [--assets 500]`. Everything runs in this one process, in
this order, each on a fresh SQLite file:

1. the file: `--rows` rows of `timestamp,asset,open,high,low,close,volume` (ISO 8601 UTC, hourly bars, `--assets`
   assets, random-walk prices), written once to a temporary folder;
2. portopt: `import_prices(store, [file])` (what `portopt import FILE` does: the file streamed in ~8 MB pieces, each
   parsed and checked (refusals, duplicates, frequencies, the store's bars) by a helper thread while SQLite upserts
   the previous one with the store's schema and outbox, in one transaction);
3. portopt again on the same file (every row unchanged: nothing written);
4. the peer: `pd.read_csv(file)` + `frame.to_sql("prices", sqlite3 connection, index=False)` — no validation, no
   key, no index, no upsert: a floor for the work, not the same work.

Peak memory is the process's resident set size high-water mark sampled every 20 ms by a thread, minus what the
process held before the step (so it is the step's own peak). Targets (issue 12, item 7): ≥ 300,000 rows/s and a
peak ≤ 3 × the file's size; the re-import at least as fast as the import. CPU seconds (all threads of the
process) are printed too: on a shared machine the wall-clock rate moves with the load, the CPU rate much less.
"""
from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Peak:
    "The highest RSS seen while the block runs, above the RSS at its start."
    def __enter__(self):
        self.start, self.peak, self.stop = rss(), rss(), False
        def watch():
            while not self.stop:
                self.peak = max(self.peak, rss())
                time.sleep(0.02)
        self.thread = threading.Thread(target=watch, daemon=True)
        self.thread.start()
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.c0  # every thread of this process (SQLite runs in it)
        self.stop = True
        self.thread.join()
        self.peak = max(self.peak, rss())
        self.extra = self.peak - self.start


def make_file(path: Path, rows: int, assets: int) -> None:
    per = rows // assets
    stamps = pd.date_range("2020-01-01", periods=per, freq="h", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ").to_numpy()
    rng = np.random.default_rng(7)
    with open(path, "w") as f:
        f.write("timestamp,asset,open,high,low,close,volume\n")
        for k in range(assets):
            close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, per)))
            frame = pd.DataFrame({"timestamp": stamps, "asset": f"A{k:04d}", "open": close * 0.999, "high": close * 1.002,
                                  "low": close * 0.997, "close": close, "volume": rng.uniform(1, 1e6, per)})
            frame.to_csv(f, header=False, index=False, float_format="%.6f")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--assets", type=int, default=500)
    args = ap.parse_args()
    from portopt.imports import import_prices
    from portopt.store import SQLiteStore

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        file = d / "ohlcv.csv"
        make_file(file, args.rows, args.assets)
        size = file.stat().st_size
        print(f"file: {args.rows:,} rows, {args.assets} assets, {size / 1e6:.0f} MB ({os.cpu_count()} cores; "
              f"load average {os.getloadavg()[0]:.1f} at the start)")

        def portopt(store_file):
            with SQLiteStore(store_file) as st:
                done = import_prices(st, [file])
            assert done.streamed, done.why
            return next(iter(done.results.values()))

        with Peak() as first:
            r1 = portopt(d / "portopt.sqlite")
        assert r1.inserted == args.rows, r1
        with Peak() as again:
            r2 = portopt(d / "portopt.sqlite")
        assert r2.unchanged == args.rows, r2
        with Peak() as peer:
            frame = pd.read_csv(file)
            with sqlite3.connect(d / "peer.sqlite") as conn:
                frame.to_sql("prices", conn, index=False)
            del frame

    def line(name, p):
        return (f"{name:<34} {p.seconds:7.1f} s  {args.rows / p.seconds:>9,.0f} rows/s  (CPU {p.cpu:6.1f} s, "
                f"{args.rows / p.cpu:>9,.0f} rows per CPU-s)  peak +{p.extra / 1e6:,.0f} MB ({p.extra / size:.2f} × file)")
    print(line("portopt import", first))
    print(line("portopt re-import (all unchanged)", again))
    print(line("pandas read_csv + to_sql", peer))
    print(f"portopt / peer time: {first.seconds / peer.seconds:.2f} (CPU {first.cpu / peer.cpu:.2f}); "
          f"re-import / peer: {again.seconds / peer.seconds:.2f}; re-import / import: {again.seconds / first.seconds:.2f}; "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    ok = args.rows / first.seconds >= 300_000 and first.extra <= 3 * size and again.seconds <= first.seconds
    print("targets (≥ 300,000 rows/s, peak ≤ 3 × file, re-import no slower):", "met" if ok else "NOT met")


if __name__ == "__main__":
    main()
