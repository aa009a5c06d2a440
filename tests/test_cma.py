"""The CMA view (linuxdmabuf.cma, `linuxdmabuf cma`, the ENOMEM explanation) against the kernel's own files.

The oracle for every figure is the kernel's file read here directly
(<debugfs>/cma/<area>/{count,used,maxchunk}, /proc/meminfo); the holes of the
picture are checked against the buffers this test freed.
"""
import errno
import json
import os
import subprocess
import sys
import threading

import pytest

from linuxdmabuf import Heap, cma
from linuxdmabuf._mounts import debugfs_mount
from linuxdmabuf.cli import cma as cli
from linuxdmabuf.pytest_plugin import need

pytestmark = pytest.mark.kernel
MIB = 1 << 20


def kernel_file(area: str, name: str) -> int:
    with open(os.path.join(debugfs_mount(), "cma", area, name)) as f:
        return int(f.read())


def fill(heap: Heap, size: int = MIB) -> list:
    bufs = []
    try:
        while True:
            bufs.append(heap.allocate(size))
    except OSError as e:
        assert e.errno == errno.ENOMEM
    return bufs


@pytest.fixture
def reserved():
    need("cma_heap:reserved")
    if os.geteuid() != 0:
        pytest.skip("reads debugfs: root")
    with Heap("reserved") as heap:
        yield heap


def test_a_fragmented_pool_explains_its_enomem_with_the_kernels_numbers(reserved):
    bufs = fill(reserved)
    try:
        before = cma.area("reserved", holders=False).bitmap
        freed = bufs[::2]
        for buf in freed:
            buf.close()
        with pytest.raises(OSError) as info:
            reserved.allocate(2 * MIB)
        assert info.value.errno == errno.ENOMEM
        count, used, maxchunk = (kernel_file("reserved", n) for n in ("count", "used", "maxchunk"))
        assert (count - used) * 4096 >= 2 * MIB > maxchunk * 4096  # half the pool free, no 2 MiB run
        message = str(info.value)
        assert "2.0 MiB asked (512 pages) from CMA area reserved" in message
        assert f"{(count - used) * 4096 / MIB:.1f} MiB free of {count * 4096 / MIB:.1f} MiB" in message
        assert f"the largest free run is {maxchunk * 4096 / MIB:.1f} MiB ({maxchunk} pages): the pool is fragmented" \
            in message
        assert f"python[{os.getpid()}]" in message or f"[{os.getpid()}]: {len(bufs) - len(freed)} buffers" in message
        assert "cma=" in message

        area = cma.area("reserved")
        assert (area.total_pages, area.used_pages, area.largest_free_pages) == (count, used, maxchunk)
        assert area.free_pages == count - used and {"reserved", "default_cma_region"} <= set(area.heaps)
        assert sum(area.bitmap) << area.order_per_bit == used  # the bitmap read agrees with the kernel's count
        assert area.largest_free_run()[1] == maxchunk
        mine = [h for h in area.holders if h.pid == os.getpid()]
        assert mine and mine[0].buffers == len(bufs) - len(freed) and mine[0].bytes == mine[0].buffers * MIB

        # The holes: what the freeing turned free is exactly one 1 MiB run per freed buffer.
        holes = [i for i, (was, now) in enumerate(zip(before, area.bitmap)) if was and not now]
        runs = [i for i in holes if i - 1 not in holes]
        assert len(holes) == len(freed) * 256 and len(runs) == len(freed)
        assert all(set(range(r, r + 256)) <= set(holes) for r in runs)
        # ...and the picture draws them: every cell wholly inside a hole is free (. or =)
        width, rows = 64, 4
        picture = "".join(cli.blocks(area, width, rows))
        bits = len(area.bitmap)
        for cell, char in enumerate(picture):
            lo, hi = cell * bits // (width * rows), (cell + 1) * bits // (width * rows)
            if all(i in holes for i in range(lo, hi)):
                assert char in ".=", (cell, char)
            if all(area.bitmap[i] for i in range(lo, hi)):
                assert char == "#", (cell, char)
    finally:
        for buf in bufs:
            buf.close()


