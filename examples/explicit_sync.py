#!/usr/bin/env python3
"""The Wayland explicit-sync loop (linux-drm-syncobj-v1), end to end on a real display.

A client renders into two dma-bufs in turn. For each frame it hands the
compositor an *acquire point* (the compositor may read the buffer once it
signals) and a *release point* (the client may write the buffer again once
it signals), both on DRM sync object timelines. Here:

- the "GPU" is a sw_sync timeline: its fence, unsignaled while the frame is
  being "rendered", is imported at the frame's acquire point;
- the "compositor" exports that point as a sync_file and gives it to the
  display (vkms) as the plane's IN_FENCE_FD: the kernel holds the flip
  until the producer signals;
- the flip's out-fence, which signals when the next frame is on screen,
  becomes the release point of the previous frame's buffer;
- the client waits for release points with asyncio, with no thread, before
  drawing into a buffer again.

At the end the display's writeback connector reads back what is on screen.

Needs vkms, sw_sync, the system heap and a DRM driver with timelines
(virtio-gpu: the VM runner gives every guest one), as root:
tools/vm-run -- .venv/bin/python examples/explicit_sync.py
"""
import asyncio
import time

import numpy as np

import linuxdmabuf
from linuxdmabuf.kms import Display
from linuxdmabuf.syncobj import Timeline

FRAMES = 6
RENDER_TIME = 0.1  # seconds the "GPU" takes per frame
COLORS = [(0x20 * n, 0xFF - 0x20 * n, 0x80, 0) for n in range(FRAMES + 1)]  # B, G, R, X per frame


async def main() -> None:
    loop = asyncio.get_running_loop()
    with Display.find(driver="vkms") as display, linuxdmabuf.Heap("system") as heap, \
            linuxdmabuf.SwSyncTimeline() as gpu, Timeline() as acquire, Timeline(acquire.device) as release:
        w, h = display.mode.width, display.mode.height
        print(f"display {display.path} ({display.driver}) {w}x{h}; timelines on {acquire.device.path} "
              f"({acquire.device.driver})")
        bufs = [heap.allocate(w * h * 4) for _ in range(2)]
        fbs = [display.framebuffer(buf, w, h, "XR24") for buf in bufs]
        on_screen = None
        try:
            for n in range(1, FRAMES + 1):
                buf, fb = bufs[n % 2], fbs[n % 2]
                if n > 2:  # frame n-2 used this buffer; the flip of frame n-1 released it
                    start = time.monotonic()
                    assert await release.wait_async(n - 2, 30)
                    print(f"frame {n}: buffer {n % 2} released (point {n - 2}) after "
                          f"{(time.monotonic() - start) * 1000:.0f} ms")
                with buf.map() as m, buf.cpu_access(read=False):
                    np.frombuffer(m, np.uint8).reshape(h, w, 4)[:] = COLORS[n]
                with gpu.create_fence(n) as rendering:  # the GPU's work for this frame, not done yet
                    acquire.import_sync_file(rendering, n)
                loop.call_later(RENDER_TIME, gpu.advance)
                if on_screen is not None:  # one flip at a time (a second non-blocking commit is EBUSY)
                    await on_screen.wait_async(30)
                    on_screen.close()
                committed = time.monotonic()
                with acquire.export_sync_file(n) as in_fence:
                    on_screen = display.show(fb, in_fence=in_fence)
                if n > 1:
                    release.import_sync_file(on_screen, n - 1)  # this flip frees the previous frame's buffer
                held = not on_screen.signaled
                await on_screen.wait_async(30)
                print(f"frame {n}: acquire point {n} held the flip: {held}; on screen "
                      f"{(time.monotonic() - committed) * 1000:.0f} ms after the commit "
                      f"(render time {RENDER_TIME * 1000:.0f} ms)")
            assert acquire.value == FRAMES and release.value == FRAMES - 1
            print(f"acquire timeline at {acquire.value}, release timeline at {release.value}")
            with heap.allocate(w * h * 4) as back, display.framebuffer(back, w, h) as wb:
                with display.capture(wb) as written:
                    assert written.wait(60)
                with back.map(writable=False) as m, back.cpu_access(write=False):
                    shown = np.frombuffer(m, np.uint8).reshape(h, w, 4)[..., :3].copy()
            wrong = int(np.count_nonzero((shown != COLORS[FRAMES][:3]).any(axis=2)))
            print(f"writeback of the last frame: {wrong} of {w * h} pixels differ from frame {FRAMES}")
            assert wrong == 0
        finally:
            if on_screen is not None:
                on_screen.wait(30)
                on_screen.close()
            for obj in fbs + bufs:
                obj.close()
    print("ok")


if __name__ == "__main__":
    asyncio.run(main())
