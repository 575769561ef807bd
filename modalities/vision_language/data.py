"""Vision-language datasets: conversations with image parts, or image/question/answer rows.

Accepted rows (JSONL or CSV):
- `{"messages": [{"role": "user", "content": [{"type": "image", "image": "a.png"},
  {"type": "text", "text": "..."}]}, {"role": "assistant", "content": "..."}]}`
- `{"image": "a.png" | "images": [...], "question": "...", "answer": "..."}`
Image paths are relative to the data file's folder unless absolute. A missing image file is an
error naming the line; an unreadable one is skipped and counted.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omnitune.core.errors import DataError
from omnitune.modalities.base import Examples, default_cache_root
from omnitune.modalities.hf_sources import hf_rows, is_hf_source
from omnitune.modalities.prepared_media import Checked, ItemSchema
from omnitune.modalities.vision_language.images import ImageProblem, open_image
from omnitune.modalities.vision_language.options import vision_options

if TYPE_CHECKING:
    from omnitune.modalities.base import RunSettings


def read_vlm_dataset(source: str, config: RunSettings, processor: Any, training: bool) -> Examples:
    """The usable samples of `source`: checked in `data.num_proc` processes and kept in the
    prepared (Arrow) cache for local files when `data.cache` is on, else row by row."""
    from omnitune.modalities.prepared import processor_fingerprint
    from omnitune.modalities.prepared_media import read_media_dataset

    options = vision_options(config)
    return read_media_dataset(
        "vision_language",
        source,
        config,
        functools.partial(records, source, options),
        VisionRowCheck(processor, options, config.data.max_length),
        _schema,
        {
            "options": options.model_dump(),
            "max_length": config.data.max_length,
            "processor": processor_fingerprint(processor),
        },
    )


def _schema() -> ItemSchema:
    """How a checked sample is stored in the prepared cache (messages as JSON text)."""
    from datasets import Sequence, Value

    return ItemSchema(
        {
            "messages": Value("string"),
            "images": Sequence(Value("string")),
            "answer": Value("string"),
            "prompt": Value("string"),
        },
        json_columns=("messages",),
    )


class VisionRowCheck:
    """One row to a sample: its images opened (unreadable ones skip the row, by reason) and its
    length measured in tokens with the image tokens; a missing image is a DataError."""

    def __init__(self, processor: Any, options: Any, max_length: int) -> None:
        self.processor, self.options, self.max_length = processor, options, max_length

    def __call__(self, where: str, base: Path, record: dict[str, Any]) -> Checked:
        options = self.options
        messages = _as_messages(record)
        if messages is None:
            return Checked(None, reason="no messages or image/question/answer fields")
        images = image_paths(messages, record, where, base)
        try:
            opened = [
                open_image(path, options.max_pixels, options.max_decode_pixels) for path in images
            ]
        except ImageProblem as found:
            return Checked(None, reason=found.reason, media=images)
        answer = next((m for m in reversed(messages) if m["role"] == "assistant"), None)
        if not images or answer is None:
            return Checked(None, reason="no image or no assistant answer", media=images)
        prompt = " ".join(text_of(m) for m in messages if m["role"] != "assistant")
        item = {
            "messages": messages,
            "images": images,
            "answer": text_of(answer),
            "prompt": prompt,
        }
        tokens = token_length(self.processor, item, opened)
        if tokens > self.max_length:
            if options.overlong == "fail":
                raise DataError(
                    f"{where}: {tokens} tokens with its image tokens, over "
                    f"data.max_length={self.max_length}; raise it, or set "
                    "data.options.overlong=drop to skip such samples"
                )
            reason = f"longer than data.max_length ({self.max_length} tokens)"
            return Checked(None, reason=reason, media=images)
        return Checked(item, tokens, media=images)


def image_paths(
    messages: list[dict[str, Any]], record: dict[str, Any], where: str, base: Path
) -> list[str]:
    """The paths of the messages' image parts, in order; each part loses its path (the
    collator puts the opened image there). HF-style rows keep images in an `images` column
    and bare {"type": "image"} parts. A missing file is a DataError naming the row."""
    listed = iter(record.get("images") or [])
    images: list[str] = []
    for message in messages:
        for part in message["content"]:
            if part.get("type") == "image":
                given = part.pop("image", None) or part.pop("path", None) or next(listed, "")
                path = _local_path(str(given))
                path = path if path.is_absolute() else base / path
                if not path.is_file():
                    raise DataError(f"{where}: image file {path} does not exist")
                images.append(str(path))
    return images


def records(
    source: str, options: Any, examples: Examples
) -> Iterator[tuple[str, Path, dict[str, Any]]]:
    """`(where, base folder for relative paths, record)` from a JSONL/CSV file or an HF dataset
    (its `image` / `images` columns read undecoded, in-memory images spilled to the cache)."""
    if is_hf_source(source):
        from datasets import Image

        spill = default_cache_root() / "hf-media"
        media = {"image": Image(decode=False), "images": Image(decode=False)}
        for where, row in hf_rows(source, media, spill, "an 'image' or 'images' column"):
            yield where, Path("."), row
        return
    for line, record in examples.usable_records():
        yield f"{source}:{line}", Path(source).parent, record


def _local_path(given: str) -> Path:
    """A path, or a file:// URL of one (remote URLs are not fetched: no network at run time)."""
    if given.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(given).path))
    if "://" in given:
        raise DataError(f"image '{given}': only local paths and file:// URLs are read")
    return Path(given)


def token_length(processor: Any, item: dict[str, Any], opened: list[Any]) -> int:
    """The sample's length in tokens as the collator will encode it, image tokens included
    (their number depends on the family and, for Idefics3 and Qwen2-VL, on the image size)."""
    pictures = iter(opened)
    conversation = [
        {
            "role": m["role"],
            "content": [
                {"type": "image", "image": next(pictures)} if p.get("type") == "image" else p
                for p in m["content"]
            ],
        }
        for m in item["messages"]
    ]
    encoded = processor.apply_chat_template(
        [conversation], tokenize=True, return_dict=True, return_tensors="np"
    )
    return int(encoded["input_ids"].shape[1])


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


def text_of(message: dict[str, Any]) -> str:
    return " ".join(p["text"] for p in message["content"] if p.get("type") == "text")
