"""Time to first meaningful render of each Voila app, in headless Chromium (Debian's), on the bundled data.

    .venv/bin/python bench/dashboard.py

Fills a scratch store (the demo portfolio, its reallocation decision, a small portfolio report), serves reports/
with the project's voila.json (no pre-heated kernels), and loads each app three times in a fresh page. "First
meaningful render": the overview's summary table; the reallocation app's decision; the portfolio app's metrics.
Every app executes on load (voila.json: preheat_kernel false, see the README). Target: overview <= 3 s.
"""
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_dashboard import CHROMIUM, FLAGS, voila  # noqa: E402  (the same server and browser setup as the tests)

APPS = {"dashboard.ipynb": ".po-summary", "reallocate.ipynb": "text=Decision:", "portfolio.ipynb": "text=Metrics"}


def first_render(url: str, selector: str) -> float:
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = b.new_page()
        t = time.perf_counter()
        page.goto(url, wait_until="domcontentloaded", timeout=300_000)
        page.wait_for_selector(selector, timeout=300_000)
        seconds = time.perf_counter() - t
        b.close()
        return seconds


def main():
    from portopt.reallocate import ensure_demo_portfolio, reallocate_portfolio
    from portopt.reports import run_report
    from portopt.store import SQLiteStore
    tmp = Path(tempfile.mkdtemp(prefix="portopt-bench-"))
    with SQLiteStore(tmp / "store.sqlite") as st:
        ensure_demo_portfolio(st)
        reallocate_portfolio(st, "demo", as_of="2022-09-01")
        run_report("portfolio", dict(assets=["BTC", "ETH", "SOL", "USDC"], window=90, start="2022-05-01"), store=st,
                   runs_dir=ROOT / "reports" / "runs")
    rows = []
    with voila(tmp / "store.sqlite", tmp / "voila.log") as url:
        for app, selector in APPS.items():
            times = []
            for _ in range(3):
                times.append(first_render(f"{url}/voila/render/{app}", selector))
            rows.append((app, "cold kernel", statistics.median(times), min(times)))
    print(f"{'app':22s} {'kernel':12s} {'median s':>9s} {'best s':>7s}")
    for app, kind, med, best in rows:
        print(f"{app:22s} {kind:12s} {med:9.2f} {best:7.2f}")
    overview = rows[0][2]
    print(f"{'PASS' if overview <= 3 else 'FAIL'}  overview first render {overview:.2f} s (target <= 3 s)")


if __name__ == "__main__":
    main()
