"""Robust image decoding: every file becomes an RGB PIL image or a BadImageError.

ImageNet holds grayscale and CMYK JPEGs and a few PNGs named .JPEG; Pillow identifies files
by content, so all decode here. Truncated files raise (LOAD_TRUNCATED_IMAGES stays off: a
half-grey image is silently wrong data). Only regular files are opened: a FIFO or device
named like an image would block its reader.

EXIF orientation is ignored by default: dataset images are used as stored, as ImageNet was
labelled and as the paper's, Caffe's and torchvision's pipelines (and the released weights)
read them; honouring it would turn some training images sideways relative to those. Photos
given to ``predict`` are a user's, taken upright by a camera that only tagged the rotation:
there it is honoured (``exif_orientation=True``).
"""

from __future__ import annotations

import math
import os
import stat
import warnings

from PIL import Image, ImageOps

from verydeep.data.errors import BadImageError

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
EXIF_ORIENTATION = 0x0112  # the EXIF tag; values 5-8 turn the image by 90 degrees


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def draft_request(width: int, height: int, short_side: float) -> tuple[int, int]:
    """The size to ask the JPEG decoder for so that its shorter side stays >= ``short_side``."""
    s = short_side / min(width, height)
    return max(1, math.ceil(width * s)), max(1, math.ceil(height * s))


def load_image(path, min_short_side: float | None = None, exif_orientation: bool = False) -> Image.Image:
    """Decode ``path`` to an RGB image.

    ``min_short_side``: the shorter side the caller will rescale to. JPEGs larger than twice
    that are decoded at 1/2, 1/4 or 1/8 size by the DCT (Pillow's draft mode), which is much
    faster and loses nothing the later downscale would keep. ``exif_orientation``: turn the
    image as its EXIF orientation tag says (see the module docstring for when).
    """
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise BadImageError(path, "a folder, not an image file")
        if not stat.S_ISREG(mode):
            raise BadImageError(path, "not a regular file (FIFO, socket or device)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF / decompression-bomb chatter of crawled files
            with open(path, "rb") as f:
                img = Image.open(f)
                original = img.size
                if min_short_side is not None and img.format == "JPEG":
                    img.draft(None,
                              draft_request(img.width, img.height, min_short_side))
                img.load()
                if exif_orientation:
                    img, original = _upright(img, original)
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


def _upright(img: Image.Image, size: tuple[int, int]) -> tuple[Image.Image, tuple[int, int]]:
    """The image turned as its EXIF orientation says, and its stored size turned alike."""
    orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    if not 2 <= orientation <= 8:  # 1: upright; anything else is not a valid tag
        return img, size
    return ImageOps.exif_transpose(img), (size[::-1] if orientation >= 5 else size)


def original_size(img: Image.Image) -> tuple[int, int]:
    return tuple(img.info.get("original_size", img.size))


def image_size(path) -> tuple[int, int] | None:
    """(width, height) from the file header, or None when the file is not a readable image."""
    try:
        with Image.open(path) as img:
            return img.size
    except Exception:  # noqa: BLE001 - any failure means "not usable"; load_image says why
        return None
