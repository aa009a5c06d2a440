"""Explicit sync as GPUs and compositors do it: DRM sync objects (drivers/gpu/drm/drm_syncobj.c).

A sync object is a container on a DRM file for a fence. A *binary* one
(:class:`Syncobj`) holds at most one fence; a *timeline* (:class:`Timeline`)
holds a chain of fences at rising 64-bit points, the kernel object behind
Vulkan's timeline semaphores and Wayland's linux-drm-syncobj-v1 protocol. At
every edge of a pipeline a point becomes a sync_file or a sync_file a point:
:meth:`Timeline.export_sync_file` and :meth:`Timeline.import_sync_file`
bridge to :class:`~linuxdmabuf.SyncFile`, so a camera's, a display's or
sw_sync's fence can sit on a timeline, and a timeline's point can be a KMS
in-fence.

A sync object lives on a DRM device that has ``DRM_CAP_SYNCOBJ``
(``DRM_CAP_SYNCOBJ_TIMELINE`` for timelines): virtio-gpu in the VM; i915,
xe, amdgpu, msm, panfrost... on real hosts (vgem and vkms have neither).
Its handle is per open DRM file, like a GEM handle, released with
``DRM_IOCTL_SYNCOBJ_DESTROY`` by :meth:`close` or, with an
:class:`~linuxdmabuf.UnclosedWarning`, by the garbage collector; handle
numbers are reused lowest first. To give one to another process,
:meth:`export` makes the syncobj's own fd and ``fromfd()`` imports one.

What the kernel does with points (measured on 7.2, and what IGT's
syncobj_timeline checks): a point is *submitted* once a fence is put there
(:meth:`Timeline.signal`, :meth:`~Timeline.import_sync_file`,
:meth:`~Timeline.transfer`); a point is signaled once every fence up to it
has, so waiting for point 3 is satisfied by signaling 5. A wait on a point
that has no fence yet waits for it to be submitted (``WAIT_FOR_SUBMIT``), or
with ``for_submit=False`` fails with EINVAL. A point put below the last one
submitted does not go back in time: the kernel raises it to the last point,
on a chain of its own, so it also holds that point.
"""
import errno
import glob
import os
import select
import time
import warnings

from . import _uapi
from ._fd import UnclosedWarning
from ._sys import (
    UnsupportedError,
    check_fd,
    check_int,
    check_timeout,
    fd_target,
    ioctl,
    ioctl_failed,
    os_error,
    poll_fd_async,
    raw_ioctl,
)
from ._uapi import ffi
from .drm import DrmDevice, _node_number
from .syncfile import SyncFile

__all__ = ["Timeline", "Syncobj", "find_device", "MAX_POINT"]

MAX_POINT = 2**64 - 1
_INT64_MAX = 2**63 - 1
DRIVERS_WITH_TIMELINES = "virtio_gpu (QEMU's -device virtio-gpu-pci), i915, xe, amdgpu, msm, panfrost, nouveau"
_FILE = "anon_inode:syncobj_file"  # what the kernel names a syncobj's fd (drm_syncobj_get_fd)
_WAIT_FOR_SUBMIT = _uapi.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT
_IMPORT = _uapi.DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_IMPORT_SYNC_FILE
_EXPORT = _uapi.DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE
_AT_POINT = _uapi.DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_TIMELINE  # (== ..._FD_TO_HANDLE_FLAGS_TIMELINE)
_address = ffi.cast
_new = ffi.new
_TIMELINE_SIGNAL = _uapi.DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL
_QUERY = _uapi.DRM_IOCTL_SYNCOBJ_QUERY
_TIMELINE_WAIT = _uapi.DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT
_FD_TO_HANDLE = _uapi.DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE
_HANDLE_TO_FD = _uapi.DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD
_HANDLE_ARG = ffi.typeof("struct drm_syncobj_handle *")


def _cap(device: DrmDevice, capability: int) -> int:
    """DRM_IOCTL_GET_CAP, 0 where the driver does not answer it."""
    try:
        return device.get_cap(capability)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            return 0
        raise


