"""numpy views of dma-buf mappings: no copy, frame layouts, lifetime, and life without numpy."""
import gc
import mmap
import os
import subprocess
import sys

import pytest
from helpers import sealed_memfd

from linuxdmabuf import ndarray
from linuxdmabuf.ndarray import PlaneLayout, frame_layout

# -- layouts (no kernel, no numpy needed) ------------------------------------------------

def test_nv12_layout_packed():
    y, uv = frame_layout("NV12", 640, 480)
    assert y == PlaneLayout(0, 640, 640, 480, "u1", ("Y",))
    assert uv == PlaneLayout(640 * 480, 640, 320, 240, "u1", ("U", "V"))
    assert uv.shape == (240, 320, 2) and uv.strides == (640, 2, 1)
    assert uv.end == 640 * 480 * 3 // 2


def test_nv12_chroma_pitch_follows_the_luma_pitch():
    y, uv = frame_layout("NV12", 640, 480, pitches=[768])
    assert (y.pitch, uv.pitch, uv.offset) == (768, 768, 768 * 480)


def test_yuv420_chroma_pitch_is_half_and_odd_sizes_round_up():
    y, u, v = frame_layout("YUV420", 5, 5)
    assert (y.pitch, y.width, y.height) == (5, 5, 5)
    assert (u.offset, u.pitch, u.width, u.height) == (25, 3, 3, 3)
    assert (v.offset, v.pitch) == (34, 3)
    y, u, v = frame_layout("YUV420", 640, 480, pitches=[1024])
    assert (u.pitch, v.pitch, v.offset) == (512, 512, 1024 * 480 + 512 * 240)


def test_explicit_offsets_and_pitches_per_plane():
    y, uv = frame_layout("NV12", 64, 64, pitches=[128, 256], offsets=[4096, 65536])
    assert (y.offset, y.pitch, uv.offset, uv.pitch) == (4096, 128, 65536, 256)


@pytest.mark.parametrize("fourcc, memory_order", [
    ("XRGB8888", "BGRX"), ("ARGB8888", "BGRA"), ("XBGR8888", "RGBX"), ("ABGR8888", "RGBA"),
    ("RGBX8888", "XBGR"), ("BGRA8888", "ARGB"), ("RGB888", "BGR"), ("BGR888", "RGB"),
])
def test_drm_fourcc_rgb_names_read_from_the_top_of_a_little_endian_word(fourcc, memory_order):
    (plane,) = frame_layout(fourcc, 4, 2)
    assert "".join(plane.components) == memory_order
    assert plane.shape == (2, 4, len(memory_order)) and plane.pitch == 4 * len(memory_order)


def test_packed_16_bit_and_yuyv():
    (rgb565,) = frame_layout("RGB565", 10, 2)
    assert rgb565.shape == (2, 10) and rgb565.strides == (20, 2) and rgb565.dtype == "<u2"
    (yuyv,) = frame_layout("YUYV", 8, 2)
    assert yuyv.shape == (2, 4, 4) and yuyv.pitch == 16 and yuyv.components == ("Y0", "U", "Y1", "V")


