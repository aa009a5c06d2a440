"""``linuxdmabuf watch``: follow dma-heap and udmabuf devices (and buffer totals) as they change.

Listens to the kernel's device events (uevents, through pyudev) and prints
one line per add, remove or change of a dma-heap (/dev/dma_heap/*) or of
/dev/udmabuf: module loads and unloads, hotplug, `udevadm trigger`. Where
udevd runs, the events are udev's (after its rules have set the node's owner
and mode, which the line shows); elsewhere the kernel's own. With --buffers,
also the dma-buf totals per exporter (as `dump` counts them) at the start
and whenever they change, checked every --interval seconds. Where the kernel
has the dma_buf trace events (7.0 and later, as root), --buffers also follows
them (:class:`linuxdmabuf.trace.Tracer`): a new buffer is counted within
TICK seconds of its export, and the line names the processes that made
buffers since the previous line. A release is no event: fewer buffers show
at the next check.

Stops cleanly on SIGINT or SIGTERM, after --count device events, or after
--timeout seconds.
"""
import argparse
import json
import math
import os
import select
import signal
import stat
import sys
import time

from ._tools import group_name, human, plural, stdout_closed_ok, user_name

UDEV_CONTROL = "/run/udev/control"  # udevd's control socket: present while udevd runs
TICK = 0.25  # seconds between reads of the trace events with --buffers


class _Stop(Exception):
    """SIGINT or SIGTERM arrived."""


def relevant(subsystem: str, sys_name: str) -> bool:
    """A dma-heap device, or the udmabuf misc device."""
    return subsystem == "dma_heap" or (subsystem == "misc" and sys_name == "udmabuf")


def present_devices() -> list:
    """The device nodes of dma-heaps and udmabuf that exist now."""
    from ..heap import HEAP_DIR
    from ..udmabuf import DEVICE

    try:
        heaps = sorted(os.listdir(HEAP_DIR))
    except OSError:
        heaps = []
    return [os.path.join(HEAP_DIR, name) for name in heaps] + ([DEVICE] if os.path.exists(DEVICE) else [])


def _node_state(path) -> str | None:
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None

    return f"{stat.filemode(st.st_mode)} {user_name(st.st_uid)}:{group_name(st.st_gid)}"


def _now() -> str:
    t = time.time()
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"


class Printer:
    """One line per event, text or JSON; flushed at once (watch is read through pipes)."""

    def __init__(self, as_json: bool, out=None):
        self.as_json, self.out = as_json, out or sys.stdout

    def emit(self, record: dict, text: str) -> None:
        record = {"time": _now(), **record}
        print(json.dumps(record) if self.as_json else f"{record['time']} {text}", file=self.out, flush=True)


def device_record(device, source: str) -> tuple:
    """(JSON record, text line) for a pyudev Device event."""
    node = device.device_node
    props = device.properties
    devnum = f"{props.get('MAJOR', '?')}:{props.get('MINOR', '?')}"
    state = _node_state(node) if device.action != "remove" else None
    record = {"event": "device", "action": device.action, "subsystem": device.subsystem,
              "name": device.sys_name, "devnode": node, "devnum": devnum, "seqnum": props.get("SEQNUM"),
              "node": state, "source": source}
    text = f"{device.action:<7} {device.subsystem:<9} {node or device.sys_path} ({devnum})"
    if state:
        text += f" {state}"
    return record, text


def buffer_totals() -> dict:
    """exporter -> {"buffers": n, "bytes": m} over every buffer this user can see, and "total"."""
    from . import dump

    doc = dump.report(dump.scan())
    return {**doc["exporters"], "total": {"buffers": doc["totals"]["buffers"], "bytes": doc["totals"]["bytes"]}}


