"""The speech demo path, driven through the CLI with the shipped configs and espeak-ng corpus:
a tiny Whisper trained on `base` voices, then LoRA-adapted to the unseen, noisy `shift` voices,
must transcribe `shift` better after than before."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO, run_cli
from tests.trainers.conftest import read_metrics

pytestmark = pytest.mark.slow


def test_lora_on_shift_voices_lowers_their_wer(tiny_model, tmp_path):
    base = run_cli(
        "train",
        str(REPO / "configs" / "demo-speech-base.yaml"),
        f"model.name_or_path={tiny_model('whisper')}",
        f"output_dir={tmp_path / 'base'}",
        "train.max_steps=500",
        "train.eval_steps=500",
        "train.save_steps=500",
        "data.max_eval_samples=20",
    )
    assert base.returncode == 0, base.stderr[-3000:]

    shift = run_cli(
        "train",
        str(REPO / "configs" / "demo-speech-shift.yaml"),
        f"model.name_or_path={tmp_path / 'base' / 'model'}",
        f"output_dir={tmp_path / 'shift'}",
        "train.max_steps=100",
    )
    assert shift.returncode == 0, shift.stderr[-3000:]
    evals = [r for r in read_metrics(tmp_path / "shift") if r["kind"] == "eval"]
    before, after = evals[0], evals[-1]
    assert before["step"] == 0 and after["step"] == 100
    assert after["wer"] < before["wer"] - 0.1, (before["wer"], after["wer"])
    # Both shift voices get their own figure, in the log and in metrics.jsonl.
    assert {k for k in after if k.startswith("wer/speaker=")} == {
        "wer/speaker=en-us-nyc+croak",
        "wer/speaker=en-gb-x-gbcwmd+f5",
    }
    log = (tmp_path / "shift" / "train.log").read_text()
    assert "eval at step 0: wer " in log and "speaker=en-us-nyc+croak: wer " in log

    evaluated = run_cli("eval", str(tmp_path / "shift"), "--json")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    figures = json.loads(evaluated.stdout)
    assert figures["wer"] == pytest.approx(after["wer"])
    assert 0 <= figures["cer"] <= figures["wer"] + 0.5

    from peft import PeftModel
    from transformers import AutoModelForSpeechSeq2Seq

    reloaded = PeftModel.from_pretrained(
        AutoModelForSpeechSeq2Seq.from_pretrained(tmp_path / "base" / "model"),
        tmp_path / "shift" / "adapter",
    )
    assert isinstance(reloaded, PeftModel)
