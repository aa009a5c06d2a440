"""Threads: eight threads working on shared objects (SYNC pairs, exports, waits,
allocations, merges) with no errors and nothing leaked; and the GIL released while
a thread is blocked in a wait or a SYNC START on an unsignaled fence.

CI runs the shared-object workout for 2 s, LINUXDMABUF_LONG=1 for 12 s.
"""
import os
import random
import threading
import time

import pytest
from reliability import at_baseline, scaled

from linuxdmabuf import SyncFile

PAGE = os.sysconf("SC_PAGE_SIZE")
THREADS = 8
SECONDS = scaled(2, 12)
pytestmark = pytest.mark.kernel


class Shared:
    """The objects all threads use at once."""

    def __init__(self, heap, udmabuf, fence_source):
        self.heap, self.udmabuf = heap, udmabuf
        self.buf = heap.allocate(THREADS * PAGE)  # page i belongs to thread i
        self.ubuf = udmabuf.allocate(THREADS * PAGE)
        self.pending = fence_source.fence()  # not signaled during the test
        self.busy = heap.allocate(PAGE)
        self.busy.import_sync_file(self.pending)

    def close(self):
        for obj in (self.buf, self.ubuf, self.busy, self.pending):
            obj.close()


def _sync_pair_and_own_page(shared, i, rng):
    buf = rng.choice([shared.buf, shared.ubuf])
    value = bytes([rng.randrange(256)]) * 16
    with buf.map(i * PAGE, PAGE) as m:
        with buf.cpu_access(read=False, write=True):
            m[:16] = value
        with buf.cpu_access(read=True, write=False):
            assert m[:16] == value  # no other thread writes this page


def _read_write_helpers(shared, i, rng):
    data = os.urandom(rng.randrange(1, 64))
    offset = i * PAGE + rng.randrange(PAGE - 64)
    shared.ubuf.write(data, offset)
    assert shared.ubuf.read(len(data), offset) == data


def _export_idle(shared, i, rng):
    with shared.buf.export_sync_file(write=rng.random() < 0.5) as fence:
        assert fence.signaled and fence.wait(0)


def _wait_idle_and_busy(shared, i, rng):
    assert shared.buf.wait(timeout=0) and shared.ubuf.wait(write=True, timeout=1)
    assert not shared.busy.wait(timeout=0.002) and not shared.pending.wait(0.002)
    with shared.busy.export_sync_file() as fence:
        assert not fence.wait(0.001)


def _allocate(shared, i, rng):
    device = rng.choice([shared.heap, shared.udmabuf])
    with device.allocate(rng.randrange(1, 4 * PAGE)) as buf:
        buf.write(b"mine", 0)
        assert buf.read(4) == b"mine"


def _merge(shared, i, rng):
    with shared.buf.export_sync_file() as done, SyncFile.merge_all([done, shared.pending]) as merged:
        assert len(merged.info().fences) == 1 and not merged.signaled


def _names_and_info(shared, i, rng):
    shared.buf.name = f"thread-{i}"
    assert shared.buf.name.startswith("thread-") and shared.buf.info().size == shared.buf.size


def _dup_and_close(shared, i, rng):
    with shared.buf.dup() as copy:
        assert copy.inode == shared.buf.inode


OPERATIONS = [_sync_pair_and_own_page, _read_write_helpers, _export_idle, _wait_idle_and_busy, _allocate, _merge,
              _names_and_info, _dup_and_close]


@pytest.mark.slow
def test_eight_threads_on_shared_objects(dma_heap, udmabuf, fence_source):
    # vgem signals its fences by itself after 10 s: the pending one must outlive the run.
    seconds = min(SECONDS, 8) if fence_source.name == "vgem" else SECONDS
    shared = Shared(dma_heap, udmabuf, fence_source)
    errors, counts = [], [0] * THREADS
    start = threading.Barrier(THREADS)

    def worker(i):
        rng = random.Random(i)
        try:
            start.wait()
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                rng.choice(OPERATIONS)(shared, i, rng)
                counts[i] += 1
        except BaseException as e:  # noqa: BLE001 -- reported below
            errors.append((i, e))

    try:
        with at_baseline():
            threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(seconds + 120)
            assert not any(t.is_alive() for t in threads)
    finally:
        shared.close()
    assert not errors, errors
    assert all(counts), counts
    print(f"\n{THREADS} threads for {seconds} s, {fence_source.name} fences: {sum(counts)} operations ({counts})")


