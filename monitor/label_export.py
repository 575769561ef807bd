"""`omnitune monitor export MODEL --out DIR`: a model's labelled events as training data.

Read from the daemon's API (GET /v1/events?labelled=1), written in the modality's training
formats, each split by request into train.jsonl and test.jsonl (a seeded hash of the request
id, so an event stays in its split as more labels arrive):
- `sft/`: the target each label gives: its correction, or the model's own output where the
  label approves it (score >= 0.5); `omnitune train` reads it with `objective.name: sft`;
- `dpo/` (text and vision-language): a correction that differs from the output is chosen
  over it; `objective.name: dpo` or `orpo`;
- `kto/` (text and vision-language): each scored output, desirable (score >= 0.5) or not:
  unpaired feedback, the rows the KTO objective reads.
Every row carries its provenance: `request_id`, `annotator`, `label_source` (human or
teacher) and `reason` (why the event was queued for review: safety, drift; else feedback).
Where several annotators labelled an event, a person's label wins over a teacher's, and the
newest over older ones.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnitune.monitor.capture import training_record
from omnitune.monitor.daemon_api import DaemonApi

#: A score at or above this approves the model's output (thumbs up is 1, down is 0).
APPROVED = 0.5

#: What each modality can be trained on: speech has no preference objectives.
KINDS = {"text": ("sft", "dpo", "kto"), "vision_language": ("sft", "dpo", "kto")}
SPEECH_KINDS = ("sft",)


@dataclass
class ExportResult:
    rows: dict[str, dict[str, int]] = field(default_factory=dict)  # kind -> split -> rows
    files: dict[str, dict[str, Path]] = field(default_factory=dict)
    events: int = 0
    unusable: int = 0  # labelled events with nothing to train on (no input kept, no target)


def export_labels(
    api: DaemonApi, model: str, out: Path, held_out: float = 0.1, seed: int = 0
) -> ExportResult:
    """Write `model`'s labelled events under `out` (see the module's docstring)."""
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {}
    result = ExportResult()
    for event in api.events(model, labelled=1):
        result.events += 1
        made = training_rows(event)
        if not made:
            result.unusable += 1
        split = "test" if in_held_out(event["request_id"], held_out, seed) else "train"
        for kind, row in made:
            rows.setdefault(kind, {"train": [], "test": []})[split].append(row)
    for kind in ("sft", "dpo", "kto"):  # a fixed order, whatever the events' order
        if kind not in rows:
            continue
        folder = out / kind
        folder.mkdir(parents=True, exist_ok=True)
        result.rows[kind], result.files[kind] = {}, {}
        for split, items in rows[kind].items():
            result.rows[kind][split] = len(items)
            path = folder / f"{split}.jsonl"
            path.unlink(missing_ok=True)  # an empty split is no file: `data.eval` would refuse it
            if items:
                path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items))
                result.files[kind][split] = path
    return result


def training_rows(event: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(kind, row) pairs that `event`'s deciding label makes."""
    label = deciding_label(event["labels"])
    if label is None:
        return []
    kinds = KINDS.get(event["modality"], SPEECH_KINDS)
    provenance = {
        "request_id": event["request_id"],
        "annotator": label["annotator"],
        "label_source": label["source"],
        "reason": event.get("review") or "feedback",
    }
    output, correction, score = event.get("output"), label["correction"], label["score"]
    made = []
    target = correction
    if target is None and score is not None and score >= APPROVED:
        target = output
    if target is not None:
        sft = _record(event, target)
        if sft is not None:
            made.append(("sft", {**sft, **provenance}))
    if "dpo" in kinds and correction is not None and output and correction != output:
        pair = _pair(_record(event, correction), correction, output)
        if pair is not None:
            made.append(("dpo", {**pair, **provenance}))
    if "kto" in kinds and score is not None and output:
        kto = _record(event, output)
        if kto is not None:
            made.append(("kto", {**_unpaired(kto), "label": score >= APPROVED, **provenance}))
    return made


def deciding_label(labels: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A person's label over a teacher's, the newest over older ones."""
    if not labels:
        return None
    return max(labels, key=lambda label: (label["source"] == "human", label["ts"]))


def in_held_out(request_id: str, fraction: float, seed: int) -> bool:
    digest = hashlib.sha256(f"{seed}:{request_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _record(event: dict[str, Any], target: str) -> dict[str, Any] | None:
    """The event as an SFT row of its modality with `target` as the answer (capture's format)."""
    payload = {"input": event.get("input"), "label": target}
    record = training_record(event["modality"], payload, {})
    if record is not None:
        record.pop("target_source", None)
    return record


def _pair(record: dict[str, Any] | None, chosen: str, rejected: str) -> dict[str, Any] | None:
    """An SFT row turned into a preference pair: its answer field becomes chosen/rejected."""
    if record is None:
        return None
    row = {k: v for k, v in record.items() if k not in ("completion", "answer")}
    return {**row, "chosen": chosen, "rejected": rejected}


def _unpaired(record: dict[str, Any]) -> dict[str, Any]:
    """An SFT row as a KTO row: the answer under `completion` for every modality."""
    row = {k: v for k, v in record.items() if k != "answer"}
    if "answer" in record:
        row["completion"] = record["answer"]
    return row
