"""udmabuf: dma-bufs made of memfd pages, through /dev/udmabuf (drivers/dma-buf/udmabuf.c)."""
import errno
import fcntl
import os
import stat

from . import _uapi
from ._fd import FdObject
from ._sys import (
    GRANT_ACCESS,
    UnsupportedError,
    check_fd,
    check_int,
    fd_target,
    ioctl,
    missing_device,
    os_error,
)
from ._uapi import PAGE_SIZE, ffi
from .dmabuf import DmaBuf

DEVICE = "/dev/udmabuf"
PARAMETERS = "/sys/module/udmabuf/parameters"
F_SEAL_FUTURE_WRITE = 0x10  # include/uapi/linux/fcntl.h; not in Python's fcntl module
_CREATE = _uapi.UDMABUF_CREATE
_CREATE_ARG = ffi.typeof("struct udmabuf_create *")
_MEMFD = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
_MEMFD_HUGETLB = _MEMFD | os.MFD_HUGETLB
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


def _segment(memfd, offset, size) -> tuple:
    """One (memfd, offset, size) item, checked as far as Python can before the ioctl."""
    memfd = check_fd(memfd)
    offset = check_int(offset, "offset")
    if size is None:
        size = os.fstat(memfd).st_size - offset
    size = check_int(size, "size")
    if not 0 <= offset < 2**64 or offset % PAGE_SIZE:
        raise ValueError(f"offset {offset} must be a non-negative multiple of the page size ({PAGE_SIZE}) below 2**64")
    if not 0 < size < 2**64 or size % PAGE_SIZE:
        raise ValueError(f"size {size} must be a positive multiple of the page size ({PAGE_SIZE}) below 2**64")
    return memfd, offset, size


def _huge_page_size() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Hugepagesize:"):
                return int(line.split()[1]) * 1024
    raise UnsupportedError(errno.EOPNOTSUPP, "this kernel has no huge pages (CONFIG_HUGETLBFS)")


class Udmabuf(FdObject):
    """The udmabuf device: wraps pages of sealed memfds as dma-bufs.

    ``Udmabuf()`` opens /dev/udmabuf; ``Udmabuf(fd)`` adopts an open fd. The
    memfd must be shmem or hugetlbfs, carry F_SEAL_SHRINK and not
    F_SEAL_WRITE/F_SEAL_FUTURE_WRITE; offsets and sizes are page multiples. The
    pages stay pinned while the dma-buf lives, and writes through the memfd
    and through the dma-buf see each other.
    """

    __slots__ = ()

    def __init__(self, fd=None):
        if fd is not None:
            super().__init__(fd)
            return
        self._open(DEVICE, os.O_RDONLY, missing=lambda: missing_device(DEVICE, "udmabuf", "CONFIG_UDMABUF", "udmabuf"),
                   denied=GRANT_ACCESS)

    def _validate(self, fd: int) -> None:
        if not stat.S_ISCHR(os.fstat(fd).st_mode) or fd_target(fd) != DEVICE:
            raise ValueError(f"fd {fd} is not {DEVICE} (it is {fd_target(fd)!r})")

    @staticmethod
    def limits() -> dict[str, int | None]:
        """The module parameters size_limit_mb (largest buffer, MiB) and
        list_limit (most create_list segments); None where not shown."""
        result: dict[str, int | None] = {}
        for name in ("size_limit_mb", "list_limit"):
            try:
                with open(os.path.join(PARAMETERS, name)) as f:
                    result[name] = int(f.read())
            except (OSError, ValueError):
                result[name] = None
        return result

    def create(self, memfd, offset: int = 0, size: int | None = None) -> DmaBuf:
        """UDMABUF_CREATE: a dma-buf of `size` bytes of `memfd` from `offset`.

        `memfd` is an fd or an object with fileno(); `size=None` means to the
        end of the memfd. The dma-buf is O_RDWR and O_CLOEXEC.
        """
        self.fileno()
        return self._create_one(*_segment(memfd, offset, size))

    def _create_one(self, memfd: int, offset: int, size: int) -> DmaBuf:
        """UDMABUF_CREATE of checked arguments."""
        arg = ffi.new(_CREATE_ARG, (memfd, _uapi.UDMABUF_FLAGS_CLOEXEC, offset, size))
        return self._create(_CREATE, arg, "UDMABUF_CREATE", [(memfd, offset, size)])

    def create_list(self, segments) -> DmaBuf:
        """UDMABUF_CREATE_LIST: one dma-buf of several (memfd, offset, size) segments, in order.

        At most list_limit segments and size_limit_mb in total (see limits()).
        """
        self.fileno()
        items = [_segment(*segment) for segment in segments]
        if not items:
            raise ValueError("create_list() needs at least one (memfd, offset, size) segment")
        arg = ffi.new("struct udmabuf_create_list *", {"list": len(items)})
        arg.flags = _uapi.UDMABUF_FLAGS_CLOEXEC
        arg.count = len(items)
        for item, (memfd, offset, size) in zip(arg.list, items):
            item.memfd, item.offset, item.size = memfd, offset, size
        return self._create(_uapi.UDMABUF_CREATE_LIST, arg, "UDMABUF_CREATE_LIST", items)

    def _create(self, request: int, arg, what: str, segments: list) -> DmaBuf:
        try:
            fd = ioctl(self.fileno(), request, arg, what)
        except OSError as e:
            raise os_error(e.errno, what, _diagnose(e.errno, segments)) from None
        return DmaBuf._wrap(fd)

    def allocate(self, size: int, *, hugetlb: bool = False) -> DmaBuf:
        """A dma-buf of `size` bytes (rounded up to pages) on a fresh sealed memfd.

        The memfd (MFD_ALLOW_SEALING, F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL;
        MFD_HUGETLB with hugetlb=True, size rounded up to huge pages) is closed
        again: the dma-buf keeps its pages.
        """
        if self._fd < 0:
            raise self._closed_error()
        if type(size) is not int:
            size = check_int(size, "size")
        if size <= 0:
            raise ValueError(f"size must be positive, not {size}")
        page = _huge_page_size() if hugetlb else PAGE_SIZE
        if size > 2**63 - page:  # the memfd's size is an off_t
            raise ValueError(f"size must be at most 2**63 - {page}, not {size}")
        try:
            memfd = os.memfd_create("linuxdmabuf", _MEMFD_HUGETLB if hugetlb else _MEMFD)
        except OSError as e:
            fix = "this kernel has no hugetlbfs memfds" if hugetlb and e.errno == errno.EINVAL else ""
            raise os_error(e.errno, "memfd_create", fix) from None
        try:
            size = -(-size // page) * page
            os.ftruncate(memfd, size)
            fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, _SEALS)
            return self._create_one(memfd, 0, size)
        finally:
            os.close(memfd)


