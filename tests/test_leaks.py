"""No leaks: create/close cycles of every object kind, and cycles that fail half-way,
leave this process's fds, the kernel's dma-bufs and its sw_sync timelines exactly
at baseline, with nothing left for the garbage collector to close.

Each cycle is a small function; its parameters name the resources it uses
(made before the baseline is taken). CI runs 30 cycles of each,
LINUXDMABUF_LONG=1 runs 10,000.
"""
import errno
import fcntl
import inspect
import os
import socket

import pytest
from helpers import sealed_memfd
from reliability import at_baseline, free_fds, scaled

import linuxdmabuf
from linuxdmabuf import DmaBuf, Heap, SwSyncTimeline, SyncFile, Udmabuf, ipc
from linuxdmabuf.pytest_plugin import has, present_or_expected

PAGE = os.sysconf("SC_PAGE_SIZE")
RAM = os.sysconf("SC_PHYS_PAGES") * PAGE
CYCLES = scaled(30, 10_000)

pytestmark = [pytest.mark.kernel, pytest.mark.slow]


def raises(error, call, *args, errno_=None, **kwargs):
    """Call and check the exception (and errno) it must raise."""
    with pytest.raises(error) as info:
        call(*args, **kwargs)
    if errno_ is not None:
        assert info.value.errno == errno_, info.value
    return info.value


# -- cycles that succeed: one object made and closed ------------------------------------

def heap_device(heap):
    Heap(heap.name).close()


def udmabuf_device(udmabuf):
    Udmabuf().close()


def timeline_device(timeline):
    SwSyncTimeline().close()


def heap_buffer(heap):
    heap.allocate(PAGE).close()


def heap_buffer_readonly(heap):
    with heap.allocate(3 * PAGE + 1, readonly=True) as buf:
        assert buf.size == 4 * PAGE


def cma_buffer(cma):
    cma.allocate(16 * PAGE).close()


def module_allocate(heap):
    linuxdmabuf.allocate(PAGE).close()


def udmabuf_allocate(udmabuf):
    udmabuf.allocate(2 * PAGE).close()


def udmabuf_create(udmabuf, memfd):
    udmabuf.create(memfd, PAGE, PAGE).close()


def udmabuf_create_list(udmabuf, memfd):
    udmabuf.create_list([(memfd, 0, PAGE), (memfd, 2 * PAGE, PAGE), (memfd, 0, PAGE)]).close()


def export_idle(buf):
    buf.export_sync_file().close()
    buf.export_sync_file(write=True).close()


def export_pending(busy_buf):
    with busy_buf.export_sync_file(write=True) as fence:
        assert not fence.signaled


def import_fence(buf, timeline):
    with timeline.create_fence(0) as fence:  # born signaled: the buffer stays idle
        buf.import_sync_file(fence)


def pending_fence(timeline):
    with timeline.create_fence(2**30) as fence:
        assert not fence.signaled


def fence_error_on_timeline_close(timeline):
    timeline = SwSyncTimeline()
    fence = timeline.create_fence(1)
    timeline.close()
    assert fence.wait(5) and fence.status is linuxdmabuf.FenceStatus.ERROR
    fence.close()


def merge_two_timelines(timeline, timeline2):
    with timeline.create_fence(2**30) as a, timeline2.create_fence(2**30) as b, a.merge(b) as merged:
        assert len(merged.info().fences) == 2


def merge_all_pairwise(timeline, timeline2):
    fences = [timeline.create_fence(2**30), timeline2.create_fence(2**30), timeline.create_fence(2**30 + 1)]
    try:
        SyncFile.merge_all(fences).close()
    finally:
        for fence in fences:
            fence.close()


def dup_fromfd_detach_adopt(buf):
    buf.dup().close()
    DmaBuf.fromfd(buf.fileno()).close()
    copy = buf.dup()
    DmaBuf(copy.detach()).close()


def from_own_pid(buf):
    DmaBuf.from_pid(os.getpid(), buf.fileno()).close()


def map_and_access(buf):
    with buf.map() as m, buf.cpu_access():
        m[0] = m[1]
    buf.write(b"leak-free", PAGE - 3)
    assert buf.read(9, PAGE - 3) == b"leak-free"


def numpy_view(buf):
    from linuxdmabuf import ndarray

    a = ndarray.array(buf, "<u4")
    a[0] += 1
    del a


