"""Image files -> RGB PIL images, with Pillow.

Transparent images are composited on white, as HF's `convert_to_rgb` does (a plain `convert("RGB")` would show
whatever colour transparent pixels store). Greyscale, palette and CMYK images become RGB.
"""

from __future__ import annotations

from .errors import InputError, check_file, first_line
from .limits import MediaLimits

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
# The decoders Pillow may use, whatever a file's name or a data URL's type claims: no BMP, GIF, TIFF, ICO, PPM, TGA,
# PCX, SGI, or EPS (which Pillow hands to Ghostscript).
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")


def load_image(path, limits: MediaLimits = MediaLimits()):
    """The image at `path` as an RGB `PIL.Image.Image`, fully read (the file is closed); one of more than
    `limits.image_pixels` pixels is refused from its header."""
    from PIL import Image, UnidentifiedImageError

    path = check_file(path, "image", IMAGE_EXTENSIONS)
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as img:  # reads the header only
            if img.width * img.height > limits.image_pixels:
                raise InputError(
                    f"image {path} is {img.width} x {img.height} pixels, more than the {limits.image_pixels:,} "
                    "allowed; resize it"
                )
            img.load()
            return to_rgb(img)
    except InputError:  # ours (a ValueError too): already one line, not "corrupt"
        raise
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
