"""DRM PRIME through vgem: a real driver imports and exports our dma-bufs and fences them.

vgem is built into the full kernel and a module in Debian's (the VM runner
loads it); every kernel of the matrix is expected to have it (the plugin's
`vgem` fixture fails, naming it, where it is missing). vgem signals its fences by itself 10 s after attaching them: every
test here signals well before that, except the one that proves it.
"""
import asyncio
import errno
import os
import time

import pytest
from helpers import open_fds, sealed_memfd

from linuxdmabuf import DmaBuf, FenceStatus, UnsupportedError
from linuxdmabuf.drm import DrmDevice, DumbBuffer, GemObject, Vgem
from linuxdmabuf.pytest_plugin import need

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("dmabuf_leak_check")]


@pytest.fixture
def buf(dma_heap):
    with dma_heap.allocate(8192) as buf:
        yield buf


# -- finding and opening -----------------------------------------------------------

def test_found_by_its_driver_name(vgem):
    version = vgem.version()
    assert vgem.driver == version.name == "vgem" and version.major >= 1
    assert vgem.path.startswith("/dev/dri/card")
    assert "driver='vgem'" in repr(vgem)


def test_unknown_driver_names_what_exists(vgem):
    with pytest.raises(UnsupportedError, match="no DRM device of driver 'nosuch': .*/dev/dri/card.* \\(vgem\\)") as info:
        DrmDevice.find("nosuch")
    assert info.value.errno == errno.ENODEV


@pytest.mark.requires("drm:vkms")
def test_other_drm_device_is_not_vgem(vgem):
    with DrmDevice.find("vkms") as vkms:
        path = vkms.path
    with pytest.raises(ValueError, match="not vgem"):
        Vgem(path)
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        with pytest.raises(ValueError, match="not vgem"):
            Vgem(fd)
        os.fstat(fd)  # refused, so still the caller's and open
    finally:
        os.close(fd)


def test_non_drm_fds_are_refused_and_left_open():
    with pytest.raises(ValueError, match="not a DRM device"):
        DrmDevice("/dev/null")
    fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with pytest.raises(ValueError, match="not a DRM device"):
            DrmDevice(fd)
        os.fstat(fd)
    finally:
        os.close(fd)
    with pytest.raises(FileNotFoundError):
        DrmDevice("/dev/dri/card99")
    with pytest.raises(TypeError):
        DrmDevice(1.5)


# -- dumb buffers, export --------------------------------------------------------------

def test_dumb_buffer_pitch_and_size(vgem):
    with vgem.create_dumb(100, 30, 32) as dumb:
        assert isinstance(dumb, DumbBuffer) and dumb.handle >= 1
        assert (dumb.width, dumb.height, dumb.bpp, dumb.pitch) == (100, 30, 32, 400)
        assert dumb.size == 3 * 4096  # 400 * 30 = 12000, rounded up to pages
    with vgem.create_dumb(10, 10, 16) as dumb:
        assert dumb.pitch == 20


def test_dumb_export_is_a_writable_dmabuf_on_the_same_pages(vgem):
    with vgem.create_dumb(64, 16) as dumb, vgem.prime_export(dumb) as buf:
        assert isinstance(buf, DmaBuf) and buf.exporter == "drm" and buf.size == dumb.size
        assert not buf.readonly
        with buf.map() as m:
            m[100:105] = b"prime"
        with vgem.map_dumb(dumb) as through_drm:
            assert through_drm[100:105] == b"prime"
            through_drm[200:203] = b"drm"
        assert buf.read(3, offset=200) == b"drm"


def test_the_first_export_fixes_the_access_mode(vgem):
    with vgem.create_dumb(16, 16) as dumb:
        with vgem.prime_export(dumb, writable=False) as first, vgem.prime_export(dumb) as second:
            assert first.inode == second.inode
            assert first.readonly and second.readonly  # the kernel reuses the dma-buf of the first export
            with pytest.raises(PermissionError, match="writable=False"):
                second.map(writable=True)


def test_render_node_refuses_dumb_buffers(vgem):
    try:
        render = DrmDevice.find("vgem", render=True)
    except UnsupportedError:
        pytest.skip("vgem has no render node here")
    with render:
        assert render.path.startswith("/dev/dri/renderD")
        with pytest.raises(PermissionError, match="primary node /dev/dri/cardN, not a render node"):
            render.create_dumb(16, 16)


@pytest.mark.parametrize("args, error", [((0, 16), ValueError), ((16, 2**32), ValueError),
                                         ((16.0, 16), TypeError), ((16, 16, 0), ValueError)])
