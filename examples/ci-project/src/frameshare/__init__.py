"""frameshare: pass a frame (a dma-buf) and the fence saying it is ready to another process.

The producer sends the buffer's fd and a sync_file fd over a Unix socket
(SCM_RIGHTS) before it has finished writing; the consumer waits on the fence,
then reads. This is the pattern of camera pipelines and compositors, in
miniature.
"""
import json
import socket

from linuxdmabuf import DmaBuf, SyncFile

MAX_HEADER = 4096


def send_frame(sock: socket.socket, buf: DmaBuf, ready: SyncFile, seq: int) -> None:
    """Send `buf` and its `ready` fence, with the frame number, as one message."""
    header = json.dumps({"seq": seq, "size": buf.size}).encode()
    socket.send_fds(sock, [header], [buf.fileno(), ready.fileno()])


def recv_frame(sock: socket.socket):
    """(seq, DmaBuf, SyncFile) of the next frame, or None at end of stream.

    Raises ValueError (having closed whatever fds came) if the message is not
    a frame: wrong number of fds, or fds that are not a dma-buf and a sync_file.
    """
    header, fds, _flags, _addr = socket.recv_fds(sock, MAX_HEADER, 2)
    if not header and not fds:
        return None
    owned = list(fds)
    try:
        if len(fds) != 2:
            raise ValueError(f"a frame carries 2 fds (buffer, fence), this message {len(fds)}")
        buf = DmaBuf(fds[0])  # ValueError if it is not a dma-buf
        owned.remove(fds[0])
        try:
            ready = SyncFile(fds[1])
        except ValueError:
            buf.close()
            raise
        owned.remove(fds[1])
        return json.loads(header)["seq"], buf, ready
    finally:
        for fd in owned:
            socket.close(fd)
