"""pytest plugin: real kernel buffers in your tests (registered as ``linuxdmabuf``).

Inert unless used. Fixtures: ``dma_heap`` (the system heap), ``dma_heap_cma``
(a CMA heap), ``udmabuf`` (the udmabuf device), ``sw_sync_timeline`` (a fresh
timeline), ``dmabuf_leak_check`` (fails a test that leaves dma-buf or
sync_file fds open). Markers: ``requires_udmabuf``,
``requires_dma_heap(name=None)``, ``requires_sw_sync``; each skips with the
precise reason (missing device, no permission and its fix, kernel without the
feature). ``--linuxdmabuf-vm[=SPEC]`` re-runs the whole session inside a VM on
a kernel that has the devices (see ``linuxdmabuf vm``).
"""
import os
import sys

import pytest

MARKERS = {
    "requires_udmabuf": "requires_udmabuf: skip unless /dev/udmabuf can be used",
    "requires_dma_heap": "requires_dma_heap(name=None): skip unless that dma-heap (any, if None) can be used",
    "requires_sw_sync": "requires_sw_sync: skip unless sw_sync timelines can be created (debugfs, CONFIG_SW_SYNC)",
}


def pytest_addoption(parser):
    group = parser.getgroup("linuxdmabuf", "real kernel buffers")
    group.addoption("--linuxdmabuf-vm", nargs="?", const="full", default=None, metavar="SPEC",
                    help="run this pytest session inside a VM on a kernel with real dma-buf devices: "
                         "full (default), debian-7.2, debian-6.12 or a kernel image path")


def pytest_configure(config):
    for line in MARKERS.values():
        config.addinivalue_line("markers", line)


def _unavailable(what: str, name: str | None = None) -> str | None:
    """Why `what` cannot be used here, or None if it can."""
    import linuxdmabuf

    try:
        if what == "udmabuf":
            linuxdmabuf.Udmabuf().close()
        elif what == "sw_sync":
            linuxdmabuf.SwSyncTimeline().close()
        elif name is not None:
            linuxdmabuf.Heap(name).close()
        else:
            heaps = linuxdmabuf.Heap.available()
            if not heaps:
                return f"no dma-heap: /dev/dma_heap is empty or missing (kernel {os.uname().release} " \
                       "without CONFIG_DMABUF_HEAPS_SYSTEM/_CMA)"
            linuxdmabuf.Heap(heaps[0]).close()
    except OSError as e:
        return f"{e.strerror} (kernel {os.uname().release})"
    return None


def pytest_runtest_setup(item):
    for marker in item.iter_markers():
        if marker.name == "requires_udmabuf":
            reason = _unavailable("udmabuf")
        elif marker.name == "requires_sw_sync":
            reason = _unavailable("sw_sync")
        elif marker.name == "requires_dma_heap":
            reason = _unavailable("dma_heap", marker.kwargs.get("name", marker.args[0] if marker.args else None))
        else:
            continue
        if reason:
            pytest.skip(reason)


def _open_or_skip(factory):
    try:
        return factory()
    except OSError as e:
        pytest.skip(f"{e.strerror} (kernel {os.uname().release})")


@pytest.fixture
def dma_heap():
    """The system dma-heap (a linuxdmabuf.Heap); skips where it cannot be opened."""
    from linuxdmabuf import Heap

    with _open_or_skip(lambda: Heap("system")) as heap:
        yield heap


@pytest.fixture
def dma_heap_cma():
    """A CMA dma-heap, found by kind rather than by name; skips where there is none."""
    from linuxdmabuf import Heap

    names = Heap.available(kind="cma")
    if not names:
        pytest.skip(f"no usable CMA dma-heap (kernel {os.uname().release}: CONFIG_DMABUF_HEAPS_CMA and a CMA area, "
                    "e.g. cma=64M, plus access to /dev/dma_heap)")
    with Heap(names[0]) as heap:
        yield heap


@pytest.fixture
def udmabuf():
    """The udmabuf device (a linuxdmabuf.Udmabuf); skips where it cannot be opened."""
    from linuxdmabuf import Udmabuf

    with _open_or_skip(Udmabuf) as device:
        yield device


@pytest.fixture
def sw_sync_timeline():
    """A fresh sw_sync timeline, closed after the test; skips without sw_sync."""
    from linuxdmabuf import SwSyncTimeline

    with _open_or_skip(SwSyncTimeline) as timeline:
        yield timeline


def _kernel_fds() -> dict:
    """This process's dma-buf and sync_file fds: fd -> what /proc shows."""
    found = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith("/dmabuf:") or target == "anon_inode:sync_file":
            found[int(name)] = target
    return found


@pytest.fixture
def dmabuf_leak_check():
    """Fails the test if it leaves dma-buf or sync_file fds open, or lets the
    garbage collector close linuxdmabuf objects it forgot to close."""
    import gc
    import warnings

    before = _kernel_fds()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        yield
        gc.collect()
    leaked = {fd: target for fd, target in _kernel_fds().items() if before.get(fd) != target}
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)
                and str(w.message).startswith("unclosed ")]
    if leaked or unclosed:
        pytest.fail("dma-buf/sync_file leak: " + ", ".join(
            [f"fd {fd} ({target}) left open" for fd, target in sorted(leaked.items())] +
            [f"{message} closed only by the garbage collector" for message in unclosed]))


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    """With --linuxdmabuf-vm: run this same session inside the VM and exit with its status."""
    spec = config.getoption("linuxdmabuf_vm")
    if spec is None or os.environ.get("LINUXDMABUF_IN_VM"):
        return None
    from linuxdmabuf import vm

    args = [a for a in config.invocation_params.args if not a.startswith("--linuxdmabuf-vm")]
    # `--linuxdmabuf-vm SPEC` as two words: drop the SPEC too.
    invocation = list(config.invocation_params.args)
    if "--linuxdmabuf-vm" in invocation:
        i = invocation.index("--linuxdmabuf-vm")
        if i + 1 < len(invocation) and invocation[i + 1] == spec:
            args.remove(spec)
    cmd = [sys.executable, "-m", "pytest", *args]
    try:
        return vm.run(cmd, kernel=spec, cwd=str(config.invocation_params.dir))
    except (vm.VMError, vm.KernelError) as e:
        print(f"linuxdmabuf vm: {e}", file=sys.stderr)
        return getattr(e, "status", vm.EXIT_RUNNER)