def _unsupported(what: str, seen: str) -> UnsupportedError:
    return UnsupportedError(errno.EOPNOTSUPP, f"{what}: {seen} -- DRM sync object timelines "
                                              f"(DRM_CAP_SYNCOBJ_TIMELINE) come with {DRIVERS_WITH_TIMELINES}; "
                                              "vgem and vkms have none")


def find_device(*, timeline: bool = True) -> DrmDevice:
    """Open the first DRM render node, else card, whose driver has sync objects (timelines, unless
    ``timeline=False``): what ``Timeline()`` and ``Syncobj()`` use without a device.

    UnsupportedError (EOPNOTSUPP) naming the drivers seen and those that have
    them; PermissionError if some nodes could not be opened to ask.
    """
    capability = _uapi.DRM_CAP_SYNCOBJ_TIMELINE if timeline else _uapi.DRM_CAP_SYNCOBJ
    seen, denied = [], []
    for pattern in ("/dev/dri/renderD*", "/dev/dri/card*"):
        for path in sorted(glob.glob(pattern), key=_node_number):
            try:
                device = DrmDevice(path)
            except PermissionError:
                denied.append(path)
                continue
            with device:
                if _cap(device, capability):
                    return DrmDevice._wrap(device.detach())
                seen.append(f"{path} ({device.driver})")
    if denied:
        from .drm import DENIED

        raise os_error(errno.EACCES, "looking for a DRM device with sync objects",
                       f"could not open {', '.join(denied)}: {DENIED}")
    raise _unsupported("no DRM device with sync object timelines" if timeline else "no DRM device with sync objects",
                       ", ".join(seen) or "no /dev/dri nodes")


def _check_point(point, what: str = "point") -> int:
    point = check_int(point, what)
    if not 0 < point <= MAX_POINT:
        raise ValueError(f"{what} must be within 1..2**64-1 (a timeline point; 0 is no point: a binary "
                         f"syncobj is Syncobj), not {point}")
    return point


def _deadline(timeout) -> int:
    """An absolute CLOCK_MONOTONIC deadline in ns, as the wait ioctls take it (0: check once)."""
    timeout = check_timeout(timeout)
    if timeout is None:
        return _INT64_MAX
    if timeout == 0:
        return 0
    return min(time.clock_gettime_ns(time.CLOCK_MONOTONIC) + int(timeout * 1e9), _INT64_MAX)


