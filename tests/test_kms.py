"""linuxdmabuf.kms on vkms, the kernel's virtual display: a dma-buf shown on the primary plane behind an
in-fence, composed, and written back through the writeback connector -- compared pixel by pixel with what
vkms's composer computes (drivers/gpu/drm/vkms/vkms_formats.c, vkms_composer.c).

vkms is expected on the full kernel only (Debian's stock kernels do not build it).
"""
import errno
import time

import pytest

from linuxdmabuf import FenceStatus, SyncFile, kms
from linuxdmabuf.drm import DrmDevice
from linuxdmabuf.pytest_plugin import need, need_module

need_module("drm:vkms")  # the whole module is about vkms: one skip where the kernel has none, a failure where it must
np = pytest.importorskip("numpy")
pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("dmabuf_leak_check")]


@pytest.fixture
def display():
    need("drm:vkms")
    with kms.Display.find(driver="vkms") as d:
        yield d


@pytest.fixture
def make(display, dma_heap):
    """make(fourcc, width=None, height=None, source=dma_heap) -> (DmaBuf, Framebuffer); all closed after."""
    made = []

    def make_fb(fourcc="XR24", width=None, height=None, source=dma_heap):
        width, height = width or display.mode.width, height or display.mode.height
        buf = source.allocate(kms.BYTES_PER_PIXEL[fourcc] * width * height)
        fb = display.framebuffer(buf, width, height, fourcc)
        made.append((buf, fb))
        return buf, fb

    yield make_fb
    for buf, fb in reversed(made):
        fb.close()
        buf.close()


def shown(display, fb, capture_buf, capture_fb, **show) -> np.ndarray:
    """Show `fb`, capture what the CRTC composes, return it as a (height, width, 4) BGRX array."""
    with display.show(fb, **show) as on_screen:
        assert on_screen.wait(10)
    with display.capture(capture_fb) as written:
        assert written.wait(30)
    w, h = display.mode.width, display.mode.height
    with capture_buf.cpu_access(write=False):
        return np.frombuffer(capture_buf.read(w * h * 4), np.uint8).reshape(h, w, 4).copy()


def picture(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8)


def fill(buf, array: np.ndarray) -> None:
    with buf.map() as m, buf.cpu_access(read=False):
        m[:array.nbytes] = array.tobytes()


# -- finding the display ---------------------------------------------------------------------------

def test_found_as_master_with_the_preferred_mode(display):
    assert display.driver == "vkms" and display.mode == kms.Mode(1024, 768, 60)
    assert "XR24" in display.formats() and "XR24" in display.formats("writeback")
    assert "AR24" in display.formats("cursor") and "mode=1024x768" in repr(display)


def test_a_second_opener_is_not_master_and_says_so(display):
    with pytest.raises(OSError) as info:
        kms.Display(display.path)
    assert info.value.errno == errno.EBUSY and "another open file of this card is DRM master" in str(info.value)


def test_a_card_without_modesetting_is_not_a_display(display):
    need("drm:vgem")
    with DrmDevice.find("vgem") as vgem:
        with pytest.raises(ValueError, match="without modesetting"):
            kms.Display(vgem.path)
    with pytest.raises(FileNotFoundError, match=r"no KMS display of driver 'vgem'.*\(vgem, no modesetting\)"):
        kms.Display.find("vgem")


# -- pixel-exact writeback -------------------------------------------------------------------------

@pytest.mark.parametrize("source", ["dma_heap", "dma_heap_cma", "udmabuf"])
def test_a_buffer_drawn_under_cpu_access_comes_back_pixel_exact(display, make, source, request):
    """XR24 on the primary plane, XR24 written back: every pixel's B, G, R as drawn, X written as 0xFF."""
    device = request.getfixturevalue(source)
    w, h = display.mode.width, display.mode.height
    buf, fb = make("XR24", source=device)
    drawn = picture(h, w, seed=1)
    fill(buf, drawn)
    cap_buf, cap_fb = make("XR24")
    got = shown(display, fb, cap_buf, cap_fb)
    expected = drawn.copy()
    expected[..., 3] = 0xFF
    assert np.array_equal(got, expected), f"{np.count_nonzero((got != expected).any(axis=2))} pixels differ"


def test_argb8888_primary_is_composed_premultiplied_over_black(display, make):
    """vkms blends AR24 as pre-multiplied alpha over its black background: out = src + 0 * (1 - a),
    so every colour comes back as stored, whatever its alpha (vkms_composer.c pre_mul_blend_channel)."""
    w, h = display.mode.width, display.mode.height
    buf, fb = make("AR24")
    drawn = picture(h, w, seed=2)
    fill(buf, drawn)
    cap_buf, cap_fb = make("XR24")
    got = shown(display, fb, cap_buf, cap_fb)
    assert np.array_equal(got[..., :3], drawn[..., :3]) and (got[..., 3] == 0xFF).all()


