"""Preference rows, shared by the text and vision-language readers.

A pair row (DPO, ORPO) holds a prompt and two answers to it:
- prompt: `prompt` (a string, or a list of chat messages) or `messages` (the conversation up to
  the answer); vision-language prompts carry image parts, or name images in `image`/`images`
- `chosen` and `rejected`: strings, an assistant message, or a list of messages whose last one
  is the assistant's answer (TRL's conversational format)
An unpaired row (KTO; what `omnitune monitor export` writes under `kto/`) holds a prompt, one
answer and a verdict on it:
- the prompt as above; the answer in `completion` (same forms as `chosen`);
- `label`: true when the answer is desirable (thumbs up), false when it is not.
A row that cannot be used yields a reason, which the readers count.
"""

from __future__ import annotations

from typing import Any


def parse_pair(record: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, str, str, str]:
    """`(prompt messages, chosen, rejected, problem)`; problem is "" for a usable row."""
    messages, problem = parse_prompt(record)
    if messages is None:
        return None, "", "", problem
    chosen, rejected = answer_text(record.get("chosen")), answer_text(record.get("rejected"))
    if chosen is None or rejected is None:
        return None, "", "", "no chosen or rejected answer"
    if not chosen.strip() or not rejected.strip():
        return None, "", "", "empty chosen or rejected answer"
    if chosen == rejected:
        return None, "", "", "chosen and rejected are identical"
    return messages, chosen, rejected, ""


def parse_unpaired(record: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, str, bool, str]:
    """`(prompt messages, completion, desirable, problem)`; problem is "" for a usable row."""
    messages, problem = parse_prompt(record)
    if messages is None:
        return None, "", False, problem
    completion = answer_text(record.get("completion"))
    if completion is None:
        return None, "", False, "no completion"
    if not completion.strip():
        return None, "", False, "empty completion"
    label = record.get("label")
    if not isinstance(label, bool):
        return None, "", False, "label is not true or false"
    return messages, completion, label, ""


def parse_prompt(record: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, str]:
    """The row's prompt as chat messages, or None and why it cannot be used."""
    prompt = record.get("prompt", record.get("messages"))
    if prompt is None:
        return None, "no prompt or messages field"
    if isinstance(prompt, str):
        messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and all(
        isinstance(m, dict) and "role" in m and "content" in m for m in prompt
    ):
        messages = [dict(m) for m in prompt]
    else:
        return None, "malformed prompt messages"
    if messages and messages[-1]["role"] == "assistant":
        return None, "prompt ends with an assistant turn"
    return messages, ""


def pair_answers(parsed: tuple) -> tuple[dict[str, str], dict[str, Any]]:
    """A parsed pair's answers by side, and its other item fields (none)."""
    return {"chosen": parsed[1], "rejected": parsed[2]}, {}


def unpaired_answers(parsed: tuple) -> tuple[dict[str, str], dict[str, Any]]:
    """A parsed unpaired row's answer by side, and its verdict."""
    return {"completion": parsed[1]}, {"desirable": parsed[2]}


def add_mismatched(items: list[dict[str, Any]], seed: int = 0) -> None:
    """Give each unpaired item the completion of its `mismatched_partners` partner as its
    `mismatched` answer (KTO's KL estimate scores it after the item's own prompt)."""
    partners = mismatched_partners(len(items), seed)
    for item, partner in zip(items, partners, strict=True):
        item["mismatched"] = items[partner]["completion"]


def mismatched_partners(count: int, seed: int) -> list[int]:
    """For each of `count` rows, another row whose answer it is paired with for KTO's KL
    estimate: a seeded shuffle of the rows, each taking the answer of the next one round
    the cycle, so no row is its own partner (when there are two or more) and every answer
    is used once. Fixed at reading time, so the pairing survives shuffling and resuming and
    the reference scores of both rows can be precomputed."""
    import random

    order = list(range(count))
    random.Random(seed).shuffle(order)
    partners = [0] * count
    for position, row in enumerate(order):
        partners[row] = order[(position + 1) % count]
    return partners


def answer_text(value: Any) -> str | None:
    """The answer's text from a string, a message, or a list of messages (the last one)."""
    if isinstance(value, list) and value:
        value = value[-1]
    if isinstance(value, dict):
        if value.get("role", "assistant") != "assistant":
            return None
        value = value.get("content")
        if isinstance(value, list):  # content parts
            texts = [p.get("text", "") for p in value if isinstance(p, dict)]
            value = " ".join(t for t in texts if t)
    return value if isinstance(value, str) else None


def overlong_reason(limit: int, noun: str = "pair") -> str:
    """Why an over-long `noun` ("pair", or "row" for an unpaired answer) was skipped."""
    return f"{noun} longer than data.max_length ({limit} tokens)"


def last_span(labels: list[int], ignore: int = -100) -> list[int]:
    """Labels with only the last contiguous run of trained tokens kept: the final assistant
    answer, not earlier assistant turns of a multi-turn prompt."""
    end = len(labels)
    while end > 0 and labels[end - 1] == ignore:
        end -= 1
    start = end
    while start > 0 and labels[start - 1] != ignore:
        start -= 1
    return [t if start <= i < end else ignore for i, t in enumerate(labels)]


#: The two answers a collated batch scores, first rows then second rows: a pair's chosen and
#: rejected answers, or an unpaired row's completion and its mismatched partner's (KTO).
PAIR_SIDES = ("chosen", "rejected")
UNPAIRED_SIDES = ("completion", "mismatched")


def with_item_tensors(batch: dict[str, Any], pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """Add what the items carry beside their answers, as tensors: KTO's `desirable` flags,
    and precomputed reference log-probabilities (first answers then second) where there are."""
    import torch

    if "desirable" in pairs[0]:
        batch["desirable"] = torch.tensor([p["desirable"] for p in pairs], dtype=torch.bool)
    if "reference_logps" not in pairs[0]:
        return batch
    first = [p["reference_logps"][0] for p in pairs]
    second = [p["reference_logps"][1] for p in pairs]
    batch["reference_logps"] = torch.tensor(first + second, dtype=torch.float32)
    return batch
