"""V4L2: a video device's buffers as dma-bufs, and the caller's dma-bufs in a video device.

Just enough of V4L2 to move dma-bufs (drivers/media/common/videobuf2), not a
V4L2 binding: :class:`VideoDevice` opens a /dev/videoN node, sets a format on
its capture or output queue, and either exports the device's own buffers
(``VIDIOC_REQBUFS`` with ``V4L2_MEMORY_MMAP``, then ``VIDIOC_EXPBUF``: each a
:class:`~linuxdmabuf.DmaBuf` owned by the caller) or makes the device fill
or read the caller's dma-bufs (``V4L2_MEMORY_DMABUF``: from any heap, udmabuf
or another device), then queues, dequeues, starts and stops.

Single- and multi-planar drivers look the same: the queue's buffer type
follows the device's capabilities; a buffer of a multi-planar format is a
tuple of DmaBufs, one per plane, where a single-planar one is a DmaBuf.
Memory-to-memory devices (vim2m, vicodec) have both queues: "output" is
what the caller gives the device, "capture" what the device gives back.
"""
import contextlib
import errno
import operator
import os
import select
import stat
import struct
import time
from collections import namedtuple
from typing import Any, NamedTuple

from . import _uapi
from ._fd import FdObject
from ._sys import UnsupportedError, check_int, check_timeout, fd_target, ioctl, ioctl_failed, os_error, poll_fd, raw_ioctl
from ._uapi import ffi, fourcc_code, fourcc_name
from .dmabuf import DmaBuf

__all__ = ["VideoDevice", "Format", "PlaneFormat", "Frame", "fourcc_code", "fourcc_name", "VIDEO_MAJOR"]

VIDEO_MAJOR = 81  # every /dev/videoN node's char major (admin-guide/devices.txt)
V4L2_CLASS = "/sys/class/video4linux"

_CAP = {"capture": (_uapi.V4L2_CAP_VIDEO_CAPTURE, _uapi.V4L2_CAP_VIDEO_CAPTURE_MPLANE),
        "output": (_uapi.V4L2_CAP_VIDEO_OUTPUT, _uapi.V4L2_CAP_VIDEO_OUTPUT_MPLANE)}
_M2M = (_uapi.V4L2_CAP_VIDEO_M2M, _uapi.V4L2_CAP_VIDEO_M2M_MPLANE)
_TYPE = {("capture", False): _uapi.V4L2_BUF_TYPE_VIDEO_CAPTURE, ("capture", True): _uapi.V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE,
         ("output", False): _uapi.V4L2_BUF_TYPE_VIDEO_OUTPUT, ("output", True): _uapi.V4L2_BUF_TYPE_VIDEO_OUTPUT_MPLANE}
_MMAP = _uapi.V4L2_MEMORY_MMAP
_DMABUF = _uapi.V4L2_MEMORY_DMABUF
_QBUF = _uapi.VIDIOC_QBUF
_DQBUF = _uapi.VIDIOC_DQBUF
_BUFFER = ffi.typeof("struct v4l2_buffer *")
# Measured worth of the per-frame shortcuts below (tools/bench --instructions, V4L2 dequeue+queue pair,
# user-space instructions): the inline fd checks, index test and timeout gate in queue() and dequeue() save
# 18% (17,325 with fileno(), check_int() and check_timeout() called each time, 14,263 without); building
# each Frame with tuple.__new__ saves 11% (14,263 with Frame(...), 12,728 without).
_NUMBERS = (int, float)  # a timeout of these types, >= 0, needs no check_timeout() on the per-frame path
_FD = operator.attrgetter("_fd")
_tuple_new = tuple.__new__  # Frame(...) without namedtuple's Python-level __new__ (see above)
_PLANES = ffi.typeof("struct v4l2_plane[]")


class PlaneFormat(NamedTuple):
    """One plane of a format: bytes per line and the size a buffer for it needs."""

    bytesperline: int
    sizeimage: int


class Format(NamedTuple):
    """What the driver chose in VIDIOC_S_FMT: size, fourcc (str) and one PlaneFormat per buffer plane."""

    width: int
    height: int
    fourcc: str
    planes: tuple


