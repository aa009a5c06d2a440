"""`linuxdmabuf dump`: the kernel's text parsed (host), then real processes holding real buffers (VM)."""
import csv
import io
import json
import os
import subprocess
import sys
import time
from typing import NamedTuple

import pytest
from holders import Holder

from linuxdmabuf import _procfs
from linuxdmabuf.cli import dump
from linuxdmabuf.pytest_plugin import need

# -- host side: the kernel's text, as captured on 7.2 ------------------------------------------------

MAPS = """\
55d0c8e4a000-55d0c8e4b000 r--p 00000000 00:1f 1234                       /usr/bin/python3.11
7f950d668000-7f950d66b000 rw-s 00000000 00:0b 2                          /dmabuf:
7f950de98000-7f950de9a000 rw-s 00000000 00:0b 1                          /dmabuf:hello
7f950de9a000-7f950de9c000 r--s 00002000 00:0b 1                          /dmabuf:hello
7f950dea0000-7f950dea1000 rw-s 00000000 00:0b 17                         /dmabuf: two  spaces
7f950dea2000-7f950dea3000 rw-p 00000000 00:00 0                          [heap]
7f950dea4000-7f950dea5000 rw-s 00000000 fd:01 99                         /home/u/dmabuf:notabuffer
"""

BUFINFO = """\

Dma-buf Objects:
size    \tflags   \tmode    \tcount   \texp_name\tino     \tname
00012288\t00000002\t02080007\t00000003\tudmabuf\t00000002\t<none>
\tAttached Devices:
Total 0 devices attached

00008192\t00000002\t02080007\t00000003\tsystem\t00000001\thello
\twrite fence:drm_sched:7 vgem unbound unsignalled
\tread fence:12:1   signalled
\tAttached Devices:
\tvgem
\t0000:00:02.0
Total 2 devices attached

00004096\t00000002\t02080007\t00000001\tdefault_cma_region\t00000031\tname\twith tab
\tAttached Devices:
Total 0 devices attached


Total 3 objects, 24576 bytes
"""

FDINFO = "pos:\t0\nflags:\t02000002\nmnt_id:\t13\nino:\t1\nsize:\t8192\ncount:\t3\nexp_name:\tsystem\nname:\thello\n"


def test_parse_maps_finds_dmabuf_lines_only():
    maps = dump.parse_maps(MAPS)
    assert [(m.inode, m.name, m.length) for m in maps] == [
        (2, "", 0x3000), (1, "hello", 0x2000), (1, "hello", 0x2000), (17, " two  spaces", 0x1000)]
    assert maps[0].start == 0x7F950D668000 and maps[0].dev == "00:0b"
    assert dump.parse_maps("") == [] and dump.parse_maps("garbage /dmabuf:\n") == []


class Entry(NamedTuple):
    size: int
    exp_name: str
    ino: int | None
    name: str
    count: int | None
    attached: tuple


def parse_bufinfo(text: str) -> list:
    """dump's own bufinfo_rows() and attached_devices(), read into entries for the assertions."""
    return [Entry(int(size), exp_name, int(ino) if ino else None, "" if name == "<none>" else name,
                  int(count) if count else None, dump.attached_devices(under))
            for size, count, exp_name, ino, name, under in dump.bufinfo_rows(text)]


def test_parse_bufinfo_columns_fences_and_attachments():
    entries = parse_bufinfo(BUFINFO)
    assert [(e.ino, e.size, e.exp_name, e.name, e.count) for e in entries] == [
        (2, 12288, "udmabuf", "", 3), (1, 8192, "system", "hello", 3), (31, 4096, "default_cma_region", "name\twith tab", 1)]
    assert entries[1].attached == ("vgem", "0000:00:02.0") and entries[0].attached == ()


def test_parse_bufinfo_other_columns_take_the_general_path():
    """A header other than 7.2's is read column by column; a column it lacks is None."""
    assert parse_bufinfo(BUFINFO.replace("count   \t", "refcount\t")) == [
        e._replace(count=None) for e in parse_bufinfo(BUFINFO)]


