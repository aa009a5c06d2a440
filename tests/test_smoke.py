"""Kernel-level smoke tests: the main job end to end on every kernel that has the device."""
import os


def test_udmabuf_from_sealed_memfd_round_trip(udmabuf):
    import fcntl

    memfd = os.memfd_create("smoke", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    try:
        os.ftruncate(memfd, 8192)
        fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
        with udmabuf.create(memfd) as buf:
            with buf.cpu_access(), buf.map() as m:
                m[4096:4101] = b"hello"
            assert os.pread(memfd, 5, 4096) == b"hello"
            with buf.export_sync_file() as fence:
                assert fence.wait(0)
    finally:
        os.close(memfd)


def test_system_heap_map_write_sync_export(dma_heap):
    with dma_heap.allocate(4096) as buf:
        with buf.cpu_access(write=True, read=False), buf.map() as m:
            m[:3] = b"abc"
        assert buf.read(3) == b"abc"
        with buf.export_sync_file(write=True) as fence:
            assert fence.signaled
