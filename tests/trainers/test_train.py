"""Training through the core: CLI runs, every PEFT method, guards, logs and artefacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from omnitune.trainers.config import load_run_config
from tests.conftest import run_cli
from tests.trainers.conftest import eval_losses

pytestmark = pytest.mark.slow


def test_train_cli_lowers_eval_loss_and_writes_the_run(run_config):
    path = run_config()
    result = run_cli("train", str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = Path(load_run_config(path).output_dir)
    losses = eval_losses(run_dir)
    assert losses[0] > losses[-1], losses
    for name in (
        "adapter",
        "config.yaml",
        "run.json",
        "metrics.jsonl",
        "train.log",
        "reference.json",
        "summary.json",
        "tensorboard",
    ):
        assert (run_dir / name).exists(), name
    assert "steps" in result.stdout and "saved" in result.stdout
    run = json.loads((run_dir / "run.json").read_text())
    assert run["packages"]["torch"] and run["packages"]["peft"]
    reference = json.loads((run_dir / "reference.json").read_text())
    assert reference["modality"] == "text" and reference["examples"] == 256
    assert {"chars", "words"} <= set(reference["features"])
    log = (run_dir / "train.log").read_text()
    assert "eval at step 0" in log and "trainable parameters" in log


def test_adapter_reloads_with_plain_peft(run_config, tiny_model):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from omnitune.trainers.loop import train

    config = load_run_config(run_config())
    result = train(config)
    base = AutoModelForCausalLM.from_pretrained(tiny_model("text"))
    reloaded = PeftModel.from_pretrained(base, result.output).eval()
    ids = torch.tensor([[3, 40, 50, 60, 4]])
    trained_logits = reloaded(input_ids=ids).logits
    with reloaded.disable_adapter():
        base_logits = reloaded(input_ids=ids).logits
    assert not torch.allclose(trained_logits, base_logits), "the adapter changed nothing"


# method -> overrides that make it learn the digit task within the step budget.
METHODS = {
    "lora": {},
    "dora": {},
    "rslora": {},
    "pissa": {},
    "olora": {},
    "loraplus": {"loraplus_lr_ratio": 8},
    "ia3": {},
    "prompt_tuning": {"num_virtual_tokens": 8},
    "full": {},
    "hft": {"hft_round_steps": 5},
}
METHOD_LR = {"ia3": 3e-2, "prompt_tuning": 3e-2, "full": 1e-3, "hft": 1e-3}


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_the_text_model(method, run_config):
    from omnitune.trainers.loop import train

    path = run_config(
        method,
        peft={"method": method, **METHODS[method]},
        train={"lr": METHOD_LR.get(method, 3e-3), "eval_steps": 30},
    )
    result = train(load_run_config(path))
    losses = eval_losses(result.run_dir)
    assert len(losses) == 2 and losses[1] < losses[0] - 0.02, (method, losses)
    expected = "model" if method in {"full", "hft"} else "adapter"
    assert result.output.name == expected and result.output.is_dir()


def test_qlora_without_cuda_fails_before_loading_any_weights(run_config, tmp_path):
    path = run_config(peft={"method": "qlora"}, model={"name_or_path": str(tmp_path / "absent")})
    result = run_cli("train", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "peft.method: qlora needs a CUDA GPU" in result.stderr
    assert "no such folder" not in result.stderr, "the device check must come before loading"


def test_unmatched_target_modules_name_the_layers_there_are(run_config):
    result = run_cli("train", str(run_config()), "peft.target_modules=[query,value]")
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert "peft.target_modules" in line and "q_proj" in line and "down_proj" in line


def test_half_fine_tuning_alternates_which_half_is_frozen(tiny_model):
    from transformers import AutoModelForCausalLM

    from omnitune.trainers.hft import HalfFineTuning

    model = AutoModelForCausalLM.from_pretrained(tiny_model("text"))
    schedule = HalfFineTuning(model, round_steps=5, selection="alternate", seed=0)
    assert len(schedule.names) >= 4

    def trained_at(step: int) -> set[str]:
        schedule.update(model, step)
        return {n for n, p in model.named_parameters() if p.requires_grad}

    first, same, second = trained_at(0), trained_at(4), trained_at(5)
    assert first == same and first and second and not first & second
    total = sum(p.numel() for p in model.parameters())
    frozen = sum(p.numel() for n, p in model.named_parameters() if n not in first)
    assert 0.2 < frozen / total < 0.8
    random_schedule = HalfFineTuning(model, round_steps=5, selection="random", seed=1)
    assert random_schedule.trained_groups(3) == random_schedule.trained_groups(3)
    assert len(random_schedule.trained_groups(3)) == len(schedule.names) // 2
