"""DmaBuf on real buffers: identity, names, mappings, CPU access, implicit fences."""
import errno
import os
import signal
import sys
import time

import pytest

from linuxdmabuf import DmaBuf, FenceStatus
from linuxdmabuf import dmabuf as dmabuf_module
from linuxdmabuf._uapi import ffi

PAGE = os.sysconf("SC_PAGE_SIZE")
pytestmark = pytest.mark.kernel


@pytest.fixture(params=["system", "udmabuf"])
def make_buf(request):
    """Buffers from each exporter: the system heap and udmabuf."""
    device = request.getfixturevalue("dma_heap" if request.param == "system" else "udmabuf")
    made = []

    def make(size=4 * PAGE):
        buf = device.allocate(size)
        made.append(buf)
        return buf

    yield make
    for buf in made:
        buf.close()


def test_size_from_lseek_matches_fdinfo(make_buf):
    buf = make_buf(3 * PAGE + 1)
    assert buf.size == 4 * PAGE == len(buf) == buf.info().size
    fd = buf.fileno()
    assert os.lseek(fd, 0, os.SEEK_SET) == 0
    with pytest.raises(OSError) as info:  # the kernel allows SEEK_END/SEEK_SET with offset 0 only
        os.lseek(fd, 0, os.SEEK_CUR)
    assert info.value.errno == errno.EINVAL


def test_exporter_names(dma_heap, udmabuf):
    with dma_heap.allocate(PAGE) as a, udmabuf.allocate(PAGE) as b:
        assert a.exporter == "system" and b.exporter == "udmabuf"


def test_inode_is_the_buffer_identity_across_fds_and_processes(make_buf):
    buf = make_buf()
    with buf.dup() as copy, DmaBuf.fromfd(buf.fileno()) as other:
        assert buf.inode == copy.inode == other.inode == buf.info().ino
    assert make_buf().inode != buf.inode
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, str(os.fstat(buf.fileno()).st_ino).encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    assert int(os.read(r, 64)) == buf.inode
    os.close(r)


def test_info_fields(make_buf):
    buf = make_buf()
    info = buf.info()
    assert info.count == 1 and info.name == "" and info.flags & os.O_ACCMODE == os.O_RDWR
    assert info.flags & 0o2000000  # fdinfo shows O_CLOEXEC
    with buf.map():
        # The mapping holds a reference; before Python 3.13 (where map() passes
        # trackfd=False), so does the duplicate fd that Python's mmap keeps.
        assert buf.info().count == (2 if sys.version_info >= (3, 13) else 3)


@pytest.mark.parametrize("name", ["", "a", "x" * 31, "naïve-ütf8", "with space"])
def test_name_round_trip(make_buf, name):
    buf = make_buf()
    buf.name = name
    assert buf.name == name and buf.info().name == name
    assert os.readlink(f"/proc/self/fd/{buf.fileno()}") == f"/dmabuf:{name}"


def test_name_bytes_and_rename(make_buf):
    buf = make_buf()
    buf.name = b"first"
    buf.name = b"second"
    assert buf.name == "second"


@pytest.mark.parametrize("name, error", [("x" * 32, ValueError), ("é" * 16, ValueError), ("a\0b", ValueError),
                                         (b"x" * 1000, ValueError), (5, TypeError), (None, TypeError)])
def test_bad_names_refused_before_the_kernel(make_buf, name, error):
    buf = make_buf()
    buf.name = "kept"
    with pytest.raises(error):
        buf.name = name
    assert buf.name == "kept"


def test_map_is_stdlib_mmap_shared_with_the_buffer(make_buf):
    import mmap

    buf = make_buf()
    with buf.map() as m:
        assert isinstance(m, mmap.mmap) and len(m) == buf.size
        with buf.cpu_access():
            m[:4] = b"abcd"
            memoryview(m)[4:8] = b"efgh"
    assert buf.read(8) == b"abcdefgh"
    with buf.map(PAGE, PAGE) as m:
        assert len(m) == PAGE
    with buf.map(writable=False) as m, pytest.raises(TypeError):
        m[0:1] = b"x"


def test_a_mapping_costs_one_fd_only_below_python_3_13(make_buf):
    """mmap.mmap dups the fd it maps unless trackfd=False (3.13+), which map() passes there."""
    import sys

    buf = make_buf()
    before = len(os.listdir("/proc/self/fd"))
    mappings = [buf.map() for _ in range(3)]
    held = len(os.listdir("/proc/self/fd")) - before
    for m in mappings:
        m.close()
    assert held == (0 if sys.version_info >= (3, 13) else 3)


