"""features(), allocate() and the demo, against what this kernel really has."""
import json
import os
import subprocess
import sys

import pytest

import linuxdmabuf
from linuxdmabuf import UnsupportedError

pytestmark = pytest.mark.kernel


def _can(factory) -> bool:
    try:
        factory().close()
        return True
    except OSError:
        return False


def test_features_tell_the_truth():
    found = linuxdmabuf.features()
    assert found["udmabuf"] == _can(lambda: linuxdmabuf.Udmabuf().allocate(4096))
    assert found["dma_heap"] == any(_can(lambda n=n: linuxdmabuf.Heap(n).allocate(4096))
                                    for n in linuxdmabuf.Heap.available())
    assert found["sw_sync"] == _can(linuxdmabuf.SwSyncTimeline)
    assert found["cma_heap"] == bool(linuxdmabuf.Heap.available(kind="cma"))
    if found["dma_heap"] or found["udmabuf"]:  # every kernel of the VM matrix is 6.12+
        assert found["export_sync_file"] and found["import_sync_file"] and found["set_deadline"]


def test_no_sw_sync_is_unsupported_naming_the_option():
    if os.path.exists("/sys/kernel/debug/sync/sw_sync"):
        pytest.skip(f"kernel {os.uname().release} has sw_sync")
    with pytest.raises(UnsupportedError, match="CONFIG_SW_SYNC"):
        linuxdmabuf.SwSyncTimeline()


def test_no_cma_heap_means_no_cma_kind():
    if linuxdmabuf.Heap.available(kind="cma"):
        pytest.skip(f"kernel {os.uname().release} has a CMA heap")
    assert all(linuxdmabuf.Heap(n).kind == "system" for n in linuxdmabuf.Heap.available())


def test_allocate_picks_a_provider_or_the_named_heap():
    if not (linuxdmabuf.features()["dma_heap"] or linuxdmabuf.features()["udmabuf"]):
        pytest.skip("no dma-buf provider here")
    with linuxdmabuf.allocate(5000) as buf:
        assert buf.size == 8192 and buf.exporter in ("system", "udmabuf")
    with pytest.raises(FileNotFoundError, match="no-such"):
        linuxdmabuf.allocate(4096, heap="no-such")
    with pytest.raises(ValueError):
        linuxdmabuf.allocate(0)


def test_demo_runs_the_main_job():
    done = subprocess.run([sys.executable, "-m", "linuxdmabuf", "demo", "--json"], capture_output=True, text=True)
    report = json.loads(done.stdout)
    providers = [r["provider"] for r in report["results"]]
    assert done.returncode == 0 and "udmabuf" in providers and "dma-heap system" in providers
    assert all(r["readback_ok"] and r["fence_status"] == "SIGNALED" for r in report["results"])
    assert report["features"] == linuxdmabuf.features()
    text = subprocess.run([sys.executable, "-m", "linuxdmabuf", "demo"], capture_output=True, text=True)
    assert text.returncode == 0 and "read back ok" in text.stdout and "features:" in text.stdout
