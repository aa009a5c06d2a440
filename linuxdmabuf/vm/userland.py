"""Guest architectures for the VM runner, and the Debian userlands the foreign ones boot into.

An x86_64 guest (the default) boots with this machine's own root filesystem.
Any other guest boots a kernel of its family (the x86_64 one for i386, the
arm64 one for arm64 and armhf: a 32-bit userland on a 64-bit kernel goes
through the kernel's compat ioctl layer) with a Debian userland of its own
as the root: python3 with cffi, pytest, numpy and hypothesis, plus what
virtme-ng's guest init needs. This package reaches it through PYTHONPATH.

A userland is unpacked once from Debian's packages (mmdebstrap's extract
variant: no package's scripts run, so no emulator is needed to build it) and
cached like the kernels: assembled in a temporary directory and renamed into
place as the last step, under a lock per architecture.
"""
import glob
import hashlib
import inspect
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass

from .kernels import KernelError, _fetch_lock, _run, cache_dir, debian_mirror

SUITE = "trixie"  # its armhf has 64-bit time_t, its i386 has not: both ABIs of 32-bit V4L2 buffers are covered


@dataclass(frozen=True)
class GuestArch:
    name: str
    kernel: str  # a key of kernels.KERNEL_ARCHES
    debian: str | None = None  # Debian's architecture of the userland; None: this machine's own root
    triplet: str = ""  # GNU triplet: /usr/lib/<triplet>, <triplet>-gcc for the layout probe
    cc: str = ""  # Debian's cross compiler for it, and its package
    cc_package: str = ""
    qemu_user: str = ""  # runs one of its programs on this machine (qemu-user-static)
    loader: str = ""  # its dynamic loader, in /usr/lib

    def qemu_user_argv(self, root: str, program: str) -> list:
        """Run `program` of userland `root` under qemu-user: through the userland's own loader and
        libraries, and without qemu's -L, which would look up every path in `root` first."""
        return [self.qemu_user, os.path.join(root, "usr", "lib", self.loader), "--library-path",
                os.path.join(root, "usr", "lib", self.triplet), os.path.join(root, program.lstrip("/"))]


ARCHES = {
    "x86_64": GuestArch("x86_64", "x86_64"),
    "arm64": GuestArch("arm64", "arm64", "arm64", "aarch64-linux-gnu", "aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu",
                       "qemu-aarch64-static", "ld-linux-aarch64.so.1"),
    "armhf": GuestArch("armhf", "arm64", "armhf", "arm-linux-gnueabihf", "arm-linux-gnueabihf-gcc",
                       "gcc-arm-linux-gnueabihf", "qemu-arm-static", "ld-linux-armhf.so.3"),
    "i386": GuestArch("i386", "x86_64", "i386", "i386-linux-gnu", "i686-linux-gnu-gcc", "gcc-i686-linux-gnu",
                      "qemu-i386-static", "ld-linux.so.2"),
}

# Debian's Essential set (mmdebstrap's extract variant unpacks only what it is
# given, and virtme-ng's guest init is a bash script using these), mount,
# passwd (groupadd, gpasswd), mawk (awk), kmod (modprobe), busybox (virtme-ng's initramfs
# and poweroff), and what this package and its tests import.
PACKAGES = ("base-files", "base-passwd", "bash", "bsdutils", "coreutils", "dash", "debianutils", "diffutils",
            "findutils", "grep", "gzip", "hostname", "libc-bin", "login", "ncurses-bin", "sed", "sysvinit-utils",
            "tar", "util-linux", "mount", "passwd", "mawk", "kmod", "busybox-static", "python3", "python3-cffi-backend",
            "python3-pytest", "python3-numpy", "python3-hypothesis", "python3-psutil", "python3-pyudev")


def _entry_name(arch: "GuestArch") -> str:
    """The cache entry of `arch`'s userland: another recipe (the suite, the package list, what is done
    after unpacking) is another entry; the rest of this module may change without a rebuild."""
    recipe = json.dumps([SUITE, PACKAGES]) + inspect.getsource(_finish)
    return f"{arch.name}-{SUITE}-{hashlib.sha256(recipe.encode()).hexdigest()[:8]}"


def guest_arch(name: str) -> GuestArch:
    try:
        return ARCHES[name]
    except KeyError:
        raise KernelError(f"no guest architecture {name!r}: use one of {', '.join(ARCHES)}") from None


def _cached(arch: GuestArch) -> str | None:
    root = os.path.join(cache_dir(), "userlands", _entry_name(arch))
    return os.path.join(root, "root") if os.path.isfile(os.path.join(root, "userland.json")) else None


def resolve(name: str, *, fetch: bool = True, log=None) -> str:
    """The root directory of the Debian userland for guest architecture `name`, built once if need be."""
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    arch = guest_arch(name)
    if arch.debian is None:
        raise KernelError(f"the {name} guest boots this machine's own root filesystem, not a userland")
    root = _cached(arch)
    if root:
        return root
    if not fetch:
        raise KernelError(f"no {name} userland is cached: run `linuxdmabuf vm --fetch --arch {name}`")
    with _fetch_lock(f"userland-{name}"):
        return _cached(arch) or _build(arch, log)


