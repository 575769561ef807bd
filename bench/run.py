"""`make bench`: run every benchmark and write bench/results.md and bench/results.json."""

from __future__ import annotations

import subprocess
import sys
import time

from bench.harness import REPO, Comparison, compare, python, write_results

CACHE = REPO / "bench" / ".cache"
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def train_once(config: str, *overrides: str) -> None:
    """Train the base model a fine-tuning benchmark starts from (cached in bench/.cache)."""
    command = [python(), "-m", "omnitune.trainers.cli", "train", str(REPO / "configs" / config)]
    subprocess.run([*command, *overrides], cwd=REPO, check=True, capture_output=True)


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
        train_once("demo-speech-base.yaml", f"model.name_or_path={tiny}", f"output_dir={base}")
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
        train_once(
            "demo-llava.yaml",
            f"model.name_or_path={tiny}",
            f"data.train={data / 'base-train' / 'data.jsonl'}",
            "data.eval=null",
            f"output_dir={base}",
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


def monitor_ingest(pairs: int = 1) -> Comparison:
    """1M events through each server; long enough that one pair averages out the noise."""
    module = [python(), "-m", "bench.monitor_ingest", "--events", "1000000"]
    return compare(
        Comparison(
            task="monitor ingest, 1M events, every detector and scanner on (server on 1 core)",
            figure="events_per_second",
            unit="events/s",
            higher_is_better=True,
            reference_name="bare Starlette + SQLite + prometheus_client endpoint, no detectors",
            target=">= 20,000 events/s absolute; RSS flat from 100k to 1M events",
            also=("rss_mb_at_10pct", "rss_mb_at_end", "server_cpu_share"),
        ),
        [*module, "--side", "omnitune"],
        [*module, "--side", "reference"],
        pairs=pairs,
        warmup=False,
    )


def monitor_client(pairs: int = 3) -> Comparison:
    module = [python(), "-m", "bench.monitor_client"]
    return compare(
        Comparison(
            task="monitor client: cost of logging one call on the serving thread",
            figure="median_us_per_event",
            unit="us/event",
            higher_is_better=False,
            reference_name="one synchronous POST per event (keep-alive http.client)",
            target="<= 20 us median per event, absolute",
            also=("p99_us_per_event", "delivered"),
        ),
        [*module, "--side", "omnitune", "--calls", "20000"],
        [*module, "--side", "reference", "--calls", "2000"],
        pairs=pairs,
    )


PEERS = REPO / "bench" / ".venv-peers" / "bin" / "python"


def monitor_drift(test: str, pairs: int = 3) -> Comparison | None:
    """Against Alibi Detect, from its own virtualenv (`make bench-peers`); skipped without it."""
    if not PEERS.is_file():
        print(f"monitor_drift_{test}: skipped, {PEERS} missing (make bench-peers)", flush=True)
        return None
    name = {"ks": "KSDrift", "mmd": "MMDDrift (PyTorch backend)"}[test]
    return compare(
        Comparison(
            task=f"drift detection, {test.upper()} on synthetic shifts vs Alibi Detect {name}",
            figure="windows_per_second",
            unit="windows/s",
            higher_is_better=True,
            reference_name=f"alibi-detect 0.13 {name}",
            target=">= 10 at equal power and no more false alarms",
            also=("power", "false_alarm_rate"),
        ),
        [python(), "-m", "bench.monitor_drift", "--side", "omnitune", "--test", test],
        [str(PEERS), "-m", "bench.monitor_drift", "--side", "alibi", "--test", test],
        pairs=pairs,
        env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


BENCHMARKS = {
    "trainer_overhead": trainer_overhead,
    "speech_finetune": speech_finetune,
    "vlm_finetune": vlm_finetune,
    "monitor_ingest": monitor_ingest,
    "monitor_client": monitor_client,
    "monitor_drift_ks": lambda: monitor_drift("ks"),
    "monitor_drift_mmd": lambda: monitor_drift("mmd"),
}


def main(argv: list[str]) -> None:
    selected = argv or list(BENCHMARKS)
    CACHE.mkdir(parents=True, exist_ok=True)
    results = []
    for name in selected:
        start = time.perf_counter()
        comparison = BENCHMARKS[name]()
        if comparison is None:
            continue
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
