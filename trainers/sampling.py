"""The order in which training examples are visited: seeded, resumable, optionally rebalanced.

An epoch's order is a pure function of (seed, epoch), so a resumed run recomputes it and skips
to the saved position without reading the skipped examples. Every global batch is full (the
last one wraps around to the start of the epoch's order), so all ranks take the same number of
steps. With a balance strategy, each epoch draws examples with replacement, weighted by group.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np


def group_weights(groups: list[str | None], strategy: str, temperature: float) -> np.ndarray | None:
    """Per-example sampling probabilities for `strategy`, or None for the data's own mix."""
    if strategy == "none":
        return None
    labels = ["(none)" if g is None else g for g in groups]
    counts = Counter(labels)
    if strategy in {"oversample", "undersample"}:
        share = {g: 1.0 / len(counts) for g in counts}
    else:  # temperature: p(group) proportional to n_group ** T
        mass = {g: n**temperature for g, n in counts.items()}
        total = sum(mass.values())
        share = {g: m / total for g, m in mass.items()}
    weights = np.array([share[g] / counts[g] for g in labels], dtype=np.float64)
    return weights / weights.sum()


def epoch_length(groups: list[str | None], strategy: str) -> int:
    counts = Counter("(none)" if g is None else g for g in groups)
    if strategy == "oversample":
        return max(counts.values()) * len(counts)
    if strategy == "undersample":
        return min(counts.values()) * len(counts)
    return len(groups)


def distribution_report(groups: list[str | None], weights: np.ndarray | None) -> str:
    """'group: before% -> after%' for the run log (after = expected share under the weights)."""
    labels = ["(none)" if g is None else g for g in groups]
    counts = Counter(labels)
    total = len(labels)
    after: Counter[str] = Counter()
    if weights is not None:
        for label, weight in zip(labels, weights, strict=True):
            after[label] += float(weight)
    parts = []
    for group in sorted(counts):
        before = counts[group] / total
        expected = after[group] if weights is not None else before
        parts.append(f"{group}: {before:.1%} -> {expected:.1%}")
    return "; ".join(parts)


@dataclass(frozen=True)
class BatchPlan:
    """Global micro-batches of example indices; rank r takes rows [r*b, (r+1)*b) of each."""

    n_examples: int
    per_device_batch: int
    world_size: int
    seed: int
    weights: np.ndarray | None = None
    epoch_size: int | None = None
    lengths: np.ndarray | None = None  # set: batches hold examples of similar length

    #: Length grouping sorts windows of this many global batches (HF's LengthGroupedSampler
    #: uses 50 too): wide enough to find similar lengths, narrow enough to stay random.
    WINDOW_BATCHES = 50

    @property
    def global_batch(self) -> int:
        return self.per_device_batch * self.world_size

    @property
    def batches_per_epoch(self) -> int:
        size = self.epoch_size or self.n_examples
        return max(1, -(-size // self.global_batch))

    def epoch_order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        if self.weights is None:
            order = rng.permutation(self.n_examples)
        else:
            size = self.epoch_size or self.n_examples
            order = rng.choice(self.n_examples, size=size, replace=True, p=self.weights)
        if self.lengths is not None:
            order = self._group_by_length(order, rng)
        return order

    def _group_by_length(self, order: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Sort each window of the shuffled order by length (longest first), cut it into global
        batches, and shuffle the batches: similar lengths share a batch, the epoch stays random.
        The partial last batch stays last, so the wrap-around rule of `batch()` still holds."""
        assert self.lengths is not None
        window = self.global_batch * self.WINDOW_BATCHES
        chunks = []
        for start in range(0, len(order), window):
            part = order[start : start + window]
            chunks.append(part[np.argsort(-self.lengths[part], kind="stable")])
        ordered = np.concatenate(chunks)
        full = len(ordered) // self.global_batch
        batches = ordered[: full * self.global_batch].reshape(full, self.global_batch)
        shuffled = batches[rng.permutation(full)].reshape(-1)
        return np.concatenate([shuffled, ordered[full * self.global_batch :]])

    def batch(self, order: np.ndarray, index: int, rank: int) -> list[int]:
        start = index * self.global_batch + rank * self.per_device_batch
        positions = np.arange(start, start + self.per_device_batch) % len(order)
        return order[positions].tolist()
