"""VQA exact-match accuracy: generate an answer per image question, compare after normalising."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from omnitune.modalities.vision_language.collate import with_images
from omnitune.modalities.vision_language.options import vision_options

if TYPE_CHECKING:
    from omnitune.modalities.base import RunSettings

_PUNCTUATION = re.compile(r"[^\w\s]")


def normalise_answer(text: str) -> str:
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def answer_questions(
    model: Any, processor: Any, examples: list[dict[str, Any]], config: RunSettings
) -> list[str]:
    import torch

    device = next(model.parameters()).device
    generation = config.eval.generation
    answers: list[str] = []
    with torch.no_grad():  # not inference_mode: see modalities/evaluation.py
        for start in range(0, len(examples), config.eval.batch_size):
            chunk = examples[start : start + config.eval.batch_size]
            inputs = prompt_batch(processor, chunk, config)
            inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}
            output = model.generate(
                **inputs,
                max_new_tokens=generation.max_new_tokens,
                num_beams=generation.num_beams,
                do_sample=False,
            )
            new_tokens = output[:, inputs["input_ids"].shape[1] :]
            answers += processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return answers


def prompt_batch(
    processor: Any, items: list[dict[str, Any]], config: RunSettings
) -> dict[str, Any]:
    """Each item's conversation up to its answer, images opened, left-padded (generation
    continues every prompt from its right end), with the family's image fields."""
    options = vision_options(config)
    tokenizer = processor.tokenizer
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        return dict(
            processor.apply_chat_template(
                [with_images(item, options, drop_answer=True) for item in items],
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
                padding=True,
            )
        )
    finally:
        tokenizer.padding_side = side


def vqa_accuracy(references: list[str], answers: list[str]) -> float:
    pairs = list(zip(references, answers, strict=True))
    if not pairs:
        return float("nan")
    return sum(normalise_answer(r) == normalise_answer(a) for r, a in pairs) / len(pairs)