class _Handle:
    """A sync object's handle on one DRM file; the common part of Syncobj and Timeline."""

    __slots__ = ("device", "_handle", "_own_device", "__weakref__")
    device: DrmDevice
    _handle: int | None
    _timeline = False

    def __init__(self, device: DrmDevice | None = None, *, _flags: int = 0):
        self._handle = None
        self._attach_device(device)
        arg = _new("struct drm_syncobj_create *")
        arg.flags = _flags
        try:
            ioctl(self.device.fileno(), _uapi.DRM_IOCTL_SYNCOBJ_CREATE, arg, "DRM_IOCTL_SYNCOBJ_CREATE",
                  {errno.EOPNOTSUPP: f"the {self.device.driver} driver has no sync objects"})
        except BaseException:
            self._drop_device()
            raise
        self._handle = arg.handle
        self._made()

    def _made(self) -> None:
        """Called once the object has its handle."""

    def _attach_device(self, device) -> None:
        kind = "sync object timelines" if self._timeline else "sync objects"
        if device is None:
            self.device, self._own_device = find_device(timeline=self._timeline), True
            return
        if not isinstance(device, DrmDevice):
            raise TypeError(f"device must be a linuxdmabuf.drm.DrmDevice or None, not {type(device).__name__}")
        device.fileno()  # ValueError if closed
        capability = "DRM_CAP_SYNCOBJ_TIMELINE" if self._timeline else "DRM_CAP_SYNCOBJ"
        if not _cap(device, getattr(_uapi, capability)):
            raise _unsupported(f"{device.path} has no {kind}", f"its driver {device.driver} reports {capability} 0")
        self.device, self._own_device = device, False

    def _drop_device(self) -> None:
        if self._own_device:
            self.device.close()

    @classmethod
    def fromfd(cls, fd, device: DrmDevice | None = None):
        """DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE: a new handle on `device` for the sync object behind `fd`
        (from :meth:`export`, in this process or another); the caller keeps `fd`.

        A sync object fd is not tied to the device that made it: any DRM file
        with sync objects can take a handle for it. ValueError (nothing kept)
        if `fd` is not a sync object's fd.
        """
        fd = check_fd(fd, allow_fileno=True)
        target = fd_target(fd)
        if target != _FILE:
            raise ValueError(f"fd {fd} is not a DRM sync object (it is {target!r}; export() makes one)")
        self = cls.__new__(cls)
        self._handle = None
        self._attach_device(device)
        arg = _new("struct drm_syncobj_handle *")
        arg.fd = fd
        try:
            ioctl(self.device.fileno(), _uapi.DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE, arg, "DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE")
        except BaseException:
            self._drop_device()
            raise
        self._handle = arg.handle
        self._made()
        return self

    @property
    def handle(self) -> int:
        """The handle number on `device`'s DRM file; ValueError once closed."""
        handle = self._handle
        if handle is None or self.device.closed:
            raise ValueError(f"{type(self).__name__} is closed" if handle is None else
                             f"the DRM device of this {type(self).__name__} is closed")
        return handle

    @property
    def closed(self) -> bool:
        return self._handle is None

    def close(self) -> None:
        """DRM_IOCTL_SYNCOBJ_DESTROY (and close the device if it was opened for this object). Idempotent.

        Fences already exported as sync_files, and other handles or fds of
        the same sync object, live on."""
        handle = self._handle
        if handle is None:
            return
        self._handle = None
        try:
            _destroy(self.device, handle)
        finally:
            self._drop_device()

    def __del__(self, _warn=warnings.warn):
        try:
            handle = self._handle
        except AttributeError:  # never made
            return
        if handle is None:
            return
        self._handle = None
        try:
            if not self.device.closed:
                _warn(f"unclosed {type(self).__name__} handle {handle} on {self.device.path}", UnclosedWarning,
                      source=self)
        finally:
            try:
                _destroy(self.device, handle)
            except OSError:
                pass
            if self._own_device:
                self.device.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        name = f"linuxdmabuf.syncobj.{type(self).__name__}"
        if self._handle is None:
            return f"<{name} [closed]>"
        return f"<{name} handle={self._handle} on {self.device.path}>"

    def __reduce__(self):
        raise TypeError(f"cannot pickle {type(self).__name__}: a handle is only valid on its DRM file; "
                        "send it with linuxdmabuf.ipc.send() or pass export()'s fd")

    def export(self) -> int:
        """DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD: a new fd (O_CLOEXEC) on this sync object, for another process
        (``fromfd()`` there). The caller owns and closes it."""
        arg = _new("struct drm_syncobj_handle *")
        arg.handle = self.handle
        ioctl(self.device.fileno(), _uapi.DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD, arg, "DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD")
        return arg.fd

    def reset(self) -> None:
        """DRM_IOCTL_SYNCOBJ_RESET: drop the fence (every point of a timeline: `value` is 0 again,
        and waits without for_submit fail until something is put there)."""
        self._on_handle(_uapi.DRM_IOCTL_SYNCOBJ_RESET, "DRM_IOCTL_SYNCOBJ_RESET")

    def _on_handle(self, request: int, what: str) -> None:
        """One struct drm_syncobj_array call (RESET, SIGNAL) on this handle alone."""
        handles = _new("uint32_t[1]", [self.handle])
        arg = _new("struct drm_syncobj_array *")
        arg.handles = int(_address("uintptr_t", handles))
        arg.count_handles = 1
        ioctl(self.device.fileno(), request, arg, what)

    def _import(self, fence, point: int, what) -> None:
        """FD_TO_HANDLE(IMPORT_SYNC_FILE) of `fence`, at `point` of a timeline (0: a binary syncobj's
        fence); `what()` names the operation, called only on failure."""
        if not isinstance(fence, SyncFile):
            raise TypeError(f"fence must be a linuxdmabuf.SyncFile, not {type(fence).__name__}")
        if point and not _point_flags[0]:
            return self._import_through_binary(fence, point)
        arg = _new(_HANDLE_ARG, (self.handle, _IMPORT | (_AT_POINT if point else 0), fence.fileno(), 0, point))
        view = ffi.buffer(arg)
        fd = self.device._fd
        try:
            raw_ioctl(fd, _FD_TO_HANDLE, view)
        except OSError as e:
            if not point or e.errno != errno.EINVAL:
                ioctl_failed(e, fd, _FD_TO_HANDLE, view, what())
            self._import_through_binary(fence, point)  # a kernel without the TIMELINE flag
            _point_flags[0] = False

    def _import_through_binary(self, fence: SyncFile, point: int) -> None:
        """A sync_file at a point where the kernel has no FD_TO_HANDLE TIMELINE flag: into a binary
        syncobj, then DRM_IOCTL_SYNCOBJ_TRANSFER to the point (what libdrm users did before it)."""
        with Syncobj(self.device) as binary:
            binary.import_sync_file(fence)
            _transfer(self.device, binary.handle, 0, self.handle, point, "")

    def _export(self, point: int, what) -> SyncFile:
        """HANDLE_TO_FD(EXPORT_SYNC_FILE) of `point` (0: a binary syncobj's fence); `what()` names the
        operation, called only on failure."""
        if point and not _point_flags[0]:
            return self._export_through_binary(point)
        arg = _new(_HANDLE_ARG, (self.handle, _EXPORT | (_AT_POINT if point else 0), -1, 0, point))
        view = ffi.buffer(arg)
        fd = self.device._fd
        try:
            raw_ioctl(fd, _HANDLE_TO_FD, view)
        except OSError as e:
            if not point or e.errno != errno.EINVAL:
                ioctl_failed(e, fd, _HANDLE_TO_FD, view, what())
            # EINVAL: nothing at that point, or a kernel without the HANDLE_TO_FD TIMELINE flag;
            # the transfer tells which (it raises in the first case).
            fence = self._export_through_binary(point)
            _point_flags[0] = False
            return fence
        return SyncFile._wrap(arg.fd)

    def _export_through_binary(self, point: int) -> SyncFile:
        with Syncobj(self.device) as binary:
            _transfer(self.device, self.handle, point, binary.handle, 0, "")
            return binary.export_sync_file()

    def _poll(self, point: int) -> bool:
        raise NotImplementedError

    async def _wait_async(self, point: int, timeout) -> bool:
        """DRM_IOCTL_SYNCOBJ_EVENTFD (Linux 6.6): the kernel bumps an eventfd of ours when `point`
        signals (waiting for it to be submitted first); the loop watches that eventfd."""
        if self._poll(point):
            return True
        if timeout == 0:
            return False
        event = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            arg = _new("struct drm_syncobj_eventfd *")
            arg.handle = self.handle
            arg.point = point
            arg.fd = event
            ioctl(self.device.fileno(), _uapi.DRM_IOCTL_SYNCOBJ_EVENTFD, arg, "DRM_IOCTL_SYNCOBJ_EVENTFD",
                  {errno.ENOTTY: "DRM_IOCTL_SYNCOBJ_EVENTFD needs Linux 6.6 or later"})
            return await poll_fd_async(event, select.POLLIN, timeout)
        finally:
            os.close(event)  # (the kernel keeps its own reference until the point signals or the handle goes)