def info_and_name(buf):
    buf.name = "cycle"
    assert buf.info().name == "cycle" and buf.exporter and buf.size == buf.info().size


def ipc_round_trip(buf, timeline):
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with left, right, timeline.create_fence(2**30) as fence:
        ipc.send(left, buf, fence)
        _, objects = ipc.recv(right)
        assert [type(o) for o in objects] == [DmaBuf, SyncFile]
        for obj in objects:
            obj.close()


SUCCEEDING = [heap_device, udmabuf_device, timeline_device, heap_buffer, heap_buffer_readonly, cma_buffer,
              module_allocate, udmabuf_allocate, udmabuf_create, udmabuf_create_list, export_idle, export_pending,
              import_fence, pending_fence, fence_error_on_timeline_close, merge_two_timelines, merge_all_pairwise,
              dup_fromfd_detach_adopt, from_own_pid, map_and_access, numpy_view, info_and_name, ipc_round_trip]


# -- cycles that fail half-way: the documented exception, nothing kept ----------------------

def heap_size_zero(heap):
    raises(ValueError, heap.allocate, 0)


def heap_size_above_ram(heap):
    raises(OSError, heap.allocate, RAM + PAGE, errno_=errno.ENOMEM)


def cma_pool_exhausted(cma):
    raises(OSError, cma.allocate, 1 << 30, errno_=errno.ENOMEM)  # the kernel's refusal


def heap_missing(heap):
    assert "system" in str(raises(FileNotFoundError, Heap, "no-such-heap"))


def udmabuf_unsealed_memfd(udmabuf, unsealed_memfd):
    assert "F_SEAL_SHRINK" in str(raises(OSError, udmabuf.create, unsealed_memfd, errno_=errno.EINVAL))


def udmabuf_write_sealed_memfd(udmabuf, write_sealed_memfd):
    raises(OSError, udmabuf.create, write_sealed_memfd, errno_=errno.EINVAL)


def udmabuf_past_the_end(udmabuf, memfd):
    raises(OSError, udmabuf.create, memfd, 0, 64 * PAGE, errno_=errno.EINVAL)


def udmabuf_pipe(udmabuf, pipe):
    raises(OSError, udmabuf.create, pipe, 0, PAGE, errno_=errno.EBADFD)


def udmabuf_closed_fd(udmabuf, closed_fd):
    raises(OSError, udmabuf.create, closed_fd, 0, PAGE, errno_=errno.EBADFD)


def udmabuf_dmabuf_as_memfd(udmabuf, buf):
    raises(OSError, udmabuf.create, buf, 0, PAGE, errno_=errno.EBADFD)


def udmabuf_list_last_segment_bad(udmabuf, memfd, unsealed_memfd):
    # The kernel pins the first segments before it refuses the last one.
    raises(OSError, udmabuf.create_list, [(memfd, 0, PAGE), (memfd, PAGE, PAGE), (unsealed_memfd, 0, PAGE)],
           errno_=errno.EINVAL)


def udmabuf_over_size_limit(udmabuf, mib_memfd):
    # The kernel adds up the sizes (one MiB each here) before it looks at any fd.
    limit = Udmabuf.limits()["size_limit_mb"] or 64
    raises(OSError, udmabuf.create_list, [(mib_memfd, 0, 1 << 20)] * (limit + 1), errno_=errno.EINVAL)


def udmabuf_hugetlb_without_huge_pages(udmabuf):
    # A hugetlb memfd is made, then the kernel cannot pin huge pages (none reserved).
    raises(OSError, udmabuf.allocate, PAGE, hugetlb=True)


def udmabuf_unaligned(udmabuf, memfd):
    raises(ValueError, udmabuf.create, memfd, 1, PAGE)


def merge_closed_peer_last(timeline, timeline2):
    with timeline.create_fence(2**30) as a, timeline2.create_fence(2**30) as b:
        closed = timeline.create_fence(2**30 + 1)
        closed.close()
        raises(ValueError, a.merge, b, closed)  # a+b was merged before the closed one was met


def merge_not_a_sync_file_last(timeline, timeline2, buf):
    with timeline.create_fence(2**30) as a, timeline2.create_fence(2**30) as b:
        raises(TypeError, a.merge, b, buf)


def merge_all_closed_peer(timeline, timeline2):
    fences = [timeline.create_fence(2**30), timeline2.create_fence(2**30), timeline.create_fence(2**30 + 1)]
    fences[2].close()
    try:
        raises(ValueError, SyncFile.merge_all, fences)
    finally:
        for fence in fences:
            fence.close()


