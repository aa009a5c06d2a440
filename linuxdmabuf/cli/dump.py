"""``linuxdmabuf dump``: which processes hold which dma-bufs, like Android's dmabuf_dump.

For every process (psutil), the dma-bufs it holds through file descriptors
(/proc/<pid>/fd and fdinfo: inode, size, exporter, name, reference count) and
through mappings (/proc/<pid>/maps, where a dma-buf shows as "/dmabuf:<name>"
with its inode). Then one row per buffer -- a buffer is its inode -- with the
processes sharing it, and totals per exporter and per process, each buffer
counted once. Where readable, debugfs dma_buf/bufinfo (root) and
/sys/kernel/dmabuf/buffers (kernels before 7.0 built with
CONFIG_DMABUF_SYSFS_STATS) add the buffers no visible process holds, and the
sizes of buffers that are only mapped.

Processes exit and fds close while we read: those are skipped silently.
Processes this user may not inspect are counted and reported once.
"""
import argparse
import csv
import json
import os
import sys
from dataclasses import dataclass, field

from ..dmabuf import parse_fdinfo
from ..swsync import debugfs_mount
from ._tools import EXIT_MISSING_PACKAGE, MissingPackage, human, kib, need, plural, stdout_closed_ok

PREFIX = "/dmabuf:"  # what /proc shows for a dma-buf file (dmabuffs_dname)
SYSFS_BUFFERS = "/sys/kernel/dmabuf/buffers"


# -- parsing (pure functions of the kernel's text) --------------------------------

