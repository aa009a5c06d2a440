"""numpy arrays on dma-buf mappings, without a copy, and frame-format layouts.

:func:`array` views a DmaBuf's shared mapping (or any mapping) as a
numpy array; :func:`frame` views each plane of a frame in a named format;
:func:`frame_layout` computes those planes' offsets, pitches and shapes and
needs no numpy. numpy is the optional extra ``linuxdmabuf[numpy]``: this
module imports it only when an array is made.

The arrays are the buffer's pages: writes through them reach the device and
other processes. As with any CPU access, bracket it with
``buf.cpu_access()`` (DMA_BUF_IOCTL_SYNC). An array keeps its mapping, and
so the buffer, alive after the DmaBuf is closed; the pages go when the last
array on them is collected.

Formats are named by their DRM fourcc (include/uapi/drm/drm_fourcc.h), whose
packed RGB names read from the most significant bit of a little-endian
word: XRGB8888 is B, G, R, X in memory. Each plane's ``components`` gives the
memory order, which is what the array's last axis indexes.
"""
import math
import re
from dataclasses import dataclass

from ._sys import check_int

__all__ = ["FORMATS", "PlaneFormat", "PlaneLayout", "array", "frame", "frame_layout", "plane"]


@dataclass(frozen=True)
class PlaneFormat:
    """One plane of a format: `components` of `dtype` per array element, in memory order.

    A single component that names several channels (RGB565) is one packed
    integer per pixel. `hsub`/`vsub` are the chroma subsampling factors;
    `block` is how many pixels of a row one element covers (2 for YUYV's
    Y0 U Y1 V).
    """

    dtype: str
    components: tuple
    hsub: int = 1
    vsub: int = 1
    block: int = 1

    @property
    def itemsize(self) -> int:
        return _itemsize(self.dtype)

    @property
    def element_size(self) -> int:
        """Bytes per array element (all its components)."""
        return self.itemsize * len(self.components)


def _itemsize(dtype: str) -> int:
    """Bytes per item of a numpy dtype string such as "u1", "<u2", "<c16"."""
    return int(re.sub(r"\D", "", dtype))


def _rgb(order: str) -> tuple:
    return (PlaneFormat("u1", tuple(order)),)


def _yuv(chroma: tuple, hsub: int, vsub: int) -> tuple:
    luma = PlaneFormat("u1", ("Y",))
    if len(chroma) == 1:  # semi-planar: one plane of interleaved chroma pairs
        return luma, PlaneFormat("u1", chroma[0], hsub, vsub)
    return (luma,) + tuple(PlaneFormat("u1", (c,), hsub, vsub) for c in chroma)


FORMATS = {
    "R8": (PlaneFormat("u1", ("R",)),),
    "R16": (PlaneFormat("<u2", ("R",)),),
    "GR88": _rgb("RG"),
    "RGB565": (PlaneFormat("<u2", ("RGB565",)),),
    "BGR565": (PlaneFormat("<u2", ("BGR565",)),),
    "RGB888": _rgb("BGR"),
    "BGR888": _rgb("RGB"),
    "XRGB8888": _rgb("BGRX"),
    "ARGB8888": _rgb("BGRA"),
    "XBGR8888": _rgb("RGBX"),
    "ABGR8888": _rgb("RGBA"),
    "RGBX8888": _rgb("XBGR"),
    "RGBA8888": _rgb("ABGR"),
    "BGRX8888": _rgb("XRGB"),
    "BGRA8888": _rgb("ARGB"),
    "YUYV": (PlaneFormat("u1", ("Y0", "U", "Y1", "V"), block=2),),
    "UYVY": (PlaneFormat("u1", ("U", "Y0", "V", "Y1"), block=2),),
    "NV12": _yuv((("U", "V"),), 2, 2),
    "NV21": _yuv((("V", "U"),), 2, 2),
    "NV16": _yuv((("U", "V"),), 2, 1),
    "NV61": _yuv((("V", "U"),), 2, 1),
    "YUV420": _yuv(("U", "V"), 2, 2),
    "YVU420": _yuv(("V", "U"), 2, 2),
    "YUV422": _yuv(("U", "V"), 2, 1),
    "YUV444": _yuv(("U", "V"), 1, 1),
}


# V4L2 fourcc (include/uapi/linux/videodev2.h) -> (the FORMATS key of its memory layout, whether each
# plane is a buffer of its own: the multi-planar "M" formats)
V4L2_FORMATS = {
    "YUYV": ("YUYV", False), "UYVY": ("UYVY", False), "NV12": ("NV12", False), "NV21": ("NV21", False),
    "NV16": ("NV16", False), "NV61": ("NV61", False), "YU12": ("YUV420", False), "YV12": ("YVU420", False),
    "422P": ("YUV422", False), "RGB3": ("BGR888", False), "BGR3": ("RGB888", False), "GREY": ("R8", False),
    "NM12": ("NV12", True), "NM21": ("NV21", True), "NM16": ("NV16", True), "NM61": ("NV61", True),
    "YM12": ("YUV420", True), "YM21": ("YVU420", True),
}


