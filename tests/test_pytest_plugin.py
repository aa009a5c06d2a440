"""The pytest plugin (linuxdmabuf/pytest_plugin.py), run the way users run it: on generated test files.

- Fixtures and markers: each generated test passes or skips with the precise
  reason, checked against what this machine really offers (device nodes,
  their modes, debugfs), on the host, in the VM as root and as nobody
  (tools/run-tests runs this file on every kernel of the matrix).
- dmabuf_leak_check fails a test that leaks, and only such a test.
- --linuxdmabuf-vm: argument handling with the VM runner stubbed out, then two
  real sessions in a VM (marked slow).
Generated test modules are named test_plugin_gen_*: inline runs share
sys.modules with this session, so their names must not be those of real tests.
"""
import os
import shutil
import subprocess
import sys

import pytest

from linuxdmabuf import vm
from linuxdmabuf.vm import kernels

pytest_plugins = ["pytester"]

VM_LIMIT = 400  # seconds for a whole pytest session in a VM, boot included

FIXTURES_AND_MARKERS = '''
import pytest


def test_udmabuf_fixture(udmabuf):
    with udmabuf.allocate(4096) as buf:
        assert buf.exporter == "udmabuf"


def test_dma_heap_fixture(dma_heap):
    with dma_heap.allocate(4096) as buf:
        assert buf.exporter == "system"


def test_dma_heap_cma_fixture(dma_heap_cma):
    with dma_heap_cma.allocate(4096) as buf:
        assert buf.size == 4096


def test_sw_sync_timeline_fixture(sw_sync_timeline):
    with sw_sync_timeline.create_fence(1) as fence:
        assert not fence.signaled
        sw_sync_timeline.advance()
        assert fence.signaled


@pytest.mark.requires_udmabuf
def test_requires_udmabuf():
    pass


@pytest.mark.requires_dma_heap
def test_requires_any_dma_heap():
    pass


@pytest.mark.requires_dma_heap(name="system")
def test_requires_system_heap():
    pass


@pytest.mark.requires_dma_heap("no-such-heap")
def test_requires_missing_heap():
    pass


@pytest.mark.requires_sw_sync
def test_requires_sw_sync():
    pass
'''


# -- what this machine offers, found independently of the plugin and the library -------------


def debugfs():
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[2] == "debugfs":
                return fields[1]
    return None


def expect_device(path, missing):
    """("passed",) or ("skipped", [phrases the reason must contain]) for a device node."""
    if not os.path.exists(path):
        return "skipped", [missing]
    if not os.access(path, os.R_OK):
        return "skipped", [f"open {path}: Permission denied", "udmabuf-setup.sh"]
    return ("passed",)


def expected_outcomes():
    heaps = sorted(os.listdir("/dev/dma_heap")) if os.path.isdir("/dev/dma_heap") else []
    udmabuf = expect_device("/dev/udmabuf", "this kernel has no udmabuf (CONFIG_UDMABUF")
    system = expect_device("/dev/dma_heap/system", "no dma-heap /dev/dma_heap/system" if heaps else
                           "this kernel has no dma-heaps (CONFIG_DMABUF_HEAPS")
    # The kernels here have a system heap and CMA heaps only: any other heap is a CMA one.
    cma = [h for h in heaps if h != "system"]
    if not cma:
        cma_outcome = "skipped", ["no CMA heap", "CONFIG_DMABUF_HEAPS_CMA"]
    elif not any(os.access(f"/dev/dma_heap/{h}", os.R_OK) for h in cma):
        cma_outcome = "skipped", ["no CMA heap this user may open", "Permission denied"]
    else:
        cma_outcome = ("passed",)
    mount = debugfs()
    if mount is None:
        sw_sync = "skipped", ["debugfs is not mounted", "mount -t debugfs"]
    elif not os.access(mount, os.X_OK):
        sw_sync = "skipped", ["Permission denied", "debugfs is readable by root only"]
    elif not os.path.exists(os.path.join(mount, "sync", "sw_sync")):
        sw_sync = "skipped", ["this kernel has no sw_sync (CONFIG_SW_SYNC)"]
    else:
        sw_sync = ("passed",)
    if not heaps:
        any_heap = "skipped", ["dma_heap: /dev/dma_heap is empty or missing"]
    elif any(os.access(f"/dev/dma_heap/{h}", os.R_OK) for h in heaps):
        any_heap = ("passed",)
    else:
        any_heap = "skipped", ["Permission denied", "udmabuf-setup.sh"]
    missing_heap = "skipped", (["no dma-heap /dev/dma_heap/no-such-heap", f"the heaps here are: {', '.join(heaps)}"]
                               if heaps else ["/dev/dma_heap/no-such-heap", "this kernel has no dma-heaps"])
    return {
        "test_udmabuf_fixture": udmabuf, "test_requires_udmabuf": udmabuf,
        "test_dma_heap_fixture": system, "test_requires_system_heap": system,
        "test_dma_heap_cma_fixture": cma_outcome,
        "test_sw_sync_timeline_fixture": sw_sync, "test_requires_sw_sync": sw_sync,
        "test_requires_any_dma_heap": any_heap, "test_requires_missing_heap": missing_heap,
    }