def test_dumb_bad_sizes_are_refused_before_the_ioctl(vgem, args, error):
    with pytest.raises(error):
        vgem.create_dumb(*args)


def test_driver_refuses_a_huge_dumb_buffer(vgem):
    with pytest.raises(OSError) as info:
        vgem.create_dumb(2**31 - 1, 2**31 - 1, 32)
    assert info.value.errno == errno.EINVAL


# -- import ---------------------------------------------------------------------------------

def test_import_and_export_back_is_the_same_dmabuf(vgem, buf):
    idle = buf.info().count
    with vgem.prime_import(buf) as obj:
        assert type(obj) is GemObject
        assert buf.info().count > idle  # vgem holds the dma-buf
        with vgem.prime_export(obj) as back:
            assert back.inode == buf.inode and back.exporter == buf.exporter
    assert buf.info().count == idle  # GEM_CLOSE let go of it


def test_importing_twice_gives_the_same_object(vgem, buf):
    first = vgem.prime_import(buf)
    second = vgem.prime_import(buf)
    assert second is first
    first.close()
    third = vgem.prime_import(buf)
    assert third is not first and first.closed and not third.closed
    third.close()


def test_importing_its_own_export_gives_the_dumb_buffer_back(vgem):
    with vgem.create_dumb(16, 16) as dumb, vgem.prime_export(dumb) as buf:
        assert vgem.prime_import(buf) is dumb


def test_udmabuf_import(vgem, udmabuf):
    memfd = sealed_memfd(4096)
    try:
        with udmabuf.create(memfd) as buf, vgem.prime_import(buf) as obj, vgem.prime_export(obj) as back:
            os.pwrite(memfd, b"memfd", 0)
            assert back.inode == buf.inode and back.read(5) == b"memfd"
    finally:
        os.close(memfd)


def test_gem_object_close_is_idempotent_and_closed_objects_refuse(vgem, buf):
    obj = vgem.prime_import(buf)
    handle = obj.handle
    obj.close()
    obj.close()
    assert obj.closed and "closed" in repr(obj)
    with pytest.raises(ValueError, match="closed"):
        obj.handle
    for call in (lambda: vgem.prime_export(obj), lambda: vgem.fence_attach(obj)):
        with pytest.raises(ValueError, match="closed"):
            call()
    with vgem.create_dumb(16, 16) as reused:
        assert reused.handle == handle  # the kernel reuses the lowest free handle...
        obj.close()
        assert not reused.closed  # ...and the closed object never touched it
        with vgem.prime_export(reused) as still:
            assert still.size == reused.size


def test_handles_die_with_the_drm_file(buf):
    need("drm:vgem")
    device = Vgem()
    idle = buf.info().count
    obj = device.prime_import(buf)
    device.close()
    assert buf.info().count == idle  # closing the DRM file released the import
    obj.close()  # nothing left to release: a no-op, not an ioctl on a closed fd


def test_unclosed_gem_object_is_released_by_the_collector(vgem, buf):
    import gc
    import warnings

    idle = buf.info().count
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        vgem.prime_import(buf)
        gc.collect()
    assert any("unclosed GEM handle" in str(w.message) for w in caught)
    assert buf.info().count == idle


def test_import_refuses_what_is_not_a_dmabuf(vgem, buf):
    with pytest.raises(TypeError, match="DmaBuf"):
        vgem.prime_import(buf.fileno())
    closed = buf.dup()
    closed.close()
    with pytest.raises(ValueError, match="closed"):
        vgem.prime_import(closed)


def test_gem_object_of_another_drm_file_is_refused(vgem, buf):
    with Vgem() as other, other.prime_import(buf) as foreign:
        with pytest.raises(ValueError, match="another DRM file"):
            vgem.prime_export(foreign)
        with pytest.raises(ValueError, match="another DRM file"):
            vgem.fence_attach(foreign)


# -- vgem fences: real implicit fences on our buffers ------------------------------------------

def test_write_fence_blocks_everyone_until_signaled(vgem, buf):
    with vgem.prime_import(buf) as obj:
        fence = vgem.fence_attach(obj, write=True)
        assert fence >= 1
        try:
            assert buf.wait(timeout=0.05) is False
            assert buf.wait(write=True, timeout=0) is False
            with buf.export_sync_file() as sync_file:
                info = sync_file.info()
                assert sync_file.status is FenceStatus.ACTIVE and not sync_file.signaled
                assert [(f.driver_name, f.status) for f in info.fences] == [("vgem", FenceStatus.ACTIVE)]
                with pytest.raises(OSError, match="conflicting fence") as busy:
                    vgem.fence_attach(obj)  # a reader must wait for the writer
                assert busy.value.errno == errno.EBUSY
        finally:
            vgem.fence_signal(fence)
        assert buf.wait(timeout=0) and buf.wait(write=True, timeout=0)
        with pytest.raises(FileNotFoundError, match="already signaled"):
            vgem.fence_signal(fence)


