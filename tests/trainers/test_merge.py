"""`omnitune merge` (issue 36): LoRA adapters of two runs on one base merged with each of
PEFT's methods into a run folder that plain PEFT loads and `omnitune eval` scores; an adapter
merged with itself reproduces its eval loss; what cannot be merged is refused naming the field,
before any weights load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from omnitune.modalities.text.sample_data import write_digit_reversal
from omnitune.trainers.config import RunConfig
from tests.conftest import run_cli

pytestmark = pytest.mark.slow

METHODS = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune", "svd")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model, text_data) -> dict[str, Path]:
    """Short runs on the tiny chat model: digit words (LoRA r=8), reversal (r=8), digit words
    at r=4, an IA3 run, and a LoRA run on another base."""
    from omnitune.modalities.tiny import build_tiny
    from omnitune.trainers.loop import train

    root = tmp_path_factory.mktemp("merge")
    reversal = write_digit_reversal(root / "reversal", train=128, test=32, seed=0)
    other_base = build_tiny("text", root / "other-base", seed=1, hidden_size=32)

    def run(name: str, data: dict[str, Path], model: Path | None = None, **peft) -> Path:
        config = RunConfig.model_validate(
            {
                "model": {"name_or_path": str(model or tiny_model("text")), "modality": "text"},
                "data": {"train": str(data["train"]), "eval": str(data["eval"])},
                "peft": {"method": "lora", "r": 8, "alpha": 16, **peft},
                "train": {"max_steps": 20, "batch_size": 16, "lr": 3e-3, "num_threads": 1},
                "output_dir": str(root / name),
            }
        )
        return train(config).run_dir

    return {
        "words": run("words", text_data),
        "reversal": run("reversal", reversal),
        "words-r4": run("words-r4", text_data, r=4),
        "ia3": run("ia3", text_data, method="ia3"),
        "other-base": run("other-base", text_data, model=other_base),
        "reversal-data": reversal["eval"],
        "words-data": text_data["eval"],
    }


def eval_loss(target: Path, data: Path) -> float:
    done = run_cli("eval", str(target), "--data", str(data), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["loss"]


@pytest.mark.parametrize("method", METHODS)
def test_each_method_merges_two_task_adapters_into_a_run_plain_peft_loads(
    method, runs, tiny_model, tmp_path
):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / method
    done = run_cli(
        "merge", str(runs["words"]), str(runs["reversal"]), "--method", method, "--out", str(out)
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"merged 2 adapters ({method}" in done.stdout
    record = json.loads((out / "merge.json").read_text())
    assert [s["run"] for s in record["sources"]] == [str(runs["words"]), str(runs["reversal"])]
    assert record["weights"] == [0.5, 0.5] and all(
        len(s["adapter_sha256"]) == 64 for s in record["sources"]
    )
    profile = json.loads((out / "reference.json").read_text())
    sources = [json.loads((runs[n] / "reference.json").read_text()) for n in ("words", "reversal")]
    assert profile["examples"] == sum(p["examples"] for p in sources)

    base = AutoModelForCausalLM.from_pretrained(tiny_model("text"))
    merged = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    ids = torch.tensor([[3, 40, 50, 60, 4]])
    with torch.no_grad():
        adapted = merged(input_ids=ids).logits
        with merged.disable_adapter():
            plain = merged(input_ids=ids).logits
    assert not torch.allclose(adapted, plain), "the merged adapter changed nothing"
    for data in ("words-data", "reversal-data"):  # `omnitune eval` scores it on each task
        assert eval_loss(out, runs[data]) > 0


@pytest.mark.parametrize(
    ("method", "sources", "options"),
    [
        ("linear", 1, ["--weights", "1"]),
        ("svd", 2, ["--weights", "0.5,0.5"]),
        ("ties", 2, ["--weights", "1,1", "--density", "1"]),
    ],
)
def test_an_adapter_merged_with_itself_keeps_its_eval_loss(
    method, sources, options, runs, tmp_path
):
    """Where the arithmetic is exact: one adapter at weight 1; the SVD of half plus half of the
    same update (its rank is the adapter's); TIES of two equal adapters kept whole."""
    out = tmp_path / "self"
    words = str(runs["words"])
    done = run_cli("merge", *[words] * sources, "--method", method, *options, "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    expected = eval_loss(runs["words"], runs["words-data"])
    assert abs(eval_loss(out, runs["words-data"]) - expected) < 1e-4


@pytest.mark.parametrize(
    ("names", "options", "named"),
    [
        (["words", "other-base"], [], "model.name_or_path: "),
        (["words", "words-r4"], ["--method", "ties"], "peft.r: --method ties combines the A and B"),
        (["words", "ia3"], [], "peft.method: "),
        (["words", "reversal"], ["--method", "svd", "--density", "0.5"], "--density: --method svd"),
        (["words", "reversal"], ["--weights", "1"], "--weights: 1 weights for 2 runs"),
    ],
)
def test_what_cannot_be_merged_is_refused_naming_the_field(names, options, named, runs, tmp_path):
    out = tmp_path / "refused"
    done = run_cli("merge", *[str(runs[n]) for n in names], *options, "--out", str(out))
    assert done.returncode == 2, done.stdout + done.stderr[-2000:]
    assert named in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert not out.exists()


def test_ranks_that_differ_merge_with_svd(runs, tmp_path):
    out = tmp_path / "svd"
    done = run_cli(
        "merge", str(runs["words"]), str(runs["words-r4"]), "--method", "svd", "--out", str(out)
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out / "adapter/adapter_config.json").read_text())["r"] == 8
