"""DRM sync objects (linuxdmabuf.syncobj) on virtio-gpu, checked against the kernel's own semantics.

Every guest of the VM runner has a virtio-gpu device, whose driver has
sync object timelines (vgem and vkms have none). The cases are IGT's
syncobj_basic, syncobj_wait and syncobj_timeline facts, each checked here on
the running kernel, mixed with the fences this library already makes
(sw_sync and vgem, through `fence_source`).
"""
import asyncio
import errno
import os
import socket
import threading
import time

import pytest

from linuxdmabuf import FenceStatus, SyncFile, UnclosedWarning, UnsupportedError, ipc
from linuxdmabuf.drm import DrmDevice
from linuxdmabuf.pytest_plugin import need_module
from linuxdmabuf.syncobj import MAX_POINT, Syncobj, Timeline, find_device

need_module("syncobj:timeline")  # one skip where no driver has timelines, a failure where the kernel spec expects them

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("dmabuf_leak_check")]


@pytest.fixture
def device():
    with find_device() as device:
        yield device


@pytest.fixture
def timeline(device):
    with Timeline(device) as timeline:
        yield timeline


def later(seconds, call, *args):
    """Run call(*args) in `seconds` from another thread; join() the returned thread."""
    thread = threading.Timer(seconds, call, args)
    thread.start()
    return thread


# -- making, finding, closing ----------------------------------------------------------------

def test_a_timeline_without_a_device_opens_the_first_that_has_timelines():
    with Timeline() as timeline:
        assert timeline.device.driver == "virtio_gpu"
        assert timeline.handle >= 1 and f"handle={timeline.handle}" in repr(timeline)
        device = timeline.device
    assert timeline.closed and device.closed  # the device it opened for itself goes with it
    assert repr(timeline).endswith("[closed]>")
    timeline.close()  # idempotent


def test_close_destroys_the_handle_which_the_kernel_then_reuses(device):
    first = Timeline(device)
    number = first.handle
    first.close()
    with pytest.raises(ValueError, match="closed"):
        first.handle
    with Timeline(device) as second:
        assert second.handle == number  # DRM_IOCTL_SYNCOBJ_DESTROY freed it (handles are reused lowest first)


def test_gc_warning_names_the_handle(device):
    timeline = Timeline(device)
    number = timeline.handle
    with pytest.warns(UnclosedWarning, match=f"unclosed Timeline handle {number} on /dev/dri/"):
        del timeline
    with Timeline(device) as again:
        assert again.handle == number


def test_closing_the_device_first_releases_every_handle():
    device = find_device()
    timeline = Timeline(device)
    device.close()
    with pytest.raises(ValueError, match="DRM device of this Timeline is closed"):
        timeline.signal(1)
    timeline.close()  # nothing to destroy any more; no error, no warning


def test_drivers_without_sync_objects_are_unsupported_naming_the_cap(vgem):
    with pytest.raises(UnsupportedError, match="DRM_CAP_SYNCOBJ_TIMELINE.*virtio_gpu") as info:
        Timeline(vgem)
    assert info.value.errno == errno.EOPNOTSUPP
    with pytest.raises(UnsupportedError, match="DRM_CAP_SYNCOBJ 0"):
        Syncobj(vgem)


def test_bad_devices():
    with pytest.raises(TypeError, match="DrmDevice"):
        Timeline("/dev/dri/card0")
    closed = find_device()
    closed.close()
    with pytest.raises(ValueError, match="closed"):
        Timeline(closed)


# -- points: signal, query, wait ----------------------------------------------------------

def test_a_new_timeline_has_nothing_and_waits_say_so(timeline):
    assert timeline.value == 0 and timeline.last_submitted == 0
    assert timeline.wait(1, 0) is False  # WAIT_FOR_SUBMIT: not yet
    assert timeline.wait(1, 0.05) is False
    with pytest.raises(OSError, match="point 1 has no fence yet.*for_submit=True") as info:
        timeline.wait(1, 0, for_submit=False)
    assert info.value.errno == errno.EINVAL


