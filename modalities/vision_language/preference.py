"""Vision-language preference pairs for DPO and ORPO: an image prompt and two answers.

Rows: `{"image": "a.png" | "images": [...], "prompt" | "question": "...", "chosen": "...",
"rejected": "..."}`, or `prompt`/`messages` as chat messages whose content carries image parts
(as the SFT reader takes them). Both answers follow the same prompt, images included; a pair
whose prompt plus either answer is longer than `data.max_length` tokens (image tokens counted)
is dropped and counted, or fails the run under `data.options.overlong: fail`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from omnitune.core.errors import DataError
from omnitune.modalities.base import Examples
from omnitune.modalities.preference import overlong_pair_reason, parse_pair, with_reference_logps
from omnitune.modalities.vision_language.collate import encode_conversations, with_images
from omnitune.modalities.vision_language.data import image_paths, records, text_of, token_length
from omnitune.modalities.vision_language.images import ImageProblem, open_image
from omnitune.modalities.vision_language.options import vision_options

if TYPE_CHECKING:
    from omnitune.modalities.base import RunSettings


def read_vlm_pairs(source: str, config: RunSettings, processor: Any, training: bool) -> Examples:
    options = vision_options(config)
    limit = config.data.max_length
    pairs = Examples(items=[], source=source, noun="pairs")
    for where, base, record in records(source, options, pairs):
        if "prompt" not in record and "messages" not in record and "question" in record:
            record = {**record, "prompt": record["question"]}
        prompt, chosen, rejected, problem = parse_pair(record)
        if prompt is None:
            pairs.skipped[problem] += 1
            continue
        messages = _with_parts(prompt, record)
        images = image_paths(messages, record, where, base)
        if not images:
            pairs.skipped["no image in the prompt"] += 1
            continue
        try:
            opened = [
                open_image(path, options.max_pixels, options.max_decode_pixels) for path in images
            ]
        except ImageProblem as found:
            pairs.skipped[found.reason] += 1
            continue
        tokens = max(
            token_length(processor, {"messages": [*messages, _answer(a)]}, opened)
            for a in (chosen, rejected)
        )
        if tokens > limit:
            if options.overlong == "fail":
                raise DataError(
                    f"{where}: pair of {tokens} tokens with its image tokens, over "
                    f"data.max_length={limit}; raise it, or set data.options.overlong=drop"
                )
            pairs.skipped[overlong_pair_reason(limit)] += 1
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
    processor: Any, config: RunSettings, training: bool
) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """2B rows, the chosen conversations then the rejected ones, images repeated for both."""
    options = vision_options(config)

    def collate(pairs: list[dict[str, Any]]) -> dict[str, Any]:
        examples = [conversation(p, p["chosen"]) for p in pairs]
        examples += [conversation(p, p["rejected"]) for p in pairs]
        conversations = [with_images(e, options) for e in examples]
        return with_reference_logps(encode_conversations(processor, conversations, True), pairs)

    return collate


def pair_metrics(model: Any, processor: Any, pairs: list, config: RunSettings) -> dict[str, float]:
    """VQA accuracy of generated answers against the chosen ones, when eval.metrics asks."""
    if "vqa_accuracy" not in config.eval.metrics:
        return {}
    from omnitune.modalities.vision_language.metrics import answer_questions, vqa_accuracy

    examples = [conversation(p, p["chosen"]) for p in pairs]
    answers = answer_questions(model, processor, examples, config)
    return {"vqa_accuracy": vqa_accuracy([p["chosen"] for p in pairs], answers)}
