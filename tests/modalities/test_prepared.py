"""Text data prepared once in Arrow (issue 17): the cache is hit by an unchanged run and rebuilt
when the file, the tokenizer or max_length changes; any `data.num_proc` gives the same ids and
skip counts as the row-by-row reader; `omnitune data prepare/info` drive it from the CLI."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from omnitune.trainers.config import RunConfig
from tests.conftest import run_cli


@pytest.fixture
def chat_file(tmp_path, text_data) -> Path:
    """The digit-chat training rows with the kinds of bad row a real file has."""
    lines = Path(text_data["train"]).read_text().splitlines()
    lines[3] = '{"messages": [{"role": "user", "content": "cut'
    lines[5] = "[1, 2, 3]"
    lines[9] = json.dumps({"question": "no usable field"})
    lines.insert(11, "")
    lines.append(json.dumps({"text": "a plain text row " * 30}))  # over max_length 64: dropped
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def config_file(tmp_path: Path, model: Path, data: Path, **data_section) -> Path:
    path = tmp_path / "run.yaml"
    config = {
        "model": {"name_or_path": str(model), "modality": "text"},
        "data": {"train": str(data), "max_length": 64, **data_section},
        "train": {"max_steps": 1},
        "output_dir": str(tmp_path / "run"),
    }
    path.write_text(yaml.safe_dump(config))
    return path


def prepared(result) -> tuple[str, str]:
    """('prepared'|'from cache', cache path) of the train line of `omnitune data ...`."""
    assert result.returncode == 0, result.stderr[-3000:]
    match = re.search(r"\n  (prepared in [\d.]+ s|from cache): (\S+)", result.stdout)
    assert match, result.stdout
    return match.group(1).split(" in")[0], match.group(2)


def test_cache_is_reused_and_rebuilt_when_file_tokenizer_or_max_length_change(
    tiny_model, chat_file, tmp_path, monkeypatch
):
    from transformers import AutoTokenizer

    cache = tmp_path / "cache"
    config = config_file(tmp_path, tiny_model("text"), chat_file)
    first = run_cli("data", "prepare", str(config), OMNITUNE_CACHE=str(cache))
    how, path = prepared(first)
    assert how == "prepared"
    assert "253 examples; skipped 1 invalid JSON" in first.stdout
    assert "1 longer than data.max_length (64 tokens)" in first.stdout
    assert "1 no messages, prompt/completion or text field, 1 not a JSON object" in first.stdout
    again = run_cli("data", "info", str(config), OMNITUNE_CACHE=str(cache))
    assert prepared(again) == ("from cache", path)

    # The same cache from this process: what changes the ids changes the entry.
    monkeypatch.setenv("OMNITUNE_CACHE", str(cache))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model("text"))

    def origin(tokenizer, **data_section) -> tuple[str, str]:
        read = _read(_config(tiny_model("text"), chat_file, **data_section), tokenizer)
        how, _, where = read.origin.partition(": ")
        return how.split(" in")[0], where

    assert origin(tokenizer) == ("from cache", path)
    longer = origin(tokenizer, max_length=512)
    assert longer[0] == "prepared" and longer[1] != path

    model = tmp_path / "model-with-another-template"
    shutil.copytree(tiny_model("text"), model)
    settings = json.loads((model / "tokenizer_config.json").read_text())
    template = settings.get("chat_template") or (model / "chat_template.jinja").read_text()
    changed = template.replace("{{", "{{- ", 1) if "{{ " in template else template + " "
    if "chat_template" in settings:
        settings["chat_template"] = changed
        (model / "tokenizer_config.json").write_text(json.dumps(settings))
    else:
        (model / "chat_template.jinja").write_text(changed)
    other = origin(AutoTokenizer.from_pretrained(model))
    assert other[0] == "prepared" and other[1] not in (path, longer[1])

    with chat_file.open("a") as handle:
        handle.write(json.dumps({"prompt": "one more", "completion": "row"}) + "\n")
    grown = _read(_config(tiny_model("text"), chat_file), tokenizer)
    assert grown.origin.startswith("prepared in") and len(grown) == 254


def _read(config: RunConfig, tokenizer):
    from omnitune.modalities.text.data import read_text_dataset

    return read_text_dataset(config.data.train, config, tokenizer, True)


def _config(model: Path, data: Path, **data_section) -> RunConfig:
    return RunConfig.model_validate(
        {
            "model": {"name_or_path": str(model), "modality": "text"},
            "data": {"train": str(data), "max_length": 64, **data_section},
            "train": {"max_steps": 1},
        }
    )


@pytest.mark.parametrize("overlong", ["drop", "truncate"])
def test_any_num_proc_gives_the_ids_and_skips_of_the_row_reader(
    tiny_model, chat_file, tmp_path, monkeypatch, overlong
):
    from transformers import AutoTokenizer

    model = tiny_model("text")
    tokenizer = AutoTokenizer.from_pretrained(model)
    # 3,000 rows: enough for two worker processes to each take a share.
    rows = chat_file.read_text().splitlines()
    chat_file.write_text("\n".join(rows * 12) + "\n")
    options = {"options": {"overlong": overlong}}
    rows_read = _read(_config(model, chat_file, cache=False, **options), tokenizer)
    results = []
    for workers in (1, 2):
        monkeypatch.setenv("OMNITUNE_CACHE", str(tmp_path / f"cache-{workers}"))
        read = _read(_config(model, chat_file, num_proc=workers, **options), tokenizer)
        assert read.origin.startswith("prepared in")
        results.append(read)
    for read in results:
        assert len(read) == len(rows_read) > 2900
        assert read.skipped == rows_read.skipped
        assert read.truncated == rows_read.truncated
        assert list(read.lengths) == list(rows_read.lengths)
        for got, expected in zip(read.items, rows_read.items, strict=True):
            assert got == expected
    if overlong == "truncate":
        assert rows_read.truncated == 12


def test_a_hub_dataset_is_prepared_like_a_file_and_rebuilt_when_a_new_version_is_saved(
    tiny_model, text_data, tmp_path, monkeypatch
):
    import datasets
    from transformers import AutoTokenizer

    model = tiny_model("text")
    tokenizer = AutoTokenizer.from_pretrained(model)
    monkeypatch.setenv("OMNITUNE_CACHE", str(tmp_path / "cache"))
    rows = [json.loads(line) for line in Path(text_data["train"]).read_text().splitlines()]
    rows[4] = {"question": "no usable field"}
    saved = tmp_path / "hub"
    datasets.Dataset.from_list(rows[:100]).save_to_disk(str(saved))

    rows_read = _read(_config(model, saved, cache=False), tokenizer)
    first = _read(_config(model, saved), tokenizer)
    assert first.origin.startswith("prepared in") and len(first) == len(rows_read) == 99
    assert first.skipped == rows_read.skipped == {"no messages, prompt/completion or text field": 1}
    assert list(first.items) == rows_read.items
    assert _read(_config(model, saved), tokenizer).origin.startswith("from cache")

    datasets.Dataset.from_list(rows[:120]).save_to_disk(str(tmp_path / "hub-v2"))
    shutil.rmtree(saved)
    (tmp_path / "hub-v2").rename(saved)
    second = _read(_config(model, saved), tokenizer)
    assert second.origin.startswith("prepared in") and len(second) == 119


def test_a_dataset_without_usable_rows_and_a_missing_file_are_named(tiny_model, tmp_path):
    empty = tmp_path / "bad.jsonl"
    empty.write_text("not json\n[1]\n")
    config = config_file(tmp_path, tiny_model("text"), empty)
    result = run_cli("train", str(config))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "no usable training examples" in result.stderr
    assert "skipped 1 invalid JSON, 1 not a JSON object" in result.stderr
    missing = run_cli("data", "prepare", str(config), f"data.train={tmp_path / 'gone.jsonl'}")
    assert missing.returncode == 1 and "gone.jsonl: no such data file" in missing.stderr


def test_the_profile_sample_is_seeded_and_reads_a_few_stretches_of_the_file():
    import numpy as np

    from omnitune.modalities.base import SAMPLE_BLOCK, Examples, sample_examples

    examples = Examples(items=[{"row": i} for i in range(100_000)], source="rows.jsonl")
    sample = sample_examples(examples, 2_000, seed=7)
    rows = np.array([item["row"] for item in sample.items])
    assert len(rows) == 2_000 and len(set(rows)) == 2_000
    assert np.all(np.diff(rows) > 0)  # in dataset order
    assert [i["row"] for i in sample_examples(examples, 2_000, seed=7).items] == list(rows)
    assert [i["row"] for i in sample_examples(examples, 2_000, seed=8).items] != list(rows)
    stretches = 1 + int(np.sum(np.diff(rows) > 1))
    assert stretches <= 2_000 / SAMPLE_BLOCK + 1  # not 2,000 scattered rows
    assert rows.min() < 20_000 and rows.max() > 80_000  # drawn from the whole file
    small = Examples(items=examples.items[:50], source="small.jsonl")
    assert sample_examples(small, 2_000) is small  # a small dataset is profiled whole
