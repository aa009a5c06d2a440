"""Signals during blocking calls: a SIGALRM storm neither raises nor restarts the full
timeout of SyncFile.wait / DmaBuf.wait (the overshoot is printed), and a blocked
DMA_BUF_IOCTL_SYNC START interrupted by signals is restarted, as the kernel asks,
instead of failing with EINTR. (test_dmabuf.py and test_syncfile.py check one 0.5 s
wait under 50 ms alarms.)"""
import signal
import threading
import time

import pytest

import linuxdmabuf.dmabuf
from linuxdmabuf import _sys

PAGE = 4096
# A wait that restarted its timeout at each signal would never end under these
# alarms: any finite bound catches that. The bound is loose, for an emulator on
# a loaded machine; the overshoots themselves are printed (docs/reliability.md).
NEVER_ENDING = 10.0


class Alarms:
    """SIGALRM every `interval` seconds while in the block; counts deliveries."""

    def __init__(self, interval: float, handler=None):
        self.interval, self.hits, self.handler = interval, 0, handler

    def _count(self, *args):
        self.hits += 1
        if self.handler:
            self.handler()

    def __enter__(self):
        self.old = signal.signal(signal.SIGALRM, self._count)
        signal.setitimer(signal.ITIMER_REAL, self.interval, self.interval)
        return self

    def __exit__(self, *exc_info):
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.old)


@pytest.fixture
def busy(dma_heap, fence_source):
    """(buffer with an unsignaled write fence, that fence, a function signaling it)."""
    buf = dma_heap.allocate(PAGE)
    fence = fence_source.fence()
    buf.import_sync_file(fence)
    yield buf, fence, lambda: fence_source.signal(fence)
    buf.close()
    fence.close()


WAITS = {
    "SyncFile.wait": lambda buf, fence, t: fence.wait(t),
    "DmaBuf.wait": lambda buf, fence, t: buf.wait(timeout=t),
    "DmaBuf.wait(write=True)": lambda buf, fence, t: buf.wait(write=True, timeout=t),
}


@pytest.mark.parametrize("interval", [0.005, 0.03])
@pytest.mark.parametrize("timeout", [0.1, 0.6])
@pytest.mark.parametrize("kind", WAITS)
def test_wait_times_out_on_time_under_a_sigalrm_storm(busy, kind, timeout, interval):
    buf, fence, _ = busy
    with Alarms(interval) as alarms:
        start = time.monotonic()
        result = WAITS[kind](buf, fence, timeout)
        elapsed = time.monotonic() - start
    overshoot = elapsed - timeout
    print(f"\n{kind} timeout {timeout} s, SIGALRM every {interval * 1000:.0f} ms: "
          f"{alarms.hits} signals, overshoot {overshoot * 1000:.1f} ms")
    assert result is False and alarms.hits >= 1
    assert 0 <= overshoot < NEVER_ENDING


@pytest.mark.parametrize("kind", WAITS)
def test_wait_sees_the_fence_signal_during_a_sigalrm_storm(busy, kind):
    buf, fence, signal_fence = busy
    timer = threading.Timer(0.3, signal_fence)
    with Alarms(0.01) as alarms:
        timer.start()
        start = time.monotonic()
        result = WAITS[kind](buf, fence, 30)
        elapsed = time.monotonic() - start
    timer.join()
    assert result is True and alarms.hits >= 3 and elapsed >= 0.25


class CountingIoctl:
    """Stands in for the binding's raw ioctl(): counts calls on one fd, and EINTR failures."""

    def __init__(self, real, fd):
        self.real, self.fd, self.calls, self.eintr = real, fd, 0, 0

    def __call__(self, fd, *args):
        if fd == self.fd:
            self.calls += 1
        try:
            return self.real(fd, *args)
        except InterruptedError:
            if fd == self.fd:
                self.eintr += 1
            raise


def test_blocked_sync_start_is_restarted_after_eintr(busy, monkeypatch):
    """SYNC START waits, interruptibly, for the write fence; each SIGALRM makes the ioctl
    fail with EINTR, and sync_start issues it again until the fence signals."""
    buf, fence, signal_fence = busy
    lib = CountingIoctl(_sys.raw_ioctl, buf.fileno())
    monkeypatch.setattr(_sys, "raw_ioctl", lib)
    monkeypatch.setattr(linuxdmabuf.dmabuf, "raw_ioctl", lib)
    timer = threading.Timer(0.5, signal_fence)
    with Alarms(0.02) as alarms:
        timer.start()
        start = time.monotonic()
        buf.sync_start()
        elapsed = time.monotonic() - start
    timer.join()
    buf.sync_end()
    print(f"\nsync_start blocked {elapsed:.2f} s: {alarms.hits} signals, {lib.eintr} EINTR, {lib.calls} ioctls")
    assert elapsed >= 0.45 and alarms.hits >= 3
    # The restarts, the START that succeeded, the END (which a late alarm may interrupt too).
    assert lib.eintr >= 1 and lib.calls >= lib.eintr + 2


def test_a_raising_handler_interrupts_a_blocked_sync_start(busy):
    """PEP 475: a signal handler that raises ends the call with its exception."""
    buf, fence, signal_fence = busy

    def stop():
        raise InterruptedError("from the handler")

    with pytest.raises(InterruptedError, match="from the handler"):
        with Alarms(0.05, handler=stop):
            buf.sync_start()
    signal_fence()
    with buf.cpu_access():  # the buffer is fine afterwards
        pass
