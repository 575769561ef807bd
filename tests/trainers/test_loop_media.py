"""`omnitune loop retune` and `loop gate` on the tiny Whisper and LLaVA: the gate scores each
modality's own metrics per example. (In `make test`'s docs lane, which has the time to spare:
Makefile DOCS_LANE.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.trainers.test_loop_commands import REQUIRED, write_export


def media_export(folder: Path, splits: dict[str, Path], media: str) -> Path:
    """Manifest rows as an export folder writes them: media paths absolute, a request id."""
    rows = {}
    for split, manifest in splits.items():
        rows[split] = []
        for index, line in enumerate(manifest.read_text().splitlines()):
            row = json.loads(line)
            row[media] = str(manifest.parent / row[media])
            rows[split].append({**row, "request_id": f"{split}-{index}"})
    return write_export(folder, rows)


@pytest.mark.parametrize("modality", ["speech", "vision_language"])
def test_whisper_and_llava_challengers_are_gated_on_their_own_metrics(
    modality, tiny_model, tmp_path
):
    """Retune and gate on the tiny Whisper (WER, CER) and LLaVA (VQA accuracy). A few dozen
    steps move their token loss, not yet their generated answers, so the gate decides on
    loss here; the report carries the modality's generated metrics per example too, equal
    to what the runs' own evaluations logged."""
    from omnitune.modalities.vision_language.sample_data import write_digit_vqa
    from omnitune.trainers.config import RunConfig
    from omnitune.trainers.loop import train
    from tests.speech_data import write_tone_corpus

    if modality == "speech":
        family, media, generated = "whisper", "audio", ["wer", "cer"]
        data = {
            "train": write_tone_corpus(tmp_path / "train", 64, seed=0),
            "eval": write_tone_corpus(tmp_path / "test", 16, seed=1),
        }
        captured = {
            "train": write_tone_corpus(tmp_path / "captured", 48, seed=2),
            "test": write_tone_corpus(tmp_path / "captured-test", 16, seed=3),
        }
        options = {"options": {"language": "en"}}
    else:
        family, media, generated = "llava", "image", ["vqa_accuracy"]
        data = {
            "train": write_digit_vqa(tmp_path / "train", 0, 96),
            "eval": write_digit_vqa(tmp_path / "test", 1000, 32),
        }
        captured = {  # the same digits scanned by another device
            "train": write_digit_vqa(tmp_path / "captured", 200, 96, domain="shift"),
            "test": write_digit_vqa(tmp_path / "captured-test", 1100, 32, domain="shift"),
        }
        options = {}
    champion = train(
        RunConfig.model_validate(
            {
                "model": {"name_or_path": str(tiny_model(family)), "modality": modality},
                "data": {"train": str(data["train"]), "eval": str(data["eval"]), **options},
                "peft": {"method": "lora", "r": 16, "alpha": 32},
                "train": {"max_steps": 24, "batch_size": 16, "lr": 5e-3, "num_threads": 1},
                "eval": {"generation": {"max_new_tokens": 8 if family == "whisper" else 3}},
                "output_dir": str(tmp_path / "champion"),
            }
        )
    ).run_dir
    labels = media_export(tmp_path / "labels", captured, media)
    done = run_cli("loop", "retune", str(champion), "--labels", str(labels), REQUIRED,
                   "train.max_steps=24")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    challenger = tmp_path / "champion-challenger"
    provenance = (challenger / "loop" / "provenance.jsonl").read_text().splitlines()
    assert {json.loads(p)["source"] for p in provenance} == {"labels", "replay"}

    done = run_cli("loop", "gate", str(champion), str(challenger), "gate.metric=loss")
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    report = json.loads((challenger / "gate" / "gate.json").read_text())
    captures, original = (report["slices"][s]["metrics"] for s in ("captures", "original"))
    assert captures["loss"]["low"] > 0
    assert set(generated) <= set(captures) and set(generated) <= set(original)
    logged = json.loads((challenger / "summary.json").read_text())["checkpoint"]["metrics"]
    for metric in generated:
        assert original[metric]["challenger"] == pytest.approx(logged[metric])
