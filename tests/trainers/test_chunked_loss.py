"""The chunked head (trainers/chunked_loss.py): the same loss and gradients as the whole logits
for every objective that scores tokens, and less peak memory at a real vocabulary size."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from omnitune.modalities.base import get_modality
from omnitune.modalities.text.sample_data import write_digit_feedback, write_digit_pairs
from omnitune.trainers.chunked_loss import chunked_target_logps, chunking_wanted
from omnitune.trainers.config import load_run_config
from omnitune.trainers.objectives import LossContext, get_objective
from omnitune.trainers.objectives.reference import Reference
from omnitune.trainers.objectives.rollout import sample, score_tokens
from tests.conftest import run_cli

TOLERANCE = 1e-5


def _max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


def test_the_chunked_function_equals_log_softmax_and_its_gradients():
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 24, generator=generator, requires_grad=True)
    weight = torch.randn(301, 24, generator=generator).mul_(0.3).requires_grad_()
    bias = torch.randn(301, generator=generator).requires_grad_()
    targets = torch.randint(0, 301, (37,), generator=generator)
    targets[3] = 7  # a suppressed token as a target gets -inf in both, so keep it elsewhere
    suppressed = (11, 200)
    upstream = torch.randn(37, generator=generator)

    logps, entropy = chunked_target_logps(
        hidden, weight, bias, targets, 0.7, suppressed, with_entropy=True, chunk=8
    )
    (logps * upstream).sum().backward()
    chunked_grads = [t.grad.clone() for t in (hidden, weight, bias)]
    for t in (hidden, weight, bias):
        t.grad = None

    logits = (hidden @ weight.T + bias) / 0.7
    logits[:, list(suppressed)] = -torch.inf
    log_probs = torch.log_softmax(logits, dim=-1)
    plain = log_probs.gather(1, targets[:, None]).squeeze(1)
    (plain * upstream).sum().backward()
    probabilities = log_probs.exp()
    plain_entropy = -(probabilities * log_probs.masked_fill(probabilities == 0, 0)).sum(-1)

    assert _max_difference(logps, plain) <= TOLERANCE
    assert _max_difference(entropy, plain_entropy.detach()) <= TOLERANCE
    for mine, theirs in zip(chunked_grads, (hidden.grad, weight.grad, bias.grad), strict=True):
        assert _max_difference(mine, theirs) <= TOLERANCE
    assert entropy.requires_grad is False


@pytest.fixture(scope="module")
def preference_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chunked-data")
    return {
        "pairs": write_digit_pairs(folder / "pairs", train=16, test=8, seed=0),
        "feedback": write_digit_feedback(folder / "feedback", train=16, test=8, seed=0),
    }


def _loss_and_gradients(objective_name, path, chunked, model, processor):
    """The objective's step loss over the first 6 training items, and the gradients it gives
    every parameter (full fine-tuning, so the head's weight has one too)."""
    config = load_run_config(path)
    config.train.chunked_loss = chunked
    objective = get_objective(objective_name)
    modality = get_modality("text")
    items = objective.data(modality, config.data.train, config, processor, True)
    batch = objective.collator(modality, processor, config, True)([items[i] for i in range(6)])
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    context = LossContext(
        config,
        items,
        model,
        processor,
        torch.device("cpu"),
        Reference(model, frozen, chunked=chunking_wanted(model, config.train.chunked_loss)),
        modality=modality,
    )
    model.zero_grad()
    loss, _ = objective.loss(context)(model, batch, list(range(6)))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    grads["head"] = model.get_output_embeddings().weight.grad.clone()  # tied to the embedding
    return loss.detach(), grads


@pytest.mark.parametrize(
    ("objective", "sections"),
    [
        ("sft", {}),
        ("sft", {"objective": {"name": "sft", "loss": "focal", "focal_gamma": 2.0}}),
        ("dpo", {"objective": {"name": "dpo", "beta": 0.1}, "data": "pairs"}),
        ("orpo", {"objective": {"name": "orpo"}, "data": "pairs"}),
        ("kto", {"objective": {"name": "kto"}, "data": "feedback"}),
    ],
    ids=["sft", "sft-focal", "dpo", "orpo", "kto"],
)
def test_each_objective_loses_nothing_to_chunking(
    objective, sections, run_config, tiny_model, preference_data
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sections = dict(sections)
    data = sections.pop("data", None)
    if data:
        files = preference_data[data]
        sections["data"] = {"train": str(files["train"]), "eval": str(files["eval"])}
    path = run_config(f"chunked-{objective}", peft={"method": "full"}, **sections)
    folder = tiny_model("text")
    processor = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder).train()
    # Away from the initial weights, so DPO's policy differs from its reference.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)

    plain_loss, plain_grads = _loss_and_gradients(objective, path, False, model, processor)
    chunked_loss, chunked_grads = _loss_and_gradients(objective, path, True, model, processor)

    assert abs(float(plain_loss - chunked_loss)) <= TOLERANCE
    worst = max(_max_difference(plain_grads[n], chunked_grads[n]) for n in plain_grads)
    assert worst <= TOLERANCE, worst
    assert plain_grads["head"].abs().sum() > 0


def test_rollout_scoring_for_grpo_and_ppo_loses_nothing_to_chunking(run_config, tiny_model):
    """GRPO and PPO score their sampled completions through `score_tokens`: log-probabilities,
    entropy, hidden states (PPO's value head) and gradients, with a temperature and suppressed
    tokens, agree between the chunked and the whole-logits head."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = run_config(
        "chunked-grpo",
        objective={"name": "grpo", "num_generations": 4, "max_new_tokens": 8},
        peft={"method": "full"},
    )
    config = load_run_config(path)
    folder = tiny_model("text")
    processor = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).train()
    modality = get_modality("text")
    items = get_objective("grpo").data(modality, config.data.train, config, processor, True)
    rollout = sample(model, processor, modality, [items[i] for i in range(3)], config, seed=1)
    # A token the completions never hold (a sampled one would score -inf on both sides).
    unused = next(t for t in range(5, 500) if not (rollout.completion_ids == t).any())
    rollout.suppressed = (unused,)
    mask = rollout.completion_mask.bool()
    upstream = torch.randn(rollout.completion_ids.shape, generator=torch.Generator().manual_seed(0))

    scored = {}
    for chunked in (False, True):
        model.zero_grad()
        result = score_tokens(model, rollout, 0.7, hidden=True, chunked=chunked)
        (result.logps * upstream * mask).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        scored[chunked] = (result, grads)
    (plain, plain_grads), (chunked, chunked_grads) = scored[False], scored[True]
    assert _max_difference(plain.logps[mask], chunked.logps[mask]) <= TOLERANCE
    assert _max_difference(plain.entropy[mask], chunked.entropy[mask]) <= TOLERANCE
    assert torch.equal(plain.hidden, chunked.hidden)
    worst = max(_max_difference(plain_grads[n], chunked_grads[n]) for n in plain_grads)
    assert worst <= TOLERANCE, worst


REAL_VOCABULARY = 151_936  # Qwen2.5's


@pytest.fixture(scope="module")
def real_vocabulary_model(tmp_path_factory) -> Path:
    """The tiny Qwen2 chat model (2 layers, hidden 64) with Qwen2.5's vocabulary size, as
    `omnitune models build-tiny qwen2 --vocab-size 151936` builds it: the tokenizer uses the
    first rows, the head scores all 151,936."""
    out = tmp_path_factory.mktemp("qwen2-real-vocabulary")
    built = run_cli(
        "models", "build-tiny", "qwen2", "--vocab-size", str(REAL_VOCABULARY), "--out", str(out)
    )
    assert built.returncode == 0, built.stderr[-2000:]
    return out


@pytest.mark.slow
def test_a_real_vocabulary_trains_in_less_memory_with_the_chunked_head(
    run_config, real_vocabulary_model
):
    """Four packed rows of 256 tokens: the whole logits are 1,024 x 151,936 floats (622 MB) a
    copy, and the plain loss keeps several; the chunked head keeps 64 MiB at a time."""
    peaks, losses = {}, {}
    for setting in (False, True):
        path = run_config(
            f"vocabulary-{setting}",
            model={"name_or_path": str(real_vocabulary_model), "modality": "text"},
            data={"packing": True, "max_length": 256},
            train={
                "max_steps": 3,
                "batch_size": 4,
                "chunked_loss": setting,
                "eval_steps": None,
                "save_steps": None,
                "logging_steps": 1,
            },
            eval={"metrics": [], "batch_size": 1},
        )
        done = run_cli("train", str(path), fresh=True)
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads((path.parent / f"vocabulary-{setting}" / "summary.json").read_text())
        peaks[setting] = summary["peak_memory_mb"]
        losses[setting] = summary["train_loss"]
    assert losses[True] == pytest.approx(losses[False], abs=1e-4)
    assert peaks[True] < peaks[False] - 600, peaks
