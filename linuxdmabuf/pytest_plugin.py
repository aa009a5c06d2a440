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
import sys

import pytest

OPTION = "--linuxdmabuf-vm"
GUEST_ARCHES = ["x86_64", "arm64", "armhf", "i386"]  # linuxdmabuf.vm.ARCHES (tests/test_pytest_plugin.py checks)

MARKERS = {
    "requires": "requires(*features): skip unless these linuxdmabuf.probe features can be used (fail where the "
                "kernel is expected to have them)",
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
    group.addoption(f"{OPTION}-arch", default="x86_64", choices=GUEST_ARCHES,
                    help="the guest's architecture: x86_64 (default, this machine's root filesystem), arm64, "
                         "armhf (32-bit on the arm64 kernel) or i386 (32-bit on the x86_64 kernel), which run the "
                         "session with a cached Debian userland's python3")
    group.addoption(f"{OPTION}-cpus", type=int, default=2, metavar="N", help="guest CPUs (default 2)")
    group.addoption(f"{OPTION}-memory", default="2G", metavar="SIZE", help="guest memory (default 2G)")
    group.addoption(f"{OPTION}-timeout", type=float, default=3600, metavar="SECONDS",
                    help="kill the VM after this long (default 3600)")
    group.addoption(f"{OPTION}-append", action="append", default=[], metavar="ARGS",
                    help="extra kernel command line for the VM, e.g. cma=0 (repeatable; $LINUXDMABUF_VM_APPEND "
                         "adds to it)")


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
    arch = os.environ.get("LINUXDMABUF_VM_ARCH") or "x86_64"
    where = spec if arch == "x86_64" else f"{spec}, {arch} userland"
    return f"linuxdmabuf-vm: guest kernel {os.uname().release} ({where}); {_devices()}; {feature_line()}"


def _devices() -> str:
    from linuxdmabuf import Heap
    from linuxdmabuf._mounts import debugfs_mount

    found = ["/dev/udmabuf"] if os.path.exists("/dev/udmabuf") else []
    found += [f"/dev/dma_heap/{name}" for name in Heap.available()]
    mount = debugfs_mount()
    if mount and os.path.exists(os.path.join(mount, "sync", "sw_sync")):
        found.append("sw_sync")
    return "devices: " + (", ".join(found) or "none")


def feature_line() -> str:
    """ "features expected: A, B; missing: none" (or what is missing, and why) for this kernel."""
    expected = expected_features()
    gone = [unmet(f) for f in expected]
    gone = [str(m) for m in gone if m is not None and not m.denied]
    return (f"features expected: {', '.join(expected) or 'none declared'}; "
            f"missing: {'; '.join(gone) or 'none'}")


def _where() -> str:
    return f"(kernel {os.uname().release}, uid {os.getuid()})"


# -- features: present, skipped with the reason, or a failure where expected ------------------------------------

def expected_features() -> tuple:
    """The features this kernel must have: $LINUXDMABUF_EXPECT (comma-separated feature names of
    linuxdmabuf.probe), else inside the VM runner what its kernel spec declares (vm.kernels.EXPECTED),
    else none."""
    explicit = os.environ.get("LINUXDMABUF_EXPECT")
    if explicit is not None:
        return tuple(f.strip() for f in explicit.split(",") if f.strip())
    if os.environ.get("LINUXDMABUF_IN_VM"):
        from linuxdmabuf.vm.kernels import EXPECTED, expected_key

        return EXPECTED.get(expected_key(os.environ.get("LINUXDMABUF_VM_KERNEL", ""),
                                         os.environ.get("LINUXDMABUF_VM_ARCH") or "x86_64"), ())
    return ()


def is_expected(feature: str) -> bool:
    """Whether this kernel must have `feature` (a named CMA heap implies "cma_heap", "heap:NAME" and "dma_heap")."""
    expected = expected_features()
    if feature in expected:
        return True
    kind, _, name = feature.partition(":")
    if kind == "heap":
        return f"cma_heap:{name}" in expected
    if feature == "cma_heap":
        return any(e.startswith("cma_heap:") for e in expected)
    if feature == "dma_heap":
        return any(e.startswith(("heap:", "cma_heap:")) for e in expected)
    return False


_probed: dict = {}


def unmet(feature: str):
    """linuxdmabuf.probe.missing(feature), probed once per session."""
    if feature not in _probed:
        from linuxdmabuf.probe import missing

        _probed[feature] = missing(feature)
    return _probed[feature]


def need(feature: str, *, _at_item: bool = False) -> None:
    """Return if `feature` can be used here; else skip the test with the reason -- or fail it, naming
    the feature, where this kernel is expected to have it (a lost feature is a regression, not a skip).
    A feature that is there but denied to this user skips."""
    why = unmet(feature)
    if why is None:
        return
    if not why.denied and is_expected(feature):
        spec = os.environ.get("LINUXDMABUF_VM_KERNEL") or "LINUXDMABUF_EXPECT"
        pytest.fail(f"missing feature {feature}, which kernel {os.uname().release} ({spec}) is expected to have: "
                    f"{why.reason} (uid {os.getuid()})", pytrace=False)
    # From a marker, reported at the test's line like skipif (pytest's own marker skips do the same).
    raise pytest.skip.Exception(f"{why} {_where()}", _use_item_location=_at_item)


def need_module(feature: str) -> None:
    """At the top of a test module all about `feature`: where this kernel lacks it, skip the whole module
    (one skip, naming the feature); where the kernel is expected to have it, fail the module's collection."""
    why = unmet(feature)
    if why is None:
        return
    if not why.denied and is_expected(feature):
        spec = os.environ.get("LINUXDMABUF_VM_KERNEL") or "LINUXDMABUF_EXPECT"
        raise pytest.fail.Exception(f"missing feature {feature}, which kernel {os.uname().release} ({spec}) is "
                                    f"expected to have: {why.reason} (uid {os.getuid()})", pytrace=False)
    module = os.path.basename(sys._getframe(1).f_code.co_filename)  # the report's location is this plugin's
    pytest.skip(f"all of {module}: {why} {_where()}", allow_module_level=True)


def has(feature: str) -> bool:
    """True if `feature` can be used here, False if this kernel lacks it (or this user may not use it);
    fails the test, naming the feature, where the kernel is expected to have it. For tests that do
    more where a feature exists."""
    try:
        need(feature)
    except pytest.skip.Exception:
        return False
    return True


def _marker_features(marker) -> list:
    if marker.name == "requires":
        return list(marker.args)
    if marker.name == "requires_udmabuf":
        return ["udmabuf"]
    if marker.name == "requires_sw_sync":
        return ["sw_sync"]
    if marker.name == "requires_dma_heap":
        name = marker.kwargs.get("name", marker.args[0] if marker.args else None)
        return [f"heap:{name}" if name else "dma_heap"]
    return []


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Each requires* marker's features, before the test's fixtures: skip, or fail where expected."""
    for marker in item.iter_markers():
        for feature in _marker_features(marker):
            need(feature, _at_item=True)


@pytest.fixture
def dma_heap():
    """The system dma-heap (a linuxdmabuf.Heap)."""
    from linuxdmabuf import Heap

    need("heap:system")
    with Heap("system") as heap:
        yield heap


@pytest.fixture
def dma_heap_cma():
    """A CMA dma-heap, found by kind rather than by name."""
    from linuxdmabuf import Heap

    need("cma_heap")
    with Heap(Heap.available(kind="cma")[0]) as heap:
        yield heap


@pytest.fixture
def udmabuf():
    """The udmabuf device (a linuxdmabuf.Udmabuf)."""
    from linuxdmabuf import Udmabuf

    need("udmabuf")
    with Udmabuf() as device:
        yield device


@pytest.fixture
def sw_sync_timeline():
    """A fresh sw_sync timeline, closed after the test."""
    from linuxdmabuf import SwSyncTimeline

    need("sw_sync")
    with SwSyncTimeline() as timeline:
        yield timeline


@pytest.fixture
def vgem():
    """vgem's DRM card (a linuxdmabuf.drm.Vgem): a real importer that attaches real driver fences."""
    from linuxdmabuf.drm import Vgem

    need("drm:vgem")
    with Vgem() as device:
        yield device


class FenceSource:
    """Unsignaled fences from one real source, each signaled when the test says.

    ``fence()`` makes a new unsignaled fence (a SyncFile the test owns), on
    its own timeline or fence context, so that two of them merge into two;
    ``signal(fence)`` signals it. ``name`` is "sw_sync" (a sw_sync timeline
    per fence, advanced by signal()) or "vgem" (a vgem write fence on a page
    of its own, exported with DMA_BUF_IOCTL_EXPORT_SYNC_FILE; vgem itself
    signals it after 10 s). Everything made is closed at teardown.
    """

    def __init__(self, name: str):
        self.name = name
        self._signals: dict = {}  # id(fence) -> (fence, how to signal it)
        self._owned: list = []
        if name == "vgem":
            from linuxdmabuf.drm import Vgem

            self._vgem = self._own(Vgem())

    def _own(self, obj):
        self._owned.append(obj)
        return obj

    def fence(self):
        if self.name == "sw_sync":
            from linuxdmabuf import SwSyncTimeline

            timeline = self._own(SwSyncTimeline())
            fence = timeline.create_fence(1)
            signal = timeline.advance
        else:
            import linuxdmabuf

            buf = self._own(linuxdmabuf.allocate(4096))
            obj = self._own(self._vgem.prime_import(buf))
            fence_id = self._vgem.fence_attach(obj, write=True)
            fence = buf.export_sync_file()

            def signal(vgem=self._vgem, fence_id=fence_id):
                vgem.fence_signal(fence_id)
        self._signals[id(fence)] = (fence, signal)
        return fence

    def signal(self, fence) -> None:
        self._signals[id(fence)][1]()

    def close(self) -> None:
        for obj in reversed(self._owned):  # GEM handles before their device, buffers after
            obj.close()
        self._owned.clear()

    def __repr__(self) -> str:
        return f"<FenceSource {self.name}>"


FENCE_SOURCES = {"sw_sync": "sw_sync", "vgem": "drm:vgem"}


def present_or_expected(feature: str) -> bool:
    """For parametrizing over what this kernel offers: a variant needing `feature` is made where
    the kernel has it (for this user or not) or is expected to have it (it then fails, naming it),
    and left out where the kernel truly lacks it."""
    why = unmet(feature)
    return why is None or why.denied or is_expected(feature)


def pytest_generate_tests(metafunc):
    """`fence_source` runs once per source this kernel has or is expected to have (vgem always)."""
    if "fence_source" in metafunc.fixturenames:
        names = [name for name, feature in FENCE_SOURCES.items() if name == "vgem" or present_or_expected(feature)]
        metafunc.parametrize("fence_source", names, indirect=True)


@pytest.fixture
def fence_source(request):
    """A FenceSource: real unsignaled fences that the test signals (parametrized: sw_sync, vgem)."""
    name = getattr(request, "param", "vgem")
    need(FENCE_SOURCES[name])
    source = FenceSource(name)
    try:
        yield source
    finally:
        source.close()


def _kernel_fds() -> dict:
    """This process's dma-buf, sync_file and syncobj fds: fd -> what /proc shows."""
    from linuxdmabuf._procfs import kernel_fds

    return kernel_fds()


def _origin(obj) -> str:
    """Where a linuxdmabuf object was made: the first frame outside the package of the Python stack
    tracemalloc recorded for it (the fixture traces allocations while it is active)."""
    import tracemalloc

    trace = tracemalloc.get_object_traceback(obj) if obj is not None else None
    if trace is None:
        return ""
    package = os.path.dirname(os.path.abspath(__file__))
    frames = [f for f in trace if not os.path.abspath(f.filename).startswith(package + os.sep)] or list(trace)
    frame = frames[-1]  # tracemalloc lists the oldest call first: the last one outside the package made it
    return f"made at {os.path.relpath(frame.filename)}:{frame.lineno}"


def _fd_owner(fd: int):
    """The open linuxdmabuf object owning fd `fd`, if any."""
    import gc

    from linuxdmabuf._fd import FdObject

    return next((o for o in gc.get_objects() if isinstance(o, FdObject) and o._fd == fd), None)


def _describe_fd(fd: int, target: str, events: list) -> str:
    """What a leaked fd is and where it came from: the stack that made its object, else the trace event
    that brought it into this process."""
    what = f"fd {fd} ({target})"
    if target.startswith("/dmabuf:"):
        from linuxdmabuf.dmabuf import parse_fdinfo

        try:
            with open(f"/proc/self/fdinfo/{fd}", encoding="utf-8", errors="surrogateescape", newline="") as f:
                info = parse_fdinfo(f.read())
            from linuxdmabuf.cma import heap_areas

            area = heap_areas().get(info.exp_name)
            exporter = f"{info.exp_name} (CMA area {area})" if area else info.exp_name
            what = f"fd {fd}: dma-buf inode {info.ino}, exporter {exporter}, {info.size} bytes" + (
                f", name {info.name!r}" if info.name else "")
        except (OSError, KeyError, ValueError):
            pass
        origin = _origin(_fd_owner(fd))
        if not origin:
            came = [e for e in events if e.kind == "fd" and e.fd == fd]
            if came:
                e = came[-1]
                origin = f"came in as dma_buf_fd in pid {e.pid} ({e.comm}), exporter {e.exp_name}"
    else:
        origin = _origin(_fd_owner(fd))
    return what + (f", {origin}" if origin else "") + ", left open"


@pytest.fixture
def dmabuf_leak_check():
    """Fails the test if it leaves dma-buf or sync_file fds open, or lets the
    garbage collector close linuxdmabuf objects it forgot to close.

    Compares this process's dma-buf and sync_file fds (/proc/self/fd) when the
    fixture is torn down with those open when it was set up: fixtures set up
    before it may keep theirs. The failure is reported at teardown (pytest
    counts it as an error) and names each leak: inode, exporter, size and
    name, and where it came from -- the test's line that made the object
    (allocations are traced with tracemalloc while the fixture is active),
    else, where the kernel traces dma-bufs (Linux 7.0+, root), the
    dma_buf_fd event that brought the fd into the process. Other warnings
    of the test go on to pytest as usual.
    """
    import gc
    import tracemalloc
    import warnings

    from linuxdmabuf import UnclosedWarning

    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start(8)
    tracer = _session_tracer()
    if tracer is not None:
        tracer.events()  # what happened before this test is not its doing
    try:
        before = _kernel_fds()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            yield
            gc.collect()
        ours = [w for w in caught if issubclass(w.category, UnclosedWarning)]  # closed by the garbage collector
        for w in caught:
            if w not in ours:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
        leaked = {fd: target for fd, target in _kernel_fds().items() if before.get(fd) != target}
        if leaked or ours:
            events = tracer.events() if tracer is not None else []
            pytest.fail("dma-buf/sync_file leak: " + "; ".join(
                [_describe_fd(fd, target, events) for fd, target in sorted(leaked.items())] +
                [f"{w.message} closed only by the garbage collector"
                 + (f" ({_origin(w.source)})" if _origin(w.source) else "") for w in ours]), pytrace=False)
    finally:
        if started:
            tracemalloc.stop()


_tracer: list = []  # [the session's Tracer of this process, or None], made at the first leak check


def _session_tracer():
    """One Tracer of this process for the whole session, where the kernel traces dma-bufs and this user may:
    enabling and disabling trace events patches the kernel's code (static keys), which is slow, so it is
    done once, not around every test."""
    if not _tracer:
        from linuxdmabuf import UnsupportedError
        from linuxdmabuf.trace import Tracer

        try:
            _tracer.append(Tracer(os.getpid(), buffer_kb=1024))
        except UnsupportedError:  # no tracefs, a kernel without the events, or not root
            _tracer.append(None)
    return _tracer[0]


def pytest_unconfigure(config):
    if _tracer and _tracer[0] is not None:
        _tracer.pop().close()


VM_OPTIONS = (f"{OPTION}-arch", f"{OPTION}-cpus", f"{OPTION}-memory", f"{OPTION}-timeout", f"{OPTION}-append")


def _inner_command(config) -> list:
    """This pytest command line for the VM: the same interpreter and entry point, without our option
    (in a guest of another architecture: its python3 -m pytest)."""
    args, skip_next = [], False
    for arg in config.invocation_params.args:
        if arg == OPTION or arg.startswith(f"{OPTION}="):
            continue
        if skip_next:
            skip_next = False
            continue
        if arg in VM_OPTIONS:
            skip_next = True  # and its value
            continue
        if arg.startswith(tuple(f"{option}=" for option in VM_OPTIONS)):
            continue
        args.append(arg)
    if config.getoption("linuxdmabuf_vm_arch") != "x86_64":
        return ["python3", "-m", "pytest", *args]
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
                      timeout=config.getoption("linuxdmabuf_vm_timeout"),
                      append=config.getoption("linuxdmabuf_vm_append"), arch=config.getoption("linuxdmabuf_vm_arch"))
    except (vm.VMError, vm.KernelError, OSError) as e:
        print(f"linuxdmabuf vm: {e}", file=sys.stderr, flush=True)
        return getattr(e, "status", vm.EXIT_RUNNER)