def _rgb565_to_xrgb8888(v: np.ndarray) -> np.ndarray:
    """vkms's own conversion: argb_u16_from_RGB565 (drm_fixp 32.32 arithmetic), then argb_u16_to_XRGB8888."""

    def msbset(a):
        return max((s for s in range(62, 0, -1) if (a >> s) & 1), default=0)

    def fixp_div(a, b):
        shift = 62 - msbset(a)
        a <<= shift
        if shift < 32:
            b >>= 32 - shift
        result = a // b
        return result >> (shift - 32) if shift > 32 else result

    def fixp_mul(a, b):
        shift = msbset(a) + msbset(b)
        if shift > 61:
            shift -= 61
            a >>= (shift >> 1) + (shift & 1)
            b >>= shift >> 1
        else:
            shift = 0
        result = a * b
        return result << (shift - 32) if shift > 32 else result >> (32 - shift) if shift < 32 else result

    def table(bits):
        ratio = fixp_div(65535 << 32, ((1 << bits) - 1) << 32)
        u16 = [(fixp_mul(c << 32, ratio) + (1 << 31)) >> 32 for c in range(1 << bits)]
        return np.array([(x + 128) // 257 for x in u16], np.uint8)  # DIV_ROUND_CLOSEST(x, 257)

    five, six = table(5), table(6)
    out = np.empty(v.shape + (4,), np.uint8)
    out[..., 0], out[..., 1], out[..., 2] = five[v & 0x1F], six[(v >> 5) & 0x3F], five[v >> 11]
    out[..., 3] = 0xFF
    return out


def test_rgb565_primary_comes_back_as_vkms_converts_it(display, make):
    w, h = display.mode.width, display.mode.height
    buf, fb = make("RG16")
    drawn = np.random.default_rng(3).integers(0, 1 << 16, (h, w), dtype=np.uint16)
    fill(buf, drawn)
    cap_buf, cap_fb = make("XR24")
    got = shown(display, fb, cap_buf, cap_fb)
    assert np.array_equal(got, _rgb565_to_xrgb8888(drawn))
    assert np.array_equal(_rgb565_to_xrgb8888(np.array([0xFFFF, 0xF800, 0x07E0, 0x001F, 0], np.uint16))[:, :3],
                          [[255, 255, 255], [0, 0, 255], [0, 255, 0], [255, 0, 0], [0, 0, 0]])


def test_cursor_plane_composited_over_the_primary(display, make):
    """An opaque ARGB cursor at (100, 50) covers the primary's pixels exactly (alpha 0xFF: out = src);
    everywhere else the primary shows through unchanged."""
    w, h = display.mode.width, display.mode.height
    buf, fb = make("XR24")
    primary = picture(h, w, seed=4)
    fill(buf, primary)
    cbuf, cursor = make("AR24", 64, 64)
    sprite = picture(64, 64, seed=5)
    sprite[..., 3] = 0xFF
    fill(cbuf, sprite)
    cap_buf, cap_fb = make("XR24")
    got = shown(display, fb, cap_buf, cap_fb, cursor=cursor, cursor_position=(100, 50))
    expected = primary.copy()
    expected[50:114, 100:164] = sprite
    expected[..., 3] = 0xFF
    assert np.array_equal(got, expected)
    got = shown(display, fb, cap_buf, cap_fb)  # cursor off again
    assert np.array_equal(got[50:114, 100:164, :3], primary[50:114, 100:164, :3])
    got = shown(display, fb, cap_buf, cap_fb, cursor=cursor, cursor_position=(0, 200))  # a commit of its own
    assert np.array_equal(got[200:264, 0:64, :3], sprite[..., :3])
    assert np.array_equal(got[50:114, 100:164, :3], primary[50:114, 100:164, :3])


def test_a_frame_commit_is_built_once_and_a_reused_framebuffer_id_gets_its_own(display, make, dma_heap):
    """show() and capture() build a commit once per kind of frame (by the values it carries); a framebuffer
    made after another was removed may get its id back, and must be shown as what it is."""
    w, h = display.mode.width, display.mode.height
    buf, fb = make("XR24")
    fill(buf, picture(h, w, seed=6))
    cap_buf, cap_fb = make("XR24")
    shown(display, fb, cap_buf, cap_fb)  # the first show() and capture() set the mode, attach the writeback
    assert display._commits == {}
    shown(display, fb, cap_buf, cap_fb)
    built = len(display._commits)
    shown(display, fb, cap_buf, cap_fb)
    assert built == 2 and len(display._commits) == built
    old_id = fb.fb_id
    fb.close()
    assert old_id not in display._commits and len(display._commits) == 1  # the capture's stays
    with dma_heap.allocate(w * h * 4) as small_buf:
        small = display.framebuffer(small_buf, w // 2, h // 2)  # the kernel hands out the lowest free id
        half = picture(h // 2, w // 2, seed=7)
        fill(small_buf, half)
        got = shown(display, small, cap_buf, cap_fb)
        assert len(display._commits) == 2
        assert np.array_equal(got[: h // 2, : w // 2, :3], half[..., :3])
        assert not got[h // 2:, :, :3].any() and not got[:, w // 2:, :3].any()  # the CRTC's black background
        display.close()  # a built commit is no way around a closed display
        with pytest.raises(ValueError, match="closed Display"):
            display.show(small)
        small.close()


# -- explicit fences -------------------------------------------------------------------------------

def test_an_unsignaled_in_fence_holds_the_frame_and_its_out_fence(display, make, fence_source):
    """The display waits for the producer: neither the CRTC's out-fence nor a capture's fence signals
    before the in-fence does, and the frame then shown is the new one."""
    w, h = display.mode.width, display.mode.height
    old_buf, old = make("XR24")
    fill(old_buf, picture(h, w, seed=6))
    new_buf, new = make("XR24")
    fresh = picture(h, w, seed=7)
    fill(new_buf, fresh)
    cap_buf, cap_fb = make("XR24")
    with display.show(old) as first:
        assert first.wait(10)
    with fence_source.fence() as producer, display.show(new, in_fence=producer) as on_screen:
        time.sleep(0.3)
        assert not on_screen.signaled and on_screen.status is FenceStatus.ACTIVE
        with pytest.raises(OSError) as busy:  # the held commit is still pending
            display.show(new)
        assert busy.value.errno == errno.EBUSY and "wait for its fence first" in str(busy.value)
        fence_source.signal(producer)
        assert on_screen.wait(10)
        # The out-fence carries the vblank's timestamp, which the vblank timer reports as its last
        # period boundary, up to one refresh period before the handler ran (after the in-fence
        # signaled): it may precede the producer's own signal time by less than a period.
        period_ns = 1_000_000_000 // display.mode.refresh
        assert producer.info().fences[0].timestamp_ns - period_ns < on_screen.info().fences[0].timestamp_ns
    with display.capture(cap_fb) as written:
        assert written.wait(30)
    got = np.frombuffer(cap_buf.read(w * h * 4), np.uint8).reshape(h, w, 4)
    assert np.array_equal(got[..., :3], fresh[..., :3])


# -- misuse ------------------------------------------------------------------------------------------

def test_bad_framebuffers_are_refused_with_the_reason(display, dma_heap):
    w, h = display.mode.width, display.mode.height
    with dma_heap.allocate(w * h * 4 // 2) as small:
        with pytest.raises(ValueError, match=f"needs {w * h * 4} bytes; the dma-buf has {w * h * 2}"):
            display.framebuffer(small, w, h, "XR24")
        with pytest.raises(ValueError, match="pitch"):
            display.framebuffer(small, w, h // 4, "XR24", pitch=0)
        for bad, error in [(("XR2",), ValueError), ((b"XR24",), TypeError), (("NV12",), ValueError)]:
            with pytest.raises(error):
                display.framebuffer(small, 16, 16, *bad)
        with pytest.raises(TypeError, match="DmaBuf"):
            display.framebuffer(small.fileno(), w, h)
    with dma_heap.allocate(w * h * 4) as buf:
        with display.framebuffer(buf, w, h, "XB24") as fb:  # a format of the cursor's list, not the writeback's
            with pytest.raises(ValueError, match="does not write XB24; it writes AR24, XR24"):
                display.capture(fb)
        with display.framebuffer(buf, w // 2, h // 2, "XR24") as half:
            with pytest.raises(ValueError, match=f"the mode's size, {w}x{h}"):
                display.capture(half)
        fb = display.framebuffer(buf, w, h)
        fb.close()
        fb.close()
        with pytest.raises(ValueError, match="closed"):
            display.show(fb)
    with pytest.raises(TypeError):
        display.show("fb")


def test_closing_leaves_no_framebuffer_handle_or_fd(display, dma_heap):
    from helpers import open_fds

    before = open_fds()
    w, h = display.mode.width, display.mode.height
    with dma_heap.allocate(w * h * 4) as buf:
        refs = buf.info().count
        with display.framebuffer(buf, w, h) as fb:
            assert buf.info().count > refs  # the import holds the buffer
            with display.show(fb) as done:
                assert done.wait(10)
        assert not display._handles  # the GEM handle went with the framebuffer
    assert open_fds() == before
    display.close()
    with pytest.raises(ValueError, match="closed"):
        display.mode


def test_out_fence_is_a_real_sync_file(display, make):
    buf, fb = make("XR24")
    with display.show(fb) as fence:
        assert isinstance(fence, SyncFile) and fence.wait(10)
        assert fence.info().fences[0].status is FenceStatus.SIGNALED
