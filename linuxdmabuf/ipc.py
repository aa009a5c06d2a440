"""Passing DmaBuf and SyncFile objects between processes.

An fd means nothing in another process; the kernel must install the open file
there. Three ways, all giving the receiver a new fd on the *same* buffer or
fence (same inode, same implicit fences, same pages):

- over a UNIX socket, SCM_RIGHTS: :func:`send` and :func:`recv` (this module,
  on ``socket.sendmsg``/``recvmsg``, interoperable with any C peer using
  SCM_RIGHTS); DRM sync objects (``syncobj.Timeline``, ``Syncobj``) travel
  as their own fd, a handle again on the receiver's side (``kinds=``);
- taken from another process without its help: ``DmaBuf.from_pid(pid, fd)``
  (pidfd_getfd, ptrace rules apply);
- through :mod:`multiprocessing`: after :func:`register_multiprocessing`,
  DmaBuf and SyncFile objects may be arguments and results of
  ``Process``/``Pool`` calls and go through ``Pipe``/``Queue``.

Received fds carry O_CLOEXEC. Sending never closes the sender's objects:
each process owns and closes its own fd.
"""
import array
import errno
import os
import socket

from ._fd import FdObject
from ._sys import check_int
from .dmabuf import DmaBuf
from .syncfile import SyncFile

__all__ = ["send", "recv", "register_multiprocessing", "SCM_MAX_FD"]

SCM_MAX_FD = 253  # include/net/scm.h: the most fds one SCM_RIGHTS message may carry
_INT_SIZE = array.array("i").itemsize


def _check_unix_socket(sock) -> None:
    if not isinstance(sock, socket.socket):
        raise TypeError(f"expected a socket.socket, not {type(sock).__name__}")
    if sock.family != socket.AF_UNIX:
        raise ValueError(f"fds travel only over AF_UNIX sockets, not {sock.family!r}")


def send(sock: socket.socket, *objs: FdObject, data=b"\0") -> int:
    """Send `objs`' fds with `data` in one sendmsg(2) (SCM_RIGHTS); returns len(data).

    `objs` are linuxdmabuf objects (DmaBuf, SyncFile...); the receiver gets
    new fds on the same files, and the objects stay open here. On a
    SOCK_STREAM socket the kernel attaches the fds to the first byte of
    `data` and silently drops fds sent with no data at all, so `data` must
    not be empty there: it defaults to one NUL byte. The rest of a long
    `data` that one sendmsg did not take is sent after it.
    """
    from .syncobj import _Handle

    _check_unix_socket(sock)
    for obj in objs:
        if not isinstance(obj, (FdObject, _Handle)):
            raise TypeError(f"can only send linuxdmabuf objects (DmaBuf, SyncFile, syncobj.Timeline...), not "
                            f"{type(obj).__name__}; send raw fds with socket.send_fds")
    if len(objs) > SCM_MAX_FD:
        raise ValueError(f"one message carries at most {SCM_MAX_FD} fds (SCM_MAX_FD), not {len(objs)}")
    view = memoryview(data).cast("B")
    if objs and not len(view) and sock.type == socket.SOCK_STREAM:
        raise ValueError("a stream socket drops fds sent with no data: send at least one byte (the default is b'\\0')")
    for obj in objs:  # ValueError for a closed object, before anything is made or sent
        obj.fileno() if isinstance(obj, FdObject) else obj.handle
    exported: list[int] = []  # a sync object travels as its own fd (DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD), made for the message
    try:
        fds = []
        for obj in objs:
            if isinstance(obj, FdObject):
                fds.append(obj.fileno())
            else:
                exported.append(obj.export())
                fds.append(exported[-1])
        sent = socket.send_fds(sock, [view], fds) if fds else sock.send(view)
    finally:
        for fd in exported:
            os.close(fd)
    if sent < len(view):
        sock.sendall(view[sent:])
    return len(view)


