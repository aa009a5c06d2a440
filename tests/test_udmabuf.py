"""Udmabuf on the real kernel: memfd pages as dma-bufs, segment lists, limits, and every refusal."""
import errno
import fcntl
import os

import pytest
from helpers import sealed_memfd

from linuxdmabuf import Udmabuf

PAGE = os.sysconf("SC_PAGE_SIZE")
PARAMS = "/sys/module/udmabuf/parameters"


@pytest.fixture
def memfd():
    fd = sealed_memfd(16 * PAGE)
    yield fd
    os.close(fd)


def test_create_shares_pages_with_the_memfd(udmabuf, memfd):
    with udmabuf.create(memfd, PAGE, 2 * PAGE) as buf:
        assert buf.size == 2 * PAGE and buf.exporter == "udmabuf" and not buf.readonly
        os.pwrite(memfd, b"from memfd", PAGE)
        assert buf.read(10) == b"from memfd"
        buf.write(b"from dma-buf", PAGE)
        assert os.pread(memfd, 12, 2 * PAGE) == b"from dma-buf"


def test_size_none_means_to_the_end(udmabuf, memfd):
    with udmabuf.create(memfd) as whole, udmabuf.create(memfd, 4 * PAGE) as tail:
        assert whole.size == 16 * PAGE and tail.size == 12 * PAGE


def test_create_accepts_objects_with_fileno(udmabuf, memfd):
    with open(memfd, "rb", closefd=False) as f, udmabuf.create(f, 0, PAGE) as buf:
        assert buf.size == PAGE


def test_create_list_orders_segments_like_the_selftest(udmabuf):
    """Kernel selftest udmabuf test-5: four 4-page pieces at 1 MiB strides become one buffer."""
    fd = sealed_memfd(4 << 20)
    try:
        segments = [(fd, i << 20, 4 * PAGE) for i in range(4)]
        with udmabuf.create_list(segments) as buf:
            assert buf.size == 16 * PAGE
            for i in range(4):
                for j in range(4):
                    os.pwrite(fd, bytes([0x10 * i + j]), (i << 20) + j * PAGE)
            data = buf.read()
            assert [data[k * PAGE] for k in range(16)] == [0x10 * i + j for i in range(4) for j in range(4)]
    finally:
        os.close(fd)


def test_create_list_across_memfds_and_repeats(udmabuf, memfd):
    other = sealed_memfd(PAGE)
    try:
        os.pwrite(other, b"B", 0)
        os.pwrite(memfd, b"A", 0)
        with udmabuf.create_list([(memfd, 0, PAGE), (other, 0, PAGE), (memfd, 0, PAGE)]) as buf:
            assert buf.read(1, 0) + buf.read(1, PAGE) + buf.read(1, 2 * PAGE) == b"ABA"
    finally:
        os.close(other)


def test_allocate_makes_its_own_sealed_memfd(udmabuf):
    before = set(os.listdir("/proc/self/fd"))
    with udmabuf.allocate(PAGE + 1) as buf:
        assert buf.size == 2 * PAGE
        assert set(os.listdir("/proc/self/fd")) - before == {str(buf.fileno())}  # the memfd is closed again


def test_limits_read_the_module_parameters():
    limits = Udmabuf.limits()
    for name in ("size_limit_mb", "list_limit"):
        path = os.path.join(PARAMS, name)
        assert limits[name] == (int(open(path).read()) if os.path.exists(path) else None)


@pytest.mark.requires_udmabuf
def test_limits_are_shown_by_every_kernel_with_udmabuf():
    """udmabuf shows both parameters in sysfs, built in or a module; the VM's kernels keep the defaults."""
    limits = Udmabuf.limits()
    assert isinstance(limits["size_limit_mb"], int) and isinstance(limits["list_limit"], int), limits
    if os.environ.get("LINUXDMABUF_IN_VM") and not os.environ.get("LINUXDMABUF_VM_APPEND"):
        assert limits == {"size_limit_mb": 64, "list_limit": 1024}  # drivers/dma-buf/udmabuf.c


def _einval(call) -> str:
    with pytest.raises(OSError) as info:
        call()
    assert info.value.errno == errno.EINVAL, info.value
    return str(info.value)


def test_memfd_without_f_seal_shrink_names_the_seal(udmabuf):
    fd = sealed_memfd(PAGE, seals=0)
    try:
        message = _einval(lambda: udmabuf.create(fd))
        assert "F_SEAL_SHRINK" in message and "F_ADD_SEALS" in message
    finally:
        os.close(fd)


def test_memfd_that_cannot_be_sealed_says_how_to_create_it(udmabuf):
    fd = os.memfd_create("unsealable", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, PAGE)
        assert "MFD_ALLOW_SEALING" in _einval(lambda: udmabuf.create(fd))
    finally:
        os.close(fd)


