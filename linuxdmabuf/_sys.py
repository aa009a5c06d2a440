"""The one place that performs ioctls and turns errno into exceptions.

Every kernel failure becomes ``OSError(errno, message)`` -- Python then picks
``PermissionError``, ``FileNotFoundError`` and so on from the errno -- with a
message naming the operation and, where one exists, the fix. ``ENOTTY`` from an
ioctl the running kernel does not know becomes :class:`UnsupportedError`.
"""
import errno
import fcntl
import math
import operator
import os
import re
import select
import time

from ._uapi import ffi


class UnsupportedError(OSError):
    """The running kernel (or its configuration) lacks the feature asked for."""

    __module__ = "linuxdmabuf"


GRANT_ACCESS = ("grant access with a udev rule for a group you are in "
                "(udmabuf-setup.sh from linuxdmabuf's source does exactly that), "
                "or see `python -m linuxdmabuf info`")


def module_available(name: str) -> bool:
    """Whether the running kernel has a loadable module `name` (listed in its modules.dep)."""
    pattern = re.compile(rf"/{re.escape(name).replace('_', '[_-]')}\.ko(\.\w+)?:")
    try:
        with open(f"/lib/modules/{os.uname().release}/modules.dep") as f:
            return any(pattern.search(line) for line in f)
    except OSError:
        return False


def missing_device(path: str, what: str, option: str, module: str | None = None) -> OSError:
    """The error for a device node that does not exist: where a module of this kernel would make
    it, FileNotFoundError saying to load it; else UnsupportedError, the kernel lacking `option`."""
    if module and module_available(module):
        return os_error(errno.ENOENT, f"open {path}", f"the {module} module is not loaded: sudo modprobe {module}")
    return UnsupportedError(errno.ENOENT, f"open {path}: {os.strerror(errno.ENOENT)} -- this kernel has no {what} "
                                          f"({option})")


def os_error(err: int | None, what: str, fix: str = "") -> OSError:
    """``OSError`` (or its errno subclass) for `err` while doing `what` (an OSError's errno: never None
    from a system call)."""
    err = err or errno.EIO
    message = f"{what}: {os.strerror(err)}"
    if fix:
        message += f" -- {fix}"
    if err == errno.ENOTTY:
        return UnsupportedError(err, message)
    return OSError(err, message)


# Every ioctl is made by fcntl.ioctl() on a writable buffer that holds the
# argument: ffi.buffer() over a cffi struct, built once where a frame loop
# repeats the call. CPython copies the argument to its stack (up to 1 KiB),
# makes the system call with the GIL released and copies the result back
# into the struct: a direct C call, about a third of the cost of calling
# ioctl() through cffi's ABI mode (libffi) under TCG and 35% less natively
# (BENCHMARKS.md). Pointers inside an argument (V4L2 plane arrays, atomic
# commit arrays) point at cffi memory as before. A failed call raises
# OSError, which ioctl_failed() turns into the library's error.
raw_ioctl = fcntl.ioctl


def ioctl(fd: int, request: int, arg, what: str, fixes=None) -> int:
    """ioctl(2) on `arg`, a cffi pointer (None: no argument); returns its non-negative result, or
    raises for `what` (see ioctl_failed)."""
    view = 0 if arg is None else ffi.buffer(arg)
    try:
        return raw_ioctl(fd, request, view)
    except OSError as e:
        return ioctl_failed(e, fd, request, view, what, fixes)


def ioctl_failed(error: OSError, fd: int, request: int, view, what: str, fixes=None, again: bool = False) -> int:
    """Called with the `error` of `raw_ioctl(fd, request, view)`.

    Restarts the call on EINTR -- it did nothing, and Python's signal handlers
    have run in between (a handler that raises ends it with its exception),
    as PEP 475 does for os functions -- and also on EAGAIN with `again`
    (DMA_BUF_IOCTL_SYNC: Documentation/driver-api/dma-buf.rst asks for both);
    returns its result once it succeeds. Else raises os_error() for `what`,
    with the hint `fixes` maps the errno to. Hot paths call raw_ioctl()
    themselves and build `what` only here, on failure.
    """
    err = error.errno
    while err == errno.EINTR or (again and err == errno.EAGAIN):
        try:
            return raw_ioctl(fd, request, view)
        except OSError as e:
            error, err = e, e.errno
    if err is None:  # not the call's failure: a signal handler's OSError (InterruptedError...), raised as is
        raise error
    raise os_error(err, what, fixes.get(err, "") if fixes else "") from None


def check_int(value, what: str) -> int:
    """An integer argument: an int or any integer type (numpy's: operator.index(), as os and mmap
    accept), never a bool."""
    if type(value) is int:
        return value
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int, not bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an int, not {type(value).__name__}") from None


_FOREVER = 2**53  # seconds: about 285 million years


