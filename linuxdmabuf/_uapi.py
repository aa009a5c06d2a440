"""The raw layer: the kernel's names for its structs, constants and ioctls.

Struct layouts come from cdefs/ (one file per kernel header) through cffi's
generated module; the ioctl request numbers are computed here exactly as the
headers' _IO/_IOW/_IOWR macros compute them, from the sizes cffi reports.
tests/test_uapi_layout.py compiles a C probe against the kernel's own headers
and checks every number and offset below against it.
"""
import os
import sys

try:
    from ._ffi import ffi
except ModuleNotFoundError as e:
    if e.name != f"{__package__}._ffi":
        raise
    raise ImportError(f"{__package__}._ffi is generated from cdefs/ when the package is built: install it "
                      "(pip install . or pip install -e . in a source tree), or generate it in place with "
                      "python cdefs/build.py") from None

lib = ffi.dlopen(None)  # the C library: syscall() is declared (cdefs/libc.h)

# include/uapi/asm-generic/ioctl.h; alpha, mips, powerpc and sparc override the
# widths and direction values in their own asm/ioctl.h.
if os.uname().machine.startswith(("alpha", "mips", "ppc", "powerpc", "sparc")):
    _IOC_SIZEBITS, _IOC_NONE, _IOC_READ, _IOC_WRITE = 13, 1, 2, 4
else:
    _IOC_SIZEBITS, _IOC_NONE, _IOC_READ, _IOC_WRITE = 14, 0, 2, 1
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = 8
_IOC_SIZESHIFT = 16
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS


def _IOC(direction: int, type_: str, nr: int, size: int) -> int:
    if size >= 1 << _IOC_SIZEBITS:
        raise ValueError(f"ioctl argument of {size} bytes does not fit in _IOC_SIZEBITS")
    return (direction << _IOC_DIRSHIFT) | (ord(type_) << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT)


def _IOR(type_: str, nr: int, ctype: str) -> int:
    return _IOC(_IOC_READ, type_, nr, ffi.sizeof(ctype))


def _IOW(type_: str, nr: int, ctype: str) -> int:
    return _IOC(_IOC_WRITE, type_, nr, ffi.sizeof(ctype))


def _IOWR(type_: str, nr: int, ctype: str) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, ffi.sizeof(ctype))


def fourcc_code(name: str) -> int:
    """drm_fourcc.h's fourcc_code() and videodev2.h's v4l2_fourcc(): 4 ASCII characters, little-endian
    ("XR24" is DRM_FORMAT_XRGB8888, "YUYV" V4L2_PIX_FMT_YUYV)."""
    if not isinstance(name, str):
        raise TypeError(f"fourcc must be a 4-character str such as 'XR24' or 'YUYV', not {type(name).__name__}")
    if len(name) != 4 or not name.isascii():
        raise ValueError(f"fourcc must be 4 ASCII characters such as 'XR24' or 'YUYV', not {name!r}")
    return int.from_bytes(name.encode(), "little")


def fourcc_name(code: int) -> str:
    """The characters of a fourcc; bit 31 (the big-endian flag of both V4L2 and DRM) shown as "-BE"."""
    name = (code & 0x7FFFFFFF).to_bytes(4, "little").decode("ascii", errors="replace")
    return name + "-BE" if code & 0x80000000 else name


# linux/dma-buf.h
DMA_BUF_IOCTL_SYNC = _IOW("b", 0, "struct dma_buf_sync")
DMA_BUF_SET_NAME = _IOW("b", 1, "char *")  # the header's own definition: the pointer's size
DMA_BUF_SET_NAME_A = _IOW("b", 1, "__u32")
DMA_BUF_SET_NAME_B = _IOW("b", 1, "__u64")
DMA_BUF_IOCTL_EXPORT_SYNC_FILE = _IOWR("b", 2, "struct dma_buf_export_sync_file")
DMA_BUF_IOCTL_IMPORT_SYNC_FILE = _IOW("b", 3, "struct dma_buf_import_sync_file")
DMA_BUF_SYNC_READ = ffi.integer_const("DMA_BUF_SYNC_READ")
DMA_BUF_SYNC_WRITE = ffi.integer_const("DMA_BUF_SYNC_WRITE")
DMA_BUF_SYNC_RW = ffi.integer_const("DMA_BUF_SYNC_RW")
DMA_BUF_SYNC_START = ffi.integer_const("DMA_BUF_SYNC_START")
DMA_BUF_SYNC_END = ffi.integer_const("DMA_BUF_SYNC_END")
DMA_BUF_SYNC_VALID_FLAGS_MASK = ffi.integer_const("DMA_BUF_SYNC_VALID_FLAGS_MASK")
DMA_BUF_NAME_LEN = ffi.integer_const("DMA_BUF_NAME_LEN")

