"""Imbalanced data (group-weighted sampling with a before/after report) and early stopping."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from omnitune.trainers.config import load_run_config
from omnitune.trainers.sampling import (
    BatchPlan,
    distribution_report,
    epoch_length,
    group_weights,
)
from tests.conftest import run_cli

GROUPS = ["cat"] * 90 + ["dog"] * 10


def _drawn_shares(strategy: str, temperature: float = 0.5) -> dict[str, float]:
    weights = group_weights(GROUPS, strategy, temperature)
    plan = BatchPlan(
        len(GROUPS), 10, 1, seed=0, weights=weights, epoch_size=epoch_length(GROUPS, strategy)
    )
    drawn = Counter(GROUPS[i] for epoch in range(50) for i in plan.epoch_order(epoch))
    total = sum(drawn.values())
    return {g: n / total for g, n in drawn.items()}


def test_oversampling_draws_each_group_equally_and_lengthens_the_epoch():
    shares = _drawn_shares("oversample")
    assert abs(shares["dog"] - 0.5) < 0.02
    assert epoch_length(GROUPS, "oversample") == 180
    assert epoch_length(GROUPS, "undersample") == 20


def test_temperature_sampling_moves_part_of_the_way_to_uniform():
    shares = _drawn_shares("temperature", temperature=0.5)
    expected = 10**0.5 / (90**0.5 + 10**0.5)  # 0.25
    assert abs(shares["dog"] - expected) < 0.02


def test_no_strategy_visits_every_example_once_per_epoch():
    plan = BatchPlan(len(GROUPS), 7, 1, seed=3)
    order = plan.epoch_order(0)
    assert sorted(order.tolist()) == list(range(100))
    assert not np.array_equal(order, plan.epoch_order(1)), "each epoch is reshuffled"
    assert np.array_equal(order, BatchPlan(len(GROUPS), 7, 1, seed=3).epoch_order(0))


def test_ranks_take_disjoint_slices_of_each_global_batch():
    plan = BatchPlan(100, 4, 2, seed=0)
    order = plan.epoch_order(0)
    first, second = plan.batch(order, 0, 0), plan.batch(order, 0, 1)
    assert len(first) == len(second) == 4 and not set(first) & set(second)
    assert plan.batches_per_epoch == 13  # the last global batch wraps around


def test_report_shows_before_and_after_shares():
    report = distribution_report(GROUPS, group_weights(GROUPS, "oversample", 0.5))
    assert report == "cat: 90.0% -> 50.0%; dog: 10.0% -> 50.0%"


@pytest.mark.slow
def test_balanced_run_logs_the_distribution_report(run_config):
    path = run_config(
        "balanced",
        data={"balance": {"by": "length", "strategy": "oversample"}},
        train={"max_steps": 4, "eval_steps": None},
    )
    result = run_cli("train", str(path))
    assert result.returncode == 0, result.stderr[-2000:]
    text = (Path(load_run_config(path).output_dir) / "train.log").read_text()
    assert "balance by length (oversample): long: " in text and "-> 50.0%" in text


def test_a_strategy_without_a_field_is_a_config_error(run_config):
    result = run_cli("config", "check", str(run_config()), "data.balance.strategy=oversample")
    assert result.returncode == 2
    assert "data.balance.by: strategy 'oversample' needs a field name" in result.stderr


@pytest.mark.slow
def test_early_stopping_ends_the_run_when_the_metric_stalls(run_config):
    from omnitune.trainers.loop import train

    path = run_config(
        "stall",
        train={"max_steps": 200, "lr": 1e-12, "eval_steps": 5, "save_steps": None},
        eval={"early_stopping_metric": "loss", "early_stopping_patience": 2},
    )
    result = train(load_run_config(path))
    assert result.stopped_early
    assert result.steps < 200
    assert "early stop at step" in (result.run_dir / "train.log").read_text()


def test_an_unknown_early_stopping_metric_is_named(run_config):
    result = run_cli("train", str(run_config()), "eval.early_stopping_metric=wer")
    assert result.returncode == 2
    assert (
        "eval.early_stopping_metric: 'wer' is not a metric of this run (objective sft, "
        "model.modality text; known: loss, perplexity, exact_match)"
    ) in result.stderr
    dpo = run_cli(
        "train", str(run_config()), "objective.name=dpo", "eval.early_stopping_metric=wer"
    )
    assert dpo.returncode == 2
    assert "(objective dpo, model.modality text; known: reward_accuracy, loss, reward_margin" in (
        dpo.stderr
    )


def test_focal_loss_with_gamma_zero_is_the_models_cross_entropy(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    from omnitune.trainers.chunked_loss import IGNORE, position_logps, shifted_targets
    from omnitune.trainers.losses import sequence_loss

    model = AutoModelForCausalLM.from_pretrained(tiny_model("text"))
    ids = torch.tensor([[3, 40, 50, 60, 4, 70], [3, 41, 51, 4, 71, 0]])
    labels = ids.clone()
    labels[:, :3] = -100
    reference = model(input_ids=ids, labels=labels).loss
    targets = shifted_targets(labels)
    valid = targets != IGNORE
    for chunked in (False, True):
        logps = position_logps(model, {"input_ids": ids}, targets, chunked).logps
        ours = sequence_loss(logps, valid)
        # Same number of targets per example (3 and 3): the per-example mean is the token mean.
        assert torch.allclose(ours, reference, atol=1e-5)
        focal = sequence_loss(logps, valid, focal_gamma=2.0)
        assert focal < ours, "focal loss down-weights every token by (1 - p)^gamma"


def test_class_weights_average_one_and_favour_the_rare_group():
    from omnitune.trainers.losses import inverse_frequency_weights

    weights = inverse_frequency_weights(GROUPS)
    assert weights["dog"] / weights["cat"] == pytest.approx(9.0)
    assert sum(weights[g] for g in GROUPS) / len(GROUPS) == pytest.approx(1.0)


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["focal", "class_weighted"])
def test_runs_with_imbalance_losses_learn(loss, run_config):
    from omnitune.trainers.loop import train
    from tests.trainers.conftest import eval_losses

    path = run_config(
        loss, objective={"loss": loss}, data={"balance": {"by": "length"}}, train={"eval_steps": 30}
    )
    result = train(load_run_config(path))
    losses = eval_losses(result.run_dir)
    assert losses[-1] < losses[0] - 0.02, losses
