"""Where each training step's batch comes from: collated in the loop, or by background workers.

`BatchPlan` fixes which examples every step takes. With `train.data_workers: 0` the loop
collates them itself; with N > 0 a `torch.utils.data.DataLoader` with N worker processes
collates the next batches (padding, image processing, feature loading, augmentation) while the
model trains on the current one, driven by a batch sampler that walks the same plan from the
run's position, so the order, the resume point and the results are the same either way.

Randomness in collation (speech augmentation) is drawn from torch's generator re-seeded for
each batch from (seed, epoch, batch, rank) and restored afterwards: a batch is augmented the
same in a worker as in the loop, and the loop's own random stream (dropout) is untouched by
where collation ran. That is what makes workers on and off give the same weights.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from omnitune.trainers.sampling import BatchPlan


def batch_seed(seed: int, epoch: int, batch: int, rank: int) -> int:
    text = f"{seed}:{epoch}:{batch}:{rank}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & (2**63 - 1)


def seeded_collate(collate: Callable[[list[Any]], Any], items: list[Any], seed: int) -> Any:
    """`collate(items)` with torch's CPU generator seeded by `seed`, restored afterwards."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return collate(items)


@dataclass
class Position:
    """The plan's cursor: the epoch and the next batch in it (the run's TrainState fields)."""

    epoch: int
    batch: int

    def advance(self, plan: BatchPlan) -> tuple[int, int]:
        """The (epoch, batch) to take now, moving the cursor past it."""
        if self.batch >= plan.batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
        taken = (self.epoch, self.batch)
        self.batch += 1
        return taken


class PlanSampler:
    """Yields each batch of the plan from a position on, as (index, batch seed) pairs."""

    def __init__(self, plan: BatchPlan, position: Position, rank: int, seed: int) -> None:
        self.plan, self.start, self.rank, self.seed = plan, position, rank, seed

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        cursor = Position(self.start.epoch, self.start.batch)
        order, order_epoch = None, None
        while True:
            epoch, batch = cursor.advance(self.plan)
            if epoch != order_epoch:
                order, order_epoch = self.plan.epoch_order(epoch), epoch
            indices = self.plan.batch(order, batch, self.rank)
            seed = batch_seed(self.seed, epoch, batch, self.rank)
            yield [(index, seed) for index in indices]


class _Tagged:
    """The examples, indexed by (index, seed) pairs so the seed reaches the collate function."""

    def __init__(self, examples: Any) -> None:
        self.examples = examples

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, int, Any]:
        index, seed = key
        return index, seed, self.examples[index]

    def __len__(self) -> int:
        return len(self.examples)


class _Collate:
    """(indices, batch) of tagged items: picklable, so workers can run it."""

    def __init__(self, collate: Callable[[list[Any]], Any]) -> None:
        self.collate = collate

    def __call__(self, tagged: list[tuple[int, int, Any]]) -> tuple[list[int], Any]:
        indices = [index for index, _, _ in tagged]
        return indices, seeded_collate(self.collate, [item for _, _, item in tagged], tagged[0][1])


class BatchSource:
    """The next (indices, collated batch) of the run, advancing its TrainState."""

    def __init__(
        self,
        examples: Any,
        collate: Callable[[list[Any]], Any],
        plan: BatchPlan,
        state: Any,
        rank: int,
        seed: int,
        workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        self.examples, self.collate, self.plan, self.state = examples, collate, plan, state
        self.rank, self.seed, self.workers = rank, seed, workers
        self._order_epoch: int | None = None
        self._order: Any = None
        self._loader: Iterator[tuple[list[int], Any]] | None = None
        if workers > 0:
            import torch
            from torch.utils.data import DataLoader

            # Workers fork after the tokenizer ran here; its Rust thread pool must not be
            # used across the fork (Hugging Face tokenizers warns and disables it anyway).
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            position = Position(state.epoch, state.batch_in_epoch)
            self._loader = iter(
                DataLoader(
                    _Tagged(examples),
                    batch_sampler=PlanSampler(plan, position, rank, seed),
                    collate_fn=_Collate(collate),
                    num_workers=workers,
                    pin_memory=pin_memory,
                    prefetch_factor=2,
                    # Its own generator: the loader draws its workers' base seed from it, which
                    # would otherwise be a draw from the global one, shifting the dropout stream.
                    generator=torch.Generator().manual_seed(seed),
                )
            )

    def next(self) -> tuple[list[int], Any]:
        cursor = Position(self.state.epoch, self.state.batch_in_epoch)
        epoch, batch = cursor.advance(self.plan)
        self.state.epoch, self.state.batch_in_epoch = cursor.epoch, cursor.batch
        if epoch != self._order_epoch:
            self._order, self._order_epoch = self.plan.epoch_order(epoch), epoch
        expected = self.plan.batch(self._order, batch, self.rank)
        if self._loader is None:
            items = [self.examples[i] for i in expected]
            seed = batch_seed(self.seed, epoch, batch, self.rank)
            return expected, seeded_collate(self.collate, items, seed)
        indices, collated = next(self._loader)
        if indices != expected:  # the sampler walks the same plan; this would be a bug
            raise RuntimeError(f"data worker batch {indices[:4]} is not the plan's {expected[:4]}")
        return indices, collated

    def close(self) -> None:
        """Stop the workers (they would otherwise prefetch until the process exits)."""
        self._loader = None