# linux/dma-heap.h
DMA_HEAP_IOCTL_ALLOC = _IOWR("H", 0, "struct dma_heap_allocation_data")
DMA_HEAP_VALID_FD_FLAGS = ffi.integer_const("DMA_HEAP_VALID_FD_FLAGS")

# linux/udmabuf.h
UDMABUF_CREATE = _IOW("u", 0x42, "struct udmabuf_create")
UDMABUF_CREATE_LIST = _IOW("u", 0x43, "struct udmabuf_create_list")
UDMABUF_FLAGS_CLOEXEC = ffi.integer_const("UDMABUF_FLAGS_CLOEXEC")

# linux/sync_file.h
SYNC_IOC_MERGE = _IOWR(">", 3, "struct sync_merge_data")
SYNC_IOC_FILE_INFO = _IOWR(">", 4, "struct sync_file_info")
SYNC_IOC_SET_DEADLINE = _IOW(">", 5, "struct sync_set_deadline")

# drivers/dma-buf/sw_sync.c
SW_SYNC_IOC_CREATE_FENCE = _IOWR("W", 0, "struct sw_sync_create_fence_data")
SW_SYNC_IOC_INC = _IOW("W", 1, "__u32")
SW_SYNC_GET_DEADLINE = _IOWR("W", 2, "struct sw_sync_get_deadline")

# drm/drm.h, drm/drm_mode.h, drm/vgem_drm.h (DRM_IO* use _IO* with type 'd')
DRM_COMMAND_BASE = ffi.integer_const("DRM_COMMAND_BASE")
DRM_IOCTL_VERSION = _IOWR("d", 0x00, "struct drm_version")
DRM_IOCTL_GEM_CLOSE = _IOW("d", 0x09, "struct drm_gem_close")
DRM_IOCTL_GET_CAP = _IOWR("d", 0x0C, "struct drm_get_cap")
DRM_IOCTL_PRIME_HANDLE_TO_FD = _IOWR("d", 0x2D, "struct drm_prime_handle")
DRM_IOCTL_PRIME_FD_TO_HANDLE = _IOWR("d", 0x2E, "struct drm_prime_handle")
DRM_IOCTL_MODE_CREATE_DUMB = _IOWR("d", 0xB2, "struct drm_mode_create_dumb")
DRM_IOCTL_MODE_MAP_DUMB = _IOWR("d", 0xB3, "struct drm_mode_map_dumb")
DRM_IOCTL_MODE_DESTROY_DUMB = _IOWR("d", 0xB4, "struct drm_mode_destroy_dumb")
DRM_IOCTL_VGEM_FENCE_ATTACH = _IOWR("d", DRM_COMMAND_BASE + ffi.integer_const("DRM_VGEM_FENCE_ATTACH"),
                                    "struct drm_vgem_fence_attach")
DRM_IOCTL_VGEM_FENCE_SIGNAL = _IOW("d", DRM_COMMAND_BASE + ffi.integer_const("DRM_VGEM_FENCE_SIGNAL"),
                                   "struct drm_vgem_fence_signal")
