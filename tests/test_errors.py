"""errno mapping, timeouts and names: the shared machinery, on any host."""
import errno
import math
import os

import pytest

from linuxdmabuf import FenceStatus, UnsupportedError, _uapi
from linuxdmabuf._sys import check_timeout, encode_name, ioctl, os_error
from linuxdmabuf.dmabuf import parse_fdinfo


@pytest.mark.parametrize("err, cls", [(errno.EACCES, PermissionError), (errno.ENOENT, FileNotFoundError),
                                      (errno.EINVAL, OSError), (errno.ENOTTY, UnsupportedError),
                                      (errno.EAGAIN, BlockingIOError), (errno.EINTR, InterruptedError)])
def test_os_error_keeps_errno_and_picks_the_subclass(err, cls):
    e = os_error(err, "SOME_IOCTL", "the fix")
    assert type(e) is cls and e.errno == err and "SOME_IOCTL" in str(e) and "the fix" in str(e)
    assert isinstance(e, OSError)


def test_ioctl_on_a_bad_fd_is_ebadf():
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError) as info:  # r is no open file (nothing else runs in this thread meanwhile)
        ioctl(r, _uapi.DMA_BUF_IOCTL_SYNC, _uapi.ffi.new("struct dma_buf_sync *"), "DMA_BUF_IOCTL_SYNC")
    assert info.value.errno == errno.EBADF and "DMA_BUF_IOCTL_SYNC" in str(info.value)


def test_unknown_ioctl_is_unsupported():
    r, w = os.pipe()
    try:
        with pytest.raises(UnsupportedError) as info:
            ioctl(r, _uapi.DMA_BUF_IOCTL_SYNC, _uapi.ffi.new("struct dma_buf_sync *"), "DMA_BUF_IOCTL_SYNC")
        assert info.value.errno == errno.ENOTTY
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("value, expected", [(None, None), (0, 0.0), (1, 1.0), (0.25, 0.25), (math.inf, None)])
def test_timeouts(value, expected):
    assert check_timeout(value) == expected


@pytest.mark.parametrize("value, error", [(-0.1, ValueError), (math.nan, ValueError), (-math.inf, ValueError),
                                          ("1", TypeError), (True, TypeError), ([], TypeError)])
def test_bad_timeouts(value, error):
    with pytest.raises(error):
        check_timeout(value)


def test_names():
    assert encode_name("abc", "name") == b"abc" and encode_name(b"\xff\xfe", "name") == b"\xff\xfe"
    assert encode_name("x" * 31, "name") == b"x" * 31
    for bad, error in [("x" * 32, ValueError), ("\0", ValueError), (1, TypeError), ("é" * 16, ValueError)]:
        with pytest.raises(error):
            encode_name(bad, "name")


def test_fence_status_from_kernel_values():
    assert [FenceStatus.from_kernel(v) for v in (1, 0, -2, -errno.ETIMEDOUT)] == \
        [FenceStatus.SIGNALED, FenceStatus.ACTIVE, FenceStatus.ERROR, FenceStatus.ERROR]


def test_parse_fdinfo_of_a_named_and_an_unnamed_buffer():
    named = parse_fdinfo("pos:\t0\nflags:\t02000002\nmnt_id:\t13\nino:\t42\nsize:\t8192\ncount:\t2\n"
                         "exp_name:\tsystem\nname:\tcam0 plane\n")
    assert (named.size, named.count, named.exp_name, named.name, named.ino, named.flags, named.mnt_id) == \
        (8192, 2, "system", "cam0 plane", 42, 0o2000002, 13)
    unnamed = parse_fdinfo("pos:\t0\nflags:\t02\nmnt_id:\t13\nino:\t7\nsize:\t4096\ncount:\t1\nexp_name:\tudmabuf\n")
    assert unnamed.name == "" and unnamed.flags == 2


def test_integer_arguments_take_any_integer_type_but_bool():
    from linuxdmabuf._sys import check_int

    class Index:  # what numpy's integers do: __index__
        def __index__(self):
            return 7

    assert check_int(5, "n") == 5 and check_int(Index(), "n") == 7 and check_timeout(Index()) == 7.0
    for bad in (True, 1.0, "1", None):
        with pytest.raises(TypeError, match="n must be an int"):
            check_int(bad, "n")


MISSING = """
import linuxdmabuf
for make in (linuxdmabuf.Udmabuf, linuxdmabuf.Heap):
    try:
        make()
    except OSError as e:
        print(type(e).__name__, e.errno, e)
"""


def test_a_kernel_without_the_devices_is_unsupported_naming_the_option():
    """No node and no module to load: UnsupportedError (ENOENT) naming the kernel option -- here on a host
    without them, or as root with an empty /dev in a private mount namespace (the VM's kernels have them)."""
    import subprocess
    import sys

    from linuxdmabuf._sys import module_available

    if os.path.exists("/dev/udmabuf") or os.path.isdir("/dev/dma_heap"):
        if os.geteuid() != 0:
            pytest.skip("the devices exist here: hiding them needs root (a private mount namespace)")
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   'mount -t tmpfs none /dev && exec "$0" -c "$1"', sys.executable, MISSING]
    else:
        command = [sys.executable, "-c", MISSING]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = done.stdout.splitlines()
    assert len(lines) == 2, done.stdout + done.stderr
    if not module_available("udmabuf"):
        assert lines[0].startswith("UnsupportedError 2 ") and "this kernel has no udmabuf (CONFIG_UDMABUF)" in lines[0]
    else:  # a module would make it: the fix is to load it
        assert lines[0].startswith("FileNotFoundError 2 ") and "sudo modprobe udmabuf" in lines[0]
    assert lines[1].startswith(("UnsupportedError 2 ", "FileNotFoundError 2 ")) and "CONFIG_DMABUF_HEAPS" in lines[1] \
        or "modprobe" in lines[1]