@pytest.mark.parametrize("args, kwargs, error, match", [
    (("NV13", 4, 4), {}, ValueError, "unknown format 'NV13'"),
    ((b"NV12", 4, 4), {}, TypeError, "str"),
    (("NV12", 0, 4), {}, ValueError, "width"),
    (("NV12", 4, 4.0), {}, TypeError, "height"),
    (("NV12", 640, 480), {"pitches": [639]}, ValueError, "pitch 639 is less than a row"),
    (("NV12", 640, 480), {"pitches": [640, 100]}, ValueError, "plane 1: pitch 100"),
    (("NV12", 640, 480), {"pitches": [640, 640, 640]}, ValueError, "1 to 2 values"),
    (("NV12", 640, 480), {"offsets": [-1]}, ValueError, "offsets"),
    (("NV12", 640, 480), {"pitches": [True]}, TypeError, "pitches"),
])
def test_layout_refuses_bad_arguments(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        frame_layout(*args, **kwargs)


# -- views on plain mappings (host) ---------------------------------------------------------

def test_frame_views_share_one_mapping():
    with mmap.mmap(-1, 640 * 480 * 3 // 2) as m:
        y, uv = ndarray.frame(m, "NV12", 640, 480)
        y[1, 2] = 7
        uv[0, 0] = (1, 2)
        assert m[640 + 2] == 7 and m[640 * 480:640 * 480 + 2] == b"\1\2"
        del y, uv


def test_plane_with_pitch_skips_the_padding():
    with mmap.mmap(-1, 4096) as m:
        a = ndarray.plane(m, 3, 4, pitch=16, components=4)
        assert a.shape == (4, 3, 4) and a.strides == (16, 4, 1)
        a[...] = 0xFF
        assert m[12:16] == b"\0" * 4 and m[16:28] == b"\xff" * 12
        del a


def test_too_small_buffer_is_a_value_error():
    with mmap.mmap(-1, 4096) as m:
        with pytest.raises(ValueError, match="needs 307200 bytes; the buffer has 4096"):
            ndarray.frame(m, "NV12", 640, 480)
        with pytest.raises(ValueError, match="pitch 8 is less than a row"):
            ndarray.plane(m, 4, 4, pitch=8, components=4)
        with pytest.raises(ValueError, match="past the end"):
            ndarray.array(m, offset=8192)
        with pytest.raises(ValueError, match=r"shape \(2, 1024\) of uint32 at offset 4 needs 8196 bytes"):
            ndarray.array(m, "<u4", (2, 1024), offset=4)
        assert ndarray.array(m, "<u4", 1024).shape == (1024,)


def test_array_refuses_what_is_not_a_buffer():
    with pytest.raises(TypeError, match="DmaBuf or a buffer"):
        ndarray.array(42)


def test_without_numpy_nothing_else_breaks():
    """numpy blocked: import linuxdmabuf (and every module) works and never imports numpy;
    layouts still work; making an array names the extra to install."""
    code = """
import sys
sys.modules["numpy"] = None  # any import of numpy now fails
import linuxdmabuf, linuxdmabuf.ipc, linuxdmabuf.drm, linuxdmabuf.ndarray
from linuxdmabuf import ndarray
assert len(ndarray.frame_layout("NV12", 4, 4)) == 2
try:
    ndarray.array(bytearray(8))
except ModuleNotFoundError as e:
    print(e)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "pip install 'linuxdmabuf[numpy]'" in done.stdout


def test_import_linuxdmabuf_does_not_import_numpy():
    code = "import sys, linuxdmabuf, linuxdmabuf.ndarray; print('numpy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout == "False\n"


# -- on real dma-bufs ----------------------------------------------------------------------------

def test_udmabuf_array_is_the_memfd_pages(udmabuf, dmabuf_leak_check):
    """Writes through the array appear in the memfd, and the other way round: no copy."""
    memfd = sealed_memfd(8192)
    try:
        with udmabuf.create(memfd) as buf:
            a = ndarray.array(buf, "<u4")
            assert a.shape == (2048,) and a.flags.writeable
            with buf.cpu_access(read=False, write=True):
                a[1024] = 0xDEADBEEF
            assert os.pread(memfd, 4, 4096) == (0xDEADBEEF).to_bytes(4, "little")
            os.pwrite(memfd, b"\x2a\0\0\0", 8)
            with buf.cpu_access(read=True, write=False):
                assert a[2] == 42
            del a
    finally:
        os.close(memfd)


def test_heap_array_seen_through_a_second_mapping(dma_heap, dmabuf_leak_check):
    with dma_heap.allocate(4 * 64 * 16) as buf:
        (image,) = ndarray.frame(buf, "XRGB8888", 64, 16)
        with buf.cpu_access(read=False, write=True):
            image[..., 2] = 200  # R
            image[3, 5] = (1, 2, 3, 4)
        with buf.map(writable=False) as second:
            assert second[2] == 200 and second[(3 * 64 + 5) * 4:(3 * 64 + 5) * 4 + 4] == b"\1\2\3\4"
        assert buf.read(4, offset=4) == bytes([0, 0, 200, 0])
        del image


def test_array_on_a_given_mapping_and_offset(dma_heap, dmabuf_leak_check):
    with dma_heap.allocate(8192) as buf, buf.map() as m:
        a = ndarray.array(m, "u1", (2, 8), offset=4096)
        a[1] = 9
        assert m[4096 + 8:4096 + 16] == b"\x09" * 8
        del a


def test_readonly_buffer_gives_a_readonly_array(dma_heap, dmabuf_leak_check):
    with dma_heap.allocate(4096, readonly=True) as buf:
        a = ndarray.array(buf)
        assert not a.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            a[0] = 1
        assert a[0] == 0
        del a


def test_the_array_keeps_the_buffer_alive_after_close(dma_heap):
    """Closing the DmaBuf while an array views it: the mapping keeps the buffer; the
    buffer's references drop when the array goes."""
    buf = dma_heap.allocate(4096)
    witness = buf.dup()
    try:
        idle = witness.info().count
        a = ndarray.array(buf)
        assert witness.info().count > idle  # the mapping holds the file
        buf.close()
        a[:5] = list(b"alive")
        assert bytes(a[:5]) == b"alive" and witness.read(5) == b"alive"
        del a
        gc.collect()
        assert witness.info().count == idle - 1  # buf's own fd is gone too
    finally:
        buf.close()
        witness.close()



@pytest.mark.kernel
def test_vgem_dumb_buffer_as_a_frame(vgem, dmabuf_leak_check):
    """A driver's buffer with the driver's pitch, through numpy and back through the driver's mapping."""
    with vgem.create_dumb(100, 10, 32) as dumb, vgem.prime_export(dumb) as buf:
        (image,) = ndarray.frame(buf, "XRGB8888", dumb.width, dumb.height, pitches=[dumb.pitch])
        image[9, 99] = (10, 20, 30, 40)
        with vgem.map_dumb(dumb, writable=False) as through_drm:
            at = 9 * dumb.pitch + 99 * 4
            assert through_drm[at:at + 4] == bytes([10, 20, 30, 40])
        del image
