"""`omnitune eval RUN_OR_MODEL [--data FILE] [--checkpoint best|last|step-N]`: the modality's
metrics on a dataset.

RUN_OR_MODEL is a run folder (its config and one of its checkpoints: the best by the run's
selection metric unless asked otherwise, the rule of trainers/run_weights.py), or a model
folder or hub id (its modality is read from its config). Data defaults to the run's eval set.
The run's objective reads and scores the data: a DPO run's eval set is preference pairs, scored
against the same reference policy as in training (the adapter disabled, or the base model
for full fine-tuning), so the reward accuracy matches the training log's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnitune.core.configio import apply_overrides, validate
from omnitune.core.errors import ConfigError
from omnitune.modalities.base import get_modality
from omnitune.trainers.config import RunConfig, load_run_config
from omnitune.trainers.objectives import get_objective
from omnitune.trainers.run_weights import (
    ChosenCheckpoint,
    choose_checkpoint,
    load_checkpoint_model,
    saved_checkpoint_step,
)


@dataclass
class Evaluated:
    """What `omnitune eval` reports: the data, its size, the metrics, and for a run the
    checkpoint scored (None for a model folder or hub id)."""

    data: str
    examples: int
    metrics: dict[str, float]
    checkpoint: ChosenCheckpoint | None = None
    #: per generated example: input, reference, prediction, score (empty when nothing was
    #: generated: a loss-only evaluation)
    predictions: list[dict[str, Any]] = field(default_factory=list)
    #: parameters, weights' MB and the evaluation's speed (trainers/footprint.py)
    footprint: dict[str, Any] = field(default_factory=dict)
    #: a pruned model's stages (before pruning, after pruning, after recovery), when the
    #: target or its run's base model was written by `omnitune prune`
    chain: dict[str, dict[str, Any]] | None = None


def evaluate_target(
    target: str,
    data: str | None,
    overrides: list[str] | None = None,
    checkpoint: str = "best",
    speed: bool = True,
) -> Evaluated:
    """Score a run's checkpoint (`checkpoint`: best, last, step-N) or a model on `data`;
    `speed`: also time the forward pass (about a second) for the footprint."""
    run_dir = Path(target)
    base, chosen = None, None
    if (run_dir / "config.yaml").is_file():
        config = load_run_config(run_dir / "config.yaml", overrides)
        base = config.model.model_copy()  # before _load_run_model points it at RUN/model
        model, processor, chosen = _load_run_model(run_dir, config, checkpoint)
    else:
        config = _config_for_model(target, data, overrides or [])
        model, processor = get_modality(config.model.modality).load(config.model)
    source = data or config.data.eval
    if not source:
        raise ConfigError("--data: no data given and the run has no data.eval")
    modality = get_modality(config.model.modality)
    objective = get_objective(config.objective.name)
    examples = objective.data(modality, source, config, processor, False)
    if len(examples) == 0:
        raise ConfigError(
            f"--data: {source} has no usable {objective.reads} ({examples.summary()})"
        )
    model.eval()
    reference = _reference(model, modality, base) if objective.needs_reference else None
    from omnitune.modalities.evaluation import record_predictions
    from omnitune.trainers.footprint import measure, prune_record, pruning_chain, weights

    with record_predictions() as predictions:
        metrics = objective.evaluate(modality, model, processor, examples, config, reference)
    footprint = weights(model)
    if speed and objective.reads in ("examples", "prompts"):  # the modality's own rows
        collate = modality.collator(processor, config, training=False)
        footprint = measure(model, config.model.modality, collate, examples)
    record = prune_record(base.name_or_path if base is not None else target)
    chain = None
    if record is not None:
        chain = pruning_chain(record, (metrics, footprint) if base is not None else None)
    return Evaluated(
        examples.summary(), len(examples), metrics, chosen, predictions, footprint, chain
    )


def load_for_evaluation(target: str, data: str | None) -> tuple[Any, Any, RunConfig]:
    """A plain model (no adapter wrapper) with its processor and config: a run's best
    checkpoint, its adapter merged in, or a model folder or hub id (which needs `data`)."""
    run_dir = Path(target)
    if (run_dir / "config.yaml").is_file():
        config = load_run_config(run_dir / "config.yaml")
        model, processor, _ = _load_run_model(run_dir, config, "best")
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        return model, processor, config
    config = _config_for_model(target, data, [])
    model, processor = get_modality(config.model.modality).load(config.model)
    return model, processor, config


@dataclass
class ScoredSlice:
    """One dataset scored by one run: the metrics and each metric's per-example parts
    (`modalities/evaluation.py: record_example_scores`)."""

    data: str
    examples: int
    metrics: dict[str, float]
    per_example: dict[str, tuple[list[float], list[float]]]


def score_run(
    run_dir: Path, config: RunConfig, slices: list[tuple[str, RunConfig]]
) -> list[ScoredSlice]:
    """Load the run's best checkpoint once and score each `(data, owner config)` slice with
    the owner's objective, data options and eval settings (so that two runs scored with the
    same owner config see the same examples in the same order)."""
    from omnitune.modalities.evaluation import record_example_scores

    base = config.model.model_copy()
    model, processor, _ = _load_run_model(run_dir, config.model_copy(deep=True), "best")
    model.eval()
    scored = []
    for source, owner in slices:
        modality = get_modality(owner.model.modality)
        objective = get_objective(owner.objective.name)
        examples = objective.data(modality, source, owner, processor, False)
        if len(examples) == 0:
            raise ConfigError(f"{source}: no usable {objective.reads} ({examples.summary()})")
        reference = _reference(model, modality, base) if objective.needs_reference else None
        with record_example_scores() as per_example:
            metrics = objective.evaluate(modality, model, processor, examples, owner, reference)
        scored.append(ScoredSlice(source, len(examples), metrics, per_example))
    return scored


def _reference(model: Any, modality: Any, base: Any) -> Any:
    """Training's reference policy: the adapter disabled; for a full fine-tune, the base
    model it started from (loaded when first used); a model that is no run is scored against
    itself (rewards are 0)."""
    from omnitune.trainers.objectives.reference import Reference

    if hasattr(model, "disable_adapter"):
        return Reference(model)
    if base is None:
        return Reference(model, frozen=model)
    return Reference(model, load_frozen=lambda: modality.load(base)[0])


def _load_run_model(
    run_dir: Path, config: RunConfig, which: str
) -> tuple[Any, Any, ChosenCheckpoint | None]:
    """The run's weights by the checkpoint rule: the saved adapter/model folder when it holds
    the chosen checkpoint (what train saved), else the checkpoint rebuilt on the base; a run
    folder without checkpoints (copied without them) is scored by its saved folder."""
    from omnitune.trainers.checkpoint import list_checkpoints

    if list_checkpoints(run_dir):
        chosen = choose_checkpoint(run_dir, which)
        if chosen.step != saved_checkpoint_step(run_dir):
            model, processor, _ = load_checkpoint_model(config, chosen.path)
            return model, processor, chosen
        return (*_load_saved_folder(run_dir, config), chosen)
    if which != "best":
        raise ConfigError(f"--checkpoint: {run_dir} has no checkpoints to choose from")
    return (*_load_saved_folder(run_dir, config), None)


def _load_saved_folder(run_dir: Path, config: RunConfig) -> tuple[Any, Any]:
    modality = get_modality(config.model.modality)
    if (run_dir / "adapter").is_dir():
        from peft import PeftModel

        import omnitune.trainers.peft_methods  # noqa: F401  (quiets peft's deprecated read)

        base, processor = modality.load(config.model)
        return PeftModel.from_pretrained(base, str(run_dir / "adapter")), processor
    folder = run_dir / "model"
    if not folder.is_dir():
        raise ConfigError(f"{run_dir}: no adapter/ or model/ folder (did the run finish?)")
    config.model.name_or_path = str(folder)
    return modality.load(config.model)


def _config_for_model(model: str, data: str | None, overrides: list[str]) -> RunConfig:
    from omnitune.modalities.loading import infer_modality, load_model_config

    if not data:
        raise ConfigError("--data: evaluating a model (not a run) needs --data FILE")
    modality = infer_modality(load_model_config(model))
    base = {
        "model": {"name_or_path": model, "modality": modality},
        "data": {"train": data, "eval": data},
        "train": {"max_steps": 1},
    }
    return validate(RunConfig, apply_overrides(base, overrides), source="eval")
