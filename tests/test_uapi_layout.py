"""The cdefs and the ioctl numbers equal the kernel's own uAPI headers.

A C probe, generated from what cffi knows, is compiled against the headers
(linux-libc-dev: tools/uapi-headers gives the newest, fetched by the set-up
command) and prints every struct size, field offset, constant and ioctl number
the library uses; each must equal cffi's / linuxdmabuf._uapi's value. It does
so on each architecture of the VM runner (x86_64, i386, armhf, arm64), with
Debian's cross compilers and, for the values cffi computes there, the Python
of that architecture's Debian userland, both run under qemu-user. The
sw_sync structs live in drivers/dma-buf/sw_sync.c, in no header: the kernel
itself checks them (tests/test_syncfile.py's ioctls only work if the request
numbers, which encode the struct sizes, are exactly the kernel's).
"""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from linuxdmabuf import _uapi
from linuxdmabuf._uapi import ffi
from linuxdmabuf.vm import userland
from linuxdmabuf.vm.userland import ARCHES

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CDEFS = os.path.join(TOP, "cdefs")
# cdefs file -> the uAPI header it was taken from
HEADERS = {"dma-buf.h": "linux/dma-buf.h", "dma-heap.h": "linux/dma-heap.h", "udmabuf.h": "linux/udmabuf.h",
           "sync_file.h": "linux/sync_file.h", "drm.h": "drm/drm.h", "drm_mode.h": "drm/drm_mode.h",
           "vgem_drm.h": "drm/vgem_drm.h", "videodev2.h": "linux/videodev2.h"}
NOT_IN_HEADERS = {"sw_sync.h", "libc.h", "linux-types.h"}


def _declared(name: str):
    """The structs and #define constants one cdefs file declares."""
    with open(os.path.join(CDEFS, name)) as f:
        text = f.read()
    return re.findall(r"^struct (\w+) \{", text, re.M), re.findall(r"^#define (\w+) ", text, re.M)


def test_every_cdefs_file_is_stamped_and_mapped():
    for name in os.listdir(CDEFS):
        if name.endswith(".h"):
            assert name in HEADERS or name in NOT_IN_HEADERS, f"cdefs/{name}: which header is it from?"
            with open(os.path.join(CDEFS, name)) as f:
                head = f.read(600)
            assert "Linux 7.2" in head or name == "libc.h", f"cdefs/{name} says nothing of where it came from"


def _ioctl_numbers() -> dict:
    return {name: value for name, value in vars(_uapi).items()
            if re.fullmatch(r"(DMA_BUF|DMA_HEAP|UDMABUF|SYNC_IOC|DRM|VIDIOC|V4L2)_\w+", name) and isinstance(value, int)}


def _expected_and_probe() -> tuple:
    expected, lines = {}, []
    for cdefs, header in HEADERS.items():
        structs, constants = _declared(cdefs)
        for struct in structs:
            ctype = ffi.typeof(f"struct {struct}")
            expected[f"sizeof {struct}"] = ffi.sizeof(ctype)
            lines.append(f'printf("sizeof {struct} %zu\\n", sizeof(struct {struct}));')
            for field, _ in ctype.fields:
                expected[f"offsetof {struct}.{field}"] = ffi.offsetof(ctype, field)
                lines.append(f'printf("offsetof {struct}.{field} %zu\\n", offsetof(struct {struct}, {field}));')
        for constant in constants:
            expected[f"value {constant}"] = ffi.integer_const(constant)
    for name, value in _ioctl_numbers().items():
        expected[f"value {name}"] = value
    for key in expected:
        if key.startswith("value "):
            name = key[len("value "):]
            lines.append(f'printf("value {name} %llu\\n", (unsigned long long)({name}));')
    includes = "".join(f"#include <{h}>\n" for h in HEADERS.values())
    source = ("#include <stdio.h>\n#include <stddef.h>\n#include <fcntl.h>\n" + includes +
              "int main(void) {\n" + "\n".join(lines) + "\nreturn 0;\n}\n")
    return expected, source


def _include_dir() -> str:
    explicit = os.environ.get("LINUXDMABUF_UAPI_INCLUDE")
    if explicit:
        return explicit
    done = subprocess.run([sys.executable, os.path.join(TOP, "tools", "uapi-headers")],
                          capture_output=True, text=True)
    return done.stdout.strip() or "/usr/include"


# A 32-bit program sees struct timeval (in struct v4l2_buffer) as the cdefs
# declare it when built with 64-bit time_t, as Debian's armhf now is by default.
TIME64 = ["-D_TIME_BITS=64", "-D_FILE_OFFSET_BITS=64"]


