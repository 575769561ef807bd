"""Batching VLM conversations through the processor's own chat template.

The processor expands image placeholders into the family's image tokens and returns every
model-specific field (`pixel_values`, `image_grid_thw`, `mm_token_type_ids`,
`pixel_attention_mask`, ...), which are passed through untouched. Labels keep only the
assistant turns (`return_assistant_tokens_mask`), so prompt and image tokens never count in
the loss. Nothing is truncated, so image tokens are never cut.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from omnitune.modalities.vision_language.images import open_image
from omnitune.modalities.vision_language.options import VisionOptions, vision_options

if TYPE_CHECKING:
    from omnitune.modalities.base import RunSettings


def with_images(example: dict[str, Any], options: VisionOptions, drop_answer: bool = False) -> list:
    """The example's messages with each image placeholder holding its opened image."""
    images = iter(
        open_image(path, options.max_pixels, options.max_decode_pixels)
        for path in example["images"]
    )
    messages = example["messages"][:-1] if drop_answer else example["messages"]
    return [
        {
            "role": m["role"],
            "content": [
                {"type": "image", "image": next(images)} if p.get("type") == "image" else p
                for p in m["content"]
            ],
        }
        for m in messages
    ]


def make_vlm_collator(
    processor: Any, config: RunSettings, training: bool
) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    options = vision_options(config)
    assistant_only = config.objective.assistant_only_loss

    def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
        conversations = [with_images(e, options) for e in examples]
        return encode_conversations(processor, conversations, assistant_only)

    return collate


def encode_conversations(
    processor: Any, conversations: list[list[dict[str, Any]]], assistant_only: bool
) -> dict[str, Any]:
    """One right-padded batch of conversations (images opened), labels on the assistant turns
    (or on every real token without `assistant_only`)."""
    processor.tokenizer.padding_side = "right"
    batch = dict(
        processor.apply_chat_template(
            conversations,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            padding=True,
            return_assistant_tokens_mask=True,
        )
    )
    keep = batch.pop("assistant_masks").bool() if assistant_only else None
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    if keep is not None:
        labels = labels.masked_fill(~keep, -100)
    batch["labels"] = labels
    return batch