def test_write_sealed_memfd_is_refused(udmabuf):
    fd = sealed_memfd(PAGE, seals=fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_WRITE)
    try:
        assert "F_SEAL_WRITE" in _einval(lambda: udmabuf.create(fd))
    finally:
        os.close(fd)


def test_range_past_the_end_of_the_memfd(udmabuf, memfd):
    assert "past the end" in _einval(lambda: udmabuf.create(memfd, 0, 32 * PAGE))


def test_not_a_memfd_is_ebadfd(udmabuf):
    r, w = os.pipe()
    regular = os.open(__file__, os.O_RDONLY)
    try:
        for fd in (r, regular):
            with pytest.raises(OSError) as info:
                udmabuf.create(fd, 0, PAGE)
            assert info.value.errno == errno.EBADFD and "memfd" in str(info.value)
    finally:
        for fd in (r, w, regular):
            os.close(fd)


@pytest.mark.parametrize("offset, size", [(1, PAGE), (PAGE // 2, PAGE), (0, PAGE // 2), (0, 0), (-PAGE, PAGE),
                                          (0, -PAGE)])
def test_unaligned_or_empty_ranges_refused_before_the_kernel(udmabuf, memfd, offset, size):
    with pytest.raises(ValueError):
        udmabuf.create(memfd, offset, size)


def test_bad_arguments(udmabuf, memfd):
    for call, error in [(lambda: udmabuf.create("3"), TypeError), (lambda: udmabuf.create(-1), ValueError),
                        (lambda: udmabuf.create(memfd, 0.0), TypeError), (lambda: udmabuf.create_list([]), ValueError),
                        (lambda: udmabuf.create_list([(memfd, 0)]), TypeError), (lambda: udmabuf.allocate(0), ValueError),
                        (lambda: udmabuf.allocate(-5), ValueError), (lambda: udmabuf.allocate("1"), TypeError)]:
        with pytest.raises(error):
            call()


def test_size_limit_names_the_parameter(udmabuf):
    limit = Udmabuf.limits()["size_limit_mb"]
    assert limit is not None, f"udmabuf shows no {PARAMS}/size_limit_mb"
    fd = sealed_memfd((limit + 1) << 20)
    try:
        message = _einval(lambda: udmabuf.create(fd))
        assert f"size_limit_mb={limit}" in message
        with udmabuf.create(fd, 0, limit << 20) as buf:  # exactly the limit is allowed
            assert buf.size == limit << 20
    finally:
        os.close(fd)


@pytest.fixture
def list_limit_of_two():
    """Lower udmabuf's list_limit to 2 for a test (root; the parameter is 0644)."""
    path = os.path.join(PARAMS, "list_limit")
    if not os.access(path, os.W_OK):
        pytest.skip(f"cannot write {path} (needs root and a kernel showing the parameter)")
    saved = open(path).read()
    with open(path, "w") as f:
        f.write("2")
    yield
    with open(path, "w") as f:
        f.write(saved)


def test_list_limit_names_the_parameter(udmabuf, memfd, list_limit_of_two):
    with udmabuf.create_list([(memfd, 0, PAGE)] * 2) as buf:
        assert buf.size == 2 * PAGE
    assert "list_limit=2" in _einval(lambda: udmabuf.create_list([(memfd, 0, PAGE)] * 3))


@pytest.fixture
def huge_pages():
    """Two free 2 MiB huge pages for a test (root), restored afterwards."""
    path = "/proc/sys/vm/nr_hugepages"
    if os.geteuid() != 0:
        pytest.skip("reserving huge pages needs root")
    if not os.path.exists(path):
        pytest.skip(f"kernel {os.uname().release} has no huge pages (CONFIG_HUGETLBFS)")
    saved = open(path).read()
    with open(path, "w") as f:
        f.write(str(int(saved) + 2))
    yield
    with open(path, "w") as f:
        f.write(saved)


def test_hugetlb_memfd(udmabuf, huge_pages):
    with udmabuf.allocate(PAGE, hugetlb=True) as buf:
        assert buf.size == 2 << 20
        buf.write(b"huge", (1 << 20) + 8)
        assert buf.read(4, (1 << 20) + 8) == b"huge"


def test_hugetlb_without_free_huge_pages_is_enomem_with_the_fix(udmabuf):
    with open("/proc/meminfo") as f:
        free = [int(line.split()[1]) for line in f if line.startswith("HugePages_Free:")]
    if not free or free[0]:
        pytest.skip("this test needs a kernel with huge pages and none free")
    with pytest.raises(OSError) as info:
        udmabuf.allocate(PAGE, hugetlb=True)
    assert info.value.errno == errno.ENOMEM and "nr_hugepages" in str(info.value)
