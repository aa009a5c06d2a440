"""linuxdmabuf.v4l2 against the kernel's own V4L2 test drivers: vivid (a camera), vim2m (a memory-to-memory
converter) and vicodec (the FWHT codec). The device exports its buffers as DmaBufs, or fills and reads ours
from the system heap, a CMA heap and udmabuf; the pixels that come back are checked.

vivid is expected on every kernel of the matrix (built into the full kernel, a module on Debian's); vim2m
and vicodec on the full kernel. tools/run-tests boots with vivid.n_devs=2 vivid.multiplanar=1,2, so a
second, multi-planar vivid instance exists too.
"""
import errno
import os
import select
import time

import pytest

from linuxdmabuf import DmaBuf, FenceStatus, v4l2
from linuxdmabuf.pytest_plugin import need
from linuxdmabuf.v4l2 import VideoDevice

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("dmabuf_leak_check")]

W, H = 640, 360  # vivid's default webcam size; vicodec's smallest
VIM2M_W, VIM2M_H = 320, 240


@pytest.fixture
def vivid():
    need("v4l2:vivid")
    with VideoDevice.find(driver="vivid", multiplanar=False) as dev:
        yield dev


@pytest.fixture
def vivid_mplane():
    need("v4l2:vivid")
    with open("/proc/cmdline") as f:
        asked = "vivid.multiplanar=" in f.read()
    try:
        dev = VideoDevice.find(driver="vivid", multiplanar=True)
    except FileNotFoundError as e:
        if asked:  # the kernel was told to make one: its absence is a failure
            raise
        pytest.skip(f"no multi-planar vivid instance: boot with vivid.n_devs=2 vivid.multiplanar=1,2 "
                    f"(tools/run-tests does) ({e})")
    with dev:
        yield dev


@pytest.fixture
def vim2m():
    need("v4l2:vim2m")
    with VideoDevice.find(driver="vim2m", kind="m2m") as dev:
        yield dev


def _vicodec(name: str):
    need("v4l2:vicodec")
    return VideoDevice.find(driver="vicodec", kind="m2m", name=name)


def row_bytes(buf: DmaBuf, fmt, row: int) -> bytes:
    line = fmt.planes[0].bytesperline
    return buf.read(line, row * line)


# -- finding and opening ---------------------------------------------------------------------------

def test_find_by_driver_and_kind(vivid):
    assert vivid.driver == vivid.card == "vivid" and vivid.name.startswith("vivid-") and "capture" in vivid.kinds
    assert not vivid.multiplanar and vivid.path.startswith("/dev/video")
    assert "driver='vivid'" in repr(vivid) and "YUYV" in vivid.formats()


def test_find_names_what_exists_when_nothing_matches(vivid):
    with pytest.raises(FileNotFoundError) as info:
        VideoDevice.find(driver="no-such-driver")
    assert info.value.errno == errno.ENOENT
    assert f"{vivid.path} (vivid: " in str(info.value) and "no V4L2 capture node of driver 'no-such-driver'" in str(info.value)
    with pytest.raises(ValueError, match="kind must be"):
        VideoDevice.find(kind="camera")


def test_a_node_that_is_not_v4l2_is_refused_and_left_open():
    with pytest.raises(ValueError, match="not a V4L2 video node"):
        VideoDevice("/dev/null")
    fd = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    try:
        with pytest.raises(ValueError, match="not a V4L2 video node"):
            VideoDevice(fd)
        os.fstat(fd)
    finally:
        os.close(fd)
    with pytest.raises(FileNotFoundError):
        VideoDevice("/dev/video-no-such-node")


def test_a_node_without_the_queue_asked_for(vivid):
    with pytest.raises(ValueError, match="has no video output queue"):
        vivid.set_format(W, H, "YUYV", queue="output")
    with pytest.raises(ValueError, match="queue must be"):
        vivid.set_format(W, H, "YUYV", queue="input")


# -- formats ---------------------------------------------------------------------------------------

