"""Argument checks that need no kernel object: they run on any host."""
import errno
import os

import pytest
from helpers import open_fds

import linuxdmabuf
from linuxdmabuf import DmaBuf, Heap, SwSyncTimeline, SyncFile, Udmabuf


def _closed_fd() -> int:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    return fd


@pytest.mark.parametrize("cls", [DmaBuf, SyncFile, Heap, Udmabuf, SwSyncTimeline])
def test_adopt_bad_arguments(cls):
    with pytest.raises(ValueError):
        cls(-1)
    with pytest.raises(TypeError):
        cls(True)
    with pytest.raises(TypeError):
        cls(3.0)
    r, w = os.pipe()
    try:
        with pytest.raises(TypeError, match="fromfd"):
            cls(open(os.devnull))  # an object with fileno(): adopting it would double-close
        with pytest.raises(OSError) as info:  # a closed fd number
            cls(_closed_fd())
        assert info.value.errno == errno.EBADF
    finally:
        os.close(r)
        os.close(w)


def _wrong_kind_fds():
    """(name, fd) of fds that are not the classes' kind: each test closes them."""
    r, w = os.pipe()
    fds = [("pipe", r), ("memfd", os.memfd_create("x")), ("regular file", os.open(__file__, os.O_RDONLY)),
           ("directory", os.open("/", os.O_RDONLY)), ("/dev/null", os.open(os.devnull, os.O_RDONLY))]
    os.close(w)
    return fds


@pytest.mark.parametrize("cls", [DmaBuf, SyncFile, Heap, Udmabuf, SwSyncTimeline])
def test_wrong_kind_refused_and_left_open(cls):
    for name, fd in _wrong_kind_fds():
        try:
            before = open_fds()
            with pytest.raises(ValueError, match="not"):
                cls(fd)
            with pytest.raises(ValueError):
                cls.fromfd(fd)
            assert open_fds() == before, f"{cls.__name__} leaked or closed an fd for a {name}"
        finally:
            os.close(fd)


def test_package_exports_contract_names():
    for name in ["DmaBuf", "SyncFile", "Heap", "Udmabuf", "SwSyncTimeline", "FenceStatus", "UnsupportedError",
                 "allocate", "features"]:
        assert hasattr(linuxdmabuf, name)
    assert issubclass(linuxdmabuf.UnsupportedError, OSError)
