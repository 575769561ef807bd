"""Batching speech: log-mel features from the Whisper feature extractor, labels with -100 padding.

Labels carry the tokenizer's prefix (<|startoftranscript|><|lang|><|task|><|notimestamps|>)
minus its first token: the model prepends `decoder_start_token_id` itself when it shifts the
labels right, so keeping it would double the start token.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omnitune.modalities.speech.audio import read_audio


def set_language_and_task(processor: Any, config: Any) -> dict[str, Any]:
    """Apply `data.options.language/task` to the tokenizer; returns the matching generate() args."""
    options = config.data.options
    language, task = options.get("language"), options.get("task", "transcribe")
    processor.tokenizer.set_prefix_tokens(language=language, task=task, predict_timestamps=False)
    return {"language": language, "task": task} if language else {"task": task}


def make_speech_collator(
    processor: Any, config: Any, training: bool
) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    extractor, tokenizer = processor.feature_extractor, processor.tokenizer
    rate = extractor.sampling_rate
    set_language_and_task(processor, config)
    start = tokenizer.convert_tokens_to_ids("<|startoftranscript|>")

    def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
        audio = [read_audio(e["audio"], rate) for e in examples]
        features = extractor(audio, sampling_rate=rate, return_tensors="pt")
        encoded = tokenizer([e["text"] for e in examples], padding=True, return_tensors="pt")
        labels = encoded.input_ids.masked_fill(encoded.attention_mask == 0, -100)
        if bool((labels[:, 0] == start).all()):
            labels = labels[:, 1:]
        return {"input_features": features.input_features, "labels": labels}

    return collate