def test_set_format_returns_what_the_driver_chose(vivid):
    fmt = vivid.set_format(W, H, "YUYV")
    assert fmt == v4l2.Format(W, H, "YUYV", (v4l2.PlaneFormat(2 * W, 2 * W * H),))
    assert vivid.get_format() == fmt
    nv12 = vivid.set_format(W, H, "NV12")
    assert nv12.fourcc == "NV12" and nv12.planes[0].sizeimage == W * H * 3 // 2


def test_a_format_the_driver_replaces_is_refused_naming_its_formats(vivid):
    with pytest.raises(ValueError) as info:
        vivid.set_format(W, H, "FWHT")
    assert "vivid does not take FWHT on its capture queue" in str(info.value) and "YUYV" in str(info.value)
    for bad, error in [("YUY", ValueError), ("YUYVV", ValueError), (b"YUYV", TypeError), ("YÜYV", ValueError)]:
        with pytest.raises(error):
            vivid.set_format(W, H, bad)
    for bad, error in [(-1, ValueError), (2**32, ValueError), (640.0, TypeError), (True, TypeError)]:
        with pytest.raises(error):
            vivid.set_format(bad, H, "YUYV")


def test_fourcc_names_round_trip():
    assert v4l2.fourcc_code("YUYV") == 0x56595559 and v4l2.fourcc_name(0x56595559) == "YUYV"
    assert v4l2.fourcc_name(v4l2.fourcc_code("Y16 ") | 1 << 31) == "Y16 -BE"


# -- the device's buffers as dma-bufs --------------------------------------------------------------

def test_exported_capture_buffers_are_dma_bufs_with_frames(vivid):
    fmt = vivid.set_format(W, H, "YUYV")
    bufs = vivid.export_buffers(4)
    try:
        assert len(bufs) >= 4 and all(isinstance(b, DmaBuf) for b in bufs)
        assert {b.exporter for b in bufs} == {"videobuf2_vmalloc"} and len({b.inode for b in bufs}) == len(bufs)
        assert all(b.size >= fmt.planes[0].sizeimage for b in bufs)
        frames = []
        with vivid.streaming():
            for _ in range(3):
                frame = vivid.dequeue(timeout=10)
                assert frame is not None and frame.buffer is bufs[frame.index]
                frames.append(frame)
                with frame.buffer.cpu_access(write=False):
                    assert len(set(row_bytes(frame.buffer, fmt, H - 8))) > 2  # a picture, not a blank
                vivid.queue(frame.index)
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        assert [f.sequence for f in frames] == [0, 1, 2] and all(f.bytesused == (fmt.planes[0].sizeimage,)
                                                                 for f in frames)
        stamps = [f.timestamp_ns for f in frames]
        assert stamps == sorted(stamps) and now - 60 * 10**9 < stamps[0] <= now and not frames[0].error
    finally:
        for b in bufs:
            b.close()


def test_exported_buffer_outlives_the_device_and_carries_implicit_fences(fence_source):
    """vb2 puts no fences on its buffers: a dequeued frame is idle. A fence imported into it blocks
    readers until signaled, like on any dma-buf, though the device does not wait for it."""
    need("v4l2:vivid")
    with VideoDevice.find(driver="vivid", multiplanar=False) as dev:
        dev.set_format(W, H, "YUYV")
        bufs = dev.export_buffers(2)
        with dev.streaming():
            frame = dev.dequeue(timeout=10)
    # the device is closed: its buffers live on in our DmaBufs
    buf = frame.buffer
    try:
        assert buf.wait(timeout=0) and buf.wait(write=True, timeout=0)
        with buf.export_sync_file() as idle:
            assert idle.status is FenceStatus.SIGNALED
        with fence_source.fence() as fence:
            buf.import_sync_file(fence, write=True)
            assert not buf.wait(timeout=0)
            with buf.export_sync_file() as busy:
                assert busy.info().fences[0].driver_name == fence_source.name and not busy.signaled
                fence_source.signal(fence)
                assert busy.wait(5) and buf.wait(timeout=5)
        assert len(buf.read(16)) == 16
    finally:
        for b in bufs:
            b.close()


