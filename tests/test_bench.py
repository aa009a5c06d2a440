"""tools/bench, as BENCHMARKS.md says to run it: one quick round in a VM (host-side, boots one VM)."""
import json
import os
import sys

from helpers import run_group
from test_vm_runner import TOP, VM_LIMIT, boots_vm

BENCH = os.path.join(TOP, "tools", "bench")


@boots_vm
def test_bench_runs_every_operation_three_ways():
    done = run_group([sys.executable, BENCH, "--quick", "--json"], cwd=TOP, timeout=VM_LIMIT)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["accel"] in ("kvm", "tcg") and report["rounds"] == 1
    ops = {"sync_pair", "cpu_access", "heap_alloc_4k", "heap_alloc_1m", "udmabuf_64k", "export_info_wait", "merge",
           "wait_idle", "fill_memcpy", "fill_memset", "v4l2_pair", "kms_show_commit", "kms_show_frame",
           "kms_capture_commit", "kms_capture_frame", "syncobj_signal_wait", "syncobj_import_export"}
    assert set(report["results"]) == ops
    for op, times in report["results"].items():
        for way in ("c", "handrolled", "linuxdmabuf"):
            assert len(times[way]) == 1 and times[way][0] > 0, (op, way)
    assert report["import"]["import linuxdmabuf"]["median"] > 0
    tracing = report["tracing"]
    assert tracing["untraced"] and tracing["traced"] and tracing["events_per_s"][0] > 0
    assert tracing["read"] + tracing["dropped"] >= len(tracing["events_per_s"]) * tracing["burst"]
    assert set(report["native"]) and all(ns > 0 for ns in report["native"].values())


@boots_vm
def test_bench_counts_instructions_three_ways():
    """tools/bench --instructions, quick, on two operations: one counted as a whole loop, one span per pair."""
    done = run_group([sys.executable, BENCH, "--instructions", "--quick", "--only", "sync_pair,v4l2_pair", "--json"],
                     cwd=TOP, timeout=2 * VM_LIMIT)  # Python under valgrind under TCG: about 4 minutes
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert set(report["results"]) == {"sync_pair", "v4l2_pair"}
    for op, counts in report["results"].items():
        # C makes two ioctl(2) calls in well under 1,000 instructions; Python needs thousands
        assert 0 < counts["c"] < 1_000 < counts["handrolled"] and counts["linuxdmabuf"] > 1_000, (op, counts)
    assert 0 < report["span"] < 5_000
    imports = report["import"]
    assert imports["import linuxdmabuf"] > imports["python -c pass"] > 1_000_000