def test_the_cli_draws_the_pool_and_agrees_with_the_kernel(reserved, tmp_path):
    bufs = fill(reserved)
    try:
        for buf in bufs[1::2]:
            buf.close()
        png = tmp_path / "pool.png"
        done = subprocess.run([sys.executable, "-m", "linuxdmabuf", "cma", "reserved", "--json", "--png", str(png)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        [doc] = json.loads(done.stdout)["areas"]
        used, maxchunk = kernel_file("reserved", "used"), kernel_file("reserved", "maxchunk")
        assert doc["used_pages"] == used and doc["largest_free_pages"] == maxchunk
        assert doc["bitmap"].count("1") == used and doc["largest_free_run"]["pages"] == maxchunk
        assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        text = subprocess.run([sys.executable, "-m", "linuxdmabuf", "cma"], capture_output=True, text=True,
                              timeout=120).stdout
        assert f"used {used} pages" in text and f"largest free run {maxchunk} pages" in text
        assert "pool (# used, + partly used, . free, = the largest free run):" in text and "|" in text
    finally:
        for buf in bufs:
            buf.close()


HOLDER = """
import sys, linuxdmabuf
heap = linuxdmabuf.Heap("reserved")
bufs = [heap.allocate(1 << 20) for _ in range(40)]
print("ready", flush=True)
sys.stdin.read()
"""


def test_another_process_holding_the_pool_is_named(reserved):
    child = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        [top, *_] = cma.area("reserved").holders
        assert (top.pid, top.buffers, top.bytes) == (child.pid, 40, 40 * MIB)
        with pytest.raises(OSError) as info:
            reserved.allocate(32 * MIB)
        assert info.value.errno == errno.ENOMEM
        assert f"[{child.pid}]: 40 buffers, 40.0 MiB" in str(info.value)
    finally:
        child.stdin.close()
        child.wait(60)


def test_a_pool_changing_under_the_reader(reserved):
    stop = threading.Event()

    def churn():
        while not stop.is_set():
            bufs = []
            try:
                for _ in range(8):
                    bufs.append(reserved.allocate(MIB))
            except OSError:
                pass
            for buf in bufs:
                buf.close()

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        for _ in range(30):
            [area] = [a for a in cma.areas() if a.name == "reserved"]
            assert area.used_pages + area.free_pages == area.total_pages
            assert 0 <= area.largest_free_pages <= area.free_pages
    finally:
        stop.set()
        thread.join()


def test_bad_area_names():
    names = cma.area_names()
    with pytest.raises(ValueError, match="no CMA area 'nosuch': " + ("the areas are" if names else "")):
        cma.area("nosuch")
    with pytest.raises(TypeError):
        cma.area(3)


def test_the_view_shows_what_this_kernel_has_and_names_what_is_missing():
    """Every kernel of the matrix: the full kernel has everything; Debian's show less, saying why."""
    with open("/proc/meminfo") as f:
        meminfo = f.read()
    found = cma.areas(holders=False)
    if "CmaTotal:" not in meminfo:
        assert found == [] and "this kernel has no CMA (CONFIG_CMA" in cma.why_no_areas()
    elif not found:
        assert "CmaTotal" in cma.why_no_areas()
    for area in found:
        assert area.total_pages is not None, area.missing
        if area.bitmap is None:  # no debugfs cma/ (CONFIG_CMA_DEBUGFS), or not root
            assert "CONFIG_CMA_DEBUGFS" in area.missing["bitmap"] or "root" in area.missing["bitmap"]
            assert area.largest_free_pages is None
    done = subprocess.run([sys.executable, "-m", "linuxdmabuf", "cma"], capture_output=True, text=True, timeout=120)
    if found:
        assert done.returncode == 0 and f"CMA area {found[0].name}:" in done.stdout
    else:
        assert done.returncode == 1 and cma.why_no_areas() in done.stderr


@pytest.mark.unprivileged
def test_an_unprivileged_user_sees_what_is_readable_and_is_told_what_needs_root():
    if os.geteuid() == 0:
        pytest.skip("runs as an unprivileged user (tools/run-tests runs it as nobody)")
    for area in cma.areas(holders=False):
        if os.path.isdir(os.path.join(cma.SYSFS, area.name)):
            assert area.total_pages is not None and area.free_pages is not None
        assert area.bitmap is None and area.missing["bitmap"]  # debugfs: root only, or not mounted


def test_dump_and_the_leak_check_show_cma_buffers_as_such(reserved):
    from linuxdmabuf.pytest_plugin import _describe_fd

    with reserved.allocate(MIB) as buf:
        done = subprocess.run([sys.executable, "-m", "linuxdmabuf", "dump", "--json", "--pid", str(os.getpid())],
                              capture_output=True, text=True, timeout=120)
        [row] = [b for b in json.loads(done.stdout)["buffers"] if b["inode"] == buf.inode]
        assert row["exporter"] == "reserved" and row["cma_area"] == "reserved"
        text = subprocess.run([sys.executable, "-m", "linuxdmabuf", "dump", "--pid", str(os.getpid())],
                              capture_output=True, text=True, timeout=120).stdout
        assert "reserved (CMA reserved)" in text
        target = os.readlink(f"/proc/self/fd/{buf.fileno()}")
        assert "exporter reserved (CMA area reserved)" in _describe_fd(buf.fileno(), target, [])


def test_info_shows_each_area_with_the_kernels_figures(reserved):
    from linuxdmabuf.cli import info

    with reserved.allocate(3 * MIB):
        [doc] = [a for a in info.collect()["cma"]["areas"] if a["name"] == "reserved"]
        count, used, maxchunk = (kernel_file("reserved", n) for n in ("count", "used", "maxchunk"))
        assert (doc["total_pages"], doc["used_pages"], doc["largest_free_pages"]) == (count, used, maxchunk)
        assert {"reserved", "default_cma_region"} <= set(doc["heaps"])
        text = subprocess.run([sys.executable, "-m", "linuxdmabuf", "info"], capture_output=True, text=True,
                              timeout=120).stdout
        assert f"  reserved: total {count} pages (64.0 MiB), free {count - used} pages" in text
