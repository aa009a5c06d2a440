#!/usr/bin/env python3
"""A codec round trip through our own buffers: vicodec, the kernel's FWHT test codec.

A frame drawn with numpy in a system-heap dma-buf goes into the stateful
encoder's OUTPUT queue; the compressed frame comes out in a udmabuf on its
CAPTURE queue; that udmabuf goes into the stateful decoder, and the decoded
frame comes out in another heap buffer, compared with the original. Every
buffer is the caller's (V4L2_MEMORY_DMABUF): no copy between the devices.

Needs vicodec (CONFIG_VIDEO_VICODEC), udmabuf and the system heap, as root:
tools/vm-run -- .venv/bin/python examples/v4l2_codec_roundtrip.py
"""
import numpy as np

import linuxdmabuf
from linuxdmabuf.v4l2 import VideoDevice

W, H = 640, 368  # vicodec's smallest width; YU12 heights come in 16-row steps


def run(device: VideoDevice, src, src_fourcc: str, dst, dst_fourcc: str, used: int) -> int:
    """One frame through an m2m device: `src` on its OUTPUT queue, `dst` on its CAPTURE queue."""
    device.set_format(W, H, src_fourcc, queue="output")
    device.set_format(W, H, dst_fourcc, queue="capture")
    device.use_buffers([src], queue="output")
    device.use_buffers([dst], queue="capture")
    device.queue(0, queue="output", bytesused=used)
    device.queue(0, queue="capture")
    with device.streaming(queue="output"), device.streaming(queue="capture"):
        frame = device.dequeue(queue="capture", timeout=30)
    device.use_buffers([], queue="output")
    device.use_buffers([], queue="capture")
    return frame.bytesused[0]


if __name__ == "__main__":
    yy, xx = np.mgrid[0:H, 0:W]
    luma = (64 + xx // 8 + yy // 6).astype(np.uint8)
    chroma = np.full((H // 2, W // 2), 128, np.uint8)
    raw = luma.tobytes() + chroma.tobytes() + chroma.tobytes()
    with linuxdmabuf.Heap("system") as heap, linuxdmabuf.Udmabuf() as udmabuf:
        with heap.allocate(len(raw)) as picture, udmabuf.allocate(W * H * 4 + 4096) as coded, \
                heap.allocate(len(raw)) as decoded:
            picture.write(raw)
            with VideoDevice.find(driver="vicodec", kind="m2m", name="stateful-encoder") as encoder:
                size = run(encoder, picture, "YU12", coded, "FWHT", len(raw))
            print(f"encoded {W}x{H} YU12 ({len(raw)} bytes, {picture.exporter}) into {size} bytes of FWHT "
                  f"in a {coded.exporter} buffer: {len(raw) / size:.1f}:1")
            with VideoDevice.find(driver="vicodec", kind="m2m", name="stateful-decoder") as decoder:
                out = run(decoder, coded, "FWHT", decoded, "YU12", size)
            back = np.frombuffer(decoded.read(W * H), np.uint8).reshape(H, W)
    error = np.abs(back.astype(int) - luma)
    psnr = 10 * np.log10(255**2 / max(float((error**2).mean()), 1e-9))
    print(f"decoded {out} bytes of YU12; luma PSNR {psnr:.1f} dB against the original, max error {error.max()}")
    print("ok")
