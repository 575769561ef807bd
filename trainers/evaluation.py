"""`omnitune eval RUN_OR_MODEL [--data FILE]`: the modality's metrics on a dataset.

RUN_OR_MODEL is a run folder (its config and exported adapter or model are used), or a model
folder or hub id (its modality is read from its config). Data defaults to the run's eval set.
The run's objective reads and scores the data: a DPO run's eval set is preference pairs, scored
against the same reference policy as in training (the adapter disabled, or the base model
for full fine-tuning), so the reward accuracy matches the training log's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omnitune.modalities.base import get_modality
from omnitune.trainers.config import RunConfig, load_run_config
from omnitune.trainers.configio import apply_overrides, validate
from omnitune.trainers.errors import ConfigError
from omnitune.trainers.objectives import get_objective


def evaluate_target(
    target: str, data: str | None, overrides: list[str] | None = None
) -> tuple[str, int, dict[str, float]]:
    """Returns (data source, number of examples, metrics)."""
    run_dir = Path(target)
    reference_model = None
    if (run_dir / "config.yaml").is_file():
        config = load_run_config(run_dir / "config.yaml", overrides)
        base = config.model.model_copy()
        model, processor = _load_run_model(run_dir, config)
        if get_objective(config.objective.name).needs_reference and not hasattr(
            model, "disable_adapter"
        ):
            reference_model = get_modality(config.model.modality).load(base)[0]
    else:
        config = _config_for_model(target, data, overrides or [])
        model, processor = get_modality(config.model.modality).load(config.model)
        reference_model = model  # a model scored against itself: rewards are 0
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
    reference = None
    if objective.needs_reference:
        from omnitune.trainers.objectives.reference import Reference

        reference = Reference(model, frozen=reference_model)
    metrics = objective.evaluate(modality, model, processor, examples, config, reference)
    return examples.summary(), len(examples), metrics


def _load_run_model(run_dir: Path, config: RunConfig) -> tuple[Any, Any]:
    modality = get_modality(config.model.modality)
    if (run_dir / "adapter").is_dir():
        from peft import PeftModel

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
