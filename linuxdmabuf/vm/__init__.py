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
import json
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

from .kernels import SPECS, Kernel, KernelError, cache_dir, resolve

__all__ = ["run", "resolve", "Kernel", "KernelError", "VMError", "SPECS", "accelerator"]

# Exit statuses of the runner itself, chosen like timeout(1) and env(1).
EXIT_TIMEOUT = 124
EXIT_RUNNER = 125
EXIT_NOT_FOUND = 127

# Host variables that mean nothing inside the guest.
_ENV_SKIP = {"PWD", "OLDPWD", "SHLVL", "_", "HOSTNAME", "DISPLAY", "WAYLAND_DISPLAY", "XAUTHORITY",
             "DBUS_SESSION_BUS_ADDRESS", "XDG_RUNTIME_DIR", "SSH_AUTH_SOCK", "SSH_CONNECTION", "SSH_CLIENT",
             "SSH_TTY", "TMUX", "TMUX_PANE", "COLUMNS", "LINES", "PYTEST_XDIST_WORKER"}


class VMError(Exception):
    """The VM could not be started or did not finish the command; the message says why."""

    def __init__(self, message: str, status: int = EXIT_RUNNER):
        super().__init__(message)
        self.status = status


def _need(program: str, fix: str) -> str:
    """`program` on PATH or beside this Python (a venv's bin/, where pip puts vng)."""
    path = shutil.which(program) or shutil.which(program, path=os.path.dirname(sys.executable))
    if path is None:
        raise VMError(f"{program} not found: {fix}")
    return path


