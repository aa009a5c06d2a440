"""Watching dma-buf lifetimes live: the kernel's dma_buf trace events, read from a tracefs instance of our own.

Kernels since 7.0 trace every dma-buf lifetime event (include/trace/events/dma_buf.h):
``dma_buf_export`` (a buffer is made, in the process making it), ``_fd`` (an
fd is installed for it), ``_get`` / ``_put`` (an importer looks it up by fd
and lets go: V4L2 QBUF, PRIME import), ``_mmap_internal`` (a user mapping),
``_mmap`` (an in-kernel ``dma_buf_mmap()``), ``_dynamic_attach`` / ``_detach``
(a device attaches, with the device's name). Each carries the exporter, size
and inode. The last close of a buffer calls fput(), not dma_buf_put(): its
release is no event, so whether a buffer is still alive comes from a scan of
the processes (``linuxdmabuf._procfs.scan``, what ``linuxdmabuf dump`` shows).

:class:`Tracer` makes its own instance (``<tracefs>/instances/linuxdmabuf-<pid>-<n>``):
never the global buffer other tools use, so several tracers run at once. The
pid filter is the kernel's (the instance's ``set_event_pid``: another
process's events are dropped before they are written, which in the VM cost the
traced loop less than an event filter ``common_pid == N`` did), the clock
CLOCK_MONOTONIC (``trace_clock`` mono), and events the ring buffer had to drop
are counted (``per_cpu/cpu*/stats``), never lost silently. The
instance is removed on close, and instances left by tracers that died are
removed by the next one.

Events are read in the kernel's binary form (``per_cpu/cpuN/trace_pipe_raw``:
ring-buffer pages, laid out as ``events/header_page`` and each event's
``format`` say), not as text: the kernel then formats nothing, and a tracer
keeps up with tens of thousands of events a second even under emulation.
"""
import errno
import functools
import itertools
import operator
import os
import re
import select
import struct
from typing import NamedTuple

from ._mounts import debugfs_mount, kernel_has, tracefs_mount
from ._sys import UnsupportedError, check_int

__all__ = ["Event", "Tracer", "tracefs_root", "KINDS"]

KINDS = ("export", "fd", "get", "put", "mmap", "mmap_internal", "dynamic_attach", "detach")
PREFIX = "linuxdmabuf-"  # our instances: linuxdmabuf-<pid>-<n>
_counter = itertools.count()
_FIELD = re.compile(r"field:(.+?);\s*offset:(\d+);\s*size:(\d+);(.*)")
_HEADER = struct.Struct("<I")  # a ring-buffer event's header: type_len (5 bits), time_delta (27 bits)
_HEAD = struct.Struct("<IH")  # a header and the u16 after it: a small record's common_type
_TS_SHIFT = 27
_PADDING, _TIME_EXTEND, _TIME_STAMP = 29, 30, 31
_MISSED = 3 << 30  # RB_MISSED_EVENTS | RB_MISSED_STORED, in a page's commit word
_TIME = operator.itemgetter(0)  # an Event's time_ns


class Event(NamedTuple):
    """One dma_buf trace event: CLOCK_MONOTONIC time (µs resolution), the process (pid, comm), the event's
    name without ``dma_buf_``, and its fields (None where the event carries none)."""

    time_ns: int
    pid: int
    comm: str
    kind: str
    ino: int
    exp_name: str
    size: int
    fd: int | None = None
    dev_name: str | None = None


_EVENT = functools.partial(tuple.__new__, Event)  # Event(*fields) without its Python-level __new__


