"""KMS on a second real driver, virtio-gpu: a dma-buf shown, and capture() where there is no writeback.

Every guest of the VM runner has a virtio-gpu device: a KMS card with one
virtual connector and no writeback connector. Without blob resources (QEMU's
default) it imports only dma-bufs it exported itself, so the buffer shown is
a dumb buffer of its own, exported and imported back through PRIME.
"""
import errno

import pytest

from linuxdmabuf import UnsupportedError, kms
from linuxdmabuf.pytest_plugin import need_module

need_module("drm:virtio_gpu")

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("dmabuf_leak_check")]


@pytest.fixture
def display():
    with kms.Display.find(driver="virtio_gpu") as display:
        yield display


def test_its_own_dma_buf_is_shown_and_capture_is_unsupported(display):
    w, h = display.mode.width, display.mode.height
    assert display.driver == "virtio_gpu" and w > 0 and h > 0
    with display.create_dumb(w, h) as dumb, display.prime_export(dumb) as buf:
        with buf.map() as m, buf.cpu_access(read=False):
            m[:] = b"\x40\x80\xc0\x00" * (buf.size // 4)
        with display.framebuffer(buf, w, h, "XR24", pitch=dumb.pitch) as fb:
            with display.show(fb) as on_screen:
                assert on_screen.wait(60)
            with pytest.raises(UnsupportedError, match="virtio_gpu.*no writeback connector") as info:
                display.capture(fb)
            assert info.value.errno == errno.ENODEV


def test_a_foreign_dma_buf_is_refused_saying_why(display, dma_heap):
    w, h = display.mode.width, display.mode.height
    with dma_heap.allocate(w * h * 4) as buf:
        with pytest.raises(OSError, match="cannot import a dma-buf of another exporter") as info:
            display.framebuffer(buf, w, h)
        assert info.value.errno == errno.ENODEV
