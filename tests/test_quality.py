"""The promises the package makes about itself: py.typed means `mypy -p linuxdmabuf` is clean, the code passes
the linter, and the API reference (docs/api, Sphinx autodoc) builds with warnings as errors."""
import os
import shutil
import subprocess
import sys

import pytest

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINTED = ["linuxdmabuf", "tests", "cdefs", "examples", "tools/run-tests", "tools/bench", "tools/bench-dump",
          "tools/uapi-headers", "tools/boot-times"]


def _run(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=TOP, capture_output=True, text=True, timeout=600, **kwargs)


def test_mypy_is_clean():
    pytest.importorskip("mypy", reason="the test extra (pip install -e '.[test]') brings mypy")
    done = _run("mypy", "-p", "linuxdmabuf")
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or shutil.which("ruff", path=os.path.dirname(sys.executable))
    if ruff is None:
        pytest.skip("the test extra (pip install -e '.[test]') brings ruff")
    done = subprocess.run([ruff, "check", "--output-format", "concise", *LINTED], cwd=TOP, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_api_reference_builds_without_warnings(tmp_path):
    pytest.importorskip("sphinx", reason="the test extra (pip install -e '.[test]') brings sphinx")
    done = _run("sphinx", "-W", "--keep-going", "-q", "-b", "html", "docs/api", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    with open(tmp_path / "core.html") as f:
        page = f.read()
    for name in ("DmaBuf.sync_start", "SyncFile.merge", "Heap.allocate", "Udmabuf.create_list", "UnclosedWarning"):
        assert name.split(".")[-1] in page, name
