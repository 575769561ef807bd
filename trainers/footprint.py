"""What a model costs to serve, and what pruning and recovery did to it.

A footprint is the parameter count, the weights' size in memory (parameters x their element
size; LoRA factors not counted: they fold into the base when merged) and the evaluation's
speed on this machine: tokens per second of evaluated text (the examples' token counts over the
seconds the modality's evaluation took, generation included), utterances per second for
speech. Speeds measure this machine at that moment; compare them within one run of commands.

A model written by `omnitune prune` keeps `prune.json` (trainers/pruning.py) with the footprint
and metrics before and after pruning; a run trained from it (recovery) and `omnitune eval` of
that run or folder report the chain before pruning -> after pruning -> after recovery.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PRUNE_RECORD = "prune.json"


def weights(model: Any) -> dict[str, Any]:
    """Parameters and megabytes of the weights a merged model serves with."""
    served = [p for name, p in model.named_parameters() if "lora_" not in name]
    return {
        "parameters": sum(p.numel() for p in served),
        "weights_mb": round(sum(p.numel() * p.element_size() for p in served) / 1e6, 3),
    }


def speed(modality: str, examples: Any, seconds: float) -> dict[str, float]:
    """Evaluation throughput: utterances/s for speech, tokens/s otherwise."""
    if seconds <= 0:
        return {}
    if modality == "speech":
        return {"utterances_per_second": round(len(examples) / seconds, 2)}
    lengths = getattr(examples, "lengths", None)
    tokens = 0 if lengths is None else int(sum(int(n) for n in lengths))
    return {"tokens_per_second": round(tokens / seconds, 1)}


def timed_evaluation(
    evaluate: Callable[[], dict[str, float]], model: Any, modality: str, examples: Any
) -> tuple[dict[str, float], dict[str, Any]]:
    """`evaluate()`'s metrics and the model's footprint with the evaluation's speed."""
    started = time.perf_counter()
    metrics = evaluate()
    seconds = time.perf_counter() - started
    return metrics, {**weights(model), **speed(modality, examples, seconds)}


def describe(footprint: dict[str, Any]) -> str:
    """`210,752 parameters, 0.84 MB of weights, 61.2 utterances/s on this machine`."""
    parts = [f"{footprint['parameters']:,} parameters", f"{footprint['weights_mb']:.2f} MB"]
    if "tokens_per_second" in footprint:
        parts.append(f"{footprint['tokens_per_second']:,.0f} tokens/s on this machine")
    if "utterances_per_second" in footprint:
        parts.append(f"{footprint['utterances_per_second']:,.1f} utterances/s on this machine")
    return ", ".join(parts)


def prune_record(model_path: str | Path) -> dict[str, Any] | None:
    """The model folder's prune.json, when `omnitune prune` wrote it."""
    path = Path(model_path) / PRUNE_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def pruning_chain(
    record: dict[str, Any], recovered: tuple[dict[str, float], dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """{stage: {metrics, footprint}} for before pruning, after pruning and (given the
    recovered model's metrics and footprint) after recovery."""
    chain = {
        stage: {
            "metrics": record["metrics"][key],
            "footprint": record.get("footprint", {}).get(key, {}),
        }
        for stage, key in (("before pruning", "before"), ("after pruning", "after"))
    }
    if recovered is not None:
        chain["after recovery"] = {"metrics": recovered[0], "footprint": recovered[1]}
    return chain


def chain_table(chain: dict[str, dict[str, Any]], metric: str | None = None) -> str:
    """The chain as aligned text: a row per stage; parameters, MB, speed and the metrics all
    stages computed (or `metric` alone)."""
    stages = list(chain.values())
    shared = [m for m in stages[0]["metrics"] if all(m in s["metrics"] for s in stages)]
    metrics = [metric] if metric in shared else shared
    rate = next(
        (k for k in ("tokens_per_second", "utterances_per_second") if k in stages[0]["footprint"]),
        None,
    )
    speed_column = [rate.replace("_per_second", "/s")] if rate else []
    header = ["", "parameters", "MB", *speed_column, *metrics]
    rows = [header]
    for name, stage in chain.items():
        footprint = stage["footprint"]
        row = [name, f"{footprint.get('parameters', 0):,}", f"{footprint.get('weights_mb', 0):.2f}"]
        if rate:
            row.append(f"{footprint.get(rate, float('nan')):,.1f}")
        row += [f"{stage['metrics'][m]:.4f}" for m in metrics]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