# -- our dma-bufs in the device --------------------------------------------------------------------

def _reference_row(vivid, fmt) -> bytes:
    """A row near the bottom of vivid's colour bars (the text it prints is at the top), from its own buffers."""
    bufs = vivid.export_buffers(2)
    try:
        with vivid.streaming():
            frame = vivid.dequeue(timeout=10)
            with frame.buffer.cpu_access(write=False):
                return row_bytes(frame.buffer, fmt, H - 8)
    finally:
        vivid.use_buffers([])  # free the device's buffers (ours stay valid until closed)
        for b in bufs:
            b.close()


@pytest.mark.parametrize("provider", ["system", "cma", "udmabuf"])
def test_vivid_captures_into_our_buffers(vivid, provider, request):
    device = request.getfixturevalue({"system": "dma_heap", "cma": "dma_heap_cma", "udmabuf": "udmabuf"}[provider])
    fmt = vivid.set_format(W, H, "YUYV")
    expected = _reference_row(vivid, fmt)
    mine = [device.allocate(fmt.planes[0].sizeimage) for _ in range(3)]
    try:
        vivid.use_buffers(mine)
        with vivid.streaming():
            frame = vivid.dequeue(timeout=10)
            assert frame.buffer is mine[frame.index] and frame.bytesused == (fmt.planes[0].sizeimage,)
            with frame.buffer.cpu_access(write=False):
                assert row_bytes(frame.buffer, fmt, H - 8) == expected  # the same colour bars, in our memory
        vivid.use_buffers([])
    finally:
        for b in mine:
            b.close()


