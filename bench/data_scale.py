"""Time to the first training step and peak memory as a text dataset grows, first run and cached
re-run, against `datasets.map(num_proc)` + TRL's `SFTTrainer` on the same rows.

Each side runs in a fresh process: `omnitune train` with `train.max_steps=1` (its data prepared
into a fresh cache on the first run, opened from it on the re-run), and `SFTTrainer` with
`max_steps=1` and `dataset_num_proc` = the cores (its own `datasets` cache cleared for the first
run, kept for the re-run). Same tiny chat model, same rows (digit chats), same batch size.

Figures: `seconds_to_first_step` (process start to the end of step one, imports and model load
included, as a user waits; omnitune: the step's time stamp in `metrics.jsonl`, TRL: a
`TrainerCallback.on_step_end`), `data_ready_seconds` (omnitune: from the start of reading to the
first collated batch, measured in-process on the same cache state; TRL: its dataset
preparation, `SFTTrainer.__init__` minus the model's), and `peak_rss_mb` (of the run, before
omnitune's data path is measured again in the same process).

    python -m bench.data_scale --side omnitune|trl --rows N --phase first|cached --model DIR
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

STARTED = time.perf_counter()
STARTED_WALL = time.time()  # the run log stamps steps with wall-clock time
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def write_rows(path: Path, rows: int, seed: int = 0) -> Path:
    """`rows` digit chats (1-8 digits) as JSONL, written once."""
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    partial = path.with_suffix(".partial")
    with partial.open("w") as out:
        for _ in range(rows):
            digits = [rng.randrange(10) for _ in range(rng.randint(1, 8))]
            messages = [
                {"role": "user", "content": " ".join(WORDS[d] for d in digits)},
                {"role": "assistant", "content": " ".join(map(str, digits))},
            ]
            out.write(json.dumps({"messages": messages}) + "\n")
    partial.rename(path)
    return path


def omnitune_side(model: Path, data: Path, cache: Path, out: Path) -> dict[str, float]:
    from bench.harness import peak_rss_mb
    from omnitune.modalities.text.collate import make_text_collator
    from omnitune.modalities.text.data import read_text_dataset
    from omnitune.trainers.config import RunConfig
    from omnitune.trainers.loop import train

    os.environ["OMNITUNE_CACHE"] = str(cache)
    config = RunConfig.model_validate(
        {
            "model": {"name_or_path": str(model), "modality": "text"},
            "data": {"train": str(data), "max_length": 64},
            "train": {"max_steps": 1, "batch_size": 8, "num_threads": 1, "eval_steps": None},
            "output_dir": str(out),
        }
    )
    result = train(config)
    assert result.steps == 1 and result.loop_seconds > 0  # a step was trained, not resumed
    step_one = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert step_one["step"] == 1
    first_step = step_one["time"] - STARTED_WALL
    run_rss = peak_rss_mb()  # the run's own peak, before the data path is measured again below
    # The data path alone, on the same cache state the run found (for the first run: a new,
    # empty cache, so it is built again).
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    if not (cache / "cached-once").exists():
        shutil.rmtree(cache / "prepared", ignore_errors=True)
    began = time.perf_counter()
    examples = read_text_dataset(str(data), config, tokenizer, True)
    make_text_collator(tokenizer, config, True)([examples[i] for i in range(8)])
    ready = time.perf_counter() - began
    return {
        "seconds_to_first_step": first_step,
        "data_ready_seconds": ready,
        "peak_rss_mb": run_rss,
        "rows": len(examples),
    }


def trl_side(model: Path, data: Path, cache: Path, out: Path) -> dict[str, float]:
    os.environ["HF_DATASETS_CACHE"] = str(cache)
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from bench.harness import peak_rss_mb
    from omnitune.modalities.prepared import available_cores

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(model)
    network = AutoModelForCausalLM.from_pretrained(model)
    began = time.perf_counter()
    rows = datasets.load_dataset("json", data_files=str(data), split="train", cache_dir=str(cache))
    arguments = SFTConfig(
        output_dir=str(out),
        max_steps=1,
        per_device_train_batch_size=8,
        max_length=64,
        dataset_num_proc=available_cores(),
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,  # TRL's default even on the CPU; omnitune's side runs float32
        gradient_checkpointing=False,
        dataloader_num_workers=0,
    )
    trainer = SFTTrainer(
        model=network, args=arguments, train_dataset=rows, processing_class=tokenizer
    )
    ready = time.perf_counter() - began
    first_step: list[float] = []

    class FirstStep(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            first_step.append(time.perf_counter() - STARTED)

    trainer.add_callback(FirstStep())
    trainer.train()
    return {
        "seconds_to_first_step": first_step[0],
        "data_ready_seconds": ready,
        "peak_rss_mb": peak_rss_mb(),
        "rows": len(trainer.train_dataset),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", choices=["omnitune", "trl"], required=True)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--phase", choices=["first", "cached"], required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    data = write_rows(args.work / f"rows-{args.rows}.jsonl", args.rows)
    cache = args.work / f"cache-{args.side}-{args.rows}"
    if args.phase == "first":
        shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    if args.phase == "cached":
        (cache / "cached-once").touch()
    side = omnitune_side if args.side == "omnitune" else trl_side
    out = args.work / f"run-{args.side}-{args.rows}-{args.phase}"
    shutil.rmtree(out, ignore_errors=True)  # a fresh run each time: nothing to resume
    figures = side(args.model, data, cache, out)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
