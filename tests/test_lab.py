"""JupyterLab opens the project's notebooks unchanged (issue 13: freshly opened notebooks were marked as changed).

The cause, found in headless Chromium: when its kernel starts, JupyterLab writes the kernel's `kernelspec` and
`language_info` into the notebook's metadata and marks the notebook changed unless both are already equal. nbdev_clean
wrote `display_name: python3` while the venv's kernel was "Python 3 (ipykernel)", and stripped `language_info`. Now
`make install` names the kernel `python3`, the notebooks keep `language_info` (settings.ini `allowed_metadata_keys`),
and these tests hold both true.
"""
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "nbs").glob("*.ipynb")) + sorted((ROOT / "reports").glob("*.ipynb"))


@pytest.fixture(scope="module")
def kernel_info():
    "The kernelspec and language_info of the kernel JupyterLab starts for these notebooks (`python3` of this venv)."
    from jupyter_client.manager import start_new_kernel
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        language = kc.kernel_info(reply=True, timeout=60)["content"]["language_info"]
        spec = km.kernel_spec
        return {"name": "python3", "display_name": spec.display_name, "language": spec.language}, language
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_notebook_records_the_kernel_it_opens_with(path, kernel_info):
    spec, language = kernel_info
    meta = json.loads(path.read_text())["metadata"]
    assert meta.get("kernelspec") == spec, (f"{path.name} records kernelspec {meta.get('kernelspec')}, the kernel is {spec}: "
                                            "run `make install` (it names the kernel python3)")
    assert meta.get("language_info") == language, (f"{path.name} records Python {meta.get('language_info', {}).get('version')}, "
                                                   f"the kernel is {language['version']}: open and save it in `make lab`")


def test_jupyterlab_opens_notebooks_unchanged(tmp_path):
    "Opened in JupyterLab (headless Chromium), with the kernel started and idle, no notebook tab is marked changed."
    from test_dashboard import CHROMIUM, FLAGS, require
    require("jupyterlab", "playwright")
    from playwright.sync_api import sync_playwright
    picks = [ROOT / "nbs" / "00_config.ipynb", ROOT / "reports" / "dashboard.ipynb"]
    before = {p: p.read_bytes() for p in picks}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "lab.log"
    with open(log, "w") as out:
        lab = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
                                "--ServerApp.token=", "--ServerApp.password=", "--allow-root", f"--ServerApp.root_dir={ROOT}",
                                f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}", f"--LabApp.user_settings_dir={tmp_path / 'settings'}"],
                               stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while "is running at" not in log.read_text():
            assert lab.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                for i, path in enumerate(picks):
                    page = browser.new_page(viewport={"width": 1400, "height": 900})
                    rel = path.relative_to(ROOT).as_posix()
                    page.goto(f"http://127.0.0.1:{port}/lab/workspaces/t{i}/tree/{rel}?reset", timeout=120_000)
                    page.wait_for_selector(".jp-NotebookPanel-notebook", timeout=120_000)
                    status = page.locator("#jp-main-statusbar")
                    status.get_by_text("Idle").wait_for(timeout=120_000)  # the kernel answered: its metadata are applied
                    page.wait_for_timeout(2000)
                    dirty = page.locator(".lm-TabBar-tab.jp-mod-dirty").all_inner_texts()
                    assert status.inner_text().split("|")[0].strip().endswith("python3")
                    assert dirty == [], f"JupyterLab marked {dirty} changed on opening {rel}"
                    page.close()
            finally:
                browser.close()
    finally:
        lab.terminate()
        try:
            lab.wait(30)
        except subprocess.TimeoutExpired:
            lab.kill()
            lab.wait(30)
    assert {p: p.read_bytes() for p in picks} == before


@pytest.mark.parametrize("path", sorted((ROOT / "reports").glob("*.ipynb")), ids=lambda p: p.name)
def test_papermill_reads_every_parameter_of_a_report(path):
    """`papermill --help-notebook` and parameter inspection skip a line with more than one `=` (a comment such as
    `# with missing="ffill"` made papermill warn "Unable to parse line" and drop `max_fill`): every assignment of the
    `parameters` cell must be one papermill reads, with its comment as help."""
    import ast
    import papermill
    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    names = [t.id for node in ast.parse("".join(cell["source"])).body if isinstance(node, ast.Assign) for t in node.targets]
    read = papermill.inspect_notebook(str(path))
    assert list(read) == names, f"papermill reads {list(read)}, the cell assigns {names}"
    assert all(p["help"] for p in read.values()), [n for n, p in read.items() if not p["help"]]
