"""Image files -> RGB PIL images, with Pillow.

Transparent images are composited on white, as HF's `convert_to_rgb` does (a plain `convert("RGB")` would show
whatever colour transparent pixels store). Greyscale, palette and CMYK images become RGB.
"""

from __future__ import annotations

from .errors import InputError, check_file, first_line

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


def load_image(path):
    """The image at `path` as an RGB `PIL.Image.Image`, fully read (the file is closed)."""
    from PIL import Image, UnidentifiedImageError

    path = check_file(path, "image", IMAGE_EXTENSIONS)
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InputError(f"cannot read image {path}: corrupt, truncated or not an image ({first_line(err)})") from None


def to_rgb(img):
    """HF's `image_transforms.convert_to_rgb` rule, so the processor's own conversion is then a no-op."""
    from PIL import Image

    if "A" in img.getbands() or img.info.get("transparency") is not None:
        img = img.convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img).convert("RGB")
    return img.convert("RGB")
