"""DRM PRIME: moving dma-bufs in and out of a real DRM driver, and vgem's fences.

Just enough of DRM to prove a buffer crosses into a device driver and back --
not a DRM binding. :class:`DrmDevice` opens a DRM node, makes dumb buffers
(driver-independent GEM objects), and converts between GEM handles and
dma-bufs with PRIME (drivers/gpu/drm/drm_prime.c). :class:`Vgem` adds vgem's
fence ioctls (drivers/gpu/drm/vgem/vgem_fence.c), which attach real,
driver-owned, unsignaled implicit fences to any buffer vgem has a handle for.

GEM handles are per open DRM file, not fds: :class:`GemObject` owns one and
releases it with DRM_IOCTL_GEM_CLOSE (closing the DRM file releases them all).
Like fd numbers, handle numbers are reused (lowest free first), so there is
only ever one open GemObject per handle, and a closed one never touches its
old number.
"""
import errno
import glob
import mmap
import os
import re
import stat
import warnings
import weakref
from dataclasses import dataclass

from . import _uapi
from ._fd import FdObject, UnclosedWarning
from ._sys import UnsupportedError, check_int, fd_target, ioctl, os_error
from ._uapi import ffi
from .dmabuf import DmaBuf

__all__ = ["DrmDevice", "DrmVersion", "GemObject", "DumbBuffer", "Vgem", "DRM_MAJOR"]

DRM_MAJOR = 226  # every /dev/dri node's char major: "Direct Rendering Infrastructure (DRI)", admin-guide/devices.txt
DRM_CLOEXEC = os.O_CLOEXEC  # include/uapi/drm/drm.h defines them as these open flags
DRM_RDWR = os.O_RDWR
DENIED = "DRM nodes are usually group video (card) or render (renderD): add yourself to the group, or run as root"
VGEM_FENCE_TIMEOUT = 10.0  # seconds; drivers/gpu/drm/vgem/vgem_fence.c signals unsignaled fences then


@dataclass(frozen=True)
class DrmVersion:
    """DRM_IOCTL_VERSION: the driver's version and names ("vgem", "Virtual GEM provider")."""

    major: int
    minor: int
    patchlevel: int
    name: str
    date: str
    desc: str


def _query_version(fd: int) -> DrmVersion:
    """DRM_IOCTL_VERSION, twice: once for the string lengths, once to fill them."""
    arg = ffi.new("struct drm_version *")
    ioctl(fd, _uapi.DRM_IOCTL_VERSION, arg, "DRM_IOCTL_VERSION")
    strings = {field: ffi.new("char[]", getattr(arg, f"{field}_len") + 1) for field in ("name", "date", "desc")}
    for field, buf in strings.items():
        setattr(arg, field, buf)
    ioctl(fd, _uapi.DRM_IOCTL_VERSION, arg, "DRM_IOCTL_VERSION")
    text = {field: ffi.string(buf).decode(errors="replace") for field, buf in strings.items()}
    return DrmVersion(arg.version_major, arg.version_minor, arg.version_patchlevel, **text)


def _check_uint32(value, what: str) -> int:
    value = check_int(value, what)
    if not 0 < value < 2**32:
        raise ValueError(f"{what} must be within 1..2**32-1, not {value}")
    return value


def _node_number(path: str) -> int:
    return int(re.sub(r"\D", "", os.path.basename(path)) or 0)


