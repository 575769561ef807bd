"""Vision-language fine-tune: omnitune against TRL's `SFTTrainer` VLM path.

Both sides LoRA-adapt the same tiny LLaVA (trained once on the `base` digits by
`configs/demo-llava.yaml`) to the `shift` digits: same data, LoRA rank and targets (omnitune's
default for the model: q/v of the language model, the projector trained in full), batch size,
learning rate, schedule, steps, seed, one CPU thread, assistant-only loss. TRL gets a dataset
of `images` + `messages` and the processor, which selects its vision collator; gradient
checkpointing, which TRL turns on by default, is off on both sides, so both do the same
arithmetic.

Figures: samples/s over the training loop, and the VQA accuracy each side's model reaches on
the `shift` test digits, from the same greedy `generate()`.

    python -m bench.vlm_finetune --side omnitune|reference --model DIR --data DIR --steps N
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path
from typing import Any

from bench.harness import REPO, peak_rss_mb

BATCH, LR, SEED, RANK, WARMUP = 32, 2e-3, 0, 16, 10


def run_config(
    model: str, data: Path, steps: int, out: str, batch: int = BATCH, threads: int = 1
) -> Any:
    from omnitune.trainers.config import RunConfig

    return RunConfig.model_validate(
        {
            "model": {"name_or_path": model, "modality": "vision_language"},
            "data": {"train": str(data / "train" / "data.jsonl")},
            "peft": {"method": "lora", "r": RANK, "alpha": 2 * RANK},
            "train": {
                "max_steps": steps,
                "batch_size": batch,
                "lr": LR,
                "lr_schedule": "linear",
                "warmup_steps": WARMUP,
                "seed": SEED,
                "num_threads": threads,
                # bench.run's data_workers rows set this (1 vs 0); 0 everywhere else.
                "data_workers": int(os.environ.get("OMNITUNE_BENCH_WORKERS", "0")),
                "logging_steps": 25,
                "resume": "never",
            },
            "eval": {"batch_size": 50, "generation": {"max_new_tokens": 3}},
            "output_dir": out,
        }
    )


def shift_accuracy(model: Any, processor: Any, config: Any, data: Path) -> float:
    from omnitune.modalities.vision_language.data import read_vlm_dataset
    from omnitune.modalities.vision_language.metrics import answer_questions, vqa_accuracy

    test = read_vlm_dataset(str(data / "test" / "data.jsonl"), config, processor, False)
    answers = answer_questions(model, processor, test.items, config)
    return vqa_accuracy([e["answer"] for e in test.items], answers)


def run_omnitune(
    model: str,
    data: Path,
    steps: int,
    out: str,
    batch: int = BATCH,
    threads: int = 1,
    accuracy: bool = True,
) -> dict[str, float]:
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from omnitune.trainers.loop import train

    config = run_config(model, data, steps, out, batch, threads)
    result = train(config)
    if not accuracy:
        return {"samples_per_second": result.samples_per_second}
    processor = AutoProcessor.from_pretrained(model)
    trained = PeftModel.from_pretrained(
        AutoModelForImageTextToText.from_pretrained(model), result.output
    )
    return {
        "samples_per_second": result.samples_per_second,
        "vqa_accuracy": shift_accuracy(trained.eval(), processor, config, data),
    }


def run_reference(
    model_dir: str,
    data: Path,
    steps: int,
    out: str,
    batch: int = BATCH,
    threads: int = 1,
    accuracy: bool = True,
) -> dict[str, float]:
    import numpy as np
    import torch
    from datasets import Dataset, Image
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig, SFTTrainer

    from omnitune.modalities.vision_language import targets

    torch.set_num_threads(threads)
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    rows = []
    manifest = data / "train" / "data.jsonl"
    for line in manifest.read_text().splitlines():
        row = json.loads(line)
        rows.append(
            {
                "images": [str(manifest.parent / row["image"])],
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image"}, {"type": "text", "text": row["question"]}],
                    },
                    {"role": "assistant", "content": [{"type": "text", "text": row["answer"]}]},
                ],
            }
        )
    dataset = Dataset.from_list(rows).cast_column("images", [Image()])
    defaults = targets(model)  # the same LoRA placement omnitune uses by default
    lora = LoraConfig(
        r=RANK,
        lora_alpha=2 * RANK,
        target_modules=defaults.lora,
        modules_to_save=defaults.modules_to_save,
        task_type="CAUSAL_LM",
    )
    arguments = SFTConfig(
        output_dir=out,
        per_device_train_batch_size=batch,
        learning_rate=LR,
        lr_scheduler_type="linear",
        warmup_steps=WARMUP,
        max_steps=steps,
        logging_steps=25,
        save_strategy="no",
        report_to=[],
        seed=SEED,
        use_cpu=True,
        gradient_checkpointing=False,
        bf16=False,  # TRL's default even on the CPU; omnitune's side trains in float32
        assistant_only_loss=True,
        max_length=None,  # never cut image tokens (omnitune drops over-long samples instead)
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=model,
        args=arguments,
        train_dataset=dataset,
        processing_class=processor,
        peft_config=lora,
    )
    output = trainer.train()
    rate = steps * batch / output.metrics["train_runtime"]
    if not accuracy:
        return {"samples_per_second": rate}
    config = run_config(model_dir, data, steps, out)
    return {
        "samples_per_second": rate,
        "vqa_accuracy": shift_accuracy(trainer.model.eval(), processor, config, data),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", choices=["omnitune", "reference"], required=True)
    parser.add_argument("--model", required=True, help="a LLaVA folder (the base model)")
    parser.add_argument("--data", required=True, help="folder with train/ and test/ digits")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--out", default=str(REPO / "bench" / ".cache" / "vlm-run"))
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--no-accuracy", action="store_true", help="speed and memory only (random weights)"
    )
    args = parser.parse_args()
    run = run_omnitune if args.side == "omnitune" else run_reference
    figures = run(
        args.model,
        Path(args.data),
        args.steps,
        args.out,
        args.batch,
        args.threads,
        not args.no_accuracy,
    )
    print(json.dumps({**figures, "steps": args.steps, "peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    main()
