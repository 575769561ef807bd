"""Batching speech: cached log-mel features (or fresh ones), labels padded with -100.

Labels carry the tokenizer's prefix (<|startoftranscript|><|lang|><|task|><|notimestamps|>)
minus its first token: the model prepends `decoder_start_token_id` itself when it shifts the
labels right, so keeping it would double the start token.

Training batches may be augmented (see `augment.py`): waveform changes (noise, speed) force a
fresh decode and feature pass for the examples they hit; SpecAugment masks the features after.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from omnitune.modalities.speech.audio import read_audio
from omnitune.modalities.speech.features import example_features, extract
from omnitune.modalities.speech.options import speech_options

if TYPE_CHECKING:
    from omnitune.modalities.base import RunSettings


def set_language_and_task(processor: Any, config: RunSettings) -> dict[str, Any]:
    """Apply `data.options.language/task` to the tokenizer; returns the matching generate() args."""
    options = speech_options(config)
    language, task = options.language, options.task
    processor.tokenizer.set_prefix_tokens(language=language, task=task, predict_timestamps=False)
    return {"language": language, "task": task} if language else {"task": task}


def make_speech_collator(
    processor: Any, config: RunSettings, training: bool
) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    import torch

    from omnitune.modalities.speech.augment import Augmenter

    extractor, tokenizer = processor.feature_extractor, processor.tokenizer
    rate = extractor.sampling_rate
    options = speech_options(config)
    set_language_and_task(processor, config)
    start = tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    augmenter = Augmenter(options.augment, rate) if training else None

    def features_of(example: dict[str, Any]) -> np.ndarray:
        if augmenter is not None and augmenter.draws_waveform_change():
            return extract(extractor, augmenter.waveform(read_audio(example["audio"], rate)))
        return example_features(example, extractor)

    def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
        features = torch.from_numpy(np.stack([features_of(e) for e in examples]))
        if augmenter is not None:
            features = augmenter.spectrogram(features)
        encoded = tokenizer([e["text"] for e in examples], padding=True, return_tensors="pt")
        labels = encoded.input_ids.masked_fill(encoded.attention_mask == 0, -100)
        if bool((labels[:, 0] == start).all()):
            labels = labels[:, 1:]
        return {"input_features": features, "labels": labels}

    return collate
