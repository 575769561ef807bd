"""Memory and speed at the shapes users train, on this machine's CPUs.

The models are built offline from the published configs with random weights (nothing is
downloaded): Qwen2.5-0.5B's shape (Qwen2 architecture, hidden 896, 14 query / 2 key-value
heads, MLP 4,864, the 151,936-token vocabulary, tied embeddings). A 24-layer step at 2,048
tokens takes minutes on two cores, so the layer count is reduced (`--layers`, 2 by default) and
the report says so; the vocabulary and hidden size are never reduced: the vocabulary is what
makes the logits the largest tensor of a step.

Both sides train the same rows: plain-text rows of exactly `--length` tokens (digit words of
the tiny chat tokenizer; the model scores all 151,936 entries), batch 1, LoRA r 16 on q/v, the
same learning rate, float32, no gradient checkpointing (the auto rule of
trainers/memory_rules.py leaves it off at this depth, and the peer is told the same), all of
the machine's cores. omnitune: `train.chunked_loss: auto` (on at this vocabulary). Peer: TRL
1.16 `SFTTrainer` + PEFT LoRA as a user runs it (`bf16=False, gradient_checkpointing=False`
to match). Figures: training tokens per second over the steps after the first (the first
includes one-time work on both sides) and the process's peak RSS.

    python -m bench.real_shapes --side omnitune|trl --model DIR --data DIR --length L
    python -m bench.real_shapes --build DIR [--layers N]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from bench.harness import loop_clock, peak_rss_mb

LR, SEED, RANK, STEPS = 1e-4, 0, 16, 4
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

#: Qwen2.5-0.5B's config (its config.json on the hub), less the layer count.
QWEN2_5_0_5B = {
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151_936,
    "max_position_embeddings": 32_768,
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}


def build_text_model(tokenizer_dir: Path, out: Path, layers: int) -> Path:
    """A Qwen2.5-0.5B-shaped Qwen2 model with `layers` layers, random weights, float32."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    if (out / "config.json").is_file():
        return out
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Qwen2Config(
        **QWEN2_5_0_5B,
        num_hidden_layers=layers,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(SEED)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


#: Whisper-small's config (openai/whisper-small), less the layer counts; its 30-second window.
WHISPER_SMALL = {
    "d_model": 768,
    "encoder_attention_heads": 12,
    "decoder_attention_heads": 12,
    "encoder_ffn_dim": 3072,
    "decoder_ffn_dim": 3072,
    "vocab_size": 51_865,
    "num_mel_bins": 80,
    "max_source_positions": 1500,
    "max_target_positions": 448,
}


def build_whisper_model(tiny_dir: Path, out: Path, layers: int) -> Path:
    """A Whisper-small-shaped model with `layers` encoder and decoder layers, random weights,
    beside the tiny 30-second Whisper's processor (its tokenizer uses the first ids)."""
    import torch
    from transformers import AutoProcessor, WhisperConfig, WhisperForConditionalGeneration

    if (out / "config.json").is_file():
        return out
    processor = AutoProcessor.from_pretrained(tiny_dir)
    tiny = WhisperConfig.from_pretrained(tiny_dir)
    config = WhisperConfig(
        **{**tiny.to_dict(), **WHISPER_SMALL, "encoder_layers": layers, "decoder_layers": layers}
    )
    torch.manual_seed(SEED)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = WhisperForConditionalGeneration.from_pretrained(
        tiny_dir
    ).generation_config
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


#: SmolVLM-256M's parts: SigLIP base-patch16-512 (vision) and SmolLM2-135M (text), a 4x4
#: pixel shuffle (64 image tokens per 512-pixel tile); layer counts reduced by `layers`.
SMOLVLM_VISION = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "image_size": 512,
    "patch_size": 16,
}
SMOLVLM_TEXT = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "vocab_size": 49_280,
    "max_position_embeddings": 8192,
}
#: images resized to a longest edge of 1,024 and cut into 512-pixel tiles: 2 x 2 tiles and the
#: whole image, 5 x 64 = 320 image tokens for a square picture.
SMOLVLM_IMAGES = {"size": {"longest_edge": 1024}, "max_image_size": {"longest_edge": 512}}


