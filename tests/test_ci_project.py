"""examples/ci-project, run the way its README and docs/ci.md say: `pytest --linuxdmabuf-vm` on the host.

Host-side; boots one VM on the full kernel (marked slow, bounded by CI_LIMIT).
It checks that the project's tests really ran in the guest: the inner
header names the guest kernel, and the counts are the inner session's.
"""
import os
import shutil
import sys

import pytest
from helpers import run_group

from linuxdmabuf.vm import kernels

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = os.path.join(TOP, "examples", "ci-project")
CI_LIMIT = 600  # seconds, boot included


def cannot_boot():
    missing = [p for p in ("qemu-system-x86_64", "busybox") if not shutil.which(p)]
    if not shutil.which("vng") and not shutil.which("vng", path=os.path.dirname(sys.executable)):
        missing.append("vng")
    try:
        kernels.resolve("full", fetch=False)
    except kernels.KernelError as e:
        missing.append(str(e))
    return ", ".join(missing)


@pytest.mark.slow
@pytest.mark.skipif(bool(os.environ.get("LINUXDMABUF_IN_VM")), reason="host-side (boots a VM)")
@pytest.mark.skipif(bool(cannot_boot()), reason=f"cannot boot a VM here: {cannot_boot()}")
def test_ci_project_passes_in_the_vm_as_a_user_runs_it():
    done = run_group([sys.executable, "-m", "pytest", "--linuxdmabuf-vm"], cwd=PROJECT, timeout=CI_LIMIT)
    out, err = done.stdout, done.stderr
    assert done.returncode == 0, out + err
    full = kernels.resolve("full", fetch=False)
    release = full.version.split("-")[0] if full.version else ""
    assert f"linuxdmabuf-vm: guest kernel {release}" in out and "(full); devices: /dev/udmabuf" in out
    assert "sw_sync" in out.split("linuxdmabuf-vm: guest kernel")[1].splitlines()[0]
    assert out.count("collected 3 items") == 1  # the inner session only: the outer collects nothing
    assert "3 passed" in out and "skipped" not in out and "warning" not in out.lower()
    assert f"linuxdmabuf vm: full kernel {release}" in err and "booted in" in err
