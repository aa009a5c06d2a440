"""``linuxdmabuf trace``: dma-buf lifetime events as they happen, and who made, mapped and attached what.

A live stream of the kernel's dma_buf trace events (Linux 7.0+; see
:mod:`linuxdmabuf.trace`) from a tracefs instance of its own: one line per
event (time, pid, process, event, inode, exporter, size, fd or device), or
one JSON object per line with --json. With --summary, at the end: per
process and per exporter, the buffers exported, mapped, attached (to which
devices) and how many of them are still alive, from a scan of the processes
(dump's), since the last close of a buffer is no event. Stops after
--duration seconds, or on Ctrl-C / SIGTERM. Needs root (tracefs is root's).
"""
import argparse
import json
import signal
import sys
import time
from collections import defaultdict

from ._tools import human, plural, stdout_closed_ok


def summarize(events: list, alive: set) -> dict:
    """Per process and per exporter: buffers (inodes) exported, mapped, attached (devices), alive now."""
    def row():
        return {"exported": set(), "mapped": set(), "attached": defaultdict(set), "bytes": {}}

    processes: defaultdict = defaultdict(row)
    exporters: defaultdict = defaultdict(row)
    names = {}
    for e in events:
        names[e.pid] = e.comm
        for bucket in (processes[e.pid], exporters[e.exp_name]):
            bucket["bytes"][e.ino] = e.size
            if e.kind == "export":
                bucket["exported"].add(e.ino)
            elif e.kind in ("mmap", "mmap_internal"):
                bucket["mapped"].add(e.ino)
            elif e.kind == "dynamic_attach":
                bucket["attached"][e.dev_name].add(e.ino)

    def out(bucket):
        exported = bucket["exported"]
        return {"exported": len(exported), "exported_bytes": sum(bucket["bytes"][i] for i in exported),
                "mapped": len(bucket["mapped"]),
                "attached": {dev: len(inodes) for dev, inodes in sorted(bucket["attached"].items())},
                "alive": len(exported & alive), "alive_bytes": sum(bucket["bytes"][i] for i in exported & alive)}

    return {"processes": {pid: {"comm": names[pid], **out(b)} for pid, b in sorted(processes.items())},
            "exporters": {name: out(b) for name, b in sorted(exporters.items())}}


def _line(e) -> str:
    extra = f" fd {e.fd}" if e.fd is not None else f" device {e.dev_name}" if e.dev_name else ""
    return (f"{e.time_ns / 1e9:14.6f} {e.pid:>7} {e.comm:<16} {e.kind:<15} ino {e.ino:<8} {e.exp_name:<18} "
            f"{human(e.size):>9}{extra}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="linuxdmabuf trace", description=__doc__.split("\n\n")[0],
                                     epilog="Exit status: 0 when stopped; 1 if this kernel or user cannot trace "
                                            "(the reason and the fix are printed).")
    parser.add_argument("--pid", type=int, help="only this process's events (the kernel filters them)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    parser.add_argument("--summary", action="store_true", help="a summary per process and exporter at the end")
    args = parser.parse_args(argv)
    if args.duration is not None and args.duration < 0:
        parser.error("--duration must not be negative")
    from linuxdmabuf import UnsupportedError
    from linuxdmabuf.trace import Tracer

    try:
        tracer = Tracer(args.pid)
    except (UnsupportedError, ValueError) as e:
        print(f"linuxdmabuf trace: {e}", file=sys.stderr)
        return 1
    stop = []
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    seen: list = []

    def show(events: list) -> None:
        if args.summary:
            seen.extend(events)
        for e in events:
            print(json.dumps(e._asdict()) if args.json else _line(e), flush=True)

    def run() -> int:
        deadline = None if args.duration is None else time.monotonic() + args.duration
        if not args.json:
            print(f"{'time':>14} {'pid':>7} {'process':<16} {'event':<15} {'inode':<12} {'exporter':<18} {'size':>9}",
                  flush=True)
        try:
            while not stop and (deadline is None or time.monotonic() < deadline):
                wait = 0.25 if deadline is None else max(0.0, min(0.25, deadline - time.monotonic()))
                show(tracer.events(timeout=wait))
        except KeyboardInterrupt:
            pass
        show(tracer.events())  # what came in meanwhile
        if tracer.dropped:
            print(f"linuxdmabuf trace: the kernel dropped {tracer.dropped} events (its buffer was full)", file=sys.stderr)
        if args.summary:
            from .dump import scan

            alive = set(scan().buffers)
            summary = summarize(seen, alive)
            if args.json:
                print(json.dumps({"summary": summary, "dropped": tracer.dropped}))
            else:
                _print_summary(summary)
        return 0

    try:
        return stdout_closed_ok(run)
    finally:
        tracer.close()
        signal.signal(signal.SIGTERM, previous)


def _print_summary(summary: dict) -> None:
    print("\nBy process:")
    for pid, p in summary["processes"].items():
        print(f"  {pid:>7} {p['comm']:<16} " + _counts(p))
    print("By exporter:")
    for name, p in summary["exporters"].items():
        print(f"  {name:<24} " + _counts(p))


def _counts(p: dict) -> str:
    attached = ", ".join(f"{dev} {n}" for dev, n in p["attached"].items()) or "none"
    return (f"exported {plural(p['exported'], 'buffer')} ({human(p['exported_bytes'])}), mapped {p['mapped']}, "
            f"attached: {attached}; alive now {p['alive']} ({human(p['alive_bytes'])})")
