"""Run a command inside a QEMU virtual machine on a kernel that has real dma-buf devices.

virtme-ng boots the kernel with this machine's root filesystem shared in
(read-only, with writable overlays on /etc, /tmp, /var...), so the command
runs in the same current directory with the same interpreter and venv. Its
stdout and stderr are written by the guest into a shared host directory and
streamed from there (the console only carries kernel messages); its exit
status comes back the same way. KVM is used when it really works, TCG
emulation otherwise.

This module is the one implementation behind ``linuxdmabuf vm``, the
project's tools/vm-run and the pytest plugin's ``--linuxdmabuf-vm``.
"""
import contextlib
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time

from . import userland
from .kernels import EXPECTED, HEARTBEAT, KERNEL_ARCHES, MODULES, SPECS, Kernel, KernelError, cache_dir, resolve
from .userland import ARCHES

__all__ = ["run", "resolve", "Kernel", "KernelError", "VMError", "Terminated", "SPECS", "EXPECTED", "ARCHES",
           "accelerator", "extra_append"]

# Exit statuses of the runner itself, chosen like timeout(1) and env(1).
EXIT_TIMEOUT = 124
EXIT_RUNNER = 125
EXIT_NOT_FOUND = 127

MIN_MEMORY_MIB = 128

# Host variables that mean nothing inside the guest.
_ENV_SKIP = {"PWD", "OLDPWD", "SHLVL", "_", "HOSTNAME", "DISPLAY", "WAYLAND_DISPLAY", "XAUTHORITY",
             "DBUS_SESSION_BUS_ADDRESS", "XDG_RUNTIME_DIR", "SSH_AUTH_SOCK", "SSH_CONNECTION", "SSH_CLIENT",
             "SSH_TTY", "TMUX", "TMUX_PANE", "COLUMNS", "LINES", "PYTEST_XDIST_WORKER"}


# The host's root, shared read-only over 9p as virtme-ng mounts it, plus
# cache=loose: the guest keeps the file data and metadata it has read instead
# of asking the host again for every stat and read. The host does not change
# its root under a running guest (writes go to --rwdir mounts, which are not
# cached), and Python start-up under TCG is about 3x faster with it (a process
# importing pytest, hypothesis and numpy: 17 s without, 6 s with). --force-9p
# keeps virtme-ng from picking virtio-fs, which these flags would not fit.
# Only a kernel with 9p built in (the full kernel) mounts its root itself and
# reads rootflags; a modular kernel (Debian's) gets its root from virtme-ng's
# initramfs, which mounts it without them.
ROOT_9P_FLAGS = "rootflags=version=9p2000.L,trans=virtio,access=any,msize=524288,cache=loose"

# Every guest's kernel command line:
# - no_timer_check: an emulated guest on a busy host sees its timer interrupts
#   late; x86 kernels then conclude at boot that the IO-APIC timer is not
#   connected and panic ("IO-APIC + timer doesn't work!"). The check exists
#   for broken hardware, which an emulated PC does not have.
# - print-fatal-signals=1: the kernel logs every process killed by a signal
#   that would dump core (SIGSEGV, SIGABRT...) with its name, pid and
#   registers, also when Python's faulthandler re-raised it: a crash in the
#   guest can be told from its console and dmesg.
GUEST_APPEND = "no_timer_check print-fatal-signals=1"

# Every guest gets a virtio-gpu device (no virgl, no blob resources): a DRM
# driver with sync objects and timelines (DRM_CAP_SYNCOBJ_TIMELINE; vgem and
# vkms have neither) and a second KMS card, one without writeback.
QEMU_DEVICES = "-device virtio-gpu-pci"


class Terminated(SystemExit):
    """SIGTERM or SIGHUP arrived while a VM ran: it was stopped. Exits with 128 + the signal's number."""


class VMError(Exception):
    """The VM could not be started or did not finish the command; the message says why."""

    def __init__(self, message: str, status: int = EXIT_RUNNER, summary: str | None = None):
        super().__init__(message)
        self.status = status
        self.summary = summary or message.splitlines()[0]


def _need(program: str, fix: str) -> str:
    """`program` on PATH or beside this Python (a venv's bin/, where pip puts vng)."""
    path = shutil.which(program) or shutil.which(program, path=os.path.dirname(sys.executable))
    if path is None:
        raise VMError(f"{program} not found: {fix}")
    return path


