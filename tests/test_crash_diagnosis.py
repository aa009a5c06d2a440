"""A test session that dies by a signal is diagnosed from the log alone, whichever user it ran as.

tools/run-tests' session runner (the one that runs the root and the nobody
sessions in every VM) runs a session whose test dies by SIGSEGV; its output
must name the signal, show Python's faulthandler traceback with the test's
line, and the kernel's line about the dead process (every guest of the VM
runner boots with print-fatal-signals=1).
"""
import importlib.machinery
import importlib.util
import os
import pwd
import re
import shutil
import tempfile

import pytest

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.kernel

DIES = """import ctypes


def test_dies_here():
    ctypes.string_at(0)  # line 5: a read of address 0
"""


@pytest.fixture(scope="module")
def run_tests():
    loader = importlib.machinery.SourceFileLoader("run_tests", os.path.join(TOP, "tools", "run-tests"))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("run_tests", loader))
    loader.exec_module(module)
    return module


@pytest.mark.parametrize("user", [None, "nobody"])
def test_a_session_killed_by_sigsegv_is_diagnosed(run_tests, user, capfd):
    if not os.environ.get("LINUXDMABUF_IN_VM"):
        pytest.skip("needs the VM runner's guest: root, dmesg, and the kernel's print-fatal-signals=1")
    here = tempfile.mkdtemp(prefix="linuxdmabuf-crash-")
    try:
        os.chmod(here, 0o777)  # the unprivileged session writes its results here
        with open(os.path.join(here, "test_dies.py"), "w") as f:
            f.write(DIES)
        os.chmod(os.path.join(here, "test_dies.py"), 0o644)
        if user:
            os.chown(here, pwd.getpwnam(user).pw_uid, -1)
        counts = run_tests.pytest([os.path.join(here, "test_dies.py"), "-p", "no:cacheprovider", "-q",
                                   "--rootdir", here], os.path.join(here, "results.json"), user=user)
    finally:
        shutil.rmtree(here, ignore_errors=True)
    out = capfd.readouterr().out
    assert counts["failed"] == 1 and counts["passed"] == 0
    assert f"as {user or 'root'} ended without results: killed by SIGSEGV (signal 11)" in out, out
    assert "Fatal Python error: Segmentation fault" in out, out
    assert re.search(r'File ".*test_dies\.py", line 5 in test_dies_here', out), out
    assert re.search(r"run-tests: the kernel about pid \d+: \n  .*(segfault at|potentially unexpected fatal signal 11)",
                     out), out
    assert "run-tests: dmesg tail:" in out
