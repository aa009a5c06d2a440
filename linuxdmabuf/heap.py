"""DMA-BUF heaps: /dev/dma_heap/<name> allocators (drivers/dma-buf/dma-heap.c)."""
import errno
import os
import stat

from . import _uapi
from ._fd import FdObject
from ._sys import GRANT_ACCESS, check_int, fd_target, ioctl_failed, missing_device, os_error, raw_ioctl
from ._uapi import ffi
from .dmabuf import DmaBuf

HEAP_DIR = "/dev/dma_heap"
_RAM = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
_ALLOC = _uapi.DMA_HEAP_IOCTL_ALLOC
_ALLOCATION_DATA = ffi.typeof("struct dma_heap_allocation_data *")
_READWRITE = os.O_RDWR | os.O_CLOEXEC
_new = ffi.new
_buffer = ffi.buffer
_READONLY = os.O_RDONLY | os.O_CLOEXEC


def _cma_allocations() -> int | None:
    """/proc/vmstat's cma_alloc_success: +1 per successful cma_alloc(); None without CMA."""
    with open("/proc/vmstat") as f:
        for line in f:
            if line.startswith("cma_alloc_success "):
                return int(line.split()[1])
    return None


def _no_heap(path: str) -> OSError:
    """No such heap: FileNotFoundError listing the heaps where the kernel has some, else UnsupportedError."""
    heaps = Heap.available()
    if heaps:
        return os_error(errno.ENOENT, f"no dma-heap {path}", f"the heaps here are: {', '.join(heaps)}")
    return missing_device(path, "dma-heaps", "CONFIG_DMABUF_HEAPS with CONFIG_DMABUF_HEAPS_SYSTEM or _CMA",
                          "system_heap" if path.endswith("/system") else None)


class Heap(FdObject):
    """A dma-heap device: allocates dma-bufs with DMA_HEAP_IOCTL_ALLOC.

    ``Heap("system")`` opens /dev/dma_heap/system; ``Heap(fd)`` adopts an open
    heap fd. Which heaps exist depends on the kernel: "system" (page
    allocator) with CONFIG_DMABUF_HEAPS_SYSTEM, and one per CMA area with
    CONFIG_DMABUF_HEAPS_CMA, whose names vary ("default_cma_region",
    "reserved", "linux,cma"...): use Heap.available(kind="cma").
    """

    __slots__ = ("_path", "_kind")
    _path: str
    _kind: str | None
    _attaches = True

    def __init__(self, name="system"):
        if isinstance(name, int) and not isinstance(name, bool):
            super().__init__(name)
            return
        self._fd = -1
        if not isinstance(name, str):
            raise TypeError(f"heap name must be a str, or an int fd to adopt (Heap.fromfd() duplicates "
                            f"another object's fd), not {type(name).__name__}")
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"invalid heap name {name!r}")
        path = os.path.join(HEAP_DIR, name)
        self._open(path, os.O_RDONLY, missing=lambda: _no_heap(path), denied=GRANT_ACCESS)

    def _attach(self, fd: int) -> None:
        self._path = fd_target(fd)
        self._kind = None

    def _validate(self, fd: int) -> None:
        if not stat.S_ISCHR(os.fstat(fd).st_mode) or not fd_target(fd).startswith(HEAP_DIR + "/"):
            raise ValueError(f"fd {fd} is not a dma-heap device (it is {fd_target(fd)!r})")

    def _repr_fields(self) -> str:
        return f" name={self.name!r}"

    @property
    def path(self) -> str:
        return self._path

    @property
    def name(self) -> str:
        return os.path.basename(self._path)

    @staticmethod
    def available(kind: str | None = None) -> list:
        """Names of the heaps under /dev/dma_heap, sorted ([] if there are none).

        With `kind` ("system" or "cma"), only the heaps of that kind, which
        means opening each one (see Heap.kind); heaps this process may not
        open are left out then.
        """
        try:
            names = sorted(os.listdir(HEAP_DIR))
        except (FileNotFoundError, NotADirectoryError):
            return []
        if kind is None:
            return names
        if kind not in ("system", "cma"):
            raise ValueError(f"kind must be 'system' or 'cma', not {kind!r}")
        found = []
        for name in names:
            try:
                with Heap(name) as heap:
                    if heap.kind == kind:
                        found.append(name)
            except OSError:
                pass
        return found

    @property
    def kind(self) -> str:
        """"cma" if this heap allocates from a CMA area, else "system".

        The first read of this property allocates (and frees) one or two
        pages from the heap; later reads return the answer it found.

        Discovered, not guessed from the name: a heap is CMA if
        /sys/kernel/mm/cma/<name> exists (CONFIG_CMA_SYSFS) or if allocating
        a page from it counts a cma_alloc() in /proc/vmstat (twice, so that
        another CMA user at the same moment cannot fool it).
        """
        self.fileno()
        if self._kind is None:
            self._kind = "cma" if self._draws_from_cma() else "system"
        return self._kind

    def _draws_from_cma(self) -> bool:
        if os.path.isdir(f"/sys/kernel/mm/cma/{self.name}"):
            return True
        for _ in range(2):
            before = _cma_allocations()
            if before is None:
                return False
            try:
                self.allocate(_uapi.PAGE_SIZE).close()
            except OSError:
                return False
            if _cma_allocations() != before + 1:
                return False
        return True

    def allocate(self, size: int, *, readonly: bool = False) -> DmaBuf:
        """DMA_HEAP_IOCTL_ALLOC: a new dma-buf of `size` bytes (rounded up to pages).

        The fd is O_CLOEXEC, O_RDWR (O_RDONLY with readonly=True: writable
        mappings are then refused). ENOMEM when the heap cannot satisfy it
        (a CMA pool is small and must be contiguous); a size above the
        machine's RAM is refused with ENOMEM before the kernel is asked, as
        the system heap would rather wake the OOM killer than fail.
        """
        fd = self.fileno()
        size = check_int(size, "size")
        if not 0 < size <= _RAM:
            if size <= 0 or size > 2**64 - _uapi.PAGE_SIZE:
                raise ValueError(f"size must be a positive number of bytes below 2**64 - page size, not {size}")
            # The system heap takes pages one chunk at a time until it has them
            # all: asked for more than exists, it wakes the OOM killer instead
            # of failing.
            raise os_error(errno.ENOMEM, f"DMA_HEAP_IOCTL_ALLOC of {size} bytes from {self._path}",
                           f"more than this machine's {_RAM} bytes of RAM")
        data = _new(_ALLOCATION_DATA, (size, 0, _READONLY if readonly else _READWRITE))  # len, fd, fd_flags
        view = _buffer(data)
        try:
            raw_ioctl(fd, _ALLOC, view)
        except OSError as e:
            fix = f"{self.name} cannot supply {size} bytes now"
            if e.errno == errno.ENOMEM and self.name != "system":  # a CMA heap: say why, from the area's state
                fix = _explain_enomem(self.name, size) or fix
            ioctl_failed(e, fd, _ALLOC, view, f"DMA_HEAP_IOCTL_ALLOC of {size} bytes from {self._path}",
                         {errno.ENOMEM: fix})
        return DmaBuf._wrap(data.fd)


def _explain_enomem(heap: str, size: int) -> str | None:
    """linuxdmabuf.cma's account of a failed CMA allocation (None where it has none, or cannot read one)."""
    from .cma import explain_enomem

    try:
        return explain_enomem(heap, size)
    except (OSError, ValueError):
        return None
