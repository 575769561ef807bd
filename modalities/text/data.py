"""Reading text training data: chat JSONL, prompt/completion pairs, or plain text.

Accepted rows (JSONL or CSV): `{"messages": [{"role": ..., "content": ...}, ...]}`,
`{"prompt": ..., "completion": ...}` or `{"text": ...}`. Rows that cannot be used are skipped and
counted by reason; labels are -100 outside the assistant's turns when the objective asks for an
assistant-only loss.
"""

from __future__ import annotations

from typing import Any

from omnitune.modalities.base import Examples

IGNORE = -100


def read_text_dataset(source: str, config: Any, tokenizer: Any, training: bool) -> Examples:
    examples = Examples(items=[], source=source)
    group_field = config.data.balance.by
    assistant_only = config.objective.assistant_only_loss
    for _line, record in examples.usable_records():
        encoded, problem = _encode(record, tokenizer, assistant_only, config.data.max_length)
        if encoded is None:
            examples.skipped[problem] += 1
            continue
        examples.add(encoded, record, group_field, length=len(encoded["input_ids"]))
    return examples


def _encode(
    record: dict[str, Any], tokenizer: Any, assistant_only: bool, max_length: int
) -> tuple[dict[str, Any] | None, str]:
    messages = record.get("messages")
    if messages is None and "prompt" in record and "completion" in record:
        messages = [
            {"role": "user", "content": str(record["prompt"])},
            {"role": "assistant", "content": str(record["completion"])},
        ]
    if messages is not None:
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and "role" in m and "content" in m for m in messages
        ):
            return None, "malformed messages"
        encoded = tokenizer.apply_chat_template(
            messages, return_dict=True, return_assistant_tokens_mask=assistant_only
        )
        ids = list(encoded["input_ids"])
        if assistant_only:
            mask = encoded["assistant_masks"]
            labels = [t if m else IGNORE for t, m in zip(ids, mask, strict=True)]
        else:
            labels = list(ids)
        prompt = " ".join(str(m["content"]) for m in messages if m["role"] != "assistant")
    elif isinstance(record.get("text"), str):
        ids = tokenizer(record["text"])["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids = [*ids, tokenizer.eos_token_id]
        labels = list(ids)
        prompt = record["text"]
    else:
        return None, "no messages, prompt/completion or text field"
    ids, labels = ids[:max_length], labels[:max_length]
    if not ids:
        return None, "empty text"
    if all(label == IGNORE for label in labels[1:]):
        return None, "no trainable tokens within max_length"
    return {"input_ids": ids, "labels": labels, "prompt": prompt}, ""