def outcomes(reprec) -> dict:
    """test name -> (outcome, skip reason or failure text) from an inline run."""
    found = {}
    for report in reprec.getreports("pytest_runtest_logreport"):
        name = report.nodeid.split("::")[-1]
        if report.when == "call" or report.outcome != "passed":
            text = report.longrepr[2] if report.skipped else str(report.longrepr or "")
            found[name] = (report.outcome, text)
    return found


@pytest.mark.parametrize("where", [
    pytest.param("host"),
    pytest.param("vm", marks=pytest.mark.kernel),
    pytest.param("vm-unprivileged", marks=pytest.mark.unprivileged),
])
def test_fixtures_and_markers_pass_or_skip_with_the_precise_reason(pytester, monkeypatch, where):
    """The same generated tests wherever this runs; what each must do comes from expected_outcomes()."""
    if where != "host" and not os.environ.get("LINUXDMABUF_IN_VM"):
        pytest.skip("runs in the VM, on each kernel of the matrix (tools/run-tests)")
    monkeypatch.delenv("LINUXDMABUF_IN_VM", raising=False)
    pytester.makepyfile(test_plugin_gen_all=FIXTURES_AND_MARKERS)
    got = outcomes(pytester.inline_run("-p", "no:cacheprovider"))
    expected = expected_outcomes()
    assert set(got) == set(expected)
    release = os.uname().release
    for name, expect in expected.items():
        outcome, text = got[name]
        assert outcome == expect[0], f"{name}: {outcome} ({text}), expected {expect}"
        for phrase in expect[1] if outcome == "skipped" else ():
            assert phrase in text, f"{name}: {phrase!r} not in the skip reason {text!r}"
        if outcome == "skipped":
            assert f"(kernel {release}, uid {os.getuid()})" in text


def test_skip_reasons_point_at_the_test(pytester):
    """A requires_* skip is reported at the test's line, like skipif, not inside the plugin."""
    pytester.makepyfile(test_plugin_gen_where='''
import pytest

@pytest.mark.requires_dma_heap("no-such-heap")
def test_x():
    pass
''')
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        ["SKIPPED [[]1[]] test_plugin_gen_where.py:[0-9]: heap:no-such-heap: */dev/dma_heap/no-such-heap*"])


def test_plugin_is_inert_unless_used(pytester, monkeypatch):
    monkeypatch.delenv("LINUXDMABUF_IN_VM", raising=False)
    pytester.makepyfile(test_plugin_gen_plain="def test_plain():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--strict-markers")
    result.assert_outcomes(passed=1)
    assert "linuxdmabuf-vm" not in result.stdout.str()
    markers = pytester.runpytest("--markers").stdout.str()
    for name in ("requires_udmabuf:", "requires_dma_heap(name=None):", "requires_sw_sync:"):
        assert name in markers