def buffers_record(now: dict, before: dict | None, made: list | None = None) -> tuple:
    """(JSON record, text line) for the buffer totals `now`, with the change since `before`, and with the
    trace's export events since that line (`made`, None without a tracer) summed per process and exporter."""
    before = before or {}
    exporters: dict = {}
    record: dict = {"event": "buffers", "exporters": exporters}
    parts = []
    for name in sorted(set(now) | set(before), key=lambda n: (n == "total", n)):
        cur = now.get(name, {"buffers": 0, "bytes": 0})
        old = before.get(name, {"buffers": 0, "bytes": 0})
        delta_buffers, delta_bytes = cur["buffers"] - old["buffers"], cur["bytes"] - old["bytes"]
        record["exporters"][name] = {**cur, "delta_buffers": delta_buffers, "delta_bytes": delta_bytes}
        text = f"{name} {cur['buffers']}"
        if delta_buffers:
            text += f" ({delta_buffers:+d})"
        text += f" {human(cur['bytes'])}"
        if delta_bytes:
            text += f" ({'+' if delta_bytes > 0 else '-'}{human(abs(delta_bytes))})"
        parts.append(text)
    record["total"] = record["exporters"].pop("total")
    text = "buffers: " + ", ".join(parts)
    if made is not None:
        makers: dict = {}
        for e in made:
            row = makers.setdefault((e.pid, e.comm, e.exp_name), {"pid": e.pid, "comm": e.comm,
                                                                   "exporter": e.exp_name, "buffers": 0, "bytes": 0})
            row["buffers"] += 1
            row["bytes"] += e.size
        record["made"] = list(makers.values())
        if makers:
            text += "; made since: " + ", ".join(f"{m['comm']}[{m['pid']}] {m['buffers']} {m['exporter']} "
                                             f"{human(m['bytes'])}" for m in record["made"])
    return record, text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="linuxdmabuf watch", description=__doc__.split("\n\n")[0],
                                     epilog="Exit status: 0 when stopped by a signal, --count or --timeout; 1 if "
                                            "--timeout passed before --count events.")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--buffers", action="store_true", help="also print dma-buf totals per exporter when they change")
    parser.add_argument("--interval", type=float, default=2.0, metavar="S",
                        help="seconds between buffer checks with --buffers (default 2)")
    parser.add_argument("--count", type=int, metavar="N", help="stop after N device events")
    parser.add_argument("--timeout", type=float, metavar="S", help="stop after S seconds")
    parser.add_argument("--source", choices=("auto", "udev", "kernel"), default="auto",
                        help="udev: events after udevd applied its rules; kernel: the kernel's own uevents; "
                             "auto (default): udev where udevd runs")
    args = parser.parse_args(argv)
    if args.interval <= 0:
        parser.error("--interval must be positive")
    if args.count is not None and args.count <= 0:
        parser.error("--count must be positive")
    if args.timeout is not None and args.timeout < 0:
        parser.error("--timeout must not be negative")
    import pyudev

    source = args.source
    if source == "auto":
        source = "udev" if os.path.exists(UDEV_CONTROL) else "kernel"
    try:
        monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source=source)
        if source == "udev":
            monitor.filter_by("dma_heap")
            monitor.filter_by("misc")
        monitor.start()
    except (OSError, ValueError) as e:
        print(f"linuxdmabuf watch: cannot listen to {source} device events: {e}", file=sys.stderr)
        return 1
    return stdout_closed_ok(lambda: _watch(monitor, source, args, Printer(args.json)))


def _watch(monitor, source: str, args, printer: Printer) -> int:
    def stop(signum, frame):
        raise _Stop(signal.Signals(signum).name)

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, stop)
        except ValueError:
            pass  # not the main thread: leave signals to the caller
    poller = select.poll()
    poller.register(monitor.fileno(), select.POLLIN)
    start = time.monotonic()
    end = None if args.timeout is None else start + args.timeout
    events = 0
    totals = None
    next_check = start
    reason = "timeout"
    tracer, made, next_read = None, [], start
    try:
        note = "" if source == "udev" else " (udevd is not running: the kernel's events, before any udev rule)"
        present = present_devices()
        record: dict = {"event": "start", "source": source, "present": present}
        text = (f"watching dma-heap and udmabuf device events from {source}{note}; present: "
                f"{', '.join(present) or 'none'}")
        if args.buffers:
            from linuxdmabuf import UnsupportedError
            from linuxdmabuf.trace import Tracer

            try:
                tracer = Tracer()
                record["buffers_from"], how = "trace", "the dma_buf trace events and a scan every"
            except UnsupportedError as e:
                record["buffers_from"], record["no_trace"] = "scan", e.strerror
                how = f"a scan (no trace: {e.strerror}) every"
            text += f"; buffers from {how} {args.interval:g} s"
        printer.emit(record, text)
        while True:
            now = time.monotonic()
            if end is not None and now >= end:
                break
            if tracer is not None and now >= next_read:
                new = tracer.events()
                if new:  # count the new buffers now (their fds are visible after dma_buf_fd), not at the interval
                    made += [e for e in new if e.kind == "export"]
                    next_check = now
                next_read = now + TICK
            if args.buffers and now >= next_check:
                current = buffer_totals()
                if tracer is not None:  # the exports of buffers the scan may have counted
                    made += [e for e in tracer.events() if e.kind == "export"]
                if current != totals:
                    printer.emit(*buffers_record(current, totals, made if tracer is not None else None))
                    totals, made = current, []
                next_check = time.monotonic() + args.interval
            deadlines = (([end] if end is not None else []) + ([next_check] if args.buffers else [])
                         + ([next_read] if tracer is not None else []))
            wait_ms = None if not deadlines else max(0, math.ceil((min(deadlines) - time.monotonic()) * 1000))
            if poller.poll(wait_ms):
                while True:
                    device = monitor.poll(timeout=0)
                    if device is None:
                        break
                    if not relevant(device.subsystem, device.sys_name):
                        continue
                    printer.emit(*device_record(device, source))
                    events += 1
                    if args.count is not None and events >= args.count:
                        reason = "count"
                        return 0
    except _Stop as e:
        reason = str(e)
        return 0
    finally:
        if tracer is not None:
            tracer.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        printer.emit({"event": "stop", "reason": reason, "device_events": events},
                     f"stopped ({reason}) after {plural(events, 'device event')}")
    if args.count is not None:
        print(f"linuxdmabuf watch: --timeout passed after {events} of {args.count} device events", file=sys.stderr)
        return 1
    return 0
