"""Permissions: what an unprivileged user sees without access, and that a group grant works."""
import errno
import os
import re
import stat
import subprocess
import sys

import pytest

import linuxdmabuf
from linuxdmabuf.pytest_plugin import need

pytestmark = pytest.mark.kernel


@pytest.mark.unprivileged
@pytest.mark.parametrize("open_device, path", [(linuxdmabuf.Udmabuf, "/dev/udmabuf"),
                                               (lambda: linuxdmabuf.Heap("system"), "/dev/dma_heap/system")])
def test_denied_device_names_path_and_fix(open_device, path):
    if os.getuid() == 0:
        pytest.skip("runs as an unprivileged user (tools/run-tests runs it as nobody)")
    if not os.path.exists(path):
        need("udmabuf" if path == "/dev/udmabuf" else "heap:system")  # fails where the kernel must have it
    if os.access(path, os.R_OK):
        if os.environ.get("LINUXDMABUF_IN_VM"):  # the kernel's own mode is root-only: that is a regression
            pytest.fail(f"{path} is open to uid {os.getuid()} inside the VM: the kernel's device mode changed")
        pytest.skip(f"{path} is accessible to uid {os.getuid()} here (granted by this machine's set-up)")
    with pytest.raises(PermissionError) as info:
        open_device()
    assert info.value.errno == errno.EACCES
    assert path in str(info.value) and "udmabuf-setup.sh" in str(info.value)


@pytest.mark.unprivileged
def test_denied_drm_nodes_name_the_groups_for_sync_objects():
    if os.getuid() == 0:
        pytest.skip("runs as an unprivileged user (tools/run-tests runs it as nobody)")
    nodes = [os.path.join("/dev/dri", n) for n in os.listdir("/dev/dri")] if os.path.isdir("/dev/dri") else []
    if not nodes or any(os.access(p, os.R_OK | os.W_OK) for p in nodes):
        need("syncobj:timeline")  # no node at all fails where the kernel must have one
        pytest.skip(f"uid {os.getuid()} may open a DRM node here (granted by this machine's set-up)")
    from linuxdmabuf.syncobj import Timeline

    with pytest.raises(PermissionError, match="could not open /dev/dri/.*group video .*render") as info:
        Timeline()
    assert info.value.errno == errno.EACCES


GROUP_PROBE = "import linuxdmabuf; linuxdmabuf.Udmabuf().allocate(4096).close(); print('ok')"


def test_group_grant_lets_unprivileged_user_allocate(tmp_path):
    """What udmabuf-setup.sh's udev rule does (group video, 0660), done by hand as root:
    nobody is refused, nobody in that group allocates."""
    if os.getuid() != 0:
        pytest.skip("needs root to change the device's group")
    if not os.path.exists("/dev/udmabuf"):
        pytest.skip(f"no /dev/udmabuf on kernel {os.uname().release}")
    import grp
    import pwd

    nobody = pwd.getpwnam("nobody")
    video = grp.getgrnam("video").gr_gid
    saved = os.stat("/dev/udmabuf")
    run = lambda groups: subprocess.run([sys.executable, "-c", GROUP_PROBE], user=nobody.pw_uid,
                                        group=nobody.pw_gid, extra_groups=groups, capture_output=True, text=True,
                                        cwd="/")
    try:
        os.chown("/dev/udmabuf", 0, video)
        os.chmod("/dev/udmabuf", 0o660)
        denied = run([])
        assert denied.returncode != 0 and "PermissionError" in denied.stderr
        granted = run([video])
        assert granted.returncode == 0 and granted.stdout.strip() == "ok", granted.stderr
        assert not os.stat("/dev/udmabuf").st_mode & stat.S_IWOTH
    finally:
        os.chown("/dev/udmabuf", saved.st_uid, saved.st_gid)
        os.chmod("/dev/udmabuf", stat.S_IMODE(saved.st_mode))


