"""The VM runner (linuxdmabuf/vm): every misuse and failure gives one clear message and a non-zero exit.

Host-side tests. Most need no VM. Those that boot one are marked `slow` and
bounded twice: by the runner's own time-outs and by the subprocess time-out
here (VM_LIMIT). Downloads are only ever pointed at closed or listening ports
on 127.0.0.1.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest
from helpers import run_group

from linuxdmabuf import vm
from linuxdmabuf.vm import kernels, userland

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VM_LIMIT = 300  # seconds: no test here may take longer, whatever happens in the VM

in_vm = pytest.mark.skipif(bool(os.environ.get("LINUXDMABUF_IN_VM")), reason="host-side test (it boots VMs)")


def linuxdmabuf_vm(*args, env=None, timeout=60):
    """`python -m linuxdmabuf vm ARGS` as a user runs it: (exit status, stdout, stderr)."""
    done = run_group([sys.executable, "-m", "linuxdmabuf", "vm", *args], cwd=TOP, timeout=timeout,
                     env=dict(os.environ, **(env or {})))
    return done.returncode, done.stdout, done.stderr


def can_boot():
    missing = [p for p in ("qemu-system-x86_64", "busybox") if not shutil.which(p)]
    if not shutil.which("vng") and not shutil.which("vng", path=os.path.dirname(sys.executable)):
        missing.append("vng")
    try:
        kernels.resolve("full", fetch=False)
    except kernels.KernelError as e:
        missing.append(str(e))
    return missing


def boots_vm(test):
    """Marks a test that boots a VM: slow, host-only, skipped where no VM can boot."""
    missing = can_boot()
    test = pytest.mark.skipif(bool(missing), reason=f"cannot boot a VM here: {', '.join(missing)}")(test)
    return pytest.mark.slow(in_vm(test))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- bad input found before any VM is booted ------------------------------------------


@pytest.mark.parametrize("args, status, message", [
    (["--kernel", "fulll", "--", "true"], 125, "unknown kernel spec 'fulll' (did you mean full?)"),
    (["--kernel", "debian-9.9", "--", "true"], 125, "use one of full, debian-7.2, debian-6.12 or a path"),
    (["--kernel", "", "--", "true"], 125, "no kernel spec given"),
    (["--kernel", "./README.md", "--", "true"], 125, "is not a Linux kernel image"),
    (["--kernel", "/nonexistent/bzImage", "--", "true"], 125, "kernel image /nonexistent/bzImage does not exist"),
    (["--kernel", "tools/", "--", "true"], 125, "is not a file"),
    (["--memory", "lots", "--", "true"], 125, "guest memory 'lots' is not a size such as 512M or 2G"),
    (["--memory", "16M", "--", "true"], 125, "the guest needs at least 128M"),
    (["--cpus", "0", "--", "true"], 125, "a whole number of CPUs >= 1, not 0"),
    (["--cpus", "two", "--", "true"], 2, "invalid int value: 'two'"),
    (["--timeout", "0", "--", "true"], 2, "--timeout must be a positive number of seconds"),
    (["--boot-timeout", "-1", "--", "true"], 2, "--boot-timeout must be a positive number of seconds"),
    (["--user", "no-such-user-here", "--", "true"], 125, "no user 'no-such-user-here' on this machine"),
    (["--rwdir", "/nonexistent", "--", "true"], 125, "--rwdir /nonexistent is not a directory"),
    ([], 2, "no command given"),
    (["--fetch", "--kernel", "full", "--", "true"], 2, "--fetch takes no command"),
])
def test_bad_arguments_fail_before_booting(args, status, message):
    code, out, err = linuxdmabuf_vm(*args)
    assert code == status, err
    assert message in err
    assert "booted" not in err and out == ""


@pytest.mark.parametrize("program, fix", [
    ("qemu-system-x86_64", "apt-get install qemu-system-x86"),
    ("vng", "pip install 'linuxdmabuf[vm]'"),
    ("busybox", "apt-get install busybox-static"),
])
def test_missing_program_is_named_with_its_fix(monkeypatch, capsys, program, fix):
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == program else real_which(name, *a, **k))
    assert vm.main(["--", "true"]) == vm.EXIT_RUNNER
    err = capsys.readouterr().err
    assert f"{program} not found" in err and fix in err


def test_full_kernel_that_cannot_be_had_says_how_to_get_one(monkeypatch, tmp_path, capsys):
    """No prebuilt full kernel (a user's machine), nothing cached, no network: a message, nothing cached."""
    monkeypatch.setenv("LINUXDMABUF_CACHE", str(tmp_path))
    monkeypatch.setenv("LINUXDMABUF_DEBIAN_MIRROR", f"http://127.0.0.1:{closed_port()}/debian")
    monkeypatch.delenv("LINUXDMABUF_FULL_KERNEL", raising=False)
    monkeypatch.setattr(kernels, "_prebuilt_full", lambda arch: None)
    with pytest.raises(kernels.KernelError, match="LINUXDMABUF_FULL_KERNEL"):
        kernels.resolve("full", fetch=False)
    assert vm.main(["--fetch", "--kernel", "full"]) == vm.EXIT_RUNNER
    err = capsys.readouterr().err
    # Either the build tools are missing, or the source download fails: both say what to do.
    assert "apt-get install" in err or "apt-get update of Debian unstable from http://127.0.0.1" in err, err
    assert not list(tmp_path.rglob("kernel.json")) and not list(tmp_path.rglob(".partial-*"))


def test_bad_full_kernel_variable_is_reported(monkeypatch, tmp_path):
    monkeypatch.setenv("LINUXDMABUF_FULL_KERNEL", str(tmp_path / "nothing"))
    with pytest.raises(kernels.KernelError, match="LINUXDMABUF_FULL_KERNEL's image .* does not exist"):
        kernels.resolve("full")
    (tmp_path / "text").write_text("not a kernel\n")
    monkeypatch.setenv("LINUXDMABUF_FULL_KERNEL", str(tmp_path / "text"))
    with pytest.raises(kernels.KernelError, match="not a Linux kernel image"):
        kernels.resolve("full")


def test_kernel_image_check_accepts_a_bzimage():
    try:
        image = kernels.resolve("full", fetch=False).image
    except kernels.KernelError as e:
        pytest.skip(str(e))
    assert kernels.check_image(image) == image


# -- guest architectures: images checked, programs named, userlands complete or absent ---------------


@pytest.fixture
def fake_images(tmp_path):
    """A file with an x86 boot header, an arm64 Image header, and that Image gzip'd: what check_image reads."""
    import gzip

    bz, image, gz = tmp_path / "bzImage", tmp_path / "Image", tmp_path / "Image.gz"
    bz.write_bytes(b"\0" * 0x202 + b"HdrS" + b"\0" * 64)
    image.write_bytes(b"\0" * 0x38 + b"ARM\x64" + b"\0" * 0x200)
    gz.write_bytes(gzip.compress(image.read_bytes()))
    return str(bz), str(image), str(gz)


def test_kernel_images_are_told_apart_and_a_mismatch_names_both(fake_images):
    bz, image, gz = fake_images
    assert [kernels.image_arch(p) for p in fake_images] == ["x86_64", "arm64", "arm64"]
    assert kernels.check_image(gz, arch="arm64") == gz
    code, out, err = linuxdmabuf_vm("--arch", "arm64", "--kernel", bz, "--", "true")
    assert code == vm.EXIT_RUNNER and out == ""
    assert f"kernel image {bz} is an x86_64 kernel, but the VM's architecture is arm64" in err
    code, out, err = linuxdmabuf_vm("--kernel", image, "--", "true")
    assert code == vm.EXIT_RUNNER and "is an arm64 kernel, but the VM's architecture is x86_64" in err
    code, out, err = linuxdmabuf_vm("--arch", "i386", "--kernel", gz, "--", "true")  # i386 runs on x86_64
    assert code == vm.EXIT_RUNNER and "is an arm64 kernel, but the VM's architecture is x86_64" in err


def test_unknown_architecture_is_refused_with_the_choices():
    code, out, err = linuxdmabuf_vm("--arch", "aarch64", "--", "true")
    assert code == 2 and "invalid choice: 'aarch64'" in err and "arm64" in err
    with pytest.raises(vm.VMError, match="no guest architecture 'sparc': use one of x86_64, arm64, armhf, i386"):
        vm.run(["true"], arch="sparc")


@pytest.mark.parametrize("arch, program, fix", [
    ("arm64", "qemu-system-aarch64", "apt-get install qemu-system-arm"),
    ("armhf", "qemu-system-aarch64", "apt-get install qemu-system-arm"),
    ("i386", "qemu-system-x86_64", "apt-get install qemu-system-x86"),
])
def test_missing_qemu_for_the_architecture_is_named(monkeypatch, capsys, arch, program, fix):
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == program else real_which(name, *a, **k))
    assert vm.main(["--arch", arch, "--", "true"]) == vm.EXIT_RUNNER
    err = capsys.readouterr().err
    assert f"{program} not found" in err and fix in err


