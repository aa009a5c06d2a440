"""Which processes hold which dma-bufs: one scan of /proc, debugfs and sysfs.

For every process (psutil), the dma-bufs it holds through file descriptors
(/proc/<pid>/fd: a dma-buf's link reads "/dmabuf:<name>", and stat() through
it gives the buffer's inode and size) and through mappings (/proc/<pid>/maps,
where a mapping shows the same path and the buffer's inode). A buffer is its
inode. The exporter and the reference count of each buffer come from debugfs
dma_buf/bufinfo where this user may read it (root), which also adds the
buffers no visible process holds and the sizes of buffers that are only
mapped; otherwise, or for a buffer bufinfo does not list, from the fdinfo of
one of its fds. /sys/kernel/dmabuf/buffers (kernels before 7.0 built with
CONFIG_DMABUF_SYSFS_STATS) is read too where it exists.

Processes exit and fds close while we read: those are skipped silently.
Processes this user may not inspect are listed in Scan.denied. Used by
``linuxdmabuf dump``, ``watch``, and the CMA view (linuxdmabuf.cma).
"""
import contextlib
import gc
import os
import re
from typing import NamedTuple

from ._mounts import debugfs_mount
from .dmabuf import parse_fdinfo

PREFIX = "/dmabuf:"  # what /proc shows for a dma-buf file (dmabuffs_dname)
SYSFS_BUFFERS = "/sys/kernel/dmabuf/buffers"


# -- parsing (pure functions of the kernel's text) --------------------------------

class Mapping(NamedTuple):
    """One /proc/<pid>/maps line of a dma-buf mapping."""

    start: int
    end: int
    inode: int
    dev: str
    name: str

    @property
    def length(self) -> int:
        return self.end - self.start


def parse_maps(text: str) -> list:
    """The dma-buf mappings in the text of a /proc/<pid>/maps.

    A line is "start-end perms offset major:minor inode path"; for a dma-buf
    the path is "/dmabuf:<name>" and the inode column is the buffer's inode.
    Only the lines around each "/dmabuf:" are looked at: most of a process's
    maps are other files.
    """
    found = []
    at = text.find(PREFIX)
    while at >= 0:
        start = text.rfind("\n", 0, at) + 1
        end = text.find("\n", at)
        if end < 0:
            end = len(text)
        fields = text[start:end].split(None, 5)
        if len(fields) == 6 and fields[5].startswith(PREFIX):
            first, _, last = fields[0].partition("-")
            try:
                found.append(Mapping(int(first, 16), int(last, 16), int(fields[4]), fields[3], fields[5][len(PREFIX):]))
            except ValueError:
                pass
        at = text.find(PREFIX, end)
    return found


# A buffer's line (it starts with its zero-padded size) and the tab-indented
# lines under it: its fences, then "Attached Devices:" and one line per device.
_BUFINFO_ENTRY = re.compile(r"^(\d+\t[^\n]*)((?:\n\t[^\n]*)*)", re.M)
_BUFINFO_HEADER = re.compile(r"^size[ \t][^\n]*exp_name[^\n]*$", re.M)
# The columns since Linux 5.x, matched whole by one expression: size, count, exp_name, ino, name, the lines under.
_STANDARD = ["size", "flags", "mode", "count", "exp_name", "ino", "name"]
_STANDARD_ENTRY = re.compile(r"^(\d+)\t[0-9a-f]+\t[0-9a-f]+\t(\d+)\t([^\t\n]*)\t(\d+)\t([^\n]*)((?:\n\t[^\n]*)*)",
                             re.M)
_ATTACHED = "\n\tAttached Devices:"


