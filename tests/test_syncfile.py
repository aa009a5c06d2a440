"""SyncFile and SwSyncTimeline on the real kernel: waits, status, merges, FILE_INFO, deadlines.

Everything here runs once per fence source (`fence_source`: sw_sync timelines
where the kernel has them, vgem's driver fences everywhere); what is particular
to sw_sync (timeline values, error fences, deadlines read back) is in
test_sw_sync.py.
"""
import os
import signal
import time

import pytest

from linuxdmabuf import FenceStatus, SyncFile


def now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def test_fence_is_pending_until_signaled(fence_source):
    with fence_source.fence() as fence:
        assert not fence.signaled and fence.status is FenceStatus.ACTIVE and not fence.wait(0)
        assert not fence.wait(0.01)
        fence_source.signal(fence)
        assert fence.wait(5) and fence.signaled and fence.wait(0) and fence.status is FenceStatus.SIGNALED


TIMELINE = {"sw_sync": None, "vgem": "unbound"}  # sw_sync names its timelines after the process


def test_info_two_passes_names_and_timestamps(fence_source):
    with fence_source.fence() as fence:
        info = fence.info()
        assert info.status is FenceStatus.ACTIVE and len(info.fences) == 1
        pending = info.fences[0]
        with open("/proc/self/comm") as f:
            timeline = TIMELINE[fence_source.name] or f.read().strip()
        assert pending.driver_name == fence_source.name and pending.obj_name == timeline
        assert pending.timestamp_ns == 0 and pending.status is FenceStatus.ACTIVE and pending.flags == 0
        assert info.name.startswith(f"{fence_source.name}-")
        before = now_ns()
        fence_source.signal(fence)
        done = fence.info().fences[0]
        assert done.status is FenceStatus.SIGNALED and before <= done.timestamp_ns <= now_ns()
        # Since Linux 6.16 the kernel renames every signaled fence's driver and timeline
        # (dma_fence_driver_name()); before, they keep the driver's names.
        renamed = tuple(map(int, os.uname().release.split("-")[0].split(".")[:2])) >= (6, 16)
        assert (done.driver_name, done.obj_name) == (("detached-driver", "signaled-timeline") if renamed
                                                     else (fence_source.name, timeline))


def test_merge_of_two_fences_needs_both(fence_source):
    with fence_source.fence() as a, fence_source.fence() as b:
        with a.merge(b, name="both") as merged:
            info = merged.info()
            assert info.name == "both" and len(info.fences) == 2
            fence_source.signal(a)
            assert a.wait(5) and not merged.wait(0)
            assert [f.status for f in merged.info().fences].count(FenceStatus.SIGNALED) == 1
            fence_source.signal(b)
            assert merged.wait(5) and merged.status is FenceStatus.SIGNALED


def test_merge_a_fence_with_itself(fence_source):
    with fence_source.fence() as fence, fence.merge(fence) as merged:
        assert len(merged.info().fences) == 1 and not merged.signaled
        fence_source.signal(fence)
        assert merged.wait(5)


def test_merge_many_and_merge_all_pairwise_without_leaks(fence_source):
    fences = [fence_source.fence() for _ in range(4)]
    before = set(os.listdir("/proc/self/fd"))
    with fences[0].merge(*fences[1:], name="all") as merged, SyncFile.merge_all(fences, name="all2") as merged2:
        assert len(merged.info().fences) == 4 and merged2.info().name == "all2"
        for fence in fences[:-1]:
            fence_source.signal(fence)
            assert fence.wait(5)
        assert not merged.signaled
        fence_source.signal(fences[-1])
        assert merged.wait(5) and merged2.wait(5)
    assert set(os.listdir("/proc/self/fd")) == before  # the intermediate merges are closed
    for fence in fences:
        fence.close()


def test_merge_all_of_one_is_a_renamed_copy(fence_source):
    with fence_source.fence() as fence, SyncFile.merge_all(iter([fence]), name="solo") as solo:
        assert solo.info().name == "solo" and solo.fileno() != fence.fileno()


def test_signaled_components_are_dropped_by_merge(fence_source):
    with fence_source.fence() as a, fence_source.fence() as b:
        fence_source.signal(a)
        assert a.wait(5)
        with a.merge(b) as merged:
            assert len(merged.info().fences) == 1 and merged.info().fences[0].driver_name == fence_source.name


def test_merge_bad_arguments(fence_source):
    with fence_source.fence() as fence:
        with pytest.raises(TypeError, match="at least one"):
            fence.merge()
        with pytest.raises(TypeError):
            fence.merge(3)
        with pytest.raises(ValueError):
            fence.merge(fence, name="n" * 32)
        with pytest.raises(ValueError):
            fence.merge(fence, name="a\0b")
        with pytest.raises(ValueError):
            SyncFile.merge_all([])
        with pytest.raises(TypeError):
            SyncFile.merge_all([fence, "x"])


def test_set_deadline_bad_values(fence_source):
    with fence_source.fence() as fence:
        for value, error in [(-1, ValueError), (2**64, ValueError), (1.0, TypeError), (True, TypeError)]:
            with pytest.raises(error):
                fence.set_deadline(value)
        fence.set_deadline(now_ns() + 10**9)  # any driver: a hint, kept or ignored


def test_wait_timeout_survives_signals(fence_source):
    with fence_source.fence() as fence:
        hits = []
        old = signal.signal(signal.SIGALRM, lambda *a: hits.append(1))
        signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
        try:
            start = time.monotonic()
            assert fence.wait(0.5) is False
            elapsed = time.monotonic() - start
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        # A wait that restarted its timeout at each signal would never end under 50 ms alarms.
        assert len(hits) >= 3 and elapsed >= 0.5


def test_a_raising_signal_handler_interrupts_the_wait(fence_source):
    with fence_source.fence() as fence:
        def handler(*args):
            raise InterruptedError("from the handler")

        old = signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        try:
            with pytest.raises(InterruptedError, match="from the handler"):
                fence.wait()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)


def test_wait_async_without_threads(fence_source):
    import asyncio
    import threading

    with fence_source.fence() as fence:
        async def scenario():
            threads = threading.active_count()
            assert await fence.wait_async(0.02) is False
            task = asyncio.ensure_future(fence.wait_async())
            await asyncio.sleep(0.02)
            assert not task.done() and threading.active_count() == threads
            asyncio.get_running_loop().call_soon(fence_source.signal, fence)
            return await asyncio.wait_for(task, 5)

        assert asyncio.run(scenario()) is True


def test_wait_async_cancel_unregisters_the_fd(fence_source):
    import asyncio

    with fence_source.fence() as fence:
        async def scenario():
            task = asyncio.ensure_future(fence.wait_async())
            await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            loop = asyncio.get_running_loop()
            assert not loop.remove_reader(fence.fileno())  # nothing left registered

        asyncio.run(scenario())


