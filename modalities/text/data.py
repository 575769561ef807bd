"""Reading text training data: chat JSONL, prompt/completion pairs, or plain text.

Accepted rows (JSONL, CSV, Parquet or a Hugging Face dataset): `{"messages": [{"role": ...,
"content": ...}, ...]}`, `{"prompt": ..., "completion": ...}` or `{"text": ...}`. Rows that
cannot be used are skipped and counted by reason; labels are -100 outside the assistant's turns
when the objective asks for an assistant-only loss. An example longer than `data.max_length` is
dropped and counted, fails the run, or is truncated, as `data.options.overlong` says.
"""

from __future__ import annotations

from typing import Any

from omnitune.modalities.base import Examples
from omnitune.modalities.text.options import text_options
from omnitune.trainers.errors import DataError

IGNORE = -100


def read_text_dataset(source: str, config: Any, tokenizer: Any, training: bool) -> Examples:
    examples = Examples(items=[], source=source)
    group_field = config.data.balance.by
    assistant_only = config.objective.assistant_only_loss
    overlong = text_options(config).overlong
    limit = config.data.max_length
    for line, record in examples.usable_records():
        encoded, problem = _encode(record, tokenizer, assistant_only)
        if encoded is None:
            examples.skipped[problem] += 1
            continue
        tokens = len(encoded["input_ids"])
        if tokens > limit:
            if overlong == "fail":
                raise DataError(
                    f"{source}:{line}: {tokens} tokens, over data.max_length={limit}; raise it, "
                    "or set data.options.overlong=drop (skip such examples) or truncate"
                )
            if overlong == "drop":
                examples.skipped[overlong_reason(limit)] += 1
                continue
            encoded["input_ids"] = encoded["input_ids"][:limit]
            encoded["labels"] = encoded["labels"][:limit]
            if all(label == IGNORE for label in encoded["labels"][1:]):
                examples.skipped["no trainable tokens within max_length"] += 1
                continue
            examples.truncated += 1
        examples.add(encoded, record, group_field, length=len(encoded["input_ids"]))
    return examples


def overlong_reason(limit: int) -> str:
    return f"longer than data.max_length ({limit} tokens)"


def chat_messages(record: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The row as chat messages (`messages`, or `prompt`/`completion`), or None."""
    messages = record.get("messages")
    if messages is None and "prompt" in record and "completion" in record:
        messages = [
            {"role": "user", "content": str(record["prompt"])},
            {"role": "assistant", "content": str(record["completion"])},
        ]
    return messages


def well_formed(messages: Any) -> bool:
    return isinstance(messages, list) and all(
        isinstance(m, dict) and "role" in m and "content" in m for m in messages
    )


def encode_chat(
    tokenizer: Any, messages: list[dict[str, Any]], assistant_only: bool
) -> tuple[list[int], list[int]]:
    """Token ids of a conversation and its labels (-100 outside assistant turns if asked)."""
    encoded = tokenizer.apply_chat_template(
        messages, return_dict=True, return_assistant_tokens_mask=assistant_only
    )
    ids = list(encoded["input_ids"])
    if not assistant_only:
        return ids, list(ids)
    mask = encoded["assistant_masks"]
    return ids, [t if m else IGNORE for t, m in zip(ids, mask, strict=True)]


def _encode(
    record: dict[str, Any], tokenizer: Any, assistant_only: bool
) -> tuple[dict[str, Any] | None, str]:
    messages = chat_messages(record)
    extra: dict[str, Any] = {}
    if messages is not None:
        if not well_formed(messages):
            return None, "malformed messages"
        ids, labels = encode_chat(tokenizer, messages, assistant_only)
        prompt = " ".join(str(m["content"]) for m in messages if m["role"] != "assistant")
        if messages and messages[-1]["role"] == "assistant":
            # What a generated metric (exact_match) asks and expects.
            extra = {"prompt_messages": messages[:-1], "answer": messages[-1]["content"]}
    elif isinstance(record.get("text"), str):
        ids = tokenizer(record["text"])["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids = [*ids, tokenizer.eos_token_id]
        labels = list(ids)
        prompt = record["text"]
    else:
        return None, "no messages, prompt/completion or text field"
    if not ids:
        return None, "empty text"
    if all(label == IGNORE for label in labels[1:]):
        return None, "no trainable tokens"
    return {"input_ids": ids, "labels": labels, "prompt": prompt, **extra}, ""
