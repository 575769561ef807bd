"""`omnitune prune` (issue 38, depth pruning): decoder layers removed by importance or from the
end into a folder plain transformers loads with the stated layer count; a training run from it
recovers held-out loss; what cannot be pruned is refused naming the field."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow


def test_a_text_model_loses_its_least_important_layer_and_training_recovers_it(
    sft_model, text_data, tmp_path
):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "pruned"
    done = run_cli(
        "prune",
        str(sft_model),
        "--layers",
        "1",
        "--data",
        str(text_data["eval"]),
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((out / "prune.json").read_text())
    scores = record["importance"]
    assert record["layers"] == {"before": 2, "after": 1, "removed": [scores.index(min(scores))]}
    assert record["parameters"]["after"] < record["parameters"]["before"]
    pruned = AutoModelForCausalLM.from_pretrained(out)
    assert pruned.config.num_hidden_layers == 1 and len(pruned.model.layers) == 1
    assert f"1 of 2 decoder layers (removed {record['layers']['removed'][0]} by importance)" in (
        done.stdout
    )
    before, after = record["metrics"]["before"]["loss"], record["metrics"]["after"]["loss"]
    assert after > before  # a layer was worth something

    config = tmp_path / "recover.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"name_or_path": str(out), "modality": "text"},
                "data": {"train": str(text_data["train"]), "eval": str(text_data["eval"])},
                "peft": {"method": "full"},
                "train": {"max_steps": 30, "batch_size": 32, "lr": 3e-3, "num_threads": 1},
                "output_dir": str(tmp_path / "recovered"),
            }
        )
    )
    recovered = run_cli("train", str(config))
    assert recovered.returncode == 0, recovered.stderr[-2000:]
    summary = json.loads((tmp_path / "recovered" / "summary.json").read_text())
    assert summary["eval_metrics"]["loss"] < after, (summary["eval_metrics"], after)

    # The three stages, in the run summary and in `omnitune eval` of the recovered run.
    chain = summary["pruning"]
    assert list(chain) == ["before pruning", "after pruning", "after recovery"]
    sizes = [chain[stage]["footprint"]["parameters"] for stage in chain]
    assert sizes == [record["parameters"]["before"], *[record["parameters"]["after"]] * 2]
    assert all(chain[stage]["footprint"]["tokens_per_second"] > 0 for stage in chain)
    assert chain["after pruning"]["metrics"]["loss"] == pytest.approx(after)
    assert chain["after recovery"]["metrics"]["loss"] < after
    assert summary["footprint"]["parameters"] == record["parameters"]["after"]
    shown = run_cli("eval", str(tmp_path / "recovered"))
    assert shown.returncode == 0, shown.stderr[-2000:]
    lines = shown.stdout.splitlines()
    assert any(line.startswith(f"model: {sizes[-1]:,} parameters") for line in lines), lines
    table = {line.split("  ")[0]: line for line in lines if line.startswith(("before", "after"))}
    assert set(table) == {"before pruning", "after pruning", "after recovery"}, lines
    assert f"{sizes[0]:,}" in table["before pruning"] and f"{sizes[1]:,}" in table["after recovery"]


def test_last_removes_the_final_layer_and_whisper_loses_a_decoder_layer(
    sft_model, text_data, tiny_model, tmp_path
):
    from transformers import AutoModelForSpeechSeq2Seq

    last = run_cli(
        "prune", str(sft_model), "--layers", "1", "--by", "last",
        "--data", str(text_data["eval"]), "--out", str(tmp_path / "last"),
    )  # fmt: skip
    assert last.returncode == 0, last.stderr[-2000:]
    assert json.loads((tmp_path / "last" / "prune.json").read_text())["layers"]["removed"] == [1]

    clips = REPO / "modalities/speech/corpus/base/test.jsonl"
    out = tmp_path / "whisper"
    done = run_cli(
        "prune",
        str(tiny_model("whisper")),
        "--layers",
        "1",
        "--data",
        str(clips),
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    pruned = AutoModelForSpeechSeq2Seq.from_pretrained(out)
    assert pruned.config.decoder_layers == 1 and len(pruned.model.decoder.layers) == 1
    assert pruned.config.encoder_layers == 2  # only the decoder is pruned
    assert "wer" in json.loads((out / "prune.json").read_text())["metrics"]["after"]


def test_what_cannot_be_pruned_is_refused_naming_the_field(
    sft_model, text_data, tiny_model, tmp_path
):
    data = ["--data", str(text_data["eval"]), "--out", str(tmp_path / "x")]
    every = run_cli("prune", str(sft_model), "--layers", "2", *data)
    assert every.returncode == 2 and "--layers: 2 of 2 decoder layers" in every.stderr, every.stderr
    vlm = run_cli("prune", str(tiny_model("llava")), "--layers", "1", *data)
    assert vlm.returncode == 2, vlm.stderr[-2000:]
    assert "model.name_or_path: pruning takes a text decoder or Whisper's decoder, not a llava" in (
        vlm.stderr
    )
    assert not (tmp_path / "x").exists()
