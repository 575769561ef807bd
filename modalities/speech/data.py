"""Speech manifests: JSONL or CSV rows with an audio path and its transcript.

Row fields: `audio` (path, relative to the manifest's folder unless absolute) and `text`;
optional `speaker`, `language`, `domain`, `duration`. A path to a file that does not exist is
an error naming the manifest line (the manifest is wrong); a file that exists but is unreadable,
empty, silent or longer than the model's window is skipped and counted by reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omnitune.modalities.base import Examples
from omnitune.modalities.speech.audio import AudioProblem, check_usable, read_audio
from omnitune.trainers.errors import DataError


def read_speech_manifest(source: str, config: Any, processor: Any, training: bool) -> Examples:
    extractor = processor.feature_extractor
    rate = extractor.sampling_rate
    max_seconds = float(config.data.options.get("max_seconds", extractor.chunk_length))
    base = Path(source).parent
    group_field = config.data.balance.by
    examples = Examples(items=[], source=source)
    for line, record in examples.usable_records():
        if not record.get("audio") or not isinstance(record.get("text"), str):
            examples.skipped["no audio or text field"] += 1
            continue
        path = Path(record["audio"])
        path = path if path.is_absolute() else base / path
        if not path.exists():
            raise DataError(f"{source}:{line}: audio file {path} does not exist")
        try:
            check_usable(read_audio(path, rate), rate, max_seconds)
        except AudioProblem as problem_found:
            examples.skipped[problem_found.reason] += 1
            continue
        item = {"audio": str(path), "text": record["text"].strip()}
        for key in ("speaker", "language", "domain"):
            if key in record:
                item[key] = str(record[key])
        examples.add(item, record, group_field)
    return examples
