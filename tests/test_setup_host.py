"""udmabuf-setup.sh's real-host path, run for real inside the VM: set-up, --check, --uninstall.

It changes /etc, /var/lib and the device nodes, so it only runs as root inside
linuxdmabuf's VM (whose /etc and /var are throwaway overlays), never on the
machine running the test suite.
"""
import grp
import os
import pwd
import stat
import subprocess
import sys

import pytest

from linuxdmabuf.cli import info

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(TOP, "udmabuf-setup.sh")
RULES = info.RULES_FILE
STATE = "/var/lib/linuxdmabuf/udmabuf-setup.state"
SIZE_LIMIT = "/sys/module/udmabuf/parameters/size_limit_mb"

pytestmark = pytest.mark.kernel


@pytest.fixture
def vm_root():
    if not os.environ.get("LINUXDMABUF_IN_VM") or os.geteuid() != 0:
        pytest.skip("changes system files: runs only as root inside linuxdmabuf's VM (tools/run-tests)")
    if not os.path.exists("/dev/udmabuf"):
        pytest.skip(f"no /dev/udmabuf on kernel {os.uname().release}")
    assert not os.path.exists(STATE), "a previous test left the set-up installed"
    yield
    if os.path.exists(STATE):  # the test failed half-way: do not leave it to the next one
        setup("--uninstall")


def _nodes():
    heaps = sorted(os.listdir("/dev/dma_heap")) if os.path.isdir("/dev/dma_heap") else []
    return ["/dev/udmabuf"] + [os.path.join("/dev/dma_heap", h) for h in heaps]


def _tree(top):
    """path -> file content (None for a directory) under `top`."""
    found = {}
    if not os.path.exists(top):
        return found
    for root, dirs, files in os.walk(top):
        found[root] = None
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                found[os.path.join(root, name)] = f.read()
    return found


def snapshot() -> dict:
    """Everything the script may touch."""
    state = {}
    for path in ("/etc/group", "/etc/gshadow", "/etc/passwd", SIZE_LIMIT):
        with open(path, "rb") as f:
            state[path] = f.read()
    for top in ("/etc/udev", "/etc/modprobe.d", "/var/lib/linuxdmabuf"):
        state[top] = _tree(top)
    for node in _nodes():
        st = os.stat(node)
        state[node] = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
    state["modules"] = sorted(os.listdir("/sys/module"))
    return state


def setup(*args, sudo_user=None, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SUDO_USER"}
    if sudo_user:
        env["SUDO_USER"] = sudo_user
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, env=env, timeout=300, **kwargs)


def _udevd_running() -> bool:
    try:
        return subprocess.run(["udevadm", "control", "--ping"], capture_output=True, timeout=30).returncode == 0
    except FileNotFoundError:
        return False


def _can_allocate(user, groups) -> subprocess.CompletedProcess:
    entry = pwd.getpwnam(user)
    code = ("import linuxdmabuf\nfor n in linuxdmabuf.Heap.available():\n"
            "    linuxdmabuf.Heap(n).allocate(4096).close()\nlinuxdmabuf.Udmabuf().allocate(4096).close()\nprint('ok')")
    return subprocess.run([sys.executable, "-c", code], user=entry.pw_uid, group=entry.pw_gid, extra_groups=groups,
                          capture_output=True, text=True, cwd="/", timeout=120)


