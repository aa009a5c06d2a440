"""Kernels for the VM runner: resolve a spec to a bootable image, fetching and
caching it under the user's cache directory.

Specs, each for a kernel architecture (x86_64, the default, or arm64):
  full         every dma-buf feature (udmabuf, system + CMA heaps, sw_sync,
               vgem, vkms, 9p built in): $LINUXDMABUF_FULL_KERNEL (arm64:
               $LINUXDMABUF_FULL_KERNEL_ARM64), a cached build, the prebuilt
               one beside a source checkout (../shared/kernels), else built
               once from Debian's linux-source with dmabuf.config (about 20
               minutes on 2 cores; arm64 cross-built with gcc-aarch64-linux-gnu).
  debian-7.2   Debian sid's stock kernel, debian-6.12 trixie's: image and
               modules fetched with apt-get download from the Debian mirror
               this machine's apt already uses, for the architecture asked.
  PATH         any kernel image (an x86 bzImage or an arm64 Image, checked
               against the architecture asked).

A cache entry is complete or absent: each is assembled in a temporary
directory and renamed into place as the last step, so an interrupted download
or build leaves nothing that looks usable. A lock per spec keeps two processes
from fetching the same kernel at once (the second waits, then uses the first's
result). A second run uses the cache and touches no network.
"""
import contextlib
import difflib
import fcntl
import glob
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG_FRAGMENT = os.path.join(HERE, "dmabuf.config")

# spec -> (Debian suite, kernel version prefix)
DEBIAN = {"debian-7.2": ("unstable", "7.2"), "debian-6.12": ("trixie", "6.12")}
SPECS = ("full", *DEBIAN)

@dataclass(frozen=True)
class KernelArch:
    debian: str  # Debian's name for it
    image: str  # the image make builds, and its path in the tree
    boot: str
    qemu: str  # QEMU's system emulator for it, and its Debian package
    package: str
    make: tuple = ()  # make's variables to build it on an x86_64 machine


KERNEL_ARCHES = {
    "x86_64": KernelArch("amd64", "bzImage", "arch/x86/boot/bzImage", "qemu-system-x86_64", "qemu-system-x86"),
    "arm64": KernelArch("arm64", "Image", "arch/arm64/boot/Image", "qemu-system-aarch64", "qemu-system-arm",
                        ("ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-")),
}

# What each kernel of the matrix must have (linuxdmabuf.probe's feature names).
# Inside the VM, a test needing one of these fails, naming it, instead of
# skipping; tools/run-tests prints per kernel what was expected and what is
# missing. The full kernel is ../shared/kernels' (or one built from
# dmabuf.config, which registers its CMA area twice, as these two names);
# Debian's have udmabuf and the system heap built in, vgem, vivid and
# virtio_gpu as modules (the runner loads them), the dma_buf trace events
# from 7.0 on. Every guest has a virtio-gpu device: sync object timelines.
_FULL = ("udmabuf", "heap:system", "cma_heap:default_cma_region", "cma_heap:reserved", "sw_sync", "drm:vgem",
         "drm:vkms", "drm:virtio_gpu", "syncobj:timeline", "v4l2:vivid", "v4l2:vim2m", "v4l2:vicodec",
         "debugfs:bufinfo")
_DEBIAN = ("udmabuf", "heap:system", "drm:vgem", "drm:virtio_gpu", "syncobj:timeline", "v4l2:vivid")
# Keyed by spec on x86_64, "spec/arch" for the other guest architectures
# (linuxdmabuf.vm.userland.ARCHES): a 32-bit userland has what its kernel has.
# The arm64 full kernel has no FTRACE (virtme-ng's arm64 base config), so no
# trace events; Debian's arm64 kernels have no dma-heaps at all.
EXPECTED = {
    "full": (*_FULL, "trace:dma_buf"),
    "debian-7.2": (*_DEBIAN, "trace:dma_buf"),
    "debian-6.12": _DEBIAN,
    "full/i386": (*_FULL, "trace:dma_buf"),
    "full/arm64": _FULL,
    "full/armhf": _FULL,
    "debian-7.2/arm64": (*(f for f in _DEBIAN if f != "heap:system"), "trace:dma_buf"),
}


