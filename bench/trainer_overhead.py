"""Trainer-core overhead: omnitune's loop against a plain PyTorch loop doing the same work.

Same tiny Llama, same LoRA config (peft), same data, batch size, seed, AdamW, linear schedule,
gradient clipping and one CPU thread. The plain loop is what a user would write by hand, in
nanoGPT's shape: it prints the loss every 10 steps and saves the trainable weights and the
optimizer at the end. omnitune's side is `omnitune.trainers.loop.train`, logging every 10 steps
(train.log, metrics.jsonl, TensorBoard) and writing a checkpoint at the end (fsynced, with RNG
and data position), no evaluation. Figure: training samples per second over the loop.

    python -m bench.trainer_overhead --side omnitune|plain --model DIR --data FILE --steps N
    python -m bench.trainer_overhead --side alternate --rounds R ...

A diagnostic for noisy machines: `--side alternate` runs both loops in one process, plain then
omnitune then plain ..., R rounds of N steps each, and prints every round's figures, to tell
the machine's drift (seen here: 15-20% between runs seconds apart) from the loops' difference.
`make bench` uses one fresh process per side instead, so each side's peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from bench.harness import peak_rss_mb

BATCH, LR, SEED, RANK = 16, 3e-3, 0, 8


def run_omnitune(
    model: str,
    data: str,
    steps: int | None,
    out: str,
    *,
    max_length: int = 512,
    epochs: float | None = None,
) -> dict:
    """`omnitune.trainers.loop.train` for `steps` (or `epochs`); figures of the loop, and the
    end-to-end seconds of the call (model and data loading, tokenization, training, saving)."""
    from omnitune.trainers.config import RunConfig
    from omnitune.trainers.loop import train

    config = RunConfig.model_validate(
        {
            "model": {"name_or_path": model, "modality": "text"},
            "data": {"train": data, "max_length": max_length},
            "peft": {
                "method": "lora",
                "r": RANK,
                "alpha": 2 * RANK,
                "target_modules": ["q_proj", "v_proj"],
            },
            "train": {
                "max_steps": steps,
                "epochs": epochs,
                "batch_size": BATCH,
                "lr": LR,
                "seed": SEED,
                "num_threads": 1,
                "logging_steps": 10,
                "resume": "never",
            },
            "output_dir": out,
        }
    )
    start = time.perf_counter()
    result = train(config)
    end_to_end = time.perf_counter() - start
    samples = result.steps * BATCH
    return {
        "samples_per_second": result.samples_per_second,
        "samples_per_cpu_second": samples / result.loop_cpu_seconds,
        "steps": result.steps,
        "end_to_end_seconds": end_to_end,
    }


def run_plain(model_dir: str, data: str, steps: int, out: str) -> dict:
    """The hand-written loop: on the GPU with bf16 autocast when there is one, else one CPU
    thread, like omnitune's side (whose `mixed_precision: auto` picks bf16 on such a GPU)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)
    random.seed(SEED)
    torch.manual_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # The dtype omnitune's `model.dtype: auto` picks: bf16 weights on a GPU, fp32 on a CPU.
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    model = get_peft_model(
        model,
        LoraConfig(
            r=RANK, lora_alpha=2 * RANK, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
        ),
    )
    examples = []
    for line in Path(data).read_text().splitlines():
        record = json.loads(line)
        if "text" in record:  # plain text, as omnitune's text modality reads it: EOS appended
            ids = [*tokenizer(record["text"])["input_ids"], tokenizer.eos_token_id]
            examples.append((ids, ids))
            continue
        encoded = tokenizer.apply_chat_template(
            record["messages"], return_dict=True, return_assistant_tokens_mask=True
        )
        labels = [
            t if m else -100
            for t, m in zip(encoded["input_ids"], encoded["assistant_masks"], strict=True)
        ]
        examples.append((encoded["input_ids"], labels))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=steps)
    model.train()
    order: list[int] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    for step in range(steps):
        if len(order) < BATCH:
            order += random.sample(range(len(examples)), len(examples))
        batch = [examples[order.pop()] for _ in range(BATCH)]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((BATCH, width), tokenizer.pad_token_id)
        labels = torch.full((BATCH, width), -100)
        mask = torch.zeros((BATCH, width), dtype=torch.long)
        for row, (ids, target) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(ids)] = torch.tensor(target)
            mask[row, : len(ids)] = 1
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                labels=labels.to(device),
            ).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % 10 == 0:
            print(f"step {step + 1} loss {loss.item():.4f}", file=sys.stderr)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    Path(out).mkdir(parents=True, exist_ok=True)
    torch.save(
        {"model": trainable, "optimizer": optimizer.state_dict(), "step": steps},
        Path(out) / "plain-checkpoint.pt",
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "samples_per_second": steps * BATCH / elapsed,
        "samples_per_cpu_second": steps * BATCH / cpu,
        "steps": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", choices=["omnitune", "plain", "alternate"], required=True)
    parser.add_argument("--rounds", type=int, default=10, help="pairs, with --side alternate")
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--out", default="bench/.cache/run")
    parser.add_argument("--max-length", type=int, default=512, help="omnitune's data.max_length")
    parser.add_argument(
        "--tokens-per-sample", type=float, help="report tokens/s (and MFU on a known GPU)"
    )
    args = parser.parse_args()
    if args.side == "alternate":
        run_plain(args.model, args.data, args.steps, args.out)  # warm-up round for both sides
        run_omnitune(args.model, args.data, args.steps, args.out)
        rounds = []
        for index in range(args.rounds):
            order = ["plain", "omnitune"] if index % 2 == 0 else ["omnitune", "plain"]
            figures = {}
            for side in order:
                figures[side] = (
                    run_plain(args.model, args.data, args.steps, args.out)
                    if side == "plain"
                    else run_omnitune(args.model, args.data, args.steps, args.out)
                )["samples_per_second"]
            rounds.append(figures)
        print(json.dumps({"rounds": rounds, "peak_rss_mb": peak_rss_mb()}))
        return
    if args.side == "omnitune":
        figures = run_omnitune(
            args.model, args.data, args.steps, args.out, max_length=args.max_length
        )
    else:
        figures = run_plain(args.model, args.data, args.steps, args.out)
    if args.tokens_per_sample:
        from bench.gpu_training import mfu, parameters

        figures["tokens_per_second"] = figures["samples_per_second"] * args.tokens_per_sample
        utilisation = mfu(figures["tokens_per_second"], parameters(Path(args.model)))
        if utilisation is not None:
            figures["mfu"] = utilisation
    print(json.dumps({**figures, "peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    main()
