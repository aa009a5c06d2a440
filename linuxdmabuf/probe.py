"""Kernel features by name: does this kernel, for this process, have each one, and if not, why.

A feature is a string: ``udmabuf``, ``dma_heap`` (any heap), ``heap:NAME``,
``cma_heap`` (any CMA heap), ``cma_heap:NAME``, ``sw_sync``, ``drm:DRIVER``
(a DRM card of that driver: ``drm:vgem``, ``drm:vkms``), ``v4l2:DRIVER`` (a
video node of that driver: ``v4l2:vivid``, ``v4l2:vim2m``...),
``debugfs:bufinfo`` (<debugfs>/dma_buf/bufinfo), ``trace:dma_buf`` (the
dma_buf trace events of Linux 7.0+) and ``syncobj`` (a DRM device with sync
objects; ``syncobj:timeline`` with timelines).

:func:`missing` answers None when the feature is there and usable, else a
:class:`Missing` saying why: either the kernel lacks it (with the kernel
option and the fix) or it is there but this process may not use it
(``denied``). The VM runner's kernels declare which features they must have
(``linuxdmabuf.vm.kernels.EXPECTED``); the pytest plugin fails, rather than
skips, a test needing an expected feature that is missing.
"""
import errno
import os
from typing import NamedTuple

__all__ = ["Missing", "missing", "describe", "FEATURES"]

# feature (or prefix before ":") -> what provides it, for messages
FEATURES = {
    "udmabuf": "/dev/udmabuf (CONFIG_UDMABUF; `modprobe udmabuf` where it is a module)",
    "dma_heap": "a dma-heap under /dev/dma_heap (CONFIG_DMABUF_HEAPS_SYSTEM or _CMA)",
    "heap": "the dma-heap /dev/dma_heap/{arg} (CONFIG_DMABUF_HEAPS_SYSTEM for 'system', "
            "CONFIG_DMABUF_HEAPS_CMA and a CMA area for the others)",
    "cma_heap": "a CMA dma-heap{named} (CONFIG_DMABUF_HEAPS_CMA and a CMA area, e.g. cma=64M on the "
                "kernel command line)",
    "sw_sync": "sw_sync timelines in debugfs (CONFIG_SW_SYNC, debugfs mounted, root)",
    "drm": "a DRM card of the {arg} driver (CONFIG_DRM_{ARG}; `modprobe {arg}` where it is a module)",
    "v4l2": "a video node of the {arg} driver (CONFIG_VIDEO_{ARG}; `modprobe {arg}` where it is a module)",
    "debugfs": "<debugfs>/dma_buf/{arg} (CONFIG_DEBUG_FS, debugfs mounted, root)",
    "trace": "the {arg} trace events in tracefs (Linux 7.0+, CONFIG_TRACING; tracefs mounted, root)",
    "syncobj": "a DRM device with sync object{arg}s (DRM_CAP_SYNCOBJ{ARG}: virtio_gpu, i915, xe, amdgpu, msm, "
               "panfrost...; in a QEMU guest -device virtio-gpu-pci and CONFIG_DRM_VIRTIO_GPU)",
}


class Missing(NamedTuple):
    """Why a feature cannot be used: `reason`; `denied` when the kernel has it but this process may not use it."""

    feature: str
    reason: str
    denied: bool = False

    def __str__(self) -> str:
        return f"{self.feature}: {self.reason}"


def describe(feature: str) -> str:
    """What provides `feature`, with the kernel option: for messages."""
    kind, _, arg = feature.partition(":")
    text = FEATURES.get(kind)
    if text is None:
        raise ValueError(f"unknown feature {feature!r}: one of {', '.join(sorted(FEATURES))} (some as KIND:NAME)")
    if kind == "syncobj":
        if arg not in ("", "timeline"):
            raise ValueError(f"unknown feature {feature!r}: syncobj or syncobj:timeline")
        return text.format(arg=" timeline" if arg else "", ARG="_TIMELINE" if arg else "")
    return text.format(arg=arg, ARG=arg.upper(), named=f" named {arg}" if arg else "")


def missing(feature: str) -> Missing | None:
    """None if this kernel has `feature` and this process can use it, else why not.

    Probed now, by using the feature (allocating, opening, asking the
    driver), never from names or configuration alone.
    """
    kind, _, arg = feature.partition(":")
    probe = _PROBES.get(kind)
    if probe is None:
        describe(feature)  # raises ValueError naming the known features
        raise AssertionError(feature)  # (describe() knows every kind _PROBES does)
    if kind in _NEEDS_ARG and not arg:
        raise ValueError(f"feature {feature!r} needs a name: {kind}:NAME")
    if kind in _NO_ARG and arg:
        raise ValueError(f"feature {feature!r} takes no ':NAME'")
    try:
        why = probe(arg)
    except PermissionError as e:
        return Missing(feature, f"{e.strerror or e}", denied=True)
    except OSError as e:
        why = e.strerror or str(e)
    if why is None:
        return None
    return Missing(feature, why if "CONFIG_" in why else f"{why} -- needs {describe(feature)}")


