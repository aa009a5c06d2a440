"""`linuxdmabuf info`: as root, as an unprivileged user, and the fixes it names."""
import grp
import json
import os
import pwd
import re
import stat
import subprocess
import sys

import pytest

import linuxdmabuf
from linuxdmabuf.cli import info
from linuxdmabuf.pytest_plugin import expected_features, has, need

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _info(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "linuxdmabuf", "info", *args], capture_output=True, text=True,
                          timeout=120, cwd="/", **kwargs)


# -- host side ---------------------------------------------------------------------------------------

def test_udev_rules_are_the_ones_the_setup_script_writes():
    """One rules file, shipped in the package: the set-up script installs it, info quotes it."""
    with open(os.path.join(TOP, "udmabuf-setup.sh")) as f:
        script = f.read()
    assert '"$top/linuxdmabuf/data/70-linuxdmabuf.rules"' in script and info.RULES_FILE in script
    with open(info.RULES) as f:
        rules = f.read()
    assert info.udev_rule("udmabuf", "@GROUP@") in rules and info.udev_rule("system", "@GROUP@") in rules
    assert info.udev_rule("udmabuf", "render") == 'KERNEL=="udmabuf", SUBSYSTEM=="misc", GROUP="render", MODE="0660"'


def test_parse_kernel_config():
    text = "# comment\nCONFIG_UDMABUF=y\nCONFIG_DMABUF_HEAPS_SYSTEM=m\n# CONFIG_SW_SYNC is not set\nCONFIG_CMDLINE=\"a=b\"\n"
    assert info.parse_kernel_config(text) == {"CONFIG_UDMABUF": "y", "CONFIG_DMABUF_HEAPS_SYSTEM": "m",
                                              "CONFIG_SW_SYNC": "n", "CONFIG_CMDLINE": '"a=b"'}


