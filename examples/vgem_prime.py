#!/usr/bin/env python3
"""A real DRM driver importing and exporting dma-bufs, and putting real fences on them: vgem.

1. export: a vgem dumb buffer becomes a DmaBuf (PRIME_HANDLE_TO_FD), mapped
   and written here, read back through vgem's own mapping of it;
2. import: a linuxdmabuf buffer becomes a vgem GEM handle (PRIME_FD_TO_HANDLE),
   and exporting that handle gives the very same dma-buf back;
3. fences: vgem attaches an unsignaled write fence to the imported buffer; the
   buffer's own fd sees it (wait() times out, export_sync_file() reports it
   ACTIVE from driver "vgem") until vgem signals it.

Needs vgem (CONFIG_DRM_VGEM, `modprobe vgem`), access to its card node, and
a dma-buf provider: run as root in the VM (tools/vm-run).
"""
import linuxdmabuf
from linuxdmabuf.drm import Vgem


def export_dumb(vgem: Vgem) -> None:
    with vgem.create_dumb(64, 16, 32) as dumb:
        print(f"dumb buffer: handle {dumb.handle}, {dumb.width}x{dumb.height}, pitch {dumb.pitch}, {dumb.size} bytes")
        with vgem.prime_export(dumb) as buf:
            print(f"  exported as {buf!r}, exporter {buf.exporter!r}")
            buf.write(b"written through the dma-buf")
            with vgem.map_dumb(dumb) as through_drm:
                print(f"  vgem's own mapping reads {bytes(through_drm[:27]).decode()!r}")
            again = vgem.prime_import(buf)
            print(f"  importing it back gives the same handle, so the same GemObject: {again is dumb}")


def import_buffer(vgem: Vgem, buf) -> None:
    before = buf.info().count
    with vgem.prime_import(buf) as obj:
        print(f"imported {buf!r} (exporter {buf.exporter!r}) as handle {obj.handle}; "
              f"vgem holds a reference: count {before} -> {buf.info().count}")
        with vgem.prime_export(obj) as back:
            print(f"  exporting the handle gives the same dma-buf back: inode {back.inode} == {buf.inode}")
    print(f"  GEM_CLOSE dropped vgem's reference: count {buf.info().count}")


def fences(vgem: Vgem, buf) -> None:
    with vgem.prime_import(buf) as obj:
        fence = vgem.fence_attach(obj, write=True)
        print(f"vgem write fence {fence} attached; buf.wait(timeout=0.1) -> {buf.wait(timeout=0.1)}")
        with buf.export_sync_file() as sync_file:
            info = sync_file.info()
            print(f"  export_sync_file(): {info.status.name}, driver {info.fences[0].driver_name!r}")
            try:
                vgem.fence_attach(obj)
            except OSError as e:
                print(f"  a read fence now conflicts: {e.strerror} (errno {e.errno})")
            vgem.fence_signal(fence)
            print(f"  signaled: buf.wait(timeout=0) -> {buf.wait(timeout=0)}, "
                  f"the exported sync_file -> {sync_file.status.name}")


if __name__ == "__main__":
    with Vgem() as vgem:
        print(f"{vgem.path}: {vgem.version()}")
        export_dumb(vgem)
        with linuxdmabuf.allocate(8192) as buf:
            import_buffer(vgem, buf)
            fences(vgem, buf)
    print("ok")
