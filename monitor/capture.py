"""The closed loop: events that drove drift or were flagged become a training dataset.

Each model gets `CAPTURE_DIR/MODEL/data.jsonl` in its modality's training format, which
`omnitune train` reads as `data.train` as it is:
- text: `{"prompt": input, "completion": label or output}`
- vision_language: `{"image": path, "question": input, "answer": label or output}`
- speech: `{"audio": path, "text": label or output}`
The target is the ground-truth label when the serving side sent one, else the model's own
output (`target_source: "model"`, for review before re-training). Text is stored as redacted,
so no PII reaches the dataset. Extra keys (`reason`, `ts`, `adapter`, `request_id`) say where
each sample came from; the readers ignore them.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from omnitune.monitor.config import CaptureSection


class Capture:
    def __init__(self, section: CaptureSection, seed: int | None = None) -> None:
        assert section.dir is not None
        self.section = section
        self.root = section.dir
        self.random = random.Random(seed)
        self.counts: dict[str, int] = {}

    def file(self, model: str) -> Path:
        return self.root / _safe(model) / "data.jsonl"

    def count(self, model: str) -> int:
        if model not in self.counts:
            path = self.file(model)
            self.counts[model] = (
                sum(1 for _ in path.open(encoding="utf-8")) if path.is_file() else 0
            )
        return self.counts[model]

    def reasons(self, flagged: bool, drifting: bool) -> str | None:
        """Why an event qualifies ('safety' wins over 'drift'), or None."""
        if flagged and self.section.on_safety:
            return "safety"
        if drifting and self.section.on_drift:
            return "drift"
        return None

    def take(self, model: str) -> bool:
        """Whether the next qualifying event of `model` is captured (sampling and the cap);
        a True reserves its place under the cap, so the caller must write it."""
        if self.count(model) >= self.section.max_per_model:
            return False
        if self.section.sample_rate < 1.0 and self.random.random() >= self.section.sample_rate:
            return False
        self.counts[model] += 1
        return True

    def write(self, model: str, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        path = self.file(model)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def training_record(
    modality: str, payload: dict[str, Any], meta: dict[str, Any]
) -> dict[str, Any] | None:
    """The event as a row of the modality's training format, or None if it lacks the input."""
    label = payload.get("label")
    target = label if label is not None else payload.get("output")
    if target is None:
        return None
    source = {"target_source": "label" if label is not None else "model"}
    raw = payload.get("input")
    text = raw if isinstance(raw, str) else _text_of(raw)
    if modality == "text":
        if not text:
            return None
        return {"prompt": text, "completion": target, **source, **meta}
    if modality == "vision_language":
        image = raw.get("image_path") if isinstance(raw, dict) else None
        if not image:
            return None
        return {"image": image, "question": text or "", "answer": target, **source, **meta}
    audio = raw.get("audio_path") if isinstance(raw, dict) else None
    if not audio:
        return None
    return {"audio": audio, "text": target, **source, **meta}


def _text_of(raw: Any) -> str:
    if isinstance(raw, dict):
        for key in ("text", "prompt", "question"):
            if isinstance(raw.get(key), str):
                return raw[key]
    return ""


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
