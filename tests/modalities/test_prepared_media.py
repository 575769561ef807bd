"""Speech and vision-language data prepared once in Arrow (issue 17): `omnitune data prepare`
checks every clip or image once; the next run opens the result from the cache; a changed media
file rebuilds it; any `data.num_proc` keeps, skips and measures exactly the rows the row-by-row
reader (`data.cache: false`) does; a missing file still stops the run naming its line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from omnitune.modalities.vision_language.sample_data import write_digit_vqa
from omnitune.trainers.config import RunConfig
from tests.conftest import run_cli
from tests.speech_data import tone_utterance, write_tone_corpus


def write_config(tmp_path: Path, model: Path, modality: str, data: Path, **data_section) -> Path:
    path = tmp_path / "run.yaml"
    config = {
        "model": {"name_or_path": str(model), "modality": modality},
        "data": {"train": str(data), **data_section},
        "train": {"max_steps": 1},
        "output_dir": str(tmp_path / "run"),
    }
    path.write_text(yaml.safe_dump(config))
    return path


def data_command(config: Path, cache: Path, *args: str) -> tuple[str, str, str]:
    """(summary line, 'prepared'|'from cache'|None, cache path) of `omnitune data ...`."""
    result = run_cli("data", *args[:1], str(config), *args[1:], OMNITUNE_CACHE=str(cache))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = next(line for line in result.stdout.splitlines() if line.startswith("train: "))
    match = re.search(r"\n  (prepared in [\d.]+ s|from cache): (\S+)", result.stdout)
    if match is None:
        return summary, None, ""
    return summary, match.group(1).split(" in")[0], match.group(2)


def read_both_ways(read, processor, data: Path, modality: str, **data_section):
    """The dataset read by the row-by-row reader and by the prepared path with 2 processes."""
    results = []
    for section in ({"cache": False}, {"cache": True, "num_proc": 2}):
        config = RunConfig.model_validate(
            {
                "model": {"name_or_path": "unused", "modality": modality},
                "data": {"train": str(data), **data_section, **section},
                "train": {"max_steps": 1},
            }
        )
        results.append(read(str(data), config, processor, True))
    return results


def assert_same_examples(row_by_row, prepared) -> None:
    assert prepared.origin and "prepared in" in prepared.origin
    assert row_by_row.origin is None
    assert list(prepared.items) == row_by_row.items
    assert np.array_equal(np.asarray(prepared.lengths), np.asarray(row_by_row.lengths))
    assert list(prepared.groups) == list(row_by_row.groups)
    assert prepared.skipped == row_by_row.skipped


@pytest.fixture
def speech_manifest(tmp_path) -> Path:
    """12 tone clips, a corrupt and a silent one, a row without text, a clip over the window."""
    import soundfile

    manifest = write_tone_corpus(tmp_path / "speech", 12, seed=3, broken=True)
    rng = __import__("random").Random(1)
    long_clip = np.concatenate([tone_utterance([1, 2, 3], rng)] * 3)  # ~3.3 s > 2 s window
    soundfile.write(manifest.parent / "long.wav", long_clip, 16_000)
    with manifest.open("a") as out:
        out.write(json.dumps({"audio": "long.wav", "text": "one two three"}) + "\n")
        out.write(json.dumps({"audio": "utt0001.wav"}) + "\n")
    return manifest


def test_speech_clips_are_checked_once_cached_and_rechecked_when_a_clip_changes(
    tiny_model, speech_manifest, tmp_path
):
    import soundfile

    model = tiny_model("whisper")
    config = write_config(tmp_path, model, "speech", speech_manifest)
    cache = tmp_path / "cache"

    summary, how, path = data_command(config, cache, "prepare")
    assert how == "prepared"
    assert summary.startswith(f"train: {speech_manifest}: 12 examples; skipped ")
    for reason in ("1 no audio or text field", "1 silent audio", "unreadable audio"):
        assert reason in summary
    assert "longer than" in summary
    assert data_command(config, cache, "info") == (summary, "from cache", path)

    # A clip edited in place (same name): the cache entry is checked again, not trusted.
    clip = speech_manifest.parent / "utt0002.wav"
    soundfile.write(clip, np.zeros(8_000, dtype=np.float32), 16_000)  # now silent
    rebuilt, how, again = data_command(config, cache, "info")
    assert how == "prepared" and again == path
    assert "11 examples" in rebuilt and "2 silent audio" in rebuilt

    # A manifest row naming a file that is not there stops the run, naming the line.
    with speech_manifest.open("a") as out:
        out.write(json.dumps({"audio": "gone.wav", "text": "one"}) + "\n")
    failed = run_cli("data", "info", str(config), OMNITUNE_CACHE=str(cache))
    assert failed.returncode == 1
    assert f"{speech_manifest}:17: audio file" in failed.stderr and "gone.wav" in failed.stderr


def test_speech_prepared_for_another_feature_window_is_a_separate_cache_entry(tiny_model, tmp_path):
    """Two Whispers with different windows (2 s and OpenAI's 30 s) read one manifest: each gets
    its own prepared data and features. (They once shared one entry, keyed without the
    feature extractor's settings, and the 30-second model was fed 2-second features.)"""
    manifest = write_tone_corpus(tmp_path / "clips", 4, seed=0)
    cache = tmp_path / "cache"
    (tmp_path / "short").mkdir()
    (tmp_path / "wide").mkdir()
    short = write_config(tmp_path / "short", tiny_model("whisper"), "speech", manifest)
    wide_model = tmp_path / "whisper-30s"
    assert run_cli("models", "build-tiny", "whisper-30s", "--out", str(wide_model)).returncode == 0
    wide = write_config(tmp_path / "wide", wide_model, "speech", manifest)
    _, how_short, path_short = data_command(short, cache, "prepare")
    _, how_wide, path_wide = data_command(wide, cache, "prepare")
    assert how_short == how_wide == "prepared" and path_short != path_wide


def test_speech_prepared_with_two_processes_equals_the_row_by_row_reader(
    tiny_model, speech_manifest, monkeypatch, tmp_path
):
    from transformers import AutoProcessor

    from omnitune.modalities.speech.data import read_speech_dataset

    monkeypatch.setenv("OMNITUNE_CACHE", str(tmp_path / "cache"))
    processor = AutoProcessor.from_pretrained(tiny_model("whisper"))
    row_by_row, prepared = read_both_ways(
        read_speech_dataset, processor, speech_manifest, "speech", balance={"by": "speaker"}
    )
    assert len(row_by_row) == 12
    assert_same_examples(row_by_row, prepared)


@pytest.fixture
def vqa_data(tmp_path) -> Path:
    """8 digit questions, a truncated PNG, a row without fields, one question too long."""
    data = write_digit_vqa(tmp_path / "vqa", 0, 8, broken=True)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    rows.append({"image": "digit0001.png", "note": "no question"})
    rows.append({**rows[0], "question": "Which digit is this? " * 40})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


def test_vision_language_rows_are_checked_once_and_rechecked_when_an_image_changes(
    tiny_model, vqa_data, tmp_path
):
    config = write_config(
        tmp_path, tiny_model("llava"), "vision_language", vqa_data, max_length=160
    )
    cache = tmp_path / "cache"
    summary, how, path = data_command(config, cache, "prepare")
    assert how == "prepared"
    assert summary.startswith(f"train: {vqa_data}: 8 examples; skipped ")
    assert "1 longer than data.max_length (160 tokens)" in summary
    assert "1 no messages or image/question/answer fields" in summary
    assert data_command(config, cache, "info") == (summary, "from cache", path)

    image = vqa_data.parent / "digit0003.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00now broken")
    rebuilt, how, _ = data_command(config, cache, "info")
    assert how == "prepared" and "7 examples" in rebuilt


def test_vision_language_prepared_with_two_processes_equals_the_row_by_row_reader(
    tiny_model, vqa_data, monkeypatch, tmp_path
):
    from transformers import AutoProcessor

    from omnitune.modalities.vision_language.data import read_vlm_dataset

    monkeypatch.setenv("OMNITUNE_CACHE", str(tmp_path / "cache"))
    processor = AutoProcessor.from_pretrained(tiny_model("llava"))
    row_by_row, prepared = read_both_ways(
        read_vlm_dataset,
        processor,
        vqa_data,
        "vision_language",
        max_length=160,
        balance={"by": "domain"},
    )
    assert len(row_by_row) == 8
    assert_same_examples(row_by_row, prepared)