LEAKS = '''
import warnings

import pytest

kept = []


@pytest.fixture
def earlier_buffer(dma_heap):
    with dma_heap.allocate(4096) as buf:
        yield buf


def test_clean(dma_heap, dmabuf_leak_check):
    with dma_heap.allocate(4096) as buf, buf.export_sync_file() as fence:
        assert fence.signaled


def test_leaks_a_dma_buf(dma_heap, dmabuf_leak_check):
    kept.append(dma_heap.allocate(4096))


def test_leaks_a_sync_file(dma_heap, dmabuf_leak_check):
    with dma_heap.allocate(4096) as buf:
        kept.append(buf.export_sync_file())


def test_leaves_closing_to_the_garbage_collector(dma_heap, dmabuf_leak_check):
    dma_heap.allocate(4096)


def test_buffer_of_a_fixture_set_up_earlier_is_no_leak(earlier_buffer, dmabuf_leak_check):
    assert earlier_buffer.size == 4096


def test_other_warnings_still_reach_pytest(dmabuf_leak_check):
    warnings.warn("a warning of the test itself", UserWarning)


def test_leaves_a_gem_handle_and_a_drm_file_to_the_garbage_collector(dma_heap, vgem, dmabuf_leak_check):
    from linuxdmabuf.drm import Vgem

    with dma_heap.allocate(4096) as buf:
        vgem.prime_import(buf)  # a GemObject nobody closes
    Vgem()  # a DrmDevice nobody closes


def test_zz_close_what_was_kept():
    for obj in kept:
        obj.close()
'''


@pytest.mark.requires_dma_heap(name="system")
@pytest.mark.requires("drm:vgem")
def test_dmabuf_leak_check_fails_exactly_the_leaking_tests(pytester):
    written = pytester.makepyfile(test_plugin_gen_leaks=LEAKS)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=8, errors=4)
    out = result.stdout.str()
    # each leak names its line in the file as written (pytester strips the leading blank line)
    lines = {text.strip(): i + 1 for i, text in enumerate(written.read_text().splitlines())}
    made = {what: lines[code] for what, code in (
        ("dmabuf", "kept.append(dma_heap.allocate(4096))"), ("syncfile", "kept.append(buf.export_sync_file())"),
        ("gc", "dma_heap.allocate(4096)"), ("gem", "vgem.prime_import(buf)  # a GemObject nobody closes"),
        ("vgem", "Vgem()  # a DrmDevice nobody closes"))}
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_leaks_a_dma_buf*",
        f"dma-buf/sync_file leak: fd *: dma-buf inode *, exporter system, 4096 bytes, "
        f"made at test_plugin_gen_leaks.py:{made['dmabuf']}, left open",
        "*ERROR at teardown of test_leaks_a_sync_file*",
        f"dma-buf/sync_file leak: fd * (anon_inode:sync_file), made at test_plugin_gen_leaks.py:{made['syncfile']}, "
        "left open",
        "*ERROR at teardown of test_leaves_closing_to_the_garbage_collector*",
        f"dma-buf/sync_file leak: unclosed DmaBuf fd=* closed only by the garbage collector "
        f"(made at test_plugin_gen_leaks.py:{made['gc']})",
        "*ERROR at teardown of test_leaves_a_gem_handle_and_a_drm_file_to_the_garbage_collector*",
        f"dma-buf/sync_file leak: unclosed GEM handle * on /dev/dri/card* closed only by the garbage collector "
        f"(made at test_plugin_gen_leaks.py:{made['gem']}); unclosed Vgem fd=* closed only by the garbage collector "
        f"(made at test_plugin_gen_leaks.py:{made['vgem']})",
    ])
    assert "a warning of the test itself" in out
    for name in ("test_clean", "test_buffer_of_a_fixture", "test_other_warnings"):
        assert f"teardown of {name}" not in out


# -- --linuxdmabuf-vm: the arguments the VM gets, with the runner stubbed out ----------------------


@pytest.fixture
def stub_vm(monkeypatch):
    """Replaces vm.run: records its calls and returns 7; the outer session must not collect."""
    calls = []

    def run(cmd, **kwargs):
        calls.append((cmd, kwargs))
        return 7

    monkeypatch.delenv("LINUXDMABUF_IN_VM", raising=False)
    monkeypatch.setattr(vm, "run", run)
    return calls


