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
    base = None
    if (run_dir / "config.yaml").is_file():
        config = load_run_config(run_dir / "config.yaml", overrides)
        base = config.model.model_copy()  # before _load_run_model points it at RUN/model
        model, processor = _load_run_model(run_dir, config)
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
    metrics = objective.evaluate(modality, model, processor, examples, config, reference)
    return examples.summary(), len(examples), metrics


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
