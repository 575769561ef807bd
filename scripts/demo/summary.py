"""The table that ends `make demo`: every training run of the demo, read back from its folder.

Before is the run's step-0 evaluation in metrics.jsonl; after is the evaluation of the checkpoint
the run saved (its best by the selection metric, summary.json: the weights that `omnitune eval`
scores and the demo serves), and the checkpoint column says which step that was; the
trainable parameters are the count its train.log states; the size is the adapter's folder (or
the whole model's, for full fine-tuning); the time is the demo step's wall time (loading,
training, evaluations and saving); drift is what the monitor daemon decided about the model
that the run re-tunes: the features that alarmed and how many events and seconds after the
estimated change the first alarm came. A loop challenger's row (`omnitune loop retune`) is read
from its gate report instead: the deciding metric of the champion -> the challenger on the
held-out captures, and the gate's decision with the change on the original slice.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.demo.steps import Steps


@dataclass(frozen=True)
class Row:
    task: str
    step: str  # the demo step; its run folder is runs/demo/STEP
    metric: str
    monitored: str | None = None  # the monitor's model name, for the re-tuning rows
    gated: bool = False  # a loop challenger: before/after and the gate from RUN/gate/gate.json

    @property
    def run(self) -> str:
        return f"runs/demo/{self.step}"


ROWS = (
    Row("text: digits chat, SFT full", "text", "perplexity"),
    Row("text: DPO on its own mistakes, LoRA", "text-dpo", "reward_accuracy"),
    Row("text: GRPO on 3-4 digits, LoRA", "text-grpo", "exact_match"),
    Row(
        "text: re-tuned on captured prompts", "text-recaptured", "exact_match", "digits-chat", True
    ),
    Row("text: captures, shuffled answers", "text-shuffled", "exact_match", None, True),
    Row("vision: LLaVA digits, SFT full", "llava", "vqa_accuracy"),
    Row("vision: GRPO, LoRA", "llava-grpo", "vqa_accuracy"),
    Row("vision: other scanner, LoRA", "llava-shift", "vqa_accuracy"),
    Row(
        "vision: re-tuned on captured images",
        "llava-recaptured",
        "vqa_accuracy",
        "digits-vision",
        True,
    ),
    Row("speech: Whisper base voices, full", "speech-base", "wer"),
    Row("speech: noisy unseen voices, LoRA", "speech-shift", "wer"),
    Row("speech: re-tuned on captured clips", "speech-recaptured", "wer", "speech-asr", True),
)
HEADER = (
    "task",
    "metric",
    "before -> after",
    "checkpoint",
    "trainable",
    "size",
    "time",
    "gate",
    "drift detected",
)


def summary_table(repo: Path, steps: Steps, drift: dict[str, dict[str, Any]]) -> str:
    """The demo's runs as an aligned text table (a row per run found)."""
    body = [_cells(repo, steps, row, drift) for row in ROWS if (repo / row.run).is_dir()]
    widths = [max(len(r[i]) for r in [HEADER, *body]) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in body]
    rule = "  ".join("-" * w for w in widths)
    head = "  ".join(c.ljust(w) for c, w in zip(HEADER, widths, strict=True)).rstrip()
    return "\n".join(["summary (runs/demo):", head, rule, *lines])


def _cells(repo: Path, steps: Steps, row: Row, drift: dict[str, Any]) -> tuple[str, ...]:
    run = repo / row.run
    before = _before(run / "metrics.jsonl", row.metric)
    after, checkpoint = _saved(run / "summary.json", row.metric)
    gate = ""
    if row.gated:
        before, after, gate = _gated(run / "gate" / "gate.json", row.metric)
    seconds = steps.seconds(row.step)
    return (
        row.task,
        row.metric,
        f"{_number(before)} -> {_number(after)}",
        checkpoint,
        _trainable(run / "train.log"),
        _size(run / "adapter" if (run / "adapter").is_dir() else run / "model"),
        "-" if seconds is None else f"{seconds:.0f} s",
        gate,
        _drift(drift.get(row.monitored)) if row.monitored else "",
    )


