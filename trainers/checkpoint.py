"""Checkpoints: written atomically, found again by `resume: auto`, pruned to the last K + best.

A checkpoint folder `checkpoints/step-NNNNNNNN/` holds the trainable weights (safetensors), the
optimizer and scheduler states, each rank's RNG states and `state.json` (step, data position,
best metric). It is written under a temporary name and renamed into place, so a process killed
mid-write leaves either the previous checkpoint set or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from omnitune.core.errors import OmnituneError

_NAME = re.compile(r"^step-(\d{8})$")


@dataclass
class TrainState:
    """Where a run is: enough to continue it exactly."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    samples_seen: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    #: the metric best_metric is a value of (eval.early_stopping_metric or the objective's)
    selection_metric: str | None = None
    evals_without_improvement: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    #: data.streaming: the stream's position (trainers/streaming.py), None otherwise
    stream: dict[str, Any] | None = None


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:08d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a folder without state.json is not complete)."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _NAME.match(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: p.name)


def save_checkpoint(
    run_dir: Path,
    state: TrainState,
    tensors: dict[str, Any],
    optimizer: Any,
    scheduler: Any,
    accelerator: Any,
    model: Any = None,
) -> Path:
    """Write the checkpoint for `state.step`; collective: every rank must call it. A sharded
    `model` (trainers/sharding.py) has its tensors and optimizer state gathered whole first,
    so that the checkpoint reads like any other."""
    import torch
    from safetensors.torch import save_file

    from omnitune.trainers import sharding

    final = checkpoint_dir(run_dir, state.step)
    staging = final.with_name(f".staging-{final.name}")
    optimizer_state = None
    if model is not None and sharding.is_sharded(model):
        tensors = sharding.full_tensors(tensors)
        optimizer_state = sharding.full_optimizer_state(model, optimizer)
    try:
        if accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        accelerator.wait_for_everyone()
        torch.save(_rng_state(), staging / f"rng-rank{accelerator.process_index}.pt")
        if accelerator.is_main_process:
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                staging / "trainable.safetensors",
            )
            torch.save(
                optimizer.state_dict() if optimizer_state is None else optimizer_state,
                staging / "optimizer.pt",
            )
            torch.save(scheduler.state_dict(), staging / "scheduler.pt")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (staging / "state.json").write_text(json.dumps(asdict(state), indent=1))
            _fsync_tree(staging)
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
    except Exception as exc:  # OSError, torch's RuntimeError, SafetensorError: a failed write
        # The half-written folder goes (it may hold the space the next try needs); the
        # previous checkpoints were never touched.
        shutil.rmtree(staging, ignore_errors=True)
        raise CheckpointError(_failed_write(run_dir, final, exc)) from exc
    accelerator.wait_for_everyone()
    return final


class CheckpointError(OmnituneError):
    """A checkpoint could not be written; the run stops with the last good one kept."""


def _failed_write(run_dir: Path, final: Path, exc: Exception) -> str:
    kept = list_checkpoints(run_dir)
    try:
        free = f"{shutil.disk_usage(run_dir).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    if "No space left on device" in reason:  # safetensors and torch wrap the OSError's text
        reason = "No space left on device"
    return (
        f"could not write checkpoint {final.name} ({reason}; {free} on {run_dir}); the last good "
        f"checkpoint is {kept[-1] if kept else 'none'}: free space and run the same command "
        "again to resume from it"
    )


def load_checkpoint(
    path: Path,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    process_index: int,
    extra: dict[str, Any] | None = None,
) -> TrainState:
    """Restore weights (the model's, and `extra` tensors by name: an objective's heads),
    optimizer, scheduler and this rank's RNG; returns the saved state."""
    import torch
    from safetensors.torch import load_file

    from omnitune.trainers import sharding

    tensors = load_file(path / "trainable.safetensors")
    parameters = {**dict(model.named_parameters()), **(extra or {})}
    missing = [name for name in tensors if name not in parameters]
    if missing:
        from omnitune.core.errors import ConfigError

        raise ConfigError(
            f"train.resume: {path} does not fit this model/method ({len(missing)} unknown "
            f"tensors, e.g. {missing[0]})"
        )
    sharding.load_parameters(parameters, tensors)
    optimizer_state = torch.load(path / "optimizer.pt", weights_only=False)
    if sharding.is_sharded(model):  # saved whole, keyed by parameter name
        sharding.load_optimizer_state(model, optimizer, optimizer_state)
    else:
        optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng_file = path / f"rng-rank{process_index}.pt"
    if rng_file.is_file():
        _restore_rng(torch.load(rng_file, weights_only=False))
    return TrainState(**json.loads((path / "state.json").read_text()))


def prune_checkpoints(run_dir: Path, keep_last: int, best_step: int | None) -> None:
    """Delete all but the newest `keep_last` checkpoints, always keeping the best one."""
    checkpoints = list_checkpoints(run_dir)
    keep = set(checkpoints[-keep_last:])
    if best_step is not None:
        keep.add(checkpoint_dir(run_dir, best_step))
    for path in checkpoints:
        if path not in keep:
            shutil.rmtree(path, ignore_errors=True)


def _rng_state() -> dict[str, Any]:
    import torch

    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with path.open("rb") as handle:
            os.fsync(handle.fileno())
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