class DrmDevice(FdObject):
    """An open DRM node (/dev/dri/cardN or renderDN).

    ``DrmDevice(path)`` opens it O_RDWR|O_CLOEXEC; ``DrmDevice(fd)`` adopts an
    open DRM fd; ``DrmDevice.find("vgem")`` opens the primary node of the
    first device whose driver has that name. Dumb buffers need the primary
    (card) node: the kernel refuses them on a render node with EACCES.
    """

    __slots__ = ("_path", "_version", "_handles")
    _path: str
    _version: DrmVersion | None
    _handles: "weakref.WeakValueDictionary[int, GemObject]"
    _attaches = True

    def __init__(self, path):
        if isinstance(path, int) and not isinstance(path, bool):
            super().__init__(path)
            return
        self._fd = -1
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"expected a DRM node path or an fd to adopt, not {type(path).__name__}")
        self._open(os.fspath(path), os.O_RDWR, denied=DENIED, validate=True)

    def _attach(self, fd: int) -> None:
        self._path = fd_target(fd)
        self._version = None
        self._handles = weakref.WeakValueDictionary()  # handle -> the one open GemObject owning it

    def _validate(self, fd: int) -> None:
        st = os.fstat(fd)
        if not stat.S_ISCHR(st.st_mode) or os.major(st.st_rdev) != DRM_MAJOR:
            raise ValueError(f"fd {fd} is not a DRM device (it is {fd_target(fd)!r})")

    def _repr_fields(self) -> str:
        return f" path={self._path!r} driver={self.driver!r}"

    @classmethod
    def find(cls, driver: str, *, render: bool = False):
        """The first /dev/dri/cardN (renderDN with render=True) whose driver is `driver`.

        Each node is opened and asked DRM_IOCTL_VERSION; the card numbers
        follow probe order, so never assume one. UnsupportedError (ENODEV)
        if no node has that driver, naming the drivers found;
        PermissionError if some nodes could not be opened to ask.
        """
        if not isinstance(driver, str):
            raise TypeError(f"driver must be a str, not {type(driver).__name__}")
        pattern = "/dev/dri/renderD*" if render else "/dev/dri/card*"
        seen, denied = [], []
        for path in sorted(glob.glob(pattern), key=_node_number):
            try:
                device = DrmDevice(path)
            except PermissionError:
                denied.append(path)
                continue
            with device:
                name = device.driver
                if name == driver:
                    return cls._wrap(device.detach())
            seen.append(f"{path} ({name})")
        if denied:
            raise os_error(errno.EACCES, f"looking for a {driver} DRM device",
                           f"could not open {', '.join(denied)}: DRM nodes are usually group video (card) or "
                           "render (renderD); add yourself to the group, or run as root")
        fix = "load it (CONFIG_DRM_VGEM; `modprobe vgem`)" if driver == "vgem" else f"load the {driver} driver"
        raise UnsupportedError(errno.ENODEV, f"no DRM device of driver {driver!r}: "
                                             f"{', '.join(seen) or f'no {pattern}'} -- {fix}")

    @property
    def path(self) -> str:
        return self._path

    # -- identity ------------------------------------------------------------

    def version(self) -> DrmVersion:
        """DRM_IOCTL_VERSION: the driver's version, name, date and description."""
        return _query_version(self.fileno())

    @property
    def driver(self) -> str:
        """The driver's name from DRM_IOCTL_VERSION ("vgem", "vkms", "i915"...)."""
        if self._version is None:
            self._version = self.version()
        return self._version.name

    def get_cap(self, capability: int) -> int:
        """DRM_IOCTL_GET_CAP. Drivers without modesetting (vgem) answer only a few
        capabilities (e.g. DRM_CAP_PRIME) and EOPNOTSUPP to the rest, even to
        DRM_CAP_DUMB_BUFFER while they do make dumb buffers."""
        arg = ffi.new("struct drm_get_cap *")
        arg.capability = capability
        ioctl(self.fileno(), _uapi.DRM_IOCTL_GET_CAP, arg, f"DRM_IOCTL_GET_CAP({capability})")
        return arg.value

    # -- GEM objects and PRIME -------------------------------------------------

    def create_dumb(self, width: int, height: int, bpp: int = 32) -> "DumbBuffer":
        """DRM_IOCTL_MODE_CREATE_DUMB: a driver-independent buffer of width x height pixels.

        The driver picks the pitch (bytes per row; 4 * width for bpp 32 on
        vgem) and the size (pitch * height rounded up to pages). Primary
        node only: a render node gives EACCES.
        """
        arg = ffi.new("struct drm_mode_create_dumb *")
        arg.width = _check_uint32(width, "width")
        arg.height = _check_uint32(height, "height")
        arg.bpp = _check_uint32(bpp, "bpp")
        ioctl(self.fileno(), _uapi.DRM_IOCTL_MODE_CREATE_DUMB, arg,
              f"DRM_IOCTL_MODE_CREATE_DUMB {width}x{height}@{bpp}bpp on {self._path}", {
                  errno.EACCES: "dumb buffers need the primary node /dev/dri/cardN, not a render node",
                  errno.ENOSYS: f"the {self.driver} driver makes no dumb buffers",
                  errno.EINVAL: "the driver refuses that size (too large for 32 bits, or an unsupported bpp)"})
        return DumbBuffer._make(self, arg.handle, width=width, height=height, bpp=bpp, pitch=arg.pitch,
                                size=arg.size)

    def map_dumb(self, dumb: "DumbBuffer", *, writable: bool = True) -> mmap.mmap:
        """A shared mapping of a dumb buffer through the DRM fd (DRM_IOCTL_MODE_MAP_DUMB gives
        the fake offset to mmap at). The same pages as its PRIME export."""
        if not isinstance(dumb, DumbBuffer):
            raise TypeError(f"expected a DumbBuffer, not {type(dumb).__name__}")
        arg = ffi.new("struct drm_mode_map_dumb *")
        arg.handle = self._handle_of(dumb)
        ioctl(self.fileno(), _uapi.DRM_IOCTL_MODE_MAP_DUMB, arg, "DRM_IOCTL_MODE_MAP_DUMB",
              {errno.ENOENT: f"no GEM handle {arg.handle} on this DRM file"})
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        return mmap.mmap(self.fileno(), dumb.size, mmap.MAP_SHARED, prot, offset=arg.offset)

    def prime_export(self, obj: "GemObject", *, writable: bool = True) -> DmaBuf:
        """DRM_IOCTL_PRIME_HANDLE_TO_FD: the GEM object as a DmaBuf (O_CLOEXEC).

        The kernel makes one dma-buf per GEM object and returns new fds on it
        after that; its access mode is fixed by the *first* export:
        writable=True passes DRM_RDWR so that writable mappings work, without
        it the dma-buf is O_RDONLY for good. Exporting an object imported
        from a dma-buf gives that original dma-buf back (same inode).
        """
        arg = ffi.new("struct drm_prime_handle *")
        arg.handle = self._handle_of(obj)
        arg.flags = DRM_CLOEXEC | (DRM_RDWR if writable else 0)
        ioctl(self.fileno(), _uapi.DRM_IOCTL_PRIME_HANDLE_TO_FD, arg, "DRM_IOCTL_PRIME_HANDLE_TO_FD",
              {errno.ENOENT: f"no GEM handle {arg.handle} on this DRM file",
               errno.EOPNOTSUPP: f"the {self.driver} driver cannot export dma-bufs"})
        return DmaBuf._wrap(arg.fd)

    def prime_import(self, buf: DmaBuf) -> "GemObject":
        """DRM_IOCTL_PRIME_FD_TO_HANDLE: a GEM handle on this device for a dma-buf.

        The driver takes references on the dma-buf (its fdinfo count grows
        until the handle is closed) and attaches to it. Importing a
        dma-buf this DRM file already has a handle for (twice, or one it
        exported) gives that same handle, and the kernel does not count
        handles: one GEM_CLOSE releases it. So this returns the GemObject
        already open for that handle, if there is one; its close() is the one
        that releases it.
        """
        if not isinstance(buf, DmaBuf):
            raise TypeError(f"expected a DmaBuf, not {type(buf).__name__}")
        arg = ffi.new("struct drm_prime_handle *")
        arg.fd = buf.fileno()
        ioctl(self.fileno(), _uapi.DRM_IOCTL_PRIME_FD_TO_HANDLE, arg, "DRM_IOCTL_PRIME_FD_TO_HANDLE",
              {errno.EOPNOTSUPP: f"the {self.driver} driver cannot import dma-bufs",
               errno.ENODEV: f"the {self.driver} driver cannot import a dma-buf of another exporter (virtio_gpu "
                             "without blob resources imports only its own)"})
        existing = self._handles.get(arg.handle)
        if existing is not None and not existing.closed:
            return existing
        return GemObject._make(self, arg.handle)

    def _handle_of(self, obj) -> int:
        if not isinstance(obj, GemObject):
            raise TypeError(f"expected a GemObject (from create_dumb() or prime_import()), not {type(obj).__name__}")
        if obj.device is not self:
            raise ValueError("that GEM handle belongs to another DRM file")
        return obj.handle


