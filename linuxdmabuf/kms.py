"""KMS: show a dma-buf on a display with explicit fences, and read the shown pixels back.

Just enough kernel modesetting (drivers/gpu/drm/drm_atomic_uapi.c) to put a
:class:`~linuxdmabuf.DmaBuf` full-screen on a CRTC's primary plane and capture
what the CRTC composes through a writeback connector -- not a KMS binding.
:class:`Display` is a DRM card (a :class:`~linuxdmabuf.drm.DrmDevice`) with a
connected connector, opened as DRM master with the universal-planes, atomic
and writeback client capabilities. Every change is one non-blocking atomic
commit: :meth:`Display.show` passes an in-fence (``IN_FENCE_FD``: the display
waits for the producer) and returns the CRTC's out-fence (``OUT_FENCE_PTR``:
the frame is on screen); :meth:`Display.capture` returns the writeback
connector's (``WRITEBACK_OUT_FENCE_PTR``: the frame is in memory).

Formats are DRM fourcc codes as 4-character strings: "XR24" is
DRM_FORMAT_XRGB8888 (B, G, R, X in memory), "AR24" ARGB8888, "RG16" RGB565.
vkms, the kernel's virtual display, has all of it (a writeback connector with
``vkms.enable_writeback=1``, its default).
"""
import contextlib
import errno
import glob
from collections import namedtuple
from typing import NamedTuple

from . import _uapi
from ._sys import UnsupportedError, check_int, fd_target, ioctl, ioctl_failed, os_error, raw_ioctl
from ._uapi import ffi, fourcc_code, fourcc_name
from .dmabuf import DmaBuf
from .drm import DENIED, DrmDevice, GemObject, _node_number
from .syncfile import SyncFile

__all__ = ["Display", "Framebuffer", "Mode", "fourcc_code", "fourcc_name", "BYTES_PER_PIXEL"]

# DRM fourcc -> bytes per pixel, for the formats a caller gives a pitch for by default (single plane)
BYTES_PER_PIXEL = {"XR24": 4, "AR24": 4, "XB24": 4, "AB24": 4, "RX24": 4, "RA24": 4, "BX24": 4, "BA24": 4,
                   "XR30": 4, "AR30": 4, "RG16": 2, "BG16": 2, "RG24": 3, "BG24": 3, "XR48": 8, "AR48": 8,
                   "XB48": 8, "AB48": 8, "C8  ": 1, "R8  ": 1}
_NONBLOCK = _uapi.DRM_MODE_ATOMIC_NONBLOCK
_MODESET = _uapi.DRM_MODE_ATOMIC_ALLOW_MODESET
_ATOMIC = _uapi.DRM_IOCTL_MODE_ATOMIC
_object = object.__new__
_CONNECTED = 1  # enum drm_connector_status


class Mode(NamedTuple):
    """A display mode: the connector's preferred one (width and height in pixels, refresh in Hz)."""

    width: int
    height: int
    refresh: int


_Objects = namedtuple("_Objects", "crtc connector primary cursor writeback")


def _array(ctype: str, count: int):
    """A C array of `count` items (at least one) and its address as the __u64 the uAPI takes."""
    array = ffi.new(f"{ctype}[]", max(count, 1))
    return array, int(ffi.cast("uintptr_t", array))


