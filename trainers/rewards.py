"""Reward functions for online objectives (GRPO), by name, as modalities and objectives are.

A reward function takes the completions of a batch, the rows they answer (each with the
columns of its data row, `answer` among them) and its config entry, and returns one float per
completion. Built in: `exact_match` (the completion equals the row's answer after whitespace
normalisation), `numeric` (the numbers in the completion equal the answer's), `regex` (the
completion matches `pattern`), `length_penalty` (minus the characters beyond `max_chars`,
scaled), and a user's function named `module:function`. The objective's reward is the
weighted sum of its entries. A function that raises, or returns a non-finite value, marks that
completion's reward as failed: the objective counts it and leaves the sample out.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from omnitune.trainers.errors import ConfigError

RewardFunction = Callable[[list[str], list[dict[str, Any]], Any], list[float]]
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class RewardSpec(BaseModel):
    """One entry of `objective.rewards`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        description="exact_match, numeric, regex, length_penalty, or module:function."
    )
    weight: float = Field(1.0, description="Weight in the sum of rewards.")
    column: str = Field("answer", description="The row column holding the reference answer.")
    pattern: str | None = Field(None, description="regex: the pattern a completion must match.")
    max_chars: int = Field(200, ge=0, description="length_penalty: characters allowed free.")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in REWARDS and ":" not in name:
            raise ValueError(
                f"unknown reward '{name}' (known: {', '.join(REWARDS)}, or module:function)"
            )
        return name


def exact_match(completions: list[str], rows: list[dict], spec: RewardSpec) -> list[float]:
    return [
        float(" ".join(c.split()) == " ".join(str(r[spec.column]).split()))
        for c, r in zip(completions, rows, strict=True)
    ]


def numeric(completions: list[str], rows: list[dict], spec: RewardSpec) -> list[float]:
    return [
        float(NUMBER.findall(c) == NUMBER.findall(str(r[spec.column])))
        for c, r in zip(completions, rows, strict=True)
    ]


def regex(completions: list[str], rows: list[dict], spec: RewardSpec) -> list[float]:
    if not spec.pattern:
        raise ConfigError("objective.rewards: regex needs a pattern")
    compiled = re.compile(spec.pattern)
    return [float(compiled.fullmatch(c.strip()) is not None) for c in completions]


def length_penalty(completions: list[str], rows: list[dict], spec: RewardSpec) -> list[float]:
    return [-max(0, len(c) - spec.max_chars) / max(spec.max_chars, 1) for c in completions]


REWARDS: dict[str, RewardFunction] = {
    "exact_match": exact_match,
    "numeric": numeric,
    "regex": regex,
    "length_penalty": length_penalty,
}


def resolve(spec: RewardSpec) -> RewardFunction:
    """The function an entry names: a built-in, or `module:function` imported now."""
    if spec.name in REWARDS:
        return REWARDS[spec.name]
    if ":" not in spec.name:
        known = ", ".join(REWARDS)
        raise ConfigError(
            f"objective.rewards: unknown '{spec.name}' (known: {known}, or module:function)"
        )
    module, _, name = spec.name.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"objective.rewards: cannot import '{spec.name}': {exc}") from None


def score(
    specs: list[RewardSpec], completions: list[str], rows: list[dict[str, Any]]
) -> tuple[list[float | None], dict[str, float], int]:
    """Weighted total per completion (None where a function failed for it), each function's
    mean over the completions it scored, and how many completions failed."""
    totals: list[float | None] = [0.0] * len(completions)
    means: dict[str, float] = {}
    for spec in specs:
        function = resolve(spec)
        values = _call(function, completions, rows, spec)
        scored = []
        for at, value in enumerate(values):
            try:
                value = float(value)
            except (TypeError, ValueError):
                value = math.nan
            if not math.isfinite(value) or totals[at] is None:
                totals[at] = None
                continue
            totals[at] += spec.weight * value
            scored.append(value)
        means[spec.name] = sum(scored) / len(scored) if scored else math.nan
    return totals, means, sum(t is None for t in totals)


def _call(
    function: RewardFunction, completions: list[str], rows: list[dict], spec: RewardSpec
) -> list[Any]:
    """The function on the whole batch; where that raises, on each completion alone, so one
    bad sample costs only itself (NaN marks the ones that still fail)."""
    try:
        values = list(function(completions, rows, spec))
        if len(values) == len(completions):
            return values
    except Exception:  # a user's function: its failure costs samples, never the run
        pass
    values = []
    for completion, row in zip(completions, rows, strict=True):
        try:
            values.append(next(iter(function([completion], [row], spec))))
        except Exception:
            values.append(math.nan)
    return values
