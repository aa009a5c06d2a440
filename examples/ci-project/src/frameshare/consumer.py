"""The consuming process: ``python -m frameshare.consumer FD``.

For each frame received on the Unix socket FD: wait for its fence, read the
buffer, reply with one JSON line (seq, buffer inode, content).
"""
import json
import socket
import sys

from . import recv_frame


def serve(sock: socket.socket, fence_timeout: float = 30.0) -> None:
    while True:
        frame = recv_frame(sock)
        if frame is None:
            return
        seq, buf, ready = frame
        with buf, ready:
            if not ready.wait(fence_timeout):
                reply = {"seq": seq, "error": f"fence not signaled within {fence_timeout} s"}
            else:
                data = buf.read().rstrip(b"\0")
                reply = {"seq": seq, "inode": buf.inode, "data": data.decode(errors="replace")}
        sock.sendall(json.dumps(reply).encode() + b"\n")


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))
