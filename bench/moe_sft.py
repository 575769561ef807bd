"""LoRA SFT of a Mixture-of-Experts model against TRL's `SFTTrainer` + PEFT, same model and data.

The model is the tiny Mixtral at hidden size 128 (`omnitune models build-tiny mixtral`: two
layers, four experts, top-2 routing). Both sides put the same LoRA (r 8) on the attention
projections and on the fused expert weights (PEFT's `target_parameters`), add the router's
load-balancing loss at Mixtral's own coefficient (0.001; TRL through the model's
`output_router_logits`, as its docs say for MoE models), and train one epoch over the same
length-skewed digit chats (bench/packed_sft.py's data) with the same learning rate, schedule,
clipping, seed and one CPU thread. omnitune packs the chats into 256-token rows
(`data.packing`); TRL runs as its docs start, a padded batch of 16 chats a step. Figures: real
(non-padding) training tokens per second over the training loop, peak RSS, and the held-out
loss of each trained adapter scored by the same function (omnitune's token-weighted loss,
unpacked), so the speed is compared at the loss each side reached.

    python -m bench.moe_sft --side omnitune|trl --model DIR --data DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.harness import loop_clock, peak_rss_mb
from bench.packed_sft import (
    LR,
    RANK,
    ROW,
    SEED,
    held_out_loss,
    padded_epoch_arguments,
    training_examples,
)

ATTENTION = ["q_proj", "v_proj"]
EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def run_omnitune(model: str, data: Path, out: str) -> dict:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from omnitune.trainers.config import RunConfig
    from omnitune.trainers.loop import train

    config = RunConfig.model_validate(
        {
            "model": {"name_or_path": model, "modality": "text"},
            "data": {"train": str(data / "train.jsonl"), "max_length": ROW, "packing": True},
            "peft": {"method": "lora", "r": RANK, "alpha": 2 * RANK, "target_modules": ATTENTION},
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
        "held_out_loss": held_out_loss(trained.eval(), tokenizer, data),
    }


def run_trl(model: str, data: Path, out: str) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(1)
    set_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    dataset = Dataset.from_list([{"messages": r["messages"]} for r in rows])
    network = AutoModelForCausalLM.from_pretrained(model, output_router_logits=True)
    args = SFTConfig(**padded_epoch_arguments(out), max_length=ROW, assistant_only_loss=True)
    clock = loop_clock()
    trainer = SFTTrainer(
        model=network,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=RANK,
            lora_alpha=2 * RANK,
            target_modules=ATTENTION,
            target_parameters=EXPERTS,
            task_type="CAUSAL_LM",
        ),
        callbacks=[clock],
    )
    trainer.train()
    tokens = sum(len(ids) for ids, _ in training_examples(tokenizer, data))
    return {
        "tokens_per_second": tokens / clock.seconds,
        "steps": clock.steps,
        "held_out_loss": held_out_loss(trainer.model.eval(), tokenizer, data),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", choices=["omnitune", "trl"], required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="folder with train.jsonl and test.jsonl")
    parser.add_argument("--out", default="bench/.cache/moe-run")
    args = parser.parse_args()
    run = run_omnitune if args.side == "omnitune" else run_trl
    figures = run(args.model, Path(args.data), args.out)
    print(json.dumps({**figures, "peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    main()
