"""Background data workers (issue 17, `train.data_workers`): the same batches and the same
weights as collating in the loop, augmentation included, and an exact resume after SIGKILL."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from omnitune.trainers.config import load_run_config
from tests.speech_data import write_tone_corpus
from tests.trainers.test_resume import RESUMABLE, kill_resume_and_compare

pytestmark = pytest.mark.slow


def final_tensors(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    last = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    return load_file(last / "trainable.safetensors")


def test_speech_with_augmentation_trains_the_same_with_and_without_workers(tiny_model, tmp_path):
    from omnitune.trainers.loop import train

    manifest = write_tone_corpus(tmp_path / "speech", 24, seed=0)
    augment = {
        "spec_augment": {"p": 1.0, "freq_masks": 1, "freq_width": 8, "time_masks": 1},
        "noise": {"p": 0.5, "snr_db": [10, 20]},
        "speed": {"p": 0.5, "factors": [0.9, 1.1]},
    }
    results = {}
    for workers in (0, 1):
        path = tmp_path / f"workers-{workers}.yaml"
        config = {
            "model": {"name_or_path": str(tiny_model("whisper")), "modality": "speech"},
            "data": {
                "train": str(manifest),
                "options": {"language": "en", "augment": augment},
            },
            "peft": {"method": "lora", "r": 8, "dropout": 0.1},
            "train": {
                "max_steps": 6,
                "batch_size": 8,
                "eval_steps": None,
                "num_threads": 1,
                "data_workers": workers,
            },
            "output_dir": str(tmp_path / f"run-{workers}"),
        }
        path.write_text(yaml.safe_dump(config))
        results[workers] = train(load_run_config(path))
    without, with_workers = (final_tensors(results[w].run_dir) for w in (0, 1))
    assert without.keys() == with_workers.keys()
    worst = max(float((without[k] - with_workers[k]).abs().max()) for k in without)
    assert worst <= 1e-6, f"workers changed the weights by {worst}"
    assert results[0].train_loss == pytest.approx(results[1].train_loss, abs=1e-6)


@pytest.mark.reliability
def test_sigkill_then_resume_with_workers_equals_an_uninterrupted_run(run_config):
    kill_resume_and_compare(
        run_config,
        60,
        peft=RESUMABLE["peft"],
        train={**RESUMABLE["train"], "max_steps": 60, "data_workers": 2},
    )
