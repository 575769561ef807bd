"""Word and character error rates (jiwer) on transcripts decoded with generate()."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from omnitune.modalities.speech.collate import set_language_and_task

if TYPE_CHECKING:
    from omnitune.modalities.base import RunSettings

_PUNCTUATION = re.compile(r"[^\w\s']")


def normalise(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed: WER counts words, not commas."""
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def transcribe(
    model: Any, processor: Any, examples: list[dict[str, Any]], config: RunSettings
) -> list[str]:
    """Greedy (or beam, per `eval.generation`) transcripts of `examples`, from cached features."""
    import numpy as np
    import torch

    from omnitune.modalities.speech.features import example_features

    extractor = processor.feature_extractor
    generate_args = set_language_and_task(processor, config)
    if not getattr(model.generation_config, "is_multilingual", False):
        generate_args = {}
    device = next(model.parameters()).device
    generation = config.eval.generation

    texts: list[str] = []
    with torch.no_grad():  # not inference_mode: see modalities/evaluation.py
        for start in range(0, len(examples), config.eval.batch_size):
            chunk = examples[start : start + config.eval.batch_size]
            features = torch.from_numpy(np.stack([example_features(e, extractor) for e in chunk]))
            output = model.generate(
                input_features=features.to(device, dtype=model.dtype),
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


def error_counts(
    references: list[str], hypotheses: list[str]
) -> dict[str, tuple[list[int], list[int]]]:
    """Per utterance, word and character errors (substitutions + deletions + insertions) and
    the reference's length: summed over any subset they give that subset's WER and CER, as
    jiwer computes them over a list. Utterances with an empty reference count 0 over 0."""
    import jiwer

    counts: dict[str, tuple[list[int], list[int]]] = {"wer": ([], []), "cer": ([], [])}
    for reference, hypothesis in zip(references, hypotheses, strict=True):
        reference, hypothesis = normalise(reference), normalise(hypothesis)
        if not reference:
            for errors, lengths in counts.values():
                errors.append(0)
                lengths.append(0)
            continue
        words = jiwer.process_words(reference, hypothesis)
        chars = jiwer.process_characters(reference, hypothesis)
        for metric, out, length in (
            ("wer", words, len(reference.split())),
            ("cer", chars, len(reference)),
        ):
            counts[metric][0].append(out.substitutions + out.deletions + out.insertions)
            counts[metric][1].append(length)
    return counts


#: Manifest columns that get their own error rates when present (`wer/speaker=alice`).
BREAKDOWN_FIELDS = ("speaker", "domain", "language")


def error_rates_by_field(examples: list[dict[str, Any]], hypotheses: list[str]) -> dict[str, float]:
    """Overall WER/CER plus `wer/FIELD=VALUE` and `cer/FIELD=VALUE` for each breakdown field
    the examples carry: a model that is fine on average can fail one speaker entirely."""
    references = [e["text"] for e in examples]
    rates = error_rates(references, hypotheses)
    for field in BREAKDOWN_FIELDS:
        values = sorted({e[field] for e in examples if field in e})
        if len(values) < 2:
            continue
        for value in values:
            chosen = [i for i, e in enumerate(examples) if e.get(field) == value]
            part = error_rates([references[i] for i in chosen], [hypotheses[i] for i in chosen])
            for name, rate in part.items():
                rates[f"{name}/{field}={value}"] = rate
    return rates
