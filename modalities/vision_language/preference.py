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

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from omnitune.core.errors import DataError
from omnitune.modalities.base import Examples
from omnitune.modalities.preference import (
    PAIR_SIDES,
    add_mismatched,
    overlong_reason,
    pair_answers,
    parse_pair,
    parse_unpaired,
    unpaired_answers,
    with_item_tensors,
)
from omnitune.modalities.vision_language.collate import encode_conversations, with_images
from omnitune.modalities.vision_language.data import image_paths, records, text_of, token_length
from omnitune.modalities.vision_language.images import ImageProblem, open_image
from omnitune.modalities.vision_language.options import vision_options

if TYPE_CHECKING:
    from omnitune.modalities.base import RunSettings


def read_vlm_pairs(source: str, config: RunSettings, processor: Any, training: bool) -> Examples:
    return _read(
        source,
        config,
        processor,
        Examples(items=[], source=source, noun="pairs"),
        parse_pair,
        pair_answers,
    )


def read_vlm_unpaired(source: str, config: RunSettings, processor: Any, training: bool) -> Examples:
    answers = _read(
        source,
        config,
        processor,
        Examples(items=[], source=source, noun="answers"),
        parse_unpaired,
        unpaired_answers,
    )
    add_mismatched(answers.items)
    return answers


def _read(
    source: str,
    config: RunSettings,
    processor: Any,
    found: Examples,
    parse: Callable[[dict[str, Any]], tuple],
    answers_of: Callable[[tuple], tuple[dict[str, str], dict[str, Any]]],
) -> Examples:
    """Fill `found` with the rows that `parse` accepts (a `question` is the prompt where the
    row has no other), whose images open and whose prompt plus each answer fits;
    `answers_of(parsed)` gives the answers by side (the first is the one generated metrics
    compare with) and the item's other fields, kept beside the prompt's messages and images.
    The rest are counted in `found.skipped` by reason."""
    options = vision_options(config)
    for where, base, record in records(source, options, found):
        if "prompt" not in record and "messages" not in record and "question" in record:
            record = {**record, "prompt": record["question"]}
        parsed = parse(record)
        if parsed[0] is None:
            found.skipped[parsed[-1]] += 1
            continue
        messages = _with_parts(parsed[0], record)
        images = image_paths(messages, record, where, base)
        if not images:
            found.skipped["no image in the prompt"] += 1
            continue
        try:
            opened = [
                open_image(path, options.max_pixels, options.max_decode_pixels) for path in images
            ]
        except ImageProblem as problem:
            found.skipped[problem.reason] += 1
            continue
        answers, fields = answers_of(parsed)
        texts = tuple(answers.values())
        tokens = _longest(processor, (messages, opened), texts, config, where, found)
        if tokens is None:
            continue
        item = {
            "messages": messages,
            "images": images,
            **answers,
            **fields,
            "answer": texts[0],
            "prompt": " ".join(text_of(m) for m in messages),
        }
        found.add(item, record, config.data.balance.by, length=tokens)
    return found


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
    found.skipped[overlong_reason(limit, noun)] += 1
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
        return with_item_tensors(encode_conversations(processor, conversations, True), pairs)

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
