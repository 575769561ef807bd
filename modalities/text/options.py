"""The text modality's `data.options`, validated with the run config (pydantic only)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from omnitune.modalities.base import RunSettings


class TextOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    overlong: Literal["drop", "fail", "truncate"] = Field(
        "drop",
        description=(
            "An example longer than data.max_length tokens is dropped and counted (drop), stops "
            "the run naming its line (fail), or is cut to data.max_length and counted "
            "(truncate: for continued pre-training on long text). Preference pairs are never "
            "truncated: both answers must be scored after the same prompt."
        ),
    )


def text_options(config: RunSettings) -> TextOptions:
    return TextOptions.model_validate(config.data.options)
