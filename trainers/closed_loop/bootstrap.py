"""Paired bootstrap intervals for the difference of a metric between two models scored on
the same examples (Efron & Tibshirani 1993, ch. 13; the paired form resamples examples, so
both models see the same resample and the examples' shared difficulty cancels out).

A metric over a set of examples is a ratio of sums, sum(values) / sum(weights) (exact match
is 1 or 0 over 1 per example; WER is word errors over reference words; loss is summed token
loss over target tokens), optionally transformed (perplexity is exp of the loss). Resampling
examples and recomputing the ratio gives corpus-level metrics exactly as the evaluation
computes them, not a mean of per-example rates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: Metrics computed from another metric's per-example parts.
DERIVED: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
    "perplexity": ("loss", lambda loss: np.exp(np.minimum(loss, 50.0))),
}


@dataclass(frozen=True)
class Column:
    """A metric's per-example parts for one model on one slice."""

    values: np.ndarray
    weights: np.ndarray

    @classmethod
    def of(cls, parts: tuple[list[float], list[float]]) -> Column:
        return cls(np.asarray(parts[0], dtype=np.float64), np.asarray(parts[1], dtype=np.float64))

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class Difference:
    """Champion and challenger values, the challenger's gain (positive: better in the
    metric's direction) and its bootstrap interval."""

    champion: float
    challenger: float
    gain: float
    low: float
    high: float
    examples: int


def metric_value(column: Column, transform: Callable | None = None) -> float:
    total = column.weights.sum()
    if total == 0:
        return math.nan
    value = np.asarray(column.values.sum() / total)
    return float(transform(value) if transform else value)


def paired_difference(
    champion: Column,
    challenger: Column,
    higher_is_better: bool,
    confidence: float,
    resamples: int,
    seed: int,
    transform: Callable | None = None,
) -> Difference:
    """The challenger's gain over the champion with a percentile bootstrap interval at
    `confidence`, resampling examples (the same indices for both models)."""
    if len(champion) != len(challenger):
        raise ValueError(
            f"paired bootstrap over {len(champion)} and {len(challenger)} examples: "
            "both models must be scored on the same examples"
        )
    sign = 1.0 if higher_is_better else -1.0
    a, b = metric_value(champion, transform), metric_value(challenger, transform)
    n = len(champion)
    rng = np.random.default_rng(seed)
    gains = []
    for start in range(0, resamples, 500):  # bounded memory: 500 x n indices at a time
        index = rng.integers(0, n, size=(min(500, resamples - start), n))
        gains.append(
            sign * (_ratio(challenger, index, transform) - _ratio(champion, index, transform))
        )
    drawn = np.concatenate(gains)
    drawn = drawn[np.isfinite(drawn)]
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = (
        (float(np.percentile(drawn, tail)), float(np.percentile(drawn, 100.0 - tail)))
        if len(drawn)
        else (math.nan, math.nan)
    )
    return Difference(a, b, sign * (b - a), low, high, n)


def _ratio(column: Column, index: np.ndarray, transform: Callable | None) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = column.values[index].sum(axis=1) / column.weights[index].sum(axis=1)
    return transform(ratio) if transform else ratio
