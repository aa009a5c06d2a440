"""Crossing processes: ipc.send/recv over UNIX sockets, from_pid (pidfd_getfd), multiprocessing."""
import errno
import multiprocessing
import os
import pickle
import socket
import subprocess
import sys
import textwrap

import mp_workers
import pytest
from helpers import cloexec, open_fds

from linuxdmabuf import DmaBuf, Heap, SyncFile, ipc
from linuxdmabuf.pytest_plugin import has, need

pytestmark = pytest.mark.usefixtures("dmabuf_leak_check")


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    with a, b:
        yield a, b


@pytest.fixture
def buf(dma_heap):
    with dma_heap.allocate(8192) as buf:
        yield buf


def run_child(code: str, *args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], capture_output=True,
                          text=True, timeout=120, **kwargs)


# -- send / recv ----------------------------------------------------------------

def test_round_trip_gives_new_cloexec_fds_on_the_same_buffer_and_fence(pair, buf):
    a, b = pair
    buf.write(b"shared")
    with buf.export_sync_file() as fence:
        assert ipc.send(a, buf, fence, data=b"frame 1") == 7
        data, objs = ipc.recv(b)
    assert data == b"frame 1"
    got_buf, got_fence = objs
    with got_buf, got_fence:
        assert type(got_buf) is DmaBuf and type(got_fence) is SyncFile
        assert got_buf.fileno() != buf.fileno() and got_buf.inode == buf.inode
        assert cloexec(got_buf.fileno()) and cloexec(got_fence.fileno())
        assert got_buf.read(6) == b"shared" and got_fence.wait(0)
    assert not buf.closed  # sending never closes the sender's objects


def test_data_only_and_end_of_stream(pair):
    a, b = pair
    ipc.send(a, data=b"no fds")
    assert ipc.recv(b) == (b"no fds", [])
    a.close()
    assert ipc.recv(b) == (b"", [])


def test_default_data_is_one_nul_byte_on_a_stream(pair, buf):
    a, b = pair
    ipc.send(a, buf)
    data, (got,) = ipc.recv(b)
    with got:
        assert data == b"\0" and got.inode == buf.inode


def test_seqpacket_carries_fds_with_no_data(buf):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        ipc.send(a, buf, data=b"")
        data, (got,) = ipc.recv(b)
        with got:
            assert data == b"" and got.inode == buf.inode


def test_long_data_is_sent_whole(pair, buf):
    a, b = pair
    payload = bytes(range(256)) * 64
    ipc.send(a, buf, data=payload)
    data, (got,) = ipc.recv(b, bufsize=len(payload))
    got.close()
    while len(data) < len(payload):  # a stream may deliver it in pieces
        data += b.recv(len(payload))
    assert data == payload