def _diagnose(err: int | None, segments: list) -> str:
    """Why UDMABUF_CREATE(_LIST) failed, from what Python can see of its arguments."""
    if err == errno.EBADFD:
        return "each memfd must be a memfd (shmem) or hugetlbfs file, e.g. from os.memfd_create()"
    if err == errno.ENOMEM:
        hugetlb = "; for hugetlb memfds, free huge pages (/proc/sys/vm/nr_hugepages)"
        return "not enough memory to pin the pages" + hugetlb
    if err != errno.EINVAL:
        return ""
    limits = Udmabuf.limits()
    if limits["list_limit"] is not None and len(segments) > limits["list_limit"]:
        return (f"{len(segments)} segments exceed udmabuf's list_limit={limits['list_limit']} "
                f"({PARAMETERS}/list_limit)")
    total = sum(size for _, _, size in segments)
    if limits["size_limit_mb"] is not None and total > limits["size_limit_mb"] << 20:
        return (f"{total} bytes exceed udmabuf's size_limit_mb={limits['size_limit_mb']} "
                f"(raise {PARAMETERS}/size_limit_mb as root, or udmabuf.size_limit_mb= on the kernel command line)")
    for memfd, offset, size in segments:
        try:
            seals = fcntl.fcntl(memfd, fcntl.F_GET_SEALS)
        except OSError:
            return f"fd {memfd} is not a memfd"
        if not seals & fcntl.F_SEAL_SHRINK:
            how = ("create it with os.MFD_ALLOW_SEALING, then fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)"
                   if seals & fcntl.F_SEAL_SEAL else "add it with fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)")
            return f"memfd {memfd} lacks the F_SEAL_SHRINK seal: {how}"
        if seals & (fcntl.F_SEAL_WRITE | F_SEAL_FUTURE_WRITE):
            return f"memfd {memfd} carries F_SEAL_WRITE or F_SEAL_FUTURE_WRITE, which udmabuf refuses"
        end = os.fstat(memfd).st_size
        if offset + size > end:
            return f"bytes {offset}..{offset + size} lie past the end of memfd {memfd} ({end} bytes): ftruncate it first"
    return ""
