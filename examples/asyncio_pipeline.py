#!/usr/bin/env python3
"""A producer and a consumer pipelined through dma-bufs and their implicit fences, on asyncio.

A ring of buffers goes round. The producer takes a free buffer, fills it and
hands it to a "GPU" whose write fence goes on the buffer
(DMA_BUF_IOCTL_IMPORT_SYNC_FILE), then passes it on at once. The consumer
awaits the buffer's implicit fences (DmaBuf.wait_async: no thread, the loop
polls the fd), reads the frame, puts a read fence of its "display" on the
buffer for as long as the frame is on screen, and hands the buffer back at
once. Before reusing it the producer awaits that read fence
(wait_async(write=True)). Nobody waits for anybody's work to finish before
passing a buffer on: the fences carry the waiting.

Both devices are simulated with sw_sync timelines advanced by tasks, so this
runs where sw_sync does (debugfs, CONFIG_SW_SYNC, root).
"""
import asyncio
import threading
import time

import linuxdmabuf
from linuxdmabuf import SwSyncTimeline

FRAMES = 12
RING = 3
GPU_TIME = DISPLAY_TIME = 0.02


async def device(timeline: SwSyncTimeline, jobs: asyncio.Queue, seconds: float) -> None:
    """A simulated device: reaches each job's fence value `seconds` after the job is queued."""
    done = 0
    while (value := await jobs.get()) is not None:
        await asyncio.sleep(seconds)
        timeline.advance(value - done)
        done = value


async def producer(ring, free, frames, gpu, gpu_jobs):
    for n in range(FRAMES):
        buf = await free.get()
        await buf.wait_async(write=True)  # the display's read fence: the frame shown from it is gone
        buf.write(f"frame {n}".encode().ljust(16))  # the CPU part of the frame
        with gpu.create_fence(n + 1) as rendered:  # the GPU finishes frame n when its timeline reaches n + 1
            buf.import_sync_file(rendered, write=True)
        await gpu_jobs.put(n + 1)
        await frames.put((n, buf))
        print(f"produced frame {n} in buffer {ring.index(buf)}", flush=True)
    await frames.put(None)


async def consumer(free, frames, display, display_jobs, shown):
    while (item := await frames.get()) is not None:
        n, buf = item
        rendering = not buf.wait(timeout=0)
        await buf.wait_async()  # the GPU's write fence
        text = buf.read(16).decode().strip()
        assert text == f"frame {n}", text
        with display.create_fence(n + 1) as on_screen:  # shown until the display's timeline reaches n + 1
            buf.import_sync_file(on_screen, write=False)
        await display_jobs.put(n + 1)
        await free.put(buf)  # released at once: the read fence says when it is really free
        shown.append(n)
        print(f"consumed {text!r} ({'awaited its GPU fence' if rendering else 'already rendered'})", flush=True)


async def main() -> None:
    threads = threading.active_count()
    started = time.monotonic()
    free, frames = asyncio.Queue(), asyncio.Queue()
    gpu_jobs, display_jobs = asyncio.Queue(), asyncio.Queue()
    shown = []
    with SwSyncTimeline() as gpu, SwSyncTimeline() as display:
        ring = [linuxdmabuf.allocate(4096) for _ in range(RING)]
        try:
            for buf in ring:
                free.put_nowait(buf)
            devices = [asyncio.create_task(device(gpu, gpu_jobs, GPU_TIME)),
                       asyncio.create_task(device(display, display_jobs, DISPLAY_TIME))]
            await asyncio.gather(producer(ring, free, frames, gpu, gpu_jobs),
                                 consumer(free, frames, display, display_jobs, shown))
            for jobs in (gpu_jobs, display_jobs):
                await jobs.put(None)
            await asyncio.gather(*devices)
            for buf in ring:
                assert await buf.wait_async(write=True, timeout=5), "a fence never signaled"
        finally:
            for buf in ring:
                buf.close()
    assert shown == list(range(FRAMES)), shown
    assert threading.active_count() == threads, "a thread was started"
    print(f"{FRAMES} frames through {RING} buffers in {time.monotonic() - started:.2f} s "
          f"on {threading.active_count()} thread")
    print("ok")


if __name__ == "__main__":
    asyncio.run(main())
