"""`linuxdmabuf watch`: real uevents for udmabuf and the heaps, buffer totals, clean stops.

Writing an action to a device's sysfs "uevent" file makes the kernel send
that uevent for the device (a synthetic one, carrying SYNTH_UUID): "remove"
does not remove /dev/udmabuf, but the event is the kernel's own, through
the same netlink socket a module load or hotplug uses.
"""
import json
import os
import select
import signal
import subprocess
import sys
import time

import pytest

from linuxdmabuf._mounts import kernel_has
from linuxdmabuf.cli import watch
from linuxdmabuf.pytest_plugin import has, need

UEVENT = "/sys/class/misc/udmabuf/uevent"


# -- host side ---------------------------------------------------------------------------------------

def test_relevant_devices():
    assert watch.relevant("dma_heap", "system") and watch.relevant("misc", "udmabuf")
    assert not watch.relevant("misc", "fuse") and not watch.relevant("drm", "card0")


def test_buffers_record_says_what_changed():
    before = {"system": {"buffers": 2, "bytes": 8192}, "total": {"buffers": 2, "bytes": 8192}}
    now = {"udmabuf": {"buffers": 1, "bytes": 1 << 20}, "system": {"buffers": 2, "bytes": 8192},
           "total": {"buffers": 3, "bytes": 8192 + (1 << 20)}}
    record, text = watch.buffers_record(now, before)
    assert record["exporters"]["udmabuf"] == {"buffers": 1, "bytes": 1 << 20, "delta_buffers": 1,
                                              "delta_bytes": 1 << 20}
    assert record["exporters"]["system"]["delta_buffers"] == 0
    assert record["total"]["delta_buffers"] == 1
    assert text == "buffers: system 2 8 KiB, udmabuf 1 (+1) 1 MiB (+1 MiB), total 3 (+1) 1.0 MiB (+1 MiB)"
    record, text = watch.buffers_record({"total": {"buffers": 0, "bytes": 0}}, now)
    assert record["exporters"]["udmabuf"]["delta_bytes"] == -(1 << 20)
    assert "udmabuf 0 (-1) 0 B (-1 MiB)" in text and "made" not in record


def test_buffers_record_sums_the_trace_exports_per_process_and_exporter():
    from linuxdmabuf.trace import Event

    made = [Event(1, 42, "cam", "export", 7, "udmabuf", 1 << 20), Event(2, 42, "cam", "export", 8, "udmabuf", 1 << 20),
            Event(3, 9, "gst", "export", 9, "system", 4096)]
    now = {"udmabuf": {"buffers": 2, "bytes": 2 << 20}, "total": {"buffers": 2, "bytes": 2 << 20}}
    record, text = watch.buffers_record(now, None, made)
    assert record["made"] == [{"pid": 42, "comm": "cam", "exporter": "udmabuf", "buffers": 2, "bytes": 2 << 20},
                              {"pid": 9, "comm": "gst", "exporter": "system", "buffers": 1, "bytes": 4096}]
    assert text.endswith("; made since: cam[42] 2 udmabuf 2 MiB, gst[9] 1 system 4 KiB")
    assert watch.buffers_record(now, now, [])[0]["made"] == []


@pytest.mark.parametrize("args", [["--interval", "0"], ["--count", "0"], ["--timeout", "-1"], ["--source", "x"]])
def test_bad_arguments(args):
    with pytest.raises(SystemExit) as e:
        watch.main(args)
    assert e.value.code == 2


def test_bounded_run_stops_by_itself():
    run = _watch_run("--json", "--timeout", "0.5")
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert lines[0]["event"] == "start" and lines[-1] == {**lines[-1], "event": "stop", "reason": "timeout",
                                                           "device_events": 0}
    run = _watch_run("--count", "1", "--timeout", "0.5")
    assert run.returncode == 1 and "--timeout passed after 0 of 1 device events" in run.stderr


