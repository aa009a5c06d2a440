"""pytest plugin: real kernel buffers in your tests (registered as ``linuxdmabuf``).

Inert unless used. Fixtures: ``dma_heap`` (the system heap), ``dma_heap_cma``
(a CMA heap), ``udmabuf`` (the udmabuf device), ``sw_sync_timeline`` (a fresh
timeline), ``dmabuf_leak_check`` (fails a test that leaves dma-buf or
sync_file fds open). Markers: ``requires_udmabuf``,
``requires_dma_heap(name=None)``, ``requires_sw_sync``; each skips with the
precise reason (missing device, no permission and its fix, kernel without the
feature).

``--linuxdmabuf-vm`` (the full kernel) or ``--linuxdmabuf-vm=SPEC`` re-runs
the whole session inside a VM on a kernel that has the devices (see
``linuxdmabuf vm``): same arguments, same directory; the outer pytest collects
nothing, streams the inner output and exits with the inner status; the
rootdir is writable inside (the rest of the filesystem is not). The bare
form never takes the next argument as its SPEC: ``--linuxdmabuf-vm tests/``
runs tests/ on the full kernel.
"""
import os
import re
import sys

import pytest

OPTION = "--linuxdmabuf-vm"

MARKERS = {
    "requires_udmabuf": "requires_udmabuf: skip unless /dev/udmabuf can be used",
    "requires_dma_heap": "requires_dma_heap(name=None): skip unless that dma-heap (any, if None) can be used",
    "requires_sw_sync": "requires_sw_sync: skip unless sw_sync timelines can be created (debugfs, CONFIG_SW_SYNC)",
}


def pytest_addoption(parser):
    group = parser.getgroup("linuxdmabuf", "real kernel buffers (linuxdmabuf)")
    group.addoption(OPTION, nargs="?", const="full", default=None, metavar="SPEC",
                    help="run this pytest session inside a QEMU VM on a kernel with real dma-buf devices: "
                         f"{OPTION} for the full kernel, {OPTION}=SPEC for another: debian-7.2, debian-6.12 "
                         "or a kernel image path (the SPEC needs the '=')")
    group.addoption(f"{OPTION}-cpus", type=int, default=2, metavar="N", help="guest CPUs (default 2)")
    group.addoption(f"{OPTION}-memory", default="2G", metavar="SIZE", help="guest memory (default 2G)")
    group.addoption(f"{OPTION}-timeout", type=float, default=3600, metavar="SECONDS",
                    help="kill the VM after this long (default 3600)")


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config, parser, args):
    """Make a bare --linuxdmabuf-vm mean the full kernel instead of eating the next argument.

    argparse's optional value (nargs="?") would take `tests/` in
    `--linuxdmabuf-vm tests/` as the SPEC; rewriting the bare flag to
    `--linuxdmabuf-vm=full` keeps `tests/` a test path. pytest parsed the known
    arguments once already (to find the initial conftests): parse them again.
    """
    if OPTION not in args:
        return
    args[:] = [f"{OPTION}=full" if arg == OPTION else arg for arg in args]
    import copy

    early_config.known_args_namespace = parser.parse_known_args(args, namespace=copy.copy(early_config.option))


def pytest_configure(config):
    for line in MARKERS.values():
        config.addinivalue_line("markers", line)


def pytest_report_header(config):
    """Inside the VM: which guest kernel ran the session, and what it offers."""
    if not os.environ.get("LINUXDMABUF_IN_VM"):
        return None
    return _vm_line()


def pytest_terminal_summary(terminalreporter, config):
    """Inside the VM with the header hidden (-q, --no-header): the same line at the end."""
    if os.environ.get("LINUXDMABUF_IN_VM") and (terminalreporter.verbosity < 0 or config.option.no_header):
        terminalreporter.write_line(_vm_line())


def _vm_line() -> str:
    spec = os.environ.get("LINUXDMABUF_VM_KERNEL", "?")
    return f"linuxdmabuf-vm: guest kernel {os.uname().release} ({spec}); {_devices()}"


def _devices() -> str:
    from linuxdmabuf import Heap
    from linuxdmabuf.swsync import debugfs_mount

    found = ["/dev/udmabuf"] if os.path.exists("/dev/udmabuf") else []
    found += [f"/dev/dma_heap/{name}" for name in Heap.available()]
    mount = debugfs_mount()
    if mount and os.path.exists(os.path.join(mount, "sync", "sw_sync")):
        found.append("sw_sync")
    return "devices: " + (", ".join(found) or "none")


def _where() -> str:
    return f"(kernel {os.uname().release}, uid {os.getuid()})"


def _reason(e: OSError) -> str:
    return f"{e.strerror} {_where()}"


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
                return ("no dma-heap: /dev/dma_heap is empty or missing -- this kernel has no dma-heaps "
                        f"(CONFIG_DMABUF_HEAPS_SYSTEM/_CMA) {_where()}")
            first_error = None
            for heap in heaps:  # any one that opens will do
                try:
                    linuxdmabuf.Heap(heap).close()
                    return None
                except OSError as e:
                    first_error = first_error or e
            raise first_error
    except OSError as e:
        return _reason(e)
    return None


