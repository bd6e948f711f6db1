"""Session-wide test settings: every test, nbdev example and report notebook uses a temporary store.

Set before any kernel starts, so nbval's kernels inherit it too; a developer's data/ is never touched."""
import os
import tempfile

_tmp = tempfile.mkdtemp(prefix="portopt-test-")
os.environ.setdefault("PORTOPT_STORE", os.path.join(_tmp, "portopt.sqlite"))
os.environ.setdefault("PORTOPT_RUNS", os.path.join(_tmp, "runs"))