def tracefs_root() -> str:
    """Where tracefs is, mounting it at /sys/kernel/tracing if it is not yet (as root); UnsupportedError if none."""
    root = tracefs_mount()
    if root is None and debugfs_mount() and os.path.isdir(os.path.join(debugfs_mount() or "", "tracing", "events")):
        root = os.path.join(debugfs_mount() or "", "tracing")
    if root is None and not kernel_has("tracefs"):
        raise UnsupportedError(errno.ENODEV, f"kernel {os.uname().release} has no tracefs, so no dma_buf trace "
                               "events: they need a kernel with tracing (CONFIG_TRACING), Linux 7.0+")
    if root is None:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.mount(b"none", b"/sys/kernel/tracing", b"tracefs", 0, None) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
        except OSError as e:
            raise UnsupportedError(e.errno or errno.ENOENT, "tracefs is not mounted and cannot be mounted here "
                                   f"({e.strerror}) -- as root: mount -t tracefs none /sys/kernel/tracing "
                                   "(CONFIG_TRACING)") from None
        root = "/sys/kernel/tracing"
    return root


def _stale_instances(instances: str) -> None:
    """Remove our instances whose tracer process is gone (it crashed before close())."""
    try:
        names = os.listdir(instances)
    except OSError:
        return
    for name in names:
        match = re.fullmatch(rf"{PREFIX}(\d+)-\d+", name)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            try:
                os.rmdir(os.path.join(instances, name))
            except OSError:
                pass  # another tracer removed it first, or it is busy: the next one tries again


