import base64
import io
import math
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers import AutoImageProcessor

from eve_vlm.assets import sample_photo
from eve_vlm.errors import EveError, ImageTooLargeError
from eve_vlm.processing import EveImageProcessor, ImageReadError, target_size
from eve_vlm.processing.image import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

MODES = ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV",
         "I", "I;16", "I;16L", "I;16B", "I;16N", "F"]
MEAN, STD = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1), torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)


def unnormalize(x: torch.Tensor) -> torch.Tensor:
    return x * STD + MEAN  # back to [0, 1]


def random_image(mode: str, w: int, h: int, seed: int = 0) -> Image.Image:
    n = len(Image.new(mode, (w, h)).tobytes())
    return Image.frombytes(mode, (w, h), np.random.default_rng(seed).bytes(n))


def png_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


# ---- the size rule, on any size (no pixels needed) --------------------------------------------

@settings(max_examples=1000, deadline=None)
@given(h=st.integers(1, 10000), w=st.integers(1, 10000), max_size=st.sampled_from([64, 800, 1600]),
       mode=st.sampled_from(["inference", "train"]))
def test_target_size_rules(h, w, max_size, mode):
    H, W = target_size(h, w, max_size, mode)
    assert H % 32 == 0 and W % 32 == 0 and H >= 32 and W >= 32
    proc = EveImageProcessor(max_size=max_size)
    assert proc.num_tokens(H, W) == 1 + (H // 32) * (W // 32 + 1)

    cap = math.ceil(max_size**2 / 1024) * 32
    scale = math.sqrt(h * w) / max_size
    shrink = scale if mode == "inference" or scale > 1 else 1.0
    for new, ideal in ((H, h / shrink), (W, w / shrink)):
        if new == cap and ideal > cap - 32:  # the long-side guard for degenerate aspect ratios
            continue
        if mode == "inference":  # ceil: never below the ideal side, less than one unit above
            assert new == 32 if ideal <= 32 else ideal - 1e-6 <= new < ideal + 32
        else:  # round to the nearest unit
            assert new == 32 if ideal < 48 else abs(new - ideal) <= 16 + 1e-6
    if mode == "inference" and cap not in (H, W):
        assert H * W >= max_size**2 * (1 - 1e-9)  # the budget is always reached...
    if mode == "train":
        assert H * W <= (max(h / shrink, 48) + 16) * (max(w / shrink, 48) + 16)  # ...or never left far behind

    # Aspect ratio: the short side matches the long side's ratio within one 32-px unit, unless the
    # short side hit the 32-px minimum or the long side was capped.
    (s0, S0), (l0, L0) = sorted([(h, H), (w, W)])
    if min(h, w) / shrink >= 48 and cap not in (H, W):
        assert abs(S0 - L0 * s0 / l0) <= 32 + 1e-6


def test_official_examples():
    assert target_size(512, 512, 800) == (800, 800)
    assert EveImageProcessor(max_size=800).num_tokens(800, 800) == 651
    # reference §4.3: a 4:3 image at res1600 gives 2597 tokens
    H, W = target_size(480, 640, 1600)
    assert EveImageProcessor(max_size=1600).num_tokens(H, W) == 2597
    # training never upscales: a small image keeps (about) its size
    assert target_size(100, 60, 800, "train") == (96, 64)
    # Python's round is banker's rounding on .5: 80 px = 2.5 units -> 2
    assert target_size(80, 80, 800, "train") == (64, 64)


# ---- the full pipeline on any mode and size -------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(w=st.integers(1, 300), h=st.integers(1, 300), mode=st.sampled_from(MODES),
       max_size=st.sampled_from([32, 64, 100]), resize_mode=st.sampled_from(["inference", "train"]))
