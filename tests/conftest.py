"""Test conventions of the project (see README "Tests").

- A test that needs a real kernel object is a kernel-level test: it uses one of
  the plugin's fixtures (dma_heap, dma_heap_cma, udmabuf, sw_sync_timeline) or
  markers (requires_udmabuf, requires_dma_heap, requires_sw_sync), or is marked
  `kernel` by hand. All of these get the `kernel` marker here, skip with the
  precise reason on a host without the feature, and run inside the VM
  (tools/run-tests).
- `unprivileged` tests run as an unprivileged user in the VM.
- The session ends with one line saying where it ran, and with
  $LINUXDMABUF_RESULTS set, writes its counts there as JSON for tools/run-tests
  (with $LINUXDMABUF_LIST_UNPRIVILEGED, the files that hold `unprivileged`
  tests there), and names the test it is running in <results>.running, so
  that a VM stopped at its time-out says which test hung.
"""
import json
import os

import pytest

KERNEL_FIXTURES = {"dma_heap", "dma_heap_cma", "udmabuf", "sw_sync_timeline", "vgem", "fence_source"}
KERNEL_MARKERS = {"requires", "requires_udmabuf", "requires_dma_heap", "requires_sw_sync", "unprivileged"}


def pytest_collection_modifyitems(items):
    unprivileged = set()
    for item in items:
        names = {m.name for m in item.iter_markers()}
        if KERNEL_FIXTURES & set(getattr(item, "fixturenames", ())) or KERNEL_MARKERS & names:
            item.add_marker(pytest.mark.kernel)
        if "unprivileged" in names:
            unprivileged.add(str(item.path))
    listing = os.environ.get("LINUXDMABUF_LIST_UNPRIVILEGED")
    if listing:  # for tools/run-tests' root session: the files its unprivileged session needs to collect
        with open(listing, "w") as f:
            f.write("".join(f"{path}\n" for path in sorted(unprivileged)))


def pytest_runtest_logstart(nodeid, location):
    results = os.environ.get("LINUXDMABUF_RESULTS")
    if results:
        with open(results + ".running", "w") as f:
            f.write(nodeid)


def pytest_terminal_summary(terminalreporter):
    stats = terminalreporter.stats
    counts = {key: len([r for r in stats.get(key, []) if key != "passed" or r.when == "call"])
              for key in ("passed", "failed", "skipped", "error")}
    kernel_passed = len([r for r in stats.get("passed", []) if "kernel" in r.keywords])
    where = "linuxdmabuf-vm" if os.environ.get("LINUXDMABUF_IN_VM") else "host"
    terminalreporter.write_line(
        f"{where} {os.uname().release} (uid {os.getuid()}): {counts['passed']} passed, "
        f"{counts['failed'] + counts['error']} failed, {counts['skipped']} skipped; "
        f"kernel-level tests passed: {kernel_passed}")
    results = os.environ.get("LINUXDMABUF_RESULTS")
    if results:
        with open(results, "w") as f:
            json.dump({"release": os.uname().release, "uid": os.getuid(), **counts,
                       "kernel_passed": kernel_passed}, f)
