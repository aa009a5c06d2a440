"""What the info, dump and watch subcommands share: sizes, user and group names, a closed stdout."""
import functools
import grp
import os
import pwd
import sys


@functools.cache
def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


@functools.cache
def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


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
