"""The speech modality's `data.options`: decoding, feature cache, bucketing and augmentation.

Validated with the rest of the run config (`omnitune config check` names a wrong field as
`data.options.augment.noise.snr_db`), so a typo fails before any audio is read. Pydantic only:
importing this stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from omnitune.modalities.base import RunSettings


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SpecAugmentOptions(_Options):
    """Time and frequency masking on the log-mel features (Park et al., 2019)."""

    p: float = Field(0.0, ge=0.0, le=1.0, description="Share of training examples masked.")
    freq_masks: int = Field(2, ge=0, le=10, description="Frequency masks per example.")
    freq_width: int = Field(10, ge=1, description="Widest frequency mask, in mel bins.")
    time_masks: int = Field(2, ge=0, le=20, description="Time masks per example.")
    time_width: int = Field(20, ge=1, description="Widest time mask, in feature frames (10 ms).")


class NoiseOptions(_Options):
    """Additive Gaussian noise at a signal-to-noise ratio drawn from `snr_db`."""

    p: float = Field(0.0, ge=0.0, le=1.0, description="Share of training examples noised.")
    snr_db: tuple[float, float] = Field(
        (10.0, 30.0), description="SNR range in dB; each example draws one value uniformly."
    )

    @field_validator("snr_db")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if low > high:
            raise ValueError(f"low end {low} is above high end {high}")
        return value


class SpeedOptions(_Options):
    """Speed perturbation (Ko et al., 2015): resample so the audio plays at a factor's speed."""

    p: float = Field(0.0, ge=0.0, le=1.0, description="Share of training examples perturbed.")
    factors: list[float] = Field(
        [0.9, 1.1], min_length=1, description="Speed factors, one drawn per example."
    )

    @field_validator("factors")
    @classmethod
    def _in_range(cls, value: list[float]) -> list[float]:
        if any(not 0.5 <= f <= 2.0 for f in value):
            raise ValueError(f"each must be within 0.5-2.0 (got {value})")
        return value


class AugmentOptions(_Options):
    """Training-time augmentation; all off by default. Evaluation never augments."""

    spec_augment: SpecAugmentOptions = Field(default_factory=SpecAugmentOptions)
    noise: NoiseOptions = Field(default_factory=NoiseOptions)
    speed: SpeedOptions = Field(default_factory=SpeedOptions)

    @property
    def changes_waveform(self) -> bool:
        return self.noise.p > 0 or self.speed.p > 0


class SpeechOptions(_Options):
    language: str | None = Field(
        None, description="Language token for multilingual models, e.g. 'en'; None: none."
    )
    task: Literal["transcribe", "translate"] = Field("transcribe", description="Whisper task.")
    max_seconds: float | None = Field(
        None, gt=0, description="Longest recording kept; None: the feature extractor's window."
    )
    feature_cache: bool = Field(
        True,
        description=(
            "Cache each file's log-mel features on disk (keyed by path, size, mtime and the "
            "extractor's settings), so audio is decoded once across epochs and runs."
        ),
    )
    cache_dir: str | None = Field(
        None,
        description="Where the feature cache lives; None: $OMNITUNE_CACHE/speech-features "
        "(default ~/.cache/omnitune).",
    )
    audio_column: str = Field("audio", description="Audio field (manifests, HF datasets).")
    text_column: str = Field("text", description="Transcript field (manifests, HF datasets).")
    augment: AugmentOptions = Field(default_factory=AugmentOptions)


def speech_options(config: RunSettings) -> SpeechOptions:
    """The run config's speech options (already validated when the config was loaded)."""
    return SpeechOptions.model_validate(config.data.options)