def bufinfo_rows(text: str) -> list:
    """The buffers of debugfs dma_buf/bufinfo as strings: (size, count, exp_name, ino, name, lines under it).

    The columns are read from the header line ("size flags mode count
    exp_name ino name" on 7.2; older kernels lack some, and a missing one
    is ""), so a kernel that reorders or drops one still parses; the name,
    last, may contain tabs. The lines under a buffer are its fences and
    attached devices (see attached_devices()).
    """
    header = _BUFINFO_HEADER.search(text)
    if header is None:
        return []
    columns = [c.strip() for c in header.group(0).split("\t")]
    if columns == _STANDARD:
        return _STANDARD_ENTRY.findall(text, header.end())
    index = {name: i for i, name in enumerate(columns)}
    last = len(columns) - 1
    rows = []
    for line, under in _BUFINFO_ENTRY.findall(text, header.end()):
        fields = line.split("\t", last)
        if len(fields) <= last:
            continue
        rows.append(tuple(fields[index[c]].strip() if c in index and c != "name" else
                          fields[index[c]] if c in index else "" for c in ("size", "count", "exp_name", "ino", "name"))
                    + (under,))
    return rows


def attached_devices(under: str) -> tuple:
    """The devices listed after "Attached Devices:" in the lines under a bufinfo buffer."""
    at = under.find(_ATTACHED)
    if at < 0:
        return ()
    return tuple(d.strip() for d in under[at + len(_ATTACHED):].split("\n\t") if d.strip())


def read_sysfs_buffers(root: str = SYSFS_BUFFERS) -> dict | None:
    """/sys/kernel/dmabuf/buffers/<inode>/{size,exporter_name}: inode -> (size, exporter).

    None where the directory does not exist (CONFIG_DMABUF_SYSFS_STATS is off,
    and the kernel removed it altogether in 7.0). Buffers freed while we read
    are skipped.
    """
    try:
        names = os.listdir(root)
    except (FileNotFoundError, NotADirectoryError):
        return None
    found = {}
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(os.path.join(root, name, "size")) as f:
                size = int(f.read())
            with open(os.path.join(root, name, "exporter_name")) as f:
                exporter = f.read().strip()
        except (OSError, ValueError):
            continue
        found[int(name)] = (size, exporter)
    return found


# -- the scan --------------------------------------------------------------------

class Holder(NamedTuple):
    """How one process holds one buffer: its fd numbers and its mappings."""

    pid: int
    name: str
    fds: list
    mappings: int = 0
    mapped_bytes: int = 0


# Where a buffer was seen: bits of Buffer.seen, named in Buffer.sources and the JSON report.
SOURCES = ("fd", "maps", "fdinfo", "debugfs", "sysfs", "map_files")
FD, MAPS, FDINFO, DEBUGFS, SYSFS, MAP_FILES = (1 << i for i in range(len(SOURCES)))
_SOURCE_NAMES = [tuple(sorted(name for i, name in enumerate(SOURCES) if mask >> i & 1))
                 for mask in range(1 << len(SOURCES))]


class Buffer:
    """One dma-buf, identified by its inode, with every process seen holding it.

    `refs` is the kernel's count of references to the buffer's file (each
    fd and each mapping, in any process, and kernel users); `sources` says
    where it was seen: "fd", "maps", "fdinfo", "debugfs", "sysfs", "map_files".
    """

    __slots__ = ("inode", "size", "exporter", "name", "refs", "attached", "holders", "seen")

    def __init__(self, inode: int):
        self.inode = inode
        self.size: int | None = None
        self.exporter: str | None = None
        self.name = ""
        self.refs: int | None = None
        self.attached: tuple = ()
        self.holders: dict[int, Holder] = {}  # pid -> Holder
        self.seen = 0  # SOURCES bits

    @property
    def sources(self) -> set:
        return set(_SOURCE_NAMES[self.seen])

    def __repr__(self) -> str:
        return (f"Buffer(inode={self.inode}, size={self.size}, exporter={self.exporter!r}, name={self.name!r}, "
                f"refs={self.refs}, holders={sorted(self.holders)})")


class Scan:
    """What one pass over /proc (and debugfs, sysfs) found."""

    def __init__(self, debugfs: str = "not mounted", sysfs: str = "absent"):
        self.buffers: dict[int, Buffer] = {}  # inode -> Buffer
        self.names: dict[int, str] = {}  # pid -> process name, for holders
        self.denied: list[int] = []  # pids this user may not inspect
        self.debugfs, self.sysfs = debugfs, sysfs

    def buffer(self, inode: int) -> Buffer:
        found = self.buffers.get(inode)
        if found is None:
            found = self.buffers[inode] = Buffer(inode)
        return found