class Tracer:
    """dma_buf trace events of all processes (pid=None) or one, in a tracefs instance of its own.

    ``with Tracer(pid) as tracer:`` starts tracing; ``tracer.events()``
    returns the events seen since the last call (never blocking);
    ``tracer.dropped`` counts events the kernel could not keep (its ring
    buffer of `buffer_kb` KiB per CPU was full). UnsupportedError naming the
    reason and the fix where there is no tracefs, no dma_buf events (kernels
    before 7.0) or no permission (tracefs is root's).
    """

    def __init__(self, pid: int | None = None, *, buffer_kb: int = 8192):
        self._pipes: list = []
        self.path = ""
        if pid is not None:
            pid = check_int(pid, "pid")
            if pid <= 0:
                raise ValueError(f"pid must be a positive process id, not {pid}")
        buffer_kb = check_int(buffer_kb, "buffer_kb")
        if buffer_kb < 4:
            raise ValueError(f"buffer_kb must be at least 4, not {buffer_kb}")
        root = tracefs_root()
        if not os.access(root, os.R_OK | os.X_OK):
            raise UnsupportedError(errno.EACCES, f"tracefs ({root}) is readable by root only -- trace as root")
        if not os.path.isdir(os.path.join(root, "events", "dma_buf")):
            raise UnsupportedError(errno.ENOENT, f"this kernel ({os.uname().release}) has no dma_buf trace events "
                                                 f"({root}/events/dma_buf): they came in Linux 7.0")
        instances = os.path.join(root, "instances")
        _stale_instances(instances)
        self.path = os.path.join(instances, f"{PREFIX}{os.getpid()}-{next(_counter)}")
        try:
            os.mkdir(self.path)
        except PermissionError:
            self.path = ""
            raise UnsupportedError(errno.EACCES, f"cannot make a tracefs instance in {instances} -- trace as root") \
                from None
        try:
            self._write("buffer_size_kb", str(buffer_kb))
            self._write("trace_clock", "mono")
            events = os.path.join(self.path, "events", "dma_buf")
            if pid is not None:
                self._write("set_event_pid", str(pid))
            self._formats = _event_formats(root)
            self._commit, self._data = _page_layout(root)
            self._page = 1024 * int(_read(os.path.join(self.path, "buffer_subbuf_size_kb"), "4"))
            self._write(os.path.join(events, "enable"), "1")
            cpus = sorted(int(n[3:]) for n in os.listdir(os.path.join(self.path, "per_cpu")) if n[3:].isdigit())
            for cpu in cpus:
                self._pipes.append(os.open(os.path.join(self.path, "per_cpu", f"cpu{cpu}", "trace_pipe_raw"),
                                           os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
        except BaseException:
            self.close()
            raise
        self._comms: dict = {}
        self._strings: dict = {}  # bytes of an exporter or device name -> str
        self.pid = pid

    def _write(self, name: str, value: str) -> None:
        with open(os.path.join(self.path, name), "w") as f:
            f.write(value)

    def events(self, timeout: float | None = 0) -> list:
        """The events seen since the last call, oldest first; waits up to `timeout` seconds for the first."""
        if not self._pipes:
            raise ValueError("I/O operation on closed Tracer")
        if timeout:
            poller = select.poll()
            for fd in self._pipes:
                poller.register(fd, select.POLLIN)
            poller.poll(int(timeout * 1000))
        found: list = []
        for fd in self._pipes:
            while True:
                try:
                    page = os.read(fd, self._page)
                except BlockingIOError:
                    break
                if not page:
                    break
                self._parse_page(page, found)
        found.sort(key=_TIME)  # one CPU's events are in order; merge the CPUs'
        return list(map(_EVENT, found))

    def _parse_page(self, page: bytes, found: list) -> None:
        """The events of one ring-buffer page (kernel/trace/ring_buffer.c's layout), as plain tuples of
        Event's fields.

        One loop with everything it needs in locals: under emulation every Python operation counts, and a
        tracer must keep up with the events of a busy process. A tuple display costs no call; events()
        makes them Events afterwards, from C (map), which in the VM reads about a quarter more events a
        second than calling tuple.__new__(Event, ...) in the loop.
        """
        ts = int.from_bytes(page[0:8], "little")
        commit = int.from_bytes(page[self._commit:self._commit + 8], "little") & 0xFFFFFFFF & ~_MISSED
        end = min(self._data + commit, len(page))
        at = self._data
        page += b"\0\0\0\0"  # a header's unpack also reads the two bytes after it, even at the page's end
        formats, head, unpack, comms, strings = self._formats, _HEAD.unpack_from, _HEADER.unpack_from, \
            self._comms, self._strings
        append = found.append
        while at + 4 <= end:
            word, common_type = head(page, at)  # the header, and a small record's common_type after it
            type_len = word & 0x1F
            if 0 < type_len <= 28:  # a record of type_len words of data
                ts += word >> 5
                start = at + 4
                at = start + (type_len << 2)
            elif type_len:
                if type_len == _PADDING:
                    if not word >> 5:
                        break  # the rest of the page is empty
                    at += 4 + unpack(page, at + 4)[0]
                    continue
                value = (unpack(page, at + 4)[0] << _TS_SHIFT) + (word >> 5)
                ts = ts + value if type_len == _TIME_EXTEND else (ts & ~((1 << 59) - 1)) | value
                at += 8
                continue
            else:  # a long record: its length in the word after the header
                ts += word >> 5
                start = at + 8
                at = start + unpack(page, at + 4)[0] - 4
                common_type = page[start] | page[start + 1] << 8
            fmt = formats.get(common_type)
            if fmt is None:
                continue
            kind, fields, i_pid, i_exp, i_size, i_ino, i_fd, i_dev = fmt
            raw = fields(page, start)  # the event's fields in one call, in the order of their offsets
            pid = raw[i_pid]
            comm = comms.get(pid) or self._comm(pid)
            loc = raw[i_exp]  # __data_loc: offset in the record (low 16 bits), length with its NUL (high 16)
            name_at = start + (loc & 0xFFFF)
            name = page[name_at:name_at + (loc >> 16) - 1]
            exp_name = strings.get(name) or strings.setdefault(name, name.decode(errors="replace"))
            if i_dev < 0:
                append((ts, pid, comm, kind, raw[i_ino], exp_name, raw[i_size],
                        None if i_fd < 0 else raw[i_fd], None))
                continue
            loc = raw[i_dev]
            name_at = start + (loc & 0xFFFF)
            name = page[name_at:name_at + (loc >> 16) - 1]
            dev_name = strings.get(name) or strings.setdefault(name, name.decode(errors="replace"))
            append((ts, pid, comm, kind, raw[i_ino], exp_name, raw[i_size],
                    None if i_fd < 0 else raw[i_fd], dev_name))

    def _comm(self, pid: int) -> str:
        """The process's name: /proc/<pid>/comm while it lives, else tracefs's saved_cmdlines."""
        comm = self._comms.get(pid)
        if comm is None:
            comm = _read(f"/proc/{pid}/comm", "").strip()
            if not comm:
                saved = _read(os.path.join(os.path.dirname(os.path.dirname(self.path)), "saved_cmdlines"), "")
                comm = next((name for number, _, name in (line.partition(" ") for line in saved.splitlines())
                             if number == str(pid)), "<...>")
            self._comms[pid] = comm
        return comm

    @property
    def dropped(self) -> int:
        """Events the kernel overwrote or dropped in this instance's ring buffer since it started: per CPU,
        `overrun` (overwritten), `commit overrun` (lost while nested events filled a page) and `dropped
        events` (Documentation/trace/ftrace.rst, "per_cpu/cpuN/stats")."""
        total = 0
        for stats in sorted(os.listdir(os.path.join(self.path, "per_cpu"))):
            with open(os.path.join(self.path, "per_cpu", stats, "stats")) as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key in ("overrun", "commit overrun", "dropped events"):
                        total += int(value)
        return total

    @property
    def closed(self) -> bool:
        return not self.path

    def close(self) -> None:
        """Stop tracing and remove the instance. Idempotent."""
        path, self.path = self.path, ""
        pipes, self._pipes = self._pipes, []
        for fd in pipes:
            os.close(fd)
        if path:
            try:
                with open(os.path.join(path, "events", "dma_buf", "enable"), "w") as f:
                    f.write("0")
            finally:
                os.rmdir(path)

    def __enter__(self) -> "Tracer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self):
        self.close()

    def __repr__(self) -> str:
        state = f"instance {self.path}" if self.path else "[closed]"
        return f"<linuxdmabuf.trace.Tracer {state}{f' pid={self.pid}' if self.path and self.pid else ''}>"


def _read(path: str, default: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


_WANTED = ("common_pid", "exp_name", "size", "ino", "fd", "dev_name")


def _event_formats(root: str) -> dict:
    """Event id -> (kind, unpack, *where) for each dma_buf event, from its format file: `unpack` reads the
    record's fields in one call (struct), `where` are the indexes of pid, exp_name, size, ino, fd and
    dev_name in what it returns (-1 for a field the event does not carry)."""
    formats = {}
    events = os.path.join(root, "events", "dma_buf")
    for name in os.listdir(events):
        if not name.startswith("dma_buf_"):
            continue
        text = _read(os.path.join(events, name, "format"), "")
        number = re.search(r"^ID: (\d+)", text, re.M)
        if number is None:
            continue
        fields = {decl.split()[-1]: (int(offset), int(size), "signed:1" in rest)
                  for decl, offset, size, rest in _FIELD.findall(text)}
        present = sorted((fields[f][0], f) for f in _WANTED if f in fields)
        layout, position = "<", 0
        for offset, field in present:
            _, size, signed = fields[field]
            code = {1: "b", 2: "h", 4: "i", 8: "q"}[size]
            layout += "x" * (offset - position) + (code if signed else code.upper())
            position = offset + size
        order = [f for _, f in present]
        where = tuple(order.index(f) if f in order else -1 for f in _WANTED)
        formats[int(number.group(1))] = (name[len("dma_buf_"):], struct.Struct(layout).unpack_from, *where)
    return formats


def _page_layout(root: str) -> tuple:
    """(offset of the commit word, offset of the data) in a ring-buffer page (events/header_page)."""
    fields = {decl.split()[-1]: int(offset) for decl, offset, _, _ in
              _FIELD.findall(_read(os.path.join(root, "events", "header_page"), ""))}
    return fields.get("commit", 8), fields.get("data", 16)