def test_a_later_point_satisfies_earlier_waits(timeline):
    timeline.signal(3)
    assert timeline.value == 3 and timeline.last_submitted == 3
    assert timeline.wait(1) and timeline.wait(3, for_submit=False) and timeline.wait(2, 0)
    assert timeline.wait(4, 0) is False
    with pytest.raises(OSError) as info:
        timeline.wait(4, 0, for_submit=False)
    assert info.value.errno == errno.EINVAL


def test_a_point_below_the_last_does_not_go_back(timeline):
    timeline.signal(5)
    timeline.signal(2)
    assert timeline.value == 5 and timeline.last_submitted == 5


def test_the_highest_point(timeline):
    timeline.signal(MAX_POINT)
    assert timeline.value == MAX_POINT and timeline.wait(MAX_POINT, 0)


def test_wait_for_submit_waits_for_a_point_signaled_later(timeline):
    thread = later(0.3, timeline.signal, 2)
    started = time.monotonic()
    try:
        assert timeline.wait(2, 30)
    finally:
        thread.join()
    assert time.monotonic() - started >= 0.25


def test_wait_times_out_on_an_absolute_deadline(timeline):
    started = time.monotonic()
    assert timeline.wait(1, 0.3) is False
    assert 0.25 <= time.monotonic() - started < 10


def test_an_unsignaled_fence_holds_its_point_and_the_points_after(timeline, fence_source):
    fence = fence_source.fence()
    try:
        timeline.import_sync_file(fence, 2)
        assert timeline.last_submitted == 2 and timeline.value == 0
        assert timeline.wait(2, 0.05) is False and timeline.wait(1, 0) is False
        with timeline.export_sync_file(2) as exported:
            assert not exported.signaled
            fence_source.signal(fence)
            assert timeline.wait(2, 30) and exported.wait(30)
        assert timeline.value == 2
    finally:
        fence.close()


def test_query_after_out_of_order_imports(timeline, fence_source):
    """A fence imported below the last point is raised to it, on a chain of its own: it holds that point too."""
    first, second = fence_source.fence(), fence_source.fence()
    try:
        timeline.import_sync_file(first, 5)
        timeline.import_sync_file(second, 3)
        timeline.signal(7)
        assert (timeline.value, timeline.last_submitted) == (0, 7)
        fence_source.signal(first)
        assert first.wait(30)
        assert timeline.value == 0 and not timeline.wait(5, 0)  # the point-3 fence now stands at 5
        fence_source.signal(second)
        assert timeline.wait(7, 30) and timeline.value == 7
    finally:
        first.close()
        second.close()


# -- sync_files in and out --------------------------------------------------------------------

def test_export_of_an_unsubmitted_point_is_einval(timeline):
    timeline.signal(1)
    with pytest.raises(OSError, match="nothing was submitted at point 2 or beyond.*last submitted: 1") as info:
        timeline.export_sync_file(2)
    assert info.value.errno == errno.EINVAL


def test_an_exported_point_is_a_real_sync_file(timeline):
    timeline.signal(4)
    with timeline.export_sync_file(3) as fence:
        assert isinstance(fence, SyncFile) and fence.signaled and fence.status is FenceStatus.SIGNALED
        assert not os.get_inheritable(fence.fileno())


def test_exported_points_merge_with_other_fences(timeline, fence_source):
    other = fence_source.fence()
    try:
        timeline.signal(1)
        with timeline.export_sync_file(1) as point, point.merge(other) as merged:
            assert not merged.signaled
            fence_source.signal(other)
            assert merged.wait(30)
    finally:
        other.close()


def test_a_merged_sync_file_becomes_a_point(timeline, fence_source):
    a, b = fence_source.fence(), fence_source.fence()
    try:
        with a.merge(b) as both:
            timeline.import_sync_file(both, 10)
        fence_source.signal(a)
        assert a.wait(30) and not timeline.wait(10, 0.05)
        fence_source.signal(b)
        assert timeline.wait(10, 30)
    finally:
        a.close()
        b.close()


