"""sw_sync timelines on the real kernel: values, 32-bit wrap-around, error fences on close, merges on one
timeline, deadlines read back (SW_SYNC_GET_DEADLINE), and how sw_sync is found in debugfs.

What every sync_file does, whatever its source, is in test_syncfile.py (over sw_sync and vgem fences).
"""
import errno
import os
import subprocess
import sys
import time

import pytest

import linuxdmabuf
from linuxdmabuf import FenceStatus, SwSyncTimeline
from linuxdmabuf.pytest_plugin import need_module

need_module("sw_sync")  # one skip where the kernel has no sw_sync, a failure where it must
pytestmark = pytest.mark.requires_sw_sync


def now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def test_fence_signals_when_the_timeline_reaches_it(sw_sync_timeline):
    with sw_sync_timeline.create_fence(5) as fence:
        assert not fence.signaled and fence.status is FenceStatus.ACTIVE and not fence.wait(0)
        sw_sync_timeline.advance()
        assert not fence.wait(0.01)
        sw_sync_timeline.advance(4)
        assert fence.signaled and fence.wait(0) and fence.wait() and fence.status is FenceStatus.SIGNALED
        sw_sync_timeline.advance(10)
        assert fence.signaled


def test_fence_at_a_reached_value_is_born_signaled(sw_sync_timeline):
    sw_sync_timeline.advance(3)
    with sw_sync_timeline.create_fence(2) as early, sw_sync_timeline.create_fence(3) as exact:
        assert early.signaled and exact.signaled


def test_closing_the_timeline_signals_pending_fences_with_an_error():
    timeline = SwSyncTimeline()
    fence = timeline.create_fence(1)
    timeline.close()
    assert fence.wait(1) and fence.signaled
    assert fence.status is FenceStatus.ERROR
    info = fence.info()
    assert info.status is FenceStatus.ERROR and info.error == errno.ENOENT
    assert info.fences[0].status is FenceStatus.ERROR and info.fences[0].error == errno.ENOENT
    fence.close()


def test_merge_on_one_timeline_keeps_the_later_fence(sw_sync_timeline):
    fences = [sw_sync_timeline.create_fence(v) for v in (1, 2, 3)]
    with fences[1].merge(fences[0]) as d, fences[2].merge(d) as merged:
        assert len(merged.info().fences) == 1
        sw_sync_timeline.advance(2)
        assert not merged.signaled
        sw_sync_timeline.advance()
        assert merged.signaled
    for fence in fences:
        fence.close()


def test_deadline_is_kept_by_the_fence(sw_sync_timeline):
    with sw_sync_timeline.create_fence(1) as fence:
        assert sw_sync_timeline.deadline(fence) is None
        soon = now_ns() + 10**9
        fence.set_deadline(soon)
        assert sw_sync_timeline.deadline(fence) == soon
        fence.set_deadline(soon + 10**9)  # the earliest deadline wins
        assert sw_sync_timeline.deadline(fence.fileno()) == soon
        fence.set_deadline(soon - 5)
        assert sw_sync_timeline.deadline(fence) == soon - 5


def test_deadline_through_a_merge_reaches_each_fence(sw_sync_timeline):
    with SwSyncTimeline() as other, sw_sync_timeline.create_fence(1) as a, other.create_fence(1) as b:
        with a.merge(b) as merged:
            merged.set_deadline(now_ns() + 5 * 10**8)
            assert sw_sync_timeline.deadline(a) == other.deadline(b)
            with pytest.raises(OSError) as info:  # a merged array is not one sw_sync fence
                sw_sync_timeline.deadline(merged)
            assert info.value.errno == errno.EINVAL and "one sw_sync fence" in str(info.value)


def test_deadline_on_a_signaled_fence_is_a_noop(sw_sync_timeline):
    with sw_sync_timeline.create_fence(1) as fence:
        sw_sync_timeline.advance()
        fence.set_deadline(now_ns())
        assert sw_sync_timeline.deadline(fence) is None


def test_timeline_bad_values(sw_sync_timeline):
    for call, error in [(lambda: sw_sync_timeline.create_fence(-1), ValueError),
                        (lambda: sw_sync_timeline.create_fence(2**32), ValueError),
                        (lambda: sw_sync_timeline.create_fence("1"), TypeError),
                        (lambda: sw_sync_timeline.create_fence(1, name="n" * 40), ValueError),
                        (lambda: sw_sync_timeline.advance(-1), ValueError),
                        (lambda: sw_sync_timeline.advance(2**32), ValueError),
                        (lambda: sw_sync_timeline.advance(None), TypeError)]:
        with pytest.raises(error):
            call()
    with pytest.raises(OSError) as info:  # not a sync_file at all
        sw_sync_timeline.deadline(sw_sync_timeline.fileno())
    assert info.value.errno == errno.EINVAL


def test_timeline_compares_values_with_32_bit_wrap_around(sw_sync_timeline):
    """sw_sync: a fence is signaled when (int)(value - timeline) <= 0, so a value more
    than 2**31 ahead of the timeline counts as already reached."""
    with sw_sync_timeline.create_fence(2**31 - 1) as ahead, sw_sync_timeline.create_fence(2**31 + 1) as behind:
        assert not ahead.signaled and behind.signaled
        sw_sync_timeline.advance(2**31 - 1)
        assert ahead.signaled


def test_no_sw_sync_without_debugfs():
    """With debugfs unmounted (in a private mount namespace), the error says so."""
    code = ("import linuxdmabuf\ntry:\n    linuxdmabuf.SwSyncTimeline()\nexcept linuxdmabuf.UnsupportedError as e:\n"
            "    print(e)\n")
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           'umount -l /sys/kernel/debug && exec "$0" -c "$1"', sys.executable, code],
                          capture_output=True, text=True)
    if done.returncode and "Operation not permitted" in done.stderr:
        pytest.skip("needs root to unmount debugfs in a private mount namespace")
    assert "debugfs is not mounted" in done.stdout, done.stderr


def test_sw_sync_is_found_through_the_mount_table():
    from linuxdmabuf._mounts import debugfs_mount
    from linuxdmabuf.swsync import sw_sync_path

    assert sw_sync_path() == os.path.join(debugfs_mount(), "sync", "sw_sync")
    assert linuxdmabuf.features()["sw_sync"] and linuxdmabuf.features()["set_deadline"]
