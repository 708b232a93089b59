"""Robust image decoding: every file becomes an RGB PIL image or a BadImageError.

ImageNet holds grayscale and CMYK JPEGs and a few PNGs named .JPEG; Pillow identifies files
by content, so all decode here. Truncated files raise (LOAD_TRUNCATED_IMAGES stays off: a
half-grey image is silently wrong data).
"""

from __future__ import annotations

import math
import warnings

from PIL import Image

from verydeep.data.errors import BadImageError

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def draft_request(width: int, height: int, short_side: float) -> tuple[int, int]:
    """The size to ask the JPEG decoder for so that its shorter side stays >= ``short_side``."""
    s = short_side / min(width, height)
    return max(1, math.ceil(width * s)), max(1, math.ceil(height * s))


def load_image(path, min_short_side: float | None = None) -> Image.Image:
    """Decode ``path`` to an RGB image.

    ``min_short_side``: the shorter side the caller will rescale to. JPEGs larger than twice
    that are decoded at 1/2, 1/4 or 1/8 size by the DCT (Pillow's draft mode), which is much
    faster and loses nothing the later downscale would keep.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF / decompression-bomb chatter of crawled files
            with open(path, "rb") as f:
                img = Image.open(f)
                original = img.size
                if min_short_side is not None and img.format == "JPEG":
                    img.draft(None,
                              draft_request(img.width, img.height, min_short_side))
                img.load()
    except BadImageError:
        raise
    except FileNotFoundError:
        raise BadImageError(path, "file not found") from None
    except Image.UnidentifiedImageError:
        raise BadImageError(path, "not an image file") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise BadImageError(path, f"{type(e).__name__}: {e}") from None
    if img.width < 1 or img.height < 1:
        raise BadImageError(path, f"empty image {img.width}x{img.height}")
    if img.mode != "RGB":
        try:
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                # Transparent pixels over white, as a browser shows them.
                rgba = img.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                img = Image.alpha_composite(background, rgba).convert("RGB")
            else:
                if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                    img = img.point(lambda v: v / 256).convert("L")
                img = img.convert("RGB")
        except (OSError, ValueError) as e:
            raise BadImageError(path, f"cannot convert to RGB: {e}") from None
    # Geometry (crop positions, rescaled sizes) is computed on the stored size, so it does
    # not depend on whether the decoder downscaled.
    img.info["original_size"] = original
    return img


def original_size(img: Image.Image) -> tuple[int, int]:
    return tuple(img.info.get("original_size", img.size))


def image_size(path) -> tuple[int, int] | None:
    """(width, height) from the file header, or None when the file is not a readable image."""
    try:
        with Image.open(path) as img:
            return img.size
    except Exception:  # noqa: BLE001 - any failure means "not usable"; load_image says why
        return None