class _Atomic:
    """One DRM_IOCTL_MODE_ATOMIC argument, built once and committed as often as wanted: the (object id,
    property id, value) triples grouped per object, the out-fence pointer aimed at an int32 of its own, and
    the slot of an IN_FENCE_FD value, if any, filled per commit."""

    __slots__ = ("arg", "out", "values", "in_slot", "what", "_keep")

    def __init__(self, props: list, out: tuple, flags: int, what: str, in_fence: tuple | None = None):
        self.out = ffi.new("int32_t *", -1)
        props = [*props, (*out, int(ffi.cast("uintptr_t", self.out)))]
        if in_fence is not None:
            props.append((*in_fence, -1))
        objs: dict = {}
        for obj, prop, value in props:
            objs.setdefault(obj, []).append((prop, value))
        ids, ids_ptr = _array("__u32", len(objs))
        counts, counts_ptr = _array("__u32", len(objs))
        flat = [(obj, prop, value) for obj, pvs in objs.items() for prop, value in pvs]
        prop_ids, prop_ptr = _array("__u32", len(flat))
        self.values, values_ptr = _array("__u64", len(flat))
        for i, (obj, pvs) in enumerate(objs.items()):
            ids[i], counts[i] = obj, len(pvs)
        for i, (_, prop, value) in enumerate(flat):
            prop_ids[i], self.values[i] = prop, value & 0xFFFFFFFFFFFFFFFF
        self.in_slot = None if in_fence is None else flat.index((*in_fence, -1))
        self.arg = ffi.buffer(ffi.new("struct drm_mode_atomic *", {  # the buffer keeps its struct alive
            "flags": flags, "count_objs": len(objs), "objs_ptr": ids_ptr, "count_props_ptr": counts_ptr,
            "props_ptr": prop_ptr, "prop_values_ptr": values_ptr}))
        self.what = what
        self._keep = (ids, counts, prop_ids)

    def commit(self, fd: int, in_fence_fd: int = -1) -> SyncFile:
        """Commits; the out-fence the kernel made (O_CLOEXEC), owned at once."""
        self.out[0] = -1
        if self.in_slot is not None:
            self.values[self.in_slot] = in_fence_fd
        try:
            raw_ioctl(fd, _ATOMIC, self.arg)
        except OSError as e:
            ioctl_failed(e, fd, _ATOMIC, self.arg, self.what, _COMMIT_FIXES)
        fence = _object(SyncFile)  # SyncFile._wrap() inline: saves 11% of a show() commit's instructions
        fence._fd = self.out[0]
        return fence


def _is_kms(fd: int) -> bool:
    """DRM_IOCTL_MODE_GETRESOURCES works: the driver does modesetting (vgem answers EOPNOTSUPP)."""
    try:
        raw_ioctl(fd, _uapi.DRM_IOCTL_MODE_GETRESOURCES, ffi.buffer(ffi.new("struct drm_mode_card_res *")))
    except OSError:
        return False
    return True


class Framebuffer:
    """A KMS framebuffer (DRM_IOCTL_MODE_ADDFB2) on an imported dma-buf; close() removes it (RMFB).

    Holds the GEM handle of the import until then. ``with`` closes it; its
    `buffer` is the caller's DmaBuf (the framebuffer keeps the memory alive
    in the kernel as long as it exists).
    """

    __slots__ = ("display", "fb_id", "buffer", "width", "height", "fourcc", "pitch", "offset", "_gem")

    def __init__(self, display: "Display", fb_id: int, gem: GemObject, buffer: DmaBuf, width: int, height: int,
                 fourcc: str, pitch: int, offset: int):
        self.display, self.fb_id, self._gem, self.buffer = display, fb_id, gem, buffer
        self.width, self.height, self.fourcc, self.pitch, self.offset = width, height, fourcc, pitch, offset

    @property
    def closed(self) -> bool:
        return self.fb_id == 0

    def close(self) -> None:
        """DRM_IOCTL_MODE_RMFB and the GEM handle's release. Idempotent; nothing to do once the display is closed."""
        fb_id, self.fb_id = self.fb_id, 0
        if fb_id and not self.display.closed:
            self.display._forget(fb_id)  # the kernel may give the id to the next framebuffer
            try:
                ioctl(self.display.fileno(), _uapi.DRM_IOCTL_MODE_RMFB, ffi.new("unsigned int *", fb_id),
                      f"DRM_IOCTL_MODE_RMFB({fb_id})")
            finally:
                self._gem.close()

    def __enter__(self) -> "Framebuffer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if not self.fb_id else f"fb {self.fb_id}"
        return f"<linuxdmabuf.kms.Framebuffer {state} {self.width}x{self.height} {self.fourcc} pitch {self.pitch}>"