# Whether this kernel takes DRM_SYNCOBJ_{FD_TO_HANDLE,HANDLE_TO_FD}_FLAGS_TIMELINE (7.2 does, 6.12 not):
# learned at the first refusal; without them a point's sync_file goes through a binary syncobj.
_point_flags = [True]


def _transfer(device: DrmDevice, src: int, src_point: int, dst: int, dst_point: int, fix: str) -> None:
    """DRM_IOCTL_SYNCOBJ_TRANSFER: the fence at `src`'s `src_point` (0: a binary syncobj's) becomes
    `dst`'s `dst_point` (0: `dst`'s fence). EINVAL if nothing was submitted at or beyond `src_point`."""
    arg = _new("struct drm_syncobj_transfer *")
    arg.src_handle = src
    arg.src_point = src_point
    arg.dst_handle = dst
    arg.dst_point = dst_point
    ioctl(device.fileno(), _uapi.DRM_IOCTL_SYNCOBJ_TRANSFER, arg, f"DRM_IOCTL_SYNCOBJ_TRANSFER(point {src_point})",
          {errno.EINVAL: fix})


def _destroy(device: DrmDevice, handle: int) -> None:
    """DRM_IOCTL_SYNCOBJ_DESTROY, unless the DRM file is already closed (which released every handle)."""
    if device.closed:
        return
    arg = _new("struct drm_syncobj_destroy *")
    arg.handle = handle
    ioctl(device.fileno(), _uapi.DRM_IOCTL_SYNCOBJ_DESTROY, arg, f"DRM_IOCTL_SYNCOBJ_DESTROY({handle})")


