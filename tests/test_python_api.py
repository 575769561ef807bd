"""The Python API (`import omnitune`, issue 21): train from a dict and from in-memory data,
evaluate, export, the CLI's errors as exceptions naming the field, and a cheap import."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import omnitune
from tests.conftest import run_python


def test_importing_omnitune_loads_neither_torch_nor_transformers_nor_pydantic():
    probe = run_python(
        "import sys, omnitune\n"
        "assert callable(omnitune.train) and callable(omnitune.evaluate)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'pydantic', 'datasets') "
        "if m in sys.modules))"
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert probe.stdout.strip() == "[]"


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_train_from_a_dict_with_a_dataset_in_memory_then_evaluate_and_export(
    tiny_model, text_data, tmp_path
):
    import datasets

    train_rows = rows_of(text_data["train"])[:64]
    config = {
        "model": {"name_or_path": str(tiny_model("text")), "modality": "text"},
        "data": {"train": datasets.Dataset.from_list(train_rows), "max_length": 64},
        "train": {"max_steps": 50, "batch_size": 8, "lr": 0.01, "num_threads": 1},
        "output_dir": str(tmp_path / "run"),
    }
    result = omnitune.train(config, train={"max_steps": 4}, train__logging_steps=1)
    assert result.steps == 4 and (result.output / "adapter_config.json").is_file()
    logged = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
    assert [r["step"] for r in logged if r["kind"] == "train"] == [1, 2, 3, 4]
    # The rows became a file named by their content, which the run's config names; the same
    # rows as a list of dicts name the same file (so the prepared cache is reused).
    saved = omnitune.load_config(result.run_dir / "config.yaml")
    assert rows_of(Path(saved.data.train)) == train_rows
    assert omnitune.load_config(config, data={"train": train_rows}).data.train == saved.data.train

    held_out = rows_of(text_data["eval"])
    scores = omnitune.evaluate(result.run_dir, data=held_out)
    assert scores.examples == len(held_out) and scores.metrics["loss"] > 0
    assert scores.data.endswith(f": {len(held_out)} examples")
    from_file = omnitune.evaluate(result.run_dir, data=text_data["eval"])
    assert from_file.metrics["loss"] == pytest.approx(scores.metrics["loss"])

    merged = omnitune.export(result.run_dir, merge=True, out=tmp_path / "merged")
    assert merged == tmp_path / "merged" and (merged / "config.json").is_file()


def test_bad_configs_raise_the_clis_errors_naming_the_field(tiny_model, text_data, tmp_path):
    config = {
        "model": {"name_or_path": str(tiny_model("text")), "modality": "text"},
        "data": {"train": str(text_data["train"])},
        "train": {"max_steps": 1},
        "output_dir": str(tmp_path / "run"),
    }
    assert omnitune.load_config(config, train__max_steps=3).train.max_steps == 3
    with pytest.raises(omnitune.ConfigError, match=r"train\.max_steps"):
        omnitune.load_config(config, train={"max_steps": -1})
    with pytest.raises(omnitune.ConfigError, match=r"train\.learning_rat"):
        omnitune.train(config, train__learning_rat=0.1)
    with pytest.raises(omnitune.ConfigError, match=r"data\.train: .*not int"):
        omnitune.load_config(config, data={"train": 42})
    with pytest.raises(omnitune.ConfigError, match=r"data\.train: the in-memory dataset has no"):
        omnitune.load_config(config, data={"train": []})
    with pytest.raises(omnitune.DataError, match="no such data file"):
        omnitune.train(config, data__train=str(tmp_path / "missing.jsonl"), train__max_steps=1)
    with pytest.raises(omnitune.ConfigError, match="config: a YAML path, a dict or a RunConfig"):
        omnitune.load_config(3)
    # A RunConfig is accepted as it is, and overridden like the others.
    loaded = omnitune.load_config(config)
    assert omnitune.load_config(loaded, train__max_steps=5).train.max_steps == 5
