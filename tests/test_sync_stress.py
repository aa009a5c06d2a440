"""Stress-lite ports of the kernel's sync selftests (tools/testing/selftests/sync:
sync_stress_parallelism, sync_stress_consumer, sync_stress_merge) and of Android
libsync's StressTest/ConsumerStressTest/MergeStressTest, written against this
library's API. CI runs them small; LINUXDMABUF_LONG=1 runs the originals' sizes.
"""
import os
import random
import threading

import pytest
from reliability import LONG, at_baseline, scaled

from linuxdmabuf import FenceStatus, SwSyncTimeline, SyncFile
from linuxdmabuf.pytest_plugin import need_module

need_module("sw_sync")  # sw_sync's own semantics: one skip where the kernel has none, a failure where it must
pytestmark = [pytest.mark.requires_sw_sync, pytest.mark.slow]
FOREVER = 120  # seconds: a wait that long means a lost wake-up


def run_threads(targets):
    """Run each callable in its own thread; re-raise the first failure."""
    errors = []

    def guard(target):
        try:
            target()
        except BaseException as e:  # noqa: BLE001 -- re-raised below
            errors.append(e)

    threads = [threading.Thread(target=guard, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def test_two_threads_take_turns_on_one_timeline(sw_sync_timeline):
    """Thread `tid` waits for value 2i+tid, checks the shared counter and bumps it, then
    advances the timeline, which releases the other thread."""
    iterations = scaled(400, 1 << 16)
    counter = [0]

    def worker(tid):
        for i in range(iterations):
            with sw_sync_timeline.create_fence(2 * i + tid) as fence:
                assert fence.wait(FOREVER), f"thread {tid} never saw {2 * i + tid}"
                assert counter[0] == 2 * i + tid
                counter[0] += 1
                sw_sync_timeline.advance()

    with at_baseline():
        run_threads([lambda: worker(0), lambda: worker(1)])
    assert counter[0] == 2 * iterations


def _busy_wait(fence):
    """Wait by polling the fence's FILE_INFO, as the originals' alternate path does."""
    while fence.status is not FenceStatus.SIGNALED:
        assert fence.status is not FenceStatus.ERROR


@pytest.mark.parametrize("producers", [2, 5] + ([16] if LONG else []))
def test_producers_and_one_consumer(producers):
    """Each producer waits for the consumer's timeline to reach its iteration, counts, and
    advances its own timeline; the consumer waits on a merge of all producers' fences and
    checks it saw every producer's count before advancing its timeline."""
    iterations = scaled(150, 1 << 12)
    lock = threading.Lock()
    counter = [0]
    consumer_line = SwSyncTimeline()
    lines = [SwSyncTimeline() for _ in range(producers)]

    def producer(pid):
        for i in range(iterations):
            with consumer_line.create_fence(i) as fence:
                if (iterations + pid) % 8:
                    assert fence.wait(FOREVER)
                else:
                    _busy_wait(fence)
            with lock:
                counter[0] += 1
            lines[pid].advance()

    def consumer():
        for it in range(1, iterations + 1):
            fences = [line.create_fence(it) for line in lines]
            try:
                merged = SyncFile.merge_all(fences)
            finally:
                for fence in fences:
                    fence.close()
            with merged:
                if iterations % 8:
                    assert merged.wait(FOREVER)
                else:
                    _busy_wait(merged)
            assert counter[0] == producers * it
            consumer_line.advance()

    try:
        with at_baseline():
            run_threads([lambda p=p: producer(p) for p in range(producers)] + [consumer])
    finally:
        for line in lines + [consumer_line]:
            line.close()
    assert counter[0] == producers * iterations


@pytest.mark.parametrize("timelines", [16, 32])
def test_random_merges_keep_one_fence_per_timeline(timelines):
    """Merge fences at random points of random timelines into one sync_file, step by
    step. The kernel drops signaled fences and keeps only the latest fence of each
    timeline, so the merge holds exactly one fence per timeline with a pending point;
    it signals only when every one of them is reached."""
    merges = scaled(1024, 1 << 15)
    seed = int(os.environ.get("LINUXDMABUF_SEED", "20261129"))  # fixed: a failure reproduces; vary it by hand
    rng = random.Random(seed)
    lines = [SwSyncTimeline() for _ in range(timelines)]
    latest = {}  # timeline index -> the highest point merged in
    try:
        with at_baseline():
            fence = lines[0].create_fence(0)  # born signaled, as in the originals
            for step in range(merges):
                t = rng.randrange(timelines)
                point = rng.randrange(2**31)
                if point:  # point 0 is already reached: a signaled fence, dropped by the merge
                    latest[t] = max(latest.get(t, 0), point)
                with lines[t].create_fence(point) as new:
                    merged = fence.merge(new) if rng.random() < 0.5 else new.merge(fence)
                fence.close()
                fence = merged
                if step % 64 == 0 or step == merges - 1:
                    assert len(fence.info().fences) == max(1, len(latest)), f"seed {seed}, step {step}"
            with fence:
                assert len(fence.info().fences) == len(latest) == sum(1 for f in fence.info().fences
                                                                      if f.status is FenceStatus.ACTIVE)
                for t in rng.sample(sorted(latest), len(latest)):
                    assert not fence.wait(0), f"seed {seed}: signaled before timeline {t} reached {latest[t]}"
                    lines[t].advance(latest[t])
                assert fence.wait(0)
    finally:
        for line in lines:
            line.close()
