"""The Voila apps in a real headless Chromium (Debian's package, driven by Playwright; never `playwright install`).

Every app opens on a store filled the way `make run` fills it (papermill runs, recompute=True), shows values that
match the store, no Python error, no number in scientific notation, nothing addressed to developers, and leaves the
store byte-identical; a client-side menu redraws its chart; an empty store shows what command fills it. The old
hang (the overview's widget cells, executed by Voila's executor, waited forever for an execute_reply the kernel had
sent) is exercised by executing the overview 30 times through that executor. Screenshots of every app and every
HTML report go to reports/runs/screens/. Without Chromium, Voila or Playwright the tests skip with the reason,
unless PORTOPT_REQUIRE_STACK=1 (CI), where they must run.
"""
import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import dump

ROOT = Path(__file__).resolve().parents[1]
SCREENS = ROOT / "reports" / "runs" / "screens"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
         # offline: Voila's page links CDN stylesheets (Font Awesome); every name but the loopback fails at once
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"]
DEVELOPER_TEXT = re.compile(r"pre-?heat|preheated|Voila 0\.|TODO|FIXME|ipywidgets|nbclient|papermill sets|\.sqlite\b", re.I)


def require(*modules, browser=True):
    reasons = [] if not browser or Path(CHROMIUM).exists() else ["Debian's chromium is not installed (apt-get install chromium)"]
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            reasons.append(f"{module} is not installed (make install)")
    if reasons:
        if os.environ.get("PORTOPT_REQUIRE_STACK") == "1":
            pytest.fail("; ".join(reasons))
        pytest.skip("; ".join(reasons))


