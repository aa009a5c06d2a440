"""CMA areas as the kernel shows them: how full, how fragmented, which heaps draw on them, who holds them.

The Contiguous Memory Allocator reserves areas of physically contiguous
memory at boot; a CMA dma-heap allocates from one. An allocation needs one
free *run* of pages, so it can fail with ENOMEM while plenty of pages are
free, scattered between buffers that other processes hold. Every figure here
is read from the kernel, never guessed:

- ``/proc/meminfo``: ``CmaTotal``, ``CmaFree`` (``CONFIG_CMA``);
- ``/sys/kernel/mm/cma/<area>/`` (``CONFIG_CMA_SYSFS``): ``total_pages``,
  ``available_pages``, ``alloc_pages_success``, ``alloc_pages_fail``,
  ``release_pages_success``; readable by every user;
- ``<debugfs>/cma/<area>/`` (``CONFIG_CMA_DEBUGFS``, root): ``count``,
  ``used``, ``maxchunk`` (the largest free run, in pages), ``base_pfn``,
  ``order_per_bit`` and ``bitmap`` (one bit per ``2**order_per_bit`` pages,
  printed as 32-bit words, lowest bit first).

A figure the kernel does not give is None, and :attr:`CmaArea.missing` says
why: the config option that would give it, or that it needs root. The
holders come from a scan of every process's dma-buf fds and mappings
(``linuxdmabuf._procfs``, what ``linuxdmabuf dump`` shows): the buffers whose
exporter is one of the area's heaps.
"""
import os
import resource
import struct
from dataclasses import dataclass, field

from ._mounts import debugfs_mount

__all__ = ["CmaArea", "CmaHolder", "areas", "area", "area_names", "heap_areas", "why_no_areas", "explain_enomem"]

SYSFS = "/sys/kernel/mm/cma"
HEAP_DIR = "/dev/dma_heap"
PAGE_SIZE = resource.getpagesize()
_SYSFS_FIELDS = ("total_pages", "available_pages", "alloc_pages_success", "alloc_pages_fail",
                 "release_pages_success")
_DEBUGFS_FIELDS = ("count", "used", "maxchunk", "base_pfn", "order_per_bit")


@dataclass(frozen=True)
class CmaHolder:
    """A process holding buffers of an area's heaps: its name and pid, how many buffers, how many bytes.
    pid 0 stands for buffers no process holds (kept by the kernel or a driver)."""

    pid: int
    name: str
    buffers: int
    bytes: int

    def __str__(self) -> str:
        who = f"{self.name}[{self.pid}]" if self.pid else "no process (a driver or the kernel)"
        return f"{who}: {self.buffers} buffer{'s' if self.buffers != 1 else ''}, {mib(self.bytes)}"


@dataclass
class CmaArea:
    """One CMA area. Page counts are in pages of ``page_size`` bytes; None where the kernel gives no file
    for it (``missing`` says why)."""

    name: str
    page_size: int = PAGE_SIZE
    total_pages: int | None = None
    used_pages: int | None = None
    free_pages: int | None = None
    largest_free_pages: int | None = None
    alloc_pages_success: int | None = None
    alloc_pages_fail: int | None = None
    release_pages_success: int | None = None
    base_pfn: int | None = None
    order_per_bit: int | None = None
    bitmap: bytes | None = None  # one byte per bit of the kernel's bitmap: 1 used, 0 free
    heaps: list = field(default_factory=list)
    holders: list = field(default_factory=list)  # CmaHolder, most bytes first
    missing: dict = field(default_factory=dict)  # figure -> why the kernel does not give it here

    def largest_free_run(self) -> tuple | None:
        """(first page, pages) of the largest free run in the bitmap, or None without one."""
        if self.bitmap is None:
            return None
        best, start = (0, 0), None
        for i, bit in enumerate(self.bitmap + b"\1"):
            if not bit and start is None:
                start = i
            elif bit and start is not None:
                if i - start > best[1]:
                    best = (start, i - start)
                start = None
        scale = 1 << (self.order_per_bit or 0)
        return best[0] * scale, best[1] * scale

    def as_dict(self) -> dict:
        doc = {k: v for k, v in self.__dict__.items() if k not in ("bitmap", "holders")}
        doc["holders"] = [h.__dict__ for h in self.holders]
        doc["bitmap"] = None if self.bitmap is None else "".join("1" if b else "0" for b in self.bitmap)
        run = self.largest_free_run()
        doc["largest_free_run"] = None if run is None else {"first_page": run[0], "pages": run[1]}
        return doc


def mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def _int(path: str) -> int:
    with open(path) as f:
        return int(f.read().split()[0])


def _debugfs_cma() -> str | None:
    mount = debugfs_mount()
    return os.path.join(mount, "cma") if mount else None


def area_names() -> list:
    """The CMA areas the kernel lists in sysfs or debugfs (an area has the same name in both)."""
    names: set[str] = set()
    for root in (SYSFS, _debugfs_cma()):
        if root:
            try:
                names.update(n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n)))
            except OSError:
                pass
    return sorted(names)


def meminfo() -> dict:
    """CmaTotal and CmaFree from /proc/meminfo, in bytes ({} where the kernel has no CMA)."""
    found = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("CmaTotal", "CmaFree"):
                    found[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return found


def why_no_areas() -> str:
    """Why area_names() is empty here: the kernel has no CMA, no area reserved, or no per-area files."""
    info = meminfo()
    if not info:
        return "this kernel has no CMA (CONFIG_CMA; /proc/meminfo has no CmaTotal)"
    if not info["CmaTotal"]:
        return ("this kernel has CMA but reserved no area (CmaTotal is 0): reserve one with cma=64M on the kernel "
                "command line (or CONFIG_CMA_SIZE_MBYTES, or a shared-dma-pool in the device tree)")
    debugfs = _debugfs_cma()
    return (f"CmaTotal is {mib(info['CmaTotal'])}, but the kernel shows no area: neither {SYSFS} "
            "(CONFIG_CMA_SYSFS) nor <debugfs>/cma (CONFIG_CMA_DEBUGFS"
            + (")" if debugfs else ", and debugfs is not mounted: mount -t debugfs none /sys/kernel/debug)"))


def _read_area(name: str, bitmap: bool = True) -> CmaArea:
    a = CmaArea(name)
    sysfs = os.path.join(SYSFS, name)
    if os.path.isdir(sysfs):
        for key in _SYSFS_FIELDS:
            try:
                setattr(a, "free_pages" if key == "available_pages" else key, _int(os.path.join(sysfs, key)))
            except (OSError, ValueError) as e:
                a.missing[key] = f"{os.path.join(sysfs, key)}: {getattr(e, 'strerror', None) or e}"
    else:
        for key in ("total_pages", "free_pages", "alloc_pages_success", "alloc_pages_fail", "release_pages_success"):
            a.missing[key] = f"no {sysfs} (CONFIG_CMA_SYSFS)"
    root = _debugfs_cma() or ""
    debugfs = os.path.join(root, name)
    if not root:
        why = "debugfs is not mounted (mount -t debugfs none /sys/kernel/debug)"
    elif not os.access(os.path.dirname(root), os.X_OK):
        why = f"{root} is readable by root only: run as root"
    elif not os.path.isdir(debugfs):
        why = f"no {debugfs} (CONFIG_CMA_DEBUGFS)"
    else:
        why = None
    if why:
        for key in ("used_pages", "largest_free_pages", "base_pfn", "order_per_bit", "bitmap"):
            a.missing[key] = why
    else:
        try:
            _read_debugfs(a, debugfs, bitmap)
        except PermissionError:
            for key in ("used_pages", "largest_free_pages", "base_pfn", "order_per_bit", "bitmap"):
                a.missing[key] = f"{debugfs} is readable by root only: run as root"
    if a.used_pages is None and a.total_pages is not None and a.free_pages is not None:
        a.used_pages = a.total_pages - a.free_pages  # sysfs's figures: the same count debugfs keeps
        a.missing.pop("used_pages", None)
    return a


def _read_debugfs(a: CmaArea, debugfs: str, bitmap_too: bool, tries: int = 10) -> None:
    """count, used, maxchunk, base_pfn, order_per_bit and the bitmap, as of one moment.

    The kernel gives each file separately, so a pool changing while they are
    read could give a largest free run bigger than the free pages. `used` is
    read before and after the rest: the reading is kept when it did not move
    and the figures agree; after `tries` changing readings, used and the
    largest free run are taken from the last bitmap (one file, one moment).
    """
    for _ in range(tries):
        used = _int(os.path.join(debugfs, "used"))
        values = {key: _int(os.path.join(debugfs, key)) for key in ("count", "maxchunk", "base_pfn", "order_per_bit")}
        bitmap = _read_bitmap(debugfs) if bitmap_too else None
        if _int(os.path.join(debugfs, "used")) == used and values["maxchunk"] <= values["count"] - used:
            break
    else:
        bitmap = bitmap or _read_bitmap(debugfs)
        a.order_per_bit, a.bitmap = values["order_per_bit"], bitmap
        used = sum(bitmap) << values["order_per_bit"]
        values["maxchunk"] = (a.largest_free_run() or (0, 0))[1]
    a.total_pages, a.used_pages, a.free_pages = values["count"], used, values["count"] - used
    a.largest_free_pages, a.base_pfn = values["maxchunk"], values["base_pfn"]
    a.order_per_bit, a.bitmap = values["order_per_bit"], bitmap


def _read_bitmap(debugfs: str) -> bytes:
    """The allocation bitmap of every range of the area, in order (debugfs prints it as u32 words)."""
    ranges = os.path.join(debugfs, "ranges")
    paths = ([os.path.join(ranges, r, "bitmap") for r in sorted(os.listdir(ranges), key=int)]
             if os.path.isdir(ranges) else [os.path.join(debugfs, "bitmap")])
    bits = []
    for path in paths:
        with open(path) as f:
            words = [int(word) for word in f.read().split()]
        bits += [_BITS[byte] for byte in struct.pack(f"<{len(words)}I", *words)]
    return b"".join(bits)


_BITS = [bytes((byte >> i) & 1 for i in range(8)) for byte in range(256)]  # a byte -> its 8 bits, lowest first


def _heap_areas(names: list) -> dict:
    """CMA heap name -> the area it allocates from: a heap named as an area; else, where there is
    one area, that one; else found by allocating a page and seeing which area's counter moves."""
    try:
        heaps = sorted(os.listdir(HEAP_DIR))
    except OSError:
        return {}
    found = {}
    for heap in heaps:
        if heap in names:
            found[heap] = heap
        elif heap != "system" and names:
            area = names[0] if len(names) == 1 else _probe_heap_area(heap, names)
            if area is not None:
                found[heap] = area
    return found


def heap_areas() -> dict:
    """CMA heap name -> the CMA area it allocates from, on this kernel ({} without CMA heaps)."""
    return _heap_areas(area_names())


def _probe_heap_area(heap: str, names: list) -> str | None:
    from .heap import Heap

    def counts():
        return {n: _int(os.path.join(SYSFS, n, "alloc_pages_success")) for n in names}

    try:
        before = counts()
        with Heap(heap) as h:
            h.allocate(PAGE_SIZE).close()
        after = counts()
    except OSError:
        return None
    moved = [n for n in names if after[n] != before[n]]
    return moved[0] if len(moved) == 1 else None


def _holders(heaps: list, buffers) -> list:
    """Who holds the buffers of `heaps` among `buffers` (a _procfs scan's), most bytes first."""
    per: dict = {}
    for buf in buffers.values():
        if buf.exporter not in heaps:
            continue
        for pid, holder in (buf.holders.items() or [(0, None)]):
            name = holder.name if holder else ""
            count, size = per.get((pid, name), (0, 0))
            per[(pid, name)] = (count + 1, size + (buf.size or 0))
    return sorted((CmaHolder(pid, name, count, size) for (pid, name), (count, size) in per.items()),
                  key=lambda h: (-h.bytes, h.pid))


def _scanned_buffers() -> dict:
    from ._procfs import scan

    return scan().buffers


def _view(name: str, heap_map: dict, *, bitmap: bool = True, buffers=None) -> CmaArea:
    """Area `name` read now, with the heaps `heap_map` puts on it and, given a scan's `buffers`, its holders."""
    a = _read_area(name, bitmap)
    a.heaps = sorted(h for h, n in heap_map.items() if n == name)
    if buffers is not None and a.heaps:
        a.holders = _holders(a.heaps, buffers)
    return a


def areas(*, holders: bool = True) -> list:
    """Every CMA area of this kernel, read now (with its holders unless holders=False: one scan for all)."""
    names = area_names()
    heap_map = _heap_areas(names)
    buffers = _scanned_buffers() if holders and heap_map else None
    return [_view(name, heap_map, buffers=buffers) for name in names]


def area(name: str, *, holders: bool = True) -> CmaArea:
    """One CMA area by name; ValueError listing the areas there are."""
    if not isinstance(name, str):
        raise TypeError(f"area name must be a str, not {type(name).__name__}")
    names = area_names()
    if name not in names:
        raise ValueError(f"no CMA area {name!r}: " + (f"the areas are {', '.join(names)}" if names
                                                       else why_no_areas()))
    heap_map = _heap_areas(names)
    return _view(name, heap_map, buffers=_scanned_buffers() if holders and heap_map else None)


def explain_enomem(heap: str, size: int) -> str | None:
    """Why `heap` could not give `size` bytes, from the area behind it as it is now; None if the heap
    draws on no CMA area this kernel shows. Built only on the failure path of Heap.allocate()."""
    heaps = heap_areas()
    name = heaps.get(heap)
    if name is None:
        return None
    a = _view(name, heaps, bitmap=False)
    pages = -(-size // a.page_size)
    parts = [f"{mib(size)} asked ({pages} pages) from CMA area {name}"]
    if a.free_pages is not None and a.total_pages is not None:
        free = a.free_pages * a.page_size
        if a.largest_free_pages is not None:
            largest = a.largest_free_pages * a.page_size
            if a.free_pages >= pages > a.largest_free_pages:
                parts.append(f"{mib(free)} free of {mib(a.total_pages * a.page_size)}, but the largest free run is "
                             f"{mib(largest)} ({a.largest_free_pages} pages): the pool is fragmented")
            else:
                parts.append(f"{mib(free)} free of {mib(a.total_pages * a.page_size)} ({a.free_pages} pages), the "
                             f"largest free run {mib(largest)} ({a.largest_free_pages} pages)")
        else:
            parts.append(f"{mib(free)} free of {mib(a.total_pages * a.page_size)} ({a.free_pages} pages); the "
                         f"largest free run is unknown: {a.missing.get('largest_free_pages', '')}")
    try:
        held = _holders(a.heaps, _scanned_buffers())[:3]
    except OSError as e:
        held, parts = [], parts + [f"holders unknown ({e.strerror})"]
    if held:
        parts.append("held by " + "; ".join(map(str, held)))
    fixes = ["free buffers" + (f" ({', '.join(f'{h.name}[{h.pid}]' for h in held if h.pid)})" if held else ""),
             "use fewer or smaller buffers",
             f"or reserve a larger pool (cma=NNM on the kernel command line; the pool is "
             f"{mib((a.total_pages or 0) * a.page_size)})"]
    return "; ".join(parts) + " -- " + ", ".join(fixes)