def recv(sock: socket.socket, *, maxfds: int = 16, bufsize: int = 4096, kinds=(DmaBuf, SyncFile)) -> tuple:
    """Receive one message: ``(data, objects)``, the objects in the order sent.

    recvmsg(2) with MSG_CMSG_CLOEXEC. Each fd received becomes an object of
    the first class in `kinds` it is (DmaBuf, SyncFile by default; pass
    e.g. ``kinds=(DmaBuf,)`` to accept buffers only). Nothing received is
    ever left open on an error: an fd of another kind closes every fd of
    the message and raises ValueError naming what it was; a message with
    more than `maxfds` fds (the kernel discards the ones that do not fit),
    or a datagram longer than `bufsize`, raises OSError(EMSGSIZE). On a
    stream, data beyond `bufsize` stays queued for the next read (the fds
    come with the first byte of their message). At the end of a stream,
    returns ``(b"", [])`` like socket.recv.
    """
    _check_unix_socket(sock)
    maxfds, bufsize = check_int(maxfds, "maxfds"), check_int(bufsize, "bufsize")
    if not 0 < maxfds <= SCM_MAX_FD:
        raise ValueError(f"maxfds must be within 1..{SCM_MAX_FD} (SCM_MAX_FD), not {maxfds}")
    if bufsize < 1:
        raise ValueError(f"bufsize must be positive, not {bufsize}")
    from .syncobj import _Handle

    kinds = tuple(kinds)
    if not kinds or not all(isinstance(k, type) and issubclass(k, (FdObject, _Handle)) for k in kinds):
        raise TypeError("kinds must be linuxdmabuf classes, e.g. (DmaBuf, SyncFile) or (syncobj.Timeline,)")

    # CMSG_LEN, not CMSG_SPACE: the space's padding to 8 bytes would have room for one fd more
    # than maxfds, which the kernel would fill (as socket.recv_fds does it).
    data, ancdata, flags, _ = sock.recvmsg(bufsize, socket.CMSG_LEN(maxfds * _INT_SIZE), socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % _INT_SIZE
            fds.extend(array.array("i", payload[:usable]))
    objects = []
    try:
        if flags & socket.MSG_CTRUNC:
            raise OSError(errno.EMSGSIZE, f"recv: the message carried more than maxfds={maxfds} fds; the kernel "
                                          "closed the ones that did not fit -- pass a larger maxfds")
        if flags & socket.MSG_TRUNC:
            raise OSError(errno.EMSGSIZE, f"recv: the datagram was longer than bufsize={bufsize} bytes and was cut "
                                          "-- pass a larger bufsize")
        while fds:
            objects.append(_adopt(fds[0], kinds))
            fds.pop(0)
    except BaseException:
        for obj in objects:
            obj.close()
        for fd in fds:
            os.close(fd)
        raise
    return data, objects


def _adopt(fd: int, kinds: tuple):
    """The first of `kinds` that `fd` is; ValueError (fd left open) if none. A sync object's fd becomes
    a handle on a DRM device of this process (``fromfd()``, which opens one) and is closed."""
    for kind in kinds:
        try:
            if issubclass(kind, FdObject):
                return kind(fd)
            obj = kind.fromfd(fd)
        except ValueError:
            continue
        os.close(fd)
        return obj
    from ._sys import fd_target

    names = " or ".join(k.__name__ for k in kinds)
    raise ValueError(f"received an fd that is not a {names} (it is {fd_target(fd)!r}); "
                     "every fd of that message was closed")


# -- multiprocessing --------------------------------------------------------------

def register_multiprocessing(*classes: type) -> None:
    """Let multiprocessing pass `classes` (default: DmaBuf and SyncFile).

    Registers a reducer with multiprocessing.reduction.ForkingPickler, the
    pickler of Process arguments (spawn, forkserver), Pipe, Queue and Pool.
    Like multiprocessing's own reducer for sockets, it sends a dup of the fd
    (multiprocessing.reduction.DupFd): handed to the child at start, or
    fetched over a UNIX socket from a helper thread of the sending process
    (multiprocessing's resource_sharer) when the message is unpickled. The
    receiver gets a new object on its own O_CLOEXEC fd; the sender's object
    stays open. Call it in every process that sends (a spawned child imports
    linuxdmabuf afresh). Plain pickle still refuses these objects. With the
    fork start method a child simply inherits its parent's objects.
    """
    from multiprocessing.reduction import ForkingPickler

    for cls in classes or (DmaBuf, SyncFile):
        if not (isinstance(cls, type) and issubclass(cls, FdObject)):
            raise TypeError(f"can only register linuxdmabuf classes, not {cls!r}")
        ForkingPickler.register(cls, _reduce)


def _reduce(obj: FdObject):
    from multiprocessing.reduction import DupFd

    return _rebuild, (type(obj), DupFd(obj.fileno()))


def _rebuild(cls: type, dup) -> FdObject:
    fd = dup.detach()
    try:
        os.set_inheritable(fd, False)  # fds handed to a spawned child, or received by recv_handle, are inheritable
        return cls(fd)
    except BaseException:
        os.close(fd)
        raise