def accelerator(kernel: Kernel, qemu: str) -> str:
    """"kvm" if KVM can really boot `kernel` here, else "tcg" (cached per host boot).

    /dev/kvm existing is not enough: on some hosts (nested PVM) QEMU aborts
    or the guest dies with "KVM internal error". The probe boots the kernel
    with no root device: reaching the kernel's own panic means KVM works.
    $LINUXDMABUF_VM_ACCEL=kvm|tcg overrides.
    """
    forced = os.environ.get("LINUXDMABUF_VM_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
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
    try:
        probe = subprocess.run(
            [qemu, "-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults", "-display", "none", "-no-reboot",
             "-serial", "stdio", "-kernel", kernel.image, "-append", "console=ttyS0 panic=-1 root=/dev/nonexistent"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace", timeout=60)
        out = probe.stdout + probe.stderr
        works = "Kernel panic" in out and "KVM internal error" not in out
    except subprocess.TimeoutExpired:
        works = False
    accel = "kvm" if works else "tcg"
    os.makedirs(os.path.dirname(record), exist_ok=True)
    with open(record, "w") as f:
        json.dump({"boot_id": boot_id, "qemu": qemu, "accel": accel}, f)
    return accel


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


def _guest_script(outdir: str, cmd: list, cwd: str, env: dict, user: str | None, opened: list) -> str:
    q = shlex.quote
    lines = [
        "#!/bin/sh",
        f"out={q(outdir)}",
        'exec >"$out/stdout" 2>"$out/stderr" </dev/null',
        'uname -r >"$out/release"',
        # Debian's stock kernels build vgem as a module; the full kernel has no modules.
        "modprobe -q vgem 2>/dev/null",
        *(f"export {k}={q(v)}" for k, v in sorted(env.items())),
        "export LINUXDMABUF_IN_VM=1 PYTHONUNBUFFERED=1",
    ]
    if opened:
        lines.append("chmod o+x " + " ".join(q(d) for d in opened))
    lines += [
        f"cd {q(cwd)} || {{ echo 'linuxdmabuf vm: cannot enter {cwd} in the VM' >&2; echo {EXIT_RUNNER} >\"$out/status\"; exit; }}",
        f"if ! command -v {q(cmd[0])} >/dev/null 2>&1; then",
        f"  echo 'linuxdmabuf vm: command not found in the VM: {cmd[0]}' >&2; echo {EXIT_NOT_FOUND} >\"$out/status\"; exit",
        "fi",
        ': >"$out/started"',
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


def _console_tail(path: str, lines: int = 40) -> str:
    try:
        with open(path, "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return "(no console output)"
    text = text.replace("\r", "")
    return "\n".join(line for line in text.splitlines()[-lines:])


def run(cmd, *, kernel: str | Kernel = "full", cwd: str | None = None, user: str | None = None, cpus: int = 2,
        memory: str = "2G", timeout: float | None = 3600, boot_timeout: float = 300, rwdirs=(),
        stdout=None, stderr=None, log=None) -> int:
    """Boot a VM on `kernel`, run `cmd` (a list) in `cwd` inside it, return its exit status.

    Streams the command's output to `stdout`/`stderr` (binary streams,
    default ours). `user` runs it as that user of this machine instead of
    root. `rwdirs` are host directories the guest may write to (the rest of
    the filesystem is read-only there). Directories on the way to `cwd` and
    to the command are made traversable by every user inside the VM (a
    guest-only change, so that unprivileged users can run the same venv).
    A VM that dies or hangs before the command starts is booted once more.
    Raises VMError, whose `status` is 124 for a time-out and 125 for any other
    failure of the VM itself, with the console's last lines in the message;
    KernelError when the kernel cannot be had.
    """
    if not cmd:
        raise VMError("no command to run in the VM")
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    stdout = stdout or sys.stdout.buffer
    stderr = stderr or sys.stderr.buffer
    cwd = os.path.abspath(cwd or os.getcwd())
    qemu = _need("qemu-system-x86_64", "install QEMU (apt-get install qemu-system-x86) or run udmabuf-setup.sh")
    vng = _need("vng", "install virtme-ng (pip install 'linuxdmabuf[vm]') or run udmabuf-setup.sh")
    _need("busybox", "install busybox (apt-get install busybox-static), which virtme-ng's guest init needs")
    if user is not None:
        try:
            pwd.getpwnam(user)
        except KeyError:
            raise VMError(f"no user {user!r} on this machine (the VM shares its /etc/passwd)") from None
    if not isinstance(kernel, Kernel):
        kernel = resolve(kernel, log=log)
    accel = accelerator(kernel, qemu)

    with tempfile.TemporaryDirectory(prefix="linuxdmabuf-vm-") as outdir:
        os.chmod(outdir, 0o755)
        # Inside the VM, let every user reach cwd and the command (nobody must
        # be able to run /root/.../venv/bin/python): a guest-only chmod.
        opened = _closed_ancestors([cwd, shutil.which(cmd[0]) or cmd[0]])
        env = {k: v for k, v in os.environ.items() if k not in _ENV_SKIP and k.isidentifier()}
        script = os.path.join(outdir, "guest.sh")
        with open(script, "w") as f:
            f.write(_guest_script(outdir, cmd, cwd, env, user, opened))
        argv = [vng, "--run", kernel.image, "--cpus", str(cpus), "--memory", str(memory), "--verbose",
                "--qemu", qemu, "--cwd", cwd, "--rwdir", outdir, "--exec", f"sh {shlex.quote(script)}"]
        if accel == "tcg":
            argv.append("--disable-kvm")
        for d in rwdirs:
            argv += ["--rwdir", os.path.abspath(d)]
        for d in opened:
            if os.path.dirname(d) not in opened:  # the topmost closed directory gets a writable overlay
                argv += ["--overlay-rwdir", d]
        for attempt in (1, 2):
            try:
                status = _boot(argv, outdir, stdout, stderr, timeout, boot_timeout, f"{kernel.spec}, {accel}")
                break
            except VMError as e:
                # A kernel that dies or hangs before the command starts has done
                # nothing yet (the 6.12 kernel panics at boot once in a while
                # under TCG): boot once more before giving up.
                if attempt == 2 or os.path.exists(os.path.join(outdir, "started")):
                    raise
                log(f"linuxdmabuf vm: {e}\nlinuxdmabuf vm: the VM failed before the command started; booting again")
        if status > 128:
            console_text = _console_tail(os.path.join(outdir, "console.log"), 400)
            reason = (f"killed by the guest's OOM killer: give the VM more than --memory {memory}"
                      if "Out of memory" in console_text or "oom-kill" in console_text
                      else f"killed by signal {status - 128}")
            log(f"linuxdmabuf vm: the command was {reason}")
        return status


def _boot(argv: list, outdir: str, stdout, stderr, timeout, boot_timeout, what: str) -> int:
    """One VM run: stream the guest's output while it runs; its command's exit status."""
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
    try:
        while proc.poll() is None:
            for tail in tails:
                tail.pump()
            elapsed = time.monotonic() - started_at
            if not os.path.exists(os.path.join(outdir, "started")) and elapsed > boot_timeout:
                failure = f"the VM did not start the command within {boot_timeout:.0f} s"
            elif timeout is not None and elapsed > timeout:
                failure = f"the command did not finish within {timeout:.0f} s"
            if failure:
                break
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for tail in tails:
        tail.pump()
    if failure:
        raise VMError(f"{failure} ({what}); last console lines:\n{_console_tail(console)}", EXIT_TIMEOUT)
    try:
        with open(os.path.join(outdir, "status")) as f:
            return int(f.read())
    except (OSError, ValueError):
        raise VMError(f"the VM stopped before the command finished (kernel panic, crash or vng error; {what}, "
                      f"vng exit {proc.returncode}); last console lines:\n{_console_tail(console)}") from None


def main(argv=None) -> int:
    """``linuxdmabuf vm [--kernel SPEC] [--user NAME] [--cpus N] [--memory SIZE] -- CMD...``"""
    import argparse

    parser = argparse.ArgumentParser(
        prog="linuxdmabuf vm",
        description="Boot a QEMU VM on a kernel with real dma-buf devices and run CMD in the current directory "
                    "inside it; exits with CMD's status (124: time-out, 125: the VM failed, 127: not found).")
    parser.add_argument("--kernel", default="full", metavar="SPEC",
                        help=f"one of {', '.join(SPECS)} or a kernel image path (default: full)")
    parser.add_argument("--user", help="run CMD as this user of this machine instead of root")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--memory", default="2G", help="guest memory, QEMU syntax (default 2G)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before the VM is killed (default 3600)")
    parser.add_argument("--rwdir", action="append", default=[], help="a host directory the guest may write to")
    parser.add_argument("--fetch", action="store_true",
                        help="only fetch (or build) and cache the kernels named by --kernel, then exit")
    parser.add_argument("cmd", nargs="*", help="the command to run in the VM (after --)")
    args = parser.parse_args(argv)
    try:
        if args.fetch:
            for spec in args.kernel.split(","):
                print(f"{spec}: {resolve(spec).image}")
            return 0
        if not args.cmd:
            parser.error("no command given: linuxdmabuf vm [options] -- CMD...")
        return run(args.cmd, kernel=args.kernel, user=args.user, cpus=args.cpus, memory=args.memory,
                   timeout=args.timeout, rwdirs=args.rwdir)
    except KernelError as e:
        print(f"linuxdmabuf vm: {e}", file=sys.stderr)
        return EXIT_RUNNER
    except VMError as e:
        print(f"linuxdmabuf vm: {e}", file=sys.stderr)
        return e.status
