"""Vision-language preference data: pairs for DPO and ORPO (an image prompt and two answers)
and unpaired answers for KTO (an image prompt, a completion and a desirable/undesirable label).

Rows: `{"image": "a.png" | "images": [...], "prompt" | "question": "...", "chosen": "...",
"rejected": "..."}` (KTO: `"completion": "...", "label": true|false` instead of the two
answers), or `prompt`/`messages` as chat messages whose content carries image parts (as the SFT
reader takes them). Both answers follow the same prompt, images included; a row whose prompt
plus an answer is longer than `data.max_length` tokens (image tokens counted) is dropped and
counted, or fails the run under `data.options.overlong: fail`. A KTO row's mismatched answer
(another row's completion after this row's prompt, for the KL estimate) is not length-checked:
it only samples the policy's drift.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omnitune.core.errors import DataError
from omnitune.modalities.base import Examples
from omnitune.modalities.preference import (
    PAIR_SIDES,
    mismatched_partners,
    overlong_pair_reason,
    parse_pair,
    parse_unpaired,
    with_reference_logps,
)
from omnitune.modalities.vision_language.collate import encode_conversations, with_images
from omnitune.modalities.vision_language.data import image_paths, records, text_of, token_length
from omnitune.modalities.vision_language.images import ImageProblem, open_image
from omnitune.modalities.vision_language.options import vision_options

if TYPE_CHECKING:
    from omnitune.modalities.base import RunSettings


def read_vlm_pairs(source: str, config: RunSettings, processor: Any, training: bool) -> Examples:
    pairs = Examples(items=[], source=source, noun="pairs")
    for where, base, record, parsed in _parsed(source, config, pairs, parse_pair):
        prompt, chosen, rejected, _ = parsed
        found = _prompt_images(prompt, record, where, base, config, pairs)
        if found is None:
            continue
        messages, images, opened = found
        tokens = _longest(processor, (messages, opened), (chosen, rejected), config, where, pairs)
        if tokens is None:
            continue
        item = {
            "messages": messages,
            "images": images,
            "chosen": chosen,
            "rejected": rejected,
            "answer": chosen,
            "prompt": " ".join(text_of(m) for m in messages),
        }
        pairs.add(item, record, config.data.balance.by, length=tokens)
    return pairs


def read_vlm_unpaired(source: str, config: RunSettings, processor: Any, training: bool) -> Examples:
    answers = Examples(items=[], source=source, noun="answers")
    for where, base, record, parsed in _parsed(source, config, answers, parse_unpaired):
        prompt, completion, desirable, _ = parsed
        found = _prompt_images(prompt, record, where, base, config, answers)
        if found is None:
            continue
        messages, images, opened = found
        tokens = _longest(processor, (messages, opened), (completion,), config, where, answers)
        if tokens is None:
            continue
        item = {
            "messages": messages,
            "images": images,
            "completion": completion,
            "desirable": desirable,
            "answer": completion,
            "prompt": " ".join(text_of(m) for m in messages),
        }
        answers.add(item, record, config.data.balance.by, length=tokens)
    partners = mismatched_partners(len(answers), seed=0)
    for item, partner in zip(answers.items, partners, strict=True):
        item["mismatched"] = answers.items[partner]["completion"]
    return answers


def _parsed(
    source: str, config: RunSettings, found: Examples, parse: Callable[[dict], tuple]
) -> Iterator[tuple[str, Path, dict[str, Any], tuple]]:
    """`(where, folder for relative paths, record, parse(record))` of each row that `parse`
    accepts (a `question` is the prompt where the row has no other); the others are counted
    under the reason it gives."""
    for where, base, record in records(source, vision_options(config), found):
        if "prompt" not in record and "messages" not in record and "question" in record:
            record = {**record, "prompt": record["question"]}
        parsed = parse(record)
        if parsed[0] is None:
            found.skipped[parsed[-1]] += 1
            continue
        yield where, base, record, parsed


def _prompt_images(
    prompt: list[dict[str, Any]],
    record: dict[str, Any],
    where: str,
    base: Path,
    config: RunSettings,
    found: Examples,
) -> tuple[list[dict[str, Any]], list[Any], list[Any]] | None:
    """The prompt's messages with image parts, its image paths and the opened images; None
    (the row counted as skipped) when it has no image or one cannot be used."""
    options = vision_options(config)
    messages = _with_parts(prompt, record)
    images = image_paths(messages, record, where, base)
    if not images:
        found.skipped["no image in the prompt"] += 1
        return None
    try:
        opened = [
            open_image(path, options.max_pixels, options.max_decode_pixels) for path in images
        ]
    except ImageProblem as problem:
        found.skipped[problem.reason] += 1
        return None
    return messages, images, opened


def _longest(
    processor: Any,
    prompt: tuple[list[dict[str, Any]], list[Any]],
    answers: tuple[str, ...],
    config: RunSettings,
    where: str,
    found: Examples,
) -> int | None:
    """The longest of the prompt (messages, opened images) followed by each answer, in tokens
    with the image tokens; None (the row counted as skipped) when that is over
    `data.max_length` under `overlong: drop`."""
    messages, opened = prompt
    limit = config.data.max_length
    tokens = max(
        token_length(processor, {"messages": [*messages, _answer(a)]}, opened) for a in answers
    )
    if tokens <= limit:
        return tokens
    noun = "pair" if len(answers) == 2 else "row"
    if vision_options(config).overlong == "fail":
        raise DataError(
            f"{where}: {noun} of {tokens} tokens with its image tokens, over "
            f"data.max_length={limit}; raise it, or set data.options.overlong=drop"
        )
    reason = overlong_pair_reason(limit)
    found.skipped[reason if noun == "pair" else reason.replace("pair", "row", 1)] += 1
    return None


def _with_parts(prompt: list[dict[str, Any]], record: dict[str, Any]) -> list[dict[str, Any]]:
    """Messages with content as parts; a plain-text prompt gets the row's images first."""
    messages = [
        {
            "role": m["role"],
            "content": (
                [{"type": "text", "text": m["content"]}]
                if isinstance(m["content"], str)
                else [dict(p) for p in m["content"]]
            ),
        }
        for m in prompt
    ]
    has_image = any(p.get("type") == "image" for m in messages for p in m["content"])
    listed = record.get("images") or ([record["image"]] if record.get("image") else [])
    if not has_image and listed:
        first_user = next(m for m in messages if m["role"] == "user")
        first_user["content"] = [
            *({"type": "image", "image": path} for path in listed),
            *first_user["content"],
        ]
    return messages


