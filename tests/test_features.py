"""features(), allocate() and the demo, against what this kernel really has.

The oracles are independent of the code under test: the device nodes and
debugfs files, and inside the VM what the kernel spec declares
(vm.kernels.EXPECTED) -- never the same constructors features() calls.
"""
import errno
import json
import os
import subprocess
import sys

import pytest

import linuxdmabuf
from linuxdmabuf import UnsupportedError
from linuxdmabuf.pytest_plugin import expected_features, has, need

pytestmark = pytest.mark.kernel


def test_features_tell_the_truth():
    if os.geteuid() != 0:
        pytest.skip("runs as root: the oracle is the device nodes, which an unprivileged user may not open")
    found = linuxdmabuf.features()
    assert found["udmabuf"] == os.path.exists("/dev/udmabuf")
    assert found["dma_heap"] == bool(os.path.isdir("/dev/dma_heap") and os.listdir("/dev/dma_heap"))
    assert found["sw_sync"] == os.path.exists("/sys/kernel/debug/sync/sw_sync")
    expected = expected_features()
    if expected:  # a kernel of the matrix: what it declares, and nothing it does not
        assert found["udmabuf"] == ("udmabuf" in expected)
        assert found["sw_sync"] == ("sw_sync" in expected)
        assert found["cma_heap"] == any(f.startswith("cma_heap:") for f in expected)
    if found["dma_heap"] or found["udmabuf"]:  # every kernel of the VM matrix is 6.12+
        assert found["export_sync_file"] and found["import_sync_file"] and found["set_deadline"]


def test_no_sw_sync_is_unsupported_naming_the_option():
    if has("sw_sync"):
        pytest.skip(f"kernel {os.uname().release} has sw_sync (the reverse case runs where it does not)")
    with pytest.raises(UnsupportedError, match="CONFIG_SW_SYNC|debugfs is not mounted") as info:
        linuxdmabuf.SwSyncTimeline()
    assert info.value.errno == errno.ENOENT


def test_no_cma_heap_means_no_cma_kind():
    if has("cma_heap"):
        pytest.skip(f"kernel {os.uname().release} has a CMA heap (the reverse case runs where it does not)")
    assert all(linuxdmabuf.Heap(n).kind == "system" for n in linuxdmabuf.Heap.available())


def test_allocate_picks_a_provider_or_the_named_heap():
    if not has("heap:system"):
        need("udmabuf")
    with linuxdmabuf.allocate(5000) as buf:
        assert buf.size == 8192 and buf.exporter in ("system", "udmabuf")
    # No such heap; on a kernel without any (Debian's arm64), the kernel's lack is what is said
    with pytest.raises(FileNotFoundError if os.path.isdir("/dev/dma_heap") else UnsupportedError,
                       match="no-such"):
        linuxdmabuf.allocate(4096, heap="no-such")
    with pytest.raises(ValueError):
        linuxdmabuf.allocate(0)


def test_demo_runs_the_main_job():
    need("udmabuf")
    need("heap:system")
    done = subprocess.run([sys.executable, "-m", "linuxdmabuf", "demo", "--json"], capture_output=True, text=True)
    report = json.loads(done.stdout)
    providers = [r["provider"] for r in report["results"]]
    assert done.returncode == 0 and "udmabuf" in providers and "dma-heap system" in providers
    assert all(r["readback_ok"] and r["fence_status"] == "SIGNALED" for r in report["results"])
    assert report["features"] == linuxdmabuf.features()
    text = subprocess.run([sys.executable, "-m", "linuxdmabuf", "demo"], capture_output=True, text=True)
    assert text.returncode == 0 and "read back ok" in text.stdout and "features:" in text.stdout