def test_parse_bufinfo_older_header_without_ino():
    text = "\nDma-buf Objects:\nsize\tflags\tmode\tcount\texp_name\tbuf name\n00004096\t00000002\t00080007\t00000001\tion\tfoo\n"
    [entry] = parse_bufinfo(text)
    assert entry.ino is None and entry.size == 4096 and entry.exp_name == "ion"


def test_parse_bufinfo_empty_and_garbage():
    assert parse_bufinfo("") == []
    assert parse_bufinfo("\nDma-buf Objects:\nsize\tflags\tmode\tcount\texp_name\tino\tname\n\nTotal 0 objects, 0 bytes\n") == []
    assert parse_bufinfo("no header here\n00004096\t1\t2\n") == []


def test_parse_fdinfo_sample():
    from linuxdmabuf.dmabuf import parse_fdinfo

    info = parse_fdinfo(FDINFO)
    assert (info.ino, info.size, info.count, info.exp_name, info.name, info.flags) == (1, 8192, 3, "system", "hello", 0o2000002)
    unnamed = parse_fdinfo(FDINFO.replace("name:\thello\n", "").replace("exp_name:\tsystem\n", "lock:\t1: POSIX\nexp_name:\tsystem\n"))
    assert unnamed.name == "" and unnamed.exp_name == "system"
    with pytest.raises(KeyError):
        parse_fdinfo("pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t7\n")  # a pipe's fdinfo: not a dma-buf


def test_read_sysfs_buffers(tmp_path):
    assert dump.read_sysfs_buffers(str(tmp_path / "absent")) is None
    for ino, size, exporter in ((5, 4096, "system"), (9, 8192, "udmabuf")):
        (tmp_path / str(ino)).mkdir()
        (tmp_path / str(ino) / "size").write_text(f"{size}\n")
        (tmp_path / str(ino) / "exporter_name").write_text(f"{exporter}\n")
    (tmp_path / "12").mkdir()  # freed while we read: no files
    (tmp_path / "attachments").mkdir()
    assert dump.read_sysfs_buffers(str(tmp_path)) == {5: (4096, "system"), 9: (8192, "udmabuf")}


def _synthetic_scan():
    scan = dump.Scan(debugfs="read")
    a = scan.buffer(1)
    a.size, a.exporter, a.name, a.refs = 8192, "system", "hello", 3
    a.holders[10] = dump.Holder(10, "a", [3, 4])
    a.holders[20] = dump.Holder(20, "b", [], 1, 8192)
    b = scan.buffer(2)
    b.size, b.exporter, b.refs = 4096, "udmabuf", 1
    b.holders[10] = dump.Holder(10, "a", [5], 1, 4096)
    c = scan.buffer(3)
    c.size, c.exporter, c.refs = 65536, "system", 1  # from debugfs: no visible holder
    d = scan.buffer(4)
    d.holders[20] = dump.Holder(20, "b", [], 1, 4096)  # mapped only, size unknown
    scan.denied = [1, 2]
    return scan


def test_report_counts_each_buffer_once():
    doc = dump.report(_synthetic_scan())
    assert doc["totals"] == {"buffers": 4, "bytes": 8192 + 4096 + 65536, "unknown_size": 1, "processes": 2}
    assert doc["exporters"] == {"(unknown)": {"buffers": 1, "bytes": 0}, "system": {"buffers": 2, "bytes": 73728},
                                "udmabuf": {"buffers": 1, "bytes": 4096}}
    a, b = doc["processes"]
    assert (a["pid"], a["buffer_count"], a["bytes"]) == (10, 2, 12288)
    assert (b["pid"], b["buffer_count"], b["bytes"]) == (20, 2, 8192)
    assert doc["uninspectable_processes"] == 2
    assert [h["pid"] for h in doc["buffers"][0]["processes"]] == [10, 20]


def test_report_restricted_to_pids():
    doc = dump.report(_synthetic_scan(), [20])
    assert [b["inode"] for b in doc["buffers"]] == [1, 4]
    assert [h["pid"] for h in doc["buffers"][0]["processes"]] == [10, 20]  # sharers stay complete
    assert [p["pid"] for p in doc["processes"]] == [20]
    assert doc["totals"]["buffers"] == 2 and doc["totals"]["bytes"] == 8192


