"""Opening images for training and describing them for drift.

Images are opened with Pillow and rendered as an image viewer shows them: the first frame of an
animation, rotated by the EXIF orientation, transparency composited on white (not dropped, which
shows what lies under transparent pixels, usually black), 16-bit and 32-bit integer images
scaled to 8 bits and float images from [0, 1] (Pillow's own RGB conversion clips both, turning
a 16-bit photograph white), every other mode through Pillow's RGB conversion. Then they are
scaled down to a pixel budget: uncapped resolution is the most common memory blow-up when
fine-tuning VLMs. A file whose header declares more than `max_decode_pixels` is refused before
it is decoded (a decompression bomb). Unrecognised, truncated and oversized files raise
ImageProblem with the reason, which the dataset counts and skips.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MAX_PIXELS = 1024 * 1024
#: Files whose header declares more pixels are skipped undecoded (about 8,000 x 8,000).
DEFAULT_MAX_DECODE_PIXELS = 64 * 1024 * 1024
#: What transparent pixels are composited on (what a viewer shows on a white page).
BACKGROUND = (255, 255, 255)


class ImageProblem(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def open_image(
    path: str | Path,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decode_pixels: int = DEFAULT_MAX_DECODE_PIXELS,
) -> Any:
    """The image at `path` as an 8-bit RGB picture of at most `max_pixels` pixels.

    Raises ImageProblem("unreadable image") for a file Pillow does not recognise (empty,
    mislabelled, not an image), ("truncated image") for one that fails to decode, and
    ("image over the pixel cap") for one whose header declares more than `max_decode_pixels`.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:  # reads the header only
            if image.width * image.height > max_decode_pixels:
                raise ImageProblem("image over the pixel cap")
            image.load()
            image = as_rgb(ImageOps.exif_transpose(image))
    except Image.DecompressionBombError:
        raise ImageProblem("image over the pixel cap") from None
    except UnidentifiedImageError:
        raise ImageProblem("unreadable image") from None
    except (OSError, SyntaxError, ValueError):
        raise ImageProblem("truncated image") from None
    if image.width * image.height > max_pixels:
        scale = math.sqrt(max_pixels / (image.width * image.height))
        size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    return image


def as_rgb(image: Any) -> Any:
    """An opened Pillow image as 8-bit RGB, the way a viewer renders it (see the module doc)."""
    from PIL import Image

    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit files (PNG, TIFF) open as I;16 or I: their full range is 0..65535.
        values = np.asarray(image).astype(np.float64)
        gray = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L").convert(
            "RGB"
        )
    if "A" in image.mode or "a" in image.mode or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def image_features(image: Any) -> dict[str, float]:
    """Size, brightness, contrast and colourfulness (Hasler and Suesstrunk, 2003). Numpy only."""
    pixels = np.asarray(image, dtype=np.float64)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    luma = 0.299 * red + 0.587 * green + 0.114 * blue
    rg, yb = red - green, 0.5 * (red + green) - blue
    colourfulness = math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean())
    return {
        "width": float(image.width),
        "height": float(image.height),
        "brightness": float(luma.mean() / 255),
        "contrast": float(luma.std() / 255),
        "colourfulness": float(colourfulness / 255),
    }