def _udmabuf(_):
    from .udmabuf import Udmabuf

    with Udmabuf() as device:
        device.allocate(4096).close()


def _dma_heap(_):
    from .heap import Heap

    names = Heap.available()
    if not names:
        return "/dev/dma_heap is empty or missing"
    denied = None
    for name in names:
        try:
            return _heap(name)
        except PermissionError as e:
            denied = e
    raise denied


def _heap(name):
    from .heap import Heap

    with Heap(name) as heap:
        heap.allocate(4096).close()


def _cma_heap(name):
    from .heap import Heap

    if not name:
        if Heap.available(kind="cma"):
            return None
        # Heap.available(kind=) leaves out the heaps this user may not open;
        # any but "system" (the kernel's name for the system heap) may be CMA.
        denied = [n for n in Heap.available() if n != "system" and not os.access(f"/dev/dma_heap/{n}", os.R_OK)]
        if denied:
            raise PermissionError(errno.EACCES, f"no CMA heap this user may open ({', '.join(denied)}: "
                                                "Permission denied)")
        return "no CMA heap under /dev/dma_heap"
    with Heap(name) as heap:
        if heap.kind != "cma":
            return f"the dma-heap {name} does not allocate from CMA"
    return None


def _sw_sync(_):
    from .swsync import SwSyncTimeline

    SwSyncTimeline().close()


def _drm(driver):
    from ._sys import UnsupportedError
    from .drm import DrmDevice

    try:
        DrmDevice.find(driver).close()
    except UnsupportedError as e:
        return e.strerror
    return None


V4L2_CLASS = "/sys/class/video4linux"


def v4l2_nodes(driver: str) -> list:
    """/dev/videoN nodes whose device's driver is `driver` (from sysfs), in node order."""
    found = []
    try:
        names = os.listdir(V4L2_CLASS)
    except FileNotFoundError:
        return []
    for name in names:
        if not name.startswith("video"):
            continue
        try:
            bound = os.path.basename(os.readlink(os.path.join(V4L2_CLASS, name, "device", "driver")))
        except OSError:
            continue
        if bound == driver:
            found.append(f"/dev/{name}")
    return sorted(found, key=lambda p: int(p[len("/dev/video"):]))


def _v4l2(driver):
    if v4l2_nodes(driver):
        return None
    return f"no video node of driver {driver} in {V4L2_CLASS}"


def _debugfs(name):
    from ._mounts import debugfs_mount

    mount = debugfs_mount()
    if mount is None:
        return "debugfs is not mounted (mount -t debugfs none /sys/kernel/debug)"
    if not os.access(mount, os.X_OK):
        raise PermissionError(errno.EACCES, f"debugfs ({mount}) is readable by root only")
    path = os.path.join(mount, "dma_buf", name)
    if not os.path.exists(path):
        return f"no {path}"
    with open(path, "rb") as f:  # PermissionError: denied
        f.read(1)
    return None


def _trace(system):
    from ._mounts import debugfs_mount, kernel_has

    for root in ("/sys/kernel/tracing", os.path.join(debugfs_mount() or "/nonexistent", "tracing")):
        events = os.path.join(root, "events")
        if os.path.isdir(root) and not os.access(root, os.R_OK | os.X_OK):
            raise PermissionError(errno.EACCES, f"{root} is readable by root only")
        if os.path.isdir(events):
            if os.path.isdir(os.path.join(events, system)):
                return None
            if not os.access(events, os.R_OK | os.X_OK):
                raise PermissionError(errno.EACCES, f"{events} is readable by root only")
            return f"tracefs at {root} has no events/{system}"
    if not kernel_has("tracefs"):
        return "this kernel has no tracefs (CONFIG_TRACING)"
    return "tracefs is not mounted (mount -t tracefs none /sys/kernel/tracing)"


def _syncobj(kind):
    from .syncobj import find_device

    describe(f"syncobj:{kind}" if kind else "syncobj")  # ValueError for another name
    try:
        find_device(timeline=bool(kind)).close()
    except OSError as e:
        if e.errno == errno.EOPNOTSUPP:
            return e.strerror
        raise
    return None


_PROBES = {"udmabuf": _udmabuf, "dma_heap": _dma_heap, "heap": _heap, "cma_heap": _cma_heap, "sw_sync": _sw_sync,
           "drm": _drm, "v4l2": _v4l2, "debugfs": _debugfs, "trace": _trace, "syncobj": _syncobj}
_NEEDS_ARG = {"heap", "drm", "v4l2", "debugfs", "trace"}
_NO_ARG = {"udmabuf", "dma_heap", "sw_sync"}
