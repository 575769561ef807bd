"""Preference training against TRL: omnitune's DPO/ORPO/KTO objectives vs TRL's DPOTrainer,
`trl.experimental.orpo.ORPOTrainer` and KTOTrainer (TRL 1.16), side by side.

Same tiny Llama, same digit-chat data in TRL's conversational format (so both sides render it
with the model's chat template): preference pairs for DPO and ORPO, unpaired answers labelled
right or wrong for KTO. Same LoRA (r 8, q/v), batch, steps, learning rate, linear schedule,
clipping, seed, beta and one CPU thread; dropout off on both (TRL's default `disable_dropout`).
Figures: training rows (pairs, or answers) per second over the training loop, peak RSS, and
held-out quality of the trained adapter (reward accuracy and margin; KTO: label accuracy and
reward margin), both sides scored by the same function (omnitune's evaluation of the objective
on the same held-out rows), so the quality figure cannot differ by metric code.

    python -m bench.preference_finetune --side omnitune|trl --objective dpo|orpo|kto \\
        --model DIR --data DIR --steps N
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.harness import loop_clock, peak_rss_mb

BATCH, LR, SEED, RANK, BETA = 8, 3e-3, 0, 8, 0.1
#: beta by objective: DPO's usual 0.1; ORPO's lambda 1; KTO 1 (the tiny model's log-ratios are
#: small, and at 0.1 neither side moves far in 100 steps).
BETAS = {"dpo": BETA, "orpo": 1.0, "kto": 1.0}
#: The held-out figures reported for each objective.
HELD_OUT = {
    "dpo": ("reward_accuracy", "reward_margin"),
    "orpo": ("reward_accuracy", "reward_margin"),
    "kto": ("label_accuracy", "reward_margin"),
}


def config_for(model: str, data: Path, objective: str, steps: int, out: str):
    from omnitune.trainers.config import RunConfig

    return RunConfig.model_validate(
        {
            "model": {"name_or_path": model, "modality": "text"},
            "data": {"train": str(data / "train.jsonl"), "eval": str(data / "test.jsonl")},
            "peft": {"method": "lora", "r": RANK, "alpha": 2 * RANK},
            "objective": {"name": objective, "beta": BETAS[objective]},
            "train": {
                "max_steps": steps,
                "batch_size": BATCH,
                "lr": LR,
                "seed": SEED,
                "num_threads": 1,
                "logging_steps": 10,
                "resume": "never",
            },
            "eval": {"batch_size": 16},
            "output_dir": out,
        }
    )


def held_out(model, tokenizer, config) -> dict:
    """The objective's held-out figures (`HELD_OUT`), scored by omnitune's code."""
    from omnitune.modalities.base import get_modality
    from omnitune.trainers.objectives import get_objective
    from omnitune.trainers.objectives.reference import Reference

    modality, objective = get_modality("text"), get_objective(config.objective.name)
    pairs = objective.data(modality, config.data.eval, config, tokenizer, False)
    reference = Reference(model) if objective.needs_reference else None
    metrics = objective.evaluate(modality, model, tokenizer, pairs, config, reference)
    return {name: metrics[name] for name in HELD_OUT[config.objective.name]}


def run_omnitune(model: str, data: Path, objective: str, steps: int, out: str) -> dict:
    from omnitune.trainers.loop import train

    config = config_for(model, data, objective, steps, out)
    config.data.eval = None  # no evaluation inside the timed loop; scored after, as for TRL
    result = train(config)
    config.data.eval = str(data / "test.jsonl")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    trained = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model), result.output)
    return {"rows_per_second": result.samples_per_second, **held_out(trained, tokenizer, config)}


def run_trl(model: str, data: Path, objective: str, steps: int, out: str) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    dataset = Dataset.from_list([_conversational(r) for r in rows])
    common = {
        "output_dir": out,
        "per_device_train_batch_size": BATCH,
        "max_steps": steps,
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
        "max_length": 512,
        # TRL 1.16 turns bf16 autocast and activation checkpointing on by default, even on the
        # CPU; omnitune trains in float32 without recomputation: off, so both sides do the same
        # arithmetic and work.
        "gradient_checkpointing": False,
        "bf16": False,
    }
    peft_config = LoraConfig(
        r=RANK, lora_alpha=2 * RANK, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
    )
    policy = AutoModelForCausalLM.from_pretrained(model)
    if objective == "dpo":
        from trl import DPOConfig, DPOTrainer

        trainer = DPOTrainer(
            model=policy,
            args=DPOConfig(beta=BETA, **common),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
    elif objective == "kto":
        from trl import KTOConfig, KTOTrainer

        # KTO pairs each completion with a neighbour's in a fixed-order batch for its KL
        # estimate, so TRL refuses any sampling but sequential; omnitune fixes its pairing at
        # reading time and shuffles as usual.
        trainer = KTOTrainer(
            model=policy,
            args=KTOConfig(beta=BETAS["kto"], train_sampling_strategy="sequential", **common),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
    else:
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        trainer = ORPOTrainer(
            model=policy,
            args=ORPOConfig(beta=1.0, **common),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
        )

    clock = loop_clock()
    trainer.add_callback(clock)
    trainer.train()
    config = config_for(model, data, objective, steps, out)
    return {
        "rows_per_second": steps * BATCH / clock.seconds,
        **held_out(trainer.model.eval(), tokenizer, config),
    }


def _conversational(row: dict) -> dict:
    """A pair or an unpaired answer in TRL's conversational format."""
    user = {"prompt": [{"role": "user", "content": row["prompt"]}]}
    if "label" in row:
        answer = [{"role": "assistant", "content": row["completion"]}]
        return {**user, "completion": answer, "label": row["label"]}
    return {
        **user,
        "chosen": [{"role": "assistant", "content": row["chosen"]}],
        "rejected": [{"role": "assistant", "content": row["rejected"]}],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", choices=["omnitune", "trl"], required=True)
    parser.add_argument("--objective", choices=list(BETAS), required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="folder with train.jsonl and test.jsonl")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--out", default="bench/.cache/preference-run")
    args = parser.parse_args()
    run = run_omnitune if args.side == "omnitune" else run_trl
    figures = run(args.model, Path(args.data), args.objective, args.steps, args.out)
    print(json.dumps({**figures, "peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    main()