# -- what the project installs, and more of what an unprivileged user meets --------------------

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _world_writable_mode(mode: str) -> bool:
    """Whether a chmod/udev mode ("0660", "666", "o+w", "a=rw"...) lets others write."""
    if mode.isdigit():
        return bool(int(mode, 8) & 0o002)
    clauses = [re.fullmatch(r"([ugoa]*)([-+=])([rwxXst]*)", part) for part in mode.split(",")]
    assert all(clauses), f"not a mode: {mode}"
    return any(op in "+=" and "w" in perms and ("o" in who or "a" in who or not who)
               for who, op, perms in (c.groups() for c in clauses))


def test_the_world_write_check_itself():
    assert [_world_writable_mode(m) for m in ("0660", "0644", "666", "0777", "o+w", "a+rw", "+w", "g+w", "o-w")] == \
        [False, False, True, True, True, True, True, False, False]


def test_nothing_the_project_installs_makes_a_device_world_writable():
    """Every udev rule udmabuf-setup.sh writes names a group and keeps others out, and no
    chmod in it grants others write; `linuxdmabuf info` suggests the same rules."""
    from linuxdmabuf.cli.info import RULES, udev_rule

    with open(os.path.join(TOP, "udmabuf-setup.sh")) as f:
        script = f.read()
    with open(RULES) as f:  # the rules file the script installs
        installed = f.read()
    rules = [line for line in (script + installed).splitlines() if re.match(r'\s*(ACTION|KERNEL|SUBSYSTEM)=="', line)]
    rules += [udev_rule("udmabuf"), udev_rule("system")]
    assert len(rules) >= 5
    for rule in rules:
        mode = re.search(r'MODE="(\d+)"', rule)
        if mode or "GROUP=" in rule or "OWNER=" in rule:
            assert mode and not int(mode.group(1), 8) & 0o007, f"others get access: {rule}"
            assert 'GROUP="' in rule, f"no group: {rule}"
    chmods = [m.strip("\"'") for m in re.findall(r"\bchmod\s+(?:-\w+\s+)*(\S+)", script)]
    # (A mode held in a variable is a saved one put back by --uninstall.)
    literal = [m for m in chmods if not m.startswith("$")]
    assert literal and not [m for m in literal if _world_writable_mode(m)], chmods


def test_group_grant_gives_full_use_and_nothing_to_others():
    """After the rule's grant (group video, 0660) on the system heap and udmabuf, done by
    hand as root: nobody in video allocates, maps, brackets CPU access and exports a
    fence from each; nobody outside it is refused with a PermissionError naming the
    device and udmabuf-setup.sh."""
    if os.getuid() != 0:
        pytest.skip("needs root to change the devices' group")
    devices = {"/dev/dma_heap/system": "linuxdmabuf.Heap('system')", "/dev/udmabuf": "linuxdmabuf.Udmabuf()"}
    devices = {path: opener for path, opener in devices.items() if os.path.exists(path)}
    if not devices:
        pytest.skip(f"no dma-buf devices on kernel {os.uname().release}")
    import grp
    import pwd

    nobody = pwd.getpwnam("nobody")
    video = grp.getgrnam("video").gr_gid
    probe = "import linuxdmabuf\n" + "".join(
        f"try:\n    with {opener} as d, d.allocate(4096) as b:\n        b.write(b'granted')\n"
        f"        assert b.read(7) == b'granted' and b.export_sync_file().signaled\n    print('ok {path}')\n"
        f"except PermissionError as e:\n    print('refused', e)\n" for path, opener in devices.items())
    run = lambda groups: subprocess.run([sys.executable, "-c", probe], user=nobody.pw_uid, group=nobody.pw_gid,
                                        extra_groups=groups, capture_output=True, text=True, cwd="/")
    saved = {path: os.stat(path) for path in devices}
    try:
        for path in devices:
            os.chown(path, 0, video)
            os.chmod(path, 0o660)
        denied = run([]).stdout.splitlines()
        assert len(denied) == len(devices), denied
        for line, path in zip(denied, devices):
            assert line.startswith("refused") and path in line and "udmabuf-setup.sh" in line, line
        granted = run([video])
        assert granted.stdout.split("\n")[:-1] == [f"ok {path}" for path in devices], granted.stdout + granted.stderr
    finally:
        for path, st in saved.items():
            os.chown(path, st.st_uid, st.st_gid)
            os.chmod(path, stat.S_IMODE(st.st_mode))


