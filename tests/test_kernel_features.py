"""Each kernel of the matrix has every feature its spec declares (vm.kernels.EXPECTED).

A lost feature fails here by name, on top of failing each test that needs it;
the probes themselves (linuxdmabuf.probe) are checked against the filesystem.
"""
import os

import pytest

from linuxdmabuf import probe
from linuxdmabuf.pytest_plugin import expected_features, is_expected, need
from linuxdmabuf.vm.kernels import EXPECTED, MODULES, SPECS, expected_key
from linuxdmabuf.vm.userland import ARCHES


def pytest_generate_tests(metafunc):
    if "feature" in metafunc.fixturenames:
        metafunc.parametrize("feature", expected_features() or [pytest.param(None, marks=pytest.mark.skip(
            reason=f"no features declared for this kernel ({os.uname().release}): outside the VM runner's "
                   "matrix, set LINUXDMABUF_EXPECT"))])


@pytest.mark.kernel
def test_expected_feature(feature):
    need(feature)  # fails, naming it, where it is missing


def test_every_spec_declares_known_features():
    assert set(SPECS) <= set(EXPECTED)
    for key in EXPECTED:  # "spec" (x86_64) or "spec/arch"
        spec, _, arch = key.partition("/")
        assert spec in SPECS and (not arch or arch in ARCHES and arch != "x86_64"), key
        assert expected_key(spec, arch or "x86_64") == key
    for spec, features in EXPECTED.items():
        assert len(set(features)) == len(features), spec
        for feature in features:
            assert probe.describe(feature)
    assert {"udmabuf", "drm:vgem", "v4l2:vivid"} <= set.intersection(*map(set, EXPECTED.values()))
    assert set(MODULES) >= {"udmabuf", "vgem", "vivid"}


def test_feature_names_are_checked():
    for bad, message in [("nosuch", "unknown feature"), ("heap", "needs a name"), ("drm", "needs a name"),
                         ("udmabuf:x", "takes no"), ("sw_sync:x", "takes no")]:
        with pytest.raises(ValueError, match=message):
            probe.missing(bad)


def test_expectations_come_from_the_environment(monkeypatch):
    monkeypatch.delenv("LINUXDMABUF_IN_VM", raising=False)
    monkeypatch.delenv("LINUXDMABUF_EXPECT", raising=False)
    assert expected_features() == ()
    monkeypatch.setenv("LINUXDMABUF_IN_VM", "1")
    monkeypatch.setenv("LINUXDMABUF_VM_KERNEL", "full")
    assert expected_features() == EXPECTED["full"]
    assert is_expected("cma_heap") and is_expected("dma_heap") and is_expected("heap:reserved")
    monkeypatch.setenv("LINUXDMABUF_VM_KERNEL", "debian-6.12")
    assert not is_expected("cma_heap") and not is_expected("sw_sync") and is_expected("dma_heap")
    monkeypatch.setenv("LINUXDMABUF_VM_KERNEL", "debian-7.2")
    monkeypatch.setenv("LINUXDMABUF_VM_ARCH", "arm64")
    assert not is_expected("dma_heap") and is_expected("udmabuf")  # Debian's arm64 kernels have no heaps
    monkeypatch.setenv("LINUXDMABUF_VM_KERNEL", "full")
    assert expected_features() == EXPECTED["full/arm64"] and "trace:dma_buf" not in expected_features()
    monkeypatch.delenv("LINUXDMABUF_VM_ARCH")
    monkeypatch.setenv("LINUXDMABUF_VM_KERNEL", "/some/bzImage")
    assert expected_features() == ()
    monkeypatch.setenv("LINUXDMABUF_EXPECT", "udmabuf, drm:vgem")
    assert expected_features() == ("udmabuf", "drm:vgem")


def test_probes_agree_with_the_filesystem():
    """Whatever this kernel has: a device node that does not exist is never reported present."""
    if probe.missing("udmabuf") is None:
        assert os.path.exists("/dev/udmabuf")
    elif not os.path.exists("/dev/udmabuf"):
        assert "CONFIG_UDMABUF" in probe.missing("udmabuf").reason
    if not os.path.isdir("/dev/dma_heap"):
        assert probe.missing("dma_heap") and probe.missing("heap:system") and probe.missing("cma_heap")
    if not os.path.isdir("/dev/dri"):
        assert "CONFIG_DRM_VGEM" in probe.missing("drm:vgem").reason
    if not os.path.isdir("/sys/class/video4linux"):
        assert "CONFIG_VIDEO_VIVID" in probe.missing("v4l2:vivid").reason