def _build(arch: GuestArch, log) -> str:
    mmdebstrap = shutil.which("mmdebstrap")
    if mmdebstrap is None:
        raise KernelError(f"building the {arch.name} userland needs mmdebstrap: apt-get install mmdebstrap")
    mirror = debian_mirror()
    parent = os.path.join(cache_dir(), "userlands")
    os.makedirs(parent, exist_ok=True)
    for stale in glob.glob(os.path.join(parent, f".partial-{arch.name}-*")):
        shutil.rmtree(stale, ignore_errors=True)  # a build that was killed: the lock says nobody is on it
    staging = tempfile.mkdtemp(prefix=f".partial-{arch.name}-", dir=parent)
    try:
        log(f"linuxdmabuf vm: unpacking a Debian {SUITE} {arch.debian} userland (python3, cffi, pytest, numpy, "
            f"hypothesis; about 200 MB, once) from {mirror} into {parent}")
        root = os.path.join(staging, "root")
        _run([mmdebstrap, "--quiet", "--variant=extract", f"--architectures={arch.debian}",
              f"--include={','.join(PACKAGES)}", SUITE, root, mirror],
             f"mmdebstrap of Debian {SUITE} {arch.debian}", log)
        _finish(root, arch)
        with open(os.path.join(staging, "userland.json"), "w") as f:
            json.dump({"arch": arch.name, "debian": arch.debian, "suite": SUITE, "mirror": mirror,
                       "packages": PACKAGES}, f, indent=1)
        final = os.path.join(parent, _entry_name(arch))
        shutil.rmtree(final, ignore_errors=True)
        os.rename(staging, final)
        return os.path.join(final, "root")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _finish(root: str, arch: GuestArch) -> None:
    """What the packages' scripts would have done, as far as the guest needs it."""
    for name, shadow, fields in (("passwd", "shadow", ":*:20000:0:99999:7:::"), ("group", "gshadow", ":*::")):
        # base-passwd's postinst, and the shadow files of passwd's (shadowconfig)
        master = os.path.join(root, "usr", "share", "base-passwd", f"{name}.master")
        shutil.copy(master, os.path.join(root, "etc", name))
        with open(master) as f, open(os.path.join(root, "etc", shadow), "w") as out:
            out.writelines(line.split(":", 1)[0] + fields + "\n" for line in f if line.strip())
    # update-alternatives: numpy's BLAS and LAPACK, awk (udmabuf-setup.sh) and which
    libdir = os.path.join(root, "usr", "lib", arch.triplet)
    links = {os.path.join(libdir, os.path.basename(library)): os.path.relpath(library, libdir)
             for library in glob.glob(os.path.join(libdir, "blas", "lib*.so.3")) +
             glob.glob(os.path.join(libdir, "lapack", "lib*.so.3"))}
    links.update({os.path.join(root, "usr", "bin", "awk"): "mawk",
                  os.path.join(root, "usr", "bin", "which"): "which.debianutils"})
    for link, target in links.items():
        os.symlink(target, link)
    # virtme-ng's guest init ends with `poweroff -f` (systemd's, absent here): busybox's does it.
    os.symlink("/usr/bin/busybox", os.path.join(root, "usr", "sbin", "poweroff"))


def mountpoints(root: str, paths) -> None:
    """Make the directories `paths` (guest paths this run mounts host directories on) in the userland
    `root`, each on a path every user may traverse: its root filesystem is read-only in the guest,
    where virtme-ng could not make them."""
    for path in paths:
        if os.path.abspath(path).startswith("/tmp/"):
            continue  # the guest's /tmp is writable (an overlay): virtme-ng makes them there
        inside = os.path.join(root, os.path.relpath(os.path.abspath(path), "/"))
        os.makedirs(inside, exist_ok=True)
        while inside != root:
            inside = os.path.dirname(inside)
            mode = os.stat(inside).st_mode
            if not mode & 0o001:
                os.chmod(inside, (mode & 0o7777) | 0o001)


def link(root: str, path: str, target: str) -> None:
    """Make `path` in the userland `root` a symbolic link to `target` (a path in the guest)."""
    inside = os.path.join(root, path.lstrip("/"))
    if os.path.islink(inside) and os.readlink(inside) == target:
        return
    if os.path.isdir(inside) and not os.path.islink(inside):
        os.rmdir(inside)  # a mount point of an earlier version: empty
    elif os.path.lexists(inside):
        os.remove(inside)
    os.makedirs(os.path.dirname(inside), exist_ok=True)
    os.symlink(target, inside)


def package_copy(cache: str) -> str:
    """A directory under `cache` holding a copy of this package and its distribution metadata (the
    pytest plugin's entry point), named by the package's content: made once per version, complete or
    absent, and a stable path for the guest's bytecode cache."""
    from linuxdmabuf import __version__

    source = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = sorted(os.path.relpath(os.path.join(d, name), source)
                   for d, dirs, names in os.walk(source) if "__pycache__" not in d
                   for name in names if not name.endswith(".pyc"))
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode() + b"\0")
        with open(os.path.join(source, name), "rb") as f:
            digest.update(f.read())
    final = os.path.join(cache, "python", digest.hexdigest()[:12])
    if os.path.isdir(final):
        return final
    os.makedirs(os.path.dirname(final), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".partial-", dir=os.path.dirname(final))
    try:
        for name in files:
            os.makedirs(os.path.dirname(os.path.join(staging, "linuxdmabuf", name)), exist_ok=True)
            shutil.copy2(os.path.join(source, name), os.path.join(staging, "linuxdmabuf", name))
        info = os.path.join(staging, f"linuxdmabuf-{__version__}.dist-info")
        os.makedirs(info)
        with open(os.path.join(info, "METADATA"), "w") as f:
            f.write(f"Metadata-Version: 2.1\nName: linuxdmabuf\nVersion: {__version__}\n")
        with open(os.path.join(info, "entry_points.txt"), "w") as f:
            f.write("[pytest11]\nlinuxdmabuf = linuxdmabuf.pytest_plugin\n")
        os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide the package from the guest's other users
        try:
            os.rename(staging, final)
        except OSError:  # another run made the same copy meanwhile
            shutil.rmtree(staging)
        return final
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
