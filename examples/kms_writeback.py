#!/usr/bin/env python3
"""Put a dma-buf on a display behind a fence, read back what the display composed, save it as a PNG.

1. draw a picture with numpy straight into a system-heap dma-buf, between
   SYNC START and END;
2. show it on vkms (the kernel's virtual display) with a sw_sync fence as
   the plane's IN_FENCE_FD: nothing reaches the screen until the "producer"
   signals it, and the CRTC's out-fence says when it has;
3. capture the composed frame through the writeback connector into a
   second dma-buf (its fence says when it is written), compare, and write it
   to vkms-writeback.png (or the path given) with a small PNG writer.

Needs vkms (CONFIG_DRM_VKMS), sw_sync and the system heap, as root:
tools/vm-run -- .venv/bin/python examples/kms_writeback.py /tmp/out.png
"""
import os
import struct
import sys
import tempfile
import time
import zlib

import numpy as np

import linuxdmabuf
from linuxdmabuf.kms import Display


def write_png(path: str, rgb: np.ndarray) -> None:
    """An 8-bit RGB PNG (filter 0 on every row), with nothing but zlib."""
    height, width, _ = rgb.shape
    rows = b"".join(b"\0" + rgb[y].tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(rows, 6)) + chunk(b"IEND", b""))


def draw(width: int, height: int) -> np.ndarray:
    """A test card in XRGB8888 memory order (B, G, R, X): gradients, bars and a disc."""
    y, x = np.mgrid[0:height, 0:width]
    bgrx = np.zeros((height, width, 4), np.uint8)
    bgrx[..., 2] = x * 255 // (width - 1)          # red rises to the right
    bgrx[..., 1] = y * 255 // (height - 1)         # green downwards
    bgrx[..., 0] = 255 - bgrx[..., 2] // 2         # blue falls off
    bars = (x * 8 // width) % 2 == 0
    bgrx[(y > height * 3 // 4) & bars] = (255, 255, 255, 0)
    disc = (x - width / 2) ** 2 + (y - height / 2) ** 2 < (height / 5) ** 2
    bgrx[disc] = (0, 0, 0, 0)
    return bgrx


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(tempfile.gettempdir(), "vkms-writeback.png")
    with Display.find(driver="vkms") as display, linuxdmabuf.Heap("system") as heap, \
            linuxdmabuf.SwSyncTimeline() as producer:
        w, h = display.mode.width, display.mode.height
        print(f"{display.path} ({display.driver}): {w}x{h}@{display.mode.refresh}")
        with heap.allocate(w * h * 4) as picture, heap.allocate(w * h * 4) as captured, \
                display.framebuffer(picture, w, h, "XR24") as fb, display.framebuffer(captured, w, h) as wb:
            drawn = draw(w, h)
            with picture.map() as m, picture.cpu_access(read=False):
                np.frombuffer(m, np.uint8).reshape(h, w, 4)[:] = drawn
            with producer.create_fence(1) as ready, display.show(fb, in_fence=ready) as on_screen:
                time.sleep(0.2)
                print(f"shown behind an unsignaled in-fence: on screen after 0.2 s? {on_screen.signaled}")
                producer.advance()
                start = time.monotonic()
                on_screen.wait(10)
                print(f"producer signaled: on screen {(time.monotonic() - start) * 1000:.0f} ms later")
            with display.capture(wb) as written:
                start = time.monotonic()
                written.wait(30)
                print(f"writeback written {(time.monotonic() - start) * 1000:.0f} ms after the capture commit")
            with captured.map(writable=False) as m, captured.cpu_access(write=False):
                back = np.frombuffer(m, np.uint8).reshape(h, w, 4).copy()
    differ = np.count_nonzero((back[..., :3] != drawn[..., :3]).any(axis=2))
    print(f"captured frame: {differ} of {w * h} pixels differ from the drawing")
    write_png(out, np.ascontiguousarray(back[..., 2::-1]))  # BGRX -> RGB
    print(f"wrote {out} ({os.path.getsize(out)} bytes)")
    print("ok")