@dataclass(frozen=True)
class Mapping:
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
    """
    if PREFIX not in text:
        return []
    found = []
    for line in text.splitlines():
        if PREFIX not in line:
            continue
        fields = line.split(None, 5)
        if len(fields) < 6 or not fields[5].startswith(PREFIX):
            continue
        start, _, end = fields[0].partition("-")
        try:
            found.append(Mapping(int(start, 16), int(end, 16), int(fields[4]), fields[3], fields[5][len(PREFIX):]))
        except ValueError:
            continue
    return found


@dataclass(frozen=True)
class BufInfoEntry:
    """One buffer of debugfs dma_buf/bufinfo (dma_buf_debug_show).

    `count` is the file's reference count; `attached` the devices attached
    to the buffer (e.g. a GPU that imported it).
    """

    size: int
    exp_name: str
    ino: int | None
    name: str
    count: int | None
    flags: int | None
    attached: tuple = ()


def parse_bufinfo(text: str) -> list:
    """The buffers listed in the text of debugfs dma_buf/bufinfo.

    The columns are read from the header line ("size flags mode count
    exp_name ino name" on 7.2; older kernels lack some), so a kernel that
    reorders or drops one still parses. Fence lines are skipped; "Attached
    Devices:" lines are collected. A name of "<none>" means no name.
    """
    columns = None
    entries = []
    current = None
    attaching = False
    for line in text.splitlines():
        if columns is None:
            if line.startswith("size") and "exp_name" in line:
                columns = [c.strip() for c in line.split("\t")]
            continue
        if line.startswith("\t"):
            item = line.strip()
            if item == "Attached Devices:":
                attaching = True
            elif attaching and current is not None and item:
                current["attached"].append(item)
            continue
        attaching = False
        fields = line.split("\t", len(columns) - 1)
        if len(fields) < len(columns) or not fields[0].strip().isdigit():
            continue  # "Total N devices attached", blank lines, the final "Total" line
        row = dict(zip(columns, fields))
        current = {"row": row, "attached": []}
        entries.append(current)
    return [_bufinfo_entry(e["row"], e["attached"]) for e in entries]


def _bufinfo_entry(row: dict, attached: list) -> BufInfoEntry:
    def number(key, base=10):
        value = row.get(key, "").strip()
        return int(value, base) if value else None

    name = row.get("name", "")
    return BufInfoEntry(size=number("size"), exp_name=row.get("exp_name", "").strip(), ino=number("ino"),
                        name="" if name == "<none>" else name, count=number("count"),
                        flags=number("flags", 16), attached=tuple(attached))


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

@dataclass
class Holder:
    """How one process holds one buffer."""

    pid: int
    name: str = ""
    fds: list = field(default_factory=list)
    mappings: int = 0
    mapped_bytes: int = 0


@dataclass
class Buffer:
    """One dma-buf, identified by its inode, with every process seen holding it.

    `refs` is the kernel's count of references to the buffer's file (each
    fd and each mapping, in any process, and kernel users); `sources` says
    where it was seen: "fdinfo", "maps", "debugfs", "sysfs".
    """

    inode: int
    size: int | None = None
    exporter: str | None = None
    name: str = ""
    refs: int | None = None
    attached: tuple = ()
    holders: dict = field(default_factory=dict)
    sources: set = field(default_factory=set)

    def holder(self, pid: int) -> Holder:
        found = self.holders.get(pid)
        if found is None:
            found = self.holders[pid] = Holder(pid)
        return found


@dataclass
class Scan:
    """What one pass over /proc (and debugfs, sysfs) found."""

    buffers: dict = field(default_factory=dict)  # inode -> Buffer
    names: dict = field(default_factory=dict)  # pid -> process name, for holders
    denied: list = field(default_factory=list)  # pids this user may not inspect
    debugfs: str = "not mounted"
    sysfs: str = "absent"

    def buffer(self, inode: int) -> Buffer:
        found = self.buffers.get(inode)
        if found is None:
            found = self.buffers[inode] = Buffer(inode)
        return found


def _read(path: str, size: int = 0) -> str:
    """A /proc file's text: whole, or one read of `size` bytes (enough for an fdinfo)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if size:
            return os.read(fd, size).decode(errors="replace")
        chunks = []
        while True:
            data = os.read(fd, 1 << 16)
            if not data:
                return b"".join(chunks).decode(errors="replace")
            chunks.append(data)
    finally:
        os.close(fd)


@dataclass
class _Seen:
    """What one process's fds and maps showed, before we know it still exists."""

    held: dict = field(default_factory=dict)  # inode -> Holder
    infos: dict = field(default_factory=dict)  # inode -> DmaBufInfo
    names: dict = field(default_factory=dict)  # inode -> name from maps
    ranges: dict = field(default_factory=dict)  # inode -> (start, end) of one mapping


def _read_process(pid: int) -> _Seen:
    """The dma-bufs of one process: its fds whose link is "/dmabuf:..." (with their
    fdinfo), then its maps. An fd closed or reused meanwhile is skipped."""
    base = f"/proc/{pid}"
    seen = _Seen()
    for fd in os.listdir(base + "/fd"):
        try:
            if not os.readlink(f"{base}/fd/{fd}").startswith(PREFIX):
                continue
            info = parse_fdinfo(_read(f"{base}/fdinfo/{fd}", 4096))
        except FileNotFoundError:
            continue  # closed since listdir
        except (KeyError, ValueError):
            continue  # the number now belongs to something that is not a dma-buf
        seen.infos[info.ino] = info
        seen.held.setdefault(info.ino, Holder(pid)).fds.append(int(fd))
    for m in parse_maps(_read(base + "/maps")):
        holder = seen.held.setdefault(m.inode, Holder(pid))
        holder.mappings += 1
        holder.mapped_bytes += m.length
        seen.names[m.inode] = m.name
        seen.ranges.setdefault(m.inode, (m.start, m.end))
    return seen


def scan() -> Scan:
    """Read every process's dma-bufs (psutil.pids()), then debugfs and sysfs.

    Processes that exit, and fds that close, while being read are skipped;
    the processes this user may not inspect are listed in Scan.denied.
    """
    psutil = need("psutil")
    result = Scan()
    mapped_only = {}  # inode -> (pid, start, end): buffers no fd showed us
    for pid in psutil.pids():
        try:
            seen = _read_process(pid)
        except PermissionError:
            result.denied.append(pid)
            continue
        except OSError:
            continue  # it exited (ENOENT, ESRCH) while we read it
        if not seen.held:
            continue
        try:
            name = psutil.Process(pid).name()
        except psutil.NoSuchProcess:
            continue  # it exited: it holds nothing any more
        except psutil.AccessDenied:
            name = "?"
        result.names[pid] = name
        for inode, holder in seen.held.items():
            holder.name = name
            buf = result.buffer(inode)
            buf.holders[pid] = holder
            info = seen.infos.get(inode)
            if info is not None:
                buf.size, buf.exporter, buf.name, buf.refs = info.size, info.exp_name, info.name, info.count
                buf.sources.add("fdinfo")
            if inode in seen.ranges:
                buf.sources.add("maps")
                if buf.size is None:
                    buf.name = seen.names[inode]
                    mapped_only.setdefault(inode, (pid, *seen.ranges[inode]))
    _add_kernel_views(result)
    _size_mapped_only(result, mapped_only)
    return result


def _add_kernel_views(result: Scan) -> None:
    """Complete the picture from debugfs bufinfo and sysfs, where this user can read them."""
    mount = debugfs_mount()
    entries = None
    if mount is not None:
        try:
            entries = parse_bufinfo(_read(os.path.join(mount, "dma_buf", "bufinfo")))
            result.debugfs = "read"
        except FileNotFoundError:
            result.debugfs = "no dma_buf/bufinfo"
        except PermissionError:
            result.debugfs = "not readable (root only)"
    for entry in entries or ():
        if entry.ino is None:
            continue
        buf = result.buffer(entry.ino)
        buf.sources.add("debugfs")
        buf.attached = entry.attached
        if buf.size is None:
            buf.size, buf.exporter, buf.name, buf.refs = entry.size, entry.exp_name, entry.name, entry.count
    stats = read_sysfs_buffers()
    if stats is not None:
        result.sysfs = "read"
        for inode, (size, exporter) in stats.items():
            buf = result.buffer(inode)
            buf.sources.add("sysfs")
            if buf.size is None:
                buf.size, buf.exporter = size, exporter


def _size_mapped_only(result: Scan, mapped_only: dict) -> None:
    """The size of a buffer seen only in maps, from /proc/<pid>/map_files (stat
    follows the link to the dma-buf's inode; the kernel allows it to root only)."""
    for inode, (pid, start, end) in mapped_only.items():
        buf = result.buffers[inode]
        if buf.size is not None:
            continue
        try:
            st = os.stat(f"/proc/{pid}/map_files/{start:x}-{end:x}")
        except OSError:
            continue
        if st.st_ino == inode:
            buf.size = st.st_size
            buf.sources.add("map_files")


# -- reports ---------------------------------------------------------------------

def _holder_json(h: Holder) -> dict:
    return {"pid": h.pid, "name": h.name, "fds": sorted(h.fds), "mappings": h.mappings,
            "mapped_bytes": h.mapped_bytes}


def report(result: Scan, pids=None) -> dict:
    """The scan as one JSON-ready document (restricted to buffers `pids` hold, if given)."""
    wanted = set(pids) if pids else None
    buffers = sorted((b for b in result.buffers.values() if wanted is None or wanted & b.holders.keys()),
                     key=lambda b: b.inode)
    processes = {}
    for buf in buffers:
        for pid, h in buf.holders.items():
            if wanted is not None and pid not in wanted:
                continue
            entry = processes.setdefault(pid, {"pid": pid, "name": h.name, "buffers": [], "buffer_count": 0,
                                               "bytes": 0})
            entry["buffers"].append({"inode": buf.inode, "size": buf.size, "exporter": buf.exporter,
                                     "name": buf.name, **{k: v for k, v in _holder_json(h).items()
                                                          if k not in ("pid", "name")}})
            entry["buffer_count"] += 1
            entry["bytes"] += buf.size or 0
    exporters = {}
    for buf in buffers:
        total = exporters.setdefault(buf.exporter or "(unknown)", {"buffers": 0, "bytes": 0})
        total["buffers"] += 1
        total["bytes"] += buf.size or 0
    return {
        "kernel": os.uname().release,
        "processes": [processes[pid] for pid in sorted(processes)],
        "buffers": [{"inode": b.inode, "size": b.size, "exporter": b.exporter, "name": b.name, "refs": b.refs,
                     "attached": list(b.attached), "sources": sorted(b.sources),
                     "processes": [_holder_json(b.holders[pid]) for pid in sorted(b.holders)]} for b in buffers],
        "exporters": dict(sorted(exporters.items())),
        "totals": {"buffers": len(buffers), "bytes": sum(b.size or 0 for b in buffers),
                   "unknown_size": sum(1 for b in buffers if b.size is None), "processes": len(processes)},
        "uninspectable_processes": len(result.denied),
        "sources": {"procfs": "read", "debugfs": result.debugfs, "sysfs": result.sysfs},
    }


def _fds(fds: list) -> str:
    return ",".join(map(str, fds)) or "-"


def print_text(doc: dict, out=None) -> None:
    """The report for people (to `out`, default stdout)."""
    out = out or sys.stdout
    totals = doc["totals"]
    say = lambda line="": print(line, file=out)
    say(f"dma-bufs on Linux {doc['kernel']}: {plural(totals['buffers'], 'buffer')}, {human(totals['bytes'])}, "
        f"held by {plural(totals['processes'], 'process')}")
    if doc["uninspectable_processes"]:
        say(f"({plural(doc['uninspectable_processes'], 'process')} could not be inspected by this user: "
            "run as root to see their buffers)")
    if totals["unknown_size"]:
        say(f"({plural(totals['unknown_size'], 'buffer')} only mapped, of a size this user cannot see: "
            "root reads it from debugfs or /proc/<pid>/map_files)")
    unheld = sum(1 for b in doc["buffers"] if not b["processes"])
    if unheld:
        say(f"({plural(unheld, 'buffer')} held by no process we can see, found in debugfs/sysfs: "
            "held by the kernel or by processes we may not inspect)")
    if doc["sources"]["debugfs"] != "read":
        say(f"(debugfs dma_buf/bufinfo: {doc['sources']['debugfs']})")
    row = "  {:>8}  {:>10}  {:<18} {:>8} {:>5}  {}"
    for p in doc["processes"]:
        say()
        say(f"PID {p['pid']} {p['name']}: {plural(p['buffer_count'], 'buffer')}, {human(p['bytes'])}")
        say(row.format("inode", "size", "exporter", "fds", "maps", "name"))
        for b in p["buffers"]:
            say(row.format(b["inode"], kib(b["size"]), b["exporter"] or "?", _fds(b["fds"]), b["mappings"], b["name"]))
    if doc["buffers"]:
        say()
        say("Buffers, each once:")
        say("  {:>8}  {:>10}  {:<18} {:>5}  {:<16} {}".format("inode", "size", "exporter", "refs", "name", "held by"))
        for b in doc["buffers"]:
            held = ", ".join(f"{h['pid']} {h['name']} (fds {_fds(h['fds'])}; maps {h['mappings']})"
                             for h in b["processes"]) or "no visible process"
            if b["attached"]:
                held += "; attached: " + ", ".join(b["attached"])
            say("  {:>8}  {:>10}  {:<18} {:>5}  {:<16} {}".format(
                b["inode"], kib(b["size"]), b["exporter"] or "?", "?" if b["refs"] is None else b["refs"],
                b["name"], held))
    say()
    say("By exporter:")
    for name, t in doc["exporters"].items():
        say(f"  {name:<20} {t['buffers']:>6} buffers  {human(t['bytes']):>10}")
    say(f"  {'total':<20} {totals['buffers']:>6} buffers  {human(totals['bytes']):>10}")
    if doc["processes"]:
        say("By process:")
        for p in doc["processes"]:
            say(f"  {p['pid']:>7} {p['name']:<12} {p['buffer_count']:>6} buffers  {human(p['bytes']):>10}")


CSV_COLUMNS = ("pid", "process", "inode", "size", "exporter", "name", "fds", "mappings", "mapped_bytes", "refs")


def print_csv(doc: dict, out=None) -> None:
    """One row per (process, buffer); a buffer no visible process holds gets one row with an empty pid."""
    writer = csv.writer(out or sys.stdout)
    writer.writerow(CSV_COLUMNS)
    for b in doc["buffers"]:
        common = (b["inode"], "" if b["size"] is None else b["size"], b["exporter"] or "", b["name"])
        for h in b["processes"] or [None]:
            if h is None:
                writer.writerow(("", "", *common, "", 0, 0, "" if b["refs"] is None else b["refs"]))
            else:
                writer.writerow((h["pid"], h["name"], *common, " ".join(map(str, h["fds"])), h["mappings"],
                                 h["mapped_bytes"], "" if b["refs"] is None else b["refs"]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="linuxdmabuf dump", description=__doc__.split("\n\n")[0],
                                     epilog="Exit status: 0 on success, 1 if a --pid does not exist, "
                                            f"{EXIT_MISSING_PACKAGE} without psutil.")
    parser.add_argument("--pid", type=int, action="append", metavar="PID",
                        help="only the buffers this process holds (with every process sharing them); repeatable")
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON document")
    fmt.add_argument("--csv", action="store_true", help="CSV, one row per process and buffer")
    args = parser.parse_args(argv)
    try:
        psutil = need("psutil")
    except MissingPackage as e:
        print(f"linuxdmabuf dump: {e}", file=sys.stderr)
        return EXIT_MISSING_PACKAGE
    for pid in args.pid or ():
        if pid <= 0 or not psutil.pid_exists(pid):
            print(f"linuxdmabuf dump: no process {pid}", file=sys.stderr)
            return 1
    result = scan()
    denied = sorted(set(args.pid or ()) & set(result.denied))
    if denied:
        print(f"linuxdmabuf dump: this user may not inspect process {', '.join(map(str, denied))}: "
              "run as root (or as its owner)", file=sys.stderr)
        return 1
    doc = report(result, args.pid)

    def output():
        if args.json:
            json.dump(doc, sys.stdout, indent=1)
            print()
        elif args.csv:
            print_csv(doc)
        else:
            print_text(doc)
        return 0

    return stdout_closed_ok(output)
