"""Image files -> RGB PIL images, with Pillow.

Transparent images are composited on white, as HF's `convert_to_rgb` does (a plain `convert("RGB")` would show
whatever colour transparent pixels store). Greyscale, palette and CMYK images become RGB.
"""

from __future__ import annotations

from .errors import InputError, check_file, first_line

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
# The decoders Pillow may use, whatever a file's name or a data URL's type claims: no BMP, GIF, TIFF, ICO, PPM, TGA,
# PCX, SGI, or EPS (which Pillow hands to Ghostscript).
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
# The most pixels an image may have, read from its header before any pixel is decoded: a 23 KiB PNG can declare
# 12000 x 12000 pixels (412 MiB decoded). 40 M pixels is 6324 x 6324, more than any processor keeps (Qwen2.5-VL
# resizes to at most 12.8 M by default, LLaVA-OneVision's tiles far fewer).
MAX_IMAGE_PIXELS = 40_000_000


def load_image(path):
    """The image at `path` as an RGB `PIL.Image.Image`, fully read (the file is closed)."""
    from PIL import Image, UnidentifiedImageError

    path = check_file(path, "image", IMAGE_EXTENSIONS)
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as img:  # reads the header only
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise InputError(
                    f"image {path} is {img.width} x {img.height} pixels, more than the {MAX_IMAGE_PIXELS:,} "
                    "allowed; resize it"
                )
            img.load()
            return to_rgb(img)
    except Image.DecompressionBombError as err:  # Pillow's own limit (only above ours unless a caller lowers it)
        raise InputError(f"image {path} is too large to decode: {first_line(err)}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InputError(
            f"cannot read image {path}: corrupt, truncated or not a PNG, JPEG or WebP image ({first_line(err)})"
        ) from None


def to_rgb(img):
    """HF's `image_transforms.convert_to_rgb` rule, so the processor's own conversion is then a no-op."""
    from PIL import Image

    if "A" in img.getbands() or img.info.get("transparency") is not None:
        img = img.convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img).convert("RGB")
    return img.convert("RGB")
