"""Online alignment against TRL: omnitune's GRPO objective vs TRL 1.16's `GRPOTrainer`, side by
side, and omnitune's PPO on the same task (TRL no longer ships PPO).

Same start (the digit-chat model after 60 steps of full SFT, right about a third of the time),
same LoRA (r 16, alpha 32, q/v, no dropout), same reward (exact match of the numerals against
the chat row's answer), group size 8 on 8 prompts a step (64 completions), at most 12 new
tokens sampled at temperature 0.7 (top-k off, top-p 1), KL coefficient 0.04 to the reference
(the adapter disabled), clip 0.2, per-sequence loss averaging ("grpo" in TRL), linear schedule
from 1e-3, clipping at norm 1, seed 0 and one CPU thread. Figures: completions sampled and
trained on per second over the training loop, peak RSS, and the held-out exact match (greedy,
12 new tokens) of the trained adapter, both sides scored by the same function (omnitune's text
evaluation on the same 64 held-out rows).

    python -m bench.grpo_finetune --side omnitune|trl|ppo --model DIR --data DIR --steps N
    python -m bench.grpo_finetune --curves --model DIR --data DIR --steps 120
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.harness import loop_clock, peak_rss_mb

PROMPTS, GROUP, NEW_TOKENS, TEMPERATURE = 8, 8, 12, 0.7
LR, SEED, RANK, KL = 1e-3, 0, 16, 0.04


def config_for(model: str, data: Path, steps: int, out: str, objective: str = "grpo"):
    from omnitune.trainers.config import RunConfig

    online = {
        "name": objective,
        "num_generations": GROUP if objective == "grpo" else 4,
        "max_new_tokens": NEW_TOKENS,
        "temperature": TEMPERATURE,
        "kl_coef": KL,
        "loss_aggregation": "sequence",
    }
    if objective == "ppo":  # the settings docs/alignment.md's PPO run uses
        online |= {"ppo_epochs": 2, "ppo_minibatches": 2}
    return RunConfig.model_validate(
        {
            "model": {"name_or_path": model, "modality": "text"},
            "data": {"train": str(data / "train.jsonl"), "eval": str(data / "test.jsonl")},
            "peft": {"method": "lora", "r": RANK, "alpha": 2 * RANK},
            "objective": online,
            "train": {
                "max_steps": steps,
                "batch_size": PROMPTS if objective == "grpo" else 2 * PROMPTS,
                "lr": LR,
                "seed": SEED,
                "num_threads": 1,
                "logging_steps": 1,
                "resume": "never",
            },
            "eval": {"metrics": ["exact_match"], "generation": {"max_new_tokens": NEW_TOKENS}},
            "output_dir": out,
        }
    )


def held_out(model, tokenizer, config) -> float:
    """Greedy exact match on the held-out rows, scored by omnitune's text evaluation."""
    from omnitune.modalities.base import get_modality

    modality = get_modality("text")
    examples = modality.dataset(config.data.eval, config, tokenizer, training=False)
    return modality.evaluate(model.eval(), tokenizer, examples, config)["exact_match"]


def run_omnitune(model: str, data: Path, steps: int, out: str, objective: str) -> dict:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from omnitune.trainers.loop import train

    config = config_for(model, data, steps, out, objective)
    config.data.eval = None  # no evaluation inside the timed loop; scored after, as for TRL
    result = train(config)
    config.data.eval = str(data / "test.jsonl")
    steps_logged = [
        json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()
    ]
    train_steps = [r for r in steps_logged if r["kind"] == "train"]
    rewards = [r["reward"] for r in train_steps]
    tokenizer = AutoTokenizer.from_pretrained(model)
    trained = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model), result.output)
    completions = steps * config.train.batch_size * config.objective.num_generations
    return {
        "completions_per_second": completions / result.loop_seconds,
        "exact_match": held_out(trained, tokenizer, config),
        "reward_first_10": sum(rewards[:10]) / len(rewards[:10]),
        "reward_last_10": sum(rewards[-10:]) / len(rewards[-10:]),
        "train_seconds": result.loop_seconds,
        "curve": curve(train_steps),
    }


