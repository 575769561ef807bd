"""The challenger's training mix: every labelled capture, plus a seeded sample of the
champion's own training rows (replay), in one JSONL file with one provenance row per line.

Replay rows are copied as they are, except that relative media paths (speech `audio`, image
paths) are made absolute: the mix lives in another folder than the data it came from."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnitune.core.errors import DataError
from omnitune.modalities.base import read_records


@dataclass
class Mix:
    train: Path
    provenance: Path
    labelled: int
    replayed: int
    replay_available: int


def replay_count(labelled: int, ratio: float, available: int) -> int:
    """Replay rows so that they are `ratio` of the mix, capped by what there is."""
    if ratio <= 0:
        return 0
    return min(available, round(labelled * ratio / (1.0 - ratio)))


def write_mix(labels: Path, replay: Path | None, ratio: float, seed: int, out_dir: Path) -> Mix:
    """Write `out_dir/train.jsonl` and `out_dir/provenance.jsonl` (line k says where line k
    of the mix came from: labels or replay, the file and line, the request id)."""
    labelled = _rows(labels)
    replay_rows = _rows(replay) if replay is not None and ratio > 0 else []
    count = replay_count(len(labelled), ratio, len(replay_rows))
    chosen = random.Random(seed).sample(replay_rows, count)
    mixed = [("labels", labels, line, row) for line, row in labelled]
    mixed += [("replay", replay, line, _absolute_media(row, replay.parent)) for line, row in chosen]
    random.Random(seed + 1).shuffle(mixed)  # the loop's order is seeded anyway; mix the file too
    out_dir.mkdir(parents=True, exist_ok=True)
    train, provenance = out_dir / "train.jsonl", out_dir / "provenance.jsonl"
    with train.open("w", encoding="utf-8") as rows, provenance.open("w", encoding="utf-8") as log:
        for source, path, line, row in mixed:
            rows.write(json.dumps(row, ensure_ascii=False) + "\n")
            entry = {"source": source, "file": str(path), "line": line}
            if "request_id" in row:
                entry["request_id"] = row["request_id"]
            log.write(json.dumps(entry) + "\n")
    return Mix(train, provenance, len(labelled), count, len(replay_rows))


def _rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise DataError(f"{path}: no such data file (replay reads JSONL, CSV or Parquet files)")
    return [(line, row) for line, row, problem in read_records(path) if row is not None]


MEDIA_KEYS = ("audio", "image")


def _absolute_media(row: dict[str, Any], base: Path) -> dict[str, Any]:
    row = dict(row)
    for key in MEDIA_KEYS:
        if isinstance(row.get(key), str):
            row[key] = _absolute(row[key], base)
    if isinstance(row.get("images"), list):
        row["images"] = [_absolute(p, base) if isinstance(p, str) else p for p in row["images"]]
    if isinstance(row.get("messages"), list):
        row["messages"] = [_message(m, base) for m in row["messages"]]
    return row


def _message(message: Any, base: Path) -> Any:
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        return message
    parts = []
    for part in message["content"]:
        if isinstance(part, dict) and part.get("type") == "image":
            part = {
                k: _absolute(v, base) if k in ("image", "path") and isinstance(v, str) else v
                for k, v in part.items()
            }
        parts.append(part)
    return {**message, "content": parts}


def _absolute(value: str, base: Path) -> str:
    if "://" in value or value.startswith("data:") or Path(value).is_absolute():
        return value
    return str((base / value).resolve())