def expected_key(spec: str, arch: str = "x86_64") -> str:
    """EXPECTED's key for a kernel spec booted for guest architecture `arch`."""
    return spec if arch == "x86_64" else f"{spec}/{arch}"


# Modules the runner loads in every guest whose kernel has modules (a kernel
# with them built in, or without them, is left as it is; a failure is
# reported on the command's stderr).
MODULES = ("udmabuf", "vgem", "vivid", "virtio_gpu")


class KernelError(Exception):
    """A kernel spec that cannot be resolved, fetched or built; the message says why and what to do."""


@dataclass(frozen=True)
class Kernel:
    spec: str
    image: str
    version: str | None = None
    arch: str = "x86_64"  # a key of KERNEL_ARCHES


def _entry(spec: str, arch: str) -> str:
    """The cache directory name of `spec` for kernel architecture `arch`."""
    return spec if arch == "x86_64" else f"{spec}-{arch}"


def cache_dir() -> str:
    """$LINUXDMABUF_CACHE, else $XDG_CACHE_HOME/linuxdmabuf, else ~/.cache/linuxdmabuf."""
    explicit = os.environ.get("LINUXDMABUF_CACHE")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "linuxdmabuf")


def _version_key(version: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", version)]


def _cached(spec: str, arch: str = "x86_64") -> Kernel | None:
    """The newest complete cache entry for `spec` on `arch` (entries being assembled start with a dot)."""
    entries = []
    for meta in glob.glob(os.path.join(cache_dir(), "kernels", _entry(spec, arch), "*", "kernel.json")):
        try:
            with open(meta) as f:
                info = json.load(f)
            image = os.path.join(os.path.dirname(meta), info["image"])
            version = info["version"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable: not a complete entry
        if os.path.isfile(image):
            entries.append(Kernel(spec, image, version, arch))
    return max(entries, key=lambda k: _version_key(k.version or ""), default=None)


@contextlib.contextmanager
def _fetch_lock(spec: str):
    """Hold <cache>/kernels/<spec>.lock: one process at a time fetches or builds `spec`."""
    parent = os.path.join(cache_dir(), "kernels")
    try:
        os.makedirs(parent, exist_ok=True)
        fd = os.open(os.path.join(parent, f"{spec}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise KernelError(f"cannot write to the kernel cache {parent}: {e.strerror} "
                          "(set LINUXDMABUF_CACHE to a writable directory)") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _commit(spec: str, arch: str, version: str, staging: str, image_relpath: str, **extra) -> Kernel:
    """Write kernel.json and move a finished staging directory into the cache."""
    with open(os.path.join(staging, "kernel.json"), "w") as f:
        json.dump({"spec": spec, "arch": arch, "version": version, "image": image_relpath, **extra}, f, indent=1)
    final = os.path.join(cache_dir(), "kernels", _entry(spec, arch), version)
    shutil.rmtree(final, ignore_errors=True)
    os.rename(staging, final)
    return Kernel(spec, os.path.join(final, image_relpath), version, arch)


def _staging(spec: str) -> str:
    """A fresh directory to assemble cache entry `spec` in; call with _fetch_lock(spec) held.

    Leftovers of an earlier fetch that was killed are removed: with the lock
    held, no other process is assembling one.
    """
    parent = os.path.join(cache_dir(), "kernels", spec)
    os.makedirs(parent, exist_ok=True)
    for stale in glob.glob(os.path.join(parent, ".partial-*")):
        shutil.rmtree(stale, ignore_errors=True)
    return tempfile.mkdtemp(prefix=".partial-", dir=parent)


def image_arch(path: str) -> str | None:
    """The architecture of kernel image `path` (a key of KERNEL_ARCHES), None if it is not one.

    An x86 bzImage carries "HdrS" at offset 0x202 (Documentation/arch/x86/boot.rst),
    an arm64 Image "ARM\\x64" at 0x38 (Documentation/arch/arm64/booting.rst), also
    inside a gzip'd Image, which QEMU boots as it is; QEMU also boots an ELF
    vmlinux (e_machine 62: x86-64, 183: AArch64).
    """
    with open(path, "rb") as f:
        head = f.read(0x206)
    if head.startswith(b"\x1f\x8b"):
        with gzip.open(path) as f:
            head = f.read(0x40)
    if head[0x202:0x206] == b"HdrS":
        return "x86_64"
    if head[0x38:0x3c] == b"ARM\x64":
        return "arm64"
    if head.startswith(b"\x7fELF") and len(head) > 0x14:
        return {62: "x86_64", 183: "arm64"}.get(int.from_bytes(head[0x12:0x14], "little"))
    return None


def check_image(path: str, what: str = "kernel image", arch: str = "x86_64") -> str:
    """`path` made absolute if it is a readable kernel image for `arch`; KernelError saying why not."""
    if not os.path.exists(path):
        raise KernelError(f"{what} {path} does not exist")
    if not os.path.isfile(path):
        raise KernelError(f"{what} {path} is not a file (give the kernel image itself, e.g. arch/x86/boot/bzImage)")
    try:
        found = image_arch(path)
    except (OSError, EOFError) as e:
        raise KernelError(f"{what} {path} cannot be read: {getattr(e, 'strerror', None) or e}") from None
    if found is None:
        raise KernelError(f"{what} {path} is not a Linux kernel image (no x86 boot header, no arm64 Image header, "
                          "not ELF): give a bzImage such as arch/x86/boot/bzImage, an arm64 arch/arm64/boot/Image, "
                          "or /boot/vmlinuz-*")
    if found != arch:
        raise KernelError(f"{what} {path} is an {found} kernel, but the VM's architecture is {arch}: "
                          f"give an {arch} kernel, or the --arch that fits it")
    return os.path.abspath(path)


def resolve(spec: str, *, fetch: bool = True, log=None, arch: str = "x86_64") -> Kernel:
    """The kernel for `spec` on kernel architecture `arch`, fetching or building it if it is not cached
    and `fetch` allows."""
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    if arch not in KERNEL_ARCHES:
        raise KernelError(f"no kernel architecture {arch!r}: use one of {', '.join(KERNEL_ARCHES)}")
    if not isinstance(spec, str) or not spec:
        raise KernelError(f"no kernel spec given: use one of {', '.join(SPECS)} or a path to a kernel image")
    if spec not in SPECS:
        if os.path.sep in spec or os.path.exists(spec):
            return Kernel(spec, check_image(spec, arch=arch), arch=arch)
        close = difflib.get_close_matches(spec, SPECS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise KernelError(f"unknown kernel spec {spec!r}{hint}: use one of {', '.join(SPECS)} "
                          "or a path to a kernel image (a path needs a /, e.g. ./bzImage)")
    if spec == "full":
        variable = "LINUXDMABUF_FULL_KERNEL" + ("" if arch == "x86_64" else f"_{arch.upper()}")
        image = os.environ.get(variable)
        if image:
            return Kernel(spec, check_image(image, f"{variable}'s image", arch), arch=arch)
        kernel = _cached(spec, arch) or _prebuilt_full(arch)
        if kernel:
            return kernel
        if not fetch:
            raise KernelError(f"no full {arch} kernel here: set {variable} to a kernel image built with "
                              f"linuxdmabuf/vm/dmabuf.config, or run `linuxdmabuf vm --fetch --kernel full"
                              f"{'' if arch == 'x86_64' else ' --arch ' + arch}` to build one (about 20 minutes on "
                              "2 cores, cached)")
    else:
        kernel = _cached(spec, arch)
        if kernel:
            return kernel
        if not fetch:
            raise KernelError(f"{spec} ({arch}) is not cached: run `linuxdmabuf vm --fetch --kernel {spec}"
                              f"{'' if arch == 'x86_64' else ' --arch ' + arch}`")
    with _fetch_lock(_entry(spec, arch)):
        # Another process may have finished the same fetch while we waited.
        kernel = _cached(spec, arch)
        if kernel:
            return kernel
        return build_full(log, arch) if spec == "full" else fetch_debian(spec, log, arch)


def _prebuilt_full(arch: str) -> Kernel | None:
    """The prebuilt full kernel of a source checkout (<checkout>/../shared/kernels)."""
    checkout = os.path.dirname(os.path.dirname(HERE))
    if not os.path.exists(os.path.join(checkout, "pyproject.toml")):
        return None
    name = KERNEL_ARCHES[arch].image
    suffix = "" if arch == "x86_64" else f"-{arch}.gz"
    images = sorted(glob.glob(os.path.join(checkout, "..", "shared", "kernels", f"{name}-*-dmabuf-full{suffix}")),
                    key=_version_key)
    if not images:
        return None
    version = os.path.basename(images[-1])[len(name) + 1:len(os.path.basename(images[-1])) - len(suffix)]
    return Kernel("full", os.path.abspath(images[-1]), version, arch)


# -- Debian's kernels -----------------------------------------------------------------


def debian_mirror() -> str:
    """The Debian mirror URI this machine's apt already uses ($LINUXDMABUF_DEBIAN_MIRROR overrides)."""
    explicit = os.environ.get("LINUXDMABUF_DEBIAN_MIRROR")
    if explicit:
        return explicit
    texts = []
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*"))]:
        try:
            with open(path) as f:
                texts.append(f.read())
        except OSError:
            pass
    for line in "\n".join(texts).splitlines():
        line = line.strip()
        if line.startswith(("deb ", "URIs:")):
            match = re.search(r"(https?://\S+/debian)/?(\s|$)", line)
            if match:
                return match.group(1)
    raise KernelError("no Debian mirror in apt's sources (/etc/apt/sources.list*): Debian's kernels are fetched "
                      "from the mirror apt already uses; set LINUXDMABUF_DEBIAN_MIRROR=<http://.../debian> "
                      "or pass a kernel image path")


HEARTBEAT = 10.0  # seconds: a long step says it is still going at least this often


def _run(cmd: list, what: str, log=None, **kwargs) -> str:
    """Run `cmd`; its stdout. With `log`, a step that takes long says so every HEARTBEAT seconds."""
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    except FileNotFoundError:
        raise KernelError(f"{what}: {cmd[0]} is not installed") from None
    started = time.monotonic()
    while True:
        try:
            out, err = proc.communicate(timeout=HEARTBEAT if log else None)
            break
        except subprocess.TimeoutExpired:
            log(f"linuxdmabuf vm: {what}: still running ({time.monotonic() - started:.0f} s)")
    if proc.returncode:
        tail = (err or out).strip().splitlines()[-3:]
        raise KernelError(f"{what} failed (exit {proc.returncode}): " + " / ".join(tail))
    return out


class _Apt:
    """apt-get against one Debian suite, in a private state directory (the system's apt is untouched)."""

    def __init__(self, suite: str, workdir: str, arch: str | None = None):
        """`arch`: the Debian architecture whose packages to fetch (default this machine's)."""
        mirror = debian_mirror()
        keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
        if not os.path.exists(keyring):
            raise KernelError(f"{keyring} is missing: apt-get install debian-archive-keyring")
        os.makedirs(os.path.join(workdir, "lists", "partial"))
        sources = os.path.join(workdir, "sources.list")
        with open(sources, "w") as f:
            f.write(f"deb [{f'arch={arch} ' if arch else ''}signed-by={keyring}] {mirror} {suite} main\n")
        self.mirror, self.suite = mirror, suite
        lists = os.path.join(workdir, "lists")
        self.opts = ["-o", f"Dir::Etc::sourcelist={sources}", "-o", "Dir::Etc::sourceparts=-",
                     "-o", f"Dir::State::Lists={lists}",
                     "-o", f"Dir::Cache={os.path.join(workdir, 'cache')}", "-o", "Debug::NoLocking=1"]
        if arch:
            self.opts += ["-o", f"APT::Architecture={arch}", "-o", f"APT::Architectures={arch}"]
        what = f"apt-get update of Debian {suite} from {mirror}"
        # apt-get update exits 0 when an index cannot be fetched (it only
        # warns): no Packages index afterwards is the failure to report.
        done = subprocess.run(["apt-get", *self.opts, "-q", "update"], capture_output=True, text=True)
        if done.returncode or not glob.glob(os.path.join(lists, "*_Packages*")):
            problems = [line for line in (done.stderr + done.stdout).splitlines() if line.startswith(("E:", "W:"))]
            raise KernelError(f"{what} failed (no network to the archive, or a wrong LINUXDMABUF_DEBIAN_MIRROR?): "
                              + (" / ".join(problems[:2]) or f"exit {done.returncode}, no package index"))

    def newest(self, pattern: str) -> str | None:
        names = _run(["apt-cache", *self.opts, "pkgnames"], "apt-cache pkgnames").split()
        found = [n for n in names if re.fullmatch(pattern, n)]
        return max(found, key=_version_key, default=None)

    def download(self, packages: list, into: str, log=None) -> None:
        _run(["apt-get", *self.opts, "-qq", "download", *packages],
             f"apt-get download {' '.join(packages)} from {self.mirror} {self.suite}", log, cwd=into)


def fetch_debian(spec: str, log, kernel_arch: str = "x86_64") -> Kernel:
    """Download Debian's kernel for `spec` on `kernel_arch`, unpack it with its modules (depmod'ed), cache it."""
    suite, series = DEBIAN[spec]
    arch = KERNEL_ARCHES[kernel_arch].debian
    staging = _staging(_entry(spec, kernel_arch))
    try:
        log(f"linuxdmabuf vm: {spec} ({kernel_arch}) is not cached: reading Debian {suite}'s package index")
        apt = _Apt(suite, os.path.join(staging, "apt"), arch)
        ver = re.escape(series) + r"\.[0-9.]+(\+deb[0-9]+)?-" + arch
        binary = apt.newest(f"linux-binary-{ver}")  # sid splits image, modules and base files
        if binary:
            kver = binary[len("linux-binary-"):]
            packages = [binary, f"linux-modules-{kver}", f"linux-base-{kver}"]
        else:
            image = apt.newest(f"linux-image-{ver}-unsigned")
            if not image:
                raise KernelError(f"Debian {suite} at {apt.mirror} has no Linux {series} kernel for {arch} any more; "
                                  "pass a kernel image path instead")
            kver = image[len("linux-image-"):-len("-unsigned")]
            packages = [image]
        log(f"linuxdmabuf vm: fetching {spec} ({', '.join(packages)}) from {apt.mirror} {suite}")
        debs = os.path.join(staging, "debs")
        os.makedirs(debs)
        apt.download(packages, debs, log)
        root = os.path.join(staging, "root")
        for deb in sorted(os.listdir(debs)):
            _run(["dpkg-deb", "-x", os.path.join(debs, deb), root], f"unpacking {deb}")
        shutil.rmtree(debs)
        shutil.rmtree(os.path.join(staging, "apt"))
        moddir = os.path.join(root, "usr", "lib", "modules", kver)
        image = next((p for p in (os.path.join(moddir, "vmlinuz"), os.path.join(root, "boot", f"vmlinuz-{kver}"))
                      if os.path.exists(p)), None)
        if image is None:
            raise KernelError(f"no kernel image found in {', '.join(packages)}")
        # virtme-ng puts the modules it needs (9p, virtio) into its initramfs
        # from here and links the tree into the guest's /lib/modules.
        _run(["depmod", "-b", os.path.join(root, "usr"), kver], "depmod (apt-get install kmod)")
        return _commit(spec, kernel_arch, kver, staging, os.path.relpath(image, staging), packages=packages,
                       suite=suite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# -- the full kernel ---------------------------------------------------------------------

BUILD_TOOLS = {"gcc": "gcc", "make": "make", "flex": "flex", "bison": "bison", "bc": "bc"}
BUILD_HEADERS = {"/usr/include/libelf.h": "libelf-dev", "/usr/include/openssl/ssl.h": "libssl-dev"}


def build_full(log, arch: str = "x86_64") -> Kernel:
    """Build the full kernel for `arch` from Debian's newest linux-source with dmabuf.config; cache it."""
    tools = dict(BUILD_TOOLS)
    cross = [m.split("=", 1)[1] for m in KERNEL_ARCHES[arch].make if m.startswith("CROSS_COMPILE=")]
    if cross:
        tools[f"{cross[0]}gcc"] = "gcc-aarch64-linux-gnu"
    missing = [pkg for tool, pkg in tools.items() if not shutil.which(tool)]
    missing += [pkg for header, pkg in BUILD_HEADERS.items() if not os.path.exists(header)]
    if missing:
        variable = "LINUXDMABUF_FULL_KERNEL" + ("" if arch == "x86_64" else f"_{arch.upper()}")
        raise KernelError(f"no full {arch} kernel here, and building one needs: apt-get install "
                          + " ".join(sorted(set(missing))) + f"; or set {variable} to a kernel image "
                          "built with linuxdmabuf/vm/dmabuf.config, or use the spec debian-7.2 (Debian's stock kernel: "
                          "no sw_sync, no CMA heap)")
    vng = shutil.which("vng") or shutil.which("vng", path=os.path.dirname(sys.executable))
    if not vng:
        raise KernelError("building the full kernel needs virtme-ng's vng on PATH: pip install virtme-ng")
    log(f"linuxdmabuf vm: building the full {arch} kernel once (Debian linux-source + dmabuf.config, "
        f"about 20 minutes on 2 cores), cached in {cache_dir()}")
    staging = _staging(_entry("full", arch))
    try:
        log("linuxdmabuf vm: reading Debian unstable's package index for linux-source")
        apt = _Apt("unstable", os.path.join(staging, "apt"))
        package = apt.newest(r"linux-source-[0-9.]+")
        if not package:
            raise KernelError(f"no linux-source package in Debian unstable at {apt.mirror}")
        apt.download([package], staging, log)
        deb = glob.glob(os.path.join(staging, f"{package}_*.deb"))[0]
        _run(["dpkg-deb", "-x", deb, os.path.join(staging, "pkg")], f"unpacking {package}")
        tarball = glob.glob(os.path.join(staging, "pkg", "usr", "src", "linux-source-*.tar.*"))[0]
        _run(["tar", "-xf", tarball, "-C", staging], f"extracting {os.path.basename(tarball)}", log)
        src = glob.glob(os.path.join(staging, "linux-source-*/"))[0]
        make = ["make", *KERNEL_ARCHES[arch].make]
        image = KERNEL_ARCHES[arch].image
        steps = [
            [vng, "--kconfig", *(["--arch", arch, "--cross-compile", cross[0]] if cross else []),
             "--config", CONFIG_FRAGMENT],
            ["scripts/config", "--disable", "DEBUG_INFO", "--enable", "DEBUG_INFO_NONE",
             "--disable", "DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT", "--disable", "DEBUG_INFO_BTF"],
            [*make, "olddefconfig"],
            [*make, f"-j{os.cpu_count() or 1}", image],
        ]
        for step in steps:
            log("linuxdmabuf vm: " + " ".join(step))
            _run(step, " ".join(step), log, cwd=src)
        version = _run([*make, "-s", "kernelrelease"], "make kernelrelease", cwd=src).strip()
        shutil.copy(os.path.join(src, KERNEL_ARCHES[arch].boot), os.path.join(staging, image))
        shutil.copy(os.path.join(src, ".config"), os.path.join(staging, "config"))
        for leftover in ("apt", "pkg", src, deb):
            shutil.rmtree(leftover, ignore_errors=True) if os.path.isdir(leftover) else os.remove(leftover)
        return _commit("full", arch, version, staging, image, source=package)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