class Frame(namedtuple("Frame", "index buffer bytesused sequence timestamp_ns flags", defaults=(0,))):
    """A dequeued buffer: its index, the DmaBuf (or tuple per plane) of that index, the bytes the
    device used in each plane, the driver's sequence number, the timestamp (CLOCK_MONOTONIC ns for
    capture; what the output side set, for an m2m device), and V4L2_BUF_FLAG_* flags. (A named
    tuple: made in C, which matters per frame.)"""

    __slots__ = ()

    @property
    def error(self) -> bool:
        """V4L2_BUF_FLAG_ERROR: the device says the data may be corrupt (a dropped frame...)."""
        return bool(self.flags & _uapi.V4L2_BUF_FLAG_ERROR)


def _reader(ctype: str, *fields) -> struct.Struct:
    """A struct.Struct unpacking `fields` of C type `ctype` (in offset order; a nested one as a tuple of
    names) in one call, at the offsets cffi computes from cdefs/, i.e. the header's: a frame's fields
    read at C speed, instead of one cffi attribute access each."""
    layout, position = "=", 0
    for field in fields:
        path = (field,) if isinstance(field, str) else field
        offset, ftype = ffi.offsetof(ctype, *path), ffi.typeof(ctype)
        for name in path:
            ftype = dict(ftype.fields)[name].type
        layout += "x" * (offset - position) + {4: "I", 8: "q"}[ffi.sizeof(ftype)]
        position = offset + ffi.sizeof(ftype)
    return struct.Struct(layout)


# index, bytesused, flags, timestamp, sequence of a dequeued struct v4l2_buffer
_DQ_FIELDS = _reader("struct v4l2_buffer", "index", "bytesused", "flags", ("timestamp", "tv_sec"),
                     ("timestamp", "tv_usec"), "sequence").unpack_from


class _Queue:
    """One buffer queue of the device: its type, memory and buffers, a prebuilt VIDIOC_QBUF argument per
    buffer (per frame, queue() fills in nothing but an output's bytesused), one for VIDIOC_DQBUF."""

    __slots__ = ("name", "type", "mplane", "memory", "buffers", "nplanes", "sizes", "qargs", "dqbuf", "dqview",
                 "dqplanes", "events")

    def __init__(self, name: str, buf_type: int, mplane: bool):
        self.name, self.type, self.mplane = name, buf_type, mplane
        self.memory = 0  # V4L2_MEMORY_MMAP or _DMABUF, once buffers are set
        self.buffers: list = []
        self.qargs: list = []  # per index: (QBUF argument, its buffer view, plane array or None, DmaBufs, fds)
        self.nplanes = 1
        self.sizes: tuple = ()  # each plane's sizeimage
        self.events = select.POLLIN if name == "capture" else select.POLLOUT
        self.dqbuf = ffi.new(_BUFFER)
        self.dqview = ffi.buffer(self.dqbuf)
        self.dqplanes: Any = None

    def arrange(self, memory: int, buffers: list, nplanes: int, sizes: tuple) -> None:
        """Prebuild the QBUF arguments of `buffers` and the DQBUF one."""
        self.memory, self.buffers, self.nplanes, self.sizes = memory, buffers, nplanes, sizes
        output = self.name == "output"
        self.qargs = []
        for index, item in enumerate(buffers):
            arg = ffi.new(_BUFFER)
            arg.index, arg.type, arg.memory = index, self.type, memory
            planes = item if self.mplane else (item,)
            array = None
            if self.mplane:
                array = ffi.new(_PLANES, nplanes)
                arg.m.planes, arg.length = array, nplanes
            for plane, (buf, size) in enumerate(zip(planes, sizes)):
                target = array[plane] if array is not None else arg
                target.bytesused = size if output else 0  # an output plane's whole format, by default
                if memory == _DMABUF:
                    target.m.fd, target.length = buf.fileno(), buf.size
            self.qargs.append((arg, ffi.buffer(arg), array, planes,
                               tuple(p.fileno() for p in planes) if memory == _DMABUF else ()))
        self.dqbuf.type, self.dqbuf.memory = self.type, memory
        if self.mplane:
            self.dqplanes = ffi.new(_PLANES, nplanes)
            self.dqbuf.m.planes, self.dqbuf.length = self.dqplanes, nplanes


def _device_caps(fd: int) -> tuple:
    """VIDIOC_QUERYCAP: (driver, card, bus_info, device_caps)."""
    cap = ffi.new("struct v4l2_capability *")
    ioctl(fd, _uapi.VIDIOC_QUERYCAP, cap, "VIDIOC_QUERYCAP")
    caps = cap.device_caps if cap.capabilities & _uapi.V4L2_CAP_DEVICE_CAPS else cap.capabilities
    text = [ffi.string(field).decode(errors="replace") for field in (cap.driver, cap.card, cap.bus_info)]
    return (*text, caps)


