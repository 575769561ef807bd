"""Preference rows, shared by the text and vision-language readers.

A row holds a prompt and two answers to it:
- prompt: `prompt` (a string, or a list of chat messages) or `messages` (the conversation up to
  the answer); vision-language prompts carry image parts, or name images in `image`/`images`
- `chosen` and `rejected`: strings, an assistant message, or a list of messages whose last one
  is the assistant's answer (TRL's conversational format)
A row that cannot be used yields a reason, which the readers count.
"""

from __future__ import annotations

from typing import Any


def parse_pair(record: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, str, str, str]:
    """`(prompt messages, chosen, rejected, problem)`; problem is "" for a usable row."""
    prompt = record.get("prompt", record.get("messages"))
    if prompt is None:
        return None, "", "", "no prompt or messages field"
    if isinstance(prompt, str):
        messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and all(
        isinstance(m, dict) and "role" in m and "content" in m for m in prompt
    ):
        messages = [dict(m) for m in prompt]
    else:
        return None, "", "", "malformed prompt messages"
    if messages and messages[-1]["role"] == "assistant":
        return None, "", "", "prompt ends with an assistant turn"
    chosen, rejected = answer_text(record.get("chosen")), answer_text(record.get("rejected"))
    if chosen is None or rejected is None:
        return None, "", "", "no chosen or rejected answer"
    if not chosen.strip() or not rejected.strip():
        return None, "", "", "empty chosen or rejected answer"
    if chosen == rejected:
        return None, "", "", "chosen and rejected are identical"
    return messages, chosen, rejected, ""


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


def overlong_pair_reason(limit: int) -> str:
    return f"pair longer than data.max_length ({limit} tokens)"


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


def with_reference_logps(batch: dict[str, Any], pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """Add the pairs' precomputed reference log-probabilities (chosen then rejected), if any."""
    if "reference_logps" not in pairs[0]:
        return batch
    import torch

    chosen = [p["reference_logps"][0] for p in pairs]
    rejected = [p["reference_logps"][1] for p in pairs]
    batch["reference_logps"] = torch.tensor(chosen + rejected, dtype=torch.float32)
    return batch