def test_pipeline_any_mode_any_size(w, h, mode, max_size, resize_mode):
    proc = EveImageProcessor(max_size=max_size, resize_mode=resize_mode)
    out = proc(random_image(mode, w, h))
    (x,), ((H, W),), (n,) = out["pixel_values"], out["image_sizes"], out["num_image_tokens"]
    assert (H, W) == target_size(h, w, max_size, resize_mode)
    assert x.shape == (3, H, W) and x.dtype == torch.float32 and x.is_contiguous()
    assert torch.isfinite(x).all()
    pixels = unnormalize(x)
    assert pixels.min() >= -1e-4 and pixels.max() <= 1 + 1e-4
    assert n == 1 + (H // 32) * (W // 32 + 1)


@pytest.mark.parametrize("w,h", [(10000, 3), (3, 10000), (4000, 3000), (1, 1)])
def test_pipeline_extreme_sizes(w, h):
    proc = EveImageProcessor(max_size=800)
    out = proc(Image.new("L", (w, h), 128))
    H, W = out["image_sizes"][0]
    assert out["pixel_values"][0].shape == (3, H, W)
    assert H * W <= 800 * 800 * 1.25  # the long-side guard keeps thin images on budget
    assert torch.allclose(unnormalize(out["pixel_values"][0]), torch.full((3, H, W), 128 / 255), atol=1 / 255)


# ---- real photos --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
def test_real_photos_match_pillow_bicubic(name):
    photo = sample_photo(name)
    proc = EveImageProcessor(max_size=800)
    out = proc(photo)
    H, W = out["image_sizes"][0]
    assert (H, W) == target_size(photo.height, photo.width, 800)
    ref = torch.from_numpy(np.asarray(photo.resize((W, H), Image.BICUBIC), dtype=np.float32) / 255).permute(2, 0, 1)
    diff = (unnormalize(out["pixel_values"][0]) - ref).abs()
    assert diff.max() <= 2.01 / 255 and diff.mean() < 0.05 / 255  # the official resize, within rounding


def test_all_input_kinds_agree(tmp_path):
    photo = sample_photo("chelsea")
    data = png_bytes(photo)
    path = tmp_path / "cat.png"
    path.write_bytes(data)
    arr = np.asarray(photo)
    inputs = [photo, str(path), path, data, "data:image/png;base64," + base64.b64encode(data).decode(),
              arr, arr.transpose(2, 0, 1).astype(np.float32) / 255, torch.from_numpy(arr.copy())]
    proc = EveImageProcessor(max_size=64)
    outs = proc(inputs)["pixel_values"]
    for x in outs[1:]:
        assert torch.allclose(x, outs[0], atol=1e-3)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (64, 32))
    img.paste((255, 0, 0), (0, 0, 32, 32))  # left half red
    img.paste((0, 0, 255), (32, 0, 64, 32))  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    out = EveImageProcessor(max_size=64)(png_bytes(img, "JPEG", exif=exif, quality=95))
    H, W = out["image_sizes"][0]
    assert H > W  # upright: portrait
    x = unnormalize(out["pixel_values"][0])
    top, bottom = x[:, : H // 2], x[:, H // 2:]
    assert top[0].mean() > 0.8 and top[2].mean() < 0.2  # red went to the top
    assert bottom[2].mean() > 0.8 and bottom[0].mean() < 0.2


def test_transparency_goes_on_white():
    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    img.paste((255, 0, 0, 255), (0, 0, 32, 64))  # opaque red left half, transparent right half
    x = unnormalize(EveImageProcessor(max_size=64)(img)["pixel_values"][0])
    assert torch.allclose(x[:, :, 40:], torch.ones(3, 64, 24), atol=1e-3)
    assert x[0, :, :24].mean() > 0.99 and x[1:, :, :24].mean() < 0.01
    pal = Image.new("P", (64, 64), 1)
    pal.putpalette([0, 0, 255, 0, 0, 0])
    pal.paste(0, (0, 0, 32, 64))  # blue left half, index 1 (transparent) right half
    x = unnormalize(EveImageProcessor(max_size=64)(png_bytes(pal, transparency=1))["pixel_values"][0])
    assert torch.allclose(x[:, :, 40:], torch.ones(3, 64, 24), atol=1e-3)
    assert x[2, :, :24].mean() > 0.99 and x[0, :, :24].mean() < 0.01


def test_high_bit_depth_is_scaled_not_clipped():
    img = Image.fromarray(np.full((32, 32), 32896, dtype=np.uint16))  # I;16, mid-grey
    x = unnormalize(EveImageProcessor(max_size=32)(img)["pixel_values"][0])
    assert torch.allclose(x, torch.full_like(x, 128 / 255), atol=1 / 255)
    f = Image.fromarray(np.full((32, 32), 0.25, dtype=np.float32))  # F in [0, 1]
    x = unnormalize(EveImageProcessor(max_size=32)(f)["pixel_values"][0])
    assert torch.allclose(x, torch.full_like(x, 64 / 255), atol=1 / 255)


# ---- bad files -------------------------------------------------------------------------------

def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge image: what a decompression bomb looks like."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("side", [10_000, 100_000])  # above our cap / above Pillow's own bomb limit
def test_decompression_bomb_is_a_clear_error(tmp_path, side):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_claiming(side, side))
    with pytest.raises(ImageTooLargeError, match="bomb.png"):
        EveImageProcessor()(str(path))