def test_numpy_integers_are_accepted_bools_are_not(make_buf, dma_heap):
    np = pytest.importorskip("numpy")
    with dma_heap.allocate(np.int64(3 * PAGE)) as buf, buf.map(np.uint32(PAGE), np.int64(PAGE)) as m:
        assert buf.size == 3 * PAGE and len(m) == PAGE
        assert buf.write(b"np", np.int16(5)) == 2 and buf.read(np.int8(2), np.int64(5)) == b"np"
    for call in (lambda: dma_heap.allocate(True), lambda: make_buf().map(False)):
        with pytest.raises(TypeError, match="not bool"):
            call()


def test_map_bad_arguments(make_buf):
    buf = make_buf()
    for args, error in [((1,), ValueError), ((-PAGE,), ValueError), ((0, 0), ValueError),
                        ((0, buf.size + 1), ValueError), ((buf.size,), ValueError), ((PAGE, buf.size), ValueError),
                        (("0",), TypeError), ((0, 1.5), TypeError), ((True,), TypeError)]:
        with pytest.raises(error):
            buf.map(*args)


def test_readonly_buffer_maps_read_only(dma_heap):
    with dma_heap.allocate(PAGE, readonly=True) as buf:
        assert buf.readonly and buf.info().flags & os.O_ACCMODE == os.O_RDONLY
        with buf.map() as m:
            assert m[:4] == b"\0\0\0\0"
            with pytest.raises(TypeError):
                m[0:1] = b"x"
        with pytest.raises(PermissionError, match="writable=False"):
            buf.map(writable=True)
        with pytest.raises(PermissionError):
            buf.write(b"x")
        with buf.cpu_access(write=False):  # SYNC has no file-mode check
            pass


def test_mapping_outlives_the_object(make_buf):
    buf = make_buf()
    buf.write(b"persist")
    m = buf.map()
    buf.close()
    assert m[:7] == b"persist"
    m.close()


def test_read_write_helpers(make_buf):
    buf = make_buf(2 * PAGE)
    assert buf.write(b"hello", offset=PAGE - 2) == 5
    assert buf.read(5, PAGE - 2) == b"hello"
    assert buf.read(-1, 2 * PAGE - 1) == b"\0"
    assert buf.read(0) == b"" and buf.write(b"") == 0
    assert len(buf.read()) == 2 * PAGE
    assert buf.write(memoryview(bytearray(b"xy"))) == 2 and buf.read(2) == b"xy"
    import array

    assert buf.write(array.array("I", [1])) == 4
    for call, error in [(lambda: buf.read(1, buf.size), ValueError), (lambda: buf.read(2, buf.size - 1), ValueError),
                        (lambda: buf.write(b"xx", buf.size - 1), ValueError), (lambda: buf.read(1, -1), ValueError),
                        (lambda: buf.write("text"), TypeError), (lambda: buf.read("1"), TypeError)]:
        with pytest.raises(error):
            call()


def _recording_syncs(monkeypatch):
    calls = []
    real = dmabuf_module.raw_ioctl

    def record(fd, request, arg):
        calls.append(ffi.from_buffer("struct dma_buf_sync *", arg).flags)
        return real(fd, request, arg)

    monkeypatch.setattr(dmabuf_module, "raw_ioctl", record)
    return calls


START, END, READ, WRITE = 0, 4, 1, 2


def test_cpu_access_issues_start_then_end_with_flags(make_buf, monkeypatch):
    buf = make_buf()
    calls = _recording_syncs(monkeypatch)
    with buf.cpu_access() as same:
        assert same is buf
    with buf.cpu_access(write=False):
        pass
    with buf.cpu_access(read=False):
        pass
    buf.sync_start(read=True, write=False)
    buf.sync_end(read=True, write=False)
    assert calls == [START | READ | WRITE, END | READ | WRITE, START | READ, END | READ, START | WRITE, END | WRITE,
                     START | READ, END | READ]


def test_cpu_access_ends_on_exception(make_buf, monkeypatch):
    buf = make_buf()
    calls = _recording_syncs(monkeypatch)
    with pytest.raises(ZeroDivisionError):
        with buf.cpu_access():
            1 / 0
    assert calls == [START | READ | WRITE, END | READ | WRITE]


def test_sync_needs_an_access_direction(make_buf):
    buf = make_buf()
    for call in (buf.sync_start, buf.sync_end, buf.cpu_access):
        with pytest.raises(ValueError, match="read, write or both"):
            call(read=False, write=False)


def test_udmabuf_end_before_start_is_the_kernels_einval(udmabuf):
    with udmabuf.allocate(PAGE) as buf:
        with pytest.raises(OSError) as info:
            buf.sync_end()
        assert info.value.errno == errno.EINVAL and "DMA_BUF_IOCTL_SYNC" in str(info.value)