def test_setup_check_uninstall_leaves_the_system_as_it_was(vm_root):
    before = snapshot()
    check = setup("--check", "--devices-only", "--group", "lxdtest", sudo_user="nobody")
    assert check.returncode == 1 and "[missing] udev rule" in check.stdout and "[missing] group lxdtest" in check.stdout

    run = setup("--devices-only", "--group", "lxdtest", "--size-limit-mb", "96", sudo_user="nobody")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "created group lxdtest" in run.stdout and "added nobody to group lxdtest" in run.stdout
    if _udevd_running():  # the rule itself, applied by udevd, did the work
        assert "udevd reloaded its rules" in run.stdout and "udevd did not apply" not in run.stdout
    else:
        assert "udevd is not running: applying the rule to the current nodes by hand" in run.stdout
    for node in _nodes():
        label = "udmabuf" if node == "/dev/udmabuf" else "dma-heap " + os.path.basename(node)
        assert f"[ok]      {label}: nobody allocated a dma-buf" in run.stdout
    gid = grp.getgrnam("lxdtest").gr_gid
    assert "nobody" in grp.getgrgid(gid).gr_mem
    for node in _nodes():
        st = os.stat(node)
        assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (gid, 0o660), node
    with open(RULES) as f:
        rules = f.read()
    assert info.udev_rule("udmabuf", "lxdtest") in rules and info.udev_rule("dma_heap", "lxdtest") in rules
    with open(SIZE_LIMIT) as f:
        assert f.read().strip() == "96"
    if os.path.exists("/sys/module/udmabuf/initstate"):
        with open("/etc/modprobe.d/linuxdmabuf-udmabuf.conf") as f:
            assert f.read() == "options udmabuf size_limit_mb=96\n"
    else:  # built in: the rule sets the parameter when udev adds the device at boot
        assert f"RUN+=\"/bin/sh -c 'echo 96 > {SIZE_LIMIT}'\"" in rules
    # Independently of the script: nobody with the group allocates, nobody without it is refused.
    assert _can_allocate("nobody", [gid]).stdout.strip() == "ok"
    assert "PermissionError" in _can_allocate("nobody", []).stderr

    check = setup("--check", "--devices-only", sudo_user="nobody")
    assert check.returncode == 0, check.stdout
    assert "[ok]      user nobody can allocate from every device" in check.stdout
    assert "udmabuf size_limit_mb=96" in check.stdout

    with open(STATE) as f:
        recorded = f.read()
    again = setup("--devices-only", "--group", "lxdtest", "--size-limit-mb", "96", sudo_user="nobody")
    assert again.returncode == 0, again.stdout + again.stderr
    with open(STATE) as f:
        assert f.read() == recorded  # idempotent: what the system had before is still what is recorded
    other = setup("--devices-only", "--group", "video")
    assert other.returncode == 1 and "already set up for group lxdtest" in other.stderr

    undo = setup("--uninstall")
    assert undo.returncode == 0, undo.stdout + undo.stderr
    assert "deleted group lxdtest" in undo.stdout and "removed nobody from group lxdtest" in undo.stdout
    assert snapshot() == before
    assert setup("--uninstall").stdout.startswith("uninstall: nothing to undo")


def test_existing_group_and_rules_file_are_kept(vm_root):
    """An existing group is used, not deleted; a rules file of the same name is put back as it was."""
    before = snapshot()
    os.makedirs(os.path.dirname(RULES), exist_ok=True)
    with open(RULES, "w") as f:
        f.write("# an older rule\n")
    try:
        with_file = snapshot()
        run = setup("--devices-only")  # group video, no SUDO_USER: no user added, no verification
        assert run.returncode == 0, run.stdout + run.stderr
        assert "created group" not in run.stdout and "added" not in run.stdout
        assert "run this with sudo from your own account" in run.stdout
        video = grp.getgrnam("video").gr_gid
        assert all(os.stat(n).st_gid == video for n in _nodes())
        undo = setup("--uninstall")
        assert undo.returncode == 0, undo.stdout + undo.stderr
        assert f"restored the previous {RULES}" in undo.stdout and "deleted group" not in undo.stdout
        assert snapshot() == with_file
    finally:
        os.unlink(RULES)
        for d in (os.path.dirname(RULES), os.path.dirname(os.path.dirname(RULES))):
            if d not in before["/etc/udev"] and os.path.isdir(d) and not os.listdir(d):
                os.rmdir(d)
    assert snapshot() == before


def test_bad_options_and_non_root(vm_root):
    for args, message in ((["--group", "Bad Name"], "--group must name a group"), (["--group", "root"], "--group"),
                          (["--size-limit-mb", "0"], "--size-limit-mb takes"),
                          (["--size-limit-mb", "12abc"], "--size-limit-mb takes"), (["--frobnicate"], "unknown option")):
        run = setup("--devices-only", *args)
        assert run.returncode == 2 and message in run.stderr, (args, run.stderr)
    nobody = pwd.getpwnam("nobody")
    run = setup("--devices-only", user=nobody.pw_uid, group=nobody.pw_gid, cwd="/")
    assert run.returncode == 1 and "run as root" in run.stderr
    assert not os.path.exists(STATE)