def test_access_fix_by_group_and_mode(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to give the test file a group")
    video = grp.getgrnam("video").gr_gid
    node = tmp_path / "node"
    node.write_text("")
    os.chmod(node, 0o600)
    fix = info.access_fix(str(node))
    assert "udmabuf-setup.sh" in fix and info.RULES_FILE in fix
    assert info.udev_rule("udmabuf") in fix and info.udev_rule("dma_heap") in fix
    os.chown(node, 0, video)
    os.chmod(node, 0o660)
    user = pwd.getpwuid(os.geteuid()).pw_name
    if video not in os.getgroups():
        assert info.access_fix(str(node)) == f"join group video, which may open it: sudo usermod -aG video {user}, " \
                                             "then log in again"


def test_info_on_a_kernel_without_providers_names_kernel_options():
    if linuxdmabuf.Heap.available() or os.path.exists("/dev/udmabuf"):
        pytest.skip("this kernel has dma-buf providers")
    run = _info("--json")
    assert run.returncode == 1, run.stderr
    doc = json.loads(run.stdout)
    assert doc["can_allocate"] is False and doc["providers"] == []
    blocking = [f["fix"] for f in doc["fixes"] if f["blocks_allocation"]]
    assert any("CONFIG_DMABUF_HEAPS" in f for f in blocking) and any("udmabuf" in f.lower() for f in blocking)
    run = _info()
    assert run.returncode == 1 and "can be allocated here by this user: NO" in run.stdout
    # the last fix is the VM runner, which has every device whatever this kernel lacks
    assert run.stdout.rstrip().splitlines()[-2:] == [
        "  - or run the code in a VM whose kernel has every device: linuxdmabuf vm -- CMD",
        "      (QEMU; the kernel is built once by `linuxdmabuf vm --fetch`, or set $LINUXDMABUF_FULL_KERNEL)"]


# -- in the VM, as root ------------------------------------------------------------------------------

@pytest.mark.kernel
def test_info_as_root_reports_every_provider(capsys):
    if os.geteuid() != 0:
        pytest.skip("runs as root")
    if not has("heap:system"):
        need("udmabuf")
    heaps = linuxdmabuf.Heap.available()
    assert info.main(["--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kernel"] == os.uname().release and doc["can_allocate"]
    assert [h["name"] for h in doc["dma_heap"]["heaps"]] == heaps
    # The oracle for each heap's kind is what the kernel spec declares (vm.kernels.EXPECTED), not Heap.kind.
    cma = {f.partition(":")[2] for f in expected_features() if f.startswith("cma_heap:")}
    for heap in doc["dma_heap"]["heaps"]:
        st = os.stat(heap["path"])
        assert heap["mode"] == f"{stat.S_IMODE(st.st_mode):04o}"
        assert heap["group"] == grp.getgrgid(st.st_gid).gr_name
        assert heap["can_open"] and heap["can_allocate"]
        if expected_features():  # a kernel of the matrix: its CMA heaps are declared, the others are system
            assert heap["kind"] == ("cma" if heap["name"] in cma else "system"), heap
    u = doc["udmabuf"]
    assert u["present"] == os.path.exists("/dev/udmabuf")
    assert u["limits"] == linuxdmabuf.Udmabuf.limits()
    if u["present"]:
        assert u["can_allocate"] and "udmabuf" in doc["providers"]
        assert u["module"] in ("built in", "module, loaded")
    assert doc["features"] == linuxdmabuf.features()
    assert doc["sw_sync"]["can_open"] == doc["features"]["sw_sync"]
    assert not any(f["blocks_allocation"] for f in doc["fixes"])
    if u["present"] and u["others"] == "root only":
        [note] = [f for f in doc["fixes"] if "/dev/udmabuf" in f["paths"]]
        assert note["problem"].startswith("only root may open") and info.udev_rule("udmabuf") in note["fix"]
    text = _info()
    assert text.returncode == 0
    assert "dma-bufs can be allocated here by this user: yes" in text.stdout
    for heap in heaps:
        assert re.search(rf"^  {re.escape(heap)} +c", text.stdout, re.M)


def test_info_lists_drm_devices_with_prime_and_syncobj_caps(capsys):
    """The oracle: each driver's capabilities as the kernel spec declares them (virtio_gpu has timelines,
    vgem and vkms none), and the drivers the probe finds."""
    if os.geteuid() != 0:
        pytest.skip("runs as root")
    need("drm:vgem")
    assert info.main(["--json"]) == 0
    nodes = json.loads(capsys.readouterr().out)["drm"]
    assert {n["path"] for n in nodes} == {os.path.join("/dev/dri", n) for n in os.listdir("/dev/dri")
                                          if n.startswith(("card", "renderD"))}
    by_driver = {n["driver"]: n for n in nodes}
    assert by_driver["vgem"]["prime_import"] and by_driver["vgem"]["prime_export"]
    assert not by_driver["vgem"]["syncobj"] and not by_driver["vgem"]["syncobj_timeline"]
    if has("syncobj:timeline"):
        assert by_driver["virtio_gpu"]["syncobj"] and by_driver["virtio_gpu"]["syncobj_timeline"]
    if has("drm:vkms"):
        assert not by_driver["vkms"]["syncobj"]
    text = _info().stdout
    assert re.search(r"^  /dev/dri/card\d+  vgem +PRIME import: yes export: yes  syncobj: no timeline: no$", text, re.M)


@pytest.mark.kernel
def test_info_sees_a_group_grant_and_a_stale_login_session():
    """udmabuf-setup.sh's effect done by hand: /dev/udmabuf root:video 0660. nobody outside the group is told
    to join it; nobody listed in /etc/group but whose process lacks the group is told to log in again; nobody
    with the group can allocate."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    need("udmabuf")
    video = grp.getgrnam("video").gr_gid
    nobody = pwd.getpwnam("nobody")
    saved = os.stat("/dev/udmabuf")
    saved_files = {}
    for path in ("/etc/group", "/etc/gshadow"):
        if os.path.exists(path):
            with open(path) as f:
                saved_files[path] = f.read()
    as_nobody = dict(user=nobody.pw_uid, group=nobody.pw_gid, env={**os.environ, "HOME": "/tmp"})
    try:
        os.chown("/dev/udmabuf", 0, video)
        os.chmod("/dev/udmabuf", 0o660)
        run = _info("--json", extra_groups=[], **as_nobody)
        doc = json.loads(run.stdout)
        assert doc["udmabuf"]["others"] == "group video" and not doc["udmabuf"]["can_open"]
        [fix] = [f for f in doc["fixes"] if "/dev/udmabuf" in f["paths"]]
        assert fix["problem"] == "this user may not open /dev/udmabuf (Permission denied)"
        assert fix["fix"] == ("join group video, which may open it: sudo usermod -aG video nobody, then log in again")
        assert fix["blocks_allocation"]
        subprocess.run(["gpasswd", "-a", "nobody", "video"], check=True, capture_output=True)
        doc = json.loads(_info("--json", extra_groups=[], **as_nobody).stdout)
        [fix] = [f for f in doc["fixes"] if "/dev/udmabuf" in f["paths"]]
        assert "log out and in again (or run `newgrp video`)" in fix["fix"]
        run = _info("--json", extra_groups=[video], **as_nobody)
        assert run.returncode == 0, run.stdout + run.stderr
        doc = json.loads(run.stdout)
        assert doc["udmabuf"]["can_allocate"] and "udmabuf" in doc["providers"]
    finally:
        for path, text in saved_files.items():
            with open(path, "w") as f:
                f.write(text)
        os.chown("/dev/udmabuf", saved.st_uid, saved.st_gid)
        os.chmod("/dev/udmabuf", stat.S_IMODE(saved.st_mode))


# -- in the VM, as nobody ------------------------------------------------------------------------------

@pytest.mark.unprivileged
def test_info_unprivileged_says_denied_with_the_rule_that_fixes_it():
    if os.geteuid() == 0:
        pytest.skip("runs as an unprivileged user (tools/run-tests runs it as nobody)")
    nodes = [os.path.join("/dev/dma_heap", h) for h in linuxdmabuf.Heap.available()]
    nodes += ["/dev/udmabuf"] if os.path.exists("/dev/udmabuf") else []
    denied = [n for n in nodes if not os.access(n, os.R_OK)]
    if not denied:
        if os.environ.get("LINUXDMABUF_IN_VM"):  # the kernel's own modes are root-only
            pytest.fail(f"uid {os.getuid()} may open every provider inside the VM: {nodes}")
        pytest.skip(f"this user may open every provider on kernel {os.uname().release}")
    run = _info("--json")
    doc = json.loads(run.stdout)
    assert run.returncode == (0 if doc["providers"] else 1)
    for node in denied:
        [fix] = [f for f in doc["fixes"] if node in f["paths"]]
        assert fix["problem"].startswith("this user may not open") and fix["blocks_allocation"]
        st = os.stat(node)
        if st.st_gid != 0 and st.st_mode & stat.S_IRGRP:
            assert f"join group {grp.getgrgid(st.st_gid).gr_name}" in fix["fix"]
        else:
            rule = info.udev_rule("udmabuf" if node == "/dev/udmabuf" else "dma_heap")
            assert rule in fix["fix"] and "udmabuf-setup.sh" in fix["fix"]
    for heap in doc["dma_heap"]["heaps"]:
        if heap["path"] in denied:
            assert heap["can_open"] is False and heap["kind"] is None
    text = _info()
    assert text.returncode == run.returncode
    assert "To fix:" in text.stdout and "this user may not open" in text.stdout
    if not doc["providers"]:
        assert "dma-bufs can be allocated here by this user: NO" in text.stdout
