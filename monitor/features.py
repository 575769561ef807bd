"""Features of a live event, from the same modality functions that profiled the training data.

A serving process may send features itself (`event.features`: numbers, embedding vectors,
category strings); those win. Otherwise the daemon computes what it can from the input: text
features always (pure Python); audio and image features when the input names a file that this
machine can read and the speech or vision extra is installed.
"""

from __future__ import annotations

from typing import Any

from omnitune.modalities.text.features import text_features
from omnitune.monitor.events import Event, FeatureValue


def event_features(event: Event, modality: str) -> dict[str, FeatureValue]:
    """The event's features for drift: computed from its input, overridden by `event.features`."""
    computed: dict[str, Any] = {}
    text = event.input_text()
    if modality == "text" and text:
        computed = text_features(text)
    elif isinstance(event.input, dict):
        if modality == "speech" and isinstance(event.input.get("audio_path"), str):
            computed = _audio(event.input["audio_path"])
        elif modality == "vision_language" and isinstance(event.input.get("image_path"), str):
            computed = _image(event.input["image_path"])
    if event.features:
        computed.update(event.features)
    return computed


def _audio(path: str) -> dict[str, float]:
    try:
        from omnitune.modalities.speech.audio import AudioProblem, features_of_file
    except ImportError:
        return {}
    try:
        return features_of_file(path, 16_000)
    except (AudioProblem, OSError, ImportError):
        return {}


def _image(path: str) -> dict[str, float]:
    try:
        from omnitune.modalities.vision_language.images import (
            ImageProblem,
            image_features,
            open_image,
        )

        return image_features(open_image(path))
    except (ImportError, ImageProblem, OSError):
        return {}
