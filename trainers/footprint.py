"""What a model costs to serve, and what pruning and recovery did to it.

A footprint is the parameter count, the weights' size in memory (parameters x their element
size; LoRA factors not counted: they fold into the base when merged) and the forward pass's
speed on one core of this machine over the first 64 evaluation examples (`speed`: the best of
at least 3 passes and of about a second of them): tokens per second, or utterances per second
for speech. A speed measures this machine at that moment: compare speeds measured by one
command, or by commands run one after the other on an otherwise idle machine.

A model written by `omnitune prune` keeps `prune.json` (trainers/pruning.py) with the footprint
and metrics before and after pruning; a run trained from it (recovery) and `omnitune eval` of
that run or folder report the chain before pruning -> after pruning -> after recovery.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

PRUNE_RECORD = "prune.json"
SPEED_BATCHES = 8
SPEED_BATCH_SIZE = 8
SPEED_REPEATS = 3
SPEED_SECONDS = 1.0
SPEED_MAX_PASSES = 200


def weights(model: Any) -> dict[str, Any]:
    """Parameters and megabytes of the weights a merged model serves with."""
    served = [p for name, p in model.named_parameters() if "lora_" not in name]
    return {
        "parameters": sum(p.numel() for p in served),
        "weights_mb": round(sum(p.numel() * p.element_size() for p in served) / 1e6, 3),
    }


def speed(model: Any, modality: str, collate: Any, examples: Any) -> dict[str, float]:
    """Forward-pass throughput on this machine: tokens/s of the real (unpadded) tokens read,
    or utterances/s for speech (teacher-forced: the decoder over the transcript). At most
    SPEED_BATCHES batches of SPEED_BATCH_SIZE examples, after one warm-up batch; the best of
    SPEED_REPEATS passes (the least disturbed by whatever else the machine runs)."""
    import torch

    count = min(len(examples), SPEED_BATCHES * SPEED_BATCH_SIZE)
    if count == 0:
        return {}
    items = [examples[i] for i in range(count)]
    device = next(model.parameters()).device
    batches = [
        {k: v.to(device) if hasattr(v, "to") else v for k, v in collate(chunk).items()}
        for chunk in (items[i : i + SPEED_BATCH_SIZE] for i in range(0, count, SPEED_BATCH_SIZE))
    ]
    was_training = model.training
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core: what other threads and processes disturb least
    model.eval()
    best = float("inf")
    with torch.no_grad():
        model(**batches[0])  # warm-up: first-call allocations and kernel choices
        passes, spent = 0, 0.0
        while passes < SPEED_REPEATS or (spent < SPEED_SECONDS and passes < SPEED_MAX_PASSES):
            started = time.perf_counter()
            for batch in batches:
                model(**batch)
            seconds = time.perf_counter() - started
            best, spent, passes = min(best, seconds), spent + seconds, passes + 1
    model.train(was_training)
    torch.set_num_threads(threads)
    if modality == "speech":
        return {"utterances_per_second": round(count / best, 1)}
    tokens = sum(int(batch["attention_mask"].sum()) for batch in batches)
    return {"tokens_per_second": round(tokens / best, 1)}


def measure(model: Any, modality: str, collate: Any, examples: Any) -> dict[str, Any]:
    """The model's footprint: weights and speed."""
    return {**weights(model), **speed(model, modality, collate, examples)}


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


def chain_table(chain: dict[str, dict[str, Any]]) -> str:
    """The chain as aligned text: a row per stage; parameters, MB, speed and the overall
    metrics all stages computed."""
    stages = list(chain.values())
    shared = [  # the overall metrics; a slice's (`wer/speaker=...`) stay in the JSON
        m for m in stages[0]["metrics"] if "/" not in m and all(m in s["metrics"] for s in stages)
    ]
    metrics = shared
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