def test_bad_fences_and_points(timeline, dma_heap):
    for point in (0, -1, MAX_POINT + 1):
        with pytest.raises(ValueError, match="1..2\\*\\*64-1"):
            timeline.signal(point)
    for point in ("1", 1.0, True, None):
        with pytest.raises(TypeError):
            timeline.wait(point)
    with pytest.raises(ValueError, match="1..2\\*\\*64-1"):
        timeline.export_sync_file(0)
    with dma_heap.allocate(4096) as buf:
        with pytest.raises(TypeError, match="SyncFile, not DmaBuf"):
            timeline.import_sync_file(buf, 1)
    with pytest.raises(TypeError, match="SyncFile, not int"):
        timeline.import_sync_file(3, 1)
    closed = SyncFile.__new__(SyncFile)
    closed._fd = -1
    with pytest.raises(ValueError, match="closed SyncFile"):
        timeline.import_sync_file(closed, 1)
    with pytest.raises(ValueError, match="timeout"):
        timeline.wait(1, -1)
    assert timeline.last_submitted == 0  # nothing reached the kernel


def test_a_closed_timeline_refuses_everything(device):
    timeline = Timeline(device)
    timeline.close()
    for call in (lambda: timeline.signal(1), lambda: timeline.value, lambda: timeline.wait(1, 0),
                 lambda: timeline.export_sync_file(1), timeline.export, timeline.reset):
        with pytest.raises(ValueError, match="Timeline is closed"):
            call()


# -- reset and transfer -----------------------------------------------------------------------

def test_reset_drops_every_point(timeline):
    timeline.signal(6)
    timeline.reset()
    assert timeline.value == 0 and timeline.last_submitted == 0
    with pytest.raises(OSError) as info:
        timeline.wait(1, 0, for_submit=False)
    assert info.value.errno == errno.EINVAL


def test_transfer_moves_a_point_to_another_timeline(device, fence_source):
    fence = fence_source.fence()
    with Timeline(device) as src, Timeline(device) as dst:
        try:
            src.import_sync_file(fence, 3)
            src.transfer(3, dst, 10)
            assert dst.last_submitted == 10 and not dst.wait(10, 0.05)
            fence_source.signal(fence)
            assert dst.wait(10, 30)
        finally:
            fence.close()
        with pytest.raises(OSError, match="nothing was submitted at point 4") as info:
            src.transfer(4, dst, 11)
        assert info.value.errno == errno.EINVAL
        with Syncobj(device) as binary:
            src.transfer(3, binary)
            assert binary.wait(0)
            with pytest.raises(ValueError, match="no points"):
                src.transfer(3, binary, 1)
        with pytest.raises(TypeError, match="needs to_point"):
            src.transfer(3, dst)
        with pytest.raises(TypeError, match="Timeline or Syncobj"):
            src.transfer(3, 5, 1)


def test_transfer_to_another_drm_file_is_refused(timeline):
    timeline.signal(1)
    with Timeline() as elsewhere:
        with pytest.raises(ValueError, match="another DRM file"):
            timeline.transfer(1, elsewhere, 1)


# -- asyncio, with no thread ---------------------------------------------------------------------

def test_wait_async_wakes_on_the_kernels_eventfd(timeline):
    async def main():
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, timeline.signal, 3)
        before = threading.active_count()
        waiting = asyncio.ensure_future(timeline.wait_async(2))
        await asyncio.sleep(0.05)
        assert threading.active_count() == before and not waiting.done()
        return await asyncio.wait_for(waiting, 30)

    assert asyncio.run(main()) is True


def test_wait_async_timeouts_and_cancel_leave_nothing(timeline):
    fds = set(os.listdir("/proc/self/fd"))

    async def main():
        assert await timeline.wait_async(1, 0) is False
        assert await timeline.wait_async(1, 0.1) is False
        task = asyncio.ensure_future(timeline.wait_async(1))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        timeline.signal(1)
        assert await timeline.wait_async(1) is True  # signaled: no eventfd at all

    asyncio.run(main())
    assert set(os.listdir("/proc/self/fd")) == fds


