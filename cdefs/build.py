"""Builds linuxdmabuf's cffi module from the C declarations in this folder.

cffi's out-of-line ABI mode: the declarations are parsed here, once, at build
time, and written out as a pure-Python module (linuxdmabuf/_ffi.py) that loads
in about a millisecond with no C compiler, no pycparser and no parsing at import
(in-line ABI mode re-parses every cdef on each import: ~35 ms). setup.py runs
this for wheels and editable installs; `python cdefs/build.py OUTDIR` runs it by
hand.
"""
import os
import sys

import cffi

HERE = os.path.dirname(os.path.abspath(__file__))

# Order matters: the kernel types first, then one file per kernel header.
HEADERS = ("linux-types.h", "libc.h", "dma-buf.h", "dma-heap.h", "udmabuf.h",
           "sync_file.h", "sw_sync.h", "drm.h", "drm_mode.h", "vgem_drm.h", "videodev2.h")


def ffibuilder() -> cffi.FFI:
    ffi = cffi.FFI()
    for name in HEADERS:
        with open(os.path.join(HERE, name)) as f:
            ffi.cdef(f.read())
    ffi.set_source("linuxdmabuf._ffi", None)
    return ffi


def generate(outdir: str) -> str:
    path = os.path.join(outdir, "_ffi.py")
    ffibuilder().emit_python_code(path)
    return path


if __name__ == "__main__":
    print(generate(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "linuxdmabuf")))
