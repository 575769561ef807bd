"""Mixture-of-Experts runs (issue 36): LoRA on the fused experts and attention of each tiny MoE
family through `omnitune train`; the adapter reloads with plain PEFT to the same eval loss; a
SIGKILLed run resumes exactly; the router's balancing loss evens the experts' load; the load is
in metrics.jsonl; SFT with packing, DPO and GRPO run on an MoE; the merged export equals the
adapter; methods that cannot adapt fused experts are refused naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from omnitune.modalities.text.sample_data import write_digit_pairs
from omnitune.trainers.config import load_run_config
from tests.conftest import run_cli
from tests.trainers.conftest import read_metrics
from tests.trainers.test_resume import RESUMABLE, kill_resume_and_compare

pytestmark = pytest.mark.slow

FAMILIES = ("mixtral", "qwen3-moe", "olmoe")
EXPERTS = ["mlp.experts.down_proj", "mlp.experts.gate_up_proj"]


def moe_run(run_config, tiny_model, family: str, name: str, **sections) -> Path:
    return run_config(
        name, model={"name_or_path": str(tiny_model(family)), "modality": "text"}, **sections
    )


def plain_peft_eval_loss(base: Path, adapter: Path, config_path: Path) -> float:
    """The run's eval-set loss with the model loaded by plain transformers + PEFT (omnitune's
    reader and metric, none of its loading)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from omnitune.modalities.base import get_modality

    config = load_run_config(config_path)
    text = get_modality("text")
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    examples = text.dataset(config.data.eval, config, tokenizer, training=False)
    return text.evaluate(model, tokenizer, examples, config)["loss"]


@pytest.mark.parametrize("family", FAMILIES)
def test_each_moe_family_adapts_its_experts_and_reloads_with_plain_peft(
    family, run_config, tiny_model
):
    path = moe_run(run_config, tiny_model, family, family)
    done = run_cli("train", str(path))
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = Path(load_run_config(path).output_dir)
    adapter = json.loads((run_dir / "adapter/adapter_config.json").read_text())
    assert sorted(adapter["target_parameters"]) == EXPERTS
    assert {"q_proj", "v_proj"} <= set(adapter["target_modules"])

    records = read_metrics(run_dir)
    steps = [r for r in records if r["kind"] == "train"]
    assert all({"expert_load_cv", "router_entropy", "router_aux_loss"} <= set(r) for r in steps)
    load = [r for r in records if r["kind"] == "moe"]
    assert [r["step"] for r in load] == [r["step"] for r in steps]
    for record in load:  # 2 layers x 4 experts, each layer's shares summing to 1
        assert [len(row) for row in record["expert_share"]] == [4, 4]
        assert all(abs(sum(row) - 1) < 1e-3 for row in record["expert_share"])
    evals = [r for r in records if r["kind"] == "eval"]
    assert "expert_load_cv" in evals[-1] and "router_entropy" in evals[-1]
    assert any(r["kind"] == "moe_eval" for r in records)
    assert "expert_load_cv" in done.stdout  # the summary line

    summary = json.loads((run_dir / "summary.json").read_text())
    reloaded = plain_peft_eval_loss(tiny_model(family), run_dir / "adapter", path)
    assert abs(reloaded - summary["eval_metrics"]["loss"]) < 1e-4, (reloaded, summary)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_killed_moe_run_resumes_exactly(family, run_config, tiny_model):
    """LoRA on fused experts takes no dropout (peft), so the RNG state shows through the
    shuffled data order and the router's balancing loss instead."""
    model = {"name_or_path": str(tiny_model(family)), "modality": "text"}
    sections = {**RESUMABLE, "peft": {**RESUMABLE["peft"], "dropout": 0.0}}
    kill_resume_and_compare(
        run_config, 300, **sections, model=model, moe={"router_aux_loss_coef": 0.1}
    )


