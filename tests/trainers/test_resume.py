"""Checkpoints and resume: a run killed with SIGKILL continues exactly where it stopped."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from omnitune.trainers.config import load_run_config
from tests import reliability
from tests.conftest import OMNITUNE, offline_env, run_cli
from tests.trainers.conftest import read_metrics

pytestmark = pytest.mark.slow

# Dropout on, so a resume that failed to restore the RNG state would diverge.
RESUMABLE = {
    "peft": {"method": "lora", "r": 8, "dropout": 0.1},
    "train": {
        "max_steps": 300,
        "batch_size": 8,
        "save_steps": 10,
        "eval_steps": None,
        "logging_steps": 1,
        "save_total_limit": 3,
        "num_threads": 1,
    },
}


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path / "trainable.safetensors")


def _train_steps(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir) if r["kind"] == "train"]


def kill_resume_and_compare(run_config, steps: int, **sections) -> None:
    """Train `steps` uninterrupted; train again, SIGKILL after the step-20 checkpoint, resume;
    the final weights and every step's loss must equal the uninterrupted run's."""
    reference_path = run_config("uninterrupted", **sections)
    finished = run_cli("train", str(reference_path))
    assert finished.returncode == 0, finished.stderr[-3000:]
    reference_dir = Path(load_run_config(reference_path).output_dir)

    path = run_config("killed", **sections)
    run_dir = Path(load_run_config(path).output_dir)
    process = subprocess.Popen(
        [str(OMNITUNE), "train", str(path)],
        env=offline_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoints" / "step-00000020" / "state.json").exists():
        assert process.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (run_dir / "summary.json").exists(), "the run finished before the kill"
    killed_at = max(step for step, _ in _train_steps(run_dir))
    assert killed_at < steps

    resumed = run_cli("train", str(path))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in (run_dir / "train.log").read_text()

    final = f"checkpoints/step-{steps:08d}"
    expected, actual = _tensors(reference_dir / final), _tensors(run_dir / final)
    assert expected.keys() == actual.keys()
    worst = max(float((expected[k] - actual[k]).abs().max()) for k in expected)
    assert worst <= 1e-6, f"resumed weights differ by {worst}"

    steps_seen = _train_steps(run_dir)
    assert [s for s, _ in steps_seen] == list(range(1, steps + 1)), "a step repeated or skipped"
    for (step, loss), (_, expected_loss) in zip(
        steps_seen, _train_steps(reference_dir), strict=True
    ):
        assert abs(loss - expected_loss) <= 1e-6, f"step {step} saw other data or RNG"
    config = load_run_config(path)
    reliability.add_row(
        "resume-per-objective",
        "Resume after SIGKILL, per objective",
        "`omnitune train` killed with SIGKILL right after a checkpoint, then run again: the "
        "resumed run's final weights and every step's loss against an uninterrupted run of "
        "the same config (dropout on, so a lost RNG state would show).",
        {
            "objective": config.objective.name
            + (f" ({config.train.data_workers} data workers)" if config.train.data_workers else "")
            + (" (streamed)" if config.data.streaming else ""),
            "PEFT": config.peft.method,
            "steps": steps,
            "killed after step": killed_at,
            "largest weight difference": f"{worst:.1e}",
            "steps repeated or skipped": 0,
            "losses differing > 1e-6": 0,
        },
    )


@pytest.mark.reliability
def test_sigkill_then_resume_equals_an_uninterrupted_run(run_config):
    kill_resume_and_compare(run_config, 300, **RESUMABLE)


def test_resume_with_packing_equals_an_uninterrupted_run(run_config):
    """Packed rows are fixed when the data is read, so resume lands on the same row."""
    from omnitune.trainers.loop import train

    sections = {**RESUMABLE, "data": {"packing": True, "max_length": 64}}
    # A constant lr: the first half runs with max_steps=10, which would change a decay.
    sections["train"] = {
        **RESUMABLE["train"],
        "max_steps": 20,
        "batch_size": 2,
        "lr_schedule": "constant",
    }
    straight = train(load_run_config(run_config("straight", **sections)))
    halves = run_config("halves", **sections)
    train(load_run_config(halves, ["train.max_steps=10"]))
    resumed = train(load_run_config(halves))
    assert "resumed from" in (resumed.run_dir / "train.log").read_text()
    final = "checkpoints/step-00000020"
    expected, actual = _tensors(straight.run_dir / final), _tensors(resumed.run_dir / final)
    assert max(float((expected[k] - actual[k]).abs().max()) for k in expected) <= 1e-6


def test_old_checkpoints_are_pruned_to_the_last_k_and_the_best(run_config):
    from omnitune.trainers.loop import train

    path = run_config(
        "pruned", train={"max_steps": 40, "save_steps": 5, "eval_steps": 10, "save_total_limit": 2}
    )
    result = train(load_run_config(path))
    kept = sorted(p.name for p in (result.run_dir / "checkpoints").iterdir())
    best = f"step-{result.best_step:08d}"
    assert kept[-2:] == ["step-00000035", "step-00000040"]
    assert set(kept) <= {best, "step-00000035", "step-00000040"}
    assert best in kept


def test_resume_never_starts_again_from_scratch(run_config):
    from omnitune.trainers.loop import train

    path = run_config("again", train={"max_steps": 10, "save_steps": 5})
    train(load_run_config(path))
    config = load_run_config(path, ["train.resume=never", "train.max_steps=6"])
    result = train(config)
    assert result.steps == 6
    state = json.loads((result.run_dir / "checkpoints/step-00000006/state.json").read_text())
    assert state["step"] == 6
    assert not (result.run_dir / "checkpoints/step-00000010").exists()


def test_a_diverging_run_stops_with_the_step_and_keeps_the_last_good_checkpoint(run_config):
    import torch
    from safetensors.torch import load_file, save_file

    from omnitune.trainers.loop import TrainingDiverged, train

    first = load_run_config(run_config("diverge", train={"max_steps": 10, "save_steps": 5}))
    train(first)
    # Poison the trained adapter in the last checkpoint so the next steps blow up.
    checkpoint = first.output_dir + "/checkpoints/step-00000010/trainable.safetensors"
    tensors = load_file(checkpoint)
    tensors = {
        k: torch.full_like(v, float("inf")) if "lora_B" in k else v for k, v in tensors.items()
    }
    save_file(tensors, checkpoint)
    more = load_run_config(run_config("diverge", train={"max_steps": 20, "save_steps": 5}))
    with pytest.raises(
        TrainingDiverged, match=r"at step 11; last good checkpoint: .*step-00000010"
    ):
        train(more)
    assert not (Path(more.output_dir) / "checkpoints/step-00000015").exists()
