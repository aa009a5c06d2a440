"""``linuxdmabuf dump``: which processes hold which dma-bufs, like Android's dmabuf_dump.

One row per buffer -- a buffer is its inode -- with the processes sharing
it, and totals per exporter and per process, each buffer counted once. The
scan (every process's fds and mappings, debugfs bufinfo, sysfs; what it reads
and how it copes with processes exiting meanwhile) is linuxdmabuf._procfs's.
"""
import argparse
import csv
import json
import os
import sys

from .._procfs import (  # noqa: F401 (the scan's parsers, re-exported for their tests)
    _SOURCE_NAMES,
    Buffer,
    Holder,
    Scan,
    _no_gc,
    attached_devices,
    bufinfo_rows,
    parse_maps,
    read_sysfs_buffers,
    scan,
)
from ._tools import human, kib, plural, stdout_closed_ok

# -- reports ---------------------------------------------------------------------

def report(result: Scan, pids=None) -> dict:
    """The scan as one JSON-ready document (restricted to the buffers `pids` hold, if given)."""
    with _no_gc():
        return _report(result, pids)


def _report(result: Scan, pids) -> dict:
    from ..cma import heap_areas

    cma_of = heap_areas()  # a CMA heap's buffers are shown with their area
    wanted = set(pids) if pids else None
    buffers: list = []
    processes: dict = {}
    exporters: dict = {}
    total_bytes = unknown = 0
    for inode in sorted(result.buffers):
        b = result.buffers[inode]
        if wanted is not None and not wanted & b.holders.keys():
            continue
        size = b.size
        holders = []
        for pid in (sorted(b.holders) if len(b.holders) > 1 else b.holders):
            h = b.holders[pid]
            fds = sorted(h.fds) if len(h.fds) > 1 else h.fds
            holders.append({"pid": pid, "name": h.name, "fds": fds, "mappings": h.mappings,
                            "mapped_bytes": h.mapped_bytes})
            if wanted is None or pid in wanted:
                p = processes.get(pid)
                if p is None:
                    p = processes[pid] = {"pid": pid, "name": h.name, "buffers": [], "buffer_count": 0, "bytes": 0}
                p["buffers"].append({"inode": inode, "size": size, "exporter": b.exporter,
                                     "cma_area": cma_of.get(b.exporter), "name": b.name, "fds": fds,
                                     "mappings": h.mappings, "mapped_bytes": h.mapped_bytes})
                p["buffer_count"] += 1
                p["bytes"] += size or 0
        buffers.append({"inode": inode, "size": size, "exporter": b.exporter, "cma_area": cma_of.get(b.exporter),
                        "name": b.name, "refs": b.refs,
                        "attached": b.attached, "sources": _SOURCE_NAMES[b.seen], "processes": holders})
        total = exporters.get(b.exporter or "(unknown)")
        if total is None:
            total = exporters[b.exporter or "(unknown)"] = {"buffers": 0, "bytes": 0}
        total["buffers"] += 1
        if size is None:
            unknown += 1
        else:
            total["bytes"] += size
            total_bytes += size
    return {
        "kernel": os.uname().release,
        "uid": os.geteuid(),
        "processes": [processes[pid] for pid in sorted(processes)],
        "buffers": buffers,
        "exporters": dict(sorted(exporters.items())),
        "totals": {"buffers": len(buffers), "bytes": total_bytes, "unknown_size": unknown,
                   "processes": len(processes)},
        "uninspectable_processes": len(result.denied),
        "sources": {"procfs": "read", "debugfs": result.debugfs, "sysfs": result.sysfs},
    }


def _exporter(b: dict) -> str:
    """The exporter's name, with the CMA area behind it for a CMA heap's buffer ("reserved (CMA reserved)")."""
    name = b["exporter"] or "?"
    return f"{name} (CMA {b['cma_area']})" if b.get("cma_area") else name


def _fds(fds: list) -> str:
    return ",".join(map(str, fds)) or "-"


def print_text(doc: dict, out=None) -> None:
    """The report for people (to `out`, default stdout), written at once."""
    totals = doc["totals"]
    lines = [f"dma-bufs on Linux {doc['kernel']}: {plural(totals['buffers'], 'buffer')}, {human(totals['bytes'])}, "
             f"held by {plural(totals['processes'], 'process')}"]
    say = lines.append
    if doc["uninspectable_processes"]:
        say(f"({plural(doc['uninspectable_processes'], 'process')} could not be inspected by this user: " +
            ("run as root to see their buffers)" if doc["uid"] else "the kernel refuses even root there)"))
    if totals["unknown_size"]:
        say(f"({plural(totals['unknown_size'], 'buffer')} only mapped, of a size this user cannot see: "
            "root reads it from debugfs or /proc/<pid>/map_files)")
    unheld = sum(1 for b in doc["buffers"] if not b["processes"])
    if unheld:
        say(f"({plural(unheld, 'buffer')} held by no process we can see, found in debugfs/sysfs: "
            "held by the kernel or by processes we may not inspect)")
    if doc["sources"]["debugfs"] != "read":
        say(f"(debugfs dma_buf/bufinfo: {doc['sources']['debugfs']})")
    for p in doc["processes"]:
        say("")
        say(f"PID {p['pid']} {p['name']}: {plural(p['buffer_count'], 'buffer')}, {human(p['bytes'])}")
        say(f"  {'inode':>8}  {'size':>10}  {'exporter':<18} {'fds':>8} {'maps':>5}  name")
        for b in p["buffers"]:
            say(f"  {b['inode']:>8}  {kib(b['size']):>10}  {_exporter(b):<18} {_fds(b['fds']):>8} "
                f"{b['mappings']:>5}  {b['name']}")
    if doc["buffers"]:
        say("")
        say("Buffers, each once:")
        say(f"  {'inode':>8}  {'size':>10}  {'exporter':<18} {'refs':>5}  {'name':<16} held by")
        for b in doc["buffers"]:
            held = ", ".join(f"{h['pid']} {h['name']} (fds {_fds(h['fds'])}; maps {h['mappings']})"
                             for h in b["processes"]) or "no visible process"
            if b["attached"]:
                held += "; attached: " + ", ".join(b["attached"])
            refs = "?" if b["refs"] is None else b["refs"]
            say(f"  {b['inode']:>8}  {kib(b['size']):>10}  {_exporter(b):<18} {refs:>5}  {b['name']:<16} {held}")
    say("")
    say("By exporter:")
    for name, t in doc["exporters"].items():
        say(f"  {name:<20} {plural(t['buffers'], 'buffer'):>14}  {human(t['bytes']):>10}")
    say(f"  {'total':<20} {plural(totals['buffers'], 'buffer'):>14}  {human(totals['bytes']):>10}")
    if doc["processes"]:
        say("By process:")
        for p in doc["processes"]:
            say(f"  {p['pid']:>7} {p['name']:<12} {plural(p['buffer_count'], 'buffer'):>14}  {human(p['bytes']):>10}")
    (out or sys.stdout).write("\n".join(lines) + "\n")


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
                                     epilog="Exit status: 0 on success, 1 if a --pid does not exist.")
    parser.add_argument("--pid", type=int, action="append", metavar="PID",
                        help="only the buffers this process holds (with every process sharing them); repeatable")
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON document")
    fmt.add_argument("--csv", action="store_true", help="CSV, one row per process and buffer")
    args = parser.parse_args(argv)
    import psutil

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
            sys.stdout.write(json.dumps(doc))  # one line, one write: the C encoder (indent would use Python's)
            print()
        elif args.csv:
            print_csv(doc)
        else:
            print_text(doc)
        return 0

    return stdout_closed_ok(output)