def _kinds(caps: int) -> set:
    kinds = {name for name, bits in _CAP.items() if caps & (bits[0] | bits[1])}
    if caps & (_M2M[0] | _M2M[1]):
        kinds |= {"m2m", "capture", "output"}
    return kinds


class VideoDevice(FdObject):
    """A V4L2 video node (/dev/videoN), opened O_RDWR|O_NONBLOCK|O_CLOEXEC.

    ``VideoDevice(path)`` opens it; ``VideoDevice(fd)`` adopts an open one;
    ``VideoDevice.find(driver="vivid", kind="capture")`` opens the first node
    of that driver that can do `kind`. Closing the device frees its buffers
    (the DmaBufs exported from it stay valid: they hold their own reference).
    """

    __slots__ = ("_path", "driver", "card", "bus_info", "caps", "_queues")
    _attaches = True
    _path: str
    driver: str
    card: str
    bus_info: str
    caps: int
    _queues: dict

    def __init__(self, path_or_fd):
        if isinstance(path_or_fd, int) and not isinstance(path_or_fd, bool):
            super().__init__(path_or_fd)
            return
        self._fd = -1
        if not isinstance(path_or_fd, (str, os.PathLike)):
            raise TypeError(f"expected a video node path or an fd to adopt, not {type(path_or_fd).__name__}")
        path = os.fspath(path_or_fd)
        # O_NONBLOCK: VIDIOC_DQBUF answers EAGAIN instead of sleeping; dequeue() polls with its timeout.
        self._open(path, os.O_RDWR | os.O_NONBLOCK, denied="video nodes are usually group video: add yourself to "
                   "it, or run as root", validate=True)

    def _attach(self, fd: int) -> None:
        self._path = fd_target(fd)
        self.driver, self.card, self.bus_info, self.caps = _device_caps(fd)
        self._queues = {}

    def _validate(self, fd: int) -> None:
        st = os.fstat(fd)
        if not stat.S_ISCHR(st.st_mode) or os.major(st.st_rdev) != VIDEO_MAJOR:
            raise ValueError(f"fd {fd} is not a V4L2 video node (it is {fd_target(fd)!r})")

    def _repr_fields(self) -> str:
        return f" path={self._path!r} driver={self.driver!r}"

    @property
    def path(self) -> str:
        return self._path

    @property
    def kinds(self) -> frozenset:
        """What this node can do: "capture", "output", and "m2m" for a memory-to-memory device."""
        return frozenset(_kinds(self.caps))

    @property
    def name(self) -> str:
        """The node's own name (sysfs video4linux/<node>/name: "vivid-000-vid-cap", "stateful-encoder"...),
        which tells apart the nodes of one driver where `card` does not; "" if sysfs does not show it."""
        try:
            with open(os.path.join(V4L2_CLASS, os.path.basename(self._path), "name")) as f:
                return f.read().strip()
        except FileNotFoundError:
            return ""

    @property
    def multiplanar(self) -> bool:
        """Whether the device's video queues are multi-planar (V4L2_CAP_*_MPLANE): one buffer per plane."""
        mplane = _CAP["capture"][1] | _CAP["output"][1] | _M2M[1]
        return bool(self.caps & mplane)

    @classmethod
    def find(cls, *, driver: str | None = None, kind: str = "capture", multiplanar: bool | None = None,
             name: str | None = None) -> "VideoDevice":
        """The first video node (in node order) whose driver is `driver` (any, if None) and that can do `kind`.

        `kind` is "capture", "output" or "m2m" (a memory-to-memory device:
        both queues on one node; for "capture" and "output" without a
        `driver`, m2m devices are left out: a codec is not a camera).
        `multiplanar` picks single- or multi-planar nodes (either if None),
        `name` a node by its own name (vicodec's "stateful-encoder" and
        "stateful-decoder" share a driver and a card). FileNotFoundError
        naming the nodes there are, with their drivers and kinds, when none
        matches.
        """
        if driver is not None and not isinstance(driver, str):
            raise TypeError(f"driver must be a str or None, not {type(driver).__name__}")
        if kind not in ("capture", "output", "m2m"):
            raise ValueError(f"kind must be 'capture', 'output' or 'm2m', not {kind!r}")
        seen, denied = [], []
        for path in _video_nodes():
            try:
                device = cls(path)
            except PermissionError:
                denied.append(path)
                continue
            except (FileNotFoundError, ValueError) as e:  # a node that went away meanwhile, or not V4L2
                seen.append(f"{path} ({e})")
                continue
            kinds = _kinds(device.caps)
            if ((driver is None or device.driver == driver) and kind in kinds
                    and (kind == "m2m" or "m2m" not in kinds or driver is not None)
                    and (multiplanar is None or device.multiplanar == multiplanar)
                    and (name is None or device.name == name)):
                return device
            planes = "multi-planar " if device.multiplanar else ""
            seen.append(f"{path} ({device.driver}: {planes}{', '.join(sorted(kinds)) or 'no video queue'})")
            device.close()
        what = (f"{'multi-planar ' if multiplanar else 'single-planar ' if multiplanar is False else ''}{kind} node"
                + (f" named {name!r}" if name else "") + (f" of driver {driver!r}" if driver else ""))
        fix = f"; could not open {', '.join(denied)} (video nodes are usually group video)" if denied else ""
        raise os_error(errno.ENOENT, f"no V4L2 {what}", (f"the nodes here are: {'; '.join(seen)}" if seen else
                                                          "no /dev/video* node here") + fix)

    # -- formats -----------------------------------------------------------

    def _queue(self, queue: str) -> _Queue:
        q = self._queues.get(queue)
        if q is not None:
            return q
        if queue not in _CAP:
            raise ValueError(f"queue must be 'capture' or 'output', not {queue!r}")
        single, multi = _CAP[queue]
        m2m_single, m2m_multi = _M2M
        if self.caps & (multi | m2m_multi):
            mplane = True
        elif self.caps & (single | m2m_single):
            mplane = False
        else:
            raise ValueError(f"{self._path} ({self.driver}) has no video {queue} queue (it can do: "
                             f"{', '.join(sorted(_kinds(self.caps))) or 'no video I/O'})")
        q = self._queues[queue] = _Queue(queue, _TYPE[queue, mplane], mplane)
        return q

    def set_format(self, width: int, height: int, fourcc: str, *, queue: str = "capture") -> Format:
        """VIDIOC_S_FMT on `queue`: returns what the driver chose (it may round the size).

        A driver that does not take `fourcc` replaces it with one it does:
        that is a ValueError here, naming the formats the driver offers
        (VIDIOC_ENUM_FMT), since frames in another layout would be misread.
        """
        code = fourcc_code(fourcc)
        fd = self.fileno()
        q = self._queue(queue)
        fmt = ffi.new("struct v4l2_format *")
        fmt.type = q.type
        if q.mplane:
            fmt.fmt.pix_mp.width, fmt.fmt.pix_mp.height = _u32(width, "width"), _u32(height, "height")
            fmt.fmt.pix_mp.pixelformat, fmt.fmt.pix_mp.field = code, _uapi.V4L2_FIELD_NONE
        else:
            fmt.fmt.pix.width, fmt.fmt.pix.height = _u32(width, "width"), _u32(height, "height")
            fmt.fmt.pix.pixelformat, fmt.fmt.pix.field = code, _uapi.V4L2_FIELD_NONE
        ioctl(fd, _uapi.VIDIOC_S_FMT, fmt, f"VIDIOC_S_FMT {width}x{height} {fourcc} on {self._path} {queue}",
              {errno.EBUSY: "buffers are allocated on that queue: stop it and free them first (use_buffers([]))"})
        chosen = _format(fmt, q.mplane)
        if chosen.fourcc != fourcc:
            raise ValueError(f"{self.driver} does not take {fourcc} on its {queue} queue: it chose {chosen.fourcc} "
                             f"instead; it offers {', '.join(self.formats(queue=queue))}")
        return chosen

    def get_format(self, *, queue: str = "capture") -> Format:
        """VIDIOC_G_FMT: the queue's current format."""
        q = self._queue(queue)
        fmt = ffi.new("struct v4l2_format *")
        fmt.type = q.type
        ioctl(self.fileno(), _uapi.VIDIOC_G_FMT, fmt, f"VIDIOC_G_FMT on {self._path} {queue}")
        return _format(fmt, q.mplane)

    def formats(self, *, queue: str = "capture") -> list:
        """VIDIOC_ENUM_FMT: the fourccs the driver offers on `queue`, in its order."""
        q = self._queue(queue)
        desc = ffi.new("struct v4l2_fmtdesc *")
        desc.type = q.type
        found: list = []
        fd, view = self.fileno(), ffi.buffer(desc)
        while True:
            try:
                raw_ioctl(fd, _uapi.VIDIOC_ENUM_FMT, view)
            except OSError as e:
                if e.errno == errno.EINVAL:  # past the last format
                    return found
                ioctl_failed(e, fd, _uapi.VIDIOC_ENUM_FMT, view, f"VIDIOC_ENUM_FMT on {self._path}")  # EINTR: again
            found.append(fourcc_name(desc.pixelformat))
            desc.index += 1

    # -- buffers ---------------------------------------------------------------

    def _request(self, q: _Queue, count: int, memory: int) -> int:
        """VIDIOC_REQBUFS; returns the count the driver allocated."""
        req = ffi.new("struct v4l2_requestbuffers *")
        req.count, req.type, req.memory = count, q.type, memory
        kind = "MMAP" if memory == _MMAP else "DMABUF"
        ioctl(self.fileno(), _uapi.VIDIOC_REQBUFS, req, f"VIDIOC_REQBUFS {count} {kind} on {self._path} {q.name}", {
            errno.EBUSY: f"the {q.name} queue is streaming or its buffers are in use (mapped or exported): stop() it",
            errno.EINVAL: f"{self.driver} does not support {kind} buffers on its {q.name} queue"})
        wanted = _uapi.V4L2_BUF_CAP_SUPPORTS_MMAP if memory == _MMAP else _uapi.V4L2_BUF_CAP_SUPPORTS_DMABUF
        if count and req.capabilities and not req.capabilities & wanted:
            raise UnsupportedError(errno.EINVAL, f"{self.driver} cannot do {kind} buffers on its {q.name} queue")
        return req.count

    def export_buffers(self, count: int, *, queue: str = "capture") -> list:
        """The device's own buffers as DmaBufs: VIDIOC_REQBUFS (MMAP), then VIDIOC_EXPBUF per buffer and plane.

        Returns one DmaBuf (a tuple of them for a multi-planar format) per
        buffer the driver allocated, which may be more than `count` (its
        minimum); the caller owns and closes them. The buffers' memory lives
        as long as any of its fds or mappings does.
        """
        count = _u32(count, "count", minimum=1)
        fd = self.fileno()
        q = self._queue(queue)
        fmt = self.get_format(queue=queue)
        got = self._request(q, count, _MMAP)
        arg = ffi.new("struct v4l2_exportbuffer *")
        arg.type, arg.flags = q.type, os.O_RDWR | os.O_CLOEXEC
        made = []
        try:
            for index in range(got):
                planes: list[DmaBuf] = []
                made.append(planes)
                for plane in range(len(fmt.planes)):
                    arg.index, arg.plane = index, plane
                    ioctl(fd, _uapi.VIDIOC_EXPBUF, arg, f"VIDIOC_EXPBUF {index}.{plane} on {self._path} {queue}",
                          {errno.ENOTTY: f"{self.driver} cannot export its buffers (no VIDIOC_EXPBUF)"})
                    planes.append(DmaBuf._wrap(arg.fd))
        except BaseException:
            for planes in made:
                for buf in planes:
                    buf.close()
            self._request(q, 0, _MMAP)
            raise
        buffers = [tuple(planes) if q.mplane else planes[0] for planes in made]
        q.arrange(_MMAP, buffers, len(fmt.planes), tuple(p.sizeimage for p in fmt.planes))
        return buffers

    def use_buffers(self, buffers, *, queue: str = "capture") -> None:
        """VIDIOC_REQBUFS (V4L2_MEMORY_DMABUF): the device fills (capture) or reads (output) `buffers`.

        `buffers[i]` is buffer index i: a DmaBuf, or for a multi-planar format
        a tuple of one DmaBuf per plane. An empty list frees the queue's
        buffers. The DmaBufs stay the caller's: keep them open while queued.
        """
        fmt = self.get_format(queue=queue)
        q = self._queue(queue)
        items = list(buffers)
        nplanes = len(fmt.planes)
        for i, item in enumerate(items):
            planes = item if isinstance(item, tuple) else (item,)
            if len(planes) != nplanes or not all(isinstance(p, DmaBuf) for p in planes):
                want = f"a tuple of {nplanes} DmaBufs (one per plane)" if q.mplane else "a DmaBuf"
                raise TypeError(f"buffers[{i}] must be {want} for {fmt.fourcc}, not {item!r}")
            for p in planes:
                p.fileno()  # ValueError if closed
        got = self._request(q, len(items), _DMABUF)
        if got < len(items):
            self._request(q, 0, _DMABUF)
            raise os_error(errno.ENOMEM, f"VIDIOC_REQBUFS {len(items)} DMABUF on {self._path} {queue}",
                           f"{self.driver} allows only {got} buffers")
        q.arrange(_DMABUF, items, nplanes, tuple(p.sizeimage for p in fmt.planes))

    # -- streaming -----------------------------------------------------------------

    def queue(self, index: int, *, queue: str = "capture", bytesused=None) -> None:
        """VIDIOC_QBUF: give buffer `index` to the device.

        For an output queue `bytesused` (an int, or one per plane) says how
        much of each plane holds data; it defaults to the format's whole
        plane. For an imported buffer smaller than the format needs, the
        kernel's EINVAL names the size it needs. An imported DmaBuf closed
        since use_buffers() is refused (ValueError): its old fd number may
        belong to another file by now.
        """
        fd = self._fd
        if fd < 0:
            raise self._closed_error()
        q = self._queues.get(queue) or self._queue(queue)
        qargs = q.qargs
        if type(index) is not int:
            index = check_int(index, "index")
        if not 0 <= index < len(qargs):
            raise ValueError(f"index {index} is not one of the {len(qargs)} buffers of the {queue} queue" if qargs
                             else f"no buffers on the {queue} queue: export_buffers() or use_buffers() first")
        arg, view, array, planes, fds = qargs[index]
        if fds and (planes[0]._fd != fds[0] or len(fds) > 1 and tuple(map(_FD, planes)) != fds):  # 1 plane: 1 test
            raise ValueError(f"buffer {index} of the {queue} queue was closed after use_buffers(); "
                             "give use_buffers() open DmaBufs again")
        if bytesused is not None and q.name == "output":
            for plane, n in enumerate(_per_plane(bytesused, q.nplanes)):
                (array[plane] if array is not None else arg).bytesused = n
        try:
            raw_ioctl(fd, _QBUF, view)
        except OSError as e:
            used = _per_plane(bytesused, q.nplanes) if bytesused is not None else q.sizes
            ioctl_failed(e, fd, _QBUF, view, f"VIDIOC_QBUF {index} on {self._path} {queue}",
                         {errno.EINVAL: self._diagnose_qbuf(q, index, used)})
        if bytesused is not None and q.name == "output":  # back to the default for the next queue()
            for plane, n in enumerate(q.sizes):
                (array[plane] if array is not None else arg).bytesused = n

    def _diagnose_qbuf(self, q: _Queue, index: int, used: tuple) -> str:
        buffer = q.buffers[index]
        for plane, (p, size) in enumerate(zip(buffer if q.mplane else (buffer,), q.sizes)):
            if q.memory == _DMABUF and p.size < size:
                return (f"plane {plane} of buffer {index} is a {p.size}-byte dma-buf; the format needs "
                        f"{size} bytes: allocate at least that")
            if used[plane] > (p.size if q.memory == _DMABUF else size):
                return f"bytesused {used[plane]} exceeds plane {plane}'s {size} bytes"
        return f"the buffer is already queued, or the {q.name} queue's format changed since its buffers were set"

    def dequeue(self, *, queue: str = "capture", timeout: float | None = None) -> Frame | None:
        """Wait (poll) for the device to finish a buffer of `queue`, then VIDIOC_DQBUF it; None on timeout.

        EINVAL from the kernel when the queue is not streaming; EPIPE after
        the last buffer of a drained codec (V4L2_BUF_FLAG_LAST).
        """
        fd = self._fd
        if fd < 0:
            raise self._closed_error()
        q = self._queues.get(queue) or self._queue(queue)
        if timeout is not None and not (timeout.__class__ in _NUMBERS and timeout >= 0):
            check_timeout(timeout)  # raises for a bad timeout, also when a buffer is ready
        try:  # O_NONBLOCK: a finished buffer is taken at once, without a poll
            raw_ioctl(fd, _DQBUF, q.dqview)
        except OSError as e:
            if not self._wait_and_dequeue(q, e, check_timeout(timeout)):
                return None
        index, used, flags, sec, usec, sequence = _DQ_FIELDS(q.dqview)
        if q.mplane:
            planes = q.dqplanes
            used = tuple(planes[i].bytesused for i in range(q.nplanes))
        else:
            used = (used,)
        return _tuple_new(Frame, (index, q.buffers[index], used, sequence, sec * 1_000_000_000 + usec * 1000, flags))

    def _wait_and_dequeue(self, q: _Queue, error: OSError, timeout: float | None) -> bool:
        """DQBUF failed with `error`: poll for the queue's buffer until `timeout`, then DQBUF again; False on
        timeout."""
        fd = self.fileno()
        view = q.dqview
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if error.errno != errno.EAGAIN:
                ioctl_failed(error, fd, _DQBUF, view, f"VIDIOC_DQBUF on {self._path} {q.name}", {
                    errno.EINVAL: f"the {q.name} queue is not streaming: start() it (or use streaming())",
                    errno.EPIPE: "the last buffer was dequeued (V4L2_BUF_FLAG_LAST): the stream has ended"})
                return True  # restarted after EINTR, and done
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not poll_fd(fd, q.events, remaining):
                return False
            try:
                raw_ioctl(fd, _DQBUF, view)
                return True
            except OSError as e:
                error = e
            if remaining == 0:
                return False

    def start(self, *, queue: str = "capture") -> None:
        """VIDIOC_STREAMON."""
        q = self._queue(queue)
        ioctl(self.fileno(), _uapi.VIDIOC_STREAMON, ffi.new("int *", q.type), f"VIDIOC_STREAMON on {self._path} {queue}",
              {errno.EINVAL: f"no buffers on the {queue} queue, or too few queued for {self.driver} to start"})

    def stop(self, *, queue: str = "capture") -> None:
        """VIDIOC_STREAMOFF: stops and takes back every queued buffer (none is dequeued afterwards)."""
        q = self._queue(queue)
        ioctl(self.fileno(), _uapi.VIDIOC_STREAMOFF, ffi.new("int *", q.type), f"VIDIOC_STREAMOFF on {self._path} {queue}")

    @contextlib.contextmanager
    def streaming(self, *, queue: str = "capture"):
        """``with dev.streaming():`` queues every buffer not yet queued, starts, and stops on exit."""
        q = self._queue(queue)
        arg = ffi.new(_BUFFER)
        planes = ffi.new(_PLANES, q.nplanes) if q.mplane else None
        for index in range(len(q.buffers)):
            arg.index, arg.type, arg.memory = index, q.type, q.memory
            if planes is not None:
                arg.m.planes, arg.length = planes, q.nplanes
            ioctl(self.fileno(), _uapi.VIDIOC_QUERYBUF, arg, f"VIDIOC_QUERYBUF {index}")
            if not arg.flags & (_uapi.V4L2_BUF_FLAG_QUEUED | _uapi.V4L2_BUF_FLAG_DONE):
                self.queue(index, queue=queue)
        self.start(queue=queue)
        try:
            yield self
        finally:
            if not self.closed:
                self.stop(queue=queue)