def test_missing_mmdebstrap_is_named_and_nothing_is_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("LINUXDMABUF_CACHE", str(tmp_path))
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "mmdebstrap" else real_which(name, *a, **k))
    with pytest.raises(kernels.KernelError, match="needs mmdebstrap: apt-get install mmdebstrap"):
        userland.resolve("armhf", log=lambda message: None)
    with pytest.raises(kernels.KernelError, match="the x86_64 guest boots this machine's own root"):
        userland.resolve("x86_64")
    assert not list(tmp_path.rglob("userland.json"))


@pytest.mark.skipif(not shutil.which("mmdebstrap"), reason="no mmdebstrap here (apt-get install mmdebstrap)")
def test_userland_build_failing_half_way_leaves_nothing(monkeypatch, tmp_path):
    code, out, err = linuxdmabuf_vm("--fetch", "--arch", "arm64", "--kernel", "debian-7.2",
                                    env={"LINUXDMABUF_CACHE": str(tmp_path),
                                         "LINUXDMABUF_DEBIAN_MIRROR": f"http://127.0.0.1:{closed_port()}/debian"})
    assert code == vm.EXIT_RUNNER and "apt-get update of Debian unstable" in err
    (tmp_path / "kernels" / "debian-7.2-arm64" / "7.2.13").mkdir(parents=True)  # as if it were cached
    (tmp_path / "kernels" / "debian-7.2-arm64" / "7.2.13" / "vmlinuz").write_bytes(b"cached")
    (tmp_path / "kernels" / "debian-7.2-arm64" / "7.2.13" / "kernel.json").write_text(json.dumps(
        {"spec": "debian-7.2", "version": "7.2.13", "image": "vmlinuz"}))
    code, out, err = linuxdmabuf_vm("--fetch", "--arch", "arm64", "--kernel", "debian-7.2",
                                    env={"LINUXDMABUF_CACHE": str(tmp_path),
                                         "LINUXDMABUF_DEBIAN_MIRROR": f"http://127.0.0.1:{closed_port()}/debian"})
    assert code == vm.EXIT_RUNNER and "mmdebstrap of Debian trixie arm64 failed" in err, err
    assert not list(tmp_path.rglob("userland.json")) and not list((tmp_path / "userlands").glob(".partial-*"))
    monkeypatch.setenv("LINUXDMABUF_CACHE", str(tmp_path))
    with pytest.raises(kernels.KernelError, match="no arm64 userland is cached: run `linuxdmabuf vm --fetch --arch"):
        userland.resolve("arm64", fetch=False)


