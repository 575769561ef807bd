"""`data.streaming` (issue 17): a text file read lazily through a seeded shuffle buffer; each
epoch takes every usable row once, bad rows are counted, a SIGKILLed run resumes exactly (the
position is in the checkpoint), and what cannot work on a stream is refused naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from omnitune.trainers.config import RunConfig
from tests.conftest import run_cli
from tests.trainers.test_resume import RESUMABLE, kill_resume_and_compare


def test_each_epoch_takes_every_usable_row_once_in_a_seeded_order(tiny_model, text_data, tmp_path):
    from transformers import AutoTokenizer

    from omnitune.trainers.streaming import TextStream

    rows = Path(text_data["train"]).read_text().splitlines()
    rows[4] = "{broken"
    source = tmp_path / "train.jsonl"
    source.write_text("\n".join(rows) + "\n")
    config = RunConfig.model_validate(
        {
            "model": {"name_or_path": str(tiny_model("text")), "modality": "text"},
            "data": {"train": str(source), "streaming": True, "shuffle_buffer": 32},
            "train": {"max_steps": 1},
        }
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_model("text"))
    orders = []
    for _ in range(2):
        stream = TextStream(str(source), config, tokenizer)
        orders.append([stream.next_example()[0] for _ in range(2 * 255)])
    assert orders[0] == orders[1], "the order is a function of the seed"
    first, second = orders[0][:255], orders[0][255:]
    usable = set(range(1, 257)) - {5}
    assert set(first) == usable and set(second) == usable  # every row once per epoch
    assert first != second and first != sorted(first)  # shuffled, differently per epoch
    assert stream.skipped == {"invalid JSON": 1}


@pytest.mark.slow
@pytest.mark.reliability
def test_sigkill_then_resume_of_a_streamed_run_equals_an_uninterrupted_run(run_config):
    # 60 steps of 8 rows from 256: the kill (after step 20) and the resume fall in the first
    # epoch, the run crosses into the second.
    kill_resume_and_compare(
        run_config,
        60,
        peft=RESUMABLE["peft"],
        data={"streaming": True, "shuffle_buffer": 50},
        train={**RESUMABLE["train"], "max_steps": 60, "batch_size": 8},
    )


def test_what_needs_the_whole_dataset_is_refused_naming_the_field(tmp_path):
    from tests.conftest import REPO

    config = str(REPO / "configs" / "text-lora.yaml")
    for override, words in (
        ("data.packing=true", "data.packing: not with data.streaming"),
        ("data.balance.by=domain", "data.balance.by: not with data.streaming"),
        ("train.data_workers=1", "train.data_workers: not with data.streaming"),
    ):
        result = run_cli("config", "check", config, "data.streaming=true", override)
        assert result.returncode == 2, result.stderr
        assert words in result.stderr, result.stderr
