"""Session-wide test settings: every test, nbdev example and report notebook uses a temporary store.

Set before any kernel starts, so nbval's kernels inherit it too; a developer's data/ is never touched."""
import os
import tempfile

_tmp = tempfile.mkdtemp(prefix="portopt-test-")
os.environ.setdefault("PORTOPT_STORE", os.path.join(_tmp, "portopt.sqlite"))
os.environ.setdefault("PORTOPT_RUNS", os.path.join(_tmp, "runs"))


# What a machine without the database stack or a browser skipped, in one line at the end of `make test`.
_NEEDS = {"the local Supabase stack (PostgreSQL, nginx, PostgREST)": ("supabase stack", "postgrest", "nginx", "postgresql"),
          "Chromium": ("chromium", "playwright", "voila")}


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    counts = dict.fromkeys(_NEEDS, 0)
    for report in terminalreporter.stats.get("skipped", []):
        reason = str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr).lower()
        for need, words in _NEEDS.items():
            if any(w in reason for w in words):
                counts[need] += 1
                break
    parts = [f"{n} test{'s' if n != 1 else ''} needing {need}" for need, n in counts.items() if n]
    if parts:
        config._portopt_skipped = f"skipped {' and '.join(parts)}: `make system-deps` installs what they need"


def pytest_unconfigure(config):
    "After pytest's own summary, so that it is the last line of `make test`."
    line = getattr(config, "_portopt_skipped", None)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if line and reporter is not None:
        reporter.write_line(line, yellow=True, bold=True)
