#!/usr/bin/env python3
"""Capture from a camera (vivid, the kernel's virtual camera) into dma-heap buffers, and look at the frames.

1. the camera fills *our* buffers: four system-heap dma-bufs queued with
   V4L2_MEMORY_DMABUF (any dma-buf works: a CMA heap's, udmabuf's, a GPU's);
2. each dequeued frame's Y plane is a numpy array on the buffer itself (no
   copy), read between SYNC START and END;
3. the camera's own buffers, exported with VIDIOC_EXPBUF, are dma-bufs the
   caller owns: they outlive the device.

Needs vivid (CONFIG_VIDEO_VIVID; `modprobe vivid`) and the system heap, as
root: run it in the VM (tools/vm-run -- .venv/bin/python examples/v4l2_capture.py).
"""
import numpy as np

import linuxdmabuf
from linuxdmabuf import ndarray
from linuxdmabuf.v4l2 import VideoDevice

FRAMES = 5


def capture_into_heap_buffers(camera: VideoDevice) -> None:
    fmt = camera.set_format(640, 360, "NV12")
    print(f"{camera.path} ({camera.name}): {fmt.width}x{fmt.height} {fmt.fourcc}, "
          f"{fmt.planes[0].sizeimage} bytes a frame, {fmt.planes[0].bytesperline} bytes a row")
    with linuxdmabuf.Heap("system") as heap:
        buffers = [heap.allocate(fmt.planes[0].sizeimage) for _ in range(4)]
    try:
        camera.use_buffers(buffers)
        with camera.streaming():
            for _ in range(FRAMES):
                frame = camera.dequeue(timeout=10)
                y, uv = ndarray.frame(frame.buffer, fmt)  # views on the heap buffer's pages
                with frame.buffer.cpu_access(write=False):
                    stats = (int(y.min()), float(y.mean()), int(y.max()), int(np.unique(y[-1]).size))
                print(f"  frame {frame.sequence}: buffer {frame.index} ({frame.buffer.exporter}, inode "
                      f"{frame.buffer.inode}), Y min/mean/max {stats[0]}/{stats[1]:.1f}/{stats[2]}, "
                      f"{stats[3]} levels in the last row, at {frame.timestamp_ns / 1e9:.3f} s")
                camera.queue(frame.index)
        camera.use_buffers([])
    finally:
        for buf in buffers:
            buf.close()


def export_the_cameras_buffers(camera: VideoDevice) -> None:
    camera.set_format(640, 360, "YUYV")
    exported = camera.export_buffers(2)
    with camera.streaming():
        frame = camera.dequeue(timeout=10)
    camera.use_buffers([])  # the device lets go of them; ours stay valid
    print(f"exported: {[b.exporter for b in exported]}; frame {frame.sequence} in buffer {frame.index}, "
          f"{frame.buffer.read(4).hex()} at its start, readable after the device freed its queue")
    for buf in exported:
        buf.close()


if __name__ == "__main__":
    with VideoDevice.find(driver="vivid", kind="capture", multiplanar=False) as camera:
        capture_into_heap_buffers(camera)
        export_the_cameras_buffers(camera)
    print("ok")
