"""Speech fine-tune: omnitune against the Hugging Face reference recipe for Whisper + LoRA.

Both sides LoRA-adapt the same tiny Whisper (trained on the shipped corpus's `base` voices)
to the `shift` voices: same data, LoRA rank and targets, batch size, learning rate, schedule,
steps, seed and one CPU thread. The reference is the public "fine-tune Whisper" recipe with
PEFT: the dataset is prepared with `datasets.map` (features and label ids per row), batches
come from a padding speech collator (`feature_extractor.pad` + `tokenizer.pad`, -100 labels,
leading start token dropped), and `Seq2SeqTrainer` trains. Audio is decoded with soundfile on
both sides (datasets' own decoder needs TorchCodec, which the pinned stack lacks).

Figures: utterances/s over the training loop, end-to-end seconds (data preparation + training,
omnitune with a cold feature cache), and the WER each side's model reaches on `shift/test`,
decoded by the same greedy `generate()`.

    python -m bench.speech_finetune --side omnitune|reference --model DIR --steps N
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from typing import Any

from bench.harness import REPO, peak_rss_mb

CORPUS = REPO / "modalities" / "speech" / "corpus"
BATCH, LR, SEED, RANK, WARMUP = 16, 3e-3, 0, 16, 10


def augment() -> dict[str, Any]:
    """No augmentation, as the reference recipe; bench.run's speech data_workers row sets
    OMNITUNE_BENCH_AUGMENT=1 on both of its sides: noise and speed perturbation on half the
    clips (each decoded and featurised again) and SpecAugment, a usual Whisper fine-tune."""
    if os.environ.get("OMNITUNE_BENCH_AUGMENT") != "1":
        return {}
    return {"noise": {"p": 0.5}, "speed": {"p": 0.5}, "spec_augment": {"p": 0.5}}


def run_config(
    model: str, steps: int, out: str, cache: str, batch: int = BATCH, threads: int = 1
) -> Any:
    from omnitune.trainers.config import RunConfig

    return RunConfig.model_validate(
        {
            "model": {"name_or_path": model, "modality": "speech"},
            "data": {
                "train": str(CORPUS / "shift" / "train.jsonl"),
                "options": {"language": "en", "cache_dir": cache, "augment": augment()},
            },
            "peft": {
                "method": "lora",
                "r": RANK,
                "alpha": 2 * RANK,
                "target_modules": ["q_proj", "v_proj"],
            },
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
            "eval": {"batch_size": 40, "generation": {"max_new_tokens": 16}},
            "output_dir": out,
        }
    )


def shift_wer(model: Any, processor: Any, config: Any) -> float:
    from omnitune.modalities.speech.data import read_speech_dataset
    from omnitune.modalities.speech.metrics import error_rates, transcribe

    test = read_speech_dataset(str(CORPUS / "shift" / "test.jsonl"), config, processor, False)
    hypotheses = transcribe(model, processor, test.items, config)
    return error_rates([e["text"] for e in test.items], hypotheses)["wer"]


def run_omnitune(
    model: str, steps: int, out: str, batch: int = BATCH, threads: int = 1, wer: bool = True
) -> dict[str, float]:
    # Import what train() imports before the clock starts, as the reference side does.
    import accelerate  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401

    from omnitune.trainers.loop import train

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:  # cold cache: feature extraction is counted
        config = run_config(model, steps, out, cache, batch, threads)
        result = train(config)
        elapsed = time.perf_counter() - start
        if not wer:
            return {"utterances_per_second": result.samples_per_second}
        from peft import PeftModel
        from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

        processor = AutoProcessor.from_pretrained(model)
        trained = PeftModel.from_pretrained(
            AutoModelForSpeechSeq2Seq.from_pretrained(model), result.output
        )
        error_rate = shift_wer(trained.eval(), processor, config)
    return {
        "utterances_per_second": result.samples_per_second,
        "end_to_end_seconds": elapsed,
        "wer": error_rate,
    }


class SpeechCollatorWithPadding:
    """The recipe's collator: pad features and label ids separately, mask label padding."""

    def __init__(self, processor: Any, decoder_start_token_id: int) -> None:
        self.processor = processor
        self.decoder_start_token_id = decoder_start_token_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        features = [{"input_features": row["input_features"]} for row in rows]
        batch = self.processor.feature_extractor.pad(features, return_tensors="pt")
        labels = [{"input_ids": row["labels"]} for row in rows]
        padded = self.processor.tokenizer.pad(labels, return_tensors="pt")
        ids = padded["input_ids"].masked_fill(padded.attention_mask.ne(1), -100)
        if (ids[:, 0] == self.decoder_start_token_id).all().item():
            ids = ids[:, 1:]
        batch["labels"] = ids
        return batch


def run_reference(
    model_dir: str, steps: int, out: str, batch: int = BATCH, threads: int = 1, wer: bool = True
) -> dict[str, float]:
    import numpy as np
    import soundfile
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForSpeechSeq2Seq,
        AutoProcessor,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
    )

    torch.set_num_threads(threads)
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    start = time.perf_counter()
    processor = AutoProcessor.from_pretrained(model_dir)
    processor.tokenizer.set_prefix_tokens(language="en", task="transcribe")
    model = AutoModelForSpeechSeq2Seq.from_pretrained(model_dir)
    manifest = CORPUS / "shift" / "train.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for row in rows:
        row["audio"] = str(manifest.parent / row["audio"])
    dataset = Dataset.from_list(rows)

    def prepare(row: dict[str, Any]) -> dict[str, Any]:
        samples, rate = soundfile.read(row["audio"], dtype="float32")
        row["input_features"] = processor.feature_extractor(
            samples, sampling_rate=rate
        ).input_features[0]
        row["labels"] = processor.tokenizer(row["text"]).input_ids
        return row

    dataset = dataset.map(prepare, remove_columns=dataset.column_names)
    model = get_peft_model(
        model, LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=["q_proj", "v_proj"])
    )
    arguments = Seq2SeqTrainingArguments(
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
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Seq2SeqTrainer(
        model=model,
        args=arguments,
        train_dataset=dataset,
        data_collator=SpeechCollatorWithPadding(processor, model.config.decoder_start_token_id),
    )
    output = trainer.train()
    elapsed = time.perf_counter() - start
    rate = steps * batch / output.metrics["train_runtime"]
    if not wer:
        return {"utterances_per_second": rate}
    with tempfile.TemporaryDirectory() as cache:
        config = run_config(model_dir, steps, out, cache)
        error_rate = shift_wer(model.eval(), processor, config)
    return {"utterances_per_second": rate, "end_to_end_seconds": elapsed, "wer": error_rate}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", choices=["omnitune", "reference"], required=True)
    parser.add_argument("--model", required=True, help="a Whisper folder (the base model)")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--out", default=str(REPO / "bench" / ".cache" / "speech-run"))
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--no-wer", action="store_true", help="speed and memory only (a random-weights model)"
    )
    args = parser.parse_args()
    run = run_omnitune if args.side == "omnitune" else run_reference
    figures = run(args.model, args.steps, args.out, args.batch, args.threads, not args.no_wer)
    print(json.dumps({**figures, "steps": args.steps, "peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    main()
