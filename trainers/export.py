"""`omnitune export RUN [--merge]`: an adapter in PEFT format, or a merged model in HF format.

Export rebuilds the run's model from its saved config (`RUN/config.yaml`), loads a checkpoint
(the best by the run's selection metric when evaluation ran, else the last), and writes:
- without --merge, the adapter, which plain `PeftModel.from_pretrained(base, folder)` loads
  (PiSSA/OLoRA adapters are converted to plain LoRA against the original base weights);
- with --merge, the full model with the adapter folded in, which `Auto*.from_pretrained` loads.
Runs that trained all weights (full, hft) export the full model either way.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from omnitune.modalities.base import get_modality
from omnitune.trainers.checkpoint import checkpoint_dir, list_checkpoints
from omnitune.trainers.config import load_run_config
from omnitune.trainers.errors import ConfigError


def choose_checkpoint(run_dir: Path, which: str = "best") -> Path:
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise ConfigError(f"{run_dir}: no checkpoints (is this a run folder?)")
    if which == "last":
        return checkpoints[-1]
    if which == "best":
        state = json.loads((checkpoints[-1] / "state.json").read_text())
        best = state.get("best_step")
        if best is not None and checkpoint_dir(run_dir, best).is_dir():
            return checkpoint_dir(run_dir, best)
        return checkpoints[-1]
    path = Path(which)
    if not (path / "state.json").is_file():
        raise ConfigError(f"--checkpoint: {which} is not a checkpoint folder")
    return path


def export_run(
    run: str | Path, merge: bool = False, out: str | Path | None = None, which: str = "best"
) -> Path:
    """Write the run's adapter or merged model; returns the folder written."""
    import torch
    from safetensors.torch import load_file

    from omnitune.trainers.peft_methods import prepare_model

    run_dir = Path(run)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir}: not a run folder (no config.yaml)")
    config = load_run_config(run_dir / "config.yaml")
    if config.peft.method == "qlora":
        config.peft.method = "lora"  # same adapter, attached to unquantised weights for export
    checkpoint = choose_checkpoint(run_dir, which)
    modality = get_modality(config.model.modality)
    model, processor = modality.load(config.model)
    prepared = prepare_model(
        model, config.peft, modality.targets(model), modality.task_type, config.train.seed
    )
    parameters = dict(prepared.model.named_parameters())
    with torch.no_grad():
        for name, value in load_file(checkpoint / "trainable.safetensors").items():
            if name not in parameters:
                raise ConfigError(f"{checkpoint}: tensor {name} does not fit this run's model")
            parameters[name].copy_(value)

    if not prepared.is_peft:
        target, model_to_save, options = Path(out or run_dir / "model"), prepared.model, {}
    elif merge:
        if config.peft.method == "prompt_tuning":
            raise ConfigError("--merge: prompt tuning adds virtual tokens and cannot be merged")
        target, model_to_save, options = (
            Path(out or run_dir / "merged"),
            prepared.model.merge_and_unload(),
            {},
        )
    else:
        initial = run_dir / "initial-adapter"
        options = (
            {"path_initial_model_for_weight_conversion": str(initial)} if initial.is_dir() else {}
        )
        target, model_to_save = Path(out or run_dir / "adapter"), prepared.model
    staging = target.with_name(f".staging-{target.name}")
    shutil.rmtree(staging, ignore_errors=True)
    model_to_save.save_pretrained(staging, **options)
    processor.save_pretrained(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target