def test_export_of_idle_buffer_is_signaled(make_buf):
    buf = make_buf()
    for write in (False, True):
        with buf.export_sync_file(write=write) as fence:
            assert fence.signaled and fence.status is FenceStatus.SIGNALED
            # The stub fence: newer kernels (~6.16 on) name every signaled fence's driver
            # "detached-driver"; older ones report the stub's own "stub".
            assert fence.info().fences[0].driver_name in ("detached-driver", "stub")


def test_idle_buffer_waits_return_at_once(make_buf):
    buf = make_buf()
    assert buf.wait() and buf.wait(timeout=0) and buf.wait(write=True, timeout=0.5)


@pytest.mark.parametrize("timeout, error", [(-1, ValueError), (float("nan"), ValueError), ("1", TypeError),
                                            (True, TypeError)])
def test_wait_bad_timeouts(make_buf, timeout, error):
    with pytest.raises(error):
        make_buf().wait(timeout=timeout)


def test_wait_accepts_inf_as_no_limit(make_buf):
    assert make_buf().wait(timeout=float("inf"))


def test_import_write_fence_blocks_readers_and_writers(make_buf, fence_source):
    buf = make_buf()
    with fence_source.fence() as fence:
        buf.import_sync_file(fence, write=True)
    assert not buf.wait(timeout=0) and not buf.wait(write=True, timeout=0)
    with buf.export_sync_file() as for_readers, buf.export_sync_file(write=True) as for_writers:
        assert for_readers.status is FenceStatus.ACTIVE and for_writers.status is FenceStatus.ACTIVE
        assert for_readers.info().fences[0].driver_name == fence_source.name
        fence_source.signal(fence)
        assert for_readers.wait(5) and for_writers.wait(5)
    assert buf.wait(timeout=0) and buf.wait(write=True, timeout=0)


def test_import_read_fence_blocks_only_writers(make_buf, fence_source):
    buf = make_buf()
    with fence_source.fence() as fence:
        buf.import_sync_file(fence.fileno(), write=False)  # a plain fd works too
    assert buf.wait(timeout=0) and not buf.wait(write=True, timeout=0)
    with buf.export_sync_file() as for_readers, buf.export_sync_file(write=True) as for_writers:
        assert for_readers.signaled and not for_writers.signaled
    fence_source.signal(fence)
    assert buf.wait(write=True, timeout=5)


def test_sync_start_waits_for_implicit_fences(make_buf, fence_source):
    import threading

    buf = make_buf()
    with fence_source.fence() as fence:
        buf.import_sync_file(fence)
    timer = threading.Timer(0.3, fence_source.signal, [fence])
    start = time.monotonic()
    timer.start()
    with buf.cpu_access():
        waited = time.monotonic() - start
    timer.join()
    assert waited >= 0.25


def test_import_non_sync_file_is_the_kernels_einval(make_buf):
    buf = make_buf()
    r, w = os.pipe()
    try:
        with pytest.raises(OSError) as info:
            buf.import_sync_file(r)
        assert info.value.errno == errno.EINVAL and "not a sync_file" in str(info.value)
    finally:
        os.close(r)
        os.close(w)
    with pytest.raises(TypeError):
        buf.import_sync_file("3")
    other = make_buf().export_sync_file()
    other.close()
    with pytest.raises(ValueError, match="closed"):
        buf.import_sync_file(other)


def test_wait_timeout_survives_signals(make_buf, fence_source):
    """SIGALRM every 50 ms during a 0.5 s wait: no exception, no restart of the full timeout."""
    buf = make_buf()
    with fence_source.fence() as fence:
        buf.import_sync_file(fence)
    hits = []
    old = signal.signal(signal.SIGALRM, lambda *a: hits.append(1))
    signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
    try:
        start = time.monotonic()
        assert buf.wait(timeout=0.5) is False
        elapsed = time.monotonic() - start
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    # A wait that restarted its timeout at each signal would never end under 50 ms alarms.
    assert len(hits) >= 3 and elapsed >= 0.5
    fence_source.signal(fence)


def test_wait_async_on_implicit_fences(make_buf, fence_source):
    import asyncio

    buf = make_buf()
    with fence_source.fence() as fence:
        buf.import_sync_file(fence)

    async def scenario():
        assert await buf.wait_async(timeout=0.05) is False
        waiter = asyncio.ensure_future(buf.wait_async(write=True))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        fence_source.signal(fence)
        return await asyncio.wait_for(waiter, 5)

    assert asyncio.run(scenario()) is True