def accelerator(kernel: Kernel, qemu: str, log=None) -> str:
    """"kvm" if KVM can really boot `kernel` here, else "tcg" (cached per host boot).

    /dev/kvm existing is not enough: on some hosts (nested PVM) QEMU aborts
    or the guest dies with "KVM internal error". The probe boots the kernel
    with no root device: reaching the kernel's own panic means KVM works.
    $LINUXDMABUF_VM_ACCEL=kvm|tcg overrides.
    """
    forced = os.environ.get("LINUXDMABUF_VM_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced
    if kernel.arch != _host_kernel_arch() or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot_id = f.read().strip()
    except OSError:
        boot_id = ""
    record = os.path.join(cache_dir(), "kvm-probe.json")
    try:
        with open(record) as f:
            cached = json.load(f)
        if cached["boot_id"] == boot_id and cached["qemu"] == qemu:
            return cached["accel"]
    except (OSError, ValueError, KeyError):
        pass
    if log:
        log("linuxdmabuf vm: /dev/kvm is here: checking that KVM really runs a guest (booting the kernel to its "
            "first panic, once per boot of this machine; up to 60 s, TCG emulation if not)")
    started = time.monotonic()
    proc = subprocess.Popen(
        [qemu, "-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults", "-display", "none", "-no-reboot",
         "-serial", "stdio", "-kernel", kernel.image, "-append", "console=ttyS0 panic=-1 root=/dev/nonexistent"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    out, works = "", False
    while True:
        try:
            out = proc.communicate(timeout=HEARTBEAT)[0]
            works = "Kernel panic" in out and "KVM internal error" not in out
            break
        except subprocess.TimeoutExpired:
            if time.monotonic() - started > 60:
                proc.kill()
                proc.communicate()
                break
            if log:
                log(f"linuxdmabuf vm: KVM check: still running ({time.monotonic() - started:.0f} s)")
    accel = "kvm" if works else "tcg"
    if log:
        log(f"linuxdmabuf vm: KVM {'works' if works else 'cannot run a guest here: using TCG emulation'}")
    try:
        os.makedirs(os.path.dirname(record), exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(record), prefix=".kvm-probe-", delete=False) as tmp:
            json.dump({"boot_id": boot_id, "qemu": qemu, "accel": accel}, tmp)
        os.replace(tmp.name, record)  # whole or absent, for a concurrent reader
    except OSError:
        pass  # not remembered: probed again next time
    return accel


def _host_kernel_arch() -> str:
    return {"aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)


def memory_mib(memory: str) -> int:
    """Guest memory in MiB from QEMU's syntax (a number of MiB, or with a K/M/G/T suffix); ValueError if bad."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)", str(memory).strip(), re.IGNORECASE)
    if not match:
        raise ValueError(f"guest memory {memory!r} is not a size such as 512M or 2G")
    number, unit = match.groups()
    mib = int(float(number) * {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}[unit.upper()])
    if mib < MIN_MEMORY_MIB:
        raise ValueError(f"guest memory {memory} is too little: the guest needs at least {MIN_MEMORY_MIB}M to boot")
    return mib


def _oom_victim(console_text: str) -> str | None:
    """The kernel's line naming what its OOM killer killed, if the console shows one."""
    lines = [line for line in console_text.splitlines() if "Out of memory" in line or "oom-kill" in line]
    killed = [line for line in lines if "Killed process" in line]
    found = (killed or lines)[-1:]
    return re.sub(r"^\[[ 0-9.]+\] ?", "", found[0].strip()) if found else None


@contextlib.contextmanager
def _say_when_stopped(log):
    try:
        yield
    except Terminated as e:
        log(f"linuxdmabuf vm: stopped the VM on signal {e.code - 128}")
        raise
    except KeyboardInterrupt:
        log("linuxdmabuf vm: interrupted: stopped the VM")
        raise


@contextlib.contextmanager
def _terminate_as_exit():
    """While inside: SIGTERM and SIGHUP raise SystemExit, so that the VM is killed on the way out.

    Only where Python's default (die at once) is in place, and only in the main thread.
    """
    previous = {}
    if threading.current_thread() is threading.main_thread():
        def leave(signum, frame):
            raise Terminated(128 + signum)

        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) is signal.SIG_DFL:
                previous[sig] = signal.signal(sig, leave)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def write_private(path: str, text: str) -> str:
    """Write `text` to a new file `path` that only this user may read (0600, in a 0700 directory
    such as tempfile's): the guest script carries the whole environment, secrets included."""
    parent = os.path.dirname(path)
    if os.stat(parent).st_mode & 0o077:
        raise VMError(f"{parent} is open to other users: the runner writes its guest script only where they cannot "
                      "read it")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def extra_append() -> list:
    """$LINUXDMABUF_VM_APPEND: kernel command-line arguments every VM of this runner gets (e.g. "cma=0")."""
    extra = os.environ.get("LINUXDMABUF_VM_APPEND", "").strip()
    return [extra] if extra else []


def _closed_ancestors(paths) -> list:
    """Directories on the way to `paths` that others may not traverse (mode without o+x)."""
    found = set()
    for path in paths:
        path = os.path.realpath(path)
        while path != "/":
            path = os.path.dirname(path)
            try:
                if not os.stat(path).st_mode & stat.S_IXOTH:
                    found.add(path)
            except OSError:
                pass
    return sorted(found)


def _guest_script(outdir: str, cmd: list, cwd: str, env: dict, user: str | None, opened: list, spec: str,
                  arch: str = "x86_64") -> str:
    q = shlex.quote
    lines = [
        "#!/bin/sh",
        f"out={q(outdir)}",
        'exec >"$out/stdout" 2>"$out/stderr" </dev/null',
        'uname -r >"$out/release"',
        ': >"$out/started"',  # booted: from here on, a failure is the command's, not the kernel's
        # Debian's stock kernels build udmabuf, vgem, vivid and virtio_gpu as modules; the
        # full kernel has no modules (and no modules.dep): nothing to load.
        'if [ -e "/lib/modules/$(uname -r)/modules.dep" ]; then',
        f"  for m in {' '.join(MODULES)}; do",
        '    [ -d "/sys/module/$m" ] && continue',  # built in (with parameters) or loaded already
        '    msg=$(modprobe "$m" 2>&1) || echo "linuxdmabuf vm: modprobe $m failed: $msg" >&2',
        "  done",
        "fi",
        *(f"export {k}={q(v)}" for k, v in sorted(env.items())),
        f"export LINUXDMABUF_IN_VM=1 LINUXDMABUF_VM_KERNEL={q(spec)} LINUXDMABUF_VM_ARCH={q(arch)} "
        "PYTHONUNBUFFERED=1",
    ]
    if opened:
        lines.append("chmod o+x " + " ".join(q(d) for d in opened))
    lines += [
        f"cd {q(cwd)} || {{ echo 'linuxdmabuf vm: cannot enter {cwd} in the VM' >&2; echo {EXIT_RUNNER} >\"$out/status\"; exit; }}",
        f"if ! command -v {q(cmd[0])} >/dev/null 2>&1; then",
        f"  echo 'linuxdmabuf vm: command not found in the VM: {cmd[0]}' >&2; echo {EXIT_NOT_FOUND} >\"$out/status\"; exit",
        "fi",
    ]
    prefix = []
    if user is not None:
        entry = pwd.getpwnam(user)
        lines.append(f"export HOME={q(entry.pw_dir if os.path.isdir(entry.pw_dir) else '/tmp')} USER={q(user)} LOGNAME={q(user)}")
        prefix = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups", "--"]
    lines += [" ".join(q(a) for a in prefix + list(cmd)), 'echo $? >"$out/status"']
    return "\n".join(lines) + "\n"


class _Tail:
    """Copies what a growing file gains to one of our streams."""

    def __init__(self, path: str, stream):
        self.path, self.stream, self.offset = path, stream, 0

    def pump(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        if data:
            self.offset += len(data)
            self.stream.write(data)
            self.stream.flush()


def _last_words(console_text: str) -> str | None:
    """The console line that best says why a VM died: a panic, a QEMU or KVM error."""
    for marker in ("Kernel panic", "KVM internal error", "qemu-system", "BUG:", "Oops"):
        found = [line for line in console_text.splitlines() if marker in line]
        if found:
            return re.sub(r"^\[[ 0-9.]+\] ?", "", found[-1].strip())
    return None


def _console_tail(path: str, lines: int = 40) -> str:
    try:
        with open(path, "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return "(no console output)"
    text = text.replace("\r", "")
    return "\n".join(line for line in text.splitlines()[-lines:])


# A foreign guest's own PATH; this machine's interpreters and venvs mean nothing there.
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_ENV_HOST_ONLY = {"PATH", "VIRTUAL_ENV", "PYTHONHOME", "LD_LIBRARY_PATH", "LD_PRELOAD", "CONDA_PREFIX"}
# Where a foreign guest sees this runner's cache (kernels, this package's copy, its bytecode): one
# mount, as every mount costs virtme-ng three kernel command-line words that the kernel hands to init
# as environment variables, of which it takes at most 32 (more panics it at boot: "Too many boot env
# vars"; Debian's arm64 kernel with the test runner's mounts went over).
GUEST_CACHE = "/run/linuxdmabuf/cache"


def run(cmd, *, kernel: str | Kernel = "full", cwd: str | None = None, user: str | None = None, cpus: int = 2,
        memory: str = "2G", timeout: float | None = 3600, boot_timeout: float = 300, rwdirs=(), append=(),
        stdout=None, stderr=None, log=None, arch: str = "x86_64") -> int:
    """Boot a VM on `kernel`, run `cmd` (a list) in `cwd` inside it, return its exit status.

    `arch` is the guest's architecture (vm.ARCHES): x86_64 boots with this
    machine's root filesystem; arm64, armhf (32-bit, on the arm64 kernel) and
    i386 (32-bit, on the x86_64 kernel) boot a Debian userland of their own
    (built once, cached), where `cmd` runs with the guest's PATH, this
    package on PYTHONPATH with its pytest plugin's entry point; `cwd`
    and `rwdirs` are shared at the same paths. A kernel image path must be
    one for `arch`'s kernel (x86_64 or arm64).

    Streams the command's output to `stdout`/`stderr` (binary streams,
    default ours). `user` runs it as that user of this machine instead of
    root. `rwdirs` are host directories the guest may write to (the rest of
    the filesystem is read-only there). `append` adds kernel command-line
    arguments, and so does $LINUXDMABUF_VM_APPEND (for every VM of this
    runner: the test command, ``linuxdmabuf vm``, the pytest plugin). Where
    the kernel has modules, the guest loads udmabuf, vgem, vivid and virtio_gpu first
    (a failure is reported on the command's stderr). Directories on the way to `cwd` and to the command are made
    traversable by every user inside the VM (a guest-only change, so that
    unprivileged users can run the same venv). Inside, $LINUXDMABUF_IN_VM is
    1 and $LINUXDMABUF_VM_KERNEL the spec. A VM that dies or hangs before the
    command starts is booted once more. A command killed by a signal gives
    128 + its number, and a line saying so (naming the guest's OOM killer
    when it was that). Raises VMError, whose `status` is 124 for a time-out
    and 125 for any other failure of the VM itself, with the console's last
    lines in the message; KernelError when the kernel cannot be had.
    SIGTERM or SIGHUP to this process kills the VM on the way out.
    """
    if not cmd:
        raise VMError("no command to run in the VM")
    if isinstance(cmd, (str, bytes)):
        raise TypeError("cmd must be a list of arguments, not a string")
    if isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1:  # (no linuxdmabuf import here: stdlib only)
        raise VMError(f"the VM needs a whole number of CPUs >= 1, not {cpus!r}")
    try:
        memory_mib(memory)
    except ValueError as e:
        raise VMError(str(e)) from None
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    stdout = stdout or sys.stdout.buffer
    stderr = stderr or sys.stderr.buffer
    cwd = os.path.abspath(cwd or os.getcwd())
    if not os.path.isdir(cwd):
        raise VMError(f"working directory {cwd} does not exist")
    for d in rwdirs:
        if not os.path.isdir(d):
            raise VMError(f"--rwdir {d} is not a directory")
    guest = userland.guest_arch(arch) if arch in ARCHES else None
    if guest is None:
        raise VMError(f"no guest architecture {arch!r}: use one of {', '.join(ARCHES)}")
    family = KERNEL_ARCHES[guest.kernel]
    qemu = _need(family.qemu, f"install QEMU for {guest.kernel} guests (apt-get install {family.package}) "
                                 "or run udmabuf-setup.sh")
    vng = _need("vng", "install virtme-ng (pip install 'linuxdmabuf[vm]') or run udmabuf-setup.sh")
    if guest.debian is None:
        _need("busybox", "install busybox (apt-get install busybox-static), which virtme-ng's guest init needs")
    if user is not None:
        try:
            pwd.getpwnam(user)
        except KeyError:
            raise VMError(f"no user {user!r} on this machine (the VM shares its /etc/passwd)") from None
    if not isinstance(kernel, Kernel):
        kernel = resolve(kernel, log=log, arch=guest.kernel)
    elif kernel.arch != guest.kernel:
        raise VMError(f"kernel {kernel.image} is an {kernel.arch} kernel; an {arch} guest needs an {guest.kernel} one")
    root = userland.resolve(arch, log=log) if guest.debian else None
    accel = accelerator(kernel, qemu, log)
    append = [*append, *extra_append()]

    with tempfile.TemporaryDirectory(prefix="linuxdmabuf-vm-") as outdir:
        env = {k: v for k, v in os.environ.items() if k not in _ENV_SKIP and k.isidentifier()}
        mounts = []
        if root is None:
            # Inside the VM, let every user reach cwd and the command (nobody must
            # be able to run /root/.../venv/bin/python): a guest-only chmod.
            opened = _closed_ancestors([cwd, shutil.which(cmd[0]) or cmd[0]])
        else:
            opened = []
            for name in _ENV_HOST_ONLY:
                env.pop(name, None)
            env["PATH"] = GUEST_PATH
            # This package, with its distribution metadata (pytest's entry point for its plugin),
            # copied once per content into the cache. The shared trees are read-only there and their
            # bytecode is this machine's Python's: the guest's Python keeps its own in the cache too,
            # for every later boot (compiling under emulation: 1.5 s per process start).
            cache = os.path.realpath(cache_dir())
            package = userland.package_copy(cache)
            env.setdefault("PYTHONPYCACHEPREFIX", f"{GUEST_CACHE}/pycache/{arch}")
            os.makedirs(os.path.join(cache, "pycache", arch), exist_ok=True)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [f"{GUEST_CACHE}/{os.path.relpath(package, cache)}",
                                                              os.environ.get("PYTHONPATH")]))
            writable = [os.path.abspath(d) for d in (outdir, *rwdirs)]
            mounts = [f"--rwdir={d}={d}" for d in writable] + [f"--rwdir={GUEST_CACHE}={cache}"]
            if cwd not in writable:
                mounts.append(f"--rodir={cwd}={cwd}")
            guest_dirs = [cwd, *writable]
            moddir = os.path.dirname(os.path.realpath(kernel.image))
            if os.path.exists(os.path.join(moddir, "modules.dep")):
                # A Debian kernel's modules: virtme-ng expects them in the root it is given.
                modules = f"/usr/lib/modules/{os.path.basename(moddir)}"
                if moddir.startswith(cache + os.sep):
                    userland.link(root, modules, f"{GUEST_CACHE}/{os.path.relpath(moddir, cache)}")
                else:
                    guest_dirs.append(modules)
                    mounts.append(f"--rodir={modules}={moddir}")
            userland.mountpoints(root, guest_dirs)
        script = write_private(os.path.join(outdir, "guest.sh"),
                               _guest_script(outdir, cmd, cwd, env, user, opened, kernel.spec, arch))
        argv = [vng, "--run", kernel.image, "--cpus", str(cpus), "--memory", str(memory), "--verbose",
                "--qemu", qemu, "--exec", f"sh {shlex.quote(script)}",
                "--force-9p", "--append", ROOT_9P_FLAGS, "--append", GUEST_APPEND,
                f"--qemu-opts={QEMU_DEVICES}"]
        if root is None:
            argv += ["--cwd", cwd, "--rwdir", outdir]
        else:
            argv += ["--root", root, "--busybox", os.path.join(root, "usr", "bin", "busybox"), *mounts]
            if guest.kernel != _host_kernel_arch():
                argv += ["--arch", guest.kernel]
        if accel == "tcg":
            # One host thread runs all vCPUs: with a thread per vCPU, guests crash when the kernel
            # patches its own code while another vCPU runs it (enabling trace events, 200 toggles
            # here: a panic within seconds). Measured just as fast for this suite (95 s vs 96 s).
            argv += ["--disable-kvm", "--qemu-opts=-accel tcg,thread=single"]
        for arg in append:
            argv += ["--append", arg]
        for d in rwdirs if root is None else ():
            argv += ["--rwdir", os.path.abspath(d)]
        for d in opened:
            if os.path.dirname(d) not in opened:  # the topmost closed directory gets a writable overlay
                argv += ["--overlay-rwdir", d]
        with _terminate_as_exit(), _say_when_stopped(log):
            for attempt in (1, 2):
                try:
                    status = _boot(argv, outdir, stdout, stderr, timeout, boot_timeout,
                                   kernel.spec if arch == "x86_64" else f"{kernel.spec} {arch}", accel, memory, log)
                    break
                except VMError as e:
                    # A kernel that dies or hangs before the command starts has done
                    # nothing yet (the 6.12 kernel panics at boot once in a while
                    # under TCG): boot once more before giving up.
                    if attempt == 2 or os.path.exists(os.path.join(outdir, "started")):
                        raise
                    log(f"linuxdmabuf vm: {e.summary}\nlinuxdmabuf vm: the VM failed before the command started; "
                        "booting again")
        if status > 128:
            victim = _oom_victim(_console_tail(os.path.join(outdir, "console.log"), 2000))
            try:
                name = signal.Signals(status - 128).name
            except ValueError:
                name = f"signal {status - 128}"
            if victim:
                log(f"linuxdmabuf vm: the command was killed by the guest's OOM killer ({victim}): "
                    f"the VM has {memory} of memory, give it more")
            else:
                log(f"linuxdmabuf vm: the command was killed by {name} (exit status {status})")
        return status


def _boot(argv: list, outdir: str, stdout, stderr, timeout, boot_timeout, spec: str, accel: str, memory: str,
          log) -> int:
    """One VM run: stream the guest's output while it runs; its command's exit status."""
    what = f"{spec}, {accel.upper()}"
    for name in ("stdout", "stderr", "status", "started", "console.log"):
        if os.path.exists(os.path.join(outdir, name)):
            os.remove(os.path.join(outdir, name))
    console = os.path.join(outdir, "console.log")
    tails = [_Tail(os.path.join(outdir, "stdout"), stdout), _Tail(os.path.join(outdir, "stderr"), stderr)]
    started_at = time.monotonic()
    with open(console, "wb") as console_file:
        # vng runs virtme-run and friends from PATH: they sit beside it.
        path = os.pathsep.join([os.path.dirname(argv[0]), os.environ.get("PATH", os.defpath)])
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=console_file, stderr=subprocess.STDOUT,
                                start_new_session=True, env=dict(os.environ, PATH=path))
    failure = None
    booted = False
    said = HEARTBEAT
    try:
        while proc.poll() is None:
            elapsed = time.monotonic() - started_at
            if not booted and os.path.exists(os.path.join(outdir, "started")):
                booted = True
                log(f"linuxdmabuf vm: {spec} kernel {_read(os.path.join(outdir, 'release'))} "
                    f"booted in {elapsed:.1f} s ({accel.upper()})")
            elif not booted and elapsed > said:
                said += HEARTBEAT
                log(f"linuxdmabuf vm: {spec} kernel still booting ({elapsed:.0f} s, {accel.upper()})")
            for tail in tails:
                tail.pump()
            if not booted and elapsed > boot_timeout:
                failure = f"the VM did not start the command within {boot_timeout:.0f} s"
            elif timeout is not None and elapsed > timeout:
                failure = f"the command did not finish within {timeout:.0f} s"
            if failure:
                break
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            _stop(proc)
    for tail in tails:
        tail.pump()
    if failure:
        last = _last_words(_console_tail(console, 2000))
        summary = f"{failure} ({what})" + (f": {last}" if last else "")
        raise VMError(f"{summary}; last console lines:\n{_console_tail(console)}", EXIT_TIMEOUT, summary)
    try:
        with open(os.path.join(outdir, "status")) as f:
            return int(f.read())
    except (OSError, ValueError):
        pass
    text = _console_tail(console, 2000)
    victim = _oom_victim(text)
    last = _last_words(text)
    summary = (f"the VM stopped before the command finished ({what}, vng exit {proc.returncode})"
               + (f": {last}" if last else ": kernel panic, crash or vng error")
               + (f"; the guest ran out of memory ({victim}): the VM has {memory}, give it more" if victim else ""))
    raise VMError(f"{summary}; last console lines:\n{_console_tail(console)}", summary=summary)


def _stop(proc: subprocess.Popen) -> None:
    """End a VM: QEMU first (so that virtme-ng reaps it and cleans up), then whatever is left of vng's group."""
    for pid in _group_members(proc.pid):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().startswith("qemu-system"):
                    os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _group_members(pgid: int) -> list:
    """Processes in process group `pgid` (from /proc/<pid>/stat)."""
    members = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid:  # state ppid pgrp ...
                members.append(int(name))
    return members


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return "(unknown release)"


def main(argv=None) -> int:
    """``linuxdmabuf vm [--kernel SPEC] [--arch ARCH] [--user NAME] [--cpus N] [--memory SIZE] [...] -- CMD...``"""
    import argparse

    parser = argparse.ArgumentParser(
        prog="linuxdmabuf vm",
        description="Boot a QEMU VM on a kernel with real dma-buf devices and run CMD in the current directory "
                    "inside it, with this machine's filesystem (read-only) and the same interpreter and venv; "
                    "streams CMD's output and exits with its status (124: time-out, 125: the VM failed, "
                    "127: CMD not found in the VM, 128+N: CMD killed by signal N).")
    parser.add_argument("--kernel", default="full", metavar="SPEC",
                        help=f"one of {', '.join(SPECS)} or a kernel image path (default: full)")
    parser.add_argument("--arch", default="x86_64", choices=list(ARCHES),
                        help="the guest's architecture (default x86_64, this machine's own root filesystem); arm64, "
                             "armhf (32-bit on the arm64 kernel) and i386 (32-bit on the x86_64 kernel) boot a "
                             "Debian userland built once and cached")
    parser.add_argument("--user", help="run CMD as this user of this machine instead of root")
    parser.add_argument("--cpus", type=int, default=2, help="guest CPUs (default 2)")
    parser.add_argument("--memory", default="2G", help="guest memory, QEMU syntax (default 2G)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before the VM is killed (default 3600)")
    parser.add_argument("--boot-timeout", type=float, default=300,
                        help="seconds the kernel may take to boot and start CMD (default 300)")
    parser.add_argument("--append", action="append", default=[], metavar="ARGS",
                        help="extra kernel command-line arguments (repeatable)")
    parser.add_argument("--rwdir", action="append", default=[], help="a host directory the guest may write to")
    parser.add_argument("--fetch", action="store_true",
                        help="only fetch (or build) and cache the kernels named by --kernel (comma-separated) "
                             "for --arch, and that architecture's userland")
    parser.add_argument("cmd", nargs="*", help="the command to run in the VM (after --)")
    args = parser.parse_args(argv)
    try:
        if args.fetch:
            if args.cmd:
                parser.error("--fetch takes no command")
            guest = ARCHES[args.arch]
            for spec in args.kernel.split(","):
                print(f"{spec}: {resolve(spec, arch=guest.kernel).image}")
            if guest.debian:
                print(f"{args.arch} userland: {userland.resolve(args.arch)}")
            return 0
        if not args.cmd:
            parser.error("no command given: linuxdmabuf vm [options] -- CMD...")
        for name in ("timeout", "boot_timeout"):
            if not getattr(args, name) > 0:
                parser.error(f"--{name.replace('_', '-')} must be a positive number of seconds")
        return run(args.cmd, kernel=args.kernel, user=args.user, cpus=args.cpus, memory=args.memory,
                   timeout=args.timeout, boot_timeout=args.boot_timeout, rwdirs=args.rwdir, append=args.append,
                   arch=args.arch)
    except (KernelError, OSError) as e:
        print(f"linuxdmabuf vm: {e}", file=sys.stderr)
        return EXIT_RUNNER
    except VMError as e:
        print(f"linuxdmabuf vm: {e}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