def build_vlm_model(tiny_dir: Path, out: Path, layers: int) -> Path:
    """A SmolVLM-256M-shaped Idefics3 (`layers` vision and text layers), random weights, with
    the tiny Idefics3's tokenizer and a processor set to 512-pixel tiles."""
    import torch
    from transformers import AutoProcessor, Idefics3Config, Idefics3ForConditionalGeneration

    if (out / "config.json").is_file():
        return out
    tiny = Idefics3Config.from_pretrained(tiny_dir)
    config = tiny.to_dict()
    config["vision_config"].update(SMOLVLM_VISION, num_hidden_layers=layers)
    config["text_config"].update(SMOLVLM_TEXT, num_hidden_layers=layers)
    config["scale_factor"] = 4
    torch.manual_seed(SEED)
    model = Idefics3ForConditionalGeneration(Idefics3Config(**config))
    model.save_pretrained(out)
    processor = AutoProcessor.from_pretrained(tiny_dir)
    processor.image_seq_len = 64
    processor.image_processor.do_image_splitting = True
    for name, value in SMOLVLM_IMAGES.items():
        setattr(processor.image_processor, name, value)
    processor.save_pretrained(out)
    return out


def write_text_rows(folder: Path, tokenizer_dir: Path, length: int, rows: int = 16) -> Path:
    """Plain-text rows of digit words, each exactly `length` tokens for the tokenizer (the
    text is cut to its first `length` tokens and decoded back)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    rng = random.Random(SEED)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for _ in range(rows):
        text = " ".join(rng.choice(WORDS) for _ in range(length * 2))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:length]
        lines.append(json.dumps({"text": tokenizer.decode(ids)}))
    path = folder / f"rows-{length}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_omnitune(model: str, data: Path, length: int, out: str, steps: int = STEPS) -> dict:
    from omnitune.trainers.config import RunConfig
    from omnitune.trainers.loop import train

    config = RunConfig.model_validate(
        {
            "model": {"name_or_path": model, "modality": "text", "dtype": "float32"},
            "data": {
                "train": str(data),
                "max_length": length,
                "options": {"overlong": "truncate"},
            },
            "peft": {"method": "lora", "r": RANK, "alpha": 2 * RANK, "dropout": 0.0},
            "train": {
                "max_steps": steps,
                "batch_size": 1,
                "lr": LR,
                "seed": SEED,
                "logging_steps": 1,
                "mixed_precision": "no",
                "resume": "never",
                "report_to": [],
            },
            "output_dir": out,
        }
    )
    result = train(config)
    records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    times = [r["time"] for r in records if r["kind"] == "train"]
    return {
        "tokens_per_second": (steps - 1) * length / (times[-1] - times[0]),
        "first_step_seconds": result.loop_seconds - (times[-1] - times[0]),
        "gradient_checkpointing": "on" in _checkpointing_line(Path(out)),
        "chunked_loss": config.train.chunked_loss,
    }


def _checkpointing_line(run_dir: Path) -> str:
    """The run log's gradient checkpointing decision ('' when it stayed off)."""
    lines = (run_dir / "train.log").read_text().splitlines()
    return next((line for line in lines if "gradient checkpointing:" in line), "")


def run_trl(model: str, data: Path, length: int, out: str, steps: int = STEPS) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    dataset = Dataset.from_list(rows)
    network = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    step_times: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            import time

            step_times.append(time.perf_counter())

    args = SFTConfig(
        output_dir=out,
        per_device_train_batch_size=1,
        max_steps=steps,
        learning_rate=LR,
        lr_scheduler_type="linear",
        max_length=length,
        packing=False,
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=SEED,
        dataloader_num_workers=0,
    )
    trainer = SFTTrainer(
        model=network,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=RANK, lora_alpha=2 * RANK, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
        ),
        callbacks=[loop_clock(), StepTimes()],
    )
    trainer.train()
    return {"tokens_per_second": (steps - 1) * length / (step_times[-1] - step_times[0])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", choices=["omnitune", "trl"])
    parser.add_argument("--model")
    parser.add_argument("--data")
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--out", default="bench/.cache/real-shape-run")
    parser.add_argument("--build", help="build the Qwen2.5-0.5B-shaped model in this folder")
    parser.add_argument("--tokenizer", default="bench/.cache/tiny-text")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args()
    if args.build:
        print(build_text_model(Path(args.tokenizer), Path(args.build), args.layers))
        return
    run = run_omnitune if args.side == "omnitune" else run_trl
    figures = run(args.model, Path(args.data), args.length, args.out, args.steps)
    print(json.dumps({**figures, "peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    main()
