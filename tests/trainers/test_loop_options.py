"""Loop options that must not change what is learned: accumulation, checkpointing, bf16."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from omnitune.trainers.config import load_run_config
from tests.trainers.conftest import eval_losses, read_metrics

pytestmark = pytest.mark.slow

STEPS = {"max_steps": 12, "eval_steps": 12, "save_steps": 12, "logging_steps": 1}


def _final_weights(result):
    return load_file(result.run_dir / "checkpoints" / "step-00000012" / "trainable.safetensors")


def _train(run_config, name, **train):
    from omnitune.trainers.loop import train as run

    return run(load_run_config(run_config(name, train={**STEPS, **train})))


def test_gradient_accumulation_sees_the_same_examples_as_one_big_batch(run_config):
    whole = _train(run_config, "whole", batch_size=16, grad_accum=1)
    halves = _train(run_config, "halves", batch_size=8, grad_accum=2)
    assert whole.steps == halves.steps == 12
    big = [r["loss"] for r in read_metrics(whole.run_dir) if r["kind"] == "train"]
    accumulated = [r["loss"] for r in read_metrics(halves.run_dir) if r["kind"] == "train"]
    # Same 16 examples per step; only the per-micro-batch token weighting differs.
    assert max(abs(a - b) for a, b in zip(big, accumulated, strict=True)) < 0.05
    assert halves.samples_per_second > 0


def test_gradient_checkpointing_gives_the_same_weights(run_config):
    import torch

    plain = _final_weights(_train(run_config, "plain"))
    checkpointed = _final_weights(_train(run_config, "ckpt", gradient_checkpointing=True))
    for name, value in plain.items():
        assert torch.allclose(value, checkpointed[name], atol=1e-5), name


def test_bf16_mixed_precision_trains_on_the_cpu(run_config):
    result = _train(run_config, "bf16", mixed_precision="bf16")
    losses = eval_losses(result.run_dir)
    assert losses[-1] < losses[0] - 0.02, losses
