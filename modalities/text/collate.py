"""Batching text examples: right-pad to the longest example in the batch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omnitune.modalities.text.data import IGNORE


def make_text_collator(
    tokenizer: Any, config: Any, training: bool
) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
        width = max(len(e["input_ids"]) for e in examples)
        input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
        attention = torch.zeros((len(examples), width), dtype=torch.long)
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            input_ids[row, :n] = torch.tensor(example["input_ids"])
            labels[row, :n] = torch.tensor(example["labels"])
            attention[row, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}

    return collate
