"""What a user is told, through the CLI and the Python API: limits checked where they are set,
skipped files named, predictions written, paths in errors that are the user's own, and the log
the Python API promises (each case once misled a new user)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import offline_env, run_cli
from tests.speech_data import write_tone_corpus

pytestmark = pytest.mark.slow


def run_script(code: str, folder: Path) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter started in `folder`, as a user's script runs."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=folder,
        env=offline_env(OMNITUNE_CACHE=str(folder / "cache")),
        capture_output=True,
        text=True,
        timeout=300,
    )


def speech_config(tmp_path: Path, whisper: Path, manifest: Path, **options) -> Path:
    config = {
        "model": {"name_or_path": str(whisper), "modality": "speech"},
        "data": {
            "train": str(manifest),
            "eval": str(manifest),
            "options": {"language": "en", **options},
        },
        "train": {"max_steps": 2, "batch_size": 4, "eval_steps": 2, "num_threads": 1},
        "eval": {"generation": {"max_new_tokens": 8}},
        "output_dir": str(tmp_path / "speech-run"),
    }
    path = tmp_path / "speech.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_max_seconds_beyond_the_models_window_exits_2_naming_the_field_and_limit(
    tiny_model, tmp_path
):
    manifest = write_tone_corpus(tmp_path / "clips", 4, seed=1)
    config = speech_config(tmp_path, tiny_model("whisper"), manifest, max_seconds=5)
    for command in (("data", "info", str(config)), ("train", str(config))):
        result = run_cli(*command)
        assert result.returncode == 2, result.stderr[-2000:]
        assert (
            "data.options.max_seconds: 5 s is longer than this model's input window of 2 s"
        ) in result.stderr
        assert "Traceback" not in result.stderr
    within = run_cli("data", "info", str(config), "data.options.max_seconds=1.5")
    assert within.returncode == 0, within.stderr[-2000:]


def test_skipped_audio_files_are_named_in_data_info_the_log_and_the_summary(tiny_model, tmp_path):
    manifest = write_tone_corpus(tmp_path / "clips", 8, seed=2, broken=True)
    config = speech_config(tmp_path, tiny_model("whisper"), manifest)
    info = run_cli("data", "info", str(config))
    assert info.returncode == 0, info.stderr[-2000:]
    corrupt, silent = str(tmp_path / "clips/corrupt.wav"), str(tmp_path / "clips/silent.wav")
    listed = [line.strip() for line in info.stdout.splitlines() if "skipped " in line]
    assert any(line.endswith(corrupt) for line in listed), info.stdout
    assert any(line.endswith(silent) for line in listed), info.stdout

    trained = run_cli("train", str(config))
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "skipped unreadable audio" in trained.stderr or corrupt in trained.stderr
    assert corrupt in trained.stderr and silent in trained.stderr
    summary = json.loads((tmp_path / "speech-run/summary.json").read_text())
    named = [f for files in summary["train_skipped_files"].values() for f in files]
    assert sorted(named) == sorted([corrupt, silent])
    assert sum(summary["train_skipped"].values()) == 2


def test_a_corrupt_image_is_named(tiny_model, tmp_path):
    from omnitune.modalities.vision_language.sample_data import write_digit_vqa

    data = write_digit_vqa(tmp_path / "digits", 0, 6, broken=True)
    config = tmp_path / "vlm.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"name_or_path": str(tiny_model("llava")), "modality": "vision_language"},
                "data": {"train": str(data)},
                "train": {"max_steps": 1},
                "output_dir": str(tmp_path / "vlm-run"),
            }
        )
    )
    info = run_cli("data", "info", str(config))
    assert info.returncode == 0, info.stderr[-2000:]
    broken = [line for line in info.stdout.splitlines() if line.strip().startswith("skipped ")]
    assert len(broken) == 1 and str(tmp_path / "digits") in broken[0], info.stdout


def test_max_new_tokens_shorter_than_the_answers_warns_and_long_enough_does_not(
    tiny_model, text_data, tmp_path
):
    model, data = str(tiny_model("text")), str(text_data["eval"])
    metrics = "eval.metrics=[perplexity,exact_match]"
    short = run_cli("eval", model, "--data", data, metrics, "eval.generation.max_new_tokens=1")
    assert short.returncode == 0, short.stderr[-2000:]
    assert "eval.generation.max_new_tokens is 1, but " in short.stderr
    assert "reference answers are longer" in short.stderr
    enough = run_cli("eval", model, "--data", data, metrics, "eval.generation.max_new_tokens=16")
    assert enough.returncode == 0 and "max_new_tokens" not in enough.stderr


def test_eval_writes_each_prediction_with_its_reference_and_score(tiny_model, text_data, tmp_path):
    out = tmp_path / "predictions.jsonl"
    result = run_cli(
        "eval",
        str(tiny_model("text")),
        "--data",
        str(text_data["eval"]),
        "eval.metrics=[perplexity,exact_match]",
        "--predictions",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 48 and set(rows[0]) == {"input", "reference", "prediction", "score"}
    exact = float(result.stdout.split("exact_match ")[1].split()[0].rstrip(","))
    assert sum(r["score"] for r in rows) / len(rows) == pytest.approx(exact, abs=1e-4)
    assert f"{out}: 48 predictions" in result.stderr
    loss_only = run_cli(
        "eval", str(tiny_model("text")), "--data", str(text_data["eval"]), "--predictions", "x"
    )
    assert loss_only.returncode == 2 and "generated nothing to write" in loss_only.stderr


def test_in_memory_rows_with_relative_media_name_the_users_path(tiny_model, tmp_path):
    code = (
        "import omnitune\n"
        "try:\n"
        f"    omnitune.evaluate({str(tiny_model('whisper'))!r}, "
        "data=[{'audio': 'clips/clip00.wav', 'text': 'one'}])\n"
        "except omnitune.DataError as error:\n"
        "    print(error)\n"
    )
    result = run_script(code, tmp_path)
    assert f"audio file {tmp_path / 'clips/clip00.wav'} does not exist" in result.stdout, (
        result.stdout + result.stderr[-2000:]
    )
    assert "in-memory" not in result.stdout and "data (in memory), row 1:" in result.stdout


def test_the_python_api_logs_progress_to_stderr_without_library_warnings(
    tiny_model, text_data, tmp_path
):
    code = (
        "import omnitune\n"
        f"omnitune.train({{'model': {{'name_or_path': {str(tiny_model('text'))!r}, "
        "'modality': 'text'}, "
        f"'data': {{'train': {str(text_data['train'])!r}, 'eval': {str(text_data['eval'])!r}}}, "
        "'train': {'max_steps': 4, 'eval_steps': 4, 'num_threads': 1}, "
        f"'output_dir': {str(tmp_path / 'api-run')!r}}})\n"
    )
    result = run_script(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "INFO omnitune.train: eval at step 0:" in result.stderr
    assert "INFO omnitune.train: eval at step 4:" in result.stderr
    assert "FutureWarning" not in result.stderr
