"""The Voila apps under load, in headless Chromium (Debian's), served as `make dashboard` serves them (voila.json, the portopt template).

    .venv/bin/python bench/dashboard.py [--store PATH] [--hang-loads 50]

Fills a scratch store the way `make run` does (papermill runs of the portfolio, reallocate, rebalance and backtest
reports, recompute=True), unless `--store` names one, then measures:
1. first meaningful render (the app's first stored value on screen) over fresh page loads: the overview 10 times
   (target: median <= 3 s), each report app 5 times (target: median <= 5 s);
2. hangs: `--hang-loads` consecutive fresh loads of the overview, each given 60 s (target: 0);
3. kernels: 20 loads of the overview, 4 at a time, tabs left open (no tab-close shutdown), then the kernels alive
   and their resident memory right away and after one culling interval (voila.json; target: <= 2).
"""
import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_dashboard import CHROMIUM, FLAGS, voila  # noqa: E402  (the same server and browser setup as the tests)

APPS = {"dashboard.ipynb": ".po-summary", "portfolio.ipynb": "text=by run", "backtest.ipynb": "text=by run",
        "reallocate.ipynb": "text=Decision:", "rebalance.ipynb": "text=decision"}


def fill(store: Path, runs: Path) -> None:
    "What `make run` stores: a portfolio report, the demo portfolio's decision, the rebalance demo, a backtest report."
    from portopt.reports import run_report
    from portopt.store import SQLiteStore
    with SQLiteStore(store) as st:
        run_report("portfolio", dict(assets=["BTC", "ETH", "SOL", "USDC"], window=90, start="2022-05-01"), store=st, runs_dir=runs)
        run_report("reallocate", {}, store=st, runs_dir=runs)
        run_report("rebalance", {}, store=st, runs_dir=runs)
        run_report("backtest", dict(assets=["BTC", "ETH", "SOL", "USDC"], strategies=["min_variance", "max_sharpe"], window=90,
                                    start="2022-03-01"), store=st, runs_dir=runs)


async def load(browser, url: str, selector: str, timeout: float, keep_open: bool = False):
    "Seconds from navigation to `selector` on screen in a fresh context, or None when it never shows within `timeout`."
    ctx = await browser.new_context()
    page = await ctx.new_page()
    t = time.perf_counter()
    try:
        await page.goto(url, wait_until="commit", timeout=timeout * 1000)
        await page.wait_for_selector(selector, timeout=timeout * 1000)
        seconds = time.perf_counter() - t
    except Exception:
        seconds = None
    if not keep_open:
        await ctx.close()
    return seconds, ctx


def kernels(server_pid: int) -> tuple[int, float]:
    "Kernel processes under the Voila server and their resident memory in MB (from /proc)."
    out = subprocess.run(["ps", "-o", "pid=,rss=,args=", "--ppid", str(server_pid)], capture_output=True, text=True).stdout
    rows = [line.split(None, 2) for line in out.splitlines() if "ipykernel" in line]
    return len(rows), sum(int(r[1]) for r in rows) / 1024


async def measure(url: str, server_pid: int, hang_loads: int, cull_wait: float) -> dict:
    from playwright.async_api import async_playwright
    res = {}
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        for app, selector in APPS.items():
            times = [(await load(browser, f"{url}/voila/render/{app}", selector, 120))[0] for _ in range(10 if app == "dashboard.ipynb" else 5)]
            ok = [t for t in times if t is not None]
            res[app] = dict(median=statistics.median(ok) if ok else None, best=min(ok) if ok else None, failed=len(times) - len(ok))
            print(f"{app:18s} first render: median {res[app]['median']:.2f} s, best {res[app]['best']:.2f} s, {res[app]['failed']} not shown", flush=True)
        hangs = 0
        for i in range(hang_loads):
            seconds, _ = await load(browser, f"{url}/voila/render/dashboard.ipynb", ".po-summary", 60)
            hangs += seconds is None
        res["hangs"] = (hangs, hang_loads)
        print(f"hangs: {hangs} of {hang_loads} consecutive fresh loads of the overview", flush=True)
        await asyncio.sleep(5)
        before = kernels(server_pid)
        contexts = []
        for batch in range(5):  # 20 loads, 4 at a time, tabs left open
            done = await asyncio.gather(*[load(browser, f"{url}/voila/render/dashboard.ipynb", ".po-summary", 120, keep_open=True) for _ in range(4)])
            contexts += [ctx for _, ctx in done]
        after_loads = kernels(server_pid)
        await asyncio.sleep(cull_wait)
        after_cull = kernels(server_pid)
        res["kernels"] = dict(before=before, after_loads=after_loads, after_cull=after_cull)
        print(f"kernels alive: {before[0]} before, {after_loads[0]} ({after_loads[1]:,.0f} MB) after 20 loads with the tabs open, "
              f"{after_cull[0]} ({after_cull[1]:,.0f} MB) after one culling interval ({cull_wait:.0f} s)", flush=True)
        for ctx in contexts:
            await ctx.close()
        await browser.close()
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", type=Path)
    ap.add_argument("--hang-loads", type=int, default=50)
    ap.add_argument("--voila-arg", action="append", default=[], help="a Voila option on top of voila.json, e.g. --template=lab (Voila's own page) or "
                    "--voila-arg=--VoilaConfiguration.preheat_kernel=True (repeatable)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="portopt-bench-"))
    store = args.store or tmp / "store.sqlite"
    if not args.store:
        fill(store, ROOT / "reports" / "runs")
    cull = json.loads((ROOT / "voila.json").read_text())["MappingKernelManager"]
    cull_wait = cull["cull_idle_timeout"] + cull["cull_interval"] + 5
    print(f"voila options on top of voila.json: {args.voila_arg or 'none'}; load average {os.getloadavg()[0]:.1f}", flush=True)
    with voila(store, tmp / "voila.log", tuple(args.voila_arg)) as url:
        pid = int((tmp / "voila.log").with_suffix(".pid").read_text())
        res = asyncio.run(measure(url, pid, args.hang_loads, cull_wait))
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    ov = res["dashboard.ipynb"]["median"]
    worst = max(v["median"] for k, v in res.items() if k.endswith(".ipynb") and k != "dashboard.ipynb")
    print(f"{'PASS' if ov <= 3 else 'FAIL'}  overview first render, median of 10: {ov:.2f} s (target <= 3 s)")
    print(f"{'PASS' if worst <= 5 else 'FAIL'}  slowest report app, median of 5: {worst:.2f} s (target <= 5 s)")
    print(f"{'PASS' if res['hangs'][0] == 0 else 'FAIL'}  hangs: {res['hangs'][0]} of {res['hangs'][1]} (target 0)")
    print(f"{'PASS' if res['kernels']['after_cull'][0] <= 2 else 'FAIL'}  kernels after one culling interval: {res['kernels']['after_cull'][0]} (target <= 2)")


if __name__ == "__main__":
    main()