@dataclass(frozen=True)
class PlaneLayout:
    """Where one plane lies in a buffer: `height` rows of `width` elements, rows
    `pitch` bytes apart, starting `offset` bytes in."""

    offset: int
    pitch: int
    width: int
    height: int
    dtype: str
    components: tuple

    @property
    def shape(self) -> tuple:
        """(height, width), plus a last axis for elements of several components."""
        if len(self.components) == 1:
            return (self.height, self.width)
        return (self.height, self.width, len(self.components))

    @property
    def strides(self) -> tuple:
        itemsize = _itemsize(self.dtype)
        n = len(self.components)
        return (self.pitch, itemsize * n) if n == 1 else (self.pitch, itemsize * n, itemsize)

    @property
    def row_bytes(self) -> int:
        return self.width * _itemsize(self.dtype) * len(self.components)

    @property
    def end(self) -> int:
        """One past the plane's last byte: the buffer must be at least this long."""
        return self.offset + self.pitch * (self.height - 1) + self.row_bytes


def _check_int(value, what: str, minimum: int) -> int:
    value = check_int(value, what)
    if value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, not {value}")
    return value


def _per_plane(values, count: int, what: str, minimum: int) -> list:
    if values is None:
        return [None] * count
    if isinstance(values, int) and not isinstance(values, bool):
        values = [values]
    values = list(values)
    if not 1 <= len(values) <= count:
        raise ValueError(f"{what}: expected 1 to {count} values (one per plane), not {len(values)}")
    checked = [_check_int(v, f"{what}[{i}]", minimum) for i, v in enumerate(values)]
    return checked + [None] * (count - len(values))


def frame_layout(fourcc: str, width: int, height: int, *, pitches=None, offsets=None) -> tuple:
    """The planes of a `width` x `height` frame in format `fourcc` (a key of FORMATS).

    `pitches` and `offsets` (bytes, one per plane, or fewer: the rest are
    derived) are what the producer reports, e.g. a DRM dumb buffer's pitch
    or V4L2's bytesperline. Without them plane 0 is packed (pitch = row
    bytes), a chroma plane's pitch is plane 0's scaled by its width ratio
    (NV12's UV pitch equals the Y pitch, YUV420's U and V pitches are half
    of it), and each plane follows the previous one. Subsampled planes
    round their size up (a 5x5 NV12 frame has 3x3 chroma pairs).
    """
    if not isinstance(fourcc, str):
        raise TypeError(f"fourcc must be a str, not {type(fourcc).__name__}")
    planes = FORMATS.get(fourcc)
    if planes is None:
        raise ValueError(f"unknown format {fourcc!r}; known: {', '.join(FORMATS)}")
    width = _check_int(width, "width", 1)
    height = _check_int(height, "height", 1)
    pitches = _per_plane(pitches, len(planes), "pitches", 1)
    offsets = _per_plane(offsets, len(planes), "offsets", 0)
    layouts: list[PlaneLayout] = []
    for i, (fmt, pitch, offset) in enumerate(zip(planes, pitches, offsets)):
        w = math.ceil(width / (fmt.hsub * fmt.block))
        h = math.ceil(height / fmt.vsub)
        row_bytes = w * fmt.element_size
        if pitch is None:
            pitch = row_bytes
            if i:
                first = planes[0]
                scaled = math.ceil(layouts[0].pitch * fmt.element_size * first.hsub * first.block
                                   / (first.element_size * fmt.hsub * fmt.block))
                pitch = max(row_bytes, scaled)
        elif pitch < row_bytes:
            raise ValueError(f"{fourcc} plane {i}: pitch {pitch} is less than a row of {w} elements ({row_bytes} bytes)")
        if offset is None:
            offset = layouts[-1].offset + layouts[-1].pitch * layouts[-1].height if layouts else 0
        layouts.append(PlaneLayout(offset, pitch, w, h, fmt.dtype, fmt.components))
    return tuple(layouts)


def _numpy():
    try:
        import numpy
    except ImportError as e:
        raise ModuleNotFoundError("linuxdmabuf.ndarray needs numpy: pip install 'linuxdmabuf[numpy]'",
                                  name="numpy") from e
    return numpy


def _mapping(source):
    """A mapping of a DmaBuf (the whole buffer, writable if its fd allows), or `source`
    itself when it already is a mapping or another buffer."""
    from .dmabuf import DmaBuf

    if isinstance(source, DmaBuf):
        return source.map()
    try:
        memoryview(source).release()
    except TypeError:
        raise TypeError(f"expected a DmaBuf or a buffer such as its map(), not {type(source).__name__}") from None
    return source