def _video_nodes() -> list:
    try:
        names = [n for n in os.listdir("/dev") if n.startswith("video") and n[5:].isdigit()]
    except FileNotFoundError:
        return []
    return [f"/dev/{n}" for n in sorted(names, key=lambda n: int(n[5:]))]


def _format(fmt, mplane: bool) -> Format:
    if mplane:
        pix = fmt.fmt.pix_mp
        planes = tuple(PlaneFormat(pix.plane_fmt[i].bytesperline, pix.plane_fmt[i].sizeimage)
                       for i in range(pix.num_planes))
    else:
        pix = fmt.fmt.pix
        planes = (PlaneFormat(pix.bytesperline, pix.sizeimage),)
    return Format(pix.width, pix.height, fourcc_name(pix.pixelformat), planes)


def _u32(value, what: str, minimum: int = 0) -> int:
    value = check_int(value, what)
    if not minimum <= value < 2**32:
        raise ValueError(f"{what} must be within {minimum}..2**32-1, not {value}")
    return value


def _per_plane(bytesused, nplanes: int) -> tuple:
    values = tuple(bytesused) if isinstance(bytesused, (tuple, list)) else (bytesused,)
    if len(values) != nplanes:
        raise ValueError(f"bytesused needs {nplanes} value(s), one per plane, not {len(values)}")
    return tuple(_u32(v, "bytesused") for v in values)
