"""The vision-language modality's `data.options`, validated with the run config (pydantic only)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from omnitune.modalities.vision_language.images import DEFAULT_MAX_DECODE_PIXELS, DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from omnitune.modalities.base import RunSettings


class VisionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS,
        ge=28 * 28,
        description="Images larger than this many pixels are scaled down (aspect kept).",
    )
    max_decode_pixels: int = Field(
        DEFAULT_MAX_DECODE_PIXELS,
        ge=28 * 28,
        description=(
            "A file whose header declares more pixels than this is skipped and counted before "
            "it is decoded (a decompression bomb would otherwise take the machine's memory)."
        ),
    )
    overlong: Literal["drop", "fail"] = Field(
        "drop",
        description=(
            "A sample longer than data.max_length tokens (image tokens included) is dropped and "
            "counted, or stops the run naming the sample. It is never truncated: cutting image "
            "tokens breaks the image-feature/image-token match."
        ),
    )


def vision_options(config: RunSettings) -> VisionOptions:
    return VisionOptions.model_validate(config.data.options)
