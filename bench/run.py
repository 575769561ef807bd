"""`make bench`: run every benchmark and write bench/results.md and bench/results.json."""

from __future__ import annotations

import subprocess
import sys
import time

from bench.harness import REPO, Comparison, compare, python, write_results

CACHE = REPO / "bench" / ".cache"
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def trainer_overhead(pairs: int = 11) -> Comparison:
    # 11 pairs: single runs here swing by 15-20%; the median of 7 pair ratios moved by ~0.05.
    from omnitune.modalities.text.demo_data import write_digit_chat
    from omnitune.modalities.tiny import build_tiny

    model = build_tiny("text", CACHE / "tiny-text", seed=0)
    data = write_digit_chat(CACHE / "text", train=512, test=16)["train"]
    common = ["--model", str(model), "--data", str(data), "--steps", "400"]
    module = [python(), "-m", "bench.trainer_overhead"]
    return compare(
        Comparison(
            task="trainer core vs plain PyTorch loop (tiny Llama, LoRA, 1 thread)",
            figure="samples_per_second",
            unit="samples/s",
            higher_is_better=True,
            reference_name="plain PyTorch loop",
            target=">= 0.95 (core costs <= 5%)",
        ),
        [*module, "--side", "omnitune", *common, "--out", str(CACHE / "run")],
        [*module, "--side", "plain", *common],
        pairs=pairs,
        env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )


def speech_finetune(pairs: int = 3) -> Comparison:
    """LoRA on the `shift` voices from a tiny Whisper trained on `base` (built once, cached)."""
    from omnitune.modalities.tiny import build_tiny

    base = CACHE / "speech-base"
    if not (base / "model" / "config.json").is_file():
        tiny = build_tiny("whisper", CACHE / "tiny-whisper", seed=0)
        subprocess.run(
            [
                python(),
                "-m",
                "omnitune.trainers.cli",
                "train",
                str(REPO / "configs" / "demo-speech-base.yaml"),
                f"model.name_or_path={tiny}",
                f"output_dir={base}",
            ],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
    common = ["--model", str(base / "model"), "--steps", "300"]
    module = [python(), "-m", "bench.speech_finetune"]
    return compare(
        Comparison(
            task="speech LoRA fine-tune vs HF recipe (tiny Whisper, shift voices, 1 thread)",
            figure="utterances_per_second",
            unit="utterances/s",
            higher_is_better=True,
            reference_name="Seq2SeqTrainer + PEFT LoRA + padding collator",
            target=">= 1.5 at equal or better WER, no more memory",
            also=("wer", "end_to_end_seconds"),
        ),
        [*module, "--side", "omnitune", *common],
        [*module, "--side", "reference", *common],
        pairs=pairs,
        env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )


def vlm_finetune(pairs: int = 3) -> Comparison:
    """LoRA on the `shift` digits from a tiny LLaVA trained on `base` (built once, cached)."""
    from omnitune.modalities.tiny import build_tiny
    from omnitune.modalities.vision_language.demo_data import write_digit_vqa

    data, base = CACHE / "vlm-data", CACHE / "llava-base"
    if not (data / "test" / "data.jsonl").is_file():
        write_digit_vqa(data / "base-train", 0, 1400)
        write_digit_vqa(data / "train", 0, 600, domain="shift")
        write_digit_vqa(data / "test", 1400, 100, domain="shift")
    if not (base / "model" / "config.json").is_file():
        tiny = build_tiny("llava", CACHE / "tiny-llava", seed=0)
        subprocess.run(
            [
                python(),
                "-m",
                "omnitune.trainers.cli",
                "train",
                str(REPO / "configs" / "demo-llava.yaml"),
                f"model.name_or_path={tiny}",
                f"data.train={data / 'base-train' / 'data.jsonl'}",
                "data.eval=null",
                f"output_dir={base}",
            ],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
    common = ["--model", str(base / "model"), "--data", str(data), "--steps", "100"]
    module = [python(), "-m", "bench.vlm_finetune"]
    return compare(
        Comparison(
            task="VLM LoRA fine-tune vs TRL SFTTrainer (tiny LLaVA, shift digits, 1 thread)",
            figure="samples_per_second",
            unit="samples/s",
            higher_is_better=True,
            reference_name="TRL SFTTrainer VLM path + PEFT LoRA",
            target=">= 1.3 at equal accuracy",
            also=("vqa_accuracy",),
        ),
        [*module, "--side", "omnitune", *common],
        [*module, "--side", "reference", *common],
        pairs=pairs,
        env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )


BENCHMARKS = {
    "trainer_overhead": trainer_overhead,
    "speech_finetune": speech_finetune,
    "vlm_finetune": vlm_finetune,
}


def main(argv: list[str]) -> None:
    selected = argv or list(BENCHMARKS)
    CACHE.mkdir(parents=True, exist_ok=True)
    results = []
    for name in selected:
        start = time.perf_counter()
        comparison = BENCHMARKS[name]()
        print(
            f"{name}: ratio {comparison.ratio:.3f} "
            f"({comparison.median('omnitune'):.1f} vs {comparison.median('reference'):.1f} "
            f"{comparison.unit}) in {time.perf_counter() - start:.0f} s",
            flush=True,
        )
        results.append(comparison)
    write_results(results, REPO / "bench", keep_others=bool(argv))
    print((REPO / "bench" / "results.md").read_text())


if __name__ == "__main__":
    main(sys.argv[1:])