def test_two_processes_share_the_buffer(pair, buf):
    """The child receives the buffer and a fence, writes a reply the parent reads through its own fd."""
    a, b = pair
    buf.write(b"ping")
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import socket, sys
        from linuxdmabuf import DmaBuf, SyncFile, ipc
        with socket.socket(fileno=int(sys.argv[1])) as sock:
            data, (buf, fence) = ipc.recv(sock, kinds=(DmaBuf, SyncFile))
            with buf, fence:
                assert fence.wait(5)
                buf.write(buf.read(4).upper() + b" from " + data, offset=4096)
                ipc.send(sock, data=str(buf.inode).encode())
        """), str(b.fileno())], pass_fds=[b.fileno()])
    try:
        with buf.export_sync_file(write=True) as fence:
            ipc.send(a, buf, fence, data=b"parent")
        data, objs = ipc.recv(a)
    finally:
        assert child.wait(120) == 0
    assert objs == [] and int(data) == buf.inode
    assert buf.read(11, offset=4096) == b"PING from p"


def test_wrong_kind_is_rejected_and_every_received_fd_closed(pair, buf):
    a, b = pair
    r, w = os.pipe()
    try:
        before = open_fds()
        socket.send_fds(a, [b"x"], [buf.fileno(), r])
        with pytest.raises(ValueError, match=r"not a DmaBuf or SyncFile \(it is 'pipe:"):
            ipc.recv(b)
        assert open_fds() == before
    finally:
        os.close(r)
        os.close(w)


def test_kinds_narrows_what_is_accepted(pair, buf):
    a, b = pair
    with buf.export_sync_file() as fence:
        before = open_fds()
        ipc.send(a, buf, fence)
        with pytest.raises(ValueError, match="not a DmaBuf .*anon_inode:sync_file"):
            ipc.recv(b, kinds=(DmaBuf,))
        assert open_fds() == before


def test_kinds_can_include_device_objects(pair, dma_heap):
    a, b = pair
    ipc.send(a, dma_heap)
    _, (heap,) = ipc.recv(b, kinds=(Heap,))
    with heap:
        assert heap.name == dma_heap.name
        heap.allocate(4096).close()


def test_more_fds_than_maxfds_raise_and_leak_nothing(pair, buf):
    a, b = pair
    before = open_fds()
    ipc.send(a, buf, buf, buf)
    with pytest.raises(OSError, match="more than maxfds=2") as info:
        ipc.recv(b, maxfds=2)
    assert info.value.errno == errno.EMSGSIZE
    assert open_fds() == before


def test_maxfds_is_exact_not_rounded_up_to_the_control_buffers_padding():
    """recv(maxfds=1) of a message with 2 fds: CMSG_SPACE(4) is padded to room for 2 on 64-bit
    machines, so the kernel would hand over both; with CMSG_LEN only 1 fits and the message is
    refused as too many (before any adoption: these are pipes)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    r, w = os.pipe()
    try:
        with a, b:
            before = open_fds()
            socket.send_fds(a, [b"x"], [r, w])
            with pytest.raises(OSError, match="more than maxfds=1") as info:
                ipc.recv(b, maxfds=1)
            assert info.value.errno == errno.EMSGSIZE
            assert open_fds() == before
    finally:
        os.close(r)
        os.close(w)


def test_truncated_datagram_raises_and_leaks_nothing(buf):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        before = open_fds()
        ipc.send(a, buf, data=b"x" * 100)
        with pytest.raises(OSError, match="longer than bufsize=10") as info:
            ipc.recv(b, bufsize=10)
        assert info.value.errno == errno.EMSGSIZE
        assert open_fds() == before


def test_send_refuses_bad_arguments(pair):
    a, _ = pair
    r, w = os.pipe()
    try:
        with pytest.raises(TypeError, match="socket.send_fds"):
            ipc.send(a, r)
        with pytest.raises(TypeError, match="socket.socket"):
            ipc.send(a.fileno())
    finally:
        os.close(r)
        os.close(w)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as inet:
        with pytest.raises(ValueError, match="AF_UNIX"):
            ipc.send(inet, data=b"x")
        with pytest.raises(ValueError, match="AF_UNIX"):
            ipc.recv(inet)


def test_send_refuses_empty_data_on_a_stream_and_closed_objects(pair, buf):
    a, b = pair
    with pytest.raises(ValueError, match="at least one byte"):
        ipc.send(a, buf, data=b"")
    closed = buf.dup()
    closed.close()
    with pytest.raises(ValueError, match="closed"):
        ipc.send(a, buf, closed)
    with pytest.raises(ValueError, match="at most 253"):
        ipc.send(a, *[buf] * 254)
    b.setblocking(False)
    with pytest.raises(BlockingIOError):  # nothing was sent by the refused calls
        b.recv(1)


@pytest.mark.parametrize("kwargs, error", [
    ({"maxfds": 0}, ValueError), ({"maxfds": 254}, ValueError), ({"maxfds": 1.0}, TypeError),
    ({"bufsize": 0}, ValueError), ({"bufsize": True}, TypeError), ({"kinds": ()}, TypeError),
    ({"kinds": (int,)}, TypeError),
])
def test_recv_refuses_bad_arguments(pair, kwargs, error):
    with pytest.raises(error):
        ipc.recv(pair[1], **kwargs)