@contextlib.contextmanager
def voila(store_path: Path, log: Path, extra: tuple = ()):
    """Serve reports/ as `make dashboard` does (the project's voila.json and `portopt` template) on a free loopback port; yields the base URL
    once Voila listens; `extra`: more Voila options (the benchmark's variants). The server's pid is written beside the log (`.pid`), for counting its kernels."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from portopt.dashboards import voila_command, voila_env
    env = dict(os.environ, PORTOPT_STORE=str(store_path))
    env.pop("PORTOPT_RUNS", None)  # report links point into reports/runs, which Voila serves
    with open(log, "w") as out:
        proc = subprocess.Popen(voila_command("reports", port, *extra), cwd=ROOT, env=voila_env(env), stdout=out, stderr=subprocess.STDOUT)
    log.with_suffix(".pid").write_text(str(proc.pid))
    from portopt.dashboards import LiveSnapshots
    live = LiveSnapshots(ROOT / "reports", store_path, every=1.0)  # as `make dashboard`: the overview's snapshot kept current
    live.__enter__()
    try:
        deadline = time.time() + 180
        while "Voilà is running at" not in log.read_text():
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        live.__exit__(None, None, None)
        proc.terminate()
        proc.wait(timeout=30)


@contextlib.contextmanager
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield b.new_page(viewport={"width": 1400, "height": 3000})
        finally:
            b.close()


def check_page(page):
    """No Python error, no number in scientific notation in any table cell, nothing addressed to developers.

    The portopt template streams the cells as they run, so the first table can land a moment after the text the
    caller waited for: wait for it before reading the page."""
    page.wait_for_selector("td", timeout=60_000)
    text = page.inner_text("body")
    assert "Traceback" not in text and not re.search(r"\b\w+Error:", text), text[:2000]
    assert "Error displaying widget" not in text
    cells = page.locator("td, th").all_inner_texts()
    assert cells, "no table on the page"
    assert not [c for c in cells if re.search(r"\d[eE][+-]\d", c)], [c for c in cells if re.search(r"\d[eE][+-]\d", c)][:5]
    assert not [c for c in cells if re.fullmatch(r"-0(\.0+)?\s*%?", c.strip())], "a negative zero in a table"
    assert not DEVELOPER_TEXT.search(text), DEVELOPER_TEXT.search(text).group(0)
    return text


@pytest.fixture(scope="module")
def populated(tmp_path_factory):
    "A store filled as `make run` fills it: papermill runs of the four reports (recompute=True), then Voila on it."
    require("voila", "playwright")
    from portopt.reports import run_report
    from portopt.store import SQLiteStore
    tmp = tmp_path_factory.mktemp("dash")
    path, runs = tmp / "store.sqlite", ROOT / "reports" / "runs"
    done = {}
    with SQLiteStore(path) as st:
        done["portfolio"] = run_report("portfolio", dict(assets=["BTC", "ETH", "SOL", "USDC"], strategies=["equal_weight", "min_variance", "max_sharpe"],
                                                         window=90, rebalance_every=30, start="2022-05-01"), store=st, runs_dir=runs)
        done["reallocate"] = run_report("reallocate", {}, store=st, runs_dir=runs)
        done["rebalance"] = run_report("rebalance", {}, store=st, runs_dir=runs)
        done["backtest"] = run_report("backtest", dict(assets=["BTC", "ETH", "SOL", "USDC"], strategies=["min_variance", "max_sharpe"],
                                                       window=90, start="2022-03-01"), store=st, runs_dir=runs)
    SCREENS.mkdir(parents=True, exist_ok=True)
    with voila(path, tmp / "voila.log") as url:
        yield url, path, done


def open_app(page, url, app, selector):
    "Open an app once (no reload: a page that does not render is a failure) and wait for its first stored value."
    page.goto(f"{url}/voila/render/{app}.ipynb", wait_until="commit", timeout=60_000)
    page.wait_for_selector(selector, timeout=60_000)
    page.wait_for_load_state("load", timeout=60_000)


def test_overview_matches_the_store_and_a_menu_redraws(populated):
    from portopt.store import SQLiteStore
    url, path, done = populated
    before = dump(path)
    with SQLiteStore(path) as st:
        decision = st.read_reallocations("demo").iloc[0]
    with browser() as page:
        open_app(page, url, "dashboard", ".po-summary")
        page.wait_for_selector(".js-plotly-plot", timeout=60_000)
        check_page(page)
        # the portopt template: outputs drawn on the server, one local plotly.js, no JupyterLab front end, no CDN
        source = page.content()
        assert "/voila/templates/portopt/static/plotly.min.js" in source
        assert "jupyter-config-data" not in source and "voila.js" not in source and "cdn." not in source
        summary = page.inner_text(".po-summary")
        assert "demo" in summary and decision["status"].replace("_", " ") in summary and "rebalance-demo" in summary
        assert f"{decision['plan']['nav']:,.2f} USD" in summary
        weights = "\n".join(page.locator(".po-weights").all_inner_texts())
        for row in decision["plan"]["positions"]:
            assert f"{row['target_weight']:.1%}" in weights and f"{row['weight']:.1%}" in weights
        links = {a.inner_text(): a.get_attribute("href") for a in page.locator("a.po-report").all()}
        assert links[done["portfolio"].folder.name] == f"../files/runs/{done['portfolio'].folder.name}/portfolio.html"
        page.screenshot(path=str(SCREENS / "overview.png"), full_page=True)
        # a client-side menu redraws: the strategy chart switches from max_sharpe to min_variance, no kernel involved
        title = page.locator(".gtitle", has_text="latest weights and risk contributions")
        assert title.text_content().startswith("max_sharpe")  # SVG text: text_content, not inner_text
        chart = page.locator(".js-plotly-plot", has=title)
        chart.locator(".updatemenu-header-group").click()
        chart.locator(".updatemenu-dropdown-button", has_text="min_variance").click()
        page.wait_for_function("() => [...document.querySelectorAll('.gtitle')].some(t => t.textContent.startsWith('min_variance: latest'))",
                               timeout=10_000)
        page.screenshot(path=str(SCREENS / "overview-after-menu.png"), full_page=True)
    import httpx
    served = httpx.get(f"{url}/voila/files/runs/{done['portfolio'].folder.name}/portfolio.html", timeout=60)
    assert served.status_code == 200 and "Efficient frontier" in served.text
    assert dump(path) == before


@pytest.mark.parametrize("app, selector", [("portfolio", "text=by run"), ("backtest", "text=by run"),
                                           ("reallocate", "text=Decision:"), ("rebalance", "text=rebalance-demo")])
def test_each_report_app_shows_the_latest_stored_result_and_writes_nothing(populated, app, selector):
    from portopt.store import SQLiteStore
    url, path, done = populated
    before = dump(path)
    with browser() as page:
        open_app(page, url, app, selector)
        text = check_page(page)
        page.screenshot(path=str(SCREENS / f"{app}.png"), full_page=True)
    assert dump(path) == before  # opening an app never writes
    with SQLiteStore(path) as st:
        if app in ("portfolio", "backtest"):
            assert done[app].run_id in text  # made by the latest run of that report, and says so
        if app == "portfolio":
            opt = st.read_optimizations()
            opt = opt[opt["run_id"] == done["portfolio"].run_id].set_index("strategy")
            for asset, w in opt.loc["max_sharpe", "weights"].items():
                assert f"{w:.1%}" in text
        if app == "backtest":
            bt = st.read_backtests()
            bt = bt[bt["run_id"] == done["backtest"].run_id].set_index("strategy")
            assert f"{bt.loc['max_sharpe', 'metrics']['sharpe']:,.2f}" in text
            assert "benchmark (equal weight)" in text and "benchmark (BTC)" in text  # named as its HTML report names them
        if app == "reallocate":
            latest = st.read_reallocations("demo").iloc[0]
            assert f"Decision: {latest['status'].replace('_', ' ')}" in text and latest["id"] in text
        if app == "rebalance":
            latest = st.read_reallocations("rebalance-demo").iloc[0]
            assert latest["status"].replace("_", " ") in text and f"{latest['plan']['nav']:,.2f} USD" in text


def test_html_reports_render(populated):
    "Every HTML report of the fixture's runs opens in the browser: plots drawn, no solver banner, no error."
    _, _, done = populated
    with browser() as page:
        for name, run in done.items():
            page.goto(run.html.as_uri(), wait_until="load", timeout=60_000)
            text = page.inner_text("body")
            assert "Traceback" not in text and "Running HiGHS" not in text and "SCIP version" not in text
            assert page.locator(".js-plotly-plot").count() >= 1 or name == "rebalance"
            page.screenshot(path=str(SCREENS / f"report-{name}.png"), full_page=True)


def test_empty_store_says_which_command_fills_it(tmp_path):
    require("voila", "playwright")
    missing = tmp_path / "nothing-here.sqlite"
    SCREENS.mkdir(parents=True, exist_ok=True)
    expected = {"dashboard": "make run", "portfolio": "make run", "backtest": "portopt run --report backtest",
                "reallocate": "portopt reallocate demo", "rebalance": "make run"}
    with voila(missing, tmp_path / "voila.log") as url, browser() as page:
        for app, command in expected.items():
            open_app(page, url, app, f"text={command}")
            text = page.inner_text("body")
            assert "Traceback" not in text and not DEVELOPER_TEXT.search(text)
            page.screenshot(path=str(SCREENS / f"{app}-empty.png"), full_page=True)
    assert not missing.exists()  # no app creates a store


def test_the_overview_always_finishes_through_voilas_executor(populated):
    """The old hang, in a loop: execute the overview 30 times the way Voila 0.5 does (a new kernel, VoilaExecutor,
    cell by cell, store_history off). Voila waits without a timeout; here each cell gets 60 s, and a cell that needs
    them is the hang (with ipywidgets in the notebook, about half the runs had one)."""
    import nbformat
    from jupyter_client.manager import AsyncKernelManager
    from nbconvert.preprocessors import ClearOutputPreprocessor
    from voila.execute import VoilaExecutor
    _, path, _ = populated

    async def once():
        nb, _ = ClearOutputPreprocessor().preprocess(nbformat.read(ROOT / "reports" / "dashboard.ipynb", as_version=4), {})
        km = AsyncKernelManager(kernel_name="python3")
        await km.start_kernel(cwd=str(ROOT / "reports"), env=dict(os.environ, PORTOPT_STORE=str(path)))
        ex = VoilaExecutor(nb, km=km, timeout=60)
        ex.kc = await ex.async_start_new_kernel_client()
        slowest = 0.0
        try:
            for i, cell in enumerate(nb.cells):
                t = time.perf_counter()
                await ex.execute_cell(cell, None, i, store_history=False)
                slowest = max(slowest, time.perf_counter() - t)
        finally:
            ex.kc.stop_channels()
            await km.shutdown_kernel(now=True)
        return nb, slowest

    async def loop():
        out = []
        for _ in range(30):
            out.append(await once())
        return out

    runs = asyncio.run(loop())
    assert all(slowest < 55 for _, slowest in runs), [round(s, 1) for _, s in runs]
    for nb, _ in runs:  # every run got to the end and drew the charts
        assert any("application/vnd.plotly.v1+json" in o.get("data", {}) for o in nb.cells[-1].outputs) or \
            any("application/vnd.plotly.v1+json" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def test_the_open_overview_shows_new_decisions_and_alerts_by_itself(populated):
    """Live overview: with the page open (no reload, no kernel: Voila culls it), a decision and an alert written through
    the library appear within the page's refresh interval plus the snapshot's; the page never writes the store."""
    from portopt.store import SQLiteStore
    url, path, _ = populated
    with browser() as page:
        open_app(page, url, "dashboard", ".po-summary")
        page.wait_for_selector("text=Live updates: the store was read at", timeout=30_000)
        page.evaluate("() => { window.poSamePage = 42; }")  # gone if the page reloads
        chart = "() => Array.from(document.querySelectorAll('.js-plotly-plot')).find(d => d.layout && d.layout.meta && d.layout.meta.po_live === 'decisions')"
        drawn = page.evaluate(f"() => ({chart})().layout.meta.po_hash")
        with SQLiteStore(path) as st:
            plan = dict(st.read_reallocations("demo").iloc[0]["plan"])
            plan["nav"], plan["reason"] = 123456.78, "live-refresh test decision"
            plan["positions"] = [dict(p, weight=0.4242) if i == 0 else p for i, p in enumerate(plan["positions"])]  # redraws the chart
            st.write_reallocation("demo", "2031-01-02", "planned", plan)
            st.write_alert("drift", "live-refresh test: ETH 6.5% over its band", "demo")
        after_writes = dump(path)
        page.wait_for_function("() => document.querySelector('.po-summary') && document.querySelector('.po-summary').innerText.includes('123,456.78 USD')"
                               " && document.querySelector('.po-alerts') && document.querySelector('.po-alerts').innerText.includes('live-refresh test: ETH')",
                               timeout=30_000)
        # the weights chart is redrawn too (Plotly.react on the page's own plot): its first bar is the new weight
        page.wait_for_function(f"() => ({chart})().layout.meta.po_hash !== {drawn!r}", timeout=30_000)
        assert page.evaluate(f"() => Array.from(({chart})()._fullData[0].y)[0]") == pytest.approx(0.4242)
        assert page.evaluate("() => window.poSamePage") == 42  # redrawn in place, not reloaded
        summary = page.inner_text(".po-summary")
        assert "planned" in summary and "2031-01-02 00:00 UTC" in summary and "live-refresh test decision" in summary
        check_page(page)
        page.screenshot(path=str(SCREENS / "overview-live.png"), full_page=True)
    assert dump(path) == after_writes  # the open page wrote nothing


def test_a_report_outside_the_served_folder_opens_from_the_overview(populated, tmp_path):
    """PORTOPT_RUNS outside reports/: Voila refuses files whose real path is outside its root (a symlink answers 403),
    so the overview links the copy that `LiveSnapshots` keeps under reports/live/runs/; the link opens the report."""
    from portopt.store import SQLiteStore
    url, path, done = populated
    outside = tmp_path / "elsewhere" / f"{done['portfolio'].folder.name}-elsewhere"
    outside.mkdir(parents=True)
    shutil.copy2(done["portfolio"].html, outside / "portfolio.html")
    with SQLiteStore(path) as st:
        st.finish_run(st.start_run("portfolio", {"where": "outside"}), "succeeded", output_path=str(outside))
    after_writes = dump(path)
    with browser() as page:
        open_app(page, url, "dashboard", ".po-summary")
        link = page.locator("a.po-report", has_text=outside.name)
        link.wait_for(timeout=30_000)
        href = link.get_attribute("href")
        assert href == f"../files/live/runs/{outside.name}/portfolio.html"
        answer = page.goto(f"{url}/voila/files/live/runs/{outside.name}/portfolio.html", wait_until="load", timeout=60_000)
        assert answer.status == 200 and "Efficient frontier" in page.inner_text("body")
        page.screenshot(path=str(SCREENS / "report-outside-runs.png"))
    assert dump(path) == after_writes


def test_an_executed_report_opened_in_the_web_app_only_reads(populated):
    """Voila serves the executed reports under runs/ too, and they carry papermill's recompute=True: opened in the
    browser (or heated by Voila's pre-heating), the kernel is Voila's, so the app shows the stored run and writes nothing.
    It shows its own run (papermill's `run_id`), not the latest: a newer run of the same report is recorded first
    (in CI the test of a report outside runs/ did so, and this page showed that run, which has no tables)."""
    from portopt.store import SQLiteStore
    url, path, done = populated
    with SQLiteStore(path) as st:
        newer = st.start_run("portfolio", {"why": "a later run"})
        st.finish_run(newer, "succeeded", output_path=str(path.parent / "elsewhere"))
    before = dump(path)
    with browser() as page:
        open_app(page, url, f"runs/{done['portfolio'].folder.name}/portfolio", "text=by run")
        text = check_page(page)
    assert done["portfolio"].run_id in text
    assert dump(path) == before


def test_the_overview_groups_by_portfolio_id_and_labels_same_names(tmp_path):
    """Issue 14: a shared (service-role) store holds two owners' portfolios both named `main`; the overview shows
    two rows, one decision each, labelled by owner, and each alert under its own portfolio (grouped by id, not name)."""
    from portopt.dashboards import live_sections, portfolio_labels
    from portopt.events import rebalance
    from portopt.store import SQLiteStore, ensure_dataset
    store = SQLiteStore(tmp_path / "s.sqlite")
    ensure_dataset(store)
    settings = {"assets": ["BTC", "ETH"], "strategy": "equal_weight"}
    store.upsert_portfolio("main", owner="aaaaaaaa-1111", settings=settings)
    store.upsert_portfolio("main", owner="bbbbbbbb-2222", settings=settings)
    store.upsert_portfolio("solo", owner="aaaaaaaa-1111", settings=settings)
    p = store.read_portfolios()
    ids = dict(zip(p["owner"] + "/" + p["portfolio"], p["id"]))
    labels = portfolio_labels(store)
    assert labels == {ids["aaaaaaaa-1111/main"]: "main (owner aaaaaaaa)", ids["bbbbbbbb-2222/main"]: "main (owner bbbbbbbb)",
                      ids["aaaaaaaa-1111/solo"]: "solo"}
    rebalance(store, ids["aaaaaaaa-1111/main"], webhook=False)   # only A's main has a decision
    store.write_alert("drift", "B's alert", portfolio=ids["bbbbbbbb-2222/main"])
    html = live_sections(store)
    summary = html["portfolios"].split("po-summary", 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr>\s*<td>([^<]*)</td>\s*<td>([^<]*)</td>", summary)
    assert sorted(rows) == [("main (owner aaaaaaaa)", "held"), ("main (owner bbbbbbbb)", "none yet"), ("solo", "none yet")]
    assert re.search(r"<td>main \(owner bbbbbbbb\)</td>\s*<td>drift</td>", html["alerts"])