def test_text_and_csv_output():
    doc = dump.report(_synthetic_scan())
    out = io.StringIO()
    dump.print_text(doc, out)
    text = out.getvalue()
    assert "4 buffers" in text and "2 processes could not be inspected" in text
    assert "1 buffer held by no process" in text and "1 buffer only mapped" in text
    assert "10 a (fds 3,4; maps 0), 20 b (fds -; maps 1)" in text
    out = io.StringIO()
    dump.print_csv(doc, out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert len(rows) == 5  # 2 holders of buffer 1, 1 of 2, none of 3 (one row), 1 of 4
    assert rows[0] == {"pid": "10", "process": "a", "inode": "1", "size": "8192", "exporter": "system",
                       "name": "hello", "fds": "3 4", "mappings": "0", "mapped_bytes": "0", "refs": "3"}
    assert rows[3]["pid"] == "" and rows[3]["inode"] == "3"


def test_bad_arguments(capsys):
    assert dump.main(["--pid", str(2**22 + 1)]) == 1
    assert "no process" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        dump.main(["--json", "--csv"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        dump.main(["--pid", "abc"])


# -- in the VM: children holding known buffers ------------------------------------------------------

KIB = 1024


def needs_devices(test):
    """Marks a test on the shared scenario kernel-level (the plugin's markers skip with the reason elsewhere)."""
    return pytest.mark.requires_udmabuf(pytest.mark.requires_dma_heap(name="system")(test))


@pytest.fixture(scope="module")
def scenario():
    """Three children holding six buffers in every way dump must see, the parent holding none.

    h1 16 KiB system, fd in A and in B (shared by fd passing); h2 8 KiB system, two fds in A;
    h3 12 KiB system, only mapped in B; u1 20 KiB udmabuf, fd in A and mapped only in C;
    u2 64 KiB udmabuf, only mapped in C; u3 4 KiB udmabuf, fd and mapping in C.
    Shared by the tests of this module, which only read it.
    """
    import linuxdmabuf

    need("heap:system")
    need("udmabuf")
    heap, udmabuf = linuxdmabuf.Heap("system"), linuxdmabuf.Udmabuf()
    a, b, c = Holder(), Holder(), Holder()
    bufs = {}
    try:
        for key, device, size, name in (("h1", heap, 16, "shared-heap"), ("h2", heap, 8, ""),
                                        ("h3", heap, 12, "mapped-only"), ("u1", udmabuf, 20, "shared-udmabuf"),
                                        ("u2", udmabuf, 64, ""), ("u3", udmabuf, 4, "fd+map")):
            bufs[key] = device.allocate(size * KIB)
            if name:
                bufs[key].name = name
        a.give(bufs["h1"]), b.give(bufs["h1"])
        a.give(bufs["h2"], "dup")
        b.give(bufs["h3"], "map")
        a.give(bufs["u1"]), c.give(bufs["u1"], "map")
        c.give(bufs["u2"], "map")
        c.give(bufs["u3"], "keep+map")
        inodes = {key: buf.inode for key, buf in bufs.items()}
        for buf in bufs.values():
            buf.close()  # the children keep them alive now
        yield {"A": a, "B": b, "C": c}, inodes
    finally:
        for buf in bufs.values():
            buf.close()
        for child in (a, b, c):
            child.close()
        heap.close()
        udmabuf.close()


def _dump(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "linuxdmabuf", "dump", *args], capture_output=True, text=True,
                          timeout=120)


def _dump_here(capsys, *args) -> tuple:
    """dump's main() in this process: (exit status, stdout)."""
    capsys.readouterr()
    status = dump.main(list(args))
    return status, capsys.readouterr().out


def _expected(children, inodes):
    """inode -> (size, exporter, name, {pid: (fd count, mappings)})."""
    a, b, c = (children[k].pid for k in "ABC")
    return {
        inodes["h1"]: (16 * KIB, "system", "shared-heap", {a: (1, 0), b: (1, 0)}),
        inodes["h2"]: (8 * KIB, "system", "", {a: (2, 0)}),
        inodes["h3"]: (12 * KIB, "system", "mapped-only", {b: (0, 1)}),
        inodes["u1"]: (20 * KIB, "udmabuf", "shared-udmabuf", {a: (1, 0), c: (0, 1)}),
        inodes["u2"]: (64 * KIB, "udmabuf", "", {c: (0, 1)}),
        inodes["u3"]: (4 * KIB, "udmabuf", "fd+map", {c: (1, 1)}),
    }


@needs_devices
def test_dump_json_reports_each_buffer_once_with_sharers_and_exact_totals(scenario):
    children, inodes = scenario
    pids = [children[k].pid for k in "ABC"]
    run = _dump("--json", *(f"--pid={pid}" for pid in pids))  # the console command, end to end
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    expected = _expected(children, inodes)
    assert sorted(b["inode"] for b in doc["buffers"]) == sorted(expected)
    for buf in doc["buffers"]:
        size, exporter, name, holders = expected[buf["inode"]]
        assert (buf["size"], buf["exporter"], buf["name"]) == (size, exporter, name), buf
        assert {h["pid"]: (len(h["fds"]), h["mappings"]) for h in buf["processes"]} == holders, buf
        for h in buf["processes"]:
            assert h["mapped_bytes"] == h["mappings"] * size
        if buf["refs"] is not None:  # known from fdinfo or debugfs
            # every reference to the buffer's file is an fd or a mapping of one of our children
            assert buf["refs"] == sum(n + m for n, m in holders.values()), buf
    system = [v for v in expected.values() if v[1] == "system"]
    udma = [v for v in expected.values() if v[1] == "udmabuf"]
    assert doc["exporters"] == {"system": {"buffers": 3, "bytes": sum(v[0] for v in system)},
                                "udmabuf": {"buffers": 3, "bytes": sum(v[0] for v in udma)}}
    assert doc["totals"] == {"buffers": 6, "bytes": 124 * KIB, "unknown_size": 0, "processes": 3}
    per_process = {p["pid"]: (p["buffer_count"], p["bytes"]) for p in doc["processes"]}
    assert per_process == {pids[0]: (3, 44 * KIB), pids[1]: (2, 28 * KIB), pids[2]: (3, 88 * KIB)}
    assert doc["uninspectable_processes"] == 0  # root


@needs_devices
def test_dump_whole_system_includes_the_scenario(scenario, capsys):
    children, inodes = scenario
    status, out = _dump_here(capsys, "--json")
    assert status == 0
    doc = json.loads(out)
    seen = {b["inode"]: b for b in doc["buffers"]}
    assert set(inodes.values()) <= set(seen)
    assert doc["totals"]["buffers"] == len(doc["buffers"]) >= 6
    assert doc["totals"]["bytes"] == sum(b["size"] or 0 for b in doc["buffers"])
    assert sum(e["buffers"] for e in doc["exporters"].values()) == doc["totals"]["buffers"]


@needs_devices
def test_dump_text_and_csv(scenario, capsys):
    children, inodes = scenario
    pids = [str(children[k].pid) for k in "ABC"]
    status, out = _dump_here(capsys, "--pid", pids[2])
    assert status == 0
    assert f"PID {pids[2]} python" in out and "By exporter:" in out
    assert f"{inodes['u1']}" in out and "shared-udmabuf" in out
    assert f"{pids[0]} python" in out  # the other sharer of u1 is named in its buffer row
    status, out = _dump_here(capsys, "--csv", "--pid", pids[0], "--pid", pids[1], "--pid", pids[2])
    assert status == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 8  # one per (process, buffer): h1 twice, h2, h3, u1 twice, u2, u3
    assert {(r["pid"], r["inode"]) for r in rows if r["mappings"] == "1"} == {
        (pids[1], str(inodes["h3"])), (pids[2], str(inodes["u1"])), (pids[2], str(inodes["u2"])),
        (pids[2], str(inodes["u3"]))}


@needs_devices
def test_debugfs_bufinfo_agrees_with_procfs(scenario):
    """The same buffers through the other door: debugfs (root, full kernel) lists them with the same sizes."""
    from linuxdmabuf._mounts import debugfs_mount

    need("debugfs:bufinfo")
    mount = debugfs_mount()
    children, inodes = scenario
    with open(os.path.join(mount, "dma_buf", "bufinfo")) as f:
        entries = {e.ino: e for e in parse_bufinfo(f.read())}
    expected = _expected(children, inodes)
    for inode, (size, exporter, name, holders) in expected.items():
        assert (entries[inode].size, entries[inode].exp_name, entries[inode].name) == (size, exporter, name)
        assert entries[inode].count == sum(n + m for n, m in holders.values())


def test_buffer_held_by_no_process_comes_from_debugfs(dma_heap):
    """A buffer only the kernel holds: here an fd in flight in a unix socket's queue, which no process has."""
    import socket

    need("debugfs:bufinfo")
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with left, right:
        with dma_heap.allocate(36 * KIB) as buf:
            buf.name = "in-flight"
            inode = buf.inode
            socket.send_fds(left, [b"x"], [buf.fileno()])
        result = dump.scan()
        found = result.buffers[inode]
        assert (found.size, found.exporter, found.name, found.holders) == (36 * KIB, "system", "in-flight", {})
        assert found.sources == {"debugfs"}
        assert any(b["inode"] == inode and not b["processes"] for b in dump.report(result)["buffers"])


# -- races: what a process or fd does between our reads ----------------------------------------------

def _victim_and_witness(dma_heap, udmabuf):
    victim, witness = Holder(), Holder()
    with dma_heap.allocate(8 * KIB) as shared, udmabuf.allocate(4 * KIB) as own:
        victim.give(shared), witness.give(shared)
        victim.give(own, "keep+map")
        return victim, witness, shared.inode, own.inode


@pytest.mark.parametrize("moment", ["before fds", "before maps", "before name"])
def test_process_exiting_mid_scan_is_skipped(dma_heap, udmabuf, monkeypatch, moment):
    victim, witness, shared, own = _victim_and_witness(dma_heap, udmabuf)
    try:
        real_listdir, real_read = os.listdir, _procfs._read

        def listdir(path):
            if moment == "before fds" and str(path).rstrip("/") == f"/proc/{victim.pid}/fd":
                victim.kill()
            return real_listdir(path)

        def read(path, size=0):
            if (moment, path) in (("before maps", f"/proc/{victim.pid}/maps"), ("before name", f"/proc/{victim.pid}/comm")):
                victim.kill()
            return real_read(path, size)

        monkeypatch.setattr(_procfs.os, "listdir", listdir)
        monkeypatch.setattr(_procfs, "_read", read)
        result = dump.scan()
        assert victim.proc.returncode is not None  # it really exited during the scan
        assert victim.pid not in result.buffers[shared].holders
        assert set(result.buffers[shared].holders) == {witness.pid}
        assert own not in result.buffers or not result.buffers[own].holders
        assert victim.pid not in result.denied
    finally:
        victim.close()
        witness.close()


def test_fd_closed_or_reused_mid_scan_is_skipped(dma_heap, udmabuf, monkeypatch):
    victim, witness, shared, own = _victim_and_witness(dma_heap, udmabuf)
    try:
        real_listdir, real_stat = os.listdir, os.stat
        fd_dir = f"/proc/{victim.pid}/fd"
        reused = []

        def listdir(path):
            names = real_listdir(path)
            return names + ["987"] if str(path).rstrip("/") == fd_dir else names  # an fd closed since the listing

        def stat(path, *args, **kwargs):
            if str(path).startswith(fd_dir + "/") and not reused:
                reused.append(path)  # its first dma-buf fd became a regular file between readlink and stat
                return real_stat("/etc/passwd")
            return real_stat(path, *args, **kwargs)

        monkeypatch.setattr(_procfs.os, "listdir", listdir)
        monkeypatch.setattr(_procfs.os, "stat", stat)
        result = dump.scan()
        holders = [result.buffers[i].holders.get(victim.pid) for i in (shared, own)]
        assert reused and sum(len(h.fds) for h in holders if h) == 1  # one of its two fds skipped, nothing broke
        assert result.buffers[own].holders[victim.pid].mappings == 1
        assert real_stat("/etc/passwd").st_ino not in result.buffers
    finally:
        victim.close()
        witness.close()


@needs_devices
def test_without_debugfs_exporters_come_from_fdinfo(scenario, monkeypatch):
    """As a user who may not read debugfs: exporter and refs from one fdinfo per buffer; a buffer only mapped
    keeps its size from map_files (root) and has no exporter."""
    children, inodes = scenario
    monkeypatch.setattr(_procfs, "debugfs_mount", lambda: None)
    result = dump.scan()
    assert result.debugfs == "not mounted"
    for inode, (size, exporter, name, holders) in _expected(children, inodes).items():
        buf = result.buffers[inode]
        assert (buf.size, buf.name) == (size, name)
        if any(n for n, m in holders.values()):
            assert buf.exporter == exporter and "fdinfo" in buf.sources
            assert buf.refs == sum(n + m for n, m in holders.values())
        else:
            assert buf.exporter is None and buf.sources == {"maps", "map_files"}


@needs_devices
def test_buffer_whose_fds_all_closed_during_the_scan_is_dropped(scenario, monkeypatch):
    children, inodes = scenario
    monkeypatch.setattr(_procfs, "debugfs_mount", lambda: None)
    real_read = _procfs._read
    h2_fds = f"/proc/{children['A'].pid}/fdinfo/"

    def read(path, size=0):
        text = real_read(path, size)
        if path.startswith(h2_fds) and f"\nino:\t{inodes['h2']}\n" in text:
            raise FileNotFoundError(path)  # both fds of h2 closed between the fd listing and fdinfo
        return text

    monkeypatch.setattr(_procfs, "_read", read)
    result = dump.scan()
    assert inodes["h2"] not in result.buffers and inodes["h1"] in result.buffers


def test_dump_survives_churn(dma_heap, udmabuf):
    """Processes mapping, closing and exiting at random moments while dump reads them: every scan completes
    and counts each buffer once."""
    import random

    rng = random.Random(4)
    for _ in range(4):
        bufs = [dma_heap.allocate(4 * KIB) for _ in range(3)] + [udmabuf.allocate(4 * KIB) for _ in range(3)]
        maps = [buf.map() for buf in bufs[:2]]
        children = []
        try:
            for i in range(8):
                pauses = (rng.uniform(0, 0.2), rng.uniform(0, 0.2))
                pid = os.fork()
                if pid == 0:  # the child: drop some of the inherited buffers, then exit, at random moments
                    try:
                        time.sleep(pauses[0])
                        for buf in bufs[i % 3::3]:
                            os.close(buf.fileno())
                        time.sleep(pauses[1])
                    finally:
                        os._exit(0)
                children.append(pid)
            for buf in bufs:
                buf.close()
            for m in maps:
                m.close()
            doc = dump.report(dump.scan())
            assert doc["totals"]["buffers"] == len(doc["buffers"]) == len({b["inode"] for b in doc["buffers"]})
            assert doc["totals"]["bytes"] == sum(b["size"] or 0 for b in doc["buffers"])
        finally:
            for buf in bufs:
                buf.close()
            for pid in children:
                os.waitpid(pid, 0)


@pytest.mark.unprivileged
def test_unprivileged_dump_counts_processes_it_may_not_inspect():
    if os.getuid() == 0:
        pytest.skip("runs as an unprivileged user (tools/run-tests runs it as nobody)")
    run = _dump("--json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["uninspectable_processes"] >= 1  # at least init, which is root's
    run = _dump()
    assert "could not be inspected by this user: run as root" in run.stdout
    assert run.stdout.count("could not be inspected") == 1
    run = _dump("--pid", "1")
    assert run.returncode == 1 and "may not inspect process 1" in run.stderr