# -- from_pid (pidfd_getfd) --------------------------------------------------------
# The tests using `holder` are marked kernel by hand: it is module-scoped, so it
# cannot use the function-scoped dma_heap fixture that marks the others.

HOLDER = """
    import sys
    import linuxdmabuf
    with linuxdmabuf.allocate(4096) as buf, buf.export_sync_file() as fence:
        buf.write(b"held by the child")
        print(buf.fileno(), fence.fileno(), buf.inode, flush=True)
        sys.stdin.read()
"""


@pytest.fixture(scope="module")
def holder():
    """One child process holding a buffer and a fence, shared by the from_pid tests
    (each Python start costs seconds under emulation)."""
    if not has("heap:system"):
        need("udmabuf")
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLDER)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        buf_fd, fence_fd, inode = map(int, child.stdout.readline().split())
        yield child, buf_fd, fence_fd, inode
    finally:
        child.stdin.close()
        child.wait(120)
        child.stdout.close()


@pytest.mark.kernel
def test_from_pid_takes_the_other_process_buffer_and_fence(holder):
    child, buf_fd, fence_fd, inode = holder
    with DmaBuf.from_pid(child.pid, buf_fd) as buf, SyncFile.from_pid(child.pid, fence_fd) as fence:
        assert buf.inode == inode and buf.read(17) == b"held by the child"
        assert cloexec(buf.fileno()) and cloexec(fence.fileno()) and fence.wait(0)


@pytest.mark.kernel
def test_from_pidfd(holder):
    child, buf_fd, _, inode = holder
    pidfd = os.pidfd_open(child.pid)
    try:
        with DmaBuf.from_pidfd(pidfd, buf_fd) as buf:
            assert buf.inode == inode
    finally:
        os.close(pidfd)


@pytest.mark.kernel
def test_from_pid_of_the_wrong_kind_keeps_nothing(holder):
    child, buf_fd, fence_fd, _ = holder
    before = open_fds()
    with pytest.raises(ValueError, match=rf"fd {buf_fd} of process {child.pid} is not a SyncFile \(it is '/dmabuf:"):
        SyncFile.from_pid(child.pid, buf_fd)
    with pytest.raises(ValueError, match="is not a DmaBuf"):
        DmaBuf.from_pid(child.pid, 0)  # the child's stdin: a pipe
    assert open_fds() == before


@pytest.mark.kernel
def test_from_pid_errors(holder):
    child, *_ = holder
    with pytest.raises(OSError, match="no such open fd") as info:
        DmaBuf.from_pid(child.pid, 1000)
    assert info.value.errno == errno.EBADF
    with pytest.raises(ProcessLookupError):
        DmaBuf.from_pid(2**22 + 1, 3)  # above pid_max's limit: never a process
    for pid, error in ((0, ValueError), (-1, ValueError), (True, TypeError), ("1", TypeError)):
        with pytest.raises(error):
            DmaBuf.from_pid(pid, 3)
    with pytest.raises(ValueError):
        DmaBuf.from_pid(child.pid, -1)


@pytest.mark.kernel
def test_from_pid_forbidden_names_the_ptrace_rules(holder):
    """Another uid may not take a root process's fds: PermissionError saying why."""
    child, buf_fd, *_ = holder
    if os.getuid() != 0:
        pytest.skip("needs root to run the taker as another user")
    done = run_child(f"""
        from linuxdmabuf import DmaBuf
        try:
            DmaBuf.from_pid({child.pid}, {buf_fd})
        except PermissionError as e:
            print(e)
        """, user="nobody", cwd="/")
    assert done.returncode == 0, done.stderr
    assert f"pidfd_getfd of fd {buf_fd} of process {child.pid}" in done.stdout
    assert "ptrace" in done.stdout and "CAP_SYS_PTRACE" in done.stdout


YAMA = "/proc/sys/kernel/yama/ptrace_scope"

