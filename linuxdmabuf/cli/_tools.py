"""What the info, dump and watch subcommands share: optional packages, sizes."""
import importlib
import os
import sys

EXIT_MISSING_PACKAGE = 3


class MissingPackage(Exception):
    """An optional package of the `tools` extra is not installed."""


def need(module: str):
    """Import `module` (psutil, pyudev) or raise MissingPackage naming the fix."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingPackage(f"this command needs the Python package {module} ({e}): "
                             "pip install 'linuxdmabuf[tools]'") from None


def human(size) -> str:
    """A byte count for people: "512 B", "4 KiB", "1.5 MiB"; "?" when unknown."""
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            break
        value /= 1024
    if unit == "B":
        return f"{size} B"
    return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"


def kib(size) -> str:
    """A dma-buf size, exact: whole KiB (every dma-buf is pages), else bytes."""
    if size is None:
        return "?"
    return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} B"


def plural(count: int, word: str) -> str:
    """ "1 buffer", "2 buffers"."""
    return f"{count} {word}" if count == 1 else f"{count} {word}es" if word.endswith("s") else f"{count} {word}s"


def stdout_closed_ok(run) -> int:
    """run() -> exit status; if the reader of stdout goes away (`| head`), stop quietly with 1."""
    try:
        return run()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)  # so that the interpreter's final flush cannot fail again
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1
