"""Side-by-side measurement: each side runs in its own fresh process, interleaved A B A B.

A benchmark names two commands (omnitune's side and the reference side) that each print one
JSON object with their figures on their last line. The harness runs one warm-up pair, then
`pairs` measured pairs, alternating which side goes first, and reports per-figure medians and
the median of the per-pair ratios. Each child reports its own peak RSS (getrusage) and its timing
(perf_counter around the measured work only, not start-up).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Comparison:
    task: str
    figure: str  # the figure the ratio is about, e.g. "samples_per_second"
    unit: str
    higher_is_better: bool
    omnitune: list[dict[str, Any]] = field(default_factory=list)
    reference: list[dict[str, Any]] = field(default_factory=list)
    reference_name: str = "reference"
    target: str = ""
    also: tuple[str, ...] = ()  # other figures whose medians the table shows (e.g. "wer")

    def median(self, side: str, figure: str | None = None) -> float:
        """The median of `figure` over a side's runs; NaN where no run reported it (MFU on a
        device without a known peak, say)."""
        runs = self.omnitune if side == "omnitune" else self.reference
        values = [run[figure or self.figure] for run in runs if (figure or self.figure) in run]
        return statistics.median(values) if values else float("nan")

    @property
    def ratio(self) -> float:
        """Median of the per-pair ratios (omnitune / reference for higher-is-better figures,
        reference / omnitune otherwise). Each pair ran back to back, so a slow moment of the
        machine hits both sides of a pair and cancels in its ratio."""
        return statistics.median(self.pair_ratios())

    def pair_ratios(self) -> list[float]:
        pairs = zip(self.omnitune, self.reference, strict=True)
        if self.higher_is_better:
            return [a[self.figure] / b[self.figure] for a, b in pairs]
        return [b[self.figure] / a[self.figure] for a, b in pairs]


def run_side(command: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one side in a fresh process; its last stdout line is a JSON object of figures,
    including its own `peak_rss_mb` (see `peak_rss_mb()`)."""
    result = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compare(
    comparison: Comparison,
    ours: list[str],
    theirs: list[str],
    pairs: int = 3,
    env: dict[str, str] | None = None,
    warmup: bool = True,
) -> Comparison:
    if warmup:  # a warm-up pair: page cache, compiled kernels
        run_side(ours, env), run_side(theirs, env)
    for index in range(pairs):
        sides = [("omnitune", ours), ("reference", theirs)]
        for side, command in sides if index % 2 == 0 else sides[::-1]:
            figures = run_side(command, env)
            (comparison.omnitune if side == "omnitune" else comparison.reference).append(figures)
    return comparison


def scale(
    points: dict[str, list[str]],
    base: str,
    rounds: int = 3,
    env: dict[str, str] | None = None,
    warmup: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """Run one command per scale point, interleaved (1x 2x 4x, 4x 2x 1x, ...) after a warm-up
    run of the `base` point; every point's figures, one per round. A round's ratio of a point
    to the base is like a pair's: they ran back to back."""
    if warmup:
        run_side(points[base], env)
    labels = list(points)
    results: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    for index in range(rounds):
        for label in labels if index % 2 == 0 else labels[::-1]:
            results[label].append(run_side(points[label], env))
    return results


def loop_clock() -> Any:
    """A Hugging Face `TrainerCallback` that times the training loop only (from its first step
    to its end; `.seconds`, `.steps`), as omnitune's figures are: a trainer's own set-up and
    tokenization stay outside the timing on both sides."""
    from transformers import TrainerCallback

    class LoopClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            self.seconds = time.perf_counter() - self.start
            self.steps = state.global_step

    return LoopClock()


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def write_results(comparisons: list[Comparison], folder: Path, keep_others: bool = False) -> None:
    """Write results.json and results.md. With `keep_others` (one benchmark run alone), rows
    of other benchmarks already in results.json stay, each with its own date."""
    date = time.strftime("%Y-%m-%d")
    rows = []
    previous = folder / "results.json"
    if keep_others and previous.is_file():
        measured = {c.task for c in comparisons}
        rows = [r for r in json.loads(previous.read_text()) if r["task"] not in measured]
    for c in comparisons:
        rows.append(
            {
                "task": c.task,
                "figure": c.figure,
                "unit": c.unit,
                "omnitune": c.median("omnitune"),
                "reference": c.median("reference"),
                "reference_name": c.reference_name,
                "ratio": c.ratio,
                "pair_ratios": c.pair_ratios(),
                "omnitune_peak_rss_mb": c.median("omnitune", "peak_rss_mb"),
                "reference_peak_rss_mb": c.median("reference", "peak_rss_mb"),
                "target": c.target,
                "also": {
                    name: [c.median("omnitune", name), c.median("reference", name)]
                    for name in c.also
                },
                "machine": machine(),
                "date": date,
                "runs": {"omnitune": c.omnitune, "reference": c.reference},
            }
        )
    (folder / "results.json").write_text(json.dumps(rows, indent=1))
    lines = [
        "# Benchmark results",
        "",
        "Written by `make bench`. Ratio > 1 means omnitune is better on that figure "
        "(faster, or less memory): the median of the per-pair ratios of interleaved runs "
        "(A B, B A, ...) in one invocation; omnitune and reference columns are medians.",
        "",
        "| task | figure | omnitune | reference | ratio | per pair | peak RSS MB (ours / ref) "
        "| other figures (ours / ref) | target | machine | date |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        pairs = ", ".join(f"{x:.3f}" for x in r["pair_ratios"])
        also = "; ".join(f"{k} {a:.3g} / {b:.3g}" for k, (a, b) in r["also"].items()) or "-"
        lines.append(
            f"| {r['task']} | {r['figure']} ({r['unit']}) | {r['omnitune']:.1f} | "
            f"{r['reference']:.1f} ({r['reference_name']}) | {r['ratio']:.3f} | {pairs} | "
            f"{r['omnitune_peak_rss_mb']:.0f} / {r['reference_peak_rss_mb']:.0f} | {also} "
            f"| {r['target']} "
            f"| {r['machine']} | {r['date']} |"
        )
    (folder / "results.md").write_text("\n".join(lines) + "\n")


def python() -> str:
    return sys.executable