def check_timeout(timeout) -> float | None:
    """Validate a timeout in seconds: None or inf wait forever, 0 polls."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        if isinstance(timeout, bool) or not hasattr(timeout, "__index__"):
            raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
        timeout = operator.index(timeout)  # numpy integers
    if timeout > _FOREVER:
        return None  # inf, and anything longer than any lifetime (an int too big for a float...): no limit
    if timeout < 0 or math.isnan(timeout):
        raise ValueError(f"timeout must be >= 0 seconds or None, not {timeout!r}")
    return float(timeout)


_MAX_POLL_MS = 2**31 - 1


def poll_fd(fd: int, events: int, timeout: float | None) -> bool:
    """Wait until `fd` reports one of `events`; False when `timeout` passes.

    poll(2) with the GIL released. select.poll retries EINTR with the
    remaining time itself (PEP 475); waits longer than poll's int milliseconds
    are made in chunks against one monotonic deadline. A wait that blocks
    polls a private dup of `fd` (O_CLOEXEC): poll(2) looks the number up again
    each time it wakes, so closing the object in another thread, and the
    number's reuse by another file, would otherwise redirect the wait; with
    the dup it goes on on the file it began with (EMFILE if there is no fd
    left for the dup).
    """
    p = select.poll()
    p.register(fd, events)
    if p.poll(0):
        return True
    if timeout == 0:
        return False
    own = os.dup(fd)
    try:
        p = select.poll()
        p.register(own, events)
        if timeout is None:
            while not p.poll():
                pass
            return True
        deadline = time.monotonic() + timeout
        while True:
            ms = min(math.ceil(timeout * 1000), _MAX_POLL_MS)
            if p.poll(ms):
                return True
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                return False
    finally:
        os.close(own)


async def poll_fd_async(fd: int, events: int, timeout: float | None) -> bool:
    """Await `events` (POLLIN or POLLOUT) on `fd` through the running loop's selector, with no thread.

    A zero-timeout poll(2) first: a signaled fence or idle buffer returns True
    at once, also with timeout=0. Otherwise the loop watches a private dup of
    `fd`, so that concurrent waits on one object do not replace each other's
    selector registration, and closing the object meanwhile cannot leave the
    loop watching a reused fd number. The watch ends, and the dup is closed,
    on return, on timeout and on cancellation.
    """
    if poll_fd(fd, events, 0):
        return True
    if timeout == 0:
        return False
    import asyncio  # here, not at the top: it costs ~15 ms of `import linuxdmabuf`

    loop = asyncio.get_running_loop()
    add, remove = (loop.add_writer, loop.remove_writer) if events == select.POLLOUT else (loop.add_reader,
                                                                                          loop.remove_reader)
    future = loop.create_future()
    watched = os.dup(fd)

    def ready() -> None:
        remove(watched)  # level-triggered: stop the loop calling back until the task resumes
        if not future.done():
            future.set_result(True)

    try:
        add(watched, ready)
        try:
            if timeout is None:
                return await future
            try:
                return await asyncio.wait_for(future, timeout)
            except asyncio.TimeoutError:
                return False
        finally:
            remove(watched)
    finally:
        os.close(watched)


def fd_target(fd: int) -> str:
    """What /proc/self/fd/<fd> points to ("/dmabuf:<name>", "anon_inode:sync_file"...)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except FileNotFoundError:
        if not os.path.isdir("/proc/self/fd"):
            raise OSError(errno.ENOENT, "/proc is not mounted: linuxdmabuf identifies fds through /proc/self/fd") from None
        raise os_error(errno.EBADF, f"fd {fd}") from None


_FD_MAX = 2**31 - 1  # fds are C ints


def check_fd(fd, allow_fileno: bool = True) -> int:
    """The fd number of an int (or, if allowed, of an object with fileno())."""
    if isinstance(fd, bool):
        raise TypeError("expected a file descriptor (int), not bool")
    if not isinstance(fd, int) and hasattr(fd, "__index__"):
        fd = operator.index(fd)  # numpy integers
    if not isinstance(fd, int):
        if not allow_fileno:
            raise TypeError(f"expected a file descriptor (int) to adopt, not {type(fd).__name__}; "
                            "use fromfd() to duplicate another object's fd")
        fileno = getattr(fd, "fileno", None)
        if fileno is None:
            raise TypeError(f"expected a file descriptor (int or object with fileno()), not {type(fd).__name__}")
        fd = fileno()
        if not isinstance(fd, int) or isinstance(fd, bool):
            raise TypeError(f"fileno() returned {type(fd).__name__}, not int")
    if not 0 <= fd <= _FD_MAX:
        raise ValueError(f"invalid file descriptor {fd}")
    return fd


def encode_name(name, what: str, limit: int = 31) -> bytes:
    """A kernel name field: str or bytes, no NUL, at most `limit` bytes."""
    if isinstance(name, str):
        name = name.encode()
    elif not isinstance(name, (bytes, bytearray)):
        raise TypeError(f"{what} must be str or bytes, not {type(name).__name__}")
    if b"\0" in name:
        raise ValueError(f"{what} must not contain NUL bytes")
    if len(name) > limit:
        raise ValueError(f"{what} is {len(name)} bytes; the kernel keeps at most {limit} (plus NUL)")
    return bytes(name)