def test_building_the_arm64_full_kernel_without_a_cross_compiler_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("LINUXDMABUF_CACHE", str(tmp_path))
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which",
                        lambda name, *a, **k: None if name == "aarch64-linux-gnu-gcc" else real_which(name, *a, **k))
    with pytest.raises(kernels.KernelError, match="apt-get install .*gcc-aarch64-linux-gnu.*"
                                                  "LINUXDMABUF_FULL_KERNEL_ARM64"):
        kernels.build_full(lambda message: None, "arm64")
    assert not list(tmp_path.rglob("kernel.json"))


def test_a_cached_userland_is_used_without_network(monkeypatch, tmp_path):
    monkeypatch.setenv("LINUXDMABUF_CACHE", str(tmp_path))
    monkeypatch.setenv("LINUXDMABUF_DEBIAN_MIRROR", f"http://127.0.0.1:{closed_port()}/debian")
    entry = tmp_path / "userlands" / userland._entry_name(userland.ARCHES["i386"])
    (entry / "root").mkdir(parents=True)
    (entry / "userland.json").write_text("{}")
    assert userland.resolve("i386") == str(entry / "root")


def test_a_userland_is_keyed_by_its_recipe(monkeypatch):
    """Another package list or suite is another cache entry; the name says the architecture and suite."""
    arm64 = userland.ARCHES["arm64"]
    name = userland._entry_name(arm64)
    assert name.startswith("arm64-trixie-") and name == userland._entry_name(arm64)
    monkeypatch.setattr(userland, "PACKAGES", userland.PACKAGES + ("strace",))
    assert userland._entry_name(arm64) != name


