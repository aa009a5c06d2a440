"""fork and exec: no fd of ours survives exec (a child program lists its fds), and a
forked child may use or close its copies without breaking the parent's objects."""
import os
import subprocess
import sys

import pytest
from helpers import open_fds

import linuxdmabuf
from linuxdmabuf import DmaBuf, FenceStatus, Heap, SwSyncTimeline, SyncFile, Udmabuf, ipc
from linuxdmabuf.pytest_plugin import has

PAGE = os.sysconf("SC_PAGE_SIZE")
pytestmark = pytest.mark.kernel

LIST_FDS = """
import os
for fd in os.listdir("/proc/self/fd"):
    try:
        print(fd, os.readlink(f"/proc/self/fd/{fd}"))
    except FileNotFoundError:
        pass  # the fd listdir itself used
"""


@pytest.fixture
def everything(dma_heap, udmabuf):
    """One object of every kind this kernel has, made every way the library makes them."""
    made = [dma_heap, udmabuf, Heap("system"), Udmabuf()]
    buf = dma_heap.allocate(PAGE)
    made += [buf, udmabuf.allocate(PAGE), dma_heap.allocate(PAGE, readonly=True), buf.dup(),
             DmaBuf.fromfd(buf.fileno()), DmaBuf.from_pid(os.getpid(), buf.fileno()), buf.export_sync_file(),
             linuxdmabuf.allocate(PAGE)]
    if has("sw_sync"):
        timeline = SwSyncTimeline()
        fence = timeline.create_fence(1)
        made += [timeline, fence, fence.merge(fence), SyncFile.fromfd(fence.fileno())]
    import socket

    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with left, right:
        ipc.send(left, buf)
        made += ipc.recv(right)[1]
    mapping = buf.map()  # Python's mmap keeps a dup of the fd
    yield made
    mapping.close()
    for obj in made[2:]:
        obj.close()


def _ours(fds: dict) -> dict:
    kinds = ("/dmabuf:", "anon_inode:sync_file", "/dev/dma_heap/", "/dev/udmabuf", "/sync/sw_sync")
    return {fd: target for fd, target in fds.items() if any(k in target for k in kinds)}


def _listed(stdout: str) -> dict:
    return {int(fd): target for fd, _, target in (line.partition(" ") for line in stdout.splitlines())}


@pytest.mark.parametrize("how", ["subprocess close_fds=False", "fork+execv", "posix_spawn"])
def test_no_fd_survives_exec(everything, how):
    mine = _ours(open_fds())
    assert len(mine) >= len(everything) - 1  # the mapping's dup is there too
    # The control: a dma-buf fd made inheritable on purpose must show up in the child.
    control = os.dup(everything[4].fileno())
    os.set_inheritable(control, True)
    argv = [sys.executable, "-c", LIST_FDS]
    if how == "subprocess close_fds=False":
        out = subprocess.run(argv, close_fds=False, capture_output=True, text=True, check=True).stdout
    else:
        r, w = os.pipe()
        if how == "fork+execv":
            pid = os.fork()
            if pid == 0:
                os.dup2(w, 1)
                os.execv(sys.executable, argv)
        else:
            actions = [(os.POSIX_SPAWN_DUP2, w, 1)]
            pid = os.posix_spawn(sys.executable, argv, os.environ, file_actions=actions)
        os.close(w)
        with open(r) as f:
            out = f.read()
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    os.close(control)
    child = _listed(out)
    assert child.get(control, "").startswith("/dmabuf:"), "the control fd did not reach the child"
    del child[control]
    assert not _ours(child), f"inherited across exec: {_ours(child)}"
    assert not set(mine) & set(child)


@pytest.mark.requires_sw_sync
def test_forked_child_uses_then_closes_its_copies(dma_heap, sw_sync_timeline):
    buf = dma_heap.allocate(PAGE)
    fence = sw_sync_timeline.create_fence(1)
    buf.import_sync_file(fence)
    before = {obj: os.fstat(obj.fileno()).st_ino for obj in (buf, fence, sw_sync_timeline, dma_heap)}
    pid = os.fork()
    if pid == 0:  # the child: use every copy, then close them all, then exit without cleanup
        status = 1
        try:
            assert not fence.signaled
            sw_sync_timeline.advance()  # the parent's fence signals: one timeline, one file
            assert fence.wait(5) and buf.wait(timeout=5)
            buf.write(b"from the child")
            with dma_heap.allocate(PAGE) as own:
                own.write(b"x")
            for obj in (buf, fence, sw_sync_timeline, dma_heap):
                obj.close()
            status = 0
        finally:
            os._exit(status)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    try:
        for obj, inode in before.items():  # the parent's fds are untouched
            assert not obj.closed and os.fstat(obj.fileno()).st_ino == inode
        assert fence.signaled and fence.status is FenceStatus.SIGNALED  # not an error: the timeline lives on
        assert buf.read(14) == b"from the child"
        with sw_sync_timeline.create_fence(2) as later:
            sw_sync_timeline.advance()
            assert later.wait(5)
        dma_heap.allocate(PAGE).close()
    finally:
        buf.close()
        fence.close()


@pytest.mark.requires_sw_sync
def test_a_child_closing_its_timeline_copy_does_not_error_the_parents_fences(sw_sync_timeline):
    """sw_sync signals pending fences with ENOENT when the timeline's file is released --
    which a child's close of its copy is not."""
    with sw_sync_timeline.create_fence(1) as fence:
        pid = os.fork()
        if pid == 0:
            sw_sync_timeline.close()
            os._exit(0)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        assert not fence.signaled
        sw_sync_timeline.advance()
        assert fence.status is FenceStatus.SIGNALED


def test_forked_child_garbage_collecting_its_copies_leaves_the_parents(dma_heap):
    holder = [dma_heap.allocate(PAGE)]
    holder[0].write(b"parent")
    fd = holder[0].fileno()
    pid = os.fork()
    if pid == 0:  # drop the child's only reference: its finaliser closes the child's fd
        import gc
        import warnings

        status = 1
        try:
            warnings.simplefilter("ignore", ResourceWarning)
            holder.clear()
            gc.collect()
            status = 0 if fd not in open_fds() else 2
        finally:
            os._exit(status)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    with holder[0] as buf:
        assert buf.fileno() == fd and buf.read(6) == b"parent" and buf.info().count == 1
