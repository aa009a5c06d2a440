"""dma-buf: a buffer shared between devices and processes (drivers/dma-buf/dma-buf.c)."""
import errno
import mmap
import os
import select
import stat
import sys
from collections import namedtuple

from . import _uapi
from ._fd import FdObject
from ._sys import check_int, check_timeout, encode_name, fd_target, ioctl, ioctl_failed, poll_fd, poll_fd_async, raw_ioctl
from ._uapi import PAGE_SIZE, ffi
from .syncfile import SyncFile, check_sync_file

_READ = _uapi.DMA_BUF_SYNC_READ
_WRITE = _uapi.DMA_BUF_SYNC_WRITE
_SYNC = _uapi.DMA_BUF_IOCTL_SYNC
_EXPORT = _uapi.DMA_BUF_IOCTL_EXPORT_SYNC_FILE
_IMPORT = _uapi.DMA_BUF_IOCTL_IMPORT_SYNC_FILE
_EXPORT_ARG = ffi.typeof("struct dma_buf_export_sync_file *")
_EXPORT_FIXES = {errno.ENOTTY: "implicit fences as sync_files need Linux 6.0 or later with CONFIG_SYNC_FILE"}


def _sync_args(when: int) -> tuple:
    """struct dma_buf_sync for START or END (its buffer view, raw_ioctl's argument), indexed by the
    access flags READ (1) | WRITE (2).

    The kernel only reads it, so one constant per flag value serves every
    call, from every thread: DMA_BUF_IOCTL_SYNC allocates nothing per call.
    """
    return (None, *(ffi.buffer(ffi.new("struct dma_buf_sync *", {"flags": when | access}))
                    for access in (_READ, _WRITE, _READ | _WRITE)))


_START = _sync_args(_uapi.DMA_BUF_SYNC_START)
_END = _sync_args(_uapi.DMA_BUF_SYNC_END)
_NO_ACCESS = "CPU access must include read, write or both"
_new = ffi.new
# Python 3.13+: the mapping keeps no duplicate of the fd (before, every mmap.mmap holds one while open).
_NO_TRACKFD = {"trackfd": False} if sys.version_info >= (3, 13) else {}


class DmaBufInfo(namedtuple("DmaBufInfo", "size count exp_name name ino flags pos mnt_id", defaults=(0, 0))):
    """/proc/<pid>/fdinfo/<fd> of a dma-buf (dma_buf_show_fdinfo), read-only.

    `count` is the file's reference count (every fd, in any process, and every
    mapping holds one); `flags` the open flags (octal in fdinfo, O_CLOEXEC
    included); `name` is "" when none was ever set.
    """

    __slots__ = ()


def parse_fdinfo(text: str) -> DmaBufInfo:
    """Parse the text of a dma-buf's fdinfo (any process's).

    The kernel prints the name last, verbatim ("name:\t%s\n"), and a name may
    hold any byte but NUL, newlines included: it is everything between
    "name:\t" and the final newline, never parsed as fields.
    """
    head, sep, name = text.partition("\nname:\t")
    if sep and name.endswith("\n"):
        name = name[:-1]
    fields = {}
    for line in head.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key] = value.strip(" \t")
    return DmaBufInfo(size=int(fields["size"]), count=int(fields["count"]), exp_name=fields["exp_name"],
                      name=name, ino=int(fields["ino"]), flags=int(fields["flags"], 8),
                      pos=int(fields.get("pos", 0)), mnt_id=int(fields.get("mnt_id", 0)))


class _CpuAccess(tuple):
    """``with buf.cpu_access():`` -- DMA_BUF_IOCTL_SYNC START on entry, END on exit.

    A (buffer, START argument, END argument) tuple: made in C, no __init__.
    """

    __slots__ = ()

    def __enter__(self):
        buf, start, _ = self
        buf._sync(start)
        return buf

    def __exit__(self, exc_type, exc, tb) -> None:
        buf, _, end = self
        buf._sync(end)