@pytest.mark.parametrize("arch", list(ARCHES))
def test_cdefs_and_ioctl_numbers_match_the_uapi_headers(arch, tmp_path):
    """On each architecture of the VM runner: the probe built by Debian's compiler for it (run under
    qemu-user for a foreign one) equals what cffi computes in a Python of that architecture (the
    cached Debian userland's, under qemu-user)."""
    guest = ARCHES[arch]
    native = guest.debian is None
    cc = (shutil.which("cc") or shutil.which("gcc")) if native else shutil.which(guest.cc)
    if cc is None:
        pytest.skip("no C compiler (apt-get install gcc) to build the header probe" if native else
                    f"no {guest.cc} to build the {arch} header probe: apt-get install {guest.cc_package}")
    if not native and shutil.which(guest.qemu_user) is None:
        pytest.skip(f"no {guest.qemu_user} to run {arch} programs here: apt-get install qemu-user-static")
    include = _include_dir()
    if not os.path.exists(os.path.join(include, "linux", "sync_file.h")):
        pytest.skip(f"no uAPI headers in {include}: apt-get install linux-libc-dev, or tools/uapi-headers --fetch")
    with open(os.path.join(include, "linux", "sync_file.h")) as f:
        if "SYNC_IOC_SET_DEADLINE" not in f.read():
            pytest.skip(f"the uAPI headers in {include} predate SYNC_IOC_SET_DEADLINE (Linux 6.3): "
                        "tools/uapi-headers --fetch gets Debian unstable's")
    if native:
        expected, source = _expected_and_probe()
        multiarch = subprocess.run([cc, "-print-multiarch"], capture_output=True, text=True).stdout.strip()
        run = []
    else:
        root = userland.resolve(arch, log=print)
        python = subprocess.run([*guest.qemu_user_argv(root, "/usr/bin/python3"), os.path.abspath(__file__)],
                                env=dict(os.environ, PYTHONPATH=TOP, PYTHONDONTWRITEBYTECODE="1"),
                                check=True, capture_output=True, text=True)
        expected, source = json.loads(python.stdout)
        multiarch, run = guest.triplet, [guest.qemu_user]
    (tmp_path / "probe.c").write_text(source)
    # -nostdinc would lose libc's headers: put the uAPI tree (and its asm/ of
    # this architecture) ahead of the system's instead.
    flags = ["-isystem", include] + (["-isystem", os.path.join(include, multiarch)] if multiarch else [])
    subprocess.run([cc, "-std=gnu11", "-Wall", "-Werror", "-static", *TIME64, *flags, "-o", str(tmp_path / "probe"),
                    str(tmp_path / "probe.c")], check=True, capture_output=True, text=True)
    probed = {}
    for line in subprocess.run([*run, str(tmp_path / "probe")], check=True, capture_output=True,
                               text=True).stdout.splitlines():
        key, value = line.rsplit(" ", 1)
        probed[key] = int(value)
    assert probed == expected
    assert len(expected) > 100  # every struct, field, constant and ioctl really was checked
    print(f"{arch}: {len(expected)} sizes, offsets, constants and ioctl numbers equal {include}'s")


def test_ioctl_numbers_against_known_values():
    """Hand-checked x86_64 values (uapi-reference), so the encoder itself is pinned down too."""
    if os.uname().machine != "x86_64":
        pytest.skip("the values below are x86_64's")
    known = {"DMA_BUF_IOCTL_SYNC": 0x40086200, "DMA_BUF_SET_NAME": 0x40086201, "DMA_BUF_SET_NAME_A": 0x40046201,
             "DMA_BUF_IOCTL_EXPORT_SYNC_FILE": 0xC0086202, "DMA_BUF_IOCTL_IMPORT_SYNC_FILE": 0x40086203,
             "DMA_HEAP_IOCTL_ALLOC": 0xC0184800, "UDMABUF_CREATE": 0x40187542, "UDMABUF_CREATE_LIST": 0x40087543,
             "SYNC_IOC_MERGE": 0xC0303E03, "SYNC_IOC_FILE_INFO": 0xC0383E04, "SYNC_IOC_SET_DEADLINE": 0x40103E05,
             "SW_SYNC_IOC_CREATE_FENCE": 0xC0285700, "SW_SYNC_IOC_INC": 0x40045701,
             "SW_SYNC_GET_DEADLINE": 0xC0105702, "DRM_IOCTL_VGEM_FENCE_ATTACH": 0xC0106441,
             "DRM_IOCTL_VGEM_FENCE_SIGNAL": 0x40086442, "DRM_IOCTL_PRIME_FD_TO_HANDLE": 0xC00C642E}
    assert {name: getattr(_uapi, name) for name in known} == known


if __name__ == "__main__":  # in a Python of another architecture: what cffi computes there, and the probe
    print(json.dumps(_expected_and_probe()))
