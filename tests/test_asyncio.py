"""asyncio: SyncFile.wait_async and DmaBuf.wait_async on real fences, with no thread.

Fences come from each fence source (`fence_source`: sw_sync timelines, vgem's
driver fences), signaled by another task.
"""
import asyncio
import threading
import time

import pytest
from helpers import open_fds

pytestmark = pytest.mark.usefixtures("dmabuf_leak_check")


def selector_fds(loop) -> set:
    """The fds the loop's selector watches, other than its own self-pipe."""
    return set(loop._selector.get_map()) - {loop._ssock.fileno()}


def run(coro):
    """asyncio.run, asserting the loop made no thread and no executor."""
    threads = threading.active_count()
    loop = asyncio.new_event_loop()
    try:
        result = loop.run_until_complete(coro)
        assert loop._default_executor is None, "an executor thread was started"
        assert not selector_fds(loop), "a wait left its fd registered"
    finally:
        loop.close()
    assert threading.active_count() == threads
    return result


async def signal_later(source, fence, seconds: float):
    await asyncio.sleep(seconds)
    source.signal(fence)


def test_signaled_by_another_task(fence_source):
    with fence_source.fence() as fence:
        async def scenario():
            signaler = asyncio.create_task(signal_later(fence_source, fence, 0.05))
            started = time.monotonic()
            assert await fence.wait_async() is True
            await signaler
            return time.monotonic() - started

        assert run(scenario()) >= 0.04
        assert fence.signaled


def test_the_loop_keeps_running_while_waiting(fence_source):
    """Other tasks run while a wait is pending: the fence is signaled only once a
    ticker task has ticked five times (a blocked loop would time the wait out)."""
    with fence_source.fence() as fence:
        async def scenario():
            ticks = 0

            async def ticker():
                nonlocal ticks
                while ticks < 5:
                    ticks += 1
                    await asyncio.sleep(0.005)
                fence_source.signal(fence)

            tick = asyncio.create_task(ticker())
            assert await fence.wait_async(timeout=30) is True
            await tick
            return ticks

        assert run(scenario()) == 5


def test_timeouts(fence_source):
    with fence_source.fence() as fence:
        async def scenario():
            started = time.monotonic()
            assert await fence.wait_async(timeout=0.05) is False
            waited = time.monotonic() - started
            assert await fence.wait_async(timeout=0) is False
            return waited

        assert run(scenario()) >= 0.04


def test_signaled_fence_returns_true_at_once_even_with_timeout_0(dma_heap):
    with dma_heap.allocate(4096) as buf, buf.export_sync_file() as fence:  # an idle buffer's: signaled
        assert run(fence.wait_async(timeout=0)) is True
        assert run(fence.wait_async()) is True


def test_cancellation_leaves_nothing_registered_or_open(fence_source):
    with fence_source.fence() as fence:
        before = open_fds()

        async def scenario():
            loop = asyncio.get_running_loop()
            task = asyncio.create_task(fence.wait_async())
            await asyncio.sleep(0.02)
            assert not task.done() and selector_fds(loop)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not selector_fds(loop)

        run(scenario())
        assert open_fds() == before


def test_timeout_inside_wait_for_and_timeout_leave_nothing(fence_source):
    with fence_source.fence() as fence:
        async def scenario():
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(fence.wait_async(), 0.02)
            assert await fence.wait_async(timeout=0.02) is False

        run(scenario())


def test_concurrent_waits_on_one_fence_all_complete(fence_source):
    """Each wait watches its own dup: one waiter's registration never replaces another's."""
    with fence_source.fence() as fence:
        async def scenario():
            waiters = [asyncio.create_task(fence.wait_async(timeout=5)) for _ in range(3)]
            await asyncio.sleep(0.02)
            early = asyncio.create_task(fence.wait_async(timeout=0.01))
            assert await early is False  # and ends its watch without disturbing the others
            fence_source.signal(fence)
            return await asyncio.gather(*waiters)

        assert run(scenario()) == [True, True, True]


def test_closing_the_sync_file_while_awaited(fence_source):
    """The wait watches its own dup of the fd: it still completes, and the old fd number
    (which may be reused at once) is never touched."""
    fence = fence_source.fence()

    async def scenario():
        waiter = asyncio.create_task(fence.wait_async(timeout=5))
        await asyncio.sleep(0.02)
        fence.close()
        reused = open("/dev/null")  # likely takes the number just freed
        try:
            fence_source.signal(fence)
            return await waiter
        finally:
            reused.close()

    assert run(scenario()) is True


def test_error_fence_completes_the_wait(sw_sync):
    timeline, fence = sw_sync
    with fence:
        async def scenario():
            waiter = asyncio.create_task(fence.wait_async(timeout=5))
            await asyncio.sleep(0.02)
            timeline.close()  # pending fences signal with ENOENT
            return await waiter

        assert run(scenario()) is True


@pytest.fixture
def sw_sync(sw_sync_timeline):
    from linuxdmabuf import SwSyncTimeline

    timeline = SwSyncTimeline()
    try:
        yield timeline, timeline.create_fence(1)
    finally:
        timeline.close()


def test_dmabuf_read_wait_follows_a_write_fence(dma_heap, fence_source):
    with dma_heap.allocate(4096) as buf:
        with fence_source.fence() as fence:
            buf.import_sync_file(fence, write=True)

        async def scenario():
            assert await buf.wait_async(timeout=0.02) is False
            assert await buf.wait_async(write=True, timeout=0) is False
            readers = [asyncio.create_task(buf.wait_async(timeout=5)),
                       asyncio.create_task(buf.wait_async(write=True, timeout=5))]
            await asyncio.sleep(0.02)
            assert not any(r.done() for r in readers)
            fence_source.signal(fence)
            return await asyncio.gather(*readers)

        assert run(scenario()) == [True, True]


def test_dmabuf_read_fence_blocks_writers_only(dma_heap, fence_source):
    with dma_heap.allocate(4096) as buf:
        with fence_source.fence() as fence:
            buf.import_sync_file(fence, write=False)

        async def scenario():
            assert await buf.wait_async(timeout=0) is True  # readers do not wait for readers
            writer = asyncio.create_task(buf.wait_async(write=True))
            signaler = asyncio.create_task(signal_later(fence_source, fence, 0.02))
            result = await writer
            await signaler
            return result

        assert run(scenario()) is True


def test_dmabuf_wait_async_cancelled(dma_heap, fence_source):
    with dma_heap.allocate(4096) as buf:
        with fence_source.fence() as fence:
            buf.import_sync_file(fence, write=True)
        before = open_fds()

        async def scenario():
            task = asyncio.create_task(buf.wait_async(write=True))
            await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        run(scenario())
        assert open_fds() == before
        fence_source.signal(fence)
        assert buf.wait(timeout=0)


def test_bad_arguments(dma_heap, fence_source):
    with dma_heap.allocate(4096) as buf, fence_source.fence() as fence:
        for waitable in (fence.wait_async, buf.wait_async):
            with pytest.raises(ValueError):
                run(waitable(timeout=-1))
            with pytest.raises(TypeError):
                run(waitable(timeout="1"))
    for closed in (fence, buf):
        with pytest.raises(ValueError, match="closed"):
            run(closed.wait_async())
