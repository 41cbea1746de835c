"""Images: formats, conversion to RGB exactly as HF converts, and bad input."""

import numpy as np
import pytest
from PIL import Image

from specvlm.inputs import InputError, MediaLimits, load_image


@pytest.mark.parametrize("ext", [".png", ".jpg", ".jpeg", ".webp"])
def test_formats(tmp_path, ext):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:, :15] = (200, 40, 10)
    Image.fromarray(rgb).save(tmp_path / f"a{ext}", quality=95)
    img = load_image(tmp_path / f"a{ext}")
    assert img.mode == "RGB" and img.size == (30, 20)
    assert np.abs(np.asarray(img, int)[5, 5] - (200, 40, 10)).max() <= 6  # lossy formats stay close


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red stays red
    rgba[0, 1] = (255, 0, 0, 0)  # fully transparent red becomes white
    rgba[0, 2] = (0, 0, 0, 128)  # half-transparent black becomes mid grey
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    px = np.asarray(load_image(tmp_path / "a.png"), int)
    assert px[0, 0].tolist() == [255, 0, 0] and px[0, 1].tolist() == [255, 255, 255]
    assert all(abs(v - 127) <= 1 for v in px[0, 2])


def test_greyscale_and_palette(tmp_path):
    Image.fromarray(np.full((5, 6), 77, np.uint8), "L").save(tmp_path / "g.png")
    assert np.asarray(load_image(tmp_path / "g.png")).tolist()[0][0] == [77, 77, 77]
    pal = Image.new("P", (3, 3))
    pal.putpalette([10, 20, 30] * 256)
    pal.save(tmp_path / "p.png")
    assert np.asarray(load_image(tmp_path / "p.png"))[0, 0].tolist() == [10, 20, 30]


def test_same_pixels_as_hf_conversion(tmp_path, hf_media_rules):
    from transformers.image_transforms import convert_to_rgb

    rgba = np.random.default_rng(0).integers(0, 256, (9, 7, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "r.png")
    with Image.open(tmp_path / "r.png") as raw:
        hf = np.asarray(convert_to_rgb(raw))
    assert np.array_equal(np.asarray(load_image(tmp_path / "r.png")), hf)


def _error(call) -> str:
    with pytest.raises(InputError) as info:
        call()
    assert "\n" not in str(info.value)
    return str(info.value)


def test_bad_images(tmp_path):
    assert "does not exist" in _error(lambda: load_image(tmp_path / "none.png"))
    (tmp_path / "dir.png").mkdir()
    assert "directory" in _error(lambda: load_image(tmp_path / "dir.png"))
    (tmp_path / "a.bmp").write_bytes(b"BM")
    assert "unsupported format" in _error(lambda: load_image(tmp_path / "a.bmp"))
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    assert "cannot read image" in _error(lambda: load_image(tmp_path / "junk.png"))
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    assert "cannot read image" in _error(lambda: load_image(tmp_path / "cut.png"))


@pytest.mark.parametrize("kind", ["BMP", "GIF", "TIFF", "PPM", "TGA"])
def test_only_png_jpeg_and_webp_decoders_run_whatever_the_name_says(tmp_path, kind):
    """Pillow opens dozens of formats by content (EPS through Ghostscript); only PNG, JPEG and WebP may run, so a
    BMP sent as image/png is refused instead of decoded."""
    path = tmp_path / "picture.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path, format=kind)
    with pytest.raises(InputError, match="not a PNG, JPEG or WebP image"):
        load_image(path)


def test_pixel_limit_is_read_from_the_header(tmp_path):
    path = tmp_path / "big.png"
    Image.new("1", (300, 200)).save(path)
    with pytest.raises(InputError, match=r"^image \S+ is 300 x 200 pixels, more than the 59,999 allowed; resize it$"):
        load_image(path, MediaLimits(image_pixels=300 * 200 - 1))
    assert load_image(path, MediaLimits(image_pixels=300 * 200)).size == (300, 200)
