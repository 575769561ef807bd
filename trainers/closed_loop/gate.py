"""`omnitune loop gate CHAMPION CHALLENGER`: should the challenger replace the champion?

Both runs are scored on two slices, example by example: the captured slice (the held-out
split of the labelled captures the challenger was retuned on) and the original slice (the
champion's eval set). Each slice is read by the run config that owns it (the challenger's for
captures, the champion's for the original) and scored with the challenger's eval settings, the
same for both models, so the modality's own metrics (WER/CER, VQA accuracy, exact match, loss
and perplexity, reward accuracy) line up example by example. Paired bootstrap intervals
(bootstrap.py) give the uncertainty of each difference.

The decision, on one metric per slice (`gate.metric`, else the owner's selection metric):
promote when the captured slice's gain is above `gate.min_gain` at the lower end of its
interval (the improvement must be shown, not hoped for; a gain of exactly zero is none) and
the original slice's measured change is no worse than `-gate.max_regression` (demanding a
*proof* of no regression would reject every challenger on a small eval set; its interval is in
the report for the reviewer). `gate.json` and `gate.md` go to `CHALLENGER/gate/`; the exit
status is 0 to promote, 3 to reject.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omnitune.core.errors import ConfigError, UsageError
from omnitune.trainers.closed_loop.bootstrap import DERIVED, Column, Difference, paired_difference
from omnitune.trainers.closed_loop.retune import base_model, read_run_config, retune_record
from omnitune.trainers.closed_loop.settings import GateSection
from omnitune.trainers.config import RunConfig

#: Exit status of a rejecting gate (0 promotes; 1 and 2 keep their meanings: failure, refusal).
REJECTED = 3
GATE_DIR = "gate"
SLICES = ("captures", "original")


@dataclass
class SliceReport:
    data: str
    examples: int
    metric: str
    higher_is_better: bool
    differences: dict[str, Difference]

    @property
    def deciding(self) -> Difference:
        return self.differences[self.metric]


@dataclass
class GateReport:
    champion: str
    challenger: str
    settings: GateSection
    slices: dict[str, SliceReport]
    decision: str
    reasons: list[str]

    @property
    def promoted(self) -> bool:
        return self.decision == "promote"

    def as_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "reasons": self.reasons,
            "champion": self.champion,
            "challenger": self.challenger,
            "settings": self.settings.model_dump(mode="json"),
            "slices": {
                name: {
                    "data": s.data,
                    "examples": s.examples,
                    "metric": s.metric,
                    "higher_is_better": s.higher_is_better,
                    "metrics": {m: asdict(d) for m, d in s.differences.items()},
                }
                for name, s in self.slices.items()
            },
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }


def run_gate(
    champion: Path, challenger: Path, captures: str | None, settings: GateSection
) -> GateReport:
    """Score both runs on both slices and decide (see the module's docstring)."""
    from omnitune.trainers.evaluation import score_run

    configs = {
        "champion": read_run_config(champion, "CHAMPION"),
        "challenger": read_run_config(challenger, "CHALLENGER"),
    }
    _refuse_mismatch(champion, configs["champion"], challenger, configs["challenger"])
    # The original slice is read as the champion read it, and scored with the challenger's
    # eval settings (`eval.metrics=[exact_match]` on a retune line asks for it on both).
    original = configs["champion"].model_copy(update={"eval": configs["challenger"].eval})
    owners = {"captures": configs["challenger"], "original": original}
    data = {
        "captures": captures or _held_out_of(challenger),
        "original": configs["champion"].data.eval,
    }
    if not data["original"]:
        raise ConfigError(f"CHAMPION: {champion} has no data.eval: no original slice to guard")
    plan = [(data[name], owners[name]) for name in SLICES]
    scored = {
        which: dict(zip(SLICES, score_run(run, configs[which], plan), strict=True))
        for which, run in (("champion", champion), ("challenger", challenger))
    }
    slices = {}
    for name in SLICES:
        directions = _directions(owners[name])
        metric = _deciding_metric(owners[name], directions, settings.metric)
        slices[name] = _compare(
            scored["champion"][name], scored["challenger"][name], metric, directions, settings
        )
    decision, reasons = _decide(slices, settings)
    return GateReport(
        str(champion.resolve()), str(challenger.resolve()), settings, slices, decision, reasons
    )


def _refuse_mismatch(
    champion: Path, champion_config: RunConfig, challenger: Path, challenger_config: RunConfig
) -> None:
    a, b = champion_config.model.modality, challenger_config.model.modality
    if a != b:
        raise UsageError(
            f"CHALLENGER: {challenger} is a {b} run and {champion} a {a} run: a gate compares "
            "two versions of one model on the same data"
        )
    base_a, base_b = (
        base_model(champion, champion_config),
        base_model(challenger, challenger_config),
    )
    if base_a != base_b:
        raise UsageError(
            f"CHALLENGER: {challenger} is trained on another base model ({base_b}) than "
            f"{champion} ({base_a}): retune the champion's base (omnitune loop retune)"
        )


def _held_out_of(challenger: Path) -> str:
    record = retune_record(challenger)
    if record is None or not record.get("held_out"):
        raise UsageError(
            f"--captures: {challenger} was not made by omnitune loop retune, so it names no "
            "held-out split of labelled captures; give one with --captures FILE"
        )
    return record["held_out"]


def _directions(owner: RunConfig) -> dict[str, str]:
    """Each metric the owner's objective reports, "max" or "min" (perplexity with the loss)."""
    from omnitune.modalities.base import get_modality
    from omnitune.trainers.objectives import get_objective

    modality = get_modality(owner.model.modality)
    directions = dict(get_objective(owner.objective.name).metric_directions(modality))
    directions.setdefault("perplexity", "min")
    return directions


def _deciding_metric(owner: RunConfig, directions: dict[str, str], wanted: str | None) -> str:
    name = wanted or owner.eval.early_stopping_metric or next(iter(directions))
    if name not in directions:
        raise ConfigError(
            f"gate.metric: {name} is not a metric of {owner.objective.name} on "
            f"{owner.model.modality} (known: {', '.join(directions)})"
        )
    return name


def _compare(
    champion: Any,
    challenger: Any,
    metric: str,
    directions: dict[str, str],
    settings: GateSection,
) -> SliceReport:
    """Differences for every metric with a direction that both runs scored per example; the
    deciding one first."""
    available = set(champion.per_example) & set(challenger.per_example)
    names = [n for n in champion.metrics if n in available and n in directions]
    names += [
        d for d, (source, _) in DERIVED.items() if source in available and d in champion.metrics
    ]
    if metric not in names:
        raise ConfigError(
            f"gate.metric: {metric} has no per-example scores on {champion.data} (scored per "
            f"example: {', '.join(names) or 'none'}; exact_match needs eval.metrics=[exact_match])"
        )
    differences = {}
    for name in [metric] + [n for n in names if n != metric]:
        source, transform = DERIVED.get(name, (name, None))
        differences[name] = paired_difference(
            Column.of(champion.per_example[source]),
            Column.of(challenger.per_example[source]),
            directions[name] == "max",
            settings.confidence,
            settings.resamples,
            settings.seed,
            transform,
        )
    higher = directions[metric] == "max"
    return SliceReport(champion.data, champion.examples, metric, higher, differences)


def _decide(slices: dict[str, SliceReport], settings: GateSection) -> tuple[str, list[str]]:
    reasons = []
    captured, original = slices["captures"].deciding, slices["original"].deciding
    metric = slices["captures"].metric
    level = f"{settings.confidence:.0%}"
    if not math.isfinite(captured.low) or captured.low <= settings.min_gain:
        reasons.append(
            f"captures: {metric} gain {captured.gain:+.4f}, {level} interval "
            f"[{captured.low:+.4f}, {captured.high:+.4f}] does not clear gate.min_gain "
            f"{settings.min_gain:g}"
        )
    if not math.isfinite(original.gain) or original.gain < -settings.max_regression:
        reasons.append(
            f"original: {slices['original'].metric} got worse by {-original.gain:.4f}, more "
            f"than gate.max_regression {settings.max_regression:g}"
        )
    if reasons:
        return "reject", reasons
    return "promote", [
        f"captures: {metric} gain {captured.gain:+.4f} (lower end {captured.low:+.4f} > "
        f"{settings.min_gain:g}); original: {slices['original'].metric} change "
        f"{original.gain:+.4f} (no worse than -{settings.max_regression:g})"
    ]


def write_report(report: GateReport, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    as_json, as_markdown = out / "gate.json", out / "gate.md"
    as_json.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    as_markdown.write_text(markdown(report))
    return as_json, as_markdown


def table_rows(report: GateReport) -> list[list[str]]:
    """One row per slice and metric: the deciding metric of each slice first."""
    level = f"{report.settings.confidence:.0%}"
    rows = [["slice", "metric", "champion", "challenger", "gain", f"{level} interval", "examples"]]
    for name, s in report.slices.items():
        for metric, d in s.differences.items():
            mark = " *" if metric == s.metric else ""
            rows.append(
                [
                    name,
                    metric + mark,
                    _number(d.champion),
                    _number(d.challenger),
                    _number(d.gain, "+"),
                    f"[{_number(d.low, '+')}, {_number(d.high, '+')}]",
                    str(d.examples),
                ]
            )
    return rows


def _number(value: float, sign: str = "") -> str:
    """Four decimals; a difference that rounds to zero shows as +0.0000, never -0.0000."""
    return f"{round(value, 4) + 0.0:{sign}.4f}"


def markdown(report: GateReport) -> str:
    rows = table_rows(report)
    lines = [
        f"# Gate: {report.decision}",
        "",
        f"- champion: `{shown(report.champion)}`",
        f"- challenger: `{shown(report.challenger)}`",
        f"- captures: `{shown(report.slices['captures'].data)}`; original: "
        f"`{shown(report.slices['original'].data)}`",
        f"- rule: captures gain lower end > {report.settings.min_gain:g}; original change >= "
        f"-{report.settings.max_regression:g} ({report.settings.resamples} paired bootstrap "
        f"resamples, seed {report.settings.seed}); gain is positive when the challenger is "
        "better; `*` marks the deciding metric",
        "",
        "| " + " | ".join(rows[0]) + " |",
        "|" + "---|" * len(rows[0]),
        *("| " + " | ".join(r) + " |" for r in rows[1:]),
        "",
        *(f"- {reason}" for reason in report.reasons),
        "",
    ]
    return "\n".join(lines)


def plain_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def shown(path: str) -> str:
    """`path` relative to the working folder when it lies inside it (what a reader typed)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path
