"""DPO, ORPO and KTO through the CLI: metrics move the right way, adapters reload with the same
scores, bad rows are counted, and killed runs resume exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from omnitune.modalities.text.sample_data import write_digit_feedback, write_digit_pairs
from omnitune.modalities.vision_language.sample_data import write_digit_vqa_pairs
from tests.conftest import run_cli
from tests.trainers.conftest import read_metrics
from tests.trainers.test_resume import RESUMABLE, kill_resume_and_compare


@pytest.fixture(scope="session")
def pair_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_digit_pairs(tmp_path_factory.mktemp("pairs"), train=256, test=48, seed=0)


@pytest.fixture(scope="session")
def feedback_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_digit_feedback(tmp_path_factory.mktemp("feedback"), train=256, test=48, seed=0)


def _pairs_run(run_config, pair_data, name: str, **sections):
    sections.setdefault("data", {})
    sections["data"] = {"train": str(pair_data["train"]), "eval": str(pair_data["eval"])} | (
        sections["data"]
    )
    return run_config(name, **sections)


def _evals(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir) if r["kind"] == "eval"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
def test_dpo_ranks_the_chosen_answers_higher_and_eval_agrees(run_config, pair_data, method):
    path = _pairs_run(
        run_config,
        pair_data,
        f"dpo-{method}",
        objective={"name": "dpo", "beta": 0.1},
        peft={"method": method},
        train={"max_steps": 60, "eval_steps": 30, "lr": 3e-3 if method == "lora" else 1e-3},
    )
    trained = run_cli("train", str(path))
    assert trained.returncode == 0, trained.stderr[-3000:]
    run_dir = path.parent / f"dpo-{method}"
    evals = _evals(run_dir)
    first, last = evals[0], evals[-1]
    assert first["loss"] == pytest.approx(0.6931, abs=1e-3)  # log 2: policy = reference
    assert first["reward_margin"] == pytest.approx(0.0, abs=1e-6)
    assert last["reward_accuracy"] >= first["reward_accuracy"] + 0.3
    assert last["reward_margin"] > 0.01
    assert last["loss"] < first["loss"]

    # A fresh process reloads the adapter (or full model) and scores the same pairs the same.
    scored = run_cli("eval", str(run_dir), "--json")
    assert scored.returncode == 0, scored.stderr[-3000:]
    again = json.loads(scored.stdout)
    for name in ("reward_accuracy", "reward_margin", "loss", "logp_chosen"):
        assert again[name] == pytest.approx(last[name], abs=1e-5), name


@pytest.mark.slow
def test_orpo_lowers_the_nll_and_raises_the_odds_of_the_chosen(run_config, pair_data):
    path = _pairs_run(
        run_config,
        pair_data,
        "orpo",
        objective={"name": "orpo", "beta": 1.0},
        train={"max_steps": 60, "eval_steps": 30},
    )
    trained = run_cli("train", str(path))
    assert trained.returncode == 0, trained.stderr[-3000:]
    evals = _evals(path.parent / "orpo")
    first, last = evals[0], evals[-1]
    assert last["nll"] < first["nll"] - 0.3
    assert last["log_odds_ratio"] > first["log_odds_ratio"]
    assert last["reward_accuracy"] > first["reward_accuracy"]


@pytest.mark.slow
def test_precomputed_reference_gives_the_live_reference_scores_and_is_cached(run_config, pair_data):
    live = _pairs_run(
        run_config, pair_data, "live", objective={"name": "dpo"}, train={"max_steps": 10}
    )
    cached = _pairs_run(
        run_config,
        pair_data,
        "cached",
        objective={"name": "dpo", "precompute_reference": True},
        train={"max_steps": 10},
    )
    for path in (live, cached):
        assert run_cli("train", str(path)).returncode == 0
    a, b = _evals(path.parent / "live")[-1], _evals(path.parent / "cached")[-1]
    for name in ("loss", "reward_accuracy", "reward_margin"):
        assert a[name] == pytest.approx(b[name], abs=1e-5), name
    log = (path.parent / "cached" / "train.log").read_text()
    assert "reference log-probabilities of 256 train pairs computed" in log
    assert (path.parent / "cached" / "reference-logps.pt").is_file()
    more = run_cli("train", str(cached), "train.max_steps=12")
    assert more.returncode == 0, more.stderr[-3000:]
    assert "resumed from" in more.stderr
    assert "pairs computed" not in more.stderr  # read back from the run folder


def test_malformed_and_overlong_pairs_are_counted_or_fail_naming_the_line(
    run_config, pair_data, tmp_path
):
    rows = [
        {"prompt": "one two", "chosen": "1 2", "rejected": "1 3"},
        {"prompt": "three", "chosen": "3"},
        {"prompt": "four", "chosen": "4", "rejected": "4"},
        {"chosen": "5", "rejected": "6"},
        {
            "prompt": [{"role": "user", "content": "six"}, {"role": "assistant", "content": "6"}],
            "chosen": "6",
            "rejected": "9",
        },
        {"prompt": "seven " * 40, "chosen": "7 " * 40, "rejected": "1"},
        {
            "messages": [{"role": "user", "content": "eight"}],
            "chosen": [{"role": "assistant", "content": "8"}],
            "rejected": [{"role": "assistant", "content": "3"}],
        },
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    path = run_config(
        "bad-pairs",
        data={"train": str(data), "eval": None, "max_length": 64},
        objective={"name": "dpo"},
        train={"max_steps": 1, "batch_size": 2, "eval_steps": None},
    )
    trained = run_cli("train", str(path))
    assert trained.returncode == 0, trained.stderr[-3000:]
    summary = json.loads((path.parent / "bad-pairs" / "summary.json").read_text())
    assert summary["train_skipped"] == {
        "no chosen or rejected answer": 1,
        "chosen and rejected are identical": 1,
        "no prompt or messages field": 1,
        "prompt ends with an assistant turn": 1,
        "pair longer than data.max_length (64 tokens)": 1,
        "invalid JSON": 1,
    }
    assert f"{data}: 2 pairs; skipped" in trained.stderr

    failed = run_cli("train", str(path), "data.options.overlong=fail")
    assert failed.returncode == 1
    assert f"{data}:6: pair of" in failed.stderr and "over data.max_length=64" in failed.stderr
    refused = run_cli("config", "check", str(path), "data.options.overlong=truncate")
    assert refused.returncode == 2
    assert "data.options.overlong: preference pairs are never truncated" in refused.stderr


def test_objectives_that_do_not_fit_the_modality_are_refused_naming_the_field(tmp_path):
    from tests.conftest import REPO

    speech = run_cli(
        "config", "check", str(REPO / "configs" / "demo-speech-base.yaml"), "objective.name=orpo"
    )
    assert speech.returncode == 2
    assert "objective.name: orpo is for text and vision_language models, not speech" in (
        speech.stderr
    )
    unknown = run_cli(
        "config", "check", str(REPO / "configs" / "demo-text.yaml"), "objective.name=simpo"
    )
    assert unknown.returncode == 2
    assert "objective.name: unknown 'simpo' (known: sft, dpo, orpo, kto, grpo, ppo, distill)" in (
        unknown.stderr
    )


@pytest.mark.slow
def test_kto_raises_the_desirable_answers_over_the_undesirable_and_eval_agrees(
    run_config, feedback_data
):
    path = _pairs_run(
        run_config,
        feedback_data,
        "kto",
        objective={"name": "kto", "beta": 1.0},
        train={"max_steps": 80, "eval_steps": 40, "lr": 3e-3},
    )
    trained = run_cli("train", str(path))
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert f"{feedback_data['train']}: 256 answers" in trained.stderr
    run_dir = path.parent / "kto"
    evals = _evals(run_dir)
    first, last = evals[0], evals[-1]
    assert first["loss"] == pytest.approx(0.5, abs=1e-6)  # 1 - sigmoid(0): policy = reference
    assert first["kl"] == 0.0 and first["reward_margin"] == pytest.approx(0.0, abs=1e-6)
    assert last["reward_margin"] > 0.1
    assert last["reward_desirable"] > last["reward_undesirable"]
    assert last["loss"] < first["loss"]

    scored = run_cli("eval", str(run_dir), "--json", "--checkpoint", "last")
    assert scored.returncode == 0, scored.stderr[-3000:]
    again = json.loads(scored.stdout)
    for name in ("loss", "kl", "label_accuracy", "reward_margin", "logp_desirable"):
        assert again[name] == pytest.approx(last[name], abs=1e-5), name

    # Plain PEFT loads the adapter, and it changes what the model says.
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_path = yaml.safe_load(path.read_text())["model"]["name_or_path"]
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    base = AutoModelForCausalLM.from_pretrained(base_path).eval()
    before = base(input_ids=ids).logits
    adapted = PeftModel.from_pretrained(base, str(run_dir / "adapter")).eval()
    assert not torch.allclose(adapted(input_ids=ids).logits, before, atol=1e-4)


@pytest.mark.slow
def test_kto_with_a_precomputed_reference_gives_the_live_scores(run_config, feedback_data):
    runs = {}
    for name, precompute in (("kto-live", False), ("kto-cached", True)):
        path = _pairs_run(
            run_config,
            feedback_data,
            name,
            objective={"name": "kto", "beta": 1.0, "precompute_reference": precompute},
            train={"max_steps": 6, "eval_steps": 6},
        )
        trained = run_cli("train", str(path))
        assert trained.returncode == 0, trained.stderr[-3000:]
        runs[name] = _evals(path.parent / name)[-1]
    for metric in ("loss", "kl", "label_accuracy", "reward_margin"):
        assert runs["kto-live"][metric] == pytest.approx(runs["kto-cached"][metric], abs=1e-5)
    assert "reference log-probabilities of 256 train pairs computed" not in trained.stderr
    assert "reference log-probabilities of 256 train answers computed" in trained.stderr


def test_unpaired_rows_are_checked_and_an_unbalanced_set_gets_the_advised_weight(
    run_config, tmp_path
):
    rows = [
        {"prompt": "one two", "completion": "1 2", "label": True},
        {"prompt": "three", "completion": "3", "label": "yes"},
        {"prompt": "four", "label": False},
        {"prompt": "five", "completion": "  ", "label": True},
        {"completion": "6", "label": True},
        {"prompt": "seven", "completion": "7", "label": True},
        {"prompt": "eight", "completion": "3", "label": False},
        {"prompt": "nine", "completion": "9", "label": True},
    ]
    data = tmp_path / "feedback.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = run_config(
        "feedback-info",
        data={"train": str(data), "eval": None},
        objective={"name": "kto"},
    )
    info = run_cli("data", "info", str(path))
    assert info.returncode == 0, info.stderr[-3000:]
    assert f"{data}: 4 answers; skipped" in info.stdout
    for reason in (
        "1 label is not true or false",
        "1 no completion",
        "1 empty completion",
        "1 no prompt or messages field",
    ):
        assert reason in info.stdout, reason
    # 3 desirable to 1 undesirable weigh 3:1; the advised 4:3 at most needs 4/9 = 0.44.
    assert "3 desirable and 1 undesirable answers weigh 3.00:1" in info.stderr
    assert "objective.desirable_weight=0.44" in info.stderr
    fitted = run_cli("data", "info", str(path), "objective.desirable_weight=0.44")
    assert fitted.returncode == 0 and "weigh" not in fitted.stderr
    refused = run_cli("config", "check", str(path), "data.options.overlong=truncate")
    assert refused.returncode == 2
    assert "data.options.overlong: labelled answers are never truncated" in refused.stderr


@pytest.mark.slow
# LLaVA trains DPO (and KTO, SFT) on exported labels in tests/monitor/test_labelling_cli.py.
@pytest.mark.parametrize("family", ["idefics3", "qwen2-vl"])
def test_dpo_on_each_vision_language_family_reloads_with_the_same_scores(
    tiny_model, tmp_path, family
):
    import yaml

    train = write_digit_vqa_pairs(tmp_path / "train", 0, 32)
    test = write_digit_vqa_pairs(tmp_path / "test", 1400, 8)
    config = tmp_path / "vlm-dpo.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"name_or_path": str(tiny_model(family)), "modality": "vision_language"},
                "data": {"train": str(train), "eval": str(test)},
                "objective": {"name": "dpo"},
                "train": {"max_steps": 4, "batch_size": 4, "lr": 3e-3, "num_threads": 2},
                "output_dir": str(tmp_path / "run"),
            }
        )
    )
    trained = run_cli("train", str(config))
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert f"{train}: 32 pairs" in trained.stderr
    last = _evals(tmp_path / "run")[-1]
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    scored = run_cli("eval", str(tmp_path / "run"), "--json")
    assert scored.returncode == 0, scored.stderr[-3000:]
    again = json.loads(scored.stdout)
    assert again["examples"] == 8
    for name in ("reward_accuracy", "reward_margin", "loss"):
        assert again[name] == pytest.approx(last[name], abs=1e-5), name


@pytest.mark.slow
@pytest.mark.reliability
@pytest.mark.parametrize(
    ("objective", "data", "steps"),
    [("dpo", "pair_data", 60), ("orpo", "pair_data", 60), ("kto", "feedback_data", 60)],
)
def test_sigkill_then_resume_of_a_preference_run_equals_an_uninterrupted_run(
    run_config, request, objective, data, steps
):
    rows = request.getfixturevalue(data)
    kill_resume_and_compare(
        lambda name, **s: _pairs_run(run_config, rows, name, **s),
        steps,
        objective={"name": objective},
        peft=RESUMABLE["peft"],
        train={**RESUMABLE["train"], "max_steps": steps},
    )


def _config(model: Path, data: str, **data_section):
    from omnitune.trainers.config import RunConfig

    return RunConfig.model_validate(
        {
            "model": {"name_or_path": str(model), "modality": "text"},
            "data": {"train": data, **data_section},
            "objective": {"name": "dpo"},
            "train": {"max_steps": 1},
        }
    )


def test_pairs_read_the_same_from_jsonl_csv_parquet_and_a_saved_hf_dataset(
    tiny_model, pair_data, tmp_path
):
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset
    from transformers import AutoTokenizer

    from omnitune.modalities.text.preference import read_text_pairs

    rows = [json.loads(line) for line in pair_data["eval"].read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pairs.parquet")
    with (tmp_path / "pairs.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["prompt", "chosen", "rejected"])
        writer.writeheader()
        writer.writerows(rows)
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf-pairs"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model("text"))

    def items(source):
        read = read_text_pairs(source, _config(tiny_model("text"), source), tokenizer, False)
        return [(i["chosen_ids"], i["rejected_labels"]) for i in read.items]

    expected = items(str(pair_data["eval"]))
    assert len(expected) == 48
    for source in ("pairs.parquet", "pairs.csv", "hf-pairs"):
        assert items(str(tmp_path / source)) == expected, source


def test_overlong_text_is_dropped_failed_or_truncated_and_counted(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    from omnitune.core.errors import DataError
    from omnitune.modalities.text.data import read_text_dataset

    data = tmp_path / "text.jsonl"
    data.write_text(
        json.dumps({"text": "one two three"}) + "\n" + json.dumps({"text": "nine " * 80}) + "\n"
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_model("text"))

    def read(overlong):
        from omnitune.trainers.config import RunConfig

        config = RunConfig.model_validate(
            {
                "model": {"name_or_path": "unused", "modality": "text"},
                "data": {"train": str(data), "max_length": 32, "options": {"overlong": overlong}},
                "train": {"max_steps": 1},
            }
        )
        return read_text_dataset(str(data), config, tokenizer, True)

    dropped = read("drop")
    assert len(dropped) == 1
    assert dropped.skipped == {"longer than data.max_length (32 tokens)": 1}
    cut = read("truncate")
    assert len(cut) == 2 and cut.truncated == 1 and max(cut.lengths) == 32
    assert "truncated 1 to data.max_length" in cut.summary()
    with pytest.raises(DataError, match=r"text\.jsonl:2: \d+ tokens, over data.max_length=32"):
        read("fail")