def test_multiplanar_vivid_exports_and_imports_one_buffer_per_plane(vivid_mplane, dma_heap):
    np = pytest.importorskip("numpy")
    from linuxdmabuf import ndarray

    fmt = vivid_mplane.set_format(W, H, "NM12")
    assert vivid_mplane.multiplanar and len(fmt.planes) == 2
    assert fmt.planes[0].sizeimage == W * H and fmt.planes[1].sizeimage == W * H // 2
    exported = vivid_mplane.export_buffers(2)
    try:
        assert all(isinstance(b, tuple) and len(b) == 2 for b in exported)
        with vivid_mplane.streaming():
            frame = vivid_mplane.dequeue(timeout=10)
            y, uv = ndarray.frame(frame.buffer, fmt)
            with frame.buffer[0].cpu_access(write=False), frame.buffer[1].cpu_access(write=False):
                assert y.shape == (H, W) and uv.shape == (H // 2, W // 2, 2) and len(np.unique(y[-8])) > 2
                reference = y[-8].copy(), uv[-4].copy()
    finally:
        vivid_mplane.use_buffers([])
        for planes in exported:
            for b in planes:
                b.close()
    mine = [tuple(dma_heap.allocate(p.sizeimage) for p in fmt.planes) for _ in range(2)]
    try:
        vivid_mplane.use_buffers(mine)
        with vivid_mplane.streaming():
            frame = vivid_mplane.dequeue(timeout=10)
            assert frame.buffer is mine[frame.index] and frame.bytesused == (W * H, W * H // 2)
            y, uv = ndarray.frame(frame.buffer, fmt)
            assert np.array_equal(y[-8], reference[0]) and np.array_equal(uv[-4], reference[1])
        with pytest.raises(TypeError, match="a tuple of 2 DmaBufs"):
            vivid_mplane.use_buffers([mine[0][0]])
        mine[1][1].close()  # one plane of buffer 1 closed after use_buffers(): that buffer is refused
        vivid_mplane.queue(0)
        with pytest.raises(ValueError, match="buffer 1 of the capture queue was closed after use_buffers"):
            vivid_mplane.queue(1)
    finally:
        vivid_mplane.use_buffers([])
        for planes in mine:
            for b in planes:
                b.close()


def test_vim2m_converts_between_our_buffers_pixel_exactly(vim2m, dma_heap, udmabuf):
    """vim2m reads our system-heap buffer on its output queue and writes our udmabuf on its capture queue:
    RGB24 in, BGR24 out, every pixel's bytes swapped; RGB24 in and out, a copy."""
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(7)
    picture = rng.integers(0, 256, (VIM2M_H, VIM2M_W, 3), dtype=np.uint8)
    for out_fourcc, expected in (("BGR3", picture[..., ::-1]), ("RGB3", picture)):
        fin = vim2m.set_format(VIM2M_W, VIM2M_H, "RGB3", queue="output")
        fout = vim2m.set_format(VIM2M_W, VIM2M_H, out_fourcc, queue="capture")
        with dma_heap.allocate(fin.planes[0].sizeimage) as src, udmabuf.allocate(fout.planes[0].sizeimage) as dst:
            src.write(picture.tobytes())
            vim2m.use_buffers([src], queue="output")
            vim2m.use_buffers([dst], queue="capture")
            vim2m.queue(0, queue="output")
            vim2m.queue(0, queue="capture")
            with vim2m.streaming(queue="output"), vim2m.streaming(queue="capture"):
                done = vim2m.dequeue(queue="capture", timeout=30)
                used = vim2m.dequeue(queue="output", timeout=30)
            assert done.buffer is dst and used.buffer is src and done.bytesused == (fout.planes[0].sizeimage,)
            got = np.frombuffer(dst.read(fout.planes[0].sizeimage), np.uint8).reshape(VIM2M_H, VIM2M_W, 3)
            assert np.array_equal(got, expected), out_fourcc
            vim2m.use_buffers([], queue="output")
            vim2m.use_buffers([], queue="capture")


def test_vicodec_encodes_our_frame_and_decodes_it_back(dma_heap, udmabuf):
    """A real codec round trip through our buffers: YU12 in a heap buffer -> the stateful encoder -> FWHT in a
    udmabuf -> the stateful decoder -> YU12 in a heap buffer, close to the original (FWHT is lossy)."""
    np = pytest.importorskip("numpy")
    w, h = 640, 368  # vicodec's YU12 rounds heights to 16 rows
    yy, xx = np.mgrid[0:h, 0:w]
    luma = (64 + xx // 8 + yy // 6).astype(np.uint8)  # smooth: FWHT keeps it well
    chroma = np.full((h // 2, w // 2), 128, np.uint8)
    raw = luma.tobytes() + chroma.tobytes() + chroma.tobytes()
    with _vicodec("stateful-encoder") as enc:
        fin = enc.set_format(w, h, "YU12", queue="output")
        fcoded = enc.set_format(w, h, "FWHT", queue="capture")
        with dma_heap.allocate(fin.planes[0].sizeimage) as src, udmabuf.allocate(fcoded.planes[0].sizeimage) as coded:
            src.write(raw)
            enc.use_buffers([src], queue="output")
            enc.use_buffers([coded], queue="capture")
            enc.queue(0, queue="output")
            enc.queue(0, queue="capture")
            with enc.streaming(queue="output"), enc.streaming(queue="capture"):
                frame = enc.dequeue(queue="capture", timeout=30)
            size = frame.bytesused[0]
            assert frame.buffer is coded and 0 < size < len(raw) // 4  # compressed
            compressed = coded.read(size)
            enc.use_buffers([], queue="output")
            enc.use_buffers([], queue="capture")
    with _vicodec("stateful-decoder") as dec:
        fcoded = dec.set_format(w, h, "FWHT", queue="output")
        fout = dec.set_format(w, h, "YU12", queue="capture")
        with udmabuf.allocate(fcoded.planes[0].sizeimage) as src, dma_heap.allocate(fout.planes[0].sizeimage) as dst:
            src.write(compressed)
            dec.use_buffers([src], queue="output")
            dec.use_buffers([dst], queue="capture")
            dec.queue(0, queue="output", bytesused=size)
            dec.queue(0, queue="capture")
            with dec.streaming(queue="output"), dec.streaming(queue="capture"):
                frame = dec.dequeue(queue="capture", timeout=30)
            assert frame.buffer is dst and frame.bytesused == (len(raw),)
            back = np.frombuffer(dst.read(w * h), np.uint8).reshape(h, w)
            dec.use_buffers([], queue="output")
            dec.use_buffers([], queue="capture")
    error = np.abs(back.astype(int) - luma)
    psnr = 10 * np.log10(255**2 / max(float((error**2).mean()), 1e-9))
    print(f"\nvicodec round trip {w}x{h}: {len(raw)} -> {size} bytes, luma PSNR {psnr:.1f} dB, max error {error.max()}")
    assert psnr > 35


# -- misuse ------------------------------------------------------------------------------------------

def test_a_buffer_too_small_for_the_format_names_the_size_it_needs(vivid, dma_heap):
    fmt = vivid.set_format(W, H, "YUYV")
    with dma_heap.allocate(4096) as small:
        vivid.use_buffers([small])
        with pytest.raises(OSError) as info:
            vivid.queue(0)
        assert info.value.errno == errno.EINVAL
        assert f"4096-byte dma-buf; the format needs {fmt.planes[0].sizeimage} bytes" in str(info.value)
        vivid.use_buffers([])


def test_a_buffer_closed_after_use_buffers_is_refused_even_if_its_fd_number_is_reused(vivid, dma_heap):
    fmt = vivid.set_format(W, H, "YUYV")
    buf = dma_heap.allocate(fmt.planes[0].sizeimage)
    number = buf.fileno()
    vivid.use_buffers([buf])
    buf.close()
    with dma_heap.allocate(fmt.planes[0].sizeimage) as other:
        assert other.fileno() == number  # the lowest free fd: the old number is another file now
        with pytest.raises(ValueError, match="buffer 0 of the capture queue was closed after use_buffers"):
            vivid.queue(0)
        vivid.use_buffers([other])
        vivid.queue(0)  # the open buffer given again is taken
    vivid.use_buffers([])


def test_dequeue_on_a_stopped_queue_and_other_misuse(vivid, dma_heap):
    fmt = vivid.set_format(W, H, "YUYV")
    with pytest.raises(ValueError, match="no buffers on the capture queue"):
        vivid.queue(0)
    with dma_heap.allocate(fmt.planes[0].sizeimage) as buf:
        vivid.use_buffers([buf])
        with pytest.raises(OSError) as info:
            vivid.dequeue(timeout=1)
        assert info.value.errno == errno.EINVAL and "not streaming: start() it" in str(info.value)
        for call, error in [(lambda: vivid.queue(1), ValueError), (lambda: vivid.queue(-1), ValueError),
                            (lambda: vivid.queue("0"), TypeError), (lambda: vivid.use_buffers([b"x"]), TypeError),
                            (lambda: vivid.dequeue(timeout=-1), ValueError), (lambda: vivid.export_buffers(0), ValueError),
                            (lambda: vivid.dequeue(timeout=float("nan")), ValueError),
                            (lambda: vivid.dequeue(timeout="1"), TypeError), (lambda: vivid.dequeue(timeout=True), TypeError)]:
            with pytest.raises(error):
                call()
        with pytest.raises(OSError) as info:  # buffers of the queue are set: the format is fixed
            vivid.set_format(W // 2, H // 2, "YUYV")
        assert info.value.errno == errno.EBUSY
        vivid.queue(0)
        vivid.start()
        ready = select.poll()
        ready.register(vivid.fileno(), select.POLLIN)
        assert ready.poll(10_000), "vivid filled no buffer within 10 s"
        for bad, error in [(-1, ValueError), (float("nan"), ValueError), ("1", TypeError)]:
            with pytest.raises(error):  # refused also with a finished buffer waiting, which stays queued
                vivid.dequeue(timeout=bad)
        assert vivid.dequeue(timeout=10).buffer is buf
        assert vivid.dequeue(timeout=0) is None  # nothing queued: a time-out, not an error
        vivid.stop()
        vivid.use_buffers([])
    vivid.close()
    with pytest.raises(ValueError, match="closed"):
        vivid.set_format(W, H, "YUYV")
    with pytest.raises(ValueError, match="closed"):
        vivid.dequeue(timeout=0)
