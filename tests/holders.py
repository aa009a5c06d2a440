"""Child processes that hold dma-bufs the way real programs do, for the dump/watch tests.

A Holder is a separate Python process connected by a SOCK_SEQPACKET socket;
give() passes it a dma-buf fd (socket.send_fds) and says what to do with it:
"keep" the fd, "dup" it (two fds), "map" it with mmap(2) and close the fd
(the buffer then lives only through the mapping), or "keep+map". The child
maps with libc's mmap, not Python's mmap module, which would keep a dup of
the fd. It exits when the socket closes.
"""
import socket
import subprocess
import sys

CHILD = r"""
import ctypes, mmap, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
sock = socket.socket(fileno=int(sys.argv[1]))
kept = []
while True:
    msg, fds, _, _ = socket.recv_fds(sock, 256, 4)
    if not msg:
        break
    how, size = msg.decode().split()
    fd = fds[0]
    if "map" in how:
        addr = libc.mmap(None, int(size), mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr is None or addr == ctypes.c_void_p(-1).value:
            sock.send(b"mmap: " + os.strerror(ctypes.get_errno()).encode())
            continue
    if how == "map":
        os.close(fd)
    else:
        kept.append(fd)
        if how == "dup":
            kept.append(os.dup(fd))
    sock.send(b"ok")
"""


class Holder:
    """A child process holding the dma-bufs it is given."""

    def __init__(self, user=None):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self.proc = subprocess.Popen([sys.executable, "-c", CHILD, str(theirs.fileno())],
                                         pass_fds=[theirs.fileno()], user=user)
        self.sock = ours

    @property
    def pid(self) -> int:
        return self.proc.pid

    def give(self, buf, how: str = "keep") -> None:
        assert how in ("keep", "dup", "map", "keep+map")
        socket.send_fds(self.sock, [f"{how} {buf.size}".encode()], [buf.fileno()])
        answer = self.sock.recv(256)
        assert answer == b"ok", answer

    def kill(self) -> None:
        """SIGKILL and reap: its /proc entry is gone when this returns."""
        self.proc.kill()
        self.proc.wait()
        self.sock.close()

    def close(self) -> None:
        self.sock.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