@pytest.mark.unprivileged
def test_unprivileged_allocate_and_features_say_why(tmp_path):
    if os.getuid() == 0:
        pytest.skip("runs as an unprivileged user (tools/run-tests runs it as nobody)")
    devices = [p for p in ("/dev/dma_heap/system", "/dev/udmabuf") if os.path.exists(p)]
    if not devices or any(os.access(p, os.R_OK) for p in devices):
        if os.environ.get("LINUXDMABUF_IN_VM"):  # every kernel of the matrix has both, root-only
            pytest.fail(f"inside the VM, uid {os.getuid()} should find {devices or 'the devices'} present and "
                        "closed to it")
        pytest.skip(f"needs dma-buf devices this uid ({os.getuid()}) may not open")
    with pytest.raises(PermissionError) as info:
        linuxdmabuf.allocate(4096)
    assert all(p in str(info.value) for p in devices) and "udmabuf-setup.sh" in str(info.value)
    found = linuxdmabuf.features()
    assert not found["udmabuf"] and not found["dma_heap"]


@pytest.mark.unprivileged
def test_unprivileged_sw_sync_is_refused_with_the_reason():
    if os.getuid() == 0:
        pytest.skip("runs as an unprivileged user (tools/run-tests runs it as nobody)")
    from linuxdmabuf._mounts import debugfs_mount

    with pytest.raises(OSError) as info:
        linuxdmabuf.SwSyncTimeline()
    if debugfs_mount() is None:
        assert isinstance(info.value, linuxdmabuf.UnsupportedError) and "debugfs is not mounted" in str(info.value)
    else:  # debugfs is root-only: whether or not sw_sync is there, this user cannot look
        assert isinstance(info.value, PermissionError) and info.value.errno == errno.EACCES, info.value
        assert "debugfs" in str(info.value)


def test_another_user_cannot_take_our_buffers(dma_heap):
    """pidfd_getfd follows the ptrace rules: nobody may not take root's dma-buf fd, and is
    told why; /proc/<pid>/fd of root's process is closed to it too."""
    if os.getuid() != 0:
        pytest.skip("needs root to run a process as nobody")
    import pwd

    nobody = pwd.getpwnam("nobody")
    with dma_heap.allocate(4096) as buf:
        probe = (f"import os, linuxdmabuf\ntry:\n    linuxdmabuf.DmaBuf.from_pid({os.getpid()}, {buf.fileno()})\n"
                 "except PermissionError as e:\n    print('refused:', e)\n"
                 f"try:\n    os.open('/proc/{os.getpid()}/fd/{buf.fileno()}', os.O_RDWR)\n"
                 "except PermissionError:\n    print('proc refused')\n")
        done = subprocess.run([sys.executable, "-c", probe], user=nobody.pw_uid, group=nobody.pw_gid,
                              extra_groups=[], capture_output=True, text=True, cwd="/")
    assert "refused:" in done.stdout and "ptrace" in done.stdout, done.stdout + done.stderr
    assert "proc refused" in done.stdout


def test_a_buffer_handed_over_is_usable_without_device_access(dma_heap):
    """The fd is the capability: nobody, who may not open any device, uses a dma-buf
    root sends it over a UNIX socket."""
    if os.getuid() != 0:
        pytest.skip("needs root to run a process as nobody")
    import pwd
    import socket

    from linuxdmabuf import ipc

    nobody = pwd.getpwnam("nobody")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    probe = ("import socket, sys, linuxdmabuf\nfrom linuxdmabuf import ipc\n"
             "s = socket.socket(fileno=int(sys.argv[1]))\n_, (buf,) = ipc.recv(s)\n"
             "with buf:\n    print(buf.read(6).decode())\n    buf.write(b'thanks')\n")
    with ours, dma_heap.allocate(4096) as buf:
        buf.write(b"handed")
        with theirs:
            child = subprocess.Popen([sys.executable, "-c", probe, str(theirs.fileno())], pass_fds=[theirs.fileno()],
                                     user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd="/")
        ipc.send(ours, buf)
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0 and out.strip() == "handed", err
        assert buf.read(6) == b"thanks"
