"""Heap on the real kernel: discovery by name and kind, allocation semantics and errors."""
import errno
import os

import pytest

from linuxdmabuf import Heap

PAGE = os.sysconf("SC_PAGE_SIZE")


@pytest.mark.kernel
def test_available_lists_dev_dma_heap_sorted():
    names = Heap.available()
    assert names == sorted(os.listdir("/dev/dma_heap")) if os.path.isdir("/dev/dma_heap") else names == []


def test_open_by_name_path_and_repr(dma_heap):
    assert dma_heap.name == "system" and dma_heap.path == "/dev/dma_heap/system"
    assert "name='system'" in repr(dma_heap)
    with Heap(dma_heap.fileno()) as shared:  # adopting gives the same name and path
        assert shared.path == dma_heap.path
        shared.detach()


def test_a_failure_after_open_leaves_no_fd(dma_heap, vgem, monkeypatch):
    """Deriving an object's state (its path: a readlink of /proc/self/fd) may fail after the device
    is open: the object owns the fd by then and closes it -- Heap(name), dup(), DrmDevice.find()."""
    from helpers import open_fds

    import linuxdmabuf.drm
    import linuxdmabuf.heap
    from linuxdmabuf.drm import DrmDevice

    def fails(fd):
        raise OSError(errno.EMFILE, "readlink failed")

    before = open_fds()
    monkeypatch.setattr(linuxdmabuf.heap, "fd_target", fails)
    monkeypatch.setattr(linuxdmabuf.drm, "fd_target", fails)
    for call in (lambda: Heap("system"), dma_heap.dup, vgem.dup, lambda: DrmDevice.find("vgem")):
        with pytest.raises(OSError, match="readlink failed"):
            call()
        assert open_fds() == before


def test_missing_heap_names_the_ones_that_exist(dma_heap):
    with pytest.raises(FileNotFoundError) as info:
        Heap("no-such-heap")
    assert "system" in str(info.value) and "/dev/dma_heap/no-such-heap" in str(info.value)


@pytest.mark.parametrize("name, error", [("", ValueError), ("../udmabuf", ValueError), (".", ValueError),
                                         ("a/b", ValueError), (b"system", TypeError), (None, TypeError)])
def test_bad_heap_names(name, error):
    with pytest.raises(error):
        Heap(name)


def test_system_heap_kind(dma_heap):
    assert dma_heap.kind == "system"


def test_cma_heap_is_discovered_not_named(dma_heap_cma):
    """The CMA heap's name differs between kernels; its kind is found by allocating."""
    assert dma_heap_cma.kind == "cma"
    assert dma_heap_cma.name in Heap.available(kind="cma")
    assert "system" in Heap.available(kind="system")
    with dma_heap_cma.allocate(64 * 1024) as buf:
        assert buf.exporter == dma_heap_cma.name  # a CMA heap exports under its own name


def test_cma_pool_exhaustion_is_enomem_with_the_heap_named(dma_heap_cma):
    with pytest.raises(OSError) as info:
        dma_heap_cma.allocate(1 << 30)
    assert info.value.errno == errno.ENOMEM and dma_heap_cma.name in str(info.value)


@pytest.mark.parametrize("size, expected", [(1, PAGE), (PAGE - 1, PAGE), (PAGE, PAGE), (PAGE + 1, 2 * PAGE),
                                            (1 << 20, 1 << 20)])
def test_sizes_round_up_to_pages(dma_heap, size, expected):
    with dma_heap.allocate(size) as buf:
        assert buf.size == expected


def test_memory_is_zeroed(dma_heap):
    for _ in range(4):
        with dma_heap.allocate(64 * 1024) as buf:
            assert buf.read() == bytes(64 * 1024)
            buf.write(b"\xff" * 1024)


@pytest.mark.parametrize("size, error", [(0, ValueError), (-1, ValueError), (2**64, ValueError),
                                         (1.5, TypeError), ("4096", TypeError), (True, TypeError)])
def test_bad_sizes_refused_before_the_kernel(dma_heap, size, error):
    with pytest.raises(error):
        dma_heap.allocate(size)


def test_too_big_is_the_kernels_enomem(dma_heap):
    with pytest.raises(OSError) as info:
        dma_heap.allocate(2**64 - 2 * PAGE)
    assert info.value.errno == errno.ENOMEM and "RAM" in str(info.value)


def test_readonly_allocation_is_o_rdonly(dma_heap):
    with dma_heap.allocate(PAGE, readonly=True) as ro, dma_heap.allocate(PAGE) as rw:
        assert ro.readonly and not rw.readonly


@pytest.mark.requires_dma_heap
def test_kind_and_allocate_on_every_heap_here():
    for name in Heap.available():
        with Heap(name) as heap, heap.allocate(PAGE) as buf:
            assert heap.kind in ("system", "cma") and buf.size == PAGE