def _watch_run(*args):
    return subprocess.run([sys.executable, "-m", "linuxdmabuf", "watch", *args], capture_output=True, text=True,
                          timeout=60)


# -- in the VM ------------------------------------------------------------------------------------------

class Watch:
    """`linuxdmabuf watch --json ...` running, read line by line with a deadline."""

    def __init__(self, *args):
        self.proc = subprocess.Popen([sys.executable, "-m", "linuxdmabuf", "watch", "--json", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.buffer = b""
        self.start = self.next(60)
        assert self.start["event"] == "start", self.start

    def next(self, timeout=30) -> dict:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                raise AssertionError(f"no line from watch in {timeout} s; got {self.buffer!r}")
            data = os.read(self.proc.stdout.fileno(), 4096)
            if not data:
                raise AssertionError(f"watch exited: {self.proc.wait()} {self.proc.stderr.read()!r}")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def until(self, predicate, timeout=30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            record = self.next(max(0.1, deadline - time.monotonic()))
            if predicate(record):
                return record

    def finish(self, timeout=30) -> tuple:
        """(exit status, the remaining lines)."""
        out, err = self.proc.communicate(timeout=timeout)
        lines = (self.buffer + out).decode().splitlines()
        return self.proc.returncode, [json.loads(line) for line in lines if line], err.decode()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def _trigger(path, action):
    with open(path, "w") as f:
        f.write(action)


@pytest.fixture
def root_with_udmabuf():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    need("udmabuf")


@pytest.mark.kernel
def test_watch_sees_udmabuf_remove_and_add(root_with_udmabuf):
    w = Watch("--count", "2", "--timeout", "60")
    try:
        assert "/dev/udmabuf" in w.start["present"]
        _trigger(UEVENT, "remove")
        _trigger(UEVENT, "add")
        status, lines, err = w.finish()
    finally:
        w.close()
    assert status == 0, err
    events = [r for r in lines if r["event"] == "device"]
    assert [(e["action"], e["subsystem"], e["name"], e["devnode"]) for e in events] == [
        ("remove", "misc", "udmabuf", "/dev/udmabuf"), ("add", "misc", "udmabuf", "/dev/udmabuf")]
    st = os.stat("/dev/udmabuf")
    assert events[1]["devnum"] == f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    assert int(events[1]["seqnum"]) > int(events[0]["seqnum"])
    assert lines[-1]["event"] == "stop" and lines[-1]["reason"] == "count" and lines[-1]["device_events"] == 2


@pytest.mark.kernel
def test_watch_sees_heaps_and_ignores_other_misc_devices(root_with_udmabuf):
    heaps = sorted(os.listdir("/sys/class/dma_heap")) if os.path.isdir("/sys/class/dma_heap") else []
    others = [d for d in sorted(os.listdir("/sys/class/misc")) if d != "udmabuf"]
    w = Watch("--count", str(len(heaps) + 1), "--timeout", "60")
    try:
        for other in others[:3]:
            _trigger(f"/sys/class/misc/{other}/uevent", "change")
        for heap in heaps:
            _trigger(f"/sys/class/dma_heap/{heap}/uevent", "change")
        _trigger(UEVENT, "change")
        status, lines, err = w.finish()
    finally:
        w.close()
    assert status == 0, err
    events = [(r["action"], r["subsystem"], r["devnode"]) for r in lines if r["event"] == "device"]
    # udevd handles different devices in parallel: their events may pass each other
    assert sorted(events) == sorted([("change", "dma_heap", f"/dev/dma_heap/{h}") for h in heaps] + [
        ("change", "misc", "/dev/udmabuf")])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_watch_stops_cleanly_on_signals(signum):
    w = Watch()
    try:
        w.proc.send_signal(signum)
        status, lines, err = w.finish()
    finally:
        w.close()
    assert status == 0 and err == ""
    assert lines[-1]["event"] == "stop" and lines[-1]["reason"] == signal.Signals(signum).name


@pytest.mark.kernel
def test_watch_buffers_reports_what_changed(udmabuf):
    w = Watch("--buffers", "--interval", "0.2")
    try:
        first = w.next()
        assert first["event"] == "buffers"
        before = first["exporters"].get("udmabuf", {"buffers": 0, "bytes": 0})
        with udmabuf.allocate(256 * 1024):
            grown = w.until(lambda r: r["event"] == "buffers" and r["exporters"].get("udmabuf", {}).get(
                "buffers", 0) > before["buffers"])
            assert grown["exporters"]["udmabuf"]["delta_buffers"] == 1
            assert grown["exporters"]["udmabuf"]["delta_bytes"] == 256 * 1024
            assert grown["exporters"]["udmabuf"]["bytes"] == before["bytes"] + 256 * 1024
        shrunk = w.until(lambda r: r["event"] == "buffers"
                         and r["exporters"].get("udmabuf", {}).get("delta_buffers") == -1)
        assert shrunk["exporters"]["udmabuf"]["bytes"] == before["bytes"]
        w.proc.send_signal(signal.SIGTERM)
        status, lines, err = w.finish()
        assert status == 0, err
    finally:
        w.close()


@pytest.mark.kernel
def test_watch_buffers_names_who_made_them_from_the_trace(udmabuf):
    """With the dma_buf trace events, a new buffer shows within a tick of its export (the scan interval here
    is 60 s: only the trace can bring the line sooner), naming the process, exporter and size."""
    if os.geteuid() != 0:
        pytest.skip("tracefs is root's")
    need("trace:dma_buf")
    with open("/proc/self/comm") as f:
        comm = f.read().strip()
    w = Watch("--buffers", "--interval", "60")
    try:
        assert w.start["buffers_from"] == "trace", w.start
        first = w.next()
        assert first["event"] == "buffers" and first["made"] == []
        with udmabuf.allocate(64 * 1024):
            grown = w.until(lambda r: r["event"] == "buffers" and r["total"]["delta_buffers"] > 0, timeout=30)
        assert {"pid": os.getpid(), "comm": comm, "exporter": "udmabuf", "buffers": 1, "bytes": 64 * 1024} \
            in grown["made"], grown
        assert grown["exporters"]["udmabuf"]["delta_buffers"] == 1
        w.proc.send_signal(signal.SIGTERM)
        status, lines, err = w.finish()
        assert status == 0 and lines[-1]["event"] == "stop", err
    finally:
        w.close()


@pytest.mark.kernel
def test_watch_buffers_without_the_trace_events_scans_and_says_why():
    if os.geteuid() != 0:
        pytest.skip("as root (unprivileged: test_watch_runs_unprivileged)")
    if has("trace:dma_buf"):
        pytest.skip(f"kernel {os.uname().release} has the dma_buf trace events (the reverse case runs on 6.12)")
    run = _watch_run("--json", "--buffers", "--timeout", "0.5")
    assert run.returncode == 0, run.stderr
    start = json.loads(run.stdout.splitlines()[0])
    tracing = kernel_has("tracefs")
    # Tracing without the events (6.12), or no tracing at all (the arm64 full kernel)
    why = "they came in Linux 7.0" if tracing else "(CONFIG_TRACING)"
    assert start["buffers_from"] == "scan" and why in start["no_trace"], start


@pytest.mark.unprivileged
def test_watch_runs_unprivileged():
    if os.geteuid() == 0:
        pytest.skip("runs as an unprivileged user (tools/run-tests runs it as nobody)")
    run = _watch_run("--json", "--buffers", "--timeout", "1")
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["event"] for r in lines][:2] == ["start", "buffers"] and lines[-1]["event"] == "stop"
    # a kernel without tracing (the arm64 full one): root would not help
    why = "as root" if kernel_has("tracefs") else "(CONFIG_TRACING)"
    assert lines[0]["buffers_from"] == "scan" and why in lines[0]["no_trace"], lines[0]
    assert "made" not in lines[1]  # no trace, so no word on who made them