class Display(DrmDevice):
    """A KMS display: a DRM card with a connected connector, as DRM master (see the module's docstring).

    ``Display(path)`` opens a card node; ``Display(fd)`` adopts one;
    ``Display.find(driver="vkms")`` opens the first card of that driver that
    does modesetting and has a connected connector. A second opener of a
    card whose master is another open file gets OSError(EBUSY) from
    DRM_IOCTL_SET_MASTER, saying so.
    """

    __slots__ = ("_objects", "_props", "_mode", "_modeinfo", "_formats", "_lit", "_attached", "_commits")

    def _validate(self, fd: int) -> None:
        super()._validate(fd)
        if not _is_kms(fd):
            raise ValueError(f"fd {fd} ({fd_target(fd)}) is a DRM device without modesetting (e.g. vgem), "
                             "not a display")

    def _attach(self, fd: int) -> None:
        super()._attach(fd)
        for cap in (_uapi.DRM_CLIENT_CAP_UNIVERSAL_PLANES, _uapi.DRM_CLIENT_CAP_ATOMIC):
            ioctl(fd, _uapi.DRM_IOCTL_SET_CLIENT_CAP, ffi.new("struct drm_set_client_cap *", (cap, 1)),
                  "DRM_IOCTL_SET_CLIENT_CAP", {errno.EOPNOTSUPP: f"the {self.driver} driver has no atomic modesetting"})
        # writeback connectors are listed only to clients that ask; a card may have none
        with contextlib.suppress(OSError):
            raw_ioctl(fd, _uapi.DRM_IOCTL_SET_CLIENT_CAP,
                      ffi.buffer(ffi.new("struct drm_set_client_cap *", (_uapi.DRM_CLIENT_CAP_WRITEBACK_CONNECTORS, 1))))
        ioctl(fd, _uapi.DRM_IOCTL_SET_MASTER, None, f"DRM_IOCTL_SET_MASTER on {self._path}",
              {errno.EBUSY: "another open file of this card is DRM master (a compositor, or another Display): "
                            "close it first",
               errno.EACCES: "becoming DRM master needs root (CAP_SYS_ADMIN) or the first open of the card"})
        self._props: dict = {}  # object id -> {property name: property id}
        self._objects = self._discover(fd)
        self._mode, self._modeinfo = self._preferred_mode(fd)
        self._formats: dict = {}
        self._lit = False  # our CRTC state (mode, connector) committed once
        self._attached = False  # the writeback connector attached to the CRTC
        self._commits: dict = {}  # fb_id (show), -fb_id (capture), (kind, fb ids, ...) -> _Atomic: built once

    _attaches = True

    @classmethod
    def find(cls, driver: str | None = None, *, render: bool = False) -> "Display":  # (a card: render is unused)
        """The first card (in node order) whose driver is `driver` (any, if None) that does modesetting and
        has a connected connector. FileNotFoundError naming the cards there are when none matches."""
        if driver is not None and not isinstance(driver, str):
            raise TypeError(f"driver must be a str or None, not {type(driver).__name__}")
        seen, denied = [], []
        for path in sorted(glob.glob("/dev/dri/card*"), key=_node_number):
            try:
                device = DrmDevice(path)
            except PermissionError:
                denied.append(path)
                continue
            with device:
                kms = _is_kms(device.fileno())
                if (driver is None or device.driver == driver) and kms and _connected(device.fileno()):
                    return cls._wrap(device.detach())
                seen.append(f"{path} ({device.driver}{'' if kms else ', no modesetting'})")
        what = f"KMS display{f' of driver {driver!r}' if driver else ''} with a connected connector"
        fix = (f"the cards here are: {', '.join(seen)}" if seen else "no /dev/dri/card* here (vkms: CONFIG_DRM_VKMS, "
               "`modprobe vkms`)") + (f"; could not open {', '.join(denied)}: {DENIED}" if denied else "")
        raise os_error(errno.ENOENT, f"no {what}", fix)

    # -- what the display is -------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        """The connector's preferred mode: what show() sets and capture() writes."""
        self.fileno()
        return self._mode

    def formats(self, plane: str = "primary") -> list:
        """The fourccs a plane ("primary", "cursor") takes, or ("writeback") the writeback connector writes."""
        fd = self.fileno()
        if plane not in self._formats:
            self._formats[plane] = self._plane_formats(fd, plane)
        return self._formats[plane]

    def _discover(self, fd: int) -> _Objects:
        res = ffi.new("struct drm_mode_card_res *")
        ioctl(fd, _uapi.DRM_IOCTL_MODE_GETRESOURCES, res, "DRM_IOCTL_MODE_GETRESOURCES")
        crtcs, res.crtc_id_ptr = _array("__u32", res.count_crtcs)
        connectors, res.connector_id_ptr = _array("__u32", res.count_connectors)
        res.count_fbs = res.count_encoders = 0
        ioctl(fd, _uapi.DRM_IOCTL_MODE_GETRESOURCES, res, "DRM_IOCTL_MODE_GETRESOURCES")
        crtc = crtcs[0]
        connector = writeback = 0
        for connector_id in connectors[0:res.count_connectors]:
            conn = _connector(fd, connector_id)
            if conn.connector_type == _uapi.DRM_MODE_CONNECTOR_WRITEBACK:
                writeback = writeback or connector_id
            elif conn.connection == _CONNECTED and not connector:
                connector = connector_id
        if not connector:
            raise ValueError(f"{self._path} ({self.driver}) has no connected connector")
        planes = ffi.new("struct drm_mode_get_plane_res *")
        ioctl(fd, _uapi.DRM_IOCTL_MODE_GETPLANERESOURCES, planes, "DRM_IOCTL_MODE_GETPLANERESOURCES")
        ids, planes.plane_id_ptr = _array("__u32", planes.count_planes)
        ioctl(fd, _uapi.DRM_IOCTL_MODE_GETPLANERESOURCES, planes, "DRM_IOCTL_MODE_GETPLANERESOURCES")
        kinds: dict = {}  # plane type (DRM_PLANE_TYPE_*: 0 overlay, 1 primary, 2 cursor) -> first such plane of the CRTC
        for plane_id in ids[0:planes.count_planes]:
            kinds.setdefault(self._property_values(fd, plane_id, _uapi.DRM_MODE_OBJECT_PLANE).get("type"), plane_id)
        if 1 not in kinds:
            raise ValueError(f"{self._path} ({self.driver}) has no primary plane")
        return _Objects(crtc, connector, kinds[1], kinds.get(2, 0), writeback)

    def _preferred_mode(self, fd: int) -> tuple:
        conn = ffi.new("struct drm_mode_get_connector *", {"connector_id": self._objects.connector})
        ioctl(fd, _uapi.DRM_IOCTL_MODE_GETCONNECTOR, conn, "DRM_IOCTL_MODE_GETCONNECTOR")  # counts (and probes)
        modes, conn.modes_ptr = _array("struct drm_mode_modeinfo", conn.count_modes)
        conn.count_props = conn.count_encoders = 0
        ioctl(fd, _uapi.DRM_IOCTL_MODE_GETCONNECTOR, conn, "DRM_IOCTL_MODE_GETCONNECTOR")
        if not conn.count_modes:
            raise ValueError(f"{self._path}: the connected connector offers no mode")
        listed = list(modes[0:conn.count_modes])
        best = next((m for m in listed if m.type & _uapi.DRM_MODE_TYPE_PREFERRED), listed[0])
        info = ffi.new("struct drm_mode_modeinfo *", best)
        return Mode(best.hdisplay, best.vdisplay, best.vrefresh), info

    def _property_values(self, fd: int, obj_id: int, obj_type: int) -> dict:
        """DRM_IOCTL_MODE_OBJ_GETPROPERTIES: name -> current value; the names' ids are cached."""
        arg = ffi.new("struct drm_mode_obj_get_properties *", {"obj_id": obj_id, "obj_type": obj_type})
        ioctl(fd, _uapi.DRM_IOCTL_MODE_OBJ_GETPROPERTIES, arg, "DRM_IOCTL_MODE_OBJ_GETPROPERTIES")
        ids, arg.props_ptr = _array("__u32", arg.count_props)
        values, arg.prop_values_ptr = _array("__u64", arg.count_props)
        ioctl(fd, _uapi.DRM_IOCTL_MODE_OBJ_GETPROPERTIES, arg, "DRM_IOCTL_MODE_OBJ_GETPROPERTIES")
        names = self._props.setdefault(obj_id, {})
        found = {}
        for prop_id, value in zip(ids[0:arg.count_props], values[0:arg.count_props]):
            prop = ffi.new("struct drm_mode_get_property *", {"prop_id": prop_id})
            ioctl(fd, _uapi.DRM_IOCTL_MODE_GETPROPERTY, prop, "DRM_IOCTL_MODE_GETPROPERTY")
            name = ffi.string(prop.name).decode()
            names[name] = prop_id
            found[name] = value
        return found

    def _prop(self, obj_id: int, obj_type: int, name: str) -> int:
        """The id of property `name` of a KMS object (looked up once per object, then cached)."""
        if obj_id not in self._props:
            self._property_values(self.fileno(), obj_id, obj_type)
        try:
            return self._props[obj_id][name]
        except KeyError:
            raise UnsupportedError(errno.EINVAL, f"{self._path} ({self.driver}): object {obj_id} has no property "
                                                 f"{name!r}") from None

    def _plane_formats(self, fd: int, plane: str) -> list:
        if plane == "writeback":
            if not self._objects.writeback:
                raise UnsupportedError(errno.ENODEV, f"{self._path} ({self.driver}) has no writeback connector")
            values = self._property_values(fd, self._objects.writeback, _uapi.DRM_MODE_OBJECT_CONNECTOR)
            blob = ffi.new("struct drm_mode_get_blob *", {"blob_id": values["WRITEBACK_PIXEL_FORMATS"]})
            ioctl(fd, _uapi.DRM_IOCTL_MODE_GETPROPBLOB, blob, "DRM_IOCTL_MODE_GETPROPBLOB")
            codes, blob.data = _array("__u32", blob.length // 4)
            ioctl(fd, _uapi.DRM_IOCTL_MODE_GETPROPBLOB, blob, "DRM_IOCTL_MODE_GETPROPBLOB")
            return [fourcc_name(c) for c in codes[0:blob.length // 4]]
        plane_id = {"primary": self._objects.primary, "cursor": self._objects.cursor}.get(plane)
        if not plane_id:
            raise ValueError(f"plane must be 'primary', 'cursor' (where there is one) or 'writeback', not {plane!r}")
        arg = ffi.new("struct drm_mode_get_plane *", {"plane_id": plane_id})
        ioctl(fd, _uapi.DRM_IOCTL_MODE_GETPLANE, arg, "DRM_IOCTL_MODE_GETPLANE")
        codes, arg.format_type_ptr = _array("__u32", arg.count_format_types)
        ioctl(fd, _uapi.DRM_IOCTL_MODE_GETPLANE, arg, "DRM_IOCTL_MODE_GETPLANE")
        return [fourcc_name(c) for c in codes[0:arg.count_format_types]]

    # -- framebuffers ----------------------------------------------------------------------------

    def framebuffer(self, buf: DmaBuf, width: int, height: int, fourcc: str = "XR24", *, pitch: int | None = None,
                    offset: int = 0, modifier: int | None = None) -> Framebuffer:
        """DRM_IOCTL_PRIME_FD_TO_HANDLE + DRM_IOCTL_MODE_ADDFB2: a framebuffer of `buf`'s pixels.

        `pitch` (bytes per row) defaults to the format's bytes per pixel times
        `width`; `modifier` (a DRM_FORMAT_MOD_* value) is passed with
        DRM_MODE_FB_MODIFIERS where given. A buffer smaller than `offset` +
        `pitch` x `height` is refused with the size it needs.
        """
        if not isinstance(buf, DmaBuf):
            raise TypeError(f"expected a DmaBuf, not {type(buf).__name__}")
        code = fourcc_code(fourcc)
        width, height = check_int(width, "width"), check_int(height, "height")
        if not (0 < width < 2**16 and 0 < height < 2**16):
            raise ValueError(f"a framebuffer of {width}x{height} pixels: both must be within 1..65535")
        if pitch is None:
            if fourcc not in BYTES_PER_PIXEL:
                raise ValueError(f"give the pitch of a {fourcc} framebuffer (bytes per row): its default is known "
                                 f"for {', '.join(BYTES_PER_PIXEL)}")
            pitch = BYTES_PER_PIXEL[fourcc] * width
        pitch, offset = check_int(pitch, "pitch"), check_int(offset, "offset")
        if pitch <= 0 or offset < 0:
            raise ValueError(f"pitch must be positive and offset not negative, not {pitch} and {offset}")
        need = offset + pitch * height
        if need > buf.size:
            raise ValueError(f"a {width}x{height} {fourcc} framebuffer with pitch {pitch} at offset {offset} needs "
                             f"{need} bytes; the dma-buf has {buf.size}")
        gem = self.prime_import(buf)
        try:
            arg = ffi.new("struct drm_mode_fb_cmd2 *", {
                "width": width, "height": height, "pixel_format": code,
                "flags": _uapi.DRM_MODE_FB_MODIFIERS if modifier is not None else 0,
                "handles": [gem.handle], "pitches": [pitch], "offsets": [offset],
                "modifier": [modifier or 0]})
            ioctl(self.fileno(), _uapi.DRM_IOCTL_MODE_ADDFB2, arg,
                  f"DRM_IOCTL_MODE_ADDFB2 {width}x{height} {fourcc} pitch {pitch}",
                  {errno.EINVAL: f"the {self.driver} driver refuses it: the primary plane takes "
                                 f"{', '.join(self.formats())}; pitch and offset must suit the format",
                   errno.ERANGE: f"{need} bytes of framebuffer do not fit the {buf.size}-byte dma-buf"})
        except BaseException:
            gem.close()
            raise
        return Framebuffer(self, arg.fb_id, gem, buf, width, height, fourcc, pitch, offset)

    # -- commits -----------------------------------------------------------------------------------

    def _prepared(self, key, build) -> _Atomic:
        """The commit for `key`, built by build() the first time (kept for the next 16 kinds of commit)."""
        atomic = self._commits.get(key)
        if atomic is None:
            atomic = build()
            if len(self._commits) >= 16:
                self._commits.clear()
            self._commits[key] = atomic
        return atomic

    def _forget(self, fb_id: int) -> None:
        """Drops the built commits that name framebuffer `fb_id` (being removed: the id may come back)."""
        for key in [k for k in self._commits if k in (fb_id, -fb_id) or (type(k) is tuple and fb_id in k[1:3])]:
            del self._commits[key]

    def show(self, fb: Framebuffer, *, in_fence: SyncFile | None = None, cursor: Framebuffer | None = None,
             cursor_position: tuple = (0, 0)) -> SyncFile:
        """A non-blocking atomic commit putting `fb` on the primary plane; the CRTC's out-fence.

        `fb` goes at the top-left corner at its own size, unscaled:
        full-screen for a framebuffer of the mode's size (the rest shows the
        CRTC's background). `in_fence` (a SyncFile) goes in as the plane's
        IN_FENCE_FD: the display takes the buffer only once it signals. The
        returned SyncFile is the CRTC's OUT_FENCE_PTR fence: signaled when
        `fb` is on screen. `cursor`, where the card has a cursor plane, is
        shown on it at `cursor_position` (x, y), blended over `fb`; None
        leaves the cursor plane off. The first show() also sets the mode and
        connector (a modeset). A show() or capture() while the previous
        commit is still pending is EBUSY: wait for its fence first.
        """
        # The plain frame of an open framebuffer (fb_id 0: closed), without the general path's checks: it saves
        # 29% of a show() commit's user-space instructions (15,323 through the general path, 10,812 here).
        if cursor is None and in_fence is None and fb.__class__ is Framebuffer and fb.display is self and self._lit:
            atomic = self._commits.get(fb.fb_id)
            if atomic is not None:
                fd = self._fd
                if fd < 0:
                    raise self._closed_error()
                return atomic.commit(fd)  # the out-fence, O_CLOEXEC
        for name, value in (("fb", fb), ("cursor", cursor)):
            if value is None and name == "cursor":
                continue
            if not isinstance(value, Framebuffer):
                raise TypeError(f"{name} must be a Framebuffer (from framebuffer()), not {type(value).__name__}")
            if value.display is not self or value.closed:
                raise ValueError(f"that {name} framebuffer is closed, or belongs to another Display")
        fence_fd = -1
        if in_fence is not None:
            if not isinstance(in_fence, SyncFile):
                raise TypeError(f"in_fence must be a SyncFile, not {type(in_fence).__name__}")
            fence_fd = in_fence.fileno()
        if not self._lit:  # the first show() sets the mode too: a commit made once
            blob = self._mode_blob()
            try:
                fence = self._show_commit(fb, cursor, cursor_position, fence_fd >= 0, blob).commit(
                    self.fileno(), fence_fd)
            finally:
                self._destroy_blob(blob)
            self._lit = True
            return fence
        # built once per kind of frame, keyed by framebuffer ids (Framebuffer.close() drops the commits naming
        # its id, which the kernel may reuse): the plain frame by the id alone, for the fast path above
        key = fb.fb_id if cursor is None and fence_fd < 0 else (
            "show", fb.fb_id, 0 if cursor is None else cursor.fb_id, tuple(cursor_position), fence_fd >= 0)
        atomic = self._prepared(key, lambda: self._show_commit(fb, cursor, cursor_position, fence_fd >= 0, 0))
        return atomic.commit(self.fileno(), fence_fd)  # the out-fence, O_CLOEXEC

    def _show_commit(self, fb: Framebuffer, cursor: Framebuffer | None, position, in_fence: bool,
                     blob: int) -> _Atomic:
        """show()'s commit: `fb` on the primary plane, `cursor` (or nothing) on the cursor plane, the CRTC's
        out-fence, a slot for IN_FENCE_FD if `in_fence`; and with a mode `blob`, the modeset."""
        if fb.fourcc not in self.formats():
            raise ValueError(f"the primary plane of {self.driver} does not take {fb.fourcc}; it takes "
                             f"{', '.join(self.formats())}")
        o = self._objects
        crtc = o.crtc
        props = self._plane_props(o.primary, fb, (0, 0))
        if cursor is not None or o.cursor:
            if cursor is not None and not o.cursor:
                raise UnsupportedError(errno.ENODEV, f"{self._path} ({self.driver}) has no cursor plane")
            if cursor is not None and cursor.fourcc not in self.formats("cursor"):
                raise ValueError(f"the cursor plane of {self.driver} does not take {cursor.fourcc}; it takes "
                                 f"{', '.join(self.formats('cursor'))}")
            props += self._plane_props(o.cursor, cursor, position)
        flags = _NONBLOCK
        if blob:
            props += [(crtc, self._prop(crtc, _uapi.DRM_MODE_OBJECT_CRTC, "ACTIVE"), 1),
                      (crtc, self._prop(crtc, _uapi.DRM_MODE_OBJECT_CRTC, "MODE_ID"), blob),
                      (o.connector, self._prop(o.connector, _uapi.DRM_MODE_OBJECT_CONNECTOR, "CRTC_ID"), crtc)]
            flags |= _MODESET
        in_slot = (o.primary, self._prop(o.primary, _uapi.DRM_MODE_OBJECT_PLANE, "IN_FENCE_FD")) if in_fence else None
        return _Atomic(props, (crtc, self._prop(crtc, _uapi.DRM_MODE_OBJECT_CRTC, "OUT_FENCE_PTR")), flags,
                       f"DRM_IOCTL_MODE_ATOMIC (show framebuffer {fb.fb_id})", in_slot)

    def _plane_props(self, plane: int, fb: Framebuffer | None, position: tuple) -> list:
        """The properties putting `fb` unscaled at `position` on `plane`, or turning the plane off (None)."""
        pp = lambda name: self._prop(plane, _uapi.DRM_MODE_OBJECT_PLANE, name)  # noqa: E731
        if fb is None:
            return [(plane, pp("FB_ID"), 0), (plane, pp("CRTC_ID"), 0)]
        x, y = (check_int(v, "cursor_position") for v in position)
        return [(plane, pp("FB_ID"), fb.fb_id), (plane, pp("CRTC_ID"), self._objects.crtc),
                (plane, pp("SRC_X"), 0), (plane, pp("SRC_Y"), 0),
                (plane, pp("SRC_W"), fb.width << 16), (plane, pp("SRC_H"), fb.height << 16),
                (plane, pp("CRTC_X"), x & 0xFFFFFFFF), (plane, pp("CRTC_Y"), y & 0xFFFFFFFF),
                (plane, pp("CRTC_W"), fb.width), (plane, pp("CRTC_H"), fb.height)]

    def capture(self, into: Framebuffer) -> SyncFile:
        """One frame of what the CRTC shows now, written through the writeback connector into `into`.

        `into` must be of the mode's size, in a format the writeback
        connector writes (formats("writeback")). The returned SyncFile is its
        WRITEBACK_OUT_FENCE_PTR fence: signaled when the frame is in memory.
        The first capture() attaches the writeback connector to the CRTC (a
        modeset). UnsupportedError on a card without a writeback connector.

        vkms (up to at least 7.2) turns its composer on at each writeback
        commit and off when a finished job is cleaned up, by a worker after
        the fence has signaled: a capture committed before that clean-up loses
        the composer, and from then on each job completes only when the next
        is committed. Back-to-back captures on vkms should leave a frame
        (tens of ms under emulation) between a fence signaling and the next
        capture.
        """
        # An open framebuffer's capture (fb_id 0: closed), as in show(): saves 25% of a capture() commit's
        # instructions (12,769 through the general path, 9,607 here).
        if into.__class__ is Framebuffer and into.display is self:
            atomic = self._commits.get(-into.fb_id)
            if atomic is not None:
                fd = self._fd
                if fd < 0:
                    raise self._closed_error()
                return atomic.commit(fd)  # the out-fence, O_CLOEXEC
        if not isinstance(into, Framebuffer):
            raise TypeError(f"expected a Framebuffer (from framebuffer()), not {type(into).__name__}")
        if into.display is not self or into.closed:
            raise ValueError("that framebuffer is closed, or belongs to another Display")
        if self._attached:  # built once per framebuffer (see show()), keyed by -fb_id for the fast path above
            atomic = self._prepared(-into.fb_id, lambda: self._capture_commit(into, False))
        else:  # the first capture() attaches the writeback connector: a commit made once
            atomic = self._capture_commit(into, True)
        if not self._lit:
            raise ValueError("nothing is shown yet: show() a framebuffer first")
        fence = atomic.commit(self.fileno())  # the out-fence, O_CLOEXEC
        self._attached = True
        return fence

    def _capture_commit(self, into: Framebuffer, attach: bool) -> _Atomic:
        """capture()'s commit: `into` as the writeback framebuffer, its out-fence; attaching the connector to
        the CRTC (a modeset) if `attach`."""
        o = self._objects
        if not o.writeback:
            raise UnsupportedError(errno.ENODEV, f"{self._path} ({self.driver}) has no writeback connector "
                                                 "(vkms: vkms.enable_writeback=1)")
        if (into.width, into.height) != (self._mode.width, self._mode.height):
            raise ValueError(f"a writeback framebuffer must be the mode's size, {self._mode.width}x"
                             f"{self._mode.height}, not {into.width}x{into.height}")
        if into.fourcc not in self.formats("writeback"):
            raise ValueError(f"the writeback connector of {self.driver} does not write {into.fourcc}; it writes "
                             f"{', '.join(self.formats('writeback'))}")
        wb = o.writeback
        cp = lambda name: self._prop(wb, _uapi.DRM_MODE_OBJECT_CONNECTOR, name)  # noqa: E731
        props = [(wb, cp("WRITEBACK_FB_ID"), into.fb_id)] + ([(wb, cp("CRTC_ID"), o.crtc)] if attach else [])
        return _Atomic(props, (wb, cp("WRITEBACK_OUT_FENCE_PTR")), _NONBLOCK | (_MODESET if attach else 0),
                       f"DRM_IOCTL_MODE_ATOMIC (capture into framebuffer {into.fb_id})")

    def _mode_blob(self) -> int:
        arg = ffi.new("struct drm_mode_create_blob *", {"data": int(ffi.cast("uintptr_t", self._modeinfo)),
                                                         "length": ffi.sizeof("struct drm_mode_modeinfo")})
        ioctl(self.fileno(), _uapi.DRM_IOCTL_MODE_CREATEPROPBLOB, arg, "DRM_IOCTL_MODE_CREATEPROPBLOB")
        return arg.blob_id

    def _destroy_blob(self, blob_id: int) -> None:
        ioctl(self.fileno(), _uapi.DRM_IOCTL_MODE_DESTROYPROPBLOB,
              ffi.new("struct drm_mode_destroy_blob *", {"blob_id": blob_id}), "DRM_IOCTL_MODE_DESTROYPROPBLOB")

    def _repr_fields(self) -> str:
        return f" path={self._path!r} driver={self.driver!r} mode={self._mode.width}x{self._mode.height}"


_COMMIT_FIXES = {
    errno.EBUSY: "the previous show() or capture() is still pending: wait for its fence first",
    errno.EINVAL: "the driver refuses this configuration (format, size or a property value): "
                  "echo 0x16 > /sys/module/drm/parameters/debug and dmesg say which",
}


def _connector(fd: int, connector_id: int):
    """DRM_IOCTL_MODE_GETCONNECTOR without its arrays: type and connection."""
    conn = ffi.new("struct drm_mode_get_connector *", {"connector_id": connector_id})
    ioctl(fd, _uapi.DRM_IOCTL_MODE_GETCONNECTOR, conn, f"DRM_IOCTL_MODE_GETCONNECTOR({connector_id})")
    return conn


def _connected(fd: int) -> bool:
    """Whether any non-writeback connector of the card is connected."""
    res = ffi.new("struct drm_mode_card_res *")
    ioctl(fd, _uapi.DRM_IOCTL_MODE_GETRESOURCES, res, "DRM_IOCTL_MODE_GETRESOURCES")
    connectors, res.connector_id_ptr = _array("__u32", res.count_connectors)
    res.count_fbs = res.count_crtcs = res.count_encoders = 0
    ioctl(fd, _uapi.DRM_IOCTL_MODE_GETRESOURCES, res, "DRM_IOCTL_MODE_GETRESOURCES")
    return any(c.connection == _CONNECTED and c.connector_type != _uapi.DRM_MODE_CONNECTOR_WRITEBACK
               for c in (_connector(fd, i) for i in connectors[0:res.count_connectors]))