def _read(path: str, size: int = 0) -> str:
    """A kernel file's text: whole, or one read of `size` bytes (enough for an fdinfo)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if size:
            return os.read(fd, size).decode(errors="replace")
        chunks: list[bytes] = []
        while True:
            data = os.read(fd, 1 << 16)
            if not data:
                return b"".join(chunks).decode(errors="replace")
            chunks.append(data)
    finally:
        os.close(fd)


def _read_process(pid: int) -> tuple:
    """One process's dma-bufs: ({inode: [fd, ...]}, {inode: (size, name)}, {inode: [mappings, bytes, start, end]}).

    Its fds whose link reads "/dmabuf:<name>", then stat() through the link
    for the inode and size (a dma-buf's inode carries the buffer's size); an
    fd closed or reused meanwhile is skipped. Then its maps.
    """
    fd_dir = f"/proc/{pid}/fd/"
    readlink, fstat = os.readlink, os.stat
    fds: dict = {}
    seen: dict[int, tuple] = {}
    maps: dict = {}
    for fd in os.listdir(fd_dir):
        link = fd_dir + fd
        try:
            target = readlink(link)
            if not target.startswith(PREFIX):
                continue
            st = fstat(link)
        except FileNotFoundError:
            continue  # closed since listdir
        if st.st_mode & 0o170000:
            continue  # the number now belongs to a file: a dma-buf, an anonymous inode, has no file type
        held = fds.get(st.st_ino)
        if held is None:
            fds[st.st_ino] = [int(fd)]
            seen[st.st_ino] = (st.st_size, target[len(PREFIX):])
        else:
            held.append(int(fd))
    for m in parse_maps(_read(f"/proc/{pid}/maps")):
        counts = maps.get(m.inode)
        if counts is None:
            maps[m.inode] = [1, m.end - m.start, m.start, m.end]
            if m.inode not in seen:
                seen[m.inode] = (None, m.name)
        else:
            counts[0] += 1
            counts[1] += m.end - m.start
    return fds, seen, maps


def _comm(pid: int) -> str | None:
    """The process's name as the kernel keeps it (/proc/<pid>/comm); None once it has exited."""
    try:
        return _read(f"/proc/{pid}/comm").rstrip("\n")
    except FileNotFoundError:
        return None
    except OSError:
        return "?"


def scan() -> Scan:
    """Read every process's dma-bufs (psutil.pids()), then debugfs and sysfs.

    Processes that exit, and fds that close, while being read are skipped;
    the processes this user may not inspect are listed in Scan.denied.
    """
    with _no_gc():
        return _scan()


