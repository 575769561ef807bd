"""Half Fine-Tuning: in each round, half of the parameter groups train and the rest stay frozen.

Following the survey's description of HFT, parameters are grouped by layer (each block of
each layer stack is a group; embeddings, norms and heads outside the stacks are groups of
their own). Round r covers optimizer steps [r * round_steps, (r + 1) * round_steps). With
`alternate`, even-numbered groups train in even rounds and odd ones in odd rounds; with
`random`, a seeded draw picks the half for each round. The choice is a pure function of the
step, so a resumed run freezes exactly what the uninterrupted run froze.
"""

from __future__ import annotations

import random
import re
from typing import Any

_LAYER = re.compile(r"^(.*?\.(?:layers|layer|h|blocks|block)\.\d+)\.")


def parameter_groups(model: Any) -> dict[str, list[str]]:
    """Group parameter names: one group per layer block, one per other top-level module."""
    groups: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        match = _LAYER.match(name)
        key = match.group(1) if match else ".".join(name.split(".")[:2])
        groups.setdefault(key, []).append(name)
    return groups


class HalfFineTuning:
    """Decides, per optimizer step, which half of the groups trains; applies it to a model."""

    def __init__(self, model: Any, round_steps: int, selection: str, seed: int) -> None:
        self.groups = parameter_groups(model)
        self.names = sorted(self.groups)
        self.round_steps = round_steps
        self.selection = selection
        self.seed = seed
        self._applied_round: int | None = None

    def trained_groups(self, round_index: int) -> list[str]:
        if self.selection == "alternate":
            return [g for i, g in enumerate(self.names) if i % 2 == round_index % 2]
        draw = random.Random(self.seed * 1_000_003 + round_index)
        return sorted(draw.sample(self.names, k=max(1, len(self.names) // 2)))

    def update(self, model: Any, step: int) -> str | None:
        """Set requires_grad for the round containing `step`; returns a log line on a change."""
        round_index = step // self.round_steps
        if round_index == self._applied_round:
            return None
        self._applied_round = round_index
        trained = set(self.trained_groups(round_index))
        parameters = dict(model.named_parameters())
        for group, names in self.groups.items():
            for name in names:
                parameters[name].requires_grad_(group in trained)
                if group not in trained:
                    parameters[name].grad = None
        frozen = sum(p.numel() for p in parameters.values() if not p.requires_grad)
        total = sum(p.numel() for p in parameters.values())
        return (
            f"half fine-tuning round {round_index}: training {len(trained)} of "
            f"{len(self.names)} groups, {frozen / total:.0%} of weights frozen"
        )
