"""Word and character error rates (jiwer) on transcripts decoded with generate()."""

from __future__ import annotations

import re
from typing import Any

from omnitune.modalities.speech.audio import read_audio
from omnitune.modalities.speech.collate import set_language_and_task

_PUNCTUATION = re.compile(r"[^\w\s']")


def normalise(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed: WER counts words, not commas."""
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def transcribe(model: Any, processor: Any, paths: list[str], config: Any) -> list[str]:
    import torch

    extractor = processor.feature_extractor
    rate = extractor.sampling_rate
    generate_args = set_language_and_task(processor, config)
    if not getattr(model.generation_config, "is_multilingual", False):
        generate_args = {}
    device = next(model.parameters()).device
    generation = config.eval.generation
    texts: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(paths), config.eval.batch_size):
            chunk = paths[start : start + config.eval.batch_size]
            features = extractor(
                [read_audio(p, rate) for p in chunk], sampling_rate=rate, return_tensors="pt"
            ).input_features.to(device)
            output = model.generate(
                input_features=features,
                max_new_tokens=generation.max_new_tokens,
                num_beams=generation.num_beams,
                **generate_args,
            )
            texts += processor.tokenizer.batch_decode(output, skip_special_tokens=True)
    return texts


def error_rates(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    """WER and CER over normalised texts; pairs whose reference is empty are left out."""
    import jiwer

    pairs = [(normalise(r), normalise(h)) for r, h in zip(references, hypotheses, strict=True)]
    pairs = [(r, h) for r, h in pairs if r]
    if not pairs:
        return {"wer": float("nan"), "cer": float("nan")}
    refs, hyps = [r for r, _ in pairs], [h for _, h in pairs]
    return {"wer": float(jiwer.wer(refs, hyps)), "cer": float(jiwer.cer(refs, hyps))}
