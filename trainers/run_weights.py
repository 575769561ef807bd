"""Which weights of a run a command uses: one rule for `train`'s saved folder, `eval`,
`export`, serving and the demo's table.

A run keeps checkpoints (the last K and the best by its selection metric). Every command that
reads a run's weights takes `--checkpoint best|last|step-N` (default `best`: the checkpoint
whose evaluation scored best on the run's selection metric; a run that never evaluated has no
best, and its last checkpoint is used), prints which checkpoint it used, and never writes into
the run's own folders. `train` saves the best checkpoint's weights as `RUN/adapter` (or
`RUN/model`), so serving that folder serves the same weights that `eval` scores.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omnitune.core.errors import ConfigError
from omnitune.trainers.checkpoint import checkpoint_dir, list_checkpoints

if TYPE_CHECKING:
    from omnitune.trainers.config import RunConfig

#: What --checkpoint takes (besides a checkpoint folder, from Python).
CHOICES_HELP = "best (default: the best evaluation), last, or step-N"


@dataclass(frozen=True)
class ChosenCheckpoint:
    """A run's checkpoint picked by a rule, with the evaluation that justifies it."""

    path: Path
    step: int
    rule: str  # "best", "last" or "step-N"
    last_step: int
    metric: str | None = None  # the run's selection metric, when that step was evaluated
    value: float | None = None
    metrics: dict[str, float] | None = None  # every metric of that step's evaluation

    def describe(self) -> str:
        """`best checkpoint, step 40 of 60 (wer 0.2790)`: what a command prints."""
        text = f"{self.rule} checkpoint, step {self.step} of {self.last_step}"
        if self.metric is not None and self.value is not None:
            text += f" ({self.metric} {self.value:.4f})"
        elif self.rule == "last":
            text += " (no evaluation chose a best)"
        return text

    def as_dict(self) -> dict[str, Any]:
        """What summary.json and `eval --json` record (the folder is the run's to know)."""
        fields = {k: v for k, v in asdict(self).items() if k != "path"}
        return {**fields, "metrics": self.metrics or {}}


def choose_checkpoint(run_dir: str | Path, which: str = "best") -> ChosenCheckpoint:
    """The checkpoint `which` names in `run_dir` (see the module docstring)."""
    run_dir = Path(run_dir)
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise ConfigError(f"{run_dir}: no checkpoints (is this a run folder?)")
    state = json.loads((checkpoints[-1] / "state.json").read_text())
    last_step = int(state["step"])
    history = {int(r["step"]): r for r in state.get("history", [])}
    metric = state.get("selection_metric")
    best = state.get("best_step")
    # A run from before step 0 stopped being a candidate can name step 0 as its best: it has
    # no checkpoint, and such a run falls back to its last one, as a run without evaluation.
    if which == "best" and best is not None and checkpoint_dir(run_dir, int(best)).is_dir():
        step, rule, path = int(best), "best", checkpoint_dir(run_dir, int(best))
    elif which in ("best", "last"):
        step, rule, path = last_step, "last", checkpoints[-1]
    elif re.fullmatch(r"step-\d+", which):
        step, rule = int(which.removeprefix("step-")), which
        path = checkpoint_dir(run_dir, step)
        if not path.is_dir():
            kept = ", ".join(f"step-{int(p.name.removeprefix('step-'))}" for p in checkpoints)
            raise ConfigError(f"--checkpoint: {run_dir} has no {which} (kept: {kept})")
    elif (Path(which) / "state.json").is_file():
        path = Path(which)
        step = int(json.loads((path / "state.json").read_text())["step"])
        rule = f"step-{step}"
    else:
        raise ConfigError(f"--checkpoint: '{which}' is not {CHOICES_HELP} or a checkpoint folder")
    record = history.get(step)
    metrics = None
    if record is not None:
        metrics = {k: float(v) for k, v in record.items() if k != "step"}
    value = metrics.get(metric) if metrics and metric else None
    return ChosenCheckpoint(path, step, rule, last_step, metric, value, metrics)


def saved_checkpoint_step(run_dir: Path) -> int | None:
    """The step whose weights `train` saved as the run's adapter/model folder (summary.json)."""
    summary = run_dir / "summary.json"
    if not summary.is_file():
        return None
    saved = json.loads(summary.read_text()).get("checkpoint") or {}
    return saved.get("step")


def load_checkpoint_model(config: RunConfig, checkpoint: Path) -> tuple[Any, Any, Any]:
    """The run's model rebuilt from its config (base, PEFT method) with the checkpoint's
    trained tensors; returns (prepared model, processor, PreparedModel)."""
    import torch
    from safetensors.torch import load_file

    from omnitune.modalities.base import get_modality
    from omnitune.trainers.peft_methods import prepare_model

    if config.peft.method == "qlora":
        config.peft.method = "lora"  # same adapter, attached to unquantised weights
    modality = get_modality(config.model.modality)
    model, processor = modality.load(config.model)
    prepared = prepare_model(
        model,
        config.peft,
        modality.targets(model),
        modality.task_type,
        config.train.seed,
        train_router=config.moe.train_router,
    )
    parameters = dict(prepared.model.named_parameters())
    with torch.no_grad():
        for name, value in load_file(checkpoint / "trainable.safetensors").items():
            if name.startswith("heads."):  # an objective's heads (PPO's value head): not policy
                continue
            if name not in parameters:
                raise ConfigError(f"{checkpoint}: tensor {name} does not fit this run's model")
            parameters[name].copy_(value)
    return prepared.model, processor, prepared