@contextlib.contextmanager
def _no_gc():
    """Without the cyclic garbage collector: a scan builds many objects and no cycles,
    and each collection of the older generations would walk them all again."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _scan() -> Scan:
    import psutil

    result = Scan()
    buffers = result.buffers
    mapped_only: dict[int, tuple] = {}  # inode -> (pid, start, end) of one mapping, to size buffers no fd showed
    for pid in psutil.pids():
        try:
            fds, seen, maps = _read_process(pid)
        except PermissionError:
            result.denied.append(pid)
            continue
        except OSError:
            continue  # it exited (ENOENT, ESRCH) while we read it
        if not seen:
            continue
        name = _comm(pid)
        if name is None:
            continue  # it exited: it holds nothing any more
        result.names[pid] = name
        for inode, (size, buf_name) in seen.items():
            buf = buffers.get(inode)
            if buf is None:
                buf = buffers[inode] = Buffer(inode)
            mapped = maps.get(inode)
            if mapped is None:
                buf.holders[pid] = Holder(pid, name, fds[inode])
            else:
                buf.holders[pid] = Holder(pid, name, fds.get(inode, []), mapped[0], mapped[1])
                buf.seen |= MAPS
            if size is not None:
                buf.size, buf.name = size, buf_name
                buf.seen |= FD
            elif buf.size is None:
                buf.name = buf_name
                mapped_only.setdefault(inode, (pid, mapped[2], mapped[3]))
    _add_kernel_views(result)
    _complete_from_fdinfo(result)
    _size_mapped_only(result, mapped_only)
    return result


def _add_kernel_views(result: Scan) -> None:
    """Exporters, reference counts and attachments from debugfs bufinfo (and
    sysfs), where this user can read them; they also list the buffers no
    visible process holds."""
    mount = debugfs_mount()
    rows: list = []
    if mount is not None:
        try:
            rows = bufinfo_rows(_read(os.path.join(mount, "dma_buf", "bufinfo")))
            result.debugfs = "read"
        except FileNotFoundError:
            result.debugfs = "no dma_buf/bufinfo"
        except PermissionError:
            result.debugfs = "not readable (root only)"
    buffers = result.buffers
    for size, count, exp_name, ino, name, under in rows:
        if not ino:
            continue
        ino = int(ino)
        buf = buffers.get(ino)
        if buf is None:
            buf = buffers[ino] = Buffer(ino)
        elif buf.size is not None:  # seen through an fd: size and name are known
            buf.exporter, buf.refs = exp_name, int(count) if count else None
            buf.seen |= DEBUGFS
            if not under.endswith(_ATTACHED):  # fences or devices under it
                buf.attached = attached_devices(under)
            continue
        buf.size, buf.name = int(size), "" if name == "<none>" else name
        buf.exporter, buf.refs, buf.attached = exp_name, int(count) if count else None, attached_devices(under)
        buf.seen |= DEBUGFS
    stats = read_sysfs_buffers()
    if stats is not None:
        result.sysfs = "read"
        for inode, (size, exporter) in stats.items():
            buf = result.buffer(inode)
            buf.seen |= SYSFS
            if buf.exporter is None:
                buf.exporter = exporter
            if buf.size is None:
                buf.size = size


def _complete_from_fdinfo(result: Scan) -> None:
    """The exporter and reference count of buffers the kernel views did not give,
    from the fdinfo of one of their fds; a buffer none of whose fds is still
    there was freed during the scan and is dropped."""
    for inode in [i for i, b in result.buffers.items() if b.exporter is None and any(h.fds for h in b.holders.values())]:
        buf = result.buffers[inode]
        for holder in buf.holders.values():
            for fd in holder.fds:
                try:
                    info = parse_fdinfo(_read(f"/proc/{holder.pid}/fdinfo/{fd}", 4096))
                except (OSError, KeyError, ValueError):
                    continue
                if info.ino == inode:
                    buf.exporter, buf.refs, buf.name = info.exp_name, info.count, info.name
                    buf.seen |= FDINFO
                    break
            if buf.exporter is not None:
                break
        else:
            del result.buffers[inode]


def _size_mapped_only(result: Scan, mapped_only: dict) -> None:
    """The size of a buffer seen only in maps, from /proc/<pid>/map_files (stat
    follows the link to the dma-buf's inode; the kernel allows it to root only)."""
    for inode, (pid, start, end) in mapped_only.items():
        buf = result.buffers.get(inode)
        if buf is None or buf.size is not None:
            continue
        try:
            st = os.stat(f"/proc/{pid}/map_files/{start:x}-{end:x}")
        except OSError:
            continue
        if st.st_ino == inode:
            buf.size = st.st_size
            buf.seen |= MAP_FILES


KERNEL_FD_TARGETS = ("anon_inode:sync_file", "anon_inode:syncobj_file")


def kernel_fds(pid="self") -> dict:
    """The dma-buf, sync_file and DRM syncobj fds of process `pid` (default this one): fd -> what
    /proc/<pid>/fd shows ("/dmabuf:<name>", "anon_inode:sync_file"...). Fds closing meanwhile are skipped."""
    found = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith(PREFIX) or target in KERNEL_FD_TARGETS:
            found[int(name)] = target
    return found