def test_the_package_copy_for_a_foreign_guest_is_for_every_user_of_the_guest(tmp_path):
    """A foreign guest imports this package from its copy in the cache: the tests' unprivileged users
    (nobody, a group member) must read it, and none may change it."""
    copy = userland.package_copy(str(tmp_path))
    assert userland.package_copy(str(tmp_path)) == copy
    for d, dirs, names in os.walk(copy):
        assert os.stat(d).st_mode & 0o7777 == 0o755, d
        for name in names:
            assert os.stat(os.path.join(d, name)).st_mode & 0o066 == 0o044, name
    assert os.path.isfile(os.path.join(copy, "linuxdmabuf", "vm", "userland.py"))
    info = next(n for n in os.listdir(copy) if n.endswith(".dist-info"))
    with open(os.path.join(copy, info, "entry_points.txt")) as f:
        assert "linuxdmabuf = linuxdmabuf.pytest_plugin" in f.read()


def foreign_guests():
    """The foreign guest architectures this machine can boot (QEMU, a kernel for them), else why not."""
    for arch in ("arm64", "armhf", "i386"):
        guest = vm.ARCHES[arch]
        why = can_boot()
        try:
            kernels.resolve("full", fetch=False, arch=guest.kernel)
        except kernels.KernelError as e:
            why.append(str(e))
        if not shutil.which(kernels.KERNEL_ARCHES[guest.kernel].qemu):
            why.append(f"no {kernels.KERNEL_ARCHES[guest.kernel].qemu}")
        if not shutil.which("mmdebstrap"):
            why.append("no mmdebstrap")
        yield pytest.param(arch, marks=pytest.mark.skipif(bool(why), reason=f"cannot boot {arch}: {', '.join(why)}"))


@pytest.mark.slow
@in_vm
@pytest.mark.parametrize("arch", list(foreign_guests()))
def test_a_foreign_guest_runs_its_own_python_with_this_package(arch):
    """`linuxdmabuf vm --arch ARCH -- python3 ...`: the guest's own python3, of its word size, imports this
    package from the shared checkout, and the guest command's status comes back."""
    probe = ("import linuxdmabuf, platform, struct, sys; print(platform.machine(), struct.calcsize('P') * 8, "
             "linuxdmabuf.__file__); sys.exit(3)")
    code, out, err = linuxdmabuf_vm("--arch", arch, "--", "python3", "-c", probe, timeout=VM_LIMIT)
    assert code == 3, err
    machine, bits, where = out.split()
    assert (machine, bits) == {"arm64": ("aarch64", "64"), "armhf": ("aarch64", "32"), "i386": ("x86_64", "32")}[arch]
    assert where.startswith(vm.GUEST_CACHE) or where.startswith(TOP)
    assert f"full {arch} kernel" in err and "booted" in err


# -- the kernel cache: complete or absent, and no network once cached ----------------------


def test_unreachable_mirror_leaves_nothing_in_the_cache(monkeypatch, tmp_path):
    code, out, err = linuxdmabuf_vm("--fetch", "--kernel", "debian-7.2",
                                    env={"LINUXDMABUF_CACHE": str(tmp_path),
                                         "LINUXDMABUF_DEBIAN_MIRROR": f"http://127.0.0.1:{closed_port()}/debian"})
    assert code == vm.EXIT_RUNNER
    assert "apt-get update of Debian unstable from http://127.0.0.1" in err and "failed" in err
    assert "Could not connect" in err or "Connection refused" in err, err
    assert not list(tmp_path.rglob("kernel.json")) and not list(tmp_path.rglob(".partial-*"))
    monkeypatch.setenv("LINUXDMABUF_CACHE", str(tmp_path))
    with pytest.raises(kernels.KernelError, match="not cached"):
        kernels.resolve("debian-7.2", fetch=False)


