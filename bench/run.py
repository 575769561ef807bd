"""`make bench`: run every benchmark and write bench/results.md and bench/results.json."""

from __future__ import annotations

import sys
import time

from bench.harness import REPO, Comparison, compare, python, write_results

CACHE = REPO / "bench" / ".cache"
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def trainer_overhead(pairs: int) -> Comparison:
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


BENCHMARKS = {"trainer_overhead": trainer_overhead}


def main(argv: list[str]) -> None:
    selected = argv or list(BENCHMARKS)
    CACHE.mkdir(parents=True, exist_ok=True)
    results = []
    for name in selected:
        start = time.perf_counter()
        comparison = BENCHMARKS[name](pairs=7)
        print(
            f"{name}: ratio {comparison.ratio:.3f} "
            f"({comparison.median('omnitune'):.1f} vs {comparison.median('reference'):.1f} "
            f"{comparison.unit}) in {time.perf_counter() - start:.0f} s",
            flush=True,
        )
        results.append(comparison)
    write_results(results, REPO / "bench")
    print((REPO / "bench" / "results.md").read_text())


if __name__ == "__main__":
    main(sys.argv[1:])