def test_exported_sync_file_signals_with_the_vgem_fence(vgem, buf):
    with vgem.prime_import(buf) as obj:
        fence = vgem.fence_attach(obj, write=True)
        with buf.export_sync_file() as sync_file:
            vgem.fence_signal(fence)
            assert sync_file.wait(timeout=1) and sync_file.status is FenceStatus.SIGNALED


def test_read_fences_block_writers_only_and_share(vgem, buf):
    with vgem.prime_import(buf) as obj:
        first = vgem.fence_attach(obj)
        second = vgem.fence_attach(obj)  # readers do not conflict
        try:
            assert buf.wait(timeout=0) is True
            assert buf.wait(write=True, timeout=0.02) is False
            with pytest.raises(OSError) as busy:
                vgem.fence_attach(obj, write=True)
            assert busy.value.errno == errno.EBUSY
            with buf.export_sync_file() as for_readers, buf.export_sync_file(write=True) as for_writers:
                assert for_readers.signaled and not for_writers.signaled
                assert len(for_writers.info().fences) == 2
        finally:
            vgem.fence_signal(first)
            vgem.fence_signal(second)
        assert buf.wait(write=True, timeout=0)


def test_fence_on_a_vgem_dumb_buffer_is_seen_by_its_export(vgem):
    with vgem.create_dumb(16, 16) as dumb, vgem.prime_export(dumb) as buf:
        fence = vgem.fence_attach(dumb, write=True)
        assert not buf.wait(timeout=0)
        vgem.fence_signal(fence)
        assert buf.wait(timeout=0)


def test_closing_the_drm_file_signals_its_fences(buf):
    need("drm:vgem")
    device = Vgem()
    with device:
        obj = device.prime_import(buf)
        device.fence_attach(obj, write=True)
        assert not buf.wait(timeout=0)
    assert buf.wait(timeout=1)


def test_fence_signal_errors(vgem):
    with pytest.raises(FileNotFoundError, match="never attached here"):
        vgem.fence_signal(1000)
    for bad, error in ((0, ValueError), (2**32, ValueError), (1.0, TypeError), (True, TypeError)):
        with pytest.raises(error):
            vgem.fence_signal(bad)


def test_fence_attach_refuses_non_gem_objects(vgem):
    with pytest.raises(TypeError, match="GemObject"):
        vgem.fence_attach(1)


def test_wait_async_on_a_vgem_fence(vgem, buf):
    """A driver's fence, signaled by a loop callback while a task awaits it, with no thread."""
    import threading

    threads = threading.active_count()

    async def scenario(fence):
        assert await buf.wait_async(timeout=0.01) is False
        waiter = asyncio.create_task(buf.wait_async(write=True, timeout=5))
        await asyncio.sleep(0.02)
        assert not waiter.done()
        asyncio.get_running_loop().call_soon(vgem.fence_signal, fence)
        assert await waiter is True

    with vgem.prime_import(buf) as obj:
        fence = vgem.fence_attach(obj, write=True)
        try:
            asyncio.run(scenario(fence))
        finally:
            if not buf.wait(timeout=0):  # the scenario failed before signaling
                vgem.fence_signal(fence)
    assert threading.active_count() == threads


def test_no_fd_leaks_on_error_paths(vgem, buf):
    before = open_fds()
    with vgem.prime_import(buf) as obj:
        fence = vgem.fence_attach(obj, write=True)
        for _ in range(3):
            with pytest.raises(OSError) as info:  # a read fence beside an unsignaled write fence
                vgem.fence_attach(obj)
            assert info.value.errno == errno.EBUSY
            with pytest.raises(OSError) as info:  # pitch * height overflows
                vgem.create_dumb(2**31 - 1, 2**31 - 1)
            assert info.value.errno == errno.EINVAL
        vgem.fence_signal(fence)
    assert open_fds() == before


@pytest.mark.slow
def test_vgem_signals_its_fence_after_10_s(vgem, buf):
    """The one test that waits for vgem's own timeout: the buffer becomes idle by itself,
    and signaling the fence afterwards is ETIMEDOUT."""
    with vgem.prime_import(buf) as obj:
        fence = vgem.fence_attach(obj, write=True)
        started = time.monotonic()
        assert buf.wait(timeout=20) is True
        assert time.monotonic() - started > 8
        with pytest.raises(TimeoutError, match="10 s timeout"):
            vgem.fence_signal(fence)
