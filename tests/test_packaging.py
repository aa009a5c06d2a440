"""The package as a new user gets it: a plain `pip install` of a fresh copy of the source tree, in a new
virtual environment, runs the tools; a source tree that was never built says how to build it."""
import os
import shutil
import subprocess
import sys

import pytest

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fresh_copy(dest) -> str:
    """The files git tracks, as they are now (a clone of the working tree, uncommitted edits included)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=TOP, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        if os.path.exists(os.path.join(TOP, name)):
            os.makedirs(os.path.dirname(os.path.join(dest, name)), exist_ok=True)
            shutil.copy2(os.path.join(TOP, name), os.path.join(dest, name))
    return str(dest)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    if not shutil.which("git") or not os.path.exists(os.path.join(TOP, ".git")):
        pytest.skip("needs the project's git checkout")
    return _fresh_copy(tmp_path_factory.mktemp("clone"))


def test_an_unbuilt_tree_says_how_to_build_it(fresh):
    # -S: without site-packages, where this environment's own (editable) install would be found first
    done = subprocess.run([sys.executable, "-S", "-c", "import linuxdmabuf"], cwd=fresh, capture_output=True,
                          text=True)
    assert done.returncode == 1
    assert "ImportError: linuxdmabuf._ffi is generated from cdefs/ when the package is built" in done.stderr
    assert "pip install -e ." in done.stderr and "ModuleNotFoundError" not in done.stderr


@pytest.mark.slow
def test_plain_pip_install_runs_info_dump_and_watch(fresh, tmp_path):
    """No extras: psutil and pyudev come with the package. (The new environment sees none of ours.)"""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", fresh],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr
    cli = str(venv / "bin" / "linuxdmabuf")
    info = subprocess.run([cli, "info"], capture_output=True, text=True, cwd="/")
    assert info.returncode in (0, 1) and "Traceback" not in info.stderr, info.stdout + info.stderr
    assert "kernel" in info.stdout.lower()
    dump = subprocess.run([cli, "dump", "--json"], capture_output=True, text=True, cwd="/")
    assert dump.returncode == 0, dump.stderr
    import json

    assert "buffers" in json.loads(dump.stdout)
    watch = subprocess.run([cli, "watch", "--help"], capture_output=True, text=True, cwd="/")
    assert watch.returncode == 0 and "usage: linuxdmabuf watch" in watch.stdout, watch.stderr
    version = subprocess.run([python, "-c", "import linuxdmabuf, importlib.metadata as m; "
                              "print(linuxdmabuf.__version__, m.version('linuxdmabuf'))"],
                             capture_output=True, text=True, cwd="/")
    ours, metadata = version.stdout.split()
    assert ours == metadata  # the version is written once, in linuxdmabuf/__init__.py
    assert os.path.exists(os.path.join(fresh, "LICENSE"))
