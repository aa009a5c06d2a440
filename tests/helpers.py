"""Small helpers shared by the tests."""
import fcntl
import os
import signal
import subprocess


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


def run_group(argv: list, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run for a command that boots a VM: it runs in a session of its own, and on timeout the whole
    session (the VM runner, vng and its qemu) is killed, so no VM outlives the test."""
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                          **kwargs) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)
