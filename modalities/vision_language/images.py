"""Opening images for training and describing them for drift.

Images are opened with Pillow, rotated by their EXIF orientation, converted to RGB and scaled
down to a pixel budget: uncapped resolution is the most common memory blow-up when fine-tuning
VLMs. Unreadable or truncated files raise ImageProblem, which the dataset counts and skips.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MAX_PIXELS = 1024 * 1024


class ImageProblem(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def open_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Any:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image).convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ImageProblem("unreadable image") from None
    if image.width * image.height > max_pixels:
        scale = math.sqrt(max_pixels / (image.width * image.height))
        size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    return image


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