def pytest_collection_modifyitems(items):
    """Turn each requires_* marker whose need is not met here into a skip, with the reason.

    Done with a skip marker (not a skip raised later) so that the report
    points at the test, like skipif.
    """
    for item in items:
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
                item.add_marker(pytest.mark.skip(reason=reason))
                break


def _open_or_skip(factory):
    try:
        return factory()
    except OSError as e:
        pytest.skip(_reason(e))


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
    from linuxdmabuf.heap import HEAP_DIR

    names = Heap.available(kind="cma")
    if not names:
        # A heap this user cannot open may be a CMA one, except the system
        # heap: the kernel always names that one "system".
        denied = [os.path.join(HEAP_DIR, name) for name in Heap.available()
                  if name != "system" and not os.access(os.path.join(HEAP_DIR, name), os.R_OK)]
        if denied:
            from linuxdmabuf._sys import GRANT_ACCESS

            pytest.skip(f"no CMA dma-heap this user may open: {', '.join(denied)}: Permission denied -- "
                        f"{GRANT_ACCESS} {_where()}")
        pytest.skip("no CMA dma-heap -- this kernel has none: it needs CONFIG_DMABUF_HEAPS_CMA and a CMA area, "
                    f"e.g. cma=64M on the kernel command line {_where()}")
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


def _collected_by_gc(message) -> bool:
    """Whether a warning is linuxdmabuf's "unclosed <Class> fd=N" (an object the garbage collector closed)."""
    import linuxdmabuf
    from linuxdmabuf._fd import FdObject

    match = re.fullmatch(r"unclosed (\w+) fd=\d+", str(message.message))
    cls = getattr(linuxdmabuf, match.group(1), None) if match else None
    return issubclass(message.category, ResourceWarning) and isinstance(cls, type) and issubclass(cls, FdObject)


@pytest.fixture
def dmabuf_leak_check():
    """Fails the test if it leaves dma-buf or sync_file fds open, or lets the
    garbage collector close linuxdmabuf objects it forgot to close.

    Compares this process's dma-buf and sync_file fds (/proc/self/fd) when the
    fixture is torn down with those open when it was set up: fixtures set up
    before it may keep theirs. The failure is reported at teardown (pytest
    counts it as an error) and names each fd. Other warnings of the test go on
    to pytest as usual.
    """
    import gc
    import warnings

    before = _kernel_fds()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        yield
        gc.collect()
    ours = [w for w in caught if _collected_by_gc(w)]
    for w in caught:
        if w not in ours:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    leaked = {fd: target for fd, target in _kernel_fds().items() if before.get(fd) != target}
    if leaked or ours:
        pytest.fail("dma-buf/sync_file leak: " + ", ".join(
            [f"fd {fd} ({target}) left open" for fd, target in sorted(leaked.items())] +
            [f"{w.message} closed only by the garbage collector" for w in ours]), pytrace=False)


def _inner_command(config) -> list:
    """This pytest command line for the VM: the same interpreter and entry point, without our option."""
    args, skip_next = [], False
    for arg in config.invocation_params.args:
        if arg == OPTION or arg.startswith(f"{OPTION}="):
            continue
        if skip_next:
            skip_next = False
            continue
        if arg in (f"{OPTION}-cpus", f"{OPTION}-memory", f"{OPTION}-timeout"):
            skip_next = True  # and its value
            continue
        if arg.startswith((f"{OPTION}-cpus=", f"{OPTION}-memory=", f"{OPTION}-timeout=")):
            continue
        args.append(arg)
    script = sys.argv[0] if sys.argv else ""
    if os.path.basename(script) in ("pytest", "py.test") and os.path.isfile(script):
        # The console script: unlike `python -m pytest`, it does not put the
        # current directory on sys.path. Keep that difference.
        return [sys.executable, os.path.abspath(script), *args]
    return [sys.executable, "-m", "pytest", *args]


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    """With --linuxdmabuf-vm: run this same session inside the VM and exit with its status."""
    spec = config.getoption("linuxdmabuf_vm")
    if spec is None or os.environ.get("LINUXDMABUF_IN_VM") or config.option.help or config.option.version:
        return None  # not asked for, already inside, or pytest only prints its help or version
    from linuxdmabuf import vm

    # The guest sees this machine's files read-only; the rootdir stays
    # writable, as pytest expects (its cache, files the tests write there).
    rootdir = str(config.rootpath)
    rwdirs = [rootdir] if rootdir != "/" and os.access(rootdir, os.W_OK) else []
    try:
        return vm.run(_inner_command(config), kernel=spec, cwd=str(config.invocation_params.dir), rwdirs=rwdirs,
                      cpus=config.getoption("linuxdmabuf_vm_cpus"), memory=config.getoption("linuxdmabuf_vm_memory"),
                      timeout=config.getoption("linuxdmabuf_vm_timeout"))
    except (vm.VMError, vm.KernelError, OSError) as e:
        print(f"linuxdmabuf vm: {e}", file=sys.stderr, flush=True)
        return getattr(e, "status", vm.EXIT_RUNNER)
