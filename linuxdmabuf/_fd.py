"""The fd-owning base class: the file-descriptor protocol of every object.

Modelled on ``socket.socket`` and ``io.FileIO``: the object owns exactly one
fd; ``close()`` is idempotent and forgets the number before closing it, so a
closed object can never touch an fd number that has since been reused; an
object collected while open closes its own fd and warns with
:class:`UnclosedWarning` (a ResourceWarning), from ``__del__``, as CPython's
own pure-Python fd owners do (asyncio's transports, ``subprocess.Popen``;
safe with reference cycles since PEP 442). That costs nothing when an object
is made and one C-level slot call when it goes: the weak-reference
bookkeeping it replaces cost 3x more per object (BENCHMARKS.md).

Threads: like ``socket.socket``, closing an object while another thread is
inside a call on it is the caller's bug. The library guarantees only what
CPython's own fd objects do: the number is forgotten before it is closed,
so a call made after close() raises ValueError and never reaches a reused
number; a call already inside the kernel (a blocked wait, SYNC START) goes on
on the file it started with (waits poll a private dup).
"""
import errno
import os
import warnings
from typing import TypeVar

from ._sys import UnsupportedError, check_fd, check_int, fd_target, os_error


class UnclosedWarning(ResourceWarning):
    """A linuxdmabuf object (fd or GEM handle) was garbage-collected while still open: it was closed then.

    Raised from the object's ``__del__``, with the object as the warning's
    source (so ``python -X tracemalloc`` shows where it was made).
    """

    __module__ = "linuxdmabuf"


_Self = TypeVar("_Self", bound="FdObject")  # typing.Self is 3.11+