DRM_IOCTL_SET_CLIENT_CAP = _IOW("d", 0x0D, "struct drm_set_client_cap")
DRM_IOCTL_SET_MASTER = _IOC(_IOC_NONE, "d", 0x1E, 0)
DRM_IOCTL_SYNCOBJ_CREATE = _IOWR("d", 0xBF, "struct drm_syncobj_create")
DRM_IOCTL_SYNCOBJ_DESTROY = _IOWR("d", 0xC0, "struct drm_syncobj_destroy")
DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD = _IOWR("d", 0xC1, "struct drm_syncobj_handle")
DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE = _IOWR("d", 0xC2, "struct drm_syncobj_handle")
DRM_IOCTL_SYNCOBJ_WAIT = _IOWR("d", 0xC3, "struct drm_syncobj_wait")
DRM_IOCTL_SYNCOBJ_RESET = _IOWR("d", 0xC4, "struct drm_syncobj_array")
DRM_IOCTL_SYNCOBJ_SIGNAL = _IOWR("d", 0xC5, "struct drm_syncobj_array")
DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT = _IOWR("d", 0xCA, "struct drm_syncobj_timeline_wait")
DRM_IOCTL_SYNCOBJ_QUERY = _IOWR("d", 0xCB, "struct drm_syncobj_timeline_array")
DRM_IOCTL_SYNCOBJ_TRANSFER = _IOWR("d", 0xCC, "struct drm_syncobj_transfer")
DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL = _IOWR("d", 0xCD, "struct drm_syncobj_timeline_array")
DRM_IOCTL_SYNCOBJ_EVENTFD = _IOWR("d", 0xCF, "struct drm_syncobj_eventfd")
DRM_IOCTL_MODE_GETRESOURCES = _IOWR("d", 0xA0, "struct drm_mode_card_res")
DRM_IOCTL_MODE_GETCONNECTOR = _IOWR("d", 0xA7, "struct drm_mode_get_connector")
DRM_IOCTL_MODE_GETPROPERTY = _IOWR("d", 0xAA, "struct drm_mode_get_property")
DRM_IOCTL_MODE_GETPROPBLOB = _IOWR("d", 0xAC, "struct drm_mode_get_blob")
DRM_IOCTL_MODE_RMFB = _IOWR("d", 0xAF, "unsigned int")
DRM_IOCTL_MODE_GETPLANERESOURCES = _IOWR("d", 0xB5, "struct drm_mode_get_plane_res")
DRM_IOCTL_MODE_GETPLANE = _IOWR("d", 0xB6, "struct drm_mode_get_plane")
DRM_IOCTL_MODE_ADDFB2 = _IOWR("d", 0xB8, "struct drm_mode_fb_cmd2")
DRM_IOCTL_MODE_OBJ_GETPROPERTIES = _IOWR("d", 0xB9, "struct drm_mode_obj_get_properties")
DRM_IOCTL_MODE_ATOMIC = _IOWR("d", 0xBC, "struct drm_mode_atomic")
DRM_IOCTL_MODE_CREATEPROPBLOB = _IOWR("d", 0xBD, "struct drm_mode_create_blob")
DRM_IOCTL_MODE_DESTROYPROPBLOB = _IOWR("d", 0xBE, "struct drm_mode_destroy_blob")
DRM_CLIENT_CAP_UNIVERSAL_PLANES = ffi.integer_const("DRM_CLIENT_CAP_UNIVERSAL_PLANES")
DRM_CLIENT_CAP_ATOMIC = ffi.integer_const("DRM_CLIENT_CAP_ATOMIC")
DRM_CLIENT_CAP_WRITEBACK_CONNECTORS = ffi.integer_const("DRM_CLIENT_CAP_WRITEBACK_CONNECTORS")
DRM_MODE_TYPE_PREFERRED = ffi.integer_const("DRM_MODE_TYPE_PREFERRED")
DRM_MODE_CONNECTOR_WRITEBACK = ffi.integer_const("DRM_MODE_CONNECTOR_WRITEBACK")
DRM_MODE_OBJECT_CRTC = ffi.integer_const("DRM_MODE_OBJECT_CRTC")
DRM_MODE_OBJECT_CONNECTOR = ffi.integer_const("DRM_MODE_OBJECT_CONNECTOR")
DRM_MODE_OBJECT_PLANE = ffi.integer_const("DRM_MODE_OBJECT_PLANE")
DRM_MODE_FB_MODIFIERS = ffi.integer_const("DRM_MODE_FB_MODIFIERS")
DRM_MODE_ATOMIC_TEST_ONLY = ffi.integer_const("DRM_MODE_ATOMIC_TEST_ONLY")
DRM_MODE_ATOMIC_NONBLOCK = ffi.integer_const("DRM_MODE_ATOMIC_NONBLOCK")
DRM_MODE_ATOMIC_ALLOW_MODESET = ffi.integer_const("DRM_MODE_ATOMIC_ALLOW_MODESET")
DRM_CAP_PRIME = ffi.integer_const("DRM_CAP_PRIME")
DRM_CAP_SYNCOBJ = ffi.integer_const("DRM_CAP_SYNCOBJ")
DRM_CAP_SYNCOBJ_TIMELINE = ffi.integer_const("DRM_CAP_SYNCOBJ_TIMELINE")
DRM_SYNCOBJ_CREATE_SIGNALED = ffi.integer_const("DRM_SYNCOBJ_CREATE_SIGNALED")
DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_IMPORT_SYNC_FILE = ffi.integer_const("DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_IMPORT_SYNC_FILE")
DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_TIMELINE = ffi.integer_const("DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_TIMELINE")
DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE = ffi.integer_const("DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE")
DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_TIMELINE = ffi.integer_const("DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_TIMELINE")
DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT = ffi.integer_const("DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT")
DRM_SYNCOBJ_QUERY_FLAGS_LAST_SUBMITTED = ffi.integer_const("DRM_SYNCOBJ_QUERY_FLAGS_LAST_SUBMITTED")
DRM_PRIME_CAP_IMPORT = ffi.integer_const("DRM_PRIME_CAP_IMPORT")
DRM_PRIME_CAP_EXPORT = ffi.integer_const("DRM_PRIME_CAP_EXPORT")
VGEM_FENCE_WRITE = ffi.integer_const("VGEM_FENCE_WRITE")