class Timeline(_Handle):
    """A timeline sync object: fences at rising 64-bit points (DRM_IOCTL_SYNCOBJ_CREATE).

    ``Timeline(device=None)`` creates one on `device` (a
    :class:`~linuxdmabuf.drm.DrmDevice` whose driver has
    ``DRM_CAP_SYNCOBJ_TIMELINE``), or on the first such render node or card,
    which it then opens for itself and closes with it. Points are 1..2**64-1.
    """

    __slots__ = ("_handles", "_point", "_query", "_query_view", "_wait_arg", "_wait_view")
    _timeline = True

    def _made(self) -> None:
        """Build the per-call arguments once: the handle and a point slot that TIMELINE_SIGNAL, QUERY
        and TIMELINE_WAIT point at, each struct with its buffer view for raw_ioctl()."""
        self._handles = _new("uint32_t[1]", [self._handle])
        self._point = _new("uint64_t[1]")
        pointers = {"handles": int(_address("uintptr_t", self._handles)),
                    "points": int(_address("uintptr_t", self._point)), "count_handles": 1}
        self._query = _new("struct drm_syncobj_timeline_array *", pointers)
        self._wait_arg = _new("struct drm_syncobj_timeline_wait *", pointers)
        self._query_view, self._wait_view = ffi.buffer(self._query), ffi.buffer(self._wait_arg)

    def _call(self, request: int, view, point: int, what) -> None:
        """raw_ioctl() on a prebuilt argument; the message (what(): (operation, fixes)) made only on failure."""
        fd = self.device._fd
        if self._handle is None or fd < 0:
            raise ValueError("Timeline is closed" if self._handle is None else
                             "the DRM device of this Timeline is closed")
        self._point[0] = point
        try:
            raw_ioctl(fd, request, view)
        except OSError as e:
            ioctl_failed(e, fd, request, view, *what())

    def signal(self, point: int) -> None:
        """DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL: put an already signaled fence at `point`, which signals
        it and every point below it whose fences have signaled."""
        if type(point) is not int or not 0 < point <= MAX_POINT:
            point = _check_point(point)
        self._query.flags = 0
        self._call(_TIMELINE_SIGNAL, self._query_view, point, lambda: ("DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL",))

    @property
    def value(self) -> int:
        """DRM_IOCTL_SYNCOBJ_QUERY: the last signaled point (every point up to it has signaled); 0 if none."""
        self._query.flags = 0
        self._call(_QUERY, self._query_view, 0, lambda: ("DRM_IOCTL_SYNCOBJ_QUERY",))
        return self._point[0]

    @property
    def last_submitted(self) -> int:
        """DRM_IOCTL_SYNCOBJ_QUERY with LAST_SUBMITTED: the highest point that has a fence, signaled or not."""
        self._query.flags = _uapi.DRM_SYNCOBJ_QUERY_FLAGS_LAST_SUBMITTED
        self._call(_QUERY, self._query_view, 0, lambda: ("DRM_IOCTL_SYNCOBJ_QUERY(LAST_SUBMITTED)",))
        return self._point[0]

    def wait(self, point: int, timeout: float | None = None, *, for_submit: bool = True) -> bool:
        """DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT: True once `point` has signaled, False after `timeout` seconds.

        With for_submit (WAIT_FOR_SUBMIT) a point that has no fence yet is
        waited for until one is put there and signals; without it, that is
        the kernel's EINVAL. The deadline is absolute (CLOCK_MONOTONIC), so a
        wait interrupted by a signal handler resumes with the time left.
        """
        if type(point) is not int or not 0 < point <= MAX_POINT:
            point = _check_point(point)
        return self._wait(point, _INT64_MAX if timeout is None else _deadline(timeout),
                          _WAIT_FOR_SUBMIT if for_submit else 0)

    def _wait(self, point: int, deadline: int, flags: int) -> bool:
        arg = self._wait_arg
        arg.timeout_nsec = deadline
        arg.flags = flags
        try:
            self._call(_TIMELINE_WAIT, self._wait_view, point, lambda: (
                f"DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT(point {point})",
                {errno.EINVAL: f"point {point} has no fence yet (nothing submitted there): wait with "
                               "for_submit=True to wait for one"}))
        except OSError as e:
            if e.errno == errno.ETIME:  # the deadline passed (ETIME, not ETIMEDOUT)
                return False
            raise
        return True

    def _poll(self, point: int) -> bool:
        return self._wait(point, 0, _WAIT_FOR_SUBMIT)

    async def wait_async(self, point: int, timeout: float | None = None) -> bool:
        """:meth:`wait` (with for_submit) from asyncio, with no thread: the kernel signals an
        eventfd (DRM_IOCTL_SYNCOBJ_EVENTFD, Linux 6.6) that the running loop watches. Cancellable."""
        point = _check_point(point)
        return await self._wait_async(point, check_timeout(timeout))

    def import_sync_file(self, fence: SyncFile, point: int) -> None:
        """DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE with IMPORT_SYNC_FILE | TIMELINE: `fence` becomes `point`.

        An unsignaled fence holds `point`, and so every wait for it or beyond,
        until it signals."""
        if type(point) is not int or not 0 < point <= MAX_POINT:
            point = _check_point(point)
        self._import(fence, point, lambda: (f"DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE(IMPORT_SYNC_FILE, point {point})",))

    def export_sync_file(self, point: int) -> SyncFile:
        """DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD with EXPORT_SYNC_FILE | TIMELINE: the fence at `point` as a
        SyncFile (signaled if the point has). EINVAL if nothing was submitted at or beyond `point`."""
        if type(point) is not int or not 0 < point <= MAX_POINT:
            point = _check_point(point)
        try:
            return self._export(point, lambda: (f"DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD(EXPORT_SYNC_FILE, point {point})",))
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            raise os_error(e.errno, f"DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD(EXPORT_SYNC_FILE, point {point})",
                           f"nothing was submitted at point {point} or beyond (last submitted: "
                                          f"{self.last_submitted}): signal() or import_sync_file() it first") from None

    def transfer(self, point: int, to: "Timeline | Syncobj", to_point: int | None = None) -> None:
        """DRM_IOCTL_SYNCOBJ_TRANSFER: the fence at `point` becomes `to`'s `to_point` (`to` a Timeline),
        or `to`'s fence (`to` a binary Syncobj, no to_point). `to` must be on the same DrmDevice
        object: handles are per DRM file. EINVAL if nothing was submitted at `point` or beyond."""
        point = _check_point(point)
        if not isinstance(to, _Handle):
            raise TypeError(f"to must be a Timeline or Syncobj, not {type(to).__name__}")
        if isinstance(to, Timeline):
            if to_point is None:
                raise TypeError("transfer to a Timeline needs to_point")
            to_point = _check_point(to_point, "to_point")
        elif to_point is not None:
            raise ValueError("a binary Syncobj has no points: transfer(point, syncobj) with no to_point")
        if to.device is not self.device:
            raise ValueError("`to` is on another DRM file (handles are per open DRM device): create both on one "
                             "DrmDevice, or move it there with Timeline.fromfd(to.export(), device)")
        _transfer(self.device, self.handle, point, to.handle, to_point or 0,
                  f"nothing was submitted at point {point} or beyond")