@pytest.fixture
def project(pytester):
    pytester.mkdir("sub")
    pytester.makepyfile(**{"sub/test_plugin_gen_one": "def test_one():\n    pass\n"})
    return pytester


def test_bare_option_does_not_eat_the_test_path(project, stub_vm):
    result = project.runpytest_inprocess("--linuxdmabuf-vm", "sub", "-q")
    assert result.ret == 7
    [(cmd, kwargs)] = stub_vm
    assert kwargs["kernel"] == "full"
    assert cmd[-2:] == ["sub", "-q"] and not any(a.startswith("--linuxdmabuf-vm") for a in cmd)
    assert cmd[0] == sys.executable
    assert kwargs["cwd"] == str(project.path)
    assert kwargs["rwdirs"] and all(d.startswith(str(project.path)) for d in kwargs["rwdirs"])
    assert "collected" not in result.stdout.str() and "test_one" not in result.stdout.str()


def test_spec_after_equals_sign_and_vm_options(project, stub_vm):
    result = project.runpytest_inprocess("-k", "one", "--linuxdmabuf-vm=debian-7.2", "--linuxdmabuf-vm-memory",
                                         "1G", "--linuxdmabuf-vm-cpus=1", "sub")
    assert result.ret == 7
    [(cmd, kwargs)] = stub_vm
    assert (kwargs["kernel"], kwargs["memory"], kwargs["cpus"]) == ("debian-7.2", "1G", 1)
    assert cmd[-3:] == ["-k", "one", "sub"]


def test_guest_architecture_reaches_the_runner_with_the_guests_python(project, stub_vm):
    from linuxdmabuf.pytest_plugin import GUEST_ARCHES

    assert GUEST_ARCHES == list(vm.ARCHES)
    result = project.runpytest_inprocess("--linuxdmabuf-vm", "--linuxdmabuf-vm-arch", "armhf", "sub", "-q")
    assert result.ret == 7
    [(cmd, kwargs)] = stub_vm
    assert kwargs["arch"] == "armhf" and cmd == ["python3", "-m", "pytest", "sub", "-q"]


def test_kernel_command_line_reaches_the_runner(project, stub_vm):
    result = project.runpytest_inprocess("--linuxdmabuf-vm", "--linuxdmabuf-vm-append", "cma=0",
                                         "--linuxdmabuf-vm-append=vkms.enable_overlay=1", "sub")
    assert result.ret == 7
    [(cmd, kwargs)] = stub_vm
    assert kwargs["append"] == ["cma=0", "vkms.enable_overlay=1"] and not any("append" in arg for arg in cmd)


def test_option_typo_fails_before_any_vm(project, stub_vm):
    result = project.runpytest_inprocess("--linuxdmabuf-vm", "--maxfial=1", "sub")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "unrecognized arguments: --maxfial=1" in result.stderr.str()
    assert stub_vm == []


@pytest.mark.parametrize("quiet", [[], ["-q"], ["--no-header"]])
def test_option_is_inert_inside_the_vm_whose_kernel_the_report_names(project, monkeypatch, quiet):
    monkeypatch.setenv("LINUXDMABUF_IN_VM", "1")
    monkeypatch.setenv("LINUXDMABUF_VM_KERNEL", "full")
    monkeypatch.setattr(vm, "run", lambda *a, **k: pytest.fail("booted a VM inside the VM"))
    result = project.runpytest_inprocess("--linuxdmabuf-vm", "sub", *quiet)
    result.assert_outcomes(passed=1)
    line = f"linuxdmabuf-vm: guest kernel {os.uname().release} (full); devices: "
    assert result.stdout.str().count(line) == 1


def test_help_is_shown_here_not_in_a_vm(project, stub_vm):
    result = project.runpytest_inprocess("--linuxdmabuf-vm", "--help")
    assert result.ret == 0 and stub_vm == []
    assert "real kernel buffers (linuxdmabuf)" in result.stdout.str() and "--linuxdmabuf-vm-memory" in result.stdout.str()


