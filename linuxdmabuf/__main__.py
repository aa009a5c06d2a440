"""``python -m linuxdmabuf`` / ``linuxdmabuf``: one subcommand per module, each with main(argv) -> int."""
import importlib
import sys

SUBCOMMANDS = {
    "demo": ("linuxdmabuf.cli.demo", "allocate from every provider, fill under SYNC, export a fence, show features"),
    "info": ("linuxdmabuf.cli.info", "what this kernel offers and this user may use, with the fix for what is missing"),
    "dump": ("linuxdmabuf.cli.dump", "which processes hold which dma-bufs (like Android's dmabuf_dump)"),
    "watch": ("linuxdmabuf.cli.watch", "follow dma-heap and udmabuf devices (and buffer totals) as they change"),
    "cma": ("linuxdmabuf.cli.cma", "CMA areas: how full, how fragmented (the pool drawn), which heaps, who holds them"),
    "trace": ("linuxdmabuf.cli.trace", "dma-buf lifetime events live (Linux 7.0+), and who made, mapped, attached what"),
    "vm": ("linuxdmabuf.vm", "run a command in a QEMU VM on a kernel with real dma-buf devices"),
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        out = sys.stdout if argv and argv[0] in ("-h", "--help") else sys.stderr
        if argv and argv[0] not in ("-h", "--help"):
            print(f"linuxdmabuf: unknown command {argv[0]!r}", file=out)
        print("usage: linuxdmabuf COMMAND [--help] ...\n\ncommands:", file=out)
        for name, (_, summary) in SUBCOMMANDS.items():
            print(f"  {name:6} {summary}", file=out)
        return 0 if out is sys.stdout else 2
    return importlib.import_module(SUBCOMMANDS[argv[0]][0]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
