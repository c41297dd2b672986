"""Reading and decoding product images robustly.

Every failure is returned as a short reason string (never raised), so the embedding
stage can count it and still write the product's text embedding.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass

from PIL import Image, ImageOps

# Reasons an image yields no embedding (counted in asset metadata).
NO_IMAGE_PATH = "no_image_path"
FILE_NOT_FOUND = "file_not_found"
UNREADABLE_FILE = "unreadable_file"
EMPTY_FILE = "empty_file"
CORRUPT_IMAGE = "corrupt_image"
IMAGE_TOO_LARGE = "image_too_large"

# Conversions applied before encoding (counted, the image is still used).
CONVERTED_GRAYSCALE = "grayscale"
CONVERTED_CMYK = "cmyk"
CONVERTED_ALPHA = "alpha"
CONVERTED_PALETTE = "palette"
CONVERTED_OTHER = "other_mode"


@dataclass(frozen=True)
class ImageBytes:
    """Raw bytes of one image plus their sha256, or the reason they could not be read."""

    data: bytes | None
    sha256: str | None
    error: str | None


def read_image_bytes(path: str | os.PathLike | None) -> ImageBytes:
    """Read an image file; never raises for a bad path."""
    # pandas hands missing paths over as None, NaN or pd.NA: anything but a non-empty path.
    if not isinstance(path, (str, os.PathLike)) or str(path).strip() == "":
        return ImageBytes(None, None, NO_IMAGE_PATH)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return ImageBytes(None, None, FILE_NOT_FOUND)
    except OSError:
        return ImageBytes(None, None, UNREADABLE_FILE)
    if not data:
        return ImageBytes(None, None, EMPTY_FILE)
    return ImageBytes(data, hashlib.sha256(data).hexdigest(), None)


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)


def to_rgb(im: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> tuple[Image.Image, str | None]:
    """Convert any PIL mode to RGB; returns (image, conversion applied or None).

    Transparent pixels are composited onto white because catalogue photos are shot on white:
    a plain ``convert("RGB")`` would turn them black and change the embedding.
    """
    if im.mode == "RGB":
        return im, None
    if _has_alpha(im):
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB"), CONVERTED_ALPHA
    if im.mode == "CMYK":
        return im.convert("RGB"), CONVERTED_CMYK
    if im.mode in ("L", "1", "I", "I;16", "I;16B", "I;16L", "F"):
        if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            # Deep grayscale: scale to 8 bit before converting, PIL would otherwise clip.
            im = im.point(lambda v: v * (255.0 / 65535.0)).convert("L") if im.mode != "F" else im.convert("L")
        return im.convert("RGB"), CONVERTED_GRAYSCALE
    if im.mode == "P":
        return im.convert("RGB"), CONVERTED_PALETTE
    return im.convert("RGB"), CONVERTED_OTHER


def decode_image(data: bytes) -> tuple[Image.Image | None, str | None, str | None]:
    """Decode image bytes fully to RGB.

    Returns (image, conversion, error). Truncated files fail here (PIL's default refuses to load
    truncated data), so a half-written JPEG is reported instead of embedded as grey padding.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            rgb, conversion = to_rgb(im)
            rgb.load()
            return rgb, conversion, None
    except Image.DecompressionBombError:
        return None, None, IMAGE_TOO_LARGE
    except (OSError, ValueError, SyntaxError, EOFError, TypeError):
        # PIL signals undecodable / truncated data with these (UnidentifiedImageError is an OSError).
        return None, None, CORRUPT_IMAGE