def test_unwritable_cache_is_reported():
    code, out, err = linuxdmabuf_vm("--fetch", "--kernel", "debian-7.2",
                                    env={"LINUXDMABUF_CACHE": "/proc/linuxdmabuf-cache"})
    assert code == vm.EXIT_RUNNER
    assert "cannot write to the kernel cache /proc/linuxdmabuf-cache/kernels" in err and "Traceback" not in err


class FakeApt:
    """Stands in for the Debian archive: `download` writes what `debs` says, or raises."""

    debs = {}
    raises = None

    def __init__(self, suite, workdir, arch=None):
        self.mirror, self.suite = "http://127.0.0.1:9/debian", suite
        os.makedirs(workdir)

    def newest(self, pattern):
        return "linux-binary-7.2.13+deb14-amd64" if "binary" in pattern else None

    def download(self, packages, into, log=None):
        for name, data in self.debs.items():
            with open(os.path.join(into, name), "wb") as f:
                f.write(data)
        if self.raises:
            raise self.raises


@pytest.mark.parametrize("debs, raises, error", [
    ({"linux-binary.deb": b"!<arch>\ndebian-binary   truncated"}, None, kernels.KernelError),
    ({"linux-binary.deb": b"half a download"}, KeyboardInterrupt(), KeyboardInterrupt),
    ({}, kernels.KernelError("apt-get download failed (exit 100): E: connection reset"), kernels.KernelError),
])
def test_fetch_failing_half_way_leaves_nothing(monkeypatch, tmp_path, debs, raises, error):
    monkeypatch.setenv("LINUXDMABUF_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels, "_Apt", type("Apt", (FakeApt,), {"debs": debs, "raises": raises}))
    with pytest.raises(error):
        kernels.resolve("debian-7.2", log=lambda message: None)
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert leftovers == []
    assert kernels._cached("debian-7.2") is None


def test_partial_entry_of_a_killed_fetch_is_not_used_and_is_cleaned(monkeypatch, tmp_path):
    monkeypatch.setenv("LINUXDMABUF_CACHE", str(tmp_path))
    partial = tmp_path / "kernels" / "debian-7.2" / ".partial-killed"
    partial.mkdir(parents=True)
    (partial / "vmlinuz").write_bytes(b"half")
    (partial / "kernel.json").write_text(json.dumps({"spec": "debian-7.2", "version": "7.2.1", "image": "vmlinuz"}))
    with pytest.raises(kernels.KernelError, match="not cached"):
        kernels.resolve("debian-7.2", fetch=False)
    monkeypatch.setattr(kernels, "_Apt", type("Apt", (FakeApt,), {"raises": kernels.KernelError("offline")}))
    with pytest.raises(kernels.KernelError, match="offline"):
        kernels.resolve("debian-7.2", log=lambda message: None)
    assert not partial.exists()


def test_corrupt_cache_entry_is_ignored(monkeypatch, tmp_path):
    monkeypatch.setenv("LINUXDMABUF_CACHE", str(tmp_path))
    entry = tmp_path / "kernels" / "debian-7.2" / "7.2.1"
    entry.mkdir(parents=True)
    (entry / "kernel.json").write_text("{trunc")
    with pytest.raises(kernels.KernelError, match="not cached"):
        kernels.resolve("debian-7.2", fetch=False)


@pytest.fixture
def listening_mirror():
    """A mirror URL on 127.0.0.1 whose socket listens but never answers: yields (url, connected())."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.setblocking(False)

        def connected() -> bool:
            try:
                server.accept()[0].close()
                return True
            except BlockingIOError:
                return False

        yield f"http://127.0.0.1:{server.getsockname()[1]}/debian", connected


def test_second_resolve_of_a_cached_spec_touches_no_network(tmp_path, listening_mirror):
    url, connected = listening_mirror
    entry = tmp_path / "kernels" / "debian-7.2" / "7.2.13+deb14-amd64"
    entry.mkdir(parents=True)
    (entry / "vmlinuz").write_bytes(b"cached")
    (entry / "kernel.json").write_text(json.dumps({"spec": "debian-7.2", "version": "7.2.13+deb14-amd64",
                                                   "image": "vmlinuz"}))
    code, out, err = linuxdmabuf_vm("--fetch", "--kernel", "debian-7.2",
                                    env={"LINUXDMABUF_CACHE": str(tmp_path), "LINUXDMABUF_DEBIAN_MIRROR": url})
    assert code == 0, err
    assert out == f"debian-7.2: {entry / 'vmlinuz'}\n"
    assert not connected()


def test_this_machines_cached_kernels_resolve_offline(listening_mirror):
    url, connected = listening_mirror
    specs = []
    for spec in kernels.DEBIAN:
        try:
            kernels.resolve(spec, fetch=False)
            specs.append(spec)
        except kernels.KernelError:
            pass
    if not specs:
        pytest.skip("no Debian kernel cached here")
    code, out, err = linuxdmabuf_vm("--fetch", "--kernel", ",".join(specs), env={"LINUXDMABUF_DEBIAN_MIRROR": url})
    assert code == 0, err
    assert not connected() and "fetching" not in err


# -- failures inside the VM -----------------------------------------------------------------


def test_our_config_fragment_builds_the_prebuilt_full_kernels_features():
    """One fragment (linuxdmabuf/vm/dmabuf.config) for a user's own build of `full`: every option of the
    recipe the prebuilt kernel came from (../shared/kernels, beside a source checkout) is in it."""
    shared = os.path.join(TOP, "..", "shared", "kernels", "dmabuf.config")
    if not os.path.exists(shared):
        pytest.skip("no ../shared/kernels beside this checkout")

    def options(path):
        with open(path) as f:
            return {line.strip() for line in f if line.startswith("CONFIG_")}

    assert options(shared) <= options(kernels.CONFIG_FRAGMENT)
    assert {"CONFIG_VIDEO_VIVID=y", "CONFIG_VIDEO_VIM2M=y", "CONFIG_VIDEO_VICODEC=y", "CONFIG_DRM_VKMS=y"} <= \
        options(kernels.CONFIG_FRAGMENT)
    assert not os.path.exists(os.path.join(TOP, "tools", "dmabuf.config"))


def test_long_steps_say_they_are_still_going(monkeypatch):
    monkeypatch.setattr(kernels, "HEARTBEAT", 0.2)
    said = []
    assert kernels._run(["sh", "-c", "sleep 0.7; echo done"], "a slow step", said.append) == "done\n"
    assert 2 <= len(said) <= 4 and all(s.startswith("linuxdmabuf vm: a slow step: still running (") for s in said)


def test_first_kvm_check_says_what_it_does_at_once(monkeypatch, tmp_path):
    """The KVM probe (up to 60 s on a first run) is announced before it starts, then heard from."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("no usable /dev/kvm here: the runner uses TCG without probing")
    monkeypatch.setenv("LINUXDMABUF_CACHE", str(tmp_path))
    monkeypatch.delenv("LINUXDMABUF_VM_ACCEL", raising=False)
    monkeypatch.setattr(vm, "HEARTBEAT", 0.2)
    qemu = tmp_path / "qemu"
    qemu.write_text("#!/bin/sh\nsleep 0.7\necho 'Kernel panic - not syncing: VFS'\n")
    qemu.chmod(0o755)
    said = []
    assert vm.accelerator(vm.Kernel("full", "/bzImage"), str(qemu), said.append) == "kvm"
    assert said[0].startswith("linuxdmabuf vm: /dev/kvm is here: checking that KVM really runs a guest")
    assert any("KVM check: still running" in s for s in said) and said[-1] == "linuxdmabuf vm: KVM works"
    said.clear()
    assert vm.accelerator(vm.Kernel("full", "/bzImage"), str(qemu), said.append) == "kvm" and said == []  # cached


def test_guest_script_is_private_to_its_user(tmp_path):
    os.chmod(tmp_path, 0o755)
    with pytest.raises(vm.VMError, match="open to other users"):
        vm.write_private(str(tmp_path / "guest.sh"), "TOKEN=secret")
    os.chmod(tmp_path, 0o700)
    path = vm.write_private(str(tmp_path / "guest.sh"), "TOKEN=secret")
    assert os.stat(path).st_mode & 0o777 == 0o600 and open(path).read() == "TOKEN=secret"


@boots_vm
def test_status_and_streams_come_back_from_the_guest_and_nobody_reads_the_secrets_meanwhile():
    """The guest script carries the environment (CI tokens): while the VM runs, user nobody on this
    machine can read nothing the runner wrote (tempdir 0700, script 0600)."""
    before = set(os.listdir("/tmp"))
    proc = subprocess.Popen([sys.executable, "-m", "linuxdmabuf", "vm", "--", "sh", "-c",
                             'sleep 2; echo "out $LINUXDMABUF_IN_VM $LINUXDMABUF_VM_KERNEL $RUNNER_TOKEN"; '
                             "echo err >&2; exit 3"], cwd=TOP, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, RUNNER_TOKEN="s3cret"), start_new_session=True)
    try:
        import pwd

        while not [d for d in set(os.listdir("/tmp")) - before if d.startswith("linuxdmabuf-vm-")]:
            assert proc.poll() is None, proc.communicate()
        [outdir] = [f"/tmp/{d}" for d in set(os.listdir("/tmp")) - before if d.startswith("linuxdmabuf-vm-")]
        while not os.path.exists(f"{outdir}/guest.sh"):
            pass
        nobody = pwd.getpwnam("nobody")
        peek = subprocess.run(["sh", "-c", f"cat {outdir}/guest.sh; ls {outdir}"], user=nobody.pw_uid,
                              group=nobody.pw_gid, extra_groups=[], capture_output=True, text=True, cwd="/")
        assert "s3cret" not in peek.stdout and peek.stdout == "", peek.stdout
        assert "Permission denied" in peek.stderr
        assert os.stat(outdir).st_mode & 0o777 == 0o700 and os.stat(f"{outdir}/guest.sh").st_mode & 0o777 == 0o600
        out, err = proc.communicate(timeout=VM_LIMIT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 3, err
    assert out == "out 1 full s3cret\n"
    assert "err\n" in err and "linuxdmabuf vm: full kernel" in err and "booted in" in err


@boots_vm
def test_a_kernel_that_lost_its_cma_heaps_fails_naming_them():
    """LINUXDMABUF_VM_APPEND=cma=0: the full kernel boots without its CMA area; the tests that need the CMA
    heaps it is expected to have fail, naming the feature (never a skip), and the header line says it."""
    code, out, err = linuxdmabuf_vm("--", sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                    "tests/test_kernel_features.py", "-k", "expected_feature",
                                    env={"LINUXDMABUF_VM_APPEND": "cma=0"}, timeout=VM_LIMIT)
    assert code == 1, out + err
    assert "missing feature cma_heap:default_cma_region, which kernel 7.2.13 (full) is expected to have" in out
    assert "missing feature cma_heap:reserved" in out and "2 failed" in out
    assert "missing: cma_heap:default_cma_region: " in out  # the session's header line


@boots_vm
def test_command_not_found_in_the_vm():
    code, out, err = linuxdmabuf_vm("--", "no-such-command-in-the-vm", "--flag", timeout=VM_LIMIT)
    assert code == vm.EXIT_NOT_FOUND
    assert "command not found in the VM: no-such-command-in-the-vm" in err


@boots_vm
def test_command_killed_by_the_guests_oom_killer():
    hog = "chunks = []\nwhile True: chunks.append(b'x' * (32 << 20))"
    code, out, err = linuxdmabuf_vm("--memory", "384M", "--", sys.executable, "-c", hog, timeout=VM_LIMIT)
    assert code == 128 + 9
    assert "killed by the guest's OOM killer" in err and "Killed process" in err
    assert "the VM has 384M of memory, give it more" in err


@boots_vm
def test_kernel_that_panics_at_boot_is_tried_twice_then_reported():
    # rootfstype=ext4 overrides virtme-ng's 9p root: no root filesystem, panic.
    code, out, err = linuxdmabuf_vm("--append", "rootfstype=ext4", "--", "true", timeout=VM_LIMIT)
    assert code == vm.EXIT_RUNNER
    assert err.count("the VM stopped before the command finished") == 2
    assert "booting again" in err
    assert "Kernel panic - not syncing: VFS: Unable to mount root fs" in err.splitlines()[0]
    assert "last console lines:" in err


@boots_vm
def test_kernel_that_hangs_at_boot_times_out_with_the_console_tail():
    # The same panic, but panic=0 makes the kernel wait forever instead of rebooting.
    code, out, err = linuxdmabuf_vm("--append", "rootfstype=ext4 panic=0", "--boot-timeout", "8", "--", "true",
                                    timeout=VM_LIMIT)
    assert code == vm.EXIT_TIMEOUT
    assert err.count("the VM did not start the command within 8 s") == 2
    assert "last console lines:\n[" in err


@boots_vm
def test_guests_boot_beside_cpu_hogs_with_the_timer_check_off():
    """Every guest boots with no_timer_check (a loaded host made x86 guests panic: "IO-APIC + timer
    doesn't work!") and print-fatal-signals=1; here two CPU hogs (this machine's cores) run beside it."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        code, out, err = linuxdmabuf_vm("--", "cat", "/proc/cmdline", timeout=VM_LIMIT)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert code == 0, err
    assert " no_timer_check print-fatal-signals=1" in out


@boots_vm
def test_the_cma_view_of_a_stock_kernel_names_what_it_lacks():
    """Debian's 7.2 has CMA and CMA_SYSFS but no CMA heap and no CMA_DEBUGFS; given an area (cma=32M),
    `linuxdmabuf cma` shows the sysfs figures and names what is missing."""
    try:
        kernels.resolve("debian-7.2", fetch=False)
    except kernels.KernelError as e:
        pytest.skip(f"debian-7.2 is not cached here: {e}")
    code, out, err = linuxdmabuf_vm("--kernel", "debian-7.2", "--append", "cma=32M", "--", sys.executable, "-m",
                                    "linuxdmabuf", "cma", "--json", timeout=VM_LIMIT)
    assert code == 0, err
    [area] = json.loads(out)["areas"]
    assert area["total_pages"] == 8192 and area["free_pages"] + area["used_pages"] == 8192
    assert area["alloc_pages_success"] is not None and area["heaps"] == [] and area["bitmap"] is None
    assert "(CONFIG_CMA_DEBUGFS)" in area["missing"]["largest_free_pages"]


@boots_vm
def test_a_guest_that_hangs_is_killed_at_its_timeout_with_its_console_tail():
    code, out, err = linuxdmabuf_vm("--timeout", "20", "--", "sleep", "600", timeout=VM_LIMIT)
    assert code == vm.EXIT_TIMEOUT
    assert "the command did not finish within 20 s (full, " in err and "last console lines:\n" in err


def children(pid: int) -> list:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(name))
            except (OSError, IndexError, ValueError):
                pass
    return found


def group(pgid: int) -> list:
    return [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if _pgrp(pid) == pgid]


def _pgrp(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):
        return None


@boots_vm
@pytest.mark.parametrize("sig, status, message", [(signal.SIGTERM, 143, "stopped the VM on signal 15")])
def test_terminating_the_runner_stops_the_vm(sig, status, message):
    """What a CI system does to a cancelled job: the VM (vng, QEMU) must not outlive the runner."""
    runner = subprocess.Popen([sys.executable, "-m", "linuxdmabuf", "vm", "--", "sh", "-c", "echo up; sleep 600"],
                              cwd=TOP, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    vng = None
    try:
        assert runner.stdout.readline() == "up\n"  # the command runs in the guest
        [vng] = children(runner.pid)
        assert group(vng)  # vng, virtme-run, QEMU
        runner.send_signal(sig)
        assert runner.wait(timeout=30) == status
        assert message in runner.stderr.read()
        assert group(vng) == []
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
        if vng and group(vng):  # the runner failed to stop its VM: the test fails, but no VM outlives it
            os.killpg(vng, signal.SIGKILL)