def _gem_close(device: DrmDevice, handle: int) -> None:
    """DRM_IOCTL_GEM_CLOSE, unless the DRM file is already closed (which released every handle)."""
    if device.closed:
        return
    arg = ffi.new("struct drm_gem_close *")
    arg.handle = handle
    ioctl(device.fileno(), _uapi.DRM_IOCTL_GEM_CLOSE, arg, f"DRM_IOCTL_GEM_CLOSE({handle})",
          {errno.EINVAL: f"no GEM handle {handle} on this DRM file (already closed?)"})


class GemObject:
    """A GEM handle on one DRM file, released with close() (DRM_IOCTL_GEM_CLOSE).

    ``with`` closes it; an object collected while open closes its handle
    with an UnclosedWarning (a ResourceWarning), from ``__del__`` as fd
    objects do. After the DRM file is closed the kernel has released the
    handle already and close() does nothing.
    """

    __slots__ = ("device", "_handle", "__weakref__")
    device: DrmDevice
    _handle: int | None

    @classmethod
    def _make(cls, device: DrmDevice, handle: int, **fields):
        self = cls.__new__(cls)
        self.device = device
        self._handle = handle
        for name, value in fields.items():
            setattr(self, name, value)
        device._handles[handle] = self
        return self

    def __del__(self, _warn=warnings.warn):
        try:
            handle = self._handle
        except AttributeError:  # never made
            return
        if handle is not None and not self.device.closed:  # (closing the DRM file released every handle)
            self._handle = None
            try:
                _warn(f"unclosed GEM handle {handle} on {self.device.path}", UnclosedWarning, source=self)
            finally:
                try:
                    _gem_close(self.device, handle)
                except OSError:
                    pass

    @property
    def handle(self) -> int:
        """The handle number; ValueError once closed."""
        if self._handle is None:
            raise ValueError(f"{type(self).__name__} is closed")
        return self._handle

    @property
    def closed(self) -> bool:
        return self._handle is None

    def close(self) -> None:
        """DRM_IOCTL_GEM_CLOSE. Idempotent."""
        handle = self._handle
        if handle is None:
            return
        self._handle = None
        if self.device._handles.get(handle) is self:
            del self.device._handles[handle]
        _gem_close(self.device, handle)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._handle is None else f"handle={self._handle}"
        return f"<linuxdmabuf.drm.{type(self).__name__} {state} on {self.device.path}>"


