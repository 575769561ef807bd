"""Packed SFT against the padded Hugging Face recipe on length-skewed chats.

omnitune's side: `data.packing: true`, rows of 128 tokens, one row a step. Reference: the
Hugging Face `Trainer` with PEFT LoRA and `DataCollatorForSeq2Seq` padding each batch of 8 to
its longest example, the recipe of the transformers examples. Both train one epoch over the same
tokenised examples (same chat template, assistant-only labels), same LoRA (r 8, q/v), learning
rate, linear schedule, clipping, seed and one CPU thread, so both see the same tokens; the steps
differ by how many examples fit a packed row (about 8 on this data, so the step counts are
close). The data is digit chats whose number lengths follow a long-tailed (log-normal)
distribution: most are a few tokens, a few are over 100, so a padded batch is mostly padding.

Figures: real (non-padding) training tokens per second over the training loop, and the held-out
loss of the trained adapter on chats of the same distribution, scored for both sides by the same
function (omnitune's token-weighted loss, unpacked).

The model is the tiny Llama at hidden size 128 (`make bench` builds it): at 64, per-operation
overheads rather than tokens set a CPU step's cost, and padding costs less than it does on any
real model.

    python -m bench.packed_sft --side omnitune|hf --model DIR --data DIR
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from bench.harness import loop_clock, peak_rss_mb

LR, SEED, RANK, ROW, PADDED_BATCH = 3e-3, 0, 8, 256, 16
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def write_skewed_chats(folder: Path, train: int = 2048, test: int = 128, seed: int = 0) -> Path:
    """Digit chats of 1 to 40 digits, lengths log-normal (median 4 digits, a long tail)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in (("train.jsonl", train), ("test.jsonl", test)):
        rows = []
        for _ in range(count):
            size = min(40, 1 + int(rng.lognormvariate(1.1, 1.0)))
            digits = [rng.randrange(10) for _ in range(size)]
            messages = [
                {"role": "user", "content": " ".join(WORDS[d] for d in digits)},
                {"role": "assistant", "content": " ".join(map(str, digits))},
            ]
            rows.append(json.dumps({"messages": messages}))
        (folder / name).write_text("\n".join(rows) + "\n")
    return folder


def held_out_loss(model, tokenizer, data: Path) -> float:
    from omnitune.modalities.evaluation import token_loss
    from omnitune.modalities.text.collate import make_text_collator
    from omnitune.modalities.text.data import read_text_dataset
    from omnitune.trainers.config import RunConfig

    config = RunConfig.model_validate(
        {
            "model": {"name_or_path": "unused", "modality": "text"},
            "data": {"train": str(data / "test.jsonl"), "max_length": ROW},
            "train": {"max_steps": 1},
        }
    )
    examples = read_text_dataset(str(data / "test.jsonl"), config, tokenizer, False)
    return token_loss(model, examples, make_text_collator(tokenizer, config, False), 16)


def padded_epoch_arguments(out: str) -> dict:
    """The reference side's Trainer arguments: one epoch of padded batches of PADDED_BATCH,
    the learning rate, linear schedule, clipping and seed omnitune's side uses, on the CPU."""
    return {
        "output_dir": out,
        "per_device_train_batch_size": PADDED_BATCH,
        "num_train_epochs": 1,
        "learning_rate": LR,
        "lr_scheduler_type": "linear",
        "warmup_steps": 0,
        "max_grad_norm": 1.0,
        "seed": SEED,
        "logging_steps": 10,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        # TRL 1.16's configs turn on bf16 autocast and activation checkpointing by default,
        # even on the CPU; omnitune's side trains in float32 without recomputation: both off,
        # so both sides do the same arithmetic (plain TrainingArguments has them off already).
        "bf16": False,
        "gradient_checkpointing": False,
    }


def training_examples(tokenizer, data: Path) -> list[tuple[list[int], list[int]]]:
    from omnitune.modalities.text.data import encode_chat

    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    return [encode_chat(tokenizer, r["messages"], assistant_only=True) for r in rows]


def run_omnitune(model: str, data: Path, out: str) -> dict:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from omnitune.trainers.config import RunConfig
    from omnitune.trainers.loop import train

    config = RunConfig.model_validate(
        {
            "model": {"name_or_path": model, "modality": "text"},
            "data": {"train": str(data / "train.jsonl"), "max_length": ROW, "packing": True},
            "peft": {"method": "lora", "r": RANK, "alpha": 2 * RANK},
            "train": {
                "epochs": 1,
                "batch_size": 1,
                "lr": LR,
                "seed": SEED,
                "num_threads": 1,
                "logging_steps": 10,
                "resume": "never",
            },
            "output_dir": out,
        }
    )
    result = train(config)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokens = sum(len(ids) for ids, _ in training_examples(tokenizer, data))
    trained = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model), result.output)
    return {
        "tokens_per_second": tokens / result.loop_seconds,
        "steps": result.steps,
        "held_out_loss": held_out_loss(trained, tokenizer, data),
    }


def run_hf(model: str, data: Path, out: str) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    torch.set_num_threads(1)
    set_seed(SEED)  # before the adapter's random initialisation, as omnitune's side does
    tokenizer = AutoTokenizer.from_pretrained(model)
    examples = training_examples(tokenizer, data)
    dataset = Dataset.from_list(
        [{"input_ids": i, "attention_mask": [1] * len(i), "labels": t} for i, t in examples]
    )
    policy = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model),
        LoraConfig(
            r=RANK, lora_alpha=2 * RANK, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
        ),
    )
    args = TrainingArguments(**padded_epoch_arguments(out), remove_unused_columns=False)

    clock = loop_clock()
    trainer = Trainer(
        model=policy,
        args=args,
        train_dataset=dataset,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        callbacks=[clock],
    )
    trainer.train()
    tokens = sum(len(ids) for ids, _ in examples)
    return {
        "tokens_per_second": tokens / clock.seconds,
        "steps": clock.steps,
        "held_out_loss": held_out_loss(trainer.model.eval(), tokenizer, data),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", choices=["omnitune", "hf"], required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="folder with train.jsonl and test.jsonl")
    parser.add_argument("--out", default="bench/.cache/packed-run")
    args = parser.parse_args()
    run = run_omnitune if args.side == "omnitune" else run_hf
    figures = run(args.model, Path(args.data), args.out)
    print(json.dumps({**figures, "peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    main()
