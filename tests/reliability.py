"""Shared by the reliability tests: sizes scaled by $LINUXDMABUF_LONG, and the
baseline every leak check compares with.

The baseline is what a leak would change: this process's fd table (number ->
what /proc shows), the number of dma-bufs in the whole kernel (debugfs
bufinfo where it is readable, else every dma-buf any process holds by fd or
mapping, from /proc) and the number of sw_sync timelines alive (debugfs
sync/info; a leaked fence keeps its timeline alive).
"""
import contextlib
import gc
import os
import re
import resource
import warnings
from dataclasses import dataclass

from helpers import open_fds

from linuxdmabuf._mounts import debugfs_mount

LONG = os.environ.get("LINUXDMABUF_LONG", "") not in ("", "0")


def scaled(ci: int, long: int) -> int:
    """`long` when LINUXDMABUF_LONG=1, else the CI size `ci`."""
    return long if LONG else ci


def _debugfs(*parts) -> str | None:
    mount = debugfs_mount()
    path = os.path.join(mount, *parts) if mount else None
    return path if path and os.access(path, os.R_OK) else None


def kernel_dmabufs() -> tuple:
    """(number of dma-bufs, where it was counted).

    debugfs bufinfo ends with "Total <n> objects, <bytes> bytes" and counts
    every dma-buf of the kernel; without it, the distinct inodes of the
    dma-bufs that any process we may look at holds by fd or maps.
    """
    bufinfo = _debugfs("dma_buf", "bufinfo")
    if bufinfo:
        with open(bufinfo, errors="surrogateescape") as f:
            totals = re.findall(r"^Total (\d+) objects, \d+ bytes$", f.read(), re.M)
        return int(totals[-1]), "bufinfo"
    inodes = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/dmabuf:"):
                        inodes.add(os.stat(f"/proc/{pid}/fd/{fd}").st_ino)
                except OSError:
                    pass
            with open(f"/proc/{pid}/maps", errors="surrogateescape") as f:
                for line in f:
                    fields = line.split(None, 5)
                    if len(fields) == 6 and fields[5].startswith("/dmabuf:"):
                        inodes.add(int(fields[4]))
        except OSError:
            pass  # gone, or not ours to read
    return len(inodes), "/proc"


def sw_sync_timelines() -> int | None:
    """How many sw_sync timelines exist (debugfs sync/info), None where it cannot be read."""
    info = _debugfs("sync", "info")
    if info is None:
        return None
    with open(info, errors="surrogateescape") as f:
        text = f.read()
    objs = text.split("fences:")[0].split("--------------", 1)[-1]
    # One "<name>: <value>" line per timeline, then its "  fence ..." lines and a blank line.
    return sum(1 for line in objs.splitlines() if line and not line[0].isspace())


@dataclass(frozen=True)
class Snapshot:
    fds: dict
    dmabufs: int
    timelines: int | None
    source: str


def _fds() -> dict:
    """open_fds(), a dma-buf named by its inode (its /proc link changes with its name)."""
    found = open_fds()
    for fd, target in found.items():
        if target.startswith("/dmabuf:"):
            try:
                found[fd] = f"dma-buf inode {os.fstat(fd).st_ino}"
            except OSError:
                pass
    return found


def snapshot() -> Snapshot:
    count, source = kernel_dmabufs()
    return Snapshot(_fds(), count, sw_sync_timelines(), source)


def differences(before: Snapshot, after: Snapshot) -> list:
    found = []
    for fd in sorted(set(before.fds) | set(after.fds)):
        if before.fds.get(fd) != after.fds.get(fd):
            found.append(f"fd {fd}: {before.fds.get(fd, 'closed')} -> {after.fds.get(fd, 'closed')}")
    if before.dmabufs != after.dmabufs:
        found.append(f"dma-bufs in the kernel ({after.source}): {before.dmabufs} -> {after.dmabufs}")
    if before.timelines != after.timelines:
        found.append(f"sw_sync timelines: {before.timelines} -> {after.timelines}")
    return found


@contextlib.contextmanager
def at_baseline():
    """Fails unless the block leaves the fds, the kernel's dma-bufs and sw_sync
    timelines exactly as it found them, without help from the garbage
    collector (an object it closes warns "unclosed ..." and counts as a leak)."""
    before = snapshot()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        yield before
        after = snapshot()
        gc.collect()
    problems = differences(before, after)
    problems += [f"closed by the garbage collector: {w.message}" for w in caught
                 if issubclass(w.category, ResourceWarning) and "unclosed" in str(w.message)]
    shown = problems[:8] + ([f"... and {len(problems) - 8} more"] if len(problems) > 8 else [])
    assert not problems, "not at baseline: " + "; ".join(shown)


@contextlib.contextmanager
def free_fds(count: int):
    """Lets the block create at most `count` new fds (RLIMIT_NOFILE), then EMFILE.

    The holes below the highest open fd are filled with /dev/null first, so
    the free numbers are exactly the `count` above it; yields the fds open
    before (the fillers excluded). Restores the limit and closes the fillers.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = open_fds()
    top = max(before)
    fillers = []
    try:
        while True:
            fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            if fd > top:
                os.close(fd)
                break
            fillers.append(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (top + 1 + count, hard))
        try:
            yield before
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    finally:
        for fd in fillers:
            os.close(fd)