def test_caps_are_configurable():
    img = Image.new("RGB", (20, 20))
    with pytest.raises(ImageTooLargeError, match="20x20 pixels"):
        EveImageProcessor(max_image_pixels=399)(img)
    with pytest.raises(ImageTooLargeError, match="bytes"):
        EveImageProcessor(max_image_bytes=10)(png_bytes(img))


def test_truncated_and_garbage_files_are_clear_errors(tmp_path):
    noise = random_image("RGB", 128, 128)
    data = png_bytes(noise)
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.png") as err:
        EveImageProcessor()(str(cut))
    assert err.value.reason == "image_unreadable"
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"this is not an image")
    with pytest.raises(ImageReadError, match="junk.jpg"):
        EveImageProcessor()(str(junk))
    with pytest.raises(ImageReadError, match="missing.png"):
        EveImageProcessor()(str(tmp_path / "missing.png"))
    with pytest.raises(EveError, match="unsupported image type"):
        EveImageProcessor()(12345)


# ---- save / load -----------------------------------------------------------------------------

def test_save_load_round_trip(tmp_path):
    proc = EveImageProcessor(max_size=1600, resize_mode="train", max_image_pixels=10**7)
    proc.save_pretrained(tmp_path)
    assert (tmp_path / "preprocessor_config.json").exists()
    for loaded in (EveImageProcessor.from_pretrained(tmp_path), AutoImageProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is EveImageProcessor
        assert loaded.to_dict() == proc.to_dict()
    assert EveImageProcessor.from_pretrained(tmp_path, max_size=800).max_size == 800
    photo = sample_photo("coffee")
    assert torch.equal(proc(photo)["pixel_values"][0], loaded(photo)["pixel_values"][0])


def test_corrupt_rgb_jpeg_fails_at_load_time():
    """RGB files skip the mode conversion, so decoding must be forced for corrupt data to show."""
    import io

    from eve_vlm.processing import ImageReadError, load_image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    data[len(data) // 2: len(data) // 2 + 200] = bytes(200)  # garbage in the entropy-coded data
    with pytest.raises(ImageReadError, match="cannot (decode|read) image"):
        load_image(bytes(data[: len(data) * 2 // 3]))


@pytest.mark.parametrize("max_size", [64, 128])
def test_largest_input_has_the_most_tokens(max_size):
    """Serving engines size their memory by it: no input size may give more tokens."""
    proc = EveImageProcessor(max_size=max_size)
    h, w = proc.largest_input()
    most = proc.num_tokens(*proc.target_size(h, w))
    tokens = {proc.num_tokens(*proc.target_size(a, b)) for a in range(1, 1025, 7) for b in range(1, 1025, 7)}
    assert max(tokens) <= most
    assert most > proc.num_tokens(max_size, max_size)  # thin images get more rows of split tokens
