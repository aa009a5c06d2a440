"""Lifetimes across threads and mappings: close() in one thread while another uses or
waits on the object, fd numbers reused meanwhile, and mappings or numpy views that
outlive their DmaBuf (test_fd_protocol.py covers the single-threaded protocol)."""
import errno
import gc
import mmap
import os
import threading
import time
import warnings

import pytest
from helpers import sealed_memfd
from reliability import kernel_dmabufs
from test_fd_protocol import CALLS

PAGE = os.sysconf("SC_PAGE_SIZE")
pytestmark = pytest.mark.kernel


def in_thread(call):
    """Run `call` in another thread; its result or exception."""
    box = {}

    def run():
        try:
            box["result"] = call()
        except BaseException as e:  # noqa: BLE001 -- handed back
            box["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    assert not thread.is_alive()
    if "error" in box:
        raise box["error"]
    return box["result"]


def reuse_number(fd: int) -> int:
    """Make fd number `fd` (just closed) name a new pipe's read end, with data ready
    to read: a wait redirected to it would see POLLIN at once."""
    r, w = os.pipe()
    os.write(w, b"ready")
    os.close(w)
    if r != fd:
        os.dup2(r, fd, inheritable=False)
        os.close(r)
    return fd


@pytest.fixture(params=["dmabuf", "syncfile"])
def closed_in_main(request, dma_heap):
    buf = dma_heap.allocate(PAGE)
    obj = buf if request.param == "dmabuf" else buf.export_sync_file()
    if obj is not buf:
        buf.close()
    obj.close()
    return obj


def test_closed_in_one_thread_refused_in_another(closed_in_main):
    obj = closed_in_main
    fd = reuse_number(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
    try:
        before = os.fstat(fd)
        for call in CALLS[type(obj)]:
            with pytest.raises(ValueError, match="closed"):
                in_thread(lambda call=call: eval(f"obj.{call}", {"obj": obj}) if call != "set_name"
                          else setattr(obj, "name", "x"))
        assert os.fstat(fd) == before
    finally:
        os.close(fd)


def _blocked_waiter(wait, timeout):
    """Start `wait(timeout)` in a thread; returns (thread, box) once it is blocked."""
    box = {}

    def run():
        start = time.monotonic()
        box["result"] = wait(timeout)
        box["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.3)
    assert thread.is_alive()
    return thread, box


@pytest.mark.parametrize("kind", ["SyncFile.wait", "DmaBuf.wait", "DmaBuf.wait(write=True)"])
def test_a_blocked_wait_outlives_close_and_number_reuse(kind, dma_heap, fence_source):
    """close() in another thread during a wait, and the number reused by a readable pipe:
    the wait goes on on the fence it began with and times out (the fence never signals)."""
    buf = dma_heap.allocate(PAGE)
    fence = fence_source.fence()
    buf.import_sync_file(fence)
    obj = fence if kind == "SyncFile.wait" else buf
    wait = {"SyncFile.wait": fence.wait, "DmaBuf.wait": lambda t: buf.wait(timeout=t),
            "DmaBuf.wait(write=True)": lambda t: buf.wait(write=True, timeout=t)}[kind]
    try:
        thread, box = _blocked_waiter(wait, 1.5)
        fd = obj.fileno()
        obj.close()
        reuse_number(fd)
        thread.join(30)
        assert box["result"] is False and box["seconds"] >= 1.4, box
        os.close(fd)
    finally:
        buf.close()
        fence.close()


def test_a_blocked_wait_sees_its_fence_signal_after_close(dma_heap, fence_source):
    with fence_source.fence() as fence:
        thread, box = _blocked_waiter(fence.wait, 30)
        fd = fence.fileno()
        fence.close()
        reuse_number(fd)
        try:
            fence_source.signal(fence)
            thread.join(30)
            assert box["result"] is True and box["seconds"] < 30
        finally:
            os.close(fd)


def test_a_blocked_sync_start_completes_after_close(dma_heap, fence_source):
    """DMA_BUF_IOCTL_SYNC holds the file while it waits for the fences: closing the
    object meanwhile neither breaks it nor redirects it; the later sync_end is refused."""
    buf = dma_heap.allocate(PAGE)
    with fence_source.fence() as fence:
        buf.import_sync_file(fence)
    thread, box = _blocked_waiter(lambda _: buf.sync_start(), None)
    fd = buf.fileno()
    buf.close()
    reuse_number(fd)
    try:
        fence_source.signal(fence)
        thread.join(30)
        assert "result" in box and box["result"] is None
        with pytest.raises(ValueError, match="closed"):
            buf.sync_end()
    finally:
        os.close(fd)


# -- mappings ------------------------------------------------------------------------------

def test_close_while_mapped_and_viewed_by_numpy(dma_heap):
    import numpy

    buf = dma_heap.allocate(2 * PAGE)
    m = buf.map()
    view = numpy.frombuffer(m, dtype=numpy.uint8)
    buf.close()
    view[:5] = list(b"alive")
    assert m[:5] == b"alive"
    with pytest.raises(BufferError):  # mmap refuses to unmap under a live export
        m.close()
    assert bytes(view[:5]) == b"alive"
    del view
    m.close()


def test_reading_a_mapping_after_the_dmabuf_object_is_gone(dma_heap):
    count = lambda: kernel_dmabufs()[0]
    before = count()
    buf = dma_heap.allocate(PAGE)
    buf.write(b"persist")
    m = buf.map(writable=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # dropped unclosed on purpose
        del buf
        gc.collect()
    assert m[:7] == b"persist" and count() == before + 1  # the mapping keeps the buffer
    m.close()
    assert count() == before


def test_numpy_view_keeps_the_buffer_after_object_and_mapping_are_gone(dma_heap):
    from linuxdmabuf import ndarray

    count = lambda: kernel_dmabufs()[0]
    before = count()
    buf = dma_heap.allocate(PAGE)
    a = ndarray.array(buf, "<u4")
    buf.close()
    del buf
    a[0] = 0xC0FFEE
    assert a[0] == 0xC0FFEE and count() == before + 1
    del a
    gc.collect()
    assert count() == before


@pytest.mark.parametrize("exporter", ["udmabuf", "system"])
def test_no_mapping_past_the_buffer_so_no_sigbus(exporter, request):
    """A udmabuf's mapping beyond its pages would fault with SIGBUS. map() refuses any
    length past the size; the kernel refuses a raw mmap past it (EINVAL); the sealed
    memfd cannot shrink under it; the mapping object bounds-checks every access."""
    device = request.getfixturevalue("udmabuf" if exporter == "udmabuf" else "dma_heap")
    memfd = sealed_memfd(PAGE)
    try:
        buf = device.create(memfd) if exporter == "udmabuf" else device.allocate(PAGE)
        with buf:
            for offset, length in [(0, 2 * PAGE), (PAGE, None), (PAGE, PAGE), (0, PAGE + 1)]:
                with pytest.raises(ValueError):
                    buf.map(offset, length)
            with pytest.raises(OSError) as info:
                mmap.mmap(buf.fileno(), 2 * PAGE, mmap.MAP_SHARED, mmap.PROT_READ)
            assert info.value.errno == errno.EINVAL
            if exporter == "udmabuf":
                with pytest.raises(OSError) as info:
                    os.ftruncate(memfd, 0)
                assert info.value.errno == errno.EPERM  # F_SEAL_SHRINK: its pages cannot go away
            with buf.map() as m:
                with pytest.raises(IndexError):
                    m[PAGE]
                with pytest.raises(ValueError):
                    m.seek(PAGE + 1)
                assert m[PAGE - 1] == 0
    finally:
        os.close(memfd)
