"""The fd protocol every object follows (contract: "All objects that own a file descriptor"),
checked on real kernel objects of every kind."""
import gc
import os
import pickle
import warnings

import pytest
from helpers import cloexec, open_fds

from linuxdmabuf import DmaBuf, Heap, SwSyncTimeline, SyncFile, Udmabuf
from linuxdmabuf.drm import Vgem
from linuxdmabuf.pytest_plugin import need, present_or_expected
from linuxdmabuf.v4l2 import VideoDevice

pytestmark = pytest.mark.kernel


def _make(kind, request):
    """A callable making a new object of `kind` on this kernel (the test skips if it cannot)."""
    if kind == "dmabuf-heap":
        heap = request.getfixturevalue("dma_heap")
        return lambda: heap.allocate(4096)
    if kind == "dmabuf-udmabuf":
        device = request.getfixturevalue("udmabuf")
        return lambda: device.allocate(4096)
    if kind == "syncfile":
        heap = request.getfixturevalue("dma_heap")
        buf = heap.allocate(4096)
        request.addfinalizer(buf.close)
        return buf.export_sync_file
    if kind == "heap":
        request.getfixturevalue("dma_heap")
        return lambda: Heap("system")
    if kind == "udmabuf-device":
        request.getfixturevalue("udmabuf")
        return Udmabuf
    if kind == "sw_sync":
        request.getfixturevalue("sw_sync_timeline")
        return SwSyncTimeline
    if kind == "drm-vgem":
        request.getfixturevalue("vgem")
        return Vgem
    if kind == "v4l2-vivid":
        need("v4l2:vivid")
        return lambda: VideoDevice.find(driver="vivid")
    raise AssertionError(kind)


# Every kind this kernel has (sw_sync only where the kernel has it or is expected to).
KINDS = ["dmabuf-heap", "dmabuf-udmabuf", "syncfile", "heap", "udmabuf-device", "drm-vgem", "v4l2-vivid"] + \
    (["sw_sync"] if present_or_expected("sw_sync") else [])


@pytest.fixture(params=KINDS)
def make(request):
    return _make(request.param, request)


def test_adopt_fileno_closed_close_idempotent(make):
    obj = make()
    fd = obj.fileno()
    assert fd >= 0 and not obj.closed and fd in open_fds()
    obj.close()
    assert obj.closed and fd not in open_fds()
    obj.close()
    assert obj.closed
    with pytest.raises(ValueError):
        obj.fileno()


def test_every_created_fd_is_cloexec(make):
    with make() as obj, obj.dup() as copy, type(obj).fromfd(obj.fileno()) as other:
        assert cloexec(obj.fileno()) and cloexec(copy.fileno()) and cloexec(other.fileno())


def test_context_manager_returns_self_and_closes_on_error(make):
    with pytest.raises(KeyError):
        with make() as obj:
            assert obj.fileno() >= 0
            fd = obj.fileno()
            raise KeyError
    assert obj.closed and fd not in open_fds()


def test_fromfd_duplicates_and_leaves_callers_fd(make):
    with make() as obj:
        copy = type(obj).fromfd(obj.fileno())
        assert type(copy) is type(obj) and copy.fileno() != obj.fileno()
        copy.close()
        assert not obj.closed and obj.fileno() in open_fds()


def test_adopt_takes_ownership(make):
    with make() as obj:
        fd = obj.detach()
    adopted = type(obj)(fd)
    assert adopted.fileno() == fd
    adopted.close()
    assert fd not in open_fds()


def test_detach_gives_fd_back_and_stops_finaliser(make):
    obj = make()
    fd = obj.detach()
    assert obj.closed
    with pytest.raises(ValueError):
        obj.detach()
    del obj
    gc.collect()
    assert fd in open_fds()
    os.close(fd)


def test_dup_is_a_new_object_on_a_new_fd(make):
    with make() as obj, obj.dup() as copy:
        assert type(copy) is type(obj) and copy.fileno() != obj.fileno()
        assert os.fstat(copy.fileno()).st_ino == os.fstat(obj.fileno()).st_ino
    with pytest.raises(ValueError):
        obj.dup()


def test_collection_closes_exactly_its_own_fd_with_resourcewarning(make):
    obj = make()
    fd = obj.fileno()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del obj
        gc.collect()
    assert fd not in open_fds()
    assert any(issubclass(w.category, ResourceWarning) and f"fd={fd}" in str(w.message) for w in caught)


def test_repr_shows_fd_then_closed(make):
    obj = make()
    assert f"fd={obj.fileno()}" in repr(obj) and repr(obj).startswith("<linuxdmabuf.")
    obj.close()
    assert "[closed]" in repr(obj) and "fd=" not in repr(obj)


def test_not_picklable(make):
    with make() as obj, pytest.raises(TypeError, match="pickle"):
        pickle.dumps(obj)


# Every public method on a closed object: ValueError, even when the old fd
# number now belongs to another open file, which must stay untouched.
CALLS = {
    DmaBuf: ["size", "inode", "exporter", "name", "readonly", "info()", "map()", "read()", "write(b'x')",
             "sync_start()", "sync_end()", "cpu_access().__enter__()", "export_sync_file()",
             "import_sync_file(0)", "wait(timeout=0)", "dup()", "detach()", "fileno()", "set_name"],
    SyncFile: ["wait(0)", "signaled", "status", "info()", "merge(obj)", "set_deadline(0)", "dup()", "detach()",
               "fileno()"],
    Heap: ["allocate(4096)", "kind", "dup()", "detach()", "fileno()"],
    Udmabuf: ["create(0)", "create_list([(0, 0, 4096)])", "allocate(4096)", "dup()", "detach()", "fileno()"],
    SwSyncTimeline: ["create_fence(1)", "advance()", "deadline(0)", "dup()", "detach()", "fileno()"],
    Vgem: ["version()", "get_cap(1)", "create_dumb(1, 1)", "fence_signal(1)", "dup()", "detach()", "fileno()"],
    VideoDevice: ["set_format(640, 360, 'YUYV')", "get_format()", "formats()", "export_buffers(1)", "use_buffers([])",
                  "queue(0)", "dequeue(timeout=0)", "start()", "stop()", "dup()", "detach()", "fileno()"],
}


def test_closed_object_never_touches_reused_fd_number(make):
    obj = make()
    fd = obj.fileno()
    obj.close()
    reused = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    if reused != fd:  # make the old number name /dev/null
        os.dup2(reused, fd, inheritable=False)
        os.close(reused)
        reused = fd
    try:
        before = os.fstat(reused)
        for call in CALLS[type(obj)]:
            with pytest.raises(ValueError, match="closed"):
                if call == "set_name":
                    obj.name = "x"
                else:
                    eval(f"obj.{call}", {"obj": obj})
        obj.close()
        assert os.fstat(reused) == before
    finally:
        os.close(reused)


def test_kernel_objects_refuse_each_other(dma_heap, udmabuf):
    with dma_heap.allocate(4096) as buf, buf.export_sync_file() as fence:
        for cls, fd in [(SyncFile, buf.fileno()), (DmaBuf, fence.fileno()), (Heap, udmabuf.fileno()),
                        (Udmabuf, dma_heap.fileno()), (DmaBuf, dma_heap.fileno())]:
            with pytest.raises(ValueError):
                cls(fd)
            assert os.fstat(fd)

