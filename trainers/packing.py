"""Padding-free packing for SFT: examples concatenated into rows of at most `data.max_length`.

Each row is a list of whole examples (best-fit decreasing: the longest examples first, each into
the fullest row it still fits, as TRL's "bfd" strategy does), so no example is split. Position
ids restart at 0 for every example, and each example's first label is masked: that token would
otherwise be predicted from the end of the previous example. The batch carries no attention
mask, so transformers derives a block-diagonal causal mask from the position ids
(`masking_utils.find_packed_sequence_indices` for eager/SDPA; the varlen kernels for
flash-attention): attention never crosses an example boundary, and every example's logits are
those of the example alone.

The packing is a pure function of the examples and the seed, computed once when the data is
read, so the sampler, exact resume and `accelerate launch` sharding see packed rows as they see
examples.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable
from typing import Any

from omnitune.modalities.base import Examples

IGNORE = -100


def pack_rows(lengths: list[int], capacity: int, seed: int) -> list[list[int]]:
    """Indices of the examples in each row; every row's lengths add up to at most `capacity`.

    Examples of equal length are taken in a seeded random order, so rows do not group the
    dataset's neighbours together; rows come out shuffled by the same seed.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    order.sort(key=lambda i: -lengths[i])  # stable: ties keep the shuffled order
    rows: list[list[int]] = []
    # (space left, row index), sorted: the best fit is the first row with enough space.
    space: list[tuple[int, int]] = []
    for index in order:
        need = lengths[index]
        if need > capacity:
            raise ValueError(f"example {index} has {need} tokens, over the row size {capacity}")
        at = bisect.bisect_left(space, (need, -1))
        if at == len(space):
            rows.append([index])
            bisect.insort(space, (capacity - need, len(rows) - 1))
            continue
        left, row = space.pop(at)
        rows[row].append(index)
        bisect.insort(space, (left - need, row))
    rng.shuffle(rows)
    return rows


def pack_examples(examples: Examples, max_length: int, seed: int) -> Examples:
    """The packed rows of `examples` as a new `Examples`; the unpacked set stays reachable as
    `.unpacked` (the reference profile describes examples, not rows)."""
    lengths = [len(item["input_ids"]) for item in examples.items]
    packed = Examples(items=[], source=examples.source, skipped=examples.skipped)
    packed.truncated = examples.truncated
    packed.unpacked = examples
    for row in pack_rows(lengths, max_length, seed):
        input_ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for index in row:
            item = examples.items[index]
            input_ids += item["input_ids"]
            labels += [IGNORE, *item["labels"][1:]]
            positions += range(len(item["input_ids"]))
        packed.items.append(
            {"input_ids": input_ids, "labels": labels, "position_ids": positions, "rows": len(row)}
        )
        packed.lengths.append(float(len(input_ids)))
        packed.groups.append(None)
    return packed


def make_packed_collator(tokenizer: Any) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """Rows right-padded to the longest row of the batch. The padding forms one more sequence
    (its positions restart at 0, its labels are ignored), so no attention mask is needed."""
    from omnitune.modalities.text.collate import right_padded

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
        width = max(len(r["input_ids"]) for r in rows)
        # The padding's positions restart at 0: it is a sequence of its own.
        positions = [[*r["position_ids"], *range(width - len(r["input_ids"]))] for r in rows]
        # use_cache=False: with a cache object transformers skips the packed-sequence mask.
        return {
            "input_ids": right_padded([r["input_ids"] for r in rows], pad_id),
            "labels": right_padded([r["labels"] for r in rows], IGNORE),
            "position_ids": right_padded(positions, 0),
            "use_cache": False,
        }

    return collate
