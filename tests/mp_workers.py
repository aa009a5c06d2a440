"""Functions that multiprocessing runs in spawned children for tests/test_ipc.py.

A module of their own, importing only linuxdmabuf, so that a spawned child
does not import pytest and the test module (seconds under emulation).
"""
from helpers import cloexec

from linuxdmabuf import ipc


def write_and_return_fence(buf):
    ipc.register_multiprocessing()  # this spawned process sends a SyncFile back
    with buf:
        assert cloexec(buf.fileno())
        buf.write(buf.read(5).upper())
        return buf.inode, buf.export_sync_file()


def upper_in_place(buf):
    with buf:
        assert cloexec(buf.fileno())  # handed over inheritable by multiprocessing, made O_CLOEXEC again
        buf.write(buf.read(5).upper())
