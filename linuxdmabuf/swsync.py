"""sw_sync: software fence timelines in debugfs, for tests (drivers/dma-buf/sw_sync.c)."""
import errno
import os

from . import _uapi
from ._fd import FdObject
from ._mounts import debugfs_mount
from ._sys import UnsupportedError, check_int, encode_name, fd_target, ioctl, os_error
from ._uapi import ffi
from .syncfile import SyncFile, check_sync_file


def sw_sync_path() -> str:
    """<debugfs>/sync/sw_sync; UnsupportedError saying why there is none."""
    mount = debugfs_mount()
    if mount is None:
        raise UnsupportedError(errno.ENOENT, "debugfs is not mounted, so there is no sw_sync -- "
                                             "mount it as root: mount -t debugfs none /sys/kernel/debug")
    path = os.path.join(mount, "sync", "sw_sync")
    if not os.path.exists(path):
        if not os.access(mount, os.X_OK):
            raise os_error(errno.EACCES, f"look up {path}", "debugfs is readable by root only")
        raise UnsupportedError(errno.ENOENT, f"{path} does not exist: this kernel has no sw_sync (CONFIG_SW_SYNC)")
    return path


class SwSyncTimeline(FdObject):
    """A software fence timeline: fences at values, signaled by advance().

    For tests only. Its fences are signaled by userspace, so they are the
    "indefinite fences" Documentation/driver-api/dma-buf.rst warns about:
    importing one into a buffer that a device driver waits on can stall that
    driver until the timeline advances or is closed. Closing the timeline
    signals its pending fences with an error (ENOENT). On recent kernels
    every fence created taints the kernel ('L'). Needs debugfs, so normally
    root.
    """

    __slots__ = ()

    def __init__(self, fd=None):
        if fd is not None:
            super().__init__(fd)
            return
        self._fd = -1
        self._open(sw_sync_path(), os.O_RDWR, denied="sw_sync lives in debugfs, which normally only root may use")

    def _validate(self, fd: int) -> None:
        if not fd_target(fd).endswith("/sync/sw_sync"):
            raise ValueError(f"fd {fd} is not a sw_sync timeline (it is {fd_target(fd)!r})")

    def create_fence(self, value: int, name: str = "") -> SyncFile:
        """SW_SYNC_IOC_CREATE_FENCE: a fence that signals once the timeline reaches `value`.

        The timeline starts at 0 and counts in 32 bits; a value it has already
        reached gives a signaled fence, and so does one more than 2**31 ahead
        of it (the kernel compares ``(int)(value - timeline) <= 0``). The kernel ignores `name` (it names the
        timeline after the process).
        """
        value = check_int(value, "value")
        if not 0 <= value < 2**32:
            raise ValueError(f"value must be within 0..2**32-1, not {value}")
        data = ffi.new("struct sw_sync_create_fence_data *")
        data.value = value
        data.name = encode_name(name, "fence name")
        ioctl(self.fileno(), _uapi.SW_SYNC_IOC_CREATE_FENCE, data, "SW_SYNC_IOC_CREATE_FENCE")
        return SyncFile._wrap(data.fence)

    def advance(self, count: int = 1) -> None:
        """SW_SYNC_IOC_INC: move the timeline on by `count`, signaling the fences it reaches."""
        count = check_int(count, "count")
        if not 0 <= count < 2**32:
            raise ValueError(f"count must be within 0..2**32-1, not {count}")
        ioctl(self.fileno(), _uapi.SW_SYNC_IOC_INC, ffi.new("__u32 *", count), "SW_SYNC_IOC_INC")

    def deadline(self, sync_file) -> int | None:
        """SW_SYNC_GET_DEADLINE: the earliest deadline set on a sw_sync fence, None if none.

        `sync_file` must hold a single sw_sync fence (not a merge of several,
        not a signaled stub). Linux 6.3+.
        """
        data = ffi.new("struct sw_sync_get_deadline *")
        data.fence_fd = check_sync_file(sync_file)
        try:
            ioctl(self.fileno(), _uapi.SW_SYNC_GET_DEADLINE, data, "SW_SYNC_GET_DEADLINE",
                  {errno.EINVAL: f"fd {data.fence_fd} is not a sync_file holding one sw_sync fence",
                   errno.ENOTTY: "fence deadlines need Linux 6.3 or later"})
        except FileNotFoundError:
            return None
        return data.deadline_ns