def curve(steps: list[dict], window: int = 10) -> list[dict]:
    """Mean sampled reward per window of steps, with the wall-clock seconds since step 1 at the
    window's end."""
    start = steps[0]["time"]
    return [
        {
            "steps": steps[min(at + window, len(steps)) - 1]["step"],
            "seconds": steps[min(at + window, len(steps)) - 1]["time"] - start,
            "reward": sum(r["reward"] for r in steps[at : at + window])
            / len(steps[at : at + window]),
        }
        for at in range(0, len(steps), window)
    ]


def curves(model: str, data: Path, steps: int) -> None:
    """PPO and GRPO from the same SFT model on the same task, printed as a markdown table of
    reward against steps and seconds (bench/README.md)."""
    runs = {
        name: run_omnitune(model, data, steps, f"bench/.cache/curve-{name}", name)
        for name in ("grpo", "ppo")
    }
    print("| steps | GRPO reward | GRPO s | PPO reward | PPO s |")
    print("|---:|---:|---:|---:|---:|")
    for g, p in zip(runs["grpo"]["curve"], runs["ppo"]["curve"], strict=True):
        print(
            f"| {g['steps']} | {g['reward']:.3f} | {g['seconds']:.1f} "
            f"| {p['reward']:.3f} | {p['seconds']:.1f} |"
        )
    for name, run in runs.items():
        print(
            f"{name}: held-out exact match {run['exact_match']:.3f}, "
            f"{run['completions_per_second']:.0f} completions/s, {run['train_seconds']:.1f} s"
        )


def run_trl(model: str, data: Path, steps: int, out: str, objective: str) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    dataset = Dataset.from_list(
        [{"prompt": r["messages"][:-1], "answer": r["messages"][-1]["content"]} for r in rows]
    )

    def exact_match(completions, answer, **kwargs):
        """The same comparison as omnitune's `exact_match` reward (whitespace-normalised)."""
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [
            float(" ".join(t.split()) == " ".join(a.split()))
            for t, a in zip(texts, answer, strict=True)
        ]

    args = GRPOConfig(
        output_dir=out,
        per_device_train_batch_size=PROMPTS * GROUP,  # TRL counts completions, not prompts
        num_generations=GROUP,
        max_completion_length=NEW_TOKENS,
        temperature=TEMPERATURE,
        top_p=1.0,
        top_k=0,
        beta=KL,
        epsilon=0.2,
        loss_type="grpo",
        scale_rewards="group",
        learning_rate=LR,
        lr_scheduler_type="linear",
        warmup_steps=0,
        max_grad_norm=1.0,
        max_steps=steps,
        seed=SEED,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        # TRL 1.16 turns bf16 autocast and activation checkpointing on by default, even on the
        # CPU; omnitune trains in float32 without recomputation: off, so both sides do the same
        # arithmetic and work.
        gradient_checkpointing=False,
        bf16=False,
    )
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model),
        reward_funcs=exact_match,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=RANK,
            lora_alpha=2 * RANK,
            lora_dropout=0.0,
            target_modules=["q_proj", "v_proj"],
            task_type="CAUSAL_LM",
        ),
    )

    clock = loop_clock()
    trainer.add_callback(clock)
    trainer.train()
    rewards = [r["reward"] for r in trainer.state.log_history if "reward" in r]
    config = config_for(model, data, steps, out)
    return {
        "completions_per_second": steps * PROMPTS * GROUP / clock.seconds,
        "exact_match": held_out(trainer.model, tokenizer, config),
        "reward_first_10": sum(rewards[:10]) / len(rewards[:10]),
        "reward_last_10": sum(rewards[-10:]) / len(rewards[-10:]),
        "train_seconds": clock.seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", choices=["omnitune", "trl", "ppo"])
    parser.add_argument("--model", required=True, help="the SFT model GRPO starts from")
    parser.add_argument("--data", required=True, help="folder with train.jsonl and test.jsonl")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", default="bench/.cache/grpo-run")
    parser.add_argument(
        "--curves", action="store_true", help="run GRPO and PPO and print reward vs steps/time"
    )
    args = parser.parse_args()
    if args.curves:
        curves(args.model, Path(args.data), args.steps)
        return
    if args.side == "trl":
        figures = run_trl(args.model, Path(args.data), args.steps, args.out, "grpo")
    else:
        objective = "grpo" if args.side == "omnitune" else "ppo"
        figures = run_omnitune(args.model, Path(args.data), args.steps, args.out, objective)
    print(json.dumps({**figures, "peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    main()