def test_wait_async_on_a_fence_imported_from_another_driver(timeline, fence_source):
    fence = fence_source.fence()

    async def main():
        timeline.import_sync_file(fence, 1)
        asyncio.get_running_loop().call_later(0.1, fence_source.signal, fence)
        return await timeline.wait_async(1, 30)

    try:
        assert asyncio.run(main())
    finally:
        fence.close()


# -- sharing with other processes ----------------------------------------------------------------

def test_export_and_fromfd_are_the_same_sync_object(timeline, device):
    fd = timeline.export()
    try:
        assert os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:syncobj_file" and not os.get_inheritable(fd)
        with Timeline.fromfd(fd, device) as again, Timeline.fromfd(fd) as elsewhere:
            assert again.handle != timeline.handle
            again.signal(8)
            assert timeline.value == 8 == elsewhere.value
    finally:
        os.close(fd)


def test_fromfd_refuses_what_is_not_a_sync_object(timeline, dma_heap):
    r, w = os.pipe()
    try:
        with pytest.raises(ValueError, match="not a DRM sync object.*pipe"):
            Timeline.fromfd(r, timeline.device)
    finally:
        os.close(r)
        os.close(w)
    timeline.signal(1)
    with timeline.export_sync_file(1) as fence:
        with pytest.raises(ValueError, match="sync_file"):
            Timeline.fromfd(fence)
        assert not fence.closed


def test_a_timeline_passed_to_a_child_by_fd(timeline):
    fd = timeline.export()
    try:
        pid = os.fork()
        if pid == 0:
            try:
                with Timeline.fromfd(fd) as there:
                    there.signal(4)
                os._exit(0)
            except BaseException:
                os._exit(1)
        assert timeline.wait(4, 60)
        assert os.waitpid(pid, 0)[1] == 0
    finally:
        os.close(fd)


def test_a_timeline_sent_with_ipc(timeline):
    parent, child = socket.socketpair()
    with parent, child:
        pid = os.fork()
        if pid == 0:
            try:
                parent.close()
                _, (there,) = ipc.recv(child, kinds=(Timeline,))
                with there:
                    there.wait(1, 60)
                    there.signal(2)
                os._exit(0)
            except BaseException:
                os._exit(1)
        ipc.send(parent, timeline)
        timeline.signal(1)
        assert timeline.wait(2, 60)
        assert os.waitpid(pid, 0)[1] == 0


def test_ipc_recv_refuses_a_dmabuf_where_a_timeline_is_asked(dma_heap):
    a, b = socket.socketpair()
    with a, b, dma_heap.allocate(4096) as buf:
        ipc.send(a, buf)
        with pytest.raises(ValueError, match="not a Timeline"):
            ipc.recv(b, kinds=(Timeline,))


# -- binary sync objects ------------------------------------------------------------------------

def test_binary_syncobj_signal_wait_reset(device):
    with Syncobj(device) as empty, Syncobj(device, signaled=True) as done:
        assert done.wait(0) and not empty.wait(0)
        with pytest.raises(OSError, match="holds no fence") as info:
            empty.wait(0, for_submit=False)
        assert info.value.errno == errno.EINVAL
        with pytest.raises(OSError, match="holds no fence"):
            empty.export_sync_file()
        empty.signal()
        assert empty.wait(0)
        with empty.export_sync_file() as fence:
            assert fence.signaled
        done.reset()
        assert not done.wait(0)
    with pytest.raises(TypeError, match="signaled must be a bool"):
        Syncobj(device, signaled=1)


def test_binary_syncobj_holds_an_imported_fence(device, fence_source):
    fence = fence_source.fence()
    try:
        with Syncobj(device) as syncobj:
            syncobj.import_sync_file(fence)
            assert not syncobj.wait(0.05)

            async def main():
                asyncio.get_running_loop().call_later(0.1, fence_source.signal, fence)
                return await syncobj.wait_async(30)

            assert asyncio.run(main())
    finally:
        fence.close()


def test_a_drm_device_path_works_as_well(device):
    with DrmDevice(device.path) as same, Timeline(same) as timeline:
        timeline.signal(1)
        assert timeline.value == 1
