#!/usr/bin/env python3
"""A frame in a dma-buf, seen as numpy arrays without a copy.

Allocates an NV12 frame (a Y plane, then interleaved U/V at half resolution),
draws into it through numpy views of the buffer's mapping, and reads it back
through a second, independent mapping to show the arrays are the buffer
itself. Then an XRGB8888 image with a padded pitch, as a display driver
lays it out. Needs numpy (pip install 'linuxdmabuf[numpy]') and a dma-buf
provider this user may use.
"""
import numpy as np

import linuxdmabuf
from linuxdmabuf import ndarray

WIDTH, HEIGHT = 320, 240


def nv12() -> None:
    y_layout, uv_layout = ndarray.frame_layout("NV12", WIDTH, HEIGHT)
    with linuxdmabuf.allocate(uv_layout.end) as buf:
        y, uv = ndarray.frame(buf, "NV12", WIDTH, HEIGHT)
        print(f"NV12 {WIDTH}x{HEIGHT} in {buf.size} bytes: y {y.shape} pitch {y.strides[0]}, "
              f"uv {uv.shape} at offset {uv_layout.offset}")
        with buf.cpu_access(read=False, write=True):
            y[:] = np.linspace(16, 235, WIDTH, dtype=np.uint8)  # a horizontal luma ramp
            uv[..., 0] = 90  # U (Cb)
            uv[..., 1] = 240  # V (Cr): a reddish tint
        with buf.map(writable=False) as second, buf.cpu_access(read=True, write=False):
            again_y, again_uv = ndarray.frame(second, "NV12", WIDTH, HEIGHT)
            assert (again_y == y).all() and (again_uv == [90, 240]).all()
            row = bytes(second[:8])
        print(f"  a second mapping of the buffer sees what the arrays wrote: first bytes {list(row)}")


def xrgb_with_pitch() -> None:
    pitch = 4 * WIDTH + 256  # rows padded, as many drivers align them
    with linuxdmabuf.allocate(pitch * HEIGHT) as buf:
        (layout,) = ndarray.frame_layout("XRGB8888", WIDTH, HEIGHT, pitches=[pitch])
        (image,) = ndarray.frame(buf, "XRGB8888", WIDTH, HEIGHT, pitches=[pitch])
        print(f"XRGB8888 {WIDTH}x{HEIGHT}, pitch {pitch}: array {image.shape}, strides {image.strides}, "
              f"components in memory order {''.join(layout.components)}")
        with buf.cpu_access(read=False, write=True):
            image[..., 2] = 255  # R is the third byte of a little-endian XRGB8888 pixel
        buf.close()  # the array keeps its mapping, and so the buffer, alive
        red_pixel = bytes(image[HEIGHT - 1, WIDTH - 1])
        print(f"  after closing the DmaBuf the array still reads pixel (last, last) = {list(red_pixel)} (B, G, R, X)")


if __name__ == "__main__":
    nv12()
    xrgb_with_pitch()
    print("ok")