def _view(np, mapping, layout: PlaneLayout):
    size = memoryview(mapping).nbytes
    if layout.end > size:
        raise ValueError(f"a plane of shape {layout.shape} with pitch {layout.pitch} at offset {layout.offset} "
                         f"needs {layout.end} bytes; the buffer has {size}")
    return np.ndarray(layout.shape, np.dtype(layout.dtype), buffer=mapping, offset=layout.offset,
                      strides=layout.strides)


def array(source, dtype="u1", shape=None, *, offset: int = 0, strides=None):
    """A numpy array on `source`'s memory, no copy.

    `source` is a DmaBuf (mapped whole; writable unless its fd is O_RDONLY)
    or a mapping from DmaBuf.map() or any writable/read-only buffer. Without
    `shape`, a 1-D array of every whole `dtype` item from `offset` on;
    `strides` (bytes) as numpy takes them.
    """
    np = _numpy()
    mapping = _mapping(source)
    offset = _check_int(offset, "offset", 0)
    dtype = np.dtype(dtype)
    size = memoryview(mapping).nbytes
    if offset > size:
        raise ValueError(f"offset {offset} is past the end of the {size}-byte buffer")
    if shape is None:
        shape = ((size - offset) // dtype.itemsize,)
    elif strides is None:
        dims = (shape,) if isinstance(shape, int) else tuple(shape)
        need = offset + math.prod(dims) * dtype.itemsize
        if need > size:
            raise ValueError(f"an array of shape {dims} of {dtype} at offset {offset} needs {need} bytes; "
                             f"the buffer has {size}")
    return np.ndarray(shape, dtype, buffer=mapping, offset=offset, strides=strides)


def plane(source, width: int, height: int, *, pitch: int | None = None, dtype="u1", components: int = 1,
          offset: int = 0):
    """A 2-D array (height, width) -- or (height, width, components) -- on rows `pitch` bytes apart.

    For one plane of any layout a driver reports: e.g. a dumb buffer's
    ``plane(buf, dumb.width, dumb.height, pitch=dumb.pitch, components=4)``.
    `pitch` defaults to the packed row size.
    """
    np = _numpy()
    dtype = np.dtype(dtype)
    width = _check_int(width, "width", 1)
    height = _check_int(height, "height", 1)
    components = _check_int(components, "components", 1)
    row_bytes = width * components * dtype.itemsize
    pitch = row_bytes if pitch is None else _check_int(pitch, "pitch", 1)
    if pitch < row_bytes:
        raise ValueError(f"pitch {pitch} is less than a row of {width} x {components} {dtype} ({row_bytes} bytes)")
    layout = PlaneLayout(_check_int(offset, "offset", 0), pitch, width, height, dtype.str,
                         tuple(range(components)))
    return _view(np, _mapping(source), layout)


def frame(source, fourcc, width: int | None = None, height: int | None = None, *, pitches=None,
          offsets=None) -> tuple:
    """One array per plane of a frame in format `fourcc`, on one mapping of `source` (or one per plane).

    Planes as frame_layout() places them; e.g. ``y, uv = frame(buf, "NV12",
    640, 480)`` gives y (480, 640) and uv (240, 320, 2) with uv[..., 0] the U
    (Cb) samples. `fourcc` may be a V4L2 fourcc too ("YU12", "NM12", "RGB3":
    see V4L2_FORMATS), or the :class:`linuxdmabuf.v4l2.Format` a device
    chose, which gives the size and each plane's bytesperline:
    ``frame(frame.buffer, fmt)`` for a captured frame. For a multi-planar
    V4L2 format (NM12...) `source` is the tuple of one DmaBuf per plane.
    """
    np = _numpy()
    if not isinstance(fourcc, str):  # a v4l2.Format: fourcc, size and pitches as the driver set them
        width, height = fourcc.width, fourcc.height
        pitches = pitches if pitches is not None else [p.bytesperline or None for p in fourcc.planes]
        fourcc = fourcc.fourcc
    if width is None or height is None:
        raise TypeError("frame() needs width and height, or a v4l2.Format as its fourcc")
    separate = fourcc in V4L2_FORMATS and fourcc not in FORMATS and V4L2_FORMATS[fourcc][1]
    fourcc = fourcc if fourcc in FORMATS else V4L2_FORMATS.get(fourcc, (fourcc,))[0]
    if separate:  # one buffer per plane, each plane at offset 0 of its own
        planes = tuple(source) if isinstance(source, (tuple, list)) else (source,)
        count = len(FORMATS[fourcc])
        if len(planes) != count:
            raise ValueError(f"a multi-planar {fourcc} frame needs {count} buffers, one per plane, not {len(planes)}")
        layouts = frame_layout(fourcc, width, height, pitches=pitches, offsets=[0] * count)
        return tuple(_view(np, _mapping(p), layout) for p, layout in zip(planes, layouts))
    layouts = frame_layout(fourcc, width, height, pitches=pitches, offsets=offsets)
    mapping = _mapping(source)
    return tuple(_view(np, mapping, layout) for layout in layouts)
