"""linuxdmabuf: script real Linux kernel buffers.

dma-buf fds (:class:`DmaBuf`), sync_file fences (:class:`SyncFile`), dma-heap
allocation (:class:`Heap`), udmabuf (:class:`Udmabuf`) and software fence
timelines for tests (:class:`SwSyncTimeline`), on the kernel's own ioctls.
"""
import errno

from ._fd import UnclosedWarning
from ._sys import UnsupportedError
from .dmabuf import DmaBuf, DmaBufInfo
from .heap import Heap
from .swsync import SwSyncTimeline
from .syncfile import FenceInfo, FenceStatus, SyncFile, SyncFileInfo
from .udmabuf import Udmabuf

__version__ = "0.1.0"

__all__ = [
    "DmaBuf", "DmaBufInfo", "FenceInfo", "FenceStatus", "Heap", "SwSyncTimeline", "SyncFile",
    "SyncFileInfo", "Udmabuf", "UnclosedWarning", "UnsupportedError", "allocate", "features",
]


def allocate(size: int, *, heap: str | None = None) -> DmaBuf:
    """A new dma-buf of `size` bytes.

    From the named heap; with heap=None from the first provider that works of
    the "system" heap, then udmabuf. When none works, the OSError lists why
    each failed (its errno is the last provider's).
    """
    if heap is not None:
        if not isinstance(heap, str):  # Heap(int) would adopt, then close, that fd
            raise TypeError(f"heap must be a heap name (str) or None, not {type(heap).__name__}")
        with Heap(heap) as h:
            return h.allocate(size)
    failures = []
    for provider in (lambda: Heap("system"), Udmabuf):
        try:
            with provider() as device:
                return device.allocate(size)
        except (TypeError, ValueError):
            raise
        except OSError as e:
            failures.append(e)
    raise OSError(failures[-1].errno, "no dma-buf provider could allocate: " + "; ".join(
        e.strerror or str(e) for e in failures) + " -- `python -m linuxdmabuf info` shows what is missing and the fix")


def features() -> dict:
    """What the running kernel and this process can use, probed now.

    udmabuf, dma_heap, cma_heap, sw_sync: the device opens (and allocates);
    export_sync_file, import_sync_file: the dma-buf ioctls exist (6.0+);
    set_deadline: SYNC_IOC_SET_DEADLINE exists (6.3+). An ioctl answering
    ENOTTY means unsupported.
    """
    found = dict.fromkeys(("udmabuf", "dma_heap", "cma_heap", "sw_sync", "export_sync_file",
                           "import_sync_file", "set_deadline"), False)
    buffers = []
    try:
        for name in Heap.available():
            try:
                with Heap(name) as heap:
                    buffers.append(heap.allocate(4096))
                    found["dma_heap"] = True
                    found["cma_heap"] = found["cma_heap"] or heap.kind == "cma"
            except OSError:
                pass
        try:
            with Udmabuf() as udmabuf:
                buffers.append(udmabuf.allocate(4096))
                found["udmabuf"] = True
        except OSError:
            pass
        try:
            SwSyncTimeline().close()
            found["sw_sync"] = True
        except OSError:
            pass
        if buffers:
            buf = buffers[0]
            try:
                with buf.export_sync_file() as fence:
                    found["export_sync_file"] = True
                    found["set_deadline"] = _supported(lambda: fence.set_deadline(0))
                    found["import_sync_file"] = _supported(lambda: buf.import_sync_file(fence, write=False))
            except UnsupportedError:
                pass
    finally:
        for buf in buffers:
            buf.close()
    return found


def _supported(call) -> bool:
    try:
        call()
    except UnsupportedError:
        return False
    except OSError as e:
        return e.errno != errno.ENOTTY
    return True