class DumbBuffer(GemObject):
    """A dumb buffer: `width` x `height` pixels of `bpp` bits, rows `pitch` bytes apart, `size` bytes."""

    __slots__ = ("width", "height", "bpp", "pitch", "size")
    width: int
    height: int
    bpp: int
    pitch: int
    size: int


class Vgem(DrmDevice):
    """vgem, the virtual GEM driver: a real dma-buf importer/exporter with fences.

    ``Vgem()`` finds and opens vgem's primary node (CONFIG_DRM_VGEM, a module
    on most distributions: ``modprobe vgem``). fence_attach() puts a vgem
    fence on a buffer's reservation object; for a dma-buf imported with
    prime_import() that is the dma-buf's own, so DmaBuf.wait(), poll(),
    export_sync_file() and SYNC START all see it. vgem signals every fence
    VGEM_FENCE_TIMEOUT (10 s) after attaching it, and when the DRM file closes.
    """

    __slots__ = ()

    def __init__(self, path=None):
        """Find vgem's card node (path=None), open the node at `path`, or adopt an fd."""
        if path is not None:
            super().__init__(path)
            return
        self._fd = -1
        self._own(DrmDevice.find("vgem").detach())

    def _validate(self, fd: int) -> None:
        super()._validate(fd)
        name = _query_version(fd).name
        if name != "vgem":
            raise ValueError(f"fd {fd} ({fd_target(fd)}) is a {name} device, not vgem")

    def fence_attach(self, obj: GemObject, *, write: bool = False) -> int:
        """DRM_IOCTL_VGEM_FENCE_ATTACH: a new unsignaled fence on the object; returns its id.

        write=True adds it as a write fence (readers and writers wait),
        otherwise as a read fence (only writers wait). The kernel refuses
        (EBUSY) a read fence while an unsignaled write fence is there, and a
        write fence while any unsignaled fence is. The id (from 1, per DRM
        file) is for fence_signal().
        """
        arg = ffi.new("struct drm_vgem_fence_attach *")
        arg.handle = self._handle_of(obj)
        arg.flags = _uapi.VGEM_FENCE_WRITE if write else 0
        ioctl(self.fileno(), _uapi.DRM_IOCTL_VGEM_FENCE_ATTACH, arg, "DRM_IOCTL_VGEM_FENCE_ATTACH",
              {errno.EBUSY: "the buffer has an unsignaled conflicting fence (a write fence, or for a write "
                            "attach any fence): signal it first",
               errno.ENOENT: f"no GEM handle {arg.handle} on this DRM file"})
        return arg.out_fence

    def fence_signal(self, fence: int) -> None:
        """DRM_IOCTL_VGEM_FENCE_SIGNAL: signal the fence `fence_attach()` returned.

        Each id is consumed by its first signal: ENOENT for an id signaled
        before (or never attached on this DRM file); ETIMEDOUT if vgem had
        already signaled it on its 10 s timeout.
        """
        arg = ffi.new("struct drm_vgem_fence_signal *")
        arg.fence = _check_uint32(fence, "fence id")
        ioctl(self.fileno(), _uapi.DRM_IOCTL_VGEM_FENCE_SIGNAL, arg, f"DRM_IOCTL_VGEM_FENCE_SIGNAL({fence})",
              {errno.ENOENT: f"no fence {fence} to signal on this DRM file: already signaled, or never attached here",
               errno.ETIMEDOUT: f"vgem had already signaled fence {fence} after its {VGEM_FENCE_TIMEOUT:.0f} s timeout"})