def _answer(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def conversation(pair: dict[str, Any], answer: str) -> dict[str, Any]:
    """The pair's prompt followed by `answer`, as an SFT example (messages and images)."""
    return {"messages": [*pair["messages"], _answer(answer)], "images": pair["images"]}


def make_pair_collator(
    processor: Any, config: RunSettings, training: bool, sides: tuple[str, str] = PAIR_SIDES
) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """2B rows, the first answers' conversations (chosen, or KTO's completions) then the
    second ones' (rejected, or the mismatched completions), images repeated for both."""
    options = vision_options(config)
    first, second = sides

    def collate(pairs: list[dict[str, Any]]) -> dict[str, Any]:
        examples = [conversation(p, p[first]) for p in pairs]
        examples += [conversation(p, p[second]) for p in pairs]
        conversations = [with_images(e, options) for e in examples]
        return with_reference_logps(encode_conversations(processor, conversations, True), pairs)

    return collate


def pair_metrics(model: Any, processor: Any, pairs: list, config: RunSettings) -> dict[str, float]:
    """VQA accuracy of generated answers against the wanted ones (a pair's chosen answer, a
    desirable KTO completion), when eval.metrics asks."""
    if "vqa_accuracy" not in config.eval.metrics:
        return {}
    from omnitune.modalities.vision_language.metrics import answer_questions, vqa_accuracy

    examples = [conversation(p, p["answer"]) for p in pairs]
    answers = answer_questions(model, processor, examples, config)
    return {"vqa_accuracy": vqa_accuracy([p["answer"] for p in pairs], answers)}