class Syncobj(_Handle):
    """A binary sync object: at most one fence (DRM_IOCTL_SYNCOBJ_CREATE).

    ``Syncobj(device=None, *, signaled=False)``: created empty, or holding a
    signaled fence (CREATE_SIGNALED). Needs ``DRM_CAP_SYNCOBJ``.
    """

    __slots__ = ()

    def __init__(self, device: DrmDevice | None = None, *, signaled: bool = False):
        if not isinstance(signaled, bool):
            raise TypeError(f"signaled must be a bool, not {type(signaled).__name__}")
        super().__init__(device, _flags=_uapi.DRM_SYNCOBJ_CREATE_SIGNALED if signaled else 0)

    def signal(self) -> None:
        """DRM_IOCTL_SYNCOBJ_SIGNAL: replace the fence with a signaled one."""
        self._on_handle(_uapi.DRM_IOCTL_SYNCOBJ_SIGNAL, "DRM_IOCTL_SYNCOBJ_SIGNAL")

    def wait(self, timeout: float | None = None, *, for_submit: bool = True) -> bool:
        """DRM_IOCTL_SYNCOBJ_WAIT: True once the fence has signaled, False after `timeout` seconds.
        With for_submit (WAIT_FOR_SUBMIT) an empty syncobj is waited for until a fence is put in;
        without it, that is the kernel's EINVAL."""
        return self._wait(_deadline(timeout), _WAIT_FOR_SUBMIT if for_submit else 0)

    def _wait(self, deadline: int, flags: int) -> bool:
        handles = _new("uint32_t[1]", [self.handle])
        arg = _new("struct drm_syncobj_wait *")
        arg.handles = int(_address("uintptr_t", handles))
        arg.count_handles = 1
        arg.timeout_nsec = deadline
        arg.flags = flags
        try:
            ioctl(self.device.fileno(), _uapi.DRM_IOCTL_SYNCOBJ_WAIT, arg, "DRM_IOCTL_SYNCOBJ_WAIT",
                  {errno.EINVAL: "the syncobj holds no fence: wait with for_submit=True to wait for one"})
        except OSError as e:
            if e.errno == errno.ETIME:
                return False
            raise
        return True

    def _poll(self, point: int) -> bool:
        return self._wait(0, _WAIT_FOR_SUBMIT)

    async def wait_async(self, timeout: float | None = None) -> bool:
        """:meth:`wait` (with for_submit) from asyncio, with no thread (DRM_IOCTL_SYNCOBJ_EVENTFD,
        Linux 6.6). Cancellable."""
        return await self._wait_async(0, check_timeout(timeout))

    def import_sync_file(self, fence: SyncFile) -> None:
        """DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE with IMPORT_SYNC_FILE: `fence` replaces the syncobj's fence."""
        self._import(fence, 0, lambda: ("DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE(IMPORT_SYNC_FILE)",))

    def export_sync_file(self) -> SyncFile:
        """DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD with EXPORT_SYNC_FILE: the fence as a SyncFile. EINVAL if empty."""
        what = "DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD(EXPORT_SYNC_FILE)"
        try:
            return self._export(0, lambda: (what,))
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            raise os_error(e.errno, what, "the syncobj holds no fence: signal() or import_sync_file() first") from None