def import_pipe(buf, pipe):
    raises(OSError, buf.import_sync_file, pipe, errno_=errno.EINVAL)


def adopt_wrong_kind(pipe):
    raises(ValueError, DmaBuf, pipe)
    assert os.fstat(pipe)  # left open: it still belongs to the caller


def fromfd_wrong_kind(buf):
    raises(ValueError, SyncFile.fromfd, buf)


def from_pid_wrong_kind(buf):
    raises(ValueError, SyncFile.from_pid, os.getpid(), buf.fileno())


def map_past_the_end(buf):
    raises(ValueError, buf.map, 0, buf.size + PAGE)


def map_readonly_writable(readonly_buf):
    raises(PermissionError, readonly_buf.map, writable=True)


def write_readonly(readonly_buf):
    raises(PermissionError, readonly_buf.write, b"x")


def sync_end_before_start(udmabuf_buf):
    raises(OSError, udmabuf_buf.sync_end, errno_=errno.EINVAL)


def deadline_of_a_merge(timeline, timeline2):
    with timeline.create_fence(2**30) as a, timeline2.create_fence(2**30) as b, a.merge(b) as merged:
        raises(OSError, timeline.deadline, merged, errno_=errno.EINVAL)


def ipc_recv_wrong_kind(buf, pipe):
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with left, right:
        socket.send_fds(left, [b"x"], [buf.fileno(), pipe, buf.fileno()])
        raises(ValueError, ipc.recv, right)  # every fd received is closed again


FAILING = [heap_size_zero, heap_size_above_ram, cma_pool_exhausted, heap_missing, udmabuf_unsealed_memfd,
           udmabuf_write_sealed_memfd, udmabuf_past_the_end, udmabuf_pipe, udmabuf_closed_fd, udmabuf_dmabuf_as_memfd,
           udmabuf_list_last_segment_bad, udmabuf_over_size_limit, udmabuf_hugetlb_without_huge_pages,
           udmabuf_unaligned, merge_closed_peer_last, merge_not_a_sync_file_last, merge_all_closed_peer, import_pipe,
           adopt_wrong_kind, fromfd_wrong_kind, from_pid_wrong_kind, map_past_the_end, map_readonly_writable,
           write_readonly, sync_end_before_start, deadline_of_a_merge, ipc_recv_wrong_kind]


# -- the resources cycles use, made before the baseline -------------------------------------

def _closed_fd() -> int:
    """An fd number far above anything open, so it stays closed while the cycles run."""
    fd = 1000
    with pytest.raises(OSError) as info:
        os.fstat(fd)
    assert info.value.errno == errno.EBADF
    return fd


class Resources:
    """Makes what a cycle's parameters name, once per test, and closes it after."""

    def __init__(self, request):
        self.request = request
        self.made = {}
        self.closers = []

    def _fd(self, fd):
        self.closers.append(lambda: os.close(fd))
        return fd

    def _obj(self, obj):
        self.closers.append(obj.close)
        return obj

    def get(self, name):
        if name not in self.made:
            self.made[name] = self._make(name)
        return self.made[name]

    def _make(self, name):
        fixture = self.request.getfixturevalue
        if name == "heap":
            return fixture("dma_heap")
        if name == "cma":
            return fixture("dma_heap_cma")
        if name == "udmabuf":
            return fixture("udmabuf")
        if name == "timeline":
            return fixture("sw_sync_timeline")
        if name == "timeline2":
            self.get("timeline")  # skips without sw_sync
            return self._obj(SwSyncTimeline())
        if name == "buf":
            return self._obj(self.get("heap").allocate(2 * PAGE))
        if name == "readonly_buf":
            return self._obj(self.get("heap").allocate(PAGE, readonly=True))
        if name == "udmabuf_buf":
            return self._obj(self.get("udmabuf").allocate(PAGE))
        if name == "busy_buf":
            buf = self._obj(self.get("heap").allocate(PAGE))
            with self.get("timeline").create_fence(2**31 - 1) as fence:  # never reached by the test
                buf.import_sync_file(fence)
            return buf
        if name == "memfd":
            return self._fd(sealed_memfd(4 * PAGE))
        if name == "mib_memfd":
            return self._fd(sealed_memfd(1 << 20))
        if name == "unsealed_memfd":
            return self._fd(sealed_memfd(4 * PAGE, seals=0))
        if name == "write_sealed_memfd":
            return self._fd(sealed_memfd(4 * PAGE, seals=fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_WRITE))
        if name == "pipe":
            r, w = os.pipe()
            os.close(w)
            return self._fd(r)
        if name == "closed_fd":
            return _closed_fd()
        raise AssertionError(f"unknown resource {name}")

    def close(self):
        for close in reversed(self.closers):
            close()


