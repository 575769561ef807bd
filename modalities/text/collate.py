"""Batching text examples: right-pad to the longest example in the batch."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from omnitune.modalities.text.data import IGNORE

if TYPE_CHECKING:
    from omnitune.modalities.base import RunSettings


def right_padded(rows: list[list[int]], value: int, width: int | None = None) -> Any:
    """A (len(rows), width) long tensor of the rows, padded on the right with `value`;
    width defaults to the longest row."""
    import torch

    width = width or max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for at, row in enumerate(rows):
        out[at, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def padded_batch(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Any]:
    """input_ids, attention_mask and labels of (ids, labels) rows, right-padded."""
    ids = [r[0] for r in rows]
    return {
        "input_ids": right_padded(ids, pad_id),
        "attention_mask": right_padded([[1] * len(i) for i in ids], 0),
        "labels": right_padded([r[1] for r in rows], IGNORE),
    }


def make_text_collator(
    tokenizer: Any, config: RunSettings, training: bool
) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
        return padded_batch([(e["input_ids"], e["labels"]) for e in examples], pad_id)

    return collate
