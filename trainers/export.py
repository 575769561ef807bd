"""`omnitune export RUN [--merge] [--checkpoint best|last|step-N]`: an adapter in PEFT format,
or a merged model in HF format, from one of the run's checkpoints (trainers/run_weights.py:
the best by the run's selection metric unless asked otherwise).

It writes, never into the run's own adapter/ or model/ folder:
- without --merge, the adapter (RUN/exported-adapter), which plain
  `PeftModel.from_pretrained(base, folder)` loads (PiSSA/OLoRA adapters are converted to plain
  LoRA against the original base weights);
- with --merge, the full model with the adapter folded in (RUN/merged), which
  `Auto*.from_pretrained` loads.
Runs that trained all weights (full, hft) export the full model either way (RUN/exported-model).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from omnitune.core.errors import ConfigError
from omnitune.trainers.config import load_run_config
from omnitune.trainers.run_weights import ChosenCheckpoint, choose_checkpoint, load_checkpoint_model


@dataclass(frozen=True)
class Exported:
    """The folder written, and the checkpoint its weights came from."""

    folder: Path
    checkpoint: ChosenCheckpoint


def export_run(
    run: str | Path, merge: bool = False, out: str | Path | None = None, which: str = "best"
) -> Exported:
    """Write the run's adapter or merged model from the chosen checkpoint."""
    run_dir = Path(run)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir}: not a run folder (no config.yaml)")
    config = load_run_config(run_dir / "config.yaml")
    checkpoint = choose_checkpoint(run_dir, which)
    model, processor, prepared = load_checkpoint_model(config, checkpoint.path)

    if not prepared.is_peft:
        target, model_to_save, options = Path(out or run_dir / "exported-model"), model, {}
    elif merge:
        if config.peft.method == "prompt_tuning":
            raise ConfigError("--merge: prompt tuning adds virtual tokens and cannot be merged")
        target, model_to_save, options = (
            Path(out or run_dir / "merged"),
            model.merge_and_unload(),
            {},
        )
    else:
        initial = run_dir / "initial-adapter"
        options = (
            {"path_initial_model_for_weight_conversion": str(initial)} if initial.is_dir() else {}
        )
        target, model_to_save = Path(out or run_dir / "exported-adapter"), model
    _refuse_run_folders(run_dir, target)
    staging = target.with_name(f".staging-{target.name}")
    shutil.rmtree(staging, ignore_errors=True)
    model_to_save.save_pretrained(staging, **options)
    processor.save_pretrained(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return Exported(target, checkpoint)


def _refuse_run_folders(run_dir: Path, target: Path) -> None:
    """Export writes beside the run, never over what training wrote."""
    own = [run_dir / name for name in ("adapter", "model", "checkpoints", "initial-adapter")]
    resolved = target.resolve()
    for folder in own:
        if resolved == folder.resolve() or folder.resolve() in resolved.parents:
            raise ConfigError(
                f"--out: {target} is the run's own {folder.name}/ folder; export writes "
                "elsewhere (default: RUN/exported-adapter, RUN/merged)"
            )
    if resolved == run_dir.resolve():
        raise ConfigError(f"--out: {target} is the run folder itself")