class DmaBuf(FdObject):
    """A dma-buf file descriptor.

    Made by Heap.allocate(), Udmabuf.create() and drivers (DRM PRIME, V4L2
    EXPBUF...), or adopted from an fd received from elsewhere. The buffer lives
    while any fd or mapping of it does, in any process.
    """

    __slots__ = ("_size",)  # unset until size is first asked for
    _size: int

    def _validate(self, fd: int) -> None:
        # A dma-buf is an anonymous inode (no file-type bits in st_mode) that
        # /proc shows as "/dmabuf:<name>" (dmabuffs_dname).
        if stat.S_IFMT(os.fstat(fd).st_mode) or not fd_target(fd).startswith("/dmabuf:"):
            raise ValueError(f"fd {fd} is not a dma-buf (it is {fd_target(fd)!r})")

    def _repr_fields(self) -> str:
        return f" size={self.size}"

    # -- identity ------------------------------------------------------------

    @property
    def size(self) -> int:
        """Size in bytes: lseek(SEEK_END) then lseek(SEEK_SET, 0), as the kernel documents."""
        fd = self.fileno()
        try:
            return self._size
        except AttributeError:
            size = os.lseek(fd, 0, os.SEEK_END)
            os.lseek(fd, 0, os.SEEK_SET)
            self._size = size
            return size

    def __len__(self) -> int:
        return self.size

    def __bool__(self) -> bool:
        """Always true, open or closed, like a file object (not len() != 0, which would seek)."""
        return True

    @property
    def inode(self) -> int:
        """The buffer's identity: its inode number, the same for every fd of it in any process."""
        return os.fstat(self.fileno()).st_ino

    def info(self) -> DmaBufInfo:
        """This fd's /proc/self/fdinfo entry, parsed (bytes that are not UTF-8 as surrogate escapes)."""
        with open(f"/proc/self/fdinfo/{self.fileno()}", encoding="utf-8", errors="surrogateescape", newline="") as f:
            return parse_fdinfo(f.read())

    @property
    def exporter(self) -> str:
        """The exporting driver's name (fdinfo exp_name): "system", "udmabuf", "drm"..."""
        return self.info().exp_name

    @property
    def name(self) -> str:
        """The debug name (fdinfo), "" if none; assign to set it (DMA_BUF_SET_NAME).

        The kernel keeps at most 31 bytes; a longer name raises ValueError, as
        the kernel's EINVAL would. Any bytes but NUL may be set (str or bytes);
        a name that is not UTF-8 reads back with surrogate escapes, like
        os.fsdecode: ``buf.name.encode(errors="surrogateescape")`` gives its bytes.
        """
        return self.info().name

    @name.setter
    def name(self, name: str) -> None:
        arg = bytearray(encode_name(name, "dma-buf name") + b"\0")
        ioctl(self.fileno(), _uapi.DMA_BUF_SET_NAME, ffi.from_buffer("char[]", arg), "DMA_BUF_SET_NAME")

    @property
    def readonly(self) -> bool:
        """True if this fd was opened O_RDONLY (writable mappings are then refused)."""
        import fcntl

        return fcntl.fcntl(self.fileno(), fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY

    # -- CPU access ----------------------------------------------------------

    def sync_start(self, *, read: bool = True, write: bool = True) -> None:
        """DMA_BUF_IOCTL_SYNC START: begin CPU access through a mapping.

        The kernel first waits, with no timeout, for the buffer's implicit
        fences (writers for read access, all users for write access), then
        lets the exporter make caches coherent for the CPU. The GIL is
        released meanwhile; EINTR/EAGAIN restart the call, as the kernel
        asks. Always pair with sync_end(), or use cpu_access().
        """
        arg = _START[(1 if read else 0) | (2 if write else 0)]
        fd = self._fd  # _sync() inline: saves 14% of a SYNC pair's instructions (6,028 -> 5,182)
        if fd < 0 or arg is None:
            raise self._closed_error() if fd < 0 else ValueError(_NO_ACCESS)
        try:
            raw_ioctl(fd, _SYNC, arg)
        except OSError as e:
            ioctl_failed(e, fd, _SYNC, arg, "DMA_BUF_IOCTL_SYNC", again=True)

    def sync_end(self, *, read: bool = True, write: bool = True) -> None:
        """DMA_BUF_IOCTL_SYNC END: CPU access through a mapping is over.

        The flags should match sync_start()'s. udmabuf answers EINVAL to an
        END before any START on the buffer.
        """
        arg = _END[(1 if read else 0) | (2 if write else 0)]
        fd = self._fd  # _sync() inline, as in sync_start()
        if fd < 0 or arg is None:
            raise self._closed_error() if fd < 0 else ValueError(_NO_ACCESS)
        try:
            raw_ioctl(fd, _SYNC, arg)
        except OSError as e:
            ioctl_failed(e, fd, _SYNC, arg, "DMA_BUF_IOCTL_SYNC", again=True)

    def _sync(self, arg) -> None:
        """DMA_BUF_IOCTL_SYNC with one of the prebuilt _START/_END arguments; EINTR and EAGAIN restart it."""
        fd = self.fileno()
        try:
            raw_ioctl(fd, _SYNC, arg)
        except OSError as e:
            ioctl_failed(e, fd, _SYNC, arg, "DMA_BUF_IOCTL_SYNC", again=True)

    def cpu_access(self, *, read: bool = True, write: bool = True) -> _CpuAccess:
        """``with buf.cpu_access(read=..., write=...):`` -- START on entry, END on exit, also on exception."""
        access = (1 if read else 0) | (2 if write else 0)
        if not access:
            raise ValueError(_NO_ACCESS)
        return _CpuAccess((self, _START[access], _END[access]))

    def map(self, offset: int = 0, length: int | None = None, *, writable: bool | None = None) -> mmap.mmap:
        """A shared mapping of the buffer as a stdlib ``mmap.mmap``.

        `offset` must be page aligned; `length` defaults to the rest of the
        buffer. `writable` defaults to what the fd allows: a read-only mapping
        for an O_RDONLY buffer, read-write otherwise. The mapping keeps the
        buffer alive after this object is closed. Bracket CPU access with
        cpu_access(). Below Python 3.13 a stdlib mmap holds a duplicate of
        the fd while open (one fd per mapping); from 3.13 it holds none
        (``trackfd=False``: its size() and resize() are then unavailable).
        """
        fd = self.fileno()
        size = self.size
        offset = check_int(offset, "offset")
        if offset < 0 or offset % mmap.ALLOCATIONGRANULARITY:
            raise ValueError(f"offset {offset} must be a non-negative multiple of the page size ({mmap.ALLOCATIONGRANULARITY})")
        if length is None:
            length = size - offset
        else:
            length = check_int(length, "length")
        if length <= 0 or offset + length > size:
            raise ValueError(f"cannot map {length} bytes at offset {offset} of a {size}-byte dma-buf")
        if writable is None:
            writable = not self.readonly
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        try:
            return mmap.mmap(fd, length, mmap.MAP_SHARED, prot, offset=offset, **_NO_TRACKFD)
        except OSError as e:
            fix = "this dma-buf's fd is O_RDONLY: map it with writable=False" if e.errno == errno.EACCES else ""
            raise type(e)(e.errno, f"mmap of dma-buf: {e.strerror}" + (f" -- {fix}" if fix else "")) from None

    def read(self, size: int = -1, offset: int = 0) -> bytes:
        """Copy `size` bytes (-1: to the end) from `offset` out of the buffer.

        Maps, brackets the copy with SYNC START/END for read, unmaps. For
        scripting; the zero-copy path is map().
        """
        start, m = self._map_span(size, offset, writable=False)
        if m is None:
            return b""
        with m:
            with self.cpu_access(read=True, write=False):
                return m[start:]

    def write(self, data, offset: int = 0) -> int:
        """Copy `data` (any bytes-like object) into the buffer at `offset`; returns its length.

        Maps, brackets the copy with SYNC START/END for write, unmaps.
        """
        view = memoryview(data).cast("B")
        start, m = self._map_span(len(view), offset, writable=True)
        if m is None:
            return 0
        with m:
            with self.cpu_access(read=False, write=True):
                m[start:] = view
        return len(view)

    def _map_span(self, size: int, offset: int, writable: bool):
        """A mapping of the pages covering [offset, offset+size) and where offset falls
        in it; (0, None) for zero bytes, which mmap cannot map."""
        size, offset = check_int(size, "size"), check_int(offset, "offset")
        total = self.size
        if offset < 0 or offset > total:
            raise ValueError(f"offset {offset} is outside the {total}-byte dma-buf")
        if size < 0:
            size = total - offset
        if offset + size > total:
            raise ValueError(f"{size} bytes at offset {offset} do not fit in the {total}-byte dma-buf")
        if size == 0:
            return 0, None
        base = offset - offset % PAGE_SIZE
        return offset - base, self.map(base, offset + size - base, writable=writable)

    # -- implicit fences ---------------------------------------------------------

    def export_sync_file(self, *, write: bool = False) -> SyncFile:
        """DMA_BUF_IOCTL_EXPORT_SYNC_FILE: the buffer's current implicit fences as a SyncFile.

        write=False: a fence for the current writers (what a reader must wait
        for, like POLLIN); write=True: for all current users (what a writer
        must wait for, like POLLOUT). An idle buffer gives an already-signaled
        fence. Linux 6.0+.
        """
        fd = self.fileno()
        arg = _new(_EXPORT_ARG, (_WRITE if write else _READ, 0))
        ioctl(fd, _EXPORT, arg, "DMA_BUF_IOCTL_EXPORT_SYNC_FILE", _EXPORT_FIXES)
        return SyncFile._wrap(arg.fd)

    def import_sync_file(self, sync_file, *, write: bool = True) -> None:
        """DMA_BUF_IOCTL_IMPORT_SYNC_FILE: add a fence to the buffer's implicit fences.

        write=True adds it as a write fence (every later user waits for it);
        write=False as a read fence (later writers wait, readers don't).
        `sync_file` is a SyncFile or its fd. Linux 6.0+.
        """
        arg = ffi.new("struct dma_buf_import_sync_file *",
                      {"flags": _WRITE if write else _READ, "fd": check_sync_file(sync_file)})
        ioctl(self.fileno(), _IMPORT, arg, "DMA_BUF_IOCTL_IMPORT_SYNC_FILE",
              {errno.ENOTTY: _EXPORT_FIXES[errno.ENOTTY], errno.EINVAL: f"fd {arg.fd} is not a sync_file"})

    def wait(self, *, write: bool = False, timeout: float | None = None) -> bool:
        """Wait for the implicit fences: True when idle, False on timeout.

        poll(2): POLLIN (no pending writer) for read access, POLLOUT (no
        pending user at all) with write=True. Signals do not restart the
        timeout.
        """
        fd = self._fd  # fileno() and the None test inline: save 12% of an idle buffer's wait (5,202 -> 4,590)
        if fd < 0:
            raise self._closed_error()
        if timeout is not None:
            timeout = check_timeout(timeout)
        return poll_fd(fd, select.POLLOUT if write else select.POLLIN, timeout)

    async def wait_async(self, *, write: bool = False, timeout: float | None = None) -> bool:
        """Await the implicit fences on the running asyncio loop, without a thread."""
        return await poll_fd_async(self.fileno(), select.POLLOUT if write else select.POLLIN, check_timeout(timeout))