class FdObject:
    """Owns one file descriptor. Subclasses define ``_validate(fd)``, and ``_attach(fd)`` if they
    keep per-object state (a path, a driver name) derived from the fd."""

    __slots__ = ("_fd", "__weakref__")
    _attaches = False  # True in classes whose _attach() derives state from the fd

    def _attach(self, fd: int) -> None:
        """Called once the object owns `fd` (where _attaches): derive state from it; if it raises, the fd is closed."""

    def __init__(self, fd: int):
        """Adopt `fd`: the object owns it and closes it.

        Raises ValueError if `fd` is not of this class's kind; `fd` is then
        left open and still belongs to the caller.
        """
        self._fd = -1
        fd = check_fd(fd, allow_fileno=False)
        self._validate(fd)
        self._own(fd)

    def _own(self, fd: int) -> None:
        """Take `fd` (from here on, the object closes it whatever happens), then attach its state."""
        self._fd = fd
        if self._attaches:
            try:
                self._attach(fd)
            except BaseException:
                self.close()
                raise

    def _open(self, path: str, flags: int, missing=None, denied: str = "", validate: bool = False) -> None:
        """Open the device node `path` (with O_CLOEXEC) and own it: the one way device classes open theirs.

        No node: `missing()` gives the exception (UnsupportedError naming the
        kernel option where the kernel lacks the device); no permission: a
        PermissionError with the hint `denied`. With `validate`, a node that
        is not of this class's kind is a ValueError (and closed).
        """
        self._fd = -1
        try:
            fd = os.open(path, flags | os.O_CLOEXEC)
        except FileNotFoundError as e:
            raise (missing() if missing else os_error(e.errno, f"open {path}")) from None
        except PermissionError as e:
            raise os_error(e.errno, f"open {path}", denied) from None
        except OSError as e:
            raise os_error(e.errno, f"open {path}") from None
        if validate:
            try:
                self._validate(fd)
            except BaseException:
                os.close(fd)
                raise
        self._own(fd)

    @classmethod
    def _wrap(cls: type[_Self], fd: int) -> _Self:
        """An object owning `fd`, which the kernel just created for us (no checks)."""
        self = object.__new__(cls)
        self._fd = fd
        if cls._attaches:
            self._own(fd)
        return self

    def __del__(self, _warn=warnings.warn, _close=os.close):
        try:
            fd = self._fd
        except AttributeError:  # __init__ failed before the object had an fd
            return
        if fd >= 0:
            self._fd = -1
            try:
                _warn(f"unclosed {type(self).__name__} fd={fd}", UnclosedWarning, stacklevel=2, source=self)
            finally:
                _close(fd)

    def _validate(self, fd: int) -> None:
        raise NotImplementedError

    @classmethod
    def fromfd(cls: type[_Self], fd) -> _Self:
        """A new object on a duplicate (O_CLOEXEC) of `fd`; the caller keeps `fd`."""
        fd = check_fd(fd, allow_fileno=True)
        new = os.dup(fd)  # os.dup makes the copy non-inheritable: O_CLOEXEC
        try:
            return cls(new)
        except BaseException:
            os.close(new)
            raise

    @classmethod
    def from_pid(cls: type[_Self], pid: int, fd: int) -> _Self:
        """A new object on a duplicate of fd number `fd` of process `pid`.

        pidfd_open(2) then pidfd_getfd(2) (Linux 5.6): the kernel duplicates
        the other process's open file into this one, with O_CLOEXEC, as if it
        had been sent over a socket, but without the other process's help.
        It allows this only to a process that may ptrace the target (same
        uid and a dumpable target, or CAP_SYS_PTRACE; Yama's ptrace_scope may
        restrict it further): PermissionError otherwise, naming the rule.
        ProcessLookupError if there is no such process; ValueError (and
        nothing kept) if that fd is not of this class's kind.
        """
        pid = check_int(pid, "pid")
        if not 0 < pid <= 2**31 - 1:  # a pid_t
            raise ValueError(f"pid must be a positive process id, not {pid}")
        target = _check_target_fd(fd)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as e:
            fix = "pidfd_open needs Linux 5.3 or later" if e.errno == errno.ENOSYS else ""
            raise _pid_error(e.errno, f"pidfd_open({pid})", fix) from None
        try:
            return cls._from_pidfd(pidfd, target, f"process {pid}")
        finally:
            os.close(pidfd)

    @classmethod
    def from_pidfd(cls: type[_Self], pidfd, fd: int) -> _Self:
        """Like from_pid(), for the process a pidfd refers to (os.pidfd_open()).

        A pidfd names one process for good, where a pid number may be reused
        once that process is gone and reaped.
        """
        pidfd = check_fd(pidfd, allow_fileno=True)
        return cls._from_pidfd(pidfd, _check_target_fd(fd), f"the process of pidfd {pidfd}")

    @classmethod
    def _from_pidfd(cls: type[_Self], pidfd: int, fd: int, who: str) -> _Self:
        from ._uapi import SYS_pidfd_getfd, ffi, lib

        new = lib.syscall(ffi.cast("long", SYS_pidfd_getfd), ffi.cast("long", pidfd), ffi.cast("long", fd),
                          ffi.cast("long", 0))
        if new < 0:
            err = ffi.errno
            what = f"pidfd_getfd of fd {fd} of {who}"
            raise _pid_error(err, what, _PIDFD_GETFD_FIXES.get(err, "")) from None
        try:
            return cls(new)
        except ValueError:
            kind = fd_target(new)
            os.close(new)
            raise ValueError(f"fd {fd} of {who} is not a {cls.__name__} (it is {kind!r})") from None
        except BaseException:
            os.close(new)
            raise

    def fileno(self) -> int:
        """The fd; ValueError once closed."""
        if self._fd < 0:
            raise self._closed_error()
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        """Close the fd. Idempotent."""
        fd = self._fd
        if fd >= 0:
            self._fd = -1  # first: no later call can see the number again
            os.close(fd)

    def detach(self) -> int:
        """Give the fd back to the caller without closing it; the object becomes closed."""
        fd = self.fileno()
        self._fd = -1
        return fd

    def dup(self: _Self) -> _Self:
        """A new object of the same class on a duplicate (O_CLOEXEC) of the fd."""
        return type(self)._wrap(os.dup(self.fileno()))

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _closed_error(self) -> ValueError:
        return ValueError(f"I/O operation on closed {type(self).__name__}")

    def _repr_fields(self) -> str:
        return ""

    def __repr__(self) -> str:
        name = f"linuxdmabuf.{type(self).__name__}"
        if self._fd < 0:
            return f"<{name} [closed]>"
        return f"<{name} fd={self._fd}{self._repr_fields()}>"

    def __reduce__(self):
        raise TypeError(f"cannot pickle {type(self).__name__}: an fd is only valid in its process; "
                        "send it over a UNIX socket with linuxdmabuf.ipc.send(), or see "
                        "linuxdmabuf.ipc.register_multiprocessing() for multiprocessing")


def _check_target_fd(fd) -> int:
    """An fd number in another process: an int, never an object's fileno()."""
    return check_fd(fd, allow_fileno=False)


def _ptrace_rules() -> str:
    rules = ("pidfd_getfd is allowed only where ptrace would be (PTRACE_MODE_ATTACH_REALCREDS): "
             "the target runs as your uid and is dumpable, or you have CAP_SYS_PTRACE")
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            scope = f.read().strip()
    except OSError:
        return rules
    yama = {"0": "Yama's ptrace_scope is 0 (no further restriction)",
            "1": "Yama's ptrace_scope is 1: only from an ancestor of the target, or from a process "
                 "the target named with prctl(PR_SET_PTRACER, pid)",
            "2": "Yama's ptrace_scope is 2: only with CAP_SYS_PTRACE",
            "3": "Yama's ptrace_scope is 3: never"}
    return f"{rules}; {yama.get(scope, f'Yama ptrace_scope is {scope}')} (/proc/sys/kernel/yama/ptrace_scope)"


_PIDFD_GETFD_FIXES = {
    errno.EBADF: "the process has no such open fd",
    errno.ESRCH: "the process has exited",
    errno.ENOSYS: "pidfd_getfd needs Linux 5.6 or later",
}


def _pid_error(err: int | None, what: str, fix: str) -> OSError:
    if err == errno.EPERM:
        fix = _ptrace_rules()
    if err == errno.ENOSYS:
        return UnsupportedError(err, f"{what}: {os.strerror(err)} -- {fix}")
    return os_error(err, what, fix)