# -- the GIL is released while blocked ----------------------------------------------------------

WINDOW = 0.5
ROUNDS = 3


class Counter:
    """A thread counting loop iterations as fast as the GIL lets it."""

    def __enter__(self):
        self.value = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._count)
        self.thread.start()
        time.sleep(0.1)
        return self

    def _count(self):
        while not self.stop.is_set():
            self.value += 1

    def __exit__(self, *exc_info):
        self.stop.set()
        self.thread.join()


def _blocked_rate(counter, call, release, control=False) -> tuple:
    """(iterations, seconds) counted while another thread is in `call()`, measured by
    that thread itself around the call; `release()` ends the call after WINDOW seconds."""
    box = {}

    def blocker():
        before, start = counter.value, time.monotonic()
        call()
        box["counted"], box["seconds"] = counter.value - before, time.monotonic() - start

    thread = threading.Thread(target=blocker)
    thread.start()
    time.sleep(WINDOW)
    still_blocked = thread.is_alive()
    release()
    thread.join(30)
    # (The control's call keeps the GIL: this thread could not even look before it was over.)
    assert control or (still_blocked and box["seconds"] >= WINDOW * 0.9), "the call did not block for the window"
    return box["counted"], box["seconds"]


def gil_ratio(prepare, control=False) -> tuple:
    """The counter's rate while another thread is blocked over its rate while that
    thread sleeps in time.sleep (which releases the GIL), over ROUNDS windows of each."""
    counts = {"idle": [0, 0.0], "blocked": [0, 0.0]}
    with Counter() as counter:
        for round_ in range(ROUNDS):
            before, start = counter.value, time.monotonic()
            time.sleep(WINDOW)
            counts["idle"][0] += counter.value - before
            counts["idle"][1] += time.monotonic() - start
            counted, seconds = _blocked_rate(counter, *prepare(round_), control=control)
            counts["blocked"][0] += counted
            counts["blocked"][1] += seconds
    rate = {k: n / t for k, (n, t) in counts.items()}
    return rate["blocked"] / rate["idle"], round(rate["blocked"]), round(rate["idle"])


def _holds_the_gil(round_):
    import ctypes

    usleep = ctypes.PyDLL(None).usleep  # a PyDLL function keeps the GIL during the call
    return (lambda: usleep(int(WINDOW * 1e6))), (lambda: None)


def test_the_gil_probe_sees_a_held_gil():
    """The control: a thread in a C call that keeps the GIL stalls the counter."""
    ratio, blocked, idle = gil_ratio(_holds_the_gil, control=True)
    print(f"\ncontrol, usleep holding the GIL: {blocked}/s vs {idle}/s sleeping: ratio {ratio:.3f}")
    assert ratio < 0.25


@pytest.mark.parametrize("kind", ["SyncFile.wait()", "DmaBuf.wait()", "DmaBuf.wait(write=True)", "DmaBuf.sync_start()"])
def test_gil_released_while_blocked_on_an_unsignaled_fence(kind, dma_heap, fence_source):
    """A counting thread keeps counting while another is blocked on an unsignaled fence,
    about as much as while the other sleeps; holding the GIL would stall it (ratio near 0,
    the control above). The ratios are printed; the bound only tells "counts" from "stalled"."""
    buf = dma_heap.allocate(PAGE)
    made = []

    def prepare(round_):
        fence = fence_source.fence()
        made.append(fence)
        buf.import_sync_file(fence)
        call = {"SyncFile.wait()": fence.wait, "DmaBuf.wait()": buf.wait,
                "DmaBuf.wait(write=True)": lambda: buf.wait(write=True), "DmaBuf.sync_start()": buf.sync_start}[kind]
        return call, lambda: fence_source.signal(fence)

    try:
        ratio, blocked, idle = gil_ratio(prepare)
        if kind == "DmaBuf.sync_start()":
            for _ in range(ROUNDS):
                buf.sync_end()
    finally:
        buf.close()
        for fence in made:
            fence.close()
    print(f"\n{kind} ({fence_source.name}): counter {blocked}/s while blocked vs {idle}/s while sleeping: "
          f"ratio {ratio:.2f}")
    assert ratio > 0.1, (blocked, idle)
