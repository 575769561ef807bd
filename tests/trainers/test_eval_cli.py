"""`omnitune eval`: metrics of a finished run or of a plain model on a dataset."""

from __future__ import annotations

import json

import pytest

from omnitune.trainers.config import load_run_config
from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def test_eval_of_a_run_reproduces_its_final_evaluation(run_config):
    from omnitune.trainers.loop import train

    result = train(load_run_config(run_config("evaluated", train={"max_steps": 20})))
    evaluated = run_cli("eval", str(result.run_dir), "--json")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    metrics = json.loads(evaluated.stdout)
    assert metrics["examples"] == 48
    assert metrics["loss"] == pytest.approx(result.eval_metrics["loss"], abs=1e-4)

    plain = run_cli("eval", str(result.run_dir))
    assert "test.jsonl: 48 examples: loss" in plain.stdout and "perplexity" in plain.stdout


def test_eval_of_a_model_folder_needs_data_and_reports_the_base_model(tiny_model, text_data):
    missing = run_cli("eval", str(tiny_model("text")))
    assert missing.returncode == 2
    assert "--data: evaluating a model (not a run) needs --data FILE" in missing.stderr
    base = run_cli("eval", str(tiny_model("text")), "--data", str(text_data["eval"]), "--json")
    assert base.returncode == 0, base.stderr[-2000:]
    assert json.loads(base.stdout)["perplexity"] > 100, "an untrained model is perplexed"


def test_eval_reports_the_models_footprint(tiny_model, text_data):
    """Parameters and MB as transformers counts them, a measured speed; and in a table of
    several targets, `--metric parameters` gives each its count."""
    from transformers import AutoModelForCausalLM

    model = tiny_model("text")
    parameters = AutoModelForCausalLM.from_pretrained(model).num_parameters()
    shown = run_cli("eval", str(model), "--data", str(text_data["eval"]), "--json")
    assert shown.returncode == 0, shown.stderr[-2000:]
    footprint = json.loads(shown.stdout)["footprint"]
    assert footprint["parameters"] == parameters
    assert footprint["weights_mb"] == pytest.approx(parameters * 4 / 1e6, abs=1e-3)
    assert footprint["tokens_per_second"] > 0
    data = ["--data", str(text_data["eval"])]
    table = run_cli("eval", str(model), str(model), *data, "--metric", "parameters")
    assert table.returncode == 0, table.stderr[-2000:]
    rows = table.stdout.splitlines()[1:]
    assert len(rows) == 2 and all(f"{parameters:.4f}" in row for row in rows), table.stdout


def test_eval_prints_wer_and_cer_for_speech(tiny_model, tmp_path):
    from tests.speech_data import write_tone_corpus

    manifest = write_tone_corpus(tmp_path / "speech", 6, seed=3)
    result = run_cli(
        "eval",
        str(tiny_model("whisper")),
        "--data",
        str(manifest),
        "data.options.language=en",
        "eval.generation.max_new_tokens=4",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "6 examples: wer " in result.stdout and "cer " in result.stdout
