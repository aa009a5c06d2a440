"""Small helpers shared by the tests."""
import fcntl
import os


def sealed_memfd(size: int, seals: int = fcntl.F_SEAL_SHRINK, flags: int = 0) -> int:
    """A memfd of `size` bytes carrying `seals`, as udmabuf wants it (F_SEAL_SHRINK)."""
    fd = os.memfd_create("linuxdmabuf-test", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING | flags)
    try:
        os.ftruncate(fd, size)
        if seals:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_fds() -> dict:
    """This process's fds and what /proc shows for them."""
    found = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:
            pass
    return found


def cloexec(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
