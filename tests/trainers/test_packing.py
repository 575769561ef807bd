"""Padding-free packing: a packed row computes exactly what its examples compute alone."""

from __future__ import annotations

import itertools
import random

import pytest

from omnitune.trainers.config import RunConfig
from omnitune.trainers.packing import make_packed_collator, pack_examples, pack_rows
from tests.conftest import run_cli
from tests.trainers.conftest import eval_losses


def _examples(tiny_model, text_data, max_length: int = 64):
    from transformers import AutoTokenizer

    from omnitune.modalities.text.data import read_text_dataset

    folder = tiny_model("text")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = RunConfig.model_validate(
        {
            "model": {"name_or_path": str(folder), "modality": "text"},
            "data": {"train": str(text_data["train"]), "max_length": max_length},
            "train": {"max_steps": 1},
        }
    )
    return tokenizer, read_text_dataset(str(text_data["train"]), config, tokenizer, True)


def test_rows_hold_every_example_once_and_respect_the_row_size():
    rng = random.Random(3)
    lengths = [rng.choice([3, 5, 8, 20, 64]) for _ in range(500)]
    rows = pack_rows(lengths, 64, seed=1)
    assert sorted(i for row in rows for i in row) == list(range(500))
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    # Best fit leaves little room: within 5% of the fewest rows possible.
    assert len(rows) <= 1.05 * sum(lengths) / 64 + 1
    assert rows == pack_rows(lengths, 64, seed=1)
    assert rows != pack_rows(lengths, 64, seed=2)
    with pytest.raises(ValueError, match="over the row size"):
        pack_rows([65], 64, seed=0)


def test_packed_logits_and_loss_equal_the_unpacked_ones(tiny_model, text_data):
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer, examples = _examples(tiny_model, text_data)
    model = AutoModelForCausalLM.from_pretrained(tiny_model("text")).eval()
    packed = pack_examples(examples, 64, seed=0)
    rows = [r for r in packed.items if r["rows"] >= 3][:4]
    assert rows, "no row holds three examples"
    batch = make_packed_collator(tokenizer)(rows)
    with torch.no_grad():
        packed_out = model(**batch)

    # Rebuild which examples each row holds from its position ids, and score each alone.
    total_loss, total_tokens, compared = 0.0, 0, 0
    for at, row in enumerate(rows):
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
        for begin, end in itertools.pairwise(starts):
            ids = torch.tensor([row["input_ids"][begin:end]])
            labels = torch.tensor([row["labels"][begin:end]])
            labels[0, 0] = -100
            with torch.no_grad():
                alone = model(input_ids=ids, labels=labels)
            difference = (packed_out.logits[at, begin:end] - alone.logits[0]).abs().max()
            assert float(difference) <= 1e-5, f"row {at}, example at {begin}: {difference}"
            tokens = int((labels[0, 1:] != -100).sum())
            total_loss += float(alone.loss) * tokens
            total_tokens += tokens
            compared += 1
    assert compared >= 12
    assert abs(float(packed_out.loss) - total_loss / total_tokens) <= 1e-5

    # The check can fail: without the restarting position ids, attention crosses examples.
    plain = {"input_ids": batch["input_ids"], "use_cache": False}
    with torch.no_grad():
        crossing = model(**plain).logits
    assert float((crossing - packed_out.logits).abs().max()) > 1e-3


@pytest.mark.slow
def test_sft_with_packing_trains_through_the_cli(run_config):
    path = run_config(
        "packed",
        data={"packing": True, "max_length": 128},
        train={"max_steps": 30, "batch_size": 4, "eval_steps": 15},
    )
    result = run_cli("train", str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "packed 256 examples (" in result.stderr
    assert "rows" in result.stderr
    losses = eval_losses(path.parent / "packed")
    assert losses[-1] < losses[0] - 0.25, losses


def test_packing_is_refused_where_it_cannot_apply(run_config, tmp_path):
    path = run_config("refused")
    for overrides, message in (
        (["data.packing=true", "objective.loss=focal"], "data.packing: works with"),
        (
            ["data.packing=true", "data.balance.by=length", "data.balance.strategy=oversample"],
            "data.packing: cannot be combined with data.balance",
        ),
    ):
        checked = run_cli("config", "check", str(path), *overrides)
        assert checked.returncode == 2
        assert message in checked.stderr
