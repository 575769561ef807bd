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
            return rng.permutation(self.n_examples)
        size = self.epoch_size or self.n_examples
        return rng.choice(self.n_examples, size=size, replace=True, p=self.weights)

    def batch(self, order: np.ndarray, index: int, rank: int) -> list[int]:
        start = index * self.global_batch + rank * self.per_device_batch
        positions = np.arange(start, start + self.per_device_batch) % len(order)
        return order[positions].tolist()
