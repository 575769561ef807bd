"""Training objectives by name: what a run optimises, as modalities are what a run reads.

An objective is a small frozen dataclass of functions, like a `Modality`: the trainer core calls
these and never branches on the objective's name. Each objective module builds one `Objective`
as its `OBJECTIVE` attribute; the registry imports it only when it is asked for, and importing an
objective module imports no torch (config checks use `modalities` without loading anything).

- data(modality, source, config, processor, training) -> Examples (SFT examples, preference
  pairs, ...), read through the modality
- collator(modality, processor, config, training) -> callable(list of items) -> batch
- loss(context) -> callable(model, batch, indices) -> (loss tensor, {metric: tensor}): one
  micro-batch's loss and the metrics the run log shows for it
- evaluate(modality, model, processor, examples, config, reference) -> {metric: value}
- metric_directions(modality) -> {metric: "min" | "max"}: what best checkpoints and early
  stopping may select on
- needs_reference: whether `reference` (the frozen starting policy) must be built
- heads(model, config) -> {name: torch module}: trainable parts the objective adds beside the
  model (PPO's value head); the loop optimises them, checkpoints them with the adapter and
  writes them to `heads/<name>.safetensors` at the end (None: no heads)
- options: the pydantic model of the `objective` section when this objective is named
  (`options.ObjectiveOptions` and its subclasses): `RunConfig` picks it by `objective.name`
- applies_updates: the loss takes its own optimizer steps through `LossContext.update` (PPO's
  minibatch epochs over one rollout); the loop then steps the scheduler once per call
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from omnitune.core.errors import ConfigError

if TYPE_CHECKING:
    from omnitune.trainers.config import RunConfig

#: The objective of a run whose config names none.
DEFAULT_OBJECTIVE = "sft"

#: objective name -> module whose `OBJECTIVE` attribute is its `Objective`.
OBJECTIVES: dict[str, str] = {
    "sft": "omnitune.trainers.objectives.sft",
    "dpo": "omnitune.trainers.objectives.dpo",
    "orpo": "omnitune.trainers.objectives.orpo",
    "kto": "omnitune.trainers.objectives.kto",
    "grpo": "omnitune.trainers.objectives.grpo",
    "ppo": "omnitune.trainers.objectives.ppo",
    "distill": "omnitune.trainers.objectives.distill",
}


@dataclass(frozen=True)
class LossContext:
    """What an objective's loss may need beyond the batch: the run config, the training data
    (its groups, for weighted losses), the unwrapped model, its processor and modality (online
    objectives encode and sample prompts), the device, the reference, the objective's heads
    and, for objectives that apply their own updates, `update(loss) -> grad norm` (backward,
    clip, optimizer step; a non-finite loss or norm stops the run as in the loop)."""

    config: RunConfig
    train_set: Any
    model: Any
    processor: Any
    device: Any
    reference: Any = None
    modality: Any = None
    heads: dict[str, Any] = field(default_factory=dict)
    update: Callable[[Any], float | None] | None = None


StepLoss = Callable[[Any, dict[str, Any], list[int]], tuple[Any, dict[str, Any]]]


@dataclass(frozen=True)
class Objective:
    name: str
    reads: str  # what a data row is, for messages: "examples", "preference pairs"
    modalities: frozenset[str]
    needs_reference: bool
    data: Callable[..., Any]
    collator: Callable[..., Callable[[list[dict[str, Any]]], dict[str, Any]]]
    loss: Callable[[LossContext], StepLoss]
    evaluate: Callable[..., dict[str, float]]
    metric_directions: Callable[[Any], dict[str, str]]
    #: The pydantic model of this objective's `objective` section (options.ObjectiveOptions).
    options: type[Any] = field(default=Any)
    heads: Callable[[Any, Any], dict[str, Any]] | None = None
    applies_updates: bool = False


def get_objective(name: str) -> Objective:
    """The registered objective called `name` (imports its module on first use)."""
    if name not in OBJECTIVES:
        raise ConfigError(f"objective.name: unknown '{name}' (known: {', '.join(OBJECTIVES)})")
    return importlib.import_module(OBJECTIVES[name]).OBJECTIVE
