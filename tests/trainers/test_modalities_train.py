"""Speech and vision-language models train through the same core as text, with LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from omnitune.modalities.vision_language.sample_data import write_digit_vqa
from omnitune.trainers.config import load_run_config
from tests.conftest import run_cli
from tests.speech_data import write_tone_corpus
from tests.trainers.conftest import eval_losses

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def speech_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("speech")
    return {
        "train": write_tone_corpus(folder / "train", 64, seed=0, broken=True),
        "eval": write_tone_corpus(folder / "test", 16, seed=1),
    }


@pytest.fixture(scope="module")
def digit_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    return {
        "train": write_digit_vqa(folder / "train", 0, 96, broken=True),
        "eval": write_digit_vqa(folder / "test", 1000, 16),
    }


def _write(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_tiny_whisper_trains_with_lora_and_counts_bad_audio(tiny_model, speech_data, tmp_path):
    from omnitune.trainers.loop import train

    path = _write(
        tmp_path,
        {
            "model": {"name_or_path": str(tiny_model("whisper")), "modality": "speech"},
            "data": {
                "train": str(speech_data["train"]),
                "eval": str(speech_data["eval"]),
                "options": {"language": "en"},
            },
            "peft": {"method": "lora", "r": 16, "alpha": 32},
            "train": {
                "max_steps": 24,
                "batch_size": 16,
                "lr": 5e-3,
                "eval_steps": 24,
                "num_threads": 1,
            },
            "eval": {"generation": {"max_new_tokens": 8}},
            "output_dir": str(tmp_path / "run"),
        },
    )
    result = train(load_run_config(path))
    losses = eval_losses(result.run_dir)
    assert losses[-1] < losses[0] - 0.1, losses
    assert {"wer", "cer"} <= set(result.eval_metrics)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["train_skipped"] == {"unreadable audio": 1, "silent audio": 1}
    reference = json.loads((result.run_dir / "reference.json").read_text())
    assert {"duration_s", "rms_dbfs", "spectral_centroid_hz", "snr_db"} <= set(
        reference["features"]
    )

    from peft import PeftModel
    from transformers import AutoModelForSpeechSeq2Seq

    base = AutoModelForSpeechSeq2Seq.from_pretrained(tiny_model("whisper"))
    assert isinstance(PeftModel.from_pretrained(base, result.output), PeftModel)


def test_a_missing_audio_file_names_the_manifest_line(tiny_model, tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text('{"audio": "nowhere.wav", "text": "one"}\n')
    path = _write(
        tmp_path,
        {
            "model": {"name_or_path": str(tiny_model("whisper")), "modality": "speech"},
            "data": {"train": str(manifest)},
            "train": {"max_steps": 2},
            "output_dir": str(tmp_path / "run"),
        },
    )
    result = run_cli("train", str(path))
    assert result.returncode == 1
    assert f"{manifest}:1: audio file {tmp_path / 'nowhere.wav'} does not exist" in result.stderr


@pytest.mark.parametrize("family", ["llava", "idefics3", "qwen2-vl"])
def test_each_vlm_family_trains_with_lora_on_the_language_model(
    family, tiny_model, digit_data, tmp_path
):
    from omnitune.trainers.loop import train

    path = _write(
        tmp_path,
        {
            "model": {"name_or_path": str(tiny_model(family)), "modality": "vision_language"},
            "data": {"train": str(digit_data["train"]), "eval": str(digit_data["eval"])},
            "peft": {"method": "lora", "r": 16, "alpha": 32},
            "train": {
                "max_steps": 16,
                "batch_size": 16,
                "lr": 5e-3,
                "eval_steps": 16,
                "num_threads": 1,
            },
            "eval": {"generation": {"max_new_tokens": 3}},
            "output_dir": str(tmp_path / "run"),
        },
    )
    result = train(load_run_config(path))
    losses = eval_losses(result.run_dir)
    assert losses[-1] < losses[0] - 0.1, losses
    assert "vqa_accuracy" in result.eval_metrics
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["train_skipped"] == {"truncated image": 1}
    # Reload the saved adapter onto the base model in a fresh process and generate answers.
    again = run_cli("eval", str(result.run_dir), "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["vqa_accuracy"] == result.eval_metrics["vqa_accuracy"]

    from safetensors.torch import load_file

    trained = load_file(result.run_dir / "checkpoints/step-00000016/trainable.safetensors")
    lora = [n for n in trained if "lora_" in n]
    assert lora and all(("language_model" in n or "text_model" in n) for n in lora)
    assert not any(("vision_tower" in n or "vision_model" in n or ".blocks." in n) for n in trained)
    projector = ("multi_modal_projector", "connector", "merger")
    assert any(p in n for n in trained for p in projector), "the projector trains in full"
