"""PPO through the CLI: its rollouts and minibatch epochs raise the mean reward of a user's
reward function, the value head travels with the checkpoints, the adapter reloads with plain
PEFT, a killed run resumes exactly, and what PPO cannot do is refused naming the field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from omnitune.trainers.config import load_run_config
from tests.conftest import run_cli
from tests.trainers.conftest import read_metrics
from tests.trainers.test_resume import kill_resume_and_compare

pytestmark = pytest.mark.slow

PPO = {
    "peft": {"method": "lora", "r": 16, "alpha": 32},
    "objective": {
        "name": "ppo",
        "num_generations": 4,
        "max_new_tokens": 12,
        "temperature": 0.7,
        "ppo_epochs": 2,
        "ppo_minibatches": 2,
        "rewards": [{"name": "digit_rewards:right_count"}],
    },
    "train": {
        "max_steps": 40,
        "batch_size": 8,
        "lr": 1e-3,
        "logging_steps": 1,
        "eval_steps": None,
        "save_steps": 20,
    },
    "eval": {"metrics": ["exact_match"], "generation": {"max_new_tokens": 12}},
}

# A shaped reward a user might write: 1 when the completion has as many numerals as the
# answer. The tiny model after SFT gets it right about half the time, so there is room to learn.
USER_REWARD = """
def right_count(completions, rows, spec):
    def numerals(text):
        return [word for word in text.split() if word.isdigit()]

    return [
        float(len(numerals(c)) == len(numerals(r["answer"])))
        for c, r in zip(completions, rows)
    ]
"""


@pytest.fixture
def reward_module(tmp_path: Path) -> Path:
    folder = tmp_path / "user-code"
    folder.mkdir()
    (folder / "digit_rewards.py").write_text(textwrap.dedent(USER_REWARD))
    return folder


def _ppo(run_config, sft_model, name, **changes):
    sections = {key: dict(value) for key, value in PPO.items()}
    for key, value in changes.items():
        sections.setdefault(key, {}).update(value)
    sections["model"] = {"name_or_path": str(sft_model), "modality": "text"}
    return run_config(name, **sections)


def test_ppo_raises_mean_reward_and_its_value_head_is_saved(run_config, sft_model, reward_module):
    from safetensors.torch import load_file

    path = _ppo(run_config, sft_model, "ppo")
    trained = run_cli("train", str(path), PYTHONPATH=str(reward_module))
    assert trained.returncode == 0, trained.stderr[-3000:]
    run_dir = Path(load_run_config(path).output_dir)
    steps = [r for r in read_metrics(run_dir) if r["kind"] == "train"]
    assert len(steps) == 40
    first = sum(s["reward"] for s in steps[:10]) / 10
    last = sum(s["reward"] for s in steps[-10:]) / 10
    assert last >= first + 0.06, (first, last)
    for name in (
        "reward_digit_rewards_right_count",
        "policy_loss",
        "value_loss",
        "clip_fraction",
        "kl",
        "entropy",
        "completion_length",
        "generation_seconds",
        "scoring_seconds",
    ):
        assert name in steps[-1], name
    # Two epochs over each buffer: the second pass meets ratios the first moved, some clipped.
    assert 0 < max(s["clip_fraction"] for s in steps) < 1
    assert steps[-1]["kl"] > 0
    assert steps[-1]["value_mean"] != 0  # the zero-initialised value head learned

    checkpoint = load_file(run_dir / "checkpoints" / "step-00000040" / "trainable.safetensors")
    assert {"heads.value.weight", "heads.value.bias"} <= checkpoint.keys()
    head = load_file(run_dir / "heads" / "value.safetensors")
    assert (head["weight"] == checkpoint["heads.value.weight"]).all()

    again = run_cli("train", str(path), PYTHONPATH=str(reward_module))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "40 steps, train loss none (no step left to train)" in again.stdout

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(sft_model)
    adapted = PeftModel.from_pretrained(base, str(run_dir / "adapter"))
    assert sum("lora_" in n for n, _ in adapted.named_parameters()) > 0


@pytest.mark.reliability
def test_sigkill_then_resume_of_a_ppo_run_equals_an_uninterrupted_run(
    run_config, sft_model, reward_module, monkeypatch
):
    # kill_resume_and_compare's processes inherit the environment: the user reward must import.
    monkeypatch.setenv("PYTHONPATH", str(reward_module))
    kill_resume_and_compare(
        lambda name, **s: _ppo(run_config, sft_model, name, **s),
        30,
        peft={"dropout": 0.1},
        train={"max_steps": 30, "save_steps": 10, "save_total_limit": 3},
        eval={"metrics": []},
    )


def test_ppo_is_refused_where_it_cannot_apply(run_config, sft_model):
    path = _ppo(run_config, sft_model, "refused")
    accumulate = run_cli("config", "check", str(path), "train.grad_accum=2")
    assert accumulate.returncode == 2
    assert "train.grad_accum: PPO takes its own optimizer steps" in accumulate.stderr
    pissa = run_cli("config", "check", str(path), "peft.method=pissa")
    assert pissa.returncode == 2 and "peft.method: pissa moves the base weights" in pissa.stderr
    one = run_cli("config", "check", str(path), "objective.ppo_minibatches=0")
    assert one.returncode == 2 and "objective.ppo_minibatches" in one.stderr
