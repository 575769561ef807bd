"""Vision-language datasets: conversations with image parts, or image/question/answer rows.

Accepted rows (JSONL or CSV):
- `{"messages": [{"role": "user", "content": [{"type": "image", "image": "a.png"},
  {"type": "text", "text": "..."}]}, {"role": "assistant", "content": "..."}]}`
- `{"image": "a.png" | "images": [...], "question": "...", "answer": "..."}`
Image paths are relative to the data file's folder unless absolute. A missing image file is an
error naming the line; an unreadable one is skipped and counted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omnitune.modalities.base import Examples
from omnitune.modalities.vision_language.images import DEFAULT_MAX_PIXELS, ImageProblem, open_image
from omnitune.trainers.errors import DataError


def read_vlm_dataset(source: str, config: Any, processor: Any, training: bool) -> Examples:
    base = Path(source).parent
    max_pixels = int(config.data.options.get("max_pixels", DEFAULT_MAX_PIXELS))
    group_field = config.data.balance.by
    examples = Examples(items=[], source=source)
    for line, record in examples.usable_records():
        messages = _as_messages(record)
        if messages is None:
            examples.skipped["no messages or image/question/answer fields"] += 1
            continue
        images: list[str] = []
        for message in messages:
            for part in message["content"]:
                if part.get("type") == "image":
                    path = Path(part.pop("image", None) or part.pop("path", ""))
                    path = path if path.is_absolute() else base / path
                    if not path.is_file():
                        raise DataError(f"{source}:{line}: image file {path} does not exist")
                    images.append(str(path))
        try:
            for path in images:
                open_image(path, max_pixels)
        except ImageProblem as found:
            examples.skipped[found.reason] += 1
            continue
        answer = next((m for m in reversed(messages) if m["role"] == "assistant"), None)
        if not images or answer is None:
            examples.skipped["no image or no assistant answer"] += 1
            continue
        prompt = " ".join(_text_of(m) for m in messages if m["role"] != "assistant")
        item = {
            "messages": messages,
            "images": images,
            "answer": _text_of(answer),
            "prompt": prompt,
        }
        examples.add(item, record, group_field, length=len(prompt) + len(item["answer"]))
    return examples


def _as_messages(record: dict[str, Any]) -> list[dict[str, Any]] | None:
    if isinstance(record.get("messages"), list):
        messages = []
        for message in record["messages"]:
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                return None
            content = message["content"]
            if isinstance(content, str):
                content = [{"type": "text", "text": content}]
            messages.append({"role": message["role"], "content": [dict(p) for p in content]})
        return messages
    images = record.get("images") or ([record["image"]] if record.get("image") else None)
    if images and "question" in record and "answer" in record:
        parts = [{"type": "image", "image": p} for p in images]
        return [
            {
                "role": "user",
                "content": [*parts, {"type": "text", "text": str(record["question"])}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": str(record["answer"])}]},
        ]
    return None


def _text_of(message: dict[str, Any]) -> str:
    return " ".join(p["text"] for p in message["content"] if p.get("type") == "text")