def test_unknown_spec_is_reported_without_booting(project, monkeypatch):
    monkeypatch.delenv("LINUXDMABUF_IN_VM", raising=False)
    if not shutil.which("qemu-system-x86_64"):
        pytest.skip("no QEMU here: the runner reports that first")
    result = project.runpytest_inprocess("--linuxdmabuf-vm=fulll", "sub")
    assert result.ret == vm.EXIT_RUNNER
    assert "linuxdmabuf vm: unknown kernel spec 'fulll' (did you mean full?)" in result.stderr.str()
    assert "collected" not in result.stdout.str()


# -- real sessions in a VM ----------------------------------------------------------------------------


def can_boot(spec):
    missing = [p for p in ("qemu-system-x86_64", "busybox") if not shutil.which(p)]
    if not shutil.which("vng") and not shutil.which("vng", path=os.path.dirname(sys.executable)):
        missing.append("vng")
    try:
        kernels.resolve(spec, fetch=False)
    except kernels.KernelError as e:
        missing.append(str(e))
    return missing


def boots_vm(spec):
    def mark(test):
        test = pytest.mark.skipif(bool(can_boot(spec)), reason=f"cannot boot {spec} here: {can_boot(spec)}")(test)
        test = pytest.mark.skipif(bool(os.environ.get("LINUXDMABUF_IN_VM")), reason="host-side (boots a VM)")(test)
        return pytest.mark.slow(test)
    return mark


def pytest_in_vm(path, *args):
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=path,
                          capture_output=True, text=True, timeout=VM_LIMIT)
    return done.returncode, done.stdout, done.stderr


STOCK_KERNEL_SESSION = '''
import pytest


def test_udmabuf(udmabuf):
    with udmabuf.allocate(8192) as buf:
        buf.write(b"in the guest")
        assert buf.read(12) == b"in the guest"


def test_system_heap(dma_heap, dmabuf_leak_check):
    with dma_heap.allocate(4096) as buf:
        assert buf.exporter == "system"


def test_cma(dma_heap_cma):
    pass


@pytest.mark.requires_sw_sync
def test_sw_sync():
    pass


def test_fails_on_purpose():
    assert 1 + 1 == 3
'''


@boots_vm("debian-7.2")
def test_session_on_a_stock_kernel(pytester):
    """Debian's 7.2 kernel: udmabuf and the system heap work; no sw_sync, no CMA heap, said so; status 1."""
    pytester.makepyfile(test_plugin_gen_stock=STOCK_KERNEL_SESSION)
    code, out, err = pytest_in_vm(pytester.path, "--linuxdmabuf-vm=debian-7.2", "-rs")
    assert code == 1, out + err
    assert "linuxdmabuf-vm: guest kernel 7.2." in out and "(debian-7.2); devices: /dev/udmabuf" in out
    assert ("features expected: udmabuf, heap:system, drm:vgem, drm:virtio_gpu, syncobj:timeline, v4l2:vivid, "
            "trace:dma_buf; missing: none") in out
    assert "2 passed, 2 skipped" in out and "1 failed" in out and "assert (1 + 1) == 3" in out
    assert "this kernel has no sw_sync (CONFIG_SW_SYNC)" in out
    assert "cma_heap: no CMA heap under /dev/dma_heap -- needs a CMA dma-heap (CONFIG_DMABUF_HEAPS_CMA" in out
    assert "linuxdmabuf vm: debian-7.2 kernel 7.2." in err and "booted in" in err


@boots_vm("full")
def test_usage_error_inside_the_vm_comes_back(pytester):
    """A -k expression is only checked where tests are collected, i.e. in the VM: its error must come back."""
    pytester.makepyfile(test_plugin_gen_k="def test_one():\n    pass\n")
    code, out, err = pytest_in_vm(pytester.path, "--linuxdmabuf-vm", "-k", "and")
    assert code == pytest.ExitCode.USAGE_ERROR, out + err
    assert "Wrong expression passed to '-k': and" in out + err