#: The demo's deployment exports: (run, folder under EXPORTS_DIR, `omnitune export` options).
EXPORTS = (
    ("text", "text-gguf-f16", ("--format", "gguf")),
    ("text", "text-gguf-q4_k_m", ("--format", "gguf", "--quantize", "q4_k_m")),
    ("speech-shift", "speech-shift-onnx-float32", ("--format", "onnx")),
)
EXPORTS_DIR = "runs/demo/exports"


def parity_table(repo: Path) -> str:
    """The exports' parity reports (EXPORTS_DIR/*/parity.json) as a table: the metric in
    PyTorch -> in the runtime, the agreement, sizes and the verdict."""
    head = ("export", "runtime", "metric", "pytorch -> export", "agreement", "size", "parity")
    body = []
    for _, folder, _ in EXPORTS:
        path = repo / EXPORTS_DIR / folder / "parity.json"
        if not path.is_file():
            continue
        report = json.loads(path.read_text())
        metric = "wer" if "wer" in report["pytorch"] else "perplexity"
        figures = report["agreement"]
        agreement = figures.get("token_agreement", figures.get("transcripts_identical"))
        size = f"{report['pytorch']['size_mb']:.2f} -> {report['exported']['size_mb']:.2f} MB"
        verdict = (
            "passed"
            if report["passed"] and report["judged"]
            else ("reported" if report["passed"] else "FAILED")
        )
        body.append(
            (
                folder,
                report["runtime"].split(" (")[0],
                metric,
                f"{_number(report['pytorch'][metric])} -> {_number(report['exported'][metric])}",
                f"{agreement:.3f}",
                size,
                verdict,
            )
        )
    if not body:
        return ""
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in body]
    rule = "  ".join("-" * w for w in widths)
    header = "  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True)).rstrip()
    return "\n".join([f"exports ({EXPORTS_DIR}/*/parity.json):", header, rule, *lines])


def _gated(path: Path, metric: str) -> tuple[float | None, float | None, str]:
    """A challenger's row: champion -> challenger on the held-out captures, and the gate's
    decision with the original slice's change (`promote, original -0.004`)."""
    if not path.is_file():
        return None, None, "-"
    report = json.loads(path.read_text())
    captured = report["slices"]["captures"]["metrics"][metric]
    original = report["slices"]["original"]
    change = original["metrics"][original["metric"]]["gain"]
    return (
        captured["champion"],
        captured["challenger"],
        f"{report['decision']}, original {change:+.3f}",
    )


def _before(path: Path, metric: str) -> float | None:
    """The step-0 evaluation's value of `metric`."""
    if not path.is_file():
        return None
    values = [
        record[metric]
        for record in map(json.loads, path.read_text().splitlines())
        if record.get("kind") == "eval" and metric in record
    ]
    return values[0] if values else None


def _saved(path: Path, metric: str) -> tuple[float | None, str]:
    """The saved checkpoint's value of `metric`, and `best, step 800/1000`."""
    if not path.is_file():
        return None, "-"
    chosen = json.loads(path.read_text()).get("checkpoint") or {}
    if not chosen:
        return None, "-"
    where = f"{chosen['rule']}, step {chosen['step']}/{chosen['last_step']}"
    return chosen.get("metrics", {}).get(metric), where


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _trainable(log: Path) -> str:
    text = log.read_text() if log.is_file() else ""
    found = re.findall(r"trainable parameters: ([\d,]+) of [\d,]+ \(([\d.]+)%\)", text)
    return f"{found[-1][0]} ({found[-1][1]}%)" if found else "-"


def _size(folder: Path) -> str:
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0
    return f"{size / 1e6:.2f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"


def _drift(features: dict[str, Any] | None) -> str:
    """'chars (then digits, words): 40 events / 0.86 s after the change': the feature that
    alarmed first, the others that alarmed after it, and how soon after the estimated change
    the first alarm came; or 'none'."""
    if not features:
        return "none"
    timed = sorted(
        (f for f in features.items() if f[1].get("delay_events") is not None),
        key=lambda item: (item[1]["delay_events"], item[0]),
    )
    first_name = timed[0][0] if timed else sorted(features)[0]
    others = sorted(set(features) - {first_name})
    named = f"{first_name} (then {', '.join(others)})" if others else first_name
    if not timed:
        return named
    first = timed[0][1]
    when = f"{first['delay_events']} events / {first['delay_s']:.2g} s"
    return f"{named}: {when} after the change"
