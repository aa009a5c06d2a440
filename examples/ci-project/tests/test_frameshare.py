"""frameshare on real kernel buffers: run with `pytest --linuxdmabuf-vm` where the host has none."""
import json
import os
import select
import socket
import subprocess
import sys

import frameshare
import pytest
from frameshare import recv_frame, send_frame

PAGE = os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def consumer():
    """A consumer process on the other end of a socketpair; yields our end."""
    ours, theirs = socket.socketpair()
    src = os.path.dirname(os.path.dirname(frameshare.__file__))
    proc = subprocess.Popen([sys.executable, "-m", "frameshare.consumer", str(theirs.fileno())],
                            pass_fds=[theirs.fileno()], env=dict(os.environ, PYTHONPATH=src))
    theirs.close()
    try:
        yield ours
    finally:
        ours.close()  # end of stream: the consumer returns
        assert proc.wait(timeout=60) == 0


def reply(sock: socket.socket, timeout: float = 60) -> dict:
    line = b""
    while not line.endswith(b"\n"):
        assert select.select([sock], [], [], timeout)[0], "no reply from the consumer"
        chunk = sock.recv(4096)
        assert chunk, "the consumer hung up"
        line += chunk
    return json.loads(line)


def test_consumer_reads_frame_only_once_its_fence_signals(udmabuf, sw_sync_timeline, consumer,
                                                          dmabuf_leak_check):
    with udmabuf.allocate(PAGE) as buf, sw_sync_timeline.create_fence(1) as ready:
        send_frame(consumer, buf, ready, seq=1)  # sent before it is written, as a pipeline does
        assert not select.select([consumer], [], [], 0.5)[0], "the consumer did not wait for the fence"
        buf.write(b"frame 1")
        sw_sync_timeline.advance()
        got = reply(consumer)
        assert got == {"seq": 1, "inode": buf.inode, "data": "frame 1"}


def test_frames_from_the_system_heap(dma_heap, consumer, dmabuf_leak_check):
    for seq in range(1, 4):
        with dma_heap.allocate(PAGE) as buf:
            buf.write(f"frame {seq}".encode())
            with buf.export_sync_file() as ready:  # the buffer's own (already idle) fence
                send_frame(consumer, buf, ready, seq)
            assert reply(consumer) == {"seq": seq, "inode": buf.inode, "data": f"frame {seq}"}


@pytest.mark.requires_udmabuf
def test_recv_frame_rejects_other_fds_and_closes_them(dmabuf_leak_check):
    ours, theirs = socket.socketpair()
    with ours, theirs:
        memfd = os.memfd_create("not-a-dma-buf", os.MFD_CLOEXEC)
        try:
            socket.send_fds(ours, [b'{"seq": 1}'], [memfd, memfd])
        finally:
            os.close(memfd)
        before = len(os.listdir("/proc/self/fd"))
        with pytest.raises(ValueError, match="not a dma-buf"):
            recv_frame(theirs)
        assert len(os.listdir("/proc/self/fd")) == before
