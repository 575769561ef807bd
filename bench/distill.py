"""Off-policy knowledge distillation against TRL's `GKDTrainer` (lmbda 0), same teacher, student
and data.

The teacher is the tiny chat model at hidden size 128 fine-tuned for one epoch on
bench/packed_sft.py's length-skewed digit chats (built once, cached); the student is a
narrower model (hidden size 64) with the same tokenizer. Both sides train the whole student for
two epochs of padded batches of 16 chats with generalised JSD at beta 0.5 (symmetric, so the two
libraries' conventions for beta agree) and temperature 1 on the assistant tokens, with the same
learning rate, schedule, clipping, seed and one CPU thread. Both score the dataset's answers
(lmbda 0, no sampling) under the teacher: TRL on every batch, omnitune once before the first
step (`objective.cache_teacher`), the seconds that took added to its loop's. Figures: training
examples per second (examples x epochs over those seconds), peak RSS, and each
student's held-out KL(teacher || student) per assistant token, scored by one function.

    python -m bench.distill --side omnitune|trl --teacher DIR --student DIR --data DIR
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from bench.harness import loop_clock, peak_rss_mb
from bench.packed_sft import LR, PADDED_BATCH, ROW, SEED, padded_epoch_arguments

EPOCHS = 2
BETA = 0.5


def train_teacher(model: str, data: Path, out: Path) -> Path:
    """The teacher: `model` fine-tuned (full) for one epoch on the chats; its model folder."""
    from omnitune.trainers.config import RunConfig
    from omnitune.trainers.loop import train

    if (out / "model" / "config.json").is_file():
        return out / "model"
    config = RunConfig.model_validate(
        {
            "model": {"name_or_path": model, "modality": "text"},
            "data": {"train": str(data / "train.jsonl"), "max_length": ROW, "packing": True},
            "peft": {"method": "full"},
            "train": {"epochs": 1, "batch_size": 4, "lr": 3e-3, "seed": SEED, "resume": "never"},
            "output_dir": str(out),
        }
    )
    return train(config).output


def held_out_teacher_kl(student, teacher, tokenizer, data: Path) -> float:
    """KL(teacher || student) per assistant token of the held-out chats, at temperature 1."""
    import torch

    from omnitune.modalities.text.collate import make_text_collator
    from omnitune.modalities.text.data import read_text_dataset
    from omnitune.trainers.config import RunConfig
    from omnitune.trainers.objectives.distill import aligned, divergence

    config = RunConfig.model_validate(
        {
            "model": {"name_or_path": "unused", "modality": "text"},
            "data": {"train": str(data / "test.jsonl"), "max_length": ROW},
            "train": {"max_steps": 1},
        }
    )
    examples = read_text_dataset(str(data / "test.jsonl"), config, tokenizer, False)
    collate = make_text_collator(tokenizer, config, False)
    total, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), 16):
            batch = collate([examples[i] for i in range(start, min(start + 16, len(examples)))])
            s, _ = aligned(student(**batch).logits, batch["labels"], causal=True)
            t, _ = aligned(teacher(**batch).logits, batch["labels"], causal=True)
            total += float(divergence(s, t, "forward_kl", 1.0, BETA).sum())
            tokens += s.shape[0]
    return total / tokens


def _figures(student, teacher: str, data: Path, seconds: float) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(teacher)
    reference = AutoModelForCausalLM.from_pretrained(teacher).eval()
    rows = len((data / "train.jsonl").read_text().splitlines())
    return {
        "samples_per_second": rows * EPOCHS / seconds,
        "held_out_teacher_kl": held_out_teacher_kl(student.eval(), reference, tokenizer, data),
    }


def run_omnitune(teacher: str, student: str, data: Path, out: str, seed: int = SEED) -> dict:
    from transformers import AutoModelForCausalLM

    from omnitune.trainers.config import RunConfig
    from omnitune.trainers.loop import train

    config = RunConfig.model_validate(
        {
            "model": {"name_or_path": student, "modality": "text"},
            "data": {"train": str(data / "train.jsonl"), "max_length": ROW},
            "peft": {"method": "full"},
            "objective": {
                "name": "distill",
                "teacher": teacher,
                "loss": "jsd",
                "jsd_beta": BETA,
                "cache_teacher": True,
            },
            "train": {
                "epochs": EPOCHS,
                "batch_size": PADDED_BATCH,
                "lr": LR,
                "seed": seed,
                "num_threads": 1,
                "logging_steps": 10,
                "resume": "never",
            },
            "output_dir": out,
        }
    )
    result = train(config)
    log = (Path(out) / "train.log").read_text()
    cache_seconds = float(re.findall(r"computed and cached in ([\d.]+) s", log)[-1])
    trained = AutoModelForCausalLM.from_pretrained(result.output)
    figures = _figures(trained, teacher, data, result.loop_seconds + cache_seconds)
    return {**figures, "steps": result.steps, "cache_seconds": cache_seconds}


def run_trl(teacher: str, student: str, data: Path, out: str, seed: int = SEED) -> dict:
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    torch.set_num_threads(1)
    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(student)
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    dataset = Dataset.from_list([{"messages": r["messages"]} for r in rows])
    arguments = {**padded_epoch_arguments(out), "num_train_epochs": EPOCHS, "seed": seed}
    args = GKDConfig(**arguments, max_length=ROW, lmbda=0.0, beta=BETA, temperature=1.0)
    clock = loop_clock()
    trainer = GKDTrainer(
        model=AutoModelForCausalLM.from_pretrained(student),
        teacher_model=AutoModelForCausalLM.from_pretrained(teacher),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[clock],
    )
    trainer.train()
    return {**_figures(trainer.model, teacher, data, clock.seconds), "steps": clock.steps}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", choices=["omnitune", "trl"], required=True)
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--student", required=True)
    parser.add_argument("--data", required=True, help="folder with train.jsonl and test.jsonl")
    parser.add_argument("--out", default="bench/.cache/distill-run")
    parser.add_argument("--seed", type=int, default=SEED, help="the student's training seed")
    args = parser.parse_args()
    run = run_omnitune if args.side == "omnitune" else run_trl
    figures = run(args.teacher, args.student, Path(args.data), args.out, args.seed)
    print(json.dumps({**figures, "peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    main()