# linux/videodev2.h
VIDIOC_QUERYCAP = _IOR("V", 0, "struct v4l2_capability")
VIDIOC_ENUM_FMT = _IOWR("V", 2, "struct v4l2_fmtdesc")
VIDIOC_G_FMT = _IOWR("V", 4, "struct v4l2_format")
VIDIOC_S_FMT = _IOWR("V", 5, "struct v4l2_format")
VIDIOC_REQBUFS = _IOWR("V", 8, "struct v4l2_requestbuffers")
VIDIOC_QUERYBUF = _IOWR("V", 9, "struct v4l2_buffer")
VIDIOC_QBUF = _IOWR("V", 15, "struct v4l2_buffer")
VIDIOC_EXPBUF = _IOWR("V", 16, "struct v4l2_exportbuffer")
VIDIOC_DQBUF = _IOWR("V", 17, "struct v4l2_buffer")
VIDIOC_STREAMON = _IOW("V", 18, "int")
VIDIOC_STREAMOFF = _IOW("V", 19, "int")
V4L2_CAP_VIDEO_CAPTURE = ffi.integer_const("V4L2_CAP_VIDEO_CAPTURE")
V4L2_CAP_VIDEO_OUTPUT = ffi.integer_const("V4L2_CAP_VIDEO_OUTPUT")
V4L2_CAP_VIDEO_M2M = ffi.integer_const("V4L2_CAP_VIDEO_M2M")
V4L2_CAP_VIDEO_CAPTURE_MPLANE = ffi.integer_const("V4L2_CAP_VIDEO_CAPTURE_MPLANE")
V4L2_CAP_VIDEO_OUTPUT_MPLANE = ffi.integer_const("V4L2_CAP_VIDEO_OUTPUT_MPLANE")
V4L2_CAP_VIDEO_M2M_MPLANE = ffi.integer_const("V4L2_CAP_VIDEO_M2M_MPLANE")
V4L2_CAP_STREAMING = ffi.integer_const("V4L2_CAP_STREAMING")
V4L2_CAP_DEVICE_CAPS = ffi.integer_const("V4L2_CAP_DEVICE_CAPS")
V4L2_BUF_TYPE_VIDEO_CAPTURE = ffi.integer_const("V4L2_BUF_TYPE_VIDEO_CAPTURE")
V4L2_BUF_TYPE_VIDEO_OUTPUT = ffi.integer_const("V4L2_BUF_TYPE_VIDEO_OUTPUT")
V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE = ffi.integer_const("V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE")
V4L2_BUF_TYPE_VIDEO_OUTPUT_MPLANE = ffi.integer_const("V4L2_BUF_TYPE_VIDEO_OUTPUT_MPLANE")
V4L2_MEMORY_MMAP = ffi.integer_const("V4L2_MEMORY_MMAP")
V4L2_MEMORY_DMABUF = ffi.integer_const("V4L2_MEMORY_DMABUF")
V4L2_FIELD_NONE = ffi.integer_const("V4L2_FIELD_NONE")
V4L2_BUF_CAP_SUPPORTS_MMAP = ffi.integer_const("V4L2_BUF_CAP_SUPPORTS_MMAP")
V4L2_BUF_CAP_SUPPORTS_DMABUF = ffi.integer_const("V4L2_BUF_CAP_SUPPORTS_DMABUF")
V4L2_BUF_FLAG_QUEUED = ffi.integer_const("V4L2_BUF_FLAG_QUEUED")
V4L2_BUF_FLAG_DONE = ffi.integer_const("V4L2_BUF_FLAG_DONE")
V4L2_BUF_FLAG_ERROR = ffi.integer_const("V4L2_BUF_FLAG_ERROR")
V4L2_BUF_FLAG_LAST = ffi.integer_const("V4L2_BUF_FLAG_LAST")
VIDEO_MAX_PLANES = ffi.integer_const("VIDEO_MAX_PLANES")

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

# pidfd_getfd(2), Linux 5.6: glibc has no wrapper. 438 in the unified syscall
# table every architecture shares, except that alpha numbers it 110 higher
# and MIPS adds its ABI's base (o32 4000, n64 5000; n32 6000 is not told apart).
_MACHINE = os.uname().machine
if _MACHINE.startswith("alpha"):
    SYS_pidfd_getfd = 548
elif _MACHINE.startswith("mips"):
    SYS_pidfd_getfd = (5000 if sys.maxsize > 2**32 else 4000) + 438
else:
    SYS_pidfd_getfd = 438
