"""``linuxdmabuf cma``: each CMA area's figures, heaps and holders, and its pool drawn as a row of blocks.

    linuxdmabuf cma [AREA] [--json] [--png FILE] [--width N]

Each character of the picture stands for an equal share of the area's pages:
``#`` all used, ``+`` partly used, ``.`` all free, ``=`` free and inside the
largest free run (what the next allocation can get at most). ``--png`` draws
one pixel per bit of the kernel's bitmap (used red, free grey, the largest free
run green), scaled up, with nothing but zlib.
"""
import argparse
import json
import struct
import sys
import zlib

from .. import cma
from ._tools import stdout_closed_ok


def blocks(area: cma.CmaArea, width: int = 64, rows: int = 4) -> list:
    """The bitmap as `rows` lines of `width` characters (see the module's legend)."""
    bits = area.bitmap or b""
    cells = width * rows
    run = area.largest_free_run()
    scale = 1 << (area.order_per_bit or 0)
    first, length = (run[0] // scale, run[1] // scale) if run else (0, 0)
    chars = []
    for cell in range(cells):
        lo, hi = cell * len(bits) // cells, (cell + 1) * len(bits) // cells
        part = bits[lo:hi]
        used = sum(part)
        if not part:
            chars.append(" ")
        elif used == len(part):
            chars.append("#")
        elif used:
            chars.append("+")
        else:
            chars.append("=" if first <= lo and hi <= first + length else ".")
    return ["".join(chars[r * width:(r + 1) * width]) for r in range(rows)]


def write_png(path: str, area: cma.CmaArea, width: int = 128, scale: int = 4) -> None:
    """One pixel per bit (`width` bits a row), each `scale` pixels square: used red, free grey, largest run green."""
    bits = area.bitmap or b""
    run = area.largest_free_run()
    unit = 1 << (area.order_per_bit or 0)
    first, length = (run[0] // unit, run[1] // unit) if run else (0, 0)
    height = -(-len(bits) // width)
    colors = {"used": b"\xc0\x30\x30", "free": b"\xd8\xd8\xd8", "run": b"\x40\xb0\x40", "none": b"\xff\xff\xff"}
    rows = []
    for y in range(height):
        row = bytearray()
        for x in range(width):
            i = y * width + x
            kind = "none" if i >= len(bits) else "used" if bits[i] else "run" if first <= i < first + length else "free"
            row += colors[kind] * scale
        rows += [b"\0" + bytes(row)] * scale

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width * scale, height * scale, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(b"".join(rows), 9)) + chunk(b"IEND", b""))


def _pages(area: cma.CmaArea, pages) -> str:
    return "?" if pages is None else f"{pages} pages ({cma.mib(pages * area.page_size)})"


def print_text(found: list, out=None, width: int = 64) -> None:
    out = out or sys.stdout
    for a in found:
        print(f"CMA area {a.name}: total {_pages(a, a.total_pages)}, used {_pages(a, a.used_pages)}, "
              f"free {_pages(a, a.free_pages)}, largest free run {_pages(a, a.largest_free_pages)}", file=out)
        counters = [f"{k} {getattr(a, k)}" for k in ("alloc_pages_success", "alloc_pages_fail", "release_pages_success")
                    if getattr(a, k) is not None]
        if counters:
            print(f"  counters: {', '.join(counters)}", file=out)
        if a.base_pfn is not None:
            print(f"  base_pfn {a.base_pfn}, one bit per {1 << (a.order_per_bit or 0)} page(s)", file=out)
        print(f"  dma-heaps: {', '.join(a.heaps) or 'none (a CMA dma-heap needs CONFIG_DMABUF_HEAPS_CMA)'}", file=out)
        for holder in a.holders:
            print(f"  held by {holder}", file=out)
        if a.bitmap is not None:
            print("  pool (# used, + partly used, . free, = the largest free run):", file=out)
            for line in blocks(a, width):
                print(f"  |{line}|", file=out)
        for figure, why in sorted(a.missing.items()):
            print(f"  no {figure}: {why}", file=out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="linuxdmabuf cma", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("area", nargs="?", help="one area (default: every area)")
    parser.add_argument("--json", action="store_true", help="one JSON document")
    parser.add_argument("--png", metavar="FILE", help="draw the (first) area's pool into FILE")
    parser.add_argument("--width", type=int, default=64, help="characters per line of the picture (default 64)")
    args = parser.parse_args(argv)
    if args.width < 8:
        parser.error("--width must be at least 8")
    try:
        found = [cma.area(args.area)] if args.area else cma.areas()
    except ValueError as e:
        print(f"linuxdmabuf cma: {e}", file=sys.stderr)
        return 2
    if not found:
        print(f"linuxdmabuf cma: no CMA area: {cma.why_no_areas()}", file=sys.stderr)
        return 1
    if args.png:
        if found[0].bitmap is None:
            print(f"linuxdmabuf cma: no picture of {found[0].name}: {found[0].missing['bitmap']}", file=sys.stderr)
            return 1
        write_png(args.png, found[0])
    def output() -> int:
        if args.json:
            json.dump({"areas": [a.as_dict() for a in found]}, sys.stdout, indent=1)
            print()
        else:
            print_text(found, width=args.width)
        return 0

    return stdout_closed_ok(output)
