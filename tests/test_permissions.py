"""Permissions: what an unprivileged user sees without access, and that a group grant works."""
import os
import stat
import subprocess
import sys

import pytest

import linuxdmabuf

pytestmark = pytest.mark.kernel


@pytest.mark.unprivileged
@pytest.mark.parametrize("open_device, path", [(linuxdmabuf.Udmabuf, "/dev/udmabuf"),
                                               (lambda: linuxdmabuf.Heap("system"), "/dev/dma_heap/system")])
def test_denied_device_names_path_and_fix(open_device, path):
    if os.getuid() == 0:
        pytest.skip("runs as an unprivileged user (tools/run-tests runs it as nobody)")
    if not os.path.exists(path):
        pytest.skip(f"no {path} on kernel {os.uname().release}")
    if os.access(path, os.R_OK):
        pytest.skip(f"{path} is accessible to uid {os.getuid()} here")
    with pytest.raises(PermissionError) as info:
        open_device()
    assert path in str(info.value) and "udmabuf-setup.sh" in str(info.value)


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
