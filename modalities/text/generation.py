"""Generated answers for text prompts, and exact match against the expected answer.

Exact match compares whitespace-normalised strings: "4 2  7" matches "4 2 7", "4 2 8" does
not. Generation is greedy (or beam search, `eval.generation.num_beams`), left-padded so every
prompt continues from its own end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omnitune.modalities.base import RunSettings


def answer_prompts(
    model: Any, tokenizer: Any, prompts: list[list[dict[str, Any]]], config: RunSettings
) -> list[str]:
    """One generated assistant answer per prompt (a list of chat messages)."""
    import torch

    device = next(model.parameters()).device
    generation = config.eval.generation
    answers: list[str] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():  # not inference_mode: see modalities/evaluation.py
            for start in range(0, len(prompts), config.eval.batch_size):
                chunk = prompts[start : start + config.eval.batch_size]
                inputs = encode_prompts(tokenizer, chunk)
                inputs = {k: v.to(device) for k, v in inputs.items()}
                output = model.generate(
                    **inputs,
                    max_new_tokens=generation.max_new_tokens,
                    num_beams=generation.num_beams,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
                new_tokens = output[:, inputs["input_ids"].shape[1] :]
                answers += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    finally:
        model.train(was_training)
    return answers


def encode_prompts(tokenizer: Any, prompts: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Left-padded chat prompts ending in the assistant's turn opening: generation continues
    every prompt from its own end."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        return dict(
            tokenizer.apply_chat_template(
                prompts,
                add_generation_prompt=True,
                return_dict=True,
                return_tensors="pt",
                padding=True,
            )
        )
    finally:
        tokenizer.padding_side = side


def prompt_batch(
    tokenizer: Any, items: list[dict[str, Any]], config: RunSettings
) -> dict[str, Any]:
    """The modality's `prompt_batch`: the generation inputs of each item's prompt messages."""
    return encode_prompts(tokenizer, [item["prompt_messages"] for item in items])


def exact_match(references: list[str], answers: list[str]) -> float:
    pairs = list(zip(references, answers, strict=True))
    if not pairs:
        return float("nan")
    return sum(" ".join(r.split()) == " ".join(a.split()) for r, a in pairs) / len(pairs)


def exact_match_of(
    model: Any, tokenizer: Any, items: list[dict[str, Any]], config: RunSettings
) -> float:
    """Exact match of the model's answers to `items` (each with `prompt_messages`, `answer`)."""
    usable = [i for i in items if "prompt_messages" in i]
    limit = config.data.max_eval_samples or len(usable)
    usable = usable[:limit]
    from omnitune.modalities.evaluation import (
        log_example_scores,
        log_predictions,
        warn_if_generation_too_short,
    )

    warn_if_generation_too_short(tokenizer, [i["answer"] for i in usable], config)
    answers = answer_prompts(model, tokenizer, [i["prompt_messages"] for i in usable], config)
    references = [i["answer"] for i in usable]
    log_predictions(
        [i["prompt_messages"][-1]["content"] for i in usable],
        references,
        answers,
        lambda reference, answer: exact_match([reference], [answer]),
    )
    log_example_scores(
        "exact_match", [exact_match([r], [a]) for r, a in zip(references, answers, strict=True)]
    )
    return exact_match(references, answers)
