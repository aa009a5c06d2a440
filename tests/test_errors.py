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
    with pytest.raises(OSError) as info:
        ioctl(-1, _uapi.DMA_BUF_IOCTL_SYNC, _uapi.ffi.new("struct dma_buf_sync *"), "DMA_BUF_IOCTL_SYNC")
    assert info.value.errno == errno.EBADF


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
