"""Every script in examples/ runs to its end ("ok") on a real kernel, so none can rot.

Each runs as its own process with this interpreter; a test skips, with the
reason, only when the kernel lacks what that example needs (and fails where the
kernel is expected to have it).
"""
import os
import subprocess
import sys

import pytest

from linuxdmabuf.pytest_plugin import has, need

pytestmark = pytest.mark.kernel

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def run_example(name: str, *args: str) -> str:
    done = subprocess.run([sys.executable, os.path.join(EXAMPLES, name), *args], capture_output=True, text=True,
                          timeout=300, cwd=EXAMPLES)
    assert done.returncode == 0, f"{name} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    assert done.stdout.endswith("ok\n"), done.stdout
    assert "Warning" not in done.stderr, done.stderr
    return done.stdout


def need_a_provider():
    if not has("heap:system"):
        need("udmabuf")


def test_every_example_is_tested():
    scripts = sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".py"))
    tested = sorted(name[len("test_"):] + ".py" for name in globals() if name.startswith("test_")
                    and name != "test_every_example_is_tested")
    assert scripts == tested


def test_share_between_processes():
    need_a_provider()
    out = run_example("share_between_processes.py")
    assert "parent read the child's reply 'hello back from pid" in out
    assert "DmaBuf.from_pid" in out and "written by pid" in out
    assert "wrote 'HELLO'; its fence came back signaled" in out


def test_numpy_frame():
    pytest.importorskip("numpy")
    need_a_provider()
    out = run_example("numpy_frame.py")
    assert "a second mapping of the buffer sees what the arrays wrote" in out
    assert "(last, last) = [0, 0, 255, 0]" in out


def test_asyncio_pipeline():
    need_a_provider()
    need("sw_sync")  # the example simulates its devices with sw_sync timelines
    out = run_example("asyncio_pipeline.py")
    assert out.count("consumed 'frame") == 12 and "on 1 thread" in out


def test_v4l2_capture():
    pytest.importorskip("numpy")
    need("v4l2:vivid")
    need("heap:system")
    out = run_example("v4l2_capture.py")
    assert out.count(", Y min/mean/max ") == 5 and "(system, inode" in out
    assert "exported: ['videobuf2_vmalloc', 'videobuf2_vmalloc']" in out


def test_v4l2_codec_roundtrip():
    pytest.importorskip("numpy")
    need("v4l2:vicodec")
    need("udmabuf")
    out = run_example("v4l2_codec_roundtrip.py")
    assert "encoded 640x368 YU12 (353280 bytes, system) into " in out and "in a udmabuf buffer" in out
    psnr = float(out.split("luma PSNR ")[1].split(" dB")[0])
    assert psnr > 35, out


def test_kms_writeback(tmp_path):
    pytest.importorskip("numpy")
    need("drm:vkms")
    need("sw_sync")
    need("heap:system")
    png = tmp_path / "capture.png"
    out = run_example("kms_writeback.py", str(png))
    assert "on screen after 0.2 s? False" in out and "captured frame: 0 of 786432 pixels differ" in out
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and b"IHDR" in data[:16] and len(data) > 1000


def test_explicit_sync():
    pytest.importorskip("numpy")
    for feature in ("drm:vkms", "sw_sync", "heap:system", "syncobj:timeline"):
        need(feature)
    out = run_example("explicit_sync.py")
    assert out.count("held the flip: True") == 6 and "buffer 0 released (point 4)" in out
    assert "acquire timeline at 6, release timeline at 5" in out
    assert "writeback of the last frame: 0 of 786432 pixels differ from frame 6" in out


def test_vgem_prime():
    need_a_provider()
    need("drm:vgem")
    out = run_example("vgem_prime.py")
    assert "the same GemObject: True" in out and "export_sync_file(): ACTIVE, driver 'vgem'" in out
    assert "buf.wait(timeout=0.1) -> False" in out and "signaled: buf.wait(timeout=0) -> True" in out