TAKER = """
import sys
from linuxdmabuf import DmaBuf
for attempt in (1, 2):
    try:
        DmaBuf.from_pid(int(sys.argv[1]), int(sys.argv[2]))
    except PermissionError as e:
        print("refused:", e, flush=True)
    except ValueError as e:  # let in: the fd is a pipe, not a dma-buf
        print("allowed:", e, flush=True)
    sys.stdin.readline()
"""

PR_SET_PTRACER_SCENARIO = f"""
    import ctypes, os, subprocess, sys
    r, w = os.pipe()
    taker = subprocess.Popen([sys.executable, "-c", {TAKER!r}, str(os.getpid()), str(r)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    print(taker.stdout.readline(), end="")  # refused: the taker is this process's child, not its ancestor
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(0x59616d61, taker.pid, 0, 0, 0) == 0, ctypes.get_errno()  # PR_SET_PTRACER
    taker.stdin.write("\\n")
    taker.stdin.flush()
    print(taker.stdout.readline(), end="")
    taker.stdin.close()
    sys.exit(taker.wait())
"""


@pytest.mark.kernel
def test_yama_scope_1_refuses_a_non_ancestor_until_pr_set_ptracer(tmp_path):
    if not os.path.exists(YAMA):
        pytest.skip(f"kernel {os.uname().release} has no Yama LSM ({YAMA})")
    if os.getuid() != 0:
        pytest.skip("needs root to set ptrace_scope and to run the scenario as another user")
    with open(YAMA) as f:
        saved = f.read().strip()
    try:
        with open(YAMA, "w") as f:
            f.write("1")
        done = run_child(PR_SET_PTRACER_SCENARIO, user="nobody", cwd="/")
    finally:
        with open(YAMA, "w") as f:
            f.write(saved)
    assert done.returncode == 0, done.stderr
    refused, allowed = done.stdout.splitlines()
    assert refused.startswith("refused:") and "ptrace_scope is 1" in refused and "PR_SET_PTRACER" in refused
    assert allowed.startswith("allowed:") and "is not a DmaBuf (it is 'pipe:" in allowed


# -- multiprocessing ------------------------------------------------------------------

def test_multiprocessing_spawn_pool_passes_objects_both_ways(buf):
    ipc.register_multiprocessing()
    buf.write(b"hello")
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        inode, fence = pool.apply(mp_workers.write_and_return_fence, (buf,))
    with fence:
        assert isinstance(fence, SyncFile) and cloexec(fence.fileno()) and fence.wait(0)
    assert inode == buf.inode and buf.read(5) == b"HELLO"


def test_multiprocessing_spawn_process_argument(buf):
    ipc.register_multiprocessing()
    buf.write(b"spawn")
    process = multiprocessing.get_context("spawn").Process(target=mp_workers.upper_in_place, args=(buf,))
    process.start()
    process.join(120)
    assert process.exitcode == 0
    assert buf.read(5) == b"SPAWN"


def test_multiprocessing_pipe_in_one_process(buf):
    ipc.register_multiprocessing()
    a, b = multiprocessing.Pipe()
    with a, b:
        a.send(buf)
        with b.recv() as got:
            assert got.inode == buf.inode and got.fileno() != buf.fileno() and cloexec(got.fileno())


def test_send_handle_recv_handle(buf):
    """multiprocessing.reduction's own fd passing, for code that already uses it."""
    from multiprocessing.reduction import recv_handle, send_handle

    a, b = multiprocessing.Pipe()
    with a, b:
        send_handle(a, buf.fileno(), os.getpid())
        with DmaBuf(recv_handle(b)) as got:
            assert got.inode == buf.inode


def test_plain_pickle_still_refuses(buf):
    ipc.register_multiprocessing()
    with pytest.raises(TypeError, match="linuxdmabuf.ipc"):
        pickle.dumps(buf)


def test_register_multiprocessing_refuses_other_classes():
    with pytest.raises(TypeError):
        ipc.register_multiprocessing(int)
