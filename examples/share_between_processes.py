#!/usr/bin/env python3
"""Two processes share one dma-buf, three ways.

1. over a UNIX socket (SCM_RIGHTS): linuxdmabuf.ipc.send / recv;
2. taken from the other process with pidfd_getfd: DmaBuf.from_pid;
3. through multiprocessing, once linuxdmabuf.ipc.register_multiprocessing() ran.

Each time the receiver gets its own fd on the same buffer (same inode, same
pages): what one process writes, the other reads. Needs a dma-buf provider
this user may use (/dev/dma_heap/system or /dev/udmabuf: root, or see
udmabuf-setup.sh).
"""
import multiprocessing
import os
import socket
import subprocess
import sys

import linuxdmabuf
from linuxdmabuf import DmaBuf, SyncFile, ipc


def socket_child(sock_fd: int) -> None:
    """Receive a buffer and a fence, read the greeting, write a reply, say so."""
    with socket.socket(fileno=sock_fd) as sock:
        data, (buf, fence) = ipc.recv(sock, kinds=(DmaBuf, SyncFile))
        with buf, fence:
            fence.wait()  # whatever was using the buffer when it was sent is done (a GPU's fence would go here)
            greeting = buf.read(int(data)).decode()
            reply = f"hello back from pid {os.getpid()}".encode()
            buf.write(reply, offset=4096)
            ipc.send(sock, data=str(len(reply)).encode())
    print(f"  child {os.getpid()} read {greeting!r}", flush=True)


def over_a_socket() -> None:
    print("1. over a UNIX socket", flush=True)
    with linuxdmabuf.allocate(8192) as buf:
        greeting = f"hello from pid {os.getpid()}, inode {buf.inode}".encode()
        buf.write(greeting)
        parent, child = socket.socketpair()
        with parent, child, buf.export_sync_file(write=True) as fence:
            process = subprocess.Popen([sys.executable, __file__, "socket-child", str(child.fileno())],
                                       pass_fds=[child.fileno()])
            child.close()
            ipc.send(parent, buf, fence, data=str(len(greeting)).encode())
            data, _ = ipc.recv(parent)
            reply = buf.read(int(data), offset=4096).decode()
        if process.wait() != 0:
            sys.exit("socket child failed")
        print(f"  parent read the child's reply {reply!r}", flush=True)


def holder() -> None:
    """Allocate a buffer, write into it, print its fd number and inode, wait for stdin to close."""
    with linuxdmabuf.allocate(4096) as buf:
        buf.write(f"written by pid {os.getpid()}".encode())
        print(buf.fileno(), buf.inode, flush=True)
        sys.stdin.read()


def by_pidfd_getfd() -> None:
    print("2. taken with pidfd_getfd (DmaBuf.from_pid)", flush=True)
    process = subprocess.Popen([sys.executable, __file__, "holder"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    try:
        fd, inode = map(int, process.stdout.readline().split())
        with DmaBuf.from_pid(process.pid, fd) as buf:
            assert buf.inode == inode, (buf.inode, inode)
            text = buf.read(32).rstrip(b"\0").decode()
            print(f"  took fd {fd} of pid {process.pid} as fd {buf.fileno()} here: inode {buf.inode}, {text!r}",
                  flush=True)
    finally:
        process.stdin.close()
        process.wait()


def pool_worker(buf: DmaBuf) -> tuple:
    """Runs in a spawned process: gets its own DmaBuf, returns a fence on it."""
    ipc.register_multiprocessing()  # this process sends a SyncFile back
    with buf:
        text = buf.read(5).decode()
        buf.write(text.upper().encode())
        return os.getpid(), buf.inode, buf.export_sync_file()


def through_multiprocessing() -> None:
    print("3. through multiprocessing (spawn)", flush=True)
    ipc.register_multiprocessing()
    with linuxdmabuf.allocate(4096) as buf:
        buf.write(b"hello")
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            pid, inode, fence = pool.apply(pool_worker, (buf,))
        with fence:
            assert inode == buf.inode and fence.wait(0)
        print(f"  pid {pid} saw inode {inode} and wrote {buf.read(5).decode()!r}; its fence came back signaled",
              flush=True)


def main() -> None:
    if sys.argv[1:2] == ["socket-child"]:
        return socket_child(int(sys.argv[2]))
    if sys.argv[1:2] == ["holder"]:
        return holder()
    over_a_socket()
    by_pidfd_getfd()
    through_multiprocessing()
    print("ok")


if __name__ == "__main__":
    main()