def test_the_router_loss_evens_the_experts_load(run_config, tiny_model):
    """Same seed and data, the router trained at a high learning rate: without the balancing
    loss its load drifts apart, with it the load stays even (measured: coefficient of variation
    0.69 vs 0.28 over the second half, 0.65 vs 0.25 at the last evaluation). This fails if the
    loss is not applied."""

    def load_cv(coef: float) -> tuple[float, float]:
        path = moe_run(
            run_config,
            tiny_model,
            "mixtral",
            f"aux-{coef}",
            moe={"router_aux_loss_coef": coef, "train_router": True},
            train={"max_steps": 60, "lr": 1e-2, "eval_steps": 60, "save_steps": 60},
        )
        done = run_cli("train", str(path))
        assert done.returncode == 0, done.stderr[-2000:]
        records = read_metrics(Path(load_run_config(path).output_dir))
        steps = [r["expert_load_cv"] for r in records if r["kind"] == "train"]
        second_half = steps[len(steps) // 2 :]
        last_eval = [r for r in records if r["kind"] == "eval"][-1]["expert_load_cv"]
        return sum(second_half) / len(second_half), last_eval

    (without, without_eval), (balanced, balanced_eval) = load_cv(0.0), load_cv(1.0)
    assert balanced < 0.7 * without, (balanced, without)
    assert balanced_eval < 0.7 * without_eval, (balanced_eval, without_eval)


def test_sft_with_packing_dpo_and_grpo_run_on_an_moe_and_the_merged_export_matches(
    run_config, tiny_model, tmp_path
):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from omnitune.trainers.loop import train

    model = {"name_or_path": str(tiny_model("olmoe")), "modality": "text"}
    packed = run_config(
        "packed", model=model, data={"packing": True, "max_length": 64}, train={"max_steps": 10}
    )
    result = train(load_run_config(packed))
    assert any(r["kind"] == "moe" for r in read_metrics(result.run_dir))

    pairs = write_digit_pairs(tmp_path / "pairs", train=64, test=16, seed=0)
    dpo = run_config(
        "dpo",
        model=model,
        data={"train": str(pairs["train"]), "eval": str(pairs["eval"])},
        objective={"name": "dpo"},
        train={"max_steps": 10},
    )
    dpo_run = train(load_run_config(dpo))
    steps = [r for r in read_metrics(dpo_run.run_dir) if r["kind"] == "train"]
    assert steps and all("router_aux_loss" in r and "reward_accuracy" in r for r in steps)

    grpo = run_config(
        "grpo",
        model=model,
        objective={"name": "grpo", "num_generations": 4, "max_new_tokens": 6},
        train={"max_steps": 4, "batch_size": 4, "eval_steps": None, "save_steps": 4},
    )
    grpo_run = train(load_run_config(grpo))
    steps = [r for r in read_metrics(grpo_run.run_dir) if r["kind"] == "train"]
    assert steps and "expert_load_cv" in steps[-1]

    exported = run_cli("export", str(result.run_dir), "--merge")
    assert exported.returncode == 0, exported.stderr[-3000:]
    merged = AutoModelForCausalLM.from_pretrained(exported.stdout.strip()).eval()
    adapted = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model("olmoe")), result.output
    ).eval()
    ids = torch.tensor([[3, 310, 394, 84, 4, 20, 21]])
    with torch.no_grad():
        expected, actual = adapted(input_ids=ids).logits, merged(input_ids=ids).logits
    assert torch.allclose(expected, actual, atol=1e-5), float((expected - actual).abs().max())
    assert not any("lora" in name for name, _ in merged.named_parameters())


@pytest.mark.parametrize(
    ("family", "overrides", "named"),
    [
        ("mixtral", ["peft.method=dora"], "peft.method: dora cannot put an adapter on fused"),
        ("mixtral", ["peft.method=ia3", "peft.target_parameters=[mlp.experts.down_proj]"],
         "peft.target_parameters: adapts parameters with LoRA only"),
        ("mixtral", ["peft.target_parameters=[mlp.experts.up_proj]"],
         "peft.target_parameters: mlp.experts.up_proj is not a fused expert weight"),
        ("text", ["moe.train_router=true"], "moe.train_router: this model has no router"),
        ("olmoe", ["peft.dropout=0.1"], "peft.dropout: LoRA on fused expert weights takes no"),
    ],
)  # fmt: skip
def test_what_cannot_adapt_fused_experts_is_refused_naming_the_field(
    family, overrides, named, run_config, tiny_model
):
    path = moe_run(run_config, tiny_model, family, "refused")
    done = run_cli("train", str(path), *overrides)
    assert done.returncode == 2, done.stderr[-2000:]
    assert named in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_an_expert_starved_for_collapse_steps_is_reported_once(tiny_model, caplog):
    """The log names the layer and expert whose share stayed below moe.collapse_share of an
    even share for moe.collapse_steps steps, once; an expert that recovers is not reported."""
    import logging

    import torch
    from transformers import AutoModelForCausalLM

    from omnitune.trainers.config import MoeSection
    from omnitune.trainers.moe import watch_routers

    model = AutoModelForCausalLM.from_pretrained(tiny_model("mixtral"))
    watch, coef = watch_routers(model, MoeSection(collapse_share=0.05, collapse_steps=100))
    assert watch is not None and coef == 0.001  # Mixtral's own coefficient
    starved = torch.tensor([[40.0, 30.0, 30.0, 0.0], [25.0, 25.0, 25.0, 25.0]])
    with caplog.at_level(logging.WARNING, logger="omnitune.train"):
        for step in (10, 60, 110, 160):
            watch._window = starved.clone()
            record = watch.window_record(step)
        assert record["expert_share"][0][3] == 0.0
    reports = [r.getMessage() for r in caplog.records if "collapsed" in r.getMessage()]
    assert len(reports) == 1 and reports[0].startswith("expert 3 of MoE layer 0"), reports
    watch.close()
