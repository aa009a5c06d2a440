"""The fd-owning base class: the file-descriptor protocol of every object.

Modelled on ``socket.socket`` and ``io.FileIO``: the object owns exactly one
fd; ``close()`` is idempotent and forgets the number before closing it, so a
closed object can never touch an fd number that has since been reused; an
object collected while open closes its own fd and warns with ResourceWarning.
"""
import os
import warnings
import weakref

from ._sys import check_fd


def _collect(cls_name: str, fd: int) -> None:
    warnings.warn(f"unclosed {cls_name} fd={fd}", ResourceWarning, stacklevel=2)
    os.close(fd)


class FdObject:
    """Owns one file descriptor. Subclasses define ``_validate(fd)``."""

    __slots__ = ("_fd", "_finalizer", "__weakref__")

    def __init__(self, fd: int):
        """Adopt `fd`: the object owns it and closes it.

        Raises ValueError if `fd` is not of this class's kind; `fd` is then
        left open and still belongs to the caller.
        """
        self._fd = -1
        fd = check_fd(fd, allow_fileno=False)
        self._validate(fd)
        self._adopt(fd)

    def _adopt(self, fd: int) -> None:
        self._fd = fd
        self._finalizer = weakref.finalize(self, _collect, type(self).__name__, fd)
        self._finalizer.atexit = False

    @classmethod
    def _wrap(cls, fd: int):
        """An object owning `fd`, which the kernel just created for us (no checks)."""
        self = cls.__new__(cls)
        self._adopt(fd)
        return self

    def _validate(self, fd: int) -> None:
        raise NotImplementedError

    @classmethod
    def fromfd(cls, fd):
        """A new object on a duplicate (O_CLOEXEC) of `fd`; the caller keeps `fd`."""
        fd = check_fd(fd, allow_fileno=True)
        new = os.dup(fd)  # os.dup makes the copy non-inheritable: O_CLOEXEC
        try:
            return cls(new)
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
        if fd < 0:
            return
        self._fd = -1  # first: no other thread or later call can see the number again
        try:
            self._finalizer.detach()
        finally:
            os.close(fd)

    def detach(self) -> int:
        """Give the fd back to the caller without closing it; the object becomes closed."""
        fd = self.fileno()
        self._finalizer.detach()
        self._fd = -1
        return fd

    def dup(self):
        """A new object of the same class on a duplicate (O_CLOEXEC) of the fd."""
        return type(self)._wrap(os.dup(self.fileno()))

    def __enter__(self):
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
                        "send it with linuxdmabuf.send_fds()/socket.send_fds instead")