@pytest.fixture
def resources(request):
    made = Resources(request)
    yield made
    made.close()


def _run_cycles(cycle, resources):
    args = {name: resources.get(name) for name in inspect.signature(cycle).parameters}
    cycle(**args)  # once before the baseline: caches and lazy imports are not leaks
    with at_baseline():
        for _ in range(CYCLES):
            cycle(**args)


# resource -> the kernel feature it needs (the others need the system heap or udmabuf, which every
# kernel of the matrix has)
NEEDS = {"cma": "cma_heap", "timeline": "sw_sync", "timeline2": "sw_sync", "busy_buf": "sw_sync"}


def offered(cycles: list) -> list:
    """The cycles whose resources this kernel has or is expected to have (the rest would only skip)."""
    return [c for c in cycles if all(present_or_expected(NEEDS[name])
                                     for name in inspect.signature(c).parameters if name in NEEDS)]


@pytest.mark.parametrize("cycle", offered(SUCCEEDING), ids=lambda f: f.__name__)
def test_create_close_cycles_return_to_baseline(cycle, resources):
    _run_cycles(cycle, resources)


@pytest.mark.parametrize("cycle", offered(FAILING), ids=lambda f: f.__name__)
def test_cycles_failing_half_way_return_to_baseline(cycle, resources):
    _run_cycles(cycle, resources)


# -- out of fds at every step: EMFILE, and nothing kept ----------------------------------------

def _emfile_calls(heap, udmabuf, memfd, buf, fences):
    """Calls that make 1 to 3 fds on their way; each must succeed or raise EMFILE."""
    calls = {
        "Heap()": lambda: Heap(heap.name),
        "Udmabuf()": Udmabuf,
        "Heap.allocate": lambda: heap.allocate(PAGE),
        "Udmabuf.allocate (a memfd, then the dma-buf)": lambda: udmabuf.allocate(PAGE),
        "Udmabuf.create": lambda: udmabuf.create(memfd, 0, PAGE),
        "DmaBuf.dup": buf.dup,
        "DmaBuf.fromfd": lambda: DmaBuf.fromfd(buf.fileno()),
        "DmaBuf.from_pid (a pidfd, then the fd)": lambda: DmaBuf.from_pid(os.getpid(), buf.fileno()),
        "DmaBuf.info": buf.info,
        "DmaBuf.map (mmap keeps a dup)": buf.map,
        "DmaBuf.read": lambda: buf.read(4),
        "DmaBuf.export_sync_file": buf.export_sync_file,
    }
    if fences:
        timeline, a, b, c = fences
        calls.update({
            "SwSyncTimeline()": SwSyncTimeline,
            "SwSyncTimeline.create_fence": lambda: timeline.create_fence(2**30),
            "SyncFile.merge of three (two merges)": lambda: a.merge(b, c),
        })
    return calls


def _close(result) -> None:
    if hasattr(result, "close") and not isinstance(result, OSError):
        result.close()  # an object made (info() and read() make none)


@pytest.mark.parametrize("free", [0, 1, 2])
def test_out_of_fds_every_call_raises_emfile_and_keeps_nothing(free, dma_heap, udmabuf):
    lines = [SwSyncTimeline() for _ in range(3)] if has("sw_sync") else []  # without: the other calls still run
    fences = [line.create_fence(2**30) for line in lines]
    memfd = sealed_memfd(PAGE)
    buf = dma_heap.allocate(PAGE)
    try:
        calls = _emfile_calls(dma_heap, udmabuf, memfd, buf, lines[:1] + fences)
        for what, call in calls.items():
            _close(call())  # with fds to spare: works
            with at_baseline():
                with free_fds(free):
                    try:
                        result = call()
                    except OSError as e:
                        result = e
                _close(result)
            if isinstance(result, OSError):
                assert result.errno == errno.EMFILE and type(result) is OSError, f"{what}: {result!r}"
    finally:
        buf.close()
        os.close(memfd)
        for obj in fences + lines:
            obj.close()
